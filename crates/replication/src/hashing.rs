//! Block hashes for resync and verify: blake3 of each fixed-size block of a file, computed
//! the same way on both nodes so the lists can be compared block by block.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::io::Errno;

/// Block size used for comparisons. At 32 KiB a file's hash list is 1/1024 of its size, and
/// a 4 KiB change costs 32 KiB of transfer (rsync's block for a 1 GiB file is about this).
pub const BLOCK_SIZE: u32 = 32 << 10;

/// Bytes read per call while hashing.
const READ_CHUNK: usize = 1 << 20;

/// The blake3 hash of each `block_size` block of the open file, up to its end (the last
/// block may be short), and the number of bytes read.
pub fn hash_blocks(fd: impl AsFd, block_size: u32) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    let fd = fd.as_fd();
    let block = block_size as usize;
    let chunk = (READ_CHUNK / block).max(1) * block;
    if chunk > READ_CHUNK {
        // Blocks larger than the usual read (up to 16 MiB may be asked for): not kept.
        return hash_reads(fd, block, &mut vec![0u8; chunk]);
    }
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        if buf.len() < chunk {
            buf.resize(chunk, 0);
        }
        hash_reads(fd, block, &mut buf[..chunk])
    })
}

thread_local! {
    /// One read buffer per hashing thread, reused from file to file: a fresh 1 MiB buffer
    /// for each of 10,000 small files was 4 % of a verify's CPU, spent clearing it.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The reading and hashing of [`hash_blocks`], `buf.len()` bytes per read.
fn hash_reads(
    fd: BorrowedFd<'_>,
    block: usize,
    buf: &mut [u8],
) -> Result<(u64, Vec<[u8; 32]>), Errno> {
    let chunk = buf.len();
    let mut hashes = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < chunk {
            match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno::INTR) => continue,
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
}
