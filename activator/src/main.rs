//! `activator`: the activator binary for container images (the same code as `ebb activator`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "activator", version, about = "ebb's activator")]
struct Cli {
    #[command(flatten)]
    args: ebb_activator::cli::Args,
}

fn main() -> ExitCode {
    ebb_activator::cli::run(Cli::parse().args)
}
