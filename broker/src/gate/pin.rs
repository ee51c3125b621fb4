//! Digest pinning, the mutating webhook's pure part (issue 12, part B): a pod's
//! `image: repo:tag` becomes `repo@sha256:…` for the digest the tag named at admission, so a
//! tag that moves between admission and the kubelet's pull cannot slip a different image in.
//!
//! [`plan`] reads an AdmissionReview's request (parsed and bounded by
//! [`super::admission::parse_review`], its pod spec read by [`super::admission::workload_of`])
//! and lists the images to pin, each with its JSON pointer; the service resolves each tag
//! through the registry; [`pin`] turns the answers into an RFC 6902 JSONPatch and the
//! warnings of the images it could not pin; [`response`] writes the AdmissionReview answer
//! (patch base64-encoded, as the API server reads it). Everything here is pure.
//!
//! What is pinned, and what is left alone:
//! - **Pods only.** A workload template (Deployment, CronJob, ...) is never patched: pinning a
//!   template fights GitOps tools, which would see the live object drift from git and put the
//!   tag back. Its pods are pinned when they are created.
//! - An image already written with a digest (`repo@sha256:…`, `repo:tag@sha256:…`) is left
//!   as written.
//! - On an `UPDATE`, only images that change are pinned: rewriting the image of a running
//!   container (`app:1` → `app@sha256:…`, the same image) would make the kubelet restart it.
//!   Through the `pods/ephemeralcontainers` subresource only ephemeral containers can change;
//!   through a plain pod update they cannot (the API server refuses it), so they are not
//!   touched there.
//! - The repository is kept as written (`Registry.Example.com/shop/api:1` keeps its spelling);
//!   the tag is dropped: `repo@sha256:…` has one meaning for every runtime and tool, while
//!   `repo:tag@sha256:…` reads as the tag to people and some tools after the tag has moved.
//!   An image with no tag means `:latest`, and is resolved as that.
//!
//! Nothing here denies: an image that cannot be pinned (no registry host in it, a registry
//! that does not answer in time) is left as written with a `warnings` entry; the validating
//! webhook then decides, and records the pod as tag-based.

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, ReplaceOperation};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, Operation};
use serde::Serialize;

use super::admission::{ContainerKind, ReviewError, workload_of};
use super::image::{self, ImageRef};

/// One image the mutating webhook pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinTarget {
    /// Where the image is in the pod (`/spec/containers/0/image`), escaped as RFC 6901 says.
    pub pointer: PointerBuf,
    /// Which list its container is in.
    pub kind: ContainerKind,
    /// The container's name.
    pub container: String,
    /// `image` as written.
    pub image: String,
    /// What to resolve: the reference parsed (`:latest` when no tag is written), or why it
    /// cannot be (no registry host, ...).
    pub reference: Result<ImageRef, String>,
}

/// What the mutating webhook does with a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to patch: not a pod (a workload template, another kind), or not a create or
    /// update. Allowed as it is.
    NotAPod,
    /// A pod.
    Pod {
        /// Tag references to pin, in spec order (init containers, containers, ephemeral
        /// containers).
        targets: Vec<PinTarget>,
        /// Images already written with a digest: left alone.
        already_pinned: usize,
        /// Images an update does not change (or cannot change): left alone.
        unchanged: usize,
    },
}

const LISTS: [(&str, ContainerKind); 3] = [
    ("initContainers", ContainerKind::Init),
    ("containers", ContainerKind::Container),
    ("ephemeralContainers", ContainerKind::Ephemeral),
];

/// The reference to resolve for `image` as written: a tag, or `:latest` when none is written.
pub fn tag_reference(image: &str) -> Result<ImageRef, String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('/') && !last.contains(':') && !image.contains('@') {
        image::parse(&format!("{image}:latest"))
    } else {
        image::parse(image)
    }
}

/// `image` as written with its tag replaced by `@digest`: the repository keeps its spelling.
pub fn pinned_reference(image: &str, digest: &str) -> String {
    let (head, last) = match image.rsplit_once('/') {
        Some((h, l)) => (Some(h), l),
        None => (None, image),
    };
    let name = last.split_once(':').map_or(last, |(n, _)| n);
    match head {
        Some(h) => format!("{h}/{name}@{digest}"),
        None => format!("{name}@{digest}"),
    }
}

/// The images of a review's pod to pin. Pure; `Err` for a pod spec that cannot be read (the
/// route answers 400).
pub fn plan(req: &AdmissionRequest<DynamicObject>) -> Result<Plan, ReviewError> {
    // Templates off: a workload template is nothing to pin. This also bounds and checks the
    // pod spec (`MAX_IMAGES`, its shape).
    let Some(workload) = workload_of(req, false)? else {
        return Ok(Plan::NotAPod);
    };
    if !matches!(workload.admitted, super::admission::Admitted::Pod { .. }) {
        return Ok(Plan::NotAPod);
    }
    let Some(spec) = req.object.as_ref().and_then(|o| o.data.get("spec")) else {
        return Ok(Plan::NotAPod);
    };
    let update = req.operation == Operation::Update;
    let subresource = req.sub_resource.as_deref() == Some("ephemeralcontainers");
    let old_spec = req.old_object.as_ref().and_then(|o| o.data.get("spec"));
    let mut targets = Vec::new();
    let (mut already_pinned, mut unchanged) = (0, 0);
    for (list, kind) in LISTS {
        let Some(containers) = spec.get(list).and_then(|l| l.as_array()) else {
            continue;
        };
        // Which lists this request may change at all.
        let changeable = match (update, subresource, kind) {
            (false, _, _) => true,
            (true, true, k) => k == ContainerKind::Ephemeral,
            (true, false, k) => k != ContainerKind::Ephemeral,
        };
        for (i, c) in containers.iter().enumerate() {
            let Some(image) = c.get("image").and_then(|v| v.as_str()) else {
                continue;
            };
            let name = c.get("name").and_then(|v| v.as_str()).unwrap_or_default();
            let was = old_spec
                .and_then(|s| s.get(list))
                .and_then(|l| l.as_array())
                .and_then(|l| {
                    l.iter()
                        .find(|o| o.get("name").and_then(|v| v.as_str()) == Some(name))
                })
                .and_then(|o| o.get("image"))
                .and_then(|v| v.as_str());
            if image.contains('@') {
                already_pinned += 1;
            } else if !changeable || (update && was == Some(image)) {
                unchanged += 1;
            } else {
                targets.push(PinTarget {
                    pointer: PointerBuf::from_tokens(["spec", list, &i.to_string(), "image"]),
                    kind,
                    container: name.to_owned(),
                    image: image.to_owned(),
                    reference: tag_reference(image),
                });
            }
        }
    }
    Ok(Plan::Pod {
        targets,
        already_pinned,
        unchanged,
    })
}

/// What [`pin`] made of the resolved tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pinning {
    /// The JSONPatch: one `replace` per pinned image; empty when nothing is pinned.
    pub patch: Patch,
    /// `container `name`: image → pinned reference`, for the audit record.
    pub pinned: Vec<String>,
    /// One per image left as written: what a developer reads (`kubectl` prints warnings),
    /// short, naming the container and why.
    pub warnings: Vec<String>,
}

/// Pins each target whose tag `resolved` gives a digest for (`Ok(digest)`); a target whose
/// reference is unusable or whose resolution failed (`Err(why)`, or absent) is left as
/// written with a warning. `resolved` is looked up by the target's reference (`repo:tag`).
/// Pure.
pub fn pin(
    targets: &[PinTarget],
    resolved: &dyn Fn(&ImageRef) -> Option<Result<String, String>>,
) -> Pinning {
    let mut out = Pinning::default();
    for t in targets {
        let what = format!("{} `{}`", kind_name(t.kind), t.container);
        let answer = match &t.reference {
            Err(e) => Err(e.clone()),
            Ok(r) => resolved(r).unwrap_or_else(|| Err("not resolved".into())),
        };
        match answer {
            Ok(digest) if image::is_digest(&digest) => {
                let value = pinned_reference(&t.image, &digest);
                out.pinned.push(format!("{what}: {} → {value}", t.image));
                out.patch.0.push(PatchOperation::Replace(ReplaceOperation {
                    path: t.pointer.clone(),
                    value: serde_json::Value::String(value),
                }));
            }
            Ok(other) => out.warnings.push(warning(
                &what,
                &t.image,
                &format!(
                    "the registry answered `{}`, not a sha256 digest",
                    other.chars().take(80).collect::<String>()
                ),
            )),
            Err(why) => out.warnings.push(warning(&what, &t.image, &why)),
        }
    }
    out
}

fn kind_name(kind: ContainerKind) -> &'static str {
    match kind {
        ContainerKind::Container => "container",
        ContainerKind::Init => "init container",
        ContainerKind::Ephemeral => "ephemeral container",
    }
}

fn warning(what: &str, image: &str, why: &str) -> String {
    let image: String = image.chars().take(120).collect();
    // Kubernetes may cut long warnings: the container and the image first, and of a long
    // reason its start and its end (where a registry error says what it is).
    let n = why.chars().count();
    let why: String = if n <= 160 {
        why.to_owned()
    } else {
        let head: String = why.chars().take(60).collect();
        let tail: String = why.chars().skip(n - 100).collect();
        format!("{head}…{tail}")
    };
    format!(
        "lanyard: {what} image {image} not pinned to a digest ({why}); it runs by tag, and \
         the image gate records the pod as tag-based"
    )
}

/// The answer of the mutating webhook, an `admission.k8s.io/v1` `AdmissionReview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MutateReview {
    /// `admission.k8s.io/v1`.
    pub api_version: &'static str,
    /// `AdmissionReview`.
    pub kind: &'static str,
    /// The answer.
    pub response: MutateResponse,
}

/// `response` of [`MutateReview`]. Written here rather than with `kube-core`'s
/// `AdmissionResponse`, which (version 5) writes `patch` as an array of numbers where the API
/// documents a base64 string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MutateResponse {
    /// The review's `request.uid`.
    pub uid: String,
    /// True but for an injection refused ([`super::inject::Injection::Refused`]): pinning
    /// never denies (the validating webhook does).
    pub allowed: bool,
    /// Why the review is refused (`allowed: false` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MutateStatus>,
    /// `JSONPatch` when there is a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The RFC 6902 patch, base64 (standard alphabet, padded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Shown to the client (`kubectl` prints them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `status` of a refused [`MutateResponse`], as the API server reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MutateStatus {
    /// HTTP-style code shown to the client (403).
    pub code: u16,
    /// What `kubectl` prints.
    pub message: String,
}

/// The refusal of the review whose `request.uid` is `uid`, with `message`. Pure.
pub fn refusal(uid: &str, message: &str) -> MutateReview {
    MutateReview {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: MutateResponse {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(MutateStatus {
                code: 403,
                message: message.to_owned(),
            }),
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        },
    }
}

/// The answer to the review whose `request.uid` is `uid`: allowed, with the patch when it
/// has operations (the API server refuses a `patchType` without a `patch`). Pure.
pub fn response(uid: &str, pinning: &Pinning) -> MutateReview {
    use base64::Engine as _;
    let patch = (!pinning.patch.0.is_empty()).then(|| {
        let bytes = serde_json::to_vec(&pinning.patch).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    });
    MutateReview {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: MutateResponse {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: pinning.warnings.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::gate::admission::parse_review;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A review shaped as the Kubernetes documentation shows it
    /// (`/docs/reference/access-authn-authz/extensible-admission-controllers/`, "Request").
    fn review(
        kind: (&str, &str, &str),
        resource: &str,
        sub: Option<&str>,
        op: &str,
        object: serde_json::Value,
        old: Option<serde_json::Value>,
    ) -> serde_json::Value {
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
            "oldObject": old,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if op == "CREATE" {"CreateOptions"} else {"UpdateOptions"}}
        });
        if let Some(s) = sub {
            request["subResource"] = serde_json::json!(s);
            request["requestSubResource"] = serde_json::json!(s);
        }
        serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    fn pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "my-pod", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "registry.example.com/shop/migrate:1"}],
                "containers": [
                    {"name": "api", "image": "Registry.Example.com:5000/shop/api:1.4"},
                    {"name": "lanyard", "image": format!("registry.example.com/lanyard/sidecar@{D2}")},
                    {"name": "pinned-with-tag", "image": format!("registry.example.com/lanyard/sidecar:0.1@{D2}")},
                    {"name": "latest", "image": "registry.example.com/shop/tools"}
                ],
                "ephemeralContainers": [{"name": "debugger", "image": "registry.example.com/tools/debug:1"}]
            }
        })
    }

    fn plan_of(v: &serde_json::Value) -> Plan {
        plan(&parse_review(&serde_json::to_vec(v).expect("json")).expect("parse")).expect("plan")
    }

    fn targets(p: &Plan) -> &[PinTarget] {
        match p {
            Plan::Pod { targets, .. } => targets,
            Plan::NotAPod => panic!("not a pod"),
        }
    }

    /// Resolves every tag to D1, the `debug` repository's to nothing (its registry is down).
    fn registry(r: &ImageRef) -> Option<Result<String, String>> {
        match r.repository.as_deref() {
            Some("registry.example.com/tools/debug") => {
                Some(Err("registry.example.com: connection refused".into()))
            }
            _ => Some(Ok(D1.to_owned())),
        }
    }

    /// Applies the answer's patch (decoded from base64, as the API server does) to `object`
    /// with the `json-patch` crate, and reads the result as a Pod.
    fn apply(answer: &MutateReview, object: &serde_json::Value) -> (serde_json::Value, Pod) {
        let json = serde_json::to_value(answer).expect("json");
        let mut doc = object.clone();
        if let Some(p) = json["response"]["patch"].as_str() {
            assert_eq!(json["response"]["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .expect("base64");
            let patch: Patch = serde_json::from_slice(&bytes).expect("an RFC 6902 patch");
            json_patch::patch(&mut doc, &patch).expect("applies");
        } else {
            assert!(json["response"].get("patchType").is_none());
        }
        let pod: Pod = serde_json::from_value(doc.clone()).expect("still a Pod");
        (doc, pod)
    }

    #[test]
    fn a_pod_create_gets_every_tag_pinned_in_every_container_list_and_digests_left_alone() {
        let v = review(("", "v1", "Pod"), "pods", None, "CREATE", pod(), None);
        let p = plan_of(&v);
        let Plan::Pod {
            targets,
            already_pinned,
            unchanged,
        } = &p
        else {
            panic!("a pod");
        };
        assert_eq!((*already_pinned, *unchanged), (2, 0));
        let paths: Vec<String> = targets.iter().map(|t| t.pointer.to_string()).collect();
        assert_eq!(
            paths,
            [
                "/spec/initContainers/0/image",
                "/spec/containers/0/image",
                "/spec/containers/3/image",
                "/spec/ephemeralContainers/0/image"
            ]
        );
        let pinning = pin(targets, &registry);
        let answer = response("705ab4f5-6393-11e8-b7cc-42010a800002", &pinning);
        assert!(answer.response.allowed);
        assert_eq!(answer.response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        let (doc, pod) = apply(&answer, &v["request"]["object"]);
        let spec = pod.spec.expect("spec");
        let images: Vec<&str> = spec
            .containers
            .iter()
            .map(|c| c.image.as_deref().expect("image"))
            .collect();
        assert_eq!(
            images,
            [
                format!("Registry.Example.com:5000/shop/api@{D1}"),
                format!("registry.example.com/lanyard/sidecar@{D2}"),
                format!("registry.example.com/lanyard/sidecar:0.1@{D2}"),
                format!("registry.example.com/shop/tools@{D1}"),
            ],
            "the repository as written, the tag dropped; digests untouched"
        );
        assert_eq!(
            spec.init_containers.expect("init")[0].image.as_deref(),
            Some(format!("registry.example.com/shop/migrate@{D1}").as_str())
        );
        // The registry of the debugger's image did not answer: left as written, with a
        // warning naming the container.
        assert_eq!(
            doc["spec"]["ephemeralContainers"][0]["image"],
            "registry.example.com/tools/debug:1"
        );
        assert_eq!(answer.response.warnings.len(), 1);
        let w = &answer.response.warnings[0];
        assert!(
            w.contains("ephemeral container `debugger`")
                && w.contains("connection refused")
                && w.contains("tag-based"),
            "{w}"
        );
        assert_eq!(pinning.pinned.len(), 3);
    }

    #[test]
    fn the_answer_is_the_documented_shape_with_a_base64_patch() {
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a", "image": "registry.example.com/a:1"}]}}),
            None,
        );
        let pinning = pin(targets(&plan_of(&v)), &registry);
        let json = serde_json::to_value(response("u-1", &pinning)).expect("json");
        // As the Kubernetes documentation's "Response" example: `patch` is a base64 string.
        let want_patch = format!(
            r#"[{{"op":"replace","path":"/spec/containers/0/image","value":"registry.example.com/a@{D1}"}}]"#
        );
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": "u-1",
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(want_patch)
                }
            })
        );
        // Nothing to pin: no patch and no patchType (the API server refuses one without the
        // other).
        let json = serde_json::to_value(response("u-2", &Pinning::default())).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": "u-2", "allowed": true}})
        );
    }

    #[test]
    fn a_pod_already_pinned_gets_no_operation() {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": format!("registry.example.com/a@{D2}")}]}});
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            object.clone(),
            None,
        );
        let p = plan_of(&v);
        assert!(targets(&p).is_empty());
        let answer = response("u", &pin(targets(&p), &registry));
        assert_eq!(answer.response.patch, None);
        assert_eq!(apply(&answer, &object).0, object);
    }

    #[test]
    fn workload_templates_and_other_kinds_are_never_patched() {
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "api", "image": "registry.example.com/shop/api:1.5"}]}}}
        });
        let v = review(
            ("apps", "v1", "Deployment"),
            "deployments",
            None,
            "CREATE",
            deployment,
            None,
        );
        assert_eq!(plan_of(&v), Plan::NotAPod);
        let cron = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "r", "image": "registry.example.com/shop/report:2"}]}}}}}
        });
        let v = review(
            ("batch", "v1", "CronJob"),
            "cronjobs",
            None,
            "CREATE",
            cron,
            None,
        );
        assert_eq!(plan_of(&v), Plan::NotAPod);
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            Some("status"),
            "UPDATE",
            pod(),
            None,
        );
        assert_eq!(plan_of(&v), Plan::NotAPod, "another subresource");
        let mut v = review(("", "v1", "Pod"), "pods", None, "DELETE", pod(), None);
        v["request"]["object"] = serde_json::Value::Null;
        v["request"]["oldObject"] = pod();
        assert_eq!(plan_of(&v), Plan::NotAPod, "a delete");
    }

    #[test]
    fn an_update_pins_only_the_images_it_changes() {
        let old = pod();
        let mut new = pod();
        new["spec"]["containers"][0]["image"] =
            serde_json::json!("Registry.Example.com:5000/shop/api:1.5");
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "UPDATE",
            new.clone(),
            Some(old.clone()),
        );
        let p = plan_of(&v);
        let paths: Vec<String> = targets(&p).iter().map(|t| t.pointer.to_string()).collect();
        // The running containers whose image is unchanged are not restarted by a rewrite,
        // and ephemeral containers cannot change through a pod update.
        assert_eq!(paths, ["/spec/containers/0/image"]);
        let Plan::Pod { unchanged, .. } = p else {
            panic!()
        };
        assert_eq!(unchanged, 3);

        // An ephemeral container added through the subresource: only it is pinned.
        let mut with_debug = old.clone();
        with_debug["spec"]["ephemeralContainers"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!({"name": "debug-2", "image": "registry.example.com/tools/shell:3"}));
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            Some("ephemeralcontainers"),
            "UPDATE",
            with_debug.clone(),
            Some(old),
        );
        let p = plan_of(&v);
        let paths: Vec<String> = targets(&p).iter().map(|t| t.pointer.to_string()).collect();
        assert_eq!(paths, ["/spec/ephemeralContainers/1/image"]);
        let answer = response("u", &pin(targets(&p), &registry));
        let (_, pod) = apply(&answer, &with_debug);
        assert_eq!(
            pod.spec.expect("spec").ephemeral_containers.expect("eph")[1]
                .image
                .as_deref(),
            Some(format!("registry.example.com/tools/shell@{D1}").as_str())
        );
    }

    #[test]
    fn images_that_cannot_be_pinned_are_left_with_a_warning_and_never_denied() {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [
            {"name": "hub", "image": "nginx:1.27"},
            {"name": "moved", "image": "registry.example.com/a:1"},
            {"name": "odd", "image": "registry.example.com/b:1"}
        ]}});
        let v = review(
            ("", "v1", "Pod"),
            "pods",
            None,
            "CREATE",
            object.clone(),
            None,
        );
        let p = plan_of(&v);
        let odd = |r: &ImageRef| match r.repository.as_deref() {
            Some("registry.example.com/a") => None,
            _ => Some(Ok("sha512:abc".to_owned())),
        };
        let pinning = pin(targets(&p), &odd);
        assert!(pinning.patch.0.is_empty());
        assert_eq!(pinning.warnings.len(), 3, "{:?}", pinning.warnings);
        assert!(
            pinning.warnings[0].contains("container `hub`")
                && pinning.warnings[0].contains("no registry host"),
            "{}",
            pinning.warnings[0]
        );
        assert!(pinning.warnings[2].contains("not a sha256 digest"));
        let answer = response("u", &pinning);
        assert!(answer.response.allowed);
        assert_eq!(apply(&answer, &object).0, object);
    }

    #[test]
    fn json_pointers_are_escaped_and_references_keep_their_spelling() {
        // The pointer's tokens are fixed names and indices, escaped by jsonptr all the same.
        let p = PointerBuf::from_tokens(["spec", "a/b~c", "0"]);
        assert_eq!(p.to_string(), "/spec/a~1b~0c/0");
        assert_eq!(
            pinned_reference("127.0.0.1:5000/app:1", D1),
            format!("127.0.0.1:5000/app@{D1}"),
            "a port is not a tag"
        );
        assert_eq!(
            pinned_reference("127.0.0.1:5000/app", D1),
            format!("127.0.0.1:5000/app@{D1}")
        );
        assert_eq!(
            tag_reference("127.0.0.1:5000/app")
                .expect("latest")
                .tag
                .as_deref(),
            Some("latest")
        );
        assert!(tag_reference("nginx").is_err(), "no registry host");
    }
}
