//! A forged record stream tries every way out of the replica root it can: `..`, absolute
//! paths, symlinks inside the root pointing outside (as directories on the way and as final
//! names), a symlink swapped in for a directory, NUL bytes, empty and `.` components, and
//! escaping mtimes entries. Every attempt must be `Refused`, and a directory outside the root
//! (with a canary file) must be byte-for-byte unchanged afterwards, ctime included.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use understudy_apply::ApplyError;
use understudy_oplog::{FileRef, NodeKind, Op, Record, Timespec};

/// Sets up `outside/` next to the replica: a canary file, a subdirectory, an xattr.
fn make_outside(r: &Replica) -> std::path::PathBuf {
    let outside = r.tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).expect("mkdir outside");
    std::fs::write(outside.join("secret"), b"canary: do not touch").expect("write canary");
    std::fs::write(outside.join("sub/inner"), b"inner canary").expect("write canary");
    rustix::fs::setxattr(
        outside.join("secret").as_path(),
        "user.canary",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr canary");
    outside
}

/// What the attempt is, the op, and the mtimes the record carries.
type Attempt = (String, Op, Vec<(FileRef, Timespec)>);

fn attempts(outside: &Path) -> Vec<Attempt> {
    let (uid, gid) = me();
    let abs = |rel: &str| format!("{}/{rel}", outside.display()).into_bytes();
    let mut list: Vec<Attempt> = Vec::new();
    let mut add = |what: &str, op: Op| list.push((what.to_string(), op, vec![]));

    // Escaping by the letter of the path.
    for (what, p) in [
        ("dotdot", b"../outside/secret".to_vec()),
        ("dotdot deep", b"d/../../outside/secret".to_vec()),
        ("absolute", abs("secret")),
        ("absolute /etc/passwd", b"/etc/passwd".to_vec()),
        ("nul", b"secret\0".to_vec()),
        ("empty component", b"d//secret".to_vec()),
        ("trailing slash", b"d/".to_vec()),
        ("dot component", b"./d".to_vec()),
        ("empty", b"".to_vec()),
    ] {
        add(
            &format!("write {what}"),
            Op::Write {
                file: FileRef::Path(p.clone()),
                offset: 0,
                data: b"pwned".to_vec(),
            },
        );
        add(
            &format!("mknod {what}"),
            Op::Mknod {
                path: p.clone(),
                kind: NodeKind::Regular,
                mode: 0o777,
                uid,
                gid,
                rdev: 0,
            },
        );
        add(
            &format!("unlink {what}"),
            Op::Unlink {
                path: p.clone(),
                orphan: None,
            },
        );
        add(
            &format!("rename from {what}"),
            Op::Rename {
                from: p.clone(),
                to: b"stolen".to_vec(),
                flags: 0,
                orphan: None,
            },
        );
        add(
            &format!("rename to {what}"),
            Op::Rename {
                from: b"mine".to_vec(),
                to: p.clone(),
                flags: 0,
                orphan: None,
            },
        );
        add(
            &format!("link from {what}"),
            Op::Link {
                existing: p.clone(),
                path: b"hardlink".to_vec(),
            },
        );
        // The empty path is the root itself, a legitimate target of setattr (chmod of the
        // replicated directory); ops.rs covers that.
        if !p.is_empty() {
            add(
                &format!("setattr {what}"),
                Op::SetAttr {
                    file: FileRef::Path(p.clone()),
                    mode: Some(0o777),
                    uid: None,
                    gid: None,
                    atime: None,
                    mtime: Some(ts(1, 1)),
                },
            );
        }
    }

    // Through symlinks inside the root that point outside: `evil` (absolute target), `rel`
    // (relative target), and `d`, a directory the test swaps for a symlink.
    for link in ["evil", "rel", "d"] {
        let p = |rest: &str| format!("{link}/{rest}").into_bytes();
        add(
            &format!("write {link}/secret"),
            Op::Write {
                file: FileRef::Path(p("secret")),
                offset: 0,
                data: b"pwned".to_vec(),
            },
        );
        add(
            &format!("truncate {link}/secret"),
            Op::Truncate {
                file: FileRef::Path(p("secret")),
                size: 0,
            },
        );
        add(
            &format!("fallocate {link}/secret"),
            Op::Fallocate {
                file: FileRef::Path(p("secret")),
                mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset: 0,
                len: 4096,
            },
        );
        add(
            &format!("mknod {link}/new"),
            Op::Mknod {
                path: p("new"),
                kind: NodeKind::Regular,
                mode: 0o644,
                uid,
                gid,
                rdev: 0,
            },
        );
        add(
            &format!("mkfifo {link}/fifo"),
            Op::Mknod {
                path: p("fifo"),
                kind: NodeKind::Fifo,
                mode: 0o644,
                uid,
                gid,
                rdev: 0,
            },
        );
        add(
            &format!("mkdir {link}/newdir"),
            Op::Mkdir {
                path: p("newdir"),
                mode: 0o755,
                uid,
                gid,
            },
        );
        add(
            &format!("symlink {link}/ln"),
            Op::Symlink {
                path: p("ln"),
                target: b"/".to_vec(),
                uid,
                gid,
            },
        );
        add(
            &format!("link into {link}/"),
            Op::Link {
                existing: b"mine".to_vec(),
                path: p("hl"),
            },
        );
        add(
            &format!("link out of {link}/"),
            Op::Link {
                existing: p("secret"),
                path: b"hl".to_vec(),
            },
        );
        add(
            &format!("unlink {link}/secret"),
            Op::Unlink {
                path: p("secret"),
                orphan: None,
            },
        );
        add(
            &format!("unlink {link}/secret into orphans"),
            Op::Unlink {
                path: p("secret"),
                orphan: Some(1),
            },
        );
        add(&format!("rmdir {link}/sub"), Op::Rmdir { path: p("sub") });
        add(
            &format!("rename out of {link}/"),
            Op::Rename {
                from: p("secret"),
                to: b"stolen".to_vec(),
                flags: 0,
                orphan: None,
            },
        );
        add(
            &format!("rename into {link}/"),
            Op::Rename {
                from: b"mine".to_vec(),
                to: p("secret"),
                flags: 0,
                orphan: None,
            },
        );
        add(
            &format!("exchange with {link}/secret"),
            Op::Rename {
                from: b"mine".to_vec(),
                to: p("secret"),
                flags: libc::RENAME_EXCHANGE,
                orphan: None,
            },
        );
        add(
            &format!("rename over {link}/secret, orphaning it"),
            Op::Rename {
                from: b"mine".to_vec(),
                to: p("secret"),
                flags: 0,
                orphan: Some(2),
            },
        );
        add(
            &format!("setattr {link}/secret"),
            Op::SetAttr {
                file: FileRef::Path(p("secret")),
                mode: Some(0o777),
                uid: Some(uid),
                gid: Some(gid),
                atime: Some(ts(1, 1)),
                mtime: Some(ts(1, 1)),
            },
        );
        add(
            &format!("setxattr {link}/secret"),
            Op::SetXattr {
                file: FileRef::Path(p("secret")),
                name: b"user.pwned".to_vec(),
                value: b"1".to_vec(),
                flags: 0,
            },
        );
        add(
            &format!("removexattr {link}/secret"),
            Op::RemoveXattr {
                file: FileRef::Path(p("secret")),
                name: b"user.canary".to_vec(),
            },
        );
    }

    // Writes aimed at the symlinks themselves would follow them with a naive open.
    for link in ["evil", "rel", "d"] {
        add(
            &format!("write to symlink {link}"),
            Op::Write {
                file: FileRef::Path(link.as_bytes().to_vec()),
                offset: 0,
                data: b"pwned".to_vec(),
            },
        );
        add(
            &format!("truncate symlink {link}"),
            Op::Truncate {
                file: FileRef::Path(link.as_bytes().to_vec()),
                size: 0,
            },
        );
    }
    add(
        "write to symlink-to-file canary_link",
        Op::Write {
            file: FileRef::Path(b"canary_link".to_vec()),
            offset: 0,
            data: b"pwned".to_vec(),
        },
    );

    // Escaping mtimes entries, with a harmless op and with one that would otherwise apply.
    let harmless = || Op::Fsync {
        file: FileRef::Path(b"mine".to_vec()),
        datasync: true,
    };
    for bad in [
        &b"../outside/secret"[..],
        b"../outside",
        b"/etc/passwd",
        b"evil/secret",
        b"rel/secret",
        b"d/secret",
        b"d//x",
        b"a\0b",
    ] {
        list.push((
            format!("mtimes {}", bad.escape_ascii()),
            harmless(),
            vec![(FileRef::Path(bad.to_vec()), ts(1, 1))],
        ));
    }
    list.push((
        "mtimes escaping after a valid mkdir".into(),
        Op::Mkdir {
            path: b"should_not_exist".to_vec(),
            mode: 0o755,
            uid,
            gid,
        },
        vec![(FileRef::Path(b"../outside".to_vec()), ts(1, 1))],
    ));
    list
}

#[test]
fn a_forged_stream_cannot_touch_anything_outside_the_root() {
    let mut r = Replica::new();
    let outside = make_outside(&r);

    // Legitimate setup through the stream: a file of our own and a directory `d`.
    r.ok(file("mine", 0o644));
    r.ok(write("mine", 0, b"mine"));
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    // Hostile setup by hand, as if the replica had been tampered with: symlinks out of it,
    // and `d` swapped for one (what the applier already resolved stays harmless).
    symlink(&outside, r.at("evil")).expect("symlink evil");
    symlink("../outside", r.at("rel")).expect("symlink rel");
    symlink(outside.join("secret"), r.at("canary_link")).expect("symlink canary_link");
    std::fs::rename(r.at("d"), r.at("d.orig")).expect("move d away");
    symlink(&outside, r.at("d")).expect("swap d for a symlink");

    let before = snapshot(&outside);
    let orphans_before = snapshot(&r.orphans);
    let seq_before = r.applier.last_applied();

    let list = attempts(&outside);
    let mut not_refused = Vec::new();
    for (what, op, mtimes) in list.iter().cloned() {
        match r.apply_with(op, mtimes) {
            Err(ApplyError::Refused { reason, .. }) => println!("refused {what}: {reason}"),
            other => not_refused.push(format!("{what}: {other:?}")),
        }
    }
    assert!(
        not_refused.is_empty(),
        "not refused:\n{}",
        not_refused.join("\n")
    );
    assert_eq!(
        r.applier.last_applied(),
        seq_before,
        "refusals do not advance"
    );
    assert!(
        !r.at("should_not_exist").exists(),
        "checked before applying"
    );
    assert!(!r.at("stolen").exists() && !r.at("hl").exists());
    println!("{} attempts refused", list.len());

    // Ops that legitimately act on a symlink itself are fine and stay inside: its own
    // mtime, a hard link to it, renaming it. Then ops whose refusal is a divergence.
    r.apply_with(
        Op::Fsync {
            file: FileRef::Path(b"mine".to_vec()),
            datasync: true,
        },
        vec![(FileRef::Path(b"evil".to_vec()), ts(2, 2))],
    )
    .expect("mtime of the symlink itself");
    assert_eq!(mtime_of(&r.at("evil")), ts(2, 2));
    r.ok(Op::Link {
        existing: b"evil".to_vec(),
        path: b"evil2".to_vec(),
    });
    r.ok(Op::Rename {
        from: b"evil2".to_vec(),
        to: b"evil3".to_vec(),
        flags: 0,
        orphan: None,
    });
    for op in [
        Op::SetAttr {
            file: FileRef::Path(b"evil".to_vec()),
            mode: Some(0o777),
            uid: None,
            gid: None,
            atime: None,
            mtime: None,
        },
        Op::SetXattr {
            file: FileRef::Path(b"evil".to_vec()),
            name: b"user.pwned".to_vec(),
            value: b"1".to_vec(),
            flags: 0,
        },
        Op::RemoveXattr {
            file: FileRef::Path(b"canary_link".to_vec()),
            name: b"user.canary".to_vec(),
        },
        Op::Mkdir {
            path: b"evil".to_vec(),
            mode: 0o755,
            uid: me().0,
            gid: me().1,
        },
        Op::Mknod {
            path: b"canary_link".to_vec(),
            kind: NodeKind::Regular,
            mode: 0o644,
            uid: me().0,
            gid: me().1,
            rdev: 0,
        },
    ] {
        let shown = format!("{op:?}");
        assert!(r.apply(op).is_err(), "{shown} must fail");
    }
    // Unlinking the symlink removes the link, not what it points at.
    r.ok(Op::Unlink {
        path: b"canary_link".to_vec(),
        orphan: None,
    });
    // `d/f` was created before the swap: it is found as `d.orig/f`, never as `outside/f`.
    assert!(r.at("d.orig/f").exists());
    r.applier.sync().expect("sync");

    assert_eq!(snapshot(&outside), before, "outside changed");
    assert_eq!(snapshot(&r.orphans), orphans_before, "orphans changed");
}

#[test]
fn device_nodes_in_the_replica_are_never_written_through() {
    if !require_root("device_nodes_in_the_replica_are_never_written_through") {
        return;
    }
    let mut r = Replica::new();
    // /dev/null and /dev/zero stand in for a disk: a write through a block or char device
    // node would reach the passive's own device.
    for (name, kind, dev) in [
        ("null", NodeKind::CharDevice, libc::makedev(1, 3)),
        ("zero", NodeKind::CharDevice, libc::makedev(1, 5)),
        ("loop", NodeKind::BlockDevice, libc::makedev(7, 0)),
    ] {
        r.ok(Op::Mknod {
            path: name.as_bytes().to_vec(),
            kind,
            mode: 0o666,
            uid: 0,
            gid: 0,
            rdev: dev,
        });
        for op in [
            write(name, 0, b"x"),
            Op::Truncate {
                file: path(name),
                size: 0,
            },
            Op::Fallocate {
                file: path(name),
                mode: 0,
                offset: 0,
                len: 1,
            },
        ] {
            let shown = format!("{op:?}");
            match r.apply(op) {
                Err(ApplyError::Refused { .. }) => {}
                other => panic!("{shown}: expected Refused, got {other:?}"),
            }
        }
    }
}

#[test]
fn mount_points_inside_the_root_are_not_crossed() {
    if !require_root("mount_points_inside_the_root_are_not_crossed") {
        return;
    }
    let mut r = Replica::new();
    r.ok(dir("mnt", 0o755));
    let mnt = r.at("mnt");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "understudy-apply-test"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        println!("SKIP mount_points_inside_the_root_are_not_crossed: cannot mount tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    std::fs::write(mnt.join("f"), b"on another mount").expect("write on tmpfs");
    for op in [file("mnt/x", 0o644), write("mnt/f", 0, b"pwned")] {
        let shown = format!("{op:?}");
        match r.apply(op) {
            Err(ApplyError::Refused { .. }) => {}
            other => panic!("{shown}: expected Refused, got {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read(mnt.join("f")).expect("read"),
        b"on another mount"
    );
    assert!(!mnt.join("x").exists());
}

#[test]
fn a_record_out_of_order_is_checked_before_its_paths() {
    let mut r = Replica::new();
    let record = Record {
        seq: 5,
        op: Op::Unlink {
            path: b"../x".to_vec(),
            orphan: None,
        },
        mtimes: vec![],
    };
    assert!(matches!(
        r.applier.apply(&record),
        Err(ApplyError::OutOfOrder { .. })
    ));
}

// ---- resync and verify records ----------------------------------------------------------

fn entry(path: &[u8], kind: understudy_oplog::EntryKind) -> understudy_oplog::TreeEntry {
    let (uid, gid) = me();
    understudy_oplog::TreeEntry {
        path: path.to_vec(),
        kind,
        mode: 0o644,
        uid,
        gid,
        rdev: 0,
        size: 0,
        mtime: ts(1, 1),
        target: if kind == understudy_oplog::EntryKind::Symlink {
            b"somewhere".to_vec()
        } else {
            vec![]
        },
        link_to: None,
        xattrs: vec![],
    }
}

/// A record stream that opens a sync and then sends one forged record, which must be refused.
struct SyncAttempt {
    what: String,
    /// Must apply: opens the sync the forged record claims to belong to.
    setup: Vec<Op>,
    forged: Op,
}

fn sync_attempts(outside: &Path) -> Vec<SyncAttempt> {
    use understudy_oplog::EntryKind::{Dir, Regular, Symlink};
    let abs = format!("{}/secret", outside.display()).into_bytes();
    let begin = |scope: Option<Vec<&[u8]>>| Op::SyncBegin {
        id: 1,
        verify: false,
        scope: scope.map(|s| s.into_iter().map(<[u8]>::to_vec).collect()),
    };
    let tree = |entries: Vec<understudy_oplog::TreeEntry>| Op::SyncTree {
        id: 1,
        first_index: 0,
        entries,
        last: true,
    };
    let meta = |path: &[u8]| Op::SyncMeta {
        path: path.to_vec(),
        size: 0,
        mode: 0o777,
        uid: me().0,
        gid: me().1,
        mtime: ts(1, 1),
        xattrs: vec![(b"user.pwned".to_vec(), b"1".to_vec())],
    };
    let range = |id: u64, path: &[u8]| Op::VerifyRange {
        id,
        path: path.to_vec(),
        offset: 0,
        len: 5,
        hash: *blake3::hash(b"canar").as_bytes(),
    };
    let mut list = Vec::new();
    let mut add = |what: String, setup: Vec<Op>, forged: Op| {
        list.push(SyncAttempt {
            what,
            setup,
            forged,
        })
    };

    let hostile_paths: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", b"../outside/secret".to_vec()),
        ("dotdot deep", b"d/../../outside/secret".to_vec()),
        ("absolute", abs.clone()),
        ("absolute /etc", b"/etc/passwd".to_vec()),
        ("nul", b"secret\0".to_vec()),
        ("empty component", b"d//secret".to_vec()),
        ("trailing slash", b"d/".to_vec()),
        ("dot component", b"./d".to_vec()),
        ("through evil", b"evil/secret".to_vec()),
        ("through rel", b"rel/secret".to_vec()),
        ("through d.swapped", b"d/secret".to_vec()),
        ("deep through evil", b"evil/sub/inner".to_vec()),
    ];
    for (what, p) in &hostile_paths {
        add(format!("scope {what}"), vec![], begin(Some(vec![&p[..]])));
        add(format!("sync meta {what}"), vec![], meta(p));
        add(
            format!("verify range {what}"),
            vec![begin(None)],
            range(1, p),
        );
        add(
            format!("listing entry {what}"),
            vec![begin(None)],
            tree(vec![entry(p, Regular)]),
        );
        // With `d` listed as a directory, `d/secret` is legitimate: the symlink at `d` is
        // replaced (the end of the test does that with `evil`).
        if p != b"d/secret" {
            add(
                format!("listing entry {what} after d"),
                vec![begin(None)],
                tree(vec![entry(b"d", Dir), entry(p, Regular)]),
            );
        }
    }
    // The empty path: only the root of a whole-tree sync, as a directory.
    add("scope empty".into(), vec![], begin(Some(vec![b""])));
    add("sync meta empty".into(), vec![], meta(b""));
    add(
        "root as a file".into(),
        vec![begin(None)],
        tree(vec![entry(b"", Regular)]),
    );
    add(
        "root in a scoped sync".into(),
        vec![begin(Some(vec![b"d"]))],
        tree(vec![entry(b"", Dir)]),
    );
    // Final names that are symlinks out of the root.
    add("sync meta on evil".into(), vec![], meta(b"evil"));
    add(
        "sync meta on canary_link".into(),
        vec![],
        meta(b"canary_link"),
    );
    add(
        "scope through canary_link".into(),
        vec![],
        begin(Some(vec![b"canary_link/x"])),
    );
    // Outside the scope, or before the parent.
    add(
        "entry outside the scope".into(),
        vec![begin(Some(vec![b"d"]))],
        tree(vec![entry(b"d", Dir), entry(b"mine", Regular)]),
    );
    add(
        "entry before its parent".into(),
        vec![begin(None)],
        tree(vec![entry(b"x/y", Regular), entry(b"x", Dir)]),
    );
    add(
        "entry under a file".into(),
        vec![begin(None)],
        tree(vec![entry(b"x", Regular), entry(b"x/y", Regular)]),
    );
    add(
        "entry under a symlink".into(),
        vec![begin(None)],
        tree(vec![
            entry(b"evil", Symlink),
            entry(b"evil/secret", Regular),
        ]),
    );
    add(
        "path listed twice".into(),
        vec![begin(None)],
        tree(vec![entry(b"x", Dir), entry(b"x", Regular)]),
    );
    // Hard links that do not lead to an earlier regular file.
    let linked = |kind, to| {
        let mut e = entry(b"hl", kind);
        e.link_to = Some(to);
        e
    };
    for (what, entries) in [
        ("forward", vec![linked(Regular, 1), entry(b"mine", Regular)]),
        ("to itself", vec![linked(Regular, 0)]),
        (
            "out of range",
            vec![entry(b"mine", Regular), linked(Regular, 99)],
        ),
        (
            "to u32::MAX",
            vec![entry(b"mine", Regular), linked(Regular, u32::MAX)],
        ),
        ("to a directory", vec![entry(b"d", Dir), linked(Regular, 0)]),
        (
            "to a symlink",
            vec![entry(b"s", Symlink), linked(Regular, 0)],
        ),
        (
            "from a symlink",
            vec![entry(b"mine", Regular), linked(Symlink, 0)],
        ),
        (
            "from a directory",
            vec![entry(b"mine", Regular), linked(Dir, 0)],
        ),
    ] {
        add(format!("link_to {what}"), vec![begin(None)], tree(entries));
    }
    // Fields that are not sane.
    let with = |f: &dyn Fn(&mut understudy_oplog::TreeEntry)| {
        let mut e = entry(b"mine", Regular);
        f(&mut e);
        e
    };
    for (what, e) in [
        ("uid -1", with(&|e| e.uid = u32::MAX)),
        ("gid -1", with(&|e| e.gid = u32::MAX)),
        ("UTIME_OMIT", with(&|e| e.mtime.nsec = 1_073_741_822)),
        (
            "xattr name empty",
            with(&|e| e.xattrs = vec![(vec![], vec![])]),
        ),
        (
            "xattr name with NUL",
            with(&|e| e.xattrs = vec![(b"user.a\0b".to_vec(), vec![])]),
        ),
        (
            "xattr listed twice",
            with(&|e| {
                e.xattrs = vec![
                    (b"user.a".to_vec(), b"1".to_vec()),
                    (b"user.a".to_vec(), b"2".to_vec()),
                ]
            }),
        ),
        ("xattr on a symlink", {
            let mut e = entry(b"s", Symlink);
            e.xattrs = vec![(b"user.a".to_vec(), vec![])];
            e
        }),
        ("empty symlink target", {
            let mut e = entry(b"s", Symlink);
            e.target = vec![];
            e
        }),
        ("symlink target with NUL", {
            let mut e = entry(b"s", Symlink);
            e.target = b"a\0b".to_vec();
            e
        }),
    ] {
        add(format!("entry {what}"), vec![begin(None)], tree(vec![e]));
    }
    for (what, op) in [
        ("uid -1", {
            let mut op = meta(b"mine");
            if let Op::SyncMeta { uid, .. } = &mut op {
                *uid = u32::MAX;
            }
            op
        }),
        ("UTIME_NOW", {
            let mut op = meta(b"mine");
            if let Op::SyncMeta { mtime, .. } = &mut op {
                mtime.nsec = 1_073_741_823;
            }
            op
        }),
        ("xattr name too long", {
            let mut op = meta(b"mine");
            if let Op::SyncMeta { xattrs, .. } = &mut op {
                *xattrs = vec![(vec![b'u'; 256], vec![])];
            }
            op
        }),
        ("size past i64", {
            let mut op = meta(b"mine");
            if let Op::SyncMeta { size, .. } = &mut op {
                *size = u64::MAX;
            }
            op
        }),
    ] {
        add(format!("sync meta {what}"), vec![], op);
    }
    // Parts and ids that do not follow the sync.
    // What an earlier attempt opened is closed first.
    let no_sync = || vec![begin(None), Op::SyncEnd { id: 1 }];
    add(
        "listing without a sync".into(),
        no_sync(),
        tree(vec![entry(b"x", Dir)]),
    );
    add(
        "listing of another sync".into(),
        vec![begin(None)],
        Op::SyncTree {
            id: 2,
            first_index: 0,
            entries: vec![entry(b"x", Dir)],
            last: true,
        },
    );
    add(
        "listing part out of order".into(),
        vec![begin(None)],
        Op::SyncTree {
            id: 1,
            first_index: 1,
            entries: vec![entry(b"x", Dir)],
            last: true,
        },
    );
    add(
        "listing index overflowing".into(),
        vec![begin(None)],
        Op::SyncTree {
            id: 1,
            first_index: u32::MAX,
            entries: vec![entry(b"x", Dir)],
            last: true,
        },
    );
    add(
        "verify range without a sync".into(),
        no_sync(),
        range(1, b"mine"),
    );
    add(
        "verify range of another sync".into(),
        vec![begin(None)],
        range(2, b"mine"),
    );
    add(
        "sync end without a sync".into(),
        no_sync(),
        Op::SyncEnd { id: 1 },
    );
    add(
        "sync end of another sync".into(),
        vec![begin(None)],
        Op::SyncEnd { id: 2 },
    );
    list
}

#[test]
fn a_forged_sync_stream_cannot_touch_anything_outside_the_root() {
    let mut r = Replica::new();
    let outside = make_outside(&r);
    r.ok(file("mine", 0o644));
    r.ok(write("mine", 0, b"mine"));
    r.ok(dir("d", 0o755));
    r.ok(file("d/f", 0o644));
    symlink(&outside, r.at("evil")).expect("symlink evil");
    symlink("../outside", r.at("rel")).expect("symlink rel");
    symlink(outside.join("secret"), r.at("canary_link")).expect("symlink canary_link");
    std::fs::rename(r.at("d"), r.at("d.orig")).expect("move d away");
    symlink(&outside, r.at("d")).expect("swap d for a symlink");

    let before = snapshot(&outside);
    let orphans_before = snapshot(&r.orphans);
    let replica_before = snapshot(&r.root);

    let list = sync_attempts(&outside);
    let mut not_refused = Vec::new();
    for attempt in &list {
        for op in &attempt.setup {
            if let Err(e) = r.apply(op.clone()) {
                panic!("{}: setup {op:?} failed: {e}", attempt.what);
            }
        }
        let seq = r.applier.last_applied();
        match r.apply(attempt.forged.clone()) {
            Err(ApplyError::Refused { reason, .. }) => {
                println!("refused {}: {reason}", attempt.what)
            }
            other => not_refused.push(format!("{}: {other:?}", attempt.what)),
        }
        assert_eq!(r.applier.last_applied(), seq, "{}", attempt.what);
    }
    assert!(
        not_refused.is_empty(),
        "not refused:\n{}",
        not_refused.join("\n")
    );
    println!("{} attempts refused", list.len());
    assert_eq!(snapshot(&r.root), replica_before, "refusals change nothing");

    // A verify range whose final name is a symlink out of the root reads nothing: even the
    // right hash of the canary does not match.
    struct Ranges(Vec<bool>);
    impl understudy_apply::SyncObserver for Ranges {
        fn before_change(
            &mut self,
            _: &[u8],
            _: understudy_oplog::EntryKind,
            _: Option<&std::os::fd::OwnedFd>,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn need_content(&mut self, _: u32, _: Option<understudy_apply::LocalHandle>) {}
        fn compare_content(&mut self, _: u32, _: understudy_apply::LocalHandle) {}
        fn differs(&mut self, _: &[u8], _: &'static str) {}
        fn range_checked(&mut self, _: u64, _: &[u8], _: u64, _: u64, matches: bool) {
            self.0.push(matches);
        }
    }
    let mut ranges = Ranges(vec![]);
    for op in [
        Op::SyncBegin {
            id: 3,
            verify: true,
            scope: Some(vec![]),
        },
        Op::VerifyRange {
            id: 3,
            path: b"canary_link".to_vec(),
            offset: 0,
            len: 5,
            hash: *blake3::hash(b"canar").as_bytes(),
        },
        Op::SyncEnd { id: 3 },
    ] {
        let record = Record {
            seq: r.applier.last_applied() + 1,
            op,
            mtimes: vec![],
        };
        r.applier
            .apply_observed(&record, &mut ranges)
            .expect("verify range on a symlink");
    }
    assert_eq!(ranges.0, vec![false]);

    // Legitimate listings that name the symlinks' paths replace the symlinks themselves,
    // never what they point at: `evil` becomes a directory with a file, `d` and `rel` go.
    let (uid, gid) = me();
    let listed = |path: &[u8], kind| {
        let mut e = entry(path, kind);
        e.uid = uid;
        e.gid = gid;
        e.mode = 0o755;
        e
    };
    use understudy_oplog::EntryKind::{Dir, Regular};
    let entries = vec![
        listed(b"", Dir),
        listed(b"evil", Dir),
        listed(b"evil/secret", Regular),
        listed(b"evil/sub", Dir),
        listed(b"mine", Regular),
    ];
    r.ok(Op::SyncBegin {
        id: 4,
        verify: false,
        scope: None,
    });
    r.ok(Op::SyncTree {
        id: 4,
        first_index: 0,
        entries,
        last: true,
    });
    r.ok(Op::SyncEnd { id: 4 });
    assert!(r.at("evil").is_dir() && !r.at("evil").is_symlink());
    assert_eq!(std::fs::read(r.at("evil/secret")).expect("read"), b"");
    assert!(!r.at("d").exists() && !r.at("rel").exists() && !r.at("canary_link").exists());
    assert!(!r.at("d.orig").exists(), "not listed: removed");
    r.applier.sync().expect("sync");

    assert_eq!(snapshot(&outside), before, "outside changed");
    assert_eq!(snapshot(&r.orphans), orphans_before, "orphans changed");
}
