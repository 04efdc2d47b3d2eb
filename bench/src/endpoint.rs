//! A local OAuth 2.0 token endpoint (`client_credentials`) standing in for a provider: it
//! counts every request per cache key, and answers after a configurable delay, with a
//! configurable `expires_in`, or with HTTP 503 while an outage is switched on.
//!
//! A cache key is seen here as `<client_id> <scope>`: the benchmark gives each credential
//! its own client id, and the gateway sends the requested scopes.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request the endpoint answered.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `<client_id> <scope>`.
    pub key: String,
    pub arrived: Instant,
    /// Wall-clock milliseconds at arrival, to place the request in gateway time.
    pub arrived_wall_ms: i64,
    pub answered: Instant,
    pub ok: bool,
}

/// The endpoint's knobs and counters; shared with the handler.
pub struct Endpoint {
    pub addr: SocketAddr,
    token_len: usize,
    delay_ms: AtomicU64,
    expires_in: AtomicU64,
    failing: AtomicBool,
    /// Keep a log of every request (off for the memory runs, which make millions).
    tracking: AtomicBool,
    requests: AtomicU64,
    answered: AtomicU64,
    issued: AtomicU64,
    hits: Mutex<Vec<Hit>>,
}

impl Endpoint {
    /// Binds 127.0.0.1 on an ephemeral port and serves until the runtime stops.
    /// Tokens are `token_len` characters long (at least 24).
    pub async fn start(token_len: usize) -> std::io::Result<Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let ep = Arc::new(Self {
            addr: listener.local_addr()?,
            token_len: token_len.max(24),
            delay_ms: AtomicU64::new(0),
            expires_in: AtomicU64::new(3600),
            failing: AtomicBool::new(false),
            tracking: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            hits: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(ep.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("token endpoint stopped: {e}");
            }
        });
        Ok(ep)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_expires_in(&self, seconds: u64) {
        self.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// While on, every request is answered `503 temporarily_unavailable`.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    pub fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::SeqCst);
    }

    /// Requests received since start, answered or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests answered (and logged, while tracking) since start.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// The log of answered requests (while tracking).
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    pub fn clear_hits(&self) {
        self.hits.lock().clear();
    }

    /// Answered requests per key, from the log.
    pub fn counts_by_key(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for h in self.hits.lock().iter() {
            *m.entry(h.key.clone()).or_insert(0) += 1;
        }
        m
    }

    /// A fresh token: a unique prefix (so tokens differ in their first bytes) padded with
    /// base64url characters to the configured length, like an opaque or JWT token.
    fn mint(&self) -> String {
        const FILL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let mut t = format!("{n:016x}.");
        let mut i = n as usize;
        while t.len() < self.token_len {
            t.push(char::from(FILL[i % FILL.len()]));
            i = i.wrapping_add(7);
        }
        t
    }
}

/// The key of a request: client id from HTTP Basic (or the form), and the scope.
fn request_key(headers: &HeaderMap, body: &[u8]) -> String {
    let mut client = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(id, _)| id.to_owned()))
        .unwrap_or_default();
    let mut scope = String::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "scope" => scope = v.into_owned(),
            "client_id" if client.is_empty() => client = v.into_owned(),
            _ => {}
        }
    }
    format!("{client} {scope}")
}

async fn token(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let arrived_wall_ms = crate::clock::wall_ms();
    ep.requests.fetch_add(1, Ordering::SeqCst);
    let tracking = ep.tracking.load(Ordering::SeqCst);
    let key = if tracking {
        request_key(&headers, &body)
    } else {
        String::new()
    };
    let delay = ep.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let ok = !ep.failing.load(Ordering::SeqCst);
    let response = if ok {
        let scope = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned());
        let mut json = serde_json::json!({
            "access_token": ep.mint(),
            "token_type": "Bearer",
            "expires_in": ep.expires_in.load(Ordering::SeqCst),
        });
        if let Some(s) = scope {
            json["scope"] = serde_json::Value::String(s);
        }
        (
            StatusCode::OK,
            [
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            json.to_string(),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json")],
            r#"{"error":"temporarily_unavailable"}"#,
        )
            .into_response()
    };
    if tracking {
        ep.hits.lock().push(Hit {
            key,
            arrived,
            arrived_wall_ms,
            answered: Instant::now(),
            ok,
        });
    }
    ep.answered.fetch_add(1, Ordering::SeqCst);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_basic_auth_and_scope() {
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("client-3:s3cret");
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(
            request_key(&h, b"grant_type=client_credentials&scope=a+b"),
            "client-3 a b"
        );
        assert_eq!(
            request_key(&HeaderMap::new(), b"client_id=x&scope=r"),
            "x r"
        );
    }
}
