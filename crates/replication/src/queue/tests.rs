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
    let changes = Arc::new(Mutex::new(
        ChangeLog::open(&dir.join("changes")).expect("change log"),
    ));
    SetQueue::new(
        QueueConfig {
            mode: Mode::Sync,
            queue_max_bytes: 1 << 20,
            mem_max_bytes: 1 << 20,
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
    assert!(!q.must_wait(), "no passive, no lease: nothing to wait for");
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
    assert!(q.must_wait());
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
    assert!(q.must_wait());
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
