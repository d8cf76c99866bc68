//! A webhook receiver for the notify tests (issue #21): a real HTTP/1.1 server on
//! `127.0.0.1:0`, plain `std` threads and sockets (one thread accepts, one serves each
//! connection, keep-alive included), so that it can misbehave at the connection level
//! the way a real receiver does:
//! - answer a status (200 by default, 500, anything), or 200 after a delay;
//! - never answer (the request is read, the connection held open until the client
//!   gives up);
//! - close the connection without an answer;
//! - go down: stop listening (connections are refused) and cut every open connection,
//!   then come back on the same port.
//!
//! The test scripts the next replies, sets the default, or fixes the reply for every
//! request carrying a given `webhook-id`; it reads back every request (arrival time,
//! method, path, headers, body, what it got).

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The path the daemon is told to POST to.
pub const PATH: &str = "/hooks/entitled";

/// How the receiver treats one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answers this status at once (an empty-ish text body), keeping the connection.
    Status(u16),
    /// Answers 200 after this delay.
    Slow(Duration),
    /// Reads the request and never answers: the connection stays open until the client
    /// closes it (or the receiver is dropped).
    Hang,
    /// Reads the request and closes the connection without a byte of answer.
    Close,
}

impl Reply {
    /// Whether a client that waited for it got a 2xx.
    pub fn confirms(&self) -> bool {
        match self {
            Reply::Status(code) => (200..300).contains(code),
            Reply::Slow(_) => true,
            Reply::Hang | Reply::Close => false,
        }
    }
}

/// One request the receiver read in full.
#[derive(Clone, Debug)]
pub struct Received {
    /// When its last byte arrived.
    pub at: DateTime<Utc>,
    /// The same, on the monotonic clock.
    pub instant: Instant,
    pub method: String,
    pub path: String,
    /// Every header, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the receiver did with it.
    pub reply: Reply,
    /// Which accepted connection it came on (1, 2, …).
    pub connection: u64,
}

impl Received {
    /// The value of a header (the first of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `webhook-id` header, or "" when missing.
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or_default()
    }

    /// The seq the `webhook-id` names (`chg_<seq>`), if it is shaped so.
    pub fn seq(&self) -> Option<i64> {
        self.webhook_id().strip_prefix("chg_")?.parse().ok()
    }

    /// Whether the receiver answered it with a 2xx (the daemon may still have missed
    /// that answer if it died meanwhile).
    pub fn confirmed(&self) -> bool {
        self.reply.confirms()
    }
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} conn={} webhook-id={:?} -> {:?}",
            self.at.format("%H:%M:%S%.3f"),
            self.method,
            self.path,
            self.connection,
            self.header("webhook-id"),
            self.reply
        )
    }
}

struct State {
    default: Reply,
    /// The next replies, before the default.
    script: VecDeque<Reply>,
    /// Replies fixed per `webhook-id`, before the script and the default.
    by_id: HashMap<String, Reply>,
    /// Replies fixed for bodies containing a string, after `by_id`.
    by_body: Vec<(String, Reply)>,
    requests: Vec<Received>,
    /// Asked to be down (not listening, every connection cut).
    down: bool,
    /// Whether the listener is bound now.
    listening: bool,
    /// A handle on every connection accepted, to cut them when going down.
    connections: Vec<TcpStream>,
    accepted: u64,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiver, serving until dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hooks/entitled`: what `--notify-url` gets.
    pub url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts listening on a free port, answering 200 to everything.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("the receiver binds a port");
        let addr = listener.local_addr().expect("a local address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State {
                default: Reply::Status(200),
                script: VecDeque::new(),
                by_id: HashMap::new(),
                by_body: Vec::new(),
                requests: Vec::new(),
                down: false,
                listening: true,
                connections: Vec::new(),
                accepted: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("notify-receiver".to_owned())
            .spawn(move || accept_loop(listener, accepting))
            .expect("a thread for the receiver");
        Receiver {
            url: format!("http://{addr}{PATH}"),
            shared,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The reply to every request not otherwise scripted.
    pub fn set_default(&self, reply: Reply) {
        self.shared.state().default = reply;
    }

    /// The next requests get these replies, in order, after any already scripted.
    pub fn script(&self, replies: &[Reply]) {
        self.shared.state().script.extend(replies.iter().copied());
    }

    /// Every request with this `webhook-id` gets `reply` (until [`Self::clear_id`]).
    pub fn reply_to_id(&self, webhook_id: &str, reply: Reply) {
        self.shared
            .state()
            .by_id
            .insert(webhook_id.to_owned(), reply);
    }

    pub fn clear_id(&self, webhook_id: &str) {
        self.shared.state().by_id.remove(webhook_id);
    }

    /// Every request whose body contains `needle` gets `reply` (until
    /// [`Self::clear_body`]): a rule set before the change exists, by its profile id.
    pub fn reply_to_body(&self, needle: &str, reply: Reply) {
        self.shared.state().by_body.push((needle.to_owned(), reply));
    }

    pub fn clear_body(&self, needle: &str) {
        self.shared.state().by_body.retain(|(n, _)| n != needle);
    }

    /// Stops listening (a connect is refused) and cuts every open connection; returns
    /// once the port is closed.
    pub fn down(&self) {
        self.shared.state().down = true;
        self.until_listening(false);
    }

    /// Listens again on the same port; returns once it does.
    pub fn up(&self) {
        self.shared.state().down = false;
        self.until_listening(true);
    }

    fn until_listening(&self, listening: bool) {
        let started = Instant::now();
        while self.shared.state().listening != listening {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the receiver did not go {} within 10 s",
                if listening { "up" } else { "down" }
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.state().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.state().requests.len()
    }

    /// The requests with this `webhook-id`, in arrival order.
    pub fn requests_for(&self, webhook_id: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.webhook_id() == webhook_id)
            .collect()
    }

    /// Whether a request with this `webhook-id` was answered with a 2xx.
    pub fn confirmed(&self, webhook_id: &str) -> bool {
        self.shared
            .state()
            .requests
            .iter()
            .any(|r| r.webhook_id() == webhook_id && r.confirmed())
    }

    /// The requests so far, one a line (for failure messages).
    pub fn describe(&self) -> String {
        let requests = self.requests();
        if requests.is_empty() {
            return "(the receiver got no request)".to_owned();
        }
        requests
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for connection in self.shared.state().connections.drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let down = shared.state().down;
        if down && listener.is_some() {
            // Closing the socket refuses new connects (and resets the backlog).
            listener = None;
            let mut state = shared.state();
            for connection in state.connections.drain(..) {
                let _ = connection.shutdown(Shutdown::Both);
            }
            state.listening = false;
        } else if !down && listener.is_none() {
            // std sets SO_REUSEADDR: the same port binds again at once.
            match TcpListener::bind(shared.addr) {
                Ok(bound) => {
                    bound
                        .set_nonblocking(true)
                        .expect("a non-blocking listener");
                    listener = Some(bound);
                    shared.state().listening = true;
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let Some(bound) = &listener else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match bound.accept() {
            Ok((stream, _)) => {
                let n = {
                    let mut state = shared.state();
                    state.accepted += 1;
                    if let Ok(handle) = stream.try_clone() {
                        state.connections.push(handle);
                    }
                    state.accepted
                };
                let serving = shared.clone();
                let _ = std::thread::Builder::new()
                    .name(format!("notify-receiver-conn-{n}"))
                    .spawn(move || serve(stream, n, serving));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A request as read off the wire.
struct Raw {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves one connection: request after request until the client closes it, a reply
/// says to close, or the receiver stops.
fn serve(mut stream: TcpStream, connection: u64, shared: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let Some(raw) = read_request(&mut stream, &mut buffer, &shared) else {
            return;
        };
        let webhook_id = raw
            .headers
            .iter()
            .find(|(k, _)| k == "webhook-id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let reply = {
            let mut state = shared.state();
            let reply = if state.down {
                Reply::Close
            } else if let Some(reply) = state.by_id.get(&webhook_id) {
                *reply
            } else if let Some((_, reply)) = state
                .by_body
                .iter()
                .find(|(needle, _)| find(&raw.body, needle.as_bytes()).is_some())
            {
                *reply
            } else if let Some(reply) = state.script.pop_front() {
                reply
            } else {
                state.default
            };
            state.requests.push(Received {
                at: Utc::now(),
                instant: Instant::now(),
                method: raw.method,
                path: raw.path,
                headers: raw.headers,
                body: raw.body,
                reply,
                connection,
            });
            reply
        };
        match reply {
            Reply::Status(code) => {
                if respond(&mut stream, code).is_err() {
                    return;
                }
            }
            Reply::Slow(delay) => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                if respond(&mut stream, 200).is_err() {
                    return;
                }
            }
            Reply::Close => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Reply::Hang => {
                // Hold the connection, reading (and dropping) whatever comes, until the
                // client closes it.
                let mut sink = [0u8; 4096];
                loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match stream.read(&mut sink) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => return,
                    }
                }
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn respond(stream: &mut TcpStream, code: u16) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let body = format!("{code}\n");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Reads more bytes into `buffer`; false when the connection ended or the receiver
/// stopped.
fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, shared: &Shared) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buffer.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one whole request (head, then a `content-length` or chunked body) off the
/// connection; None when it ended first.
fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>, shared: &Shared) -> Option<Raw> {
    let head_end = loop {
        if let Some(i) = find(buffer, b"\r\n\r\n") {
            break i;
        }
        if !fill(stream, buffer, shared) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buffer, b"\r\n") {
                    break i;
                }
                if !fill(stream, buffer, shared) {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buffer.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected), then the final CRLF.
                loop {
                    if let Some(i) = find(buffer, b"\r\n") {
                        let empty = i == 0;
                        buffer.drain(..i + 2);
                        if empty {
                            break;
                        }
                    } else if !fill(stream, buffer, shared) {
                        return None;
                    }
                }
                break body;
            }
            while buffer.len() < size + 2 {
                if !fill(stream, buffer, shared) {
                    return None;
                }
            }
            body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
        }
    } else {
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < length {
            if !fill(stream, buffer, shared) {
                return None;
            }
        }
        buffer.drain(..length).collect()
    };
    Some(Raw {
        method,
        path,
        headers,
        body,
    })
}
