//! Large writes go to the replica's disk with `O_DIRECT`, staged through one aligned buffer.
//!
//! Why: a resync or a stream of large writes moves gigabytes that nothing on the passive
//! reads. Through the page cache they cost a copy into freshly allocated cache pages (most
//! of the apply thread's time in the initial-sync benchmark) and writeback that competes
//! with the active's reads of the same disk: on the test VM, a 4 MiB direct reader of 1.7
//! GB took 2.0-2.2 s next to a writer of 512 KiB buffered writes each followed by
//! `sync_file_range`, and 1.4-1.5 s next to the same writer using `O_DIRECT` (which itself
//! finished in 1.5-1.9 s). A direct write is not durable by itself either: the file is
//! marked dirty as before and the group commit's `fdatasync` or `syncfs` covers it.
//!
//! Only the aligned prefix of a write at an aligned offset goes this way; the caller writes
//! the rest through the page cache. Any refusal (a filesystem without `O_DIRECT`) turns the
//! path off for good; any other failure leaves the remaining bytes to the buffered write,
//! which reports the error.

use std::os::fd::AsFd;

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use rustix::io::Errno;

/// Offset, length and memory alignment of a direct write (the page size: enough for every
/// logical block size Linux supports).
const ALIGN: usize = 4096;
/// Largest write staged at once (a record's data is at most a few MiB).
const MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
pub(crate) struct DirectWriter {
    /// Allocated on first use and kept: memory used before is cheaper to fill.
    buf: Vec<u8>,
    /// The replica's filesystem refused `O_DIRECT`.
    refused: bool,
}

impl DirectWriter {
    /// Writes the longest aligned prefix of `data` at `offset` with `O_DIRECT` and returns
    /// how many bytes it wrote (0: the caller writes everything through the page cache).
    pub(crate) fn write(&mut self, fd: impl AsFd, data: &[u8], offset: u64) -> usize {
        let fd = fd.as_fd();
        if self.refused || offset % ALIGN as u64 != 0 {
            return 0;
        }
        let len = (data.len() / ALIGN * ALIGN).min(MAX_BYTES);
        if len == 0 {
            return 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; MAX_BYTES + ALIGN];
        }
        let base = self.buf.as_ptr().align_offset(ALIGN);
        // On in release builds too: a write past the buffer must never happen.
        assert!(
            base < ALIGN && base + len <= self.buf.len(),
            "a direct write of {len} bytes does not fit its buffer"
        );
        let staged = &mut self.buf[base..base + len];
        staged.copy_from_slice(&data[..len]);
        let Ok(flags) = fcntl_getfl(fd) else {
            return 0;
        };
        if fcntl_setfl(fd, flags | OFlags::DIRECT).is_err() {
            self.refused = true;
            return 0;
        }
        let mut done = 0;
        while done < len {
            match rustix::io::pwrite(fd, &staged[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(Errno::INVAL) => {
                    self.refused = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // The descriptor is the applier's own (its cache): back to buffered for the next
        // writer of the same file. If even that failed, the next unaligned write would fail
        // with EINVAL and the session end, so the copy is resynced: never wrong data.
        if fcntl_setfl(fd, flags).is_err() {
            tracing::error!("could not turn O_DIRECT off again on a replica file");
        }
        // A short direct write ends on a block boundary; if not, the bytes past the last
        // whole block are written again through the page cache (the same bytes).
        done / ALIGN * ALIGN
    }
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

    #[test]
    fn writes_the_aligned_prefix_and_leaves_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let mut writer = DirectWriter::default();
        // Cached pages of the range exist before the direct write: it must replace them.
        file.write_all_at(&pattern(1 << 20, 9), 0)
            .expect("buffered");
        let mut back = vec![0u8; 1 << 20];
        file.read_exact_at(&mut back, 0).expect("read");
        let data = pattern((512 << 10) + 100, 1);
        let done = writer.write(&file, &data, 4096);
        if writer.refused {
            eprintln!("skipping: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        assert_eq!(done, 512 << 10, "the aligned prefix only");
        file.write_all_at(&data[done..], 4096 + done as u64)
            .expect("tail");
        let mut got = vec![0u8; data.len()];
        file.read_exact_at(&mut got, 4096).expect("read back");
        assert!(got == data, "the direct write's bytes read back");
        // The descriptor is buffered again: an unaligned write works.
        file.write_all_at(b"xyz", 7).expect("unaligned after");
        // Unaligned offsets are left to the caller entirely.
        assert_eq!(writer.write(&file, &data, 100), 0);
        assert_eq!(writer.write(&file, &data[..100], 0), 0);
    }
}
