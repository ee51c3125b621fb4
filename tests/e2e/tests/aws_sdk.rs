//! The SDK's AWS credentials provider: an AWS SDK for Rust client whose only credentials
//! provider is `lanyard::aws::CredentialsProvider` calls a real STS (`moto_server`) with the
//! broker's `aws-sts` credential.

use lanyard::TokenSource;
use lanyard::aws::CredentialsProvider;
use lanyard_test_support::moto::{ASSUMED_ROLE_ARN_PREFIX, AwsStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_sdk_client_uses_the_lanyard_provider() {
    use aws_config::BehaviorVersion;
    use aws_sdk_sts::config::ProvideCredentials as _;

    let stack = AwsStack::start().await;
    let (moto, broker) = (&stack.moto, &stack.broker);
    let client = broker.client(TokenSource::JwtFile(stack.work.token_file.clone()));

    // Two credentials are granted and one carries AWS keys: no role needed to pick it.
    let unnamed = CredentialsProvider::new(client.clone())
        .provide_credentials()
        .await
        .expect("the only AWS credential");
    assert!(unnamed.access_key_id().starts_with("ASIA"));
    let provider = CredentialsProvider::new(client.clone()).role("aws-read");
    let creds = provider.provide_credentials().await.expect("credentials");
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert!(creds.session_token().is_some());
    let left = creds
        .expiry()
        .expect("expiry")
        .duration_since(lanyard::clock::Clock::now(&lanyard::clock::SystemClock))
        .expect("in the future")
        .as_secs();
    assert!(
        (850..=900).contains(&left),
        "default TTL 900 s, {left} s left"
    );
    assert!(
        !format!("{creds:?}").contains(creds.secret_access_key()),
        "the AWS type redacts"
    );

    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(provider)
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&config);
    let who = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    let arn = who.arn().expect("arn");
    assert!(arn.starts_with(ASSUMED_ROLE_ARN_PREFIX), "{arn}");
    let calls = moto.calls_of("GetCallerIdentity");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].access_key_id.as_deref(),
        Some(creds.access_key_id())
    );
    assert_eq!(
        moto.calls_of("AssumeRole").len(),
        1,
        "served from the broker's cache"
    );

    // A role that is not AWS keys is a configuration error, not a retry loop.
    let e = CredentialsProvider::new(client)
        .role("app")
        .provide_credentials()
        .await
        .expect_err("jwt is not aws");
    assert!(
        matches!(
            e,
            aws_credential_types::provider::error::CredentialsError::InvalidConfiguration(_)
        ),
        "{e:?}"
    );
}
