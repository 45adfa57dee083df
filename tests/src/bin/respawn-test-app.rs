//! A program for health-check tests that misbehaves on cue. Files in its working directory
//! are the cues, each taken (deleted) once seen, so that the next run behaves again:
//!
//! - `--http PORT`: answers `GET /health` with 200 `ok`; after `hang` appears it accepts
//!   connections but never answers.
//! - `--tcp PORT`: accepts connections; after `close` appears it stops listening.
//! - `--notify`: speaks the notify protocol: `READY=1` once `ready` appears, and `WATCHDOG=1`
//!   every 100 ms until `stop-pinging` appears.
//! - `--grow`: allocates (and touches) 10 MB every 100 ms, up to 500 MB.
//! - `--spin`: keeps one core busy.
//!
//! It runs until killed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |i: usize| -> u16 {
        args.get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("a port after the flag")
    };
    let mut threads = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        match arg.as_str() {
            "--http" => {
                let p = port(i);
                threads.push(std::thread::spawn(move || http(p)));
            }
            "--tcp" => {
                let p = port(i);
                threads.push(std::thread::spawn(move || tcp(p)));
            }
            "--notify" => threads.push(std::thread::spawn(notify)),
            "--grow" => threads.push(std::thread::spawn(grow)),
            "--spin" => threads.push(std::thread::spawn(spin)),
            _ => {}
        }
    }
    assert!(Path::new(".").exists());
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::sleep(Duration::from_secs(1000));
    }
}
