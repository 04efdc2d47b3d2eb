//! The one place that reads the wall clock, so tests (and benchmarks) can control time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
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
