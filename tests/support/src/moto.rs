//! [`MotoServer`]: a real `moto_server` (PyPI `moto[server]`) on a free loopback port, behind
//! a small recording proxy so tests can count STS calls and read the exact parameters sent.
//!
//! `tests/peers/moto.sh` (run by `./test.sh`) installs moto and exports
//! `LANYARD_MOTO_SERVER`. moto answers STS's Query API faithfully but enforces nothing (any
//! role, any duration, credentials that never expire), so duration caps, scoping and expiry
//! are enforced and tested in lanyard's own code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::child::Probe;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One STS call as the proxy saw it: the Query API form parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsCall {
    /// `Action`, e.g. `AssumeRole`.
    pub action: String,
    /// Every form parameter (`RoleArn`, `Policy`, `Tags.member.1.Key`, ...), decoded.
    pub params: BTreeMap<String, String>,
    /// The access key id the call was signed with (from SigV4's `Credential=AKID/...`).
    pub access_key_id: Option<String>,
}

/// The access key id of a SigV4 `Authorization` header.
fn signing_key_id(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let rest = auth.split("Credential=").nth(1)?;
    rest.split('/').next().map(str::to_owned)
}

#[derive(Debug)]
struct ProxyState {
    upstream: String,
    calls: Mutex<Vec<StsCall>>,
    /// Calls still to refuse with `AccessDenied`, by action.
    refusals: Mutex<BTreeMap<String, usize>>,
    /// Calls still to answer 503 `ServiceUnavailable`, by action.
    outages: Mutex<BTreeMap<String, usize>>,
    /// Calls still to hold before forwarding, by action, and for how long.
    stalls: Mutex<BTreeMap<String, (usize, Duration)>>,
    client: reqwest::Client,
}

/// STS's answer when the caller may not perform an action: HTTP 403 with the Query API's
/// documented error body (`ErrorResponse/Error/{Type,Code,Message}`, `RequestId`), as real
/// STS sends it for an AssumeRole the role's trust policy does not allow.
fn access_denied(action: &str, params: &BTreeMap<String, String>, call: usize) -> Response {
    let resource = params.get("RoleArn").map_or("*", String::as_str);
    let request_id = format!("c6104cbe-af31-11e0-8154-{call:012x}");
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    \
         <Type>Sender</Type>\n    <Code>AccessDenied</Code>\n    <Message>User: \
         arn:aws:iam::123456789012:user/lanyard-broker is not authorized to perform: \
         sts:{action} on resource: {resource}</Message>\n  </Error>\n  \
         <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n"
    );
    let mut resp = (StatusCode::FORBIDDEN, body).into_response();
    let headers = resp.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/xml"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    resp
}

/// STS's answer when it cannot serve for now: HTTP 503 `ServiceUnavailable` in the Query
/// API's error XML (a server fault, which clients retry).
fn service_unavailable(call: usize) -> Response {
    let request_id = format!("d7215dcf-b042-11e0-9265-{call:012x}");
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    \
         <Type>Receiver</Type>\n    <Code>ServiceUnavailable</Code>\n    <Message>Service is \
         unable to handle request.</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n\
         </ErrorResponse>\n"
    );
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/xml"));
    resp
}

/// Takes one from the count of `action` in `map`, if any is left.
fn take_one(map: &Mutex<BTreeMap<String, usize>>, action: &str) -> bool {
    match map.lock().expect("fault map").get_mut(action) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

/// A running moto server and its recording proxy. Both stop when dropped.
#[derive(Debug)]
pub struct MotoServer {
    /// The proxy's URL (`http://127.0.0.1:<port>`): point STS clients here.
    pub url: String,
    /// moto's own URL, for direct calls that should not be recorded.
    pub moto_url: String,
    child: Option<Child>,
    state: Arc<ProxyState>,
    proxy: tokio::task::JoinHandle<()>,
}

/// The Python with boto3 that `tests/peers/moto.sh` installed beside moto; panics with the
/// fix when it is missing.
pub fn boto3_python() -> String {
    match std::env::var("LANYARD_MOTO_PYTHON") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        _ => panic!(
            "LANYARD_MOTO_PYTHON is not set or not a file: these tests run boto3 as an \
             unmodified AWS SDK. Run ./test.sh (tests/peers/moto.sh installs it), or \
             `source tests/peers/moto.sh` before `cargo test`."
        ),
    }
}

/// Where `tests/peers/moto.sh` put `moto_server`; panics with the fix when it is missing.
pub fn moto_server_path() -> String {
    match std::env::var("LANYARD_MOTO_SERVER") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        _ => panic!(
            "LANYARD_MOTO_SERVER is not set or not a file: these tests need a real moto_server. \
             Run ./test.sh (it installs moto via tests/peers/moto.sh), or \
             `source tests/peers/moto.sh` before `cargo test`."
        ),
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: BTreeMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(action) = params.get("Action") {
        let call = {
            let mut calls = state.calls.lock().expect("calls");
            calls.push(StsCall {
                action: action.clone(),
                params: params.clone(),
                access_key_id: signing_key_id(&headers),
            });
            calls.len()
        };
        if take_one(&state.refusals, action) {
            return access_denied(action, &params, call);
        }
        if take_one(&state.outages, action) {
            return service_unavailable(call);
        }
        let stall = match state.stalls.lock().expect("stalls").get_mut(action) {
            Some((left, pause)) if *left > 0 => {
                *left -= 1;
                Some(*pause)
            }
            _ => None,
        };
        if let Some(pause) = stall {
            tokio::time::sleep(pause).await;
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = state
        .client
        .request(method, format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ctype = resp.headers().get("content-type").cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            if let Some(c) = ctype {
                out.headers_mut().insert("content-type", c);
            }
            out
        }
        Err(_) => (StatusCode::BAD_GATEWAY, "moto is not running").into_response(),
    }
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and a recording proxy in front of
    /// it, and waits until moto answers.
    pub async fn start() -> Self {
        let bin = moto_server_path();
        let (child, port) = crate::child::spawn_ready(
            "moto_server",
            Duration::from_secs(30),
            |port| {
                Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
            },
            |client, port| async move {
                match client
                    .get(format!("http://127.0.0.1:{port}/moto-api/"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Probe::Ready,
                    _ => Probe::NotYet,
                }
            },
            String::new,
        )
        .await;
        let moto_url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(ProxyState {
            upstream: moto_url.clone(),
            calls: Mutex::new(Vec::new()),
            refusals: Mutex::new(BTreeMap::new()),
            outages: Mutex::new(BTreeMap::new()),
            stalls: Mutex::new(BTreeMap::new()),
            client: reqwest::Client::new(),
        });
        // The proxy keeps its listener from bind to serve, so it has no such race.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let proxy = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            moto_url,
            child: Some(child),
            state,
            proxy,
        }
    }

    /// Every recorded call.
    pub fn calls(&self) -> Vec<StsCall> {
        self.state.calls.lock().expect("calls").clone()
    }

    /// Recorded calls of one action (e.g. `AssumeRole`).
    pub fn calls_of(&self, action: &str) -> Vec<StsCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }

    /// Answers the next `calls` calls of `action` (e.g. `AssumeRole`) as STS does when the
    /// caller is not allowed to make them: 403 `AccessDenied` in STS's documented error XML,
    /// without reaching moto (which enforces no IAM). The calls are still recorded.
    pub fn refuse_next(&self, action: &str, calls: usize) {
        self.state
            .refusals
            .lock()
            .expect("refusals")
            .insert(action.to_owned(), calls);
    }

    /// Answers the next `calls` calls of `action` as STS does when it cannot serve for now:
    /// 503 `ServiceUnavailable`, without reaching moto. The calls are still recorded. (The
    /// broker's AWS SDK retries a 503 once, so one failed issuance takes two calls.)
    pub fn unavailable_next(&self, action: &str, calls: usize) {
        self.state
            .outages
            .lock()
            .expect("outages")
            .insert(action.to_owned(), calls);
    }

    /// Holds the next `calls` calls of `action` for `pause` before forwarding them (a slow
    /// STS). The calls are recorded when they arrive.
    pub fn stall_next(&self, action: &str, calls: usize, pause: Duration) {
        self.state
            .stalls
            .lock()
            .expect("stalls")
            .insert(action.to_owned(), (calls, pause));
    }

    /// Stops moto (the proxy stays up and answers 502, as a dead upstream behind a load
    /// balancer would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The broker config block (top-level `backends:`) that points the `aws-sts` backend at
    /// the proxy, with limits high enough for load tests and a cache refresh at half life.
    pub fn broker_backend_config(&self) -> String {
        format!(
            "backends:\n  aws_sts:\n    endpoint_url: \"{}\"\n    region: us-east-1\n    max_requests_per_second: 1000\n    cache_refresh_fraction: 0.5\n",
            self.url
        )
    }

    /// An AWS SDK configuration for the proxy: region `us-east-1`, static test credentials
    /// (moto accepts any), no retries.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        self.sdk_config_with(aws_sdk_sts::config::Credentials::new(
            "lanyard-test-key",
            "lanyard-test-secret",
            None,
            None,
            "lanyard-test",
        ))
    }

    /// Like [`MotoServer::sdk_config`] with the given credentials (e.g. ones the broker
    /// issued), talking to moto directly.
    pub fn sdk_config_with(
        &self,
        creds: aws_sdk_sts::config::Credentials,
    ) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(creds))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
        self.proxy.abort();
    }
}

/// The role ARN [`STS_POLICY`] assumes.
pub const STS_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

/// What moto's GetCallerIdentity answers for a session of [`STS_ROLE_ARN`]:
/// `<this><session name>`.
pub const ASSUMED_ROLE_ARN_PREFIX: &str = "arn:aws:sts::123456789012:assumed-role/app/";

/// A policy file granting `shop/api` the `aws-sts` role `aws-read`: AssumeRole of
/// [`STS_ROLE_ARN`] with a session policy scoped to the namespace and service account, a
/// 900 s default TTL and a 3600 s cap.
pub const STS_POLICY: &str = r#"
roles:
  aws-read:
    backend: aws-sts
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
    settings:
      role_arn: arn:aws:iam::123456789012:role/app
      session_policy:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: ["s3:GetObject"]
            Resource: ["arn:aws:s3:::data/{{namespace}}/{{service_account}}/*"]
rules:
  - name: shop-api
    match: {namespace: shop, service_account: api}
    roles: [aws-read]
"#;

/// A second policy file for the same identity: the `jwt` role `app`, so a pod holds an AWS
/// credential and one that is not.
pub const JWT_APP_POLICY: &str = r#"
roles:
  app:
    backend: jwt
    max_ttl_seconds: 600
    settings: {audience: app}
rules:
  - name: shop-api-app
    match: {namespace: shop, service_account: api}
    roles: [app]
"#;

/// Everything a zero-code AWS test needs, all real: STS (moto behind the recording proxy),
/// an OIDC issuer, the broker over TLS trusting both with [`STS_POLICY`] and
/// [`JWT_APP_POLICY`], and the files of pod `shop/api`.
#[derive(Debug)]
pub struct AwsStack {
    /// STS.
    pub moto: MotoServer,
    /// The broker.
    pub broker: crate::TestBroker,
    /// The pod's token file and secrets directory.
    pub work: crate::Workload,
    /// The issuer of the pod's token.
    pub issuer: crate::OidcIssuer,
}

impl AwsStack {
    /// Starts it all; panics with the fix when `./test.sh`'s AWS environment is missing.
    pub async fn start() -> Self {
        assert!(
            std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
            "AWS_ACCESS_KEY_ID is not set: the broker's own AWS credentials come from the \
             standard chain; run ./test.sh (tests/peers/moto.sh exports dummy keys moto accepts)"
        );
        let moto = MotoServer::start().await;
        let issuer = crate::OidcIssuer::start().await;
        let broker = crate::TestBroker::start_with(
            Some(&issuer),
            crate::TestBrokerOptions {
                policies: vec![
                    ("aws.yaml".into(), STS_POLICY.into()),
                    ("app.yaml".into(), JWT_APP_POLICY.into()),
                ],
                extra_config: moto.broker_backend_config(),
                ..crate::TestBrokerOptions::default()
            },
        )
        .await;
        let work = crate::Workload::kubernetes(&issuer, "shop", "api");
        Self {
            moto,
            broker,
            work,
            issuer,
        }
    }

    /// Asserts that exactly one GetCallerIdentity reached STS, signed with `access_key_id`,
    /// and that the broker made exactly one AssumeRole for it.
    pub fn assert_one_call_signed_with(&self, access_key_id: &str) {
        let calls = self.moto.calls_of("GetCallerIdentity");
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].access_key_id.as_deref(), Some(access_key_id));
        let assumed = self.moto.calls_of("AssumeRole");
        assert_eq!(
            assumed.len(),
            1,
            "served from the broker's cache: {assumed:?}"
        );
        assert_eq!(assumed[0].params["RoleArn"], STS_ROLE_ARN);
    }
}
