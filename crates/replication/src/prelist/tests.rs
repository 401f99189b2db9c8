//! Tests of the drafted listing: a draft patched with the paths that changed after it must
//! equal a listing made afresh, on real directories changed by real syscalls.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};

use super::*;

fn open_root(dir: &Path) -> OwnedFd {
    rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open root")
}

/// A listing as comparable facts: path -> description, hard-link groups by their paths.
fn facts(l: &Listing) -> BTreeMap<Vec<u8>, String> {
    let mut groups: HashMap<u32, BTreeSet<Vec<u8>>> = HashMap::new();
    for (i, e) in l.entries.iter().enumerate() {
        if e.kind == EntryKind::Regular {
            let first = e.link_to.unwrap_or(i as u32);
            groups.entry(first).or_default().insert(e.path.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (i, e) in l.entries.iter().enumerate() {
        let group =
            (e.kind == EntryKind::Regular).then(|| groups[&e.link_to.unwrap_or(i as u32)].clone());
        let file = l.files.get(&(i as u32)).map(|f| (f.index, f.size));
        if let Some((index, size)) = file {
            assert_eq!(
                index,
                i as u32,
                "files map index of {:?}",
                e.path.escape_ascii()
            );
            assert_eq!(size, e.size);
        }
        assert_eq!(
            file.is_some(),
            e.kind == EntryKind::Regular && e.link_to.is_none(),
            "files map entry of {}",
            e.path.escape_ascii()
        );
        let line = format!(
            "{:?} {:o} {}:{} size {} mtime {:?} target {:?} xattrs {:?} group {:?}",
            e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.target, e.xattrs, group
        );
        assert!(out.insert(e.path.clone(), line).is_none(), "listed twice");
    }
    out
}

/// A small deterministic generator (xorshift), so a failing seed replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rel(root: &Path, p: &Path) -> Vec<u8> {
    p.strip_prefix(root)
        .expect("under root")
        .as_os_str()
        .as_bytes()
        .to_vec()
}

/// Regular files and directories (not the root) now in the tree.
fn inventory(root: &Path) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let (mut files, mut dirs) = (vec![], vec![]);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&d)
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let t = fs::symlink_metadata(&p).expect("stat").file_type();
            if t.is_dir() {
                dirs.push(p.clone());
                stack.push(p);
            } else if t.is_file() {
                files.push(p);
            }
        }
    }
    (files, dirs)
}

fn populate(root: &Path, rng: &mut Rng) {
    for d in 0..4 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir(&dir).expect("mkdir");
        for s in 0..2 {
            fs::create_dir(dir.join(format!("s{s}"))).expect("mkdir");
            for f in 0..3 {
                let len = rng.below(5000);
                fs::write(dir.join(format!("s{s}/f{f}")), vec![b'x'; len]).expect("write");
            }
        }
        fs::write(dir.join("top"), b"top").expect("write");
        symlink("top", dir.join("ln")).expect("symlink");
    }
    fs::write(root.join("linked"), b"one inode, two names").expect("write");
    fs::hard_link(root.join("linked"), root.join("d0/linked2")).expect("link");
}

/// Makes one random change with real syscalls; returns the paths the change log would
/// record for it (as `queue::op_paths` does).
fn mutate(root: &Path, rng: &mut Rng, n: u64) -> Vec<Vec<u8>> {
    let (files, dirs) = inventory(root);
    let pick_file = |rng: &mut Rng| files[rng.below(files.len())].clone();
    let pick_dir = |rng: &mut Rng| dirs[rng.below(dirs.len())].clone();
    match rng.below(11) {
        0 if !files.is_empty() => {
            let f = pick_file(rng);
            let mut o = fs::OpenOptions::new().append(true).open(&f).expect("open");
            std::io::Write::write_all(&mut o, b"more").expect("append");
            vec![rel(root, &f)]
        }
        1 if !dirs.is_empty() => {
            let p = pick_dir(rng).join(format!("new{n}"));
            fs::write(&p, b"new").expect("create");
            vec![rel(root, &p)]
        }
        2 if !files.is_empty() => {
            let f = pick_file(rng);
            fs::remove_file(&f).expect("unlink");
            vec![rel(root, &f)]
        }
        3 if !dirs.is_empty() => {
            let d = pick_dir(rng).join(format!("nd{n}"));
            fs::create_dir(&d).expect("mkdir");
            fs::write(d.join("inside"), b"i").expect("create");
            vec![rel(root, &d), rel(root, &d.join("inside"))]
        }
        4 if !files.is_empty() && !dirs.is_empty() => {
            let f = pick_file(rng);
            let to = pick_dir(rng).join(format!("mv{n}"));
            fs::rename(&f, &to).expect("rename");
            vec![rel(root, &f), rel(root, &to)]
        }
        5 if dirs.len() > 1 => {
            // A directory moved into one that is not below it.
            let d = pick_dir(rng);
            let into = pick_dir(rng);
            if into.starts_with(&d) {
                return vec![];
            }
            let to = into.join(format!("dmv{n}"));
            fs::rename(&d, &to).expect("rename dir");
            vec![rel(root, &d), rel(root, &to)]
        }
        6 if !files.is_empty() => {
            let f = pick_file(rng);
            fs::set_permissions(
                &f,
                fs::Permissions::from_mode(0o600 + rng.below(0o77) as u32),
            )
            .expect("chmod");
            vec![rel(root, &f)]
        }
        7 if !files.is_empty() => {
            let f = pick_file(rng);
            let fd = open_root(f.parent().expect("parent"));
            let name = f.file_name().expect("name");
            let file = rfs::openat(&fd, name, OFlags::RDONLY, Mode::empty()).expect("open");
            rfs::fsetxattr(
                &file,
                "user.k",
                format!("v{n}").as_bytes(),
                rfs::XattrFlags::empty(),
            )
            .expect("setxattr");
            vec![rel(root, &f)]
        }
        8 if !dirs.is_empty() => {
            let p = pick_dir(rng).join(format!("sl{n}"));
            symlink("somewhere", &p).expect("symlink");
            vec![rel(root, &p)]
        }
        9 if !files.is_empty() => {
            let f = pick_file(rng);
            fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .expect("open")
                .set_len(1)
                .expect("truncate");
            vec![rel(root, &f)]
        }
        10 if !files.is_empty() && !dirs.is_empty() => {
            let f = pick_file(rng);
            let to = pick_dir(rng).join(format!("hl{n}"));
            fs::hard_link(&f, &to).expect("link");
            vec![rel(root, &f), rel(root, &to)]
        }
        _ => vec![],
    }
}

fn changed(paths: impl IntoIterator<Item = Vec<u8>>) -> HashSet<Vec<u8>> {
    paths.into_iter().collect()
}

#[test]
fn a_patched_draft_equals_a_fresh_listing_over_random_changes() {
    let (mut patched, mut discarded) = (0, 0);
    for seed in 1..=120u64 {
        let tmp = tempfile::tempdir().expect("tmp");
        let root_path = tmp.path();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        populate(root_path, &mut rng);
        let root = open_root(root_path);
        for (round, scope) in [None, Some(vec![b"d1".to_vec(), b"d2/s0".to_vec()])]
            .into_iter()
            .enumerate()
        {
            let d = draft(&root, scope.clone(), 0).expect("draft");
            let mut paths = Vec::new();
            for n in 0..(1 + rng.below(6) as u64) {
                let p = mutate(root_path, &mut rng, seed * 100 + round as u64 * 10 + n);
                paths.extend(p);
            }
            let fresh = walk::list(&root, scope.as_deref()).expect("list");
            let normalized = scope.clone().map(walk::normalize_scope);
            match finish(
                d,
                &root,
                Some(&changed(paths.clone())),
                normalized.as_deref(),
            )
            .expect("finish")
            {
                Ok((listing, _)) => {
                    patched += 1;
                    assert_eq!(
                        facts(&listing),
                        facts(&fresh),
                        "seed {seed}, scope {scope:?}: the patched draft differs (changed: {:?})",
                        paths
                            .iter()
                            .map(|p| p.escape_ascii().to_string())
                            .collect::<Vec<_>>()
                    );
                    assert!(parents_first(&listing, scope.as_deref()));
                }
                Err(why) => {
                    discarded += 1;
                    assert_eq!(
                        why,
                        Discarded::TooManyChanges,
                        "seed {seed}, scope {scope:?}"
                    );
                }
            }
        }
    }
    // Most rounds must really patch: a draft always thrown away would pass the rest.
    eprintln!("patched {patched}, discarded {discarded}");
    assert!(
        patched > discarded * 2,
        "patched {patched}, discarded {discarded}"
    );
}

#[test]
fn nothing_changed_keeps_the_draft_as_it_is() {
    let tmp = tempfile::tempdir().expect("tmp");
    populate(tmp.path(), &mut Rng(7));
    let root = open_root(tmp.path());
    let d = draft(&root, None, 5).expect("draft");
    let n = d.entries();
    let (listing, patch) = finish(d, &root, Some(&HashSet::new()), None)
        .expect("finish")
        .expect("patched");
    assert_eq!(patch, Patch::default());
    assert_eq!(listing.entries.len(), n);
    assert_eq!(
        facts(&listing),
        facts(&walk::list(&root, None).expect("list"))
    );
}

#[test]
fn an_unknown_change_set_or_a_changed_root_discards_the_draft() {
    let tmp = tempfile::tempdir().expect("tmp");
    populate(tmp.path(), &mut Rng(9));
    let root = open_root(tmp.path());
    let run = |c: Option<HashSet<Vec<u8>>>| {
        let d = draft(&root, None, 5).expect("draft");
        finish(d, &root, c.as_ref(), None).expect("finish").err()
    };
    assert_eq!(run(None), Some(Discarded::Unknown));
    assert_eq!(
        run(Some(changed([b"".to_vec()]))),
        Some(Discarded::RootChanged)
    );
}

#[test]
fn a_path_the_walk_could_not_read_must_be_among_the_changed() {
    let tmp = tempfile::tempdir().expect("tmp");
    populate(tmp.path(), &mut Rng(11));
    let root = open_root(tmp.path());
    let mut d = draft(&root, None, 5).expect("draft");
    d.notes.skipped.push(b"d3/s1".to_vec());
    let d2 = draft(&root, None, 5).expect("draft");
    assert_eq!(
        finish(d, &root, Some(&HashSet::new()), None)
            .expect("finish")
            .err(),
        Some(Discarded::Unreadable)
    );
    let mut d2 = d2;
    d2.notes.skipped.push(b"d3/s1/f0".to_vec());
    let (listing, _) = finish(d2, &root, Some(&changed([b"d3/s1".to_vec()])), None)
        .expect("finish")
        .expect("patched");
    assert_eq!(
        facts(&listing),
        facts(&walk::list(&root, None).expect("list"))
    );
}

/// A resync's scope (what changed since the common point) grows while the draft is walked:
/// the new parts are listed under the lock; a scope that became the whole tree discards it.
#[test]
fn a_scope_that_grew_is_listed_where_the_draft_does_not_cover_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    populate(tmp.path(), &mut Rng(13));
    let root = open_root(tmp.path());
    type Paths<'a> = &'a [&'a [u8]];
    let cases: [(Paths, Paths); 3] = [
        (&[b"d1/s0"], &[b"d1/s0", b"d2"]),
        (&[b"d1/s0", b"d3/top"], &[b"d1", b"d3/top"]),
        (&[b"d0/s1/f2"], &[b"d0", b"linked"]),
    ];
    for (drafted, now) in cases {
        let drafted: Vec<Vec<u8>> = drafted.iter().map(|p| p.to_vec()).collect();
        let now = walk::normalize_scope(now.iter().map(|p| p.to_vec()).collect());
        let d = draft(&root, Some(drafted.clone()), 5).expect("draft");
        // What was added to the scope changed after the draft's seq, as far as the log says.
        let added: Vec<Vec<u8>> = now
            .iter()
            .filter(|p| !drafted.contains(p))
            .cloned()
            .collect();
        let got = finish(d, &root, Some(&changed(added)), Some(&now)).expect("finish");
        let (listing, _) = got.expect("patched");
        assert_eq!(
            facts(&listing),
            facts(&walk::list(&root, Some(&now)).expect("list")),
            "drafted {drafted:?}, now {now:?}"
        );
    }
    let d = draft(&root, Some(vec![b"d1".to_vec()]), 5).expect("draft");
    assert_eq!(
        finish(d, &root, Some(&HashSet::new()), None)
            .expect("finish")
            .err(),
        Some(Discarded::ScopeChanged)
    );
}

/// A write through one name of a hard-linked file changes what every name lists (size,
/// mtime): the names the change log does not hold are listed again too.
#[test]
fn every_name_of_a_changed_hard_linked_file_is_listed_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    populate(tmp.path(), &mut Rng(17));
    let root = open_root(tmp.path());
    let d = draft(&root, None, 5).expect("draft");
    fs::write(tmp.path().join("d0/linked2"), b"longer than it was before").expect("write");
    let (listing, patch) = finish(d, &root, Some(&changed([b"d0/linked2".to_vec()])), None)
        .expect("finish")
        .expect("patched");
    assert_eq!(patch.relisted, 2, "both names listed again: {patch:?}");
    assert_eq!(
        facts(&listing),
        facts(&walk::list(&root, None).expect("list"))
    );
}
