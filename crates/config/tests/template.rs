//! The configuration template: it parses as shipped and when filled in,
//! documents every key, and its commented-out defaults and example resource
//! are themselves valid.

mod common;

use std::net::SocketAddr;

use common::{err, ok};
use understudy_config::{template, ResourceKind, TEMPLATE};

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

/// Uncomment every `# key = value` line (and the `# [[resource]]` header),
/// replacing `targets = []` by its commented example.
fn uncommented(text: &str) -> String {
    text.lines()
        .filter(|line| *line != "targets = []")
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let is_setting = rest == "[[resource]]"
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
fn commented_defaults_and_example_resource_are_valid() {
    let text = uncommented(TEMPLATE);
    assert!(text.contains("\nheartbeat_interval_ms = 200\n"), "{text}");
    let full = ok(&text);
    let plain = ok(TEMPLATE);
    // Uncommenting the defaults changes nothing but the public check target
    // and the example resource.
    assert_eq!(full.pair, plain.pair);
    assert_eq!(full.nodes, plain.nodes);
    assert_eq!(
        full.public_check.interval_ms,
        plain.public_check.interval_ms
    );
    assert_eq!(full.public_check.timeout_ms, plain.public_check.timeout_ms);
    assert_eq!(full.public_check.targets.len(), 1);
    assert_eq!(full.resources.len(), 1);
    let app = &full.resources[0];
    assert_eq!(app.name, "app");
    let ResourceKind::Exec(exec) = &app.kind;
    assert_eq!(exec.monitor.as_deref(), Some("/usr/local/bin/app-check"));
}
