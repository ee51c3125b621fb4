//! The gate's decision: a pure function of what the broker knows about a workload's images
//! and the settings that apply. No I/O, no clock; the service ([`super::Gate`]) gathers the
//! inputs and the broker acts on the output.

use serde::Serialize;

use crate::config::{GateMode, UnknownWorkload};
use crate::store::FindingSummary;

/// Where the broker learnt which images a workload runs. Only trusted sources count: a
/// digest the requester merely claims is never one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustSource {
    /// The image bound into a bootstrap token when an admin minted it (source 2).
    BootstrapBinding,
    /// The admission record of the pod (source 1; the validating webhook, part B).
    AdmissionRecord,
    /// The pod's `status.containerStatuses[].imageID` from the API server (source 3).
    PodStatus,
}

impl TrustSource {
    /// Stable name for audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BootstrapBinding => "bootstrap_binding",
            Self::AdmissionRecord => "admission_record",
            Self::PodStatus => "pod_status",
        }
    }
}

/// Which images the workload runs, as far as the broker can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// The identity names no workload image (a CI or SPIFFE token, an unbound bootstrap
    /// token): gated only when its rule says `require_image: true`.
    NoImage,
    /// The identity names a workload (a pod token) but no trusted source says what it runs.
    Unknown,
    /// A pod token whose pod has a container without an `imageID` yet (its image is being
    /// pulled): the pod lookup says nothing, decided as [`Workload::Unknown`]; the containers
    /// are named in the message.
    PodNotReady {
        /// The containers without an `imageID`.
        waiting: Vec<String>,
    },
    /// A pod token whose pod is gone, per the pod lookup (trust source 3): the API server
    /// answers NotFound for it, or another uid under its name (it was recreated). Refused
    /// under every rule; the detail says which.
    PodGone(String),
    /// A pod token whose pod could not be looked up (API server down, slow or refusing):
    /// refused with a retryable 503 — a gated identity never falls open because the API is
    /// down.
    PodLookupFailed(String),
    /// The images, from a trusted source.
    Images {
        /// The source.
        source: TrustSource,
        /// Every image, with what is known about it.
        images: Vec<ImageState>,
    },
}

/// One image and what the verdict store (or a scan) said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    /// The pinned reference (`repo@sha256:…` or a bare digest), for messages.
    pub image: String,
    /// Its digest.
    pub digest: String,
    /// What is known.
    pub lookup: Lookup,
    /// The operator's exemption for this digest, with its reason.
    pub exemption: Option<String>,
}

/// What is known about one image's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A verdict, with the broker's allowlist applied.
    Verdict {
        /// The verdict.
        verdict: lanyard_scan::Verdict,
        /// The findings that count (after the allowlist), summarised.
        findings: Vec<FindingSummary>,
        /// Why it is incomplete, if it is.
        incomplete: Vec<String>,
        /// It was reached under an older ruleset version (a re-scan is under way).
        previous_ruleset: bool,
    },
    /// No verdict, and none was sought (`unscanned: deny`, or a bare digest with no
    /// repository to scan it from).
    Unscanned,
    /// A scan is running and did not finish within the deadline.
    Pending,
    /// The reference cannot be checked at all (it names no registry host, or its tag does
    /// not exist): refused, not retryable. The message never holds a secret.
    Unresolvable(String),
    /// The scan could not run (registry down, image gone). The message is the scanner's,
    /// which never holds a secret.
    ScanFailed(String),
}

/// The settings that apply to one decision: the broker's `gate` section with the rule's own
/// overrides already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `enforce` or `audit` (the rule's `gate_mode`, else the global one).
    pub mode: GateMode,
    /// What a gated identity with no trusted image source gets.
    pub unknown_workload: UnknownWorkload,
    /// The rule says `require_image: true`.
    pub require_image: bool,
    /// The rule that granted the role (for messages and audit records).
    pub rule: String,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Issue.
    Allow,
    /// Refuse.
    Deny,
    /// Audit mode: issue, and record that enforce mode would have refused.
    WouldDeny,
}

impl Outcome {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
        }
    }
}

/// Why: a stable, low-cardinality label (metrics, audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Every image has a clean verdict under the current ruleset.
    Clean,
    /// Clean, some under the previous ruleset while the re-scan runs.
    CleanPreviousRuleset,
    /// The identity names no image and its rule does not require one.
    NoImage,
    /// A dirty or incomplete image, exempted by an operator.
    Exempted,
    /// A finding that counts.
    Dirty,
    /// The scan did not cover everything.
    Incomplete,
    /// No verdict, and `unscanned: deny` (or nothing to scan it from).
    Unscanned,
    /// A scan is running past the deadline (retryable).
    ScanPending,
    /// The scan could not run (retryable).
    ScanFailed,
    /// A gated identity with no trusted image source.
    UnknownWorkload,
    /// The rule requires an image and the identity names none.
    ImageRequired,
    /// The pod the token names is gone (pod lookup).
    PodGone,
    /// The pod lookup failed (retryable).
    PodLookupFailed,
}

impl Reason {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::CleanPreviousRuleset => "clean_previous_ruleset",
            Self::NoImage => "no_image",
            Self::Exempted => "exempted",
            Self::Dirty => "dirty",
            Self::Incomplete => "incomplete",
            Self::Unscanned => "unscanned",
            Self::ScanPending => "scan_pending",
            Self::ScanFailed => "scan_failed",
            Self::UnknownWorkload => "unknown_workload",
            Self::ImageRequired => "image_required",
            Self::PodGone => "pod_gone",
            Self::PodLookupFailed => "pod_lookup_failed",
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, deny, or (audit mode) would deny.
    pub outcome: Outcome,
    /// Why.
    pub reason: Reason,
    /// A retry may succeed (a scan pending or failed): answered 503, not 403.
    pub retryable: bool,
    /// One or more sentences for the error and the audit record: names the image, the rule
    /// and the finding's location (rule id, layer, path or ENV name — never a value).
    pub detail: String,
    /// The exemptions used (`image: reason`), audited on every use.
    pub exemptions: Vec<String>,
    /// The images looked at.
    pub images: Vec<String>,
    /// Where they came from.
    pub source: Option<TrustSource>,
}

/// Findings named in a message, at most.
const MAX_FINDINGS_SHOWN: usize = 5;

/// Describes a finding's location: rule, kind, layer, path or name. Never a value.
pub fn describe_finding(f: &FindingSummary) -> String {
    let mut s = format!("{} in ", f.rule);
    match f.location_kind.as_str() {
        "env" => s.push_str(&format!("config Env {}", f.name.as_deref().unwrap_or("?"))),
        "label" => s.push_str(&format!(
            "config label {}",
            f.name.as_deref().unwrap_or("?")
        )),
        "history" => {
            s.push_str("build history");
            if let Some(n) = &f.name {
                s.push_str(&format!(" ({n})"));
            }
            if let Some(l) = f.layer {
                s.push_str(&format!(", layer {l}"));
            }
        }
        _ => {
            s.push_str(&format!(
                "layer {} /{}",
                f.layer.map_or("?".to_owned(), |l| l.to_string()),
                f.name.as_deref().unwrap_or("?")
            ));
        }
    }
    if let Some(p) = &f.platform {
        s.push_str(&format!(" [{p}]"));
    }
    s
}

/// Up to [`MAX_FINDINGS_SHOWN`] names, and how many more.
fn shown_names(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(MAX_FINDINGS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_FINDINGS_SHOWN {
        s.push_str(&format!(" and {} more", names.len() - MAX_FINDINGS_SHOWN));
    }
    s
}

/// Decides whether the workload may have credentials under `settings`. Pure.
pub fn decide(workload: &Workload, settings: &Settings) -> Decision {
    let rule = &settings.rule;
    let (images, source) = match workload {
        Workload::NoImage if !settings.require_image => {
            return Decision {
                outcome: Outcome::Allow,
                reason: Reason::NoImage,
                retryable: false,
                detail: format!(
                    "the identity names no workload image and rule `{rule}` does not require one"
                ),
                exemptions: Vec::new(),
                images: Vec::new(),
                source: None,
            };
        }
        Workload::NoImage => {
            return refuse(
                settings,
                Reason::ImageRequired,
                false,
                format!(
                    "rule `{rule}` requires a workload image (require_image: true), and this \
                     identity names none; bind the image when minting its bootstrap token"
                ),
                Vec::new(),
                None,
            );
        }
        Workload::Unknown | Workload::PodNotReady { .. } => {
            let detail = match workload {
                Workload::PodNotReady { waiting } => format!(
                    "no trusted source says which images this workload runs yet: its pod's \
                     container(s) {} have no imageID (their images are being pulled; a retry \
                     once they run succeeds), and it has no admission record",
                    shown_names(waiting)
                ),
                _ => "no trusted source says which images this workload runs (no admission \
                      record for the pod, no image bound into its token)"
                    .to_owned(),
            };
            return match settings.unknown_workload {
                UnknownWorkload::Allow => Decision {
                    outcome: Outcome::Allow,
                    reason: Reason::UnknownWorkload,
                    retryable: false,
                    detail: format!(
                        "{detail}; allowed by gate.unknown_workload: allow (rule `{rule}`)"
                    ),
                    exemptions: Vec::new(),
                    images: Vec::new(),
                    source: None,
                },
                UnknownWorkload::Deny => refuse(
                    settings,
                    Reason::UnknownWorkload,
                    false,
                    format!("{detail}; rule `{rule}` gates it (gate.unknown_workload: deny)"),
                    Vec::new(),
                    None,
                ),
            };
        }
        Workload::PodGone(why) => {
            return refuse(
                settings,
                Reason::PodGone,
                false,
                format!(
                    "rule `{rule}`: {why}; a token of a pod that no longer exists gets nothing"
                ),
                Vec::new(),
                Some(TrustSource::PodStatus),
            );
        }
        Workload::PodLookupFailed(why) => {
            return refuse(
                settings,
                Reason::PodLookupFailed,
                true,
                format!(
                    "rule `{rule}`: which images the pod runs cannot be read from the Kubernetes \
                     API now ({}); retry shortly",
                    why.chars().take(300).collect::<String>()
                ),
                Vec::new(),
                Some(TrustSource::PodStatus),
            );
        }
        Workload::Images { source, images } => (images, *source),
    };
    let names: Vec<String> = images.iter().map(|i| i.image.clone()).collect();
    if images.is_empty() {
        return refuse(
            settings,
            Reason::UnknownWorkload,
            false,
            format!("the trusted source ({}) lists no image", source.as_str()),
            names,
            Some(source),
        );
    }
    // The worst problem over all images decides; exemptions lift dirty and incomplete only.
    let mut exemptions = Vec::new();
    let mut problems: Vec<(u8, Reason, bool, String)> = Vec::new();
    let mut previous = false;
    for img in images {
        match &img.lookup {
            Lookup::Verdict {
                verdict,
                findings,
                incomplete,
                previous_ruleset,
            } => {
                let (reason, why) = match verdict {
                    lanyard_scan::Verdict::Clean => {
                        previous |= *previous_ruleset;
                        continue;
                    }
                    lanyard_scan::Verdict::Dirty => {
                        let shown: Vec<String> = findings
                            .iter()
                            .take(MAX_FINDINGS_SHOWN)
                            .map(describe_finding)
                            .collect();
                        let more = findings.len().saturating_sub(MAX_FINDINGS_SHOWN);
                        (
                            Reason::Dirty,
                            format!(
                                "image {} is dirty: {}{}",
                                img.image,
                                shown.join("; "),
                                if more > 0 {
                                    format!("; and {more} more")
                                } else {
                                    String::new()
                                }
                            ),
                        )
                    }
                    lanyard_scan::Verdict::Incomplete => (
                        Reason::Incomplete,
                        format!(
                            "image {} could not be proven clean (scan incomplete: {})",
                            img.image,
                            incomplete
                                .first()
                                .map(|s| s.chars().take(200).collect::<String>())
                                .unwrap_or_else(|| "no image in it was scanned".into())
                        ),
                    ),
                };
                if let Some(reason_text) = &img.exemption {
                    exemptions.push(format!("{}: {reason_text}", img.image));
                    continue;
                }
                problems.push((
                    if reason == Reason::Dirty { 0 } else { 1 },
                    reason,
                    false,
                    why,
                ));
            }
            Lookup::Unscanned => problems.push((
                2,
                Reason::Unscanned,
                false,
                format!(
                    "image {} has no verdict{}",
                    img.image,
                    if img.image.starts_with("sha256:") {
                        " and a bare digest names no repository to scan it from"
                    } else {
                        " (gate.unscanned: deny)"
                    }
                ),
            )),
            Lookup::Unresolvable(why) => problems.push((
                2,
                Reason::Unscanned,
                false,
                format!(
                    "image {} cannot be checked: {}",
                    img.image,
                    why.chars().take(300).collect::<String>()
                ),
            )),
            Lookup::ScanFailed(e) => problems.push((
                3,
                Reason::ScanFailed,
                true,
                format!(
                    "image {} could not be scanned: {}",
                    img.image,
                    e.chars().take(300).collect::<String>()
                ),
            )),
            Lookup::Pending => problems.push((
                4,
                Reason::ScanPending,
                true,
                format!("image {} is being scanned; retry shortly", img.image),
            )),
        }
    }
    problems.sort_by_key(|p| p.0);
    if let Some((_, reason, retryable, _)) = problems.first().cloned() {
        let details: Vec<String> = problems.into_iter().map(|p| p.3).collect();
        let fix = match reason {
            Reason::Dirty => {
                " — remove the secret from the image (a file deleted in a later layer is still in \
                 the image: rebuild without it, pass build secrets with RUN --mount=type=secret), \
                 push the new image, and rotate the exposed credential"
            }
            Reason::Incomplete => " — ask an operator to look at `lanyard-broker image verdict`",
            _ => "",
        };
        return refuse(
            settings,
            reason,
            retryable,
            format!("rule `{rule}`: {}{fix}", details.join("; ")),
            names,
            Some(source),
        )
        .with_exemptions(exemptions);
    }
    let reason = if !exemptions.is_empty() {
        Reason::Exempted
    } else if previous {
        Reason::CleanPreviousRuleset
    } else {
        Reason::Clean
    };
    Decision {
        outcome: Outcome::Allow,
        reason,
        retryable: false,
        detail: match reason {
            Reason::Exempted => format!("exempted: {}", exemptions.join("; ")),
            Reason::CleanPreviousRuleset => {
                "clean (under the previous ruleset; a re-scan is under way)".to_owned()
            }
            _ => "clean".to_owned(),
        },
        exemptions,
        images: names,
        source: Some(source),
    }
}

impl Decision {
    fn with_exemptions(mut self, exemptions: Vec<String>) -> Self {
        self.exemptions = exemptions;
        self
    }
}

/// A refusal — or, in audit mode, an allowance recording what would have been refused.
/// Retryable problems in audit mode issue too: audit mode never stops issuance.
fn refuse(
    settings: &Settings,
    reason: Reason,
    retryable: bool,
    detail: String,
    images: Vec<String>,
    source: Option<TrustSource>,
) -> Decision {
    let outcome = match settings.mode {
        GateMode::Enforce => Outcome::Deny,
        GateMode::Audit => Outcome::WouldDeny,
    };
    Decision {
        outcome,
        reason,
        retryable: retryable && outcome == Outcome::Deny,
        detail,
        exemptions: Vec::new(),
        images,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_scan::Verdict;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn settings(mode: GateMode) -> Settings {
        Settings {
            mode,
            unknown_workload: UnknownWorkload::Deny,
            require_image: false,
            rule: "shop-api".into(),
        }
    }

    fn finding() -> FindingSummary {
        FindingSummary {
            rule: "aws-access-key-id".into(),
            location_kind: "file".into(),
            layer: Some(2),
            name: Some("app/.env".into()),
            fingerprint: format!("v1:{}", "0f".repeat(16)),
            platform: None,
        }
    }

    fn image(lookup: Lookup, exemption: Option<&str>) -> ImageState {
        ImageState {
            image: format!("registry.example.com/shop/api@{D}"),
            digest: D.into(),
            lookup,
            exemption: exemption.map(str::to_owned),
        }
    }

    fn verdict(v: Verdict, previous: bool) -> Lookup {
        Lookup::Verdict {
            verdict: v,
            findings: if v == Verdict::Dirty {
                vec![finding()]
            } else {
                vec![]
            },
            incomplete: if v == Verdict::Incomplete {
                vec!["layer 1: cannot fetch the blob".into()]
            } else {
                vec![]
            },
            previous_ruleset: previous,
        }
    }

    fn images(list: Vec<ImageState>) -> Workload {
        Workload::Images {
            source: TrustSource::BootstrapBinding,
            images: list,
        }
    }

    fn check(d: &Decision, outcome: Outcome, reason: Reason, retryable: bool) {
        assert_eq!(
            (d.outcome, d.reason, d.retryable),
            (outcome, reason, retryable),
            "{d:?}"
        );
    }

    #[test]
    fn no_image_passes_unless_the_rule_requires_one() {
        let s = settings(GateMode::Enforce);
        check(
            &decide(&Workload::NoImage, &s),
            Outcome::Allow,
            Reason::NoImage,
            false,
        );
        let req = Settings {
            require_image: true,
            ..s.clone()
        };
        let d = decide(&Workload::NoImage, &req);
        check(&d, Outcome::Deny, Reason::ImageRequired, false);
        assert!(
            d.detail.contains("shop-api") && d.detail.contains("require_image"),
            "{}",
            d.detail
        );
        let audit = Settings {
            mode: GateMode::Audit,
            ..req
        };
        check(
            &decide(&Workload::NoImage, &audit),
            Outcome::WouldDeny,
            Reason::ImageRequired,
            false,
        );
    }

    #[test]
    fn an_unknown_workload_follows_unknown_workload() {
        let s = settings(GateMode::Enforce);
        check(
            &decide(&Workload::Unknown, &s),
            Outcome::Deny,
            Reason::UnknownWorkload,
            false,
        );
        let allow = Settings {
            unknown_workload: UnknownWorkload::Allow,
            ..s.clone()
        };
        let d = decide(&Workload::Unknown, &allow);
        check(&d, Outcome::Allow, Reason::UnknownWorkload, false);
        assert!(d.detail.contains("unknown_workload: allow"), "{}", d.detail);
        check(
            &decide(&images(vec![]), &s),
            Outcome::Deny,
            Reason::UnknownWorkload,
            false,
        );
    }

    #[test]
    fn a_gone_pod_is_refused_even_where_unknown_workloads_are_allowed_and_a_failed_lookup_is_retryable()
     {
        let allow = Settings {
            unknown_workload: UnknownWorkload::Allow,
            ..settings(GateMode::Enforce)
        };
        let not_ready = Workload::PodNotReady {
            waiting: vec!["app".into()],
        };
        let d = decide(&not_ready, &settings(GateMode::Enforce));
        check(&d, Outcome::Deny, Reason::UnknownWorkload, false);
        assert!(d.detail.contains("app have no imageID"), "{}", d.detail);
        check(
            &decide(&not_ready, &allow),
            Outcome::Allow,
            Reason::UnknownWorkload,
            false,
        );
        let d = decide(
            &Workload::PodGone("pod api-1 no longer exists".into()),
            &allow,
        );
        check(&d, Outcome::Deny, Reason::PodGone, false);
        assert_eq!(d.source, Some(TrustSource::PodStatus));
        assert!(
            d.detail.contains("api-1") && d.detail.contains("shop-api"),
            "{}",
            d.detail
        );
        let d = decide(
            &Workload::PodLookupFailed("API server answered 503".into()),
            &allow,
        );
        check(&d, Outcome::Deny, Reason::PodLookupFailed, true);
        assert!(
            d.detail.contains("503") && d.detail.contains("retry"),
            "{}",
            d.detail
        );
        // Audit mode records them and issues, as for every other refusal.
        let audit = settings(GateMode::Audit);
        check(
            &decide(&Workload::PodLookupFailed("down".into()), &audit),
            Outcome::WouldDeny,
            Reason::PodLookupFailed,
            false,
        );
        check(
            &decide(&Workload::PodGone("gone".into()), &audit),
            Outcome::WouldDeny,
            Reason::PodGone,
            false,
        );
    }

    #[test]
    fn clean_allows_and_says_when_the_verdict_is_from_the_previous_ruleset() {
        let s = settings(GateMode::Enforce);
        let d = decide(
            &images(vec![image(verdict(Verdict::Clean, false), None)]),
            &s,
        );
        check(&d, Outcome::Allow, Reason::Clean, false);
        assert_eq!(d.source, Some(TrustSource::BootstrapBinding));
        let d = decide(
            &images(vec![image(verdict(Verdict::Clean, true), None)]),
            &s,
        );
        check(&d, Outcome::Allow, Reason::CleanPreviousRuleset, false);
    }

    #[test]
    fn dirty_denies_naming_image_rule_and_location_never_a_value() {
        let s = settings(GateMode::Enforce);
        let d = decide(
            &images(vec![image(verdict(Verdict::Dirty, false), None)]),
            &s,
        );
        check(&d, Outcome::Deny, Reason::Dirty, false);
        for want in [
            "registry.example.com/shop/api@sha256:",
            "shop-api",
            "aws-access-key-id",
            "layer 2 /app/.env",
            "rotate",
        ] {
            assert!(d.detail.contains(want), "{want}: {}", d.detail);
        }
        assert!(
            !d.detail.contains("v1:"),
            "no fingerprint needed in the message"
        );
    }

    #[test]
    fn many_findings_are_cut_short() {
        let mut f = vec![finding(); 9];
        f[0].location_kind = "env".into();
        f[0].name = Some("AWS_SECRET_ACCESS_KEY".into());
        let lookup = Lookup::Verdict {
            verdict: Verdict::Dirty,
            findings: f,
            incomplete: vec![],
            previous_ruleset: false,
        };
        let d = decide(
            &images(vec![image(lookup, None)]),
            &settings(GateMode::Enforce),
        );
        assert!(
            d.detail.contains("config Env AWS_SECRET_ACCESS_KEY"),
            "{}",
            d.detail
        );
        assert!(d.detail.contains("and 4 more"), "{}", d.detail);
    }

    #[test]
    fn incomplete_denies() {
        let d = decide(
            &images(vec![image(verdict(Verdict::Incomplete, false), None)]),
            &settings(GateMode::Enforce),
        );
        check(&d, Outcome::Deny, Reason::Incomplete, false);
        assert!(d.detail.contains("cannot fetch the blob"), "{}", d.detail);
    }

    #[test]
    fn an_exemption_lifts_dirty_and_incomplete_and_is_reported() {
        let s = settings(GateMode::Enforce);
        for v in [Verdict::Dirty, Verdict::Incomplete] {
            let d = decide(
                &images(vec![image(
                    verdict(v, false),
                    Some("INC-42 vendor test key"),
                )]),
                &s,
            );
            check(&d, Outcome::Allow, Reason::Exempted, false);
            assert_eq!(d.exemptions.len(), 1);
            assert!(d.exemptions[0].contains("INC-42"), "{:?}", d.exemptions);
        }
        // It does not lift a missing verdict.
        let d = decide(&images(vec![image(Lookup::Unscanned, Some("x"))]), &s);
        check(&d, Outcome::Deny, Reason::Unscanned, false);
    }

    #[test]
    fn unscanned_pending_and_failed_scans() {
        let s = settings(GateMode::Enforce);
        check(
            &decide(&images(vec![image(Lookup::Unscanned, None)]), &s),
            Outcome::Deny,
            Reason::Unscanned,
            false,
        );
        let d = decide(&images(vec![image(Lookup::Pending, None)]), &s);
        check(&d, Outcome::Deny, Reason::ScanPending, true);
        let d = decide(
            &images(vec![image(
                Lookup::ScanFailed("registry: connection refused".into()),
                None,
            )]),
            &s,
        );
        check(&d, Outcome::Deny, Reason::ScanFailed, true);
        assert!(d.detail.contains("connection refused"), "{}", d.detail);
        let bare = ImageState {
            image: D.into(),
            ..image(Lookup::Unscanned, None)
        };
        let d = decide(&images(vec![bare]), &s);
        assert!(d.detail.contains("bare digest"), "{}", d.detail);
        let d = decide(
            &images(vec![image(
                Lookup::Unresolvable("no registry host".into()),
                None,
            )]),
            &s,
        );
        check(&d, Outcome::Deny, Reason::Unscanned, false);
        assert!(
            d.detail.contains("cannot be checked: no registry host"),
            "{}",
            d.detail
        );
    }

    #[test]
    fn the_worst_image_decides_dirty_before_retryable() {
        let s = settings(GateMode::Enforce);
        let d = decide(
            &images(vec![
                image(verdict(Verdict::Clean, false), None),
                image(Lookup::Pending, None),
                image(verdict(Verdict::Dirty, false), None),
            ]),
            &s,
        );
        check(&d, Outcome::Deny, Reason::Dirty, false);
        assert!(
            d.detail.contains("being scanned"),
            "every problem is listed: {}",
            d.detail
        );
        // An exempted dirty image next to a clean one is allowed, the exemption reported.
        let d = decide(
            &images(vec![
                image(verdict(Verdict::Clean, false), None),
                image(verdict(Verdict::Dirty, false), Some("accepted")),
            ]),
            &s,
        );
        check(&d, Outcome::Allow, Reason::Exempted, false);
    }

    #[test]
    fn audit_mode_would_deny_and_is_never_retryable() {
        let s = settings(GateMode::Audit);
        for lookup in [
            verdict(Verdict::Dirty, false),
            verdict(Verdict::Incomplete, false),
            Lookup::Unscanned,
            Lookup::Pending,
            Lookup::ScanFailed("x".into()),
        ] {
            let d = decide(&images(vec![image(lookup, None)]), &s);
            assert_eq!(
                (d.outcome, d.retryable),
                (Outcome::WouldDeny, false),
                "{d:?}"
            );
        }
        check(
            &decide(&Workload::Unknown, &s),
            Outcome::WouldDeny,
            Reason::UnknownWorkload,
            false,
        );
        check(
            &decide(
                &images(vec![image(verdict(Verdict::Clean, false), None)]),
                &s,
            ),
            Outcome::Allow,
            Reason::Clean,
            false,
        );
    }

    #[test]
    fn history_and_label_locations_are_described() {
        let mut f = finding();
        f.location_kind = "history".into();
        f.name = Some("NPM_TOKEN".into());
        f.platform = Some("linux/arm64".into());
        assert_eq!(
            describe_finding(&f),
            "aws-access-key-id in build history (NPM_TOKEN), layer 2 [linux/arm64]"
        );
        f.location_kind = "label".into();
        f.platform = None;
        assert_eq!(
            describe_finding(&f),
            "aws-access-key-id in config label NPM_TOKEN"
        );
    }
}
