//! `lanyard-broker`: see `lanyard-broker --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lanyard_broker::cli::main(std::env::args_os()).await
}
