//! The queue's side of the passive's lease (invariant 29): when an fsync may be
//! acknowledged without the passive's confirmation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use understudy_oplog::{FileRef, Journal, Op};

use super::{Mode, QueueConfig, SetQueue};
use crate::changes::ChangeLog;
use crate::serving::Serving;

const LEASE: Duration = Duration::from_millis(300);

fn queue(dir: &std::path::Path) -> SetQueue {
    queue_with(dir, Mode::Sync, 1 << 20)
}

/// A queue of 1 MiB in `mode`, `mem_max_bytes` of it in memory.
fn queue_with(dir: &std::path::Path, mode: Mode, mem_max_bytes: u64) -> SetQueue {
    let changes = Arc::new(Mutex::new(
        ChangeLog::open(&dir.join("changes")).expect("change log"),
    ));
    SetQueue::new(
        QueueConfig {
            mode,
            queue_max_bytes: 1 << 20,
            mem_max_bytes,
            stall_timeout: LEASE,
            dir: dir.join("queue"),
            serving: serving(),
        },
        1,
        changes,
        false,
    )
    .expect("queue")
}

/// A node that surely serves for the whole test.
fn serving() -> Arc<Serving> {
    let s = Arc::new(Serving::default());
    s.renew(Duration::from_secs(3600));
    s
}

fn fsync(q: &SetQueue) -> u64 {
    q.record(
        Op::Fsync {
            file: FileRef::Path(b"f".to_vec()),
            datasync: false,
        },
        Vec::new(),
    )
}

fn timed_wait(q: &SetQueue, seq: u64) -> Duration {
    let started = Instant::now();
    q.wait_durable(seq);
    started.elapsed()
}

#[test]
fn with_no_lease_an_fsync_is_acknowledged_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    let seq = fsync(&q);
    assert!(
        !q.must_wait(seq),
        "no passive, no lease: nothing to wait for"
    );
    assert!(timed_wait(&q, seq) < Duration::from_millis(50));
}

#[test]
fn a_session_that_ends_unconfirmed_holds_the_fsync_until_the_lease_runs_out() {
    // The stream broke right after the passive renewed: it may take over on its copy
    // until the lease runs out, so nothing it lacks is acknowledged before then.
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    assert!(q.start_session(0));
    assert!(q.renewed());
    let renewed = Instant::now();
    q.end_session();
    let seq = fsync(&q);
    assert!(q.must_wait(seq));
    q.wait_durable(seq);
    assert!(
        renewed.elapsed() >= LEASE,
        "acknowledged {:?} after the renewal, before the lease ran out",
        renewed.elapsed()
    );
    // Once it has run out, at once.
    let seq = fsync(&q);
    assert!(timed_wait(&q, seq) < Duration::from_millis(50));
}

#[test]
fn a_stalled_passive_is_given_up_on_and_its_later_renewals_do_not_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    assert!(q.start_session(0));
    assert!(q.renewed());
    let seq = fsync(&q);
    // No confirmation comes: the wait gives up on the session after the stall timeout,
    // and acknowledges once the lease from the last renewal has run out.
    let waited = timed_wait(&q, seq);
    assert!(waited >= LEASE && waited < LEASE * 3, "{waited:?}");
    assert!(q.session_abandoned());
    assert!(!q.renewed(), "an abandoned session's renewal is not taken");
}

#[test]
fn a_confirmed_fsync_is_acknowledged_without_waiting_for_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Arc::new(queue(dir.path()));
    assert!(q.start_session(0));
    assert!(q.renewed());
    let seq = fsync(&q);
    // The sender takes it, and the passive confirms it.
    assert!(matches!(q.next_batch(1 << 20), Ok(super::Next::Records(_))));
    let acker = {
        let q = q.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q.ack(seq, seq, 0);
        })
    };
    let waited = timed_wait(&q, seq);
    acker.join().expect("acker");
    assert!(waited < LEASE, "{waited:?}");
}

#[test]
fn a_resync_confirmed_by_the_passive_does_not_hold_fsyncs() {
    // A passive being resynced cannot take over before the resync's end is durable on it,
    // which comes after every op recorded before that end: once it has renewed in the
    // resync session (so it knows), waiting for it buys nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    assert!(q.start_session(0));
    assert!(q.renewed());
    q.end_session();
    let _begin = q.start_resync_session();
    let seq = fsync(&q);
    // Not yet confirmed: the old lease still holds it (here until the stall timeout).
    let waited = timed_wait(&q, seq);
    assert!(waited >= LEASE / 2, "{waited:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    let _begin = q.start_resync_session();
    assert!(q.renewed(), "the passive renews in the resync session");
    let seq = fsync(&q);
    assert!(timed_wait(&q, seq) < Duration::from_millis(50));
}

#[test]
fn a_node_that_may_no_longer_serve_acknowledges_nothing_alone() {
    // A daemon frozen past its isolation timeout may have been taken over from: it waits
    // for its core loop to say it still serves, and fails the fsync if it demotes instead.
    let dir = tempfile::tempdir().expect("tempdir");
    let q = Arc::new(queue(dir.path()));
    q.cfg.serving.revoke();
    let seq = fsync(&q);
    assert!(q.must_wait(seq));
    let waiter = {
        let q = q.clone();
        std::thread::spawn(move || q.wait_durable(seq))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "acknowledged alone while not serving"
    );
    q.close();
    assert!(
        !waiter.join().expect("waiter"),
        "the demoted node fails the fsync"
    );
    // A node whose core loop says it still serves acknowledges alone at once.
    let dir = tempfile::tempdir().expect("tempdir");
    let q = queue(dir.path());
    let seq = fsync(&q);
    assert!(q.wait_durable(seq));
}

// ---- the spill: memory smaller than the queue ------------------------------------------

/// Data bytes of the writes the spill tests record.
const WRITE_DATA_BYTES: usize = 1000;
/// What the queue accounts for one such write (payload plus the per-record overhead).
const WRITE_ACCOUNTED_BYTES: u64 = WRITE_DATA_BYTES as u64 + 64;

/// An async-mode queue (no fsync waits) whose memory holds `mem_max_bytes`, the rest of
/// its 1 MiB spilling to disk.
fn spilling_queue(dir: &std::path::Path, mem_max_bytes: u64) -> SetQueue {
    queue_with(dir, Mode::Async, mem_max_bytes)
}

/// Records a write of `units` × [`WRITE_ACCOUNTED_BYTES`] (as the queue accounts it) whose
/// data is the seq it gets, repeated, so a record read back can be checked against its seq.
fn record_write(q: &SetQueue, units: u64) -> u64 {
    let seq = q.last_seq() + 1;
    let data_bytes = (units * WRITE_ACCOUNTED_BYTES - 64) as usize;
    let data: Vec<u8> = seq
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(data_bytes)
        .collect();
    let got = q.record(
        Op::Write {
            file: FileRef::Path(b"f".to_vec()),
            offset: 0,
            data,
        },
        Vec::new(),
    );
    assert_eq!(got, seq, "seqs are handed out in order");
    got
}

/// Where a batch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Memory,
    Spill,
}

/// The next batch's seqs and where it came from (`None`: nothing to send), each record's
/// data checked to be its own.
fn take_batch(q: &SetQueue, max_bytes: u64) -> Option<(Source, Vec<u64>)> {
    fn check(record: &understudy_oplog::Record) -> u64 {
        if let Op::Write { data, .. } = &record.op {
            let expected: Vec<u8> = record
                .seq
                .to_le_bytes()
                .iter()
                .copied()
                .cycle()
                .take(data.len())
                .collect();
            assert!(
                *data == expected,
                "seq {} carries another op's data",
                record.seq
            );
        }
        record.seq
    }
    match q.next_batch(max_bytes).expect("next batch") {
        super::Next::Records(records) => {
            Some((Source::Memory, records.iter().map(|r| check(r)).collect()))
        }
        super::Next::Encoded(bytes, last) => {
            let seqs: Vec<u64> = super::iter_encoded(&bytes).map(|r| check(&r)).collect();
            assert_eq!(seqs.last(), Some(&last), "the batch's last seq is its own");
            Some((Source::Spill, seqs))
        }
        super::Next::Idle => None,
    }
}

fn spill_file_exists(dir: &std::path::Path) -> bool {
    super::spill_path(&dir.join("queue")).exists()
}

/// (seqs in memory, first and last seq in the spill)
fn layout(q: &SetQueue) -> (Vec<u64>, Option<(u64, u64)>) {
    let inner = q.lock();
    (
        inner.mem.iter().map(|e| e.record.seq).collect(),
        inner.spill.as_ref().map(|s| (s.first_seq, s.last_seq)),
    )
}

#[test]
fn spilled_ops_reach_the_sender_in_order_while_more_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem_max_bytes = 4 * WRITE_ACCOUNTED_BYTES;
    let q = spilling_queue(dir.path(), mem_max_bytes);
    // No passive: memory fills, then the rest spills without anyone waiting.
    for _ in 0..10 {
        record_write(&q, 1);
    }
    assert_eq!(layout(&q), (vec![1, 2, 3, 4], Some((5, 10))));
    assert!(spill_file_exists(dir.path()));
    let s = q.snapshot();
    assert_eq!((s.queue_ops, s.mem_bytes), (10, mem_max_bytes));
    assert!(
        s.queue_bytes > s.mem_bytes + 6 * WRITE_DATA_BYTES as u64,
        "{s:?}"
    );

    assert!(q.start_session(0));
    let mut taken: Vec<u64> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    let mut arrivals_left = 12;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {taken:?}"
        );
        let batch = take_batch(&q, 2 * WRITE_ACCOUNTED_BYTES);
        // Ops keep arriving while the sender drains: first into the spill (the sender has
        // not passed it yet), then into memory behind it.
        if arrivals_left > 0 {
            arrivals_left -= 1;
            record_write(&q, 1);
        }
        let Some((source, seqs)) = batch else {
            if arrivals_left == 0 {
                break;
            }
            continue;
        };
        assert_eq!(
            seqs.first(),
            Some(&(taken.last().copied().unwrap_or(0) + 1)),
            "a batch starts right after the last one: {taken:?} then {seqs:?} ({source:?})"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a batch is contiguous: {seqs:?}"
        );
        taken.extend(&seqs);
        if sources.last() != Some(&source) {
            sources.push(source);
        }
        // The passive applied all but the newest op sent: both parts of the queue trim
        // while they still hold ops.
        let applied = taken.last().copied().unwrap_or(1) - 1;
        q.ack(applied, applied, 0);
        let s = q.snapshot();
        assert_eq!(
            s.queue_ops,
            s.last_seq - s.applied_seq,
            "queue_ops counts the ops the passive has not applied: {s:?} {:?}",
            layout(&q)
        );
        assert!(s.mem_bytes <= mem_max_bytes, "memory stays bounded: {s:?}");
    }
    let last = q.last_seq();
    assert_eq!(last, 22);
    assert_eq!(
        taken,
        (1..=last).collect::<Vec<_>>(),
        "every op once, in order"
    );
    assert_eq!(
        sources,
        [Source::Memory, Source::Spill, Source::Memory],
        "memory before the spill, the spill, then memory after it"
    );
    q.ack(last, last, 0);
    let s = q.snapshot();
    assert_eq!(
        (s.queue_ops, s.queue_bytes, s.mem_bytes),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(s.oldest_unacked.is_none());
    assert!(
        !spill_file_exists(dir.path()),
        "an applied spill's file goes"
    );
    assert_eq!(q.lock().unsent_bytes, 0, "nothing is left unsent");
}

#[test]
fn a_new_session_resends_memory_spill_and_memory_in_seq_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem_max_bytes = 4 * WRITE_ACCOUNTED_BYTES;
    let q = spilling_queue(dir.path(), mem_max_bytes);
    record_write(&q, 1);
    record_write(&q, 1);
    // Too big for what memory has left: it spills, and so does what follows it.
    record_write(&q, 3);
    record_write(&q, 1);
    assert_eq!(layout(&q), (vec![1, 2], Some((3, 4))));
    assert!(q.start_session(0));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![1, 2])));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Spill, vec![3, 4])));
    // The sender has passed the spill: new ops go to memory again, behind it.
    record_write(&q, 1);
    record_write(&q, 1);
    assert_eq!(layout(&q), (vec![1, 2, 5, 6], Some((3, 4))));
    // The passive went away before applying anything; the next session starts over, and
    // must not skip the spill between the two runs in memory.
    q.end_session();
    assert!(q.start_session(0));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![1, 2])));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Spill, vec![3, 4])));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![5, 6])));
    assert_eq!(take_batch(&q, 1 << 20), None);
    // The passive goes away again, for longer: memory must stay within its bound although
    // newer ops than the spill's are in it (invariant 18).
    q.end_session();
    for _ in 0..4 {
        record_write(&q, 1);
    }
    let s = q.snapshot();
    assert!(
        s.mem_bytes <= mem_max_bytes,
        "memory holds {} bytes, more than its {mem_max_bytes}: {:?}",
        s.mem_bytes,
        layout(&q)
    );
    assert_eq!(s.queue_ops, 10);
    // And everything still comes out in order, once.
    assert!(q.start_session(0));
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some((_, seqs)) = take_batch(&q, 1 << 20) {
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {taken:?}"
        );
        taken.extend(seqs);
    }
    assert_eq!(taken, (1..=10).collect::<Vec<_>>());
    q.ack(10, 10, 0);
    let s = q.snapshot();
    assert_eq!((s.queue_ops, s.queue_bytes), (0, 0), "{s:?}");
    assert!(!spill_file_exists(dir.path()));
    assert_eq!(q.lock().unsent_bytes, 0, "nothing is left unsent");
}

#[test]
fn status_counts_the_spill_from_its_oldest_unapplied_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = spilling_queue(dir.path(), 2 * WRITE_ACCOUNTED_BYTES);
    for _ in 0..4 {
        record_write(&q, 1);
    }
    assert_eq!(layout(&q), (vec![1, 2], Some((3, 4))));
    let spilled_at = Instant::now();
    assert!(q.start_session(0));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![1, 2])));
    q.ack(2, 2, 0);
    // One record per batch from the spill, so the passive can apply one of them.
    let framed_bytes = |q: &SetQueue| match q.next_batch(1).expect("next batch") {
        super::Next::Encoded(bytes, _) => bytes.len() as u64,
        _ => panic!("expected a record from the spill"),
    };
    let _third_bytes = framed_bytes(&q);
    let fourth_bytes = framed_bytes(&q);
    std::thread::sleep(Duration::from_millis(100));
    // The sender passed the spill: this one waits in memory, newer than the spilled ones.
    record_write(&q, 1);
    assert_eq!(layout(&q), (vec![5], Some((3, 4))));
    let s = q.snapshot();
    let oldest = s.oldest_unacked.expect("ops wait");
    assert!(
        oldest <= spilled_at,
        "the lag runs from the oldest op waiting (spilled, seq 3), not from memory's front \
         (seq 5): {:?}",
        oldest.elapsed()
    );
    assert_eq!(s.queue_ops, 3);
    // The passive applies seq 3: the spill is half drained.
    q.ack(3, 3, 0);
    let s = q.snapshot();
    assert_eq!(s.queue_ops, 2, "seqs 4 and 5 wait: {s:?}");
    assert_eq!(
        s.queue_bytes,
        WRITE_ACCOUNTED_BYTES + fourth_bytes,
        "seq 5 in memory and seq 4 in the spill wait: {s:?}"
    );
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![5])));
    q.ack(5, 5, 0);
    let s = q.snapshot();
    assert_eq!((s.queue_ops, s.queue_bytes), (0, 0), "{s:?}");
    assert!(s.oldest_unacked.is_none());
    assert!(!spill_file_exists(dir.path()));
}

#[test]
fn ops_newer_than_the_spill_move_to_it_when_memory_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem_max_bytes = 2 * WRITE_ACCOUNTED_BYTES;
    let q = spilling_queue(dir.path(), mem_max_bytes);
    for _ in 0..3 {
        record_write(&q, 1);
    }
    assert!(q.start_session(0));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Memory, vec![1, 2])));
    assert_eq!(take_batch(&q, 1 << 20), Some((Source::Spill, vec![3])));
    q.ack(2, 2, 0);
    // The sender passed the spill and memory has room: 4 and 5 wait there; 4 is sent.
    record_write(&q, 1);
    record_write(&q, 1);
    assert_eq!(layout(&q), (vec![4, 5], Some((3, 3))));
    assert_eq!(take_batch(&q, 1), Some((Source::Memory, vec![4])));
    // The passive is slow and memory is full: 4 (sent) and 5 (not yet) move to the spill
    // ahead of 6, and the sender carries on after 4.
    record_write(&q, 1);
    assert_eq!(layout(&q), (vec![], Some((3, 6))));
    assert_eq!(take_batch(&q, 1), Some((Source::Spill, vec![5])));
    // The passive applied up to 4 and the session broke; the next one resumes after it.
    q.ack(4, 4, 0);
    let s = q.snapshot();
    assert_eq!(s.queue_ops, 2, "{s:?}");
    // Every record here frames to the same length: half the spill (5 and 6) still waits.
    let spill_bytes = q.lock().spill.as_ref().map_or(0, |s| s.len);
    assert_eq!(s.queue_bytes * 2, spill_bytes, "{s:?}");
    q.end_session();
    assert!(q.start_session(4));
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some((source, seqs)) = take_batch(&q, 1 << 20) {
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {rest:?}"
        );
        assert_eq!(source, Source::Spill);
        rest.extend(seqs);
    }
    assert_eq!(rest, [5, 6]);
    assert_eq!(q.lock().unsent_bytes, 0, "the resent spill is all sent");
    q.ack(6, 6, 0);
    let s = q.snapshot();
    assert_eq!(
        (s.queue_ops, s.queue_bytes, s.mem_bytes),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(!spill_file_exists(dir.path()));
}

/// A new session resumes in the spill after the part the passive is known to have
/// applied, without reading it again: that part is overwritten with garbage here, which a
/// read of it would choke on.
#[test]
fn a_new_session_resumes_after_the_spills_applied_part() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let q = spilling_queue(dir.path(), WRITE_ACCOUNTED_BYTES);
    for _ in 0..6 {
        record_write(&q, 1);
    }
    assert!(q.start_session(0));
    // Memory holds op 1; 2..=6 are in the spill. Two spill batches of two ops each.
    assert_eq!(take_batch(&q, 1), Some((Source::Memory, vec![1])));
    let first = take_batch(&q, 1).expect("a spill batch");
    let second = take_batch(&q, 1).expect("another spill batch");
    assert_eq!((first.0, second.0), (Source::Spill, Source::Spill));
    let applied = *first.1.last().expect("ops");
    q.ack(applied, applied, 0);
    let applied_len = q
        .lock()
        .spill
        .as_ref()
        .map(|s| s.applied_len)
        .expect("a spill");
    assert!(applied_len > 0, "the first batch counts as applied");
    // The session breaks before the second batch is acknowledged.
    q.end_session();
    let spill = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("queue/spill.log"))
        .expect("the spill file");
    spill
        .write_all_at(&vec![0xff; applied_len as usize], 0)
        .expect("overwrite the applied part");
    assert!(q.start_session(applied));
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some((_, seqs)) = take_batch(&q, 1 << 20) {
        assert!(Instant::now() < deadline, "never drained: {taken:?}");
        taken.extend(seqs);
    }
    assert_eq!(taken, ((applied + 1)..=6).collect::<Vec<_>>());
    assert_eq!(q.lock().unsent_bytes, 0, "nothing is left unsent");
}

/// A passive that keeps up but stays a little behind, with a spill started: the spill file
/// takes every new record while it is not wholly applied, so it grows with everything that
/// passes through. Only what still waits counts against `queue_max_bytes` (a steady stream
/// of 106 MiB through a 16 MiB queue does not overflow it), and the applied part's disk
/// space is given back as it goes.
#[test]
fn a_passive_that_keeps_up_from_behind_does_not_overflow_the_spill() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let changes = Arc::new(Mutex::new(
        ChangeLog::open(&dir.path().join("changes")).expect("change log"),
    ));
    let q = SetQueue::new(
        QueueConfig {
            mode: Mode::Async,
            queue_max_bytes: 16 << 20,
            mem_max_bytes: 64 * WRITE_ACCOUNTED_BYTES,
            stall_timeout: LEASE,
            dir: dir.path().join("queue"),
            serving: serving(),
        },
        1,
        changes,
        false,
    )
    .expect("queue");
    // Away at first: memory fills and the rest spills.
    for _ in 0..20 {
        record_write(&q, 256);
    }
    assert!(q.start_session(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut previous_last = 0;
    for _ in 0..200 {
        record_write(&q, 256);
        record_write(&q, 256);
        let mut last = previous_last;
        while let Some((_, seqs)) = take_batch(&q, 1 << 20) {
            assert!(Instant::now() < deadline, "never drained");
            last = seqs.last().copied().unwrap_or(last);
        }
        // The passive applies up to what it was sent one round before: always behind.
        q.ack(previous_last, previous_last, 0);
        previous_last = last;
        assert!(
            !q.is_out_of_sync(),
            "the queue overflowed: {:?}",
            q.snapshot()
        );
    }
    let spill = std::fs::metadata(dir.path().join("queue/spill.log")).expect("a spill");
    assert!(
        spill.len() > 64 << 20,
        "the spill took the stream (the case this tests): {} bytes",
        spill.len()
    );
    assert!(
        spill.blocks() * 512 < 16 << 20,
        "the applied part's disk space was given back: {} of {} bytes allocated",
        spill.blocks() * 512,
        spill.len()
    );
    q.ack(previous_last, previous_last, 0);
    assert_eq!(q.snapshot().queue_ops, 0);
}
