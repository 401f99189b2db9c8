//! Escalation of resource failures: which step of a resource's failure ladder to take,
//! given how many times it failed within its window, and whether another automatic move
//! of the active role is still allowed.
//!
//! Like Neverfail's 1st/2nd/3rd failure actions: for example restart, restart, then
//! switchover. A resource that keeps failing on both nodes must not ping-pong: the number
//! of automatic moves travels with the role (in `NodeStatus::auto_moves`) and is capped.

use std::collections::VecDeque;

use crate::invariant;
use crate::types::Time;

/// One rung of a resource's failure ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureStep {
    /// Stop and start this resource again, on this node.
    Restart,
    /// Move the active role to the peer, if it is healthy; otherwise alert.
    Switchover,
    /// Only raise an alert.
    Alert,
    /// Run the resource's configured failure command (`run = "..."`), the n-th one.
    Run(u8),
}

/// A resource's ladder and window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationPolicy {
    /// The step for the 1st, 2nd, ... failure within the window; the last one repeats.
    pub steps: Vec<FailureStep>,
    pub window_ms: u64,
}

/// Bound on remembered failures per resource: only the count within the window matters,
/// and no ladder is longer than this.
const FAILURES_KEPT: usize = 64;
/// Bound on remembered automatic moves.
const MOVES_KEPT: usize = 256;

#[derive(Clone, Debug)]
pub struct Escalation {
    policies: Vec<EscalationPolicy>,
    failures: Vec<VecDeque<Time>>,
    auto_moves: VecDeque<Time>,
    pub auto_move_limit: u32,
    pub auto_move_window_ms: u64,
}

impl Escalation {
    pub fn new(
        policies: Vec<EscalationPolicy>,
        auto_move_limit: u32,
        auto_move_window_ms: u64,
    ) -> Escalation {
        for p in &policies {
            invariant!(
                !p.steps.is_empty(),
                "a failure ladder needs at least one step"
            );
        }
        let failures = policies.iter().map(|_| VecDeque::new()).collect();
        Escalation {
            policies,
            failures,
            auto_moves: VecDeque::new(),
            auto_move_limit,
            auto_move_window_ms,
        }
    }

    /// Records a failure of `resource` and returns the step to take and the failure's
    /// number within the window (1-based).
    pub fn on_failure(&mut self, now: Time, resource: usize) -> Option<(FailureStep, usize)> {
        let policy = self.policies.get(resource)?;
        let window = policy.window_ms;
        let failures = self.failures.get_mut(resource)?;
        while failures.front().is_some_and(|&t| now.ms_since(t) >= window) {
            failures.pop_front();
        }
        if failures.len() == FAILURES_KEPT {
            failures.pop_front();
        }
        failures.push_back(now);
        let count = failures.len();
        let step = policy.steps[(count - 1).min(policy.steps.len() - 1)];
        Some((step, count))
    }

    /// How many automatic moves happened within the window.
    pub fn recent_moves(&self, now: Time) -> u32 {
        let window = self.auto_move_window_ms;
        self.auto_moves
            .iter()
            .filter(|&&t| now.ms_since(t) < window)
            .count() as u32
    }

    pub fn move_allowed(&self, now: Time) -> bool {
        self.recent_moves(now) < self.auto_move_limit
    }

    pub fn record_move(&mut self, now: Time) {
        let window = self.auto_move_window_ms;
        while self
            .auto_moves
            .front()
            .is_some_and(|&t| now.ms_since(t) >= window)
        {
            self.auto_moves.pop_front();
        }
        if self.auto_moves.len() == MOVES_KEPT {
            self.auto_moves.pop_front();
        }
        self.auto_moves.push_back(now);
    }

    /// On taking over after a move, adopt the peer's count of recent automatic moves, so
    /// the limit holds across both nodes.
    pub fn adopt_moves(&mut self, now: Time, peer_moves: u32) {
        while self.recent_moves(now) < peer_moves.min(MOVES_KEPT as u32) {
            self.record_move(now);
        }
    }

    /// A fresh start of the resources (on promotion) forgets local failure counts: they
    /// were about the previous run.
    pub fn reset_failures(&mut self) {
        for f in &mut self.failures {
            f.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Escalation {
        Escalation::new(
            vec![EscalationPolicy {
                steps: vec![
                    FailureStep::Restart,
                    FailureStep::Restart,
                    FailureStep::Switchover,
                ],
                window_ms: 10_000,
            }],
            2,
            10_000,
        )
    }

    #[test]
    fn steps_follow_the_count_and_the_last_repeats() {
        let mut e = ladder();
        assert_eq!(e.on_failure(Time(0), 0), Some((FailureStep::Restart, 1)));
        assert_eq!(e.on_failure(Time(1), 0), Some((FailureStep::Restart, 2)));
        assert_eq!(e.on_failure(Time(2), 0), Some((FailureStep::Switchover, 3)));
        assert_eq!(e.on_failure(Time(3), 0), Some((FailureStep::Switchover, 4)));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut e = ladder();
        e.on_failure(Time(0), 0);
        e.on_failure(Time(1), 0);
        assert_eq!(
            e.on_failure(Time(20_000), 0),
            Some((FailureStep::Restart, 1))
        );
    }

    #[test]
    fn moves_are_limited_and_the_count_follows_the_role() {
        let mut e = ladder();
        assert!(e.move_allowed(Time(0)));
        e.record_move(Time(0));
        let mut other = ladder();
        other.adopt_moves(Time(5), e.recent_moves(Time(5)));
        assert!(other.move_allowed(Time(5)));
        other.record_move(Time(5));
        assert!(
            !other.move_allowed(Time(6)),
            "two moves within the window reach the limit"
        );
        assert!(other.move_allowed(Time(16_000)), "the window passes");
    }

    #[test]
    fn unknown_resource_is_ignored() {
        assert_eq!(ladder().on_failure(Time(0), 5), None);
    }
}
