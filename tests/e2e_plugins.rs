//! Out-of-process plugins end to end: the example Python plugin (examples/plugins/ticket,
//! written with sdk/python) started by the gateway from `[[plugins]]`, serving GetToken
//! against a wiremock fake of its provider's two-step ticket flow. Every HTTP call the
//! plugin makes goes through the gateway's `Host.Send`, so it is in ListEvents, redacted;
//! the canary secret the plugin declares secret appears in no event, answer or log line.
//! Also: a wrong sha256 refuses to start the plugin; `kill -9` of the plugin mid-fetch is
//! that fetch's UNAVAILABLE, the plugin is restarted and the next GetToken succeeds while
//! cache hits of other credentials never fail; a plugin that hangs is killed after its
//! deadline and restarted.

// Each test reads as one scenario, top to bottom.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::{EventKind, GetTokenRequest, ListEventsRequest, RevokeRequest};
use authgate::server::StartOptions;
use authgate_plugin_sdk::testing::ticket::{TicketEndpoint, TicketFake};
use authgate_plugin_sdk::testing::CANARY;
use authgate_plugin_sdk::TokenTypeHint;
use common::*;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

const TENANT: &str = "acme";
const KIND: &str = "example_ticket";

/// `[[credentials]]` of the example plugin against `fake`, its secret from the environment.
fn ticket_credential(id: &str, fake: &TicketFake) -> String {
    let secret_env = env_secret(&fake.wire().api_secret);
    format!(
        "[[credentials]]\ntenant = \"{TENANT}\"\nid = \"{id}\"\nprovider = \"{KIND}\"\n[credentials.settings]\nbase_url = \"{}\"\napi_key = \"{}\"\napi_secret = \"${{env:{secret_env}}}\"\n",
        fake.base_url(),
        fake.wire().api_key
    )
}

fn request(id: &str, force_refresh: bool) -> GetTokenRequest {
    GetTokenRequest {
        force_refresh,
        ..get_token_request(TENANT, id, &[])
    }
}

async fn upstream_events(
    client: &mut authgate::proto::v1::token_service_client::TokenServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
) -> Vec<authgate::proto::v1::Event> {
    let mut events = client
        .list_events(ListEventsRequest {
            tenant: TENANT.into(),
            credential_id: id.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListEvents")
        .into_inner()
        .events;
    events.reverse();
    events
}

#[tokio::test]
async fn example_plugin_serves_get_token_with_rotation_revoke_and_redacted_events() {
    let fake = TicketFake::start().await;
    let ticket = format!("ticket-{CANARY}-1");
    fake.grant(&ticket, "", "at-1", Some(&format!("rt-{CANARY}-1")), 3600)
        .await;
    fake.refresh(
        &format!("rt-{CANARY}-1"),
        "",
        "at-2",
        &format!("rt-{CANARY}-2"),
        3600,
    )
    .await;
    fake.refresh(
        &format!("rt-{CANARY}-2"),
        "",
        "at-3",
        &format!("rt-{CANARY}-3"),
        3600,
    )
    .await;
    fake.revoke("at-3", TokenTypeHint::AccessToken).await;
    let config = format!(
        "{}\n{}",
        plugin_entry(KIND, &example_plugin(), &digest(&example_plugin()), ""),
        ticket_credential("tickets", &fake)
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [("RUST_LOG", "debug")];

    let mut gateway = GatewayProcess::start(dir.path(), &config, &env).await;
    let mut client = authgate::proto::v1::token_service_client::TokenServiceClient::connect(
        format!("http://{}", gateway.grpc_addr),
    )
    .await
    .unwrap();
    let first = client
        .get_token(request("tickets", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.access_token, "at-1");
    assert_eq!(first.token_type, "Bearer");
    let hit = client
        .get_token(request("tickets", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.access_token, "at-1");
    assert_eq!(
        fake.received().await.len(),
        2,
        "a cache hit reaches no plugin and no provider"
    );
    let refreshed = client
        .get_token(request("tickets", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refreshed.access_token, "at-2");
    gateway.stop();
    let first_log = gateway.log_text();

    // A new process: only the rotated refresh token, stored durably, is accepted upstream.
    let mut gateway = GatewayProcess::start(dir.path(), &config, &env).await;
    let mut client = authgate::proto::v1::token_service_client::TokenServiceClient::connect(
        format!("http://{}", gateway.grpc_addr),
    )
    .await
    .unwrap();
    let after_restart = client
        .get_token(request("tickets", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_restart.access_token, "at-3");
    let revoked = client
        .revoke(RevokeRequest {
            tenant: TENANT.into(),
            credential_id: "tickets".into(),
            scopes: vec![],
            upstream: true,
        })
        .await
        .expect("Revoke")
        .into_inner();
    assert_eq!(revoked.dropped, 1);
    assert_eq!(fake.received_at(TicketEndpoint::Revoke).await.len(), 1);

    let events = upstream_events(&mut client, "tickets").await;
    let steps: Vec<(String, u32)> = events
        .iter()
        .filter(|e| e.kind == EventKind::UpstreamCall as i32)
        .map(|e| {
            let http = e.http.as_ref().expect("an upstream call has its exchange");
            (http.step.clone(), http.status)
        })
        .collect();
    let expected: Vec<(String, u32)> = [
        ("session", 200),
        ("token", 200),
        ("refresh", 200),
        ("refresh", 200),
        ("revoke", 200),
    ]
    .iter()
    .map(|(s, c)| ((*s).to_owned(), *c))
    .collect();
    assert_eq!(steps, expected, "every HTTP call of the plugin is an event");
    assert_eq!(
        fake.received().await.len(),
        5,
        "and nothing else reached the provider"
    );
    let shown = format!("{events:?}");
    assert!(!shown.contains(CANARY), "a secret in the events: {shown}");
    assert!(
        shown.contains("hmac-sha256:"),
        "secrets are replaced by digests"
    );

    gateway.stop();
    for log in [first_log, gateway.log_text()] {
        assert!(log.contains("plugin started"), "{log}");
        assert!(!log.contains(CANARY), "a secret in the log: {log}");
    }
}

/// Why the gateway refuses to start with this config text.
async fn start_error(text: &str) -> String {
    let config = authgate::config::Config::parse(text).unwrap();
    let opts = StartOptions {
        key: Some(TEST_KEY.into()),
        ..StartOptions::default()
    };
    match authgate::server::start(config, opts).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_wrong_sha256_refuses_to_start_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let text = config_text(
        dir.path(),
        &plugin_entry(KIND, &example_plugin(), &wrong, ""),
    );
    let err = start_error(&text).await;
    assert!(
        err.contains("plugins `example_ticket`")
            && err.contains("refusing to run")
            && err.contains(&digest(&example_plugin()))
            && err.contains(&wrong),
        "{err}"
    );
}

#[tokio::test]
async fn a_plugin_that_fails_its_handshake_is_a_start_up_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("silent.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'hello, not a handshake'\nsleep 30\n",
    )
    .unwrap();
    make_executable(&script);
    let entry = plugin_entry(
        "silent",
        &script,
        &digest(&script),
        "handshake_timeout_seconds = 5",
    );
    let err = start_error(&config_text(dir.path(), &entry)).await;
    assert!(
        err.contains("plugins `silent` did not start")
            && err.contains("is not `authgate-plugin|1|unix"),
        "{err}"
    );
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits (bounded) until the plugin of `kind` has been started `starts` times and runs.
async fn wait_for_start(gateway: &Gateway, kind: &str, starts: u64) -> u32 {
    let plugins = &gateway.server.as_ref().unwrap().plugins;
    for _ in 0..300 {
        if plugins.starts(kind) >= starts {
            if let Some(pid) = plugins.pid(kind) {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plugin `{kind}` was not started {starts} times within 15 s");
}

#[tokio::test]
async fn kill_9_mid_fetch_fails_that_fetch_and_the_plugin_comes_back() {
    let slow = TicketFake::start().await;
    let steady = TicketFake::start().await;
    steady
        .grant(&format!("ticket-{CANARY}-s"), "", "steady-at", None, 3600)
        .await;
    // The first primary grant of `slow` hangs upstream long enough to kill the plugin.
    let ticket = format!("ticket-{CANARY}-k");
    slow.wire().mount_session(slow.server(), &ticket).await;
    wiremock::Mock::given(wiremock::matchers::path("/token"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "late-at", "token_type": "Bearer", "expires_in": 3600}))
                .set_delay(Duration::from_secs(4)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(slow.server())
        .await;
    slow.grant(&ticket, "", "after-restart-at", None, 3600)
        .await;
    let config = format!(
        "[broker]\nbackoff_initial_ms = 100\nbackoff_max_seconds = 1\n\n{}\n{}\n{}",
        plugin_entry(KIND, &example_plugin(), &digest(&example_plugin()), ""),
        ticket_credential("slow", &slow),
        ticket_credential("steady", &steady)
    );
    let gateway = Gateway::start(&config).await;
    let mut client = gateway.client().await;
    assert_eq!(
        client
            .get_token(request("steady", false))
            .await
            .unwrap()
            .into_inner()
            .access_token,
        "steady-at"
    );
    let pid = wait_for_start(&gateway, KIND, 1).await;

    let fetch = {
        let mut client = gateway.client().await;
        tokio::spawn(async move { client.get_token(request("slow", false)).await })
    };
    // Cache hits of another credential of the same plugin, all the while.
    let hits = {
        let mut client = gateway.client().await;
        tokio::spawn(async move {
            let mut served = 0u32;
            for _ in 0..150 {
                let t = client.get_token(request("steady", false)).await;
                assert_eq!(
                    t.expect("a cache hit never fails")
                        .into_inner()
                        .access_token,
                    "steady-at"
                );
                served += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            served
        })
    };
    for _ in 0..100 {
        if !slow.received_at(TicketEndpoint::Token).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.received_at(TicketEndpoint::Token).await.len(),
        1,
        "the fetch is upstream"
    );
    kill_9(pid);
    let failed = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .expect("the fetch ends when its plugin dies")
        .unwrap()
        .expect_err("the plugin died mid-fetch");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(!failed.message().contains(CANARY), "{failed:?}");

    let new_pid = wait_for_start(&gateway, KIND, 2).await;
    assert_ne!(new_pid, pid);
    let mut next = None;
    for _ in 0..50 {
        match client.get_token(request("slow", false)).await {
            Ok(t) => {
                next = Some(t.into_inner().access_token);
                break;
            }
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(next.as_deref(), Some("after-restart-at"));
    assert_eq!(hits.await.unwrap(), 150);

    let events = upstream_events(&mut client, "slow").await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::TokenFailed as i32),
        "the failed fetch is an event: {events:?}"
    );
    assert!(!format!("{events:?}").contains(CANARY));
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // The plugin's deadline is real time.
async fn a_hanging_plugin_is_killed_after_its_deadline_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo_root().join("tests/plugins/hang_plugin.py");
    let config = format!(
        "[broker]\nfetch_timeout_seconds = 20\nrefresh_lease_seconds = 40\n\n{}\n[[credentials]]\ntenant = \"{TENANT}\"\nid = \"stuck\"\nprovider = \"hang\"\n[credentials.settings]\n",
        plugin_entry("hang", &script, &digest(&script), "call_timeout_seconds = 2\nhealth_check_interval_seconds = 60")
    );
    let gateway = Gateway::start_in(dir.path(), &config).await;
    let pid = wait_for_start(&gateway, "hang", 1).await;
    let mut client = gateway.client().await;
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        client.get_token(request("stuck", false)),
    )
    .await
    .expect("the call is bounded by the plugin's deadline")
    .expect_err("the plugin never answers");
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let new_pid = wait_for_start(&gateway, "hang", 2).await;
    assert_ne!(
        new_pid, pid,
        "the hung process was killed and a new one started"
    );
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "the hung process is gone"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", gateway.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "authgate_plugin_starts_total{plugin=\"hang\"} 2",
        "authgate_plugin_up{plugin=\"hang\"} 1",
        "authgate_plugin_calls_total{plugin=\"hang\",rpc=\"Fetch\",outcome=\"timed_out\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn put_credential_uses_the_plugin_kind_and_its_checks() {
    let fake = TicketFake::start().await;
    fake.grant(&format!("ticket-{CANARY}-p"), "", "api-at", None, 3600)
        .await;
    let config = plugin_entry(KIND, &example_plugin(), &digest(&example_plugin()), "");
    let gateway = Gateway::start(&config).await;
    let mut admin = gateway.admin().await;
    let bad = admin
        .put_credential(put(
            TENANT,
            "api",
            KIND,
            serde_json::json!({"base_url": fake.base_url(), "api_key": "k"}),
        ))
        .await
        .expect_err("api_secret is required by the plugin");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("api_secret"), "{bad:?}");
    admin
        .put_credential(put(TENANT, "api", KIND, fake.settings()))
        .await
        .expect("the plugin accepts its settings");
    let got = gateway
        .client()
        .await
        .get_token(request("api", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.access_token, "api-at");
    let view = admin
        .get_credential(authgate::proto::v1::GetCredentialRequest {
            tenant: TENANT.into(),
            credential_id: "api".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !format!("{view:?}").contains(CANARY),
        "the plugin's secret field is write-only"
    );
}

#[tokio::test]
async fn host_send_passes_the_egress_policy() {
    let script = repo_root().join("tests/plugins/wander_plugin.py");
    let gateway = Gateway::start(&plugin_entry("wander", &script, &digest(&script), "")).await;
    let mut admin = gateway.admin().await;
    // No URL in the settings: only the check on the plugin's request can refuse it.
    admin
        .put_credential(put(
            TENANT,
            "wanders",
            "wander",
            serde_json::json!({"host": "10.255.255.1", "port": 80}),
        ))
        .await
        .expect("settings without URLs are accepted");
    let refused = gateway
        .client()
        .await
        .get_token(request("wanders", false))
        .await
        .expect_err("a private address is refused for an API credential");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("egress"), "{refused:?}");
    let events = upstream_events(&mut gateway.client().await, "wanders").await;
    assert!(
        events.iter().any(|e| e
            .http
            .as_ref()
            .is_some_and(|h| h.step == "token" && h.status == 0)),
        "the refused request is an event: {events:?}"
    );
}

#[tokio::test]
async fn check_config_starts_the_plugins_to_check_their_credentials() {
    let fake = TicketFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_entry(KIND, &example_plugin(), &digest(&example_plugin()), "");
    let check = |extra: &str| {
        let path = dir.path().join("authgate.toml");
        std::fs::write(&path, config_text(dir.path(), extra)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = check(&format!(
        "{plugin}\n{}",
        ticket_credential("tickets", &fake)
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The plugin declares api_secret secret: inline, it is refused like a built-in's.
    let inline = format!(
        "{plugin}\n[[credentials]]\ntenant = \"{TENANT}\"\nid = \"t\"\nprovider = \"{KIND}\"\n[credentials.settings]\nbase_url = \"{}\"\napi_key = \"k\"\napi_secret = \"inline-{CANARY}\"\n",
        fake.base_url()
    );
    let refused = check(&inline);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("api_secret is a secret and must be a reference"),
        "{stderr}"
    );
    assert!(!stderr.contains(CANARY), "{stderr}");
}
