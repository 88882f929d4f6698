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
mod yaml;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit codes of the components (queue-proxy, activator, autoscaler).
const COMPONENT_EXIT_CODES: &str = "Exit codes:
  0  stopped on SIGTERM or Ctrl-C, after draining
  1  failed while running (cannot listen, cannot reach the Kubernetes API)
  2  a bad flag or environment variable (one line on stderr says which)

Logs go to stderr: --log-format text|json (EBB_LOG_FORMAT); text on a terminal, else JSON lines with the
message at the top level. RUST_LOG filters (default info).";

#[derive(Parser)]
#[command(
    name = "ebb",
    version,
    about = "Request-driven autoscaling with scale-to-zero for HTTP services",
    after_help = "Each command's --help says what it does, with examples and exit codes. Shell completions: ebb completion bash|zsh|fish."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate autoscaled Deployments and `config-autoscaler` ConfigMaps in Kubernetes YAML.
    ///
    /// Reads multi-document YAML (`kind: List` too), finds the Deployments labelled `ebb.dev/service` and any
    /// `config-autoscaler` ConfigMap (applied to the Deployments checked with it), and prints every problem
    /// at once, one line each, naming the file, object and annotation.
    #[command(after_help = "Examples:
  ebb check deploy.yaml
  ebb check manifests/config-autoscaler.yaml deploy.yaml --verbose   # with the cluster's defaults
  kustomize build overlays/prod | ebb check -

Exit codes:
  0  no errors (warnings allowed)
  1  errors found
  2  unreadable input or a bad command line")]
    Check(check::Args),
    /// Add the queue-proxy sidecar to autoscaled Deployments in Kubernetes YAML and print the result.
    ///
    /// Every Deployment labelled `ebb.dev/service` gets the sidecar, its `EBB_*` settings from the
    /// annotations (validated as `ebb check` does); other documents are printed as written, in order.
    /// Injecting again updates the sidecar in place.
    #[command(after_help = "Examples:
  ebb inject deploy.yaml | kubectl apply -f -
  ebb inject --image registry.example.com/ebb:0.1.0 deploy.yaml > injected.yaml
  kustomize build . | ebb inject - | kubectl apply -f -

Exit codes:
  0  printed
  2  invalid annotations, a port ebb needs already taken, unreadable YAML or a bad command line (nothing
     is printed on stdout)")]
    Inject(inject::Args),
    /// Replay a load trace through the KPA decider and print what it would have done.
    Simulate(simulate::Args),
    /// Serve a small OpenAI-compatible demo model (for demos, tests and benchmarks).
    ///
    /// Loads for --startup-delay (connections refused meanwhile), then answers /v1/chat/completions and
    /// /v1/completions, streaming token by token over SSE when asked, at --tokens-per-second. With --role it
    /// plays one role of a prefill/decode pair: prefill answers POST /v1/prefill; decode serves completions,
    /// asking every prefill peer (--prefill-peers, EBB_PEERS_PREFILL under `ebb up`) first.
    #[command(after_help = "Examples:
  ebb demo-model --listen 127.0.0.1:8000 --startup-delay 2s --concurrency 4
  curl localhost:8000/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'
  ebb demo-model --role prefill --listen 127.0.0.1:8001 &
  ebb demo-model --role decode --listen 127.0.0.1:8000 --prefill-peers 127.0.0.1:8001

Exit codes:
  0  stopped on SIGTERM or Ctrl-C after finishing the requests in flight
  1  cannot listen
  2  a bad flag")]
    DemoModel(demo_model::Args),
    /// Run the queue-proxy sidecar (the same code as the `queue-proxy` binary).
    ///
    /// Sits in front of the user's container in every serving pod: enforces the concurrency limit with a
    /// bounded queue, measures load for the autoscaler, owns the request timeouts, probes the container and
    /// drains on SIGTERM. `ebb inject` writes its settings as EBB_* variables; each is also a flag.
    #[command(after_help = COMPONENT_EXIT_CODES)]
    QueueProxy(Box<ebb_queue_proxy::cli::Args>),
    /// Run the Kubernetes autoscaler (the same code as the `autoscaler` binary).
    ///
    /// Collects every autoscaled service's load, decides its replicas (Knative's KPA), patches the
    /// Deployments' scale and switches each service's request path; replicas elect a leader with a Lease.
    /// manifests/autoscaler.yaml runs it.
    #[command(after_help = COMPONENT_EXIT_CODES)]
    Autoscaler(Box<ebb_autoscaler::cli::Args>),
    /// Run the activator in a cluster (the same code as the `activator` binary).
    ///
    /// Holds requests for services at zero or short of capacity, tells the autoscaler at once, and forwards
    /// each the moment a pod can take it. manifests/activator.yaml runs it.
    #[command(after_help = COMPONENT_EXIT_CODES)]
    Activator(Box<ebb_activator::cli::Args>),
    /// Run services locally with scale-to-zero: the gateway on :8080, the autoscaler, pods as processes.
    ///
    /// Without -f, a demo model service `demo` starts at zero. Each pod is a queue-proxy on its own
    /// 127.0.0.N and the service's command with HOST and PORT set. Ctrl-C drains and stops everything.
    #[command(after_help = "Examples:
  ebb up                                   # the demo: curl -H 'Host: demo' localhost:8080/v1/chat/completions ...
  ebb up -f ebb.yaml --port 8000           # your services (docs/examples/chat.yaml shows the file)
  ebb up -f docs/examples/ebb-2p1d.yaml    # a service of roles: 2 prefill + 1 decode pod per instance
  ebb status -w                            # in another terminal: watch them scale

Exit codes:
  0  stopped on Ctrl-C or SIGTERM after draining
  1  failed while running (a port taken, the runtime)
  2  a bad flag or a malformed ebb.yaml (one line per problem, naming the line and field)

Logs: --log-format text|json (EBB_LOG_FORMAT); text on a terminal, else JSON lines.")]
    Up(up::Args),
    /// Show autoscaled services: of a running `ebb up`, or of a cluster (--cluster, --context, --kubeconfig).
    ///
    /// A table of the services with their desired, ready and current replicas, request-path mode, phase,
    /// panic and the reason of the last change; or, with --service, that service's last decisions.
    Status(status::Args),
    /// Print a shell completion script for ebb.
    #[command(after_help = "Examples:
  ebb completion bash > ~/.local/share/bash-completion/completions/ebb
  ebb completion zsh > \"${fpath[1]}/_ebb\"
  ebb completion fish > ~/.config/fish/completions/ebb.fish
  source <(ebb completion bash)            # this shell only

Exit codes:
  0  printed
  2  an unknown shell")]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
        Command::Autoscaler(args) => ebb_autoscaler::cli::run(*args),
        Command::Activator(args) => ebb_activator::cli::run(*args),
        Command::Up(args) => up::run(args),
        Command::Status(args) => status::run(args),
        Command::PodSupervisor(args) => up::supervisor::run(args),
        Command::Completion { shell } => {
            // Into a buffer first: the generator panics on a write error, and `| head` is one.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ebb", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            ExitCode::SUCCESS
        }
    }
}
