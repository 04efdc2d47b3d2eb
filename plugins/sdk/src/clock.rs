//! The one place in the SDK that reads the clock: the monotonic clock, to measure how long
//! an upstream call took, and the wall clock, for the `iat`/`exp` of signed assertions.
//! Clippy disallows `Instant::now` and `SystemTime::now` everywhere else (see clippy.toml).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now on the monotonic clock: the SDK's one monotonic read.
#[allow(clippy::disallowed_methods)] // The one place in the SDK allowed to read the clock.
pub(crate) fn monotonic_now() -> Instant {
    Instant::now()
}

/// Seconds since the Unix epoch on the wall clock: the SDK's one wall-clock read.
#[allow(clippy::disallowed_methods)] // The one place in the SDK allowed to read the clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
