//! The validated, fully resolved configuration types handed to the rest of
//! Understudy, and the defaults used for keys the file leaves out.
//!
//! Everything here has already passed validation: names follow the naming
//! rules, addresses are resolved to [`SocketAddr`]s with their default ports,
//! durations are plain milliseconds within their documented ranges, and
//! defaults are filled in. Consumers never need to re-check them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// Default values, and the limits the validator enforces.
pub mod defaults {
    /// Default `pair.heartbeat_interval_ms`.
    pub const HEARTBEAT_INTERVAL_MS: u64 = 200;
    /// Smallest accepted `pair.heartbeat_interval_ms`.
    pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;
    /// Largest accepted `pair.heartbeat_interval_ms`.
    pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 10_000;
    /// Default `pair.failover_timeout_ms`.
    pub const FAILOVER_TIMEOUT_MS: u64 = 3_000;
    /// Default `pair.isolation_timeout_ms`.
    pub const ISOLATION_TIMEOUT_MS: u64 = 2_000;
    /// Upper bound of the default `pair.probe_timeout_ms`, which is
    /// `min(PROBE_TIMEOUT_MS, failover_timeout_ms / 4)`.
    pub const PROBE_TIMEOUT_MS: u64 = 500;
    /// Default `pair.auto_failover`.
    pub const AUTO_FAILOVER: bool = true;
    /// Default `pair.state_dir`.
    pub const STATE_DIR: &str = "/var/lib/understudy";
    /// Directory of the default `pair.control_socket`
    /// (`<dir>/<pair name>.sock`).
    pub const CONTROL_SOCKET_DIR: &str = "/run/understudy";
    /// Parent of the default `pair.tls_dir` (`<dir>/<pair name>`).
    pub const TLS_PARENT_DIR: &str = "/etc/understudy";
    /// Default `pair.channel_port`.
    pub const CHANNEL_PORT: u16 = 7400;
    /// Default `pair.management_port`.
    pub const MANAGEMENT_PORT: u16 = 7401;
    /// Default `pair.replication_port`.
    pub const REPLICATION_PORT: u16 = 7402;
    /// Default `replicate.queue_max_bytes` (1 GiB).
    pub const QUEUE_MAX_BYTES: u64 = 1 << 30;
    /// Smallest accepted `replicate.queue_max_bytes` (must hold a few 1 MiB writes).
    pub const QUEUE_MAX_BYTES_MIN: u64 = 4 << 20;
    /// Default `replicate.memory_max_bytes`: the part of the queue kept in memory.
    pub const QUEUE_MEMORY_MAX_BYTES: u64 = 64 << 20;
    /// Most `[[replicate]]` entries.
    pub const REPLICATE_MAX: usize = 16;
    /// Default `public_check.interval_ms`.
    pub const PUBLIC_CHECK_INTERVAL_MS: u64 = 1_000;
    /// Smallest accepted `public_check.interval_ms`.
    pub const PUBLIC_CHECK_INTERVAL_MS_MIN: u64 = 50;
    /// Default `public_check.timeout_ms`.
    pub const PUBLIC_CHECK_TIMEOUT_MS: u64 = 500;
    /// Largest number of `public_check.targets`.
    pub const PUBLIC_CHECK_TARGETS_MAX: usize = 8;
    /// Default `resource.start_timeout_ms`.
    pub const START_TIMEOUT_MS: u64 = 20_000;
    /// Default `resource.stop_timeout_ms`.
    pub const STOP_TIMEOUT_MS: u64 = 20_000;
    /// Default `resource.monitor_timeout_ms`.
    pub const MONITOR_TIMEOUT_MS: u64 = 10_000;
    /// Default `resource.monitor_interval_ms`.
    pub const MONITOR_INTERVAL_MS: u64 = 10_000;
    /// Smallest accepted `resource.monitor_interval_ms`.
    pub const MONITOR_INTERVAL_MS_MIN: u64 = 100;
    /// Largest number of `[[resource]]` entries.
    pub const RESOURCES_MAX: usize = 64;
    /// Largest number of channel links per node.
    pub const CHANNEL_LINKS_MAX: usize = 4;
    /// Largest accepted value of any `*_ms` key: 24 hours. Keeps every
    /// duration far from overflowing `Instant` arithmetic.
    pub const DURATION_MS_MAX: u64 = 86_400_000;
    /// Longest accepted name (pair, node or resource).
    pub const NAME_LEN_MAX: usize = 32;
    /// Longest accepted `pair.control_socket` path in bytes (Linux
    /// `sun_path` holds 108 bytes including the terminating NUL).
    pub const CONTROL_SOCKET_LEN_MAX: usize = 107;
    /// Default `pair.auto_move_limit`.
    pub const AUTO_MOVE_LIMIT: u32 = 2;
    /// Largest accepted `pair.auto_move_limit`.
    pub const AUTO_MOVE_LIMIT_MAX: u32 = 100;
    /// Default `pair.drain_timeout_ms`: 30 s.
    pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
    /// Shortest accepted `pair.drain_timeout_ms`.
    pub const DRAIN_TIMEOUT_MS_MIN: u64 = 1_000;
    /// Default `resource.failure_window_ms`: 10 minutes.
    pub const FAILURE_WINDOW_MS: u64 = 600_000;
    /// Largest number of `resource.on_failure` entries.
    pub const ON_FAILURE_MAX: usize = 10;
    /// Default `vip.gratuitous_arp_count`.
    pub const GRATUITOUS_ARP_COUNT: u32 = 5;
    /// Largest accepted `vip.gratuitous_arp_count`.
    pub const GRATUITOUS_ARP_COUNT_MAX: u32 = 100;
    /// Default `vip.gratuitous_arp_interval_ms`.
    pub const GRATUITOUS_ARP_INTERVAL_MS: u64 = 200;
    /// Smallest accepted `vip.gratuitous_arp_interval_ms`.
    pub const GRATUITOUS_ARP_INTERVAL_MS_MIN: u64 = 10;
    /// Largest accepted `vip.gratuitous_arp_interval_ms`.
    pub const GRATUITOUS_ARP_INTERVAL_MS_MAX: u64 = 10_000;
    /// Default `vip.conflict_probe_ms`.
    pub const CONFLICT_PROBE_MS: u64 = 500;
    /// Longest accepted `vip.interface` name in bytes (Linux `IFNAMSIZ`
    /// is 16 including the terminating NUL).
    pub const INTERFACE_LEN_MAX: usize = 15;
    /// Default `ocf.ocf_root`.
    pub const OCF_ROOT: &str = "/usr/lib/ocf";
    /// Unit suffixes accepted by `systemd.unit`.
    pub const SYSTEMD_UNIT_SUFFIXES: &[&str] = &[
        ".service", ".socket", ".target", ".mount", ".timer", ".path",
    ];
    /// Longest accepted `systemd.unit` name (systemd's own limit).
    pub const SYSTEMD_UNIT_LEN_MAX: usize = 255;
    /// Port used for a `dns.server` written without one.
    pub const DNS_PORT: u16 = 53;
    /// Default `dns.ttl`.
    pub const DNS_TTL: u32 = 30;
    /// Largest accepted `dns.ttl`.
    pub const DNS_TTL_MAX: u32 = 86_400;
    /// Default `dns.tsig_algorithm`.
    pub const TSIG_ALGORITHM: &str = "hmac-sha256";
    /// Accepted values of `dns.tsig_algorithm`.
    pub const TSIG_ALGORITHMS: &[&str] = &["hmac-sha256", "hmac-sha512"];
    /// Default `hooks.timeout_ms`.
    pub const HOOK_TIMEOUT_MS: u64 = 10_000;
}

/// A validated configuration: the `[pair]` settings, the two nodes, the
/// public reachability check and the resources, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Pair-wide settings from `[pair]`.
    pub pair: PairConfig,
    /// The two `[[node]]` entries, in file order.
    pub nodes: [NodeConfig; 2],
    /// `[public_check]`; all defaults (and no targets) when the table is absent.
    pub public_check: PublicCheckConfig,
    /// `[[resource]]` entries in file order: started in this order, stopped
    /// in reverse.
    pub resources: Vec<ResourceConfig>,
    /// `[hooks]`; no hooks (and the default timeout) when the table is
    /// absent.
    pub hooks: HooksConfig,
    /// `[[replicate]]` entries: the directories replicated in real time.
    pub replicate: Vec<ReplicateConfig>,
    /// The file this configuration was read from (as given to
    /// [`load`](crate::load) or [`parse`](crate::parse)).
    pub source: PathBuf,
}

/// Pair-wide settings (`[pair]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairConfig {
    /// `name`: the pair's name. Required. 1-32 characters from `a-z`, `0-9`
    /// and `-`, starting with a letter.
    pub name: String,
    /// `heartbeat_interval_ms`: how often each node sends a heartbeat on
    /// every channel link. Default 200, range 10..=10000.
    pub heartbeat_interval_ms: u64,
    /// `failover_timeout_ms`: how long the peer may stay silent before it is
    /// declared dead. Default 3000; at least `3 * heartbeat_interval_ms`.
    pub failover_timeout_ms: u64,
    /// `isolation_timeout_ms`: how long the active may be cut off before it
    /// considers itself isolated. Default 2000; less than
    /// `failover_timeout_ms` and at least `2 * heartbeat_interval_ms`.
    pub isolation_timeout_ms: u64,
    /// `probe_timeout_ms`: timeout for probing the peer's management
    /// address. Default `min(500, failover_timeout_ms / 4)`; less than
    /// `failover_timeout_ms`.
    pub probe_timeout_ms: u64,
    /// `auto_failover`: take over automatically when the peer is declared
    /// dead. Default `true`.
    pub auto_failover: bool,
    /// `state_dir`: absolute directory for persistent node state.
    /// Default `/var/lib/understudy`.
    pub state_dir: PathBuf,
    /// `control_socket`: absolute path of the local control socket.
    /// Default `/run/understudy/<pair name>.sock`.
    pub control_socket: PathBuf,
    /// `tls_dir`: absolute directory holding `ca.pem`, `<node>.pem` and
    /// `<node>.key`. Default `/etc/understudy/<pair name>`.
    pub tls_dir: PathBuf,
    /// `channel_port`: port used for channel addresses written without one.
    /// Default 7400.
    pub channel_port: u16,
    /// `management_port`: port used for management addresses written without
    /// one. Default 7401.
    pub management_port: u16,
    /// `replication_port`: where each node accepts the peer's replication streams (on the
    /// address of its first channel link).
    pub replication_port: u16,
    /// `auto_move_limit`: how many automatic switchovers caused by resource
    /// failures (a [`FailureAction::Switchover`] escalation) are allowed
    /// within the failure window (the longest
    /// [`ResourceConfig::failure_window_ms`] of the pair's resources) before
    /// automatic moves stop and the pair waits for an operator. 0 disables such moves altogether. Default 2,
    /// range 0..=100. It does not limit failover on a dead peer
    /// ([`auto_failover`](Self::auto_failover)).
    pub auto_move_limit: u32,
    /// `drain_timeout_ms`: how long a node leaving the active role waits for the peer to
    /// confirm every replicated op. A switchover not confirmed in that time is called off
    /// (the applications start again where they were); a shutdown goes ahead. Default
    /// 30000, at least 1000.
    pub drain_timeout_ms: u64,
}

impl PairConfig {
    /// Path of the pair's CA certificate: `<tls_dir>/ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir.join("ca.pem")
    }

    /// Path of a node's certificate: `<tls_dir>/<node>.pem`.
    pub fn cert_file(&self, node: &str) -> PathBuf {
        self.tls_dir.join(format!("{node}.pem"))
    }

    /// Path of a node's private key: `<tls_dir>/<node>.key`.
    pub fn key_file(&self, node: &str) -> PathBuf {
        self.tls_dir.join(format!("{node}.key"))
    }
}

/// One node of the pair (`[[node]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `name`: the node's name, unique in the pair; same rules as the pair
    /// name. Also names its TLS files.
    pub name: String,
    /// `channel`: 1..=4 channel link addresses, ports resolved. Link `i` of
    /// one node talks to link `i` of the other, so both nodes have the same
    /// number of links and each link uses one address family.
    pub channel: Vec<SocketAddr>,
    /// `management`: the node's management address, port resolved. The peer
    /// probes it to tell a dead node from a broken channel.
    pub management: SocketAddr,
}

/// The public reachability check (`[public_check]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicCheckConfig {
    /// `targets`: 0..=8 IP addresses the active checks to know it can still
    /// reach the public network. Empty disables the check, which
    /// [`Config::warnings`] reports.
    pub targets: Vec<IpAddr>,
    /// `interval_ms`: time between checks. Default 1000, at least 50.
    pub interval_ms: u64,
    /// `timeout_ms`: how long one check may take. Default 500, at most
    /// `interval_ms`.
    pub timeout_ms: u64,
}

impl PublicCheckConfig {
    /// Whether the check is enabled (there is at least one target).
    pub fn enabled(&self) -> bool {
        !self.targets.is_empty()
    }
}

impl Default for PublicCheckConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            interval_ms: defaults::PUBLIC_CHECK_INTERVAL_MS,
            timeout_ms: defaults::PUBLIC_CHECK_TIMEOUT_MS,
        }
    }
}

/// One managed resource (`[[resource]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    /// `name`: unique among resources; same rules as the pair name.
    pub name: String,
    /// `kind` and the kind-specific settings.
    pub kind: ResourceKind,
    /// `start_timeout_ms`: how long starting may take. Default 20000.
    pub start_timeout_ms: u64,
    /// `stop_timeout_ms`: how long stopping may take. Default 20000.
    pub stop_timeout_ms: u64,
    /// `monitor_timeout_ms`: how long one monitor run may take.
    /// Default 10000.
    pub monitor_timeout_ms: u64,
    /// `monitor_interval_ms`: time between monitor runs. Default 10000, at
    /// least 100.
    pub monitor_interval_ms: u64,
    /// `on_failure`: the action for the 1st, 2nd, 3rd... monitor failure
    /// within [`failure_window_ms`](Self::failure_window_ms); the last entry
    /// repeats for every further failure. 1..=10 entries. Default
    /// `["restart", "restart", "switchover"]`. See
    /// [`failure_action`](Self::failure_action).
    pub on_failure: Vec<FailureAction>,
    /// `failure_window_ms`: monitor failures older than this are forgotten
    /// when counting for [`on_failure`](Self::on_failure). Default 600000
    /// (10 minutes); at least `monitor_interval_ms`.
    pub failure_window_ms: u64,
}

impl ResourceConfig {
    /// The action for the `n`th monitor failure within the failure window,
    /// counted from 1: `on_failure[n - 1]`, or the last entry when `n` is
    /// past the end (`n = 0` is treated as 1).
    pub fn failure_action(&self, n: usize) -> &FailureAction {
        let index = n
            .saturating_sub(1)
            .min(self.on_failure.len().saturating_sub(1));
        // `on_failure` is never empty after validation; fall back to the
        // default first action for hand-built values.
        self.on_failure
            .get(index)
            .unwrap_or(&FailureAction::Restart)
    }

    /// The default `on_failure`: restart, restart, switchover.
    pub fn default_on_failure() -> Vec<FailureAction> {
        vec![
            FailureAction::Restart,
            FailureAction::Restart,
            FailureAction::Switchover,
        ]
    }
}

/// What to do when a resource's monitor fails (one `on_failure` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// `"restart"`: stop and start the resource on the same node.
    Restart,
    /// `"switchover"`: move all resources to the peer (subject to
    /// [`PairConfig::auto_move_limit`]).
    Switchover,
    /// `"alert"`: leave the resource as it is and only report the failure.
    Alert,
    /// `{ run = "..." }`: run this command line with `/bin/sh -c`.
    Run(String),
}

impl FailureAction {
    /// How the action is written in the file (`"restart"`, ..., `"run"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Switchover => "switchover",
            Self::Alert => "alert",
            Self::Run(_) => "run",
        }
    }
}

/// What kind of resource it is, with the settings specific to that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// `kind = "exec"`: shell command lines run with `/bin/sh -c`.
    Exec(ExecResourceConfig),
    /// `kind = "vip"`: a virtual IP address moved between the nodes.
    Vip(VipResourceConfig),
    /// `kind = "ocf"`: an OCF resource agent (as used by Pacemaker).
    Ocf(OcfResourceConfig),
    /// `kind = "systemd"`: a systemd unit started and stopped via the
    /// system or user manager.
    Systemd(SystemdResourceConfig),
    /// `kind = "dns"`: a DNS record pointed at the active node with
    /// TSIG-signed dynamic updates (RFC 2136).
    Dns(DnsResourceConfig),
}

impl ResourceKind {
    /// The value of `kind` in the file (`"exec"`, `"vip"`, `"ocf"`,
    /// `"systemd"`, `"dns"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Vip(_) => "vip",
            Self::Ocf(_) => "ocf",
            Self::Systemd(_) => "systemd",
            Self::Dns(_) => "dns",
        }
    }
}

/// Settings of an `exec` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResourceConfig {
    /// `start`: command line that starts the resource (`/bin/sh -c`).
    /// Required.
    pub start: String,
    /// `stop`: command line that stops the resource (`/bin/sh -c`).
    /// Required.
    pub stop: String,
    /// `monitor`: optional command line that checks the resource (`/bin/sh
    /// -c`); exit status 0 means healthy.
    pub monitor: Option<String>,
}

/// Settings of a `vip` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipResourceConfig {
    /// The address part of `address = "10.60.0.50/24"` (IPv4 or IPv6).
    /// Required. Never unspecified, multicast or broadcast, never one of the
    /// nodes' channel or management addresses, and unique among `vip`
    /// resources.
    pub address: std::net::IpAddr,
    /// The prefix length part of `address`: 1..=32 for IPv4, 1..=128 for
    /// IPv6.
    pub prefix_len: u8,
    /// `interface`: the network interface to add the address to, e.g.
    /// `eth0`. Required; 1..=15 bytes, no `/`, `:`, whitespace or control
    /// characters, not `.` or `..`.
    pub interface: String,
    /// `gratuitous_arp_count`: how many gratuitous ARPs (IPv4) or unsolicited
    /// neighbour advertisements (IPv6) to send after adding the address.
    /// Default 5, range 0..=100 (0 sends none).
    pub gratuitous_arp_count: u32,
    /// `gratuitous_arp_interval_ms`: time between two of them. Default 200,
    /// range 10..=10000.
    pub gratuitous_arp_interval_ms: u64,
    /// `conflict_probe_ms`: how long to listen for another host answering
    /// for the address before taking it. Default 500; 0 skips the probe;
    /// less than `start_timeout_ms`.
    pub conflict_probe_ms: u64,
}

/// Settings of an `ocf` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcfResourceConfig {
    /// The provider part of `agent = "ocf:heartbeat:Dummy"` (`heartbeat`).
    /// Required; `[A-Za-z0-9_.-]+`, not `.` or `..`.
    pub provider: String,
    /// The type part of `agent` (`Dummy`): the agent is
    /// `<ocf_root>/resource.d/<provider>/<agent_type>`. Same rules as the
    /// provider.
    pub agent_type: String,
    /// `params`: instance parameters, passed to the agent as
    /// `OCF_RESKEY_<name>=<value>`, in file order. Names are
    /// `[A-Za-z0-9_]+` and unique; values are strings without NUL.
    /// Default: none.
    pub params: Vec<(String, String)>,
    /// `ocf_root`: absolute OCF root directory (`OCF_ROOT`).
    /// Default `/usr/lib/ocf`.
    pub ocf_root: std::path::PathBuf,
}

/// Settings of a `systemd` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdResourceConfig {
    /// `unit`: the unit name, e.g. `nginx.service`. Required; ends in
    /// `.service`, `.socket`, `.target`, `.mount`, `.timer` or `.path`;
    /// made of `A-Za-z0-9:_.@\-` (so no `/`); at most 255 characters; not
    /// an uninstantiated template (`name@.service`).
    pub unit: String,
    /// `user`: `false` (default) for the system manager, `true` for the
    /// user manager of the user running the daemon (`systemctl --user`).
    pub user: bool,
}

/// Settings of a `dns` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResourceConfig {
    /// `server`: the DNS server that accepts the updates, written "IP" or
    /// "IP:PORT" (port default 53). Required.
    pub server: std::net::SocketAddr,
    /// `zone`: the zone to update, e.g. `example.com.`. Required; always
    /// ends with a dot here (added when the file omits it), case as
    /// written; not the root zone.
    pub zone: String,
    /// `record`: the record's owner name, e.g. `www.example.com.`; inside
    /// `zone` (or the zone apex itself, compared case-insensitively).
    /// Required; always ends with a dot here.
    pub record: String,
    /// `ttl`: the record's TTL in seconds. Default 30, range 1..=86400.
    pub ttl: u32,
    /// `addresses`: the address the record points at while each node is
    /// active, indexed like [`Config::nodes`]: an A record for IPv4, AAAA
    /// for IPv6. Required, with exactly the two node names as keys; both
    /// addresses use the same family.
    pub addresses: [std::net::IpAddr; 2],
    /// `tsig_key_name`: name of the TSIG key, as written (a domain name,
    /// trailing dot optional). Required.
    pub tsig_key_name: String,
    /// `tsig_algorithm`: `hmac-sha256` (default) or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// `tsig_secret_file`: absolute path of a file holding the base64 TSIG
    /// secret. Required. Not read (or checked to exist) when parsing.
    pub tsig_secret_file: std::path::PathBuf,
}

/// Pair-wide hook commands (`[hooks]`), each a command line run with
/// `/bin/sh -c`; all optional. Hooks inform: a failing or slow hook is
/// logged and never stops a role change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksConfig {
    /// `pre_start`: run before the resources are started on this node.
    pub pre_start: Option<String>,
    /// `post_start`: run after the resources have been started.
    pub post_start: Option<String>,
    /// `pre_stop`: run before the resources are stopped on this node.
    pub pre_stop: Option<String>,
    /// `post_stop`: run after the resources have been stopped.
    pub post_stop: Option<String>,
    /// `role_change`: run whenever this node's role changes.
    pub role_change: Option<String>,
    /// `timeout_ms`: how long one hook may run. Default 10000.
    pub timeout_ms: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            pre_start: None,
            post_start: None,
            pre_stop: None,
            post_stop: None,
            role_change: None,
            timeout_ms: defaults::HOOK_TIMEOUT_MS,
        }
    }
}

impl PairConfig {
    /// How long an active waits, after it last heard a `sync`-mode passive renew its lease,
    /// before it acknowledges an fsync without that passive; also how long it waits for
    /// the passive to confirm one. The passive counts on it: a failover is safe only if
    /// the active was seen gone before the lease ran out, which its probes show within
    /// about four heartbeats of the last renewal, so the lease is at least six.
    pub fn sync_lease_ms(&self) -> u64 {
        self.failover_timeout_ms
            .max(1000)
            .max(6 * self.heartbeat_interval_ms + 200)
    }
}

impl Config {
    /// Find a node by name, returning its index in [`Config::nodes`] and the
    /// node. The error lists the valid names.
    pub fn node(&self, name: &str) -> Result<(usize, &NodeConfig), ConfigError> {
        self.nodes
            .iter()
            .enumerate()
            .find(|(_, node)| node.name == name)
            .ok_or_else(|| ConfigError::UnknownNode {
                file: self.source.clone(),
                name: name.to_owned(),
                valid: self.nodes.iter().map(|n| n.name.clone()).collect(),
            })
    }

    /// The other node of the pair.
    ///
    /// # Panics
    ///
    /// If `index` is not 0 or 1 (indexes come from [`Config::node`]).
    pub fn peer_of(&self, index: usize) -> &NodeConfig {
        match index {
            0 => &self.nodes[1],
            1 => &self.nodes[0],
            _ => panic!("node index {index} out of range: a pair has nodes 0 and 1"),
        }
    }

    /// Legal but risky settings an operator should hear about, one sentence
    /// each. Empty when there is nothing to say.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.public_check.targets.is_empty() {
            warnings.push(
                "public_check.targets is empty: the active cannot detect isolation from the \
                 public network, and failover relies on the management probe alone"
                    .to_owned(),
            );
        }
        if self.nodes.iter().all(|n| n.channel.len() == 1) {
            warnings.push(
                "each node has a single channel link: one network fault looks like a dead \
                 peer; consider a second, independent link"
                    .to_owned(),
            );
        }
        if self.pair.auto_move_limit == 0 {
            for resource in &self.resources {
                if resource.on_failure.contains(&FailureAction::Switchover) {
                    warnings.push(format!(
                        "resource {:?} escalates to \"switchover\" on failure, but \
                         pair.auto_move_limit is 0, so it will never move the pair",
                        resource.name
                    ));
                }
            }
        }
        warnings
    }

    /// The file this configuration came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Durability of a replicated set (`replicate.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// fsync returns only once the passive has the data durably.
    Sync,
    /// fsync returns once the data is durable locally; the passive trails by a bounded lag.
    Async,
}

/// One replicated directory (`[[replicate]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateConfig {
    /// `name`: identifies the set on both nodes.
    pub name: String,
    /// `path`: the path applications use, the same on both nodes. Mounted (captured) on the
    /// active only.
    pub path: PathBuf,
    /// `mode`: `sync` (default) or `async`.
    pub mode: ReplicationMode,
    /// `queue_max_bytes`: ops waiting for the passive, memory plus spill, before the set
    /// falls back to recording changed files.
    pub queue_max_bytes: u64,
    /// `memory_max_bytes`: the in-memory part of the queue.
    pub memory_max_bytes: u64,
    /// `data_dir`: this node's copy. `None`: `<state_dir>/sets/<name>/data`, resolved when
    /// the daemon starts (the state dir can be overridden on the command line).
    pub data_dir: Option<PathBuf>,
    /// `sync_rate_max_bytes_per_s`: cap on what a resync sends (live replication always
    /// goes first). 0: no cap.
    pub sync_rate_max_bytes_per_s: u64,
}
