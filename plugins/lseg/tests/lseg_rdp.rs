//! `lseg_rdp` against a local fake of the RDP token endpoint: the exact password and refresh
//! requests of seed 001, `expires_in` as a string, the `legacy_grant` marker, falling back to
//! sign-on when a refresh token has died, and every failure class.

use authgate_plugin_lseg::LsegRdpProvider;
use authgate_plugin_sdk::testing::*;
use authgate_plugin_sdk::{
    Provider, ProviderError, RejectKind, Secret, UpstreamEvent, UpstreamLimits,
};
use serde_json::{json, Value};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const APP_KEY: &str = "rdp-app-key-0123";
const USER: &str = "GE-A-01103867-3-1234";
const PASSWORD: &str = "canary-rdp-password";
const TOKEN_PATH: &str = "/auth/oauth2/v1/token";

fn provider(server: &MockServer, extra: Value) -> LsegRdpProvider {
    let s = json!({
        "client_id": APP_KEY,
        "username": USER,
        "password": PASSWORD,
        "allow_legacy_password_grant": true,
        "token_url": format!("{}{TOKEN_PATH}", server.uri()),
    });
    LsegRdpProvider::from_settings(merged(s, extra)).expect("valid settings")
}

/// RDP's answer: every value a string, `expires_in` included.
fn rdp_tokens(at: &str, rt: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": at,
        "refresh_token": rt,
        "expires_in": "300",
        "scope": "trapi.data.pricing.read trapi.metadata.read",
        "token_type": "Bearer",
    }))
}

fn password_form(take_exclusive: &'static str) -> FormBody {
    form_body(&[
        ("username", USER),
        ("password", PASSWORD),
        ("grant_type", "password"),
        ("scope", "trapi"),
        ("takeExclusiveSignOnControl", take_exclusive),
    ])
}

#[tokio::test]
async fn password_grant_sends_seed_001_request_and_marks_legacy() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        // The App Key as Basic user, an empty password: `auth=(CLIENT_ID, "")`.
        .and(header("authorization", basic(APP_KEY, "").as_str()))
        .and(header("accept", "application/json"))
        .and(password_form("true"))
        .respond_with(rdp_tokens("canary-rdp-at-1", "canary-rdp-rt-1"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    assert_eq!(token.access_token.expose(), "canary-rdp-at-1");
    assert_eq!(
        token.expires_in,
        Some(Duration::from_secs(300)),
        "string expires_in parses"
    );
    assert_eq!(
        token.refresh_token.as_ref().map(Secret::expose),
        Some("canary-rdp-rt-1")
    );
    assert_eq!(token.metadata["legacy_grant"], "password");
    assert_eq!(
        token.scopes.as_deref(),
        Some(
            &[
                "trapi.data.pricing.read".to_owned(),
                "trapi.metadata.read".to_owned()
            ][..]
        )
    );
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].step.as_str(), events[0].status),
        ("password", Some(200))
    );
    assert_clean(&events, None);
}

#[tokio::test]
async fn configured_secret_and_exclusive_flag_are_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header(
            "authorization",
            basic(APP_KEY, "canary-app-secret").as_str(),
        ))
        .and(password_form("false"))
        .respond_with(rdp_tokens("canary-at", "canary-rt"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"client_secret": "canary-app-secret", "take_exclusive_sign_on_control": false}),
    );
    let h = harness(&p);
    h.fetch(&p, &[], None).await.expect("token");
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn refresh_grant_sends_only_the_refresh_token_and_carries_no_legacy_marker() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header("authorization", basic(APP_KEY, "").as_str()))
        .and(form_body(&[
            ("refresh_token", "canary-rdp-rt-1"),
            ("grant_type", "refresh_token"),
        ]))
        .respond_with(rdp_tokens("canary-rdp-at-2", "canary-rdp-rt-2"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let token = h
        .fetch(&p, &[], Some(&Secret::from("canary-rdp-rt-1")))
        .await
        .expect("token");
    assert_eq!(
        token.refresh_token.as_ref().map(Secret::expose),
        Some("canary-rdp-rt-2")
    );
    assert!(!token.metadata.contains_key("legacy_grant"));
    assert_eq!(h.steps().await, ["refresh"]);
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn refresh_token_credential_needs_no_password() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(form_body(&[
            ("refresh_token", "canary-seed-rt"),
            ("grant_type", "refresh_token"),
        ]))
        .respond_with(rdp_tokens("canary-at", "canary-rt-next"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "refresh_token", "refresh_token": "canary-seed-rt",
               "username": null, "password": null, "allow_legacy_password_grant": null}),
    );
    assert!(p.requires_refresh_token());
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    assert!(token.metadata.is_empty());
}

#[tokio::test]
async fn a_dead_refresh_token_falls_back_to_sign_on() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(form_body(&[
            ("refresh_token", "canary-dead-rt"),
            ("grant_type", "refresh_token"),
        ]))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "Invalid Refresh Token",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(password_form("true"))
        .respond_with(rdp_tokens("canary-at-new", "canary-rt-new"))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let rt = Secret::from("canary-dead-rt");
    h.call.redactor().learn(&rt);
    let token = h.fetch(&p, &[], Some(&rt)).await.expect("signed on again");
    assert_eq!(token.metadata["legacy_grant"], "password");
    let events = h.events().await;
    let seen: Vec<(&str, Option<u16>)> =
        events.iter().map(|e| (e.step.as_str(), e.status)).collect();
    assert_eq!(seen, [("refresh", Some(400)), ("password", Some(200))]);
    assert_clean(&events, None);
}

#[tokio::test]
async fn a_transient_refresh_failure_does_not_sign_on() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = h
        .fetch(&p, &[], Some(&Secret::from("canary-rt")))
        .await
        .expect_err("transient");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(h.steps().await, ["refresh"]);
}

/// Password sign-on against a token endpoint answering `answer`.
async fn failing(
    answer: ResponseTemplate,
    limits: UpstreamLimits,
) -> (ProviderError, UpstreamEvent) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(answer)
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness_with(&p, limits);
    let err = h.fetch(&p, &[], None).await.expect_err("must fail");
    let event = h.only_event("password", &err).await;
    (err, event)
}

#[tokio::test]
async fn rejected_credentials() {
    let (err, event) = failing(
        ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant",
            "error_description": format!("Invalid username or password ({PASSWORD})."),
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, code, .. } if step == "password" && code == "invalid_grant"),
        "{err:?}"
    );
    assert_eq!(event.status, Some(400));
}

#[tokio::test]
async fn session_quota_is_a_request_problem_not_a_bad_password() {
    let (err, _) = failing(
        ResponseTemplate::new(400).set_body_json(json!({
            "error": "access_denied", "error_description": "Session quota is reached.",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(
        matches!(
            err,
            ProviderError::Rejected {
                kind: RejectKind::Request,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_error() {
    let (err, event) = failing(ResponseTemplate::new(502), UpstreamLimits::default()).await;
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(event.status, Some(502));
}

#[tokio::test]
async fn malformed_body() {
    // A success whose expires_in is not a number of seconds.
    let (err, event) = failing(
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at", "refresh_token": "canary-rt", "expires_in": "five minutes",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert_eq!(event.status, Some(200));

    let (err, _) = failing(
        ResponseTemplate::new(200).set_body_raw("<html>Gateway</html>", "text/html"),
        UpstreamLimits::default(),
    )
    .await;
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn timeout() {
    let (err, event) = failing(
        rdp_tokens("canary-late", "canary-late-rt").set_delay(SLOW),
        short_timeout(),
    )
    .await;
    assert!(
        matches!(&err, ProviderError::TimedOut { step, .. } if step == "password"),
        "{err:?}"
    );
    assert_eq!(event.status, None);
    assert!(event.error.is_some());
}

#[test]
fn documented_config_examples_build() {
    assert_doc_examples_build(&authgate_plugin_lseg::LsegRdpFactory, toml::from_str);
}
