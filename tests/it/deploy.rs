//! `deploy/`: the manifests, compose file and Dockerfile pass their validators (installed by
//! `scripts/test`), and agree with each other and with the configuration the binary reads: the
//! drain fits in the termination grace, and the probes, Service and config use one port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use copilot::config::{Config, Overrides};
use serde_json::Value;

use crate::harness::installed_tool;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// After `drain_delay + shutdown_grace` (the last statuses are sent within `shutdown_grace`) the
/// process still exports buffered telemetry for up to 5 s (`main.rs`), plus a second for exiting;
/// a termination grace shorter than the drain plus this cuts the export off.
const EXIT_WORK: Duration = Duration::from_secs(6);

fn deploy(path: &str) -> PathBuf {
    Path::new(REPO).join("deploy").join(path)
}

/// Runs a validator from the venv `scripts/test` sets up, failing with its output.
fn validate(tool: &str, args: &[&str]) {
    let program = installed_tool(&format!(".tools/venv/bin/{tool}"), tool);
    let output = Command::new(&program)
        .args(args)
        .current_dir(REPO)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (scripts/test installs it into .tools/venv): {e}"));
    assert!(
        output.status.success(),
        "{tool} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Kubernetes manifests, as the kustomization lists them.
fn manifests() -> Vec<(String, Value)> {
    let kustomization = yaml(&deploy("k8s/kustomization.yaml"));
    let resources = kustomization["resources"].as_array().expect("kustomization resources");
    resources
        .iter()
        .map(|name| {
            let name = name.as_str().unwrap().to_string();
            let manifest = yaml(&deploy(&format!("k8s/{name}")));
            (name, manifest)
        })
        .collect()
}

fn manifest(kind: &str) -> Value {
    let found: Vec<Value> = manifests().into_iter().map(|(_, m)| m).filter(|m| m["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/k8s");
    found.into_iter().next().unwrap()
}

fn load_config(toml: &str, env: Vec<(String, String)>) -> Config {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    Config::load_from(Some(file.path()), &Overrides::default(), env)
        .unwrap_or_else(|e| panic!("the deploy configuration does not load: {e}\n{toml}"))
}

#[test]
fn every_kubernetes_manifest_is_applied_and_passes_the_schemas() {
    let mut listed: Vec<String> = manifests().into_iter().map(|(name, _)| name).collect();
    let mut present: Vec<String> = std::fs::read_dir(deploy("k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "deploy/k8s/kustomization.yaml must list every manifest");
    let paths: Vec<String> = present.iter().map(|name| format!("deploy/k8s/{name}")).collect();
    let mut args = vec!["--strict", "--quiet"];
    args.extend(paths.iter().map(String::as_str));
    validate("kubernetes-validate", &args);
}

#[test]
fn the_compose_file_passes_the_compose_spec_schema() {
    validate("check-jsonschema", &["--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml"]);
}

#[test]
fn the_deploy_yaml_is_lint_clean() {
    // yamllint also catches what the schema checks cannot see, such as a key given twice.
    validate("yamllint", &["--strict", "-c", "deploy/.yamllint.yaml", "deploy"]);
}

#[test]
fn the_dockerfile_passes_hadolint() {
    validate("hadolint", &["deploy/Dockerfile"]);
}

#[test]
fn kubernetes_drain_probes_and_ports_agree_with_the_configuration() {
    let configmap = manifest("ConfigMap");
    let config = load_config(configmap["data"]["config.toml"].as_str().expect("config.toml in the ConfigMap"), vec![]);
    let port = config.server.addr.port();
    let deployment = manifest("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];

    let grace =
        Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds"));
    let drain = config.server.drain_delay + config.server.shutdown_grace;
    assert!(
        grace >= drain + EXIT_WORK,
        "terminationGracePeriodSeconds {grace:?} must cover drain_delay + shutdown_grace ({drain:?}) + {EXIT_WORK:?}"
    );
    assert!(
        !config.server.drain_delay.is_zero(),
        "a drain_delay lets proxies notice NOT_SERVING before the listener closes"
    );

    let container = &pod["containers"][0];
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], port, "{probe} must use gRPC health on the config's port");
    }
    assert_eq!(container["readinessProbe"]["grpc"]["service"], copilot::server::SERVICE_NAME);
    let grpc_port =
        container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").expect("a port named grpc");
    assert_eq!(grpc_port["containerPort"], port);

    // The config file the Deployment points at is the one the ConfigMap holds.
    let env = container["env"].as_array().unwrap();
    let config_path = env.iter().find(|e| e["name"] == "COPILOT_CONFIG").expect("COPILOT_CONFIG")["value"].clone();
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "config").unwrap();
    assert_eq!(config_path, format!("{}/config.toml", mount["mountPath"].as_str().unwrap()));

    // Every key file the config names is a key of the mounted Secret.
    let secret = manifest("Secret");
    let keys = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "api-keys").unwrap();
    for (name, provider) in &config.providers {
        if let copilot::config::ApiKeySource::File(file) = &provider.api_key {
            let key = file.strip_prefix(keys["mountPath"].as_str().unwrap()).ok().and_then(|key| key.to_str());
            let key = key.unwrap_or_else(|| panic!("providers.{name}.api_key_file {file:?} is outside the Secret"));
            assert!(secret["stringData"][key].is_string(), "the Secret has no key {key:?} for providers.{name}");
        }
    }

    let service = manifest("Service");
    let grpc = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "grpc").unwrap();
    assert_eq!(grpc["appProtocol"], "grpc", "meshes balance per call only when they know it is gRPC");
    assert_eq!(grpc["targetPort"], "grpc");

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (kind, selector) in [
        ("Service", manifest("Service")["spec"]["selector"].clone()),
        ("PodDisruptionBudget", manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].clone()),
        ("NetworkPolicy", manifest("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].clone()),
    ] {
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(&labels[key], value, "the {kind} selects {key}={value}, which the pods do not carry");
        }
    }
    let policy = manifest("NetworkPolicy");
    let ingress_ports: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .collect();
    assert!(ingress_ports.iter().any(|p| p["port"] == port), "the NetworkPolicy must let gRPC in on {port}");

    let hpa = manifest("HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);

    // The shared Redis's URL (it holds the password) comes from the Secret, optionally, and the
    // NetworkPolicy lets the replicas reach it.
    let redis_url = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "COPILOT_REDIS_URL").unwrap();
    let reference = &redis_url["valueFrom"]["secretKeyRef"];
    assert_eq!(reference["name"], secret["metadata"]["name"]);
    assert_eq!(reference["optional"], true, "without a Redis the replicas keep their own budgets");
    let egress_ports: Vec<&Value> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .collect();
    assert!(egress_ports.iter().any(|p| p["port"] == 6379), "the NetworkPolicy must let Redis calls out");
}

#[test]
fn the_compose_stop_grace_covers_the_drain() {
    let compose = yaml(&deploy("compose.yaml"));
    let copilot = &compose["services"]["copilot"];
    let env: Vec<(String, String)> = copilot["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), default_of(v.as_str().unwrap())))
        .collect();
    let config = load_config("", env);
    let stop = humantime::parse_duration(copilot["stop_grace_period"].as_str().expect("stop_grace_period")).unwrap();
    let drain = config.server.drain_delay + config.server.shutdown_grace;
    assert!(stop >= drain + EXIT_WORK, "stop_grace_period {stop:?} must cover the drain {drain:?} + {EXIT_WORK:?}");
    assert!(compose["services"]["ollama"].get("ports").is_none(), "Ollama must not be published");
    assert_eq!(compose["networks"]["private"]["internal"], true);

    // Copilot shares its budgets through the compose Redis, with the password Redis requires.
    let redis = &compose["services"]["redis"];
    assert!(redis.get("ports").is_none(), "Redis must not be published");
    assert_eq!(redis["networks"], serde_yaml_ng::from_str::<Value>("[private]").unwrap());
    let command: Vec<&str> = redis["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let password = command.iter().position(|a| *a == "--requirepass").map(|i| default_of(command[i + 1])).unwrap();
    let url = config.state.redis_url.as_ref().expect("COPILOT_REDIS_URL in the compose environment");
    assert_eq!(url.expose(), format!("redis://:{password}@redis:6379/0"));
}

/// A value with compose's `${VAR:-default}`s as compose resolves them when the variables are unset.
fn default_of(value: &str) -> String {
    let mut resolved = String::new();
    let mut rest = value;
    while let Some((before, after)) = rest.split_once("${") {
        let (expression, tail) = after.split_once('}').expect("a closed ${...}");
        resolved.push_str(before);
        resolved.push_str(expression.split_once(":-").map_or("", |(_, default)| default));
        rest = tail;
    }
    resolved.push_str(rest);
    resolved
}

#[test]
fn the_image_runs_as_non_root_without_a_shell_and_checks_health_over_grpc() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.starts_with("gcr.io/distroless/cc"), "the runtime stage must be distroless: {runtime:.60}");
    let instruction = |name: &str| {
        runtime
            .replace("\\\n", " ")
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::trim).map(String::from))
            .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
    };
    let user = instruction("USER");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("a numeric USER, so runAsNonRoot can check it");
    assert_ne!(uid, 0);
    assert_eq!(
        Some(uid),
        manifest("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64().map(|u| u as u32)
    );
    // Exec form: there is no shell in the image to run a string.
    assert!(
        instruction("HEALTHCHECK").contains(r#"CMD ["/usr/local/bin/copilot", "health"]"#),
        "{}",
        instruction("HEALTHCHECK")
    );
    assert!(instruction("ENTRYPOINT").starts_with('['));
    assert_eq!(instruction("EXPOSE"), Config::default().server.addr.port().to_string());
}
