//! Resync and verify on the passive: the records of [`Op::SyncBegin`] .. [`Op::SyncEnd`]
//! (see `understudy-oplog`), applied in sequence like every other record, and what they
//! report to the layer above through a [`SyncObserver`].
//!
//! A resync makes the replica's tree within the sync's scope exactly the active's listing
//! ([`Op::SyncTree`]) at the listing's seq: names, types, hard links, symlink targets, device
//! numbers, owners, modes, xattrs and mtimes. Regular files whose quick check (size, mtime,
//! mode) fails are reported as needing content; their data follows as ordinary `Write` and
//! `Fallocate` records, and a [`Op::SyncMeta`] sets their final size and metadata. A verify
//! compares instead of changing, and reports every difference.
//!
//! # The sync context
//!
//! `SyncBegin` opens a context (replacing an unfinished one) with the scope: the whole tree,
//! or subtree roots, a root inside another one being redundant. Each root's parent must be a
//! directory of the replica already, or the record is `Diverged` (the layer above then falls
//! back to the whole tree). `SyncTree` parts are buffered, in order, up to
//! [`MAX_LISTING_ENTRIES`], and the last part is applied (`resync.rs`) or compared. `SyncMeta`
//! may come with or without a context; `VerifyRange` only inside the context it names.
//! `SyncEnd` closes the context and is a durability barrier like `Fsync`.
//!
//! # What is checked before anything happens
//!
//! Every listing entry is checked when its part arrives, against the context and the entries
//! before it: a plain relative path (the empty path only for the root of a whole-tree sync,
//! as a directory), listed once, inside the scope; its parent either outside the scope (it is
//! a scope root) or an earlier directory entry, so the listing can be applied in order,
//! parents first; ids, nanoseconds and xattr names as for every other op; xattrs only on
//! directories and regular files; `link_to` only from a regular file to an earlier regular
//! file. Whatever fails is `Refused` and the context is left as it was.
//!
//! [`Op::SyncBegin`]: understudy_oplog::Op::SyncBegin
//! [`Op::SyncEnd`]: understudy_oplog::Op::SyncEnd
//! [`Op::SyncTree`]: understudy_oplog::Op::SyncTree
//! [`Op::SyncMeta`]: understudy_oplog::Op::SyncMeta

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, OFlags, StatxFlags, Timestamps};
use rustix::io::Errno;
use understudy_oplog::{EntryKind, FileRef, Timespec, TreeEntry, Xattrs};

use crate::{
    confine, owner, perm, rustix_time, xattr, Applier, ApplyError, Bad, Ctx, Target,
    PERMISSION_BITS,
};

/// Longest range a `VerifyRange` may ask to hash: it is read in full by the passive.
pub(crate) const MAX_VERIFY_RANGE: u64 = 64 << 20;
/// Longest symlink target (PATH_MAX), as for `Op::Symlink`.
const MAX_TARGET: usize = 4096;
/// How much of a range is read at once to hash it.
const HASH_CHUNK: u64 = 1 << 20;

/// Most listing entries buffered for one sync (the listing arrives in parts and is applied
/// when the last one arrives).
pub const MAX_LISTING_ENTRIES: usize = 4_000_000;

/// Reopens a file of this replica later without its path (`name_to_handle_at`). Made and
/// used on this node only; never sent over the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHandle {
    pub(crate) handle_type: i32,
    pub(crate) bytes: Vec<u8>,
}

/// What a resync or verify reports to the layer above while its records are applied.
pub trait SyncObserver {
    /// A resync is about to change or remove `path`, an existing non-directory entry of the
    /// replica: its content will be rewritten (it fails the quick check), its type replaced,
    /// its hard-link group changed, or its name removed. `file` is the open regular file
    /// (read-only), `None` for symlinks and special files. An error aborts the record
    /// (`ApplyError::Io`) before anything is changed.
    fn before_change(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        file: Option<&OwnedFd>,
    ) -> io::Result<()>;

    /// After the last `SyncTree` part of a resync: the regular file at listing `index` needs
    /// its content. `existing` is the replica's file to compare blocks against (kept, so
    /// `Write`s patch it), or `None` when the file was created empty.
    fn need_content(&mut self, index: u32, existing: Option<LocalHandle>);

    /// After the last `SyncTree` part of a verify: the regular file at listing `index` is
    /// present in both trees; compare its content (`handle` reopens the replica's file).
    fn compare_content(&mut self, index: u32, handle: LocalHandle);

    /// Verify: the replica differs from the listing at `path` (nothing is changed). `what`
    /// is a short phrase: "missing", "extra", "type", "mode", "owner", "mtime", "size",
    /// "symlink target", "device", "xattrs", "hard links".
    fn differs(&mut self, path: &[u8], what: &'static str);

    /// Verify: a `VerifyRange` record was checked against the replica.
    fn range_checked(&mut self, id: u64, path: &[u8], offset: u64, len: u64, matches: bool);
}

/// An observer that wants nothing: `Applier::apply` uses it.
pub struct NoObserver;

impl SyncObserver for NoObserver {
    fn before_change(&mut self, _: &[u8], _: EntryKind, _: Option<&OwnedFd>) -> io::Result<()> {
        Ok(())
    }
    fn need_content(&mut self, _: u32, _: Option<LocalHandle>) {}
    fn compare_content(&mut self, _: u32, _: LocalHandle) {}
    fn differs(&mut self, _: &[u8], _: &'static str) {}
    fn range_checked(&mut self, _: u64, _: &[u8], _: u64, _: u64, _: bool) {}
}

/// What a sync covers.
pub(crate) enum Scope {
    /// The whole tree; its root is the replica root, named by the empty path.
    Whole,
    /// Subtree roots, none inside another (normalised).
    Roots(BTreeSet<Vec<u8>>),
}

/// An open resync or verify, between its `SyncBegin` and its `SyncEnd`.
pub(crate) struct SyncState {
    pub(crate) id: u64,
    pub(crate) verify: bool,
    pub(crate) scope: Scope,
    /// The listing parts received so far.
    pub(crate) entries: Vec<TreeEntry>,
    /// Listing index of each path in `entries`.
    pub(crate) index: HashMap<Vec<u8>, u32>,
    /// The last part arrived and was applied (or compared): no more listing.
    pub(crate) listed: bool,
}

impl SyncState {
    fn kind_at(&self, part: &[TreeEntry], first: usize, i: usize) -> EntryKind {
        if i < first {
            self.entries[i].kind
        } else {
            part[i - first].kind
        }
    }
}

/// Drops every scope root that lies inside another one. Sorted component by component, a
/// path's descendants follow it directly, so one pass against the last root kept is enough.
fn normalise(paths: &[Vec<u8>]) -> BTreeSet<Vec<u8>> {
    fn components(p: &[u8]) -> std::slice::Split<'_, u8, impl FnMut(&u8) -> bool> {
        p.split(|&b| b == b'/')
    }
    let mut sorted: Vec<&Vec<u8>> = paths.iter().collect();
    sorted.sort_by(|a, b| components(a).cmp(components(b)));
    let mut kept: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut last: Option<&[u8]> = None;
    for p in sorted {
        if let Some(l) = last {
            if is_at_or_under(p, l) {
                continue;
            }
        }
        kept.insert(p.clone());
        last = Some(p);
    }
    kept
}

/// `candidate` is `path` or lies beneath it.
pub(crate) fn is_at_or_under(candidate: &[u8], path: &[u8]) -> bool {
    candidate.starts_with(path) && (candidate.len() == path.len() || candidate[path.len()] == b'/')
}

pub(crate) fn check_ids(at: &[u8], uid: u32, gid: u32) -> Result<(), Bad> {
    if uid == u32::MAX || gid == u32::MAX {
        return Err((at.to_vec(), "uid or gid 4294967295 is not an id"));
    }
    Ok(())
}

fn check_time(at: &[u8], t: Timespec) -> Result<(), Bad> {
    // Out-of-range nanoseconds could smuggle UTIME_NOW / UTIME_OMIT into utimensat.
    if t.nsec >= 1_000_000_000 {
        return Err((at.to_vec(), "nanoseconds out of range"));
    }
    Ok(())
}

/// Valid names, each once: the set is made exactly this, so a name twice has no meaning.
fn check_xattrs(at: &[u8], xattrs: &Xattrs) -> Result<(), Bad> {
    let mut seen = HashSet::with_capacity(xattrs.len());
    for (name, _) in xattrs {
        if name.is_empty() || name.len() > crate::MAX_XATTR_NAME || name.contains(&0) {
            return Err((at.to_vec(), "invalid xattr name"));
        }
        if !seen.insert(&name[..]) {
            return Err((at.to_vec(), "xattr listed twice"));
        }
    }
    Ok(())
}

fn open_sync(sync: Option<&SyncState>, id: u64) -> Result<&SyncState, Bad> {
    match sync {
        None => Err((vec![], "no resync or verify in progress")),
        Some(s) if s.id != id => Err((vec![], "sync id does not match the sync in progress")),
        Some(s) => Ok(s),
    }
}

pub(crate) fn check_begin(scope: Option<&[Vec<u8>]>) -> Result<(), Bad> {
    for p in scope.unwrap_or_default() {
        confine::check_path(p).map_err(|why| (p.clone(), why))?;
    }
    Ok(())
}

/// Checks one listing part against the open context and the entries before it (see the
/// module docs).
pub(crate) fn check_tree(
    sync: Option<&SyncState>,
    id: u64,
    first_index: u32,
    part: &[TreeEntry],
) -> Result<(), Bad> {
    let s = open_sync(sync, id)?;
    if s.listed {
        return Err((vec![], "the listing of this sync is already complete"));
    }
    let first = first_index as usize;
    if first != s.entries.len() {
        return Err((vec![], "listing part out of order"));
    }
    if part.len() > MAX_LISTING_ENTRIES - first.min(MAX_LISTING_ENTRIES) {
        return Err((vec![], "listing longer than MAX_LISTING_ENTRIES"));
    }
    let mut here: HashMap<&[u8], usize> = HashMap::with_capacity(part.len());
    let lookup = |here: &HashMap<&[u8], usize>, p: &[u8]| -> Option<usize> {
        here.get(p)
            .copied()
            .or_else(|| s.index.get(p).map(|&i| i as usize))
    };
    for (k, e) in part.iter().enumerate() {
        let index = first + k;
        let at = &e.path[..];
        if at.is_empty() {
            if !matches!(s.scope, Scope::Whole) {
                return Err((vec![], "the root is outside the scope"));
            }
            if e.kind != EntryKind::Dir {
                return Err((vec![], "the root must be a directory"));
            }
        } else {
            confine::check_path(at).map_err(|why| (at.to_vec(), why))?;
            let is_scope_root = match &s.scope {
                Scope::Whole => false,
                Scope::Roots(roots) => roots.contains(at),
            };
            if !is_scope_root {
                let (parent, _) = confine::split(at);
                let parent_ok = match lookup(&here, parent) {
                    Some(j) => s.kind_at(part, first, j) == EntryKind::Dir,
                    // The replica root is a directory whether or not it is listed.
                    None => parent.is_empty() && matches!(s.scope, Scope::Whole),
                };
                if !parent_ok {
                    return Err((
                        at.to_vec(),
                        "entry outside the scope or not after its parent directory",
                    ));
                }
            }
        }
        if lookup(&here, at).is_some() {
            return Err((at.to_vec(), "path listed twice"));
        }
        check_ids(at, e.uid, e.gid)?;
        check_time(at, e.mtime)?;
        check_xattrs(at, &e.xattrs)?;
        if !e.xattrs.is_empty() && !matches!(e.kind, EntryKind::Dir | EntryKind::Regular) {
            return Err((at.to_vec(), "xattrs on an entry that cannot hold them"));
        }
        if e.kind == EntryKind::Symlink
            && (e.target.is_empty() || e.target.contains(&0) || e.target.len() > MAX_TARGET)
        {
            return Err((at.to_vec(), "invalid symlink target"));
        }
        if let Some(to) = e.link_to {
            let to = to as usize;
            if e.kind != EntryKind::Regular {
                return Err((
                    at.to_vec(),
                    "hard link on an entry that is not a regular file",
                ));
            }
            if to >= index || s.kind_at(part, first, to) != EntryKind::Regular {
                return Err((
                    at.to_vec(),
                    "hard link to an entry that is not an earlier regular file",
                ));
            }
        }
        here.insert(at, index);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_meta(
    path: &[u8],
    size: u64,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: &Xattrs,
) -> Result<(), Bad> {
    confine::check_path(path).map_err(|why| (path.to_vec(), why))?;
    check_ids(path, uid, gid)?;
    check_time(path, mtime)?;
    check_xattrs(path, xattrs)?;
    if size > i64::MAX as u64 {
        return Err((path.to_vec(), "size out of range"));
    }
    Ok(())
}

pub(crate) fn check_range(
    sync: Option<&SyncState>,
    id: u64,
    path: &[u8],
    offset: u64,
    len: u64,
) -> Result<(), Bad> {
    open_sync(sync, id)?;
    confine::check_path(path).map_err(|why| (path.to_vec(), why))?;
    if len > MAX_VERIFY_RANGE {
        return Err((path.to_vec(), "range longer than 64 MiB"));
    }
    match offset.checked_add(len) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err((path.to_vec(), "range beyond the largest file offset")),
    }
}

pub(crate) fn check_end(sync: Option<&SyncState>, id: u64) -> Result<(), Bad> {
    let s = open_sync(sync, id)?;
    if !s.listed && !s.entries.is_empty() {
        return Err((vec![], "sync ended in the middle of its listing"));
    }
    Ok(())
}

pub(crate) fn entry_kind(ft: FileType) -> Option<EntryKind> {
    Some(match ft {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::Regular,
        FileType::Symlink => EntryKind::Symlink,
        FileType::Fifo => EntryKind::Fifo,
        FileType::CharacterDevice => EntryKind::CharDevice,
        FileType::BlockDevice => EntryKind::BlockDevice,
        FileType::Socket => EntryKind::Socket,
        FileType::Unknown => return None,
    })
}

impl Applier {
    pub(crate) fn sync_begin(
        &mut self,
        ctx: Ctx,
        id: u64,
        verify: bool,
        scope: Option<&[Vec<u8>]>,
    ) -> Result<(), ApplyError> {
        // Replaced even if this one fails: the layer above starts over after an error.
        self.sync = None;
        let scope = match scope {
            None => Scope::Whole,
            Some(paths) => Scope::Roots(normalise(paths)),
        };
        if let Scope::Roots(roots) = &scope {
            for root in roots {
                // Resolves the parent, confined, as a directory: missing (or not a
                // directory) is a divergence, a symlink on the way a refusal.
                self.locate(ctx, root)?;
            }
        }
        self.sync = Some(SyncState {
            id,
            verify,
            scope,
            entries: Vec::new(),
            index: HashMap::new(),
            listed: false,
        });
        Ok(())
    }

    pub(crate) fn sync_tree(
        &mut self,
        ctx: Ctx,
        observer: &mut dyn SyncObserver,
        part: &[TreeEntry],
        last: bool,
    ) -> Result<(), ApplyError> {
        let Some(mut state) = self.sync.take() else {
            return Err(ctx.refuse(b"", "no resync or verify in progress"));
        };
        let first = state.entries.len();
        for (k, e) in part.iter().enumerate() {
            // Bounded by MAX_LISTING_ENTRIES (checked), so this fits in a u32.
            state.index.insert(e.path.clone(), (first + k) as u32);
        }
        state.entries.extend_from_slice(part);
        if !last {
            self.sync = Some(state);
            return Ok(());
        }
        // On error the context is dropped (the layer above starts over).
        let started = std::time::Instant::now();
        if state.verify {
            self.verify_listing(ctx, observer, &state)?;
        } else {
            self.resync_listing(ctx, observer, &state)?;
        }
        tracing::info!(
            entries = state.entries.len(),
            verify = state.verify,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "listing compared with this copy"
        );
        state.entries = Vec::new();
        state.index = HashMap::new();
        state.listed = true;
        self.sync = Some(state);
        Ok(())
    }

    pub(crate) fn sync_end(&mut self) {
        self.sync = None;
        self.sync_due = true;
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sync_meta(
        &mut self,
        ctx: Ctx,
        path: &[u8],
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: Timespec,
        xattrs: &Xattrs,
    ) -> Result<(), ApplyError> {
        let file = FileRef::Path(path.to_vec());
        let (fd, id) = match self.target(ctx, &file)? {
            Target::File { fd, id } => (fd, id),
            Target::Other {
                kind: FileType::Symlink,
                ..
            } => return Err(ctx.refuse(path, "sync metadata does not go through symlinks")),
            Target::Dir { .. } | Target::Other { .. } => {
                return Err(ctx.refuse(path, "sync metadata for something not a regular file"))
            }
        };
        // Its size, times and mode only after its own writes in flight have landed.
        if self.direct.busy_with(id) {
            self.settle(ctx)?;
        }
        // What is already right is left alone: after a copy the size, owner and mode mostly
        // are, and truncate, chown and chmod each cost a metadata update (on a 10,000-file
        // initial sync, a tenth of the apply thread's time).
        let st = rfs::fstat(&*fd).map_err(|e| ctx.fail(path, e))?;
        if u64::try_from(st.st_size).ok() != Some(size) {
            rfs::ftruncate(&*fd, size).map_err(|e| ctx.fail(path, e))?;
        }
        // Owner before mode: chown clears the set-ID bits the mode may set.
        let same_owner = st.st_uid == uid && st.st_gid == gid;
        if !same_owner {
            let (uid, gid) = owner(Some(uid), Some(gid));
            rfs::fchown(&*fd, uid, gid).map_err(|e| ctx.fail(path, e))?;
        }
        if !same_owner || st.st_mode & PERMISSION_BITS != mode & PERMISSION_BITS {
            rfs::fchmod(&*fd, perm(mode)).map_err(|e| ctx.fail(path, e))?;
        }
        xattr::set_exactly(&*fd, xattrs).map_err(|e| ctx.fail(path, e))?;
        let times = Timestamps {
            last_access: rustix_time(None),
            last_modification: rustix_time(Some(mtime)),
        };
        rfs::futimens(&*fd, &times).map_err(|e| ctx.fail(path, e))?;
        self.dirty.file(id, &fd, true);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verify_range(
        &mut self,
        ctx: Ctx,
        observer: &mut dyn SyncObserver,
        id: u64,
        path: &[u8],
        offset: u64,
        len: u64,
        hash: &[u8; 32],
    ) -> Result<(), ApplyError> {
        let matches = match self.open_regular(ctx, path, true)? {
            // Missing, or not a regular file: the verify reported it already.
            None => false,
            Some(fd) => hash_range(&fd, offset, len).map_err(|e| ctx.fail(path, e))? == Some(*hash),
        };
        observer.range_checked(id, path, offset, len, matches);
        Ok(())
    }

    /// Opens the regular file at `path` read-only, confined, never reaching anything else
    /// (checked by `lstat` before opening, so a device is never opened, and by `fstat`
    /// after). `Ok(None)` if no regular file is there; with `lenient`, a missing parent
    /// directory counts as that too instead of a divergence.
    pub(crate) fn open_regular(
        &self,
        ctx: Ctx,
        path: &[u8],
        lenient: bool,
    ) -> Result<Option<OwnedFd>, ApplyError> {
        let loc = match self.locate(ctx, path) {
            Ok(loc) => loc,
            Err(ApplyError::Diverged { .. }) if lenient => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = match rfs::statx(
            &*loc.dir,
            &*loc.name,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::TYPE | StatxFlags::INO,
        ) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(ctx.fail(path, e)),
        };
        if crate::kind_of(&st) != FileType::RegularFile {
            return Ok(None);
        }
        let fd = self.open_final(
            ctx,
            &loc,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        )?;
        let opened = self.stat_fd(ctx, &fd, path)?;
        if crate::InodeId::of(&opened) != crate::InodeId::of(&st)
            || crate::kind_of(&opened) != FileType::RegularFile
        {
            return Err(ctx.refuse(path, "changed while being opened"));
        }
        Ok(Some(fd))
    }
}

/// The blake3 hash of exactly `len` bytes at `offset`, or `None` if the file ends first.
fn hash_range(fd: &OwnedFd, offset: u64, len: u64) -> Result<Option<[u8; 32]>, Errno> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; len.min(HASH_CHUNK) as usize];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        // Cannot overflow: offset + len was checked to fit in an i64.
        let at = offset + done;
        match rustix::io::pread(fd.as_fd(), &mut buf[..want], at) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(*hasher.finalize().as_bytes()))
}

/// How many components `path` has (the root, the empty path, has none).
pub(crate) fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        1 + path.iter().filter(|&&b| b == b'/').count()
    }
}

/// Deepest first (children before their parents); ties in listing order.
pub(crate) fn deepest_first(a: &[u8], b: &[u8]) -> Ordering {
    depth(b).cmp(&depth(a))
}

/// An observer's refusal, as the error that aborts the record.
pub(crate) fn observer_failed(ctx: Ctx, path: &[u8], source: io::Error) -> ApplyError {
    ApplyError::Io {
        what: format!(
            "record {}: {}: the sync observer failed before changing `{}`",
            ctx.seq,
            ctx.op,
            path.escape_ascii()
        ),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn scope_roots_inside_others_are_dropped() {
        let scope: Vec<Vec<u8>> = ["a/b/c", "a-b", "a", "x/y", "a/b", "x/y", "x/yz", "x/y/z"]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        assert_eq!(normalise(&scope), set(&["a", "a-b", "x/y", "x/yz"]));
        assert_eq!(normalise(&[]), set(&[]));
    }

    #[test]
    fn depth_orders_children_before_parents() {
        let mut paths = vec![&b""[..], b"a", b"a/b/c", b"a/b", b"z"];
        paths.sort_by(|a, b| deepest_first(a, b));
        assert_eq!(paths, vec![&b"a/b/c"[..], b"a/b", b"a", b"z", b""]);
    }
}
