//! A real `redis-server` for the tests (Debian's package; `scripts/install-build-deps --for test`
//! installs it): each test its own, on a free loopback port, without persistence, killed on drop.
//! It can be stopped and restarted on the same port, or frozen (`SIGSTOP`) to play a hung Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// More `redis-server` arguments: a password, TLS.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, dir: tempfile::tempdir().unwrap(), extra: Vec::new() };
        server.restart();
        server
    }

    /// A server that requires `password`; with `tls` (certificate and key, PEM) it speaks only TLS
    /// (no client certificates).
    pub fn start_secured(password: &str, tls: Option<(&str, &str)>) -> RedisServer {
        let mut server = RedisServer::not_started();
        server.extra = vec!["--requirepass".into(), password.into()];
        if let Some((cert_pem, key_pem)) = tls {
            let cert = server.dir.path().join("redis.crt");
            let key = server.dir.path().join("redis.key");
            std::fs::write(&cert, cert_pem).unwrap();
            std::fs::write(&key, key_pem).unwrap();
            let port = server.port.to_string();
            server.extra.extend(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"].map(String::from));
            server.extra.extend(["--tls-cert-file".into(), cert.display().to_string()]);
            server.extra.extend(["--tls-key-file".into(), key.display().to_string()]);
        }
        server.restart();
        server
    }

    /// A port no server listens on yet (`restart` starts one there): for a Redis that is down
    /// when Copilot starts.
    pub fn not_started() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        RedisServer { child: None, port, dir: tempfile::tempdir().unwrap(), extra: Vec::new() }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server again on its port, empty (no persistence: a restarted Redis has forgotten
    /// everything).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (scripts/install-build-deps --for test installs it: apt redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process without closing its connections: a hung Redis.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The keys the server holds.
    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("KEYS").arg("*").query(&mut connection).unwrap()
    }

    pub fn pttl(&self, key: &str) -> i64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("PTTL").arg(key).query(&mut connection).unwrap()
    }
}

/// A Redis Cluster of `n` primaries (no replicas) on loopback, its slots spread by `redis-cli
/// --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut node = RedisServer::not_started();
            node.extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"].map(String::from).to_vec();
            node.restart();
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli (Debian's redis-tools, installed with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            let client = redis::Client::open(node.url()).unwrap();
            let mut connection = client.get_connection().unwrap();
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut connection).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never became ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Every key of every node.
    pub fn keys(&self) -> Vec<(u16, String)> {
        self.nodes.iter().flat_map(|node| node.keys().into_iter().map(|key| (node.port, key))).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.stop();
    }
}
