//! The systemd notify protocol, both ways. A child that speaks it (`sd_notify = true`) gets a
//! socket of its own in `NOTIFY_SOCKET` and tells the agent there that it is ready
//! (`READY=1`), still alive (`WATCHDOG=1`) and how it is (`STATUS=…`); only messages from its
//! own process group count. And the agent tells systemd the same about itself.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use tokio::io::Interest;

/// What a child said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    Ready,
    Watchdog,
    /// `WATCHDOG=trigger`: the process found itself broken, and asks to be handled as a
    /// watchdog failure at once, as systemd does.
    WatchdogTrigger,
    Status(String),
}

/// Reads one datagram of the protocol: `KEY=VALUE` lines; unknown keys are ignored.
pub fn parse(datagram: &[u8]) -> Vec<Said> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Said::Ready),
            Some(("WATCHDOG", "1")) => Some(Said::Watchdog),
            Some(("WATCHDOG", "trigger")) => Some(Said::WatchdogTrigger),
            Some(("STATUS", text)) => Some(Said::Status(text.chars().take(200).collect())),
            _ => None,
        })
        .collect()
}

/// A child's notify socket: an abstract-namespace datagram socket, so that a child running
/// as another user can reach it without any file permissions, which checks who sends.
pub struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    /// Whether a message from outside the group was said at warning level already: once per
    /// run is enough to explain a process that never becomes ready.
    told_outsider: AtomicBool,
    /// The value for the child's `NOTIFY_SOCKET`.
    pub address: String,
    /// Whose it is, for the log.
    process: String,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

impl NotifySocket {
    pub fn bind(process: &str) -> io::Result<Self> {
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        let name = format!("respawn/{}/{process}/{n}", std::process::id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        socket.set_nonblocking(true)?;
        // Have the kernel attach each sender's pid, to check it belongs to the child.
        socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        Ok(Self {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            told_outsider: AtomicBool::new(false),
            address: format!("@{name}"),
            process: process.to_owned(),
        })
    }

    /// The next thing said by a process in the group led by `group`; datagrams from anyone
    /// else are dropped.
    pub async fn recv(&self, group: u32) -> io::Result<Vec<Said>> {
        loop {
            self.socket.readable().await?;
            let fd = self.socket.as_raw_fd();
            let received = self.socket.try_io(Interest::READABLE, || {
                let mut buffer = [0u8; 4096];
                // Room for descriptors too (`FDSTORE=1` sends them): without it the kernel cuts
                // the credentials off with them, and the main process reads as a stranger.
                let mut space = nix::cmsg_space!(socket::UnixCredentials, [std::os::fd::RawFd; 16]);
                let mut iov = [io::IoSliceMut::new(&mut buffer)];
                let message = socket::recvmsg::<UnixAddr>(
                    fd,
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let mut sender = None;
                for c in message.cmsgs().into_iter().flatten() {
                    match c {
                        ControlMessageOwned::ScmCredentials(credentials) => {
                            sender = Some(credentials.pid());
                        }
                        // The agent keeps no descriptors for its children: each is closed.
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                let _ = nix::unistd::close(fd);
                            }
                        }
                        _ => {}
                    }
                }
                let length = message.bytes;
                Ok((sender, buffer[..length].to_vec()))
            });
            let (sender, datagram) = match received {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let sender_group = sender.map(|pid| nix::unistd::getpgid(Some(Pid::from_raw(pid))));
            let gone = matches!(sender_group, Some(Err(nix::errno::Errno::ESRCH)));
            let from_child = sender_group
                .and_then(Result::ok)
                .is_some_and(|pgid| i64::from(pgid.as_raw()) == i64::from(group));
            if from_child {
                return Ok(parse(&datagram));
            }
            if self.told_outsider.swap(true, Ordering::Relaxed) {
                tracing::debug!(process = %self.process, ?sender, gone, "ignoring a notify message");
            } else if gone {
                // A `systemd-notify` a script runs may be gone (reaped) before its message is
                // read: who sent it can no longer be told apart from a daemon's child.
                tracing::warn!(
                    process = %self.process,
                    ?sender,
                    "ignoring a notify message whose sender was gone before it could be told to be of the process's group (a short-lived `systemd-notify`?): send it from a process that stays, such as the main process (sd_notify in the program), as systemd also asks"
                );
            } else {
                tracing::warn!(
                    process = %self.process,
                    ?sender,
                    group,
                    "ignoring a notify message from outside the process's group: only its main process and the processes of its group are heard (one that started a session of its own, such as a daemon, is not); send READY=1 from the main process"
                );
            }
        }
    }
}

/// What the service manager that started the agent told it about itself: its own, never its
/// children's (a child that notifies by itself would talk to systemd about the agent's unit,
/// and one with `sd_notify` would be told of a watchdog it never asked for).
const MANAGER_VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The values of [`MANAGER_VARIABLES`] the agent was started with, in that order.
static MANAGER: OnceLock<[Option<OsString>; 3]> = OnceLock::new();

fn manager() -> &'static [Option<OsString>; 3] {
    MANAGER.get_or_init(|| MANAGER_VARIABLES.map(std::env::var_os))
}

/// Keeps what the service manager told the agent and takes it out of the agent's environment,
/// so that no child inherits it. Taken out once, at start, rather than from each child's
/// environment: that would make every start of a process or an `exec` probe copy the whole
/// environment (a third of an `exec` probe's cost). Must run before the agent starts a thread,
/// as changing the environment is not safe while another thread may read it.
pub fn take_manager_variables() {
    manager();
    for name in MANAGER_VARIABLES {
        std::env::remove_var(name);
    }
}

/// Tells the service manager that started the agent (`NOTIFY_SOCKET`), if any, `state`.
/// Failing to is logged, never fatal.
pub fn to_systemd(state: &str) {
    let [Some(path), _, _] = manager() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = (|| -> io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let address = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &address)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "cannot notify the service manager");
    }
}

/// How often the agent must ping systemd's watchdog, if it has one for the agent: half the
/// interval systemd gave (`WATCHDOG_USEC`), as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let [_, usec, pid] = manager();
    let number = |value: &Option<OsString>| value.as_ref()?.to_str()?.parse::<u64>().ok();
    if number(pid).is_some_and(|pid| pid != u64::from(std::process::id())) {
        return None;
    }
    let usec = number(usec)?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_s_lines() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=listening on :4567\nMAINPID=42\nWATCHDOG=1"),
            [
                Said::Ready,
                Said::Status("listening on :4567".into()),
                Said::Watchdog
            ]
        );
        assert_eq!(parse(b"READY=0\n\xff\xfe"), []);
        assert_eq!(parse(b"WATCHDOG=trigger"), [Said::WatchdogTrigger]);
    }

    #[tokio::test]
    async fn only_the_childs_process_group_is_heard() {
        let socket = NotifySocket::bind("test").unwrap();
        let name = socket.address.trim_start_matches('@').to_owned();
        let send = |text: &str| {
            let client = UnixDatagram::unbound().unwrap();
            let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            client.send_to_addr(text.as_bytes(), &address).unwrap();
        };
        // This test's own group is the "child"; a message claiming another group's is not.
        let own = nix::unistd::getpgrp().as_raw() as u32;
        send("STATUS=from someone else");
        send("READY=1");
        let said = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(own + 1));
        assert!(said.await.is_err(), "nothing from another group");
        send("READY=1");
        let said = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(own))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(said, [Said::Ready]);
    }

    /// `FDSTORE=1` sends descriptors with the message: it is still heard as its sender's, and
    /// the descriptors are closed, not kept.
    #[tokio::test]
    async fn a_message_with_descriptors_is_heard_and_they_are_closed() {
        use std::os::fd::AsRawFd as _;
        let socket = NotifySocket::bind("fds").unwrap();
        let name = socket.address.trim_start_matches('@').to_owned();
        let client = UnixDatagram::unbound().unwrap();
        let address = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        let fds = [write.as_raw_fd()];
        let rights = [socket::ControlMessage::ScmRights(&fds)];
        let iov = [io::IoSlice::new(b"READY=1\nFDSTORE=1")];
        socket::sendmsg(
            client.as_raw_fd(),
            &iov,
            &rights,
            MsgFlags::empty(),
            Some(&address),
        )
        .unwrap();
        drop(write);
        let own = nix::unistd::getpgrp().as_raw() as u32;
        let said = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(own))
            .await
            .expect("heard")
            .unwrap();
        assert_eq!(said, [Said::Ready]);
        // The write end it was sent is closed: the pipe reads as ended, not as empty.
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read).unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut pipe, &mut byte);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
        assert_eq!(ended.expect("not held open").unwrap(), 0);
    }
}
