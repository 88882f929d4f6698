//! `autoscaler`: the Kubernetes autoscaler binary for container images (the same code as `ebb autoscaler`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "autoscaler", version, about = "ebb's autoscaler for Kubernetes")]
struct Cli {
    #[command(flatten)]
    args: ebb_autoscaler::cli::Args,
}

fn main() -> ExitCode {
    ebb_autoscaler::cli::run(Cli::parse().args)
}
