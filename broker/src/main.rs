//! `lanyard-broker`: see `lanyard-broker --help`.

/// mimalloc: issuance allocates many short-lived buffers on several threads at once, where
/// glibc's allocator cost about 12% of the broker's CPU (see `docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lanyard_broker::cli::main(std::env::args_os()).await
}
