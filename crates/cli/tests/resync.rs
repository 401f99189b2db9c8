//! Synchronization lifecycle system tests: real daemons in network namespaces. An empty
//! passive synced while a writer works, `understudy verify`, the old active's unreplicated
//! writes preserved after a failback, a split brain resolved, and a restart after a clean
//! stop that compares nothing.

mod common;

use std::time::{Duration, Instant};

use common::repl::{self, assert_same_tree};
use common::{Pair, NAMES};
use understudy_testbed::require_root;

/// Runs `understudy verify --json` on node i and returns the differences it reports. With
/// `repair`, the command must end with every repair it started done (exit 0).
fn verify(pair: &Pair, i: usize, repair: bool) -> Vec<(String, String)> {
    let mut args = vec!["verify", "--json", "--timeout-s", "300"];
    if repair {
        args.push("--repair");
    }
    let out = pair.cli(i, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code();
    let expected = if repair {
        code == Some(0)
    } else {
        code == Some(0) || code == Some(3)
    };
    assert!(
        expected,
        "verify (repair: {repair}) exited with {code:?}: {text} {}; logs in {}",
        String::from_utf8_lossy(&out.stderr),
        pair.dir().display()
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("verify JSON");
    if repair {
        // Each set that differed names its repair, seen to its end.
        for s in v.as_array().into_iter().flatten() {
            let differed = s["verify"]["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
            if differed {
                assert_eq!(s["repair"]["phase"], "done", "{s:#}");
                assert_eq!(s["repair"]["id"], s["verify"]["repair_id"], "{s:#}");
            }
        }
    }
    v.as_array()
        .expect("one entry per set")
        .iter()
        .flat_map(|s| {
            s["verify"]["differences"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| {
            (
                d[0].as_str().unwrap_or_default().to_string(),
                d[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// An application at work on the tree `populate` makes, for a while: appends to small
/// files, 4 KiB rewrites of the large file, new files renamed into place and (with
/// "with-deletes") unlinks. argv: root, seed, seconds, "with-deletes" or "no-deletes".
const WRITER: &str = r#"
import os, sys, time, random
root, seed, secs, deletes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "with-deletes"
random.seed(seed)
end = time.time() + secs
i = 0
while time.time() < end:
    i += 1
    k = random.randrange(4 if deletes else 3)
    if k == 0:
        with open(os.path.join(root, "small/1/%d" % random.randrange(1, 251)), "a") as f:
            f.write("more %d\n" % i)
    elif k == 1:
        with open(os.path.join(root, "big1"), "r+b") as f:
            f.seek(random.randrange(0, 24 << 20))
            f.write(os.urandom(4096))
    elif k == 2:
        p = os.path.join(root, "new%d" % i)
        with open(p, "w") as f:
            f.write("x" * i)
        os.rename(p, os.path.join(root, "small/2/renamed%d" % i))
    else:
        try:
            os.unlink(os.path.join(root, "small/3/%d" % random.randrange(1, 251)))
        except FileNotFoundError:
            pass
    time.sleep(0.002)
"#;

/// A varied tree: many small files, big files, a sparse file, hard links, symlinks, xattrs,
/// a fifo, odd modes and times.
fn populate(pair: &Pair, i: usize, root: &str) {
    pair.sh_in(
        i,
        &format!(
            "set -e; cd {root}; mkdir -p small deep/a/b/c; \
             for d in 0 1 2 3; do mkdir -p small/$d; for f in $(seq 1 250); do echo \"$d $f\" > small/$d/$f; done; done; \
             dd if=/dev/urandom of=big1 bs=1M count=24 status=none; \
             dd if=/dev/urandom of=big2 bs=1M count=8 status=none; \
             truncate -s 64M sparse; printf hello | dd of=sparse bs=1 seek=33554432 conv=notrunc status=none; \
             echo linked > deep/a/b/c/f; ln deep/a/b/c/f hard1; ln deep/a/b/c/f deep/hard2; \
             ln -s deep/a/b/c/f soft; ln -s /nonexistent/target dangling; \
             setfattr -n user.color -v blue big2; setfattr -n user.k -v v deep; \
             mkfifo pipe; chmod 4750 big2; chmod 1777 deep/a; chown 1234:5678 small/0/1; \
             touch -h -d '2001-02-03 04:05:06.123456789' soft; \
             touch -d '2010-01-01 00:00:00.5' deep/a/b"
        ),
    )
    .expect("populate");
}

/// A new, empty passive (a replaced node) is synced from the active while a writer keeps
/// changing files; afterwards verify finds no difference and the trees are identical.
#[test]
fn an_empty_passive_is_synced_while_a_writer_works() {
    if !require_root("an_empty_passive_is_synced_while_a_writer_works") {
        return;
    }
    let (mut pair, a) = repl::start("resync_initial", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    populate(&pair, a, &m);
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    // The passive is replaced by an empty one: its copy and state are gone.
    pair.kill9(p);
    let state = pair.dir().join(format!("state-{}", NAMES[p]));
    std::fs::remove_dir_all(state.join("sets")).expect("wipe the passive's copy");
    // A writer changes files (small, big, renames, deletes) during the sync.
    let writer = pair
        .python_in(a, WRITER, &[&m, "7", "8", "with-deletes"])
        .expect("writer");
    pair.start_node(p).expect("start the new passive");
    let r = pair
        .wait_repl(a, "in_sync", Duration::from_secs(120))
        .expect("synced");
    let sync = r.sync.expect("a resync ran");
    assert_eq!(sync.kind, "resync", "{sync:?}");
    // The listing was walked without the order lock and patched with what the writer
    // changed meanwhile (no hard-linked file is written): the path this test must cover.
    assert!(
        pair.log(a)
            .contains("listing drafted without the order lock, patched under it"),
        "the draft was not used:\n{}",
        pair.log(a)
    );
    // Let the writer finish, then compare online and on disk.
    let mut writer = writer;
    let _ = writer.0.wait();
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    let diffs = verify(&pair, a, false);
    assert!(diffs.is_empty(), "verify found differences: {diffs:?}");
    // Online: a verify while the application writes (appends, rewrites of the large file,
    // renames) finds no difference either: what it compares is taken at one point of the
    // stream on both sides.
    let writer = pair
        .python_in(a, WRITER, &[&m, "11", "4", "no-deletes"])
        .expect("writer during verify");
    let diffs = verify(&pair, a, false);
    let mut writer = writer;
    let still_writing = writer.0.try_wait().ok().flatten().is_none();
    let _ = writer.0.wait();
    assert!(
        diffs.is_empty(),
        "verify under writes found differences: {diffs:?}"
    );
    assert!(
        still_writing,
        "the writer had ended before the verify did: nothing was tested"
    );
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("identical copies");
}

/// The progress of an initial sync shows in the active's status while it runs: the bytes to
/// copy, the bytes done rising while a large file is copied (not only when a file ends), a
/// rate and an ETA, the rate as of the moment the status is read. The sync is capped at
/// 64 MiB/s, so its 192 MiB file takes about 3 s.
#[test]
fn the_status_shows_an_initial_syncs_progress_while_it_runs() {
    if !require_root("the_status_shows_an_initial_syncs_progress_while_it_runs") {
        return;
    }
    const SIZE: u64 = 192 << 20;
    let (mut pair, a) =
        repl::start_rate_capped("resync_progress", "sync", 256 << 20, 64 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.sh_in(
        a,
        &format!(
            "dd if=/dev/urandom of={m}/big bs=1M count={} status=none",
            SIZE >> 20
        ),
    )
    .expect("a large file");
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    // A sync record from before (if any) is not this sync's.
    let before = pair.repl(a).expect("status").sync.map(|s| s.id);
    pair.kill9(p);
    let state = pair.dir().join(format!("state-{}", NAMES[p]));
    std::fs::remove_dir_all(state.join("sets")).expect("wipe the passive's copy");
    pair.start_node(p).expect("start the new passive");
    // The active's status, polled while the sync copies, until it is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut copying = Vec::new();
    let done = loop {
        let sync = pair
            .repl(a)
            .ok()
            .and_then(|r| r.sync)
            .filter(|s| Some(s.id) != before);
        if let Some(s) = sync {
            assert_ne!(s.phase, "failed", "the sync failed: {s:?}");
            if s.phase == "done" {
                break s;
            }
            if s.phase == "copying" {
                copying.push(s);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sync did not end within 60 s; seen copying: {copying:#?}; logs in {}",
            pair.dir().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done.bytes_done, done.bytes_total, "{done:?}");
    // The configured cap held: 192 MiB at 64 MiB/s cannot take less than 3 s (some slack
    // for the first second's burst).
    assert!(
        done.elapsed_ms >= 2_500,
        "the sync took {} ms: faster than sync_rate_max_bytes_per_s allows: {done:?}",
        done.elapsed_ms
    );
    assert!(
        copying.len() >= 10,
        "the copy was seen running only {} times: {copying:#?}",
        copying.len()
    );
    assert!(
        copying.iter().all(|s| s.bytes_total >= SIZE),
        "bytes_total counts the file: {copying:#?}"
    );
    assert!(
        copying
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "bytes_done never falls: {copying:#?}"
    );
    // Counted as its records are made: many values while the one large file is copied.
    let mut partial: Vec<u64> = copying
        .iter()
        .map(|s| s.bytes_done)
        .filter(|&d| d > 0 && d < SIZE)
        .collect();
    partial.dedup();
    assert!(
        partial.len() >= 3,
        "bytes_done rose only {} times during the copy: {copying:#?}",
        partial.len()
    );
    assert!(
        copying
            .iter()
            .any(|s| s.bytes_per_s > 0 && s.eta_s.is_some()),
        "no rate or ETA while copying: {copying:#?}"
    );
    // The rate is as of the status read (bytes done over the time elapsed then), not as of
    // the engine's last update, which lags by up to a record's time at the capped rate.
    for s in copying.iter().filter(|s| s.elapsed_ms >= 500) {
        let now = s.bytes_done as f64 * 1000.0 / s.elapsed_ms as f64;
        assert!(
            (s.bytes_per_s as f64 - now).abs() <= now * 0.01 + 1.0,
            "the rate {} B/s is not bytes_done over elapsed_ms ({now:.0} B/s): {s:?}",
            s.bytes_per_s
        );
    }
    pair.wait_repl(a, "in_sync", Duration::from_secs(30))
        .expect("in sync");
}

/// Verify finds a difference planted behind replication's back, and --repair fixes it.
#[test]
fn verify_reports_a_planted_difference_and_repair_fixes_it() {
    if !require_root("verify_reports_a_planted_difference_and_repair_fixes_it") {
        return;
    }
    let (pair, a) = repl::start("resync_verify", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    populate(&pair, a, &m);
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    assert!(
        verify(&pair, a, false).is_empty(),
        "a fresh copy verifies clean"
    );
    // Corrupt the passive's copy directly: one block of a big file, one mode, one extra file.
    let copy = pair.data_dir(p);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.join("big1"))
            .expect("open");
        f.write_all_at(b"corrupted", 5 << 20).expect("corrupt");
    }
    std::fs::write(copy.join("stray"), b"not on the active").expect("stray");
    let diffs = verify(&pair, a, false);
    let paths: Vec<&str> = diffs.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"big1"), "{diffs:?}");
    assert!(paths.contains(&"stray"), "{diffs:?}");
    // --repair waits for the repair it started (not only for the verify's result) and
    // exits 0 only once it is done, so a verify right after sees the repaired copy.
    let repaired = verify(&pair, a, true);
    assert!(
        repaired.iter().any(|(p, _)| p == "big1"),
        "the repair's verify reports what it found: {repaired:?}"
    );
    let after = verify(&pair, a, false);
    assert!(after.is_empty(), "repair left differences: {after:?}");
    assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("identical copies");
}

/// Reads the quarantine manifest(s) of node i.
fn quarantined(pair: &Pair, i: usize) -> Vec<serde_json::Value> {
    let q = pair
        .dir()
        .join(format!("state-{}/sets/data/quarantine", NAMES[i]));
    let mut out = Vec::new();
    for e in std::fs::read_dir(&q).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path().join("MANIFEST.jsonl")).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

/// A is active and writes; its channel (and so replication) is cut, it writes more, and
/// loses power; B takes over and writes. When A comes back it becomes passive, the writes
/// B never got are preserved in A's quarantine, and then A's copy equals B's.
#[test]
fn failback_preserves_the_old_actives_unreplicated_writes() {
    if !require_root("failback_preserves_the_old_actives_unreplicated_writes") {
        return;
    }
    let (mut pair, a) = repl::start("resync_failback", "sync", 256 << 20).expect("pair");
    let b = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.sh_in(
        a,
        &format!("set -e; mkdir {m}/d; for i in $(seq 1 50); do echo base$i > {m}/d/$i; done"),
    )
    .expect("base");
    pair.wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    // Cut the channel: what A writes now never reaches B.
    pair.net.cut_all_channels(a).expect("cut");
    pair.sh_in(
        a,
        &format!("set -e; echo lost > {m}/only-on-a; echo changed-on-a > {m}/d/7; rm {m}/d/8"),
    )
    .expect("writes during the cut");
    // Power loss of A, cables back (A is dead, B must take over on evidence).
    pair.kill9(a);
    pair.net.heal_all_channels(a).expect("heal");
    pair.wait_role(b, "active", Duration::from_secs(20))
        .expect("B takes over");
    pair.sh_in(
        b,
        &format!("set -e; echo from-b > {m}/only-on-b; echo changed-on-b > {m}/d/9"),
    )
    .expect("B writes");
    // A comes back.
    pair.start_node(a).expect("restart A");
    pair.wait_repl(b, "in_sync", Duration::from_secs(60))
        .expect("A resynced from B");
    assert_eq!(pair.role(a).as_deref(), Some("passive"));
    let q = quarantined(&pair, a);
    let paths: Vec<String> = q
        .iter()
        .map(|e| e["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(paths.contains(&"only-on-a".to_string()), "{q:#?}");
    assert!(paths.contains(&"d/7".to_string()), "{q:#?}");
    // The manifest describes each preserved file: size, mtime, content hash, generation.
    let lost = q
        .iter()
        .find(|e| e["path"] == "only-on-a")
        .expect("in the manifest");
    assert_eq!(lost["kind"], "file", "{lost}");
    assert_eq!(lost["size"], 5, "{lost}");
    assert_eq!(
        lost["blake3"].as_str(),
        Some(blake3::hash(b"lost\n").to_hex().as_str()),
        "{lost}"
    );
    assert!(
        lost["mtime"].as_str().is_some_and(|t| t.contains('.')),
        "{lost}"
    );
    assert!(lost["generation"].as_u64().is_some_and(|g| g > 0), "{lost}");
    let kept = std::fs::read_dir(
        pair.dir()
            .join(format!("state-{}/sets/data/quarantine", NAMES[a])),
    )
    .expect("quarantine")
    .flatten()
    .map(|e| e.path().join("files/only-on-a"))
    .find(|p| p.exists())
    .expect("the preserved file");
    assert_eq!(std::fs::read(kept).expect("read"), b"lost\n");
    let status = pair.status(a).expect("status");
    let warnings = &status.replication[0].warnings;
    assert!(
        warnings.iter().any(|w| w.contains("quarantine")),
        "the status tells the operator: {warnings:?}"
    );
    assert!(
        status
            .events
            .iter()
            .any(|e| e.text.as_deref().unwrap_or("").contains("preserved")),
        "an event tells the operator: {:?}",
        status.events
    );
    // A was killed while active, in the same boot: it holds every op B got from it, so the
    // two agree up to where B took over (op 101, the last of A's generation B applied), not
    // at 0 as when A's unrecorded position counted as nothing agreed. With its change log
    // pruned, 0 meant comparing the whole tree.
    let b_log = understudy_testbed::strip_ansi(
        &std::fs::read_to_string(pair.dir().join(format!("{}.log", NAMES[b]))).expect("B's log"),
    );
    let plan = b_log
        .lines()
        .find(|l| l.contains("the passive cannot be streamed to"))
        .unwrap_or_default()
        .to_string();
    let common: Option<u64> = plan
        .split("common=")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(
        common.is_some_and(|c| c >= 51),
        "A and B agree at least on the 51 ops of the base: {plan}"
    );
    pair.wait_drained(b, Duration::from_secs(20))
        .expect("drained");
    assert_same_tree(&pair.data_dir(b), &pair.data_dir(a)).expect("A equals B");
    let diffs = verify(&pair, b, false);
    assert!(diffs.is_empty(), "{diffs:?}");
}

/// Both networks between the nodes are cut while each still reaches the public network:
/// both become active and both write. When the networks heal exactly one stays active, the
/// other's changes are in its quarantine, and the copies converge.
#[test]
fn a_split_brain_ends_with_one_active_and_the_others_changes_preserved() {
    if !require_root("a_split_brain_ends_with_one_active_and_the_others_changes_preserved") {
        return;
    }
    let (pair, a) = repl::start("resync_split", "sync", 256 << 20).expect("pair");
    let b = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.sh_in(
        a,
        &format!("set -e; for i in $(seq 1 20); do echo base$i > {m}/f$i; done"),
    )
    .expect("base");
    pair.wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    pair.net.cut_all_channels(a).expect("cut channel");
    pair.net.split_public().expect("split public");
    pair.wait_role(b, "active", Duration::from_secs(20))
        .expect("B takes over: split brain");
    assert_eq!(pair.role(a).as_deref(), Some("active"), "A still active");
    pair.sh_in(a, &format!("set -e; echo a > {m}/by-a; echo a > {m}/f1"))
        .expect("A writes");
    pair.sh_in(b, &format!("set -e; echo b > {m}/by-b; echo b > {m}/f2"))
        .expect("B writes");
    pair.net.heal_split_public().expect("heal public");
    pair.net.heal_all_channels(a).expect("heal channel");
    // Exactly one active, and the pair settles with the passive resynced.
    let winner = pair.wait_settled(Duration::from_secs(30)).expect("settled");
    let loser = 1 - winner;
    pair.wait_repl(winner, "in_sync", Duration::from_secs(60))
        .expect("resynced");
    // On stepping down, the loser knew its copy differed from the winner's (its writes were
    // never confirmed), so it was not eligible to take over before the resync.
    assert!(
        pair.log(loser)
            .contains("it stopped serving with ops the peer never confirmed"),
        "the loser's copy was not marked out of sync when it stepped down"
    );
    let q = quarantined(&pair, loser);
    let mine = if loser == a { "by-a" } else { "by-b" };
    assert!(
        q.iter().any(|e| e["path"] == mine),
        "the loser's own file is preserved: {q:#?}"
    );
    pair.wait_drained(winner, Duration::from_secs(20))
        .expect("drained");
    assert_same_tree(&pair.data_dir(winner), &pair.data_dir(loser)).expect("converged");
}

/// After a clean stop of both nodes (the active drains first), a restart compares nothing:
/// no resync runs, and the logs say so.
#[test]
fn a_restart_after_a_clean_stop_compares_nothing() {
    if !require_root("a_restart_after_a_clean_stop_compares_nothing") {
        return;
    }
    let (mut pair, a) = repl::start("resync_clean", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    populate(&pair, a, &m);
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    // The logs grow across restarts, and the first start streams too ("no comparison"):
    // only what is written after the restart counts.
    let logged_before: Vec<usize> = (0..2).map(|i| pair.log(i).len()).collect();
    // Clean stops: the active first (it drains to the passive), then the passive.
    for i in [a, p] {
        pair.procs[i]
            .as_mut()
            .expect("running")
            .terminate(Duration::from_secs(30))
            .expect("a clean stop within 30 s");
        pair.procs[i] = None;
    }
    pair.start_node(0).expect("start");
    pair.start_node(1).expect("start");
    let a2 = pair.wait_settled(Duration::from_secs(30)).expect("settled");
    let r = pair
        .wait_repl(a2, "in_sync", Duration::from_secs(30))
        .expect("in sync");
    assert!(r.sync.is_none(), "no resync ran: {:?}", r.sync);
    for i in 0..2 {
        assert_eq!(pair.repl(i).expect("status").resyncs, 0);
    }
    let log = pair.log(a2);
    let since_restart = log.get(logged_before[a2]..).unwrap_or_default();
    assert!(
        since_restart.contains("no comparison"),
        "the log says nothing was compared after the restart:\n{since_restart}"
    );
    assert_same_tree(&pair.data_dir(a2), &pair.data_dir(1 - a2)).expect("identical copies");
}

/// A short outage is caught up from the active's queue: the channel is cut long enough for
/// the session to end (the passive hears nothing for 5 s), the active keeps writing, and
/// after the heal a new session streams what was queued. Nothing is compared: no resync
/// runs, and the log says the new session streamed.
#[test]
fn a_short_outage_is_caught_up_from_the_queue_without_a_comparison() {
    if !require_root("a_short_outage_is_caught_up_from_the_queue_without_a_comparison") {
        return;
    }
    let (pair, a) = repl::start("resync_short_outage", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    populate(&pair, a, &m);
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    let logged_before = pair.log(a).len();
    pair.net.cut_all_channels(a).expect("cut the channel");
    // Plain writes (no fsync) while the passive is away: they wait in the queue.
    pair.sh_in(
        a,
        &format!("set -e; mkdir -p {m}/outage; for i in $(seq 1 50); do echo during$i > {m}/outage/f$i; done"),
    )
    .expect("writes during the outage");
    std::thread::sleep(Duration::from_secs(7));
    pair.sh_in(a, &format!("echo last > {m}/outage/last"))
        .expect("a write late in the outage");
    pair.net.heal_all_channels(a).expect("heal the channel");
    assert_eq!(pair.role(a).as_deref(), Some("active"), "no failover");
    pair.wait_drained(a, Duration::from_secs(30))
        .expect("caught up");
    let log = pair.log(a);
    let since_cut = log.get(logged_before..).unwrap_or_default();
    assert!(
        since_cut.contains("replication session ended"),
        "the outage did not end the session, so it tested nothing:\n{since_cut}"
    );
    assert!(
        since_cut.contains("streaming, no comparison"),
        "the new session did not stream from the queue:\n{since_cut}"
    );
    for i in [a, p] {
        let r = pair.repl(i).expect("status");
        assert_eq!(r.resyncs, 0, "node {i} resynced: {r:?}");
        assert!(r.sync.is_none(), "node {i} ran a sync: {:?}", r.sync);
    }
    assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("identical copies");
}

/// The only node left (its peer dead) writes, is shut down cleanly (a reboot for
/// maintenance) and started again alone. Its copy is the newest there is, although the peer
/// never confirmed its last writes: it must not count as out of sync (which would bar it
/// from the role), and the operator's `failover --force` (a lone node does not promote
/// itself) brings it back with its data.
#[test]
fn a_lone_node_restarted_after_a_clean_stop_keeps_an_eligible_copy() {
    if !require_root("a_lone_node_restarted_after_a_clean_stop_keeps_an_eligible_copy") {
        return;
    }
    let (mut pair, a) = repl::start("resync_lone_restart", "async", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.kill9(p);
    pair.sh_in(a, &format!("echo alone > {m}/written-alone"))
        .expect("a write the peer never gets");
    pair.procs[a]
        .as_mut()
        .expect("running")
        .terminate(Duration::from_secs(30))
        .expect("a clean stop within 30 s");
    pair.procs[a] = None;
    pair.start_node(a).expect("start again, alone");
    let r = pair
        .wait_repl(a, "disconnected", Duration::from_secs(20))
        .expect("a passive copy with no peer");
    assert_ne!(r.state, "out_of_sync", "{r:?}");
    let s = pair.status(a).expect("status");
    assert!(
        !s.waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("out of sync"),
        "{:?}",
        s.waiting_for
    );
    let out = pair.cli(a, &["failover", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_role(a, "active", Duration::from_secs(30))
        .expect("serves again");
    let back = pair
        .sh_in(a, &format!("cat {m}/written-alone"))
        .expect("read");
    assert_eq!(back, "alone\n");
}
