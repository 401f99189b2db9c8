//! The per-set replication queue on the active: numbers captured ops, holds them until the
//! passive has applied them, and spills to disk while the passive is away. When even the
//! spill would overflow `queue_max_bytes` the queue is dropped: the passive is then out of
//! sync, and the change log (which notes every captured op's paths, always) says what a
//! resync must compare.
//!
//! Bounds: memory holds at most `mem_max_bytes` of records; memory plus spill at most
//! `queue_max_bytes`. A writer waits for room only while a passive is connected and making
//! progress, and never longer than `stall_timeout`; with no passive it never waits.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{error, warn};
use understudy_oplog::{
    decode_record, encode_record, DurableListener, FileRef, Journal, Op, Record, Timespec,
};

use crate::changes::ChangeLog;

/// How often an fsync that may be acknowledged only alone checks again whether this node
/// still serves (the core loop renews that on its own schedule, without a signal).
const SERVING_POLL: Duration = Duration::from_millis(10);

/// The durability mode of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
}

/// How the set stands with its passive, as `understudy status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetState {
    InSync,
    CatchingUp,
    OutOfSync,
    Disconnected,
}

impl SetState {
    pub fn as_str(self) -> &'static str {
        match self {
            SetState::InSync => "in_sync",
            SetState::CatchingUp => "catching_up",
            SetState::OutOfSync => "out_of_sync",
            SetState::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub mode: Mode,
    pub queue_max_bytes: u64,
    pub mem_max_bytes: u64,
    /// How long a writer may wait for room, or an fsync for the passive's ack, before the
    /// set stops waiting for this passive (the session is dropped and the set degrades).
    pub stall_timeout: Duration,
    /// Directory for the spill file.
    pub dir: PathBuf,
    /// Whether this node surely still serves: an fsync is acknowledged without the passive
    /// only while it does.
    pub serving: Arc<crate::serving::Serving>,
}

/// A record waiting for the passive, in memory.
struct Entry {
    record: Arc<Record>,
    bytes: u64,
    at: Instant,
}

/// Records beyond memory, appended to a file while the passive is away or slow. They are
/// one contiguous run of seqs, `first_seq..=last_seq`.
struct Spill {
    file: File,
    len: u64,
    first_seq: u64,
    last_seq: u64,
    /// When `first_seq` was spilled: the age of the oldest spilled op still waiting, or an
    /// overestimate of it once the passive applied part of the spill (the file keeps no
    /// times, and status errs on the side of a larger lag).
    first_at: Instant,
    /// Bytes at the file's start whose records the passive has applied: they stay in the
    /// file (it is only ever removed whole) but no longer wait for the passive.
    applied_len: u64,
    /// Batches sent from the file in this session and not yet wholly applied, oldest
    /// first: (their last seq, the offset after them). How `applied_len` follows the acks,
    /// a batch at a time: one entry per batch in flight, and one per run of sent records
    /// moved from memory to the spill.
    sent_batches: VecDeque<(u64, u64)>,
    /// Bytes at the file's start whose disk space was given back (a hole punched): the
    /// applied part, rounded down to whole pages. Offsets stay as they are.
    released_len: u64,
    /// Punching the hole failed (a filesystem without them): not tried again.
    release_failed: bool,
}

/// The applied part of the spill is given back to the disk in steps of at least this much.
const SPILL_RELEASE_STEP_BYTES: u64 = 8 << 20;

impl Spill {
    /// Bytes of records the passive has not applied yet (the applied part stays in the
    /// file, a hole once given back, until the whole spill goes).
    fn waiting_bytes(&self) -> u64 {
        self.len - self.applied_len
    }

    /// Gives the disk space of the applied part back (a hole punched in the file; sizes and
    /// offsets stay): a passive that stays behind but keeps up would otherwise see the
    /// file grow with everything it applied, until the queue overflowed although little
    /// waited. Best effort: a filesystem without holes keeps the bytes.
    fn release_applied(&mut self) {
        let upto = self.applied_len & !4095;
        if self.release_failed || upto < self.released_len + SPILL_RELEASE_STEP_BYTES {
            return;
        }
        let punched = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            self.released_len,
            upto - self.released_len,
        );
        match punched {
            Ok(()) => self.released_len = upto,
            Err(e) => {
                // Once: the filesystem will not do it any better next time.
                warn!(error = %e, "cannot give back the spill's applied part; it keeps its disk space until the spill is done");
                self.release_failed = true;
            }
        }
    }
}

/// Where the sender resumes in the spill file: byte offset and the next seq there.
#[derive(Clone, Copy, Debug, Default)]
struct SpillCursor {
    offset: u64,
}

struct Inner {
    next_seq: u64,
    mem: VecDeque<Entry>,
    mem_bytes: u64,
    spill: Option<Spill>,
    spill_cursor: SpillCursor,
    /// Highest seq the passive has applied (trims the queue).
    applied_seq: u64,
    /// Highest seq the passive has made durable (releases sync-mode fsyncs).
    durable_seq: u64,
    /// Highest seq handed to the sender in this session.
    sent_seq: u64,
    /// A session is streaming to a passive that accepted our history.
    streaming: bool,
    /// The passive cannot be caught up from the queue.
    out_of_sync: bool,
    /// The session is resyncing the passive: it cannot take over until the resync ends,
    /// so writers do not wait for it to confirm fsyncs.
    resyncing: bool,
    /// The passive's persisted position, from its acks: change-log segments up to it go.
    peer_persisted: u64,
    /// Set by a stalled waiter: the sender must drop the session.
    abandon_session: bool,
    /// When the passive last renewed its lease (sync mode): until `stall_timeout` after
    /// it, the passive may count on having every write we acknowledge, so no fsync is
    /// acknowledged without its confirmation before then (see [`SetQueue::renewed`]).
    last_renewal: Option<Instant>,
    /// The passive renewed its lease in the current resync session: it knows its copy is
    /// out of sync until the resync ends.
    resync_confirmed: bool,
    /// The seq of the current resync's `SyncEnd`, once recorded.
    resync_end: Option<u64>,
    /// This node stopped serving the set (demoted): fsyncs still waiting fail.
    closed: bool,
    bytes_sent_total: u64,
    /// Accounted bytes queued but not yet taken by the sender (what a new record waits
    /// behind before it reaches the socket).
    unsent_bytes: u64,
}

/// The queue, shared by the capture filesystem (through [`Journal`]) and the sender.
pub struct SetQueue {
    cfg: QueueConfig,
    inner: Mutex<Inner>,
    /// Separate from `inner` so that a resync's paths do not land in it (see
    /// `record_sync`), and so status can read it without the queue lock.
    changes: Arc<Mutex<ChangeLog>>,
    /// Signalled when acks arrive or the session state changes.
    progress: Condvar,
    /// Wakes the sender when records arrive.
    pub wake_sender: Arc<tokio::sync::Notify>,
    /// Data buffers of [`RECYCLED_BUFFER_BYTES`] from records the passive applied, for the
    /// next large read (see [`SetQueue::take_buffer`]).
    recycled: Mutex<Vec<Vec<u8>>>,
    /// Told of each new confirmed-durable seq (see [`Journal::on_durable`]).
    durable_listener: Mutex<Option<DurableListener>>,
}

/// Capacity of the data buffers the queue hands back for reuse: the resync engine's record.
pub const RECYCLED_BUFFER_BYTES: usize = 4 << 20;
/// At most this many buffers wait for reuse (32 MiB): more than a resync keeps in flight.
const RECYCLED_BUFFERS_MAX: usize = (32 << 20) / RECYCLED_BUFFER_BYTES;

/// What the sender takes from the queue next.
pub enum Next {
    /// Records from memory, in order.
    Records(Vec<Arc<Record>>),
    /// Encoded records read from the spill file, in order, and the last seq among them.
    Encoded(Vec<u8>, u64),
    /// Nothing new.
    Idle,
}

fn spill_path(dir: &Path) -> PathBuf {
    dir.join("spill.log")
}

impl SetQueue {
    /// A queue whose next op gets `next_seq`, noting every captured op in `changes`.
    /// `out_of_sync`: the passive is known to need a resync before anything streams.
    pub fn new(
        cfg: QueueConfig,
        next_seq: u64,
        changes: Arc<Mutex<ChangeLog>>,
        out_of_sync: bool,
    ) -> std::io::Result<Self> {
        invariant!(next_seq >= 1, "sequence numbers start at 1");
        std::fs::create_dir_all(&cfg.dir)?;
        let _ = std::fs::remove_file(spill_path(&cfg.dir));
        Ok(Self {
            inner: Mutex::new(Inner {
                next_seq,
                mem: VecDeque::new(),
                mem_bytes: 0,
                spill: None,
                spill_cursor: SpillCursor::default(),
                applied_seq: next_seq - 1,
                durable_seq: next_seq - 1,
                sent_seq: next_seq - 1,
                streaming: false,
                out_of_sync,
                resyncing: false,
                peer_persisted: 0,
                abandon_session: false,
                last_renewal: None,
                resync_confirmed: false,
                resync_end: None,
                closed: false,
                bytes_sent_total: 0,
                unsent_bytes: 0,
            }),
            changes,
            cfg,
            progress: Condvar::new(),
            wake_sender: Arc::new(tokio::sync::Notify::new()),
            recycled: Mutex::new(Vec::new()),
            durable_listener: Mutex::new(None),
        })
    }

    /// The change log this queue notes ops in.
    pub fn changes(&self) -> &Arc<Mutex<ChangeLog>> {
        &self.changes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock already broke an invariant; keep serving what we can.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// Seq of the last op captured.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// The oldest seq still available to send (everything before it was applied or dropped).
    pub fn oldest_available(&self) -> u64 {
        let inner = self.lock();
        inner.applied_seq + 1
    }

    pub fn is_out_of_sync(&self) -> bool {
        self.lock().out_of_sync
    }

    /// Marks the passive as impossible to catch up from this queue: the queue is dropped
    /// (the change log knows what changed since).
    pub fn mark_out_of_sync(&self, why: &str) {
        let mut inner = self.lock();
        self.overflow(&mut inner, why);
    }

    /// A session starts: the passive has applied up to `applied_seq` and the sender resumes
    /// after it. Returns false if the queue no longer holds what the passive needs.
    pub fn start_session(&self, applied_seq: u64) -> bool {
        let mut inner = self.lock();
        if inner.out_of_sync || applied_seq < inner.applied_seq || applied_seq >= inner.next_seq {
            return false;
        }
        // The passive may have applied more than it acknowledged before the last session broke.
        self.trim(&mut inner, applied_seq);
        inner.durable_seq = inner.durable_seq.max(applied_seq);
        inner.sent_seq = applied_seq;
        // The sender reads the spill again, batch by batch, from the end of the part the
        // passive is known to have applied (a record boundary): reading that part again
        // would only skip it, record by record, under the queue's lock.
        let resume_at = inner.spill.as_ref().map_or(0, |s| s.applied_len);
        inner.spill_cursor = SpillCursor { offset: resume_at };
        if let Some(spill) = inner.spill.as_mut() {
            spill.sent_batches.clear();
        }
        inner.unsent_bytes = inner
            .mem
            .iter()
            .filter(|e| e.record.seq > applied_seq)
            .map(|e| e.bytes)
            .sum::<u64>()
            + inner.spill.as_ref().map_or(0, Spill::waiting_bytes);
        inner.streaming = true;
        inner.resyncing = false;
        inner.abandon_session = false;
        drop(inner);
        self.progress.notify_all();
        true
    }

    /// A resync session starts (the caller holds the capture's order lock, so nothing is
    /// recorded meanwhile): whatever is queued is dropped, since the resync covers it, and
    /// the sender starts with the next op, which the caller records: the `SyncBegin`.
    /// Returns that op's seq.
    pub fn start_resync_session(&self) -> u64 {
        let mut inner = self.lock();
        let last = inner.next_seq - 1;
        inner.mem.clear();
        inner.mem_bytes = 0;
        if inner.spill.take().is_some() {
            let _ = std::fs::remove_file(spill_path(&self.cfg.dir));
        }
        inner.spill_cursor = SpillCursor::default();
        inner.applied_seq = last;
        inner.durable_seq = last;
        inner.sent_seq = last;
        inner.unsent_bytes = 0;
        inner.streaming = true;
        inner.resyncing = true;
        inner.resync_confirmed = false;
        inner.resync_end = None;
        inner.out_of_sync = false;
        inner.abandon_session = false;
        drop(inner);
        self.progress.notify_all();
        last + 1
    }

    /// The resync of the current session is durable on the passive: it is a full copy now.
    pub fn resync_done(&self) {
        self.lock().resyncing = false;
        self.progress.notify_all();
    }

    /// True while the session resyncs the passive.
    pub fn is_resyncing(&self) -> bool {
        self.lock().resyncing
    }

    /// Waits until fewer than `bytes` wait to be taken by the sender, or `timeout` passes,
    /// or the session ends: how a resync yields to live traffic (a live op queued now waits
    /// behind at most that much). Returns false if the session ended.
    pub fn wait_for_room(&self, bytes: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| inner.unsent_bytes < bytes)
    }

    /// Waits until memory has room for a record of `record_bytes` as [`Journal::record`]
    /// would wait for it, or `timeout` passes, or the session ends: so that a resync's
    /// records, made under the capture's order lock, do not wait there for the passive.
    /// Returns false if the session ended.
    pub fn wait_for_memory(&self, record_bytes: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| {
            inner.spill.is_some()
                || inner.mem.is_empty()
                || inner.mem_bytes + record_bytes + 64 <= self.cfg.mem_max_bytes
        })
    }

    /// Waits until `ready` holds (true), `timeout` passes (true) or the session ends
    /// (false), waking on every ack.
    fn wait_until(&self, timeout: Duration, ready: impl Fn(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if !inner.streaming || inner.abandon_session {
                return false;
            }
            if ready(&inner) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            inner = self.wait_progress(inner, (deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Highest seq the passive made durable.
    pub fn durable_seq(&self) -> u64 {
        self.lock().durable_seq
    }

    /// True while a session streams to a passive.
    pub fn is_streaming(&self) -> bool {
        self.lock().streaming
    }

    /// The passive renewed its lease (sync mode), in the current session: returns false when
    /// the renewal does not count (the session is not streaming, or was abandoned), and
    /// must then not be confirmed to the passive.
    pub fn renewed(&self) -> bool {
        let mut inner = self.lock();
        if !inner.streaming || inner.abandon_session || self.cfg.mode != Mode::Sync {
            return false;
        }
        inner.last_renewal = Some(Instant::now());
        if inner.resyncing {
            inner.resync_confirmed = true;
        }
        drop(inner);
        self.progress.notify_all();
        true
    }

    /// Waits on `progress` (acks, session changes) for at most `timeout`.
    fn wait_progress<'a>(
        &'a self,
        inner: MutexGuard<'a, Inner>,
        timeout: Duration,
    ) -> MutexGuard<'a, Inner> {
        self.progress
            .wait_timeout(inner, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    /// When the passive's lease runs out, if it has not yet.
    fn lease_end(&self, inner: &Inner) -> Option<Instant> {
        inner
            .last_renewal
            .map(|at| at + self.cfg.stall_timeout)
            .filter(|end| *end > Instant::now())
    }

    /// This node no longer serves the set: fsyncs still waiting for durability fail.
    pub fn close(&self) {
        self.lock().closed = true;
        self.progress.notify_all();
    }

    /// The session ended; writers stop waiting for this passive.
    pub fn end_session(&self) {
        let mut inner = self.lock();
        inner.streaming = false;
        drop(inner);
        self.progress.notify_all();
    }

    /// Asks the sender to end the current session (a resync that cannot finish exactly):
    /// the next one plans again from what the passive has.
    pub fn abandon_session(&self) {
        self.lock().abandon_session = true;
        self.progress.notify_all();
        self.wake_sender.notify_one();
    }

    /// True when a stalled writer asked the sender to give up on the current passive.
    pub fn session_abandoned(&self) -> bool {
        self.lock().abandon_session
    }

    /// The passive reports progress. Its persisted position lets the change log drop what
    /// the passive would no longer need after a crash.
    pub fn ack(&self, applied_seq: u64, durable_seq: u64, persisted_seq: u64) {
        {
            let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            changes.maybe_rotate(persisted_seq);
            changes.prune(persisted_seq);
        }
        let mut inner = self.lock();
        inner.peer_persisted = inner.peer_persisted.max(persisted_seq);
        if applied_seq > inner.sent_seq || durable_seq > applied_seq {
            warn!(
                applied_seq,
                durable_seq,
                sent = inner.sent_seq,
                "ignoring an ack beyond what was sent"
            );
            return;
        }
        self.trim(&mut inner, applied_seq);
        let grew = durable_seq > inner.durable_seq;
        inner.durable_seq = inner.durable_seq.max(durable_seq);
        drop(inner);
        // The listener first: it answers the waiting fsyncs on this thread, before waking
        // anyone blocked in `wait_durable`.
        if grew {
            let listener = self
                .durable_listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(listener) = listener {
                listener(durable_seq);
            }
        }
        self.progress.notify_all();
    }

    fn trim(&self, inner: &mut Inner, applied_seq: u64) {
        inner.applied_seq = inner.applied_seq.max(applied_seq);
        while let Some(front) = inner.mem.front() {
            if front.record.seq > inner.applied_seq {
                break;
            }
            inner.mem_bytes -= front.bytes;
            if let Some(entry) = inner.mem.pop_front() {
                self.recycle(entry.record);
            }
        }
        let applied_seq = inner.applied_seq;
        if let Some(spill) = inner.spill.as_mut() {
            while let Some(&(last, end)) = spill.sent_batches.front() {
                if last > applied_seq {
                    break;
                }
                spill.applied_len = spill.applied_len.max(end);
                spill.sent_batches.pop_front();
            }
            spill.release_applied();
        }
        let spill_done = inner
            .spill
            .as_ref()
            .is_some_and(|s| s.last_seq <= inner.applied_seq);
        if spill_done {
            inner.spill = None;
            inner.spill_cursor = SpillCursor::default();
            let _ = std::fs::remove_file(spill_path(&self.cfg.dir));
        }
    }

    /// Takes the next records to send, after `sent_seq`, up to about `max_bytes`.
    pub fn next_batch(&self, max_bytes: u64) -> std::io::Result<Next> {
        let mut inner = self.lock();
        let after = inner.sent_seq;
        let mut out = Vec::new();
        let mut bytes = 0;
        // Memory may hold records from before and after the spill; take only a run that
        // continues exactly after `after`, so the spill's records are never skipped.
        let run = (after + 1..).zip(inner.mem.iter().skip_while(|e| e.record.seq <= after));
        for (expected, entry) in run {
            if bytes >= max_bytes || entry.record.seq != expected {
                break;
            }
            bytes += entry.bytes;
            out.push(entry.record.clone());
        }
        if let Some(last) = out.last() {
            inner.sent_seq = last.seq;
            inner.bytes_sent_total += bytes;
            inner.unsent_bytes = inner.unsent_bytes.saturating_sub(bytes);
            drop(inner);
            // A resync waits for the queue to empty towards the socket (`wait_for_room`).
            self.progress.notify_all();
            return Ok(Next::Records(out));
        }
        // Memory is exhausted; continue in the spill file, if it has more.
        let cursor = inner.spill_cursor.offset;
        let Some(spill) = inner.spill.as_mut() else {
            return Ok(Next::Idle);
        };
        if spill.last_seq <= after {
            return Ok(Next::Idle);
        }
        let (encoded, last, offset) = read_spill(&spill.file, cursor, spill.len, after, max_bytes)?;
        if last > after {
            spill.sent_batches.push_back((last, offset));
        }
        inner.spill_cursor.offset = offset;
        // Every byte the cursor passed is sent now, or belongs to a record the passive had
        // applied before this session (`start_session` counted the whole spill as unsent).
        inner.unsent_bytes = inner.unsent_bytes.saturating_sub(offset - cursor);
        if last > after {
            inner.sent_seq = last;
            inner.bytes_sent_total += encoded.len() as u64;
            Ok(Next::Encoded(encoded, last))
        } else {
            Ok(Next::Idle)
        }
    }

    fn overflow(&self, inner: &mut Inner, why: &str) {
        if inner.out_of_sync {
            return;
        }
        error!(dir = %self.cfg.dir.display(), reason = why, "replication queue dropped; the passive needs a resync of what changed since");
        if inner.spill.take().is_some() {
            let _ = std::fs::remove_file(spill_path(&self.cfg.dir));
        }
        inner.mem.clear();
        inner.mem_bytes = 0;
        inner.unsent_bytes = 0;
        inner.spill_cursor = SpillCursor::default();
        inner.out_of_sync = true;
        inner.streaming = false;
        inner.resyncing = false;
        inner.abandon_session = true;
        self.progress.notify_all();
    }

    /// Status figures.
    pub fn snapshot(&self) -> QueueSnapshot {
        let inner = self.lock();
        // What still waits for the passive: the spill's applied part stays in the file
        // until all of it is applied, but no longer counts (its seqs are contiguous).
        let spill_ops = inner.spill.as_ref().map_or(0, |s| {
            s.last_seq
                .saturating_sub(inner.applied_seq.max(s.first_seq - 1))
        });
        let spill_bytes = inner.spill.as_ref().map_or(0, Spill::waiting_bytes);
        // Memory may hold only ops newer than the spill's (the sender had passed it): the
        // oldest op waiting is then a spilled one.
        let oldest = match (
            inner.mem.front().map(|e| e.at),
            inner.spill.as_ref().map(|s| s.first_at),
        ) {
            (Some(mem), Some(spill)) => Some(mem.min(spill)),
            (mem, spill) => mem.or(spill),
        };
        QueueSnapshot {
            queue_ops: inner.mem.len() as u64 + spill_ops,
            queue_bytes: inner.mem_bytes + spill_bytes,
            mem_bytes: inner.mem_bytes,
            oldest_unacked: oldest,
            last_seq: inner.next_seq - 1,
            sent_seq: inner.sent_seq,
            applied_seq: inner.applied_seq,
            durable_seq: inner.durable_seq,
            streaming: inner.streaming,
            out_of_sync: inner.out_of_sync,
            resyncing: inner.resyncing,
            bytes_sent_total: inner.bytes_sent_total,
        }
    }

    /// Waits until the passive has applied everything captured so far, or `timeout` passes.
    /// Used by a switchover, after the applications stopped. Returns the last seq and whether
    /// it was reached.
    pub fn drain(&self, timeout: Duration) -> (u64, bool) {
        // Capture is unmounted by now, so nothing else records and the order lock is not
        // needed for the barrier.
        self.record_drain_barrier();
        self.wait_drained(timeout)
    }

    /// The passive flushes only for barriers: a drain ends with one on the root, so that
    /// everything before it is durable there once it is confirmed. Called with the capture's
    /// order lock held, or with capture unmounted. Nothing without a passive.
    pub fn record_drain_barrier(&self) {
        if self.is_streaming() {
            self.record(
                Op::Fsync {
                    file: FileRef::Path(Vec::new()),
                    datasync: false,
                },
                Vec::new(),
            );
        }
    }

    /// Waits until the passive has applied and made durable every op captured so far, or
    /// `timeout` passes, or there is no passive. Returns the last seq and whether it was.
    pub fn wait_drained(&self, timeout: Duration) -> (u64, bool) {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            let last = inner.next_seq - 1;
            if inner.durable_seq >= last && inner.applied_seq >= last {
                return (last, true);
            }
            let now = Instant::now();
            // Without a passive there is nobody to drain to.
            if now >= deadline || inner.out_of_sync || !inner.streaming {
                return (last, false);
            }
            inner = self.wait_progress(inner, (deadline - now).min(Duration::from_millis(50)));
        }
    }
}

/// Figures for `understudy status`.
#[derive(Clone, Debug)]
pub struct QueueSnapshot {
    pub queue_ops: u64,
    pub queue_bytes: u64,
    pub mem_bytes: u64,
    pub oldest_unacked: Option<Instant>,
    pub last_seq: u64,
    pub sent_seq: u64,
    pub applied_seq: u64,
    pub durable_seq: u64,
    pub streaming: bool,
    pub out_of_sync: bool,
    pub resyncing: bool,
    pub bytes_sent_total: u64,
}

/// Reads whole encoded records (`u32 len` + record) from the spill, starting at `offset`,
/// skipping those with seq <= `after`, up to about `max_bytes`. Returns the framed bytes to
/// send, the last seq among them, and the offset after the last record read.
fn read_spill(
    file: &File,
    offset: u64,
    len: u64,
    after: u64,
    max_bytes: u64,
) -> std::io::Result<(Vec<u8>, u64, u64)> {
    let mut out = Vec::new();
    let mut pos = offset;
    let mut last = 0;
    while pos < len && (out.len() as u64) < max_bytes {
        let mut header = [0u8; 12];
        file.read_exact_at(&mut header, pos)?;
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let seq = u64::from_le_bytes(header[4..12].try_into().unwrap_or([0; 8]));
        let total = 4 + body_len;
        invariant!(pos + total <= len, "spill record runs past the spill's end");
        if seq > after {
            let start = out.len();
            out.resize(start + total as usize, 0);
            file.read_exact_at(&mut out[start..], pos)?;
            last = seq;
        }
        pos += total;
    }
    Ok((out, last, pos))
}

/// Iterates over framed records (`u32 len` + record), skipping undecodable ones (a spill we
/// wrote ourselves: a failure is logged).
pub fn iter_encoded(mut bytes: &[u8]) -> impl Iterator<Item = Record> + '_ {
    std::iter::from_fn(move || {
        while bytes.len() >= 4 {
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let body = bytes.get(4..4 + len)?;
            bytes = &bytes[4 + len..];
            match decode_record(body) {
                Ok(r) => return Some(r),
                Err(e) => warn!(error = %e, "undecodable spilled record"),
            }
        }
        None
    })
}

/// Appends `record` framed as `u32 len` + encoding.
pub fn frame_record(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    encode_record(record, out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

impl Journal for SetQueue {
    fn record(&self, op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64 {
        let seq = self.lock().next_seq;
        // Noted before the op is queued (both under the capture's order lock, so the seq is
        // this op's): a crash between the two leaves a path noted, never one missing.
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(seq, &op);
        self.enqueue(op, mtimes)
    }

    fn must_wait(&self, seq: u64) -> bool {
        let inner = self.lock();
        self.cfg.mode == Mode::Sync
            && inner.durable_seq < seq
            && (inner.streaming || self.lease_end(&inner).is_some() || !self.cfg.serving.valid())
    }

    fn on_durable(&self, listener: DurableListener) -> bool {
        *self
            .durable_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
        true
    }

    /// Returns once the passive confirmed `seq` durable, or once it cannot count on having
    /// it: a passive that renewed its lease may take over until the lease runs out, so a
    /// write is acknowledged without its confirmation only after that (invariant 29).
    fn wait_durable(&self, seq: u64) -> bool {
        if self.cfg.mode == Mode::Async {
            return true;
        }
        let started = Instant::now();
        let mut inner = self.lock();
        // Fixed once this passive is given up on: renewals are no longer taken once the
        // session is abandoned, and a later session's do not move it (that session's
        // passive catches up on this write before it may take over).
        let mut lease_deadline: Option<Instant> = None;
        let durable = loop {
            if inner.durable_seq >= seq || resync_covers(&inner, seq) {
                break true;
            }
            if inner.closed {
                break false;
            }
            let now = Instant::now();
            let deadline = match lease_deadline {
                Some(d) => d,
                None => {
                    if inner.streaming && !inner.abandon_session {
                        let waited = now - started;
                        if waited < self.cfg.stall_timeout {
                            inner = self.wait_progress(inner, self.cfg.stall_timeout - waited);
                            continue;
                        }
                        warn!(
                            seq,
                            "the passive did not confirm an fsync in {waited:?}; continuing without it once its lease runs out"
                        );
                        inner.abandon_session = true;
                        // The sender must end the session now, so the renewals stop.
                        self.wake_sender.notify_one();
                    }
                    let d = self.lease_end(&inner).unwrap_or(now);
                    lease_deadline = Some(d);
                    d
                }
            };
            if now < deadline {
                inner = self.wait_progress(inner, deadline - now);
                continue;
            }
            // Alone, and only while this node surely still serves: one that was frozen
            // may have been taken over from meanwhile. Its core loop says so on its next
            // turn, or demotes and closes the queue.
            if self.cfg.serving.valid() {
                break true;
            }
            inner = self.wait_progress(inner, SERVING_POLL);
        };
        drop(inner);
        // An abandoned session must actually end, so the passive learns it fell behind.
        self.wake_sender.notify_one();
        durable
    }
}

/// True when a passive being resynced cannot take over without `seq`: it confirmed the
/// resync (its copy counts as out of sync until the resync's end is durable there), and
/// `seq` comes before that end, so waiting for its confirmation buys nothing.
fn resync_covers(inner: &Inner, seq: u64) -> bool {
    inner.streaming
        && inner.resyncing
        && inner.resync_confirmed
        && inner.resync_end.is_none_or(|end| seq < end)
}

impl SetQueue {
    /// An empty buffer for `want` bytes of data that will become a record's. Reads of
    /// [`RECYCLED_BUFFER_BYTES`] get a buffer a record already used, when one is back.
    ///
    /// Why: memory that is new to the process costs far more to fill than memory filled
    /// before. On the test VM, copying a resync's reads into fresh 512 KiB buffers took 83 %
    /// of the engine thread's CPU (about 2 GB/s), against 30 GB/s into reused ones; the
    /// allocator hands the freed buffers back to the kernel, which hands them to the host.
    pub fn take_buffer(&self, want: usize) -> Vec<u8> {
        if want != RECYCLED_BUFFER_BYTES {
            return Vec::with_capacity(want);
        }
        let reused = self
            .recycled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match reused {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(RECYCLED_BUFFER_BYTES),
        }
    }

    /// Frees the buffers kept for reuse (a resync ended).
    pub fn release_buffers(&self) {
        self.recycled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Keeps the data buffer of a record nobody else holds, if it is one of ours.
    fn recycle(&self, record: Arc<Record>) {
        let Ok(record) = Arc::try_unwrap(record) else {
            return;
        };
        if let Op::Write { data, .. } = record.op {
            if data.capacity() == RECYCLED_BUFFER_BYTES {
                let mut pool = self.recycled.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < RECYCLED_BUFFERS_MAX {
                    pool.push(data);
                }
            }
        }
    }

    /// Records an op of a resync or verify (the caller holds the capture's order lock). It
    /// is not a change of this copy, so the change log does not note it.
    pub fn record_sync(&self, op: Op) -> u64 {
        let ends = matches!(op, Op::SyncEnd { .. });
        let seq = self.enqueue(op, Vec::new());
        if ends {
            let mut inner = self.lock();
            if inner.resyncing {
                inner.resync_end = Some(seq);
            }
        }
        seq
    }

    fn enqueue(&self, op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let record = Record { seq, op, mtimes };
        if inner.out_of_sync {
            return seq;
        }
        // Bytes as accounted: payload plus a fixed per-record overhead.
        let bytes = record.op.data_len() as u64 + 64;
        // Wait for room while a live passive drains the queue, but never for long.
        let wait_started = Instant::now();
        while inner.streaming
            && !inner.abandon_session
            && inner.spill.is_none()
            && inner.mem_bytes + bytes > self.cfg.mem_max_bytes
            && !inner.mem.is_empty()
        {
            let waited = wait_started.elapsed();
            if waited >= self.cfg.stall_timeout {
                warn!("passive made no room for {waited:?}; spilling and dropping the session");
                inner.abandon_session = true;
                break;
            }
            inner = self.wait_progress(inner, self.cfg.stall_timeout - waited);
        }
        let fits = inner.mem_bytes + bytes <= self.cfg.mem_max_bytes;
        // The spill must stay one contiguous run of seqs. Once the sender has passed all of
        // it, new records go to memory again, while they fit; one that does not goes to the
        // spill after the newer records memory holds, which move there first
        // (`spill_newer_from_memory`).
        let to_memory = match (&inner.spill, inner.mem.back()) {
            (None, _) => fits || inner.mem.is_empty(),
            (Some(s), Some(back)) if back.record.seq > s.last_seq => fits,
            (Some(s), _) => inner.streaming && inner.sent_seq >= s.last_seq && fits,
        };
        // The spill's applied part no longer waits, and its disk space is given back
        // (`trim`): only what the passive still lacks counts against the bound.
        let queued = inner.mem_bytes + inner.spill.as_ref().map_or(0, Spill::waiting_bytes);
        if queued + bytes > self.cfg.queue_max_bytes {
            self.overflow(&mut inner, "queue_max_bytes reached");
            return seq;
        }
        if to_memory {
            inner.unsent_bytes += bytes;
            inner.mem_bytes += bytes;
            inner.mem.push_back(Entry {
                record: Arc::new(record),
                bytes,
                at: Instant::now(),
            });
        } else {
            let spilled = self
                .spill_newer_from_memory(&mut inner)
                .and_then(|()| self.spill(&mut inner, &record));
            match spilled {
                // A spilled record waits as its framed bytes, which the sender subtracts.
                Ok(framed_bytes) => inner.unsent_bytes += framed_bytes,
                Err(e) => {
                    error!(error = %e, "spilling failed");
                    self.overflow(&mut inner, "spill failed");
                    return seq;
                }
            }
        }
        // Wake the sender only if it may be idle: if records before this one are still
        // unsent, it has a wake-up pending already (or is about to take them all).
        let wake = inner.sent_seq + 1 == seq || record_is_barrier(&inner, seq);
        drop(inner);
        if wake {
            self.wake_sender.notify_one();
        }
        seq
    }

    /// Memory holds records newer than the spill's (the sender had passed the spill) and
    /// the next record does not fit: they move to the spill's end, in order, so that memory
    /// keeps within its bound (invariant 18) and the spill stays one contiguous run.
    fn spill_newer_from_memory(&self, inner: &mut Inner) -> std::io::Result<()> {
        let Some(spill_last) = inner.spill.as_ref().map(|s| s.last_seq) else {
            return Ok(());
        };
        let newer = inner
            .mem
            .iter()
            .rev()
            .take_while(|e| e.record.seq > spill_last)
            .count();
        let first_moved = inner.mem.len() - newer;
        let moved: Vec<Entry> = inner.mem.drain(first_moved..).collect();
        // The sent ones come first (lower seqs): one entry in `sent_batches` covers them all.
        let mut sent_run_end: Option<(u64, u64)> = None;
        for entry in moved {
            inner.mem_bytes -= entry.bytes;
            let sent = entry.record.seq <= inner.sent_seq;
            if sent {
                // The sender took it after reading the whole spill.
                let spill_len = inner.spill.as_ref().map_or(0, |s| s.len);
                invariant!(
                    inner.spill_cursor.offset == spill_len,
                    "seq {} was sent from memory before the spill was read",
                    entry.record.seq
                );
            }
            let framed_bytes = self.spill(inner, &entry.record)?;
            if sent {
                // The sender's place in the spill moves past it, and the passive's ack of
                // it counts against the spill as a batch sent from it would.
                let spill_len = inner.spill.as_ref().map_or(0, |s| s.len);
                sent_run_end = Some((entry.record.seq, spill_len));
                inner.spill_cursor.offset = spill_len;
            } else {
                // It still waits to be sent, now as its framed bytes in the spill.
                inner.unsent_bytes = inner.unsent_bytes.saturating_sub(entry.bytes) + framed_bytes;
            }
        }
        if let (Some(run_end), Some(spill)) = (sent_run_end, inner.spill.as_mut()) {
            spill.sent_batches.push_back(run_end);
        }
        Ok(())
    }

    /// Appends `record` to the spill (created if need be); returns its framed bytes.
    fn spill(&self, inner: &mut Inner, record: &Record) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(record.op.data_len() + 128);
        frame_record(record, &mut buf);
        if inner.spill.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(spill_path(&self.cfg.dir))?;
            inner.spill = Some(Spill {
                file,
                len: 0,
                first_seq: record.seq,
                last_seq: record.seq - 1,
                first_at: Instant::now(),
                applied_len: 0,
                sent_batches: VecDeque::new(),
                released_len: 0,
                release_failed: false,
            });
        }
        let spill = inner.spill.as_mut().expect("created above");
        invariant!(
            record.seq == spill.last_seq + 1,
            "the spill's seqs must be contiguous: {} after {}",
            record.seq,
            spill.last_seq
        );
        spill.file.write_all_at(&buf, spill.len)?;
        spill.len += buf.len() as u64;
        spill.last_seq = record.seq;
        Ok(buf.len() as u64)
    }
}

/// The paths an op names (for the change log).
pub fn op_paths(op: &Op) -> Vec<&[u8]> {
    fn file(f: &FileRef) -> Option<&[u8]> {
        match f {
            FileRef::Path(p) => Some(p.as_slice()),
            FileRef::Orphan(_) => None,
        }
    }
    match op {
        Op::Mknod { path, .. } | Op::Mkdir { path, .. } | Op::Symlink { path, .. } => vec![path],
        Op::Unlink { path, .. } | Op::Rmdir { path } => vec![path],
        Op::Link { existing, path } => vec![existing, path],
        Op::Rename { from, to, .. } => vec![from, to],
        Op::Write { file: f, .. }
        | Op::Truncate { file: f, .. }
        | Op::Fallocate { file: f, .. }
        | Op::SetAttr { file: f, .. }
        | Op::SetXattr { file: f, .. }
        | Op::RemoveXattr { file: f, .. } => file(f).into_iter().collect(),
        Op::Fsync { .. } | Op::DropOrphan { .. } => vec![],
        // Sync data changes nothing the resync that sends it does not already cover.
        Op::SyncMeta { path, .. } => vec![path],
        Op::SyncBegin { .. }
        | Op::SyncTree { .. }
        | Op::VerifyRange { .. }
        | Op::SyncEnd { .. } => {
            vec![]
        }
    }
}

/// True if the record `seq` just queued is a barrier (someone will wait on it): looked up
/// only when the sender may not wake on its own.
fn record_is_barrier(inner: &Inner, seq: u64) -> bool {
    inner
        .mem
        .back()
        .is_some_and(|e| e.record.seq == seq && e.record.op.is_barrier())
}

#[cfg(test)]
mod tests;
