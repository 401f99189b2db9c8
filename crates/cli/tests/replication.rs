//! Replication system tests: real daemons in network namespaces, the capture filesystem
//! mounted in the active's mount namespace, the passive applying to its own copy.

mod common;

use std::time::Duration;

use common::repl::{self, tree_digest};
use understudy_testbed::require_root;

#[test]
fn changes_on_the_active_reach_the_passive_copy_exactly() {
    if !require_root("changes_on_the_active_reach_the_passive_copy_exactly") {
        return;
    }
    let (pair, a) = repl::start("repl_basic", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    pair.sh_in(
        a,
        &format!(
            "set -e; cd {m}; mkdir -p d/e; echo hello > d/e/f; \
             dd if=/dev/urandom of=big bs=1M count=8 status=none; \
             ln d/e/f hard; ln -s d/e/f soft; chmod 640 big; \
             touch -d '2020-01-02 03:04:05.123456789' d/e/f; \
             setfattr -n user.k -v v big 2>/dev/null || true; \
             mv big big2; truncate -s 100 soft2 2>/dev/null || true; \
             exec 3>>keep; echo one >&3; rm keep; echo two >&3; exec 3>&-; \
             sync"
        ),
    )
    .expect("writes");
    let r = pair
        .wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    assert!(r.applied_seq > 10, "ops were captured: {r:?}");
    let active = tree_digest(&pair.data_dir(a)).expect("active tree");
    let passive = tree_digest(&pair.data_dir(p)).expect("passive tree");
    assert!(active.iter().any(|l| l.starts_with("big2 ")), "{active:#?}");
    assert_eq!(
        active, passive,
        "the passive copy differs from the active's"
    );
    // On the passive the path shows the copy, and nothing, root included, writes there.
    let on_passive = pair
        .sh_in(p, &format!("cat {m}/d/e/f; ls -A {m} | wc -l"))
        .expect("read on passive");
    let entries = pair
        .sh_in(a, &format!("ls -A {m} | wc -l"))
        .expect("ls on active");
    assert_eq!(
        on_passive.split_whitespace().collect::<Vec<_>>(),
        ["hello", entries.trim()],
        "the passive shows its copy at path"
    );
    let write = pair.sh_in(p, &format!("echo x > {m}/written-on-the-passive"));
    assert!(write.is_err(), "a write at the passive's path succeeded");
    assert!(!pair.data_dir(p).join("written-on-the-passive").exists());
}

#[test]
fn a_switchover_drains_and_the_new_active_serves_the_same_data() {
    if !require_root("a_switchover_drains_and_the_new_active_serves_the_same_data") {
        return;
    }
    let (pair, a) = repl::start("repl_switchover", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    pair.sh_in(a, &format!("set -e; for i in $(seq 1 200); do echo $i > {m}/f$i; done; dd if=/dev/zero of={m}/z bs=1M count=16 status=none"))
        .expect("writes");
    let out = pair.cli(a, &["switchover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_role(p, "active", Duration::from_secs(30))
        .expect("peer active");
    pair.wait_repl(p, "in_sync", Duration::from_secs(20))
        .expect("streaming back");
    let count = pair
        .sh_in(p, &format!("ls {m} | wc -l; cat {m}/f200"))
        .expect("read on new active");
    assert_eq!(count.split_whitespace().collect::<Vec<_>>(), ["201", "200"]);
    let events = pair.status(a).expect("status").events;
    let drain = events.iter().find(|e| {
        e.text
            .as_deref()
            .is_some_and(|t| t.contains("confirmed by the peer"))
    });
    assert!(
        drain.is_some(),
        "the switchover reports its drain: {events:#?}"
    );
    // News, not a warning (the log's level follows).
    assert_eq!(
        drain.and_then(|e| e.level.as_deref()),
        Some("info"),
        "{drain:?}"
    );
    // The old active now shows its copy read-only at the path.
    assert!(
        pair.sh_in(a, &format!("echo x > {m}/on-the-old-active"))
            .is_err(),
        "the demoted node's path is writable"
    );
    // And back: the old active now receives the new active's changes.
    pair.sh_in(p, &format!("echo back > {m}/from-new"))
        .expect("write on new active");
    pair.wait_drained(p, Duration::from_secs(20))
        .expect("drained back");
    assert_eq!(
        tree_digest(&pair.data_dir(a)).expect("tree"),
        tree_digest(&pair.data_dir(p)).expect("tree")
    );
}

/// Kills the active at a random moment while an application fsyncs record after record;
/// after the failover every record whose fsync returned is on the new active.
#[test]
fn no_fsync_acknowledged_record_is_lost_by_a_failover() {
    if !require_root("no_fsync_acknowledged_record_is_lost_by_a_failover") {
        return;
    }
    let cycles = common::env_u64("REPL_CRASH_CYCLES", 3);
    for cycle in 0..cycles {
        let (mut pair, a) =
            repl::start(&format!("repl_crash_{cycle}"), "sync", 256 << 20).expect("pair");
        let p = 1 - a;
        let (writer, data, acks) = pair.fsync_appender(a).expect("writer");
        // A different moment each cycle, after the writer got going.
        std::thread::sleep(Duration::from_millis(400 + 350 * cycle));
        pair.kill9(a);
        let acked = repl::last_acked(&acks);
        drop(writer);
        pair.wait_role(p, "active", Duration::from_secs(10))
            .expect("the passive took over");
        assert!(
            acked > 10,
            "the writer made progress before the kill: {acked}"
        );
        let present = pair
            .appended_records(p, &data)
            .expect("intact records on the new active");
        assert!(
            present >= acked,
            "cycle {cycle}: {acked} records were fsync-acknowledged but only {present} survived"
        );
        eprintln!("cycle {cycle}: acked {acked}, present {present}");
        if cycle == 0 {
            // The old active returns after its crash: its copy may hold ops the new active
            // never saw, so it is resynced (what it alone had goes to its quarantine) before
            // it counts as a copy again; then it equals the new active's.
            pair.start_node(a).expect("restart the old active");
            let r = pair
                .wait_repl(p, "in_sync", Duration::from_secs(30))
                .expect("the old active's copy is resynced");
            assert_eq!(r.sync.map(|s| s.kind).as_deref(), Some("resync"));
            pair.wait_drained(p, Duration::from_secs(20))
                .expect("drained");
            repl::assert_same_tree(&pair.data_dir(p), &pair.data_dir(a))
                .expect("the copies are identical again");
            let eligible = understudy_testbed::wait_until(
                Duration::from_secs(10),
                Duration::from_millis(50),
                || pair.status(a).ok().filter(|s| s.eligible),
            );
            assert!(eligible.is_some(), "a resynced copy is eligible again");
        }
    }
}

/// The channel (and with it the stream) is cut while the public network stays up: the
/// active keeps serving, and once the passive's lease has run out it acknowledges fsyncs
/// without it. When the active dies after that, the passive lacks those writes, so it must
/// not take over on its own (invariant 29); the operator may force it, and then finds
/// exactly the writes made before the lease ran out.
#[test]
fn a_copy_cut_off_while_the_active_served_is_not_failed_over_onto() {
    if !require_root("a_copy_cut_off_while_the_active_served_is_not_failed_over_onto") {
        return;
    }
    let (mut pair, a) = repl::start("repl_lease", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let (writer, data, acks) = pair.fsync_appender(a).expect("writer");
    std::thread::sleep(Duration::from_millis(500));
    let lease = pair.status(p).expect("status").data_lease;
    assert!(
        lease.as_ref().is_some_and(|l| l.caught_up && l.left_ms > 0),
        "a streaming copy is caught up and leased: {lease:?}"
    );
    pair.net.cut_all_channels(a).expect("cut the channel");
    let at_cut = repl::last_acked(&acks);
    // Three failover timeouts: the active serves on, the passive must not promote.
    std::thread::sleep(Duration::from_millis(3000));
    let acked = repl::last_acked(&acks);
    assert!(
        acked > at_cut + 10,
        "the active kept acknowledging fsyncs once the lease ran out: {at_cut} -> {acked}"
    );
    assert_eq!(pair.role(p).as_deref(), Some("passive"));
    pair.kill9(a);
    let acked = repl::last_acked(&acks);
    drop(writer);
    // Well past failover_timeout (1 s) and the probe's: still passive, and it says why.
    std::thread::sleep(Duration::from_millis(4000));
    let s = pair.status(p).expect("status");
    assert_eq!(
        s.role, "passive",
        "took over onto a copy that lacks acknowledged writes"
    );
    let waiting = s.waiting_for.unwrap_or_default();
    assert!(waiting.contains("lease"), "status says why: {waiting}");
    assert_eq!(
        s.data_lease.map(|l| l.left_ms),
        Some(0),
        "and that the lease ran out"
    );
    // The operator may take over anyway, knowing what is missing.
    let out = pair.cli(p, &["failover", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_role(p, "active", Duration::from_secs(10))
        .expect("the forced failover");
    let present = pair
        .appended_records(p, &data)
        .expect("intact records on the new active");
    assert!(
        present >= at_cut && present < acked,
        "the copy holds what was acknowledged with it ({at_cut}) but not what came after ({acked}): {present}"
    );
}

/// Only the stream's link is cut (heartbeats go on over the second link): the active
/// acknowledges fsyncs alone once the lease has run out, then stops cleanly and hands
/// over. Its drain cannot reach the passive, whose copy lacks those writes: it must not take
/// the role on the handover (nor later, on the failover rule).
#[test]
fn a_handover_over_a_cut_stream_is_not_taken() {
    if !require_root("a_handover_over_a_cut_stream_is_not_taken") {
        return;
    }
    let (mut pair, a) = repl::start("repl_handover", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let (writer, _data, acks) = pair.fsync_appender(a).expect("writer");
    std::thread::sleep(Duration::from_millis(500));
    pair.net.cut_channel(a, 0).expect("cut the stream's link");
    let at_cut = repl::last_acked(&acks);
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        repl::last_acked(&acks) > at_cut + 10,
        "the active went on alone once the lease ran out"
    );
    assert!(
        pair.status(p).expect("status").peer.connected,
        "heartbeats still flow over the second link"
    );
    pair.procs[a]
        .as_mut()
        .expect("running")
        .terminate(Duration::from_secs(20))
        .expect("a clean stop within 20 s");
    pair.procs[a] = None;
    drop(writer);
    std::thread::sleep(Duration::from_millis(3000));
    let s = pair.status(p).expect("status");
    assert_eq!(s.role, "passive", "took the role over a cut stream");
    let waiting = s.waiting_for.unwrap_or_default();
    // Either refusal is right: the lease ran out, or (the sender having dialled again over
    // the other link) the copy has not caught up with the new session's head.
    assert!(
        waiting.contains("lease") || waiting.contains("caught up"),
        "status says why: {waiting}"
    );
}

/// The active's daemon freezes (SIGSTOP: a VM pause, a hang) with an fsync waiting for the
/// passive, which takes over meanwhile. When the daemon wakes, its lease on the passive
/// has long run out, but it must not acknowledge that fsync on its own: the new active
/// does not have the write.
#[test]
fn a_frozen_active_acknowledges_nothing_its_successor_lacks() {
    if !require_root("a_frozen_active_acknowledges_nothing_its_successor_lacks") {
        return;
    }
    let (pair, a) = repl::start("repl_frozen", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let (writer, data, acks) = pair.fsync_appender(a).expect("writer");
    std::thread::sleep(Duration::from_millis(500));
    pair.proc(a).stop();
    pair.wait_role(p, "active", Duration::from_secs(10))
        .expect("the passive took over from the frozen active");
    std::thread::sleep(Duration::from_millis(500));
    pair.proc(a).cont();
    pair.wait_role(a, "passive", Duration::from_secs(10))
        .expect("the woken active demoted");
    std::thread::sleep(Duration::from_millis(1000));
    let acked = repl::last_acked(&acks);
    drop(writer);
    let present = pair
        .appended_records(p, &data)
        .expect("intact records on the new active");
    assert!(
        acked > 10 && present >= acked,
        "{acked} records were fsync-acknowledged but the new active has {present}"
    );
}

/// The same with SQLite: every committed transaction survives, and the database is sound.
#[test]
fn no_committed_sqlite_transaction_is_lost_by_a_failover() {
    if !require_root("no_committed_sqlite_transaction_is_lost_by_a_failover") {
        return;
    }
    let cycles = common::env_u64("REPL_CRASH_CYCLES", 3);
    for cycle in 0..cycles {
        let (mut pair, a) =
            repl::start(&format!("repl_sqlite_{cycle}"), "sync", 256 << 20).expect("pair");
        let p = 1 - a;
        let db = pair.mountpoint().join("app.db");
        let acks = pair.dir().join("acks");
        let writer = pair
            .python_in(
                a,
                repl::SQLITE_WRITER,
                &[&db.display().to_string(), &acks.display().to_string()],
            )
            .expect("writer");
        std::thread::sleep(Duration::from_millis(500 + 300 * cycle));
        pair.kill9(a);
        let acked = repl::last_acked(&acks);
        drop(writer);
        pair.wait_role(p, "active", Duration::from_secs(10))
            .expect("the passive took over");
        assert!(
            acked > 5,
            "the writer made progress before the kill: {acked}"
        );
        let check = pair
            .sh_in(
                p,
                &format!(
                    "python3 -c \"import sqlite3; d=sqlite3.connect('{}'); \
                     print(d.execute('PRAGMA integrity_check').fetchone()[0]); \
                     print(d.execute('SELECT count(*), coalesce(max(id),0) FROM t').fetchone())\"",
                    db.display()
                ),
            )
            .expect("open the database on the new active");
        let mut lines = check.lines();
        assert_eq!(lines.next(), Some("ok"), "integrity_check: {check}");
        let counts = lines.next().unwrap_or_default();
        let nums: Vec<u64> = counts
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "{check}");
        assert!(
            nums[0] >= acked && nums[1] >= acked && nums[0] == nums[1],
            "cycle {cycle}: {acked} commits acknowledged, database has {counts}"
        );
        eprintln!("cycle {cycle}: acked {acked}, database {counts}");
    }
}

/// The passive stays away past the queue limit: the active keeps serving, the set goes
/// out of sync, every changed file is in the change log, and nothing crashes. When the
/// passive returns, only those files are compared and copied (a resync, not a full scan),
/// and its copy equals the active's again.
#[test]
fn a_long_disconnection_overflows_then_resyncs_from_the_change_log() {
    if !require_root("a_long_disconnection_overflows_then_resyncs_from_the_change_log") {
        return;
    }
    let (mut pair, a) = repl::start("repl_overflow", "sync", 8 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    // Files from before the outage, which the resync must not need to touch.
    pair.sh_in(
        a,
        &format!("set -e; mkdir {m}/old; for i in $(seq 1 200); do echo $i > {m}/old/$i; done"),
    )
    .expect("files before the outage");
    pair.wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    // The change log notes paths in segments of at least 2 s, and closes one only once the
    // passive has persisted past its start: two more writes, each drained, the first after
    // 2 s and the second after the passive's persist interval, put the old files in a
    // closed segment the passive holds, which the resync below then need not list.
    for (pause, marker) in [(2_200, "marker1"), (700, "marker2")] {
        std::thread::sleep(Duration::from_millis(pause));
        pair.sh_in(a, &format!("echo x > {m}/{marker}"))
            .expect("marker");
        pair.wait_drained(a, Duration::from_secs(20))
            .expect("drained");
    }
    // A clean stop: the passive records where it is, so the overflow below is the only
    // reason its return needs a resync (killed, its unknown end would need one anyway).
    pair.procs[p]
        .as_mut()
        .expect("running")
        .terminate(Duration::from_secs(30))
        .expect("a clean stop of the passive");
    pair.procs[p] = None;
    pair.sh_in(
        a,
        &format!(
            "set -e; for i in $(seq 1 40); do dd if=/dev/zero of={m}/f$i bs=1M count=1 status=none conv=fsync; done; sync"
        ),
    )
    .expect("writes go on without the passive, fsync included");
    let r = pair
        .wait_repl(a, "out_of_sync", Duration::from_secs(10))
        .expect("out of sync");
    assert!(
        r.changed_files >= 40,
        "every changed file is recorded: {r:?}"
    );
    assert!(r.queue_bytes <= 8 << 20, "the queue stays bounded: {r:?}");
    let changes = pair
        .dir()
        .join(format!("state-{}/sets/data/changes", common::NAMES[a]));
    let log: String = std::fs::read_dir(&changes)
        .expect("the change log is on disk")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(log.lines().any(|l| l == "f40"), "{log}");
    assert_eq!(
        pair.role(a).as_deref(),
        Some("active"),
        "the active kept its role"
    );
    // The passive returns: a resync of what the change log names brings it back.
    pair.start_node(p).expect("restart passive");
    let r = pair
        .wait_repl(a, "in_sync", Duration::from_secs(60))
        .expect("resynced");
    let sync = r.sync.expect("a resync ran");
    assert_eq!(sync.kind, "resync");
    // The change log names the 40 new files (and perhaps their neighbours written in the
    // same segment, which the quick check then passes): nothing else is compared.
    assert!(
        sync.files_total <= 45,
        "only the changed files were compared, not the 240: {sync:?}"
    );
    // And only their names were listed: the 200 old files were not even walked (the quick
    // check above would pass a whole-tree listing too).
    assert_ne!(sync.scope, "whole tree", "{sync:?}");
    assert!(
        sync.entries <= 50,
        "the listing walked more than the changed paths: {sync:?}"
    );
    pair.sh_in(a, &format!("echo still > {m}/after"))
        .expect("still serving");
    pair.wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    repl::assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("identical copies");
}

/// Writes `count` files of 64 KiB under argv[1], fsyncing each, and prints how long each
/// fsync took, in milliseconds. argv: directory, count.
const FSYNC_TIMER: &str = r#"
import os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
for i in range(int(sys.argv[2])):
    fd = os.open("%s/f%d" % (sys.argv[1], i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, os.urandom(65536))
    started = time.monotonic()
    os.fsync(fd)
    print((time.monotonic() - started) * 1000.0)
    os.close(fd)
"#;

/// Writes and fsyncs `count` files under `dir` on node `i`, the whole run bounded by a
/// `timeout`; returns each fsync's duration.
fn timed_fsyncs(pair: &common::Pair, i: usize, dir: &str, count: u32) -> Vec<Duration> {
    let script = pair.dir().join("fsync_timer.py");
    std::fs::write(&script, FSYNC_TIMER).expect("write the script");
    let out = pair
        .sh_in(
            i,
            &format!("timeout 30 python3 {} {dir} {count}", script.display()),
        )
        .expect("the writer ran to its end within 30 s");
    let durations: Vec<Duration> = out
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    assert_eq!(durations.len(), count as usize, "{out}");
    durations
}

/// The active's replication entry as `understudy status --json` shows it.
fn repl_status(pair: &common::Pair, i: usize) -> understudy_daemon::report::ReplicationReport {
    pair.status(i)
        .expect("status --json")
        .replication
        .into_iter()
        .next()
        .expect("a replicated set")
}

/// Async mode: an fsync returns once the data is durable locally, whatever the passive
/// does. With the passive's daemon frozen (SIGSTOP), fsyncs on the active stay prompt while
/// the status shows ops waiting and a lag that grows; the active gives the silent session up
/// (`disconnected`) and keeps serving. Once the passive wakes, it is streamed to from the
/// queue and its copy equals the active's.
#[test]
fn async_fsyncs_do_not_wait_for_a_frozen_passive_which_catches_up_after() {
    if !require_root("async_fsyncs_do_not_wait_for_a_frozen_passive_which_catches_up_after") {
        return;
    }
    let (pair, a) = repl::start("repl_async", "async", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    pair.sh_in(
        a,
        &format!("set -e; mkdir {m}/before; echo one > {m}/before/f"),
    )
    .expect("writes before the freeze");
    let before = pair
        .wait_drained(a, Duration::from_secs(20))
        .expect("drained before the freeze");
    // Local fsyncs of 64 KiB take milliseconds; waiting for the passive would take at least
    // the stall timeout (1 s here), as a sync-mode set's first fsync does.
    let fsync_bound = Duration::from_millis(500);

    pair.proc(p).stop();
    let frozen_at = std::time::Instant::now();
    let fsyncs = timed_fsyncs(&pair, a, &format!("{m}/while-frozen"), 20);
    // The ops the frozen passive has missed so far were all captured before this moment.
    let first_batch_done = std::time::Instant::now();
    assert!(
        fsyncs.iter().all(|d| *d < fsync_bound),
        "an fsync waited for the frozen passive: {fsyncs:?}"
    );
    let first = repl_status(&pair, a);
    assert!(first.queue_ops > 0, "ops wait for the passive: {first:?}");
    assert!(first.queue_bytes > 0, "{first:?}");
    assert_eq!(
        first.applied_seq, before.applied_seq,
        "a frozen passive applies nothing"
    );
    std::thread::sleep(Duration::from_millis(500));
    let later = repl_status(&pair, a);
    assert!(
        later.lag_ms >= first.lag_ms + 400,
        "the lag grows while the passive is away: {} ms, then {} ms 500 ms later",
        first.lag_ms,
        later.lag_ms
    );
    assert!(
        later.queue_ops >= first.queue_ops,
        "{first:?} then {later:?}"
    );
    // Still connected, but trailing by a second: shown catching up, not in sync.
    let trailing = pair
        .wait_repl(a, "catching_up", Duration::from_secs(4))
        .expect("a passive trailing by a second shows catching up");
    assert!(trailing.lag_ms >= 1000, "{trailing:?}");
    // The passive says nothing for the session's idle timeout (5 s): the active gives the
    // session up, and the set shows it.
    let gone = pair
        .wait_repl(a, "disconnected", Duration::from_secs(15))
        .expect("the active gives the silent session up");
    let frozen_for = frozen_at.elapsed();
    assert!(gone.queue_ops >= later.queue_ops, "{gone:?}");
    // The oldest op waiting was captured after the freeze and before the first batch
    // ended; the status was taken at most a poll (50 ms) before it was seen.
    let waited_at_least = first_batch_done
        .elapsed()
        .saturating_sub(Duration::from_millis(200));
    assert!(
        gone.lag_ms >= waited_at_least.as_millis() as u64
            && gone.lag_ms <= frozen_for.as_millis() as u64,
        "the lag runs from the first op the passive missed: {} ms, frozen {frozen_for:?}, \
         first batch done {:?} ago",
        gone.lag_ms,
        first_batch_done.elapsed()
    );
    // Disconnected, the active still serves, fsyncs included.
    let fsyncs = timed_fsyncs(&pair, a, &format!("{m}/while-disconnected"), 10);
    assert!(
        fsyncs.iter().all(|d| *d < fsync_bound),
        "an fsync waited with no passive: {fsyncs:?}"
    );
    let alone = repl_status(&pair, a);
    assert!(alone.queue_ops > gone.queue_ops, "{gone:?} then {alone:?}");
    assert_eq!(alone.state, "disconnected", "{alone:?}");

    pair.proc(p).cont();
    let woken_at = std::time::Instant::now();
    let r = pair
        .wait_drained(a, Duration::from_secs(30))
        .expect("the woken passive catches up");
    eprintln!(
        "frozen: {} ops waiting, lag {} ms then {} ms; disconnected after {frozen_for:?} \
         with lag {} ms; alone: {} ops; caught up {:?} after waking",
        first.queue_ops,
        first.lag_ms,
        later.lag_ms,
        gone.lag_ms,
        alone.queue_ops,
        woken_at.elapsed()
    );
    assert_eq!((r.queue_ops, r.queue_bytes, r.lag_ms), (0, 0, 0), "{r:?}");
    assert_eq!(
        r.sync.as_ref().map(|s| s.id),
        before.sync.as_ref().map(|s| s.id),
        "streamed to from the queue, not resynced: {r:?}"
    );
    assert_eq!(pair.role(a).as_deref(), Some("active"));
    assert_eq!(pair.role(p).as_deref(), Some("passive"));
    repl::assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("identical copies");
}

/// The comparison the system tests rely on sees extended attributes and their values.
#[test]
fn tree_digest_sees_xattr_values() {
    let dir = std::env::temp_dir().join(format!("understudy-digest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("f");
    std::fs::write(&file, b"x").expect("file");
    let set = |value: &str| {
        std::process::Command::new("setfattr")
            .args(["-n", "user.k", "-v", value])
            .arg(&file)
            .status()
    };
    match set("one") {
        Ok(s) if s.success() => {}
        other => {
            let _ = std::fs::remove_dir_all(&dir);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("setfattr user.k failed here: {other:?}");
            }
            eprintln!(
                "SKIP tree_digest_sees_xattr_values: no setfattr or no user xattrs in {}",
                dir.display()
            );
            return;
        }
    }
    let one = tree_digest(&dir).expect("digest");
    assert!(one.iter().any(|l| l.contains("user.k=")), "{one:?}");
    assert!(set("two").expect("setfattr").success());
    let two = tree_digest(&dir).expect("digest");
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(one, two, "a changed xattr value must change the digest");
}

/// Times one 4 KiB write to argv[1] opened with the flags named in argv[2] ("plain",
/// "dsync-direct": write-only with O_DSYNC, which capture serves with direct I/O, or
/// "dsync-cached": read-write with O_DSYNC, through the page cache): prints seconds.
const TIMED_WRITE: &str = r#"
import os, sys, time
flags = {"plain": os.O_WRONLY, "dsync-direct": os.O_WRONLY | os.O_DSYNC,
         "dsync-cached": os.O_RDWR | os.O_DSYNC}[sys.argv[2]]
fd = os.open(sys.argv[1], flags | os.O_CREAT, 0o644)
started = time.monotonic()
os.write(fd, b"x" * 4096)
print(time.monotonic() - started)
os.close(fd)
"#;

fn timed_write(pair: &common::Pair, i: usize, path: &str, how: &str) -> Duration {
    let script = pair.dir().join("timed_write.py");
    std::fs::write(&script, TIMED_WRITE).expect("write the script");
    let out = pair
        .sh_in(
            i,
            &format!("timeout 30 python3 {} {path} {how}", script.display()),
        )
        .expect("the write ended within 30 s");
    Duration::from_secs_f64(out.trim().parse().expect("seconds"))
}

/// In sync mode an O_DSYNC write returns only once the passive holds it: with the passive
/// frozen it waits (until the active gives the passive up, after the stall timeout), while
/// a plain write does not; both kinds of O_DSYNC open (direct I/O and cached) do.
#[test]
fn an_o_dsync_write_waits_for_the_passive_in_sync_mode() {
    if !require_root("an_o_dsync_write_waits_for_the_passive_in_sync_mode") {
        return;
    }
    let (pair, a) = repl::start("repl_dsync", "sync", 64 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    for how in ["dsync-direct", "dsync-cached"] {
        let path = format!("{m}/{how}");
        let live = timed_write(&pair, a, &path, how);
        assert!(
            live < Duration::from_millis(300),
            "{how} with the passive streaming took {live:?}"
        );
        pair.proc(p).stop();
        let plain = timed_write(&pair, a, &format!("{m}/plain-{how}"), "plain");
        let frozen = timed_write(&pair, a, &path, how);
        pair.proc(p).cont();
        assert!(
            plain < Duration::from_millis(300),
            "a plain write waited for the frozen passive: {plain:?}"
        );
        assert!(
            frozen >= Duration::from_millis(500),
            "{how} returned after {frozen:?} with the passive frozen: it did not wait for it"
        );
        // The passive is streamed to again before the next kind is tried.
        pair.wait_repl(a, "in_sync", Duration::from_secs(30))
            .expect("in sync again");
        pair.wait_drained(a, Duration::from_secs(30))
            .expect("drained");
    }
}

/// A switchover the peer cannot confirm the data for (the stream's link is cut, heartbeats
/// still flow over the second) is called off: the applications start again on the active,
/// which keeps the role, instead of handing it to a copy that lacks the last writes. An
/// async set: the passive's lease (sync mode only) would not have stopped this handover.
#[test]
fn a_switchover_the_peer_cannot_confirm_is_called_off() {
    if !require_root("a_switchover_the_peer_cannot_confirm_is_called_off") {
        return;
    }
    let (pair, a) = repl::start("repl_switch_off", "async", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.net.cut_channel(a, 0).expect("cut the stream's link");
    pair.sh_in(a, &format!("echo unconfirmed > {m}/late"))
        .expect("a write the peer does not get");
    let out = pair.cli(a, &["switchover"]);
    assert!(
        out.status.success(),
        "the switchover was refused outright: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let called_off = loop {
        let note = pair.status(a).ok().and_then(|s| {
            s.events
                .iter()
                .filter(|e| {
                    e.text
                        .as_deref()
                        .is_some_and(|t| t.contains("switchover called off"))
                })
                .map(|e| (e.text.clone().unwrap_or_default(), e.level.clone()))
                .next()
        });
        if let Some((note, level)) = note {
            assert_eq!(level.as_deref(), Some("warning"), "{note}");
            break note;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the switchover was never called off"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(called_off.contains("run here again"), "{called_off}");
    assert_eq!(pair.role(a).as_deref(), Some("active"), "kept the role");
    assert_eq!(pair.role(p).as_deref(), Some("passive"), "{called_off}");
    // The data stayed here, mounted: once the link is back, the late write (and a new one)
    // reach the passive.
    pair.sh_in(a, &format!("echo after > {m}/after"))
        .expect("a write after the called-off switchover");
    pair.net.heal_channel(a, 0).expect("heal the link");
    pair.wait_drained(a, Duration::from_secs(60))
        .expect("drained");
    for (name, content) in [("late", "unconfirmed\n"), ("after", "after\n")] {
        assert_eq!(
            std::fs::read_to_string(pair.data_dir(p).join(name)).expect("on the passive"),
            content
        );
    }
}

/// When a cut channel heals, the SYNs the active's dialler sent meanwhile go out together and
/// several connect at once. Only one of them may go on to a TLS handshake: the others used
/// to complete theirs too, on both CPUs just as the backlog started to flow, and the passive
/// logged each as a replication connection without a hello.
#[test]
fn a_healed_channel_reconnects_the_stream_with_one_handshake() {
    if !require_root("a_healed_channel_reconnects_the_stream_with_one_handshake") {
        return;
    }
    let (pair, a) = repl::start("repl_heal", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint().display().to_string();
    pair.wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    pair.net.cut_all_channels(a).expect("cut");
    // Written while the channel is down: the active goes on alone once the lease runs out.
    pair.sh_in(
        a,
        &format!("dd if=/dev/urandom of={m}/during bs=1M count=8 status=none"),
    )
    .expect("writes during the cut");
    // Long enough for the stream's session to end (a writer stalls for 5 s) and the
    // dialler to start attempts that the cut link holds.
    std::thread::sleep(Duration::from_secs(8));
    let logged_before = pair.log(p).len();
    pair.net.heal_all_channels(a).expect("heal");
    pair.wait_drained(a, Duration::from_secs(30))
        .expect("back in sync");
    // Give any abandoned connection time to be logged (the passive waits for a hello).
    std::thread::sleep(Duration::from_secs(1));
    let log = pair.log(p);
    let since = log.get(logged_before..).unwrap_or_default();
    let losers = since
        .matches("replication connection without a hello")
        .count();
    assert_eq!(
        losers, 0,
        "connections that completed a handshake for nothing after the heal"
    );
    repl::assert_same_tree(&pair.data_dir(a), &pair.data_dir(p)).expect("the copies agree");
}
