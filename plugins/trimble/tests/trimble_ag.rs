//! `trimble_ag` against a local fake of the Trimble Identity token endpoint: the exact
//! requests of each grant, the approval URLs of seed 002, the documented default lifetimes,
//! and every failure class.

use authgate_plugin_sdk::testing::*;
use authgate_plugin_sdk::{
    AuthorizationRequest, CodeExchange, Provider, ProviderError, RejectKind, ScopeSet, Secret,
    TokenTypeHint, UpstreamEvent, UpstreamLimits,
};
use authgate_plugin_trimble::TrimbleAgProvider;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT: &str = "ag-client-id";
const SECRET: &str = "canary-ag-secret";
const REDIRECT: &str = "https://gw.example.com/oauth/callback";

fn provider(server: &MockServer, extra: Value) -> TrimbleAgProvider {
    let s = json!({
        "client_id": CLIENT,
        "client_secret": SECRET,
        "token_url": format!("{}/oauth/token", server.uri()),
    });
    TrimbleAgProvider::from_settings(merged(s, extra)).expect("valid settings")
}

#[tokio::test]
async fn client_credentials_sends_basic_auth_and_defaults_to_one_hour() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(header("accept", "application/json"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "ag-app"),
        ]))
        // An opaque token and no expires_in: the documented hour applies.
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-ag-opaque-token", "token_type": "Bearer",
            "refresh_token": "canary-unneeded-rt",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"scopes": ["ag-app"]}));
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    assert_eq!(token.access_token.expose(), "canary-ag-opaque-token");
    assert_eq!(token.expires_in, Some(Duration::from_secs(3600)));
    assert!(
        token.refresh_token.is_none(),
        "client credentials keep no refresh token"
    );
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].step.as_str(), events[0].status),
        ("client_credentials", Some(200))
    );
    assert_clean(&events, None);
}

#[tokio::test]
async fn approval_urls_follow_seed_002() {
    let server = MockServer::start().await;
    let req = AuthorizationRequest {
        scopes: ScopeSet::default(),
        state: "st-9".into(),
        code_challenge: Some("ignored-no-pkce".into()),
        redirect_uri: Url::parse(REDIRECT).unwrap(),
    };
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    let url = p.authorization_url(&h.call, &req).await.expect("url");
    assert_eq!(
        url.as_str(),
        "https://www.trimbleag.com/ThirdPartyAccess/ThirdPartyAuthorizationRedirect?clientid=ag-client-id&redirectionUrl=https%3A%2F%2Fgw.example.com%2Foauth%2Fcallback&state=st-9"
    );
    let p = provider(&server, json!({}));
    let url = p.authorization_url(&h.call, &req).await.expect("url");
    assert_eq!(
        url.as_str(),
        "https://www.trimbleag.com/ThirdPartyAccess/ThirdPartyAuthorizationRedirect?clientid=ag-client-id"
    );
    assert!(h.events().await.is_empty(), "building a URL makes no call");
}

#[tokio::test]
async fn authorization_code_then_refresh_before_nine_days() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "canary-ag-code"),
            ("redirect_uri", REDIRECT),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-ag-at-1", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "canary-ag-rt-1",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "canary-ag-rt-1"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-ag-at-2", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "canary-ag-rt-2",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    assert_eq!(
        p.refresh_token_idle_lifetime(),
        Some(Duration::from_secs(9 * 24 * 3600))
    );
    assert!(p.requires_refresh_token());
    let h = harness(&p);
    let first = p
        .exchange_code(
            &h.call,
            CodeExchange {
                code: Secret::from("canary-ag-code"),
                code_verifier: None,
                redirect_uri: Url::parse(REDIRECT).unwrap(),
            },
        )
        .await
        .expect("code exchange");
    let rt = first.refresh_token.expect("refresh token");
    let second = h.fetch(&p, &[], Some(&rt)).await.expect("refresh");
    assert_eq!(second.access_token.expose(), "canary-ag-at-2");
    assert_eq!(
        second.refresh_token.as_ref().map(Secret::expose),
        Some("canary-ag-rt-2")
    );
    assert_eq!(h.steps().await, ["authorization_code", "refresh"]);
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn configured_refresh_token_starts_the_session() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[("grant_type", "refresh_token"), ("refresh_token", "canary-leaf-rt")]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-ag-at", "expires_in": 3600, "refresh_token": "canary-ag-rt-next",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "refresh_token", "refresh_token": "canary-leaf-rt"}),
    );
    let h = harness(&p);
    h.fetch(&p, &[], None).await.expect("token");
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn client_credentials_has_no_code_exchange_or_revocation() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = p
        .exchange_code(
            &h.call,
            CodeExchange {
                code: Secret::from("canary-c"),
                code_verifier: None,
                redirect_uri: Url::parse(REDIRECT).unwrap(),
            },
        )
        .await
        .expect_err("unsupported");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    let err = p
        .revoke(
            &h.call,
            &Secret::from("canary-t"),
            TokenTypeHint::AccessToken,
        )
        .await
        .expect_err("unsupported");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
}

/// Client credentials against a token endpoint answering `answer`.
async fn failing(
    answer: ResponseTemplate,
    limits: UpstreamLimits,
) -> (ProviderError, UpstreamEvent) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(answer)
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness_with(&p, limits);
    let err = h.fetch(&p, &[], None).await.expect_err("must fail");
    let event = h.only_event("client_credentials", &err).await;
    (err, event)
}

#[tokio::test]
async fn rejected_credentials() {
    let (err, event) = failing(
        ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client", "error_description": format!("bad secret {SECRET}"),
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, .. } if step == "client_credentials"),
        "{err:?}"
    );
    assert_eq!(event.status, Some(401));
}

#[tokio::test]
async fn server_error() {
    let (err, event) = failing(ResponseTemplate::new(500), UpstreamLimits::default()).await;
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(event.status, Some(500));
}

#[tokio::test]
async fn malformed_body() {
    let (err, event) = failing(
        ResponseTemplate::new(200).set_body_raw("<html>Service Unavailable</html>", "text/html"),
        UpstreamLimits::default(),
    )
    .await;
    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert_eq!(event.status, Some(200));
}

#[tokio::test]
async fn timeout() {
    let (err, event) = failing(
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "canary-late"}))
            .set_delay(SLOW),
        short_timeout(),
    )
    .await;
    assert!(
        matches!(&err, ProviderError::TimedOut { step, .. } if step == "client_credentials"),
        "{err:?}"
    );
    assert_eq!(event.status, None);
    assert!(event.error.is_some());
}

#[tokio::test]
async fn an_expired_refresh_token_rejects_the_credential() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "Refresh token has expired",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "refresh_token", "refresh_token": "canary-old-rt"}),
    );
    let h = harness(&p);
    let err = h.fetch(&p, &[], None).await.expect_err("rejected");
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, .. } if step == "refresh"),
        "{err:?}"
    );
    assert_clean(&h.events().await, Some(&err));
}

#[test]
fn documented_config_examples_build() {
    assert_doc_examples_build(&authgate_plugin_trimble::TrimbleAgFactory, toml::from_str);
}
