//! The provider against a mock token server: every request is checked field by field.

use super::*;
use authgate_plugin_sdk::testing::{self, form_body, merged, NoHeader};
use authgate_plugin_sdk::{RejectKind, UpstreamLimits};
use serde_json::{json, Value};
use std::time::Duration;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Harness {
    server: MockServer,
    /// A call whose redactor knows no secrets yet.
    upstream: testing::Harness,
}

impl Harness {
    async fn start() -> Self {
        Self {
            server: MockServer::start().await,
            upstream: testing::Harness::new(Vec::new(), UpstreamLimits::default()),
        }
    }

    fn uri(&self) -> String {
        self.server.uri()
    }

    fn call(&self) -> &UpstreamCall {
        &self.upstream.call
    }

    /// Settings pointing `token_url` at the mock server, plus `extra`.
    fn provider(&self, extra: Value) -> OAuth2Provider {
        let settings = json!({
            "token_url": format!("{}/oauth/token", self.uri()),
            "client_id": "my client",
            "client_secret": "s3cr&t:x",
        });
        OAuth2Provider::from_settings(merged(settings, extra)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn issuer_provider(&self, extra: Value) -> OAuth2Provider {
        let settings = json!({
            "issuer": self.uri(),
            "client_id": "my client",
            "client_secret": "s3cr&t:x",
        });
        OAuth2Provider::from_settings(merged(settings, extra)).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn fetch(
        &self,
        p: &OAuth2Provider,
        scopes: &[&str],
        refresh_token: Option<&str>,
    ) -> Result<IssuedToken, ProviderError> {
        let rt = refresh_token.map(Secret::from);
        self.upstream.fetch(p, scopes, rt.as_ref()).await
    }

    async fn steps(&self) -> Vec<String> {
        self.upstream.steps().await
    }

    async fn discovery_doc(&self, well_known: &str, doc: Value) {
        Mock::given(method("GET"))
            .and(path(format!("/.well-known/{well_known}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc))
            .expect(1)
            .mount(&self.server)
            .await;
    }

    fn doc(&self) -> Value {
        let uri = self.uri();
        json!({
            "issuer": uri,
            "token_endpoint": format!("{uri}/discovered/token"),
            "revocation_endpoint": format!("{uri}/discovered/revoke"),
            "authorization_endpoint": format!("{uri}/discovered/authorize?tenant=t1"),
        })
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` for the harness client, written out
/// literally so the test does not share the encoder it checks.
fn basic() -> String {
    testing::basic("my+client", "s3cr%26t%3Ax")
}

fn token(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn oauth_error(code: &str) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({"error": code, "error_description": "nope"}))
}

#[tokio::test]
async fn client_credentials_with_basic_auth() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "read write"),
        ]))
        .respond_with(token(json!({
            "access_token": "at-1", "token_type": "Bearer", "expires_in": 1800, "scope": "read"
        })))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"scopes": ["write", "read"]}));
    let t = h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-1");
    assert_eq!(t.token_type, "Bearer");
    assert_eq!(t.expires_in, Some(Duration::from_secs(1800)));
    assert_eq!(
        t.scopes,
        Some(vec!["read".to_owned()]),
        "granted scopes win"
    );
    assert!(t.refresh_token.is_none());
    assert_eq!(h.steps().await, ["token"]);
    h.server.verify().await;
}

#[tokio::test]
async fn client_credentials_with_post_auth() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("client_id", "my client"),
            ("client_secret", "s3cr&t:x"),
        ]))
        .respond_with(token(json!({"access_token": "at-post", "expires_in": 60})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"client_auth": "client_secret_post"}));
    let t = h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-post");
    assert_eq!(t.scopes, None, "nothing requested, nothing granted");
    h.server.verify().await;
}

#[tokio::test]
async fn public_client_sends_only_its_id() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("client_id", "pub"),
        ]))
        .respond_with(token(json!({"access_token": "at-pub"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = OAuth2Provider::from_settings(json!({
        "token_url": format!("{}/oauth/token", h.uri()),
        "client_id": "pub",
        "client_auth": "none",
    }))
    .unwrap();
    assert_eq!(
        h.fetch(&p, &[], None).await.unwrap().access_token.expose(),
        "at-pub"
    );
    h.server.verify().await;
}

#[tokio::test]
async fn caller_scopes_custom_separator_and_extra_params() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "api.read,api.write"),
            ("audience", "https://api.example.com"),
            ("resource", "urn:x"),
        ]))
        .respond_with(token(json!({"access_token": "at-2", "expires_in": 60})))
        .expect(1)
        .mount(&h.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "x"),
            ("audience", "https://api.example.com"),
            ("resource", "urn:x"),
        ]))
        .respond_with(token(json!({"access_token": "at-3", "scope": "x,y"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({
        "scopes": ["default"],
        "scope_separator": ",",
        "extra_params": {"audience": "https://api.example.com", "resource": "urn:x"},
    }));
    let t = h.fetch(&p, &["api.write", "api.read"], None).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-2");
    assert_eq!(
        t.scopes,
        Some(vec!["api.read".to_owned(), "api.write".to_owned()]),
        "no scope in the response: the requested ones were granted"
    );
    let t = h.fetch(&p, &["x"], None).await.unwrap();
    assert_eq!(
        t.scopes,
        Some(vec!["x".to_owned(), "y".to_owned()]),
        "granted scopes are split on the configured separator"
    );
    h.server.verify().await;
}

#[tokio::test]
async fn send_scope_false_omits_scope() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[("grant_type", "client_credentials")]))
        .respond_with(token(json!({"access_token": "at"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"scopes": ["read"], "send_scope": false}));
    let t = h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(t.scopes, Some(vec!["read".to_owned()]));
    h.server.verify().await;
}

#[tokio::test]
async fn password_grant() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("grant_type", "password"),
            ("username", "alice@example.com"),
            ("password", "pw&=1"),
            ("scope", "trapi"),
        ]))
        .respond_with(token(json!({
            "access_token": "at-pw", "expires_in": "300", "refresh_token": "rt-pw"
        })))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({
        "grant": "password", "username": "alice@example.com", "password": "pw&=1", "scopes": ["trapi"],
    }));
    let t = h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(t.expires_in, Some(Duration::from_secs(300)));
    assert_eq!(t.refresh_token.unwrap().expose(), "rt-pw");
    h.server.verify().await;
}

#[tokio::test]
async fn refresh_returns_the_rotated_refresh_token() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        // Configured default scopes are not sent on refresh: the original grant stands.
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-old"),
        ]))
        .respond_with(token(json!({
            "access_token": "at-new", "expires_in": 60, "refresh_token": "rt-new"
        })))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"scopes": ["read"]}));
    let t = h.fetch(&p, &[], Some("rt-old")).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-new");
    assert_eq!(
        t.refresh_token.map(|s| s.expose().to_owned()),
        Some("rt-new".into())
    );
    assert_eq!(t.scopes, Some(vec!["read".to_owned()]));
    assert_eq!(h.steps().await, ["refresh"]);
    h.server.verify().await;
}

#[tokio::test]
async fn refresh_sends_the_callers_scopes_and_keeps_the_old_refresh_token() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-1"),
            ("scope", "a b"),
            ("audience", "aud"),
        ]))
        .respond_with(token(json!({"access_token": "at", "expires_in": 60})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"extra_params": {"audience": "aud"}}));
    let t = h.fetch(&p, &["b", "a"], Some("rt-1")).await.unwrap();
    assert!(
        t.refresh_token.is_none(),
        "no new refresh token: keep the current one"
    );
    h.server.verify().await;
}

#[tokio::test]
async fn refresh_token_grant_uses_the_configured_refresh_token() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-configured"),
        ]))
        .respond_with(token(json!({"access_token": "at"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"grant": "refresh_token", "refresh_token": "rt-configured"}));
    assert!(p.requires_refresh_token());
    assert_eq!(
        p.configured_refresh_token().unwrap().expose(),
        "rt-configured"
    );
    h.fetch(&p, &[], None).await.unwrap();
    h.server.verify().await;
}

#[tokio::test]
async fn invalid_grant_on_refresh_falls_back_to_client_credentials() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-expired"),
        ]))
        .respond_with(oauth_error("invalid_grant"))
        .expect(1)
        .mount(&h.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
        ]))
        .respond_with(token(json!({"access_token": "at-fresh", "expires_in": 60})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"scopes": ["read"]}));
    let t = h.fetch(&p, &[], Some("rt-expired")).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-fresh");
    assert_eq!(h.steps().await, ["refresh", "token"]);
    h.server.verify().await;
}

#[tokio::test]
async fn other_refresh_errors_do_not_fall_back() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(oauth_error("invalid_client"))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({}));
    let e = h.fetch(&p, &[], Some("rt")).await.unwrap_err();
    assert_eq!(e.oauth_code(), Some("invalid_client"));
    assert_eq!(h.steps().await, ["refresh"]);
    h.server.verify().await;
}

#[tokio::test]
async fn invalid_grant_with_refresh_token_grant_rejects_the_credential() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(oauth_error("invalid_grant"))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"grant": "refresh_token", "refresh_token": "rt-cfg"}));
    let e = h.fetch(&p, &[], Some("rt-latest")).await.unwrap_err();
    assert!(e.rejects_credential(), "{e:?}");
    assert!(matches!(
        e,
        ProviderError::Rejected { kind: RejectKind::Credential, ref step, .. } if step == "refresh"
    ));
    h.server.verify().await;
}

#[tokio::test]
async fn authorization_code_grant_without_refresh_token_needs_authorization() {
    let h = Harness::start().await;
    let p = h.provider(json!({
        "grant": "authorization_code",
        "authorization_url": format!("{}/authorize", h.uri()),
    }));
    assert!(p.requires_refresh_token());
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(matches!(e, ProviderError::InvalidConfiguration(_)), "{e:?}");
    assert!(e.to_string().contains("authorization flow"), "{e}");
    assert!(h.steps().await.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn lifetime_from_jwt_exp_when_no_expires_in() {
    let h = Harness::start().await;
    let at = testing::jwt(&json!({"exp": 2_000_000_123u64, "sub": "svc"}).to_string());
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token(json!({"access_token": at, "token_type": "Bearer"})))
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"default_lifetime_seconds": 120}));
    let t = h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(t.expires_at_unix, Some(2_000_000_123));
    assert_eq!(t.expires_in, None);
}

#[tokio::test]
async fn default_lifetime_when_nothing_says() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token(json!({"access_token": "opaque"})))
        .mount(&h.server)
        .await;
    let t = h
        .fetch(
            &h.provider(json!({"default_lifetime_seconds": 120})),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(t.expires_in, Some(Duration::from_secs(120)));
    assert_eq!(t.expires_at_unix, None);
    let t = h.fetch(&h.provider(json!({})), &[], None).await.unwrap();
    assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn discovery_finds_the_token_endpoint_once() {
    let h = Harness::start().await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    Mock::given(method("POST"))
        .and(path("/discovered/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[("grant_type", "client_credentials")]))
        .respond_with(token(json!({"access_token": "at-d", "expires_in": 60})))
        .expect(2)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({}));
    assert!(
        p.capabilities().revoke,
        "an issuer may publish a revocation endpoint"
    );
    assert_eq!(
        h.fetch(&p, &[], None).await.unwrap().access_token.expose(),
        "at-d"
    );
    h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(h.steps().await, ["discovery", "token", "token"]);
    h.server.verify().await;
}

#[tokio::test]
async fn discovery_falls_back_to_rfc8414_on_404() {
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&h.server)
        .await;
    // A trailing slash on either side is the same issuer.
    let mut doc = h.doc();
    doc["issuer"] = json!(format!("{}/", h.uri()));
    h.discovery_doc("oauth-authorization-server", doc).await;
    Mock::given(method("POST"))
        .and(path("/discovered/token"))
        .respond_with(token(json!({"access_token": "at-8414"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({}));
    assert_eq!(
        h.fetch(&p, &[], None).await.unwrap().access_token.expose(),
        "at-8414"
    );
    assert_eq!(h.steps().await, ["discovery", "discovery", "token"]);
    h.server.verify().await;
}

#[tokio::test]
async fn discovery_with_no_metadata_at_all_is_a_configuration_error() {
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .expect(2)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({}));
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(matches!(e, ProviderError::InvalidConfiguration(_)), "{e:?}");
    assert!(e.to_string().contains("`issuer`"), "{e}");
    h.server.verify().await;
}

#[tokio::test]
async fn discovered_issuer_must_match() {
    let h = Harness::start().await;
    let mut doc = h.doc();
    doc["issuer"] = json!("https://evil.example.com");
    h.discovery_doc("openid-configuration", doc).await;
    let p = h.issuer_provider(json!({}));
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(matches!(e, ProviderError::InvalidConfiguration(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("`issuer`") && msg.contains("https://evil.example.com"),
        "{msg}"
    );
    assert_eq!(
        h.steps().await,
        ["discovery"],
        "no token request to a foreign endpoint"
    );
    h.server.verify().await;
}

#[tokio::test]
async fn failed_discovery_is_not_cached() {
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.server)
        .await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    Mock::given(method("POST"))
        .and(path("/discovered/token"))
        .respond_with(token(json!({"access_token": "at-retry"})))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({}));
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(
        h.fetch(&p, &[], None).await.unwrap().access_token.expose(),
        "at-retry"
    );
    assert_eq!(h.steps().await, ["discovery", "discovery", "token"]);
    h.server.verify().await;
}

#[tokio::test]
async fn revoke_with_configured_url() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/revoke"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("token", "rt-to-revoke"),
            ("token_type_hint", "refresh_token"),
        ]))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({"revocation_url": format!("{}/oauth/revoke", h.uri())}));
    assert!(p.capabilities().revoke);
    p.revoke(
        h.call(),
        &Secret::from("rt-to-revoke"),
        TokenTypeHint::RefreshToken,
    )
    .await
    .unwrap();
    assert_eq!(h.steps().await, ["revoke"]);
    h.server.verify().await;
}

#[tokio::test]
async fn revoke_with_discovered_endpoint() {
    let h = Harness::start().await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    Mock::given(method("POST"))
        .and(path("/discovered/revoke"))
        .and(NoHeader("authorization"))
        .and(form_body(&[
            ("token", "at-x"),
            ("token_type_hint", "access_token"),
            ("client_id", "my client"),
            ("client_secret", "s3cr&t:x"),
        ]))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({"client_auth": "post"}));
    p.revoke(h.call(), &Secret::from("at-x"), TokenTypeHint::AccessToken)
        .await
        .unwrap();
    h.server.verify().await;
}

#[tokio::test]
async fn revoke_without_an_endpoint_is_unsupported() {
    let h = Harness::start().await;
    let mut doc = h.doc();
    doc.as_object_mut().unwrap().remove("revocation_endpoint");
    h.discovery_doc("openid-configuration", doc).await;
    let p = h.issuer_provider(json!({}));
    let e = p
        .revoke(h.call(), &Secret::from("at"), TokenTypeHint::AccessToken)
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("`revocation_url`"), "{e}");

    let p = h.provider(json!({}));
    assert!(!p.capabilities().revoke);
    let e = p
        .revoke(h.call(), &Secret::from("at"), TokenTypeHint::AccessToken)
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert_eq!(h.steps().await, ["discovery"]);
    h.server.verify().await;
}

fn auth_request(challenge: Option<&str>) -> AuthorizationRequest {
    AuthorizationRequest {
        scopes: ScopeSet::new(["openid", "offline_access"]),
        state: "st-123".into(),
        code_challenge: challenge.map(str::to_owned),
        redirect_uri: Url::parse("https://gw.example.com/oauth/callback").unwrap(),
    }
}

fn query(url: &Url) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    q.sort();
    q
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn authorization_url_with_pkce_from_discovery() {
    let h = Harness::start().await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    let p = h.issuer_provider(json!({"grant": "authorization_code", "scope_separator": "+"}));
    let caps = p.capabilities();
    assert!(
        caps.authorization_code && caps.pkce && caps.refresh_token,
        "{caps:?}"
    );
    let url = p
        .authorization_url(h.call(), &auth_request(Some("chal-1")))
        .await
        .unwrap();
    assert_eq!(url.path(), "/discovered/authorize");
    assert_eq!(
        query(&url),
        pairs(&[
            ("tenant", "t1"),
            ("response_type", "code"),
            ("client_id", "my client"),
            ("redirect_uri", "https://gw.example.com/oauth/callback"),
            ("scope", "offline_access+openid"),
            ("state", "st-123"),
            ("prompt", "consent"),
            ("code_challenge", "chal-1"),
            ("code_challenge_method", "S256"),
        ])
    );
    h.server.verify().await;
}

#[tokio::test]
async fn authorization_url_with_configured_endpoint_and_redirect_without_pkce() {
    let h = Harness::start().await;
    let p = h.provider(json!({
        "grant": "authorization_code",
        "authorization_url": "https://idp.example.com/authorize",
        "redirect_uri": "https://public.example.com/cb",
        "scopes": ["read"],
        "pkce": false,
    }));
    assert!(!p.capabilities().pkce);
    let mut req = auth_request(Some("chal-ignored"));
    req.scopes = ScopeSet::default();
    let url = p.authorization_url(h.call(), &req).await.unwrap();
    assert_eq!(url.host_str(), Some("idp.example.com"));
    assert_eq!(
        query(&url),
        pairs(&[
            ("response_type", "code"),
            ("client_id", "my client"),
            ("redirect_uri", "https://public.example.com/cb"),
            ("scope", "read"),
            ("state", "st-123"),
        ])
    );
    assert!(h.steps().await.is_empty());
}

#[tokio::test]
async fn exchange_code_sends_code_redirect_and_verifier() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic().as_str()))
        .and(form_body(&[
            ("grant_type", "authorization_code"),
            ("code", "code-1"),
            ("redirect_uri", "https://gw.example.com/oauth/callback"),
            ("code_verifier", "verifier-1"),
            ("audience", "aud"),
        ]))
        .respond_with(token(json!({
            "access_token": "at-code", "expires_in": 60, "refresh_token": "rt-code", "scope": "openid"
        })))
        .expect(1)
        .mount(&h.server)
        .await;
    let p = h.provider(json!({
        "grant": "authorization_code",
        "authorization_url": "https://idp.example.com/authorize",
        "extra_params": {"audience": "aud"},
    }));
    let t = p
        .exchange_code(
            h.call(),
            CodeExchange {
                code: Secret::from("code-1"),
                code_verifier: Some(Secret::from("verifier-1")),
                redirect_uri: Url::parse("https://gw.example.com/oauth/callback").unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(t.refresh_token.unwrap().expose(), "rt-code");
    assert_eq!(t.scopes, Some(vec!["openid".to_owned()]));
    assert_eq!(h.steps().await, ["exchange_code"]);
    h.server.verify().await;
}

#[tokio::test]
async fn code_flow_is_unsupported_for_other_grants() {
    let h = Harness::start().await;
    let p = h.provider(json!({}));
    let caps = p.capabilities();
    assert!(
        !caps.authorization_code && !caps.pkce && !caps.refresh_token,
        "{caps:?}"
    );
    let e = p
        .authorization_url(h.call(), &auth_request(None))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    let e = p
        .exchange_code(
            h.call(),
            CodeExchange {
                code: Secret::from("c"),
                code_verifier: None,
                redirect_uri: Url::parse("https://gw.example.com/cb").unwrap(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
    assert!(h.steps().await.is_empty());
}

#[tokio::test]
async fn secrets_and_debug() {
    let h = Harness::start().await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    Mock::given(method("POST"))
        .and(path("/discovered/token"))
        .respond_with(token(json!({"access_token": "canary-at"})))
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({
        "client_secret": "canary-cs",
        "grant": "password",
        "username": "u",
        "password": "canary-pw",
        "refresh_token": "canary-rt",
        "extra_params": {"client_assertion_x": "canary-extra"},
    }));
    let secrets: Vec<String> = p.secrets().iter().map(|s| s.expose().to_owned()).collect();
    assert_eq!(secrets, ["canary-cs", "canary-pw", "canary-rt"]);
    let before = format!("{p:?}");
    assert!(
        before.contains("OAuth2Provider") && before.contains("my client"),
        "{before}"
    );
    h.fetch(&p, &[], None).await.unwrap(); // refreshes with canary-rt after discovery
    let after = format!("{p:?}");
    assert!(
        after.contains("discovered/token"),
        "discovery result shows: {after}"
    );
    for out in [before, after, format!("{:?}", p.settings())] {
        assert!(!out.contains("canary"), "secret in Debug output: {out}");
    }
}

#[tokio::test]
async fn concurrent_first_fetches_share_one_discovery() {
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(h.doc())
                .set_delay(Duration::from_millis(200)),
        )
        .expect(1)
        .mount(&h.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/discovered/token"))
        .respond_with(token(json!({"access_token": "at"})))
        .expect(2)
        .mount(&h.server)
        .await;
    let p = h.issuer_provider(json!({}));
    let (a, b) = tokio::join!(h.fetch(&p, &[], None), h.fetch(&p, &[], None));
    a.unwrap();
    b.unwrap();
    h.server.verify().await;
}

/// `tls_client_auth` against an issuer: the mutual-TLS alias of the token endpoint is used
/// (RFC 8705 §5), and a discovered endpoint that is not https is refused before anything is
/// sent, since the certificate could not be presented there.
#[tokio::test]
async fn a_client_certificate_uses_the_mtls_alias_and_only_https() {
    let pki = testing::TestPki::new("test CA");
    let (cert, key) = pki.client("gateway");
    let settings = |h: &Harness| {
        json!({
            "issuer": h.uri(),
            "client_id": "gw",
            "client_auth": "tls_client_auth",
            "tls_client_certificate": cert,
            "tls_client_key": key,
        })
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let alias = format!("https://{}/mtls/token", closed.local_addr().unwrap());
    drop(closed);

    let h = Harness::start().await;
    let mut doc = h.doc();
    doc["mtls_endpoint_aliases"] = json!({"token_endpoint": alias});
    h.discovery_doc("openid-configuration", doc).await;
    let p = OAuth2Provider::from_settings(settings(&h)).unwrap();
    assert!(p.client_tls().is_some_and(|t| t.identity().is_some()));
    let err = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let events = h.upstream.events().await;
    let sent = events.iter().find(|e| e.step == STEP_TOKEN).unwrap();
    assert_eq!(sent.url, alias);

    let h = Harness::start().await;
    h.discovery_doc("openid-configuration", h.doc()).await;
    let p = OAuth2Provider::from_settings(settings(&h)).unwrap();
    let err = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::InvalidConfiguration(_)),
        "{err}"
    );
    assert!(err.to_string().contains("is not https"), "{err}");
    assert_eq!(h.steps().await, vec!["discovery"]);
}
