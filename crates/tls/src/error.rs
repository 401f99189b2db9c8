//! The one error type of this crate.
//!
//! Every message is complete on its own — it names the file, the peer, or the
//! reason a peer was refused — because the daemon logs these with
//! `tracing::warn!(%err)`, which prints only `Display`. For the same reason the
//! underlying I/O errors are folded into the message rather than exposed as a
//! `source()` chain (which would print them twice under `{:#}`); they remain
//! available as fields for callers that want to match on them.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong generating, storing, loading or using the
/// pair's TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file or directory operation failed.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What we were doing, e.g. "reading".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },

    /// `write_pair` found a file it would have replaced.
    #[error("refusing to overwrite existing file {} (ask for overwrite to replace it)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A private key file is readable or writable by group or others.
    #[error(
        "permissions {mode:04o} for key file {} are too open: it must not be accessible by group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A file exists but its contents are unusable.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A node or pair name cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The set of names handed in does not describe a usable pair.
    #[error("invalid pair: {0}")]
    InvalidPair(String),

    /// rcgen failed to generate a key or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls refused to build a configuration from the loaded material.
    #[error("building the TLS configuration failed: {0}")]
    Config(String),

    /// The TCP connection to the peer could not be made.
    #[error("could not connect to {addr}: {error}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The operating system's error.
        error: io::Error,
    },

    /// Setting a socket option failed.
    #[error("setting up the socket for {peer} failed: {error}")]
    Socket {
        /// The remote address, as text.
        peer: String,
        /// The operating system's error.
        error: io::Error,
    },

    /// A connection or handshake did not finish in time.
    #[error("timed out after {after:?} {stage} {peer}")]
    Timeout {
        /// What was under way, e.g. "connecting to".
        stage: &'static str,
        /// The remote address, as text.
        peer: String,
        /// The time allowed.
        after: Duration,
    },

    /// The TLS handshake failed; `reason` says why in plain words.
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake {
        /// The remote address, as text.
        peer: String,
        /// Why, e.g. "certificate not issued by this pair's CA".
        reason: String,
        /// The error tokio-rustls returned (usually wrapping a `rustls::Error`).
        error: io::Error,
    },

    /// ALPN produced no protocol version both sides speak.
    #[error("peer speaks no protocol version we support (offered: {offered})")]
    UnsupportedVersion {
        /// What the peer offered (or selected), sanitised for logging.
        offered: String,
    },

    /// The peer sent no certificate.
    #[error("no client certificate: the peer presented no certificate")]
    NoPeerCertificate,

    /// The peer's certificate is from this pair but names the wrong node.
    #[error("peer presented identity '{presented}', expected '{expected}'")]
    WrongPeer {
        /// The node name in the peer's certificate.
        presented: String,
        /// The node name we expected.
        expected: String,
    },

    /// The peer's certificate could not be read as an Understudy node
    /// certificate.
    #[error("peer certificate unusable: {0}")]
    BadPeerCertificate(String),
}

/// True when an I/O error says only that the other end went away (closed, reset).
pub fn hung_up(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

impl TlsError {
    /// True when the peer simply closed the connection during the handshake, having
    /// presented nothing we refused: a dialler dropping an attempt that lost a race (the
    /// replication sender overlaps its attempts), not a refusal worth a warning.
    pub fn peer_hung_up(&self) -> bool {
        match self {
            TlsError::Handshake { error, .. } => {
                !matches!(error.get_ref(), Some(e) if e.is::<rustls::Error>()) && hung_up(error)
            }
            _ => false,
        }
    }

    /// Shorthand for building an [`TlsError::Io`] in `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |error| TlsError::Io {
            action,
            path,
            error,
        }
    }
}
