//! Session revocation, checked on every use without a store round trip.
//!
//! A revoked session is a row in the store ([`Store::revoke_session`]), kept until the
//! session would have ended anyway (its start plus `bootstrap.session_max_lifetime_seconds`)
//! and then pruned. Each broker holds the set of revoked session ids in memory
//! ([`Revocations`]) and reloads it from the store every
//! `bootstrap.session_revocation_refresh_seconds` (5 s by default); a revocation made through
//! this broker is applied to its own set at once. Checking a session is a hash-set lookup.
//!
//! # The staleness bound
//! A session revoked through any replica sharing the store is refused by every replica within
//! `bootstrap.session_revocation_max_stale_seconds` (30 s by default) of the revocation — in
//! practice within one refresh interval. The bound holds whatever the store does: a snapshot is
//! dated from when its read *started*, and a snapshot older than the bound vouches for no
//! session ([`Verdict::Stale`]).
//!
//! # Fail closed
//! When the refreshes keep failing and the snapshot ages past the bound, every
//! session-authenticated request (and every bootstrap redemption, which starts a session) is
//! refused with a retryable 503 `store_unavailable` until a refresh succeeds: never a 401, so
//! clients keep their session and retry. A revoked session stays refused meanwhile (401).
//! JWTs from trusted issuers do not depend on this set.
//!
//! The decision is [`verdict`], a pure function of the revoked ids, the snapshot's age and the
//! bound.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::store::{SessionRevocation, Store, StoreError};

/// What to do with a request made with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not revoked, as of a snapshot within the bound.
    Valid,
    /// Revoked: refuse with the usual opaque 401.
    Revoked,
    /// The snapshot is older than the bound, so whether it was revoked is unknown: refuse with
    /// a retryable 503.
    Stale {
        /// How old the snapshot is.
        age: Duration,
    },
}

/// Decides a session's fate: revoked if the set holds it (however old the set), else stale if
/// the set is older than `max_stale`, else valid.
pub fn verdict(
    revoked: &HashSet<String>,
    age: Duration,
    max_stale: Duration,
    session_id: &str,
) -> Verdict {
    if revoked.contains(session_id) {
        Verdict::Revoked
    } else if age > max_stale {
        Verdict::Stale { age }
    } else {
        Verdict::Valid
    }
}

/// One load of the revoked ids.
#[derive(Debug)]
struct Snapshot {
    ids: HashSet<String>,
    /// When the read that produced it started.
    taken: Instant,
}

/// The revoked sessions, in memory. See the module documentation.
#[derive(Debug)]
pub struct Revocations {
    snapshot: ArcSwap<Snapshot>,
    /// Revocations made through this broker, with when they expire: merged into every
    /// snapshot until then, so a refresh whose read began before such a revocation committed
    /// cannot drop it. Held while a snapshot is replaced.
    local: Mutex<HashMap<String, SystemTime>>,
    max_stale: Duration,
}

impl Revocations {
    /// Loads the set from `store` as of `now` (wall clock, for expiry); refuses sessions once
    /// a snapshot is older than `max_stale`.
    pub async fn load(
        store: &dyn Store,
        now: SystemTime,
        max_stale: Duration,
    ) -> Result<Self, StoreError> {
        let taken = Instant::now();
        let ids = store
            .session_revocations(now)
            .await?
            .into_iter()
            .map(|r| r.session_id)
            .collect();
        Ok(Self {
            snapshot: ArcSwap::from_pointee(Snapshot { ids, taken }),
            local: Mutex::new(HashMap::new()),
            max_stale,
        })
    }

    fn local(&self) -> MutexGuard<'_, HashMap<String, SystemTime>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The verdict on `session_id` now.
    pub fn check(&self, session_id: &str) -> Verdict {
        let snapshot = self.snapshot.load();
        verdict(
            &snapshot.ids,
            snapshot.taken.elapsed(),
            self.max_stale,
            session_id,
        )
    }

    /// Applies a revocation this broker has just stored, at once.
    pub fn apply_local(&self, rec: &SessionRevocation) {
        let mut local = self.local();
        local.insert(rec.session_id.clone(), rec.expires_at);
        self.snapshot.rcu(|s| {
            let mut ids = s.ids.clone();
            ids.insert(rec.session_id.clone());
            Snapshot {
                ids,
                taken: s.taken,
            }
        });
    }

    /// Reloads the set from `store` as of `now`; returns how many sessions it holds. On error
    /// the previous set stays, and keeps ageing.
    pub async fn refresh(&self, store: &dyn Store, now: SystemTime) -> Result<usize, StoreError> {
        let taken = Instant::now();
        let mut ids: HashSet<String> = store
            .session_revocations(now)
            .await?
            .into_iter()
            .map(|r| r.session_id)
            .collect();
        let mut local = self.local();
        local.retain(|_, expires| *expires > now);
        ids.extend(local.keys().cloned());
        let len = ids.len();
        self.snapshot.store(Arc::new(Snapshot { ids, taken }));
        Ok(len)
    }

    /// How old the current snapshot is.
    pub fn age(&self) -> Duration {
        self.snapshot.load().taken.elapsed()
    }

    /// Whether the current snapshot is past the bound (sessions are refused with 503).
    pub fn is_stale(&self) -> bool {
        self.age() > self.max_stale
    }

    /// The bound.
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// How many revoked sessions the current snapshot holds.
    pub fn len(&self) -> usize {
        self.snapshot.load().ids.len()
    }

    /// Whether the current snapshot holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const BOUND: Duration = Duration::from_secs(30);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn revocation(id: &str, expires: u64) -> SessionRevocation {
        SessionRevocation {
            session_id: id.to_owned(),
            revoked_at: at(1_000),
            expires_at: at(expires),
        }
    }

    #[test]
    fn the_verdict_is_revoked_then_stale_then_valid() {
        let revoked: HashSet<String> = ["ss_1".to_owned()].into();
        let fresh = Duration::from_secs(5);
        let old = BOUND + Duration::from_millis(1);
        assert_eq!(verdict(&revoked, fresh, BOUND, "ss_1"), Verdict::Revoked);
        assert_eq!(
            verdict(&revoked, old, BOUND, "ss_1"),
            Verdict::Revoked,
            "a revoked session stays refused while the set is stale"
        );
        assert_eq!(verdict(&revoked, fresh, BOUND, "ss_2"), Verdict::Valid);
        assert_eq!(verdict(&revoked, BOUND, BOUND, "ss_2"), Verdict::Valid);
        assert_eq!(
            verdict(&revoked, old, BOUND, "ss_2"),
            Verdict::Stale { age: old }
        );
    }

    /// Another replica's revocation shows at the next refresh; until then the old set holds.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_picks_up_revocations_made_elsewhere() {
        let store = MemoryStore::new();
        let set = Revocations::load(&store, at(1_000), BOUND)
            .await
            .expect("load");
        assert_eq!(set.check("ss_1"), Verdict::Valid);
        store
            .revoke_session(&revocation("ss_1", 5_000))
            .await
            .expect("revoke elsewhere");
        assert_eq!(set.check("ss_1"), Verdict::Valid, "not refreshed yet");
        assert_eq!(set.refresh(&store, at(1_005)).await.expect("refresh"), 1);
        assert_eq!(set.check("ss_1"), Verdict::Revoked);
        // Once the session would have ended, its record is no longer loaded.
        assert_eq!(set.refresh(&store, at(5_000)).await.expect("refresh"), 0);
        assert_eq!(set.check("ss_1"), Verdict::Valid);
    }

    /// A local revocation holds at once, and survives a refresh whose read missed it.
    #[tokio::test(start_paused = true)]
    async fn a_local_revocation_holds_at_once_and_through_a_refresh() {
        let store = MemoryStore::new();
        let set = Revocations::load(&store, at(1_000), BOUND)
            .await
            .expect("load");
        // Applied locally, but (as if the refresh read the store first) not in the store.
        set.apply_local(&revocation("ss_1", 5_000));
        assert_eq!(set.check("ss_1"), Verdict::Revoked);
        set.refresh(&store, at(1_005)).await.expect("refresh");
        assert_eq!(set.check("ss_1"), Verdict::Revoked);
        set.refresh(&store, at(5_000)).await.expect("refresh");
        assert_eq!(set.check("ss_1"), Verdict::Valid, "expired locally too");
    }

    /// Without a successful refresh for longer than the bound, sessions are refused as
    /// stale; a refresh brings them back.
    #[tokio::test(start_paused = true)]
    async fn a_set_not_refreshed_within_the_bound_fails_closed() {
        let store = MemoryStore::new();
        let set = Revocations::load(&store, at(1_000), BOUND)
            .await
            .expect("load");
        tokio::time::advance(BOUND).await;
        assert_eq!(set.check("ss_1"), Verdict::Valid, "at the bound");
        assert!(!set.is_stale());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(set.check("ss_1"), Verdict::Stale { .. }));
        assert!(set.is_stale());
        set.refresh(&store, at(1_031)).await.expect("refresh");
        assert_eq!(set.check("ss_1"), Verdict::Valid);
        assert!(set.age() < Duration::from_secs(1));
    }
}
