//! Understudy's sans-IO decision core.
//!
//! Everything that decides who serves lives here: roles and epochs, failure detection,
//! failover, isolation, elections and switchover. The core takes inputs stamped with an
//! explicit time and returns outputs (statuses to send, probes to make, state to persist,
//! resources to start or stop, events) plus the next time it wants to be woken.
//! It does no IO, reads no clock and spawns nothing, so a seeded simulation can drive it
//! deterministically (see the `understudy-sim` crate), and the tokio runtime in
//! `understudy-daemon` drives it for real.

pub mod escalation;
pub mod pair;
pub mod types;

pub use escalation::{Escalation, EscalationPolicy, FailureStep};
pub use pair::{
    Command, CoreConfig, CoreConfigError, CoreStatus, Event, Input, Output, PairCore, ProbeId,
    ProbeRecord, Refusal, Via,
};
pub use types::{Epoch, NodeIndex, NodeStatus, PersistedState, Phase, Reason, Time};

/// An assertion that stays on in release builds. A broken invariant in an HA daemon must
/// stop the process loudly rather than let it go on deciding roles from a corrupt state.
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("invariant violated: {}", format!($($arg)+));
        }
    };
}
