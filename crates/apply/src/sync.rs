//! Resync and verify on the passive: the records of [`Op::SyncBegin`] .. [`Op::SyncEnd`]
//! (see `understudy-oplog`), applied in sequence like every other record, and what they
//! report to the layer above through a [`SyncObserver`].
//!
//! A resync makes the replica's tree within the sync's scope exactly the active's listing
//! ([`Op::SyncTree`]) at the listing's seq: names, types, hard links, symlink targets, device
//! numbers, owners, modes, xattrs and mtimes. Regular files whose quick check (size, mtime,
//! mode) fails are reported as needing content; their data follows as ordinary `Write` and
//! `Fallocate` records, and a [`Op::SyncMeta`] sets their final size and metadata. A verify
//! compares instead of changing, and reports every difference.
//!
//! [`Op::SyncBegin`]: understudy_oplog::Op::SyncBegin
//! [`Op::SyncEnd`]: understudy_oplog::Op::SyncEnd
//! [`Op::SyncTree`]: understudy_oplog::Op::SyncTree
//! [`Op::SyncMeta`]: understudy_oplog::Op::SyncMeta

use std::io;
use std::os::fd::OwnedFd;

use understudy_oplog::EntryKind;

/// Most listing entries buffered for one sync (the listing arrives in parts and is applied
/// when the last one arrives).
pub const MAX_LISTING_ENTRIES: usize = 4_000_000;

/// Reopens a file of this replica later without its path (`name_to_handle_at`). Made and
/// used on this node only; never sent over the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHandle {
    pub(crate) handle_type: i32,
    pub(crate) bytes: Vec<u8>,
}

impl LocalHandle {
    /// The raw `file_handle` type and bytes, for `open_by_handle_at` elsewhere in this
    /// process (the hashing threads).
    pub fn parts(&self) -> (i32, &[u8]) {
        (self.handle_type, &self.bytes)
    }
}

/// What a resync or verify reports to the layer above while its records are applied.
pub trait SyncObserver {
    /// A resync is about to change or remove `path`, an existing non-directory entry of the
    /// replica: its content will be rewritten (it fails the quick check), its type replaced,
    /// its hard-link group changed, or its name removed. `file` is the open regular file
    /// (read-only), `None` for symlinks and special files. An error aborts the record
    /// (`ApplyError::Io`) before anything is changed.
    fn before_change(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        file: Option<&OwnedFd>,
    ) -> io::Result<()>;

    /// After the last `SyncTree` part of a resync: the regular file at listing `index` needs
    /// its content. `existing` is the replica's file to compare blocks against (kept, so
    /// `Write`s patch it), or `None` when the file was created empty.
    fn need_content(&mut self, index: u32, existing: Option<LocalHandle>);

    /// After the last `SyncTree` part of a verify: the regular file at listing `index` is
    /// present in both trees; compare its content (`handle` reopens the replica's file).
    fn compare_content(&mut self, index: u32, handle: LocalHandle);

    /// Verify: the replica differs from the listing at `path` (nothing is changed). `what`
    /// is a short phrase: "missing", "extra", "type", "mode", "owner", "mtime", "size",
    /// "symlink target", "device", "xattrs", "hard links".
    fn differs(&mut self, path: &[u8], what: &'static str);

    /// Verify: a `VerifyRange` record was checked against the replica.
    fn range_checked(&mut self, id: u64, path: &[u8], offset: u64, len: u64, matches: bool);
}

/// An observer that wants nothing: `Applier::apply` uses it.
pub struct NoObserver;

impl SyncObserver for NoObserver {
    fn before_change(&mut self, _: &[u8], _: EntryKind, _: Option<&OwnedFd>) -> io::Result<()> {
        Ok(())
    }
    fn need_content(&mut self, _: u32, _: Option<LocalHandle>) {}
    fn compare_content(&mut self, _: u32, _: LocalHandle) {}
    fn differs(&mut self, _: &[u8], _: &'static str) {}
    fn range_checked(&mut self, _: u64, _: &[u8], _: u64, _: u64, _: bool) {}
}
