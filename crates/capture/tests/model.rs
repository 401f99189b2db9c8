//! Seeded model-based test of capture and apply together: random operation sequences run
//! through a capture mount from several threads at once, on a small pool of shared names, while
//! a test journal applies every record, in sequence, to a replica directory with an
//! `understudy_apply::Applier`. Once the threads are done and every descriptor is closed, the
//! backing tree and the replica must be identical: the same entries, and for each its type,
//! mode, owner, group, link count, mtime to the nanosecond, size (except directories),
//! contents, symlink target and extended attributes. The root directory is compared too, and
//! the orphans directory must be empty again.
//!
//! The operations cover create/open/close, writes at random (and sparse) offsets, truncate and
//! ftruncate, fallocate (including punch hole and zero range), unlink, mkdir/rmdir, rename
//! (plain, `RENAME_NOREPLACE`, `RENAME_EXCHANGE`), renaming over an open file and unlinking an
//! open file and then writing (and chmod/chown/utimens/setxattr) through the old descriptor,
//! hard links, symlinks, FIFOs, chmod (with set-ID and sticky bits), chown to a few ids,
//! utimensat with nanoseconds (and `UTIME_NOW`), user xattrs, fsync/fdatasync (files and
//! directories), and the root directory's own attributes. Most of them fail at random
//! (ENOENT, EEXIST, ENOTEMPTY...): that is expected, only the final equality matters.
//!
//! Environment: `MODEL_SEED=<n>` runs only seed n; `MODEL_SEEDS=<n>` runs seeds 1..=n
//! (default 20); `MODEL_OPS=<n>` sets the operations per thread (default 300);
//! `MODEL_THREADS=<n>` the number of threads (default 3; 1 makes a replay exact, since with
//! several threads the interleaving differs from run to run); `MODEL_VERBOSE=1` prints every
//! record as it is applied.
//!
//! Needs root and /dev/fuse and skips otherwise, except under CI=true where it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{cpath, require_root};
use understudy_apply::Applier;
use understudy_capture::{mount, CaptureError, CaptureMount, CaptureOptions};
use understudy_oplog::{FileRef, Journal, Op, Record, Timespec};

/// Directories at the root, and the names used inside them: 12 shared file names.
const DIRS: [&str; 3] = ["d0", "d1", "d2"];
const NAMES: [&str; 4] = ["f0", "f1", "f2", "f3"];
/// Descriptors one thread keeps open at most.
const MAX_HELD: usize = 4;
/// How many recent records a failure report shows.
const RECENT: usize = 60;
/// A seed that makes no progress for this long is reported as a hang.
const SEED_TIMEOUT: Duration = Duration::from_secs(60);

// ---- configuration ------------------------------------------------------------------------

struct Config {
    seeds: Vec<u64>,
    ops: usize,
    threads: usize,
    verbose: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

impl Config {
    fn from_env() -> Config {
        let seeds = match env_u64("MODEL_SEED") {
            Some(seed) => vec![seed],
            None => (1..=env_u64("MODEL_SEEDS").unwrap_or(20)).collect(),
        };
        Config {
            seeds,
            ops: env_u64("MODEL_OPS").unwrap_or(300) as usize,
            threads: env_u64("MODEL_THREADS").unwrap_or(3).max(1) as usize,
            verbose: std::env::var("MODEL_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0"),
        }
    }
}

// ---- randomness ---------------------------------------------------------------------------

/// SplitMix64: tiny, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// The seed of thread `index` of a run.
fn thread_seed(seed: u64, index: usize) -> u64 {
    let mut r = Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
    r.next()
}

// ---- the replicating journal --------------------------------------------------------------

/// Applies every record to the replica as it is recorded (under the capture's order lock, so
/// in sequence order), and remembers what went wrong first.
struct ReplicaJournal {
    next_seq: AtomicU64,
    state: Mutex<ApplyState>,
    verbose: bool,
}

struct ApplyState {
    applier: Applier,
    last_seq: u64,
    records: u64,
    failure: Option<String>,
    /// Orphans announced and not yet dropped.
    open_orphans: BTreeSet<u64>,
    recent: VecDeque<String>,
    /// Records by kind, to show what a run covered.
    kinds: BTreeMap<&'static str, u64>,
}

impl ReplicaJournal {
    fn new(applier: Applier, verbose: bool) -> Arc<ReplicaJournal> {
        Arc::new(ReplicaJournal {
            next_seq: AtomicU64::new(0),
            state: Mutex::new(ApplyState {
                applier,
                last_seq: 0,
                records: 0,
                failure: None,
                open_orphans: BTreeSet::new(),
                recent: VecDeque::new(),
                kinds: BTreeMap::new(),
            }),
            verbose,
        })
    }

    fn state(&self) -> MutexGuard<'_, ApplyState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn show_ref(f: &FileRef) -> String {
    match f {
        FileRef::Path(p) if p.is_empty() => "<root>".into(),
        FileRef::Path(p) => p.escape_ascii().to_string(),
        FileRef::Orphan(id) => format!("<orphan {id}>"),
    }
}

fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// An op on one line, paths and names as text, write payloads by length.
fn show_op(op: &Op) -> String {
    match op {
        Op::Mknod {
            path,
            kind,
            mode,
            uid,
            gid,
            rdev,
        } => format!(
            "Mknod {} {kind:?} mode {mode:o} {uid}:{gid} rdev {rdev}",
            esc(path)
        ),
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => format!("Mkdir {} mode {mode:o} {uid}:{gid}", esc(path)),
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => format!("Symlink {} -> {} {uid}:{gid}", esc(path), esc(target)),
        Op::Link { existing, path } => format!("Link {} as {}", esc(existing), esc(path)),
        Op::Write { file, offset, data } => {
            format!("Write {} at {offset} len {}", show_ref(file), data.len())
        }
        Op::Truncate { file, size } => format!("Truncate {} to {size}", show_ref(file)),
        Op::Fallocate {
            file,
            mode,
            offset,
            len,
        } => format!(
            "Fallocate {} mode {mode:#x} at {offset} len {len}",
            show_ref(file)
        ),
        Op::Unlink { path, orphan } => format!("Unlink {} orphan {orphan:?}", esc(path)),
        Op::Rmdir { path } => format!("Rmdir {}", esc(path)),
        Op::Rename {
            from,
            to,
            flags,
            orphan,
        } => format!(
            "Rename {} -> {} flags {flags} orphan {orphan:?}",
            esc(from),
            esc(to)
        ),
        Op::SetAttr {
            file,
            mode,
            uid,
            gid,
            atime,
            mtime,
        } => format!(
            "SetAttr {} mode {:?} uid {uid:?} gid {gid:?} atime {:?} mtime {:?}",
            show_ref(file),
            mode.map(|m| format!("{m:o}")),
            atime.map(|t| format!("{}.{:09}", t.sec, t.nsec)),
            mtime.map(|t| format!("{}.{:09}", t.sec, t.nsec)),
        ),
        Op::SetXattr {
            file,
            name,
            value,
            flags,
        } => format!(
            "SetXattr {} {} len {} flags {flags}",
            show_ref(file),
            esc(name),
            value.len()
        ),
        Op::RemoveXattr { file, name } => {
            format!("RemoveXattr {} {}", show_ref(file), esc(name))
        }
        Op::Fsync { file, datasync } => format!("Fsync {} datasync {datasync}", show_ref(file)),
        Op::DropOrphan { orphan } => format!("DropOrphan {orphan}"),
        // Capture never records these (only the sync engine does).
        other => format!("{other:?}"),
    }
}

/// What kind of record, for the coverage summary (renames and orphans split out).
fn kind(op: &Op) -> &'static str {
    match op {
        Op::Mknod { kind, .. } if *kind == understudy_oplog::NodeKind::Regular => "create",
        Op::Mknod { .. } => "mknod-special",
        Op::Mkdir { .. } => "mkdir",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::Write {
            file: FileRef::Orphan(_),
            ..
        } => "write-orphan",
        Op::Write { .. } => "write",
        Op::Truncate { .. } => "truncate",
        Op::Fallocate { .. } => "fallocate",
        Op::Unlink {
            orphan: Some(_), ..
        } => "unlink-orphaning",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename {
            orphan: Some(_), ..
        } => "rename-orphaning",
        Op::Rename { flags, .. } if *flags == libc::RENAME_NOREPLACE => "rename-noreplace",
        Op::Rename { flags, .. } if *flags == libc::RENAME_EXCHANGE => "rename-exchange",
        Op::Rename { .. } => "rename",
        Op::SetAttr {
            file: FileRef::Path(p),
            ..
        } if p.is_empty() => "setattr-root",
        Op::SetAttr { .. } => "setattr",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::Fsync { .. } => "fsync",
        Op::DropOrphan { .. } => "drop-orphan",
        _ => "sync",
    }
}

/// A record on one line.
fn summary(r: &Record) -> String {
    let mtimes: Vec<String> = r
        .mtimes
        .iter()
        .map(|(f, t)| format!("{}={}.{:09}", show_ref(f), t.sec, t.nsec))
        .collect();
    format!(
        "#{} {} | mtimes {}",
        r.seq,
        show_op(&r.op),
        mtimes.join(" ")
    )
}

impl Journal for ReplicaJournal {
    fn record(&self, op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let record = Record { seq, op, mtimes };
        let shown = summary(&record);
        if self.verbose {
            eprintln!("{shown}");
        }
        let mut s = self.state();
        s.records += 1;
        *s.kinds.entry(kind(&record.op)).or_default() += 1;
        // Numbered outside our mutex: consecutive here only if capture's order lock really
        // serialises record() calls.
        if seq != s.last_seq + 1 && s.failure.is_none() {
            s.failure = Some(format!(
                "record {seq} arrived right after record {}: not in sequence order",
                s.last_seq
            ));
        }
        s.last_seq = s.last_seq.max(seq);
        match &record.op {
            Op::Unlink {
                orphan: Some(id), ..
            }
            | Op::Rename {
                orphan: Some(id), ..
            } => {
                s.open_orphans.insert(*id);
            }
            Op::DropOrphan { orphan } => {
                s.open_orphans.remove(orphan);
            }
            _ => {}
        }
        if s.failure.is_none() {
            let result = s.applier.apply(&record).and_then(|()| {
                if s.applier.sync_due() {
                    s.applier.sync()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                s.failure = Some(format!("apply failed: {e}\n    record: {shown}"));
            }
        }
        s.recent.push_back(shown);
        if s.recent.len() > RECENT {
            s.recent.pop_front();
        }
        seq
    }

    fn wait_durable(&self, _seq: u64) -> bool {
        true
    }
}

// ---- the mount ----------------------------------------------------------------------------

/// Unmounts when dropped (lazily if something is still open), so a panicking test never
/// leaves a mount behind.
struct Mounted {
    mount: Option<CaptureMount>,
    mnt: PathBuf,
    /// The FUSE connection number, to abort it if it outlives the unmount.
    conn: Option<String>,
}

impl Mounted {
    fn new(mount: CaptureMount) -> Mounted {
        let mnt = mount.mountpoint().to_path_buf();
        let conn = fuse_connection(&mnt);
        Mounted {
            mount: Some(mount),
            mnt,
            conn,
        }
    }

    /// Unmounts, retrying for a while if the kernel still holds the mount busy, and waits for
    /// the FUSE session to end.
    ///
    /// The session ends when the kernel tears the connection down, which it does only when
    /// the last copy of the mount is gone: a mount namespace created meanwhile from a private
    /// `/` (`ip netns exec`, `unshare -m`, as other tests on the machine may run) holds a
    /// copy that our unmount does not reach, and pins the connection for as long as it
    /// lives. If the mount is gone here and the session still runs after a moment, the
    /// connection is aborted (every record is in by then) and a note says so.
    fn unmount(&mut self) -> Result<Option<String>, String> {
        let Some(mut m) = self.mount.take() else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let result = loop {
                match m.unmount() {
                    Ok(()) => break Ok(()),
                    Err(CaptureError::Busy(again)) if Instant::now() < deadline => {
                        m = again;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    // A mount still busy is detached lazily as the error drops.
                    Err(e) => break Err(format!("unmount: {e}")),
                }
            };
            let _ = tx.send(result);
        });
        let start = Instant::now();
        let mut note = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(result) => return result.map(|()| note),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the unmounting thread panicked".into())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let pinned = note.is_none()
                        && start.elapsed() > Duration::from_secs(2)
                        && fuse_connection(&self.mnt).is_none();
                    if let (true, Some(conn)) = (pinned, &self.conn) {
                        abort_fuse_connection(conn)?;
                        note = Some(format!(
                            "FUSE connection {conn} outlived the unmount (a copy of the mount \
                             in another mount namespace pins it); aborted it"
                        ));
                    }
                }
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("model: {e}");
        }
    }
}

/// Aborts a FUSE connection: every pending and future request fails with ENOTCONN and the
/// session ends. Mounts the fusectl filesystem at its usual place if it is not there.
fn abort_fuse_connection(conn: &str) -> Result<(), String> {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(conn).exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(dir)
            .status();
    }
    std::fs::write(dir.join(conn).join("abort"), "1")
        .map_err(|e| format!("aborting FUSE connection {conn}: {e}"))
}

/// Where a seed is, for the hang report.
#[derive(Default)]
struct Progress {
    stage: Mutex<&'static str>,
    hung: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn set(&self, stage: &'static str) {
        *self
            .stage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
    }

    fn stage(&self) -> &'static str {
        *self
            .stage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The FUSE connection number of the mount at `mnt` (its device minor), from mountinfo: no
/// request to the filesystem, which may be the thing that hangs.
fn fuse_connection(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mnt.canonicalize().ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && Path::new(f[4]) == mnt)
            .then(|| f[2].split(':').nth(1).map(str::to_owned))
            .flatten()
    })
}

/// Writes straight to the process's stderr: the test harness does not capture it, and it
/// still shows if the run ends badly.
fn to_stderr(text: &str) {
    use std::io::Write;
    let _ = io::stderr().write_all(text.as_bytes());
}

/// What every thread of this process is blocked on (kernel stacks), for a hang report.
fn thread_stacks() -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stack: Vec<String> = read("stack")
            .lines()
            .take(6)
            .map(|l| l.split(' ').nth(1).unwrap_or(l).to_owned())
            .collect();
        out.push_str(&format!(
            "  {} {}: {}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            stack.join(" < ")
        ));
    }
    out
}

/// Guards a seed against hanging: a deadlocked FUSE request would otherwise hang `cargo test`
/// forever (and a process that exits while it is both the FUSE client and the server can
/// wedge in exit). After `SEED_TIMEOUT` it reports the threads' kernel stacks and the last
/// records, then aborts the FUSE connection, which fails every pending request with ENOTCONN
/// so the seed runs to its end and fails. Returns the sender that says the seed finished.
fn watchdog(
    seed: u64,
    mnt: &Path,
    journal: Arc<ReplicaJournal>,
    progress: Arc<Progress>,
) -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    let conn = fuse_connection(mnt);
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(SEED_TIMEOUT) {
            progress.hung.store(true, Ordering::SeqCst);
            let mut report = format!(
                "model seed {seed}: still running after {SEED_TIMEOUT:?}, while {}: hang or \
                 deadlock; replay with MODEL_SEED={seed}\nthreads:\n{}",
                progress.stage(),
                thread_stacks()
            );
            if let Ok(s) = journal.state.try_lock() {
                report.push_str("last records:\n");
                for r in &s.recent {
                    report.push_str(&format!("  {r}\n"));
                }
            }
            to_stderr(&report);
            match conn {
                Some(conn) => {
                    if let Err(e) = abort_fuse_connection(&conn) {
                        to_stderr(&format!("model: {e}\n"));
                    }
                }
                None => to_stderr("model: FUSE connection unknown, cannot abort it\n"),
            }
        }
    });
    done
}

// ---- the random workload ------------------------------------------------------------------

/// A descriptor a worker keeps open, and the name it was opened by (which other threads may
/// since have renamed or removed).
struct Held {
    file: File,
    rel: String,
}

struct Worker<'a> {
    mnt: &'a Path,
    rng: Rng,
    held: Vec<Held>,
    tag: u8,
    writes: u32,
}

/// Modes for new files and chmod: ordinary ones, none at all, and set-ID / sticky bits.
const MODES: [u32; 9] = [
    0o644, 0o600, 0o755, 0o640, 0o000, 0o444, 0o4755, 0o2775, 0o1777,
];
const UIDS: [u32; 4] = [0, 1000, 1001, 65534];
const GIDS: [u32; 4] = [0, 100, 1000, 65534];
/// `trusted.*` too: root may set those on symlinks and special files, where `user.*` is
/// refused.
const XATTRS: [&str; 4] = ["user.a", "user.b", "user.model.c", "trusted.model"];

/// Opens read-only without blocking: the name may be a FIFO with no writer.
fn open_nonblocking(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
}

fn ignore(_r: libc::c_int) {}

fn ignore_size(_r: isize) {}

impl<'a> Worker<'a> {
    fn new(mnt: &'a Path, seed: u64, tag: u8) -> Worker<'a> {
        Worker {
            mnt,
            rng: Rng::new(seed),
            held: Vec::new(),
            tag,
            writes: 0,
        }
    }

    fn c(&self, rel: &str) -> CString {
        cpath(&self.mnt.join(rel))
    }

    fn file_path(&mut self) -> String {
        format!("{}/{}", self.rng.pick(&DIRS), self.rng.pick(&NAMES))
    }

    /// Mostly a file name of the pool, sometimes one of the directories.
    fn any_path(&mut self) -> String {
        if self.rng.chance(15) {
            self.rng.pick(&DIRS).to_string()
        } else {
            self.file_path()
        }
    }

    fn dir_path(&mut self) -> String {
        match self.rng.below(10) {
            0 => String::new(),
            1..=6 => self.rng.pick(&DIRS).to_string(),
            _ => self.file_path(),
        }
    }

    fn data(&mut self) -> Vec<u8> {
        let len = match self.rng.below(100) {
            0..=69 => self.rng.range(1, 512),
            70..=94 => self.rng.range(512, 8192),
            _ => self.rng.range(8192, 70_000),
        } as usize;
        self.writes += 1;
        let mut data = vec![self.rng.next() as u8; len];
        let stamp = [
            self.tag,
            (self.writes >> 8) as u8,
            self.writes as u8,
            self.rng.next() as u8,
        ];
        let n = stamp.len().min(len);
        data[..n].copy_from_slice(&stamp[..n]);
        if len > 8 {
            let at = self.rng.below(len as u64) as usize;
            data[at] = self.rng.next() as u8;
        }
        data
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=59 => self.rng.below(16 << 10),
            60..=84 => self.rng.below(128 << 10),
            // Sparse: far beyond anything written so far.
            _ => self.rng.range(128 << 10, 2 << 20),
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=1 => 0,
            2..=7 => self.rng.below(32 << 10),
            _ => self.rng.below(1 << 20),
        }
    }

    fn time(&mut self) -> libc::timespec {
        match self.rng.below(10) {
            0..=1 => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            2..=3 => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            _ => libc::timespec {
                tv_sec: self.rng.range(1, 2_000_000_000) as i64,
                tv_nsec: self.rng.below(1_000_000_000) as i64,
            },
        }
    }

    fn pick_held(&mut self) -> Option<usize> {
        if self.held.is_empty() {
            None
        } else {
            Some(self.rng.below(self.held.len() as u64) as usize)
        }
    }

    fn hold(&mut self, fd: libc::c_int, rel: String) {
        if fd < 0 {
            return;
        }
        if self.held.len() >= MAX_HELD {
            let i = self.rng.below(self.held.len() as u64) as usize;
            self.held.swap_remove(i);
        }
        // SAFETY: a descriptor we just opened and own.
        let file = unsafe { File::from_raw_fd(fd) };
        self.held.push(Held { file, rel });
    }

    fn run(&mut self, ops: usize) {
        for _ in 0..ops {
            self.step();
        }
        self.held.clear();
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=7 => self.create(),
            8..=11 => self.open_existing(),
            12..=16 => self.close(),
            17..=30 => self.write(),
            31..=33 => self.ftruncate(),
            34..=35 => self.truncate(),
            36..=39 => self.fallocate(),
            40..=42 => self.fsync(),
            43..=47 => self.unlink(),
            48..=51 => self.mkdir(),
            52..=54 => self.rmdir(),
            55..=62 => self.rename(),
            63..=65 => self.rename_over_open(),
            66..=68 => self.unlink_open(),
            69..=71 => self.link(),
            72..=74 => self.symlink(),
            75 => self.mknod_special(),
            76..=79 => self.chmod(),
            80..=82 => self.chown(),
            83..=86 => self.utimens(),
            87..=90 => self.setxattr(),
            91..=92 => self.removexattr(),
            93 => self.root_attrs(),
            94..=95 => self.lookup(),
            96 => self.reopen(),
            97 => self.copy_range(),
            _ => self.read(),
        }
    }

    // -- files and descriptors --

    fn create(&mut self) {
        let rel = self.file_path();
        let mut flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NONBLOCK;
        if self.rng.chance(20) {
            flags |= libc::O_EXCL;
        }
        if self.rng.chance(20) {
            flags |= libc::O_TRUNC;
        }
        if self.rng.chance(15) {
            flags |= libc::O_APPEND;
        }
        if self.rng.chance(5) {
            flags |= libc::O_DSYNC;
        }
        let mode = self.rng.pick(&MODES);
        let c = self.c(&rel);
        // SAFETY: valid path; the descriptor is owned by `hold`.
        let fd = unsafe { libc::open(c.as_ptr(), flags, mode) };
        if fd >= 0 && self.rng.chance(60) {
            let data = self.data();
            // SAFETY: valid descriptor and buffer.
            ignore_size(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) });
        }
        self.hold(fd, rel);
    }

    fn open_existing(&mut self) {
        let rel = self.file_path();
        let mut flags = match self.rng.below(10) {
            0..=5 => libc::O_RDWR,
            6..=8 => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        } | libc::O_CLOEXEC
            | libc::O_NONBLOCK;
        if self.rng.chance(15) {
            flags |= libc::O_APPEND;
        }
        let c = self.c(&rel);
        // SAFETY: valid path.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        self.hold(fd, rel);
    }

    fn close(&mut self) {
        if let Some(i) = self.pick_held() {
            self.held.swap_remove(i);
        }
    }

    /// Writes through a held descriptor at a random offset (or appends).
    fn write_held(&mut self, i: usize) {
        let data = self.data();
        let fd = self.held[i].file.as_raw_fd();
        // SAFETY: valid descriptor and buffer.
        if self.rng.chance(20) {
            ignore_size(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) });
        } else {
            let off = self.offset() as libc::off_t;
            ignore_size(unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) });
        }
    }

    fn write(&mut self) {
        if let Some(i) = self.pick_held() {
            self.write_held(i);
        } else {
            self.create();
        }
    }

    fn ftruncate(&mut self) {
        if let Some(i) = self.pick_held() {
            let size = self.size() as libc::off_t;
            // SAFETY: valid descriptor.
            ignore(unsafe { libc::ftruncate(self.held[i].file.as_raw_fd(), size) });
        }
    }

    fn truncate(&mut self) {
        let rel = self.file_path();
        let size = self.size() as libc::off_t;
        let c = self.c(&rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::truncate(c.as_ptr(), size) });
    }

    fn fallocate(&mut self) {
        let Some(i) = self.pick_held() else { return };
        let mode = self.rng.pick(&[
            0,
            libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            libc::FALLOC_FL_ZERO_RANGE,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ]);
        let off = if self.rng.chance(80) {
            self.rng.below(64 << 10)
        } else {
            self.rng.below(1 << 20)
        } as libc::off_t;
        let len = self.rng.range(1, 32 << 10) as libc::off_t;
        // SAFETY: valid descriptor.
        ignore(unsafe { libc::fallocate(self.held[i].file.as_raw_fd(), mode, off, len) });
    }

    fn fsync(&mut self) {
        let datasync = self.rng.chance(50);
        match self.pick_held() {
            Some(i) if self.rng.chance(75) => {
                let fd = self.held[i].file.as_raw_fd();
                // SAFETY: valid descriptor.
                ignore(unsafe {
                    if datasync {
                        libc::fdatasync(fd)
                    } else {
                        libc::fsync(fd)
                    }
                });
            }
            _ => {
                // A directory: fsyncdir.
                let rel = self.dir_path();
                if let Ok(d) = open_nonblocking(&self.mnt.join(&rel)) {
                    let _ = if datasync {
                        d.sync_data()
                    } else {
                        d.sync_all()
                    };
                }
            }
        }
    }

    // -- names --

    fn unlink(&mut self) {
        let rel = self.any_path();
        let c = self.c(&rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::unlink(c.as_ptr()) });
    }

    fn mkdir(&mut self) {
        let rel = if self.rng.chance(50) {
            self.rng.pick(&DIRS).to_string()
        } else {
            self.file_path()
        };
        let mode = self.rng.pick(&[0o755, 0o700, 0o2775, 0o1777, 0o750]);
        let c = self.c(&rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::mkdir(c.as_ptr(), mode) });
    }

    fn rmdir(&mut self) {
        let rel = self.any_path();
        let c = self.c(&rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::rmdir(c.as_ptr()) });
    }

    fn renameat2(&self, from: &str, to: &str, flags: libc::c_uint) {
        let (f, t) = (self.c(from), self.c(to));
        // SAFETY: valid paths.
        ignore(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                flags,
            )
        });
    }

    fn rename(&mut self) {
        let from = self.any_path();
        let to = self.any_path();
        let flags = match self.rng.below(50) {
            0..=29 => 0,
            30..=39 => libc::RENAME_NOREPLACE,
            40..=48 => libc::RENAME_EXCHANGE,
            // What overlayfs does on its upper layer: leaves a whiteout (a 0:0 character
            // device) where the source was.
            _ => libc::RENAME_WHITEOUT,
        };
        self.renameat2(&from, &to, flags);
    }

    /// Renames another name over the one a held descriptor was opened by, then keeps using
    /// the descriptor (the replaced inode is now an orphan, unless it has other names).
    fn rename_over_open(&mut self) {
        let Some(i) = self.pick_held() else {
            return self.create();
        };
        let from = self.file_path();
        let to = self.held[i].rel.clone();
        self.renameat2(&from, &to, 0);
        self.use_held(i);
    }

    /// Unlinks the name a held descriptor was opened by, then keeps using the descriptor.
    fn unlink_open(&mut self) {
        let Some(i) = self.pick_held() else {
            return self.create();
        };
        let c = self.c(&self.held[i].rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::unlink(c.as_ptr()) });
        self.use_held(i);
    }

    /// A few ops through a descriptor whose name may be gone.
    fn use_held(&mut self, i: usize) {
        for _ in 0..self.rng.range(1, 4) {
            let fd = self.held[i].file.as_raw_fd();
            match self.rng.below(10) {
                0..=4 => self.write_held(i),
                5 => {
                    let size = self.size() as libc::off_t;
                    // SAFETY: valid descriptor.
                    ignore(unsafe { libc::ftruncate(fd, size) });
                }
                6 => {
                    let mode = self.rng.pick(&MODES);
                    // SAFETY: valid descriptor.
                    ignore(unsafe { libc::fchmod(fd, mode) });
                }
                7 => {
                    let times = [self.time(), self.time()];
                    // SAFETY: valid descriptor and two timespecs.
                    ignore(unsafe { libc::futimens(fd, times.as_ptr()) });
                }
                8 => {
                    let name = CString::new(self.rng.pick(&XATTRS)).expect("name");
                    let value = self.data();
                    let value = &value[..value.len().min(64)];
                    // SAFETY: valid descriptor, name and buffer.
                    ignore(unsafe {
                        libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
                    });
                }
                _ => {
                    // SAFETY: valid descriptor.
                    ignore(unsafe { libc::fdatasync(fd) });
                }
            }
        }
    }

    fn link(&mut self) {
        let existing = self.file_path();
        let new = self.file_path();
        let (e, n) = (self.c(&existing), self.c(&new));
        // SAFETY: valid paths.
        ignore(unsafe { libc::link(e.as_ptr(), n.as_ptr()) });
    }

    fn symlink(&mut self) {
        let target = match self.rng.below(4) {
            0 => self.rng.pick(&NAMES).to_string(),
            1 => format!("../{}", self.file_path()),
            2 => format!("../{}", self.rng.pick(&DIRS)),
            _ => format!("dangling-{}", self.rng.below(100)),
        };
        let rel = self.file_path();
        let (t, p) = (CString::new(target).expect("target"), self.c(&rel));
        // SAFETY: valid strings.
        ignore(unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) });
    }

    /// A FIFO, a socket node or a character device (1:3, like /dev/null: harmless to open).
    fn mknod_special(&mut self) {
        let rel = self.file_path();
        let perm = self.rng.pick(&[0o644, 0o600, 0o666]);
        let (kind, dev) = match self.rng.below(4) {
            0..=1 => (libc::S_IFIFO, 0),
            2 => (libc::S_IFSOCK, 0),
            _ => (libc::S_IFCHR, libc::makedev(1, 3)),
        };
        let c = self.c(&rel);
        // SAFETY: valid path.
        ignore(unsafe { libc::mknod(c.as_ptr(), kind | perm, dev) });
    }

    /// Opens a held file again through /proc/self/fd (which reaches it even with no name
    /// left), as a second handle on the same inode.
    fn reopen(&mut self) {
        let Some(i) = self.pick_held() else { return };
        let proc = format!("/proc/self/fd/{}", self.held[i].file.as_raw_fd());
        let rel = self.held[i].rel.clone();
        let c = CString::new(proc).expect("path");
        // O_NONBLOCK like every other open here: the name may be a FIFO, and a write to a full
        // FIFO nobody reads would block the worker forever (seed 116 of 300 did).
        // SAFETY: valid path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        self.hold(fd, rel);
    }

    /// copy_file_range between two held files (the kernel falls back to reads and writes
    /// through FUSE if the filesystem has no copy_file_range of its own).
    fn copy_range(&mut self) {
        let (Some(a), Some(b)) = (self.pick_held(), self.pick_held()) else {
            return;
        };
        let (fa, fb) = (self.held[a].file.as_raw_fd(), self.held[b].file.as_raw_fd());
        let mut off_in = self.rng.below(64 << 10) as libc::off64_t;
        let mut off_out = self.offset() as libc::off64_t;
        let len = self.rng.range(1, 64 << 10) as usize;
        // SAFETY: valid descriptors and offsets.
        ignore_size(unsafe { libc::copy_file_range(fa, &mut off_in, fb, &mut off_out, len, 0) });
    }

    // -- attributes --

    fn chmod(&mut self) {
        let mode = self.rng.pick(&MODES);
        match self.pick_held() {
            Some(i) if self.rng.chance(30) => {
                // SAFETY: valid descriptor.
                ignore(unsafe { libc::fchmod(self.held[i].file.as_raw_fd(), mode) });
            }
            _ => {
                let rel = self.any_path();
                let c = self.c(&rel);
                // SAFETY: valid path.
                ignore(unsafe { libc::chmod(c.as_ptr(), mode) });
            }
        }
    }

    fn chown(&mut self) {
        // u32::MAX leaves one of the two unchanged.
        let uid = if self.rng.chance(25) {
            u32::MAX
        } else {
            self.rng.pick(&UIDS)
        };
        let gid = if self.rng.chance(25) {
            u32::MAX
        } else {
            self.rng.pick(&GIDS)
        };
        match self.pick_held() {
            Some(i) if self.rng.chance(30) => {
                // SAFETY: valid descriptor.
                ignore(unsafe { libc::fchown(self.held[i].file.as_raw_fd(), uid, gid) });
            }
            _ => {
                let rel = self.any_path();
                let c = self.c(&rel);
                // SAFETY: valid path.
                ignore(unsafe {
                    if self.rng.chance(50) {
                        libc::lchown(c.as_ptr(), uid, gid)
                    } else {
                        libc::chown(c.as_ptr(), uid, gid)
                    }
                });
            }
        }
    }

    fn utimens(&mut self) {
        let times = [self.time(), self.time()];
        match self.pick_held() {
            Some(i) if self.rng.chance(30) => {
                // SAFETY: valid descriptor and two timespecs.
                ignore(unsafe { libc::futimens(self.held[i].file.as_raw_fd(), times.as_ptr()) });
            }
            _ => {
                let rel = self.any_path();
                let flags = if self.rng.chance(50) {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                let c = self.c(&rel);
                // SAFETY: valid path and two timespecs.
                ignore(unsafe {
                    libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags)
                });
            }
        }
    }

    fn setxattr(&mut self) {
        let name = CString::new(self.rng.pick(&XATTRS)).expect("name");
        let mut value = self.data();
        value.truncate(self.rng.below(100) as usize);
        let flags = self
            .rng
            .pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]);
        match self.pick_held() {
            Some(i) if self.rng.chance(30) => {
                // SAFETY: valid descriptor, name and buffer.
                ignore(unsafe {
                    libc::fsetxattr(
                        self.held[i].file.as_raw_fd(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                });
            }
            _ => {
                let rel = self.any_path();
                let c = self.c(&rel);
                // SAFETY: valid path, name and buffer.
                ignore(unsafe {
                    if self.rng.chance(50) {
                        libc::lsetxattr(
                            c.as_ptr(),
                            name.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            flags,
                        )
                    } else {
                        libc::setxattr(
                            c.as_ptr(),
                            name.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            flags,
                        )
                    }
                });
            }
        }
    }

    fn removexattr(&mut self) {
        let name = CString::new(self.rng.pick(&XATTRS)).expect("name");
        match self.pick_held() {
            Some(i) if self.rng.chance(30) => {
                // SAFETY: valid descriptor and name.
                ignore(unsafe { libc::fremovexattr(self.held[i].file.as_raw_fd(), name.as_ptr()) });
            }
            _ => {
                let rel = self.any_path();
                let c = self.c(&rel);
                // SAFETY: valid path and name.
                ignore(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) });
            }
        }
    }

    /// The root directory's own attributes: mode, times, xattrs, fsync.
    fn root_attrs(&mut self) {
        let c = self.c("");
        match self.rng.below(5) {
            0 => {
                let mode = self.rng.pick(&[0o755, 0o775, 0o2755, 0o1777]);
                // SAFETY: valid path.
                ignore(unsafe { libc::chmod(c.as_ptr(), mode) });
            }
            1 => {
                let times = [self.time(), self.time()];
                // SAFETY: valid path and two timespecs.
                ignore(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) });
            }
            2 => {
                let name = CString::new(self.rng.pick(&XATTRS)).expect("name");
                let value = [self.tag, self.rng.next() as u8];
                // SAFETY: valid path, name and buffer.
                ignore(unsafe {
                    libc::setxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 2, 0)
                });
            }
            3 => {
                let name = CString::new(self.rng.pick(&XATTRS)).expect("name");
                // SAFETY: valid path and name.
                ignore(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) });
            }
            _ => {
                if let Ok(d) = File::open(self.mnt) {
                    let _ = d.sync_all();
                }
            }
        }
    }

    // -- reads (they change nothing, but move the kernel's caches and the inode table) --

    fn lookup(&mut self) {
        if self.rng.chance(50) {
            let _ = std::fs::symlink_metadata(self.mnt.join(self.any_path()));
        } else if let Ok(rd) = std::fs::read_dir(self.mnt.join(self.dir_path())) {
            for e in rd.flatten() {
                let _ = e.metadata();
            }
        }
    }

    fn read(&mut self) {
        if let Some(i) = self.pick_held() {
            let mut buf = vec![0u8; 4096];
            let off = self.offset() as libc::off_t;
            // SAFETY: valid descriptor and buffer.
            ignore_size(unsafe {
                libc::pread(
                    self.held[i].file.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    off,
                )
            });
        } else if let Ok(mut f) = open_nonblocking(&self.mnt.join(self.file_path())) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
        }
    }
}

// ---- comparing the trees ------------------------------------------------------------------

#[derive(PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    /// Not compared for directories (their sizes depend on history, not content).
    size: Option<u64>,
    mtime: (i64, i64),
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} mode {:o} {}:{} nlink {} size {:?} mtime {}.{:09}",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.size,
            self.mtime.0,
            self.mtime.1
        )?;
        if let Some(t) = &self.target {
            write!(f, " -> {}", esc(t))?;
        }
        for (name, value) in &self.xattrs {
            write!(f, " {}={}", esc(name), esc(value))?;
        }
        Ok(())
    }
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "blockdev"
    }
}

/// The extended attributes of `path` itself (not following a symlink).
fn xattrs(path: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = cpath(path);
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("no NUL in a listed name");
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: valid path, name and buffer.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(n as usize);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn meta(path: &Path) -> io::Result<Meta> {
    let md = std::fs::symlink_metadata(path)?;
    let kind = kind_name(md.file_type());
    let target = if md.file_type().is_symlink() {
        Some(std::fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    } else {
        None
    };
    Ok(Meta {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: (!md.is_dir()).then_some(md.len()),
        mtime: (md.mtime(), md.mtime_nsec()),
        target,
        xattrs: xattrs(path)?,
    })
}

/// Every entry under `root`, by relative path (the root itself is the empty path).
fn walk(root: &Path) -> io::Result<BTreeMap<PathBuf, Meta>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let m = meta(&full)?;
        if m.kind == "dir" {
            for e in std::fs::read_dir(&full)? {
                stack.push(rel.join(e?.file_name()));
            }
        }
        out.insert(rel, m);
    }
    Ok(out)
}

/// Where two regular files' contents first differ, if they do.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if ba[..na] != bb[..nb] {
            let i = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Ok(Some(at + i as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        at += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn show_path(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        "<root>".into()
    } else {
        p.display().to_string()
    }
}

/// Every difference between the backing tree and the replica, one line each.
fn compare(backing: &Path, replica: &Path) -> Vec<String> {
    let (b, r) = match (walk(backing), walk(replica)) {
        (Ok(b), Ok(r)) => (b, r),
        (b, r) => {
            return vec![format!(
                "cannot walk the trees: backing {:?}, replica {:?}",
                b.err(),
                r.err()
            )]
        }
    };
    let mut diffs = Vec::new();
    let paths: BTreeSet<&PathBuf> = b.keys().chain(r.keys()).collect();
    for p in paths {
        let shown = show_path(p);
        match (b.get(p), r.get(p)) {
            (Some(mb), None) => diffs.push(format!("{shown}: only in backing: {mb:?}")),
            (None, Some(mr)) => diffs.push(format!("{shown}: only in replica: {mr:?}")),
            (Some(mb), Some(mr)) => {
                if mb != mr {
                    diffs.push(format!(
                        "{shown}: metadata differs\n      backing {mb:?}\n      replica {mr:?}"
                    ));
                }
                if mb.kind == "file" && mr.kind == "file" {
                    match first_difference(&backing.join(p), &replica.join(p)) {
                        Ok(None) => {}
                        Ok(Some(at)) => {
                            diffs.push(format!("{shown}: contents differ from offset {at}"))
                        }
                        Err(e) => diffs.push(format!("{shown}: cannot compare contents: {e}")),
                    }
                }
            }
            (None, None) => unreachable!(),
        }
    }
    diffs
}

// ---- one seed -----------------------------------------------------------------------------

struct Outcome {
    records: u64,
    kinds: BTreeMap<&'static str, u64>,
    elapsed: Duration,
}

fn run_seed(seed: u64, cfg: &Config) -> Result<Outcome, String> {
    let start = Instant::now();
    let base = tempfile::Builder::new()
        .prefix("capture-model")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let [backing, mnt, replica, orphans] =
        ["backing", "mnt", "replica", "orphans"].map(|d| base.path().join(d));
    for d in [&backing, &mnt, &replica, &orphans] {
        std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    // The two roots start equal: same mode and owner (created alike), same mtime.
    let root_mtime = std::fs::metadata(&backing)
        .map_err(|e| format!("stat backing: {e}"))?
        .modified()
        .map_err(|e| format!("mtime: {e}"))?;
    File::open(&replica)
        .and_then(|f| f.set_modified(root_mtime))
        .map_err(|e| format!("set replica root mtime: {e}"))?;

    let applier =
        Applier::open(&replica, &orphans).map_err(|e| format!("opening the applier: {e}"))?;
    let journal = ReplicaJournal::new(applier, cfg.verbose);
    let opts = CaptureOptions {
        threads: 4,
        fsname: format!("model-{seed}"),
    };
    let mut mounted = Mounted::new(
        mount(&backing, &mnt, journal.clone(), opts).map_err(|e| format!("mount: {e}"))?,
    );
    let progress = Arc::new(Progress::default());
    progress.set("running the operations");
    let done = watchdog(seed, &mnt, journal.clone(), progress.clone());

    for d in DIRS {
        std::fs::create_dir(mnt.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    std::thread::scope(|s| {
        for t in 0..cfg.threads {
            let mnt = &mnt;
            s.spawn(move || Worker::new(mnt, thread_seed(seed, t), t as u8).run(cfg.ops));
        }
    });

    // Every descriptor is closed; the kernel sends the releases (and so the DropOrphans)
    // asynchronously. Give them a moment before unmounting.
    progress.set("waiting for the last orphans to be dropped");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !journal.state().open_orphans.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    progress.set("unmounting");
    let unmounted = mounted.unmount();
    let _ = done.send(());

    let mut s = journal.state();
    let mut problems = Vec::new();
    if progress.hung.load(Ordering::SeqCst) {
        problems.push(format!(
            "hang: the seed ran past {SEED_TIMEOUT:?} (threads and records printed above)"
        ));
    }
    match unmounted {
        Ok(Some(note)) => eprintln!("model seed {seed}: note: {note}"),
        Ok(None) => {}
        Err(e) => problems.push(e),
    }
    if let Some(f) = &s.failure {
        problems.push(f.clone());
    }
    if let Err(e) = s.applier.sync() {
        problems.push(format!("final sync: {e}"));
    }
    if !s.open_orphans.is_empty() {
        problems.push(format!(
            "orphans never dropped after every descriptor closed: {:?}",
            s.open_orphans
        ));
    }
    match std::fs::read_dir(&orphans) {
        Ok(rd) => {
            let left: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !left.is_empty() {
                problems.push(format!("orphans directory not empty: {left:?}"));
            }
        }
        Err(e) => problems.push(format!("reading the orphans directory: {e}")),
    }
    if s.failure.is_none() {
        problems.extend(compare(&backing, &replica));
    } else {
        problems.push("(trees not compared: the replica stopped at the failed record)".into());
    }
    if problems.is_empty() {
        return Ok(Outcome {
            records: s.records,
            kinds: std::mem::take(&mut s.kinds),
            elapsed: start.elapsed(),
        });
    }
    let mut report = format!(
        "model seed {seed} ({} threads x {} ops, {} records): the replica does not match:\n",
        cfg.threads, cfg.ops, s.records
    );
    for p in problems.iter().take(40) {
        report.push_str(&format!("  {p}\n"));
    }
    if problems.len() > 40 {
        report.push_str(&format!("  ... and {} more\n", problems.len() - 40));
    }
    report.push_str("last records:\n");
    for r in &s.recent {
        report.push_str(&format!("  {r}\n"));
    }
    report.push_str(&format!(
        "replay with MODEL_SEED={seed} (add MODEL_THREADS=1 for an exact replay of one \
         thread's sequence, MODEL_VERBOSE=1 to see every record)"
    ));
    Err(report)
}

#[test]
fn replica_matches_backing_after_random_concurrent_operations() {
    if !require_root("replica_matches_backing_after_random_concurrent_operations") {
        return;
    }
    let cfg = Config::from_env();
    let start = Instant::now();
    let mut records = 0;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for &seed in &cfg.seeds {
        match run_seed(seed, &cfg) {
            Ok(o) => {
                records += o.records;
                for (k, n) in o.kinds {
                    *kinds.entry(k).or_default() += n;
                }
                eprintln!(
                    "model seed {seed}: {} records, replica matches ({:.1?})",
                    o.records, o.elapsed
                );
            }
            Err(report) => {
                eprintln!("{report}");
                panic!("model seed {seed} failed; replay with MODEL_SEED={seed}");
            }
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!(
        "model: {} seeds, {records} records, all replicas matched ({:.1?}); records by kind: \
         {}",
        cfg.seeds.len(),
        start.elapsed(),
        kinds.join(", ")
    );
}
