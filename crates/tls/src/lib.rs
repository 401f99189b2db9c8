//! TLS for the Understudy channel: the pair's private CA, the node
//! certificate files, and mutually authenticated TLS 1.3 connections between
//! the two nodes of a pair.
//!
//! Trust model: each pair has its own CA ([`generate_pair`]) that signs one
//! certificate per node, whose subjectAltName DNS name is the node name. A
//! node accepts a connection only from a certificate issued by its pair's CA
//! *and* naming its configured peer ([`accept`]), and dials the peer expecting
//! the peer's name whatever address it dials ([`connect`]). The channel
//! protocol version is negotiated with ALPN ([`ALPN_V3`],
//! [`negotiated_version`]).
//!
//! All rustls configurations use the ring crypto provider explicitly; nothing
//! here depends on a process-wide default provider.

mod error;
mod explain;
mod generate;
mod identity;
mod load;
mod names;
mod net;
pub mod records;

pub use error::{hung_up, TlsError};
pub use generate::{generate_pair, write_pair, NodeMaterial, PairMaterial};
pub use identity::{check_peer, negotiated_version, peer_identity, ALPN_V3};
pub use load::{load_node_tls, NodeTls};
pub use net::{
    accept, connect, connect_tcp, connect_with, handshake_as_client, Channel, ChannelReader,
    ChannelWriter,
};

/// Re-exported so callers can name the certificate type in
/// [`peer_identity`] / [`check_peer`] without depending on rustls directly.
pub use rustls::pki_types::CertificateDer;
