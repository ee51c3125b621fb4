//! When to refresh a credential, and how long to wait after a failure or a refusal. Pure
//! functions of times and a jitter value so they are tested without sleeping; the sidecar and
//! the SDK's background refresh share them.

use std::time::{Duration, SystemTime};

use crate::clock::parse_rfc3339;
use crate::wire::Credential;

/// Fraction of a credential's lifetime after which it is refreshed.
pub const REFRESH_FRACTION: f64 = 0.7;

/// Spread of the refresh point, as a fraction of the lifetime on each side of
/// [`REFRESH_FRACTION`].
pub const REFRESH_SPREAD: f64 = 0.1;

/// How long a background refresh waits after a refusal (an error that is not retryable:
/// 401, 403, an upstream's refusal, a spent bootstrap token) before it asks again: asking
/// sooner gets the same answer, and a fix (a policy, an IAM trust policy, a new token) is
/// picked up without a restart. See [`refused_delay`].
pub const REFUSED_RECHECK: Duration = Duration::from_secs(300);

/// A jitter value usable in arithmetic: clamped to `[0, 1]`, and 0.5 (no spread) when it is
/// not a number.
fn sane_jitter(jitter: f64) -> f64 {
    if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// How long to wait before refreshing a credential issued at `issued_at` that expires at
/// `expires_at`, seen at `now`. `jitter` is a uniform random value in `[0, 1)`.
///
/// About 70% of the lifetime, spread by ±10% of the lifetime, never earlier than now, and
/// never later than 80% of the lifetime (so well before expiry).
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
    let fraction = REFRESH_FRACTION + (sane_jitter(jitter) - 0.5) * 2.0 * REFRESH_SPREAD;
    // `lifetime` comes from a `Duration` and `fraction` is in [0.6, 0.8], so the product is a
    // finite, non-negative number that fits a `Duration`.
    let offset = Duration::from_secs_f64((lifetime * fraction).max(0.0));
    match issued_at.checked_add(offset) {
        Some(target) => target.duration_since(now).unwrap_or(Duration::ZERO),
        // A time beyond what the platform represents: refresh at the latest sensible moment.
        None => expires_at.duration_since(now).unwrap_or(Duration::ZERO),
    }
}

/// The broker's `refresh_after` and `expires_at` of a credential, parsed. `None` when either
/// is not RFC 3339.
pub fn parse_times(c: &Credential) -> Option<(SystemTime, SystemTime)> {
    Some((
        parse_rfc3339(&c.refresh_after)?,
        parse_rfc3339(&c.expires_at)?,
    ))
}

/// When a credential was issued, derived from its expiry and granted lifetime (both from the
/// broker, so clock skew between broker and client does not distort the lifetime).
pub fn issued_at(expires_at: SystemTime, ttl_seconds: u64) -> SystemTime {
    expires_at
        .checked_sub(Duration::from_secs(ttl_seconds))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The wait after a refusal: between 80% and all of [`REFUSED_RECHECK`] (4 to 5 minutes), so
/// the clients a policy change refused all at once do not ask again all at once. `jitter` is
/// uniform in `[0, 1)`.
pub fn refused_delay(jitter: f64) -> Duration {
    REFUSED_RECHECK.mul_f64(0.8 + 0.2 * sane_jitter(jitter))
}

/// Bounded exponential backoff with "equal jitter": each wait is between half and all of the
/// current ceiling, so retries from many clients spread out but never collapse to zero.
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
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .as_secs_f64();
        Duration::from_secs_f64(ceiling * (0.5 + 0.5 * sane_jitter(jitter)))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn refreshes_at_seventy_percent_without_spread() {
        // Issued at 1000, lives 1000 s, seen at issue time: 700 s.
        let d = refresh_delay(at(1_000), at(2_000), at(1_000), 0.5);
        assert_eq!(d.as_secs(), 700);
        // Seen 200 s later: 500 s left to wait.
        let d = refresh_delay(at(1_000), at(2_000), at(1_200), 0.5);
        assert_eq!(d.as_secs(), 500);
    }

    #[test]
    fn jitter_spreads_by_ten_percent_of_lifetime() {
        let lo = refresh_delay(at(0), at(1_000), at(0), 0.0);
        let hi = refresh_delay(at(0), at(1_000), at(0), 1.0);
        assert_eq!(lo.as_secs(), 600);
        assert_eq!(hi.as_secs(), 800);
        for i in 0..100 {
            let j = f64::from(i) / 100.0;
            let d = refresh_delay(at(0), at(1_000), at(0), j);
            assert!(d >= lo && d <= hi, "jitter {j} gave {d:?}");
        }
    }

    #[test]
    fn out_of_range_jitter_is_clamped_and_nan_does_not_panic() {
        let lo = refresh_delay(at(0), at(1_000), at(0), -5.0);
        let hi = refresh_delay(at(0), at(1_000), at(0), 7.0);
        let nan = refresh_delay(at(0), at(1_000), at(0), f64::NAN);
        assert_eq!(lo.as_secs(), 600);
        assert_eq!(hi.as_secs(), 800);
        assert_eq!(nan.as_secs(), 700);
    }

    #[test]
    fn zero_when_already_past_refresh_point_or_expiry() {
        assert_eq!(
            refresh_delay(at(0), at(1_000), at(900), 0.5),
            Duration::ZERO
        );
        assert_eq!(
            refresh_delay(at(0), at(1_000), at(5_000), 0.5),
            Duration::ZERO
        );
    }

    #[test]
    fn inverted_times_never_panic_and_refresh_now() {
        // Expiry before issue: no lifetime, so refresh as soon as possible.
        assert_eq!(
            refresh_delay(at(1_000), at(500), at(1_000), 0.5),
            Duration::ZERO
        );
    }

    #[test]
    fn parse_times_reads_both_fields() {
        let c = Credential {
            role: "r".into(),
            kind: "jwt".into(),
            data: BTreeMap::new(),
            expires_at: "2030-01-01T00:10:00Z".into(),
            refresh_after: "2030-01-01T00:07:00Z".into(),
            ttl_seconds: 600,
            lease_id: "l".into(),
            ttl_clamped: false,
        };
        let (refresh, expires) = parse_times(&c).expect("valid times");
        assert_eq!(
            expires.duration_since(refresh).ok(),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            issued_at(expires, c.ttl_seconds),
            expires - Duration::from_secs(600)
        );
        let bad = Credential {
            refresh_after: "soon".into(),
            ..c
        };
        assert_eq!(parse_times(&bad), None);
    }

    #[test]
    fn refusals_wait_four_to_five_minutes() {
        assert_eq!(refused_delay(0.0), Duration::from_secs(240));
        assert_eq!(refused_delay(1.0), REFUSED_RECHECK);
        assert_eq!(refused_delay(0.5), Duration::from_secs(270));
        assert_eq!(refused_delay(f64::NAN), Duration::from_secs(270));
        for i in 0..100 {
            let d = refused_delay(f64::from(i) / 100.0);
            assert!(
                d >= Duration::from_secs(240) && d <= Duration::from_secs(300),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..9).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.attempts(), 9);
    }

    #[test]
    fn backoff_survives_many_failures() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..10_000 {
            assert!(b.next_delay(0.99) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn backoff_jitter_stays_between_half_and_all_of_the_ceiling() {
        let mut low = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(low.next_delay(0.0), Duration::from_secs(2));
        let mut high = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(high.next_delay(1.0), Duration::from_secs(4));
        for i in 0..100 {
            let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
            let d = b.next_delay(f64::from(i) / 100.0);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
        let mut nan = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(nan.next_delay(f64::NAN), Duration::from_secs(3));
    }

    #[test]
    fn backoff_resets_after_success() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        assert_eq!(b.next_delay(1.0), Duration::from_secs(32));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(1.0), Duration::from_secs(1));
    }
}
