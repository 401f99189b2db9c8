//! The pair state machine: one instance per node, deciding this node's role.
//!
//! Rules (each has a decision-table test in `tests/decisions.rs` saying why it exists):
//! - **Failover.** A passive promotes when the channel has been silent for
//!   `failover_timeout`, the latest probe of the peer's management address (sent after the
//!   peer was last heard) got no answer, auto-failover is on, this node itself reaches the
//!   public network, and it knows the peer was serving (or that it was itself the last
//!   active and nothing newer exists).
//! - **Data lease.** With a `sync`-mode copy, a failover also needs that copy to hold every
//!   write the active acknowledged: caught up with the active's queue, and the active seen
//!   gone (a failed probe) before the copy's lease on the stream ran out. A handover from the
//!   active (switchover, clean stop) is taken only while that lease runs.
//! - **Channel-only partition.** If the peer answers on the management address, the
//!   channel silence alone never causes a promotion.
//! - **Isolation.** An active that hears nothing on the channel and reaches no public
//!   target for `isolation_timeout` demotes itself. `isolation_timeout < failover_timeout`,
//!   so it has stopped before the passive may take over.
//! - **Public-network loss.** An active that loses the public network while its connected
//!   passive still reaches it hands the role over (a switchover).
//! - **Higher epoch wins.** A node that sees an active peer with a higher epoch demotes.
//! - **Election.** Two passives that know of each other elect one: eligible, reaching the
//!   public network, not yielding, most recently active, then the first node in the config.
//!   Only on a current status of the peer: a heartbeat or an answer to our probe, never the
//!   status the peer's own probe carried.
//! - **Start passive.** A node always starts passive; alone after a restart it stays
//!   passive until it sees its peer or the operator forces it.

use std::cmp::Reverse;
use std::collections::VecDeque;

use crate::escalation::{Escalation, EscalationPolicy, FailureStep};
use crate::invariant;
use crate::types::{Epoch, NodeIndex, NodeStatus, PersistedState, Phase, Reason, Time};

/// Timing and policy for one node's core. Built by the runtime from the config file.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub me: NodeIndex,
    pub heartbeat_interval_ms: u64,
    pub failover_timeout_ms: u64,
    pub isolation_timeout_ms: u64,
    /// How long the runtime may take to answer a probe. Used to bound waiting on one.
    pub probe_timeout_ms: u64,
    pub auto_failover: bool,
    /// False when no public-check targets are configured: public reachability is then
    /// assumed, and isolation can only be detected through the management probe.
    pub public_check_enabled: bool,
    /// After a failed start, the node does not try to become active again for this long.
    pub start_failure_backoff_ms: u64,
    /// One failure ladder per resource, in resource order.
    pub escalation: Vec<EscalationPolicy>,
    /// Automatic moves allowed within `auto_move_window_ms` (0: never move automatically).
    pub auto_move_limit: u32,
    pub auto_move_window_ms: u64,
    /// This node keeps a copy of a `sync`-mode replicated set. It then fails over only when
    /// its copy holds every write the active acknowledged: see `Input::DataLease`.
    pub data_lease: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CoreConfigError(pub &'static str);

impl std::fmt::Display for CoreConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CoreConfigError {}

impl CoreConfig {
    pub fn validate(&self) -> Result<(), CoreConfigError> {
        if self.me.0 > 1 {
            return Err(CoreConfigError("node index must be 0 or 1"));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(CoreConfigError("heartbeat_interval_ms must be positive"));
        }
        if self.failover_timeout_ms < 3 * self.heartbeat_interval_ms {
            return Err(CoreConfigError(
                "failover_timeout_ms must be at least 3 heartbeat intervals",
            ));
        }
        // The active must have stopped its resources before the passive may start them.
        if self.isolation_timeout_ms >= self.failover_timeout_ms {
            return Err(CoreConfigError(
                "isolation_timeout_ms must be shorter than failover_timeout_ms",
            ));
        }
        if self.escalation.iter().any(|p| p.steps.is_empty()) {
            return Err(CoreConfigError(
                "every resource needs at least one failure step",
            ));
        }
        if self.probe_timeout_ms == 0 || self.probe_timeout_ms >= self.failover_timeout_ms {
            return Err(CoreConfigError(
                "probe_timeout_ms must be positive and shorter than failover_timeout_ms",
            ));
        }
        Ok(())
    }
}

/// Where a peer's status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A heartbeat over the dedicated channel (any link).
    Channel,
    /// The peer's answer to our probe of its management address over the public network:
    /// its status when it answered.
    Management,
    /// The status the peer sent with its own probe of our management address. It is as old
    /// as the probe (up to a probe timeout, more if the connection waited for the network),
    /// and it comes from a node that is deciding whether to take over. It proves the peer
    /// alive and counts for epochs, but no election is decided on it (see `evaluate_passive`).
    PeerProbe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A timer fired (or the runtime just wants the core to look at the time).
    Tick,
    /// The peer's status arrived.
    PeerStatus { via: Via, status: NodeStatus },
    /// A probe of the peer's management address got an answer.
    ProbeAnswered { probe: ProbeId, status: NodeStatus },
    /// A probe got no answer within the probe timeout (refused, unreachable, hung).
    ProbeFailed { probe: ProbeId },
    /// One round of public-network checks: was at least one target reachable?
    PublicCheck { reachable: bool },
    /// The runtime finished starting resources (on failure it already stopped what started).
    ResourcesStarted { ok: bool },
    /// The runtime finished stopping resources.
    ResourcesStopped { ok: bool },
    /// A resource's monitor reported a failure (only acted on while active).
    ResourceFailed { resource: usize },
    /// The runtime finished restarting one resource.
    ResourceRestarted { resource: usize, ok: bool },
    /// The watchdog stopped every resource while this daemon was not renewing its lease.
    Fenced,
    /// Whether this node's replicated data may serve if it becomes active. False while a
    /// copy is known to be out of sync (the active said it cannot catch it up, or applying
    /// failed): such a node is not eligible, so it neither takes over automatically nor
    /// receives a switchover. A forced failover still can.
    DataUsable { usable: bool },
    /// How far this passive's `sync`-mode copies are known to hold every write the active
    /// acknowledged. `caught_up`: every copy applied all the active had when its current
    /// (or last) replication session began, so it holds every write acknowledged without
    /// it before. `until`: the active acknowledges nothing without this copy before this
    /// time (the copy renews a lease on its stream; the time is when the oldest copy's
    /// newest renewal the active confirmed was sent, plus the lease). `None`: no renewal
    /// confirmed since this node started. Only read when `CoreConfig::data_lease` is on.
    DataLease {
        caught_up: bool,
        until: Option<Time>,
    },
}

/// Operator commands, from the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Move the active role to the other node, with no loss.
    Switchover,
    /// Become active even though the automatic rules would not. The runtime probes the
    /// peer just before, so a reachable active peer is seen and the command refused.
    ForceFailover,
    /// Stop cleanly: stop resources, record a clean shutdown, tell the peer, exit.
    Shutdown,
}

/// Why a command was refused, in words for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this status to the peer on every channel link.
    SendStatus(NodeStatus),
    /// Probe the peer's management address, sending our status; report the result with
    /// `ProbeAnswered` or `ProbeFailed` within `probe_timeout_ms`.
    Probe { probe: ProbeId, status: NodeStatus },
    /// Write this durably (fsync) before carrying out any later output.
    Persist(PersistedState),
    /// Start every resource in order; report `ResourcesStarted`.
    StartResources,
    /// Stop every resource in reverse order; report `ResourcesStopped`.
    StopResources,
    /// Stop then start one resource; report `ResourceRestarted`.
    RestartResource(usize),
    /// Run the resource's n-th configured failure command.
    RunFailureCommand { resource: usize, step: u8 },
    /// Something worth logging and showing in status.
    Event(Event),
    /// Run a round of public-network checks now and report it with `PublicCheck`.
    /// Asked for when a failover waits only on fresh evidence that this node itself
    /// still reaches the public network.
    CheckPublic,
    /// The clean shutdown is complete; the runtime should exit.
    Exit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    RoleChange {
        at: Time,
        from: Phase,
        to: Phase,
        epoch: Epoch,
        reason: Reason,
    },
    /// Something the operator should know: `warning` for what may need them (a refusal, a
    /// failed step, lost data preserved), otherwise news (a resync or drain completed).
    Notice {
        at: Time,
        text: String,
        warning: bool,
    },
    /// A resource failure and the step its ladder took.
    ResourceFailure {
        at: Time,
        resource: usize,
        failures: usize,
        action: String,
    },
}

/// The outcome of the most recent completed probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRecord {
    pub sent_at: Time,
    pub completed_at: Time,
    pub answered: bool,
}

/// A snapshot for `understudy status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    pub me: NodeStatus,
    pub peer: Option<NodeStatus>,
    pub channel_last_heard: Option<Time>,
    pub last_probe: Option<ProbeRecord>,
    pub reason: Option<Reason>,
    /// Why this passive is not taking over, when it is not; for the operator.
    pub waiting_for: Option<&'static str>,
    /// A passive with a `sync`-mode copy: the latest `Input::DataLease` (caught up, until).
    pub data_lease: Option<(bool, Option<Time>)>,
}

/// What to do once the resources have stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterStop {
    BePassive,
    HandOver,
    Exit,
}

/// Bound on queued outputs: one evaluation emits only a handful.
const OUTPUT_QUEUE_MAX: usize = 256;
/// How long this node's public network must have been up, continuously, before a failed
/// probe sent over it counts as evidence that the peer is gone (capped at the failover
/// timeout). A link that just came back still resolves its neighbours for a moment.
const PUBLIC_SETTLE_MS: u64 = 1000;

pub struct PairCore {
    cfg: CoreConfig,
    now: Time,
    started_at: Time,
    phase: Phase,
    epoch: Epoch,
    last_active_epoch: Epoch,
    max_seen_epoch: Epoch,
    /// Why the current phase was entered.
    reason: Option<Reason>,
    after_stop: AfterStop,
    shutdown_requested: bool,
    /// Handed the role over and waits for the peer to take it; until this deadline.
    yielding_until: Option<Time>,
    /// The status last sent to the peer: any change is sent at once, so the peer never
    /// decides on a flag we have already dropped.
    last_sent: Option<NodeStatus>,
    leaving: bool,
    exited: bool,
    /// This passive asked its active peer to hand over; until then (a deadline).
    requesting_switchover_until: Option<Time>,
    ineligible_until: Time,
    /// This node's replicated copies may serve (see `Input::DataUsable`).
    data_usable: bool,
    /// The latest `Input::DataLease`.
    lease_caught_up: bool,
    lease_until: Option<Time>,
    /// When the first probe that failed since the peer was last heard was sent: the peer
    /// was gone (or cut off) by then.
    first_failed_probe_since_contact: Option<Time>,

    channel_last_heard: Option<Time>,
    /// The latest status heard over the channel.
    peer_channel: Option<NodeStatus>,
    /// The latest status learnt over the management network, and when. Cleared when a
    /// later probe fails: the peer stopped answering.
    peer_management: Option<(Time, NodeStatus)>,
    /// `peer_management` is the peer's answer to our own probe, not the status its probe
    /// carried.
    peer_management_current: bool,
    /// The latest status from either path.
    peer_last_known: Option<NodeStatus>,
    /// Since when the peer has continuously reported no public network.
    peer_public_bad_since: Option<Time>,
    /// When we last heard anything from the peer, on either path.
    peer_last_contact: Option<Time>,

    probe_in_flight: Option<(ProbeId, Time)>,
    /// The probe for which an immediate public check was requested (once per probe).
    public_check_requested_after: Option<Time>,
    next_probe_id: u64,
    last_probe: Option<ProbeRecord>,

    escalation: Escalation,
    public_last_ok: Option<Time>,
    /// The outcome of the latest public-check round.
    public_last_reachable: Option<bool>,
    /// The first success of the current unbroken run of successful public checks.
    public_ok_since: Option<Time>,
    next_heartbeat_at: Time,
    outputs: VecDeque<Output>,
}

impl PairCore {
    /// A node always starts passive (the safe choice after a crash: it cannot know
    /// whether its peer took over while it was down).
    pub fn new(
        cfg: CoreConfig,
        persisted: PersistedState,
        now: Time,
    ) -> Result<Self, CoreConfigError> {
        cfg.validate()?;
        let escalation = Escalation::new(
            cfg.escalation.clone(),
            cfg.auto_move_limit,
            cfg.auto_move_window_ms,
        );
        let mut core = PairCore {
            escalation,
            cfg,
            now,
            started_at: now,
            phase: Phase::Passive,
            epoch: persisted.epoch,
            last_active_epoch: persisted.last_active_epoch,
            max_seen_epoch: persisted.epoch.max(persisted.last_active_epoch),
            reason: None,
            after_stop: AfterStop::BePassive,
            shutdown_requested: false,
            yielding_until: None,
            last_sent: None,
            leaving: false,
            exited: false,
            requesting_switchover_until: None,
            ineligible_until: now,
            data_usable: true,
            lease_caught_up: false,
            lease_until: None,
            first_failed_probe_since_contact: None,
            channel_last_heard: None,
            peer_channel: None,
            peer_management: None,
            peer_management_current: false,
            peer_last_known: None,
            peer_last_contact: None,
            peer_public_bad_since: None,
            probe_in_flight: None,
            public_check_requested_after: None,
            next_probe_id: 1,
            last_probe: None,
            public_last_ok: None,
            public_last_reachable: None,
            public_ok_since: None,
            next_heartbeat_at: now,
            outputs: VecDeque::new(),
        };
        // From now on a crash is an unclean stop; record that before anything else.
        core.push(Output::Persist(core.persisted(false)));
        core.evaluate();
        Ok(core)
    }

    // ---- public interface -------------------------------------------------------------

    pub fn handle(&mut self, now: Time, input: Input) {
        self.advance(now);
        if self.exited {
            return;
        }
        match input {
            Input::Tick => {}
            Input::PeerStatus { via, status } => self.on_peer_status(via, status),
            Input::ProbeAnswered { probe, status } => {
                if self.complete_probe(probe, true) {
                    self.on_peer_status(Via::Management, status);
                }
            }
            Input::ProbeFailed { probe } => {
                if self.complete_probe(probe, false) {
                    // The peer stopped answering: what it said earlier is no longer current.
                    if let Some((at, _)) = self.peer_management {
                        let sent = self.last_probe.map_or(at, |p| p.sent_at);
                        if at <= sent {
                            self.peer_management = None;
                        }
                    }
                }
            }
            Input::PublicCheck { reachable } => {
                self.public_last_reachable = Some(reachable);
                if reachable {
                    self.public_last_ok = Some(self.now);
                    self.public_ok_since.get_or_insert(self.now);
                } else {
                    self.public_ok_since = None;
                }
            }
            Input::ResourcesStarted { ok } => self.on_started(ok),
            Input::ResourcesStopped { ok } => self.on_stopped(ok),
            Input::ResourceFailed { resource } => self.on_resource_failed(resource),
            Input::Fenced => {
                // The resources are already stopped; stopping again is idempotent and
                // leads through the ordinary demotion, persisted in a new epoch.
                if self.phase == Phase::Active {
                    self.begin_demote(Reason::Fenced, AfterStop::BePassive);
                }
            }
            Input::DataUsable { usable } => {
                if usable != self.data_usable {
                    self.data_usable = usable;
                    self.send_status();
                }
            }
            Input::DataLease { caught_up, until } => {
                self.lease_caught_up = caught_up;
                self.lease_until = until;
            }
            Input::ResourceRestarted { resource, ok } => {
                if !ok && self.phase == Phase::Active {
                    // A failed restart is one more failure: climb the ladder.
                    self.on_resource_failed(resource);
                }
            }
        }
        self.evaluate();
    }

    pub fn command(&mut self, now: Time, command: Command) -> Result<(), Refusal> {
        self.advance(now);
        if self.exited {
            return Err(Refusal("the daemon is exiting".into()));
        }
        let result = match command {
            Command::Switchover => self.cmd_switchover(),
            Command::ForceFailover => self.cmd_force_failover(),
            Command::Shutdown => {
                self.cmd_shutdown();
                Ok(())
            }
        };
        if let Err(refusal) = &result {
            self.notice(format!("{command:?} refused: {}", refusal.0));
        }
        self.evaluate();
        result
    }

    /// The next output to carry out, in order. `Persist` must be durable before the next.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the core next wants a `Tick`, at the latest.
    pub fn next_timeout(&self) -> Time {
        let now = self.now;
        let f = self.cfg.failover_timeout_ms;
        let i = self.cfg.isolation_timeout_ms;
        let mut deadlines = vec![self.next_heartbeat_at];
        let silence_origin = self.channel_last_heard.unwrap_or(self.started_at);
        deadlines.push(silence_origin.plus_ms(f));
        deadlines.push(silence_origin.plus_ms(i));
        deadlines.push(silence_origin.plus_ms(self.probe_after_ms()));
        if let Some(ok) = self.public_last_ok {
            deadlines.push(ok.plus_ms(i));
        }
        if let Some(probe) = self.last_probe {
            deadlines.push(probe.sent_at.plus_ms(self.probe_interval_ms()));
        }
        if let Some((_, sent)) = self.probe_in_flight {
            deadlines.push(sent.plus_ms(self.probe_watchdog_ms()));
        }
        if let Some(until) = self.requesting_switchover_until {
            deadlines.push(until);
        }
        if let Some(until) = self.yielding_until {
            deadlines.push(until);
        }
        deadlines.push(self.ineligible_until);
        deadlines
            .into_iter()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(now.plus_ms(self.cfg.heartbeat_interval_ms))
    }

    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            me: self.my_status(),
            peer: self.peer_last_known,
            channel_last_heard: self.channel_last_heard,
            last_probe: self.last_probe,
            reason: self.reason,
            waiting_for: self.waiting_for(),
            data_lease: (self.cfg.data_lease && self.phase == Phase::Passive)
                .then_some((self.lease_caught_up, self.lease_until)),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn my_status(&self) -> NodeStatus {
        NodeStatus {
            node: self.cfg.me,
            phase: self.phase,
            epoch: self.epoch,
            last_active_epoch: self.last_active_epoch,
            public_ok: self.public_ok(),
            eligible: self.eligible(),
            yielding: self.yielding_until.is_some(),
            leaving: self.leaving,
            requests_switchover: self.requesting_switchover_until.is_some(),
            auto_moves: self
                .escalation
                .recent_moves(self.now)
                .min(u32::from(u8::MAX)) as u8,
        }
    }

    // ---- inputs -----------------------------------------------------------------------

    fn advance(&mut self, now: Time) {
        // The runtime feeds a monotonic clock; time going backwards is a runtime bug.
        invariant!(
            now >= self.now,
            "time went backwards: {:?} < {:?}",
            now,
            self.now
        );
        self.now = now;
    }

    fn on_peer_status(&mut self, via: Via, status: NodeStatus) {
        if status.node != self.cfg.me.peer() {
            self.notice(format!(
                "ignored a status claiming to be node {} (expected the peer, node {})",
                status.node.0,
                self.cfg.me.peer().0
            ));
            return;
        }
        self.max_seen_epoch = self.max_seen_epoch.max(status.epoch);
        self.peer_last_known = Some(status);
        self.peer_last_contact = Some(self.now);
        self.first_failed_probe_since_contact = None;
        if status.public_ok {
            self.peer_public_bad_since = None;
        } else {
            self.peer_public_bad_since.get_or_insert(self.now);
        }
        match via {
            Via::Channel => {
                self.channel_last_heard = Some(self.now);
                self.peer_channel = Some(status);
            }
            Via::Management | Via::PeerProbe => {
                self.peer_management = Some((self.now, status));
                self.peer_management_current = via == Via::Management;
            }
        }
        if status.phase.is_running() {
            // The handover (or our request for one) is done.
            self.yielding_until = None;
        }
        if status.phase == Phase::Demoting || status.yielding || !status.phase.is_running() {
            self.requesting_switchover_until = None;
        }
        if status.phase.is_running() && self.phase.is_running() && status.epoch < self.epoch {
            self.notice(format!(
                "peer is also active, in older epoch {}; it must demote",
                status.epoch
            ));
        }
    }

    /// Returns false for a stale or unknown probe id.
    fn complete_probe(&mut self, probe: ProbeId, answered: bool) -> bool {
        match self.probe_in_flight {
            Some((id, sent_at)) if id == probe => {
                self.probe_in_flight = None;
                self.last_probe = Some(ProbeRecord {
                    sent_at,
                    completed_at: self.now,
                    answered,
                });
                let contact = self.peer_last_contact.unwrap_or(self.started_at);
                if !answered
                    && sent_at >= contact
                    && self.first_failed_probe_since_contact.is_none()
                {
                    self.first_failed_probe_since_contact = Some(sent_at);
                }
                true
            }
            _ => false,
        }
    }

    fn on_started(&mut self, ok: bool) {
        invariant!(
            self.phase == Phase::Promoting,
            "resources reported started while {:?}",
            self.phase
        );
        if ok {
            let reason = self.reason.unwrap_or(Reason::Election);
            self.set_phase(Phase::Active, reason);
            if self.shutdown_requested {
                self.begin_demote(Reason::Shutdown, AfterStop::Exit);
            }
        } else {
            // The runtime already stopped whatever had started.
            self.ineligible_until = self.now.plus_ms(self.cfg.start_failure_backoff_ms);
            self.finish_demote(Reason::StartFailed, AfterStop::BePassive);
            if self.shutdown_requested {
                self.exit_cleanly();
            }
        }
    }

    fn on_stopped(&mut self, ok: bool) {
        invariant!(
            self.phase == Phase::Demoting,
            "resources reported stopped while {:?}",
            self.phase
        );
        if ok {
            let reason = self.reason.unwrap_or(Reason::Shutdown);
            self.finish_demote(reason, self.after_stop);
        } else {
            // Something may still run: staying active is the only honest state.
            self.set_phase(Phase::Active, Reason::StopFailed);
            self.notice(
                "stopping resources failed; staying active. Fix the resource, then retry".into(),
            );
        }
    }

    fn on_resource_failed(&mut self, resource: usize) {
        if self.phase != Phase::Active {
            return; // Failures while starting or stopping are handled by those paths.
        }
        let Some((step, failures)) = self.escalation.on_failure(self.now, resource) else {
            self.notice(format!("failure reported for unknown resource {resource}"));
            return;
        };
        let action = match step {
            FailureStep::Restart => {
                self.push(Output::RestartResource(resource));
                "restart".to_string()
            }
            FailureStep::Alert => "alert".to_string(),
            FailureStep::Run(n) => {
                self.push(Output::RunFailureCommand { resource, step: n });
                format!("run #{n}")
            }
            FailureStep::Switchover => match self.auto_switchover_blocker() {
                None => {
                    self.escalation.record_move(self.now);
                    "switchover".to_string()
                }
                // The role cannot move: keep the service up here and say why.
                Some(why) => {
                    self.push(Output::RestartResource(resource));
                    format!("restart (switchover not possible: {why})")
                }
            },
        };
        self.push(Output::Event(Event::ResourceFailure {
            at: self.now,
            resource,
            failures,
            action: action.clone(),
        }));
        if action == "switchover" {
            self.begin_demote(Reason::ResourceFailed, AfterStop::HandOver);
        }
    }

    /// Why an automatic switchover cannot happen now, if it cannot.
    fn auto_switchover_blocker(&self) -> Option<&'static str> {
        if !self.escalation.move_allowed(self.now) {
            return Some("the automatic move limit is reached");
        }
        let channel_fresh = self.channel_last_heard.is_some()
            && self.channel_silence_ms() <= 3 * self.cfg.heartbeat_interval_ms;
        match self.peer_channel {
            Some(p)
                if channel_fresh
                    && p.phase == Phase::Passive
                    && p.eligible
                    && p.public_ok
                    && !p.leaving =>
            {
                None
            }
            Some(_) if channel_fresh => Some("the peer is not a healthy passive"),
            _ => Some("the peer is not connected"),
        }
    }

    // ---- commands ---------------------------------------------------------------------

    fn cmd_switchover(&mut self) -> Result<(), Refusal> {
        let peer = match self.peer_channel {
            Some(p) if self.channel_alive() => p,
            _ => return Err(Refusal("the peer is not connected over the channel".into())),
        };
        match self.phase {
            Phase::Active => {
                if peer.phase != Phase::Passive {
                    return Err(Refusal(format!(
                        "the peer is {}, not passive",
                        peer.phase.as_str()
                    )));
                }
                if !peer.eligible {
                    return Err(Refusal(
                        "the peer may not become active (a recent start failed, or its data is out of sync)".into(),
                    ));
                }
                if !peer.public_ok {
                    return Err(Refusal("the peer does not reach the public network".into()));
                }
                if peer.leaving {
                    return Err(Refusal("the peer is shutting down".into()));
                }
                self.begin_demote(Reason::Switchover, AfterStop::HandOver);
                Ok(())
            }
            Phase::Passive => {
                if peer.phase != Phase::Active {
                    return Err(Refusal(format!(
                        "the peer is {}, not active",
                        peer.phase.as_str()
                    )));
                }
                if !self.eligible() {
                    return Err(Refusal(
                        "this node may not become active (a recent start failed, or its data is out of sync)".into(),
                    ));
                }
                if !self.public_ok() {
                    return Err(Refusal(
                        "this node does not reach the public network".into(),
                    ));
                }
                // Ask the active to hand over; it validates and runs the switchover.
                self.requesting_switchover_until =
                    Some(self.now.plus_ms(self.cfg.failover_timeout_ms));
                self.send_status();
                Ok(())
            }
            Phase::Promoting | Phase::Demoting => Err(Refusal(format!(
                "a role change is in progress ({})",
                self.phase.as_str()
            ))),
        }
    }

    fn cmd_force_failover(&mut self) -> Result<(), Refusal> {
        if self.phase != Phase::Passive {
            return Err(Refusal(format!(
                "this node is already {}",
                self.phase.as_str()
            )));
        }
        if let Some(peer) = self.fresh_peer() {
            if peer.phase.is_running() {
                return Err(Refusal(format!(
                    "the peer is reachable and {} (epoch {}); use switchover",
                    peer.phase.as_str(),
                    peer.epoch
                )));
            }
        }
        self.ineligible_until = self.now;
        self.promote(Reason::Forced);
        Ok(())
    }

    fn cmd_shutdown(&mut self) {
        self.shutdown_requested = true;
        match self.phase {
            Phase::Passive => self.exit_cleanly(),
            Phase::Active => self.begin_demote(Reason::Shutdown, AfterStop::Exit),
            // Finishes the current change first; on_started/on_stopped see the request.
            Phase::Promoting => {}
            Phase::Demoting => self.after_stop = AfterStop::Exit,
        }
    }

    // ---- decisions --------------------------------------------------------------------

    fn evaluate(&mut self) {
        if self.exited {
            return;
        }
        if let Some(until) = self.requesting_switchover_until {
            if self.now >= until {
                self.requesting_switchover_until = None;
                self.notice("the switchover request expired without a handover".into());
            }
        }
        if let Some(until) = self.yielding_until {
            if self.now >= until {
                self.yielding_until = None;
                self.notice("the peer did not take the role over; no longer yielding".into());
            }
        }
        self.expire_stuck_probe();
        match self.phase {
            Phase::Passive => self.evaluate_passive(),
            Phase::Active => self.evaluate_active(),
            Phase::Promoting | Phase::Demoting => {}
        }
        self.schedule_probe();
        // Heartbeat on schedule, and at once whenever anything the peer decides on changed.
        if self.now >= self.next_heartbeat_at || self.last_sent != Some(self.my_status()) {
            self.send_status();
        }
        self.check_invariants();
    }

    fn evaluate_passive(&mut self) {
        if self.leaving || self.shutdown_requested || !self.eligible() {
            return;
        }
        if let Some((peer, current)) = self.fresh_peer_and_currency() {
            if peer.phase.is_running() {
                return; // The peer serves; a channel-only partition ends here.
            }
            // A passive status carried by the peer's own probe may be outdated by the time
            // it arrives: the peer probes because it is deciding whether to take over, and
            // it may have done so since. (Seen by the fault-injection suite: a node that
            // restarted after a power cut won an election on such a status, 13 ms after
            // starting, while its peer was promoting; only the address conflict check
            // stopped the second active.) Wait for a heartbeat or an answer to our probe.
            if !current {
                return;
            }
            if self.wins_election(&peer) {
                if (peer.leaving || peer.yielding) && self.handover_blocker().is_some() {
                    return;
                }
                let reason = if peer.leaving {
                    Reason::PeerLeft
                } else if peer.yielding {
                    Reason::Switchover
                } else {
                    Reason::Election
                };
                self.promote(reason);
            }
            return;
        }
        match self.failover_blocker() {
            None => self.promote(Reason::Failover),
            Some(_) => self.request_public_check_if_needed(),
        }
    }

    /// When a failover waits only on fresh public-network evidence, ask for it now rather
    /// than at the next scheduled round.
    fn request_public_check_if_needed(&mut self) {
        if !self.cfg.public_check_enabled
            || self.channel_silence_ms() < self.cfg.failover_timeout_ms
        {
            return;
        }
        let Some(probe) = self.last_probe.filter(|p| !p.answered) else {
            return;
        };
        if self
            .public_last_ok
            .is_some_and(|ok| ok >= probe.completed_at)
        {
            return;
        }
        if self.public_check_requested_after != Some(probe.sent_at) {
            self.public_check_requested_after = Some(probe.sent_at);
            self.push(Output::CheckPublic);
        }
    }

    fn evaluate_active(&mut self) {
        if let Some(peer) = self.fresh_peer() {
            if peer.phase.is_running() && peer.epoch > self.epoch {
                self.begin_demote(Reason::PeerActiveHigherEpoch, AfterStop::BePassive);
                return;
            }
        }
        let silence = self.channel_silence_ms();
        if silence >= self.cfg.isolation_timeout_ms && self.public_lost() {
            self.begin_demote(Reason::Isolation, AfterStop::BePassive);
            return;
        }
        // A handover needs a channel that is working now, not merely one that has not yet
        // timed out: otherwise the "handover" goes into a dead link and isolation applies.
        let channel_fresh = self.channel_last_heard.is_some()
            && self.channel_silence_ms() <= 3 * self.cfg.heartbeat_interval_ms;
        if let Some(peer) = self.peer_channel {
            if channel_fresh && peer.phase == Phase::Passive && peer.eligible && !peer.leaving {
                if self.public_lost() && peer.public_ok {
                    self.begin_demote(Reason::PublicNetworkLost, AfterStop::HandOver);
                } else if peer.requests_switchover && peer.public_ok {
                    self.begin_demote(Reason::Switchover, AfterStop::HandOver);
                }
            }
        }
    }

    /// The failover rule. Every clause is a reason not to take over.
    fn failover_blocker(&self) -> Option<&'static str> {
        if !self.cfg.auto_failover {
            return Some("auto_failover is off");
        }
        let peer = match self.peer_last_known {
            Some(p) => p,
            None => return Some("the peer has not been seen since this node started"),
        };
        let peer_was_serving = peer.phase.is_running() || peer.leaving;
        // After its own isolation a node knows it was the last active, and the peer could
        // only have taken over by probing it, which the checks below repeat.
        let i_was_last_active =
            self.last_active_epoch > Epoch(0) && peer.epoch < self.last_active_epoch;
        if !peer_was_serving && !i_was_last_active {
            return Some("the peer was not serving when last seen");
        }
        if self.channel_silence_ms() < self.cfg.failover_timeout_ms {
            return Some("the channel has not been silent for failover_timeout");
        }
        let contact = self.peer_last_contact.unwrap_or(self.started_at);
        let probe = match self.last_probe {
            Some(p) if !p.answered && p.sent_at >= contact => p,
            _ => return Some("waiting for the peer's management address to stop answering"),
        };
        // The failed probe proves nothing if our own public link is what failed: every
        // public check from before the probe was sent until after it completed succeeded.
        // And a link that has just come back is not trusted at once: for about a second
        // its neighbour entries are still being resolved again, and a probe sent then can
        // fail although the peer is fine (seen by the fault-injection suite after a cut
        // of a node's both networks healed: it failed over onto a live active, and only
        // the address conflict probe stopped it).
        let settle = PUBLIC_SETTLE_MS.min(self.cfg.failover_timeout_ms);
        let public_held = self
            .public_ok_since
            .is_some_and(|since| since.plus_ms(settle) <= probe.sent_at)
            && self
                .public_last_ok
                .is_some_and(|ok| ok >= probe.completed_at);
        // The copy's verdict first: once the probe has failed it holds until the operator
        // acts or the peer is seen again, while the public network's proof comes and goes
        // with each check; status should name the blocker that needs the operator.
        if let Some(why) = self.data_lease_blocker() {
            return Some(why);
        }
        if !self.public_ok() || !public_held {
            return Some("waiting for proof that this node reaches the public network");
        }
        None
    }

    /// With a `sync`-mode copy, an active that hands the role over (a switchover, a clean
    /// stop, a lost public network) has drained its queue to this copy through a live stream,
    /// so the copy is caught up and its lease is running. If not (the stream was cut and the
    /// active went on alone), the copy may lack writes the active acknowledged: no takeover
    /// on the handover alone.
    fn handover_blocker(&self) -> Option<&'static str> {
        if !self.cfg.data_lease {
            return None;
        }
        if !self.lease_caught_up {
            return Some(
                "the peer hands over, but this node's copy has not caught up with it: it may lack acknowledged writes (understudy failover --force takes over anyway)",
            );
        }
        match self.lease_until {
            Some(until) if self.now < until => None,
            _ => Some(
                "the peer hands over, but this copy's lease has run out: the peer may have acknowledged writes it lacks (understudy failover --force takes over anyway)",
            ),
        }
    }

    /// With a `sync`-mode copy: does it hold every write the active acknowledged? The
    /// active acknowledges a write without this copy only after it stopped receiving this
    /// copy's lease renewals, and only once the lease has run out (`lease_until`); a failed
    /// probe sent before then shows that the active was gone (or isolated, and so
    /// demoting) before it could have. Seen alive later (any contact resets the probe),
    /// it may have acknowledged writes this copy never received: a failover would lose
    /// them, so only the operator may force it.
    fn data_lease_blocker(&self) -> Option<&'static str> {
        if !self.cfg.data_lease {
            return None;
        }
        if !self.lease_caught_up {
            return Some(
                "this node's copy has not caught up with the active since it connected: it may lack acknowledged writes (understudy failover --force takes over anyway)",
            );
        }
        match (self.first_failed_probe_since_contact, self.lease_until) {
            (Some(gone), Some(until)) if gone < until => None,
            _ => Some(
                "the active may have acknowledged writes this copy lacks: it was not known to be down before its lease on this copy ran out (understudy failover --force takes over anyway)",
            ),
        }
    }

    fn waiting_for(&self) -> Option<&'static str> {
        if self.phase != Phase::Passive {
            return None;
        }
        if !self.data_usable {
            return Some("this node's replicated data is out of sync");
        }
        if !self.eligible() {
            return Some("a recent start failed; backing off");
        }
        if let Some((peer, current)) = self.fresh_peer_and_currency() {
            if peer.phase.is_running() {
                return Some("the peer is active");
            }
            if !current {
                return Some("waiting for a current status of the peer");
            }
            if peer.leaving || peer.yielding {
                if let Some(why) = self.handover_blocker() {
                    return Some(why);
                }
            }
            return Some("the election chose the peer");
        }
        self.failover_blocker()
    }

    /// The key holds only attributes that change rarely and deliberately, so both nodes
    /// compute the same winner from slightly stale views of each other. Public-network
    /// reachability flips as checks complete, so it is not in the key: the winner only
    /// promotes if it reaches the public network, and the loser takes over only once the
    /// winner has reported no public network for a whole failover timeout.
    fn wins_election(&self, peer: &NodeStatus) -> bool {
        let me = self.my_status();
        // A node that just handed over waits for its peer instead of taking the role back
        // on a status of the peer's that predates the handover.
        if !me.eligible || me.leaving || !me.public_ok || me.yielding {
            return false;
        }
        let key = |s: &NodeStatus| {
            (
                s.eligible && !s.leaving,
                !s.yielding,
                s.last_active_epoch,
                Reverse(s.node),
            )
        };
        if key(&me) > key(peer) {
            return true;
        }
        self.peer_public_bad_since
            .is_some_and(|since| self.now.ms_since(since) >= self.cfg.failover_timeout_ms)
    }

    // ---- transitions ------------------------------------------------------------------

    fn promote(&mut self, reason: Reason) {
        invariant!(
            self.phase == Phase::Passive,
            "promote from {:?}",
            self.phase
        );
        let epoch = Epoch::next_for(self.cfg.me, self.max_seen_epoch);
        self.epoch = epoch;
        self.max_seen_epoch = epoch;
        self.last_active_epoch = epoch;
        self.yielding_until = None;
        self.requesting_switchover_until = None;
        self.escalation.reset_failures();
        if let Some(peer) = self.peer_last_known {
            self.escalation
                .adopt_moves(self.now, u32::from(peer.auto_moves));
        }
        // Durable before the change takes effect: a crash mid-start must not reuse the epoch.
        self.push(Output::Persist(self.persisted(false)));
        self.set_phase(Phase::Promoting, reason);
        self.push(Output::StartResources);
    }

    fn begin_demote(&mut self, reason: Reason, after: AfterStop) {
        invariant!(self.phase == Phase::Active, "demote from {:?}", self.phase);
        self.after_stop = after;
        self.set_phase(Phase::Demoting, reason);
        self.push(Output::StopResources);
    }

    /// Resources are stopped (or never started): record the passive role in a new epoch.
    fn finish_demote(&mut self, reason: Reason, after: AfterStop) {
        let epoch = Epoch::next_for(self.cfg.me, self.max_seen_epoch);
        self.epoch = epoch;
        self.max_seen_epoch = epoch;
        // A node that handed over, or was fenced while it hung, lost the role to its peer on
        // purpose: it must not win it back in an election decided on statuses that piled
        // up in its socket buffers while it was away.
        let lost_to_peer = after == AfterStop::HandOver || reason == Reason::Fenced;
        self.yielding_until = lost_to_peer.then(|| self.now.plus_ms(self.cfg.failover_timeout_ms));
        self.push(Output::Persist(self.persisted(false)));
        self.set_phase(Phase::Passive, reason);
        if after == AfterStop::Exit {
            self.exit_cleanly();
        }
    }

    fn exit_cleanly(&mut self) {
        invariant!(
            self.phase == Phase::Passive,
            "clean exit while {:?}",
            self.phase
        );
        self.leaving = true;
        self.push(Output::Persist(self.persisted(true)));
        self.send_status();
        self.push(Output::Exit);
        self.exited = true;
    }

    fn set_phase(&mut self, to: Phase, reason: Reason) {
        let from = self.phase;
        self.phase = to;
        self.reason = Some(reason);
        self.push(Output::Event(Event::RoleChange {
            at: self.now,
            from,
            to,
            epoch: self.epoch,
            reason,
        }));
        // Tell the peer at once rather than at the next heartbeat: it shortens handovers.
        self.send_status();
    }

    // ---- probing, heartbeats, helpers -------------------------------------------------

    fn schedule_probe(&mut self) {
        if self.probe_in_flight.is_some() || self.leaving {
            return;
        }
        if self.channel_silence_ms() < self.probe_after_ms() {
            return;
        }
        if let Some(last) = self.last_probe {
            if self.now.ms_since(last.sent_at) < self.probe_interval_ms() {
                return;
            }
        }
        let probe = ProbeId(self.next_probe_id);
        self.next_probe_id += 1;
        self.probe_in_flight = Some((probe, self.now));
        let status = self.my_status();
        self.push(Output::Probe { probe, status });
    }

    /// The runtime promises an answer within the probe timeout. If none comes (or our own
    /// clock jumped), free the slot so a new probe can go out, but record no outcome: an
    /// expired probe says nothing about the peer, so it must never count as a failure that
    /// allows a failover.
    fn expire_stuck_probe(&mut self) {
        if let Some((_, sent)) = self.probe_in_flight {
            if self.now.ms_since(sent) >= self.probe_watchdog_ms() {
                self.probe_in_flight = None;
                self.notice("a probe outlived its timeout; sending a new one".into());
            }
        }
    }

    fn probe_after_ms(&self) -> u64 {
        2 * self.cfg.heartbeat_interval_ms
    }

    fn probe_interval_ms(&self) -> u64 {
        // Probe at the heartbeat rate for as long as the channel is down: the probe is then
        // the only way two actives find each other, and one TLS handshake per heartbeat
        // interval is cheap.
        self.cfg.heartbeat_interval_ms
    }

    fn probe_watchdog_ms(&self) -> u64 {
        2 * self.cfg.probe_timeout_ms + self.cfg.heartbeat_interval_ms
    }

    fn send_status(&mut self) {
        self.next_heartbeat_at = self.now.plus_ms(self.cfg.heartbeat_interval_ms);
        let status = self.my_status();
        self.last_sent = Some(status);
        self.push(Output::SendStatus(status));
    }

    fn notice(&mut self, text: String) {
        // The core's notices are all about something that went wrong or was refused.
        self.push(Output::Event(Event::Notice {
            at: self.now,
            text,
            warning: true,
        }));
    }

    fn push(&mut self, output: Output) {
        invariant!(
            self.outputs.len() < OUTPUT_QUEUE_MAX,
            "output queue overflow: the runtime stopped draining the core"
        );
        self.outputs.push_back(output);
    }

    fn persisted(&self, clean_shutdown: bool) -> PersistedState {
        PersistedState {
            epoch: self.epoch,
            last_active_epoch: self.last_active_epoch,
            clean_shutdown,
        }
    }

    fn channel_silence_ms(&self) -> u64 {
        self.now
            .ms_since(self.channel_last_heard.unwrap_or(self.started_at))
    }

    fn channel_alive(&self) -> bool {
        self.channel_last_heard.is_some()
            && self.channel_silence_ms() < self.cfg.failover_timeout_ms
    }

    /// The peer's current status if we know it: over a live channel, or from the
    /// management network within the failover timeout. The newer of the two wins.
    fn fresh_peer(&self) -> Option<NodeStatus> {
        self.fresh_peer_and_currency().map(|(status, _)| status)
    }

    /// The peer's latest status still fresh, and whether it is current (a heartbeat or an
    /// answer to our probe) rather than the one its own probe carried.
    fn fresh_peer_and_currency(&self) -> Option<(NodeStatus, bool)> {
        let channel = self
            .peer_channel
            .filter(|_| self.channel_alive())
            .map(|s| (self.channel_last_heard.unwrap_or(self.now), s, true));
        let management = self
            .peer_management
            .filter(|(at, _)| self.now.ms_since(*at) < self.cfg.failover_timeout_ms)
            .map(|(at, s)| (at, s, self.peer_management_current));
        match (channel, management) {
            (Some(c), Some(m)) => Some(if m.0 > c.0 { (m.1, m.2) } else { (c.1, c.2) }),
            (Some(c), None) => Some((c.1, c.2)),
            (None, Some(m)) => Some((m.1, m.2)),
            (None, None) => None,
        }
    }

    fn public_ok(&self) -> bool {
        if !self.cfg.public_check_enabled {
            return true;
        }
        // The latest round must have succeeded, and recently.
        match (self.public_last_reachable, self.public_last_ok) {
            (Some(true), Some(t)) => self.now.ms_since(t) < self.cfg.isolation_timeout_ms,
            _ => false,
        }
    }

    /// Positive evidence that the public network is gone: the latest check failed and no
    /// check has succeeded for `isolation_timeout`. Mere absence of results (a paused
    /// process, a clock jump) is not evidence, so it never demotes a healthy active.
    fn public_lost(&self) -> bool {
        let last_ok = self.public_last_ok.unwrap_or(self.started_at);
        self.cfg.public_check_enabled
            && self.public_last_reachable == Some(false)
            && self.now.ms_since(last_ok) >= self.cfg.isolation_timeout_ms
    }

    fn eligible(&self) -> bool {
        self.now >= self.ineligible_until && self.data_usable
    }

    fn check_invariants(&self) {
        if self.phase.is_running() {
            invariant!(
                self.epoch.0 % 2 == u64::from(self.cfg.me.0),
                "running in epoch {} that belongs to the other node",
                self.epoch
            );
            invariant!(
                self.last_active_epoch == self.epoch,
                "running, but last_active_epoch is stale"
            );
        }
        invariant!(
            self.max_seen_epoch >= self.epoch,
            "epoch above the maximum seen"
        );
        invariant!(
            !(self.leaving && self.phase.is_running()),
            "leaving while running"
        );
    }
}
