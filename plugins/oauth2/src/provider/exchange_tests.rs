//! RFC 8693 token exchange against a mock token server: what is sent (with the credential's
//! own client authentication), how refusals are classified, and that no token is recorded.

use super::*;
use authgate_plugin_sdk::exchange::{token_type, TOKEN_EXCHANGE_GRANT};
use authgate_plugin_sdk::testing::{self, merged};
use authgate_plugin_sdk::{RejectKind, UpstreamLimits};
use serde_json::{json, Map, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SUBJECT: &str = "canary-subject-token";

async fn server(answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

fn issued() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "canary-issued-token", "issued_token_type": token_type::ACCESS_TOKEN,
        "token_type": "Bearer", "expires_in": 300, "refresh_token": "canary-user-rt",
    }))
}

fn provider(server: &MockServer, settings: Value) -> OAuth2Provider {
    let base = json!({"token_url": format!("{}/token", server.uri()), "client_id": "tx",
        "client_secret": "canary-client-secret", "token_exchange": true});
    OAuth2Provider::from_settings(merged(base, settings)).unwrap_or_else(|e| panic!("{e}"))
}

fn request() -> TokenExchange {
    TokenExchange {
        subject_token: Secret::from(SUBJECT),
        subject_token_type: token_type::ACCESS_TOKEN.into(),
        actor_token: None,
        audience: vec!["orders-api".into()],
        resource: vec![],
        scopes: ScopeSet::new(["read"]),
        requested_token_type: None,
    }
}

async fn exchange(p: &OAuth2Provider) -> (testing::Harness, Result<ExchangedToken, ProviderError>) {
    let h = testing::Harness::new(p.secrets(), UpstreamLimits::default());
    let req = request();
    req.register_secrets(&h.call);
    let out = p.exchange_token(&h.call, &req).await;
    (h, out)
}

async fn form(server: &MockServer) -> Map<String, Value> {
    let r = &server.received_requests().await.unwrap()[0];
    url::form_urlencoded::parse(&r.body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

#[tokio::test]
async fn exchange_sends_rfc8693_with_client_auth_and_drops_the_refresh_token() {
    let server = server(issued()).await;
    let p = provider(
        &server,
        json!({"extra_params": {"audience": "configured", "tenant": "acme"}}),
    );
    assert!(p.capabilities().token_exchange);
    let (h, out) = exchange(&p).await;
    let t = out.unwrap();
    assert_eq!(t.issued_token_type, token_type::ACCESS_TOKEN);
    assert_eq!(t.token.access_token.expose(), "canary-issued-token");
    assert!(t.token.refresh_token.is_none());
    assert_eq!(t.token.scopes.as_deref(), Some(&["read".to_owned()][..]));
    let f = form(&server).await;
    assert_eq!(f["grant_type"], TOKEN_EXCHANGE_GRANT);
    assert_eq!(f["subject_token"], SUBJECT);
    assert_eq!(f["subject_token_type"], token_type::ACCESS_TOKEN);
    assert_eq!(f["audience"], "orders-api", "the caller's audience wins");
    assert_eq!(f["tenant"], "acme");
    assert_eq!(f["scope"], "read");
    let r = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        r.headers.get("authorization").unwrap().to_str().unwrap(),
        testing::basic("tx", "canary-client-secret")
    );
    assert_eq!(h.steps().await, ["token_exchange"]);
    testing::assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn not_enabled_is_unsupported_without_a_request() {
    let server = server(issued()).await;
    let p = provider(&server, json!({"token_exchange": null}));
    assert!(!p.capabilities().token_exchange);
    let (_, out) = exchange(&p).await;
    match out.unwrap_err() {
        ProviderError::Unsupported(m) => assert!(m.contains("token_exchange = true"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_subject_token_is_not_the_credentials_fault() {
    for (status, code, kind) in [
        (400, "invalid_grant", RejectKind::Subject),
        (400, "invalid_request", RejectKind::Subject),
        (400, "invalid_target", RejectKind::Target),
        (401, "invalid_client", RejectKind::Credential),
    ] {
        let body = json!({"error": code, "error_description": format!("{SUBJECT} refused")});
        let server = server(ResponseTemplate::new(status).set_body_json(body)).await;
        let p = provider(&server, json!({}));
        let (h, out) = exchange(&p).await;
        let e = out.unwrap_err();
        match &e {
            ProviderError::Rejected { kind: k, .. } => assert_eq!(*k, kind, "{code}"),
            other => panic!("{code}: {other:?}"),
        }
        testing::assert_clean(&h.events().await, Some(&e));
    }
}

#[tokio::test]
async fn private_key_jwt_clients_exchange_with_an_assertion() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = p256::SecretKey::random(&mut rand::thread_rng())
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string();
    let server = server(issued()).await;
    let p = provider(
        &server,
        json!({"client_secret": null, "client_auth": "private_key_jwt", "private_key": pem}),
    );
    let (h, out) = exchange(&p).await;
    out.unwrap();
    let f = form(&server).await;
    assert_eq!(
        f["client_assertion_type"],
        authgate_plugin_sdk::assertion::CLIENT_ASSERTION_TYPE
    );
    assert_eq!(f["subject_token"], SUBJECT);
    testing::assert_clean(&h.events().await, None);
}
