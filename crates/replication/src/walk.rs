//! The active's side of a resync listing: walks the scope of its copy (the capture's backing
//! directory) and describes every entry as a [`TreeEntry`], parents before children. Made
//! under the capture's order lock, the listing is exact at one seq; made without it (a
//! tolerant walk, see `prelist.rs`), it is a draft that the change log makes exact later.
//!
//! Scope paths may come from the passive's change log, so they are resolved confined to the
//! copy (openat2 beneath the root, no symlinks, no mount crossings) like any path from the
//! network; one that does not resolve simply has no entries (the passive removes it).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;
use understudy_oplog::{EntryKind, Timespec, TreeEntry, Xattrs};

/// Most entries one listing may hold (the passive's buffer has the same bound).
pub const LISTING_MAX: usize = understudy_apply::MAX_LISTING_ENTRIES;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// A file of the active's copy, reopened later without its path (`name_to_handle_at`).
pub type ActiveHandle = understudy_apply::LocalHandle;

/// A regular file of the listing whose content may have to be sent.
#[derive(Clone, Debug)]
pub struct ListedFile {
    pub index: u32,
    pub size: u64,
    pub handle: Option<ActiveHandle>,
}

/// The listing: its entries (recorded as `SyncTree` parts) and, by listing index, the
/// regular files that lead their hard-link group.
pub struct Listing {
    pub entries: Vec<TreeEntry>,
    pub files: HashMap<u32, ListedFile>,
}

impl Listing {
    /// The path entry `index` was listed under (empty for an index out of range).
    pub fn path_of(&self, index: u32) -> &[u8] {
        self.entries.get(index as usize).map_or(&[], |e| &e.path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{what} `{}`: {source}", .path.escape_ascii())]
    Io {
        what: &'static str,
        path: Vec<u8>,
        source: std::io::Error,
    },
    #[error("the scope holds more than {LISTING_MAX} entries")]
    TooLarge,
}

fn io<'a>(what: &'static str, path: &'a [u8]) -> impl FnOnce(Errno) -> WalkError + 'a {
    move |e| WalkError::Io {
        what,
        path: path.to_vec(),
        source: e.into(),
    }
}

/// Keeps only the scope roots not inside another one, sorted.
pub fn normalize_scope(mut paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    paths.retain(|p| !p.is_empty());
    paths.sort();
    paths.dedup();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(paths.len());
    for p in paths {
        // Sorted, so an ancestor comes right before its descendants.
        let covered = out
            .last()
            .is_some_and(|a| p.len() > a.len() && p.starts_with(a) && p[a.len()] == b'/');
        if !covered {
            out.push(p);
        }
    }
    out
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        p.extend_from_slice(dir);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

struct Walker<'a> {
    root: &'a OwnedFd,
    out: Listing,
    /// (dev, ino) of regular files with several links -> listing index of the first name.
    links: HashMap<(u64, u64), u32>,
    notes: WalkNotes,
    /// Skip what cannot be read (it changed under the walk) instead of failing.
    tolerant: bool,
}

/// What a walk saw besides the entries.
#[derive(Debug, Default)]
pub struct WalkNotes {
    /// Listing indices of regular files that had more than one link, with their inode
    /// (device, number).
    pub multi_link: HashMap<u32, (u64, u64)>,
    /// Paths a tolerant walk could not describe or read completely (they changed under it).
    pub skipped: Vec<Vec<u8>>,
}

/// Lists `scope` (`None`: the whole tree, root included) of the copy at `root`.
pub fn list(root: &OwnedFd, scope: Option<&[Vec<u8>]>) -> Result<Listing, WalkError> {
    walk(root, scope, false).map(|(listing, _)| listing)
}

/// Lists `scope` like [`list`]. `tolerant` is for a walk racing with changes: whatever
/// cannot be read is left out and named in the notes, and only [`WalkError::TooLarge`]
/// fails it.
pub fn walk(
    root: &OwnedFd,
    scope: Option<&[Vec<u8>]>,
    tolerant: bool,
) -> Result<(Listing, WalkNotes), WalkError> {
    let mut w = Walker::new(root);
    w.tolerant = tolerant;
    match scope {
        None => {
            let dup = open_root_dir(root)?;
            w.entry_at(&dup, b"", b"")?;
        }
        Some(paths) => {
            for path in normalize_scope(paths.to_vec()) {
                // Not there (or not a plain directory path) on the active: no entries.
                let Ok((dir, name)) = open_parent(root, &path) else {
                    continue;
                };
                w.entry_at(&dir, name, &path)?;
            }
        }
    }
    Ok((w.out, w.notes))
}

/// The names in a directory but `.` and `..`, sorted.
fn read_names(dir: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for item in rfs::Dir::read_from(dir)? {
        let n = item?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Describes the one entry at `path` (not what is below it), as [`list`] would.
/// `Ok(None)` if nothing is there.
pub fn describe_one(root: &OwnedFd, path: &[u8]) -> Result<Option<TreeEntry>, WalkError> {
    let mut w = Walker::new(root);
    if path.is_empty() {
        w.describe(&open_root_dir(root)?, b"", b"", false)?;
    } else {
        let Ok((dir, name)) = open_parent(root, path) else {
            return Ok(None);
        };
        w.describe(&dir, name, path, false)?;
    }
    Ok(w.out.entries.pop())
}

/// The copy's root, opened to be read.
fn open_root_dir(root: &OwnedFd) -> Result<OwnedFd, WalkError> {
    rfs::openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open", b""))
}

/// The directory holding `path` (a location only, `O_PATH`, resolved confined) and
/// `path`'s last name.
fn open_parent<'p>(root: &OwnedFd, path: &'p [u8]) -> Result<(OwnedFd, &'p [u8]), Errno> {
    let (parent, name) = split_parent(path);
    let dir = if parent.is_empty() {
        rfs::openat(
            root,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    } else {
        rfs::openat2(
            root,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }?;
    Ok((dir, name))
}

impl<'a> Walker<'a> {
    fn new(root: &'a OwnedFd) -> Self {
        Walker {
            root,
            out: Listing {
                entries: Vec::new(),
                files: HashMap::new(),
            },
            links: HashMap::new(),
            notes: WalkNotes::default(),
            tolerant: false,
        }
    }

    /// A failure to read `path`: the walk's error, or in a tolerant walk a note.
    fn failed(&mut self, path: &[u8], error: WalkError) -> Result<bool, WalkError> {
        if self.tolerant {
            self.notes.skipped.push(path.to_vec());
            Ok(false)
        } else {
            Err(error)
        }
    }

    /// Describes `name` in `dir` (the root itself when `name` is empty, with `dir` the
    /// root) and everything below it if it is a directory. Parents always come before
    /// their children; a directory's entries are listed in name order before its
    /// subdirectories are entered.
    fn entry_at(&mut self, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), WalkError> {
        // Paths on an explicit stack, not open descriptors: trees can be deep and wide.
        let mut stack: Vec<Vec<u8>> = Vec::new();
        if self.describe(dir, name, path, false)? {
            stack.push(path.to_vec());
        }
        while let Some(dir_path) = stack.pop() {
            let dir_fd = if dir_path.is_empty() {
                rfs::openat(
                    self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            } else {
                rfs::openat2(
                    self.root,
                    &dir_path[..],
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
            };
            let dir_fd = match dir_fd {
                Ok(fd) => fd,
                Err(e) => {
                    self.failed(&dir_path, io("open", &dir_path)(e))?;
                    continue;
                }
            };
            let names = match read_names(&dir_fd) {
                Ok(names) => names,
                Err(e) => {
                    self.failed(&dir_path, io("readdir", &dir_path)(e))?;
                    continue;
                }
            };
            let mut subdirs = Vec::new();
            for n in &names {
                let child = join(&dir_path, n);
                if self.describe(&dir_fd, n, &child, true)? {
                    subdirs.push(child);
                }
            }
            // Reversed, so the stack enters them in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Adds the entry for `name` in `dir`. Returns true if it is a directory. `read` says
    /// the name was read from `dir` (so its absence means it went away during the walk).
    fn describe(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        path: &[u8],
        read: bool,
    ) -> Result<bool, WalkError> {
        if self.out.entries.len() >= LISTING_MAX {
            return Err(WalkError::TooLarge);
        }
        let at: &[u8] = if name.is_empty() { b"" } else { name };
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        let st = match rfs::statx(dir, at, flags, StatxFlags::BASIC_STATS) {
            Ok(st) => st,
            // Gone since the directory was read: impossible under the order lock, unless
            // something outside the mount changed the directory; then it simply is not there.
            Err(Errno::NOENT) => {
                if self.tolerant && read {
                    self.notes.skipped.push(path.to_vec());
                }
                return Ok(false);
            }
            Err(e) => return self.failed(path, io("stat", path)(e)),
        };
        let kind = match FileType::from_raw_mode(u32::from(st.stx_mode)) {
            FileType::Directory => EntryKind::Dir,
            FileType::RegularFile => EntryKind::Regular,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Fifo => EntryKind::Fifo,
            FileType::CharacterDevice => EntryKind::CharDevice,
            FileType::BlockDevice => EntryKind::BlockDevice,
            FileType::Socket => EntryKind::Socket,
            FileType::Unknown => return Ok(false),
        };
        let index = self.out.entries.len() as u32;
        let mut entry = TreeEntry {
            path: path.to_vec(),
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
                libc::makedev(st.stx_rdev_major, st.stx_rdev_minor)
            } else {
                0
            },
            size: if kind == EntryKind::Regular {
                st.stx_size
            } else {
                0
            },
            mtime: Timespec {
                sec: st.stx_mtime.tv_sec,
                nsec: st.stx_mtime.tv_nsec,
            },
            target: Vec::new(),
            link_to: None,
            xattrs: Vec::new(),
        };
        match kind {
            EntryKind::Symlink => match rfs::readlinkat(dir, at, Vec::new()) {
                Ok(target) => entry.target = target.into_bytes(),
                Err(e) => return self.failed(path, io("readlink", path)(e)),
            },
            EntryKind::Dir => {
                let fd = if name.is_empty() {
                    rfs::openat(
                        dir,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                } else {
                    rfs::openat(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                };
                match fd
                    .map_err(io("open", path))
                    .and_then(|fd| xattrs_of(&fd).map_err(io("xattrs", path)))
                {
                    Ok(x) => entry.xattrs = x,
                    Err(e) => return self.failed(path, e),
                }
            }
            EntryKind::Regular => {
                let key = (
                    libc::makedev(st.stx_dev_major, st.stx_dev_minor),
                    st.stx_ino,
                );
                if st.stx_nlink > 1 {
                    self.notes.multi_link.insert(index, key);
                    if let Some(&first) = self.links.get(&key) {
                        entry.link_to = Some(first);
                        entry.xattrs = self.out.entries[first as usize].xattrs.clone();
                        self.out.entries.push(entry);
                        return Ok(false);
                    }
                }
                let opened = rfs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io("open", path))
                .and_then(|fd| Ok((xattrs_of(&fd).map_err(io("xattrs", path))?, fd)));
                let fd = match opened {
                    Ok((x, fd)) => {
                        entry.xattrs = x;
                        fd
                    }
                    Err(e) => {
                        self.notes.multi_link.remove(&index);
                        return self.failed(path, e);
                    }
                };
                // Only now: a later name of the file must never point at an index left out.
                if st.stx_nlink > 1 {
                    self.links.insert(key, index);
                }
                let handle = understudy_apply::handle_of(fd.as_fd()).ok();
                self.out.files.insert(
                    index,
                    ListedFile {
                        index,
                        size: st.stx_size,
                        handle,
                    },
                );
            }
            _ => {}
        }
        self.out.entries.push(entry);
        Ok(kind == EntryKind::Dir)
    }
}

/// The mtime of each distinct parent directory of the (normalized) scope roots, as it is
/// now in the copy at `root`; parents that do not exist (as plain directories) are left out.
pub fn parent_mtimes(root: &OwnedFd, roots: &[Vec<u8>]) -> Vec<(Vec<u8>, Timespec)> {
    let mut parents: Vec<&[u8]> = roots.iter().map(|r| split_parent(r).0).collect();
    parents.sort();
    parents.dedup();
    parents
        .into_iter()
        .filter_map(|parent| {
            let st = if parent.is_empty() {
                rfs::statx(root, "", AtFlags::EMPTY_PATH, StatxFlags::MTIME)
            } else {
                let fd = rfs::openat2(
                    root,
                    parent,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    RESOLVE,
                )
                .ok()?;
                rfs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MTIME)
            }
            .ok()?;
            Some((
                parent.to_vec(),
                Timespec {
                    sec: st.stx_mtime.tv_sec,
                    nsec: st.stx_mtime.tv_nsec,
                },
            ))
        })
        .collect()
}

/// Every xattr of an open file or directory.
pub fn xattrs_of(fd: impl AsFd) -> Result<Xattrs, Errno> {
    let fd = fd.as_fd();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rfs::flistxattr(fd, &mut names) {
            Ok(n) => break n,
            Err(Errno::RANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let len = loop {
            match rfs::fgetxattr(fd, name, &mut value) {
                Ok(len) => break Some(len),
                Err(Errno::RANGE) if value.len() < (64 << 10) => {
                    value.resize((value.len() * 4).min(64 << 10), 0)
                }
                // Removed in between (outside the lock's reach): skip it.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Reopens a file of this copy from its handle, read-only, wherever it lives now (even
/// renamed). Needs CAP_DAC_READ_SEARCH (the daemon runs as root).
pub fn open_handle(root: &OwnedFd, h: &ActiveHandle) -> std::io::Result<OwnedFd> {
    understudy_apply::open_by_handle(root.as_fd(), h, libc::O_RDONLY | libc::O_NOFOLLOW)
        .map_err(std::io::Error::from)
}

/// Where an open file of the copy is now, as the kernel's name for its descriptor says.
#[derive(Debug, PartialEq, Eq)]
pub enum Whereabouts {
    /// This path, relative to the copy's root.
    Named(Vec<u8>),
    /// Its last name was removed.
    Deleted,
    /// The kernel does not know a name under the root: a descriptor opened by handle after
    /// its directory entry was evicted from the dentry cache reads as `/` until closed
    /// (`open_by_handle_at` does not reconnect non-directories). Not "gone": the file may
    /// well have a name, just not one this descriptor can tell.
    Unknown,
}

/// The whereabouts of an open file of the copy at `root_path`.
pub fn whereabouts(fd: &OwnedFd, root_path: &[u8]) -> Whereabouts {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let Ok(target) = std::fs::read_link(link) else {
        return Whereabouts::Unknown;
    };
    let bytes = target.as_os_str().as_bytes();
    if bytes.ends_with(b" (deleted)") {
        return Whereabouts::Deleted;
    }
    match bytes
        .strip_prefix(root_path)
        .and_then(|rest| rest.strip_prefix(b"/"))
    {
        Some(rest) if !rest.is_empty() => Whereabouts::Named(rest.to_vec()),
        _ => Whereabouts::Unknown,
    }
}

/// Opens `path` of the copy, read-only, confined beneath `root` and through no symlink.
pub fn open_path(root: &OwnedFd, path: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

/// Whether two descriptors are the same inode.
pub fn same_inode(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rfs::fstat(a), rfs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scope_roots_collapse_into_their_ancestor() {
        let s = normalize_scope(vec![
            b"a/b".to_vec(),
            b"a".to_vec(),
            b"ab".to_vec(),
            b"c/d/e".to_vec(),
            b"c/d".to_vec(),
            b"".to_vec(),
        ]);
        assert_eq!(s, vec![b"a".to_vec(), b"ab".to_vec(), b"c/d".to_vec()]);
    }
}
