//! The validating admission webhook's pure part: parsing and the decision. The route
//! (`/v1/admission/validate`) adapts HTTP; [`crate::gate::Gate::admit`] resolves and looks up
//! the images; [`crate::broker::Broker::admission_validate`] writes the record, audits and
//! counts.
//!
//! [`parse_review`] reads an `admission.k8s.io/v1` `AdmissionReview` (the `kube-core` types),
//! bounded before it parses; [`workload_of`] finds the images of what is admitted — a Pod
//! (`CREATE`, `UPDATE`, and the `pods/ephemeralcontainers` subresource, which a rule on `pods`
//! alone does not match) or the pod template of a Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, Job or CronJob — every container, init container and ephemeral container;
//! [`decide()`] turns the gate's verdicts into the answer: allowed or denied with a message a
//! developer can act on, AdmissionReview `warnings`, and for an allowed, non-dry-run pod the
//! record to keep (`metadata.uid` → digests).

use k8s_openapi::api::core::v1::PodSpec;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionReview, Operation};

use super::decide::{self, ImageState, Outcome, Reason, Settings, TrustSource, Workload};
use crate::config::{GateMode, UnknownWorkload};

/// Largest AdmissionReview body accepted, in bytes: an object is at most 1.5 MiB in etcd, and
/// a review of an UPDATE carries it twice.
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024 + 64 * 1024;

/// Most container images one object may name before it is refused unread.
pub const MAX_IMAGES: usize = 256;

/// Why a review could not be read. Answered 400 by the route: the API server sent something
/// that is not an AdmissionReview this webhook handles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// Above [`MAX_REVIEW_BYTES`].
    #[error("AdmissionReview of {0} bytes is larger than {MAX_REVIEW_BYTES}")]
    TooLarge(usize),
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another `apiVersion`/`kind` than `admission.k8s.io/v1` `AdmissionReview`.
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {0}")]
    WrongKind(String),
    /// The review carries no request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The object's pod spec cannot be read.
    #[error("{0}")]
    BadObject(String),
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

/// Parses an AdmissionReview, bounded first.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    if body.len() > MAX_REVIEW_BYTES {
        return Err(ReviewError::TooLarge(body.len()));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(short(&e.to_string())))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(format!(
            "{}/{}",
            short(&review.types.api_version),
            short(&review.types.kind)
        )));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// Which kind of container an image runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// `spec.containers[]`.
    Container,
    /// `spec.initContainers[]`.
    Init,
    /// `spec.ephemeralContainers[]`.
    Ephemeral,
}

impl ContainerKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Init => "init container",
            Self::Ephemeral => "ephemeral container",
        }
    }
}

/// One image an admitted object runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The container's name.
    pub container: String,
    /// Which list it is in.
    pub kind: ContainerKind,
    /// `image` as written (a tag or a digest reference).
    pub image: String,
}

/// What is being admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// A Pod; `uid` is `request.object.metadata.uid` (not the review's `request.uid`), filled
    /// by the API server before validating admission.
    Pod {
        /// The pod's UID, when present.
        uid: Option<String>,
    },
    /// The pod template of a workload (`Deployment`, `CronJob`, ...).
    Template {
        /// The workload's kind.
        kind: String,
    },
}

/// The images of an admitted object, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionWorkload {
    /// Pod or template.
    pub admitted: Admitted,
    /// Namespace.
    pub namespace: Option<String>,
    /// Object name (may be empty for pods named by `generateName`).
    pub name: String,
    /// A dry run: decide, but record nothing.
    pub dry_run: bool,
    /// An UPDATE: `images` lists only the containers whose image is not in `oldObject` (the
    /// others were checked when they were admitted, and a metadata change — a label, a
    /// finalizer removed — must not fail on a registry that is down).
    pub changed_only: bool,
    /// Every image to check, in spec order.
    pub images: Vec<ContainerImage>,
}

const TEMPLATE_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
];

/// The images of what `req` admits, or `None` when it is nothing the gate checks (another
/// kind, a DELETE, a template while `templates` is off). Pure.
pub fn workload_of(
    req: &AdmissionRequest<DynamicObject>,
    templates: bool,
) -> Result<Option<AdmissionWorkload>, ReviewError> {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Ok(None);
    }
    let Some(obj) = &req.object else {
        return Ok(None);
    };
    let kind = req.kind.kind.as_str();
    let sub = req.sub_resource.as_deref();
    let (admitted, spec) = match (kind, sub) {
        ("Pod", None | Some("ephemeralcontainers")) => (
            Admitted::Pod {
                uid: obj.metadata.uid.clone(),
            },
            obj.data.get("spec"),
        ),
        ("CronJob", None) if templates => (
            Admitted::Template { kind: kind.into() },
            obj.data.pointer("/spec/jobTemplate/spec/template/spec"),
        ),
        (k, None) if templates && TEMPLATE_KINDS.contains(&k) => (
            Admitted::Template { kind: kind.into() },
            obj.data.pointer("/spec/template/spec"),
        ),
        _ => return Ok(None),
    };
    let spec = spec.ok_or_else(|| ReviewError::BadObject(format!("{kind} has no pod spec")))?;
    let mut images = images_of(kind, spec)?;
    // An UPDATE checks what it changes: containers whose image is new. An `oldObject` that
    // cannot be read counts as none (everything is checked).
    let old = match (&req.operation, &req.old_object) {
        (Operation::Update, Some(old)) => {
            let path = match &admitted {
                Admitted::Pod { .. } => "/spec",
                Admitted::Template { .. } if kind == "CronJob" => {
                    "/spec/jobTemplate/spec/template/spec"
                }
                Admitted::Template { .. } => "/spec/template/spec",
            };
            old.data.pointer(path).and_then(|s| images_of(kind, s).ok())
        }
        _ => None,
    };
    let changed_only = old.is_some();
    if let Some(old) = old {
        images.retain(|i| !old.contains(i));
        if images.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(AdmissionWorkload {
        admitted,
        namespace: req.namespace.clone(),
        name: req.name.clone(),
        dry_run: req.dry_run,
        changed_only,
        images,
    }))
}

/// The images of a pod spec, bounded.
fn images_of(kind: &str, spec: &serde_json::Value) -> Result<Vec<ContainerImage>, ReviewError> {
    let spec: PodSpec = serde_json::from_value(spec.clone()).map_err(|e| {
        ReviewError::BadObject(format!("{kind}'s pod spec: {}", short(&e.to_string())))
    })?;
    let mut images = Vec::new();
    let mut push = |container: &str, kind: ContainerKind, image: Option<&String>| {
        images.push(ContainerImage {
            container: container.to_owned(),
            kind,
            image: image.cloned().unwrap_or_default(),
        });
    };
    for c in spec.init_containers.iter().flatten() {
        push(&c.name, ContainerKind::Init, c.image.as_ref());
    }
    for c in &spec.containers {
        push(&c.name, ContainerKind::Container, c.image.as_ref());
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        push(&c.name, ContainerKind::Ephemeral, c.image.as_ref());
    }
    if images.len() > MAX_IMAGES {
        return Err(ReviewError::BadObject(format!(
            "{} containers; at most {MAX_IMAGES} are checked",
            images.len()
        )));
    }
    Ok(images)
}

/// What a pod whose decision could not be reached in time gets (defined with the config).
pub use crate::config::OnTimeout;

/// The settings of one admission decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// `enforce` or `audit`.
    pub mode: GateMode,
    /// For pods whose decision could not be reached.
    pub on_timeout: OnTimeout,
    /// The namespace is exempted, with this reason (audited on every use).
    pub namespace_exemption: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionDecision {
    /// Allowed.
    pub allowed: bool,
    /// Allow, deny, or (audit mode) would deny. An allowance despite a decision that could not
    /// be reached in time (fail-open, a template) is `Allow` with a retryable reason.
    pub outcome: Outcome,
    /// The gate's reason label.
    pub reason: Reason,
    /// For a denial: what a developer reads (`kubectl` prints it).
    pub message: String,
    /// AdmissionReview `warnings` (`kubectl` prints them too).
    pub warnings: Vec<String>,
    /// For an allowed pod that is not a dry run: its UID and the images it was admitted with
    /// (`repo@sha256:…`, as resolved and checked). None for a namespace exemption (nothing
    /// was checked, so nothing is vouched for).
    pub record: Option<(String, Vec<String>)>,
    /// The full detail for the audit record.
    pub detail: String,
}

/// Decides an admission: `images` are the workload's images in the same order, each resolved
/// to a digest and looked up (or scanned) by the service. Pure.
pub fn decide(
    workload: &AdmissionWorkload,
    images: &[ImageState],
    settings: &AdmissionSettings,
) -> AdmissionDecision {
    let what = match &workload.admitted {
        Admitted::Pod { .. } => "pod".to_owned(),
        Admitted::Template { kind } => format!("{kind} pod template"),
    };
    // A record vouches for every image of the pod: with one image not even resolved to a
    // digest (a registry down, allowed by fail-open) there is none, and the pod's tokens
    // meet an unknown workload rather than a record naming only part of what it runs.
    let resolved = images.iter().all(|i| !i.digest.is_empty());
    let record =
        |allowed: bool| match (&workload.admitted, allowed && !workload.dry_run && resolved) {
            (Admitted::Pod { uid: Some(uid) }, true) => Some((
                uid.clone(),
                images.iter().map(|i| i.image.clone()).collect(),
            )),
            _ => None,
        };
    if let Some(reason) = &settings.namespace_exemption {
        return AdmissionDecision {
            allowed: true,
            outcome: Outcome::Allow,
            reason: Reason::Exempted,
            message: String::new(),
            warnings: Vec::new(),
            record: None,
            detail: format!(
                "namespace {} is exempted from the image gate: {reason}",
                workload.namespace.as_deref().unwrap_or("-")
            ),
        };
    }
    let d = decide::decide(
        &Workload::Images {
            source: TrustSource::AdmissionRecord,
            images: images.to_vec(),
        },
        &Settings {
            mode: settings.mode,
            unknown_workload: UnknownWorkload::Deny,
            require_image: true,
            rule: "admission".into(),
        },
    );
    let containers = workload
        .images
        .iter()
        .zip(images)
        .filter(|(_, s)| {
            let clean = matches!(
                &s.lookup,
                decide::Lookup::Verdict {
                    verdict: lanyard_scan::Verdict::Clean,
                    ..
                }
            );
            !clean && s.exemption.is_none()
        })
        .map(|(c, _)| format!("{} `{}`", c.kind.as_str(), c.container))
        .collect::<Vec<_>>()
        .join(", ");
    let detail = if containers.is_empty() {
        d.detail.clone()
    } else {
        format!("{what} ({containers}): {}", d.detail)
    };
    let template = matches!(workload.admitted, Admitted::Template { .. });
    match d.outcome {
        Outcome::Allow => AdmissionDecision {
            allowed: true,
            outcome: Outcome::Allow,
            reason: d.reason,
            message: String::new(),
            warnings: Vec::new(),
            record: record(true),
            detail,
        },
        Outcome::WouldDeny => AdmissionDecision {
            allowed: true,
            outcome: Outcome::WouldDeny,
            reason: d.reason,
            message: String::new(),
            warnings: vec![format!(
                "lanyard image gate (audit mode) would deny: {detail}"
            )],
            record: record(true),
            detail,
        },
        Outcome::Deny
            if d.retryable && (template || settings.on_timeout == OnTimeout::FailOpen) =>
        {
            AdmissionDecision {
                allowed: true,
                outcome: Outcome::Allow,
                reason: d.reason,
                message: String::new(),
                warnings: vec![format!(
                    "lanyard image gate could not decide in time and allowed this {what}: {detail}"
                )],
                record: record(true),
                detail,
            }
        }
        Outcome::Deny => AdmissionDecision {
            allowed: false,
            outcome: Outcome::Deny,
            reason: d.reason,
            message: if d.retryable {
                format!("lanyard image gate: scan pending, retry: {detail}")
            } else {
                format!("lanyard image gate refused the {detail}")
            },
            warnings: Vec::new(),
            record: None,
            detail,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gate::decide::Lookup;
    use crate::store::FindingSummary;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A review shaped as the Kubernetes documentation shows it
    /// (`/docs/reference/access-authn-authz/extensible-admission-controllers/`).
    pub(crate) fn review(
        kind: (&str, &str, &str),
        resource: &str,
        sub: Option<&str>,
        op: &str,
        object: serde_json::Value,
        dry_run: bool,
    ) -> Vec<u8> {
        let mut request = serde_json::json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": resource},
            "requestKind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "requestResource": {"group": kind.0, "version": kind.1, "resource": resource},
            "name": "my-pod",
            "namespace": "shop",
            "operation": op,
            "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        });
        if let Some(s) = sub {
            request["subResource"] = serde_json::json!(s);
            request["requestSubResource"] = serde_json::json!(s);
        }
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": request
        }))
        .expect("json")
    }

    fn pod(uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "my-pod", "namespace": "shop", "uid": uid},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "registry.example.com/shop/migrate:1"}],
                "containers": [
                    {"name": "api", "image": "registry.example.com/shop/api:1.4"},
                    {"name": "lanyard", "image": format!("registry.example.com/lanyard/sidecar@{D}")}
                ],
                "ephemeralContainers": [{"name": "debugger", "image": "registry.example.com/tools/debug:1"}]
            }
        })
    }

    #[test]
    fn a_pod_create_lists_every_image_and_the_objects_uid() {
        let req = parse_review(&review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            pod("pod-uid-1"),
            false,
        ))
        .expect("parse");
        let w = workload_of(&req, true).expect("ok").expect("gated");
        assert_eq!(
            w.admitted,
            Admitted::Pod {
                uid: Some("pod-uid-1".into())
            },
            "the object's uid, not the review's"
        );
        let names: Vec<(&str, ContainerKind)> = w
            .images
            .iter()
            .map(|i| (i.container.as_str(), i.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("migrate", ContainerKind::Init),
                ("api", ContainerKind::Container),
                ("lanyard", ContainerKind::Container),
                ("debugger", ContainerKind::Ephemeral)
            ]
        );
        assert_eq!(w.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn the_ephemeral_containers_subresource_and_workload_templates_are_read() {
        let req = parse_review(&review(
            ("", "v1", "Pod"),
            "pods",
            Some("ephemeralcontainers"),
            "UPDATE",
            pod("u"),
            false,
        ))
        .expect("parse");
        let w = workload_of(&req, true).expect("ok").expect("gated");
        assert!(w.images.iter().any(|i| i.kind == ContainerKind::Ephemeral));
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "api", "image": "registry.example.com/shop/api:1.5"}]}}}
        });
        let req = parse_review(&review(
            ("apps", "v1", "Deployment"),
            "deployments",
            None,
            "CREATE",
            deployment,
            false,
        ))
        .expect("parse");
        let w = workload_of(&req, true).expect("ok").expect("gated");
        assert_eq!(
            w.admitted,
            Admitted::Template {
                kind: "Deployment".into()
            }
        );
        assert_eq!(w.images[0].image, "registry.example.com/shop/api:1.5");
        assert_eq!(workload_of(&req, false).expect("ok"), None, "templates off");
        let cron = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "r", "image": "registry.example.com/shop/report:2"}], "restartPolicy": "Never"}}}}}
        });
        let req = parse_review(&review(
            ("batch", "v1", "CronJob"),
            "cronjobs",
            None,
            "CREATE",
            cron,
            false,
        ))
        .expect("parse");
        assert_eq!(
            workload_of(&req, true)
                .expect("ok")
                .expect("gated")
                .images
                .len(),
            1
        );
        // Another kind, or another subresource of pods, is not gated.
        let req = parse_review(&review(
            ("", "v1", "ConfigMap"),
            "configmaps",
            None,
            "CREATE",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            false,
        ))
        .expect("parse");
        assert_eq!(workload_of(&req, true).expect("ok"), None);
        let req = parse_review(&review(
            ("", "v1", "Pod"),
            "pods",
            Some("status"),
            "UPDATE",
            pod("u"),
            false,
        ))
        .expect("parse");
        assert_eq!(workload_of(&req, true).expect("ok"), None);
    }

    #[test]
    fn an_update_checks_only_the_images_it_changes() {
        let with_old = |old: serde_json::Value, new: serde_json::Value, sub: Option<&str>| {
            let mut v: serde_json::Value = serde_json::from_slice(&review(
                ("", "v1", "Pod"),
                "pods",
                sub,
                "UPDATE",
                new,
                false,
            ))
            .expect("json");
            v["request"]["oldObject"] = old;
            parse_review(&serde_json::to_vec(&v).expect("json")).expect("parse")
        };
        let mut before = pod("u");
        before["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("ephemeralContainers");
        // A label changed (a finalizer removed, ...): nothing to check.
        let mut relabelled = before.clone();
        relabelled["metadata"]["labels"] = serde_json::json!({"app": "api"});
        assert_eq!(
            workload_of(&with_old(before.clone(), relabelled, None), true).expect("ok"),
            None
        );
        // `kubectl debug`: only the ephemeral container is checked.
        let w = workload_of(
            &with_old(before.clone(), pod("u"), Some("ephemeralcontainers")),
            true,
        )
        .expect("ok")
        .expect("gated");
        assert!(w.changed_only);
        assert_eq!(
            w.images
                .iter()
                .map(|i| (i.container.as_str(), i.kind))
                .collect::<Vec<_>>(),
            [("debugger", ContainerKind::Ephemeral)]
        );
        // An image changed in place: that container is checked.
        let mut bumped = before.clone();
        bumped["spec"]["containers"][0]["image"] =
            serde_json::json!("registry.example.com/shop/api:1.5");
        let w = workload_of(&with_old(before.clone(), bumped, None), true)
            .expect("ok")
            .expect("gated");
        assert_eq!(w.images.len(), 1);
        assert_eq!(w.images[0].image, "registry.example.com/shop/api:1.5");
        // An unreadable oldObject: everything is checked.
        let w = workload_of(
            &with_old(serde_json::json!({"spec": 7}), pod("u"), None),
            true,
        )
        .expect("ok")
        .expect("gated");
        assert!(!w.changed_only && w.images.len() == 4);
    }

    #[test]
    fn malformed_oversized_and_wrong_kind_reviews_are_refused() {
        assert!(matches!(
            parse_review(b"{not json"),
            Err(ReviewError::Malformed(_))
        ));
        assert!(matches!(
            parse_review(&vec![b' '; MAX_REVIEW_BYTES + 1]),
            Err(ReviewError::TooLarge(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            pod("u"),
            false,
        ))
        .expect("json");
        v["apiVersion"] = serde_json::json!("admission.k8s.io/v1beta1");
        let e = parse_review(&serde_json::to_vec(&v).expect("json")).expect_err("v1beta1");
        assert!(matches!(e, ReviewError::WrongKind(_)), "{e}");
        let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert_eq!(
            parse_review(no_request).expect_err("none"),
            ReviewError::NoRequest
        );
        let mut bad_spec = pod("u");
        bad_spec["spec"]["containers"] = serde_json::json!("not a list");
        let req = parse_review(&review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            bad_spec,
            false,
        ))
        .expect("parse");
        assert!(matches!(
            workload_of(&req, true),
            Err(ReviewError::BadObject(_))
        ));
    }

    fn state(image: &str, lookup: Lookup) -> ImageState {
        ImageState {
            image: image.into(),
            digest: D.into(),
            lookup,
            exemption: None,
        }
    }

    fn clean() -> Lookup {
        Lookup::Verdict {
            verdict: lanyard_scan::Verdict::Clean,
            findings: vec![],
            incomplete: vec![],
            previous_ruleset: false,
        }
    }

    fn dirty() -> Lookup {
        Lookup::Verdict {
            verdict: lanyard_scan::Verdict::Dirty,
            findings: vec![FindingSummary {
                rule: "npm-token".into(),
                location_kind: "file".into(),
                layer: Some(3),
                name: Some("app/.npmrc".into()),
                fingerprint: "v1:00".into(),
                platform: None,
            }],
            incomplete: vec![],
            previous_ruleset: false,
        }
    }

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            mode: GateMode::Enforce,
            on_timeout: OnTimeout::FailClosed,
            namespace_exemption: None,
        }
    }

    fn two_containers(dry_run: bool) -> AdmissionWorkload {
        AdmissionWorkload {
            admitted: Admitted::Pod {
                uid: Some("pod-uid-1".into()),
            },
            namespace: Some("shop".into()),
            name: "my-pod".into(),
            dry_run,
            changed_only: false,
            images: vec![
                ContainerImage {
                    container: "api".into(),
                    kind: ContainerKind::Container,
                    image: "registry.example.com/shop/api:1.4".into(),
                },
                ContainerImage {
                    container: "migrate".into(),
                    kind: ContainerKind::Init,
                    image: "registry.example.com/shop/migrate:1".into(),
                },
            ],
        }
    }

    #[test]
    fn a_dirty_init_container_denies_the_pod_naming_it_and_the_finding() {
        let w = two_containers(false);
        let images = [
            state(&format!("registry.example.com/shop/api@{D}"), clean()),
            state("registry.example.com/shop/migrate@sha256:ffff", dirty()),
        ];
        let d = decide(&w, &images, &settings());
        assert!(!d.allowed && d.record.is_none());
        assert_eq!((d.outcome, d.reason), (Outcome::Deny, Reason::Dirty));
        for want in [
            "init container `migrate`",
            "npm-token in layer 3 /app/.npmrc",
            "shop/migrate@sha256:ffff",
        ] {
            assert!(d.message.contains(want), "{want}: {}", d.message);
        }
        assert!(!d.message.contains("container `api`"), "{}", d.message);
    }

    #[test]
    fn a_clean_pod_is_allowed_and_recorded_unless_dry_run() {
        let api = format!("registry.example.com/shop/api@{D}");
        let migrate = format!("registry.example.com/shop/migrate@{D}");
        let images = [state(&api, clean()), state(&migrate, clean())];
        let d = decide(&two_containers(false), &images, &settings());
        assert!(d.allowed && d.outcome == Outcome::Allow && d.reason == Reason::Clean);
        assert_eq!(
            d.record,
            Some(("pod-uid-1".into(), vec![api, migrate])),
            "the full references, as resolved and checked"
        );
        let d = decide(&two_containers(true), &images, &settings());
        assert!(d.allowed && d.record.is_none(), "dry run: nothing recorded");
    }

    #[test]
    fn timeouts_fail_closed_or_open_for_pods_and_warn_for_templates() {
        let images = [state("a", clean()), state("b", Lookup::Pending)];
        let d = decide(&two_containers(false), &images, &settings());
        assert!(
            !d.allowed && d.message.contains("scan pending, retry"),
            "{}",
            d.message
        );
        let open = AdmissionSettings {
            on_timeout: OnTimeout::FailOpen,
            ..settings()
        };
        let d = decide(&two_containers(false), &images, &open);
        assert!(d.allowed && d.warnings.len() == 1, "{d:?}");
        assert_eq!((d.outcome, d.reason), (Outcome::Allow, Reason::ScanPending));
        assert!(
            d.record.is_some(),
            "every image has its digest: the record names them all"
        );
        // A registry down: one image not even resolved. Fail-open allows, and records nothing
        // (a record naming part of the pod's images would vouch for what was not checked).
        let unresolved = [
            state("a", clean()),
            ImageState {
                image: "registry.example.com/shop/migrate:1".into(),
                digest: String::new(),
                lookup: Lookup::ScanFailed("connection refused".into()),
                exemption: None,
            },
        ];
        let d = decide(&two_containers(false), &unresolved, &open);
        assert!(d.allowed && d.record.is_none(), "{d:?}");
        assert_eq!(d.reason, Reason::ScanFailed);
        let template = AdmissionWorkload {
            admitted: Admitted::Template {
                kind: "Deployment".into(),
            },
            ..two_containers(false)
        };
        let d = decide(&template, &images, &settings());
        assert!(
            d.allowed && d.warnings[0].contains("could not decide in time") && d.record.is_none(),
            "{d:?}"
        );
    }

    #[test]
    fn audit_mode_and_namespace_exemptions_allow_and_say_why() {
        let images = [state("a", clean()), state("b", dirty())];
        let audit = AdmissionSettings {
            mode: GateMode::Audit,
            ..settings()
        };
        let d = decide(&two_containers(false), &images, &audit);
        assert!(
            d.allowed && d.warnings[0].contains("audit mode") && d.record.is_some(),
            "{d:?}"
        );
        assert_eq!(d.outcome, Outcome::WouldDeny);
        let exempt = AdmissionSettings {
            namespace_exemption: Some("kube-system: platform images".into()),
            ..settings()
        };
        let d = decide(&two_containers(false), &images, &exempt);
        assert!(
            d.allowed && d.reason == Reason::Exempted && d.detail.contains("platform images"),
            "{d:?}"
        );
        assert_eq!(
            d.record, None,
            "nothing was checked in an exempted namespace: no record vouches for its images"
        );
    }
}
