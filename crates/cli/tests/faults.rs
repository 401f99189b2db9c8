//! The fault-injection suite, in the spirit of Jepsen: a real pair in network namespaces
//! serves a replicated key-value service and a SQLite application, a client writes through
//! the floating address, and a seeded nemesis injects one fault per cycle. After each
//! fault heals, the checkers run:
//! - no fsync-acknowledged write is lost (every key the service acknowledged reads back;
//!   every SQLite commit the application logged is in the database, which passes
//!   `PRAGMA integrity_check`);
//! - never two owners of the floating address at once (the client sends an ARP request
//!   every 50 ms and counts the samples with two MACs answering);
//! - once healed and resynced, `understudy verify` is clean and the two copies are
//!   identical, file by file;
//! - the client's outage after each fault that moves the role (their distribution).
//!
//! The nemesis picks, with the seed: power cut of the active (kill -9 of everything on it
//! and its cables pulled) and of the passive, SIGSTOP/SIGCONT of either daemon (a hung
//! node), the channel cut, the active's public cable cut, both at once, the channel cut in
//! one direction, a slow channel (htb bandwidth cap; the kernel has no netem), the passive's
//! disk filled, a clean restart of the active, a planned switchover, a step of the wall
//! clock (forward or back, up to two hours, as `date -s` or an NTP step does; the machine's
//! clock is set back to the true time when the fault heals). The monotonic clock, which
//! the daemons time heartbeats with, cannot be stepped on a running machine; a SIGSTOP is
//! how a jump of it would look to them, and the simulation (`crates/sim`) jumps it too.
//!
//! Environment: FAULT_CYCLES (12; the long form is 200: `scripts/faults.sh`), FAULT_SEED
//! (1; the schedule replays with the same seed), FAULT_CHECK_EVERY (1: verify and compare
//! the copies after every cycle). Ends with a summary table; fails on any violation.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::identity::{self, VIP};
use common::repl::tree_digest;
use common::{env_u64, Pair, Timing, NAMES};
use understudy_testbed::{require_root, wait_until, LoopFs, WallClockStep};

/// SplitMix64: the schedule's only source of randomness, so a seed replays it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    PowerCutActive,
    PowerCutPassive,
    PauseActive,
    PausePassive,
    CutChannel,
    CutPublicActive,
    CutBothActive,
    OneWayChannel,
    SlowChannel,
    FillPassiveDisk,
    RestartActive,
    Switchover,
    ClockStep,
}

impl Fault {
    /// Whether the active must keep its role through this fault: it stays up, serving and
    /// reachable on the public network, so a move would be a false failover. (Faults on the
    /// active itself may or may not move the role, depending on how long they last.)
    fn keeps_the_active(self) -> bool {
        matches!(
            self,
            Fault::PowerCutPassive
                | Fault::PausePassive
                | Fault::CutChannel
                | Fault::OneWayChannel
                | Fault::SlowChannel
                | Fault::FillPassiveDisk
                | Fault::ClockStep
        )
    }
}

const FAULTS: [Fault; 13] = [
    Fault::PowerCutActive,
    Fault::PowerCutPassive,
    Fault::PauseActive,
    Fault::PausePassive,
    Fault::CutChannel,
    Fault::CutPublicActive,
    Fault::CutBothActive,
    Fault::OneWayChannel,
    Fault::SlowChannel,
    Fault::FillPassiveDisk,
    Fault::RestartActive,
    Fault::Switchover,
    Fault::ClockStep,
];

/// The service's data and the SQLite database live in the replicated set; the application
/// logs each commit (after it returned) to a file outside both nodes, as a client would.
fn resources(dir: &str) -> String {
    format!(
        r#"[[replicate]]
name = "data"
path = "{dir}/mnt"
mode = "sync"

{vip}
[[resource]]
name = "kv"
kind = "exec"
start = "mkdir -p {dir}/mnt/kv && {{bin}} demo-service --listen 0.0.0.0:8080 --dir {dir}/mnt/kv --node $UNDERSTUDY_NODE >/dev/null 2>&1 & echo $! > {dir}/kv-$UNDERSTUDY_NODE.pid; sleep 0.05"
stop = "kill $(cat {dir}/kv-$UNDERSTUDY_NODE.pid) 2>/dev/null; true"
monitor = "kill -0 $(cat {dir}/kv-$UNDERSTUDY_NODE.pid) 2>/dev/null || exit 7"
monitor_interval_ms = 300
start_timeout_ms = 5000
stop_timeout_ms = 5000

[[resource]]
name = "sqlite"
kind = "exec"
start = "python3 {dir}/sqlite_app.py {dir}/mnt/app.db {dir}/sqlite-acks-$UNDERSTUDY_NODE.log {dir}/pause >/dev/null 2>>{dir}/sqlite-$UNDERSTUDY_NODE.err & echo $! > {dir}/sqlite-$UNDERSTUDY_NODE.pid"
stop = "kill $(cat {dir}/sqlite-$UNDERSTUDY_NODE.pid) 2>/dev/null; true"
monitor = "kill -0 $(cat {dir}/sqlite-$UNDERSTUDY_NODE.pid) 2>/dev/null || exit 7"
monitor_interval_ms = 500
start_timeout_ms = 5000
stop_timeout_ms = 5000
"#,
        vip = identity::VIP_RESOURCE,
    )
}

/// The SQLite application: one insert per transaction, numbered on from the highest id in
/// the database; each id is logged after its COMMIT returned. Pauses while the pause file
/// exists (so the checkers can compare quiet copies).
const SQLITE_APP: &str = r#"
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
# EXTRA: the rollback journal's unlink (the commit point) is made durable too.
db.execute("PRAGMA synchronous=EXTRA")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
ack = open(sys.argv[2], "a", buffering=1)
n = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
end = time.time() + 7200
while time.time() < end:
    if os.path.exists(sys.argv[3]):
        time.sleep(0.05)
        continue
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO t (id, body) VALUES (?, ?)", (n, "row %d" % n))
    db.execute("COMMIT")
    ack.write("%d\n" % n)
    time.sleep(0.02)
"#;

/// One request to the floating address: (status, the body's last line), or None when
/// there was no whole answer (a refused or cut connection, a response cut short).
fn http(method: &str, path: &str, body: &str, timeout: Duration) -> Option<(u16, String)> {
    let a = understudy_testbed::http::request(
        SocketAddr::new(VIP, 8080),
        method,
        path,
        body.as_bytes(),
        timeout,
        timeout,
    )
    .ok()?;
    let text = String::from_utf8_lossy(&a.body);
    Some((
        a.status,
        text.lines().last().unwrap_or_default().to_string(),
    ))
}

/// The client: from its own namespace, PUTs key after key through the floating address
/// (the service fsyncs before answering), reads back an acknowledged key now and then,
/// and samples the address's ARP owners. Everything it saw is kept for the checkers.
struct Workload {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    /// (sent, done, ok) of every request, for outages.
    samples: Arc<Mutex<Vec<(Instant, Instant, bool)>>>,
    /// Acknowledged keys read back missing or wrong while the pair was serving.
    bad_reads: Arc<Mutex<Vec<String>>>,
    arp_samples: Arc<AtomicU64>,
    arp_double: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(pair: &Pair) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let bad_reads = Arc::new(Mutex::new(Vec::new()));
        let arp_samples = Arc::new(AtomicU64::new(0));
        let arp_double = Arc::new(AtomicU64::new(0));
        let ns = format!("/var/run/netns/{}", pair.net.client().name());
        let enter = move |ns: &str| {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(ns).expect("netns file");
            // SAFETY: setns moves only the calling thread, which this workload owns.
            assert_eq!(
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
        };
        let writer = {
            let (stop, paused, acked, samples, bad) = (
                stop.clone(),
                paused.clone(),
                acked.clone(),
                samples.clone(),
                bad_reads.clone(),
            );
            let ns = ns.clone();
            std::thread::spawn(move || {
                enter(&ns);
                let mut rng = Rng(99);
                let mut n = 0u64;
                // Bounded: at most 3 hours, and stopped by the test.
                let deadline = Instant::now() + Duration::from_secs(3 * 3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if paused.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    n += 1;
                    let sent = Instant::now();
                    let answer = http(
                        "PUT",
                        &format!("/k{n}"),
                        &format!("v{n}"),
                        Duration::from_millis(300),
                    );
                    let ok = answer.as_ref().is_some_and(|(s, _)| *s == 204);
                    samples
                        .lock()
                        .expect("samples")
                        .push((sent, Instant::now(), ok));
                    if ok {
                        acked.lock().expect("acked").push(n);
                    }
                    // Every fifth request reads back an acknowledged key.
                    if n.is_multiple_of(5) {
                        let pick = {
                            let a = acked.lock().expect("acked");
                            (!a.is_empty()).then(|| a[rng.below(a.len() as u64) as usize])
                        };
                        if let Some(k) = pick {
                            if let Some((status, body)) =
                                http("GET", &format!("/k{k}"), "", Duration::from_millis(300))
                            {
                                if status == 200 && body != format!("v{k}") {
                                    bad.lock().expect("bad").push(format!("k{k} read {body:?}"));
                                } else if status == 404 {
                                    bad.lock().expect("bad").push(format!("k{k} missing"));
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let arp = {
            let (stop, arp_samples, arp_double) =
                (stop.clone(), arp_samples.clone(), arp_double.clone());
            std::thread::spawn(move || {
                enter(&ns);
                let deadline = Instant::now() + Duration::from_secs(3 * 3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(owners) = identity::arp_owners(Duration::from_millis(40)) {
                        arp_samples.fetch_add(1, Ordering::Relaxed);
                        if owners.len() > 1 {
                            arp_double.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Workload {
            stop,
            paused,
            acked,
            samples,
            bad_reads,
            arp_samples,
            arp_double,
            threads: vec![writer, arp],
        }
    }

    /// The outage after `from`: the first failed request to the first success after it.
    fn outage_after(&self, from: Instant) -> Option<Duration> {
        let s = self.samples.lock().expect("samples");
        let after: Vec<_> = s.iter().filter(|x| x.1 >= from).collect();
        let first = after.iter().position(|x| !x.2)?;
        let back = after[first..].iter().find(|x| x.2)?;
        Some(back.1.duration_since(after[first].0))
    }

    fn last_ok(&self) -> bool {
        self.samples
            .lock()
            .expect("samples")
            .last()
            .is_some_and(|x| x.2)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What happened, for the summary.
#[derive(Default)]
struct Tally {
    count: u64,
    outages_ms: Vec<u64>,
    verifies: u64,
}

struct Suite {
    pair: Pair,
    _disks: Vec<LoopFs>,
    dir: PathBuf,
    tally: BTreeMap<Fault, Tally>,
    violations: Vec<String>,
    seed: u64,
    /// Wall-clock time at which the pair last settled, for [`Suite::story`].
    settled_at_unix_ms: u64,
}

impl Suite {
    /// Power back / restart: clear what a reboot clears (the floating address), plug the
    /// cables in, start the daemon (it starts passive).
    fn power_on(&mut self, i: usize) {
        let _ = self
            .pair
            .net
            .node(i)
            .ip(&["addr", "del", "10.60.0.50/24", "dev", "pub"]);
        let _ = self.pair.net.heal_public(i);
        let _ = self.pair.net.heal_all_channels(i);
        if self.pair.procs[i].is_none() {
            self.pair.start_node(i).expect("start node");
        }
    }

    /// Waits for the pair to settle after a fault: one active, the passive connected, the
    /// set in sync (resynced if it had to be) on both sides, and the client served. A
    /// passive that does not count itself in sync would refuse to take over. Bounded.
    fn settle(&mut self, w: &Workload, cycle: u64) -> usize {
        let both_in_sync = |pair: &Pair, a: usize| {
            pair.repl(a).is_ok_and(|r| r.state == "in_sync")
                && pair.repl(1 - a).is_ok_and(|r| r.state == "in_sync")
        };
        let settled = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            let a = self.pair.wait_settled(Duration::from_millis(200)).ok()?;
            (both_in_sync(&self.pair, a) && w.last_ok()).then_some(a)
        });
        if let Some(a) = settled {
            self.settled_at_unix_ms = unix_ms_now();
            return a;
        }
        // Not both: settle for the active's view, and say the passive's disagrees.
        let settled = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let a = self.pair.wait_settled(Duration::from_millis(200)).ok()?;
            let r = self.pair.repl(a).ok()?;
            (r.state == "in_sync" && w.last_ok()).then_some(a)
        });
        match settled {
            Some(a) => {
                let passive = self.pair.repl(1 - a).map(|r| r.state);
                self.violations.push(format!(
                    "cycle {cycle}: the active counts the set in sync, the passive does not ({passive:?}): it would not take over"
                ));
                self.settled_at_unix_ms = unix_ms_now();
                a
            }
            None => panic!(
                "seed {} cycle {cycle}: the pair did not settle within 90 s; logs in {}",
                self.seed,
                self.dir.display()
            ),
        }
    }

    /// Both nodes' role changes and resource failures since `since_unix_ms`, in time
    /// order, on one line: printed with each cycle so that a move nobody asked for can be
    /// explained from the test's output alone (CI keeps no daemon logs).
    fn story(&self, since_unix_ms: u64) -> String {
        let mut told = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let Ok(status) = self.pair.status(i) else {
                told.push((0, format!("{name}: no status")));
                continue;
            };
            for e in status
                .events
                .iter()
                .filter(|e| e.at_unix_ms >= since_unix_ms)
            {
                let line = match e.kind.as_str() {
                    "role-change" => format!(
                        "{name} {}->{} ({})",
                        e.from.as_deref().unwrap_or("?"),
                        e.to.as_deref().unwrap_or("?"),
                        e.reason.as_deref().unwrap_or("?")
                    ),
                    "resource-failure" => {
                        format!("{name} {}", e.text.as_deref().unwrap_or("resource failure"))
                    }
                    _ => continue,
                };
                told.push((e.at_unix_ms, format!("{} {line}", e.at)));
            }
        }
        told.sort();
        let lines: Vec<String> = told.into_iter().map(|(_, l)| l).collect();
        if lines.is_empty() {
            "no role change".into()
        } else {
            lines.join("; ")
        }
    }

    /// Quiesces the writers, then checks: verify clean, copies identical.
    fn check_copies(&mut self, w: &Workload, a: usize, cycle: u64, fault: Fault) {
        w.paused.store(true, Ordering::SeqCst);
        std::fs::write(self.dir.join("pause"), b"").expect("pause file");
        std::thread::sleep(Duration::from_millis(400));
        if let Err(e) = self.pair.wait_drained(a, Duration::from_secs(60)) {
            self.violations
                .push(format!("cycle {cycle} ({fault:?}): not drained: {e}"));
        }
        let out = self
            .pair
            .cli(a, &["verify", "--json", "--timeout-s", "120"]);
        self.tally.entry(fault).or_default().verifies += 1;
        if out.status.code() != Some(0) {
            self.violations.push(format!(
                "cycle {cycle} ({fault:?}): verify not clean: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (da, dp) = match (
            tree_digest(&self.pair.data_dir(a)),
            tree_digest(&self.pair.data_dir(1 - a)),
        ) {
            (Ok(da), Ok(dp)) => (da, dp),
            (da, dp) => {
                self.violations.push(format!(
                    "cycle {cycle} ({fault:?}): could not read the copies: {:?} {:?}",
                    da.err(),
                    dp.err()
                ));
                (Vec::new(), Vec::new())
            }
        };
        if da != dp {
            let diff: Vec<_> = da.iter().filter(|l| !dp.contains(l)).take(5).collect();
            self.violations.push(format!(
                "cycle {cycle} ({fault:?}): the copies differ: {diff:?}"
            ));
        }
        let _ = std::fs::remove_file(self.dir.join("pause"));
        w.paused.store(false, Ordering::SeqCst);
    }

    /// Injects one fault, heals it, returns when it was injected (for the outage).
    fn inject(&mut self, fault: Fault, rng: &mut Rng, a: usize) -> Instant {
        let p = 1 - a;
        let hold = Duration::from_millis(1000 + rng.below(2000));
        let t = Instant::now();
        match fault {
            Fault::PowerCutActive | Fault::PowerCutPassive => {
                let i = if fault == Fault::PowerCutActive { a } else { p };
                identity::power_cut(&mut self.pair, i);
                std::thread::sleep(hold);
                self.power_on(i);
            }
            Fault::PauseActive | Fault::PausePassive => {
                let i = if fault == Fault::PauseActive { a } else { p };
                self.pair.proc(i).stop();
                std::thread::sleep(hold);
                self.pair.proc(i).cont();
            }
            Fault::CutChannel => {
                self.pair.net.cut_all_channels(a).expect("cut");
                std::thread::sleep(hold);
                self.pair.net.heal_all_channels(a).expect("heal");
            }
            Fault::CutPublicActive => {
                self.pair.net.cut_public(a).expect("cut");
                std::thread::sleep(hold);
                self.pair.net.heal_public(a).expect("heal");
            }
            Fault::CutBothActive => {
                self.pair.net.cut_public(a).expect("cut");
                self.pair.net.cut_all_channels(a).expect("cut");
                std::thread::sleep(hold);
                self.pair.net.heal_all_channels(a).expect("heal");
                self.pair.net.heal_public(a).expect("heal");
            }
            Fault::OneWayChannel => {
                let from = if rng.below(2) == 0 { a } else { p };
                self.pair.net.cut_channel_one_way(from, 0).expect("cut");
                std::thread::sleep(hold);
                self.pair.net.heal_channel_one_way(from, 0).expect("heal");
            }
            Fault::SlowChannel => {
                self.pair.net.slow_channels(2000).expect("slow");
                std::thread::sleep(hold);
                self.pair.net.heal_slow_channels().expect("heal");
            }
            Fault::FillPassiveDisk => {
                let fillers = self._disks[p].fill(0).expect("fill");
                std::thread::sleep(hold);
                for f in fillers {
                    let _ = std::fs::remove_file(f);
                }
            }
            Fault::RestartActive => {
                if let Some(proc) = self.pair.procs[a].as_mut() {
                    proc.terminate(Duration::from_secs(30));
                }
                self.pair.procs[a] = None;
                self.power_on(a);
            }
            Fault::Switchover => {
                let out = self.pair.cli(a, &["switchover"]);
                if !out.status.success() {
                    // The pair moved on its own since it settled (the story says why); a
                    // refusal is then right, and the move is checked like any other.
                    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    let story = self.story(self.settled_at_unix_ms);
                    eprintln!("cycle: switchover refused: {why}; since the last settle: {story}");
                    self.violations.push(format!(
                        "switchover refused on the settled active {}: {why}; {story}",
                        NAMES[a]
                    ));
                }
            }
            Fault::ClockStep => {
                let magnitude_s = 30 + rng.below(2 * 3600 - 30) as i64;
                let step_s = if rng.below(2) == 0 {
                    magnitude_s
                } else {
                    -magnitude_s
                };
                eprintln!("cycle: wall clock stepped by {step_s} s");
                let step = WallClockStep::new(step_s).expect("step the wall clock");
                std::thread::sleep(hold);
                drop(step);
            }
        }
        t
    }
}

/// The wall clock in milliseconds since the Unix epoch, as the daemons stamp events.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn faults_never_lose_acknowledged_writes_nor_make_two_actives() {
    if !require_root("faults_never_lose_acknowledged_writes_nor_make_two_actives") {
        return;
    }
    let cycles = env_u64("FAULT_CYCLES", 12);
    let seed = env_u64("FAULT_SEED", 1);
    let check_every = env_u64("FAULT_CHECK_EVERY", 1).max(1);
    let started = Instant::now();
    let timing = Timing {
        links: 1,
        ..Timing::default()
    };
    let mut pair = Pair::prepare("faults", timing, Some("")).expect("pair");
    let dir = pair.dir().to_path_buf();
    // Each node's state (its copy, queue, change log) on a disk of its own, so the
    // nemesis can fill the passive's disk without touching the machine's.
    let mut disks = Vec::new();
    for name in NAMES {
        disks.push(
            LoopFs::new(
                &dir.join(format!("disk-{name}.img")),
                &dir.join(format!("state-{name}")),
                2048,
            )
            .expect("loop disk"),
        );
    }
    std::fs::write(dir.join("sqlite_app.py"), SQLITE_APP).expect("app");
    let config = std::fs::read_to_string(&pair.config).expect("config");
    let d = dir.display().to_string();
    std::fs::write(
        &pair.config,
        format!("{config}\n{}", resources(&d).replace("{bin}", common::BIN)),
    )
    .expect("config");
    pair.start_node(0).expect("start");
    pair.start_node(1).expect("start");
    let mut suite = Suite {
        pair,
        _disks: disks,
        dir: dir.clone(),
        tally: BTreeMap::new(),
        violations: Vec::new(),
        seed,
        settled_at_unix_ms: unix_ms_now(),
    };
    let w = Workload::start(&suite.pair);
    let mut a = suite.settle(&w, 0);
    let mut rng = Rng(seed);
    eprintln!(
        "faults: seed {seed}, {cycles} cycles; logs in {}",
        dir.display()
    );
    for cycle in 1..=cycles {
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        eprintln!("cycle {cycle}: {fault:?} (active {})", NAMES[a]);
        let injected_at_unix_ms = unix_ms_now();
        let at = suite.inject(fault, &mut rng, a);
        let new_a = suite.settle(&w, cycle);
        let tally = suite.tally.entry(fault).or_default();
        tally.count += 1;
        let outage = w.outage_after(at);
        if let Some(o) = outage {
            tally.outages_ms.push(o.as_millis() as u64);
        }
        let story = suite.story(injected_at_unix_ms);
        eprintln!(
            "cycle {cycle}: settled, active {}{} ({:.0} s so far); {story}",
            NAMES[new_a],
            outage.map_or(String::new(), |o| format!(
                ", client outage {} ms",
                o.as_millis()
            )),
            started.elapsed().as_secs_f64()
        );
        if fault.keeps_the_active() && new_a != a {
            suite.violations.push(format!(
                "cycle {cycle} ({fault:?}): the active role moved from {} to {} without cause: {story}",
                NAMES[a], NAMES[new_a]
            ));
        }
        a = new_a;
        if cycle.is_multiple_of(check_every) || cycle == cycles {
            suite.check_copies(&w, a, cycle, fault);
        }
        let bad = std::mem::take(&mut *w.bad_reads.lock().expect("bad"));
        for b in bad {
            suite.violations.push(format!(
                "cycle {cycle} ({fault:?}): acknowledged write read back wrong: {b}"
            ));
        }
    }

    // Final checks: every acknowledged key, every logged commit.
    w.paused.store(true, Ordering::SeqCst);
    std::fs::write(dir.join("pause"), b"").expect("pause");
    std::thread::sleep(Duration::from_millis(400));
    let acked = w.acked.lock().expect("acked").clone();
    let mut lost_keys = Vec::new();
    let client = suite.pair.net.client().name().to_string();
    let reader = std::thread::spawn({
        let acked = acked.clone();
        move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(format!("/var/run/netns/{client}")).expect("netns");
            // SAFETY: setns moves only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut lost = Vec::new();
            for k in acked {
                let got = (0..3)
                    .find_map(|_| http("GET", &format!("/k{k}"), "", Duration::from_millis(500)));
                match got {
                    Some((200, body)) if body == format!("v{k}") => {}
                    other => lost.push(format!("k{k}: {other:?}")),
                }
            }
            lost
        }
    });
    lost_keys.extend(reader.join().expect("reader"));
    let mut sqlite_acked: Vec<u64> = Vec::new();
    for name in NAMES {
        let text = std::fs::read_to_string(dir.join(format!("sqlite-acks-{name}.log")))
            .unwrap_or_default();
        sqlite_acked.extend(text.lines().filter_map(|l| l.trim().parse::<u64>().ok()));
    }
    let db_check = suite
        .pair
        .sh_in(
            a,
            &format!(
                "python3 -c \"import sqlite3; d=sqlite3.connect('{d}/mnt/app.db', timeout=30); \
                 print(d.execute('PRAGMA integrity_check').fetchone()[0]); \
                 print(' '.join(str(r[0]) for r in d.execute('SELECT id FROM t')))\""
            ),
        )
        .unwrap_or_default();
    let mut lines = db_check.lines();
    let integrity = lines.next().unwrap_or("no answer").to_string();
    let present: std::collections::HashSet<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let lost_commits: Vec<u64> = sqlite_acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    let arp_samples = w.arp_samples.load(Ordering::Relaxed);
    let arp_double = w.arp_double.load(Ordering::Relaxed);

    // The summary table.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nfault-injection summary: seed {seed}, {cycles} cycles in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        table,
        "| fault | cycles | client outage median / max (ms) | verified clean |"
    );
    let _ = writeln!(table, "|---|---|---|---|");
    let mut all_outages = Vec::new();
    for (fault, t) in &suite.tally {
        let mut o = t.outages_ms.clone();
        o.sort_unstable();
        all_outages.extend(o.iter().copied());
        let med = o.get(o.len() / 2).map_or("-".into(), |v| v.to_string());
        let max = o.last().map_or("-".into(), |v| v.to_string());
        let _ = writeln!(
            table,
            "| {fault:?} | {} | {med} / {max} | {} |",
            t.count, t.verifies
        );
    }
    let _ = writeln!(
        table,
        "acknowledged key-value writes: {}, lost: {}; SQLite commits logged: {}, lost: {}, integrity_check: {integrity}; ARP samples: {arp_samples}, with two owners: {arp_double}; violations: {}",
        acked.len(),
        lost_keys.len(),
        sqlite_acked.len(),
        lost_commits.len(),
        suite.violations.len()
    );
    all_outages.sort_unstable();
    if !all_outages.is_empty() {
        let q = |f: f64| all_outages[((all_outages.len() - 1) as f64 * f) as usize];
        let _ = writeln!(
            table,
            "client outages over all faults (ms): p50 {} p90 {} max {}",
            q(0.5),
            q(0.9),
            q(1.0)
        );
    }
    println!("{table}");
    drop(w);
    assert!(
        acked.len() > 50,
        "the client made progress: {}",
        acked.len()
    );
    assert!(
        lost_keys.is_empty(),
        "seed {seed}: acknowledged writes lost: {lost_keys:?}; logs in {}",
        dir.display()
    );
    assert_eq!(integrity, "ok", "seed {seed}: SQLite integrity");
    assert!(
        lost_commits.is_empty(),
        "seed {seed}: committed transactions lost: {lost_commits:?}"
    );
    assert!(
        sqlite_acked.len() > 10,
        "the SQLite application made progress"
    );
    assert_eq!(
        arp_double, 0,
        "seed {seed}: two owners of the floating address"
    );
    assert!(arp_samples > 100, "the ARP sampler ran: {arp_samples}");
    assert!(
        suite.violations.is_empty(),
        "seed {seed}: {:#?}; logs in {}",
        suite.violations,
        dir.display()
    );
}
