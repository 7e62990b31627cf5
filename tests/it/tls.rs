//! TLS and mutual TLS on the listener, with certificates made at test time, and certificate
//! rotation without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot_fakes::{FakeModel, FakeOllama};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::harness::{Copilot, OLLAMA_ONLY, within};
use crate::requests::prompt;

const LIMIT: Duration = Duration::from_secs(20);

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` and its key, both PEM.
    pub fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a file the way a rotation should: the new contents appear at once.
fn replace(path: &Path, contents: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn new(server: &Ca, client_ca: Option<&Ca>) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: dir.path().join("clients.crt"),
            _dir: dir,
        };
        files.install(server);
        if let Some(ca) = client_ca {
            replace(&files.client_ca, &ca.pem());
        }
        files
    }

    /// Puts a fresh `localhost` certificate from `ca` in place.
    fn install(&self, ca: &Ca) {
        let (cert, key) = ca.issue("localhost");
        replace(&self.key, &key);
        replace(&self.cert, &cert);
    }

    fn config(&self, mutual: bool) -> String {
        let client_ca = if mutual {
            format!("client_ca_file = {:?}\n", self.client_ca.display().to_string())
        } else {
            String::new()
        };
        format!(
            "{OLLAMA_ONLY}[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n{client_ca}reload_interval = \"200ms\"\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

async fn start(files: &Files, mutual: bool) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let copilot = Copilot::start_with(&files.config(mutual), &[("OLLAMA_HOST", fake.base_url())]).await;
    (fake, copilot)
}

/// A TLS channel to copilot that trusts `ca`, presenting `identity` if given.
async fn connect(copilot: &Copilot, ca: &Ca, identity: Option<(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{}", copilot.addr)).unwrap().tls_config(tls).unwrap();
    within(LIMIT, endpoint.connect()).await.map_err(|e| format!("{e:?}"))
}

async fn generate(channel: Channel) -> Result<String, String> {
    let request = prompt("ollama/m", "hi");
    let response = within(LIMIT, CopilotClient::new(channel).generate(request)).await;
    response.map(|r| r.into_inner().text).map_err(|s| format!("{s:?}"))
}

/// Connects and makes one call; with TLS 1.3 a refused client certificate may only show at the call.
async fn call(copilot: &Copilot, ca: &Ca, identity: Option<(String, String)>) -> Result<String, String> {
    generate(connect(copilot, ca, identity).await?).await
}

#[tokio::test]
async fn calls_travel_over_tls() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, None);
    let (_fake, copilot) = start(&files, false).await;

    call(&copilot, &ca, None).await.unwrap();
    // A client that does not trust the issuer refuses the server, and plaintext gets nowhere.
    assert!(call(&copilot, &Ca::new("other CA"), None).await.is_err());
    let plaintext = match within(LIMIT, Channel::from_shared(copilot.url()).unwrap().connect()).await {
        Ok(channel) => generate(channel).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(plaintext.is_err());
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new(&server_ca, Some(&client_ca));
    let (fake, copilot) = start(&files, true).await;

    assert!(call(&copilot, &server_ca, None).await.is_err(), "a client without a certificate");
    let stranger = Ca::new("stranger CA").issue("client");
    assert!(call(&copilot, &server_ca, Some(stranger)).await.is_err(), "a certificate from another CA");
    assert!(fake.chat_requests().is_empty());

    call(&copilot, &server_ca, Some(client_ca.issue("client"))).await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let first = Ca::new("first CA");
    let files = Files::new(&first, None);
    let (_fake, copilot) = start(&files, false).await;
    let open = connect(&copilot, &first, None).await.unwrap();
    generate(open.clone()).await.unwrap();

    let second = Ca::new("second CA");
    files.install(&second);
    within(LIMIT, async {
        while call(&copilot, &second, None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(copilot.logs().contains("TLS certificate reloaded"), "{}", copilot.logs());
    assert!(call(&copilot, &first, None).await.is_err(), "new connections get the new certificate");
    generate(open).await.expect("a connection made before the rotation keeps working");

    // A broken rotation keeps the certificate that works, and says why.
    let broken = format!("{} holds no PEM certificate", files.cert.display());
    replace(&files.cert, "not a certificate");
    within(LIMIT, async {
        while !copilot.logs().contains(&broken) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(copilot.logs().contains("keeping the previous certificate"), "{}", copilot.logs());
    call(&copilot, &second, None).await.unwrap();
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_with_the_file_named() {
    let files = Files::new(&Ca::new("CA"), None);
    replace(&files.key, "no key here");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_copilot"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg({
            let config = files.cert.with_file_name("copilot.toml");
            std::fs::write(&config, files.config(false)).unwrap();
            config
        })
        .env("OLLAMA_HOST", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls.key") && stderr.contains("no private key"), "{stderr}");
}

#[tokio::test]
async fn the_plaintext_health_command_says_it_cannot_check_a_tls_listener() {
    let files = Files::new(&Ca::new("CA"), None);
    let config = files.cert.with_file_name("copilot.toml");
    std::fs::write(&config, files.config(false)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_copilot"))
        .args(["health", "--config"])
        .arg(&config)
        .env_remove("COPILOT_ADDR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls") && stderr.contains("plaintext"), "{stderr}");
}

#[tokio::test]
async fn a_plaintext_probe_listener_answers_health_beside_a_tls_listener() {
    let files = Files::new(&Ca::new("CA"), None);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!("[server]\nhealth_addr = \"127.0.0.1:{port}\"\n{}", files.config(false));
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let _copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    let config_file = files.cert.with_file_name("copilot.toml");
    std::fs::write(&config_file, &config).unwrap();
    for service in ["", "copilot.v1.Copilot"] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot"))
            .args(["health", "--service", service, "--config"])
            .arg(&config_file)
            .env_remove("COPILOT_ADDR")
            .output()
            .await
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("SERVING"), "service {service:?}: {text}");
    }
}
