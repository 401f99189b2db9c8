//! Plain value types shared by the core, the wire codec and the runtime:
//! time, node identity, epochs, phases and the status a node announces to its peer.

use std::fmt;

/// Monotonic time in milliseconds since an origin chosen by the runtime.
///
/// The core never reads a clock; every input carries one of these. Only differences
/// between two `Time`s of the same node are meaningful.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// `self + ms`, saturating: a deadline past the end of time never fires.
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`; zero if `earlier` is later.
    pub fn ms_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A node's identity: its position in the config file's `[[node]]` list (0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub u8);

impl NodeIndex {
    pub fn peer(self) -> NodeIndex {
        crate::invariant!(self.0 < 2, "node index {} out of range", self.0);
        NodeIndex(1 - self.0)
    }
}

/// An epoch numbers one role state of the pair. Every role change bumps it.
///
/// Node 0 only ever takes even epochs and node 1 only odd ones, so two nodes can never
/// hold the same epoch, and "never two actives in the same epoch" holds by construction.
/// Between two actives, the higher epoch wins and the lower one demotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The smallest epoch above `floor` that belongs to `node`.
    pub fn next_for(node: NodeIndex, floor: Epoch) -> Epoch {
        let parity = u64::from(node.0);
        let mut candidate = floor.0.saturating_add(1);
        if candidate % 2 != parity {
            candidate = candidate.saturating_add(1);
        }
        crate::invariant!(candidate > floor.0, "epoch space exhausted");
        Epoch(candidate)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a node is doing with the pair's resources.
///
/// Only `Passive` is guaranteed to run nothing: a node that is promoting or demoting may
/// have some resources running, so the safety checks treat those phases as active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Passive,
    Promoting,
    Active,
    Demoting,
}

impl Phase {
    /// True when resources may be running on this node.
    pub fn is_running(self) -> bool {
        !matches!(self, Phase::Passive)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Passive => "passive",
            Phase::Promoting => "promoting",
            Phase::Active => "active",
            Phase::Demoting => "demoting",
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Phase::Passive => 0,
            Phase::Promoting => 1,
            Phase::Active => 2,
            Phase::Demoting => 3,
        }
    }

    pub fn from_wire(byte: u8) -> Option<Phase> {
        Some(match byte {
            0 => Phase::Passive,
            1 => Phase::Promoting,
            2 => Phase::Active,
            3 => Phase::Demoting,
            _ => return None,
        })
    }
}

/// What a node tells its peer about itself, in every heartbeat and every management probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeIndex,
    pub phase: Phase,
    pub epoch: Epoch,
    /// The epoch in which this node was last active; `Epoch(0)` if never.
    /// The node that was active most recently holds the freshest data, so it wins elections.
    pub last_active_epoch: Epoch,
    /// This node reaches at least one public-check target (or has none configured).
    pub public_ok: bool,
    /// This node may become active (false after a failed start, until its backoff ends).
    pub eligible: bool,
    /// This node handed the active role over and wants its peer to take it.
    pub yielding: bool,
    /// This node is shutting down cleanly and has stopped its resources.
    pub leaving: bool,
    /// This passive asks its active peer to hand the role over (`understudy switchover`
    /// run on the passive).
    pub requests_switchover: bool,
    /// Automatic moves of the role caused by resource failures within the failure
    /// window. The node taking over adopts it, so a resource failing on both nodes
    /// cannot make the role ping-pong past the limit.
    pub auto_moves: u8,
}

/// What was persisted to disk about this node's role. Written before a promotion takes
/// effect, and after a demotion has stopped every resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistedState {
    pub epoch: Epoch,
    pub last_active_epoch: Epoch,
    /// The node was passive and stopped cleanly (controlled shutdown).
    pub clean_shutdown: bool,
}

impl PersistedState {
    pub const FRESH: PersistedState = PersistedState {
        epoch: Epoch(0),
        last_active_epoch: Epoch(0),
        clean_shutdown: false,
    };
}

/// Why a role changed. Logged, shown in status events, and asserted on by tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Both nodes are passive and know of each other; this one was chosen.
    Election,
    /// The channel was silent for `failover_timeout` and the active did not answer
    /// on the public network.
    Failover,
    /// The operator forced it (`understudy failover --force`).
    Forced,
    /// A planned switchover (`understudy switchover`).
    Switchover,
    /// The active lost the public network while the passive still reached it.
    PublicNetworkLost,
    /// Lost both the channel and every public target for `isolation_timeout`.
    Isolation,
    /// The peer is active in a higher epoch.
    PeerActiveHigherEpoch,
    /// Starting the resources failed; what had started was stopped.
    StartFailed,
    /// Stopping the resources failed; the node stays active because something may still run.
    StopFailed,
    /// The peer shut down cleanly and handed over.
    PeerLeft,
    /// The daemon is shutting down cleanly.
    Shutdown,
    /// A resource kept failing and its ladder reached a switchover.
    ResourceFailed,
    /// The watchdog stopped the resources because this daemon missed its lease (hung or
    /// stalled longer than `isolation_timeout`).
    Fenced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Election => "election",
            Reason::Failover => "failover",
            Reason::Forced => "forced",
            Reason::Switchover => "switchover",
            Reason::PublicNetworkLost => "public-network-lost",
            Reason::Isolation => "isolation",
            Reason::PeerActiveHigherEpoch => "peer-active-higher-epoch",
            Reason::StartFailed => "start-failed",
            Reason::StopFailed => "stop-failed",
            Reason::PeerLeft => "peer-left",
            Reason::Shutdown => "shutdown",
            Reason::ResourceFailed => "resource-failed",
            Reason::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
