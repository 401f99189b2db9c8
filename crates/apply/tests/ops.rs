//! Each op kind applied to a fresh replica gives the expected tree: contents, size, mode,
//! owner, mtime to the nanosecond, symlink targets, link counts, xattrs; plus sequencing,
//! the divergence cases, fd-cache invalidation and group commit.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;
use understudy_apply::{ApplyError, MAX_DIRTY};
use understudy_oplog::{FileRef, NodeKind, Op, Record};

#[test]
fn mknod_and_writes_give_exact_contents_mode_and_mtimes() {
    let mut r = Replica::new();
    // 0o777 would come out 0o755 under the usual umask if the mode were not set explicitly.
    r.ok(file("f", 0o777));
    r.ok(write("f", 0, b"hello"));
    r.apply_with(
        write("f", 10, b"world"),
        vec![
            (path("f"), ts(1_600_000_000, 123_456_789)),
            (path(""), ts(1_500_000_000, 1)),
        ],
    )
    .expect("write with mtimes");
    let f = r.at("f");
    assert_eq!(std::fs::read(&f).expect("read"), b"hello\0\0\0\0\0world");
    assert_eq!(mode_of(&f), 0o777);
    assert_eq!(mtime_of(&f), ts(1_600_000_000, 123_456_789));
    assert_eq!(
        mtime_of(&r.root),
        ts(1_500_000_000, 1),
        "empty path in mtimes is the root"
    );
    assert_eq!(r.applier.last_applied(), 3);
    r.applier.sync().expect("sync");
}

#[test]
fn fifo_and_socket_nodes_get_their_exact_mode() {
    let mut r = Replica::new();
    let (uid, gid) = me();
    for (name, kind, mode) in [
        ("p", NodeKind::Fifo, 0o666),
        ("s", NodeKind::Socket, 0o1755),
    ] {
        r.ok(Op::Mknod {
            path: name.into(),
            kind,
            mode,
            uid,
            gid,
            rdev: 0,
        });
        assert_eq!(mode_of(&r.at(name)), mode, "{name}");
    }
    let md = std::fs::symlink_metadata(r.at("p")).expect("lstat");
    assert!(md.file_type().is_fifo());
    let md = std::fs::symlink_metadata(r.at("s")).expect("lstat");
    assert!(md.file_type().is_socket());
    // Special files are never opened for writing.
    assert!(matches!(
        r.apply(write("p", 0, b"x")),
        Err(ApplyError::Refused { .. })
    ));
    r.applier.sync().expect("sync");
}

#[test]
fn mkdir_and_rmdir() {
    let mut r = Replica::new();
    r.ok(dir("d", 0o2751));
    assert!(r.at("d").is_dir());
    assert_eq!(mode_of(&r.at("d")), 0o2751);
    r.ok(dir("d/e", 0o700));
    r.ok(file("d/e/f", 0o600));
    assert_eq!(diverged_errno(r.apply(dir("d", 0o755))), libc::EEXIST);
    assert_eq!(
        diverged_errno(r.apply(Op::Rmdir { path: "d".into() })),
        libc::ENOTEMPTY
    );
    r.ok(Op::Unlink {
        path: "d/e/f".into(),
        orphan: None,
    });
    r.ok(Op::Rmdir { path: "d/e".into() });
    assert!(!r.at("d/e").exists());
    assert_eq!(
        diverged_errno(r.apply(Op::Rmdir { path: "d/e".into() })),
        libc::ENOENT
    );
    assert_eq!(
        diverged_errno(r.apply(Op::Rmdir {
            path: "nope/e".into()
        })),
        libc::ENOENT
    );
    r.applier.sync().expect("sync");
}

#[test]
fn symlink_targets_are_stored_verbatim_and_never_followed() {
    let mut r = Replica::new();
    let (uid, gid) = me();
    let targets: [&[u8]; 4] = [
        b"../../../etc/passwd",
        b"/etc/shadow",
        b"x\xff y",
        b"dangling",
    ];
    for (i, target) in targets.iter().enumerate() {
        let name = format!("l{i}");
        r.apply_with(
            Op::Symlink {
                path: name.clone().into_bytes(),
                target: target.to_vec(),
                uid,
                gid,
            },
            vec![(path(&name), ts(1_234_567_890, 999_999_999))],
        )
        .expect("symlink");
        let link = r.at(&name);
        let got = std::fs::read_link(&link).expect("readlink");
        assert_eq!(
            std::os::unix::ffi::OsStrExt::as_bytes(got.as_os_str()),
            *target
        );
        // The link's own mtime, not its target's.
        assert_eq!(mtime_of(&link), ts(1_234_567_890, 999_999_999));
    }
    // Setting times on a symlink acts on the link itself.
    r.ok(Op::SetAttr {
        file: path("l1"),
        mode: None,
        uid: None,
        gid: None,
        atime: Some(ts(5, 6)),
        mtime: Some(ts(7, 8)),
    });
    assert_eq!(mtime_of(&r.at("l1")), ts(7, 8));
    assert_eq!(atime_of(&r.at("l1")), ts(5, 6));
    // ...but a symlink has no mode of its own to set.
    assert_eq!(
        diverged_errno(r.apply(Op::SetAttr {
            file: path("l1"),
            mode: Some(0o600),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        })),
        libc::EOPNOTSUPP
    );
    r.applier.sync().expect("sync");
}

#[test]
fn link_adds_a_name_to_the_same_inode_and_links_symlinks_themselves() {
    let mut r = Replica::new();
    r.ok(dir("d", 0o755));
    r.ok(file("a", 0o644));
    r.ok(write("a", 0, b"shared"));
    r.ok(Op::Link {
        existing: "a".into(),
        path: "d/b".into(),
    });
    let (a, b) = (
        std::fs::metadata(r.at("a")).expect("stat"),
        std::fs::metadata(r.at("d/b")).expect("stat"),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    r.ok(write("d/b", 0, b"SHARED"));
    assert_eq!(std::fs::read(r.at("a")).expect("read"), b"SHARED");

    let (uid, gid) = me();
    r.ok(Op::Symlink {
        path: "s".into(),
        target: "nowhere".into(),
        uid,
        gid,
    });
    r.ok(Op::Link {
        existing: "s".into(),
        path: "s2".into(),
    });
    let md = std::fs::symlink_metadata(r.at("s2")).expect("lstat");
    assert!(md.file_type().is_symlink());
    assert_eq!(md.nlink(), 2);
    assert_eq!(
        diverged_errno(r.apply(Op::Link {
            existing: "missing".into(),
            path: "x".into(),
        })),
        libc::ENOENT
    );
    assert_eq!(
        diverged_errno(r.apply(Op::Link {
            existing: "a".into(),
            path: "s".into(),
        })),
        libc::EEXIST
    );
    r.applier.sync().expect("sync");
}

#[test]
fn truncate_and_fallocate() {
    let mut r = Replica::new();
    r.ok(file("f", 0o644));
    r.ok(write("f", 0, &[0xaa; 8192]));
    r.ok(Op::Truncate {
        file: path("f"),
        size: 100,
    });
    assert_eq!(std::fs::read(r.at("f")).expect("read"), vec![0xaa; 100]);
    r.ok(Op::Truncate {
        file: path("f"),
        size: 5000,
    });
    let data = std::fs::read(r.at("f")).expect("read");
    assert_eq!(data.len(), 5000);
    assert!(data[100..].iter().all(|&b| b == 0));

    // FALLOC_FL_KEEP_SIZE: blocks reserved, size unchanged.
    r.ok(Op::Fallocate {
        file: path("f"),
        mode: libc::FALLOC_FL_KEEP_SIZE,
        offset: 0,
        len: 1 << 20,
    });
    let md = std::fs::metadata(r.at("f")).expect("stat");
    assert_eq!(md.size(), 5000);
    assert!(md.blocks() * 512 >= 1 << 20, "{} blocks", md.blocks());
    // FALLOC_FL_PUNCH_HOLE | KEEP_SIZE: the first 64 bytes read back as zeros.
    r.ok(Op::Fallocate {
        file: path("f"),
        mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset: 0,
        len: 4096,
    });
    let data = std::fs::read(r.at("f")).expect("read");
    assert_eq!(data.len(), 5000);
    assert!(data.iter().all(|&b| b == 0));
    // Plain fallocate extends.
    r.ok(Op::Fallocate {
        file: path("f"),
        mode: 0,
        offset: 0,
        len: 10_000,
    });
    assert_eq!(std::fs::metadata(r.at("f")).expect("stat").size(), 10_000);
    r.applier.sync().expect("sync");
}

#[test]
fn writes_only_reach_existing_regular_files() {
    let mut r = Replica::new();
    r.ok(dir("d", 0o755));
    assert_eq!(diverged_errno(r.apply(write("d", 0, b"x"))), libc::EISDIR);
    assert_eq!(
        diverged_errno(r.apply(write("missing", 0, b"x"))),
        libc::ENOENT
    );
    assert_eq!(
        diverged_errno(r.apply(write("missing/f", 0, b"x"))),
        libc::ENOENT
    );
    r.ok(file("f", 0o644));
    assert_eq!(
        diverged_errno(r.apply(write("f/g", 0, b"x"))),
        libc::ENOTDIR
    );
    // A failed record does not advance the sequence.
    assert_eq!(r.applier.last_applied(), 2);
}

#[test]
fn unlink_removes_names_not_directories() {
    let mut r = Replica::new();
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    let (uid, gid) = me();
    r.ok(Op::Symlink {
        path: "l".into(),
        target: "d/f".into(),
        uid,
        gid,
    });
    r.ok(Op::Unlink {
        path: "l".into(),
        orphan: None,
    });
    assert!(std::fs::symlink_metadata(r.at("l")).is_err());
    assert!(r.at("d/f").exists(), "the link's target is untouched");
    assert_eq!(
        diverged_errno(r.apply(Op::Unlink {
            path: "d".into(),
            orphan: None,
        })),
        libc::EISDIR
    );
    r.ok(Op::Unlink {
        path: "d/f".into(),
        orphan: None,
    });
    assert!(!r.at("d/f").exists());
    assert_eq!(
        diverged_errno(r.apply(Op::Unlink {
            path: "d/f".into(),
            orphan: None,
        })),
        libc::ENOENT
    );
    r.applier.sync().expect("sync");
}

#[test]
fn rename_plain_over_noreplace_and_exchange() {
    let mut r = Replica::new();
    let rename = |from: &str, to: &str, flags: u32| Op::Rename {
        from: from.into(),
        to: to.into(),
        flags,
        orphan: None,
    };
    r.ok(dir("d", 0o755));
    for (name, data) in [("a", "A"), ("b", "B"), ("x", "X"), ("y", "Y")] {
        r.ok(file(name, 0o644));
        r.ok(write(name, 0, data.as_bytes()));
    }
    r.ok(rename("a", "d/a2", 0));
    assert_eq!(std::fs::read(r.at("d/a2")).expect("read"), b"A");
    assert!(!r.at("a").exists());
    // Over an existing name.
    r.ok(rename("b", "d/a2", 0));
    assert_eq!(std::fs::read(r.at("d/a2")).expect("read"), b"B");
    // RENAME_NOREPLACE refuses to replace, leaving both in place.
    assert_eq!(
        diverged_errno(r.apply(rename("x", "y", libc::RENAME_NOREPLACE))),
        libc::EEXIST
    );
    assert_eq!(std::fs::read(r.at("x")).expect("read"), b"X");
    r.ok(rename("x", "z", libc::RENAME_NOREPLACE));
    // RENAME_EXCHANGE swaps.
    r.ok(rename("z", "y", libc::RENAME_EXCHANGE));
    assert_eq!(std::fs::read(r.at("y")).expect("read"), b"X");
    assert_eq!(std::fs::read(r.at("z")).expect("read"), b"Y");
    assert_eq!(
        diverged_errno(r.apply(rename("z", "nope", libc::RENAME_EXCHANGE))),
        libc::ENOENT
    );
    // A whole directory moves, contents and all.
    r.ok(rename("d", "e", 0));
    assert_eq!(std::fs::read(r.at("e/a2")).expect("read"), b"B");
    // Into itself: the kernel says no.
    r.ok(dir("e/sub", 0o755));
    assert_eq!(
        diverged_errno(r.apply(rename("e", "e/sub/e", 0))),
        libc::EINVAL
    );
    r.applier.sync().expect("sync");
}

#[test]
fn setattr_sets_mode_and_times_to_the_nanosecond() {
    let mut r = Replica::new();
    r.ok(file("f", 0o600));
    r.ok(dir("d", 0o700));
    r.ok(Op::SetAttr {
        file: path("f"),
        mode: Some(0o640),
        uid: None,
        gid: None,
        atime: Some(ts(1_000_000_000, 1)),
        mtime: Some(ts(2_000_000_000, 999_999_999)),
    });
    assert_eq!(mode_of(&r.at("f")), 0o640);
    assert_eq!(atime_of(&r.at("f")), ts(1_000_000_000, 1));
    assert_eq!(mtime_of(&r.at("f")), ts(2_000_000_000, 999_999_999));
    // Only mtime: atime stays.
    r.ok(Op::SetAttr {
        file: path("f"),
        mode: None,
        uid: None,
        gid: None,
        atime: None,
        mtime: Some(ts(3, 4)),
    });
    assert_eq!(atime_of(&r.at("f")), ts(1_000_000_000, 1));
    assert_eq!(mtime_of(&r.at("f")), ts(3, 4));
    // Negative seconds (before 1970) are times too.
    r.ok(Op::SetAttr {
        file: path("d"),
        mode: Some(0o1777),
        uid: None,
        gid: None,
        atime: None,
        mtime: Some(ts(-86_400, 5)),
    });
    assert_eq!(mode_of(&r.at("d")), 0o1777);
    assert_eq!(mtime_of(&r.at("d")), ts(-86_400, 5));
    // Nothing to change is not an error, even for a missing file.
    r.ok(Op::SetAttr {
        file: path("missing"),
        mode: None,
        uid: None,
        gid: None,
        atime: None,
        mtime: None,
    });
    r.applier.sync().expect("sync");
}

/// Capture names the root directory itself by the empty path: chmod, utimens and xattrs on
/// the mount point, and fsyncdir on it, apply to the replica's root.
#[test]
fn the_root_itself_takes_attributes_xattrs_and_fsync() {
    let mut r = Replica::new();
    r.ok(Op::SetAttr {
        file: path(""),
        mode: Some(0o2775),
        uid: None,
        gid: None,
        atime: None,
        mtime: Some(ts(1_700_000_000, 123_456_789)),
    });
    assert_eq!(mode_of(&r.root), 0o2775);
    assert_eq!(mtime_of(&r.root), ts(1_700_000_000, 123_456_789));
    r.ok(Op::SetXattr {
        file: path(""),
        name: b"user.root".to_vec(),
        value: b"v".to_vec(),
        flags: 0,
    });
    assert_eq!(xattr(&r.root, "user.root").as_deref(), Some(&b"v"[..]));
    r.ok(Op::RemoveXattr {
        file: path(""),
        name: b"user.root".to_vec(),
    });
    assert_eq!(xattr(&r.root, "user.root"), None);
    r.ok(Op::Fsync {
        file: path(""),
        datasync: false,
    });
    assert!(r.applier.sync_due());
    r.applier.sync().expect("sync");
}

#[test]
fn xattrs_on_files_and_directories() {
    let mut r = Replica::new();
    r.ok(file("f", 0o644));
    r.ok(dir("d", 0o755));
    let set = |f: &str, name: &str, value: &[u8], flags: i32| Op::SetXattr {
        file: path(f),
        name: name.into(),
        value: value.to_vec(),
        flags,
    };
    let remove = |f: &str, name: &str| Op::RemoveXattr {
        file: path(f),
        name: name.into(),
    };
    r.ok(set("f", "user.k", b"v\0with nul", 0));
    r.ok(set("d", "user.dir", b"", 0));
    assert_eq!(
        xattr(&r.at("f"), "user.k").as_deref(),
        Some(&b"v\0with nul"[..])
    );
    assert_eq!(xattr(&r.at("d"), "user.dir").as_deref(), Some(&b""[..]));
    assert_eq!(
        diverged_errno(r.apply(set("f", "user.k", b"x", libc::XATTR_CREATE))),
        libc::EEXIST
    );
    assert_eq!(
        diverged_errno(r.apply(set("f", "user.new", b"x", libc::XATTR_REPLACE))),
        libc::ENODATA
    );
    r.ok(set("f", "user.k", b"replaced", libc::XATTR_REPLACE));
    assert_eq!(
        xattr(&r.at("f"), "user.k").as_deref(),
        Some(&b"replaced"[..])
    );
    r.ok(remove("f", "user.k"));
    assert_eq!(xattr(&r.at("f"), "user.k"), None);
    assert_eq!(
        diverged_errno(r.apply(remove("f", "user.k"))),
        libc::ENODATA
    );
    // Not on symlinks: there is no safe way to reach the link itself.
    let (uid, gid) = me();
    r.ok(Op::Symlink {
        path: "l".into(),
        target: "f".into(),
        uid,
        gid,
    });
    assert_eq!(
        diverged_errno(r.apply(set("l", "user.k", b"v", 0))),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        xattr(&r.at("f"), "user.k"),
        None,
        "not through the link either"
    );
    r.applier.sync().expect("sync");
}

#[test]
fn records_must_arrive_in_sequence() {
    let mut r = Replica::new();
    let rec = |seq| Record {
        seq,
        op: Op::DropOrphan { orphan: 1 },
        mtimes: vec![],
    };
    let mkdir = |seq, name: &str| Record {
        seq,
        op: dir(name, 0o755),
        mtimes: vec![],
    };
    assert!(matches!(
        r.applier.apply(&rec(2)),
        Err(ApplyError::OutOfOrder {
            expected: 1,
            got: 2
        })
    ));
    r.applier.apply(&mkdir(1, "a")).expect("seq 1");
    assert!(matches!(
        r.applier.apply(&mkdir(1, "b")),
        Err(ApplyError::OutOfOrder {
            expected: 2,
            got: 1
        })
    ));
    assert!(
        !r.at("b").exists(),
        "an out-of-order record touches nothing"
    );
    r.applier.set_last_applied(41);
    assert!(matches!(
        r.applier.apply(&mkdir(2, "b")),
        Err(ApplyError::OutOfOrder { expected: 42, .. })
    ));
    r.applier
        .apply(&mkdir(42, "b"))
        .expect("seq 42 after resuming");
    assert_eq!(r.applier.last_applied(), 42);
}

#[test]
fn the_fd_cache_follows_renames_and_unlinks() {
    let mut r = Replica::new();
    r.ok(file("a", 0o644));
    r.ok(write("a", 0, b"old"));
    r.ok(Op::Rename {
        from: "a".into(),
        to: "b".into(),
        flags: 0,
        orphan: None,
    });
    r.ok(file("a", 0o644));
    r.ok(write("a", 0, b"new"));
    assert_eq!(std::fs::read(r.at("a")).expect("read"), b"new");
    assert_eq!(std::fs::read(r.at("b")).expect("read"), b"old");

    // A renamed directory: paths beneath it change meaning.
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    r.ok(write("d/f", 0, b"first"));
    r.ok(Op::Rename {
        from: "d".into(),
        to: "e".into(),
        flags: 0,
        orphan: None,
    });
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    r.ok(write("d/f", 0, b"second"));
    assert_eq!(std::fs::read(r.at("e/f")).expect("read"), b"first");
    assert_eq!(std::fs::read(r.at("d/f")).expect("read"), b"second");

    // Unlinked and recreated.
    r.ok(write("b", 0, b"OLD"));
    r.ok(Op::Unlink {
        path: "b".into(),
        orphan: None,
    });
    assert_eq!(diverged_errno(r.apply(write("b", 0, b"x"))), libc::ENOENT);
    r.ok(file("b", 0o644));
    r.ok(write("b", 0, b"fresh"));
    assert_eq!(std::fs::read(r.at("b")).expect("read"), b"fresh");

    // Renamed over: the old inode behind `e/f` must not receive the write.
    r.ok(write("e/f", 0, b"FIRST"));
    r.ok(Op::Rename {
        from: "d/f".into(),
        to: "e/f".into(),
        flags: 0,
        orphan: None,
    });
    r.ok(write("e/f", 6, b"!"));
    assert_eq!(std::fs::read(r.at("e/f")).expect("read"), b"second!");

    // More files than the cache holds: eviction must not lose or misdirect writes.
    for i in 0..300 {
        r.ok(file(&format!("many{i}"), 0o644));
    }
    for round in 0..2u8 {
        for i in 0..300 {
            r.ok(write(&format!("many{i}"), u64::from(round), &[round + 1]));
        }
    }
    for i in 0..300 {
        assert_eq!(
            std::fs::read(r.at(&format!("many{i}"))).expect("read"),
            [1, 2]
        );
    }
    r.applier.sync().expect("sync");
}

#[test]
fn group_commit_and_barriers() {
    let mut r = Replica::new();
    assert!(!r.applier.has_unsynced());
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    r.ok(write("d/f", 0, b"data"));
    assert!(r.applier.has_unsynced());
    assert!(!r.applier.sync_due());
    r.ok(Op::Fsync {
        file: path("d/f"),
        datasync: false,
    });
    assert!(r.applier.sync_due(), "a barrier asks for a sync");
    r.applier.sync().expect("sync");
    assert!(!r.applier.sync_due());
    assert!(!r.applier.has_unsynced());
    // A directory removed before the sync is not an error.
    r.ok(dir("gone", 0o755));
    r.ok(dir("gone/sub", 0o755));
    r.ok(Op::Rmdir {
        path: "gone/sub".into(),
    });
    r.ok(Op::Rmdir {
        path: "gone".into(),
    });
    r.applier.sync().expect("sync after rmdir");

    // More dirty inodes than tracked: falls back to syncfs, still fine.
    for i in 0..(MAX_DIRTY + 10) {
        r.ok(file(&format!("f{i}"), 0o644));
    }
    assert!(r.applier.has_unsynced());
    r.applier.sync().expect("sync via syncfs");
    assert!(!r.applier.has_unsynced());
}

#[test]
fn mtimes_of_a_missing_file_diverge() {
    let mut r = Replica::new();
    let err = r.apply_with(
        Op::Fsync {
            file: path("x"),
            datasync: true,
        },
        vec![(FileRef::Orphan(3), ts(1, 2))],
    );
    assert_eq!(diverged_errno(err), libc::ENOENT);
}

#[test]
fn ownership_is_applied_exactly() {
    if !require_root("ownership_is_applied_exactly") {
        return;
    }
    let mut r = Replica::new();
    r.ok(Op::Mknod {
        path: "suid".into(),
        kind: NodeKind::Regular,
        mode: 0o4755,
        uid: 1234,
        gid: 5678,
        rdev: 0,
    });
    let md = std::fs::metadata(r.at("suid")).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(
        md.mode() & 0o7777,
        0o4755,
        "setuid survives: owner is set before mode"
    );

    r.ok(Op::Mkdir {
        path: "d".into(),
        mode: 0o2770,
        uid: 42,
        gid: 43,
    });
    let md = std::fs::metadata(r.at("d")).expect("stat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (42, 43, 0o2770));

    r.ok(Op::Symlink {
        path: "d/l".into(),
        target: "../suid".into(),
        uid: 7,
        gid: 8,
    });
    let md = std::fs::symlink_metadata(r.at("d/l")).expect("lstat");
    assert_eq!((md.uid(), md.gid()), (7, 8));
    assert_eq!(
        std::fs::metadata(r.at("suid")).expect("stat").uid(),
        1234,
        "lchown, not chown through the link"
    );

    // uid only, then gid only.
    r.ok(Op::SetAttr {
        file: path("d/l"),
        mode: None,
        uid: Some(70),
        gid: None,
        atime: None,
        mtime: None,
    });
    r.ok(Op::SetAttr {
        file: path("suid"),
        mode: None,
        uid: None,
        gid: Some(99),
        atime: None,
        mtime: None,
    });
    let l = std::fs::symlink_metadata(r.at("d/l")).expect("lstat");
    assert_eq!((l.uid(), l.gid()), (70, 8));
    let f = std::fs::metadata(r.at("suid")).expect("stat");
    assert_eq!((f.uid(), f.gid()), (1234, 99));

    // Device nodes: created with their rdev, owned and moded exactly, never written.
    let null = libc::makedev(1, 3);
    r.ok(Op::Mknod {
        path: "null".into(),
        kind: NodeKind::CharDevice,
        mode: 0o620,
        uid: 5,
        gid: 6,
        rdev: null,
    });
    let md = std::fs::symlink_metadata(r.at("null")).expect("lstat");
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), null);
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (5, 6, 0o620));
    r.ok(Op::SetAttr {
        file: path("null"),
        mode: Some(0o600),
        uid: Some(9),
        gid: Some(10),
        atime: None,
        mtime: Some(ts(11, 12)),
    });
    let md = std::fs::symlink_metadata(r.at("null")).expect("lstat");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (9, 10, 0o600));
    assert_eq!(mtime_of(&r.at("null")), ts(11, 12));
    assert!(matches!(
        r.apply(write("null", 0, b"x")),
        Err(ApplyError::Refused { .. })
    ));
    r.applier.sync().expect("sync");
}
