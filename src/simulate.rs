//! `ebb simulate` (being written).
use std::process::ExitCode;

/// Arguments of `ebb simulate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `ebb simulate`.
pub fn run(_args: Args) -> ExitCode {
    eprintln!("ebb simulate: not built yet");
    ExitCode::from(crate::EXIT_USAGE)
}
