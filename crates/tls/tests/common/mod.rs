//! Helpers shared by the integration tests: generating pairs into temporary
//! directories, running a one-shot `accept` on loopback, and hand-built
//! rustls clients that misbehave in the specific ways the tests need (which
//! the library's own loader would refuse to build).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use understudy_tls::{
    accept, generate_pair, load_node_tls, write_pair, NodeMaterial, NodeTls, PairMaterial,
    TlsError, ALPN_V3,
};

/// Generous enough for a loaded CI machine, short enough to fail fast.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Generates a pair and writes it into a fresh temporary directory.
pub fn pair_dir(pair: &str, nodes: &[&str]) -> (TempDir, PairMaterial) {
    let m = generate_pair(pair, nodes).unwrap();
    let tmp = TempDir::new().unwrap();
    write_pair(&tmp.path().join("certs"), &m, false).unwrap();
    (tmp, m)
}

pub fn load(tmp: &TempDir, node: &str, peer: &str) -> NodeTls {
    load_node_tls(&tmp.path().join("certs"), node, peer).unwrap()
}

pub fn node<'a>(m: &'a PairMaterial, name: &str) -> &'a NodeMaterial {
    m.nodes.iter().find(|n| n.name == name).unwrap()
}

pub type Accepted = Result<(understudy_tls::Channel, String), TlsError>;

/// Listens on an ephemeral loopback port and runs `accept` on the first
/// connection.
pub async fn serve_once(tls: NodeTls) -> (SocketAddr, JoinHandle<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(&tls, tcp, TIMEOUT).await
    });
    (addr, task)
}

/// A rustls client trusting `ca_pem`, presenting `identity` (cert PEM, key
/// PEM) if given, and offering `alpn`.
pub fn raw_client(
    ca_pem: &str,
    identity: Option<&NodeMaterial>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(n) => {
            let chain = CertificateDer::pem_slice_iter(n.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(n.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// The ALPN list a well-behaved client offers.
pub const GOOD_ALPN: &[&[u8]] = &[ALPN_V3];

/// Dials `addr` with a hand-built client, expecting the server to be
/// `server_name`.
pub async fn raw_connect(
    cfg: Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Runs `accept` against a hand-built client and returns the server's
/// refusal, failing the test if the server accepted.
pub async fn refused_by_server(server: NodeTls, client: Arc<ClientConfig>) -> TlsError {
    let (addr, task) = serve_once(server).await;
    // The client side may or may not see an error (under TLS 1.3 it finishes
    // before the server judges its certificate); only the server's verdict
    // matters here.
    let client_result = raw_connect(client, addr, "alpha").await;
    let err = match task.await.unwrap() {
        Ok((_, name)) => panic!("server accepted a client it should refuse (as '{name}')"),
        Err(e) => e,
    };
    drop(client_result);
    err
}
