//! The standard two-node topology for Understudy system tests, and the
//! network faults a test can inject into it.
//!
//! ```text
//!            switch namespace (bridges only)
//!   a ─ch0── [brch0] ──ch0─ b        10.50.0.1 / 10.50.0.2
//!   a ─ch1── [brch1] ──ch1─ b        10.51.0.1 / 10.51.0.2   (if 2 links)
//!   a ─pub── [brpub] ──pub─ b        10.60.0.11 / 10.60.0.12
//!                 └────pub─ client   10.60.0.100
//! ```
//!
//! The bridges live in their own "switch" namespace so that nothing is
//! ever added to the root namespace. The switch-side veth ends are named
//! `<a|b|c>-<ifname>`; node-side ends are `ch<k>` and `pub`, the same in
//! every node, so configs can name them statically.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Once;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{sweep_stale, Netns};
use crate::util::tool_path;
use crate::wait_until;

/// Most channel links a [`PairNet`] supports (the daemon uses one or two).
pub const MAX_CHANNEL_LINKS: usize = 2;

/// Interface name of the public link inside nodes and the client.
pub const PUBLIC_IFNAME: &str = "pub";

/// Prefix length of every harness subnet.
pub const PREFIX_LEN: u8 = 24;

/// Interface name of channel link `link` inside a node namespace.
pub fn channel_ifname(link: usize) -> String {
    format!("ch{link}")
}

const NODE_TAGS: [&str; 2] = ["a", "b"];

/// Two nodes, a client and a switch; Drop deletes all four namespaces,
/// which also destroys every veth, bridge, address and firewall rule.
#[derive(Debug)]
pub struct PairNet {
    nodes: [Netns; 2],
    client: Netns,
    // Dropped last by field order; the order does not matter for
    // correctness (deleting either end of a veth deletes the pair).
    switch: Netns,
    links: usize,
}

impl PairNet {
    /// Builds the topology with `channel_links` (1 or 2) channel bridges.
    /// The first call in a process also runs [`sweep_stale`].
    pub fn new(channel_links: usize) -> Result<PairNet> {
        if !(1..=MAX_CHANNEL_LINKS).contains(&channel_links) {
            bail!("channel_links must be 1..={MAX_CHANNEL_LINKS}, got {channel_links}");
        }
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            for name in sweep_stale() {
                eprintln!("understudy-testbed: removed stale netns {name}");
            }
        });

        // Each Netns is owned as soon as it exists, so an error anywhere
        // below drops (deletes) whatever was already made.
        let switch = Netns::new("sw")?;
        let nodes = [Netns::new(NODE_TAGS[0])?, Netns::new(NODE_TAGS[1])?];
        let client = Netns::new("c")?;
        let net = PairNet {
            nodes,
            client,
            switch,
            links: channel_links,
        };
        net.build().context("building PairNet topology")?;
        Ok(net)
    }

    fn build(&self) -> Result<()> {
        for k in 0..self.links {
            let br = format!("brch{k}");
            self.add_bridge(&br)?;
            for (i, (ns, tag)) in self.nodes.iter().zip(NODE_TAGS).enumerate() {
                let addr = Self::channel_addr(i, k);
                self.plug(ns, tag, &channel_ifname(k), &br, addr)?;
            }
        }
        self.add_bridge("brpub")?;
        for (i, (ns, tag)) in self.nodes.iter().zip(NODE_TAGS).enumerate() {
            let addr = Self::public_addr(i);
            self.plug(ns, tag, PUBLIC_IFNAME, "brpub", addr)?;
        }
        self.plug(
            &self.client,
            "c",
            PUBLIC_IFNAME,
            "brpub",
            Self::client_addr(),
        )?;

        // veths and bridge ports come up asynchronously; wait (bounded)
        // until every node-side end reports carrier so the first ping of a
        // test does not race the setup.
        let mut ends: Vec<(&Netns, String)> = Vec::new();
        for n in &self.nodes {
            for k in 0..self.links {
                ends.push((n, channel_ifname(k)));
            }
            ends.push((n, PUBLIC_IFNAME.to_string()));
        }
        ends.push((&self.client, PUBLIC_IFNAME.to_string()));
        for (ns, ifname) in ends {
            let up = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                (operstate(ns, &ifname).as_deref() == Some("UP")).then_some(())
            });
            if up.is_none() {
                bail!(
                    "{ifname} in {} did not come up within 5s (state {:?})",
                    ns.name(),
                    operstate(ns, &ifname)
                );
            }
        }
        Ok(())
    }

    fn add_bridge(&self, br: &str) -> Result<()> {
        // STP off and no forward delay: ports forward as soon as they have
        // carrier, so heal_* takes effect immediately.
        self.switch.ip(&[
            "link",
            "add",
            br,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.switch.ip(&["link", "set", br, "up"])?;
        Ok(())
    }

    /// One veth "cable": switch end `<tag>-<ifname>` on bridge `br`, far
    /// end `ifname` inside `ns` with `addr`/24. The pair is created inside
    /// the switch namespace and its peer is placed straight into `ns`, so
    /// it never appears in the root namespace.
    fn plug(&self, ns: &Netns, tag: &str, ifname: &str, br: &str, addr: IpAddr) -> Result<()> {
        let sw_end = format!("{tag}-{ifname}");
        debug_assert!(sw_end.len() <= 15);
        self.switch.ip(&[
            "link",
            "add",
            &sw_end,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        self.switch
            .ip(&["link", "set", &sw_end, "master", br, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{PREFIX_LEN}"),
            "dev",
            ifname,
        ])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Node namespace: 0 = a, 1 = b.
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[check_node(i)]
    }

    /// The client namespace (also the "gateway" the nodes ping to check
    /// their public link).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The switch namespace holding the bridges (for inspection).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// How many channel links this net has.
    pub fn channel_links(&self) -> usize {
        self.links
    }

    /// Names of all four namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        [&self.switch, &self.nodes[0], &self.nodes[1], &self.client]
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    /// Node `i`'s address on channel link `link`: 10.(50+link).0.(i+1).
    pub fn channel_addr(i: usize, link: usize) -> IpAddr {
        assert!(link < MAX_CHANNEL_LINKS, "channel link {link} out of range");
        let i = check_node(i);
        IpAddr::V4(Ipv4Addr::new(10, 50 + link as u8, 0, 1 + i as u8))
    }

    /// Node `i`'s public address: 10.60.0.(11+i).
    pub fn public_addr(i: usize) -> IpAddr {
        let i = check_node(i);
        IpAddr::V4(Ipv4Addr::new(10, 60, 0, 11 + i as u8))
    }

    /// The client's public address, 10.60.0.100.
    pub fn client_addr() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 60, 0, 100))
    }

    fn check_link(&self, link: usize) -> Result<()> {
        if link >= self.links {
            bail!(
                "channel link {link} does not exist (this net has {})",
                self.links
            );
        }
        Ok(())
    }

    /// Sets the switch end of a cable down or up: the node loses carrier and
    /// packets vanish in both directions, with no RST or ICMP error — what
    /// pulling a cable does.
    fn set_switch_port(&self, tag: &str, ifname: &str, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.switch
            .ip(&["link", "set", &format!("{tag}-{ifname}"), state])?;
        Ok(())
    }

    /// Pulls node `node`'s cable on channel link `link`.
    pub fn cut_channel(&self, node: usize, link: usize) -> Result<()> {
        self.check_link(link)?;
        self.set_switch_port(NODE_TAGS[check_node(node)], &channel_ifname(link), false)
    }

    /// Plugs node `node`'s channel cable on `link` back in.
    pub fn heal_channel(&self, node: usize, link: usize) -> Result<()> {
        self.check_link(link)?;
        self.set_switch_port(NODE_TAGS[check_node(node)], &channel_ifname(link), true)
    }

    /// Pulls all of node `node`'s channel cables.
    pub fn cut_all_channels(&self, node: usize) -> Result<()> {
        (0..self.links).try_for_each(|k| self.cut_channel(node, k))
    }

    /// Plugs all of node `node`'s channel cables back in.
    pub fn heal_all_channels(&self, node: usize) -> Result<()> {
        (0..self.links).try_for_each(|k| self.heal_channel(node, k))
    }

    /// Pulls node `node`'s public cable.
    pub fn cut_public(&self, node: usize) -> Result<()> {
        self.set_switch_port(NODE_TAGS[check_node(node)], PUBLIC_IFNAME, false)
    }

    /// Plugs node `node`'s public cable back in.
    pub fn heal_public(&self, node: usize) -> Result<()> {
        self.set_switch_port(NODE_TAGS[check_node(node)], PUBLIC_IFNAME, true)
    }

    /// Drops every IP packet node `from` sends out of channel link `link`
    /// (an OUTPUT-hook rule in `from`'s namespace); packets from the peer
    /// still arrive. Carrier stays up, so only traffic tells the daemon.
    /// Uses nftables (`nft`), else iptables. Idempotent. ARP is not
    /// filtered (it does not pass the IP output hook).
    pub fn cut_channel_one_way(&self, from: usize, link: usize) -> Result<()> {
        self.check_link(link)?;
        let ns = self.node(from);
        let ifname = channel_ifname(link);
        match firewall()? {
            Firewall::Nft(nft) => {
                let t = oneway_table(link);
                // "add; delete; add" replaces any earlier copy atomically,
                // in one nft transaction.
                let script = format!(
                    "add table inet {t}; delete table inet {t}; \
                     add table inet {t} {{ chain out {{ type filter hook output priority 0; \
                     policy accept; oifname \"{ifname}\" counter drop; }}; }}"
                );
                ns.run_ok(&[&nft, &script])?;
            }
            Firewall::Ipt(ipt) => {
                let rule = ["OUTPUT", "-o", &ifname, "-j", "DROP"];
                let exists = ns.run(&[&[ipt.as_str(), "-w", "-C"][..], &rule].concat())?;
                if !exists.status.success() {
                    ns.run_ok(&[&[ipt.as_str(), "-w", "-A"][..], &rule].concat())?;
                }
            }
        }
        Ok(())
    }

    /// Removes the rule added by [`PairNet::cut_channel_one_way`].
    /// Idempotent.
    pub fn heal_channel_one_way(&self, from: usize, link: usize) -> Result<()> {
        self.check_link(link)?;
        let ns = self.node(from);
        let ifname = channel_ifname(link);
        match firewall()? {
            Firewall::Nft(nft) => {
                let t = oneway_table(link);
                ns.run_ok(&[&nft, &format!("add table inet {t}; delete table inet {t}")])?;
            }
            Firewall::Ipt(ipt) => {
                let rule = ["OUTPUT", "-o", &ifname, "-j", "DROP"];
                // Bounded: there is at most one copy, a few is paranoia.
                for _ in 0..8 {
                    let out = ns.run(&[&[ipt.as_str(), "-w", "-D"][..], &rule].concat())?;
                    if !out.status.success() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl PairNet {
    /// Splits the two nodes apart on the public network while each keeps reaching the
    /// client (so both keep passing their public checks): every IP packet a node sends to
    /// the other's public address is dropped (an OUTPUT rule in each node's namespace).
    /// With the channel cut as well, each node believes the other dead: a split brain.
    /// nftables only. Idempotent.
    pub fn split_public(&self) -> Result<()> {
        let Firewall::Nft(nft) = firewall()? else {
            bail!("split_public needs `nft` (Debian package nftables)");
        };
        for i in 0..2 {
            let peer = Self::public_addr(1 - i);
            let t = PEER_TABLE;
            let script = format!(
                "add table inet {t}; delete table inet {t}; \
                 add table inet {t} {{ chain out {{ type filter hook output priority 0; \
                 policy accept; ip daddr {peer} counter drop; }}; }}"
            );
            self.node(i).run_ok(&[&nft, &script])?;
        }
        Ok(())
    }

    /// Removes what [`PairNet::split_public`] added. Idempotent.
    pub fn heal_split_public(&self) -> Result<()> {
        let Firewall::Nft(nft) = firewall()? else {
            bail!("heal_split_public needs `nft` (Debian package nftables)");
        };
        let t = PEER_TABLE;
        for i in 0..2 {
            self.node(i)
                .run_ok(&[&nft, &format!("add table inet {t}; delete table inet {t}")])?;
        }
        Ok(())
    }
}

const PEER_TABLE: &str = "ustb_split_public";

impl PairNet {
    /// A slow link: every channel cable is capped at `kbit` kbit/s in both directions
    /// (an htb qdisc on the switch's ports; the kernel here has no netem, so no added
    /// delay, but a full queue behind a slow link delays everything after it).
    pub fn slow_channels(&self, kbit: u64) -> Result<()> {
        for tag in NODE_TAGS {
            for link in 0..self.links {
                let dev = format!("{tag}-{}", channel_ifname(link));
                self.switch.run_ok(&[
                    "tc", "qdisc", "replace", "dev", &dev, "root", "handle", "1:", "htb",
                    "default", "1",
                ])?;
                self.switch.run_ok(&[
                    "tc",
                    "class",
                    "replace",
                    "dev",
                    &dev,
                    "parent",
                    "1:",
                    "classid",
                    "1:1",
                    "htb",
                    "rate",
                    &format!("{kbit}kbit"),
                ])?;
            }
        }
        Ok(())
    }

    /// Removes what [`PairNet::slow_channels`] added. Idempotent.
    pub fn heal_slow_channels(&self) -> Result<()> {
        for tag in NODE_TAGS {
            for link in 0..self.links {
                let dev = format!("{tag}-{}", channel_ifname(link));
                let _ = self
                    .switch
                    .run(&["tc", "qdisc", "del", "dev", &dev, "root"]);
            }
        }
        Ok(())
    }
}

fn check_node(i: usize) -> usize {
    assert!(i < 2, "node index must be 0 (a) or 1 (b), got {i}");
    i
}

fn oneway_table(link: usize) -> String {
    format!("ustb_oneway_ch{link}")
}

enum Firewall {
    Nft(String),
    Ipt(String),
}

fn firewall() -> Result<Firewall> {
    if let Some(p) = tool_path("nft") {
        return Ok(Firewall::Nft(p.to_string_lossy().into_owned()));
    }
    if let Some(p) = tool_path("iptables") {
        return Ok(Firewall::Ipt(p.to_string_lossy().into_owned()));
    }
    bail!("one-way cuts need `nft` (Debian package nftables) or `iptables`; neither is installed")
}

/// `operstate` of `ifname` in `ns` ("UP", "DOWN", "LOWERLAYERDOWN", ...).
fn operstate(ns: &Netns, ifname: &str) -> Option<String> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("operstate")?.as_str().map(str::to_string)
}
