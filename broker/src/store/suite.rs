//! The [`Store`] contract, written once and run against every implementation.
//!
//! Each case is an `async fn(Arc<dyn Store>)` that gets a fresh, empty store and asserts one
//! promise of the trait: bootstrap tokens (reserve, then commit once or release; a held token
//! refused to others until its hold lapses, then taken over; single winner under a race;
//! expiry at the expiry second; revocation; duplicates; a redeemed token found by id), session
//! revocations (listed until they expire, recorded once, pruned), leases (round trip, idempotent revocation,
//! `expired_leases` by backend, oldest first, with a limit; concurrent inserts), signing keys
//! (with when each starts signing), the audit chain head, [`Store::record_group`], [`Store::local_secret`],
//! image verdicts (keyed by digest and ruleset version, the previous ruleset's found, what a
//! re-scan has left), exemptions and admission records (replaced by pod UID, paged in UID
//! order, deleted, pruned at their expiry second). The `contract!`
//! invocations at the bottom turn every case into one `#[tokio::test]` per implementation, so
//! a failure names both, e.g. `store::suite::sqlite_file::expired_leases_by_backend_oldest_first`.
//!
//! **Adding an implementation is one line** at the bottom: `contract!(name, expression);`,
//! where the expression (evaluated inside the async test, so it may `.await`) gives a fresh,
//! empty store, or a [`Fixture`] when something must outlive the test body (a temporary
//! directory, a database to drop), as `contract!(postgres, fresh_postgres().await);` does.
//!
//! **Adding a case**: write the `async fn` below and add its name to the list in `cases!`.
//! What only one implementation can show (SQLite's persistence across reopen, several handles
//! on one file, undecodable rows) stays in that implementation's own tests, which reuse the
//! record builders here.
//!
//! Records carry whole-second times: a store may keep no finer.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard::Secret;

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::{
    AdmissionRecord, BootstrapTokenRecord, ChainHead, ExemptionRecord, FindingSummary, LeaseRecord,
    MAX_LOCAL_SECRET_BYTES, RedeemedToken, ReserveOutcome, SessionRevocation, SigningKeyRecord,
    Store, StoreError, VerdictRecord,
};

/// A fresh store for one test, with whatever must live as long as it.
pub(super) struct Fixture {
    /// The store under test.
    pub(super) store: Arc<dyn Store>,
    /// Dropped after the test: e.g. the temporary directory of a file-backed store.
    _keep: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A store that needs `keep` to stay alive (and cleans up when `keep` is dropped).
    pub(super) fn keeping(store: impl Store + 'static, keep: impl Any + Send) -> Self {
        Self {
            store: Arc::new(store),
            _keep: Some(Box::new(keep)),
        }
    }
}

impl<S: Store + 'static> From<S> for Fixture {
    fn from(store: S) -> Self {
        Self {
            store: Arc::new(store),
            _keep: None,
        }
    }
}

/// A SQLite store on a file in a fresh temporary directory (the broker's real setup, WAL on).
fn sqlite_file() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("lanyard.db")).expect("open");
    Fixture::keeping(store, dir)
}

/// A PostgreSQL store on a fresh database of the test process's shared throwaway cluster
/// (`tests/support`'s `Postgres::shared`), migrated.
pub(super) async fn fresh_postgres() -> Fixture {
    let pg = lanyard_test_support::Postgres::shared();
    let url = pg.create_database("contract");
    let store =
        super::postgres::PostgresStore::connect(&super::postgres::PostgresOptions::new(url))
            .await
            .expect("connect to PostgreSQL");
    Fixture::from(store)
}

/// `secs` after the Unix epoch.
pub(super) fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A bootstrap token created at 1 000 s, expiring at `expires`, with two roles and an image.
pub(super) fn token(id: &str, hash: &str, expires: u64) -> BootstrapTokenRecord {
    BootstrapTokenRecord {
        token_id: id.to_owned(),
        token_hash: hash.to_owned(),
        roles: vec!["db-read".to_owned(), "metrics".to_owned()],
        image: Some(format!("sha256:{}", "ab".repeat(32))),
        created_at: t(1_000),
        expires_at: t(expires),
    }
}

/// A `jwt` lease issued at 2 000 s, expiring at 2 900 s, with an upstream lease.
pub(super) fn lease(id: &str) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.to_owned(),
        role: "db-read".to_owned(),
        backend: "jwt".to_owned(),
        subject: "system:serviceaccount:shop:api".to_owned(),
        issuer: "https://kubernetes.default.svc".to_owned(),
        issued_at: t(2_000),
        expires_at: t(2_900),
        upstream_lease: Some("vault-lease-1".to_owned()),
        fingerprint: "fp:0123".to_owned(),
        revoked_at: None,
        renew_step_secs: None,
        pod_uid: None,
    }
}

/// An ES256 signing key created at `created`, signing from 1,000 s later.
pub(super) fn key(kid: &str, created: u64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_owned(),
        alg: "ES256".to_owned(),
        pkcs8: Secret::new(format!("pkcs8-of-{kid}")),
        created_at: t(created),
        active_from: t(created + 1_000),
    }
}

/// Reserves `hash` for `reservation` at `now` for 60 s.
async fn reserve(s: &Arc<dyn Store>, hash: &str, reservation: &str, now: u64) -> ReserveOutcome {
    s.reserve_bootstrap_token(hash, reservation, t(now), t(now + 60))
        .await
        .expect("reserve")
}

/// Reserve, commit once; from then on the token is redeemed, with when and since when its
/// session runs, whatever the time, and no reservation, commit or release changes that.
pub(super) async fn bootstrap_token_is_reserved_then_committed_once(s: Arc<dyn Store>) {
    let rec = token("bt_1", "h1", 1_600);
    s.insert_bootstrap_token(&rec).await.expect("insert");
    assert_eq!(
        reserve(&s, "h1", "r1", 1_100).await,
        ReserveOutcome::Reserved(rec.clone()),
        "the record comes back whole"
    );
    assert_eq!(
        reserve(&s, "h1", "r2", 1_101).await,
        ReserveOutcome::Held {
            token: rec.clone(),
            until: t(1_160)
        }
    );
    assert!(
        !s.commit_bootstrap_token("h1", "r2", t(1_102))
            .await
            .expect("commit"),
        "only the holder commits"
    );
    assert!(
        s.commit_bootstrap_token("h1", "r1", t(1_105))
            .await
            .expect("commit")
    );
    let redeemed = ReserveOutcome::Redeemed(RedeemedToken {
        token: rec.clone(),
        redeemed_at: t(1_105),
        session_started: t(1_100),
    });
    assert_eq!(reserve(&s, "h1", "r3", 1_106).await, redeemed);
    assert!(
        !s.commit_bootstrap_token("h1", "r1", t(1_107))
            .await
            .expect("commit again"),
        "a commit happens once"
    );
    assert!(
        !s.release_bootstrap_token("h1", "r1")
            .await
            .expect("release"),
        "a committed redemption cannot be released"
    );
    // Redeemed stays redeemed, even once the token would also have expired.
    assert_eq!(reserve(&s, "h1", "r4", 9_999).await, redeemed);
    assert_eq!(
        reserve(&s, "nope", "r5", 1_100).await,
        ReserveOutcome::Unknown
    );
    assert!(
        !s.commit_bootstrap_token("nope", "r5", t(1_100))
            .await
            .expect("commit unknown")
    );
    assert!(
        !s.release_bootstrap_token("nope", "r5")
            .await
            .expect("release unknown")
    );
}

/// A released token is unused again: anyone may reserve it, and the old holder can neither
/// commit nor release it any more.
pub(super) async fn a_released_token_can_be_reserved_again(s: Arc<dyn Store>) {
    s.insert_bootstrap_token(&token("bt_1", "h1", 1_600))
        .await
        .expect("insert");
    assert!(matches!(
        reserve(&s, "h1", "r1", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        !s.release_bootstrap_token("h1", "r2")
            .await
            .expect("release"),
        "only the holder releases"
    );
    assert!(
        s.release_bootstrap_token("h1", "r1")
            .await
            .expect("release")
    );
    assert!(
        !s.release_bootstrap_token("h1", "r1")
            .await
            .expect("release again")
    );
    assert!(matches!(
        reserve(&s, "h1", "r2", 1_101).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        !s.commit_bootstrap_token("h1", "r1", t(1_102))
            .await
            .expect("stale commit")
    );
    assert!(
        s.commit_bootstrap_token("h1", "r2", t(1_103))
            .await
            .expect("commit")
    );
    assert!(matches!(
        reserve(&s, "h1", "r3", 1_104).await,
        ReserveOutcome::Redeemed(RedeemedToken { session_started, .. }) if session_started == t(1_101)
    ));
}

/// A crashed holder's reservation lapses at its `until`: before it the token is held, from
/// it another caller takes it over, and the crashed holder can then neither commit nor
/// release. A lapsed hold nobody took over still commits.
pub(super) async fn a_lapsed_reservation_is_taken_over(s: Arc<dyn Store>) {
    s.insert_bootstrap_token(&token("bt_1", "h1", 1_600))
        .await
        .expect("insert");
    assert!(matches!(
        reserve(&s, "h1", "crashed", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(matches!(
        reserve(&s, "h1", "r2", 1_159).await,
        ReserveOutcome::Held { until, .. } if until == t(1_160)
    ));
    assert!(matches!(
        reserve(&s, "h1", "r2", 1_160).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        !s.commit_bootstrap_token("h1", "crashed", t(1_161))
            .await
            .expect("commit")
    );
    assert!(
        !s.release_bootstrap_token("h1", "crashed")
            .await
            .expect("release")
    );
    assert!(matches!(
        reserve(&s, "h1", "r3", 1_162).await,
        ReserveOutcome::Held { until, .. } if until == t(1_220)
    ));
    assert!(
        s.commit_bootstrap_token("h1", "r2", t(1_163))
            .await
            .expect("commit")
    );

    // Slow but not taken over: the holder's commit past its `until` still counts.
    s.insert_bootstrap_token(&token("bt_2", "h2", 1_600))
        .await
        .expect("insert");
    assert!(matches!(
        reserve(&s, "h2", "slow", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        s.commit_bootstrap_token("h2", "slow", t(1_300))
            .await
            .expect("late commit")
    );
    assert!(matches!(
        reserve(&s, "h2", "r2", 1_301).await,
        ReserveOutcome::Redeemed(RedeemedToken { redeemed_at, session_started, .. })
            if redeemed_at == t(1_300) && session_started == t(1_100)
    ));
}

pub(super) async fn bootstrap_token_expires_at_its_expiry_second(s: Arc<dyn Store>) {
    let rec = token("bt_1", "h1", 1_600);
    s.insert_bootstrap_token(&rec).await.expect("insert");
    // Reservable while `now < expires_at`.
    assert_eq!(
        reserve(&s, "h1", "r1", 1_600).await,
        ReserveOutcome::Expired(rec.clone())
    );
    // An expired token is not consumed by the failed attempt, and stays expired.
    assert_eq!(
        reserve(&s, "h1", "r2", 1_700).await,
        ReserveOutcome::Expired(rec)
    );
    assert!(
        !s.commit_bootstrap_token("h1", "r1", t(1_700))
            .await
            .expect("commit")
    );

    // Reserved in its last second, it commits after it expired: it was presented in time.
    let rec2 = token("bt_2", "h2", 1_600);
    s.insert_bootstrap_token(&rec2).await.expect("insert");
    assert_eq!(
        reserve(&s, "h2", "r1", 1_599).await,
        ReserveOutcome::Reserved(rec2.clone())
    );
    assert!(matches!(
        reserve(&s, "h2", "r2", 1_600).await,
        ReserveOutcome::Expired(_)
    ));
    assert!(
        s.commit_bootstrap_token("h2", "r1", t(1_601))
            .await
            .expect("commit")
    );

    // Released after it expired, it stays expired.
    let rec3 = token("bt_3", "h3", 1_600);
    s.insert_bootstrap_token(&rec3).await.expect("insert");
    assert!(matches!(
        reserve(&s, "h3", "r1", 1_599).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        s.release_bootstrap_token("h3", "r1")
            .await
            .expect("release")
    );
    assert_eq!(
        reserve(&s, "h3", "r2", 1_601).await,
        ReserveOutcome::Expired(rec3)
    );
}

pub(super) async fn a_duplicate_bootstrap_token_id_or_hash_is_refused(s: Arc<dyn Store>) {
    s.insert_bootstrap_token(&token("bt_1", "h1", 1_600))
        .await
        .expect("insert");
    let same_id = s.insert_bootstrap_token(&token("bt_1", "h2", 1_600)).await;
    assert!(
        matches!(same_id, Err(StoreError::Duplicate(_))),
        "{same_id:?}"
    );
    let same_hash = s.insert_bootstrap_token(&token("bt_2", "h1", 1_600)).await;
    assert!(
        matches!(same_hash, Err(StoreError::Duplicate(_))),
        "{same_hash:?}"
    );
    // The refused inserts left nothing behind.
    assert_eq!(
        reserve(&s, "h2", "r1", 1_100).await,
        ReserveOutcome::Unknown
    );
}

/// Revocation deletes an unredeemed token, free or held (whose holder then cannot commit),
/// never a redeemed one.
pub(super) async fn revoke_deletes_only_unredeemed_tokens(s: Arc<dyn Store>) {
    for (id, hash) in [("bt_1", "h1"), ("bt_2", "h2"), ("bt_3", "h3")] {
        s.insert_bootstrap_token(&token(id, hash, 1_600))
            .await
            .expect("insert");
    }

    assert!(s.revoke_bootstrap_token("bt_1").await.expect("revoke"));
    assert_eq!(
        reserve(&s, "h1", "r1", 1_100).await,
        ReserveOutcome::Unknown,
        "a revoked token is unknown"
    );
    assert!(
        !s.revoke_bootstrap_token("bt_1")
            .await
            .expect("revoke again")
    );
    assert!(!s.revoke_bootstrap_token("bt_none").await.expect("revoke"));

    // Held: revoked, and the redemption in progress cannot commit.
    assert!(matches!(
        reserve(&s, "h3", "r3", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(s.revoke_bootstrap_token("bt_3").await.expect("revoke held"));
    assert!(
        !s.commit_bootstrap_token("h3", "r3", t(1_101))
            .await
            .expect("commit")
    );
    assert_eq!(
        reserve(&s, "h3", "r4", 1_102).await,
        ReserveOutcome::Unknown
    );

    // Redeemed: not revoked.
    assert!(matches!(
        reserve(&s, "h2", "r2", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert!(
        s.commit_bootstrap_token("h2", "r2", t(1_100))
            .await
            .expect("commit")
    );
    assert!(!s.revoke_bootstrap_token("bt_2").await.expect("revoke used"));
    assert!(matches!(
        reserve(&s, "h2", "r5", 1_100).await,
        ReserveOutcome::Redeemed(_)
    ));
}

/// Many callers racing to reserve one token: exactly one holds it, every other one is told
/// it is held; after the winner commits, every caller is told it is redeemed.
pub(super) async fn a_raced_token_is_reserved_exactly_once(s: Arc<dyn Store>) {
    s.insert_bootstrap_token(&token("bt_1", "h1", 1_600))
        .await
        .expect("insert");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = format!("r{i}");
                let outcome = s
                    .reserve_bootstrap_token("h1", &r, t(1_100), t(1_160))
                    .await;
                (r, outcome)
            })
        })
        .collect();
    let (mut winners, mut held) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("join") {
            (r, Ok(ReserveOutcome::Reserved(_))) => winners.push(r),
            (_, Ok(ReserveOutcome::Held { .. })) => held += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((winners.len(), held), (1, 15));

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let winner = winners[0].clone();
            tokio::spawn(async move {
                if i == 0 {
                    s.commit_bootstrap_token("h1", &winner, t(1_101))
                        .await
                        .map(|ok| (ok, None))
                } else {
                    s.reserve_bootstrap_token("h1", &format!("late{i}"), t(1_101), t(1_161))
                        .await
                        .map(|o| (false, Some(o)))
                }
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        match task.await.expect("join").expect("store") {
            (true, None) => committed += 1,
            (false, Some(ReserveOutcome::Held { .. } | ReserveOutcome::Redeemed(_))) => {}
            other => panic!("a racer took a held token: {other:?}"),
        }
    }
    assert_eq!(committed, 1);
    assert!(matches!(
        reserve(&s, "h1", "after", 1_102).await,
        ReserveOutcome::Redeemed(_)
    ));
}

pub(super) async fn leases_round_trip(s: Arc<dyn Store>) {
    let l = lease("ls_1");
    s.insert_lease(&l).await.expect("insert");
    assert_eq!(s.get_lease("ls_1").await.expect("get"), Some(l.clone()));
    assert_eq!(s.get_lease("ls_2").await.expect("get"), None);

    let dup = s.insert_lease(&l).await;
    assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");

    // The optional fields round-trip too.
    let mut bare = lease("ls_3");
    bare.upstream_lease = None;
    bare.revoked_at = Some(t(2_100));
    s.insert_lease(&bare).await.expect("insert");
    assert_eq!(s.get_lease("ls_3").await.expect("get"), Some(bare));
}

pub(super) async fn a_lease_is_marked_revoked_once(s: Arc<dyn Store>) {
    let mut l = lease("ls_1");
    s.insert_lease(&l).await.expect("insert");
    assert!(
        s.mark_lease_revoked("ls_1", t(2_500))
            .await
            .expect("revoke")
    );
    assert!(!s.mark_lease_revoked("ls_1", t(2_600)).await.expect("again"));
    assert!(
        !s.mark_lease_revoked("ls_2", t(2_600))
            .await
            .expect("missing")
    );
    // The first revocation's time stays.
    l.revoked_at = Some(t(2_500));
    assert_eq!(s.get_lease("ls_1").await.expect("get"), Some(l));
}

/// REV (issue 16): a lease's pod UID round-trips; `running_leases_of_pod` finds the running,
/// unrevoked leases of one pod; `pods_with_running_leases` pages through the distinct pods
/// holding such leases issued before a time.
pub(super) async fn leases_of_a_pod_are_found_by_its_uid(s: Arc<dyn Store>) {
    let now = 2_500;
    let at = |id: &str, pod: Option<&str>, issued: u64, expires: u64| LeaseRecord {
        pod_uid: pod.map(str::to_owned),
        issued_at: t(issued),
        expires_at: t(expires),
        ..lease(id)
    };
    let mut revoked = at("ls_revoked", Some("uid-a"), 2_000, 2_900);
    revoked.revoked_at = Some(t(2_100));
    for l in [
        at("ls_a1", Some("uid-a"), 2_000, 2_900),
        at("ls_a2", Some("uid-a"), 2_400, 2_600),
        at("ls_a_ended", Some("uid-a"), 1_000, now),
        revoked,
        at("ls_b", Some("uid-b"), 2_000, 2_900),
        at("ls_c_late", Some("uid-c"), 2_450, 2_900),
        at("ls_none", None, 2_000, 2_900),
    ] {
        s.insert_lease(&l).await.expect("insert");
    }
    assert_eq!(
        s.get_lease("ls_a1")
            .await
            .expect("get")
            .expect("there")
            .pod_uid
            .as_deref(),
        Some("uid-a")
    );
    assert_eq!(
        s.get_lease("ls_none")
            .await
            .expect("get")
            .expect("there")
            .pod_uid,
        None
    );
    let ids = |v: Vec<LeaseRecord>| v.into_iter().map(|l| l.lease_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .running_leases_of_pod("uid-a", t(now), 100)
            .await
            .expect("list")),
        ["ls_a1", "ls_a2"]
    );
    assert_eq!(
        s.running_leases_of_pod("uid-a", t(now), 1)
            .await
            .expect("list")
            .len(),
        1
    );
    assert!(
        s.running_leases_of_pod("uid-x", t(now), 100)
            .await
            .expect("list")
            .is_empty()
    );
    // Issued before 2_450: uid-c's only lease is not; paged by UID.
    let pods = s
        .pods_with_running_leases(None, t(2_450), t(now), 100)
        .await
        .expect("pods");
    assert_eq!(pods, ["uid-a", "uid-b"]);
    let first = s
        .pods_with_running_leases(None, t(2_451), t(now), 2)
        .await
        .expect("page");
    assert_eq!(first, ["uid-a", "uid-b"]);
    let next = s
        .pods_with_running_leases(Some("uid-b"), t(2_451), t(now), 2)
        .await
        .expect("page");
    assert_eq!(next, ["uid-c"]);
}

/// `revoked_running_leases` (REV, issue 16): revoked leases of one backend still running at
/// `now`, soonest expiry first, at most `limit`; an ended one is not listed.
pub(super) async fn revoked_running_leases_are_listed_until_they_expire(s: Arc<dyn Store>) {
    let now = 2_500;
    let at = |id: &str, backend: &str, expires: u64, revoked: Option<u64>| LeaseRecord {
        backend: backend.to_owned(),
        expires_at: t(expires),
        revoked_at: revoked.map(t),
        ..lease(id)
    };
    for l in [
        at("ls_late", "jwt", 2_900, Some(2_400)),
        at("ls_soon", "jwt", 2_600, Some(2_450)),
        at("ls_b", "jwt", 2_600, Some(2_450)),
        at("ls_live", "jwt", 2_700, None),
        at("ls_ended", "jwt", now, Some(2_100)),
        at("ls_vault", "vault", 2_800, Some(2_400)),
    ] {
        s.insert_lease(&l).await.expect("insert");
    }
    let got = s
        .revoked_running_leases("jwt", t(now), 100)
        .await
        .expect("list");
    assert_eq!(
        got,
        vec![
            ("ls_b".to_owned(), t(2_600)),
            ("ls_soon".to_owned(), t(2_600)),
            ("ls_late".to_owned(), t(2_900)),
        ]
    );
    let got = s
        .revoked_running_leases("jwt", t(now), 1)
        .await
        .expect("list");
    assert_eq!(got.len(), 1);
    // Revoking a running lease adds it; past its expiry it is gone.
    assert!(
        s.mark_lease_revoked("ls_live", t(2_550))
            .await
            .expect("revoke")
    );
    let got = s
        .revoked_running_leases("jwt", t(2_650), 100)
        .await
        .expect("list");
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["ls_live", "ls_late"]);
}

/// `renewable_leases`: leases with a renewal step, not revoked, with an upstream lease, still
/// running at `now` (expiry after it); soonest expiry first; at most `limit`; the step kept.
pub(super) async fn renewable_leases_are_the_running_renewed_ones(s: Arc<dyn Store>) {
    let now = 2_500;
    let at = |id: &str, expires: u64, step: Option<u64>| LeaseRecord {
        backend: "vault".to_owned(),
        expires_at: t(expires),
        renew_step_secs: step,
        ..lease(id)
    };
    let mut revoked = at("ls_revoked", 2_800, Some(60));
    revoked.revoked_at = Some(t(2_400));
    let mut no_upstream = at("ls_no_upstream", 2_800, Some(60));
    no_upstream.upstream_lease = None;
    for l in [
        at("ls_late", 2_900, Some(300)),
        at("ls_soon", 2_600, Some(60)),
        at("ls_not_renewed", 2_700, None),
        at("ls_ended", now, Some(60)),
        revoked,
        no_upstream,
    ] {
        s.insert_lease(&l).await.expect("insert");
    }
    let got = s.renewable_leases(t(now), 100).await.expect("list");
    let ids: Vec<&str> = got.iter().map(|l| l.lease_id.as_str()).collect();
    assert_eq!(ids, ["ls_soon", "ls_late"]);
    assert_eq!(got[0].renew_step_secs, Some(60));
    assert_eq!(got[1].renew_step_secs, Some(300));
    assert_eq!(
        s.get_lease("ls_late").await.expect("get").as_ref(),
        Some(&got[1]),
        "whole records"
    );
    let one = s.renewable_leases(t(now), 1).await.expect("list");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].lease_id, "ls_soon");
}

/// `expired_leases`: of one backend, expired at or before `now`, not revoked, with an
/// upstream lease; oldest expiry first; at most `limit`.
pub(super) async fn expired_leases_by_backend_oldest_first(s: Arc<dyn Store>) {
    let now = 5_000;
    let at = |id: &str, backend: &str, expires: u64| LeaseRecord {
        backend: backend.to_owned(),
        expires_at: t(expires),
        ..lease(id)
    };
    let mut revoked = at("ls_revoked", "vault", 4_000);
    revoked.revoked_at = Some(t(4_100));
    let mut no_upstream = at("ls_no_upstream", "vault", 4_000);
    no_upstream.upstream_lease = None;
    for l in [
        at("ls_c", "vault", 4_500),
        at("ls_now", "vault", now),
        at("ls_a", "vault", 3_000),
        at("ls_future", "vault", now + 1),
        at("ls_other_backend", "aws-sts", 3_500),
        at("ls_b", "vault", 4_000),
        revoked,
        no_upstream,
    ] {
        s.insert_lease(&l).await.expect("insert");
    }
    let ids = |v: Vec<LeaseRecord>| v.into_iter().map(|l| l.lease_id).collect::<Vec<_>>();

    let all = s.expired_leases("vault", t(now), 100).await.expect("list");
    assert_eq!(
        all.first(),
        s.get_lease("ls_a").await.expect("get").as_ref(),
        "whole records"
    );
    assert_eq!(ids(all), ["ls_a", "ls_b", "ls_c", "ls_now"]);
    assert_eq!(
        ids(s.expired_leases("vault", t(now), 2).await.expect("list")),
        ["ls_a", "ls_b"]
    );
    assert!(
        s.expired_leases("vault", t(now), 0)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        ids(s
            .expired_leases("aws-sts", t(now), 100)
            .await
            .expect("list")),
        ["ls_other_backend"]
    );
    assert!(
        s.expired_leases("vault", t(2_999), 100)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        s.expired_leases("jwt", t(now), 100)
            .await
            .expect("list")
            .is_empty()
    );

    // Revoking takes a lease off the list.
    assert!(s.mark_lease_revoked("ls_a", t(now)).await.expect("revoke"));
    assert_eq!(
        ids(s.expired_leases("vault", t(now), 2).await.expect("list")),
        ["ls_b", "ls_c"]
    );
}

/// Concurrent lease inserts: each succeeds or fails (a duplicate id) on its own, and every
/// success can be read back.
pub(super) async fn concurrent_lease_inserts_each_succeed_or_fail_alone(s: Arc<dyn Store>) {
    s.insert_lease(&lease("ls_taken")).await.expect("insert");
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let s = s.clone();
            // Every 100th is a duplicate of an existing lease.
            let id = if i % 100 == 7 {
                "ls_taken".to_owned()
            } else {
                format!("ls_{i}")
            };
            tokio::spawn(async move { (id.clone(), s.insert_lease(&lease(&id)).await) })
        })
        .collect();
    let mut dups = 0;
    for task in tasks {
        let (id, r) = task.await.expect("join");
        match r {
            Ok(()) => assert_eq!(
                s.get_lease(&id).await.expect("get").map(|l| l.lease_id),
                Some(id)
            ),
            Err(StoreError::Duplicate(what)) => {
                assert!(what.contains("ls_taken"), "{what}");
                dups += 1;
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert_eq!(dups, 3);
}

pub(super) async fn signing_keys_listed_oldest_first_and_deleted(s: Arc<dyn Store>) {
    assert!(s.signing_keys().await.expect("list").is_empty());
    s.insert_signing_key(&key("k-new", 300)).await.expect("ins");
    s.insert_signing_key(&key("k-old", 100)).await.expect("ins");
    s.insert_signing_key(&key("k-mid", 200)).await.expect("ins");
    let dup = s.insert_signing_key(&key("k-mid", 250)).await;
    assert!(matches!(dup, Err(StoreError::Duplicate(_))), "{dup:?}");

    let keys = s.signing_keys().await.expect("list");
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["k-old", "k-mid", "k-new"]);
    assert_eq!(keys[0].pkcs8.expose(), "pkcs8-of-k-old");
    assert_eq!(keys[0].alg, "ES256");
    assert_eq!(keys[0].created_at, t(100));
    assert_eq!(
        keys[0].active_from,
        t(1_100),
        "when a key starts signing is kept apart from when it was created"
    );
    assert_eq!(
        keys[1].created_at,
        t(200),
        "the refused duplicate changed nothing"
    );

    s.delete_signing_key("k-mid").await.expect("delete");
    s.delete_signing_key("k-absent")
        .await
        .expect("deleting an absent key is fine");
    let kids: Vec<String> = s
        .signing_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["k-old", "k-new"]);
}

pub(super) async fn a_signing_key_is_resealed_only_from_the_text_expected(s: Arc<dyn Store>) {
    let k = key("k-1", 100);
    s.insert_signing_key(&k).await.expect("ins");
    let sealed = Secret::new("lk1.sealed-text");
    let stale = Secret::new("not what is stored");
    assert!(
        !s.reseal_signing_key("k-1", &stale, &sealed)
            .await
            .expect("reseal")
    );
    assert!(
        s.reseal_signing_key("k-1", &k.pkcs8, &sealed)
            .await
            .expect("reseal")
    );
    // A second replica doing the same finds it done.
    assert!(
        !s.reseal_signing_key("k-1", &k.pkcs8, &sealed)
            .await
            .expect("reseal")
    );
    assert!(
        !s.reseal_signing_key("k-absent", &k.pkcs8, &sealed)
            .await
            .expect("reseal")
    );
    let keys = s.signing_keys().await.expect("list");
    assert_eq!(keys[0].pkcs8.expose(), sealed.expose());
    assert_eq!(
        keys[0].active_from, k.active_from,
        "only the key text changed"
    );
}

pub(super) async fn audit_head_is_absent_then_overwritten(s: Arc<dyn Store>) {
    assert_eq!(s.audit_head().await.expect("head"), None);
    let h1 = ChainHead {
        seq: 1,
        hash: "aa".to_owned(),
    };
    s.set_audit_head(&h1).await.expect("set");
    assert_eq!(s.audit_head().await.expect("head"), Some(h1));
    let h2 = ChainHead {
        seq: 2,
        hash: "bb".to_owned(),
    };
    s.set_audit_head(&h2).await.expect("set");
    assert_eq!(s.audit_head().await.expect("head"), Some(h2));
}

/// `record_group`: every lease saved or refused on its own (in order), the head set either way.
pub(super) async fn record_group_saves_each_lease_and_the_head(s: Arc<dyn Store>) {
    s.insert_lease(&lease("ls_taken")).await.expect("insert");
    let head = ChainHead {
        seq: 9,
        hash: "c0ffee".to_owned(),
    };
    let group = [lease("ls_1"), lease("ls_taken"), lease("ls_2")];
    let results = s.record_group(&group, &head).await.expect("group");
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(StoreError::Duplicate(w)) if w.contains("ls_taken")),
        "{results:?}"
    );
    for l in [&group[0], &group[2]] {
        assert_eq!(
            s.get_lease(&l.lease_id).await.expect("get").as_ref(),
            Some(l)
        );
    }
    assert_eq!(s.audit_head().await.expect("head"), Some(head));

    let next = ChainHead {
        seq: 10,
        hash: "d00d".to_owned(),
    };
    assert!(s.record_group(&[], &next).await.expect("empty").is_empty());
    assert_eq!(s.audit_head().await.expect("head"), Some(next));
}

pub(super) async fn local_secret_is_created_once_per_name(s: Arc<dyn Store>) {
    let a = s.local_secret("fingerprint-key", 32).await.expect("a");
    assert_eq!(a.len(), 64, "hex of 32 bytes");
    assert!(
        a.expose()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "lowercase hex"
    );
    let again = s.local_secret("fingerprint-key", 32).await.expect("again");
    assert_eq!(a.expose(), again.expose(), "stable after first use");
    let b = s.local_secret("other", 32).await.expect("b");
    assert_ne!(a.expose(), b.expose(), "one secret per name");
    let short = s.local_secret("short", 1).await.expect("one byte");
    assert_eq!(short.len(), 2);
}

/// A length out of `1..=MAX_LOCAL_SECRET_BYTES` is refused; asking for an existing secret with
/// another length is an error, not a secret of the wrong length.
pub(super) async fn local_secret_refuses_a_wrong_length(s: Arc<dyn Store>) {
    assert!(s.local_secret("zero", 0).await.is_err());
    assert!(
        s.local_secret("huge", MAX_LOCAL_SECRET_BYTES + 1)
            .await
            .is_err()
    );
    let max = s
        .local_secret("max", MAX_LOCAL_SECRET_BYTES)
        .await
        .expect("the maximum");
    assert_eq!(max.len(), 2 * MAX_LOCAL_SECRET_BYTES);

    s.local_secret("fingerprint-key", 32).await.expect("create");
    let wrong_len = s.local_secret("fingerprint-key", 16).await;
    assert!(
        matches!(wrong_len, Err(StoreError::Corrupt(_))),
        "{wrong_len:?}"
    );
}

/// Callers racing to create one local secret all get the same value.
pub(super) async fn concurrent_first_use_of_a_local_secret_agrees(s: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.local_secret("shared", 32).await })
        })
        .collect();
    let mut values = BTreeSet::new();
    for task in tasks {
        values.insert(
            task.await
                .expect("join")
                .expect("secret")
                .expose()
                .to_owned(),
        );
    }
    assert_eq!(values.len(), 1);
}

/// A redeemed token is found by its public id, with when its session started; an unredeemed,
/// held or unknown one is not.
pub(super) async fn a_redeemed_token_is_found_by_id(s: Arc<dyn Store>) {
    let rec = token("bt_1", "h1", 1_600);
    s.insert_bootstrap_token(&rec).await.expect("insert");
    let find = |id: &'static str| {
        let s = s.clone();
        async move { s.redeemed_bootstrap_token(id).await.expect("find") }
    };
    assert_eq!(find("bt_1").await, None, "not redeemed yet");
    assert!(matches!(
        reserve(&s, "h1", "r1", 1_100).await,
        ReserveOutcome::Reserved(_)
    ));
    assert_eq!(find("bt_1").await, None, "held, not redeemed");
    assert!(
        s.commit_bootstrap_token("h1", "r1", t(1_105))
            .await
            .expect("commit")
    );
    assert_eq!(
        find("bt_1").await,
        Some(RedeemedToken {
            token: rec,
            redeemed_at: t(1_105),
            session_started: t(1_100),
        })
    );
    assert_eq!(find("bt_2").await, None, "unknown");
}

fn revocation(id: &str, revoked: u64, expires: u64) -> SessionRevocation {
    SessionRevocation {
        session_id: id.to_owned(),
        revoked_at: t(revoked),
        expires_at: t(expires),
    }
}

/// A session revocation is listed while `now < expires_at`, recorded once (a second one
/// changes nothing), and pruned at its expiry, never before.
pub(super) async fn session_revocations_last_until_they_expire(s: Arc<dyn Store>) {
    let listed = |now: u64| {
        let s = s.clone();
        async move {
            let mut ids: Vec<(String, SystemTime)> = s
                .session_revocations(t(now))
                .await
                .expect("list")
                .into_iter()
                .map(|r| (r.session_id, r.expires_at))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(listed(1_000).await, []);
    assert!(
        s.revoke_session(&revocation("ss_1", 1_000, 2_000))
            .await
            .expect("revoke")
    );
    assert!(
        s.revoke_session(&revocation("ss_2", 1_000, 3_000))
            .await
            .expect("revoke")
    );
    assert!(
        !s.revoke_session(&revocation("ss_1", 1_500, 9_000))
            .await
            .expect("revoke again"),
        "already revoked"
    );
    assert_eq!(
        listed(1_999).await,
        [("ss_1".to_owned(), t(2_000)), ("ss_2".to_owned(), t(3_000))],
        "the first record stays"
    );
    assert_eq!(
        listed(2_000).await,
        [("ss_2".to_owned(), t(3_000))],
        "not listed from its expiry second"
    );
    assert_eq!(
        s.prune_session_revocations(t(1_999)).await.expect("prune"),
        0
    );
    assert_eq!(listed(1_000).await.len(), 2, "nothing pruned early");
    assert_eq!(
        s.prune_session_revocations(t(2_000)).await.expect("prune"),
        1
    );
    assert_eq!(listed(1_000).await, [("ss_2".to_owned(), t(3_000))]);
    // A pruned session id may be recorded again.
    assert!(
        s.revoke_session(&revocation("ss_1", 2_500, 4_000))
            .await
            .expect("revoke after prune")
    );
    assert_eq!(
        s.prune_session_revocations(t(9_999)).await.expect("prune"),
        2
    );
    assert_eq!(listed(0).await, []);
}

/// A verdict for `digest` under `ruleset`, scanned at `at`, with one file finding when dirty.
pub(super) fn verdict(digest: &str, ruleset: &str, dirty: bool, at: u64) -> VerdictRecord {
    VerdictRecord {
        digest: digest.to_owned(),
        ruleset_version: ruleset.to_owned(),
        repository: Some("registry.example/shop/api".to_owned()),
        verdict: if dirty {
            lanyard_scan::Verdict::Dirty
        } else {
            lanyard_scan::Verdict::Clean
        },
        findings: if dirty {
            vec![FindingSummary {
                rule: "aws-access-key-id".to_owned(),
                location_kind: "file".to_owned(),
                layer: Some(2),
                name: Some("app/.env".to_owned()),
                fingerprint: format!("v1:{}", "0f".repeat(16)),
                platform: Some("linux/arm64".to_owned()),
            }]
        } else {
            Vec::new()
        },
        incomplete: Vec::new(),
        platforms: vec!["linux/amd64".to_owned(), "linux/arm64".to_owned()],
        scanned_at: t(at),
    }
}

async fn verdicts_are_keyed_by_digest_and_ruleset(s: Arc<dyn Store>) {
    let (a, b) = (
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    );
    assert_eq!(s.verdict(&a, "r1").await.expect("read"), None);
    s.put_verdict(&verdict(&a, "r1", true, 1_000))
        .await
        .expect("put");
    s.put_verdict(&verdict(&b, "r1", false, 1_000))
        .await
        .expect("put");
    assert_eq!(
        s.verdict(&a, "r1").await.expect("read"),
        Some(verdict(&a, "r1", true, 1_000)),
        "the whole record, findings summary included, round-trips"
    );
    assert_eq!(
        s.verdict(&a, "r2").await.expect("read"),
        None,
        "another ruleset"
    );
    // A re-scan under the same ruleset replaces the record.
    s.put_verdict(&verdict(&a, "r1", false, 2_000))
        .await
        .expect("replace");
    assert_eq!(
        s.verdict(&a, "r1").await.expect("read"),
        Some(verdict(&a, "r1", false, 2_000))
    );
}

async fn an_older_rulesets_verdict_is_found_until_a_rescan_exists(s: Arc<dyn Store>) {
    let (a, b) = (
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    );
    s.put_verdict(&verdict(&a, "r1", false, 1_000))
        .await
        .expect("put");
    s.put_verdict(&verdict(&a, "r2", true, 2_000))
        .await
        .expect("put");
    s.put_verdict(&verdict(&b, "r1", false, 1_000))
        .await
        .expect("put");
    assert_eq!(
        s.previous_verdict(&a, "r3").await.expect("read"),
        Some(verdict(&a, "r2", true, 2_000)),
        "the most recent other ruleset"
    );
    assert_eq!(
        s.previous_verdict(&a, "r2").await.expect("read"),
        Some(verdict(&a, "r1", false, 1_000)),
        "never the excepted (current) ruleset"
    );
    assert_eq!(s.previous_verdict(&b, "r1").await.expect("read"), None);
    let repo = Some("registry.example/shop/api".to_owned());
    assert_eq!(
        s.digests_without_verdict("r2", 10).await.expect("list"),
        vec![(b.clone(), repo.clone())],
        "a has an r2 verdict; b has only r1"
    );
    assert_eq!(
        s.digests_without_verdict("r3", 10).await.expect("list"),
        vec![(a.clone(), repo.clone()), (b.clone(), repo.clone())],
        "each digest once, in digest order"
    );
    assert_eq!(
        s.digests_without_verdict("r3", 1).await.expect("list"),
        vec![(a.clone(), repo)],
        "the limit holds"
    );
    assert_eq!(
        s.digests_without_verdict("r1", 10).await.expect("list"),
        vec![],
        "both have an r1 verdict"
    );
}

async fn exemptions_are_recorded_and_replaced(s: Arc<dyn Store>) {
    let a = format!("sha256:{}", "a".repeat(64));
    assert_eq!(s.exemption(&a).await.expect("read"), None);
    let rec = ExemptionRecord {
        digest: a.clone(),
        reason: "vendor test key, INC-42".to_owned(),
        created_at: t(1_000),
    };
    s.put_exemption(&rec).await.expect("put");
    assert_eq!(s.exemption(&a).await.expect("read"), Some(rec.clone()));
    let newer = ExemptionRecord {
        reason: "renewed, INC-43".to_owned(),
        created_at: t(2_000),
        ..rec
    };
    s.put_exemption(&newer).await.expect("replace");
    assert_eq!(s.exemption(&a).await.expect("read"), Some(newer));
    assert_eq!(
        s.exemption(&format!("sha256:{}", "b".repeat(64)))
            .await
            .expect("read"),
        None
    );
}

pub(super) fn admission(uid: &str, images: &[&str], pinned: bool, expires: u64) -> AdmissionRecord {
    AdmissionRecord {
        pod_uid: uid.to_owned(),
        namespace: "shop".to_owned(),
        pod_name: if uid.ends_with('0') {
            String::new()
        } else {
            format!("pod-{uid}")
        },
        images: images.iter().map(|i| (*i).to_owned()).collect(),
        pinned,
        admitted_at: t(1_000),
        expires_at: t(expires),
    }
}

async fn admission_records_are_kept_by_pod_uid_and_replaced(s: Arc<dyn Store>) {
    let a = format!("registry.example.com/shop/api@sha256:{}", "a".repeat(64));
    let b = format!("registry.example.com/shop/debug@sha256:{}", "b".repeat(64));
    assert_eq!(s.admission_record("u-1").await.expect("read"), None);
    let rec = admission("u-1", &[&a], true, 5_000);
    s.put_admission_record(&rec).await.expect("put");
    assert_eq!(
        s.admission_record("u-1").await.expect("read"),
        Some(rec.clone())
    );
    // An UPDATE (an ephemeral container added) replaces it with the union.
    let union = AdmissionRecord {
        images: vec![a.clone(), b.clone()],
        pinned: false,
        admitted_at: t(2_000),
        ..rec.clone()
    };
    s.put_admission_record(&union).await.expect("replace");
    assert_eq!(
        s.admission_record("u-1").await.expect("read"),
        Some(union.clone())
    );
    // A record with an empty pod name (generateName) and no images round-trips too.
    let unnamed = admission("u-20", &[], true, 5_000);
    s.put_admission_record(&unnamed).await.expect("put");
    assert_eq!(
        s.admission_record("u-20").await.expect("read"),
        Some(unnamed)
    );
    assert!(s.delete_admission_record("u-1").await.expect("delete"));
    assert!(!s.delete_admission_record("u-1").await.expect("again"));
    assert_eq!(s.admission_record("u-1").await.expect("read"), None);
    assert_eq!(
        s.admission_record("u-20")
            .await
            .expect("read")
            .map(|r| r.pod_uid),
        Some("u-20".to_owned()),
        "deleting one record leaves the others"
    );
}

async fn admission_records_are_paged_by_uid_and_pruned_at_expiry(s: Arc<dyn Store>) {
    let img = format!("r.example/a@sha256:{}", "c".repeat(64));
    for (uid, expires) in [
        ("u-3", 3_000),
        ("u-1", 1_500),
        ("u-4", 9_000),
        ("u-2", 2_000),
    ] {
        s.put_admission_record(&admission(uid, &[&img], true, expires))
            .await
            .expect("put");
    }
    let uids = |v: Vec<AdmissionRecord>| v.into_iter().map(|r| r.pod_uid).collect::<Vec<_>>();
    assert_eq!(
        uids(s.admission_records_page(None, 2).await.expect("page")),
        ["u-1", "u-2"]
    );
    assert_eq!(
        uids(
            s.admission_records_page(Some("u-2"), 2)
                .await
                .expect("page")
        ),
        ["u-3", "u-4"]
    );
    assert!(
        s.admission_records_page(Some("u-4"), 2)
            .await
            .expect("page")
            .is_empty()
    );
    assert_eq!(
        uids(
            s.admission_records_page(Some("u-1"), 10)
                .await
                .expect("page")
        ),
        ["u-2", "u-3", "u-4"]
    );
    // Pruned at the expiry second, not before.
    assert_eq!(s.prune_admission_records(t(1_499)).await.expect("prune"), 0);
    assert_eq!(s.prune_admission_records(t(2_000)).await.expect("prune"), 2);
    assert_eq!(
        uids(s.admission_records_page(None, 10).await.expect("page")),
        ["u-3", "u-4"]
    );
    assert_eq!(s.admission_record("u-1").await.expect("read"), None);
    assert_eq!(s.prune_admission_records(t(2_000)).await.expect("again"), 0);
}

/// One `#[tokio::test]` per case, each on a fresh store from `$fresh`.
macro_rules! cases {
    ($fresh:expr) => {
        cases!(@each $fresh;
            bootstrap_token_is_reserved_then_committed_once,
            a_released_token_can_be_reserved_again,
            a_lapsed_reservation_is_taken_over,
            bootstrap_token_expires_at_its_expiry_second,
            a_duplicate_bootstrap_token_id_or_hash_is_refused,
            revoke_deletes_only_unredeemed_tokens,
            a_raced_token_is_reserved_exactly_once,
            a_redeemed_token_is_found_by_id,
            session_revocations_last_until_they_expire,
            leases_round_trip,
            a_lease_is_marked_revoked_once,
            expired_leases_by_backend_oldest_first,
            renewable_leases_are_the_running_renewed_ones,
            revoked_running_leases_are_listed_until_they_expire,
            leases_of_a_pod_are_found_by_its_uid,
            concurrent_lease_inserts_each_succeed_or_fail_alone,
            signing_keys_listed_oldest_first_and_deleted,
            a_signing_key_is_resealed_only_from_the_text_expected,
            audit_head_is_absent_then_overwritten,
            record_group_saves_each_lease_and_the_head,
            local_secret_is_created_once_per_name,
            local_secret_refuses_a_wrong_length,
            concurrent_first_use_of_a_local_secret_agrees,
            verdicts_are_keyed_by_digest_and_ruleset,
            an_older_rulesets_verdict_is_found_until_a_rescan_exists,
            exemptions_are_recorded_and_replaced,
            admission_records_are_kept_by_pod_uid_and_replaced,
            admission_records_are_paged_by_uid_and_pruned_at_expiry,
        );
    };
    (@each $fresh:expr; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = Fixture::from($fresh);
            super::$case(fixture.store.clone()).await;
        }
    )*};
}

/// Runs the whole contract against the store `$fresh` makes, as the module `$store`.
macro_rules! contract {
    ($store:ident, $fresh:expr) => {
        mod $store {
            use super::*;
            cases!($fresh);
        }
    };
}

// One line per implementation.
contract!(memory, MemoryStore::new());
contract!(
    sqlite_in_memory,
    SqliteStore::open_in_memory().expect("open")
);
contract!(sqlite_file, sqlite_file());
contract!(postgres, fresh_postgres().await);
