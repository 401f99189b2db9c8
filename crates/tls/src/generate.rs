//! Creating a pair's private CA and node certificates, and writing them to
//! disk with permissions that keep the private keys private.
//!
//! The CA exists only to tie the two nodes together: it signs exactly the node
//! certificates of one pair and nothing else trusts it. Its key is written out
//! so more nodes (or replacement certificates) can be signed later, but the
//! daemons never load it.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::names::{validate_node_name, validate_pair_name, CA_CN_PREFIX};
use crate::TlsError;

/// How long the CA and node certificates are valid. There is no automatic
/// rotation, so this is long: an HA pair that stops talking because a
/// certificate quietly expired would fail exactly when it is needed.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How far `not_before` is set in the past. The pair is generated on one
/// machine and copied to the other, whose clock may be behind; without this a
/// freshly installed pair could be "not yet valid" on the second node.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// Mode of the certificate directory and of private key files.
const PRIVATE_DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
/// Certificates are public; they only need to be readable by the daemon, but
/// there is no harm in others reading them.
const CERT_MODE: u32 = 0o644;

/// A pair's CA and the certificates of its nodes, all PEM-encoded.
#[derive(Clone)]
pub struct PairMaterial {
    /// The CA certificate (`ca.pem`), trusted by both nodes.
    pub ca_cert_pem: String,
    /// The CA's private key (`ca.key`). Not needed by the daemons.
    pub ca_key_pem: String,
    /// One entry per node, in the order the names were given.
    pub nodes: Vec<NodeMaterial>,
}

/// One node's certificate and private key, PEM-encoded.
#[derive(Clone)]
pub struct NodeMaterial {
    /// The node name; also the certificate's subjectAltName DNS name.
    pub name: String,
    /// The node certificate (`<name>.pem`).
    pub cert_pem: String,
    /// The node's private key (`<name>.key`).
    pub key_pem: String,
}

// Debug is written by hand so that a stray `{:?}` in a log line cannot leak
// private keys.
impl fmt::Debug for PairMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairMaterial")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl fmt::Debug for NodeMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMaterial")
            .field("name", &self.name)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a private CA for `pair_name` and one certificate per node, each
/// valid for TLS server and client authentication under its node name.
pub fn generate_pair(pair_name: &str, node_names: &[&str]) -> Result<PairMaterial, TlsError> {
    validate_pair_name(pair_name)?;
    validate_node_set(node_names.iter().copied())?;

    let now = SystemTime::now();
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now
        .checked_add(VALIDITY)
        .ok_or_else(|| TlsError::InvalidPair("system clock is too far in the future".into()))?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name(&format!("{CA_CN_PREFIX}{pair_name}"));
    // pathlen 0: this CA signs node certificates directly and must never be
    // able to vouch for an intermediate CA.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before.into();
    ca_params.not_after = not_after.into();
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut nodes = Vec::with_capacity(node_names.len());
    for &name in node_names {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        // `new` puts the name in the subjectAltName as a DNS name (we have
        // already made sure it cannot parse as an IP address).
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Each node is a TLS server when the other dials it and a TLS client
        // when it dials the other, so it needs both purposes.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        nodes.push(NodeMaterial {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        });
    }

    Ok(PairMaterial {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        nodes,
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Checks node names one by one and as a set: at least one, no duplicates.
fn validate_node_set<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), TlsError> {
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        validate_node_name(name)?;
        if seen.contains(&name) {
            return Err(TlsError::InvalidPair(format!(
                "node name '{name}' appears twice"
            )));
        }
        seen.push(name);
    }
    if seen.is_empty() {
        return Err(TlsError::InvalidPair("no node names given".into()));
    }
    Ok(())
}

/// Writes `ca.pem`, `ca.key`, `<node>.pem` and `<node>.key` into `dir`,
/// creating it (mode 0700) if needed.
///
/// Key files are created with mode 0600 from the start, so there is no window
/// in which they are readable by others. Unless `overwrite` is set, nothing is
/// written if any of the files already exists. An existing `dir` keeps its
/// permissions.
pub fn write_pair(dir: &Path, m: &PairMaterial, overwrite: bool) -> Result<(), TlsError> {
    // Node names become file names: check them again, since PairMaterial's
    // fields are public and may not have come from generate_pair.
    validate_node_set(m.nodes.iter().map(|n| n.name.as_str()))?;

    let mut files: Vec<(PathBuf, &str, u32)> = vec![
        (dir.join("ca.pem"), &m.ca_cert_pem, CERT_MODE),
        (dir.join("ca.key"), &m.ca_key_pem, KEY_MODE),
    ];
    for n in &m.nodes {
        files.push((dir.join(format!("{}.pem", n.name)), &n.cert_pem, CERT_MODE));
        files.push((dir.join(format!("{}.key", n.name)), &n.key_pem, KEY_MODE));
    }

    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(TlsError::io("creating directory", dir))?;

    if !overwrite {
        // Check everything first so that a refusal leaves nothing half
        // written. create_new below still guards against a file appearing in
        // between.
        for (path, _, _) in &files {
            match fs::symlink_metadata(path) {
                Ok(_) => return Err(TlsError::AlreadyExists { path: path.clone() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(TlsError::io("checking", path.as_path())(e)),
            }
        }
    }

    for (path, contents, mode) in &files {
        if overwrite {
            replace_file(dir, path, contents.as_bytes(), *mode)?;
        } else {
            create_file(path, contents.as_bytes(), *mode)?;
        }
    }

    // Make the new directory entries durable, not just the file contents.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TlsError::io("syncing directory", dir))?;
    Ok(())
}

/// Creates `path`, which must not exist, with `mode` and writes `contents`.
fn create_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                TlsError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                TlsError::io("creating", path)(e)
            }
        })?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(TlsError::io("writing", path))
}

/// Replaces `path` atomically with a new file of `mode` holding `contents`.
///
/// Opening an existing file with truncate would keep its old permissions (a
/// 0644 key would stay 0644), so a fresh file is created beside it and
/// renamed over it.
fn replace_file(dir: &Path, path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover from a crashed earlier run would make create_new fail.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TlsError::io("removing stale", tmp)(e)),
    }
    let result = create_file(&tmp, contents, mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(TlsError::io("replacing", path)));
    if result.is_err() {
        // Best effort: do not leave a stray copy of a private key behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}
