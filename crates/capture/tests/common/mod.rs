//! Shared fixtures for the capture filesystem's tests: a journal that keeps what it is given,
//! a mounted filesystem over temporary directories that is unmounted even when a test
//! fails, and the root/FUSE check.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use understudy_capture::{
    mount_with_read_passthrough, CaptureMount, CaptureOptions, ReadPassthrough,
};
use understudy_oplog::{FileRef, Journal, Op, Record, Timespec};

/// True when the test can run. Without root or /dev/fuse it prints why and returns false,
/// except under CI=true, where skipping would hide a broken setup, so it panics.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why = if root {
        "/dev/fuse is missing"
    } else {
        "not root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root and /dev/fuse ({why}), and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root and /dev/fuse ({why})");
    false
}

/// Collects records; `wait_durable` returns at once. With `keep_data` false, write payloads
/// are dropped after their size is noted (for throughput runs).
pub struct TestJournal {
    pub records: Mutex<Vec<Record>>,
    seq: AtomicU64,
    keep_data: bool,
    pub max_write: AtomicUsize,
    pub durable_waits: AtomicU64,
}

impl TestJournal {
    pub fn new(keep_data: bool) -> Arc<TestJournal> {
        Arc::new(TestJournal {
            records: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            keep_data,
            max_write: AtomicUsize::new(0),
            durable_waits: AtomicU64::new(0),
        })
    }

    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.records.lock().expect("journal lock"))
    }

    pub fn snapshot(&self) -> Vec<Record> {
        self.records.lock().expect("journal lock").clone()
    }
}

impl Journal for TestJournal {
    fn record(&self, mut op: Op, mtimes: Vec<(FileRef, Timespec)>) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if let Op::Write { data, .. } = &mut op {
            self.max_write.fetch_max(data.len(), Ordering::SeqCst);
            if !self.keep_data {
                *data = Vec::new();
            }
        }
        self.records
            .lock()
            .expect("journal lock")
            .push(Record { seq, op, mtimes });
        seq
    }

    fn wait_durable(&self, _seq: u64) -> bool {
        self.durable_waits.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// A capture mount over a temporary backing directory. Dropping it unmounts first (lazily if
/// something is still open), then removes the directories.
pub struct Fixture {
    pub mount: Option<CaptureMount>,
    pub journal: Arc<TestJournal>,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with(ReadPassthrough::default(), true)
    }

    pub fn with(read_passthrough: ReadPassthrough, keep_data: bool) -> Fixture {
        let base = tempfile::Builder::new()
            .prefix("capture-test")
            .tempdir()
            .expect("tempdir");
        let backing = base.path().join("backing");
        let mnt = base.path().join("mnt");
        std::fs::create_dir(&backing).expect("mkdir backing");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let journal = TestJournal::new(keep_data);
        let mount = mount_with_read_passthrough(
            &backing,
            &mnt,
            journal.clone(),
            CaptureOptions::default(),
            read_passthrough,
        )
        .expect("mount");
        Fixture {
            mount: Some(mount),
            journal,
            backing,
            mnt,
            _dirs: vec![base],
        }
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    pub fn stats(&self) -> understudy_capture::CaptureStats {
        self.mount.as_ref().expect("mounted").stats()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if let Err(e) = m.unmount() {
                eprintln!("unmount: {e}");
                // Dropping the Busy error's mount detaches it lazily.
            }
        }
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

pub fn path_ref(s: &str) -> FileRef {
    FileRef::Path(s.as_bytes().to_vec())
}

pub fn lstat(p: &Path) -> libc::stat {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let r = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    assert_eq!(
        r,
        0,
        "lstat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    st
}

pub fn mtime_of(p: &Path) -> Timespec {
    let st = lstat(p);
    Timespec {
        sec: st.st_mtime,
        nsec: st.st_mtime_nsec as u32,
    }
}

/// Ops only, for assertions that ignore sequence numbers and mtimes.
pub fn ops(records: &[Record]) -> Vec<Op> {
    records.iter().map(|r| r.op.clone()).collect()
}

pub fn data_ops(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| matches!(r.op, Op::Write { .. }))
        .collect()
}
