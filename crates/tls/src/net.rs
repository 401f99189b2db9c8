//! Dialling and accepting channel connections over tokio-rustls, with a time
//! limit, the protocol-version check and the peer-identity check done in one
//! place so the daemon cannot forget one of them.
//!
//! A note on TLS 1.3 and client-certificate rejection: the client finishes
//! its half of the handshake before the server has looked at the client's
//! certificate. So when the *server* refuses us, [`connect`] may still
//! succeed, and the refusal shows up as an error on the first read. The
//! server's [`accept`] always reports the precise reason.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::explain::{explain_handshake, Side};
use crate::identity::{check_peer, describe_protocols, negotiated_version};
use crate::{NodeTls, TlsError};

/// A channel connection this node dialled.
pub type ChannelStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to the peer at `addr` and completes the TLS handshake.
///
/// The server must present a certificate from the pair's CA for
/// `tls.peer_name`, whatever address was dialled (the pair's addresses may be
/// raw IPs or change; the identity does not). `timeout` bounds the TCP connect
/// and the handshake together. The negotiated protocol version is checked;
/// read it again with `negotiated_version(stream.get_ref().1.alpn_protocol())`.
pub async fn connect(
    tls: &NodeTls,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    connect_with(tls, addr, timeout, timeout).await
}

/// [`connect`], with the TCP connect bounded separately by `connect_timeout` (at most
/// `timeout`): a dialler that retries often can give up on an unreachable peer quickly
/// without squeezing the handshake of a reachable but busy one.
pub async fn connect_with(
    tls: &NodeTls,
    addr: SocketAddr,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let timed_out = |stage| TlsError::Timeout {
        stage,
        peer: addr.to_string(),
        after: timeout,
    };

    let tcp = timeout_at(
        deadline.min(start + connect_timeout),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| timed_out("connecting to"))?
    .map_err(|error| TlsError::Connect { addr, error })?;
    // The channel carries small, latency-sensitive messages (heartbeats);
    // Nagle's algorithm would only delay them.
    tcp.set_nodelay(true).map_err(|error| TlsError::Socket {
        peer: addr.to_string(),
        error,
    })?;

    let server_name = ServerName::try_from(tls.peer_name.clone())
        .map_err(|e| TlsError::Config(format!("peer name '{}': {e}", tls.peer_name)))?;
    let stream = timeout_at(
        deadline,
        TlsConnector::from(tls.client.clone()).connect(server_name, tcp),
    )
    .await
    .map_err(|_| timed_out("during the TLS handshake with"))?
    .map_err(|error| TlsError::Handshake {
        peer: addr.to_string(),
        reason: explain_handshake(&error, Side::Client, None),
        error,
    })?;

    let (_, conn) = stream.get_ref();
    negotiated_version(conn.alpn_protocol())?;
    // rustls has already matched the server's certificate against
    // `peer_name`; checking again keeps both directions on the same rule.
    check_peer(conn.peer_certificates(), &tls.peer_name)?;
    tracing::debug!(peer = %addr, peer_name = %tls.peer_name, "channel TLS connection established");
    Ok(stream)
}

/// Completes the TLS handshake on a connection the peer dialled to us, and
/// returns the stream together with the peer's node name.
///
/// Refuses (with the reason in the error) a client without a certificate, a
/// certificate not issued by the pair's CA, a certificate for any node other
/// than `tls.peer_name` (including our own), and a client that offers no
/// protocol version we speak. `timeout` bounds the whole handshake.
pub async fn accept(
    tls: &NodeTls,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, String), TlsError> {
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown peer".to_string());
    tcp.set_nodelay(true).map_err(|error| TlsError::Socket {
        peer: peer.clone(),
        error,
    })?;
    let deadline = Instant::now() + timeout;
    let timed_out = || TlsError::Timeout {
        stage: "during the TLS handshake with",
        peer: peer.clone(),
        after: timeout,
    };
    let handshake_err = |error: std::io::Error, offered: Option<&str>| TlsError::Handshake {
        peer: peer.clone(),
        reason: explain_handshake(&error, Side::Server, offered),
        error,
    };

    // Read the ClientHello first so that, if the versions do not match, the
    // error can say what the peer offered.
    let start = timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), tcp))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| handshake_err(e, None))?;
    let offered = describe_protocols(start.client_hello().alpn().into_iter().flatten());

    let stream = timeout_at(deadline, start.into_stream(tls.server.clone()))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| handshake_err(e, Some(&offered)))?;

    let (_, conn) = stream.get_ref();
    // A client that offered no ALPN at all gets through the rustls handshake;
    // it is refused here.
    negotiated_version(conn.alpn_protocol())
        .map_err(|_| TlsError::UnsupportedVersion { offered })?;
    check_peer(conn.peer_certificates(), &tls.peer_name)?;
    tracing::debug!(%peer, peer_name = %tls.peer_name, "channel TLS connection accepted");
    Ok((stream, tls.peer_name.clone()))
}
