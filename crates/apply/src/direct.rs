//! Large writes go to the replica's disk with `O_DIRECT`, staged through aligned buffers and
//! made by a helper thread while the apply thread goes on with the next records.
//!
//! Why direct: a resync or a stream of large writes moves gigabytes that nothing on the
//! passive reads. Through the page cache they cost a copy into freshly allocated cache pages
//! (most of the apply thread's time in the initial-sync benchmark) and writeback that
//! competes with the active's reads of the same disk: on the test VM, a 4 MiB direct reader
//! of 1.7 GB took 2.0-2.2 s next to a writer of 512 KiB buffered writes each followed by
//! `sync_file_range`, and 1.4-1.5 s next to the same writer using `O_DIRECT` (which itself
//! finished in 1.5-1.9 s). A direct write is not durable by itself either: the file is
//! marked dirty as before and the group commit's `fdatasync` or `syncfs` covers it.
//!
//! Why a helper: a direct write returns when the disk has the data, about 4 ms for 4 MiB
//! here, and the apply thread waited for each one while the small files of the same resync
//! queued up behind it. Now it hands the write over and applies what follows, so the small
//! files' CPU work overlaps the large files' disk work.
//!
//! # Order
//!
//! The helper makes the writes one at a time, in the order handed over, so direct writes
//! keep their order among themselves. Everything else the applier does must come after the
//! writes in flight that it could observe or be overwritten by: the applier [settles]
//! (waits for all of them) before any op other than a write or a `SyncMeta`, before a write
//! or `SyncMeta` to an inode with a write in flight unless it is itself a whole direct
//! write, before setting any mtime (a direct write moves the file's mtime when it lands),
//! and before every group commit. At most [`IN_FLIGHT`] writes are outstanding.
//!
//! # Errors
//!
//! Only the aligned prefix of a write at an aligned offset is handed over; the caller writes
//! the rest through the page cache. A refusal (a filesystem without `O_DIRECT`) turns the
//! path off for good, and the helper writes that range through the page cache instead. A
//! write that fails is reported by the next settle, as the error of whatever op settles, and
//! the layer above treats the copy as out of sync, as for any failed op. No group commit
//! reports durability past a failed write: the commit settles first and fails with it.
//!
//! [settles]: DirectWriter::settle

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use rustix::io::Errno;

use crate::InodeId;

/// Offset, length and memory alignment of a direct write (the page size: enough for every
/// logical block size Linux supports).
const ALIGN: usize = 4096;
/// Largest write staged at once (a record's data is at most a few MiB).
const MAX_BYTES: usize = 4 << 20;
/// Direct writes handed to the helper and not yet finished, at most: each holds a
/// [`MAX_BYTES`] buffer. Two keep the disk busy while the apply thread stages the next.
pub(crate) const IN_FLIGHT: usize = 2;

struct Job {
    fd: Arc<OwnedFd>,
    buf: Vec<u8>,
    base: usize,
    len: usize,
    offset: u64,
}

impl Job {
    /// Makes the write; gives the buffer back with the outcome.
    fn run(self) -> Done {
        let staged = &self.buf[self.base..self.base + self.len];
        let (result, refused) = write_staged(self.fd.as_fd(), staged, self.offset);
        Done {
            buf: self.buf,
            result,
            refused,
        }
    }
}

struct Done {
    buf: Vec<u8>,
    result: Result<(), Errno>,
    refused: bool,
}

pub(crate) struct DirectWriter {
    jobs: Option<SyncSender<Job>>,
    done: Option<Receiver<Done>>,
    helper: Option<JoinHandle<()>>,
    /// Staging buffers not in use: allocated on first use and kept (memory used before is
    /// cheaper to fill). At most `IN_FLIGHT + 1` exist.
    spare: Vec<Vec<u8>>,
    /// The inode of each write in flight, oldest first.
    in_flight: VecDeque<InodeId>,
    /// The replica's filesystem refused `O_DIRECT`.
    refused: bool,
    /// The first failure of a finished write, not yet reported.
    failed: Option<Errno>,
}

impl Default for DirectWriter {
    fn default() -> Self {
        // Room for every job in flight: handing one over never blocks.
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(IN_FLIGHT);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(IN_FLIGHT);
        let helper = std::thread::Builder::new()
            .name("apply-direct".into())
            .spawn(move || {
                // Ends when the applier drops its sender (having settled), or its receiver.
                while let Ok(job) = job_rx.recv() {
                    if done_tx.send(job.run()).is_err() {
                        break;
                    }
                }
            })
            .ok();
        // Without a helper (no thread could be started), every write is made inline.
        Self {
            jobs: helper.as_ref().map(|_| job_tx),
            done: helper.as_ref().map(|_| done_rx),
            helper,
            spare: Vec::new(),
            in_flight: VecDeque::with_capacity(IN_FLIGHT),
            refused: false,
            failed: None,
        }
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // The applier settles before it is done with the copy; whatever is left still lands.
        let _ = self.settle();
        self.jobs = None;
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

impl DirectWriter {
    /// How many bytes of a write of `len` bytes at `offset` go the direct way: its longest
    /// aligned prefix (0: all of it goes through the page cache).
    pub(crate) fn prefix(&self, len: usize, offset: u64) -> usize {
        if self.refused || offset % ALIGN as u64 != 0 {
            return 0;
        }
        (len / ALIGN * ALIGN).min(MAX_BYTES)
    }

    /// Whether a write to inode `id` is in flight.
    pub(crate) fn busy_with(&self, id: InodeId) -> bool {
        self.in_flight.contains(&id)
    }

    /// Hands the write of `data` (a [`prefix`](Self::prefix)) at `offset` of the file over
    /// to the helper, after waiting for the oldest write in flight if [`IN_FLIGHT`] are.
    /// An error is that of an earlier write, which failed.
    pub(crate) fn submit(
        &mut self,
        fd: &Arc<OwnedFd>,
        id: InodeId,
        data: &[u8],
        offset: u64,
    ) -> Result<(), Errno> {
        let len = data.len();
        // On in release builds too: the caller hands over prefixes only.
        assert!(
            len > 0 && len % ALIGN == 0 && len <= MAX_BYTES && offset % ALIGN as u64 == 0,
            "a direct write of {len} bytes at {offset} is not an aligned prefix"
        );
        if self.in_flight.len() >= IN_FLIGHT {
            self.reap_one();
        }
        assert!(
            self.in_flight.len() < IN_FLIGHT,
            "{} direct writes in flight before another",
            self.in_flight.len()
        );
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| vec![0u8; MAX_BYTES + ALIGN]);
        let base = buf.as_ptr().align_offset(ALIGN);
        assert!(
            base < ALIGN && base + len <= buf.len(),
            "a direct write of {len} bytes does not fit its buffer"
        );
        buf[base..base + len].copy_from_slice(data);
        let job = Job {
            fd: Arc::clone(fd),
            buf,
            base,
            len,
            offset,
        };
        match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => self.in_flight.push_back(id),
                Err(mpsc::SendError(job)) => {
                    // The helper is gone: made here instead.
                    self.jobs = None;
                    self.finished(job.run());
                }
            },
            None => self.finished(job.run()),
        }
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Waits until every write handed over has finished; the first failure among them (or
    /// an earlier one not yet reported) is returned once.
    pub(crate) fn settle(&mut self) -> Result<(), Errno> {
        // Bounded: each turn finishes one of at most IN_FLIGHT writes.
        for _ in 0..IN_FLIGHT {
            if self.in_flight.is_empty() {
                break;
            }
            self.reap_one();
        }
        assert!(
            self.in_flight.is_empty(),
            "a direct write is still in flight"
        );
        self.failed.take().map_or(Ok(()), Err)
    }

    fn reap_one(&mut self) {
        if self.in_flight.pop_front().is_none() {
            return;
        }
        let done = self.done.as_ref().map(|rx| rx.recv());
        match done {
            Some(Ok(done)) => self.finished(done),
            // The helper died with the write: whether it landed is unknown.
            _ => {
                self.failed.get_or_insert(Errno::IO);
                self.jobs = None;
                self.done = None;
            }
        }
    }

    fn finished(&mut self, done: Done) {
        self.refused |= done.refused;
        if let Err(e) = done.result {
            self.failed.get_or_insert(e);
        }
        if self.spare.len() <= IN_FLIGHT {
            self.spare.push(done.buf);
        }
    }
}

/// Writes all of `staged` at `offset`: with `O_DIRECT` as far as the disk takes it, the rest
/// (after a refusal or a short write) through the page cache. Returns the result and
/// whether the filesystem refused `O_DIRECT`.
fn write_staged(fd: BorrowedFd<'_>, staged: &[u8], offset: u64) -> (Result<(), Errno>, bool) {
    let mut refused = false;
    let mut done = 0;
    match fcntl_getfl(fd) {
        Ok(flags) => {
            if fcntl_setfl(fd, flags | OFlags::DIRECT).is_err() {
                refused = true;
            } else {
                while done < staged.len() {
                    match rustix::io::pwrite(fd, &staged[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(Errno::INTR) => {}
                        Err(Errno::INVAL) => {
                            refused = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // The descriptor is the applier's own (its cache): back to buffered for the
                // next writer of the same file. If even that failed, the next unaligned write
                // would fail with EINVAL and the session end, so the copy is resynced: never
                // wrong data.
                if fcntl_setfl(fd, flags).is_err() {
                    tracing::error!("could not turn O_DIRECT off again on a replica file");
                }
                // A short direct write ends on a block boundary; if not, the bytes past the
                // last whole block are written again through the page cache (the same bytes).
                done = done / ALIGN * ALIGN;
            }
        }
        Err(e) => return (Err(e), false),
    }
    // Bounded: each turn writes at least one byte or ends.
    while done < staged.len() {
        match rustix::io::pwrite(fd, &staged[done..], offset + done as u64) {
            Ok(0) => return (Err(Errno::IO), refused),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return (Err(e), refused),
        }
    }
    (Ok(()), refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn id(ino: u64) -> InodeId {
        InodeId {
            dev_major: 0,
            dev_minor: 0,
            ino,
        }
    }

    fn open_rw(path: &std::path::Path) -> Arc<OwnedFd> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("open");
        Arc::new(OwnedFd::from(file))
    }

    #[test]
    fn writes_the_aligned_prefix_and_leaves_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_rw(&dir.path().join("f"));
        let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().expect("dup"));
        let mut writer = DirectWriter::default();
        // Cached pages of the range exist before the direct write: it must replace them.
        file.write_all_at(&pattern(1 << 20, 9), 0)
            .expect("buffered");
        let mut back = vec![0u8; 1 << 20];
        file.read_exact_at(&mut back, 0).expect("read");
        let data = pattern((512 << 10) + 100, 1);
        let done = writer.prefix(data.len(), 4096);
        assert_eq!(done, 512 << 10, "the aligned prefix only");
        writer
            .submit(&fd, id(1), &data[..done], 4096)
            .expect("submit");
        assert!(writer.busy_with(id(1)) || writer.jobs.is_none());
        writer.settle().expect("the direct write");
        assert!(!writer.busy_with(id(1)));
        if writer.refused {
            eprintln!(
                "note: {} refuses O_DIRECT; written through the page cache",
                dir.path().display()
            );
        }
        file.write_all_at(&data[done..], 4096 + done as u64)
            .expect("tail");
        let mut got = vec![0u8; data.len()];
        file.read_exact_at(&mut got, 4096).expect("read back");
        assert!(got == data, "the direct write's bytes read back");
        // The descriptor is buffered again: an unaligned write works.
        file.write_all_at(b"xyz", 7).expect("unaligned after");
        // Unaligned offsets are left to the caller entirely.
        assert_eq!(writer.prefix(data.len(), 100), 0);
        assert_eq!(writer.prefix(100, 0), 0);
    }

    #[test]
    fn writes_in_flight_land_in_the_order_handed_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_rw(&dir.path().join("f"));
        let mut writer = DirectWriter::default();
        // More writes than may be in flight, all to the same range: the last one wins.
        for seed in 0..(3 * IN_FLIGHT as u8) {
            writer
                .submit(&fd, id(1), &pattern(64 << 10, seed), 0)
                .expect("submit");
            assert!(writer.in_flight.len() <= IN_FLIGHT);
        }
        writer.settle().expect("settle");
        let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().expect("dup"));
        let mut got = vec![0u8; 64 << 10];
        file.read_exact_at(&mut got, 0).expect("read back");
        assert!(
            got == pattern(64 << 10, 3 * IN_FLIGHT as u8 - 1),
            "the last write's bytes"
        );
    }

    #[test]
    fn a_failed_write_is_reported_by_the_next_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"").expect("create");
        // Read-only: every write fails (EBADF), after it was handed over.
        let fd = Arc::new(OwnedFd::from(std::fs::File::open(&path).expect("open")));
        let mut writer = DirectWriter::default();
        let handed = writer.submit(&fd, id(2), &pattern(8192, 1), 0);
        let settled = writer.settle();
        assert!(
            handed.is_err() || settled == Err(Errno::BADF),
            "the failure surfaces: {handed:?} then {settled:?}"
        );
        assert_eq!(writer.settle(), Ok(()), "reported once");
    }
}
