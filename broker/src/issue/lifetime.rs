//! Credential lifetimes: how long to ask a backend for, and what the broker then hands out.
//!
//! Two pure steps around the backend call, tested without a server:
//! - [`plan`]: the requested TTL (or the role's default), clamped to the role's cap — what the
//!   backend is asked for and whether the request was clamped.
//! - [`TtlPlan::grant`]: the backend's reported expiry, capped at `now` + the role's cap
//!   whatever the backend says; the lifetime and `refresh_after` follow from it.
//!
//! Times are whole seconds ([`whole_seconds`]): JWT times are seconds, and TTLs should come
//! out exact.

use std::time::{Duration, SystemTime};

use lanyard::clock::unix_seconds;
use lanyard::refresh::REFRESH_FRACTION;

/// What to ask a backend for, before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPlan {
    /// The TTL to request: at least one second, at most the cap.
    pub ttl: Duration,
    /// Whether the requested TTL was above the role's cap.
    pub clamped: bool,
    /// The role's cap.
    cap: Duration,
}

/// The TTL to request for a role: `requested_seconds`, or the role's `default_seconds` when
/// none was asked for, clamped to `cap_seconds` and to at least one second.
pub fn plan(requested_seconds: Option<u64>, default_seconds: u64, cap_seconds: u64) -> TtlPlan {
    let wanted = requested_seconds.unwrap_or(default_seconds);
    TtlPlan {
        ttl: Duration::from_secs(wanted.min(cap_seconds).max(1)),
        clamped: wanted > cap_seconds,
        cap: Duration::from_secs(cap_seconds),
    }
}

/// What the broker hands out, after the backend call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// When the credential stops working, never later than `now` + the role's cap.
    pub expires_at: SystemTime,
    /// From `now` to `expires_at`; zero when the backend reported an expiry at or before now.
    pub lifetime: Duration,
    /// When a client should fetch a fresh one: [`REFRESH_FRACTION`] into the lifetime.
    pub refresh_after: SystemTime,
    /// Whether the requested TTL was clamped to the role's cap.
    pub clamped: bool,
}

impl Granted {
    /// The lifetime in whole seconds (the `ttl_seconds` a client and the audit log see).
    pub fn ttl_seconds(&self) -> u64 {
        self.lifetime.as_secs()
    }
}

impl TtlPlan {
    /// The credential's lifetime from the backend's reported expiry.
    ///
    /// Never more than the role's cap, whatever the backend says. A backend may return less
    /// than asked (an upstream lease, a cached credential's remaining life) or, where the
    /// upstream has a floor (STS: 900 s), more than asked but within the cap; the reported
    /// expiry is always the credential's real one.
    pub fn grant(&self, now: SystemTime, upstream_expires_at: SystemTime) -> Granted {
        let expires_at = upstream_expires_at.min(now + self.cap);
        let lifetime = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
        Granted {
            expires_at,
            lifetime,
            refresh_after: now + lifetime.mul_f64(REFRESH_FRACTION),
            clamped: self.clamped,
        }
    }
}

/// `t` truncated to a whole second.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_request_is_used_when_within_the_cap() {
        let p = plan(Some(300), 600, 3600);
        assert_eq!(p.ttl, secs(300));
        assert!(!p.clamped);
    }

    #[test]
    fn no_request_takes_the_roles_default() {
        let p = plan(None, 600, 3600);
        assert_eq!(p.ttl, secs(600));
        assert!(!p.clamped);
    }

    #[test]
    fn a_request_above_the_cap_is_clamped_to_it() {
        let p = plan(Some(7200), 600, 3600);
        assert_eq!(p.ttl, secs(3600));
        assert!(p.clamped);
        // At the cap exactly is not clamped.
        let p = plan(Some(3600), 600, 3600);
        assert_eq!(p.ttl, secs(3600));
        assert!(!p.clamped);
    }

    #[test]
    fn a_default_above_the_cap_is_clamped_too() {
        let p = plan(None, 7200, 3600);
        assert_eq!(p.ttl, secs(3600));
        assert!(p.clamped);
    }

    #[test]
    fn the_ttl_asked_for_is_at_least_one_second() {
        assert_eq!(plan(Some(0), 600, 3600).ttl, secs(1));
        assert_eq!(plan(Some(5), 600, 0).ttl, secs(1));
    }

    #[test]
    fn the_backends_expiry_is_used_when_within_the_cap() {
        let now = at(T0);
        let g = plan(Some(600), 600, 3600).grant(now, now + secs(600));
        assert_eq!(g.expires_at, at(T0 + 600));
        assert_eq!(g.lifetime, secs(600));
        assert_eq!(g.ttl_seconds(), 600);
        assert!(!g.clamped);
    }

    #[test]
    fn the_cap_beats_a_longer_upstream_expiry() {
        let now = at(T0);
        let g = plan(Some(600), 600, 3600).grant(now, now + secs(86_400));
        assert_eq!(g.expires_at, at(T0 + 3600));
        assert_eq!(g.ttl_seconds(), 3600);
    }

    #[test]
    fn a_shorter_upstream_expiry_wins() {
        let now = at(T0);
        let g = plan(Some(600), 600, 3600).grant(now, now + secs(120));
        assert_eq!(g.expires_at, at(T0 + 120));
        assert_eq!(g.ttl_seconds(), 120);
    }

    #[test]
    fn an_upstream_floor_above_the_request_but_within_the_cap_is_kept() {
        // STS issues at least 900 s whatever is asked.
        let now = at(T0);
        let p = plan(Some(300), 600, 3600);
        assert_eq!(p.ttl, secs(300));
        let g = p.grant(now, now + secs(900));
        assert_eq!(g.expires_at, at(T0 + 900));
        assert_eq!(g.ttl_seconds(), 900);
        // ... but not above a cap below the floor.
        let g = plan(Some(300), 300, 600).grant(now, now + secs(900));
        assert_eq!(g.expires_at, at(T0 + 600));
    }

    #[test]
    fn clamping_is_reported_after_the_call() {
        let now = at(T0);
        let g = plan(Some(7200), 600, 3600).grant(now, now + secs(3600));
        assert!(g.clamped);
        assert_eq!(g.ttl_seconds(), 3600);
    }

    #[test]
    fn an_expiry_at_or_before_now_has_a_zero_lifetime() {
        let now = at(T0);
        let p = plan(None, 600, 3600);
        let g = p.grant(now, now);
        assert_eq!(g.lifetime, Duration::ZERO);
        assert_eq!(g.refresh_after, now);
        let g = p.grant(now, at(T0 - 30));
        assert_eq!(g.expires_at, at(T0 - 30), "the real expiry is reported");
        assert_eq!(g.lifetime, Duration::ZERO);
        assert_eq!(g.refresh_after, now);
    }

    #[test]
    fn refresh_after_is_the_refresh_fraction_of_the_lifetime() {
        let now = at(T0);
        let g = plan(None, 1000, 3600).grant(now, now + secs(1000));
        let expected = now + secs(1000).mul_f64(REFRESH_FRACTION);
        assert_eq!(g.refresh_after, expected);
        assert!(g.refresh_after > now && g.refresh_after < g.expires_at);
        // Measured from the capped expiry, not the backend's.
        let g = plan(None, 1000, 1000).grant(now, now + secs(10_000));
        assert_eq!(g.refresh_after, expected);
    }

    #[test]
    fn whole_seconds_drops_the_fraction() {
        let t = at(T0) + Duration::from_millis(999);
        assert_eq!(whole_seconds(t), at(T0));
        assert_eq!(whole_seconds(at(T0)), at(T0));
    }
}
