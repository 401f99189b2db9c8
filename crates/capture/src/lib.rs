//! `understudy-capture`: the write-intercepting passthrough filesystem on the active node.
//!
//! [`mount`] puts a FUSE filesystem at a mount point (usually *over* the backing directory
//! itself, so applications keep their paths) that performs every operation on the backing
//! directory and records each mutating one in a [`Journal`] as an
//! [`understudy_oplog::Op`], with the modification times it left behind. The journal's
//! sequence numbers follow the order in which the changes took effect: one order lock is held
//! across each mutating syscall and its `Journal::record` call. Reads never take it.
//!
//! What is recorded: create/mknod (`Op::Mknod`), mkdir, symlink, link, write, truncate,
//! fallocate, unlink, rmdir, rename (including `RENAME_NOREPLACE` and `RENAME_EXCHANGE`),
//! chmod/chown/utimens (`Op::SetAttr`), setxattr/removexattr, and fsync/fdatasync/fsyncdir
//! (`Op::Fsync`), plus `Op::DropOrphan`. Paths are relative to the backing root, without a
//! leading `/`; **the root directory itself is the empty path**.
//!
//! Durability: fsync, fdatasync and fsyncdir flush locally, record an `Op::Fsync`, and reply
//! only after `Journal::wait_durable` returned for it. The kernel follows every write on an
//! `O_SYNC`/`O_DSYNC` handle (and every `RWF_DSYNC` write) with such an fsync before the
//! write(2) returns, so those writes are barriers too.
//!
//! Open files whose last name goes away (unlink, or rename over it) become *orphans*: the
//! removing op carries a fresh orphan id, later ops name the inode `FileRef::Orphan(id)`, and
//! `Op::DropOrphan` follows when the last handle closes. "Last name" means the last name this
//! mount knows; an inode can still have other hard links that were never looked up, so the
//! passive must park an orphan by keeping a reference to the inode, not assume it is free.
//!
//! Reads: read-only opens may use the kernel's FUSE passthrough, so reads go straight to the
//! backing file without a round trip through this process (see [`ReadPassthrough`] for the
//! policy and its one sharp edge). Everything else, and every writable open, goes through
//! FUSE with the page cache kept across opens.
//!
//! Shared writable mmap works: dirty pages are written back through FUSE writes, which are
//! captured like any other write (when the kernel writes them back: msync, fsync, munmap or
//! periodic writeback).
//!
//! Requirements: Linux with FUSE (passthrough needs 6.9+), root (the filesystem creates files
//! as root and then gives them to the caller), and `/proc` mounted.
//!
//! Limitations: paths longer than PATH_MAX below the backing root are refused
//! (ENAMETOOLONG); a directory that was removed while open cannot be changed through its
//! open descriptor (ENOENT); `link(2)` to an open file that has no known name is refused
//! (ENOENT); O_TMPFILE is not supported; file locks are local to the active node.

mod durable;
mod fs;
mod sys;
mod table;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, Session, SessionACL};
use tracing::{info, warn};
use understudy_oplog::Journal;

/// When read-only opens use the kernel's FUSE passthrough.
///
/// The kernel does not let one inode be open in passthrough mode and through FUSE at the same
/// time. Read-only opens adapt: if the file is already open through FUSE (for example by a
/// writer), they use FUSE reads. But a **writable** open of a file that is open for
/// passthrough reading cannot be served (writes must never bypass capture): it waits up to
/// 200 ms for those readers to close and then fails with `ETXTBSY`. The policy decides which
/// files may take that risk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadPassthrough {
    /// Never: every read goes through FUSE. No open is ever refused.
    Never,
    /// Only files with no write permission bit for anyone (`mode & 0o222 == 0`): binaries,
    /// libraries, published data. Writing to those needs root (or a chmod) anyway, so a
    /// refused writer is very unlikely.
    #[default]
    UnwritableFiles,
    /// Every read-only open of a file not currently open through FUSE. Fastest reads, but a
    /// process that opens a file for writing while another one reads it gets `ETXTBSY`
    /// (e.g. a database reopening a file that a backup is reading).
    Always,
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// FUSE worker threads. Requests that wait for durability do not hold a worker.
    pub threads: usize,
    /// Source name shown in /proc/mounts.
    pub fsname: String,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            threads: 4,
            fsname: "understudy".into(),
        }
    }
}

/// Counters of a mounted filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// The kernel accepted FUSE passthrough (and it has not failed since).
    pub passthrough_enabled: bool,
    /// Opens served by kernel passthrough.
    pub passthrough_opens: u64,
    /// Opens (and creates) served through FUSE.
    pub cached_opens: u64,
    /// Of those, write-only ones served with `FOPEN_DIRECT_IO` (no page cache of the mount).
    pub direct_opens: u64,
    /// FUSE read requests and the bytes they returned (passthrough reads do not count).
    pub reads: u64,
    pub read_bytes: u64,
    /// Captured writes and their bytes.
    pub writes: u64,
    pub write_bytes: u64,
    /// Ops recorded in the journal.
    pub records: u64,
}

/// Shared counters behind [`CaptureStats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    passthrough: AtomicBool,
    passthrough_opens: AtomicU64,
    cached_opens: AtomicU64,
    direct_opens: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    records: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> CaptureStats {
        let r = Ordering::Relaxed;
        CaptureStats {
            passthrough_enabled: self.passthrough.load(r),
            passthrough_opens: self.passthrough_opens.load(r),
            cached_opens: self.cached_opens.load(r),
            direct_opens: self.direct_opens.load(r),
            reads: self.reads.load(r),
            read_bytes: self.read_bytes.load(r),
            writes: self.writes.load(r),
            write_bytes: self.write_bytes.load(r),
            records: self.records.load(r),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount point {mountpoint} is inside the backing directory {backing}; mount over the backing directory itself or outside it")]
    MountpointInsideBacking {
        mountpoint: PathBuf,
        backing: PathBuf,
    },
    #[error("mounting FUSE at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Files are still open under the mount point. Retry, or drop the mount to detach it
    /// lazily (it then keeps serving, and capturing, the open files until they close).
    #[error("{} is busy", .0.mountpoint().display())]
    Busy(CaptureMount),
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("capture session ended with an error: {0}")]
    Session(#[source] io::Error),
}

/// A mounted capture filesystem. Dropping it unmounts (lazily if files are still open).
pub struct CaptureMount {
    mountpoint: PathBuf,
    mountpoint_c: CString,
    /// Identifies our mount in /proc/self/mountinfo, so we never unmount someone else's.
    mount_id: Option<u64>,
    session: Option<JoinHandle<io::Result<()>>>,
    stats: Arc<Stats>,
    order: OrderLock,
}

/// The capture filesystem's order lock, held across every mutating op's syscall and its
/// journal record. Whoever holds it sees the backing directory exactly as the journal's
/// last recorded seq left it, and may record ops of its own at that point (a resync reads
/// files and records what it read this way).
#[derive(Clone)]
pub struct OrderLock(Arc<parking_lot::Mutex<()>>);

impl OrderLock {
    /// Blocks every mutating op on the mount until the guard is dropped. Keep it short.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.0.lock()
    }
}

impl fmt::Debug for CaptureMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureMount")
            .field("mountpoint", &self.mountpoint)
            .field("mount_id", &self.mount_id)
            .finish_non_exhaustive()
    }
}

/// Mounts the capture filesystem for `backing` at `mountpoint` (which may be `backing`
/// itself), with the default [`ReadPassthrough`] policy. Returns once the kernel has
/// completed the FUSE handshake.
pub fn mount(
    backing: &Path,
    mountpoint: &Path,
    journal: Arc<dyn Journal>,
    opts: CaptureOptions,
) -> Result<CaptureMount, CaptureError> {
    mount_with_read_passthrough(
        backing,
        mountpoint,
        journal,
        opts,
        ReadPassthrough::default(),
    )
}

/// [`mount`] with an explicit passthrough policy for read-only opens.
pub fn mount_with_read_passthrough(
    backing: &Path,
    mountpoint: &Path,
    journal: Arc<dyn Journal>,
    opts: CaptureOptions,
    read_passthrough: ReadPassthrough,
) -> Result<CaptureMount, CaptureError> {
    let canon = |what, p: &Path| {
        p.canonicalize().map_err(|source| CaptureError::Path {
            what,
            path: p.to_path_buf(),
            source,
        })
    };
    let backing = canon("backing directory", backing)?;
    let mountpoint = canon("mount point", mountpoint)?;
    // Below the backing root, our own lookups would walk into the mount and deadlock.
    if mountpoint != backing && mountpoint.starts_with(&backing) {
        return Err(CaptureError::MountpointInsideBacking {
            mountpoint,
            backing,
        });
    }
    let stats = Arc::new(Stats::default());
    // Opened before mounting, so an over-mount still reaches the real directory.
    let fs = fs::CaptureFs::new(&backing, journal, read_passthrough, Arc::clone(&stats)).map_err(
        |source| CaptureError::Path {
            what: "opening backing directory",
            path: backing.clone(),
            source,
        },
    )?;
    let order = OrderLock(fs.order_lock());
    // Behave like the backing filesystem: same dev/suid/exec/ro flags.
    let vfs = sys::fstatvfs(fs.root_fd()).map_err(|source| CaptureError::Path {
        what: "statvfs",
        path: backing.clone(),
        source,
    })?;
    let flag = |bit: libc::c_ulong| vfs.f_flag & bit != 0;
    let mut mount_flags = 0;
    for (st, ms) in [
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if flag(st) {
            mount_flags |= ms;
        }
    }
    let mut config = Config::default();
    config.n_threads = Some(opts.threads.max(1));
    // One /dev/fuse descriptor per worker: requests are spread without a shared read lock.
    config.clone_fd = true;
    let notifier = fs.notifier_slot();
    let mount_failed = |source| CaptureError::Mount {
        path: mountpoint.clone(),
        source,
    };
    let mountpoint_c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| mount_failed(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let source = CString::new(opts.fsname.as_bytes())
        .map_err(|_| mount_failed(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // We mount, and only we unmount (`unmount`, `Drop`), with the mount's identity checked.
    // fuser's own mount would unmount the path again when its session ends, after ours,
    // taking whatever is mounted there by then (the volume underneath, the passive's
    // read-only view, the next capture mount after a lazy detach): fuser 0.18.0 believes a
    // mount is still there when the kernel says it is gone (cberner/fuser#703).
    // The kernel checks permissions against the attributes we report (the backing ones;
    // default_permissions): we run as root and would otherwise let everyone do everything.
    // allow_other: the daemon (root) mounts, other users' applications use it.
    let dev = sys::mount_fuse(
        &mountpoint_c,
        &source,
        mount_flags,
        "default_permissions,allow_other",
    )
    .map_err(mount_failed)?;
    let session = match Session::from_fd(fs, dev, SessionACL::All, config) {
        Ok(session) => session,
        Err(e) => {
            // Not left behind as a dead mount.
            let _ = sys::umount(&mountpoint_c, libc::MNT_DETACH);
            return Err(mount_failed(e));
        }
    };
    let _ = notifier.set(session.notifier());
    let session = std::thread::Builder::new()
        .name("capture-session".into())
        .spawn(move || session.run())
        .map_err(|source| CaptureError::Mount {
            path: mountpoint.clone(),
            source,
        })?;
    let mount_id = match sys::mount_ident(&mountpoint_c) {
        Ok(ident) => {
            raise_readahead(&ident);
            Some(ident.id)
        }
        Err(e) => {
            warn!(error = %e, "cannot read the mount id; unmount will not verify the mount");
            None
        }
    };
    info!(
        backing = %backing.display(),
        mountpoint = %mountpoint.display(),
        passthrough = stats.passthrough.load(Ordering::Relaxed),
        "capture filesystem mounted"
    );
    Ok(CaptureMount {
        mountpoint,
        mountpoint_c,
        mount_id,
        session: Some(session),
        stats,
        order,
    })
}

impl CaptureMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn stats(&self) -> CaptureStats {
        self.stats.snapshot()
    }

    /// The order lock (see [`OrderLock`]).
    pub fn order_lock(&self) -> OrderLock {
        self.order.clone()
    }

    /// Unmounts and waits for the FUSE session to end. If files are still open under the
    /// mount point, returns [`CaptureError::Busy`] with the mount, to retry or drop.
    pub fn unmount(mut self) -> Result<(), CaptureError> {
        if self.is_mounted() {
            match sys::umount(&self.mountpoint_c, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(CaptureError::Busy(self))
                }
                Err(source) => {
                    return Err(CaptureError::Unmount {
                        path: self.mountpoint.clone(),
                        source,
                    })
                }
            }
        }
        self.join()
    }

    /// Whether our mount still exists (not unmounted or detached by someone else).
    fn is_mounted(&self) -> bool {
        let running = self.session.as_ref().is_some_and(|h| !h.is_finished());
        match self.mount_id {
            Some(id) if running => mount_listed(id),
            _ => running,
        }
    }

    fn join(&mut self) -> Result<(), CaptureError> {
        match self.session.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(CaptureError::Session(e)),
            Some(Err(_)) => Err(CaptureError::Session(io::Error::other(
                "capture session thread panicked",
            ))),
        }
    }
}

impl Drop for CaptureMount {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        if !self.is_mounted() {
            if self.session.as_ref().is_some_and(|h| h.is_finished()) {
                let _ = self.join();
            }
            return;
        }
        match sys::umount(&self.mountpoint_c, 0) {
            Ok(()) => {
                if let Err(e) = self.join() {
                    warn!(error = %e, "capture session ended with an error");
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Detach: the mount point is free now, open files keep being served and
                // captured until they close, then the session thread ends on its own.
                match sys::umount(&self.mountpoint_c, libc::MNT_DETACH) {
                    Ok(()) => warn!(
                        mountpoint = %self.mountpoint.display(),
                        "capture filesystem busy; detached lazily"
                    ),
                    Err(e) => warn!(error = %e, "lazy unmount failed"),
                }
                self.session = None;
            }
            Err(e) => warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmount failed"),
        }
    }
}

/// Readahead requests of max_write each that one sequential reader may have in flight.
const READAHEAD_REQUESTS: u32 = 8;

/// The kernel gives a FUSE mount 128 KiB of readahead whatever the init reply asks for, so
/// sequential reads through FUSE arrive as 128 KiB requests. Raising the mount's BDI
/// readahead lets them arrive as 1 MiB requests (max_write), [`READAHEAD_REQUESTS`] of them
/// in flight, so the worker threads read the backing file in parallel. Best effort: without
/// it reads are slower, not wrong.
fn raise_readahead(ident: &sys::MountIdent) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        ident.dev_major, ident.dev_minor
    );
    let kb = fs::MAX_WRITE / 1024 * READAHEAD_REQUESTS;
    if let Err(e) = std::fs::write(&path, format!("{kb}\n")) {
        warn!(error = %e, path, "cannot raise FUSE readahead");
    }
}

/// Whether mount `id` is still in this process's mount namespace.
fn mount_listed(id: u64) -> bool {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(info) => info
            .lines()
            .any(|l| l.split(' ').next().and_then(|f| f.parse::<u64>().ok()) == Some(id)),
        // Cannot tell: assume it is, so we try to unmount rather than leak it.
        Err(_) => true,
    }
}
