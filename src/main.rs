//! `ebb`: the command-line tool. It checks configuration, simulates the autoscaler on a trace, and carries
//! every component as a subcommand so that `ebb up` can spawn itself.
#![forbid(unsafe_code)]

mod check;
mod demo_model;
mod inject;
mod manifest;
mod numbers;
mod plot;
mod simulate;
mod status;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ebb", version, about = "Request-driven autoscaling with scale-to-zero for HTTP services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate autoscaled Deployments and `config-autoscaler` ConfigMaps in Kubernetes YAML.
    Check(check::Args),
    /// Add the queue-proxy sidecar to autoscaled Deployments in Kubernetes YAML and print the result.
    Inject(inject::Args),
    /// Replay a load trace through the KPA decider and print what it would have done.
    Simulate(simulate::Args),
    /// Serve a small OpenAI-compatible demo model (for demos, tests and benchmarks).
    DemoModel(demo_model::Args),
    /// Run the queue-proxy sidecar (the same code as the `queue-proxy` binary).
    QueueProxy(Box<ebb_queue_proxy::cli::Args>),
    /// Run the Kubernetes autoscaler (the same code as the `autoscaler` binary).
    Autoscaler(Box<ebb_autoscaler::cli::Args>),
    /// Run the activator in a cluster (the same code as the `activator` binary).
    Activator(Box<ebb_activator::cli::Args>),
    /// Run services locally with scale-to-zero: the gateway on :8080, the autoscaler, pods as processes.
    Up(up::Args),
    /// Print the services of a running `ebb up`, or of a cluster with --kubeconfig/--cluster, as a table.
    Status(status::Args),
    /// One local pod (used by `ebb up`; not for direct use).
    #[command(hide = true)]
    PodSupervisor(up::supervisor::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(ebb_process::exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check(args) => check::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::DemoModel(args) => demo_model::run(args),
        Command::QueueProxy(args) => ebb_queue_proxy::cli::run(*args),
        Command::Autoscaler(args) => {
            // The webhook injects with the same core as `ebb inject`.
            ebb_autoscaler::cluster::webhook::inject::set_injector(inject::webhook::pod);
            ebb_autoscaler::cli::run(*args)
        }
        Command::Activator(args) => ebb_activator::cli::run(*args),
        Command::Up(args) => up::run(args),
        Command::Status(args) => status::run(args),
        Command::PodSupervisor(args) => up::supervisor::run(args),
    }
}
