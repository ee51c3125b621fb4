//! An in-memory [`Store`], for tests and for embedding the broker where nothing needs to
//! survive a restart.
//!
//! **Not persistent**: every bootstrap token, lease, signing key, audit chain head and local
//! secret is lost when the value is dropped. Use the SQLite store for a real broker.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use lanyard::Secret;

use super::{
    BootstrapTokenRecord, ChainHead, LeaseRecord, RedeemOutcome, SigningKeyRecord, Store,
    StoreError,
};

/// A [`Store`] held in process memory (a mutex over hash maps). Not persistent; see the
/// module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bootstrap tokens by token hash, with whether each was redeemed.
    bootstrap: HashMap<String, (BootstrapTokenRecord, bool)>,
    leases: HashMap<String, LeaseRecord>,
    /// Insertion order; sorted by `created_at` when read.
    signing_keys: Vec<SigningKeyRecord>,
    audit_head: Option<ChainHead>,
    secrets: HashMap<String, Secret>,
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
            .any(|(r, _)| r.token_id == rec.token_id)
        {
            return Err(StoreError::Duplicate(format!(
                "bootstrap token id {}",
                rec.token_id
            )));
        }
        inner
            .bootstrap
            .insert(rec.token_hash.clone(), (rec.clone(), false));
        Ok(())
    }

    async fn redeem_bootstrap_token(
        &self,
        token_hash: &str,
        now: SystemTime,
    ) -> Result<RedeemOutcome, StoreError> {
        let mut inner = self.lock();
        let Some((rec, redeemed)) = inner.bootstrap.get_mut(token_hash) else {
            return Ok(RedeemOutcome::Unknown);
        };
        if *redeemed {
            return Ok(RedeemOutcome::AlreadyUsed(rec.clone()));
        }
        if now > rec.expires_at {
            return Ok(RedeemOutcome::Expired(rec.clone()));
        }
        *redeemed = true;
        Ok(RedeemOutcome::Redeemed(rec.clone()))
    }

    async fn revoke_bootstrap_token(&self, token_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let hash = inner
            .bootstrap
            .iter()
            .find(|(_, (r, redeemed))| r.token_id == token_id && !*redeemed)
            .map(|(h, _)| h.clone());
        Ok(match hash {
            Some(h) => inner.bootstrap.remove(&h).is_some(),
            None => false,
        })
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

    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        Ok(self.lock().audit_head.clone())
    }

    async fn set_audit_head(&self, head: &ChainHead) -> Result<(), StoreError> {
        self.lock().audit_head = Some(head.clone());
        Ok(())
    }

    async fn local_secret(&self, name: &str, len: usize) -> Result<Secret, StoreError> {
        let mut inner = self.lock();
        if let Some(s) = inner.secrets.get(name) {
            return Ok(s.clone());
        }
        let mut bytes = zeroize::Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| StoreError::Backend("the system random generator failed".into()))?;
        let secret = Secret::new(hex::encode(&*bytes));
        inner.secrets.insert(name.to_owned(), secret.clone());
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn token(id: &str, hash: &str, expires: u64) -> BootstrapTokenRecord {
        BootstrapTokenRecord {
            token_id: id.into(),
            token_hash: hash.into(),
            roles: vec!["r".into()],
            image: None,
            created_at: t(0),
            expires_at: t(expires),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_is_redeemed_exactly_once_under_a_race() {
        let store = Arc::new(MemoryStore::new());
        store
            .insert_bootstrap_token(&token("bt_1", "h1", 100))
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.redeem_bootstrap_token("h1", t(10)).await
            }));
        }
        let mut redeemed = 0;
        let mut used = 0;
        for task in tasks {
            match task.await.expect("join").expect("redeem") {
                RedeemOutcome::Redeemed(_) => redeemed += 1,
                RedeemOutcome::AlreadyUsed(_) => used += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((redeemed, used), (1, 15));
    }

    #[tokio::test]
    async fn redeem_reports_unknown_expired_and_revoked() {
        let store = MemoryStore::new();
        store
            .insert_bootstrap_token(&token("bt_1", "h1", 100))
            .await
            .expect("insert");
        store
            .insert_bootstrap_token(&token("bt_2", "h2", 100))
            .await
            .expect("insert");
        assert!(matches!(
            store
                .insert_bootstrap_token(&token("bt_1", "h9", 100))
                .await,
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(
            store.redeem_bootstrap_token("nope", t(1)).await.expect("r"),
            RedeemOutcome::Unknown
        );
        assert!(matches!(
            store.redeem_bootstrap_token("h1", t(101)).await.expect("r"),
            RedeemOutcome::Expired(_)
        ));
        assert!(store.revoke_bootstrap_token("bt_2").await.expect("revoke"));
        assert!(!store.revoke_bootstrap_token("bt_2").await.expect("revoke"));
        assert_eq!(
            store.redeem_bootstrap_token("h2", t(1)).await.expect("r"),
            RedeemOutcome::Unknown
        );
    }

    #[tokio::test]
    async fn leases_signing_keys_head_and_secrets() {
        let store = MemoryStore::new();
        let lease = LeaseRecord {
            lease_id: "ls_1".into(),
            role: "r".into(),
            backend: "jwt".into(),
            subject: "s".into(),
            issuer: "i".into(),
            issued_at: t(1),
            expires_at: t(2),
            upstream_lease: None,
            fingerprint: "fp".into(),
            revoked_at: None,
        };
        store.insert_lease(&lease).await.expect("insert");
        assert!(store.insert_lease(&lease).await.is_err());
        assert!(store.mark_lease_revoked("ls_1", t(5)).await.expect("rv"));
        assert!(!store.mark_lease_revoked("ls_1", t(6)).await.expect("rv"));
        assert!(!store.mark_lease_revoked("ls_x", t(6)).await.expect("rv"));
        let got = store.get_lease("ls_1").await.expect("get").expect("some");
        assert_eq!(got.revoked_at, Some(t(5)));

        for (kid, at) in [("b", 20), ("a", 10)] {
            store
                .insert_signing_key(&SigningKeyRecord {
                    kid: kid.into(),
                    alg: "ES256".into(),
                    pkcs8: Secret::new("x"),
                    created_at: t(at),
                })
                .await
                .expect("key");
        }
        let kids: Vec<_> = store
            .signing_keys()
            .await
            .expect("keys")
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, ["a", "b"], "oldest first");
        store.delete_signing_key("a").await.expect("delete");
        assert_eq!(store.signing_keys().await.expect("keys").len(), 1);

        assert_eq!(store.audit_head().await.expect("head"), None);
        let head = ChainHead {
            seq: 3,
            hash: "ab".into(),
        };
        store.set_audit_head(&head).await.expect("set");
        assert_eq!(store.audit_head().await.expect("head"), Some(head));

        let s1 = store.local_secret("k", 32).await.expect("secret");
        let s2 = store.local_secret("k", 32).await.expect("secret");
        let other = store.local_secret("other", 32).await.expect("secret");
        assert_eq!(s1.expose().len(), 64);
        assert_eq!(s1, s2, "stable after first use");
        assert_ne!(s1, other);
    }
}
