//! A local OAuth 2.0 token endpoint (`client_credentials`) standing in for a provider: it
//! counts every request per cache key, and answers after a configurable delay, with a
//! configurable `expires_in`, or with HTTP 503 while an outage is switched on.
//!
//! It also speaks the example plugin's two-step ticket flow (`example_ticket`, see
//! `authgate_plugin_sdk::testing::ticket`): `POST /session` with JSON `api_key` and
//! `api_secret` answers `{"ticket", "expires_in"}`, and `POST /token` with
//! `grant_type=ticket` redeems that ticket, once, for a token. `GET /stats` reports the
//! counters, for when the endpoint runs in a process of its own.
//!
//! A cache key is seen here as `<client_id> <scope>`: the benchmark gives each credential
//! its own client id (or `api_key`, for tickets), and the gateway sends the requested scopes.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
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
    sessions: AtomicU64,
    redeemed: AtomicU64,
    refused: AtomicU64,
    /// Tickets `/session` issued and `/token` has not redeemed yet, with their `api_key`.
    tickets: Mutex<HashMap<String, String>>,
}

/// The endpoint's counters, as `GET /stats` reports them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Requests received, on every route but `/stats`.
    pub requests: u64,
    /// Tickets issued by `/session`.
    pub sessions: u64,
    /// Tickets redeemed at `/token` (each at most once).
    pub redeemed: u64,
    /// `grant_type=ticket` requests refused: a ticket never issued or already used.
    pub refused: u64,
}

impl Stats {
    /// The counts from `earlier` to `self`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            requests: self.requests - earlier.requests,
            sessions: self.sessions - earlier.sessions,
            redeemed: self.redeemed - earlier.redeemed,
            refused: self.refused - earlier.refused,
        }
    }

    /// The counters of an endpoint running in another process.
    pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Stats> {
        Ok(reqwest::get(format!("http://{addr}/stats"))
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
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
            sessions: AtomicU64::new(0),
            redeemed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            tickets: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .route("/session", axum::routing::post(session))
            .route("/stats", axum::routing::get(stats))
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

    /// The ticket flow's `base_url` (`/session` and `/token` below it).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::SeqCst),
            sessions: self.sessions.load(Ordering::SeqCst),
            redeemed: self.redeemed.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
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

/// Waits the configured delay; then whether to answer (false during an outage).
async fn delay_then_ok(ep: &Endpoint) -> bool {
    let delay = ep.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    !ep.failing.load(Ordering::SeqCst)
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "application/json")],
        r#"{"error":"temporarily_unavailable"}"#,
    )
        .into_response()
}

fn json_ok(json: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        json.to_string(),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        serde_json::json!({ "error": code }).to_string(),
    )
        .into_response()
}

/// What a token request's grant makes of it.
enum Grant {
    /// Not `grant_type=ticket`.
    Other,
    /// A ticket `/session` issued to this `api_key` and nobody had redeemed; now redeemed.
    Ticket(String),
    /// A ticket never issued or already redeemed.
    Refused,
}

/// Redeems a `grant_type=ticket` request's ticket.
fn redeem_ticket(ep: &Endpoint, body: &[u8]) -> Grant {
    let mut grant = None;
    let mut ticket = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant = Some(v.into_owned()),
            "ticket" => ticket = Some(v.into_owned()),
            _ => {}
        }
    }
    if grant.as_deref() != Some("ticket") {
        return Grant::Other;
    }
    match ticket.and_then(|t| ep.tickets.lock().remove(&t)) {
        Some(api_key) => {
            ep.redeemed.fetch_add(1, Ordering::SeqCst);
            Grant::Ticket(api_key)
        }
        None => {
            ep.refused.fetch_add(1, Ordering::SeqCst);
            Grant::Refused
        }
    }
}

async fn token(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let arrived_wall_ms = crate::clock::wall_ms();
    ep.requests.fetch_add(1, Ordering::SeqCst);
    let tracking = ep.tracking.load(Ordering::SeqCst);
    let ticket_owner = match redeem_ticket(&ep, &body) {
        Grant::Other => None,
        Grant::Ticket(api_key) => Some(api_key),
        Grant::Refused => {
            ep.answered.fetch_add(1, Ordering::SeqCst);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    };
    let scope = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    let key = match (tracking, &ticket_owner) {
        (false, _) => String::new(),
        (true, Some(owner)) => format!("{owner} {}", scope.as_deref().unwrap_or_default()),
        (true, None) => request_key(&headers, &body),
    };
    let ok = delay_then_ok(&ep).await;
    let response = if ok {
        let mut json = serde_json::json!({
            "access_token": ep.mint(),
            "token_type": "Bearer",
            "expires_in": ep.expires_in.load(Ordering::SeqCst),
        });
        if let Some(s) = scope {
            json["scope"] = serde_json::Value::String(s);
        }
        json_ok(&json)
    } else {
        unavailable()
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

/// The ticket flow's first step: JSON `api_key` and `api_secret` (both non-empty) for a
/// one-time ticket, valid 60 s.
async fn session(State(ep): State<Arc<Endpoint>>, body: Bytes) -> Response {
    ep.requests.fetch_add(1, Ordering::SeqCst);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |name: &str| {
        doc[name]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let response = match (field("api_key"), field("api_secret")) {
        (Some(api_key), Some(_)) => {
            if delay_then_ok(&ep).await {
                let n = ep.sessions.fetch_add(1, Ordering::SeqCst);
                let ticket = format!("tk-{n:08x}");
                ep.tickets.lock().insert(ticket.clone(), api_key);
                json_ok(&serde_json::json!({ "ticket": ticket, "expires_in": 60 }))
            } else {
                unavailable()
            }
        }
        _ => oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    ep.answered.fetch_add(1, Ordering::SeqCst);
    response
}

async fn stats(State(ep): State<Arc<Endpoint>>) -> axum::Json<Stats> {
    axum::Json(ep.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ticket_is_issued_for_a_key_and_redeemed_once() {
        let ep = Endpoint::start(40).await.unwrap();
        let http = reqwest::Client::new();
        let session: serde_json::Value = http
            .post(format!("{}/session", ep.base_url()))
            .json(&serde_json::json!({ "api_key": "client-1", "api_secret": "s" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ticket = session["ticket"].as_str().unwrap().to_owned();
        let redeem = || {
            http.post(ep.token_url())
                .form(&[
                    ("grant_type", "ticket"),
                    ("ticket", &ticket),
                    ("scope", "a b"),
                ])
                .send()
        };
        let token: serde_json::Value = redeem().await.unwrap().json().await.unwrap();
        assert_eq!(token["access_token"].as_str().unwrap().len(), 40);
        assert_eq!(
            redeem().await.unwrap().status(),
            400,
            "a ticket is good once"
        );
        let refused = http
            .post(format!("{}/session", ep.base_url()))
            .json(&serde_json::json!({ "api_key": "client-1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let s = Stats::fetch(ep.addr).await.unwrap();
        assert_eq!(
            (s.requests, s.sessions, s.redeemed, s.refused),
            (4, 1, 1, 1)
        );
        assert_eq!(ep.counts_by_key().get("client-1 a b"), Some(&1));
    }

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
