//! A small LRU of open, writable descriptors for regular files, keyed by how ops name them.
//!
//! A stream of small writes to one file is the common case (capture forwards each FUSE write
//! as a record); reopening the file for each would cost a path walk and an open per 4 KiB.
//! Entries name a file by path, so any op that removes or moves a name must drop the entries
//! at or beneath it ([`FdCache::forget_path`]). Creating a name needs nothing: an entry for a
//! name that did not exist could only be stale if the name had been removed, which forgot it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use understudy_oplog::FileRef;

use crate::InodeId;

struct Entry {
    fd: Arc<OwnedFd>,
    id: InodeId,
    last_used: u64,
}

pub(crate) struct FdCache {
    entries: HashMap<FileRef, Entry>,
    capacity: usize,
    clock: u64,
}

impl FdCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    pub(crate) fn get(&mut self, file: &FileRef) -> Option<(Arc<OwnedFd>, InodeId)> {
        self.clock += 1;
        let entry = self.entries.get_mut(file)?;
        entry.last_used = self.clock;
        Some((Arc::clone(&entry.fd), entry.id))
    }

    /// Whether `file` is cached, without touching its recency.
    pub(crate) fn peek(&self, file: &FileRef) -> Option<InodeId> {
        self.entries.get(file).map(|e| e.id)
    }

    pub(crate) fn insert(&mut self, file: FileRef, fd: Arc<OwnedFd>, id: InodeId) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&file) {
            // A linear scan for the oldest entry: only on a miss with a full cache, over a
            // few hundred entries, next to an open(2) that costs far more.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(
            file,
            Entry {
                fd,
                id,
                last_used: self.clock,
            },
        );
    }

    /// Drops the entries for `path` and for everything beneath it (a removed or renamed
    /// directory changes what every path under it names).
    pub(crate) fn forget_path(&mut self, path: &[u8]) {
        self.entries.retain(|key, _| match key {
            FileRef::Path(p) => !is_at_or_under(p, path),
            FileRef::Orphan(_) => true,
        });
    }

    /// Drops every entry named by a path (a whole-tree resync may have changed any of them).
    pub(crate) fn forget_all_paths(&mut self) {
        self.entries
            .retain(|key, _| matches!(key, FileRef::Orphan(_)));
    }

    pub(crate) fn forget_orphan(&mut self, id: u64) {
        self.entries.remove(&FileRef::Orphan(id));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn is_at_or_under(candidate: &[u8], path: &[u8]) -> bool {
    candidate.starts_with(path) && (candidate.len() == path.len() || candidate[path.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(
            std::fs::File::open("/dev/null").expect("open /dev/null"),
        ))
    }

    fn id(ino: u64) -> InodeId {
        InodeId {
            dev_major: 0,
            dev_minor: 0,
            ino,
        }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut cache = FdCache::new(2);
        let a = FileRef::Path(b"a".to_vec());
        let b = FileRef::Path(b"b".to_vec());
        let c = FileRef::Path(b"c".to_vec());
        cache.insert(a.clone(), fd(), id(1));
        cache.insert(b.clone(), fd(), id(2));
        assert!(cache.get(&a).is_some());
        cache.insert(c.clone(), fd(), id(3));
        assert_eq!(cache.len(), 2);
        assert!(cache.peek(&b).is_none(), "b was least recently used");
        assert!(cache.peek(&a).is_some() && cache.peek(&c).is_some());
    }

    #[test]
    fn forgetting_a_directory_forgets_what_is_beneath_it() {
        let mut cache = FdCache::new(8);
        for (i, p) in [&b"d"[..], b"d/f", b"d/e/f", b"dd/f", b"x"]
            .iter()
            .enumerate()
        {
            cache.insert(FileRef::Path(p.to_vec()), fd(), id(i as u64));
        }
        cache.insert(FileRef::Orphan(4), fd(), id(9));
        cache.forget_path(b"d");
        assert!(cache.peek(&FileRef::Path(b"d".to_vec())).is_none());
        assert!(cache.peek(&FileRef::Path(b"d/f".to_vec())).is_none());
        assert!(cache.peek(&FileRef::Path(b"d/e/f".to_vec())).is_none());
        assert!(cache.peek(&FileRef::Path(b"dd/f".to_vec())).is_some());
        assert!(cache.peek(&FileRef::Path(b"x".to_vec())).is_some());
        assert!(cache.peek(&FileRef::Orphan(4)).is_some());
        cache.forget_orphan(4);
        assert!(cache.peek(&FileRef::Orphan(4)).is_none());
    }
}
