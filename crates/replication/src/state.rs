//! What a node remembers about a replicated set across restarts: the generation history
//! (which node captured which range of sequence numbers), how far its copy goes, and whether
//! it shut down cleanly. Written atomically (temp file, fsync, rename, fsync dir).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most generations remembered; older ones are dropped (a node that far behind resyncs).
pub const HISTORY_MAX: usize = 64;

/// One generation: a period in which one node was active and captured from `start_seq` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub id: u64,
    pub start_seq: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub history: Vec<Generation>,
    /// Last seq captured (active) or applied (passive) into this node's copy.
    pub last_seq: u64,
    /// False while the daemon runs; true after a clean stop. A copy left unclean by a crash
    /// may hold applied-but-unsynced ops or miss some: it is out of sync until resynced.
    pub clean: bool,
    /// Known out of sync (overflowed queue, diverged history, refused or failed apply).
    pub out_of_sync: bool,
}

impl SetState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("set.state")
    }

    /// Loads the state; a missing file is a brand-new set (empty copy, clean).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read(Self::path(dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", Self::path(dir).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                clean: true,
                ..Self::default()
            }),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("set.state.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::path(dir))?;
        File::open(dir)?.sync_all()
    }

    /// Starts a new generation at `start_seq` (this node becomes the capturer).
    pub fn begin_generation(&mut self, id: u64, start_seq: u64) {
        if self.history.last().is_some_and(|g| g.id == id) {
            return;
        }
        self.history.push(Generation { id, start_seq });
        if self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
    }
}

/// Can a passive whose copy follows `passive` up to `applied` be caught up by streaming
/// the active's ops after `applied`? Only if its copy is a prefix of the active's history:
/// every generation it holds data from is in the active's history with the same start, and
/// it holds nothing from beyond where the active's history left that generation.
pub fn can_resume(active: &[Generation], passive: &[Generation], applied: u64) -> bool {
    let held: Vec<Generation> = passive
        .iter()
        .copied()
        .filter(|g| g.start_seq <= applied)
        .collect();
    if held.is_empty() {
        return applied == 0 && active.first().is_none_or(|g| g.start_seq == 1);
    }
    if active.len() < held.len() || active[..held.len()] != held[..] {
        return false;
    }
    match active.get(held.len()) {
        Some(next) => applied < next.start_seq,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: u64, start_seq: u64) -> Generation {
        Generation { id, start_seq }
    }

    #[test]
    fn a_fresh_passive_resumes_from_the_first_generation() {
        assert!(can_resume(&[g(2, 1)], &[], 0));
        assert!(can_resume(&[], &[], 0));
    }

    #[test]
    fn an_old_active_that_captured_past_the_failover_point_cannot_resume() {
        // Node A captured 1..=1000 in generation 2; B had applied 990 when it took over.
        let active = [g(2, 1), g(3, 991)];
        assert!(!can_resume(&active, &[g(2, 1)], 1000));
        // A switchover drained everything first: 1000 applied, B starts at 1001.
        assert!(can_resume(&[g(2, 1), g(3, 1001)], &[g(2, 1)], 1000));
    }

    #[test]
    fn unknown_generations_cannot_resume() {
        assert!(!can_resume(&[g(2, 1)], &[g(4, 1)], 10));
        assert!(!can_resume(&[g(2, 1)], &[g(2, 5)], 10));
    }

    #[test]
    fn an_empty_generation_on_the_passive_does_not_matter() {
        // The passive was briefly active at 991 but captured nothing.
        assert!(can_resume(
            &[g(2, 1), g(5, 991)],
            &[g(2, 1), g(3, 991)],
            990
        ));
    }
}
