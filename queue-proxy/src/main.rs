//! `queue-proxy`: the sidecar binary for container images (the same code as `ebb queue-proxy`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "queue-proxy", version, about = "ebb's queue-proxy sidecar")]
struct Cli {
    #[command(flatten)]
    args: ebb_queue_proxy::cli::Args,
}

fn main() -> ExitCode {
    ebb_queue_proxy::cli::run(Cli::parse().args)
}
