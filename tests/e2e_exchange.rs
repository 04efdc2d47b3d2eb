//! End to end against oidc-provider with RFC 8693 token exchange registered as a grant
//! (tests/oidc/server.mjs, client `tx-client`), through the real `authgate` binary: tokens
//! obtained by exchange and verified by introspection (issued for the subject's user), one
//! cached result per subject token, an expired subject token refused before any upstream
//! call, the `exchange` role, a refused subject token that leaves the credential ACTIVE, and
//! no subject token, issued token or client secret in events, errors or the debug log.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::credential_service_client::CredentialServiceClient;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::{
    CredentialStatus, ExchangeTokenRequest, ExchangeTokenResponse, GetCredentialRequest,
    ListEventsRequest,
};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const APP_KEY: &str = "exchange-app-key";
const OPS_KEY: &str = "ops-key-without-exchange";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn keyed<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn exchange(credential: &str, subject: &str) -> ExchangeTokenRequest {
    ExchangeTokenRequest {
        tenant: "acme".into(),
        credential_id: credential.into(),
        subject_token: subject.into(),
        audience: vec!["orders-api".into()],
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

/// A user's access token from the test server: a JWT (`exp` readable) or opaque.
async fn subject_token(oidc: &OidcServer, sub: &str, format: &str, ttl: i64) -> (String, i64) {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/test/mint-subject-token", oidc.issuer))
        .json(&serde_json::json!({"sub": sub, "format": format, "ttl": ttl}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        v["subject_token"].as_str().unwrap().to_owned(),
        v["exp"].as_i64().unwrap(),
    )
}

/// RFC 7662 introspection as `cc-basic`: the `sub` of an active token, `None` if inactive.
async fn introspected_sub(oidc: &OidcServer, token: &str) -> Option<String> {
    let v: Value = reqwest::Client::new()
        .post(format!("{}/token/introspection", oidc.issuer))
        .basic_auth("cc-basic", Some("cc-basic-secret"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["active"]
        .as_bool()
        .unwrap_or(false)
        .then(|| v["sub"].as_str().unwrap_or_default().to_owned())
}

async fn exchanges_upstream(oidc: &OidcServer) -> u64 {
    oidc.stats().await["by_grant"][GRANT].as_u64().unwrap_or(0)
}

async fn ok(c: &mut TokenServiceClient<Channel>, r: ExchangeTokenRequest) -> ExchangeTokenResponse {
    c.exchange_token(keyed(r, APP_KEY))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_is_cached_per_subject_token_refused_when_expired_and_never_recorded() {
    let client_secret = format!("tx-canary-secret-{}", std::process::id());
    let oidc = OidcServer::start(&[("OIDC_TX_SECRET", client_secret.as_str())]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[callers]]\nname = \"app\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"exchange\", \"events\"]\n\n\
         [[callers]]\nname = \"ops\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\", \"admin\"]\n\n\
         [[credentials]]\ntenant = \"acme\"\nid = \"tx\"\nprovider = \"oauth2\"\n[credentials.settings]\n\
         token_url = \"{}\"\nclient_id = \"tx-client\"\nclient_secret = \"${{env:TX_SECRET}}\"\ntoken_exchange = true\n\n\
         [[credentials]]\ntenant = \"acme\"\nid = \"cc\"\nprovider = \"oauth2\"\n[credentials.settings]\n\
         token_url = \"{}\"\nclient_id = \"cc-basic\"\nclient_secret = \"${{env:TX_SECRET}}\"\n",
        sha256_hex(APP_KEY),
        sha256_hex(OPS_KEY),
        oidc.token_url(),
        oidc.token_url(),
    );
    let mut gw = GatewayProcess::start(
        dir.path(),
        &cfg,
        &[
            ("TX_SECRET", client_secret.as_str()),
            ("AUTHGATE_LOG", "debug"),
        ],
    )
    .await;
    let channel = Channel::from_shared(format!("http://{}", gw.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = TokenServiceClient::new(channel.clone());
    let mut errors = Vec::new();

    // Alice's subject token is a JWT, Bob's opaque; each exchange is one upstream request.
    let (alice, alice_exp) = subject_token(&oidc, "alice", "jwt", 600).await;
    let (bob, _) = subject_token(&oidc, "bob", "opaque", 600).await;
    let t1 = ok(&mut c, exchange("tx", &alice)).await;
    assert_eq!(t1.issued_token_type, ACCESS_TOKEN);
    assert_eq!(t1.token_type, "Bearer");
    assert_eq!(t1.scopes, ["read"]);
    assert!(t1.expires_at.as_ref().unwrap().seconds <= alice_exp);
    assert_eq!(
        introspected_sub(&oidc, &t1.access_token).await.as_deref(),
        Some("alice"),
        "the exchanged token is active and issued for the subject's user"
    );
    assert_eq!(exchanges_upstream(&oidc).await, 1);
    let again = ok(&mut c, exchange("tx", &alice)).await;
    assert_eq!(again.access_token, t1.access_token, "a cache hit");
    assert_eq!(exchanges_upstream(&oidc).await, 1, "no upstream call");
    let t2 = ok(&mut c, exchange("tx", &bob)).await;
    assert_ne!(t2.access_token, t1.access_token);
    assert_eq!(
        introspected_sub(&oidc, &t2.access_token).await.as_deref(),
        Some("bob")
    );
    assert_eq!(
        ok(&mut c, exchange("tx", &bob)).await.access_token,
        t2.access_token
    );
    // Another audience is another key.
    let mut billing = exchange("tx", &alice);
    billing.audience = vec!["billing-api".into()];
    let t3 = ok(&mut c, billing).await;
    assert_ne!(t3.access_token, t1.access_token);
    assert_eq!(exchanges_upstream(&oidc).await, 3);

    // An expired subject token is refused at the gateway: nothing is sent upstream.
    let (expired, _) = subject_token(&oidc, "alice", "jwt", -30).await;
    let e = c
        .exchange_token(keyed(exchange("tx", &expired), APP_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("subject_token: expired"), "{e:?}");
    // As is one that expires within min_ttl_seconds.
    let mut long = exchange("tx", &alice);
    long.min_ttl_seconds = 3600;
    let e2 = c.exchange_token(keyed(long, APP_KEY)).await.unwrap_err();
    assert_eq!(e2.code(), Code::InvalidArgument, "{e2:?}");
    assert_eq!(exchanges_upstream(&oidc).await, 3, "no upstream call");
    errors.extend([format!("{e:?}"), format!("{e2:?}")]);

    // A caller without the exchange role is refused, whatever else it may do.
    let e = c
        .exchange_token(keyed(exchange("tx", &alice), OPS_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    errors.push(format!("{e:?}"));
    // A credential that does not do token exchange says how to enable it.
    let e = c
        .exchange_token(keyed(exchange("cc", &alice), APP_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("token_exchange = true"), "{e:?}");
    errors.push(format!("{e:?}"));
    assert_eq!(exchanges_upstream(&oidc).await, 3);

    // A subject token the provider refuses is the caller's problem: the credential stays
    // ACTIVE and goes on exchanging.
    let forged = format!("forged-subject-{}", std::process::id());
    let e = c
        .exchange_token(keyed(exchange("tx", &forged), APP_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("subject_token:"), "{e:?}");
    errors.push(format!("{e:?}"));
    let mut admin = CredentialServiceClient::new(channel.clone());
    let status = admin
        .get_credential(keyed(
            GetCredentialRequest {
                tenant: "acme".into(),
                credential_id: "tx".into(),
            },
            OPS_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, CredentialStatus::Active as i32);
    assert!(status.capabilities.iter().any(|c| c == "token_exchange"));
    let (carol, _) = subject_token(&oidc, "carol", "jwt", 600).await;
    let t4 = ok(&mut c, exchange("tx", &carol)).await;
    assert_eq!(
        introspected_sub(&oidc, &t4.access_token).await.as_deref(),
        Some("carol")
    );
    assert_eq!(exchanges_upstream(&oidc).await, 5);

    // Canaries: no subject token, issued token or client secret in events, errors or the
    // debug log; the subject tokens appear in events as digests.
    let events = c
        .list_events(keyed(
            ListEventsRequest {
                tenant: "acme".into(),
                credential_id: "tx".into(),
                page_size: 1000,
                ..Default::default()
            },
            APP_KEY,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("subject_token=hmac-sha256"))
            .count(),
        5,
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains("token exchange: urn:ietf")),
        "{events:#?}"
    );
    gw.stop();
    let log = gw.log_text();
    assert!(log.contains("DEBUG"), "debug logging was on");
    let canaries = [
        alice.as_str(),
        bob.as_str(),
        carol.as_str(),
        expired.as_str(),
        forged.as_str(),
        t1.access_token.as_str(),
        t2.access_token.as_str(),
        t3.access_token.as_str(),
        t4.access_token.as_str(),
        client_secret.as_str(),
    ];
    for canary in canaries {
        assert!(!log.contains(canary), "a token in the log");
        for e in events.iter().chain(&errors) {
            assert!(!e.contains(canary), "a token in an event or error: {e}");
        }
    }
}
