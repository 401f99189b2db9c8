//! Turns configuration text into a validated [`Config`], refusing anything
//! that breaks the schema with the file, line, column and key concerned.
//!
//! The text is parsed with `toml_edit` (the parser under `toml` 0.8), which
//! keeps the byte span of every key, value and table header. The document is
//! then walked by hand, table by table: unknown keys, missing keys, wrong
//! types, out-of-range values and cross-key rules are all reported at the
//! exact position of the key or value that must change.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::error::ConfigError;
use crate::model::{
    defaults, Config, DnsResourceConfig, ExecResourceConfig, FailureAction, HooksConfig,
    NodeConfig, OcfResourceConfig, PairConfig, PublicCheckConfig, ReplicateConfig, ReplicationMode,
    ResourceConfig, ResourceKind, SystemdResourceConfig, VipResourceConfig,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// A byte range in the text, when the parser knows one.
type Span = Option<Range<usize>>;

const ROOT_KEYS: &[&str] = &[
    "pair",
    "node",
    "public_check",
    "resource",
    "hooks",
    "replicate",
];
const REPLICATE_KEYS: &[&str] = &[
    "name",
    "path",
    "mode",
    "queue_max_bytes",
    "memory_max_bytes",
    "data_dir",
    "sync_rate_max_bytes_per_s",
];
const PAIR_KEYS: &[&str] = &[
    "name",
    "heartbeat_interval_ms",
    "failover_timeout_ms",
    "isolation_timeout_ms",
    "probe_timeout_ms",
    "auto_failover",
    "state_dir",
    "control_socket",
    "tls_dir",
    "channel_port",
    "management_port",
    "replication_port",
    "auto_move_limit",
    "drain_timeout_ms",
];
const NODE_KEYS: &[&str] = &["name", "channel", "management"];
const PUBLIC_CHECK_KEYS: &[&str] = &["targets", "interval_ms", "timeout_ms"];
/// Keys every `[[resource]]` accepts, whatever its kind.
const COMMON_RESOURCE_KEYS: &[&str] = &[
    "name",
    "kind",
    "start_timeout_ms",
    "stop_timeout_ms",
    "monitor_timeout_ms",
    "monitor_interval_ms",
    "on_failure",
    "failure_window_ms",
];
const EXEC_KEYS: &[&str] = &["start", "stop", "monitor"];
const VIP_KEYS: &[&str] = &[
    "address",
    "interface",
    "gratuitous_arp_count",
    "gratuitous_arp_interval_ms",
    "conflict_probe_ms",
];
const OCF_KEYS: &[&str] = &["agent", "params", "ocf_root"];
const SYSTEMD_KEYS: &[&str] = &["unit", "user"];
const DNS_KEYS: &[&str] = &[
    "server",
    "zone",
    "record",
    "ttl",
    "addresses",
    "tsig_key_name",
    "tsig_algorithm",
    "tsig_secret_file",
];
const HOOKS_KEYS: &[&str] = &[
    "pre_start",
    "post_start",
    "pre_stop",
    "post_stop",
    "role_change",
    "timeout_ms",
];

/// Parse and validate `text`, attributing errors to `source`.
pub(crate) fn parse(text: &str, source: &Path) -> Result<Config> {
    let cx = Cx { text, source };
    let doc = ImDocument::parse(text).map_err(|e| cx.syntax(e.span(), e.message()))?;
    let root = Tbl {
        cx: &cx,
        inner: doc.as_table(),
        path: String::new(),
        span: Some(0..0),
    };
    root.deny_unknown(ROOT_KEYS)?;
    let pair = read_pair(&root)?;
    let nodes = read_nodes(&root, &pair)?;
    let public_check = read_public_check(&root)?;
    let resources = read_resources(&root, &nodes)?;
    let hooks = read_hooks(&root)?;
    let replicate = read_replicate(&root, &pair)?;
    Ok(Config {
        replicate,
        pair,
        nodes,
        public_check,
        resources,
        hooks,
        source: source.to_path_buf(),
    })
}

// ---------------------------------------------------------------------------
// The four top-level sections.
// ---------------------------------------------------------------------------

fn read_pair(root: &Tbl<'_>) -> Result<PairConfig> {
    let t = root
        .table("pair")?
        .ok_or_else(|| root.error_at_table("pair", "required table [pair] is missing"))?;
    t.deny_unknown(PAIR_KEYS)?;

    let name = t.require("name")?.name()?;

    let heartbeat = t.ms(
        "heartbeat_interval_ms",
        defaults::HEARTBEAT_INTERVAL_MS_MIN,
        defaults::HEARTBEAT_INTERVAL_MS_MAX,
        defaults::HEARTBEAT_INTERVAL_MS,
    )?;
    let failover = t.ms(
        "failover_timeout_ms",
        1,
        defaults::DURATION_MS_MAX,
        defaults::FAILOVER_TIMEOUT_MS,
    )?;
    if failover.value < 3 * heartbeat.value {
        return Err(t.blame(
            &failover,
            &heartbeat,
            format!(
                "failover_timeout_ms ({}) must be at least 3 x heartbeat_interval_ms ({}) = {}",
                failover.shown(),
                heartbeat.shown(),
                3 * heartbeat.value
            ),
        ));
    }

    let isolation = t.ms(
        "isolation_timeout_ms",
        1,
        defaults::DURATION_MS_MAX,
        defaults::ISOLATION_TIMEOUT_MS,
    )?;
    if isolation.value >= failover.value {
        return Err(t.blame(
            &isolation,
            &failover,
            format!(
                "isolation_timeout_ms ({}) must be less than failover_timeout_ms ({}), so an \
                 isolated active gives up before its peer takes over",
                isolation.shown(),
                failover.shown()
            ),
        ));
    }
    if isolation.value < 2 * heartbeat.value {
        return Err(t.blame(
            &isolation,
            &heartbeat,
            format!(
                "isolation_timeout_ms ({}) must be at least 2 x heartbeat_interval_ms ({}) = {}",
                isolation.shown(),
                heartbeat.shown(),
                2 * heartbeat.value
            ),
        ));
    }

    let probe = t.ms(
        "probe_timeout_ms",
        1,
        defaults::DURATION_MS_MAX,
        defaults::PROBE_TIMEOUT_MS.min(failover.value / 4),
    )?;
    if probe.value >= failover.value {
        return Err(t.blame(
            &probe,
            &failover,
            format!(
                "probe_timeout_ms ({}) must be less than failover_timeout_ms ({})",
                probe.shown(),
                failover.shown()
            ),
        ));
    }

    let auto_failover = match t.get("auto_failover") {
        Some(entry) => entry.bool()?,
        None => defaults::AUTO_FAILOVER,
    };

    let state_dir = t.absolute_path("state_dir", || PathBuf::from(defaults::STATE_DIR))?;
    let control_socket = t.absolute_path("control_socket", || {
        Path::new(defaults::CONTROL_SOCKET_DIR).join(format!("{}.sock", name.value))
    })?;
    let socket_len = control_socket.value.as_os_str().len();
    if socket_len > defaults::CONTROL_SOCKET_LEN_MAX {
        return Err(t.cx.invalid(
            control_socket.span.clone(),
            control_socket.path,
            format!(
                "path is {socket_len} bytes long; a Unix socket path holds at most {} bytes",
                defaults::CONTROL_SOCKET_LEN_MAX
            ),
        ));
    }
    let tls_dir = t.absolute_path("tls_dir", || {
        Path::new(defaults::TLS_PARENT_DIR).join(&name.value)
    })?;

    let channel_port = t.port("channel_port", defaults::CHANNEL_PORT)?;
    let management_port = t.port("management_port", defaults::MANAGEMENT_PORT)?;
    let replication_port = t.port("replication_port", defaults::REPLICATION_PORT)?;
    let auto_move_limit = t.u32_or(
        "auto_move_limit",
        0,
        defaults::AUTO_MOVE_LIMIT_MAX,
        defaults::AUTO_MOVE_LIMIT,
    )?;
    let drain_timeout = t.ms(
        "drain_timeout_ms",
        defaults::DRAIN_TIMEOUT_MS_MIN,
        defaults::DURATION_MS_MAX,
        defaults::DRAIN_TIMEOUT_MS,
    )?;

    Ok(PairConfig {
        name: name.value,
        heartbeat_interval_ms: heartbeat.value,
        failover_timeout_ms: failover.value,
        isolation_timeout_ms: isolation.value,
        probe_timeout_ms: probe.value,
        auto_failover,
        state_dir: state_dir.value,
        control_socket: control_socket.value,
        tls_dir: tls_dir.value,
        channel_port,
        management_port,
        replication_port,
        auto_move_limit,
        drain_timeout_ms: drain_timeout.value,
    })
}

fn read_nodes(root: &Tbl<'_>, pair: &PairConfig) -> Result<[NodeConfig; 2]> {
    let tables = root.tables("node")?.unwrap_or_default();
    match tables.as_slice() {
        [_, _] => {}
        [] => {
            return Err(root.error_at_table(
                "node",
                "exactly 2 [[node]] entries are required, found none",
            ))
        }
        [only] => {
            return Err(root.cx.invalid(
                only.span.clone(),
                "node",
                "exactly 2 [[node]] entries are required, found 1",
            ))
        }
        [_, _, third, ..] => {
            return Err(root.cx.invalid(
                third.span.clone(),
                third.path.clone(),
                format!(
                    "exactly 2 [[node]] entries are required, found {}",
                    tables.len()
                ),
            ))
        }
    }

    // Every channel and management address in the file, with its key, to
    // refuse duplicates.
    let mut addresses: Vec<(SocketAddr, String)> = Vec::new();
    let mut nodes: Vec<NodeConfig> = Vec::with_capacity(2);
    // Spans of each node's `channel` array and its elements, for the
    // cross-node link checks below.
    let mut channel_spans: Vec<(Span, Vec<Span>)> = Vec::with_capacity(2);

    for t in &tables {
        t.deny_unknown(NODE_KEYS)?;

        let name = t.require("name")?.name()?;
        if let Some(other) = nodes.iter().position(|n| n.name == name.value) {
            return Err(t.cx.invalid(
                name.span,
                name.path,
                format!(
                    "node name {:?} is already used by node[{other}]",
                    name.value
                ),
            ));
        }

        let channel_entry = t.require("channel")?;
        let links = channel_entry.array()?;
        if links.is_empty() || links.len() > defaults::CHANNEL_LINKS_MAX {
            return Err(channel_entry.error(format!(
                "expected 1 to {} channel links, found {}",
                defaults::CHANNEL_LINKS_MAX,
                links.len()
            )));
        }
        let mut channel = Vec::with_capacity(links.len());
        for link in &links {
            let addr = link.socket_addr(pair.channel_port)?;
            link.claim_address(addr, &mut addresses)?;
            channel.push(addr);
        }

        let management_entry = t.require("management")?;
        let management = management_entry.socket_addr(pair.management_port)?;
        management_entry.claim_address(management, &mut addresses)?;

        channel_spans.push((
            channel_entry.span.clone(),
            links.iter().map(|l| l.span.clone()).collect(),
        ));
        nodes.push(NodeConfig {
            name: name.value,
            channel,
            management,
        });
    }

    // Link i of one node talks to link i of the other.
    if let (Some(first), Some(second), Some((second_span, second_links))) =
        (nodes.first(), nodes.get(1), channel_spans.get(1))
    {
        if first.channel.len() != second.channel.len() {
            return Err(root.cx.invalid(
                second_span.clone(),
                "node[1].channel",
                format!(
                    "node {:?} has {} channel link(s) but node {:?} has {}; link i of one node \
                     talks to link i of the other, so both need the same number",
                    second.name,
                    second.channel.len(),
                    first.name,
                    first.channel.len()
                ),
            ));
        }
        for (i, (a, b)) in first.channel.iter().zip(&second.channel).enumerate() {
            if a.is_ipv4() != b.is_ipv4() {
                return Err(root.cx.invalid(
                    second_links.get(i).cloned().flatten(),
                    format!("node[1].channel[{i}]"),
                    format!(
                        "link {i} joins {a} and {b}: both ends of a link must use the same \
                         address family (IPv4 or IPv6)"
                    ),
                ));
            }
        }
    }

    nodes.try_into().map_err(|_: Vec<NodeConfig>| {
        root.error_at_table("node", "exactly 2 [[node]] entries are required")
    })
}

fn read_public_check(root: &Tbl<'_>) -> Result<PublicCheckConfig> {
    let Some(t) = root.table("public_check")? else {
        return Ok(PublicCheckConfig::default());
    };
    t.deny_unknown(PUBLIC_CHECK_KEYS)?;

    let mut targets: Vec<IpAddr> = Vec::new();
    if let Some(entry) = t.get("targets") {
        let items = entry.array()?;
        if items.len() > defaults::PUBLIC_CHECK_TARGETS_MAX {
            return Err(entry.error(format!(
                "at most {} targets are allowed, found {}",
                defaults::PUBLIC_CHECK_TARGETS_MAX,
                items.len()
            )));
        }
        for item in &items {
            let ip = item.target_ip()?;
            if let Some(first) = targets.iter().position(|t| *t == ip) {
                return Err(item.error(format!(
                    "{ip} is listed twice (also public_check.targets[{first}])"
                )));
            }
            targets.push(ip);
        }
    }

    let interval = t.ms(
        "interval_ms",
        defaults::PUBLIC_CHECK_INTERVAL_MS_MIN,
        defaults::DURATION_MS_MAX,
        defaults::PUBLIC_CHECK_INTERVAL_MS,
    )?;
    let timeout = t.ms(
        "timeout_ms",
        1,
        defaults::DURATION_MS_MAX,
        defaults::PUBLIC_CHECK_TIMEOUT_MS,
    )?;
    if timeout.value > interval.value {
        return Err(t.blame(
            &timeout,
            &interval,
            format!(
                "timeout_ms ({}) must not exceed interval_ms ({})",
                timeout.shown(),
                interval.shown()
            ),
        ));
    }

    Ok(PublicCheckConfig {
        targets,
        interval_ms: interval.value,
        timeout_ms: timeout.value,
    })
}

/// The resource kinds, with the keys each accepts besides
/// [`COMMON_RESOURCE_KEYS`].
#[derive(Clone, Copy)]
enum Kind {
    Exec,
    Vip,
    Ocf,
    Systemd,
    Dns,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Exec, Kind::Vip, Kind::Ocf, Kind::Systemd, Kind::Dns];

    fn name(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Vip => "vip",
            Kind::Ocf => "ocf",
            Kind::Systemd => "systemd",
            Kind::Dns => "dns",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Exec => EXEC_KEYS,
            Kind::Vip => VIP_KEYS,
            Kind::Ocf => OCF_KEYS,
            Kind::Systemd => SYSTEMD_KEYS,
            Kind::Dns => DNS_KEYS,
        }
    }
}

fn read_replicate(root: &Tbl<'_>, pair: &PairConfig) -> Result<Vec<ReplicateConfig>> {
    let tables = root.tables("replicate")?.unwrap_or_default();
    if let Some(extra) = tables.get(defaults::REPLICATE_MAX) {
        return Err(root.cx.invalid(
            extra.span.clone(),
            extra.path.clone(),
            format!(
                "at most {} [[replicate]] entries are allowed",
                defaults::REPLICATE_MAX
            ),
        ));
    }
    let mut sets: Vec<ReplicateConfig> = Vec::with_capacity(tables.len());
    for t in &tables {
        t.deny_unknown(REPLICATE_KEYS)?;
        let name = t.require("name")?.name()?;
        if sets.iter().any(|s| s.name == name.value) {
            return Err(t.cx.invalid(
                name.span,
                name.path,
                format!("replicated set name {:?} is already used", name.value),
            ));
        }
        let path_entry = t.require("path")?;
        let path = path_entry.absolute_path()?;
        if path == Path::new("/") {
            return Err(path_entry.error("cannot replicate the root directory"));
        }
        for other in &sets {
            if path.starts_with(&other.path) || other.path.starts_with(&path) {
                return Err(path_entry.error(format!(
                    "overlaps replicated set {:?} at {}",
                    other.name,
                    other.path.display()
                )));
            }
        }
        if path.starts_with(&pair.state_dir) || pair.state_dir.starts_with(&path) {
            return Err(path_entry.error(format!(
                "overlaps pair.state_dir {}",
                pair.state_dir.display()
            )));
        }
        let mode = match t.get("mode") {
            None => ReplicationMode::Sync,
            Some(e) => match e.str()? {
                "sync" => ReplicationMode::Sync,
                "async" => ReplicationMode::Async,
                other => {
                    return Err(e.error(format!("unknown mode {other:?} (supported: sync, async)")))
                }
            },
        };
        let queue_max_bytes = match t.get("queue_max_bytes") {
            None => defaults::QUEUE_MAX_BYTES,
            Some(e) => e.uint(defaults::QUEUE_MAX_BYTES_MIN, 1 << 50)?,
        };
        let memory_max_bytes = match t.get("memory_max_bytes") {
            None => defaults::QUEUE_MEMORY_MAX_BYTES.min(queue_max_bytes),
            Some(e) => e.uint(1 << 20, queue_max_bytes)?,
        };
        let sync_rate_max_bytes_per_s = match t.get("sync_rate_max_bytes_per_s") {
            None => 0,
            Some(e) => e.uint(0, 1 << 40)?,
        };
        let data_dir = match t.get("data_dir") {
            None => None,
            Some(e) => {
                let dir = e.absolute_path()?;
                if dir.starts_with(&path) || path.starts_with(&dir) {
                    return Err(
                        e.error("data_dir must not be inside path, nor path inside data_dir")
                    );
                }
                Some(dir)
            }
        };
        sets.push(ReplicateConfig {
            name: name.value,
            path,
            mode,
            queue_max_bytes,
            memory_max_bytes,
            data_dir,
            sync_rate_max_bytes_per_s,
        });
    }
    Ok(sets)
}

fn read_resources(root: &Tbl<'_>, nodes: &[NodeConfig; 2]) -> Result<Vec<ResourceConfig>> {
    let tables = root.tables("resource")?.unwrap_or_default();
    if let Some(extra) = tables.get(defaults::RESOURCES_MAX) {
        return Err(root.cx.invalid(
            extra.span.clone(),
            extra.path.clone(),
            format!(
                "at most {} [[resource]] entries are allowed, found {}",
                defaults::RESOURCES_MAX,
                tables.len()
            ),
        ));
    }

    let mut resources: Vec<ResourceConfig> = Vec::with_capacity(tables.len());
    for t in &tables {
        let kind_entry = t.require("kind")?;
        let kind_text = kind_entry.str()?;
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == kind_text) else {
            let supported: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return Err(kind_entry.error(format!(
                "unknown kind {kind_text:?} (supported: {})",
                supported.join(", ")
            )));
        };
        let allowed: Vec<&str> = COMMON_RESOURCE_KEYS
            .iter()
            .chain(kind.keys())
            .copied()
            .collect();
        t.deny_unknown_for(&allowed, &format!(" (kind {kind_text:?})"))?;

        let name = t.require("name")?.name()?;
        if let Some(other) = resources.iter().position(|r| r.name == name.value) {
            return Err(t.cx.invalid(
                name.span,
                name.path,
                format!(
                    "resource name {:?} is already used by resource[{other}]",
                    name.value
                ),
            ));
        }

        let start_timeout = t.ms(
            "start_timeout_ms",
            1,
            defaults::DURATION_MS_MAX,
            defaults::START_TIMEOUT_MS,
        )?;
        let stop_timeout = t.ms(
            "stop_timeout_ms",
            1,
            defaults::DURATION_MS_MAX,
            defaults::STOP_TIMEOUT_MS,
        )?;
        let monitor_timeout = t.ms(
            "monitor_timeout_ms",
            1,
            defaults::DURATION_MS_MAX,
            defaults::MONITOR_TIMEOUT_MS,
        )?;
        let monitor_interval = t.ms(
            "monitor_interval_ms",
            defaults::MONITOR_INTERVAL_MS_MIN,
            defaults::DURATION_MS_MAX,
            defaults::MONITOR_INTERVAL_MS,
        )?;

        let on_failure = read_on_failure(t)?;
        let failure_window = t.ms(
            "failure_window_ms",
            1,
            defaults::DURATION_MS_MAX,
            defaults::FAILURE_WINDOW_MS,
        )?;
        if failure_window.value < monitor_interval.value {
            return Err(t.blame(
                &failure_window,
                &monitor_interval,
                format!(
                    "failure_window_ms ({}) must be at least monitor_interval_ms ({}), or \
                     successive monitor failures never fall in one window",
                    failure_window.shown(),
                    monitor_interval.shown()
                ),
            ));
        }

        let kind = match kind {
            Kind::Exec => ResourceKind::Exec(read_exec(t)?),
            Kind::Vip => ResourceKind::Vip(read_vip(t, &start_timeout, nodes, &resources)?),
            Kind::Ocf => ResourceKind::Ocf(read_ocf(t)?),
            Kind::Systemd => ResourceKind::Systemd(read_systemd(t)?),
            Kind::Dns => ResourceKind::Dns(read_dns(t, nodes)?),
        };

        resources.push(ResourceConfig {
            name: name.value,
            kind,
            start_timeout_ms: start_timeout.value,
            stop_timeout_ms: stop_timeout.value,
            monitor_timeout_ms: monitor_timeout.value,
            monitor_interval_ms: monitor_interval.value,
            on_failure,
            failure_window_ms: failure_window.value,
        });
    }
    Ok(resources)
}

/// `on_failure`: 1..=10 of "restart", "switchover", "alert" or
/// `{ run = "COMMAND" }`.
fn read_on_failure(t: &Tbl<'_>) -> Result<Vec<FailureAction>> {
    let Some(entry) = t.get("on_failure") else {
        return Ok(ResourceConfig::default_on_failure());
    };
    let items = entry.array()?;
    if items.is_empty() || items.len() > defaults::ON_FAILURE_MAX {
        return Err(entry.error(format!(
            "expected 1 to {} actions, found {}",
            defaults::ON_FAILURE_MAX,
            items.len()
        )));
    }
    let mut actions = Vec::with_capacity(items.len());
    for item in &items {
        let action = match item.value {
            Some(Value::String(word)) => match word.value().as_str() {
                "restart" => FailureAction::Restart,
                "switchover" => FailureAction::Switchover,
                "alert" => FailureAction::Alert,
                other => {
                    return Err(item.error(format!(
                        "unknown action {other:?} (expected \"restart\", \"switchover\", \
                         \"alert\" or {{ run = \"COMMAND\" }})"
                    )))
                }
            },
            Some(Value::InlineTable(table)) => {
                let sub = Tbl {
                    cx: t.cx,
                    inner: table,
                    path: item.path.clone(),
                    span: item.span.clone(),
                };
                sub.deny_unknown(&["run"])?;
                FailureAction::Run(sub.require("run")?.command()?)
            }
            _ => return Err(item.wrong_type(
                "\"restart\", \"switchover\", \"alert\" or an inline table { run = \"COMMAND\" }",
            )),
        };
        actions.push(action);
    }
    Ok(actions)
}

fn read_exec(t: &Tbl<'_>) -> Result<ExecResourceConfig> {
    let start = t.require("start")?.command()?;
    let stop = t.require("stop")?.command()?;
    let monitor = match t.get("monitor") {
        Some(entry) => Some(entry.command()?),
        None => None,
    };
    Ok(ExecResourceConfig {
        start,
        stop,
        monitor,
    })
}

fn read_vip(
    t: &Tbl<'_>,
    start_timeout: &Field<u64>,
    nodes: &[NodeConfig; 2],
    earlier: &[ResourceConfig],
) -> Result<VipResourceConfig> {
    let address_entry = t.require("address")?;
    let (address, prefix_len) = address_entry.ip_with_prefix()?;
    for (i, node) in nodes.iter().enumerate() {
        let used = node
            .channel
            .iter()
            .enumerate()
            .map(|(j, a)| (a.ip(), format!("node[{i}].channel[{j}]")))
            .chain(std::iter::once((
                node.management.ip(),
                format!("node[{i}].management"),
            )));
        for (ip, key) in used {
            if ip == address {
                return Err(address_entry.error(format!(
                    "{address} is also {key} (node {:?}); a virtual address must not be one \
                     of the nodes' own addresses",
                    node.name
                )));
            }
        }
    }
    for (i, other) in earlier.iter().enumerate() {
        if let ResourceKind::Vip(vip) = &other.kind {
            if vip.address == address {
                return Err(address_entry.error(format!(
                    "{address} is already the address of resource[{i}] ({:?})",
                    other.name
                )));
            }
        }
    }

    let interface = t.require("interface")?.interface_name()?;
    let gratuitous_arp_count = t.u32_or(
        "gratuitous_arp_count",
        0,
        defaults::GRATUITOUS_ARP_COUNT_MAX,
        defaults::GRATUITOUS_ARP_COUNT,
    )?;
    let interval = t.ms(
        "gratuitous_arp_interval_ms",
        defaults::GRATUITOUS_ARP_INTERVAL_MS_MIN,
        defaults::GRATUITOUS_ARP_INTERVAL_MS_MAX,
        defaults::GRATUITOUS_ARP_INTERVAL_MS,
    )?;
    let probe = t.ms(
        "conflict_probe_ms",
        0,
        defaults::DURATION_MS_MAX,
        defaults::CONFLICT_PROBE_MS,
    )?;
    if probe.value >= start_timeout.value {
        return Err(t.blame(
            &probe,
            start_timeout,
            format!(
                "conflict_probe_ms ({}) must be less than start_timeout_ms ({}), since the \
                 probe is part of starting",
                probe.shown(),
                start_timeout.shown()
            ),
        ));
    }

    Ok(VipResourceConfig {
        address,
        prefix_len,
        interface,
        gratuitous_arp_count,
        gratuitous_arp_interval_ms: interval.value,
        conflict_probe_ms: probe.value,
    })
}

fn read_ocf(t: &Tbl<'_>) -> Result<OcfResourceConfig> {
    let agent = t.require("agent")?;
    let text = agent.str()?;
    let parts: Vec<&str> = text.split(':').collect();
    let (provider, agent_type) = match parts.as_slice() {
        ["ocf", provider, agent_type] | [provider, agent_type] => (*provider, *agent_type),
        [class, _, _] => {
            return Err(agent.error(format!(
                "only OCF agents are supported: the class must be \"ocf\", found {class:?}"
            )))
        }
        _ => {
            return Err(agent.error(format!(
                "expected \"ocf:PROVIDER:TYPE\" or \"PROVIDER:TYPE\" (e.g. \
                 \"ocf:heartbeat:Dummy\"), found {text:?}"
            )))
        }
    };
    for (what, part) in [("provider", provider), ("type", agent_type)] {
        let valid = !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(agent.error(format!(
                "invalid agent {what} {part:?}: use characters from A-Z, a-z, 0-9, '_', '.' \
                 and '-' (not \".\" or \"..\")"
            )));
        }
    }

    let mut params: Vec<(String, String)> = Vec::new();
    if let Some(table) = t.table("params")? {
        for (key, _) in table.inner.iter() {
            let valid =
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(table.cx.invalid(
                    table.key_span(key),
                    table.key_path(key),
                    format!(
                        "invalid parameter name {key:?}: use characters from A-Z, a-z, 0-9 \
                         and '_' (it becomes the variable OCF_RESKEY_<name>)"
                    ),
                ));
            }
            let Some(entry) = table.get(key) else {
                continue;
            };
            let value = entry.str()?;
            if value.contains('\0') {
                return Err(entry.error("must not contain a NUL character"));
            }
            params.push((key.to_owned(), value.to_owned()));
        }
    }

    let ocf_root = t.absolute_path("ocf_root", || PathBuf::from(defaults::OCF_ROOT))?;
    Ok(OcfResourceConfig {
        provider: provider.to_owned(),
        agent_type: agent_type.to_owned(),
        params,
        ocf_root: ocf_root.value,
    })
}

fn read_systemd(t: &Tbl<'_>) -> Result<SystemdResourceConfig> {
    let entry = t.require("unit")?;
    let unit = entry.str()?;
    if unit.contains('/') {
        return Err(entry.error(format!(
            "{unit:?} is a path: give the unit name, e.g. \"nginx.service\""
        )));
    }
    let Some(stem) = defaults::SYSTEMD_UNIT_SUFFIXES
        .iter()
        .find_map(|suffix| unit.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty())
    else {
        return Err(entry.error(format!(
            "{unit:?} is not a unit name ending in {}",
            defaults::SYSTEMD_UNIT_SUFFIXES.join(", ")
        )));
    };
    if let Some(bad) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Err(entry.error(format!(
            "invalid character {bad:?} in unit name {unit:?} (allowed: A-Z, a-z, 0-9, ':', \
             '-', '_', '.', '\\' and '@')"
        )));
    }
    if unit.len() > defaults::SYSTEMD_UNIT_LEN_MAX {
        return Err(entry.error(format!(
            "unit name is {} characters long; at most {} are allowed",
            unit.len(),
            defaults::SYSTEMD_UNIT_LEN_MAX
        )));
    }
    if stem.ends_with('@') {
        return Err(entry.error(format!(
            "{unit:?} is a template unit: name an instance, e.g. \"{stem}instance{}\"",
            &unit[stem.len()..]
        )));
    }
    let user = match t.get("user") {
        Some(entry) => entry.bool()?,
        None => false,
    };
    Ok(SystemdResourceConfig {
        unit: unit.to_owned(),
        user,
    })
}

fn read_dns(t: &Tbl<'_>, nodes: &[NodeConfig; 2]) -> Result<DnsResourceConfig> {
    let server = t.require("server")?.socket_addr(defaults::DNS_PORT)?;

    let zone = t.require("zone")?.domain_name()?;
    let record_entry = t.require("record")?;
    let record = record_entry.domain_name()?;
    let (zone_lc, record_lc) = (zone.to_ascii_lowercase(), record.to_ascii_lowercase());
    if record_lc != zone_lc && !record_lc.ends_with(&format!(".{zone_lc}")) {
        return Err(record_entry.error(format!("record {record:?} is not inside zone {zone:?}")));
    }

    let ttl = t.u32_or("ttl", 1, defaults::DNS_TTL_MAX, defaults::DNS_TTL)?;

    let table = t
        .table("addresses")?
        .ok_or_else(|| t.missing("addresses"))?;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut found: [Option<(IpAddr, Entry<'_>)>; 2] = [None, None];
    for (key, _) in table.inner.iter() {
        let Some(index) = names.iter().position(|n| *n == key) else {
            return Err(table.cx.invalid(
                table.key_span(key),
                table.key_path(key),
                format!(
                    "{key:?} is not a node of this pair; the keys of addresses are the node \
                     names ({})",
                    names.join(", ")
                ),
            ));
        };
        let Some(entry) = table.get(key) else {
            continue;
        };
        let ip = entry.record_ip()?;
        found[index] = Some((ip, entry));
    }
    let [Some((first, _)), Some((second, second_entry))] = found else {
        let missing = found
            .iter()
            .position(Option::is_none)
            .and_then(|i| names.get(i))
            .copied()
            .unwrap_or_default();
        return Err(table.error_at_table(
            missing,
            format!(
                "no address for node {missing:?}: addresses needs one for each node ({})",
                names.join(", ")
            ),
        ));
    };
    if first.is_ipv4() != second.is_ipv4() {
        return Err(second_entry.error(format!(
            "{first} and {second} are of different address families; both must be IPv4 (an A \
             record) or both IPv6 (an AAAA record)"
        )));
    }

    let key_entry = t.require("tsig_key_name")?;
    key_entry.domain_name()?;
    let tsig_key_name = key_entry.str()?.to_owned();

    let tsig_algorithm = match t.get("tsig_algorithm") {
        Some(entry) => {
            let text = entry.str()?;
            if !defaults::TSIG_ALGORITHMS.contains(&text) {
                return Err(entry.error(format!(
                    "unsupported TSIG algorithm {text:?} (supported: {})",
                    defaults::TSIG_ALGORITHMS.join(", ")
                )));
            }
            text.to_owned()
        }
        None => defaults::TSIG_ALGORITHM.to_owned(),
    };

    let tsig_secret_file = t.require("tsig_secret_file")?.absolute_path()?;

    Ok(DnsResourceConfig {
        server,
        zone,
        record,
        ttl,
        addresses: [first, second],
        tsig_key_name,
        tsig_algorithm,
        tsig_secret_file,
    })
}

fn read_hooks(root: &Tbl<'_>) -> Result<HooksConfig> {
    let Some(t) = root.table("hooks")? else {
        return Ok(HooksConfig::default());
    };
    t.deny_unknown(HOOKS_KEYS)?;
    let command = |key: &str| -> Result<Option<String>> {
        match t.get(key) {
            Some(entry) => Ok(Some(entry.command()?)),
            None => Ok(None),
        }
    };
    Ok(HooksConfig {
        pre_start: command("pre_start")?,
        post_start: command("post_start")?,
        pre_stop: command("pre_stop")?,
        post_stop: command("post_stop")?,
        role_change: command("role_change")?,
        timeout_ms: t
            .ms(
                "timeout_ms",
                1,
                defaults::DURATION_MS_MAX,
                defaults::HOOK_TIMEOUT_MS,
            )?
            .value,
    })
}

// ---------------------------------------------------------------------------
// Positions and errors.
// ---------------------------------------------------------------------------

/// The text being parsed and the file it came from.
struct Cx<'a> {
    text: &'a str,
    source: &'a Path,
}

impl Cx<'_> {
    /// 1-based line and column (in characters) of the start of `span`.
    fn position(&self, span: &Span) -> (usize, usize) {
        let mut offset = span.as_ref().map_or(0, |s| s.start).min(self.text.len());
        while offset > 0 && !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
        (line, column)
    }

    fn invalid(
        &self,
        span: Span,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(&span);
        ConfigError::Invalid {
            file: self.source.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    fn syntax(&self, span: Span, message: &str) -> ConfigError {
        let (line, column) = self.position(&span);
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Syntax {
            file: self.source.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

/// A value read from the file (or defaulted), with where to point errors.
struct Field<T> {
    value: T,
    /// The value's span, or the table header's when defaulted.
    span: Span,
    /// Dotted key path.
    path: String,
    /// Whether the file set it (as opposed to the default).
    explicit: bool,
}

impl<T: std::fmt::Display> Field<T> {
    /// The value for messages, marked when it is the default.
    fn shown(&self) -> String {
        if self.explicit {
            self.value.to_string()
        } else {
            format!("{}, the default", self.value)
        }
    }
}

/// Render one key as a path segment, quoting it unless it is a bare key.
fn segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

// ---------------------------------------------------------------------------
// Tables.
// ---------------------------------------------------------------------------

/// A table of the document, with its dotted path and header position.
struct Tbl<'a> {
    cx: &'a Cx<'a>,
    inner: &'a dyn TableLike,
    /// Dotted path (`""` for the document root).
    path: String,
    /// Where to point errors about the table as a whole (its header).
    span: Span,
}

impl<'a> Tbl<'a> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            segment(key)
        } else {
            format!("{}.{}", self.path, segment(key))
        }
    }

    /// An error about `key` located at this table's header.
    fn error_at_table(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.cx
            .invalid(self.span.clone(), self.key_path(key), message)
    }

    /// Where `key` itself is written (falling back to its value, then to
    /// the table header).
    fn key_span(&self, key: &str) -> Span {
        self.inner.get_key_value(key).and_then(|(k, item)| {
            k.span()
                .or_else(|| item.span())
                .or_else(|| self.span.clone())
        })
    }

    /// Refuse the first key (in file order) not in `allowed`.
    fn deny_unknown(&self, allowed: &[&str]) -> Result<()> {
        self.deny_unknown_for(allowed, "")
    }

    /// [`deny_unknown`](Self::deny_unknown), with `note` appended to the
    /// table's name in the message.
    fn deny_unknown_for(&self, allowed: &[&str], note: &str) -> Result<()> {
        for (key, _) in self.inner.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let place = if self.path.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in {}{note}", self.path)
            };
            return Err(self.cx.invalid(
                self.key_span(key),
                self.key_path(key),
                format!(
                    "unknown key {place} (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<Entry<'a>> {
        let (k, item) = self.inner.get_key_value(key)?;
        let span = item
            .span()
            .or_else(|| k.span())
            .or_else(|| self.span.clone());
        let (value, found) = match item {
            Item::Value(v) => (Some(v), describe(v)),
            Item::Table(_) => (None, "a table"),
            Item::ArrayOfTables(_) => (None, "an array of tables"),
            Item::None => (None, "nothing"),
        };
        Some(Entry {
            cx: self.cx,
            value,
            found,
            path: self.key_path(key),
            span,
        })
    }

    fn require(&self, key: &str) -> Result<Entry<'a>> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    /// The error for a required `key` this table lacks.
    fn missing(&self, key: &str) -> ConfigError {
        let what = if self.path.is_empty() {
            "the document".to_owned()
        } else {
            format!("[{}]", self.path)
        };
        self.error_at_table(key, format!("required key is missing from {what}"))
    }

    /// The sub-table `key`, if present.
    fn table(&self, key: &str) -> Result<Option<Tbl<'a>>> {
        let Some((k, item)) = self.inner.get_key_value(key) else {
            return Ok(None);
        };
        let path = self.key_path(key);
        let span = item
            .span()
            .or_else(|| k.span())
            .or_else(|| self.span.clone());
        match item.as_table_like() {
            Some(inner) => Ok(Some(Tbl {
                cx: self.cx,
                inner,
                path,
                span,
            })),
            None => Err(self.cx.invalid(
                span,
                path,
                format!(
                    "expected a table ([{key}]), found {}",
                    item_description(item)
                ),
            )),
        }
    }

    /// The array of tables `key` (`[[key]]`, or an array of inline tables),
    /// if present.
    fn tables(&self, key: &str) -> Result<Option<Vec<Tbl<'a>>>> {
        let Some((k, item)) = self.inner.get_key_value(key) else {
            return Ok(None);
        };
        let path = self.key_path(key);
        let outer = item
            .span()
            .or_else(|| k.span())
            .or_else(|| self.span.clone());
        let mut out = Vec::new();
        match item {
            Item::ArrayOfTables(array) => {
                for (i, table) in array.iter().enumerate() {
                    out.push(Tbl {
                        cx: self.cx,
                        inner: table,
                        path: format!("{path}[{i}]"),
                        span: table.span().or_else(|| outer.clone()),
                    });
                }
            }
            Item::Value(Value::Array(array)) => {
                for (i, value) in array.iter().enumerate() {
                    let span = value.span().or_else(|| outer.clone());
                    let element = format!("{path}[{i}]");
                    match value {
                        Value::InlineTable(table) => out.push(Tbl {
                            cx: self.cx,
                            inner: table,
                            path: element,
                            span,
                        }),
                        other => {
                            return Err(self.cx.invalid(
                                span,
                                element,
                                format!("expected a table, found {}", describe(other)),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(self.cx.invalid(
                    outer,
                    path,
                    format!(
                        "expected an array of tables ([[{key}]]), found {}",
                        item_description(other)
                    ),
                ))
            }
        }
        Ok(Some(out))
    }

    /// Point an error about two related keys at the one the file set,
    /// preferring `primary`.
    fn blame<T>(&self, primary: &Field<T>, other: &Field<T>, message: String) -> ConfigError {
        let chosen = if primary.explicit || !other.explicit {
            primary
        } else {
            other
        };
        self.cx
            .invalid(chosen.span.clone(), chosen.path.clone(), message)
    }

    /// A duration in milliseconds within `min..=max`, or `default`.
    fn ms(&self, key: &str, min: u64, max: u64, default: u64) -> Result<Field<u64>> {
        match self.get(key) {
            Some(entry) => {
                let value = entry.uint(min, max)?;
                Ok(Field {
                    value,
                    span: entry.span,
                    path: entry.path,
                    explicit: true,
                })
            }
            None => Ok(self.defaulted(key, default)),
        }
    }

    /// A TCP port (1..=65535), or `default`.
    fn port(&self, key: &str, default: u16) -> Result<u16> {
        match self.get(key) {
            Some(entry) => {
                let value = entry.uint(1, u64::from(u16::MAX))?;
                u16::try_from(value).map_err(|_| entry.error("must be between 1 and 65535"))
            }
            None => Ok(default),
        }
    }

    /// An integer within `min..=max`, or `default`.
    fn u32_or(&self, key: &str, min: u32, max: u32, default: u32) -> Result<u32> {
        match self.get(key) {
            Some(entry) => {
                let value = entry.uint(u64::from(min), u64::from(max))?;
                u32::try_from(value)
                    .map_err(|_| entry.error(format!("must be between {min} and {max}")))
            }
            None => Ok(default),
        }
    }

    /// An absolute path, or `default()`.
    fn absolute_path(
        &self,
        key: &str,
        default: impl FnOnce() -> PathBuf,
    ) -> Result<Field<PathBuf>> {
        match self.get(key) {
            Some(entry) => Ok(Field {
                value: entry.absolute_path()?,
                span: entry.span,
                path: entry.path,
                explicit: true,
            }),
            None => Ok(self.defaulted(key, default())),
        }
    }

    fn defaulted<T>(&self, key: &str, value: T) -> Field<T> {
        Field {
            value,
            span: self.span.clone(),
            path: self.key_path(key),
            explicit: false,
        }
    }
}

fn item_description(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => describe(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

// ---------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------

/// One key's value (or one array element), with where it is.
struct Entry<'a> {
    cx: &'a Cx<'a>,
    /// `None` when the item is a table rather than a value.
    value: Option<&'a Value>,
    /// What the item is, for "expected X, found Y".
    found: &'static str,
    path: String,
    span: Span,
}

impl<'a> Entry<'a> {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        self.cx
            .invalid(self.span.clone(), self.path.clone(), message)
    }

    fn wrong_type(&self, expected: &str) -> ConfigError {
        self.error(format!("expected {expected}, found {}", self.found))
    }

    fn str(&self) -> Result<&'a str> {
        self.value
            .and_then(Value::as_str)
            .ok_or_else(|| self.wrong_type("a string"))
    }

    fn bool(&self) -> Result<bool> {
        self.value
            .and_then(Value::as_bool)
            .ok_or_else(|| self.wrong_type("true or false"))
    }

    /// A non-negative integer within `min..=max`.
    fn uint(&self, min: u64, max: u64) -> Result<u64> {
        let raw = self
            .value
            .and_then(Value::as_integer)
            .ok_or_else(|| self.wrong_type("an integer"))?;
        match u64::try_from(raw) {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(self.error(format!("must be between {min} and {max}, found {raw}"))),
        }
    }

    /// The elements of an array.
    fn array(&self) -> Result<Vec<Entry<'a>>> {
        let array = self
            .value
            .and_then(Value::as_array)
            .ok_or_else(|| self.wrong_type("an array"))?;
        Ok(array
            .iter()
            .enumerate()
            .map(|(i, value)| Entry {
                cx: self.cx,
                value: Some(value),
                found: describe(value),
                path: format!("{}[{i}]", self.path),
                span: value.span().or_else(|| self.span.clone()),
            })
            .collect())
    }

    /// A pair, node or resource name.
    fn name(&self) -> Result<Field<String>> {
        let text = self.str()?;
        let mut chars = text.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let valid = starts_with_letter
            && text.len() <= defaults::NAME_LEN_MAX
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(self.error(format!(
                "invalid name {text:?}: use 1 to {} characters from a-z, 0-9 and '-', \
                 starting with a letter",
                defaults::NAME_LEN_MAX
            )));
        }
        Ok(Field {
            value: text.to_owned(),
            span: self.span.clone(),
            path: self.path.clone(),
            explicit: true,
        })
    }

    /// An absolute path.
    fn absolute_path(&self) -> Result<PathBuf> {
        let text = self.str()?;
        if text.contains('\0') {
            return Err(self.error("must not contain a NUL character"));
        }
        let path = PathBuf::from(text);
        if !path.is_absolute() {
            return Err(self.error(format!(
                "must be an absolute path (starting with /), found {text:?}"
            )));
        }
        Ok(path)
    }

    /// An address with its prefix length, "IP/PREFIX".
    fn ip_with_prefix(&self) -> Result<(IpAddr, u8)> {
        let text = self.str()?;
        let Some((ip_text, prefix_text)) = text.split_once('/') else {
            return Err(self.error(format!(
                "{text:?} has no prefix length: write \"IP/PREFIX\", e.g. \"10.60.0.50/24\" \
                 or \"2001:db8::50/64\""
            )));
        };
        let ip = ip_text.parse::<IpAddr>().map_err(|_| {
            self.error(format!(
                "{ip_text:?} is not an IP address; write \"IP/PREFIX\", e.g. \"10.60.0.50/24\""
            ))
        })?;
        check_reachable_ip(ip).map_err(|m| self.error(m))?;
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix_text
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=max).contains(p) && prefix_text.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| {
                self.error(format!(
                    "prefix length {prefix_text:?} must be between 1 and {max} for an {} address",
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                ))
            })?;
        if let IpAddr::V4(v4) = ip {
            if prefix <= 30 {
                let host_mask = u32::MAX >> prefix;
                let host = u32::from(v4) & host_mask;
                if host == 0 || host == host_mask {
                    let which = if host == 0 { "network" } else { "broadcast" };
                    return Err(self.error(format!(
                        "{ip} is the {which} address of {text}; choose a host address"
                    )));
                }
            }
        }
        Ok((ip, prefix))
    }

    /// A network interface name as Linux accepts it.
    fn interface_name(&self) -> Result<String> {
        let text = self.str()?;
        if text.is_empty() || text.len() > defaults::INTERFACE_LEN_MAX {
            return Err(self.error(format!(
                "interface name must be 1 to {} bytes long, found {}",
                defaults::INTERFACE_LEN_MAX,
                text.len()
            )));
        }
        if text == "." || text == ".." {
            return Err(self.error(format!("{text:?} is not a valid interface name")));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(self.error(format!(
                "invalid character {bad:?} in interface name {text:?} (no '/', ':', \
                 whitespace or control characters)"
            )));
        }
        Ok(text.to_owned())
    }

    /// A domain name, returned with a trailing dot (the root is refused).
    fn domain_name(&self) -> Result<String> {
        let text = self.str()?;
        let bare = text.strip_suffix('.').unwrap_or(text);
        if bare.is_empty() {
            return Err(self.error(format!(
                "{text:?} is not a domain name; write one such as \"example.com.\" (the root \
                 zone is not accepted)"
            )));
        }
        if bare.len() > 253 {
            return Err(self.error(format!(
                "domain name is {} characters long; at most 253 are allowed",
                bare.len()
            )));
        }
        for label in bare.split('.') {
            if label.is_empty() {
                return Err(self.error(format!("{text:?} has an empty label (\"..\")")));
            }
            if label.len() > 63 {
                return Err(self.error(format!(
                    "label {label:?} is {} characters long; at most 63 are allowed",
                    label.len()
                )));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(self.error(format!(
                    "invalid character {bad:?} in domain name {text:?} (allowed: A-Z, a-z, \
                     0-9, '-' and '_')"
                )));
            }
        }
        Ok(format!("{bare}."))
    }

    /// A DNS record's address: a bare IP address.
    fn record_ip(&self) -> Result<IpAddr> {
        let text = self.str()?;
        let ip = text.parse::<IpAddr>().map_err(|_| {
            self.error(format!(
                "{text:?} is not an IP address (no port; host names are not accepted)"
            ))
        })?;
        check_reachable_ip(ip).map_err(|m| self.error(m))?;
        Ok(ip)
    }

    /// A shell command line.
    fn command(&self) -> Result<String> {
        let text = self.str()?;
        if text.trim().is_empty() {
            return Err(self.error("command line must not be empty"));
        }
        if text.contains('\0') {
            return Err(self.error("command line must not contain a NUL character"));
        }
        Ok(text.to_owned())
    }

    /// A peer-reachable address written "IP" or "IP:PORT".
    fn socket_addr(&self, default_port: u16) -> Result<SocketAddr> {
        let text = self.str()?;
        let addr = parse_socket_addr(text, default_port).ok_or_else(|| {
            self.error(format!(
                "{text:?} is not an address: write \"IP\" or \"IP:PORT\" (IPv6 as \
                 \"[2001:db8::1]:7400\" or \"2001:db8::1\"); host names are not accepted"
            ))
        })?;
        if addr.port() == 0 {
            return Err(self.error("port 0 is not allowed"));
        }
        check_reachable_ip(addr.ip()).map_err(|m| self.error(m))?;
        Ok(addr)
    }

    /// A public check target: a bare IP address.
    fn target_ip(&self) -> Result<IpAddr> {
        let text = self.str()?;
        let ip = text.parse::<IpAddr>().map_err(|_| {
            if text.parse::<SocketAddr>().is_ok() {
                self.error(format!(
                    "{text:?} has a port: public check targets are IP addresses only"
                ))
            } else {
                self.error(format!(
                    "{text:?} is not an IP address; host names are not accepted"
                ))
            }
        })?;
        check_reachable_ip(ip).map_err(|m| self.error(m))?;
        Ok(ip)
    }

    /// Record `addr` as used by this entry, refusing it if already used.
    fn claim_address(&self, addr: SocketAddr, used: &mut Vec<(SocketAddr, String)>) -> Result<()> {
        if let Some((_, other)) = used.iter().find(|(a, _)| *a == addr) {
            return Err(self.error(format!("address {addr} is already used by {other}")));
        }
        used.push((addr, self.path.clone()));
        Ok(())
    }
}

/// Parse "IP", "IP:PORT", "[IPv6]:PORT" or "[IPv6]".
fn parse_socket_addr(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let ip = bare.parse::<IpAddr>().ok()?;
    if bare.len() != text.len() && ip.is_ipv4() {
        // "[192.0.2.1]" is not a valid way to write an IPv4 address.
        return None;
    }
    Some(SocketAddr::new(ip, default_port))
}

/// Refuse addresses a peer or probe can never usefully reach.
fn check_reachable_ip(ip: IpAddr) -> std::result::Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is the unspecified address; give a real address of the machine"
        ));
    }
    if ip.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(format!("{ip} is the broadcast address"));
        }
    }
    Ok(())
}
