//! An upstream's refusal end to end: STS (moto behind its recording proxy) answers the
//! broker's AssumeRole with its documented `AccessDenied` error; the real broker over TLS
//! answers 502 `upstream_refused` without `Retry-After`; the sidecar's `init` stops at once
//! with the reason instead of retrying until its deadline, and succeeds once STS allows it.

use std::time::Duration;

use lanyard::wire::ErrorCode;
use lanyard::{Client, TokenSource};
use lanyard_sidecar::{Options, SidecarConfig, SidecarError};
use lanyard_test_support::moto::{AwsStack, STS_ROLE_ARN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_refusal_stops_the_sidecar_init_at_once_with_the_reason() {
    let stack = AwsStack::start().await;
    let (moto, broker) = (&stack.moto, &stack.broker);
    let client = Client::builder()
        .broker_url(broker.url.clone())
        .ca_file(broker.pki.ca_path())
        .token_source(TokenSource::JwtFile(stack.work.token_file.clone()))
        .roles(vec!["aws-read".into()])
        .build()
        .expect("client");
    let cfg = SidecarConfig {
        client,
        dir: stack.work.secrets.clone(),
    };
    // A minute to retry what a retry may fix; a refusal is not retried.
    let opts = Options {
        deadline: Some(Duration::from_secs(60)),
        ..Options::default()
    };

    moto.refuse_next("AssumeRole", 1);
    let started = tokio::time::Instant::now();
    let e = lanyard_sidecar::init_with(&cfg, &opts)
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            SidecarError::Fetch(lanyard::Error::Broker {
                status: 502,
                code: ErrorCode::UpstreamRefused,
                retryable: false,
                ..
            })
        ),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.contains("aws-sts upstream refused: AccessDenied (HTTP 403)")
            && m.contains(&format!("sts:AssumeRole on resource: {STS_ROLE_ARN}")),
        "{m}"
    );
    assert_eq!(moto.calls_of("AssumeRole").len(), 1, "asked once, no retry");
    assert!(
        std::fs::read_dir(&stack.work.secrets)
            .expect("ls")
            .next()
            .is_none(),
        "nothing written"
    );

    // On the wire: 502, not retryable, no Retry-After.
    moto.refuse_next("AssumeRole", 1);
    let token = std::fs::read_to_string(&stack.work.token_file).expect("token");
    let resp = broker
        .http()
        .post(format!("{}/v1/credentials", broker.url))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"roles": ["aws-read"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 502);
    assert!(resp.headers().get("retry-after").is_none());
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_refused");
    assert_eq!(body["error"]["retryable"], false);
    assert!(body["error"]["request_id"].is_string(), "{body}");

    // Once STS allows it, the same init writes the credential.
    let written = lanyard_sidecar::init_with(&cfg, &opts)
        .await
        .expect("written");
    assert_eq!(written.credentials.len(), 1);
    assert!(stack.work.secrets.join("aws-read/access_key_id").exists());
    assert_eq!(moto.calls_of("AssumeRole").len(), 3);
}
