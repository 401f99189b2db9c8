//! The active's resync and verify engine, run on its own thread while the session streams.
//!
//! # How a resync stays exact while applications write
//!
//! Everything the engine sends goes through the set's queue as ordinary numbered records,
//! recorded while it holds the capture's order lock. Under the lock the backing directory is
//! exactly what the last recorded seq left, so every record the engine makes is exact at
//! its own seq, and the passive applies it in order with the live ops around it:
//! 1. `SyncBegin` and the listing (`SyncTree` parts) are recorded in one hold of the lock:
//!    the passive's tree within the scope becomes exactly the active's at that seq, names,
//!    types, links and metadata. From then on every live op applies exactly there too.
//!    The listing is drafted before, without the lock, and only what the change log says
//!    changed meanwhile is listed again under it (`prelist.rs`), so applications are not
//!    stalled for the length of a walk of the whole tree.
//! 2. For each file whose content differs, the differing blocks are read and recorded as
//!    `Write`s, each under the lock (its bytes are exactly the file's at that seq: read
//!    there, or read ahead (`readahead.rs`) and proven unchanged since), and a
//!    `SyncMeta` sets the final size and metadata. Live writes in between are replayed in
//!    order, so nothing is lost and no stale data overwrites newer data.
//! 3. `SyncEnd` closes it. Once the passive made it durable, its copy is exact.
//!
//! Which blocks differ is decided outside the lock, by comparing block hashes of both copies
//! taken at slightly different moments. That is safe: a block whose hashes match at any two
//! moments stays equal, because every later change to it is replayed on both sides in the
//! same order (writes, truncates and hole punches set bytes absolutely). A mismatch only
//! costs a needless copy of the block.
//!
//! A verify works the same way without changing anything: the passive compares the listing
//! with its tree at the listing's seq, both sides hash their files, and blocks that seem to
//! differ are checked exactly with `VerifyRange` records (hashed under the lock here, and at
//! the same seq there).
//!
//! The engine yields to live replication: it adds a record only while less than
//! [`YIELD_BYTES`] wait in the queue, and honours the configured rate cap.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, SeekFrom};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use understudy_capture::OrderLock;
use understudy_oplog::{FileRef, Op, TreeEntry, MAX_TREE_ENTRIES};

use crate::hashing::{self, BLOCK_SIZE};
use crate::lock;
use crate::prelist;
use crate::proto::{
    self, HashRequest, Hashes, Need, VerifyCompare, VerifyDiffs, VerifyRangeResult,
};
use crate::queue::SetQueue;
use crate::readahead::{self, ReadAhead};
use crate::walk::{self, ListedFile, Listing, Whereabouts};

/// The engine adds a record only while fewer bytes than this wait to be sent: four records.
///
/// History, on the same 2-core VM: with 512 KiB records, 8 MiB waiting was slower than 4 MiB
/// (data read long before it is encrypted has left the CPU's caches). Since the engine reads
/// large files with `O_DIRECT` and the passive writes them with `O_DIRECT`,
/// 4 MiB records let each side make one large request per record; with 16 MiB waiting, the
/// 1.7 GiB of large files of the initial-sync benchmark took 2.1-2.3 s instead of 3.0-3.4 s
/// (512 KiB records, 4 MiB waiting, both sides direct), and the engine never waited.
pub const YIELD_BYTES: u64 = 16 << 20;
/// Largest data record the engine makes (see [`YIELD_BYTES`]).
const CHUNK_BYTES: usize = crate::queue::RECYCLED_BUFFER_BYTES;
/// Hash requests outstanding at once (of a verify: small files).
const HASH_WINDOW: usize = 32;
/// A verify's large files hashed or asked for and not yet compared, at most: two, so that
/// the next one is read while the last one's hashes are on their way.
const LARGE_WINDOW: usize = 2;
/// Files read ahead (by the kernel, `WILLNEED`) of the one being copied.
const PREFETCH_FILES: usize = 64;
/// Ranges at least this long are read with `O_DIRECT`: a resync of gigabytes then does not
/// push the applications' data out of the active's page cache, and costs less CPU where
/// page-cache pages are dear. On the test VM a cold buffered read of 1.5 GiB cost 0.2 to
/// 2.5 s of system time (`dd`, five runs; the first touch of memory the host took back), a
/// direct read 0.1 to 0.2 s at 1.2-1.3 GB/s. In the initial-sync benchmark that was 12 %
/// faster when memory was dear, and no measurable difference when every run started from
/// the same cheap memory. Small files keep the page cache and its read-ahead.
const DIRECT_READ_MIN_BYTES: u64 = 8 << 20;
/// Offset, length and buffer alignment `O_DIRECT` needs (the page size; enough for every
/// logical block size Linux supports).
const DIRECT_ALIGN: usize = 4096;
/// Bytes of listing per `SyncTree` record, at most.
const TREE_PART_BYTES: usize = 4 << 20;
/// How long the engine waits for any one report before giving up on the session.
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// PUNCH_HOLE | KEEP_SIZE.
const PUNCH_HOLE: i32 = 0x02 | 0x01;

/// What a resync or verify covers.
pub enum Scope {
    /// These subtrees (`None`: the whole tree).
    Paths(Option<Vec<Vec<u8>>>),
    /// What this node's change log holds after `common`, read when the listing is made
    /// (under the order lock), plus `extra` (the passive's own changes).
    ChangedSince {
        common: u64,
        extra: crate::changes::Changed,
    },
}

/// What the passive reports to the engine (routed from the session's reader).
#[derive(Debug)]
pub enum Report {
    Need(Need),
    Hashes(Hashes),
    Diffs(VerifyDiffs),
    Compare(VerifyCompare),
    Range(VerifyRangeResult),
    /// A verify's own hashes of one file (sent by the engine's hashing threads).
    Own(OwnHashes),
}

/// Progress, for `understudy status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncProgress {
    pub id: u64,
    /// resync, verify or repair.
    pub kind: String,
    /// starting (a repair's record before its listing), listing, comparing, copying,
    /// finishing, done or failed.
    pub phase: String,
    /// "whole tree" or the number of changed paths compared.
    pub scope: String,
    pub entries: u64,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_sent: u64,
    pub bytes_per_s: u64,
    pub eta_s: Option<u64>,
    pub elapsed_ms: u64,
    /// How long the listing held the order lock.
    #[serde(default)]
    pub listing_ms: u64,
    /// How long the listing's draft took, walked without the lock (`prelist.rs`).
    #[serde(default)]
    pub draft_ms: u64,
    /// The engine's longest hold of the order lock (applications' writes wait that long at
    /// most because of the sync), and which of its holds that was.
    #[serde(default)]
    pub longest_hold_us: u64,
    #[serde(default)]
    pub longest_hold_site: String,
    /// How long the passive took to make the end durable (its final flush).
    #[serde(default)]
    pub finish_ms: u64,
    /// Time spent reading this node's files for the copy (the disk's share).
    #[serde(default)]
    pub reading_ms: u64,
    /// Time spent waiting for the queue to drain towards the passive or for the rate cap
    /// (the link's and the passive's share).
    #[serde(default)]
    pub waiting_for_peer_ms: u64,
    /// Reads made ahead of the lock and dropped because the file may have changed since
    /// (each read again under the lock).
    #[serde(default)]
    pub reads_redone: u64,
    /// Why it failed (phase "failed"), when the engine said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub started: Option<Instant>,
}

impl SyncProgress {
    /// Recomputes the elapsed time, rate and ETA from the counts: on every update, and when
    /// the status is read (a copy that records nothing for a while shows its rate falling).
    pub(crate) fn tick(&mut self) {
        let Some(started) = self.started else { return };
        let secs = started.elapsed().as_secs_f64().max(0.001);
        self.elapsed_ms = (secs * 1000.0) as u64;
        self.bytes_per_s = (self.bytes_done as f64 / secs) as u64;
        self.eta_s = (self.bytes_per_s > 0)
            .then(|| self.bytes_total.saturating_sub(self.bytes_done) / self.bytes_per_s.max(1));
    }
}

/// The result of a verify: every difference found, as (path, what).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub id: u64,
    pub differences: Vec<(String, String)>,
    pub files_compared: u64,
    pub bytes_compared: u64,
    pub elapsed_ms: u64,
    /// With `--repair` and differences: the id of the repair's sync, whose progress record
    /// exists by the time this outcome is shown (`understudy verify` waits for that id to
    /// be done or failed). `None` when no repair was asked for, none was needed, or it could
    /// not start (the verify's own record then says failed, and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_id: Option<u64>,
}

/// What the engine needs.
pub struct EngineIo {
    pub queue: Arc<SetQueue>,
    pub order: OrderLock,
    /// The active's copy (the capture's backing directory), opened before mounting.
    pub root: Arc<OwnedFd>,
    /// Its path as `/proc/self/fd` shows it, to turn an open file back into a path.
    pub root_path: Vec<u8>,
    /// Frames to the passive (hash requests), sent by the session's writer.
    pub control: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
    pub reports: Receiver<Report>,
    /// Where the session sends `reports` from: the engine's own hashing threads send there
    /// too, so one wait sees both sides' hashes.
    pub router: Arc<Mutex<Option<std::sync::mpsc::Sender<Report>>>>,
    pub progress: Arc<Mutex<SyncProgress>>,
    /// Bytes per second the engine may send; 0: no cap.
    pub rate_max: u64,
    /// The engine's longest hold of the order lock so far, in µs (applications' writes
    /// wait that long at most because of it), and where it was.
    pub longest_hold: Mutex<(u64, &'static str)>,
}

/// The order lock, held by the engine; its length is noted when it is let go.
struct Held<'a, G> {
    _guard: G,
    since: Instant,
    site: &'static str,
    longest: &'a Mutex<(u64, &'static str)>,
}

impl<G> Drop for Held<'_, G> {
    fn drop(&mut self) {
        let us = self.since.elapsed().as_micros() as u64;
        let mut longest = lock(self.longest);
        if us > longest.0 {
            *longest = (us, self.site);
        }
    }
}

impl EngineIo {
    /// Takes the capture's order lock (see the module doc); `site` names the hold for the
    /// longest-hold figure.
    fn hold(&self, site: &'static str) -> Held<'_, impl Sized + '_> {
        let guard = self.order.lock();
        Held {
            _guard: guard,
            since: Instant::now(),
            site,
            longest: &self.longest_hold,
        }
    }
}

/// Why the engine stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the session ended")]
    SessionEnded,
    #[error("the passive did not report in time")]
    Timeout,
    #[error("listing the active's copy: {0}")]
    Walk(#[from] walk::WalkError),
    #[error("{0}")]
    Other(String),
}

struct Pacer {
    rate_max: u64,
    since: Instant,
    sent: u64,
}

impl Pacer {
    fn pay(&mut self, bytes: u64) {
        if self.rate_max == 0 {
            return;
        }
        self.sent += bytes;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate_max as f64);
        let elapsed = self.since.elapsed();
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_secs(1)));
        }
        // Restart the window now and then so a pause is not paid back in a burst.
        if elapsed > Duration::from_secs(5) {
            self.since = Instant::now();
            self.sent = 0;
        }
    }
}

pub struct Engine {
    io: EngineIo,
    id: u64,
    pacer: Pacer,
    /// Hashes that arrived before they were needed.
    stash: HashMap<u32, Hashes>,
    /// Reports of other kinds that arrived while waiting for hashes.
    deferred: VecDeque<Report>,
    /// Files changed only by writes since the common point, with the block runs written:
    /// only those blocks are sent, without hashing anything (the change log's block lists).
    hints: HashMap<Vec<u8>, Runs>,
    direct: DirectBuf,
    /// The small files of the resync in progress, copied between large files' records.
    small: Option<SmallLane>,
    /// Records this engine made (for the reads ahead: the engine's records never change
    /// the active's files).
    records_made: u64,
    /// The change log's watch of the paths applications change during the copy, started
    /// from this seq (for the reads ahead: a read of a file no op touched since is exact).
    copy_watch: Option<u64>,
    /// Totals for [`SyncProgress`]: where the copy's time goes.
    reading: Duration,
    waiting_for_peer: Duration,
    reads_redone: u64,
    /// The part of the listed size of the file being copied not yet counted in
    /// `bytes_done` (see [`Engine::copy_one`]).
    file_left: u64,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The buffers kept for the next read are not needed until the next resync.
        self.io.queue.release_buffers();
    }
}

/// Small files the passive lacks, with the path each was listed under, copied
/// `per_chunk` at a time after each record of a large file (see [`Engine::resync`]).
struct SmallLane {
    files: Vec<(ListedFile, Vec<u8>)>,
    /// The next one to copy.
    cursor: usize,
    prefetch: Prefetch,
    per_chunk: usize,
}

/// Files a little ahead of the one being copied are opened (by handle) and read in by the
/// kernel (`WILLNEED`) meanwhile: small files are one random read each, and a deeper queue
/// keeps the disk busy. The descriptors are kept for the copy.
#[derive(Default)]
struct Prefetch {
    /// Position (in the list being copied) of the next file to prefetch.
    next: usize,
    /// The descriptors opened to prefetch, by position, oldest first (at most
    /// [`PREFETCH_FILES`]).
    opened: VecDeque<(usize, Option<OwnedFd>)>,
}

impl Prefetch {
    /// The descriptor for the file at position `i` of a list (`list(k)` is position `k`),
    /// copied in order, having prefetched the files after it.
    fn take<'a>(
        &mut self,
        root: &OwnedFd,
        i: usize,
        list: impl Fn(usize) -> Option<&'a ListedFile>,
    ) -> Option<OwnedFd> {
        self.next = self.next.max(i);
        while self.next < i + PREFETCH_FILES {
            let Some(f) = list(self.next) else { break };
            let fd = f
                .handle
                .as_ref()
                .and_then(|h| walk::open_handle(root, h).ok());
            if let Some(fd) = &fd {
                prefetch(fd);
            }
            self.opened.push_back((self.next, fd));
            self.next += 1;
        }
        // Positions before i were copied (or skipped) without their descriptor.
        while self.opened.front().is_some_and(|(j, _)| *j < i) {
            self.opened.pop_front();
        }
        invariant!(
            self.opened.len() <= PREFETCH_FILES,
            "more prefetched descriptors kept than files prefetched"
        );
        match self.opened.front() {
            Some((j, _)) if *j == i => self.opened.pop_front().and_then(|(_, fd)| fd),
            _ => None,
        }
    }
}

/// Buffers for `O_DIRECT` reads, kept between ranges: the reads ahead ([`ReadAhead`]) take
/// them, and a read under the lock borrows one.
#[derive(Default)]
struct DirectBuf {
    spare: Vec<Vec<u8>>,
}

impl DirectBuf {
    /// Reads `want` bytes at `offset` (aligned) of the direct descriptor, appending them to
    /// `data`; fewer at the end of the file.
    fn read(
        &mut self,
        dfd: &OwnedFd,
        data: &mut Vec<u8>,
        want: usize,
        offset: u64,
    ) -> Result<(), Errno> {
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| readahead::direct_buffer(CHUNK_BYTES, DIRECT_ALIGN));
        let len = want.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let part = readahead::aligned_part(&mut buf, DIRECT_ALIGN, len);
        invariant!(
            part.is_some(),
            "direct read of {want} bytes does not fit its buffer"
        );
        let result = match part {
            Some((_, part)) => pread_full(dfd, part, offset).map(|got| {
                data.extend_from_slice(&part[..got.min(want)]);
            }),
            None => Err(Errno::INVAL),
        };
        self.spare.push(buf);
        result
    }
}

/// Opens a listed file to read it, by its handle (which finds it even renamed), such that
/// its descriptor can tell the file's name; `None` if it is gone since the listing.
///
/// A file opened by handle after the kernel evicted its directory entry gets a descriptor
/// that names it `/` until closed (seen in the initial-sync benchmark: 10,001 of 10,004 files
/// sent without data, and the sync reported success). The listed name, if it still leads to
/// the same inode, gives a descriptor that knows its name; if not, the file was renamed
/// since the listing and the sync must start again.
fn open_listed(
    root: &OwnedFd,
    root_path: &[u8],
    handle: &walk::ActiveHandle,
    listed_path: &[u8],
    opened: Option<OwnedFd>,
) -> Result<Option<OwnedFd>, EngineError> {
    let fd = match opened.map_or_else(|| walk::open_handle(root, handle), Ok) {
        Ok(fd) => fd,
        Err(e)
            if e.raw_os_error() == Some(Errno::STALE.raw_os_error())
                || e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(EngineError::Other(format!(
                "opening `{}`: {e}",
                listed_path.escape_ascii()
            )))
        }
    };
    if walk::whereabouts(&fd, root_path) != Whereabouts::Unknown {
        return Ok(Some(fd));
    }
    match walk::open_path(root, listed_path) {
        Ok(by_path) if walk::same_inode(&by_path, &fd) => Ok(Some(by_path)),
        _ => Err(EngineError::Other(format!(
            "`{}` was renamed since the listing and its descriptor cannot tell its new name",
            listed_path.escape_ascii()
        ))),
    }
}

/// The same file opened again with `O_DIRECT`, when the filesystem allows it.
fn reopen_direct(fd: &OwnedFd) -> Option<OwnedFd> {
    use std::os::fd::AsRawFd;
    rfs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        rfs::OFlags::RDONLY | rfs::OFlags::DIRECT | rfs::OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )
    .ok()
}

impl Engine {
    pub fn new(io: EngineIo, id: u64) -> Self {
        let rate_max = io.rate_max;
        Engine {
            io,
            id,
            pacer: Pacer {
                rate_max,
                since: Instant::now(),
                sent: 0,
            },
            stash: HashMap::new(),
            deferred: VecDeque::new(),
            hints: HashMap::new(),
            direct: DirectBuf::default(),
            small: None,
            records_made: 0,
            copy_watch: None,
            reading: Duration::ZERO,
            waiting_for_peer: Duration::ZERO,
            reads_redone: 0,
            file_left: 0,
        }
    }

    fn progress(&self, f: impl FnOnce(&mut SyncProgress)) {
        let mut p = lock(&self.io.progress);
        f(&mut p);
        let (us, site) = *lock(&self.io.longest_hold);
        if p.longest_hold_us != us {
            // Called once per file copied: the name is copied only when it changes.
            p.longest_hold_us = us;
            p.longest_hold_site = site.to_string();
        }
        p.tick();
    }

    /// Step 1, under the order lock: `SyncBegin` and the listing. With `session_start`, the
    /// queue is reset so the session streams from the `SyncBegin` on. Returns its seq.
    pub fn begin(
        &mut self,
        verify: bool,
        scope: Scope,
        session_start: bool,
    ) -> Result<(u64, Listing), EngineError> {
        self.progress(|p| {
            p.id = self.id;
            p.phase = "listing".into();
            p.started = Some(Instant::now());
        });
        // The listing is drafted without the lock first (`prelist.rs`):
        // the lock is then held for what changed during the walk, not for the tree.
        let drafting = Instant::now();
        let (seq, drafted_scope) = {
            let _order = self.io.hold("draft");
            let mut log = lock(self.io.queue.changes());
            let drafted_scope = match &scope {
                Scope::Paths(paths) => paths.clone(),
                // What the scope is now; by the time the lock is taken again it may have
                // grown (`prelist::finish` lists what was added).
                Scope::ChangedSince { common, extra } => {
                    let mut all = extra.clone();
                    all.merge(log.since(*common));
                    all.into_scope()
                }
            };
            let seq = self.io.queue.last_seq();
            log.watch(seq);
            (seq, drafted_scope)
        };
        let draft = prelist::draft(&self.io.root, drafted_scope, seq).inspect_err(|_| {
            lock(self.io.queue.changes()).take_watch(seq);
        })?;
        let draft_ms = drafting.elapsed().as_millis() as u64;
        let started = Instant::now();
        let _order = self.io.hold("listing");
        // The scope is read under the lock: every op captured up to this seq is in the
        // change log by now, and the queue is reset below in the same hold, so nothing
        // captured before the listing can be missing from both.
        let scope = match scope {
            Scope::Paths(p) => p,
            Scope::ChangedSince { common, mut extra } => {
                let mine = lock(self.io.queue.changes()).since(common);
                extra.merge(mine);
                self.hints = extra.block_runs();
                extra.into_scope()
            }
        }
        .map(walk::normalize_scope);
        let scope_text = match &scope {
            None => "whole tree".to_string(),
            Some(p) => format!("{} changed paths", p.len()),
        };
        let changed = {
            let mut log = lock(self.io.queue.changes());
            let changed = log.take_watch(seq);
            // From here on, through the copy: which paths applications change (a read ahead
            // of a file none of them touched is exact, invariant 26).
            if !verify {
                let from = self.io.queue.last_seq();
                log.watch(from);
                self.copy_watch = Some(from);
            }
            changed
        };
        let drafted = draft.entries();
        let listing = match prelist::finish(
            draft,
            &self.io.root,
            changed.as_ref(),
            scope.as_deref(),
        )? {
            Ok((listing, patch)) => {
                info!(
                    drafted,
                    draft_ms,
                    dropped = patch.dropped,
                    relisted = patch.relisted,
                    parents = patch.parents,
                    "listing drafted without the order lock, patched under it"
                );
                listing
            }
            Err(why) => {
                info!(drafted, draft_ms, %why, "listing draft discarded; listing under the order lock");
                walk::list(&self.io.root, scope.as_deref())?
            }
        };
        let first = if session_start {
            // A session's resync is named by its SyncBegin's seq: the passive was told that
            // seq in the plan, and knows the resync is whole when the SyncEnd with that id
            // is durable. The id the engine was made with was read before the order lock,
            // so an op captured meanwhile would make the two differ, and the passive would
            // never count itself in sync (nor take over) until the next session.
            let first = self.io.queue.start_resync_session();
            self.id = first;
            self.progress(|p| p.id = first);
            first
        } else {
            self.io.queue.last_seq() + 1
        };
        let scope_roots = if verify { None } else { scope.clone() };
        let seq = self.io.queue.record_sync(Op::SyncBegin {
            id: self.id,
            verify,
            scope,
        });
        invariant!(seq == first, "SyncBegin got seq {seq}, expected {first}");
        record_listing(&self.io.queue, self.id, &listing.entries);
        // The passive adds and removes names in each scope root's parent, which is not in
        // the listing: give those parents their mtime as it is here.
        if let Some(roots) = &scope_roots {
            for (parent, mtime) in walk::parent_mtimes(&self.io.root, roots) {
                self.io.queue.record_sync(Op::SetAttr {
                    file: FileRef::Path(parent),
                    mode: None,
                    uid: None,
                    gid: None,
                    atime: None,
                    mtime: Some(mtime),
                });
            }
        }
        drop(_order);
        info!(
            id = self.id,
            verify,
            scope = %scope_text,
            entries = listing.entries.len(),
            held_ms = started.elapsed().as_millis() as u64,
            "resync listing recorded"
        );
        let held = started.elapsed().as_millis() as u64;
        self.progress(|p| {
            p.entries = listing.entries.len() as u64;
            p.listing_ms = held;
            p.draft_ms = draft_ms;
            p.scope = scope_text.clone();
        });
        Ok((first, listing))
    }

    /// Whether no op recorded after `seen` touched `path` or its ancestors, as the change
    /// log's watch of the copy saw it (call under the order lock). For a file that had one
    /// name at some moment after `seen` (checked by the caller), that means no op touched
    /// the file since: a second name is made only by an op naming this one.
    fn untouched_since(&self, path: &[u8], seen: u64) -> bool {
        self.copy_watch.is_some_and(|after| {
            lock(self.io.queue.changes()).touched_after(after, path, seen) == Some(false)
        })
    }

    /// The file's name now (call under the order lock); `None` once it has none left.
    fn name_now(&self, fd: &OwnedFd) -> Result<Option<Vec<u8>>, EngineError> {
        match walk::whereabouts(fd, &self.io.root_path) {
            Whereabouts::Named(path) => Ok(Some(path)),
            Whereabouts::Deleted => Ok(None),
            // Never "gone": that would leave the passive's copy of it unfinished while the
            // sync reports success.
            Whereabouts::Unknown => Err(EngineError::Other(
                "lost track of a file's name during the sync".into(),
            )),
        }
    }

    fn next_report(&mut self) -> Result<Report, EngineError> {
        if let Some(r) = self.deferred.pop_front() {
            return Ok(r);
        }
        self.recv()
    }

    fn recv(&mut self) -> Result<Report, EngineError> {
        let deadline = Instant::now() + REPORT_TIMEOUT;
        loop {
            match self.io.reports.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Disconnected) => return Err(EngineError::SessionEnded),
                Err(RecvTimeoutError::Timeout) => {
                    if !self.io.queue.is_streaming() {
                        return Err(EngineError::SessionEnded);
                    }
                    if Instant::now() > deadline {
                        return Err(EngineError::Timeout);
                    }
                }
            }
        }
    }

    fn request_hashes(&self, index: u32) -> Result<(), EngineError> {
        let req = HashRequest {
            id: self.id,
            index,
            block_size: BLOCK_SIZE,
        };
        self.io
            .control
            .blocking_send((proto::kind::HASH_REQUEST, req.encode()))
            .map_err(|_| EngineError::SessionEnded)
    }

    /// Waits for the passive's hashes of `index`, keeping other reports for later.
    fn hashes_of(&mut self, index: u32) -> Result<Hashes, EngineError> {
        loop {
            if let Some(h) = self.stash.remove(&index) {
                return Ok(h);
            }
            match self.recv()? {
                Report::Hashes(h) if h.id == self.id => {
                    self.stash.insert(h.index, h);
                }
                Report::Hashes(_) => {}
                other => self.deferred.push_back(other),
            }
        }
    }

    /// Steps 2 and 3 of a resync: the files the passive asks for, then `SyncEnd`, then
    /// waits until the passive made it durable.
    pub fn resync(&mut self, listing: &Listing, passive_empty: bool) -> Result<u64, EngineError> {
        self.progress(|p| p.phase = "comparing".into());
        // The passive lists what it needs once it applied the listing. An empty passive
        // needs everything: no need to wait for it to say so while it creates the names.
        let mut need: Vec<(u32, bool)> = Vec::new();
        if passive_empty {
            let mut all: Vec<u32> = listing.files.keys().copied().collect();
            all.sort_unstable();
            need.extend(all.into_iter().map(|i| (i, false)));
        }
        if !passive_empty {
            loop {
                match self.next_report()? {
                    Report::Need(n) if n.id == self.id => {
                        need.extend(n.items);
                        if n.last {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        // A file changed only by writes needs only the written blocks: no hashes asked.
        let files: Vec<(ListedFile, bool, Option<Runs>)> = need
            .into_iter()
            .filter_map(|(i, has)| {
                let f = listing.files.get(&i)?.clone();
                let hint = has
                    .then(|| listing.entries.get(i as usize))
                    .flatten()
                    .and_then(|e| self.hints.get(&e.path).cloned());
                Some((f, has, hint))
            })
            .collect();
        let total: u64 = files.iter().map(|(f, _, _)| f.size).sum();
        self.progress(|p| {
            p.phase = "copying".into();
            p.files_total = files.len() as u64;
            p.bytes_total = total;
        });
        // Small files the passive lacks take turns with the records of the large files: the
        // small ones cost CPU on both sides (names, metadata), the large ones the disk, and
        // one after the other left each idle in turn.
        let (small, large): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|(f, has, hint)| !*has && hint.is_none() && f.size <= CHUNK_BYTES as u64);
        let large_chunks: u64 = large
            .iter()
            .filter(|(_, has, hint)| !*has && hint.is_none())
            .map(|(f, _, _)| f.size.div_ceil(CHUNK_BYTES as u64))
            .sum();
        let per_chunk = if large_chunks == 0 {
            0
        } else {
            (small.len() as u64).div_ceil(large_chunks) as usize
        };
        self.small = Some(SmallLane {
            files: small
                .into_iter()
                .map(|(f, _, _)| {
                    let path = listing.path_of(f.index).to_vec();
                    (f, path)
                })
                .collect(),
            cursor: 0,
            prefetch: Prefetch::default(),
            per_chunk,
        });
        // Hash requests run ahead of the copying, so the passive hashes while we copy.
        let mut requested = 0;
        let mut prefetch = Prefetch::default();
        for i in 0..large.len() {
            while requested < large.len() && requested < i + HASH_WINDOW {
                let (f, has, hint) = &large[requested];
                if *has && hint.is_none() {
                    self.request_hashes(f.index)?;
                }
                requested += 1;
            }
            let fd = prefetch.take(&self.io.root, i, |k| large.get(k).map(|(f, _, _)| f));
            let (file, has_data, hint) = &large[i];
            let listed_path = listing.path_of(file.index);
            self.copy_one(file, listed_path, *has_data, hint.as_deref(), fd)?;
        }
        // What is left of the small files (all of them when there were no large ones).
        self.small_turn(usize::MAX)?;
        self.small = None;
        self.finish()
    }

    /// Copies up to `count` files of the small-file lane (none while a turn is running: a
    /// small file that turns out not to fit goes the general way, through `copy_chunks`).
    fn small_turn(&mut self, count: usize) -> Result<(), EngineError> {
        let Some(mut lane) = self.small.take() else {
            return Ok(());
        };
        let result = (|| {
            // Bounded by the lane's length.
            for _ in 0..count {
                let i = lane.cursor;
                if i >= lane.files.len() {
                    break;
                }
                lane.cursor += 1;
                let files = &lane.files;
                let fd = lane
                    .prefetch
                    .take(&self.io.root, i, |k| files.get(k).map(|(f, _)| f));
                let (file, path) = &files[i];
                self.copy_one(file, path, false, None, fd)?;
            }
            Ok(())
        })();
        self.small = Some(lane);
        result
    }

    /// Copies one file of a resync (its written blocks with `runs`) and counts it done.
    /// Its bytes count in `bytes_done` as its records are made, so the copy of a large file
    /// shows a rate and an ETA rather than a standstill until its end; what of its listed
    /// size they did not cover (unchanged blocks, holes, a file gone or shortened since the
    /// listing) counts when it is done.
    fn copy_one(
        &mut self,
        file: &ListedFile,
        listed_path: &[u8],
        has_data: bool,
        runs: Option<&[(u64, u64)]>,
        fd: Option<OwnedFd>,
    ) -> Result<(), EngineError> {
        // Small files are copied between a large file's records: its count is put back after.
        let outer = std::mem::replace(&mut self.file_left, file.size);
        let copied = match runs {
            Some(runs) => self.copy_blocks(file, listed_path, runs, fd),
            None => self.copy_file(file, listed_path, has_data, fd),
        };
        let rest = std::mem::replace(&mut self.file_left, outer);
        copied?;
        self.progress(|p| {
            p.files_done += 1;
            p.bytes_done += rest;
        });
        Ok(())
    }

    /// Records `SyncEnd` and waits until the passive holds it durably. Returns its seq.
    fn finish(&mut self) -> Result<u64, EngineError> {
        self.progress(|p| p.phase = "finishing".into());
        let finishing = Instant::now();
        let end = {
            let _order = self.io.hold("finish");
            if let Some(from) = self.copy_watch.take() {
                lock(self.io.queue.changes()).take_watch(from);
            }
            self.io.queue.record_sync(Op::SyncEnd { id: self.id })
        };
        let deadline = Instant::now() + REPORT_TIMEOUT;
        while self.io.queue.durable_seq() < end {
            if !self.io.queue.is_streaming() {
                return Err(EngineError::SessionEnded);
            }
            if Instant::now() > deadline {
                return Err(EngineError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.progress(|p| {
            p.phase = "done".into();
            p.bytes_done = p.bytes_total;
            p.finish_ms = finishing.elapsed().as_millis() as u64;
        });
        Ok(end)
    }

    fn wait_room(&mut self, bytes: u64) -> Result<(), EngineError> {
        let started = Instant::now();
        if !self
            .io
            .queue
            .wait_for_room(YIELD_BYTES, Duration::from_secs(5))
        {
            return Err(EngineError::SessionEnded);
        }
        self.pacer.pay(bytes);
        self.waiting_for_peer += started.elapsed();
        Ok(())
    }

    /// Waits until the queue's memory has room for a record of `bytes`, right before taking
    /// the order lock to make it: recording waits for that room, and under the lock every
    /// application write would wait with it. Called with the record's data in hand, so the
    /// reads ahead stay busy meanwhile.
    fn wait_memory(&mut self, bytes: u64) -> Result<(), EngineError> {
        let started = Instant::now();
        if !self.io.queue.wait_for_memory(bytes, Duration::from_secs(5)) {
            return Err(EngineError::SessionEnded);
        }
        self.waiting_for_peer += started.elapsed();
        Ok(())
    }

    /// Sends the content of one file: all of it (the passive has none), or the blocks whose
    /// hashes differ; then its exact size and metadata.
    fn copy_file(
        &mut self,
        file: &ListedFile,
        listed_path: &[u8],
        has_data: bool,
        mut opened: Option<OwnedFd>,
    ) -> Result<(), EngineError> {
        let Some(handle) = &file.handle else {
            // No handle (a filesystem without them): the passive keeps what it has until
            // a later verify repairs it.
            warn!(index = file.index, "no file handle; content not compared");
            return Ok(());
        };
        if !has_data && file.size <= CHUNK_BYTES as u64 {
            // Not opened (gone since the listing, or odd): the general path tells which.
            let fd = opened
                .take()
                .or_else(|| walk::open_handle(&self.io.root, handle).ok());
            if let Some(fd) = fd {
                match self.copy_small(fd)? {
                    None => return Ok(()),
                    Some(fd) => opened = Some(fd),
                }
            }
        }
        // Gone since the listing: its removal was replicated in order.
        let Some(fd) = open_listed(
            &self.io.root,
            &self.io.root_path,
            handle,
            listed_path,
            opened,
        )?
        else {
            return Ok(());
        };
        if has_data {
            // Ours first: the passive was asked for its hashes ahead of time and computes
            // them meanwhile, so the two sides hash this file at the same time.
            let (_, mine) = hashing::hash_blocks(&fd, BLOCK_SIZE)
                .map_err(|e| EngineError::Other(format!("hashing: {e}")))?;
            let theirs = self.hashes_of(file.index)?;
            let block = u64::from(BLOCK_SIZE);
            for (start, end) in hashing::differing_blocks(&mine, &theirs.hashes) {
                let (from, to) = (start as u64 * block, end as u64 * block);
                if !self.copy_range(&fd, from, to)? {
                    return Ok(());
                }
            }
        } else if !self.copy_data(&fd, file.size)? {
            return Ok(());
        }
        self.send_meta(&fd)
    }

    /// Sends the blocks the change log says were written (runs of [`BLOCK_SIZE`] blocks),
    /// then the file's exact size and metadata. Nothing else of it can differ.
    fn copy_blocks(
        &mut self,
        file: &ListedFile,
        listed_path: &[u8],
        runs: &[(u64, u64)],
        opened: Option<OwnedFd>,
    ) -> Result<(), EngineError> {
        let fd = match &file.handle {
            Some(h) => open_listed(&self.io.root, &self.io.root_path, h, listed_path, opened)?,
            None => None,
        };
        let Some(fd) = fd else {
            return Ok(());
        };
        let block = u64::from(BLOCK_SIZE);
        for &(first, end) in runs {
            if !self.copy_range(&fd, first * block, end * block)? {
                return Ok(());
            }
        }
        self.send_meta(&fd)
    }

    /// Copies every data extent of a file the passive does not have (holes stay holes: the
    /// passive's file is empty and `SyncMeta` sets the size). False if the file is gone.
    fn copy_data(&mut self, fd: &OwnedFd, size: u64) -> Result<bool, EngineError> {
        let mut pos = 0u64;
        while pos < size {
            let data = match rfs::seek(fd, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break,
                Err(_) => pos,
            };
            let hole = match rfs::seek(fd, SeekFrom::Hole(data)) {
                Ok(h) => h.min(size),
                Err(_) => size,
            };
            if data >= hole {
                break;
            }
            if !self.copy_range(fd, data, hole)? {
                return Ok(false);
            }
            pos = hole;
        }
        Ok(true)
    }

    /// Records `[from, to)` of the file as `Write`s (or a hole punch where the active has a
    /// hole), each exact at its seq. False if the file has no name any more.
    fn copy_range(&mut self, fd: &OwnedFd, from: u64, to: u64) -> Result<bool, EngineError> {
        let direct = if to - from >= DIRECT_READ_MIN_BYTES && from % DIRECT_ALIGN as u64 == 0 {
            reopen_direct(fd)
        } else {
            None
        };
        let Some(dfd) = direct else {
            // The kernel reads the range in while we copy: the reads under the lock then
            // come from the page cache, and the lock blocks the set's writers only briefly.
            let _ = rfs::fadvise(
                fd,
                from,
                std::num::NonZeroU64::new(to - from),
                rfs::Advice::WillNeed,
            );
            return self.copy_chunks(fd, None, from, to);
        };
        std::thread::scope(|scope| {
            let spare = std::mem::take(&mut self.direct.spare);
            let ahead = ReadAhead::start(scope, &dfd, from, to, CHUNK_BYTES, DIRECT_ALIGN, spare);
            self.copy_chunks(fd, Some((&dfd, ahead)), from, to)
        })
    }

    /// The loop of [`Engine::copy_range`]; `direct`: the file opened with `O_DIRECT` and its
    /// reads ahead.
    fn copy_chunks(
        &mut self,
        fd: &OwnedFd,
        mut direct: Option<(&OwnedFd, ReadAhead)>,
        from: u64,
        to: u64,
    ) -> Result<bool, EngineError> {
        let queue = self.io.queue.clone();
        let mut at = from;
        while at < to {
            let want = ((to - at) as usize).min(CHUNK_BYTES);
            self.wait_room(want as u64)?;
            let read_started = Instant::now();
            let mut ahead_read = None;
            if let Some((_, ahead)) = &mut direct {
                ahead.issue(|| queue.last_seq());
                ahead_read = ahead.next();
                // The next reads start before this chunk is recorded.
                ahead.issue(|| queue.last_seq());
            }
            self.reading += read_started.elapsed();
            // The record's buffer: the one copy of the data here.
            let mut data: Vec<u8> = queue.take_buffer(want);
            self.wait_memory(want as u64)?;
            let recorded = {
                let _order = self.io.hold("copy_chunks");
                let Some(path) = self.name_now(fd)? else {
                    return Ok(false);
                };
                let read_started = Instant::now();
                let mut read = false;
                if let (Some((_, ahead)), Some(r)) = (&mut direct, ahead_read) {
                    invariant!(r.offset() == at, "a read ahead arrived out of order");
                    let untouched = |seen: u64| self.untouched_since(&path, seen);
                    read = ahead.use_if_exact(r, queue.last_seq(), want, &mut data, untouched);
                    if !read {
                        self.reads_redone += 1;
                    }
                }
                if !read {
                    if let Some((dfd, _)) = &direct {
                        if let Err(e) = self.direct.read(dfd, &mut data, want, at) {
                            // Not for this file after all (EINVAL: an odd filesystem).
                            warn!(error = %e, "direct read refused; reading through the page cache");
                            direct = None;
                            data.clear();
                        } else {
                            read = true;
                        }
                    }
                }
                if !read {
                    pread_into(fd, &mut data, want, at)
                        .map_err(|e| EngineError::Other(format!("reading: {e}")))?;
                }
                self.reading += read_started.elapsed();
                let n = data.len();
                if n == 0 {
                    // Truncated meanwhile (replicated in order): nothing more to send.
                    return Ok(true);
                }
                let op = if is_hole(fd, at, n) {
                    Op::Fallocate {
                        file: FileRef::Path(path),
                        mode: PUNCH_HOLE,
                        offset: at,
                        len: n as u64,
                    }
                } else {
                    Op::Write {
                        file: FileRef::Path(path),
                        offset: at,
                        data,
                    }
                };
                let seq = queue.record_sync(op);
                self.records_made += 1;
                if let Some((_, ahead)) = &mut direct {
                    ahead.recorded(seq);
                }
                if n < want {
                    // The file ended early (truncated since the listing): the reads ahead
                    // are past its end, and the next read under the lock finds it.
                    if let Some((_, ahead)) = direct.take() {
                        self.direct.spare = ahead.finish();
                    }
                }
                n
            };
            let (reading, waiting, redone) =
                (self.reading, self.waiting_for_peer, self.reads_redone);
            // Counted as it is recorded, up to the file's listed size (it may have grown).
            let counted = (recorded as u64).min(self.file_left);
            self.file_left -= counted;
            self.progress(|p| {
                p.reads_redone = redone;
                p.bytes_sent += recorded as u64;
                p.bytes_done += counted;
                p.reading_ms = reading.as_millis() as u64;
                p.waiting_for_peer_ms = waiting.as_millis() as u64;
            });
            at += recorded as u64;
            // A few small files while the reads ahead and the passive's disk work. Their
            // records change nothing of this file: the reads ahead stay usable if nothing
            // else was recorded meanwhile.
            let per_chunk = self.small.as_ref().map_or(0, |lane| lane.per_chunk);
            if per_chunk > 0 {
                let (before, made) = (queue.last_seq(), self.records_made);
                self.small_turn(per_chunk)?;
                if let Some((_, ahead)) = &mut direct {
                    ahead.engine_recorded(before, queue.last_seq(), self.records_made - made);
                }
            }
        }
        if let Some((_, ahead)) = direct {
            self.direct.spare = ahead.finish();
        }
        Ok(true)
    }

    /// A whole file the passive does not have, of at most one record, in one hold of the
    /// lock: one look at its name, its content as one `Write` and its metadata as the
    /// `SyncMeta` right after. The general path takes three holds and twice the syscalls,
    /// and the 10,000 small files of the initial-sync benchmark are CPU-bound on both
    /// sides. Gives the descriptor back, having recorded nothing, for a file this does not
    /// fit: sparse (its holes must stay holes), grown past one record, or opened by handle
    /// such that its descriptor cannot tell its name.
    fn copy_small(&mut self, fd: OwnedFd) -> Result<Option<OwnedFd>, EngineError> {
        let fits = |st: &rfs::Stat| {
            let size = st.st_size.max(0) as u64;
            size <= CHUNK_BYTES as u64 && (st.st_blocks.max(0) as u64) * 512 >= size
        };
        let st = rfs::fstat(&fd).map_err(|e| EngineError::Other(format!("stat: {e}")))?;
        if !fits(&st) {
            return Ok(Some(fd));
        }
        self.wait_room(st.st_size as u64)?;
        let queue = self.io.queue.clone();
        let mut data: Vec<u8> = queue.take_buffer(st.st_size as usize);
        // Read first outside the lock, so that a read from the disk (the prefetch may not be
        // done) never holds applications' writes back: used if nothing recorded since it began
        // touched the file (invariant 26's argument), else read again under the lock, from
        // the page cache this read filled.
        let seen_seq = queue.last_seq();
        // After the seq, before the read (see `untouched_since`).
        let one_name = rfs::fstat(&fd).is_ok_and(|st| st.st_nlink == 1);
        let early_size = st.st_size as usize;
        let read_started = Instant::now();
        data.reserve_exact(early_size);
        let early = pread_into(&fd, &mut data, early_size, 0).is_ok() && data.len() == early_size;
        self.reading += read_started.elapsed();
        self.wait_memory(early_size as u64)?;
        let sent = {
            let _order = self.io.hold("copy_small");
            let path = match walk::whereabouts(&fd, &self.io.root_path) {
                Whereabouts::Named(path) => path,
                // Removed since the listing: its removal was replicated in order.
                Whereabouts::Deleted => return Ok(None),
                Whereabouts::Unknown => return Ok(Some(fd)),
            };
            // Again under the lock: what is recorded must be the file at this seq.
            let st = rfs::fstat(&fd).map_err(|e| EngineError::Other(format!("stat: {e}")))?;
            if !fits(&st) {
                return Ok(Some(fd));
            }
            let size = st.st_size as usize;
            let exact =
                queue.last_seq() == seen_seq || (one_name && self.untouched_since(&path, seen_seq));
            if !(early && size == early_size && exact) {
                self.reads_redone += 1;
                let read_started = Instant::now();
                data.clear();
                data.reserve_exact(size);
                pread_into(&fd, &mut data, size, 0)
                    .map_err(|e| EngineError::Other(format!("reading: {e}")))?;
                self.reading += read_started.elapsed();
            }
            if data.len() != size {
                // Changed by something the lock does not hold back (never through capture):
                // the general path reads it chunk by chunk and copes.
                return Ok(Some(fd));
            }
            let xattrs =
                walk::xattrs_of(&fd).map_err(|e| EngineError::Other(format!("xattrs: {e}")))?;
            if size > 0 {
                queue.record_sync(Op::Write {
                    file: FileRef::Path(path.clone()),
                    offset: 0,
                    data,
                });
                self.records_made += 1;
            }
            queue.record_sync(meta_op(path, &st, xattrs));
            self.records_made += 1;
            size as u64
        };
        let (reading, waiting, redone) = (self.reading, self.waiting_for_peer, self.reads_redone);
        self.progress(|p| {
            p.bytes_sent += sent;
            p.reading_ms = reading.as_millis() as u64;
            p.waiting_for_peer_ms = waiting.as_millis() as u64;
            p.reads_redone = redone;
        });
        Ok(None)
    }

    /// Records the file's exact size and metadata now.
    fn send_meta(&mut self, fd: &OwnedFd) -> Result<(), EngineError> {
        let _order = self.io.hold("send_meta");
        let Some(path) = self.name_now(fd)? else {
            return Ok(());
        };
        let st = rfs::fstat(fd).map_err(|e| EngineError::Other(format!("stat: {e}")))?;
        let xattrs = walk::xattrs_of(fd).map_err(|e| EngineError::Other(format!("xattrs: {e}")))?;
        self.io.queue.record_sync(meta_op(path, &st, xattrs));
        self.records_made += 1;
        Ok(())
    }

    /// A verify: the passive compares the listing with its tree and reports; both sides hash
    /// every file present on both; blocks that seem to differ are checked exactly.
    pub fn verify(&mut self, listing: &Listing) -> Result<VerifyOutcome, EngineError> {
        let started = Instant::now();
        self.progress(|p| p.phase = "comparing".into());
        let mut differences: Vec<(String, String)> = Vec::new();
        let mut compare: Vec<u32> = Vec::new();
        loop {
            match self.next_report()? {
                Report::Diffs(d) if d.id == self.id => differences.extend(
                    d.items
                        .into_iter()
                        .map(|(p, what)| (p.escape_ascii().to_string(), what)),
                ),
                Report::Compare(c) if c.id == self.id => {
                    compare.extend(c.indexes);
                    if c.last {
                        break;
                    }
                }
                _ => {}
            }
        }
        let files: Vec<ListedFile> = compare
            .iter()
            .filter_map(|i| listing.files.get(i).cloned())
            .collect();
        let total: u64 = files.iter().map(|f| f.size).sum();
        info!(
            id = self.id,
            files = files.len(),
            bytes = total,
            after_ms = started.elapsed().as_millis() as u64,
            "verify: the passive's compare list is in"
        );
        self.progress(|p| {
            p.files_total = files.len() as u64;
            p.bytes_total = total;
        });
        let block = u64::from(BLOCK_SIZE);
        let mut pending_ranges = 0usize;
        // Two lanes: one thread hashes the large files (each with several direct reads in
        // flight), then several hash the small ones, one direct read each; the passive does
        // the same. They take turns rather than run together (see `wait_done`). Each lane
        // keeps at most its window of files hashed or asked for and not yet compared; a file
        // is compared as soon as both sides' hashes are in, in any order.
        let lane_of = |f: &ListedFile| usize::from(f.size < hashing::LARGE_FILE_BYTES);
        let lanes = [
            Lane::new(&files, |f| lane_of(f) == 0, LARGE_WINDOW),
            Lane::new(&files, |f| lane_of(f) == 1, HASH_WINDOW),
        ];
        let position_of: HashMap<u32, usize> = files
            .iter()
            .enumerate()
            .map(|(p, f)| (f.index, p))
            .collect();
        let report_tx = self
            .io
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(EngineError::SessionEnded)?;
        let root_path = self.io.root_path.clone();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let result = std::thread::scope(|scope| -> Result<(), EngineError> {
            for (lane, threads) in lanes.iter().zip([1, hashing::SMALL_FILE_HASHERS]) {
                for _ in 0..threads {
                    let (report_tx, files, root, root_path, stop) = (
                        report_tx.clone(),
                        &files,
                        self.io.root.clone(),
                        &root_path,
                        &stop,
                    );
                    let large = &lanes[0];
                    scope.spawn(move || {
                        // The lanes take turns: a small file's read waits behind the large
                        // files' reads in flight (0.1 ms alone, 21 ms next to eight 4 MiB
                        // direct reads on this VM), so together they made no progress.
                        if !std::ptr::eq(lane, large) && !large.wait_done(stop) {
                            return;
                        }
                        while let Some(position) = lane.take(stop) {
                            let f = &files[position];
                            let listed_path = listing.path_of(f.index);
                            // A file this side cannot read is an error, never a clean result.
                            let result = match &f.handle {
                                None => Ok(None),
                                Some(h) => {
                                    match open_listed(&root, root_path, h, listed_path, None) {
                                        Ok(Some(fd)) => hashing::hash_blocks(&fd, BLOCK_SIZE)
                                            .map(|(_, hashes)| Some(Own { fd, hashes }))
                                            .map_err(|e| {
                                                format!(
                                                    "hashing `{}`: {e}",
                                                    listed_path.escape_ascii()
                                                )
                                            }),
                                        Ok(None) => Ok(None),
                                        Err(e) => Err(e.to_string()),
                                    }
                                }
                            };
                            if report_tx
                                .send(Report::Own(OwnHashes { position, result }))
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }
            drop(report_tx);
            let mut own: HashMap<usize, Result<Option<Own>, String>> = HashMap::new();
            let mut theirs: HashMap<usize, Hashes> = HashMap::new();
            let mut requested = [0usize; 2];
            let outcome = (|| {
                let mut compared = 0;
                while compared < files.len() {
                    for (l, lane) in lanes.iter().enumerate() {
                        if l > 0 && !lanes[0].done() {
                            break;
                        }
                        // In bursts of half a window: one wakeup of the session's writer
                        // and one socket write for many requests, not one per file.
                        if requested[l] > lane.compared() + lane.window / 2 {
                            continue;
                        }
                        while requested[l] < lane.positions.len()
                            && requested[l] < lane.compared() + lane.window
                        {
                            self.request_hashes(files[lane.positions[requested[l]]].index)?;
                            requested[l] += 1;
                        }
                    }
                    let position = match self.recv()? {
                        Report::Hashes(h) if h.id == self.id => {
                            let Some(&p) = position_of.get(&h.index) else {
                                continue;
                            };
                            theirs.insert(p, h);
                            p
                        }
                        Report::Hashes(_) => continue,
                        Report::Own(o) => {
                            own.insert(o.position, o.result);
                            o.position
                        }
                        other => {
                            self.deferred.push_back(other);
                            continue;
                        }
                    };
                    if !theirs.contains_key(&position) || !own.contains_key(&position) {
                        continue;
                    }
                    let (Some(their), Some(mine)) =
                        (theirs.remove(&position), own.remove(&position))
                    else {
                        continue;
                    };
                    if let Some(Own { fd, hashes }) = mine.map_err(EngineError::Other)? {
                        for (start, end) in hashing::differing_blocks(&hashes, &their.hashes) {
                            for b in start..end {
                                self.wait_room(block)?;
                                pending_ranges += self.check_range(&fd, b as u64 * block, block)?;
                            }
                        }
                    }
                    let file = &files[position];
                    self.progress(|p| {
                        p.files_done += 1;
                        p.bytes_done += file.size;
                    });
                    lanes[lane_of(file)].compared_one();
                    compared += 1;
                }
                Ok(())
            })();
            // Let the hashers end (they may be waiting for room in their window).
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            outcome
        });
        result?;
        info!(
            id = self.id,
            after_ms = started.elapsed().as_millis() as u64,
            "verify: every file hashed on both sides"
        );
        // The exact checks come back as the passive applies them.
        let mut mismatched: Vec<String> = Vec::new();
        while pending_ranges > 0 {
            match self.next_report()? {
                Report::Range(r) if r.id == self.id => {
                    pending_ranges -= 1;
                    if !r.matches {
                        let path = r.path.escape_ascii().to_string();
                        if !mismatched.contains(&path) {
                            mismatched.push(path);
                        }
                    }
                }
                _ => {}
            }
        }
        differences.extend(mismatched.into_iter().map(|p| (p, "content".to_string())));
        self.finish()?;
        Ok(VerifyOutcome {
            id: self.id,
            differences,
            files_compared: files.len() as u64,
            bytes_compared: total,
            elapsed_ms: started.elapsed().as_millis() as u64,
            repair_id: None,
        })
    }

    /// Records a `VerifyRange` for `len` bytes at `offset`, hashed under the lock. Returns 1
    /// if a result will come back (0 if the file has no name any more).
    fn check_range(&mut self, fd: &OwnedFd, offset: u64, len: u64) -> Result<usize, EngineError> {
        let mut buf = vec![0u8; len as usize];
        let _order = self.io.hold("check_range");
        let Some(path) = self.name_now(fd)? else {
            return Ok(0);
        };
        let n = pread_full(fd, &mut buf, offset)
            .map_err(|e| EngineError::Other(format!("reading: {e}")))?;
        self.io.queue.record_sync(Op::VerifyRange {
            id: self.id,
            path,
            offset,
            len: n as u64,
            hash: *blake3::hash(&buf[..n]).as_bytes(),
        });
        Ok(1)
    }
}

/// Runs of blocks `[first, end)`.
type Runs = Vec<(u64, u64)>;

/// A file of this copy hashed for a verify.
#[derive(Debug)]
struct Own {
    fd: OwnedFd,
    hashes: Vec<[u8; 32]>,
}

/// This copy's hashes of the verify's file at `position` (from the engine's own hashers).
#[derive(Debug)]
pub struct OwnHashes {
    position: usize,
    result: Result<Option<Own>, String>,
}

/// Files of a verify hashed by the same threads: their positions in order, and how far the
/// hashing and the comparisons got.
struct Lane {
    positions: Vec<usize>,
    /// Files hashed or asked for and not yet compared, at most.
    window: usize,
    /// The next file (index into `positions`) a hashing thread takes.
    next: std::sync::atomic::AtomicUsize,
    compared: std::sync::atomic::AtomicUsize,
}

impl Lane {
    fn new(files: &[ListedFile], belongs: impl Fn(&ListedFile) -> bool, window: usize) -> Self {
        Lane {
            positions: (0..files.len()).filter(|&p| belongs(&files[p])).collect(),
            window,
            next: Default::default(),
            compared: Default::default(),
        }
    }

    fn compared(&self) -> usize {
        self.compared.load(std::sync::atomic::Ordering::Acquire)
    }

    fn compared_one(&self) {
        self.compared
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether every file of the lane was compared.
    fn done(&self) -> bool {
        self.compared() == self.positions.len()
    }

    /// Waits until the lane is done; false if `stop` was set first.
    fn wait_done(&self, stop: &std::sync::atomic::AtomicBool) -> bool {
        wait_until(stop, || self.done())
    }

    /// The next file to hash, once it is within the window; `None` when the lane is done or
    /// `stop` is set.
    fn take(&self, stop: &std::sync::atomic::AtomicBool) -> Option<usize> {
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let position = *self.positions.get(k)?;
        wait_until(stop, || k < self.compared() + self.window).then_some(position)
    }
}

/// Waits until `ready` holds (true) or `stop` is set (false), looking every millisecond.
fn wait_until(stop: &std::sync::atomic::AtomicBool, ready: impl Fn() -> bool) -> bool {
    // Bounded by the verify's comparisons, which make `ready` hold, or end and set `stop`.
    loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `SyncMeta` that gives the passive's copy this size and metadata.
fn meta_op(path: Vec<u8>, st: &rfs::Stat, xattrs: understudy_oplog::Xattrs) -> Op {
    Op::SyncMeta {
        path,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: understudy_oplog::Timespec {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        xattrs,
    }
}

/// Asks the kernel to read the whole file in ahead of us.
pub(crate) fn prefetch(fd: &OwnedFd) {
    let _ = rfs::fadvise(fd, 0, None, rfs::Advice::WillNeed);
}

/// Records a listing as `SyncTree` parts of bounded size (the caller holds the order lock).
fn record_listing(queue: &SetQueue, id: u64, entries: &[TreeEntry]) {
    let mut first = 0usize;
    let mut part: Vec<TreeEntry> = Vec::new();
    let mut bytes = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let size = e.path.len()
            + e.target.len()
            + e.xattrs
                .iter()
                .map(|(n, v)| n.len() + v.len() + 8)
                .sum::<usize>()
            + 64;
        if !part.is_empty() && (part.len() >= MAX_TREE_ENTRIES || bytes + size > TREE_PART_BYTES) {
            queue.record_sync(Op::SyncTree {
                id,
                first_index: first as u32,
                entries: std::mem::take(&mut part),
                last: false,
            });
            first = i;
            bytes = 0;
        }
        bytes += size;
        part.push(e.clone());
    }
    queue.record_sync(Op::SyncTree {
        id,
        first_index: first as u32,
        entries: part,
        last: true,
    });
}

/// Appends up to `want` bytes read at `offset` to `data` (which has the capacity), without
/// initialising the buffer first; stops early at the end of the file.
fn pread_into(fd: &OwnedFd, data: &mut Vec<u8>, want: usize, offset: u64) -> Result<(), Errno> {
    while data.len() < want {
        let len = data.len();
        let at = offset + len as u64;
        let spare = &mut data.spare_capacity_mut()[..want - len];
        match rustix::io::pread(fd, spare, at) {
            Ok(([], _)) => break,
            Ok((filled, _)) => {
                let n = filled.len();
                // SAFETY: pread initialised the first `n` bytes of the spare capacity.
                unsafe { data.set_len(data.len() + n) };
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn pread_full(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// True if `[offset, offset + len)` of the file is one hole (reads as zeros, holds no data).
fn is_hole(fd: &OwnedFd, offset: u64, len: usize) -> bool {
    match rfs::seek(fd, SeekFrom::Data(offset)) {
        Ok(next_data) => next_data >= offset + len as u64,
        // No data at or after offset.
        Err(Errno::NXIO) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Drops the kernel's unused directory entries and inodes (what memory pressure or an
    /// operator's `drop_caches` may do at any moment during a sync).
    fn evict_dentries() {
        rustix::fs::sync();
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop dentries");
    }

    /// The bug this guards against: the initial-sync benchmark once finished "successfully"
    /// with 10,001 of 10,004 files sent without data, because files opened by handle after
    /// their dentries were evicted could not tell their names and were taken for deleted.
    #[test]
    fn a_listed_file_keeps_a_name_after_its_dentry_was_evicted() {
        if !understudy_testbed::require_root(
            "a_listed_file_keeps_a_name_after_its_dentry_was_evicted",
        ) {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), b"hello").expect("write");
        let root = rfs::open(
            dir.path(),
            rfs::OFlags::RDONLY | rfs::OFlags::DIRECTORY | rfs::OFlags::CLOEXEC,
            rfs::Mode::empty(),
        )
        .expect("open root");
        use std::os::fd::AsRawFd;
        let root_path = std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd()))
            .expect("root path")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let listing = walk::list(&root, None).expect("list");
        let index = listing
            .entries
            .iter()
            .position(|e| e.path == b"sub/f")
            .expect("listed") as u32;
        let handle = listing.files[&index].handle.clone().expect("a handle");

        // The mechanism: opened by handle after the eviction, a descriptor names the file
        // `/`, which is no name under the root.
        // (An entry another process holds a moment longer survives one eviction: a few tries.)
        let evicted = (0..5).any(|_| {
            evict_dentries();
            let raw = walk::open_handle(&root, &handle).expect("open by handle");
            walk::whereabouts(&raw, &root_path) == Whereabouts::Unknown
        });
        assert!(
            evicted,
            "a descriptor opened by handle after eviction still had a name"
        );

        // The fix: the listed name, checked to be the same inode, gives one that can.
        evict_dentries();
        let fd = open_listed(&root, &root_path, &handle, b"sub/f", None)
            .expect("open")
            .expect("not gone");
        assert_eq!(
            walk::whereabouts(&fd, &root_path),
            Whereabouts::Named(b"sub/f".to_vec())
        );
        drop(fd);

        // Renamed since the listing and evicted again: an error (the sync starts over),
        // never "gone".
        // (If the new entry survived the eviction, the descriptor knows the new name.)
        std::fs::rename(dir.path().join("sub/f"), dir.path().join("sub/g")).expect("rename");
        evict_dentries();
        match open_listed(&root, &root_path, &handle, b"sub/f", None) {
            Err(_) => {}
            Ok(Some(fd)) => assert_eq!(
                walk::whereabouts(&fd, &root_path),
                Whereabouts::Named(b"sub/g".to_vec())
            ),
            Ok(None) => panic!("a renamed file was taken for gone"),
        }

        // Really gone: nothing to send, and no error.
        std::fs::remove_file(dir.path().join("sub/g")).expect("unlink");
        evict_dentries();
        assert!(matches!(
            open_listed(&root, &root_path, &handle, b"sub/f", None),
            Ok(None)
        ));
    }
}
