//! System tests of the harness itself: topology, faults, cleanup.
//!
//! They need root and network namespaces; without them they print SKIP
//! (or fail under `CI=true`, see `require_root`). They also need `ping`
//! (iputils-ping) and, for the one-way test, `nft` (nftables) — `.ci/run`
//! installs both.

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use understudy_testbed::*;

/// Tests run serially even under the default parallel runner: several
/// assert on "no namespace with this pid's prefix is left", which another
/// test's live PairNet would break, and pings timing out on a busy
/// 2-core machine would make the fault tests flaky.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !require_root(test) {
        return None;
    }
    ensure_tools(&["ping"]).expect("test prerequisites");
    // A failed earlier test poisons the lock; the state it guards is the
    // kernel's, which Drop already cleaned, so carry on.
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Reachable within a few retries (the first ping after a heal may have to
/// redo ARP).
fn reaches(ns: &Netns, addr: std::net::IpAddr) -> bool {
    wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        ns.can_ping(addr).then_some(())
    })
    .is_some()
}

fn ours() -> Vec<String> {
    let prefix = ns_prefix();
    list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Running, stopped or sleeping: anything but gone or a zombie (killed
/// orphans stay zombies until init gets round to reaping them).
fn pid_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.trim().chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

#[test]
fn pairnet_connectivity() {
    let Some(_g) = setup("pairnet_connectivity") else {
        return;
    };
    let net = PairNet::new(2).unwrap();
    let a = net.node(0);
    for link in 0..2 {
        assert!(
            reaches(a, PairNet::channel_addr(1, link)),
            "a->b link {link}"
        );
    }
    assert!(reaches(a, PairNet::public_addr(1)), "a->b public");
    assert!(reaches(a, PairNet::client_addr()), "a->client");
    assert!(reaches(net.node(1), PairNet::client_addr()), "b->client");
    assert!(reaches(net.client(), PairNet::public_addr(0)), "client->a");
    // Loopback is up everywhere.
    assert!(reaches(net.switch(), "127.0.0.1".parse().unwrap()));
}

#[test]
fn cut_channel_affects_only_that_link() {
    let Some(_g) = setup("cut_channel_affects_only_that_link") else {
        return;
    };
    let net = PairNet::new(2).unwrap();
    let a = net.node(0);
    assert!(reaches(a, PairNet::channel_addr(1, 0)));

    net.cut_channel(0, 0).unwrap();
    assert!(
        !a.can_ping(PairNet::channel_addr(1, 0)),
        "link 0 must be cut"
    );
    assert!(
        reaches(a, PairNet::channel_addr(1, 1)),
        "link 1 still works"
    );
    assert!(reaches(a, PairNet::public_addr(1)), "public still works");

    net.heal_channel(0, 0).unwrap();
    assert!(
        reaches(a, PairNet::channel_addr(1, 0)),
        "heal restores link 0"
    );

    net.cut_all_channels(1).unwrap();
    assert!(!a.can_ping(PairNet::channel_addr(1, 0)));
    assert!(!a.can_ping(PairNet::channel_addr(1, 1)));
    assert!(reaches(a, PairNet::public_addr(1)));
    net.heal_all_channels(1).unwrap();
    assert!(reaches(a, PairNet::channel_addr(1, 0)));
    assert!(reaches(a, PairNet::channel_addr(1, 1)));
}

#[test]
fn cut_public_isolates_node_from_client() {
    let Some(_g) = setup("cut_public_isolates_node_from_client") else {
        return;
    };
    let net = PairNet::new(1).unwrap();
    net.cut_public(0).unwrap();
    assert!(!net.node(0).can_ping(PairNet::client_addr()), "a cut off");
    assert!(
        reaches(net.node(1), PairNet::client_addr()),
        "b still reaches client"
    );
    assert!(
        reaches(net.node(0), PairNet::channel_addr(1, 0)),
        "channel unaffected"
    );
    net.heal_public(0).unwrap();
    assert!(
        reaches(net.node(0), PairNet::client_addr()),
        "heal restores"
    );
}

#[test]
fn drop_removes_namespaces() {
    let Some(_g) = setup("drop_removes_namespaces") else {
        return;
    };
    let net = PairNet::new(2).unwrap();
    let names = net.namespaces();
    assert_eq!(names.len(), 4);
    let listed = list_namespaces();
    for n in &names {
        assert!(listed.contains(n), "{n} exists while the net lives");
    }
    drop(net);
    let listed = list_namespaces();
    for n in &names {
        assert!(!listed.contains(n), "{n} deleted on drop");
    }
    assert_eq!(ours(), Vec::<String>::new(), "no namespace with our prefix");
}

#[test]
fn panic_still_cleans_up() {
    let Some(_g) = setup("panic_still_cleans_up") else {
        return;
    };
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let net = PairNet::new(1).unwrap();
        *names.lock().unwrap() = net.namespaces();
        panic!("simulated test failure");
    });
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 4);
    let listed = list_namespaces();
    for n in &names {
        assert!(!listed.contains(n), "{n} deleted during unwinding");
    }
}

#[test]
fn proc_dropped_is_killed_with_its_group() {
    let Some(_g) = setup("proc_dropped_is_killed_with_its_group") else {
        return;
    };
    let dir = run_dir("proc_dropped");
    let ns = Netns::new("p").unwrap();

    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let mut p = spawn_in(&ns, cmd, &dir.join("sleep.log")).unwrap();
    let pid = p.pid();
    assert!(p.is_running());
    assert!(ns.pids().contains(&pid), "sleep runs inside the namespace");
    drop(p);
    assert!(!pid_exists(pid), "sleep {pid} gone after drop");

    // A forked grandchild dies too (same process group).
    let mut cmd = ns.command("sh");
    cmd.args(["-c", "sleep 1000 & echo started; sleep 1000"]);
    let p = spawn(cmd, &dir.join("sh.log")).unwrap();
    let two = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let pids = ns.pids();
        (pids.len() >= 3).then_some(pids)
    })
    .expect("sh and two sleeps running");
    drop(p);
    for pid in two {
        assert!(!pid_exists(pid), "{pid} killed with the group");
    }
    let log = std::fs::read_to_string(dir.join("sh.log")).unwrap();
    assert!(log.contains("started"), "stdout goes to the log: {log:?}");
}

#[test]
fn proc_stop_cont_kill() {
    let Some(_g) = setup("proc_stop_cont_kill") else {
        return;
    };
    let dir = run_dir("proc_stop_cont_kill");
    let ns = Netns::new("s").unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let mut p = spawn_in(&ns, cmd, &dir.join("sleep.log")).unwrap();
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten()
    };
    p.stop();
    let stopped = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        (state(p.pid()) == Some('T')).then_some(())
    });
    assert!(stopped.is_some(), "SIGSTOP stops it");
    assert!(p.is_running());
    p.cont();
    let resumed = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        (state(p.pid()) == Some('S')).then_some(())
    });
    assert!(resumed.is_some(), "SIGCONT resumes it");
    assert!(p.wait_timeout(Duration::from_millis(50)).is_none());
    p.kill9();
    assert!(!p.is_running());
    assert!(p.wait_timeout(Duration::ZERO).is_some());

    // A program that ends by itself is reaped with its status.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 3"]);
    let mut q = spawn_in(&ns, cmd, &dir.join("exit.log")).unwrap();
    let st = q.wait_timeout(Duration::from_secs(5)).expect("exits");
    assert_eq!(st.code(), Some(3));
}

#[test]
fn stress_cpu_stops_by_itself_and_on_drop() {
    let Some(_g) = setup("stress_cpu_stops_by_itself_and_on_drop") else {
        return;
    };
    let ns = Netns::new("cpu").unwrap();
    let start = Instant::now();
    let mut p = stress_cpu(Some(&ns), 1, Duration::from_secs(1)).unwrap();
    assert!(p.is_running());
    assert!(
        p.wait_timeout(Duration::from_secs(10)).is_some(),
        "stops after its duration"
    );
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(
        wait_until(Duration::from_secs(2), Duration::from_millis(20), || ns
            .pids()
            .is_empty()
            .then_some(()))
        .is_some(),
        "no worker outlives the load"
    );

    let mut p = stress_cpu(None, 2, Duration::from_secs(600)).unwrap();
    let members = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let m = p.group_members();
        (m.len() >= 3).then_some(m)
    })
    .expect("sh and two workers running");
    p.kill9();
    assert!(p.group_members().is_empty(), "whole load group gone");
    for pid in members {
        assert!(!pid_exists(pid), "{pid} killed");
    }
    drop(p);
}

#[test]
fn one_way_cut() {
    let Some(_g) = setup("one_way_cut") else {
        return;
    };
    ensure_tools(&["nft"]).expect("one-way test prerequisites");
    let net = PairNet::new(2).unwrap();
    let (a, b) = (net.node(0), net.node(1));
    assert!(reaches(a, PairNet::channel_addr(1, 0)));
    assert!(reaches(b, PairNet::channel_addr(0, 0)));

    // Count echo requests arriving at a on ch0, to show b's packets still
    // get through while a's replies are dropped.
    a.run_ok(&[
        "nft",
        "add table inet probe; add chain inet probe in \
         { type filter hook input priority 0; policy accept; }; \
         add rule inet probe in iifname \"ch0\" icmp type echo-request counter",
    ])
    .unwrap();
    let seen = || -> u64 {
        let out = a
            .run_ok(&["nft", "list", "table", "inet", "probe"])
            .unwrap();
        let after = out.split("packets ").nth(1).expect("counter in listing");
        after.split_whitespace().next().unwrap().parse().unwrap()
    };

    net.cut_channel_one_way(0, 0).unwrap();
    net.cut_channel_one_way(0, 0).unwrap(); // idempotent
    assert!(!a.can_ping(PairNet::channel_addr(1, 0)), "a->b dropped");
    let before = seen();
    assert!(
        !b.can_ping(PairNet::channel_addr(0, 0)),
        "b gets no reply: a's answer is dropped"
    );
    assert!(seen() > before, "b->a packets still arrive at a");
    assert!(reaches(a, PairNet::channel_addr(1, 1)), "link 1 unaffected");

    net.heal_channel_one_way(0, 0).unwrap();
    net.heal_channel_one_way(0, 0).unwrap(); // idempotent
    assert!(reaches(a, PairNet::channel_addr(1, 0)), "healed");
    assert!(reaches(b, PairNet::channel_addr(0, 0)), "healed");
}

#[test]
fn sweep_removes_dead_runs_only() {
    let Some(_g) = setup("sweep_removes_dead_runs_only") else {
        return;
    };
    // A pid that existed and is now dead: a short child, reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("{NS_PREFIX}{dead}-0-stale");
    let status = Command::new(tool_path("ip").unwrap())
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    // One of our own (live pid) must survive the sweep.
    let live = Netns::new("live").unwrap();

    let removed = sweep_stale();
    let listed = list_namespaces();
    assert!(removed.contains(&stale), "removed {removed:?}");
    assert!(!listed.contains(&stale));
    assert!(listed.iter().any(|n| n == live.name()), "live ns kept");
}
