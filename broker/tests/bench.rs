//! Benchmarks, ignored by default (numbers, not assertions). Run with moto installed:
//!
//! ```text
//! source tests/peers/moto.sh
//! cargo test -p lanyard-broker --test bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Results and the machine they came from are in `docs/benchmarks.md`.

use std::sync::Arc;
use std::time::Instant;

use lanyard_test_support::{InProcessBroker, MotoServer, k8s_pod};

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
