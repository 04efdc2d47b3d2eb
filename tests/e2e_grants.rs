//! End to end against oidc-provider (tests/oidc/server.mjs): `private_key_jwt` client
//! authentication (RS256 and ES256), the JWT bearer grant and client-secret rotation, each
//! token checked by introspection, and no key, assertion or secret in events or errors.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::{CredentialStatus, EventKind, GetCredentialRequest, ListEventsRequest};
use authgate_plugin_sdk::assertion::{claim_set, AssertionClaims};
use authgate_plugin_sdk::{Secret, SigningKey};
use common::*;
use std::path::Path;
use std::process::Command;

/// Key pairs generated for this test run (never committed): private keys as PKCS#8 PEM,
/// and the public JWK Set the test server trusts (`r1` RS256, `e1` ES256).
struct TestKeys {
    rsa_pem: String,
    ec_pem: String,
    jwks: String,
}

fn test_keys() -> TestKeys {
    let script = r#"
const c = require('crypto');
const gen = (t, o, alg, kid) => {
  const { privateKey, publicKey } = c.generateKeyPairSync(t, o);
  return [privateKey.export({ type: 'pkcs8', format: 'pem' }), { ...publicKey.export({ format: 'jwk' }), alg, kid }];
};
const [rsa, rj] = gen('rsa', { modulusLength: 2048 }, 'RS256', 'r1');
const [ec, ej] = gen('ec', { namedCurve: 'P-256' }, 'ES256', 'e1');
console.log(JSON.stringify({ rsa, ec, jwks: { keys: [rj, ej] } }));
"#;
    let out = Command::new("node")
        .arg("-e")
        .arg(script)
        .output()
        .expect("node generates the test keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    TestKeys {
        rsa_pem: v["rsa"].as_str().unwrap().to_owned(),
        ec_pem: v["ec"].as_str().unwrap().to_owned(),
        jwks: v["jwks"].to_string(),
    }
}

fn write_key(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

fn credential(id: &str, settings: &str) -> String {
    format!(
        "[[credentials]]\ntenant = \"acme\"\nid = \"{id}\"\nprovider = \"oauth2\"\n[credentials.settings]\n{settings}\n"
    )
}

/// A middle slice of a PEM body: appears nowhere unless the key leaked.
fn pem_canary(pem: &str) -> String {
    pem.lines().nth(3).unwrap().to_owned()
}

async fn events_text(gw: &Gateway, id: &str, kinds: &[EventKind]) -> Vec<String> {
    gw.client()
        .await
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            credential_id: id.into(),
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .map(|e| format!("{e:?}"))
        .collect()
}

async fn post_assertion(oidc: &OidcServer, client_id: &str, assertion: &Secret) -> u16 {
    reqwest::Client::new()
        .post(oidc.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (
                "client_assertion_type",
                authgate_plugin_sdk::assertion::CLIENT_ASSERTION_TYPE,
            ),
            ("client_assertion", assertion.expose()),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_rs256_and_es256_get_valid_tokens_with_single_use_assertions() {
    let keys = test_keys();
    let oidc = OidcServer::start(&[("OIDC_CLIENT_JWKS", keys.jwks.as_str())]).await;
    let tmp = tempfile::tempdir().unwrap();
    let rsa = write_key(tmp.path(), "rsa.pem", &keys.rsa_pem);
    let ec = write_key(tmp.path(), "ec.pem", &keys.ec_pem);
    let token_url = oidc.token_url();
    let cfg = credential(
        "pk-rs",
        &format!("token_url = \"{token_url}\"\nclient_id = \"pk-rs256\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"${{file:{rsa}}}\"\nkey_id = \"r1\"\nscopes = [\"read\"]"),
    ) + &credential(
        "pk-es",
        &format!("issuer = \"{}\"\nclient_id = \"pk-es256\"\nclient_auth = \"private_key_jwt\"\nprivate_key = \"${{file:{ec}}}\"\njwt_audience = \"issuer\"\nscopes = [\"read\"]", oidc.issuer),
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let mut issued = Vec::new();
    for id in ["pk-rs", "pk-es"] {
        let t1 = c
            .get_token(get_token_request("acme", id, &[]))
            .await
            .unwrap()
            .into_inner();
        // A second fetch signs a new assertion; a reused jti would be refused.
        let mut again = get_token_request("acme", id, &[]);
        again.force_refresh = true;
        let t2 = c.get_token(again).await.unwrap().into_inner();
        assert_ne!(t1.access_token, t2.access_token);
        for t in [&t1, &t2] {
            assert!(
                oidc.is_active(&t.access_token, "cc-basic-secret").await,
                "{id}"
            );
        }
        issued.extend([t1.access_token, t2.access_token]);
    }
    let stats = oidc.stats().await;
    assert_eq!(stats["errors"], 0, "no assertion was refused: {stats}");

    // The server itself refuses a replayed or an expired assertion, which is why the gateway
    // signs a new one for every request.
    let key = SigningKey::parse(
        "private_key",
        &Secret::from(keys.ec_pem.clone()),
        None,
        Some("e1"),
    )
    .unwrap();
    let extra = serde_json::Map::new();
    let claims = AssertionClaims {
        issuer: "pk-es256",
        subject: Some("pk-es256"),
        audience: &token_url,
        lifetime: std::time::Duration::from_secs(60),
        extra: &extra,
    };
    let fresh = key.sign(&claim_set(&claims, now_unix() as u64)).unwrap();
    assert_eq!(post_assertion(&oidc, "pk-es256", &fresh).await, 200);
    assert_eq!(
        post_assertion(&oidc, "pk-es256", &fresh).await,
        401,
        "replayed jti"
    );
    let expired = key
        .sign(&claim_set(&claims, now_unix() as u64 - 600))
        .unwrap();
    assert_eq!(
        post_assertion(&oidc, "pk-es256", &expired).await,
        401,
        "expired"
    );

    // Events show the assertion as a digest; no key material, no token anywhere.
    for id in ["pk-rs", "pk-es"] {
        let events = events_text(&gw, id, &[]).await;
        let upstream = events
            .iter()
            .filter(|e| e.contains("client_assertion=hmac-sha256"))
            .count();
        assert_eq!(upstream, 2, "{id}: {events:?}");
        for e in &events {
            for canary in [pem_canary(&keys.rsa_pem), pem_canary(&keys.ec_pem)] {
                assert!(!e.contains(&canary), "private key in an event: {e}");
            }
            for t in &issued {
                assert!(!e.contains(t.as_str()), "token in an event: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_grant_gets_a_valid_token() {
    let keys = test_keys();
    let oidc = OidcServer::start(&[("OIDC_CLIENT_JWKS", keys.jwks.as_str())]).await;
    let tmp = tempfile::tempdir().unwrap();
    let ec = write_key(tmp.path(), "ec.pem", &keys.ec_pem);
    let secret = env_secret("jb-secret");
    let cfg = credential(
        "jb",
        &format!("token_url = \"{}\"\ngrant = \"jwt_bearer\"\nclient_id = \"jb-client\"\nclient_secret = \"${{env:{secret}}}\"\nprivate_key = \"${{file:{ec}}}\"\nkey_id = \"e1\"\njwt_subject = \"user-42\"\njwt_claims = {{ tenant = \"acme\" }}\nscopes = [\"read\"]", oidc.token_url()),
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let t1 = c
        .get_token(get_token_request("acme", "jb", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t1.scopes, vec!["read"]);
    assert!(oidc.is_active(&t1.access_token, "cc-basic-secret").await);
    let mut again = get_token_request("acme", "jb", &["read", "write"]);
    again.force_refresh = true;
    let t2 = c.get_token(again).await.unwrap().into_inner();
    assert!(oidc.is_active(&t2.access_token, "cc-basic-secret").await);
    let stats = oidc.stats().await;
    assert_eq!(
        stats["by_grant"]["urn:ietf:params:oauth:grant-type:jwt-bearer"], 2,
        "{stats}"
    );
    assert_eq!(stats["errors"], 0, "{stats}");
    for e in events_text(&gw, "jb", &[]).await {
        assert!(!e.contains(&pem_canary(&keys.ec_pem)), "{e}");
        assert!(
            !e.contains(&t1.access_token) && !e.contains(&t2.access_token),
            "{e}"
        );
        assert!(!e.contains("jb-secret"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_found_and_named_and_all_wrong_is_invalid() {
    let oidc = OidcServer::start(&[("OIDC_ROT_SECRET", "rot-canary-new")]).await;
    let old = env_secret("rot-canary-old");
    let new = env_secret("rot-canary-new");
    let wrong = env_secret("rot-canary-wrong");
    let settings = |first: &str, second: &str| {
        format!("token_url = \"{}\"\nclient_id = \"cc-rot\"\nclient_secret = \"${{env:{first}}}\"\nclient_secrets = [\"${{env:{second}}}\"]\nscopes = [\"read\"]", oidc.token_url())
    };
    let cfg =
        credential("rot", &settings(&old, &new)) + &credential("bad", &settings(&old, &wrong));
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let t = c
        .get_token(get_token_request("acme", "rot", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(oidc.is_active(&t.access_token, "cc-basic-secret").await);
    let notes = events_text(&gw, "rot", &[EventKind::CredentialChanged]).await;
    assert!(
        notes
            .iter()
            .any(|e| e.contains("#1 of 2 was rejected") && e.contains("#2 was accepted")),
        "{notes:?}"
    );
    // The accepted secret is used first from now on: one request, no rejection.
    let before = oidc.stats().await;
    let mut again = get_token_request("acme", "rot", &[]);
    again.force_refresh = true;
    c.get_token(again).await.unwrap();
    let after = oidc.stats().await;
    assert_eq!(
        after["token_requests"].as_u64().unwrap() - before["token_requests"].as_u64().unwrap(),
        1
    );
    assert_eq!(after["errors"], before["errors"]);

    let e = c
        .get_token(get_token_request("acme", "bad", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let status = gw
        .admin()
        .await
        .get_credential(GetCredentialRequest {
            tenant: "acme".into(),
            credential_id: "bad".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, CredentialStatus::Invalid as i32);
    let mut all = events_text(&gw, "rot", &[]).await;
    all.extend(events_text(&gw, "bad", &[]).await);
    all.push(format!("{e:?}"));
    assert!(
        all.iter()
            .any(|e| e.contains("none of the 2 client secrets")),
        "{all:?}"
    );
    for e in &all {
        assert!(!e.contains("rot-canary"), "a client secret leaked: {e}");
    }
}
