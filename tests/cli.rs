//! The `authgate` CLI as a user runs it: the real binary as a subprocess against an
//! in-process gateway, with oidc-provider (tests/oidc) or a wiremock token endpoint as the
//! provider. Output is parsed the way scripts would parse it; secrets are canaries that must
//! never appear in what the CLI prints.

// A test harness: it waits on and measures real time, outside any clock the gateway uses.
#![allow(clippy::disallowed_methods)]
// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::clock::ManualClock;
use authgate::server::StartOptions;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// What one CLI run left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "authgate failed: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// The binary with a clean environment for the things it reads: no key, no browser, no
/// display, and the gateway address from `AUTHGATE_ADDR` (the flag is tested separately).
fn authgate(addr: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authgate"));
    c.env("AUTHGATE_ADDR", addr)
        .env_remove("AUTHGATE_API_KEY")
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn finish(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finished within 60 s")
        .expect("the CLI ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn cli(gw: &Gateway, args: &[&str]) -> Run {
    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args(args);
    finish(c).await
}

async fn cli_env(gw: &Gateway, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args(args).envs(env.iter().copied());
    finish(c).await
}

async fn cli_stdin(gw: &Gateway, args: &[&str], input: &str) -> Run {
    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args(args).stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rfc3339(v: &Value) -> prost_types::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .parse()
        .unwrap_or_else(|_| panic!("not RFC 3339: {v}"))
}

/// A token endpoint that answers every POST, after `delay`.
async fn token_endpoint(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay).set_body_json(
            serde_json::json!({"access_token": "tok-wiremock", "token_type": "Bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_get_revoke_and_events_list() {
    let secret = "cc-secret-cli-1";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    let env = env_secret(secret);
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;

    // Default output: the token and a newline, nothing else, so $(authgate token get) works.
    let r = cli(
        &gw,
        &["token", "get", "--tenant", "acme", "--credential", "idp"],
    )
    .await
    .ok();
    let token = r.stdout.strip_suffix('\n').expect("one line");
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{r:#?}"
    );
    assert!(oidc.is_active(token, secret).await);
    assert!(r.stderr.is_empty(), "{r:#?}");

    // --json: the documented fields, expires_at RFC 3339 and in the future.
    let j = cli(
        &gw,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--min-ttl",
            "60",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(j["access_token"], token, "cache hit, same token");
    assert_eq!(j["token_type"], "Bearer");
    assert!(rfc3339(&j["expires_at"]).seconds > now_unix() + 60, "{j}");
    assert_eq!(
        j["scopes"],
        serde_json::json!(["read"]),
        "the default scopes"
    );
    assert!(j["metadata"].is_object(), "{j}");
    let scoped = cli(
        &gw,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--scope",
            "write",
            "--scope",
            "read",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let mut granted: Vec<&str> = scoped["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    granted.sort_unstable();
    assert_eq!(granted, ["read", "write"], "{scoped}");

    // --force-refresh goes upstream again.
    let before = oidc.token_requests().await;
    let fresh = cli(
        &gw,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--force-refresh",
        ],
    )
    .await
    .ok();
    assert_ne!(fresh.stdout.trim(), token);
    assert_eq!(oidc.token_requests().await, before + 1);

    // Revoke drops the cached token; the next get fetches a new one.
    let rv = cli(
        &gw,
        &[
            "token",
            "revoke",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert!(rv["dropped"].as_u64().unwrap() >= 1, "{rv}");
    assert_eq!(rv["upstream_revoked"], 0);
    let human = cli(
        &gw,
        &["token", "revoke", "--tenant", "acme", "--credential", "idp"],
    )
    .await
    .ok();
    assert!(
        human.stdout.contains("acme/idp: dropped 0 cached token(s)"),
        "{human:#?}"
    );
    cli(
        &gw,
        &["token", "get", "--tenant", "acme", "--credential", "idp"],
    )
    .await
    .ok();

    // Events: JSON array, newest first, upstream calls with their HTTP status.
    let all = cli(&gw, &["events", "list", "--tenant", "acme", "--json"])
        .await
        .ok()
        .json();
    let all = all.as_array().expect("array").clone();
    assert!(all.len() >= 6, "{all:#?}");
    let times: Vec<i64> = all
        .iter()
        .map(|e| rfc3339(&e["occurred_at"]).seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let upstream: Vec<&Value> = all
        .iter()
        .filter(|e| e["kind"] == "upstream_call")
        .collect();
    assert!(!upstream.is_empty());
    assert!(
        upstream.iter().all(|e| e["http"]["status"] == 200),
        "{upstream:#?}"
    );
    assert!(all.iter().any(|e| e["kind"] == "token_issued"));
    assert!(all.iter().any(|e| e["kind"] == "revoked"));
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains(secret) && !text.contains(token),
        "events leak a secret"
    );

    // --kind filters; --limit follows pages (forced small) and stops at the limit.
    let only = cli(
        &gw,
        &[
            "events",
            "list",
            "--tenant",
            "acme",
            "--kind",
            "upstream_call",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(only.as_array().unwrap().len(), upstream.len());
    let paged = cli(
        &gw,
        &[
            "events",
            "list",
            "--tenant",
            "acme",
            "--limit",
            "5",
            "--page-size",
            "2",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let ids = |v: &[Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(paged.as_array().unwrap()), ids(&all[..5]));
    let idp = cli(
        &gw,
        &[
            "events",
            "list",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(ids(idp.as_array().unwrap()), ids(&all));
    let other = cli(
        &gw,
        &[
            "events",
            "list",
            "--tenant",
            "acme",
            "--credential",
            "other",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(other, serde_json::json!([]));

    // --since in the future: nothing; an age: everything recent.
    let none = cli(
        &gw,
        &[
            "events",
            "list",
            "--tenant",
            "acme",
            "--since",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(none, serde_json::json!([]));
    let recent = cli(
        &gw,
        &[
            "events", "list", "--tenant", "acme", "--since", "1h", "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(recent.as_array().unwrap().len(), all.len());

    // The table: a header, then one line per event.
    let table = cli(&gw, &["events", "list", "--tenant", "acme", "--limit", "3"])
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{table:#?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "KIND", "CREDENTIAL", "STATUS", "MESSAGE"]);
    let full = cli(&gw, &["events", "list", "--tenant", "acme"]).await.ok();
    assert!(
        full.stdout
            .lines()
            .any(|l| l.contains("upstream_call") && l.contains(" idp ") && l.contains(" 200 ")),
        "{full:#?}"
    );

    let bad = cli(
        &gw,
        &["events", "list", "--tenant", "acme", "--kind", "nope"],
    )
    .await;
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert!(
        bad.stderr.contains("upstream_call"),
        "lists the kinds: {bad:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_put_from_env_and_stdin_get_list_delete() {
    let canary = "canary-cli-secret-5150";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", canary)]).await;
    let gw = Gateway::start("").await;
    let token_url = oidc.token_url();
    let set_url = format!("token_url={token_url}");
    let common_flags = [
        "--provider",
        "oauth2",
        "--set",
        &set_url,
        "--set",
        "client_id=cc-basic",
        "--set",
        "default_lifetime_seconds=600",
        "--set-json",
        r#"scopes=["read"]"#,
    ];

    // Secret from an environment variable named on the command line.
    let mut args = vec![
        "credentials",
        "put",
        "--tenant",
        "acme",
        "--credential",
        "from-env",
        "--json",
    ];
    args.extend(common_flags);
    args.extend(["--secret-env", "client_secret=CLI_TEST_IDP_SECRET"]);
    let put = cli_env(&gw, &args, &[("CLI_TEST_IDP_SECRET", canary)])
        .await
        .ok();
    assert!(
        !put.stdout.contains(canary) && !put.stderr.contains(canary),
        "{put:#?}"
    );
    let put = put.json();
    assert_eq!(put["status"], "ACTIVE");
    assert_eq!(put["source"], "api");
    assert_eq!(
        put["secret_fields_set"],
        serde_json::json!(["client_secret"])
    );

    // Secret from stdin, with the trailing newline `echo` adds.
    let mut args = vec![
        "credentials",
        "put",
        "--tenant",
        "acme",
        "--credential",
        "from-stdin",
    ];
    args.extend(common_flags);
    args.extend(["--secret-stdin", "client_secret"]);
    let human = cli_stdin(&gw, &args, &format!("{canary}\n")).await.ok();
    assert!(
        human
            .stdout
            .contains("acme/from-stdin: stored (provider oauth2, status ACTIVE)"),
        "{human:#?}"
    );

    // Settings from a TOML file; the secret still from the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idp.toml");
    std::fs::write(
        &file,
        format!(
            "token_url = \"{token_url}\"\nclient_id = \"cc-basic\"\nscopes = [\"read\", \"write\"]\n"
        ),
    )
    .unwrap();
    cli_env(
        &gw,
        &[
            "credentials",
            "put",
            "--tenant",
            "acme",
            "--credential",
            "from-file",
            "--provider",
            "oauth2",
            "--settings-file",
            file.to_str().unwrap(),
            "--secret-env",
            "client_secret=CLI_TEST_IDP_SECRET",
        ],
        &[("CLI_TEST_IDP_SECRET", canary)],
    )
    .await
    .ok();

    // Each works: the token is real at the provider.
    for id in ["from-env", "from-stdin", "from-file"] {
        let r = cli(
            &gw,
            &["token", "get", "--tenant", "acme", "--credential", id],
        )
        .await
        .ok();
        assert!(oidc.is_active(r.stdout.trim(), canary).await, "{id}");
    }

    // get --json: typed settings, no secret anywhere (canary).
    let got = cli(
        &gw,
        &[
            "credentials",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "from-env",
            "--json",
        ],
    )
    .await
    .ok();
    assert!(
        !got.stdout.contains(canary),
        "get leaks the secret: {got:#?}"
    );
    let got = got.json();
    assert_eq!(
        got["settings"]["default_lifetime_seconds"], 600,
        "a number: {got}"
    );
    assert_eq!(got["settings"]["scopes"], serde_json::json!(["read"]));
    assert_eq!(got["settings"]["token_url"], token_url.as_str());
    assert!(got["settings"].get("client_secret").is_none(), "{got}");
    assert_eq!(got["tokens"].as_array().unwrap().len(), 1, "{got}");
    rfc3339(&got["updated_at"]);
    let text = cli(
        &gw,
        &[
            "credentials",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "from-file",
        ],
    )
    .await
    .ok();
    assert!(!text.stdout.contains(canary), "{text:#?}");
    assert!(
        text.stdout.contains("status:") && text.stdout.contains("ACTIVE"),
        "{text:#?}"
    );
    assert!(
        text.stdout.contains("\"write\""),
        "settings shown: {text:#?}"
    );

    // list: JSON and table, ordered by id.
    let list = cli(&gw, &["credentials", "list", "--tenant", "acme", "--json"])
        .await
        .ok()
        .json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["credential_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["from-env", "from-file", "from-stdin"]);
    let table = cli(&gw, &["credentials", "list", "--tenant", "acme"])
        .await
        .ok();
    assert_eq!(table.stdout.lines().count(), 4, "{table:#?}");
    assert!(table.stdout.starts_with("ID "), "{table:#?}");
    assert!(!table.stdout.contains(canary));

    // A secret on the command line is refused before anything is sent, and not echoed.
    let r = cli(
        &gw,
        &[
            "credentials",
            "put",
            "--tenant",
            "acme",
            "--credential",
            "argv",
            "--provider",
            "oauth2",
            "--set",
            "client_secret=argv-canary-99",
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stderr.contains("--secret-env client_secret="), "{r:#?}");
    assert!(!r.stderr.contains("argv-canary-99"), "{r:#?}");
    let r = cli_env(
        &gw,
        &[
            "credentials",
            "put",
            "--tenant",
            "acme",
            "--credential",
            "x",
            "--provider",
            "oauth2",
            "--secret-env",
            "client_secret=CLI_TEST_UNSET_VARIABLE",
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 2, "{r:#?}");
    // The plugin's validation error comes back as INVALID_ARGUMENT, exit 1.
    let r = cli(
        &gw,
        &[
            "credentials",
            "put",
            "--tenant",
            "acme",
            "--credential",
            "x",
            "--provider",
            "oauth2",
            "--set",
            &set_url,
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("INVALID_ARGUMENT") && r.stderr.contains("client_id"),
        "{r:#?}"
    );

    // delete, then token get: NOT_FOUND, exit 1.
    let del = cli(
        &gw,
        &[
            "credentials",
            "delete",
            "--tenant",
            "acme",
            "--credential",
            "from-env",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(del["deleted"], true);
    let r = cli(
        &gw,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "from-env",
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.is_empty(), "{r:#?}");
    assert!(r.stderr.starts_with("error: NOT_FOUND: "), "{r:#?}");
    let r = cli(
        &gw,
        &[
            "credentials",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "from-env",
        ],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("NOT_FOUND"), "{r:#?}");
    let human = cli(
        &gw,
        &[
            "credentials",
            "delete",
            "--tenant",
            "acme",
            "--credential",
            "from-file",
        ],
    )
    .await
    .ok();
    assert!(
        human.stdout.contains("acme/from-file: deleted"),
        "{human:#?}"
    );
    let again = cli(
        &gw,
        &[
            "credentials",
            "delete",
            "--tenant",
            "acme",
            "--credential",
            "from-file",
        ],
    )
    .await;
    assert_eq!(again.code, 1, "{again:#?}");
    assert!(again.stderr.contains("NOT_FOUND"), "{again:#?}");
    let empty = cli(&gw, &["credentials", "list", "--tenant", "globex"])
        .await
        .ok();
    assert!(empty.stdout.is_empty(), "{empty:#?}");
    assert!(empty.stderr.contains("no credentials"), "{empty:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_from_the_environment_only() {
    let provider = token_endpoint(Duration::ZERO).await;
    let env = env_secret("wiremock-secret");
    let key = "cli-api-key-0123456789";
    let cfg = format!(
        "[[callers]]\nname = \"cli\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\", \"events\", \"admin\"]\n\n{}",
        sha256_hex(key),
        cc_credential("acme", "idp", &format!("{}/token", provider.uri()), &env, "")
    );
    let gw = Gateway::start(&cfg).await;
    let get = ["token", "get", "--tenant", "acme", "--credential", "idp"];

    let r = cli_env(&gw, &get, &[("AUTHGATE_API_KEY", key)]).await.ok();
    assert_eq!(r.stdout, "tok-wiremock\n");
    // --api-key-env names the variable; the key itself never is a flag value.
    let mut named = get.to_vec();
    named.extend(["--api-key-env", "MY_GATEWAY_KEY"]);
    cli_env(&gw, &named, &[("MY_GATEWAY_KEY", key)]).await.ok();
    let r = cli_env(&gw, &named, &[]).await;
    assert_eq!(r.code, 2, "unset variable is a usage error: {r:#?}");
    assert!(r.stderr.contains("MY_GATEWAY_KEY"), "{r:#?}");

    let r = cli(&gw, &get).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.starts_with("error: UNAUTHENTICATED: "), "{r:#?}");
    assert!(r.stderr.contains("AUTHGATE_API_KEY"), "hint: {r:#?}");

    let wrong = "wrong-key-canary-31337";
    let r = cli_env(&gw, &get, &[("AUTHGATE_API_KEY", wrong)]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("UNAUTHENTICATED") && r.stderr.contains("unknown API key"),
        "{r:#?}"
    );
    assert!(
        !r.stderr.contains(wrong),
        "the key is never printed: {r:#?}"
    );

    // The same key reaches CredentialService and ListEvents; a foreign tenant is refused.
    cli_env(
        &gw,
        &["credentials", "list", "--tenant", "acme"],
        &[("AUTHGATE_API_KEY", key)],
    )
    .await
    .ok();
    cli_env(
        &gw,
        &["events", "list", "--tenant", "acme"],
        &[("AUTHGATE_API_KEY", key)],
    )
    .await
    .ok();
    let r = cli_env(
        &gw,
        &["token", "get", "--tenant", "globex", "--credential", "idp"],
        &[("AUTHGATE_API_KEY", key)],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("PERMISSION_DENIED"), "{r:#?}");
}

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "authgate CLI test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM): a server certificate for localhost / 127.0.0.1, or a client
    /// certificate with one SPIFFE URI SAN.
    fn leaf(&self, server: bool, uri: Option<&str>) -> (String, String) {
        let dns = if server {
            vec!["localhost".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(dns).unwrap();
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        if let Some(u) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_ca_cert_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    let (server_cert, server_key) = pki.leaf(true, None);
    let (client_cert, client_key) = pki.leaf(false, Some("spiffe://example.org/ns/ops/sa/cli"));
    let provider = token_endpoint(Duration::ZERO).await;
    let env = env_secret("wiremock-secret");
    let cfg = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n\
         [[callers]]\nname = \"cli\"\nspiffe_id = \"spiffe://example.org/ns/ops/sa/cli\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n\n{}",
        write(d, "server.pem", &server_cert),
        write(d, "server.key", &server_key),
        write(d, "ca.pem", &pki.ca_pem),
        cc_credential("acme", "idp", &format!("{}/token", provider.uri()), &env, "")
    );
    let gw = Gateway::start(&cfg).await;
    let ca = write(d, "ca-for-cli.pem", &pki.ca_pem);
    let cert = write(d, "client.pem", &client_cert);
    let key = write(d, "client.key", &client_key);
    let addr = format!("https://127.0.0.1:{}", gw.addr().port());
    let get = ["token", "get", "--tenant", "acme", "--credential", "idp"];

    let mut args = get.to_vec();
    args.extend([
        "--addr",
        &addr,
        "--ca-file",
        &ca,
        "--cert-file",
        &cert,
        "--key-file",
        &key,
    ]);
    let r = cli(&gw, &args).await.ok();
    assert_eq!(r.stdout, "tok-wiremock\n");

    // Connection flags also go before the subcommand.
    let r = cli(
        &gw,
        &[
            "token",
            "--addr",
            &addr,
            "--ca-file",
            &ca,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "get",
            "--tenant",
            "acme",
            "--credential",
            "idp",
            "--json",
        ],
    )
    .await
    .ok();
    assert_eq!(r.json()["access_token"], "tok-wiremock");

    // No client certificate where only mTLS callers exist: the gateway closes the
    // connection after the handshake; the CLI says what is probably missing.
    let mut args = get.to_vec();
    args.extend(["--addr", &addr, "--ca-file", &ca]);
    let r = cli(&gw, &args).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("--cert-file"), "{r:#?}");
    // Without --ca-file the private CA is unknown: a certificate error, and a hint.
    let mut args = get.to_vec();
    args.extend(["--addr", &addr, "--cert-file", &cert, "--key-file", &key]);
    let r = cli(&gw, &args).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("--ca-file"), "{r:#?}");

    // Half an identity, or TLS files with a plaintext address: usage errors.
    let mut args = get.to_vec();
    args.extend(["--addr", &addr, "--ca-file", &ca, "--cert-file", &cert]);
    assert_eq!(cli(&gw, &args).await.code, 2);
    let mut args = get.to_vec();
    args.extend(["--ca-file", &ca]);
    let r = cli(&gw, &args).await;
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stderr.contains("https://"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_usage_deadlines_and_unreachable_gateways() {
    let slow = token_endpoint(Duration::from_secs(4)).await;
    let env = env_secret("wiremock-secret");
    let gw = Gateway::start(&cc_credential(
        "acme",
        "slow",
        &format!("{}/token", slow.uri()),
        &env,
        "",
    ))
    .await;

    // --timeout is the gRPC deadline: the gateway answers DEADLINE_EXCEEDED in time.
    let t = Instant::now();
    let r = cli(
        &gw,
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "slow",
            "--timeout",
            "300ms",
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("DEADLINE_EXCEEDED"), "{r:#?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Unknown credential.
    let r = cli(
        &gw,
        &["token", "get", "--tenant", "acme", "--credential", "nope"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: NOT_FOUND: "), "{r:#?}");
    // Invalid ids come back from the gateway as INVALID_ARGUMENT.
    let r = cli(&gw, &["token", "get", "--tenant", "", "--credential", "x"]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("INVALID_ARGUMENT"), "{r:#?}");

    // Usage errors: clap's exit code 2.
    for args in [
        &["token", "get", "--tenant", "acme"][..],
        &[
            "token",
            "get",
            "--tenant",
            "acme",
            "--credential",
            "x",
            "--timeout",
            "soon",
        ],
        &["events", "list", "--tenant", "acme", "--since", "yesterday"],
        &["events", "list", "--tenant", "acme", "--limit", "0"],
        &[
            "credentials",
            "put",
            "--tenant",
            "a",
            "--credential",
            "b",
            "--provider",
            "oauth2",
            "--set",
            "novalue",
        ],
        &["frobnicate"],
    ] {
        let r = cli(&gw, args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(!r.stderr.contains("panicked"), "{r:#?}");
    }

    // Nothing listening: a clear message, exit 1, via the flag and without a scheme.
    let port = free_port();
    let mut c = authgate("http://127.0.0.1:1");
    c.args([
        "events",
        "list",
        "--tenant",
        "acme",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "2s",
    ]);
    let r = finish(c).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr
            .contains("cannot reach the gateway at http://127.0.0.1:"),
        "{r:#?}"
    );

    // The serve side is untouched.
    let r = finish({
        let mut c = authgate("");
        c.args(["check-config", "--config", "/nonexistent/authgate.toml"]);
        c
    })
    .await;
    assert_ne!(r.code, 0);
}

/// A gateway, and oidc-provider accepting the gateway's callback for `rt-client`; the
/// credential `acme/user` put through the CLI, waiting for authorization.
async fn code_flow(opts: StartOptions) -> (Gateway, OidcServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(dir.path(), "", opts).await;
    let redirect = format!("http://{}/oauth/callback", gw.http_addr());
    let oidc = OidcServer::start(&[
        ("OIDC_RT_SECRET", "rt-secret-cli"),
        ("OIDC_REDIRECT_URIS", redirect.as_str()),
    ])
    .await;
    let put = cli_env(
        &gw,
        &[
            "credentials",
            "put",
            "--tenant",
            "acme",
            "--credential",
            "user",
            "--provider",
            "oauth2",
            "--set",
            &format!("issuer={}", oidc.issuer),
            "--set",
            "grant=authorization_code",
            "--set",
            "client_id=rt-client",
            "--set-json",
            r#"scopes=["openid","offline_access","read"]"#,
            "--secret-env",
            "client_secret=CLI_RT_SECRET",
            "--json",
        ],
        &[("CLI_RT_SECRET", "rt-secret-cli")],
    )
    .await
    .ok()
    .json();
    assert_eq!(put["status"], "NEEDS_AUTHORIZATION", "{put}");
    (gw, oidc, dir)
}

/// `authgate authorize --json --no-browser` started, and its first line (StartAuthorization).
async fn start_authorize(
    gw: &Gateway,
) -> (
    tokio::process::Child,
    BufReader<tokio::process::ChildStdout>,
    Value,
) {
    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args([
        "authorize",
        "--tenant",
        "acme",
        "--credential",
        "user",
        "--no-browser",
        "--json",
    ]);
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
        .await
        .expect("first line within 30 s")
        .unwrap();
    let started: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("first line is JSON ({e}): {line:?}"));
    (child, out, started)
}

async fn exit_of(
    mut child: tokio::process::Child,
    mut out: BufReader<tokio::process::ChildStdout>,
) -> Run {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("authorize exits within 30 s")
        .unwrap();
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).await.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_returns_once_the_browser_flow_made_the_credential_active() {
    let (gw, oidc, _dir) = code_flow(StartOptions::default()).await;
    let (child, out, started) = start_authorize(&gw).await;
    let url = started["authorization_url"].as_str().unwrap().to_owned();
    assert_eq!(
        started["redirect_uri"],
        format!("http://{}/oauth/callback", gw.http_addr())
    );
    assert!(rfc3339(&started["expires_at"]).seconds > now_unix());
    assert!(url.starts_with(&oidc.issuer), "{url}");

    // The "browser": login and consent at the provider, then the redirect to the gateway.
    tokio::time::sleep(Duration::from_millis(1500)).await; // at least one poll while waiting
    let callback = login_and_consent(&oidc.issuer, &url).await;
    let page = reqwest::get(&callback).await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());

    let r = exit_of(child, out).await;
    assert_eq!(r.code, 0, "{r:#?}");
    let done: Value = serde_json::from_str(r.stdout.trim()).expect("final credential line");
    assert_eq!(done["status"], "ACTIVE", "{done}");
    assert_eq!(done["has_refresh_token"], true, "{done}");
    assert!(
        r.stderr.contains(&url),
        "the URL is printed for the human: {r:#?}"
    );
    assert!(!r.stderr.contains("opened with"), "--no-browser: {r:#?}");
    assert!(!r.stdout.contains("rt-secret-cli") && !r.stderr.contains("rt-secret-cli"));

    // And the credential serves tokens now.
    let t = cli(
        &gw,
        &["token", "get", "--tenant", "acme", "--credential", "user"],
    )
    .await
    .ok();
    assert!(!t.stdout.trim().is_empty());

    // Human mode on an already ACTIVE credential waits for a new authorization, and says
    // where to go on stderr while stdout stays empty.
    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args([
        "authorize",
        "--tenant",
        "acme",
        "--credential",
        "user",
        "--no-browser",
    ]);
    let mut child = c.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting: ACTIVE before the start does not count"
    );
    #[cfg(unix)]
    {
        // Ctrl-C: exit 130 with a note; nothing on stdout.
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(130), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(
            stderr.contains("https://") || stderr.contains("http://"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_exits_3_when_the_request_expires() {
    // The gateway's clock runs 20 minutes behind: its authorization requests expire (10 min)
    // before they are issued, as far as the CLI's wall clock is concerned.
    let clock = ManualClock::default();
    clock.set((now_unix() - 1200) * 1000);
    let opts = StartOptions {
        clock: std::sync::Arc::new(clock),
        ..StartOptions::default()
    };
    let (gw, _oidc, _dir) = code_flow(opts).await;
    let (child, out, started) = start_authorize(&gw).await;
    assert!(rfc3339(&started["expires_at"]).seconds < now_unix());
    let r = exit_of(child, out).await;
    assert_eq!(r.code, 3, "{r:#?}");
    assert!(r.stderr.contains("expired"), "{r:#?}");
    assert!(
        r.stderr
            .contains("authgate authorize --tenant acme --credential user"),
        "says how to retry: {r:#?}"
    );
}

/// The next line of a `--follow` run, within 15 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("a line within 15 s")
        .unwrap()
        .expect("the CLI is still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_the_last_events_then_new_ones() {
    let secret = "cc-secret-cli-follow";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    let env = env_secret(secret);
    let gw = Gateway::start(&cc_credential("acme", "idp", &oidc.token_url(), &env, "")).await;
    let mut client = gw.client().await;
    let refresh = authgate::proto::v1::GetTokenRequest {
        force_refresh: true,
        ..get_token_request("acme", "idp", &[])
    };
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let t = client.get_token(refresh.clone()).await.unwrap();
        tokens.push(t.into_inner().access_token);
    }

    let mut c = authgate(&format!("http://{}", gw.addr()));
    c.args([
        "events",
        "list",
        "--tenant",
        "acme",
        "--follow",
        "--json",
        "--limit",
        "2",
        "--timeout",
        "1s",
    ]);
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The last two events, oldest first.
    let (a, b) = (next_line(&mut lines).await, next_line(&mut lines).await);
    let id = |v: &Value| v["id"].as_str().unwrap().parse::<i64>().unwrap();
    assert!(id(&a) < id(&b), "{a} {b}");
    // Then a new token's events, as they happen, also after the 1 s call timeout (it bounds
    // the time to the stream's headers, not the stream).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t = client.get_token(refresh.clone()).await.unwrap();
    tokens.push(t.into_inner().access_token);
    let (c1, c2) = (next_line(&mut lines).await, next_line(&mut lines).await);
    assert_eq!(id(&c1), id(&b) + 1, "{c1}");
    assert_eq!(id(&c2), id(&b) + 2, "{c2}");
    assert_eq!(c2["kind"], "token_issued", "{c2}");
    let text = format!("{a}{b}{c1}{c2}");
    for canary in tokens.iter().map(String::as_str).chain([secret]) {
        assert!(!text.contains(canary), "a secret was printed: {text}");
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn webhooks_create_from_env_and_stdin_list_delete() {
    const SECRET: &str = "whsec_canarycanarycanarycanarycanarycanary";
    let gw = Gateway::start("").await;
    let made = cli_env(
        &gw,
        &[
            "webhooks",
            "create",
            "--tenant",
            "acme",
            "--id",
            "ops",
            "--url",
            "http://127.0.0.1:9/hooks",
            "--event",
            "credential.status_changed",
            "--event",
            "credential.deleted",
            "--secret-env",
            "HOOK_SECRET",
            "--json",
        ],
        &[("HOOK_SECRET", SECRET)],
    )
    .await
    .ok();
    assert_eq!(
        made.json()["events"],
        serde_json::json!(["credential.deleted", "credential.status_changed"])
    );
    cli_stdin(
        &gw,
        &[
            "webhooks",
            "create",
            "--tenant",
            "acme",
            "--id",
            "all",
            "--url",
            "http://127.0.0.1:9/all",
            "--event",
            "*",
            "--secret-stdin",
        ],
        &format!("{SECRET}\n"),
    )
    .await
    .ok();
    let list = cli(&gw, &["webhooks", "list", "--tenant", "acme", "--json"])
        .await
        .ok();
    let listed = list.json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["all", "ops"]);
    let table = cli(&gw, &["webhooks", "list", "--tenant", "acme"])
        .await
        .ok();
    assert!(
        table.stdout.contains("ops") && table.stdout.contains("api"),
        "{table:?}"
    );

    // No secret on the command line, and a bad one is refused without being shown.
    let missing = cli(
        &gw,
        &[
            "webhooks",
            "create",
            "--tenant",
            "acme",
            "--id",
            "x",
            "--url",
            "http://127.0.0.1:9/x",
            "--event",
            "*",
        ],
    )
    .await;
    assert_eq!(missing.code, 2, "{missing:?}");
    let bad = cli_env(
        &gw,
        &[
            "webhooks",
            "create",
            "--tenant",
            "acme",
            "--id",
            "x",
            "--url",
            "http://127.0.0.1:9/x",
            "--event",
            "*",
            "--secret-env",
            "HOOK_SECRET",
        ],
        &[("HOOK_SECRET", "not-whsec-canary")],
    )
    .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("INVALID_ARGUMENT") && bad.stderr.contains("secret"),
        "{bad:?}"
    );
    for run in [&made, &list, &table, &bad] {
        assert!(
            !run.stdout.contains("canary") && !run.stderr.contains("canary"),
            "{run:?}"
        );
    }

    let gone = cli(
        &gw,
        &[
            "webhooks", "delete", "--tenant", "acme", "--id", "ops", "--json",
        ],
    )
    .await
    .ok();
    assert_eq!(gone.json()["deleted"], true);
    let again = cli(
        &gw,
        &["webhooks", "delete", "--tenant", "acme", "--id", "ops"],
    )
    .await
    .ok();
    assert!(again.stdout.contains("nothing deleted"), "{again:?}");
}
