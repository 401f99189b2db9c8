//! Real TLS handshakes over loopback TCP between nodes of a generated pair,
//! and every way a peer must be refused: foreign CA, no certificate, wrong
//! protocol version, wrong identity, and timeouts.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use understudy_tls::{connect, negotiated_version, TlsError, ALPN_V3};

async fn handshake(server_name: &str, client_name: &str) {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let server = load(&tmp, server_name, client_name);
    let client = load(&tmp, client_name, server_name);

    let (addr, task) = serve_once(server).await;
    let mut c = connect(&client, addr, TIMEOUT).await.unwrap();
    let (mut s, peer) = task.await.unwrap().unwrap();

    assert_eq!(peer, client_name);
    assert_eq!(negotiated_version(c.alpn_protocol()).unwrap(), 3);
    assert_eq!(negotiated_version(s.alpn_protocol()).unwrap(), 3);
    // The cheaper of TLS 1.3's AES suites, preferred by both ends.
    assert_eq!(
        (c.cipher_suite(), s.cipher_suite()),
        (
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        )
    );
    understudy_tls::check_peer(c.peer_certificates(), server_name).unwrap();
    assert_eq!(
        understudy_tls::peer_identity(s.peer_certificates().unwrap()).unwrap(),
        client_name
    );
    assert!(c.tcp().nodelay().unwrap());

    // The connection actually carries data both ways.
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").await.unwrap();
    s.flush().await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn beta_dials_alpha() {
    handshake("alpha", "beta").await;
}

#[tokio::test]
async fn alpha_dials_beta() {
    handshake("beta", "alpha").await;
}

#[tokio::test]
async fn server_refuses_client_from_another_pair() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    // Same node names, and in the second case even the same pair name (so the
    // issuer name matches and only the signature gives it away).
    for other_pair in ["staging", "prod"] {
        let other = understudy_tls::generate_pair(other_pair, &["alpha", "beta"]).unwrap();
        let client = raw_client(&m.ca_cert_pem, Some(node(&other, "beta")), GOOD_ALPN);
        let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
        assert!(
            err.to_string()
                .contains("certificate not issued by this pair's CA"),
            "{other_pair}: {err}"
        );
        assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn client_refuses_server_from_another_pair() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let (other_tmp, _) = pair_dir("staging", &["alpha", "beta"]);
    let (addr, task) = serve_once(load(&other_tmp, "alpha", "beta")).await;

    let err = connect(&load(&tmp, "beta", "alpha"), addr, TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("certificate not issued by this pair's CA"),
        "{msg}"
    );
    assert!(msg.contains(&addr.to_string()), "{msg}");

    // The (foreign) server hears that its certificate was refused.
    let server_err = task.await.unwrap().unwrap_err();
    assert!(
        server_err
            .to_string()
            .contains("peer refused our certificate"),
        "{server_err}"
    );
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let client = raw_client(&m.ca_cert_pem, None, GOOD_ALPN);
    let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
    assert!(err.to_string().contains("no client certificate"), "{err}");
}

#[tokio::test]
async fn server_refuses_unsupported_protocol_version() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let (addr, task) = serve_once(load(&tmp, "alpha", "beta")).await;
    let client = raw_client(&m.ca_cert_pem, Some(node(&m, "beta")), &[b"understudy/99"]);

    // rustls fails the handshake itself (no_application_protocol alert), so
    // the client sees it too.
    let client_err = raw_connect(client, addr, "alpha").await.unwrap_err();
    assert!(
        client_err.to_string().contains("NoApplicationProtocol"),
        "{client_err}"
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("peer speaks no protocol version we support (offered: \"understudy/99\")"),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_client_offering_no_alpn() {
    // rustls lets this handshake complete; accept must still refuse it.
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let client = raw_client(&m.ca_cert_pem, Some(node(&m, "beta")), &[]);
    let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
    assert!(
        matches!(err, TlsError::UnsupportedVersion { ref offered } if offered == "nothing"),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_refuses_server_choosing_no_version() {
    // A server from this pair that does not do ALPN: the handshake succeeds
    // at the TLS level but connect must refuse the connection.
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let mut server = load(&tmp, "alpha", "beta");
    let mut cfg = (*server.server).clone();
    cfg.alpn_protocols.clear();
    server.server = std::sync::Arc::new(cfg);
    let (addr, _task) = serve_once(server).await;

    let err = connect(&load(&tmp, "beta", "alpha"), addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("peer speaks no protocol version we support (offered: nothing)"),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_its_own_identity() {
    // alpha expects beta; a client presenting alpha's own (valid) certificate
    // must be refused.
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let client = raw_client(&m.ca_cert_pem, Some(node(&m, "alpha")), GOOD_ALPN);
    let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
    assert_eq!(
        err.to_string(),
        "peer presented identity 'alpha', expected 'beta'"
    );
}

#[tokio::test]
async fn server_refuses_third_node_of_same_pair() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta", "mallory"]);
    let client = raw_client(&m.ca_cert_pem, Some(node(&m, "mallory")), GOOD_ALPN);
    let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
    assert!(
        matches!(
            err,
            TlsError::WrongPeer { ref presented, ref expected }
                if presented == "mallory" && expected == "beta"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_refuses_server_with_wrong_identity() {
    // beta dials what should be alpha, but mallory (same pair) answers.
    let (tmp, _) = pair_dir("prod", &["alpha", "beta", "mallory"]);
    let (addr, _task) = serve_once(load(&tmp, "mallory", "beta")).await;
    let err = connect(&load(&tmp, "beta", "alpha"), addr, TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("certificate is for 'mallory', expected 'alpha'"),
        "{msg}"
    );
}

#[tokio::test]
async fn connect_times_out_on_silent_server() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    // Accepts TCP, never speaks TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tcp);
    });
    let t = Duration::from_millis(300);
    let err = connect(&load(&tmp, "beta", "alpha"), addr, t)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("during the TLS handshake"),
        "{err}"
    );
    hold.abort();
}

#[tokio::test]
async fn accept_times_out_on_silent_client() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let err = understudy_tls::accept(
        &load(&tmp, "alpha", "beta"),
        tcp,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn connect_reports_refused_tcp() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    // Bind and drop to find a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect(&load(&tmp, "beta", "alpha"), addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn alpn_constant() {
    assert_eq!(ALPN_V3, b"understudy/3");
}

/// The client's `connect` returns only once the server accepted its certificate: a refusal
/// is an error of `connect` itself, not of some later read.
#[tokio::test]
async fn connect_fails_when_the_server_refuses_us() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta", "mallory"]);
    let (addr, task) = serve_once(load(&tmp, "alpha", "beta")).await;
    let err = connect(&load(&tmp, "mallory", "alpha"), addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    let server_err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(server_err, TlsError::WrongPeer { .. }),
        "{server_err:?}"
    );
}

/// A dialler that closes mid-handshake (the replication sender drops the attempts that lost
/// its race) is told apart from a refused peer, so the passive need not warn about it.
#[tokio::test]
async fn a_dialler_hanging_up_is_not_a_refusal() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let (addr, task) = serve_once(load(&tmp, "alpha", "beta")).await;
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    let err = task.await.unwrap().unwrap_err();
    assert!(err.peer_hung_up(), "{err:?}");

    let client = raw_client(&m.ca_cert_pem, None, GOOD_ALPN);
    let err = refused_by_server(load(&tmp, "alpha", "beta"), client).await;
    assert!(!err.peer_hung_up(), "{err:?}");
}
