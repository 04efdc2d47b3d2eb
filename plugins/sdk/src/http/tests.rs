use super::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn call(limits: UpstreamLimits) -> (UpstreamCall, MemorySink) {
    let sink = MemorySink::default();
    let redactor = Redactor::new([1; 32]);
    redactor.learn(&Secret::from("canary-client-secret"));
    let call = UpstreamCall::new(
        UpstreamClient::new(limits).unwrap(),
        Arc::new(sink.clone()),
        redactor,
        Egress::Trusted,
    );
    (call, sink)
}

fn guarded(allow: &[&str]) -> (UpstreamCall, MemorySink) {
    let sink = MemorySink::default();
    let client = UpstreamClient::with_egress(
        UpstreamLimits::default(),
        EgressPolicy::parse(allow).unwrap(),
    )
    .unwrap();
    let call = UpstreamCall::new(
        client,
        Arc::new(sink.clone()),
        Redactor::new([1; 32]),
        Egress::Guarded,
    );
    (call, sink)
}

#[tokio::test]
async fn guarded_calls_do_not_reach_loopback_by_address_or_by_name() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let port = server.address().port();
    let (call, sink) = guarded(&[]);
    for url in [
        format!("http://127.0.0.1:{port}/token"),
        format!("http://localhost:{port}/token"),
    ] {
        let err = call
            .send("token", UpstreamRequest::get(Url::parse(&url).unwrap()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidConfiguration(_)),
            "{err}"
        );
        assert!(err.to_string().contains("[egress] allow"), "{err}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
    let events = sink.events().await;
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.error.as_deref().unwrap().contains("egress")));

    for allow in ["127.0.0.1", "localhost", "127.0.0.0/8"] {
        let (call, _) = guarded(&[allow]);
        let host = if allow == "localhost" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let url = Url::parse(&format!("http://{host}:{port}/token")).unwrap();
        let resp = call.send("token", UpstreamRequest::get(url)).await.unwrap();
        assert_eq!(resp.status, 200, "allowed by {allow}");
    }
}

#[tokio::test]
async fn a_credential_with_its_own_tls_keeps_the_egress_policy() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
    let tls = ClientTls::default()
        .trust_ca("tls_ca_certificate", &ca.cert.pem())
        .unwrap();
    let url = Url::parse(&format!(
        "http://localhost:{}/token",
        server.address().port()
    ))
    .unwrap();
    let shared = UpstreamClient::with_egress(
        UpstreamLimits {
            max_response_bytes: 7,
            ..Default::default()
        },
        EgressPolicy::default(),
    )
    .unwrap();
    let own = shared.with_tls(&tls).unwrap();
    assert_eq!(own.limits().max_response_bytes, 7);
    let sink = MemorySink::default();
    let guarded = UpstreamCall::new(
        own.clone(),
        Arc::new(sink.clone()),
        Redactor::new([1; 32]),
        Egress::Guarded,
    );
    let err = guarded
        .send("token", UpstreamRequest::get(url.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("[egress] allow"), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
    let trusted = UpstreamCall::new(own, Arc::new(sink), Redactor::new([1; 32]), Egress::Trusted);
    let resp = trusted
        .send("token", UpstreamRequest::get(url))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn records_a_redacted_event() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "canary-at", "expires_in": 60})),
        )
        .mount(&server)
        .await;
    let (call, sink) = call(UpstreamLimits::default());
    let url = Url::parse(&format!("{}/token?x=1", server.uri())).unwrap();
    let req = UpstreamRequest::post_form(
        url,
        vec![
            ("grant_type".into(), "client_credentials".into()),
            ("client_secret".into(), "canary-client-secret".into()),
        ],
    )
    .oauth_client_basic_auth("id", &Secret::from("canary-client-secret"));
    let resp = call.send("token", req).await.unwrap();
    assert_eq!(resp.status, 200);
    let events = sink.events().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.status, Some(200));
    assert_eq!(e.method, "POST");
    let all = format!("{e:?}");
    assert!(!all.contains("canary"), "secret leaked: {all}");
    assert!(e.request_body.contains("grant_type=client_credentials"));
}

#[tokio::test]
async fn oversize_body_is_a_transient_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'a'; 2048]))
        .mount(&server)
        .await;
    let (call, sink) = call(UpstreamLimits {
        max_response_bytes: 1024,
        ..Default::default()
    });
    let err = call
        .send(
            "token",
            UpstreamRequest::get(Url::parse(&server.uri()).unwrap()),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("exceeds"));
    assert!(sink.events().await[0].error.is_some());
}

#[tokio::test]
async fn slow_provider_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let (call, _) = call(UpstreamLimits {
        total_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    let err = call
        .send(
            "token",
            UpstreamRequest::get(Url::parse(&server.uri()).unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::TimedOut { .. }), "{err}");
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (call, sink) = call(UpstreamLimits::default());
    let err = call
        .send(
            "token",
            UpstreamRequest::get(Url::parse(&format!("http://{addr}/")).unwrap()),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(sink.events().await[0].status, None);
}

/// A session answer whose secrets sit under a field name the redactor does not treat as
/// secret, at the top level, nested and in an array.
async fn ticket_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/session"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "ticket": "canary-ticket-1",
            "expires_in": 60,
            "nested": {"ticket": "canary-ticket-2", "count": 3},
            "list": [{"ticket": "canary-ticket-3"}, "not-a-secret"],
            "ticket_number": 7,
        })))
        .mount(&server)
        .await;
    server
}

fn session_request(server: &MockServer) -> UpstreamRequest {
    let url = Url::parse(&format!("{}/session", server.uri())).unwrap();
    UpstreamRequest::post_json(url, serde_json::json!({"api_key": "k"}))
}

#[tokio::test]
async fn declared_secret_response_fields_are_learnt_before_the_event_is_redacted() {
    let server = ticket_server().await;
    let (call, sink) = call(UpstreamLimits::default());
    let resp = call
        .send_with_secret_fields("session", session_request(&server), &["ticket"])
        .await
        .unwrap();
    // The plugin still reads the raw answer.
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["ticket"], "canary-ticket-1");
    let events = sink.events().await;
    assert_eq!(events.len(), 1);
    let shown = format!("{events:?}");
    assert!(!shown.contains("canary"), "{shown}");
    assert!(shown.contains("not-a-secret"), "other values stay: {shown}");
    assert!(shown.contains("ticket_number"), "{shown}");
    // Learnt for the rest of the call: a later request or error text is scrubbed too.
    for n in 1..=3 {
        let scrubbed = call.redactor().scrub(&format!("ticket=canary-ticket-{n}"));
        assert!(!scrubbed.contains("canary"), "{scrubbed}");
    }
}

#[tokio::test]
async fn without_declared_fields_an_unknown_secret_name_is_not_learnt() {
    let server = ticket_server().await;
    let (call, sink) = call(UpstreamLimits::default());
    call.send("session", session_request(&server))
        .await
        .unwrap();
    let shown = format!("{:?}", sink.events().await);
    assert!(shown.contains("canary-ticket-1"), "{shown}");
    assert!(call
        .redactor()
        .scrub("canary-ticket-1")
        .contains("canary-ticket-1"));
}

#[tokio::test]
async fn declared_fields_in_a_body_that_is_not_json_are_ignored() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ticket=plain"))
        .mount(&server)
        .await;
    let (call, sink) = call(UpstreamLimits::default());
    let resp = call
        .send_with_secret_fields("session", session_request(&server), &["ticket"])
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"ticket=plain");
    assert_eq!(sink.events().await.len(), 1);
}
