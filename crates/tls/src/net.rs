//! Dialling and accepting channel connections: the handshake over tokio-rustls, with a
//! time limit, the protocol-version check and the peer-identity check done in one place
//! so the daemon cannot forget one of them; then the records go through
//! [`crate::records`].
//!
//! Handing the keys over from rustls takes one exchange: the client sends one byte
//! through rustls and then waits, the server reads it, takes over the keys and answers
//! with one byte through the new record layer. So neither rustls holds a record meant for
//! the record layer when the keys are taken (rustls reads ahead), and [`connect`] returns
//! only once the server accepted us: under TLS 1.3 the client finishes its half of the
//! handshake before the server has looked at the client's certificate, and a refusal
//! arrives as an alert during that exchange.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::Acceptor;
use rustls::SupportedCipherSuite;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::explain::{explain_handshake, Side};
use crate::identity::{check_peer, describe_protocols, negotiated_version};
use crate::records::{Direction, RecordReader, RecordWriter};
use crate::{NodeTls, TlsError};

/// The byte each side sends when it is ready for the record layer.
const READY: u8 = 0x55;

/// A channel connection: the handshake done, the peer checked, and the records sealed
/// and opened by [`crate::records`].
pub struct Channel {
    reader: ChannelReader,
    writer: ChannelWriter,
    alpn: Option<Vec<u8>>,
    peer_certificates: Vec<CertificateDer<'static>>,
    cipher_suite: rustls::CipherSuite,
}

/// The receiving half of a [`Channel`], independent of the sending half.
pub type ChannelReader = RecordReader<OwnedReadHalf>;
/// The sending half of a [`Channel`].
pub type ChannelWriter = RecordWriter<OwnedWriteHalf>;

impl Channel {
    /// Takes the keys over from rustls once its handshake is done, keeping what the
    /// connection negotiated.
    fn take_over(tcp: TcpStream, conn: rustls::Connection) -> io::Result<Self> {
        let (limit, cipher_suite) = match conn.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(suite)) => {
                (suite.common.confidentiality_limit, suite.common.suite)
            }
            _ => return Err(io::Error::other("the channel needs a TLS 1.3 cipher suite")),
        };
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let peer_certificates = conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let secrets = conn
            .dangerous_extract_secrets()
            .map_err(|e| io::Error::other(format!("taking over the TLS keys: {e}")))?;
        let tx = Direction::new(secrets.tx, limit).map_err(io::Error::other)?;
        let rx = Direction::new(secrets.rx, limit).map_err(io::Error::other)?;
        let (read_half, write_half) = tcp.into_split();
        Ok(Channel {
            reader: RecordReader::new(read_half, rx),
            writer: RecordWriter::new(write_half, tx),
            alpn,
            peer_certificates,
            cipher_suite,
        })
    }

    /// The cipher suite the handshake agreed on.
    pub fn cipher_suite(&self) -> rustls::CipherSuite {
        self.cipher_suite
    }

    /// The protocol version the handshake agreed on (see [`negotiated_version`]).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The certificate chain the peer presented.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        Some(&self.peer_certificates[..]).filter(|c| !c.is_empty())
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.writer.get_ref().as_ref()
    }

    /// Splits into halves that read and write independently (no lock between them).
    pub fn into_split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.tcp().peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Client side of the key handover (see the module doc).
async fn client_take_over(
    mut stream: tokio_rustls::client::TlsStream<TcpStream>,
) -> io::Result<Channel> {
    stream.write_all(&[READY]).await?;
    stream.flush().await?;
    let (tcp, conn) = stream.into_inner();
    let mut channel = Channel::take_over(tcp, conn.into())?;
    expect_ready(&mut channel).await?;
    Ok(channel)
}

/// Server side of the key handover (see the module doc).
async fn server_take_over(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
) -> io::Result<Channel> {
    expect_ready(&mut stream).await?;
    let (tcp, conn) = stream.into_inner();
    let mut channel = Channel::take_over(tcp, conn.into())?;
    channel.write_all(&[READY]).await?;
    channel.flush().await?;
    Ok(channel)
}

async fn expect_ready<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<()> {
    let mut ready = [0u8; 1];
    stream.read_exact(&mut ready).await?;
    if ready[0] != READY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer's first record is not the channel's ready byte",
        ));
    }
    Ok(())
}

/// Connects to the peer at `addr` and completes the TLS handshake.
///
/// The server must present a certificate from the pair's CA for
/// `tls.peer_name`, whatever address was dialled (the pair's addresses may be
/// raw IPs or change; the identity does not). `timeout` bounds the TCP connect
/// and the handshake together. The negotiated protocol version is checked;
/// read it again with `negotiated_version(channel.alpn_protocol())`.
pub async fn connect(
    tls: &NodeTls,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Channel, TlsError> {
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
) -> Result<Channel, TlsError> {
    let deadline = Instant::now() + timeout;
    let tcp = connect_tcp(addr, connect_timeout.min(timeout)).await?;
    // A timeout is reported as the whole `timeout`, the figure the caller configured.
    handshake_until(tls, addr, tcp, deadline, timeout).await
}

/// The TCP half of [`connect_with`]: a connected socket to `addr`, set up for the channel,
/// within `connect_timeout`. A dialler racing several connects hands only the first one to
/// [`handshake_as_client`], so the peer does not do a handshake for every loser.
pub async fn connect_tcp(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, TlsError> {
    let tcp = timeout_at(Instant::now() + connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TlsError::Timeout {
            stage: "connecting to",
            peer: addr.to_string(),
            after: connect_timeout,
        })?
        .map_err(|error| TlsError::Connect { addr, error })?;
    // The channel carries small, latency-sensitive messages (heartbeats);
    // Nagle's algorithm would only delay them.
    tcp.set_nodelay(true).map_err(|error| TlsError::Socket {
        peer: addr.to_string(),
        error,
    })?;
    Ok(tcp)
}

/// The TLS half of [`connect_with`]: the client's handshake over `tcp` (connected to
/// `addr`), its checks, and the server's verdict, all within `timeout`.
pub async fn handshake_as_client(
    tls: &NodeTls,
    addr: SocketAddr,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    handshake_until(tls, addr, tcp, Instant::now() + timeout, timeout).await
}

/// [`handshake_as_client`] ending at `deadline`; a timeout is reported as `timeout`.
async fn handshake_until(
    tls: &NodeTls,
    addr: SocketAddr,
    tcp: TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let timed_out = |stage| TlsError::Timeout {
        stage,
        peer: addr.to_string(),
        after: timeout,
    };
    let server_name = ServerName::try_from(tls.peer_name.clone())
        .map_err(|e| TlsError::Config(format!("peer name '{}': {e}", tls.peer_name)))?;
    let handshake_err = |error: io::Error| TlsError::Handshake {
        peer: addr.to_string(),
        reason: explain_handshake(&error, Side::Client, None),
        error,
    };
    let stream = timeout_at(
        deadline,
        TlsConnector::from(tls.client.clone()).connect(server_name, tcp),
    )
    .await
    .map_err(|_| timed_out("during the TLS handshake with"))?
    .map_err(handshake_err)?;

    let (_, conn) = stream.get_ref();
    negotiated_version(conn.alpn_protocol())?;
    // rustls has already matched the server's certificate against
    // `peer_name`; checking again keeps both directions on the same rule.
    check_peer(conn.peer_certificates(), &tls.peer_name)?;
    // The server judges our certificate only now; its refusal arrives here.
    let channel = timeout_at(deadline, client_take_over(stream))
        .await
        .map_err(|_| timed_out("waiting for the server's verdict from"))?
        .map_err(handshake_err)?;
    tracing::debug!(peer = %addr, peer_name = %tls.peer_name, "channel TLS connection established");
    Ok(channel)
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
) -> Result<(Channel, String), TlsError> {
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
    negotiated_version(conn.alpn_protocol()).map_err(|_| TlsError::UnsupportedVersion {
        offered: offered.clone(),
    })?;
    check_peer(conn.peer_certificates(), &tls.peer_name)?;
    let channel = timeout_at(deadline, server_take_over(stream))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| handshake_err(e, Some(&offered)))?;
    tracing::debug!(%peer, peer_name = %tls.peer_name, "channel TLS connection accepted");
    Ok((channel, tls.peer_name.clone()))
}
