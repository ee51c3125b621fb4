//! Sidecar injection, the mutating webhook's second pure part (issue 15): a pod annotated
//! `lanyard.dev/inject: "true"` gets `lanyard-sidecar run` as a **native sidecar** (the first
//! init container, `restartPolicy: Always`, a startup probe on its `/readyz`), so every other
//! container — earlier init containers included — starts only once its credentials are on
//! disk.
//!
//! [`requested`] says whether a review asks for it; [`plan`] reads the pod and its
//! `lanyard.dev/*` annotations and answers an [`Injection`]: nothing to do, the RFC 6902
//! operations to add, or a refusal with a message a developer can act on. Everything here is
//! pure; [`crate::broker::Broker::admission_mutate`] composes it with digest pinning
//! ([`super::pin`]) into one patch: injection first, then pinning of the pod it made (so the
//! sidecar's own image is pinned too).
//!
//! What the patch adds (names fixed, so a re-invocation recognises them):
//! - the init container [`SIDECAR`], first in `initContainers` (the array created when
//!   absent); its flags come from the annotations, each `lanyard.dev/NAME` being the
//!   sidecar's own `--NAME` flag ([`FLAG_ANNOTATIONS`]), and each `lanyard.dev/target-NAME`
//!   one `LANYARD_TARGET_<N>` variable in the sidecar's annotation-style key syntax
//!   (`role=db,format=template,path=db/dsn,template=…`); no second set of keys;
//! - the volume [`SECRETS_VOLUME`], a memory-backed `emptyDir` mounted at [`SECRETS_DIR`]:
//!   writable in the sidecar, **read-only** in every other container and init container;
//! - the volume [`TOKEN_VOLUME`], projected: a service-account token with lanyard's audience
//!   and an explicit `expirationSeconds`, and the broker's CA, which the patch puts in the
//!   annotation [`CA_ANNOTATION`] and the downward API projects as a file;
//! - with `lanyard.dev/aws-listen`, the AWS container-credentials variables in the other
//!   containers (unless they set them);
//! - the annotation [`STATUS_ANNOTATION`]` = injected`.
//!
//! Every annotation value is untrusted and bounded ([`MAX_ANNOTATION_BYTES`],
//! [`MAX_LANYARD_ANNOTATIONS`]); the sidecar flags they make are checked with the sidecar's
//! own parser before anything is injected, so a typo is refused at admission instead of
//! leaving the pod stuck in `Init`.
//!
//! Idempotent: under `reinvocationPolicy: IfNeeded` the webhook may see its own output again;
//! a pod that already has the sidecar gets only what containers added since lack (the
//! read-only mount, the AWS variables), nothing twice.

use clap::Parser as _;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, Operation};
use serde_json::{Value, json};

use super::admission::ReviewError;
use crate::config::InjectConfig;

/// The annotation that asks for injection (`"true"`; `"false"` or absent: never injected).
pub const INJECT_ANNOTATION: &str = "lanyard.dev/inject";
/// Written by the patch: `injected`.
pub const STATUS_ANNOTATION: &str = "lanyard.dev/status";
/// Written by the patch: the broker's CA (PEM), projected into the sidecar as `ca.pem`.
pub const CA_ANNOTATION: &str = "lanyard.dev/broker-ca";
/// Prefix of a target annotation: `lanyard.dev/target-NAME`.
pub const TARGET_PREFIX: &str = "lanyard.dev/target-";
/// The sidecar container's name.
pub const SIDECAR: &str = "lanyard";
/// The shared secrets volume.
pub const SECRETS_VOLUME: &str = "lanyard-secrets";
/// The projected token (and CA) volume.
pub const TOKEN_VOLUME: &str = "lanyard-token";
/// Where the secrets volume is mounted, in every container.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Where the token volume is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/lanyard";
/// Largest value of one `lanyard.dev/*` annotation read, in bytes (the sidecar's own bound
/// on a template is 64 KiB).
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// Most `lanyard.dev/*` annotations one pod may carry.
pub const MAX_LANYARD_ANNOTATIONS: usize = 128;
/// Largest CA bundle handed to the sidecar, in bytes.
pub const MAX_CA_BYTES: usize = 64 * 1024;

/// `lanyard.dev/NAME` annotations that are the sidecar's `--NAME` flags (`roles` is
/// `--role`, comma-separated as `LANYARD_ROLES`); `revoke-on-shutdown` takes `"true"`.
pub const FLAG_ANNOTATIONS: &[&str] = &[
    "roles",
    "ttl-seconds",
    "notify-signal",
    "notify-pid-file",
    "notify-process-name",
    "notify-command",
    "notify-touch",
    "on-expiry",
    "exit-when-file",
    "revoke-on-shutdown",
    "aws-listen",
    "aws-role",
    "aws-token-file",
    "aws-token-mode",
    "aws-token-uid",
    "aws-token-gid",
];

/// What the mutating webhook does about injection for one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Not asked for (no annotation, `"false"`, not a pod create): nothing added.
    NotRequested,
    /// Asked for, but this broker has no `inject` section: allowed as it is, with a warning.
    Disabled,
    /// The operations to add (empty when a re-invocation finds everything in place).
    Patch {
        /// RFC 6902 operations, in order, against the pod as submitted.
        ops: Vec<PatchOperation>,
        /// True when the sidecar is added now; false on a re-invocation.
        added_sidecar: bool,
        /// Shown to the client (`kubectl` prints them).
        warnings: Vec<String>,
        /// One line for the audit record: roles and targets, no values.
        summary: String,
    },
    /// Refused: the pod cannot be injected as written. The message names the annotation,
    /// volume or container and what to change.
    Refused(String),
}

/// Whether `req` asks for injection: a pod create (no subresource) annotated
/// `lanyard.dev/inject` with any value but `"false"` (a bad value is refused by [`plan`]).
pub fn requested(req: &AdmissionRequest<DynamicObject>) -> bool {
    pod_create(req).is_some_and(|o| {
        o.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECT_ANNOTATION))
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"))
    })
}

fn pod_create(req: &AdmissionRequest<DynamicObject>) -> Option<&DynamicObject> {
    (req.operation == Operation::Create
        && req.kind.kind == "Pod"
        && req.kind.group.is_empty()
        && req.sub_resource.is_none())
    .then_some(req.object.as_ref())
    .flatten()
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn refused(m: String) -> Result<Injection, ReviewError> {
    Ok(Injection::Refused(format!("lanyard: {m}")))
}

/// The injection for `req`. `config` is the broker's `inject` section (`None`: off);
/// `ca_pem` the broker's CA as read now (required when the broker URL is `https://`). Pure;
/// `Err` for a pod spec that cannot be read (the route answers 400).
pub fn plan(
    req: &AdmissionRequest<DynamicObject>,
    config: Option<&InjectConfig>,
    ca_pem: Option<&str>,
) -> Result<Injection, ReviewError> {
    if !requested(req) {
        return Ok(Injection::NotRequested);
    }
    let Some(obj) = pod_create(req) else {
        return Ok(Injection::NotRequested);
    };
    let annotations = obj.metadata.annotations.clone().unwrap_or_default();
    let inject = annotations
        .get(INJECT_ANNOTATION)
        .map(|v| v.trim())
        .unwrap_or_default();
    if !inject.eq_ignore_ascii_case("true") {
        return refused(format!(
            "annotation {INJECT_ANNOTATION}: {:?} is not \"true\" or \"false\"",
            short(inject, 40)
        ));
    }
    let Some(config) = config else {
        return Ok(Injection::Disabled);
    };
    let spec_value = obj
        .data
        .get("spec")
        .ok_or_else(|| ReviewError::BadObject("Pod has no spec".into()))?;
    let spec: PodSpec = serde_json::from_value(spec_value.clone()).map_err(|e| {
        ReviewError::BadObject(format!("Pod's spec: {}", short(&e.to_string(), 120)))
    })?;

    // The annotations: bounded, known, turned into the sidecar's flags and targets.
    let ours: Vec<(&String, &String)> = annotations
        .iter()
        .filter(|(k, _)| k.starts_with("lanyard.dev/"))
        .collect();
    if ours.len() > MAX_LANYARD_ANNOTATIONS {
        return refused(format!(
            "{} lanyard.dev/ annotations; at most {MAX_LANYARD_ANNOTATIONS}",
            ours.len()
        ));
    }
    let mut flags: Vec<String> = Vec::new();
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut aws_listen = None;
    let mut aws_token_file = lanyard_sidecar::aws::DEFAULT_TOKEN_FILE.to_owned();
    for (k, v) in &ours {
        if v.len() > MAX_ANNOTATION_BYTES {
            return refused(format!(
                "annotation {k}: {} bytes; at most {MAX_ANNOTATION_BYTES}",
                v.len()
            ));
        }
        let name = &k["lanyard.dev/".len()..];
        if [INJECT_ANNOTATION, STATUS_ANNOTATION, CA_ANNOTATION].contains(&k.as_str()) {
            continue;
        }
        if let Some(t) = k.strip_prefix(TARGET_PREFIX) {
            if t.is_empty() {
                return refused(format!(
                    "annotation {k}: name the target, e.g. {TARGET_PREFIX}db"
                ));
            }
            targets.push((k.to_string(), v.to_string()));
            continue;
        }
        if !FLAG_ANNOTATIONS.contains(&name) {
            return refused(format!(
                "unknown annotation {}; known: {INJECT_ANNOTATION}, {TARGET_PREFIX}NAME, and \
                 lanyard.dev/ with {}",
                short(k, 80),
                FLAG_ANNOTATIONS.join(", ")
            ));
        }
        let v = v.trim();
        match name {
            "revoke-on-shutdown" => match v {
                "true" => flags.push("--revoke-on-shutdown".into()),
                "false" => {}
                _ => {
                    return refused(format!(
                        "annotation {k}: {:?} is not \"true\" or \"false\"",
                        short(v, 40)
                    ));
                }
            },
            "roles" => flags.push(format!("--role={v}")),
            _ => flags.push(format!("--{name}={v}")),
        }
        if name == "aws-listen" {
            aws_listen = Some(v.to_owned());
        }
        if name == "aws-token-file" {
            v.clone_into(&mut aws_token_file);
        }
    }
    // BTreeMap order: LANYARD_TARGET_1.. in the order of the targets' names.
    let env: Vec<(String, String)> = targets
        .iter()
        .enumerate()
        .map(|(i, (_, v))| (format!("LANYARD_TARGET_{}", i + 1), v.clone()))
        .collect();

    let https = config.broker_url.starts_with("https://");
    let ca_pem = match (https, ca_pem) {
        (false, _) => None,
        (true, Some(pem)) if !pem.trim().is_empty() && pem.len() <= MAX_CA_BYTES => Some(pem),
        (true, _) => {
            return refused(
                "the broker cannot read its CA (inject.ca_file) to hand to the sidecar; \
                 the broker's operator must fix it"
                    .into(),
            );
        }
    };
    let mut args = vec![
        "run".to_owned(),
        format!("--broker={}", config.broker_url),
        format!("--token-file={TOKEN_DIR}/token"),
        format!("--dir={SECRETS_DIR}"),
        format!("--health-listen=0.0.0.0:{}", config.health_port),
    ];
    if ca_pem.is_some() {
        args.push(format!("--ca={TOKEN_DIR}/ca.pem"));
    }
    args.extend(flags);
    if let Err(e) = check_with_sidecar(&args, &targets, &env) {
        return refused(e);
    }

    // The pod as it is: what is ours already, what conflicts.
    let init = spec.init_containers.clone().unwrap_or_default();
    let has_sidecar = init.iter().any(|c| c.name == SIDECAR);
    if spec.containers.iter().any(|c| c.name == SIDECAR) {
        return refused(format!(
            "the pod has a container named `{SIDECAR}`; the injected sidecar takes that name \
             (rename the container, or drop {INJECT_ANNOTATION})"
        ));
    }
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let have = |n: &str| volumes.contains(&n);
    if has_sidecar && !(have(SECRETS_VOLUME) && have(TOKEN_VOLUME)) {
        return refused(format!(
            "the pod has an init container named `{SIDECAR}` the injector did not add (no \
             volumes {SECRETS_VOLUME} and {TOKEN_VOLUME}); remove it, or drop \
             {INJECT_ANNOTATION} and configure the sidecar by hand"
        ));
    }
    if !has_sidecar {
        for v in [SECRETS_VOLUME, TOKEN_VOLUME] {
            if have(v) {
                return refused(format!(
                    "the pod already has a volume named `{v}`, which the injector adds; \
                     rename the pod's volume"
                ));
            }
        }
    }

    let mut ops = Vec::new();
    let mut warnings = Vec::new();
    // Other containers: the read-only secrets mount, and the AWS variables. Indices are
    // those of the pod as submitted, so these come before the sidecar is inserted.
    for (list, containers) in [("initContainers", &init), ("containers", &spec.containers)] {
        for (i, c) in containers.iter().enumerate() {
            if c.name == SIDECAR {
                continue;
            }
            let idx = i.to_string();
            let mounts = c.volume_mounts.as_deref().unwrap_or_default();
            let ours_mounted = mounts.iter().any(|m| m.name == SECRETS_VOLUME);
            if let Some(m) = mounts.iter().find(|m| {
                m.name != SECRETS_VOLUME && m.mount_path.trim_end_matches('/') == SECRETS_DIR
            }) {
                return refused(format!(
                    "container `{}` already mounts volume `{}` at {SECRETS_DIR}, where the \
                     injected credentials go; move that mount",
                    c.name, m.name
                ));
            }
            if !ours_mounted {
                let mount =
                    json!({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": true});
                if c.volume_mounts.is_none() {
                    ops.push(add(&["spec", list, &idx, "volumeMounts"], json!([mount])));
                } else {
                    ops.push(add(&["spec", list, &idx, "volumeMounts", "-"], mount));
                }
            }
            if let Some(addr) = &aws_listen {
                aws_env(
                    c,
                    list,
                    &idx,
                    addr,
                    &aws_token_file,
                    &mut ops,
                    &mut warnings,
                );
            }
        }
    }
    let summary = format!(
        "sidecar {}; roles {}; targets {}",
        if has_sidecar {
            "already injected"
        } else {
            "injected"
        },
        annotations
            .get("lanyard.dev/roles")
            .map_or("(all granted)", |r| r.as_str())
            .chars()
            .take(200)
            .collect::<String>(),
        if targets.is_empty() {
            "(default layout)".to_owned()
        } else {
            targets
                .iter()
                .map(|(k, _)| k.trim_start_matches(TARGET_PREFIX))
                .collect::<Vec<_>>()
                .join(", ")
                .chars()
                .take(300)
                .collect()
        }
    );
    if has_sidecar {
        return Ok(Injection::Patch {
            ops,
            added_sidecar: false,
            warnings,
            summary,
        });
    }
    if annotations.contains_key("lanyard.dev/notify-process-name")
        && spec.share_process_namespace != Some(true)
    {
        warnings.push(
            "lanyard: lanyard.dev/notify-process-name needs spec.shareProcessNamespace: true, \
             or the sidecar cannot see the app's processes"
                .into(),
        );
    }
    if spec.host_network == Some(true) {
        warnings.push(format!(
            "lanyard: a hostNetwork pod: the sidecar's health port {} is open on the node",
            config.health_port
        ));
    }

    // The volumes, the annotations, then the sidecar first in initContainers.
    let mut token_sources = vec![json!({"serviceAccountToken": {
        "audience": config.audience,
        "expirationSeconds": config.token_expiration_seconds,
        "path": "token"
    }})];
    if ca_pem.is_some() {
        token_sources.push(json!({"downwardAPI": {"items": [{
            "path": "ca.pem",
            "fieldRef": {"apiVersion": "v1", "fieldPath": format!("metadata.annotations['{CA_ANNOTATION}']")}
        }]}}));
    }
    let new_volumes = [
        json!({"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        json!({"name": TOKEN_VOLUME, "projected": {"sources": token_sources}}),
    ];
    if spec.volumes.is_none() {
        ops.push(add(&["spec", "volumes"], json!(new_volumes)));
    } else {
        for v in new_volumes {
            ops.push(add(&["spec", "volumes", "-"], v));
        }
    }
    // The annotations object exists: it holds lanyard.dev/inject. `~1` escapes the `/`.
    if let Some(pem) = ca_pem {
        ops.push(add(&["metadata", "annotations", CA_ANNOTATION], json!(pem)));
    }
    ops.push(add(
        &["metadata", "annotations", STATUS_ANNOTATION],
        json!("injected"),
    ));
    let sidecar = sidecar_container(config, &args, &env);
    if spec.init_containers.is_none() {
        ops.push(add(&["spec", "initContainers"], json!([sidecar])));
    } else {
        ops.push(add(&["spec", "initContainers", "0"], sidecar));
    }
    Ok(Injection::Patch {
        ops,
        added_sidecar: true,
        warnings,
        summary,
    })
}

fn aws_env(
    c: &Container,
    list: &str,
    idx: &str,
    addr: &str,
    token_file: &str,
    ops: &mut Vec<PatchOperation>,
    warnings: &mut Vec<String>,
) {
    let want = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{addr}/v1/aws-credentials"),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            format!("{SECRETS_DIR}/{token_file}"),
        ),
    ];
    let env = c.env.as_deref().unwrap_or_default();
    let mut missing = Vec::new();
    for (name, value) in want {
        match env.iter().find(|e| e.name == name) {
            None => missing.push(json!({"name": name, "value": value})),
            Some(e) if e.value.as_deref() != Some(value.as_str()) => warnings.push(format!(
                "lanyard: container `{}` sets {name} itself; left as it is",
                short(&c.name, 63)
            )),
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        return;
    }
    if c.env.is_none() {
        ops.push(add(&["spec", list, idx, "env"], Value::Array(missing)));
    } else {
        for e in missing {
            ops.push(add(&["spec", list, idx, "env", "-"], e));
        }
    }
}

fn sidecar_container(config: &InjectConfig, args: &[String], env: &[(String, String)]) -> Value {
    let port = config.health_port;
    let mut c = json!({
        "name": SIDECAR,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "restartPolicy": "Always",
        "args": args,
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 1,
            "failureThreshold": config.startup_timeout_seconds
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 10,
            "failureThreshold": 3
        },
        "resources": serde_json::to_value(&config.resources).unwrap_or_else(|_| json!({})),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}
        ]
    });
    if !env.is_empty() {
        c["env"] = env
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
    }
    c
}

/// Checks the sidecar's command line and targets with the sidecar's own parser, as
/// `lanyard-sidecar run` would at start. A target naming a `template_file` (a file in the
/// sidecar's container, not the broker's) is checked for its syntax only: the broker never
/// reads a path a pod names. (clap also reads the sidecar's `LANYARD_*` variables from the
/// broker's own environment for flags not given; the broker's deployment sets none of them.)
fn check_with_sidecar(
    args: &[String],
    targets: &[(String, String)],
    env: &[(String, String)],
) -> Result<(), String> {
    use lanyard_sidecar::cli::{Cli, Command};
    use lanyard_sidecar::spec::parse_target_keys;
    let mut checked_env = Vec::new();
    for ((annotation, value), (var, _)) in targets.iter().zip(env) {
        let spec = parse_target_keys(value)
            .map_err(|e| format!("annotation {annotation}: {}", short(&e, 300)))?;
        if spec.template_file.is_none() {
            checked_env.push((var.clone(), value.clone()));
        }
    }
    let cli = Cli::try_parse_from(
        std::iter::once("lanyard-sidecar").chain(args.iter().map(String::as_str)),
    )
    .map_err(|e| {
        // clap's message up to its usage line, on one line.
        let text = e.to_string();
        let first = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let first = first.trim_start_matches("error: ");
        format!(
            "the lanyard.dev/ annotations give the sidecar a bad option: {} (each \
                 lanyard.dev/NAME annotation is the sidecar's --NAME flag; roles is --role)",
            short(first, 300)
        )
    })?;
    let Command::Run(common) = cli.command else {
        return Err("internal: not a run command".into());
    };
    common.to_options(true, &checked_env).map_err(|e| {
        let m = e.to_string();
        // The flags and variable names are ours; say which annotation it was.
        let mut m = short(&m, 400);
        if let Some(rest) = m.strip_prefix("--") {
            let flag: String = rest
                .chars()
                .take_while(|c| *c == '-' || c.is_ascii_lowercase())
                .collect();
            let annotation = if flag == "role" {
                "roles"
            } else {
                flag.as_str()
            };
            if FLAG_ANNOTATIONS.contains(&annotation) {
                m = format!(
                    "annotation lanyard.dev/{annotation} (--{flag}){}",
                    &rest[flag.len()..]
                );
            }
        }
        for ((annotation, _), (var, _)) in targets.iter().zip(env) {
            if m.contains(var.as_str()) {
                m = m.replace(var.as_str(), &format!("annotation {annotation}"));
                break;
            }
        }
        m
    })?;
    // What `run` checks only once it serves the AWS endpoint: the token file's name and mode.
    if common.aws_listen.is_some() {
        lanyard_sidecar::names::check_name("aws-token-file", &common.aws_token_file)
            .map_err(|e| format!("annotation lanyard.dev/aws-token-file: {}", short(&e, 200)))?;
        common.aws_token_opts().map_err(|e| {
            format!(
                "annotation lanyard.dev/aws-token-mode: {}",
                short(&e.to_string(), 200)
            )
        })?;
    }
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use json_patch::Patch;
    use k8s_openapi::api::core::v1::Pod;

    use super::*;
    use crate::gate::admission::parse_review;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn config() -> InjectConfig {
        serde_json::from_value(json!({
            "image": "registry.example.com/lanyard/sidecar:0.1",
            "broker_url": "https://lanyard.lanyard-system.svc:8443",
            "ca_file": "/etc/lanyard/tls/ca.crt",
            "audience": "lanyard",
            "token_expiration_seconds": 900
        }))
        .expect("config")
    }

    /// A review of `object` as the Kubernetes documentation shows one
    /// (`/docs/reference/access-authn-authz/extensible-admission-controllers/`, "Request").
    fn review(kind: (&str, &str, &str), resource: &str, op: &str, object: Value) -> Value {
        let bytes = crate::gate::admission::tests::review(kind, resource, None, op, object, false);
        serde_json::from_slice(&bytes).expect("json")
    }

    /// The pod of the Kubernetes documentation's "Configure a Pod to Use a Volume for
    /// Storage" task (`redis`, an `emptyDir`), annotated.
    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "redis", "namespace": "shop", "annotations": annotations},
            "spec": {
                "containers": [{"name": "redis", "image": "redis",
                    "volumeMounts": [{"name": "redis-storage", "mountPath": "/data/redis"}]}],
                "volumes": [{"name": "redis-storage", "emptyDir": {}}]
            }
        })
    }

    fn plan_of(object: &Value, config: Option<&InjectConfig>) -> Injection {
        let v = review(("", "v1", "Pod"), "pods", "CREATE", object.clone());
        let req = parse_review(&serde_json::to_vec(&v).expect("json")).expect("parse");
        plan(&req, config, Some(CA)).expect("plan")
    }

    /// The operations of an injection; panics on anything else.
    fn ops(i: &Injection) -> &[PatchOperation] {
        match i {
            Injection::Patch { ops, .. } => ops,
            other => panic!("not a patch: {other:?}"),
        }
    }

    fn refusal(i: Injection) -> String {
        match i {
            Injection::Refused(m) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// `object` with the injection applied (as the API server does, RFC 6902), and read as
    /// a Pod.
    fn apply(object: &Value, i: &Injection) -> (Value, Pod) {
        let mut doc = object.clone();
        // Through the wire form, as the API server gets it.
        let wire = serde_json::to_vec(&Patch(ops(i).to_vec())).expect("json");
        let patch: Patch = serde_json::from_slice(&wire).expect("patch");
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        let pod: Pod = serde_json::from_value(doc.clone()).expect("still a Pod");
        (doc, pod)
    }

    fn injected(annotations: Value) -> (Value, Pod) {
        let object = pod(annotations);
        let c = config();
        let i = plan_of(&object, Some(&c));
        apply(&object, &i)
    }

    #[test]
    fn an_annotated_pod_gets_the_native_sidecar_first_with_its_volumes_and_a_read_only_mount() {
        let (doc, pod) = injected(json!({
            "lanyard.dev/inject": "true",
            "lanyard.dev/roles": "app-db,aws",
            "lanyard.dev/target-db": "role=app-db,field=password,path=db/password",
            "lanyard.dev/target-dsn": "role=app-db,format=template,path=db/dsn,template=postgres://app:{{ data.password | urlencode }}@db/app",
            "lanyard.dev/notify-signal": "HUP",
            "lanyard.dev/notify-pid-file": "/run/app/app.pid"
        }));
        let spec = pod.spec.expect("spec");
        let init = spec.init_containers.expect("initContainers created");
        assert_eq!(init.len(), 1);
        let s = &init[0];
        assert_eq!(s.name, SIDECAR);
        assert_eq!(
            s.restart_policy.as_deref(),
            Some("Always"),
            "a native sidecar"
        );
        assert_eq!(
            s.image.as_deref(),
            Some("registry.example.com/lanyard/sidecar:0.1")
        );
        let probe = s.startup_probe.as_ref().expect("a startup probe");
        let get = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/readyz"));
        assert_eq!(probe.failure_threshold, Some(60));
        let args = s.args.clone().expect("args");
        for want in [
            "run",
            "--broker=https://lanyard.lanyard-system.svc:8443",
            "--ca=/var/run/secrets/lanyard/ca.pem",
            "--token-file=/var/run/secrets/lanyard/token",
            "--dir=/run/secrets",
            "--health-listen=0.0.0.0:8099",
            "--role=app-db,aws",
            "--notify-signal=HUP",
            "--notify-pid-file=/run/app/app.pid",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        // Targets, in the order of their names, as the sidecar's LANYARD_TARGET_<N>.
        let env: Vec<(String, String)> = s
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env[0].0, "LANYARD_TARGET_1");
        assert_eq!(env[0].1, "role=app-db,field=password,path=db/password");
        assert_eq!(env[1].0, "LANYARD_TARGET_2");
        assert!(env[1].1.contains("urlencode"));
        let sc = s.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));

        // The app: its own mount kept, the secrets read-only.
        let app = &spec.containers[0];
        let mounts = app.volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].name, SECRETS_VOLUME);
        assert_eq!(mounts[1].mount_path, "/run/secrets");
        assert_eq!(mounts[1].read_only, Some(true));
        // The sidecar writes there.
        let sm = s.volume_mounts.as_ref().expect("sidecar mounts");
        assert!(
            sm.iter()
                .any(|m| m.name == SECRETS_VOLUME && m.read_only != Some(true))
        );

        // Volumes: the pod's, then a memory emptyDir and the projected token with the CA.
        let volumes = spec.volumes.expect("volumes");
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["redis-storage", SECRETS_VOLUME, TOKEN_VOLUME]);
        assert_eq!(
            volumes[1]
                .empty_dir
                .as_ref()
                .and_then(|e| e.medium.as_deref()),
            Some("Memory")
        );
        let projected = volumes[2].projected.as_ref().expect("projected");
        let sources = projected.sources.as_ref().expect("sources");
        let token = sources[0]
            .service_account_token
            .as_ref()
            .expect("a service-account token");
        assert_eq!(token.audience.as_deref(), Some("lanyard"));
        assert_eq!(token.expiration_seconds, Some(900));
        assert_eq!(token.path, "token");
        let item = &sources[1]
            .downward_api
            .as_ref()
            .expect("downwardAPI")
            .items
            .as_ref()
            .expect("items")[0];
        assert_eq!(item.path, "ca.pem");
        assert_eq!(
            item.field_ref.as_ref().expect("fieldRef").field_path,
            "metadata.annotations['lanyard.dev/broker-ca']"
        );
        // The annotations the patch wrote, through `~1`-escaped pointers.
        assert_eq!(doc["metadata"]["annotations"][CA_ANNOTATION], CA);
        assert_eq!(
            doc["metadata"]["annotations"][STATUS_ANNOTATION],
            "injected"
        );
    }

    #[test]
    fn annotation_keys_are_escaped_in_the_patch_as_rfc_6901_says() {
        let object = pod(json!({"lanyard.dev/inject": "true"}));
        let c = config();
        let i = plan_of(&object, Some(&c));
        let wire = serde_json::to_value(Patch(ops(&i).to_vec())).expect("json");
        let paths: Vec<&str> = wire
            .as_array()
            .expect("ops")
            .iter()
            .map(|o| o["path"].as_str().expect("path"))
            .collect();
        assert!(
            paths.contains(&"/metadata/annotations/lanyard.dev~1status"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/metadata/annotations/lanyard.dev~1broker-ca"),
            "{paths:?}"
        );
        assert!(
            !paths.iter().any(|p| p.contains("lanyard.dev/")),
            "{paths:?}"
        );
    }

    #[test]
    fn earlier_init_containers_come_after_the_sidecar_and_get_the_credentials_too() {
        let mut object = pod(json!({"lanyard.dev/inject": "true"}));
        object["spec"]["initContainers"] = json!([
            {"name": "migrate", "image": "registry.example.com/shop/migrate:1"},
            {"name": "warm", "image": "registry.example.com/shop/warm:1", "volumeMounts": [{"name": "redis-storage", "mountPath": "/data"}]}
        ]);
        let c = config();
        let (_, pod) = apply(&object, &plan_of(&object, Some(&c)));
        let init = pod.spec.expect("spec").init_containers.expect("init");
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [SIDECAR, "migrate", "warm"]);
        for c in &init[1..] {
            let m = c.volume_mounts.as_ref().expect("mounts");
            assert!(
                m.iter().any(|m| m.name == SECRETS_VOLUME
                    && m.mount_path == SECRETS_DIR
                    && m.read_only == Some(true)),
                "{}: {m:?}",
                c.name
            );
        }
    }

    #[test]
    fn re_invocation_adds_nothing_twice_and_mounts_only_containers_added_since() {
        let object =
            pod(json!({"lanyard.dev/inject": "true", "lanyard.dev/aws-listen": "127.0.0.1:8098"}));
        let c = config();
        let first = plan_of(&object, Some(&c));
        let (doc, _) = apply(&object, &first);
        let again = plan_of(&doc, Some(&c));
        assert_eq!(
            again,
            Injection::Patch {
                ops: vec![],
                added_sidecar: false,
                warnings: vec![],
                summary: "sidecar already injected; roles (all granted); targets (default layout)"
                    .into()
            }
        );
        // Another webhook added a container after us (reinvocationPolicy: IfNeeded).
        let mut later = doc.clone();
        later["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "istio-proxy", "image": "registry.example.com/proxy:1"}));
        let third = plan_of(&later, Some(&c));
        let (doc3, pod3) = apply(&later, &third);
        assert_eq!(ops(&third).len(), 2, "{:?}", ops(&third));
        let spec = pod3.spec.expect("spec");
        assert_eq!(spec.init_containers.expect("init").len(), 1);
        assert_eq!(spec.volumes.expect("volumes").len(), 3);
        let proxy = &spec.containers[1];
        assert_eq!(
            proxy.volume_mounts.as_ref().expect("mounts")[0].name,
            SECRETS_VOLUME
        );
        let env: Vec<&str> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            env,
            [
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
            ]
        );
        // And once more: nothing.
        assert!(ops(&plan_of(&doc3, Some(&c))).is_empty());
    }

    #[test]
    fn the_aws_endpoint_annotation_sets_the_container_credentials_variables() {
        let mut object = pod(json!({
            "lanyard.dev/inject": "true",
            "lanyard.dev/aws-listen": "127.0.0.1:8098",
            "lanyard.dev/aws-role": "aws-read",
            "lanyard.dev/aws-token-file": "aws-token"
        }));
        object["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "own", "image": "registry.example.com/own:1",
                "env": [{"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.2/creds"}]}));
        let c = config();
        let i = plan_of(&object, Some(&c));
        let Injection::Patch { warnings, .. } = &i else {
            panic!("{i:?}")
        };
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("container `own` sets AWS_CONTAINER_CREDENTIALS_FULL_URI"));
        let (_, pod) = apply(&object, &i);
        let spec = pod.spec.expect("spec");
        let env = |c: &Container| -> Vec<(String, String)> {
            c.env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        };
        assert_eq!(
            env(&spec.containers[0]),
            [
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(),
                    "http://127.0.0.1:8098/v1/aws-credentials".to_owned()
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_owned(),
                    "/run/secrets/aws-token".to_owned()
                )
            ]
        );
        // The container's own endpoint is kept; the token file variable is added.
        let own = env(&spec.containers[1]);
        assert_eq!(own[0].1, "http://169.254.170.2/creds");
        assert_eq!(own[1].0, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
        let args = spec.init_containers.expect("init")[0]
            .args
            .clone()
            .expect("args");
        assert!(args.contains(&"--aws-listen=127.0.0.1:8098".to_owned()));
        assert!(args.contains(&"--aws-role=aws-read".to_owned()));
    }

    #[test]
    fn a_job_pod_gets_a_native_sidecar_that_the_kubelet_stops_when_the_job_is_done() {
        // A Job's pod as the job controller creates it (Kubernetes docs, "Jobs": `pi`).
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "pi-", "namespace": "shop",
                "labels": {"batch.kubernetes.io/job-name": "pi"},
                "annotations": {"lanyard.dev/inject": "true", "lanyard.dev/roles": "reports"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                    "uid": "d2e3b1f0-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "perl:5.34.0", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}]}
        });
        let c = config();
        let (_, pod) = apply(&object, &plan_of(&object, Some(&c)));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let s = &spec.init_containers.expect("init")[0];
        // restartPolicy Always on an init container: a sidecar, ended by the kubelet once
        // the main container exits, so the Job completes.
        assert_eq!(s.restart_policy.as_deref(), Some("Always"));
        assert!(
            s.args
                .as_ref()
                .expect("args")
                .contains(&"--role=reports".to_owned())
        );
    }

    #[test]
    fn pods_without_the_annotation_and_other_reviews_are_never_injected() {
        let c = config();
        assert_eq!(plan_of(&pod(json!({})), Some(&c)), Injection::NotRequested);
        assert_eq!(
            plan_of(&pod(json!({"lanyard.dev/inject": "false"})), Some(&c)),
            Injection::NotRequested
        );
        let mut bare = pod(json!({}));
        bare["metadata"]
            .as_object_mut()
            .expect("m")
            .remove("annotations");
        assert_eq!(plan_of(&bare, Some(&c)), Injection::NotRequested);
        // A Deployment's template: its pods are injected when they are created.
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"template": {"metadata": {"annotations": {"lanyard.dev/inject": "true"}},
                "spec": {"containers": [{"name": "api", "image": "registry.example.com/shop/api:1.5"}]}}}
        });
        let v = review(
            ("apps", "v1", "Deployment"),
            "deployments",
            "CREATE",
            deployment,
        );
        let req = parse_review(&serde_json::to_vec(&v).expect("json")).expect("parse");
        assert_eq!(
            plan(&req, Some(&c), Some(CA)).expect("plan"),
            Injection::NotRequested
        );
        // An update (a pod's init containers cannot change).
        let annotated = pod(json!({"lanyard.dev/inject": "true"}));
        let mut v = review(("", "v1", "Pod"), "pods", "UPDATE", annotated.clone());
        v["request"]["oldObject"] = annotated;
        let req = parse_review(&serde_json::to_vec(&v).expect("json")).expect("parse");
        assert!(!requested(&req));
        assert_eq!(
            plan(&req, Some(&c), Some(CA)).expect("plan"),
            Injection::NotRequested
        );
        // Asked for, but the broker has no inject section.
        assert_eq!(
            plan_of(&pod(json!({"lanyard.dev/inject": "true"})), None),
            Injection::Disabled
        );
    }

    #[test]
    fn conflicting_volumes_mounts_and_containers_are_refused_with_what_to_change() {
        let c = config();
        let mut object = pod(json!({"lanyard.dev/inject": "true"}));
        object["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "lanyard-secrets", "emptyDir": {}}));
        let m = refusal(plan_of(&object, Some(&c)));
        assert!(
            m.contains("already has a volume named `lanyard-secrets`") && m.contains("rename"),
            "{m}"
        );

        let mut object = pod(json!({"lanyard.dev/inject": "true"}));
        object["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"name": "redis-storage", "mountPath": "/run/secrets/"}));
        let m = refusal(plan_of(&object, Some(&c)));
        assert!(
            m.contains("container `redis` already mounts volume `redis-storage` at /run/secrets"),
            "{m}"
        );

        let mut object = pod(json!({"lanyard.dev/inject": "true"}));
        object["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "lanyard", "image": "registry.example.com/x:1"}));
        let m = refusal(plan_of(&object, Some(&c)));
        assert!(m.contains("a container named `lanyard`"), "{m}");

        // A sidecar written by hand (docs/SIDECAR.md's example) plus the annotation.
        let mut object = pod(json!({"lanyard.dev/inject": "true"}));
        object["spec"]["initContainers"] = json!([{"name": "lanyard", "image": "registry.example.com/lanyard/sidecar:0.1", "restartPolicy": "Always"}]);
        let m = refusal(plan_of(&object, Some(&c)));
        assert!(m.contains("the injector did not add"), "{m}");
    }

    #[test]
    fn bad_annotations_are_refused_at_admission_naming_the_annotation() {
        let c = config();
        let cases = [
            (
                json!({"lanyard.dev/inject": "yes"}),
                "lanyard.dev/inject: \"yes\"",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/role": "db"}),
                "unknown annotation lanyard.dev/role",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/target-db": "role=db,path=x,colour=red"}),
                "annotation lanyard.dev/target-db: unknown key \"colour\"",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/target-db": "role=db,path=../../etc/passwd"}),
                "annotation lanyard.dev/target-db",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/target-t": "role=db,path=t,format=template,template={{ nope"}),
                "annotation lanyard.dev/target-t",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/aws-listen": "0.0.0.0:8098"}),
                "annotation lanyard.dev/aws-listen (--aws-listen) 0.0.0.0:8098: the endpoint hands out AWS keys over plain HTTP, so it listens on loopback only",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/aws-listen": "not an address"}),
                "--aws-listen",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/notify-signal": "KILL", "lanyard.dev/notify-pid-file": "/p"}),
                "KILL",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/notify-pid-file": "/p"}),
                "--notify-signal",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/on-expiry": "explode"}),
                "annotation lanyard.dev/on-expiry (--on-expiry): on-expiry \"explode\" is not known",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/ttl-seconds": "-5"}),
                "--ttl-seconds",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/aws-listen": "127.0.0.1:8098", "lanyard.dev/aws-token-file": "../token"}),
                "annotation lanyard.dev/aws-token-file",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/aws-listen": "127.0.0.1:8098", "lanyard.dev/aws-token-mode": "rw-r--r--"}),
                "annotation lanyard.dev/aws-token-mode",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/revoke-on-shutdown": "maybe"}),
                "lanyard.dev/revoke-on-shutdown",
            ),
            (
                json!({"lanyard.dev/inject": "true", "lanyard.dev/roles": "x".repeat(MAX_ANNOTATION_BYTES + 1)}),
                "bytes; at most 65536",
            ),
        ];
        for (annotations, want) in cases {
            let m = refusal(plan_of(&pod(annotations.clone()), Some(&c)));
            assert!(m.contains(want), "{annotations}: {m}");
            assert!(m.starts_with("lanyard: ") && m.len() < 700, "{m}");
        }
    }

    #[test]
    fn a_template_file_in_the_sidecar_is_not_read_by_the_broker() {
        // A path that exists only in the sidecar's container: checked for syntax only.
        let c = config();
        let object = pod(json!({"lanyard.dev/inject": "true",
            "lanyard.dev/target-cfg": "role=db,format=template,path=app.conf,template_file=/etc/lanyard-templates/app.conf.j2"}));
        let (_, pod) = apply(&object, &plan_of(&object, Some(&c)));
        let s = &pod.spec.expect("spec").init_containers.expect("init")[0];
        assert_eq!(s.env.as_ref().expect("env")[0].name, "LANYARD_TARGET_1");
    }

    #[test]
    fn an_https_broker_without_its_ca_refuses_and_plain_http_needs_none() {
        let c = config();
        let object = pod(json!({"lanyard.dev/inject": "true"}));
        let v = review(("", "v1", "Pod"), "pods", "CREATE", object.clone());
        let req = parse_review(&serde_json::to_vec(&v).expect("json")).expect("parse");
        let m = refusal(plan(&req, Some(&c), None).expect("plan"));
        assert!(m.contains("inject.ca_file"), "{m}");
        let mut http = config();
        http.broker_url = "http://127.0.0.1:8080".into();
        http.ca_file = None;
        let i = plan(&req, Some(&http), None).expect("plan");
        let (doc, pod) = apply(&object, &i);
        assert!(doc["metadata"]["annotations"].get(CA_ANNOTATION).is_none());
        let spec = pod.spec.expect("spec");
        let args = spec.init_containers.expect("init")[0]
            .args
            .clone()
            .expect("args");
        assert!(!args.iter().any(|a| a.starts_with("--ca")), "{args:?}");
        let v = &spec.volumes.expect("volumes")[2];
        assert_eq!(
            v.projected
                .as_ref()
                .expect("p")
                .sources
                .as_ref()
                .expect("s")
                .len(),
            1
        );
    }
}
