//! For applications that only read files: read what the sidecar wrote and re-read it when
//! it changes (inotify), printing what changed (never the secret itself).
//!
//! Against `lanyard-broker dev`, whose in-process sidecar writes `.lanyard-dev/secrets`:
//!
//! ```sh
//! LANYARD_SECRETS_DIR=.lanyard-dev/secrets cargo run -p lanyard --example files -- dev-app/token
//! ```
//!
//! Ctrl-C stops it.

use futures_util::StreamExt;
use lanyard::files::FileSource;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wanted = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "dev-app/token".to_owned());
    let source = FileSource::from_env();
    let mut changes = source.watch()?;
    match source.read(&wanted) {
        Ok(s) => println!("{wanted}: {} bytes", s.len()),
        Err(e) => println!("{wanted}: not there yet ({e})"),
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            ev = changes.next() => {
                let Some(ev) = ev else { break };
                if ev.path.to_str() != Some(wanted.as_str()) {
                    continue;
                }
                if ev.removed {
                    println!("{wanted}: removed (expired, or being replaced)");
                    continue;
                }
                match source.read(&wanted) {
                    Ok(s) => println!("{wanted}: rotated, now {} bytes", s.len()),
                    Err(e) => println!("{wanted}: cannot read ({e})"),
                }
            }
        }
    }
    Ok(())
}
