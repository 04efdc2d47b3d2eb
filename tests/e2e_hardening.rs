//! What a hostile caller with a valid identity cannot make the gateway do: reach private
//! networks through a credential's URLs (egress policy), revoke other services' tokens
//! without the `revoke` role, and more (see each test).

mod common;

use authgate::config::Config;
use authgate::proto::v1::GetTokenRequest;
use authgate::server::StartOptions;
use common::*;
use tonic::Code;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn token_endpoint() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "tok-egress-canary", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    server
}

fn cc(token_url: &str) -> serde_json::Value {
    serde_json::json!({
        "token_url": token_url, "client_id": "c", "client_secret": "s-egress-canary",
    })
}

/// A gateway whose `[egress] allow` is exactly `allow` (the shared test config opens
/// loopback for the fake providers; this one does not).
async fn gateway(dir: &std::path::Path, allow: &[&str]) -> Gateway {
    let mut cfg = Config::parse(&config_text(dir, "")).unwrap();
    cfg.egress.allow = allow.iter().map(|s| s.to_string()).collect();
    Gateway::start_config(dir, cfg, StartOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_credentials_cannot_reach_private_addresses_unless_allow_listed() {
    let provider = token_endpoint().await;
    let port = provider.address().port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway(dir.path(), &[]).await;
    let mut admin = gw.admin().await;

    for url in [
        format!("http://127.0.0.1:{port}/token"),
        "http://169.254.169.254/latest/meta-data/iam".to_owned(),
        "http://10.0.0.1/token".to_owned(),
        format!("http://localhost:{port}/token"),
        "http://[::ffff:127.0.0.1]/token".to_owned(),
    ] {
        let e = admin
            .put_credential(put("acme", "idp", "oauth2", cc(&url)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(
            e.message().contains("settings.token_url") && e.message().contains("[egress] allow"),
            "{url}: {}",
            e.message()
        );
    }
    // Nested URLs are checked too (e.g. a revocation endpoint).
    let mut nested = cc("https://login.example.com/token");
    nested["revocation_url"] = serde_json::json!("http://192.168.1.1/revoke");
    let e = admin
        .put_credential(put("acme", "idp", "oauth2", nested))
        .await
        .unwrap_err();
    assert!(e.message().contains("revocation_url"), "{}", e.message());
    assert!(provider.received_requests().await.unwrap().is_empty());

    // Allow-listed by the operator: stored, and the fetch goes through.
    gw.stop().await;
    let mut gw = gateway(dir.path(), &["127.0.0.1"]).await;
    let mut admin = gw.admin().await;
    admin
        .put_credential(put(
            "acme",
            "idp",
            "oauth2",
            cc(&format!("http://127.0.0.1:{port}/token")),
        ))
        .await
        .unwrap();
    let mut tokens = gw.client().await;
    let t = tokens
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.access_token, "tok-egress-canary");
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);

    // The allow-list removed again: the stored credential's fetch is refused when it would
    // connect, not only when it was stored.
    gw.stop().await;
    let gw = gateway(dir.path(), &[]).await;
    let mut tokens = gw.client().await;
    let e = tokens
        .get_token(GetTokenRequest {
            force_refresh: true,
            ..get_token_request("acme", "idp", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("[egress] allow"), "{}", e.message());
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

fn with_key(key: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {key}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_role_cannot_revoke_the_tenants_tokens() {
    let provider = token_endpoint().await;
    let mut cfg = String::new();
    for (name, key, roles) in [
        ("consumer", "consumer-key", "\"token\""),
        ("operator", "operator-key", "\"revoke\""),
    ] {
        cfg += &format!(
            "[[callers]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [{roles}]\n\n",
            common::mesh::digest(key)
        );
    }
    cfg += &cc_credential(
        "acme",
        "idp",
        &format!("{}/token", provider.uri()),
        &env_secret("s"),
        "",
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let mut get = tonic::Request::new(get_token_request("acme", "idp", &[]));
    get.metadata_mut()
        .insert("authorization", with_key("consumer-key"));
    c.get_token(get).await.unwrap();

    let revoke = |key: &str| {
        let mut r = tonic::Request::new(authgate::proto::v1::RevokeRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            ..Default::default()
        });
        r.metadata_mut().insert("authorization", with_key(key));
        r
    };
    let e = c.revoke(revoke("consumer-key")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let done = c.revoke(revoke("operator-key")).await.unwrap().into_inner();
    assert_eq!(done.dropped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_outside_allowed_scopes_are_refused_before_any_upstream_call() {
    let provider = token_endpoint().await;
    let cfg = format!(
        "[[callers]]\nname = \"narrow\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\nallowed_scopes = [\"read\", \"write\"]\n\n{}[credentials.settings.gateway]\nallowed_scopes = [\"read\", \"admin\"]\n",
        common::mesh::digest("narrow-key"),
        cc_credential("acme", "idp", &format!("{}/token", provider.uri()), &env_secret("s"), "")
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let ask = |scopes: &[&str]| {
        let mut r = tonic::Request::new(get_token_request("acme", "idp", scopes));
        r.metadata_mut()
            .insert("authorization", with_key("narrow-key"));
        r
    };
    // Outside the caller's list, then outside the credential's list.
    let e = c.get_token(ask(&["admin"])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("allowed_scopes"), "{}", e.message());
    let e = c.get_token(ask(&["write"])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("settings.gateway.allowed_scopes"),
        "{}",
        e.message()
    );
    assert!(provider.received_requests().await.unwrap().is_empty());
    c.get_token(ask(&["read"])).await.unwrap();
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_upstream_budget_bounds_token_requests() {
    let provider = token_endpoint().await;
    let cfg = format!(
        "{}[credentials.settings.gateway]\nmax_token_requests_per_minute = 3\n",
        cc_credential(
            "acme",
            "idp",
            &format!("{}/token", provider.uri()),
            &env_secret("s"),
            ""
        )
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let mut exhausted = 0;
    for i in 0..10 {
        let scope = format!("s{i}");
        match c
            .get_token(get_token_request("acme", "idp", &[scope.as_str()]))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("max_token_requests_per_minute"),
                    "{}",
                    e.message()
                );
                exhausted += 1;
            }
        }
    }
    assert_eq!(provider.received_requests().await.unwrap().len(), 3);
    assert_eq!(exhausted, 7);
    // A token already cached keeps being served.
    c.get_token(get_token_request("acme", "idp", &["s0"]))
        .await
        .unwrap();
}
