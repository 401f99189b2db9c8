//! Validation of node and pair names.
//!
//! A node name ends up in three places: a certificate's subjectAltName, the
//! TLS server name the other node dials, and a file name (`<node>.pem`). The
//! rules here are the intersection of what is safe for all three, so a name
//! that passes can never escape the certificate directory or silently become
//! an IP-address SAN.

use rustls::pki_types::ServerName;

use crate::TlsError;

/// Longest pair name that keeps the CA's common name within the 64 characters
/// X.509 allows (`"Understudy CA for pair "` is 23 characters).
const MAX_PAIR_NAME: usize = 64 - CA_CN_PREFIX.len();

/// Prefix of the CA certificate's common name.
pub(crate) const CA_CN_PREFIX: &str = "Understudy CA for pair ";

/// Checks that `name` can be used as a node name: a lowercase DNS name
/// (labels of `a-z`, `0-9`, `-`), not an IP address, and not `ca` (whose
/// files would collide with the CA's).
pub(crate) fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("node names must not be empty");
    }
    if name.len() > 253 {
        return bad("node names must be at most 253 characters");
    }
    if name == "ca" {
        return bad("'ca' is reserved for the certificate authority's files");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("node names must not have empty labels (leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return bad("each dot-separated part of a node name must be at most 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("node names may contain only lowercase letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("parts of a node name must not start or end with '-'");
        }
    }
    // rcgen turns anything that parses as an IP address into an IP SAN, and
    // rustls would then dial it as an IP identity: insist on a DNS name.
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => bad("node names must be DNS names, not IP addresses"),
        Err(_) => bad("node names must be valid DNS names"),
    }
}

/// Checks that `name` can be used as a pair name inside the CA's common name.
pub(crate) fn validate_pair_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| {
        Err(TlsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return bad("pair names must not be empty");
    }
    if name.chars().any(char::is_control) {
        return bad("pair names must not contain control characters");
    }
    if name.len() > MAX_PAIR_NAME {
        return bad("pair names must be at most 41 bytes (the CA's common name is limited to 64)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["alpha", "beta", "node-1", "db1.example.com", "a"] {
            assert!(validate_node_name(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "", "ca", "Alpha", "../etc", "a/b", ".alpha", "alpha.", "a..b", "-a", "a-", "1.2.3.4",
            "al pha", "é",
        ] {
            assert!(
                validate_node_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn pair_names() {
        assert!(validate_pair_name("prod db").is_ok());
        assert!(validate_pair_name("").is_err());
        assert!(validate_pair_name("a\nb").is_err());
        assert!(validate_pair_name(&"x".repeat(MAX_PAIR_NAME)).is_ok());
        assert!(validate_pair_name(&"x".repeat(MAX_PAIR_NAME + 1)).is_err());
    }
}
