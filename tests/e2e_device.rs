//! End to end against oidc-provider with `features.deviceFlow` (tests/oidc/server.mjs): the
//! device authorization grant (RFC 8628) driven through `authgate authorize`, the user code
//! approved through the server's own pages (code form with its xsrf token, confirmation,
//! login, consent), `slow_down` honoured, the refresh token stored and used; denial,
//! replacement, deletion and expiry end the poll with a clear status. No device code,
//! access or refresh token in events or in the gateway's log.

// Each test reads as one scenario, top to bottom; long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::credential_service_client::CredentialServiceClient;
use authgate::proto::v1::{
    CredentialStatus, DeleteCredentialRequest, EventKind, GetCredentialRequest, ListEventsRequest,
    StartAuthorizationRequest,
};
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tonic::transport::Channel;

/// The device-flow credential's settings for one of the server's device clients.
fn device_settings(oidc: &OidcServer, client_id: &str, secret: Option<&str>) -> Value {
    let mut s = json!({
        "issuer": oidc.issuer,
        "grant": "device_code",
        "client_id": client_id,
        "client_auth": if secret.is_some() { "basic" } else { "none" },
        "scopes": ["openid", "offline_access", "read"],
    });
    if let Some(secret) = secret {
        s["client_secret"] = secret.into();
    }
    s
}

async fn device_polls(oidc: &OidcServer) -> Value {
    reqwest::get(format!("{}/test/device/polls", oidc.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn device_faults(oidc: &OidcServer, slow_down: u32) {
    let r = reqwest::Client::new()
        .post(format!("{}/test/device/faults", oidc.issuer))
        .json(&json!({ "slow_down": slow_down }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// The value of the hidden form field `name` in an HTML page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no `{name}` field in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

/// A browser at the provider: one cookie jar, redirects followed by hand.
struct Browser {
    http: reqwest::Client,
    issuer: String,
    jar: HashMap<String, String>,
}

impl Browser {
    fn new(issuer: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            issuer: issuer.to_owned(),
            jar: HashMap::new(),
        }
    }

    /// GET (no form) or POST a form; returns the status, the Location and the page.
    async fn send(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> (u16, String, String) {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.issuer)
        } else {
            url.to_owned()
        };
        let cookie = self
            .jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = match form {
            Some(f) => self.http.post(&url).form(f),
            None => self.http.get(&url),
        };
        let resp = req.header("cookie", cookie).send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let kv = c.to_str().unwrap().split(';').next().unwrap_or("");
            if let Some((k, v)) = kv.split_once('=') {
                self.jar.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, resp.text().await.unwrap())
    }

    /// Enters the user code at /device, then confirms (or aborts) it; on confirmation, logs
    /// in and consents through the dev interactions, up to the success page.
    async fn approve(&mut self, user_code: &str, confirm: bool) -> String {
        let (status, _, page) = self.send("/device", None).await;
        assert_eq!(status, 200, "{page}");
        let xsrf = hidden(&page, "xsrf");
        let (status, _, page) = self
            .send(
                "/device",
                Some(&[("xsrf", &xsrf), ("user_code", user_code)]),
            )
            .await;
        assert_eq!(status, 200, "the confirmation page: {page}");
        assert!(page.contains(user_code), "{page}");
        let xsrf = hidden(&page, "xsrf");
        let answer = if confirm { "confirm" } else { "abort" };
        let (status, mut next, page) = self
            .send(
                "/device",
                Some(&[("xsrf", &xsrf), ("user_code", user_code), (answer, "yes")]),
            )
            .await;
        if !confirm {
            return page;
        }
        assert_eq!(status, 303, "{page}");
        let mut interactions = 0;
        for _ in 0..10 {
            let form: Option<Vec<(&str, &str)>> = next.contains("/interaction/").then(|| {
                interactions += 1;
                if interactions == 1 {
                    vec![
                        ("prompt", "login"),
                        ("login", "test-user"),
                        ("password", "x"),
                    ]
                } else {
                    vec![("prompt", "consent")]
                }
            });
            let (status, location, page) = self.send(&next, form.as_deref()).await;
            if status == 200 {
                return page;
            }
            assert_eq!(status, 303, "{page}");
            next = location;
        }
        panic!("too many redirects");
    }
}

async fn admin(addr: &str) -> CredentialServiceClient<Channel> {
    CredentialServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn credential(
    c: &mut CredentialServiceClient<Channel>,
    id: &str,
) -> authgate::proto::v1::Credential {
    c.get_credential(GetCredentialRequest {
        tenant: "acme".into(),
        credential_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn events(addr: &str, id: &str, kinds: &[EventKind]) -> Vec<String> {
    gw_client(addr)
        .await
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            credential_id: id.into(),
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .map(|e| format!("{e:?}"))
        .collect()
}

/// Waits until the credential has a `last_error` (the poll ended without a token).
async fn wait_for_last_error(
    c: &mut CredentialServiceClient<Channel>,
    id: &str,
    within: Duration,
) -> authgate::proto::v1::Credential {
    let deadline = authgate::clock::monotonic_now() + within;
    loop {
        let cred = credential(c, id).await;
        if !cred.last_error.is_empty() {
            return cred;
        }
        assert!(
            authgate::clock::monotonic_now() < deadline,
            "no last_error within {within:?}: {cred:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_shows_the_code_the_user_approves_it_and_the_refresh_token_is_used() {
    let oidc = OidcServer::start(&[
        ("OIDC_DEVICE_INTERVAL", "1"),
        ("OIDC_DEVICE_SECRET", "device-canary-secret"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProcess::start(dir.path(), "", &[("AUTHGATE_LOG", "debug")]).await;
    let mut c = admin(&gw.grpc_addr).await;
    let put = c
        .put_credential(put(
            "acme",
            "tv",
            "oauth2",
            device_settings(&oidc, "device-basic", Some("device-canary-secret")),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.status, CredentialStatus::NeedsAuthorization as i32);
    assert!(
        put.capabilities.contains(&"device_code".to_owned()),
        "{put:?}"
    );
    // The first poll is answered slow_down: the next one must wait 1 + 5 s.
    device_faults(&oidc, 1).await;

    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_authgate"));
    cli.args([
        "authorize",
        "--addr",
        &format!("http://{}", gw.grpc_addr),
        "--tenant",
        "acme",
        "--credential",
        "tv",
        "--no-browser",
        "--json",
    ])
    .env_remove("AUTHGATE_API_KEY")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cli.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line))
        .await
        .expect("the StartAuthorization line")
        .unwrap();
    let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let user_code = started["user_code"].as_str().unwrap().to_owned();
    assert!(!user_code.is_empty(), "{started}");
    assert_eq!(
        started["verification_uri"],
        format!("{}/device", oidc.issuer)
    );
    let complete = started["verification_uri_complete"].as_str().unwrap();
    assert!(complete.contains(&user_code), "{started}");
    assert_eq!(started["interval_seconds"], 1, "{started}");

    // The user, on another device: the server's own pages.
    let page = Browser::new(&oidc.issuer).approve(&user_code, true).await;
    assert!(page.contains("Sign-in Success"), "{page}");

    let Ok(status) = tokio::time::timeout(Duration::from_secs(40), child.wait()).await else {
        let evs = events(&gw.grpc_addr, "tv", &[]).await;
        panic!(
            "authorize did not return within 40 s of the approval; polls {}, events {evs:#?}",
            device_polls(&oidc).await
        );
    };
    let status = status.unwrap();
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).await.unwrap();
    let mut stderr = String::new();
    let mut err = child.stderr.take().unwrap();
    err.read_to_string(&mut stderr).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let done: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(done["status"], "ACTIVE", "{done}");
    assert_eq!(done["has_refresh_token"], true, "{done}");
    assert!(
        stderr.contains(&user_code) && stderr.contains("/device"),
        "the code and the page are shown: {stderr}"
    );

    // slow_down honoured: the poll after it came at least interval + 5 s later.
    let polls = device_polls(&oidc).await;
    assert_eq!(polls["slow_down_sent"], 1, "{polls}");
    let times: Vec<i64> = polls["polls_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(times.len() >= 2, "{polls}");
    let gap = times[1] - times[0];
    // At most a few seconds more on a loaded machine (or one doubled interval after a
    // transient failure).
    assert!(
        (6000..20_000).contains(&gap),
        "the poll after slow_down waited {gap} ms"
    );
    eprintln!(
        "device polls: {} (gap after slow_down {gap} ms)",
        times.len()
    );

    // The token verifies at the server, and the stored refresh token refreshes it.
    let mut tokens = gw_client(&gw.grpc_addr).await;
    let t1 = tokens
        .get_token(get_token_request("acme", "tv", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(oidc.is_active(&t1.access_token, "cc-basic-secret").await);
    let before = oidc.stats().await;
    let mut again = get_token_request("acme", "tv", &[]);
    again.force_refresh = true;
    let t2 = tokens.get_token(again).await.unwrap().into_inner();
    assert_ne!(t1.access_token, t2.access_token);
    assert!(oidc.is_active(&t2.access_token, "cc-basic-secret").await);
    let after = oidc.stats().await;
    assert_eq!(
        after["by_grant"]["refresh_token"].as_u64().unwrap_or(0)
            - before["by_grant"]["refresh_token"].as_u64().unwrap_or(0),
        1,
        "{after}"
    );

    // Every poll is an event; no device code, token or secret in events or in the log.
    let evs = events(&gw.grpc_addr, "tv", &[]).await;
    let polled = evs
        .iter()
        .filter(|e| e.contains("step: \"device_token\""))
        .count();
    assert_eq!(polled, times.len(), "{evs:#?}");
    assert!(
        evs.iter()
            .any(|e| e.contains("device authorization started") && e.contains(&user_code)),
        "{evs:#?}"
    );
    assert!(evs.iter().any(|e| e.contains("→ ACTIVE")), "{evs:#?}");
    gw.stop();
    let log = gw.log_text();
    assert!(log.contains("device authorization approved"), "{log}");
    let polls = device_polls(&oidc).await;
    let mut canaries: Vec<String> = polls["device_codes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(polls["issued"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        canaries.len() >= 4,
        "device code, access, refresh tokens: {polls}"
    );
    canaries.push("device-canary-secret".into());
    for canary in &canaries {
        for e in &evs {
            assert!(!e.contains(canary.as_str()), "{canary} in an event: {e}");
        }
        assert!(!log.contains(canary.as_str()), "{canary} in the log");
        assert!(!stderr.contains(canary.as_str()) && !stdout.contains(canary.as_str()));
    }
}

async fn gw_client(
    addr: &str,
) -> authgate::proto::v1::token_service_client::TokenServiceClient<Channel> {
    authgate::proto::v1::token_service_client::TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn start(id: &str) -> StartAuthorizationRequest {
    StartAuthorizationRequest {
        tenant: "acme".into(),
        credential_id: id.into(),
        scopes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_replacement_deletion_and_expiry_end_the_poll() {
    let oidc =
        OidcServer::start(&[("OIDC_DEVICE_INTERVAL", "1"), ("OIDC_DEVICE_CODE_TTL", "3")]).await;
    let gw = Gateway::start("").await;
    let addr = gw.addr().to_string();
    let mut c = gw.admin().await;
    c.put_credential(put(
        "acme",
        "tv",
        "oauth2",
        device_settings(&oidc, "device-client", None),
    ))
    .await
    .unwrap();

    // A second start replaces the first: its device code is never polled again.
    let first = c
        .start_authorization(start("tv"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .start_authorization(start("tv"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.user_code, second.user_code);
    assert_eq!(second.authorization_url, second.verification_uri_complete);
    assert!(second.state.is_empty() && second.redirect_uri.is_empty());
    let denied = Browser::new(&oidc.issuer)
        .approve(&second.user_code, false)
        .await;
    assert!(
        denied.contains("interrupted"),
        "the server's abort page: {denied}"
    );
    let cred = wait_for_last_error(&mut c, "tv", Duration::from_secs(5)).await;
    assert_eq!(cred.status, CredentialStatus::NeedsAuthorization as i32);
    assert!(
        cred.last_error.contains("denied") && cred.last_error.contains("authgate authorize"),
        "{cred:?}"
    );
    let polls = device_polls(&oidc).await;
    let codes = polls["device_codes"].as_array().unwrap();
    assert!(
        !codes.is_empty() && codes.iter().all(|c| c == &codes[0]),
        "{polls}"
    );
    let evs = events(&addr, "tv", &[]).await;
    assert!(
        evs.iter().any(|e| e.contains("replacing the pending one")),
        "{evs:#?}"
    );
    let e = gw
        .client()
        .await
        .get_token(get_token_request("acme", "tv", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // Expiry (the server's device codes live 3 s here): the poll stops with a clear
    // status, after a bounded number of polls.
    device_faults(&oidc, 0).await;
    c.put_credential(put(
        "acme",
        "tv",
        "oauth2",
        device_settings(&oidc, "device-client", None),
    ))
    .await
    .unwrap();
    c.start_authorization(start("tv")).await.unwrap();
    let cred = wait_for_last_error(&mut c, "tv", Duration::from_secs(8)).await;
    assert!(cred.last_error.contains("expired"), "{cred:?}");
    assert_eq!(cred.status, CredentialStatus::NeedsAuthorization as i32);
    let n = device_polls(&oidc).await["polls_ms"]
        .as_array()
        .unwrap()
        .len();
    assert!((1..=4).contains(&n), "{n} polls in 3 s at 1 s");
    let evs = events(&addr, "tv", &[EventKind::TokenFailed]).await;
    assert!(
        evs.iter()
            .any(|e| e.contains("device authorization expired")),
        "{evs:#?}"
    );

    // Deleting the credential stops its poll.
    c.start_authorization(start("tv")).await.unwrap();
    c.delete_credential(DeleteCredentialRequest {
        tenant: "acme".into(),
        credential_id: "tv".into(),
        revoke_upstream: false,
    })
    .await
    .unwrap();
    device_faults(&oidc, 0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let polls = device_polls(&oidc).await;
    assert_eq!(
        polls["polls_ms"],
        json!([]),
        "polled after the delete: {polls}"
    );

    // A credential of another grant has no device flow; one of this grant names its setting.
    let e = c
        .put_credential(put(
            "acme",
            "bad",
            "oauth2",
            json!({"token_url": oidc.token_url(), "grant": "device_code", "client_id": "x"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("device_authorization_url"), "{e:?}");
}
