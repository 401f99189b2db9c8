//! Loading one node's certificate files and building the rustls server and
//! client configurations the channel uses.
//!
//! Both configurations trust only the pair's CA and present this node's
//! certificate, so either node can dial the other. Everything that can be
//! checked locally (key permissions, the certificate's name, that it chains to
//! `ca.pem`) is checked here, at load time, so a misinstalled node fails at
//! startup with a message about its own files instead of later as a vague
//! handshake failure on the other node.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::explain::{explain_rustls, Side};
use crate::identity::{peer_identity, SUPPORTED_ALPN};
use crate::names::validate_node_name;
use crate::TlsError;

/// Key files larger than this are certainly not ours; refuse rather than read
/// an arbitrarily large file into memory.
const MAX_PEM_FILE: u64 = 1 << 20;

/// Everything a node needs to run its side of the channel.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// For connections the peer dials to us: requires a client certificate
    /// issued by the pair's CA. The peer's *identity* is checked afterwards by
    /// [`crate::accept`] / [`crate::check_peer`].
    pub server: Arc<ServerConfig>,
    /// For connections we dial: trusts only the pair's CA and expects the
    /// server to be `peer_name`.
    pub client: Arc<ClientConfig>,
    /// The node we talk to.
    pub peer_name: String,
    /// This node's own name.
    pub node_name: String,
}

/// The crypto provider for every configuration this crate builds: always ring,
/// passed explicitly, so the result never depends on whichever provider some
/// other part of the process installed as the default.
///
/// TLS 1.3's AES-128-GCM is preferred to ring's default AES-256-GCM: 10 AES rounds instead
/// of 14 for every byte the channel carries (TLS 1.3's mandatory suite, 128-bit security);
/// the other suites stay acceptable after it.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != TLS13_AES_128_GCM_SHA256.suite());
    Arc::new(provider)
}

/// Loads `ca.pem`, `<node>.pem` and `<node>.key` from `dir` and builds the
/// server and client configurations for talking to `peer`.
///
/// Refuses a key file that group or others can access, like ssh does.
pub fn load_node_tls(dir: &Path, node: &str, peer: &str) -> Result<NodeTls, TlsError> {
    validate_node_name(node)?;
    validate_node_name(peer)?;
    if node == peer {
        return Err(TlsError::InvalidPair(format!(
            "node '{node}' cannot be its own peer"
        )));
    }

    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join(format!("{node}.pem"));
    let key_path = dir.join(format!("{node}.key"));

    let ca_certs = parse_certs(&ca_path, &read_file(&ca_path, false)?)?;
    let chain = parse_certs(&cert_path, &read_file(&cert_path, false)?)?;
    let key_pem = read_file(&key_path, true)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadFile {
        path: key_path.clone(),
        reason: format!("no usable private key: {e}"),
    })?;

    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert).map_err(|e| TlsError::BadFile {
            path: ca_path.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();

    check_own_certificate(&chain, node, &roots, &provider, &cert_path, &ca_path)?;

    let config_err = |e: rustls::Error| TlsError::Config(e.to_string());
    // Our certificate and key not belonging together is a file problem; say
    // which files.
    let key_err = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::BadFile {
            path: key_path.clone(),
            reason: format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        },
        other => TlsError::BadFile {
            path: key_path.clone(),
            reason: format!("unusable private key: {other}"),
        },
    };
    let alpn: Vec<Vec<u8>> = SUPPORTED_ALPN.iter().map(|p| p.to_vec()).collect();

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
    // TLS 1.3 only: both ends are Understudy, so there is no legacy peer to
    // accommodate, and 1.3 hides the certificates from passive observers.
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_err)?;
    server.alpn_protocols = alpn.clone();
    // No session resumption: every connection does a full handshake, so the
    // peer's certificate is verified against the CA loaded *now* each time.
    // The channel reconnects rarely, so the cost does not matter.
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    // After the handshake the channel seals its records itself (`records.rs`) with the
    // keys rustls negotiated.
    server.enable_secret_extraction = true;

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(key_err)?;
    client.alpn_protocols = alpn;
    client.resumption = Resumption::disabled();
    client.enable_secret_extraction = true;

    Ok(NodeTls {
        server: Arc::new(server),
        client: Arc::new(client),
        peer_name: peer.to_string(),
        node_name: node.to_string(),
    })
}

/// Reads a small PEM file. For key files, first refuses any mode that lets
/// group or others in; the mode is taken from the open file so it is the file
/// we actually read.
fn read_file(path: &Path, is_key: bool) -> Result<Vec<u8>, TlsError> {
    let file = File::open(path).map_err(TlsError::io("opening", path))?;
    let meta = file.metadata().map_err(TlsError::io("inspecting", path))?;
    if !meta.is_file() {
        return Err(TlsError::BadFile {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    if is_key {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(TlsError::BadFile {
            path: path.to_path_buf(),
            reason: format!("too large for a PEM file ({} bytes)", meta.len()),
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_PEM_FILE)
        .read_to_end(&mut buf)
        .map_err(TlsError::io("reading", path))?;
    Ok(buf)
}

/// Parses every certificate in a PEM file; there must be at least one.
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadFile {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadFile {
            path: path.to_path_buf(),
            reason: "contains no certificate".to_string(),
        });
    }
    Ok(certs)
}

/// Checks that our own certificate names `node` and chains to `ca.pem`.
fn check_own_certificate(
    chain: &[CertificateDer<'static>],
    node: &str,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    cert_path: &Path,
    ca_path: &Path,
) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::BadFile {
        path: cert_path.to_path_buf(),
        reason,
    };
    let identity = peer_identity(chain).map_err(|e| bad(e.to_string()))?;
    if identity != node {
        return Err(bad(format!(
            "certificate is for node '{identity}', not '{node}'"
        )));
    }
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or_else(|| bad("contains no certificate".to_string()))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("server certificate verifier: {e}")))?;
    let server_name = ServerName::try_from(node.to_string())
        .map_err(|e| TlsError::Config(format!("node name '{node}': {e}")))?;
    verifier
        .verify_server_cert(
            end_entity,
            intermediates,
            &server_name,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| {
            bad(format!(
                "{} (checked against {})",
                explain_rustls(&e, Side::Client, None),
                ca_path.display()
            ))
        })?;
    Ok(())
}
