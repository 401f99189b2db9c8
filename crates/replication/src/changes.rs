//! The change log: which paths this node changed while it was active, by ranges of sequence
//! numbers, kept on disk until the peer holds those changes durably.
//!
//! It is what makes a resync cheap. When the passive cannot be caught up from the queue (it
//! was away too long, a node crashed, or both nodes were active), only the paths in the two
//! nodes' change logs since their common point are compared, not the whole tree, and the
//! passive's own changes since then are the files it must preserve before they are
//! overwritten (quarantine). Like DRBD's activity log, but by path.
//!
//! The log is a list of segments, files named by the first seq they cover. A segment records
//! each path the first time an op in its range touches it: a path changed at seq `s` is in
//! the segment whose range holds `s`. A query "since `seq`" unions every segment whose range
//! ends after `seq`, which is a superset of the paths changed after `seq`. Segments rotate
//! while the peer keeps up and are deleted once the peer has persisted their whole range.
//!
//! A path changed only by writes is recorded with the 32 KiB blocks they touched (a line
//! `@<first block>+<count> <path>`), so a resync of a big file that changed a little sends
//! just those blocks, with no hashing of the rest: DRBD's dirty bitmap, per file. Any other
//! change (create, rename, truncate, metadata...) marks the path as changed as a whole.
//!
//! Lines are appended with `write(2)` as ops are recorded, without fsync: the page cache
//! survives a crash of the daemon. It does not survive a crash of the machine, so each
//! segment names the boot it was written in, and a clean shutdown seals it (appends a line
//! and fsyncs). A segment that is neither sealed nor from the current boot is untrusted: a
//! query that needs it answers "unknown", and the caller compares the whole tree.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, warn};
use understudy_oplog::{FileRef, Op};

/// Most distinct paths one segment records before it degrades to "everything changed".
pub const SEGMENT_PATHS_MAX: usize = 100_000;
/// A segment is closed and a new one started at most this often (only while the peer keeps
/// up, so that old segments can be deleted).
pub const ROTATE_AFTER: Duration = Duration::from_secs(2);
/// Most closed segments kept; past it no segment is closed (the open one keeps growing).
pub const SEGMENTS_MAX: usize = 64;

const HEADER: &str = "understudy-changes-v1";
const SEALED: &[u8] = b"#sealed";
const EVERYTHING: &[u8] = b"*";

/// The paths changed over a range of seqs, or everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Every path of the tree may have changed: compare all of it.
    pub everything: bool,
    pub paths: HashSet<Vec<u8>>,
    /// Of `paths`, those changed only by writes, with the blocks (of [`BLOCK_SIZE`] bytes)
    /// the writes touched: only these blocks can differ.
    pub blocks: HashMap<Vec<u8>, BTreeSet<u64>>,
}

impl Changed {
    pub fn everything() -> Self {
        Changed {
            everything: true,
            ..Changed::default()
        }
    }

    /// Paths changed as a whole (no block list).
    pub fn whole(paths: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Changed {
            paths: paths.into_iter().collect(),
            ..Changed::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.everything && self.paths.is_empty()
    }

    pub fn merge(&mut self, other: Changed) {
        if other.everything || self.everything {
            *self = Changed::everything();
            return;
        }
        for path in other.paths {
            let theirs = other.blocks.get(&path);
            let had = self.paths.contains(&path);
            match (had, theirs) {
                // New here: take it as they have it.
                (false, Some(b)) => {
                    self.blocks.insert(path.clone(), b.clone());
                }
                (false, None) => {}
                // Changed by writes on both sides: the union of the blocks.
                (true, Some(b)) if self.blocks.contains_key(&path) => {
                    self.blocks.entry(path.clone()).or_default().extend(b);
                }
                (true, Some(_)) => {}
                // Changed as a whole on their side: as a whole.
                (true, None) => {
                    self.blocks.remove(&path);
                }
            }
            self.paths.insert(path);
        }
    }

    /// Sorted paths, or `None` for everything (the form a sync scope takes).
    pub fn into_scope(self) -> Option<Vec<Vec<u8>>> {
        if self.everything {
            return None;
        }
        let mut v: Vec<Vec<u8>> = self.paths.into_iter().collect();
        v.sort();
        Some(v)
    }

    /// The block lists of the paths changed only by writes, as runs `[first, end)`.
    pub fn block_runs(&self) -> HashMap<Vec<u8>, Vec<(u64, u64)>> {
        self.blocks
            .iter()
            .map(|(path, blocks)| {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &b in blocks {
                    match runs.last_mut() {
                        Some((_, end)) if *end == b => *end = b + 1,
                        _ => runs.push((b, b + 1)),
                    }
                }
                (path.clone(), runs)
            })
            .collect()
    }
}

/// The block size of block lists (the same as resync's hash blocks).
pub const BLOCK_SIZE: u64 = crate::hashing::BLOCK_SIZE as u64;
/// Most blocks one segment lists in all; past it, paths written to count as changed whole.
pub const SEGMENT_BLOCKS_MAX: usize = 1 << 20;

/// How a path changed within one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PathDirt {
    whole: bool,
    blocks: BTreeSet<u64>,
}

struct Closed {
    start: u64,
    path: PathBuf,
    trusted: bool,
}

struct Open {
    start: u64,
    file: File,
    path: PathBuf,
    paths: HashMap<Vec<u8>, PathDirt>,
    blocks: usize,
    everything: bool,
    opened: Instant,
}

pub struct ChangeLog {
    dir: PathBuf,
    boot_id: String,
    closed: Vec<Closed>,
    open: Option<Open>,
    /// Segments covering seqs up to here were deleted: what changed then is unknown.
    pruned_upto: u64,
    /// The paths changed after a seq, noted exactly, while a resync runs.
    watch: Option<Watch>,
}

/// Most paths a [`Watch`] holds before it gives up (the draft is then not used).
pub const WATCH_PATHS_MAX: usize = 100_000;

/// Every path noted after `after`, with the last seq that touched it, in memory: exact
/// where segments are coarse (a segment holds every path of its whole range).
struct Watch {
    after: u64,
    last_seq: HashMap<Vec<u8>, u64>,
    overflowed: bool,
}

const PRUNED: &str = "pruned";

/// This boot's identity (a random UUID the kernel makes at boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn segment_name(start: u64) -> String {
    format!("seg-{start:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

impl ChangeLog {
    /// Opens the log in `dir` (created if missing). Segments from an earlier run are kept
    /// closed; the next note starts a new one.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_with_boot(dir, &boot_id())
    }

    /// [`open`](ChangeLog::open) with an explicit boot id (tests simulate reboots).
    pub fn open_with_boot(dir: &Path, boot_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut closed = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(start) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            let path = entry.path();
            let trusted = match read_segment(&path) {
                Ok(seg) => seg.boot == boot_id || seg.sealed,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable change-log segment; it counts as everything changed");
                    false
                }
            };
            closed.push(Closed {
                start,
                path,
                trusted,
            });
        }
        closed.sort_by_key(|c| c.start);
        let pruned_upto = std::fs::read_to_string(dir.join(PRUNED))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(ChangeLog {
            dir: dir.to_path_buf(),
            boot_id: boot_id.to_string(),
            closed,
            open: None,
            pruned_upto,
            watch: None,
        })
    }

    /// Records the paths `op` (numbered `seq`) touches. Called for every captured op, under
    /// the queue's lock: a hash lookup, and one small `write(2)` the first time a path is
    /// seen in the segment.
    pub fn note(&mut self, seq: u64, op: &Op) {
        let written = match op {
            Op::Write {
                file: FileRef::Path(p),
                offset,
                data,
            } if !data.is_empty() => Some((p.as_slice(), *offset, data.len() as u64)),
            _ => None,
        };
        let paths = crate::queue::op_paths(op);
        if paths.is_empty() {
            return;
        }
        if let Some(w) = self
            .watch
            .as_mut()
            .filter(|w| seq > w.after && !w.overflowed)
        {
            for path in &paths {
                if let Some(last) = w.last_seq.get_mut(*path) {
                    *last = seq;
                } else if w.last_seq.len() >= WATCH_PATHS_MAX {
                    w.overflowed = true;
                    w.last_seq = HashMap::new();
                    break;
                } else {
                    w.last_seq.insert(path.to_vec(), seq);
                }
            }
        }
        if self.open.is_none() {
            if let Err(e) = self.start_segment(seq) {
                error!(dir = %self.dir.display(), error = %e, "cannot start a change-log segment; changes will be unknown");
                return;
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        match written {
            Some((path, offset, len)) => note_blocks(open, path, offset, len),
            None => {
                for path in paths {
                    note_path(open, path);
                }
            }
        }
    }

    /// Marks everything changed from `seq` on (a copy whose content is unknown).
    pub fn note_everything(&mut self, seq: u64) {
        if self.open.is_none() && self.start_segment(seq).is_err() {
            return;
        }
        if let Some(open) = self.open.as_mut() {
            if !open.everything {
                open.everything = true;
                open.paths.clear();
                open.blocks = 0;
                append_line(open, EVERYTHING);
            }
        }
    }

    fn start_segment(&mut self, start: u64) -> std::io::Result<()> {
        let path = self.dir.join(segment_name(start));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(format!("{HEADER} boot={}\n", self.boot_id).as_bytes())?;
        self.open = Some(Open {
            start,
            file,
            path,
            paths: HashMap::new(),
            blocks: 0,
            everything: false,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// Closes the open segment if it is old enough and the peer has persisted past its start
    /// (so it can be deleted soon): the next note starts a new one. Cheap to call often.
    pub fn maybe_rotate(&mut self, peer_persisted: u64) {
        let due = self
            .open
            .as_ref()
            .is_some_and(|o| peer_persisted >= o.start && o.opened.elapsed() >= ROTATE_AFTER);
        if due && self.closed.len() < SEGMENTS_MAX {
            if let Some(o) = self.open.take() {
                self.closed.push(Closed {
                    start: o.start,
                    path: o.path,
                    trusted: true,
                });
            }
        }
    }

    /// Deletes the closed segments the peer holds durably: those whose whole range ends at or
    /// before `peer_persisted` (a segment ends where the next one starts).
    pub fn prune(&mut self, peer_persisted: u64) {
        let next_starts: Vec<u64> = self
            .closed
            .iter()
            .skip(1)
            .map(|c| c.start)
            .chain(self.open.as_ref().map(|o| o.start))
            .collect();
        let mut doomed = Vec::new();
        let mut keep = Vec::new();
        for (seg, next) in self.closed.drain(..).zip(
            next_starts
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat(None)),
        ) {
            match next {
                Some(next) if next.saturating_sub(1) <= peer_persisted => {
                    doomed.push((seg, next - 1))
                }
                _ => keep.push(seg),
            }
        }
        self.closed = keep;
        let Some(upto) = doomed.iter().map(|(_, end)| *end).max() else {
            return;
        };
        // Durable before any segment goes: a query reaching back past it must answer
        // "unknown", never an incomplete list.
        if upto > self.pruned_upto {
            if let Err(e) = write_durably(&self.dir.join(PRUNED), upto.to_string().as_bytes()) {
                error!(error = %e, "cannot record pruned change-log segments; keeping them");
                self.closed.extend(doomed.into_iter().map(|(s, _)| s));
                self.closed.sort_by_key(|c| c.start);
                return;
            }
            self.pruned_upto = upto;
        }
        for (seg, _) in doomed {
            let _ = std::fs::remove_file(&seg.path);
        }
    }

    /// Everything changed after `seq` as far as this log knows: `everything` if a segment
    /// it needs is untrusted or degraded.
    pub fn since(&self, seq: u64) -> Changed {
        if seq < self.pruned_upto {
            return Changed::everything();
        }
        let mut out = Changed::default();
        let ends: Vec<Option<u64>> = self
            .closed
            .iter()
            .skip(1)
            .map(|c| Some(c.start))
            .chain(std::iter::once(self.open.as_ref().map(|o| o.start)))
            .collect();
        for (seg, next_start) in self.closed.iter().zip(ends) {
            // The segment covers [start, next_start); skip it if that ends at or before seq.
            if next_start.is_some_and(|n| n <= seq.saturating_add(1)) {
                continue;
            }
            if !seg.trusted {
                return Changed::everything();
            }
            match read_segment(&seg.path) {
                Ok(s) if s.everything => return Changed::everything(),
                Ok(s) => out.merge(changed_of(&s.paths)),
                Err(_) => return Changed::everything(),
            }
        }
        if let Some(open) = &self.open {
            if open.everything {
                return Changed::everything();
            }
            out.merge(changed_of(&open.paths));
        }
        out
    }

    /// Forgets everything: this node's copy is now exactly the peer's lineage (it resumed
    /// streaming or finished a resync), so its own past changes matter no more.
    pub fn clear(&mut self) {
        for seg in self.closed.drain(..) {
            let _ = std::fs::remove_file(&seg.path);
        }
        if let Some(o) = self.open.take() {
            let _ = std::fs::remove_file(&o.path);
        }
        let _ = std::fs::remove_file(self.dir.join(PRUNED));
        self.pruned_upto = 0;
    }

    /// Starts noting, in memory, every path an op after `after` touches (replacing a watch
    /// already running). Call with `after` the last seq captured.
    pub fn watch(&mut self, after: u64) {
        self.watch = Some(Watch {
            after,
            last_seq: HashMap::new(),
            overflowed: false,
        });
    }

    /// Whether an op after `seq` touched `path` or one of its ancestors (a rename of a
    /// directory moves what is below it), as the watch started with `after` saw it. `None`
    /// when that watch is not running, overflowed, or started after `seq`.
    pub fn touched_after(&self, after: u64, path: &[u8], seq: u64) -> Option<bool> {
        let w = self
            .watch
            .as_ref()
            .filter(|w| w.after == after && !w.overflowed && seq >= w.after)?;
        let touched = |p: &[u8]| w.last_seq.get(p).is_some_and(|&s| s > seq);
        let mut p = path;
        loop {
            if touched(p) {
                return Some(true);
            }
            match p.iter().rposition(|&c| c == b'/') {
                Some(i) => p = &p[..i],
                None => return Some(!p.is_empty() && touched(b"")),
            }
        }
    }

    /// Ends the watch started with `after`: the paths touched since, or `None` if there are
    /// too many or the watch is not that one.
    pub fn take_watch(&mut self, after: u64) -> Option<HashSet<Vec<u8>>> {
        match self.watch.take() {
            Some(w) if w.after == after && !w.overflowed => Some(w.last_seq.into_keys().collect()),
            Some(w) if w.after != after => {
                self.watch = Some(w);
                None
            }
            _ => None,
        }
    }

    /// Clean shutdown: seal every segment written in this boot, so the next run trusts them
    /// even after a reboot.
    pub fn seal(&mut self) {
        if let Some(o) = self.open.take() {
            self.closed.push(Closed {
                start: o.start,
                path: o.path,
                trusted: true,
            });
        }
        for seg in &self.closed {
            if !seg.trusted {
                continue;
            }
            let sealed = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .and_then(|mut f| {
                    f.write_all(&[SEALED, b"\n"].concat())?;
                    f.sync_all()
                });
            if let Err(e) = sealed {
                error!(path = %seg.path.display(), error = %e, "cannot seal a change-log segment");
            }
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }

    /// Paths recorded in the open segment (for status).
    pub fn open_paths(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.paths.len() as u64)
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn changed_of(paths: &HashMap<Vec<u8>, PathDirt>) -> Changed {
    let mut out = Changed::default();
    for (path, dirt) in paths {
        out.paths.insert(path.clone());
        if !dirt.whole {
            out.blocks.insert(path.clone(), dirt.blocks.clone());
        }
    }
    out
}

/// Room for one more path, or the segment degrades to "everything".
fn room_for_path(open: &mut Open) -> bool {
    if open.paths.len() < SEGMENT_PATHS_MAX {
        return true;
    }
    open.everything = true;
    open.paths.clear();
    open.blocks = 0;
    append_line(open, EVERYTHING);
    false
}

fn note_path(open: &mut Open, path: &[u8]) {
    if open.everything || open.paths.get(path).is_some_and(|d| d.whole) {
        return;
    }
    if !open.paths.contains_key(path) && !room_for_path(open) {
        return;
    }
    let dirt = open.paths.entry(path.to_vec()).or_default();
    open.blocks -= dirt.blocks.len();
    *dirt = PathDirt {
        whole: true,
        blocks: BTreeSet::new(),
    };
    append_line(open, &escape(path));
}

/// A write of `len` bytes at `offset`: the blocks it touched (the first time each is seen).
fn note_blocks(open: &mut Open, path: &[u8], offset: u64, len: u64) {
    if open.everything || open.paths.get(path).is_some_and(|d| d.whole) {
        return;
    }
    let first = offset / BLOCK_SIZE;
    let last = (offset + len - 1) / BLOCK_SIZE;
    let known = open
        .paths
        .get(path)
        .is_some_and(|d| (first..=last).all(|b| d.blocks.contains(&b)));
    if known {
        return;
    }
    if open.blocks + (last - first + 1) as usize > SEGMENT_BLOCKS_MAX {
        // Too many to list: this file counts as changed whole.
        note_path(open, path);
        return;
    }
    if !open.paths.contains_key(path) && !room_for_path(open) {
        return;
    }
    let dirt = open.paths.entry(path.to_vec()).or_default();
    let before = dirt.blocks.len();
    dirt.blocks.extend(first..=last);
    open.blocks += dirt.blocks.len() - before;
    let mut line = format!("@{first}+{} ", last - first + 1).into_bytes();
    line.extend_from_slice(&escape(path));
    append_line(open, &line);
}

fn append_line(open: &mut Open, line: &[u8]) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line);
    buf.push(b'\n');
    if let Err(e) = open.file.write_all(&buf) {
        // Without the line this segment cannot be trusted: make it say so.
        error!(error = %e, "cannot append to the change log; the segment counts as everything");
        open.everything = true;
        open.paths.clear();
        open.blocks = 0;
    }
}

struct Segment {
    boot: String,
    sealed: bool,
    everything: bool,
    paths: HashMap<Vec<u8>, PathDirt>,
}

fn read_segment(path: &Path) -> std::io::Result<Segment> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let boot = header
        .trim()
        .strip_prefix(HEADER)
        .and_then(|rest| rest.trim().strip_prefix("boot="))
        .ok_or_else(|| std::io::Error::other("not a change-log segment"))?
        .to_string();
    let mut seg = Segment {
        boot,
        sealed: false,
        everything: false,
        paths: HashMap::new(),
    };
    for line in reader.split(b'\n') {
        let line = line?;
        if line == SEALED {
            seg.sealed = true;
        } else if line == EVERYTHING {
            seg.everything = true;
        } else if let Some((first, count, path)) = parse_blocks(&line) {
            let dirt = seg.paths.entry(unescape(path)).or_default();
            if !dirt.whole {
                dirt.blocks.extend(first..first.saturating_add(count));
            }
        } else if !line.is_empty() {
            seg.paths.insert(
                unescape(&line),
                PathDirt {
                    whole: true,
                    blocks: BTreeSet::new(),
                },
            );
        }
    }
    if seg.everything {
        seg.paths.clear();
    }
    Ok(seg)
}

/// `@<first>+<count> <escaped path>`.
fn parse_blocks(line: &[u8]) -> Option<(u64, u64, &[u8])> {
    let rest = line.strip_prefix(b"@")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let (range, path) = (
        std::str::from_utf8(&rest[..space]).ok()?,
        &rest[space + 1..],
    );
    let (first, count) = range.split_once('+')?;
    Some((first.parse().ok()?, count.parse().ok()?, path))
}

/// Paths are bytes: newlines and backslashes are escaped so the log stays line-based, and a
/// path that would read as a marker or block line gets a leading backslash.
fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 1);
    if path == EVERYTHING || path.starts_with(b"#") || path.starts_with(b"@") {
        out.push(b'\\');
    }
    for &b in path {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
    out
}

fn unescape(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut it = line.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(&other) => out.push(other),
                None => {}
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_oplog::FileRef;

    fn write(path: &str) -> Op {
        Op::Write {
            file: FileRef::Path(path.as_bytes().to_vec()),
            offset: 0,
            data: vec![1],
        }
    }

    fn set(paths: &[&str]) -> HashSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_watch_holds_exactly_the_paths_noted_after_its_seq() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        log.note(1, &write("before"));
        log.watch(1);
        log.note(2, &write("a"));
        log.note(3, &write("a"));
        log.note(
            4,
            &Op::Rename {
                from: b"b".to_vec(),
                to: b"c/d".to_vec(),
                flags: 0,
                orphan: None,
            },
        );
        // Another watch's end does not end this one.
        assert_eq!(log.take_watch(2), None);
        assert_eq!(log.take_watch(1), Some(set(&["a", "b", "c/d"])));
        // Taken: no watch runs any more.
        log.note(5, &write("e"));
        assert_eq!(log.take_watch(1), None);
        // The segment still holds every path, the watch or not.
        assert_eq!(log.since(0).paths, set(&["before", "a", "b", "c/d", "e"]));
    }

    #[test]
    fn touched_after_looks_at_the_path_and_its_ancestors_since_a_seq() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        assert_eq!(log.touched_after(10, b"a/b/f", 10), None);
        log.watch(10);
        log.note(12, &write("a/b/f"));
        log.note(
            15,
            &Op::Rename {
                from: b"x".to_vec(),
                to: b"a/b".to_vec(),
                flags: 0,
                orphan: None,
            },
        );
        assert_eq!(log.touched_after(10, b"a/b/f", 10), Some(true));
        // The rename of an ancestor, after the write.
        assert_eq!(log.touched_after(10, b"a/b/f", 12), Some(true));
        assert_eq!(log.touched_after(10, b"a/b/f", 15), Some(false));
        assert_eq!(log.touched_after(10, b"a/c", 10), Some(false));
        // Not this watch, or before it began: it cannot say.
        assert_eq!(log.touched_after(11, b"a/c", 12), None);
        assert_eq!(log.touched_after(10, b"a/c", 9), None);
    }

    #[test]
    fn a_watch_that_overflows_cannot_tell() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        log.watch(0);
        for i in 0..=WATCH_PATHS_MAX as u64 {
            log.note(i + 1, &write(&format!("f{i}")));
        }
        assert_eq!(log.take_watch(0), None);
    }

    #[test]
    fn since_unions_the_segments_that_reach_past_the_seq() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        log.note(1, &write("a"));
        log.note(2, &write("b"));
        // Closed by hand, as rotation would after the peer caught up.
        let o = log.open.take().expect("open segment");
        log.closed.push(Closed {
            start: o.start,
            path: o.path,
            trusted: true,
        });
        log.note(10, &write("c"));
        log.note(11, &write("a"));
        assert_eq!(log.since(0).paths, set(&["a", "b", "c"]));
        // The first segment covers 1..=9: it is still needed after 5, not after 9.
        assert_eq!(log.since(5).paths, set(&["a", "b", "c"]));
        assert_eq!(log.since(9).paths, set(&["a", "c"]));
        log.prune(9);
        assert_eq!(
            log.closed.len(),
            0,
            "the first segment is durable on the peer"
        );
        assert_eq!(log.since(9).paths, set(&["a", "c"]));
        // Before the pruned range, nothing is known any more.
        assert!(log.since(5).everything);
        let reopened = ChangeLog::open_with_boot(dir.path(), "b1").expect("reopen");
        assert!(reopened.since(5).everything);
    }

    #[test]
    fn segments_survive_a_daemon_crash_but_not_a_reboot_unless_sealed() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        log.note(1, &write("x\ny"));
        drop(log);
        // Same boot: the page cache kept the lines.
        let log = ChangeLog::open_with_boot(dir.path(), "b1").expect("reopen");
        assert_eq!(log.since(0).paths, set(&["x\ny"]));
        // Another boot: unknown.
        let log = ChangeLog::open_with_boot(dir.path(), "b2").expect("reopen");
        assert!(log.since(0).everything);
        // Sealed by a clean stop: trusted after a reboot.
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("reopen");
        log.note(5, &write("#odd"));
        log.seal();
        let log = ChangeLog::open_with_boot(dir.path(), "b3").expect("reopen");
        assert_eq!(log.since(0).paths, set(&["x\ny", "#odd"]));
    }

    #[test]
    fn too_many_paths_degrade_to_everything() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        for i in 0..=SEGMENT_PATHS_MAX {
            log.note(i as u64 + 1, &write(&format!("f{i}")));
        }
        assert!(log.since(0).everything);
        let log = ChangeLog::open_with_boot(dir.path(), "b1").expect("reopen");
        assert!(log.since(0).everything);
    }

    #[test]
    fn writes_are_listed_by_block_and_anything_else_makes_a_path_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        let w = |path: &str, offset: u64, len: usize| Op::Write {
            file: FileRef::Path(path.as_bytes().to_vec()),
            offset,
            data: vec![0; len],
        };
        log.note(1, &w("big", 0, 10));
        log.note(2, &w("big", 5 * BLOCK_SIZE - 1, 2));
        log.note(3, &w("@odd", 0, 1));
        log.note(4, &w("other", 0, 1));
        log.note(
            5,
            &Op::Truncate {
                file: FileRef::Path(b"other".to_vec()),
                size: 0,
            },
        );
        log.note(6, &w("other", 0, 1));
        let c = log.since(0);
        assert_eq!(c.paths, set(&["big", "@odd", "other"]));
        assert_eq!(c.block_runs()[&b"big".to_vec()], vec![(0, 1), (4, 6)]);
        assert!(
            !c.blocks.contains_key(b"other".as_slice()),
            "truncated: whole"
        );
        // The same from disk (a restart in the same boot).
        drop(log);
        let log = ChangeLog::open_with_boot(dir.path(), "b1").expect("reopen");
        let d = log.since(0);
        assert_eq!(d, c);
        // Merged with a passive's whole-path changes, a file both changed is whole.
        let mut m = d.clone();
        m.merge(Changed::whole([b"big".to_vec(), b"mine".to_vec()]));
        assert!(!m.blocks.contains_key(b"big".as_slice()));
        assert!(m.paths.contains(b"mine".as_slice()));
    }

    #[test]
    fn renames_note_both_names_and_clear_forgets() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut log = ChangeLog::open_with_boot(dir.path(), "b1").expect("open");
        log.note(
            1,
            &Op::Rename {
                from: b"d1".to_vec(),
                to: b"d2".to_vec(),
                flags: 0,
                orphan: None,
            },
        );
        assert_eq!(log.since(0).paths, set(&["d1", "d2"]));
        log.clear();
        assert!(log.since(0).is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
