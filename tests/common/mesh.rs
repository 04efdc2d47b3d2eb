//! The parts of the mesh end-to-end tests shared by the tonic-client test (e2e_mesh), the
//! real-Envoy test (e2e_envoy) and the forward-auth tests (e2e_forward_auth): a wiremock
//! token endpoint with one behaviour per credential, and a gateway with the proxies'
//! callers (Envoy, a trusted proxy and its workloads, a forward-auth proxy) and
//! `[[mesh.routes]]` entries.

use super::{cc_credential, env_secret, Gateway};
use sha2::{Digest, Sha256};
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long the `slow` credential's token endpoint takes: longer than any Check deadline
/// the tests use.
pub const SLOW_FETCH: Duration = Duration::from_millis(1500);

pub const ENVOY_KEY: &str = "envoy-test-key";
pub const AUDITOR_KEY: &str = "auditor-test-key";
/// The forward-auth proxy's (nginx, Caddy) API key.
pub const EDGE_KEY: &str = "edge-proxy-test-key";
/// A trusted proxy's key; its workloads are these SPIFFE ids.
pub const TRUSTED_KEY: &str = "trusted-envoy-test-key";
pub const BILLING_ID: &str = "spiffe://example.org/ns/billing/sa/api";
pub const REPORTING_ID: &str = "spiffe://example.org/ns/reporting/sa/job";
pub const AUDIT_ID: &str = "spiffe://example.org/ns/audit/sa/reader";
/// Every credential's client secret: a canary no log, event or reply may contain.
pub const CLIENT_SECRET: &str = "client-secret-canary-5d1e";
/// The `short` credential's tokens live this long (its refresh window is then 0.2 to 0.6 s
/// before expiry).
pub const SHORT_LIFETIME_S: u64 = 2;

pub fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn token_body(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": token, "token_type": "Bearer", "expires_in": 3600
    }))
}

/// A new token on every call (`tok-short-1`, `tok-short-2`, ...), valid for
/// [`SHORT_LIFETIME_S`].
struct Counting(std::sync::atomic::AtomicUsize);

impl wiremock::Respond for Counting {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = 1 + self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("tok-short-{n}"), "token_type": "Bearer",
            "expires_in": SHORT_LIFETIME_S
        }))
    }
}

/// The token endpoint: one path per credential, each with its own behaviour.
pub async fn provider() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token/short"))
        .respond_with(Counting(Default::default()))
        .mount(&server)
        .await;
    for (p, resp) in [
        ("/idp", token_body("tok-idp-canary")),
        ("/key", token_body("tok-key-canary")),
        ("/beta", token_body("tok-beta-canary")),
        ("/slow", token_body("tok-slow-canary").set_delay(SLOW_FETCH)),
        ("/down", ResponseTemplate::new(503)),
        (
            "/rejected",
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path(format!("/token{p}")))
            .respond_with(resp)
            .mount(&server)
            .await;
    }
    server
}

pub const TOKENS: [&str; 5] = [
    "tok-idp-canary",
    "tok-key-canary",
    "tok-beta-canary",
    "tok-slow-canary",
    "tok-rejected-canary",
];

pub async fn gateway(server: &MockServer) -> Gateway {
    let env = env_secret(CLIENT_SECRET);
    let mut cfg = format!(
        "[broker]\nbackoff_initial_ms = 20\nbackoff_max_seconds = 1\n\n\
[[callers]]\nname = \"envoy\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n\n\
[[callers]]\nname = \"auditor\"\napi_key_sha256 = \"{}\"\ntenants = [\"*\"]\nroles = [\"events\"]\n\n\
[[callers]]\nname = \"edge\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n\n\
[[callers]]\nname = \"mesh-envoy\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\ntrusted_proxy = true\n\n\
[[callers]]\nname = \"billing\"\nspiffe_id = \"{BILLING_ID}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n\n\
[[callers]]\nname = \"reporting\"\nspiffe_id = \"{REPORTING_ID}\"\ntenants = [\"beta\"]\nroles = [\"token\"]\n\n\
[[callers]]\nname = \"audit\"\nspiffe_id = \"{AUDIT_ID}\"\ntenants = [\"*\"]\nroles = [\"events\"]\n\n\
[[mesh.routes]]\nhost = \"keyed.example.com\"\npath_prefix = \"/v1/\"\ntenant = \"acme\"\ncredential_id = \"key\"\nheader = \"x-api-key\"\nformat = \"{{token}}\"\nremove_headers = [\"x-client-key\"]\n\n\
[[mesh.routes]]\nhost = \"api.crm.example.com\"\ntenant = \"acme\"\ncredential_id = \"idp\"\nscopes = [\"read\"]\n\n\
[[mesh.routes]]\nhost = \"slow.example.com\"\ntenant = \"acme\"\ncredential_id = \"slow\"\n\n",
        digest(ENVOY_KEY),
        digest(AUDITOR_KEY),
        digest(EDGE_KEY),
        digest(TRUSTED_KEY),
    );
    for (tenant, id) in [
        ("acme", "idp"),
        ("acme", "key"),
        ("acme", "slow"),
        ("acme", "down"),
        ("acme", "rejected"),
        ("acme", "short"),
        ("beta", "beta"),
    ] {
        let url = format!("{}/token/{id}", server.uri());
        cfg.push_str(&cc_credential(tenant, id, &url, &env, ""));
    }
    Gateway::start(&cfg).await
}
