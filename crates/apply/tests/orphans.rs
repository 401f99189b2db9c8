//! Orphans: inodes unlinked or renamed over while still open on the active are parked in the
//! orphans directory under their id, keep receiving ops as `FileRef::Orphan`, and go away on
//! `DropOrphan`. Also the checks `Applier::open` makes on the orphans directory.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use understudy_apply::{Applier, ApplyError};
use understudy_oplog::{FileRef, Op};

#[test]
fn unlinked_while_open_then_written_then_dropped() {
    let mut r = Replica::new();
    r.ok(dir("d", 0o755));
    r.ok(file("d/log", 0o644));
    r.ok(write("d/log", 0, b"before"));
    let ino = std::fs::metadata(r.at("d/log")).expect("stat").ino();
    r.ok(Op::Unlink {
        path: "d/log".into(),
        orphan: Some(17),
    });
    assert!(!r.at("d/log").exists());
    let parked = r.orphans.join("17");
    assert_eq!(std::fs::metadata(&parked).expect("parked").ino(), ino);

    // The active keeps writing through its open handle.
    r.apply_with(
        Op::Write {
            file: FileRef::Orphan(17),
            offset: 6,
            data: b" and after".to_vec(),
        },
        vec![(FileRef::Orphan(17), ts(1_700_000_000, 42))],
    )
    .expect("write to orphan");
    assert_eq!(std::fs::read(&parked).expect("read"), b"before and after");
    assert_eq!(mtime_of(&parked), ts(1_700_000_000, 42));
    r.ok(Op::Truncate {
        file: FileRef::Orphan(17),
        size: 6,
    });
    r.ok(Op::SetAttr {
        file: FileRef::Orphan(17),
        mode: Some(0o600),
        uid: None,
        gid: None,
        atime: None,
        mtime: None,
    });
    assert_eq!(std::fs::read(&parked).expect("read"), b"before");
    assert_eq!(mode_of(&parked), 0o600);
    r.ok(Op::Fsync {
        file: FileRef::Orphan(17),
        datasync: true,
    });
    r.applier.sync().expect("sync");

    r.ok(Op::DropOrphan { orphan: 17 });
    assert!(!parked.exists());
    assert_eq!(
        std::fs::read_dir(&r.orphans).expect("readdir").count(),
        0,
        "nothing left parked"
    );
    // Gone: further ops on it diverge.
    assert_eq!(
        diverged_errno(r.apply(Op::DropOrphan { orphan: 17 })),
        libc::ENOENT
    );
    assert_eq!(
        diverged_errno(r.apply(Op::Write {
            file: FileRef::Orphan(17),
            offset: 0,
            data: b"x".to_vec(),
        })),
        libc::ENOENT
    );
    r.applier.sync().expect("sync");
}

#[test]
fn renamed_over_while_open() {
    let mut r = Replica::new();
    r.ok(file("new", 0o644));
    r.ok(write("new", 0, b"new contents"));
    r.ok(file("cur", 0o644));
    r.ok(write("cur", 0, b"old contents"));
    r.ok(Op::Rename {
        from: "new".into(),
        to: "cur".into(),
        flags: 0,
        orphan: Some(9),
    });
    assert_eq!(std::fs::read(r.at("cur")).expect("read"), b"new contents");
    assert!(!r.at("new").exists());
    let parked = r.orphans.join("9");
    assert_eq!(std::fs::read(&parked).expect("read"), b"old contents");
    r.ok(Op::Write {
        file: FileRef::Orphan(9),
        offset: 0,
        data: b"OLD".to_vec(),
    });
    assert_eq!(std::fs::read(&parked).expect("read"), b"OLD contents");
    assert_eq!(std::fs::read(r.at("cur")).expect("read"), b"new contents");
    r.ok(Op::DropOrphan { orphan: 9 });
    assert!(!parked.exists());
    r.applier.sync().expect("sync");
}

#[test]
fn a_failed_orphaning_leaves_the_tree_as_it_was() {
    let mut r = Replica::new();
    for name in ["a", "b", "c"] {
        r.ok(file(name, 0o644));
        r.ok(write(name, 0, name.as_bytes()));
    }
    r.ok(Op::Unlink {
        path: "a".into(),
        orphan: Some(5),
    });
    // Id 5 is taken: the replica and the stream disagree.
    assert_eq!(
        diverged_errno(r.apply(Op::Unlink {
            path: "b".into(),
            orphan: Some(5),
        })),
        libc::EEXIST
    );
    assert_eq!(std::fs::read(r.at("b")).expect("read"), b"b");
    assert_eq!(std::fs::read(r.orphans.join("5")).expect("read"), b"a");
    // The rename's source is missing: the parked target is put back.
    assert_eq!(
        diverged_errno(r.apply(Op::Rename {
            from: "missing".into(),
            to: "c".into(),
            flags: 0,
            orphan: Some(6),
        })),
        libc::ENOENT
    );
    assert_eq!(std::fs::read(r.at("c")).expect("read"), b"c");
    assert!(!r.orphans.join("6").exists());
    // Directories are never parked.
    r.ok(dir("d", 0o755));
    assert_eq!(
        diverged_errno(r.apply(Op::Unlink {
            path: "d".into(),
            orphan: Some(7),
        })),
        libc::EISDIR
    );
    assert!(r.at("d").is_dir());
}

#[test]
fn open_checks_where_the_orphans_directory_is() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("inside")).expect("mkdir");
    let err = |root: &std::path::Path, orphans: &std::path::Path| match Applier::open(root, orphans)
    {
        Err(ApplyError::Io { what, .. }) => what,
        Err(other) => panic!("expected Io, got {other}"),
        Ok(_) => panic!(
            "{} accepted as orphans for {}",
            orphans.display(),
            root.display()
        ),
    };
    println!("{}", err(&root, &root.join("inside")));
    println!("{}", err(&root, &root));
    println!("{}", err(&root.join("inside"), &root));
    println!("{}", err(&root, &tmp.path().join("missing")));
    // Another filesystem, when there is one to try (/dev/shm is tmpfs on most systems).
    let shm = std::path::Path::new("/dev/shm");
    let other_fs = std::fs::metadata(shm)
        .map(|md| md.dev() != std::fs::metadata(&root).map(|m| m.dev()).unwrap_or(0))
        .unwrap_or(false);
    if other_fs {
        let orphans = tempfile::tempdir_in(shm).expect("temp dir in /dev/shm");
        println!("{}", err(&root, orphans.path()));
    } else {
        println!("SKIP cross-filesystem check: /dev/shm is not a separate filesystem here");
    }
}
