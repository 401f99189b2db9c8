//! Generating, writing and loading the pair's certificate files: contents of
//! the certificates, file permissions, overwrite protection, and the checks
//! `load_node_tls` makes on a node's own files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use tempfile::TempDir;
use understudy_tls::{generate_pair, load_node_tls, write_pair, TlsError};
use x509_parser::extensions::GeneralName;

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn certificates_have_the_promised_contents() {
    let m = generate_pair("prod", &["alpha", "beta"]).unwrap();

    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(m.ca_cert_pem.as_bytes()).unwrap();
    let ca = ca_pem.parse_x509().unwrap();
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Understudy CA for pair prod");
    assert!(ca.is_ca());
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) as f64
        / (365.0 * 86400.0);
    assert!((9.9..10.1).contains(&years), "{years}");

    assert_eq!(m.nodes.len(), 2);
    for n in &m.nodes {
        let (_, pem) = x509_parser::pem::parse_x509_pem(n.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(!cert.is_ca());
        assert_eq!(cert.issuer(), ca.subject());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), n.name);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName(n.name.as_str())]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(n.key_pem.contains("PRIVATE KEY"));
    }
}

#[test]
fn debug_output_hides_private_keys() {
    let m = generate_pair("prod", &["alpha", "beta"]).unwrap();
    let dbg = format!("{m:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(dbg.contains("redacted"));
}

#[test]
fn generate_rejects_bad_names() {
    assert!(generate_pair("prod", &[]).is_err());
    assert!(generate_pair("prod", &["alpha", "alpha"]).is_err());
    assert!(generate_pair("prod", &["../x"]).is_err());
    assert!(generate_pair("prod", &["ca"]).is_err());
    assert!(generate_pair("", &["alpha"]).is_err());
}

#[test]
fn write_pair_sets_modes() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    assert_eq!(mode(&dir), 0o700);
    for key in ["ca.key", "alpha.key", "beta.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.pem", "alpha.pem", "beta.pem"] {
        assert_eq!(mode(&dir.join(cert)) & 0o022, 0, "{cert}");
        assert!(dir.join(cert).is_file());
    }
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 6);
}

#[test]
fn write_pair_refuses_to_overwrite() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    let before = fs::read_to_string(dir.join("alpha.key")).unwrap();
    let other = generate_pair("prod", &["alpha", "beta"]).unwrap();

    let err = write_pair(&dir, &other, false).unwrap_err();
    assert!(matches!(err, TlsError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(fs::read_to_string(dir.join("alpha.key")).unwrap(), before);

    // Only one file present still blocks everything, and nothing is written.
    let fresh = TempDir::new().unwrap();
    fs::write(fresh.path().join("beta.key"), "x").unwrap();
    let err = write_pair(fresh.path(), &m, false).unwrap_err();
    assert!(err.to_string().contains("beta.key"), "{err}");
    assert!(!fresh.path().join("ca.pem").exists());
}

#[test]
fn overwrite_replaces_files_and_tightens_key_modes() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    fs::set_permissions(dir.join("alpha.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let other = generate_pair("prod", &["alpha", "beta"]).unwrap();
    write_pair(&dir, &other, true).unwrap();
    assert_eq!(
        fs::read_to_string(dir.join("alpha.key")).unwrap(),
        other.nodes[0].key_pem
    );
    assert_eq!(mode(&dir.join("alpha.key")), 0o600);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 6);
    load_node_tls(&dir, "alpha", "beta").unwrap();
}

#[test]
fn load_refuses_group_or_world_readable_key() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    let key = dir.join("alpha.key");
    for bad in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&key, fs::Permissions::from_mode(bad)).unwrap();
        let err = load_node_tls(&dir, "alpha", "beta").unwrap_err();
        assert!(
            matches!(err, TlsError::InsecureKeyFile { mode, .. } if mode == bad),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("{bad:04o}")), "{msg}");
        assert!(msg.contains(&key.display().to_string()), "{msg}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    load_node_tls(&dir, "alpha", "beta").unwrap();
}

#[test]
fn load_reports_missing_file_with_its_path() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    let err = load_node_tls(&dir, "gamma", "alpha").unwrap_err();
    assert!(err.to_string().contains("gamma.pem"), "{err}");
    assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
}

#[test]
fn load_refuses_node_as_its_own_peer_and_bad_names() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    assert!(matches!(
        load_node_tls(&dir, "alpha", "alpha"),
        Err(TlsError::InvalidPair(_))
    ));
    assert!(matches!(
        load_node_tls(&dir, "../certs/alpha", "beta"),
        Err(TlsError::InvalidName { .. })
    ));
}

#[test]
fn load_refuses_own_certificate_from_another_pair() {
    let (tmp, _) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    let other = generate_pair("staging", &["alpha", "beta"]).unwrap();
    fs::write(dir.join("alpha.pem"), &other.nodes[0].cert_pem).unwrap();
    fs::write(dir.join("alpha.key"), &other.nodes[0].key_pem).unwrap();
    let err = load_node_tls(&dir, "alpha", "beta").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("alpha.pem"), "{msg}");
    assert!(
        msg.contains("certificate not issued by this pair's CA"),
        "{msg}"
    );
}

#[test]
fn load_refuses_certificate_for_another_node() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    fs::write(dir.join("alpha.pem"), &m.nodes[1].cert_pem).unwrap();
    let err = load_node_tls(&dir, "alpha", "beta").unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate is for node 'beta', not 'alpha'"),
        "{err}"
    );
}

#[test]
fn load_refuses_mismatched_key() {
    let (tmp, m) = pair_dir("prod", &["alpha", "beta"]);
    let dir = tmp.path().join("certs");
    fs::write(dir.join("alpha.key"), &m.nodes[1].key_pem).unwrap();
    let err = load_node_tls(&dir, "alpha", "beta").unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}
