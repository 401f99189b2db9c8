//! Early writeback off the apply thread.
//!
//! Before a flush that will come anyway (the `syncfs` that ends a resync, the `fsync` after
//! a stream of large writes) the applier starts writing the data back as it arrives, so the
//! disk writes while the data still comes in and the flush finds little left. Starting it
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) is not free: on ext4 it allocates the blocks
//! and builds the requests, about 30 µs per small file, and profiles of the 10,000-file
//! initial sync put it at 30 % of the apply thread, the pair's bottleneck there. A helper
//! thread does it instead, on the other core.
//!
//! Only a hint: durability still comes from the flush, which writes whatever was not
//! started yet. The queue to the helper is bounded ([`PENDING_KICKS`]); when it is full (or
//! the helper is gone) the applier starts the writeback itself, as before, so nothing waits
//! and nothing piles up. Each queued kick holds its file open until done.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::sys;

/// Kicks waiting for the helper at most: each holds a descriptor, and the applier's own
/// descriptors (the cache, the dirty set) must stay well inside RLIMIT_NOFILE's 1024.
pub(crate) const PENDING_KICKS: usize = 64;

struct Kick {
    fd: Arc<OwnedFd>,
    offset: u64,
    len: u64,
}

pub(crate) struct Writeback {
    kicks: Option<SyncSender<Kick>>,
    helper: Option<JoinHandle<()>>,
}

impl Default for Writeback {
    fn default() -> Self {
        let (tx, rx) = mpsc::sync_channel::<Kick>(PENDING_KICKS);
        let helper = std::thread::Builder::new()
            .name("apply-writeback".into())
            .spawn(move || {
                // Ends when the applier drops its sender.
                while let Ok(k) = rx.recv() {
                    sys::start_writeback(k.fd.as_fd(), k.offset, k.len);
                }
            })
            .ok();
        // Without a helper (no thread could be started), every kick is done inline.
        Self {
            kicks: helper.as_ref().map(|_| tx),
            helper,
        }
    }
}

impl Writeback {
    /// Starts writing `[offset, offset + len)` of the file back, on the helper if it has room.
    pub(crate) fn kick(&self, fd: &Arc<OwnedFd>, offset: u64, len: u64) {
        let kick = Kick {
            fd: Arc::clone(fd),
            offset,
            len,
        };
        let inline = match &self.kicks {
            Some(tx) => match tx.try_send(kick) {
                Ok(()) => return,
                Err(TrySendError::Full(k) | TrySendError::Disconnected(k)) => k,
            },
            None => kick,
        };
        sys::start_writeback(inline.fd.as_fd(), inline.offset, inline.len);
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        // The helper finishes what is queued (each a quick, non-blocking call), then ends.
        self.kicks = None;
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_past_the_queue_are_done_inline_and_every_descriptor_is_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        let fd = Arc::new(OwnedFd::from(std::fs::File::open(&path).expect("open")));
        let writeback = Writeback::default();
        for i in 0..(PENDING_KICKS as u64 * 4) {
            writeback.kick(&fd, (i % 256) * 4096, 4096);
        }
        drop(writeback);
        // The helper has ended and dropped every queued kick's reference.
        assert_eq!(Arc::strong_count(&fd), 1);
    }
}
