//! Bad input and bad upstreams: the right status or a clear start-up error, no panic,
//! nothing lost.

mod common;

use authgate::proto::v1::{EventKind, GetTokenRequest, ListEventsRequest};
use common::*;
use std::time::Duration;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fast_backoff() -> &'static str {
    "[broker]\nbackoff_initial_ms = 20\nbackoff_max_seconds = 1\n\n"
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_or_not_found() {
    let server = MockServer::start().await;
    let env = env_secret("s");
    let gw = Gateway::start(&cc_credential(
        "acme",
        "idp",
        &format!("{}/token", server.uri()),
        &env,
        "",
    ))
    .await;
    let mut c = gw.client().await;

    let e = c
        .get_token(get_token_request("", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("tenant"), "{}", e.message());

    let e = c
        .get_token(get_token_request("acme", "nope", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));

    let e = c
        .get_token(get_token_request("acme", "bad id!", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let many: Vec<String> = (0..1_000).map(|i| format!("s{i}")).collect();
    let e = c
        .get_token(GetTokenRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 64"), "{}", e.message());

    // 10,000 scopes is a ~70 KB message: over the 64 KiB request limit.
    let many: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
    let e = c
        .get_token(GetTokenRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: many,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let e = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("page_token"));

    let e = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut r = get_token_request("acme", "idp", &[]);
    r.min_ttl_seconds = 10_000_000;
    assert_eq!(
        c.get_token(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // None of this reached the provider.
    assert!(server.received_requests().await.unwrap().is_empty());
}

async fn upstream_failure_case(
    response: ResponseTemplate,
    expect_in_message: &str,
    min_retry: Duration,
) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(response)
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"access_token": "good-token", "token_type": "Bearer", "expires_in": 3600}),
        ))
        .mount(&server)
        .await;
    let env = env_secret("s");
    let cfg = fast_backoff().to_owned()
        + &cc_credential("acme", "idp", &format!("{}/token", server.uri()), &env, "");
    let gw = Gateway::start(&cfg).await;
    let mut c = gw.client().await;
    let e = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(expect_in_message), "{}", e.message());
    use tonic_types::StatusExt;
    let retry = e
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(retry.is_some_and(|d| d >= min_retry), "RetryInfo {retry:?}");
    // Classified transient: the credential stays usable and the next try succeeds.
    tokio::time::sleep(min_retry + Duration::from_millis(100)).await;
    let t = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.access_token, "good-token");
    let failed = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::TokenFailed as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(failed.len(), 1);
}

#[tokio::test]
async fn html_answer_is_transient() {
    upstream_failure_case(
        ResponseTemplate::new(200).set_body_raw("<html>maintenance</html>", "text/html"),
        "not JSON",
        Duration::ZERO,
    )
    .await;
}

#[tokio::test]
async fn truncated_json_is_transient() {
    upstream_failure_case(
        ResponseTemplate::new(200)
            .set_body_raw(r#"{"access_token":"abc","expi"#, "application/json"),
        "truncated",
        Duration::ZERO,
    )
    .await;
}

#[tokio::test]
async fn server_error_is_transient_with_retry_info() {
    upstream_failure_case(
        ResponseTemplate::new(503).insert_header("retry-after", "1"),
        "HTTP 503",
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test]
async fn success_without_access_token_is_transient() {
    upstream_failure_case(
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"token_type": "Bearer"})),
        "without an access_token",
        Duration::ZERO,
    )
    .await;
}

#[tokio::test]
async fn provider_that_answers_nothing_is_unavailable() {
    // Accepts connections and closes them without a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        }
    });
    let env = env_secret("s");
    let gw = Gateway::start(&cc_credential(
        "acme",
        "idp",
        &format!("http://{addr}/token"),
        &env,
        "",
    ))
    .await;
    let mut c = gw.client().await;
    let e = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let ev = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::UpstreamCall as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(ev.len(), 1);
    let http = ev[0].http.as_ref().unwrap();
    assert_eq!(http.status, 0, "no HTTP response arrived");
    assert!(!http.error.is_empty());
    closer.abort();
}

#[tokio::test]
async fn rejected_client_marks_credential_invalid_with_failed_precondition() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        ))
        .mount(&server)
        .await;
    let env = env_secret("s");
    let gw = Gateway::start(&cc_credential(
        "acme",
        "idp",
        &format!("{}/token", server.uri()),
        &env,
        "",
    ))
    .await;
    let mut c = gw.client().await;
    let e = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("invalid_client"), "{}", e.message());
    let e = c
        .get_token(get_token_request("acme", "idp", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("update its secrets"),
        "{}",
        e.message()
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        1,
        "no retry of a rejected credential"
    );
    let status_events = c
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            kinds: vec![EventKind::StatusChanged as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(status_events.len(), 1);
    assert!(status_events[0].message.contains("INVALID"));
}

fn run_binary_with_config(text: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("authgate.toml");
    std::fs::write(&p, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("serve")
        .arg("--config")
        .arg(&p)
        .args(args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_config_files_fail_at_start_with_a_clear_message() {
    let (ok, err) = run_binary_with_config("[server\ngrpc_listen = 1", &[]);
    assert!(!ok);
    assert!(err.contains("line 1"), "{err}");

    let (ok, err) = run_binary_with_config("[server]\ngrpc_lisen = \"127.0.0.1:0\"\n", &[]);
    assert!(!ok);
    assert!(err.contains("grpc_lisen"), "{err}");

    let (ok, err) = run_binary_with_config(
        "[[credentials]]\ntenant = \"acme\"\nid = \"idp\"\nprovider = \"oauth2\"\n[credentials.settings]\ntoken_url = \"https://x/token\"\nclient_id = \"c\"\nclient_secret = \"canary-inline-secret\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("credentials[0].settings.client_secret"),
        "{err}"
    );
    assert!(!err.contains("canary-inline-secret"), "{err}");

    let (ok, err) = run_binary_with_config(
        "[[credentials]]\ntenant = \"acme\"\nid = \"idp\"\nprovider = \"oauth2\"\n[credentials.settings]\nclient_id = \"c\"\n",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("token_url"), "{err}");

    let (ok, err) = run_binary_with_config(
        "[server]\ngrpc_listen = \"0.0.0.0:0\"\nhttp_listen = \"127.0.0.1:0\"\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("[[callers]]") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

#[test]
fn the_documented_example_config_validates() {
    let path = repo_root().join("examples/authgate.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("TC_SECRET", "x")
        .env("IDP_SECRET", "y")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the referenced secret the error names the field and the variable.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("TC_SECRET", "x")
        .env_remove("IDP_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("credentials[1].settings.client_secret") && err.contains("IDP_SECRET"),
        "{err}"
    );
}
