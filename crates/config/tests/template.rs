//! The configuration template: it parses as shipped and when filled in,
//! documents every key, and its commented-out defaults and example resource
//! are themselves valid.

mod common;

use std::net::SocketAddr;

use common::{err, ok};
use understudy_config::{
    defaults, template, FailureAction, HooksConfig, ResourceConfig, ResourceKind, TEMPLATE,
};

const ALL_KEYS: &[&str] = &[
    "[pair]",
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
    "[[node]]",
    "channel",
    "management",
    "[public_check]",
    "targets",
    "interval_ms",
    "timeout_ms",
    "[[resource]]",
    "kind",
    "start",
    "stop",
    "monitor",
    "start_timeout_ms",
    "stop_timeout_ms",
    "monitor_timeout_ms",
    "monitor_interval_ms",
    "on_failure",
    "failure_window_ms",
    "auto_move_limit",
    "\"exec\"",
    "\"vip\"",
    "\"ocf\"",
    "\"systemd\"",
    "\"dns\"",
    "address",
    "interface",
    "gratuitous_arp_count",
    "gratuitous_arp_interval_ms",
    "conflict_probe_ms",
    "agent",
    "params",
    "[resource.params]",
    "ocf_root",
    "unit",
    "user",
    "server",
    "zone",
    "record",
    "ttl",
    "addresses",
    "tsig_key_name",
    "tsig_algorithm",
    "tsig_secret_file",
    "[hooks]",
    "pre_start",
    "post_start",
    "pre_stop",
    "post_stop",
    "role_change",
    "\"restart\"",
    "\"switchover\"",
    "\"alert\"",
    "run = ",
];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn template_constant_parses() {
    let c = ok(TEMPLATE);
    assert_eq!(c.pair.name, "web");
    assert_eq!(c.nodes[0].name, "alpha");
    assert_eq!(c.nodes[1].name, "beta");
    assert_eq!(c.nodes[0].channel, vec![addr("192.168.50.1:7400")]);
    assert_eq!(c.nodes[1].management, addr("203.0.113.12:7401"));
    assert!(c.resources.is_empty());
    assert!(c.public_check.targets.is_empty());
}

#[test]
fn template_mentions_every_key() {
    for key in ALL_KEYS {
        assert!(TEMPLATE.contains(key), "template lacks {key}");
    }
}

#[test]
fn filled_template_parses() {
    let text = template(
        "db",
        ["n1", "n2"],
        ["10.0.0.1", "[fd00::2]:7500"],
        ["10.1.0.1:22", "10.1.0.2"],
    );
    // The family check refuses mixed links, so give both nodes IPv6 first.
    let e = err(&text);
    assert_eq!(e.key(), Some("node[1].channel[0]"));

    let text = template(
        "db",
        ["n1", "n2"],
        ["fd00::1", "[fd00::2]:7500"],
        ["10.1.0.1:22", "10.1.0.2"],
    );
    let c = ok(&text);
    assert_eq!(c.pair.name, "db");
    assert_eq!(c.nodes[0].name, "n1");
    assert_eq!(c.nodes[1].name, "n2");
    assert_eq!(c.nodes[0].channel, vec![addr("[fd00::1]:7400")]);
    assert_eq!(c.nodes[1].channel, vec![addr("[fd00::2]:7500")]);
    assert_eq!(c.nodes[0].management, addr("10.1.0.1:22"));
    assert_eq!(c.nodes[1].management, addr("10.1.0.2:7401"));
    assert!(text.contains("# control_socket = \"/run/understudy/db.sock\""));
    assert!(text.contains("# tls_dir = \"/etc/understudy/db\""));
}

#[test]
fn template_with_the_example_values_is_the_constant() {
    assert_eq!(
        template(
            "web",
            ["alpha", "beta"],
            ["192.168.50.1", "192.168.50.2"],
            ["203.0.113.11", "203.0.113.12"],
        ),
        TEMPLATE
    );
}

#[test]
fn hostile_values_cannot_break_the_toml() {
    let text = template(
        "we\"b\nx = 1",
        ["alpha", "beta"],
        ["192.168.50.1", "192.168.50.2"],
        ["203.0.113.11", "203.0.113.12"],
    );
    let e = err(&text);
    assert_eq!(e.key(), Some("pair.name"), "{e}");
}

/// Uncomment every `# key = value` line and every commented table header
/// (`# [hooks]`, `# [[resource]]`), replacing `targets = []` by its
/// commented example.
fn uncommented(text: &str) -> String {
    text.lines()
        .filter(|line| *line != "targets = []")
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let is_header = rest.starts_with('[') && rest.ends_with(']') && !rest.contains(' ');
            let is_setting = is_header
                || rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if line.starts_with("# ") && is_setting {
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn commented_defaults_and_example_resources_are_valid() {
    let text = uncommented(TEMPLATE);
    assert!(text.contains("\nheartbeat_interval_ms = 200\n"), "{text}");
    assert!(text.contains("\n[hooks]\n"), "{text}");
    let full = ok(&text);
    let plain = ok(TEMPLATE);
    // Uncommenting the defaults changes nothing but the public check target,
    // the example hooks and the example resources.
    assert_eq!(full.pair, plain.pair);
    assert_eq!(full.nodes, plain.nodes);
    assert_eq!(
        full.public_check.interval_ms,
        plain.public_check.interval_ms
    );
    assert_eq!(full.public_check.timeout_ms, plain.public_check.timeout_ms);
    assert_eq!(full.public_check.targets.len(), 1);
    assert_eq!(full.hooks.timeout_ms, plain.hooks.timeout_ms);
    assert_eq!(
        full.hooks.role_change.as_deref(),
        Some("/usr/local/bin/understudy-hook role-change")
    );
    assert!(full.hooks.pre_start.is_some());
    assert!(full.hooks.post_start.is_some());
    assert!(full.hooks.pre_stop.is_some());
    assert!(full.hooks.post_stop.is_some());
    assert_eq!(plain.hooks, HooksConfig::default());

    let kinds: Vec<&str> = full.resources.iter().map(|r| r.kind.name()).collect();
    assert_eq!(kinds, ["exec", "vip", "ocf", "systemd", "dns"]);

    let app = &full.resources[0];
    assert_eq!(app.name, "app");
    let ResourceKind::Exec(exec) = &app.kind else {
        panic!("{:?}", app.kind)
    };
    assert_eq!(exec.monitor.as_deref(), Some("/usr/local/bin/app-check"));
    // The example's explicit on_failure and failure_window_ms are the
    // defaults, as is every other resource's.
    for r in &full.resources[..3] {
        assert_eq!(r.on_failure, ResourceConfig::default_on_failure());
        assert_eq!(r.failure_window_ms, defaults::FAILURE_WINDOW_MS);
    }

    let ResourceKind::Vip(vip) = &full.resources[1].kind else {
        panic!("{:?}", full.resources[1].kind)
    };
    assert_eq!(
        vip.address,
        "203.0.113.50".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(vip.prefix_len, 24);
    assert_eq!(vip.interface, "eth0");
    assert_eq!(vip.gratuitous_arp_count, defaults::GRATUITOUS_ARP_COUNT);
    assert_eq!(
        vip.gratuitous_arp_interval_ms,
        defaults::GRATUITOUS_ARP_INTERVAL_MS
    );
    assert_eq!(vip.conflict_probe_ms, defaults::CONFLICT_PROBE_MS);

    let ResourceKind::Ocf(ocf) = &full.resources[2].kind else {
        panic!("{:?}", full.resources[2].kind)
    };
    assert_eq!(
        (ocf.provider.as_str(), ocf.agent_type.as_str()),
        ("heartbeat", "Dummy")
    );
    assert_eq!(ocf.params.len(), 2);
    assert_eq!(ocf.ocf_root, std::path::Path::new(defaults::OCF_ROOT));

    let web = &full.resources[3];
    let ResourceKind::Systemd(systemd) = &web.kind else {
        panic!("{:?}", web.kind)
    };
    assert_eq!(systemd.unit, "nginx.service");
    assert!(!systemd.user);
    assert_eq!(
        web.on_failure,
        [
            FailureAction::Restart,
            FailureAction::Run("/usr/local/bin/page-oncall".to_owned()),
            FailureAction::Switchover
        ]
    );

    let ResourceKind::Dns(dns) = &full.resources[4].kind else {
        panic!("{:?}", full.resources[4].kind)
    };
    assert_eq!(dns.server, addr("192.0.2.53:53"));
    assert_eq!(dns.record, "www.example.com.");
    assert_eq!(dns.ttl, defaults::DNS_TTL);
    assert_eq!(dns.tsig_algorithm, defaults::TSIG_ALGORITHM);
}

#[test]
fn uncommented_filled_template_keys_dns_addresses_by_node_name() {
    let text = template(
        "db",
        ["n1", "node two"],
        ["10.0.0.1", "10.0.0.2"],
        ["10.1.0.1", "10.1.0.2"],
    );
    assert!(
        text.contains("addresses = { n1 = \"198.51.100.11\", \"node two\" = \"198.51.100.12\" }"),
        "{text}"
    );
    // "node two" is not a valid node name, so use valid ones to parse.
    let text = template(
        "db",
        ["n1", "n2"],
        ["10.0.0.1", "10.0.0.2"],
        ["10.1.0.1", "10.1.0.2"],
    );
    let full = ok(&uncommented(&text));
    let ResourceKind::Dns(dns) = &full.resources[4].kind else {
        panic!("{:?}", full.resources[4].kind)
    };
    assert_eq!(
        dns.addresses,
        [
            "198.51.100.11".parse::<std::net::IpAddr>().unwrap(),
            "198.51.100.12".parse::<std::net::IpAddr>().unwrap()
        ]
    );
}
