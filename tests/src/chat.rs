//! A stand-in for the chat services in alert tests: a local HTTP server that records every
//! request and answers as told — 200 by default, or 429 with `Retry-After`, or 500, for as
//! long as a test wants.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the server saw it, and what it answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: u16,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// An answer to give.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// How long the service takes to answer, as a slow one does.
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            status: 200,
            retry_after: None,
            body: "ok".into(),
            delay: None,
        }
    }

    /// This answer, given after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            ..self
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: format!("status {status} as the test asked"),
            delay: None,
        }
    }

    pub fn rate_limited(seconds: u64) -> Self {
        Self {
            status: 429,
            retry_after: Some(seconds.to_string()),
            body: "slow down".into(),
            delay: None,
        }
    }
}

#[derive(Default)]
struct Behaviour {
    /// Answers given in turn, before the standing one.
    next: VecDeque<Answer>,
    standing: Option<Answer>,
    seen: Vec<Recorded>,
}

pub struct ChatServer {
    port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChatServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let port = listener.local_addr().expect("its address").port();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (behaviour, stop) = (Arc::clone(&behaviour), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let behaviour = Arc::clone(&behaviour);
                        std::thread::spawn(move || serve(stream, &behaviour));
                    }
                }
            })
        };
        Self {
            port,
            behaviour,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        self.behaviour.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers every request with `answer` from now on (`None`: 200).
    pub fn answer_always(&self, answer: Option<Answer>) {
        self.lock().standing = answer;
    }

    /// Answers the next requests with these, in turn.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().next.extend(answers);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().seen.clone()
    }

    /// Requests to paths starting with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, behaviour: &Mutex<Behaviour>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return;
    };
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = find("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return;
            }
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                return;
            };
            let mut chunk = vec![0; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                return;
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let answer = {
        let mut b = behaviour.lock().unwrap_or_else(|e| e.into_inner());
        let answer = b
            .next
            .pop_front()
            .or_else(|| b.standing.clone())
            .unwrap_or_else(Answer::ok);
        b.seen.push(Recorded {
            method,
            path,
            headers,
            body,
            answered: answer.status,
        });
        answer
    };
    if let Some(delay) = answer.delay {
        std::thread::sleep(delay);
    }
    let mut response = format!(
        "HTTP/1.1 {} Test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    if let Some(retry_after) = &answer.retry_after {
        response.push_str(&format!("Retry-After: {retry_after}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&answer.body);
    let _ = writer.write_all(response.as_bytes());
    let _ = writer.flush();
}
