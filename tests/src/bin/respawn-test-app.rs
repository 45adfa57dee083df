//! `respawn-test-app`: a program for the tests that misbehaves on cue (`--help` lists how).
//! Files in its working directory are the cues, each taken (deleted) once seen, so that the
//! next run behaves again. It runs until killed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use clap::Parser;

/// Whether the cue file `name` is there; it is consumed.
fn cue(name: &str) -> bool {
    std::fs::remove_file(name).is_ok()
}

fn http(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mut hung = false;
    let mut held = Vec::new();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        hung = hung || cue("hang");
        if hung {
            held.push(stream);
            continue;
        }
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    }
}

fn tcp(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    loop {
        if cue("close") {
            drop(listener);
            loop {
                std::thread::sleep(Duration::from_secs(1000));
            }
        }
        let _ = listener.accept();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn notify() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let path = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).expect("address"),
        None => SocketAddr::from_pathname(&path).expect("address"),
    };
    let socket = UnixDatagram::unbound().expect("socket");
    let send = |text: &str| {
        let _ = socket.send_to_addr(text.as_bytes(), &address);
    };
    send("STATUS=warming up");
    let mut ready = false;
    let mut pinging = true;
    loop {
        if !ready && cue("ready") {
            ready = true;
            send("READY=1\nSTATUS=serving");
        }
        if pinging && cue("stop-pinging") {
            pinging = false;
        }
        if pinging {
            send("WATCHDOG=1");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn grow() {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        if kept.len() < 50 {
            // Touched, so that it is resident.
            kept.push(vec![1u8; 10 * 1024 * 1024]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spin() {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

static TERMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The write end of the pipe that wakes the counter, once it is made.
static WAKE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn count_term(_: std::ffi::c_int) {
    TERMS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let wake = WAKE.load(std::sync::atomic::Ordering::SeqCst);
    if wake >= 0 {
        // SAFETY: the pipe's write end is never closed; write(2) is async-signal-safe.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(wake) };
        let _ = nix::unistd::write(fd, b"t");
    }
}

/// Counts each SIGTERM delivered (a handler of its own, not a flag two signals share) and
/// writes the count to `terms` when the handler wakes it.
fn count_terms() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::os::fd::IntoRawFd;
    let (woken, wake) = nix::unistd::pipe().expect("a pipe");
    WAKE.store(wake.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(count_term),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only increments an atomic and writes to a pipe.
    unsafe { sigaction(Signal::SIGTERM, &action) }.expect("a SIGTERM handler");
    std::fs::write("counting", "").expect("say it counts");
    let mut woken = std::fs::File::from(woken);
    let mut byte = [0u8; 64];
    while woken.read(&mut byte).is_ok_and(|n| n > 0) {
        let count = TERMS.load(std::sync::atomic::Ordering::SeqCst);
        std::fs::write("terms", count.to_string()).expect("write the count");
    }
}

/// A program for respawn's tests that misbehaves on cue: files in its working directory are
/// the cues, each taken (deleted) once seen, so that the next run behaves again. It runs
/// until killed; with no option it only waits.
#[derive(Parser)]
#[command(name = "respawn-test-app")]
struct Args {
    /// Answer `GET /health` with 200 `ok`; once a file `hang` appears, accept connections but
    /// never answer.
    #[arg(long, value_name = "PORT")]
    http: Option<u16>,
    /// Accept connections; once a file `close` appears, stop listening.
    #[arg(long, value_name = "PORT")]
    tcp: Option<u16>,
    /// Speak the notify protocol: `READY=1` once a file `ready` appears, and `WATCHDOG=1`
    /// every 100 ms until a file `stop-pinging` appears.
    #[arg(long)]
    notify: bool,
    /// Allocate (and touch) 10 MB every 100 ms, up to 500 MB.
    #[arg(long)]
    grow: bool,
    /// Keep one core busy.
    #[arg(long)]
    spin: bool,
    /// Count each SIGTERM, writing the count to a file `terms`, and go on (a file `counting`
    /// says the handler is in place).
    #[arg(long)]
    count_term: bool,
}

fn main() {
    let args = Args::parse();
    let mut threads = Vec::new();
    if let Some(port) = args.http {
        threads.push(std::thread::spawn(move || http(port)));
    }
    if let Some(port) = args.tcp {
        threads.push(std::thread::spawn(move || tcp(port)));
    }
    for (wanted, mode) in [
        (args.notify, notify as fn()),
        (args.grow, grow),
        (args.spin, spin),
        (args.count_term, count_terms),
    ] {
        if wanted {
            threads.push(std::thread::spawn(mode));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::sleep(Duration::from_secs(1000));
    }
}
