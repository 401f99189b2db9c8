//! What a node remembers about a replicated set across restarts, and the pure decisions
//! made from it when the two nodes meet: how far their copies agree, whether the passive
//! can simply be streamed to, and whether it holds changes of its own (a divergence).
//!
//! A copy is described by its generation history (like DRBD's generation identifiers):
//! which node captured which range of sequence numbers. Op `s` of a lineage was captured in
//! the generation with the largest `start_seq <= s`. Two copies agree on op `s` exactly when
//! both hold it and both attribute it to the same generation, so the history alone tells
//! where two copies parted, with no data compared. Generation ids are the pair's epochs,
//! which are unique per node (node 0 even, node 1 odd), so a node knows its own.
//!
//! The state file is written atomically (temp file, fsync, rename, fsync dir).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most generations remembered; older ones are dropped (a node that far behind resyncs).
pub const HISTORY_MAX: usize = 64;

/// The generation id of a range no copy can vouch for: what a node that crashed while
/// active may or may not have captured after its last recorded seq. Never a real epoch.
pub const UNKNOWN_GENERATION: u64 = u64::MAX;

/// Seqs skipped after a copy whose end is uncertain (see [`SetState::promote`]), so the new
/// generation can never reuse a seq the crashed one might have used.
pub const CRASH_GAP: u64 = 1 << 40;

/// One generation: a period in which one node was active and captured from `start_seq` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub id: u64,
    pub start_seq: u64,
}

/// A resync this passive started and has not finished: its copy is between its old state
/// (the history and seq kept in [`SetState`]) and the active's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResync {
    pub id: u64,
    /// Where this copy's own divergent files were preserved, if it diverged.
    pub quarantine: Option<PathBuf>,
    /// A record of it failed to apply: the next attempt compares the whole tree.
    #[serde(default)]
    pub failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub history: Vec<Generation>,
    /// Last seq captured (active) or applied and synced (passive) into this node's copy.
    pub last_seq: u64,
    /// False while the daemon runs; true after a clean stop. A copy left unclean by a crash
    /// may hold applied-but-unsynced ops, or captured ops beyond `last_seq`.
    pub clean: bool,
    /// Known out of sync (overflowed queue, failed apply, an unfinished resync).
    pub out_of_sync: bool,
    /// Whether the lineage started from an empty directory (set by the first promotion of
    /// the set, handed down with the history). Two copies with no generation in common
    /// agree only if both started empty.
    #[serde(default)]
    pub origin_empty: Option<bool>,
    /// A resync in progress on this (passive) copy.
    #[serde(default)]
    pub resync: Option<PendingResync>,
    /// Completed resyncs and what they compared, for status and the controlled-shutdown
    /// check (a restart after a clean stop compares nothing).
    #[serde(default)]
    pub resyncs: u64,
    /// The boot the daemon last started in. A copy left unclean in the same boot lost
    /// nothing the kernel had taken: only the daemon died, not the machine.
    #[serde(default)]
    pub boot_id: Option<String>,
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

    /// Like [`save`](SetState::save) without the flushes, for position updates only: a
    /// crash of the machine may bring back an older version (the rename is atomic, so never
    /// a torn one), and an older position is always a safe one to resume from.
    pub fn save_lazily(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("set.state.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, Self::path(dir))
    }

    /// This copy becomes the active one in generation `id`. Returns the first seq it will
    /// capture. `certain` says whether the copy is exactly `last_seq` of its lineage; if
    /// not (a crash left it unclean), the range after `last_seq` is marked unknown and the
    /// new generation starts [`CRASH_GAP`] later, so no seq is ever used twice.
    /// `data_empty` tells a brand-new set whether it starts from an empty directory.
    pub fn promote(&mut self, id: u64, certain: bool, data_empty: bool) -> u64 {
        if self.history.is_empty() && self.origin_empty.is_none() {
            self.origin_empty = Some(data_empty && self.last_seq == 0);
        }
        if self.history.last().is_some_and(|g| g.id == id) {
            return self.last_seq + 1;
        }
        let start = if certain {
            self.last_seq + 1
        } else {
            self.push(Generation {
                id: UNKNOWN_GENERATION,
                start_seq: self.last_seq + 1,
            });
            self.last_seq + CRASH_GAP
        };
        self.push(Generation {
            id,
            start_seq: start,
        });
        start
    }

    fn push(&mut self, g: Generation) {
        // A generation that captured nothing is replaced by the next one at the same start.
        if self
            .history
            .last()
            .is_some_and(|last| last.start_seq == g.start_seq)
        {
            self.history.pop();
        }
        self.history.push(g);
        if self.history.len() > HISTORY_MAX {
            self.history.remove(0);
        }
    }

    /// Is the last generation of this copy's history this node's own (`is_mine` tells
    /// epochs apart)? Then an unclean copy may hold captures beyond `last_seq`.
    pub fn last_generation_is(&self, is_mine: impl Fn(u64) -> bool) -> bool {
        self.history.last().is_some_and(|g| is_mine(g.id))
    }
}

/// The generation that captured op `seq` according to `history`, if any.
fn generation_of(history: &[Generation], seq: u64) -> Option<u64> {
    history
        .iter()
        .rev()
        .find(|g| g.start_seq <= seq)
        .map(|g| g.id)
}

/// The last seq up to which two copies hold exactly the same ops: copy A holds ops
/// `1..=a_last` of history `a`, copy P ops `1..=p_last` of history `p`. 0 if they agree on
/// nothing (whether their starting points agree is [`origins_agree`]'s question).
pub fn common_point(a: &[Generation], a_last: u64, p: &[Generation], p_last: u64) -> u64 {
    let limit = a_last.min(p_last);
    if limit == 0 {
        return 0;
    }
    // Histories keep HISTORY_MAX generations; after more role changes than that the oldest
    // ones are gone, and op 1 is attributed to nothing. A generation both histories still
    // hold (same id, same start) vouches for everything before it: a copy takes on a
    // generation's ops only as an exact prefix of the copy that captured them, or with a
    // resync that makes it equal to that copy and hands it the whole history. So the check
    // begins at the earliest such generation, with everything before it agreed. (Without
    // this, every reconnect after HISTORY_MAX role changes would compare the whole tree.)
    let first_start = |h: &[Generation]| h.first().map_or(1, |g| g.start_seq);
    let (begin, mut agreed) = if first_start(a).max(first_start(p)) > 1 {
        // (An unknown range both hold counts too: what precedes it is agreed, and the loop
        // below stops at it, as it would with the whole histories.)
        match a.iter().find(|g| p.contains(g)) {
            Some(shared) => (shared.start_seq, (shared.start_seq - 1).min(limit)),
            None => return 0,
        }
    } else {
        (1, 0)
    };
    // Between two consecutive generation starts (of either history) both attributions are
    // constant, so checking the first seq of each interval suffices.
    let mut bounds: Vec<u64> = a
        .iter()
        .chain(p)
        .map(|g| g.start_seq)
        .filter(|&s| (begin..=limit).contains(&s))
        .collect();
    if begin <= limit {
        bounds.push(begin);
    }
    bounds.sort_unstable();
    bounds.dedup();
    for (i, &lo) in bounds.iter().enumerate() {
        let hi = bounds.get(i + 1).map_or(limit, |next| next - 1);
        let (ga, gp) = (generation_of(a, lo), generation_of(p, lo));
        if ga.is_none() || ga != gp || ga == Some(UNKNOWN_GENERATION) {
            break;
        }
        agreed = hi;
    }
    agreed
}

/// Do two copies start from the same point (before op 1)? Yes if they share their first
/// generation (one lineage), or if both started empty.
pub fn origins_agree(
    a: &[Generation],
    a_origin_empty: Option<bool>,
    p: &[Generation],
    p_origin_empty: bool,
) -> bool {
    match (a.first(), p.first()) {
        (Some(x), Some(y)) if x == y => true,
        _ => a_origin_empty == Some(true) && p_origin_empty,
    }
}

/// What the passive knows of its own copy when the active introduces itself.
#[derive(Clone, Debug)]
pub struct PassiveCopy<'a> {
    pub state: &'a SetState,
    /// The position the passive is sure of: the applier's in memory while the daemon runs,
    /// else the persisted one. `u64::MAX` for a copy that holds every op its own last
    /// generation captured (see [`holds_own_captures`]).
    pub last_seq: u64,
    /// The copy was left by a crash of this node (its exact end is unknown).
    pub unclean: bool,
    /// The last generation of its history is this node's own.
    pub own_last_generation: bool,
    /// For a copy with no history: is its directory empty?
    pub origin_empty: bool,
}

/// Does this copy hold every op its own last generation captured, whatever position it
/// recorded? Yes when the daemon crashed while this node was active (its last generation is
/// its own), in the boot the machine still runs (the kernel kept every change: capture
/// makes each change before it numbers and sends it), and nothing rewrote the copy since
/// (no resync began, it is not known out of sync). An active records its position only when
/// it stops, so without this a copy that crashed while active agreed with its peer only up
/// to where its generation began, and its failback compared everything that generation
/// touched (the whole tree for the pair's first active).
pub fn holds_own_captures(
    state: &SetState,
    unclean: bool,
    own_last_generation: bool,
    same_boot: bool,
) -> bool {
    unclean && same_boot && own_last_generation && state.resync.is_none() && !state.out_of_sync
}

/// How a passive's copy stands against the active's, decided by the passive from the
/// active's hello and its own state. The active then streams or resyncs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Both copies hold exactly the same ops up to here.
    pub common: u64,
    /// The passive holds exactly ops `1..=common` and nothing else: streaming the active's
    /// ops after `common` makes it an exact copy.
    pub exact: bool,
    /// The passive may hold changes the active does not have (it was active itself, or
    /// its origin differs): before a resync overwrites them they must be preserved.
    pub diverged: bool,
    /// When diverged, whether the passive's own changes since `common` cannot be listed
    /// (its change log is untrusted, or its whole origin differs): then everything the
    /// resync would change is preserved.
    pub changes_unknown: bool,
}

pub fn standing(
    active_history: &[Generation],
    active_last: u64,
    active_origin_empty: Option<bool>,
    passive: &PassiveCopy<'_>,
) -> Standing {
    let p = passive.state;
    let common = common_point(active_history, active_last, &p.history, passive.last_seq);
    let origins = origins_agree(
        active_history,
        active_origin_empty,
        &p.history,
        passive.origin_empty,
    );
    let exact = !passive.unclean
        && !p.out_of_sync
        && p.resync.is_none()
        && passive.last_seq == common
        && (common > 0 || origins);
    // Beyond the common point the passive holds ops the active lacks, or (crashed while
    // active) may hold captures nobody recorded; or its starting content is its own.
    let beyond = passive.last_seq > common;
    let crashed_capturing = passive.unclean && passive.own_last_generation;
    let foreign_origin = common == 0 && !origins && !passive.origin_empty;
    Standing {
        common,
        exact,
        diverged: beyond || crashed_capturing || foreign_origin,
        changes_unknown: foreign_origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(id: u64, start_seq: u64) -> Generation {
        Generation { id, start_seq }
    }

    fn copy(state: &SetState) -> PassiveCopy<'_> {
        PassiveCopy {
            state,
            last_seq: state.last_seq,
            unclean: false,
            own_last_generation: false,
            origin_empty: true,
        }
    }

    fn st(history: Vec<Generation>, last_seq: u64) -> SetState {
        SetState {
            history,
            last_seq,
            clean: true,
            origin_empty: Some(true),
            ..SetState::default()
        }
    }

    #[test]
    fn common_point_follows_the_generations() {
        let a = [g(2, 1), g(3, 991)];
        // The passive streamed from A's generation 2 and stopped at 990: all common.
        assert_eq!(common_point(&a, 2000, &[g(2, 1)], 990), 990);
        // The old active captured up to 1000, but B took over at 991: they part at 990.
        assert_eq!(common_point(&a, 2000, &[g(2, 1)], 1000), 990);
        // Nothing in common.
        assert_eq!(common_point(&a, 2000, &[g(4, 1)], 10), 0);
        assert_eq!(common_point(&a, 2000, &[], 0), 0);
        // Same history, the passive behind.
        assert_eq!(common_point(&a, 2000, &a, 1500), 1500);
    }

    /// The history after `n` generations alternating between the nodes, each capturing 100
    /// ops, with the first `n - keep` dropped as HISTORY_MAX would.
    fn lineage(n: u64, keep: usize) -> Vec<Generation> {
        let all: Vec<_> = (0..n).map(|i| g(i + 2, i * 100 + 1)).collect();
        all[all.len().saturating_sub(keep)..].to_vec()
    }

    #[test]
    fn truncated_histories_still_find_where_they_part() {
        // 200 role changes, both histories cut to the last 64: the passive, one generation
        // behind, is a prefix, as it would be with the whole histories.
        let a = lineage(200, HISTORY_MAX);
        let p = lineage(199, HISTORY_MAX);
        assert_eq!(
            common_point(&a, 20_000, &p, 19_850),
            common_point(&lineage(200, 200), 20_000, &lineage(199, 199), 19_850)
        );
        assert_eq!(common_point(&a, 20_000, &p, 19_850), 19_850);
        // Truncated at different points: the earliest generation both still hold counts.
        let p = lineage(199, 10);
        assert_eq!(common_point(&a, 20_000, &p, 19_850), 19_850);
        // The passive took over after op 19,850 of generation 199 (its own generation 901).
        let mut p = lineage(199, 30);
        p.push(g(901, 19_851));
        assert_eq!(common_point(&a, 20_000, &p, 19_900), 19_850);
        // Nothing shared: nothing agreed, even if the ids look alike.
        let p = vec![g(500, 1), g(501, 50)];
        assert_eq!(common_point(&a, 20_000, &p, 100), 0);
        let p = vec![g(199, 19_001)];
        assert_eq!(common_point(&a, 20_000, &p, 19_900), 0);
        // Neither truncated: unchanged (op 1 must be attributed on both sides).
        assert_eq!(common_point(&[g(2, 1)], 10, &[g(2, 5)], 10), 0);
    }

    #[test]
    fn a_shared_unknown_range_stops_a_truncated_check_too() {
        let full = vec![g(2, 1), g(UNKNOWN_GENERATION, 501), g(4, 500 + CRASH_GAP)];
        let whole = common_point(&full, 600 + CRASH_GAP, &full, 550 + CRASH_GAP);
        assert_eq!(whole, 500);
        // The same histories without their first generation: still 500, never more.
        let cut = full[1..].to_vec();
        assert_eq!(
            common_point(&cut, 600 + CRASH_GAP, &cut, 550 + CRASH_GAP),
            500
        );
        assert_eq!(
            common_point(&full, 600 + CRASH_GAP, &cut, 550 + CRASH_GAP),
            500
        );
    }

    #[test]
    fn an_unknown_range_is_never_common() {
        let mut crashed = st(vec![g(2, 1)], 500);
        let start = crashed.promote(4, false, false);
        assert_eq!(start, 500 + CRASH_GAP);
        assert_eq!(
            crashed.history,
            vec![g(2, 1), g(UNKNOWN_GENERATION, 501), g(4, 500 + CRASH_GAP)]
        );
        // The peer applied up to 800 of generation 2; the crashed node vouches for 500.
        assert_eq!(
            common_point(&crashed.history, start + 10, &[g(2, 1)], 800),
            500
        );
    }

    #[test]
    fn a_clean_prefix_streams() {
        let a = [g(2, 1)];
        let p = st(vec![g(2, 1)], 700);
        let s = standing(&a, 900, Some(true), &copy(&p));
        assert_eq!(
            s,
            Standing {
                common: 700,
                exact: true,
                diverged: false,
                changes_unknown: false
            }
        );
    }

    #[test]
    fn the_old_active_after_a_failover_diverged() {
        // A captured to 1000 in generation 2; B took over at 991 (generation 3).
        let b = [g(2, 1), g(3, 991)];
        let a = st(vec![g(2, 1)], 1000);
        let s = standing(&b, 1200, Some(true), &copy(&a));
        assert_eq!(s.common, 990);
        assert!(!s.exact && s.diverged && !s.changes_unknown);
        // Crashed: it vouches only for 950, but it was capturing: it may hold more.
        let crashed = PassiveCopy {
            last_seq: 950,
            unclean: true,
            own_last_generation: true,
            ..copy(&a)
        };
        let s = standing(&b, 1200, Some(true), &crashed);
        assert_eq!(s.common, 950);
        assert!(!s.exact && s.diverged);
    }

    #[test]
    fn a_copy_that_crashed_while_active_agrees_up_to_where_its_peer_took_over() {
        // A was the pair's first active (generation 2 from op 1) and recorded no position
        // before its daemon was killed; B applied its ops up to 990 and took over at 991.
        let b = [g(2, 1), g(3, 991)];
        let a = st(vec![g(2, 1)], 0);
        assert!(holds_own_captures(&a, true, true, true));
        let crashed = PassiveCopy {
            last_seq: u64::MAX,
            unclean: true,
            own_last_generation: true,
            ..copy(&a)
        };
        let s = standing(&b, 1200, Some(true), &crashed);
        assert_eq!(s.common, 990, "not 0: A holds every op B got from it");
        assert!(!s.exact && s.diverged && !s.changes_unknown);
        // Not after a reboot (unsynced changes may be gone), a resync that began, a copy
        // known out of sync, a clean stop, or a copy whose last generation is the peer's.
        assert!(!holds_own_captures(&a, true, true, false));
        let mut resyncing = a.clone();
        resyncing.resync = Some(PendingResync {
            id: 5,
            quarantine: None,
            failed: false,
        });
        assert!(!holds_own_captures(&resyncing, true, true, true));
        let mut out = a.clone();
        out.out_of_sync = true;
        assert!(!holds_own_captures(&out, true, true, true));
        assert!(!holds_own_captures(&a, false, true, true));
        assert!(!holds_own_captures(&a, true, false, true));
    }

    #[test]
    fn a_crashed_passive_resyncs_without_diverging() {
        let a = [g(2, 1)];
        let p = st(vec![g(2, 1)], 700);
        let crashed = PassiveCopy {
            unclean: true,
            ..copy(&p)
        };
        let s = standing(&a, 900, Some(true), &crashed);
        assert!(!s.exact && !s.diverged);
        assert_eq!(s.common, 700);
    }

    #[test]
    fn new_pairs_need_no_sync_only_if_both_start_empty() {
        let a = [g(2, 1)];
        let fresh = SetState {
            clean: true,
            ..SetState::default()
        };
        let s = standing(&a, 50, Some(true), &copy(&fresh));
        assert!(s.exact && !s.diverged, "{s:?}");
        // The active started from a populated directory: initial sync.
        let s = standing(&a, 50, Some(false), &copy(&fresh));
        assert!(!s.exact && !s.diverged);
        // The passive has files of its own: they are preserved.
        let populated = PassiveCopy {
            origin_empty: false,
            ..copy(&fresh)
        };
        let s = standing(&a, 50, Some(true), &populated);
        assert!(!s.exact && s.diverged && s.changes_unknown);
    }

    #[test]
    fn both_active_in_a_split_brain_diverge() {
        // Parted at 400: A kept generation 2, B started 3; both wrote.
        let a = [g(2, 1)];
        let b = st(vec![g(2, 1), g(3, 401)], 600);
        let s = standing(&a, 800, Some(true), &copy(&b));
        assert_eq!(s.common, 400);
        assert!(s.diverged && !s.exact);
    }

    #[test]
    fn an_unfinished_resync_is_not_exact() {
        let a = [g(2, 1)];
        let mut p = st(vec![g(2, 1)], 700);
        p.resync = Some(PendingResync {
            id: 1,
            quarantine: None,
            failed: false,
        });
        assert!(!standing(&a, 900, Some(true), &copy(&p)).exact);
    }

    #[test]
    fn a_generation_that_captured_nothing_is_replaced() {
        let mut s = st(vec![g(2, 1)], 10);
        assert_eq!(s.promote(3, true, false), 11);
        if let Some(x) = s.history.last_mut() {
            x.id = 3;
        }
        // Promoted again (epoch 5) without capturing anything in 3.
        assert_eq!(s.promote(5, true, false), 11);
        assert_eq!(s.history, vec![g(2, 1), g(5, 11)]);
    }
}
