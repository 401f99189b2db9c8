//! The daemon: one task owns the sans-IO `PairCore` and carries out its outputs in order;
//! network, resource and control tasks talk to it through a bounded queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{error, info, warn};
use understudy_config::{Config, FailureAction};
use understudy_core::{
    Command, CoreConfig, EscalationPolicy, Event, FailureStep, Input, NodeIndex, NodeStatus,
    Output, PairCore, Phase, ProbeId, Reason, Time, Via,
};
use understudy_replication::serving::Serving;
use understudy_replication::Replicator;
use understudy_resources::ResourceSet;

use crate::hooks::{HookPoint, Hooks};
use crate::net::{self, LinkStats, NetCtx};
use crate::report::{EventReport, StatusReport};
use crate::state::StateFile;
use crate::watchdog::Watchdog;
use crate::{control, report};

/// Messages into the core task.
pub enum ToCore {
    PeerStatus {
        via: Via,
        status: NodeStatus,
    },
    /// The peer probed us; answer with our status after taking theirs into account.
    Probed {
        status: NodeStatus,
        reply: oneshot::Sender<NodeStatus>,
    },
    ProbeDone {
        probe: ProbeId,
        answer: Option<NodeStatus>,
    },
    Public {
        reachable: bool,
    },
    ResourcesDone {
        start: bool,
        ok: bool,
        /// What replication reported on the way (a switchover's drain), for the event log,
        /// and whether it is a warning.
        note: Option<(String, bool)>,
    },
    /// The watchdog stopped every resource while this daemon missed its lease.
    Fenced,
    /// A resource's monitor found it not running while this node is active.
    ResourceFailed {
        resource: usize,
    },
    ResourceRestarted {
        resource: usize,
        ok: bool,
    },
    Command {
        command: Command,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status {
        reply: oneshot::Sender<StatusReport>,
    },
    /// Replication has something to tell the operator (a resync, a quarantine, a verify),
    /// and whether it is a warning.
    Notice {
        text: String,
        warning: bool,
    },
}

/// Bound on the core's inbox: senders wait (backpressure) rather than grow it.
const INBOX_MAX: usize = 1024;
/// Taken off a copy's lease before the core sees it: the two machines' clocks may run at
/// slightly different rates over a lease (100 ppm is 0.3 ms over 3 s), and the active
/// measures the lease on its own.
const LEASE_MARGIN_MS: u64 = 20;
/// Recent events kept for `understudy status`.
const EVENTS_MAX: usize = 200;

/// Everything the status report needs besides the core.
pub struct Daemon {
    pub cfg: Config,
    pub me: usize,
    pub origin: Instant,
    pub net: Arc<NetCtx>,
    pub resources: Arc<ResourceSet>,
    pub events: VecDeque<EventReport>,
    pub hooks: Arc<Hooks>,
    pub replicator: Arc<Replicator>,
}

impl Daemon {
    fn now(&self) -> Time {
        self.time_at(Instant::now())
    }

    /// The core's time for an instant of this process (0 before the origin).
    fn time_at(&self, at: Instant) -> Time {
        Time(
            u64::try_from(at.saturating_duration_since(self.origin).as_millis())
                .unwrap_or(u64::MAX),
        )
    }

    pub fn links(&self) -> Vec<(SocketAddr, LinkStats)> {
        let peer = &self.cfg.nodes[1 - self.me];
        peer.channel
            .iter()
            .zip(self.net.links.iter())
            .map(|(addr, stats)| (*addr, stats.lock().map(|s| s.clone()).unwrap_or_default()))
            .collect()
    }

    fn record(&mut self, event: &Event) {
        let peer_name = &self.cfg.nodes[1 - self.me].name;
        let mut entry = EventReport::from_event(event, SystemTime::now());
        match event {
            Event::RoleChange {
                from,
                to,
                epoch,
                reason,
                ..
            } => {
                info!(from = from.as_str(), to = to.as_str(), epoch = epoch.0, reason = reason.as_str(), peer = %peer_name, "role change");
                let hooks = self.hooks.clone();
                let env = vec![
                    ("UNDERSTUDY_FROM".to_string(), from.as_str().to_string()),
                    ("UNDERSTUDY_ROLE".to_string(), to.as_str().to_string()),
                    ("UNDERSTUDY_EPOCH".to_string(), epoch.0.to_string()),
                    ("UNDERSTUDY_REASON".to_string(), reason.as_str().to_string()),
                ];
                // In the background: a hook must never hold up the core.
                tokio::spawn(async move { hooks.run(HookPoint::RoleChange, &env).await });
            }
            Event::Notice {
                text,
                warning: true,
                ..
            } => warn!(notice = %text, "pair notice"),
            Event::Notice { text, .. } => info!(notice = %text, "pair notice"),
            Event::ResourceFailure {
                resource,
                failures,
                action,
                ..
            } => {
                let name = self
                    .cfg
                    .resources
                    .get(*resource)
                    .map_or("?", |r| r.name.as_str());
                warn!(resource = %name, failures, action = %action, "resource failure");
                entry.text = Some(format!(
                    "resource {name} failed ({failures} in its window): {action}"
                ));
            }
        }
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(entry);
    }
}

pub fn core_config(cfg: &Config, me: usize) -> CoreConfig {
    CoreConfig {
        me: NodeIndex(me as u8),
        heartbeat_interval_ms: cfg.pair.heartbeat_interval_ms,
        failover_timeout_ms: cfg.pair.failover_timeout_ms,
        isolation_timeout_ms: cfg.pair.isolation_timeout_ms,
        probe_timeout_ms: cfg.pair.probe_timeout_ms,
        auto_failover: cfg.pair.auto_failover,
        public_check_enabled: !cfg.public_check.targets.is_empty(),
        start_failure_backoff_ms: 60_000,
        escalation: cfg
            .resources
            .iter()
            .map(|r| EscalationPolicy {
                steps: failure_steps(&r.on_failure),
                window_ms: r.failure_window_ms,
            })
            .collect(),
        auto_move_limit: cfg.pair.auto_move_limit,
        // One window for the pair's move limit: the longest of the resources' windows.
        auto_move_window_ms: cfg
            .resources
            .iter()
            .map(|r| r.failure_window_ms)
            .max()
            .unwrap_or(600_000),
        data_lease: cfg
            .replicate
            .iter()
            .any(|r| r.mode == understudy_config::ReplicationMode::Sync),
    }
}

/// The config's failure actions as the core's steps; `run` commands are numbered in the
/// order they appear, and the runtime looks them up again by that number.
fn failure_steps(actions: &[FailureAction]) -> Vec<FailureStep> {
    let mut runs = 0u8;
    actions
        .iter()
        .map(|a| match a {
            FailureAction::Restart => FailureStep::Restart,
            FailureAction::Switchover => FailureStep::Switchover,
            FailureAction::Alert => FailureStep::Alert,
            FailureAction::Run(_) => {
                runs = runs.saturating_add(1);
                FailureStep::Run(runs - 1)
            }
        })
        .collect()
}

/// The n-th `run` command of a resource's failure ladder.
fn failure_command(cfg: &Config, resource: usize, step: u8) -> Option<String> {
    cfg.resources
        .get(resource)?
        .on_failure
        .iter()
        .filter_map(|a| match a {
            FailureAction::Run(cmd) => Some(cmd.clone()),
            _ => None,
        })
        .nth(usize::from(step))
}

/// The replicated sets of this node, all starting passive.
fn build_replicator(
    cfg: &Config,
    me: usize,
    tls: understudy_tls::NodeTls,
    serving: &Arc<Serving>,
) -> Result<Replicator> {
    let peer_addr = SocketAddr::new(cfg.nodes[1 - me].channel[0].ip(), cfg.pair.replication_port);
    let sets = cfg
        .replicate
        .iter()
        .map(|r| understudy_replication::SetConfig {
            name: r.name.clone(),
            path: r.path.clone(),
            mode: match r.mode {
                understudy_config::ReplicationMode::Sync => understudy_replication::Mode::Sync,
                understudy_config::ReplicationMode::Async => understudy_replication::Mode::Async,
            },
            queue_max_bytes: r.queue_max_bytes,
            mem_max_bytes: r.memory_max_bytes,
            data_dir: r
                .data_dir
                .clone()
                .unwrap_or_else(|| cfg.pair.state_dir.join("sets").join(&r.name).join("data")),
            state_dir: cfg.pair.state_dir.join("sets").join(&r.name),
            // A passive that cannot confirm within the lease is treated as gone.
            stall_timeout: Duration::from_millis(cfg.pair.sync_lease_ms()),
            capture_threads: 4,
            node_index: me,
            sync_rate_max: r.sync_rate_max_bytes_per_s,
            lease_renew_interval: Duration::from_millis(cfg.pair.heartbeat_interval_ms),
            serving: serving.clone(),
        })
        .collect();
    // A switchover waits this long for the passive to confirm the last op.
    let drain_timeout = Duration::from_millis(cfg.pair.drain_timeout_ms);
    Replicator::new(sets, tls, peer_addr, drain_timeout).context("opening the replicated sets")
}

/// Runs the daemon for node `node_name` until a clean shutdown.
pub async fn run(cfg: Config, node_name: &str) -> Result<()> {
    let (me, _) = cfg.node(node_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let peer = cfg.nodes[1 - me].clone();
    let my = cfg.nodes[me].clone();
    for warning in cfg.warnings() {
        warn!("{warning}");
    }
    let tls = understudy_tls::load_node_tls(&cfg.pair.tls_dir, &my.name, &peer.name)
        .with_context(|| format!("loading TLS material from {}", cfg.pair.tls_dir.display()))?;
    let state = StateFile::new(&cfg.pair.state_dir, &cfg.pair.name)?;
    let persisted = state.load()?;
    info!(node = %my.name, peer = %peer.name, epoch = persisted.epoch.0, clean = persisted.clean_shutdown, state = %state.path().display(), "starting");

    let origin = Instant::now();
    let core_cfg = core_config(&cfg, me);
    let (to_core, mut inbox) = mpsc::channel::<ToCore>(INBOX_MAX);
    let (status_tx, status_rx) = watch::channel::<Option<NodeStatus>>(None);
    let hb = Duration::from_millis(cfg.pair.heartbeat_interval_ms);
    let net = Arc::new(NetCtx {
        tls,
        origin,
        heartbeat_interval: hb,
        link_idle_timeout: (hb * 3).max(Duration::from_millis(cfg.pair.failover_timeout_ms / 2)),
        probe_timeout: Duration::from_millis(cfg.pair.probe_timeout_ms),
        to_core: to_core.clone(),
        status_rx,
        links: my
            .channel
            .iter()
            .map(|_| Mutex::new(LinkStats::default()))
            .collect(),
    });

    // Listeners first: a bad address fails the start loudly, before any role decision.
    let mgmt = TcpListener::bind(my.management)
        .await
        .with_context(|| format!("cannot listen on management address {}", my.management))?;
    tokio::spawn(net::serve_management(net.clone(), mgmt));
    for (link, (mine, theirs)) in my.channel.iter().zip(peer.channel.iter()).enumerate() {
        if me == 0 {
            // One connection per link: the first node dials, the second accepts.
            tokio::spawn(net::dial_link(net.clone(), link, *theirs));
        } else {
            let listener = TcpListener::bind(mine)
                .await
                .with_context(|| format!("cannot listen on channel address {mine}"))?;
            tokio::spawn(net::accept_link(net.clone(), link, listener));
        }
    }
    let public_now = Arc::new(Notify::new());
    if !cfg.public_check.targets.is_empty() {
        tokio::spawn(net::public_check(
            cfg.public_check.targets.clone(),
            Duration::from_millis(cfg.public_check.interval_ms),
            Duration::from_millis(cfg.public_check.timeout_ms),
            public_now.clone(),
            to_core.clone(),
        ));
    }
    let control_listener = control::bind(&cfg.pair.control_socket)?;

    let built: Result<Vec<_>, String> = cfg
        .resources
        .iter()
        .map(|r| understudy_resources::build(r, &cfg.pair.name, me))
        .collect();
    let resources = Arc::new(ResourceSet::new(built.map_err(|e| anyhow::anyhow!(e))?));
    let hooks = Arc::new(Hooks::new(&cfg, me));
    let serving = Arc::new(Serving::default());
    let replicator = Arc::new(build_replicator(&cfg, me, net.tls.clone(), &serving)?);
    {
        // Notices reach the event log through the core's inbox, like everything else.
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, bool)>();
        replicator.set_notices(tx);
        let to_core = to_core.clone();
        tokio::spawn(async move {
            while let Some((text, warning)) = rx.recv().await {
                if to_core
                    .send(ToCore::Notice { text, warning })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    if !replicator.is_empty() {
        let addr = SocketAddr::new(my.channel[0].ip(), cfg.pair.replication_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on replication address {addr}"))?;
        tokio::spawn(replicator.clone().serve(listener));
    }
    tokio::spawn(control::serve(
        control_listener,
        to_core.clone(),
        net.clone(),
        peer.management,
        replicator.clone(),
    ));
    let mut daemon = Daemon {
        replicator: replicator.clone(),
        cfg,
        me,
        origin,
        net: net.clone(),
        resources: resources.clone(),
        events: VecDeque::new(),
        hooks,
    };
    // A node starts passive, so nothing may run here yet: a daemon restarted after a
    // crash on a live machine would otherwise inherit its predecessor's floating address
    // and applications (Pacemaker probes for the same reason). Stops are idempotent.
    if !daemon.resources.is_empty() {
        info!("making sure no resource runs here before joining the pair");
        if let Err(e) = daemon.resources.stop_all().await {
            error!(error = %e, "a resource could not be stopped at start-up; it may still be running here");
        }
    }
    let mut watchdog = Watchdog::spawn(&daemon.cfg, &my.name, to_core.clone())?;
    let mut core =
        PairCore::new(core_cfg, persisted, daemon.now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = Arc::new(watch::channel(false).0);
    tokio::spawn(monitor_resources(
        resources.clone(),
        running.subscribe(),
        to_core.clone(),
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut signals = 0u32;
    let mut data_usable = true;
    let mut data_lease: (bool, Option<Time>) = (false, None);
    let lease_ms = daemon.cfg.pair.sync_lease_ms();
    loop {
        if !carry_out(
            &mut core,
            &mut daemon,
            &state,
            &status_tx,
            &to_core,
            &public_now,
            peer.management,
        )? {
            break;
        }
        running.send_replace(core.phase() == Phase::Active);
        // A copy the active cannot catch up makes this node ineligible until resynced.
        let usable = replicator.copies_usable();
        if usable != data_usable {
            data_usable = usable;
            if !usable {
                warn!("a replicated copy here is out of sync: this node will not take over");
            }
            core.handle(daemon.now(), Input::DataUsable { usable });
            continue;
        }
        // How long the sync-mode copies here are sure to hold every acknowledged write.
        if let Some((caught_up, confirmed)) = replicator.data_lease() {
            let until = confirmed.map(|sent| {
                let sent = daemon.time_at(sent);
                Time(
                    sent.0
                        .saturating_add(lease_ms)
                        .saturating_sub(LEASE_MARGIN_MS),
                )
            });
            if data_lease != (caught_up, until) {
                data_lease = (caught_up, until);
                core.handle(daemon.now(), Input::DataLease { caught_up, until });
                continue;
            }
        }
        // The lease says "this loop is alive"; it is armed while resources may run here.
        watchdog.renew(core.phase().is_running());
        // An fsync may be acknowledged without the passive only while this node surely
        // serves: active, with this loop turning. For half the isolation timeout (the loop
        // turns at least every heartbeat, at most half of it), so that it has run out before
        // the watchdog's lease has: a loop that wakes from a longer stall finds it run out,
        // and demotes (the lease lapsed) before it would renew it.
        if core.phase() == Phase::Active {
            serving.renew(Duration::from_millis(
                daemon.cfg.pair.isolation_timeout_ms / 2,
            ));
        } else {
            serving.revoke();
        }
        let deadline = origin + Duration::from_millis(core.next_timeout().0);
        let woke = tokio::select! {
            msg = inbox.recv() => Woke::Message(msg),
            _ = tokio::time::sleep_until(deadline.into()) => Woke::Timeout,
            _ = sigterm.recv() => Woke::Signal,
            _ = sigint.recv() => Woke::Signal,
        };
        // Waking from a stall longer than the lease: the watchdog has fenced this node.
        // Demote on that first. What arrived meanwhile (a monitor finding a resource the
        // fence stopped) must not be acted on as if the node still served: the fault suite
        // saw such a node restart its address while its peer took it over.
        if watchdog.lapsed() && core.phase() == Phase::Active {
            error!("this daemon stalled past its watchdog lease: the watchdog has stopped every resource; demoting");
            core.handle(daemon.now(), Input::Fenced);
        }
        match woke {
            Woke::Message(None) => break,
            Woke::Message(Some(msg)) => handle(&mut core, &mut daemon, msg),
            Woke::Timeout => core.handle(daemon.now(), Input::Tick),
            Woke::Signal => signals += on_signal(&mut core, &daemon, signals),
        }
    }
    // Resources are stopped by now (a clean exit demotes first): disarm and let go.
    watchdog.stop();
    replicator.shutdown().await;
    // Let the links carry the final "leaving" status before the process ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    info!("stopped cleanly");
    Ok(())
}

/// What woke the core loop.
enum Woke {
    Message(Option<ToCore>),
    Timeout,
    Signal,
}

fn on_signal(core: &mut PairCore, daemon: &Daemon, earlier: u32) -> u32 {
    if earlier > 0 {
        error!("second signal: exiting at once; resources may still be running");
        std::process::exit(1);
    }
    info!("shutting down: stopping resources, then telling the peer");
    let _ = core.command(daemon.now(), Command::Shutdown);
    1
}

fn handle(core: &mut PairCore, daemon: &mut Daemon, msg: ToCore) {
    let now = daemon.now();
    match msg {
        ToCore::PeerStatus { via, status } => core.handle(now, Input::PeerStatus { via, status }),
        ToCore::Probed { status, reply } => {
            core.handle(
                now,
                Input::PeerStatus {
                    via: Via::PeerProbe,
                    status,
                },
            );
            let _ = reply.send(core.my_status());
        }
        ToCore::ProbeDone { probe, answer } => match answer {
            Some(status) => core.handle(now, Input::ProbeAnswered { probe, status }),
            None => core.handle(now, Input::ProbeFailed { probe }),
        },
        ToCore::Public { reachable } => core.handle(now, Input::PublicCheck { reachable }),
        ToCore::ResourcesDone {
            start: true, ok, ..
        } => core.handle(now, Input::ResourcesStarted { ok }),
        ToCore::ResourcesDone {
            start: false,
            ok,
            note,
        } => {
            if let Some((text, warning)) = note {
                daemon.record(&Event::Notice {
                    at: now,
                    text,
                    warning,
                });
            }
            core.handle(now, Input::ResourcesStopped { ok })
        }
        ToCore::ResourceFailed { resource } => core.handle(now, Input::ResourceFailed { resource }),
        ToCore::Fenced => {
            error!("the watchdog fenced this node while the daemon was not answering; demoting");
            core.handle(now, Input::Fenced)
        }
        ToCore::ResourceRestarted { resource, ok } => {
            core.handle(now, Input::ResourceRestarted { resource, ok })
        }
        ToCore::Command { command, reply } => {
            let _ = reply.send(core.command(now, command).map_err(|r| r.0));
        }
        ToCore::Status { reply } => {
            let _ = reply.send(report::build(core, daemon));
        }
        ToCore::Notice { text, warning } => daemon.record(&Event::Notice {
            at: now,
            text,
            warning,
        }),
    }
}

/// Carries out the core's outputs in order. Returns false once the core asked to exit.
fn carry_out(
    core: &mut PairCore,
    daemon: &mut Daemon,
    state: &StateFile,
    status_tx: &watch::Sender<Option<NodeStatus>>,
    to_core: &mpsc::Sender<ToCore>,
    public_now: &Notify,
    peer_management: SocketAddr,
) -> Result<bool> {
    while let Some(output) = core.poll_output() {
        match output {
            Output::SendStatus(status) => {
                status_tx.send_replace(Some(status));
            }
            Output::Probe { probe, status } => {
                net::spawn_probe(daemon.net.clone(), peer_management, probe, status)
            }
            // Synchronous on purpose: nothing after it may happen before it is durable.
            Output::Persist(p) => state.save(&p).context("persisting the role state")?,
            Output::StartResources | Output::StopResources => {
                let start = matches!(output, Output::StartResources);
                if !start {
                    // Before the stop waits for a restart in progress: that restart must
                    // not start its resource once we are leaving the active role.
                    daemon.resources.forbid_restarts();
                }
                let resources = daemon.resources.clone();
                let to_core = to_core.clone();
                let hooks = daemon.hooks.clone();
                let replicator = daemon.replicator.clone();
                let generation = core.epoch().0;
                // A planned move of the role (an operator's switchover, or one a failing
                // resource asked for) must lose nothing; a shutdown or a step-down after a
                // split brain lets go of the data whatever the peer confirmed.
                let reason = core.status().reason;
                let planned_move =
                    !start && matches!(reason, Some(Reason::Switchover | Reason::ResourceFailed));
                // The peer serves, or is about to: a copy that steps down with ops it never
                // confirmed is then out of sync until resynced (see Replicator::demote).
                let peer_takes_over = planned_move
                    || matches!(
                        reason,
                        Some(
                            Reason::PeerActiveHigherEpoch
                                | Reason::PublicNetworkLost
                                | Reason::Fenced
                        )
                    );
                tokio::spawn(async move {
                    let (before, after) = if start {
                        (HookPoint::PreStart, HookPoint::PostStart)
                    } else {
                        (HookPoint::PreStop, HookPoint::PostStop)
                    };
                    hooks.run(before, &[]).await;
                    let mut note = None;
                    let result = if start {
                        // The data first: apply what was received, mount, capture. Only then
                        // may the applications start.
                        match replicator.promote(generation).await {
                            Ok(()) => {
                                let started = resources.start_all().await;
                                if started.is_err() {
                                    // The core goes back to passive: so must the data, or
                                    // this node keeps capturing (and dialling the peer as
                                    // if it were active) while the peer serves.
                                    replicator.demote(false).await;
                                }
                                started
                            }
                            Err(e) => Err(understudy_resources::ResourceError::other(
                                "replication",
                                understudy_resources::Action::Start,
                                e,
                            )),
                        }
                    } else {
                        // Applications stop first; then the queue drains to the peer, so a
                        // switchover loses nothing. A failed stop keeps this node active
                        // (something may still run), and so its data stays mounted and
                        // captured: demoted, the mount point would be a bare directory that
                        // anything still running writes into, unreplicated and then hidden.
                        let mut stopped = resources.stop_all().await;
                        // Before the data is let go: a planned move goes ahead only once the
                        // peer confirmed every op. If it cannot (the stream is cut, the peer
                        // stalls), the move is called off: the applications start again here
                        // and this node stays active, rather than hand the role to a copy
                        // that lacks the last writes.
                        let unconfirmed: Vec<(String, u64, bool)> =
                            if stopped.is_ok() && planned_move {
                                replicator
                                    .confirm_drained()
                                    .await
                                    .into_iter()
                                    .filter(|(_, _, confirmed)| !confirmed)
                                    .collect()
                            } else {
                                Vec::new()
                            };
                        if !unconfirmed.is_empty() {
                            let sets = unconfirmed
                                .iter()
                                .map(|(name, last, _)| format!("set {name} up to seq {last}"))
                                .collect::<Vec<_>>()
                                .join(", ");
                            let restarted = resources.start_all().await;
                            note = Some((
                                format!(
                                    "switchover called off: the peer did not confirm {sets}; {}",
                                    match &restarted {
                                        Ok(()) => "the applications run here again".to_string(),
                                        Err(e) =>
                                            format!("starting the applications again failed: {e}"),
                                    }
                                ),
                                true,
                            ));
                            stopped = Err(understudy_resources::ResourceError::other(
                                "replication",
                                understudy_resources::Action::Stop,
                                "the peer did not confirm the data; the switchover was called off",
                            ));
                        }
                        let drained = if stopped.is_ok() {
                            replicator.demote(peer_takes_over).await
                        } else {
                            Vec::new()
                        };
                        if !drained.is_empty() {
                            let all_confirmed = drained.iter().all(|(_, _, ok)| *ok);
                            note = Some((
                                drained
                                    .iter()
                                    .map(|(name, last, ok)| {
                                        if *ok {
                                            format!("set {name}: drained to seq {last}, confirmed by the peer")
                                        } else {
                                            format!("set {name}: NOT drained; last seq {last} not confirmed by the peer")
                                        }
                                    })
                                    .collect::<Vec<_>>()
                                    .join("; "),
                                !all_confirmed,
                            ));
                        }
                        stopped
                    };
                    let outcome = if result.is_ok() { "ok" } else { "failed" };
                    hooks
                        .run(after, &[("UNDERSTUDY_RESULT".into(), outcome.into())])
                        .await;
                    if let Err(e) = &result {
                        error!(error = %e, "{} resources failed", if start { "starting" } else { "stopping" });
                    }
                    let _ = to_core
                        .send(ToCore::ResourcesDone {
                            start,
                            ok: result.is_ok(),
                            note,
                        })
                        .await;
                });
            }
            Output::RestartResource(resource) => {
                let resources = daemon.resources.clone();
                let to_core = to_core.clone();
                tokio::spawn(async move {
                    let ok = resources.restart_one(resource).await.is_ok();
                    let _ = to_core
                        .send(ToCore::ResourceRestarted { resource, ok })
                        .await;
                });
            }
            Output::RunFailureCommand { resource, step } => {
                if let Some(cmd) = failure_command(&daemon.cfg, resource, step) {
                    let name = daemon.cfg.resources[resource].name.clone();
                    tokio::spawn(crate::hooks::run_detached(
                        cmd,
                        vec![("UNDERSTUDY_RESOURCE".into(), name)],
                    ));
                }
            }
            Output::Event(event) => daemon.record(&event),
            Output::CheckPublic => public_now.notify_one(),
            Output::Exit => return Ok(false),
        }
    }
    Ok(true)
}

/// Monitors each resource at its interval while this node is active. Failures are
/// logged and shown in status; escalation (restart, switchover) comes with the
/// application-modules work.
async fn monitor_resources(
    resources: Arc<ResourceSet>,
    mut active: watch::Receiver<bool>,
    to_core: mpsc::Sender<ToCore>,
) {
    if resources.is_empty() {
        return;
    }
    let tick = (0..resources.len())
        .map(|i| resources.monitor_interval(i))
        .min()
        .unwrap_or(Duration::from_secs(10));
    let mut last = vec![Instant::now(); resources.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = active.changed() => {}
        }
        if !*active.borrow() {
            continue;
        }
        for (i, last_run) in last.iter_mut().enumerate() {
            if last_run.elapsed() >= resources.monitor_interval(i) {
                *last_run = Instant::now();
                let healthy = match resources.monitor_once(i).await {
                    Ok(understudy_resources::Health::Running) => true,
                    Ok(other) => {
                        warn!(resource = resources.resource(i).name(), health = ?other, "resource is not running");
                        false
                    }
                    Err(e) => {
                        warn!(error = %e, "resource monitor failed");
                        false
                    }
                };
                // The core may have demoted meanwhile; it ignores failures unless active.
                if !healthy
                    && *active.borrow()
                    && to_core
                        .send(ToCore::ResourceFailed { resource: i })
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    }
}
