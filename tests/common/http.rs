//! A minimal HTTP/1.1 client over a TCP stream, enough to talk to `rewind run`'s API in tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A response: status, head (status line and headers) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The value of header `name`, if the response has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One request; `None` when nothing listens on `addr`.
pub fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> Option<Response> {
    request_with(addr, method, path, &[], body)
}

/// One request with `headers` on top of the defaults (`Host: addr`, `Content-Type:
/// application/json`): a header given replaces the default of its name, and one given with an
/// empty value is left out.
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let body = body.unwrap_or("");
    let length = body.len().to_string();
    let defaults = [
        ("Host", addr),
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("Content-Length", length.as_str()),
    ];
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let given = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
    for (name, value) in defaults {
        let value = given(name).map_or(value, |(_, v)| *v);
        if !value.is_empty() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        if !value.is_empty() && !defaults.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some(Response {
        status,
        head: head.to_string(),
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, None).unwrap_or_else(|| panic!("GET {path}: no answer from {addr}"))
}

pub fn post(addr: &str, path: &str, body: &str) -> Response {
    request(addr, "POST", path, Some(body))
        .unwrap_or_else(|| panic!("POST {path}: no answer from {addr}"))
}

/// Poll until `check` holds, or panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free loopback port, as `127.0.0.1:PORT`.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
