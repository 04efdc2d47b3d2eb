//! The device authorization grant (RFC 8628) against a mock server: what the device
//! authorization request and each poll send, how the answers are classified, and that the
//! device code never reaches an event or an error.

use super::*;
use authgate_plugin_sdk::device::{is_denied, is_expired, DEVICE_CODE_GRANT};
use authgate_plugin_sdk::testing::{self, form_body, merged};
use authgate_plugin_sdk::UpstreamLimits;
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DEVICE_CODE: &str = "canary-device-code-0123456789";

fn device_response() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "device_code": DEVICE_CODE,
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://idp.example.com/device",
        "verification_uri_complete": "https://idp.example.com/device?user_code=WDJB-MJHT",
        "expires_in": 600,
        "interval": 2,
    }))
}

fn provider(server: &MockServer, settings: Value) -> OAuth2Provider {
    let base = json!({
        "token_url": format!("{}/token", server.uri()),
        "device_authorization_url": format!("{}/device/auth", server.uri()),
        "grant": "device_code",
        "client_id": "tv",
        "scopes": ["read", "offline_access"],
    });
    OAuth2Provider::from_settings(merged(base, settings)).unwrap_or_else(|e| panic!("{e}"))
}

fn harness(p: &OAuth2Provider) -> testing::Harness {
    testing::Harness::new(p.secrets(), UpstreamLimits::default())
}

#[tokio::test]
async fn a_public_client_starts_with_its_scopes_and_polls_with_the_device_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device/auth"))
        .and(form_body(&[
            ("client_id", "tv"),
            ("scope", "offline_access read"),
        ]))
        .respond_with(device_response())
        .expect(1)
        .mount(&server)
        .await;
    let poll_form = form_body(&[
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", DEVICE_CODE),
        ("client_id", "tv"),
    ]);
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(poll_form)
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "authorization_pending"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "canary-at", "refresh_token": "canary-rt", "expires_in": 60,
        })))
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    assert!(p.capabilities().device_code && p.capabilities().refresh_token);
    assert!(!p.capabilities().authorization_code);
    assert!(p.requires_refresh_token());
    let h = harness(&p);
    let a = p
        .start_device_authorization(&h.call, &ScopeSet::default())
        .await
        .unwrap();
    assert_eq!(a.user_code, "WDJB-MJHT");
    assert_eq!(a.interval, std::time::Duration::from_secs(2));
    assert!(matches!(
        p.poll_device_token(&h.call, &a.device_code).await.unwrap(),
        DevicePoll::Pending
    ));
    match p.poll_device_token(&h.call, &a.device_code).await.unwrap() {
        DevicePoll::Issued(t) => {
            assert!(t.refresh_token.is_some());
            assert_eq!(t.expires_in, Some(std::time::Duration::from_secs(60)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.steps().await,
        ["device_authorization", "device_token", "device_token"]
    );
    testing::assert_clean(&h.events().await, None);
    // The user code is for the user's eyes: it stays readable in the event.
    assert!(h.events().await[0].response_body.contains("WDJB-MJHT"));
}

#[tokio::test]
async fn a_confidential_client_authenticates_both_requests() {
    let server = MockServer::start().await;
    let basic = testing::basic("tv", "canary-secret");
    Mock::given(method("POST"))
        .and(path("/device/auth"))
        .and(header("authorization", basic.as_str()))
        .respond_with(device_response())
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("authorization", basic.as_str()))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "slow_down"})))
        .mount(&server)
        .await;
    let p = provider(&server, json!({"client_secret": "canary-secret"}));
    let h = harness(&p);
    let a = p
        .start_device_authorization(&h.call, &ScopeSet::new(["read"]))
        .await
        .unwrap();
    assert!(matches!(
        p.poll_device_token(&h.call, &a.device_code).await.unwrap(),
        DevicePoll::SlowDown
    ));
    testing::assert_clean(&h.events().await, None);
}

#[tokio::test]
async fn denied_and_expired_end_the_poll_and_name_why() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "access_denied", "error_description": "End-User aborted interaction"}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "expired_token"})))
        .mount(&server)
        .await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let dc = Secret::from(DEVICE_CODE);
    let denied = p.poll_device_token(&h.call, &dc).await.unwrap_err();
    assert!(is_denied(&denied), "{denied}");
    assert!(denied.to_string().contains("aborted"), "{denied}");
    let expired = p.poll_device_token(&h.call, &dc).await.unwrap_err();
    assert!(is_expired(&expired), "{expired}");
    for e in [&denied, &expired] {
        testing::assert_clean(&h.events().await, Some(e));
    }
}

#[tokio::test]
async fn without_a_refresh_token_fetch_says_to_authorize_first() {
    let server = MockServer::start().await;
    let p = provider(&server, json!({}));
    let h = harness(&p);
    let e = h.fetch(&p, &[], None).await.unwrap_err();
    assert!(e.to_string().contains("device authorization"), "{e}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_endpoint_is_discovered_from_the_issuer() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": server.uri(),
            "token_endpoint": format!("{}/token", server.uri()),
            "device_authorization_endpoint": format!("{}/device/auth", server.uri()),
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/device/auth"))
        .respond_with(device_response())
        .mount(&server)
        .await;
    let p = OAuth2Provider::from_settings(json!({
        "issuer": server.uri(), "grant": "urn:ietf:params:oauth:grant-type:device_code",
        "client_id": "tv",
    }))
    .unwrap();
    let h = harness(&p);
    let a = p
        .start_device_authorization(&h.call, &ScopeSet::default())
        .await
        .unwrap();
    assert_eq!(a.user_code, "WDJB-MJHT");
}

#[test]
fn settings_need_a_device_endpoint_and_keep_it_to_the_device_grant() {
    let e = testing::settings_error(OAuth2Provider::from_settings(json!({
        "token_url": "https://idp.example.com/token", "grant": "device_code", "client_id": "tv",
    })));
    assert!(e.contains("device_authorization_url"), "{e}");
    let e = testing::settings_error(OAuth2Provider::from_settings(json!({
        "token_url": "https://idp.example.com/token", "client_id": "c", "client_secret": "s",
        "device_authorization_url": "https://idp.example.com/device",
    })));
    assert!(e.contains("only used with grant = \"device_code\""), "{e}");
    let e = testing::settings_error(OAuth2Provider::from_settings(json!({
        "token_url": "https://idp.example.com/token", "grant": "device_code", "client_id": "tv",
        "device_authorization_url": "https://idp.example.com/device",
        "extra_params": {"device_code": "x"},
    })));
    assert!(e.contains("must not set `device_code`"), "{e}");
}
