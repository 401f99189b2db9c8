//! A small key-value HTTP service for the demo and the system tests: the "application"
//! Understudy moves between nodes. `GET /k` returns the value stored in `<dir>/k`, `PUT /k`
//! stores the body durably (write, fsync) before answering, so a client's acknowledged
//! write is on disk. `GET /` answers `ok <node>`, to see which node served a request.
//!
//! Bounded: request heads up to 8 KiB, bodies up to 1 MiB, one thread per connection up to
//! 64 at once, 5-second socket timeouts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

const HEAD_MAX: usize = 8 * 1024;
const BODY_MAX: usize = 1024 * 1024;
const CONNECTIONS_MAX: usize = 64;

pub fn serve(listen: &str, dir: &Path, node: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            continue; // dropped: the client retries
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (dir, node, open) = (dir.to_path_buf(), node.to_string(), open.clone());
        std::thread::spawn(move || {
            let _ = handle(stream, &dir, &node);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn key_path(dir: &Path, target: &str) -> Option<PathBuf> {
    let key = target.strip_prefix('/')?;
    // Keys are plain names: nothing that could climb out of the directory.
    let valid = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !key.starts_with('.');
    valid.then(|| dir.join(key))
}

fn handle(stream: TcpStream, dir: &Path, node: &str) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(HEAD_MAX as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    let mut out = stream;
    let (status, body): (&str, Vec<u8>) = match (method, target) {
        ("GET", "/") => ("200 OK", format!("ok {node}\n").into_bytes()),
        ("GET", t) => match key_path(dir, t).map(std::fs::read) {
            Some(Ok(value)) => ("200 OK", value),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                ("404 Not Found", Vec::new())
            }
            // Any other failure (the filesystem gone under a dying node, say) says nothing
            // about whether the key exists: a 404 here would read as a lost write.
            Some(Err(_)) => ("503 Service Unavailable", Vec::new()),
            None => ("400 Bad Request", Vec::new()),
        },
        ("PUT", t) if content_length <= BODY_MAX => match key_path(dir, t) {
            Some(path) => {
                let mut value = vec![0u8; content_length];
                reader.into_inner().read_exact(&mut value)?;
                store(&path, &value)?;
                ("204 No Content", Vec::new())
            }
            None => ("400 Bad Request", Vec::new()),
        },
        ("PUT", _) => ("413 Payload Too Large", Vec::new()),
        _ => ("405 Method Not Allowed", Vec::new()),
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Node: {node}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    out.write_all(&body)?;
    Ok(())
}

/// Write to a temporary file, fsync, rename into place, fsync the directory: an
/// acknowledged PUT survives a crash.
fn store(path: &Path, value: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(value)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::key_path;
    use std::path::Path;

    #[test]
    fn keys_cannot_escape_the_directory() {
        let dir = Path::new("/srv/kv");
        assert_eq!(key_path(dir, "/a-1.txt"), Some(dir.join("a-1.txt")));
        for bad in [
            "/../etc/passwd",
            "/a/b",
            "/.hidden",
            "/",
            "noslash",
            "/%2e%2e",
        ] {
            assert_eq!(key_path(dir, bad), None, "{bad}");
        }
    }
}
