//! Broker configuration: a YAML/TOML/JSON file plus `LANYARD_*` environment overrides
//! (`LANYARD_LISTEN`, `LANYARD_STORE__SQLITE_PATH`; `__` separates nested keys), parsed
//! straight into these types. A bad file fails at start naming the file and the field.
//! `docs/CONFIG.md` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest JWT leeway accepted, in seconds: leeways above this are refused.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// Smallest `min_refresh_interval_seconds` accepted: each token naming an unknown `kid` may
/// trigger a JWKS fetch, so without a floor anyone could make the broker fetch without pause.
pub const MIN_JWKS_REFRESH_FLOOR_SECONDS: u64 = 5;

/// Top-level configuration keys (the only `LANYARD_<KEY>` variables that override the file).
pub const CONFIG_KEYS: &[&str] = &[
    "listen",
    "public_url",
    "tls",
    "policies_dir",
    "issuers",
    "bootstrap",
    "admin",
    "store",
    "audit",
    "signing",
    "limits",
    "server",
    "reload_interval_seconds",
    "backends",
    "gate",
    "inject",
    "revocation",
];

/// The whole broker configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The broker's public base URL (`iss` of the JWTs it signs, and its discovery document).
    pub public_url: String,
    /// Server TLS.
    pub tls: TlsConfig,
    /// Directory of policy files.
    pub policies_dir: PathBuf,
    /// Trusted JWT issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Bootstrap tokens.
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Persistent state.
    pub store: StoreConfig,
    /// Audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Broker-signed JWTs (the `jwt` backend).
    #[serde(default)]
    pub signing: SigningConfig,
    /// Size and rate bounds.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Connection and HTTP deadlines, and the connection cap.
    #[serde(default)]
    pub server: ServerConfig,
    /// How often policy, certificate and JWKS files are checked for changes.
    #[serde(default = "default_reload_interval")]
    pub reload_interval_seconds: u64,
    /// Upstream credential backends (`aws-sts`, `vault`). A backend exists only when its
    /// section is present; `jwt` is always there.
    #[serde(default)]
    pub backends: BackendsConfig,
    /// The image gate (`docs/GATE.md`).
    #[serde(default)]
    pub gate: GateConfig,
    /// Sidecar injection by the mutating webhook (`docs/KUBERNETES.md`); off when absent.
    #[serde(default)]
    pub inject: Option<InjectConfig>,
    /// REV (issue 16): the broker JWTs' revocation list and introspection
    /// (`docs/API.md`).
    #[serde(default)]
    pub revocation: RevocationConfig,
}

/// REV (issue 16): `revocation:` — the revocation list of broker-signed JWTs published beside
/// the JWKS (`GET /v1/jwks/revoked`) and the introspection endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// How long relying parties may cache the list (`Cache-Control: max-age`), and how old
    /// the broker's own copy of it may get before it is read from the store again. A JWT
    /// revoked through any replica is in the list every replica serves within this, and in
    /// the copies relying parties cache within twice this.
    #[serde(default = "default_revocation_list_max_age")]
    pub list_max_age_seconds: u64,
    /// The most entries the list holds. Entries drop out when their JWT expires, so the list
    /// holds the JWTs revoked within the longest `jwt` role lifetime; past this bound the
    /// list is not served (a retryable 503 `not_ready`, so relying parties
    /// fail closed rather than trust a list missing entries) until entries expire.
    #[serde(default = "default_revocation_list_max_entries")]
    pub list_max_entries: usize,
    /// Revoke the leases issued to a pod when it is deleted: a watch on pods through the
    /// Kubernetes API access of `gate.pod_lookup` (required), by one replica at a time
    /// (`docs/KUBERNETES.md`). Needs RBAC `list` and `watch` on pods.
    #[serde(default)]
    pub revoke_on_pod_deletion: bool,
    /// `timeoutSeconds` of each watch request (the API server ends it then and the broker
    /// watches again from where it was).
    #[serde(default = "default_pod_watch_timeout")]
    pub pod_watch_timeout_seconds: u64,
    /// How far the clocks of the replicas sharing the store may differ. A relist checks only
    /// leases issued more than this (plus 1 s, the stored precision) before it began, so a
    /// lease of a pod created after the list's snapshot is never taken for a deleted pod's.
    #[serde(default = "default_pod_watch_clock_skew")]
    pub pod_watch_clock_skew_seconds: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            list_max_age_seconds: default_revocation_list_max_age(),
            list_max_entries: default_revocation_list_max_entries(),
            revoke_on_pod_deletion: false,
            pod_watch_timeout_seconds: default_pod_watch_timeout(),
            pod_watch_clock_skew_seconds: default_pod_watch_clock_skew(),
        }
    }
}

fn default_revocation_list_max_age() -> u64 {
    30
}
fn default_revocation_list_max_entries() -> usize {
    50_000
}
fn default_pod_watch_timeout() -> u64 {
    300
}
fn default_pod_watch_clock_skew() -> u64 {
    5
}

impl RevocationConfig {
    /// The bounds: a max age of 1 s to 1 h, 1 to 1,000,000 entries.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3_600).contains(&self.list_max_age_seconds) {
            return Err(format!(
                "field `revocation.list_max_age_seconds`: {} is not within 1 to 3600",
                self.list_max_age_seconds
            ));
        }
        if !(1..=1_000_000).contains(&self.list_max_entries) {
            return Err(format!(
                "field `revocation.list_max_entries`: {} is not within 1 to 1000000",
                self.list_max_entries
            ));
        }
        if self.pod_watch_clock_skew_seconds > 300 {
            return Err(format!(
                "field `revocation.pod_watch_clock_skew_seconds`: {} is above 300",
                self.pod_watch_clock_skew_seconds
            ));
        }
        if !(1..=3_600).contains(&self.pod_watch_timeout_seconds) {
            return Err(format!(
                "field `revocation.pod_watch_timeout_seconds`: {} is not within 1 to 3600",
                self.pod_watch_timeout_seconds
            ));
        }
        Ok(())
    }
}

/// `gate.mode` (and a policy rule's `gate_mode`), defined with the policies.
/// Upper bound on any role's `max_ttl_seconds` (12 hours).
pub const MAX_TTL_SECONDS: u64 = 12 * 60 * 60;

/// `gate.mode` globally, `gate_mode` on a rule: refuse, or only record what would be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    /// Refuse credentials to a workload whose images are not clean.
    #[default]
    Enforce,
    /// Issue, and audit and count what enforce mode would have refused (the rollout path).
    Audit,
}

impl GateMode {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// `gate.unscanned`: what an image without a verdict gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unscanned {
    /// Scan it now, waiting at most `scan_deadline_seconds` (then a retryable 503).
    #[default]
    Scan,
    /// Refuse until it has been scanned ahead (`POST /v1/admin/scans`).
    Deny,
}

/// `gate.unknown_workload`: what a gated identity with no trusted image source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownWorkload {
    /// Refuse.
    #[default]
    Deny,
    /// Issue (audited with the reason every time).
    Allow,
}

/// The image gate: verdicts, scans, registry credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// `enforce` (default) or `audit`; a policy rule's `gate_mode` overrides it.
    #[serde(default)]
    pub mode: GateMode,
    /// `scan` (default) or `deny`.
    #[serde(default)]
    pub unscanned: Unscanned,
    /// `deny` (default) or `allow`.
    #[serde(default)]
    pub unknown_workload: UnknownWorkload,
    /// How long an issuance waits for an on-demand scan before a retryable 503 (the scan
    /// goes on and stores its verdict).
    #[serde(default = "default_scan_deadline")]
    pub scan_deadline_seconds: u64,
    /// Scans running at once; more wait their turn.
    #[serde(default = "default_max_scans")]
    pub max_concurrent_scans: usize,
    /// Longest a single scan may run.
    #[serde(default = "default_scan_timeout")]
    pub scan_timeout_seconds: u64,
    /// The platforms (`os/arch[/variant]`) of an image index that decide its verdict; empty:
    /// every platform in the index.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Scanner allowlist file (`docs/SCANNER.md`), re-read when it changes; applied to stored
    /// findings when a verdict is read, so a change needs no re-scan.
    #[serde(default)]
    pub allowlist_file: Option<PathBuf>,
    /// Credentials per registry host, read from files at each scan; never from requests.
    #[serde(default)]
    pub registries: Vec<RegistryCredentials>,
    /// Plain HTTP to registries on loopback addresses only (`lanyard-broker dev`, tests).
    #[serde(default)]
    pub insecure_loopback_registries: bool,
    /// `ignore` (default) or `gate`: whether a Kubernetes pod token is gated by the admission
    /// record of its pod (`docs/GATE.md`). Turn it on once the validating webhook is installed
    /// and every running pod was admitted through it.
    #[serde(default)]
    pub pod_tokens: PodTokens,
    /// The admission webhooks (`/v1/admission/validate`, `/v1/admission/mutate`).
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Pod lookups through the Kubernetes API (trust source 3, `docs/GATE.md`); off when
    /// absent.
    #[serde(default)]
    pub pod_lookup: Option<PodLookupConfig>,
}

/// `gate.pod_tokens`: whether Kubernetes pod tokens are gated by admission records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodTokens {
    /// A pod token names no image (as before the webhook): only rules with
    /// `require_image: true` gate it. The default, so that upgrading the broker does not
    /// refuse every pod that was created before the webhook was installed.
    #[default]
    Ignore,
    /// A pod token's images are those of the admission record for its `kubernetes.io.pod.uid`;
    /// a pod without a record is an unknown workload (`gate.unknown_workload`).
    Gate,
}

/// `gate.admission.on_timeout`: what a pod whose admission could not be decided in time (a
/// scan pending, a registry down) gets. Workload templates always get allowed with a warning: `kubectl apply` does not retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Deny with "scan pending, retry" (controllers retry pod creation).
    #[default]
    FailClosed,
    /// Allow (audited).
    FailOpen,
}

/// A namespace the admission webhook lets through unchecked, with the reason (audited on
/// every use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceExemption {
    /// The namespace, exactly.
    pub namespace: String,
    /// Why (required, 1 to 500 characters).
    pub reason: String,
}

/// `gate.admission`: the validating webhook and the records it writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Check the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs
    /// and CronJobs too (default true).
    #[serde(default = "default_true")]
    pub templates: bool,
    /// `fail-closed` (default) or `fail-open`: for a pod whose images could not be checked
    /// within `deadline_ms` (a scan pending, a registry down). Templates are always allowed
    /// with a warning then.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// How long a decision may take, in milliseconds (default 8000). Must be below the
    /// `timeoutSeconds` of the `ValidatingWebhookConfiguration` (at most 30 s), or the API
    /// server gives up first and applies its `failurePolicy` instead of this answer.
    #[serde(default = "default_admission_deadline")]
    pub deadline_ms: u64,
    /// Namespaces let through unchecked, each with a reason.
    #[serde(default)]
    pub exempt_namespaces: Vec<NamespaceExemption>,
    /// How long an admission record is kept, in hours (default 168, a week): a pod token of a
    /// pod older than this finds no record (an unknown workload).
    #[serde(default = "default_record_retention")]
    pub record_retention_hours: u64,
    /// Rewrite pods' tag references to the checked digest (`/v1/admission/mutate`; default
    /// true). Off: records are tag-based, weaker.
    #[serde(default = "default_true")]
    pub pin_digests: bool,
    /// PEM CA of the API server's client certificate (its AdmissionConfiguration kubeconfig):
    /// a connection presenting a certificate signed by it may call the admission routes.
    /// Use a CA of its own, not the admin client CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// A file holding a bearer token the API server presents instead (its kubeconfig's
    /// `token`), re-read on every review. With neither this nor `client_ca_file`, the
    /// admission routes refuse everyone.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_admission_deadline() -> u64 {
    8_000
}
fn default_record_retention() -> u64 {
    168
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            templates: true,
            on_timeout: OnTimeout::default(),
            deadline_ms: default_admission_deadline(),
            exempt_namespaces: Vec::new(),
            record_retention_hours: default_record_retention(),
            pin_digests: true,
            client_ca_file: None,
            token_file: None,
        }
    }
}

impl AdmissionConfig {
    /// The exemption of `namespace`, if it has one.
    pub fn exemption(&self, namespace: &str) -> Option<&NamespaceExemption> {
        self.exempt_namespaces
            .iter()
            .find(|e| e.namespace == namespace)
    }

    fn check(&self) -> Result<(), String> {
        if !(100..=29_000).contains(&self.deadline_ms) {
            return Err(format!(
                "field `gate.admission.deadline_ms`: {} is outside 100 to 29000 (it must be below \
                 the webhook's timeoutSeconds, at most 30 s)",
                self.deadline_ms
            ));
        }
        if !(1..=24 * 366).contains(&self.record_retention_hours) {
            return Err(format!(
                "field `gate.admission.record_retention_hours`: {} is outside 1 to 8784",
                self.record_retention_hours
            ));
        }
        for (i, e) in self.exempt_namespaces.iter().enumerate() {
            let at = format!("field `gate.admission.exempt_namespaces[{i}]");
            if e.namespace.is_empty() || e.namespace.len() > 63 {
                return Err(format!("{at}.namespace`: give a namespace name"));
            }
            let reason = e.reason.trim();
            if reason.is_empty() || reason.len() > 500 {
                return Err(format!(
                    "{at}.reason`: give a reason of 1 to 500 characters (it is in every audit \
                     record of the exemption's use)"
                ));
            }
            if self.exempt_namespaces[..i]
                .iter()
                .any(|o| o.namespace == e.namespace)
            {
                return Err(format!(
                    "{at}`: namespace `{}` is listed twice",
                    e.namespace
                ));
            }
        }
        Ok(())
    }
}

// ---- inject (issue 15): sidecar injection by the mutating webhook ----------------------------

/// Smallest `inject.token_expiration_seconds`: the API server refuses a projected
/// service-account token asked for less than ten minutes.
pub const MIN_TOKEN_EXPIRATION_SECONDS: u64 = 600;

/// `inject`: what the mutating webhook (`/v1/admission/mutate`) adds to a pod annotated
/// `lanyard.dev/inject: "true"` (`docs/KUBERNETES.md`). The planner is
/// [`crate::gate::inject`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// The sidecar image (`registry/lanyard-sidecar@sha256:…` recommended; a tag is pinned to
    /// its digest like every other image when `gate.admission.pin_digests` is on).
    pub image: String,
    /// `imagePullPolicy` of the sidecar (default `IfNotPresent`).
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The broker's URL as pods reach it (`--broker`), e.g.
    /// `https://lanyard.lanyard-system.svc:8443`.
    pub broker_url: String,
    /// PEM CA of the broker's serving certificate, handed to the sidecar (`--ca`) through a
    /// pod annotation projected into its token volume; re-read at every injection (at most
    /// 64 KiB). Required for an `https://` `broker_url`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `audience` of the projected service-account token (default `lanyard`); an issuer in
    /// `issuers` must accept it.
    #[serde(default = "default_inject_audience")]
    pub audience: String,
    /// `expirationSeconds` of the projected token (default 600, at least 600, at most 86400);
    /// the kubelet renews it at 80% of its life and the sidecar re-reads it.
    #[serde(default = "default_token_expiration")]
    pub token_expiration_seconds: u64,
    /// Port of the sidecar's `/healthz`, `/readyz` and `/metrics` (default 8099).
    #[serde(default = "default_inject_health_port")]
    pub health_port: u16,
    /// How long the app waits for its first credentials: the startup probe's
    /// `failureThreshold` at one probe a second (default 60, 1 to 600).
    #[serde(default = "default_inject_startup")]
    pub startup_timeout_seconds: u32,
    /// `resources` of the sidecar container (Kubernetes `ResourceRequirements`; default:
    /// requests cpu 10m, memory 32Mi; limits memory 64Mi).
    #[serde(default = "default_inject_resources")]
    pub resources: k8s_openapi::api::core::v1::ResourceRequirements,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_inject_audience() -> String {
    "lanyard".into()
}
fn default_token_expiration() -> u64 {
    MIN_TOKEN_EXPIRATION_SECONDS
}
fn default_inject_health_port() -> u16 {
    8099
}
fn default_inject_startup() -> u32 {
    60
}
fn default_inject_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let q = |s: &str| Quantity(s.to_owned());
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), q("10m")),
                ("memory".to_owned(), q("32Mi")),
            ]
            .into_iter()
            .collect(),
        ),
        limits: Some([("memory".to_owned(), q("64Mi"))].into_iter().collect()),
        ..Default::default()
    }
}

impl InjectConfig {
    /// Checks the section; `audiences` are those the configured issuers accept (empty: no
    /// issuer configured, nothing to compare with).
    fn check(&self, audiences: &[&str]) -> Result<(), String> {
        let at = |f: &str, m: String| format!("field `inject.{f}`: {m}");
        if self.image.trim().is_empty() || self.image.len() > 512 || self.image.contains(' ') {
            return Err(at(
                "image",
                "give the sidecar image, e.g. registry.example.com/lanyard-sidecar@sha256:…".into(),
            ));
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(at(
                "image_pull_policy",
                format!(
                    "`{}` is not Always, IfNotPresent or Never",
                    self.image_pull_policy
                ),
            ));
        }
        let https = self.broker_url.starts_with("https://");
        if !(https || self.broker_url.starts_with("http://")) || self.broker_url.len() > 512 {
            return Err(at(
                "broker_url",
                format!("`{}` must be an http(s) URL", self.broker_url),
            ));
        }
        if https && self.ca_file.is_none() {
            return Err(at(
                "ca_file",
                "required with an https:// `inject.broker_url`: the sidecar checks the broker's \
                 certificate against it"
                    .into(),
            ));
        }
        if self.audience.is_empty() || self.audience.len() > 253 {
            return Err(at(
                "audience",
                "give an audience of 1 to 253 characters".into(),
            ));
        }
        if !audiences.is_empty() && !audiences.contains(&self.audience.as_str()) {
            return Err(at(
                "audience",
                format!(
                    "`{}` is not an audience of any `issuers[]`: the injected sidecars' tokens \
                     would all be refused; add it to the Kubernetes issuer's `audiences`",
                    self.audience
                ),
            ));
        }
        if !(MIN_TOKEN_EXPIRATION_SECONDS..=86_400).contains(&self.token_expiration_seconds) {
            return Err(at(
                "token_expiration_seconds",
                format!(
                    "{} is outside {MIN_TOKEN_EXPIRATION_SECONDS} (the API server's minimum) to 86400",
                    self.token_expiration_seconds
                ),
            ));
        }
        if self.health_port == 0 {
            return Err(at(
                "health_port",
                "must be a port number, 1 to 65535".into(),
            ));
        }
        if !(1..=600).contains(&self.startup_timeout_seconds) {
            return Err(at(
                "startup_timeout_seconds",
                format!("{} is outside 1 to 600", self.startup_timeout_seconds),
            ));
        }
        Ok(())
    }
}

// ---- end inject ---------------------------------------------------------------------------

/// `gate.pod_lookup`: where the broker reads pods (`GET /api/v1/namespaces/{ns}/pods/{name}`)
/// to learn which images a pod token's workload runs, and sweeps the admission records of
/// gone pods.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodLookupConfig {
    /// The broker runs in the cluster: its service account's token and CA
    /// (`/var/run/secrets/kubernetes.io/serviceaccount/`) and `KUBERNETES_SERVICE_HOST` /
    /// `KUBERNETES_SERVICE_PORT`. Or give `api_server`.
    #[serde(default)]
    pub in_cluster: bool,
    /// The API server's `https://` URL (outside the cluster); with `token_file`.
    #[serde(default)]
    pub api_server: Option<String>,
    /// The CA bundle (PEM) the API server's certificate is checked against, re-read about
    /// every minute (kube-rs); without it, the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A bearer token for the API server, re-read about every minute (kube-rs).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Deadline of one lookup, connection included.
    #[serde(default = "default_pod_lookup_timeout")]
    pub timeout_ms: u64,
    /// How often the admission records of gone pods are swept.
    #[serde(default = "default_pod_sweep_interval")]
    pub sweep_interval_seconds: u64,
    /// Most pods looked up in one sweep (the next sweep goes on from there).
    #[serde(default = "default_pod_sweep_batch")]
    pub sweep_batch: usize,
}

fn default_pod_lookup_timeout() -> u64 {
    2_000
}
fn default_pod_sweep_interval() -> u64 {
    300
}
fn default_pod_sweep_batch() -> usize {
    100
}

impl PodLookupConfig {
    fn check(&self) -> Result<(), String> {
        match (self.in_cluster, &self.api_server) {
            (true, Some(_)) => {
                return Err(
                    "field `gate.pod_lookup`: give `in_cluster: true` or `api_server`, not both"
                        .into(),
                );
            }
            (false, None) => {
                return Err(
                    "field `gate.pod_lookup`: give `in_cluster: true` (the broker's service \
                     account) or `api_server` with `token_file`"
                        .into(),
                );
            }
            (true, None) => {
                if self.ca_file.is_some() || self.token_file.is_some() {
                    return Err(
                        "field `gate.pod_lookup`: `ca_file` and `token_file` go with \
                                `api_server`; in the cluster the service account's are used"
                            .into(),
                    );
                }
            }
            (false, Some(url)) => {
                let parsed = reqwest::Url::parse(url).map_err(|e| {
                    format!("field `gate.pod_lookup.api_server`: not a valid URL ({e})")
                })?;
                if parsed.scheme() != "https" || parsed.host_str().is_none() {
                    return Err(
                        "field `gate.pod_lookup.api_server`: give the API server's https:// URL"
                            .into(),
                    );
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(
                        "field `gate.pod_lookup.api_server`: no credentials in the URL; use \
                         `token_file`"
                            .into(),
                    );
                }
                if self.token_file.is_none() {
                    return Err(
                        "field `gate.pod_lookup.token_file`: required with `api_server`".into(),
                    );
                }
            }
        }
        if !(100..=10_000).contains(&self.timeout_ms) {
            return Err(format!(
                "field `gate.pod_lookup.timeout_ms`: {} is outside 100 to 10000",
                self.timeout_ms
            ));
        }
        if !(10..=86_400).contains(&self.sweep_interval_seconds) {
            return Err(format!(
                "field `gate.pod_lookup.sweep_interval_seconds`: {} is outside 10 to 86400",
                self.sweep_interval_seconds
            ));
        }
        if !(1..=10_000).contains(&self.sweep_batch) {
            return Err(format!(
                "field `gate.pod_lookup.sweep_batch`: {} is outside 1 to 10000",
                self.sweep_batch
            ));
        }
        Ok(())
    }
}

impl GateConfig {
    fn check(&self) -> Result<(), String> {
        if self.scan_deadline_seconds == 0 || self.scan_deadline_seconds > 300 {
            return Err(format!(
                "field `gate.scan_deadline_seconds`: {} is outside 1 to 300",
                self.scan_deadline_seconds
            ));
        }
        if self.max_concurrent_scans == 0 || self.max_concurrent_scans > 64 {
            return Err(format!(
                "field `gate.max_concurrent_scans`: {} is outside 1 to 64",
                self.max_concurrent_scans
            ));
        }
        if self.scan_timeout_seconds < self.scan_deadline_seconds {
            return Err(
                "field `gate.scan_timeout_seconds`: below `gate.scan_deadline_seconds`".into(),
            );
        }
        for (i, p) in self.platforms.iter().enumerate() {
            let parts = p.split('/').count();
            if !(2..=3).contains(&parts) || p.split('/').any(str::is_empty) {
                return Err(format!(
                    "field `gate.platforms[{i}]`: `{p}` is not OS/ARCH[/VARIANT] (e.g. linux/amd64)"
                ));
            }
        }
        if self.admission.deadline_ms == 0 || self.admission.deadline_ms > 29_000 {
            return Err(format!(
                "field `gate.admission.deadline_ms`: {} is outside 1 to 29000 (the API server \
                 waits at most 30 s for a webhook)",
                self.admission.deadline_ms
            ));
        }
        for (i, r) in self.registries.iter().enumerate() {
            let at = format!("field `gate.registries[{i}]`");
            if r.host.is_empty() || r.host.contains('/') {
                return Err(format!(
                    "field `gate.registries[{i}].host`: give HOST[:PORT], without a scheme or path"
                ));
            }
            match (&r.username, &r.password_file, &r.token_file) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "{at} ({}): give `username` with `password_file`, or `token_file` alone",
                        r.host
                    ));
                }
            }
            if self.registries[..i]
                .iter()
                .any(|o| o.host.eq_ignore_ascii_case(&r.host))
            {
                return Err(format!("{at}: host `{}` is listed twice", r.host));
            }
        }
        self.admission.check()?;
        if let Some(p) = &self.pod_lookup {
            p.check()?;
        }
        Ok(())
    }
}

fn default_scan_deadline() -> u64 {
    20
}
fn default_max_scans() -> usize {
    2
}
fn default_scan_timeout() -> u64 {
    600
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            mode: GateMode::default(),
            unscanned: Unscanned::default(),
            unknown_workload: UnknownWorkload::default(),
            scan_deadline_seconds: default_scan_deadline(),
            max_concurrent_scans: default_max_scans(),
            scan_timeout_seconds: default_scan_timeout(),
            platforms: Vec::new(),
            allowlist_file: None,
            registries: Vec::new(),
            insecure_loopback_registries: false,
            pod_tokens: PodTokens::default(),
            admission: AdmissionConfig::default(),
            pod_lookup: None,
        }
    }
}

/// Credentials for one registry host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// `host[:port]` as in image references.
    pub host: String,
    /// User name for HTTP basic (and the registry's token flow); with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password or access token for `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token sent as is (instead of `username`/`password_file`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_reload_interval() -> u64 {
    5
}

/// Server TLS: PEM files, reloaded when they change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// CA for admin client certificates (mTLS). When set, clients presenting a certificate
    /// signed by it are admins.
    #[serde(default)]
    pub admin_client_ca_file: Option<PathBuf>,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JwksSource {
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    /// A JWKS URL.
    Url(String),
    /// A JWKS file on disk (re-read when it changes).
    File(PathBuf),
}

/// Signature algorithms the broker accepts. `none` and HMAC are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The algorithms a JWT-SVID may be signed with (SPIFFE JWT-SVID, section 3): RS, ES and
    /// PS at 256, 384 and 512 bits — the default of a `spiffe_trust_domain` issuer.
    pub const JWT_SVID: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
}

// --- SPIFFE trust domains and claim types (issue 16) ---

/// The JSON type of a claim, as an issuer sends it (`issuers[].claim_types`), so that
/// `policy check` can warn about a selector that cannot match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimType {
    /// A JSON string (GitHub and GitLab send `"true"` and numbers as strings).
    String,
    /// A JSON `true`/`false`.
    Boolean,
    /// A JSON number.
    Number,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
}

impl ClaimType {
    /// The JSON type of `v` (`None` for `null`).
    pub fn of(v: &serde_json::Value) -> Option<Self> {
        use serde_json::Value as J;
        match v {
            J::Null => None,
            J::Bool(_) => Some(Self::Boolean),
            J::Number(_) => Some(Self::Number),
            J::String(_) => Some(Self::String),
            J::Array(_) => Some(Self::Array),
            J::Object(_) => Some(Self::Object),
        }
    }

    /// Stable name (`string`, `boolean`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Boolean => "boolean",
            Self::Number => "number",
            Self::Array => "array",
            Self::Object => "object",
        }
    }
}

/// A known issuer's claim set (`issuers[].claim_profile`), as its documentation publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimProfile {
    /// GitHub Actions (`https://token.actions.githubusercontent.com`).
    Github,
    /// GitLab CI/CD ID tokens (`https://gitlab.com` or a self-managed instance).
    Gitlab,
}

/// GitHub Actions' custom claims: every one is a JSON string (`ref_protected` is `"true"`,
/// `run_id` is `"22259804324"`), per GitHub's OIDC reference.
const GITHUB_CLAIMS: &[&str] = &[
    "actor",
    "actor_id",
    "base_ref",
    "check_run_id",
    "enterprise",
    "enterprise_id",
    "environment",
    "environment_node_id",
    "event_name",
    "head_ref",
    "job_workflow_ref",
    "job_workflow_sha",
    "ref",
    "ref_protected",
    "ref_type",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "repository_visibility",
    "run_attempt",
    "run_id",
    "run_number",
    "runner_environment",
    "sha",
    "workflow",
    "workflow_ref",
    "workflow_sha",
];

/// GitLab CI/CD ID tokens' custom claims and their JSON types, per GitLab's ID token
/// documentation: strings (ids and `ref_protected`/`environment_protected` too) except
/// `runner_id` (a number) and `groups_direct` (an array).
const GITLAB_CLAIMS: &[(&str, ClaimType)] = &[
    ("ci_config_ref_uri", ClaimType::String),
    ("ci_config_sha", ClaimType::String),
    ("deployment_tier", ClaimType::String),
    ("environment", ClaimType::String),
    ("environment_action", ClaimType::String),
    ("environment_protected", ClaimType::String),
    ("groups_direct", ClaimType::Array),
    ("job_id", ClaimType::String),
    ("namespace_id", ClaimType::String),
    ("namespace_path", ClaimType::String),
    ("pipeline_id", ClaimType::String),
    ("pipeline_source", ClaimType::String),
    ("project_id", ClaimType::String),
    ("project_path", ClaimType::String),
    ("project_visibility", ClaimType::String),
    ("ref", ClaimType::String),
    ("ref_path", ClaimType::String),
    ("ref_protected", ClaimType::String),
    ("ref_type", ClaimType::String),
    ("runner_environment", ClaimType::String),
    ("runner_id", ClaimType::Number),
    ("sha", ClaimType::String),
    ("user_email", ClaimType::String),
    ("user_id", ClaimType::String),
    ("user_identities", ClaimType::Array),
    ("user_login", ClaimType::String),
];

impl ClaimProfile {
    /// The profile of a well-known issuer URL (GitHub Actions, gitlab.com), if it is one.
    pub fn for_issuer(issuer: &str) -> Option<Self> {
        match issuer.trim_end_matches('/') {
            "https://token.actions.githubusercontent.com" => Some(Self::Github),
            "https://gitlab.com" => Some(Self::Gitlab),
            _ => None,
        }
    }

    /// The type the profile's issuer sends claim `name` with; `None` when it does not know
    /// the claim.
    pub fn claim_type(self, name: &str) -> Option<ClaimType> {
        match self {
            Self::Github => GITHUB_CLAIMS.contains(&name).then_some(ClaimType::String),
            Self::Gitlab => GITLAB_CLAIMS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t),
        }
    }

    /// Every claim the profile knows.
    pub fn claims(self) -> Vec<&'static str> {
        match self {
            Self::Github => GITHUB_CLAIMS.to_vec(),
            Self::Gitlab => GITLAB_CLAIMS.iter().map(|(n, _)| *n).collect(),
        }
    }

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
        }
    }
}

impl IssuerConfig {
    /// An issuer with this name and every other field at its default (no audience): for
    /// looking up what a well-known issuer sends, never for verifying.
    pub fn named(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: Vec::new(),
            jwks: default_jwks_source(),
            ca_file: None,
            algorithms: None,
            leeway_seconds: default_leeway(),
            refresh_interval_seconds: default_jwks_refresh(),
            min_refresh_interval_seconds: default_jwks_min_refresh(),
            spiffe_trust_domain: None,
            claim_profile: None,
            claim_types: Default::default(),
        }
    }

    /// The algorithms accepted: `algorithms` as configured, else the default for the kind of
    /// issuer ([`DEFAULT_ALGORITHMS`], or [`Algorithm::JWT_SVID`] for a trust domain).
    pub fn algorithms(&self) -> &[Algorithm] {
        match (&self.algorithms, &self.spiffe_trust_domain) {
            (Some(list), _) => list,
            (None, Some(_)) => &Algorithm::JWT_SVID,
            (None, None) => &DEFAULT_ALGORITHMS,
        }
    }

    /// What this issuer is known to send claim `name` as: `claim_types` first, then
    /// `claim_profile` (or the profile of a well-known issuer URL). `None`: unknown.
    pub fn claim_type(&self, name: &str) -> Option<ClaimType> {
        if let Some(t) = self.claim_types.get(name) {
            return Some(*t);
        }
        self.claim_profile
            .or_else(|| ClaimProfile::for_issuer(&self.issuer))
            .and_then(|p| p.claim_type(name))
    }

    /// Whether the issuer declares its claim set (a profile or `claim_types`), so a claim
    /// it does not list is one it does not send.
    pub fn declares_claims(&self) -> bool {
        !self.claim_types.is_empty()
            || self.claim_profile.is_some()
            || ClaimProfile::for_issuer(&self.issuer).is_some()
    }
}

/// Longest SPIFFE trust domain name accepted (SPIFFE ID spec: 255 bytes).
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Whether `td` is a valid SPIFFE trust domain name: 1 to 255 of lowercase letters, digits,
/// `.`, `-` and `_` (SPIFFE ID, section 2.1).
pub fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_BYTES
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

// --- end SPIFFE trust domains and claim types ---

/// A trusted JWT issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Where the keys come from (default: OIDC discovery).
    #[serde(default = "default_jwks_source")]
    pub jwks: JwksSource,
    /// CA bundle (PEM) for fetching discovery/JWKS over TLS, in addition to system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allowed algorithms; by default RS256, ES256 and EdDSA, or for a
    /// `spiffe_trust_domain` those JWT-SVIDs may use ([`Algorithm::JWT_SVID`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<Algorithm>>,
    /// Clock skew tolerated on `exp`/`nbf`/`iat`, at most [`MAX_LEEWAY_SECONDS`].
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Background JWKS refresh period.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval_seconds: u64,
    /// Minimum gap between refreshes triggered by an unknown `kid`, at least
    /// [`MIN_JWKS_REFRESH_FLOOR_SECONDS`].
    #[serde(default = "default_jwks_min_refresh")]
    pub min_refresh_interval_seconds: u64,
    /// A SPIFFE trust domain (`example.org`): `jwks` is its trust bundle (a file, or the
    /// bundle endpoint URL, `https_web` profile), whose `use: jwt-svid` keys verify
    /// JWT-SVIDs; `sub` must be a SPIFFE ID in this trust domain; a token without `iss` is
    /// verified with this bundle when its `sub` names this trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_trust_domain: Option<String>,
    /// The issuer's published claim set (`github`, `gitlab`), for `policy check`'s type
    /// warnings on claim selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_profile: Option<ClaimProfile>,
    /// The JSON type of each claim the issuer sends (`string`, `boolean`, `number`, `array`,
    /// `object`), for `policy check`'s type warnings; overrides `claim_profile`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claim_types: std::collections::BTreeMap<String, ClaimType>,
}

fn default_jwks_source() -> JwksSource {
    JwksSource::Discovery
}
/// The algorithms of an issuer that lists none (not a SPIFFE trust domain).
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
fn default_leeway() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refresh() -> u64 {
    10
}

/// Bootstrap tokens and the sessions they start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Default redeemable window of a minted token.
    #[serde(default = "default_bootstrap_ttl")]
    pub default_ttl_seconds: u64,
    /// Longest redeemable window a mint may ask for.
    #[serde(default = "default_bootstrap_max_ttl")]
    pub max_ttl_seconds: u64,
    /// Lifetime of each session token returned after redemption.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_seconds: u64,
    /// A session (renewed on each fetch) ends this long after the token was redeemed.
    #[serde(default = "default_session_max")]
    pub session_max_lifetime_seconds: u64,
    /// For this long after a redemption commits, the same token is accepted again as the
    /// same session (a client whose response was lost retries); 0: never. At most
    /// [`MAX_REDEEM_GRACE_SECONDS`].
    #[serde(default = "default_redeem_grace")]
    pub redeem_grace_seconds: u64,
    /// How often the set of revoked sessions is reloaded from the store (replicas sharing a
    /// store see each other's revocations this often).
    #[serde(default = "default_revocation_refresh")]
    pub session_revocation_refresh_seconds: u64,
    /// The staleness bound: a session revoked anywhere is refused everywhere within this
    /// long, and once the revoked set could not be reloaded for this long every session is
    /// refused (503, retryable) until it is. At least twice the refresh interval, at most
    /// [`MAX_SESSION_REVOCATION_STALE_SECONDS`].
    #[serde(default = "default_revocation_max_stale")]
    pub session_revocation_max_stale_seconds: u64,
}

/// Largest `bootstrap.session_revocation_max_stale_seconds`: how long a revoked session may
/// go on working on a replica that cannot read the store.
pub const MAX_SESSION_REVOCATION_STALE_SECONDS: u64 = 600;

/// Largest `bootstrap.redeem_grace_seconds`: the window in which a token seen by someone else
/// after its redemption still buys its session.
pub const MAX_REDEEM_GRACE_SECONDS: u64 = 300;

fn default_bootstrap_ttl() -> u64 {
    600
}
fn default_bootstrap_max_ttl() -> u64 {
    86_400
}
fn default_session_ttl() -> u64 {
    3_600
}
fn default_session_max() -> u64 {
    86_400
}
fn default_redeem_grace() -> u64 {
    30
}
fn default_revocation_refresh() -> u64 {
    5
}
fn default_revocation_max_stale() -> u64 {
    30
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            default_ttl_seconds: default_bootstrap_ttl(),
            max_ttl_seconds: default_bootstrap_max_ttl(),
            session_ttl_seconds: default_session_ttl(),
            session_max_lifetime_seconds: default_session_max(),
            redeem_grace_seconds: default_redeem_grace(),
            session_revocation_refresh_seconds: default_revocation_refresh(),
            session_revocation_max_stale_seconds: default_revocation_max_stale(),
        }
    }
}

impl BootstrapConfig {
    /// Checks the session revocation interval and bound against each other.
    fn check_revocation(&self) -> Result<(), String> {
        let refresh = self.session_revocation_refresh_seconds;
        let bound = self.session_revocation_max_stale_seconds;
        if refresh == 0 {
            return Err(
                "field `bootstrap.session_revocation_refresh_seconds`: must be at least 1".into(),
            );
        }
        if bound < refresh.saturating_mul(2) {
            return Err(format!(
                "field `bootstrap.session_revocation_max_stale_seconds`: {bound} is less than twice                  `bootstrap.session_revocation_refresh_seconds` ({refresh}), so one slow refresh would                  refuse every session; raise it to at least {}",
                refresh.saturating_mul(2)
            ));
        }
        if bound > MAX_SESSION_REVOCATION_STALE_SECONDS {
            return Err(format!(
                "field `bootstrap.session_revocation_max_stale_seconds`: {bound} is above the maximum                  {MAX_SESSION_REVOCATION_STALE_SECONDS} (a revoked session works that long on a replica                  that cannot read the store)"
            ));
        }
        Ok(())
    }
}

/// The admin API's credential.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the admin bearer token (re-read when it changes).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Persistent state: exactly one of `sqlite_path` (the embedded default, one broker or
/// replicas on one host) or `postgres_url` / `postgres_url_file` (replicas anywhere).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (created if missing).
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL URL, `postgres://user:password@host:port/database?sslmode=verify-full`.
    /// Holds a password: a [`lanyard::Secret`], never logged (messages show it without the
    /// password). Prefer `postgres_url_file`.
    #[serde(default)]
    pub postgres_url: Option<lanyard::Secret>,
    /// File holding the PostgreSQL URL (read at start; surrounding whitespace ignored).
    #[serde(default)]
    pub postgres_url_file: Option<PathBuf>,
    /// PEM CA certificates the PostgreSQL server's certificate must chain to (TLS).
    #[serde(default)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Most connections to PostgreSQL this broker holds open.
    #[serde(default = "default_postgres_pool_size")]
    pub postgres_pool_size: usize,
    /// How long connecting to PostgreSQL, or waiting for a free pooled connection, may take
    /// before the request gets a retryable 503.
    #[serde(default = "default_postgres_connect_timeout")]
    pub postgres_connect_timeout_seconds: u64,
}

/// Largest `store.postgres_pool_size`.
pub const MAX_POSTGRES_POOL_SIZE: usize = 1_000;

/// Largest `store.postgres_connect_timeout_seconds`.
pub const MAX_POSTGRES_CONNECT_TIMEOUT_SECONDS: u64 = 120;

/// Default `store.postgres_pool_size`.
pub const DEFAULT_POSTGRES_POOL_SIZE: usize = 16;

/// Default `store.postgres_connect_timeout_seconds`.
pub const DEFAULT_POSTGRES_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A PostgreSQL URL with any password and query removed, for messages and `Debug`;
/// `postgres://? (not a valid URL)` when it does not parse.
pub fn redacted_postgres_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "postgres://? (not a valid URL)".to_owned(),
    }
}

fn default_postgres_pool_size() -> usize {
    DEFAULT_POSTGRES_POOL_SIZE
}

fn default_postgres_connect_timeout() -> u64 {
    DEFAULT_POSTGRES_CONNECT_TIMEOUT.as_secs()
}

/// Which store a [`StoreConfig`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// SQLite at this path.
    Sqlite(PathBuf),
    /// PostgreSQL (URL given inline or in a file).
    Postgres,
}

impl StoreConfig {
    /// A store on the SQLite file `path`, the PostgreSQL keys at their defaults.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self {
            sqlite_path: Some(path.into()),
            postgres_url: None,
            postgres_url_file: None,
            postgres_ca_file: None,
            postgres_pool_size: default_postgres_pool_size(),
            postgres_connect_timeout_seconds: default_postgres_connect_timeout(),
        }
    }

    /// Which store is configured; an error naming the keys unless exactly one is.
    pub fn choice(&self) -> Result<StoreChoice, String> {
        match (
            &self.sqlite_path,
            self.postgres_url.is_some(),
            self.postgres_url_file.is_some(),
        ) {
            (Some(p), false, false) => Ok(StoreChoice::Sqlite(p.clone())),
            (None, true, false) | (None, false, true) => Ok(StoreChoice::Postgres),
            (None, false, false) => Err("section `store`: set `sqlite_path` (one broker, or \
                 replicas on one host) or `postgres_url_file` / `postgres_url` (replicas)"
                .into()),
            _ => Err(
                "section `store`: set only one of `sqlite_path`, `postgres_url` and \
                 `postgres_url_file`"
                    .into(),
            ),
        }
    }

    /// Checks the keys: one store named, PostgreSQL settings in range and only with it.
    pub fn check(&self) -> Result<(), String> {
        let choice = self.choice()?;
        if matches!(choice, StoreChoice::Sqlite(_)) && self.postgres_ca_file.is_some() {
            return Err("field `store.postgres_ca_file`: set without a PostgreSQL store".into());
        }
        if !(1..=MAX_POSTGRES_POOL_SIZE).contains(&self.postgres_pool_size) {
            return Err(format!(
                "field `store.postgres_pool_size`: {} is out of range (1 to \
                 {MAX_POSTGRES_POOL_SIZE}); PostgreSQL's max_connections is shared by every \
                 replica",
                self.postgres_pool_size
            ));
        }
        if !(1..=MAX_POSTGRES_CONNECT_TIMEOUT_SECONDS)
            .contains(&self.postgres_connect_timeout_seconds)
        {
            return Err(format!(
                "field `store.postgres_connect_timeout_seconds`: {} is out of range (1 to \
                 {MAX_POSTGRES_CONNECT_TIMEOUT_SECONDS})",
                self.postgres_connect_timeout_seconds
            ));
        }
        Ok(())
    }

    /// The store for messages: the SQLite path, or the PostgreSQL URL without its password
    /// (or the file holding it).
    pub fn describe(&self) -> String {
        match (
            &self.sqlite_path,
            &self.postgres_url,
            &self.postgres_url_file,
        ) {
            (Some(p), _, _) => p.display().to_string(),
            (None, Some(url), _) => redacted_postgres_url(url.expose()),
            (None, None, Some(f)) => format!("the PostgreSQL URL in {}", f.display()),
            (None, None, None) => "no store".to_owned(),
        }
    }
}

/// Where audit records go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout`, a file path (appended to: segment 0 of the log), or `store`: the records
    /// in the PostgreSQL store, one chain per broker process (for replicas).
    #[serde(default = "default_audit_sink")]
    pub sink: String,
    /// A file sink starts a new segment (`<sink>.000001`, ...) once one reaches this size;
    /// 0 never rotates. At least [`MIN_AUDIT_SEGMENT_BYTES`] otherwise.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// How many failed authentications each client source gets recorded in full.
    #[serde(default)]
    pub auth_failures: AuthFailureLimits,
}

/// The smallest `audit.segment_max_bytes` (other than 0): two of the longest lines.
pub const MIN_AUDIT_SEGMENT_BYTES: u64 = 128 * 1024;

fn default_audit_sink() -> String {
    "stdout".into()
}

fn default_segment_max_bytes() -> u64 {
    256 * 1024 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: default_audit_sink(),
            segment_max_bytes: default_segment_max_bytes(),
            auth_failures: AuthFailureLimits::default(),
        }
    }
}

/// Failed authentications recorded per source (an IPv4 address or an IPv6 /64) and window:
/// the first `records_per_window` in full, the rest as one summary record per source and
/// window (see `audit::flood`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFailureLimits {
    /// Failures recorded in full per source per window (at least 1).
    #[serde(default = "default_auth_failure_records")]
    pub records_per_window: u32,
    /// The window, in seconds (at least 1).
    #[serde(default = "default_auth_failure_window")]
    pub window_seconds: u64,
    /// Sources tracked at once (at least 1); failures from further sources share one slot.
    #[serde(default = "default_auth_failure_sources")]
    pub max_sources: usize,
}

fn default_auth_failure_records() -> u32 {
    10
}

fn default_auth_failure_window() -> u64 {
    60
}

fn default_auth_failure_sources() -> usize {
    4096
}

impl Default for AuthFailureLimits {
    fn default() -> Self {
        Self {
            records_per_window: default_auth_failure_records(),
            window_seconds: default_auth_failure_window(),
            max_sources: default_auth_failure_sources(),
        }
    }
}

/// How long relying parties may cache the broker's JWKS, in seconds: the `max-age` of
/// `GET /v1/jwks`, and the floor of [`SigningConfig::publish_ahead_seconds`]. The one place
/// this number lives, so the header and the check cannot drift apart.
pub const JWKS_MAX_AGE_SECONDS: u64 = 300;

/// Signing keys for broker-issued JWTs.
///
/// A key is published (in the JWKS) `publish_ahead_seconds` before it starts signing, signs
/// for `rotate_after_seconds`, then stays published `overlap_seconds` after its successor
/// takes over, so a relying party never meets a `kid` its cached JWKS lacks and every token
/// verifies until it expires. [`SigningConfig::validate`] holds these bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// `ES256` or `EdDSA`.
    #[serde(default = "default_signing_alg")]
    pub algorithm: Algorithm,
    /// How long each key signs: the next key is created `publish_ahead_seconds` before the
    /// current one has signed this long.
    #[serde(default = "default_rotate")]
    pub rotate_after_seconds: u64,
    /// How long a new key is published before it signs: at least [`JWKS_MAX_AGE_SECONDS`]
    /// plus `reload_interval_seconds` (the time other replicas sharing the store take to
    /// load it).
    #[serde(default = "default_publish_ahead")]
    pub publish_ahead_seconds: u64,
    /// Old keys stay published (for verification) this long after a newer key takes over.
    /// At least the longest lifetime of a token the broker signs (a role's
    /// `max_ttl_seconds` can reach [`MAX_TTL_SECONDS`]; a session token
    /// lives `bootstrap.session_ttl_seconds`).
    #[serde(default = "default_overlap")]
    pub overlap_seconds: u64,
    /// A key-encryption key (base64 of 32 random bytes): the signing keys' private halves
    /// are stored sealed under it (`issue::kek`). None: stored in the clear.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// KEKs that open keys sealed under them but never seal (a KEK rotation: see
    /// docs/OPERATIONS.md); keys found under one are sealed again under `kek_file` at start.
    #[serde(default)]
    pub other_kek_files: Vec<PathBuf>,
}

fn default_signing_alg() -> Algorithm {
    Algorithm::ES256
}
fn default_rotate() -> u64 {
    86_400
}
fn default_publish_ahead() -> u64 {
    3_600
}
fn default_overlap() -> u64 {
    2 * 86_400
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            algorithm: default_signing_alg(),
            rotate_after_seconds: default_rotate(),
            publish_ahead_seconds: default_publish_ahead(),
            overlap_seconds: default_overlap(),
            kek_file: None,
            other_kek_files: Vec::new(),
        }
    }
}

impl SigningConfig {
    /// Checks the rotation schedule against how long relying parties cache the JWKS
    /// ([`JWKS_MAX_AGE_SECONDS`]), how long replicas take to see a new key
    /// (`reload_interval_seconds`) and the longest token lifetime the broker signs
    /// (`longest_token_seconds`). The error names the field and the value that would do.
    pub fn validate(
        &self,
        reload_interval_seconds: u64,
        longest_token_seconds: u64,
    ) -> Result<(), String> {
        if !matches!(self.algorithm, Algorithm::ES256 | Algorithm::EdDSA) {
            return Err("field `signing.algorithm`: must be ES256 or EdDSA".into());
        }
        let min_ahead = JWKS_MAX_AGE_SECONDS.saturating_add(reload_interval_seconds);
        if self.publish_ahead_seconds < min_ahead {
            return Err(format!(
                "field `signing.publish_ahead_seconds`: {} is too short; relying parties cache the JWKS for {JWKS_MAX_AGE_SECONDS} s \
                 and other replicas load a new key within `reload_interval_seconds` ({reload_interval_seconds} s), so a key \
                 signing sooner could reach a verifier that does not know it yet; set it to at least {min_ahead}",
                self.publish_ahead_seconds
            ));
        }
        if self.rotate_after_seconds < self.publish_ahead_seconds {
            return Err(format!(
                "field `signing.rotate_after_seconds`: {} is shorter than `signing.publish_ahead_seconds` ({}); \
                 each key is published that long before it signs, so keys cannot rotate faster; \
                 raise `rotate_after_seconds` or lower `publish_ahead_seconds`",
                self.rotate_after_seconds, self.publish_ahead_seconds
            ));
        }
        if self.overlap_seconds < longest_token_seconds {
            return Err(format!(
                "field `signing.overlap_seconds`: {} is shorter than the longest token the broker signs \
                 ({longest_token_seconds} s: the larger of the longest `max_ttl_seconds` a role may have and \
                 `bootstrap.session_ttl_seconds`); a token signed just before a rotation would outlive its key \
                 in the JWKS; set it to at least {longest_token_seconds}",
                self.overlap_seconds
            ));
        }
        Ok(())
    }
}

/// Bounds on untrusted input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body.
    #[serde(default = "default_body")]
    pub max_request_body_bytes: usize,
    /// Largest bearer credential (JWT) accepted before parsing.
    #[serde(default = "default_token")]
    pub max_token_bytes: usize,
    /// Largest JWKS or discovery document fetched.
    #[serde(default = "default_jwks_bytes")]
    pub max_jwks_bytes: usize,
}

fn default_body() -> usize {
    lanyard::wire::MAX_REQUEST_BODY_BYTES
}
fn default_token() -> usize {
    16 * 1024
}
fn default_jwks_bytes() -> usize {
    256 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: default_body(),
            max_token_bytes: default_token(),
            max_jwks_bytes: default_jwks_bytes(),
        }
    }
}

/// How long each phase of a connection may take, and how many connections are served at once.
/// Every deadline is in milliseconds and at least 1; none can be switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Connections held at once (from accept to close, TLS handshake included). At the cap
    /// the broker stops accepting until one closes; new clients wait in the kernel's accept
    /// queue. Keep it below the open-files limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// From accept to a finished TLS handshake.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// From the handshake (or the previous response, on HTTP/1 keep-alive) to a complete
    /// request head.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// From the request head to the last byte of its body; a slower body gets 408.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// From the request head to the response; a slower request gets 503 (the work already
    /// started still finishes, and its answer is dropped).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// HTTP/2: a PING is sent when nothing was received for this long.
    #[serde(default = "default_h2_keep_alive_interval")]
    pub http2_keep_alive_interval_ms: u64,
    /// HTTP/2: a PING not acknowledged within this closes the connection.
    #[serde(default = "default_h2_keep_alive_timeout")]
    pub http2_keep_alive_timeout_ms: u64,
}

fn default_max_connections() -> u32 {
    4_096
}
fn default_tls_handshake_timeout() -> u64 {
    10_000
}
fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_body_read_timeout() -> u64 {
    10_000
}
fn default_request_timeout() -> u64 {
    30_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_h2_keep_alive_interval() -> u64 {
    20_000
}
fn default_h2_keep_alive_timeout() -> u64 {
    10_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            tls_handshake_timeout_ms: default_tls_handshake_timeout(),
            header_read_timeout_ms: default_header_read_timeout(),
            body_read_timeout_ms: default_body_read_timeout(),
            request_timeout_ms: default_request_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            http2_keep_alive_interval_ms: default_h2_keep_alive_interval(),
            http2_keep_alive_timeout_ms: default_h2_keep_alive_timeout(),
        }
    }
}

impl ServerConfig {
    /// Checks the section; the error names the field.
    fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("field `server.max_connections`: must be at least 1".into());
        }
        for (field, ms) in [
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            (
                "http2_keep_alive_interval_ms",
                self.http2_keep_alive_interval_ms,
            ),
            (
                "http2_keep_alive_timeout_ms",
                self.http2_keep_alive_timeout_ms,
            ),
        ] {
            if ms == 0 {
                return Err(format!(
                    "field `server.{field}`: must be at least 1 (deadlines cannot be switched off)"
                ));
            }
        }
        if self.body_read_timeout_ms > self.request_timeout_ms {
            return Err(format!(
                "field `server.body_read_timeout_ms`: {} is above `server.request_timeout_ms` ({}); a slow body would get 503 instead of 408",
                self.body_read_timeout_ms, self.request_timeout_ms
            ));
        }
        Ok(())
    }
}

/// Upstream credential backends. Each is registered only when configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// How many broker replicas share the upstreams: each applies `1/replicas` of every
    /// backend's `max_concurrency` and `max_requests_per_second` (rounded up, at least 1), so
    /// the replicas together stay within the configured figures. 1: one broker.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The `aws-sts` backend.
    #[serde(default)]
    pub aws_sts: Option<AwsStsConfig>,
    /// The `vault` backend.
    #[serde(default)]
    pub vault: Option<VaultConfig>,
}

fn default_replicas() -> u32 {
    1
}

/// Most `backends.replicas`.
pub const MAX_REPLICAS: u32 = 1000;

impl Default for BackendsConfig {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            aws_sts: None,
            vault: None,
        }
    }
}

impl BackendsConfig {
    /// The backends as one of `replicas` applies them: the concurrency and rate limits
    /// divided by [`BackendsConfig::replicas`] ([`UpstreamLimits::share`]).
    pub fn per_replica(&self) -> Self {
        let mut c = self.clone();
        let n = self.replicas;
        if let Some(s) = c.aws_sts.as_mut() {
            let l = s.limits().share(n);
            (s.max_concurrency, s.max_requests_per_second) =
                (l.max_concurrency, l.max_requests_per_second);
        }
        if let Some(v) = c.vault.as_mut() {
            let l = v.limits().share(n);
            (v.max_concurrency, v.max_requests_per_second) =
                (l.max_concurrency, l.max_requests_per_second);
        }
        c
    }
}

/// Limits and caching shared by the upstream backends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamLimits {
    /// Upstream calls in flight at once; more wait up to `max_queue_wait_ms`, then get 503.
    pub max_concurrency: usize,
    /// Upstream calls started per second (token bucket, burst of the same size); more get 503.
    pub max_requests_per_second: u32,
    /// How long a call waits for a concurrency slot before 503.
    pub max_queue_wait_ms: u64,
    /// Fraction of a cached credential's lifetime during which it is reused (0 disables
    /// reuse; coalescing of identical concurrent requests still applies).
    pub cache_refresh_fraction: f64,
    /// Timeout of one upstream call.
    pub request_timeout_seconds: u64,
}

impl UpstreamLimits {
    /// One replica's share of limits `replicas` brokers apply together: the concurrency and
    /// the rate divided by `replicas`, rounded up and at least 1 (so the replicas together
    /// may exceed the figure by less than one call each); the rest unchanged.
    pub fn share(self, replicas: u32) -> Self {
        let n = replicas.max(1);
        Self {
            max_concurrency: self.max_concurrency.div_ceil(n as usize).max(1),
            max_requests_per_second: self.max_requests_per_second.div_ceil(n).max(1),
            ..self
        }
    }
}

/// The `aws-sts` backend: AssumeRole with the broker's own AWS credentials (standard chain:
/// environment, web identity, profile, container, instance metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsStsConfig {
    /// AWS region of the STS endpoint.
    #[serde(default = "default_aws_region")]
    pub region: String,
    /// STS endpoint override (a regional or VPC endpoint; tests point it at moto).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Accept a plain `http://` `endpoint_url` to a non-loopback host (credentials would
    /// cross the network unencrypted). Plain http to loopback is always accepted.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Prefix of every `RoleSessionName` (`<prefix>-<role>`).
    #[serde(default = "default_session_prefix")]
    pub role_session_prefix: String,
    /// See [`UpstreamLimits::max_concurrency`].
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// See [`UpstreamLimits::max_requests_per_second`].
    #[serde(default = "default_max_rps")]
    pub max_requests_per_second: u32,
    /// See [`UpstreamLimits::max_queue_wait_ms`].
    #[serde(default = "default_queue_wait")]
    pub max_queue_wait_ms: u64,
    /// See [`UpstreamLimits::cache_refresh_fraction`].
    #[serde(default = "default_refresh_fraction")]
    pub cache_refresh_fraction: f64,
    /// See [`UpstreamLimits::request_timeout_seconds`].
    #[serde(default = "default_upstream_timeout")]
    pub request_timeout_seconds: u64,
}

impl AwsStsConfig {
    /// The limits section.
    pub fn limits(&self) -> UpstreamLimits {
        UpstreamLimits {
            max_concurrency: self.max_concurrency,
            max_requests_per_second: self.max_requests_per_second,
            max_queue_wait_ms: self.max_queue_wait_ms,
            cache_refresh_fraction: self.cache_refresh_fraction,
            request_timeout_seconds: self.request_timeout_seconds,
        }
    }
}

/// How the broker authenticates to Vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token read from a file (re-read when it changes); renewed while renewable.
    Token {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// AppRole login.
    Approle {
        /// The role id (not secret).
        role_id: String,
        /// File holding the secret id.
        secret_id_file: PathBuf,
        /// Auth mount.
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
    /// Kubernetes auth with the broker's own service-account token.
    Kubernetes {
        /// The Vault role.
        role: String,
        /// The service-account token file (re-read at each login).
        #[serde(default = "default_k8s_jwt_file")]
        jwt_file: PathBuf,
        /// Auth mount.
        #[serde(default = "default_k8s_mount")]
        mount: String,
    },
    /// JWT auth (Vault's `jwt` method) with a token from a file, e.g. one the platform
    /// projects for the broker (re-read at each login).
    Jwt {
        /// The Vault role.
        role: String,
        /// File holding the JWT.
        jwt_file: PathBuf,
        /// Auth mount.
        #[serde(default = "default_jwt_mount")]
        mount: String,
    },
}

/// The `vault` backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Vault's address, e.g. `https://vault.vault.svc:8200`.
    pub address: String,
    /// Accept a plain `http://` `address` to a non-loopback host (tokens and secrets would
    /// cross the network unencrypted). Plain http to loopback is always accepted.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// CA bundle (PEM) for Vault's certificate, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How the broker logs in.
    pub auth: VaultAuth,
    /// Revoke a Vault lease upstream when the broker's lease for it expires.
    #[serde(default = "default_true")]
    pub revoke_on_expiry: bool,
    /// Keep renewing a renewable Vault lease (dynamic secrets) that is shorter than the TTL
    /// granted, so the credential lives that TTL (see `issue::renewal`; on by default: the
    /// leases are kept in the store, a restarted broker takes them up, and on PostgreSQL one
    /// replica at a time renews every replica's leases); off: the credential lives as long
    /// as Vault's first lease.
    #[serde(default = "default_true")]
    pub renew_leases: bool,
    /// See [`UpstreamLimits::max_concurrency`].
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// See [`UpstreamLimits::max_requests_per_second`].
    #[serde(default = "default_max_rps")]
    pub max_requests_per_second: u32,
    /// See [`UpstreamLimits::max_queue_wait_ms`].
    #[serde(default = "default_queue_wait")]
    pub max_queue_wait_ms: u64,
    /// See [`UpstreamLimits::cache_refresh_fraction`] (applies to `kv2` roles only).
    #[serde(default = "default_refresh_fraction")]
    pub cache_refresh_fraction: f64,
    /// See [`UpstreamLimits::request_timeout_seconds`].
    #[serde(default = "default_upstream_timeout")]
    pub request_timeout_seconds: u64,
}

impl VaultConfig {
    /// The limits section.
    pub fn limits(&self) -> UpstreamLimits {
        UpstreamLimits {
            max_concurrency: self.max_concurrency,
            max_requests_per_second: self.max_requests_per_second,
            max_queue_wait_ms: self.max_queue_wait_ms,
            cache_refresh_fraction: self.cache_refresh_fraction,
            request_timeout_seconds: self.request_timeout_seconds,
        }
    }
}

fn default_aws_region() -> String {
    "us-east-1".into()
}
fn default_session_prefix() -> String {
    "lanyard".into()
}
fn default_max_concurrency() -> usize {
    16
}
fn default_max_rps() -> u32 {
    50
}
fn default_queue_wait() -> u64 {
    2_000
}
fn default_refresh_fraction() -> f64 {
    0.5
}
fn default_upstream_timeout() -> u64 {
    10
}
fn default_true() -> bool {
    true
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_k8s_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_k8s_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

/// Checks the URL of an upstream (`field` names it, `section` is its backend's section):
/// `https`, or plain `http` to a loopback host (127.0.0.0/8, ::1, `localhost`), or plain
/// `http` to any host when the section sets `allow_insecure_http`. The error names the host,
/// never the whole URL (which could carry user info).
fn check_upstream_url(
    section: &str,
    field: &str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("field `{section}.{field}`: not a valid URL ({e})"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback_host(&parsed) => Ok(()),
        "http" => Err(format!(
            "field `{section}.{field}`: plain http to the non-loopback host `{}` would send \
             credentials unencrypted; use https, or set `{section}.allow_insecure_http: true` \
             if that network is trusted (plain http is always allowed to 127.0.0.0/8, ::1 and \
             localhost)",
            parsed.host_str().unwrap_or("")
        )),
        other => Err(format!(
            "field `{section}.{field}`: scheme `{other}` is not http(s)"
        )),
    }
}

/// Whether `url`'s host is a loopback address or `localhost` (issuer URLs and backend
/// endpoints may use plain `http` only there).
pub(crate) fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

fn check_limits(field: &str, l: &UpstreamLimits) -> Result<(), String> {
    if l.max_concurrency == 0 {
        return Err(format!(
            "field `{field}.max_concurrency`: must be at least 1"
        ));
    }
    if l.max_requests_per_second == 0 {
        return Err(format!(
            "field `{field}.max_requests_per_second`: must be at least 1"
        ));
    }
    if !(0.0..1.0).contains(&l.cache_refresh_fraction) {
        return Err(format!(
            "field `{field}.cache_refresh_fraction`: {} must be in [0, 1) (0.5 reuses a credential for the first half of its life)",
            l.cache_refresh_fraction
        ));
    }
    if l.request_timeout_seconds == 0 {
        return Err(format!(
            "field `{field}.request_timeout_seconds`: must be at least 1"
        ));
    }
    Ok(())
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration in {file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, naming the field.
    pub message: String,
}

impl BrokerConfig {
    /// Loads `file` (format by extension: `.yaml`/`.yml`, `.toml`, `.json`) with `LANYARD_*`
    /// environment overrides from `env`, then checks cross-field rules. Relative paths in the
    /// file are resolved against the file's directory.
    pub fn load(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_path_buf(),
            message,
        };
        if !file.is_file() {
            return Err(err("file not found or not a regular file".into()));
        }
        // Only variables naming a configuration key: `LANYARD_LOG`, `LANYARD_CONFIG` and the
        // client variables (`LANYARD_BROKER_URL`, ...) belong to the command line.
        let env_map: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("LANYARD_").is_some_and(|rest| {
                    let top = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
                    CONFIG_KEYS.contains(&top.as_str())
                })
            })
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from(file))
            .add_source(
                config::Environment::with_prefix("LANYARD")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env_map)),
            )
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut cfg: BrokerConfig = built.try_deserialize().map_err(|e| err(e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.cert_file);
        fix(&mut self.tls.key_file);
        if let Some(p) = self.tls.admin_client_ca_file.as_mut() {
            fix(p);
        }
        fix(&mut self.policies_dir);
        for p in [
            self.store.sqlite_path.as_mut(),
            self.store.postgres_url_file.as_mut(),
            self.store.postgres_ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(p) = self.admin.token_file.as_mut() {
            fix(p);
        }
        for p in self
            .signing
            .kek_file
            .iter_mut()
            .chain(self.signing.other_kek_files.iter_mut())
        {
            fix(p);
        }
        if let Some(p) = self.gate.allowlist_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.inject.as_mut().and_then(|i| i.ca_file.as_mut()) {
            fix(p);
        }
        for p in [
            self.gate.admission.client_ca_file.as_mut(),
            self.gate.admission.token_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        for r in &mut self.gate.registries {
            for p in [r.password_file.as_mut(), r.token_file.as_mut()]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if let Some(l) = self.gate.pod_lookup.as_mut() {
            for p in [l.ca_file.as_mut(), l.token_file.as_mut()]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if self.audit.sink != "stdout" && self.audit.sink != "store" {
            let mut p = PathBuf::from(&self.audit.sink);
            fix(&mut p);
            self.audit.sink = p.to_string_lossy().into_owned();
        }
        if let Some(v) = self.backends.vault.as_mut() {
            if let Some(p) = v.ca_file.as_mut() {
                fix(p);
            }
            match &mut v.auth {
                VaultAuth::Token { token_file } => fix(token_file),
                VaultAuth::Approle { secret_id_file, .. } => fix(secret_id_file),
                VaultAuth::Kubernetes { jwt_file, .. } => fix(jwt_file),
                VaultAuth::Jwt { jwt_file, .. } => fix(jwt_file),
            }
        }
        for iss in &mut self.issuers {
            if let JwksSource::File(p) = &mut iss.jwks {
                fix(p);
            }
            if let Some(p) = iss.ca_file.as_mut() {
                fix(p);
            }
        }
    }

    /// Cross-field checks that types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.store.check()?;
        self.gate.check()?;
        self.revocation.check()?;
        if self.revocation.revoke_on_pod_deletion && self.gate.pod_lookup.is_none() {
            return Err(
                "field `revocation.revoke_on_pod_deletion`: needs Kubernetes API access; \
                 configure `gate.pod_lookup` (in_cluster, or api_server and token_file)"
                    .into(),
            );
        }
        if let Some(inject) = &self.inject {
            let audiences: Vec<&str> = self
                .issuers
                .iter()
                .flat_map(|i| i.audiences.iter().map(String::as_str))
                .collect();
            inject.check(&audiences)?;
        }
        if self.gate.scan_deadline_seconds * 1000 >= self.server.request_timeout_ms {
            return Err(format!(
                "field `gate.scan_deadline_seconds`: {} s is not below `server.request_timeout_ms` \
                 ({} ms); an issuance waiting for a scan would get the deadline's 503 instead of \
                 the gate's answer",
                self.gate.scan_deadline_seconds, self.server.request_timeout_ms
            ));
        }
        if self.gate.admission.deadline_ms >= self.server.request_timeout_ms {
            return Err(format!(
                "field `gate.admission.deadline_ms`: {} is not below `server.request_timeout_ms` \
                 ({} ms); a review would get the request deadline's 503 instead of the decision",
                self.gate.admission.deadline_ms, self.server.request_timeout_ms
            ));
        }
        if self.gate.admission.client_ca_file.is_some()
            && self.gate.admission.client_ca_file == self.tls.admin_client_ca_file
        {
            return Err(
                "field `gate.admission.client_ca_file`: the same file as `tls.admin_client_ca_file`; \
                 give the API server a CA of its own, or every admin certificate could write \
                 admission records and every API-server certificate would be an admin"
                    .into(),
            );
        }
        if let Some(l) = &self.gate.pod_lookup
            && self.gate.scan_deadline_seconds * 1000 + l.timeout_ms
                >= self.server.request_timeout_ms
        {
            return Err(format!(
                "field `gate.pod_lookup.timeout_ms`: {} ms and `gate.scan_deadline_seconds` \
                 ({} s) together are not below `server.request_timeout_ms` ({} ms); an issuance \
                 would get the deadline's 503 instead of the gate's answer",
                l.timeout_ms, self.gate.scan_deadline_seconds, self.server.request_timeout_ms
            ));
        }
        if !(self.public_url.starts_with("https://") || self.public_url.starts_with("http://")) {
            return Err(format!(
                "field `public_url`: `{}` must be an http(s) URL",
                self.public_url
            ));
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            if iss.leeway_seconds > MAX_LEEWAY_SECONDS {
                return Err(format!(
                    "field `issuers[{i}].leeway_seconds`: {} is above the maximum {MAX_LEEWAY_SECONDS}",
                    iss.leeway_seconds
                ));
            }
            if iss.min_refresh_interval_seconds < MIN_JWKS_REFRESH_FLOOR_SECONDS {
                return Err(format!(
                    "field `issuers[{i}].min_refresh_interval_seconds`: {} is below the minimum \
                     {MIN_JWKS_REFRESH_FLOOR_SECONDS} (a token with an unknown `kid` may trigger \
                     one JWKS fetch per interval); raise it",
                    iss.min_refresh_interval_seconds
                ));
            }
            if iss.audiences.is_empty() {
                return Err(format!(
                    "field `issuers[{i}].audiences`: list at least one audience for `{}`",
                    iss.issuer
                ));
            }
            if iss.algorithms().is_empty() {
                return Err(format!(
                    "field `issuers[{i}].algorithms`: must not be empty"
                ));
            }
            if let Some(td) = &iss.spiffe_trust_domain
                && !is_valid_trust_domain(td)
            {
                return Err(format!(
                    "field `issuers[{i}].spiffe_trust_domain`: `{}` is not a SPIFFE trust \
                     domain name (lowercase letters, digits, `.`, `-`, `_`; no `spiffe://`)",
                    td.chars().take(64).collect::<String>()
                ));
            }
        }
        if self.bootstrap.default_ttl_seconds > self.bootstrap.max_ttl_seconds {
            return Err(
                "field `bootstrap.default_ttl_seconds`: above `bootstrap.max_ttl_seconds`".into(),
            );
        }
        if self.bootstrap.redeem_grace_seconds > MAX_REDEEM_GRACE_SECONDS {
            return Err(format!(
                "field `bootstrap.redeem_grace_seconds`: {} is above the maximum \
                 {MAX_REDEEM_GRACE_SECONDS}",
                self.bootstrap.redeem_grace_seconds
            ));
        }
        self.bootstrap.check_revocation()?;
        if self.reload_interval_seconds == 0 {
            return Err("field `reload_interval_seconds`: must be at least 1".into());
        }
        let a = &self.audit;
        if a.segment_max_bytes != 0 && a.segment_max_bytes < MIN_AUDIT_SEGMENT_BYTES {
            return Err(format!(
                "field `audit.segment_max_bytes`: {} is below the minimum {MIN_AUDIT_SEGMENT_BYTES} \
                 (0 never rotates)",
                a.segment_max_bytes
            ));
        }
        if a.sink == "store" && !matches!(self.store.choice(), Ok(StoreChoice::Postgres)) {
            return Err(
                "field `audit.sink`: `store` keeps the records in a PostgreSQL store; set \
                 `store.postgres_url` (or `_file`), or give a file path or `stdout`"
                    .into(),
            );
        }
        let f = &a.auth_failures;
        for (field, value) in [
            ("records_per_window", u64::from(f.records_per_window)),
            ("window_seconds", f.window_seconds),
            ("max_sources", f.max_sources as u64),
        ] {
            if value == 0 {
                return Err(format!(
                    "field `audit.auth_failures.{field}`: must be at least 1"
                ));
            }
        }
        self.server.check()?;
        self.signing.validate(
            self.reload_interval_seconds,
            MAX_TTL_SECONDS.max(self.bootstrap.session_ttl_seconds),
        )?;
        if !(1..=MAX_REPLICAS).contains(&self.backends.replicas) {
            return Err(format!(
                "field `backends.replicas`: {} is out of range (1 to {MAX_REPLICAS}: the number of \
                 broker replicas sharing the upstream limits)",
                self.backends.replicas
            ));
        }
        if let Some(sts) = &self.backends.aws_sts {
            check_limits("backends.aws_sts", &sts.limits())?;
            if let Some(url) = &sts.endpoint_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(format!(
                    "field `backends.aws_sts.endpoint_url`: `{url}` must be an http(s) URL"
                ));
            }
            if let Some(url) = &sts.endpoint_url {
                check_upstream_url(
                    "backends.aws_sts",
                    "endpoint_url",
                    url,
                    sts.allow_insecure_http,
                )?;
            }
            if sts.region.trim().is_empty() {
                return Err("field `backends.aws_sts.region`: must not be empty".into());
            }
            let p = &sts.role_session_prefix;
            if p.is_empty()
                || p.len() > 32
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
            {
                return Err(format!(
                    "field `backends.aws_sts.role_session_prefix`: `{p}` must be 1-32 characters from A-Z a-z 0-9 _+=,.@-"
                ));
            }
        }
        if let Some(v) = &self.backends.vault {
            check_limits("backends.vault", &v.limits())?;
            if !(v.address.starts_with("https://") || v.address.starts_with("http://")) {
                return Err(format!(
                    "field `backends.vault.address`: `{}` must be an http(s) URL",
                    v.address
                ));
            }
            check_upstream_url(
                "backends.vault",
                "address",
                &v.address,
                v.allow_insecure_http,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    const MINIMAL: &str = "public_url: https://lanyard.example:8443\ntls:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\npolicies_dir: policies\nstore:\n  sqlite_path: data/lanyard.db\n";

    #[test]
    fn the_documented_example_loads() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/broker.example.yaml");
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("example loads");
        assert_eq!(cfg.issuers.len(), 1);
        assert_eq!(cfg.issuers[0].jwks, JwksSource::Discovery);
        assert_eq!(cfg.signing.algorithm, Algorithm::ES256);
    }

    #[test]
    fn the_inject_section_is_off_by_default_and_checked_with_the_field_to_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |extra: &str| {
            let file = write(dir.path(), "i.yaml", &format!("{MINIMAL}{extra}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        assert!(
            load("").expect("defaults").inject.is_none(),
            "off unless configured"
        );
        let base = "inject:\n  image: registry.example.com/lanyard/sidecar:0.1\n  broker_url: https://lanyard.lanyard-system.svc:8443\n  ca_file: tls/ca.crt\n";
        let cfg = load(base).expect("inject");
        let i = cfg.inject.as_ref().expect("on");
        assert_eq!(
            (
                i.audience.as_str(),
                i.token_expiration_seconds,
                i.health_port,
                i.startup_timeout_seconds
            ),
            ("lanyard", 600, 8099, 60)
        );
        assert!(
            i.ca_file.as_ref().is_some_and(|p| p.is_absolute()),
            "resolved against the file"
        );
        let limits = i.resources.limits.as_ref().expect("limits");
        assert_eq!(limits["memory"].0, "64Mi");
        for (extra, want) in [
            (
                "  token_expiration_seconds: 599\n",
                "inject.token_expiration_seconds",
            ),
            (
                "  image_pull_policy: Sometimes\n",
                "inject.image_pull_policy",
            ),
            (
                "  startup_timeout_seconds: 0\n",
                "inject.startup_timeout_seconds",
            ),
            ("  sidecar_image: x\n", "sidecar_image"),
            (
                "issuers:\n  - issuer: https://k8s\n    audiences: [api]\n",
                "inject.audience",
            ),
        ] {
            let e = load(&format!("{base}{extra}")).expect_err(extra);
            assert!(e.contains(want), "{extra}: {e}");
        }
        let e = load("inject:\n  image: i\n  broker_url: https://b:8443\n").expect_err("no CA");
        assert!(e.contains("inject.ca_file"), "{e}");
        load("inject:\n  image: i\n  broker_url: http://127.0.0.1:8080\n")
            .expect("http needs no CA");
    }

    #[test]
    fn the_gate_section_is_checked_with_the_field_to_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |extra: &str| {
            let file = write(dir.path(), "g.yaml", &format!("{MINIMAL}{extra}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load("").expect("defaults");
        assert_eq!(cfg.gate.mode, GateMode::Enforce);
        assert_eq!(cfg.gate.unscanned, Unscanned::Scan);
        assert_eq!(cfg.gate.unknown_workload, UnknownWorkload::Deny);
        assert!(cfg.gate.admission.pin_digests, "pinning is on by default");
        assert_eq!(cfg.gate.admission.deadline_ms, 8000);
        let cfg = load("gate:\n  admission:\n    pin_digests: false\n").expect("pinning off");
        assert!(!cfg.gate.admission.pin_digests);
        let cfg = load("gate:\n  mode: audit\n  registries:\n    - {host: r.example, username: u, password_file: p}\n")
            .expect("audit");
        assert_eq!(cfg.gate.mode, GateMode::Audit);
        assert!(
            cfg.gate.pod_lookup.is_none(),
            "pod lookups are off by default"
        );
        let cfg = load("gate:\n  pod_lookup: {api_server: \"https://10.0.0.1:6443\", ca_file: ca.pem, token_file: t}\n")
            .expect("pod lookup");
        let l = cfg.gate.pod_lookup.as_ref().expect("on");
        assert_eq!(
            (l.timeout_ms, l.sweep_interval_seconds, l.sweep_batch),
            (2_000, 300, 100)
        );
        assert!(l.token_file.as_ref().is_some_and(|p| p.is_absolute()));
        let cfg = load("gate:\n  mode: audit\n  registries:\n    - {host: r.example, username: u, password_file: p}\n")
            .expect("audit");
        assert!(
            cfg.gate.registries[0]
                .password_file
                .as_ref()
                .is_some_and(|p| p.is_absolute()),
            "resolved against the file"
        );
        for (extra, field) in [
            ("gate:\n  mode: enforcing\n", "mode"),
            (
                "gate:\n  scan_deadline_seconds: 0\n",
                "gate.scan_deadline_seconds",
            ),
            (
                "gate:\n  scan_deadline_seconds: 40\n",
                "server.request_timeout_ms",
            ),
            (
                "gate:\n  max_concurrent_scans: 0\n",
                "gate.max_concurrent_scans",
            ),
            ("gate:\n  platforms: [amd64]\n", "gate.platforms[0]"),
            (
                "gate:\n  registries:\n    - {host: r.example, username: u}\n",
                "gate.registries[0]",
            ),
            (
                "gate:\n  registries:\n    - {host: \"https://r.example\", token_file: t}\n",
                "gate.registries[0].host",
            ),
            (
                "gate:\n  registries:\n    - {host: r.example, token_file: t}\n    - {host: R.example, token_file: t}\n",
                "listed twice",
            ),
            ("gate:\n  pod_lookup: {}\n", "gate.pod_lookup"),
            (
                "gate:\n  pod_lookup: {in_cluster: true, api_server: \"https://k\"}\n",
                "not both",
            ),
            (
                "gate:\n  pod_lookup: {in_cluster: true, token_file: t}\n",
                "go with `api_server`",
            ),
            (
                "gate:\n  pod_lookup: {api_server: \"http://k:6443\", token_file: t}\n",
                "gate.pod_lookup.api_server",
            ),
            (
                "gate:\n  pod_lookup: {api_server: \"https://k:6443\"}\n",
                "gate.pod_lookup.token_file",
            ),
            (
                "gate:\n  pod_lookup: {in_cluster: true, timeout_ms: 50}\n",
                "gate.pod_lookup.timeout_ms",
            ),
            (
                "gate:\n  scan_deadline_seconds: 25\n  pod_lookup: {in_cluster: true, timeout_ms: 6000}\n",
                "server.request_timeout_ms",
            ),
            (
                "gate:\n  pod_lookup: {in_cluster: true, sweep_batch: 0}\n",
                "gate.pod_lookup.sweep_batch",
            ),
            (
                "gate:\n  pod_lookup: {in_cluster: true, namespace: x}\n",
                "namespace",
            ),
            ("gate:\n  admission:\n    pin_digest: false\n", "pin_digest"),
            (
                "gate:\n  admission:\n    deadline_ms: 0\n",
                "gate.admission.deadline_ms",
            ),
        ] {
            let e = load(extra).expect_err(extra);
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn the_admission_section_has_safe_defaults_and_is_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |extra: &str| {
            let file = write(dir.path(), "b.yaml", &format!("{MINIMAL}{extra}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load("").expect("defaults");
        let a = &cfg.gate.admission;
        assert_eq!(cfg.gate.pod_tokens, PodTokens::Ignore);
        assert!(a.templates && a.pin_digests);
        assert_eq!(a.on_timeout, OnTimeout::FailClosed);
        assert_eq!((a.deadline_ms, a.record_retention_hours), (8_000, 168));
        assert!(a.client_ca_file.is_none() && a.token_file.is_none());
        let cfg = load(
            "gate:\n  pod_tokens: gate\n  admission:\n    on_timeout: fail-open\n    templates: false\n    client_ca_file: apiserver-ca.pem\n    exempt_namespaces:\n      - {namespace: kube-system, reason: platform images}\n",
        )
        .expect("set");
        assert_eq!(cfg.gate.pod_tokens, PodTokens::Gate);
        assert_eq!(cfg.gate.admission.on_timeout, OnTimeout::FailOpen);
        assert!(
            cfg.gate
                .admission
                .client_ca_file
                .as_ref()
                .is_some_and(|p| p.is_absolute()),
            "relative to the config file"
        );
        assert_eq!(
            cfg.gate
                .admission
                .exemption("kube-system")
                .map(|e| e.reason.as_str()),
            Some("platform images")
        );
        for (extra, field) in [
            ("gate:\n  pod_tokens: yes\n", "pod_tokens"),
            (
                "gate:\n  admission:\n    on_timeout: closed\n",
                "on_timeout",
            ),
            (
                "gate:\n  admission:\n    deadline_ms: 30000\n",
                "gate.admission.deadline_ms",
            ),
            (
                "gate:\n  admission:\n    deadline_ms: 20000\nserver:\n  request_timeout_ms: 15000\n",
                "server.request_timeout_ms",
            ),
            (
                "gate:\n  admission:\n    record_retention_hours: 0\n",
                "record_retention_hours",
            ),
            (
                "gate:\n  admission:\n    exempt_namespaces:\n      - {namespace: kube-system, reason: \" \"}\n",
                "exempt_namespaces[0].reason",
            ),
            (
                "gate:\n  admission:\n    exempt_namespaces:\n      - {namespace: a, reason: x}\n      - {namespace: a, reason: y}\n",
                "listed twice",
            ),
            ("gate:\n  admission:\n    token: x\n", "token"),
        ] {
            let e = load(extra).expect_err(extra);
            assert!(e.contains(field), "{extra}: {e}");
        }
        let shared = MINIMAL.replace(
            "key_file: tls/key.pem\n",
            "key_file: tls/key.pem\n  admin_client_ca_file: ca.pem\n",
        );
        let file = write(
            dir.path(),
            "s.yaml",
            &format!("{shared}gate:\n  admission:\n    client_ca_file: ca.pem\n"),
        );
        let e = BrokerConfig::load(&file, std::iter::empty())
            .map(|_| ())
            .expect_err("one CA for admins and the API server");
        assert!(e.to_string().contains("admin_client_ca_file"), "{e}");
    }

    #[test]
    fn the_store_is_sqlite_or_postgres_and_the_url_never_shows() {
        let dir = tempfile::tempdir().expect("tmp");
        let head = MINIMAL
            .strip_suffix("store:\n  sqlite_path: data/lanyard.db\n")
            .expect("MINIMAL ends with the store");
        let load = |store: &str| {
            let file = write(dir.path(), "b.yaml", &format!("{head}store:\n{store}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let pw = "pg-pass-word";
        let cfg = load(&format!(
            "  postgres_url: postgres://app:{pw}@db.example/lanyard?sslmode=verify-full\n  postgres_ca_file: pg-ca.pem\n"
        ))
        .expect("postgres");
        assert_eq!(cfg.store.choice(), Ok(StoreChoice::Postgres));
        assert_eq!(
            cfg.store.postgres_ca_file,
            Some(dir.path().join("pg-ca.pem"))
        );
        assert_eq!(cfg.store.postgres_pool_size, 16);
        assert_eq!(cfg.store.postgres_connect_timeout_seconds, 5);
        let shown = format!("{:?} {}", cfg.store, cfg.store.describe());
        assert!(!shown.contains(pw), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
        let cfg = load("  postgres_url_file: pg-url\n  postgres_pool_size: 4\n").expect("file");
        assert_eq!(cfg.store.postgres_url_file, Some(dir.path().join("pg-url")));
        assert_eq!(cfg.store.postgres_pool_size, 4);
        for (store, field) in [
            ("  postgres_pool_size: 4\n", "set `sqlite_path`"),
            (
                "  sqlite_path: a.db\n  postgres_url: postgres://u@h/d\n",
                "only one of",
            ),
            (
                "  postgres_url: postgres://u@h/d\n  postgres_url_file: f\n",
                "only one of",
            ),
            (
                "  sqlite_path: a.db\n  postgres_ca_file: ca.pem\n",
                "store.postgres_ca_file",
            ),
            (
                "  postgres_url_file: f\n  postgres_pool_size: 0\n",
                "store.postgres_pool_size",
            ),
            (
                "  postgres_url_file: f\n  postgres_connect_timeout_seconds: 0\n",
                "store.postgres_connect_timeout_seconds",
            ),
        ] {
            let e = load(store).expect_err(store);
            assert!(e.contains(field), "{store}: {e}");
        }
    }

    #[test]
    fn replicas_each_apply_their_share_of_the_upstream_limits() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |text: &str| {
            let file = write(dir.path(), "b.yaml", text);
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load(&format!(
            "{MINIMAL}backends:\n  replicas: 3\n  aws_sts: {{max_concurrency: 16, max_requests_per_second: 50}}\n  vault:\n    address: https://vault:8200\n    max_concurrency: 2\n    max_requests_per_second: 1\n    auth:\n      approle: {{role_id: r, secret_id_file: sid}}\n"
        ))
        .expect("config");
        let shared = cfg.backends.per_replica();
        let sts = shared.aws_sts.expect("sts");
        // 16 / 3 and 50 / 3, rounded up: the three stay within 18 and 51.
        assert_eq!((sts.max_concurrency, sts.max_requests_per_second), (6, 17));
        let vault = shared.vault.expect("vault");
        assert_eq!(
            (vault.max_concurrency, vault.max_requests_per_second),
            (1, 1)
        );
        // The rest is untouched, and one replica (the default) applies the whole figure.
        assert_eq!(
            sts.max_queue_wait_ms,
            cfg.backends
                .aws_sts
                .as_ref()
                .expect("sts")
                .max_queue_wait_ms
        );
        let one = load(&format!(
            "{MINIMAL}backends:\n  aws_sts: {{max_concurrency: 16}}\n"
        ))
        .expect("config");
        assert_eq!(one.backends.replicas, 1);
        assert_eq!(
            one.backends
                .per_replica()
                .aws_sts
                .expect("sts")
                .max_concurrency,
            16
        );
        let e = load(&format!("{MINIMAL}backends:\n  replicas: 0\n")).expect_err("zero");
        assert!(e.contains("backends.replicas"), "{e}");
    }

    #[test]
    fn audit_segments_and_auth_failure_limits_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |extra: &str| {
            let file = write(dir.path(), "b.yaml", &format!("{MINIMAL}{extra}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load("").expect("defaults");
        assert_eq!(cfg.audit.segment_max_bytes, 256 * 1024 * 1024);
        assert_eq!(cfg.audit.auth_failures, AuthFailureLimits::default());
        let cfg = load("audit:\n  sink: a.log\n  segment_max_bytes: 0\n  auth_failures: {records_per_window: 3, window_seconds: 10, max_sources: 5}\n")
            .expect("custom");
        assert_eq!(cfg.audit.segment_max_bytes, 0);
        assert_eq!(cfg.audit.auth_failures.records_per_window, 3);
        let e = load("audit:\n  segment_max_bytes: 1000\n").expect_err("too small");
        assert!(
            e.contains("audit.segment_max_bytes") && e.contains("131072"),
            "{e}"
        );
        let e = load("audit:\n  auth_failures: {window_seconds: 0}\n").expect_err("zero");
        assert!(e.contains("audit.auth_failures.window_seconds"), "{e}");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", MINIMAL);
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("loads");
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(cfg.audit.sink, "stdout");
        assert_eq!(cfg.tls.cert_file, dir.path().join("tls/cert.pem"));
        assert_eq!(
            cfg.store.sqlite_path,
            Some(dir.path().join("data/lanyard.db"))
        );
        assert_eq!(cfg.limits.max_request_body_bytes, 64 * 1024);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", MINIMAL);
        let env = vec![
            ("LANYARD_LISTEN".to_owned(), "0.0.0.0:9443".to_owned()),
            (
                "LANYARD_STORE__SQLITE_PATH".to_owned(),
                "/data/x.db".to_owned(),
            ),
            (
                "LANYARD_LIMITS__MAX_TOKEN_BYTES".to_owned(),
                "2048".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
            ("LANYARD_LOG".to_owned(), "debug".to_owned()),
            ("LANYARD_BROKER_URL".to_owned(), "https://x".to_owned()),
        ];
        let cfg = BrokerConfig::load(&file, env).expect("loads");
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(cfg.store.sqlite_path, Some(PathBuf::from("/data/x.db")));
        assert_eq!(cfg.limits.max_token_bytes, 2048);
    }

    #[test]
    fn backends_load_with_defaults_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(
            dir.path(),
            "b.yaml",
            &format!(
                "{MINIMAL}backends:\n  aws_sts:\n    endpoint_url: http://127.0.0.1:5000\n  vault:\n    address: https://vault:8200\n    auth:\n      approle: {{role_id: r, secret_id_file: sid}}\n"
            ),
        );
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("loads");
        let sts = cfg.backends.aws_sts.expect("sts");
        assert_eq!(sts.region, "us-east-1");
        assert_eq!(sts.role_session_prefix, "lanyard");
        assert_eq!(sts.limits().cache_refresh_fraction, 0.5);
        let vault = cfg.backends.vault.expect("vault");
        assert!(vault.revoke_on_expiry);
        // On: renewals outlive a restart and a lost replica (CONFIG.md, "Lease renewal").
        assert!(vault.renew_leases);
        match vault.auth {
            VaultAuth::Approle {
                secret_id_file,
                mount,
                ..
            } => {
                assert_eq!(
                    secret_id_file,
                    dir.path().join("sid"),
                    "relative to the file"
                );
                assert_eq!(mount, "approle");
            }
            other => panic!("unexpected {other:?}"),
        }
        for (extra, field) in [
            (
                "backends:\n  aws_sts:\n    cache_refresh_fraction: 1.0\n",
                "backends.aws_sts.cache_refresh_fraction",
            ),
            (
                "backends:\n  aws_sts:\n    max_concurrency: 0\n",
                "backends.aws_sts.max_concurrency",
            ),
            (
                "backends:\n  aws_sts:\n    role_session_prefix: \"a b\"\n",
                "backends.aws_sts.role_session_prefix",
            ),
            (
                "backends:\n  vault:\n    address: vault:8200\n    auth: {token: {token_file: t}}\n",
                "backends.vault.address",
            ),
        ] {
            let file = write(dir.path(), "x.yaml", &format!("{MINIMAL}{extra}"));
            let msg = BrokerConfig::load(&file, std::iter::empty())
                .expect_err(field)
                .to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn plain_http_upstreams_must_be_loopback_unless_allowed() {
        // Pure cases first: every loopback form, and what the opt-in changes.
        for url in [
            "https://vault.example:8200",
            "http://127.0.0.1:8200",
            "http://127.3.4.5:8200",
            "http://[::1]:8200",
            "http://localhost:8200",
            "http://LocalHost",
        ] {
            check_upstream_url("s", "f", url, false).expect(url);
        }
        for url in [
            "http://vault.example:8200",
            "http://10.0.0.1:8200",
            "http://[::2]:8200",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
        ] {
            let msg = check_upstream_url("s", "f", url, false).expect_err(url);
            assert!(
                msg.contains("field `s.f`") && msg.contains("s.allow_insecure_http"),
                "{msg}"
            );
            check_upstream_url("s", "f", url, true).expect(url);
        }
        let msg = check_upstream_url("s", "f", "http://user:hunter2@vault:8200", false)
            .expect_err("remote");
        assert!(!msg.contains("hunter2"), "user info is not echoed: {msg}");
        check_upstream_url("s", "f", "ftp://127.0.0.1", true).expect_err("not http(s)");

        // Through the loaded config, per backend.
        let dir = tempfile::tempdir().expect("tmp");
        let load = |backend: &str| {
            let file = write(
                dir.path(),
                "h.yaml",
                &format!("{MINIMAL}backends:\n{backend}"),
            );
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let vault = |address: &str, extra: &str| {
            format!(
                "  vault:\n    address: {address}\n    auth: {{token: {{token_file: t}}}}\n{extra}"
            )
        };
        let sts = |url: &str, extra: &str| format!("  aws_sts:\n    endpoint_url: {url}\n{extra}");
        const OPT_IN: &str = "    allow_insecure_http: true\n";
        for ok in [
            vault("https://vault:8200", ""),
            vault("http://127.0.0.1:8200", ""),
            vault("http://vault:8200", OPT_IN),
            sts("https://sts.example", ""),
            sts("http://[::1]:5000", ""),
            sts("http://moto:5000", OPT_IN),
        ] {
            let cfg = load(&ok).expect(&ok);
            assert!(cfg.backends.vault.is_some() || cfg.backends.aws_sts.is_some());
        }
        for (bad, field) in [
            (vault("http://vault:8200", ""), "backends.vault.address"),
            (sts("http://moto:5000", ""), "backends.aws_sts.endpoint_url"),
            // The opt-in of one backend does not cover the other.
            (
                format!(
                    "{}{}",
                    vault("http://vault:8200", ""),
                    sts("https://sts", OPT_IN)
                ),
                "backends.vault.address",
            ),
        ] {
            let msg = load(&bad).expect_err(&bad);
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn server_deadlines_have_defaults_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", MINIMAL);
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("loads");
        assert_eq!(cfg.server, ServerConfig::default());
        assert_eq!(
            (
                cfg.server.max_connections,
                cfg.server.header_read_timeout_ms,
                cfg.server.request_timeout_ms
            ),
            (4_096, 10_000, 30_000)
        );
        let env = vec![(
            "LANYARD_SERVER__MAX_CONNECTIONS".to_owned(),
            "64".to_owned(),
        )];
        let cfg = BrokerConfig::load(&file, env).expect("loads");
        assert_eq!(cfg.server.max_connections, 64);
        for (extra, field) in [
            ("server:\n  max_connections: 0\n", "server.max_connections"),
            ("server:\n  idle_timeout_ms: 0\n", "server.idle_timeout_ms"),
            (
                "server:\n  tls_handshake_timeout_ms: 0\n",
                "server.tls_handshake_timeout_ms",
            ),
            (
                "server:\n  body_read_timeout_ms: 60000\n",
                "server.body_read_timeout_ms",
            ),
            ("server:\n  header_timeout_ms: 5\n", "header_timeout_ms"),
        ] {
            let file = write(dir.path(), "x.yaml", &format!("{MINIMAL}{extra}"));
            let msg = BrokerConfig::load(&file, std::iter::empty())
                .expect_err(field)
                .to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn the_signing_schedule_is_checked_against_caches_replicas_and_token_lifetimes() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |extra: &str| {
            let file = write(dir.path(), "s.yaml", &format!("{MINIMAL}{extra}"));
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load("").expect("defaults pass");
        assert!(cfg.signing.publish_ahead_seconds >= JWKS_MAX_AGE_SECONDS);

        // A key must be published one JWKS cache lifetime plus one reload interval (5 s
        // by default) before it signs.
        let min = JWKS_MAX_AGE_SECONDS + 5;
        load(&format!("signing: {{publish_ahead_seconds: {min}}}\n")).expect("the minimum");
        let msg = load(&format!(
            "signing: {{publish_ahead_seconds: {}}}\n",
            min - 1
        ))
        .expect_err("one second short");
        assert!(
            msg.contains("signing.publish_ahead_seconds")
                && msg.contains(&format!("at least {min}")),
            "{msg}"
        );
        let msg = load(&format!(
            "reload_interval_seconds: 60\nsigning: {{publish_ahead_seconds: {min}}}\n"
        ))
        .expect_err("slower replicas need more");
        assert!(
            msg.contains(&format!("at least {}", JWKS_MAX_AGE_SECONDS + 60)),
            "{msg}"
        );

        let msg = load("signing: {rotate_after_seconds: 600, publish_ahead_seconds: 900}\n")
            .expect_err("rotating faster than publishing");
        assert!(msg.contains("signing.rotate_after_seconds"), "{msg}");

        // Retired keys stay published as long as the longest token a key can sign: a role
        // may have up to 12 h, a session token `bootstrap.session_ttl_seconds`.
        load("signing: {overlap_seconds: 43200}\n").expect("12 h");
        let msg = load("signing: {overlap_seconds: 43199}\n").expect_err("short overlap");
        assert!(
            msg.contains("signing.overlap_seconds") && msg.contains("at least 43200"),
            "{msg}"
        );
        let msg =
            load("bootstrap: {session_ttl_seconds: 50000}\nsigning: {overlap_seconds: 43200}\n")
                .expect_err("sessions outlive the overlap");
        assert!(msg.contains("at least 50000"), "{msg}");
        let msg = load("signing: {algorithm: RS256}\n").expect_err("cannot sign");
        assert!(msg.contains("signing.algorithm"), "{msg}");
    }

    #[test]
    fn a_typo_names_the_file_and_the_field() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", &format!("{MINIMAL}polices_dir: x\n"));
        let err = BrokerConfig::load(&file, std::iter::empty()).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("b.yaml") && msg.contains("polices_dir"),
            "{msg}"
        );
    }

    #[test]
    fn missing_fields_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", "public_url: https://x\n");
        let msg = BrokerConfig::load(&file, std::iter::empty())
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("tls"), "{msg}");

        let file = write(
            dir.path(),
            "c.yaml",
            &format!(
                "{MINIMAL}issuers:\n  - issuer: https://k8s\n    audiences: [lanyard]\n    leeway_seconds: 3600\n"
            ),
        );
        let msg = BrokerConfig::load(&file, std::iter::empty())
            .expect_err("leeway")
            .to_string();
        assert!(msg.contains("issuers[0].leeway_seconds"), "{msg}");

        let file = write(
            dir.path(),
            "d.yaml",
            &format!(
                "{MINIMAL}issuers:\n  - issuer: https://k8s\n    audiences: [x]\n    algorithms: [HS256]\n"
            ),
        );
        let msg = BrokerConfig::load(&file, std::iter::empty())
            .expect_err("hmac")
            .to_string();
        assert!(msg.contains("HS256"), "HMAC cannot be configured: {msg}");

        let msg = BrokerConfig::load(&dir.path().join("nope.yaml"), std::iter::empty())
            .expect_err("missing file")
            .to_string();
        assert!(msg.contains("nope.yaml"), "{msg}");
    }

    #[test]
    fn the_unknown_kid_refresh_interval_has_a_floor() {
        let dir = tempfile::tempdir().expect("tmp");
        let load = |secs: Option<u64>| {
            let extra = secs.map_or(String::new(), |s| {
                format!("    min_refresh_interval_seconds: {s}\n")
            });
            let file = write(
                dir.path(),
                "r.yaml",
                &format!(
                    "{MINIMAL}issuers:\n  - issuer: https://k8s\n    audiences: [lanyard]\n{extra}"
                ),
            );
            BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())
        };
        let cfg = load(None).expect("the default passes");
        assert!(cfg.issuers[0].min_refresh_interval_seconds >= MIN_JWKS_REFRESH_FLOOR_SECONDS);
        load(Some(MIN_JWKS_REFRESH_FLOOR_SECONDS)).expect("the floor itself");
        for secs in [0, MIN_JWKS_REFRESH_FLOOR_SECONDS - 1] {
            let msg = load(Some(secs)).expect_err("below the floor");
            assert!(
                msg.contains("issuers[0].min_refresh_interval_seconds")
                    && msg.contains(&format!("minimum {MIN_JWKS_REFRESH_FLOOR_SECONDS}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_session_revocation_refresh_and_bound_default_and_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", MINIMAL);
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("loads");
        assert_eq!(
            (
                cfg.bootstrap.session_revocation_refresh_seconds,
                cfg.bootstrap.session_revocation_max_stale_seconds
            ),
            (5, 30)
        );
        for (refresh, bound, ok) in [
            (1, 2, true),
            (5, 600, true),
            (0, 30, false),
            (5, 9, false),
            (5, 601, false),
        ] {
            let file = write(
                dir.path(),
                "r.yaml",
                &format!(
                    "{MINIMAL}bootstrap:\n  session_revocation_refresh_seconds: {refresh}\n  \
                     session_revocation_max_stale_seconds: {bound}\n"
                ),
            );
            match BrokerConfig::load(&file, std::iter::empty()) {
                Ok(_) => assert!(ok, "{refresh}/{bound} should be refused"),
                Err(e) => {
                    assert!(!ok, "{refresh}/{bound}: {e}");
                    assert!(
                        e.to_string().contains("bootstrap.session_revocation_"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_redeem_grace_window_defaults_to_30_s_and_is_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = write(dir.path(), "b.yaml", MINIMAL);
        let cfg = BrokerConfig::load(&file, std::iter::empty()).expect("loads");
        assert_eq!(cfg.bootstrap.redeem_grace_seconds, 30);
        for (grace, ok) in [(0, true), (MAX_REDEEM_GRACE_SECONDS, true), (301, false)] {
            let file = write(
                dir.path(),
                "g.yaml",
                &format!("{MINIMAL}bootstrap:\n  redeem_grace_seconds: {grace}\n"),
            );
            match BrokerConfig::load(&file, std::iter::empty()) {
                Ok(cfg) => {
                    assert!(ok, "{grace} should be refused");
                    assert_eq!(cfg.bootstrap.redeem_grace_seconds, grace);
                }
                Err(e) => {
                    assert!(!ok, "{grace}: {e}");
                    assert!(
                        e.to_string().contains("bootstrap.redeem_grace_seconds"),
                        "{e}"
                    );
                }
            }
        }
    }
}
