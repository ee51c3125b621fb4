//! An in-memory [`Store`], for tests and for embedding the broker where nothing needs to
//! survive a restart.
//!
//! **Not persistent**: every bootstrap token, session revocation, lease, signing key, audit
//! chain head and local secret is lost when the value is dropped. Use the SQLite store for a real broker.
//!
//! It keeps the same contract as every store (the shared suite in `store/suite.rs` checks it),
//! so a test written against it holds for the real one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use lanyard::Secret;

use super::{
    AdmissionRecord, BootstrapTokenRecord, ChainHead, ExemptionRecord, LeaseRecord,
    MAX_LOCAL_SECRET_BYTES, RedeemedToken, ReserveOutcome, SessionRevocation, SigningKeyRecord,
    Store, StoreError, VerdictRecord,
};

/// A [`Store`] held in process memory (a mutex over hash maps). Not persistent; see the
/// module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bootstrap tokens by token hash.
    bootstrap: HashMap<String, TokenState>,
    leases: HashMap<String, LeaseRecord>,
    /// Revoked sessions by session id.
    session_revocations: HashMap<String, SessionRevocation>,
    /// Insertion order; sorted by `created_at` when read.
    signing_keys: Vec<SigningKeyRecord>,
    audit_head: Option<ChainHead>,
    secrets: HashMap<String, Secret>,
    /// Verdicts by (digest, ruleset version).
    verdicts: std::collections::BTreeMap<(String, String), VerdictRecord>,
    exemptions: HashMap<String, ExemptionRecord>,
    /// Admission records by pod UID (ordered, for paging).
    admission: std::collections::BTreeMap<String, AdmissionRecord>,
}

/// A bootstrap token and where its redemption stands.
#[derive(Debug)]
struct TokenState {
    rec: BootstrapTokenRecord,
    /// The reservation that holds it, or held it when it committed.
    hold: Option<Hold>,
    /// When its redemption committed.
    redeemed_at: Option<SystemTime>,
}

#[derive(Debug)]
struct Hold {
    reservation: String,
    at: SystemTime,
    until: SystemTime,
}

impl TokenState {
    /// Whether `reservation` holds the token and it is not redeemed.
    fn held_by(&self, reservation: &str) -> bool {
        self.redeemed_at.is_none()
            && self
                .hold
                .as_ref()
                .is_some_and(|h| h.reservation == reservation)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: every operation
        // mutates with a single insert/assignment after its checks.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn insert_bootstrap_token(&self, rec: &BootstrapTokenRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.bootstrap.contains_key(&rec.token_hash) {
            return Err(StoreError::Duplicate(format!(
                "bootstrap token hash (token id {})",
                rec.token_id
            )));
        }
        if inner
            .bootstrap
            .values()
            .any(|t| t.rec.token_id == rec.token_id)
        {
            return Err(StoreError::Duplicate(format!(
                "bootstrap token id {}",
                rec.token_id
            )));
        }
        inner.bootstrap.insert(
            rec.token_hash.clone(),
            TokenState {
                rec: rec.clone(),
                hold: None,
                redeemed_at: None,
            },
        );
        Ok(())
    }

    async fn reserve_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<ReserveOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(t) = inner.bootstrap.get_mut(token_hash) else {
            return Ok(ReserveOutcome::Unknown);
        };
        if let Some(redeemed_at) = t.redeemed_at {
            return Ok(ReserveOutcome::Redeemed(RedeemedToken {
                token: t.rec.clone(),
                redeemed_at,
                session_started: t.hold.as_ref().map_or(redeemed_at, |h| h.at),
            }));
        }
        // Reservable while `now < expires_at`, as in every store.
        if now >= t.rec.expires_at {
            return Ok(ReserveOutcome::Expired(t.rec.clone()));
        }
        if let Some(h) = t.hold.as_ref().filter(|h| h.until > now) {
            return Ok(ReserveOutcome::Held {
                token: t.rec.clone(),
                until: h.until,
            });
        }
        t.hold = Some(Hold {
            reservation: reservation.to_owned(),
            at: now,
            until,
        });
        Ok(ReserveOutcome::Reserved(t.rec.clone()))
    }

    async fn commit_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.bootstrap.get_mut(token_hash) {
            Some(t) if t.held_by(reservation) => {
                t.redeemed_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.bootstrap.get_mut(token_hash) {
            Some(t) if t.held_by(reservation) => {
                t.hold = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_bootstrap_token(&self, token_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let hash = inner
            .bootstrap
            .iter()
            .find(|(_, t)| t.rec.token_id == token_id && t.redeemed_at.is_none())
            .map(|(h, _)| h.clone());
        Ok(match hash {
            Some(h) => inner.bootstrap.remove(&h).is_some(),
            None => false,
        })
    }

    async fn redeemed_bootstrap_token(
        &self,
        token_id: &str,
    ) -> Result<Option<RedeemedToken>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .bootstrap
            .values()
            .filter(|t| t.rec.token_id == token_id)
            .find_map(|t| {
                let redeemed_at = t.redeemed_at?;
                Some(RedeemedToken {
                    token: t.rec.clone(),
                    redeemed_at,
                    session_started: t.hold.as_ref().map_or(redeemed_at, |h| h.at),
                })
            }))
    }

    async fn revoke_session(&self, rec: &SessionRevocation) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.session_revocations.contains_key(&rec.session_id) {
            return Ok(false);
        }
        inner
            .session_revocations
            .insert(rec.session_id.clone(), rec.clone());
        Ok(true)
    }

    async fn session_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SessionRevocation>, StoreError> {
        Ok(self
            .lock()
            .session_revocations
            .values()
            .filter(|r| r.expires_at > now)
            .cloned()
            .collect())
    }

    async fn prune_session_revocations(&self, now: SystemTime) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let before = inner.session_revocations.len();
        inner.session_revocations.retain(|_, r| r.expires_at > now);
        Ok(before - inner.session_revocations.len())
    }

    async fn insert_lease(&self, rec: &LeaseRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.leases.contains_key(&rec.lease_id) {
            return Err(StoreError::Duplicate(format!("lease {}", rec.lease_id)));
        }
        inner.leases.insert(rec.lease_id.clone(), rec.clone());
        Ok(())
    }

    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        Ok(self.lock().leases.get(lease_id).cloned())
    }

    async fn mark_lease_revoked(
        &self,
        lease_id: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.leases.get_mut(lease_id) {
            Some(l) if l.revoked_at.is_none() => {
                l.revoked_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn expired_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut out: Vec<LeaseRecord> = self
            .lock()
            .leases
            .values()
            .filter(|l| {
                l.backend == backend
                    && l.expires_at <= now
                    && l.revoked_at.is_none()
                    && l.upstream_lease.is_some()
            })
            .cloned()
            .collect();
        out.sort_by_key(|l| l.expires_at);
        out.truncate(limit);
        Ok(out)
    }

    async fn running_leases_of_pod(
        &self,
        pod_uid: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut out: Vec<LeaseRecord> = self
            .lock()
            .leases
            .values()
            .filter(|l| {
                l.pod_uid.as_deref() == Some(pod_uid)
                    && l.revoked_at.is_none()
                    && l.expires_at > now
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        out.truncate(limit);
        Ok(out)
    }

    async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let uids: std::collections::BTreeSet<String> = self
            .lock()
            .leases
            .values()
            .filter(|l| l.revoked_at.is_none() && l.expires_at > now && l.issued_at < issued_before)
            .filter_map(|l| l.pod_uid.clone())
            .filter(|u| after.is_none_or(|a| u.as_str() > a))
            .collect();
        Ok(uids.into_iter().take(limit).collect())
    }

    async fn revoked_running_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(String, SystemTime)>, StoreError> {
        let mut out: Vec<(String, SystemTime)> = self
            .lock()
            .leases
            .values()
            .filter(|l| l.backend == backend && l.expires_at > now && l.revoked_at.is_some())
            .map(|l| (l.lease_id.clone(), l.expires_at))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    async fn renewable_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut out: Vec<LeaseRecord> = self
            .lock()
            .leases
            .values()
            .filter(|l| {
                l.renew_step_secs.is_some()
                    && l.revoked_at.is_none()
                    && l.upstream_lease.is_some()
                    && l.expires_at > now
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.expires_at, &a.lease_id).cmp(&(b.expires_at, &b.lease_id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let mut keys = self.lock().signing_keys.clone();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn insert_signing_key(&self, rec: &SigningKeyRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.signing_keys.iter().any(|k| k.kid == rec.kid) {
            return Err(StoreError::Duplicate(format!("signing key {}", rec.kid)));
        }
        inner.signing_keys.push(rec.clone());
        Ok(())
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        self.lock().signing_keys.retain(|k| k.kid != kid);
        Ok(())
    }

    async fn reseal_signing_key(
        &self,
        kid: &str,
        expected: &Secret,
        new: &Secret,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner
            .signing_keys
            .iter_mut()
            .find(|k| k.kid == kid && k.pkcs8.expose() == expected.expose())
        {
            Some(k) => {
                k.pkcs8 = new.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        Ok(self.lock().audit_head.clone())
    }

    async fn set_audit_head(&self, head: &ChainHead) -> Result<(), StoreError> {
        self.lock().audit_head = Some(head.clone());
        Ok(())
    }

    async fn local_secret(&self, name: &str, len: usize) -> Result<Secret, StoreError> {
        if len == 0 || len > MAX_LOCAL_SECRET_BYTES {
            return Err(StoreError::Backend(format!(
                "local_secret {name}: length {len} is out of range; ask for 1 to \
                 {MAX_LOCAL_SECRET_BYTES} bytes"
            )));
        }
        let mut inner = self.lock();
        if let Some(s) = inner.secrets.get(name) {
            if s.len() != len * 2 {
                return Err(StoreError::Corrupt(format!(
                    "local secret {name} holds {} bytes but {len} were asked for",
                    s.len() / 2
                )));
            }
            return Ok(s.clone());
        }
        let mut bytes = zeroize::Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| StoreError::Backend("the system random generator failed".into()))?;
        let secret = Secret::new(hex::encode(&*bytes));
        inner.secrets.insert(name.to_owned(), secret.clone());
        Ok(secret)
    }

    async fn put_verdict(&self, rec: &VerdictRecord) -> Result<(), StoreError> {
        self.lock().verdicts.insert(
            (rec.digest.clone(), rec.ruleset_version.clone()),
            rec.clone(),
        );
        Ok(())
    }

    async fn verdict(
        &self,
        digest: &str,
        ruleset_version: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        Ok(self
            .lock()
            .verdicts
            .get(&(digest.to_owned(), ruleset_version.to_owned()))
            .cloned())
    }

    async fn previous_verdict(
        &self,
        digest: &str,
        except: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        Ok(self
            .lock()
            .verdicts
            .values()
            .filter(|v| v.digest == digest && v.ruleset_version != except)
            .max_by_key(|v| v.scanned_at)
            .cloned())
    }

    async fn digests_without_verdict(
        &self,
        ruleset_version: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for ((digest, _), v) in &inner.verdicts {
            if out.last().is_some_and(|(d, _)| d == digest)
                || inner
                    .verdicts
                    .contains_key(&(digest.clone(), ruleset_version.to_owned()))
            {
                continue;
            }
            if out.len() == limit {
                break;
            }
            out.push((digest.clone(), v.repository.clone()));
        }
        Ok(out)
    }

    async fn put_exemption(&self, rec: &ExemptionRecord) -> Result<(), StoreError> {
        self.lock()
            .exemptions
            .insert(rec.digest.clone(), rec.clone());
        Ok(())
    }

    async fn exemption(&self, digest: &str) -> Result<Option<ExemptionRecord>, StoreError> {
        Ok(self.lock().exemptions.get(digest).cloned())
    }

    async fn put_admission_record(&self, rec: &AdmissionRecord) -> Result<(), StoreError> {
        self.lock()
            .admission
            .insert(rec.pod_uid.clone(), rec.clone());
        Ok(())
    }

    async fn admission_record(&self, pod_uid: &str) -> Result<Option<AdmissionRecord>, StoreError> {
        Ok(self.lock().admission.get(pod_uid).cloned())
    }

    async fn delete_admission_record(&self, pod_uid: &str) -> Result<bool, StoreError> {
        Ok(self.lock().admission.remove(pod_uid).is_some())
    }

    async fn admission_records_page(
        &self,
        after_uid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        use std::ops::Bound;
        let inner = self.lock();
        let from = match after_uid {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        Ok(inner
            .admission
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let before = inner.admission.len();
        inner.admission.retain(|_, r| r.expires_at > now);
        Ok(before - inner.admission.len())
    }
}
