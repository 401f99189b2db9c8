//! The inode table: which backing inodes the kernel knows, under which FUSE node ids, by
//! which names, and with how many open handles.
//!
//! Paths for the oplog are rebuilt from this table (parent chain + name) each time they are
//! needed, so they stay correct after renames of any ancestor. The table is only changed
//! under the filesystem's order lock for namespace operations, so its view of names always
//! matches the backing directory at the point the op took effect.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use understudy_oplog::FileRef;

/// The FUSE node id of the root directory (fixed by the protocol).
pub(crate) const ROOT: u64 = 1;

/// Node ids handed out when the backing inode number cannot be used directly. Kept above
/// every inode number we ever use as an id, so the two ranges never meet.
const HIGH_IDS: u64 = 1 << 63;

/// Longest chain of parents followed when building a path: PATH_MAX allows at most ~2048
/// components, so anything longer is a corrupted table, not a deep tree.
const MAX_DEPTH: usize = 4096;

/// Identity of a backing inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub dev: u64,
    pub ino: u64,
}

impl Key {
    pub(crate) fn of(st: &libc::stat) -> Key {
        Key {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Open handles of one inode, split by how the kernel does their I/O. The kernel refuses to
/// mix the two on one inode (see `CaptureFs::open`), so open decisions need both counts.
#[derive(Debug, Default)]
pub(crate) struct Opens {
    /// File handle ids, cached (FUSE read/write) and passthrough alike.
    pub handles: Vec<u64>,
    pub passthrough: u32,
}

impl Opens {
    pub(crate) fn cached(&self) -> usize {
        self.handles.len() - self.passthrough as usize
    }
}

#[derive(Debug)]
pub(crate) struct Node {
    pub key: Key,
    /// Lookups the kernel holds (entry replies minus forgets).
    nlookup: u64,
    /// Every (parent, name) we know this inode by. Hard links have several; directories one.
    pub links: Vec<(u64, OsString)>,
    /// How many known links name this node as their parent. A parent outlives its children.
    children: u64,
    pub opens: Opens,
    /// True once a cached (not direct, not passthrough) open was made: the kernel may hold
    /// pages of this inode (they outlive the open: `FOPEN_KEEP_CACHE`).
    pub page_cache: bool,
    /// Set once the last known name went away while handles were open; later ops address the
    /// inode as `FileRef::Orphan(id)` until the last handle closes.
    pub orphan: Option<u64>,
    /// Shared by all passthrough opens of this inode, as the kernel requires one backing file
    /// per inode at a time. Strong references live in the handles.
    pub backing: Weak<BackingId>,
}

#[derive(Debug)]
pub(crate) struct Table {
    nodes: HashMap<u64, Node>,
    /// Live backing inodes only: an inode that was freed on the backing side is dropped from
    /// here at once, so a new inode that reuses its number gets a fresh node.
    index: HashMap<Key, u64>,
    names: HashMap<(u64, OsString), u64>,
    next_high: u64,
    next_orphan: u64,
    root_dev: u64,
}

/// What removing a name did to the inode it named.
#[derive(Debug, Default)]
pub(crate) struct Removed {
    pub node: Option<u64>,
    /// A fresh orphan id if this was the last known name of an inode with open handles.
    pub orphan: Option<u64>,
}

impl Table {
    pub(crate) fn new(root: Key) -> Table {
        let mut t = Table {
            nodes: HashMap::new(),
            index: HashMap::new(),
            names: HashMap::new(),
            next_high: HIGH_IDS,
            next_orphan: 1,
            root_dev: root.dev,
        };
        t.nodes.insert(
            ROOT,
            Node {
                key: root,
                // The kernel never forgets the root; one lookup keeps it pinned.
                nlookup: 1,
                links: Vec::new(),
                children: 0,
                opens: Opens::default(),
                page_cache: false,
                orphan: None,
                backing: Weak::new(),
            },
        );
        t.index.insert(root, ROOT);
        t
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub(crate) fn by_key(&self, key: Key) -> Option<u64> {
        self.index.get(&key).copied()
    }

    #[cfg(test)]
    pub(crate) fn by_name(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.names.get(&(parent, name.to_owned())).copied()
    }

    /// Finds or creates the node for a live backing inode. New nodes use the backing inode
    /// number as their id when it is free, so `st_ino` through the mount usually equals the
    /// backing one and stays stable across forget/lookup cycles.
    pub(crate) fn intern(&mut self, key: Key) -> u64 {
        if let Some(id) = self.index.get(&key) {
            return *id;
        }
        let id = if key.dev == self.root_dev
            && key.ino > ROOT
            && key.ino < HIGH_IDS
            && !self.nodes.contains_key(&key.ino)
        {
            key.ino
        } else {
            loop {
                let id = self.next_high;
                self.next_high = self.next_high.wrapping_add(1).max(HIGH_IDS);
                if !self.nodes.contains_key(&id) {
                    break id;
                }
            }
        };
        self.nodes.insert(
            id,
            Node {
                key,
                nlookup: 0,
                links: Vec::new(),
                children: 0,
                opens: Opens::default(),
                page_cache: false,
                orphan: None,
                backing: Weak::new(),
            },
        );
        self.index.insert(key, id);
        id
    }

    /// Counts one entry reply the kernel will hold.
    pub(crate) fn add_lookup(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.nlookup += 1;
        }
    }

    pub(crate) fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.nlookup = n.nlookup.saturating_sub(count);
        }
        self.collect(id);
    }

    /// Records that `id` is reachable as (parent, name). A stale entry for that name (only
    /// possible if the backing directory was changed behind our back) is replaced.
    pub(crate) fn add_link(&mut self, id: u64, parent: u64, name: &OsStr) {
        let key = (parent, name.to_owned());
        match self.names.get(&key) {
            Some(existing) if *existing == id => return,
            Some(_) => {
                self.remove_name(parent, name);
            }
            None => {}
        }
        if !self.nodes.contains_key(&parent) || !self.nodes.contains_key(&id) {
            return;
        }
        self.names.insert(key, id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.links.push((parent, name.to_owned()));
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
    }

    /// Forgets the name (parent, name). Assigns an orphan id when that was the inode's last
    /// known name and it still has open handles (and it is not already an orphan: the passive
    /// then still holds it under the earlier id).
    pub(crate) fn remove_name(&mut self, parent: u64, name: &OsStr) -> Removed {
        let Some(id) = self.names.remove(&(parent, name.to_owned())) else {
            return Removed::default();
        };
        let mut orphan = None;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.links.retain(|(p, nm)| !(*p == parent && nm == name));
            if n.links.is_empty() && !n.opens.handles.is_empty() && n.orphan.is_none() {
                let o = self.next_orphan;
                self.next_orphan += 1;
                n.orphan = Some(o);
                orphan = Some(o);
            }
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children = p.children.saturating_sub(1);
        }
        self.collect(id);
        self.collect(parent);
        Removed {
            node: Some(id),
            orphan,
        }
    }

    /// rename(2) without replacement (the target name was already removed): the inode
    /// known as `from` is now known as `to`.
    pub(crate) fn move_link(&mut self, from: (u64, &OsStr), to: (u64, &OsStr)) {
        if let Some(id) = self.names.remove(&(from.0, from.1.to_owned())) {
            self.relink(id, from, to);
        }
        self.collect(from.0);
    }

    /// RENAME_EXCHANGE: the two names swap inodes.
    pub(crate) fn exchange(&mut self, a: (u64, &OsStr), b: (u64, &OsStr)) {
        let ida = self.names.remove(&(a.0, a.1.to_owned()));
        let idb = self.names.remove(&(b.0, b.1.to_owned()));
        if let Some(id) = ida {
            self.relink(id, a, b);
        }
        if let Some(id) = idb {
            self.relink(id, b, a);
        }
        self.collect(a.0);
        self.collect(b.0);
    }

    /// Moves one link of `id` (already removed from `names`) to a new name.
    fn relink(&mut self, id: u64, from: (u64, &OsStr), to: (u64, &OsStr)) {
        if let Some(n) = self.nodes.get_mut(&id) {
            for link in n.links.iter_mut() {
                if link.0 == from.0 && link.1 == from.1 {
                    *link = (to.0, to.1.to_owned());
                    break;
                }
            }
        }
        self.names.insert((to.0, to.1.to_owned()), id);
        if let Some(p) = self.nodes.get_mut(&from.0) {
            p.children = p.children.saturating_sub(1);
        }
        if let Some(p) = self.nodes.get_mut(&to.0) {
            p.children += 1;
        }
    }

    /// The backing inode is gone (last link removed, nothing open): stop resolving its key
    /// to this node, so a reused inode number gets a new node. The node itself lives on until
    /// the kernel forgets it.
    pub(crate) fn mark_dead(&mut self, id: u64) {
        if let Some(n) = self.nodes.get(&id) {
            let key = n.key;
            if self.index.get(&key) == Some(&id) {
                self.index.remove(&key);
            }
        }
        self.collect(id);
    }

    /// Drops `id` (and then any parent left unreferenced) once nothing refers to it.
    pub(crate) fn collect(&mut self, id: u64) {
        let mut work = vec![id];
        while let Some(id) = work.pop() {
            if id == ROOT {
                continue;
            }
            let removable = match self.nodes.get(&id) {
                Some(n) => n.nlookup == 0 && n.children == 0 && n.opens.handles.is_empty(),
                None => false,
            };
            if !removable {
                continue;
            }
            let Some(n) = self.nodes.remove(&id) else {
                continue;
            };
            if self.index.get(&n.key) == Some(&id) {
                self.index.remove(&n.key);
            }
            for (parent, name) in n.links {
                if self.names.get(&(parent, name.clone())) == Some(&id) {
                    self.names.remove(&(parent, name));
                }
                if let Some(p) = self.nodes.get_mut(&parent) {
                    p.children = p.children.saturating_sub(1);
                    work.push(parent);
                }
            }
        }
    }

    /// The node's path relative to the backing root (empty for the root), from its first
    /// known link. `None` if it has no name (an orphan, or a removed directory).
    pub(crate) fn path(&self, id: u64) -> Option<Vec<u8>> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        while cur != ROOT {
            if parts.len() > MAX_DEPTH {
                return None;
            }
            let (parent, name) = self.nodes.get(&cur)?.links.first()?;
            parts.push(name);
            cur = *parent;
        }
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(p.as_bytes());
        }
        Some(out)
    }

    /// The path of `name` inside directory `parent`.
    pub(crate) fn child_path(&self, parent: u64, name: &OsStr) -> Option<Vec<u8>> {
        let mut p = self.path(parent)?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        Some(p)
    }

    /// How an op names this node: its path, or its orphan id once it has no name.
    pub(crate) fn file_ref(&self, id: u64) -> Option<FileRef> {
        if let Some(p) = self.path(id) {
            return Some(FileRef::Path(p));
        }
        self.nodes.get(&id)?.orphan.map(FileRef::Orphan)
    }

    pub(crate) fn add_handle(
        &mut self,
        id: u64,
        fh: u64,
        passthrough: Option<&Arc<BackingId>>,
        direct: bool,
    ) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.opens.handles.push(fh);
            n.page_cache |= passthrough.is_none() && !direct;
            if let Some(b) = passthrough {
                n.opens.passthrough += 1;
                n.backing = Arc::downgrade(b);
            }
        }
    }

    /// Removes a handle. Returns the orphan id to drop if this closed the last handle of an
    /// orphan; the caller records `DropOrphan` and then calls [`Table::finish_orphan`].
    pub(crate) fn remove_handle(&mut self, id: u64, fh: u64, passthrough: bool) -> Option<u64> {
        let n = self.nodes.get_mut(&id)?;
        n.opens.handles.retain(|h| *h != fh);
        if passthrough {
            n.opens.passthrough = n.opens.passthrough.saturating_sub(1);
        }
        if n.opens.handles.is_empty() {
            n.orphan
        } else {
            None
        }
    }

    /// After the last handle of an orphan closed: forget the orphan id and, if the backing
    /// inode has no links left at all, the inode.
    pub(crate) fn finish_orphan(&mut self, id: u64, nlink: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.orphan = None;
        }
        if nlink == 0 {
            self.mark_dead(id);
        } else {
            self.collect(id);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> Key {
        Key { dev: 7, ino }
    }

    #[test]
    fn paths_follow_renames_of_ancestors() {
        let mut t = Table::new(key(2));
        let a = t.intern(key(10));
        t.add_lookup(a);
        t.add_link(a, ROOT, OsStr::new("a"));
        let f = t.intern(key(11));
        t.add_lookup(f);
        t.add_link(f, a, OsStr::new("f"));
        assert_eq!(t.path(f).as_deref(), Some(&b"a/f"[..]));
        t.remove_name(ROOT, OsStr::new("a"));
        t.add_link(a, ROOT, OsStr::new("b"));
        assert_eq!(t.path(f).as_deref(), Some(&b"b/f"[..]));
        assert_eq!(t.path(ROOT).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn ids_prefer_inode_numbers_and_avoid_collisions() {
        let mut t = Table::new(key(2));
        assert_eq!(t.intern(key(50)), 50);
        // Same number on another device: must not reuse 50.
        let other = t.intern(Key { dev: 8, ino: 50 });
        assert!(other >= HIGH_IDS);
        // Inode number 1 would clash with the root.
        assert!(t.intern(key(1)) >= HIGH_IDS);
    }

    #[test]
    fn last_name_of_open_file_becomes_orphan_and_is_dropped_on_close() {
        let mut t = Table::new(key(2));
        let f = t.intern(key(11));
        t.add_lookup(f);
        t.add_link(f, ROOT, OsStr::new("f"));
        t.add_link(f, ROOT, OsStr::new("g"));
        t.add_handle(f, 100, None, false);
        assert_eq!(t.remove_name(ROOT, OsStr::new("f")).orphan, None);
        assert_eq!(t.path(f).as_deref(), Some(&b"g"[..]));
        let r = t.remove_name(ROOT, OsStr::new("g"));
        assert_eq!(r.orphan, Some(1));
        assert_eq!(t.file_ref(f), Some(FileRef::Orphan(1)));
        assert_eq!(t.remove_handle(f, 100, false), Some(1));
        t.finish_orphan(f, 0);
        assert_eq!(t.by_key(key(11)), None);
        t.forget(f, 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn exchange_swaps_names() {
        let mut t = Table::new(key(2));
        let a = t.intern(key(10));
        t.add_lookup(a);
        t.add_link(a, ROOT, OsStr::new("a"));
        let b = t.intern(key(11));
        t.add_lookup(b);
        t.add_link(b, ROOT, OsStr::new("b"));
        t.exchange((ROOT, OsStr::new("a")), (ROOT, OsStr::new("b")));
        assert_eq!(t.path(a).as_deref(), Some(&b"b"[..]));
        assert_eq!(t.path(b).as_deref(), Some(&b"a"[..]));
        t.move_link((ROOT, OsStr::new("a")), (ROOT, OsStr::new("c")));
        assert_eq!(t.path(b).as_deref(), Some(&b"c"[..]));
        assert_eq!(t.by_name(ROOT, OsStr::new("a")), None);
    }

    #[test]
    fn parents_outlive_children() {
        let mut t = Table::new(key(2));
        let d = t.intern(key(10));
        t.add_lookup(d);
        t.add_link(d, ROOT, OsStr::new("d"));
        let f = t.intern(key(11));
        t.add_lookup(f);
        t.add_link(f, d, OsStr::new("f"));
        t.forget(d, 1);
        assert_eq!(t.path(f).as_deref(), Some(&b"d/f"[..]));
        t.forget(f, 1);
        assert_eq!(t.len(), 1);
    }
}
