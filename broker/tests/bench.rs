//! Benchmarks, ignored by default (numbers, not assertions). Run with moto installed:
//!
//! ```text
//! source tests/peers/moto.sh
//! cargo test -p lanyard-broker --test bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The HTTPS issuance figure wants a release build and `wrk` (`apt-get install wrk`):
//!
//! ```text
//! cargo test --release -p lanyard-broker --test bench -- --ignored --nocapture bench_https
//! ```
//!
//! Results and the machine they came from are in `docs/benchmarks.md`.

/// The allocator `lanyard-broker` runs with (`src/main.rs`), so the broker measured here
/// allocates the way the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use lanyard_test_support::{
    InProcessBroker, MotoServer, OidcIssuer, OpenBao, OpenBaoOptions, TestBroker,
    TestBrokerOptions, k8s_pod,
};

const JWT_POLICY: &str = r#"
roles:
  app:
    backend: jwt
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
rules:
  - name: shop
    match: {namespace: shop}
    roles: [app]
"#;

/// A broker for the HTTPS issuance bench and a pod token for it. With `gated`, the image gate
/// is on as production runs it: pod tokens gated by their pod's admission record
/// (`gate.pod_tokens: gate`), the record created first through `/v1/admission/validate` for a
/// pod of the clean test image (pinned by digest, its verdict then cached in the store), so
/// each issuance reads the record and the cached verdict. Without, the gate is off (pod tokens
/// name no image). Needs the test registry (`source tests/peers/images.sh`) when gated.
async fn issuance_broker(issuer: &OidcIssuer, gated: bool) -> (TestBroker, String) {
    use lanyard_test_support::admission::{POD, Review, container, pod, pod_spec};
    let dir = tempfile::tempdir().expect("tempdir");
    let webhook_token = format!("apiserver-{:016x}", fastrand::u64(..));
    let token_file = dir.path().join("apiserver-token");
    std::fs::write(&token_file, &webhook_token).expect("token file");
    let extra_config = if gated {
        format!(
            "gate:\n  insecure_loopback_registries: true\n  pod_tokens: gate\n  admission:\n    token_file: {}\n",
            token_file.display()
        )
    } else {
        String::new()
    };
    let broker = TestBroker::start_with(
        Some(issuer),
        TestBrokerOptions {
            policies: vec![("bench.yaml".into(), JWT_POLICY.into())],
            extra_config,
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let uid = lanyard_test_support::admission::uuid();
    let mut claims = issuer.k8s_claims(
        "shop",
        "api",
        "lanyard",
        lanyard_test_support::now_unix(),
        3600,
    );
    claims["kubernetes.io"]["pod"]["uid"] = serde_json::json!(uid);
    let token = issuer.token(jsonwebtoken::Algorithm::RS256, claims);
    if gated {
        let reg = std::env::var("LANYARD_TEST_REGISTRY")
            .expect("LANYARD_TEST_REGISTRY: `source tests/peers/images.sh` first");
        let opts = lanyard_scan::ScanOptions {
            insecure_loopback_registry: true,
            ..lanyard_scan::ScanOptions::default()
        };
        let tagged = format!("{reg}/lanyard/multistage-clean:1");
        let digest = lanyard_scan::resolve_digest(&tagged, &opts)
            .await
            .expect("resolve");
        let image = format!("{reg}/lanyard/multistage-clean@{digest}");
        let review = Review::create(
            POD,
            "shop",
            "api-0",
            pod(
                "shop",
                "api-0",
                &uid,
                pod_spec(&[], &[container("app", &image)]),
            ),
        );
        let answer: serde_json::Value = broker
            .http()
            .post(format!("{}/v1/admission/validate", broker.url))
            .bearer_auth(&webhook_token)
            .json(&review.to_json())
            .send()
            .await
            .expect("review")
            .json()
            .await
            .expect("json");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }
    // The token file must outlive the broker (it is re-read on every review).
    std::mem::forget(dir);
    (broker, token)
}

fn sts_policy(tags: &str) -> String {
    format!(
        r#"
roles:
  app:
    backend: aws-sts
    scope: ["s3:GetObject"]
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
    settings:
      role_arn: arn:aws:iam::123456789012:role/app
      resources: ["arn:aws:s3:::data/{{{{namespace}}}}/*"]
      session_tags: {tags}
rules:
  - name: shop
    match: {{namespace: shop}}
    roles: [app]
"#
    )
}

fn sts_config(moto: &MotoServer) -> String {
    format!(
        "backends:\n  aws_sts:\n    endpoint_url: \"{}\"\n    max_requests_per_second: 10000\n    max_concurrency: 32\n",
        moto.url
    )
}

/// Issues `n` credentials with `concurrency` tasks, each for its own pod; returns per second.
async fn throughput(b: &Arc<InProcessBroker>, n: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(concurrency) {
                b.issue(&k8s_pod("shop", "api", &format!("api-{i}")), None)
                    .await
                    .expect("issued");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_issuance_cached_sts_vs_jwt() {
    const N: usize = 2_000;
    let jwt = Arc::new(
        InProcessBroker::start(JWT_POLICY, "")
            .await
            .expect("jwt broker"),
    );
    throughput(&jwt, 100, 16).await; // warm up
    let jwt_rate = throughput(&jwt, N, 16).await;

    let moto = MotoServer::start().await;
    let sts = Arc::new(
        InProcessBroker::start(&sts_policy("true"), &sts_config(&moto))
            .await
            .expect("sts broker"),
    );
    throughput(&sts, 100, 16).await; // warm up: the one AssumeRole
    let sts_rate = throughput(&sts, N, 16).await;
    let calls = moto.calls_of("AssumeRole").len();
    println!(
        "BENCH issuance, {N} requests, 16 concurrent, in-process (audit + lease store included):\n  jwt: {jwt_rate:.0}/s\n  aws-sts cached: {sts_rate:.0}/s ({calls} AssumeRole call(s) for {} issuances)",
        N + 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_upstream_calls_per_thousand_pod_starts() {
    for (label, tags) in [
        ("session tags namespace+service_account (default)", "true"),
        (
            "session tags include pod_name (one session per pod)",
            "[namespace, service_account, pod_name]",
        ),
    ] {
        let moto = MotoServer::start().await;
        let b = Arc::new(
            InProcessBroker::start(&sts_policy(tags), &sts_config(&moto))
                .await
                .expect("broker"),
        );
        let started = Instant::now();
        throughput(&b, 1_000, 100).await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "BENCH 1,000 pod starts, {label}: {} AssumeRole calls, {secs:.2} s",
            moto.calls_of("AssumeRole").len()
        );
    }
}

/// How the crypto-only loop verifies the caller's token.
#[derive(Clone, Copy, Debug)]
enum Verify {
    /// `jsonwebtoken::decode` with `iss`/`aud`/`exp` checked (it parses the RSA key on every
    /// call).
    Jsonwebtoken,
    /// As the broker does it: the token decoded once, the signature checked with the key
    /// parsed when the JWKS was loaded. This is the faster of the two, so the ratio uses it.
    Parsed,
}

/// The crypto one issuance cannot avoid — RS256 verify of a projected service-account
/// token (see [`Verify`]) and an ES256 compact JWS over claims like the `jwt` backend's,
/// with the key parsed once (as the broker's key ring holds it).
struct Crypto {
    decoding: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    keys: lanyard_broker::authn::jwks::KeySet,
    signer: aws_lc_rs::signature::EcdsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
    header: String,
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Crypto {
    fn new(issuer: &OidcIssuer) -> Self {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let jwks = issuer.jwks_json();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            jwks["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .find(|k| k["alg"] == "RS256")
                .expect("an RS256 key")
                .clone(),
        )
        .expect("jwk");
        let keys = lanyard_broker::authn::jwks::KeySet::parse(
            &serde_json::to_vec(&jwks).expect("jwks"),
            &issuer.url(),
            "bench",
        )
        .expect("key set");
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("p-256 key");
        // Parsed once, as the broker's key ring does.
        let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
        )
        .expect("p-256 key pair");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["lanyard"]);
        validation.set_issuer(&[issuer.url()]);
        Self {
            decoding: DecodingKey::from_jwk(&jwk).expect("decoding key"),
            validation,
            keys,
            signer,
            rng,
            header: b64(br#"{"alg":"ES256","kid":"bench","typ":"JWT"}"#),
        }
    }

    /// Verifies `token` and signs a credential for it; returns the compact JWS.
    fn verify_and_sign(&self, token: &str, verify: Verify, n: u64) -> String {
        let claims = match verify {
            Verify::Jsonwebtoken => {
                jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &self.validation)
                    .expect("verify")
                    .claims
            }
            Verify::Parsed => {
                let jwt = lanyard_broker::authn::jwt::parse_jwt(token, 16 * 1024).expect("parse");
                let key = self.keys.keys().first().expect("a key");
                assert!(key.verifies(
                    lanyard_broker::config::Algorithm::RS256,
                    jwt.signing_input.as_bytes(),
                    &jwt.signature
                ));
                jwt.claims
            }
        };
        let out = serde_json::json!({
            "iss": "https://127.0.0.1:8443",
            "sub": "k8s:shop/api",
            "aud": "app",
            "scope": "",
            "iat": claims["iat"],
            "exp": claims["exp"],
            "jti": format!("ls_{n:024}"),
            "lanyard": {"role": "app", "namespace": "shop", "service_account": "api"},
        });
        let msg = format!(
            "{}.{}",
            self.header,
            b64(&serde_json::to_vec(&out).expect("claims"))
        );
        let sig = self.signer.sign(&self.rng, msg.as_bytes()).expect("sign");
        format!("{msg}.{}", b64(sig.as_ref()))
    }
}

/// Verify-plus-sign operations per second over `threads` threads for `secs` seconds.
fn crypto_only_per_second(
    crypto: &Crypto,
    token: &str,
    verify: Verify,
    threads: usize,
    secs: f64,
) -> f64 {
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed().as_secs_f64() < secs {
                        std::hint::black_box(crypto.verify_and_sign(token, verify, n));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// A server with the broker's TLS setup and HTTP stack (rustls, hyper's auto builder) but
/// none of its work: every `POST` gets `body` back, after the crypto when `crypto` is set.
/// What wrk measures against it is the floor that TLS, HTTP, loopback TCP and wrk itself
/// put under any broker on this machine. Returns the URL; the server ends with the runtime.
async fn floor_server(broker: &TestBroker, crypto: Option<Arc<Crypto>>, body: String) -> String {
    use http_body_util::BodyExt as _;
    use lanyard_broker::server::tls;
    let cfg = &broker.broker.config().tls;
    let cert = tls::ReloadingCert::new(
        &cfg.cert_file,
        &cfg.key_file,
        broker.broker.metrics().clone(),
    )
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(cfg, Arc::new(cert)).expect("tls config"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://{}/v1/credentials",
        listener.local_addr().expect("addr")
    );
    let body = bytes::Bytes::from(body);
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, crypto, body, served) = (
                acceptor.clone(),
                crypto.clone(),
                body.clone(),
                served.clone(),
            );
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (crypto, body, served) = (crypto.clone(), body.clone(), served.clone());
                        async move {
                            let token = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .map(str::to_owned);
                            req.into_body().collect().await?;
                            let status = match (crypto, token) {
                                (None, _) => 200,
                                (Some(c), Some(t)) => {
                                    let n =
                                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    std::hint::black_box(c.verify_and_sign(&t, Verify::Parsed, n));
                                    200
                                }
                                // No token, no crypto: refused, so wrk counts it as non-2xx
                                // instead of the floor passing for floor + crypto.
                                (Some(_), None) => 401,
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(http_body_util::Full::new(body))
                                    .expect("response"),
                            )
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    url
}

/// One `wrk` run; returns (requests/s, p50, p99, non-2xx count) and prints its output.
fn wrk(
    url: &str,
    script: &std::path::Path,
    connections: u32,
    secs: u32,
) -> (f64, String, String, u64) {
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
            &script.display().to_string(),
            url,
        ])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .expect("Requests/sec in wrk output");
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (
        rps,
        field("50%").unwrap_or_default(),
        field("99%").unwrap_or_default(),
        non2xx,
    )
}

/// What a load run cost: this process's CPU per request (the broker or the floor server runs
/// in it; wrk does not) and the share of the machine's CPU time left idle or in iowait.
#[derive(Debug, Clone, Copy)]
struct Spent {
    cpu_us: f64,
    idle: f64,
    iowait: f64,
}

impl Spent {
    /// Runs `load`, which returns requests/s over `secs` seconds, and measures it.
    async fn measure<T>(
        secs: u32,
        load: impl std::future::Future<Output = T>,
        rps: impl Fn(&T) -> f64,
    ) -> (T, Self) {
        use lanyard_test_support::process::{MachineCpu, cpu_seconds};
        let (cpu, machine) = (cpu_seconds(std::process::id()), MachineCpu::now());
        let out = load.await;
        let used = cpu_seconds(std::process::id()) - cpu;
        let (idle, iowait) = MachineCpu::now().shares_since(&machine);
        let requests = (rps(&out) * f64::from(secs)).max(1.0);
        let spent = Self {
            cpu_us: used * 1e6 / requests,
            idle,
            iowait,
        };
        (out, spent)
    }
}

/// The audit path's own timings from the broker's histograms (sum and count of each).
#[derive(Debug, Clone, Copy, Default)]
struct AuditSteps {
    wait: (f64, u64),
    write: (f64, u64),
    save: (f64, u64),
    group: (f64, u64),
    /// Writes and saves that took over 5 ms.
    slow: (u64, u64),
}

impl AuditSteps {
    fn now(broker: &TestBroker) -> Self {
        let m = broker.broker.metrics();
        let of = |h: prometheus::Histogram| (h.get_sample_sum(), h.get_sample_count());
        // Observations over 5 ms: the count less the 5 ms bucket's cumulative count.
        let over_5ms = |h: prometheus::Histogram| {
            use prometheus::core::Collector as _;
            let families = h.collect();
            let Some(m) = families.first().and_then(|f| f.get_metric().first()) else {
                return 0;
            };
            let hist = m.get_histogram();
            let within = hist
                .get_bucket()
                .iter()
                .find(|b| (b.upper_bound() - 0.005).abs() < 1e-9)
                .map_or(0, prometheus::proto::Bucket::cumulative_count);
            hist.get_sample_count().saturating_sub(within)
        };
        let (write, save) = (
            m.audit_stage_duration.with_label_values(&["write"]),
            m.audit_stage_duration.with_label_values(&["save"]),
        );
        Self {
            wait: of(m.audit_wait.clone()),
            slow: (over_5ms(write.clone()), over_5ms(save.clone())),
            write: of(write),
            save: of(save),
            group: of(m.audit_group_records.clone()),
        }
    }

    fn since(&self, earlier: &Self) -> Self {
        let d = |a: (f64, u64), b: (f64, u64)| (a.0 - b.0, a.1.saturating_sub(b.1));
        Self {
            wait: d(self.wait, earlier.wait),
            write: d(self.write, earlier.write),
            save: d(self.save, earlier.save),
            group: d(self.group, earlier.group),
            slow: (
                self.slow.0.saturating_sub(earlier.slow.0),
                self.slow.1.saturating_sub(earlier.slow.1),
            ),
        }
    }
}

impl std::fmt::Display for AuditSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = |(sum, n): (f64, u64)| sum / (n.max(1) as f64);
        write!(
            f,
            "wait {:.3} ms per record; per group: {:.1} records, write + sync {:.3} ms, \
             store transaction {:.3} ms ({} groups; over 5 ms: {} writes, {} store transactions)",
            1e3 * mean(self.wait),
            mean(self.group),
            1e3 * mean(self.write),
            1e3 * mean(self.save),
            self.group.1,
            self.slow.0,
            self.slow.1
        )
    }
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} µs of CPU per request, CPUs idle {:.0}%, iowait {:.0}%",
            self.cpu_us,
            100.0 * self.idle,
            100.0 * self.iowait
        )
    }
}

/// The issue-2 figure: `POST /v1/credentials` over TLS keep-alive (JWT auth, `jwt`
/// backend, SQLite store, file audit log with fsync) with `wrk`, 64 connections, next to
/// the crypto-only figure measured in the same run. Build with `--release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture (needs wrk)"]
async fn bench_https_issuance_vs_crypto_only() {
    // LANYARD_BENCH_LOG=info logs as `lanyard-broker` does by default (one line per
    // issuance, to stderr through a writer thread); redirect stderr to a file.
    let _logs = std::env::var("LANYARD_BENCH_LOG").ok().map(|level| {
        lanyard_broker::cli::init_tracing(&level, lanyard_broker::cli::LogFormat::Text)
    });
    let issuer = OidcIssuer::start().await;
    // The image gate is on, as production runs it (LANYARD_BENCH_GATE=off turns it off).
    let gated = std::env::var("LANYARD_BENCH_GATE").map_or(true, |v| v != "off");
    let (broker, token) = issuance_broker(&issuer, gated).await;
    let (status, issued) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{issued}");
    println!(
        "BENCH image gate: {}",
        if gated {
            "on (admission record, cached verdict)"
        } else {
            "off"
        }
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("issue.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{{}}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ),
    )
    .expect("script");
    let url = format!("{}/v1/credentials", broker.url);

    // LANYARD_BENCH_CONNECTIONS=16,256 adds runs at other concurrencies (64 is the figure).
    let extra: Vec<u32> = std::env::var("LANYARD_BENCH_CONNECTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let crypto = Arc::new(Crypto::new(&issuer));
    let crypto_jwt = crypto_only_per_second(&crypto, &token, Verify::Jsonwebtoken, 2, 5.0);
    let crypto_1 = crypto_only_per_second(&crypto, &token, Verify::Parsed, 2, 5.0);
    let crypto_single = crypto_only_per_second(&crypto, &token, Verify::Parsed, 1, 5.0);
    let run = |url: &str, connections: u32, secs: u32| {
        let (u, s) = (url.to_owned(), script.clone());
        tokio::task::spawn_blocking(move || wrk(&u, &s, connections, secs))
    };
    run(&url, 64, 3).await.expect("join"); // warm up
    let audit_before = AuditSteps::now(&broker);
    let (issuing, spent) =
        Spent::measure(20, run(&url, 64, 20), |r| r.as_ref().map_or(0.0, |r| r.0)).await;
    let audit_steps = AuditSteps::now(&broker).since(&audit_before);
    let (rps, p50, p99, non2xx) = issuing.expect("join");
    for c in extra {
        let (r, p50, p99, bad) = run(&url, c, 10).await.expect("join");
        println!("BENCH   {c} connections: {r:.0} req/s, p50 {p50}, p99 {p99}, non-2xx {bad}");
    }
    // With LANYARD_BAO (tests/peers/openbao.sh, as tests/bench/issuance.sh does): OpenBao's
    // token create under the same wrk, right after, on a fresh dev server over TLS with a
    // file audit device — the issue-18 comparison.
    let openbao = match std::env::var_os("LANYARD_BAO") {
        Some(_) => Some(openbao_token_create(&dir, rps).await),
        None => None,
    };
    // The floor under any broker here: the same TLS + HTTP stack and wrk, answering with an
    // issuance-sized body, without and then with the per-request crypto.
    let mut floors = Vec::new();
    for with_crypto in [false, true] {
        let floor_url = floor_server(
            &broker,
            with_crypto.then(|| crypto.clone()),
            issued.to_string(),
        )
        .await;
        run(&floor_url, 64, 2).await.expect("join"); // warm up
        let (floor_run, floor_spent) = Spent::measure(10, run(&floor_url, 64, 10), |r| {
            r.as_ref().map_or(0.0, |r| r.0)
        })
        .await;
        let (r, p50, p99, bad) = floor_run.expect("join");
        assert_eq!(bad, 0, "the floor server answers every request");
        floors.push((r, p50, p99, floor_spent));
    }
    let crypto_2 = crypto_only_per_second(&crypto, &token, Verify::Parsed, 2, 5.0);
    let crypto_rate = f64::midpoint(crypto_1, crypto_2);
    let audited = broker.audit_lines().len();
    println!(
        "BENCH https issuance, wrk -t2 -c64 -d20s, TLS keep-alive, RS256 caller JWT, jwt backend (ES256), SQLite + fsynced audit:\n  \
         issuance: {rps:.0} req/s, p50 {p50}, p99 {p99}, non-2xx {non2xx}, audit records {audited}\n  \
         crypto-only (RS256 verify with the key parsed once + ES256 sign, 2 threads): {crypto_1:.0}/s before, {crypto_2:.0}/s after; 1 thread: {crypto_single:.0}/s\n  \
         crypto-only with jsonwebtoken::decode (2 threads): {crypto_jwt:.0}/s\n  \
         issuance / crypto-only (2 threads): {:.0}%\n  \
         floor, TLS + HTTP only: {:.0} req/s (p50 {}, p99 {}); floor + crypto: {:.0} req/s (p50 {}, p99 {}) = {:.0}% of crypto-only\n  \
         issuance / (floor + crypto): {:.0}%\n  \
         cost: issuance {spent}; floor {}; floor + crypto {}\n  \
         CPU per issuance / per floor + crypto request: {:.2}\n  \
         audit, means over the run: {audit_steps}",
        100.0 * rps / crypto_rate,
        floors[0].0,
        floors[0].1,
        floors[0].2,
        floors[1].0,
        floors[1].1,
        floors[1].2,
        100.0 * floors[1].0 / crypto_rate,
        100.0 * rps / floors[1].0,
        floors[0].3,
        floors[1].3,
        spent.cpu_us / floors[1].3.cpu_us
    );
    if let Some((bao_rps, bao_p50, bao_p99)) = openbao {
        println!(
            "  openbao token create (2.7.2, dev server, TLS, file audit device), same wrk: {bao_rps:.0} req/s, p50 {bao_p50}, p99 {bao_p99}\n  \
             issuance / openbao token create: {:.2}x",
            rps / bao_rps
        );
    }
    assert_eq!(non2xx, 0, "every request must have been issued");
    broker.stop().await;
}

/// OpenBao's `POST /v1/auth/token/create` (a child of the root token, 1 h TTL) under
/// `wrk -t2 -c64 -d20s` after a 3 s warm-up, on a fresh dev server over TLS (`-dev-tls`) with a
/// file audit device (`-config=FILE`). Returns requests/s, p50 and p99.
async fn openbao_token_create(dir: &tempfile::TempDir, lanyard_rps: f64) -> (f64, String, String) {
    let bao = OpenBao::start_with(OpenBaoOptions { tls: true }).await;
    let script = dir.path().join("bao.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"ttl\":\"1h\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"X-Vault-Token\"] = \"{}\"\n",
            lanyard_test_support::openbao::ROOT_TOKEN
        ),
    )
    .expect("script");
    let url = format!("{}/v1/auth/token/create", bao.url);
    let run = |secs: u32| {
        let (u, s) = (url.clone(), script.clone());
        tokio::task::spawn_blocking(move || wrk(&u, &s, 64, secs))
    };
    run(3).await.expect("join"); // warm up
    let (rps, p50, p99, bad) = run(20).await.expect("join");
    assert_eq!(bad, 0, "OpenBao answers every token create");
    let created = bao.audited("auth/token/create").len();
    println!(
        "BENCH openbao token create: {rps:.0} req/s (lanyard {lanyard_rps:.0}), {created} audited by its file device"
    );
    drop(bao);
    (rps, p50, p99)
}

/// The issue-12 figure: issuance with the image gate on (a pod token gated by its pod's
/// admission record, the verdict cached) against the gate off, in the same run: two brokers,
/// `wrk -t2 -c64` for 10 s on each in turn (on, off, on, off, …), five pairs after a warm-up;
/// prints each pair's ratio and their median. Build with `--release`; needs `wrk` and the test
/// registry (`source tests/peers/images.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture (needs wrk and tests/peers/images.sh)"]
async fn bench_https_gate_on_vs_off() {
    let issuer = OidcIssuer::start().await;
    let (on, on_token) = issuance_broker(&issuer, true).await;
    let (off, off_token) = issuance_broker(&issuer, false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for (name, broker, token) in [("on", &on, &on_token), ("off", &off, &off_token)] {
        let (status, body) = broker.post_credentials(Some(token), "{}").await;
        assert_eq!(status, 200, "{body}");
        let script = dir.path().join(format!("{name}.lua"));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = \"{{}}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
            ),
        )
        .expect("script");
        runs.push((format!("{}/v1/credentials", broker.url), script));
    }
    let run = |i: usize, secs: u32| {
        let (u, s) = runs[i].clone();
        tokio::task::spawn_blocking(move || wrk(&u, &s, 64, secs))
    };
    run(0, 3).await.expect("join");
    run(1, 3).await.expect("join");
    let mut ratios = Vec::new();
    for pair in 1..=5 {
        let (r_on, p50_on, p99_on, bad_on) = run(0, 10).await.expect("join");
        let (r_off, p50_off, p99_off, bad_off) = run(1, 10).await.expect("join");
        assert_eq!(bad_on + bad_off, 0, "every request must have been issued");
        let ratio = r_on / r_off;
        println!(
            "BENCH pair {pair}: gate on {r_on:.0} req/s (p50 {p50_on}, p99 {p99_on}), off {r_off:.0} req/s (p50 {p50_off}, p99 {p99_off}), on/off {ratio:.3}"
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let audited_gate = on
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "issue" && r["gate_source"] == "admission_record")
        .count();
    println!(
        "BENCH https issuance, gate on (admission record + cached verdict) / gate off, median of 5 pairs: {:.3} (min {:.3}, max {:.3}); {audited_gate} issue records name the admission record",
        ratios[2], ratios[0], ratios[4]
    );
    on.stop().await;
    off.stop().await;
}

/// A policy granting role `app` to bootstrap tokens minted for it.
const BOOTSTRAP_POLICY: &str = r#"
roles:
  app:
    backend: jwt
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
rules:
  - name: boot
    match: {bootstrap_role: app}
    roles: [app]
"#;

/// Median and 99th percentile of `samples` (sorted in place), in microseconds.
fn median_p99_us(samples: &mut [std::time::Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// One round of the store-level and broker-level write paths on a fresh SQLite file with
/// commits `synchronous`; returns printable lines.
async fn synchronous_round(synchronous: lanyard_broker::store::sqlite::Synchronous) -> String {
    use lanyard_broker::store::sqlite::SqliteStore;
    use lanyard_broker::store::{BootstrapTokenRecord, ChainHead, LeaseRecord, Store};
    use std::time::{Duration, SystemTime};
    const OPS: usize = 300;
    let dir = tempfile::tempdir().expect("tmp");
    let store = SqliteStore::open_with(&dir.path().join("s.db"), synchronous).expect("open");
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let t0 = lanyard_test_support::now_unix();
    // Bootstrap redemption as the broker makes it: reserve, then commit (two transactions).
    for i in 0..OPS {
        store
            .insert_bootstrap_token(&BootstrapTokenRecord {
                token_id: format!("bt_{i:016x}"),
                token_hash: format!("h{i}"),
                roles: vec!["app".into()],
                image: None,
                created_at: at(t0),
                expires_at: at(t0 + 600),
            })
            .await
            .expect("insert");
    }
    let mut redeem = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let started = Instant::now();
        store
            .reserve_bootstrap_token(&format!("h{i}"), "r", at(t0), at(t0 + 60))
            .await
            .expect("reserve");
        assert!(
            store
                .commit_bootstrap_token(&format!("h{i}"), "r", at(t0))
                .await
                .expect("commit")
        );
        redeem.push(started.elapsed());
    }
    // An issuance's store write on an idle broker: one lease and the chain head.
    let mut group = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let lease = LeaseRecord {
            lease_id: format!("ls_{i:028x}"),
            role: "app".into(),
            backend: "jwt".into(),
            subject: "system:serviceaccount:shop:api".into(),
            issuer: "https://kubernetes.test".into(),
            issued_at: at(t0),
            expires_at: at(t0 + 900),
            upstream_lease: None,
            fingerprint: "hmac-sha256:00".into(),
            revoked_at: None,
            renew_step_secs: None,
            pod_uid: None,
        };
        let head = ChainHead {
            seq: i as u64 + 1,
            hash: format!("{i:064x}"),
        };
        let started = Instant::now();
        store
            .record_group(&[lease], &head)
            .await
            .expect("record group");
        group.push(started.elapsed());
    }
    let (redeem_p50, redeem_p99) = median_p99_us(&mut redeem);
    let (group_p50, group_p99) = median_p99_us(&mut group);

    // The whole broker (audit file fsync + store), 16 concurrent requests.
    let issuing = Arc::new(
        InProcessBroker::start_with_store(
            JWT_POLICY,
            "",
            Arc::new(SqliteStore::open_with(&dir.path().join("b.db"), synchronous).expect("open")),
        )
        .await
        .expect("broker"),
    );
    throughput(&issuing, 100, 16).await; // warm up
    let issue_rate = throughput(&issuing, 1_000, 16).await;

    // Bootstrap tokens redeemed end to end, 16 concurrent.
    let booting = Arc::new(
        InProcessBroker::start_with_store(
            BOOTSTRAP_POLICY,
            "",
            Arc::new(SqliteStore::open_with(&dir.path().join("t.db"), synchronous).expect("open")),
        )
        .await
        .expect("broker"),
    );
    const TOKENS: usize = 400;
    let mut tokens = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        let minted = booting
            .broker
            .mint_token(
                &lanyard::wire::MintTokenRequest {
                    roles: vec!["app".into()],
                    ttl_seconds: Some(600),
                    image: None,
                },
                "req_bench",
            )
            .await
            .expect("mint");
        tokens.push(minted.token);
    }
    let tokens = Arc::new(std::sync::Mutex::new(tokens));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let b = booting.clone();
            let tokens = tokens.clone();
            tokio::spawn(async move {
                loop {
                    let Some(token) = tokens.lock().expect("tokens").pop() else {
                        break;
                    };
                    let auth = b
                        .broker
                        .authenticate(Some(token.expose()), "req_bench")
                        .await
                        .expect("redeems");
                    b.issue(&auth, None).await.expect("issued");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    let redeem_rate = TOKENS as f64 / started.elapsed().as_secs_f64();
    format!(
        "  {synchronous:?}: store redemption (reserve+commit) p50 {redeem_p50:.0} µs p99 {redeem_p99:.0} µs; \
         store issuance write (1 lease + head) p50 {group_p50:.0} µs p99 {group_p99:.0} µs; \
         broker jwt issuance {issue_rate:.0}/s; broker bootstrap redemption {redeem_rate:.0}/s"
    )
}

/// What `synchronous = FULL` costs against `NORMAL` on the paths that write: bootstrap
/// redemption and an issuance's lease record, at the store and through the whole broker.
/// The two settings alternate over three rounds in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_sqlite_synchronous_normal_vs_full() {
    use lanyard_broker::store::sqlite::Synchronous;
    println!("BENCH SQLite synchronous, NORMAL vs FULL (3 alternating rounds):");
    for round in 1..=3 {
        for synchronous in [Synchronous::Normal, Synchronous::Full] {
            println!("round {round}:{}", synchronous_round(synchronous).await);
        }
    }
}

/// `oha` against `url` (POST `{}` with `token`, 64 connections) for `secs` seconds, at `rate`
/// requests per second when given (`-q`, with latency correction so a stall counts for the
/// requests it held back); returns its JSON summary.
fn oha(url: &str, token: &str, rate: Option<u64>, secs: u64) -> serde_json::Value {
    let mut cmd = std::process::Command::new("oha");
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "--insecure",
        "-m",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        "-c",
        "64",
        "-z",
        &format!("{secs}s"),
    ]);
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string(), "--latency-correction"]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run oha (cargo install oha --version 1.16.0)");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha's JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// p50 / p99 / p99.9 in milliseconds, and the answers by status, from an oha summary.
fn latencies(d: &serde_json::Value) -> (f64, f64, f64, String) {
    let p = |k: &str| d["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    (
        p("p50"),
        p("p99"),
        p("p99.9"),
        d["statusCodeDistribution"].to_string(),
    )
}

/// The issue-18 tail figure: the peak issuance rate (`oha -c 64`, 20 s), then half of it at a
/// fixed rate (`oha -q`) for `LANYARD_BENCH_SECONDS` (600) against the broker (configured as
/// `bench_https` runs it: TLS, SQLite, fsynced audit, the gate on), then the same rate against
/// the floor server (TLS + HTTP only) and the floor + crypto server in the same run, for as
/// long each. Prints p50 / p99 / p99.9 of each. Build with `--release`; needs `oha` and the
/// test registry (`source tests/peers/images.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture (needs oha and tests/peers/images.sh)"]
async fn bench_https_half_load_tail() {
    let secs: u64 = std::env::var("LANYARD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let issuer = OidcIssuer::start().await;
    let (broker, token) = issuance_broker(&issuer, true).await;
    let (status, issued) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{issued}");
    let url = format!("{}/v1/credentials", broker.url);
    let load = |url: &str, rate: Option<u64>, secs: u64| {
        let (u, t) = (url.to_owned(), token.clone());
        tokio::task::spawn_blocking(move || oha(&u, &t, rate, secs))
    };
    load(&url, None, 3).await.expect("join"); // warm up
    let peak = load(&url, None, 20).await.expect("join");
    let peak_rps = peak["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0);
    let rate = (peak_rps / 2.0).round() as u64;
    println!(
        "BENCH half-load tail: peak {peak_rps:.0} req/s (oha -c 64, 20 s); rate {rate} req/s for {secs} s each"
    );
    let audit_before = AuditSteps::now(&broker);
    let mut rows = vec![(
        "issuance",
        load(&url, Some(rate), secs).await.expect("join"),
    )];
    let audit_steps = AuditSteps::now(&broker).since(&audit_before);
    let crypto = Arc::new(Crypto::new(&issuer));
    for (name, with_crypto) in [("floor", false), ("floor + crypto", true)] {
        let floor_url = floor_server(
            &broker,
            with_crypto.then(|| crypto.clone()),
            issued.to_string(),
        )
        .await;
        load(&floor_url, None, 2).await.expect("join"); // warm up
        rows.push((
            name,
            load(&floor_url, Some(rate), secs).await.expect("join"),
        ));
    }
    for (name, d) in &rows {
        let (p50, p99, p999, statuses) = latencies(d);
        println!(
            "  {name}: {:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, statuses {statuses}",
            d["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0)
        );
    }
    println!("  issuance's audit, means over the run: {audit_steps}");
    let p999 = |i: usize| latencies(&rows[i].1).2;
    println!(
        "  issuance p99.9 / floor p99.9: {:.2}; / floor + crypto p99.9: {:.2}",
        p999(0) / p999(1),
        p999(0) / p999(2)
    );
    broker.stop().await;
}
