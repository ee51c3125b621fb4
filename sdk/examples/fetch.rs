//! Fetch credentials once and print what was granted (never the secrets themselves).
//!
//! Against `lanyard-broker dev` (which prints these paths):
//!
//! ```sh
//! lanyard-broker token create --role dev-app > /tmp/bt
//! LANYARD_BROKER_URL=https://127.0.0.1:8443 LANYARD_CA_FILE=.lanyard-dev/tls/ca.pem \
//! LANYARD_BOOTSTRAP_TOKEN_FILE=/tmp/bt cargo run -p lanyard --example fetch
//! ```
//!
//! In a pod, set `LANYARD_TOKEN_FILE` to the projected service-account token instead.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lanyard::Error> {
    let client = lanyard::Client::from_env()?;
    let resp = client.fetch().await?;
    println!("identity: {}", resp.identity);
    for c in &resp.credentials {
        let fields: Vec<&str> = c.data.keys().map(String::as_str).collect();
        println!(
            "role {} ({}): fields {:?}, expires {}, refresh after {}, lease {}",
            c.role, c.kind, fields, c.expires_at, c.refresh_after, c.lease_id
        );
        // The secret prints as `** redacted **`; use `.expose()` where it is really needed.
        if let Some(token) = c.secret("token") {
            println!("  token: {token} ({} bytes)", token.len());
        }
    }
    Ok(())
}
