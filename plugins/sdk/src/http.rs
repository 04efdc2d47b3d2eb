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

use failure::{failure_status, Failure};
use span::{annotate_span, upstream_span};

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
        self.send_with_secret_fields(step, req, &[]).await
    }

    /// As [`send`](Self::send), for an answer that carries secrets under field names the
    /// redactor does not know as secret (e.g. a vendor's session `ticket`): when the body is
    /// JSON, the string values of these fields, at any depth, are learnt by the call's
    /// redactor before the event is redacted, so neither the event nor anything after it
    /// shows them.
    pub async fn send_with_secret_fields(
        &self,
        step: &str,
        req: UpstreamRequest,
        secret_response_fields: &[&str],
    ) -> Result<UpstreamResponse, ProviderError> {
        use tracing::Instrument;
        let span = upstream_span(step, &req.method, self.sink.provider());
        self.send_recorded(step, req, secret_response_fields)
            .instrument(span)
            .await
    }

    /// Learns the string values of `fields` anywhere in a JSON body (nothing otherwise).
    fn learn_response_fields(&self, body: &[u8], fields: &[&str]) {
        fn walk(redactor: &Redactor, value: &serde_json::Value, fields: &[&str]) {
            match value {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        if let (true, serde_json::Value::String(s)) =
                            (fields.contains(&k.as_str()), v)
                        {
                            redactor.learn(&Secret::from(s.as_str()));
                        }
                        walk(redactor, v, fields);
                    }
                }
                serde_json::Value::Array(items) => {
                    for v in items {
                        walk(redactor, v, fields);
                    }
                }
                _ => {}
            }
        }
        if fields.is_empty() {
            return;
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
            walk(&self.redactor, &json, fields);
        }
    }

    async fn send_recorded(
        &self,
        step: &str,
        req: UpstreamRequest,
        secret_response_fields: &[&str],
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
                self.learn_response_fields(&body, secret_response_fields);
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

/// A call that records into memory under the trusted egress policy: the SDK's unit tests
/// of wire formats.
#[cfg(test)]
pub(crate) fn test_call() -> UpstreamCall {
    UpstreamCall::new(
        UpstreamClient::new(UpstreamLimits::default()).unwrap(),
        Arc::new(MemorySink::default()),
        Redactor::new([0; 32]),
        Egress::Trusted,
    )
}

/// A provider's answer with `content_type` and `body`, for the SDK's unit tests.
#[cfg(test)]
pub(crate) fn test_response(status: u16, content_type: &str, body: &str) -> UpstreamResponse {
    UpstreamResponse {
        status,
        headers: vec![("content-type".into(), content_type.into())],
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

mod failure;
mod span;
#[cfg(test)]
mod tests;
