//! Who is on the other end, and which protocol version we agreed on.
//!
//! rustls proves that the peer's certificate chains to the pair's CA; it does
//! not tell the server *which* node of the pair connected. Every node's
//! certificate is signed by the same CA, so without the check here a node
//! could be impersonated by any other certificate the CA ever issued —
//! including the server's own. Identity is the single subjectAltName DNS name
//! that `generate_pair` puts in every node certificate.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// ALPN protocol identifier for version 3 of the channel protocol: after the
/// handshake, one ready byte each way hands the keys from rustls to the
/// channel's record layer (`records.rs`). Version 1 went straight to
/// application data through rustls; version 2 had no lease on the replication
/// stream (a passive's keepalive renews it, the active confirms it, and a
/// streaming plan carries the active's head). None of them can talk to another,
/// so an older peer is refused at the handshake with what it offered, not
/// misread afterwards.
pub const ALPN_V3: &[u8] = b"understudy/3";

/// The ALPN identifiers we offer, newest first. Both the client and server
/// configurations are built from this list.
pub(crate) const SUPPORTED_ALPN: &[&[u8]] = &[ALPN_V3];

/// Maps the ALPN protocol negotiated on a connection to a channel protocol
/// version.
///
/// `None` is an error too: rustls lets a handshake complete when the client
/// offered no ALPN at all, and a peer that does not say which version it
/// speaks is not one we can talk to.
pub fn negotiated_version(alpn: Option<&[u8]>) -> Result<u16, TlsError> {
    match alpn {
        Some(p) if p == ALPN_V3 => Ok(3),
        other => Err(TlsError::UnsupportedVersion {
            offered: describe_protocols(other.into_iter()),
        }),
    }
}

/// Renders a peer-supplied list of ALPN identifiers for an error message.
///
/// The bytes come from an unauthenticated peer and end up in logs, so they are
/// escaped and the list is truncated rather than copied verbatim.
pub(crate) fn describe_protocols<'a>(protocols: impl Iterator<Item = &'a [u8]>) -> String {
    const MAX_ITEMS: usize = 8;
    const MAX_LEN: usize = 64;
    let mut parts = Vec::new();
    for (i, p) in protocols.enumerate() {
        if i == MAX_ITEMS {
            parts.push("...".to_string());
            break;
        }
        let text = String::from_utf8_lossy(&p[..p.len().min(MAX_LEN)]);
        let mut shown: String = text.escape_debug().collect();
        if p.len() > MAX_LEN {
            shown.push_str("...");
        }
        parts.push(format!("\"{shown}\""));
    }
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(", ")
    }
}

/// Extracts the node name from a peer's certificate chain: the single DNS name
/// in the end-entity certificate's subjectAltName.
///
/// This only *reads* the certificate. Call it on a chain rustls has already
/// verified against the pair CA (i.e. after a completed handshake), never on
/// an unverified one.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<String, TlsError> {
    let end_entity = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|e| TlsError::BadPeerCertificate(format!("cannot parse certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadPeerCertificate(format!("malformed subjectAltName: {e}")))?
        .ok_or_else(|| {
            TlsError::BadPeerCertificate("certificate has no subjectAltName".to_string())
        })?;
    let names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(TlsError::BadPeerCertificate(
            "certificate carries no DNS name, so it names no node".to_string(),
        )),
        many => Err(TlsError::BadPeerCertificate(format!(
            "certificate carries {} DNS names ({}); a node certificate carries exactly one",
            many.len(),
            describe_protocols(many.iter().map(|s| s.as_bytes()))
        ))),
    }
}

/// Checks that the (already verified) certificates a peer presented name
/// `expected_peer`: not ourselves, not a third node.
///
/// Pass `conn.peer_certificates()` straight from a rustls connection.
pub fn check_peer(
    conn_peer_certs: Option<&[CertificateDer<'_>]>,
    expected_peer: &str,
) -> Result<(), TlsError> {
    let certs = match conn_peer_certs {
        Some(c) if !c.is_empty() => c,
        _ => return Err(TlsError::NoPeerCertificate),
    };
    let presented = peer_identity(certs)?;
    if presented == expected_peer {
        Ok(())
    } else {
        Err(TlsError::WrongPeer {
            presented,
            expected: expected_peer.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(negotiated_version(Some(b"understudy/3")).ok(), Some(3));
        // Version 1 (no key handover) and 2 (no replication lease) cannot talk to us.
        assert!(negotiated_version(Some(b"understudy/1")).is_err());
        assert!(negotiated_version(Some(b"understudy/2")).is_err());
        let e = negotiated_version(Some(b"understudy/99")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer speaks no protocol version we support (offered: \"understudy/99\")"
        );
        let e = negotiated_version(None).unwrap_err();
        assert!(e.to_string().contains("offered: nothing"), "{e}");
    }

    #[test]
    fn hostile_protocol_names_are_escaped_and_bounded() {
        let long = vec![b'x'; 500];
        let evil: &[u8] = b"a\nb\x1b[31m";
        let list = [evil, &long[..]];
        let s = describe_protocols(list.iter().copied());
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s}");
        assert!(s.len() < 120, "{s}");
    }

    #[test]
    fn no_certs() {
        assert!(matches!(
            check_peer(None, "beta"),
            Err(TlsError::NoPeerCertificate)
        ));
        assert!(matches!(
            check_peer(Some(&[]), "beta"),
            Err(TlsError::NoPeerCertificate)
        ));
    }
}
