//! `lanyard-sidecar`: see `lanyard-sidecar --help`.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    lanyard_sidecar::main_with_args(std::env::args_os()).await
}
