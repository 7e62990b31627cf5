//! `copilot doctor` (part of the binary): checks a setup end to end and prints PASS/FAIL/WARN/INFO
//! rows, with what to do about each failure — the first users' `validate_ollama_setup.py`, built in.
//!
//! Local mode (the default) checks this machine's configuration: that it loads; for each provider
//! instance that it can be set up (credentials), that its upstream answers (and its version), and
//! that its default model is there (with its details); then it starts the real gateway in-process
//! on `127.0.0.1:0` and runs the remote checks against it, so a generation and a chat go through
//! validation, routing, retries and the gRPC layer exactly as a client's would. Remote mode
//! (`--addr HOST:PORT`) runs those checks against a running server: gRPC health, reflection,
//! ListModels, GetModel, a unary Generate and a streamed Chat, with their latencies.
//!
//! Exit 0 when every required check passed, 1 when one failed, 2 for usage errors. Every check is
//! bounded by a timeout: the doctor never hangs.

mod advice;
mod api;
mod local;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};

use report::Report;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The model to test: `provider/model`, an alias, or a name for the default provider [default:
    /// the configured default model].
    #[arg(long, default_value = "")]
    model: String,
    /// The longest a Generate, and a Chat's first token, may take before its latency row fails.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_latency: Duration,
    /// The longest one generation may take before it is abandoned.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// With --addr: the API key to send as `authorization: Bearer <key>` (never printed).
    #[arg(long, env = "COPILOT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// With --addr: speak TLS, verifying the server's certificate against the system's CA roots
    /// (or --ca-file). An `https://` address means the same.
    #[arg(long)]
    tls: bool,
    /// With --tls: the PEM file of the CA certificates to trust instead of the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Print one JSON object (mode, target, ok, checks) instead of the table.
    #[arg(long)]
    json: bool,
}

/// What the checks of both modes need from the command line.
pub struct Options {
    pub model: String,
    pub max_latency: Duration,
    pub timeout: Duration,
}

/// Runs the doctor: locally when `addr` is `None`, else against the server at `addr`
/// (`HOST:PORT`, as given on the command line).
pub fn run(args: DoctorArgs, addr: Option<String>, config: Option<PathBuf>) -> ExitCode {
    let usage = |message: String| {
        eprintln!("copilot doctor: {message}");
        ExitCode::from(2)
    };
    if args.max_latency.is_zero() || args.timeout.is_zero() {
        return usage("--max-latency and --timeout must be more than zero".into());
    }
    let remote = match addr.as_deref().map(parse_addr).transpose() {
        Ok(remote) => remote,
        Err(message) => return usage(message),
    };
    if remote.is_none() && (args.tls || args.ca_file.is_some()) {
        return usage("--tls and --ca-file are for checking a running server: pass --addr HOST:PORT too".into());
    }
    let authorization = match (&remote, args.api_key.as_deref().map(str::trim).filter(|k| !k.is_empty())) {
        (Some(_), Some(key)) => match MetadataValue::<Ascii>::try_from(format!("Bearer {key}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                Some(value)
            }
            // Never echo the key: it may be a real one with a stray character.
            Err(_) => return usage("the API key holds characters an `authorization` header cannot carry".into()),
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("copilot doctor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options =
        Options { model: args.model.trim().to_string(), max_latency: args.max_latency, timeout: args.timeout };
    let mut report = Report::new(!args.json);
    let (mode, target) = match &remote {
        Some((authority, tls)) => {
            let tls = *tls || args.tls;
            ("remote", format!("{authority} ({})", if tls { "TLS" } else { "plaintext" }))
        }
        None => ("local", "this machine's configuration, served in-process".to_string()),
    };
    if !args.json {
        println!("copilot doctor: checking {target}\n");
        println!("{}", report.header());
    }
    runtime.block_on(async {
        match remote {
            Some((authority, https)) => {
                let tls = https || args.tls;
                check_remote(&options, authority, tls, args.ca_file.as_deref(), authorization, &mut report).await
            }
            None => local::run(&options, config.as_deref(), &mut report).await,
        }
    });
    // Probe loops and model threads of the in-process gateway end with the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", report.json(mode, &target));
    } else {
        print!("{}", report.footer());
    }
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn check_remote(
    options: &Options,
    authority: String,
    tls: bool,
    ca_file: Option<&Path>,
    authorization: Option<MetadataValue<Ascii>>,
    report: &mut Report,
) {
    let tls = match tls {
        false => None,
        true => match tls_config(ca_file) {
            Ok(config) => Some(config),
            Err(e) => {
                let advice = "pass --ca-file with the PEM certificate of the CA that issued the server's certificate";
                report.fail("TLS", e, advice.to_string());
                return;
            }
        },
    };
    let shown = format!("{authority} ({})", if tls.is_some() { "TLS" } else { "plaintext" });
    let server = api::Server { authority, shown, tls, authorization };
    let advisor = advice::Advisor::remote();
    let suite = api::Suite {
        local: false,
        connect_check: "server: connect",
        model: &options.model,
        max_latency: options.max_latency,
        timeout: options.timeout,
        advisor: &advisor,
    };
    api::run(&suite, &server, report).await;
}

/// `HOST:PORT`, optionally as `http://HOST:PORT` or `https://HOST:PORT` (TLS). Returns the
/// authority and whether the scheme asked for TLS.
fn parse_addr(text: &str) -> Result<(String, bool), String> {
    let text = text.trim();
    let (rest, tls) = match (text.strip_prefix("https://"), text.strip_prefix("http://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => (text, false),
    };
    let wrong = || format!("--addr {text:?}: expected HOST:PORT, e.g. localhost:50051 or 10.0.0.7:50051");
    let authority: http::uri::Authority = rest.trim_end_matches('/').parse().map_err(|_| wrong())?;
    if authority.port_u16().is_none() || authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(wrong());
    }
    Ok((authority.to_string(), tls))
}

/// The CA bundles of the common Linux distributions, where `SSL_CERT_FILE` does not name one.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A TLS client configuration trusting `ca_file`, else the system's CA bundle.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
            .find(|path| path.is_file())
            .ok_or_else(|| format!("no system CA bundle found (SSL_CERT_FILE, {})", SYSTEM_CA_BUNDLES.join(", ")))?,
    };
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable PEM CA certificate", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A model's details, one line: `llama, 3.2B parameters, Q4_K_M, context 131072, 1.9 GiB`.
pub fn model_details(
    family: &str,
    parameter_size: &str,
    quantization: &str,
    context_length: Option<u32>,
    size_bytes: Option<u64>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !family.is_empty() {
        parts.push(family.to_string());
    }
    if !parameter_size.is_empty() {
        parts.push(format!("{parameter_size} parameters"));
    }
    if !quantization.is_empty() {
        parts.push(quantization.to_string());
    }
    if let Some(context) = context_length {
        parts.push(format!("context {context}"));
    }
    if let Some(size) = size_bytes.filter(|&s| s > 0) {
        parts.push(format!("{:.1} GiB", size as f64 / (1024.0 * 1024.0 * 1024.0)));
    }
    if parts.is_empty() { "no details reported".to_string() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(parse_addr("localhost:50051").unwrap(), ("localhost:50051".into(), false));
        assert_eq!(parse_addr("https://copilot.example.com:443/").unwrap(), ("copilot.example.com:443".into(), true));
        assert_eq!(parse_addr("http://[::1]:50051").unwrap(), ("[::1]:50051".into(), false));
        for wrong in ["localhost", "", "user@host:1", ":50051", "a b:1"] {
            assert!(parse_addr(wrong).is_err(), "{wrong:?} was accepted");
        }
    }

    #[test]
    fn details_leave_out_what_is_unknown() {
        assert_eq!(model_details("", "", "", None, None), "no details reported");
        assert_eq!(
            model_details("qwen2", "494M", "Q4_K_M", Some(32768), Some(491_400_032)),
            "qwen2, 494M parameters, Q4_K_M, context 32768, 0.5 GiB"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_name() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate").unwrap();
        let err = tls_config(Some(file.path())).unwrap_err();
        assert!(err.contains(&file.path().display().to_string()) && err.contains("no usable"), "{err}");
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().contains("cannot read"));
    }
}
