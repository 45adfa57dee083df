//! Watching a running child: its health probes, and what it says over the notify protocol,
//! turned into messages for the runtime; a watchdog ping that does not come in time is
//! reported as it falls due. The runtime counts the probes' results and decides, and stops
//! these tasks when the child is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ProcessConfig;
use crate::shell::health::{self, ProbeExits};
use crate::shell::notify::{NotifySocket, Said};
use crate::supervisor::health::Tracker;

/// What was seen of one child.
#[derive(Debug)]
pub enum Seen {
    /// It said `READY=1`.
    Ready,
    /// It said `STATUS=…`.
    Status(String),
    /// Its watchdog ping is overdue.
    Unhealthy(String),
    /// A health probe's result.
    Probe(Result<(), String>),
}

#[derive(Debug)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    pub seen: Seen,
}

/// Starts watching the child `pid` of `config`; the tasks run until aborted.
pub fn start(
    config: Arc<ProcessConfig>,
    pid: u32,
    notify: Option<NotifySocket>,
    exits: &ProbeExits,
    to: &mpsc::UnboundedSender<Watched>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let report = {
        let (name, to) = (config.name.clone(), to.clone());
        move |seen: Seen| {
            let _ = to.send(Watched {
                name: name.clone(),
                pid,
                seen,
            });
        }
    };
    if config.health.is_some() {
        let (config, exits, report) = (Arc::clone(&config), exits.clone(), report.clone());
        tasks.push(tokio::spawn(async move {
            let Some(check) = config.health.clone() else {
                return;
            };
            let mut ready = false;
            loop {
                tokio::time::sleep(Tracker::next_delay(&check, ready)).await;
                let result = health::probe(&config, &check.probe, check.timeout, &exits).await;
                ready |= result.is_ok();
                report(Seen::Probe(result));
            }
        }));
    }
    if let Some(socket) = notify {
        let watchdog = config.watchdog;
        tasks.push(tokio::spawn(listen(socket, pid, watchdog, report)));
    }
    tasks
}

/// Reads the child's notify socket, and keeps its watchdog — from its `READY=1` on, as
/// systemd does: a program written for systemd pings only once it has started, however long
/// that takes.
async fn listen(socket: NotifySocket, pid: u32, watchdog: Option<Duration>, report: impl Fn(Seen)) {
    let mut ready = false;
    let mut due = None;
    loop {
        let overdue = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            said = socket.recv(pid) => match said {
                Ok(said) => {
                    for s in said {
                        match s {
                            Said::Ready => {
                                if !ready {
                                    due = watchdog.map(|w| Instant::now() + w);
                                }
                                ready = true;
                                report(Seen::Ready);
                            }
                            Said::Status(text) => report(Seen::Status(text)),
                            Said::Watchdog if ready => {
                                due = watchdog.map(|w| Instant::now() + w);
                            }
                            Said::Watchdog => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "the notify socket failed");
                    return;
                }
            },
            () = overdue => {
                if let Some(w) = watchdog {
                    report(Seen::Unhealthy(format!(
                        "watchdog: no WATCHDOG=1 within {}",
                        humantime::format_duration(w)
                    )));
                }
                due = None;
            }
        }
    }
}
