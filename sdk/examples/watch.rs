//! Keep credentials fresh in the background and react to every update (never printing the
//! secrets themselves).
//!
//! Against `lanyard-broker dev` (which prints these paths):
//!
//! ```sh
//! lanyard-broker token create --role dev-app > /tmp/bt
//! LANYARD_BROKER_URL=https://127.0.0.1:8443 LANYARD_CA_FILE=.lanyard-dev/tls/ca.pem \
//! LANYARD_BOOTSTRAP_TOKEN_FILE=/tmp/bt LANYARD_TTL_SECONDS=30 \
//!   cargo run -p lanyard --example watch
//! ```
//!
//! Ctrl-C stops it.

use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lanyard::Error> {
    let client = lanyard::Client::from_env()?;
    let mut updates = client.watch();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            update = updates.next() => match update {
                Some(Ok(resp)) => {
                    for c in &resp.credentials {
                        println!(
                            "fresh credential for {}: expires {}, next refresh around {} ({} bytes of token)",
                            c.role,
                            c.expires_at,
                            c.refresh_after,
                            c.secret("token").map_or(0, lanyard::Secret::len)
                        );
                    }
                }
                // The last good credentials stay in `updates.current()`; retries back off.
                Some(Err(e)) => eprintln!("refresh failed (will retry): {e}"),
                None => break,
            },
        }
    }
    Ok(())
}
