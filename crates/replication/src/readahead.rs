//! Direct reads of a large range on a thread of their own, ahead of the resync engine.
//!
//! The engine must record every byte exactly as it is at the record's seq, which it gets by
//! reading under the capture's order lock. Reading 4 MiB there, one read at a time, left the
//! disk idle while the engine cut, recorded and paced each record (the engine spent 93 % of
//! an initial sync of large files reading, at 850 MB/s, against 1.3 GB/s for the same
//! direct reads back to back). So the next reads run here, outside the lock, and a read is
//! used only if it is provably exact:
//!
//! - before a read starts, the set's last seq `S` is noted. An op that changes the file
//!   during or after the read is recorded with a seq above `S` (capture changes the backing
//!   file and records the op under the order lock; the note is taken under the queue's lock,
//!   which orders it against every record);
//! - under the order lock, when the read is used, every seq after `S` must be one of this
//!   range's own records (which describe this copy and do not change it). If anything else
//!   was recorded since, the read is dropped and the engine reads again under the lock.
//!
//! A read that fails is dropped the same way: the read under the lock reports the error.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use rustix::io::Errno;

/// Reads in flight at once. With one, the disk waits while the engine records. Four: next to
/// the passive's direct writes on the same disk, `dd` moved 1.7 GiB each way in 1.34-1.45 s
/// with four direct readers and 1.43-1.79 s with two (and the engine's reading time in the
/// initial-sync benchmark halved).
const READS_AHEAD: usize = 4;
/// Threads making the reads: as many as reads in flight, so that the disk really has that
/// many requests at once (one thread had one at a time: `fio` on this VM reads 4 MiB direct
/// chunks at 1.2 GB/s with one request queued and 1.5-2.3 GB/s with two).
const READERS: usize = READS_AHEAD;

/// A buffer for one direct read of up to `chunk_bytes`, with room to align it.
pub(crate) fn direct_buffer(chunk_bytes: usize, align: usize) -> Vec<u8> {
    vec![0u8; chunk_bytes + align]
}

/// Where the `align`ed part of `buf` starts, and that part for `len` bytes (`None` if it
/// does not fit).
pub(crate) fn aligned_part(buf: &mut [u8], align: usize, len: usize) -> Option<(usize, &mut [u8])> {
    let base = buf.as_ptr().align_offset(align);
    let end = base.checked_add(len)?;
    buf.get_mut(base..end).map(|part| (base, part))
}

struct Request {
    offset: u64,
    len: usize,
    buf: Vec<u8>,
    seen_seq: u64,
}

/// A finished read: `buf[base..base + got]` holds the file's bytes from `offset` as they
/// were at some moment after seq `seen_seq` was recorded.
pub(crate) struct Read {
    offset: u64,
    buf: Vec<u8>,
    base: usize,
    got: Result<usize, Errno>,
    seen_seq: u64,
    /// The file had one name after `seen_seq` was noted and before the read began.
    one_name: bool,
}

impl Read {
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }
}

/// The reading thread's handle, for one range of one file.
pub(crate) struct ReadAhead {
    requests: Option<SyncSender<Request>>,
    reads: Receiver<Read>,
    /// Offsets of the reads in flight, in the order they were issued (and are used).
    issued: VecDeque<u64>,
    /// Reads that finished before an older one (the readers race).
    arrived: Vec<Read>,
    spare: Vec<Vec<u8>>,
    next_offset: u64,
    to: u64,
    in_flight: usize,
    chunk_bytes: usize,
    align: usize,
    /// Every seq up to this one may be an op other than this range's records.
    foreign_upto: u64,
    /// This range's last record.
    own_last: u64,
}

impl ReadAhead {
    /// Starts reading `[from, to)` of `dfd` (opened with `O_DIRECT`) in chunks of
    /// `chunk_bytes`, `align`ed, on a thread of `scope`; `spare` are buffers kept from an
    /// earlier range.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        dfd: &'scope OwnedFd,
        from: u64,
        to: u64,
        chunk_bytes: usize,
        align: usize,
        spare: Vec<Vec<u8>>,
    ) -> Self {
        // Capacity for every read in flight: the reader never blocks on a send, so it ends
        // as soon as the requests stop, however the engine leaves the range.
        let (request_tx, request_rx) = sync_channel::<Request>(READS_AHEAD + 1);
        let (read_tx, read_rx) = sync_channel::<Read>(READS_AHEAD + 1);
        let request_rx = Arc::new(Mutex::new(request_rx));
        for _ in 0..READERS {
            let (request_rx, read_tx) = (Arc::clone(&request_rx), read_tx.clone());
            scope.spawn(move || loop {
                // Held only to take a request, never across a read.
                let next = request_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(mut r) = next else { break };
                // After the seq was noted, before the read: see `use_if_exact`.
                let one_name = rustix::fs::fstat(dfd).is_ok_and(|st| st.st_nlink == 1);
                let (base, got) = match aligned_part(&mut r.buf, align, r.len) {
                    Some((base, part)) => (base, crate::engine::pread_full(dfd, part, r.offset)),
                    None => (0, Err(Errno::INVAL)),
                };
                let read = Read {
                    offset: r.offset,
                    buf: r.buf,
                    base,
                    got,
                    seen_seq: r.seen_seq,
                    one_name,
                };
                if read_tx.send(read).is_err() {
                    break;
                }
            });
        }
        ReadAhead {
            requests: Some(request_tx),
            reads: read_rx,
            issued: VecDeque::with_capacity(READS_AHEAD),
            arrived: Vec::with_capacity(READS_AHEAD),
            spare,
            next_offset: from,
            to,
            in_flight: 0,
            chunk_bytes,
            align,
            foreign_upto: 0,
            own_last: 0,
        }
    }

    /// Starts the next reads, up to [`READS_AHEAD`] in flight. `last_seq` is the set's last
    /// seq now (read after anything before it took effect).
    pub(crate) fn issue(&mut self, last_seq: impl Fn() -> u64) {
        while self.in_flight < READS_AHEAD && self.next_offset < self.to {
            let Some(requests) = &self.requests else {
                return;
            };
            let buf = self
                .spare
                .pop()
                .unwrap_or_else(|| direct_buffer(self.chunk_bytes, self.align));
            let want = ((self.to - self.next_offset) as usize).min(self.chunk_bytes);
            let len = want.div_ceil(self.align) * self.align;
            let request = Request {
                offset: self.next_offset,
                len,
                buf,
                seen_seq: last_seq(),
            };
            if requests.send(request).is_err() {
                self.requests = None;
                return;
            }
            self.in_flight += 1;
            self.issued.push_back(self.next_offset);
            self.next_offset += want as u64;
        }
    }

    /// Waits for the oldest read in flight (`None` if there is none).
    pub(crate) fn next(&mut self) -> Option<Read> {
        if self.in_flight == 0 {
            return None;
        }
        let oldest = *self.issued.front()?;
        // Bounded: each turn takes one of the reads in flight.
        for _ in 0..=READS_AHEAD {
            if let Some(k) = self.arrived.iter().position(|r| r.offset == oldest) {
                self.issued.pop_front();
                self.in_flight -= 1;
                return Some(self.arrived.swap_remove(k));
            }
            let read = self.reads.recv().ok()?;
            self.arrived.push(read);
        }
        invariant!(false, "the oldest read ahead never arrived");
        None
    }

    /// Under the order lock, with the set's last seq `last_seq`: appends up to `want` bytes
    /// of `read` to `data` if it is exact now, and says whether it did. Gives the buffer
    /// back either way. `untouched_since(seq)` says whether no op recorded after `seq`
    /// touched this file's name (asked only when other ops were recorded since the read
    /// began, and the file had one name between `seq` and the read: then no other name was
    /// left after the read began unless an op on this one made it).
    pub(crate) fn use_if_exact(
        &mut self,
        read: Read,
        last_seq: u64,
        want: usize,
        data: &mut Vec<u8>,
        untouched_since: impl FnOnce(u64) -> bool,
    ) -> bool {
        if last_seq != self.own_last {
            self.foreign_upto = last_seq;
        }
        let used = match read.got {
            Ok(got)
                if self.foreign_upto <= read.seen_seq
                    || (read.one_name && untouched_since(read.seen_seq)) =>
            {
                let n = got.min(want);
                data.extend_from_slice(&read.buf[read.base..read.base + n]);
                true
            }
            _ => false,
        };
        self.spare.push(read.buf);
        used
    }

    /// The engine recorded `count` records of other files, the set's last seq going from
    /// `before` to `after`. The engine's records change nothing of the active's files, so
    /// if they are every seq since this range's last record, they count as its own.
    pub(crate) fn engine_recorded(&mut self, before: u64, after: u64, count: u64) {
        if before == self.own_last && after.checked_sub(before) == Some(count) {
            self.own_last = after;
        }
    }

    /// This range recorded `seq` (under the order lock).
    pub(crate) fn recorded(&mut self, seq: u64) {
        self.own_last = seq;
    }

    /// Stops reading; returns the buffers for the next range.
    pub(crate) fn finish(mut self) -> Vec<Vec<u8>> {
        self.requests = None;
        while let Some(read) = self.next() {
            self.spare.push(read.buf);
        }
        self.spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const CHUNK: usize = 64 << 10;
    const ALIGN: usize = 4096;

    /// A file of five chunks opened with `O_DIRECT` (`None` where the filesystem refuses it).
    fn direct_file(dir: &std::path::Path) -> Option<OwnedFd> {
        let path = dir.join("f");
        let bytes: Vec<u8> = (0..5 * CHUNK).map(|i| (i / CHUNK) as u8 + 1).collect();
        std::fs::write(&path, &bytes).expect("write");
        rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
            rustix::fs::Mode::empty(),
        )
        .ok()
    }

    #[test]
    fn a_read_is_used_only_while_nothing_but_own_records_came_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(dfd) = direct_file(dir.path()) else {
            eprintln!("skipping: {} refuses O_DIRECT", dir.path().display());
            return;
        };
        // The set's last seq, as the queue would report it.
        let last = Cell::new(10u64);
        std::thread::scope(|scope| {
            let mut ahead =
                ReadAhead::start(scope, &dfd, 0, 5 * CHUNK as u64, CHUNK, ALIGN, Vec::new());
            ahead.issue(|| last.get());
            // Chunk 0: nothing happened since it was read: used.
            let r = ahead.next().expect("read 0");
            assert_eq!(r.offset(), 0);
            ahead.issue(|| last.get());
            let mut data = Vec::new();
            assert!(ahead.use_if_exact(r, last.get(), CHUNK, &mut data, |_| false));
            assert!(data.len() == CHUNK && data.iter().all(|&b| b == 1));
            last.set(11);
            ahead.recorded(11);
            // Chunk 1 was read before our record 11, which does not change the file: used.
            let r = ahead.next().expect("read 1");
            ahead.issue(|| last.get());
            data.clear();
            assert!(ahead.use_if_exact(r, last.get(), CHUNK, &mut data, |_| false));
            assert!(data.iter().all(|&b| b == 2));
            last.set(12);
            ahead.recorded(12);
            // The engine records two small files' records, 13 and 14, which change no file of
            // the active: chunk 2, read before them, is used.
            last.set(14);
            ahead.engine_recorded(12, 14, 2);
            let r = ahead.next().expect("read 2");
            data.clear();
            assert!(ahead.use_if_exact(r, last.get(), CHUNK, &mut data, |_| false));
            assert!(data.iter().all(|&b| b == 3));
            last.set(15);
            ahead.recorded(15);
            // The engine records one record, but someone else recorded one too (17 - 15 is
            // not 1): both count as foreign, and chunk 3, read before them, is dropped.
            last.set(17);
            ahead.engine_recorded(15, 17, 1);
            let r = ahead.next().expect("read 3");
            data.clear();
            assert!(!ahead.use_if_exact(r, last.get(), CHUNK, &mut data, |_| false));
            assert!(data.is_empty());
            // Chunk 4 was asked for right after chunk 0 was taken, at seq 10: everything
            // foreign since then must be checked, and the change log says none of it touched
            // this file: used.
            let r = ahead.next().expect("read 4");
            let mut asked = None;
            assert!(ahead.use_if_exact(r, last.get(), CHUNK, &mut data, |seen| {
                asked = Some(seen);
                true
            }));
            assert_eq!(
                asked,
                Some(10),
                "asked about what came after the read began"
            );
            assert!(data.iter().all(|&b| b == 5));
            assert!(ahead.next().is_none(), "nothing more was asked");
            let spare = ahead.finish();
            assert!(!spare.is_empty(), "buffers are kept for the next range");
        });
    }

    #[test]
    fn reads_made_by_racing_readers_come_back_in_file_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g");
        const CHUNKS: usize = 200;
        const SMALL: usize = 4096;
        let bytes: Vec<u8> = (0..CHUNKS * SMALL).map(|i| (i / SMALL) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let Ok(dfd) = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
            rustix::fs::Mode::empty(),
        ) else {
            eprintln!("skipping: {} refuses O_DIRECT", dir.path().display());
            return;
        };
        std::thread::scope(|scope| {
            let mut ahead = ReadAhead::start(
                scope,
                &dfd,
                0,
                (CHUNKS * SMALL) as u64,
                SMALL,
                ALIGN,
                Vec::new(),
            );
            let mut copy = Vec::new();
            ahead.issue(|| 1);
            for k in 0..CHUNKS {
                let r = ahead.next().expect("a read for every chunk");
                assert_eq!(r.offset(), (k * SMALL) as u64, "chunk {k} out of order");
                ahead.issue(|| 1);
                assert!(ahead.use_if_exact(r, 1, SMALL, &mut copy, |_| false));
            }
            assert!(ahead.next().is_none());
            assert!(copy == bytes, "the chunks were not put together in order");
            ahead.finish();
        });
    }
}
