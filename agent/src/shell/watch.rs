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

/// How often a child's `STATUS=` is passed on at most, the latest one winning: a child that
/// says it thousands of times a second must cost the runtime nothing (each one passed on is
/// a message for it to read).
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Datagrams read from one child's notify socket per [`READ_WINDOW`] at most: a child that
/// sends them as fast as it can waits for the agent (its socket buffer full), rather than
/// the agent spending its time on them while other processes wait to be restarted. Far more
/// than any program says in earnest (a watchdog ping every few seconds).
const READS_PER_WINDOW: u32 = 50;
const READ_WINDOW: Duration = Duration::from_millis(100);

/// Reads the child's notify socket, and keeps its watchdog — from its `READY=1` on, as
/// systemd does: a program written for systemd pings only once it has started, however long
/// that takes. Only its first `READY=1` is passed on, and its `STATUS=` at most every
/// [`STATUS_EVERY`].
async fn listen(socket: NotifySocket, pid: u32, watchdog: Option<Duration>, report: impl Fn(Seen)) {
    let mut ready = false;
    let mut due = None;
    // The latest status not passed on yet, and when the next may be.
    let mut status: Option<String> = None;
    let mut status_free_at = Instant::now();
    let (mut reads, mut window_end) = (0, Instant::now() + READ_WINDOW);
    loop {
        if Instant::now() >= window_end {
            (reads, window_end) = (0, Instant::now() + READ_WINDOW);
        }
        let overdue = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let status_due = async {
            match status {
                Some(_) => tokio::time::sleep_until(status_free_at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            said = socket.recv(pid), if reads < READS_PER_WINDOW => match said {
                Ok(said) => {
                    reads += 1;
                    let mut now_ready = false;
                    for s in said {
                        match s {
                            Said::Ready => now_ready |= !ready,
                            Said::Status(text) => status = Some(text),
                            Said::Watchdog => {
                                if ready || now_ready {
                                    due = watchdog.map(|w| Instant::now() + w);
                                }
                            }
                            Said::WatchdogTrigger => {
                                report(Seen::Unhealthy("watchdog: it said WATCHDOG=trigger".into()));
                                due = None;
                            }
                        }
                    }
                    if now_ready {
                        // What it says with its readiness is shown with it, whatever the pace.
                        if let Some(text) = status.take() {
                            report(Seen::Status(text));
                        }
                        due = watchdog.map(|w| Instant::now() + w);
                        ready = true;
                        report(Seen::Ready);
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
            () = status_due => {}
            () = tokio::time::sleep_until(window_end), if reads >= READS_PER_WINDOW => {}
        }
        if status.is_some() && Instant::now() >= status_free_at {
            report(Seen::Status(status.take().unwrap_or_default()));
            status_free_at = Instant::now() + STATUS_EVERY;
        }
    }
}
