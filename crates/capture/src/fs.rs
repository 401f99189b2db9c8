//! The FUSE filesystem: performs every request on the backing directory and records each
//! mutating one in the journal, in the order the changes took effect.
//!
//! Locks, always taken in this order when nested:
//! 1. `order` (mutex): held across the backing syscall and `Journal::record` of every
//!    mutating op, so sequence numbers follow the order in which changes took effect.
//!    Reads, lookups and other non-mutating requests never take it.
//! 2. `ns` (rwlock): taken for writing by ops that change existing names (unlink, rmdir,
//!    rename), for reading by non-mutating requests that resolve a path. Without it a
//!    lookup racing a rename of an ancestor could resolve a stale path.
//! 3. `table` (mutex): the inode table, held briefly, never across a syscall that can block
//!    (except the passthrough backing registration, which is one ioctl).
//! 4. `handles` (rwlock): open file and directory handles by id.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Condvar, Mutex, RwLock};
use tracing::{debug, info, warn};
use understudy_oplog::{FileRef, Journal, NodeKind, Op, Timespec};

use crate::durable::Durability;
use crate::sys::{self, Root, XattrTarget};
use crate::table::{Key, Table};
use crate::{ReadPassthrough, Stats};

/// Entry and attribute cache lifetime. Only this filesystem changes the backing directory
/// while it is mounted, and the kernel updates its caches from our replies, so caching is
/// coherent; the TTL only bounds the damage if someone edits the backing dir directly.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request (and so the largest `Op::Write`).
pub(crate) const MAX_WRITE: u32 = 1 << 20;

/// Paths in ops must fit the oplog codec (PATH_MAX). The backing syscalls enforce this for
/// everything they resolve; fd-based ops check it explicitly.
const MAX_PATH: usize = 4096;
/// Writes at least this large are part of a stream: their pages are sent to disk as soon as
/// they are written (see `do_write`).
const STREAMING_WRITE_BYTES: usize = 256 << 10;

/// How long a writable open waits for passthrough readers of the same file to close before
/// it is refused. The kernel sends RELEASE asynchronously, so a reader that already closed
/// can still be counted for a moment.
const PASSTHROUGH_RELEASE_WAIT: Duration = Duration::from_millis(200);

struct FileH {
    fd: OwnedFd,
    node: u64,
    /// Present for passthrough opens; keeps the inode's backing id registered.
    backing: Option<Arc<BackingId>>,
    /// A write-only open served with `FOPEN_DIRECT_IO` (see [`direct_io_for`]).
    direct: bool,
}

/// True for opens served with `FOPEN_DIRECT_IO`: write-only ones. Their writes bypass the
/// mount's page cache, so the data is copied once, from the writer's buffer to ours, instead
/// of into a page-cache copy of the file first, which nothing reads: a write-only descriptor
/// can neither read nor be mapped. In `perf` of a 2 GiB replicated write that copy was 16 % of
/// the machine's CPU, the largest single cost. Pages other (cached) opens hold are invalidated
/// after each such write (`do_write`), so readers never see stale data.
fn direct_io_for(flags: i32) -> bool {
    flags & libc::O_ACCMODE == libc::O_WRONLY
}

struct DirH {
    fd: OwnedFd,
    node: u64,
    stream: Mutex<DirStream>,
}

enum Handle {
    File(FileH),
    Dir(DirH),
}

impl Handle {
    fn fd(&self) -> RawFd {
        match self {
            Handle::File(f) => f.fd.as_raw_fd(),
            Handle::Dir(d) => d.fd.as_raw_fd(),
        }
    }
}

/// Buffered `getdents64` state of one open directory.
struct DirStream {
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// The kernel's offset for the next entry in `buf` (the `d_off` of the last one sent).
    cookie: i64,
}

/// What a node-addressed (no file handle) mutating op acts on.
enum Target {
    Path(Vec<u8>),
    Fd(Arc<Handle>),
}

impl Target {
    fn obj(&self) -> Obj<'_> {
        match self {
            Target::Path(p) => Obj::Path(p),
            Target::Fd(h) => Obj::Fd(h.fd()),
        }
    }
}

/// A borrowed [`Target`]: a path under the root or an open descriptor.
#[derive(Clone, Copy)]
enum Obj<'a> {
    Path(&'a [u8]),
    Fd(RawFd),
}

pub(crate) struct CaptureFs {
    root: Root,
    journal: Arc<dyn Journal>,
    /// Shared with [`crate::CaptureMount::order_lock`], so a resync can read the backing
    /// directory at an exact point of the sequence.
    order: Arc<Mutex<()>>,
    ns: RwLock<()>,
    table: Mutex<Table>,
    /// Signalled whenever a file handle is released (see `open`).
    released: Condvar,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    policy: ReadPassthrough,
    passthrough: AtomicBool,
    durable: Arc<Durability>,
    durable_thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    /// Set once mounted: invalidates the kernel's cached pages after direct writes.
    notifier: Arc<OnceLock<Notifier>>,
}

thread_local! {
    /// Per-worker read buffer, reused so reads do not allocate.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An fsync's answer: EIO when durability could not be promised (this node stopped serving
/// while it waited), which is what a disk that failed a flush would answer.
fn reply_durable(reply: ReplyEmpty, durable: bool) {
    if durable {
        reply.ok()
    } else {
        reply.error(Errno::EIO)
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn mtime(st: &libc::stat) -> Timespec {
    Timespec {
        sec: st.st_mtime,
        nsec: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
    }
}

fn atime(st: &libc::stat) -> Timespec {
    Timespec {
        sec: st.st_atime,
        nsec: st.st_atime_nsec.clamp(0, 999_999_999) as u32,
    }
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

fn timespec_of(t: TimeOrNow) -> libc::timespec {
    match t {
        TimeOrNow::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                // Before the epoch: floor to whole seconds, then add the positive nanos.
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    libc::timespec {
                        tv_sec: -secs,
                        tv_nsec: 0,
                    }
                } else {
                    libc::timespec {
                        tv_sec: -secs - 1,
                        tv_nsec: i64::from(1_000_000_000 - d.subsec_nanos()),
                    }
                }
            }
        },
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn attr(id: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        // FUSE carries the kernel's 32-bit encoding, which equals glibc's dev_t for every
        // major < 4096 and minor < 2^20.
        rdev: st.st_rdev as u32,
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
        flags: 0,
    }
}

/// Flags for opening the backing file of a FUSE open. Creation and truncation were already
/// handled (create / setattr); O_APPEND is dropped because the kernel sends explicit offsets
/// and pwrite on an O_APPEND descriptor would ignore them; O_DIRECT would impose alignment
/// on our buffers; O_SYNC/O_DSYNC are honoured by the FUSE_FSYNC the kernel sends after
/// each such write, which keeps the disk flush out of the order lock.
fn backing_flags(flags: i32) -> i32 {
    let strip = libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_DIRECT
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_PATH
        | libc::O_TMPFILE
        | libc::O_DIRECTORY
        | libc::O_ASYNC;
    flags & !strip
}

/// Decodes the kernel's 32-bit device number into glibc's dev_t.
fn decode_rdev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

fn check_path_len(p: &[u8]) -> Result<(), Errno> {
    if p.len() >= MAX_PATH {
        Err(Errno::ENAMETOOLONG)
    } else {
        Ok(())
    }
}

impl CaptureFs {
    pub(crate) fn new(
        backing: &Path,
        journal: Arc<dyn Journal>,
        policy: ReadPassthrough,
        stats: Arc<Stats>,
    ) -> io::Result<CaptureFs> {
        let root = Root::new(&sys::cstring(backing.as_os_str().as_bytes())?)?;
        let st = sys::fstat(root.raw())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let (durable, durable_thread) = Durability::start(Arc::clone(&journal))?;
        Ok(CaptureFs {
            root,
            journal,
            order: Arc::new(Mutex::new(())),
            ns: RwLock::new(()),
            table: Mutex::new(Table::new(Key::of(&st))),
            released: Condvar::new(),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            policy,
            passthrough: AtomicBool::new(false),
            durable,
            durable_thread: Some(durable_thread),
            stats,
            notifier: Arc::new(OnceLock::new()),
        })
    }

    /// Where the session's notifier goes once the session exists.
    pub(crate) fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        Arc::clone(&self.notifier)
    }

    pub(crate) fn root_fd(&self) -> RawFd {
        self.root.raw()
    }

    pub(crate) fn order_lock(&self) -> Arc<Mutex<()>> {
        Arc::clone(&self.order)
    }

    fn record(&self, op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64 {
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.journal.record(op, mtimes)
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.read().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The path of a node, for requests that resolve it (caller holds `ns` or `order`).
    fn path(&self, id: INodeNo) -> Result<Vec<u8>, Errno> {
        self.table.lock().path(id.0).ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<(Vec<u8>, Vec<u8>), Errno> {
        let t = self.table.lock();
        let dir = t.path(parent.0).ok_or(Errno::ENOENT)?;
        let child = t.child_path(parent.0, name).ok_or(Errno::ENOENT)?;
        check_path_len(&child)?;
        Ok((child, dir))
    }

    /// How ops name this node; refuses (before anything is done) when it cannot be named.
    fn file_ref(&self, id: u64) -> Result<FileRef, Errno> {
        match self.table.lock().file_ref(id) {
            Some(FileRef::Path(p)) => {
                check_path_len(&p)?;
                Ok(FileRef::Path(p))
            }
            Some(r) => Ok(r),
            None => Err(Errno::ENOENT),
        }
    }

    /// What a node-addressed op acts on: its path, or else one of its open descriptors (an
    /// orphan has no path).
    fn target(&self, id: INodeNo, fh: Option<FileHandle>) -> Result<Target, Errno> {
        if let Some(fh) = fh {
            if let Ok(h) = self.handle(fh) {
                return Ok(Target::Fd(h));
            }
        }
        let t = self.table.lock();
        if let Some(p) = t.path(id.0) {
            return Ok(Target::Path(p));
        }
        let fh = t
            .get(id.0)
            .and_then(|n| n.opens.handles.first().copied())
            .ok_or(Errno::ENOENT)?;
        drop(t);
        self.handle(FileHandle(fh)).map(Target::Fd)
    }

    fn stat_target(&self, t: &Target) -> io::Result<libc::stat> {
        self.stat_obj(t.obj())
    }

    fn stat_obj(&self, o: Obj<'_>) -> io::Result<libc::stat> {
        match o {
            Obj::Path(p) => self.root.lstat(p),
            Obj::Fd(fd) => sys::fstat(fd),
        }
    }

    /// The mtime entry for a path, if it can still be read.
    fn mtime_at(&self, rel: &[u8]) -> Option<(FileRef, Timespec)> {
        self.root
            .lstat(rel)
            .ok()
            .map(|st| (FileRef::Path(rel.to_vec()), mtime(&st)))
    }

    /// Gives a new node its creator's ownership and exact mode. We create as root, so without
    /// this every file would be root's, and our own umask would apply instead of the caller's.
    /// In a set-group-ID directory the group is inherited (the backing fs already did that),
    /// and a new subdirectory inherits the set-group-ID bit too. Only what differs is changed:
    /// a root caller whose umask matches ours costs one stat, not chown + chmod + stat (a
    /// tenth of the syscalls of a create).
    fn set_owner_and_mode(
        &self,
        target: Obj<'_>,
        req: &Request,
        parent: &libc::stat,
        mode: Option<u32>,
    ) -> io::Result<libc::stat> {
        let st = self.stat_obj(target)?;
        let setgid_dir = parent.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_dir { u32::MAX } else { req.gid() };
        let chown = st.st_uid != req.uid() || (!setgid_dir && st.st_gid != req.gid());
        if chown {
            match target {
                Obj::Path(p) => self.root.chown(p, req.uid(), gid)?,
                Obj::Fd(fd) => sys::fchown(fd, req.uid(), gid)?,
            }
        }
        // chown may clear set-ID bits, so the mode goes second, and always after a chown.
        let chmod = mode.filter(|&m| chown || st.st_mode & 0o7777 != m);
        if let Some(mode) = chmod {
            match target {
                Obj::Path(p) => self.root.chmod(p, mode)?,
                Obj::Fd(fd) => sys::fchmod(fd, mode)?,
            }
        }
        if chown || chmod.is_some() {
            self.stat_obj(target)
        } else {
            Ok(st)
        }
    }

    /// The parent directory's stat after a node was made in it (for the set-group-ID rule and
    /// the directory's new mtime); on failure the node is removed again, so nothing exists
    /// locally that the journal does not know about.
    fn parent_after_create(
        &self,
        dir_path: &[u8],
        path: &[u8],
        dir: bool,
    ) -> Result<libc::stat, Errno> {
        self.root.lstat(dir_path).map_err(|e| {
            let _ = self.root.unlink(path, dir);
            errno(e)
        })
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds an entry the kernel will now hold, returning its node id.
    fn remember(&self, parent: INodeNo, name: &OsStr, st: &libc::stat) -> u64 {
        let mut t = self.table.lock();
        let id = t.intern(Key::of(st));
        t.add_link(id, parent.0, name);
        t.add_lookup(id);
        id
    }

    // ---- node creation ----

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        dir: bool,
    ) -> Result<(u64, libc::stat), Errno> {
        let _order = self.order.lock();
        let (path, dir_path) = self.child_path(parent, name)?;
        let mut perm = mode & !umask & 0o7777;
        let kind = mode & libc::S_IFMT;
        let node_kind = match kind {
            _ if dir => None,
            libc::S_IFREG | 0 => Some(NodeKind::Regular),
            libc::S_IFIFO => Some(NodeKind::Fifo),
            libc::S_IFCHR => Some(NodeKind::CharDevice),
            libc::S_IFBLK => Some(NodeKind::BlockDevice),
            libc::S_IFSOCK => Some(NodeKind::Socket),
            _ => return Err(Errno::EINVAL),
        };
        if dir {
            self.root.mkdir(&path, perm)?;
        } else {
            let kind = if kind == 0 { libc::S_IFREG } else { kind };
            self.root.mknod(&path, kind | perm, decode_rdev(rdev))?;
        }
        let parent_st = self.parent_after_create(&dir_path, &path, dir)?;
        if dir && parent_st.st_mode & libc::S_ISGID != 0 {
            perm |= libc::S_ISGID;
        }
        let st = match self.set_owner_and_mode(Obj::Path(&path), req, &parent_st, Some(perm)) {
            Ok(st) => st,
            Err(e) => {
                // Undo, so nothing exists locally that the journal does not know about.
                let _ = self.root.unlink(&path, dir);
                return Err(errno(e));
            }
        };
        let id = self.remember(parent, name, &st);
        let op = match node_kind {
            None => Op::Mkdir {
                path: path.clone(),
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
            },
            Some(kind) => Op::Mknod {
                path: path.clone(),
                kind,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                rdev: st.st_rdev,
            },
        };
        let mtimes = vec![
            (FileRef::Path(path), mtime(&st)),
            (FileRef::Path(dir_path), mtime(&parent_st)),
        ];
        self.record(op, mtimes);
        Ok((id, st))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(u64, u64, libc::stat, FopenFlags), Errno> {
        let _order = self.order.lock();
        let (path, dir_path) = self.child_path(parent, name)?;
        let perm = mode & !umask & 0o7777;
        // O_EXCL: the kernel only sends CREATE for a name it found absent (holding the
        // directory lock), and we must know that we created the file to record Mknod.
        let fd = self.root.open(
            &path,
            backing_flags(flags) | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            perm,
        )?;
        let parent_st = self.parent_after_create(&dir_path, &path, false)?;
        let st = match self.set_owner_and_mode(Obj::Fd(fd.as_raw_fd()), req, &parent_st, Some(perm))
        {
            Ok(st) => st,
            Err(e) => {
                let _ = self.root.unlink(&path, false);
                return Err(errno(e));
            }
        };
        let id = self.remember(parent, name, &st);
        let fh = self.new_fh();
        let direct = direct_io_for(flags);
        self.table.lock().add_handle(id, fh, None, direct);
        self.handles.write().insert(
            fh,
            Arc::new(Handle::File(FileH {
                fd,
                node: id,
                backing: None,
                direct,
            })),
        );
        let open_flags = self.fuse_open_flags(direct);
        let mtimes = vec![
            (FileRef::Path(path.clone()), mtime(&st)),
            (FileRef::Path(dir_path), mtime(&parent_st)),
        ];
        self.record(
            Op::Mknod {
                path,
                kind: NodeKind::Regular,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                rdev: 0,
            },
            mtimes,
        );
        Ok((id, fh, st, open_flags))
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> Result<(u64, libc::stat), Errno> {
        let _order = self.order.lock();
        let (path, dir_path) = self.child_path(parent, name)?;
        let link_target = target.as_os_str().as_bytes().to_vec();
        self.root.symlink(&link_target, &path)?;
        let parent_st = self.parent_after_create(&dir_path, &path, false)?;
        let st = match self.set_owner_and_mode(Obj::Path(&path), req, &parent_st, None) {
            Ok(st) => st,
            Err(e) => {
                let _ = self.root.unlink(&path, false);
                return Err(errno(e));
            }
        };
        let id = self.remember(parent, name, &st);
        let mtimes = vec![
            (FileRef::Path(path.clone()), mtime(&st)),
            (FileRef::Path(dir_path), mtime(&parent_st)),
        ];
        self.record(
            Op::Symlink {
                path,
                target: link_target,
                uid: st.st_uid,
                gid: st.st_gid,
            },
            mtimes,
        );
        Ok((id, st))
    }

    fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<libc::stat, Errno> {
        let _order = self.order.lock();
        // An inode whose every known name is gone cannot be named in Op::Link.
        let existing = self.path(ino)?;
        let (path, dir_path) = self.child_path(newparent, newname)?;
        self.root.link(&existing, &path)?;
        let st = self.root.lstat(&path)?;
        {
            let mut t = self.table.lock();
            t.add_link(ino.0, newparent.0, newname);
            t.add_lookup(ino.0);
        }
        let mut mtimes = vec![(FileRef::Path(path.clone()), mtime(&st))];
        mtimes.extend(self.mtime_at(&dir_path));
        self.record(Op::Link { existing, path }, mtimes);
        Ok(st)
    }

    // ---- removal and renaming ----

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let _order = self.order.lock();
        let _ns = self.ns.write();
        let (path, dir_path) = self.child_path(parent, name)?;
        let st = self.root.lstat(&path)?;
        self.root.unlink(&path, dir)?;
        let orphan = {
            let mut t = self.table.lock();
            let removed = t.remove_name(parent.0, name);
            let id = removed.node.or_else(|| t.by_key(Key::of(&st)));
            if let Some(id) = id {
                let open = t.get(id).is_some_and(|n| !n.opens.handles.is_empty());
                if dir || (st.st_nlink <= 1 && !open) {
                    t.mark_dead(id);
                }
            }
            removed.orphan
        };
        let mtimes = self.mtime_at(&dir_path).into_iter().collect();
        let op = if dir {
            Op::Rmdir { path }
        } else {
            Op::Unlink { path, orphan }
        };
        self.record(op, mtimes);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        // Only the flags the passive can replay. RENAME_WHITEOUT (overlayfs on its upper
        // layer) would leave a whiteout node behind that apply refuses to recreate, breaking
        // the stream; EINVAL is how a filesystem says it has no whiteouts, and overlayfs then
        // makes them by other means. Found by tests/model.rs, seed 2.
        if flags.bits() & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let _order = self.order.lock();
        let _ns = self.ns.write();
        let (from, from_dir) = self.child_path(parent, name)?;
        let (to, to_dir) = self.child_path(newparent, newname)?;
        let src = self.root.lstat(&from)?;
        let dst = self.root.lstat(&to).ok();
        self.root.rename(&from, &to, flags.bits())?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let same = dst.is_some_and(|d| Key::of(&d) == Key::of(&src));
        let mut orphan = None;
        {
            let mut t = self.table.lock();
            let (a, b) = ((parent.0, name), (newparent.0, newname));
            if same {
                // Two names of one inode: rename(2) does nothing.
            } else if exchange {
                t.exchange(a, b);
            } else {
                if let Some(d) = dst {
                    let removed = t.remove_name(newparent.0, newname);
                    orphan = removed.orphan;
                    if let Some(id) = removed.node.or_else(|| t.by_key(Key::of(&d))) {
                        let open = t.get(id).is_some_and(|n| !n.opens.handles.is_empty());
                        let is_dir = d.st_mode & libc::S_IFMT == libc::S_IFDIR;
                        if is_dir || (d.st_nlink <= 1 && !open) {
                            t.mark_dead(id);
                        }
                    }
                }
                t.move_link(a, b);
            }
        }
        let mut mtimes: Vec<(FileRef, Timespec)> = Vec::with_capacity(4);
        mtimes.extend(self.mtime_at(&from_dir));
        if to_dir != from_dir {
            mtimes.extend(self.mtime_at(&to_dir));
        }
        mtimes.extend(self.mtime_at(&to));
        if exchange {
            mtimes.extend(self.mtime_at(&from));
        }
        self.record(
            Op::Rename {
                from,
                to,
                flags: flags.bits(),
                orphan,
            },
            mtimes,
        );
        Ok(())
    }

    // ---- attributes ----

    #[allow(clippy::too_many_arguments)]
    /// What the kernel does to a file whose data changes, left to us by KILLPRIV_V2 (caller
    /// holds the order lock; the change is recorded like any other): clear the set-ID bits
    /// when `kill_setid` (the writer lacks CAP_FSETID; our own write on the backing file runs
    /// as root, which keeps them). The set-group-ID bit only counts with group execute, as
    /// in the kernel. File capabilities need nothing here: the backing filesystem drops
    /// `security.capability` on any data change, whoever writes, on both nodes alike.
    fn kill_privs(&self, fd: RawFd, file: &FileRef, kill_setid: bool) {
        if !kill_setid {
            return;
        }
        let Ok(st) = sys::fstat(fd) else { return };
        let mut mode = st.st_mode & 0o7777;
        mode &= !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        if mode != st.st_mode & 0o7777 && sys::fchmod(fd, mode).is_ok() {
            self.record(
                Op::SetAttr {
                    file: file.clone(),
                    mode: Some(mode),
                    uid: None,
                    gid: None,
                    atime: None,
                    mtime: None,
                },
                Vec::new(),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        req_uid: u32,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime_arg: Option<TimeOrNow>,
        mtime_arg: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<libc::stat, Errno> {
        let _order = self.order.lock();
        let target = self.target(ino, fh)?;
        let file = self.file_ref(ino.0)?;
        if let Some(size) = size {
            let opened;
            let fd = match &target {
                Target::Fd(h) => h.fd(),
                Target::Path(p) => {
                    // No truncateat(2); open without following a final symlink instead.
                    opened = self.root.open(
                        p,
                        libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                        0,
                    )?;
                    opened.as_raw_fd()
                }
            };
            sys::ftruncate(fd, size)?;
            let st = sys::fstat(fd)?;
            self.record(
                Op::Truncate {
                    file: file.clone(),
                    size,
                },
                vec![(file.clone(), mtime(&st))],
            );
            // The kernel leaves this to us (KILLPRIV_V2); it would clear set-ID bits for a
            // caller without CAP_FSETID, which we take to be anyone but root.
            self.kill_privs(fd, &file, req_uid != 0);
        }
        let owner = uid.is_some() || gid.is_some();
        if !(owner || mode.is_some() || atime_arg.is_some() || mtime_arg.is_some()) {
            return Ok(self.stat_target(&target)?);
        }
        let before = self.stat_target(&target)?;
        // Each change is made in turn; should a later one fail, the earlier ones happened
        // all the same, and are recorded before the error goes back: the passive must see
        // every change the backing directory saw.
        let (mut owner_done, mut times_done) = (false, false);
        let result = (|| -> Result<(), Errno> {
            if owner {
                let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
                match &target {
                    Target::Path(p) => self.root.chown(p, u, g)?,
                    Target::Fd(h) => sys::fchown(h.fd(), u, g)?,
                }
                owner_done = true;
            }
            if let Some(m) = mode {
                if before.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(Errno::EOPNOTSUPP);
                }
                match &target {
                    Target::Path(p) => self.root.chmod(p, m & 0o7777)?,
                    Target::Fd(h) => sys::fchmod(h.fd(), m & 0o7777)?,
                }
            }
            if atime_arg.is_some() || mtime_arg.is_some() {
                let omit = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                };
                let times = [
                    atime_arg.map_or(omit, timespec_of),
                    mtime_arg.map_or(omit, timespec_of),
                ];
                match &target {
                    Target::Path(p) => self.root.utimens(p, &times)?,
                    Target::Fd(h) => sys::futimens(h.fd(), &times)?,
                }
                times_done = true;
            }
            Ok(())
        })();
        let after = self.stat_target(&target)?;
        // Record what actually happened: "now" becomes the time the kernel stamped, and a
        // chown that cleared set-ID bits shows up as a mode change.
        let mode_changed = after.st_mode != before.st_mode || (mode.is_some() && result.is_ok());
        if owner_done || times_done || mode_changed {
            self.record(
                Op::SetAttr {
                    file: file.clone(),
                    mode: mode_changed.then_some(after.st_mode & 0o7777),
                    uid: uid.filter(|_| owner_done).map(|_| after.st_uid),
                    gid: gid.filter(|_| owner_done).map(|_| after.st_gid),
                    atime: atime_arg.filter(|_| times_done).map(|_| atime(&after)),
                    mtime: mtime_arg.filter(|_| times_done).map(|_| mtime(&after)),
                },
                vec![(file, mtime(&after))],
            );
        }
        result?;
        Ok(after)
    }

    fn do_getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<libc::stat, Errno> {
        let _ns = self.ns.read();
        let target = self.target(ino, fh)?;
        Ok(self.stat_target(&target)?)
    }

    // ---- xattrs ----

    fn xattr_call<T>(
        &self,
        target: &Target,
        f: impl FnOnce(&XattrTarget<'_>) -> io::Result<T>,
    ) -> Result<T, Errno> {
        match target {
            Target::Path(p) => {
                let proc = self.root.proc_path(p)?;
                Ok(f(&XattrTarget::Path(&proc))?)
            }
            Target::Fd(h) => Ok(f(&XattrTarget::Fd(h.fd()))?),
        }
    }

    /// Xattr changes are replicated for regular files and directories only: the passive
    /// cannot apply them to symlinks and special files (see `understudy-apply`), so they are
    /// refused here before anything changes, as a filesystem without xattrs there would.
    /// Root could otherwise set `trusted.*` or `security.*` on a symlink, which broke the
    /// stream (found by tests/model.rs, seed 1).
    fn check_xattr_target(&self, target: &Target) -> Result<(), Errno> {
        match self.stat_target(target)?.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    fn do_setxattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let cname = sys::cstring(name.as_bytes())?;
        let _order = self.order.lock();
        let target = self.target(ino, None)?;
        let file = self.file_ref(ino.0)?;
        self.check_xattr_target(&target)?;
        self.xattr_call(&target, |t| sys::setxattr(t, &cname, value, flags))?;
        let mtimes = self
            .stat_target(&target)
            .map(|st| vec![(file.clone(), mtime(&st))])
            .unwrap_or_default();
        self.record(
            Op::SetXattr {
                file,
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                flags,
            },
            mtimes,
        );
        Ok(())
    }

    fn do_removexattr(&self, ino: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let cname = sys::cstring(name.as_bytes())?;
        let _order = self.order.lock();
        let target = self.target(ino, None)?;
        let file = self.file_ref(ino.0)?;
        self.check_xattr_target(&target)?;
        self.xattr_call(&target, |t| sys::removexattr(t, &cname))?;
        let mtimes = self
            .stat_target(&target)
            .map(|st| vec![(file.clone(), mtime(&st))])
            .unwrap_or_default();
        self.record(
            Op::RemoveXattr {
                file,
                name: name.as_bytes().to_vec(),
            },
            mtimes,
        );
        Ok(())
    }

    /// getxattr / listxattr: `size` 0 asks for the needed size.
    fn xattr_read(
        &self,
        ino: INodeNo,
        size: u32,
        f: impl Fn(&XattrTarget<'_>, &mut [u8]) -> io::Result<usize>,
        reply: ReplyXattr,
    ) {
        let _ns = self.ns.read();
        let target = match self.target(ino, None) {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        match self.xattr_call(&target, |t| f(t, &mut buf)) {
            Ok(n) if size == 0 => reply.size(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(n) => reply.data(&buf[..n.min(buf.len())]),
            Err(e) => reply.error(e),
        }
    }

    // ---- open files ----

    fn do_open(&self, ino: INodeNo, flags: i32, reply: ReplyOpen) {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let bflags = backing_flags(flags);
        let fd = {
            let _ns = self.ns.read();
            match self.target(ino, None) {
                Ok(Target::Path(p)) => self.root.open(&p, bflags | libc::O_NOFOLLOW, 0),
                // An orphan (reached through /proc/<pid>/fd): reopen one of its descriptors.
                Ok(Target::Fd(h)) => sys::reopen(h.fd(), bflags),
                Err(e) => return reply.error(e),
            }
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => return reply.error(errno(e)),
        };
        let st = match sys::fstat(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => return reply.error(errno(e)),
        };
        let mut t = self.table.lock();
        match t.get(ino.0) {
            Some(n) if n.key == Key::of(&st) => {}
            Some(_) => {
                warn!(
                    ino = ino.0,
                    "backing file changed under the mount; refusing open"
                );
                return reply.error(Errno::ESTALE);
            }
            None => return reply.error(Errno::ENOENT),
        }
        // The kernel refuses a non-passthrough open of an inode that has passthrough opens
        // (and the reverse). Readers adapt (they fall back to FUSE reads below); a writer must
        // not get passthrough, so it waits briefly for readers to close and is otherwise
        // refused with ETXTBSY rather than the kernel's bare EIO.
        if writable {
            let deadline = Instant::now() + PASSTHROUGH_RELEASE_WAIT;
            while t.get(ino.0).is_some_and(|n| n.opens.passthrough > 0) {
                if self.released.wait_until(&mut t, deadline).timed_out() {
                    break;
                }
            }
            if t.get(ino.0).is_some_and(|n| n.opens.passthrough > 0) {
                debug!(ino = ino.0, "writable open refused: passthrough readers");
                return reply.error(Errno::ETXTBSY);
            }
        }
        let Some(node) = t.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let want_passthrough = !writable
            && self.passthrough.load(Ordering::Relaxed)
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            && node.opens.cached() == 0
            && match self.policy {
                ReadPassthrough::Never => false,
                ReadPassthrough::UnwritableFiles => st.st_mode & 0o222 == 0,
                ReadPassthrough::Always => true,
            };
        let backing = if want_passthrough {
            match node.backing.upgrade() {
                Some(b) => Some(b),
                None => match reply.open_backing(&fd) {
                    Ok(b) => Some(Arc::new(b)),
                    Err(e) => {
                        warn!(error = %e, "passthrough backing registration failed; using FUSE reads");
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
                        ) {
                            self.passthrough.store(false, Ordering::Relaxed);
                            self.stats.passthrough.store(false, Ordering::Relaxed);
                        }
                        None
                    }
                },
            }
        } else {
            None
        };
        let fh = self.new_fh();
        // Write-only, so never a passthrough open (those are read-only).
        let direct = direct_io_for(flags);
        t.add_handle(ino.0, fh, backing.as_ref(), direct);
        self.handles.write().insert(
            fh,
            Arc::new(Handle::File(FileH {
                fd,
                node: ino.0,
                backing: backing.clone(),
                direct,
            })),
        );
        drop(t);
        match backing {
            Some(b) => {
                self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                // KEEP_CACHE is not allowed with passthrough; NOFLUSH is (nothing to flush).
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b);
            }
            None => {
                let mut f = self.fuse_open_flags(direct);
                // Read-only handles have nothing to flush.
                if !writable {
                    f |= FopenFlags::FOPEN_NOFLUSH;
                }
                reply.opened(FileHandle(fh), f);
            }
        }
    }

    fn do_write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        kill_setid: bool,
    ) -> Result<usize, Errno> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Errno::EBADF);
        };
        // The one copy: the journal needs owned bytes. Made before taking the order lock to
        // keep the lock's hold time to the syscall and the record.
        let mut copy = data.to_vec();
        let order = self.order.lock();
        let file = self.file_ref(f.node)?;
        let n = sys::pwrite(f.fd.as_raw_fd(), data, offset)?;
        if n == 0 {
            return Ok(0);
        }
        copy.truncate(n);
        let mtimes = sys::fstat(f.fd.as_raw_fd())
            .map(|st| vec![(file.clone(), mtime(&st))])
            .unwrap_or_default();
        self.record(
            Op::Write {
                file: file.clone(),
                offset,
                data: copy,
            },
            mtimes,
        );
        self.kill_privs(f.fd.as_raw_fd(), &file, kill_setid);
        drop(order);
        if f.direct && self.table.lock().get(f.node).is_some_and(|n| n.page_cache) {
            // The kernel drops the range from the cache before it sends a direct write, but a
            // cached reader may have read the old bytes back in since. Dropping them again
            // now, after the write reached the backing file and before the writer is told it
            // is done, leaves no window: a read still in flight holds its page locked, and
            // the kernel waits for it before dropping the page.
            if let Some(notifier) = self.notifier.get() {
                if let Err(e) = notifier.inval_inode(INodeNo(f.node), offset as i64, n as i64) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        warn!(ino = f.node, error = %e, "cannot invalidate cached pages after a write");
                    }
                }
            }
        }
        if n >= STREAMING_WRITE_BYTES {
            // Part of a stream (a copy, a backup): its fsync comes later and would find all
            // of it still to write. Start now, while the next writes arrive.
            sys::start_writeback(f.fd.as_raw_fd(), offset, n as u64);
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Counts an open served through FUSE (not passthrough) and gives the flags of its reply.
    fn fuse_open_flags(&self, direct: bool) -> FopenFlags {
        self.stats.cached_opens.fetch_add(1, Ordering::Relaxed);
        if direct {
            self.stats.direct_opens.fetch_add(1, Ordering::Relaxed);
            // Not KEEP_CACHE: the open drops the file's cached pages, and each write drops
            // the ones read back in since (`do_write`).
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            // Keep the page cache across opens: every change goes through this mount, so the
            // kernel's cache is never stale.
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// True if the handle is a direct-I/O one (see [`direct_io_for`]).
    fn is_direct(&self, fh: FileHandle) -> bool {
        self.handle(fh)
            .is_ok_and(|h| matches!(&*h, Handle::File(f) if f.direct))
    }

    fn do_fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let Handle::File(f) = &*h else {
            return Err(Errno::EBADF);
        };
        let _order = self.order.lock();
        let file = self.file_ref(f.node)?;
        sys::fallocate(f.fd.as_raw_fd(), mode, offset, length)?;
        let mtimes = sys::fstat(f.fd.as_raw_fd())
            .map(|st| vec![(file.clone(), mtime(&st))])
            .unwrap_or_default();
        self.record(
            Op::Fallocate {
                file,
                mode,
                offset,
                len: length,
            },
            mtimes,
        );
        Ok(())
    }

    /// Local fsync (outside the order lock), then the barrier op. Returns its seq.
    fn do_fsync(&self, fh: FileHandle, datasync: bool) -> Result<u64, Errno> {
        let h = self.handle(fh)?;
        let node = match &*h {
            Handle::File(f) => f.node,
            Handle::Dir(d) => d.node,
        };
        // Record the barrier first, so the passive flushes while we flush locally: the two
        // disk flushes overlap instead of adding up. The barrier covers every op recorded
        // before it, which includes every write this fsync must cover.
        let seq = {
            let _order = self.order.lock();
            let file = self.file_ref(node)?;
            self.record(Op::Fsync { file, datasync }, Vec::new())
        };
        sys::fsync(h.fd(), datasync)?;
        Ok(seq)
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let fd = h.fd();
        let size = size as usize;
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.reserve(size);
            let mut filled = 0;
            // FUSE wants the full size except at end of file; pread may return less.
            while filled < size {
                let spare: &mut [MaybeUninit<u8>] = &mut buf.spare_capacity_mut()[..size - filled];
                match sys::pread(fd, spare, offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => {
                        filled += n;
                        // SAFETY: pread initialised the n bytes after the previous length.
                        unsafe { buf.set_len(filled) };
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return reply.error(errno(e)),
                }
            }
            self.stats.reads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .read_bytes
                .fetch_add(filled as u64, Ordering::Relaxed);
            reply.data(&buf[..filled]);
        });
    }

    fn do_release(&self, fh: FileHandle) {
        let Some(h) = self.handles.write().remove(&fh.0) else {
            return;
        };
        let Handle::File(f) = &*h else {
            return;
        };
        let orphan = self
            .table
            .lock()
            .remove_handle(f.node, fh.0, f.backing.is_some());
        self.released.notify_all();
        match orphan {
            Some(orphan) => {
                let nlink = sys::fstat(f.fd.as_raw_fd()).map_or(0, |st| st.st_nlink);
                let _order = self.order.lock();
                let mut t = self.table.lock();
                // A reopen through /proc may have raced in; then the orphan lives on.
                let last = t
                    .get(f.node)
                    .is_some_and(|n| n.opens.handles.is_empty() && n.orphan == Some(orphan));
                if last {
                    t.finish_orphan(f.node, nlink);
                    drop(t);
                    self.record(Op::DropOrphan { orphan }, Vec::new());
                }
            }
            None => self.table.lock().collect(f.node),
        }
    }

    // ---- directories ----

    fn do_opendir(&self, ino: INodeNo) -> Result<u64, Errno> {
        let fd = {
            let _ns = self.ns.read();
            let p = self.path(ino)?;
            self.root
                .open(&p, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?
        };
        let fh = self.new_fh();
        self.handles.write().insert(
            fh,
            Arc::new(Handle::Dir(DirH {
                fd,
                node: ino.0,
                stream: Mutex::new(DirStream {
                    buf: vec![0u8; 32 * 1024],
                    pos: 0,
                    len: 0,
                    cookie: 0,
                }),
            })),
        );
        Ok(fh)
    }

    fn do_readdir(&self, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir(d) = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        let fd = d.fd.as_raw_fd();
        let dir_dev = sys::fstat(fd).map_or(0, |st| st.st_dev);
        let mut s = d.stream.lock();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        if offset != s.cookie {
            // A seek (or rewinddir): restart the stream at the kernel's cookie.
            if let Err(e) = sys::lseek(fd, offset, libc::SEEK_SET) {
                return reply.error(errno(e));
            }
            s.pos = 0;
            s.len = 0;
            s.cookie = offset;
        }
        loop {
            if s.pos >= s.len {
                let DirStream { buf, .. } = &mut *s;
                match sys::getdents64(fd, buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        s.len = n;
                        s.pos = 0;
                    }
                    Err(e) => return reply.error(errno(e)),
                }
            }
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let Some(rec) = s.buf.get(s.pos..s.len) else {
                break;
            };
            let (Some(ino), Some(off), Some(reclen), Some(dtype)) =
                (rec.get(0..8), rec.get(8..16), rec.get(16..18), rec.get(18))
            else {
                return reply.error(Errno::EIO);
            };
            let d_ino = u64::from_ne_bytes(ino.try_into().unwrap_or([0; 8]));
            let d_off = i64::from_ne_bytes(off.try_into().unwrap_or([0; 8]));
            let reclen = usize::from(u16::from_ne_bytes(reclen.try_into().unwrap_or([0; 2])));
            let Some(name_field) = rec.get(19..reclen) else {
                return reply.error(Errno::EIO);
            };
            if reclen == 0 {
                return reply.error(Errno::EIO);
            }
            let name_len = name_field
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_field.len());
            let name = OsStr::from_bytes(&name_field[..name_len]);
            let kind = match *dtype {
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                libc::DT_FIFO => FileType::NamedPipe,
                libc::DT_CHR => FileType::CharDevice,
                libc::DT_BLK => FileType::BlockDevice,
                libc::DT_SOCK => FileType::Socket,
                _ => FileType::RegularFile,
            };
            // Report the node id the kernel knows this inode by, when it knows it, so d_ino
            // agrees with st_ino.
            let id = self
                .table
                .lock()
                .by_key(Key {
                    dev: dir_dev,
                    ino: d_ino,
                })
                .unwrap_or(d_ino.max(2));
            if reply.add(INodeNo(id), d_off as u64, kind, name) {
                // Full: this entry stays buffered for the next call.
                break;
            }
            s.pos += reclen;
            s.cookie = d_off;
        }
        reply.ok();
    }
}

impl Drop for CaptureFs {
    fn drop(&mut self) {
        self.durable.stop();
        if let Some(t) = self.durable_thread.take() {
            let _ = t.join();
        }
    }
}

impl Filesystem for CaptureFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        // Room for readahead of several files at once.
        let _ = config.set_max_background(64);
        // Lookups and readdirs in one directory may run in parallel (we are thread-safe), and
        // symlink targets never change in place, so the kernel may cache them.
        // KILLPRIV_V2: we clear set-ID bits and file capabilities on writes and truncates
        // ourselves (`kill_privs`). Without it the kernel asks GETXATTR security.capability
        // before every write: one more round trip to this process per write(2).
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if self.policy != ReadPassthrough::Never {
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
                // Depth 2 lets the backing directory itself live on a stacked filesystem
                // (overlayfs in a container); the cost is that nothing can stack on us.
                match config.set_max_stack_depth(2) {
                    Ok(_) => self.passthrough.store(true, Ordering::Relaxed),
                    Err(max) => {
                        let _ = config.set_max_stack_depth(max);
                        self.passthrough.store(max > 0, Ordering::Relaxed);
                    }
                }
            } else {
                info!("kernel does not offer FUSE passthrough; reads go through FUSE");
            }
        }
        self.stats
            .passthrough
            .store(self.passthrough.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    fn destroy(&mut self) {
        self.durable.stop();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _ns = self.ns.read();
        let r = self.child_path(parent, name).and_then(|(p, _)| {
            let st = self.root.lstat(&p)?;
            Ok((self.remember(parent, name, &st), st))
        });
        match r {
            Ok((id, st)) => reply.entry(&TTL, &attr(id, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    // batch_forget keeps fuser's default (one forget per node): fuser does not export the
    // type of its argument.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.table.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino, fh) {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(req.uid(), ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(st) => reply.attr(&TTL, &attr(ino.0, &st)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _ns = self.ns.read();
        match self
            .path(ino)
            .and_then(|p| self.root.readlink(&p).map_err(errno))
        {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.make_node(req, parent, name, mode, umask, rdev, false) {
            Ok((id, st)) => reply.entry(&TTL, &attr(id, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make_node(req, parent, name, mode, umask, 0, true) {
            Ok((id, st)) => reply.entry(&TTL, &attr(id, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.do_symlink(req, parent, link_name, target) {
            Ok((id, st)) => reply.entry(&TTL, &attr(id, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.do_link(ino, newparent, newname) {
            Ok(st) => reply.entry(&TTL, &attr(ino.0, &st), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.do_open(ino, flags.0, reply);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.do_read(fh, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Cached (write-through) O_SYNC / O_DSYNC handles and RWF_DSYNC writes need no barrier
        // here: the kernel follows each such write with FUSE_FSYNC before write(2) returns,
        // and `fsync` below records the `Fsync` and waits for durability.
        let kill_setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let n = match self.do_write(fh, offset, data, kill_setid) {
            Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
            Err(e) => return reply.error(e),
        };
        // A direct-I/O write is not followed by FUSE_FSYNC: the kernel passes the write's
        // O_SYNC / O_DSYNC (from the open or RWF_DSYNC) in its flags, and the barrier is ours.
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC);
        if sync != 0 && self.is_direct(fh) {
            // O_SYNC includes the O_DSYNC bit: a full sync only when O_SYNC's own bits are set.
            let datasync = sync & libc::O_SYNC != libc::O_SYNC;
            match self.do_fsync(fh, datasync) {
                Ok(seq) => self.durable.after(seq, move |durable| {
                    if durable {
                        reply.written(n)
                    } else {
                        reply.error(Errno::EIO)
                    }
                }),
                Err(e) => reply.error(e),
            }
            return;
        }
        reply.written(n)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Data reaches the backing file synchronously in write, so there is nothing to push.
        // ENOSYS tells the kernel so for good: it stops sending FLUSH on every close, which
        // spares each close(2) a round trip to this process.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsync(fh, datasync) {
            Ok(seq) => self
                .durable
                .after(seq, move |durable| reply_durable(reply, durable)),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            // Let the kernel cache listings across opens: it invalidates them itself on every
            // change that goes through this mount, which is every change.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.do_readdir(fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.write().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A directory fsync is how applications make a create or rename durable (write temp,
        // rename, fsync the directory), so it is a barrier like a file fsync.
        match self.do_fsync(fh, datasync) {
            Ok(seq) => self
                .durable
                .after(seq, move |durable| reply_durable(reply, durable)),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::fstatfs(self.root.raw()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namelen).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.do_setxattr(ino, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let cname = match sys::cstring(name.as_bytes()) {
            Ok(c) => c,
            Err(e) => return reply.error(errno(e)),
        };
        self.xattr_read(ino, size, |t, buf| sys::getxattr(t, &cname, buf), reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.xattr_read(ino, size, sys::listxattr, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_removexattr(ino, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks permissions itself and does not call
        // this; answer existence for completeness.
        match self.do_getattr(ino, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode, umask, flags) {
            Ok((id, fh, st, open_flags)) => reply.created(
                &TTL,
                &attr(id, &st),
                Generation(0),
                FileHandle(fh),
                open_flags,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.do_fallocate(fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // Only SEEK_DATA / SEEK_HOLE reach us; they need the backing file's extent map.
        match self
            .handle(fh)
            .and_then(|h| sys::lseek(h.fd(), offset, whence).map_err(errno))
        {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    /// No ioctl is served. The mutating ones (`chattr`'s flags, `FICLONE`...) would change
    /// the backing file behind capture's back, and the common one is `TCGETS` from
    /// `isatty()`, which Python's `open()` asks of every file it opens: ENOTTY, as a native
    /// file answers. fuser's default answer is the same (ENOSYS, which the kernel turns into
    /// ENOTTY) but with a warning logged per call, and the kernel does not remember the
    /// refusal: a populate of 10,000 files by Python logged 10,000 warnings.
    #[allow(clippy::too_many_arguments)] // fuser's signature
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        tracing::trace!(cmd, "ioctl refused: not served on a replicated mount");
        reply.error(Errno::ENOTTY);
    }
}
