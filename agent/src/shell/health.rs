//! Health probes of a running process over HTTP, TCP or with a command (what their results
//! come to is [`crate::supervisor::health`]'s). Probes run one at a time per process, each
//! bounded by its timeout, so a hung probe is abandoned and never piles up; an `exec` probe's
//! whole process group is killed then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use respawn_common::status::ExitStatus;
use respawn_common::text::cut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::config::{Probe, ProcessConfig};

/// Exec probes the agent started, by pid: their exit arrives through the agent's reaper.
#[derive(Clone, Default)]
pub struct ProbeExits(Arc<Mutex<HashMap<u32, oneshot::Sender<ExitStatus>>>>);

impl ProbeExits {
    fn watch(&self, pid: u32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, tx);
        rx
    }

    /// Whether `pid` is a probe's.
    pub fn contains(&self, pid: u32) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&pid)
    }

    /// A probe exited: tells its waiter.
    pub fn exited(&self, pid: u32, status: ExitStatus) {
        let waiter = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
        if let Some(waiter) = waiter {
            let _ = waiter.send(status);
        }
    }
}

/// Runs one probe for `config`'s process, at most `timeout`.
pub async fn probe(
    config: &ProcessConfig,
    probe: &Probe,
    timeout: Duration,
    exits: &ProbeExits,
) -> Result<(), String> {
    let within =
        |what: &'static str| format!("no {what} within {}", humantime::format_duration(timeout));
    match probe {
        Probe::Http {
            host,
            port,
            path,
            status,
            body,
            ..
        } => tokio::time::timeout(timeout, http(host, *port, path, *status, body.as_deref()))
            .await
            .map_err(|_| within("answer"))?,
        Probe::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str()))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {address}: {e}")),
                Err(_) => Err(within("connection")),
            }
        }
        Probe::Exec { command } => exec(config, command, timeout, exits).await,
    }
}

/// The most of an answer that is read.
const MAX_ANSWER: usize = 64 * 1024;

async fn http(
    host: &str,
    port: u16,
    path: &str,
    status: (u16, u16),
    body: Option<&str>,
) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: respawn-agent health check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() >= MAX_ANSWER {
            break;
        }
        // Without a body to look for, the status line is enough.
        if body.is_none() && answer.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "the answer is not HTTP".to_owned())?;
    if code < status.0 || code > status.1 {
        return Err(format!("HTTP {code}"));
    }
    if let Some(wanted) = body {
        let content = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if !content.contains(wanted) {
            return Err(format!(
                "HTTP {code}, but the body does not contain {wanted:?}"
            ));
        }
    }
    Ok(())
}

async fn exec(
    config: &ProcessConfig,
    command: &[String],
    timeout: Duration,
    exits: &ProbeExits,
) -> Result<(), String> {
    // Started and registered with no await in between: the agent is single-threaded, so the
    // reaper cannot collect the probe before its waiter is in place.
    let launched = crate::shell::process::spawn_probe(config, command)?;
    let mut exited = exits.watch(launched.pid);
    let unfinished = Unfinished {
        pid: launched.pid,
        exits,
    };
    let output = read_output(launched.stdout, launched.stderr);
    let waited = tokio::time::timeout(timeout, async {
        tokio::pin!(output);
        let mut read = None;
        let status = loop {
            tokio::select! {
                text = &mut output, if read.is_none() => read = Some(text),
                status = &mut exited => break status.map_err(|_| "the probe vanished".to_owned())?,
            }
        };
        let text = match read {
            Some(text) => text,
            // Its output still open once it exited: something it started holds it, and
            // would pile up at each probe, outliving what it checks.
            None => match tokio::time::timeout(LEFTOVER_GRACE, &mut output).await {
                Ok(text) => text,
                Err(_) => {
                    stop_leftovers(config);
                    output.await
                }
            },
        };
        Ok::<_, String>((status, text))
    })
    .await;
    if waited.is_err() {
        // The probe's group first, then what left it (once orphaned, the agent's).
        drop(unfinished);
        stop_leftovers(config);
    }
    match waited {
        // Abandoned: `unfinished` kills it and everything it started.
        Err(_) => Err(format!(
            "{:?} did not finish within {}",
            command.join(" "),
            humantime::format_duration(timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok((ExitStatus::Code { code: 0 }, _))) => Ok(()),
        Ok(Ok((status, output))) => {
            let last = output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            match last {
                "" => Err(format!("{:?} ended with {status}", command.join(" "))),
                line => Err(format!(
                    "{:?} ended with {status}: {}",
                    command.join(" "),
                    cut(line, 200)
                )),
            }
        }
    }
}

/// How long an exec probe's output may stay open after it exited before what holds it is
/// taken for something the probe left behind.
const LEFTOVER_GRACE: Duration = Duration::from_millis(50);

/// Stops what exec probes of `config`'s process left running (a daemon they started, which
/// the agent inherited once the probe was gone): found by the tag each probe carries.
fn stop_leftovers(config: &ProcessConfig) {
    let tag = format!("{}={}", crate::config::PROBE_VAR, config.name);
    let left = crate::shell::procfs::inherited_with(&tag);
    if !left.is_empty() {
        let pids: Vec<u32> = left.iter().map(|stat| stat.pid).collect();
        tracing::warn!(process = %config.name, ?pids, "stopped what a health probe left running: a probe must not start processes that outlive it");
    }
    for stat in &left {
        let _ = crate::shell::process::signal_found(stat, nix::sys::signal::Signal::SIGKILL);
    }
}

/// An exec probe under way, by its pid, which leads its process group. It goes with
/// everything it started when its waiter goes first: at a timeout, and also when the process
/// it checks is stopped or the agent exits in the middle of it. Once the reaper has collected
/// it (and so taken it out of `exits`), also in the same pass that drops its waiter, its pid
/// may be anyone's, and nothing is signalled.
struct Unfinished<'a> {
    pid: u32,
    exits: &'a ProbeExits,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.exits.contains(self.pid) {
            let _ =
                crate::shell::process::signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The probe's output, both streams, up to a limit.
async fn read_output(stdout: std::os::fd::OwnedFd, stderr: std::os::fd::OwnedFd) -> String {
    async fn drain(fd: std::os::fd::OwnedFd) -> Vec<u8> {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return Vec::new();
        };
        let mut kept = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if kept.len() < 4096 {
                        kept.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        kept
    }
    let (out, err) = tokio::join!(drain(stdout), drain(stderr));
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push_str(&String::from_utf8_lossy(&err));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_probe_goes_with_its_group_unless_the_reaper_collected_it() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::process::Command;
        let group_leader = || {
            let mut command = Command::new("sleep");
            command.arg("30").process_group(0);
            command.spawn().expect("sleep starts")
        };
        let exits = ProbeExits::default();
        let mut abandoned = group_leader();
        let _waiter = exits.watch(abandoned.id());
        drop(Unfinished {
            pid: abandoned.id(),
            exits: &exits,
        });
        let status = abandoned.wait().expect("waited");
        assert_eq!(status.signal(), Some(nix::libc::SIGKILL));
        // As if reaped in the pass that dropped the waiter: the pid is no longer the probe's.
        let mut unrelated = group_leader();
        exits.watch(unrelated.id());
        exits.exited(unrelated.id(), ExitStatus::Code { code: 0 });
        drop(Unfinished {
            pid: unrelated.id(),
            exits: &exits,
        });
        let pid = nix::unistd::Pid::from_raw(unrelated.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signalled");
        let status = unrelated.wait().expect("waited");
        assert_eq!(
            status.signal(),
            Some(nix::libc::SIGTERM),
            "not killed by the guard"
        );
    }

    #[tokio::test]
    async fn http_checks_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbusy\n",
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
                "garbage",
            ] {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let probe = |path: &'static str, body: Option<&'static str>| {
            http("127.0.0.1", port, path, (200, 299), body)
        };
        assert_eq!(probe("/health", Some("ok")).await, Ok(()));
        assert_eq!(
            probe("/health", Some("ok")).await,
            Err("HTTP 200, but the body does not contain \"ok\"".into())
        );
        assert_eq!(probe("/", None).await, Err("HTTP 503".into()));
        assert_eq!(probe("/", None).await, Err("the answer is not HTTP".into()));
    }
}
