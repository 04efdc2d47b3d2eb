//! A token bucket: the per-caller rate limit (checked after the caller is identified, so
//! one noisy caller cannot starve the others) and a credential's upstream request budget.

use crate::clock;
use parking_lot::Mutex;
use std::time::Duration;

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    // tokio's clock, not std's: tests pause and advance it.
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, clock::monotonic_now())),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock();
        let now = clock::monotonic_now();
        let elapsed = now.duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_bucket_limits_and_refills() {
        tokio::time::pause();
        let b = TokenBucket::new(10.0, 2.0);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok());
    }
}
