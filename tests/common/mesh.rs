//! The parts of the mesh end-to-end tests shared by the tonic-client test (e2e_mesh) and
//! the real-Envoy test (e2e_envoy): a wiremock token endpoint with one behaviour per
//! credential, and a gateway with the proxy's caller and a `[[mesh.routes]]` entry.

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

/// The token endpoint: one path per credential, each with its own behaviour.
pub async fn provider() -> MockServer {
    let server = MockServer::start().await;
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
    let env = env_secret("s");
    let mut cfg = format!(
        "[broker]\nbackoff_initial_ms = 20\nbackoff_max_seconds = 1\n\n\
[[callers]]\nname = \"envoy\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n\n\
[[callers]]\nname = \"auditor\"\napi_key_sha256 = \"{}\"\ntenants = [\"*\"]\nroles = [\"events\"]\n\n\
[[mesh.routes]]\nhost = \"keyed.example.com\"\npath_prefix = \"/v1/\"\ntenant = \"acme\"\ncredential_id = \"key\"\nheader = \"x-api-key\"\nformat = \"{{token}}\"\nremove_headers = [\"x-client-key\"]\n\n",
        digest(ENVOY_KEY),
        digest(AUDITOR_KEY)
    );
    for (tenant, id) in [
        ("acme", "idp"),
        ("acme", "key"),
        ("acme", "slow"),
        ("acme", "down"),
        ("acme", "rejected"),
        ("beta", "beta"),
    ] {
        let url = format!("{}/token/{id}", server.uri());
        cfg.push_str(&cc_credential(tenant, id, &url, &env, ""));
    }
    Gateway::start(&cfg).await
}
