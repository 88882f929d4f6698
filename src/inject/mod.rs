//! `ebb inject FILE|-`: adds the queue-proxy sidecar to every scale target labelled `ebb.dev/service` in
//! multi-document Kubernetes YAML (Deployments, StatefulSets, Argo Rollouts, a LeaderWorkerSet's leader
//! template) and prints the result. Other documents pass through as they were written (comments included),
//! in order; an object that already has the sidecar is updated in place, so injecting twice gives the same
//! output as once.
//!
//! The sidecar itself comes from the `ebb-inject` crate, which the autoscaler's admission webhook uses too; here
//! is what makes it a command:
//! - [`stream`]: the YAML stream: documents, `kind: List`, the input's `config-autoscaler`, messages;
//! - [`documents`]: cutting the stream into documents that keep their text;
//! - [`deployment`]: which objects are ebb's, and the service a scale target describes.

mod deployment;
mod documents;
mod stream;

use std::process::ExitCode;

use crate::manifest::{Source, read_source};

/// The one image of every ebb component (cluster conventions).
pub const IMAGE: &str = "ghcr.io/ebb-dev/ebb:0.1.0";

/// Arguments of `ebb inject`.
#[derive(clap::Args)]
pub struct Args {
    /// Kubernetes YAML (several documents, `kind: List` too); `-` reads standard input.
    #[arg(value_name = "FILE")]
    file: String,
    /// The image of the queue-proxy sidecar.
    #[arg(long, default_value = IMAGE)]
    image: String,
}

/// Runs `ebb inject`.
pub fn run(args: Args) -> ExitCode {
    let source = Source(args.file);
    let text = match read_source(&source) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("ebb inject: {source}: {err}");
            return ExitCode::from(ebb_process::exit::USAGE);
        }
    };
    match stream::inject(&text, &args.image) {
        Ok(injected) => {
            for warning in &injected.warnings {
                eprintln!("ebb inject: {source}: warning: {warning}");
            }
            print!("{}", injected.yaml);
            eprintln!("ebb inject: {source}: {} service(s) with the queue-proxy", injected.deployments);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("ebb inject: {source}: {error}");
            }
            eprintln!("ebb inject: {} error(s); nothing printed", errors.len());
            ExitCode::from(ebb_process::exit::USAGE)
        }
    }
}
