//! Moving the active node's identity by rewriting a DNS record.
//!
//! When the two nodes of a pair sit in different subnets there is no address that can float
//! between them, so the name clients use (`www.example.com.`) is what moves: on promotion the
//! new active node points the name's A or AAAA record at itself. This crate does exactly that
//! with an RFC 2136 dynamic UPDATE, authenticated with a TSIG shared secret (RFC 8945), sent
//! straight to the zone's primary server.
//!
//! - [`replace_address`] deletes the whole A (or AAAA) RRset at the name and adds the one new
//!   address, in a single UPDATE, so the server applies both or neither: clients never see the
//!   name with no address, nor with both nodes' addresses.
//! - [`query_address`] asks a server what the name resolves to now, for checks and tests.
//! - [`Tsig::from_secret_file`] loads the shared secret, refusing (like ssh does for private
//!   keys) a file that group or others could read.
//!
//! Messages are built, signed, parsed and verified with `hickory-proto`; only the transport
//! (UDP with retransmission, TCP when the answer is truncated, one overall deadline) is ours,
//! because failover needs a hard bound on how long an update may take and errors that say
//! which of "no server there", "server silent", "key rejected" and "update refused" happened.
//!
//! The integration tests (`tests/knot.rs`) run these functions against a real Knot DNS server,
//! so `.ci/run` (through `scripts/setup.sh`) must install Debian's `knot` package; under
//! `CI=true` they fail rather than skip when `knotd` is missing.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as WireTsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tracing::debug;

/// How far apart (in seconds) this host's clock and the server's may be before the server
/// answers BADTIME. 300 s is the value RFC 8945 recommends and what nsupdate and knsupdate use.
pub const TSIG_FUDGE_SECS: u16 = 300;

/// The deadline [`query_address`] applies to the whole exchange.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first UDP retransmission happens after this long; each later one waits twice as long
/// as the one before (up to [`MAX_RETRANSMIT`]). A lost datagram must not cost a whole failover
/// timeout, and resending is safe: both messages this crate sends are idempotent.
const FIRST_RETRANSMIT: Duration = Duration::from_millis(1000);
const MAX_RETRANSMIT: Duration = Duration::from_secs(4);

/// The EDNS UDP payload size advertised by queries: the DNS Flag Day 2020 value, small enough
/// to avoid IP fragmentation on any path; bigger answers come back truncated and go over TCP.
const EDNS_PAYLOAD: u16 = 1232;

/// A secret file larger than this is certainly not a single base64 secret; refusing it early
/// keeps a wrong path (a log file, a disk image) from being read into memory.
const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// Everything that can go wrong; every message names what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The TSIG secret file could not be used (missing, unreadable, not base64, ...).
    #[error("TSIG secret file {}: {reason}", path.display())]
    SecretFile { path: PathBuf, reason: String },

    /// The TSIG secret file is accessible to group or others; refused as ssh refuses such
    /// private keys, because anyone who can read it can repoint the name.
    #[error(
        "permissions {mode:04o} for TSIG secret file {} are too open: the secret must not be \
         accessible by group or others (run `chmod 600 {}`)",
        path.display(),
        path.display()
    )]
    SecretFileTooOpen { path: PathBuf, mode: u32 },

    /// A zone, record or key name is not a valid domain name.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },

    /// The record to update does not lie inside the zone named for the update.
    #[error("record {record} is not inside zone {zone}: an UPDATE can only change names of its own zone")]
    NotInZone { record: String, zone: String },

    /// The TSIG key cannot be used (for example an empty secret).
    #[error("TSIG key {key}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// Nothing listens at the server's address (ICMP port or host unreachable, TCP reset).
    #[error("DNS server {server} is unreachable over {transport}: {source} (is it running, listening on that address and port, and not firewalled?)")]
    Unreachable {
        server: SocketAddr,
        transport: &'static str,
        source: io::Error,
    },

    /// No answer arrived before the deadline.
    #[error("no answer from DNS server {server} within {timeout:?} ({detail}): is it running and reachable, and does no firewall drop DNS?")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
        detail: String,
    },

    /// Some other socket error.
    #[error("talking to DNS server {server} over {transport} failed: {source}")]
    Io {
        server: SocketAddr,
        transport: &'static str,
        source: io::Error,
    },

    /// The server did not accept our TSIG signature, and said why (RFC 8945 TSIG error).
    #[error("the server rejected the TSIG signature of key {key} ({error}): {hint}")]
    TsigRejected {
        key: String,
        error: String,
        hint: String,
    },

    /// The server answered the update with an error RCODE.
    #[error("the server refused the update: {rcode} — {hint}{}", unauthenticated_note(*authenticated))]
    UpdateRejected {
        rcode: String,
        hint: String,
        /// Whether the refusal carried a valid TSIG signature. An unsigned refusal could have
        /// been forged, which matters when deciding whether to believe the hint.
        authenticated: bool,
    },

    /// The server claims success, but its answer failed TSIG verification: it cannot be told
    /// apart from a forgery, so the update must not be assumed to have happened.
    #[error("the answer from {server} failed TSIG verification ({reason}); not trusting it, so the update may not have been applied")]
    ResponseNotAuthenticated { server: SocketAddr, reason: String },

    /// The server answered a query with an error RCODE.
    #[error("the query for {record} {rtype} at {server} failed: {rcode}")]
    QueryFailed {
        server: SocketAddr,
        record: String,
        rtype: AddressType,
        rcode: String,
    },

    /// The server's answer could not be parsed.
    #[error("malformed answer from DNS server {server}: {reason}")]
    BadResponse { server: SocketAddr, reason: String },

    /// The request could not be encoded or signed (a bug or an unusable key, never the network).
    #[error("could not build the DNS message: {0}")]
    Encode(String),

    /// This host's clock reads before 1970, so no TSIG time can be given.
    #[error("the system clock is before 1970: TSIG needs the current time")]
    Clock,
}

fn unauthenticated_note(authenticated: bool) -> &'static str {
    if authenticated {
        ""
    } else {
        " (this answer was not validly TSIG-signed, so it may not come from the server)"
    }
}

/// The TSIG MAC algorithms offered: the two RFC 8945 recommends or allows that knot, BIND and
/// PowerDNS all support. SHA-1 and MD5 are deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name as written in server configurations (`hmac-sha256`).
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn wire(self) -> WireTsigAlgorithm {
        match self {
            TsigAlgorithm::HmacSha256 => WireTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha512 => WireTsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TSIG key: its name and algorithm must match the server's key definition exactly, and the
/// secret is the raw (base64-decoded) shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Tsig {
    pub key_name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

// Hand-written so that the secret never ends up in a log line through `{:?}`.
impl fmt::Debug for Tsig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tsig")
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field(
                "secret",
                &format_args!("<{} bytes redacted>", self.secret.len()),
            )
            .finish()
    }
}

impl Tsig {
    /// Loads a key whose secret is stored base64-encoded (as in the server's key definition,
    /// surrounding whitespace ignored) in the file at `path`.
    ///
    /// The file must be a regular file with no permission bits for group or others (mode 0600
    /// or 0400); anything more open is refused, as ssh refuses private keys: the secret lets
    /// anyone who reads it point the name anywhere.
    pub fn from_secret_file(
        key_name: impl Into<String>,
        algorithm: TsigAlgorithm,
        path: impl AsRef<Path>,
    ) -> Result<Self, DnsError> {
        let key_name = key_name.into();
        let path = path.as_ref();
        // Validated now so that a typo in the configuration surfaces at load time rather than
        // at the first failover.
        parse_name("TSIG key", &key_name)?;

        let secret_file_error = |reason: String| DnsError::SecretFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| secret_file_error(format!("cannot open: {e}")))?;
        // Checked on the open file, not the path, so the file checked is the file read.
        let metadata = file
            .metadata()
            .map_err(|e| secret_file_error(format!("cannot stat: {e}")))?;
        if !metadata.is_file() {
            return Err(secret_file_error("is not a regular file".to_string()));
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(DnsError::SecretFileTooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }

        let mut text = String::new();
        file.take(MAX_SECRET_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| secret_file_error(format!("cannot read as text: {e}")))?;
        if text.len() as u64 > MAX_SECRET_FILE_LEN {
            return Err(secret_file_error(format!(
                "is larger than {MAX_SECRET_FILE_LEN} bytes: expected a single base64 secret"
            )));
        }
        let encoded = text.trim();
        if encoded.is_empty() {
            return Err(secret_file_error(
                "is empty: expected the base64 TSIG secret".to_string(),
            ));
        }
        let secret = data_encoding::BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| {
                secret_file_error(format!(
                    "is not valid base64 ({e}): expected the secret exactly as in the server's key definition"
                ))
            })?;
        if secret.is_empty() {
            return Err(secret_file_error("decodes to an empty secret".to_string()));
        }
        Ok(Tsig {
            key_name,
            algorithm,
            secret,
        })
    }

    fn signer(&self) -> Result<TSigner, DnsError> {
        if self.secret.is_empty() {
            return Err(DnsError::InvalidKey {
                key: self.key_name.clone(),
                reason: "the secret is empty".to_string(),
            });
        }
        let name = parse_name("TSIG key", &self.key_name)?;
        TSigner::new(
            self.secret.clone(),
            self.algorithm.wire(),
            name,
            TSIG_FUDGE_SECS,
        )
        .map_err(|e| DnsError::InvalidKey {
            key: self.key_name.clone(),
            reason: e.to_string(),
        })
    }
}

/// Which kind of address record: A for IPv4, AAAA for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    A,
    Aaaa,
}

impl AddressType {
    /// The record type that holds `address`.
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => AddressType::A,
            IpAddr::V6(_) => AddressType::Aaaa,
        }
    }

    fn record_type(self) -> RecordType {
        match self {
            AddressType::A => RecordType::A,
            AddressType::Aaaa => RecordType::AAAA,
        }
    }
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressType::A => "A",
            AddressType::Aaaa => "AAAA",
        })
    }
}

/// Makes `record` (a name inside `zone`) resolve to `address` alone: one TSIG-signed RFC 2136
/// UPDATE to `server` (the zone's primary) that deletes the RRset of `address`'s type (A for
/// IPv4, AAAA for IPv6) at `record` and adds `record ttl IN A|AAAA address`. The server applies
/// an UPDATE atomically, so there is no moment with no address or with two.
///
/// Names may be given with or without the trailing dot; both are taken as absolute. The
/// other address family's records at the name are left alone.
///
/// The UPDATE goes over UDP (retransmitted while waiting) and is repeated over TCP if the
/// answer comes back truncated; `timeout` bounds the whole exchange. Success is reported
/// only for a NOERROR answer whose TSIG signature verifies with the same key.
pub async fn replace_address(
    server: SocketAddr,
    zone: &str,
    record: &str,
    ttl: u32,
    address: IpAddr,
    tsig: &Tsig,
    timeout: Duration,
) -> Result<(), DnsError> {
    let zone_name = parse_name("zone", zone)?;
    let record_name = parse_name("record", record)?;
    if !zone_name.zone_of(&record_name) {
        return Err(DnsError::NotInZone {
            record: record_name.to_string(),
            zone: zone_name.to_string(),
        });
    }
    let signer = tsig.signer()?;

    let mut request = Message::query();
    request.metadata.op_code = OpCode::Update;
    request.metadata.recursion_desired = false;
    // RFC 2136 2.3: the zone section names the zone (class IN, type SOA).
    let mut zone_query = Query::query(zone_name.clone(), RecordType::SOA);
    zone_query.set_query_class(DNSClass::IN);
    request.add_zone(zone_query);
    // RFC 2136 2.5.2: delete an RRset = class ANY, TTL 0, empty RDATA.
    let rtype = AddressType::of(address).record_type();
    let mut delete = Record::update0(record_name.clone(), 0, rtype);
    delete.dns_class = DNSClass::ANY;
    request.add_update(delete);
    // RFC 2136 2.5.1: add to an RRset = class of the zone. Applied after the delete, so the
    // RRset ends up holding exactly this address.
    let rdata = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    request.add_update(Record::from_rdata(record_name.clone(), ttl, rdata));

    let mut verifier = request
        .finalize(&signer, unix_now()?)
        .map_err(|e| DnsError::Encode(format!("TSIG signing failed: {e}")))?
        .ok_or_else(|| DnsError::Encode("the TSIG signer gave no response verifier".into()))?;
    let bytes = request
        .to_vec()
        .map_err(|e| DnsError::Encode(e.to_string()))?;

    let (raw, response) = exchange(server, &bytes, &request, timeout).await?;

    // A server that could not verify our request says why in the TSIG error field of an
    // (unsigned, since it cannot sign with a key it does not trust) answer. That is the most
    // specific diagnosis available, so it comes before the RCODE.
    if let Some(error) = response.signature().and_then(|sig| sig.data.error) {
        return Err(tsig_rejection(error, tsig, &zone_name));
    }
    let verified = verifier.verify(&raw).map(|_| ()).map_err(|e| e.to_string());
    match (response.metadata.response_code, verified) {
        (ResponseCode::NoError, Ok(())) => Ok(()),
        (ResponseCode::NoError, Err(reason)) => {
            Err(DnsError::ResponseNotAuthenticated { server, reason })
        }
        (rcode, verified) => Err(update_rejection(
            rcode,
            &zone_name,
            &record_name,
            tsig,
            verified.is_ok(),
        )),
    }
}

/// The addresses of type `rtype` that `server` answers for `record` (empty if the name or the
/// RRset does not exist), with a deadline of [`DEFAULT_QUERY_TIMEOUT`].
///
/// The query is unsigned and sets RD, so it works against the zone's authoritative servers
/// (to check an update landed) as well as against a recursive resolver.
pub async fn query_address(
    server: SocketAddr,
    record: &str,
    rtype: AddressType,
) -> Result<Vec<IpAddr>, DnsError> {
    query_address_with_timeout(server, record, rtype, DEFAULT_QUERY_TIMEOUT).await
}

/// [`query_address`] with an explicit deadline for the whole exchange.
pub async fn query_address_with_timeout(
    server: SocketAddr,
    record: &str,
    rtype: AddressType,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let name = parse_name("record", record)?;
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(name.clone(), rtype.record_type()));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    request.set_edns(edns);
    let bytes = request
        .to_vec()
        .map_err(|e| DnsError::Encode(e.to_string()))?;

    let (_, response) = exchange(server, &bytes, &request, timeout).await?;
    match response.metadata.response_code {
        // NXDOMAIN is an answer too: the name has no address at all.
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rcode => {
            return Err(DnsError::QueryFailed {
                server,
                record: name.to_string(),
                rtype,
                rcode: rcode_name(rcode),
            })
        }
    }
    // Filtered by type only, not by owner name, so that addresses reached through a CNAME in
    // the same answer count as well.
    Ok(response
        .answers
        .iter()
        .filter_map(|answer| match (&answer.data, rtype) {
            (RData::A(a), AddressType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(aaaa), AddressType::Aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect())
}

fn parse_name(what: &'static str, text: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName {
        what,
        name: text.to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Err(invalid("it is empty".to_string()));
    }
    let mut name = Name::from_ascii(text).map_err(|e| invalid(e.to_string()))?;
    // Configuration files routinely drop the trailing dot; a relative name has no meaning on
    // the wire, so every name is taken as absolute.
    name.set_fqdn(true);
    Ok(name)
}

fn unix_now() -> Result<u64, DnsError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| DnsError::Clock)
}

/// Upper-case mnemonics as in RFC 1035/2136 and in every server's logs, rather than
/// hickory's prose ("Query Refused"), so the error can be matched against the server's side.
fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("RCODE {} ({other})", u16::from(other)),
    }
}

fn update_rejection(
    rcode: ResponseCode,
    zone: &Name,
    record: &Name,
    tsig: &Tsig,
    authenticated: bool,
) -> DnsError {
    let key = &tsig.key_name;
    let hint = match rcode {
        ResponseCode::Refused => format!("is the TSIG key {key} allowed to update zone {zone}?"),
        ResponseCode::NotAuth => format!(
            "the server is not authoritative for zone {zone}, or does not let key {key} update it: \
             is this the zone's primary server, and is the key in the zone's update ACL?"
        ),
        ResponseCode::NotZone => format!(
            "{record} is not inside zone {zone} as the server knows it: check the zone name"
        ),
        ResponseCode::ServFail => format!(
            "the server failed to apply the update to zone {zone}; its log says why (zone not \
             loaded, journal not writable, ...)"
        ),
        ResponseCode::NotImp => {
            "the server does not implement dynamic updates (RFC 2136) for this zone".to_string()
        }
        ResponseCode::FormErr => "the server could not parse the update message".to_string(),
        ResponseCode::YXDomain
        | ResponseCode::YXRRSet
        | ResponseCode::NXRRSet
        | ResponseCode::NXDomain => {
            "the server reports a failed prerequisite, although this update sets none".to_string()
        }
        _ => "unexpected response code for an update".to_string(),
    };
    DnsError::UpdateRejected {
        rcode: rcode_name(rcode),
        hint,
        authenticated,
    }
}

fn tsig_rejection(error: TsigError, tsig: &Tsig, zone: &Name) -> DnsError {
    let key = &tsig.key_name;
    let (name, hint) = match error {
        // Knot DNS also answers BADKEY when the key is valid but the zone's ACL does not let
        // it update, so the hint names both causes.
        TsigError::BadKey => (
            "BADKEY".to_string(),
            format!(
                "either the server knows no key named {key} with algorithm {}, or key {key} is not \
                 allowed to update zone {zone}: check the server's key definition and the zone's \
                 update ACL",
                tsig.algorithm
            ),
        ),
        TsigError::BadSig => (
            "BADSIG".to_string(),
            format!("the secret of key {key} does not match the server's: check the secret file"),
        ),
        TsigError::BadTime => (
            "BADTIME".to_string(),
            format!(
                "this host's clock and the server's differ by more than {TSIG_FUDGE_SECS} s: \
                 check time synchronisation"
            ),
        ),
        TsigError::BadTrunc => (
            "BADTRUNC".to_string(),
            "the server refuses the MAC length".to_string(),
        ),
        TsigError::Unknown(code) => (
            format!("TSIG error {code}"),
            "unknown TSIG error code".to_string(),
        ),
    };
    DnsError::TsigRejected {
        key: key.clone(),
        error: name,
        hint,
    }
}

/// Sends `bytes` (the encoding of `request`) to `server` and returns the first answer that
/// matches it, raw and parsed: over UDP first, then over TCP if that answer is truncated, all
/// within `timeout`.
async fn exchange(
    server: SocketAddr,
    bytes: &[u8],
    request: &Message,
    timeout: Duration,
) -> Result<(Vec<u8>, Message), DnsError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    let udp = tokio::time::timeout_at(
        deadline,
        udp_exchange(server, bytes, request, &mut attempts),
    )
    .await;
    let (raw, response) = match udp {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(DnsError::Timeout {
                server,
                timeout,
                detail: format!("{attempts} UDP transmission(s)"),
            })
        }
    };
    if !response.metadata.truncation {
        return Ok((raw, response));
    }
    debug!(%server, "answer truncated over UDP; repeating over TCP");
    match tokio::time::timeout_at(deadline, tcp_exchange(server, bytes, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(DnsError::Timeout {
            server,
            timeout,
            detail: "over TCP, after a truncated UDP answer".to_string(),
        }),
    }
}

async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    request: &Message,
    attempts: &mut u32,
) -> Result<(Vec<u8>, Message), DnsError> {
    const UDP: &str = "UDP";
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| socket_error(server, UDP, e))?;
    // Connected, so the kernel drops datagrams from any other source and reports ICMP
    // unreachable errors to us: a closed port fails at once instead of timing out.
    socket
        .connect(server)
        .await
        .map_err(|e| socket_error(server, UDP, e))?;

    let mut buffer = vec![0u8; 65535];
    let mut interval = FIRST_RETRANSMIT;
    loop {
        *attempts += 1;
        socket
            .send(bytes)
            .await
            .map_err(|e| socket_error(server, UDP, e))?;
        let resend_at = Instant::now() + interval;
        loop {
            match tokio::time::timeout_at(resend_at, socket.recv(&mut buffer)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(socket_error(server, UDP, e)),
                Ok(Ok(len)) => {
                    let raw = &buffer[..len];
                    // Stray or garbled datagrams are skipped rather than fatal: whoever can
                    // spoof one could as well drop the real answer, and the real answer may
                    // still come.
                    match Message::from_vec(raw) {
                        Ok(response) if answers(request, &response) => {
                            return Ok((raw.to_vec(), response))
                        }
                        Ok(_) => debug!(%server, "ignoring a UDP answer to another request"),
                        Err(e) => {
                            debug!(%server, error = %e, "ignoring an unparsable UDP datagram")
                        }
                    }
                }
            }
        }
        interval = (interval * 2).min(MAX_RETRANSMIT);
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    request: &Message,
) -> Result<(Vec<u8>, Message), DnsError> {
    const TCP: &str = "TCP";
    let length = u16::try_from(bytes.len())
        .map_err(|_| DnsError::Encode("message longer than 65535 bytes".to_string()))?;
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| socket_error(server, TCP, e))?;
    // RFC 1035 4.2.2: a two-byte length, then the message; one write so both go in one
    // segment.
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| socket_error(server, TCP, e))?;
    loop {
        let length = stream
            .read_u16()
            .await
            .map_err(|e| socket_error(server, TCP, e))?;
        let mut raw = vec![0u8; usize::from(length)];
        stream
            .read_exact(&mut raw)
            .await
            .map_err(|e| socket_error(server, TCP, e))?;
        // Unlike a datagram, nothing can slip into an established stream, so garbage here
        // really comes from the server.
        let response = Message::from_vec(&raw).map_err(|e| DnsError::BadResponse {
            server,
            reason: e.to_string(),
        })?;
        if answers(request, &response) {
            return Ok((raw, response));
        }
        debug!(%server, "ignoring a TCP answer to another request");
    }
}

/// Whether `response` is the answer to `request`: same ID and opcode, marked as a response,
/// and echoing the question (servers may leave it out of some error answers).
fn answers(request: &Message, response: &Message) -> bool {
    response.metadata.id == request.metadata.id
        && response.metadata.message_type == MessageType::Response
        && response.metadata.op_code == request.metadata.op_code
        && (response.queries.is_empty() || response.queries == request.queries)
}

fn socket_error(server: SocketAddr, transport: &'static str, source: io::Error) -> DnsError {
    match source.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => DnsError::Unreachable {
            server,
            transport,
            source,
        },
        _ => DnsError::Io {
            server,
            transport,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn secret_file(contents: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key.secret");
        fs::write(&path, contents).expect("write secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn loads_a_private_base64_secret() {
        let (_dir, path) = secret_file("  c2VjcmV0LXNlY3JldA==\n", 0o600);
        let tsig = Tsig::from_secret_file("update-key", TsigAlgorithm::HmacSha256, &path)
            .expect("a 0600 base64 secret loads");
        assert_eq!(tsig.secret, b"secret-secret");
        assert_eq!(tsig.key_name, "update-key");
        let debug = format!("{tsig:?}");
        assert!(
            !debug.contains("secret-secret") && debug.contains("redacted"),
            "{debug}"
        );
    }

    #[test]
    fn refuses_group_or_world_accessible_secrets() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o610] {
            let (_dir, path) = secret_file("c2VjcmV0", mode);
            let err = Tsig::from_secret_file("k", TsigAlgorithm::HmacSha256, &path)
                .expect_err("an open secret file must be refused");
            let text = err.to_string();
            assert!(matches!(err, DnsError::SecretFileTooOpen { .. }), "{text}");
            assert!(
                text.contains(&format!("{mode:04o}")) && text.contains("chmod 600"),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_contents_and_paths() {
        let (_dir, path) = secret_file("not base64!", 0o600);
        let text = Tsig::from_secret_file("k", TsigAlgorithm::HmacSha512, &path)
            .expect_err("garbage refused")
            .to_string();
        assert!(text.contains("not valid base64"), "{text}");

        let (_dir, path) = secret_file(" \n", 0o400);
        let text = Tsig::from_secret_file("k", TsigAlgorithm::HmacSha512, &path)
            .expect_err("empty refused")
            .to_string();
        assert!(text.contains("is empty"), "{text}");

        let text = Tsig::from_secret_file("k", TsigAlgorithm::HmacSha256, "/nonexistent/key")
            .expect_err("missing refused")
            .to_string();
        assert!(
            text.contains("/nonexistent/key") && text.contains("cannot open"),
            "{text}"
        );

        let (_dir, path) = secret_file("c2VjcmV0", 0o600);
        let err = Tsig::from_secret_file("bad..name", TsigAlgorithm::HmacSha256, &path)
            .expect_err("invalid key name refused");
        assert!(matches!(err, DnsError::InvalidName { .. }), "{err}");
    }

    #[tokio::test]
    async fn refuses_a_record_outside_the_zone_without_sending() {
        let tsig = Tsig {
            key_name: "k".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: b"secret".to_vec(),
        };
        // Port 9 (discard) on loopback is never contacted: the check comes first.
        let err = replace_address(
            "127.0.0.1:9".parse().expect("address"),
            "example.test",
            "www.example.org",
            60,
            "10.0.0.1".parse().expect("address"),
            &tsig,
            Duration::from_secs(1),
        )
        .await
        .expect_err("outside the zone");
        assert!(
            err.to_string()
                .contains("www.example.org. is not inside zone example.test."),
            "{err}"
        );
    }

    /// A "server" that answers every UPDATE with NOERROR but no TSIG, as a forger without
    /// the key would: success must not be believed.
    #[tokio::test]
    async fn an_unsigned_success_is_not_trusted() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("local addr");
        let forger = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65535];
            let (len, peer) = server.recv_from(&mut buffer).await.expect("recv");
            let request = Message::from_vec(&buffer[..len]).expect("parse the update");
            assert!(
                request.signature().is_some(),
                "the update must be TSIG-signed"
            );
            let mut response = Message::response(request.metadata.id, OpCode::Update);
            response.add_queries(request.queries.clone());
            let bytes = response.to_vec().expect("encode");
            server.send_to(&bytes, peer).await.expect("send");
        });
        let tsig = Tsig {
            key_name: "k".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: b"secret".to_vec(),
        };
        let err = replace_address(
            addr,
            "example.test",
            "www.example.test",
            60,
            "10.0.0.1".parse().expect("address"),
            &tsig,
            Duration::from_secs(5),
        )
        .await
        .expect_err("an unsigned NOERROR must not count as success");
        assert!(
            matches!(err, DnsError::ResponseNotAuthenticated { .. }),
            "{err}"
        );
        forger.await.expect("forger task");
    }

    #[test]
    fn rejection_messages_say_what_to_check() {
        let tsig = Tsig {
            key_name: "update-key.".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: vec![1],
        };
        let zone = Name::from_ascii("example.com.").expect("name");
        let record = Name::from_ascii("www.example.com.").expect("name");
        let text = update_rejection(ResponseCode::Refused, &zone, &record, &tsig, true).to_string();
        assert_eq!(
            text,
            "the server refused the update: REFUSED — is the TSIG key update-key. allowed to \
             update zone example.com.?"
        );
        let text =
            update_rejection(ResponseCode::NotZone, &zone, &record, &tsig, false).to_string();
        assert!(
            text.contains("NOTZONE") && text.contains("not validly TSIG-signed"),
            "{text}"
        );
        let text = tsig_rejection(TsigError::BadTime, &tsig, &zone).to_string();
        assert!(text.contains("BADTIME") && text.contains("clock"), "{text}");
    }
}
