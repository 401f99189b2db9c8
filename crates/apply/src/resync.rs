//! The last part of a resync listing applied to the replica, or compared with it (verify).
//!
//! # Applying a listing
//!
//! For the scope (the whole tree, or each scope root), in passes:
//!
//! 1. Walk what the replica has there, confined (never following a symlink, never crossing a
//!    mount), and plan each listed entry: keep it (the same kind, symlink target, device
//!    number and, for a regular file, hard-link group), create it, or replace what is there.
//!    Regular files are grouped by `link_to` (each group's first entry is its leader): a
//!    kept leader claims its inode, so a second group found on the same inode, or a name of
//!    the group found on another inode, is replaced.
//! 2. Tell the observer about everything that will be changed, before anything is: every
//!    non-directory that will be removed (not listed, or replaced), and every kept leader
//!    that fails the quick check (size, mtime to the nanosecond, permission bits) and so
//!    will have its content rewritten. An observer error stops the record here, with the
//!    replica untouched.
//! 3. Remove what is not listed, children first; then, in listing order (parents first),
//!    replace and create entries (a follower of a hard-link group as a link to its leader)
//!    and set the metadata of non-directories: owner, then mode (chown clears set-ID bits),
//!    then exactly the listed xattrs, then the mtime.
//! 4. Directories last, deepest first, so that no later change of their entries moves their
//!    mtime again.
//! 5. Report the leaders that need content: kept ones with a handle to patch, created ones
//!    (empty) without.
//!
//! A file that needs content keeps a stale mtime until its `SyncMeta`: if the resync stops
//! halfway, the next quick check must not mistake the old content for the new.
//!
//! A scope root's parent is outside the scope and is left alone, but creating or removing the
//! root moves its mtime. The sender can set the active's value through the record's mtimes,
//! which are applied after the listing like after any other op.
//!
//! Durability is not tracked inode by inode here: a listing can touch millions of them, so
//! the next `sync` is a `syncfs` of the replica (the dirty set's overflow).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Statx, StatxFlags};
use rustix::io::Errno;
use understudy_oplog::{EntryKind, Timespec, TreeEntry};

use crate::handle::handle_of;
use crate::sync::{
    deepest_first, entry_kind, observer_failed, LocalHandle, Scope, SyncObserver, SyncState,
};
use crate::{
    confine, io_error, owner, perm, rustix_time, xattr, Applier, ApplyError, Ctx, InodeId, Loc,
    CREATE_DIR_MODE, CREATE_MODE, PERMISSION_BITS, RESOLVE,
};

/// An entry the replica has within the scope.
struct Found {
    path: Vec<u8>,
    kind: EntryKind,
    st: Statx,
    /// Symlinks only.
    target: Vec<u8>,
}

/// What the replica has within the scope, in walk order.
#[derive(Default)]
struct Existing {
    found: Vec<Found>,
    by_path: HashMap<Vec<u8>, usize>,
}

impl Existing {
    fn get(&self, path: &[u8]) -> Option<&Found> {
        self.by_path.get(path).map(|&i| &self.found[i])
    }

    fn push(&mut self, found: Found) {
        self.by_path.insert(found.path.clone(), self.found.len());
        self.found.push(found);
    }
}

/// What happens to a listed entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    /// The replica has it right (kind, target, device, hard-link group): metadata only.
    Keep,
    /// Nothing there yet.
    Create,
    /// Something else is there: removed, then created.
    Replace,
}

/// The last parent directory resolved. A listing names the entries of one directory one
/// after the other, so most entries reuse it instead of resolving their parent again.
#[derive(Default)]
struct Parents {
    last: Option<(Vec<u8>, Arc<OwnedFd>)>,
}

impl Parents {
    fn loc<'a>(&mut self, app: &Applier, ctx: Ctx, path: &'a [u8]) -> Result<Loc<'a>, ApplyError> {
        let (parent, name) = confine::split(path);
        if let Some((last, fd)) = &self.last {
            if !parent.is_empty() && last[..] == *parent {
                return Ok(Loc {
                    dir: Arc::clone(fd),
                    path_only: true,
                    name: Cow::Borrowed(name),
                    shown: Cow::Borrowed(path),
                });
            }
        }
        let loc = app.locate(ctx, path)?;
        if !parent.is_empty() {
            self.last = Some((parent.to_vec(), Arc::clone(&loc.dir)));
        }
        Ok(loc)
    }

    /// A directory was removed: the one remembered may be it.
    fn forget(&mut self) {
        self.last = None;
    }
}

/// The leader of each regular file's hard-link group: itself, or what its `link_to` leads
/// to (always an earlier entry, checked, so one pass resolves chains).
fn leaders(entries: &[TreeEntry]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let leader = match e.link_to {
            Some(to) if (to as usize) < i => out[to as usize],
            _ => i,
        };
        out.push(leader);
    }
    out
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn lstat(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Statx, Errno> {
    rfs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
}

fn mtime_of(st: &Statx) -> Timespec {
    Timespec {
        sec: st.stx_mtime.tv_sec,
        nsec: st.stx_mtime.tv_nsec,
    }
}

fn perm_of(st: &Statx) -> u32 {
    u32::from(st.stx_mode) & PERMISSION_BITS
}

fn rdev_of(st: &Statx) -> u64 {
    rfs::makedev(st.stx_rdev_major, st.stx_rdev_minor)
}

/// The quick check: a kept regular file with the listed size, mtime and permission bits is
/// taken to have the listed content.
fn quick_check_passes(st: &Statx, e: &TreeEntry) -> bool {
    st.stx_size == e.size && mtime_of(st) == e.mtime && perm_of(st) == e.mode & PERMISSION_BITS
}

fn times(mtime: Timespec) -> rfs::Timestamps {
    rfs::Timestamps {
        last_access: rustix_time(None),
        last_modification: rustix_time(Some(mtime)),
    }
}

/// `openat2` confined beneath `dir`, retried when a rename elsewhere raced the walk.
fn open_beneath(dir: &OwnedFd, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let mut attempts = 0;
    loop {
        match rfs::openat2(
            dir,
            path,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Err(Errno::AGAIN) if attempts < 8 => attempts += 1,
            other => return other,
        }
    }
}

impl Applier {
    /// Everything the replica has within the scope (the whole-tree root itself excluded).
    fn walk(&self, ctx: Ctx, scope: &Scope) -> Result<Existing, ApplyError> {
        let mut out = Existing::default();
        let mut dirs: Vec<Vec<u8>> = Vec::new();
        match scope {
            Scope::Whole => dirs.push(Vec::new()),
            Scope::Roots(roots) => {
                for root in roots {
                    let loc = self.locate(ctx, root)?;
                    let st = match lstat(loc.dir.as_fd(), &loc.name) {
                        Ok(st) => st,
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(ctx.fail(root, e)),
                    };
                    let found = self.found(ctx, loc.dir.as_fd(), &loc.name, root.clone(), st)?;
                    if found.kind == EntryKind::Dir {
                        dirs.push(root.clone());
                    }
                    out.push(found);
                }
            }
        }
        while let Some(path) = dirs.pop() {
            let dir = if path.is_empty() {
                Dir::read_from(&*self.root)
            } else {
                let fd = open_beneath(&self.root, &path, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| ctx.resolve_failed(&path, e))?;
                Dir::new(fd)
            };
            let mut dir = dir.map_err(|e| ctx.fail(&path, e))?;
            let mut names = Vec::new();
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(|e| ctx.fail(&path, e))?;
                let name = entry.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
            }
            let fd = dir.fd().map_err(|e| ctx.fail(&path, e))?;
            for name in names {
                let child = join(&path, &name);
                let st = match lstat(fd, &name) {
                    Ok(st) => st,
                    // Gone since the directory was read.
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(ctx.fail(&child, e)),
                };
                let found = self.found(ctx, fd, &name, child, st)?;
                if found.kind == EntryKind::Dir {
                    dirs.push(found.path.clone());
                }
                out.push(found);
            }
        }
        Ok(out)
    }

    fn found(
        &self,
        ctx: Ctx,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: Vec<u8>,
        st: Statx,
    ) -> Result<Found, ApplyError> {
        let Some(kind) = entry_kind(crate::kind_of(&st)) else {
            return Err(ctx.refuse(&path, "unknown file type in the replica"));
        };
        let target = if kind == EntryKind::Symlink {
            rfs::readlinkat(dir, name, Vec::new())
                .map_err(|e| ctx.fail(&path, e))?
                .into_bytes()
        } else {
            Vec::new()
        };
        Ok(Found {
            path,
            kind,
            st,
            target,
        })
    }

    /// The regular file at `path`, read-only; its vanishing since the walk is a divergence.
    fn open_found(&self, ctx: Ctx, path: &[u8]) -> Result<OwnedFd, ApplyError> {
        self.open_regular(ctx, path, false)?
            .ok_or_else(|| ctx.fail(path, Errno::NOENT))
    }

    fn handle(&self, ctx: Ctx, path: &[u8], fd: &OwnedFd) -> Result<LocalHandle, ApplyError> {
        handle_of(fd.as_fd()).map_err(|e| {
            io_error(
                format!(
                    "record {}: name_to_handle_at on `{}` (the replica's filesystem must \
                     support file handles)",
                    ctx.seq,
                    path.escape_ascii()
                ),
                e,
            )
        })
    }

    /// A directory of the scope, read-only (the root itself for the empty path).
    fn open_dir(&self, ctx: Ctx, path: &[u8]) -> Result<Arc<OwnedFd>, ApplyError> {
        if path.is_empty() {
            return Ok(Arc::clone(&self.root));
        }
        open_beneath(&self.root, path, OFlags::RDONLY | OFlags::DIRECTORY)
            .map(Arc::new)
            .map_err(|e| ctx.resolve_failed(path, e))
    }

    pub(crate) fn resync_listing(
        &mut self,
        ctx: Ctx,
        observer: &mut dyn SyncObserver,
        state: &SyncState,
    ) -> Result<(), ApplyError> {
        let entries = &state.entries[..];
        let existing = self.walk(ctx, &state.scope)?;
        let leaders = leaders(entries);

        // 1. Plan, with nothing changed yet.
        let mut actions = Vec::with_capacity(entries.len());
        let mut claimed: HashSet<InodeId> = HashSet::new();
        let mut kept_inode: HashMap<usize, InodeId> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let action = if e.path.is_empty() {
                Action::Keep
            } else {
                match existing.get(&e.path) {
                    None => Action::Create,
                    Some(f) if f.kind != e.kind => Action::Replace,
                    Some(f) => match e.kind {
                        EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => Action::Keep,
                        EntryKind::Symlink if f.target == e.target => Action::Keep,
                        EntryKind::CharDevice | EntryKind::BlockDevice
                            if rdev_of(&f.st) == e.rdev =>
                        {
                            Action::Keep
                        }
                        EntryKind::Regular => {
                            let ino = InodeId::of(&f.st);
                            let leader = leaders[i];
                            if leader == i {
                                if claimed.insert(ino) {
                                    kept_inode.insert(i, ino);
                                    Action::Keep
                                } else {
                                    // Another group's leader has it.
                                    Action::Replace
                                }
                            } else if kept_inode.get(&leader) == Some(&ino) {
                                Action::Keep
                            } else {
                                Action::Replace
                            }
                        }
                        _ => Action::Replace,
                    },
                }
            };
            actions.push(action);
        }

        // 2. The observer sees everything that will change, before anything does.
        let mut extras: Vec<&Found> = existing
            .found
            .iter()
            .filter(|f| !state.index.contains_key(&f.path))
            .collect();
        for f in &extras {
            self.before_change(ctx, observer, f)?;
        }
        // Leaders that need content, with what to report for each.
        let mut content: Vec<(usize, Option<LocalHandle>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let leader = e.kind == EntryKind::Regular && leaders[i] == i;
            match (actions[i], existing.get(&e.path)) {
                (Action::Replace, Some(f)) => {
                    self.before_change(ctx, observer, f)?;
                    if leader {
                        content.push((i, None));
                    }
                }
                (Action::Create, _) if leader => content.push((i, None)),
                (Action::Keep, Some(f)) if leader && !quick_check_passes(&f.st, e) => {
                    let fd = self.open_found(ctx, &f.path)?;
                    observer
                        .before_change(&f.path, f.kind, Some(&fd))
                        .map_err(|err| observer_failed(ctx, &f.path, err))?;
                    content.push((i, Some(self.handle(ctx, &f.path, &fd)?)));
                }
                _ => {}
            }
        }
        let needs_content: HashSet<usize> = content.iter().map(|(i, _)| *i).collect();

        // From here on the replica changes: whatever happens, nothing cached for a path of
        // the scope may be used again, and the next sync covers everything.
        match &state.scope {
            Scope::Whole => self.cache.forget_all_paths(),
            Scope::Roots(roots) => roots.iter().for_each(|r| self.cache.forget_path(r)),
        }
        self.dirty.overflow();

        // 3. Remove what is not listed, children first.
        let mut parents = Parents::default();
        extras.sort_by(|a, b| deepest_first(&a.path, &b.path));
        for f in extras {
            self.remove(ctx, &mut parents, f)?;
        }
        // Replace, create, and set non-directories' metadata, parents first.
        for (i, e) in entries.iter().enumerate() {
            let old = existing.get(&e.path);
            let mut created = None;
            match actions[i] {
                Action::Keep => {}
                Action::Replace => {
                    if let Some(f) = old {
                        self.remove(ctx, &mut parents, f)?;
                    }
                    created = self.create(ctx, &mut parents, entries, &leaders, i)?;
                }
                Action::Create => created = self.create(ctx, &mut parents, entries, &leaders, i)?,
            }
            let old = if actions[i] == Action::Keep {
                old.map(|f| &f.st)
            } else {
                None
            };
            match e.kind {
                // Last, deepest first.
                EntryKind::Dir => {}
                // A follower's metadata is its leader's inode's, set with the leader.
                EntryKind::Regular if leaders[i] != i => {}
                EntryKind::Regular => {
                    let (fd, created_st) = match created {
                        // A file just created here has the daemon's owner and CREATE_MODE:
                        // knowing them spares a chown (the costliest of the metadata calls)
                        // when the entry has the same owner, as most do.
                        Some(fd) => {
                            let st = rfs::statx(
                                &fd,
                                "",
                                AtFlags::EMPTY_PATH,
                                StatxFlags::UID | StatxFlags::GID | StatxFlags::MODE,
                            )
                            .ok();
                            (fd, st)
                        }
                        None => (self.open_found(ctx, &e.path)?, None),
                    };
                    let mtime = !needs_content.contains(&i);
                    let old = old.or(created_st.as_ref());
                    self.meta_fd(ctx, &e.path, &fd, e, old, mtime)?;
                }
                _ => {
                    let loc = parents.loc(self, ctx, &e.path)?;
                    self.meta_at(ctx, &loc, e, old)?;
                }
            }
        }

        // 4. Directories, deepest first: nothing changes their entries after this.
        let mut dirs: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].kind == EntryKind::Dir)
            .collect();
        dirs.sort_by(|&a, &b| deepest_first(&entries[a].path, &entries[b].path));
        for i in dirs {
            let e = &entries[i];
            let fd = self.open_dir(ctx, &e.path)?;
            let old = match (actions[i], existing.get(&e.path)) {
                (Action::Keep, Some(f)) => Some(&f.st),
                _ => None,
            };
            self.meta_fd(ctx, &e.path, &fd, e, old, true)?;
        }

        // 5. What needs content, now that the listing is in place.
        for (i, handle) in content {
            // Bounded by MAX_LISTING_ENTRIES, so it fits.
            observer.need_content(i as u32, handle);
        }
        Ok(())
    }

    /// Tells the observer about a non-directory about to be removed or replaced.
    fn before_change(
        &self,
        ctx: Ctx,
        observer: &mut dyn SyncObserver,
        f: &Found,
    ) -> Result<(), ApplyError> {
        let result = match f.kind {
            EntryKind::Dir => return Ok(()),
            EntryKind::Regular => {
                let fd = self.open_found(ctx, &f.path)?;
                observer.before_change(&f.path, f.kind, Some(&fd))
            }
            _ => observer.before_change(&f.path, f.kind, None),
        };
        result.map_err(|err| observer_failed(ctx, &f.path, err))
    }

    /// Removes an entry found by the walk (a directory only once emptied: its entries come
    /// first).
    fn remove(&self, ctx: Ctx, parents: &mut Parents, f: &Found) -> Result<(), ApplyError> {
        let loc = parents.loc(self, ctx, &f.path)?;
        let flags = if f.kind == EntryKind::Dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rfs::unlinkat(&*loc.dir, &*loc.name, flags).map_err(|e| ctx.fail(&f.path, e))?;
        if f.kind == EntryKind::Dir {
            parents.forget();
        }
        Ok(())
    }

    /// Creates entry `i` (a follower of a hard-link group as a link to its leader). Returns
    /// the descriptor of a regular file it created.
    fn create(
        &self,
        ctx: Ctx,
        parents: &mut Parents,
        entries: &[TreeEntry],
        leaders: &[usize],
        i: usize,
    ) -> Result<Option<OwnedFd>, ApplyError> {
        let e = &entries[i];
        let path = &e.path[..];
        let loc = parents.loc(self, ctx, path)?;
        let file_type = match e.kind {
            EntryKind::Dir => {
                // Its final mode comes last: until then nothing else can use it.
                rfs::mkdirat(&*loc.dir, &*loc.name, Mode::from_raw_mode(CREATE_DIR_MODE))
                    .map_err(|err| ctx.fail(path, err))?;
                return Ok(None);
            }
            EntryKind::Regular if leaders[i] != i => {
                let leader = &entries[leaders[i]].path;
                let from = self.locate(ctx, leader)?;
                // Without AT_SYMLINK_FOLLOW: the leader itself, never what a name points at.
                rfs::linkat(
                    &*from.dir,
                    &*from.name,
                    &*loc.dir,
                    &*loc.name,
                    AtFlags::empty(),
                )
                .map_err(|err| ctx.fail(path, err))?;
                return Ok(None);
            }
            EntryKind::Regular => {
                // O_EXCL never follows a symlink; empty, its content follows.
                let fd = rfs::openat2(
                    &*loc.dir,
                    &*loc.name,
                    OFlags::RDONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(CREATE_MODE),
                    RESOLVE,
                )
                .map_err(|err| ctx.resolve_failed(path, err))?;
                return Ok(Some(fd));
            }
            EntryKind::Symlink => {
                // The target is data: stored as is, never resolved here.
                rfs::symlinkat(&e.target[..], &*loc.dir, &*loc.name)
                    .map_err(|err| ctx.fail(path, err))?;
                return Ok(None);
            }
            EntryKind::Fifo => FileType::Fifo,
            EntryKind::Socket => FileType::Socket,
            EntryKind::CharDevice => FileType::CharacterDevice,
            EntryKind::BlockDevice => FileType::BlockDevice,
        };
        let dev = match e.kind {
            EntryKind::CharDevice | EntryKind::BlockDevice => e.rdev,
            _ => 0,
        };
        rfs::mknodat(
            &*loc.dir,
            &*loc.name,
            file_type,
            Mode::from_raw_mode(CREATE_MODE),
            dev,
        )
        .map_err(|err| ctx.fail(path, err))?;
        Ok(None)
    }

    /// Owner, mode, exact xattrs and (unless content is still to come) mtime of a regular
    /// file or directory. `old` is what a kept entry had: what is already right is left
    /// alone (a needless chown would clear set-ID bits and file capabilities).
    fn meta_fd(
        &self,
        ctx: Ctx,
        path: &[u8],
        fd: &OwnedFd,
        e: &TreeEntry,
        old: Option<&Statx>,
        set_mtime: bool,
    ) -> Result<(), ApplyError> {
        let same_owner = old.is_some_and(|st| st.stx_uid == e.uid && st.stx_gid == e.gid);
        if !same_owner {
            let (uid, gid) = owner(Some(e.uid), Some(e.gid));
            rfs::fchown(fd, uid, gid).map_err(|err| ctx.fail(path, err))?;
        }
        // After any chown: it clears set-ID bits.
        if !same_owner || old.map(perm_of) != Some(e.mode & PERMISSION_BITS) {
            rfs::fchmod(fd, perm(e.mode)).map_err(|err| ctx.fail(path, err))?;
        }
        xattr::set_exactly(fd, &e.xattrs).map_err(|err| ctx.fail(path, err))?;
        if set_mtime {
            rfs::futimens(fd, &times(e.mtime)).map_err(|err| ctx.fail(path, err))?;
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks, which have none) and mtime of a symlink or special
    /// file, by name, never following it.
    fn meta_at(
        &self,
        ctx: Ctx,
        loc: &Loc<'_>,
        e: &TreeEntry,
        old: Option<&Statx>,
    ) -> Result<(), ApplyError> {
        let same_owner = old.is_some_and(|st| st.stx_uid == e.uid && st.stx_gid == e.gid);
        if !same_owner {
            let (uid, gid) = owner(Some(e.uid), Some(e.gid));
            rfs::chownat(&*loc.dir, &*loc.name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| ctx.fail(&loc.shown, err))?;
        }
        if e.kind != EntryKind::Symlink
            && (!same_owner || old.map(perm_of) != Some(e.mode & PERMISSION_BITS))
        {
            self.chmod_special(ctx, loc, e.mode)?;
        }
        rfs::utimensat(
            &*loc.dir,
            &*loc.name,
            &times(e.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| ctx.fail(&loc.shown, err))
    }

    pub(crate) fn verify_listing(
        &mut self,
        ctx: Ctx,
        observer: &mut dyn SyncObserver,
        state: &SyncState,
    ) -> Result<(), ApplyError> {
        let entries = &state.entries[..];
        let existing = self.walk(ctx, &state.scope)?;
        let leaders = leaders(entries);
        // Which group each inode was first seen in, and each leader's inode.
        let mut inode_group: HashMap<InodeId, usize> = HashMap::new();
        let mut leader_inode: HashMap<usize, InodeId> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let root;
            let f = if e.path.is_empty() {
                let st = rfs::statx(
                    &*self.root,
                    "",
                    AtFlags::EMPTY_PATH,
                    StatxFlags::BASIC_STATS,
                )
                .map_err(|err| ctx.fail(b"", err))?;
                root = Found {
                    path: Vec::new(),
                    kind: EntryKind::Dir,
                    st,
                    target: Vec::new(),
                };
                &root
            } else {
                match existing.get(&e.path) {
                    Some(f) => f,
                    None => {
                        observer.differs(&e.path, "missing");
                        continue;
                    }
                }
            };
            if f.kind != e.kind {
                observer.differs(&e.path, "type");
                continue;
            }
            let st = &f.st;
            if e.kind != EntryKind::Symlink && perm_of(st) != e.mode & PERMISSION_BITS {
                observer.differs(&e.path, "mode");
            }
            if st.stx_uid != e.uid || st.stx_gid != e.gid {
                observer.differs(&e.path, "owner");
            }
            if mtime_of(st) != e.mtime {
                observer.differs(&e.path, "mtime");
            }
            match e.kind {
                EntryKind::Regular if st.stx_size != e.size => observer.differs(&e.path, "size"),
                EntryKind::Symlink if f.target != e.target => {
                    observer.differs(&e.path, "symlink target")
                }
                EntryKind::CharDevice | EntryKind::BlockDevice if rdev_of(st) != e.rdev => {
                    observer.differs(&e.path, "device")
                }
                _ => {}
            }
            let fd = match e.kind {
                EntryKind::Dir => self.open_dir(ctx, &e.path)?,
                EntryKind::Regular => Arc::new(self.open_found(ctx, &e.path)?),
                _ => continue,
            };
            let have = xattr::read_all(&*fd).map_err(|err| ctx.fail(&e.path, err))?;
            if !xattr::same_set(&e.xattrs, &have) {
                observer.differs(&e.path, "xattrs");
            }
            if e.kind != EntryKind::Regular {
                continue;
            }
            // Hard links: a follower on its leader's inode, and no inode shared by two groups.
            let ino = InodeId::of(st);
            let leader = leaders[i];
            let mut linked_right = match inode_group.get(&ino) {
                Some(&group) => group == leader,
                None => {
                    inode_group.insert(ino, leader);
                    true
                }
            };
            if leader == i {
                leader_inode.insert(i, ino);
            } else {
                linked_right &= leader_inode.get(&leader) == Some(&ino);
            }
            if !linked_right {
                observer.differs(&e.path, "hard links");
            }
            if leader == i {
                let handle = self.handle(ctx, &e.path, &fd)?;
                observer.compare_content(i as u32, handle);
            }
        }
        let mut extras: Vec<&[u8]> = existing
            .found
            .iter()
            .map(|f| &f.path[..])
            .filter(|p| !state.index.contains_key(*p))
            .collect();
        extras.sort();
        for p in extras {
            observer.differs(p, "extra");
        }
        Ok(())
    }
}
