//! The resource kinds besides exec: vip, ocf, systemd and dns. Each valid
//! form parses to the documented values, and each rule refuses with the
//! right key and line.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::{config, edit, err, ok, refused};
use understudy_config::{
    defaults, DnsResourceConfig, OcfResourceConfig, ResourceKind, SystemdResourceConfig,
    VipResourceConfig,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

// --- vip -----------------------------------------------------------------

const VIP: &str = r#"
[[resource]]
name = "vip"
kind = "vip"
address = "10.60.0.50/24"
interface = "eth0"
"#;

fn vip(text: &str) -> VipResourceConfig {
    let c = ok(text);
    match &c.resources[0].kind {
        ResourceKind::Vip(vip) => vip.clone(),
        other => panic!("not a vip: {other:?}"),
    }
}

#[test]
fn vip_defaults() {
    let c = ok(&config("", VIP));
    let r = &c.resources[0];
    assert_eq!(r.kind.name(), "vip");
    assert_eq!(r.start_timeout_ms, defaults::START_TIMEOUT_MS);
    let ResourceKind::Vip(v) = &r.kind else {
        panic!("{:?}", r.kind)
    };
    assert_eq!(
        *v,
        VipResourceConfig {
            address: ip("10.60.0.50"),
            prefix_len: 24,
            interface: "eth0".to_owned(),
            gratuitous_arp_count: 5,
            gratuitous_arp_interval_ms: 200,
            conflict_probe_ms: 500,
        }
    );
}

#[test]
fn vip_explicit_values_and_ipv6() {
    let text = config(
        "",
        &format!(
            "{VIP}gratuitous_arp_count = 0\ngratuitous_arp_interval_ms = 10000\n\
             conflict_probe_ms = 0\nmonitor_interval_ms = 1000\n"
        ),
    );
    let v = vip(&text);
    assert_eq!(v.gratuitous_arp_count, 0);
    assert_eq!(v.gratuitous_arp_interval_ms, 10_000);
    assert_eq!(v.conflict_probe_ms, 0);

    let v = vip(&config("", &edit(VIP, "10.60.0.50/24", "2001:db8::50/128")));
    assert_eq!(v.address, ip("2001:db8::50"));
    assert_eq!(v.prefix_len, 128);

    for (address, prefix) in [
        ("10.60.0.50/32", 32),
        ("10.0.0.0/31", 31),
        ("10.1.2.3/1", 1),
    ] {
        let v = vip(&config("", &edit(VIP, "10.60.0.50/24", address)));
        assert_eq!(v.prefix_len, prefix, "{address}");
    }

    let v = vip(&config("", &edit(VIP, "\"eth0\"", "\"enp0s31f6.100-x\"")));
    assert_eq!(v.interface, "enp0s31f6.100-x");
}

#[test]
fn vip_address_rules() {
    let cases = [
        ("\"10.60.0.50\"", "has no prefix length"),
        ("\"10.60.0.50/33\"", "between 1 and 32 for an IPv4 address"),
        ("\"10.60.0.50/0\"", "between 1 and 32"),
        ("\"10.60.0.50/+24\"", "between 1 and 32"),
        ("\"10.60.0.50/\"", "between 1 and 32"),
        (
            "\"2001:db8::1/129\"",
            "between 1 and 128 for an IPv6 address",
        ),
        ("\"vip.example.com/24\"", "is not an IP address"),
        ("\"10.60.0.50:80/24\"", "is not an IP address"),
        ("\"0.0.0.0/8\"", "unspecified"),
        ("\"::/64\"", "unspecified"),
        ("\"224.0.0.1/4\"", "multicast"),
        ("\"255.255.255.255/32\"", "broadcast"),
        ("\"10.60.0.0/24\"", "is the network address of 10.60.0.0/24"),
        (
            "\"10.60.0.255/24\"",
            "is the broadcast address of 10.60.0.255/24",
        ),
        ("50", "expected a string, found an integer"),
    ];
    for (value, message) in cases {
        let text = config("", &edit(VIP, "\"10.60.0.50/24\"", value));
        refused(&text, "resource[0].address", "address =", message);
    }
}

#[test]
fn vip_must_not_be_a_node_address_or_another_vip() {
    let text = config("", &edit(VIP, "10.60.0.50/24", "203.0.113.11/24"));
    refused(
        &text,
        "resource[0].address",
        "address =",
        "203.0.113.11 is also node[0].management (node \"alpha\")",
    );
    let text = config("", &edit(VIP, "10.60.0.50/24", "192.168.50.2/24"));
    refused(
        &text,
        "resource[0].address",
        "address =",
        "is also node[1].channel[0] (node \"beta\")",
    );

    let second = edit(
        &edit(VIP, "name = \"vip\"", "name = \"vip2\""),
        "\"10.60.0.50/24\"",
        "\"10.60.0.50/16\" # again",
    );
    let text = config("", &format!("{VIP}{second}"));
    refused(
        &text,
        "resource[1].address",
        "# again",
        "10.60.0.50 is already the address of resource[0] (\"vip\")",
    );
}

#[test]
fn vip_interface_rules() {
    let cases = [
        ("\"\"", "must be 1 to 15 bytes long, found 0"),
        (
            "\"abcdefghijklmnop\"",
            "must be 1 to 15 bytes long, found 16",
        ),
        ("\"eth/0\"", "invalid character '/'"),
        ("\"eth 0\"", "invalid character ' '"),
        ("\"eth0:1\"", "invalid character ':'"),
        ("\"eth\\t0\"", "invalid character '\\t'"),
        ("\"..\"", "not a valid interface name"),
        ("\".\"", "not a valid interface name"),
        ("[\"eth0\"]", "expected a string, found an array"),
    ];
    for (value, message) in cases {
        let text = config("", &edit(VIP, "\"eth0\"", value));
        refused(&text, "resource[0].interface", "interface", message);
    }
    ok(&config("", &edit(VIP, "\"eth0\"", "\"abcdefghijklmno\"")));
}

#[test]
fn vip_required_keys() {
    for key in ["address", "interface"] {
        let text = config("", &edit(VIP, &format!("\n{key} = "), "\n#removed = "));
        refused(
            &text,
            &format!("resource[0].{key}"),
            "[[resource]]",
            "required key is missing from [resource[0]]",
        );
    }
}

#[test]
fn vip_announcement_ranges() {
    let cases = [
        ("gratuitous_arp_count = 101", "between 0 and 100, found 101"),
        ("gratuitous_arp_count = -1", "between 0 and 100, found -1"),
        (
            "gratuitous_arp_interval_ms = 9",
            "between 10 and 10000, found 9",
        ),
        ("gratuitous_arp_interval_ms = 10001", "between 10 and 10000"),
        ("conflict_probe_ms = 86400001", "between 0 and 86400000"),
    ];
    for (line, message) in cases {
        let key = line.split(' ').next().unwrap_or_default();
        let text = config("", &format!("{VIP}{line}\n"));
        refused(&text, &format!("resource[0].{key}"), key, message);
    }
    let v = vip(&config("", &format!("{VIP}gratuitous_arp_count = 100\n")));
    assert_eq!(v.gratuitous_arp_count, 100);
}

#[test]
fn vip_conflict_probe_must_fit_in_start_timeout() {
    let text = config("", &format!("{VIP}conflict_probe_ms = 20000\n"));
    refused(
        &text,
        "resource[0].conflict_probe_ms",
        "conflict_probe_ms",
        "conflict_probe_ms (20000) must be less than start_timeout_ms (20000, the default)",
    );
    // The default probe against a short explicit start timeout: blame the
    // key the file set.
    let text = config("", &format!("{VIP}start_timeout_ms = 500\n"));
    refused(
        &text,
        "resource[0].start_timeout_ms",
        "start_timeout_ms",
        "conflict_probe_ms (500, the default) must be less than start_timeout_ms (500)",
    );
    ok(&config("", &format!("{VIP}start_timeout_ms = 501\n")));
}

#[test]
fn vip_unknown_keys() {
    for line in [
        "start = \"x\"",
        "monitor = \"x\"",
        "prefix_len = 24",
        "unit = \"a.service\"",
    ] {
        let key = line.split(' ').next().unwrap_or_default();
        let text = config("", &format!("{VIP}{line}\n"));
        let e = refused(
            &text,
            &format!("resource[0].{key}"),
            line,
            "unknown key in resource[0] (kind \"vip\") (expected one of:",
        );
        assert!(e.message().contains("gratuitous_arp_count"), "{e}");
        assert!(e.message().contains("monitor_interval_ms"), "{e}");
    }
}

// --- ocf -----------------------------------------------------------------

const OCF: &str = r#"
[[resource]]
name = "dummy"
kind = "ocf"
agent = "ocf:heartbeat:Dummy"
"#;

fn ocf(text: &str) -> OcfResourceConfig {
    let c = ok(text);
    match &c.resources[0].kind {
        ResourceKind::Ocf(ocf) => ocf.clone(),
        other => panic!("not ocf: {other:?}"),
    }
}

fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn ocf_defaults_and_short_agent_form() {
    let o = ocf(&config("", OCF));
    assert_eq!(
        o,
        OcfResourceConfig {
            provider: "heartbeat".to_owned(),
            agent_type: "Dummy".to_owned(),
            params: Vec::new(),
            ocf_root: Path::new("/usr/lib/ocf").to_path_buf(),
        }
    );
    let o = ocf(&config(
        "",
        &edit(OCF, "ocf:heartbeat:Dummy", "heartbeat:Dummy"),
    ));
    assert_eq!(
        (o.provider.as_str(), o.agent_type.as_str()),
        ("heartbeat", "Dummy")
    );
    let o = ocf(&config(
        "",
        &edit(OCF, "ocf:heartbeat:Dummy", "ocf:my_co.x-1:pg.sql-2"),
    ));
    assert_eq!(
        (o.provider.as_str(), o.agent_type.as_str()),
        ("my_co.x-1", "pg.sql-2")
    );
}

#[test]
fn ocf_params_keep_file_order_in_both_forms() {
    let o = ocf(&config(
        "",
        &format!("{OCF}params = {{ zeta = \"/run/x.state\", alpha = \"1\", Mixed_9 = \"\" }}\n"),
    ));
    assert_eq!(
        o.params,
        params(&[("zeta", "/run/x.state"), ("alpha", "1"), ("Mixed_9", "")])
    );

    let o = ocf(&config(
        "",
        &format!(
            "{OCF}ocf_root = \"/opt/ocf\"\n\n[resource.params]\nstate = \"/run/x.state\"\n\
             fake = \"1\"\n"
        ),
    ));
    assert_eq!(
        o.params,
        params(&[("state", "/run/x.state"), ("fake", "1")])
    );
    assert_eq!(o.ocf_root, Path::new("/opt/ocf"));

    let o = ocf(&config("", &format!("{OCF}params = {{}}\n")));
    assert!(o.params.is_empty());
}

#[test]
fn ocf_agent_rules() {
    let cases = [
        (
            "\"lsb:heartbeat:Dummy\"",
            "the class must be \"ocf\", found \"lsb\"",
        ),
        (
            "\"Dummy\"",
            "expected \"ocf:PROVIDER:TYPE\" or \"PROVIDER:TYPE\"",
        ),
        ("\"ocf:a:b:c\"", "expected \"ocf:PROVIDER:TYPE\""),
        (
            "\"ocf:heart beat:Dummy\"",
            "invalid agent provider \"heart beat\"",
        ),
        ("\"ocf:heartbeat:\"", "invalid agent type \"\""),
        ("\":Dummy\"", "invalid agent provider \"\""),
        ("\"ocf:..:Dummy\"", "invalid agent provider \"..\""),
        ("\"heartbeat:.\"", "invalid agent type \".\""),
        ("\"ocf:heartbeat:Dum/my\"", "invalid agent type \"Dum/my\""),
        ("true", "expected a string, found a boolean"),
    ];
    for (value, message) in cases {
        let text = config("", &edit(OCF, "\"ocf:heartbeat:Dummy\"", value));
        refused(&text, "resource[0].agent", "agent =", message);
    }
    let text = config("", &edit(OCF, "\nagent = ", "\n#removed = "));
    refused(
        &text,
        "resource[0].agent",
        "[[resource]]",
        "required key is missing",
    );
}

#[test]
fn ocf_param_rules() {
    let text = config(
        "",
        &format!("{OCF}params = {{ ok = \"1\", \"bad-key\" = \"2\" }}\n"),
    );
    refused(
        &text,
        "resource[0].params.bad-key",
        "params =",
        "invalid parameter name \"bad-key\"",
    );

    let text = config("", &format!("{OCF}params = {{ fake = 1 }}\n"));
    refused(
        &text,
        "resource[0].params.fake",
        "params =",
        "expected a string, found an integer",
    );

    let text = config("", &format!("{OCF}params = [\"a=1\"]\n"));
    refused(
        &text,
        "resource[0].params",
        "params =",
        "expected a table ([params]), found an array",
    );

    // In the sub-table form the error points at the offending line.
    let text = config(
        "",
        &format!("{OCF}\n[resource.params]\nstate = \"/run/x\"\ncount = 3\n"),
    );
    refused(
        &text,
        "resource[0].params.count",
        "count = 3",
        "expected a string, found an integer",
    );
    let text = config(
        "",
        &format!("{OCF}\n[resource.params]\nstate = \"/run/x\"\n\"o k\" = \"1\"\n"),
    );
    refused(
        &text,
        "resource[0].params.\"o k\"",
        "\"o k\" =",
        "invalid parameter name \"o k\"",
    );
    let text = config(
        "",
        &format!("{OCF}\n[resource.params]\nstate = \"/run/x\"\nnested = {{ a = \"1\" }}\n"),
    );
    refused(
        &text,
        "resource[0].params.nested",
        "nested =",
        "expected a string, found an inline table",
    );
    let text = config("", &format!("{OCF}params = {{ state = \"a\\u0000b\" }}\n"));
    refused(
        &text,
        "resource[0].params.state",
        "params =",
        "must not contain a NUL character",
    );
}

#[test]
fn ocf_root_and_unknown_keys() {
    let text = config("", &format!("{OCF}ocf_root = \"usr/lib/ocf\"\n"));
    refused(
        &text,
        "resource[0].ocf_root",
        "ocf_root",
        "must be an absolute path",
    );
    let text = config("", &format!("{OCF}provider = \"heartbeat\"\n"));
    refused(
        &text,
        "resource[0].provider",
        "provider",
        "unknown key in resource[0] (kind \"ocf\")",
    );
}

// --- systemd -------------------------------------------------------------

const SYSTEMD: &str = r#"
[[resource]]
name = "web"
kind = "systemd"
unit = "nginx.service"
"#;

fn systemd(text: &str) -> SystemdResourceConfig {
    let c = ok(text);
    match &c.resources[0].kind {
        ResourceKind::Systemd(s) => s.clone(),
        other => panic!("not systemd: {other:?}"),
    }
}

#[test]
fn systemd_defaults_and_explicit_user() {
    assert_eq!(
        systemd(&config("", SYSTEMD)),
        SystemdResourceConfig {
            unit: "nginx.service".to_owned(),
            user: false,
        }
    );
    let s = systemd(&config("", &format!("{SYSTEMD}user = true\n")));
    assert!(s.user);
    let s = systemd(&config("", &format!("{SYSTEMD}user = false\n")));
    assert!(!s.user);
    for unit in [
        "a.service",
        "b.socket",
        "multi-user.target",
        "srv-data.mount",
        "backup.timer",
        "watch.path",
        "getty@tty1.service",
        "x:y_z.service",
    ] {
        let s = systemd(&config("", &edit(SYSTEMD, "nginx.service", unit)));
        assert_eq!(s.unit, unit);
    }
    // systemd's escapes: the backslash is written doubled in TOML.
    let s = systemd(&config(
        "",
        &edit(
            SYSTEMD,
            "nginx.service",
            "dev-disk-by\\\\x2dlabel-data.mount",
        ),
    ));
    assert_eq!(s.unit, "dev-disk-by\\x2dlabel-data.mount");
}

#[test]
fn systemd_unit_rules() {
    let long = format!("\"{}.service\"", "a".repeat(248));
    let cases = [
        (
            "\"nginx\"",
            "is not a unit name ending in .service, .socket, .target",
        ),
        ("\".service\"", "is not a unit name ending in"),
        ("\"nginx.slice\"", "is not a unit name ending in"),
        ("\"nginx.service.d\"", "is not a unit name ending in"),
        ("\"/etc/systemd/system/nginx.service\"", "is a path"),
        ("\"sub/nginx.service\"", "is a path"),
        ("\"ng inx.service\"", "invalid character ' '"),
        ("\"ngïnx.service\"", "invalid character 'ï'"),
        (
            "\"getty@.service\"",
            "is a template unit: name an instance, e.g. \"getty@instance.service\"",
        ),
        (
            long.as_str(),
            "unit name is 256 characters long; at most 255",
        ),
        ("1", "expected a string, found an integer"),
    ];
    for (value, message) in cases {
        let text = config("", &edit(SYSTEMD, "\"nginx.service\"", value));
        refused(&text, "resource[0].unit", "unit =", message);
    }
    let max = format!("{}.service", "a".repeat(247));
    assert_eq!(
        systemd(&config("", &edit(SYSTEMD, "nginx.service", &max))).unit,
        max
    );
}

#[test]
fn systemd_required_and_typed_keys() {
    let text = config("", &edit(SYSTEMD, "\nunit = ", "\n#removed = "));
    refused(
        &text,
        "resource[0].unit",
        "[[resource]]",
        "required key is missing from [resource[0]]",
    );
    let text = config("", &format!("{SYSTEMD}user = \"root\"\n"));
    refused(
        &text,
        "resource[0].user",
        "user =",
        "expected true or false, found a string",
    );
    let text = config("", &format!("{SYSTEMD}scope = \"user\"\n"));
    refused(
        &text,
        "resource[0].scope",
        "scope",
        "unknown key in resource[0] (kind \"systemd\")",
    );
}

// --- dns -----------------------------------------------------------------

const DNS: &str = r#"
[[resource]]
name = "www"
kind = "dns"
server = "192.0.2.53"
zone = "example.com"
record = "www.example.com"
addresses = { alpha = "198.51.100.11", beta = "203.0.113.12" }
tsig_key_name = "understudy-key"
tsig_secret_file = "/etc/understudy/tsig.key"
"#;

fn dns(text: &str) -> DnsResourceConfig {
    let c = ok(text);
    match &c.resources[0].kind {
        ResourceKind::Dns(d) => d.clone(),
        other => panic!("not dns: {other:?}"),
    }
}

#[test]
fn dns_defaults_and_normalisation() {
    assert_eq!(
        dns(&config("", DNS)),
        DnsResourceConfig {
            server: addr("192.0.2.53:53"),
            zone: "example.com.".to_owned(),
            record: "www.example.com.".to_owned(),
            ttl: 30,
            addresses: [ip("198.51.100.11"), ip("203.0.113.12")],
            tsig_key_name: "understudy-key".to_owned(),
            tsig_algorithm: "hmac-sha256".to_owned(),
            tsig_secret_file: Path::new("/etc/understudy/tsig.key").to_path_buf(),
        }
    );
}

#[test]
fn dns_explicit_values() {
    let text = edit(
        &edit(
            &edit(DNS, "\"192.0.2.53\"", "\"[2001:db8::53]:5353\""),
            "zone = \"example.com\"",
            "zone = \"Example.COM.\"",
        ),
        "record = \"www.example.com\"",
        "record = \"WWW.example.com.\"\nttl = 86400\ntsig_algorithm = \"hmac-sha512\"",
    );
    let text = edit(
        &text,
        "{ alpha = \"198.51.100.11\", beta = \"203.0.113.12\" }",
        "{ beta = \"2001:db8::12\", alpha = \"2001:db8::11\" }",
    );
    let d = dns(&config("", &text));
    assert_eq!(d.server, addr("[2001:db8::53]:5353"));
    assert_eq!(d.zone, "Example.COM.");
    assert_eq!(d.record, "WWW.example.com.");
    assert_eq!(d.ttl, 86_400);
    assert_eq!(d.tsig_algorithm, "hmac-sha512");
    // Indexed like config.nodes, whatever the order in the file.
    assert_eq!(d.addresses, [ip("2001:db8::11"), ip("2001:db8::12")]);

    // The zone apex itself, a port-qualified IPv4 server, ttl 1.
    let text = edit(
        &edit(DNS, "\"www.example.com\"", "\"example.com.\"\nttl = 1"),
        "\"192.0.2.53\"",
        "\"192.0.2.53:5300\"",
    );
    let d = dns(&config("", &text));
    assert_eq!(d.record, "example.com.");
    assert_eq!(d.ttl, 1);
    assert_eq!(d.server, addr("192.0.2.53:5300"));
}

#[test]
fn dns_addresses_as_a_sub_table() {
    let text = edit(
        DNS,
        "addresses = { alpha = \"198.51.100.11\", beta = \"203.0.113.12\" }\n",
        "",
    ) + "\n[resource.addresses]\nbeta = \"203.0.113.12\"\nalpha = \"198.51.100.11\"\n";
    let d = dns(&config("", &text));
    assert_eq!(d.addresses, [ip("198.51.100.11"), ip("203.0.113.12")]);

    let text = edit(
        DNS,
        "addresses = { alpha = \"198.51.100.11\", beta = \"203.0.113.12\" }\n",
        "",
    ) + "\n[resource.addresses]\nalpha = \"198.51.100.11\"\ngamma = \"203.0.113.12\"\n";
    refused(
        &config("", &text),
        "resource[0].addresses.gamma",
        "gamma",
        "\"gamma\" is not a node of this pair; the keys of addresses are the node names \
         (alpha, beta)",
    );
}

#[test]
fn dns_server_rules() {
    let cases = [
        ("\"ns1.example.com\"", "is not an address"),
        ("\"192.0.2.53:0\"", "port 0 is not allowed"),
        ("\"0.0.0.0\"", "unspecified"),
        ("53", "expected a string, found an integer"),
    ];
    for (value, message) in cases {
        let text = config("", &edit(DNS, "\"192.0.2.53\"", value));
        refused(&text, "resource[0].server", "server", message);
    }
}

#[test]
fn dns_name_rules() {
    let long_label = "a".repeat(64);
    let long_name = vec!["abcdefghi"; 26].join(".");
    let cases = [
        ("zone", "\"example.com\"", "\"\"", "is not a domain name"),
        (
            "zone",
            "\"example.com\"",
            "\".\"",
            "the root zone is not accepted",
        ),
        (
            "zone",
            "\"example.com\"",
            "\"exa mple.com\"",
            "invalid character ' '",
        ),
        (
            "zone",
            "\"example.com\"",
            "\"example..com\"",
            "has an empty label",
        ),
        (
            "zone",
            "\"example.com\"",
            "\".example.com\"",
            "has an empty label",
        ),
        (
            "zone",
            "\"example.com\"",
            &format!("\"{long_label}.com\""),
            "is 64 characters long; at most 63",
        ),
        (
            "zone",
            "\"example.com\"",
            &format!("\"{long_name}\""),
            "domain name is 259 characters long; at most 253",
        ),
        (
            "record",
            "\"www.example.com\"",
            "\"www.example.org\"",
            "record \"www.example.org.\" is not inside zone \"example.com.\"",
        ),
        (
            "record",
            "\"www.example.com\"",
            "\"notexample.com\"",
            "is not inside zone",
        ),
        (
            "record",
            "\"www.example.com\"",
            "\"com\"",
            "is not inside zone",
        ),
        (
            "record",
            "\"www.example.com\"",
            "\"www.example.com..\"",
            "has an empty label",
        ),
        (
            "record",
            "\"www.example.com\"",
            "\"w*w.example.com\"",
            "invalid character '*'",
        ),
        (
            "tsig_key_name",
            "\"understudy-key\"",
            "\"bad key\"",
            "invalid character ' '",
        ),
        (
            "tsig_key_name",
            "\"understudy-key\"",
            "\"\"",
            "is not a domain name",
        ),
    ];
    for (key, from, to, message) in cases {
        let text = config(
            "",
            &edit(DNS, &format!("{key} = {from}"), &format!("{key} = {to}")),
        );
        refused(
            &text,
            &format!("resource[0].{key}"),
            &format!("{key} ="),
            message,
        );
    }
    let d = dns(&config(
        "",
        &edit(DNS, "\"understudy-key\"", "\"key.example.\""),
    ));
    assert_eq!(d.tsig_key_name, "key.example.");
}

#[test]
fn dns_ttl_algorithm_and_secret_file() {
    for (line, message) in [
        ("ttl = 0", "between 1 and 86400, found 0"),
        ("ttl = 86401", "between 1 and 86400, found 86401"),
        ("ttl = \"30\"", "expected an integer, found a string"),
    ] {
        let text = config("", &format!("{DNS}{line}\n"));
        refused(&text, "resource[0].ttl", "ttl =", message);
    }
    for (value, message) in [
        (
            "\"hmac-md5\"",
            "unsupported TSIG algorithm \"hmac-md5\" (supported: hmac-sha256, hmac-sha512)",
        ),
        ("\"HMAC-SHA256\"", "unsupported TSIG algorithm"),
    ] {
        let text = config("", &format!("{DNS}tsig_algorithm = {value}\n"));
        refused(
            &text,
            "resource[0].tsig_algorithm",
            "tsig_algorithm",
            message,
        );
    }
    let text = config(
        "",
        &edit(DNS, "\"/etc/understudy/tsig.key\"", "\"tsig.key\""),
    );
    refused(
        &text,
        "resource[0].tsig_secret_file",
        "tsig_secret_file",
        "must be an absolute path (starting with /), found \"tsig.key\"",
    );
    // The secret file is not read when parsing: a missing one is fine.
    let d = dns(&config(
        "",
        &edit(
            DNS,
            "/etc/understudy/tsig.key",
            "/nonexistent/understudy/tsig.key",
        ),
    ));
    assert_eq!(
        d.tsig_secret_file,
        Path::new("/nonexistent/understudy/tsig.key")
    );
}

#[test]
fn dns_required_keys() {
    for key in [
        "server",
        "zone",
        "record",
        "addresses",
        "tsig_key_name",
        "tsig_secret_file",
    ] {
        let text = config("", &edit(DNS, &format!("\n{key} = "), "\n#removed = "));
        refused(
            &text,
            &format!("resource[0].{key}"),
            "[[resource]]",
            "required key is missing from [resource[0]]",
        );
    }
}

#[test]
fn dns_address_rules() {
    const ADDRESSES: &str = "{ alpha = \"198.51.100.11\", beta = \"203.0.113.12\" }";
    let cases = [
        (
            "{ alpha = \"198.51.100.11\" }",
            "resource[0].addresses.beta",
            "no address for node \"beta\": addresses needs one for each node (alpha, beta)",
        ),
        (
            "{}",
            "resource[0].addresses.alpha",
            "no address for node \"alpha\"",
        ),
        (
            "{ alpha = \"198.51.100.11\", beta = \"203.0.113.12\", gamma = \"192.0.2.1\" }",
            "resource[0].addresses.gamma",
            "\"gamma\" is not a node of this pair",
        ),
        (
            "{ alpha = \"198.51.100.11:53\", beta = \"203.0.113.12\" }",
            "resource[0].addresses.alpha",
            "is not an IP address (no port",
        ),
        (
            "{ alpha = \"www.example.com\", beta = \"203.0.113.12\" }",
            "resource[0].addresses.alpha",
            "is not an IP address",
        ),
        (
            "{ alpha = \"198.51.100.11\", beta = \"::\" }",
            "resource[0].addresses.beta",
            "unspecified",
        ),
        (
            "{ alpha = \"198.51.100.11\", beta = 5 }",
            "resource[0].addresses.beta",
            "expected a string, found an integer",
        ),
        (
            "{ alpha = \"198.51.100.11\", beta = \"2001:db8::12\" }",
            "resource[0].addresses.beta",
            "198.51.100.11 and 2001:db8::12 are of different address families",
        ),
        (
            "[\"198.51.100.11\", \"203.0.113.12\"]",
            "resource[0].addresses",
            "expected a table ([addresses]), found an array",
        ),
    ];
    for (value, key, message) in cases {
        let text = config("", &edit(DNS, ADDRESSES, value));
        refused(&text, key, "addresses =", message);
    }
}

#[test]
fn dns_unknown_key() {
    let text = config("", &format!("{DNS}type = \"A\"\n"));
    refused(
        &text,
        "resource[0].type",
        "type =",
        "unknown key in resource[0] (kind \"dns\")",
    );
}

// --- mixed ---------------------------------------------------------------

#[test]
fn every_kind_in_one_file_keeps_file_order() {
    let exec = "\n[[resource]]\nname = \"app\"\nkind = \"exec\"\nstart = \"a\"\nstop = \"b\"\n";
    let c = ok(&config("", &format!("{VIP}{OCF}{exec}{SYSTEMD}{DNS}")));
    let kinds: Vec<&str> = c.resources.iter().map(|r| r.kind.name()).collect();
    assert_eq!(kinds, ["vip", "ocf", "exec", "systemd", "dns"]);
    // Errors in a later resource name its index.
    let bad = edit(SYSTEMD, "nginx.service", "nginx");
    let text = config("", &format!("{VIP}{OCF}{bad}"));
    let e = err(&text);
    assert_eq!(e.key(), Some("resource[2].unit"), "{e}");
}
