//! The load generator: unary gRPC calls over raw HTTP/2 (the `h2` crate tonic itself runs
//! on) with pre-encoded request frames, so that the client spends as little CPU per call as
//! possible and the server under test, not the client, is what saturates.
//!
//! Unlike h2load, every response is checked: HTTP 200, `grpc-status: 0` (in trailers, or in
//! the headers of a trailers-only error), and the exact reply size or a caller's decoder.
//! A run with any failed call is invalid.

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{Method, Request, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks a reply's message bytes (after the 5-byte gRPC frame prefix).
pub type Decoder = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// What to call and how to tell a good reply.
#[derive(Clone)]
pub struct Target {
    pub uri: Uri,
    /// Length-prefixed gRPC request frames, sent round-robin.
    pub frames: Vec<Bytes>,
    pub check: Check,
}

#[derive(Clone)]
pub enum Check {
    /// The reply message must be exactly this many bytes.
    ReplyLen(usize),
    /// The reply is decoded by this function (which may also record what it saw).
    Decode(Decoder),
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        path: &str,
        messages: &[Vec<u8>],
        check: Check,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            uri: format!("http://{addr}{path}").parse()?,
            frames: messages.iter().map(|m| frame(m)).collect(),
            check,
        })
    }
}

/// A gRPC length-prefixed message: uncompressed flag, big-endian length, bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    b.freeze()
}

/// HTTP/2 connections to one server.
#[derive(Clone)]
pub struct Connections(Vec<SendRequest<Bytes>>);

impl Connections {
    pub async fn open(addr: SocketAddr, n: usize) -> anyhow::Result<Self> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (client, conn) = h2::client::Builder::new()
                // Large windows: flow control must never be what limits the rate.
                .initial_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake::<_, Bytes>(tcp)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            v.push(client);
        }
        Ok(Self(v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, i: usize) -> &SendRequest<Bytes> {
        &self.0[i % self.0.len()]
    }
}

/// One call's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the call was sent, microseconds after the run started.
    pub start_us: u64,
    pub latency_us: u32,
}

/// What a run did. `errors` > 0 makes it invalid.
#[derive(Debug, Default)]
pub struct RunResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// gRPC message bytes received (frames included), over all good calls.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Good calls only.
    pub samples: Vec<Sample>,
    pub started: Option<Instant>,
}

impl RunResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn latencies_us(&self) -> Vec<u32> {
        self.samples.iter().map(|s| s.latency_us).collect()
    }

    fn merge(&mut self, other: RunResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.bytes += other.bytes;
        self.samples.extend(other.samples);
    }

    fn record(&mut self, start: Instant, run_start: Instant, outcome: Result<usize, String>) {
        match outcome {
            Ok(bytes) => {
                self.ok += 1;
                self.bytes += bytes as u64;
                self.samples.push(Sample {
                    start_us: start.duration_since(run_start).as_micros() as u64,
                    latency_us: start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
                });
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    /// An error unless every call succeeded with the expected reply.
    pub fn ensure_valid(&self, what: &str) -> anyhow::Result<()> {
        if self.errors > 0 || self.ok == 0 {
            anyhow::bail!(
                "{what}: run invalid: {} of {} calls failed (first: {})",
                self.errors,
                self.errors + self.ok,
                self.first_error.as_deref().unwrap_or("no call succeeded")
            );
        }
        Ok(())
    }
}

/// One unary call; returns the gRPC bytes received (prefix + message).
pub async fn call(
    conn: &SendRequest<Bytes>,
    target: &Target,
    frame: Bytes,
) -> Result<usize, String> {
    let mut sender = conn
        .clone()
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(target.uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut stream) = sender
        .send_request(req, false)
        .map_err(|e| format!("send: {e}"))?;
    stream
        .send_data(frame, true)
        .map_err(|e| format!("send body: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    grpc_ok(response.headers())?;
    let mut body = response.into_body();
    let decode = matches!(target.check, Check::Decode(_));
    let mut buf = BytesMut::new();
    let mut received = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
        if decode {
            buf.extend_from_slice(&chunk);
        }
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?
        .ok_or("no trailers and no grpc-status")?;
    grpc_ok(&trailers)?;
    if trailers.get("grpc-status").is_none() {
        return Err("trailers without grpc-status".into());
    }
    match &target.check {
        Check::ReplyLen(n) if received != n + 5 => Err(format!(
            "reply of {} bytes, expected {}",
            received.saturating_sub(5),
            n
        )),
        Check::ReplyLen(_) => Ok(received),
        Check::Decode(f) => {
            if buf.len() < 5 {
                return Err("reply shorter than a gRPC frame".into());
            }
            f(&buf[5..])?;
            Ok(received)
        }
    }
}

/// `grpc-status` absent (it comes later, in trailers) or 0.
fn grpc_ok(h: &http::HeaderMap) -> Result<(), String> {
    match h.get("grpc-status") {
        None => Ok(()),
        Some(v) if v == "0" => Ok(()),
        Some(v) => Err(format!(
            "grpc-status {} ({})",
            v.to_str().unwrap_or("?"),
            h.get("grpc-message")
                .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy())
                .unwrap_or_default()
        )),
    }
}

/// Closed loop: `streams` calls in flight on each connection, each sent as soon as the
/// previous one on its stream finished, for `duration`. Measures the most the server does.
pub async fn closed_loop(
    conns: &Connections,
    target: &Arc<Target>,
    streams: usize,
    duration: Duration,
) -> RunResult {
    let run_start = Instant::now();
    let deadline = run_start + duration;
    let mut workers = Vec::new();
    for w in 0..conns.len() * streams.max(1) {
        let conn = conns.get(w).clone();
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut r = RunResult::default();
            let mut i = w;
            while Instant::now() < deadline {
                let frame = target.frames[i % target.frames.len()].clone();
                i += 1;
                let start = Instant::now();
                let outcome = call(&conn, &target, frame).await;
                r.record(start, run_start, outcome);
            }
            r
        }));
    }
    collect(workers, run_start).await
}

/// Open loop: calls sent at `rate` per second whatever the replies do (so a slow reply
/// delays no later call), spread over the connections, for `duration`. Calls are released
/// every millisecond, as many as are due.
pub async fn open_loop(
    conns: &Connections,
    target: &Arc<Target>,
    rate: f64,
    duration: Duration,
) -> RunResult {
    let run_start = Instant::now();
    let mut calls = Vec::new();
    let mut sent: u64 = 0;
    loop {
        let now = Instant::now();
        let elapsed = now.duration_since(run_start);
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while sent < due {
            let i = sent as usize;
            let conn = conns.get(i).clone();
            let target = target.clone();
            calls.push(tokio::spawn(async move {
                let mut r = RunResult::default();
                let frame = target.frames[i % target.frames.len()].clone();
                let start = Instant::now();
                let outcome = call(&conn, &target, frame).await;
                r.record(start, run_start, outcome);
                r
            }));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    collect(calls, run_start).await
}

/// `n` calls released at once (frames round-robin), e.g. many callers on one cold key.
pub async fn burst(conns: &Connections, target: &Arc<Target>, n: usize) -> RunResult {
    let run_start = Instant::now();
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let conn = conns.get(i).clone();
        let target = target.clone();
        calls.push(tokio::spawn(async move {
            let mut r = RunResult::default();
            let frame = target.frames[i % target.frames.len()].clone();
            let start = Instant::now();
            let outcome = call(&conn, &target, frame).await;
            r.record(start, run_start, outcome);
            r
        }));
    }
    collect(calls, run_start).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<RunResult>>, run_start: Instant) -> RunResult {
    let mut total = RunResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(r),
            Err(e) => total.merge(RunResult {
                errors: 1,
                first_error: Some(format!("load task failed: {e}")),
                ..RunResult::default()
            }),
        }
    }
    total.elapsed = run_start.elapsed();
    total.started = Some(run_start);
    total
}

/// Makes the request frame for call number `i`.
pub type FrameMaker = Arc<dyn Fn(usize) -> Bytes + Send + Sync>;

/// Calls once for each index in `range` (frame from `make`), `concurrency` at a time:
/// e.g. one GetToken per distinct cache key to fill the cache.
pub async fn each_once(
    conns: &Connections,
    target: &Arc<Target>,
    make: FrameMaker,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> RunResult {
    let run_start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let end = range.end;
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let conn = conns.get(w).clone();
        let target = target.clone();
        let next = next.clone();
        let make = make.clone();
        workers.push(tokio::spawn(async move {
            let mut r = RunResult::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let start = Instant::now();
                let outcome = call(&conn, &target, make(i)).await;
                // Only counts matter here; keep no per-call samples for millions of calls.
                match outcome {
                    Ok(b) => {
                        r.ok += 1;
                        r.bytes += b as u64;
                    }
                    Err(_) => r.record(start, run_start, outcome),
                }
            }
            r
        }));
    }
    collect(workers, run_start).await
}

/// One call after another on the first connection, once for each index in `range` (frame
/// from `make`), every call timed: e.g. cold fetches, where nothing must queue.
pub async fn one_by_one(
    conns: &Connections,
    target: &Target,
    make: FrameMaker,
    range: std::ops::Range<usize>,
) -> RunResult {
    let run_start = Instant::now();
    let conn = conns.get(0);
    let mut r = RunResult::default();
    for i in range {
        let start = Instant::now();
        let outcome = call(conn, target, make(i)).await;
        r.record(start, run_start, outcome);
    }
    r.elapsed = run_start.elapsed();
    r.started = Some(run_start);
    r
}
