//! A resync listing drafted without the capture's order lock, then made exact under it.
//!
//! Walking the tree costs about 15 µs an entry on the test VM (a stat, an open and an xattr
//! list per file). Under the order lock that stalls every application write for the whole
//! walk: 150 ms for 10,000 files, minutes for millions. So the engine first walks without
//! the lock, after noting the last captured seq `s0` ([`draft`]): the draft is exact for
//! every path no op touched after `s0`. Then, under the lock, the change log names the paths
//! ops touched after `s0`, noted exactly while the walk ran ([`ChangeLog::watch`]); only
//! those are listed again (with what is below them), and their parent directories described again (their mtimes moved). The lock
//! is held for the changes, not for the tree.
//!
//! Why the rest is exact: an entry's description (type, mode, owner, size, mtime, xattrs,
//! symlink target) changes only through an op on its path, which the change log records
//! with that path (a rename records both names, a link both), or through an op on one of its
//! children's paths, for a directory's mtime, which is why parents are described again. The
//! exceptions are handled by listing under the lock as before, never by guessing:
//! - the change log cannot say (more than [`WATCH_PATHS_MAX`] paths changed, or another
//!   listing started its own watch);
//! - the scope no longer covers the draft's (a resync's scope, what changed since the common
//!   point, became the whole tree during the walk; a scope that merely grew is fine: the
//!   new parts are listed under the lock);
//! - the root itself changed (its subtree is everything);
//! - a file with several hard links changed and its names could not all be found in
//!   [`HARD_LINK_ROUNDS`] rounds (its other names share its size, mtime and xattrs but are
//!   not in the log, so every name of it in the draft is listed again too, and every draft
//!   name of an inode the fresh listing found with several links);
//! - a path the draft could not read is not among the changed ones;
//! - too many paths changed for patching to be cheaper;
//!
//! [`ChangeLog::watch`]: crate::changes::ChangeLog::watch
//! [`WATCH_PATHS_MAX`]: crate::changes::WATCH_PATHS_MAX
//! - the patched listing breaks the order the passive requires (parents first).

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use understudy_oplog::EntryKind;

use crate::walk::{self, Listing, WalkError, WalkNotes};

/// More changed paths than this (or than half the draft's entries) and the tree is listed
/// again under the lock: patching would cost as much.
pub const PATCH_PATHS_MAX: usize = 100_000;
/// Rounds of listing again the other names of hard-linked files found among the changed
/// ones before giving up on the draft (each round finds names the last one could not know).
const HARD_LINK_ROUNDS: usize = 4;

/// A listing made without the order lock.
pub struct Draft {
    /// The last seq captured before the walk began.
    pub seq: u64,
    /// The normalized scope roots (`None`: the whole tree).
    scope: Option<Vec<Vec<u8>>>,
    listing: Listing,
    notes: WalkNotes,
}

impl Draft {
    pub fn entries(&self) -> usize {
        self.listing.entries.len()
    }
}

/// Why a draft was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discarded {
    Unknown,
    ScopeChanged,
    RootChanged,
    TooManyChanges,
    HardLinks,
    Unreadable,
    ParentMissing,
    Order,
}

impl std::fmt::Display for Discarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Discarded::Unknown => "the change log cannot tell what changed",
            Discarded::ScopeChanged => "the scope no longer covers the draft's",
            Discarded::RootChanged => "the root of the scope changed",
            Discarded::TooManyChanges => "too many paths changed during the walk",
            Discarded::HardLinks => "a file with several links changed",
            Discarded::Unreadable => "a path the walk could not read is not in the change log",
            Discarded::ParentMissing => "a changed path's parent is not in the listing",
            Discarded::Order => "the patched listing is out of order",
        })
    }
}

/// What [`finish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Draft entries dropped (changed, or below a changed directory).
    pub dropped: usize,
    /// Entries listed again under the lock.
    pub relisted: usize,
    /// Parent directories described again.
    pub parents: usize,
}

/// Walks `scope` without the order lock. Call after reading `seq` and starting the change
/// log's watch from it under the lock.
pub fn draft(root: &OwnedFd, scope: Option<Vec<Vec<u8>>>, seq: u64) -> Result<Draft, WalkError> {
    let scope = scope.map(walk::normalize_scope);
    let (listing, notes) = walk::walk(root, scope.as_deref(), true)?;
    Ok(Draft {
        seq,
        scope,
        listing,
        notes,
    })
}

/// `a` is `b` or below it.
fn within(a: &[u8], b: &[u8]) -> bool {
    b.is_empty() || a == b || (a.len() > b.len() && a.starts_with(b) && a[b.len()] == b'/')
}

fn parent_of(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&c| c == b'/')
        .map_or(&[][..], |i| &path[..i])
}

/// Whether `path` or one of its ancestors is in `set`.
fn covered(path: &[u8], set: &HashSet<&[u8]>) -> bool {
    let mut p = path;
    loop {
        if set.contains(p) {
            return true;
        }
        if p.is_empty() {
            return false;
        }
        p = parent_of(p);
    }
}

/// Makes the draft exact at the current seq. Call under the order lock, with `changed` the
/// paths the change log's watch noted since `draft.seq` (`None`: it cannot tell), and
/// `scope` the listing's normalized scope now: the draft's, or a wider one (a resync's
/// scope is what changed since the common point, which grew during the walk).
/// `Err(Discarded)` means: list the scope under the lock instead.
pub fn finish(
    draft: Draft,
    root: &OwnedFd,
    changed: Option<&HashSet<Vec<u8>>>,
    scope: Option<&[Vec<u8>]>,
) -> Result<Result<(Listing, Patch), Discarded>, WalkError> {
    let Some(changed) = changed else {
        return Ok(Err(Discarded::Unknown));
    };
    let Draft {
        scope: drafted,
        listing: l0,
        notes,
        ..
    } = draft;
    if changed.len() > PATCH_PATHS_MAX.min(l0.entries.len() / 2 + 64) {
        return Ok(Err(Discarded::TooManyChanges));
    }
    // Subtrees to list again, and directories whose own entry to describe again.
    let mut relist: Vec<Vec<u8>> = Vec::new();
    let mut parents: HashSet<&[u8]> = HashSet::new();
    match (scope, &drafted) {
        (None, None) => {}
        (Some(roots), Some(drafted)) => {
            // The draft covers part of the scope; what it does not cover is listed anew.
            if !drafted.iter().all(|d| roots.iter().any(|r| within(d, r))) {
                return Ok(Err(Discarded::ScopeChanged));
            }
            for r in roots {
                if !drafted.iter().any(|d| within(r, d)) {
                    relist.push(r.clone());
                }
            }
        }
        _ => return Ok(Err(Discarded::ScopeChanged)),
    }
    for p in changed {
        if p.is_empty() {
            return Ok(Err(Discarded::RootChanged));
        }
        match scope {
            None => {
                relist.push(p.clone());
                parents.insert(parent_of(p));
            }
            Some(roots) => {
                for r in roots {
                    if within(p, r) {
                        relist.push(p.clone());
                        if p != r {
                            parents.insert(parent_of(p));
                        }
                    } else if within(r, p) {
                        relist.push(r.clone());
                    }
                }
            }
        }
    }
    let mut relist = walk::normalize_scope(relist);
    {
        let relist_set: HashSet<&[u8]> = relist.iter().map(|p| p.as_slice()).collect();
        if notes.skipped.iter().any(|s| !covered(s, &relist_set)) {
            return Ok(Err(Discarded::Unreadable));
        }
    }

    // Hard links: the names of one inode share its size, mtime and xattrs, so when one is
    // listed again, all are (they may not be in the change log). Draft names by inode:
    let mut names_of: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
    for (&i, &key) in &notes.multi_link {
        names_of.entry(key).or_default().push(i);
    }
    let n = l0.entries.len();
    let mut drop = vec![false; n];
    let mut fresh = None;
    // Each round adds names; a few rounds settle any real tree.
    for _ in 0..HARD_LINK_ROUNDS {
        // Which draft entries go: those at or below a path listed again, and every other
        // name of an inode one of them has.
        loop {
            let relist_set: HashSet<&[u8]> = relist.iter().map(|p| p.as_slice()).collect();
            for (i, e) in l0.entries.iter().enumerate() {
                drop[i] = !relist_set.is_empty() && covered(&e.path, &relist_set);
            }
            let mut more = Vec::new();
            for (&i, key) in &notes.multi_link {
                if drop[i as usize] {
                    for &j in &names_of[key] {
                        if !drop[j as usize] {
                            more.push(l0.entries[j as usize].path.clone());
                        }
                    }
                }
            }
            if more.is_empty() {
                break;
            }
            relist.extend(more);
            relist = walk::normalize_scope(relist);
        }
        // Listed again, exactly (the lock is held).
        let (listing, fresh_notes) = if relist.is_empty() {
            (
                Listing {
                    entries: Vec::new(),
                    files: HashMap::new(),
                },
                WalkNotes::default(),
            )
        } else {
            walk::walk(root, Some(&relist), false)?
        };
        // A fresh name of an inode that also has a kept draft name: list that one too.
        let mut more = Vec::new();
        for key in fresh_notes.multi_link.values() {
            for &j in names_of.get(key).map_or(&[][..], |v| &v[..]) {
                if !drop[j as usize] {
                    more.push(l0.entries[j as usize].path.clone());
                }
            }
        }
        if more.is_empty() {
            fresh = Some(listing);
            break;
        }
        relist.extend(more);
        relist = walk::normalize_scope(relist);
    }
    let Some(fresh) = fresh else {
        return Ok(Err(Discarded::HardLinks));
    };
    let relist_set: HashSet<&[u8]> = relist.iter().map(|p| p.as_slice()).collect();
    let mut parent_index: HashMap<&[u8], usize> = HashMap::new();
    for (i, e) in l0.entries.iter().enumerate() {
        if !drop[i] && parents.contains(e.path.as_slice()) {
            parent_index.insert(e.path.as_slice(), i);
        }
    }

    // Parents described again, where they stay in the listing.
    let mut described = Vec::new();
    for p in &parents {
        if covered(p, &relist_set) {
            continue;
        }
        let Some(&i) = parent_index.get(p) else {
            return Ok(Err(Discarded::ParentMissing));
        };
        if drop[i] {
            continue;
        }
        match walk::describe_one(root, p)? {
            Some(e) if e.kind == EntryKind::Dir => described.push((i, e)),
            _ => return Ok(Err(Discarded::ParentMissing)),
        }
    }
    let patch = Patch {
        dropped: drop.iter().filter(|d| **d).count(),
        relisted: fresh.entries.len(),
        parents: described.len(),
    };

    // The kept draft entries in their order, then the fresh ones; indices renumbered.
    let Listing {
        entries: mut old_entries,
        files: mut old_files,
    } = l0;
    for (i, e) in described {
        old_entries[i] = e;
    }
    let mut new_index = vec![u32::MAX; n];
    let mut entries = Vec::with_capacity(n - patch.dropped + fresh.entries.len());
    let mut files = HashMap::with_capacity(old_files.len() + fresh.files.len());
    for (i, mut e) in old_entries.into_iter().enumerate() {
        if drop[i] {
            continue;
        }
        let at = entries.len() as u32;
        new_index[i] = at;
        if let Some(first) = e.link_to {
            match new_index.get(first as usize) {
                Some(&f) if f != u32::MAX => e.link_to = Some(f),
                _ => return Ok(Err(Discarded::HardLinks)),
            }
        }
        if let Some(mut f) = old_files.remove(&(i as u32)) {
            f.index = at;
            files.insert(at, f);
        }
        entries.push(e);
    }
    let offset = entries.len() as u32;
    let Listing {
        entries: fresh_entries,
        files: fresh_files,
    } = fresh;
    for mut e in fresh_entries {
        if let Some(first) = e.link_to.as_mut() {
            *first += offset;
        }
        entries.push(e);
    }
    for (i, mut f) in fresh_files {
        f.index = i + offset;
        files.insert(i + offset, f);
    }
    if entries.len() > walk::LISTING_MAX {
        return Err(WalkError::TooLarge);
    }
    let listing = Listing { entries, files };
    if !parents_first(&listing, scope) {
        return Ok(Err(Discarded::Order));
    }
    Ok(Ok((listing, patch)))
}

/// Every entry's parent is an earlier directory entry, or the entry is a scope root (the
/// root itself, first, for the whole tree): what the passive requires.
fn parents_first(listing: &Listing, scope: Option<&[Vec<u8>]>) -> bool {
    let mut dirs: HashSet<&[u8]> = HashSet::new();
    for (i, e) in listing.entries.iter().enumerate() {
        let ok = match scope {
            None if e.path.is_empty() => i == 0,
            None => dirs.contains(parent_of(&e.path)),
            Some(roots) => roots.contains(&e.path) || dirs.contains(parent_of(&e.path)),
        };
        if !ok {
            return false;
        }
        if e.kind == EntryKind::Dir {
            dirs.insert(&e.path);
        }
    }
    true
}

#[cfg(test)]
mod tests;
