//! The passive side of replication: applies replicated [`Record`]s, strictly in sequence, to
//! the replica directory, and makes them durable in groups.
//!
//! # Confinement
//!
//! Records arrive from the network, so every path in them is hostile until proven otherwise.
//! A path must be relative and made only of plain names (no `.`, `..`, empty component, NUL),
//! or the record is [`ApplyError::Refused`] before anything of it is applied. The
//! parent directory is then resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the root's descriptor, and the op acts on the
//! final name with `*at` calls relative to that directory, never following a final symlink.
//! Capture builds paths from real directory parents, so a legitimate path never crosses a
//! symlink, and one that does is refused. A symlink's target is data: stored, never resolved.
//! Writes (and truncate, fallocate) only ever reach regular files: a device node in the
//! replica would otherwise be a way to write to a disk of the passive.
//!
//! # Durability
//!
//! [`Applier::apply`] changes the replica without waiting for the disk; [`Applier::sync`] then
//! makes everything applied so far durable at once (group commit): `fdatasync` for files that
//! only gained data, `fsync` for files whose metadata changed, and `fsync` for every directory
//! whose entries changed. The inodes of symlinks and special files cannot be opened to fsync;
//! their metadata rides on their parent directory's fsync, which on a journaling filesystem
//! (ext4, XFS) commits the journal that holds them.
//!
//! # Orphans
//!
//! An inode unlinked (or renamed over) while still open on the active is parked in the
//! orphans directory, named by its decimal orphan id, until [`Op::DropOrphan`]. The orphans
//! directory must be on the same mount as the root (parking is a rename) and outside it.
//!
//! # Resync and verify
//!
//! [`Op::SyncBegin`] .. [`Op::SyncEnd`] make the replica's tree within a scope exactly the
//! active's listing, or compare it, reporting to a [`SyncObserver`] (see `sync.rs` for the
//! records and their checks, `resync.rs` for how a listing is applied). They use the same
//! confinement: a listing names paths, never follows them, and replaces a symlink found where
//! it lists a directory rather than walking through it.
//!
//! # Deployment note
//!
//! The replica's parent directory should be mode 0700: nothing but the applier should be able
//! to reach the replica while it is passive. The applier holds its ground against hostile
//! records, not against a local process racing it inside the tree.

mod cache;
mod confine;
mod direct;
mod dirty;
mod handle;
mod resync;
mod sync;
mod sys;
mod writeback;
mod xattr;

pub use crate::handle::{handle_of, open_by_handle};
pub use crate::sync::{LocalHandle, NoObserver, SyncObserver, MAX_LISTING_ENTRIES};

use std::borrow::Cow;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{
    self as rfs, AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, RenameFlags, ResolveFlags,
    Statx, StatxFlags, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;
use understudy_oplog::{FileRef, NodeKind, Op, Record, Timespec};

use crate::cache::FdCache;
use crate::dirty::Dirty;

/// How many writable file descriptors stay open between ops.
pub const FD_CACHE_ENTRIES: usize = 128;
pub use crate::dirty::MAX_DIRTY;

/// Every resolution stays beneath its starting directory, on its mount, and never crosses a
/// symlink (magic links of /proc included).
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Permission bits (with setuid, setgid, sticky); the file type comes from the op, not these.
const PERMISSION_BITS: u32 = 0o7777;
/// Writes at least this large are part of a stream (a copy, a backup, a log): their pages
/// are sent to disk as soon as they are written (see `Applier::write`).
const STREAMING_WRITE_BYTES: usize = 256 << 10;
/// Mode for a node between its creation and the chown/chmod that gives it its real mode: no
/// one else can use it in between, whatever the process umask is.
const CREATE_MODE: u32 = 0o600;
const CREATE_DIR_MODE: u32 = 0o700;
/// Longest xattr name (XATTR_NAME_MAX).
const MAX_XATTR_NAME: usize = 255;

/// Why a record was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The record is hostile or malformed (an escaping path, a symlink where a directory
    /// must be, a write aimed at a device...). Nothing outside the root was touched.
    #[error("record {seq}: refused `{}`: {reason}", .path.escape_ascii())]
    Refused {
        seq: u64,
        path: Vec<u8>,
        reason: &'static str,
    },
    /// The replica does not match what the op expects (a name missing or already there, a
    /// directory not empty...): the set is out of sync.
    #[error("record {seq}: {op} on `{target}` does not match the replica: {source}")]
    Diverged {
        seq: u64,
        op: &'static str,
        target: String,
        source: io::Error,
    },
    /// Records must arrive as `last_applied + 1`. Nothing was touched.
    #[error("record {got} arrived out of order: expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    /// The passive's own storage or process failed (EIO, ENOSPC, EMFILE...), or the applier
    /// could not be set up.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// Identifies an inode on the passive, to dedupe the sets of things to sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InodeId {
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    pub(crate) ino: u64,
}

impl InodeId {
    fn of(st: &Statx) -> Self {
        Self {
            dev_major: st.stx_dev_major,
            dev_minor: st.stx_dev_minor,
            ino: st.stx_ino,
        }
    }
}

fn kind_of(st: &Statx) -> FileType {
    FileType::from_raw_mode(u32::from(st.stx_mode))
}

/// Applies records to one replica directory. Single-threaded by design: records are applied
/// in sequence, and the fd cache and dirty sets assume one writer.
pub struct Applier {
    /// `O_RDONLY | O_DIRECTORY`: a real descriptor, so it can be fsynced and syncfs'd.
    root: Arc<OwnedFd>,
    root_id: InodeId,
    orphans: Arc<OwnedFd>,
    orphans_id: InodeId,
    last_applied: u64,
    cache: FdCache,
    dirty: Dirty,
    sync_due: bool,
    /// The resync or verify in progress, between its `SyncBegin` and `SyncEnd`.
    sync: Option<sync::SyncState>,
    /// Where large writes are staged for `O_DIRECT` (see `direct.rs`).
    direct: direct::DirectWriter,
    /// Starts early writeback on a helper thread.
    writeback: writeback::Writeback,
}

/// The op being applied, for error reports.
#[derive(Clone, Copy)]
struct Ctx {
    seq: u64,
    op: &'static str,
}

impl Ctx {
    fn refuse(self, path: &[u8], reason: &'static str) -> ApplyError {
        tracing::warn!(
            seq = self.seq,
            op = self.op,
            path = %path.escape_ascii(),
            reason,
            "refused a replicated record"
        );
        ApplyError::Refused {
            seq: self.seq,
            path: path.to_vec(),
            reason,
        }
    }

    /// An op's syscall failed on `target`.
    fn fail(self, target: &[u8], errno: Errno) -> ApplyError {
        if sys::is_environmental(errno) {
            ApplyError::Io {
                what: format!(
                    "record {}: {} on `{}`",
                    self.seq,
                    self.op,
                    target.escape_ascii()
                ),
                source: errno.into(),
            }
        } else {
            ApplyError::Diverged {
                seq: self.seq,
                op: self.op,
                target: target.escape_ascii().to_string(),
                source: errno.into(),
            }
        }
    }

    /// A resolution (openat2) failed: the RESOLVE_* flags report confinement violations as
    /// ELOOP (a symlink on the way, or as the final name with O_NOFOLLOW) and EXDEV (a mount
    /// point, or an escape from beneath the starting directory).
    fn resolve_failed(self, path: &[u8], errno: Errno) -> ApplyError {
        match errno {
            Errno::LOOP => self.refuse(path, "resolution meets a symbolic link"),
            Errno::XDEV => self.refuse(path, "resolution crosses a mount point or leaves the root"),
            _ => self.fail(path, errno),
        }
    }
}

/// Where an op's final name lives: the directory (already resolved, confined) and the name.
struct Loc<'a> {
    dir: Arc<OwnedFd>,
    /// `dir` is an `O_PATH` descriptor (resolved parents are); root and orphans are not.
    path_only: bool,
    name: Cow<'a, [u8]>,
    /// How to name it in errors: the path, or `<orphans>/<id>`.
    shown: Cow<'a, [u8]>,
}

/// A file an op addresses, opened as its type allows.
enum Target<'a> {
    /// A regular file, through the write cache.
    File { fd: Arc<OwnedFd>, id: InodeId },
    /// A directory, opened `O_RDONLY`.
    Dir { fd: Arc<OwnedFd>, id: InodeId },
    /// A symlink or special file: never opened, only acted on by name without following.
    Other { loc: Loc<'a>, kind: FileType },
}

fn describe(file: &FileRef) -> Vec<u8> {
    match file {
        FileRef::Path(p) => p.clone(),
        FileRef::Orphan(id) => format!("<orphans>/{id}").into_bytes(),
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Mknod { .. } => "mknod",
        Op::Mkdir { .. } => "mkdir",
        Op::Symlink { .. } => "symlink",
        Op::Link { .. } => "link",
        Op::Write { .. } => "write",
        Op::Truncate { .. } => "truncate",
        Op::Fallocate { .. } => "fallocate",
        Op::Unlink { .. } => "unlink",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::SetAttr { .. } => "setattr",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr { .. } => "removexattr",
        Op::Fsync { .. } => "fsync",
        Op::DropOrphan { .. } => "drop-orphan",
        Op::SyncBegin { .. } => "sync-begin",
        Op::SyncTree { .. } => "sync-tree",
        Op::SyncMeta { .. } => "sync-meta",
        Op::VerifyRange { .. } => "verify-range",
        Op::SyncEnd { .. } => "sync-end",
    }
}

fn perm(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & PERMISSION_BITS)
}

fn owner(uid: Option<u32>, gid: Option<u32>) -> (Option<Uid>, Option<Gid>) {
    // The record check refused u32::MAX (chown's "leave unchanged"), so these are real ids.
    (uid.map(Uid::from_raw), gid.map(Gid::from_raw))
}

fn rustix_time(t: Option<Timespec>) -> rfs::Timespec {
    match t {
        Some(t) => rfs::Timespec {
            tv_sec: t.sec,
            tv_nsec: i64::from(t.nsec),
        },
        None => rfs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
    }
}

/// What a failed record check reports: the offending path and why it was refused.
type Bad = (Vec<u8>, &'static str);

/// Syntactic checks on everything in a record that came from the network, so that a bad
/// record is refused before any of it takes effect. Sync records are also checked against
/// the sync in progress (`sync`): its id, its scope, the listing so far.
fn check_record(record: &Record, sync: Option<&sync::SyncState>) -> Result<(), Bad> {
    fn path(p: &[u8]) -> Result<(), Bad> {
        confine::check_path(p).map_err(|why| (p.to_vec(), why))
    }
    fn file(f: &FileRef) -> Result<(), Bad> {
        match f {
            FileRef::Path(p) => path(p),
            FileRef::Orphan(_) => Ok(()),
        }
    }
    /// For ops that may act on the root directory itself, which capture names by the empty
    /// path (chmod/chown/utimens or an xattr on the mount point): `target` maps it to the
    /// root's own descriptor, never to a path walk.
    fn file_or_root(f: &FileRef) -> Result<(), Bad> {
        match f {
            FileRef::Path(p) if p.is_empty() => Ok(()),
            _ => file(f),
        }
    }
    fn ids(at: &[u8], uid: Option<u32>, gid: Option<u32>) -> Result<(), Bad> {
        if uid == Some(u32::MAX) || gid == Some(u32::MAX) {
            return Err((at.to_vec(), "uid or gid 4294967295 is not an id"));
        }
        Ok(())
    }
    fn time(at: &[u8], t: Option<Timespec>) -> Result<(), Bad> {
        // Out-of-range nanoseconds could smuggle UTIME_NOW / UTIME_OMIT into utimensat.
        match t {
            Some(t) if t.nsec >= 1_000_000_000 => Err((at.to_vec(), "nanoseconds out of range")),
            _ => Ok(()),
        }
    }
    fn xattr_name(at: &FileRef, name: &[u8]) -> Result<(), Bad> {
        if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains(&0) {
            return Err((describe(at), "invalid xattr name"));
        }
        Ok(())
    }

    match &record.op {
        Op::Mknod {
            path: p, uid, gid, ..
        }
        | Op::Mkdir {
            path: p, uid, gid, ..
        } => {
            path(p)?;
            ids(p, Some(*uid), Some(*gid))?;
        }
        Op::Symlink {
            path: p,
            target,
            uid,
            gid,
        } => {
            path(p)?;
            ids(p, Some(*uid), Some(*gid))?;
            if target.is_empty() || target.contains(&0) || target.len() > 4096 {
                return Err((p.clone(), "invalid symlink target"));
            }
        }
        Op::Link { existing, path: p } => {
            path(existing)?;
            path(p)?;
        }
        Op::Write { file: f, .. }
        | Op::Truncate { file: f, .. }
        | Op::Fallocate { file: f, .. } => file(f)?,
        // An fsync of the root directory (fsyncdir on the mount point) names the root as the
        // empty path. Fsync only marks a group commit due; it opens nothing by its path.
        Op::Fsync { file: f, .. } => file_or_root(f)?,
        Op::Unlink { path: p, .. } | Op::Rmdir { path: p } => path(p)?,
        Op::Rename {
            from,
            to,
            flags,
            orphan,
        } => {
            path(from)?;
            path(to)?;
            let known = RenameFlags::NOREPLACE | RenameFlags::EXCHANGE;
            let flags = RenameFlags::from_bits_retain(*flags);
            if !known.contains(flags) || flags == known {
                return Err((from.clone(), "unsupported rename flags"));
            }
            if orphan.is_some() && !flags.is_empty() {
                return Err((to.clone(), "orphan id on a rename that cannot replace"));
            }
        }
        Op::SetAttr {
            file: f,
            uid,
            gid,
            atime,
            mtime,
            ..
        } => {
            file_or_root(f)?;
            let at = describe(f);
            ids(&at, *uid, *gid)?;
            time(&at, *atime)?;
            time(&at, *mtime)?;
        }
        Op::SetXattr {
            file: f,
            name,
            flags,
            ..
        } => {
            file_or_root(f)?;
            xattr_name(f, name)?;
            let known = (XattrFlags::CREATE | XattrFlags::REPLACE).bits();
            if *flags < 0 || (*flags as u32) & !known != 0 {
                return Err((describe(f), "unsupported xattr flags"));
            }
        }
        Op::RemoveXattr { file: f, name } => {
            file_or_root(f)?;
            xattr_name(f, name)?;
        }
        Op::DropOrphan { .. } => {}
        Op::SyncBegin { scope, .. } => sync::check_begin(scope.as_deref())?,
        Op::SyncTree {
            id,
            first_index,
            entries,
            ..
        } => sync::check_tree(sync, *id, *first_index, entries)?,
        Op::SyncMeta {
            path: p,
            size,
            uid,
            gid,
            mtime,
            xattrs,
            ..
        } => sync::check_meta(p, *size, *uid, *gid, *mtime, xattrs)?,
        Op::VerifyRange {
            id,
            path: p,
            offset,
            len,
            ..
        } => sync::check_range(sync, *id, p, *offset, *len)?,
        Op::SyncEnd { id } => sync::check_end(sync, *id)?,
    }
    for (f, t) in &record.mtimes {
        match f {
            // The empty path stands for the root itself, here only.
            FileRef::Path(p) if p.is_empty() => {}
            _ => file(f)?,
        }
        time(&describe(f), Some(*t))?;
    }
    Ok(())
}

fn io_error(what: String, source: impl Into<io::Error>) -> ApplyError {
    ApplyError::Io {
        what,
        source: source.into(),
    }
}

impl Applier {
    /// Opens the replica at `root`, parking orphans in `orphans`: a directory on the same
    /// mount as `root` (parking is a rename), outside it (so no op can reach the parked
    /// inodes by path). Both directories must exist. Starts at `last_applied` 0.
    pub fn open(root: &Path, orphans: &Path) -> Result<Self, ApplyError> {
        let open_dir = |path: &Path, what: &str| {
            rfs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_error(format!("open {what} {}", path.display()), e))
        };
        let root_fd = open_dir(root, "replica root")?;
        let orphans_fd = open_dir(orphans, "orphans directory")?;
        let stat = |fd: &OwnedFd, path: &Path| {
            rfs::statx(
                fd,
                "",
                AtFlags::EMPTY_PATH,
                StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
            )
            .map_err(|e| io_error(format!("stat {}", path.display()), e))
        };
        let root_st = stat(&root_fd, root)?;
        let orphans_st = stat(&orphans_fd, orphans)?;
        let has_mnt_id = |st: &Statx| st.stx_mask & StatxFlags::MNT_ID.bits() != 0;
        let same_fs = (root_st.stx_dev_major, root_st.stx_dev_minor)
            == (orphans_st.stx_dev_major, orphans_st.stx_dev_minor);
        let same_mount = !(has_mnt_id(&root_st) && has_mnt_id(&orphans_st))
            || root_st.stx_mnt_id == orphans_st.stx_mnt_id;
        if !same_fs || !same_mount {
            return Err(io_error(
                format!(
                    "orphans directory {} must be on the same mount as the replica root {}",
                    orphans.display(),
                    root.display()
                ),
                Errno::XDEV,
            ));
        }
        let canonical = |path: &Path| {
            std::fs::canonicalize(path)
                .map_err(|e| io_error(format!("canonicalize {}", path.display()), e))
        };
        let (root_real, orphans_real) = (canonical(root)?, canonical(orphans)?);
        if orphans_real.starts_with(&root_real) || root_real.starts_with(&orphans_real) {
            return Err(io_error(
                format!(
                    "orphans directory {} and replica root {} must not contain one another",
                    orphans.display(),
                    root.display()
                ),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        // Fail now, not on the first record, on a kernel without openat2 (Linux < 5.6).
        rfs::openat2(
            &root_fd,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| io_error("openat2 with RESOLVE_BENEATH (Linux 5.6+)".into(), e))?;

        Ok(Self {
            root: Arc::new(root_fd),
            root_id: InodeId::of(&root_st),
            orphans: Arc::new(orphans_fd),
            orphans_id: InodeId::of(&orphans_st),
            last_applied: 0,
            cache: FdCache::new(FD_CACHE_ENTRIES),
            dirty: Dirty::default(),
            sync_due: false,
            sync: None,
            direct: direct::DirectWriter::default(),
            writeback: writeback::Writeback::default(),
        })
    }

    /// Sequence number of the last record applied (0 before any).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Resumes after `seq` (the last record known applied and synced): the next record
    /// accepted is `seq + 1`.
    pub fn set_last_applied(&mut self, seq: u64) {
        self.last_applied = seq;
    }

    /// True once a barrier ([`Op::Fsync`]) was applied and not yet covered by [`sync`]: the
    /// active is waiting on it, so the caller should sync soon rather than at its own pace.
    ///
    /// [`sync`]: Applier::sync
    pub fn sync_due(&self) -> bool {
        self.sync_due
    }

    /// True if something applied since the last [`sync`](Applier::sync) is not yet durable.
    pub fn has_unsynced(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Applies one record. It must be numbered `last_applied() + 1`.
    ///
    /// On `Ok`, `last_applied()` becomes `record.seq`. On any error it stays put; after
    /// `Refused`, `Diverged` or `Io` the record may have been partly applied (inside the
    /// root only), so the caller must treat the set as out of sync. `OutOfOrder` and a
    /// `Refused` for a malformed path touch nothing.
    pub fn apply(&mut self, record: &Record) -> Result<(), ApplyError> {
        self.apply_observed(record, &mut NoObserver)
    }

    /// [`apply`](Applier::apply), with resync and verify records reporting to `observer`.
    pub fn apply_observed(
        &mut self,
        record: &Record,
        observer: &mut dyn SyncObserver,
    ) -> Result<(), ApplyError> {
        let expected = self.last_applied.wrapping_add(1);
        if record.seq != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: record.seq,
            });
        }
        let ctx = Ctx {
            seq: record.seq,
            op: op_name(&record.op),
        };
        check_record(record, self.sync.as_ref())
            .map_err(|(path, reason)| ctx.refuse(&path, reason))?;
        // Writes and SyncMeta settle only with writes in flight to their own file.
        if !matches!(record.op, Op::Write { .. } | Op::SyncMeta { .. }) {
            self.settle(ctx)?;
        }
        self.apply_op(ctx, &record.op, observer)?;
        let ctx = Ctx { op: "mtime", ..ctx };
        for (file, time) in &record.mtimes {
            self.set_mtime(ctx, file, *time)?;
        }
        self.last_applied = record.seq;
        Ok(())
    }

    /// [`apply`](Applier::apply) for a `Write` whose data is still in the receive buffer
    /// ([`understudy_oplog::decode_write`]): the same checks and effects, one copy fewer.
    pub fn apply_write(&mut self, w: understudy_oplog::WriteRef<'_>) -> Result<(), ApplyError> {
        let expected = self.last_applied.wrapping_add(1);
        if w.seq != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: w.seq,
            });
        }
        let ctx = Ctx {
            seq: w.seq,
            op: "write",
        };
        // The checks see the record as it is, minus its data (which they never read).
        let shell = Record {
            seq: w.seq,
            op: Op::Write {
                file: w.file,
                offset: w.offset,
                data: Vec::new(),
            },
            mtimes: w.mtimes,
        };
        check_record(&shell, self.sync.as_ref())
            .map_err(|(path, reason)| ctx.refuse(&path, reason))?;
        let Op::Write { file, .. } = &shell.op else {
            return Err(ctx.refuse(b"", "not a write"));
        };
        self.write(ctx, file, w.offset, w.data)?;
        let ctx = Ctx { op: "mtime", ..ctx };
        for (file, time) in &shell.mtimes {
            self.set_mtime(ctx, file, *time)?;
        }
        self.last_applied = w.seq;
        Ok(())
    }

    /// Reopens a file of the replica read-only from a handle that a [`SyncObserver`] was
    /// given (`open_by_handle_at`; needs CAP_DAC_READ_SEARCH).
    ///
    /// Only a regular file on the replica's filesystem is ever opened: the handle is first
    /// opened `O_PATH` and checked, so even a stale or forged handle cannot open a device.
    pub fn open_handle(&self, handle: &LocalHandle) -> Result<OwnedFd, ApplyError> {
        let failed = |e: Errno| io_error("open_by_handle_at on the replica".into(), e);
        let refused = |reason| ApplyError::Refused {
            seq: self.last_applied,
            path: b"<handle>".to_vec(),
            reason,
        };
        let is_replica_file = |fd: &OwnedFd| -> Result<Option<InodeId>, ApplyError> {
            let st =
                rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(failed)?;
            let id = InodeId::of(&st);
            let on_replica =
                (id.dev_major, id.dev_minor) == (self.root_id.dev_major, self.root_id.dev_minor);
            Ok((kind_of(&st) == FileType::RegularFile && on_replica).then_some(id))
        };
        let path =
            handle::open_by_handle(self.root.as_fd(), handle, libc::O_PATH).map_err(failed)?;
        let Some(id) = is_replica_file(&path)? else {
            return Err(refused("the handle is not a regular file of the replica"));
        };
        let fd =
            handle::open_by_handle(self.root.as_fd(), handle, libc::O_RDONLY).map_err(failed)?;
        if is_replica_file(&fd)? != Some(id) {
            return Err(refused("the handle changed while being opened"));
        }
        Ok(fd)
    }

    /// Makes every op applied so far durable (group commit). On error the replica's
    /// durability is unknown (a failed fsync may not fail again on retry): treat the set as
    /// out of sync.
    pub fn sync(&mut self) -> Result<(), ApplyError> {
        self.sync_due = false;
        // Nothing is durable before it is written: a failed direct write fails the commit.
        self.direct.settle().map_err(|e| {
            io_error(
                "sync: a direct write of an earlier record to the replica".into(),
                e,
            )
        })?;
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.overflow {
            // The orphans directory is on the same filesystem, so this covers it too.
            return rfs::syncfs(&*self.root)
                .map_err(|e| io_error("sync: syncfs on the replica".into(), e));
        }
        let mut first_error = None;
        // Files first, then directories: by the time the directories are durable, so are
        // the contents their new entries point at. (All of it is durable when sync returns;
        // the order only narrows what a crash in the middle can expose.)
        for file in dirty.files.values() {
            let done = if file.metadata {
                rfs::fsync(&*file.fd)
            } else {
                rfs::fdatasync(&*file.fd)
            };
            if let Err(e) = done {
                first_error.get_or_insert(io_error("sync: fsync of a file".into(), e));
            }
        }
        for dir in dirty.dirs.values() {
            let done = if dir.path_only {
                // O_PATH descriptors cannot be fsynced: reopen the directory itself.
                match rfs::openat(
                    &*dir.fd,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => rfs::fsync(&fd),
                    // Removed since: nothing of it left to make durable.
                    Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(e),
                }
            } else {
                rfs::fsync(&*dir.fd)
            };
            if let Err(e) = done {
                first_error.get_or_insert(io_error("sync: fsync of a directory".into(), e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn apply_op(
        &mut self,
        ctx: Ctx,
        op: &Op,
        observer: &mut dyn SyncObserver,
    ) -> Result<(), ApplyError> {
        match op {
            Op::Mknod {
                path,
                kind,
                mode,
                uid,
                gid,
                rdev,
            } => self.mknod(ctx, path, *kind, *mode, *uid, *gid, *rdev),
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => self.mkdir(ctx, path, *mode, *uid, *gid),
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => self.symlink(ctx, path, target, *uid, *gid),
            Op::Link { existing, path } => self.link(ctx, existing, path),
            Op::Write { file, offset, data } => self.write(ctx, file, *offset, data),
            Op::Truncate { file, size } => {
                let (fd, id) = self.writable(ctx, file)?;
                rfs::ftruncate(&*fd, *size).map_err(|e| ctx.fail(&describe(file), e))?;
                self.dirty.file(id, &fd, true);
                Ok(())
            }
            Op::Fallocate {
                file,
                mode,
                offset,
                len,
            } => {
                let (fd, id) = self.writable(ctx, file)?;
                // The mode bits go to the kernel as they came: it validates them, and they
                // only ever affect this (regular, confined) file.
                let flags = FallocateFlags::from_bits_retain(*mode as u32);
                rfs::fallocate(&*fd, flags, *offset, *len)
                    .map_err(|e| ctx.fail(&describe(file), e))?;
                self.dirty.file(id, &fd, true);
                Ok(())
            }
            Op::Unlink { path, orphan } => self.unlink(ctx, path, *orphan),
            Op::Rmdir { path } => {
                let loc = self.locate(ctx, path)?;
                self.cache.forget_path(path);
                rfs::unlinkat(&*loc.dir, &*loc.name, AtFlags::REMOVEDIR)
                    .map_err(|e| ctx.fail(path, e))?;
                self.mark_dir(ctx, &loc)
            }
            Op::Rename {
                from,
                to,
                flags,
                orphan,
            } => self.rename(
                ctx,
                from,
                to,
                RenameFlags::from_bits_retain(*flags),
                *orphan,
            ),
            Op::SetAttr {
                file,
                mode,
                uid,
                gid,
                atime,
                mtime,
            } => self.setattr(ctx, file, *mode, *uid, *gid, *atime, *mtime),
            Op::SetXattr {
                file,
                name,
                value,
                flags,
            } => {
                let flags = XattrFlags::from_bits_retain(*flags as u32);
                self.on_xattrs(ctx, file, |fd| rfs::fsetxattr(fd, &name[..], value, flags))
            }
            Op::RemoveXattr { file, name } => {
                self.on_xattrs(ctx, file, |fd| rfs::fremovexattr(fd, &name[..]))
            }
            Op::Fsync { file, datasync } => {
                // Group commit: the fsync itself happens in `sync`, which the caller is
                // told is due. Everything written since the last sync is already tracked.
                self.sync_due = true;
                if !*datasync {
                    if let Some(id) = self.cache.peek(file) {
                        self.dirty.upgrade_file(id);
                    }
                }
                Ok(())
            }
            Op::DropOrphan { orphan } => self.drop_orphan(ctx, *orphan),
            Op::SyncBegin { id, verify, scope } => {
                self.sync_begin(ctx, *id, *verify, scope.as_deref())
            }
            Op::SyncTree { entries, last, .. } => self.sync_tree(ctx, observer, entries, *last),
            Op::SyncMeta {
                path,
                size,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            } => self.sync_meta(ctx, path, *size, *mode, *uid, *gid, *mtime, xattrs),
            Op::VerifyRange {
                id,
                path,
                offset,
                len,
                hash,
            } => self.verify_range(ctx, observer, *id, path, *offset, *len, hash),
            Op::SyncEnd { .. } => {
                // A durability barrier, like Fsync: everything the sync changed is synced
                // by the next `sync`, which the caller is told is due.
                self.sync_end();
                Ok(())
            }
        }
    }

    // ---- resolution -------------------------------------------------------------------

    /// Resolves the parent of a checked path, confined beneath the root.
    fn locate<'a>(&self, ctx: Ctx, path: &'a [u8]) -> Result<Loc<'a>, ApplyError> {
        let (parent, name) = confine::split(path);
        if parent.is_empty() {
            return Ok(Loc {
                dir: Arc::clone(&self.root),
                path_only: false,
                name: Cow::Borrowed(name),
                shown: Cow::Borrowed(path),
            });
        }
        let mut attempts = 0;
        let dir = loop {
            match rfs::openat2(
                &*self.root,
                parent,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                Ok(fd) => break fd,
                // RESOLVE_BENEATH may ask for a retry if a rename raced the walk.
                Err(Errno::AGAIN) if attempts < 8 => attempts += 1,
                Err(e) => return Err(ctx.resolve_failed(path, e)),
            }
        };
        Ok(Loc {
            dir: Arc::new(dir),
            path_only: true,
            name: Cow::Borrowed(name),
            shown: Cow::Borrowed(path),
        })
    }

    fn locate_ref<'a>(&self, ctx: Ctx, file: &'a FileRef) -> Result<Loc<'a>, ApplyError> {
        match file {
            FileRef::Path(path) => self.locate(ctx, path),
            FileRef::Orphan(id) => Ok(self.orphan_loc(*id)),
        }
    }

    fn orphan_loc(&self, id: u64) -> Loc<'static> {
        Loc {
            dir: Arc::clone(&self.orphans),
            path_only: false,
            name: Cow::Owned(id.to_string().into_bytes()),
            shown: Cow::Owned(format!("<orphans>/{id}").into_bytes()),
        }
    }

    /// Opens the final name itself, with the same confinement (a symlink or mount point
    /// there is refused).
    fn open_final(&self, ctx: Ctx, loc: &Loc<'_>, flags: OFlags) -> Result<OwnedFd, ApplyError> {
        rfs::openat2(
            &*loc.dir,
            &*loc.name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| ctx.resolve_failed(&loc.shown, e))
    }

    /// `lstat` of the final name.
    fn stat_at(&self, ctx: Ctx, loc: &Loc<'_>) -> Result<Statx, ApplyError> {
        rfs::statx(
            &*loc.dir,
            &*loc.name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::TYPE | StatxFlags::INO | StatxFlags::NLINK,
        )
        .map_err(|e| ctx.fail(&loc.shown, e))
    }

    fn stat_fd(&self, ctx: Ctx, fd: &OwnedFd, shown: &[u8]) -> Result<Statx, ApplyError> {
        rfs::statx(
            fd,
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::TYPE | StatxFlags::INO,
        )
        .map_err(|e| ctx.fail(shown, e))
    }

    /// Opens what `file` names according to its type. Regular files come from (and go into)
    /// the write cache; they are checked by `lstat` before opening so that opening never
    /// reaches a device or FIFO (opening some devices has side effects), and by `fstat`
    /// after, in case the name changed in between.
    fn target<'a>(&mut self, ctx: Ctx, file: &'a FileRef) -> Result<Target<'a>, ApplyError> {
        // The root itself (chmod, chown, utimens or an xattr on the mount point): capture
        // names it by the empty path, which has no parent to resolve. Found by the capture
        // model test (tests/model.rs in understudy-capture), seed 1: a utimensat on the
        // mount point was refused as an "empty path" and the replica stopped there.
        if matches!(file, FileRef::Path(p) if p.is_empty()) {
            return Ok(Target::Dir {
                fd: Arc::clone(&self.root),
                id: self.root_id,
            });
        }
        if let Some((fd, id)) = self.cache.get(file) {
            return Ok(Target::File { fd, id });
        }
        let loc = self.locate_ref(ctx, file)?;
        let st = self.stat_at(ctx, &loc)?;
        let id = InodeId::of(&st);
        let kind = kind_of(&st);
        let flags = match kind {
            FileType::RegularFile => OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            FileType::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
            _ => return Ok(Target::Other { loc, kind }),
        };
        let fd = self.open_final(ctx, &loc, flags)?;
        let opened = self.stat_fd(ctx, &fd, &loc.shown)?;
        if InodeId::of(&opened) != id || kind_of(&opened) != kind {
            return Err(ctx.refuse(&loc.shown, "changed while being opened"));
        }
        let fd = Arc::new(fd);
        if kind == FileType::RegularFile {
            self.cache.insert(file.clone(), Arc::clone(&fd), id);
            Ok(Target::File { fd, id })
        } else {
            Ok(Target::Dir { fd, id })
        }
    }

    /// A writable descriptor for a regular file; anything else is refused (symlink, device,
    /// FIFO, socket) or diverged (directory).
    fn writable(
        &mut self,
        ctx: Ctx,
        file: &FileRef,
    ) -> Result<(Arc<OwnedFd>, InodeId), ApplyError> {
        match self.target(ctx, file)? {
            Target::File { fd, id } => Ok((fd, id)),
            Target::Dir { .. } => Err(ctx.fail(&describe(file), Errno::ISDIR)),
            Target::Other {
                loc,
                kind: FileType::Symlink,
            } => Err(ctx.refuse(&loc.shown, "writes do not go through symbolic links")),
            Target::Other { loc, .. } => Err(ctx.refuse(&loc.shown, "not a regular file")),
        }
    }

    /// Records that the directory holding `loc` had its entries changed.
    fn mark_dir(&mut self, ctx: Ctx, loc: &Loc<'_>) -> Result<(), ApplyError> {
        let id = if Arc::ptr_eq(&loc.dir, &self.root) {
            self.root_id
        } else if Arc::ptr_eq(&loc.dir, &self.orphans) {
            self.orphans_id
        } else {
            InodeId::of(&self.stat_fd(ctx, &loc.dir, &loc.shown)?)
        };
        self.dirty.dir(id, &loc.dir, loc.path_only);
        Ok(())
    }

    fn mark_orphans(&mut self) {
        let fd = Arc::clone(&self.orphans);
        self.dirty.dir(self.orphans_id, &fd, false);
    }

    /// chmod of a special file by name without following a symlink. fchmodat2 does that
    /// exactly; before Linux 6.6 the fallback re-checks the name is no symlink and uses
    /// fchmodat, which would follow one swapped in between (only a local process inside the
    /// replica could do that; see the deployment note).
    fn chmod_special(&self, ctx: Ctx, loc: &Loc<'_>, mode: u32) -> Result<(), ApplyError> {
        match sys::chmod_nofollow(loc.dir.as_fd(), &loc.name, mode & PERMISSION_BITS) {
            Ok(()) => Ok(()),
            Err(Errno::NOSYS) => {
                if kind_of(&self.stat_at(ctx, loc)?) == FileType::Symlink {
                    return Err(ctx.fail(&loc.shown, Errno::OPNOTSUPP));
                }
                rfs::chmodat(&*loc.dir, &*loc.name, perm(mode), AtFlags::empty())
                    .map_err(|e| ctx.fail(&loc.shown, e))
            }
            Err(e) => Err(ctx.fail(&loc.shown, e)),
        }
    }

    // ---- ops ----------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn mknod(
        &mut self,
        ctx: Ctx,
        path: &[u8],
        kind: NodeKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    ) -> Result<(), ApplyError> {
        let loc = self.locate(ctx, path)?;
        self.cache.forget_path(path);
        let (uid, gid) = owner(Some(uid), Some(gid));
        let file_type = match kind {
            NodeKind::Regular => {
                // O_EXCL never follows a symlink; the fd then sets owner and mode exactly
                // (owner first: chown clears setuid/setgid bits).
                let fd = rfs::openat2(
                    &*loc.dir,
                    &*loc.name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(CREATE_MODE),
                    RESOLVE,
                )
                .map_err(|e| ctx.resolve_failed(path, e))?;
                rfs::fchown(&fd, uid, gid).map_err(|e| ctx.fail(path, e))?;
                rfs::fchmod(&fd, perm(mode)).map_err(|e| ctx.fail(path, e))?;
                let id = InodeId::of(&self.stat_fd(ctx, &fd, path)?);
                let fd = Arc::new(fd);
                self.dirty.file(id, &fd, true);
                // The next op is most likely a write to it.
                self.cache.insert(FileRef::Path(path.to_vec()), fd, id);
                return self.mark_dir(ctx, &loc);
            }
            NodeKind::Fifo => FileType::Fifo,
            NodeKind::Socket => FileType::Socket,
            NodeKind::CharDevice => FileType::CharacterDevice,
            NodeKind::BlockDevice => FileType::BlockDevice,
        };
        let dev = match kind {
            NodeKind::CharDevice | NodeKind::BlockDevice => rdev,
            _ => 0,
        };
        rfs::mknodat(
            &*loc.dir,
            &*loc.name,
            file_type,
            Mode::from_raw_mode(CREATE_MODE),
            dev,
        )
        .map_err(|e| ctx.fail(path, e))?;
        rfs::chownat(&*loc.dir, &*loc.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx.fail(path, e))?;
        self.chmod_special(ctx, &loc, mode)?;
        self.mark_dir(ctx, &loc)
    }

    fn mkdir(
        &mut self,
        ctx: Ctx,
        path: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(), ApplyError> {
        let loc = self.locate(ctx, path)?;
        self.cache.forget_path(path);
        rfs::mkdirat(&*loc.dir, &*loc.name, Mode::from_raw_mode(CREATE_DIR_MODE))
            .map_err(|e| ctx.fail(path, e))?;
        let fd = self.open_final(ctx, &loc, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let (uid, gid) = owner(Some(uid), Some(gid));
        rfs::fchown(&fd, uid, gid).map_err(|e| ctx.fail(path, e))?;
        rfs::fchmod(&fd, perm(mode)).map_err(|e| ctx.fail(path, e))?;
        let id = InodeId::of(&self.stat_fd(ctx, &fd, path)?);
        self.dirty.dir(id, &Arc::new(fd), false);
        self.mark_dir(ctx, &loc)
    }

    fn symlink(
        &mut self,
        ctx: Ctx,
        path: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<(), ApplyError> {
        let loc = self.locate(ctx, path)?;
        self.cache.forget_path(path);
        // The target is data: stored as is, never resolved here.
        rfs::symlinkat(target, &*loc.dir, &*loc.name).map_err(|e| ctx.fail(path, e))?;
        let (uid, gid) = owner(Some(uid), Some(gid));
        rfs::chownat(&*loc.dir, &*loc.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx.fail(path, e))?;
        self.mark_dir(ctx, &loc)
    }

    fn link(&mut self, ctx: Ctx, existing: &[u8], path: &[u8]) -> Result<(), ApplyError> {
        let old = self.locate(ctx, existing)?;
        let new = self.locate(ctx, path)?;
        self.cache.forget_path(path);
        // Without AT_SYMLINK_FOLLOW, linkat links a symlink itself, never its target.
        rfs::linkat(
            &*old.dir,
            &*old.name,
            &*new.dir,
            &*new.name,
            AtFlags::empty(),
        )
        .map_err(|e| ctx.fail(path, e))?;
        self.mark_dir(ctx, &new)
    }

    /// Waits for the direct writes in flight (see `direct.rs`): before anything that could
    /// observe them or be overwritten by them.
    fn settle(&mut self, ctx: Ctx) -> Result<(), ApplyError> {
        self.direct
            .settle()
            .map_err(|e| self.earlier_write_failed(ctx, e))
    }

    fn earlier_write_failed(&self, ctx: Ctx, e: Errno) -> ApplyError {
        io_error(
            format!(
                "before seq {} ({}): a direct write of an earlier record to the replica",
                ctx.seq, ctx.op
            ),
            e,
        )
    }

    fn write(
        &mut self,
        ctx: Ctx,
        file: &FileRef,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ApplyError> {
        let (fd, id) = self.writable(ctx, file)?;
        // The aligned part of a large write goes straight to the disk, made by the helper
        // while the next records are applied; the rest, if any, through the page cache.
        let direct_len = if data.len() >= STREAMING_WRITE_BYTES {
            self.direct.prefix(data.len(), offset)
        } else {
            0
        };
        if direct_len > 0 {
            self.direct
                .submit(&fd, id, &data[..direct_len], offset)
                .map_err(|e| self.earlier_write_failed(ctx, e))?;
        }
        // A buffered write must not race a direct one of the same file (nor find the
        // helper's O_DIRECT on the descriptor).
        if direct_len < data.len() && self.direct.busy_with(id) {
            self.settle(ctx)?;
        }
        let mut done = direct_len;
        while done < data.len() {
            let at = offset
                .checked_add(done as u64)
                .ok_or_else(|| ctx.fail(&describe(file), Errno::FBIG))?;
            match rustix::io::pwrite(&*fd, &data[done..], at) {
                Ok(0) => return Err(ctx.fail(&describe(file), Errno::IO)),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(ctx.fail(&describe(file), e)),
            }
        }
        let buffered = data.len() - direct_len;
        if buffered > 0 && (self.dirty.overflow || data.len() >= STREAMING_WRITE_BYTES) {
            // A flush comes next (a syncfs after a resync, an fsync after a stream of large
            // writes): start writing now, while the data is still arriving, instead of all
            // at once then. With this, an initial sync of 2 GiB took 3.0 s instead of 3.9 s
            // (the disk wrote while it read; the final flush fell from 260-310 ms to about
            // 60 ms). Small writes are left to the kernel: they are the ones rewritten soon.
            self.writeback
                .kick(&fd, offset + direct_len as u64, buffered as u64);
        }
        self.dirty.file(id, &fd, false);
        Ok(())
    }

    fn unlink(&mut self, ctx: Ctx, path: &[u8], orphan: Option<u64>) -> Result<(), ApplyError> {
        let loc = self.locate(ctx, path)?;
        let st = self.stat_at(ctx, &loc)?;
        if kind_of(&st) == FileType::Directory {
            return Err(ctx.fail(path, Errno::ISDIR));
        }
        self.cache.forget_path(path);
        match orphan {
            Some(id) => {
                // Park the inode instead of freeing it: the active still writes to it.
                // NOREPLACE: an id still in use means the stream and the replica disagree.
                let parked = self.orphan_loc(id);
                rfs::renameat_with(
                    &*loc.dir,
                    &*loc.name,
                    &*parked.dir,
                    &*parked.name,
                    RenameFlags::NOREPLACE,
                )
                .map_err(|e| ctx.fail(path, e))?;
                self.mark_orphans();
            }
            None => {
                rfs::unlinkat(&*loc.dir, &*loc.name, AtFlags::empty())
                    .map_err(|e| ctx.fail(path, e))?;
                if st.stx_nlink <= 1 {
                    // Gone for good: no point making its data durable.
                    self.dirty.forget_file(InodeId::of(&st));
                }
            }
        }
        self.mark_dir(ctx, &loc)
    }

    fn rename(
        &mut self,
        ctx: Ctx,
        from: &[u8],
        to: &[u8],
        flags: RenameFlags,
        orphan: Option<u64>,
    ) -> Result<(), ApplyError> {
        let src = self.locate(ctx, from)?;
        let dst = self.locate(ctx, to)?;
        self.cache.forget_path(from);
        self.cache.forget_path(to);
        match orphan {
            Some(id) => {
                if kind_of(&self.stat_at(ctx, &dst)?) == FileType::Directory {
                    return Err(ctx.fail(to, Errno::ISDIR));
                }
                let parked = self.orphan_loc(id);
                rfs::renameat_with(
                    &*dst.dir,
                    &*dst.name,
                    &*parked.dir,
                    &*parked.name,
                    RenameFlags::NOREPLACE,
                )
                .map_err(|e| ctx.fail(to, e))?;
                if let Err(e) =
                    rfs::renameat_with(&*src.dir, &*src.name, &*dst.dir, &*dst.name, flags)
                {
                    // Put the parked inode back, so a failed rename leaves `to` in place.
                    if let Err(undo) = rfs::renameat_with(
                        &*parked.dir,
                        &*parked.name,
                        &*dst.dir,
                        &*dst.name,
                        RenameFlags::NOREPLACE,
                    ) {
                        tracing::warn!(
                            seq = ctx.seq,
                            orphan = id,
                            error = %undo,
                            "could not restore a parked inode after a failed rename"
                        );
                    }
                    return Err(ctx.fail(from, e));
                }
                self.mark_orphans();
            }
            None => {
                rfs::renameat_with(&*src.dir, &*src.name, &*dst.dir, &*dst.name, flags)
                    .map_err(|e| ctx.fail(from, e))?;
            }
        }
        self.mark_dir(ctx, &src)?;
        self.mark_dir(ctx, &dst)
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ctx: Ctx,
        file: &FileRef,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    ) -> Result<(), ApplyError> {
        let chown = uid.is_some() || gid.is_some();
        let utimes = atime.is_some() || mtime.is_some();
        if !chown && mode.is_none() && !utimes {
            return Ok(());
        }
        let (uid, gid) = owner(uid, gid);
        let times = Timestamps {
            last_access: rustix_time(atime),
            last_modification: rustix_time(mtime),
        };
        let shown = describe(file);
        let (fd, id, is_dir) = match self.target(ctx, file)? {
            Target::File { fd, id } => (fd, id, false),
            Target::Dir { fd, id } => (fd, id, true),
            Target::Other { loc, kind } => {
                // Linux symlinks have no mode of their own; capture cannot produce this.
                if mode.is_some() && kind == FileType::Symlink {
                    return Err(ctx.fail(&shown, Errno::OPNOTSUPP));
                }
                if chown {
                    rfs::chownat(&*loc.dir, &*loc.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ctx.fail(&shown, e))?;
                }
                if let Some(mode) = mode {
                    self.chmod_special(ctx, &loc, mode)?;
                }
                if utimes {
                    rfs::utimensat(&*loc.dir, &*loc.name, &times, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| ctx.fail(&shown, e))?;
                }
                // Not openable to fsync: its parent's fsync carries it (see the crate docs).
                return self.mark_dir(ctx, &loc);
            }
        };
        // Owner before mode: chown clears setuid/setgid bits the mode may set.
        if chown {
            rfs::fchown(&*fd, uid, gid).map_err(|e| ctx.fail(&shown, e))?;
        }
        if let Some(mode) = mode {
            rfs::fchmod(&*fd, perm(mode)).map_err(|e| ctx.fail(&shown, e))?;
        }
        if utimes {
            rfs::futimens(&*fd, &times).map_err(|e| ctx.fail(&shown, e))?;
        }
        if is_dir {
            self.dirty.dir(id, &fd, false);
        } else {
            self.dirty.file(id, &fd, true);
        }
        Ok(())
    }

    /// Runs an xattr change on a regular file or directory. Symlinks and special files are
    /// not supported: they cannot be opened safely, `user.*` xattrs are not allowed on them
    /// anyway, and acting on them by name would need a path through /proc.
    fn on_xattrs(
        &mut self,
        ctx: Ctx,
        file: &FileRef,
        change: impl FnOnce(&OwnedFd) -> rustix::io::Result<()>,
    ) -> Result<(), ApplyError> {
        let shown = describe(file);
        match self.target(ctx, file)? {
            Target::File { fd, id } => {
                change(&fd).map_err(|e| ctx.fail(&shown, e))?;
                self.dirty.file(id, &fd, true);
            }
            Target::Dir { fd, id } => {
                change(&fd).map_err(|e| ctx.fail(&shown, e))?;
                self.dirty.dir(id, &fd, false);
            }
            Target::Other { .. } => return Err(ctx.fail(&shown, Errno::OPNOTSUPP)),
        }
        Ok(())
    }

    fn drop_orphan(&mut self, ctx: Ctx, id: u64) -> Result<(), ApplyError> {
        self.cache.forget_orphan(id);
        let loc = self.orphan_loc(id);
        let st = self.stat_at(ctx, &loc)?;
        if kind_of(&st) == FileType::Directory {
            return Err(ctx.fail(&loc.shown, Errno::ISDIR));
        }
        rfs::unlinkat(&*loc.dir, &*loc.name, AtFlags::empty())
            .map_err(|e| ctx.fail(&loc.shown, e))?;
        if st.stx_nlink <= 1 {
            self.dirty.forget_file(InodeId::of(&st));
        }
        self.mark_orphans();
        Ok(())
    }

    /// Sets the modification time an op left on the active, leaving atime alone and never
    /// following a symlink (a symlink's own mtime is set).
    fn set_mtime(&mut self, ctx: Ctx, file: &FileRef, time: Timespec) -> Result<(), ApplyError> {
        // A direct write moves its file's mtime when it lands.
        self.settle(ctx)?;
        let times = Timestamps {
            last_access: rustix_time(None),
            last_modification: rustix_time(Some(time)),
        };
        if matches!(file, FileRef::Path(p) if p.is_empty()) {
            return rfs::futimens(&*self.root, &times).map_err(|e| ctx.fail(b"", e));
        }
        // The file just written is usually cached: no path walk for its mtime.
        if let Some((fd, _)) = self.cache.get(file) {
            return rfs::futimens(&*fd, &times).map_err(|e| ctx.fail(&describe(file), e));
        }
        let loc = self.locate_ref(ctx, file)?;
        rfs::utimensat(&*loc.dir, &*loc.name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx.fail(&loc.shown, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn applier_can_move_to_a_worker_thread() {
        assert_send::<Applier>();
    }

    fn record(op: Op) -> Record {
        Record {
            seq: 1,
            op,
            mtimes: vec![],
        }
    }

    #[test]
    fn handles_reopen_only_regular_files_of_the_replica() {
        // open_by_handle_at needs CAP_DAC_READ_SEARCH.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP handles_reopen_only_regular_files_of_the_replica: needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let (root, orphans) = (tmp.path().join("root"), tmp.path().join("orphans"));
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::create_dir(&orphans).expect("mkdir");
        std::fs::write(root.join("f"), b"content").expect("write");
        std::fs::create_dir(root.join("d")).expect("mkdir");
        let applier = Applier::open(&root, &orphans).expect("open");
        let file = std::fs::File::open(root.join("f")).expect("open f");
        let handle = handle::handle_of(file.as_fd()).expect("handle of f");
        let fd = applier.open_handle(&handle).expect("reopen f");
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut read)
            .expect("read through the handle");
        assert_eq!(read, b"content");
        let dir = std::fs::File::open(root.join("d")).expect("open d");
        let handle = handle::handle_of(dir.as_fd()).expect("handle of d");
        assert!(matches!(
            applier.open_handle(&handle),
            Err(ApplyError::Refused { .. })
        ));
        let garbage = LocalHandle {
            handle_type: handle.handle_type,
            bytes: vec![0xff; 200],
        };
        assert!(applier.open_handle(&garbage).is_err());
    }

    #[test]
    fn malformed_fields_fail_the_record_check() {
        let bad = [
            record(Op::Rename {
                from: b"a".to_vec(),
                to: b"b".to_vec(),
                flags: 3,
                orphan: None,
            }),
            record(Op::Rename {
                from: b"a".to_vec(),
                to: b"b".to_vec(),
                flags: 4,
                orphan: None,
            }),
            record(Op::Rename {
                from: b"a".to_vec(),
                to: b"b".to_vec(),
                flags: 2,
                orphan: Some(1),
            }),
            record(Op::SetXattr {
                file: FileRef::Path(b"a".to_vec()),
                name: b"user.a\0b".to_vec(),
                value: vec![],
                flags: 0,
            }),
            record(Op::SetXattr {
                file: FileRef::Path(b"a".to_vec()),
                name: b"user.a".to_vec(),
                value: vec![],
                flags: 8,
            }),
            record(Op::Symlink {
                path: b"a".to_vec(),
                target: vec![],
                uid: 0,
                gid: 0,
            }),
            record(Op::Mkdir {
                path: b"a".to_vec(),
                mode: 0o755,
                uid: u32::MAX,
                gid: 0,
            }),
            record(Op::SetAttr {
                file: FileRef::Orphan(1),
                mode: None,
                uid: None,
                gid: None,
                atime: None,
                mtime: Some(Timespec {
                    sec: 0,
                    nsec: 1_073_741_822, // UTIME_OMIT
                }),
            }),
            Record {
                seq: 1,
                op: Op::DropOrphan { orphan: 1 },
                mtimes: vec![(FileRef::Path(b"a/../..".to_vec()), Timespec::default())],
            },
        ];
        for r in &bad {
            assert!(check_record(r, None).is_err(), "{r:?}");
        }
        let root_mtime = Record {
            seq: 1,
            op: Op::DropOrphan { orphan: 1 },
            mtimes: vec![(FileRef::Path(vec![]), Timespec::default())],
        };
        assert!(check_record(&root_mtime, None).is_ok());
    }
}
