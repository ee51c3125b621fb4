//! The audit record, and one constructor per event so each event's record carries the same
//! fields wherever it is written.
//!
//! | constructor | event, decision | fields besides `time` and `reason` |
//! |---|---|---|
//! | [`AuditRecord::issue`] | `issue`, allow | request, identity, role, backend, TTL, clamped, expiry, lease, fingerprint, upstream lease, image |
//! | [`AuditRecord::auth_failure`] | `deny`, deny | request, bootstrap token id (if any) |
//! | [`AuditRecord::admin_auth_failure`] | `deny`, deny | request (the route is in the reason) |
//! | [`AuditRecord::policy_denial`] | `deny`, deny | request, identity, role |
//! | [`AuditRecord::no_roles_granted`] | `deny`, deny | request, identity |
//! | [`AuditRecord::backend_error`] | `deny`, deny | request, identity, role, backend |
//! | [`AuditRecord::token_mint`] | `token_mint`, allow | request, token id, roles, image, TTL, expiry |
//! | [`AuditRecord::token_redeem`] | `token_redeem`, allow | request, identity, token id, image |
//! | [`AuditRecord::token_redeem_repeat`] | `token_redeem`, allow | as `token_redeem`; the reason says when the session started |
//! | [`AuditRecord::token_release`] | `token_redeem`, deny | as `token_redeem`; the reason names the failure |
//! | [`AuditRecord::token_revoke`] | `token_revoke`, allow | request, token id |
//! | [`AuditRecord::lease_revoke`] | `lease_revoke`, allow | request, the lease's identity, role, backend, id, fingerprint, upstream lease |
//! | [`AuditRecord::lease_expired`] | `lease_revoke`, allow | as `lease_revoke` without request, with expiry |
//! | [`AuditRecord::policy_reload`], [`AuditRecord::policy_reload_rejected`] | `policy_reload`, allow / deny | — |
//! | [`AuditRecord::auth_failures_suppressed`] | `deny`, deny | source, suppressed (failures of one source not recorded one by one, [`super::flood`]) |
//! | [`AuditRecord::segment_start`] | `audit_segment`, allow | segment (the first record of each segment after the first, [`super::segment`]) |
//! | [`AuditRecord::tail_cut`] | `audit_repair`, deny | cut bytes (an incomplete record cut from the log at start) |
//! | [`AuditRecord::sink_recovered`] | `audit_repair`, deny | cut bytes, suppressed (records refused while the sink could not write) |
//! | [`AuditRecord::gate_denial`] | `deny`, deny | request, identity, role, image, gate (`deny:<reason>`); the reason names the image, rule and finding location |
//! | [`AuditRecord::gate_note`] | `gate`, allow | request, identity, role, image, gate (`would_deny:<reason>` in audit mode, `allow:exempted`, `allow:unknown_workload`) |
//! | [`AuditRecord::image_scan`] | `image_scan`, allow / deny | request, image, gate (`verdict:<verdict>`) — an operator's scan ahead |
//! | [`AuditRecord::image_exempt`] | `image_exempt`, allow | request, image (the digest); the reason is the operator's |
//! | [`AuditRecord::admission_pin`] | `admission_pin`, allow | request, identity (`pod NAMESPACE/NAME`), image (the pinned references), gate (`pin:pinned`, `pin:partial`, `pin:unpinned`); the reason names the pod and each image pinned or left as a tag, with why |
//!
//! An `issue` record carries `gate` too: the gate's outcome and reason for it (`allow:clean`,
//! `allow:no_image`, ...).
//!
//! "Identity" is the subject and its issuer.

use std::fmt::Display;
use std::time::SystemTime;

use lanyard::clock::rfc3339;
use lanyard::wire::MintTokenRequest;
use serde::{Deserialize, Serialize};

use super::flood::Summary;
use super::line::CUT_MARK;
use crate::authn::bootstrap::MintedToken;
use crate::authn::{AuthnError, Identity};
use crate::issue::lifetime::Granted;
use crate::policy::{Denial, Grant, PolicyErrors};
use crate::store::{LeaseRecord, SessionRevocation};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A credential was issued.
    Issue,
    /// A request was refused (authentication or policy).
    Deny,
    /// A bootstrap token was minted.
    TokenMint,
    /// A bootstrap token was redeemed.
    TokenRedeem,
    /// A bootstrap token was revoked.
    TokenRevoke,
    /// A lease was revoked.
    LeaseRevoke,
    /// A session (the tokens that followed a bootstrap token's redemption) was revoked.
    SessionRevoke,
    /// Policies were reloaded (or a reload was rejected).
    PolicyReload,
    /// A new audit segment begins (its first record).
    AuditSegment,
    /// The audit log was repaired: an incomplete record was cut, or the sink recovered
    /// after it could not write.
    AuditRepair,
    /// The image gate let an issuance through that deserves a record of its own: audit mode
    /// (what enforce mode would have refused), an exemption used, an unknown workload allowed.
    Gate,
    /// An operator scanned an image ahead.
    ImageScan,
    /// An operator exempted an image digest from the gate.
    ImageExempt,
    /// The validating admission webhook decided a review (allowed, denied, or allowed with a
    /// warning), or refused a caller that is not the API server.
    Admission,
    /// The mutating admission webhook pinned a pod's image tags to digests, or could not.
    AdmissionPin,
    /// The mutating admission webhook injected the sidecar into a pod annotated
    /// `lanyard.dev/inject`, or refused to (issue 15).
    AdmissionInject,
}

impl Event {
    /// Its name in the log (`issue`, `token_mint`, ...), e.g. for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Deny => "deny",
            Self::TokenMint => "token_mint",
            Self::TokenRedeem => "token_redeem",
            Self::TokenRevoke => "token_revoke",
            Self::LeaseRevoke => "lease_revoke",
            Self::SessionRevoke => "session_revoke",
            Self::PolicyReload => "policy_reload",
            Self::AuditSegment => "audit_segment",
            Self::AuditRepair => "audit_repair",
            Self::Gate => "gate",
            Self::ImageScan => "image_scan",
            Self::ImageExempt => "image_exempt",
            Self::Admission => "admission",
            Self::AdmissionPin => "admission_pin",
            Self::AdmissionInject => "admission_inject",
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed / succeeded.
    Allow,
    /// Denied / failed.
    Deny,
}

/// One audit record, before chaining. Never holds a secret: `fingerprint` is an HMAC of the
/// credential under a broker-local key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 time.
    pub time: String,
    /// What happened.
    pub event: Event,
    /// Allow or deny.
    pub decision: Decision,
    /// Why (rule name, denial reason, reload outcome).
    pub reason: String,
    /// The request id, when the record comes from an API request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Identity subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Identity issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Backend kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Granted TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Whether the requested TTL was clamped to the role's cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ttl_clamped: bool,
    /// Credential expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Lease id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Bootstrap token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Image digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credential fingerprint (`hmac-sha256:` + 32 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The upstream's own lease or session id (Vault `lease_id` or token accessor, STS
    /// assumed-role id). An identifier, never a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_lease: Option<String>,
    /// The client's address (IPv4, or an IPv6 /64) of a failed authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How many records this one stands for that were not written one by one (failed
    /// authentications of one source in one window; records refused while the sink failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// The segment an `audit_segment` record begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u64>,
    /// Bytes an `audit_repair` record says were cut from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_bytes: Option<u64>,
    /// The image gate's outcome and reason (`allow:clean`, `deny:dirty`, `would_deny:dirty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// Where the image gate learnt the workload's images (`bootstrap_binding`,
    /// `admission_record`, `pod_status`), when it learnt them from a trusted source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_source: Option<String>,
    /// The replica that wrote the record, when records are kept in the store (`audit.sink:
    /// store`): each broker process writes a chain of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The number of that chain in the store (unique, increasing with each process start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The Kubernetes pod an `issue` record's credential went to (its `pod_uid`), so the pod
    /// watch can revoke a lease replayed from the log (see [`AuditRecord::replayed_lease`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The upstream lease's own length in seconds when the broker renews it up to
    /// `expires_at` (an `issue` record of a renewed lease), for the same reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_step_secs: Option<u64>,
}

impl AuditRecord {
    /// A record with the required fields; fill the rest with struct update syntax.
    pub fn new(time: String, event: Event, decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            time,
            event,
            decision,
            reason: reason.into(),
            request_id: None,
            identity: None,
            issuer: None,
            role: None,
            backend: None,
            ttl_seconds: None,
            ttl_clamped: false,
            expires_at: None,
            lease_id: None,
            token_id: None,
            image: None,
            fingerprint: None,
            upstream_lease: None,
            source: None,
            suppressed: None,
            segment: None,
            cut_bytes: None,
            gate: None,
            gate_source: None,
            replica: None,
            epoch: None,
            pod_uid: None,
            renew_step_secs: None,
        }
    }

    /// Every text field that is set, for the line builder to cut one that would make the line
    /// too long ([`super::line`]). Every field is named, so a new one cannot be missed.
    pub(crate) fn text_fields_mut(&mut self) -> Vec<&mut String> {
        let Self {
            time,
            event: _,
            decision: _,
            reason,
            request_id,
            identity,
            issuer,
            role,
            backend,
            ttl_seconds: _,
            ttl_clamped: _,
            expires_at,
            lease_id,
            token_id,
            image,
            fingerprint,
            upstream_lease,
            source,
            suppressed: _,
            segment: _,
            cut_bytes: _,
            gate,
            gate_source,
            replica: _,
            epoch: _,
            pod_uid,
            renew_step_secs: _,
        } = self;
        let optional = [
            request_id,
            identity,
            issuer,
            role,
            backend,
            expires_at,
            lease_id,
            token_id,
            image,
            fingerprint,
            upstream_lease,
            source,
            gate,
            gate_source,
            pod_uid,
        ];
        let mut fields = vec![time, reason];
        fields.extend(optional.into_iter().flatten());
        fields
    }

    fn at(now: SystemTime, event: Event, decision: Decision, reason: impl Into<String>) -> Self {
        Self::new(rfc3339(now), event, decision, reason)
    }

    fn request(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }

    fn identity(mut self, identity: &Identity) -> Self {
        self.identity = Some(identity.subject.clone());
        self.issuer = Some(identity.issuer.clone());
        self
    }

    /// The lease's identity, role, backend, ids and fingerprint.
    pub(crate) fn lease(mut self, lease: &LeaseRecord) -> Self {
        self.identity = Some(lease.subject.clone());
        self.issuer = Some(lease.issuer.clone());
        self.role = Some(lease.role.clone());
        self.backend = Some(lease.backend.clone());
        self.lease_id = Some(lease.lease_id.clone());
        self.fingerprint = Some(lease.fingerprint.clone());
        self.upstream_lease = lease.upstream_lease.clone();
        self.pod_uid = lease.pod_uid.clone();
        self.renew_step_secs = lease.renew_step_secs;
        self
    }

    /// The lease row an `issue` record stands for: what the broker saved with it (`issued_at`
    /// to the second, as saved). Replayed into the store at start when the record is after
    /// the store's chain head (`audit::resume`): issuance groups commit without waiting for
    /// the store's disk sync, because the log already holds them durably. `None` for any
    /// other record, or one that lacks a field the row needs.
    pub fn replayed_lease(&self) -> Option<LeaseRecord> {
        if self.event != Event::Issue || self.decision != Decision::Allow {
            return None;
        }
        // A field the line builder cut (`line::cut_marker`) is not the row's value.
        let cut = |f: &Option<String>| f.as_deref().is_some_and(|v| v.contains(CUT_MARK));
        if [
            &self.identity,
            &self.issuer,
            &self.role,
            &self.backend,
            &self.lease_id,
            &self.fingerprint,
            &self.upstream_lease,
            &self.pod_uid,
        ]
        .into_iter()
        .any(cut)
        {
            return None;
        }
        let issued_at = lanyard::clock::parse_rfc3339(&self.time)?;
        let issued_at = crate::issue::lifetime::whole_seconds(issued_at);
        Some(LeaseRecord {
            lease_id: self.lease_id.clone()?,
            role: self.role.clone()?,
            backend: self.backend.clone()?,
            subject: self.identity.clone()?,
            issuer: self.issuer.clone()?,
            issued_at,
            expires_at: lanyard::clock::parse_rfc3339(self.expires_at.as_deref()?)?,
            upstream_lease: self.upstream_lease.clone(),
            fingerprint: self.fingerprint.clone()?,
            revoked_at: None,
            renew_step_secs: self.renew_step_secs,
            pod_uid: self.pod_uid.clone(),
        })
    }

    /// A credential was issued to `identity` under `grant`, stored as `lease`, with the
    /// lifetime `granted`.
    pub fn issue(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        grant: &Grant,
        lease: &LeaseRecord,
        granted: &Granted,
    ) -> Self {
        let clamped = if granted.clamped {
            "; ttl clamped to role cap"
        } else {
            ""
        };
        let reason = format!(
            "granted by rule {} ({}){clamped}",
            grant.rule, grant.location
        );
        let mut rec = Self::at(now, Event::Issue, Decision::Allow, reason)
            .request(request_id)
            .lease(lease);
        rec.ttl_seconds = Some(granted.ttl_seconds());
        rec.ttl_clamped = granted.clamped;
        rec.expires_at = Some(rfc3339(granted.expires_at));
        rec.image = bootstrap_image(identity);
        rec
    }

    /// Adds the image gate's outcome to a record (an `issue` record: why the gate let it
    /// through).
    pub fn with_gate(mut self, decision: &crate::gate::Decision) -> Self {
        self.gate = Some(format!(
            "{}:{}",
            decision.outcome.as_str(),
            decision.reason.as_str()
        ));
        self.gate_source = decision.source.map(|s| s.as_str().to_owned());
        // The images the gate checked, when the identity binds none (a pod token).
        if self.image.is_none() {
            self.image = gate_images(decision);
        }
        self
    }

    /// The image gate refused `role` to `identity`.
    pub fn gate_denial(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        role: &str,
        decision: &crate::gate::Decision,
    ) -> Self {
        let reason = format!(
            "image_gate {}: {}",
            decision.reason.as_str(),
            decision.detail
        );
        let mut rec = Self::at(now, Event::Deny, Decision::Deny, reason)
            .request(request_id)
            .identity(identity)
            .with_gate(decision);
        rec.role = Some(role.to_owned());
        rec.image = gate_images(decision).or_else(|| bootstrap_image(identity));
        rec
    }

    /// The image gate let `role` through for `identity` in a way that is recorded on its own:
    /// audit mode's "would deny", an exemption used, an unknown workload allowed.
    pub fn gate_note(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        role: &str,
        decision: &crate::gate::Decision,
    ) -> Self {
        let reason = match decision.outcome {
            crate::gate::Outcome::WouldDeny => format!(
                "image_gate would deny ({}; gate mode audit): {}",
                decision.reason.as_str(),
                decision.detail
            ),
            _ => format!(
                "image_gate {}: {}",
                decision.reason.as_str(),
                decision.detail
            ),
        };
        let mut rec = Self::at(now, Event::Gate, Decision::Allow, reason)
            .request(request_id)
            .identity(identity)
            .with_gate(decision);
        rec.role = Some(role.to_owned());
        rec.image = gate_images(decision).or_else(|| bootstrap_image(identity));
        rec
    }

    /// An operator scanned `image` ahead; `verdict` is `clean`, `dirty`, `incomplete`,
    /// `pending` or `error`.
    pub fn image_scan(
        now: SystemTime,
        request_id: &str,
        image: &str,
        verdict: &str,
        detail: &str,
    ) -> Self {
        let decision = if verdict == "clean" {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let mut rec = Self::at(
            now,
            Event::ImageScan,
            decision,
            format!("scan ahead: {verdict}{detail}"),
        )
        .request(request_id);
        rec.image = Some(image.to_owned());
        rec.gate = Some(format!("verdict:{verdict}"));
        rec
    }

    /// The validating webhook decided the admission of `what` (`pod shop/web`, `Deployment
    /// shop/api pod template`): `images` as checked (references, never a secret), the
    /// decision's detail (findings as locations only), and whether a record was written.
    pub fn admission(
        now: SystemTime,
        request_id: &str,
        what: &str,
        images: &[String],
        decision: &crate::gate::admission::AdmissionDecision,
        note: &str,
    ) -> Self {
        let verdict = if decision.allowed {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let mut reason = format!(
            "admission of {what}: {}:{}: {}",
            decision.outcome.as_str(),
            decision.reason.as_str(),
            decision.detail
        );
        for w in &decision.warnings {
            reason.push_str(&format!("; warning: {w}"));
        }
        if !note.is_empty() {
            reason.push_str(&format!("; {note}"));
        }
        let mut rec = Self::at(now, Event::Admission, verdict, reason).request(request_id);
        rec.identity = Some(what.to_owned());
        rec.image = (!images.is_empty()).then(|| images.join(", "));
        rec.gate = Some(format!(
            "{}:{}",
            decision.outcome.as_str(),
            decision.reason.as_str()
        ));
        rec
    }

    /// A caller of the admission `route` that is not the API server (`reason`).
    pub fn admission_auth_failure(
        now: SystemTime,
        request_id: &str,
        route: &str,
        reason: &str,
    ) -> Self {
        let reason = format!("admission caller not authenticated ({route}): {reason}");
        Self::at(now, Event::Admission, Decision::Deny, reason).request(request_id)
    }

    /// An operator exempted `digest` from the gate, for `reason`.
    pub fn image_exempt(now: SystemTime, request_id: &str, digest: &str, reason: &str) -> Self {
        let mut rec = Self::at(
            now,
            Event::ImageExempt,
            Decision::Allow,
            format!("exemption recorded: {reason}"),
        )
        .request(request_id);
        rec.image = Some(digest.to_owned());
        rec
    }

    /// The mutating admission webhook answered for `pod` (`pod namespace/name`, also in
    /// `identity` as the validating webhook's `admission` records have it): the images it
    /// pinned (`container `c`: repo:tag → repo@sha256:…`) and the warnings of those it left
    /// as tags. Always allow: pinning never denies.
    pub fn admission_pin(
        now: SystemTime,
        request_id: &str,
        pod: &str,
        pinned: &[String],
        unpinned: &[String],
    ) -> Self {
        let outcome = match (pinned.is_empty(), unpinned.is_empty()) {
            (false, true) => "pinned",
            (true, false) => "unpinned",
            _ => "partial",
        };
        let mut reason = format!("{pod}:");
        if !pinned.is_empty() {
            reason.push_str(&format!(" pinned {}", pinned.join("; ")));
        }
        if !unpinned.is_empty() {
            if !pinned.is_empty() {
                reason.push(';');
            }
            reason.push_str(&format!(" left as tags: {}", unpinned.join("; ")));
        }
        let mut rec =
            Self::at(now, Event::AdmissionPin, Decision::Allow, reason).request(request_id);
        rec.identity = Some(pod.to_owned());
        if !pinned.is_empty() {
            rec.image = Some(
                pinned
                    .iter()
                    .filter_map(|p| p.rsplit_once(" → ").map(|(_, r)| r))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        rec.gate = Some(format!("pin:{outcome}"));
        rec
    }

    /// The mutating webhook injected the sidecar into `pod` (`detail`: roles and target
    /// names, never values), or refused to (`refusal`: the message the client got).
    pub fn admission_inject(
        now: SystemTime,
        request_id: &str,
        pod: &str,
        detail: Result<&str, &str>,
    ) -> Self {
        let (decision, reason, outcome) = match detail {
            Ok(d) => (Decision::Allow, format!("{pod}: {d}"), "inject:injected"),
            Err(m) => (Decision::Deny, format!("{pod}: {m}"), "inject:refused"),
        };
        let mut rec = Self::at(now, Event::AdmissionInject, decision, reason).request(request_id);
        rec.identity = Some(pod.to_owned());
        rec.gate = Some(outcome.to_owned());
        rec
    }

    /// A bearer credential did not authenticate; `token_id` names the bootstrap token when
    /// one was presented and found.
    pub fn auth_failure(
        now: SystemTime,
        request_id: &str,
        error: &AuthnError,
        token_id: Option<String>,
    ) -> Self {
        let reason = format!("authentication failed: {}", error.reason());
        let mut rec = Self::at(now, Event::Deny, Decision::Deny, reason).request(request_id);
        rec.token_id = token_id;
        rec
    }

    /// The client address a failed authentication came from (see [`super::flood::Source`]).
    pub fn from_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source.map(|ip| super::flood::Source::of(ip).to_string());
        self
    }

    /// Failed authentications of one source that were counted but not recorded one by one,
    /// in the window that began at `summary.window_start`.
    pub fn auth_failures_suppressed(now: SystemTime, summary: &Summary) -> Self {
        let reason = format!(
            "authentication failed {} more times from this source in the window that began at {} \
             (over audit.auth_failures.records_per_window; not recorded one by one)",
            summary.suppressed,
            rfc3339(summary.window_start)
        );
        let mut rec = Self::at(now, Event::Deny, Decision::Deny, reason);
        rec.source = Some(summary.source.to_string());
        rec.suppressed = Some(summary.suppressed);
        rec
    }

    /// The first record of segment `n` (`n ≥ 1`), which follows `previous` (a file name).
    pub fn segment_start(now: SystemTime, n: u64, previous: &str) -> Self {
        let reason = format!("segment {n} begins; the chain continues from {previous}");
        let mut rec = Self::at(now, Event::AuditSegment, Decision::Allow, reason);
        rec.segment = Some(n);
        rec
    }

    /// At start, `cut` bytes after the last complete record of `file` were cut: an incomplete
    /// record (a write cut short) and `unwritten` NUL bytes of unwritten space.
    pub fn tail_cut(now: SystemTime, file: &str, cut: u64, unwritten: u64) -> Self {
        let reason = format!(
            "at start, cut {cut} bytes after the last complete record of {file}: \
             {} bytes of an incomplete record (a write cut short by a crash or a full disk; \
             never acknowledged) and {unwritten} bytes of unwritten (NUL) space",
            cut - unwritten
        );
        let mut rec = Self::at(now, Event::AuditRepair, Decision::Deny, reason);
        rec.cut_bytes = Some(cut);
        rec
    }

    /// The sink could write again after failing from `since` with `error`: `refused` records
    /// were refused meanwhile (their requests failed, retryably), and the `cut` bytes of an
    /// unfinished write were cut from the log.
    pub fn sink_recovered(
        now: SystemTime,
        since: SystemTime,
        error: &str,
        refused: u64,
        cut: u64,
    ) -> Self {
        let reason = format!(
            "the audit sink could not write from {} ({error}); {refused} records were refused \
             meanwhile (their requests failed with a retryable 503) and {cut} bytes of an \
             unfinished write were cut",
            rfc3339(since)
        );
        let mut rec = Self::at(now, Event::AuditRepair, Decision::Deny, reason);
        rec.suppressed = Some(refused);
        rec.cut_bytes = Some(cut);
        rec
    }

    /// A request to the admin `route` did not carry the admin credential (`reason`).
    pub fn admin_auth_failure(
        now: SystemTime,
        request_id: &str,
        route: &str,
        reason: &str,
    ) -> Self {
        let reason = format!("admin authentication failed ({route}): {reason}");
        Self::at(now, Event::Deny, Decision::Deny, reason).request(request_id)
    }

    /// Policy refused a role to `identity`.
    pub fn policy_denial(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        denial: &Denial,
    ) -> Self {
        let reason = format!("{}: {}", denial.reason, denial.detail);
        let mut rec = Self::at(now, Event::Deny, Decision::Deny, reason)
            .request(request_id)
            .identity(identity);
        rec.role = Some(denial.role.clone());
        rec
    }

    /// No policy grants `identity` any role.
    pub fn no_roles_granted(now: SystemTime, request_id: &str, identity: &Identity) -> Self {
        Self::at(now, Event::Deny, Decision::Deny, "no_roles_granted")
            .request(request_id)
            .identity(identity)
    }

    /// The `backend` of `role` failed to issue to `identity`. `error` must not hold a secret
    /// (backend errors never do).
    pub fn backend_error(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        role: &str,
        backend: &str,
        error: &dyn Display,
    ) -> Self {
        let mut rec = Self::at(
            now,
            Event::Deny,
            Decision::Deny,
            format!("backend_error: {error}"),
        )
        .request(request_id)
        .identity(identity);
        rec.role = Some(role.to_owned());
        rec.backend = Some(backend.to_owned());
        rec
    }

    /// An admin minted a bootstrap token for `req`, valid `ttl_seconds`.
    pub fn token_mint(
        now: SystemTime,
        request_id: &str,
        req: &MintTokenRequest,
        ttl_seconds: u64,
        minted: &MintedToken,
    ) -> Self {
        let mut rec =
            Self::at(now, Event::TokenMint, Decision::Allow, "minted by admin").request(request_id);
        rec.token_id = Some(minted.token_id.clone());
        rec.role = Some(req.roles.join(","));
        rec.image = req.image.clone();
        rec.ttl_seconds = Some(ttl_seconds);
        rec.expires_at = Some(rfc3339(minted.expires_at));
        rec
    }

    /// A bootstrap token was redeemed; `identity` carries its binding.
    pub fn token_redeem(now: SystemTime, request_id: &str, identity: &Identity) -> Self {
        let mut rec = Self::at(now, Event::TokenRedeem, Decision::Allow, "redeemed")
            .request(request_id)
            .identity(identity);
        rec.token_id = identity.bootstrap.as_ref().map(|b| b.token_id.clone());
        rec.image = bootstrap_image(identity);
        rec
    }

    /// A bootstrap token was presented again within the grace window after its redemption,
    /// and served as the same session, which started at `session_started`.
    pub fn token_redeem_repeat(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        session_started: SystemTime,
    ) -> Self {
        Self {
            reason: format!(
                "re-redeemed within the grace window: the session started at {}",
                rfc3339(session_started)
            ),
            ..Self::token_redeem(now, request_id, identity)
        }
    }

    /// The redemption of a bootstrap token was released because the request failed
    /// (`failure`: a stable error reason such as `forbidden` or `upstream_unavailable`): the
    /// token is unused.
    pub fn token_release(
        now: SystemTime,
        request_id: &str,
        identity: &Identity,
        failure: &str,
    ) -> Self {
        Self {
            decision: Decision::Deny,
            reason: format!("released, the token is unused: {failure}"),
            ..Self::token_redeem(now, request_id, identity)
        }
    }

    /// An admin revoked an unredeemed bootstrap token.
    pub fn token_revoke(now: SystemTime, request_id: &str, token_id: &str) -> Self {
        let mut rec = Self::at(now, Event::TokenRevoke, Decision::Allow, "revoked by admin")
            .request(request_id);
        rec.token_id = Some(token_id.to_owned());
        rec
    }

    /// An admin revoked the session `rec` (`how`: by its id, by a token of it); `already`
    /// when it had been revoked before. The record names the session and its bootstrap token
    /// id, never a token.
    pub fn session_revoke(
        now: SystemTime,
        request_id: &str,
        rec: &SessionRevocation,
        how: &str,
        already: bool,
    ) -> Self {
        let reason = if already {
            format!(
                "session {} revoked by admin ({how}): already revoked",
                rec.session_id
            )
        } else {
            format!("session {} revoked by admin ({how})", rec.session_id)
        };
        let mut out =
            Self::at(now, Event::SessionRevoke, Decision::Allow, reason).request(request_id);
        out.token_id = crate::authn::session::token_id_of(&rec.session_id);
        out.expires_at = Some(rfc3339(rec.expires_at));
        out
    }

    /// An admin or the workload revoked `lease`; `upstream_revoked` says whether the backend
    /// revoked it upstream or it stays valid until it expires.
    pub fn lease_revoke(
        now: SystemTime,
        request_id: &str,
        lease: &LeaseRecord,
        upstream_revoked: bool,
    ) -> Self {
        let reason = if upstream_revoked {
            "revoked upstream"
        } else {
            "recorded; the credential stays valid until it expires (backend cannot revoke)"
        };
        Self::at(now, Event::LeaseRevoke, Decision::Allow, reason)
            .request(request_id)
            .lease(lease)
    }

    /// An admin revoked the sessions of the `aws-sts` role `role` (IAM role `role_arn`) issued
    /// before `issued_before`: the broker dropped `dropped` cached sessions and produced the
    /// deny policy to attach.
    pub fn sts_role_revoke(
        now: SystemTime,
        request_id: &str,
        role: &str,
        role_arn: &str,
        issued_before: &str,
        dropped: usize,
    ) -> Self {
        let reason = format!(
            "aws-sts sessions of {role_arn} issued before {issued_before} revoked by admin: \
             {dropped} cached sessions dropped; they stay valid at AWS until the deny policy \
             produced is attached to the role"
        );
        let mut out =
            Self::at(now, Event::LeaseRevoke, Decision::Allow, reason).request(request_id);
        out.role = Some(role.to_owned());
        out.backend = Some(crate::issue::sts::KIND.to_owned());
        out
    }

    /// The revoke-on-expiry sweep revoked the expired `lease`.
    pub fn lease_expired(now: SystemTime, lease: &LeaseRecord, upstream_revoked: bool) -> Self {
        let reason = if upstream_revoked {
            "expired; revoked upstream"
        } else {
            "expired; nothing to revoke upstream"
        };
        let mut rec = Self::at(now, Event::LeaseRevoke, Decision::Allow, reason).lease(lease);
        rec.expires_at = Some(rfc3339(lease.expires_at));
        rec
    }

    /// A new policy set of `rules` rules with `digest` is active.
    pub fn policy_reload(now: SystemTime, rules: usize, digest: &str) -> Self {
        let reason = format!("loaded {rules} rules, digest {digest}");
        Self::at(now, Event::PolicyReload, Decision::Allow, reason)
    }

    /// A policy reload was refused; the last good set stays active.
    pub fn policy_reload_rejected(now: SystemTime, errors: &PolicyErrors) -> Self {
        let reason = format!(
            "rejected ({} problems, first: {}); last good set kept",
            errors.0.len(),
            errors.0.first().map(|e| e.to_string()).unwrap_or_default()
        );
        Self::at(now, Event::PolicyReload, Decision::Deny, reason)
    }
}

fn gate_images(decision: &crate::gate::Decision) -> Option<String> {
    (!decision.images.is_empty()).then(|| decision.images.join(", "))
}

fn bootstrap_image(identity: &Identity) -> Option<String> {
    identity.bootstrap.as_ref().and_then(|b| b.image.clone())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use lanyard::Secret;

    use super::*;
    use crate::authn::{BOOTSTRAP_ISSUER, BootstrapBinding, KubernetesIdentity};
    use crate::policy::{Location, PolicyError};

    const T0: u64 = 1_800_000_000;
    const NOW: &str = "2027-01-15T08:00:00Z";
    const IN_10_MIN: &str = "2027-01-15T08:10:00Z";
    const K8S: &str = "https://kubernetes.default.svc";
    const SA: &str = "system:serviceaccount:shop:api";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn workload() -> Identity {
        Identity {
            issuer: K8S.into(),
            subject: SA.into(),
            kubernetes: Some(KubernetesIdentity {
                namespace: "shop".into(),
                service_account: "api".into(),
                pod_name: None,
                pod_uid: None,
                admission: Default::default(),
            }),
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn bootstrapped() -> Identity {
        Identity {
            issuer: BOOTSTRAP_ISSUER.into(),
            subject: "bootstrap:bt_1".into(),
            kubernetes: None,
            bootstrap: Some(BootstrapBinding {
                token_id: "bt_1".into(),
                roles: vec!["db".into()],
                image: Some("sha256:abcd".into()),
            }),
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn lease(upstream: Option<&str>) -> LeaseRecord {
        LeaseRecord {
            lease_id: "ls_1".into(),
            role: "db".into(),
            backend: "vault".into(),
            subject: SA.into(),
            issuer: K8S.into(),
            issued_at: at(T0),
            expires_at: at(T0 + 600),
            upstream_lease: upstream.map(str::to_owned),
            fingerprint: "hmac-sha256:00ff".into(),
            revoked_at: None,
            renew_step_secs: None,
            pod_uid: None,
        }
    }

    fn grant() -> Grant {
        Grant {
            role: "db".into(),
            rule: "shop-db".into(),
            location: Location {
                file: PathBuf::from("policies/shop.yaml"),
                line: 7,
            },
        }
    }

    fn base(event: Event, decision: Decision, reason: &str) -> AuditRecord {
        AuditRecord::new(NOW.into(), event, decision, reason)
    }

    #[test]
    fn event_names_are_their_log_names() {
        for event in [
            Event::Issue,
            Event::Deny,
            Event::TokenMint,
            Event::TokenRedeem,
            Event::TokenRevoke,
            Event::LeaseRevoke,
            Event::PolicyReload,
            Event::AuditSegment,
            Event::AuditRepair,
        ] {
            assert_eq!(
                serde_json::to_value(event).expect("serializes"),
                event.name(),
                "{event:?}"
            );
        }
    }

    #[test]
    fn an_issue_names_the_rule_lease_lifetime_and_image() {
        let granted = Granted {
            expires_at: at(T0 + 600),
            lifetime: Duration::from_secs(600),
            refresh_after: at(T0 + 420),
            clamped: false,
        };
        let rec = AuditRecord::issue(
            at(T0),
            "req_1",
            &bootstrapped(),
            &grant(),
            &lease(Some("database/creds/db/abc")),
            &granted,
        );
        assert_eq!(
            rec,
            AuditRecord {
                request_id: Some("req_1".into()),
                identity: Some(SA.into()),
                issuer: Some(K8S.into()),
                role: Some("db".into()),
                backend: Some("vault".into()),
                ttl_seconds: Some(600),
                ttl_clamped: false,
                expires_at: Some(IN_10_MIN.into()),
                lease_id: Some("ls_1".into()),
                image: Some("sha256:abcd".into()),
                fingerprint: Some("hmac-sha256:00ff".into()),
                upstream_lease: Some("database/creds/db/abc".into()),
                ..base(
                    Event::Issue,
                    Decision::Allow,
                    "granted by rule shop-db (policies/shop.yaml:7)"
                )
            }
        );
        let clamped = AuditRecord::issue(
            at(T0),
            "req_1",
            &workload(),
            &grant(),
            &lease(None),
            &Granted {
                clamped: true,
                ..granted
            },
        );
        assert!(clamped.ttl_clamped);
        assert_eq!(
            clamped.reason,
            "granted by rule shop-db (policies/shop.yaml:7); ttl clamped to role cap"
        );
        assert_eq!((clamped.image, clamped.upstream_lease), (None, None));
    }

    #[test]
    fn an_issue_record_gives_back_the_lease_row_saved_with_it() {
        let granted = Granted {
            expires_at: at(T0 + 600),
            lifetime: Duration::from_secs(600),
            refresh_after: at(T0 + 420),
            clamped: false,
        };
        let lease = LeaseRecord {
            pod_uid: Some("9f1c-pod".into()),
            renew_step_secs: Some(120),
            ..lease(Some("database/creds/db/abc"))
        };
        let rec = AuditRecord::issue(at(T0), "req_1", &workload(), &grant(), &lease, &granted);
        assert_eq!(rec.replayed_lease(), Some(lease.clone()));
        // Through the line the log writes, as the start-up replay reads it.
        let (line, _) = super::super::line::build_line(7, super::super::line::GENESIS_PREV, &rec)
            .expect("line");
        let parsed = super::super::line::parse_line(&line).expect("parse");
        assert_eq!(parsed.record.replayed_lease(), Some(lease));
        // Nothing else stands for a lease.
        let denial = AuditRecord::no_roles_granted(at(T0), "req_2", &workload());
        assert_eq!(denial.replayed_lease(), None);
    }

    #[test]
    fn an_authentication_failure_names_the_reason_and_token() {
        let rec = AuditRecord::auth_failure(
            at(T0),
            "req_1",
            &AuthnError::TokenReused,
            Some("bt_1".into()),
        );
        assert_eq!(
            rec,
            AuditRecord {
                request_id: Some("req_1".into()),
                token_id: Some("bt_1".into()),
                ..base(
                    Event::Deny,
                    Decision::Deny,
                    "authentication failed: token_reused"
                )
            }
        );
    }

    #[test]
    fn an_admin_authentication_failure_names_the_route_and_reason() {
        assert_eq!(
            AuditRecord::admin_auth_failure(
                at(T0),
                "req_1",
                "POST /v1/admin/tokens",
                "admin_wrong_token"
            ),
            AuditRecord {
                request_id: Some("req_1".into()),
                ..base(
                    Event::Deny,
                    Decision::Deny,
                    "admin authentication failed (POST /v1/admin/tokens): admin_wrong_token"
                )
            }
        );
    }

    #[test]
    fn denials_name_the_identity_and_what_was_refused() {
        let denial = Denial {
            role: "admin".into(),
            reason: "no_matching_rule",
            detail: "no rule grants `admin`".into(),
        };
        let who = |rec: AuditRecord| AuditRecord {
            request_id: Some("req_1".into()),
            identity: Some(SA.into()),
            issuer: Some(K8S.into()),
            ..rec
        };
        assert_eq!(
            AuditRecord::policy_denial(at(T0), "req_1", &workload(), &denial),
            AuditRecord {
                role: Some("admin".into()),
                ..who(base(
                    Event::Deny,
                    Decision::Deny,
                    "no_matching_rule: no rule grants `admin`"
                ))
            }
        );
        assert_eq!(
            AuditRecord::no_roles_granted(at(T0), "req_1", &workload()),
            who(base(Event::Deny, Decision::Deny, "no_roles_granted"))
        );
        assert_eq!(
            AuditRecord::backend_error(
                at(T0),
                "req_1",
                &workload(),
                "db",
                "vault",
                &"vault upstream failed: 503"
            ),
            AuditRecord {
                role: Some("db".into()),
                backend: Some("vault".into()),
                ..who(base(
                    Event::Deny,
                    Decision::Deny,
                    "backend_error: vault upstream failed: 503"
                ))
            }
        );
    }

    #[test]
    fn bootstrap_token_events_name_the_token() {
        let req = MintTokenRequest {
            roles: vec!["db".into(), "orders-read".into()],
            ttl_seconds: None,
            image: Some("sha256:abcd".into()),
        };
        let minted = MintedToken {
            token_id: "bt_1".into(),
            token: Secret::new("lyb_secret"),
            expires_at: at(T0 + 600),
        };
        let rec = AuditRecord::token_mint(at(T0), "req_1", &req, 600, &minted);
        assert_eq!(
            rec,
            AuditRecord {
                request_id: Some("req_1".into()),
                token_id: Some("bt_1".into()),
                role: Some("db,orders-read".into()),
                image: Some("sha256:abcd".into()),
                ttl_seconds: Some(600),
                expires_at: Some(IN_10_MIN.into()),
                ..base(Event::TokenMint, Decision::Allow, "minted by admin")
            }
        );
        assert!(
            !serde_json::to_string(&rec)
                .expect("json")
                .contains("lyb_secret")
        );

        assert_eq!(
            AuditRecord::token_redeem(at(T0), "req_1", &bootstrapped()),
            AuditRecord {
                request_id: Some("req_1".into()),
                identity: Some("bootstrap:bt_1".into()),
                issuer: Some(BOOTSTRAP_ISSUER.into()),
                token_id: Some("bt_1".into()),
                image: Some("sha256:abcd".into()),
                ..base(Event::TokenRedeem, Decision::Allow, "redeemed")
            }
        );

        assert_eq!(
            AuditRecord::token_revoke(at(T0), "req_1", "bt_1"),
            AuditRecord {
                request_id: Some("req_1".into()),
                token_id: Some("bt_1".into()),
                ..base(Event::TokenRevoke, Decision::Allow, "revoked by admin")
            }
        );
    }

    #[test]
    fn repeated_and_released_redemptions_name_the_token_and_why() {
        let redeemed = |decision, reason: &str| AuditRecord {
            request_id: Some("req_2".into()),
            identity: Some("bootstrap:bt_1".into()),
            issuer: Some(BOOTSTRAP_ISSUER.into()),
            token_id: Some("bt_1".into()),
            image: Some("sha256:abcd".into()),
            ..base(Event::TokenRedeem, decision, reason)
        };
        assert_eq!(
            AuditRecord::token_redeem_repeat(at(T0), "req_2", &bootstrapped(), at(T0 - 20)),
            redeemed(
                Decision::Allow,
                "re-redeemed within the grace window: the session started at 2027-01-15T07:59:40Z"
            )
        );
        assert_eq!(
            AuditRecord::token_release(at(T0), "req_2", &bootstrapped(), "upstream_unavailable"),
            redeemed(
                Decision::Deny,
                "released, the token is unused: upstream_unavailable"
            )
        );
    }

    fn of_lease(rec: AuditRecord) -> AuditRecord {
        AuditRecord {
            identity: Some(SA.into()),
            issuer: Some(K8S.into()),
            role: Some("db".into()),
            backend: Some("vault".into()),
            lease_id: Some("ls_1".into()),
            fingerprint: Some("hmac-sha256:00ff".into()),
            upstream_lease: Some("database/creds/db/abc".into()),
            ..rec
        }
    }

    #[test]
    fn a_revoked_lease_is_described_by_the_lease() {
        let lease = lease(Some("database/creds/db/abc"));
        assert_eq!(
            AuditRecord::lease_revoke(at(T0), "req_1", &lease, true),
            AuditRecord {
                request_id: Some("req_1".into()),
                ..of_lease(base(
                    Event::LeaseRevoke,
                    Decision::Allow,
                    "revoked upstream"
                ))
            }
        );
        let recorded = AuditRecord::lease_revoke(at(T0), "req_1", &lease, false);
        assert_eq!(
            recorded.reason,
            "recorded; the credential stays valid until it expires (backend cannot revoke)"
        );
        assert_eq!(
            recorded.expires_at, None,
            "an admin revocation has no expiry"
        );
    }

    #[test]
    fn an_expired_lease_has_its_expiry_and_no_request() {
        let lease = lease(Some("database/creds/db/abc"));
        assert_eq!(
            AuditRecord::lease_expired(at(T0 + 700), &lease, true),
            AuditRecord {
                time: "2027-01-15T08:11:40Z".into(),
                expires_at: Some(IN_10_MIN.into()),
                ..of_lease(base(
                    Event::LeaseRevoke,
                    Decision::Allow,
                    "expired; revoked upstream"
                ))
            }
        );
        assert_eq!(
            AuditRecord::lease_expired(at(T0), &lease, false).reason,
            "expired; nothing to revoke upstream"
        );
    }

    #[test]
    fn policy_reloads_carry_only_the_outcome() {
        assert_eq!(
            AuditRecord::policy_reload(at(T0), 12, "sha256:feed"),
            base(
                Event::PolicyReload,
                Decision::Allow,
                "loaded 12 rules, digest sha256:feed"
            )
        );
        let error = |line| PolicyError {
            location: Location {
                file: PathBuf::from("policies/shop.yaml"),
                line,
            },
            message: "unknown field `rolez`".into(),
        };
        let errors = PolicyErrors(vec![error(3), error(9)]);
        assert_eq!(
            AuditRecord::policy_reload_rejected(at(T0), &errors),
            base(
                Event::PolicyReload,
                Decision::Deny,
                "rejected (2 problems, first: policies/shop.yaml:3: unknown field `rolez`); last good set kept"
            )
        );
    }
}
