//! `/metrics` as Prometheus sees it: a real gateway against oidc-provider, scraped after
//! a miss, hits, a failure and a rejected call, by a real Prometheus server (Debian's
//! package) that loads the alert rules in docs/prometheus/ and evaluates them without
//! error; the rules also pass `promtool check rules` and their unit tests; every metric the
//! Grafana dashboard and the alerts use exists, every metric is in the README's table, and
//! no secret or token is in the text.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// promtool from Debian's `prometheus` package (unpacked by `.ci/run`), or `$PROMTOOL`;
/// the `prometheus` server binary is beside it. Outside CI a machine without them skips
/// the Prometheus checks, not the rest.
fn promtool() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PROMTOOL").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/promtool")),
        Some(PathBuf::from("/opt/prometheus/usr/bin/promtool")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI (.ci/run installs Debian's prometheus package)"
        );
        eprintln!("promtool not found: skipping the promtool checks");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Metric family names in an exposition (from its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The sample value of the first line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().last())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One scenario, then each check of the exposition.
async fn metrics_cover_hits_misses_failures_and_pass_promtool() {
    let secret = "metrics-canary-secret-7b1d";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    let env = env_secret(secret);
    // A plugin too, so its families (which the alert rules use) are exposed.
    let plugin = example_plugin();
    let gw = Gateway::start(
        &(plugin_entry("example_ticket", &plugin, &digest(&plugin), "")
            + &cc_credential("acme", "idp", &oidc.token_url(), &env, "")
            + &cc_credential(
                "acme",
                "wrong",
                &oidc.token_url(),
                &env_secret("not-the-secret"),
                "",
            )),
    )
    .await;
    let mut c = gw.client().await;
    let first = c
        .get_token(get_token_request("acme", "idp", &["read"]))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..5 {
        c.get_token(get_token_request("acme", "idp", &["read"]))
            .await
            .unwrap();
    }
    let rejected = c
        .get_token(get_token_request("acme", "wrong", &["read"]))
        .await
        .unwrap_err();
    assert_eq!(
        rejected.code(),
        tonic::Code::FailedPrecondition,
        "{rejected:?}"
    );
    let unknown = c
        .get_token(get_token_request("acme", "nope", &[]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let resp = reqwest::get(format!("http://{}/metrics", gw.http_addr()))
        .await
        .unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();

    // What happened, as counted.
    assert_eq!(sample(&text, "authgate_cache_hits_total "), 5.0);
    let hist = "authgate_get_token_duration_seconds_count";
    assert_eq!(sample(&text, &format!("{hist}{{outcome=\"hit\"")), 5.0);
    assert_eq!(sample(&text, &format!("{hist}{{outcome=\"miss\"")), 1.0);
    assert_eq!(sample(&text, &format!("{hist}{{outcome=\"error\"")), 2.0);
    let rpc = "authgate_grpc_request_duration_seconds_count{method=\"/authgate.v1.TokenService/GetToken\"";
    assert_eq!(sample(&text, &format!("{rpc},code=\"OK\"")), 6.0);
    assert_eq!(sample(&text, &format!("{rpc},code=\"NOT_FOUND\"")), 1.0);
    assert_eq!(
        sample(&text, &format!("{rpc},code=\"FAILED_PRECONDITION\"")),
        1.0
    );
    let upstream =
        "authgate_upstream_request_duration_seconds_count{provider=\"oauth2\",step=\"token\"";
    assert_eq!(
        sample(&text, &format!("{upstream},status_class=\"2xx\"")),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("{upstream},status_class=\"4xx\"")),
        1.0
    );
    assert_eq!(
        sample(&text, "authgate_credentials{status=\"ACTIVE\"} "),
        1.0
    );
    assert_eq!(
        sample(&text, "authgate_credentials{status=\"INVALID\"} "),
        1.0
    );
    assert_eq!(sample(&text, "authgate_cached_tokens "), 1.0);
    assert!(
        !text.contains("tenant=\"acme\""),
        "no per-credential labels by default"
    );
    // No secret, no token.
    for canary in [secret, first.access_token.as_str(), "not-the-secret"] {
        assert!(!text.contains(canary), "{canary} in /metrics");
    }

    // The docs name only metrics that exist, and the README documents every one.
    let have = families(&text);
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for name in &have {
        assert!(
            readme.contains(&format!("`{name}")),
            "README's metrics table misses {name}"
        );
    }
    let used = |file: &str| -> BTreeSet<String> {
        let body = std::fs::read_to_string(root.join(file)).unwrap();
        let mut names = BTreeSet::new();
        for (i, _) in body.match_indices("authgate_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
        names
    };
    let exposed = |name: &str| {
        have.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
        })
    };
    for file in ["docs/prometheus/alerts.yml", "docs/grafana/authgate.json"] {
        for name in used(file) {
            assert!(
                exposed(&name),
                "{file} uses {name}, which /metrics does not have"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/grafana/authgate.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 6));

    // Prometheus's own checks.
    let Some(promtool) = promtool() else {
        return;
    };
    scraped_by_prometheus(&promtool, gw.http_addr()).await;
    run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root.join("docs/prometheus/alerts.yml")));
    run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(root.join("tests/prometheus/alerts_test.yml")));
}

/// Runs the Prometheus server beside `promtool` against the gateway's HTTP port (scraped
/// every second, the alert rules loaded), then asks it what it scraped.
#[allow(clippy::disallowed_methods)] // Waits on the real clock for a real server.
async fn scraped_by_prometheus(promtool: &std::path::Path, http: std::net::SocketAddr) {
    let server = promtool.with_file_name("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let rules = repo_root().join("docs/prometheus/alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: authgate\n    static_configs:\n      - targets: ['{http}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(&server)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: &'static str| prom_value(&api, q);
    let started = std::time::Instant::now();
    let hits = loop {
        if let Some(v) = query("authgate_cache_hits_total").await {
            break v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "Prometheus did not scrape the gateway within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(hits, 5.0);
    assert_eq!(
        query(r#"authgate_get_token_duration_seconds_count{outcome="hit"}"#).await,
        Some(5.0)
    );
    assert_eq!(
        query(r#"authgate_credentials{status="INVALID"}"#).await,
        Some(1.0)
    );
    assert_eq!(query(r#"up{job="authgate"}"#).await, Some(1.0));
    // Every rule evaluated against the scraped series without error.
    let rules: serde_json::Value = loop {
        let v: serde_json::Value = reqwest::get(format!("{api}/rules"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all: Vec<_> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        // Once the INVALID credential's alert is pending (it fires after `for: 5m`), every
        // rule has been evaluated against scraped series.
        let pending = all
            .iter()
            .any(|r| r["name"] == "AuthgateCredentialInvalid" && r["state"] == "pending");
        if pending {
            break serde_json::Value::Array(all);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "rules not evaluated: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    for rule in rules.as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let _ = child.kill().await;
}

/// The first sample of an instant query, if there is one yet.
async fn prom_value(api: &str, q: &str) -> Option<f64> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{api}/query"))
        .query(&[("query", q)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
}
