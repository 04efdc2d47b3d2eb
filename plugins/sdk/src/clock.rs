//! The one place in the SDK that reads the clock: the monotonic clock, to measure how long
//! an upstream call took. Clippy disallows `Instant::now` everywhere else (see clippy.toml).

use std::time::Instant;

/// Now on the monotonic clock: the SDK's one clock read.
#[allow(clippy::disallowed_methods)] // The one place in the SDK allowed to read the clock.
pub(crate) fn monotonic_now() -> Instant {
    Instant::now()
}
