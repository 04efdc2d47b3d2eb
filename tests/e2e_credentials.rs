//! Credential management through the real server, the authorization-code flow end to end
//! against oidc-provider (login and consent performed by an HTTP client), the callback's
//! rejections, INVALID and back, and refresh-token keep-alive.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::clock::ManualClock;
use authgate::config::Config;
use authgate::proto::v1::{
    CredentialStatus, DeleteCredentialRequest, EventKind, GetCredentialRequest,
    ListCredentialsRequest, ListEventsRequest, StartAuthorizationRequest,
};
use authgate::server::StartOptions;
use common::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_list_delete_through_the_real_server() {
    let canary = "canary-admin-secret-77";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", canary)]).await;
    let gw = Gateway::start("").await;
    let mut admin = gw.admin().await;
    let mut tokens = gw.client().await;

    let e = admin
        .put_credential(put(
            "acme",
            "idp",
            "oauth2",
            serde_json::json!({"token_url": oidc.token_url()}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("client_id"), "{}", e.message());
    let e = admin
        .put_credential(put("acme", "idp", "nope", serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(e.message().contains("oauth2"), "{}", e.message());

    let cc = serde_json::json!({
        "token_url": oidc.token_url(), "client_id": "cc-basic", "client_secret": canary,
        "scopes": ["read"], "default_lifetime_seconds": 600,
    });
    let created = admin
        .put_credential(put("acme", "idp", "oauth2", cc.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status, CredentialStatus::Active as i32);
    assert_eq!(created.source, "api");
    assert_eq!(created.secret_fields_set, vec!["client_secret"]);
    assert!(created
        .settings
        .as_ref()
        .unwrap()
        .fields
        .contains_key("token_url"));
    assert!(
        !format!("{created:?}").contains(canary),
        "Put answer leaks the secret"
    );

    let t = tokens
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(oidc.is_active(&t.access_token, canary).await);
    let got = admin
        .get_credential(GetCredentialRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let shown = format!("{got:?}");
    assert!(
        !shown.contains(canary) && !shown.contains(&t.access_token),
        "Get leaks a secret: {shown}"
    );
    assert_eq!(got.tokens.len(), 1);
    assert_eq!(got.tokens[0].scopes, vec!["read"]);
    assert!(
        got.capabilities.is_empty() || !got.capabilities.contains(&"authorization_code".to_owned())
    );

    for id in ["b-cred", "c-cred"] {
        admin
            .put_credential(put("acme", id, "oauth2", cc.clone()))
            .await
            .unwrap();
    }
    admin
        .put_credential(put("globex", "other", "oauth2", cc.clone()))
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_credentials(ListCredentialsRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.credentials.iter().map(|c| c.credential_id.clone()));
        assert!(!format!("{page:?}").contains(canary));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids, vec!["b-cred", "c-cred", "idp"]);

    let events_of = |id: &str| ListEventsRequest {
        tenant: "acme".into(),
        credential_id: id.into(),
        ..Default::default()
    };
    assert!(!tokens
        .list_events(events_of("idp"))
        .await
        .unwrap()
        .into_inner()
        .events
        .is_empty());
    let d = admin
        .delete_credential(DeleteCredentialRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            revoke_upstream: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.deleted);
    assert!(
        tokens
            .list_events(events_of("idp"))
            .await
            .unwrap()
            .into_inner()
            .events
            .is_empty(),
        "events deleted"
    );
    let e = tokens
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin
        .get_credential(GetCredentialRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Other credentials keep their events and tokens.
    tokens
        .get_token(get_token_request("acme", "b-cred", &[]))
        .await
        .unwrap();
}

async fn code_flow_setup(clock: Option<ManualClock>) -> (OidcServer, Gateway, tempfile::TempDir) {
    code_flow_setup_with(clock, false).await
}

async fn code_flow_setup_with(
    clock: Option<ManualClock>,
    bind_consent_to_browser: bool,
) -> (OidcServer, Gateway, tempfile::TempDir) {
    let http_port = free_port();
    let redirect = format!("http://127.0.0.1:{http_port}/oauth/callback");
    let oidc = OidcServer::start(&[
        ("OIDC_RT_SECRET", "rt-secret-cf"),
        ("OIDC_REDIRECT_URIS", redirect.as_str()),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse(&config_text(dir.path(), "")).unwrap();
    cfg.server.http_listen = format!("127.0.0.1:{http_port}").parse().unwrap();
    cfg.server.bind_consent_to_browser = bind_consent_to_browser;
    let mut opts = StartOptions::default();
    if let Some(c) = clock {
        opts.clock = Arc::new(c);
    }
    let gw = Gateway::start_config(dir.path(), cfg, opts).await;
    let mut admin = gw.admin().await;
    let c = admin
        .put_credential(put(
            "acme",
            "user",
            "oauth2",
            serde_json::json!({
                "issuer": oidc.issuer, "grant": "authorization_code", "client_id": "rt-client",
                "client_secret": "rt-secret-cf", "scopes": ["openid", "offline_access", "read"],
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.status, CredentialStatus::NeedsAuthorization as i32);
    (oidc, gw, dir)
}

async fn status_of(gw: &Gateway) -> i32 {
    gw.admin()
        .await
        .get_credential(GetCredentialRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_bound_to_a_browser_completes_only_there() {
    let (oidc, gw, _dir) = code_flow_setup_with(None, true).await;
    let start = gw
        .admin()
        .await
        .start_authorization(StartAuthorizationRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    // The link is authgate's own page, which sets the cookie and forwards to the provider.
    assert!(
        start.authorization_url.contains("/oauth/start?state="),
        "{}",
        start.authorization_url
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let opened = browser.get(&start.authorization_url).send().await.unwrap();
    assert_eq!(opened.status(), 302);
    let cookie = opened.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let provider_url = opened.headers()["location"].to_str().unwrap().to_owned();
    assert!(provider_url.starts_with(&oidc.issuer), "{provider_url}");
    // A second browser opening the same link is turned away.
    let again = browser.get(&start.authorization_url).send().await.unwrap();
    assert_eq!(again.status(), 400);

    let callback = login_and_consent(&oidc.issuer, &provider_url).await;
    // Without the cookie (another browser): refused, and the authorization stays open.
    let stranger = browser.get(&callback).send().await.unwrap();
    assert_eq!(stranger.status(), 400);
    assert!(stranger.text().await.unwrap().contains("another browser"));
    assert_eq!(
        status_of(&gw).await,
        CredentialStatus::NeedsAuthorization as i32
    );
    let mine = browser
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    assert_eq!(status_of(&gw).await, CredentialStatus::Active as i32);
    assert_eq!(oidc.stats().await["by_grant"]["authorization_code"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_flow_end_to_end() {
    let (oidc, gw, _dir) = code_flow_setup(None).await;
    let mut tokens = gw.client().await;
    let e = tokens
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("authgate authorize --tenant acme --credential user"),
        "{}",
        e.message()
    );

    let start = gw
        .admin()
        .await
        .start_authorization(StartAuthorizationRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(start.state.len() >= 22, "at least 128 bits of state");
    let url = url::Url::parse(&start.authorization_url).unwrap();
    let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["state"], start.state);
    assert_eq!(q["redirect_uri"], start.redirect_uri);

    let callback = login_and_consent(&oidc.issuer, &start.authorization_url).await;
    assert!(callback.starts_with(&start.redirect_uri), "{callback}");
    let page = reqwest::get(&callback).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("authorized"));
    assert_eq!(status_of(&gw).await, CredentialStatus::Active as i32);

    // The exchanged token is served; a refresh uses the stored refresh token.
    let t = tokens
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(oidc.is_active(&t.access_token, "cc-basic-secret").await);
    let mut req = get_token_request("acme", "user", &[]);
    req.force_refresh = true;
    let t2 = tokens.get_token(req).await.unwrap().into_inner();
    assert_ne!(t2.access_token, t.access_token);
    let stats = oidc.stats().await;
    assert_eq!(stats["by_grant"]["authorization_code"], 1, "{stats}");
    assert_eq!(stats["by_grant"]["refresh_token"], 1, "{stats}");

    // Replaying the same redirect is refused and changes nothing.
    let replay = reqwest::get(&callback).await.unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("already"));
    assert_eq!(
        oidc.stats().await["by_grant"]["authorization_code"],
        1,
        "code not exchanged twice"
    );
    let events = tokens
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::StatusChanged as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("NEEDS_AUTHORIZATION → ACTIVE")),
        "{events:?}"
    );
}

async fn start_auth(gw: &Gateway) -> (String, String) {
    let s = gw
        .admin()
        .await
        .start_authorization(StartAuthorizationRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    (s.state, s.redirect_uri)
}

async fn failed_events(gw: &Gateway) -> Vec<String> {
    gw.client()
        .await
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::TokenFailed as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_are_rejected_with_a_page_and_an_event() {
    let clock = ManualClock::default();
    let (oidc, gw, _dir) = code_flow_setup(Some(clock.clone())).await;
    let page = |url: String| async move {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };

    // The provider's error=access_denied.
    let (state, redirect) = start_auth(&gw).await;
    let (code, body) = page(format!(
        "{redirect}?error=access_denied&error_description=user%20said%20no&state={state}"
    ))
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("Consent was denied"), "{body}");
    // The same state again: replayed.
    let (code, body) = page(format!("{redirect}?code=abc&state={state}")).await;
    assert_eq!(code, 400);
    assert!(body.contains("already used"), "{body}");

    // A forged state.
    let (code, body) = page(format!("{redirect}?code=abc&state=forged-state-value")).await;
    assert_eq!(code, 400);
    assert!(body.contains("Unknown authorization request"), "{body}");

    // An expired state.
    let (state, redirect) = start_auth(&gw).await;
    clock.advance(Duration::from_secs(601));
    let (code, body) = page(format!("{redirect}?code=abc&state={state}")).await;
    assert_eq!(code, 400);
    assert!(body.contains("expired"), "{body}");

    // The redirect reaching another URI than the registered one.
    let (state, redirect) = start_auth(&gw).await;
    let other = redirect.replace("127.0.0.1", "localhost");
    let (code, body) = page(format!("{other}?code=abc&state={state}")).await;
    assert_eq!(code, 400);
    assert!(body.contains("Redirect URI mismatch"), "{body}");

    let events = failed_events(&gw).await;
    for needle in [
        "access_denied",
        "already used",
        "expired",
        "registered redirect URI",
    ] {
        assert!(
            events.iter().any(|m| m.contains(needle)),
            "no event for {needle}: {events:?}"
        );
    }
    // Nothing was exchanged and the credential is as it was.
    assert_eq!(
        oidc.stats().await["by_grant"]["authorization_code"],
        serde_json::Value::Null
    );
    assert_eq!(
        status_of(&gw).await,
        CredentialStatus::NeedsAuthorization as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_invalid_and_new_secrets_bring_it_back() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-ig")]).await;
    let gw = Gateway::start("").await;
    let mut admin = gw.admin().await;
    let mut tokens = gw.client().await;
    let with_rt = |rt: &str| {
        serde_json::json!({
            "token_url": oidc.token_url(), "grant": "refresh_token", "client_id": "rt-client",
            "client_secret": "rt-secret-ig", "refresh_token": rt,
        })
    };
    admin
        .put_credential(put(
            "acme",
            "user",
            "oauth2",
            with_rt("not-a-real-refresh-token"),
        ))
        .await
        .unwrap();
    let e = tokens
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("invalid_grant"), "{}", e.message());
    let got = admin
        .get_credential(GetCredentialRequest {
            tenant: "acme".into(),
            credential_id: "user".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, CredentialStatus::Invalid as i32);
    assert!(got.last_error.contains("invalid_grant"));
    let e = tokens
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("update its secrets"),
        "{}",
        e.message()
    );

    let fresh = oidc.mint_refresh_token("openid offline_access read").await;
    let back = admin
        .put_credential(put("acme", "user", "oauth2", with_rt(&fresh)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.status, CredentialStatus::Active as i32);
    tokens
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_refresh_tokens_are_kept_alive() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-ka")]).await;
    let rt = oidc.mint_refresh_token("openid offline_access read").await;
    let gw = Gateway::start("[broker]\nkeep_alive_check_seconds = 1\n").await;
    gw.admin()
        .await
        .put_credential(put(
            "acme",
            "user",
            "oauth2",
            serde_json::json!({
                "token_url": oidc.token_url(), "grant": "refresh_token", "client_id": "rt-client",
                "client_secret": "rt-secret-ka", "refresh_token": rt, "refresh_token_idle_seconds": 3,
            }),
        ))
        .await
        .unwrap();
    gw.client()
        .await
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap();
    let before = oidc.stats().await["by_grant"]["refresh_token"]
        .as_u64()
        .unwrap();
    // Idle: nobody asks for a token, yet the refresh token is used before 3 s pass.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let stats = oidc.stats().await;
    let after = stats["by_grant"]["refresh_token"].as_u64().unwrap();
    assert!(after > before, "keep-alive refreshed: {stats}");
    assert_eq!(stats["errors"], 0, "rotation kept in step: {stats}");
    assert_eq!(status_of(&gw).await, CredentialStatus::Active as i32);
}
