//! Resync and verify records against real trees: a reference tree stands for the active, its
//! listing is made the way the active makes one, and the replica must end up matching it
//! exactly (names, kinds, contents, modes, owners, nanosecond mtimes, symlink targets, device
//! numbers, hard-link groups, xattrs), with the observer told about every file before it is
//! changed. A verify must report each kind of difference and change nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags, CWD};
use understudy_apply::{ApplyError, LocalHandle, SyncObserver};
use understudy_oplog::{EntryKind, Op, Record, Timespec, TreeEntry};

// ---- building trees -------------------------------------------------------------------

fn mkdir(p: &Path, mode: u32) {
    std::fs::create_dir(p).expect("mkdir");
    chmod(p, mode);
}

fn mkfile(p: &Path, content: &[u8], mode: u32) {
    std::fs::write(p, content).expect("write");
    chmod(p, mode);
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn own(p: &Path, uid: u32, gid: u32) {
    lchown(p, Some(uid), Some(gid)).expect("lchown");
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).expect("setxattr");
}

fn mknod(p: &Path, kind: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(CWD, p, kind, Mode::from_raw_mode(mode), dev).expect("mknod");
    chmod(p, mode);
}

fn set_mtime(p: &Path, t: Timespec) {
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: t.sec,
            tv_nsec: i64::from(t.nsec),
        },
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// A mtime that depends only on the relative path, with nanoseconds: the same in two trees.
fn time_for(rel: &str) -> Timespec {
    let h = rel.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    ts(
        1_500_000_000 + (h % 100_000_000) as i64,
        (h % 999_999_999) as u32 + 1,
    )
}

fn rel_paths(base: &Path) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut i = 0;
    while i < out.len() {
        let p = if out[i].is_empty() {
            base.to_path_buf()
        } else {
            base.join(&out[i])
        };
        if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .expect("readdir")
                .map(|d| d.expect("dirent").file_name().into_string().expect("utf-8"))
                .collect();
            names.sort();
            for n in names {
                out.push(join(&out[i], &n));
            }
        }
        i += 1;
    }
    out
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Stamps every entry of the tree (the base included) with `time_for` its path, directories
/// after their entries; hard-linked names with `time_for` the first of their names.
fn stamp(base: &Path) {
    let mut paths = rel_paths(base);
    let mut first_name: HashMap<u64, String> = HashMap::new();
    for p in &paths {
        let md = std::fs::symlink_metadata(base.join(p)).expect("lstat");
        if md.is_file() {
            let name = first_name.entry(md.ino()).or_insert_with(|| p.clone());
            if p < name {
                *name = p.clone();
            }
        }
    }
    paths.sort_by_key(|p| {
        std::cmp::Reverse(if p.is_empty() {
            0
        } else {
            p.matches('/').count() + 1
        })
    });
    for p in paths {
        let full = if p.is_empty() {
            base.to_path_buf()
        } else {
            base.join(&p)
        };
        let md = std::fs::symlink_metadata(&full).expect("lstat");
        let name = first_name
            .get(&md.ino())
            .filter(|_| md.is_file())
            .unwrap_or(&p);
        set_mtime(&full, time_for(name));
    }
}

// ---- listing and picture ----------------------------------------------------------------

fn kind_of(ft: std::fs::FileType) -> EntryKind {
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::Regular
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_char_device() {
        EntryKind::CharDevice
    } else if ft.is_block_device() {
        EntryKind::BlockDevice
    } else {
        EntryKind::Socket
    }
}

/// The listing of `base` (or of the subtrees `roots`) as the active would send it: parents
/// before children, hard links as `link_to` the first name of the inode.
fn listing(base: &Path, roots: Option<&[&str]>) -> Vec<TreeEntry> {
    fn add(
        base: &Path,
        rel: &str,
        out: &mut Vec<TreeEntry>,
        inodes: &mut HashMap<(u64, u64), u32>,
    ) {
        let p = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let kind = kind_of(md.file_type());
        let index = out.len() as u32;
        let link_to = if kind == EntryKind::Regular && md.nlink() > 1 {
            match inodes.get(&(md.dev(), md.ino())) {
                Some(&first) => Some(first),
                None => {
                    inodes.insert((md.dev(), md.ino()), index);
                    None
                }
            }
        } else {
            None
        };
        out.push(TreeEntry {
            path: rel.as_bytes().to_vec(),
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: if kind == EntryKind::Regular {
                md.size()
            } else {
                0
            },
            mtime: ts(md.mtime(), md.mtime_nsec() as u32),
            target: if kind == EntryKind::Symlink {
                std::fs::read_link(&p)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                vec![]
            },
            link_to,
            xattrs: if matches!(kind, EntryKind::Dir | EntryKind::Regular) {
                xattrs(&p)
            } else {
                vec![]
            },
        });
        if kind == EntryKind::Dir {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .expect("readdir")
                .map(|d| d.expect("dirent").file_name().into_string().expect("utf-8"))
                .collect();
            names.sort();
            for n in names {
                add(base, &join(rel, &n), out, inodes);
            }
        }
    }
    let mut out = Vec::new();
    let mut inodes = HashMap::new();
    match roots {
        None => add(base, "", &mut out, &mut inodes),
        Some(roots) => {
            for r in roots {
                // A root inside another one is listed with it.
                let nested = roots.iter().any(|o| {
                    r.len() > o.len() && r.starts_with(o) && r.as_bytes()[o.len()] == b'/'
                });
                if !nested && std::fs::symlink_metadata(base.join(r)).is_ok() {
                    add(base, r, &mut out, &mut inodes);
                }
            }
        }
    }
    out
}

/// Everything a resync must reproduce about one entry (not inode numbers or ctimes, which
/// differ between two trees; hard links as the other names of the same inode).
#[derive(Debug, PartialEq, Eq)]
struct Pic {
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    rdev: u64,
    contents: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    links: Vec<String>,
}

fn picture(base: &Path) -> BTreeMap<String, Pic> {
    picture_of(base, &rel_paths(base))
}

fn picture_of(base: &Path, paths: &[String]) -> BTreeMap<String, Pic> {
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    let mut out = BTreeMap::new();
    for rel in paths {
        let p = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        if ft.is_file() {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        out.insert(
            rel.clone(),
            (
                md.ino(),
                Pic {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    // A directory's size is the filesystem's business.
                    size: (!ft.is_dir()).then(|| md.size()),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    rdev: md.rdev(),
                    contents: ft.is_file().then(|| std::fs::read(&p).expect("read")),
                    target: ft
                        .is_symlink()
                        .then(|| std::fs::read_link(&p).expect("readlink")),
                    xattrs: if ft.is_symlink() { vec![] } else { xattrs(&p) },
                    links: vec![],
                },
            ),
        );
    }
    out.into_iter()
        .map(|(rel, (ino, mut pic))| {
            if let Some(names) = inodes.get(&ino) {
                if pic.contents.is_some() {
                    pic.links = names.iter().filter(|n| **n != rel).cloned().collect();
                }
            }
            (rel, pic)
        })
        .collect()
}

// ---- the observer -------------------------------------------------------------------------

#[derive(Default)]
struct Recorder {
    root: PathBuf,
    /// Path, kind, the content read through the descriptor, and whether the name still
    /// existed during the call.
    before: Vec<(String, EntryKind, Option<Vec<u8>>, bool)>,
    need: Vec<(u32, Option<LocalHandle>)>,
    compare: Vec<(u32, LocalHandle)>,
    differs: BTreeSet<(String, &'static str)>,
    ranges: Vec<(u64, String, u64, u64, bool)>,
    fail_before_change: bool,
}

impl Recorder {
    fn new(r: &Replica) -> Self {
        Self {
            root: r.root.clone(),
            ..Self::default()
        }
    }

    fn before_paths(&self) -> BTreeSet<String> {
        self.before.iter().map(|b| b.0.clone()).collect()
    }
}

fn text(p: &[u8]) -> String {
    String::from_utf8(p.to_vec()).expect("utf-8 path")
}

impl SyncObserver for Recorder {
    fn before_change(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        file: Option<&OwnedFd>,
    ) -> std::io::Result<()> {
        if self.fail_before_change {
            return Err(std::io::Error::other("quarantine is full"));
        }
        let content = file.map(|fd| {
            let mut f = std::fs::File::from(fd.try_clone().expect("dup"));
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .expect("read through the observer's fd");
            buf
        });
        let exists = std::fs::symlink_metadata(self.root.join(text(path))).is_ok();
        self.before.push((text(path), kind, content, exists));
        Ok(())
    }

    fn need_content(&mut self, index: u32, existing: Option<LocalHandle>) {
        self.need.push((index, existing));
    }

    fn compare_content(&mut self, index: u32, handle: LocalHandle) {
        self.compare.push((index, handle));
    }

    fn differs(&mut self, path: &[u8], what: &'static str) {
        self.differs.insert((text(path), what));
    }

    fn range_checked(&mut self, id: u64, path: &[u8], offset: u64, len: u64, matches: bool) {
        self.ranges.push((id, text(path), offset, len, matches));
    }
}

// ---- driving a sync -----------------------------------------------------------------------

fn apply_obs(r: &mut Replica, op: Op, obs: &mut Recorder) -> Result<(), ApplyError> {
    let record = Record {
        seq: r.applier.last_applied() + 1,
        op,
        mtimes: vec![],
    };
    r.applier.apply_observed(&record, obs)
}

fn scope_of(roots: Option<&[&str]>) -> Option<Vec<Vec<u8>>> {
    roots.map(|rs| rs.iter().map(|r| r.as_bytes().to_vec()).collect())
}

/// SyncBegin and the listing in parts of `part` entries.
fn begin_and_list(
    r: &mut Replica,
    obs: &mut Recorder,
    id: u64,
    verify: bool,
    roots: Option<&[&str]>,
    entries: &[TreeEntry],
    part: usize,
) -> Result<(), ApplyError> {
    apply_obs(
        r,
        Op::SyncBegin {
            id,
            verify,
            scope: scope_of(roots),
        },
        obs,
    )?;
    list(r, obs, id, entries, part)
}

fn list(
    r: &mut Replica,
    obs: &mut Recorder,
    id: u64,
    entries: &[TreeEntry],
    part: usize,
) -> Result<(), ApplyError> {
    let parts: Vec<&[TreeEntry]> = if entries.is_empty() {
        vec![&[]]
    } else {
        entries.chunks(part).collect()
    };
    let count = parts.len();
    for (k, chunk) in parts.into_iter().enumerate() {
        apply_obs(
            r,
            Op::SyncTree {
                id,
                first_index: (k * part) as u32,
                entries: chunk.to_vec(),
                last: k + 1 == count,
            },
            obs,
        )?;
    }
    Ok(())
}

/// What the layer above does for each file needing content: the reference's bytes as
/// writes, then its size and metadata.
fn deliver(r: &mut Replica, obs: &mut Recorder, reference: &Path, entries: &[TreeEntry]) {
    let needed: Vec<u32> = obs.need.iter().map(|(i, _)| *i).collect();
    for i in needed {
        let e = &entries[i as usize];
        let data = std::fs::read(reference.join(text(&e.path))).expect("read reference");
        for (k, chunk) in data.chunks(64 << 10).enumerate() {
            apply_obs(
                r,
                Op::Write {
                    file: understudy_oplog::FileRef::Path(e.path.clone()),
                    offset: (k * (64 << 10)) as u64,
                    data: chunk.to_vec(),
                },
                obs,
            )
            .expect("write content");
        }
        apply_obs(
            r,
            Op::SyncMeta {
                path: e.path.clone(),
                size: data.len() as u64,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                xattrs: e.xattrs.clone(),
            },
            obs,
        )
        .expect("sync meta");
    }
}

/// A whole resync of `roots` (None: the whole tree) from `reference`.
fn resync(
    r: &mut Replica,
    obs: &mut Recorder,
    reference: &Path,
    roots: Option<&[&str]>,
) -> Vec<TreeEntry> {
    let entries = listing(reference, roots);
    begin_and_list(r, obs, 7, false, roots, &entries, 3).expect("listing applied");
    deliver(r, obs, reference, &entries);
    apply_obs(r, Op::SyncEnd { id: 7 }, obs).expect("sync end");
    assert!(r.applier.sync_due(), "SyncEnd is a barrier");
    r.applier.sync().expect("sync");
    entries
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("lstat").ino()
}

fn fd_ino(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd.as_fd()).expect("fstat").st_ino
}

/// A reference tree with one of everything.
fn rich_tree(base: &Path) {
    std::fs::create_dir_all(base).expect("mkdir base");
    chmod(base, 0o751);
    mkdir(&base.join("d1"), 0o2750);
    own(&base.join("d1"), 1001, 1002);
    setx(&base.join("d1"), "user.dir", b"on a directory");
    mkfile(&base.join("d1/f1"), b"hello, linked world", 0o4755);
    own(&base.join("d1/f1"), 1003, 1004);
    chmod(&base.join("d1/f1"), 0o4755); // chown cleared setuid
    setx(&base.join("d1/f1"), "user.a", b"b");
    setx(&base.join("d1/f1"), "user.empty", b"");
    mkdir(&base.join("d1/sub"), 0o700);
    mkfile(&base.join("d1/sub/deep"), b"deep down", 0o600);
    mkdir(&base.join("d2"), 0o1777);
    std::fs::hard_link(base.join("d1/f1"), base.join("d2/link")).expect("link");
    std::fs::hard_link(base.join("d1/f1"), base.join("d2/link2")).expect("link");
    mkfile(&base.join("d2/other"), b"another group", 0o640);
    std::fs::hard_link(base.join("d2/other"), base.join("other2")).expect("link");
    symlink("d1/f1", base.join("sym")).expect("symlink");
    own(&base.join("sym"), 1005, 1006);
    symlink("/nonexistent/elsewhere", base.join("dangling")).expect("symlink");
    mknod(&base.join("fifo"), FileType::Fifo, 0o640, 0);
    mknod(
        &base.join("null"),
        FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    mknod(&base.join("sock"), FileType::Socket, 0o755, 0);
    mkfile(&base.join("empty"), b"", 0o644);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    mkfile(&base.join("big"), &big, 0o644);
    stamp(base);
}

// ---- resync ---------------------------------------------------------------------------------

#[test]
fn a_whole_tree_resync_into_an_empty_replica_reproduces_it_exactly() {
    if !require_root("a_whole_tree_resync_into_an_empty_replica_reproduces_it_exactly") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    rich_tree(&reference);
    let mut obs = Recorder::new(&r);
    let entries = listing(&reference, None);
    begin_and_list(&mut r, &mut obs, 1, false, None, &entries, 4).expect("listing");

    // Before any content: the tree's shape is there, and every group leader needs content,
    // created empty.
    assert!(obs.before.is_empty(), "nothing existed to change");
    let needed: BTreeSet<String> = obs
        .need
        .iter()
        .map(|(i, h)| {
            assert!(h.is_none(), "created files have no existing content");
            text(&entries[*i as usize].path)
        })
        .collect();
    let expected: BTreeSet<String> = ["d1/f1", "d1/sub/deep", "d2/other", "empty", "big"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(needed, expected, "leaders only, each once");
    assert_eq!(ino(&r.at("d1/f1")), ino(&r.at("d2/link")));
    assert_eq!(ino(&r.at("d1/f1")), ino(&r.at("d2/link2")));
    assert_eq!(ino(&r.at("d2/other")), ino(&r.at("other2")));

    deliver(&mut r, &mut obs, &reference, &entries);
    apply_obs(&mut r, Op::SyncEnd { id: 1 }, &mut obs).expect("end");
    assert!(r.applier.sync_due());
    assert!(r.applier.has_unsynced());
    r.applier.sync().expect("sync");
    assert!(!r.applier.has_unsynced());

    assert_eq!(picture(&r.root), picture(&reference));
    assert_eq!(mode_of(&r.at("d1/f1")), 0o4755, "setuid survives the chown");
    assert_eq!(mode_of(&r.at("d2")), 0o1777);
    assert_eq!(mode_of(&r.at("d1")), 0o2750);
    assert!(std::fs::symlink_metadata(r.at("null"))
        .expect("lstat")
        .file_type()
        .is_char_device());
    assert!(std::fs::symlink_metadata(r.at("sock"))
        .expect("lstat")
        .file_type()
        .is_socket());

    // A second resync of the identical tree replaces nothing and needs no content.
    let inodes = |base: &Path| -> BTreeMap<String, u64> {
        rel_paths(base)
            .into_iter()
            .map(|p| {
                let i = ino(&base.join(&p));
                (p, i)
            })
            .collect()
    };
    let before = inodes(&r.root);
    let mut obs = Recorder::new(&r);
    resync(&mut r, &mut obs, &reference, None);
    assert!(obs.before.is_empty(), "{:?}", obs.before_paths());
    assert!(obs.need.is_empty());
    assert_eq!(inodes(&r.root), before);
    assert_eq!(picture(&r.root), picture(&reference));
}

/// A reference tree, and a replica that differs from it in every way a resync handles.
fn differing_trees(reference: &Path, replica: &Path) {
    std::fs::create_dir_all(reference).expect("mkdir ref");
    for base in [reference, replica] {
        mkfile(&base.join("same"), b"same content", 0o644);
        mkfile(&base.join("x"), b"xattrs differ", 0o644);
        mkfile(&base.join("h1"), b"hl", 0o644);
        mkfile(&base.join("n1"), b"nl", 0o644);
        mkfile(&base.join("n2"), b"nl", 0o644);
    }
    // Content rewritten: same size but another mtime; another size.
    mkfile(&reference.join("changed"), b"new!", 0o644);
    mkfile(&replica.join("changed"), b"old!", 0o644);
    mkfile(&reference.join("grown"), b"longer content", 0o644);
    mkfile(&replica.join("grown"), b"short", 0o644);
    // Kinds replaced.
    mkdir(&reference.join("t_file_to_dir"), 0o755);
    mkfile(&reference.join("t_file_to_dir/i"), b"inside", 0o644);
    mkfile(&replica.join("t_file_to_dir"), b"was a file", 0o644);
    symlink("target", reference.join("t_dir_to_link")).expect("symlink");
    mkdir(&replica.join("t_dir_to_link"), 0o755);
    mkfile(&replica.join("t_dir_to_link/inner"), b"inner", 0o644);
    mkdir(&replica.join("t_dir_to_link/sub"), 0o755);
    mkfile(&replica.join("t_dir_to_link/sub/deeper"), b"deeper", 0o644);
    mkfile(&reference.join("fifo_to_file"), b"now a file", 0o644);
    mknod(&replica.join("fifo_to_file"), FileType::Fifo, 0o644, 0);
    mknod(
        &reference.join("dev"),
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 5),
    );
    mknod(
        &replica.join("dev"),
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 3),
    );
    // Another symlink target.
    symlink("new-target", reference.join("sym")).expect("symlink");
    symlink("old-target", replica.join("sym")).expect("symlink");
    // Xattrs added and removed.
    setx(&reference.join("x"), "user.add", b"1");
    setx(&replica.join("x"), "user.remove", b"1");
    // A hard-link group broken (h1, h2) and a new one (n1, n2).
    mkfile(&reference.join("h2"), b"hl", 0o644);
    std::fs::hard_link(replica.join("h1"), replica.join("h2")).expect("link");
    std::fs::remove_file(reference.join("n2")).expect("rm");
    std::fs::hard_link(reference.join("n1"), reference.join("n2")).expect("link");
    // Kept, with another owner or mode: metadata only.
    mknod(&reference.join("pipe"), FileType::Fifo, 0o644, 0);
    mknod(&replica.join("pipe"), FileType::Fifo, 0o600, 0);
    own(&replica.join("pipe"), 5, 5);
    symlink("same", reference.join("lnk")).expect("symlink");
    symlink("same", replica.join("lnk")).expect("symlink");
    own(&replica.join("lnk"), 7, 7);
    mkdir(&reference.join("kept_dir"), 0o750);
    mkdir(&replica.join("kept_dir"), 0o777);
    own(&replica.join("kept_dir"), 9, 9);
    // Only in the replica.
    mkfile(&replica.join("extra_file"), b"extra", 0o644);
    mkdir(&replica.join("extra_dir"), 0o755);
    mkfile(&replica.join("extra_dir/a"), b"a", 0o644);
    mkdir(&replica.join("extra_dir/b"), 0o755);
    mkfile(&replica.join("extra_dir/b/c"), b"c", 0o644);
    stamp(reference);
    stamp(replica);
    set_mtime(&replica.join("changed"), ts(1, 1));
}

fn strings(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_resync_onto_a_different_replica_changes_exactly_what_differs() {
    if !require_root("a_resync_onto_a_different_replica_changes_exactly_what_differs") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    differing_trees(&reference, &r.root);
    let changed_ino = ino(&r.at("changed"));
    let grown_ino = ino(&r.at("grown"));
    let same_ino = ino(&r.at("same"));
    let n1_ino = ino(&r.at("n1"));
    let kept: BTreeMap<&str, u64> = ["pipe", "lnk", "kept_dir"]
        .into_iter()
        .map(|p| (p, ino(&r.at(p))))
        .collect();

    let mut obs = Recorder::new(&r);
    let entries = listing(&reference, None);
    begin_and_list(&mut r, &mut obs, 3, false, None, &entries, 5).expect("listing");

    assert_eq!(
        obs.before_paths(),
        strings(&[
            "changed",
            "grown",
            "t_file_to_dir",
            "t_dir_to_link/inner",
            "t_dir_to_link/sub/deeper",
            "fifo_to_file",
            "dev",
            "sym",
            "h2",
            "n2",
            "extra_file",
            "extra_dir/a",
            "extra_dir/b/c",
        ]),
    );
    assert_eq!(obs.before.len(), 13, "each once");
    for (path, kind, content, existed) in &obs.before {
        assert!(existed, "{path}: told before it changed");
        let expected: Option<&[u8]> = match path.as_str() {
            "changed" => Some(b"old!"),
            "grown" => Some(b"short"),
            "t_file_to_dir" => Some(b"was a file"),
            "t_dir_to_link/inner" => Some(b"inner"),
            "t_dir_to_link/sub/deeper" => Some(b"deeper"),
            "h2" => Some(b"hl"),
            "n2" => Some(b"nl"),
            "extra_file" => Some(b"extra"),
            "extra_dir/a" => Some(b"a"),
            "extra_dir/b/c" => Some(b"c"),
            _ => None,
        };
        assert_eq!(content.as_deref(), expected, "{path}");
        let expected_kind = match path.as_str() {
            "fifo_to_file" => EntryKind::Fifo,
            "dev" => EntryKind::CharDevice,
            "sym" => EntryKind::Symlink,
            _ => EntryKind::Regular,
        };
        assert_eq!(*kind, expected_kind, "{path}");
    }

    let mut needed: BTreeMap<String, Option<LocalHandle>> = BTreeMap::new();
    for (i, h) in &obs.need {
        needed.insert(text(&entries[*i as usize].path), h.clone());
    }
    assert_eq!(
        needed.keys().cloned().collect::<BTreeSet<_>>(),
        strings(&["changed", "grown", "t_file_to_dir/i", "h2", "fifo_to_file"]),
    );
    for (path, kept_ino) in [("changed", changed_ino), ("grown", grown_ino)] {
        let handle = needed[path]
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: kept, so patched through a handle"));
        let fd = r.applier.open_handle(handle).expect("open handle");
        assert_eq!(fd_ino(&fd), kept_ino, "{path}: the same inode");
        assert_eq!(ino(&r.at(path)), kept_ino, "{path}: kept in place");
    }
    for path in ["t_file_to_dir/i", "h2", "fifo_to_file"] {
        assert!(needed[path].is_none(), "{path}: created empty");
    }
    assert_eq!(ino(&r.at("same")), same_ino, "quick check passed: kept");
    for (p, i) in &kept {
        assert_eq!(ino(&r.at(p)), *i, "{p}: kept, metadata changed in place");
    }
    assert_eq!(ino(&r.at("n1")), n1_ino, "the new group's leader is kept");
    assert_eq!(ino(&r.at("n2")), n1_ino, "and linked to");
    assert_ne!(
        ino(&r.at("h1")),
        ino(&r.at("h2")),
        "the broken group is split"
    );
    assert_eq!(xattr(&r.at("x"), "user.add").as_deref(), Some(&b"1"[..]));
    assert_eq!(xattr(&r.at("x"), "user.remove"), None);
    assert!(!r.at("extra_dir").exists() && !r.at("extra_file").exists());

    deliver(&mut r, &mut obs, &reference, &entries);
    apply_obs(&mut r, Op::SyncEnd { id: 3 }, &mut obs).expect("end");
    r.applier.sync().expect("sync");
    assert_eq!(picture(&r.root), picture(&reference));
}

#[test]
fn an_observer_error_stops_the_resync_before_anything_changes() {
    if !require_root("an_observer_error_stops_the_resync_before_anything_changes") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    differing_trees(&reference, &r.root);
    let before = snapshot(&r.root);
    let mut obs = Recorder::new(&r);
    obs.fail_before_change = true;
    let entries = listing(&reference, None);
    match begin_and_list(&mut r, &mut obs, 3, false, None, &entries, 1000) {
        Err(ApplyError::Io { .. }) => {}
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(snapshot(&r.root), before, "nothing changed");
    assert_eq!(r.applier.last_applied(), 1, "only the SyncBegin applied");
    // The context is gone with the error: a new SyncBegin starts over.
    assert!(matches!(
        apply_obs(&mut r, Op::SyncEnd { id: 3 }, &mut obs),
        Err(ApplyError::Refused { .. })
    ));
}

#[test]
fn a_scoped_resync_changes_only_its_subtrees() {
    if !require_root("a_scoped_resync_changes_only_its_subtrees") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    let replica = r.root.clone();
    for base in [&reference, &replica] {
        std::fs::create_dir_all(base.join("a/in")).expect("mkdir");
        std::fs::create_dir_all(base.join("b/c")).expect("mkdir");
        std::fs::create_dir_all(base.join("z")).expect("mkdir");
    }
    mkfile(&reference.join("a/in/f"), b"new", 0o644);
    mkfile(&replica.join("a/in/f"), b"old content", 0o600);
    mkfile(&replica.join("a/extra"), b"extra", 0o644);
    mkfile(&reference.join("b/c/g"), b"g", 0o644);
    mkfile(&reference.join("b/other"), b"outside the scope", 0o644);
    mkfile(&replica.join("b/other"), b"differs, untouched", 0o600);
    mkfile(&reference.join("z/f"), b"outside", 0o644);
    mkfile(&replica.join("z/f"), b"outside, differs", 0o644);
    mkdir(&replica.join("gone"), 0o755);
    mkfile(&replica.join("gone/f"), b"removed on the active", 0o644);
    mkfile(&reference.join("new"), b"created on the active", 0o644);
    stamp(&reference);
    stamp(&replica);

    let outside = ["z", "z/f", "b/other"].map(String::from);
    let outside_before = picture_of(&replica, &outside);
    let mut obs = Recorder::new(&r);
    // "a/in" is inside "a": redundant. "gone" is not on the active (removed), "new" not
    // on the passive (created).
    let roots = ["a", "a/in", "b/c", "gone", "new"];
    let entries = resync(&mut r, &mut obs, &reference, Some(&roots));
    assert!(!entries.iter().any(|e| e.path == b"gone"));
    assert_eq!(
        obs.before_paths(),
        strings(&["a/in/f", "a/extra", "gone/f"])
    );
    let scoped = ["a", "a/in", "a/in/f", "b/c", "b/c/g", "new"].map(String::from);
    assert_eq!(
        picture_of(&r.root, &scoped),
        picture_of(&reference, &scoped)
    );
    assert!(!r.at("gone").exists() && !r.at("a/extra").exists());
    assert_eq!(picture_of(&replica, &outside), outside_before);

    // A scope root whose parent is missing (or not a directory) diverges: the layer above
    // falls back to the whole tree.
    for root in ["nope/x", "z/f/x"] {
        let result = apply_obs(
            &mut r,
            Op::SyncBegin {
                id: 8,
                verify: false,
                scope: Some(vec![root.as_bytes().to_vec()]),
            },
            &mut obs,
        );
        assert!(
            matches!(result, Err(ApplyError::Diverged { .. })),
            "{root}: {result:?}"
        );
    }
    // An entry outside the scope is refused, and nothing is applied.
    let before = snapshot(&r.root);
    apply_obs(
        &mut r,
        Op::SyncBegin {
            id: 9,
            verify: false,
            scope: Some(vec![b"a".to_vec()]),
        },
        &mut obs,
    )
    .expect("begin");
    let mut outside_entry = listing(&reference, Some(&["z"]));
    let mut in_scope = listing(&reference, Some(&["a"]));
    in_scope.append(&mut outside_entry);
    let result = list(&mut r, &mut obs, 9, &in_scope, 1000);
    assert!(
        matches!(result, Err(ApplyError::Refused { .. })),
        "{result:?}"
    );
    // The empty scope covers nothing: any entry is outside it; an empty listing changes
    // nothing.
    apply_obs(
        &mut r,
        Op::SyncBegin {
            id: 10,
            verify: false,
            scope: Some(vec![]),
        },
        &mut obs,
    )
    .expect("begin");
    let result = list(
        &mut r,
        &mut obs,
        10,
        &listing(&reference, Some(&["a"])),
        1000,
    );
    assert!(matches!(result, Err(ApplyError::Refused { .. })));
    list(&mut r, &mut obs, 10, &[], 1000).expect("empty listing");
    apply_obs(&mut r, Op::SyncEnd { id: 10 }, &mut obs).expect("end");
    assert_eq!(snapshot(&r.root), before);
}

// ---- verify -----------------------------------------------------------------------------------

fn verify(r: &mut Replica, reference: &Path) -> (Recorder, Vec<TreeEntry>) {
    let mut obs = Recorder::new(r);
    let entries = listing(reference, None);
    begin_and_list(r, &mut obs, 11, true, None, &entries, 2).expect("verify listing");
    apply_obs(r, Op::SyncEnd { id: 11 }, &mut obs).expect("end");
    (obs, entries)
}

#[test]
fn verifying_identical_trees_reports_no_difference_and_every_file_to_compare() {
    if !require_root("verifying_identical_trees_reports_no_difference_and_every_file_to_compare") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    rich_tree(&reference);
    let mut obs = Recorder::new(&r);
    resync(&mut r, &mut obs, &reference, None);
    let before = snapshot(&r.root);
    let (obs, entries) = verify(&mut r, &reference);
    assert!(obs.differs.is_empty(), "{:?}", obs.differs);
    assert!(obs.before.is_empty() && obs.need.is_empty());
    let compared: BTreeSet<String> = obs
        .compare
        .iter()
        .map(|(i, _)| text(&entries[*i as usize].path))
        .collect();
    assert_eq!(
        compared,
        strings(&["d1/f1", "d1/sub/deep", "d2/other", "empty", "big"])
    );
    for (i, handle) in &obs.compare {
        let fd = r.applier.open_handle(handle).expect("open handle");
        assert_eq!(
            fd_ino(&fd),
            ino(&r.at(&text(&entries[*i as usize].path))),
            "the handle reopens the file compared"
        );
    }
    assert_eq!(snapshot(&r.root), before, "a verify changes nothing");
}

#[test]
fn verify_reports_each_kind_of_difference_and_changes_nothing() {
    if !require_root("verify_reports_each_kind_of_difference_and_changes_nothing") {
        return;
    }
    let mut r = Replica::new();
    let reference = r.tmp.path().join("ref");
    let replica = r.root.clone();
    std::fs::create_dir(&reference).expect("mkdir");
    for base in [&reference, &replica] {
        mkfile(&base.join("ok"), b"ok", 0o644);
        mkfile(&base.join("mode"), b"m", 0o644);
        mkfile(&base.join("owner"), b"o", 0o644);
        mkfile(&base.join("mtime"), b"t", 0o644);
        mkfile(&base.join("xattrs"), b"x", 0o644);
        mkfile(&base.join("hl1"), b"h", 0o644);
        mkdir(&base.join("dir"), 0o755);
    }
    mkfile(&reference.join("missing"), b"only on the active", 0o644);
    mkfile(&replica.join("extra"), b"only on the passive", 0o644);
    mkfile(&reference.join("type"), b"a file", 0o644);
    mkdir(&replica.join("type"), 0o644);
    chmod(&replica.join("mode"), 0o600);
    own(&replica.join("owner"), 1, 2);
    mkfile(&reference.join("size"), b"four", 0o644);
    mkfile(&replica.join("size"), b"five!", 0o644);
    symlink("here", reference.join("symlink")).expect("symlink");
    symlink("there", replica.join("symlink")).expect("symlink");
    mknod(
        &reference.join("device"),
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &replica.join("device"),
        FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 5),
    );
    setx(&reference.join("xattrs"), "user.k", b"v1");
    setx(&replica.join("xattrs"), "user.k", b"v2");
    setx(&reference.join("dir"), "user.d", b"1");
    std::fs::hard_link(reference.join("hl1"), reference.join("hl2")).expect("link");
    mkfile(&replica.join("hl2"), b"h", 0o644);
    stamp(&reference);
    stamp(&replica);
    set_mtime(&replica.join("mtime"), ts(2, 2));
    // Linked on the active, hl2 has hl1's mtime: only the link differs.
    set_mtime(&replica.join("hl2"), time_for("hl1"));

    let before = snapshot(&r.root);
    let (obs, entries) = verify(&mut r, &reference);
    let expected: BTreeSet<(String, &'static str)> = [
        ("missing", "missing"),
        ("extra", "extra"),
        ("type", "type"),
        ("mode", "mode"),
        ("owner", "owner"),
        ("mtime", "mtime"),
        ("size", "size"),
        ("symlink", "symlink target"),
        ("device", "device"),
        ("xattrs", "xattrs"),
        ("dir", "xattrs"),
        ("hl2", "hard links"),
    ]
    .iter()
    .map(|(p, w)| (p.to_string(), *w))
    .collect();
    assert_eq!(obs.differs, expected);
    let compared: BTreeSet<String> = obs
        .compare
        .iter()
        .map(|(i, _)| text(&entries[*i as usize].path))
        .collect();
    assert_eq!(
        compared,
        strings(&["ok", "mode", "owner", "mtime", "xattrs", "hl1", "size"]),
        "regular leaders present as regular files on both"
    );
    assert_eq!(snapshot(&r.root), before, "a verify changes nothing");
}

// ---- VerifyRange and SyncMeta -------------------------------------------------------------

#[test]
fn verify_range_hashes_the_replica_copy() {
    let mut r = Replica::new();
    let data: Vec<u8> = (0..100u8).collect();
    std::fs::write(r.at("f"), &data).expect("write");
    std::fs::create_dir(r.at("d")).expect("mkdir");
    let mut obs = Recorder::new(&r);
    apply_obs(
        &mut r,
        Op::SyncBegin {
            id: 5,
            verify: true,
            scope: Some(vec![]),
        },
        &mut obs,
    )
    .expect("begin");
    let hash = |b: &[u8]| *blake3::hash(b).as_bytes();
    let range = |path: &str, offset: u64, len: u64, hash: [u8; 32]| Op::VerifyRange {
        id: 5,
        path: path.as_bytes().to_vec(),
        offset,
        len,
        hash,
    };
    let cases = [
        ("match", range("f", 10, 50, hash(&data[10..60])), true),
        ("whole file", range("f", 0, 100, hash(&data)), true),
        ("mismatch", range("f", 10, 50, hash(&data[11..61])), false),
        ("missing file", range("nope", 0, 1, hash(&data[..1])), false),
        (
            "missing parent",
            range("no/pe", 0, 1, hash(&data[..1])),
            false,
        ),
        ("not a file", range("d", 0, 0, hash(b"")), false),
        // The 10 bytes there hash right, but the range asks for 50.
        ("short file", range("f", 90, 50, hash(&data[90..])), false),
        ("empty range", range("f", 100, 0, hash(b"")), true),
    ];
    for (what, op, _) in cases.iter().cloned() {
        apply_obs(&mut r, op, &mut obs).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let got: Vec<bool> = obs.ranges.iter().map(|r| r.4).collect();
    let want: Vec<bool> = cases.iter().map(|c| c.2).collect();
    assert_eq!(got, want, "{:?}", obs.ranges);
    assert_eq!(obs.ranges[0], (5, "f".to_string(), 10, 50, true));

    for (what, op) in [
        ("another id", {
            let mut op = range("f", 0, 1, hash(&data[..1]));
            if let Op::VerifyRange { id, .. } = &mut op {
                *id = 6;
            }
            op
        }),
        ("over 64 MiB", range("f", 0, (64 << 20) + 1, [0; 32])),
        (
            "past the largest offset",
            range("f", u64::MAX - 1, 2, [0; 32]),
        ),
    ] {
        assert!(
            matches!(
                apply_obs(&mut r, op, &mut obs),
                Err(ApplyError::Refused { .. })
            ),
            "{what}"
        );
    }
}

#[test]
fn sync_meta_sets_size_owner_mode_exact_xattrs_and_mtime() {
    if !require_root("sync_meta_sets_size_owner_mode_exact_xattrs_and_mtime") {
        return;
    }
    let mut r = Replica::new();
    mkfile(&r.at("f"), b"hello world", 0o644);
    setx(&r.at("f"), "user.old", b"gone after");
    setx(&r.at("f"), "user.keep", b"old value");
    // No sync context needed.
    r.ok(Op::SyncMeta {
        path: b"f".to_vec(),
        size: 5,
        mode: 0o6750,
        uid: 1234,
        gid: 5678,
        mtime: ts(1_234_567_890, 987_654_321),
        xattrs: vec![
            (b"user.keep".to_vec(), b"new value".to_vec()),
            (b"user.new".to_vec(), b"".to_vec()),
        ],
    });
    let f = r.at("f");
    let md = std::fs::symlink_metadata(&f).expect("lstat");
    assert_eq!(std::fs::read(&f).expect("read"), b"hello");
    assert_eq!(md.mode() & 0o7777, 0o6750, "set-ID bits survive the chown");
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(mtime_of(&f), ts(1_234_567_890, 987_654_321));
    assert_eq!(
        xattrs(&f),
        vec![
            (b"user.keep".to_vec(), b"new value".to_vec()),
            (b"user.new".to_vec(), b"".to_vec()),
        ]
    );
    assert!(r.applier.has_unsynced());
    r.applier.sync().expect("sync");

    // Growing works too (a sparse tail).
    r.ok(Op::SyncMeta {
        path: b"f".to_vec(),
        size: 8,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: ts(1, 0),
        xattrs: vec![],
    });
    assert_eq!(std::fs::read(&f).expect("read"), b"hello\0\0\0");
    assert!(xattrs(&f).is_empty());

    // Only ever a regular file.
    std::fs::create_dir(r.at("d")).expect("mkdir");
    symlink("f", r.at("l")).expect("symlink");
    mknod(&r.at("p"), FileType::Fifo, 0o644, 0);
    for p in ["d", "l", "p"] {
        let result = r.apply(Op::SyncMeta {
            path: p.as_bytes().to_vec(),
            size: 0,
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: ts(1, 0),
            xattrs: vec![],
        });
        assert!(
            matches!(result, Err(ApplyError::Refused { .. })),
            "{p}: {result:?}"
        );
    }
    assert_eq!(std::fs::read(&f).expect("read"), b"hello\0\0\0");
}

#[test]
fn listing_parts_must_follow_the_sync_they_belong_to() {
    let mut r = Replica::new();
    let (uid, gid) = me();
    let entry = |p: &str| TreeEntry {
        path: p.as_bytes().to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid,
        gid,
        rdev: 0,
        size: 0,
        mtime: ts(1, 1),
        target: vec![],
        link_to: None,
        xattrs: vec![],
    };
    let tree = |id, first_index, entries: Vec<TreeEntry>, last| Op::SyncTree {
        id,
        first_index,
        entries,
        last,
    };
    let mut obs = Recorder::new(&r);
    // No sync open.
    assert!(matches!(
        apply_obs(&mut r, tree(1, 0, vec![entry("a")], true), &mut obs),
        Err(ApplyError::Refused { .. })
    ));
    apply_obs(
        &mut r,
        Op::SyncBegin {
            id: 1,
            verify: false,
            scope: None,
        },
        &mut obs,
    )
    .expect("begin");
    apply_obs(&mut r, tree(1, 0, vec![entry("a")], false), &mut obs).expect("part 1");
    for (what, op) in [
        ("wrong id", tree(2, 1, vec![entry("b")], false)),
        ("index gap", tree(1, 2, vec![entry("b")], false)),
        ("index repeated", tree(1, 0, vec![entry("b")], false)),
        ("path twice", tree(1, 1, vec![entry("a")], false)),
        ("sync end mid-listing", Op::SyncEnd { id: 1 }),
    ] {
        assert!(
            matches!(
                apply_obs(&mut r, op, &mut obs),
                Err(ApplyError::Refused { .. })
            ),
            "{what}"
        );
    }
    apply_obs(&mut r, tree(1, 1, vec![entry("a/b")], true), &mut obs).expect("last part");
    assert!(r.at("a/b").is_dir());
    assert!(
        matches!(
            apply_obs(&mut r, tree(1, 0, vec![entry("c")], true), &mut obs),
            Err(ApplyError::Refused { .. })
        ),
        "the listing is complete"
    );
    assert!(matches!(
        apply_obs(&mut r, Op::SyncEnd { id: 2 }, &mut obs),
        Err(ApplyError::Refused { .. })
    ));
    apply_obs(&mut r, Op::SyncEnd { id: 1 }, &mut obs).expect("end");
    assert!(
        matches!(
            apply_obs(&mut r, Op::SyncEnd { id: 1 }, &mut obs),
            Err(ApplyError::Refused { .. })
        ),
        "already ended"
    );
}
