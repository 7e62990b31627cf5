//! `copilot health` (part of the binary): asks a running Copilot's `grpc.health.v1` whether it
//! serves, so a container's health check needs no shell and no extra tool in the image.
//! Exit 0 means SERVING; 1 means anything else (NOT_SERVING, unknown service, unreachable, slow).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(clap::Args)]
pub struct HealthArgs {
    /// The health service name: "" is the process (liveness), `copilot.v1.Copilot` the API (readiness).
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for the connection and the answer together.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Checks the server listening on `listen` (the configured `server.addr`).
pub fn run(args: HealthArgs, listen: SocketAddr) -> ExitCode {
    let target = local_target(listen);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("copilot health: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(async {
        tokio::time::timeout(args.timeout, check(target, &args.service))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(args.timeout))))
    });
    let shown = if args.service.is_empty() { "the server".to_string() } else { args.service.clone() };
    match answer {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("copilot health: {shown} at {target} is {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(problem) => {
            eprintln!("copilot health: {shown} at {target}: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// A listener bound to every interface is reached on loopback.
fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

async fn check(target: SocketAddr, service: &str) -> Result<ServingStatus, String> {
    let channel = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let request = HealthCheckRequest { service: service.to_string() };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => Ok(response.into_inner().status()),
        Err(status) if status.code() == tonic::Code::NotFound => Err("no such health service".into()),
        Err(status) => Err(format!("the check failed: {:?}: {}", status.code(), status.message())),
    }
}
