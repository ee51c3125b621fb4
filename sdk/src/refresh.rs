//! When to refresh a credential, and how long to wait after a failure. Pure functions of
//! times and a jitter value so they are tested without sleeping; the sidecar and the SDK's
//! background refresh share them.

use std::time::{Duration, SystemTime};

/// Fraction of a credential's lifetime after which it is refreshed.
pub const REFRESH_FRACTION: f64 = 0.7;

/// How long to wait before refreshing a credential issued at `issued_at` that expires at
/// `expires_at`, seen at `now`. `jitter` is a uniform random value in `[0, 1)`.
///
/// About 70% of the lifetime, spread by ±10% of the lifetime, never earlier than now, and
/// never later than shortly before expiry.
pub fn refresh_delay(
    issued_at: SystemTime,
    expires_at: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let lifetime = expires_at
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let jitter = jitter.clamp(0.0, 1.0);
    let fraction = REFRESH_FRACTION + (jitter - 0.5) * 0.2;
    let target = issued_at + Duration::from_secs_f64(lifetime * fraction);
    target.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Bounded exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `base` and never waiting longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait; `jitter` is uniform in `[0, 1)`. The wait is between half and all of
    /// `min(max, base * 2^attempt)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let exp = self.attempt.min(30);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self
            .base
            .saturating_mul(1u32 << exp.min(20))
            .min(self.max)
            .as_secs_f64();
        Duration::from_secs_f64(ceiling * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}
