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
    InProcessBroker, MotoServer, OidcIssuer, TestBroker, TestBrokerOptions, k8s_pod,
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

/// Verify-plus-sign operations per second over `threads` threads for `secs` seconds: the
/// crypto one issuance cannot avoid — RS256 verify of a projected service-account token
/// (see [`Verify`]) and an ES256 compact JWS over claims like the `jwt` backend's, with the
/// key parsed once (as the broker's key ring holds it).
fn crypto_only_per_second(
    issuer: &OidcIssuer,
    token: &str,
    verify: Verify,
    threads: usize,
    secs: f64,
) -> f64 {
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
    let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let keys = lanyard_broker::authn::jwks::KeySet::parse(
        &serde_json::to_vec(&jwks).expect("jwks"),
        &issuer.url(),
        "bench",
    )
    .expect("key set");
    let key = keys.keys().first().expect("a key");
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
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let header = b64(br#"{"alg":"ES256","kid":"bench","typ":"JWT"}"#);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["lanyard"]);
    validation.set_issuer(&[issuer.url()]);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed().as_secs_f64() < secs {
                        let claims = match verify {
                            Verify::Jsonwebtoken => jsonwebtoken::decode::<serde_json::Value>(
                                token,
                                &decoding,
                                &validation,
                            )
                            .expect("verify")
                            .claims,
                            Verify::Parsed => {
                                let jwt = lanyard_broker::authn::jwt::parse_jwt(token, 16 * 1024)
                                    .expect("parse");
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
                            "{header}.{}",
                            b64(&serde_json::to_vec(&out).expect("claims"))
                        );
                        let sig = signer.sign(&rng, msg.as_bytes()).expect("sign");
                        std::hint::black_box(format!("{msg}.{}", b64(sig.as_ref())));
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
    let broker = TestBroker::start_with(
        Some(&issuer),
        TestBrokerOptions {
            policies: vec![("bench.yaml".into(), JWT_POLICY.into())],
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let token = issuer.k8s_token("shop", "api", "lanyard", 3600);
    let (status, body) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{body}");

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
    let crypto_jwt = crypto_only_per_second(&issuer, &token, Verify::Jsonwebtoken, 2, 5.0);
    let crypto_1 = crypto_only_per_second(&issuer, &token, Verify::Parsed, 2, 5.0);
    let crypto_single = crypto_only_per_second(&issuer, &token, Verify::Parsed, 1, 5.0);
    let run = |connections: u32, secs: u32| {
        let (u, s) = (url.clone(), script.clone());
        tokio::task::spawn_blocking(move || wrk(&u, &s, connections, secs))
    };
    run(64, 3).await.expect("join"); // warm up
    let (rps, p50, p99, non2xx) = run(64, 20).await.expect("join");
    for c in extra {
        let (r, p50, p99, bad) = run(c, 10).await.expect("join");
        println!("BENCH   {c} connections: {r:.0} req/s, p50 {p50}, p99 {p99}, non-2xx {bad}");
    }
    let crypto_2 = crypto_only_per_second(&issuer, &token, Verify::Parsed, 2, 5.0);
    let crypto = f64::midpoint(crypto_1, crypto_2);
    let audited = broker.audit_lines().len();
    println!(
        "BENCH https issuance, wrk -t2 -c64 -d20s, TLS keep-alive, RS256 caller JWT, jwt backend (ES256), SQLite + fsynced audit:\n  \
         issuance: {rps:.0} req/s, p50 {p50}, p99 {p99}, non-2xx {non2xx}, audit records {audited}\n  \
         crypto-only (RS256 verify with the key parsed once + ES256 sign, 2 threads): {crypto_1:.0}/s before, {crypto_2:.0}/s after; 1 thread: {crypto_single:.0}/s\n  \
         crypto-only with jsonwebtoken::decode (2 threads): {crypto_jwt:.0}/s\n  \
         issuance / crypto-only (2 threads): {:.0}%",
        100.0 * rps / crypto
    );
    assert_eq!(non2xx, 0, "every request must have been issued");
    broker.stop().await;
}
