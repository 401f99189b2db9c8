//! System tests for network identity and application modules: a floating address and an
//! HTTP service moved between real nodes in network namespaces, seen by a real client;
//! address conflicts; and escalation of a failing service.
//!
//! They need root and network namespaces: elsewhere they skip, under CI=true they fail.

mod common;

use std::time::{Duration, Instant};

use common::identity::{client_arp, node_mac, power_cut, resources, Client, WEB_RESOURCE};
use common::{Pair, Timing};
use understudy_testbed::{require_root, wait_until};

fn vip_pair(test: &str) -> (Pair, usize) {
    let pair =
        Pair::start_with(test, Timing::default(), Some(&resources())).expect("start the pair");
    let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    (pair, active)
}

#[test]
fn failover_is_seen_by_a_client_through_the_floating_address() {
    if !require_root("failover_is_seen_by_a_client_through_the_floating_address") {
        return;
    }
    let (mut pair, active) = vip_pair("vip-failover");
    let passive = 1 - active;
    let client = Client::start(pair.net.client());
    let served = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        client.last_answer()
    });
    assert_eq!(
        served.as_deref(),
        Some(common::NAMES[active]),
        "the active serves through the address"
    );
    assert_eq!(client_arp(&pair), Some(node_mac(&pair, active)));

    let cut = Instant::now();
    power_cut(&mut pair, active);
    let outage = client.assert_takeover(&pair, cut, passive);
    assert_eq!(
        client_arp(&pair),
        Some(node_mac(&pair, passive)),
        "the client's ARP entry moved"
    );
    eprintln!("client-observed outage {} ms", outage.as_millis());
}

#[test]
fn an_address_held_by_a_third_host_is_refused_with_an_alarm() {
    if !require_root("an_address_held_by_a_third_host_is_refused_with_an_alarm") {
        return;
    }
    // The client already holds the floating address when the pair starts.
    let mut pair =
        Pair::prepare("vip-conflict", Timing::default(), Some(&resources())).expect("pair");
    pair.net
        .client()
        .run_ok(&["ip", "addr", "add", "10.60.0.50/24", "dev", "pub"])
        .expect("squat the address");
    pair.start_node(0).expect("start alpha");
    pair.start_node(1).expect("start beta");
    let refused = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let logs = pair.log(0) + &pair.log(1);
        logs.contains("conflict").then_some(())
    });
    assert!(
        refused.is_some(),
        "a node refuses the address and says why:\n{}",
        pair.log(0)
    );
    for i in 0..2 {
        let addrs = pair
            .net
            .node(i)
            .run_ok(&["ip", "addr", "show", "dev", "pub"])
            .expect("addrs");
        assert!(
            !addrs.contains("10.60.0.50"),
            "node {i} must not hold a conflicting address"
        );
    }
    // The log line comes from the VIP resource's start; the event from the core once the
    // runtime reports the failed start, a moment later (a single read once missed it).
    let event = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let events = |i| pair.status(i).map(|s| s.events).unwrap_or_default();
        events(0)
            .iter()
            .chain(events(1).iter())
            .any(|e| e.reason.as_deref() == Some("start-failed"))
            .then_some(())
    });
    assert!(event.is_some(), "the refused promotion is an event");
}

#[test]
fn a_failing_service_is_restarted_twice_then_switched_over() {
    if !require_root("a_failing_service_is_restarted_twice_then_switched_over") {
        return;
    }
    let pair = Pair::start_with("escalation", Timing::default(), Some(WEB_RESOURCE)).expect("pair");
    let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    let passive = 1 - active;
    let pidfile = pair
        .dir()
        .join(format!("web-{}.pid", common::NAMES[active]));
    for round in 0..3 {
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // SAFETY: kill(2) on the service process the resource started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if round < 2 {
            // Wait for the restart: a new pid.
            let restarted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                let now: i32 = std::fs::read_to_string(&pidfile)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                (now != pid).then_some(())
            });
            assert!(restarted.is_some(), "round {round}: restarted");
        }
    }
    pair.wait_role(passive, "active", Duration::from_secs(5))
        .expect("switched over after the third failure");
    let actions: Vec<String> = pair
        .status(active)
        .expect("status")
        .events
        .iter()
        .filter(|e| e.kind == "resource-failure")
        .filter_map(|e| e.text.clone())
        .collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(
        actions[0].ends_with("restart") && actions[1].ends_with("restart"),
        "{actions:?}"
    );
    assert!(actions[2].ends_with("switchover"), "{actions:?}");
    assert!(pair
        .role_changes(active)
        .iter()
        .any(|c| c.1 == "resource-failed"));
}

#[test]
fn an_ocf_agent_moves_with_the_role() {
    if !require_root("an_ocf_agent_moves_with_the_role") {
        return;
    }
    if !std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install resource-agents"
        );
        eprintln!("SKIP an_ocf_agent_moves_with_the_role: apt-get install resource-agents");
        return;
    }
    // Each node keeps Dummy's state file in its own place (same path on two real hosts).
    let resources = r#"[[resource]]
name = "dummy"
kind = "ocf"
agent = "ocf:heartbeat:Dummy"
params = { state = "{dir}/dummy-state" }
monitor_interval_ms = 500
"#;
    let pair = Pair::start_with("ocf-dummy", Timing::default(), Some(resources)).expect("pair");
    let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    let state = pair.dir().join("dummy-state");
    assert!(state.exists(), "Dummy started: its state file exists");
    let s = pair.status(active).expect("status");
    assert_eq!(s.resources[0].state, "running");
    let out = pair.cli(active, &["switchover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_role(1 - active, "active", Duration::from_secs(10))
        .expect("moved");
    assert_eq!(
        pair.status(active).expect("status").resources[0].state,
        "stopped"
    );
    assert_eq!(
        pair.status(1 - active).expect("status").resources[0].state,
        "running"
    );
    assert!(state.exists(), "started again on the other node");
}

#[test]
fn a_restarted_daemon_releases_what_its_crashed_predecessor_held() {
    if !require_root("a_restarted_daemon_releases_what_its_crashed_predecessor_held") {
        return;
    }
    // If the daemon and its watchdog both die (kill -9 of everything but the
    // application), the floating address stays on the interface; the passive's conflict
    // probe then (rightly) refuses to take it. When the crashed node's daemon comes back
    // it must let go, so the pair can heal.
    let (mut pair, active) = vip_pair("vip-crash-restart");
    kill_understudy_processes(&pair, active);
    pair.kill9(active);
    std::thread::sleep(Duration::from_millis(1500));
    let held = pair
        .net
        .node(active)
        .run_ok(&["ip", "addr", "show", "dev", "pub"])
        .expect("addrs");
    assert!(
        held.contains("10.60.0.50"),
        "the dead daemon's address is still configured"
    );
    pair.start_node(active).expect("restart");
    let released = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let a = pair
            .net
            .node(active)
            .run_ok(&["ip", "addr", "show", "dev", "pub"])
            .ok()?;
        (!a.contains("10.60.0.50")).then_some(())
    });
    assert!(
        released.is_some(),
        "the restarted daemon released the address"
    );
    // Exactly one node ends up serving, with the address.
    let now_active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    let addrs = pair
        .net
        .node(now_active)
        .run_ok(&["ip", "addr", "show", "dev", "pub"])
        .expect("addrs");
    assert!(addrs.contains("10.60.0.50"), "the active holds the address");
}

/// kill -9 every understudy process (daemon and watchdog) in node i's namespace, leaving
/// the applications alone.
fn kill_understudy_processes(pair: &Pair, i: usize) {
    for pid in pair.net.node(i).pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("understudy")
            && (cmdline.contains("\0run\0") || cmdline.contains("\0watchdog\0"))
        {
            // SAFETY: kill(2) on a process inside the namespace we created.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_watchdog_releases_the_address_when_the_daemon_dies() {
    if !require_root("the_watchdog_releases_the_address_when_the_daemon_dies") {
        return;
    }
    // kill -9 of the daemon alone: the machine and the application live on. The watchdog
    // sees its lease pipe close, stops the resources, and the peer can take the address.
    let (mut pair, active) = vip_pair("watchdog-kill9");
    let passive = 1 - active;
    let client = Client::start(pair.net.client());
    let served = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        client.last_answer()
    });
    assert_eq!(served.as_deref(), Some(common::NAMES[active]));
    let killed = Instant::now();
    pair.kill9(active);
    client.assert_takeover(&pair, killed, passive);
    assert!(
        pair.log(active).contains("FENCING"),
        "the watchdog fenced:\n{}",
        pair.log(active)
    );
}

#[test]
fn the_watchdog_fences_a_hung_active() {
    if !require_root("the_watchdog_fences_a_hung_active") {
        return;
    }
    // SIGSTOP of the daemon's process group: it cannot stop its own resources, but its
    // watchdog (in a group of its own) can, before the peer's failover timeout.
    let (pair, active) = vip_pair("watchdog-sigstop");
    let passive = 1 - active;
    let client = Client::start(pair.net.client());
    wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        client.last_answer()
    })
    .expect("served");
    let stopped = Instant::now();
    pair.proc(active).stop();
    client.assert_takeover(&pair, stopped, passive);
    // Woken, the old active learns it was fenced and stays passive.
    pair.proc(active).cont();
    pair.wait_role(active, "passive", Duration::from_secs(5))
        .expect("the woken node is passive");
    assert_eq!(pair.role(passive).as_deref(), Some("active"));
    assert_eq!(
        client.last_answer().as_deref(),
        Some(common::NAMES[passive])
    );
    // It knew from its own lease that it had been fenced, before acting on anything that
    // arrived while it slept: its monitors found the resources the fence had stopped, and
    // acting on that as an active would restart them behind the new active's back.
    let log = understudy_testbed::strip_ansi(&pair.log(active));
    assert!(
        log.contains("stalled past its watchdog lease"),
        "the woken daemon demotes on its lapsed lease"
    );
    assert!(
        !log.contains("resource failure"),
        "no resource failure was acted on after the fence"
    );
}
