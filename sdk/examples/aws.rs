//! An AWS SDK for Rust client whose credentials come from lanyard: the broker's `aws-sts`
//! role, through `lanyard::aws::CredentialsProvider`. Calls STS GetCallerIdentity and prints
//! the assumed role (never the keys).
//!
//! ```sh
//! LANYARD_BROKER_URL=https://lanyard:8443 LANYARD_CA_FILE=/etc/lanyard/ca.pem \
//! LANYARD_TOKEN_FILE=/var/run/secrets/tokens/lanyard \
//! cargo run -p lanyard --features aws --example aws -- aws-read [STS_ENDPOINT_URL]
//! ```

use aws_config::BehaviorVersion;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let role = args.next().ok_or("usage: aws ROLE [STS_ENDPOINT_URL]")?;
    let provider = lanyard::aws::CredentialsProvider::new(lanyard::Client::from_env()?).role(role);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(provider);
    if let Some(endpoint) = args.next() {
        loader = loader.endpoint_url(endpoint);
    }
    let sts = aws_sdk_sts::Client::new(&loader.load().await);
    let who = sts.get_caller_identity().send().await?;
    println!("calling as {}", who.arn().unwrap_or("?"));
    Ok(())
}
