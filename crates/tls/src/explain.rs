//! Turning rustls and socket errors into sentences an operator can act on.
//!
//! rustls errors are precise but phrased for TLS implementers
//! ("invalid peer certificate: UnknownIssuer"). When the daemon refuses a peer
//! the log line must say why in the pair's own terms: which CA, which node,
//! which protocol version.

use std::io;

use rustls::{AlertDescription, CertificateError};

/// Which end of the connection we are; some failures read differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Explains a failed handshake. `offered` is the peer's ALPN list, when known
/// (the server sees it in the ClientHello).
pub(crate) fn explain_handshake(err: &io::Error, side: Side, offered: Option<&str>) -> String {
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return explain_rustls(tls, side, offered);
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => format!(
            "connection closed during the handshake ({err}); the peer may have refused our \
             certificate, or is not an Understudy node"
        ),
        _ => err.to_string(),
    }
}

/// Explains a rustls error in the pair's terms.
pub(crate) fn explain_rustls(err: &rustls::Error, side: Side, offered: Option<&str>) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(ce) => explain_certificate(ce),
        E::NoCertificatesPresented => match side {
            Side::Server => "no client certificate: the peer presented no certificate".to_string(),
            Side::Client => "the server presented no certificate".to_string(),
        },
        E::NoApplicationProtocol => match (side, offered) {
            (Side::Server, Some(offered)) => {
                format!("peer speaks no protocol version we support (offered: {offered})")
            }
            _ => "peer speaks no protocol version we support (no common ALPN protocol)".to_string(),
        },
        E::AlertReceived(alert) => explain_alert(*alert),
        E::PeerIncompatible(p) => format!("peer is incompatible: {p:?}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("peer does not speak TLS as expected ({err}); is it an Understudy node?")
        }
        other => other.to_string(),
    }
}

/// Explains why a certificate was rejected (ours at load time, or a peer's).
pub(crate) fn explain_certificate(err: &CertificateError) -> String {
    use CertificateError as C;
    match err {
        // A certificate from another pair either names an issuer we do not
        // know, or — if both pairs have the same name — names "our" CA but
        // carries a signature our CA's key did not make.
        C::UnknownIssuer | C::BadSignature => {
            "certificate not issued by this pair's CA".to_string()
        }
        C::Expired | C::ExpiredContext { .. } => {
            "certificate has expired (regenerate the pair's certificates, or check the clocks)"
                .to_string()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "certificate is not valid yet (check both nodes' clocks)".to_string()
        }
        C::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "certificate is for {}, expected '{}'",
            presented
                .iter()
                .map(|p| format!("'{}'", presented_name(p).escape_debug()))
                .collect::<Vec<_>>()
                .join(", "),
            expected.to_str()
        ),
        C::NotValidForName => "certificate is not for the expected node name".to_string(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "certificate is not allowed for this use (extended key usage)".to_string()
        }
        C::BadEncoding => "certificate is malformed".to_string(),
        other => format!("certificate rejected: {other:?}"),
    }
}

/// webpki reports the names a certificate carries in Debug form
/// (`DnsName("mallory")`); show just the name.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .unwrap_or(p)
}

/// Explains an alert the peer sent us: it is the peer refusing *us*.
fn explain_alert(alert: AlertDescription) -> String {
    use AlertDescription as A;
    match alert {
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::AccessDenied
        | A::DecryptError => format!(
            "peer refused our certificate (TLS alert {alert:?}); are both nodes using the same \
             pair's certificates?"
        ),
        A::CertificateRequired => "peer requires a client certificate and we sent none".to_string(),
        A::NoApplicationProtocol => {
            "peer speaks no protocol version we support (it rejected our ALPN offer)".to_string()
        }
        A::ProtocolVersion => "peer does not support TLS 1.3".to_string(),
        other => format!("peer aborted the handshake (TLS alert {other:?})"),
    }
}
