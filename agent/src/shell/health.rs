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

/// An answer's head (status line and headers, as text) and the bytes after it, once the head
/// has come (its blank line, CRLF or bare LF).
fn head_and_rest(answer: &[u8]) -> Option<(String, &[u8])> {
    let crlf = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = answer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let (end, blank) = [crlf, lf].into_iter().flatten().min()?;
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    Some((head, &answer[end + blank..]))
}

/// The value of the header `name` (lower case) in `head` (lower-cased).
fn header(head: &str, name: &str) -> Option<String> {
    let lines = head.lines().skip(1);
    lines
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// The whole body of `answer`, once all of it has come: by its `Content-Length`, or decoded
/// from its chunks (`Transfer-Encoding: chunked`, which a server writing its answer in parts
/// uses). `None` while it has not, and for one whose end only the close tells.
fn body_of(answer: &[u8]) -> Option<Vec<u8>> {
    let (head, rest) = head_and_rest(answer)?;
    let header = |name: &str| header(&head, name);
    if header("transfer-encoding").is_some_and(|coding| coding.contains("chunked")) {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = String::from_utf8_lossy(&rest[..line_end]);
            let size = size.split(';').next().unwrap_or_default().trim().to_owned();
            let size = usize::from_str_radix(&size, 16).ok()?;
            let data = rest.get(line_end + 2..)?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(data.get(..size)?);
            rest = data.get(size + 2..)?;
        }
    }
    let length: usize = header("content-length")?.parse().ok()?;
    rest.get(..length).map(<[u8]>::to_vec)
}

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
    // An IPv6 address is bracketed in a Host header, as in a URL.
    let named = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_owned(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {named}:{port}\r\nUser-Agent: respawn-agent health check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    // Once its head has come: where its body starts, and its length where it says one. Each
    // read looks at what it brought only: a server that trickles its answer a byte at a time
    // must not make each read go over all of it again.
    let mut head: Option<(usize, Option<usize>)> = None;
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        let new_from = answer.len().saturating_sub(3);
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() >= MAX_ANSWER {
            break;
        }
        // Without a body to look for, the status line is enough; with one, the whole body
        // (a server may keep the connection open after it, whatever was asked).
        let blank = |w: &[u8]| w == b"\r\n\r\n" || w.ends_with(b"\n\n");
        if head.is_none() && answer[new_from..].windows(4).any(blank)
            || answer.len() < 4 && answer.ends_with(b"\n\n")
        {
            head = head_and_rest(&answer).map(|(text, rest)| {
                let chunked = header(&text, "transfer-encoding").is_some();
                let length = header(&text, "content-length").and_then(|n| n.parse().ok());
                let length = length.filter(|_| !chunked);
                (answer.len() - rest.len(), length)
            });
        }
        let enough = match (body, head) {
            (None, _) => answer[new_from..].windows(2).any(|w| w == b"\r\n"),
            (Some(_), None) => false,
            (Some(_), Some((start, Some(length)))) => answer.len() - start >= length,
            // Chunked (or to the close): parsed whole once its last chunk may have come.
            (Some(_), Some((_, None))) => {
                answer.ends_with(b"0\r\n\r\n") && body_of(&answer).is_some()
            }
        };
        if enough {
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
        // What came of it, where the answer was cut off or closed before its end.
        let content = body_of(&answer).or_else(|| Some(head_and_rest(&answer)?.1.to_vec()));
        let content = String::from_utf8_lossy(content.as_deref().unwrap_or_default());
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
                    stop_leftovers(config, None);
                    output.await
                }
            },
        };
        Ok::<_, String>((status, text))
    })
    .await;
    if waited.is_err() {
        // The probe's group first, then what left it (once orphaned, the agent's). The group
        // killed here is still dying, not left behind; one the reaper collected was not
        // killed, and what is left of it is.
        let killed = exits.contains(launched.pid);
        drop(unfinished);
        stop_leftovers(config, killed.then_some(launched.pid));
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
/// the agent inherited once the probe was gone): found by the tag each probe carries; not the
/// group `dying`, killed already.
fn stop_leftovers(config: &ProcessConfig, dying: Option<u32>) {
    let tag = format!("{}={}", crate::config::PROBE_VAR, config.name);
    let mut left = crate::shell::procfs::inherited_with(&tag);
    left.retain(|stat| Some(stat.pgrp) != dying);
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

/// How much of the end of each of a probe's streams is kept: its last line says why it failed.
const KEPT_OUTPUT: usize = 4096;

/// The probe's output, the end of each stream, stdout's then stderr's, each on lines of its
/// own: the last line is stderr's when it said anything.
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
                    kept.extend_from_slice(&chunk[..n]);
                    let over = kept.len().saturating_sub(KEPT_OUTPUT);
                    kept.drain(..over);
                }
            }
        }
        kept
    }
    let (out, err) = tokio::join!(drain(stdout), drain(stderr));
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push('\n');
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

    /// A server on a port of its own that gives each connection the next of `answers`,
    /// after reading its request; with `left_open`, it never closes one.
    async fn answering(answers: &'static [&'static str], left_open: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            for answer in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
                if left_open {
                    kept.push(socket);
                }
            }
            std::future::pending::<()>().await;
        });
        port
    }

    #[tokio::test]
    async fn http_checks_status_and_body() {
        let answers = &[
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbusy\n",
            "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            "garbage",
        ];
        let port = answering(answers, false).await;
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

    /// Found by a review: a server that writes its answer in parts (Node's `res.write`)
    /// sends it chunked, and the text looked for straddled two chunks; one that keeps the
    /// connection open after a whole answer was waited for until the timeout.
    #[tokio::test]
    async fn http_reads_a_chunked_body_and_one_left_open_by_its_length() {
        // Each left open, whatever the request said.
        let answers = &[
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"checks\":1,\"sta\r\n9;x=y\r\ntus\":\"ok\"\r\n1\r\n}\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy",
            "HTTP/1.1 200 OK\nContent-Length: 7\n\nhealthy",
        ];
        let port = answering(answers, true).await;
        let probe = |body: &'static str| {
            let probe = http("127.0.0.1", port, "/", (200, 299), Some(body));
            tokio::time::timeout(Duration::from_secs(5), probe)
        };
        assert_eq!(probe("\"status\":\"ok\"}").await, Ok(Ok(())));
        assert_eq!(probe("healthy").await, Ok(Ok(())));
        assert_eq!(probe("healthy").await, Ok(Ok(())));
    }

    /// Found by a review: only the first 4 KiB were kept, and stderr was glued onto stdout's
    /// last line, so the failure named a line of progress, or half of one.
    #[tokio::test]
    async fn a_probes_last_line_is_its_own_and_from_the_end_of_its_output() {
        let (out_read, out_write) = nix::unistd::pipe().unwrap();
        let (err_read, err_write) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut out = std::fs::File::from(out_write);
            let mut err = std::fs::File::from(err_write);
            use std::io::Write as _;
            for i in 1..=500 {
                writeln!(out, "checking shard {i}: ok").unwrap();
            }
            write!(out, "no newline at the end").unwrap();
            writeln!(err, "shard 501: DISK FULL").unwrap();
        });
        let text = read_output(out_read, err_read).await;
        writer.join().unwrap();
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        assert_eq!(last, Some("shard 501: DISK FULL"));
        assert!(
            text.contains("checking shard 500: ok\nno newline at the end\n"),
            "{text}"
        );
        assert!(text.len() <= 2 * KEPT_OUTPUT + 1, "{}", text.len());
    }

    #[test]
    fn a_body_is_whole_by_its_length_or_its_last_chunk() {
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"),
            None
        );
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcdef"),
            Some(b"abcd".to_vec())
        );
        assert_eq!(body_of(b"HTTP/1.1 200 OK\r\n\r\nto the close"), None);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n";
        assert_eq!(body_of(chunked), None, "no last chunk yet");
        let whole = [&chunked[..], b"0\r\n\r\n"].concat();
        assert_eq!(body_of(&whole), Some(b"abc".to_vec()));
        assert_eq!(
            body_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            None
        );
    }
}
