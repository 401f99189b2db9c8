//! Spots files that are fsynced after (nearly) every write: a database's log, an append-only
//! journal. A write to such a file is about to be waited for, so both ends hurry it: the
//! active sends it without the coalescing delay, and the passive flushes it as soon as it is
//! applied, in parallel with the active's own flush instead of after the barrier arrives.
//! That takes the passive's flush off the fsync's critical path for the commonest synced
//! pattern, write then fdatasync.
//!
//! Files written many times between fsyncs (a checkpoint, a bulk copy) never qualify, so the
//! passive does not flush each of their writes: at most about one extra flush per barrier
//! the application asked for. Pure logic with explicit time, for both ends.

use std::time::{Duration, Instant};

use understudy_oplog::FileRef;

/// Files followed at once: a database's log and a few others.
const TRACKED: usize = 4;
/// Writes between two fsyncs of a file that still count as "fsynced after every write".
const WRITES_PER_FSYNC_MAX: u32 = 2;
/// A file last fsynced longer ago than this is no longer expected to be fsynced soon.
const RECENT: Duration = Duration::from_millis(100);

struct Tracked {
    file: FileRef,
    last_fsync: Instant,
    /// Writes since `last_fsync`.
    writes: u32,
    /// The previous interval between fsyncs held at most `WRITES_PER_FSYNC_MAX` writes.
    qualified: bool,
}

#[derive(Default)]
pub(crate) struct FsyncPattern {
    files: [Option<Tracked>; TRACKED],
}

impl FsyncPattern {
    /// An fsync of `file` (a barrier) was seen at `now`.
    pub(crate) fn on_fsync(&mut self, file: &FileRef, now: Instant) {
        // The root's barrier is a drain's or a checkpoint's, not an application's pattern.
        if matches!(file, FileRef::Path(p) if p.is_empty()) {
            return;
        }
        if let Some(t) = self.files.iter_mut().flatten().find(|t| t.file == *file) {
            t.qualified = t.writes <= WRITES_PER_FSYNC_MAX;
            t.writes = 0;
            t.last_fsync = now;
            return;
        }
        // A new file takes a free slot, else the one fsynced longest ago.
        let slot = match self.files.iter().position(Option::is_none) {
            Some(i) => i,
            None => (0..TRACKED)
                .min_by_key(|&i| self.files[i].as_ref().map(|t| t.last_fsync))
                .unwrap_or(0),
        };
        self.files[slot] = Some(Tracked {
            file: file.clone(),
            last_fsync: now,
            writes: 0,
            qualified: false,
        });
    }

    /// A write to `file` was seen at `now`: true if an fsync of it is expected right after.
    pub(crate) fn on_write(&mut self, file: &FileRef, now: Instant) -> bool {
        let Some(t) = self.files.iter_mut().flatten().find(|t| t.file == *file) else {
            return false;
        };
        t.writes = t.writes.saturating_add(1);
        t.qualified
            && t.writes <= WRITES_PER_FSYNC_MAX
            && now.saturating_duration_since(t.last_fsync) < RECENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> FileRef {
        FileRef::Path(p.as_bytes().to_vec())
    }

    #[test]
    fn a_file_fsynced_after_each_write_qualifies_after_one_interval() {
        let mut p = FsyncPattern::default();
        let t0 = Instant::now();
        let log = path("db/wal");
        assert!(!p.on_write(&log, t0), "never fsynced: nothing expected");
        p.on_fsync(&log, t0);
        assert!(!p.on_write(&log, t0), "one interval not seen whole yet");
        p.on_fsync(&log, t0);
        assert!(p.on_write(&log, t0 + Duration::from_millis(1)));
        assert!(
            p.on_write(&log, t0 + Duration::from_millis(1)),
            "two writes per fsync"
        );
        assert!(
            !p.on_write(&log, t0 + Duration::from_millis(1)),
            "a third is a bulk write"
        );
        p.on_fsync(&log, t0 + Duration::from_millis(2));
        assert!(
            !p.on_write(&log, t0 + Duration::from_millis(3)),
            "three writes: disqualified"
        );
        p.on_fsync(&log, t0 + Duration::from_millis(4));
        assert!(
            p.on_write(&log, t0 + Duration::from_millis(5)),
            "one write: qualified again"
        );
        p.on_fsync(&log, t0 + Duration::from_millis(5));
        assert!(!p.on_write(&log, t0 + RECENT * 2), "fsynced too long ago");
        assert!(!p.on_write(&path("db/other"), t0), "another file");
    }

    #[test]
    fn the_roots_barrier_is_no_pattern_and_old_files_make_room() {
        let mut p = FsyncPattern::default();
        let t0 = Instant::now();
        let root = path("");
        p.on_fsync(&root, t0);
        p.on_fsync(&root, t0);
        assert!(!p.on_write(&root, t0));
        let log = path("wal");
        p.on_fsync(&log, t0);
        p.on_fsync(&log, t0);
        // Four other files fsynced later push the log out.
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            p.on_fsync(&path(n), t0 + Duration::from_millis(i as u64 + 1));
        }
        assert!(p.on_write(&log, t0), "still tracked with three others");
        p.on_fsync(&log, t0 + Duration::from_millis(5));
        p.on_fsync(&path("d"), t0 + Duration::from_millis(6));
        assert!(
            !p.on_write(&path("a"), t0),
            "a, fsynced longest ago, made room for d"
        );
        assert!(p.on_write(&log, t0 + Duration::from_millis(7)));
    }
}
