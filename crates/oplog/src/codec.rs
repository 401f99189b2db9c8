//! Binary encoding of [`Record`]s for the replication stream and the spill file.
//!
//! Little-endian, length-prefixed, no self-describing overhead. The decoder is strict: it
//! reads input that came from the network, so every length is bounded before anything is
//! allocated, unknown tags are errors, and trailing bytes are errors.

use crate::{EntryKind, FileRef, NodeKind, Op, Record, Timespec, TreeEntry, Xattrs};

/// Longest path accepted (PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Largest write payload in one record (capture uses max_write = 1 MiB; leave headroom).
pub const MAX_WRITE_BYTES: usize = 16 << 20;
/// Largest xattr value (the Linux VFS limit).
pub const MAX_XATTR_BYTES: usize = 64 << 10;
/// Most mtimes one record may carry (an op touches at most a few inodes).
pub const MAX_MTIMES: usize = 8;
/// Most entries in one `SyncTree` record (a listing comes in as many parts as it needs).
pub const MAX_TREE_ENTRIES: usize = 4096;
/// Most xattrs of one file in a listing or `SyncMeta`.
pub const MAX_XATTRS: usize = 256;
/// Most subtrees in a `SyncBegin` scope; a larger scope is sent as the whole tree.
pub const MAX_SCOPE_PATHS: usize = 100_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record truncated")]
    Truncated,
    #[error("unknown op tag {0}")]
    UnknownOp(u8),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    #[error("nanoseconds {0} out of range")]
    BadNanos(u32),
}

mod tag {
    pub const MKNOD: u8 = 1;
    pub const MKDIR: u8 = 2;
    pub const SYMLINK: u8 = 3;
    pub const LINK: u8 = 4;
    pub const WRITE: u8 = 5;
    pub const TRUNCATE: u8 = 6;
    pub const FALLOCATE: u8 = 7;
    pub const UNLINK: u8 = 8;
    pub const RMDIR: u8 = 9;
    pub const RENAME: u8 = 10;
    pub const SETATTR: u8 = 11;
    pub const SETXATTR: u8 = 12;
    pub const REMOVEXATTR: u8 = 13;
    pub const FSYNC: u8 = 14;
    pub const DROP_ORPHAN: u8 = 15;
    pub const SYNC_BEGIN: u8 = 16;
    pub const SYNC_TREE: u8 = 17;
    pub const SYNC_META: u8 = 18;
    pub const VERIFY_RANGE: u8 = 19;
    pub const SYNC_END: u8 = 20;
}

/// Exact encoded size of a record, so callers can size buffers once.
pub fn encoded_len(record: &Record) -> usize {
    let mut counter = Counter(0);
    write_record(&mut counter, record);
    counter.0
}

/// Appends the encoding of `record` to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    out.reserve(encoded_len(record));
    write_record(out, record);
}

/// A `Write` record whose data stays in the buffer it was received in.
#[derive(Debug, PartialEq, Eq)]
pub struct WriteRef<'a> {
    pub seq: u64,
    pub file: FileRef,
    pub offset: u64,
    pub data: &'a [u8],
    pub mtimes: Vec<(FileRef, Timespec)>,
}

/// Decodes `input` like [`decode_record`] if it holds a `Write`, without copying the data;
/// `Ok(None)` for any other op (decode those with `decode_record`).
pub fn decode_write(input: &[u8]) -> Result<Option<WriteRef<'_>>, DecodeError> {
    let mut reader = Reader { input, pos: 0 };
    let seq = reader.u64()?;
    if reader.u8()? != tag::WRITE {
        return Ok(None);
    }
    let file = reader.file()?;
    let offset = reader.u64()?;
    let len = reader.u32()? as usize;
    if len > MAX_WRITE_BYTES {
        return Err(DecodeError::TooLong {
            what: "write data",
            len,
            max: MAX_WRITE_BYTES,
        });
    }
    let data = reader.take(len)?;
    let mtimes = reader.mtimes()?;
    let rest = input.len() - reader.pos;
    if rest != 0 {
        return Err(DecodeError::Trailing(rest));
    }
    Ok(Some(WriteRef {
        seq,
        file,
        offset,
        data,
        mtimes,
    }))
}

/// Encodes `record` for sending without copying a `Write`'s data: the bytes before the data
/// go to `head`, those after it to `tail`, and the data itself is returned to be sent in
/// between. Any other op is encoded whole into `head` (and `None` returned). `head` and
/// `tail` are appended to; together with the data they equal [`encode_record`]'s output.
pub fn encode_record_split<'a>(
    record: &'a Record,
    head: &mut Vec<u8>,
    tail: &mut Vec<u8>,
) -> Option<&'a [u8]> {
    let Op::Write { file, offset, data } = &record.op else {
        encode_record(record, head);
        return None;
    };
    put_u64(head, record.seq);
    put_u8(head, tag::WRITE);
    put_file(head, file);
    put_u64(head, *offset);
    put_u32(head, data.len() as u32);
    put_mtimes(tail, &record.mtimes);
    Some(data)
}

/// Decodes exactly one record occupying all of `input`.
pub fn decode_record(input: &[u8]) -> Result<Record, DecodeError> {
    let mut reader = Reader { input, pos: 0 };
    let record = reader.record()?;
    let rest = input.len() - reader.pos;
    if rest != 0 {
        return Err(DecodeError::Trailing(rest));
    }
    Ok(record)
}

trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

fn put_u8(out: &mut impl Sink, v: u8) {
    out.put(&[v]);
}
fn put_u32(out: &mut impl Sink, v: u32) {
    out.put(&v.to_le_bytes());
}
fn put_i32(out: &mut impl Sink, v: i32) {
    out.put(&v.to_le_bytes());
}
fn put_u64(out: &mut impl Sink, v: u64) {
    out.put(&v.to_le_bytes());
}
fn put_bytes(out: &mut impl Sink, v: &[u8]) {
    // Every bounded field is far below 4 GiB; the decoder enforces the real limits.
    put_u32(out, v.len() as u32);
    out.put(v);
}
fn put_opt_u32(out: &mut impl Sink, v: Option<u32>) {
    match v {
        None => put_u8(out, 0),
        Some(v) => {
            put_u8(out, 1);
            put_u32(out, v);
        }
    }
}
fn put_opt_u64(out: &mut impl Sink, v: Option<u64>) {
    match v {
        None => put_u8(out, 0),
        Some(v) => {
            put_u8(out, 1);
            put_u64(out, v);
        }
    }
}
fn put_time(out: &mut impl Sink, t: Timespec) {
    out.put(&t.sec.to_le_bytes());
    put_u32(out, t.nsec);
}
fn put_opt_time(out: &mut impl Sink, v: Option<Timespec>) {
    match v {
        None => put_u8(out, 0),
        Some(v) => {
            put_u8(out, 1);
            put_time(out, v);
        }
    }
}
fn put_file(out: &mut impl Sink, f: &FileRef) {
    match f {
        FileRef::Path(p) => {
            put_u8(out, 0);
            put_bytes(out, p);
        }
        FileRef::Orphan(id) => {
            put_u8(out, 1);
            put_u64(out, *id);
        }
    }
}
fn entry_kind_tag(k: EntryKind) -> u8 {
    match k {
        EntryKind::Dir => 0,
        EntryKind::Regular => 1,
        EntryKind::Symlink => 2,
        EntryKind::Fifo => 3,
        EntryKind::CharDevice => 4,
        EntryKind::BlockDevice => 5,
        EntryKind::Socket => 6,
    }
}
fn put_xattrs(out: &mut impl Sink, xattrs: &Xattrs) {
    put_u32(out, xattrs.len() as u32);
    for (name, value) in xattrs {
        put_bytes(out, name);
        put_bytes(out, value);
    }
}
fn put_entry(out: &mut impl Sink, e: &TreeEntry) {
    put_bytes(out, &e.path);
    put_u8(out, entry_kind_tag(e.kind));
    put_u32(out, e.mode);
    put_u32(out, e.uid);
    put_u32(out, e.gid);
    put_u64(out, e.rdev);
    put_u64(out, e.size);
    put_time(out, e.mtime);
    put_bytes(out, &e.target);
    put_opt_u32(out, e.link_to);
    put_xattrs(out, &e.xattrs);
}
fn kind_tag(k: NodeKind) -> u8 {
    match k {
        NodeKind::Regular => 0,
        NodeKind::Fifo => 1,
        NodeKind::CharDevice => 2,
        NodeKind::BlockDevice => 3,
        NodeKind::Socket => 4,
    }
}

fn write_record(out: &mut impl Sink, r: &Record) {
    put_u64(out, r.seq);
    match &r.op {
        Op::Mknod {
            path,
            kind,
            mode,
            uid,
            gid,
            rdev,
        } => {
            put_u8(out, tag::MKNOD);
            put_bytes(out, path);
            put_u8(out, kind_tag(*kind));
            put_u32(out, *mode);
            put_u32(out, *uid);
            put_u32(out, *gid);
            put_u64(out, *rdev);
        }
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => {
            put_u8(out, tag::MKDIR);
            put_bytes(out, path);
            put_u32(out, *mode);
            put_u32(out, *uid);
            put_u32(out, *gid);
        }
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => {
            put_u8(out, tag::SYMLINK);
            put_bytes(out, path);
            put_bytes(out, target);
            put_u32(out, *uid);
            put_u32(out, *gid);
        }
        Op::Link { existing, path } => {
            put_u8(out, tag::LINK);
            put_bytes(out, existing);
            put_bytes(out, path);
        }
        Op::Write { file, offset, data } => {
            put_u8(out, tag::WRITE);
            put_file(out, file);
            put_u64(out, *offset);
            put_bytes(out, data);
        }
        Op::Truncate { file, size } => {
            put_u8(out, tag::TRUNCATE);
            put_file(out, file);
            put_u64(out, *size);
        }
        Op::Fallocate {
            file,
            mode,
            offset,
            len,
        } => {
            put_u8(out, tag::FALLOCATE);
            put_file(out, file);
            put_i32(out, *mode);
            put_u64(out, *offset);
            put_u64(out, *len);
        }
        Op::Unlink { path, orphan } => {
            put_u8(out, tag::UNLINK);
            put_bytes(out, path);
            put_opt_u64(out, *orphan);
        }
        Op::Rmdir { path } => {
            put_u8(out, tag::RMDIR);
            put_bytes(out, path);
        }
        Op::Rename {
            from,
            to,
            flags,
            orphan,
        } => {
            put_u8(out, tag::RENAME);
            put_bytes(out, from);
            put_bytes(out, to);
            put_u32(out, *flags);
            put_opt_u64(out, *orphan);
        }
        Op::SetAttr {
            file,
            mode,
            uid,
            gid,
            atime,
            mtime,
        } => {
            put_u8(out, tag::SETATTR);
            put_file(out, file);
            put_opt_u32(out, *mode);
            put_opt_u32(out, *uid);
            put_opt_u32(out, *gid);
            put_opt_time(out, *atime);
            put_opt_time(out, *mtime);
        }
        Op::SetXattr {
            file,
            name,
            value,
            flags,
        } => {
            put_u8(out, tag::SETXATTR);
            put_file(out, file);
            put_bytes(out, name);
            put_bytes(out, value);
            put_i32(out, *flags);
        }
        Op::RemoveXattr { file, name } => {
            put_u8(out, tag::REMOVEXATTR);
            put_file(out, file);
            put_bytes(out, name);
        }
        Op::Fsync { file, datasync } => {
            put_u8(out, tag::FSYNC);
            put_file(out, file);
            put_u8(out, u8::from(*datasync));
        }
        Op::DropOrphan { orphan } => {
            put_u8(out, tag::DROP_ORPHAN);
            put_u64(out, *orphan);
        }
        Op::SyncBegin { id, verify, scope } => {
            put_u8(out, tag::SYNC_BEGIN);
            put_u64(out, *id);
            put_u8(out, u8::from(*verify));
            match scope {
                None => put_u8(out, 0),
                Some(paths) => {
                    put_u8(out, 1);
                    put_u32(out, paths.len() as u32);
                    for p in paths {
                        put_bytes(out, p);
                    }
                }
            }
        }
        Op::SyncTree {
            id,
            first_index,
            entries,
            last,
        } => {
            put_u8(out, tag::SYNC_TREE);
            put_u64(out, *id);
            put_u32(out, *first_index);
            put_u32(out, entries.len() as u32);
            for e in entries {
                put_entry(out, e);
            }
            put_u8(out, u8::from(*last));
        }
        Op::SyncMeta {
            path,
            size,
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        } => {
            put_u8(out, tag::SYNC_META);
            put_bytes(out, path);
            put_u64(out, *size);
            put_u32(out, *mode);
            put_u32(out, *uid);
            put_u32(out, *gid);
            put_time(out, *mtime);
            put_xattrs(out, xattrs);
        }
        Op::VerifyRange {
            id,
            path,
            offset,
            len,
            hash,
        } => {
            put_u8(out, tag::VERIFY_RANGE);
            put_u64(out, *id);
            put_bytes(out, path);
            put_u64(out, *offset);
            put_u64(out, *len);
            out.put(hash);
        }
        Op::SyncEnd { id } => {
            put_u8(out, tag::SYNC_END);
            put_u64(out, *id);
        }
    }
    put_mtimes(out, &r.mtimes);
}

fn put_mtimes(out: &mut impl Sink, mtimes: &[(FileRef, Timespec)]) {
    // MAX_MTIMES is tiny; the decoder rejects more.
    put_u8(out, mtimes.len() as u8);
    for (file, time) in mtimes {
        put_file(out, file);
        put_time(out, *time);
    }
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self
            .input
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what: "bool", tag }),
        }
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        Ok(self.take(len)?.to_vec())
    }
    fn path(&mut self) -> Result<Vec<u8>, DecodeError> {
        self.bytes("path", MAX_PATH_BYTES)
    }
    fn opt<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(f(self)?)),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }
    fn time(&mut self) -> Result<Timespec, DecodeError> {
        let sec = self.i64()?;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(DecodeError::BadNanos(nsec));
        }
        Ok(Timespec { sec, nsec })
    }
    fn file(&mut self) -> Result<FileRef, DecodeError> {
        match self.u8()? {
            0 => Ok(FileRef::Path(self.path()?)),
            1 => Ok(FileRef::Orphan(self.u64()?)),
            tag => Err(DecodeError::UnknownTag { what: "file", tag }),
        }
    }
    fn kind(&mut self) -> Result<NodeKind, DecodeError> {
        Ok(match self.u8()? {
            0 => NodeKind::Regular,
            1 => NodeKind::Fifo,
            2 => NodeKind::CharDevice,
            3 => NodeKind::BlockDevice,
            4 => NodeKind::Socket,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "node kind",
                    tag,
                })
            }
        })
    }

    /// A count of items that follow, bounded before anything is allocated for them.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        Ok(n)
    }
    fn xattrs(&mut self) -> Result<Xattrs, DecodeError> {
        let n = self.count("xattr list", MAX_XATTRS)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((
                self.bytes("xattr name", 255)?,
                self.bytes("xattr value", MAX_XATTR_BYTES)?,
            ));
        }
        Ok(out)
    }
    fn entry_kind(&mut self) -> Result<EntryKind, DecodeError> {
        Ok(match self.u8()? {
            0 => EntryKind::Dir,
            1 => EntryKind::Regular,
            2 => EntryKind::Symlink,
            3 => EntryKind::Fifo,
            4 => EntryKind::CharDevice,
            5 => EntryKind::BlockDevice,
            6 => EntryKind::Socket,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "entry kind",
                    tag,
                })
            }
        })
    }
    fn entry(&mut self) -> Result<TreeEntry, DecodeError> {
        Ok(TreeEntry {
            path: self.path()?,
            kind: self.entry_kind()?,
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            rdev: self.u64()?,
            size: self.u64()?,
            mtime: self.time()?,
            target: self.path()?,
            link_to: self.opt("link", Self::u32)?,
            xattrs: self.xattrs()?,
        })
    }

    fn op(&mut self) -> Result<Op, DecodeError> {
        let op = match self.u8()? {
            tag::MKNOD => Op::Mknod {
                path: self.path()?,
                kind: self.kind()?,
                mode: self.u32()?,
                uid: self.u32()?,
                gid: self.u32()?,
                rdev: self.u64()?,
            },
            tag::MKDIR => Op::Mkdir {
                path: self.path()?,
                mode: self.u32()?,
                uid: self.u32()?,
                gid: self.u32()?,
            },
            tag::SYMLINK => Op::Symlink {
                path: self.path()?,
                target: self.path()?,
                uid: self.u32()?,
                gid: self.u32()?,
            },
            tag::LINK => Op::Link {
                existing: self.path()?,
                path: self.path()?,
            },
            tag::WRITE => Op::Write {
                file: self.file()?,
                offset: self.u64()?,
                data: self.bytes("write data", MAX_WRITE_BYTES)?,
            },
            tag::TRUNCATE => Op::Truncate {
                file: self.file()?,
                size: self.u64()?,
            },
            tag::FALLOCATE => Op::Fallocate {
                file: self.file()?,
                mode: self.i32()?,
                offset: self.u64()?,
                len: self.u64()?,
            },
            tag::UNLINK => Op::Unlink {
                path: self.path()?,
                orphan: self.opt("orphan", Self::u64)?,
            },
            tag::RMDIR => Op::Rmdir { path: self.path()? },
            tag::RENAME => Op::Rename {
                from: self.path()?,
                to: self.path()?,
                flags: self.u32()?,
                orphan: self.opt("orphan", Self::u64)?,
            },
            tag::SETATTR => Op::SetAttr {
                file: self.file()?,
                mode: self.opt("mode", Self::u32)?,
                uid: self.opt("uid", Self::u32)?,
                gid: self.opt("gid", Self::u32)?,
                atime: self.opt("atime", Self::time)?,
                mtime: self.opt("mtime", Self::time)?,
            },
            tag::SETXATTR => Op::SetXattr {
                file: self.file()?,
                name: self.bytes("xattr name", 255)?,
                value: self.bytes("xattr value", MAX_XATTR_BYTES)?,
                flags: self.i32()?,
            },
            tag::REMOVEXATTR => Op::RemoveXattr {
                file: self.file()?,
                name: self.bytes("xattr name", 255)?,
            },
            tag::FSYNC => Op::Fsync {
                file: self.file()?,
                datasync: self.bool()?,
            },
            tag::DROP_ORPHAN => Op::DropOrphan {
                orphan: self.u64()?,
            },
            tag::SYNC_BEGIN => {
                let id = self.u64()?;
                let verify = self.bool()?;
                let scope = match self.u8()? {
                    0 => None,
                    1 => {
                        let n = self.count("scope", MAX_SCOPE_PATHS)?;
                        // Each path costs at least its 4-byte length: a count the input
                        // cannot hold is refused before the vector is sized for it.
                        if n > self.input.len().saturating_sub(self.pos) / 4 {
                            return Err(DecodeError::Truncated);
                        }
                        let mut paths = Vec::with_capacity(n);
                        for _ in 0..n {
                            paths.push(self.path()?);
                        }
                        Some(paths)
                    }
                    tag => return Err(DecodeError::UnknownTag { what: "scope", tag }),
                };
                Op::SyncBegin { id, verify, scope }
            }
            tag::SYNC_TREE => {
                let id = self.u64()?;
                let first_index = self.u32()?;
                let n = self.count("tree listing", MAX_TREE_ENTRIES)?;
                let mut entries = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    entries.push(self.entry()?);
                }
                Op::SyncTree {
                    id,
                    first_index,
                    entries,
                    last: self.bool()?,
                }
            }
            tag::SYNC_META => Op::SyncMeta {
                path: self.path()?,
                size: self.u64()?,
                mode: self.u32()?,
                uid: self.u32()?,
                gid: self.u32()?,
                mtime: self.time()?,
                xattrs: self.xattrs()?,
            },
            tag::VERIFY_RANGE => Op::VerifyRange {
                id: self.u64()?,
                path: self.path()?,
                offset: self.u64()?,
                len: self.u64()?,
                hash: self.array::<32>()?,
            },
            tag::SYNC_END => Op::SyncEnd { id: self.u64()? },
            other => return Err(DecodeError::UnknownOp(other)),
        };
        Ok(op)
    }

    fn record(&mut self) -> Result<Record, DecodeError> {
        let seq = self.u64()?;
        let op = self.op()?;
        let mtimes = self.mtimes()?;
        Ok(Record { seq, op, mtimes })
    }

    fn mtimes(&mut self) -> Result<Vec<(FileRef, Timespec)>, DecodeError> {
        let count = self.u8()? as usize;
        if count > MAX_MTIMES {
            return Err(DecodeError::TooLong {
                what: "mtime list",
                len: count,
                max: MAX_MTIMES,
            });
        }
        let mut mtimes = Vec::with_capacity(count);
        for _ in 0..count {
            mtimes.push((self.file()?, self.time()?));
        }
        Ok(mtimes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }
    fn arb_file() -> impl Strategy<Value = FileRef> {
        prop_oneof![
            arb_bytes(40).prop_map(FileRef::Path),
            any::<u64>().prop_map(FileRef::Orphan)
        ]
    }
    fn arb_time() -> impl Strategy<Value = Timespec> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timespec { sec, nsec })
    }
    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                arb_bytes(30),
                0u8..5,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(|(path, k, mode, uid, gid, rdev)| Op::Mknod {
                    path,
                    kind: [
                        NodeKind::Regular,
                        NodeKind::Fifo,
                        NodeKind::CharDevice,
                        NodeKind::BlockDevice,
                        NodeKind::Socket
                    ][k as usize],
                    mode,
                    uid,
                    gid,
                    rdev
                }),
            (arb_bytes(30), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(path, mode, uid, gid)| Op::Mkdir {
                    path,
                    mode,
                    uid,
                    gid
                }
            ),
            (arb_bytes(30), arb_bytes(30), any::<u32>(), any::<u32>()).prop_map(
                |(path, target, uid, gid)| Op::Symlink {
                    path,
                    target,
                    uid,
                    gid
                }
            ),
            (arb_bytes(30), arb_bytes(30)).prop_map(|(existing, path)| Op::Link { existing, path }),
            (arb_file(), any::<u64>(), arb_bytes(300)).prop_map(|(file, offset, data)| Op::Write {
                file,
                offset,
                data
            }),
            (arb_file(), any::<u64>()).prop_map(|(file, size)| Op::Truncate { file, size }),
            (arb_file(), any::<i32>(), any::<u64>(), any::<u64>()).prop_map(
                |(file, mode, offset, len)| Op::Fallocate {
                    file,
                    mode,
                    offset,
                    len
                }
            ),
            (arb_bytes(30), any::<Option<u64>>())
                .prop_map(|(path, orphan)| Op::Unlink { path, orphan }),
            arb_bytes(30).prop_map(|path| Op::Rmdir { path }),
            (
                arb_bytes(30),
                arb_bytes(30),
                any::<u32>(),
                any::<Option<u64>>()
            )
                .prop_map(|(from, to, flags, orphan)| Op::Rename {
                    from,
                    to,
                    flags,
                    orphan
                }),
            (
                arb_file(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
                proptest::option::of(arb_time()),
                proptest::option::of(arb_time())
            )
                .prop_map(|(file, mode, uid, gid, atime, mtime)| Op::SetAttr {
                    file,
                    mode,
                    uid,
                    gid,
                    atime,
                    mtime
                }),
            (arb_file(), arb_bytes(20), arb_bytes(100), any::<i32>()).prop_map(
                |(file, name, value, flags)| Op::SetXattr {
                    file,
                    name,
                    value,
                    flags
                }
            ),
            (arb_file(), arb_bytes(20)).prop_map(|(file, name)| Op::RemoveXattr { file, name }),
            (arb_file(), any::<bool>()).prop_map(|(file, datasync)| Op::Fsync { file, datasync }),
            any::<u64>().prop_map(|orphan| Op::DropOrphan { orphan }),
        ]
    }
    fn arb_xattrs() -> impl Strategy<Value = Xattrs> {
        proptest::collection::vec((arb_bytes(12), arb_bytes(40)), 0..3)
    }
    fn arb_entry() -> impl Strategy<Value = TreeEntry> {
        let kind = prop_oneof![
            Just(EntryKind::Dir),
            Just(EntryKind::Regular),
            Just(EntryKind::Symlink),
            Just(EntryKind::Fifo),
            Just(EntryKind::CharDevice),
            Just(EntryKind::BlockDevice),
            Just(EntryKind::Socket),
        ];
        (
            (
                arb_bytes(30),
                kind,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            (any::<u64>(), any::<u64>(), arb_time(), arb_bytes(20)),
            (proptest::option::of(any::<u32>()), arb_xattrs()),
        )
            .prop_map(
                |((path, kind, mode, uid, gid), (rdev, size, mtime, target), (link_to, xattrs))| {
                    TreeEntry {
                        path,
                        kind,
                        mode,
                        uid,
                        gid,
                        rdev,
                        size,
                        mtime,
                        target,
                        link_to,
                        xattrs,
                    }
                },
            )
    }
    fn arb_sync_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                any::<u64>(),
                any::<bool>(),
                proptest::option::of(proptest::collection::vec(arb_bytes(20), 0..4))
            )
                .prop_map(|(id, verify, scope)| Op::SyncBegin { id, verify, scope }),
            (
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(arb_entry(), 0..4),
                any::<bool>()
            )
                .prop_map(|(id, first_index, entries, last)| Op::SyncTree {
                    id,
                    first_index,
                    entries,
                    last
                }),
            (
                (arb_bytes(30), any::<u64>(), any::<u32>()),
                (any::<u32>(), any::<u32>(), arb_time(), arb_xattrs())
            )
                .prop_map(|((path, size, mode), (uid, gid, mtime, xattrs))| {
                    Op::SyncMeta {
                        path,
                        size,
                        mode,
                        uid,
                        gid,
                        mtime,
                        xattrs,
                    }
                }),
            (
                any::<u64>(),
                arb_bytes(30),
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(id, path, offset, len, hash)| Op::VerifyRange {
                    id,
                    path,
                    offset,
                    len,
                    hash
                }),
            any::<u64>().prop_map(|id| Op::SyncEnd { id }),
        ]
    }
    fn arb_any_op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => arb_op(), 1 => arb_sync_op()]
    }

    proptest! {
        #[test]
        fn records_round_trip(
            seq in any::<u64>(),
            op in arb_any_op(),
            mtimes in proptest::collection::vec((arb_file(), arb_time()), 0..MAX_MTIMES),
        ) {
            let record = Record { seq, op, mtimes };
            let mut buf = Vec::new();
            encode_record(&record, &mut buf);
            prop_assert_eq!(buf.len(), encoded_len(&record));
            prop_assert_eq!(decode_record(&buf), Ok(record));
        }

        #[test]
        fn split_encoding_and_borrowed_decoding_agree_with_the_whole(
            seq in any::<u64>(),
            op in arb_any_op(),
            mtimes in proptest::collection::vec((arb_file(), arb_time()), 0..MAX_MTIMES),
        ) {
            let record = Record { seq, op, mtimes };
            let mut whole = Vec::new();
            encode_record(&record, &mut whole);
            let (mut head, mut tail) = (Vec::new(), Vec::new());
            let data = encode_record_split(&record, &mut head, &mut tail);
            let mut joined = head.clone();
            joined.extend_from_slice(data.unwrap_or_default());
            joined.extend_from_slice(&tail);
            prop_assert_eq!(&joined, &whole);
            match decode_write(&whole) {
                Ok(Some(w)) => {
                    let Op::Write { file, offset, data } = &record.op else {
                        panic!("decode_write accepted a non-write");
                    };
                    prop_assert_eq!((&w.file, w.offset, w.data), (file, *offset, data.as_slice()));
                    prop_assert_eq!(&w.mtimes, &record.mtimes);
                    prop_assert_eq!(w.seq, record.seq);
                }
                Ok(None) => {
                    let is_write = matches!(record.op, Op::Write { .. });
                    prop_assert!(!is_write);
                }
                Err(e) => prop_assert!(false, "decode_write failed: {}", e),
            }
        }

        #[test]
        fn every_truncation_is_an_error(op in arb_any_op()) {
            let record = Record { seq: 7, op, mtimes: vec![] };
            let mut buf = Vec::new();
            encode_record(&record, &mut buf);
            for cut in 0..buf.len() {
                prop_assert!(decode_record(&buf[..cut]).is_err());
                let decoded = matches!(decode_write(&buf[..cut]), Ok(Some(_)));
                prop_assert!(!decoded);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in arb_bytes(200)) {
            let _ = decode_record(&bytes);
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&1u64.to_le_bytes());
        buf.push(tag::RMDIR);
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&buf),
            Err(DecodeError::TooLong { what: "path", .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let record = Record {
            seq: 1,
            op: Op::DropOrphan { orphan: 3 },
            mtimes: vec![],
        };
        let mut buf = Vec::new();
        encode_record(&record, &mut buf);
        buf.push(0);
        assert_eq!(decode_record(&buf), Err(DecodeError::Trailing(1)));
    }
}
