//! Every validation rule: each refused configuration must point at the right
//! key and line, with a message saying what is wrong.

mod common;

use common::{config, edit, err, line_of, ok, refused, BASE, FILE};
use understudy_config::ConfigError;

// --- Syntax, unknown keys, types -----------------------------------------

#[test]
fn syntax_error_has_line_and_column() {
    let text = "[pair]\nname = \"web\nx = 1\n";
    let e = err(text);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.line(), Some(2));
    assert!(e.column().is_some());
    assert_eq!(e.key(), None);
    assert!(e.to_string().starts_with(&format!("{FILE}:2:")), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error_at_the_second_one() {
    let text = config("name = \"again\"\n", "");
    let e = err(&text);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.line(), Some(line_of(&text, "again")));
    assert!(e.message().contains("duplicate key"), "{e}");
}

#[test]
fn display_is_file_line_column_key_message() {
    let text = config("failover_timeout_ms = 10\n", "");
    let e = err(&text);
    assert_eq!(
        e.to_string(),
        format!(
            "{FILE}:3:23: pair.failover_timeout_ms: failover_timeout_ms (10) must be at least \
             3 x heartbeat_interval_ms (200, the default) = 600"
        )
    );
}

#[test]
fn unknown_top_level_key() {
    let text = format!("{BASE}\n[extra]\na = 1\n");
    let e = refused(&text, "extra", "[extra]", "unknown key at the top level");
    assert_eq!(e.column(), Some(2));
}

#[test]
fn unknown_key_in_pair() {
    let text = config("heartbeat_interval = 100\n", "");
    let e = refused(
        &text,
        "pair.heartbeat_interval",
        "heartbeat_interval =",
        "unknown key in pair",
    );
    assert_eq!(e.line(), Some(3));
    assert_eq!(e.column(), Some(1));
    assert!(e.message().contains("heartbeat_interval_ms"), "{e}");
}

#[test]
fn unknown_key_in_second_node() {
    let text = edit(BASE, "name = \"beta\"\n", "name = \"beta\"\nweight = 3\n");
    refused(&text, "node[1].weight", "weight", "unknown key in node[1]");
}

#[test]
fn unknown_key_via_dotted_key_and_subtable() {
    let text = config("tls.dir = \"/x\"\n", "");
    refused(&text, "pair.tls", "tls.dir", "unknown key");
    let text = config("", "\n[pair.more]\nx = 1\n");
    refused(&text, "pair.more", "[pair.more]", "unknown key");
}

#[test]
fn unknown_key_in_public_check_and_resource() {
    let text = config("", "\n[public_check]\ntarget = [\"203.0.113.1\"]\n");
    refused(&text, "public_check.target", "target =", "unknown key");
    let text = config(
        "",
        "\n[[resource]]\nname = \"app\"\nkind = \"exec\"\nstart = \"a\"\nstop = \"b\"\nrestart = \"c\"\n",
    );
    refused(&text, "resource[0].restart", "restart", "unknown key");
}

#[test]
fn quoted_unknown_key_is_quoted_in_the_path() {
    let text = config("\"odd key\" = 1\n", "");
    refused(&text, "pair.\"odd key\"", "odd key", "unknown key");
}

#[test]
fn wrong_types_name_expected_and_found() {
    let text = config("heartbeat_interval_ms = \"200\"\n", "");
    let e = refused(
        &text,
        "pair.heartbeat_interval_ms",
        "heartbeat_interval_ms",
        "expected an integer, found a string",
    );
    assert_eq!(e.column(), Some(25));

    let text = config("auto_failover = \"yes\"\n", "");
    refused(
        &text,
        "pair.auto_failover",
        "auto_failover",
        "expected true or false",
    );

    let text = config("state_dir = 1979-05-27T07:32:00Z\n", "");
    refused(&text, "pair.state_dir", "state_dir", "found a date-time");

    let text = edit(BASE, "name = \"alpha\"", "name = 1");
    refused(
        &text,
        "node[0].name",
        "name = 1",
        "expected a string, found an integer",
    );

    let text = edit(
        BASE,
        r#"channel = ["192.168.50.1"]"#,
        r#"channel = "192.168.50.1""#,
    );
    refused(
        &text,
        "node[0].channel",
        "channel = \"192.168.50.1\"",
        "expected an array",
    );

    let text = edit(BASE, r#"channel = ["192.168.50.1"]"#, r#"channel = [7400]"#);
    refused(
        &text,
        "node[0].channel[0]",
        "channel = [7400]",
        "expected a string",
    );
}

#[test]
fn pair_must_be_a_table_and_node_an_array_of_tables() {
    let text = BASE.replacen("[pair]\nname = \"web\"\n", "pair = \"web\"\n", 1);
    refused(&text, "pair", "pair = ", "expected a table ([pair])");

    let text = r#"[pair]
name = "web"
[node]
name = "alpha"
"#;
    refused(
        text,
        "node",
        "[node]",
        "expected an array of tables ([[node]])",
    );

    let text = "node = [1, 2]\n[pair]\nname = \"web\"\n";
    refused(
        text,
        "node[0]",
        "node = [1, 2]",
        "expected a table, found an integer",
    );
}

// --- [pair] --------------------------------------------------------------

#[test]
fn missing_pair_table() {
    let text = BASE.replacen("[pair]\nname = \"web\"\n", "", 1);
    let e = err(&text);
    assert_eq!(e.key(), Some("pair"));
    assert_eq!(e.line(), Some(1));
    assert_eq!(e.column(), Some(1));
    assert!(e.message().contains("[pair] is missing"), "{e}");
}

#[test]
fn missing_pair_name_points_at_the_table() {
    let text = BASE.replacen("name = \"web\"\n", "auto_failover = true\n", 1);
    refused(
        &text,
        "pair.name",
        "[pair]",
        "required key is missing from [pair]",
    );
}

#[test]
fn pair_name_rules() {
    for bad in ["Web", "1web", "-web", "", "web_1", "wéb", &"a".repeat(33)] {
        let text = edit(BASE, "name = \"web\"", &format!("name = \"{bad}\""));
        refused(&text, "pair.name", "[pair]\nname", "invalid name");
    }
    for good in ["w", "web-1", "a0-", &"a".repeat(32)] {
        ok(&edit(BASE, "name = \"web\"", &format!("name = \"{good}\"")));
    }
}

#[test]
fn heartbeat_range() {
    for bad in ["9", "10001", "-5"] {
        let text = config(&format!("heartbeat_interval_ms = {bad}\n"), "");
        refused(
            &text,
            "pair.heartbeat_interval_ms",
            "heartbeat_interval_ms",
            "must be between 10 and 10000",
        );
    }
    ok(&config("heartbeat_interval_ms = 10\n", ""));
    ok(&config(
        "heartbeat_interval_ms = 10000\nfailover_timeout_ms = 30000\nisolation_timeout_ms = 20000\n",
        "",
    ));
}

#[test]
fn failover_must_be_three_heartbeats() {
    let text = config(
        "heartbeat_interval_ms = 500\nfailover_timeout_ms = 1499\n",
        "",
    );
    refused(
        &text,
        "pair.failover_timeout_ms",
        "failover_timeout_ms",
        "must be at least 3 x heartbeat_interval_ms (500) = 1500",
    );
    // With failover_timeout_ms left at its default, the heartbeat is blamed.
    let text = config("heartbeat_interval_ms = 1001\n", "");
    refused(
        &text,
        "pair.heartbeat_interval_ms",
        "heartbeat_interval_ms",
        "failover_timeout_ms (3000, the default)",
    );
}

#[test]
fn durations_have_an_upper_bound() {
    let text = config("failover_timeout_ms = 86400001\n", "");
    refused(
        &text,
        "pair.failover_timeout_ms",
        "failover_timeout_ms",
        "must be between 1 and 86400000",
    );
}

#[test]
fn isolation_must_be_less_than_failover() {
    let text = config("isolation_timeout_ms = 3000\n", "");
    refused(
        &text,
        "pair.isolation_timeout_ms",
        "isolation_timeout_ms",
        "must be less than failover_timeout_ms (3000, the default)",
    );
    // Default isolation (2000) against a short explicit failover timeout.
    let text = config("failover_timeout_ms = 1500\n", "");
    refused(
        &text,
        "pair.failover_timeout_ms",
        "failover_timeout_ms",
        "isolation_timeout_ms (2000, the default) must be less than",
    );
}

#[test]
fn isolation_must_be_two_heartbeats() {
    let text = config(
        "heartbeat_interval_ms = 500\n\nisolation_timeout_ms = 999\n",
        "",
    );
    refused(
        &text,
        "pair.isolation_timeout_ms",
        "isolation_timeout_ms",
        "at least 2 x heartbeat_interval_ms (500) = 1000",
    );
}

#[test]
fn probe_must_be_less_than_failover() {
    let text = config("probe_timeout_ms = 3000\n", "");
    refused(
        &text,
        "pair.probe_timeout_ms",
        "probe_timeout_ms",
        "must be less than failover_timeout_ms",
    );
    let text = config("probe_timeout_ms = 0\n", "");
    refused(
        &text,
        "pair.probe_timeout_ms",
        "probe_timeout_ms",
        "between 1 and",
    );
}

#[test]
fn paths_must_be_absolute() {
    for key in ["state_dir", "control_socket", "tls_dir"] {
        let text = config(&format!("{key} = \"relative/dir\"\n"), "");
        refused(
            &text,
            &format!("pair.{key}"),
            "relative/dir",
            "must be an absolute path",
        );
    }
}

#[test]
fn control_socket_must_fit_a_unix_socket_address() {
    let long = format!("/{}", "s".repeat(107));
    let text = config(&format!("control_socket = \"{long}\"\n"), "");
    refused(
        &text,
        "pair.control_socket",
        "control_socket",
        "at most 107 bytes",
    );
    ok(&config(
        &format!("control_socket = \"/{}\"\n", "s".repeat(106)),
        "",
    ));
}

#[test]
fn ports_must_be_valid() {
    for bad in ["0", "65536"] {
        let text = config(&format!("channel_port = {bad}\n"), "");
        refused(
            &text,
            "pair.channel_port",
            "channel_port",
            "between 1 and 65535",
        );
        let text = config(&format!("management_port = {bad}\n"), "");
        refused(
            &text,
            "pair.management_port",
            "management_port",
            "between 1 and 65535",
        );
    }
}

// --- [[node]] ------------------------------------------------------------

#[test]
fn exactly_two_nodes() {
    let one = BASE
        .split("\n[[node]]\nname = \"beta\"")
        .next()
        .unwrap_or_default()
        .to_owned();
    refused(
        &one,
        "node",
        "[[node]]",
        "exactly 2 [[node]] entries are required, found 1",
    );

    let none = "[pair]\nname = \"web\"\n";
    let e = err(none);
    assert_eq!(e.key(), Some("node"));
    assert_eq!(e.line(), Some(1));
    assert!(e.message().contains("found none"), "{e}");

    let three = format!(
        "{BASE}\n[[node]]\nname = \"gamma\"\nchannel = [\"192.168.50.3\"]\nmanagement = \"203.0.113.13\"\n"
    );
    let e = err(&three);
    assert_eq!(e.key(), Some("node[2]"));
    assert_eq!(e.line(), Some(14));
    assert!(e.message().contains("found 3"), "{e}");
}

#[test]
fn node_keys_are_required() {
    for (key, line) in [
        ("name = \"beta\"\n", "name"),
        ("channel = [\"192.168.50.2\"]\n", "channel"),
        ("management = \"203.0.113.12\"\n", "management"),
    ] {
        let text = edit(BASE, key, "");
        let e = err(&text);
        assert_eq!(e.key(), Some(format!("node[1].{line}").as_str()), "{e}");
        assert_eq!(
            e.line(),
            Some(9),
            "points at the second [[node]] header: {e}"
        );
        assert!(
            e.message()
                .contains("required key is missing from [node[1]]"),
            "{e}"
        );
    }
}

#[test]
fn node_names_follow_the_rules_and_are_unique() {
    let text = edit(BASE, "name = \"beta\"", "name = \"Beta\"");
    refused(&text, "node[1].name", "Beta", "invalid name");
    let text = edit(BASE, "name = \"beta\"", "name = \"alpha\"\n#dup");
    let e = err(&text);
    assert_eq!(e.key(), Some("node[1].name"));
    assert_eq!(e.line(), Some(10));
    assert!(e.message().contains("already used by node[0]"), "{e}");
}

#[test]
fn channel_link_count() {
    let text = edit(BASE, r#"channel = ["192.168.50.1"]"#, "channel = []");
    refused(
        &text,
        "node[0].channel",
        "channel = []",
        "expected 1 to 4 channel links, found 0",
    );
    let five = r#"channel = ["10.0.0.1", "10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.4.1"]"#;
    let text = edit(BASE, r#"channel = ["192.168.50.1"]"#, five);
    refused(&text, "node[0].channel", "10.0.4.1", "found 5");
}

#[test]
fn both_nodes_need_the_same_number_of_links() {
    let text = edit(
        BASE,
        r#"channel = ["192.168.50.1"]"#,
        r#"channel = ["192.168.50.1", "10.0.0.1"]"#,
    );
    refused(
        &text,
        "node[1].channel",
        "192.168.50.2",
        "has 1 channel link(s) but node \"alpha\" has 2",
    );
}

#[test]
fn link_ends_share_an_address_family() {
    let text = edit(
        BASE,
        r#"channel = ["192.168.50.2"]"#,
        r#"channel = ["fd00::2"]"#,
    );
    refused(
        &text,
        "node[1].channel[0]",
        "fd00::2",
        "same address family",
    );
}

#[test]
fn channel_addresses_must_be_addresses() {
    for (bad, message) in [
        ("db1.example.com", "is not an address"),
        ("192.168.50.1:", "is not an address"),
        ("192.168.50.1:70000", "is not an address"),
        ("[192.168.50.1]", "is not an address"),
        ("192.168.50.1:0", "port 0 is not allowed"),
        ("0.0.0.0", "unspecified address"),
        ("::", "unspecified address"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ] {
        let text = edit(BASE, "\"192.168.50.2\"", &format!("\"{bad}\""));
        let e = refused(
            &text,
            "node[1].channel[0]",
            "name = \"beta\"\nchannel",
            message,
        );
        assert_eq!(e.column(), Some(12), "{e}");
    }
}

#[test]
fn channel_addresses_are_unique_across_the_file() {
    // Same address in the other node, written with the explicit default port.
    let text = edit(BASE, "\"192.168.50.2\"", "\"192.168.50.1:7400\"");
    refused(
        &text,
        "node[1].channel[0]",
        "192.168.50.1:7400",
        "address 192.168.50.1:7400 is already used by node[0].channel[0]",
    );
    // Twice in the same node.
    let text = edit(
        BASE,
        r#"["192.168.50.1"]"#,
        r#"["192.168.50.1", "192.168.50.1"]"#,
    );
    let text = edit(
        &text,
        r#"["192.168.50.2"]"#,
        r#"["192.168.50.2", "10.0.0.2"]"#,
    );
    refused(
        &text,
        "node[0].channel[1]",
        "\"192.168.50.1\", \"192.168.50.1\"",
        "already used by node[0].channel[0]",
    );
}

#[test]
fn management_address_rules() {
    let text = edit(BASE, "\"203.0.113.12\"", "\"example.org\"");
    refused(
        &text,
        "node[1].management",
        "example.org",
        "is not an address",
    );
    let text = edit(BASE, "\"203.0.113.12\"", "\"203.0.113.11\"");
    let e = err(&text);
    assert_eq!(e.key(), Some("node[1].management"));
    assert_eq!(e.line(), Some(12));
    assert_eq!(e.column(), Some(14));
    assert!(
        e.message().contains("already used by node[0].management"),
        "{e}"
    );
    let text = edit(BASE, "\"203.0.113.12\"", "\"192.168.50.2:7400\"");
    refused(
        &text,
        "node[1].management",
        "192.168.50.2:7400",
        "already used by node[1].channel[0]",
    );
}

// --- [public_check] ------------------------------------------------------

#[test]
fn public_check_targets() {
    let nine: Vec<String> = (1..=9).map(|i| format!("\"203.0.113.{i}\"")).collect();
    let text = config(
        "",
        &format!("\n[public_check]\ntargets = [{}]\n", nine.join(", ")),
    );
    refused(
        &text,
        "public_check.targets",
        "targets",
        "at most 8 targets are allowed, found 9",
    );

    let text = config("", "\n[public_check]\ntargets = [\"203.0.113.1:80\"]\n");
    refused(&text, "public_check.targets[0]", "targets", "has a port");

    let text = config("", "\n[public_check]\ntargets = [\"gateway\"]\n");
    refused(
        &text,
        "public_check.targets[0]",
        "targets",
        "not an IP address",
    );

    let text = config("", "\n[public_check]\ntargets = [\"0.0.0.0\"]\n");
    refused(&text, "public_check.targets[0]", "targets", "unspecified");

    let text = config(
        "",
        "\n[public_check]\ntargets = [\n  \"203.0.113.1\",\n  \"203.0.113.1\",\n]\n",
    );
    let e = err(&text);
    assert_eq!(e.key(), Some("public_check.targets[1]"));
    assert_eq!(e.line(), Some(line_of(&text, "targets")).map(|l| l + 2));
    assert!(e.message().contains("listed twice"), "{e}");
}

#[test]
fn public_check_interval_and_timeout() {
    let text = config("", "\n[public_check]\ninterval_ms = 49\n");
    refused(
        &text,
        "public_check.interval_ms",
        "interval_ms",
        "between 50 and",
    );

    let text = config("", "\n[public_check]\ninterval_ms = 400\n");
    refused(
        &text,
        "public_check.interval_ms",
        "interval_ms",
        "timeout_ms (500, the default) must not exceed interval_ms (400)",
    );

    let text = config(
        "",
        "\n[public_check]\ninterval_ms = 1000\ntimeout_ms = 1001\n",
    );
    refused(
        &text,
        "public_check.timeout_ms",
        "timeout_ms",
        "must not exceed interval_ms (1000)",
    );

    ok(&config(
        "",
        "\n[public_check]\ninterval_ms = 50\ntimeout_ms = 50\n",
    ));
}

// --- [[resource]] --------------------------------------------------------

const RESOURCE: &str = r#"
[[resource]]
name = "app"
kind = "exec"
start = "/usr/local/bin/app-start"
stop = "/usr/local/bin/app-stop"
"#;

#[test]
fn every_kind_is_supported_and_checks_its_own_keys() {
    // Switching an exec resource to another kind keeps the common keys valid
    // but makes start/stop unknown for that kind.
    for kind in ["vip", "systemd", "ocf", "dns"] {
        let text = config("", &edit(RESOURCE, "\"exec\"", &format!("\"{kind}\"")));
        let e = refused(
            &text,
            "resource[0].start",
            "start =",
            &format!("unknown key in resource[0] (kind \"{kind}\")"),
        );
        assert!(e.message().contains("on_failure"), "{e}");
    }
}

#[test]
fn unknown_kind() {
    let text = config("", &edit(RESOURCE, "\"exec\"", "\"docker\""));
    let e = refused(&text, "resource[0].kind", "kind", "unknown kind \"docker\"");
    assert!(
        e.message()
            .contains("(supported: exec, vip, ocf, systemd, dns)"),
        "{e}"
    );
}

#[test]
fn resource_required_keys() {
    for key in ["name", "kind", "start", "stop"] {
        let text = config("", &edit(RESOURCE, &format!("\n{key} = "), "\n#removed = "));
        refused(
            &text,
            &format!("resource[0].{key}"),
            "[[resource]]",
            "required key is missing from [resource[0]]",
        );
    }
}

#[test]
fn resource_names_and_commands() {
    let text = config("", &edit(RESOURCE, "\"app\"", "\"App\""));
    refused(&text, "resource[0].name", "App", "invalid name");

    let text = config(
        "",
        &format!(
            "{RESOURCE}{}",
            edit(RESOURCE, "[[resource]]", "[[resource]] # again")
        ),
    );
    refused(
        &text,
        "resource[1].name",
        "# again\nname",
        "already used by resource[0]",
    );

    let text = config("", &edit(RESOURCE, "\"/usr/local/bin/app-stop\"", "\"  \""));
    refused(&text, "resource[0].stop", "stop", "must not be empty");

    let text = config("", &format!("{RESOURCE}monitor = \"\"\n"));
    refused(&text, "resource[0].monitor", "monitor", "must not be empty");
}

#[test]
fn resource_timeouts() {
    for key in ["start_timeout_ms", "stop_timeout_ms", "monitor_timeout_ms"] {
        let text = config("", &format!("{RESOURCE}{key} = 0\n"));
        refused(
            &text,
            &format!("resource[0].{key}"),
            key,
            "between 1 and 86400000",
        );
    }
    let text = config("", &format!("{RESOURCE}monitor_interval_ms = 99\n"));
    refused(
        &text,
        "resource[0].monitor_interval_ms",
        "monitor_interval_ms",
        "between 100 and",
    );
}

#[test]
fn at_most_64_resources() {
    let many: String = (0..65)
        .map(|i| edit(RESOURCE, "\"app\"", &format!("\"app{i}\"")))
        .collect();
    let text = config("", &many);
    let e = err(&text);
    assert_eq!(e.key(), Some("resource[64]"));
    // The error points at the [[resource]] header, the line before the name.
    assert_eq!(e.line(), Some(line_of(&text, "\"app64\"") - 1));
    assert!(
        e.message().contains("at most 64 [[resource]] entries"),
        "{e}"
    );
    let sixty_four: String = (0..64)
        .map(|i| edit(RESOURCE, "\"app\"", &format!("\"app{i}\"")))
        .collect();
    assert_eq!(ok(&config("", &sixty_four)).resources.len(), 64);
}
