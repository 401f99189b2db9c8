//! System tests of the floating address on a real (namespaced) Ethernet
//! segment: the address is added through netlink in one node's namespace,
//! a client reaches it, a move re-points the client's ARP / neighbour cache
//! through our announcements alone, probes find the other holder, and add /
//! remove are idempotent. See `lab/mod.rs` for the topology.
//!
//! They need root (namespaces, raw sockets) and skip otherwise, except under
//! CI=true where they fail instead. All traffic stays inside the namespaces
//! each test creates and deletes.

mod lab;

use std::net::IpAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{in_netns, join, spawn_in_netns, Lab, N1_MAC, N2_MAC};
use understudy_vip::{Error, Vip, DEFAULT_ARP_INTERVAL};

const VIP4: &str = "10.77.0.50";
const VIP6: &str = "fd77::50";

fn vip(addr: &str, prefix_len: u8) -> Vip {
    let address: IpAddr = addr.parse().expect("test literal");
    Vip::new(address, prefix_len, "eth0").expect("valid vip")
}

/// Adds the address in `role`'s namespace without announcing it.
fn add_quietly(lab: &Lab, role: &str, addr: &'static str, prefix_len: u8) {
    in_netns(&lab.ns(role), move || async move {
        vip(addr, prefix_len).add().await.expect("add");
    });
}

fn remove(lab: &Lab, role: &str, addr: &'static str, prefix_len: u8) {
    in_netns(&lab.ns(role), move || async move {
        vip(addr, prefix_len).remove().await.expect("remove");
    });
}

#[test]
fn added_address_is_on_the_interface_and_reachable() {
    if !lab::require_root("added_address_is_on_the_interface_and_reachable") {
        return;
    }
    let lab = Lab::new();
    let present = in_netns(&lab.ns("n1"), || async {
        let v = vip(VIP4, 24);
        v.add_and_announce()
            .await
            .expect("add and announce")
            .finished()
            .await
            .expect("all announcements sent");
        v.is_present().await.expect("is_present")
    });
    assert!(present);
    assert!(
        lab.addrs("n1").contains("inet 10.77.0.50/24"),
        "{}",
        lab.addrs("n1")
    );
    assert!(!lab.addrs("n2").contains("10.77.0.50"), "only n1 got it");
    assert!(lab.ping("client", VIP4), "client cannot ping {VIP4}");
    assert_eq!(lab.neigh_mac("client", VIP4).as_deref(), Some(N1_MAC));
}

#[test]
fn move_repoints_client_by_gratuitous_arp_alone() {
    if !lab::require_root("move_repoints_client_by_gratuitous_arp_alone") {
        return;
    }
    let lab = Lab::new();
    // The client learns n1's MAC for the address the ordinary way.
    add_quietly(&lab, "n1", VIP4, 24);
    assert!(lab.ping("client", VIP4));
    assert_eq!(lab.neigh_mac("client", VIP4).as_deref(), Some(N1_MAC));

    // Watch the wire from the client while the address moves to n2. The
    // client itself sends nothing from here on: whatever changes its cache
    // entry (still valid, so it has no reason to ask) is our announcement.
    let (ready_tx, ready_rx) = mpsc::channel();
    let capture = lab::capture(
        &lab.ns("client"),
        0x0806,
        Duration::from_millis(1500),
        ready_tx,
    );
    ready_rx.recv().expect("capture started");
    remove(&lab, "n1", VIP4, 24);
    let mover = spawn_in_netns(&lab.ns("n2"), || async {
        let v = vip(VIP4, 24); // defaults: 5 announcements, 200 ms apart
        let start = Instant::now();
        let announcement = v.add_and_announce().await.expect("add and announce");
        let returned_after = start.elapsed();
        announcement
            .finished()
            .await
            .expect("all announcements sent");
        returned_after
    });
    let switched = lab.wait_neigh("client", VIP4, N2_MAC, Duration::from_secs(1));
    let returned_after = join(mover);
    assert!(
        switched.is_some(),
        "client still has {:?} for {VIP4} after 1 s",
        lab.neigh_mac("client", VIP4)
    );
    // Only the first announcement is awaited; the other four (800 ms) are not.
    assert!(
        returned_after < 2 * DEFAULT_ARP_INTERVAL,
        "add_and_announce took {returned_after:?}"
    );

    // On the wire: five gratuitous ARP requests from n2, about 200 ms apart.
    let garps: Vec<Instant> = join(capture)
        .into_iter()
        .filter(|(_, f)| {
            f.len() >= 42
                && f[0..6] == [0xff; 6]
                && f[20..22] == [0, 1] // request
                && lab::format_mac(&f[22..28]) == N2_MAC
                && f[28..32] == [10, 77, 0, 50] // sender IP
                && f[38..42] == [10, 77, 0, 50] // target IP
        })
        .map(|(t, _)| t)
        .collect();
    assert_eq!(garps.len(), 5, "gratuitous ARPs seen by the client");
    for pair in garps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(150) && gap <= Duration::from_millis(500),
            "gap between announcements: {gap:?}"
        );
    }
    assert!(lab.addrs("n2").contains("inet 10.77.0.50/24"));
    assert!(!lab.addrs("n1").contains("10.77.0.50"));
    assert!(lab.ping("client", VIP4), "client cannot reach {VIP4} on n2");

    // And back with a single announcement: the one sent before
    // add_and_announce returns is enough on its own (the namespace thread's
    // runtime, and with it any background task, ends right after).
    remove(&lab, "n2", VIP4, 24);
    in_netns(&lab.ns("n1"), || async {
        let v = vip(VIP4, 24).with_announcements(1, DEFAULT_ARP_INTERVAL);
        let a = v.add_and_announce().await.expect("add and announce");
        assert!(
            a.is_finished(),
            "nothing left to send after one announcement"
        );
    });
    assert!(
        lab.wait_neigh("client", VIP4, N1_MAC, Duration::from_secs(1))
            .is_some(),
        "client still has {:?} after the move back",
        lab.neigh_mac("client", VIP4)
    );
}

#[test]
fn probe_finds_the_other_holder() {
    if !lab::require_root("probe_finds_the_other_holder") {
        return;
    }
    let lab = Lab::new();
    add_quietly(&lab, "n1", VIP4, 24);
    add_quietly(&lab, "n1", VIP6, 64);
    let wait = Duration::from_millis(500);
    let (held4, free4, held6, free6) = in_netns(&lab.ns("n2"), move || async move {
        let t = Instant::now();
        let held4 = vip(VIP4, 24).probe_conflict(wait).await.expect("probe");
        let answered_after = t.elapsed();
        assert!(
            answered_after < wait,
            "an answer ends the probe early: {answered_after:?}"
        );
        let t = Instant::now();
        let free4 = vip("10.77.0.51", 24)
            .probe_conflict(wait)
            .await
            .expect("probe");
        let waited = t.elapsed();
        assert!(
            waited >= wait && waited < wait + Duration::from_millis(300),
            "a free address is probed for the whole wait: {waited:?}"
        );
        let held6 = vip(VIP6, 64).probe_conflict(wait).await.expect("probe");
        let free6 = vip("fd77::51", 64)
            .probe_conflict(wait)
            .await
            .expect("probe");
        (held4, free4, held6, free6)
    });
    assert_eq!(held4.as_deref(), Some(N1_MAC));
    assert_eq!(free4, None);
    assert_eq!(held6.as_deref(), Some(N1_MAC));
    assert_eq!(free6, None);

    // The holder probing its own address hears no other host.
    let own = in_netns(&lab.ns("n1"), move || async move {
        vip(VIP4, 24)
            .probe_conflict(Duration::from_millis(300))
            .await
            .expect("probe")
    });
    assert_eq!(own, None);
}

#[test]
fn ipv6_move_repoints_client_by_neighbour_advertisement() {
    if !lab::require_root("ipv6_move_repoints_client_by_neighbour_advertisement") {
        return;
    }
    let lab = Lab::new();
    add_quietly(&lab, "n1", VIP6, 64);
    let n1 = lab.addrs("n1");
    let line = n1
        .lines()
        .find(|l| l.contains("inet6 fd77::50/64"))
        .unwrap_or_else(|| panic!("{n1}"));
    assert!(
        !line.contains("tentative"),
        "added with NODAD, usable at once: {line}"
    );
    assert!(lab.ping("client", VIP6), "client cannot ping {VIP6}");
    assert_eq!(lab.neigh_mac("client", VIP6).as_deref(), Some(N1_MAC));

    let (ready_tx, ready_rx) = mpsc::channel();
    let capture = lab::capture(
        &lab.ns("client"),
        0x86dd,
        Duration::from_millis(1500),
        ready_tx,
    );
    ready_rx.recv().expect("capture started");
    remove(&lab, "n1", VIP6, 64);
    let mover = spawn_in_netns(&lab.ns("n2"), || async {
        let v = vip(VIP6, 64);
        let a = v.add_and_announce().await.expect("add and announce");
        a.finished().await.expect("all announcements sent");
    });
    let switched = lab.wait_neigh("client", VIP6, N2_MAC, Duration::from_secs(1));
    join(mover);
    assert!(
        switched.is_some(),
        "client still has {:?} for {VIP6} after 1 s",
        lab.neigh_mac("client", VIP6)
    );
    // On the wire: five unsolicited NAs to ff02::1 with hop limit 255,
    // override set, solicited clear, target = the address, option = n2's MAC.
    let vip6: std::net::Ipv6Addr = VIP6.parse().expect("literal");
    let nas = join(capture)
        .into_iter()
        .filter(|(_, f)| {
            f.len() >= 14 + 40 + 32
                && f[14 + 6] == 58
                && f[14 + 7] == 255
                && f[14 + 24..14 + 40]
                    == "ff02::1"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("literal")
                        .octets()
                && f[54] == 136
                && f[58] == 0x20
                && f[62..78] == vip6.octets()
                && f[78..80] == [2, 1]
                && lab::format_mac(&f[80..86]) == N2_MAC
        })
        .count();
    assert_eq!(nas, 5, "neighbour advertisements seen by the client");
    assert!(lab.ping("client", VIP6), "client cannot reach {VIP6} on n2");
}

#[test]
fn add_and_remove_are_idempotent() {
    if !lab::require_root("add_and_remove_are_idempotent") {
        return;
    }
    let lab = Lab::new();
    for (addr, prefix_len) in [("10.77.0.60", 24), ("fd77::60", 64)] {
        let present = in_netns(&lab.ns("n1"), move || async move {
            let v = vip(addr, prefix_len);
            v.remove()
                .await
                .expect("removing an absent address is fine");
            assert!(!v.is_present().await.expect("is_present"));
            v.add().await.expect("add");
            v.add().await.expect("adding again is fine");
            v.is_present().await.expect("is_present")
        });
        assert!(present);
        let listing = lab.addrs("n1");
        let needle = format!(" {addr}/{prefix_len} ");
        assert_eq!(
            listing.matches(&needle).count(),
            1,
            "exactly once: {listing}"
        );

        in_netns(&lab.ns("n1"), move || async move {
            let v = vip(addr, prefix_len);
            v.remove().await.expect("remove");
            v.remove().await.expect("removing again is fine");
            assert!(!v.is_present().await.expect("is_present"));
            // Each call's netlink connection task has ended with the call,
            // so a long-running daemon does not accumulate tasks and sockets.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(alive, 0, "tasks left behind");
        });
        assert!(!lab.addrs("n1").contains(&needle), "{}", lab.addrs("n1"));
    }
}

#[test]
fn remove_stops_announcements_in_progress() {
    if !lab::require_root("remove_stops_announcements_in_progress") {
        return;
    }
    let lab = Lab::new();
    in_netns(&lab.ns("n1"), || async {
        let v = vip(VIP4, 24).with_announcements(10, Duration::from_millis(200));
        let a = v.add_and_announce().await.expect("add and announce");
        assert!(!a.is_finished(), "nine more to send");
        v.clone().remove().await.expect("remove");
        let t = Instant::now();
        a.finished()
            .await
            .expect("stopped on purpose counts as success");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "not left running for 1.8 s"
        );
    });
    assert!(!lab.addrs("n1").contains("10.77.0.50"));
}

#[test]
fn errors_name_the_interface_and_address() {
    if !lab::require_root("errors_name_the_interface_and_address") {
        return;
    }
    let lab = Lab::new();
    in_netns(&lab.ns("n1"), || async {
        let missing = Vip::new(VIP4.parse().expect("literal"), 24, "pub0").expect("valid");
        let err = missing.add().await.expect_err("no such interface");
        assert!(matches!(err, Error::NoSuchInterface { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "interface pub0 does not exist (needed for 10.77.0.50)"
        );
        assert!(
            missing.is_present().await.is_err(),
            "a typo is not 'not present'"
        );
        assert!(missing
            .probe_conflict(Duration::from_millis(10))
            .await
            .is_err());
        // Nothing can be held on an interface that is not there.
        missing.remove().await.expect("remove is still fine");

        // Never announce an address this host does not have.
        for (addr, prefix_len) in [("10.77.0.52", 24), ("fd77::52", 64)] {
            let v = vip(addr, prefix_len);
            let err = v.announce().await.expect_err("not held");
            assert!(matches!(err, Error::NotHeld { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("refusing to announce {addr} on interface eth0: the address is not on it")
            );
        }

        // Loopback has no Ethernet address to announce or probe with.
        let lo = Vip::new("10.77.0.51".parse().expect("literal"), 32, "lo").expect("valid");
        let err = lo
            .probe_conflict(Duration::from_millis(10))
            .await
            .expect_err("not Ethernet");
        assert!(matches!(err, Error::NotEthernet { .. }), "{err:?}");
        assert!(err.to_string().contains("interface lo"), "{err}");
        assert!(err.to_string().contains("10.77.0.51"), "{err}");
    });
}

/// Control for the two move tests: without any announcement the client keeps
/// the old MAC for longer than they allow, so what re-pointed it there was
/// the announcement and not something the kernels did by themselves.
#[test]
fn without_announcements_client_keeps_the_old_mac() {
    if !lab::require_root("without_announcements_client_keeps_the_old_mac") {
        return;
    }
    let lab = Lab::new();
    for (addr, prefix_len) in [(VIP4, 24), (VIP6, 64)] {
        add_quietly(&lab, "n1", addr, prefix_len);
        assert!(lab.ping("client", addr));
        assert_eq!(lab.neigh_mac("client", addr).as_deref(), Some(N1_MAC));
        remove(&lab, "n1", addr, prefix_len);
        in_netns(&lab.ns("n2"), move || async move {
            let v = vip(addr, prefix_len).with_announcements(0, DEFAULT_ARP_INTERVAL);
            v.add_and_announce().await.expect("add");
        });
        assert_eq!(
            lab.wait_neigh("client", addr, N2_MAC, Duration::from_millis(1500)),
            None,
            "the client re-pointed {addr} without an announcement"
        );
        assert_eq!(lab.neigh_mac("client", addr).as_deref(), Some(N1_MAC));
        remove(&lab, "n2", addr, prefix_len);
    }
}
