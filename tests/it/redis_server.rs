//! A real `redis-server` for the tests (Debian's package; `scripts/install-build-deps --for test`
//! installs it): each test its own, on a free loopback port, without persistence, killed on drop.
//! It can be stopped and restarted on the same port, or frozen (`SIGSTOP`) to play a hung Redis.
//! Also a Redis Cluster, and a primary with a replica and a Sentinel watching them (in plaintext,
//! or all speaking only TLS).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// More `redis-server` arguments: a password, TLS.
    extra: Vec<String>,
    /// The password it requires, for the test's own look at its keys.
    password: Option<String>,
    /// When it speaks only TLS: the CA (PEM) its certificate is checked against, for the test's
    /// own look at its keys.
    tls_ca: Option<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer::not_started();
        server.port = port;
        server.restart();
        server
    }

    /// A server that requires `password`; with `tls` (certificate and key, PEM) it speaks only TLS
    /// (no client certificates).
    pub fn start_secured(password: &str, tls: Option<(&str, &str)>) -> RedisServer {
        let mut server = RedisServer::not_started();
        server.extra = vec!["--requirepass".into(), password.into()];
        server.password = Some(password.into());
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
        RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
            password: None,
            tls_ca: None,
        }
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
        redis::cmd("KEYS").arg("*").query(&mut self.connection()).unwrap()
    }

    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.connection()).unwrap()
    }

    /// `INFO replication`'s `role:` (`master` or `slave`).
    pub fn role(&self) -> String {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut self.connection()).unwrap();
        info.lines().find_map(|line| line.strip_prefix("role:")).unwrap_or_default().trim().to_string()
    }

    fn connection(&self) -> redis::Connection {
        client(self.port, self.password.as_deref(), self.tls_ca.as_deref()).get_connection().unwrap()
    }
}

/// A client of the server at `port` on loopback, with its password, and over TLS checked against
/// `tls_ca` when it speaks only TLS.
fn client(port: u16, password: Option<&str>, tls_ca: Option<&str>) -> redis::Client {
    let auth = password.map(|password| format!(":{password}@")).unwrap_or_default();
    match tls_ca {
        Some(ca) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca.as_bytes().to_vec()) };
            redis::Client::build_with_tls(format!("rediss://{auth}127.0.0.1:{port}/"), certificates).unwrap()
        }
        None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).unwrap(),
    }
}

/// The certificate files of an all-TLS [`SentinelGroup`]: one certificate for 127.0.0.1, which
/// every server shows, and the CA they check each other's with (for replication, and the
/// Sentinel's connections to the servers it watches).
struct TlsFiles {
    ca_pem: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl TlsFiles {
    fn write(ca: &crate::tls::Ca, dir: &std::path::Path) -> TlsFiles {
        let (cert_pem, key_pem) = ca.issue("127.0.0.1");
        let files = TlsFiles {
            ca_pem: ca.pem(),
            cert: dir.join("redis.crt"),
            key: dir.join("redis.key"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert_pem).unwrap();
        std::fs::write(&files.key, key_pem).unwrap();
        std::fs::write(&files.ca, &files.ca_pem).unwrap();
        files
    }

    /// The settings that make a server (or a Sentinel) on `port` speak only TLS, and replicate
    /// and watch over TLS, as `(name, value)` pairs.
    fn settings(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("port", "0".into()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.cert.display().to_string()),
            ("tls-key-file", self.key.display().to_string()),
            ("tls-ca-cert-file", self.ca.display().to_string()),
            ("tls-auth-clients", "no".into()),
            ("tls-replication", "yes".into()),
        ]
    }
}

/// The service name the Sentinel of a [`SentinelGroup`] watches its primary by.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// A primary, one replica of it and one Sentinel watching them, on loopback, all with one
/// password. With a quorum of 1 and a primary taken for down after 300 ms, a failover takes about
/// a second and a half.
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinel: Child,
    pub sentinel_port: u16,
    /// The CA every server's certificate is checked against, when the group speaks only TLS.
    tls_ca: Option<String>,
    _dir: tempfile::TempDir,
}

impl SentinelGroup {
    pub fn start(password: &str) -> SentinelGroup {
        SentinelGroup::start_with(password, None)
    }

    /// The same group speaking only TLS, every server and the Sentinel with a certificate from
    /// `ca` for 127.0.0.1; the replica replicates and the Sentinel watches over TLS too.
    pub fn start_tls(password: &str, ca: &crate::tls::Ca) -> SentinelGroup {
        SentinelGroup::start_with(password, Some(ca))
    }

    fn start_with(password: &str, ca: Option<&crate::tls::Ca>) -> SentinelGroup {
        let dir = tempfile::tempdir().unwrap();
        let tls = ca.map(|ca| TlsFiles::write(ca, dir.path()));
        let tls_ca = tls.as_ref().map(|files| files.ca_pem.clone());
        // No diskless-sync delay (5 s by default): the replica syncs at once.
        let auth = ["--requirepass", password, "--masterauth", password, "--repl-diskless-sync-delay", "0"]
            .map(String::from)
            .to_vec();
        let server = |replica_of: Option<u16>| {
            let mut server = RedisServer::not_started();
            server.extra.clone_from(&auth);
            if let Some(tls) = &tls {
                for (name, value) in tls.settings(server.port) {
                    server.extra.extend([format!("--{name}"), value]);
                }
            }
            if let Some(port) = replica_of {
                server.extra.extend(["--replicaof".into(), "127.0.0.1".into(), port.to_string()]);
            }
            server.password = Some(password.into());
            server.tls_ca.clone_from(&tls_ca);
            server.restart();
            server
        };
        let primary = server(None);
        let replica = server(Some(primary.port));
        // Synced before the Sentinel starts: what it promotes has the primary's keys.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut replica.connection()).unwrap();
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never synced: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sentinel_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = dir.path().join("sentinel.conf");
        let listen = match &tls {
            Some(tls) => {
                tls.settings(sentinel_port).into_iter().map(|(name, value)| format!("{name} {value}\n")).collect()
            }
            None => format!("port {sentinel_port}\n"),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 1\n\
                 sentinel auth-pass {SENTINEL_SERVICE} {password}\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 300\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 2000\n",
                dir.path().display(),
                primary.port
            ),
        )
        .unwrap();
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server --sentinel (Debian's redis-server)");
        let group = SentinelGroup { primary, replica, sentinel, sentinel_port, tls_ca, _dir: dir };
        // The Sentinel finds the replica through the primary's INFO; only then can it fail over.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replicas =
                group.sentinel_query::<Vec<Vec<String>>>(redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_SERVICE));
            if let Ok(replicas) = replicas {
                let port = group.replica.port.to_string();
                if replicas.iter().any(|fields| fields.windows(2).any(|pair| pair[0] == "port" && pair[1] == port)) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the Sentinel never found the replica");
            std::thread::sleep(Duration::from_millis(50));
        }
        group
    }

    fn sentinel_query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> redis::RedisResult<T> {
        let client = client(self.sentinel_port, None, self.tls_ca.as_deref());
        command.query(&mut client.get_connection()?)
    }

    /// The port of the primary the Sentinel names now.
    pub fn primary_port(&self) -> u16 {
        let address = self
            .sentinel_query::<(String, u16)>(
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(SENTINEL_SERVICE),
            )
            .expect("the Sentinel names a primary");
        address.1
    }

    /// Waits until the Sentinel names the replica as the primary and the replica says it is one.
    pub fn wait_for_failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.primary_port() != self.replica.port || self.replica.role() != "master" {
            assert!(Instant::now() < deadline, "no failover to the replica within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the Sentinel for a failover while the primary is up (`SENTINEL FAILOVER`).
    pub fn fail_over(&self) {
        self.sentinel_query::<String>(redis::cmd("SENTINEL").arg("FAILOVER").arg(SENTINEL_SERVICE))
            .expect("SENTINEL FAILOVER");
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
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
