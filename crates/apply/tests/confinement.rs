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
