//! Failed-authentication records, limited per source so that no unauthenticated client can
//! flood the audit log (or the disk under it).
//!
//! Every failed authentication is still answered with the same opaque 401 and counted in
//! `lanyard_denials_total`; what is limited is how many of them become audit lines. Per
//! source and per window ([`Limits`]) the first `records_per_window` failures are recorded in
//! full; the rest are only counted, and when the window ends one summary record per source
//! says how many were left out ([`Summary`], written as
//! [`AuditRecord::auth_failures_suppressed`](super::AuditRecord::auth_failures_suppressed)).
//! So the log holds at most `records_per_window + 1` failure lines per source per window, and
//! the number of failures is never lost: full records plus the summaries' counts is every
//! failure.
//!
//! A source is the client's IPv4 address, or the /64 prefix of its IPv6 address (one host's
//! usual allotment: cycling through the addresses of one's own prefix gains nothing). At most
//! `max_sources` sources are tracked; failures from any further source share one extra slot,
//! [`Source::Other`], so memory is bounded and a client spraying addresses is limited too.
//!
//! [`FailureLimiter`] is the pure decision, with the time passed in; the broker holds it
//! behind a lock taken only on the failure path, never on an issuance.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Where failures are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses count as IPv4).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
    /// Every source beyond `max_sources`, together.
    Other,
}

impl Source {
    /// The source a client address counts under.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Self::V6Prefix(prefix)
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            Self::V6Prefix(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
            Self::Other => f.write_str("other (more sources than audit.auth_failures.max_sources)"),
        }
    }
}

/// The limits (`audit.auth_failures.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures recorded in full per source per window.
    pub records_per_window: u32,
    /// The window.
    pub window: Duration,
    /// Sources tracked at once; more share [`Source::Other`].
    pub max_sources: usize,
}

/// Whether to write a failure's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it in full.
    Record,
    /// Count it only; a [`Summary`] will say so.
    Suppress,
}

/// Failures of one source in one window that were not recorded in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source.
    pub source: Source,
    /// How many failures were left out.
    pub suppressed: u64,
    /// When the window began.
    pub window_start: SystemTime,
}

#[derive(Debug, Clone)]
struct Slot {
    start: SystemTime,
    recorded: u32,
    suppressed: u64,
}

impl Slot {
    fn new(start: SystemTime) -> Self {
        Self {
            start,
            recorded: 0,
            suppressed: 0,
        }
    }

    /// The window is over (or the clock went back before it began).
    fn ended(&self, now: SystemTime, window: Duration) -> bool {
        now.duration_since(self.start).map_or(true, |d| d >= window)
    }

    fn summary(&self, source: Source) -> Option<Summary> {
        (self.suppressed > 0).then_some(Summary {
            source,
            suppressed: self.suppressed,
            window_start: self.start,
        })
    }
}

/// Counts failures per source and window, and decides which are recorded.
#[derive(Debug, Clone)]
pub struct FailureLimiter {
    limits: Limits,
    slots: HashMap<Source, Slot>,
}

impl FailureLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: HashMap::new(),
        }
    }

    /// A failure from `ip` at `now`: whether to record it, and the summary of the source's
    /// previous window if that window ended with failures left out (write it first).
    pub fn admit(&mut self, ip: IpAddr, now: SystemTime) -> (Admit, Option<Summary>) {
        let mut source = Source::of(ip);
        if !self.slots.contains_key(&source) && self.slots.len() >= self.limits.max_sources {
            source = Source::Other;
        }
        let window = self.limits.window;
        let slot = self.slots.entry(source).or_insert_with(|| Slot::new(now));
        let mut summary = None;
        if slot.ended(now, window) {
            summary = slot.summary(source);
            *slot = Slot::new(now);
        }
        if slot.recorded < self.limits.records_per_window {
            slot.recorded += 1;
            (Admit::Record, summary)
        } else {
            slot.suppressed += 1;
            (Admit::Suppress, summary)
        }
    }

    /// Forgets the sources whose window ended at `now`, and returns the summaries of those
    /// that had failures left out. Run periodically: this is what frees the table.
    pub fn sweep(&mut self, now: SystemTime) -> Vec<Summary> {
        let window = self.limits.window;
        let mut out = Vec::new();
        self.slots.retain(|source, slot| {
            if !slot.ended(now, window) {
                return true;
            }
            out.extend(slot.summary(*source));
            false
        });
        out
    }

    /// Every pending summary, windows ended or not, and forgets everything (at shutdown).
    pub fn drain(&mut self) -> Vec<Summary> {
        self.slots
            .drain()
            .filter_map(|(source, slot)| slot.summary(source))
            .collect()
    }

    /// Sources tracked now (at most `max_sources + 1`).
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(1_000_000 + secs)
    }

    fn limiter(per_window: u32, max_sources: usize) -> FailureLimiter {
        FailureLimiter::new(Limits {
            records_per_window: per_window,
            window: Duration::from_secs(60),
            max_sources,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_first_failures_of_a_window_are_recorded_and_the_rest_summarised() {
        let mut l = limiter(3, 10);
        let a = ip("192.0.2.1");
        let verdicts: Vec<_> = (0..10).map(|i| l.admit(a, at(i)).0).collect();
        assert_eq!(&verdicts[..3], &[Admit::Record; 3]);
        assert_eq!(&verdicts[3..], &[Admit::Suppress; 7]);
        // Another source has its own budget.
        assert_eq!(l.admit(ip("192.0.2.2"), at(10)).0, Admit::Record);
        // Nothing to summarise while the window is open.
        assert!(l.sweep(at(59)).is_empty());
        assert_eq!(l.tracked(), 2);
        let summaries = l.sweep(at(60));
        assert_eq!(
            summaries,
            vec![Summary {
                source: Source::V4([192, 0, 2, 1]),
                suppressed: 7,
                window_start: at(0),
            }]
        );
        // 192.0.2.2's window (from 10 s) is still open; it left nothing out anyway.
        assert_eq!(l.tracked(), 1);
        assert!(l.sweep(at(70)).is_empty());
        assert_eq!(l.tracked(), 0, "ended windows are forgotten");
    }

    #[test]
    fn a_failure_after_the_window_returns_the_summary_and_starts_afresh() {
        let mut l = limiter(1, 10);
        let a = ip("198.51.100.7");
        assert_eq!(l.admit(a, at(0)), (Admit::Record, None));
        assert_eq!(l.admit(a, at(1)), (Admit::Suppress, None));
        assert_eq!(l.admit(a, at(2)), (Admit::Suppress, None));
        let (admit, summary) = l.admit(a, at(61));
        assert_eq!(admit, Admit::Record, "a new window");
        assert_eq!(summary.expect("summary").suppressed, 2);
        assert!(l.drain().is_empty(), "already summarised");
    }

    #[test]
    fn recorded_plus_suppressed_is_every_failure() {
        let mut l = limiter(5, 3);
        let mut recorded = 0u64;
        let mut summarised = 0u64;
        let mut n = 0u64;
        for step in 0..1_000u64 {
            let source = ip(&format!("10.0.{}.{}", step % 7, step % 5));
            n += 1;
            let (admit, summary) = l.admit(source, at(step / 3));
            recorded += u64::from(admit == Admit::Record);
            summarised += summary.map_or(0, |s| s.suppressed);
            if step % 50 == 0 {
                summarised += l
                    .sweep(at(step / 3))
                    .iter()
                    .map(|s| s.suppressed)
                    .sum::<u64>();
            }
        }
        summarised += l.drain().iter().map(|s| s.suppressed).sum::<u64>();
        assert_eq!(recorded + summarised, n);
    }

    #[test]
    fn sources_beyond_the_bound_share_one_slot() {
        let mut l = limiter(2, 4);
        for i in 0..4 {
            assert_eq!(l.admit(ip(&format!("10.0.0.{i}")), at(0)).0, Admit::Record);
        }
        // Thousands of new addresses: two records between them, the rest suppressed.
        let mut records = 0;
        for i in 0..5_000u32 {
            let a = IpAddr::from((0x0b00_0000u32 + i).to_be_bytes());
            records += usize::from(l.admit(a, at(1)).0 == Admit::Record);
        }
        assert_eq!(records, 2);
        assert_eq!(l.tracked(), 5, "max_sources plus the shared slot");
        let s = l.sweep(at(61));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].source, s[0].suppressed), (Source::Other, 4_998));
        assert!(s[0].source.to_string().contains("max_sources"));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut l = limiter(1, 10);
        assert_eq!(l.admit(ip("2001:db8:1:2::1"), at(0)).0, Admit::Record);
        assert_eq!(
            l.admit(ip("2001:db8:1:2:ffff::9"), at(0)).0,
            Admit::Suppress,
            "same /64"
        );
        assert_eq!(l.admit(ip("2001:db8:1:3::1"), at(0)).0, Admit::Record);
        assert_eq!(l.admit(ip("192.0.2.9"), at(0)).0, Admit::Record);
        assert_eq!(l.admit(ip("::ffff:192.0.2.9"), at(0)).0, Admit::Suppress);
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Source::of(ip("::ffff:192.0.2.9")).to_string(), "192.0.2.9");
    }

    #[test]
    fn a_clock_that_goes_back_starts_a_new_window() {
        let mut l = limiter(1, 10);
        let a = ip("192.0.2.1");
        l.admit(a, at(100));
        assert_eq!(l.admit(a, at(101)).0, Admit::Suppress);
        let (admit, summary) = l.admit(a, at(50));
        assert_eq!(admit, Admit::Record);
        assert_eq!(summary.expect("summary").suppressed, 1);
    }
}
