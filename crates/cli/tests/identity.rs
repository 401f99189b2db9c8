//! System tests for network identity and application modules: a floating address and an
//! HTTP service moved between real nodes in network namespaces, seen by a real client;
//! address conflicts; and escalation of a failing service.
//!
//! They need root and network namespaces: elsewhere they skip, under CI=true they fail.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pair, Timing};
use understudy_testbed::{require_root, wait_until, Netns};

pub const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 60, 0, 50));

/// The floating address, then the service, as the README orders them.
fn resources() -> String {
    format!("{VIP_RESOURCE}\n{WEB_RESOURCE}")
}

const VIP_RESOURCE: &str = r#"[[resource]]
name = "address"
kind = "vip"
address = "10.60.0.50/24"
interface = "pub"
conflict_probe_ms = 200
monitor_interval_ms = 500
"#;

/// The demo key-value service, listening on every address of its node.
const WEB_RESOURCE: &str = r#"[[resource]]
name = "web"
kind = "exec"
start = "{bin} demo-service --listen 0.0.0.0:8080 --dir {dir}/data-$UNDERSTUDY_NODE --node $UNDERSTUDY_NODE >/dev/null 2>&1 & echo $! > {dir}/web-$UNDERSTUDY_NODE.pid; sleep 0.05"
stop = "kill $(cat {dir}/web-$UNDERSTUDY_NODE.pid) 2>/dev/null; true"
monitor = "kill -0 $(cat {dir}/web-$UNDERSTUDY_NODE.pid) 2>/dev/null || exit 7"
monitor_interval_ms = 300
start_timeout_ms = 5000
stop_timeout_ms = 5000
"#;

/// One HTTP GET of `/` through the floating address; the node that answered.
fn get_node(timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(VIP, 8080), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().last()?.strip_prefix("ok ").map(str::to_string)
}

/// A client in the client namespace requesting every 20 ms; records (time, answering node).
pub struct Client {
    stop: Arc<AtomicBool>,
    pub samples: Arc<Mutex<Vec<(Instant, Option<String>)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(ns: &Netns) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let file = std::fs::File::open(format!("/var/run/netns/{}", ns.name())).expect("netns file");
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns moves only this thread, which we own and which ends with the loop.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            // Bounded: at most 10 minutes of samples.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let answer = get_node(Duration::from_millis(200));
                samples2.lock().expect("samples").push((Instant::now(), answer));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client { stop, samples, thread: Some(thread) }
    }

    /// The outage after `from`: first failed request to the first success after it.
    pub fn outage_after(&self, from: Instant) -> Option<Duration> {
        let samples = self.samples.lock().expect("samples");
        let after: Vec<_> = samples.iter().filter(|(t, _)| *t >= from).collect();
        let first_fail = after.iter().position(|(_, a)| a.is_none())?;
        let recovered = after[first_fail..].iter().find(|(_, a)| a.is_some())?;
        Some(recovered.0.duration_since(after[first_fail].0))
    }

    pub fn last_answer(&self) -> Option<String> {
        self.samples.lock().expect("samples").last().and_then(|(_, a)| a.clone())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The MAC the client's neighbour table holds for the floating address.
pub fn client_arp(pair: &Pair) -> Option<String> {
    let out = pair.net.client().run_ok(&["ip", "neigh", "show", &VIP.to_string()]).ok()?;
    let mut words = out.split_whitespace();
    words.by_ref().find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

pub fn node_mac(pair: &Pair, i: usize) -> String {
    let out = pair.net.node(i).run_ok(&["cat", "/sys/class/net/pub/address"]).expect("mac");
    out.trim().to_string()
}

/// Power cut: every process in the node's namespace dies and its cables are pulled,
/// so its addresses vanish from the network as they would with the machine.
pub fn power_cut(pair: &mut Pair, i: usize) {
    pair.kill9(i);
    for pid in pair.net.node(i).pids() {
        // SAFETY: plain kill(2) on processes inside the namespace we created.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    pair.net.cut_public(i).expect("cut public");
    pair.net.cut_all_channels(i).expect("cut channel");
}

fn vip_pair(test: &str) -> (Pair, usize) {
    let pair = Pair::start_with(test, Timing::default(), Some(&resources())).expect("start the pair");
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
    let served = wait_until(Duration::from_secs(5), Duration::from_millis(50), || client.last_answer());
    assert_eq!(served.as_deref(), Some(common::NAMES[active]), "the active serves through the address");
    assert_eq!(client_arp(&pair), Some(node_mac(&pair, active)));

    let cut = Instant::now();
    power_cut(&mut pair, active);
    let moved = wait_until(Duration::from_secs(6), Duration::from_millis(20), || {
        (client.last_answer().as_deref() == Some(common::NAMES[passive])).then_some(())
    });
    assert!(moved.is_some(), "the client is served by the other node; logs in {}", pair.dir().display());
    let outage = client.outage_after(cut).expect("an outage was observed");
    // Target: failover_timeout + 1 s.
    assert!(outage <= Duration::from_millis(2000), "outage {outage:?}");
    assert_eq!(client_arp(&pair), Some(node_mac(&pair, passive)), "the client's ARP entry moved");
    eprintln!("client-observed outage {} ms", outage.as_millis());
}

#[test]
fn an_address_held_by_a_third_host_is_refused_with_an_alarm() {
    if !require_root("an_address_held_by_a_third_host_is_refused_with_an_alarm") {
        return;
    }
    // The client already holds the floating address when the pair starts.
    let mut pair = Pair::prepare("vip-conflict", Timing::default(), Some(&resources())).expect("pair");
    pair.net.client().run_ok(&["ip", "addr", "add", "10.60.0.50/24", "dev", "pub"]).expect("squat the address");
    pair.start_node(0).expect("start alpha");
    pair.start_node(1).expect("start beta");
    let refused = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let logs = pair.log(0) + &pair.log(1);
        logs.contains("conflict").then_some(())
    });
    assert!(refused.is_some(), "a node refuses the address and says why:\n{}", pair.log(0));
    for i in 0..2 {
        let addrs = pair.net.node(i).run_ok(&["ip", "addr", "show", "dev", "pub"]).expect("addrs");
        assert!(!addrs.contains("10.60.0.50"), "node {i} must not hold a conflicting address");
    }
    let status = pair.status(0).expect("status");
    assert!(
        status.events.iter().chain(pair.status(1).expect("status").events.iter()).any(|e| e.reason.as_deref() == Some("start-failed")),
        "the refused promotion is an event"
    );
}

#[test]
fn a_failing_service_is_restarted_twice_then_switched_over() {
    if !require_root("a_failing_service_is_restarted_twice_then_switched_over") {
        return;
    }
    let pair = Pair::start_with("escalation", Timing::default(), Some(WEB_RESOURCE)).expect("pair");
    let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    let passive = 1 - active;
    let pidfile = pair.dir().join(format!("web-{}.pid", common::NAMES[active]));
    for round in 0..3 {
        let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid file").trim().parse().expect("pid");
        // SAFETY: kill(2) on the service process the resource started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if round < 2 {
            // Wait for the restart: a new pid.
            let restarted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                let now: i32 = std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()?;
                (now != pid).then_some(())
            });
            assert!(restarted.is_some(), "round {round}: restarted");
        }
    }
    pair.wait_role(passive, "active", Duration::from_secs(5)).expect("switched over after the third failure");
    let actions: Vec<String> = pair
        .status(active)
        .expect("status")
        .events
        .iter()
        .filter(|e| e.kind == "resource-failure")
        .filter_map(|e| e.text.clone())
        .collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions[0].ends_with("restart") && actions[1].ends_with("restart"), "{actions:?}");
    assert!(actions[2].ends_with("switchover"), "{actions:?}");
    assert!(pair.role_changes(active).iter().any(|c| c.1 == "resource-failed"));
}
