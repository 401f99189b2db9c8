//! Replies that must wait until the journal says an op is durable (fsync, fdatasync,
//! fsyncdir and writes through O_SYNC/O_DSYNC handles).
//!
//! `Journal::wait_durable` can take a network round trip plus a disk flush on the passive.
//! Waiting in a FUSE worker thread would let a few concurrent committers stall every other
//! request, reads included, so workers queue the reply here and move on. One thread waits
//! for the highest queued sequence number, which covers every lower one (durability is
//! cumulative), and then sends all the replies it covered: concurrent fsyncs share one
//! wait, like a group commit.
//!
//! The common case takes a shorter path: the journal calls back (`Journal::on_durable`)
//! on the thread that received the passive's confirmation, and the replies it covers are
//! sent right there. The waiting thread is for the rest (a passive that stalls or leaves,
//! a node that stops serving): it takes over a reply the callback left for
//! [`HANDOFF_AFTER`], and is not woken for each one meanwhile, since a wakeup right after
//! the reply costs the application's next request its CPU. A reply is taken out of the
//! queue under its lock by whichever path gets to it first, so each is sent exactly once.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use understudy_oplog::Journal;

/// How long a queued reply is left to the journal's callback before the waiting thread
/// takes it over. Far longer than a confirmation takes (under a millisecond), far shorter
/// than any timeout the wait itself applies (the stall timeout, a second or more).
const HANDOFF_AFTER: Duration = Duration::from_millis(5);

/// Called with whether the op is durable as the mode requires (false: fail the request).
type Reply = Box<dyn FnOnce(bool) + Send>;

struct Pending {
    seq: u64,
    queued_at: Instant,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// The thread waits for a reply to be queued, without a timeout: it must be woken.
    idle: bool,
    stop: bool,
}

pub(crate) struct Durability {
    queue: Mutex<Queue>,
    cv: Condvar,
    journal: Arc<dyn Journal>,
    /// The journal calls back on confirmations (`Journal::on_durable`).
    called_back: bool,
}

impl Durability {
    pub(crate) fn start(
        journal: Arc<dyn Journal>,
    ) -> std::io::Result<(Arc<Durability>, JoinHandle<()>)> {
        let d = Arc::new_cyclic(|me: &Weak<Durability>| {
            // Weak: the journal outlives this filesystem (it serves the next mount too), and
            // a strong reference would keep every old filesystem's queue alive through it.
            let listener = me.clone();
            let called_back = journal.on_durable(Arc::new(move |durable_seq| {
                if let Some(d) = listener.upgrade() {
                    d.answer_up_to(durable_seq, true);
                }
            }));
            Durability {
                queue: Mutex::new(Queue::default()),
                cv: Condvar::new(),
                journal: Arc::clone(&journal),
                called_back,
            }
        });
        let worker = Arc::clone(&d);
        let handle = std::thread::Builder::new()
            .name("capture-durable".into())
            .spawn(move || worker.run(journal.as_ref()))?;
        Ok((d, handle))
    }

    /// Runs `reply` once every op up to `seq` is durable.
    pub(crate) fn after(&self, seq: u64, reply: impl FnOnce(bool) + Send + 'static) {
        // Nothing to wait for: reply here, sparing a thread hop on the fsync's latency.
        if !self.journal.must_wait(seq) {
            return reply(true);
        }
        let mut q = self.queue.lock();
        q.pending.push(Pending {
            seq,
            queued_at: Instant::now(),
            reply: Box::new(reply),
        });
        if q.idle || !self.called_back {
            self.cv.notify_one();
        }
    }

    /// Lets the thread finish what is queued and exit.
    pub(crate) fn stop(&self) {
        self.queue.lock().stop = true;
        self.cv.notify_one();
    }

    /// Sends every queued reply for an op up to `seq`, with `durable`. The replies are
    /// taken out under the lock and sent after it, so a slow reply holds up no other path.
    fn answer_up_to(&self, seq: u64, durable: bool) {
        let covered: Vec<Pending> = {
            let mut q = self.queue.lock();
            if !q.pending.iter().any(|p| p.seq <= seq) {
                return;
            }
            let (covered, rest) = std::mem::take(&mut q.pending)
                .into_iter()
                .partition(|p| p.seq <= seq);
            q.pending = rest;
            covered
        };
        for p in covered {
            (p.reply)(durable);
        }
    }

    /// The highest seq queued, once there is a reply to wait for: at once without a
    /// callback or when stopping, else once a reply was left to us for [`HANDOFF_AFTER`].
    /// None when stopped with nothing queued.
    fn next_wait(&self) -> Option<u64> {
        let mut q = self.queue.lock();
        loop {
            let Some(oldest) = q.pending.iter().map(|p| p.queued_at).min() else {
                if q.stop {
                    return None;
                }
                q.idle = true;
                self.cv.wait(&mut q);
                q.idle = false;
                continue;
            };
            let handoff = oldest + HANDOFF_AFTER;
            if !self.called_back || q.stop || Instant::now() >= handoff {
                return q.pending.iter().map(|p| p.seq).max();
            }
            self.cv.wait_until(&mut q, handoff);
        }
    }

    fn run(&self, journal: &dyn Journal) {
        while let Some(max) = self.next_wait() {
            // The replies stay queued while we wait: the journal's callback may answer them
            // first. Whatever it left that this wait covers is answered here.
            let durable = journal.wait_durable(max);
            self.answer_up_to(max, durable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use understudy_oplog::{DurableListener, FileRef, Op, Timespec};

    /// A journal whose passive confirms by hand: `confirm` raises the durable seq and calls
    /// the listener as the replication queue does; `close` makes waits fail.
    #[derive(Default)]
    struct ByHand {
        state: parking_lot::Mutex<(u64, bool)>,
        cv: parking_lot::Condvar,
        listener: parking_lot::Mutex<Option<DurableListener>>,
    }

    impl ByHand {
        fn confirm(&self, seq: u64) {
            self.state.lock().0 = seq;
            let listener = self.listener.lock().clone();
            if let Some(l) = listener {
                l(seq);
            }
            self.cv.notify_all();
        }
        fn close(&self) {
            self.state.lock().1 = true;
            self.cv.notify_all();
        }
    }

    impl Journal for ByHand {
        fn record(&self, _op: Op, _mtimes: Vec<(FileRef, Timespec)>) -> u64 {
            0
        }
        fn wait_durable(&self, seq: u64) -> bool {
            let mut s = self.state.lock();
            loop {
                if s.0 >= seq {
                    return true;
                }
                if s.1 {
                    return false;
                }
                self.cv.wait(&mut s);
            }
        }
        fn must_wait(&self, seq: u64) -> bool {
            self.state.lock().0 < seq
        }
        fn on_durable(&self, listener: DurableListener) -> bool {
            *self.listener.lock() = Some(listener);
            true
        }
    }

    type Answers = mpsc::Receiver<(u64, bool, std::thread::ThreadId)>;

    fn queue(d: &Durability, seq: u64, tx: &mpsc::Sender<(u64, bool, std::thread::ThreadId)>) {
        let tx = tx.clone();
        d.after(seq, move |durable| {
            let _ = tx.send((seq, durable, std::thread::current().id()));
        });
    }

    fn answers(rx: &Answers) -> Vec<(u64, bool, std::thread::ThreadId)> {
        let mut out: Vec<_> = rx.try_iter().collect();
        out.sort_by_key(|a| a.0);
        out
    }

    #[test]
    fn a_confirmation_answers_the_fsyncs_it_covers_on_the_confirming_thread_once() {
        let journal = Arc::new(ByHand::default());
        let (d, thread) = Durability::start(journal.clone()).expect("start");
        let (tx, rx) = mpsc::channel();
        for seq in [3, 5, 9] {
            queue(&d, seq, &tx);
        }
        journal.confirm(5);
        let me = std::thread::current().id();
        assert_eq!(answers(&rx), vec![(3, true, me), (5, true, me)]);
        // Already durable: answered at once, on the caller's thread.
        queue(&d, 4, &tx);
        assert_eq!(answers(&rx), vec![(4, true, me)]);
        // The rest fail when the node stops serving, each once, from the waiting thread.
        journal.close();
        let last = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("answer");
        assert_eq!((last.0, last.1), (9, false));
        assert_ne!(last.2, me);
        d.stop();
        thread.join().expect("join");
        assert!(answers(&rx).is_empty(), "a reply was sent twice");
    }
}
