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
}

/// What kind of resource it is, with the settings specific to that kind.
///
/// Only `exec` exists today; `vip`, `systemd`, `ocf` and `dns` are planned
/// and are refused by the parser with "not supported yet (planned)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// `kind = "exec"`: shell command lines run with `/bin/sh -c`.
    Exec(ExecResourceConfig),
}

impl ResourceKind {
    /// The value of `kind` in the file (`"exec"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
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
        warnings
    }

    /// The file this configuration came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}
