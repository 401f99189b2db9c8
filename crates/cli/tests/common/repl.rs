//! Helpers for replication system tests: a pair with a replicated set, commands run inside
//! a node's mount namespace (where its capture filesystem is mounted), and tree comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use understudy_daemon::report::ReplicationReport;

use super::{Pair, Timing, NAMES};

/// An exec app plus one replicated set called `data` at `{dir}/mnt`.
pub fn resources(mode: &str, queue_max_bytes: u64) -> String {
    format!(
        r#"[[replicate]]
name = "data"
path = "{{dir}}/mnt"
mode = "{mode}"
queue_max_bytes = {queue_max_bytes}
memory_max_bytes = {mem}

[[resource]]
name = "app"
kind = "exec"
start = "true"
stop = "true"
"#,
        mem = (64u64 << 20).min(queue_max_bytes)
    )
}

pub fn start(test: &str, mode: &str, queue_max_bytes: u64) -> Result<(Pair, usize)> {
    let pair = Pair::start_with(
        test,
        Timing::default(),
        Some(&resources(mode, queue_max_bytes)),
    )?;
    let active = pair.wait_settled(Duration::from_secs(20))?;
    pair.wait_repl(active, "in_sync", Duration::from_secs(20))?;
    Ok((pair, active))
}

/// [`start`] with the set's resyncs capped at `rate` bytes per second
/// (`sync_rate_max_bytes_per_s`): a sync of a known size then lasts a known time.
pub fn start_rate_capped(
    test: &str,
    mode: &str,
    queue_max_bytes: u64,
    rate: u64,
) -> Result<(Pair, usize)> {
    let table = format!("mode = \"{mode}\"\n");
    let resources = resources(mode, queue_max_bytes).replacen(
        &table,
        &format!("{table}sync_rate_max_bytes_per_s = {rate}\n"),
        1,
    );
    let pair = Pair::start_with(test, Timing::default(), Some(&resources))?;
    let active = pair.wait_settled(Duration::from_secs(20))?;
    pair.wait_repl(active, "in_sync", Duration::from_secs(20))?;
    Ok((pair, active))
}

impl Pair {
    pub fn mountpoint(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// Node i's copy of the set.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("state-{}", NAMES[i]))
            .join("sets/data/data")
    }

    pub fn repl(&self, i: usize) -> Result<ReplicationReport> {
        self.status_direct(i)?
            .replication
            .into_iter()
            .next()
            .context("no replicated set in the status")
    }

    pub fn wait_repl(&self, i: usize, state: &str, timeout: Duration) -> Result<ReplicationReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.repl(i);
            if let Ok(r) = &r {
                if r.state == state {
                    return Ok(r.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "set never reached {state}: {r:?}; logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the passive has applied everything the active captured.
    pub fn wait_drained(&self, active: usize, timeout: Duration) -> Result<ReplicationReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.repl(active)?;
            if r.queue_ops == 0 && r.applied_seq == r.sent_seq && r.state == "in_sync" {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("queue never drained: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A shell command in node i's mount and network namespaces (where `path` is mounted
    /// when it is active).
    pub fn sh_in(&self, i: usize, script: &str) -> Result<String> {
        let pid = self.proc(i).pid().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "sh", "-c", script])
            .output()
            .context("nsenter")?;
        if !out.status.success() {
            bail!(
                "`{script}` failed in node {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A listing of a tree with everything the replica must match: type, mode, owner, size,
/// mtime (ns), link count, symlink target, content hash and xattrs.
pub fn tree_digest(root: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root)?.display().to_string();
            let ft = m.file_type();
            let extra = if ft.is_symlink() {
                format!("-> {}", std::fs::read_link(&p)?.display())
            } else if ft.is_file() {
                let data = std::fs::read(&p)?;
                format!("{:016x}", fxhash(&data))
            } else {
                String::new()
            };
            let mut xattrs = Vec::new();
            if !ft.is_symlink() {
                if let Ok(names) = xattr_names(&p) {
                    xattrs = names;
                }
            }
            out.push(format!(
                "{rel} mode={:o} uid={} gid={} size={} mtime={}.{:09} nlink={} {extra} {xattrs:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                if ft.is_dir() { 0 } else { m.size() },
                m.mtime(),
                m.mtime_nsec(),
                m.nlink(),
            ));
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Fails with the first differences if two trees' digests differ.
pub fn assert_same_tree(a: &Path, b: &Path) -> Result<()> {
    let (da, db) = (tree_digest(a)?, tree_digest(b)?);
    if da == db {
        return Ok(());
    }
    let only_a: Vec<&String> = da.iter().filter(|l| !db.contains(l)).take(10).collect();
    let only_b: Vec<&String> = db.iter().filter(|l| !da.contains(l)).take(10).collect();
    bail!(
        "{} and {} differ:\n  only in the first: {only_a:#?}\n  only in the second: {only_b:#?}",
        a.display(),
        b.display()
    )
}

fn fxhash(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell contents apart in a test.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn xattr_names(p: &Path) -> Result<Vec<String>> {
    // Direct syscalls: a `getfattr` process per file made the comparison of two trees of
    // 10,000 files take tens of seconds.
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: c is NUL-terminated and names is a writable buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name)?;
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated and value is writable for its length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        value.truncate(len as usize);
        out.push(format!(
            "{}={:016x}",
            String::from_utf8_lossy(name),
            fxhash(&value)
        ));
    }
    out.sort();
    Ok(out)
}

/// A background process in a node's namespaces, killed on drop.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Pair {
    /// Starts `python3 -c script args...` in node i's mount and network namespaces.
    pub fn python_in(&self, i: usize, script: &str, args: &[&str]) -> Result<Background> {
        let pid = self.proc(i).pid().to_string();
        let log = std::fs::File::create(self.dir.join(format!("python-{i}.log")))?;
        let child = Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "python3", "-c", script])
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning python3")?;
        Ok(Background(child))
    }
}

impl Pair {
    /// Starts [`FSYNC_APPENDER`] on node `i`, writing `records` in the mount and logging
    /// acknowledgements to `acks` in the test's directory. Returns the writer and the records
    /// file's path (the same on every node).
    pub fn fsync_appender(&self, i: usize) -> Result<(Background, PathBuf, PathBuf)> {
        let data = self.mountpoint().join("records");
        let acks = self.dir().join("acks");
        let writer = self.python_in(
            i,
            FSYNC_APPENDER,
            &[&data.display().to_string(), &acks.display().to_string()],
        )?;
        Ok((writer, data, acks))
    }

    /// The records the appender's file holds on node `i`, checked to be intact and in order.
    pub fn appended_records(&self, i: usize, data: &Path) -> Result<u64> {
        let text = self.sh_in(i, &format!("cat {}", data.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line != format!("record {:08}", n + 1) {
                bail!("record {n} is {line:?}");
            }
        }
        Ok(text.lines().count() as u64)
    }
}

/// Appends numbered records to a file, fsyncing each, and logs each number only after its
/// fsync returned. Bounded in count. argv: data file, ack log.
pub const FSYNC_APPENDER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
ack = open(sys.argv[2], "w", buffering=1)
for i in range(1, 200001):
    os.write(fd, b"record %08d\n" % i)
    os.fsync(fd)
    ack.write("%d\n" % i)
"#;

/// Commits one SQLite transaction per row and logs each id after COMMIT returned.
/// argv: database, ack log.
///
/// `synchronous=EXTRA`: in SQLite's default rollback-journal mode the commit point is the
/// journal's unlink, which FULL does not make durable (SQLite's own documentation: EXTRA
/// "provides additional durability if the commit is followed closely by a power loss").
/// A failover is that power loss for the active's unsent ops; what is fsynced survives.
///
/// The writer outlives the active's daemon here (only the daemon is killed), and SQLite
/// skips EXTRA's directory sync without an error when it cannot open the directory, which is
/// what happens once the daemon is gone: a COMMIT that unlinked its journal just before the
/// kill then returns success with the unlink never replicated, and the new active rolls the
/// transaction back (seen once in about 70 cycles). So the writer logs an id only after its
/// own fsync of the directory succeeded: the acknowledgement the pair guarantees.
pub const SQLITE_WRITER: &str = r#"
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA synchronous=EXTRA")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
ack = open(sys.argv[2], "w", buffering=1)
for i in range(1, 200001):
    db.execute("BEGIN")
    db.execute("INSERT INTO t (id, body) VALUES (?, ?)", (i, "x" * (i % 500)))
    db.execute("COMMIT")
    d = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
    os.fsync(d)
    os.close(d)
    ack.write("%d\n" % i)
"#;

/// The highest number in an ack log (0 if none).
pub fn last_acked(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}
