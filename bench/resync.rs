//! Resync benchmarks (issue 4): initial sync of an empty passive, delta resync after 1% of
//! the blocks changed, reconnection after a 10 s outage with 100 MiB of changes, and verify,
//! each against its baseline measured in the same run on the same machine: `rsync -a`,
//! `rsync -a --no-whole-file` (rsync's delta algorithm; locally it copies whole files
//! unless told otherwise), a plain TCP transfer of 100 MiB between the nodes, and one read
//! of the data set. And how long an application's write stalls when a resync starts (the
//! listing), against the same writer's latency just before.
//!
//! Real daemons in network namespaces, as root; the passive shares the machine and its
//! disk. Page caches are dropped before every timed run of either side, so every run starts
//! from the disk.
//!
//! Sizes: BENCH_SYNC_SMALL (10000 small files of 1 to 64 KiB), BENCH_SYNC_LARGE (4 large
//! files) of BENCH_SYNC_LARGE_MIB (432 MiB) each: about 2 GiB. BENCH_ROUNDS (3) rounds of
//! each; medians reported. Run with `bench/run.sh`.

#[path = "../crates/cli/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::bench::{
    drop_caches, med, num, profile_start, profile_stop, py, rounds, start, verdict,
};
use common::{env_u64, Pair, NAMES};
use understudy_testbed::require_root;

const MIB: u64 = 1 << 20;

/// Makes the data set: `small` files of 1..64 KiB in 100 directories, `large` files of
/// `large_mib` MiB. Prints {"bytes", "files"}.
const POPULATE: &str = r#"
import os, sys, json, random
root, small, large, large_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(1)
total = 0
for i in range(small):
    d = os.path.join(root, "small", "d%02d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    n = random.randrange(1024, 65536)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(n))
    total += n
chunk = os.urandom(1 << 20)
for j in range(large):
    with open(os.path.join(root, "large%d" % j), "wb") as f:
        for k in range(large_mib):
            # Distinct blocks: the chunk with the block number stamped in front.
            f.write(k.to_bytes(8, "little") + j.to_bytes(8, "little") + chunk[16:])
    total += large_mib << 20
print(json.dumps({"bytes": total, "files": small + large}))
"#;

/// Rewrites `pct` percent of the `block`-byte blocks of each large file, spread at random.
/// Prints {"blocks", "bytes"}.
const CHANGE_BLOCKS: &str = r#"
import os, sys, json, random
root, pct, block, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(seed)
blocks = 0
for name in sorted(os.listdir(root)):
    if not name.startswith("large"):
        continue
    p = os.path.join(root, name)
    n = os.path.getsize(p) // block
    with open(p, "r+b") as f:
        for b in random.sample(range(n), max(1, int(n * pct / 100))):
            f.seek(b * block)
            f.write(os.urandom(block))
            blocks += 1
print(json.dumps({"blocks": blocks, "bytes": blocks * block}))
"#;

/// Reads every file under the root once. Prints {"bytes", "secs"}.
const READ_ALL: &str = r#"
import os, sys, time, json, mmap
root = sys.argv[1]
direct = len(sys.argv) > 2 and sys.argv[2] == "direct"
# A page-aligned buffer (O_DIRECT needs one); direct reads ask at most one aligned block
# past the end (the kernel zero-fills whatever is asked past it).
buf = mmap.mmap(-1, 1 << 20)
mv = memoryview(buf)
t0 = time.perf_counter()
total = 0
for d, dirs, files in os.walk(root):
    for name in files:
        p = os.path.join(d, name)
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            size, at = os.fstat(fd).st_size, 0
            while True:
                want = 1 << 20
                if direct:
                    want = min(want, (max(size - at, 0) + 1 + 4095) // 4096 * 4096)
                k = os.preadv(fd, [mv[:want]], at)
                if not k:
                    break
                at += k
                if direct and k % 4096:
                    break
            total += at
        finally:
            os.close(fd)
print(json.dumps({"bytes": total, "secs": time.perf_counter() - t0}))
"#;

/// Receives one TCP connection on the port, writes what arrives to the file, fsyncs.
/// Prints {"bytes", "secs"} (from the first byte to the fsync).
const RECEIVE: &str = r#"
import os, socket, sys, time, json
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
total, t0 = 0, None
buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    if t0 is None:
        t0 = time.perf_counter()
    os.write(fd, memoryview(buf)[:k])
    total += k
os.fsync(fd)
os.close(fd)
print(json.dumps({"bytes": total, "secs": time.perf_counter() - (t0 or time.perf_counter())}))
"#;

/// Sends `mib` MiB of random data to addr:port. Prints {"secs"}.
const SEND: &str = r#"
import os, socket, sys, time, json
addr, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = os.urandom(1 << 20)
for _ in range(100):
    try:
        s = socket.create_connection((addr, port), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
t0 = time.perf_counter()
for _ in range(mib):
    s.sendall(chunk)
s.close()
print(json.dumps({"secs": time.perf_counter() - t0}))
"#;

/// Waits (at most `limit` s) until a TCP connect to addr:port is answered, by the listener
/// or by a refusal: the link carries packets again. Prints {"up_at"} (Unix time, or null).
const LINK_PROBE: &str = r#"
import socket, sys, time, json
addr, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + limit
while time.time() < end:
    s = socket.socket()
    s.settimeout(0.02)
    try:
        s.connect((addr, port))
        up = True
    except ConnectionRefusedError:
        up = True
    except OSError:
        up = False
    finally:
        s.close()
    if up:
        print(json.dumps({"up_at": time.time()}))
        sys.exit(0)
    time.sleep(0.002)
print(json.dumps({"up_at": None}))
"#;

/// Writes `mib` MiB in 1 MiB writes to a new file (no fsync). Prints {"secs"}.
const WRITE_NEW: &str = r#"
import os, sys, time, json
path, mib = sys.argv[1], int(sys.argv[2])
chunk = os.urandom(1 << 20)
t0 = time.perf_counter()
with open(path, "wb") as f:
    for _ in range(mib):
        f.write(chunk)
print(json.dumps({"secs": time.perf_counter() - t0}))
"#;

/// A shell command in the root namespace, timed.
fn timed_sh(script: &str) -> Result<f64> {
    let t = Instant::now();
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .context("sh")?;
    if !out.status.success() {
        bail!("`{script}`: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Drops the page cache and gives the next timed run the same memory to start from.
///
/// On this VM, freed memory is soon returned to the host, and the first touch of such a page
/// costs a host fault; pages freed a moment ago are cheap. So a run right after one that
/// cached much (and had it dropped) went faster: `rsync` timed after a sync that read the
/// source with `O_DIRECT` took 5.4-6.9 s, after one that read it through the page cache
/// 3.9-4.7 s. Reading a fixed ballast file and dropping it before every timed run, ours and
/// rsync's, makes that pool the same for both.
fn drop_all_caches() -> Result<()> {
    static BALLAST: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let ballast = BALLAST
        .get_or_init(|| {
            let path = "/var/tmp/understudy-bench-ballast";
            let size = env_u64("BENCH_BALLAST_MIB", 4096) << 20;
            let ok = std::fs::metadata(path).is_ok_and(|m| m.len() == size);
            if !ok {
                timed_sh(&format!(
                    "head -c {size} /dev/zero > {path}.tmp && mv {path}.tmp {path}"
                ))
                .map_err(|e| e.to_string())?;
            }
            Ok(path.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("ballast: {e}"))?;
    timed_sh(&format!(
        "sync; echo 3 > /proc/sys/vm/drop_caches; cat {ballast} > /dev/null; echo 3 > /proc/sys/vm/drop_caches"
    ))
    .map(drop)
}

/// Waits until the active reports a finished resync newer than `after` and the set in sync.
/// Returns the resync's progress record.
fn wait_resync(
    pair: &Pair,
    a: usize,
    after: u64,
    timeout: Duration,
) -> Result<understudy_replication::SyncProgress> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = pair.repl(a) {
            if let Some(s) = r.sync.as_ref() {
                if s.id > after && s.kind == "resync" && s.phase == "done" && r.state == "in_sync" {
                    return Ok(s.clone());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no finished resync after {after} within {timeout:?}; logs in {}",
                pair.dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn last_sync_id(pair: &Pair, a: usize) -> u64 {
    pair.repl(a)
        .ok()
        .and_then(|r| r.sync.map(|s| s.id))
        .unwrap_or(0)
}

/// Kills node `p` and removes its copies and their state: a new, empty passive.
fn kill_and_wipe(pair: &mut Pair, p: usize) -> Result<()> {
    pair.kill9(p);
    let sets = pair.dir().join(format!("state-{}/sets", NAMES[p]));
    set_aside(pair.dir(), &sets)
}

/// Moves a tree out of the way instead of deleting it; `Scratch` deletes them all at the end.
/// On ext4 without a journal (this machine), creating files within ~30 s of a mass delete
/// costs 10-30 times more: the allocator reads every recently freed inode it skips
/// (`recently_deleted`, half the passive's apply thread in a profile of this benchmark). A
/// timed run right after deleting the previous round's copy measured that, not the copy.
fn set_aside(pair_dir: &std::path::Path, tree: &std::path::Path) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let aside = pair_dir.join(common::bench::SET_ASIDE);
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let to = aside.join(n.to_string());
    match std::fs::rename(tree, &to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.with_context(|| format!("moving {} to {}", tree.display(), to.display())),
    }
}

/// Kills the passive and restarts it (its copy left as it was, or wiped), timing until the
/// active reports the resync done and the set in sync.
fn restart_passive_and_time(
    pair: &mut Pair,
    a: usize,
    wipe: bool,
) -> Result<(f64, understudy_replication::SyncProgress)> {
    let p = 1 - a;
    let before = last_sync_id(pair, a);
    if wipe {
        kill_and_wipe(pair, p)?;
    }
    drop_all_caches()?;
    let cpu_a = common::bench::cpu_secs(pair.proc(a).pid());
    let t = Instant::now();
    pair.start_node(p)?;
    let profiler = profile_start();
    let s = wait_resync(pair, a, before, Duration::from_secs(1800))?;
    profile_stop(profiler);
    let secs = t.elapsed().as_secs_f64();
    let used = common::bench::cpu_secs(pair.proc(a).pid()) - cpu_a
        + common::bench::cpu_secs(pair.proc(p).pid());
    println!(
        "BENCH   (both daemons used {used:.1} s of CPU in {secs:.1} s: {:.0}% of the 2 cores)",
        used / secs / 2.0 * 100.0
    );
    Ok((secs, s))
}

struct Fixture {
    _scratch: common::bench::Scratch,
    pair: Pair,
    a: usize,
    /// rsync's copy of the set, kept in step with the active's.
    rsync_copy: String,
    data: String,
    bytes: u64,
}

fn fixture(test: &str) -> Result<Fixture> {
    let (scratch, pair, a) = start(test, "sync", 1 << 30)?;
    let small = env_u64("BENCH_SYNC_SMALL", 10_000);
    let large = env_u64("BENCH_SYNC_LARGE", 4);
    let large_mib = env_u64("BENCH_SYNC_LARGE_MIB", 432);
    let m = pair.mountpoint().display().to_string();
    let v = py(
        &pair,
        a,
        POPULATE,
        &[
            m,
            small.to_string(),
            large.to_string(),
            large_mib.to_string(),
        ],
    )?;
    pair.wait_drained(a, Duration::from_secs(600))?;
    let data = pair.data_dir(a).display().to_string();
    let rsync_copy = scratch.0.join("rsync-copy").display().to_string();
    Ok(Fixture {
        _scratch: scratch,
        pair,
        a,
        rsync_copy,
        data,
        bytes: num(&v, "bytes") as u64,
    })
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn initial_sync_vs_rsync() {
    if !require_root("initial_sync_vs_rsync") {
        return;
    }
    let mut f = fixture("bench-sync-initial").expect("fixture");
    let (mut ours, mut theirs, mut theirs_durable) = (vec![], vec![], vec![]);
    for round in 0..rounds() {
        // Odd rounds time rsync first: whatever one run leaves behind for the next (the
        // page cache's state, the disk's) falls on both sides alike.
        let rsync_run = |f: &Fixture| {
            set_aside(f.pair.dir(), std::path::Path::new(&f.rsync_copy))
                .expect("set the old copy aside");
            drop_all_caches().expect("drop caches");
            let rs = timed_sh(&format!("rsync -a {}/ {}/", f.data, f.rsync_copy)).expect("rsync");
            (rs, timed_sh("sync").expect("sync"))
        };
        let early = (round % 2 == 1).then(|| rsync_run(&f));
        let (secs, s) = restart_passive_and_time(&mut f.pair, f.a, true).expect("initial sync");
        let (rs, flush) = early.unwrap_or_else(|| rsync_run(&f));
        println!(
            "BENCH initial_sync round {round}: understudy {secs:.2} s ({} entries listed: {} ms walking without the order lock, then {} ms under it; {} files, {} MiB sent, copy phase {} ms: reading {} ms, waiting for the passive {} ms, reads redone {}; final flush {} ms); rsync -a {rs:.2} s (+ {flush:.2} s to flush it to disk)",
            s.entries,
            s.draft_ms,
            s.listing_ms,
            s.files_total,
            s.bytes_sent >> 20,
            s.elapsed_ms.saturating_sub(s.finish_ms),
            s.reading_ms,
            s.waiting_for_peer_ms,
            s.reads_redone,
            s.finish_ms
        );
        ours.push(secs);
        theirs.push(rs);
        theirs_durable.push(rs + flush);
        // Every round's result is checked: a fast sync that left a file behind is no result.
        // (Once one reported success with 10,001 files sent without data.)
        common::repl::assert_same_tree(&f.pair.data_dir(f.a), &f.pair.data_dir(1 - f.a))
            .unwrap_or_else(|e| panic!("round {round}: the copies differ after the sync: {e}"));
    }
    let (o, t, td) = (med(ours), med(theirs), med(theirs_durable));
    let same = common::repl::assert_same_tree(&f.pair.data_dir(f.a), &f.pair.data_dir(1 - f.a));
    println!(
        "BENCH initial_sync: {:.0} MiB ({} small + large files) to an empty passive, median of {} rounds, caches dropped: understudy {o:.2} s (passive start to in sync, durable); rsync -a {t:.2} s ({td:.2} s with its data flushed); identical trees: {}; ratio={:.3} (to rsync -a) target=1.0: {}",
        f.bytes as f64 / MIB as f64,
        env_u64("BENCH_SYNC_SMALL", 10_000),
        rounds(),
        same.is_ok(),
        o / t,
        verdict(o <= t)
    );
    same.expect("identical trees");
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn delta_resync_vs_rsync() {
    if !require_root("delta_resync_vs_rsync") {
        return;
    }
    let mut f = fixture("bench-sync-delta").expect("fixture");
    // rsync's basis: a copy equal to the active's data before the change.
    timed_sh(&format!("rsync -a {}/ {}/", f.data, f.rsync_copy)).expect("basis");
    let (mut ours, mut theirs, mut sent) = (vec![], vec![], vec![]);
    let m = f.pair.mountpoint().display().to_string();
    let block = 32 << 10;
    for round in 0..rounds() {
        // The passive is down while 1% of the large files' blocks change on the active.
        f.pair.kill9(1 - f.a);
        let v = py(
            &f.pair,
            f.a,
            CHANGE_BLOCKS,
            &[
                m.clone(),
                "1".into(),
                block.to_string(),
                (round + 10).to_string(),
            ],
        )
        .expect("change blocks");
        f.pair
            .sh_in(f.a, "sync")
            .expect("flush the changes on the active");
        let (secs, s) = restart_passive_and_time(&mut f.pair, f.a, false).expect("delta resync");
        drop_all_caches().expect("drop caches");
        let rs = timed_sh(&format!(
            "rsync -a --no-whole-file {}/ {}/",
            f.data, f.rsync_copy
        ))
        .expect("rsync");
        println!(
            "BENCH delta_resync round {round}: {} blocks ({} MiB) changed; understudy {secs:.2} s ({}, {} files compared, {} MiB sent); rsync -a --no-whole-file {rs:.2} s",
            num(&v, "blocks"),
            num(&v, "bytes") as u64 >> 20,
            s.scope,
            s.files_total,
            s.bytes_sent >> 20
        );
        ours.push(secs);
        theirs.push(rs);
        sent.push(s.bytes_sent as f64);
    }
    let (o, t) = (med(ours), med(theirs));
    let same = common::repl::assert_same_tree(&f.pair.data_dir(f.a), &f.pair.data_dir(1 - f.a));
    println!(
        "BENCH delta_resync: 1% of the 32 KiB blocks of {} large files rewritten while the passive was down, median of {} rounds, caches dropped: understudy {o:.2} s (passive restart to in sync, {:.0} MiB sent); rsync -a --no-whole-file {t:.2} s; identical trees: {}; ratio={:.3} target=0.25: {}",
        env_u64("BENCH_SYNC_LARGE", 4),
        rounds(),
        med(sent) / MIB as f64,
        same.is_ok(),
        o / t,
        verdict(o <= 0.25 * t)
    );
    same.expect("identical trees");
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn reconnect_after_outage() {
    if !require_root("reconnect_after_outage") {
        return;
    }
    let (_scratch, pair, a) = start("bench-sync-reconnect", "sync", 1 << 30).expect("pair");
    let p = 1 - a;
    let mib = 100u64;
    let (mut ours, mut ours_from_link, mut base) = (vec![], vec![], vec![]);
    let m = pair.mountpoint().display().to_string();
    for round in 0..rounds() {
        // Baseline: 100 MiB over TCP from the active's node to the passive's, written and
        // fsynced there.
        let sink = pair.dir().join(format!("baseline-{round}"));
        let recv = pair
            .python_in(p, RECEIVE, &["7499", &sink.display().to_string()])
            .expect("receiver");
        let addr = understudy_testbed::PairNet::channel_addr(p, 0).to_string();
        let sent = py(
            &pair,
            a,
            SEND,
            &[addr.clone(), "7499".into(), mib.to_string()],
        )
        .expect("send");
        let mut recv = recv;
        let _ = recv.0.wait();
        let text = std::fs::read_to_string(pair.dir().join(format!("python-{p}.log")))
            .expect("receiver output");
        let got: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap_or_default()).expect("receiver JSON");
        assert_eq!(num(&got, "bytes") as u64, mib * MIB, "baseline transfer");
        let baseline = num(&sent, "secs").max(num(&got, "secs"));
        let _ = std::fs::remove_file(&sink);
        // The outage: 10 s without the channel, 100 MiB written meanwhile.
        pair.wait_drained(a, Duration::from_secs(60))
            .expect("drained");
        pair.net.cut_all_channels(a).expect("cut");
        let cut = Instant::now();
        py(
            &pair,
            a,
            WRITE_NEW,
            &[format!("{m}/outage{round}"), mib.to_string()],
        )
        .expect("write during the outage");
        std::thread::sleep(Duration::from_millis(9500).saturating_sub(cut.elapsed()));
        // The kernel lets a replugged cable carry packets only a moment after it is plugged
        // in (its link watcher applies carrier changes up to a second late): a probe times
        // when the link works again, so the figure can be read from there too.
        let mut probe = pair
            .python_in(a, LINK_PROBE, &[&addr, "7499", "5"])
            .expect("link probe");
        std::thread::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed()));
        let cpu_before = common::bench::cpu_secs(pair.proc(a).pid())
            + common::bench::cpu_secs(pair.proc(p).pid());
        let profiler = profile_start();
        pair.net.heal_all_channels(a).expect("heal");
        let healed = Instant::now();
        let healed_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let r = pair
            .wait_drained(a, Duration::from_secs(120))
            .expect("back in sync");
        let secs = healed.elapsed().as_secs_f64();
        profile_stop(profiler);
        let cpu = common::bench::cpu_secs(pair.proc(a).pid())
            + common::bench::cpu_secs(pair.proc(p).pid())
            - cpu_before;
        let _ = probe.0.wait();
        let text = std::fs::read_to_string(pair.dir().join(format!("python-{a}.log")))
            .expect("probe output");
        let up: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap_or_default()).expect("probe JSON");
        let link_secs = (up["up_at"].as_f64().expect("the link came back") - healed_at).max(0.0);
        println!(
            "BENCH reconnect round {round}: back in sync {secs:.3} s after the cable was plugged back in; the link carried packets again after {link_secs:.3} s, so {:.3} s after that (applied seq {}; both daemons used {cpu:.2} s of CPU from the plug); baseline transfer of {mib} MiB {baseline:.3} s",
            secs - link_secs,
            r.applied_seq
        );
        ours.push(secs);
        ours_from_link.push(secs - link_secs);
        base.push(baseline);
        pair.sh_in(a, &format!("rm -f {m}/outage{round}"))
            .expect("clean");
    }
    let (o, ol, b) = (med(ours), med(ours_from_link), med(base));
    println!(
        "BENCH reconnect: 10 s outage of the channel (cables pulled) with {mib} MiB written meanwhile, median of {} rounds: back in sync {o:.3} s after the cables were plugged in, {ol:.3} s after the link carried packets again; {mib} MiB over TCP between the nodes, written and fsynced, {b:.3} s; ratio={:.3} from the link's return (from the plug: {:.3}) target=2.0: {}",
        rounds(),
        ol / b,
        o / b,
        verdict(ol <= 2.0 * b)
    );
}

/// Writes 4 KiB at a time to one file for `secs` seconds, 1 ms apart, timing each write;
/// the writes of the first `quiet` seconds are the baseline, and a file `ready` is made when
/// they end. argv: path, secs, quiet, ready. Prints the latencies in ms as JSON.
const WRITE_PROBE: &str = r#"
import os, sys, time, json
path, secs, quiet, ready = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
buf = os.urandom(4096)
t0 = time.monotonic()
before, during = [], []
i = 0
while i < 100000:
    now = time.monotonic()
    if now - t0 > secs:
        break
    if now - t0 >= quiet and not during and not os.path.exists(ready):
        open(ready, "w").close()
    s = time.perf_counter_ns()
    os.pwrite(fd, buf, (i % 256) * 4096)
    d = (time.perf_counter_ns() - s) / 1e6
    (before if now - t0 < quiet else during).append(d)
    i += 1
    time.sleep(0.001)
def q(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else 0.0
print(json.dumps({"quiet_max_ms": max(before), "quiet_p99_ms": q(before, 0.99),
                  "max_ms": max(during), "p99_ms": q(during, 0.99), "writes": len(during)}))
"#;

/// An application keeps writing while an empty passive is resynced: its longest write is
/// the stall the resync causes (the listing and every record hold the capture's order
/// lock), against the same writer's longest write in the second before.
#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn write_stall_at_resync_start() {
    if !require_root("write_stall_at_resync_start") {
        return;
    }
    let (_scratch, mut pair, a) = start("bench-sync-stall", "sync", 1 << 30).expect("pair");
    let p = 1 - a;
    let small = env_u64("BENCH_SYNC_SMALL", 10_000);
    let m = pair.mountpoint().display().to_string();
    // Large files too: their chunks are read ahead outside the lock, and used only if
    // provably exact despite the writer's ops.
    let large = env_u64("BENCH_STALL_LARGE", 2);
    let large_mib = env_u64("BENCH_STALL_LARGE_MIB", 256);
    py(
        &pair,
        a,
        POPULATE,
        &[
            m.clone(),
            small.to_string(),
            large.to_string(),
            large_mib.to_string(),
        ],
    )
    .expect("populate");
    pair.wait_drained(a, Duration::from_secs(600))
        .expect("drained");
    let probe = format!("{m}/stall-probe");
    let (mut worst, mut quiet, mut held) = (vec![], vec![], vec![]);
    for round in 0..rounds() {
        let before = last_sync_id(&pair, a);
        kill_and_wipe(&mut pair, p).expect("wipe the passive");
        drop_caches(&pair, a).expect("drop caches");
        let ready = pair.dir().join("stall-probe-ready");
        let _ = std::fs::remove_file(&ready);
        let mut writer = pair
            .python_in(
                a,
                WRITE_PROBE,
                &[&probe, "5", "1", &ready.display().to_string()],
            )
            .expect("writer");
        // The passive starts once the writer has its baseline second.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the writer never got going");
            std::thread::sleep(Duration::from_millis(5));
        }
        pair.start_node(p).expect("start the passive");
        let s = wait_resync(&pair, a, before, Duration::from_secs(600)).expect("resync");
        let _ = writer.0.wait();
        let out = std::fs::read_to_string(pair.dir().join(format!("python-{a}.log")))
            .expect("writer output");
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("writer output {out:?}: {e}"));
        println!(
            "BENCH write_stall round {round}: longest write {:.1} ms (p99 {:.1} ms, {} writes) while {} entries were listed ({} ms without the order lock, {} ms under it) and {} files synced in {} ms ({} reads ahead redone under the lock), the engine holding the order lock {:.1} ms at most (in {}); the second before: longest {:.1} ms, p99 {:.1} ms",
            num(&v, "max_ms"),
            num(&v, "p99_ms"),
            num(&v, "writes"),
            s.entries,
            s.draft_ms,
            s.listing_ms,
            s.files_total,
            s.elapsed_ms,
            s.reads_redone,
            s.longest_hold_us as f64 / 1000.0,
            s.longest_hold_site,
            num(&v, "quiet_max_ms"),
            num(&v, "quiet_p99_ms"),
        );
        worst.push(num(&v, "max_ms"));
        quiet.push(num(&v, "quiet_max_ms"));
        held.push(s.listing_ms as f64);
    }
    let (w, q, h) = (med(worst), med(quiet), med(held));
    println!(
        "BENCH write_stall: {small} small files and {large} of {large_mib} MiB, median of {} rounds, caches dropped: longest application write while a resync starts {w:.1} ms (the order lock held {h:.0} ms for the listing); longest in the second before {q:.1} ms; ratio={:.2}",
        rounds(),
        w / q
    );
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn verify_vs_one_read() {
    if !require_root("verify_vs_one_read") {
        return;
    }
    let f = fixture("bench-sync-verify").expect("fixture");
    let (mut ours, mut buffered, mut direct, mut base) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds() {
        // One read of the set, cold, both ways: through the page cache (on this VM a cold
        // buffered read is CPU-bound in the kernel, at 0.6-3 GB/s as the host allows) and
        // with O_DIRECT (the disk's own pace). The baseline is the faster of the two.
        let read = |how: &str| {
            drop_caches(&f.pair, f.a).expect("drop caches");
            let v = py(&f.pair, f.a, READ_ALL, &[f.data.clone(), how.to_string()]).expect("read");
            (num(&v, "secs"), num(&v, "bytes") as u64)
        };
        let (read_buffered, bytes) = read("buffered");
        let (read_direct, _) = read("direct");
        drop_caches(&f.pair, f.a).expect("drop caches");
        let profiler = profile_start();
        let t = Instant::now();
        let out = f.pair.cli(f.a, &["verify", "--json"]);
        let secs = t.elapsed().as_secs_f64();
        profile_stop(profiler);
        assert!(
            out.status.success(),
            "verify: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Where the time went: the daemon's own phase lines for this verify.
        let log = understudy_testbed::strip_ansi(&f.pair.log(f.a));
        let phases: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("verify: ") && l.contains("after_ms="))
            .filter_map(|l| l.split("after_ms=").nth(1))
            .collect();
        println!(
            "BENCH verify round {round}: understudy verify {secs:.2} s, clean (daemon: compare list in, all hashed after ms: {}); one read of the set {read_buffered:.2} s buffered, {read_direct:.2} s direct ({} MiB)",
            phases[phases.len().saturating_sub(2)..].join(", "),
            bytes >> 20
        );
        ours.push(secs);
        buffered.push(read_buffered);
        direct.push(read_direct);
        base.push(read_buffered.min(read_direct));
    }
    let (o, b) = (med(ours), med(base));
    println!(
        "BENCH verify: {:.0} MiB set, median of {} rounds, caches dropped: understudy verify {o:.2} s (both copies read and hashed, block by block); one read of the set {:.2} s buffered, {:.2} s direct, the faster per round {b:.2} s; ratio={:.3} target=2.0: {}",
        f.bytes as f64 / MIB as f64,
        rounds(),
        med(buffered),
        med(direct),
        o / b,
        verdict(o <= 2.0 * b)
    );
}
