//! The local control socket: `respawn-agent status|start|stop|restart|logs|reload` talk to the running
//! agent through a Unix socket in its state directory (mode 0600), one JSON line each way.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use respawn_common::messages::ConfigChanges;
use respawn_common::status::ProcessStatus;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::logs::LogLine;

/// The answer to every request once the agent has begun to stop.
pub const SHUTTING_DOWN: &str = "the agent is shutting down";

/// Requests longer than this are refused unread.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Connections served at once; more wait to be accepted. A tool that opens connections and
/// never reads its answers (a `logs` reply may be a megabyte) must not take the agent's memory
/// or file descriptors, which restarts need.
const MAX_CONNECTIONS: usize = 32;

/// How long a request may take to arrive, and its answer to be taken.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the running agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Start {
        process: String,
    },
    Stop {
        process: String,
    },
    Restart {
        process: String,
    },
    Logs {
        process: String,
        lines: usize,
    },
    /// Read the configuration file again, as SIGHUP does, and say what changes: refused if it
    /// is not `file`, the one the caller meant (absent from callers before 0.2).
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<PathBuf>,
    },
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status {
        agent: String,
        /// `cgroup` or `process-group` (absent from agents before 0.2).
        #[serde(default)]
        containment: Option<String>,
        processes: Vec<ProcessStatus>,
    },
    Logs {
        process: String,
        lines: Vec<LogLine>,
        /// Lines that no longer fit the ring and were dropped.
        dropped: u64,
    },
    Done {
        process: String,
        outcome: Outcome,
        /// What the outcome does not say: a stop that could not be saved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    /// A reload was taken: what it starts, restarts and stops (under way, not done).
    Reloaded {
        /// The file the agent read: the one it was started with.
        path: String,
        changes: Box<ConfigChanges>,
        /// Who may command the agent, where that changed: `added carol; removed bob`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operators: Option<String>,
        /// What waits for a restart of the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    Error {
        message: String,
    },
}

/// What a start, stop or restart achieved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Started { pid: u32 },
    AlreadyRunning { pid: u32 },
    Stopped,
    AlreadyStopped,
    Restarted { old_pid: Option<u32>, new_pid: u32 },
}

impl Outcome {
    /// The outcome for `process` as a sentence, as the CLI prints it and a remote reply says
    /// it: `restarted doorbot: pid 812 → 1301`.
    pub fn sentence(&self, process: &str) -> String {
        match self {
            Self::Started { pid } => format!("started {process} (pid {pid})"),
            Self::AlreadyRunning { pid } => format!("{process} is already running (pid {pid})"),
            Self::Stopped => format!("stopped {process}"),
            Self::AlreadyStopped => format!(
                "{process} is already stopped; it now stays stopped, also across agent restarts, until started"
            ),
            Self::Restarted {
                old_pid: Some(old),
                new_pid,
            } => format!("restarted {process}: pid {old} → {new_pid}"),
            Self::Restarted {
                old_pid: None,
                new_pid,
            } => format!("restarted {process}: pid {new_pid}"),
        }
    }
}

/// A request on its way to the runtime, with the channel for its reply.
pub type Envelope = (Request, oneshot::Sender<Reply>);

/// Accepts connections forever, [`MAX_CONNECTIONS`] at once, and forwards each request to
/// the runtime.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Envelope>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut failures = crate::throttle::Throttle::new(1, Duration::from_secs(60));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let requests = requests.clone();
                tokio::spawn(async move {
                    handle(stream, requests).await;
                    drop(slot);
                });
            }
            Err(e) => {
                let verdict = failures.allow(std::time::Instant::now());
                if let crate::throttle::Verdict::Allow { refused } = verdict {
                    tracing::warn!(error = %e, similar_before = refused, "control socket accept failed");
                }
                // Typically EMFILE: give the runtime a moment to release descriptors.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: tokio::net::UnixStream, requests: mpsc::Sender<Envelope>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        CLIENT_TIMEOUT,
        tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES)).read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => Reply::Error {
            message: "timed out waiting for the request".into(),
        },
        Ok(Err(e)) => Reply::Error {
            message: format!("cannot read the request: {e}"),
        },
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Error {
                message: format!("malformed request: {e}"),
            },
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((request, tx)).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(reply) => reply,
                    Err(_) => Reply::Error {
                        message: SHUTTING_DOWN.into(),
                    },
                }
            }
        },
    };
    if let Ok(mut json) = serde_json::to_vec(&reply) {
        json.push(b'\n');
        let _ = tokio::time::timeout(CLIENT_TIMEOUT, write.write_all(&json)).await;
    }
}

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {source}{}", absent_hint(source))]
    Connect { path: String, source: io::Error },
    #[error("no answer from the agent within {0:?}; the command may still be under way (see `respawn-agent status`)")]
    Timeout(Duration),
    #[error("no answer from the agent: {0}")]
    Io(#[from] io::Error),
    #[error("the agent sent an unreadable answer: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Where no agent listens at the socket, why that may be; nothing where one does and the
/// refusal is the news (a socket that is not the caller's).
fn absent_hint(source: &io::Error) -> &'static str {
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => " (is respawn-agent running with this configuration? One started before an edit of [agent] state_dir is still at the old place until it restarts: restart it, e.g. systemctl restart respawn-agent)",
        _ => "",
    }
}

/// Sends one request to the agent whose socket is at `socket` and waits up to `timeout` for
/// the reply.
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut json = serde_json::to_vec(request)?;
    json.push(b'\n');
    stream.write_all(&json)?;
    // An interrupted command goes on in the agent from here; before, nothing was asked.
    respawn_common::interrupt::asked();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
            _ => ClientError::Io(e),
        })?;
    if line.is_empty() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection",
        )));
    }
    Ok(serde_json::from_str(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older CLI's reload (no file) is taken as one, and the file a newer one names goes
    /// with it.
    #[test]
    fn a_reload_reads_with_and_without_the_file_meant() {
        let old: Request = serde_json::from_str(r#"{"cmd":"reload"}"#).unwrap();
        assert_eq!(old, Request::Reload { file: None });
        let meant = Request::Reload {
            file: Some(PathBuf::from("/etc/respawn/agent.toml")),
        };
        let json = serde_json::to_string(&meant).unwrap();
        assert_eq!(json, r#"{"cmd":"reload","file":"/etc/respawn/agent.toml"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), meant);
    }

    #[test]
    fn a_socket_refused_to_its_caller_is_not_said_to_be_an_agent_away() {
        let connect = |kind: io::ErrorKind| ClientError::Connect {
            path: "/var/lib/respawn/agent.sock".into(),
            source: kind.into(),
        };
        let away = "is respawn-agent running with this configuration?";
        assert!(connect(io::ErrorKind::NotFound).to_string().contains(away));
        assert!(connect(io::ErrorKind::ConnectionRefused)
            .to_string()
            .contains(away));
        // The agent is there: why it cannot be asked comes next, alone (found by a new-user
        // run: the unrelated question came first).
        let refused = connect(io::ErrorKind::PermissionDenied).to_string();
        assert!(!refused.contains(away), "{refused}");
    }

    #[test]
    fn requests_and_replies_have_a_stable_json_shape() {
        let json = serde_json::to_string(&Request::Restart {
            process: "web".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"cmd":"restart","process":"web"}"#);
        let done = Reply::Done {
            process: "web".into(),
            outcome: Outcome::Restarted {
                old_pid: Some(1),
                new_pid: 2,
            },
            warning: None,
        };
        let json = serde_json::to_string(&done).unwrap();
        assert_eq!(
            json,
            r#"{"reply":"done","process":"web","outcome":{"outcome":"restarted","old_pid":1,"new_pid":2}}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), done);
    }

    #[test]
    fn outcomes_read_as_sentences() {
        assert_eq!(
            Outcome::Restarted {
                old_pid: Some(812),
                new_pid: 1301
            }
            .sentence("doorbot"),
            "restarted doorbot: pid 812 → 1301"
        );
        assert_eq!(
            Outcome::AlreadyStopped.sentence("x"),
            "x is already stopped; it now stays stopped, also across agent restarts, until started"
        );
    }
}
