//! Shared fixtures for the apply tests: a replica with its orphans directory in a temp dir,
//! a record stream numbered automatically, and a byte-exact snapshot of a directory tree.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use understudy_apply::{Applier, ApplyError};
use understudy_oplog::{FileRef, Op, Record, Timespec};

pub struct Replica {
    pub tmp: TempDir,
    pub root: PathBuf,
    pub orphans: PathBuf,
    pub applier: Applier,
}

impl Replica {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("create temp dir");
        let root = tmp.path().join("root");
        let orphans = tmp.path().join("orphans");
        std::fs::create_dir(&root).expect("mkdir root");
        std::fs::create_dir(&orphans).expect("mkdir orphans");
        let applier = Applier::open(&root, &orphans).expect("open applier");
        Self {
            tmp,
            root,
            orphans,
            applier,
        }
    }

    /// Applies `op` as the next record, with the given mtimes.
    pub fn apply_with(
        &mut self,
        op: Op,
        mtimes: Vec<(FileRef, Timespec)>,
    ) -> Result<(), ApplyError> {
        let record = Record {
            seq: self.applier.last_applied() + 1,
            op,
            mtimes,
        };
        self.applier.apply(&record)
    }

    pub fn apply(&mut self, op: Op) -> Result<(), ApplyError> {
        self.apply_with(op, vec![])
    }

    /// Applies `op` and panics (naming it) if it fails.
    pub fn ok(&mut self, op: Op) {
        let shown = format!("{op:?}");
        if let Err(e) = self.apply(op) {
            panic!("{shown} failed: {e}");
        }
    }

    pub fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

pub fn path(p: &str) -> FileRef {
    FileRef::Path(p.as_bytes().to_vec())
}

pub fn file(p: &str, mode: u32) -> Op {
    let (uid, gid) = me();
    Op::Mknod {
        path: p.as_bytes().to_vec(),
        kind: understudy_oplog::NodeKind::Regular,
        mode,
        uid,
        gid,
        rdev: 0,
    }
}

pub fn dir(p: &str, mode: u32) -> Op {
    let (uid, gid) = me();
    Op::Mkdir {
        path: p.as_bytes().to_vec(),
        mode,
        uid,
        gid,
    }
}

pub fn write(p: &str, offset: u64, data: &[u8]) -> Op {
    Op::Write {
        file: path(p),
        offset,
        data: data.to_vec(),
    }
}

pub fn me() -> (u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whether a test that needs root can run: true as root. Otherwise prints SKIP and returns
/// false, except under CI (`CI=true`), where a skipped test would hide a broken setup.
pub fn require_root(test: &str) -> bool {
    if me().0 == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: needs root (chown, device nodes); under CI=true this is a failure, not a skip"
        );
    }
    println!("SKIP {test}: needs root (chown, device nodes)");
    false
}

/// The errno inside a `Diverged`, or a panic naming what came instead.
pub fn diverged_errno(result: Result<(), ApplyError>) -> i32 {
    match result {
        Err(ApplyError::Diverged { source, .. }) => source
            .raw_os_error()
            .unwrap_or_else(|| panic!("diverged without an errno: {source}")),
        other => panic!("expected Diverged, got {other:?}"),
    }
}

pub fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec { sec, nsec }
}

pub fn mtime_of(p: &Path) -> Timespec {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    ts(md.mtime(), md.mtime_nsec() as u32)
}

pub fn atime_of(p: &Path) -> Timespec {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    ts(md.atime(), md.atime_nsec() as u32)
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("lstat").mode() & 0o7777
}

/// The value of xattr `name` on `p` (not following symlinks), if set.
pub fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", p.display()),
    }
}

/// Every xattr of `p` (not following symlinks), sorted by name.
pub fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names[..]).expect("llistxattr");
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(p, name, &mut value[..]).expect("lgetxattr");
            (name.to_vec(), value[..len].to_vec())
        })
        .collect();
    out.sort();
    out
}

/// Everything observable about one entry, except atime (reading changes it). ctime is in:
/// any metadata change at all, even a no-op chown, would show.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    contents: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A byte-for-byte picture of the tree at `dir` (the directory itself included).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    let ft = md.file_type();
    let entry = Entry {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        ino: md.ino(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        contents: ft.is_file().then(|| std::fs::read(p).expect("read")),
        link: ft
            .is_symlink()
            .then(|| std::fs::read_link(p).expect("readlink")),
        xattrs: if ft.is_symlink() { vec![] } else { xattrs(p) },
    };
    out.insert(
        p.strip_prefix(base).expect("under base").to_path_buf(),
        entry,
    );
    if ft.is_dir() {
        for child in std::fs::read_dir(p).expect("readdir") {
            walk(base, &child.expect("dirent").path(), out);
        }
    }
}
