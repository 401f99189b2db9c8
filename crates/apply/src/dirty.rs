//! What `Applier::sync` must make durable: the files written and the directories whose
//! entries changed since the last sync (group commit: one sync covers many ops).
//!
//! Entries hold descriptors (the file may lose its last name before the sync; the descriptor
//! still reaches the inode), so the sets are bounded to stay well inside the default
//! RLIMIT_NOFILE of 1024. Past the bound the sets are dropped and the next sync falls back to
//! `syncfs` on the replica's filesystem, which covers everything at a higher price.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::InodeId;

/// Most inodes tracked between two syncs before falling back to `syncfs`.
pub const MAX_DIRTY: usize = 512;

pub(crate) struct DirtyFile {
    pub(crate) fd: Arc<OwnedFd>,
    /// Metadata changed (mode, owner, size by truncate, xattrs...): `fsync`, not `fdatasync`.
    pub(crate) metadata: bool,
}

pub(crate) struct DirtyDir {
    pub(crate) fd: Arc<OwnedFd>,
    /// The descriptor is `O_PATH` (as parents are resolved) and must be reopened to fsync.
    pub(crate) path_only: bool,
}

#[derive(Default)]
pub(crate) struct Dirty {
    pub(crate) files: HashMap<InodeId, DirtyFile>,
    pub(crate) dirs: HashMap<InodeId, DirtyDir>,
    /// Too much was dirtied to track: the next sync is a `syncfs`.
    pub(crate) overflow: bool,
}

impl Dirty {
    fn room_for_one_more(&mut self) -> bool {
        if self.overflow {
            return false;
        }
        if self.files.len() + self.dirs.len() >= MAX_DIRTY {
            // Release the descriptors now: syncfs will not need them.
            self.files.clear();
            self.dirs.clear();
            self.overflow = true;
            return false;
        }
        true
    }

    pub(crate) fn file(&mut self, id: InodeId, fd: &Arc<OwnedFd>, metadata: bool) {
        if let Some(existing) = self.files.get_mut(&id) {
            existing.metadata |= metadata;
            return;
        }
        if self.room_for_one_more() {
            self.files.insert(
                id,
                DirtyFile {
                    fd: Arc::clone(fd),
                    metadata,
                },
            );
        }
    }

    /// Upgrades an already dirty file to a full fsync (an fsync, not fdatasync, on the active).
    pub(crate) fn upgrade_file(&mut self, id: InodeId) {
        if let Some(existing) = self.files.get_mut(&id) {
            existing.metadata = true;
        }
    }

    pub(crate) fn dir(&mut self, id: InodeId, fd: &Arc<OwnedFd>, path_only: bool) {
        if let Some(existing) = self.dirs.get_mut(&id) {
            // Prefer a descriptor that can be fsynced without reopening.
            if existing.path_only && !path_only {
                existing.fd = Arc::clone(fd);
                existing.path_only = false;
            }
            return;
        }
        if self.room_for_one_more() {
            self.dirs.insert(
                id,
                DirtyDir {
                    fd: Arc::clone(fd),
                    path_only,
                },
            );
        }
    }

    /// The inode is gone (its last name removed): its data need not be made durable.
    pub(crate) fn forget_file(&mut self, id: InodeId) {
        self.files.remove(&id);
    }

    /// Too much changed to track one by one (a resync): the next sync is a `syncfs`.
    pub(crate) fn overflow(&mut self) {
        self.files.clear();
        self.dirs.clear();
        self.overflow = true;
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.overflow && self.files.is_empty() && self.dirs.is_empty()
    }
}
