//! The injected clock. Nothing in lanyard reads the system time except [`SystemClock`];
//! expiry and refresh logic takes a [`Clock`] so tests move time by hand instead of sleeping.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the system time
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. For tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }

    /// A clock stopped at `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 in UTC with second precision, e.g. `2026-11-22T07:20:50Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| {
            dt.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-22T07:20:50.125Z`: for instants
/// a latency is measured from (a pod's admission).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let millis = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let secs = (millis / 1000) as i64;
    let whole = rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64));
    // `rfc3339` ends in `Z`; put the fraction before it.
    match whole.strip_suffix('Z') {
        Some(head) => format!("{head}.{:03}Z", millis % 1000),
        None => whole,
    }
}

/// Parses RFC 3339, keeping a fraction of a second when there is one.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = dt.unix_timestamp();
    if secs < 0 {
        return None;
    }
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs as u64)
            + Duration::from_nanos(u64::from(dt.nanosecond())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix(1_000);
        assert_eq!(unix_seconds(c.now()), 1_000);
        c.advance(Duration::from_secs(5));
        assert_eq!(unix_seconds(c.now()), 1_005);
    }

    #[test]
    fn millisecond_instants_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_125);
        let s = rfc3339_millis(t);
        assert!(s.ends_with(".125Z"), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(t));
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert!(rfc3339_millis(whole).ends_with(".000Z"));
        assert_eq!(parse_rfc3339(&rfc3339(whole)), Some(whole));
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let s = rfc3339(t);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_rfc3339(&s), Some(t));
    }
}
