//! Webhooks end to end: a real receiver (tests/webhooks/receiver.mjs) verifies every
//! delivery with the npm package `standardwebhooks`; notifications survive a receiver that
//! is down and a gateway killed with SIGKILL; three replicas on PostgreSQL deliver each
//! notification once; every attempt is an event of the tenant, and no secret reaches a
//! delivery, an event, an API answer or the log.

mod common;

use authgate::proto::v1 as pb;
use authgate::proto::v1::credential_service_client::CredentialServiceClient;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::webhook_service_client::WebhookServiceClient;
use common::pg::PgTestDb;
use common::webhooks::{counts, distinct, Receiver, SECRET};
use common::{env_secret, free_port, get_token_request, put, Gateway, GatewayProcess, TEST_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT_SECRET: &str = "cs-canary-webhooks";

/// Fast delivery pacing and one webhook for every type, signed with `secret_env`'s value.
fn webhook_config(port: u16, secret_env: &str) -> String {
    format!(
        "[webhook_delivery]\npoll_interval_ms = 100\ninitial_backoff_ms = 300\nmax_backoff_seconds = 2\n\n\
         [[webhooks]]\ntenant = \"acme\"\nid = \"ops\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nevents = [\"*\"]\nsecret = \"${{env:{secret_env}}}\"\n"
    )
}

fn cc_settings(server: &MockServer) -> Value {
    json!({
        "token_url": format!("{}/token", server.uri()),
        "grant": "client_credentials",
        "client_id": "svc",
        "client_secret": CLIENT_SECRET,
        "scopes": ["read"],
    })
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn webhook_events(tokens: &mut TokenServiceClient<Channel>) -> Vec<pb::Event> {
    tokens
        .list_events(pb::ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![pb::EventKind::WebhookDelivery as i32],
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

/// The webhook_delivery events once `enough` says so (or after 10 s, whatever there are):
/// the delivery loop records an attempt after the receiver answered it.
async fn webhook_events_until(
    tokens: &mut TokenServiceClient<Channel>,
    enough: impl Fn(&[pb::Event]) -> bool,
) -> Vec<pb::Event> {
    for _ in 0..100 {
        let events = webhook_events(tokens).await;
        if enough(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    webhook_events(tokens).await
}

/// The delivery attempts the receiver answered 204.
fn delivered_count(events: &[pb::Event]) -> usize {
    events
        .iter()
        .filter(|e| e.http.as_ref().is_some_and(|h| h.status == 204))
        .count()
}

fn of_type<'a>(deliveries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    deliveries.iter().filter(|d| d["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_report_invalid_then_active_and_every_attempt_is_an_event() {
    let receiver = Receiver::start(0, SECRET);
    let provider = MockServer::start().await;
    // The provider refuses the client once (INVALID), then issues tokens.
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-canary-1", "token_type": "Bearer", "expires_in": 3600
        })))
        .with_priority(2)
        .mount(&provider)
        .await;
    let gw = Gateway::start(&webhook_config(receiver.port, &env_secret(SECRET))).await;
    let mut admin = gw.admin().await;
    let mut tokens = gw.client().await;

    admin
        .put_credential(put("acme", "idp", "oauth2", cc_settings(&provider)))
        .await
        .unwrap();
    let e = tokens
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    // New settings: the credential is ACTIVE again, a recovery.
    admin
        .put_credential(put("acme", "idp", "oauth2", cc_settings(&provider)))
        .await
        .unwrap();
    tokens
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap();

    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    assert_eq!(distinct(&got), 4, "{got:#?}");
    assert_eq!(got.len(), 4, "no duplicates: {got:#?}");
    assert_eq!(of_type(&got, "credential.created").len(), 1, "{got:#?}");
    assert_eq!(of_type(&got, "credential.replaced").len(), 1, "{got:#?}");
    let statuses: Vec<(String, String)> = of_type(&got, "credential.status_changed")
        .iter()
        .map(|d| {
            (
                d["data"]["previous_status"].as_str().unwrap().to_owned(),
                d["data"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("ACTIVE".into(), "INVALID".into())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("INVALID".into(), "ACTIVE".into())),
        "{statuses:?}"
    );
    for d in &got {
        assert_eq!(d["data"]["tenant"], "acme");
        assert_eq!(d["data"]["credential_id"], "idp");
        assert_eq!(d["content_type"], "application/json");
        assert!(d["id"].as_str().unwrap().starts_with("msg_"));
        assert!(!d["raw"].as_str().unwrap().contains("canary"), "{d}");
    }

    // Each attempt is an event with its HTTP exchange; none holds a secret. The loop
    // records an attempt after the receiver answered it: give the last one a moment.
    let events = webhook_events_until(&mut tokens, |events| events.len() >= 4).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    for e in &events {
        assert_eq!(e.http.as_ref().map(|h| h.status), Some(204), "{e:?}");
        assert!(e.message.contains("webhook `ops`"), "{}", e.message);
        assert!(!format!("{e:?}").contains("canary"), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One admin's session, read top to bottom.
async fn the_api_keeps_secrets_write_only_checks_egress_and_fans_out() {
    let receiver = Receiver::start(0, SECRET);
    let provider = MockServer::start().await;
    let gw = Gateway::start(&webhook_config(receiver.port, &env_secret(SECRET))).await;
    let mut admin = gw.admin().await;
    let mut hooks = WebhookServiceClient::connect(format!("http://{}", gw.addr()))
        .await
        .unwrap();
    admin
        .put_credential(put("acme", "idp", "oauth2", cc_settings(&provider)))
        .await
        .unwrap();

    // The API: config webhooks are listed but not changed here; secrets are write-only.
    let listed = hooks
        .list_webhooks(pb::ListWebhooksRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].source.as_str(), listed[0].events.clone()),
        ("config", vec!["*".to_owned()])
    );
    assert!(!format!("{listed:?}").contains("canary"));
    let e = hooks
        .delete_webhook(pb::DeleteWebhookRequest {
            tenant: "acme".into(),
            webhook_id: "ops".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());

    let create = |url: String, secret: &str| pb::CreateWebhookRequest {
        tenant: "acme".into(),
        webhook_id: "deletions".into(),
        url,
        events: vec!["credential.deleted".into()],
        secret: secret.into(),
    };
    // A private address is refused by the egress policy, like a credential's URL.
    let e = hooks
        .create_webhook(create("http://10.20.30.40/x".into(), SECRET))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().starts_with("url:"), "{}", e.message());
    let e = hooks
        .create_webhook(create(
            format!("http://127.0.0.1:{}/api", receiver.port),
            "not-a-canary-secret",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("secret:") && !e.message().contains("canary"),
        "{}",
        e.message()
    );
    let made = hooks
        .create_webhook(create(
            format!("http://127.0.0.1:{}/api", receiver.port),
            SECRET,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.source, "api");
    assert!(!format!("{made:?}").contains("canary"));

    // A deletion goes to both webhooks (the API one subscribes to deletions only).
    admin
        .delete_credential(pb::DeleteCredentialRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            revoke_upstream: false,
        })
        .await
        .unwrap();
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    let deleted: Vec<&str> = of_type(&got, "credential.deleted")
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(deleted.len(), 2, "{got:#?}");
    assert!(
        deleted.contains(&"/hooks") && deleted.contains(&"/api"),
        "{deleted:?}"
    );
    let gone = hooks
        .delete_webhook(pb::DeleteWebhookRequest {
            tenant: "acme".into(),
            webhook_id: "deletions".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.deleted);
}

/// Creates `n` credentials through the API (one `credential.created` notification each).
async fn create_credentials(addr: &str, server: &MockServer, prefix: &str, n: usize) {
    let mut admin = CredentialServiceClient::new(channel(addr).await);
    for i in 0..n {
        admin
            .put_credential(put(
                "acme",
                &format!("{prefix}{i}"),
                "oauth2",
                cc_settings(server),
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Waits on real time for a receiver that is down.
async fn a_receiver_down_for_20_s_gets_every_notification_across_a_kill_9() {
    let provider = MockServer::start().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let secret_env = env_secret(SECRET);
    let config = webhook_config(port, &secret_env);
    let env = [
        ("AUTHGATE_KEY", TEST_KEY),
        ("AUTHGATE_LOG", "info,authgate=debug"),
    ];
    let started = std::time::Instant::now();
    let mut gw = GatewayProcess::start(dir.path(), &config, &env).await;
    create_credentials(&gw.grpc_addr, &provider, "c", 5).await;
    CredentialServiceClient::new(channel(&gw.grpc_addr).await)
        .delete_credential(pb::DeleteCredentialRequest {
            tenant: "acme".into(),
            credential_id: "c4".into(),
            revoke_upstream: false,
        })
        .await
        .unwrap();
    // Attempts fail (nobody listens) and back off; then the gateway is killed outright.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first_log = gw.log_text();
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    let gw = GatewayProcess::start(dir.path(), &config, &env).await;
    let down_for = Duration::from_secs(20).saturating_sub(started.elapsed());
    tokio::time::sleep(down_for).await;
    let receiver = Receiver::start(port, SECRET);
    let got = receiver.wait_for(6, Duration::from_secs(20)).await;
    println!(
        "receiver down {:.1} s; {} deliveries after it came up",
        started.elapsed().as_secs_f64(),
        got.len()
    );
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    assert_eq!(of_type(&got, "credential.created").len(), 5, "{got:#?}");
    assert_eq!(of_type(&got, "credential.deleted").len(), 1, "{got:#?}");
    let dupes: Vec<_> = counts(&got).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dupes.is_empty(), "nothing was delivered twice: {dupes:?}");

    // The failed attempts before the kill are events too, with why they failed.
    let mut tokens = TokenServiceClient::new(channel(&gw.grpc_addr).await);
    let events = webhook_events_until(&mut tokens, |events| delivered_count(events) >= 6).await;
    let failed = events
        .iter()
        .filter(|e| e.http.as_ref().is_some_and(|h| h.status == 0))
        .count();
    let delivered = delivered_count(&events);
    assert!(failed >= 1, "{events:#?}");
    // Five creations and c4's deletion (filed under c4 after its other events went with it).
    assert_eq!(delivered, 6, "{events:#?}");
    for text in [first_log, gw.log_text(), format!("{events:?}")] {
        assert!(!text.contains("canary"), "a secret leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_each_notification_once() {
    let receiver = Receiver::start(0, SECRET);
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&provider)
        .await;
    let db = PgTestDb::create().await;
    let config = webhook_config(receiver.port, &env_secret(SECRET));
    let env = [
        ("AUTHGATE_KEY", TEST_KEY),
        ("AUTHGATE_STORE_URL", db.url.as_str()),
        ("AUTHGATE_LOG", "info,authgate=debug"),
    ];
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        replicas.push(GatewayProcess::start(dir.path(), &config, &env).await);
        dirs.push(dir);
    }
    for (i, r) in replicas.iter().enumerate() {
        create_credentials(&r.grpc_addr, &provider, &format!("r{i}-"), 4).await;
    }
    // Every replica finds the same credential rejected at once: one status change, one
    // notification.
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(TokenServiceClient::new(channel(&r.grpc_addr).await));
    }
    let fetches = clients.into_iter().map(|mut c| {
        tokio::spawn(async move { c.get_token(get_token_request("acme", "r0-0", &[])).await })
    });
    for f in fetches {
        let e = f.await.unwrap().unwrap_err();
        assert!(
            matches!(e.code(), Code::FailedPrecondition | Code::Unavailable),
            "{e:?}"
        );
    }

    let expected = 12 + 1;
    let got = receiver.wait_for(expected, Duration::from_secs(30)).await;
    // Long enough for a second replica's duplicate to show up if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got_all = receiver.deliveries();
    let dupes = got_all.len() - distinct(&got_all);
    println!(
        "3 replicas: {} notifications, {} deliveries, {dupes} duplicates",
        distinct(&got_all),
        got_all.len()
    );
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
    assert_eq!(distinct(&got), expected, "{got:#?}");
    assert_eq!(of_type(&got_all, "credential.created").len(), 12);
    assert_eq!(
        of_type(&got_all, "credential.status_changed").len(),
        1,
        "{got_all:#?}"
    );
    assert_eq!(dupes, 0, "each notification is delivered by one replica");
    for r in &replicas {
        assert!(!r.log_text().contains("canary"));
    }
}
