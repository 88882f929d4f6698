//! `ebb check` (being written).
use std::process::ExitCode;

/// Arguments of `ebb check`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `ebb check`.
pub fn run(_args: Args) -> ExitCode {
    ExitCode::from(crate::EXIT_USAGE)
}
