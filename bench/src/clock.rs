//! The gateway's clock, shared between the benchmark and the gateway process it starts:
//! both compute "gateway time" from the same origin and factor, so the load generator can
//! tell how much life a served token had left in the gateway's own time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on the wall clock.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `factor` times faster than the wall clock from `origin_ms` on; factor 1 is the
/// wall clock itself. Unlike `authgate::clock::AcceleratedClock` the origin is explicit, so
/// two processes agree on the time.
#[derive(Debug, Clone, Copy)]
pub struct SharedClock {
    pub origin_ms: i64,
    pub factor: i64,
}

impl SharedClock {
    /// A clock accelerated from now.
    pub fn starting_now(factor: u32) -> Self {
        Self {
            origin_ms: wall_ms(),
            factor: i64::from(factor.max(1)),
        }
    }

    /// Gateway time at a given wall-clock time.
    pub fn at_wall(&self, wall_ms: i64) -> i64 {
        self.origin_ms + (wall_ms - self.origin_ms) * self.factor
    }

    /// Real milliseconds that pass while `gateway_ms` of gateway time pass.
    pub fn real_ms(&self, gateway_ms: i64) -> i64 {
        gateway_ms / self.factor
    }
}

impl authgate::clock::Clock for SharedClock {
    fn now_ms(&self) -> i64 {
        self.at_wall(wall_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_one_is_the_wall_clock_and_acceleration_is_linear() {
        let c = SharedClock {
            origin_ms: 1_000,
            factor: 1,
        };
        assert_eq!(c.at_wall(5_000), 5_000);
        let c = SharedClock {
            origin_ms: 1_000,
            factor: 30,
        };
        assert_eq!(c.at_wall(1_000), 1_000);
        assert_eq!(c.at_wall(2_000), 31_000);
        assert_eq!(c.real_ms(60_000), 2_000);
    }
}
