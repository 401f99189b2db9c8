//! Unmounting the capture filesystem removes that mount and nothing else: a filesystem
//! mounted at the same path underneath (a dedicated volume for the data, the passive's
//! read-only view) must stay. fuser 0.18.0 unmounts its mount point again by path when its
//! session ends (its "already unmounted?" check has POLLERR inverted; fixed upstream in
//! cberner/fuser#703, not released), which took whatever was mounted there next.
//!
//! Needs root and /dev/fuse; skips otherwise, except under CI=true where it fails.

mod common;

use std::process::Command;

use common::*;
use understudy_capture::{mount, CaptureOptions};

fn mounted_at(path: &std::path::Path) -> Vec<String> {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(|l| l.split(" - ").nth(1).unwrap_or_default().to_string())
        .collect()
}

/// A scratch directory (kept alive by the returned guard) with an empty `backing` and `mnt`.
fn backing_and_mount_point() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let base = tempfile::tempdir().expect("tempdir");
    let (backing, mnt) = (base.path().join("backing"), base.path().join("mnt"));
    std::fs::create_dir(&backing).expect("mkdir");
    std::fs::create_dir(&mnt).expect("mkdir");
    (base, backing, mnt)
}

#[test]
fn unmounting_leaves_the_filesystem_underneath_mounted() {
    if !require_root("unmounting_leaves_the_filesystem_underneath_mounted") {
        return;
    }
    let (_base, backing, mnt) = backing_and_mount_point();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "understudy-test-under"])
        .arg(&mnt)
        .status()
        .expect("mount tmpfs");
    assert!(st.success(), "mount tmpfs");
    // Unmounted at the end even if an assertion fails.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(mnt.clone());
    for round in 0..2 {
        let m = mount(
            &backing,
            &mnt,
            TestJournal::new(false),
            CaptureOptions::default(),
        )
        .expect("capture mount over the tmpfs");
        std::fs::write(mnt.join(format!("through-{round}")), b"x").expect("write");
        m.unmount().map_err(|e| e.to_string()).expect("unmount");
        let left = mounted_at(&mnt);
        assert_eq!(
            left.len(),
            1,
            "round {round}: exactly the tmpfs is left at the mount point: {left:?}"
        );
        assert!(left[0].starts_with("tmpfs "), "{left:?}");
    }
}

/// A busy mount dropped (detached lazily: a file stays open in it), the path mounted again
/// (the node promoted once more), then the old file closed: the old session ends, and the
/// new mount must still be there, capturing. Before, the old session's end unmounted the
/// path again and took the new mount, and writes through the path went around capture.
#[test]
fn the_end_of_a_detached_session_leaves_the_next_mount_alone() {
    if !require_root("the_end_of_a_detached_session_leaves_the_next_mount_alone") {
        return;
    }
    let (_base, backing, mnt) = backing_and_mount_point();
    let old = mount(
        &backing,
        &mnt,
        TestJournal::new(false),
        CaptureOptions::default(),
    )
    .expect("first mount");
    let held = std::fs::File::create(mnt.join("held")).expect("hold a file open");
    drop(old); // busy: detached lazily, its session goes on serving `held`
    let journal = TestJournal::new(false);
    let new =
        mount(&backing, &mnt, journal.clone(), CaptureOptions::default()).expect("mount again");
    // The old session's last file: it ends now. Its end must not touch the new mount; wait a
    // little for it to have happened.
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = mounted_at(&mnt);
    assert_eq!(
        left.iter().filter(|m| m.starts_with("fuse ")).count(),
        1,
        "the new capture mount is still at the path: {left:?}"
    );
    std::fs::write(mnt.join("after"), b"x").expect("write through the new mount");
    assert!(
        journal.snapshot().iter().any(|r| matches!(
            &r.op,
            understudy_oplog::Op::Mknod { path, .. } if path == b"after"
        )),
        "a write after the old session ended is captured"
    );
    new.unmount().map_err(|e| e.to_string()).expect("unmount");
}
