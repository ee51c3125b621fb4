//! JWT workload identity: verification of tokens from trusted issuers (Kubernetes projected
//! service-account tokens and other OIDC issuers) against each issuer's JWKS.
//!
//! [`JwtVerifier::verify`] checks, in order: the size bound (before any decoding); the shape
//! (three segments of at most [`MAX_SEGMENT_BYTES`]); the header's `alg` (never `none` or
//! HMAC, and on the issuer's allow-list); the issuer (`iss`, from the still-unverified
//! payload, picks the configuration); the key (`kid` in the cached JWKS, refreshed on demand
//! with a rate limit, and of a type that fits `alg`); the signature (aws-lc-rs, with the key
//! parsed once when the JWKS was loaded); `aud`; then `exp`, `nbf` and `iat` against the
//! injected clock with the issuer's leeway; and finally the identity claims, each bounded
//! ([`MAX_SUBJECT_BYTES`], [`MAX_KUBERNETES_NAME_BYTES`]) since the audit log records them.
//! The token is decoded once: the claims read to pick the issuer are the claims checked.
//!
//! Error messages never echo token content: they name what is wrong, not what was sent.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard::clock::{Clock, unix_seconds};
use serde_json::Value;

use super::jwks::{IssuerKeys, VerificationKey, alg_name};
use super::{AuthnError, Identity, IssuerConfigError, KubernetesIdentity};
use crate::config::{
    Algorithm, IssuerConfig, LimitsConfig, MAX_LEEWAY_SECONDS, MIN_JWKS_REFRESH_FLOOR_SECONDS,
    is_valid_trust_domain,
};
use crate::metrics::Metrics;

/// Largest JWT segment (header, payload or signature) accepted, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024;

/// Most entries accepted in an `aud` array.
pub const MAX_AUDIENCES: usize = 32;

/// Longest `sub` accepted, in bytes. OIDC caps it at 255 ASCII characters; this leaves room
/// for issuers that compose longer ones (CI systems), while keeping the subject — which the
/// audit log records, and a denial's reason may quote — far below an audit line's limit
/// whatever `limits.max_token_bytes` is.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Longest Kubernetes name claim accepted (namespace, service account, pod name and uid), in
/// bytes: Kubernetes' own limit for a DNS subdomain name.
pub const MAX_KUBERNETES_NAME_BYTES: usize = 253;

/// The header of a JWT that has not been verified yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedHeader {
    /// `alg`, as written in the token.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `typ`, if present.
    pub typ: Option<String>,
}

/// A JWT split and decoded; nothing in it is verified yet. Its `Debug` shows the header
/// only: the signing input and the signature together are the bearer token.
pub struct UnverifiedJwt<'a> {
    /// The decoded header.
    pub header: UnverifiedHeader,
    /// The decoded payload (a JSON object).
    pub claims: Value,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Splits and decodes a JWT without verifying anything: checks the size bound first (a token
/// longer than `max_token_bytes` is refused before any decoding), then three segments of at
/// most [`MAX_SEGMENT_BYTES`], then decodes the header (`alg` string, optional `kid`/`typ`
/// strings, no `crit`), the payload (a JSON object) and the signature (base64url). Nothing
/// returned is trustworthy.
pub fn parse_jwt(token: &str, max_token_bytes: usize) -> Result<UnverifiedJwt<'_>, AuthnError> {
    if token.len() > max_token_bytes {
        return Err(AuthnError::TooLarge);
    }
    let malformed = |reason: &str| AuthnError::Malformed(reason.to_owned());
    let mut parts = token.splitn(4, '.');
    let (header, payload, signature) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => return Err(malformed("expected 3 dot-separated segments")),
        };
    if [header, payload, signature]
        .iter()
        .any(|s| s.len() > MAX_SEGMENT_BYTES)
    {
        return Err(malformed("segment larger than 64 KiB"));
    }
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("empty header or payload segment"));
    }
    let header_json = decode_segment(header, "header")?;
    let Value::Object(h) = header_json else {
        return Err(malformed("header is not a JSON object"));
    };
    let alg = match h.get("alg") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("header `alg` is not a string")),
        None => return Err(malformed("header has no `alg`")),
    };
    let opt_str = |name: &str| match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthnError::Malformed(format!(
            "header `{name}` is not a string"
        ))),
    };
    let kid = opt_str("kid")?;
    let typ = opt_str("typ")?;
    if h.contains_key("crit") {
        return Err(malformed("header `crit` extensions are not supported"));
    }
    let claims = decode_segment(payload, "payload")?;
    if !claims.is_object() {
        return Err(malformed("payload is not a JSON object"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("signature is not base64url (no padding)"))?;
    Ok(UnverifiedJwt {
        header: UnverifiedHeader { alg, kid, typ },
        claims,
        signing_input: &token[..header.len() + 1 + payload.len()],
        signature,
    })
}

fn decode_segment(segment: &str, what: &str) -> Result<Value, AuthnError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthnError::Malformed(format!("{what} is not base64url (no padding)")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthnError::Malformed(format!("{what} is not valid JSON")))
}

/// Maps a header `alg` to an algorithm the broker can verify. `none`, HMAC and anything
/// unknown are refused; only well-known names are echoed in the error.
fn accepted_alg(name: &str) -> Result<Algorithm, AuthnError> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "ES512" => Ok(Algorithm::ES512),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "none" | "HS256" | "HS384" | "HS512" => {
            Err(AuthnError::AlgorithmNotAllowed(name.to_owned()))
        }
        _ => Err(AuthnError::AlgorithmNotAllowed(
            "unrecognized algorithm".into(),
        )),
    }
}

#[derive(Debug)]
struct IssuerState {
    cfg: IssuerConfig,
    keys: IssuerKeys,
}

#[derive(Debug)]
struct Inner {
    issuers: Vec<IssuerState>,
    by_name: HashMap<String, usize>,
    /// SPIFFE trust domain → its issuer, for JWT-SVIDs without `iss`.
    by_trust_domain: HashMap<String, usize>,
    clock: Arc<dyn Clock>,
    max_token_bytes: usize,
}

/// Verifies JWTs from the configured issuers.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

/// The outcome of looking a key up in a key set.
enum Pick {
    Found(VerificationKey),
    /// A key with that `kid` exists but cannot verify this `alg`.
    WrongType,
    /// No `kid`, and several keys could verify this `alg`.
    Ambiguous,
    Missing,
}

fn pick(set: &super::jwks::KeySet, alg: Algorithm, kid: Option<&str>) -> Pick {
    match kid {
        Some(kid) => {
            let mut any = false;
            for k in set.with_kid(kid) {
                any = true;
                if k.usable_for(alg) {
                    return Pick::Found(k.clone());
                }
            }
            if any { Pick::WrongType } else { Pick::Missing }
        }
        None => {
            let mut usable = set.usable_for(alg);
            match (usable.next(), usable.next()) {
                (Some(k), None) => Pick::Found(k.clone()),
                (Some(_), Some(_)) => Pick::Ambiguous,
                _ => Pick::Missing,
            }
        }
    }
}

impl JwtVerifier {
    /// Builds a verifier; fails naming the issuer if its config is unusable (e.g. unreadable
    /// JWKS file or CA file, a plain-http URL to a non-loopback host, a leeway above
    /// [`MAX_LEEWAY_SECONDS`], a `min_refresh_interval_seconds` below
    /// [`MIN_JWKS_REFRESH_FLOOR_SECONDS`], no audiences or algorithms, a duplicate issuer).
    pub fn new(
        issuers: &[IssuerConfig],
        limits: &LimitsConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Result<Self, IssuerConfigError> {
        let mut states = Vec::with_capacity(issuers.len());
        let mut by_name = HashMap::new();
        let mut by_trust_domain = HashMap::new();
        for cfg in issuers {
            let issuer = || cfg.issuer.clone();
            if cfg.leeway_seconds > MAX_LEEWAY_SECONDS {
                return Err(IssuerConfigError::Leeway {
                    issuer: issuer(),
                    leeway_seconds: cfg.leeway_seconds,
                });
            }
            if cfg.min_refresh_interval_seconds < MIN_JWKS_REFRESH_FLOOR_SECONDS {
                return Err(IssuerConfigError::MinRefreshInterval {
                    issuer: issuer(),
                    min_refresh_interval_seconds: cfg.min_refresh_interval_seconds,
                });
            }
            if cfg.audiences.is_empty() {
                return Err(IssuerConfigError::NoAudiences { issuer: issuer() });
            }
            if cfg.algorithms().is_empty() {
                return Err(IssuerConfigError::NoAlgorithms { issuer: issuer() });
            }
            if by_name.insert(issuer(), states.len()).is_some() {
                return Err(IssuerConfigError::Duplicate { issuer: issuer() });
            }
            if let Some(td) = &cfg.spiffe_trust_domain {
                let reason = if !is_valid_trust_domain(td) {
                    Some(
                        "spiffe_trust_domain is not a trust domain name (lowercase letters, \
                         digits, `.`, `-`, `_`; without `spiffe://`)",
                    )
                } else if cfg.algorithms().contains(&Algorithm::EdDSA) {
                    Some("EdDSA is not a JWT-SVID algorithm; remove it from `algorithms`")
                } else if by_trust_domain.insert(td.clone(), states.len()).is_some() {
                    Some(
                        "another issuer has the same spiffe_trust_domain; one trust domain, one bundle",
                    )
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(IssuerConfigError::KeySource {
                        issuer: issuer(),
                        reason: reason.to_owned(),
                    });
                }
            }
            let keys = IssuerKeys::new(cfg, limits, clock.clone(), metrics.clone())?;
            states.push(IssuerState {
                cfg: cfg.clone(),
                keys,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                issuers: states,
                by_name,
                by_trust_domain,
                clock,
                max_token_bytes: limits.max_token_bytes,
            }),
        })
    }

    /// Fetches every issuer's keys once. Returns the issuers that failed (name, reason).
    pub async fn refresh_all(&self) -> Vec<(String, String)> {
        let results = futures_util::future::join_all(
            self.inner
                .issuers
                .iter()
                .map(|i| async move { (i.cfg.issuer.clone(), i.keys.refresh().await) }),
        )
        .await;
        results
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| (name, e.to_string())))
            .collect()
    }

    /// Issuers that have no key set cached yet (a cheap readiness check that fetches
    /// nothing; [`JwtVerifier::refresh_all`] fetches).
    pub fn issuers_without_keys(&self) -> Vec<String> {
        self.inner
            .issuers
            .iter()
            .filter(|i| i.keys.keys().is_none())
            .map(|i| i.cfg.issuer.clone())
            .collect()
    }

    /// Runs background refresh until `shutdown` resolves: each issuer every
    /// `refresh_interval_seconds` (JWKS files at least every 5 s), retried sooner after a
    /// failure.
    pub async fn run_refresh(&self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let loops =
            futures_util::future::join_all(self.inner.issuers.iter().map(|i| i.keys.run_refresh()));
        tokio::select! {
            () = shutdown => {}
            _ = loops => {}
        }
    }

    /// Verifies a JWT and returns the workload identity.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthnError> {
        self.verify_parsed(parse_jwt(token, self.inner.max_token_bytes)?)
            .await
    }

    /// [`Self::verify`] for a token already split by [`parse_jwt`] (bounded by the same
    /// `max_token_bytes`), so a caller that looked at its `iss` need not decode it again.
    pub async fn verify_parsed(&self, jwt: UnverifiedJwt<'_>) -> Result<Identity, AuthnError> {
        let UnverifiedJwt {
            header,
            claims,
            signing_input,
            signature,
        } = jwt;
        let alg = accepted_alg(&header.alg)?;

        // The issuer: named by `iss`; or, for a JWT-SVID without `iss`, the trust domain its
        // `sub` names — only that trust domain's bundle may verify it.
        let index = match claims.get("iss") {
            Some(Value::String(iss)) => self.inner.by_name.get(iss.as_str()),
            None => match claims.get("sub").and_then(Value::as_str).map(spiffe_id) {
                Some(Ok((td, _))) => self.inner.by_trust_domain.get(td),
                _ => {
                    return Err(AuthnError::InvalidClaims(
                        "`iss` missing, and `sub` is not a SPIFFE ID".into(),
                    ));
                }
            },
            Some(_) => {
                return Err(AuthnError::InvalidClaims("`iss` is not a string".into()));
            }
        };
        let issuer = index
            .and_then(|&i| self.inner.issuers.get(i))
            .ok_or(AuthnError::UntrustedIssuer)?;
        if let Some(td) = &issuer.cfg.spiffe_trust_domain {
            // Checked before any key lookup, so a token naming another trust domain fetches
            // nothing.
            check_svid(&header, &claims, td)?;
        }
        if !issuer.cfg.algorithms().contains(&alg) {
            return Err(AuthnError::AlgorithmNotAllowed(alg_name(alg).to_owned()));
        }
        if let Some(Value::Array(a)) = claims.get("aud")
            && a.len() > MAX_AUDIENCES
        {
            return Err(AuthnError::InvalidClaims(format!(
                "`aud` lists more than {MAX_AUDIENCES} audiences"
            )));
        }

        let key = self.find_key(issuer, alg, header.kid.as_deref()).await?;
        if !key.verifies(alg, signing_input.as_bytes(), &signature) {
            return Err(AuthnError::BadSignature);
        }
        check_audience(&claims, &issuer.cfg.audiences)?;
        self.check_times(&claims, issuer.cfg.leeway_seconds)?;
        identity(&issuer.cfg, claims)
    }

    async fn find_key(
        &self,
        issuer: &IssuerState,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<VerificationKey, AuthnError> {
        let keys = &issuer.keys;
        let mut refreshed = false;
        let set = match keys.keys() {
            Some(set) => set,
            None => {
                refreshed = keys.refresh_on_demand().await;
                keys.keys().ok_or(AuthnError::KeysUnavailable)?
            }
        };
        let wrong_type =
            || AuthnError::AlgorithmNotAllowed("alg does not fit the key's type".into());
        match pick(&set, alg, kid) {
            Pick::Found(k) => return Ok(k),
            Pick::WrongType => return Err(wrong_type()),
            Pick::Ambiguous => return Err(AuthnError::UnknownKey),
            Pick::Missing => {}
        }
        // The issuer may have rotated its keys: refresh (rate-limited) and look again.
        if !refreshed
            && keys.refresh_on_demand().await
            && let Some(set) = keys.keys()
        {
            match pick(&set, alg, kid) {
                Pick::Found(k) => return Ok(k),
                Pick::WrongType => return Err(wrong_type()),
                Pick::Ambiguous | Pick::Missing => {}
            }
        }
        Err(AuthnError::UnknownKey)
    }

    fn check_times(&self, claims: &Value, leeway: u64) -> Result<(), AuthnError> {
        let now = unix_seconds(self.inner.clock.now());
        let exp = numeric_claim(claims, "exp")?
            .ok_or_else(|| AuthnError::InvalidClaims("`exp` is required".into()))?;
        if exp.saturating_add(leeway) <= now {
            return Err(AuthnError::Expired);
        }
        for name in ["nbf", "iat"] {
            if let Some(t) = numeric_claim(claims, name)?
                && t > now.saturating_add(leeway)
            {
                return Err(AuthnError::NotYetValid);
            }
        }
        Ok(())
    }
}

/// A NumericDate claim as whole seconds; `None` when absent.
fn numeric_claim(claims: &Value, name: &str) -> Result<Option<u64>, AuthnError> {
    let bad = || AuthnError::InvalidClaims(format!("`{name}` is not a non-negative number"));
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(bad()),
                }
            }
        }
        Some(_) => Err(bad()),
    }
}

/// `aud` (a string or an array of strings, required) must name an accepted audience.
fn check_audience(claims: &Value, accepted: &[String]) -> Result<(), AuthnError> {
    let wrong_type = || AuthnError::InvalidClaims("`aud` has the wrong type".into());
    let found = match claims.get("aud") {
        None => false,
        Some(Value::String(aud)) => accepted.contains(aud),
        Some(Value::Array(list)) => {
            let mut found = false;
            for aud in list {
                let aud = aud.as_str().ok_or_else(wrong_type)?;
                found |= accepted.iter().any(|a| a == aud);
            }
            found
        }
        Some(_) => return Err(wrong_type()),
    };
    if found {
        Ok(())
    } else {
        Err(AuthnError::WrongAudience)
    }
}

fn string_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// `value` of claim `name`, if it is at most `max` bytes (the error says its length, never
/// its content).
fn bounded(value: &str, name: &str, max: usize) -> Result<String, AuthnError> {
    if value.len() > max {
        return Err(AuthnError::InvalidClaims(format!(
            "`{name}` is {} bytes, over the {max} byte limit",
            value.len()
        )));
    }
    Ok(value.to_owned())
}

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID, section 2.3: 2048); `sub` is further
/// bounded by [`MAX_SUBJECT_BYTES`].
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// Splits a SPIFFE ID (`spiffe://<trust domain>/<path>`) into its trust domain and path
/// (with its leading `/`, possibly empty), checking the SPIFFE ID spec's syntax: scheme
/// `spiffe` in lowercase, a valid trust domain, no port, user info, query or fragment,
/// path segments of letters, digits, `.`, `-` and `_`, none empty, `.` or `..`, and no
/// trailing `/`. The error names what is wrong, never the value.
pub fn spiffe_id(id: &str) -> Result<(&str, &str), &'static str> {
    if id.len() > MAX_SPIFFE_ID_BYTES {
        return Err("longer than 2048 bytes");
    }
    let rest = id.strip_prefix("spiffe://").ok_or("not a spiffe:// URI")?;
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !is_valid_trust_domain(td) {
        return Err("the trust domain is empty or has characters other than a-z 0-9 . - _");
    }
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err("a path segment is empty, `.` or `..`");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err("a path segment has characters other than A-Z a-z 0-9 . - _");
            }
        }
    }
    Ok((td, path))
}

/// The JWT-SVID checks of a SPIFFE trust domain's token (SPIFFE JWT-SVID, section 3): `typ`,
/// when present, is `JWT` or `JOSE`; `sub` is a SPIFFE ID of trust domain `td`.
fn check_svid(header: &UnverifiedHeader, claims: &Value, td: &str) -> Result<(), AuthnError> {
    if let Some(typ) = &header.typ
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(AuthnError::Malformed(
            "a JWT-SVID's `typ` must be JWT or JOSE".into(),
        ));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthnError::InvalidClaims("`sub` missing, empty or not a string".into()))?;
    match spiffe_id(sub) {
        Ok((domain, _)) if domain == td => Ok(()),
        Ok(_) => Err(AuthnError::InvalidClaims(
            "`sub` is a SPIFFE ID of another trust domain than the issuer's".into(),
        )),
        Err(why) => Err(AuthnError::InvalidClaims(format!(
            "`sub` is not a SPIFFE ID: {why}"
        ))),
    }
}

/// Builds the identity from verified claims. Each claim that becomes part of the identity is
/// bounded ([`MAX_SUBJECT_BYTES`], [`MAX_KUBERNETES_NAME_BYTES`]). A SPIFFE trust domain's
/// token gets its SPIFFE ID and never a Kubernetes identity (a JWT-SVID is not a
/// service-account token, whatever claims it carries); every claim is kept for the policies'
/// claim selectors.
fn identity(cfg: &IssuerConfig, claims: Value) -> Result<Identity, AuthnError> {
    let issuer = cfg.issuer.as_str();
    let spiffe = cfg.spiffe_trust_domain.is_some();
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => bounded(s, "sub", MAX_SUBJECT_BYTES)?,
        _ => {
            return Err(AuthnError::InvalidClaims(
                "`sub` missing, empty or not a string".into(),
            ));
        }
    };
    let kubernetes = match claims.get("kubernetes.io") {
        _ if spiffe => None,
        None => None,
        Some(k8s @ Value::Object(_)) => {
            let name = |path: &[&str], field: &str| {
                string_at(k8s, path)
                    .map(|s| {
                        bounded(
                            s,
                            &format!("kubernetes.io.{field}"),
                            MAX_KUBERNETES_NAME_BYTES,
                        )
                    })
                    .transpose()
            };
            let required = |path: &[&str], field: &str| {
                name(path, field)?.filter(|s| !s.is_empty()).ok_or_else(|| {
                    AuthnError::InvalidClaims(format!(
                        "`kubernetes.io.{field}` missing or not a string"
                    ))
                })
            };
            Some(KubernetesIdentity {
                namespace: required(&["namespace"], "namespace")?,
                service_account: required(&["serviceaccount", "name"], "serviceaccount.name")?,
                pod_name: name(&["pod", "name"], "pod.name")?,
                pod_uid: name(&["pod", "uid"], "pod.uid")?,
                admission: Default::default(),
            })
        }
        Some(_) => {
            return Err(AuthnError::InvalidClaims(
                "`kubernetes.io` is not an object".into(),
            ));
        }
    };
    let Value::Object(claims) = claims else {
        return Err(AuthnError::Malformed("payload is not a JSON object".into()));
    };
    Ok(Identity {
        issuer: issuer.to_owned(),
        spiffe_id: spiffe.then(|| subject.clone()),
        subject,
        kubernetes,
        bootstrap: None,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lanyard::clock::ManualClock;
    use lanyard_test_support::{Algorithm as Jws, OidcIssuer};
    use serde_json::json;

    use super::*;
    use crate::config::JwksSource;

    /// [`parse_jwt`]'s header and claims, for the parser tests.
    fn parse_unverified(
        token: &str,
        max_token_bytes: usize,
    ) -> Result<(UnverifiedHeader, Value), AuthnError> {
        parse_jwt(token, max_token_bytes).map(|jwt| (jwt.header, jwt.claims))
    }

    const T0: u64 = 1_800_000_000;
    const AUD: &str = "lanyard-broker";

    fn cfg(issuer: &str, jwks: JwksSource) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.to_owned(),
            audiences: vec![AUD.to_owned(), "other".to_owned()],
            jwks,
            ca_file: None,
            algorithms: Some(vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]),
            leeway_seconds: 30,
            refresh_interval_seconds: 300,
            min_refresh_interval_seconds: 10,
            spiffe_trust_domain: None,
            claim_profile: None,
            claim_types: Default::default(),
        }
    }

    struct Setup {
        issuer: OidcIssuer,
        verifier: JwtVerifier,
        clock: Arc<ManualClock>,
        metrics: Metrics,
    }

    async fn setup_with(edit: impl FnOnce(&mut IssuerConfig, &mut LimitsConfig)) -> Setup {
        let issuer = OidcIssuer::start().await;
        let mut c = cfg(&issuer.url(), JwksSource::Discovery);
        let mut limits = LimitsConfig::default();
        edit(&mut c, &mut limits);
        let clock = Arc::new(ManualClock::at_unix(T0));
        let metrics = Metrics::new();
        let verifier = JwtVerifier::new(&[c], &limits, clock.clone(), metrics.clone())
            .expect("valid issuer config");
        Setup {
            issuer,
            verifier,
            clock,
            metrics,
        }
    }

    async fn setup() -> Setup {
        setup_with(|_, _| {}).await
    }

    fn claims(iss: &str) -> Value {
        json!({
            "iss": iss,
            "sub": "spiffe://example.org/billing",
            "aud": AUD,
            "iat": T0,
            "nbf": T0,
            "exp": T0 + 600,
        })
    }

    fn with(mut base: Value, key: &str, v: Value) -> Value {
        base[key] = v;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().expect("object").remove(key);
        base
    }

    #[tokio::test]
    async fn valid_k8s_token_yields_namespace_service_account_and_pod() {
        let s = setup().await;
        let token = s.issuer.k8s_token_at("shop", "api", AUD, T0, 3600);
        let id = s.verifier.verify(&token).await.expect("valid token");
        assert_eq!(id.issuer, s.issuer.url());
        assert_eq!(id.subject, "system:serviceaccount:shop:api");
        let k8s = id.kubernetes.expect("kubernetes claims");
        assert_eq!(k8s.namespace, "shop");
        assert_eq!(k8s.service_account, "api");
        assert!(
            k8s.pod_name
                .as_deref()
                .is_some_and(|n| n.starts_with("api-"))
        );
        assert_eq!(k8s.pod_uid.as_deref().map(str::len), Some(36));
        assert!(id.bootstrap.is_none());
    }

    #[tokio::test]
    async fn k8s_claim_without_namespace_is_invalid() {
        let s = setup().await;
        let mut c = s.issuer.k8s_claims("shop", "api", AUD, T0, 600);
        c["kubernetes.io"]
            .as_object_mut()
            .expect("object")
            .remove("namespace");
        let token = s.issuer.token(Jws::RS256, c);
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("namespace")
        ));
    }

    #[tokio::test]
    async fn valid_plain_oidc_token_yields_subject() {
        let s = setup().await;
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        let id = s.verifier.verify(&token).await.expect("valid token");
        assert_eq!(id.subject, "spiffe://example.org/billing");
        assert_eq!(id.issuer, s.issuer.url());
        assert_eq!(id.kubernetes, None);
    }

    async fn accepts(alg: Jws) {
        let s = setup().await;
        let token = s.issuer.token(alg, claims(&s.issuer.url()));
        let id = s.verifier.verify(&token).await;
        assert_eq!(
            id.map(|i| i.subject),
            Ok("spiffe://example.org/billing".to_owned())
        );
    }

    #[tokio::test]
    async fn rs256_accepted() {
        accepts(Jws::RS256).await;
    }

    #[tokio::test]
    async fn es256_accepted() {
        accepts(Jws::ES256).await;
    }

    #[tokio::test]
    async fn eddsa_accepted() {
        accepts(Jws::EdDSA).await;
    }

    #[tokio::test]
    async fn missing_sub_is_invalid_claims() {
        let s = setup().await;
        let token = s
            .issuer
            .token(Jws::RS256, without(claims(&s.issuer.url()), "sub"));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("sub")
        ));
    }

    #[tokio::test]
    async fn identity_claims_over_their_bounds_are_refused_without_echo() {
        let s = setup().await;
        let iss = s.issuer.url();
        let sub = |n: usize| format!("{}Z", "s".repeat(n - 1));
        let at_bound = s.issuer.token(
            Jws::RS256,
            with(claims(&iss), "sub", json!(sub(MAX_SUBJECT_BYTES))),
        );
        let id = s.verifier.verify(&at_bound).await.expect("at the bound");
        assert_eq!(id.subject.len(), MAX_SUBJECT_BYTES);
        let over = s.issuer.token(
            Jws::RS256,
            with(claims(&iss), "sub", json!(sub(MAX_SUBJECT_BYTES + 1))),
        );
        match s.verifier.verify(&over).await {
            Err(AuthnError::InvalidClaims(m)) => {
                assert!(m.contains("`sub` is 1025 bytes"), "{m}");
                assert!(!m.contains("sss"), "the value is not echoed: {m}");
            }
            other => panic!("expected InvalidClaims, got {other:?}"),
        }
        let long = "n".repeat(MAX_KUBERNETES_NAME_BYTES + 1);
        for path in [
            &["namespace"][..],
            &["serviceaccount", "name"],
            &["pod", "name"],
            &["pod", "uid"],
        ] {
            let mut c = s.issuer.k8s_claims("shop", "api", AUD, T0, 600);
            let mut at = &mut c["kubernetes.io"];
            for p in path {
                at = &mut at[*p];
            }
            *at = json!(long);
            let token = s.issuer.token(Jws::RS256, c);
            assert!(
                matches!(
                    s.verifier.verify(&token).await,
                    Err(AuthnError::InvalidClaims(m)) if m.contains(&path.join(".")) && m.contains("254 bytes")
                ),
                "{path:?}"
            );
        }
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let s = setup().await;
        let token = s.issuer.forge_alg_none(claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::AlgorithmNotAllowed("none".into()))
        );
        assert_eq!(s.issuer.jwks_fetches(), 0, "refused before any key lookup");
    }

    #[tokio::test]
    async fn hs256_signed_with_the_rsa_public_key_is_refused() {
        let s = setup().await;
        let token = s
            .issuer
            .forge_hs256_with_public_key(claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::AlgorithmNotAllowed("HS256".into()))
        );
    }

    #[tokio::test]
    async fn algorithm_off_the_issuer_allow_list_is_refused() {
        let s = setup_with(|c, _| c.algorithms = Some(vec![Algorithm::RS256])).await;
        let token = s.issuer.token(Jws::ES256, claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::AlgorithmNotAllowed("ES256".into()))
        );
    }

    #[tokio::test]
    async fn alg_that_does_not_fit_the_named_key_is_refused() {
        let s = setup().await;
        // An ES256 token whose header names the RSA key.
        let token = s.issuer.token(Jws::ES256, claims(&s.issuer.url()));
        let rsa_kid = s.issuer.current_kid(Jws::RS256);
        let header = json!({"alg": "ES256", "kid": rsa_kid, "typ": "JWT"});
        let rest = token.split_once('.').expect("three segments").1;
        let forged = format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("json"))
        );
        assert_eq!(
            s.verifier.verify(&forged).await,
            Err(AuthnError::AlgorithmNotAllowed(
                "alg does not fit the key's type".into()
            ))
        );
    }

    #[tokio::test]
    async fn signature_by_an_untrusted_key_is_bad_signature() {
        let s = setup().await;
        let token = s.issuer.sign_with_untrusted_key(claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::BadSignature)
        );
    }

    #[tokio::test]
    async fn tampered_payload_is_bad_signature_for_each_key_type() {
        let s = setup().await;
        for alg in [Jws::RS256, Jws::ES256, Jws::EdDSA] {
            let token = s.issuer.token(alg, claims(&s.issuer.url()));
            assert!(s.verifier.verify(&token).await.is_ok(), "{alg:?}");
            let mut parts: Vec<&str> = token.split('.').collect();
            let evil = with(claims(&s.issuer.url()), "sub", json!("admin"));
            let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).expect("json"));
            parts[1] = &payload;
            assert_eq!(
                s.verifier.verify(&parts.join(".")).await,
                Err(AuthnError::BadSignature),
                "{alg:?}"
            );
        }
    }

    #[tokio::test]
    async fn audience_as_one_string_and_malformed_audiences() {
        let s = setup().await;
        let s = &s;
        let verify = |aud: Value| async move {
            let token = s
                .issuer
                .token(Jws::RS256, with(claims(&s.issuer.url()), "aud", aud));
            s.verifier.verify(&token).await
        };
        assert!(verify(json!("other")).await.is_ok());
        assert_eq!(
            verify(json!("someone-else")).await,
            Err(AuthnError::WrongAudience)
        );
        for bad in [json!(7), json!(["other", 7]), json!({"aud": "other"})] {
            assert_eq!(
                verify(bad.clone()).await,
                Err(AuthnError::InvalidClaims("`aud` has the wrong type".into())),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_decoded_token_debug_prints_no_part_of_the_token() {
        let s = setup().await;
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        let jwt = parse_jwt(&token, 16 * 1024).expect("parses");
        let shown = format!("{jwt:?}");
        assert!(shown.contains("RS256"), "{shown}");
        for part in token.split('.') {
            assert!(!shown.contains(part), "{shown}");
        }
        assert!(!shown.contains("spiffe"), "no claim in {shown}");
    }

    #[tokio::test]
    async fn a_signature_that_is_not_base64url_is_malformed() {
        let s = setup().await;
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        let (signed, _) = token.rsplit_once('.').expect("three segments");
        assert!(matches!(
            s.verifier.verify(&format!("{signed}.not*base64")).await,
            Err(AuthnError::Malformed(m)) if m.contains("signature")
        ));
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let s = setup().await;
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        s.clock.advance(Duration::from_secs(600 + 30));
        assert_eq!(s.verifier.verify(&token).await, Err(AuthnError::Expired));
    }

    #[tokio::test]
    async fn missing_exp_is_invalid_claims() {
        let s = setup().await;
        let token = s
            .issuer
            .token(Jws::RS256, without(claims(&s.issuer.url()), "exp"));
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("exp")
        ));
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_not_yet_valid() {
        let s = setup().await;
        let c = with(claims(&s.issuer.url()), "nbf", json!(T0 + 31));
        let token = s.issuer.token(Jws::RS256, c);
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::NotYetValid)
        );
    }

    #[tokio::test]
    async fn iat_in_the_future_is_not_yet_valid() {
        let s = setup().await;
        let c = without(with(claims(&s.issuer.url()), "iat", json!(T0 + 120)), "nbf");
        let token = s.issuer.token(Jws::RS256, c);
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::NotYetValid)
        );
    }

    #[tokio::test]
    async fn leeway_is_honoured_at_both_ends() {
        let s = setup().await;
        let url = s.issuer.url();
        // nbf 30 s ahead of the clock: inside the 30 s leeway.
        let early = s
            .issuer
            .token(Jws::RS256, with(claims(&url), "nbf", json!(T0 + 30)));
        assert!(s.verifier.verify(&early).await.is_ok());
        // exp passed 29 s ago: still inside the leeway.
        let token = s.issuer.token(Jws::RS256, claims(&url));
        s.clock
            .set(std::time::UNIX_EPOCH + Duration::from_secs(T0 + 600 + 29));
        assert!(s.verifier.verify(&token).await.is_ok());
        // One more second and it is expired.
        s.clock.advance(Duration::from_secs(1));
        assert_eq!(s.verifier.verify(&token).await, Err(AuthnError::Expired));
    }

    #[tokio::test]
    async fn zero_leeway_means_none() {
        let s = setup_with(|c, _| c.leeway_seconds = 0).await;
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        s.clock.advance(Duration::from_secs(600));
        assert_eq!(s.verifier.verify(&token).await, Err(AuthnError::Expired));
    }

    #[test]
    fn leeway_above_the_maximum_is_refused_at_new() {
        let c = IssuerConfig {
            leeway_seconds: MAX_LEEWAY_SECONDS + 1,
            ..cfg("https://issuer.example.com", JwksSource::Discovery)
        };
        let err = JwtVerifier::new(
            &[c],
            &LimitsConfig::default(),
            Arc::new(ManualClock::at_unix(T0)),
            Metrics::new(),
        )
        .expect_err("leeway too large");
        assert!(
            matches!(&err, IssuerConfigError::Leeway { issuer, leeway_seconds }
                if issuer == "https://issuer.example.com" && *leeway_seconds == MAX_LEEWAY_SECONDS + 1),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.contains("https://issuer.example.com") && err.contains("leeway"),
            "{err}"
        );
    }

    #[test]
    fn a_min_refresh_interval_below_the_floor_is_refused_at_new() {
        let build = |secs: u64| {
            let c = IssuerConfig {
                min_refresh_interval_seconds: secs,
                ..cfg("https://issuer.example.com", JwksSource::Discovery)
            };
            JwtVerifier::new(
                &[c],
                &LimitsConfig::default(),
                Arc::new(ManualClock::at_unix(T0)),
                Metrics::new(),
            )
        };
        for secs in [0, MIN_JWKS_REFRESH_FLOOR_SECONDS - 1] {
            let err = build(secs).expect_err("below the floor");
            assert!(
                matches!(&err, IssuerConfigError::MinRefreshInterval { issuer, min_refresh_interval_seconds }
                    if issuer == "https://issuer.example.com" && *min_refresh_interval_seconds == secs),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("min_refresh_interval_seconds"),
                "{err}"
            );
        }
        build(MIN_JWKS_REFRESH_FLOOR_SECONDS).expect("the floor itself is accepted");
    }

    #[tokio::test]
    async fn wrong_audience_is_refused() {
        let s = setup().await;
        let c = with(claims(&s.issuer.url()), "aud", json!(["someone-else"]));
        let token = s.issuer.token(Jws::RS256, c);
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::WrongAudience)
        );
    }

    #[tokio::test]
    async fn missing_audience_is_refused() {
        let s = setup().await;
        let token = s
            .issuer
            .token(Jws::RS256, without(claims(&s.issuer.url()), "aud"));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::WrongAudience)
        );
    }

    #[tokio::test]
    async fn any_configured_audience_in_a_list_is_accepted() {
        let s = setup().await;
        let c = with(claims(&s.issuer.url()), "aud", json!(["x", "other"]));
        let token = s.issuer.token(Jws::RS256, c);
        assert!(s.verifier.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn more_than_32_audiences_is_invalid() {
        let s = setup().await;
        let many: Vec<String> = (0..33).map(|i| format!("aud-{i}")).collect();
        let c = with(claims(&s.issuer.url()), "aud", json!(many));
        let token = s.issuer.token(Jws::RS256, c);
        assert!(matches!(
            s.verifier.verify(&token).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("32")
        ));
    }

    #[tokio::test]
    async fn wrong_issuer_is_untrusted_and_fetches_nothing() {
        let s = setup().await;
        let token = s
            .issuer
            .token(Jws::RS256, claims("https://attacker.example.com"));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::UntrustedIssuer)
        );
        assert_eq!(s.issuer.jwks_fetches() + s.issuer.discovery_fetches(), 0);
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_once_then_is_unknown_key() {
        let s = setup().await;
        assert!(s.verifier.refresh_all().await.is_empty());
        assert_eq!(s.issuer.jwks_fetches(), 1);
        s.clock.advance(Duration::from_secs(11));
        let token = s.issuer.sign_with_unknown_kid(claims(&s.issuer.url()));
        assert_eq!(s.verifier.verify(&token).await, Err(AuthnError::UnknownKey));
        assert_eq!(s.issuer.jwks_fetches(), 2, "exactly one on-demand refresh");
    }

    #[tokio::test]
    async fn rotated_key_is_accepted_after_on_demand_refresh() {
        let s = setup().await;
        assert!(s.verifier.refresh_all().await.is_empty());
        let new_kid = s.issuer.rotate();
        s.clock.advance(Duration::from_secs(11));
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        assert!(token_kid(&token) == new_kid);
        assert!(s.verifier.verify(&token).await.is_ok());
        assert_eq!(s.issuer.jwks_fetches(), 2);
        // The next token with that kid needs no fetch.
        assert!(s.verifier.verify(&token).await.is_ok());
        assert_eq!(s.issuer.jwks_fetches(), 2);
    }

    fn token_kid(token: &str) -> String {
        parse_unverified(token, 1 << 20)
            .expect("parses")
            .0
            .kid
            .expect("kid")
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_are_rate_limited() {
        let s = setup().await;
        assert!(s.verifier.refresh_all().await.is_empty());
        s.clock.advance(Duration::from_secs(11));
        let url = s.issuer.url();
        let tokens: Vec<String> = (0..20)
            .map(|_| s.issuer.sign_with_unknown_kid(claims(&url)))
            .collect();
        let results =
            futures_util::future::join_all(tokens.iter().map(|t| s.verifier.verify(t))).await;
        assert!(results.iter().all(|r| *r == Err(AuthnError::UnknownKey)));
        assert_eq!(s.issuer.jwks_fetches(), 2, "20 bad kids, one refresh");
        for t in &tokens {
            assert_eq!(s.verifier.verify(t).await, Err(AuthnError::UnknownKey));
        }
        assert_eq!(s.issuer.jwks_fetches(), 2);
        // After the minimum interval, one more refresh is allowed.
        s.clock.advance(Duration::from_secs(10));
        assert_eq!(
            s.verifier.verify(&tokens[0]).await,
            Err(AuthnError::UnknownKey)
        );
        assert_eq!(s.issuer.jwks_fetches(), 3);
    }

    #[tokio::test]
    async fn first_verify_fetches_keys_on_demand() {
        let s = setup().await;
        assert_eq!(s.verifier.issuers_without_keys(), vec![s.issuer.url()]);
        let token = s.issuer.token(Jws::ES256, claims(&s.issuer.url()));
        assert!(s.verifier.verify(&token).await.is_ok());
        assert_eq!(s.issuer.jwks_fetches(), 1);
        assert_eq!(s.issuer.discovery_fetches(), 1);
        assert!(s.verifier.issuers_without_keys().is_empty());
    }

    #[tokio::test]
    async fn issuer_down_keeps_the_last_good_keys() {
        let s = setup().await;
        let url = s.issuer.url();
        assert!(s.verifier.refresh_all().await.is_empty());
        s.issuer.set_available(false);
        let failed = s.verifier.refresh_all().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, url);
        assert!(failed[0].1.contains("503"), "{}", failed[0].1);
        let token = s.issuer.token(Jws::EdDSA, claims(&url));
        assert!(s.verifier.verify(&token).await.is_ok());
        let rendered = s.metrics.render();
        for result in ["ok", "error"] {
            let line =
                format!("lanyard_jwks_refresh_total{{issuer=\"{url}\",result=\"{result}\"}} 1");
            assert!(rendered.contains(&line), "{line} not in\n{rendered}");
        }
    }

    #[tokio::test]
    async fn issuer_down_with_nothing_cached_is_keys_unavailable() {
        let s = setup().await;
        s.issuer.set_available(false);
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::KeysUnavailable)
        );
    }

    #[tokio::test]
    async fn token_without_kid_needs_exactly_one_usable_key() {
        let s = setup().await;
        let url = s.issuer.url();
        let token = s.issuer.token_without_kid(Jws::ES256, claims(&url));
        assert!(s.verifier.verify(&token).await.is_ok());
        // A second EC key makes a kid-less token ambiguous.
        s.issuer.rotate_alg(Jws::ES256);
        assert!(s.verifier.refresh_all().await.is_empty());
        let token = s.issuer.token_without_kid(Jws::ES256, claims(&url));
        assert_eq!(s.verifier.verify(&token).await, Err(AuthnError::UnknownKey));
    }

    #[tokio::test]
    async fn megabyte_token_is_too_large_without_decoding() {
        let s = setup().await;
        let big = format!("{}.{}.{}", "e".repeat(1 << 19), "e".repeat(1 << 19), "sig");
        assert_eq!(s.verifier.verify(&big).await, Err(AuthnError::TooLarge));
        assert_eq!(s.issuer.jwks_fetches() + s.issuer.discovery_fetches(), 0);
    }

    #[test]
    fn malformed_base64_is_malformed() {
        let r = parse_unverified("eyJ!!!.e30.sig", 16 * 1024);
        assert!(matches!(r, Err(AuthnError::Malformed(m)) if m.contains("base64")));
        // Padding is not allowed in JWS compact serialization.
        let padded = format!("{}=.e30.sig", URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#));
        assert!(matches!(
            parse_unverified(&padded, 16 * 1024),
            Err(AuthnError::Malformed(_))
        ));
    }

    #[test]
    fn two_segments_are_malformed() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        assert!(matches!(
            parse_unverified(&format!("{h}.e30"), 16 * 1024),
            Err(AuthnError::Malformed(m)) if m.contains("3 dot-separated")
        ));
        assert!(matches!(
            parse_unverified(&format!("{h}.e30.sig.extra"), 16 * 1024),
            Err(AuthnError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_errors_never_echo_token_content() {
        let secretish = "c2VjcmV0LXZhbHVlLTEyMzQ";
        for token in [
            format!("{secretish}.{secretish}.x"),
            format!(
                "{}.{secretish}.x",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"XS999"}"#)
            ),
        ] {
            let err =
                match parse_unverified(&token, 16 * 1024).and_then(|(h, _)| accepted_alg(&h.alg)) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("accepted"),
                };
            assert!(!err.contains(secretish) && !err.contains("XS999"), "{err}");
        }
    }

    #[test]
    fn oversized_segment_is_malformed() {
        let big = "A".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(matches!(
            parse_unverified(&format!("e30.{big}.x"), 1 << 20),
            Err(AuthnError::Malformed(m)) if m.contains("64 KiB")
        ));
    }

    #[test]
    fn crit_header_is_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","crit":["b64"],"b64":false}"#);
        assert!(matches!(
            parse_unverified(&format!("{h}.e30.x"), 16 * 1024),
            Err(AuthnError::Malformed(m)) if m.contains("crit")
        ));
    }

    #[test]
    fn http_issuer_on_a_remote_host_is_refused_at_new() {
        for (issuer, jwks) in [
            ("http://issuer.example.com", JwksSource::Discovery),
            (
                "https://issuer.example.com",
                JwksSource::Url("http://keys.example.com/jwks".into()),
            ),
        ] {
            let err = JwtVerifier::new(
                &[cfg(issuer, jwks)],
                &LimitsConfig::default(),
                Arc::new(ManualClock::at_unix(T0)),
                Metrics::new(),
            )
            .expect_err("plain http to a remote host");
            assert!(
                matches!(&err, IssuerConfigError::KeySource { issuer: i, .. } if i == issuer),
                "{err:?}"
            );
            let err = err.to_string();
            assert!(err.contains(issuer) && err.contains("use https"), "{err}");
        }
        // Loopback over plain http is fine (tests, sidecar-local issuers).
        for ok in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
            JwtVerifier::new(
                &[cfg(ok, JwksSource::Discovery)],
                &LimitsConfig::default(),
                Arc::new(ManualClock::at_unix(T0)),
                Metrics::new(),
            )
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[tokio::test]
    async fn jwks_file_source_verifies_and_reloads_on_change() {
        let issuer = OidcIssuer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        let write = |v: Value| std::fs::write(&path, v.to_string()).expect("write jwks");
        write(issuer.jwks_json());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let verifier = JwtVerifier::new(
            &[cfg(&issuer.url(), JwksSource::File(path.clone()))],
            &LimitsConfig::default(),
            clock.clone(),
            Metrics::new(),
        )
        .expect("file source loads at new()");
        let token = issuer.token(Jws::RS256, claims(&issuer.url()));
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(issuer.jwks_fetches() + issuer.discovery_fetches(), 0);

        // A key the file does not have yet is unknown; once the file has it, it verifies.
        issuer.rotate();
        let rotated = issuer.token(Jws::RS256, claims(&issuer.url()));
        clock.advance(Duration::from_secs(11));
        assert_eq!(verifier.verify(&rotated).await, Err(AuthnError::UnknownKey));
        write(issuer.jwks_json());
        clock.advance(Duration::from_secs(11));
        assert!(verifier.verify(&rotated).await.is_ok());
        assert_eq!(issuer.jwks_fetches(), 0, "never fetched over HTTP");
    }

    #[test]
    fn unreadable_jwks_file_is_refused_at_new() {
        let err = JwtVerifier::new(
            &[cfg(
                "https://issuer.example.com",
                JwksSource::File("does/not/exist.json".into()),
            )],
            &LimitsConfig::default(),
            Arc::new(ManualClock::at_unix(T0)),
            Metrics::new(),
        )
        .expect_err("missing file");
        assert!(
            matches!(err, IssuerConfigError::KeySource { .. }),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.contains("https://issuer.example.com") && err.contains("does/not/exist.json"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn jwks_above_max_jwks_bytes_is_refused() {
        let s = setup_with(|_, l| l.max_jwks_bytes = 512).await;
        let failed = s.verifier.refresh_all().await;
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].1.contains("larger than 512 bytes"),
            "{}",
            failed[0].1
        );
        let token = s.issuer.token(Jws::RS256, claims(&s.issuer.url()));
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::KeysUnavailable)
        );
    }

    #[test]
    fn duplicate_issuer_is_refused_at_new() {
        let c = cfg("https://issuer.example.com", JwksSource::Discovery);
        let err = JwtVerifier::new(
            &[c.clone(), c],
            &LimitsConfig::default(),
            Arc::new(ManualClock::at_unix(T0)),
            Metrics::new(),
        )
        .expect_err("duplicate");
        assert_eq!(
            err,
            IssuerConfigError::Duplicate {
                issuer: "https://issuer.example.com".into()
            }
        );
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[tokio::test]
    async fn run_refresh_stops_on_shutdown_after_fetching() {
        let s = setup().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let v = s.verifier.clone();
        let task = tokio::spawn(async move {
            v.run_refresh(async {
                let _ = rx.await;
            })
            .await;
        });
        // Nothing cached: the loop fetches at once (the deadline only allows for a loaded
        // machine).
        let end = Instant::now() + Duration::from_secs(10);
        while s.issuer.jwks_fetches() == 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.issuer.jwks_fetches(), 1);
        tx.send(()).expect("receiver alive");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("run_refresh returns on shutdown")
            .expect("no panic");
    }

    // --- SPIFFE trust domains: JWT-SVIDs (issue 16) ---

    use lanyard_test_support::{SpiffeTrustDomain, SvidAlg};

    /// A verifier trusting each `(trust domain, issuer name)`, its bundle fetched from the
    /// bundle endpoint.
    fn spiffe_verifier(
        domains: &[(&SpiffeTrustDomain, &str)],
        clock: Arc<ManualClock>,
    ) -> JwtVerifier {
        let cfgs: Vec<IssuerConfig> = domains
            .iter()
            .map(|(td, name)| spiffe_cfg(name, td, JwksSource::Url(td.bundle_url())))
            .collect();
        JwtVerifier::new(&cfgs, &LimitsConfig::default(), clock, Metrics::new())
            .expect("valid SPIFFE issuers")
    }

    fn spiffe_cfg(name: &str, td: &SpiffeTrustDomain, jwks: JwksSource) -> IssuerConfig {
        IssuerConfig {
            spiffe_trust_domain: Some(td.trust_domain().to_owned()),
            algorithms: None,
            ..cfg(name, jwks)
        }
    }

    #[tokio::test]
    async fn jwt_svids_of_every_allowed_algorithm_verify_with_and_without_iss() {
        let td = SpiffeTrustDomain::start("example.org").await;
        let name = "spiffe://example.org";
        let v = spiffe_verifier(&[(&td, name)], Arc::new(ManualClock::at_unix(T0)));
        for alg in SvidAlg::ALL {
            // The spec's minimal shape: sub, aud (a string), exp; no iss.
            let minimal = td.claims("/ns/shop/sa/api", json!(AUD), T0, 300);
            let id = v
                .verify(&td.svid(alg, &minimal))
                .await
                .unwrap_or_else(|e| panic!("{alg:?} without iss: {e}"));
            assert_eq!(id.subject, "spiffe://example.org/ns/shop/sa/api");
            assert_eq!(id.spiffe_id.as_deref(), Some(id.subject.as_str()));
            assert_eq!(id.issuer, name);
            assert_eq!(id.kubernetes, None);
            // With iss, aud a list naming other audiences too, typ JOSE.
            let mut full = td.claims("/billing", json!(["other-service", AUD]), T0, 300);
            full["iss"] = json!(name);
            let id = v
                .verify(&td.svid_typed(alg, &full, Some("JOSE")))
                .await
                .unwrap_or_else(|e| panic!("{alg:?} with iss: {e}"));
            assert_eq!(
                id.spiffe_id.as_deref(),
                Some("spiffe://example.org/billing")
            );
            assert_eq!(id.claims.get("iss"), Some(&json!(name)));
            // No typ at all is fine too.
            assert!(v.verify(&td.svid_typed(alg, &minimal, None)).await.is_ok());
        }
        assert_eq!(td.fetches(), 1, "one bundle fetch for every algorithm");
    }

    #[tokio::test]
    async fn a_jwt_svid_signed_with_another_trust_domains_key_is_refused() {
        let a = SpiffeTrustDomain::start("a.example").await;
        let b = SpiffeTrustDomain::start("b.example").await;
        let v = spiffe_verifier(
            &[(&a, "spiffe://a.example"), (&b, "spiffe://b.example")],
            Arc::new(ManualClock::at_unix(T0)),
        );
        assert!(v.refresh_all().await.is_empty());
        let b_sub = b.claims("/payments", json!(AUD), T0, 300);
        // Genuine: B's key for B's SPIFFE ID.
        assert!(v.verify(&b.svid(SvidAlg::ES256, &b_sub)).await.is_ok());
        // A's key for a SPIFFE ID of B, without iss: verified only against B's bundle,
        // which does not have A's key.
        for alg in [SvidAlg::ES256, SvidAlg::RS256, SvidAlg::PS512] {
            assert_eq!(
                v.verify(&a.svid(alg, &b_sub)).await,
                Err(AuthnError::UnknownKey),
                "{alg:?}"
            );
        }
        // Claiming A as issuer does not help: A's bundle speaks only for A's trust domain,
        // and that is checked before any key lookup.
        let fetches = (a.fetches(), b.fetches());
        let mut via_a = b_sub.clone();
        via_a["iss"] = json!("spiffe://a.example");
        assert!(matches!(
            v.verify(&a.svid(SvidAlg::ES256, &via_a)).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("another trust domain")
        ));
        // Claiming B as issuer: B's keys, and A's key is not among them.
        let mut via_b = b_sub.clone();
        via_b["iss"] = json!("spiffe://b.example");
        assert_eq!(
            v.verify(&a.svid(SvidAlg::ES256, &via_b)).await,
            Err(AuthnError::UnknownKey)
        );
        assert_eq!(a.fetches(), fetches.0, "A's bundle is never consulted");
        // A trust domain no issuer has: untrusted, nothing fetched.
        let c = json!({"sub": "spiffe://c.example/x", "aud": AUD, "exp": T0 + 300});
        assert_eq!(
            v.verify(&a.svid(SvidAlg::ES256, &c)).await,
            Err(AuthnError::UntrustedIssuer)
        );
        // No iss and a sub that is not a SPIFFE ID.
        let k8s = json!({"sub": "system:serviceaccount:shop:api", "aud": AUD, "exp": T0 + 300});
        assert!(matches!(
            v.verify(&a.svid(SvidAlg::ES256, &k8s)).await,
            Err(AuthnError::InvalidClaims(m)) if m.contains("not a SPIFFE ID")
        ));
    }

    #[tokio::test]
    async fn a_jwt_svid_is_never_a_kubernetes_identity_and_needs_a_valid_spiffe_id() {
        let td = SpiffeTrustDomain::start("example.org").await;
        let v = spiffe_verifier(
            &[(&td, "https://oidc.example.org")],
            Arc::new(ManualClock::at_unix(T0)),
        );
        let mut c = td.claims("/ns/shop/sa/api", json!(AUD), T0, 300);
        c["kubernetes.io"] = json!({"namespace": "shop", "serviceaccount": {"name": "api"},
            "pod": {"name": "api-1", "uid": "u"}});
        let id = v.verify(&td.svid(SvidAlg::ES384, &c)).await.expect("valid");
        assert_eq!(
            id.kubernetes, None,
            "pod claims in a JWT-SVID are not a pod identity"
        );
        assert!(id.claims.contains_key("kubernetes.io"));
        for (sub, why) in [
            ("spiffe://example.org/a//b", "segment"),
            ("spiffe://example.org/a/../b", "segment"),
            ("spiffe://example.org/a/", "segment"),
            ("spiffe://example.org/a?b", "characters"),
            (
                "spiffe://Example.org/a",
                "trust domain is empty or has characters",
            ),
            ("spiffe://other.org/a", "another trust domain"),
            ("https://example.org/a", "not a spiffe"),
        ] {
            let mut c = td.claims("/x", json!(AUD), T0, 300);
            c["sub"] = json!(sub);
            c["iss"] = json!("https://oidc.example.org");
            let r = v.verify(&td.svid(SvidAlg::ES256, &c)).await;
            assert!(
                matches!(&r, Err(AuthnError::InvalidClaims(m)) if m.contains(why)),
                "{sub}: {r:?}"
            );
        }
        let c = td.claims("/x", json!(AUD), T0, 300);
        assert!(matches!(
            v.verify(&td.svid_typed(SvidAlg::ES256, &c, Some("at+jwt"))).await,
            Err(AuthnError::Malformed(m)) if m.contains("typ")
        ));
    }

    #[test]
    fn spiffe_ids_are_parsed_by_the_spec() {
        assert_eq!(spiffe_id("spiffe://example.org"), Ok(("example.org", "")));
        assert_eq!(
            spiffe_id("spiffe://example.org/ns/shop/sa/api"),
            Ok(("example.org", "/ns/shop/sa/api"))
        );
        assert_eq!(
            spiffe_id("spiffe://td_1-x.y/A.b-c_d"),
            Ok(("td_1-x.y", "/A.b-c_d"))
        );
        for bad in [
            "SPIFFE://example.org/a",
            "spiffe://",
            "spiffe:///a",
            "spiffe://example.org:8080/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a#frag",
            "spiffe://example.org/%41",
            "spiffe://example.org/.",
        ] {
            assert!(spiffe_id(bad).is_err(), "{bad}");
        }
        assert!(spiffe_id(&format!("spiffe://e.org/{}", "a".repeat(2100))).is_err());
    }

    #[tokio::test]
    async fn bundle_endpoint_over_tls_trusts_only_the_configured_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = lanyard_test_support::TestPki::generate(dir.path());
        let td = SpiffeTrustDomain::start_https("example.org", &pki).await;
        assert!(td.bundle_url().starts_with("https://"));
        let clock = Arc::new(ManualClock::at_unix(T0));
        let token = td.svid(SvidAlg::RS256, &td.claims("/a", json!(AUD), T0, 300));

        let untrusting = spiffe_cfg(
            "spiffe://example.org",
            &td,
            JwksSource::Url(td.bundle_url()),
        );
        let v = JwtVerifier::new(
            &[untrusting],
            &LimitsConfig::default(),
            clock.clone(),
            Metrics::new(),
        )
        .expect("config");
        assert_eq!(v.verify(&token).await, Err(AuthnError::KeysUnavailable));
        assert_eq!(
            td.fetches(),
            0,
            "the TLS handshake failed before any request"
        );

        let mut trusting = spiffe_cfg(
            "spiffe://example.org",
            &td,
            JwksSource::Url(td.bundle_url()),
        );
        trusting.ca_file = Some(pki.ca_path());
        let v = JwtVerifier::new(&[trusting], &LimitsConfig::default(), clock, Metrics::new())
            .expect("config");
        assert!(v.verify(&token).await.is_ok());
        assert_eq!(td.fetches(), 1);
    }

    #[tokio::test]
    async fn a_bundle_file_is_a_trust_domain_source() {
        let td = SpiffeTrustDomain::start("example.org").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, td.bundle_json().to_string()).expect("write bundle");
        let v = JwtVerifier::new(
            &[spiffe_cfg(
                "spiffe://example.org",
                &td,
                JwksSource::File(path),
            )],
            &LimitsConfig::default(),
            Arc::new(ManualClock::at_unix(T0)),
            Metrics::new(),
        )
        .expect("bundle file loads at new()");
        let token = td.svid(SvidAlg::ES512, &td.claims("/a", json!(AUD), T0, 300));
        assert!(v.verify(&token).await.is_ok());
        assert_eq!(td.fetches(), 0);
    }

    #[tokio::test]
    async fn an_oidc_issuer_never_takes_a_token_without_iss_nor_jwt_svid_keys() {
        let s = setup().await;
        let token = s.issuer.token(
            Jws::RS256,
            without(
                with(claims("x"), "sub", json!("spiffe://example.org/a")),
                "iss",
            ),
        );
        assert_eq!(
            s.verifier.verify(&token).await,
            Err(AuthnError::UntrustedIssuer)
        );
        assert_eq!(s.issuer.jwks_fetches(), 0);
        let td = SpiffeTrustDomain::start("example.org").await;
        // A SPIFFE bundle configured as an OIDC JWKS: its jwt-svid keys are not `sig` keys.
        let err = super::super::jwks::KeySet::parse(
            td.bundle_json().to_string().as_bytes(),
            "iss",
            "test",
        )
        .expect_err("no sig keys");
        assert!(err.to_string().contains("usable signing key"), "{err}");
    }

    #[test]
    fn trust_domain_issuers_are_checked_at_new() {
        let build = |cfgs: Vec<IssuerConfig>| {
            JwtVerifier::new(
                &cfgs,
                &LimitsConfig::default(),
                Arc::new(ManualClock::at_unix(T0)),
                Metrics::new(),
            )
        };
        let td = |name: &str, domain: &str| IssuerConfig {
            spiffe_trust_domain: Some(domain.to_owned()),
            algorithms: None,
            ..cfg(
                name,
                JwksSource::Url("https://spire.example.org/bundle".into()),
            )
        };
        let msg = |r: Result<JwtVerifier, IssuerConfigError>| r.expect_err("refused").to_string();
        assert!(msg(build(vec![td("a", "Example.org")])).contains("not a trust domain name"));
        assert!(
            msg(build(vec![td("a", "example.org"), td("b", "example.org")]))
                .contains("same spiffe_trust_domain")
        );
        let mut eddsa = td("a", "example.org");
        eddsa.algorithms = Some(vec![Algorithm::ES256, Algorithm::EdDSA]);
        assert!(msg(build(vec![eddsa])).contains("EdDSA"));
        let mut discovery = td("https://spire.example.org", "example.org");
        discovery.jwks = JwksSource::Discovery;
        assert!(msg(build(vec![discovery])).contains("trust bundle"));
        // The default algorithms of a trust domain are the JWT-SVID ones.
        assert_eq!(td("a", "example.org").algorithms(), Algorithm::JWT_SVID);
        build(vec![td("a", "example.org"), td("b", "other.example")]).expect("two trust domains");
    }
}
