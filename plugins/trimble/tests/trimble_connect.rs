//! `trimble_connect` against a local fake of Trimble Identity and the Connect master region:
//! the exact requests of seed 000 and of the PKCE session flow, the metadata, and every
//! failure class with its step, status and event.

use authgate_plugin_sdk::testing::*;
use authgate_plugin_sdk::{
    AuthorizationRequest, CodeExchange, Provider, ProviderError, RejectKind, ScopeSet, Secret,
    TokenTypeHint,
};
use authgate_plugin_trimble::TrimbleConnectProvider;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "tc-consumer-key";
const SECRET: &str = "canary-consumer-secret";
const MASTER: &str = "/tc/api/2.0";

fn regions_body() -> Value {
    json!([
        {"isMaster": true, "location": "northAmerica", "serviceRegion": "us",
         "origin": "https://app.connect.trimble.com",
         "tc-api": "https://app.connect.trimble.com/tc/api/2.0/"},
        {"isMaster": false, "location": "europe", "serviceRegion": "eu",
         "origin": "https://app21.connect.trimble.com", "file-api": "https://x.example/"},
        {"isMaster": false, "location": "asia", "origin": "https://app31.connect.trimble.com"}
    ])
}

fn settings(server: &MockServer, extra: Value) -> Value {
    let s = json!({
        "client_id": KEY,
        "client_secret": SECRET,
        "region": "eu",
        "identity_url": server.uri(),
        "master_url": format!("{}{MASTER}", server.uri()),
    });
    merged(s, extra)
}

fn provider(server: &MockServer, extra: Value) -> TrimbleConnectProvider {
    TrimbleConnectProvider::from_settings(settings(server, extra)).expect("valid settings")
}

/// `GET {master}/regions`: public, so no Authorization header may be sent.
async fn mount_regions(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path(format!("{MASTER}/regions")))
        .and(header("accept", "application/json"))
        .and(NoHeader("authorization"))
        .respond_with(ResponseTemplate::new(200).set_body_json(regions_body()))
        .expect(1..)
        .mount(server)
        .await;
}

fn id_token() -> String {
    jwt(r#"{"sub":"user-1","aud":"tc-consumer-key","exp":1900000000}"#)
}

fn identity_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "canary-tid-access-token",
        "token_type": "bearer",
        "expires_in": 3600,
        "id_token": id_token(),
    }))
}

fn step_of(e: &ProviderError) -> &str {
    match e {
        ProviderError::Rejected { step, .. }
        | ProviderError::Transient { step, .. }
        | ProviderError::TimedOut { step, .. } => step,
        other => panic!("no step in {other:?}"),
    }
}

// ---------------------------------------------------------------- exchange mode (seed 000)

#[tokio::test]
async fn client_credentials_exchange_sends_the_documented_requests() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(KEY, SECRET).as_str()))
        .and(header("accept", "application/json"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "openid"),
        ]))
        .respond_with(identity_ok())
        .expect(1)
        .mount(&server)
        .await;
    let connect_token = jwt(r#"{"sub":"user-1","exp":2000000000}"#);
    Mock::given(method("POST"))
        .and(path(format!("{MASTER}/auth/token")))
        .and(NoHeader("authorization"))
        .and(json_body(json!({ "jwt": id_token() })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "token": connect_token })))
        .expect(1)
        .mount(&server)
        .await;

    let p = provider(&server, json!({}));
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");

    assert_eq!(token.access_token.expose(), connect_token);
    assert_eq!(token.token_type, "Bearer");
    // No expires_in from Connect: the lifetime comes from the Connect token's JWT `exp`.
    assert_eq!(token.expires_in, None);
    assert_eq!(token.expires_at_unix, Some(2_000_000_000));
    assert!(token.refresh_token.is_none());
    let m = &token.metadata;
    assert_eq!(m["base_url"], "https://app21.connect.trimble.com");
    assert_eq!(
        m["api_base_url"],
        "https://app21.connect.trimble.com/tc/api/2.0"
    );
    assert_eq!(m["region"], "europe");
    assert_eq!(m["region.northAmerica"], "https://app.connect.trimble.com");
    assert_eq!(m["region.asia"], "https://app31.connect.trimble.com");
    assert!(!m.contains_key("legacy_grant"));

    let events = h.events().await;
    let steps: Vec<&str> = events.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(steps, ["regions", "identity_token", "connect_exchange"]);
    assert!(events.iter().all(|e| e.status == Some(200)));
    assert!(events[1]
        .request_body
        .contains("grant_type=client_credentials"));
    assert_clean(&events, None);
}

#[tokio::test]
async fn password_grant_sends_openid_and_is_marked_legacy() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(KEY, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "password"),
            ("username", "pm@example.com"),
            ("password", "canary-user-password"),
            ("scope", "openid"),
        ]))
        .respond_with(identity_ok())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{MASTER}/auth/token")))
        .and(json_body(json!({ "jwt": id_token() })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "token": "canary-connect-opaque", "expires_in": "1800" })),
        )
        .expect(1)
        .mount(&server)
        .await;

    let p = provider(
        &server,
        json!({"grant": "password", "username": "pm@example.com", "password": "canary-user-password", "region": null}),
    );
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    assert_eq!(token.expires_in, Some(Duration::from_secs(1800)));
    assert_eq!(token.metadata["legacy_grant"], "password");
    // No region configured: the master region.
    assert_eq!(
        token.metadata["base_url"],
        "https://app.connect.trimble.com"
    );
    assert_eq!(token.metadata["region"], "northAmerica");
    assert_clean(&h.events().await, None);
}

/// Runs the exchange with the given answers from Identity and Connect.
async fn exchange_with(
    identity: ResponseTemplate,
    connect: Option<ResponseTemplate>,
    limits: Option<authgate_plugin_sdk::UpstreamLimits>,
) -> (ProviderError, Vec<authgate_plugin_sdk::UpstreamEvent>) {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(identity)
        .expect(1)
        .mount(&server)
        .await;
    let reached = connect.is_some();
    Mock::given(method("POST"))
        .and(path(format!("{MASTER}/auth/token")))
        .respond_with(connect.unwrap_or_else(|| ResponseTemplate::new(500)))
        .expect(u64::from(reached))
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness_with(&p, limits.unwrap_or_default());
    let err = h.fetch(&p, &[], None).await.expect_err("must fail");
    let events = h.events().await;
    assert_clean(&events, Some(&err));
    (err, events)
}

#[tokio::test]
async fn rejected_credentials_name_the_step() {
    // Identity echoes the secret it refused: the redactor must scrub it.
    let (err, events) = exchange_with(
        ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": format!("Client authentication failed ({SECRET})"),
        })),
        None,
        None,
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, code, .. } if step == "identity_token" && code == "invalid_client"),
        "{err:?}"
    );
    assert_eq!(
        events.last().map(|e| (e.step.as_str(), e.status)),
        Some(("identity_token", Some(401)))
    );

    // Connect's own error shape, not RFC 6749.
    let (err, events) = exchange_with(
        identity_ok(),
        Some(ResponseTemplate::new(401).set_body_json(json!({
            "errorcode": "INVALID_TOKEN", "message": "The provided JWT is not valid",
        }))),
        None,
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, code, .. } if step == "connect_exchange" && code == "INVALID_TOKEN"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("connect_exchange:"), "{err}");
    assert_eq!(events.last().map(|e| e.status), Some(Some(401)));
}

#[tokio::test]
async fn server_errors_are_transient_in_either_step() {
    let (err, events) = exchange_with(
        ResponseTemplate::new(503).insert_header("retry-after", "7"),
        None,
        None,
    )
    .await;
    assert!(
        err.is_transient() && step_of(&err) == "identity_token",
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(events.last().map(|e| e.status), Some(Some(503)));

    let (err, events) = exchange_with(identity_ok(), Some(ResponseTemplate::new(502)), None).await;
    assert!(
        err.is_transient() && step_of(&err) == "connect_exchange",
        "{err:?}"
    );
    assert_eq!(events.last().map(|e| e.status), Some(Some(502)));
}

#[tokio::test]
async fn malformed_bodies_are_transient_in_either_step() {
    let html = ResponseTemplate::new(200).set_body_raw("<html>maintenance</html>", "text/html");
    let (err, _) = exchange_with(html, None, None).await;
    assert!(
        err.is_transient() && step_of(&err) == "identity_token",
        "{err:?}"
    );

    // A success without the id_token the exchange needs.
    let no_id = ResponseTemplate::new(200)
        .set_body_json(json!({"access_token": "canary-tid-at", "expires_in": 3600}));
    let (err, _) = exchange_with(no_id, None, None).await;
    assert!(
        err.is_transient() && err.to_string().contains("id_token"),
        "{err:?}"
    );

    // Cut before the token's value: the SDK redacts fields only in JSON that parses, so a
    // body cut inside a token would reach the event (an SDK gap, reported).
    let truncated = ResponseTemplate::new(200)
        .set_body_raw(r#"{"expires_in":3600,"token":"#, "application/json");
    let (err, events) = exchange_with(identity_ok(), Some(truncated), None).await;
    assert!(
        err.is_transient() && step_of(&err) == "connect_exchange",
        "{err:?}"
    );
    assert_eq!(events.last().map(|e| e.status), Some(Some(200)));

    let no_token = ResponseTemplate::new(200).set_body_json(json!({"status": "ok"}));
    let (err, _) = exchange_with(identity_ok(), Some(no_token), None).await;
    assert!(err.to_string().contains("without a token"), "{err}");
}

#[tokio::test]
async fn timeouts_name_the_step() {
    let (err, events) =
        exchange_with(identity_ok().set_delay(SLOW), None, Some(short_timeout())).await;
    assert!(
        matches!(&err, ProviderError::TimedOut { step, .. } if step == "identity_token"),
        "{err:?}"
    );
    let last = events.last().expect("event");
    assert_eq!((last.step.as_str(), last.status), ("identity_token", None));
    assert!(last.error.is_some());

    let slow = ResponseTemplate::new(200)
        .set_body_json(json!({"token": "canary-late"}))
        .set_delay(SLOW);
    let (err, _) = exchange_with(identity_ok(), Some(slow), Some(short_timeout())).await;
    assert!(
        matches!(&err, ProviderError::TimedOut { step, .. } if step == "connect_exchange"),
        "{err:?}"
    );
}

#[tokio::test]
async fn regions_failures_stop_before_any_token_step() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MASTER}/regions")))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(identity_ok())
        .expect(0)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = h.fetch(&p, &[], None).await.expect_err("must fail");
    assert!(err.is_transient() && step_of(&err) == "regions", "{err:?}");
    assert_eq!(h.steps().await, ["regions"]);
}

#[tokio::test]
async fn an_unknown_region_is_a_configuration_error() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .respond_with(identity_ok())
        .expect(0)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"region": "mars"}));
    let h = harness(&p);
    let err = h.fetch(&p, &[], None).await.expect_err("must fail");
    assert!(
        matches!(err, ProviderError::InvalidConfiguration(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("europe"), "{err}");
}

#[tokio::test]
async fn exchange_mode_has_no_revocation_or_code_flow() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = p
        .revoke(
            &h.call,
            &Secret::from("canary-x"),
            TokenTypeHint::AccessToken,
        )
        .await
        .expect_err("unsupported");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert!(h.events().await.is_empty());
}

// ------------------------------------------------------------------ session mode (PKCE)

#[tokio::test]
async fn authorization_url_uses_pkce_against_trimble_identity() {
    let server = MockServer::start().await;
    let p = provider(
        &server,
        json!({"grant": "authorization_code", "scopes": ["openid", "tc-app"]}),
    );
    let h = harness(&p);
    let redirect = Url::parse("https://gw.example.com/oauth/callback").unwrap();
    let url = p
        .authorization_url(
            &h.call,
            &AuthorizationRequest {
                scopes: ScopeSet::default(),
                state: "state-123".into(),
                code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
                redirect_uri: redirect.clone(),
            },
        )
        .await
        .expect("url");
    assert_eq!(url.path(), "/oauth/authorize");
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let want: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", KEY),
        ("redirect_uri", redirect.as_str()),
        ("scope", "openid tc-app"),
        ("state", "state-123"),
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(q, want);
    assert!(p.capabilities().pkce);
}

#[tokio::test]
async fn code_exchange_then_refresh_with_rotation() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    let redirect = "https://gw.example.com/oauth/callback";
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(KEY, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "canary-auth-code"),
            ("redirect_uri", redirect),
            (
                "code_verifier",
                "canary-verifier-0123456789012345678901234567",
            ),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at-1", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "canary-rt-1", "id_token": id_token(), "scope": "openid",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(KEY, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "canary-rt-1"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at-2", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "canary-rt-2",
        })))
        .expect(1)
        .mount(&server)
        .await;

    let p = provider(&server, json!({"grant": "authorization_code"}));
    assert!(p.requires_refresh_token());
    assert_eq!(
        p.refresh_token_idle_lifetime(),
        Some(Duration::from_secs(9 * 24 * 3600))
    );
    let h = harness(&p);
    let first = p
        .exchange_code(
            &h.call,
            CodeExchange {
                code: Secret::from("canary-auth-code"),
                code_verifier: Some(Secret::from("canary-verifier-0123456789012345678901234567")),
                redirect_uri: Url::parse(redirect).unwrap(),
            },
        )
        .await
        .expect("code exchange");
    assert_eq!(first.access_token.expose(), "canary-at-1");
    let rt1 = first.refresh_token.clone().expect("refresh token");
    assert_eq!(
        first.metadata["base_url"],
        "https://app21.connect.trimble.com"
    );

    let second = h.fetch(&p, &[], Some(&rt1)).await.expect("refresh");
    assert_eq!(second.access_token.expose(), "canary-at-2");
    assert_eq!(
        second.refresh_token.as_ref().map(Secret::expose),
        Some("canary-rt-2")
    );
    assert_eq!(second.expires_in, Some(Duration::from_secs(3600)));
    assert_eq!(
        second.metadata["api_base_url"],
        "https://app21.connect.trimble.com/tc/api/2.0"
    );
    assert_eq!(
        h.steps().await,
        ["authorization_code", "regions", "regions", "refresh"]
    );
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn public_client_sends_client_id_in_the_form_and_the_configured_refresh_token() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "canary-configured-rt"),
            ("client_id", KEY),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at-p", "expires_in": 3600,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "refresh_token", "client_secret": null, "refresh_token": "canary-configured-rt"}),
    );
    assert_eq!(
        p.configured_refresh_token().as_ref().map(Secret::expose),
        Some("canary-configured-rt")
    );
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    // Not rotated: the current refresh token stays.
    assert!(token.refresh_token.is_none());
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn a_refused_refresh_token_rejects_the_credential() {
    let server = MockServer::start().await;
    mount_regions(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "refresh token expired",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    let rt = Secret::from("canary-stale-rt");
    h.call.redactor().learn(&rt);
    let err = h.fetch(&p, &[], Some(&rt)).await.expect_err("rejected");
    assert!(
        err.rejects_credential() && step_of(&err) == "refresh",
        "{err:?}"
    );
    assert_eq!(h.events().await.last().map(|e| e.status), Some(Some(400)));
    assert_clean(&h.events().await, Some(&err));
}

#[tokio::test]
async fn session_without_a_refresh_token_asks_for_authorization_without_io() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    let err = h
        .fetch(&p, &[], None)
        .await
        .expect_err("needs authorization");
    assert!(
        matches!(err, ProviderError::InvalidConfiguration(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("StartAuthorization"), "{err}");
    assert!(h.events().await.is_empty());
}

#[tokio::test]
async fn code_exchange_keeps_the_tokens_when_regions_fail() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{MASTER}/regions")))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at-1", "expires_in": 3600, "refresh_token": "canary-rt-1",
        })))
        .mount(&server)
        .await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    let token = p
        .exchange_code(
            &h.call,
            CodeExchange {
                code: Secret::from("canary-code"),
                code_verifier: None,
                redirect_uri: Url::parse("https://gw.example.com/cb").unwrap(),
            },
        )
        .await
        .expect("tokens survive");
    assert!(token.refresh_token.is_some());
    assert!(!token.metadata.contains_key("base_url"));
    let events = h.events().await;
    assert_eq!(
        events.last().map(|e| (e.step.as_str(), e.status)),
        Some(("regions", Some(500)))
    );
}

#[tokio::test]
async fn revoke_posts_the_token_with_its_hint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/revoke"))
        .and(header("authorization", basic(KEY, SECRET).as_str()))
        .and(form_body(&[
            ("token", "canary-rt-9"),
            ("token_type_hint", "refresh_token"),
        ]))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    p.revoke(
        &h.call,
        &Secret::from("canary-rt-9"),
        TokenTypeHint::RefreshToken,
    )
    .await
    .expect("revoked");
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].step.as_str(), events[0].status),
        ("revoke", Some(200))
    );
    assert_clean(&events, None);
}

#[test]
fn documented_config_examples_build() {
    assert_doc_examples_build(
        &authgate_plugin_trimble::TrimbleConnectFactory,
        toml::from_str,
    );
}
