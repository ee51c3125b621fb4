//! The HTTP API. Handlers parse, call [`Broker`], and turn errors into responses through
//! [`ApiError`] — nothing else decides a status code. `docs/API.md` documents every route.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json};
use lanyard::wire::{
    CredentialRequest, ErrorCode, ExemptionRequest, MintTokenRequest, RevokeSessionRequest,
    ScanRequest,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::ConnInfo;
use super::deadline::{self, DeadlineLayerState, Deadlines};
use crate::authn::{BOOTSTRAP_ISSUER, BootstrapBinding, Identity, KubernetesIdentity};
use crate::broker::{Broker, SessionRef, new_request_id};
use crate::error::ApiError;
use crate::gate::admission::MAX_REVIEW_BYTES;
use crate::secret_file::read_secret_file;

type AppState = Arc<Broker>;

/// Builds the router. Every request gets the body and request deadlines
/// ([`deadline::enforce`]) and is timed by route and status.
pub fn router(broker: Arc<Broker>) -> Router {
    let limit = broker.config().limits.max_request_body_bytes;
    Router::new()
        .route("/v1/credentials", post(issue_credentials))
        .route("/v1/leases/{lease_id}/revoke", post(revoke_lease))
        .route("/v1/jwks", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/v1/admin/tokens", post(mint_token))
        .route("/v1/admin/tokens/{token_id}", delete(revoke_token))
        .route("/v1/admin/sessions/{session_id}", delete(revoke_session))
        .route("/v1/admin/sessions/revoke", post(revoke_session_by_token))
        // REV (issue 16): revocation per backend.
        .route("/v1/admin/sts-roles/{role}/revoke", post(revoke_sts_role))
        .route("/v1/jwks/revoked", get(revocation_list))
        .route("/v1/introspect", post(introspect))
        .route("/v1/admin/explain", post(explain))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/admin/scans", post(scan_image))
        .route("/v1/admin/verdicts/{digest}", get(get_verdict))
        .route("/v1/admin/exemptions", post(exempt_image))
        .route(
            "/v1/admission/validate",
            post(admission_validate).layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES)),
        )
        .route(
            "/v1/admission/mutate",
            // An AdmissionReview may be far above the JSON API's body limit (a pod of 1.5 MiB,
            // twice in an update); it is bounded by its own.
            post(admission_mutate).layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route; see docs/API.md".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            DeadlineLayerState {
                deadlines: Deadlines::from_config(&broker.config().server),
                metrics: broker.metrics().clone(),
            },
            deadline::enforce,
        ))
        .layer(middleware::from_fn_with_state(broker.clone(), observe))
        .with_state(broker)
}

/// Times every request by route and status, and counts error answers by code.
async fn observe(State(broker): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    broker
        .metrics()
        .request_duration
        .with_label_values(&[&route, resp.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Some(code) = resp.extensions().get::<ErrorCode>() {
        broker
            .metrics()
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn body_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
    allow_empty: bool,
) -> Result<Option<T>, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else if let Some(late) = deadline::body_timed_out(&r) {
            ApiError::BodyTimeout(late.after_ms)
        } else {
            ApiError::BadRequest(format!("cannot read request body: {}", r.body_text()))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if allow_empty {
            Ok(None)
        } else {
            Err(ApiError::BadRequest(
                "request body is empty; send JSON".into(),
            ))
        };
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn issue_credentials(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        route = "/v1/credentials",
        identity = tracing::field::Empty
    );
    async {
        let limit = broker.config().limits.max_request_body_bytes;
        let req: CredentialRequest = match body_json(body, limit, true) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => return e.into_response_with_id(Some(&request_id)),
        };
        let auth = match broker
            .authenticate_from(bearer(&headers), &request_id, conn.peer.ip())
            .await
        {
            Ok(a) => a,
            Err(e) => return e.into_response_with_id(Some(&request_id)),
        };
        tracing::Span::current().record("identity", auth.identity.subject.as_str());
        match broker.issue(&auth, &req, &request_id).await {
            Ok(resp) => ([(header::CACHE_CONTROL, "no-store")], Json(resp)).into_response(),
            Err(e) => {
                tracing::info!(code = %e.code(), reason = e.reason(), "request refused");
                e.into_response_with_id(Some(&request_id))
            }
        }
    }
    .instrument(span)
    .await
}

async fn revoke_lease(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(lease_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        if admin_credential(&broker, &conn, &headers).await.is_ok() {
            return broker.revoke_lease(&lease_id, None, &request_id).await;
        }
        // A bootstrap token is refused, never redeemed: it would be spent on a revocation.
        let auth = broker
            .authenticate_without_redeeming(bearer(&headers), &request_id, conn.peer.ip())
            .await?;
        broker
            .revoke_lease(&lease_id, Some(&auth.identity), &request_id)
            .await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// The broker's public keys, cacheable for
/// [`JWKS_MAX_AGE_SECONDS`](crate::config::JWKS_MAX_AGE_SECONDS): a key is published at
/// least that long before it signs (`signing.publish_ahead_seconds`, checked at start against
/// the same constant), so a relying party honouring the header never meets an unknown `kid`.
async fn jwks(State(broker): State<AppState>) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={}", crate::config::JWKS_MAX_AGE_SECONDS),
        )],
        Json(broker.keys().jwks()),
    )
        .into_response()
}

async fn discovery(State(broker): State<AppState>) -> Response {
    Json(broker.discovery_document()).into_response()
}

async fn readyz(State(broker): State<AppState>) -> Response {
    let checks = broker.readiness().await;
    let ready = checks.values().all(Result::is_ok);
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                match v {
                    Ok(()) => serde_json::Value::from("ok"),
                    Err(e) => serde_json::Value::from(e),
                },
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": body })),
    )
        .into_response()
}

async fn metrics(State(broker): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        broker.metrics().render(),
    )
        .into_response()
}

/// Whether the request carries the admin credential: a client certificate from the admin
/// CA, or the admin bearer token (compared in constant time; the file is re-read so a
/// rotated token takes effect at once). An unreadable, empty or oversize token file admits
/// no one. `Err` is why not, as a stable reason for the audit record and the denial metric.
async fn admin_credential(
    broker: &Broker,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    if conn.admin_cert {
        return Ok(());
    }
    let Some(presented) = bearer(headers) else {
        return Err("admin_missing_credential");
    };
    let Some(file) = broker.config().admin.token_file.as_ref() else {
        return Err("admin_token_not_configured");
    };
    bearer_matches_file(
        file,
        presented,
        "the admin token file",
        ("admin_token_file_unusable", "admin_wrong_token"),
    )
    .await
}

/// Whether `presented` is the token in `file` (re-read every time, compared in constant
/// time). `Err` is one of `labels`: (the file cannot be used — logged, naming `what` —, the
/// token is another).
async fn bearer_matches_file(
    file: &std::path::Path,
    presented: &str,
    what: &str,
    labels: (&'static str, &'static str),
) -> Result<(), &'static str> {
    let expected = match read_secret_file(file).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "cannot use {what}");
            return Err(labels.0);
        }
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(
        expected.expose().as_bytes(),
        presented.as_bytes(),
    )
    .map_err(|_| labels.1)
}

/// Whether the request comes from the API server: a client certificate from
/// `gate.admission.client_ca_file`, or the bearer token in `gate.admission.token_file`
/// (re-read every time, compared in constant time). Admins are not the API server. `Err` is
/// why not, a stable label.
async fn admission_credential(
    broker: &Broker,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    if conn.admission_cert {
        return Ok(());
    }
    let cfg = &broker.config().gate.admission;
    if cfg.client_ca_file.is_none() && cfg.token_file.is_none() {
        return Err("admission_not_configured");
    }
    let Some(presented) = bearer(headers) else {
        return Err("admission_missing_credential");
    };
    let Some(file) = cfg.token_file.as_ref() else {
        return Err("admission_token_not_configured");
    };
    bearer_matches_file(
        file,
        presented,
        "gate.admission.token_file",
        ("admission_token_file_unusable", "admission_wrong_token"),
    )
    .await
}

/// `POST /v1/admission/validate`: the validating admission webhook. Only the API server
/// (authenticated before the body is read) gets an answer: an `AdmissionReview` whose
/// `response.uid` is the request's. A body that is not a review this webhook handles is a
/// 400; one above [`crate::gate::admission::MAX_REVIEW_BYTES`] a 413, cut off unread.
async fn admission_validate(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
) -> Response {
    const ROUTE: &str = "POST /v1/admission/validate";
    let request_id = new_request_id();
    let result = async {
        authorize_admission(&broker, &conn, req.headers(), ROUTE, &request_id).await?;
        let body = review_body(req).await?;
        broker.admission_validate(&body, &request_id).await
    }
    .await;
    match result {
        Ok(review) => Json(review).into_response(),
        Err(e) => {
            tracing::info!(code = %e.code(), "admission review not answered");
            e.into_response_with_id(Some(&request_id))
        }
    }
}

/// Admits only an admin to `route`; anyone else gets the opaque 401, audited and counted
/// ([`Broker::refuse_admin`]).
async fn require_admin(
    broker: &Broker,
    conn: &ConnInfo,
    headers: &HeaderMap,
    route: &str,
    request_id: &str,
) -> Result<(), ApiError> {
    match admin_credential(broker, conn, headers).await {
        Ok(()) => Ok(()),
        Err(reason) => Err(broker
            .refuse_admin(request_id, route, reason, conn.peer.ip())
            .await),
    }
}

/// An admin route's JSON body, which must be there (bounded like every body).
fn required_body<T: serde::de::DeserializeOwned>(
    broker: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let limit = broker.config().limits.max_request_body_bytes;
    body_json(body, limit, false)?.ok_or_else(|| ApiError::BadRequest("empty body".into()))
}

async fn mint_token(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/tokens",
            &request_id,
        )
        .await?;
        let req: MintTokenRequest = required_body(&broker, body)?;
        broker.mint_token(&req, &request_id).await
    }
    .await;
    match result {
        Ok(r) => (
            StatusCode::CREATED,
            [(header::CACHE_CONTROL, "no-store")],
            Json(r),
        )
            .into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// Admits only the API server to an admission route (`route`), before the body is read
/// ([`admission_credential`]); a refusal is the opaque 401, audited and counted.
async fn authorize_admission(
    broker: &Broker,
    conn: &ConnInfo,
    headers: &HeaderMap,
    route: &str,
    request_id: &str,
) -> Result<(), ApiError> {
    match admission_credential(broker, conn, headers).await {
        Ok(()) => Ok(()),
        Err(reason) => Err(broker
            .refuse_admission(request_id, route, reason, conn.peer.ip())
            .await),
    }
}

/// The body of an admission review, bounded by the route's own limit
/// ([`MAX_REVIEW_BYTES`]: a 413, cut off unread).
async fn review_body(req: Request) -> Result<Bytes, ApiError> {
    use axum::extract::FromRequest as _;
    Bytes::from_request(req, &()).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_REVIEW_BYTES)
        } else if let Some(late) = deadline::body_timed_out(&r) {
            ApiError::BodyTimeout(late.after_ms)
        } else {
            ApiError::BadRequest(format!("cannot read request body: {}", r.body_text()))
        }
    })
}

/// `POST /v1/admission/mutate`: digest pinning ([`Broker::admission_mutate`]); answers an
/// AdmissionReview, always allowed, with a JSONPatch when a tag was pinned. The API server is
/// authenticated before the body is read; a body above [`MAX_REVIEW_BYTES`] is a 413, cut
/// off unread (as `/v1/admission/validate`).
async fn admission_mutate(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
) -> Response {
    const ROUTE: &str = "POST /v1/admission/mutate";
    let request_id = new_request_id();
    let result = async {
        authorize_admission(&broker, &conn, req.headers(), ROUTE, &request_id).await?;
        let body = review_body(req).await?;
        broker.admission_mutate(&body, &request_id).await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// `POST /v1/admin/scans`: scan an image ahead; 200 with the verdict, or 202 with
/// `verdict: pending` when the scan did not finish within the wait (it goes on).
async fn scan_image(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/scans",
            &request_id,
        )
        .await?;
        let req: ScanRequest = required_body(&broker, body)?;
        broker.scan_image(&req, &request_id).await
    }
    .await;
    match result {
        Ok(r) if r.verdict == "pending" => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// `GET /v1/admin/verdicts/{digest}`: the stored verdict, allowlist applied.
async fn get_verdict(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "GET /v1/admin/verdicts/{digest}",
            &request_id,
        )
        .await?;
        broker.verdict_response(&digest).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "no verdict for {}; scan it with `lanyard-broker image scan`",
                digest.chars().take(80).collect::<String>()
            ))
        })
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// `POST /v1/admin/exemptions`: exempt one digest from the gate, with a reason.
async fn exempt_image(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/exemptions",
            &request_id,
        )
        .await?;
        let req: ExemptionRequest = required_body(&broker, body)?;
        broker.exempt_image(&req, &request_id).await?;
        Ok::<_, ApiError>(req.digest)
    }
    .await;
    match result {
        Ok(digest) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"digest": digest, "exempted": true})),
        )
            .into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

async fn revoke_token(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(token_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "DELETE /v1/admin/tokens/{token_id}",
            &request_id,
        )
        .await?;
        broker.revoke_token(&token_id, &request_id).await
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

async fn revoke_session(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "DELETE /v1/admin/sessions/{session_id}",
            &request_id,
        )
        .await?;
        broker
            .revoke_session(SessionRef::Id(&session_id), &request_id)
            .await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

async fn revoke_sts_role(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/sts-roles/{role}/revoke",
            &request_id,
        )
        .await?;
        broker.revoke_sts_role(&role, &request_id).await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// REV (issue 16): the broker JWTs' revocation list (`issue::status`).
async fn revocation_list(State(broker): State<AppState>) -> Response {
    match broker.revocation_list().await {
        Ok(body) => (
            [
                (
                    header::CACHE_CONTROL,
                    format!(
                        "public, max-age={}",
                        broker.revocation_list_max_age().as_secs()
                    ),
                ),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            body.as_ref().clone(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// REV (issue 16): RFC 7662 introspection. The caller authenticates (the admin token, or any
/// identity the broker accepts; a bootstrap token is refused, never redeemed), else 401.
async fn introspect(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        if admin_credential(&broker, &conn, &headers).await.is_err() {
            broker
                .authenticate_without_redeeming(bearer(&headers), &request_id, conn.peer.ip())
                .await?;
        }
        let body = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let token =
            crate::issue::status::parse_introspection_form(&body).map_err(ApiError::BadRequest)?;
        broker.introspect(&token).await
    }
    .await;
    match result {
        Ok(v) => ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

async fn revoke_session_by_token(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/sessions/revoke",
            &request_id,
        )
        .await?;
        let req: RevokeSessionRequest = required_body(&broker, body)?;
        broker
            .revoke_session(SessionRef::Token(req.session_token.expose()), &request_id)
            .await
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

/// An identity described by hand, for `explain`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Issuer URL (or `lanyard:bootstrap`).
    pub issuer: String,
    /// Subject.
    pub subject: String,
    /// Kubernetes namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kubernetes service account.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Roles a bootstrap token was minted for.
    #[serde(default)]
    pub bootstrap_roles: Option<Vec<String>>,
    /// The image bound into that bootstrap token (`HOST/REPO@sha256:…`), for rules that
    /// select on `image_repository`.
    #[serde(default)]
    pub image: Option<String>,
    /// The images of a pod's admission record (`HOST/REPO@sha256:…`), for a pod token under
    /// `gate.pod_tokens: gate` and rules that select on `image_repository`. Needs
    /// `namespace` and `service_account`.
    #[serde(default)]
    pub pod_images: Option<Vec<String>>,
    /// The SPIFFE ID of a JWT-SVID verified by a trust domain's bundle, for rules that select
    /// on `spiffe_id`.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// The token's claims, for rules that select on `claims`.
    #[serde(default)]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

impl IdentitySpec {
    /// The identity this describes.
    pub fn to_identity(&self) -> Identity {
        let kubernetes = match (&self.namespace, &self.service_account) {
            (Some(ns), Some(sa)) => Some(KubernetesIdentity {
                namespace: ns.clone(),
                service_account: sa.clone(),
                pod_name: None,
                pod_uid: None,
                admission: match &self.pod_images {
                    Some(images) => crate::authn::PodAdmission::Record {
                        images: images.clone(),
                        pinned: true,
                        admitted_at: None,
                    },
                    None => Default::default(),
                },
            }),
            _ => None,
        };
        let bootstrap = self.bootstrap_roles.as_ref().map(|roles| BootstrapBinding {
            token_id: self
                .subject
                .strip_prefix("bootstrap:")
                .unwrap_or("explain")
                .to_owned(),
            roles: roles.clone(),
            image: self.image.clone(),
        });
        Identity {
            issuer: if bootstrap.is_some() && self.issuer.is_empty() {
                BOOTSTRAP_ISSUER.to_owned()
            } else {
                self.issuer.clone()
            },
            subject: self.subject.clone(),
            kubernetes,
            bootstrap,
            spiffe_id: self.spiffe_id.clone(),
            claims: self.claims.clone().unwrap_or_default(),
        }
    }
}

/// `POST /v1/admin/explain` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Who.
    pub identity: IdentitySpec,
    /// Which role.
    pub role: String,
}

async fn explain(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let result = async {
        require_admin(
            &broker,
            &conn,
            &headers,
            "POST /v1/admin/explain",
            &request_id,
        )
        .await?;
        let req: ExplainRequest = required_body(&broker, body)?;
        Ok::<_, ApiError>(broker.explain(&req.identity.to_identity(), &req.role))
    }
    .await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response_with_id(Some(&request_id)),
    }
}

async fn reload(
    State(broker): State<AppState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let request_id = new_request_id();
    if let Err(e) = require_admin(
        &broker,
        &conn,
        &headers,
        "POST /v1/admin/reload",
        &request_id,
    )
    .await
    {
        return e.into_response_with_id(Some(&request_id));
    }
    match broker.reload_policies().await {
        Ok(crate::broker::ReloadOutcome::Unchanged) => {
            Json(serde_json::json!({"reloaded": false, "reason": "unchanged"})).into_response()
        }
        Ok(crate::broker::ReloadOutcome::Reloaded { digest, rules }) => {
            Json(serde_json::json!({"reloaded": true, "digest": digest, "rules": rules}))
                .into_response()
        }
        Err(errors) => {
            ApiError::BadRequest(format!("policies rejected, last good set kept:\n{errors}"))
                .into_response_with_id(Some(&request_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explained_pod_identity_carries_its_admission_records_repositories() {
        let spec: IdentitySpec = serde_json::from_value(serde_json::json!({
            "issuer": "https://kubernetes.test",
            "subject": "system:serviceaccount:shop:api",
            "namespace": "shop",
            "service_account": "api",
            "pod_images": [format!("registry.example.com/shop/api@sha256:{}", "a".repeat(64))]
        }))
        .expect("spec");
        assert_eq!(
            crate::gate::image_repositories(&spec.to_identity()),
            ["registry.example.com/shop/api"]
        );
        let without = IdentitySpec {
            pod_images: None,
            ..spec
        };
        assert!(crate::gate::image_repositories(&without.to_identity()).is_empty());
    }
}
