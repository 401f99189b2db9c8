//! Replies that must wait until the journal says an op is durable (fsync, fdatasync,
//! fsyncdir and writes through O_SYNC/O_DSYNC handles).
//!
//! `Journal::wait_durable` can take a network round trip plus a disk flush on the passive.
//! Waiting in a FUSE worker thread would let a few concurrent committers stall every other
//! request, reads included, so workers queue the reply here and move on. One thread waits
//! for the highest queued sequence number, which covers every lower one (durability is
//! cumulative), and then sends all the replies it covered: concurrent fsyncs share one
//! wait, like a group commit.

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use understudy_oplog::Journal;

/// Called with whether the op is durable as the mode requires (false: fail the request).
type Reply = Box<dyn FnOnce(bool) + Send>;

#[derive(Default)]
struct Queue {
    pending: Vec<(u64, Reply)>,
    stop: bool,
}

pub(crate) struct Durability {
    queue: Mutex<Queue>,
    cv: Condvar,
    journal: Arc<dyn Journal>,
}

impl Durability {
    pub(crate) fn start(
        journal: Arc<dyn Journal>,
    ) -> std::io::Result<(Arc<Durability>, JoinHandle<()>)> {
        let d = Arc::new(Durability {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            journal: Arc::clone(&journal),
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
        if !self.journal.must_wait() {
            return reply(true);
        }
        let mut q = self.queue.lock();
        q.pending.push((seq, Box::new(reply)));
        self.cv.notify_one();
    }

    /// Lets the thread finish what is queued and exit.
    pub(crate) fn stop(&self) {
        self.queue.lock().stop = true;
        self.cv.notify_one();
    }

    fn run(&self, journal: &dyn Journal) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                while q.pending.is_empty() && !q.stop {
                    self.cv.wait(&mut q);
                }
                if q.pending.is_empty() {
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            let max = batch.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
            let durable = journal.wait_durable(max);
            for (_, reply) in batch {
                reply(durable);
            }
        }
    }
}
