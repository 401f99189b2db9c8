//! A minimal HTTP/1.1 client for the demo key-value service (`understudy demo-service`), as
//! the demo's client and the fault suite's client use it: one request per connection, the
//! answer parsed strictly. A response cut short (a service stopped mid-answer by a restart
//! closes the connection after its headers) is no answer, never an empty value.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest answer read: the service's answers are tiny.
const ANSWER_MAX_BYTES: u64 = 64 * 1024;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The X-Node header: which node served the request.
    pub node: Option<String>,
    pub body: Vec<u8>,
}

/// Sends one request to `addr` over a new connection and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    connect_timeout: Duration,
    io_timeout: Duration,
) -> std::io::Result<HttpAnswer> {
    let mut s = TcpStream::connect_timeout(&addr, connect_timeout)?;
    s.set_read_timeout(Some(io_timeout))?;
    s.set_write_timeout(Some(io_timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        addr.ip(),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.take(ANSWER_MAX_BYTES).read_to_end(&mut raw)?;
    parse_answer(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer")
    })
}

/// Parses a whole answer; None if it is malformed or shorter than its Content-Length.
pub fn parse_answer(raw: &[u8]) -> Option<HttpAnswer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let node = header("x-node");
    let body = raw[split + 4..].to_vec();
    if header("content-length").is_some_and(|n| n.parse::<usize>().ok() != Some(body.len())) {
        return None;
    }
    Some(HttpAnswer { status, node, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Node: beta\r\n\r\n";
        let a = parse_answer(raw).expect("parsed");
        assert_eq!(a.status, 204);
        assert_eq!(a.node.as_deref(), Some("beta"));
        let raw = b"HTTP/1.1 200 OK\r\nx-node: alpha\r\n\r\nvalue 7";
        let a = parse_answer(raw).expect("parsed");
        assert_eq!((a.status, a.body.as_slice()), (200, &b"value 7"[..]));
        assert!(parse_answer(b"HTTP/1.1 200").is_none());
        // Cut short after the headers.
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").is_none());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv55").is_some());
    }
}
