//! Restarts on the embedded SQLite store: a process killed mid-refresh does not block the
//! next one for a lease time, a restart does not spend a rotation on a refresh token used
//! minutes ago, a second process on the same file is refused, and the files holding
//! secrets are private to their user.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::clock::ManualClock;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::server::StartOptions;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Waits (real time, bounded) until `cond` holds.
#[allow(clippy::disallowed_methods)] // Polls an outside process on real time.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The refresh leases in the SQLite file that have not expired, read beside the gateway.
async fn live_leases(db: &Path) -> i64 {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_leases WHERE expires_at_ms > \
         CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Times the restarted binary on the real clock.
async fn a_process_killed_mid_refresh_does_not_hold_up_the_next_one() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "kill-secret")]).await;
    // The provider answers after 3 s: the fetch is in flight, under the refresh lease.
    oidc.faults(json!({"delay_ms": 3000})).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "");
    let env = [("IDP_SECRET", "kill-secret")];
    let mut gw = GatewayProcess::start(dir.path(), &cred, &env).await;
    let addr = gw.grpc_addr.clone();
    let pending = tokio::spawn(async move {
        let mut c = TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.get_token(get_token_request("acme", "idp", &[])).await
    });
    wait_until(
        "the fetch reached the provider",
        Duration::from_secs(10),
        || async { oidc.token_requests().await >= 1 },
    )
    .await;
    let db = dir.path().join("authgate.db");
    assert_eq!(live_leases(&db).await, 1, "the fetch holds the lease");

    // kill -9 mid-fetch: the lease stays in the file, unreleased, for 45 s.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    assert!(
        pending.await.unwrap().is_err(),
        "the caller saw the process die"
    );
    assert_eq!(live_leases(&db).await, 1, "a dead process's lease is left");
    oidc.faults(json!({})).await;

    // The restarted process accepts connections: from then on, a fresh token within 2 s.
    let mut gw = GatewayProcess::start(dir.path(), &cred, &env).await;
    let ready = std::time::Instant::now();
    let mut c = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();
    let t = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    let elapsed = ready.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "a fresh token {elapsed:?} after the restart (the dead lease lasts 45 s)"
    );
    println!("fresh token {elapsed:?} after the restarted process accepted connections");
    assert!(oidc.is_active(&t.access_token, "kill-secret").await);
    assert_eq!(oidc.token_requests().await, 2);
    gw.stop();
    assert!(
        gw.log_text().contains("freed refresh leases"),
        "{}",
        gw.log_text()
    );
}

async fn rt_count(oidc: &OidcServer) -> u64 {
    oidc.stats().await["by_grant"]["refresh_token"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_refresh_a_refresh_token_used_minutes_ago() {
    let oidc = OidcServer::start(&[("OIDC_RT_SECRET", "rt-secret-restart")]).await;
    let rt = oidc.mint_refresh_token("openid offline_access read").await;
    let clock = ManualClock::default();
    let opts = || StartOptions {
        clock: std::sync::Arc::new(clock.clone()),
        ..StartOptions::default()
    };
    let config = "[broker]\nkeep_alive_check_seconds = 1\n";
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_with(tmp.path(), config, opts()).await;
    gw.admin()
        .await
        .put_credential(put(
            "acme",
            "user",
            "oauth2",
            json!({
                "token_url": oidc.token_url(), "grant": "refresh_token", "client_id": "rt-client",
                "client_secret": "rt-secret-restart", "refresh_token": rt,
                "refresh_token_idle_seconds": 3600,
            }),
        ))
        .await
        .unwrap();
    gw.client()
        .await
        .get_token(get_token_request("acme", "user", &[]))
        .await
        .unwrap();
    assert_eq!(rt_count(&oidc).await, 1);
    gw.stop().await;

    // Ten minutes later (a sixth of the idle lifetime), a restart: several keep-alive
    // passes run, none refreshes.
    clock.advance(Duration::from_secs(600));
    let mut gw = Gateway::start_with(tmp.path(), config, opts()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rt_count(&oidc).await,
        1,
        "no refresh after the restart: {}",
        oidc.stats().await
    );

    // Control: once two thirds of the idle lifetime (2400 s) have passed since the last
    // use, keep-alive refreshes, exactly once.
    clock.advance(Duration::from_secs(1801));
    wait_until("keep-alive refreshed", Duration::from_secs(5), || async {
        rt_count(&oidc).await >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = oidc.stats().await;
    assert_eq!(stats["by_grant"]["refresh_token"], 2, "{stats}");
    assert_eq!(stats["errors"], 0, "rotation kept in step: {stats}");
    gw.stop().await;
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Waits on real time for the second process to exit.
async fn one_process_per_sqlite_file_and_its_files_are_private() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "lock-secret")]).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "");
    let env = [("IDP_SECRET", "lock-secret")];
    let mut gw = GatewayProcess::start(dir.path(), &cred, &env).await;
    let mut c = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();
    c.get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap();

    // The database (with its WAL, written by now) and the generated key: owner only.
    for f in ["authgate.db", "authgate.db-wal", "authgate.key"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    if dir.path().join("authgate.db-shm").exists() {
        assert_eq!(mode(&dir.path().join("authgate.db-shm")), 0o600, "shm");
    }

    // A second process on the same file (own config and log, same store) is refused.
    let cfg = dir.path().join("second.toml");
    std::fs::write(&cfg, config_text(dir.path(), &cred)).unwrap();
    let log = dir.path().join("second.log");
    let mut second = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .current_dir(dir.path())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second process did not exit within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("PostgreSQL"), "{text}");
    assert!(text.contains("authgate.db.lock"), "{text}");

    // The first process goes on serving.
    c.get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap();
    assert_eq!(oidc.token_requests().await, 1);
    gw.stop();
}
