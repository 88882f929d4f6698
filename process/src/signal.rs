//! The signals that stop a process: SIGTERM (the kubelet, a supervisor) and SIGINT (Ctrl-C).

use std::fmt;

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        })
    }
}

/// Resolves on SIGTERM or SIGINT, saying which. When the handlers cannot be installed it logs so and never
/// resolves: the process then ends only when killed.
pub async fn shutdown() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => Stop::Terminate,
                _ = int.recv() => Stop::Interrupt,
            }
        }
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!("cannot install signal handlers ({err}); the process stops only when killed");
            std::future::pending().await
        }
    }
}
