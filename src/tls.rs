//! TLS on the gRPC listener, with optional client certificates (mTLS). The certificate, key and
//! client CA are PEM files, re-read every `reload_interval`: when they change, new connections get
//! the new configuration (connections already open keep theirs); files that do not load leave the
//! previous configuration in place and say why in the log, so a botched rotation never takes the
//! listener down.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};

use crate::config::TlsConfig;

/// The current TLS configuration of the listener.
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the files (an error names the file and the problem) and starts watching them.
    pub async fn start(config: TlsConfig) -> Result<Arc<Tls>, String> {
        let files = Files::read(&config).await?;
        let server_config = files.build(&config)?;
        let tls = Arc::new(Tls { current: RwLock::new(Arc::new(server_config)) });
        let mutual = if config.client_ca_file.is_some() { " (clients must present a certificate)" } else { "" };
        tracing::info!(cert = %config.cert_file.display(), "TLS on{mutual}");
        tokio::spawn(watch(tls.clone(), config, files));
        Ok(tls)
    }

    /// An acceptor for a new connection, with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        tokio_rustls::TlsAcceptor::from(current.clone())
    }

    fn replace(&self, server_config: ServerConfig) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(server_config);
    }
}

/// Re-reads the files every interval and swaps in what changed and loads.
async fn watch(tls: Arc<Tls>, config: TlsConfig, mut seen: Files) {
    let mut interval = tokio::time::interval(config.reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    // Each problem is logged once, not every interval until someone fixes it.
    let mut last_problem: Option<String> = None;
    loop {
        interval.tick().await;
        let problem = match Files::read(&config).await {
            Ok(files) if files == seen => continue,
            Ok(files) => {
                let built = files.build(&config);
                seen = files;
                match built {
                    Ok(server_config) => {
                        tls.replace(server_config);
                        tracing::info!(cert = %config.cert_file.display(), "TLS certificate reloaded");
                        last_problem = None;
                        continue;
                    }
                    Err(problem) => problem,
                }
            }
            Err(problem) => problem,
        };
        if last_problem.as_ref() != Some(&problem) {
            tracing::error!("cannot reload TLS: {problem}; keeping the previous certificate");
            last_problem = Some(problem);
        }
    }
}

/// The contents of the configured files.
#[derive(PartialEq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

async fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    tokio::fs::read(path).await.map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

impl Files {
    async fn read(config: &TlsConfig) -> Result<Files, String> {
        let cert = read(&config.cert_file, "certificate file (server.tls.cert_file)").await?;
        let key = read(&config.key_file, "key file (server.tls.key_file)").await?;
        let client_ca = match &config.client_ca_file {
            Some(path) => Some(read(path, "client CA file (server.tls.client_ca_file)").await?),
            None => None,
        };
        Ok(Files { cert, key, client_ca })
    }

    fn build(&self, config: &TlsConfig) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_file = config.cert_file.display();
        let chain = certificates(&self.cert, &cert_file.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| format!("no private key in {}: {e}", config.key_file.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match (&self.client_ca, &config.client_ca_file) {
            (Some(pem), Some(path)) => {
                let path = path.display().to_string();
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem, &path)? {
                    roots.add(cert).map_err(|e| format!("a CA certificate in {path} is unusable: {e}"))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("the client CAs in {path} are unusable: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut server_config = builder.with_single_cert(chain, key).map_err(|e| {
            format!("the certificate {cert_file} and key {} do not work: {e}", config.key_file.display())
        })?;
        // gRPC is HTTP/2 only; clients such as grpc-go insist on negotiating it.
        server_config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(server_config)
    }
}

fn certificates(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs)
}
