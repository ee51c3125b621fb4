//! Renewal of issued upstream leases while the workload holds them.
//!
//! A Vault dynamic secret often comes with a lease shorter than the TTL the broker granted
//! (a database role's `default_ttl` of minutes, a lanyard role's TTL of hours). Rather than
//! hand the workload a credential that dies with that first lease, a backend that
//! [renews leases](super::Backend::renews_leases) gets the granted TTL as the credential's
//! lifetime, and the broker keeps the upstream lease alive by renewing it — in steps of the
//! upstream's own lease length, so a credential the broker stops caring about ends soon —
//! until the broker's lease ends (the role's cap: the lanyard role's `max_ttl_seconds`, or
//! the TTL the workload asked for). A lease revoked by its workload or by the expiry sweep
//! is renewed no more.
//!
//! The upstream may cap a renewal (Vault's role or mount `max_ttl`): the credential then
//! ends when the upstream says, earlier than handed out; the broker logs it
//! ([`Renewed::Capped`]) and stops renewing. The operator's fix is an upstream `max_ttl` at
//! least the lanyard role's `max_ttl_seconds`.
//!
//! The set of held leases lives in memory, and each lease renewed is marked in the store
//! (`LeaseRecord::renew_step_secs`): a starting broker takes them up
//! (`Broker::resume_renewals`), so a restart does not end them early. Replicas sharing a
//! PostgreSQL store renew one at a time (`Broker::renewal_tick`): the one holding the
//! `lease_renewals` job takes up every replica's leases from the store at each period
//! ([`Renewals::take_up`]), so a lost replica's leases go on being renewed (see CONFIG.md,
//! "Lease renewal").
//!
//! The decisions ([`Held::due`], [`Held::increment`], [`Held::after`]) are pure and tested
//! with plain times; [`Renewals`] holds the set.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// One lease the broker keeps renewing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The broker's lease id.
    pub lease_id: String,
    /// The backend's kind.
    pub backend: String,
    /// The role.
    pub role: String,
    /// The upstream lease id (as the backend returned it).
    pub upstream_lease: String,
    /// The broker's lease ends here: no renewal goes beyond.
    pub until: SystemTime,
    /// When the upstream lease ends unless renewed.
    pub upstream_expires_at: SystemTime,
    /// The upstream's lease length at issue: each renewal asks for this much.
    pub step: Duration,
}

/// What a renewal's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Extended as asked; keep renewing.
    Extended,
    /// Extended to the broker's lease end: nothing more to renew.
    Done,
    /// The upstream granted less than asked (its own cap): the credential ends at this
    /// time, before the broker's lease; renewing again cannot help.
    Capped(SystemTime),
}

impl Held {
    /// Whether to renew now: two thirds into the current upstream period, and the upstream
    /// lease ends before the broker's.
    pub fn due(&self, now: SystemTime) -> bool {
        self.upstream_expires_at < self.until && now + self.step / 3 >= self.upstream_expires_at
    }

    /// How long to ask for: one step, or what is left of the broker's lease if that is less;
    /// whole seconds, at least one.
    pub fn increment(&self, now: SystemTime) -> Duration {
        let left = self.until.duration_since(now).unwrap_or(Duration::ZERO);
        let secs = self.step.min(left).as_secs_f64().ceil() as u64;
        Duration::from_secs(secs.max(1))
    }

    /// Applies a renewal asked at `now` for `increment` that the upstream granted until
    /// `granted_until`. Allows a second of rounding.
    pub fn after(
        &mut self,
        now: SystemTime,
        increment: Duration,
        granted_until: SystemTime,
    ) -> Renewed {
        let wanted = (now + increment).min(self.until);
        self.upstream_expires_at = granted_until.max(self.upstream_expires_at);
        if granted_until + Duration::from_secs(1) < wanted {
            Renewed::Capped(granted_until)
        } else if self.upstream_expires_at >= self.until {
            Renewed::Done
        } else {
            Renewed::Extended
        }
    }
}

/// The leases being renewed, by broker lease id, and those this process stopped renewing
/// (so taking the store's leases up again, [`Renewals::take_up`], does not bring them back).
#[derive(Debug, Default)]
pub struct Renewals {
    held: Mutex<Sets>,
}

#[derive(Debug, Default)]
struct Sets {
    held: HashMap<String, Held>,
    /// Leases no longer renewed here (released, capped, done, upstream ended), until the
    /// broker's lease end.
    ended: HashMap<String, SystemTime>,
}

impl Sets {
    fn end(&mut self, lease_id: &str) -> bool {
        match self.held.remove(lease_id) {
            Some(h) => {
                self.ended.insert(h.lease_id, h.until);
                true
            }
            None => false,
        }
    }
}

impl Renewals {
    fn sets(&self) -> std::sync::MutexGuard<'_, Sets> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts renewing a lease.
    pub fn hold(&self, lease: Held) {
        let mut sets = self.sets();
        sets.ended.remove(&lease.lease_id);
        sets.held.insert(lease.lease_id.clone(), lease);
    }

    /// Starts renewing a lease found in the store, unless it is held already (its schedule
    /// is then known better here) or this process stopped renewing it; whether it did.
    pub fn take_up(&self, lease: Held) -> bool {
        let mut sets = self.sets();
        if sets.held.contains_key(&lease.lease_id) || sets.ended.contains_key(&lease.lease_id) {
            return false;
        }
        sets.held.insert(lease.lease_id.clone(), lease);
        true
    }

    /// Stops renewing a lease (revoked, expired); whether it was held.
    pub fn release(&self, lease_id: &str) -> bool {
        self.sets().end(lease_id)
    }

    /// The leases due at `now` (copies: the caller renews without holding the lock). Leases
    /// past the broker's end or their upstream expiry are dropped.
    pub fn due(&self, now: SystemTime) -> Vec<Held> {
        let mut sets = self.sets();
        let gone: Vec<String> = sets
            .held
            .values()
            .filter(|h| now >= h.until || now >= h.upstream_expires_at)
            .map(|h| h.lease_id.clone())
            .collect();
        for id in &gone {
            sets.end(id);
        }
        sets.ended.retain(|_, until| now < *until);
        sets.held.values().filter(|h| h.due(now)).cloned().collect()
    }

    /// Records a renewal's answer; returns what it means (and drops the lease when nothing
    /// more can be renewed). `None` when the lease was released meanwhile.
    pub fn renewed(
        &self,
        lease_id: &str,
        now: SystemTime,
        increment: Duration,
        granted_until: SystemTime,
    ) -> Option<Renewed> {
        let mut sets = self.sets();
        let h = sets.held.get_mut(lease_id)?;
        let outcome = h.after(now, increment, granted_until);
        if outcome != Renewed::Extended {
            sets.end(lease_id);
        }
        Some(outcome)
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.sets().held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn held(step: u64, until: u64) -> Held {
        Held {
            lease_id: "ls_1".into(),
            backend: "vault".into(),
            role: "db".into(),
            upstream_lease: "lease:db/creds/app/x".into(),
            until: at(until),
            upstream_expires_at: at(step),
            step: Duration::from_secs(step),
        }
    }

    #[test]
    fn taking_up_the_stores_leases_adds_only_those_neither_held_nor_ended_here() {
        let r = Renewals::default();
        assert!(r.take_up(held(300, 1000)));
        // Held already: its schedule here is kept.
        let mut again = held(300, 1000);
        again.upstream_expires_at = at(1);
        assert!(!r.take_up(again));
        assert_eq!(r.due(at(100)), Vec::new());
        // Released (revoked, refused): not taken up again while the broker's lease lasts.
        assert!(r.release("ls_1"));
        assert!(!r.take_up(held(300, 1000)));
        assert_eq!(r.len(), 0);
        // Renewed to its end: likewise.
        let mut other = held(300, 1000);
        other.lease_id = "ls_2".into();
        assert!(r.take_up(other.clone()));
        assert_eq!(
            r.renewed("ls_2", at(200), Duration::from_secs(800), at(1000)),
            Some(Renewed::Done)
        );
        assert!(!r.take_up(other));
        // Past the broker's lease end the memory of it goes (and the store no longer lists it).
        r.due(at(1000));
        assert!(r.take_up(held(300, 2000)));
    }

    #[test]
    fn a_lease_is_renewed_two_thirds_in_by_a_step_up_to_the_brokers_end() {
        let mut h = held(300, 1000);
        assert!(!h.due(at(199)));
        assert!(h.due(at(200)));
        assert_eq!(h.increment(at(200)), Duration::from_secs(300));
        assert_eq!(
            h.after(at(200), Duration::from_secs(300), at(500)),
            Renewed::Extended
        );
        assert!(!h.due(at(399)));
        assert!(h.due(at(400)));
        h.after(at(400), Duration::from_secs(300), at(700));
        // The last step asks only for what is left of the broker's lease.
        assert!(h.due(at(600)));
        assert_eq!(h.increment(at(600)), Duration::from_secs(300));
        assert_eq!(
            h.after(at(800), h.increment(at(800)), at(1000)),
            Renewed::Done
        );
        assert_eq!(h.increment(at(900)), Duration::from_secs(100));
        assert!(
            !h.due(at(999)),
            "covers the broker's lease: nothing to renew"
        );
    }

    #[test]
    fn an_upstream_cap_is_reported_once_and_ends_renewal() {
        let mut h = held(300, 3600);
        assert_eq!(
            h.after(at(200), Duration::from_secs(300), at(350)),
            Renewed::Capped(at(350))
        );
        // A second of rounding is not a cap.
        let mut h = held(300, 3600);
        assert_eq!(
            h.after(at(200), Duration::from_secs(300), at(499)),
            Renewed::Extended
        );
    }

    #[test]
    fn fractional_and_tiny_remainders_ask_for_whole_seconds() {
        let h = held(3, 10);
        let now = at(9) + Duration::from_millis(200);
        assert_eq!(h.increment(now), Duration::from_secs(1));
        assert_eq!(h.increment(at(11)), Duration::from_secs(1), "at least one");
    }

    #[test]
    fn the_set_drops_what_ended_and_what_cannot_be_renewed() {
        let r = Renewals::default();
        r.hold(held(300, 1000));
        r.hold(Held {
            lease_id: "ls_2".into(),
            ..held(60, 1000)
        });
        assert_eq!(r.due(at(50)).len(), 1, "ls_2 is due, ls_1 not yet");
        assert_eq!(
            r.renewed("ls_2", at(50), Duration::from_secs(60), at(70)),
            Some(Renewed::Capped(at(70)))
        );
        assert_eq!(r.len(), 1, "a capped lease is dropped");
        assert!(r.release("ls_1"));
        assert!(!r.release("ls_1"));
        assert!(r.is_empty());
        r.hold(held(300, 1000));
        assert!(
            r.due(at(300)).is_empty(),
            "its upstream lease ended unrenewed"
        );
        assert!(r.is_empty());
        assert_eq!(
            r.renewed("ls_1", at(0), Duration::from_secs(1), at(1)),
            None
        );
    }
}
