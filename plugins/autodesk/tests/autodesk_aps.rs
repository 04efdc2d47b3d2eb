//! `autodesk_aps` against a local fake of APS authentication v2: the exact requests of the
//! 2-legged and 3-legged flows and of revocation, rotation of refresh tokens, APS's own error
//! shape, and every failure class.

use authgate_plugin_autodesk::AutodeskApsProvider;
use authgate_plugin_sdk::testing::*;
use authgate_plugin_sdk::{
    AuthorizationRequest, CodeExchange, Provider, ProviderError, RejectKind, ScopeSet, Secret,
    TokenTypeHint, UpstreamEvent, UpstreamLimits,
};
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT: &str = "5zw90va0UuwMKTnPS5sLsdgZjDkVYXN7";
const SECRET: &str = "canary7I6uN1rjneirxiMW";
const BASE: &str = "/authentication/v2";
const CALLBACK: &str = "http://localhost:8080/api/auth/callback";

fn provider(server: &MockServer, extra: Value) -> AutodeskApsProvider {
    let s = json!({
        "client_id": CLIENT,
        "client_secret": SECRET,
        "scopes": ["data:read", "viewables:read"],
        "base_url": format!("{}{BASE}", server.uri()),
    });
    AutodeskApsProvider::from_settings(merged(s, extra)).expect("valid settings")
}

fn code(code: &str, verifier: Option<&str>) -> CodeExchange {
    CodeExchange {
        code: Secret::from(code),
        code_verifier: verifier.map(Secret::from),
        redirect_uri: Url::parse(CALLBACK).unwrap(),
    }
}

#[tokio::test]
async fn two_legged_sends_basic_auth_and_space_separated_scopes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(header("accept", "application/json"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "data:read viewables:read"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-aps-2l-token", "token_type": "Bearer", "expires_in": 3599,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let token = h.fetch(&p, &[], None).await.expect("token");
    assert_eq!(token.access_token.expose(), "canary-aps-2l-token");
    assert_eq!(token.expires_in, Some(Duration::from_secs(3599)));
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].step.as_str(), events[0].status),
        ("client_credentials", Some(200))
    );
    // The form is readable in the event; the Basic credentials are not.
    assert!(
        events[0]
            .request_body
            .contains("scope=data%3Aread+viewables%3Aread"),
        "{}",
        events[0].request_body
    );
    assert_clean(&events, None);
}

#[tokio::test]
async fn requested_scopes_replace_the_defaults() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "bucket:read data:write"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-aps-t", "token_type": "Bearer", "expires_in": 3599,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    h.fetch(&p, &["data:write bucket:read"], None)
        .await
        .expect("token");
}

#[tokio::test]
async fn authorize_url_matches_seed_003_plus_state_and_pkce() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    let url = p
        .authorization_url(
            &h.call,
            &AuthorizationRequest {
                scopes: ScopeSet::default(),
                state: "s-1".into(),
                code_challenge: Some("challenge-xyz".into()),
                redirect_uri: Url::parse(CALLBACK).unwrap(),
            },
        )
        .await
        .expect("url");
    assert_eq!(url.path(), format!("{BASE}/authorize"));
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let want: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", CLIENT),
        ("redirect_uri", CALLBACK),
        ("scope", "data:read viewables:read"),
        ("state", "s-1"),
        ("code_challenge", "challenge-xyz"),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(q, want);
}

#[tokio::test]
async fn three_legged_code_exchange_and_rotating_refresh() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "canary-aps-code"),
            ("redirect_uri", CALLBACK),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-3l-at-1", "token_type": "Bearer", "expires_in": 3599,
            "refresh_token": "canary-3l-rt-1", "id_token": jwt(r#"{"sub":"u"}"#),
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "canary-3l-rt-1"),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-3l-at-2", "token_type": "Bearer", "expires_in": 3599,
            "refresh_token": "canary-3l-rt-2",
        })))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    // The old refresh token was rotated away: APS refuses it.
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(form_body(&[("grant_type", "refresh_token"), ("refresh_token", "canary-3l-rt-1")]))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "The refresh token is invalid or expired.",
        })))
        .mount(&server)
        .await;

    let p = provider(&server, json!({"grant": "authorization_code"}));
    assert_eq!(
        p.refresh_token_idle_lifetime(),
        Some(Duration::from_secs(14 * 24 * 3600))
    );
    let h = harness(&p);
    let first = p
        .exchange_code(&h.call, code("canary-aps-code", None))
        .await
        .expect("exchange");
    let rt1 = first.refresh_token.clone().expect("refresh token");
    let second = h.fetch(&p, &[], Some(&rt1)).await.expect("refresh");
    assert_eq!(
        second.refresh_token.as_ref().map(Secret::expose),
        Some("canary-3l-rt-2")
    );
    let err = h
        .fetch(&p, &[], Some(&rt1))
        .await
        .expect_err("rotated away");
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, .. } if step == "refresh"),
        "{err:?}"
    );
    assert_eq!(
        h.steps().await,
        ["authorization_code", "refresh", "refresh"]
    );
    assert_clean(&h.events().await, Some(&err));
}

#[tokio::test]
async fn seed_003_post_style_sends_the_pair_in_the_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "canary-c2"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("redirect_uri", CALLBACK),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at", "token_type": "Bearer", "expires_in": 3599, "refresh_token": "canary-rt",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "authorization_code", "client_auth": "post"}),
    );
    let h = harness(&p);
    p.exchange_code(&h.call, code("canary-c2", None))
        .await
        .expect("exchange");
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn public_pkce_client_sends_client_id_and_verifier() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "canary-c3"),
            ("redirect_uri", CALLBACK),
            ("code_verifier", "canary-verifier-43-chars-long-aaaaaaaaaaaaaa"),
            ("client_id", CLIENT),
        ]))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at", "token_type": "Bearer", "expires_in": 3599, "refresh_token": "canary-rt",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(
        &server,
        json!({"grant": "authorization_code", "client_secret": null}),
    );
    let h = harness(&p);
    p.exchange_code(
        &h.call,
        code(
            "canary-c3",
            Some("canary-verifier-43-chars-long-aaaaaaaaaaaaaa"),
        ),
    )
    .await
    .expect("exchange");
    assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn revoke_sends_token_and_hint_with_basic_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/revoke")))
        .and(header("authorization", basic(CLIENT, SECRET).as_str()))
        .and(form_body(&[
            ("token", "canary-rt-old"),
            ("token_type_hint", "refresh_token"),
        ]))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/revoke")))
        .and(form_body(&[
            ("token", "canary-at-old"),
            ("token_type_hint", "access_token"),
        ]))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({"grant": "authorization_code"}));
    let h = harness(&p);
    p.revoke(
        &h.call,
        &Secret::from("canary-rt-old"),
        TokenTypeHint::RefreshToken,
    )
    .await
    .expect("revoked");
    p.revoke(
        &h.call,
        &Secret::from("canary-at-old"),
        TokenTypeHint::AccessToken,
    )
    .await
    .expect("revoked");
    let events = h.events().await;
    assert!(events
        .iter()
        .all(|e| e.step == "revoke" && e.status == Some(200)));
    assert_clean(&events, None);
}

#[tokio::test]
async fn revoke_failures_are_classified() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/revoke")))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "developerMessage": "The client_secret does not match the client_id.",
            "userMessage": " ", "errorCode": "AUTH-003",
            "more info": "https://aps.autodesk.com/en/docs/oauth/v2/developers_guide/error_handling/",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = p
        .revoke(
            &h.call,
            &Secret::from("canary-t"),
            TokenTypeHint::AccessToken,
        )
        .await
        .expect_err("rejected");
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, code, .. } if step == "revoke" && code == "AUTH-003"),
        "{err:?}"
    );
}

/// 2-legged fetch against a token endpoint answering `answer`.
async fn failing(
    answer: ResponseTemplate,
    limits: UpstreamLimits,
) -> (ProviderError, UpstreamEvent) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{BASE}/token")))
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
async fn rejected_credentials_in_aps_shape() {
    let (err, event) = failing(
        ResponseTemplate::new(401).set_body_json(json!({
            "developerMessage": format!("The client_id and client_secret ({SECRET}) combination is not valid"),
            "userMessage": " ", "errorCode": "AUTH-003",
            "more info": "https://aps.autodesk.com/en/docs/oauth/v2/developers_guide/error_handling/",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Rejected { kind: RejectKind::Credential, step, code, .. } if step == "client_credentials" && code == "AUTH-003"),
        "{err:?}"
    );
    assert_eq!(event.status, Some(401));

    let (err, _) = failing(
        ResponseTemplate::new(403).set_body_json(json!({
            "developerMessage": "The client_id specified does not have access to the api product",
            "moreInfo": "https://aps.autodesk.com/en/docs/oauth/v2/developers_guide/error_handling/",
            "errorCode": "AUTH-001",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(err.rejects_credential(), "{err:?}");
}

#[tokio::test]
async fn rejected_credentials_in_rfc6749_shape() {
    let (err, event) = failing(
        ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client", "error_description": "Client authentication failed",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(err.rejects_credential(), "{err:?}");
    assert_eq!(event.status, Some(401));
}

#[tokio::test]
async fn invalid_scope_is_not_a_credential_problem() {
    let (err, _) = failing(
        ResponseTemplate::new(400).set_body_json(json!({
            "developerMessage": "One or more requested scopes are invalid.", "errorCode": "AUTH-004",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert!(
        matches!(
            err,
            ProviderError::Rejected {
                kind: RejectKind::Scope,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_error() {
    let (err, event) = failing(ResponseTemplate::new(503), UpstreamLimits::default()).await;
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(event.status, Some(503));
}

#[tokio::test]
async fn rate_limit_is_transient_with_retry_after() {
    let (err, event) = failing(
        ResponseTemplate::new(429).insert_header("retry-after", "12").set_body_json(json!({
            "developerMessage": "Rate limit of this API request is exceeded.", "errorCode": "ERR-001",
        })),
        UpstreamLimits::default(),
    )
    .await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(12)), "{err:?}");
    assert_eq!(event.status, Some(429));
}

#[tokio::test]
async fn malformed_body() {
    let (err, event) = failing(
        ResponseTemplate::new(200)
            .set_body_raw(r#"{"token_type":"Bearer","expi"#, "application/json"),
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
async fn two_legged_has_no_code_flow() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let err = p
        .exchange_code(&h.call, code("canary-x", None))
        .await
        .expect_err("unsupported");
    assert!(matches!(err, ProviderError::Unsupported(_)), "{err:?}");
    assert!(h.events().await.is_empty());
}

#[test]
fn documented_config_examples_build() {
    assert_doc_examples_build(
        &authgate_plugin_autodesk::AutodeskApsFactory,
        toml::from_str,
    );
}
