//! Callers and tenants: mTLS with SPIFFE identities and API keys, one authorization point,
//! rate limits, deadlines and request limits, hot reload. Real certificates are generated
//! here with rcgen; the provider is a local fake.

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]
// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::config::{CallerConfig, Role};
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::{GetTokenRequest, ListEventsRequest, RevokeRequest};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM) with the given DNS names and URI SANs.
    fn leaf(&self, dns: &[&str], uris: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if dns.contains(&"localhost") {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn caller_toml(name: &str, ident: &str, tenants: &[&str], roles: &[&str], extra: &str) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[callers]]\nname = \"{name}\"\n{ident}\ntenants = [{}]\nroles = [{}]\n{extra}\n",
        list(tenants),
        list(roles)
    )
}

async fn token_endpoint(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(delay)
                .set_body_json(serde_json::json!({"access_token": "tok-123", "token_type": "Bearer", "expires_in": 3600})),
        )
        .mount(&server)
        .await;
    server
}

struct Setup {
    gw: Gateway,
    pki: Pki,
    dir: tempfile::TempDir,
    _provider: MockServer,
}

const KEY_ALLOWED: &str = "key-allowed-1";
const KEY_OTHER_TENANT: &str = "key-other-2";
const KEY_NO_ROLE: &str = "key-norole-3";

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("authgate test CA");
    let (server_cert, server_key) = pki.leaf(&["localhost"], &[]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let tls = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n",
        write("server.pem", &server_cert),
        write("server.key", &server_key),
        write("ca.pem", &pki.ca_pem)
    );
    let provider = token_endpoint(Duration::ZERO).await;
    let env = env_secret("s");
    let url = format!("{}/token", provider.uri());
    let mut cfg = tls;
    cfg += &caller_toml(
        "billing-mtls",
        "spiffe_id = \"spiffe://example.org/ns/billing/sa/api\"",
        &["acme"],
        &["token", "revoke", "events"],
        "",
    );
    cfg += &caller_toml(
        "globex-mtls",
        "spiffe_id = \"spiffe://example.org/ns/globex/sa/api\"",
        &["globex"],
        &["token", "events"],
        "",
    );
    cfg += &caller_toml(
        "admin-mtls",
        "spiffe_id = \"spiffe://example.org/ns/ops/sa/admin\"",
        &["acme"],
        &["admin"],
        "",
    );
    cfg += &caller_toml(
        "billing-key",
        &format!("api_key_sha256 = \"{}\"", sha256_hex(KEY_ALLOWED)),
        &["acme"],
        &["token", "revoke", "events"],
        "",
    );
    cfg += &caller_toml(
        "globex-key",
        &format!("api_key_sha256 = \"{}\"", sha256_hex(KEY_OTHER_TENANT)),
        &["globex"],
        &["token", "events"],
        "",
    );
    cfg += &caller_toml(
        "admin-key",
        &format!("api_key_sha256 = \"{}\"", sha256_hex(KEY_NO_ROLE)),
        &["*"],
        &["admin"],
        "",
    );
    cfg += &cc_credential("acme", "idp", &url, &env, "");
    cfg += &cc_credential("globex", "idp", &url, &env, "");
    let gw = Gateway::start_in(dir.path(), &cfg).await;
    Setup {
        gw,
        pki,
        dir,
        _provider: provider,
    }
}

async fn tls_channel(
    port: u16,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Calls each RPC for `tenant` and returns the status codes (Ok for success).
async fn call_all(
    ch: Channel,
    api_key: Option<&str>,
    tenant: &str,
) -> Vec<(&'static str, Code, String)> {
    let mut c = TokenServiceClient::new(ch);
    fn auth<T>(mut r: Request<T>, api_key: Option<&str>) -> Request<T> {
        if let Some(k) = api_key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }
    let code = |r: Result<(), tonic::Status>| match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    };
    let (g, gm) = code(
        c.get_token(auth(
            Request::new(get_token_request(tenant, "idp", &[])),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    let (r, rm) = code(
        c.revoke(auth(
            Request::new(RevokeRequest {
                tenant: tenant.into(),
                credential_id: "idp".into(),
                ..Default::default()
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    let (l, lm) = code(
        c.list_events(auth(
            Request::new(ListEventsRequest {
                tenant: tenant.into(),
                ..Default::default()
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    vec![
        ("GetToken", g, gm),
        ("Revoke", r, rm),
        ("ListEvents", l, lm),
    ]
}

fn assert_row(label: &str, got: &[(&str, Code, String)], want: Code) {
    for (rpc, code, msg) in got {
        assert_eq!(*code, want, "{label} / {rpc}: got {code:?} ({msg})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_over_mtls_and_api_keys() {
    let s = setup().await;
    let port = s.gw.addr().port();
    let ca = s.pki.ca_pem.clone();
    let cert = |uri: &str| s.pki.leaf(&["client"], &[uri]);
    let allowed = cert("spiffe://example.org/ns/billing/sa/api");
    let other_tenant = cert("spiffe://example.org/ns/globex/sa/api");
    let no_role = cert("spiffe://example.org/ns/ops/sa/admin");
    let unknown = cert("spiffe://example.org/ns/stranger/sa/x");
    let anonymous = tls_channel(port, &ca, None).await.unwrap();

    // Each row: (label, channel, api key, tenant, expected code). "ghost" does not exist;
    // a denied caller must get the same answer for it as for an existing tenant.
    let mut rows: Vec<(&str, Channel, Option<&str>, &str, Code)> = vec![
        (
            "mTLS allowed",
            tls_channel(port, &ca, Some(&allowed)).await.unwrap(),
            None,
            "acme",
            Code::Ok,
        ),
        (
            "mTLS other tenant",
            tls_channel(port, &ca, Some(&other_tenant)).await.unwrap(),
            None,
            "acme",
            Code::PermissionDenied,
        ),
        (
            "mTLS other tenant, unknown tenant",
            tls_channel(port, &ca, Some(&other_tenant)).await.unwrap(),
            None,
            "ghost",
            Code::PermissionDenied,
        ),
        (
            "mTLS allowed, unknown tenant",
            tls_channel(port, &ca, Some(&allowed)).await.unwrap(),
            None,
            "ghost",
            Code::PermissionDenied,
        ),
        (
            "mTLS allowed, other existing tenant",
            tls_channel(port, &ca, Some(&allowed)).await.unwrap(),
            None,
            "globex",
            Code::PermissionDenied,
        ),
        (
            "mTLS without role",
            tls_channel(port, &ca, Some(&no_role)).await.unwrap(),
            None,
            "acme",
            Code::PermissionDenied,
        ),
        (
            "mTLS unknown identity",
            tls_channel(port, &ca, Some(&unknown)).await.unwrap(),
            None,
            "acme",
            Code::PermissionDenied,
        ),
        (
            "no identity",
            anonymous.clone(),
            None,
            "acme",
            Code::Unauthenticated,
        ),
        (
            "no identity, unknown tenant",
            anonymous.clone(),
            None,
            "ghost",
            Code::Unauthenticated,
        ),
    ];
    rows.extend([
        (
            "key allowed",
            anonymous.clone(),
            Some(KEY_ALLOWED),
            "acme",
            Code::Ok,
        ),
        (
            "key other tenant",
            anonymous.clone(),
            Some(KEY_OTHER_TENANT),
            "acme",
            Code::PermissionDenied,
        ),
        (
            "key other tenant, unknown tenant",
            anonymous.clone(),
            Some(KEY_OTHER_TENANT),
            "ghost",
            Code::PermissionDenied,
        ),
        (
            "key without role",
            anonymous.clone(),
            Some(KEY_NO_ROLE),
            "acme",
            Code::PermissionDenied,
        ),
        (
            "key without role, unknown tenant",
            anonymous.clone(),
            Some(KEY_NO_ROLE),
            "ghost",
            Code::PermissionDenied,
        ),
        (
            "unknown key",
            anonymous.clone(),
            Some("not-a-configured-key"),
            "acme",
            Code::Unauthenticated,
        ),
    ]);
    let mut results = std::collections::HashMap::new();
    for (label, ch, key, tenant, want) in rows {
        let mut got = call_all(ch, key, tenant).await;
        if label.contains("without role") {
            // These callers are admins: `admin` implies `revoke`, and only Revoke is theirs.
            let (_, code, msg) = got.remove(1);
            let revoke_want = if tenant == "ghost" {
                Code::NotFound
            } else {
                Code::Ok
            };
            assert_eq!(code, revoke_want, "{label} / Revoke: {msg}");
        }
        assert_row(label, &got, want);
        results.insert(label, got);
    }
    // Denials never depend on whether the tenant exists: same code and message for an
    // existing tenant the caller may not use and for a tenant that does not exist.
    for (existing, missing) in [
        ("mTLS other tenant", "mTLS other tenant, unknown tenant"),
        (
            "mTLS allowed, other existing tenant",
            "mTLS allowed, unknown tenant",
        ),
        ("no identity", "no identity, unknown tenant"),
        ("key other tenant", "key other tenant, unknown tenant"),
        ("key without role", "key without role, unknown tenant"),
    ] {
        assert_eq!(
            results[existing], results[missing],
            "{existing} vs {missing}"
        );
    }

    // The caller and the decision are recorded with the upstream call it caused.
    let mut c = TokenServiceClient::new(tls_channel(port, &ca, Some(&allowed)).await.unwrap());
    let events = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![authgate::proto::v1::EventKind::UpstreamCall as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    for who in [
        "billing-mtls (mTLS; allowed role Token on tenant acme)",
        "billing-key (api key; allowed role Token on tenant acme)",
    ] {
        assert!(
            events.iter().any(|e| e.caller == who),
            "no upstream event by {who}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused() {
    let s = setup().await;
    let port = s.gw.addr().port();
    let ca = s.pki.ca_pem.clone();
    // Another CA: the TLS handshake itself fails.
    let foreign = Pki::new("someone else's CA")
        .leaf(&["client"], &["spiffe://example.org/ns/billing/sa/api"]);
    let refused = match tls_channel(port, &ca, Some(&foreign)).await {
        Err(_) => true,
        Ok(ch) => call_all(ch, None, "acme")
            .await
            .iter()
            .all(|(_, c, _)| *c != Code::Ok),
    };
    assert!(
        refused,
        "a certificate from another CA must not be accepted"
    );

    let no_uri = s.pki.leaf(&["client"], &[]);
    let got = call_all(
        tls_channel(port, &ca, Some(&no_uri)).await.unwrap(),
        None,
        "acme",
    )
    .await;
    assert_row("no URI SAN", &got, Code::Unauthenticated);
    assert!(got[0].2.contains("no URI SAN"), "{}", got[0].2);

    let two = s.pki.leaf(
        &["client"],
        &["spiffe://example.org/a", "spiffe://example.org/b"],
    );
    let got = call_all(
        tls_channel(port, &ca, Some(&two)).await.unwrap(),
        None,
        "acme",
    )
    .await;
    assert_row("two URI SANs", &got, Code::Unauthenticated);
    assert!(got[0].2.contains("more than one URI SAN"), "{}", got[0].2);
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_is_resource_exhausted_for_an_authenticated_caller() {
    let s = setup().await;
    let ch = tls_channel(s.gw.addr().port(), &s.pki.ca_pem, None)
        .await
        .unwrap();
    let mut c = TokenServiceClient::new(ch);
    let mut r = Request::new(GetTokenRequest {
        tenant: "acme".into(),
        credential_id: "idp".into(),
        scopes: (0..10_000).map(|i| format!("scope-{i}")).collect(),
        ..Default::default()
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {KEY_ALLOWED}").parse().unwrap(),
    );
    assert_eq!(
        c.get_token(r).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
}

fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_is_throttled_while_another_keeps_succeeding() {
    let provider = token_endpoint(Duration::ZERO).await;
    let env = env_secret("s");
    let mut cfg = caller_toml(
        "flooder",
        &format!("api_key_sha256 = \"{}\"", sha256_hex("flood-key")),
        &["acme"],
        &["token"],
        "rate_limit_per_second = 50\nrate_limit_burst = 50",
    );
    cfg += &caller_toml(
        "steady",
        &format!("api_key_sha256 = \"{}\"", sha256_hex("steady-key")),
        &["acme"],
        &["token"],
        "rate_limit_per_second = 50\nrate_limit_burst = 50",
    );
    cfg += &cc_credential(
        "acme",
        "idp",
        &format!("{}/token", provider.uri()),
        &env,
        "",
    );
    let gw = Gateway::start(&cfg).await;
    let run_for = Duration::from_secs(2);

    let flood = {
        let clients = gw.clients(4).await;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..16 {
                let mut c = clients[i % 4].clone();
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut limited, mut lat) = (0u32, 0u32, Vec::new());
                    while started.elapsed() < run_for {
                        let mut r = Request::new(get_token_request("acme", "idp", &[]));
                        r.metadata_mut()
                            .insert("authorization", "Bearer flood-key".parse().unwrap());
                        let t = Instant::now();
                        match c.get_token(r).await {
                            Ok(_) => ok += 1,
                            Err(e) => {
                                assert_eq!(e.code(), Code::ResourceExhausted);
                                use tonic_types::StatusExt;
                                assert!(
                                    e.get_error_details().retry_info().is_some(),
                                    "RetryInfo attached"
                                );
                                limited += 1;
                            }
                        }
                        lat.push(t.elapsed());
                    }
                    (ok, limited, lat)
                }));
            }
            let (mut ok, mut limited, mut lat) = (0, 0, Vec::new());
            for t in tasks {
                let (o, l, v) = t.await.unwrap();
                ok += o;
                limited += l;
                lat.extend(v);
            }
            (ok, limited, lat)
        })
    };
    let mut steady = gw.client().await;
    let (mut steady_ok, mut steady_failed, mut steady_lat) = (0u32, 0u32, Vec::new());
    let started = Instant::now();
    while started.elapsed() < run_for {
        let mut r = Request::new(get_token_request("acme", "idp", &[]));
        r.metadata_mut()
            .insert("authorization", "Bearer steady-key".parse().unwrap());
        let t = Instant::now();
        match steady.get_token(r).await {
            Ok(_) => steady_ok += 1,
            Err(_) => steady_failed += 1,
        }
        steady_lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (flood_ok, flood_limited, flood_lat) = flood.await.unwrap();
    println!(
        "flooder: {flood_ok} ok, {flood_limited} throttled, p99 {:?}; steady: {steady_ok} ok, {steady_failed} failed, p99 {:?}",
        p99(flood_lat),
        p99(steady_lat)
    );
    assert!(flood_limited > 0, "the flooder was throttled");
    // 50 burst + 50/s over ~2 s, with slack for scheduling.
    assert!(flood_ok <= 50 + 50 * 3, "flooder got {flood_ok} through");
    assert_eq!(steady_failed, 0, "the steady caller was never refused");
    assert!(steady_ok >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadline_is_honoured_and_the_late_token_is_kept() {
    let provider = token_endpoint(Duration::from_secs(5)).await;
    let env = env_secret("s");
    let gw = Gateway::start(&cc_credential(
        "acme",
        "idp",
        &format!("{}/token", provider.uri()),
        &env,
        "",
    ))
    .await;
    let mut c = gw.client().await;
    let mut r = Request::new(get_token_request("acme", "idp", &[]));
    r.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let e = c.get_token(r).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(took < Duration::from_millis(300), "answered after {took:?}");
    // The fetch already sent upstream completes and is stored for the next caller.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let started = Instant::now();
    let t = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.access_token, "tok-123");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_on_reload_without_dropping_connections() {
    let provider = token_endpoint(Duration::ZERO).await;
    let env = env_secret("s");
    let caller = |key: &str| CallerConfig {
        name: "svc".into(),
        api_key_sha256: Some(sha256_hex(key)),
        spiffe_id: None,
        tenants: vec!["acme".into()],
        roles: vec![Role::Token],
        rate_limit_per_second: None,
        rate_limit_burst: None,
        trusted_proxy: false,
        allowed_scopes: None,
    };
    let cfg = caller_toml(
        "svc",
        &format!("api_key_sha256 = \"{}\"", sha256_hex("old-key")),
        &["acme"],
        &["token"],
        "",
    ) + &cc_credential(
        "acme",
        "idp",
        &format!("{}/token", provider.uri()),
        &env,
        "",
    );
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let call = |key: &'static str| {
        let mut r = Request::new(get_token_request("acme", "idp", &[]));
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    c.get_token(call("old-key")).await.unwrap();
    gw.server
        .as_ref()
        .unwrap()
        .authorizer()
        .reload(&[caller("new-key")]);
    // Same client, same connection.
    assert_eq!(
        c.get_token(call("old-key")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    c.get_token(call("new-key")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_callers_of_the_running_binary() {
    let provider = token_endpoint(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/token", provider.uri());
    let cred = cc_credential("acme", "idp", &url, "IDP_SECRET", "");
    let with_key = |k: &str| {
        caller_toml(
            "svc",
            &format!("api_key_sha256 = \"{}\"", sha256_hex(k)),
            &["acme"],
            &["token"],
            "",
        ) + &cred
    };
    let gw =
        GatewayProcess::start(dir.path(), &with_key("first-key"), &[("IDP_SECRET", "x")]).await;
    let mut c = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();
    let call = |key: &'static str| {
        let mut r = Request::new(get_token_request("acme", "idp", &[]));
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    c.get_token(call("first-key")).await.unwrap();
    let cfg_path = dir.path().join("authgate.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace(&sha256_hex("first-key"), &sha256_hex("second-key"));
    std::fs::write(&cfg_path, text).unwrap();
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.get_token(call("second-key")).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the callers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c.get_token(call("first-key")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let _ = Path::new("");
}

/// Calls each CredentialService RPC for `tenant`.
async fn call_admin(
    ch: Channel,
    api_key: Option<&str>,
    tenant: &str,
) -> Vec<(&'static str, Code, String)> {
    use authgate::proto::v1::credential_service_client::CredentialServiceClient;
    use authgate::proto::v1::{
        DeleteCredentialRequest, GetCredentialRequest, ListCredentialsRequest,
        PutCredentialRequest, StartAuthorizationRequest,
    };
    fn auth<T>(mut r: Request<T>, api_key: Option<&str>) -> Request<T> {
        if let Some(k) = api_key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }
    let code = |r: Result<(), tonic::Status>| match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    };
    let mut c = CredentialServiceClient::new(ch);
    let settings = match authgate::api::credential_service::json_to_prost(serde_json::json!({
        "token_url": "https://idp.example.com/token", "client_id": "x", "client_secret": "y"
    }))
    .kind
    {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    let mut out = Vec::new();
    let (k, m) = code(
        c.get_credential(auth(
            Request::new(GetCredentialRequest {
                tenant: tenant.into(),
                credential_id: "idp".into(),
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    out.push(("GetCredential", k, m));
    let (k, m) = code(
        c.list_credentials(auth(
            Request::new(ListCredentialsRequest {
                tenant: tenant.into(),
                ..Default::default()
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    out.push(("ListCredentials", k, m));
    let (k, m) = code(
        c.put_credential(auth(
            Request::new(PutCredentialRequest {
                tenant: tenant.into(),
                credential_id: "made-by-admin".into(),
                provider: "oauth2".into(),
                settings,
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    out.push(("PutCredential", k, m));
    let (k, m) = code(
        c.start_authorization(auth(
            Request::new(StartAuthorizationRequest {
                tenant: tenant.into(),
                credential_id: "idp".into(),
                scopes: vec![],
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    out.push(("StartAuthorization", k, m));
    let (k, m) = code(
        c.delete_credential(auth(
            Request::new(DeleteCredentialRequest {
                tenant: tenant.into(),
                credential_id: "made-by-admin".into(),
                revoke_upstream: false,
            }),
            api_key,
        ))
        .await
        .map(|_| ()),
    );
    out.push(("DeleteCredential", k, m));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_service_needs_the_admin_role_for_the_tenant() {
    let s = setup().await;
    let port = s.gw.addr().port();
    let ca = s.pki.ca_pem.clone();
    let admin_cert = s
        .pki
        .leaf(&["client"], &["spiffe://example.org/ns/ops/sa/admin"]);
    let token_cert = s
        .pki
        .leaf(&["client"], &["spiffe://example.org/ns/billing/sa/api"]);
    let anonymous = tls_channel(port, &ca, None).await.unwrap();

    // Allowed: the admin caller on its tenant reaches the service; each RPC answers for
    // itself (the config-managed `idp` uses client credentials, so no authorization step).
    let got = call_admin(
        tls_channel(port, &ca, Some(&admin_cert)).await.unwrap(),
        None,
        "acme",
    )
    .await;
    let want = [
        Code::Ok,
        Code::Ok,
        Code::Ok,
        Code::FailedPrecondition,
        Code::Ok,
    ];
    for ((rpc, code, msg), want) in got.iter().zip(want) {
        assert_eq!(*code, want, "admin mTLS / {rpc}: {msg}");
    }
    let got = call_admin(anonymous.clone(), Some(KEY_NO_ROLE), "globex").await;
    for ((rpc, code, msg), want) in got.iter().zip(want) {
        assert_eq!(*code, want, "admin key (all tenants) / {rpc}: {msg}");
    }

    let rows: Vec<(&str, Channel, Option<&str>, &str, Code)> = vec![
        (
            "admin mTLS, other tenant",
            tls_channel(port, &ca, Some(&admin_cert)).await.unwrap(),
            None,
            "globex",
            Code::PermissionDenied,
        ),
        (
            "admin mTLS, unknown tenant",
            tls_channel(port, &ca, Some(&admin_cert)).await.unwrap(),
            None,
            "ghost",
            Code::PermissionDenied,
        ),
        (
            "token caller mTLS",
            tls_channel(port, &ca, Some(&token_cert)).await.unwrap(),
            None,
            "acme",
            Code::PermissionDenied,
        ),
        (
            "token caller key",
            anonymous.clone(),
            Some(KEY_ALLOWED),
            "acme",
            Code::PermissionDenied,
        ),
        (
            "no identity",
            anonymous.clone(),
            None,
            "acme",
            Code::Unauthenticated,
        ),
        (
            "unknown key",
            anonymous.clone(),
            Some("nope"),
            "acme",
            Code::Unauthenticated,
        ),
    ];
    let mut results = std::collections::HashMap::new();
    for (label, ch, key, tenant, want) in rows {
        let got = call_admin(ch, key, tenant).await;
        assert_row(label, &got, want);
        results.insert(label, got);
    }
    assert_eq!(
        results["admin mTLS, other tenant"],
        results["admin mTLS, unknown tenant"]
    );
}
