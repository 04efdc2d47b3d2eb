//! End to end against oidc-provider (tests/oidc/server.mjs): `private_key_jwt` client
//! authentication (RS256 and ES256), the JWT bearer grant and client-secret rotation, each
//! token checked by introspection, and no key, assertion or secret in events or errors.
//! `tls_client_auth` (RFC 8705) is at the end, in `mod tls_client_auth`.

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

/// RFC 8705 mutual-TLS client authentication against oidc-provider's `mTLS` feature on the
/// test server's HTTPS listener. Every certificate is made here, at test time.
mod tls_client_auth {
    use super::*;
    use authgate::proto::v1::PutCredentialRequest;
    use parking_lot::Mutex;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    use std::sync::{Arc, OnceLock};

    struct Pki {
        ca_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A certificate and its private key, PEM.
    struct Pair {
        cert: String,
        key: String,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "authgate test CA");
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self {
                ca_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        fn issue(&self, params: CertificateParams, key: KeyPair) -> Pair {
            Pair {
                cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
                key: key.serialize_pem(),
            }
        }

        fn server(&self) -> Pair {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            self.issue(params, KeyPair::generate().unwrap())
        }

        /// A client certificate with subject `CN=cn` for `key` (ECDSA P-256 by default).
        fn client(&self, cn: &str, key: Option<KeyPair>) -> Pair {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            self.issue(params, key.unwrap_or_else(|| KeyPair::generate().unwrap()))
        }

        /// A client certificate for `CN=cn` that expired in 2021.
        fn expired_client(&self, cn: &str) -> Pair {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            self.issue(params, KeyPair::generate().unwrap())
        }
    }

    fn self_signed(cn: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        Pair {
            cert: params.self_signed(&key).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    /// A line of the key's base64 past the algorithm header: appears only if the key leaked.
    fn key_canary(pem: &str) -> String {
        pem.lines().nth(2).unwrap().to_owned()
    }

    /// The gateway's log lines at debug level, for the canary check.
    fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
        static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
        LOGS.get_or_init(|| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let writer = buf.clone();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    "authgate=debug,authgate_plugin_oauth2=debug,authgate_plugin_sdk=debug,info",
                )
                .with_ansi(false)
                .with_writer(move || LogWriter(writer.clone()))
                .try_init();
            buf
        })
        .clone()
    }

    struct LogWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Setup {
        pki: Pki,
        oidc: OidcServer,
        mtls: String,
        tmp: tempfile::TempDir,
    }

    /// The test server with its HTTPS listener (a server certificate for 127.0.0.1 from the
    /// test CA, which also issues the client certificates) and a self-signed client
    /// certificate registered for `mtls-self-signed`.
    async fn setup(self_signed_cert: &str) -> Setup {
        let pki = Pki::new();
        let tmp = tempfile::tempdir().unwrap();
        let server = pki.server();
        let srv_cert = write_key(tmp.path(), "server.pem", &server.cert);
        let srv_key = write_key(tmp.path(), "server.key", &server.key);
        let ca = write_key(tmp.path(), "ca.pem", &pki.ca_pem);
        let ss = write_key(tmp.path(), "self-signed.pem", self_signed_cert);
        let oidc = OidcServer::start(&[
            ("OIDC_MTLS_CERT", srv_cert.as_str()),
            ("OIDC_MTLS_KEY", srv_key.as_str()),
            ("OIDC_MTLS_CA", ca.as_str()),
            ("OIDC_MTLS_SELF_SIGNED", ss.as_str()),
        ])
        .await;
        let mtls = oidc
            .mtls
            .clone()
            .expect("the test server's mTLS listener is on");
        Setup {
            pki,
            oidc,
            mtls,
            tmp,
        }
    }

    impl Setup {
        /// Settings lines for `client_id` with `pair`, written to files as `${file:..}`.
        fn tls_settings(&self, name: &str, client_id: &str, method: &str, pair: &Pair) -> String {
            let cert = write_key(self.tmp.path(), &format!("{name}.pem"), &pair.cert);
            let key = write_key(self.tmp.path(), &format!("{name}.key"), &pair.key);
            format!(
                "client_id = \"{client_id}\"\nclient_auth = \"{method}\"\ntls_client_certificate = \"${{file:{cert}}}\"\ntls_client_key = \"${{file:{key}}}\"\nscopes = [\"read\"]"
            )
        }

        fn ca_setting(&self) -> String {
            let ca = write_key(self.tmp.path(), "trusted-ca.pem", &self.pki.ca_pem);
            format!("tls_ca_certificate = \"${{file:{ca}}}\"")
        }
    }

    /// An RSA client key (PKCS#8, from node: the crypto backend here cannot generate RSA).
    fn rsa_key() -> KeyPair {
        KeyPair::from_pem(&test_keys().rsa_pem).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_client_auth_gets_tokens_that_introspect_active_directly_and_via_mtls_aliases() {
        let logs = captured_logs();
        let ss = self_signed("self-signed-client");
        let s = setup(&ss.cert).await;
        let rsa_client = s.pki.client("mtls-client", Some(rsa_key()));
        let ec_client = s.pki.client("mtls-client", None);
        let ca = s.ca_setting();
        let cfg = credential(
            "mtls",
            &format!(
                "token_url = \"{}/token\"\n{ca}\n{}",
                s.mtls,
                s.tls_settings("rsa", "mtls-client", "tls_client_auth", &rsa_client)
            ),
        ) + &credential(
            "mtls-disco",
            &format!(
                "issuer = \"{}\"\n{ca}\n{}",
                s.oidc.issuer,
                s.tls_settings("ec", "mtls-client", "tls_client_auth", &ec_client)
            ),
        ) + &credential(
            "mtls-self",
            &format!(
                "token_url = \"{}/token\"\n{ca}\n{}",
                s.mtls,
                s.tls_settings("ss", "mtls-self-signed", "self_signed_tls_client_auth", &ss)
            ),
        );
        let gw = Gateway::start(&cfg).await;
        let mut c = gw.client().await;
        let mut issued = Vec::new();
        for id in ["mtls", "mtls-disco", "mtls-self"] {
            let t = c
                .get_token(get_token_request("acme", id, &[]))
                .await
                .unwrap_or_else(|e| panic!("{id}: {e:?}"))
                .into_inner();
            assert_eq!(t.scopes, vec!["read"], "{id}");
            assert!(
                s.oidc.is_active(&t.access_token, "cc-basic-secret").await,
                "{id}"
            );
            issued.push(t.access_token);
        }
        let stats = s.oidc.stats().await;
        assert_eq!(stats["by_grant"]["client_credentials"], 3, "{stats}");
        assert_eq!(stats["errors"], 0, "{stats}");

        // Discovery at the plain-HTTP issuer; the token request at the mutual-TLS alias.
        let events = events_text(&gw, "mtls-disco", &[EventKind::UpstreamCall]).await;
        let alias = format!("{}/token", s.mtls);
        assert!(
            events.iter().any(|e| e.contains("discovery")
                && e.contains(&format!(
                    "{}/.well-known/openid-configuration",
                    s.oidc.issuer
                ))),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e.contains("step: \"token\"") && e.contains(&alias)),
            "{events:?}"
        );
        // RFC 8705 §2: client_id in the form, no secret, no assertion, no Basic header.
        let token_calls: Vec<_> = gw
            .client()
            .await
            .list_events(ListEventsRequest {
                tenant: "acme".into(),
                credential_id: "mtls-disco".into(),
                kinds: vec![EventKind::UpstreamCall as i32],
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .filter_map(|e| e.http)
            .filter(|h| h.step == "token")
            .collect();
        assert_eq!(token_calls.len(), 1);
        let sent = &token_calls[0];
        assert_eq!(sent.url, alias);
        assert!(
            sent.request_body.contains("client_id=mtls-client"),
            "{sent:?}"
        );
        assert!(
            !sent.request_body.contains("client_secret")
                && !sent.request_body.contains("client_assertion"),
            "{sent:?}"
        );
        assert!(
            !sent.request_headers.contains_key("authorization"),
            "{sent:?}"
        );

        // Revocation (RFC 7009) goes to the revocation alias, authenticated the same way.
        let revoked = c
            .revoke(authgate::proto::v1::RevokeRequest {
                tenant: "acme".into(),
                credential_id: "mtls-disco".into(),
                scopes: vec![],
                upstream: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.upstream_revoked, 1, "{revoked:?}");
        assert!(!s.oidc.is_active(&issued[1], "cc-basic-secret").await);
        let events = events_text(&gw, "mtls-disco", &[EventKind::UpstreamCall]).await;
        assert!(
            events.iter().any(|e| e.contains("step: \"revoke\"")
                && e.contains(&format!("{}/token/revocation", s.mtls))
                && e.contains("status: 200")),
            "{events:?}"
        );

        // An API-created credential (guarded egress, key sealed in the store) works the same,
        // and the key is never given back.
        let mut admin = gw.admin().await;
        let api_client = s.pki.client("mtls-client", None);
        let created = admin
            .put_credential(put(
                "acme",
                "mtls-api",
                "oauth2",
                serde_json::json!({
                    "token_url": alias, "client_id": "mtls-client",
                    "client_auth": "tls_client_auth",
                    "tls_client_certificate": api_client.cert,
                    "tls_client_key": api_client.key,
                    "tls_ca_certificate": s.pki.ca_pem,
                    "scopes": ["read"],
                }),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.secret_fields_set, vec!["tls_client_key"]);
        let t = c
            .get_token(get_token_request("acme", "mtls-api", &[]))
            .await
            .unwrap()
            .into_inner();
        assert!(s.oidc.is_active(&t.access_token, "cc-basic-secret").await);
        issued.push(t.access_token);

        let mut seen = vec![format!("{created:?}")];
        for id in ["mtls", "mtls-disco", "mtls-self", "mtls-api"] {
            let got = admin
                .get_credential(GetCredentialRequest {
                    tenant: "acme".into(),
                    credential_id: id.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.status, CredentialStatus::Active as i32, "{id}");
            assert_eq!(got.secret_fields_set, vec!["tls_client_key"], "{id}");
            let fields = &got.settings.as_ref().unwrap().fields;
            assert!(fields.contains_key("tls_client_certificate"), "{id}");
            assert!(!fields.contains_key("tls_client_key"), "{id}");
            seen.push(format!("{got:?}"));
            seen.extend(events_text(&gw, id, &[]).await);
        }
        let log = String::from_utf8_lossy(&logs.lock()).into_owned();
        assert!(
            log.contains("own connection pools") && log.contains("CN=mtls-client"),
            "the gateway's debug log was captured: {log}"
        );
        seen.push(log);
        for pair in [&rsa_client, &ec_client, &ss, &api_client] {
            let canary = key_canary(&pair.key);
            for text in &seen {
                assert!(!text.contains(&canary), "a private key leaked: {text}");
            }
        }
        for t in &issued {
            for text in &seen {
                assert!(!text.contains(t.as_str()), "a token leaked: {text}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_or_mismatched_certificate_and_an_untrusted_provider_say_what_to_fix() {
        let logs = captured_logs();
        let s = setup(&self_signed("unused").cert).await;
        let ca = s.ca_setting();
        let intruder = s.pki.client("intruder", None);
        let good = s.pki.client("mtls-client", None);
        let expired = s.pki.expired_client("mtls-client");
        let cfg = credential(
            "wrong-subject",
            &format!(
                "token_url = \"{}/token\"\n{ca}\n{}",
                s.mtls,
                s.tls_settings("intruder", "mtls-client", "tls_client_auth", &intruder)
            ),
        ) + &credential(
            "expired",
            &format!(
                "token_url = \"{}/token\"\n{ca}\n{}",
                s.mtls,
                s.tls_settings("expired", "mtls-client", "tls_client_auth", &expired)
            ),
        ) + &credential(
            "untrusted",
            &format!(
                "token_url = \"{}/token\"\n{}",
                s.mtls,
                s.tls_settings("good", "mtls-client", "tls_client_auth", &good)
            ),
        );
        let gw = Gateway::start(&cfg).await;
        let mut c = gw.client().await;
        let mut admin = gw.admin().await;
        let status_of = |id: &'static str| {
            let mut admin = admin.clone();
            async move {
                admin
                    .get_credential(GetCredentialRequest {
                        tenant: "acme".into(),
                        credential_id: id.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
            }
        };

        // The server refuses the certificate's subject: invalid_client, the credential INVALID.
        let e = c
            .get_token(get_token_request("acme", "wrong-subject", &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("invalid_client"), "{e:?}");
        assert_eq!(
            status_of("wrong-subject").await,
            CredentialStatus::Invalid as i32
        );

        // An expired certificate: said when the credential is loaded; the provider refuses it.
        let notes = events_text(&gw, "expired", &[EventKind::CredentialChanged]).await;
        assert!(
            notes
                .iter()
                .any(|n| n.contains("(CN=mtls-client) expired on")
                    && n.contains("`tls_client_certificate`")),
            "{notes:?}"
        );
        let e_expired = c
            .get_token(get_token_request("acme", "expired", &[]))
            .await
            .unwrap_err();
        assert_eq!(
            e_expired.code(),
            tonic::Code::FailedPrecondition,
            "{e_expired:?}"
        );
        assert_eq!(status_of("expired").await, CredentialStatus::Invalid as i32);

        // The provider's certificate is from a CA the credential does not trust: a settings
        // problem that names the setting; nothing was sent, the credential is not INVALID.
        let before = s.oidc.token_requests().await;
        let e2 = c
            .get_token(get_token_request("acme", "untrusted", &[]))
            .await
            .unwrap_err();
        assert_eq!(e2.code(), tonic::Code::FailedPrecondition, "{e2:?}");
        assert!(e2.message().contains("tls_ca_certificate"), "{e2:?}");
        assert_eq!(s.oidc.token_requests().await, before);
        assert_ne!(
            status_of("untrusted").await,
            CredentialStatus::Invalid as i32
        );

        // A key that is not the certificate's is refused when stored, naming the field.
        let e3 = admin
            .put_credential(PutCredentialRequest {
                tenant: "acme".into(),
                credential_id: "mismatch".into(),
                provider: "oauth2".into(),
                settings: Some(settings(serde_json::json!({
                    "token_url": format!("{}/token", s.mtls), "client_id": "mtls-client",
                    "client_auth": "tls_client_auth",
                    "tls_client_certificate": good.cert,
                    "tls_client_key": intruder.key,
                }))),
            })
            .await
            .unwrap_err();
        assert_eq!(e3.code(), tonic::Code::InvalidArgument, "{e3:?}");
        assert!(
            e3.message().contains("`tls_client_key` does not belong"),
            "{e3:?}"
        );
        // And a key pasted into the certificate field is refused without being echoed.
        let e4 = admin
            .put_credential(put(
                "acme",
                "key-as-cert",
                "oauth2",
                serde_json::json!({
                    "token_url": format!("{}/token", s.mtls), "client_id": "mtls-client",
                    "client_auth": "tls_client_auth",
                    "tls_client_certificate": good.key,
                    "tls_client_key": good.key,
                }),
            ))
            .await
            .unwrap_err();
        assert_eq!(e4.code(), tonic::Code::InvalidArgument, "{e4:?}");
        assert!(e4.message().contains("holds a private key"), "{e4:?}");

        let mut seen: Vec<String> = [&e, &e2, &e3, &e4]
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        seen.push(format!("{e_expired:?}"));
        for id in ["wrong-subject", "expired", "untrusted"] {
            seen.extend(events_text(&gw, id, &[]).await);
        }
        seen.push(String::from_utf8_lossy(&logs.lock()).into_owned());
        for pair in [&intruder, &good, &expired] {
            let canary = key_canary(&pair.key);
            for text in &seen {
                assert!(!text.contains(&canary), "a private key leaked: {text}");
            }
        }
    }
}
