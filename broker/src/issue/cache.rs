//! Calling upstreams (STS, Vault) politely: a credential cache, single-flight coalescing,
//! and per-backend concurrency and rate limits. Any backend can use it.
//!
//! [`Upstream`] is one backend's view:
//! - [`Upstream::call`] runs one upstream call under the backend's limits (a concurrency
//!   semaphore with a bounded wait, and a token-bucket rate limit), with a timeout, and
//!   counts it (`lanyard_upstream_calls_total`, `lanyard_upstream_duration_seconds`). A call
//!   refused by a limit fails at once with a retryable [`BackendError::Upstream`] (503
//!   `upstream_unavailable`), so a burst never piles up behind a slow upstream.
//! - [`Upstream::cached`] serves a credential per cache key — the backend derives the key
//!   from everything it would send upstream (role, rendered scope, identity-derived values,
//!   duration), so two requests share a credential exactly when they would have made the same
//!   upstream call. A cached credential is reused while it is [`Freshness::Fresh`] (the first
//!   `cache_refresh_fraction` of its life); identical concurrent requests share one upstream
//!   call (single flight); and when a refresh fails with a retryable error (the upstream is
//!   down) the previous credential keeps being served until it really expires. A refusal
//!   (`retryable: false`, e.g. STS `AccessDenied`) is passed on: the upstream said no, so
//!   the credential it issued earlier is not served on its behalf.
//!
//! The decisions are pure functions ([`freshness`], [`TokenBucket::try_take`]) tested without
//! a clock or an upstream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use lanyard::Secret;
use lanyard::clock::Clock;
use tokio::sync::{OnceCell, Semaphore};
// tokio's Instant is the monotonic clock at run time, and follows paused time in tests, so
// the rate limit can be tested without a stall refilling the bucket.
use tokio::time::Instant;
use tracing::warn;

use super::{BackendError, Issued};
use crate::config::UpstreamLimits;
use crate::metrics::Metrics;

/// Slots are swept for expired entries after this many upstream fetches.
const SWEEP_EVERY: u64 = 256;

/// An upstream credential held in the cache.
#[derive(Debug, Clone)]
pub struct CachedCredential {
    /// Secret fields, as the backend returns them.
    pub data: BTreeMap<String, Secret>,
    /// When upstream issued it (by the broker's clock).
    pub issued_at: SystemTime,
    /// When it stops working.
    pub expires_at: SystemTime,
    /// The upstream lease or session id.
    pub upstream_lease: Option<String>,
}

impl CachedCredential {
    fn to_issued(&self) -> Issued {
        Issued {
            data: self.data.clone(),
            expires_at: self.expires_at,
            upstream_lease: self.upstream_lease.clone(),
            renewable: false,
        }
    }
}

/// Builds a cache key from the fields of an upstream call: the SHA-256 (hex) of the fields in
/// order, each length-prefixed, so two different lists of fields never hash the same input.
pub struct CacheKey(aws_lc_rs::digest::Context);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey")
    }
}

impl Default for CacheKey {
    fn default() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl CacheKey {
    /// Adds a string.
    pub fn str(mut self, s: &str) -> Self {
        self.0.update(&(s.len() as u64).to_be_bytes());
        self.0.update(s.as_bytes());
        self
    }

    /// Adds an optional string (absent and empty differ).
    pub fn opt(mut self, s: Option<&str>) -> Self {
        self.0.update(&[u8::from(s.is_some())]);
        match s {
            Some(s) => self.str(s),
            None => self,
        }
    }

    /// Adds a number.
    pub fn u64(mut self, n: u64) -> Self {
        self.0.update(&n.to_be_bytes());
        self
    }

    /// Adds a list of strings.
    pub fn list<'a>(self, items: impl ExactSizeIterator<Item = &'a str>) -> Self {
        let len = items.len() as u64;
        items.fold(self.u64(len), Self::str)
    }

    /// The key.
    pub fn finish(self) -> String {
        hex::encode(self.0.finish().as_ref())
    }
}

/// Whether a cached credential may be handed out at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the reuse window: serve it.
    Fresh,
    /// Past the refresh threshold but still valid: fetch a new one, and serve this one only
    /// if the fetch fails.
    RefreshDue,
    /// Expired: never serve it.
    Expired,
}

/// Decides a cached credential's [`Freshness`] at `now`: fresh for the first
/// `refresh_fraction` of its lifetime (`issued_at..expires_at`), then due for refresh until
/// it expires. A `refresh_fraction` of 0 makes every credential due at once (no reuse).
pub fn freshness(
    issued_at: SystemTime,
    expires_at: SystemTime,
    refresh_fraction: f64,
    now: SystemTime,
) -> Freshness {
    if now >= expires_at {
        return Freshness::Expired;
    }
    let lifetime = expires_at
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO);
    let fraction = refresh_fraction.clamp(0.0, 1.0);
    let refresh_at = issued_at + lifetime.mul_f64(fraction);
    if now < refresh_at {
        Freshness::Fresh
    } else {
        Freshness::RefreshDue
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_second`, one taken per call.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `per_second` calls per second (burst of the same size).
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            capacity: rate,
            per_second: rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One in-progress (or just finished) upstream fetch that identical requests share.
#[derive(Debug, Default)]
struct Flight {
    result: OnceCell<Result<Arc<CachedCredential>, BackendError>>,
}

/// The cache slot for one key.
#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<CachedCredential>,
    flight: Mutex<Arc<Flight>>,
}

impl Slot {
    fn flight(&self) -> Arc<Flight> {
        self.flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces `done` with a fresh flight so the next refresh makes a new call.
    fn retire(&self, done: &Arc<Flight>) {
        let mut f = self.flight.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&f, done) {
            *f = Arc::new(Flight::default());
        }
    }
}

/// One backend's upstream: limits, metrics, and the credential cache.
pub struct Upstream {
    backend: &'static str,
    clock: Arc<dyn Clock>,
    limits: UpstreamLimits,
    metrics: Metrics,
    concurrency: Semaphore,
    bucket: Mutex<TokenBucket>,
    slots: DashMap<String, Arc<Slot>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("backend", &self.backend)
            .field("limits", &self.limits)
            .field("cached_keys", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream for `backend` (its kind, a metric label) with these limits.
    pub fn new(
        backend: &'static str,
        limits: UpstreamLimits,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Self {
        Self {
            backend,
            clock,
            concurrency: Semaphore::new(limits.max_concurrency.max(1)),
            bucket: Mutex::new(TokenBucket::new(
                limits.max_requests_per_second,
                Instant::now(),
            )),
            limits,
            metrics,
            slots: DashMap::new(),
            fetches: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    /// The broker's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn rejected(&self, message: String) -> BackendError {
        self.metrics
            .upstream_calls
            .with_label_values(&[self.backend, "rejected"])
            .inc();
        BackendError::Upstream {
            backend: self.backend,
            message,
            retryable: true,
        }
    }

    /// Runs one upstream call under the concurrency and rate limits, with the configured
    /// timeout, recording its outcome and latency.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let wait = Duration::from_millis(self.limits.max_queue_wait_ms);
        let _permit = match tokio::time::timeout(wait, self.concurrency.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(self.rejected(format!(
                    "broker limit reached: {} calls to {} already in flight (backends.{}.max_concurrency); retry shortly",
                    self.limits.max_concurrency,
                    self.backend,
                    self.backend.replace('-', "_"),
                )));
            }
        };
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(Instant::now());
        if !allowed {
            return Err(self.rejected(format!(
                "broker limit reached: more than {} calls per second to {} (backends.{}.max_requests_per_second); retry shortly",
                self.limits.max_requests_per_second,
                self.backend,
                self.backend.replace('-', "_"),
            )));
        }
        let started = Instant::now();
        let timeout = Duration::from_secs(self.limits.request_timeout_seconds);
        let result = match tokio::time::timeout(timeout, f()).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Upstream {
                backend: self.backend,
                message: format!("no answer within {} s", timeout.as_secs()),
                retryable: true,
            }),
        };
        self.metrics
            .upstream_duration
            .with_label_values(&[self.backend])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .upstream_calls
            .with_label_values(&[self.backend, outcome])
            .inc();
        result
    }

    /// The slot's credential if it is still fresh, counted as a cache hit.
    fn fresh_hit(&self, slot: &Slot, fraction: f64) -> Option<Arc<CachedCredential>> {
        let cur = slot.current.load_full()?;
        if freshness(cur.issued_at, cur.expires_at, fraction, self.clock.now()) != Freshness::Fresh
        {
            return None;
        }
        self.metrics
            .cache_hits
            .with_label_values(&[self.backend])
            .inc();
        Some(cur)
    }

    /// Serves the credential for `key`: from the cache while fresh, else from one upstream
    /// call (`fetch`, run under [`Upstream::call`]) shared by every concurrent request for
    /// the same key. If that call fails with a retryable error, a previous credential that
    /// has not expired is served instead.
    pub async fn cached<F, Fut>(&self, key: &str, fetch: F) -> Result<Issued, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedCredential, BackendError>>,
    {
        let fraction = self.limits.cache_refresh_fraction;
        let slot = self
            .slots
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Slot::default()))
            .clone();
        if let Some(cur) = self.fresh_hit(&slot, fraction) {
            return Ok(cur.to_issued());
        }
        let flight = slot.flight();
        let ran = AtomicBool::new(false);
        let result = flight
            .result
            .get_or_init(|| async {
                ran.store(true, Ordering::Relaxed);
                // A flight that finished just before this one began may have refreshed it.
                if let Some(cur) = self.fresh_hit(&slot, fraction) {
                    return Ok(cur);
                }
                let fetched = Arc::new(self.call(fetch).await?);
                slot.current.store(Some(fetched.clone()));
                Ok(fetched)
            })
            .await
            .clone();
        if ran.load(Ordering::Relaxed) {
            slot.retire(&flight);
            if self.fetches.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                self.sweep();
            }
        } else {
            self.metrics
                .coalesced_waiters
                .with_label_values(&[self.backend])
                .inc();
        }
        match result {
            Ok(c) => Ok(c.to_issued()),
            Err(e) => {
                let retryable = matches!(
                    e,
                    BackendError::Upstream {
                        retryable: true,
                        ..
                    }
                );
                if retryable
                    && let Some(cur) = slot.current.load_full()
                    && freshness(cur.issued_at, cur.expires_at, fraction, self.clock.now())
                        != Freshness::Expired
                {
                    warn!(backend = self.backend, error = %e, "upstream refresh failed; serving the cached credential until it expires");
                    self.metrics
                        .cache_hits
                        .with_label_values(&[self.backend])
                        .inc();
                    return Ok(cur.to_issued());
                }
                Err(e)
            }
        }
    }

    /// Drops expired credentials that no request is using.
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|c| c.expires_at > now)
        });
    }

    /// Drops every cached credential whose key starts with `prefix` (a backend's keys for one
    /// upstream role), so the next request for any of them makes a new upstream call; returns
    /// how many were dropped. A fetch already in flight completes into its dropped slot and is
    /// handed to the requests waiting on it only.
    pub fn forget_prefix(&self, prefix: &str) -> usize {
        let before = self.slots.len();
        self.slots.retain(|key, _| !key.starts_with(prefix));
        before.saturating_sub(self.slots.len())
    }

    /// Number of cache keys held (for tests and debugging).
    pub fn cached_keys(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use lanyard::clock::ManualClock;

    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn limits(fraction: f64) -> UpstreamLimits {
        UpstreamLimits {
            max_concurrency: 4,
            max_requests_per_second: 1000,
            max_queue_wait_ms: 50,
            cache_refresh_fraction: fraction,
            request_timeout_seconds: 5,
        }
    }

    fn upstream(clock: Arc<ManualClock>, l: UpstreamLimits) -> (Upstream, Metrics) {
        let metrics = Metrics::new();
        (Upstream::new("aws-sts", l, clock, metrics.clone()), metrics)
    }

    fn cred(clock: &ManualClock, life: u64, n: usize) -> CachedCredential {
        CachedCredential {
            data: BTreeMap::from([("n".to_owned(), Secret::new(n.to_string()))]),
            issued_at: clock.now(),
            expires_at: clock.now() + Duration::from_secs(life),
            upstream_lease: Some(format!("session-{n}")),
        }
    }

    fn count(m: &Metrics, outcome: &str) -> u64 {
        m.upstream_calls
            .with_label_values(&["aws-sts", outcome])
            .get()
    }

    #[test]
    fn freshness_follows_the_refresh_fraction_and_the_real_expiry() {
        let (issued, expires) = (at(0), at(1000));
        assert_eq!(freshness(issued, expires, 0.5, at(0)), Freshness::Fresh);
        assert_eq!(freshness(issued, expires, 0.5, at(499)), Freshness::Fresh);
        assert_eq!(
            freshness(issued, expires, 0.5, at(500)),
            Freshness::RefreshDue
        );
        assert_eq!(
            freshness(issued, expires, 0.5, at(999)),
            Freshness::RefreshDue
        );
        assert_eq!(
            freshness(issued, expires, 0.5, at(1000)),
            Freshness::Expired
        );
        assert_eq!(freshness(issued, expires, 0.9, at(899)), Freshness::Fresh);
        // No reuse at all with 0; an expiry before issue is simply expired.
        assert_eq!(
            freshness(issued, expires, 0.0, at(0)),
            Freshness::RefreshDue
        );
        assert_eq!(freshness(at(10), at(5), 0.5, at(6)), Freshness::Expired);
    }

    #[test]
    fn freshness_with_a_manual_clock() {
        let clock = ManualClock::at_unix(T0);
        let c = cred(&clock, 3600, 1);
        let f = |clock: &ManualClock| freshness(c.issued_at, c.expires_at, 0.75, clock.now());
        assert_eq!(f(&clock), Freshness::Fresh);
        clock.advance(Duration::from_secs(2699));
        assert_eq!(f(&clock), Freshness::Fresh);
        clock.advance(Duration::from_secs(1));
        assert_eq!(f(&clock), Freshness::RefreshDue);
        clock.advance(Duration::from_secs(900));
        assert_eq!(f(&clock), Freshness::Expired);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0), "burst of 3 used up");
        assert!(!b.try_take(t0 + Duration::from_millis(300)));
        assert!(
            b.try_take(t0 + Duration::from_millis(340)),
            "one token per 333 ms"
        );
        // A long pause refills only to capacity.
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(later) && b.try_take(later) && b.try_take(later));
        assert!(!b.try_take(later));
    }

    #[tokio::test]
    async fn reuses_until_the_threshold_then_fetches_once_more() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let (up, metrics) = upstream(clock.clone(), limits(0.5));
        let calls = AtomicUsize::new(0);
        let get = || async {
            up.cached("k", || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(cred(&clock, 1000, n))
            })
            .await
            .expect("issued")
        };
        let first = get().await;
        assert_eq!(first.data["n"].expose(), "1");
        clock.advance(Duration::from_secs(499));
        let again = get().await;
        assert_eq!(again.data["n"].expose(), "1", "still fresh");
        assert_eq!(again.expires_at, at(1000), "the real expiry, not a new one");
        clock.advance(Duration::from_secs(1));
        assert_eq!(get().await.data["n"].expose(), "2", "refreshed at 50%");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(count(&metrics, "ok"), 2);
        assert_eq!(metrics.cache_hits.with_label_values(&["aws-sts"]).get(), 1);
    }

    #[tokio::test]
    async fn identical_concurrent_requests_share_one_call() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let (up, metrics) = upstream(clock.clone(), limits(0.5));
        let up = Arc::new(up);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (up, calls, gate, clock) = (up.clone(), calls.clone(), gate.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                up.cached("same", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.expect("gate").forget();
                    Ok(cred(&clock, 1000, 7))
                })
                .await
            }));
        }
        // Let every task reach the flight, then release the one upstream call.
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.add_permits(1);
        for t in tasks {
            let issued = t.await.expect("join").expect("issued");
            assert_eq!(issued.data["n"].expose(), "7");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let coalesced = metrics
            .coalesced_waiters
            .with_label_values(&["aws-sts"])
            .get();
        let hits = metrics.cache_hits.with_label_values(&["aws-sts"]).get();
        assert_eq!(coalesced + hits, 49, "everyone else waited or hit");
        // Another key is another call.
        up.cached("other", || async { Ok(cred(&clock, 10, 8)) })
            .await
            .expect("other");
        assert_eq!(count(&metrics, "ok"), 2);
    }

    #[tokio::test]
    async fn an_outage_serves_the_cached_credential_until_it_expires() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let (up, metrics) = upstream(clock.clone(), limits(0.5));
        let down = || async {
            Err::<CachedCredential, _>(BackendError::Upstream {
                backend: "aws-sts",
                message: "unreachable".into(),
                retryable: true,
            })
        };
        up.cached("k", || async { Ok(cred(&clock, 1000, 1)) })
            .await
            .expect("first");
        clock.advance(Duration::from_secs(600)); // refresh due; upstream down
        let served = up.cached("k", down).await.expect("stale but valid");
        assert_eq!(served.data["n"].expose(), "1");
        assert_eq!(served.expires_at, at(1000));
        clock.advance(Duration::from_secs(399));
        up.cached("k", down).await.expect("one second left");
        clock.advance(Duration::from_secs(1));
        let err = up.cached("k", down).await.expect_err("expired");
        assert!(matches!(
            err,
            BackendError::Upstream {
                retryable: true,
                ..
            }
        ));
        assert_eq!(count(&metrics, "error"), 3);
        // A non-retryable failure is not papered over.
        let (up, _) = upstream(clock.clone(), limits(0.5));
        up.cached("k", || async { Ok(cred(&clock, 1000, 1)) })
            .await
            .expect("first");
        clock.advance(Duration::from_secs(600));
        let err = up
            .cached("k", || async {
                Err::<CachedCredential, _>(BackendError::Config("role gone".into()))
            })
            .await
            .expect_err("config errors surface");
        assert!(matches!(err, BackendError::Config(_)));
        // Nor is an upstream's refusal: it is not an outage.
        let err = up
            .cached("k", || async {
                Err::<CachedCredential, _>(BackendError::Upstream {
                    backend: "aws-sts",
                    message: "AccessDenied (HTTP 403)".into(),
                    retryable: false,
                })
            })
            .await
            .expect_err("refusals surface");
        assert!(matches!(
            err,
            BackendError::Upstream {
                retryable: false,
                ..
            }
        ));
    }

    // Paused time: a stall between the calls must not refill the bucket.
    #[tokio::test(start_paused = true)]
    async fn limits_refuse_with_a_retryable_upstream_error() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let mut l = limits(0.5);
        l.max_requests_per_second = 2;
        let (up, metrics) = upstream(clock.clone(), l);
        for _ in 0..2 {
            up.call(|| async { Ok(()) }).await.expect("within rate");
        }
        let err = up.call(|| async { Ok(()) }).await.expect_err("rate");
        match err {
            BackendError::Upstream {
                retryable, message, ..
            } => {
                assert!(retryable);
                assert!(message.contains("max_requests_per_second"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(count(&metrics, "rejected"), 1);

        let mut l = limits(0.5);
        l.max_concurrency = 1;
        let (up, metrics) = upstream(clock, l);
        let up = Arc::new(up);
        let release = Arc::new(Semaphore::new(0));
        let busy = {
            let (up, release) = (up.clone(), release.clone());
            tokio::spawn(async move {
                up.call(|| async move {
                    release.acquire().await.expect("gate").forget();
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let err = up.call(|| async { Ok(()) }).await.expect_err("busy");
        assert!(err.to_string().contains("max_concurrency"), "{err}");
        release.add_permits(1);
        busy.await.expect("join").expect("ok");
        assert_eq!(count(&metrics, "rejected"), 1);
        up.call(|| async { Ok(()) }).await.expect("free again");
    }

    #[tokio::test]
    async fn sweep_drops_expired_entries() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let (up, _) = upstream(clock.clone(), limits(0.5));
        up.cached("a", || async { Ok(cred(&clock, 10, 1)) })
            .await
            .expect("a");
        up.cached("b", || async { Ok(cred(&clock, 100, 2)) })
            .await
            .expect("b");
        clock.advance(Duration::from_secs(10));
        up.sweep();
        assert_eq!(up.cached_keys(), 1);
    }

    #[test]
    fn cache_keys_tell_every_field_list_apart() {
        let key = |f: fn(CacheKey) -> CacheKey| f(CacheKey::default()).finish();
        let keys = [
            key(|k| k.str("ab").str("c")),
            key(|k| k.str("a").str("bc")),
            key(|k| k.str("abc")),
            key(|k| k.opt(None).str("x")),
            key(|k| k.opt(Some("")).str("x")),
            key(|k| k.list(["a", "b"].into_iter()).str("c")),
            key(|k| k.list(["a"].into_iter()).str("b").str("c")),
            key(|k| k.u64(1)),
            key(|k| k.u64(2)),
            key(|k| k),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_eq!(a.len(), 64);
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key(|k| k.str("ab").str("c")), keys[0], "deterministic");
    }
}
