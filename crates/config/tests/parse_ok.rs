//! Valid configurations: defaults are filled in, explicit values are kept,
//! addresses are resolved, and the `Config` helpers behave.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use common::{config, edit, ok, BASE, FILE};
use understudy_config::{defaults, ConfigError, FailureAction, HooksConfig, ResourceKind};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn minimal_config_gets_every_default() {
    let c = ok(BASE);
    assert_eq!(c.source, PathBuf::from(FILE));
    assert_eq!(c.pair.name, "web");
    assert_eq!(c.pair.heartbeat_interval_ms, 200);
    assert_eq!(c.pair.failover_timeout_ms, 3000);
    assert_eq!(c.pair.isolation_timeout_ms, 2000);
    assert_eq!(c.pair.probe_timeout_ms, 500);
    assert!(c.pair.auto_failover);
    assert_eq!(c.pair.state_dir, Path::new("/var/lib/understudy"));
    assert_eq!(c.pair.control_socket, Path::new("/run/understudy/web.sock"));
    assert_eq!(c.pair.tls_dir, Path::new("/etc/understudy/web"));
    assert_eq!(c.pair.channel_port, 7400);
    assert_eq!(c.pair.management_port, 7401);
    assert_eq!(c.pair.auto_move_limit, 2);
    assert_eq!(c.hooks, HooksConfig::default());
    assert_eq!(c.hooks.timeout_ms, 10_000);
    assert_eq!(c.hooks.pre_start, None);

    assert_eq!(c.nodes[0].name, "alpha");
    assert_eq!(c.nodes[0].channel, vec![addr("192.168.50.1:7400")]);
    assert_eq!(c.nodes[0].management, addr("203.0.113.11:7401"));
    assert_eq!(c.nodes[1].name, "beta");
    assert_eq!(c.nodes[1].channel, vec![addr("192.168.50.2:7400")]);
    assert_eq!(c.nodes[1].management, addr("203.0.113.12:7401"));

    assert!(c.public_check.targets.is_empty());
    assert!(!c.public_check.enabled());
    assert_eq!(c.public_check.interval_ms, 1000);
    assert_eq!(c.public_check.timeout_ms, 500);
    assert!(c.resources.is_empty());

    assert_eq!(c.pair.ca_file(), Path::new("/etc/understudy/web/ca.pem"));
    assert_eq!(
        c.pair.cert_file("alpha"),
        Path::new("/etc/understudy/web/alpha.pem")
    );
    assert_eq!(
        c.pair.key_file("alpha"),
        Path::new("/etc/understudy/web/alpha.key")
    );
}

#[test]
fn explicit_values_are_kept() {
    let text = config(
        "heartbeat_interval_ms = 100\n\
         failover_timeout_ms = 5000\n\
         isolation_timeout_ms = 4000\n\
         probe_timeout_ms = 800\n\
         auto_failover = false\n\
         state_dir = \"/srv/us\"\n\
         control_socket = \"/tmp/us.sock\"\n\
         tls_dir = \"/srv/tls\"\n\
         channel_port = 9000\n\
         management_port = 9001\n",
        r#"
[public_check]
targets = ["203.0.113.1", "2001:db8::1"]
interval_ms = 2000
timeout_ms = 2000

[[resource]]
name = "db"
kind = "exec"
start = "systemctl start postgresql"
stop = "systemctl stop postgresql"
monitor = "pg_isready"
start_timeout_ms = 60000
stop_timeout_ms = 30000
monitor_timeout_ms = 5000
monitor_interval_ms = 2000

[[resource]]
name = "app"
kind = "exec"
start = "/usr/local/bin/app-start"
stop = "/usr/local/bin/app-stop"
"#,
    );
    let c = ok(&text);
    assert_eq!(c.pair.heartbeat_interval_ms, 100);
    assert_eq!(c.pair.failover_timeout_ms, 5000);
    assert_eq!(c.pair.isolation_timeout_ms, 4000);
    assert_eq!(c.pair.probe_timeout_ms, 800);
    assert!(!c.pair.auto_failover);
    assert_eq!(c.pair.state_dir, Path::new("/srv/us"));
    assert_eq!(c.pair.control_socket, Path::new("/tmp/us.sock"));
    assert_eq!(c.pair.tls_dir, Path::new("/srv/tls"));
    assert_eq!(c.nodes[0].channel, vec![addr("192.168.50.1:9000")]);
    assert_eq!(c.nodes[1].management, addr("203.0.113.12:9001"));

    assert_eq!(
        c.public_check.targets,
        vec![
            "203.0.113.1".parse::<IpAddr>().expect("ip"),
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        ]
    );
    assert_eq!(c.public_check.interval_ms, 2000);
    assert_eq!(c.public_check.timeout_ms, 2000);

    assert_eq!(c.resources.len(), 2);
    let db = &c.resources[0];
    assert_eq!(db.name, "db");
    assert_eq!(db.kind.name(), "exec");
    let ResourceKind::Exec(exec) = &db.kind else {
        panic!("db is not exec: {:?}", db.kind)
    };
    assert_eq!(exec.start, "systemctl start postgresql");
    assert_eq!(exec.stop, "systemctl stop postgresql");
    assert_eq!(exec.monitor.as_deref(), Some("pg_isready"));
    assert_eq!(db.start_timeout_ms, 60000);
    assert_eq!(db.stop_timeout_ms, 30000);
    assert_eq!(db.monitor_timeout_ms, 5000);
    assert_eq!(db.monitor_interval_ms, 2000);

    let app = &c.resources[1];
    assert_eq!(app.name, "app");
    let ResourceKind::Exec(exec) = &app.kind else {
        panic!("app is not exec: {:?}", app.kind)
    };
    assert_eq!(exec.monitor, None);
    assert_eq!(app.start_timeout_ms, defaults::START_TIMEOUT_MS);
    assert_eq!(app.stop_timeout_ms, defaults::STOP_TIMEOUT_MS);
    assert_eq!(app.monitor_timeout_ms, defaults::MONITOR_TIMEOUT_MS);
    assert_eq!(app.monitor_interval_ms, defaults::MONITOR_INTERVAL_MS);
    assert_eq!(
        app.on_failure,
        [
            FailureAction::Restart,
            FailureAction::Restart,
            FailureAction::Switchover
        ]
    );
    assert_eq!(app.failure_window_ms, 600_000);
}

#[test]
fn probe_timeout_default_is_a_quarter_of_a_short_failover_timeout() {
    let c = ok(&config(
        "failover_timeout_ms = 1000\nisolation_timeout_ms = 800\n",
        "",
    ));
    assert_eq!(c.pair.probe_timeout_ms, 250);
    let c = ok(&config("failover_timeout_ms = 8000\n", ""));
    assert_eq!(c.pair.probe_timeout_ms, 500);
}

#[test]
fn control_socket_and_tls_dir_defaults_follow_the_pair_name() {
    let c = ok(&edit(BASE, "name = \"web\"", "name = \"db-2\""));
    assert_eq!(
        c.pair.control_socket,
        Path::new("/run/understudy/db-2.sock")
    );
    assert_eq!(c.pair.tls_dir, Path::new("/etc/understudy/db-2"));
}

#[test]
fn address_forms_are_resolved() {
    let text = edit(
        BASE,
        r#"channel = ["192.168.50.1"]"#,
        r#"channel = ["192.168.50.1:7500", "fd00::1", "[fd00:1::1]:7600", "[fd00:2::1]"]"#,
    );
    let text = edit(
        &text,
        r#"channel = ["192.168.50.2"]"#,
        r#"channel = ["192.168.50.2:7500", "fd00::2", "[fd00:1::2]:7600", "[fd00:2::2]"]"#,
    );
    let text = edit(
        &text,
        r#"management = "203.0.113.12""#,
        r#"management = "[2001:db8::12]:9""#,
    );
    let c = ok(&text);
    assert_eq!(
        c.nodes[0].channel,
        vec![
            addr("192.168.50.1:7500"),
            addr("[fd00::1]:7400"),
            addr("[fd00:1::1]:7600"),
            addr("[fd00:2::1]:7400"),
        ]
    );
    assert_eq!(c.nodes[1].management, addr("[2001:db8::12]:9"));
}

#[test]
fn nodes_on_one_host_may_differ_by_port_only() {
    let text = edit(
        BASE,
        r#"channel = ["192.168.50.2"]"#,
        r#"channel = ["192.168.50.1:7500"]"#,
    );
    let text = edit(
        &text,
        r#"management = "203.0.113.12""#,
        r#"management = "203.0.113.11:7501""#,
    );
    let c = ok(&text);
    assert_eq!(c.nodes[1].channel, vec![addr("192.168.50.1:7500")]);
}

#[test]
fn inline_tables_are_accepted_for_nodes() {
    let text = r#"
node = [
  { name = "alpha", channel = ["10.0.0.1"], management = "10.1.0.1" },
  { name = "beta", channel = ["10.0.0.2"], management = "10.1.0.2" },
]

[pair]
name = "web"
"#;
    let c = ok(text);
    assert_eq!(c.nodes[1].name, "beta");
}

#[test]
fn node_lookup_and_peer() {
    let c = ok(BASE);
    let (index, node) = c.node("beta").expect("beta exists");
    assert_eq!(index, 1);
    assert_eq!(node.name, "beta");
    assert_eq!(c.peer_of(index).name, "alpha");
    assert_eq!(c.peer_of(0).name, "beta");

    let e = c.node("gamma").expect_err("gamma does not exist");
    assert!(matches!(
        &e,
        ConfigError::UnknownNode { name, valid, .. } if name == "gamma" && valid == &["alpha", "beta"]
    ));
    let text = e.to_string();
    assert!(
        text.contains("gamma") && text.contains("alpha, beta"),
        "{text}"
    );
    assert_eq!(e.key(), Some("node"));
    assert_eq!(e.line(), None);
}

#[test]
#[should_panic(expected = "out of range")]
fn peer_of_a_bad_index_panics() {
    let c = ok(BASE);
    let _ = c.peer_of(2);
}

#[test]
fn warnings_for_no_public_check_and_single_links() {
    let c = ok(BASE);
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "public_check.targets is empty: the active cannot detect isolation from the public \
         network, and failover relies on the management probe alone"
    );
    assert!(warnings[1].contains("single channel link"));

    let text = edit(
        BASE,
        r#"channel = ["192.168.50.1"]"#,
        r#"channel = ["192.168.50.1", "10.9.0.1"]"#,
    );
    let text = edit(
        &text,
        r#"channel = ["192.168.50.2"]"#,
        r#"channel = ["192.168.50.2", "10.9.0.2"]"#,
    );
    let text = text + "\n[public_check]\ntargets = [\"203.0.113.1\"]\n";
    assert!(ok(&text).warnings().is_empty());
}

#[test]
fn an_empty_public_check_table_is_the_default() {
    let c = ok(&config("", "\n[public_check]\n"));
    assert_eq!(c.public_check, Default::default());
}
