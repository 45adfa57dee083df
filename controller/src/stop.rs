//! How a command that runs until told to stop hears it: Ctrl-C (and, for the services,
//! SIGTERM), listened for from when its long wait begins (before, the default action ends it)
//! and never lost after. A signal that comes while the command waits for something else — a broker that is away — ends it at the next look, where a
//! listener made afresh at each wait would miss it (and the handler installed by the first
//! one keeps the signal's default action from ending the process).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that stop a command.
pub struct Stop {
    interrupt: Signal,
    terminate: Option<Signal>,
}

impl Stop {
    /// Ctrl-C stops the command; SIGTERM keeps its default action.
    pub fn on_ctrl_c() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: None,
        })
    }

    /// Ctrl-C or SIGTERM stops the service (systemd stops it with SIGTERM).
    pub fn on_ctrl_c_or_term() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: Some(signal(SignalKind::terminate())?),
        })
    }

    /// Resolves once a stopping signal has come, also one that came while nothing waited.
    pub async fn heard(&mut self) {
        let Self {
            interrupt,
            terminate,
        } = self;
        let terminate = async {
            match terminate {
                Some(terminate) => terminate.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate => {}
        }
    }
}
