//! private_key_jwt, the JWT bearer grant and client-secret rotation against a mock token
//! server: what is sent, what is remembered, what is recorded.

use super::*;
use authgate_plugin_sdk::testing::{self, merged};
use authgate_plugin_sdk::{RejectKind, UpstreamLimits};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Map, Value};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CANARY_SECRET: &str = "canary-old-secret";

fn ec_pem() -> String {
    p256::SecretKey::random(&mut rand::thread_rng())
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

fn ok_token() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"access_token": "at-1", "expires_in": 60}))
}

async fn server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ok_token())
        .mount(&server)
        .await;
    server
}

fn provider(server: &MockServer, settings: Value) -> OAuth2Provider {
    let base = json!({"token_url": format!("{}/token", server.uri())});
    OAuth2Provider::from_settings(merged(base, settings)).unwrap_or_else(|e| panic!("{e}"))
}

fn harness(p: &OAuth2Provider) -> testing::Harness {
    testing::Harness::new(p.secrets(), UpstreamLimits::default())
}

/// The form fields of every request the server received.
async fn forms(server: &MockServer) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for r in server.received_requests().await.unwrap_or_default() {
        let pairs: Map<String, Value> = url::form_urlencoded::parse(&r.body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        out.push(pairs);
    }
    out
}

fn claims(jwt: &Value) -> Map<String, Value> {
    authgate_plugin_sdk::jwt::claims(jwt.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_per_request() {
    let server = server().await;
    let p = provider(
        &server,
        json!({"client_id": "pk-client", "client_auth": "private_key_jwt", "private_key": ec_pem(), "key_id": "k1"}),
    );
    let h = harness(&p);
    h.fetch(&p, &["read"], None).await.unwrap();
    h.fetch(&p, &["read"], None).await.unwrap();
    let forms = forms(&server).await;
    assert_eq!(forms.len(), 2);
    let token_url = format!("{}/token", server.uri());
    for f in &forms {
        assert_eq!(
            f["client_assertion_type"],
            authgate_plugin_sdk::assertion::CLIENT_ASSERTION_TYPE
        );
        assert_eq!(f["client_id"], "pk-client");
        assert!(!f.contains_key("client_secret"));
        let c = claims(&f["client_assertion"]);
        assert_eq!(
            (&c["iss"], &c["sub"]),
            (&json!("pk-client"), &json!("pk-client"))
        );
        assert_eq!(c["aud"], token_url.as_str());
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    }
    let jti = |i: usize| claims(&forms[i]["client_assertion"])["jti"].clone();
    assert_ne!(jti(0), jti(1), "an assertion is never reused");
    let requests = server.received_requests().await.unwrap();
    assert!(requests
        .iter()
        .all(|r| !r.headers.contains_key("authorization")));
    // The assertion is in the events only as a digest.
    let events = format!("{:?}", h.events().await);
    for f in &forms {
        assert!(
            !events.contains(f["client_assertion"].as_str().unwrap()),
            "{events}"
        );
    }
    assert!(
        events.contains("client_assertion=hmac-sha256%3A"),
        "{events}"
    );
}

#[tokio::test]
async fn jwt_bearer_sends_a_signed_assertion_with_configured_claims() {
    let server = server().await;
    let p = provider(
        &server,
        json!({
            "grant": "jwt_bearer", "client_id": "svc", "client_secret": "s",
            "private_key": ec_pem(), "jwt_subject": "user-7",
            "jwt_audience": "https://api.example.com", "jwt_claims": {"tenant": "acme", "n": 3},
        }),
    );
    let h = harness(&p);
    let t = h.fetch(&p, &["read", "write"], None).await.unwrap();
    assert_eq!(t.access_token.expose(), "at-1");
    let f = &forms(&server).await[0];
    assert_eq!(
        f["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(f["scope"], "read write");
    let c = claims(&f["assertion"]);
    assert_eq!((&c["iss"], &c["sub"]), (&json!("svc"), &json!("user-7")));
    assert_eq!(c["aud"], "https://api.example.com");
    assert_eq!((&c["tenant"], &c["n"]), (&json!("acme"), &json!(3)));
    assert!(!c.contains_key("scope"));
    let req = &server.received_requests().await.unwrap()[0];
    assert!(
        req.headers.contains_key("authorization"),
        "client_secret_basic as well"
    );
}

#[tokio::test]
async fn a_service_account_key_file_is_accepted_as_is() {
    let server = server().await;
    let key_file = json!({
        "type": "service_account", "project_id": "p", "private_key_id": "kid-9",
        "private_key": ec_pem(), "client_email": "robot@p.iam.example.com",
        "client_id": "1234", "token_uri": format!("{}/token", server.uri()),
    });
    let p = OAuth2Provider::from_settings(json!({
        "grant": "jwt_bearer", "service_account_key": key_file.to_string(), "scopes": ["read"],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let h = harness(&p);
    h.fetch(&p, &[], None).await.unwrap();
    let f = &forms(&server).await[0];
    assert!(!f.contains_key("scope"), "the scope goes in the assertion");
    let c = claims(&f["assertion"]);
    assert_eq!(c["iss"], "robot@p.iam.example.com");
    assert!(!c.contains_key("sub"));
    assert_eq!(c["scope"], "read");
    assert_eq!(c["aud"], format!("{}/token", server.uri()).as_str());
    let header = f["assertion"].as_str().unwrap().split('.').next().unwrap();
    let header = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert!(header.contains("\"kid\":\"kid-9\""), "{header}");
    assert!(!format!("{p:?}").contains("BEGIN"), "Debug shows no key");
}

async fn rotation_server(good: &str) -> MockServer {
    let server = MockServer::start().await;
    let basic = testing::basic("rot", good);
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::header("authorization", basic.as_str()))
        .respond_with(ok_token())
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn rotation_tries_the_next_secret_and_remembers_it() {
    let server = rotation_server("new-secret").await;
    let p = provider(
        &server,
        json!({"client_id": "rot", "client_secret": CANARY_SECRET, "client_secrets": ["new-secret"]}),
    );
    let h = harness(&p);
    h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    let notices = h.sink.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("#1 of 2 was rejected") && notices[0].contains("#2 was accepted"),
        "{}",
        notices[0]
    );
    assert!(!notices[0].contains("new-secret"));
    // The accepted one is used first from now on.
    h.fetch(&p, &[], None).await.unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    assert_eq!(h.sink.notices().len(), 1);
    testing::assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn rotation_with_every_secret_wrong_rejects_the_credential() {
    let server = rotation_server("right").await;
    let p = provider(
        &server,
        json!({"client_id": "rot", "client_secrets": ["wrong-1", "wrong-2"], "client_auth": "post"}),
    );
    let h = harness(&p);
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProviderError::Rejected {
                kind: RejectKind::Credential,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "each secret once"
    );
    assert!(h.sink.notices()[0].contains("none of the 2 client secrets"));
    // A non-auth error is not retried with another secret.
    let other = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("grant_type"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_scope"})))
        .mount(&other)
        .await;
    let p = provider(
        &other,
        json!({"client_id": "rot", "client_secrets": ["a-1", "b-2"]}),
    );
    harness(&p).fetch(&p, &[], None).await.unwrap_err();
    assert_eq!(other.received_requests().await.unwrap().len(), 1);
}

#[test]
fn assertion_settings_are_checked() {
    let base = json!({"token_url": "https://idp.example.com/token", "client_id": "c"});
    let err = |extra: Value| match OAuth2Provider::from_settings(merged(base.clone(), extra)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0,
    };
    let pem = ec_pem();
    for (extra, want) in [
        (
            json!({"client_auth": "private_key_jwt"}),
            "needs `private_key`",
        ),
        (
            json!({"client_auth": "private_key_jwt", "private_key": pem, "client_secret": "s"}),
            "never sends",
        ),
        (json!({"private_key": pem}), "unused"),
        (json!({"grant": "jwt_bearer"}), "needs `private_key`"),
        (
            json!({"grant": "jwt_bearer", "private_key": pem, "jwt_claims": {"exp": 1}}),
            "must not set `exp`",
        ),
        (
            json!({"jwt_subject": "x"}),
            "only used with grant = \"jwt_bearer\"",
        ),
        (
            json!({"grant": "jwt_bearer", "private_key": pem, "jwt_audience": "issuer"}),
            "needs `issuer`",
        ),
        (
            json!({"grant": "jwt_bearer", "private_key": pem, "jwt_lifetime_seconds": 86400}),
            "at most 3600",
        ),
        (
            json!({"grant": "jwt_bearer", "private_key": "canary-garbage"}),
            "`private_key` is neither",
        ),
        (
            json!({"grant": "jwt_bearer", "service_account_key": "{\"type\":\"user\"}"}),
            "service_account",
        ),
        (json!({"client_secrets": []}), "`client_secrets` is empty"),
        (
            json!({"client_secrets": ["a", " "]}),
            "`client_secrets[1]` is empty",
        ),
        (
            json!({"client_secrets": "a"}),
            "`client_secrets` must be a list",
        ),
        (
            json!({"signing_alg": "RS256"}),
            "`signing_alg` describes `private_key`",
        ),
        (
            json!({"grant": "jwt_bearer", "private_key": pem, "extra_params": {"assertion": "x"}}),
            "signs it fresh",
        ),
    ] {
        let e = err(extra.clone());
        assert!(e.contains(want), "{extra}: {e}");
        assert!(!e.contains("canary") && !e.contains(&pem[30..60]), "{e}");
    }
}
