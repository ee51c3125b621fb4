//! Prometheus metrics. Names follow `lanyard_<thing>_<unit>`, counters end in `_total`, and
//! every label takes values from a bounded set (role names come from policy files, reasons
//! from fixed enums — never identities or request data).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// All broker metrics, registered in one registry: a shared handle (cloning it, as every
/// request's middleware state does, is one reference count, not one per metric).
#[derive(Debug, Clone)]
pub struct Metrics(std::sync::Arc<Registered>);

impl std::ops::Deref for Metrics {
    type Target = Registered;

    fn deref(&self) -> &Registered {
        &self.0
    }
}

/// The metrics behind a [`Metrics`] handle.
#[derive(Debug)]
pub struct Registered {
    registry: Registry,
    /// `lanyard_issuances_total{role,backend}`.
    pub issuances: IntCounterVec,
    /// `lanyard_denials_total{role,reason}` (role `-` when none applies).
    pub denials: IntCounterVec,
    /// `lanyard_request_duration_seconds{route,status}`.
    pub request_duration: HistogramVec,
    /// `lanyard_backend_duration_seconds{backend,outcome}`.
    pub backend_duration: HistogramVec,
    /// `lanyard_jwks_refresh_total{issuer,result}` (issuer as configured; result ok|error).
    pub jwks_refresh: IntCounterVec,
    /// `lanyard_tls_cert_expiry_timestamp_seconds{file}`.
    pub tls_cert_expiry: GaugeVec,
    /// `lanyard_policy_reloads_total{result}`.
    pub policy_reloads: IntCounterVec,
    /// `lanyard_policy_rules` — rules in the active policy set.
    pub policy_rules: IntGauge,
    /// `lanyard_bootstrap_tokens_total{event}`
    /// (minted|redeemed|re_redeemed|released|busy|rejected|revoked).
    pub bootstrap_tokens: IntCounterVec,
    /// `lanyard_audit_records_total{event}`.
    pub audit_records: IntCounterVec,
    /// `lanyard_upstream_calls_total{backend,outcome}` (outcome ok|error|rejected): calls to
    /// STS or Vault, and calls refused by the broker's own concurrency or rate limit.
    pub upstream_calls: IntCounterVec,
    /// `lanyard_cache_hits_total{backend}`: credentials served from the upstream cache.
    pub cache_hits: IntCounterVec,
    /// `lanyard_coalesced_waiters_total{backend}`: requests that shared another request's
    /// upstream call instead of making their own.
    pub coalesced_waiters: IntCounterVec,
    /// `lanyard_upstream_duration_seconds{backend}`: latency of upstream calls.
    pub upstream_duration: HistogramVec,
    /// `lanyard_lease_renewals_total{backend,outcome}` (renewed|capped|failed|dropped):
    /// renewals of issued upstream leases the broker holds (`issue::renewal`); `capped`
    /// means the credential ends before the time handed out.
    pub lease_renewals: IntCounterVec,
    /// `lanyard_open_connections`: connections holding one of `server.max_connections`
    /// slots (TLS handshake included).
    pub open_connections: IntGauge,
    /// `lanyard_connection_limit_waits_total`: times every slot was taken and the broker
    /// stopped accepting until one freed.
    pub connection_limit_waits: IntCounter,
    /// `lanyard_http_timeouts_total{phase}` (tls_handshake|header|body|request|idle|keep_alive):
    /// connections cut and requests refused because a deadline passed.
    pub http_timeouts: IntCounterVec,
    /// `lanyard_audit_records_suppressed_total`: failed authentications not recorded one by
    /// one (over `audit.auth_failures.records_per_window` for their source); each is counted
    /// in its source's summary record.
    pub audit_records_suppressed: IntCounter,
    /// `lanyard_audit_sink_writable`: 1 while the audit sink writes, 0 while it cannot (the
    /// broker is then not ready and refuses what it would have to record).
    pub audit_sink_writable: IntGauge,
    /// `lanyard_audit_write_failures_total`: audit writes that failed (each refused its group).
    pub audit_write_failures: IntCounter,
    /// `lanyard_audit_segment`: the number of the audit segment being written.
    pub audit_segment: IntGauge,
    /// `lanyard_audit_group_records`: records per durable group (one write and sync).
    pub audit_group_records: Histogram,
    /// `lanyard_audit_stage_seconds{stage}`: per group, `write` (write + sync of the file, or
    /// the store transaction of a chain kept in the store) and `save` (the store transaction
    /// with the group's leases and chain head, after a file write).
    pub audit_stage_duration: HistogramVec,
    /// `lanyard_audit_wait_seconds`: from a record's append to its answer (durable and saved):
    /// what each audited request waits for the audit.
    pub audit_wait: Histogram,
    /// `lanyard_errors_total{code}`: error answers by their stable code (`store_unavailable`,
    /// `unauthenticated`, ...).
    pub errors: IntCounterVec,
    /// `lanyard_session_revocations_total{result}` (revoked|already_revoked): session
    /// revocations made through this broker.
    pub session_revocations: IntCounterVec,
    /// `lanyard_session_revocation_refreshes_total{result}` (ok|error): reloads of the
    /// revoked-session set from the store.
    pub session_revocation_refreshes: IntCounterVec,
    /// `lanyard_revoked_sessions`: revoked sessions in this broker's set.
    pub revoked_sessions: IntGauge,
    /// REV (issue 16): `lanyard_pod_watch_up`: 1 while this replica's pod watch is running;
    /// 0 after it failed (it retries), and where it is off or another replica holds it.
    pub pod_watch_up: IntGauge,
    /// REV (issue 16): `lanyard_pod_watch_lists_total`: full pod lists (start, 410 Gone, a
    /// replica taking the job over).
    pub pod_watch_lists: prometheus::IntCounter,
    /// REV (issue 16): `lanyard_pod_deletion_revocations_total`: leases revoked because
    /// their pod was deleted.
    pub pod_deletion_revocations: prometheus::IntCounter,
    /// `lanyard_session_revocation_refresh_timestamp_seconds`: when the revoked-session set
    /// was last reloaded (Unix seconds). Sessions are refused (503) once it is older than
    /// `bootstrap.session_revocation_max_stale_seconds`.
    pub session_revocation_refreshed: Gauge,
    /// `lanyard_gate_verdict_lookups_total{result}` (hit|miss|previous_ruleset): verdict
    /// cache lookups of the image gate.
    pub gate_verdict_lookups: IntCounterVec,
    /// `lanyard_gate_pod_lookups_total{purpose,result}` (purpose issue|sweep; result
    /// images|not_ready|gone|error): pod lookups through the Kubernetes API.
    pub gate_pod_lookups: IntCounterVec,
    /// `lanyard_gate_scans_total{trigger,result}` (trigger demand|admin|rescan; result
    /// clean|dirty|incomplete|error): image scans the gate ran.
    pub gate_scans: IntCounterVec,
    /// `lanyard_gate_scan_waiters_total`: requests that joined a scan already running for
    /// their digest instead of starting one.
    pub gate_scan_waiters: IntCounter,
    /// `lanyard_gate_decisions_total{outcome,reason}` (outcome allow|deny|would_deny; reason
    /// from `gate::Reason`).
    pub gate_decisions: IntCounterVec,
    /// `lanyard_admission_decisions_total{outcome,reason,kind}`: validating-webhook answers
    /// (outcome allow|deny|would_deny|error; reason from `gate::Reason`, or `not_gated`,
    /// `bad_review`, `unauthenticated`, `store`; kind pod|template|other).
    pub admission_decisions: IntCounterVec,
    /// `lanyard_admission_decision_duration_seconds{kind}`: how long a review took to decide.
    pub admission_duration: HistogramVec,
    /// `lanyard_admission_records_pruned_total`: admission records removed after their
    /// retention.
    pub admission_records_pruned: IntCounter,
    /// `lanyard_admission_pinned_images_total{result}` (pinned|unpinned|already_pinned|
    /// unchanged): images of pods the mutating webhook saw, by what it did with each.
    pub admission_pinned_images: IntCounterVec,
    /// `lanyard_admission_injections_total{result}` (injected|reinvoked|refused|disabled):
    /// pods annotated `lanyard.dev/inject`, by what the mutating webhook did (issue 15).
    pub admission_injections: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let issuances = counter(
            "lanyard_issuances_total",
            "Credentials issued, by role and backend.",
            &["role", "backend"],
        );
        let denials = counter(
            "lanyard_denials_total",
            "Requests refused, by role and reason.",
            &["role", "reason"],
        );
        let request_duration = histogram(
            "lanyard_request_duration_seconds",
            "HTTP request latency by route and status.",
            &["route", "status"],
        );
        let backend_duration = histogram(
            "lanyard_backend_duration_seconds",
            "Backend issue latency by backend and outcome.",
            &["backend", "outcome"],
        );
        let jwks_refresh = counter(
            "lanyard_jwks_refresh_total",
            "JWKS refreshes by issuer and result.",
            &["issuer", "result"],
        );
        let tls_cert_expiry = GaugeVec::new(
            Opts::new(
                "lanyard_tls_cert_expiry_timestamp_seconds",
                "notAfter of the serving certificate, as a Unix timestamp.",
            ),
            &["file"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_cert_expiry.clone()))
            .expect("unique metric");
        let policy_reloads = counter(
            "lanyard_policy_reloads_total",
            "Policy reloads by result (ok|error).",
            &["result"],
        );
        let policy_rules = IntGauge::new("lanyard_policy_rules", "Rules in the active policy set.")
            .expect("valid metric");
        registry
            .register(Box::new(policy_rules.clone()))
            .expect("unique metric");
        let bootstrap_tokens = counter(
            "lanyard_bootstrap_tokens_total",
            "Bootstrap token events (minted|redeemed|rejected|revoked).",
            &["event"],
        );
        let audit_records = counter(
            "lanyard_audit_records_total",
            "Audit records written, by event.",
            &["event"],
        );
        let upstream_calls = counter(
            "lanyard_upstream_calls_total",
            "Upstream (STS, Vault) calls by backend and outcome (ok|error|rejected).",
            &["backend", "outcome"],
        );
        let cache_hits = counter(
            "lanyard_cache_hits_total",
            "Credentials served from the upstream cache, by backend.",
            &["backend"],
        );
        let coalesced_waiters = counter(
            "lanyard_coalesced_waiters_total",
            "Requests that shared another request's upstream call, by backend.",
            &["backend"],
        );
        let lease_renewals = counter(
            "lanyard_lease_renewals_total",
            "Renewals of issued upstream leases, by backend and outcome (renewed, capped, failed, dropped).",
            &["backend", "outcome"],
        );
        let upstream_duration = histogram(
            "lanyard_upstream_duration_seconds",
            "Latency of upstream (STS, Vault) calls, by backend.",
            &["backend"],
        );
        let open_connections = IntGauge::new(
            "lanyard_open_connections",
            "Connections holding a slot (TLS handshake included).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(open_connections.clone()))
            .expect("unique metric");
        let connection_limit_waits = IntCounter::new(
            "lanyard_connection_limit_waits_total",
            "Times every connection slot was taken and accepting paused until one freed.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(connection_limit_waits.clone()))
            .expect("unique metric");
        let http_timeouts = counter(
            "lanyard_http_timeouts_total",
            "Connections cut or requests refused by a deadline, by phase \
             (tls_handshake|header|body|request|idle|keep_alive).",
            &["phase"],
        );
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let audit_records_suppressed = int_counter(
            "lanyard_audit_records_suppressed_total",
            "Failed authentications over their source's per-window limit: counted in a summary \
             record, not recorded one by one.",
        );
        let audit_sink_writable = int_gauge(
            "lanyard_audit_sink_writable",
            "1 while the audit sink writes, 0 while it cannot (not ready).",
        );
        let audit_write_failures = int_counter(
            "lanyard_audit_write_failures_total",
            "Audit writes that failed; each refused its group of records.",
        );
        let audit_segment = int_gauge(
            "lanyard_audit_segment",
            "Number of the audit log segment being written.",
        );
        // The audit path's own steps take tens of microseconds to milliseconds: finer buckets.
        let fine = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
        ];
        let audit_group_records = Histogram::with_opts(
            HistogramOpts::new(
                "lanyard_audit_group_records",
                "Audit records per durable group (one write and sync).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_group_records.clone()))
            .expect("unique metric");
        let audit_stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "lanyard_audit_stage_seconds",
                "Per audit group: write (write + sync of the file, or the store transaction of \
                 a chain kept in the store) and save (the store transaction with the group's \
                 leases and chain head).",
            )
            .buckets(fine.clone()),
            &["stage"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_stage_duration.clone()))
            .expect("unique metric");
        let audit_wait = Histogram::with_opts(
            HistogramOpts::new(
                "lanyard_audit_wait_seconds",
                "From an audit record's append to its answer (durable and saved).",
            )
            .buckets(fine),
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_wait.clone()))
            .expect("unique metric");
        let errors = counter("lanyard_errors_total", "Error answers by code.", &["code"]);
        let session_revocations = counter(
            "lanyard_session_revocations_total",
            "Session revocations made through this broker, by result (revoked|already_revoked).",
            &["result"],
        );
        let session_revocation_refreshes = counter(
            "lanyard_session_revocation_refreshes_total",
            "Reloads of the revoked-session set from the store, by result (ok|error).",
            &["result"],
        );
        let revoked_sessions = IntGauge::new(
            "lanyard_revoked_sessions",
            "Revoked sessions in this broker's set.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(revoked_sessions.clone()))
            .expect("unique metric");
        // REV (issue 16): the pod watch.
        let pod_watch_up = IntGauge::new(
            "lanyard_pod_watch_up",
            "1 while this replica's pod watch runs (revocation on pod deletion), 0 after a failure.",
        )
        .expect("valid metric");
        let pod_watch_lists = prometheus::IntCounter::new(
            "lanyard_pod_watch_lists_total",
            "Full pod lists of the pod watch (start, 410 Gone, job taken over).",
        )
        .expect("valid metric");
        let pod_deletion_revocations = prometheus::IntCounter::new(
            "lanyard_pod_deletion_revocations_total",
            "Leases revoked because the pod they were issued to was deleted.",
        )
        .expect("valid metric");
        for m in [
            Box::new(pod_watch_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pod_watch_lists.clone()),
            Box::new(pod_deletion_revocations.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        let session_revocation_refreshed = Gauge::new(
            "lanyard_session_revocation_refresh_timestamp_seconds",
            "When the revoked-session set was last reloaded from the store (Unix seconds).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(session_revocation_refreshed.clone()))
            .expect("unique metric");
        let gate_verdict_lookups = counter(
            "lanyard_gate_verdict_lookups_total",
            "Image gate verdict lookups by result (hit|miss|previous_ruleset).",
            &["result"],
        );
        let gate_pod_lookups = counter(
            "lanyard_gate_pod_lookups_total",
            "Pod lookups through the Kubernetes API by purpose (issue|sweep) and result \
             (images|not_ready|gone|error).",
            &["purpose", "result"],
        );
        let gate_scans = counter(
            "lanyard_gate_scans_total",
            "Image scans run by the gate, by trigger (demand|admin|rescan) and result \
             (clean|dirty|incomplete|error).",
            &["trigger", "result"],
        );
        let gate_scan_waiters = int_counter(
            "lanyard_gate_scan_waiters_total",
            "Requests that joined a scan already running for their image digest.",
        );
        let gate_decisions = counter(
            "lanyard_gate_decisions_total",
            "Image gate decisions by outcome (allow|deny|would_deny) and reason.",
            &["outcome", "reason"],
        );
        let admission_decisions = counter(
            "lanyard_admission_decisions_total",
            "Validating admission webhook answers by outcome (allow|deny|would_deny|error), \
             reason and kind (pod|template|other).",
            &["outcome", "reason", "kind"],
        );
        let admission_duration = histogram(
            "lanyard_admission_decision_duration_seconds",
            "Time to decide an admission review, by kind (pod|template|other).",
            &["kind"],
        );
        let admission_records_pruned = int_counter(
            "lanyard_admission_records_pruned_total",
            "Admission records removed after gate.admission.record_retention_hours.",
        );
        let admission_pinned_images = counter(
            "lanyard_admission_pinned_images_total",
            "Pod images seen by the mutating admission webhook, by result: pinned (tag \
             rewritten to its digest), unpinned (left as a tag: unresolvable in time, no \
             registry host, or pinning off), already_pinned (written with a digest), unchanged \
             (an update that does not change it).",
            &["result"],
        );
        let admission_injections = counter(
            "lanyard_admission_injections_total",
            "Pods annotated lanyard.dev/inject seen by the mutating admission webhook, by \
             result: injected (sidecar added), reinvoked (already there; only what new \
             containers lacked added), refused (the pod cannot be injected as written), \
             disabled (no inject section in the broker's config).",
            &["result"],
        );
        Self(std::sync::Arc::new(Registered {
            registry,
            admission_injections,
            admission_decisions,
            admission_duration,
            admission_records_pruned,
            admission_pinned_images,
            gate_verdict_lookups,
            gate_pod_lookups,
            gate_scans,
            gate_scan_waiters,
            gate_decisions,
            audit_records_suppressed,
            audit_sink_writable,
            audit_write_failures,
            audit_segment,
            audit_group_records,
            audit_stage_duration,
            audit_wait,
            errors,
            session_revocations,
            session_revocation_refreshes,
            revoked_sessions,
            pod_watch_up,
            pod_watch_lists,
            pod_deletion_revocations,
            session_revocation_refreshed,
            open_connections,
            connection_limit_waits,
            http_timeouts,
            upstream_calls,
            cache_hits,
            coalesced_waiters,
            lease_renewals,
            upstream_duration,
            issuances,
            denials,
            request_duration,
            backend_duration,
            jwks_refresh,
            tls_cert_expiry,
            policy_reloads,
            policy_rules,
            bootstrap_tokens,
            audit_records,
        }))
    }

    /// The audit sink's health metrics, for the audit writer.
    pub fn audit_sink(&self) -> crate::audit::SinkMetrics {
        crate::audit::SinkMetrics {
            writable: self.audit_sink_writable.clone(),
            write_failures: self.audit_write_failures.clone(),
            segment: self.audit_segment.clone(),
            group_records: self.audit_group_records.clone(),
            write: self.audit_stage_duration.with_label_values(&["write"]),
            save: self.audit_stage_duration.with_label_values(&["save"]),
            wait: self.audit_wait.clone(),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
