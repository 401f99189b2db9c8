//! Block hashes for resync and verify: blake3 of each fixed-size block of a file, computed
//! the same way on both nodes so the lists can be compared block by block.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use rustix::io::Errno;

use crate::readahead::{aligned_part, direct_buffer};

/// Block size used for comparisons. At 32 KiB a file's hash list is 1/1024 of its size, and
/// a 4 KiB change costs 32 KiB of transfer (rsync's block for a 1 GiB file is about this).
pub const BLOCK_SIZE: u32 = 32 << 10;

/// Bytes read per call while hashing.
const READ_CHUNK: usize = 1 << 20;

/// Alignment of direct reads' offsets, lengths and buffers: the largest logical block size
/// in common use.
const ALIGN: usize = 4096;

/// The blake3 hash of each `block_size` block of the open file, up to its end (the last
/// block may be short), and the number of bytes read.
///
/// A file mostly in the page cache is read from it; any other is read with `O_DIRECT` (the
/// flag is set on `fd` for the reading and taken off again). A verify reads every byte of both
/// copies once: through the page cache that cost this VM 0.73 s of CPU per GiB in the
/// kernel (`dd`, against 0.08 s direct), and perf put 57 % of a verify's CPU in that copy,
/// against 6 % hashing; it also evicted the applications' cached data for data read once.
pub fn hash_blocks(fd: impl AsFd, block_size: u32) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    let fd = fd.as_fd();
    let block = block_size as usize;
    let chunk = (READ_CHUNK / block).max(1) * block;
    if chunk > READ_CHUNK {
        // Blocks larger than the usual read (up to 16 MiB may be asked for): not kept.
        return hash_reads(fd, block, &mut direct_buffer(chunk, ALIGN), chunk);
    }
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        if buf.len() < chunk + ALIGN {
            buf.resize(chunk + ALIGN, 0);
        }
        hash_reads(fd, block, &mut buf, chunk)
    })
}

thread_local! {
    /// One read buffer per hashing thread, reused from file to file: a fresh 1 MiB buffer
    /// for each of 10,000 small files was 4 % of a verify's CPU, spent clearing it.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How the next bytes are read.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// With `O_DIRECT`: the file is not (mostly) in the page cache.
    Direct,
    /// Through the page cache: the file is there, or the filesystem refuses `O_DIRECT`.
    Buffered,
}

/// Whether at least half of the file's pages are in the page cache (or dirty there). Asked
/// of the kernel with `cachestat` (Linux 6.5), which, unlike a `RWF_NOWAIT` read (that
/// starts a readahead of 2 MiB when it misses), reads nothing. `None` if the kernel cannot
/// tell.
fn mostly_cached(fd: BorrowedFd<'_>, size: u64) -> Option<bool> {
    /// `struct cachestat_range`.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// `struct cachestat`.
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// `__NR_cachestat`, the same on every architecture (not in the `libc` crate for all).
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live values of the kernel's layouts for the call's
    // duration; the kernel writes only `stat`; a bad descriptor is an error return.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        return None;
    }
    let pages = size.div_ceil(4096);
    Some(stat.nr_cache.saturating_mul(2) >= pages)
}

/// Takes `O_DIRECT` off the descriptor again when dropped, if it was put on.
struct Flags<'fd> {
    fd: BorrowedFd<'fd>,
    original: Option<OFlags>,
}

impl Flags<'_> {
    /// Puts `O_DIRECT` on; false if the filesystem refuses it.
    fn direct(&mut self) -> bool {
        let Ok(flags) = fcntl_getfl(self.fd) else {
            return false;
        };
        if fcntl_setfl(self.fd, flags | OFlags::DIRECT).is_err() {
            return false;
        }
        self.original.get_or_insert(flags);
        true
    }

    fn restore(&mut self) {
        if let Some(flags) = self.original.take() {
            if fcntl_setfl(self.fd, flags).is_err() {
                // The descriptor stays direct: a later unaligned read of it fails with
                // EINVAL, an error, never wrong data.
                tracing::error!("could not take O_DIRECT off a descriptor after hashing");
            }
        }
    }
}

impl Drop for Flags<'_> {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The reading and hashing of [`hash_blocks`], `chunk` bytes per read into the aligned part
/// of `buf` (which has `ALIGN` bytes of room for that).
fn hash_reads(
    fd: BorrowedFd<'_>,
    block: usize,
    buf: &mut [u8],
    chunk: usize,
) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    let (_, buf) = aligned_part(buf, ALIGN, chunk).ok_or(Errno::INVAL)?;
    let mut flags = Flags { fd, original: None };
    // Direct reads need aligned lengths and offsets: only for chunks that keep them so.
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    let mut mode = if chunk % ALIGN == 0
        && size > 0
        && !mostly_cached(fd, size).unwrap_or(false)
        && flags.direct()
    {
        Mode::Direct
    } else {
        Mode::Buffered
    };
    if mode == Mode::Direct && size >= LARGE_FILE_BYTES {
        // Beyond the first few at once, a large file is read one chunk at a time (below).
        let Some(_slot) = ParallelSlot::take() else {
            return hash_sequential(fd, block, buf, chunk, size, mode, &mut flags);
        };
        match hash_parallel(fd, block, size) {
            // Refused part way (a filesystem taking O_DIRECT only for some files): again,
            // through the page cache.
            Err(Errno::INVAL) => {
                flags.restore();
                mode = Mode::Buffered;
            }
            done => return done,
        }
    }
    hash_sequential(fd, block, buf, chunk, size, mode, &mut flags)
}

/// The reading and hashing of [`hash_reads`], one chunk at a time in `mode`.
fn hash_sequential(
    fd: BorrowedFd<'_>,
    block: usize,
    buf: &mut [u8],
    chunk: usize,
    size: u64,
    mut mode: Mode,
    flags: &mut Flags<'_>,
) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    let mut hashes = Vec::new();
    let mut offset = 0u64;
    // Bounded: each turn reads a whole chunk or ends (at the end of the file or an error).
    loop {
        let mut filled = 0;
        // Bounded: each turn reads at least one byte, ends, or moves `mode` on (once, from
        // direct to buffered).
        while filled < chunk {
            let at = offset + filled as u64;
            let want = match mode {
                Mode::Direct => direct_len(size, at, chunk - filled),
                Mode::Buffered => chunk - filled,
            };
            match rustix::io::pread(fd, &mut buf[filled..filled + want], at) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    if mode == Mode::Direct && filled % ALIGN != 0 {
                        // A direct read ends off the alignment only at the end of the file
                        // (which saves asking again for the zero bytes that say so).
                        break;
                    }
                }
                Err(Errno::INTR) => {}
                // No `O_DIRECT` for this file after all.
                Err(Errno::INVAL) if mode == Mode::Direct => {
                    flags.restore();
                    mode = Mode::Buffered;
                }
                Err(e) => return Err(e),
            }
        }
        for piece in buf[..filled].chunks(block) {
            hashes.push(*blake3::hash(piece).as_bytes());
        }
        offset += filled as u64;
        if filled < chunk {
            return Ok((offset, hashes));
        }
    }
}

/// Files at least this large are read with several direct reads in flight (and a verify
/// hashes them on a thread of their own, beside the smaller ones).
pub const LARGE_FILE_BYTES: u64 = 16 << 20;
/// Threads hashing small files at once on each side during a verify: each has one direct
/// read in flight, and the disk answers a lone small read in 0.1 ms, so more reads at once
/// mean more files per second. The small files of the verify benchmark (10,000 per side,
/// 317 MiB) went at 740 MB/s with two, 840 MB/s with four; hashing them took 0.97-1.06 s
/// with four and 0.90-0.98 s with eight (CPU 70-85 %: the per-file work is the limit).
pub const SMALL_FILE_HASHERS: usize = 8;
/// Reads in flight for one large file, each of [`PARALLEL_CHUNK`] bytes. `dd` on this VM,
/// cold 2 GiB: 1.1-1.3 GB/s with one 1 MiB direct read at a time, 1.5 GB/s with four of
/// 4 MiB, 1.7-2.1 GB/s with eight to 32; one buffered reader 0.57-3.1 GB/s (CPU-bound in the
/// kernel, so it varies with the host's load). The verify benchmark's large files alone
/// (1.7 GiB a side, both sides at once), 2 runs of 2 rounds each: 1.69-2.10 s with eight
/// readers, 1.84-2.54 s with four, 2.15-2.66 s with two.
const READERS: usize = 8;
const PARALLEL_CHUNK: usize = 4 << 20;

/// Large files hashed with parallel reads at once in this process, at most: each holds
/// [`READERS`] chunks, so a flood of hash requests cannot make the passive hold more than
/// this many times 32 MiB (a verify asks for two large files at a time).
const PARALLEL_HASHINGS_MAX: usize = 2;
static PARALLEL_HASHINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`PARALLEL_HASHINGS_MAX`] places, given back when dropped.
struct ParallelSlot;

impl ParallelSlot {
    fn take() -> Option<Self> {
        use std::sync::atomic::Ordering::AcqRel;
        PARALLEL_HASHINGS
            .fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                (n < PARALLEL_HASHINGS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| ParallelSlot)
    }
}

impl Drop for ParallelSlot {
    fn drop(&mut self) {
        PARALLEL_HASHINGS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The block hashes of the first `size` bytes of a large file opened with `O_DIRECT`:
/// [`READERS`] threads read every `READERS`th chunk, one buffer each (a read takes some
/// 16 ms, hashing the chunk 1 ms), and this thread hashes the chunks in order. Memory:
/// `READERS` chunks.
fn hash_parallel(
    fd: BorrowedFd<'_>,
    block: usize,
    size: u64,
) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    use std::sync::mpsc::sync_channel;
    let chunk = (PARALLEL_CHUNK / block).max(1) * block;
    if chunk % ALIGN != 0 {
        return Err(Errno::INVAL);
    }
    let chunks = size.div_ceil(chunk as u64);
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(READERS);
        for reader in 0..READERS {
            type Full = (Vec<u8>, usize, Result<usize, Errno>);
            let (full_tx, full_rx) = sync_channel::<Full>(1);
            let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(1);
            // Cannot fail: room for one, and the receiver is here.
            let _ = empty_tx.send(direct_buffer(chunk, ALIGN));
            scope.spawn(move || {
                let mut k = reader as u64;
                while k < chunks {
                    // Ends when the hashing stops (its ends of the channels are dropped).
                    let Ok(mut buf) = empty_rx.recv() else { return };
                    let at = k * chunk as u64;
                    let (base, got) =
                        match aligned_part(&mut buf, ALIGN, direct_len(size, at, chunk)) {
                            Some((base, part)) => (base, pread_direct(fd, part, at)),
                            None => (0, Err(Errno::INVAL)),
                        };
                    if full_tx.send((buf, base, got)).is_err() {
                        return;
                    }
                    k += READERS as u64;
                }
            });
            lanes.push((full_rx, empty_tx));
        }
        let mut hashes = Vec::with_capacity(size.div_ceil(block as u64) as usize);
        let mut total = 0u64;
        for k in 0..chunks {
            let (full_rx, empty_tx) = &lanes[(k % READERS as u64) as usize];
            // A reader ends early only after sending an error, which is returned first.
            let (buf, base, got) = full_rx.recv().map_err(|_| Errno::IO)?;
            let n = got?;
            for piece in buf[base..base + n].chunks(block) {
                hashes.push(*blake3::hash(piece).as_bytes());
            }
            total += n as u64;
            let _ = empty_tx.send(buf);
            if n < chunk {
                // The file ended early (it shrank meanwhile).
                break;
            }
        }
        Ok((total, hashes))
    })
}

/// How much of `room` bytes to ask of a direct read at `at` in a file of `size` bytes: up to
/// one byte past the end, rounded up to the alignment, so a short read says the file ended.
/// A direct read past the end zero-fills the rest of the buffer before it returns the short
/// count: asking 1 MiB for each small file cost a verify 9 % of its CPU in `iov_iter_zero`.
fn direct_len(size: u64, at: u64, room: usize) -> usize {
    let left = size.saturating_sub(at) + 1;
    left.div_ceil(ALIGN as u64)
        .saturating_mul(ALIGN as u64)
        .min(room as u64) as usize
}

/// Fills `buf` from `offset` with direct reads, up to the end of the file.
fn pread_direct(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut filled = 0;
    // Bounded: each turn reads at least one byte or ends.
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                // A direct read ends off the alignment only at the end of the file.
                if filled % ALIGN != 0 {
                    break;
                }
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The hash of a block of `len` zero bytes (a hole reads as zeros).
pub fn zero_hash(len: usize) -> [u8; 32] {
    *blake3::hash(&vec![0u8; len]).as_bytes()
}

/// Ranges `[start, end)` of block indexes where two hash lists differ, for a file of
/// `size` bytes on the active. Blocks past the passive's list differ; blocks past the
/// active's size do not matter (the final size is set separately).
pub fn differing_blocks(active: &[[u8; 32]], passive: &[[u8; 32]]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, h) in active.iter().enumerate() {
        if passive.get(i) != Some(h) {
            match out.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => out.push((i, i + 1)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn blocks_hash_the_same_on_both_sides_and_diffs_coalesce() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let mut data = vec![7u8; 3 * BLOCK_SIZE as usize + 100];
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&data))
            .expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let (size, a) = hash_blocks(&f, BLOCK_SIZE).expect("hash");
        assert_eq!(size, data.len() as u64);
        assert_eq!(a.len(), 4);
        assert_eq!(
            a[3],
            *blake3::hash(&data[3 * BLOCK_SIZE as usize..]).as_bytes()
        );
        data[BLOCK_SIZE as usize + 5] = 0;
        data[2 * BLOCK_SIZE as usize] = 0;
        std::fs::write(&path, &data).expect("rewrite");
        let (_, b) =
            hash_blocks(std::fs::File::open(&path).expect("open"), BLOCK_SIZE).expect("hash");
        assert_eq!(differing_blocks(&b, &a), vec![(1, 3)]);
        assert_eq!(differing_blocks(&b, &a[..2]), vec![(1, 4)]);
        assert_eq!(differing_blocks(&a, &a), vec![]);
        assert_eq!(zero_hash(4), *blake3::hash(&[0; 4]).as_bytes());
    }

    #[test]
    fn direct_reads_ask_one_aligned_block_past_the_end_at_most() {
        assert_eq!(direct_len(5000, 0, 1 << 20), 8192);
        assert_eq!(direct_len(8192, 0, 1 << 20), 12_288);
        assert_eq!(direct_len(8192, 8192, 1 << 20), 4096);
        assert_eq!(direct_len(100 << 20, 0, 1 << 20), 1 << 20);
        // A file that grew past the size read at the start: still one block at a time.
        assert_eq!(direct_len(4096, 1 << 20, 1 << 20), 4096);
    }

    /// A file out of the page cache is read direct (where the filesystem allows it), a large
    /// one with several reads in flight, and hashes exactly as when cached, its odd-sized
    /// tail included; the descriptor is left as it was given.
    #[test]
    fn cold_files_hash_the_same_and_the_descriptor_is_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tmp");
        for len in [
            (3 << 20) + 12_345u32,
            (LARGE_FILE_BYTES as u32) + (5 << 20) + 777,
        ] {
            let path = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &data).expect("write");
            let f = std::fs::File::open(&path).expect("open");
            f.sync_all().expect("fsync");
            let expected: Vec<[u8; 32]> = data
                .chunks(BLOCK_SIZE as usize)
                .map(|b| *blake3::hash(b).as_bytes())
                .collect();
            let (size, cached) = hash_blocks(&f, BLOCK_SIZE).expect("hash cached");
            assert_eq!((size, &cached), (data.len() as u64, &expected));
            // Written back, so the kernel can drop the pages: the next hashing reads the disk.
            // It skips pages that are busy at that moment (seen once in a full test run), so
            // it is asked again, a bounded number of times.
            // (tmpfs keeps its pages: they are the file.)
            const TMPFS_MAGIC: i64 = 0x0102_1994;
            let tmpfs = rustix::fs::fstatfs(&f).expect("statfs").f_type as i64 == TMPFS_MAGIC;
            let mut cached = None;
            for _ in 0..20 {
                rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).expect("drop pages");
                cached = mostly_cached(f.as_fd(), data.len() as u64);
                if tmpfs || cached == Some(false) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !tmpfs {
                assert_eq!(cached, Some(false));
            }
            let before = fcntl_getfl(&f).expect("flags");
            let (size, cold) = hash_blocks(&f, BLOCK_SIZE).expect("hash cold");
            assert_eq!((size, &cold), (data.len() as u64, &expected));
            assert_eq!(fcntl_getfl(&f).expect("flags"), before);
            // With every place for parallel reads taken, one chunk at a time, same hashes.
            let held: Vec<ParallelSlot> = std::iter::from_fn(ParallelSlot::take).collect();
            assert!(held.len() <= PARALLEL_HASHINGS_MAX);
            assert!(ParallelSlot::take().is_none());
            let (size, one_by_one) = hash_blocks(&f, BLOCK_SIZE).expect("hash sequentially");
            assert_eq!((size, &one_by_one), (data.len() as u64, &expected));
            drop(held);
        }
        // An empty file has no blocks.
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").expect("write");
        let e = std::fs::File::open(&empty).expect("open");
        assert_eq!(hash_blocks(&e, BLOCK_SIZE).expect("hash"), (0, vec![]));
    }
}
