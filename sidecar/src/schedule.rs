//! When `run` fetches next: a pure state machine over times and jitter, so the decisions are
//! tested with a [`ManualClock`](lanyard::clock::ManualClock) instead of by sleeping.
//!
//! One fetch renews every role at once, so after a success the next fetch is due at the
//! earliest per-credential refresh point ([`refresh_delay`], ~70% ±10% of each lifetime).
//! After a failure a retry may fix, the wait comes from a [`Backoff`] of 1 s doubling to
//! 60 s; after a refusal (the broker says asking again gets the same answer) there is no
//! retry, only a recheck 4 to 5 minutes later ([`refused_delay`]). Either way the last good
//! credentials stay on disk; those close to expiry or past it are reported so the loop can
//! warn.

use std::time::{Duration, SystemTime};

use lanyard::refresh::{Backoff, refresh_delay, refused_delay};

/// First wait after a failure (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Shortest wait after a success, so a broker issuing near-expired credentials cannot make
/// the sidecar spin.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
/// Wait after a success that granted no credential at all.
pub const EMPTY_RECHECK: Duration = BACKOFF_MAX;
/// Fraction of a lifetime after which a credential that is still held is "expiring": the
/// latest refresh point has passed without a successful refresh.
pub const EXPIRING_FRACTION: f64 = 0.8;

/// The times of one credential currently on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Role name.
    pub role: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// What the loop does next.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// How long to sleep before the next fetch.
    pub wait: Duration,
    /// The role whose refresh point sets `wait` (none after a failure).
    pub due: Option<String>,
    /// Failures since the last success.
    pub failures: u32,
    /// Held credentials past their latest refresh point, with the time they have left.
    pub expiring: Vec<(String, Duration)>,
    /// Held credentials that have expired (their files are stale).
    pub expired: Vec<String>,
}

/// The refresh schedule: the credentials held, the backoff state and the refusals since
/// the last success.
#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: Backoff,
    refusals: u32,
    held: Vec<Held>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new()
    }
}

impl Schedule {
    /// Nothing held yet; backoff of [`BACKOFF_BASE`] to [`BACKOFF_MAX`].
    pub fn new() -> Self {
        Self {
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_MAX),
            refusals: 0,
            held: Vec::new(),
        }
    }

    /// The credentials currently held (from the last success).
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    /// A fetch succeeded with `fresh`: hold them, reset the backoff and wait until the
    /// earliest refresh point. `jitter` is uniform in `[0, 1)`.
    pub fn on_success(&mut self, fresh: Vec<Held>, now: SystemTime, jitter: f64) -> Decision {
        self.backoff.reset();
        self.refusals = 0;
        self.held = fresh;
        let next = self
            .held
            .iter()
            .map(|h| {
                (
                    refresh_delay(h.issued_at, h.expires_at, now, jitter),
                    &h.role,
                )
            })
            .min_by_key(|(d, _)| *d);
        let (wait, due) = match next {
            Some((d, role)) => (d.max(MIN_REFRESH_DELAY), Some(role.clone())),
            None => (EMPTY_RECHECK, None),
        };
        let (expiring, expired) = expiry_status(&self.held, now);
        Decision {
            wait,
            due,
            failures: 0,
            expiring,
            expired,
        }
    }

    /// A fetch failed in a way a retry may fix: keep what is held and back off. `jitter` is
    /// uniform in `[0, 1)`.
    pub fn on_failure(&mut self, now: SystemTime, jitter: f64) -> Decision {
        let wait = self.backoff.next_delay(jitter);
        self.after_failure(wait, now)
    }

    /// The broker refused the fetch (asking again gets the same answer until someone fixes
    /// the cause): keep what is held, do not retry, and recheck after [`refused_delay`] (4
    /// to 5 minutes) so a fix is picked up without a restart. The backoff stays where it
    /// was. `jitter` is uniform in `[0, 1)`.
    pub fn on_refusal(&mut self, now: SystemTime, jitter: f64) -> Decision {
        self.refusals = self.refusals.saturating_add(1);
        self.after_failure(refused_delay(jitter), now)
    }

    fn after_failure(&self, wait: Duration, now: SystemTime) -> Decision {
        let (expiring, expired) = expiry_status(&self.held, now);
        Decision {
            wait,
            due: None,
            failures: self.backoff.attempts().saturating_add(self.refusals),
            expiring,
            expired,
        }
    }
}

/// Splits `held` into those past [`EXPIRING_FRACTION`] of their lifetime (with the time they
/// have left) and those already expired.
pub fn expiry_status(held: &[Held], now: SystemTime) -> (Vec<(String, Duration)>, Vec<String>) {
    let mut expiring = Vec::new();
    let mut expired = Vec::new();
    for h in held {
        let Ok(left) = h.expires_at.duration_since(now) else {
            expired.push(h.role.clone());
            continue;
        };
        if left.is_zero() {
            expired.push(h.role.clone());
            continue;
        }
        let lifetime = h
            .expires_at
            .duration_since(h.issued_at)
            .unwrap_or(Duration::ZERO);
        if left.as_secs_f64() <= lifetime.as_secs_f64() * (1.0 - EXPIRING_FRACTION) {
            expiring.push((h.role.clone(), left));
        }
    }
    (expiring, expired)
}

#[cfg(test)]
mod tests {
    use lanyard::clock::{Clock, ManualClock};

    use super::*;

    fn held(role: &str, clock: &ManualClock, ttl_secs: u64) -> Held {
        let now = clock.now();
        Held {
            role: role.into(),
            issued_at: now,
            expires_at: now + Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn earliest_refresh_point_wins() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let mut s = Schedule::new();
        let d = s.on_success(
            vec![held("long", &clock, 3_600), held("short", &clock, 600)],
            clock.now(),
            0.5,
        );
        assert_eq!(d.due.as_deref(), Some("short"));
        assert_eq!(d.wait, Duration::from_secs(420)); // 70% of 600 s
        assert!(d.expiring.is_empty() && d.expired.is_empty());

        // Jitter moves it within ±10% of the short lifetime.
        let lo = s.on_success(s.held().to_vec(), clock.now(), 0.0).wait;
        let hi = s.on_success(s.held().to_vec(), clock.now(), 1.0).wait;
        assert_eq!((lo.as_secs(), hi.as_secs()), (360, 480));
    }

    #[test]
    fn credentials_seen_later_wait_less() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let fresh = vec![held("a", &clock, 1_000)];
        clock.advance(Duration::from_secs(300));
        let d = Schedule::new().on_success(fresh, clock.now(), 0.5);
        assert_eq!(d.wait, Duration::from_secs(400));
    }

    #[test]
    fn never_spins_on_near_expired_credentials() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let fresh = vec![held("a", &clock, 10)];
        clock.advance(Duration::from_secs(9));
        let d = Schedule::new().on_success(fresh, clock.now(), 0.5);
        assert_eq!(d.wait, MIN_REFRESH_DELAY);
        assert_eq!(d.expiring.len(), 1);
    }

    #[test]
    fn empty_grant_rechecks_later() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let d = Schedule::new().on_success(Vec::new(), clock.now(), 0.5);
        assert_eq!((d.wait, d.due), (EMPTY_RECHECK, None));
    }

    #[test]
    fn failures_back_off_keep_credentials_and_warn_near_expiry() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let mut s = Schedule::new();
        let first = s.on_success(vec![held("app", &clock, 100)], clock.now(), 0.5);
        assert_eq!(first.wait, Duration::from_secs(70));

        // The refresh at 70 s fails, again and again: waits double up to the cap.
        clock.advance(first.wait);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let d = s.on_failure(clock.now(), 1.0);
            waits.push(d.wait.as_secs());
            assert_eq!(s.held().len(), 1, "last good credential is kept");
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);

        // Before 80% of the lifetime: no warning; after: expiring with time left; after
        // expiry: expired.
        let mut s = Schedule::new();
        s.on_success(vec![held("app", &clock, 100)], clock.now(), 0.5);
        clock.advance(Duration::from_secs(75));
        let d = s.on_failure(clock.now(), 0.0);
        assert!(d.expiring.is_empty() && d.expired.is_empty());
        assert_eq!(d.failures, 1);
        assert_eq!(d.wait, Duration::from_millis(500));
        clock.advance(Duration::from_secs(10));
        let d = s.on_failure(clock.now(), 0.0);
        assert_eq!(
            d.expiring,
            vec![("app".to_owned(), Duration::from_secs(15))]
        );
        clock.advance(Duration::from_secs(15));
        let d = s.on_failure(clock.now(), 0.0);
        assert_eq!(d.expired, vec!["app".to_owned()]);
        assert!(d.expiring.is_empty());

        // A success resets the backoff.
        let d = s.on_success(vec![held("app", &clock, 100)], clock.now(), 0.5);
        assert_eq!(d.failures, 0);
        assert!(d.expired.is_empty());
        assert_eq!(s.on_failure(clock.now(), 1.0).wait, BACKOFF_BASE);
    }

    #[test]
    fn refusals_are_rechecked_minutes_later_and_keep_credentials() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let mut s = Schedule::new();
        let first = s.on_success(vec![held("app", &clock, 1_000)], clock.now(), 0.5);
        clock.advance(first.wait);
        // One outage, then refusals: no doubling, a recheck in 4 to 5 minutes each time.
        assert_eq!(s.on_failure(clock.now(), 1.0).wait, BACKOFF_BASE);
        let d = s.on_refusal(clock.now(), 1.0);
        assert_eq!(d.wait, lanyard::refresh::REFUSED_RECHECK);
        assert_eq!((d.failures, d.due.as_deref()), (2, None));
        assert_eq!(s.held().len(), 1, "the last good credential is kept");
        let d = s.on_refusal(clock.now(), 0.0);
        assert_eq!(d.wait, Duration::from_secs(240));
        assert_eq!(d.failures, 3);
        // The backoff was left where the outage put it.
        assert_eq!(s.on_failure(clock.now(), 1.0).wait, BACKOFF_BASE * 2);
        // Near and past expiry the refusal reports it like any failure.
        clock.advance(Duration::from_secs(250));
        let d = s.on_refusal(clock.now(), 0.5);
        assert_eq!(
            d.expiring,
            vec![("app".to_owned(), Duration::from_secs(50))]
        );
        clock.advance(Duration::from_secs(50));
        assert_eq!(
            s.on_refusal(clock.now(), 0.5).expired,
            vec!["app".to_owned()]
        );
        // A success clears the count.
        let d = s.on_success(vec![held("app", &clock, 1_000)], clock.now(), 0.5);
        assert_eq!(d.failures, 0);
        assert_eq!(s.on_refusal(clock.now(), 0.5).failures, 1);
    }

    #[test]
    fn first_fetch_failing_backs_off_with_nothing_held() {
        let clock = ManualClock::at_unix(1_900_000_000);
        let mut s = Schedule::new();
        let d = s.on_failure(clock.now(), 1.0);
        assert_eq!(d.wait, BACKOFF_BASE);
        assert!(d.expiring.is_empty() && d.expired.is_empty());
    }
}
