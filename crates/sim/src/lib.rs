//! Deterministic, seeded simulation of an Understudy pair.
//!
//! Two `PairCore`s run against a simulated world: channel links with loss, delay and
//! partitions (each direction separately), a public network per node, management probes,
//! resources that take time to start and stop, crashes, restarts, clean shutdowns, hung
//! (paused) processes and forward clock jumps. Every run is a pure function of its seed:
//! a failing seed replays exactly, step for step.
//!
//! Invariants are checked after every event:
//! - never two running nodes in the same epoch;
//! - never a failover while the active serves and has been reachable on the public
//!   network for a whole failover timeout (a false failover);
//! - never both nodes running resources while each reaches the other's management
//!   address for longer than `grace_ms` (the time it takes two nodes to notice each other);
//! - once every fault has healed, exactly one node is active within `settle_ms`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use understudy_core::{
    Command, CoreConfig, EscalationPolicy, FailureStep, Input, NodeIndex, NodeStatus, Output,
    PairCore, PersistedState, Phase, ProbeId, Time, Via,
};

/// Knobs of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub heartbeat_interval_ms: u64,
    pub failover_timeout_ms: u64,
    pub isolation_timeout_ms: u64,
    pub probe_timeout_ms: u64,
    pub public_check_interval_ms: u64,
    pub links: usize,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Probability, per mille, that a channel message is lost.
    pub loss_per_mille: u64,
    pub resource_max_ms: u64,
    /// How long faults are injected.
    pub fault_phase_ms: u64,
    /// How long after healing the pair has to settle with exactly one active.
    pub settle_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            heartbeat_interval_ms: 100,
            failover_timeout_ms: 1000,
            isolation_timeout_ms: 600,
            probe_timeout_ms: 250,
            public_check_interval_ms: 200,
            links: 2,
            delay_min_ms: 0,
            delay_max_ms: 20,
            loss_per_mille: 20,
            resource_max_ms: 50,
            fault_phase_ms: 20_000,
            settle_ms: 8_000,
        }
    }
}

impl SimConfig {
    /// How long two running, mutually reachable nodes may take to notice each other and
    /// for one of them to stop: a probe round, message delays and a resource stop.
    pub fn grace_ms(&self) -> u64 {
        3 * self.heartbeat_interval_ms
            + self.probe_timeout_ms
            + 2 * self.delay_max_ms
            + self.resource_max_ms
    }
}

/// splitmix64: tiny, fast, and fully determined by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance_per_mille(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

#[derive(Clone, Debug)]
enum EventKind {
    Timer {
        node: usize,
        token: u64,
    },
    Deliver {
        to: usize,
        via: Via,
        status: NodeStatus,
    },
    ProbeArrive {
        to: usize,
        from: usize,
        probe: ProbeId,
        status: NodeStatus,
    },
    ProbeResult {
        to: usize,
        probe: ProbeId,
        answer: Option<NodeStatus>,
    },
    ResourcesDone {
        to: usize,
        start: bool,
    },
    ResourceRestarted {
        to: usize,
        resource: usize,
    },
    PublicCheck {
        node: usize,
    },
    /// An extra check round the core asked for; does not reschedule the periodic one.
    PublicCheckNow {
        node: usize,
    },
    Fault,
    Heal {
        fault: Fault,
    },
    HealAll,
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Crash(usize),
    Pause(usize),
    CutLink {
        link: usize,
        from: usize,
    },
    CutPublic(usize),
    ClockJump(usize, u64),
    CleanRestart(usize),
    Switchover(usize),
    ForceFailoverWhilePeerDown(usize),
    /// The active's resource monitor reports a failure.
    ResourceFails(usize),
}

struct Event {
    at: u64,
    seq: u64,
    /// The target node's incarnation when scheduled: events for a crashed process vanish.
    incarnation: Option<(usize, u64)>,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    core: Option<PairCore>,
    persisted: PersistedState,
    incarnation: u64,
    paused: bool,
    /// Local clock = global clock + offset. Only ever grows (forward jumps).
    clock_offset_ms: u64,
    public_up: bool,
    timer_token: u64,
    deferred: Vec<Event>,
}

impl SimNode {
    fn alive(&self) -> bool {
        self.core.is_some()
    }

    fn running(&self) -> bool {
        self.core.as_ref().is_some_and(|c| c.phase().is_running())
    }

    fn status(&self) -> Option<NodeStatus> {
        self.core.as_ref().map(|c| c.my_status())
    }
}

/// The result of one simulated run.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub violation: Option<String>,
    pub events: u64,
    pub failovers: u64,
    pub faults: Vec<(u64, Fault)>,
}

pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    nodes: [SimNode; 2],
    /// links[l][from] is up.
    links: Vec<[bool; 2]>,
    /// FIFO per link and direction: TCP never reorders.
    link_clear_at: Vec<[u64; 2]>,
    both_running_reachable_since: Option<u64>,
    /// Since when both nodes have been up, unpaused and on the public network.
    mutually_reachable_since: Option<u64>,
    healed: bool,
    violation: Option<String>,
    events: u64,
    failovers: u64,
    faults: Vec<(u64, Fault)>,
    /// Faults and role changes, kept only when `keep_trace` is set.
    pub trace: Vec<String>,
    pub keep_trace: bool,
}

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let node = || SimNode {
            core: None,
            persisted: PersistedState::FRESH,
            incarnation: 0,
            paused: false,
            clock_offset_ms: 0,
            public_up: true,
            timer_token: 0,
            deferred: Vec::new(),
        };
        let links = cfg.links;
        let mut sim = Sim {
            cfg,
            rng: Rng::new(seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: [node(), node()],
            links: vec![[true, true]; links],
            link_clear_at: vec![[0, 0]; links],
            both_running_reachable_since: None,
            mutually_reachable_since: None,
            healed: false,
            violation: None,
            events: 0,
            failovers: 0,
            faults: Vec::new(),
            trace: Vec::new(),
            keep_trace: false,
        };
        // Nodes boot at slightly different times, as real ones do.
        for i in 0..2 {
            let at = sim.rng.range(0, 300);
            sim.schedule(
                at,
                None,
                EventKind::Heal {
                    fault: Fault::Crash(i),
                },
            );
        }
        let first_fault = sim.rng.range(1000, 3000);
        sim.schedule(first_fault, None, EventKind::Fault);
        let heal_at = sim.cfg.fault_phase_ms;
        sim.schedule(heal_at, None, EventKind::HealAll);
        let end = sim.cfg.fault_phase_ms + sim.cfg.settle_ms;
        sim.schedule(end, None, EventKind::End);
        sim
    }

    pub fn run(mut self, seed: u64) -> Outcome {
        self.run_loop();
        Outcome {
            seed,
            violation: self.violation,
            events: self.events,
            failovers: self.failovers,
            faults: self.faults,
        }
    }

    fn run_loop(&mut self) {
        // Bounded: a run is a fixed span of simulated time, and every event moves time on
        // or is one of a bounded number at the same instant.
        let max_events = 2_000_000u64;
        while let Some(Reverse(ev)) = self.queue.pop() {
            self.events += 1;
            if self.events > max_events {
                self.violation = Some("event budget exhausted: a livelock".into());
                break;
            }
            invariant_time(self.now, ev.at);
            self.now = ev.at;
            if matches!(ev.kind, EventKind::End) {
                self.check_settled();
                break;
            }
            self.dispatch(ev);
            self.check_invariants();
            if self.violation.is_some() {
                break;
            }
        }
    }

    fn schedule(&mut self, at: u64, node: Option<usize>, kind: EventKind) {
        self.seq += 1;
        let incarnation = node.map(|n| (n, self.nodes[n].incarnation));
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            incarnation,
            kind,
        }));
    }

    fn target(kind: &EventKind) -> Option<usize> {
        match kind {
            EventKind::Timer { node, .. }
            | EventKind::PublicCheck { node }
            | EventKind::PublicCheckNow { node } => Some(*node),
            EventKind::Deliver { to, .. }
            | EventKind::ProbeResult { to, .. }
            | EventKind::ResourcesDone { to, .. }
            | EventKind::ResourceRestarted { to, .. } => Some(*to),
            EventKind::ProbeArrive { .. } => None, // handled specially: a hung peer times out
            _ => None,
        }
    }

    fn dispatch(&mut self, ev: Event) {
        if let Some(node) = Self::target(&ev.kind) {
            if let Some((n, inc)) = ev.incarnation {
                if self.nodes[n].incarnation != inc || !self.nodes[n].alive() {
                    return; // sent to a process that has since died
                }
            }
            if self.nodes[node].paused {
                self.nodes[node].deferred.push(ev);
                return;
            }
        }
        match ev.kind {
            EventKind::Timer { node, token } => {
                if self.nodes[node].timer_token == token {
                    self.feed(node, Input::Tick);
                }
            }
            EventKind::Deliver { to, via, status } => {
                self.feed(to, Input::PeerStatus { via, status })
            }
            EventKind::ProbeArrive {
                to,
                from,
                probe,
                status,
            } => self.probe_arrive(to, from, probe, status),
            EventKind::ProbeResult { to, probe, answer } => {
                let input = match answer {
                    Some(status) => Input::ProbeAnswered { probe, status },
                    None => Input::ProbeFailed { probe },
                };
                self.feed(to, input);
            }
            EventKind::ResourcesDone { to, start } => {
                let input = if start {
                    Input::ResourcesStarted { ok: true }
                } else {
                    Input::ResourcesStopped { ok: true }
                };
                self.feed(to, input);
            }
            EventKind::PublicCheck { node } => {
                let reachable = self.nodes[node].public_up;
                self.feed(node, Input::PublicCheck { reachable });
                let next = self.now + self.cfg.public_check_interval_ms;
                self.schedule(next, Some(node), EventKind::PublicCheck { node });
            }
            EventKind::ResourceRestarted { to, resource } => {
                self.feed(to, Input::ResourceRestarted { resource, ok: true });
            }
            EventKind::PublicCheckNow { node } => {
                let reachable = self.nodes[node].public_up;
                self.feed(node, Input::PublicCheck { reachable });
            }
            EventKind::Fault => self.inject_fault(),
            EventKind::Heal { fault } => self.heal(fault),
            EventKind::HealAll => self.heal_all(),
            EventKind::End => {}
        }
    }

    fn local_now(&self, node: usize) -> Time {
        Time(self.now + self.nodes[node].clock_offset_ms)
    }

    fn feed(&mut self, node: usize, input: Input) {
        let now = self.local_now(node);
        let Some(core) = self.nodes[node].core.as_mut() else {
            return;
        };
        core.handle(now, input);
        self.drain(node);
    }

    fn drain(&mut self, node: usize) {
        let peer = 1 - node;
        loop {
            let Some(core) = self.nodes[node].core.as_mut() else {
                return;
            };
            let Some(output) = core.poll_output() else {
                break;
            };
            match output {
                Output::SendStatus(status) => {
                    for link in 0..self.links.len() {
                        if !self.links[link][node]
                            || self.rng.chance_per_mille(self.cfg.loss_per_mille)
                        {
                            continue;
                        }
                        let delay = self.rng.range(self.cfg.delay_min_ms, self.cfg.delay_max_ms);
                        let at = (self.now + delay).max(self.link_clear_at[link][node]);
                        self.link_clear_at[link][node] = at;
                        self.schedule(
                            at,
                            Some(peer),
                            EventKind::Deliver {
                                to: peer,
                                via: Via::Channel,
                                status,
                            },
                        );
                    }
                }
                Output::Probe { probe, status } => {
                    let reachable = self.nodes[node].public_up && self.nodes[peer].public_up;
                    if reachable {
                        let delay = self.rng.range(self.cfg.delay_min_ms, self.cfg.delay_max_ms);
                        self.schedule(
                            self.now + delay,
                            None,
                            EventKind::ProbeArrive {
                                to: peer,
                                from: node,
                                probe,
                                status,
                            },
                        );
                    } else {
                        let at = self.now + self.cfg.probe_timeout_ms;
                        self.schedule(
                            at,
                            Some(node),
                            EventKind::ProbeResult {
                                to: node,
                                probe,
                                answer: None,
                            },
                        );
                    }
                }
                Output::Persist(state) => self.nodes[node].persisted = state,
                Output::RestartResource(resource) => {
                    let at = self.now + self.rng.range(2, 2 * self.cfg.resource_max_ms);
                    self.schedule(
                        at,
                        Some(node),
                        EventKind::ResourceRestarted { to: node, resource },
                    );
                }
                // A failure command changes nothing the pair decides on.
                Output::RunFailureCommand { .. } => {}
                Output::CheckPublic => {
                    let at = self.now + self.rng.range(1, 1 + self.cfg.delay_max_ms);
                    self.schedule(at, Some(node), EventKind::PublicCheckNow { node });
                }
                Output::StartResources | Output::StopResources => {
                    let start = matches!(output, Output::StartResources);
                    let at = self.now + self.rng.range(1, self.cfg.resource_max_ms);
                    self.schedule(at, Some(node), EventKind::ResourcesDone { to: node, start });
                }
                Output::Event(event) => {
                    if let understudy_core::Event::RoleChange {
                        to: Phase::Promoting,
                        reason,
                        ..
                    } = &event
                    {
                        if *reason == understudy_core::Reason::Failover {
                            self.failovers += 1;
                            self.check_failover_was_needed(node);
                        }
                    }
                    if self.keep_trace {
                        self.trace
                            .push(format!("{:>6} node{node}: {event:?}", self.now));
                    }
                }
                Output::Exit => {
                    self.nodes[node].core = None;
                    self.nodes[node].incarnation += 1;
                    let at = self.now + self.rng.range(100, 2000);
                    self.schedule(
                        at,
                        None,
                        EventKind::Heal {
                            fault: Fault::CleanRestart(node),
                        },
                    );
                    return;
                }
            }
        }
        self.arm_timer(node);
    }

    fn arm_timer(&mut self, node: usize) {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let local = core.next_timeout().0;
        let global = local
            .saturating_sub(self.nodes[node].clock_offset_ms)
            .max(self.now);
        self.nodes[node].timer_token += 1;
        let token = self.nodes[node].timer_token;
        self.schedule(global, Some(node), EventKind::Timer { node, token });
    }

    fn probe_arrive(&mut self, to: usize, from: usize, probe: ProbeId, status: NodeStatus) {
        let timeout_at = self.now + self.cfg.probe_timeout_ms;
        let target = &self.nodes[to];
        // A failed probe reports at `at`: at once when refused, after the timeout when hung.
        let fail_at = |sim: &mut Sim, at: u64| {
            sim.schedule(
                at,
                Some(from),
                EventKind::ProbeResult {
                    to: from,
                    probe,
                    answer: None,
                },
            );
        };
        let answer = if !target.alive() {
            // Host up, daemon dead: the connection is refused at once.
            fail_at(self, self.now + 1);
            return;
        } else if target.paused {
            // Hung: the TCP handshake completes in the kernel, TLS never does.
            fail_at(self, timeout_at);
            return;
        } else {
            self.feed(
                to,
                Input::PeerStatus {
                    via: Via::PeerProbe,
                    status,
                },
            );
            self.nodes[to].status()
        };
        let delay = self.rng.range(self.cfg.delay_min_ms, self.cfg.delay_max_ms);
        let back_ok = self.nodes[to].public_up && self.nodes[from].public_up;
        let (at, answer) = if back_ok {
            (self.now + delay, answer)
        } else {
            (timeout_at, None)
        };
        self.schedule(
            at,
            Some(from),
            EventKind::ProbeResult {
                to: from,
                probe,
                answer,
            },
        );
    }

    fn boot(&mut self, node: usize) {
        if self.nodes[node].alive() {
            return;
        }
        let cfg = CoreConfig {
            me: NodeIndex(node as u8),
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
            failover_timeout_ms: self.cfg.failover_timeout_ms,
            isolation_timeout_ms: self.cfg.isolation_timeout_ms,
            probe_timeout_ms: self.cfg.probe_timeout_ms,
            auto_failover: true,
            public_check_enabled: true,
            start_failure_backoff_ms: 5_000,
            escalation: vec![EscalationPolicy {
                steps: vec![FailureStep::Restart, FailureStep::Switchover],
                window_ms: 5_000,
            }],
            auto_move_limit: 2,
            auto_move_window_ms: 600_000,
            data_lease: false,
        };
        let now = self.local_now(node);
        let persisted = self.nodes[node].persisted;
        match PairCore::new(cfg, persisted, now) {
            Ok(core) => self.nodes[node].core = Some(core),
            Err(e) => {
                self.violation = Some(format!("core refused a valid config: {e}"));
                return;
            }
        }
        self.nodes[node].incarnation += 1;
        let first_check = self.now + self.rng.range(0, self.cfg.public_check_interval_ms);
        self.schedule(first_check, Some(node), EventKind::PublicCheck { node });
        self.drain(node);
    }

    fn inject_fault(&mut self) {
        if self.healed {
            return;
        }
        let node = self.rng.range(0, 1) as usize;
        let fault = match self.rng.range(0, 10) {
            0 | 1 => Fault::Crash(node),
            2 => Fault::Pause(node),
            3 | 4 => Fault::CutLink {
                link: self.rng.range(0, self.links.len() as u64 - 1) as usize,
                from: node,
            },
            5 => Fault::CutPublic(node),
            6 => Fault::ClockJump(node, self.rng.range(100, 5000)),
            7 => Fault::CleanRestart(node),
            8 => Fault::Switchover(node),
            9 => Fault::ResourceFails(node),
            _ => Fault::ForceFailoverWhilePeerDown(node),
        };
        self.faults.push((self.now, fault));
        if self.keep_trace {
            self.trace.push(format!("{:>6} FAULT {fault:?}", self.now));
        }
        let heal_after = self.rng.range(200, 5000);
        match fault {
            Fault::Crash(n) => {
                self.nodes[n].core = None;
                self.nodes[n].incarnation += 1;
                self.nodes[n].paused = false;
                self.nodes[n].deferred.clear();
                self.schedule(self.now + heal_after, None, EventKind::Heal { fault });
            }
            Fault::Pause(n) => {
                if self.nodes[n].alive() {
                    self.nodes[n].paused = true;
                    self.schedule(self.now + heal_after, None, EventKind::Heal { fault });
                }
            }
            Fault::CutLink { link, from } => {
                self.links[link][from] = false;
                // Often cut both directions, as a cable pull does.
                if self.rng.chance_per_mille(600) {
                    self.links[link][1 - from] = false;
                }
                self.schedule(self.now + heal_after, None, EventKind::Heal { fault });
            }
            Fault::CutPublic(n) => {
                self.nodes[n].public_up = false;
                self.schedule(self.now + heal_after, None, EventKind::Heal { fault });
            }
            Fault::ClockJump(n, ms) => {
                self.nodes[n].clock_offset_ms += ms;
                if !self.nodes[n].paused {
                    self.feed(n, Input::Tick);
                }
            }
            Fault::ResourceFails(n) => {
                if !self.nodes[n].paused && self.nodes[n].alive() {
                    self.feed(n, Input::ResourceFailed { resource: 0 });
                }
            }
            Fault::CleanRestart(n) => self.operator(n, Command::Shutdown),
            Fault::Switchover(n) => self.operator(n, Command::Switchover),
            Fault::ForceFailoverWhilePeerDown(n) => {
                // An operator forces only when the peer is really gone.
                if !self.nodes[1 - n].alive() {
                    self.operator(n, Command::ForceFailover);
                }
            }
        }
        let next = self.now + self.rng.range(100, 2500);
        self.schedule(next, None, EventKind::Fault);
    }

    /// An operator command to a running, unpaused node; refusals are part of the game.
    fn operator(&mut self, n: usize, command: Command) {
        if self.nodes[n].paused {
            return;
        }
        let now = self.local_now(n);
        if let Some(core) = self.nodes[n].core.as_mut() {
            let _ = core.command(now, command);
            self.drain(n);
        }
    }

    fn heal(&mut self, fault: Fault) {
        match fault {
            // Booting a live node does nothing, so a late heal is harmless.
            Fault::Crash(n) | Fault::CleanRestart(n) => self.boot(n),
            Fault::Pause(n) => self.resume(n),
            Fault::CutLink { link, .. } => self.links[link] = [true, true],
            Fault::CutPublic(n) => self.nodes[n].public_up = true,
            _ => {}
        }
    }

    fn resume(&mut self, n: usize) {
        if !self.nodes[n].paused {
            return;
        }
        self.nodes[n].paused = false;
        let deferred = std::mem::take(&mut self.nodes[n].deferred);
        // Everything that piled up while it was stopped is seen now, in order.
        for mut ev in deferred {
            ev.at = self.now;
            self.dispatch(ev);
        }
        self.feed(n, Input::Tick);
    }

    fn heal_all(&mut self) {
        self.healed = true;
        for n in 0..2 {
            self.resume(n);
            self.nodes[n].public_up = true;
            self.boot(n);
        }
        for link in self.links.iter_mut() {
            *link = [true, true];
        }
    }

    fn reachable(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.alive() && !n.paused && n.public_up)
    }

    fn check_invariants(&mut self) {
        if self.reachable() {
            self.mutually_reachable_since.get_or_insert(self.now);
        } else {
            self.mutually_reachable_since = None;
        }
        let [a, b] = &self.nodes;
        if a.running() && b.running() {
            let (ea, eb) = (
                a.core.as_ref().map(|c| c.epoch()),
                b.core.as_ref().map(|c| c.epoch()),
            );
            if ea == eb {
                self.violation = Some(format!(
                    "two actives in the same epoch {ea:?} at {}",
                    self.now
                ));
                return;
            }
            if self.reachable() {
                let since = *self.both_running_reachable_since.get_or_insert(self.now);
                if self.now - since > self.cfg.grace_ms() {
                    self.violation = Some(format!(
                        "both nodes running and mutually reachable since {since} (now {}, grace {} ms)",
                        self.now,
                        self.cfg.grace_ms()
                    ));
                }
                return;
            }
        }
        self.both_running_reachable_since = None;
    }

    /// "Never fail over while the active is only cut off from the passive and still
    /// serving": a failover while the peer runs resources and both nodes have reached each
    /// other's management address for a whole failover timeout is a false failover.
    fn check_failover_was_needed(&mut self, node: usize) {
        let peer = &self.nodes[1 - node];
        let reachable_long = self
            .mutually_reachable_since
            .is_some_and(|since| self.now - since >= self.cfg.failover_timeout_ms);
        if peer.running() && reachable_long {
            self.violation = Some(format!(
                "false failover by node{node} at {}: the active was serving and reachable since {:?}",
                self.now, self.mutually_reachable_since
            ));
        }
    }

    fn check_settled(&mut self) {
        let phases: Vec<Option<Phase>> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().map(|c| c.phase()))
            .collect();
        let active = phases.iter().filter(|p| **p == Some(Phase::Active)).count();
        let passive = phases
            .iter()
            .filter(|p| **p == Some(Phase::Passive))
            .count();
        if active != 1 || passive != 1 {
            self.violation = Some(format!(
                "{} ms after healing, phases are {phases:?}: expected exactly one active",
                self.cfg.settle_ms
            ));
        }
    }
}

fn invariant_time(now: u64, at: u64) {
    assert!(at >= now, "simulated time went backwards: {at} < {now}");
}

/// Runs one seed and returns what happened. Replaying a seed gives the same outcome.
pub fn run_seed(seed: u64, cfg: &SimConfig) -> Outcome {
    Sim::new(seed, cfg.clone()).run(seed)
}

/// Runs one seed with the fault and role-change trace kept, for debugging a failing seed.
pub fn trace_seed(seed: u64, cfg: &SimConfig) -> (Outcome, Vec<String>) {
    let mut sim = Sim::new(seed, cfg.clone());
    sim.keep_trace = true;
    sim.run_loop();
    let trace = std::mem::take(&mut sim.trace);
    (sim.run(seed), trace)
}
