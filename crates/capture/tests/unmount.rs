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

#[test]
fn unmounting_leaves_the_filesystem_underneath_mounted() {
    if !require_root("unmounting_leaves_the_filesystem_underneath_mounted") {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let (backing, mnt) = (base.path().join("backing"), base.path().join("mnt"));
    std::fs::create_dir(&backing).expect("mkdir");
    std::fs::create_dir(&mnt).expect("mkdir");
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
