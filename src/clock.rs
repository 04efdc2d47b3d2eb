//! The one place that reads the clock, so tests (and benchmarks) can control time: the wall
//! clock through [`SystemClock`], the monotonic clock through [`monotonic_now`]. Clippy
//! disallows `SystemTime::now` and `Instant::now` everywhere else (see clippy.toml).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// Unix milliseconds as RFC 3339 in UTC (`2023-11-14T22:13:20.123Z`), as protobuf's JSON
/// mapping writes timestamps.
pub fn rfc3339(ms: UnixMillis) -> String {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
    .to_string()
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The wall clock as a [`SystemTime`]: the one wall-clock read, for code that works in
    /// `SystemTime` (the CLI's expiry countdown and relative times).
    #[allow(clippy::disallowed_methods)] // The one place allowed to read the wall clock.
    pub fn system_time(self) -> SystemTime {
        SystemTime::now()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        self.system_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Now on the monotonic clock, for deadlines and intervals: the one monotonic read. It is
/// tokio's clock, so tests that pause and advance tokio's time move it too.
#[allow(clippy::disallowed_methods)] // The one place allowed to read the monotonic clock.
pub fn monotonic_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// A clock that moves only when told to; starts at the system time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(SystemClock.now_ms())))
    }
}

impl ManualClock {
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, ms: UnixMillis) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A clock that runs `factor` times faster than the system clock, from the moment it was
/// made; benchmarks use it to cover many token lifetimes in a short run.
#[derive(Debug, Clone)]
pub struct AcceleratedClock {
    origin: UnixMillis,
    factor: i64,
}

impl AcceleratedClock {
    pub fn new(factor: u32) -> Self {
        Self {
            origin: SystemClock.now_ms(),
            factor: i64::from(factor.max(1)),
        }
    }
}

impl Clock for AcceleratedClock {
    fn now_ms(&self) -> UnixMillis {
        let real = SystemClock.now_ms();
        self.origin + (real - self.origin) * self.factor
    }
}
