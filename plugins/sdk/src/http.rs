//! The upstream HTTP client every plugin must use.
//!
//! It is the single door to a provider: each request is bounded (connect and total
//! timeouts, response bodies capped), and recorded as an [`UpstreamEvent`] with every secret
//! replaced by a digest before the event leaves this module.

use crate::clock;
use crate::egress::{self, Egress, EgressPolicy, GuardedResolver};
use crate::error::ProviderError;
use crate::redact::Redactor;
use crate::secret::Secret;
use crate::tls::ClientTls;
use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Bounds on every upstream call.
#[derive(Debug, Clone)]
pub struct UpstreamLimits {
    /// A provider that does not accept the TCP/TLS connection in this time is down.
    pub connect_timeout: Duration,
    /// Whole request including the body; a slow provider must not pin a fetch forever.
    pub total_timeout: Duration,
    /// Token responses are small; a larger body is an error page or an attack.
    pub max_response_bytes: usize,
    /// How much of each (redacted) body an event keeps.
    pub max_event_body_bytes: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
            max_event_body_bytes: 16 * 1024,
        }
    }
}

/// Shared HTTP connection pools (reqwest with rustls) plus the limits and the egress
/// policy: one pool for trusted calls, one whose resolver enforces the policy.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    trusted: reqwest::Client,
    guarded: reqwest::Client,
    policy: Arc<EgressPolicy>,
    limits: UpstreamLimits,
}

impl UpstreamClient {
    /// A client with an empty allow-list: guarded calls reach public addresses only.
    pub fn new(limits: UpstreamLimits) -> Result<Self, ProviderError> {
        Self::with_egress(limits, EgressPolicy::default())
    }

    pub fn with_egress(
        limits: UpstreamLimits,
        policy: EgressPolicy,
    ) -> Result<Self, ProviderError> {
        let policy = Arc::new(policy);
        let (trusted, guarded) = Self::pools(&limits, &policy, None)?;
        Ok(Self {
            trusted,
            guarded,
            policy,
            limits,
        })
    }

    /// A client for one credential's own TLS settings (a client certificate, extra trusted
    /// CAs): its own two pools, built once when the credential is loaded, with exactly the
    /// limits and egress policy of this one.
    pub fn with_tls(&self, tls: &ClientTls) -> Result<Self, ProviderError> {
        let (trusted, guarded) = Self::pools(&self.limits, &self.policy, Some(tls))?;
        Ok(Self {
            trusted,
            guarded,
            policy: self.policy.clone(),
            limits: self.limits.clone(),
        })
    }

    /// The trusted pool and the guarded one (whose resolver enforces the policy).
    fn pools(
        limits: &UpstreamLimits,
        policy: &Arc<EgressPolicy>,
        tls: Option<&ClientTls>,
    ) -> Result<(reqwest::Client, reqwest::Client), ProviderError> {
        let base = || match tls {
            Some(tls) => tls.apply(Self::builder(limits)),
            None => Self::builder(limits),
        };
        // No proxy for guarded calls: the policy must judge the address actually connected
        // to, not a proxy's.
        let guarded = base().no_proxy().dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }));
        // The error names no key material (reqwest's TLS errors describe the failure only).
        let built = |r: reqwest::Result<reqwest::Client>| {
            r.map_err(|e| ProviderError::config(format!("cannot build HTTP client: {e}")))
        };
        Ok((built(base().build())?, built(guarded.build())?))
    }

    /// The settings every upstream connection shares.
    pub fn builder(limits: &UpstreamLimits) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.total_timeout)
            // Token endpoints answer directly; a redirect on a POST carrying secrets is not
            // something to follow silently.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
    }

    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    pub fn egress_policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The pool for a request, or why it may not be sent.
    fn pool_for(
        &self,
        egress: Egress,
        url: &Url,
    ) -> Result<&reqwest::Client, egress::EgressDenied> {
        match egress {
            Egress::Trusted => Ok(&self.trusted),
            Egress::Guarded => match url.host_str() {
                Some(host) if self.policy.allows_host(host) => Ok(&self.trusted),
                _ => {
                    self.policy.check_url_literal(url)?;
                    Ok(&self.guarded)
                }
            },
        }
    }
}

/// One upstream HTTP exchange as recorded in the event log: already redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamEvent {
    /// Which step of the plugin's flow made the call (e.g. `token`, `connect_exchange`).
    pub step: String,
    pub method: String,
    pub url: String,
    /// `None` when no HTTP response arrived (connection error, timeout).
    pub status: Option<u16>,
    pub latency: Duration,
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
    pub error: Option<String>,
}

/// Where upstream events go. The gateway persists them; tests collect them.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn record(&self, event: UpstreamEvent);

    /// A fact about the credential worth an audit line that is no HTTP exchange (e.g.
    /// which of its client secrets the provider accepts). Already redacted; never secret.
    async fn notice(&self, _message: String) {}

    /// The provider the calls are made for (the plugin kind), named on their trace spans.
    fn provider(&self) -> &str {
        ""
    }
}

/// A request body.
#[derive(Clone)]
pub enum RequestBody {
    Empty,
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(String, String)>),
    /// `application/json`.
    Json(serde_json::Value),
}

/// A request a plugin wants to send.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: http::Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: RequestBody,
}

impl UpstreamRequest {
    pub fn get(url: Url) -> Self {
        Self {
            method: http::Method::GET,
            url,
            headers: vec![("accept".into(), "application/json".into())],
            body: RequestBody::Empty,
        }
    }

    pub fn post_form(url: Url, form: Vec<(String, String)>) -> Self {
        Self {
            method: http::Method::POST,
            url,
            headers: vec![("accept".into(), "application/json".into())],
            body: RequestBody::Form(form),
        }
    }

    pub fn post_json(url: Url, json: serde_json::Value) -> Self {
        Self {
            method: http::Method::POST,
            url,
            headers: vec![("accept".into(), "application/json".into())],
            body: RequestBody::Json(json),
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// HTTP Basic authentication with the user and password sent as given.
    pub fn basic_auth(self, user: &str, password: &Secret) -> Self {
        let raw = format!("{user}:{}", password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        self.header("authorization", format!("Basic {encoded}"))
    }

    /// HTTP Basic client authentication as RFC 6749 §2.3.1 specifies: id and secret are
    /// form-urlencoded before being joined and base64-encoded.
    pub fn oauth_client_basic_auth(self, client_id: &str, secret: &Secret) -> Self {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = format!("{}:{}", enc(client_id), enc(secret.expose()));
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        self.header("authorization", format!("Basic {encoded}"))
    }

    pub fn bearer_auth(self, token: &Secret) -> Self {
        self.header("authorization", format!("Bearer {}", token.expose()))
    }
}

/// A response, fully read (within the size cap).
#[derive(Clone, Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl UpstreamResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Retry-After` in seconds (the HTTP-date form is treated as absent).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// The context of one plugin operation: the client, where events go, and the redactor
/// that knows this credential's secrets.
#[derive(Clone)]
pub struct UpstreamCall {
    client: UpstreamClient,
    sink: Arc<dyn EventSink>,
    redactor: Redactor,
    egress: Egress,
}

impl UpstreamCall {
    pub fn new(
        client: UpstreamClient,
        sink: Arc<dyn EventSink>,
        redactor: Redactor,
        egress: Egress,
    ) -> Self {
        Self {
            client,
            sink,
            redactor,
            egress,
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Records a fact about the credential (see [`EventSink::notice`]), redacted.
    pub async fn notice(&self, message: &str) {
        self.sink.notice(self.redactor.scrub(message)).await;
    }

    /// Sends the request and records it. Any HTTP status is `Ok`; the caller classifies it.
    /// Transport failures (connect, timeout, a body cut short or over the cap) are errors.
    ///
    /// The call runs in a debug-level `upstream` span (provider, step, method, redacted URL
    /// without query or fragment, status, latency; see [`upstream_span`]), a child of the
    /// current span. Disabled, as it is unless trace export or debug logging is on, it costs
    /// nothing.
    pub async fn send(
        &self,
        step: &str,
        req: UpstreamRequest,
    ) -> Result<UpstreamResponse, ProviderError> {
        use tracing::Instrument;
        let span = upstream_span(step, &req.method, self.sink.provider());
        self.send_recorded(step, req).instrument(span).await
    }

    async fn send_recorded(
        &self,
        step: &str,
        req: UpstreamRequest,
    ) -> Result<UpstreamResponse, ProviderError> {
        let limits = self.client.limits.clone();
        let mut event = self.request_event(step, &req);

        let pool = match self.client.pool_for(self.egress, &req.url) {
            Ok(pool) => pool,
            Err(denied) => {
                let err = ProviderError::config(format!("{step}: {denied}"));
                event.error = Some(self.redactor.scrub(&err.to_string()));
                annotate_span(&event);
                self.sink.record(event).await;
                return Err(err);
            }
        };
        let mut builder = pool.request(req.method.clone(), req.url.clone());
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        match &req.body {
            RequestBody::Empty => {}
            RequestBody::Form(pairs) => {
                event.request_body = self.redactor.redact_form(pairs);
                event.request_headers.push((
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
                builder = builder.form(pairs);
            }
            RequestBody::Json(json) => {
                event.request_body = self.redactor.redact_json(json).to_string();
                event
                    .request_headers
                    .push(("content-type".into(), "application/json".into()));
                builder = builder.json(json);
            }
        }

        let started = clock::monotonic_now();
        let result = self.exchange(builder, &limits).await;
        event.latency = started.elapsed();

        let outcome = match result {
            Ok((status, headers, body)) => {
                event.status = Some(status);
                let content_type = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone());
                event.response_headers = headers
                    .iter()
                    .map(|(k, v)| (k.clone(), self.redactor.redact_header(k, v)))
                    .collect();
                event.response_body = self.redactor.redact_body(
                    content_type.as_deref(),
                    &body,
                    limits.max_event_body_bytes,
                );
                Ok(UpstreamResponse {
                    status,
                    headers,
                    body,
                })
            }
            Err(failure) => {
                let err = failure.to_error(step, &limits);
                event.status = failure_status(&failure);
                event.error = Some(self.redactor.scrub(&err.to_string()));
                Err(err)
            }
        };
        annotate_span(&event);
        self.sink.record(event).await;
        outcome
    }

    /// The event for a request, before it is sent: URL and headers redacted.
    fn request_event(&self, step: &str, req: &UpstreamRequest) -> UpstreamEvent {
        UpstreamEvent {
            step: step.to_owned(),
            method: req.method.to_string(),
            url: self.redactor.redact_url(&req.url),
            status: None,
            latency: Duration::ZERO,
            request_headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), self.redactor.redact_header(k, v)))
                .collect(),
            request_body: String::new(),
            response_headers: Vec::new(),
            response_body: String::new(),
            error: None,
        }
    }

    async fn exchange(
        &self,
        builder: reqwest::RequestBuilder,
        limits: &UpstreamLimits,
    ) -> Result<(u16, Vec<(String, String)>, Bytes), Failure> {
        let mut resp = builder.send().await.map_err(Failure::Transport)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Some(len) = resp.content_length() {
            if len as usize > limits.max_response_bytes {
                return Err(Failure::TooLarge(status));
            }
        }
        let mut body = BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limits.max_response_bytes {
                        return Err(Failure::TooLarge(status));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(Failure::Body(status, e)),
            }
        }
        Ok((status, headers, body.freeze()))
    }
}

/// The span of one upstream call; its outcome is added by [`annotate_span`].
fn upstream_span(step: &str, method: &http::Method, provider: &str) -> tracing::Span {
    tracing::debug_span!(
        "upstream",
        otel.name = format_args!("upstream {step}"),
        otel.kind = "client",
        provider,
        step,
        http.request.method = method.as_str(),
        url.full = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records a finished call's outcome on the current (upstream) span. Everything comes from
/// the already redacted event; the URL loses its query and fragment too.
fn annotate_span(event: &UpstreamEvent) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let url = event.url.split(['?', '#']).next().unwrap_or("");
    span.record("url.full", url);
    span.record("latency_ms", event.latency.as_millis() as u64);
    if let Some(status) = event.status {
        span.record("http.response.status_code", status);
    }
    if let Some(e) = &event.error {
        span.record("error", e.as_str());
    }
    if event.error.is_some() || event.status.is_none_or(|s| s >= 400) {
        span.record("otel.status_code", "error");
    }
}

enum Failure {
    Transport(reqwest::Error),
    Body(u16, reqwest::Error),
    TooLarge(u16),
}

fn failure_status(f: &Failure) -> Option<u16> {
    match f {
        Failure::Transport(_) => None,
        Failure::Body(s, _) | Failure::TooLarge(s) => Some(*s),
    }
}

impl Failure {
    fn to_error(&self, step: &str, limits: &UpstreamLimits) -> ProviderError {
        if let Failure::Transport(e) = self {
            if let Some(denied) = egress::find_denial(e) {
                return ProviderError::config(format!("{step}: {denied}"));
            }
        }
        if let Failure::Transport(e) | Failure::Body(_, e) = self {
            if let Some(refused) = crate::tls::classify_failure(step, e) {
                return refused;
            }
        }
        match self {
            Failure::Transport(e) | Failure::Body(_, e) if e.is_timeout() => {
                ProviderError::TimedOut {
                    step: step.to_owned(),
                    after: limits.total_timeout,
                }
            }
            Failure::Transport(e) if e.is_connect() => {
                ProviderError::transient(step, "cannot connect to the provider")
            }
            Failure::Transport(e) => {
                ProviderError::transient(step, format!("request failed: {}", describe(e)))
            }
            Failure::Body(status, e) => ProviderError::transient(
                step,
                format!("HTTP {status} response body was cut short: {}", describe(e)),
            ),
            Failure::TooLarge(status) => ProviderError::transient(
                step,
                format!(
                    "HTTP {status} response body exceeds {} bytes",
                    limits.max_response_bytes
                ),
            ),
        }
    }
}

/// reqwest's error text includes the URL, which may carry query secrets; keep only the kind
/// and the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    let kind = if e.is_body() || e.is_decode() {
        "body error"
    } else if e.is_request() {
        "request error"
    } else {
        "error"
    };
    match last {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

/// Collects events in memory; for tests of plugins.
#[derive(Default, Clone)]
pub struct MemorySink {
    events: Arc<tokio::sync::Mutex<Vec<UpstreamEvent>>>,
    notices: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl MemorySink {
    pub async fn events(&self) -> Vec<UpstreamEvent> {
        self.events.lock().await.clone()
    }

    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().clone()
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn record(&self, event: UpstreamEvent) {
        self.events.lock().await.push(event);
    }

    async fn notice(&self, message: String) {
        self.notices.lock().push(message);
    }
}

#[cfg(test)]
mod tests {
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
        let trusted =
            UpstreamCall::new(own, Arc::new(sink), Redactor::new([1; 32]), Egress::Trusted);
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
                ResponseTemplate::new(200).set_body_json(
                    serde_json::json!({"access_token": "canary-at", "expires_in": 60}),
                ),
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
}
