//! System tests of the capture filesystem on a real FUSE mount: every mutating operation done
//! through the mount shows up in the journal as the right op, with paths relative to the
//! backing root, in order, with the backing files' exact mtimes; open-file corner cases
//! (rename and unlink while open) address the right file; reads return the right data,
//! through kernel passthrough where the policy allows.
//!
//! They need root and /dev/fuse and skip otherwise, except under CI=true where they fail.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use understudy_capture::{mount, CaptureError, CaptureOptions, ReadPassthrough};
use understudy_oplog::{FileRef, NodeKind, Op, Record, Timespec};

/// Waits (briefly) for a record the kernel sends asynchronously, such as a release.
fn wait_for(f: &Fixture, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = f.journal.snapshot().into_iter().find(|r| pred(r)) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_ops(records: &[Record]) -> Vec<(FileRef, u64, Vec<u8>)> {
    records
        .iter()
        .filter_map(|r| match &r.op {
            Op::Write { file, offset, data } => Some((file.clone(), *offset, data.clone())),
            _ => None,
        })
        .collect()
}

/// The captured writes to one path, in order.
fn writes_to(records: &[Record], name: &str) -> Vec<(FileRef, u64, Vec<u8>)> {
    let file = path_ref(name);
    write_ops(records)
        .into_iter()
        .filter(|w| w.0 == file)
        .collect()
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<()> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn create_write_fsync_are_recorded_in_order() {
    if !require_root("create_write_fsync_are_recorded_in_order") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.m("d")).expect("mkdir");
    let mut file = File::create(f.m("d/a.txt")).expect("create");
    file.write_all(b"hello").expect("write");
    file.sync_all().expect("fsync");
    drop(file);

    let records = f.journal.snapshot();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let ops = ops(&records);
    assert!(matches!(&ops[0], Op::Mkdir { path, mode: 0o755, uid: 0, gid: 0 } if path == b"d"));
    assert_eq!(
        ops[1],
        Op::Mknod {
            path: b"d/a.txt".to_vec(),
            kind: NodeKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0
        }
    );
    assert_eq!(
        ops[2],
        Op::Write {
            file: path_ref("d/a.txt"),
            offset: 0,
            data: b"hello".to_vec()
        }
    );
    assert_eq!(
        ops[3],
        Op::Fsync {
            file: path_ref("d/a.txt"),
            datasync: false
        }
    );
    assert!(
        f.journal
            .durable_waits
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    // Creation records the new entry and its parent directory.
    let created: Vec<&FileRef> = records[1].mtimes.iter().map(|(r, _)| r).collect();
    assert_eq!(created, vec![&path_ref("d/a.txt"), &path_ref("d")]);
    assert_eq!(fs::read(f.b("d/a.txt")).expect("backing"), b"hello");
}

#[test]
fn rename_while_open_then_write_uses_the_new_path() {
    if !require_root("rename_while_open_then_write_uses_the_new_path") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.m("d")).expect("mkdir");
    let mut file = File::create(f.m("d/x")).expect("create");
    file.write_all(b"1").expect("write");
    // Rename an ancestor, then the file itself, while it is open.
    fs::rename(f.m("d"), f.m("e")).expect("rename dir");
    fs::rename(f.m("e/x"), f.m("e/y")).expect("rename file");
    file.write_all(b"2").expect("write after rename");
    drop(file);

    let records = f.journal.snapshot();
    let renames: Vec<Op> = ops(&records)
        .into_iter()
        .filter(|o| matches!(o, Op::Rename { .. }))
        .collect();
    assert_eq!(
        renames,
        vec![
            Op::Rename {
                from: b"d".to_vec(),
                to: b"e".to_vec(),
                flags: 0,
                orphan: None
            },
            Op::Rename {
                from: b"e/x".to_vec(),
                to: b"e/y".to_vec(),
                flags: 0,
                orphan: None
            },
        ]
    );
    let writes = write_ops(&records);
    assert_eq!(writes[0], (path_ref("d/x"), 0, b"1".to_vec()));
    assert_eq!(writes[1], (path_ref("e/y"), 1, b"2".to_vec()));
    // A rename records both parents and the moved entry.
    let last = records
        .iter()
        .rfind(|r| matches!(r.op, Op::Rename { .. }))
        .expect("rename");
    let refs: Vec<&FileRef> = last.mtimes.iter().map(|(r, _)| r).collect();
    assert_eq!(refs, vec![&path_ref("e"), &path_ref("e/y")]);
}

#[test]
fn unlink_or_rename_over_while_open_makes_an_orphan_until_release() {
    if !require_root("unlink_or_rename_over_while_open_makes_an_orphan_until_release") {
        return;
    }
    let f = Fixture::new();
    let mut file = File::create(f.m("o")).expect("create");
    file.write_all(b"before").expect("write");
    fs::remove_file(f.m("o")).expect("unlink");
    file.write_all(b"after").expect("write to unlinked");
    let records = f.journal.snapshot();
    let orphan = records
        .iter()
        .find_map(|r| match &r.op {
            Op::Unlink {
                path,
                orphan: Some(id),
            } if path == b"o" => Some(*id),
            _ => None,
        })
        .expect("unlink with orphan id");
    assert_eq!(
        write_ops(&records).last(),
        Some(&(FileRef::Orphan(orphan), 6, b"after".to_vec()))
    );
    // Reopening the orphan through /proc reaches the same inode.
    let mut again = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("reopen");
    let mut content = String::new();
    again.read_to_string(&mut content).expect("read orphan");
    assert_eq!(content, "beforeafter");
    drop(again);
    // fsync on an orphan is a barrier on the orphan.
    file.sync_data().expect("fdatasync");
    assert!(f.journal.snapshot().iter().any(|r| r.op
        == Op::Fsync {
            file: FileRef::Orphan(orphan),
            datasync: true
        }));
    drop(file);
    wait_for(&f, "DropOrphan", |r| r.op == Op::DropOrphan { orphan });

    // Rename over an open file: the replaced inode becomes an orphan.
    fs::write(f.m("s"), b"new").expect("write s");
    let mut victim = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(f.m("t"))
        .expect("open t");
    fs::rename(f.m("s"), f.m("t")).expect("rename over");
    victim.write_all(b"old").expect("write to replaced");
    let records = f.journal.snapshot();
    let orphan2 = records
        .iter()
        .find_map(|r| match &r.op {
            Op::Rename {
                from,
                to,
                orphan: Some(id),
                ..
            } if from == b"s" && to == b"t" => Some(*id),
            _ => None,
        })
        .expect("rename with orphan id");
    assert_ne!(orphan, orphan2);
    assert_eq!(
        write_ops(&records).last(),
        Some(&(FileRef::Orphan(orphan2), 0, b"old".to_vec()))
    );
    drop(victim);
    wait_for(&f, "second DropOrphan", |r| {
        r.op == Op::DropOrphan { orphan: orphan2 }
    });
    assert_eq!(fs::read(f.b("t")).expect("backing t"), b"new");
}

#[test]
fn rename_exchange_and_noreplace() {
    if !require_root("rename_exchange_and_noreplace") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.m("sub")).expect("mkdir");
    fs::write(f.m("p"), b"P").expect("p");
    fs::write(f.m("sub/q"), b"Q").expect("q");
    f.journal.take();

    renameat2(&f.m("p"), &f.m("sub/q"), libc::RENAME_EXCHANGE).expect("exchange");
    assert_eq!(fs::read(f.b("p")).expect("p"), b"Q");
    assert_eq!(fs::read(f.b("sub/q")).expect("q"), b"P");
    let err = renameat2(&f.m("p"), &f.m("sub/q"), libc::RENAME_NOREPLACE).expect_err("exists");
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    renameat2(&f.m("p"), &f.m("r"), libc::RENAME_NOREPLACE).expect("noreplace");

    let records = f.journal.take();
    assert_eq!(
        ops(&records),
        vec![
            Op::Rename {
                from: b"p".to_vec(),
                to: b"sub/q".to_vec(),
                flags: libc::RENAME_EXCHANGE,
                orphan: None
            },
            Op::Rename {
                from: b"p".to_vec(),
                to: b"r".to_vec(),
                flags: libc::RENAME_NOREPLACE,
                orphan: None
            },
        ]
    );
    // Exchange: both parents and both entries.
    assert_eq!(records[0].mtimes.len(), 4);
    // The table followed the exchange: writes land on the right paths.
    fs::write(f.m("sub/q"), b"P2").expect("write q");
    fs::write(f.m("r"), b"Q2").expect("write r");
    let writes = write_ops(&f.journal.take());
    assert_eq!(writes[0].0, path_ref("sub/q"));
    assert_eq!(writes[1].0, path_ref("r"));
}

#[test]
fn hard_links_share_the_inode() {
    if !require_root("hard_links_share_the_inode") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("a"), b"x").expect("a");
    fs::hard_link(f.m("a"), f.m("b")).expect("link");
    let records = f.journal.take();
    let link = records
        .iter()
        .find(|r| matches!(r.op, Op::Link { .. }))
        .expect("link op");
    assert_eq!(
        link.op,
        Op::Link {
            existing: b"a".to_vec(),
            path: b"b".to_vec()
        }
    );
    let refs: Vec<&FileRef> = link.mtimes.iter().map(|(r, _)| r).collect();
    assert_eq!(refs, vec![&path_ref("b"), &path_ref("")]);
    assert_eq!(lstat(&f.m("a")).st_ino, lstat(&f.m("b")).st_ino);

    // Removing one name of an open file leaves it addressable by the other: no orphan.
    let mut file = OpenOptions::new()
        .write(true)
        .open(f.m("b"))
        .expect("open b");
    fs::remove_file(f.m("a")).expect("unlink a");
    file.write_all(b"y").expect("write");
    let records = f.journal.take();
    assert!(records.iter().any(|r| r.op
        == Op::Unlink {
            path: b"a".to_vec(),
            orphan: None
        }));
    assert_eq!(write_ops(&records)[0].0, path_ref("b"));
}

#[test]
fn symlink_is_recorded_with_its_target() {
    if !require_root("symlink_is_recorded_with_its_target") {
        return;
    }
    let f = Fixture::new();
    std::os::unix::fs::symlink("target/x", f.m("l")).expect("symlink");
    assert_eq!(
        fs::read_link(f.m("l")).expect("readlink"),
        std::path::Path::new("target/x")
    );
    let records = f.journal.take();
    assert_eq!(
        records[0].op,
        Op::Symlink {
            path: b"l".to_vec(),
            target: b"target/x".to_vec(),
            uid: 0,
            gid: 0
        }
    );
    assert_eq!(records[0].mtimes[0].1, mtime_of(&f.b("l")));
}

#[test]
fn chmod_chown_utimens_record_what_happened() {
    if !require_root("chmod_chown_utimens_record_what_happened") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("a"), b"x").expect("a");
    f.journal.take();
    fs::set_permissions(f.m("a"), fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(f.m("a"), Some(1234), Some(5678)).expect("chown");
    let when = Timespec {
        sec: 1_600_000_000,
        nsec: 123_456_789,
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: when.sec,
            tv_nsec: i64::from(when.nsec),
        },
    ];
    let c = cpath(&f.m("a"));
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());

    let records = f.journal.take();
    let file = path_ref("a");
    assert_eq!(
        ops(&records),
        vec![
            Op::SetAttr {
                file: file.clone(),
                mode: Some(0o600),
                uid: None,
                gid: None,
                atime: None,
                mtime: None
            },
            Op::SetAttr {
                file: file.clone(),
                mode: None,
                uid: Some(1234),
                gid: Some(5678),
                atime: None,
                mtime: None
            },
            Op::SetAttr {
                file: file.clone(),
                mode: None,
                uid: None,
                gid: None,
                atime: None,
                mtime: Some(when)
            },
        ]
    );
    assert_eq!(records[2].mtimes, vec![(file, when)]);
    assert_eq!(mtime_of(&f.b("a")), when);
    let st = lstat(&f.b("a"));
    assert_eq!(
        (st.st_mode & 0o7777, st.st_uid, st.st_gid),
        (0o600, 1234, 5678)
    );
}

#[test]
fn chown_that_clears_setuid_records_the_new_mode() {
    if !require_root("chown_that_clears_setuid_records_the_new_mode") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("s"), b"x").expect("s");
    fs::set_permissions(f.m("s"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    f.journal.take();
    std::os::unix::fs::chown(f.m("s"), Some(1000), None).expect("chown");
    let after = lstat(&f.b("s")).st_mode & 0o7777;
    assert_eq!(after, 0o755, "chown clears set-user-ID");
    let records = f.journal.take();
    // However the kernel phrased it (one setattr or two), the last SetAttr's mode is the
    // resulting one.
    let last_mode = records.iter().rev().find_map(|r| match r.op {
        Op::SetAttr { mode, .. } => mode,
        _ => None,
    });
    assert_eq!(last_mode, Some(0o755));
}

/// The kernel leaves set-ID clearing to us (FUSE_HANDLE_KILLPRIV_V2): a write or truncate
/// by a caller without CAP_FSETID clears set-user-ID (and set-group-ID with group execute),
/// on the backing file and in the journal; root's own writes keep them, as on any local
/// filesystem.
#[test]
fn writes_by_others_clear_set_id_bits() {
    if !require_root("writes_by_others_clear_set_id_bits") {
        return;
    }
    let f = Fixture::new();
    for (name, mode) in [("w", 0o6777), ("t", 0o4777), ("r", 0o4777)] {
        fs::write(f.m(name), b"x").expect("create");
        fs::set_permissions(f.m(name), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    f.journal.take();
    let status = Command::new("sh")
        .arg("-c")
        .arg("printf y >> w && : > t")
        .current_dir(&f.mnt)
        .uid(65534)
        .gid(65534)
        .status()
        .expect("run sh");
    assert!(status.success());
    // Root writes too, and keeps the bits.
    fs::OpenOptions::new()
        .append(true)
        .open(f.m("r"))
        .and_then(|mut w| std::io::Write::write_all(&mut w, b"z"))
        .expect("root write");
    assert_eq!(
        lstat(&f.b("w")).st_mode & 0o7777,
        0o0777,
        "write clears both"
    );
    assert_eq!(
        lstat(&f.b("t")).st_mode & 0o7777,
        0o0777,
        "truncate clears setuid"
    );
    assert_eq!(lstat(&f.b("r")).st_mode & 0o7777, 0o4777, "root keeps it");
    let records = f.journal.take();
    let mode_of = |name: &[u8]| {
        records.iter().rev().find_map(|r| match &r.op {
            Op::SetAttr {
                file: FileRef::Path(p),
                mode,
                ..
            } if p == name => *mode,
            _ => None,
        })
    };
    assert_eq!(mode_of(b"w"), Some(0o0777));
    assert_eq!(mode_of(b"t"), Some(0o0777));
    assert_eq!(mode_of(b"r"), None);
}

#[test]
fn new_files_belong_to_the_caller_with_the_callers_umask() {
    if !require_root("new_files_belong_to_the_caller_with_the_callers_umask") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.m("pub")).expect("mkdir");
    fs::set_permissions(f.m("pub"), fs::Permissions::from_mode(0o777)).expect("chmod");
    fs::create_dir(f.m("grp")).expect("mkdir grp");
    std::os::unix::fs::chown(f.m("grp"), None, Some(4321)).expect("chgrp");
    fs::set_permissions(f.m("grp"), fs::Permissions::from_mode(0o2777)).expect("setgid");
    f.journal.take();
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 027 && echo hi > pub/f && mkdir pub/d && echo hi > grp/f && mkdir grp/d")
        .current_dir(&f.mnt)
        .uid(65534)
        .gid(65534)
        .status()
        .expect("run sh");
    assert!(status.success());
    let records = f.journal.take();
    let made: Vec<(Vec<u8>, u32, u32, u32)> = records
        .iter()
        .filter_map(|r| match &r.op {
            Op::Mknod {
                path,
                mode,
                uid,
                gid,
                ..
            }
            | Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => Some((path.clone(), *mode, *uid, *gid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        made,
        vec![
            (b"pub/f".to_vec(), 0o640, 65534, 65534),
            (b"pub/d".to_vec(), 0o750, 65534, 65534),
            // A set-group-ID directory hands down its group, and its bit to subdirectories.
            (b"grp/f".to_vec(), 0o640, 65534, 4321),
            (b"grp/d".to_vec(), 0o2750, 65534, 4321),
        ]
    );
    for (path, mode, uid, gid) in made {
        let st = lstat(&f.b(std::str::from_utf8(&path).expect("utf8")));
        assert_eq!(
            (st.st_mode & 0o7777, st.st_uid, st.st_gid),
            (mode, uid, gid)
        );
    }
}

/// A root caller: the owner is already right, so only the mode is changed, and only when the
/// caller's umask differs from the daemon's (the create skips what would change nothing).
#[test]
fn root_creates_keep_the_callers_umask() {
    if !require_root("root_creates_keep_the_callers_umask") {
        return;
    }
    let f = Fixture::new();
    f.journal.take();
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && echo hi > wide && mkdir wided && umask 077 && echo hi > tight && mkdir tightd && ln -s wide link")
        .current_dir(&f.mnt)
        .status()
        .expect("run sh");
    assert!(status.success());
    let records = f.journal.take();
    let made: Vec<(Vec<u8>, u32, u32)> = records
        .iter()
        .filter_map(|r| match &r.op {
            Op::Mknod {
                path, mode, uid, ..
            }
            | Op::Mkdir {
                path, mode, uid, ..
            } => Some((path.clone(), *mode, *uid)),
            Op::Symlink { path, uid, .. } => Some((path.clone(), 0, *uid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        made,
        vec![
            (b"wide".to_vec(), 0o666, 0),
            (b"wided".to_vec(), 0o777, 0),
            (b"tight".to_vec(), 0o600, 0),
            (b"tightd".to_vec(), 0o700, 0),
            (b"link".to_vec(), 0, 0),
        ]
    );
    for (name, mode) in [
        ("wide", 0o666),
        ("wided", 0o777),
        ("tight", 0o600),
        ("tightd", 0o700),
    ] {
        assert_eq!(lstat(&f.b(name)).st_mode & 0o7777, mode, "{name}");
    }
    // Each record carries the directory's mtime as it is after the create.
    let root = lstat(&f.b(""));
    let root_mtime = Timespec {
        sec: root.st_mtime,
        nsec: root.st_mtime_nsec as u32,
    };
    let last = records
        .iter()
        .rev()
        .find(|r| matches!(r.op, Op::Symlink { .. }))
        .expect("symlink record");
    assert!(
        last.mtimes
            .iter()
            .any(|(r, t)| *r == FileRef::Path(Vec::new()) && *t == root_mtime),
        "the root's mtime after the last create: {:?}",
        last.mtimes
    );
}

#[test]
fn xattrs_are_recorded() {
    if !require_root("xattrs_are_recorded") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("a"), b"x").expect("a");
    f.journal.take();
    let (p, name) = (cpath(&f.m("a")), c"user.test");
    // SAFETY: valid strings and buffers.
    unsafe {
        assert_eq!(
            libc::setxattr(p.as_ptr(), name.as_ptr(), b"v1".as_ptr().cast(), 2, 0),
            0,
            "setxattr: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(&buf[..usize::try_from(n).expect("getxattr")], b"v1");
        let n = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(
            &buf[..usize::try_from(n).expect("listxattr")],
            b"user.test\0"
        );
        assert_eq!(libc::removexattr(p.as_ptr(), name.as_ptr()), 0);
    }
    assert_eq!(
        ops(&f.journal.take()),
        vec![
            Op::SetXattr {
                file: path_ref("a"),
                name: b"user.test".to_vec(),
                value: b"v1".to_vec(),
                flags: 0
            },
            Op::RemoveXattr {
                file: path_ref("a"),
                name: b"user.test".to_vec()
            },
        ]
    );
}

#[test]
fn truncate_and_fallocate_punch_hole() {
    if !require_root("truncate_and_fallocate_punch_hole") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("a"), vec![b'x'; 3 * 4096]).expect("a");
    f.journal.take();
    let file = OpenOptions::new().write(true).open(f.m("a")).expect("open");
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, 4096, 4096) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    file.set_len(5000).expect("ftruncate");
    drop(file);
    // truncate(2) by path, without a handle.
    let c = cpath(&f.m("a"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 100) }, 0);

    assert_eq!(
        ops(&f.journal.take()),
        vec![
            Op::Fallocate {
                file: path_ref("a"),
                mode,
                offset: 4096,
                len: 4096
            },
            Op::Truncate {
                file: path_ref("a"),
                size: 5000
            },
            Op::Truncate {
                file: path_ref("a"),
                size: 100
            },
        ]
    );
    assert_eq!(fs::read(f.b("a")).expect("backing"), vec![b'x'; 100]);
}

#[test]
fn recorded_mtimes_equal_the_backing_files_to_the_nanosecond() {
    if !require_root("recorded_mtimes_equal_the_backing_files_to_the_nanosecond") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.m("d")).expect("mkdir");
    fs::write(f.m("d/a"), b"one").expect("a");
    fs::write(f.m("d/b"), b"two").expect("b");
    let mut a = OpenOptions::new().append(true).open(f.m("d/a")).expect("a");
    a.write_all(b"more").expect("append");
    drop(a);
    fs::rename(f.m("d/b"), f.m("c")).expect("rename");
    fs::create_dir(f.m("d/e")).expect("mkdir e");
    fs::remove_dir(f.m("d/e")).expect("rmdir e");
    std::os::unix::fs::symlink("a", f.m("d/l")).expect("symlink");
    fs::write(f.m("d/gone"), b"x").expect("gone");
    fs::remove_file(f.m("d/gone")).expect("unlink");

    // The last record naming each path carries that path's current mtime.
    let mut last: std::collections::BTreeMap<Vec<u8>, Timespec> = Default::default();
    for r in f.journal.snapshot() {
        assert!(r.mtimes.len() <= 8);
        for (file, t) in r.mtimes {
            if let FileRef::Path(p) = file {
                last.insert(p, t);
            }
        }
    }
    let mut checked = 0;
    for (p, t) in &last {
        let backing = f.backing.join(std::str::from_utf8(p).expect("utf8"));
        if backing.symlink_metadata().is_ok() {
            assert_eq!(
                mtime_of(&backing),
                *t,
                "mtime of {:?}",
                String::from_utf8_lossy(p)
            );
            checked += 1;
        }
    }
    // root, d, d/a, c, d/l at least.
    assert!(checked >= 5, "{last:?}");
}

#[test]
fn o_dsync_writes_are_barriers() {
    if !require_root("o_dsync_writes_are_barriers") {
        return;
    }
    let f = Fixture::new();
    fs::write(f.m("a"), b"").expect("a");
    // Read-write opens go through the page cache (the kernel follows the write with FSYNC),
    // write-only ones are direct I/O (the daemon makes the write a barrier itself).
    for read in [true, false] {
        f.journal.take();
        let mut file = OpenOptions::new()
            .read(read)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(f.m("a"))
            .expect("open");
        file.write_all(b"abc").expect("write");
        assert_eq!(
            ops(&f.journal.take()),
            write_then_datasync("a", b"abc"),
            "read: {read}"
        );
    }
}

/// The ops of a write of `data` at offset 0 of `name` followed by its fdatasync barrier.
fn write_then_datasync(name: &str, data: &[u8]) -> Vec<Op> {
    vec![
        Op::Write {
            file: path_ref(name),
            offset: 0,
            data: data.to_vec(),
        },
        Op::Fsync {
            file: path_ref(name),
            datasync: true,
        },
    ]
}

#[test]
fn kernel_copies_into_write_only_opens_are_captured() {
    if !require_root("kernel_copies_into_write_only_opens_are_captured") {
        return;
    }
    // std::io::copy uses copy_file_range, sendfile or splice: the kernel's own buffers, not a
    // user buffer, reach the direct-I/O write path.
    let f = Fixture::new();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i % 241) as u8)
        .collect();
    let src = f.b("../source");
    fs::write(&src, &data).expect("source");
    let mut from_file = File::open(&src).expect("open source");
    let mut to = File::create(f.m("from-file")).expect("create");
    assert_eq!(
        std::io::copy(&mut from_file, &mut to).expect("copy"),
        data.len() as u64
    );
    drop(to);
    let mut child = std::process::Command::new("cat")
        .arg(&src)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cat");
    let mut pipe = child.stdout.take().expect("pipe");
    let mut to = File::create(f.m("from-pipe")).expect("create");
    assert_eq!(
        std::io::copy(&mut pipe, &mut to).expect("splice"),
        data.len() as u64
    );
    drop(to);
    assert!(child.wait().expect("cat").success());
    let records = f.journal.snapshot();
    for name in ["from-file", "from-pipe"] {
        assert_eq!(fs::read(f.b(name)).expect("backing"), data, "{name}");
        // The captured writes rebuild the file exactly.
        let mut rebuilt = vec![0u8; data.len()];
        for (_, offset, bytes) in writes_to(&records, name) {
            let at = offset as usize;
            rebuilt[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        assert_eq!(rebuilt, data, "{name}: captured writes");
    }
    assert!(f.stats().direct_opens >= 2);
}

#[test]
fn rwf_dsync_writes_on_write_only_opens_are_barriers() {
    if !require_root("rwf_dsync_writes_on_write_only_opens_are_barriers") {
        return;
    }
    // A write-only open is direct I/O, after which the kernel sends no FUSE_FSYNC: the
    // per-write RWF_DSYNC must still make the write a barrier.
    let f = Fixture::new();
    let file = File::create(f.m("a")).expect("create");
    f.journal.take();
    let data = b"abc";
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: one valid iovec over `data`, which outlives the call.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_DSYNC) };
    assert_eq!(n, 3, "pwritev2: {}", std::io::Error::last_os_error());
    assert_eq!(ops(&f.journal.take()), write_then_datasync("a", data));
    // A plain write on the same descriptor is no barrier.
    (&file).write_all(b"d").expect("write");
    assert!(matches!(&ops(&f.journal.take())[..], [Op::Write { .. }]));
    assert!(f.stats().direct_opens >= 1);
}

#[test]
fn read_only_opens_read_correct_data_through_fuse_or_passthrough() {
    if !require_root("read_only_opens_read_correct_data_through_fuse_or_passthrough") {
        return;
    }
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    // Default policy: a writable-mode file is read through FUSE.
    let f = Fixture::new();
    fs::write(f.b("w"), &data).expect("backing w");
    fs::write(f.b("r"), &data).expect("backing r");
    fs::set_permissions(f.b("r"), fs::Permissions::from_mode(0o444)).expect("chmod");
    assert_eq!(fs::read(f.m("w")).expect("read w"), data);
    let s = f.stats();
    assert!(
        s.passthrough_enabled,
        "kernel 6.9+ should accept passthrough"
    );
    assert!(s.reads > 0 && s.passthrough_opens == 0, "{s:?}");
    // An unwritable file goes through passthrough: no FUSE reads at all.
    assert_eq!(fs::read(f.m("r")).expect("read r"), data);
    let s2 = f.stats();
    assert_eq!(s2.passthrough_opens, 1, "{s2:?}");
    assert_eq!(
        s2.reads, s.reads,
        "passthrough reads must not reach the daemon"
    );
    // Seeks and partial reads through passthrough.
    let mut r = File::open(f.m("r")).expect("open r");
    r.seek(SeekFrom::Start(1_000_000)).expect("seek");
    let mut buf = [0u8; 10];
    r.read_exact(&mut buf).expect("read");
    assert_eq!(&buf[..], &data[1_000_000..1_000_010]);
    drop(r);
    assert!(f.journal.snapshot().is_empty(), "reads are not recorded");
}

#[test]
fn write_only_opens_bypass_the_cache_and_readers_never_see_stale_pages() {
    if !require_root("write_only_opens_bypass_the_cache_and_readers_never_see_stale_pages") {
        return;
    }
    // Default policy: a 0644 file is read through FUSE and its pages are cached.
    let f = Fixture::new();
    const LEN: usize = 256 << 10;
    fs::write(f.m("c"), vec![0u8; LEN]).expect("create");
    let before = f.stats();
    assert!(
        before.direct_opens >= 1,
        "a write-only create is direct: {before:?}"
    );
    let mut reader = File::open(f.m("c")).expect("reader");
    let mut got = vec![0u8; LEN];
    reader.read_exact(&mut got).expect("first read");
    assert!(got.iter().all(|&b| b == 0));
    // Rounds of: a write-only open rewrites the file with one byte value; every read that
    // starts after the write returned sees that value, never a cached older one. A second
    // reader keeps reading meanwhile, so pages are read back in while writes happen.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (path, stop) = (f.m("c"), stop.clone());
        std::thread::spawn(move || {
            let mut r = File::open(path).expect("churn reader");
            let mut buf = vec![0u8; LEN];
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 100_000 {
                r.seek(SeekFrom::Start(0)).expect("seek");
                let _ = r.read(&mut buf).expect("churn read");
                reads += 1;
            }
        })
    };
    for round in 1..=100u8 {
        let mut w = OpenOptions::new()
            .write(true)
            .open(f.m("c"))
            .expect("writer");
        w.write_all(&vec![round; LEN]).expect("write");
        drop(w);
        reader.seek(SeekFrom::Start(0)).expect("seek");
        reader.read_exact(&mut got).expect("read");
        let stale = got.iter().filter(|&&b| b != round).count();
        assert_eq!(
            stale, 0,
            "round {round}: {stale} stale bytes read after the write returned"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().expect("churn reader");
    let after = f.stats();
    assert!(after.direct_opens >= before.direct_opens + 100, "{after:?}");
    // The writes were captured, the last one with the last value.
    let last = writes_to(&f.journal.snapshot(), "c")
        .pop()
        .expect("captured writes");
    assert!(last.2.iter().all(|&b| b == 100), "last captured write");
    assert_eq!(fs::read(f.b("c")).expect("backing"), vec![100u8; LEN]);
}

#[test]
fn writable_open_waits_for_passthrough_readers_then_is_refused() {
    if !require_root("writable_open_waits_for_passthrough_readers_then_is_refused") {
        return;
    }
    let f = Fixture::with(ReadPassthrough::Always, true);
    fs::write(f.b("a"), b"data").expect("a");
    let reader = File::open(f.m("a")).expect("reader");
    assert_eq!(f.stats().passthrough_opens, 1);
    let err = OpenOptions::new()
        .write(true)
        .open(f.m("a"))
        .expect_err("writer while passthrough reader is open");
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY));
    drop(reader);
    // Released readers no longer block writers (even if RELEASE arrives a little late).
    let mut w = OpenOptions::new()
        .write(true)
        .open(f.m("a"))
        .expect("writer after reader closed");
    w.write_all(b"D").expect("write");
    // And a reader that comes while the writer is open uses FUSE reads, not passthrough.
    let mut r = File::open(f.m("a")).expect("reader while writer open");
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    assert_eq!(s, "Data");
    assert_eq!(f.stats().passthrough_opens, 1);
}

#[test]
fn large_writes_arrive_as_whole_mebibyte_ops() {
    if !require_root("large_writes_arrive_as_whole_mebibyte_ops") {
        return;
    }
    let f = Fixture::new();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
    // Read-write: through the page cache, which hands over whole pages.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(f.m("big"))
        .expect("create");
    file.write_all(&data).expect("write 4 MiB");
    drop(file);
    // Write-only (direct I/O): the kernel cuts requests at 256 pages of the writer's buffer,
    // so a buffer that does not start on a page boundary costs one more, shorter request.
    File::create(f.m("direct"))
        .and_then(|mut d| d.write_all(&data))
        .expect("direct write");
    let direct = writes_to(&f.journal.snapshot(), "direct");
    assert!(
        (4..=5).contains(&direct.len()) && direct.iter().all(|w| w.2.len() <= 1 << 20),
        "direct sizes {:?}",
        direct.iter().map(|w| w.2.len()).collect::<Vec<_>>()
    );
    assert_eq!(fs::read(f.b("direct")).expect("backing"), data);
    let writes = writes_to(&f.journal.snapshot(), "big");
    let max = f
        .journal
        .max_write
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(max >= 1 << 20, "largest write {max}");
    assert_eq!(
        writes.len(),
        4,
        "sizes {:?}",
        writes.iter().map(|w| w.2.len()).collect::<Vec<_>>()
    );
    let mut joined = Vec::new();
    for (_, off, d) in &writes {
        assert_eq!(*off as usize, joined.len());
        joined.extend_from_slice(d);
    }
    assert_eq!(joined, data);
}

#[test]
fn shared_writable_mmap_is_captured() {
    if !require_root("shared_writable_mmap_is_captured") {
        return;
    }
    let f = Fixture::new();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(f.m("m"))
        .expect("open");
    file.set_len(8192).expect("size");
    // SAFETY: mapping a file we own for its whole length; unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        std::ptr::copy_nonoverlapping(b"mapped".as_ptr(), p.cast::<u8>().add(4096), 6);
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, 8192), 0);
    }
    drop(file);
    let backing = fs::read(f.b("m")).expect("backing");
    assert_eq!(&backing[4096..4102], b"mapped");
    let writes = write_ops(&f.journal.snapshot());
    assert!(
        writes.iter().any(|(file, off, d)| *file == path_ref("m")
            && *off <= 4096
            && d.len() >= 4096 + 6 - *off as usize
            && &d[4096 - *off as usize..][..6] == b"mapped"),
        "no captured write carries the mapped bytes"
    );
}

#[test]
fn large_directories_list_completely() {
    if !require_root("large_directories_list_completely") {
        return;
    }
    let f = Fixture::new();
    fs::create_dir(f.b("many")).expect("mkdir");
    for i in 0..3000 {
        fs::write(f.b(&format!("many/file-with-a-longish-name-{i:05}")), b"").expect("file");
    }
    let mut names: Vec<String> = fs::read_dir(f.m("many"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 3000);
    assert_eq!(names[0], "file-with-a-longish-name-00000");
    assert_eq!(names[2999], "file-with-a-longish-name-02999");
    let md = fs::metadata(f.m("many/file-with-a-longish-name-00042")).expect("stat");
    assert_eq!(md.len(), 0);
}

#[test]
fn mount_over_the_backing_directory_and_unmount_when_busy() {
    if !require_root("mount_over_the_backing_directory_and_unmount_when_busy") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    fs::create_dir(&data).expect("mkdir");
    fs::write(data.join("old"), b"before").expect("old");
    let journal = TestJournal::new(true);
    let m = mount(&data, &data, journal.clone(), CaptureOptions::default()).expect("mount");
    // The same path now goes through capture and still sees the existing files.
    assert_eq!(fs::read(data.join("old")).expect("read"), b"before");
    fs::write(data.join("new"), b"after").expect("write");
    assert!(journal
        .snapshot()
        .iter()
        .any(|r| matches!(&r.op, Op::Mknod { path, .. } if path == b"new")));

    let busy = File::open(data.join("new")).expect("hold open");
    let m = match m.unmount() {
        Err(CaptureError::Busy(m)) => m,
        other => panic!("expected Busy, got {other:?}"),
    };
    drop(busy);
    m.unmount().expect("unmount after close");
    // Unmounted: the real directory has both files.
    assert_eq!(fs::read(data.join("new")).expect("read real"), b"after");
    fs::create_dir(data.join("inside")).expect("mkdir inside");
    assert!(matches!(
        mount(
            &data,
            &data.join("inside"),
            journal,
            CaptureOptions::default()
        ),
        Err(CaptureError::MountpointInsideBacking { .. })
    ));
}

#[test]
fn dropping_a_busy_mount_detaches_it_lazily() {
    if !require_root("dropping_a_busy_mount_detaches_it_lazily") {
        return;
    }
    let mut f = Fixture::new();
    let mut held = File::create(f.m("held")).expect("create");
    drop(f.mount.take());
    // The mount point is free again, but the open file is still served and captured.
    assert_eq!(
        fs::metadata(f.mnt.join("held"))
            .map(drop)
            .map_err(|e| e.kind()),
        Err(ErrorKind::NotFound)
    );
    held.write_all(b"late").expect("write after detach");
    drop(held);
    assert_eq!(fs::read(f.b("held")).expect("backing"), b"late");
    assert!(write_ops(&f.journal.snapshot())
        .iter()
        .any(|(file, _, d)| *file == path_ref("held") && d == b"late"));
}

/// Prints (does not assert) dd-like throughput through the mount against the backing
/// directory: 512 MiB in 1 MiB writes (+ fsync), then sequential reads of 512 MiB from the
/// page cache (so FUSE overhead is what differs) natively, through FUSE reads, and through
/// kernel passthrough.
#[test]
fn throughput_sanity_printed() {
    if !require_root("throughput_sanity_printed") {
        return;
    }
    const MIB: usize = 1 << 20;
    const TOTAL: usize = 512;
    let f = Fixture::with(ReadPassthrough::UnwritableFiles, false);
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 241) as u8).collect();
    let mbps = |start: Instant| TOTAL as f64 / start.elapsed().as_secs_f64();

    // (MB/s without the final fsync, MB/s including it)
    let write = |path: &std::path::Path| {
        let t = Instant::now();
        let mut file = File::create(path).expect("create");
        for _ in 0..TOTAL {
            file.write_all(&chunk).expect("write");
        }
        let unsynced = mbps(t);
        file.sync_all().expect("fsync");
        (unsynced, mbps(t))
    };
    let read = |path: &std::path::Path| {
        let t = Instant::now();
        let mut file = File::open(path).expect("open");
        let mut buf = vec![0u8; MIB];
        let mut n = 0;
        loop {
            let got = file.read(&mut buf).expect("read");
            if got == 0 {
                break;
            }
            n += got;
        }
        assert_eq!(n, TOTAL * MIB);
        mbps(t)
    };
    let evict = |path: &std::path::Path| {
        let file = File::open(path).expect("open");
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };

    let native_w = write(&f.b("native"));
    let fuse_w = write(&f.m("captured"));
    let records = f.journal.snapshot().len();
    // Reads: backing file warm in the page cache, FUSE's own cache dropped.
    let _ = read(&f.b("native"));
    let native_r = read(&f.b("native"));
    evict(&f.m("native"));
    let fuse_r = read(&f.m("native"));
    fs::set_permissions(f.b("native"), fs::Permissions::from_mode(0o444)).expect("chmod");
    let pt_r = read(&f.m("native"));
    let s = f.stats();
    eprintln!(
        "throughput (512 MiB, 1 MiB I/O): write native {:.0} MB/s ({:.0} with fsync), write \
         via capture {:.0} MB/s ({:.0} with fsync; {records} records, largest write {} B); \
         read native {native_r:.0} MB/s, read via FUSE {fuse_r:.0} MB/s, read via \
         passthrough {pt_r:.0} MB/s (passthrough opens {}, FUSE reads {})",
        native_w.0,
        native_w.1,
        fuse_w.0,
        fuse_w.1,
        f.journal
            .max_write
            .load(std::sync::atomic::Ordering::SeqCst),
        s.passthrough_opens,
        s.reads
    );
}
