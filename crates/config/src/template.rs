//! A fully commented configuration file to start from, as a constant
//! ([`TEMPLATE`]) and filled in for a given pair ([`template`]).
//!
//! The text is written once, in the `template_text!` macro, with the
//! pair-specific values as parameters: [`TEMPLATE`] instantiates it with the
//! example pair "web" (nodes "alpha" and "beta"), and [`template`] with
//! `format!` placeholders, so both always say the same thing.

/// The template text with its variable parts given as string literals, each
/// already a complete TOML value (quoted), or a TOML key for `node_key*`.
/// The text itself contains no braces: they are the `lbrace`/`rbrace`
/// parameters (`"{"`/`"}"` for the constant, `"{{"`/`"}}"` when the result
/// is a `format!` string).
macro_rules! template_text {
    (
        pair = $pair:literal,
        control_socket = $socket:literal,
        tls_dir = $tls:literal,
        node0 = $n0:literal,
        node1 = $n1:literal,
        channel0 = $c0:literal,
        channel1 = $c1:literal,
        management0 = $m0:literal,
        management1 = $m1:literal,
        node_key0 = $k0:literal,
        node_key1 = $k1:literal,
        lbrace = $lb:literal,
        rbrace = $rb:literal $(,)?
    ) => {
        concat!(
            "# Understudy configuration.
#
# This one file is shared by both nodes of the pair: install the same file on
# both machines. Keys that are commented out show their default value;
# uncomment one to change it. Durations are in milliseconds. Addresses are
# written \"IP\" or \"IP:PORT\" (IPv6 as \"[2001:db8::1]:7400\" or
# \"2001:db8::1\"); host names are not accepted.

[pair]
# Name of the pair (required): 1 to 32 characters from a-z, 0-9 and \"-\",
# starting with a letter.
name = ",
            $pair,
            "

# How often each node sends a heartbeat to its peer on every channel link.
# Default 200; allowed 10 to 10000.
# heartbeat_interval_ms = 200

# How long the peer may stay silent on every channel link before it is
# declared failed. Default 3000; at least 3 x heartbeat_interval_ms.
# failover_timeout_ms = 3000

# How long the active node may be cut off (from its peer and from the public
# check targets) before it considers itself isolated and gives up its
# resources. Default 2000; less than failover_timeout_ms, so an isolated
# active has given up before its peer takes over, and at least
# 2 x heartbeat_interval_ms.
# isolation_timeout_ms = 2000

# Timeout for probing the peer's management address, used to tell a failed
# peer from a failed channel. Default: the smaller of 500 and
# failover_timeout_ms / 4; less than failover_timeout_ms.
# probe_timeout_ms = 500

# Take over automatically when the peer is declared failed. With false, the
# standby only reports the failure and waits for an operator. Default true.
# auto_failover = true

# Absolute directory where each node keeps its persistent state.
# Default \"/var/lib/understudy\".
# state_dir = \"/var/lib/understudy\"

# Absolute path of the Unix socket the local command-line tool talks to.
# Default \"/run/understudy/<pair name>.sock\".
# control_socket = ",
            $socket,
            "

# Absolute directory holding the pair's TLS files: ca.pem, and for each node
# <node name>.pem and <node name>.key. Default \"/etc/understudy/<pair name>\".
# tls_dir = ",
            $tls,
            "

# Port used for channel addresses written without one. Default 7400.
# channel_port = 7400

# Port used for management addresses written without one. Default 7401.
# management_port = 7401

# Port on which each node accepts the peer's replication streams (on the
# address of its first channel link). Default 7402.
# replication_port = 7402

# How many automatic switchovers caused by resource failures (an on_failure
# \"switchover\", see the resources below) are allowed within the failure
# window (the longest failure_window_ms of the resources) before automatic
# moves stop and the pair waits for an operator. 0 disables such moves.
# Failover after a failed peer is not limited by this. Default 2; allowed 0
# to 100.
# auto_move_limit = 2

# How long a node leaving the active role waits for the peer to confirm every
# replicated change. A switchover not confirmed in that time is called off:
# the applications start again where they ran. A shutdown goes ahead (what the
# peer lacks is kept in quarantine when the copies meet again). Raise it for a
# slow link with a large async backlog. Default 30000; at least 1000.
# drain_timeout_ms = 30000

# Exactly two [[node]] entries, one per machine.
#
# name:       the node's name (required), same rules as the pair name, and
#             different from the other node's. It also names the node's TLS
#             files.
# channel:    1 to 4 channel link addresses of this node (required), on which
#             the nodes exchange heartbeats. Link i of one node talks to
#             link i of the other, so both nodes list the same number of
#             links, with matching address families. Independent networks
#             per link protect against a single network fault. No address
#             may appear twice in the file.
# management: the node's management address (required), which the peer
#             probes when the channel goes silent.

[[node]]
name = ",
            $n0,
            "
channel = [",
            $c0,
            "]
management = ",
            $m0,
            "

[[node]]
name = ",
            $n1,
            "
channel = [",
            $c1,
            "]
management = ",
            $m1,
            "

# Public reachability check (the whole table is optional).
[public_check]
# Up to 8 IP addresses (no port) outside the pair, for example the default
# gateway, that the active checks to know it can still reach the public
# network. Empty disables the check; Understudy then warns that the active
# cannot detect isolation from the public network and that failover relies
# on the management probe alone. Default: empty.
targets = []
# targets = [\"203.0.113.1\"]

# Time between two checks. Default 1000; at least 50.
# interval_ms = 1000

# How long one check may take. Default 500; at most interval_ms.
# timeout_ms = 500

# Hook commands (the whole table is optional): command lines run with
# /bin/sh -c on the node where the event happens. Each is optional and none
# is set by default; the commands below are only examples. Hooks inform:
# a failing or slow hook is logged and never stops a role change.
#
# pre_start:   run before the node starts its resources.
# post_start:  run after the node has started its resources.
# pre_stop:    run before the node stops its resources.
# post_stop:   run after the node has stopped its resources.
# role_change: run whenever the node's role changes.
# timeout_ms:  how long one hook may run. Default 10000.
#
# [hooks]
# pre_start = \"/usr/local/bin/understudy-hook pre-start\"
# post_start = \"/usr/local/bin/understudy-hook post-start\"
# pre_stop = \"/usr/local/bin/understudy-hook pre-stop\"
# post_stop = \"/usr/local/bin/understudy-hook post-stop\"
# role_change = \"/usr/local/bin/understudy-hook role-change\"
# timeout_ms = 10000

# Replicated directories: 0 to 16 [[replicate]] entries. On the active node,
# `path` is a capture filesystem over this node's copy: every change is
# numbered and streamed to the passive, which applies it in order to its own
# copy. `path` is not mounted on the passive.
#
# name:             unique set name (required), same rules as the pair name.
# path:             the absolute path applications use, the same on both
#                   nodes (required). Must not overlap another set or the
#                   state_dir.
# mode:             \"sync\": fsync returns once the passive stored the data
#                   durably (no acknowledged write lost by a failover); if the
#                   passive is gone, once its lease has run out (the failover
#                   timeout, at least 1 s); a passive cut off while the active
#                   served on does not take over on its own then;
#                   \"async\": fsync returns once the data is durable here, the
#                   passive trails by a bounded lag. Default \"sync\".
# queue_max_bytes:  changes waiting for the passive (memory plus a spill file)
#                   before the set stops queueing; the passive is then brought
#                   back by a resync of the files changed since (every change
#                   is noted in a change log).
#                   Default 1073741824 (1 GiB); at least 4194304.
# memory_max_bytes: the part of that queue kept in memory. Default 67108864
#                   (64 MiB), at most queue_max_bytes.
# data_dir:         this node's copy. Default <state_dir>/sets/<name>/data.
# sync_rate_max_bytes_per_s: cap on what a resync of the passive sends per
#                   second. Default 0 (no cap). Live changes wait behind at most
#                   about 20 MiB of resync data: a resync record (4 MiB at most)
#                   is added only once less than 16 MiB waits to be sent (or
#                   after 5 s of waiting for that).
#
# [[replicate]]
# name = \"data\"
# path = \"/srv/data\"
# mode = \"sync\"
# queue_max_bytes = 1073741824

# Resources: 0 to 64 [[resource]] entries, started in file order and stopped
# in reverse order. Below is a commented example of each kind; uncomment and
# edit the ones you need.
#
# Keys of every kind:
#
# name:                unique resource name (required), same rules as the
#                      pair name.
# kind:                \"exec\", \"vip\", \"ocf\", \"systemd\" or \"dns\" (required).
# start_timeout_ms:    how long start may take. Default 20000.
# stop_timeout_ms:     how long stop may take. Default 20000.
# monitor_timeout_ms:  how long one monitor run may take. Default 10000.
# monitor_interval_ms: time between monitor runs. Default 10000; at least 100.
# on_failure:          what to do on the 1st, 2nd, 3rd... monitor failure
#                      within failure_window_ms; the last entry repeats for
#                      every further failure. 1 to 10 entries, each
#                      \"restart\" (stop and start the resource again on this
#                      node), \"switchover\" (move the resources to the peer,
#                      within pair.auto_move_limit), \"alert\" (only report
#                      the failure) or ",
            $lb,
            " run = \"COMMAND\" ",
            $rb,
            " (run a command
#                      line with /bin/sh -c). Default
#                      [\"restart\", \"restart\", \"switchover\"].
# failure_window_ms:   failures older than this are forgotten. Default
#                      600000 (10 minutes); at least monitor_interval_ms.
#
# An \"exec\" resource runs shell command lines with /bin/sh -c.
#
# start:   command line that starts the resource (required).
# stop:    command line that stops the resource (required).
# monitor: command line that checks the resource; exit status 0 means
#          healthy (optional).
#
# [[resource]]
# name = \"app\"
# kind = \"exec\"
# start = \"/usr/local/bin/app-start\"
# stop = \"/usr/local/bin/app-stop\"
# monitor = \"/usr/local/bin/app-check\"
# start_timeout_ms = 20000
# stop_timeout_ms = 20000
# monitor_timeout_ms = 10000
# monitor_interval_ms = 10000
# on_failure = [\"restart\", \"restart\", \"switchover\"]
# failure_window_ms = 600000

# A \"vip\" resource is a virtual IP address: the active node adds it to an
# interface and announces it with gratuitous ARP (IPv4) or unsolicited
# neighbour advertisements (IPv6).
#
# address:                    \"IP/PREFIX\" (required): IPv4 with a prefix of
#                             1 to 32, or IPv6 with 1 to 128. Not an address
#                             of either node, nor of another vip resource.
# interface:                  the interface to add it to (required): 1 to 15
#                             characters, without \"/\", \":\" or whitespace.
# gratuitous_arp_count:       announcements sent after adding the address.
#                             Default 5; allowed 0 to 100.
# gratuitous_arp_interval_ms: time between two announcements. Default 200;
#                             allowed 10 to 10000.
# conflict_probe_ms:          how long to listen for another host answering
#                             for the address before taking it. Default 500;
#                             0 skips the probe; less than start_timeout_ms.
#
# [[resource]]
# name = \"vip\"
# kind = \"vip\"
# address = \"203.0.113.50/24\"
# interface = \"eth0\"
# gratuitous_arp_count = 5
# gratuitous_arp_interval_ms = 200
# conflict_probe_ms = 500

# An \"ocf\" resource runs an OCF resource agent (as used by Pacemaker),
# <ocf_root>/resource.d/<provider>/<type>.
#
# agent:    \"ocf:PROVIDER:TYPE\" or \"PROVIDER:TYPE\" (required); provider and
#           type use A-Z, a-z, 0-9, \"_\", \".\" and \"-\".
# params:   the agent's parameters, passed as OCF_RESKEY_<name>, in order:
#           an inline table as below, or a [resource.params] table after the
#           resource's other keys. Names use A-Z, a-z, 0-9 and \"_\"; values
#           are strings. Default: none.
# ocf_root: absolute OCF root directory. Default \"/usr/lib/ocf\".
#
# [[resource]]
# name = \"dummy\"
# kind = \"ocf\"
# agent = \"ocf:heartbeat:Dummy\"
# params = ",
            $lb,
            " state = \"/run/understudy-dummy.state\", fake = \"1\" ",
            $rb,
            "
# ocf_root = \"/usr/lib/ocf\"

# A \"systemd\" resource starts, stops and checks a systemd unit.
#
# unit: the unit's name (required), ending in .service, .socket, .target,
#       .mount, .timer or .path; a name, not a path.
# user: false for the system manager, true for the user manager of the user
#       running Understudy (systemctl --user). Default false.
#
# [[resource]]
# name = \"web-server\"
# kind = \"systemd\"
# unit = \"nginx.service\"
# user = false
# on_failure = [\"restart\", ",
            $lb,
            " run = \"/usr/local/bin/page-oncall\" ",
            $rb,
            ", \"switchover\"]

# A \"dns\" resource points a DNS record at the active node, with dynamic
# updates (RFC 2136) signed with a TSIG key.
#
# server:           the DNS server accepting the updates, \"IP\" or \"IP:PORT\"
#                   (required); the default port is 53.
# zone:             the zone to update (required), e.g. \"example.com.\".
# record:           the record's name (required), inside the zone. The
#                   trailing dot is optional on both.
# ttl:              the record's TTL in seconds. Default 30; allowed 1 to
#                   86400.
# addresses:        for each node, by name, the address the record points
#                   at while that node is active (required): both IPv4 (an
#                   A record) or both IPv6 (an AAAA record).
# tsig_key_name:    the TSIG key's name (required).
# tsig_algorithm:   \"hmac-sha256\" or \"hmac-sha512\". Default \"hmac-sha256\".
# tsig_secret_file: absolute path of the file holding the key's base64
#                   secret (required). It is read when the record is
#                   updated, not when the configuration is loaded.
#
# [[resource]]
# name = \"www-dns\"
# kind = \"dns\"
# server = \"192.0.2.53:53\"
# zone = \"example.com.\"
# record = \"www.example.com.\"
# ttl = 30
# addresses = ",
            $lb,
            " ",
            $k0,
            " = \"198.51.100.11\", ",
            $k1,
            " = \"198.51.100.12\" ",
            $rb,
            "
# tsig_key_name = \"understudy-key.\"
# tsig_algorithm = \"hmac-sha256\"
# tsig_secret_file = \"/etc/understudy/dns-tsig.key\"
"
        )
    };
}

/// A fully commented configuration file for the example pair "web" with
/// nodes "alpha" (192.168.50.1, management 203.0.113.11) and "beta"
/// (192.168.50.2, management 203.0.113.12). Every key is present, either set
/// or commented out with its default; it parses with [`parse`](crate::parse).
pub const TEMPLATE: &str = template_text!(
    pair = "\"web\"",
    control_socket = "\"/run/understudy/web.sock\"",
    tls_dir = "\"/etc/understudy/web\"",
    node0 = "\"alpha\"",
    node1 = "\"beta\"",
    channel0 = "\"192.168.50.1\"",
    channel1 = "\"192.168.50.2\"",
    management0 = "\"203.0.113.11\"",
    management1 = "\"203.0.113.12\"",
    node_key0 = "alpha",
    node_key1 = "beta",
    lbrace = "{",
    rbrace = "}",
);

/// [`TEMPLATE`] filled in for the pair `pair` with nodes `nodes`, each with
/// one channel address (`channel[i]`) and a management address
/// (`management[i]`), all written "IP" or "IP:PORT".
///
/// The values are inserted as properly escaped TOML strings, so the output
/// is always valid TOML; whether the values themselves are acceptable is
/// checked by [`parse`](crate::parse), which should be run on the result.
pub fn template(pair: &str, nodes: [&str; 2], channel: [&str; 2], management: [&str; 2]) -> String {
    format!(
        template_text!(
            pair = "{pair}",
            control_socket = "{control_socket}",
            tls_dir = "{tls_dir}",
            node0 = "{node0}",
            node1 = "{node1}",
            channel0 = "{channel0}",
            channel1 = "{channel1}",
            management0 = "{management0}",
            management1 = "{management1}",
            node_key0 = "{node_key0}",
            node_key1 = "{node_key1}",
            lbrace = "{{",
            rbrace = "}}",
        ),
        pair = toml_string(pair),
        control_socket = toml_string(&format!("/run/understudy/{pair}.sock")),
        tls_dir = toml_string(&format!("/etc/understudy/{pair}")),
        node0 = toml_string(nodes[0]),
        node1 = toml_string(nodes[1]),
        channel0 = toml_string(channel[0]),
        channel1 = toml_string(channel[1]),
        management0 = toml_string(management[0]),
        management1 = toml_string(management[1]),
        node_key0 = toml_key(nodes[0]),
        node_key1 = toml_key(nodes[1]),
    )
}

/// `text` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        text.to_owned()
    } else {
        toml_string(text)
    }
}

/// `text` as a TOML basic string, quoted and escaped (never spans lines).
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::{toml_key, toml_string};

    #[test]
    fn toml_string_escapes_quotes_backslashes_and_controls() {
        assert_eq!(toml_string("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\\u0007\"");
    }

    #[test]
    fn toml_key_is_bare_when_possible() {
        assert_eq!(toml_key("alpha-1_x"), "alpha-1_x");
        assert_eq!(toml_key("a b"), "\"a b\"");
        assert_eq!(toml_key(""), "\"\"");
    }
}
