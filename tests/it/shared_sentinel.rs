//! Key budgets shared through the primary that Redis Sentinel names (`state.topology =
//! "sentinel"`): real `redis-server`s on loopback — a primary, its replica and a Sentinel, all
//! with a password. Copilot replicas find the primary through the Sentinel, share one budget
//! there, and follow a failover: after the primary dies, and after a failover that leaves the old
//! primary running (the case a client that only reconnects gets wrong: it stays on the old
//! primary, whose writes are lost when it is demoted, and then is refused with READONLY). The
//! same over TLS, every server and the Sentinel speaking only TLS.

use std::time::{Duration, Instant};

use copilot::proto::v1::GenerateRequest;
use copilot::proto::v1::copilot_client::CopilotClient;
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{Copilot, within};
use crate::redis_server::{SENTINEL_SERVICE, SentinelGroup};
use crate::requests::{HELLO, prompt, reason, with_key};

const LIMIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "s3ntinel-guarded-pass";
/// Two keys: one spent before the failover, one after.
const BEFORE: &str = "cpk_sentinel_before";
const AFTER: &str = "cpk_sentinel_after";

/// How a replica is told where the state is: in its config file, or in its environment.
enum Settings {
    File,
    Environment,
}

/// A copilot whose keys have a budget of 2 requests a minute each, shared through the Sentinel's
/// primary; `on_error = "closed"`, so an admitted call proves that Redis answered.
async fn replica(fake: &FakeOllama, group: &SentinelGroup, settings: Settings) -> Copilot {
    replica_with(fake, group, settings, None).await
}

/// As [`replica`]; with `tls_ca_file`, over TLS (`rediss://` to the Sentinel and the primary)
/// checked against that CA.
async fn replica_with(
    fake: &FakeOllama,
    group: &SentinelGroup,
    settings: Settings,
    tls_ca_file: Option<&std::path::Path>,
) -> Copilot {
    let scheme = if tls_ca_file.is_some() { "rediss" } else { "redis" };
    let redis_url = format!("{scheme}://:{PASSWORD}@{SENTINEL_SERVICE}/0");
    let sentinels = format!("{scheme}://127.0.0.1:{}", group.sentinel_port);
    let keys: String = [("before", BEFORE), ("after", AFTER)]
        .map(|(name, key)| {
            let hash = copilot::auth::KeyHash::of(key);
            format!("[[auth.keys]]\nname = \"{name}\"\nhash = \"{hash}\"\nrequests_per_minute = 2\n")
        })
        .concat();
    let mut state =
        "[state]\ntopology = \"sentinel\"\non_error = \"closed\"\ntimeout = \"100ms\"\nhealth_interval = \"200ms\"\n"
            .to_string();
    if let Some(ca) = tls_ca_file {
        state.push_str(&format!("tls_ca_file = \"{}\"\n", ca.display()));
    }
    let mut env = vec![("OLLAMA_HOST", fake.base_url())];
    let state = match settings {
        Settings::File => format!("{state}redis_url = \"{redis_url}\"\nsentinels = [\"{sentinels}\"]\n"),
        Settings::Environment => {
            env.push(("COPILOT_REDIS_URL", redis_url));
            env.push(("COPILOT_REDIS_SENTINELS", format!("{sentinels}, ")));
            state
        }
    };
    let config =
        format!("[providers.ollama]\nretries = 0\nbreaker_failures = 0\n{state}[auth]\nenabled = true\n{keys}");
    let copilot = Copilot::start_with(&config, &env).await;
    wait_until_serving(&copilot).await;
    copilot
}

async fn fake() -> FakeOllama {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m").with_reply(Reply::Tokens(vec!["ok".into()])));
    fake
}

async fn generate(client: &mut CopilotClient<Channel>, key: &str) -> Result<String, tonic::Status> {
    let request: GenerateRequest = prompt("ollama/m", HELLO);
    within(LIMIT, client.generate(with_key(request, key))).await.map(|r| r.into_inner().text)
}

/// Waits (up to 20 s: a failover and the lookups after it) for the `state` health entry to be
/// SERVING: a PING reached the primary.
async fn wait_until_serving(copilot: &Copilot) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = HealthClient::new(copilot.channel().await);
        let request = HealthCheckRequest { service: "state".into() };
        let status = within(LIMIT, client.check(request)).await.expect("the state entry exists").into_inner().status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "the state entry never became SERVING; log:\n{}", copilot.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key's budget of 2 is shared by `a` and `b`: one call each is admitted, a third is refused.
async fn budget_is_shared(a: &Copilot, b: &Copilot, key: &str) {
    admitted(a, key).await;
    admitted(b, key).await;
    let refused = generate(&mut a.client().await, key).await.unwrap_err();
    assert_eq!(reason(&refused), "KEY_REQUEST_LIMIT", "{refused:?}");
}

/// One call of `key` admitted. After a failover the first calls may find the old primary (a
/// write there is refused, and that sends the replica to the Sentinel again): with `on_error =
/// "closed"` they fail with STATE_UNAVAILABLE, having spent nothing. Within 20 s one is admitted.
async fn admitted(copilot: &Copilot, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match generate(&mut copilot.client().await, key).await {
            Ok(_) => return,
            Err(status) if reason(&status) == "STATE_UNAVAILABLE" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}\n{}", copilot.logs()),
        }
    }
}

/// `a` and `b` share a budget on the primary; the primary dies, the Sentinel fails over to the
/// replica, and they share the next budget there.
async fn budgets_follow_the_primary_when_it_dies(group: &mut SentinelGroup, a: &Copilot, b: &Copilot) {
    budget_is_shared(a, b, BEFORE).await;
    assert!(
        group.primary.keys().iter().any(|key| key.starts_with("copilot:")),
        "the budget lives on the primary: {:?}",
        group.primary.keys()
    );
    group.primary.stop();
    group.wait_for_failover();
    for copilot in [a, b] {
        wait_until_serving(copilot).await;
    }
    budget_is_shared(a, b, AFTER).await;
    assert!(group.replica.keys().iter().any(|key| key.starts_with("copilot:")), "{:?}", group.replica.keys());
}

/// The primary's password never shows; the URL shows masked and the primary's address is logged.
fn logs_name_the_primary_without_the_password(copilot: &Copilot, port: u16) {
    logs_name_the_primary_without_the_password_at(copilot, port, "redis");
}

fn logs_name_the_primary_without_the_password_at(copilot: &Copilot, port: u16, scheme: &str) {
    let logs = copilot.logs();
    assert!(!logs.contains(PASSWORD), "{logs}");
    assert!(logs.contains(&format!("{scheme}://:***@{SENTINEL_SERVICE}/0")), "{logs}");
    assert!(logs.contains(&format!("127.0.0.1:{port}")), "the primary's address is logged: {logs}");
}

#[tokio::test]
async fn replicas_share_budgets_on_the_sentinels_primary_and_move_when_it_dies() {
    let mut group = SentinelGroup::start(PASSWORD);
    let fake = fake().await;
    let a = replica(&fake, &group, Settings::File).await;
    let b = replica(&fake, &group, Settings::File).await;
    budgets_follow_the_primary_when_it_dies(&mut group, &a, &b).await;
    for copilot in [&a, &b] {
        logs_name_the_primary_without_the_password(copilot, group.primary.port);
        logs_name_the_primary_without_the_password(copilot, group.replica.port);
    }
}

#[tokio::test]
async fn a_manual_failover_moves_the_budgets_before_the_old_primary_is_demoted() {
    let group = SentinelGroup::start(PASSWORD);
    let fake = fake().await;
    // Configured through the environment this time (COPILOT_REDIS_URL, COPILOT_REDIS_SENTINELS).
    let a = replica(&fake, &group, Settings::Environment).await;
    let b = replica(&fake, &group, Settings::Environment).await;
    budget_is_shared(&a, &b, BEFORE).await;

    group.fail_over();
    group.wait_for_failover();
    // The old primary keeps running, and takes writes until the Sentinel demotes it (seconds
    // later): the replicas must move on the Sentinel's announcement, not on an error.
    let moved = format!("primary=127.0.0.1:{}", group.replica.port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ![&a, &b].iter().all(|copilot| copilot.logs().contains(&moved)) {
        assert!(Instant::now() < deadline, "a replica did not move within 5 s:\n{}\n{}", a.logs(), b.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(group.primary.role(), "master", "the replicas moved before the old primary was demoted");
    let copilot_keys = |server: &crate::redis_server::RedisServer| {
        server.keys().into_iter().filter(|key| key.starts_with("copilot:")).count()
    };
    let replicated = copilot_keys(&group.replica);
    budget_is_shared(&a, &b, AFTER).await;
    assert!(
        copilot_keys(&group.replica) > replicated,
        "the budget spent after the failover is on the new primary: {:?}",
        group.replica.keys()
    );
    for copilot in [&a, &b] {
        logs_name_the_primary_without_the_password(copilot, group.replica.port);
    }
}

#[tokio::test]
async fn over_tls_replicas_share_budgets_on_the_sentinels_primary_and_follow_a_failover() {
    let ca = crate::tls::Ca::new("sentinel test CA");
    let mut group = SentinelGroup::start_tls(PASSWORD, &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let fake = fake().await;
    let a = replica_with(&fake, &group, Settings::File, Some(&ca_file)).await;
    let b = replica_with(&fake, &group, Settings::Environment, Some(&ca_file)).await;
    budgets_follow_the_primary_when_it_dies(&mut group, &a, &b).await;
    for copilot in [&a, &b] {
        logs_name_the_primary_without_the_password_at(copilot, group.replica.port, "rediss");
    }
}
