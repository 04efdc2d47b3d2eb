//! Trace export as a collector sees it: the real `authgate` binary with `[telemetry]
//! otlp_endpoint` pointing at an OTLP/gRPC receiver in this test (the OpenTelemetry project's
//! generated `TraceService`), GetTokens against oidc-provider carrying a caller's W3C
//! `traceparent`; and the default config, which starts no exporter at all.

mod common;

use authgate::proto::v1::token_service_client::TokenServiceClient;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::Request;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// A caller's trace it chose not to sample (flags 00): nothing of it may be exported.
const UNSAMPLED_TRACE_ID: &str = "5bf92f3577b34da6a3ce929d0e0e4737";

/// Every export request received, in order.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver on an ephemeral loopback port; served until the test ends.
async fn start_receiver() -> (Receiver, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, format!("http://{addr}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span attribute as text (strings as they are, numbers in decimal).
fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|kv| kv.key == key)?;
    match v.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn spans(got: &[ExportTraceServiceRequest]) -> Vec<Span> {
    got.iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.clone())
        .collect()
}

async fn get_token(
    client: &mut TokenServiceClient<tonic::transport::Channel>,
    api_key: &str,
    traceparent: &str,
) -> String {
    let mut req = Request::new(get_token_request("acme", "idp", &["read"]));
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        format!("Bearer {api_key}").parse().unwrap(),
    );
    md.insert("traceparent", traceparent.parse().unwrap());
    client
        .get_token(req)
        .await
        .unwrap()
        .into_inner()
        .access_token
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(s.as_bytes()))
}

fn caller(api_key: &str) -> String {
    format!(
        "[[callers]]\nname = \"billing\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n",
        sha256_hex(api_key)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One scenario, then each check of what was exported.
async fn spans_continue_the_callers_trace_and_hold_no_secret() {
    let secret = "trace-canary-secret-51c3";
    let api_key = "trace-canary-api-key-9e02";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    let (receiver, endpoint) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // The batch interval is long: what arrives is what the shutdown flushed.
    let config = format!(
        "{}{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"authgate-e2e\"\nexport_interval_ms = 60000\n",
        caller(api_key),
        cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "")
    );
    let mut gw = GatewayProcess::start(dir.path(), &config, &[("IDP_SECRET", secret)]).await;
    let mut client = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();

    let sampled = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let first = get_token(&mut client, api_key, &sampled).await;
    let second = get_token(&mut client, api_key, &sampled).await;
    assert_eq!(
        first, second,
        "the second GetToken is answered from the cache"
    );
    let unsampled = format!("00-{UNSAMPLED_TRACE_ID}-{PARENT_ID}-00");
    get_token(&mut client, api_key, &unsampled).await;

    gw.stop();
    let log = gw.log_text();
    assert!(
        log.contains("exporting trace spans over OTLP/gRPC"),
        "log: {log}"
    );
    let got = receiver.got.lock().clone();
    assert!(
        !got.is_empty(),
        "nothing exported by the shutdown flush; log: {log}"
    );
    let resource = format!("{:?}", got[0].resource_spans[0].resource);
    assert!(resource.contains("authgate-e2e"), "{resource}");

    let spans = spans(&got);
    let rpc: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "authgate.v1.TokenService/GetToken")
        .collect();
    assert_eq!(rpc.len(), 2, "two sampled GetTokens: {spans:#?}");
    for s in &rpc {
        assert_eq!(hex(&s.trace_id), TRACE_ID, "the caller's trace continues");
        assert_eq!(
            hex(&s.parent_span_id),
            PARENT_ID,
            "the caller's span is the parent"
        );
        assert_eq!(s.kind, 2, "a server span");
        let caller = attr(s, "caller").unwrap();
        assert!(caller.starts_with("billing ("), "{caller}");
        assert_eq!(attr(s, "tenant").as_deref(), Some("acme"));
        assert_eq!(attr(s, "credential").as_deref(), Some("idp"));
        assert_eq!(attr(s, "rpc.grpc.status_code").as_deref(), Some("0"));
    }
    let outcomes: Vec<_> = rpc.iter().map(|s| attr(s, "cache").unwrap()).collect();
    assert_eq!(outcomes, ["miss", "hit"]);
    let miss = rpc
        .iter()
        .find(|s| attr(s, "cache").as_deref() == Some("miss"))
        .unwrap();

    let upstream: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("upstream"))
        .collect();
    assert!(!upstream.is_empty(), "no upstream span: {spans:#?}");
    let token_call = upstream
        .iter()
        .find(|s| attr(s, "step").as_deref() == Some("token"))
        .expect("the token request's span");
    assert_eq!(hex(&token_call.trace_id), TRACE_ID);
    assert_eq!(
        token_call.parent_span_id, miss.span_id,
        "a child of the miss"
    );
    assert_eq!(token_call.kind, 3, "a client span");
    assert_eq!(attr(token_call, "provider").as_deref(), Some("oauth2"));
    assert_eq!(
        attr(token_call, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attr(token_call, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(token_call, "url.full"), Some(oidc.token_url()));
    assert!(attr(token_call, "latency_ms").is_some());

    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != UNSAMPLED_TRACE_ID),
        "a trace its caller did not sample is not exported"
    );
    let everything = format!("{got:?}");
    for canary in [secret, api_key, first.as_str()] {
        assert!(
            !everything.contains(canary),
            "a secret or token was exported: {canary}"
        );
    }
}

/// `n` GetTokens in a row (the first a miss, the others hits); the time of the hits and
/// the slowest call.
#[allow(clippy::disallowed_methods)] // Measures real time.
async fn timed_get_tokens(
    client: &mut TokenServiceClient<tonic::transport::Channel>,
    traceparent: &str,
    n: usize,
) -> (Duration, Duration) {
    let mut slowest = Duration::ZERO;
    let mut hits = Duration::ZERO;
    for i in 0..n {
        let mut req = Request::new(get_token_request("acme", "idp", &["read"]));
        req.metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let t = std::time::Instant::now();
        client.get_token(req).await.unwrap();
        let took = t.elapsed();
        slowest = slowest.max(took);
        if i > 0 {
            hits += took;
        }
    }
    (hits, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otlp_endpoint_no_exporter_starts() {
    let secret = "trace-off-secret";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    // A listener where the OpenTelemetry SDK's own environment variables point: only
    // `[telemetry] otlp_endpoint` may start an exporter.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cred = cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "");
    let mut gw = GatewayProcess::start(
        dir.path(),
        &cred,
        &[
            ("IDP_SECRET", secret),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    )
    .await;
    let mut client = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (hits, slowest) = timed_get_tokens(&mut client, &traceparent, 200).await;
    eprintln!("199 cache hits without export: {hits:?}, slowest {slowest:?}");
    gw.stop();
    let connected = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        connected.is_err(),
        "something connected to the OTLP endpoint"
    );
    assert!(!gw.log_text().contains("exporting trace spans"));
}

/// A collector that accepts connections and never answers: requests do not wait for it,
/// and stopping authgate still ends within the export timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // Measures real time: request latency, stop duration.
async fn a_collector_that_never_answers_delays_no_request() {
    let secret = "trace-stuck-secret";
    let oidc = OidcServer::start(&[("OIDC_CC_BASIC_SECRET", secret)]).await;
    let stuck = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stuck.local_addr().unwrap());
    // Accepts and holds every connection, reading nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = stuck.accept().await {
            held.push(sock);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 10\n",
        cc_credential("acme", "idp", &oidc.token_url(), "IDP_SECRET", "")
    );
    let mut gw = GatewayProcess::start(dir.path(), &config, &[("IDP_SECRET", secret)]).await;
    let mut client = TokenServiceClient::connect(format!("http://{}", gw.grpc_addr))
        .await
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (total, slowest) = timed_get_tokens(&mut client, &traceparent, 200).await;
    eprintln!("199 cache hits with a stuck collector: {total:?}, slowest {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited for the collector: {slowest:?}"
    );
    let stopping = std::time::Instant::now();
    gw.stop();
    let stop = stopping.elapsed();
    eprintln!("stop with a stuck collector: {stop:?}");
    assert!(
        matches!(gw.child.try_wait(), Ok(Some(s)) if s.success()),
        "authgate did not exit by itself after SIGTERM (stop took {stop:?})"
    );
}
