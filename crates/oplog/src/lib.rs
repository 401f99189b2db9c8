//! The replicated operation: what the capture filesystem records on the active, what travels
//! over the replication stream, and what the passive applies, in sequence order.
//!
//! Paths are relative to the replicated set's root, as raw bytes, `/`-separated, never
//! absolute and never containing `.`/`..` components when produced by capture. The passive
//! must still treat them as hostile: they arrive from the network (see `understudy-apply`).
//!
//! A file whose last name was removed while handles to it were still open keeps receiving
//! writes on the active. Such an inode is an *orphan*: the unlink (or rename-over) that removed
//! its last name carries an orphan id, the passive parks the inode under that id instead of
//! deleting it, later ops address it as [`FileRef::Orphan`], and [`Op::DropOrphan`] ends it
//! when the last handle closes on the active.

mod codec;

pub use codec::{
    decode_record, decode_write, encode_record, encode_record_split, encoded_len, DecodeError,
    WriteRef, MAX_SCOPE_PATHS, MAX_TREE_ENTRIES, MAX_XATTRS,
};

/// A point in time as the kernel reports it: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// How an op names the file it changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileRef {
    /// A path relative to the set's root.
    Path(Vec<u8>),
    /// An inode with no name left (unlinked while open), parked on the passive under this id.
    Orphan(u64),
}

/// The kind of non-directory node a [`Op::Mknod`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Regular,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// Extended attributes as name and value pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The type of an entry in a resync listing ([`TreeEntry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    Regular,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// One entry of a resync listing ([`Op::SyncTree`]): what a path was on the active at the
/// listing's seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the set's root; the empty path is the root itself.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number (character and block devices only).
    pub rdev: u64,
    /// Size in bytes (regular files only).
    pub size: u64,
    pub mtime: Timespec,
    /// Symlink target (symlinks only).
    pub target: Vec<u8>,
    /// A regular file with several names: the listing index (see [`Op::SyncTree`]) of the
    /// entry that first named the same inode. This name must be a hard link to it.
    pub link_to: Option<u32>,
    /// Extended attributes, name and value (regular files and directories only).
    pub xattrs: Xattrs,
}

/// One mutating operation, as it took effect on the active's backing directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// create(2)/mknod(2). `rdev` only matters for devices.
    Mknod {
        path: Vec<u8>,
        kind: NodeKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    /// A new name `path` for the existing file `existing`.
    Link {
        existing: Vec<u8>,
        path: Vec<u8>,
    },
    Write {
        file: FileRef,
        offset: u64,
        data: Vec<u8>,
    },
    Truncate {
        file: FileRef,
        size: u64,
    },
    /// fallocate(2) with the same mode bits (keep-size, punch-hole, zero-range...).
    Fallocate {
        file: FileRef,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// Removes the name `path`. If `orphan` is set, the inode stays alive on the active (open
    /// handles) and the passive parks it under that id instead of dropping it.
    Unlink {
        path: Vec<u8>,
        orphan: Option<u64>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    /// renameat2(2). `flags` are RENAME_NOREPLACE / RENAME_EXCHANGE as on Linux. If `orphan` is
    /// set, the inode that `to` named before the rename is still open on the active and must be
    /// parked under that id.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flags: u32,
        orphan: Option<u64>,
    },
    /// chmod/chown/utimens. `None` fields are left unchanged.
    SetAttr {
        file: FileRef,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<Timespec>,
        mtime: Option<Timespec>,
    },
    SetXattr {
        file: FileRef,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        file: FileRef,
        name: Vec<u8>,
    },
    /// fsync/fdatasync on the active (or an O_SYNC/O_DSYNC write): a durability barrier.
    Fsync {
        file: FileRef,
        datasync: bool,
    },
    /// The last handle to an orphan closed on the active: the passive may free it.
    DropOrphan {
        orphan: u64,
    },

    // ---- resync and verify (see `understudy-replication`'s sync module) ----
    /// A resync (or, with `verify`, a comparison that changes nothing) starts. `scope` lists
    /// the subtrees it covers (`None`: the whole tree); everything outside them is already
    /// identical on both nodes.
    SyncBegin {
        id: u64,
        verify: bool,
        scope: Option<Vec<Vec<u8>>>,
    },
    /// Part of the exact listing of the scope on the active at this seq, parents before
    /// children; its entries are numbered on from `first_index` (0 in the first part). After
    /// the `last` part, the passive's tree within the scope has exactly these names, types,
    /// links and metadata (resync), or it reports how it differs (verify). Regular files'
    /// contents follow as `Write`/`Fallocate` and end with a `SyncMeta`.
    SyncTree {
        id: u64,
        first_index: u32,
        entries: Vec<TreeEntry>,
        last: bool,
    },
    /// A regular file's exact size and metadata on the active at this seq, after its data
    /// was copied. Xattrs not listed are removed.
    SyncMeta {
        path: Vec<u8>,
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: Timespec,
        xattrs: Xattrs,
    },
    /// Verify: `len` bytes at `offset` of `path` hash (blake3) to `hash` on the active at
    /// this seq. The passive checks its copy at the same point and reports.
    VerifyRange {
        id: u64,
        path: Vec<u8>,
        offset: u64,
        len: u64,
        hash: [u8; 32],
    },
    /// The resync or verify `id` is complete at this seq.
    SyncEnd {
        id: u64,
    },
}

/// One numbered change: the op plus the modification times it left behind, so the replica
/// matches to the nanosecond (applying an op on the passive would otherwise stamp the
/// passive's own clock). Times are applied after the op, in order, without following symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub op: Op,
    pub mtimes: Vec<(FileRef, Timespec)>,
}

impl Op {
    /// Payload bytes carried (the data of a write), for queue accounting and throughput.
    pub fn data_len(&self) -> usize {
        match self {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// True for ops that demand durability on the passive before the active's caller returns
    /// (in sync mode).
    pub fn is_barrier(&self) -> bool {
        matches!(self, Op::Fsync { .. } | Op::SyncEnd { .. })
    }

    /// True for the ops of a resync or verify, which only the sync engine produces.
    pub fn is_sync(&self) -> bool {
        matches!(
            self,
            Op::SyncBegin { .. }
                | Op::SyncTree { .. }
                | Op::SyncMeta { .. }
                | Op::VerifyRange { .. }
                | Op::SyncEnd { .. }
        )
    }
}

/// Where captured ops go. Implemented by the replication queue in the daemon, and by test
/// journals. `record` is called with the capture filesystem's order lock held, right after the
/// op took effect on the backing directory, so the returned sequence numbers follow the order
/// in which operations took effect.
pub trait Journal: Send + Sync + 'static {
    /// Numbers and queues an op (and the mtimes it left). Must not block for long: it is
    /// called under the capture's order lock. Returns the op's sequence number.
    fn record(&self, op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64;

    /// Blocks until every op up to and including `seq` is as durable as the set's mode
    /// requires: in `sync` mode, stored durably on the passive (or the passive is known to be
    /// gone and the set marked degraded); in `async` mode, returns at once. Called without the
    /// order lock. False when it cannot be promised (this node stopped serving meanwhile):
    /// the caller then fails the fsync instead of acknowledging it.
    fn wait_durable(&self, seq: u64) -> bool;

    /// False when `wait_durable(seq)` would return true at once (async mode, no passive to
    /// wait for, or `seq` already confirmed), so a caller can reply without handing the wait
    /// to another thread.
    fn must_wait(&self, _seq: u64) -> bool {
        true
    }

    /// Registers `listener`, replacing any earlier one: called with the highest seq the
    /// passive confirmed durable, each time that grows, on the thread that received the
    /// confirmation (so it must not block). Lets the capture answer waiting fsyncs right
    /// there instead of waking a thread blocked in `wait_durable`: on a VM a cross-CPU
    /// wakeup costs 10-20 µs of every synced write's latency. Returns false when this
    /// journal never calls it (the caller then relies on `wait_durable` alone).
    fn on_durable(&self, _listener: DurableListener) -> bool {
        false
    }
}

/// See [`Journal::on_durable`].
pub type DurableListener = std::sync::Arc<dyn Fn(u64) + Send + Sync>;
