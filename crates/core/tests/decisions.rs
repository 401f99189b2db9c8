//! Decision-table tests for the pair core: one test per rule, each saying why the rule exists.
//!
//! They drive a single `PairCore` by hand with explicit times and assert on its outputs.

use understudy_core::{
    Command, CoreConfig, Epoch, EscalationPolicy, Event, FailureStep, Input, NodeIndex, NodeStatus,
    Output, PairCore, PersistedState, Phase, ProbeId, Reason, Time, Via,
};

const HB: u64 = 100;
const FAILOVER: u64 = 1000;
const ISOLATION: u64 = 600;

fn cfg(me: u8) -> CoreConfig {
    CoreConfig {
        me: NodeIndex(me),
        heartbeat_interval_ms: HB,
        failover_timeout_ms: FAILOVER,
        isolation_timeout_ms: ISOLATION,
        probe_timeout_ms: 250,
        auto_failover: true,
        public_check_enabled: true,
        start_failure_backoff_ms: 60_000,
        escalation: vec![EscalationPolicy {
            steps: vec![
                FailureStep::Restart,
                FailureStep::Restart,
                FailureStep::Switchover,
            ],
            window_ms: 600_000,
        }],
        auto_move_limit: 2,
        auto_move_window_ms: 600_000,
        data_lease: false,
    }
}

/// A harness around one core: records every output.
struct Node {
    core: PairCore,
    now: u64,
    log: Vec<Output>,
}

impl Node {
    fn new(me: u8) -> Node {
        Node::with(cfg(me), PersistedState::FRESH)
    }

    fn with(cfg: CoreConfig, persisted: PersistedState) -> Node {
        let core = PairCore::new(cfg, persisted, Time(0)).expect("valid config");
        let mut node = Node {
            core,
            now: 0,
            log: Vec::new(),
        };
        node.drain();
        node
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.core.poll_output() {
            out.push(o);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    fn at(&mut self, ms: u64, input: Input) -> Vec<Output> {
        self.now = ms;
        self.core.handle(Time(ms), input);
        self.drain()
    }

    fn cmd(&mut self, ms: u64, command: Command) -> Result<(), String> {
        self.now = ms;
        let r = self.core.command(Time(ms), command).map_err(|r| r.0);
        self.drain();
        r
    }

    fn public_ok(&mut self, ms: u64) {
        self.at(ms, Input::PublicCheck { reachable: true });
    }

    /// Complete a start or stop the core asked for.
    fn finish_resources(&mut self, ms: u64) {
        let want_start = self.log.iter().rev().find_map(|o| match o {
            Output::StartResources => Some(true),
            Output::StopResources => Some(false),
            _ => None,
        });
        match want_start {
            Some(true) => self.at(ms, Input::ResourcesStarted { ok: true }),
            Some(false) => self.at(ms, Input::ResourcesStopped { ok: true }),
            None => panic!("no resource action requested"),
        };
    }

    fn pending_probe(&self) -> Option<ProbeId> {
        // The newest probe in the log; the core allows one in flight.
        self.log.iter().rev().find_map(|o| match o {
            Output::Probe { probe, .. } => Some(*probe),
            _ => None,
        })
    }

    fn reasons(&self) -> Vec<(Phase, Reason)> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::Event(Event::RoleChange { to, reason, .. }) => Some((*to, *reason)),
                _ => None,
            })
            .collect()
    }
}

fn peer(node: u8, phase: Phase, epoch: u64) -> NodeStatus {
    NodeStatus {
        node: NodeIndex(node),
        phase,
        epoch: Epoch(epoch),
        last_active_epoch: if phase.is_running() {
            Epoch(epoch)
        } else {
            Epoch(0)
        },
        public_ok: true,
        eligible: true,
        yielding: false,
        leaving: false,
        requests_switchover: false,
        auto_moves: 0,
    }
}

fn channel(status: NodeStatus) -> Input {
    Input::PeerStatus {
        via: Via::Channel,
        status,
    }
}

/// Node 1 passive, having followed node 0 active in epoch 2, channel last heard at `t`.
fn passive_following_active(t: u64) -> Node {
    let mut b = Node::new(1);
    b.public_ok(0);
    b.at(t, channel(peer(0, Phase::Active, 2)));
    assert_eq!(b.core.phase(), Phase::Passive);
    b
}

/// Runs probes until the core has one that failed, at times after `from`.
fn fail_probes_until(b: &mut Node, from: u64, until: u64) {
    let mut t = from;
    while t <= until {
        b.public_ok(t);
        if let Some(p) = b.pending_probe() {
            b.at(t, Input::ProbeFailed { probe: p });
        }
        t += HB / 2;
    }
}

#[test]
fn starts_passive_and_persists_unclean_marker_first() {
    // After a crash a node cannot know whether its peer took over meanwhile.
    let mut n = Node::new(0);
    assert_eq!(n.core.phase(), Phase::Passive);
    assert!(matches!(n.log.first(), Some(Output::Persist(p)) if !p.clean_shutdown));
    // Alone, even as node 0 with the best election key, it never promotes by itself.
    for t in (0..=10_000).step_by(50) {
        n.public_ok(t);
        if let Some(p) = n.pending_probe() {
            n.at(t, Input::ProbeFailed { probe: p });
        }
    }
    assert_eq!(n.core.phase(), Phase::Passive);
    assert!(n.core.status().waiting_for.is_some());
}

#[test]
fn last_active_node_restarted_alone_stays_passive() {
    // "It takes the active role on its own only if it knows nothing newer exists": alone,
    // it cannot know that, because the peer may have failed over while it was down.
    let persisted = PersistedState {
        epoch: Epoch(4),
        last_active_epoch: Epoch(4),
        clean_shutdown: false,
    };
    let mut n = Node::with(cfg(0), persisted);
    fail_probes_until(&mut n, 0, 5000);
    assert_eq!(n.core.phase(), Phase::Passive);
}

#[test]
fn fresh_pair_elects_first_node() {
    // Both passive and in touch: exactly one must serve, chosen the same way by both.
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    a.public_ok(0);
    b.public_ok(0);
    a.at(10, channel(b.core.my_status()));
    b.at(10, channel(a.core.my_status()));
    assert_eq!(a.core.phase(), Phase::Promoting);
    assert_eq!(b.core.phase(), Phase::Passive);
    assert_eq!(a.core.epoch().0 % 2, 0, "node 0 takes even epochs");
}

#[test]
fn election_ignores_public_flaps_of_the_first_check() {
    // At start-up each node's first public check completes at a different moment; a key
    // that included it let both nodes win from each other's stale status.
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    b.public_ok(0);
    let stale_a = a.core.my_status(); // public_ok false: its first check has not run yet
    a.public_ok(5);
    let stale_b = b.core.my_status();
    b.at(10, channel(stale_a));
    a.at(10, channel(stale_b));
    assert_eq!(a.core.phase(), Phase::Promoting);
    assert_eq!(b.core.phase(), Phase::Passive, "node 1 must not also win");
}

#[test]
fn election_loser_steps_in_when_the_winner_lacks_public_network() {
    // The chosen node cannot serve clients; after a failover timeout the other one does.
    let mut b = Node::new(1);
    let mut a_status = peer(0, Phase::Passive, 0);
    a_status.public_ok = false;
    for t in (0..=FAILOVER + 100).step_by(100) {
        b.public_ok(t);
        b.at(t, channel(a_status));
        if t < FAILOVER {
            assert_eq!(b.core.phase(), Phase::Passive, "at {t}");
        }
    }
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn election_prefers_the_most_recently_active_node() {
    // The node that was active last holds the freshest data.
    let persisted = PersistedState {
        epoch: Epoch(5),
        last_active_epoch: Epoch(5),
        clean_shutdown: false,
    };
    let mut b = Node::with(cfg(1), persisted);
    b.public_ok(0);
    let mut a_status = peer(0, Phase::Passive, 4);
    a_status.last_active_epoch = Epoch(2);
    b.at(10, channel(a_status));
    assert_eq!(b.core.phase(), Phase::Promoting);
    assert!(b.core.epoch() > Epoch(5));
}

#[test]
fn no_election_on_the_status_a_peers_probe_carried() {
    // The peer probes because it is deciding whether to take over; by the time its probe
    // arrives it may be promoting. The fault-injection suite saw a node restarted after a
    // power cut win an election on such a status 13 ms after starting, while its peer was
    // failing over to it: two nodes promoting, stopped only by the address conflict check.
    let persisted = PersistedState {
        epoch: Epoch(90),
        last_active_epoch: Epoch(90),
        clean_shutdown: false,
    };
    let mut a = Node::with(cfg(0), persisted);
    a.public_ok(0);
    let mut b_then = peer(1, Phase::Passive, 89);
    b_then.last_active_epoch = Epoch(87);
    a.at(
        10,
        Input::PeerStatus {
            via: Via::PeerProbe,
            status: b_then,
        },
    );
    assert_eq!(
        a.core.phase(),
        Phase::Passive,
        "no election on a probe's status"
    );
    assert_eq!(
        a.core.status().waiting_for,
        Some("waiting for a current status of the peer")
    );
    // The peer's heartbeat says what it is now: promoting. This node stays passive.
    a.at(20, channel(peer(1, Phase::Promoting, 91)));
    assert_eq!(a.core.phase(), Phase::Passive);
    // Had the peer still been passive, a current status decides the election as before.
    let mut a = Node::with(cfg(0), persisted);
    a.public_ok(0);
    a.at(
        10,
        Input::PeerStatus {
            via: Via::Management,
            status: b_then,
        },
    );
    assert_eq!(a.core.phase(), Phase::Promoting);
}

#[test]
fn failover_after_silence_and_failed_probe() {
    // The active died: the channel is silent and its management address does not answer.
    let mut b = passive_following_active(0);
    fail_probes_until(&mut b, 200, FAILOVER - 1);
    assert_eq!(
        b.core.phase(),
        Phase::Passive,
        "not before failover_timeout"
    );
    fail_probes_until(&mut b, FAILOVER, FAILOVER + 100);
    assert_eq!(b.core.phase(), Phase::Promoting);
    assert_eq!(
        b.reasons().last(),
        Some(&(Phase::Promoting, Reason::Failover))
    );
    // The new epoch was persisted before the resources were started.
    let persist = b
        .log
        .iter()
        .rposition(|o| matches!(o, Output::Persist(p) if p.epoch == b.core.epoch()));
    let start = b
        .log
        .iter()
        .rposition(|o| matches!(o, Output::StartResources));
    assert!(persist.expect("persisted") < start.expect("started"));
    assert_eq!(b.core.epoch(), Epoch(3));
}

#[test]
fn failover_happens_at_the_timeout_not_later() {
    // The deadline is driven by next_timeout, not by a coarse poll.
    // (A node whose public link came up less than a second ago waits for it to settle;
    // this one has been up for a while when the active goes silent at 1000.)
    let mut b = passive_following_active(0);
    b.public_ok(500);
    b.at(1000, channel(peer(0, Phase::Active, 2)));
    fail_probes_until(&mut b, 1200, 1950);
    let next = b.core.next_timeout();
    assert!(
        next <= Time(1000 + FAILOVER),
        "wakes at the failover deadline, got {next:?}"
    );
    b.public_ok(1000 + FAILOVER);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn channel_only_partition_does_not_fail_over() {
    // The active still answers on the public network: it is serving, only the channel is cut.
    let mut b = passive_following_active(0);
    answer_probes_until(&mut b, 200, 10_000);
    assert_eq!(b.core.phase(), Phase::Passive);
}

#[test]
fn probe_failure_must_be_newer_than_last_contact() {
    // A probe that failed before the active was last heard says nothing about now.
    let mut b = passive_following_active(0);
    b.public_ok(250);
    let p = b
        .pending_probe()
        .expect("probing after 2 heartbeats of silence");
    b.at(260, Input::ProbeFailed { probe: p });
    b.at(300, channel(peer(0, Phase::Active, 2))); // heard again
                                                   // Silence again, but no newer probe has completed: stay passive past the timeout.
    b.public_ok(1350);
    let p2 = b.pending_probe().expect("probes again");
    assert!(p2 > p);
    assert_eq!(b.core.phase(), Phase::Passive);
    let out = b.at(1360, Input::ProbeFailed { probe: p2 });
    // Our own public link must be shown up after the failed probe: the core asks for a check.
    assert!(out.contains(&Output::CheckPublic), "{out:?}");
    assert_eq!(b.core.phase(), Phase::Passive);
    b.public_ok(1365);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn probe_failure_during_own_public_outage_is_not_evidence() {
    // The probe failed because our own public link was down; a check that succeeds only
    // afterwards does not make that failure mean the active is gone.
    let mut b = passive_following_active(0);
    b.public_ok(150);
    b.at(200, Input::PublicCheck { reachable: false });
    b.at(1050, Input::Tick);
    let p = b.pending_probe().expect("probing");
    b.at(1100, Input::ProbeFailed { probe: p });
    b.public_ok(1110);
    assert_eq!(
        b.core.phase(),
        Phase::Passive,
        "the public network was down when the probe was sent"
    );
    // Probes failing right after the link came back are not evidence yet: its neighbour
    // entries may still be resolving.
    fail_probes_until(&mut b, 1200, 2000);
    assert_eq!(
        b.core.phase(),
        Phase::Passive,
        "the public link just came back"
    );
    // Once it has held for the settle time, a failing probe is evidence.
    fail_probes_until(&mut b, 2050, 2400);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn a_passive_whose_data_is_out_of_sync_does_not_take_over() {
    // The active told this passive its copy cannot be caught up: it must not serve it.
    let mut b = passive_following_active(0);
    b.at(50, Input::DataUsable { usable: false });
    fail_probes_until(&mut b, 200, 5000);
    assert_eq!(b.core.phase(), Phase::Passive);
    assert_eq!(
        b.core.status().waiting_for,
        Some("this node's replicated data is out of sync")
    );
    assert!(!b.core.my_status().eligible, "peers see it as ineligible");
    // Once resynced, the ordinary rules apply again.
    b.at(5001, Input::DataUsable { usable: true });
    fail_probes_until(&mut b, 5001, 5300);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn an_out_of_sync_copy_takes_over_only_when_forced() {
    // A split brain's loser, or a copy mid-resync, with the active gone: not automatically,
    // but the operator may still choose it (the only copy left is better than none).
    let mut b = passive_following_active(0);
    b.at(50, Input::DataUsable { usable: false });
    fail_probes_until(&mut b, 200, 5000);
    assert_eq!(b.core.phase(), Phase::Passive, "no automatic takeover");
    assert_eq!(b.cmd(5001, Command::ForceFailover), Ok(()));
    assert_eq!(b.core.phase(), Phase::Promoting);
    assert_eq!(
        b.reasons().last(),
        Some(&(Phase::Promoting, Reason::Forced))
    );
}

#[test]
fn no_failover_when_auto_failover_is_off() {
    // The operator chose manual failover.
    let mut c = cfg(1);
    c.auto_failover = false;
    let mut b = Node::with(c, PersistedState::FRESH);
    b.public_ok(0);
    b.at(0, channel(peer(0, Phase::Active, 2)));
    fail_probes_until(&mut b, 200, 5000);
    assert_eq!(b.core.phase(), Phase::Passive);
    assert_eq!(b.core.status().waiting_for, Some("auto_failover is off"));
}

#[test]
fn passive_without_public_network_does_not_fail_over() {
    // A passive cut off from everything would otherwise promote itself while the active,
    // which it merely cannot see, goes on serving.
    let mut b = passive_following_active(0);
    let mut t = 200;
    while t < 5000 {
        if let Some(p) = b.pending_probe() {
            b.at(t, Input::ProbeFailed { probe: p });
        } else {
            b.at(t, Input::Tick);
        }
        t += 50;
    }
    assert_eq!(b.core.phase(), Phase::Passive);
}

/// Node 0 active in epoch 2, with node 1 passive on the channel.
fn active_node() -> Node {
    let mut a = Node::new(0);
    a.public_ok(0);
    a.at(0, channel(peer(1, Phase::Passive, 0)));
    a.finish_resources(5);
    assert_eq!(a.core.phase(), Phase::Active);
    assert_eq!(a.core.epoch(), Epoch(2));
    a
}

#[test]
fn isolated_active_demotes_before_the_passive_may_promote() {
    // Lost channel and public network: the passive will take over after failover_timeout,
    // so the active must have stopped its resources by then.
    let mut a = active_node();
    let mut t = 10;
    while t < ISOLATION + 100 && a.core.phase() == Phase::Active {
        if let Some(p) = a.pending_probe() {
            a.at(t, Input::ProbeFailed { probe: p });
        }
        a.at(t, Input::PublicCheck { reachable: false });
        t += 10;
    }
    assert_eq!(a.core.phase(), Phase::Demoting);
    assert!(t <= ISOLATION + 20, "demoted at {t}");
    a.finish_resources(t);
    assert_eq!(a.core.phase(), Phase::Passive);
    assert_eq!(
        a.reasons().last(),
        Some(&(Phase::Passive, Reason::Isolation))
    );
}

#[test]
fn active_keeps_serving_when_only_the_channel_is_lost() {
    // Still reaching the public network, it may well be the only node serving.
    let mut a = active_node();
    for t in (10..5000).step_by(50) {
        a.public_ok(t);
        if let Some(p) = a.pending_probe() {
            a.at(t, Input::ProbeFailed { probe: p });
        }
    }
    assert_eq!(a.core.phase(), Phase::Active);
}

#[test]
fn active_losing_public_network_hands_over_to_healthy_passive() {
    // Clients cannot reach it, but they can reach the passive.
    let mut a = active_node();
    let mut t = 10;
    while t < 2000 && a.core.phase() == Phase::Active {
        a.at(t, channel(peer(1, Phase::Passive, 0)));
        a.at(t, Input::PublicCheck { reachable: false });
        t += HB;
    }
    assert_eq!(a.core.phase(), Phase::Demoting);
    a.finish_resources(t);
    let me = a.core.my_status();
    assert!(me.yielding, "a handing-over node yields the election");
    assert_eq!(
        a.reasons().last(),
        Some(&(Phase::Passive, Reason::PublicNetworkLost))
    );
}

#[test]
fn silence_without_failed_checks_does_not_isolate() {
    // A paused process or a clock jump shows no results at all; only a failed public check
    // is evidence of isolation, so a healthy active is not demoted by its own stall.
    let mut a = active_node();
    a.at(5000, Input::Tick);
    assert_eq!(a.core.phase(), Phase::Active);
    a.at(5001, Input::PublicCheck { reachable: false });
    assert_eq!(a.core.phase(), Phase::Demoting);
}

#[test]
fn active_demotes_on_seeing_active_peer_with_higher_epoch() {
    // After a partition both may be active; the newer epoch wins, the older stops.
    let mut a = active_node();
    a.public_ok(10);
    a.at(20, channel(peer(1, Phase::Active, 3)));
    assert_eq!(a.core.phase(), Phase::Demoting);
    assert_eq!(
        a.reasons().last(),
        Some(&(Phase::Demoting, Reason::PeerActiveHigherEpoch))
    );
}

#[test]
fn active_ignores_active_peer_with_lower_epoch() {
    // That peer is the one that must demote; stopping both would leave nobody serving.
    let mut a = active_node();
    a.public_ok(10);
    a.at(20, channel(peer(1, Phase::Active, 1)));
    assert_eq!(a.core.phase(), Phase::Active);
}

#[test]
fn higher_epoch_learnt_through_a_probe_also_demotes() {
    // A node woken from a long pause may have lost the channel; the public network still
    // tells it that its peer took over.
    let mut a = active_node();
    a.public_ok(3000);
    let p = a
        .pending_probe()
        .expect("probes when the channel is silent");
    a.at(
        3001,
        Input::ProbeAnswered {
            probe: p,
            status: peer(1, Phase::Active, 3),
        },
    );
    assert_eq!(a.core.phase(), Phase::Demoting);
}

#[test]
fn switchover_hands_over_and_peer_promotes() {
    let mut a = active_node();
    let mut b = Node::new(1);
    b.public_ok(0);
    a.public_ok(10);
    b.at(10, channel(a.core.my_status()));
    assert_eq!(a.cmd(20, Command::Switchover), Ok(()));
    assert_eq!(a.core.phase(), Phase::Demoting);
    a.finish_resources(30);
    assert_eq!(a.core.phase(), Phase::Passive);
    b.at(31, channel(a.core.my_status()));
    assert_eq!(b.core.phase(), Phase::Promoting);
    assert_eq!(
        b.reasons().last(),
        Some(&(Phase::Promoting, Reason::Switchover))
    );
    assert!(b.core.epoch() > a.core.epoch() || b.core.epoch() > Epoch(2));
    // The old active does not fight back in the election while it yields.
    b.finish_resources(40);
    a.at(41, channel(b.core.my_status()));
    assert_eq!(a.core.phase(), Phase::Passive);
}

#[test]
fn switchover_from_the_passive_asks_the_active() {
    let mut a = active_node();
    let mut b = Node::new(1);
    b.public_ok(0);
    b.at(10, channel(a.core.my_status()));
    assert_eq!(b.cmd(20, Command::Switchover), Ok(()));
    a.public_ok(20);
    a.at(21, channel(b.core.my_status()));
    assert_eq!(a.core.phase(), Phase::Demoting);
}

#[test]
fn switchover_refused_when_peer_not_connected() {
    // Handing over to a peer we cannot see would leave nobody serving.
    let mut a = active_node();
    a.public_ok(2000);
    let err = a.cmd(2000, Command::Switchover).expect_err("refused");
    assert!(err.contains("not connected"), "{err}");
    assert_eq!(a.core.phase(), Phase::Active);
}

#[test]
fn switchover_refused_when_peer_lacks_public_network() {
    let mut a = active_node();
    a.public_ok(10);
    let mut b = peer(1, Phase::Passive, 0);
    b.public_ok = false;
    a.at(10, channel(b));
    let err = a.cmd(20, Command::Switchover).expect_err("refused");
    assert!(err.contains("public"), "{err}");
}

#[test]
fn force_failover_refused_while_peer_is_reachable_and_active() {
    let mut b = passive_following_active(0);
    let err = b.cmd(50, Command::ForceFailover).expect_err("refused");
    assert!(err.contains("reachable"), "{err}");
    assert_eq!(b.core.phase(), Phase::Passive);
}

#[test]
fn force_failover_promotes_a_lone_node() {
    // The operator knows the peer is gone for good.
    let mut n = Node::new(0);
    assert_eq!(n.cmd(5000, Command::ForceFailover), Ok(()));
    assert_eq!(n.core.phase(), Phase::Promoting);
    assert_eq!(
        n.reasons().last(),
        Some(&(Phase::Promoting, Reason::Forced))
    );
}

#[test]
fn failed_start_backs_off_and_lets_the_peer_win() {
    // A node whose resources cannot start must not keep grabbing the role.
    let mut a = Node::new(0);
    a.public_ok(0);
    a.at(0, channel(peer(1, Phase::Passive, 0)));
    assert_eq!(a.core.phase(), Phase::Promoting);
    a.at(5, Input::ResourcesStarted { ok: false });
    assert_eq!(a.core.phase(), Phase::Passive);
    assert!(!a.core.my_status().eligible);
    a.at(50, channel(peer(1, Phase::Passive, 0)));
    assert_eq!(a.core.phase(), Phase::Passive);
}

#[test]
fn stop_failure_keeps_the_node_active() {
    // Something may still be running; claiming passive would invite a second active.
    let mut a = active_node();
    a.public_ok(10);
    a.at(10, channel(peer(1, Phase::Passive, 0)));
    a.cmd(20, Command::Switchover).expect("accepted");
    a.at(30, Input::ResourcesStopped { ok: false });
    assert_eq!(a.core.phase(), Phase::Active);
    assert!(!a.core.my_status().yielding);
}

#[test]
fn clean_shutdown_of_active_stops_resources_then_hands_over() {
    let mut a = active_node();
    a.public_ok(10);
    a.cmd(20, Command::Shutdown).expect("accepted");
    assert_eq!(a.core.phase(), Phase::Demoting);
    a.finish_resources(30);
    assert!(a
        .log
        .iter()
        .any(|o| matches!(o, Output::Persist(p) if p.clean_shutdown)));
    assert!(matches!(a.log.last(), Some(Output::Exit)));
    let leaving = a.core.my_status();
    assert!(leaving.leaving);
    // The passive takes over at once: the leaving node has stopped everything.
    let mut b = Node::new(1);
    b.public_ok(0);
    b.at(0, channel(peer(0, Phase::Active, 2)));
    b.at(31, channel(leaving));
    assert_eq!(b.core.phase(), Phase::Promoting);
    assert_eq!(
        b.reasons().last(),
        Some(&(Phase::Promoting, Reason::PeerLeft))
    );
}

#[test]
fn status_from_a_wrong_node_is_ignored() {
    // A frame claiming to be ourselves must not drive decisions.
    let mut a = Node::new(0);
    a.public_ok(0);
    a.at(0, channel(peer(0, Phase::Passive, 0)));
    assert_eq!(a.core.phase(), Phase::Passive);
    assert!(a.core.status().peer.is_none());
}

#[test]
fn epochs_never_collide_between_nodes() {
    for floor in 0..100 {
        let a = Epoch::next_for(NodeIndex(0), Epoch(floor));
        let b = Epoch::next_for(NodeIndex(1), Epoch(floor));
        assert!(a.0 > floor && b.0 > floor);
        assert_eq!(a.0 % 2, 0);
        assert_eq!(b.0 % 2, 1);
    }
}

#[test]
fn config_rejects_isolation_not_shorter_than_failover() {
    let mut c = cfg(0);
    c.isolation_timeout_ms = FAILOVER;
    assert!(PairCore::new(c, PersistedState::FRESH, Time(0)).is_err());
}

#[test]
fn heartbeats_are_sent_every_interval() {
    let mut n = Node::new(0);
    let mut sent = 0;
    for t in (0..=1000).step_by(10) {
        sent += n
            .at(t, Input::Tick)
            .iter()
            .filter(|o| matches!(o, Output::SendStatus(_)))
            .count();
    }
    assert!((10..=11).contains(&sent), "sent {sent}");
}

#[test]
fn a_probe_lost_to_a_clock_jump_is_not_evidence() {
    // The passive's clock leapt forward while a probe was in flight; the probe did not
    // fail, time merely seemed to pass. Failing over on it would be a false failover.
    let mut b = passive_following_active(0);
    b.public_ok(250);
    assert!(b.pending_probe().is_some());
    b.public_ok(5000); // the jump: channel silence looks long, the probe looks overdue
    b.public_ok(5010);
    assert_eq!(b.core.phase(), Phase::Passive);
    // A fresh probe goes out and is answered by the serving active: still no failover.
    let p = b.pending_probe().expect("a new probe");
    b.at(
        5020,
        Input::ProbeAnswered {
            probe: p,
            status: peer(0, Phase::Active, 2),
        },
    );
    b.public_ok(5030);
    assert_eq!(b.core.phase(), Phase::Passive);
}

fn failure_actions(n: &Node) -> Vec<String> {
    n.log
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::ResourceFailure { action, .. }) => Some(action.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn resource_failures_climb_the_ladder_restart_restart_switchover() {
    // Like Neverfail's 1st/2nd/3rd failure actions: try to heal in place before moving.
    let mut a = active_node();
    a.public_ok(10);
    a.at(10, channel(peer(1, Phase::Passive, 0)));
    let out = a.at(20, Input::ResourceFailed { resource: 0 });
    assert!(out.contains(&Output::RestartResource(0)));
    a.at(30, Input::ResourceFailed { resource: 0 });
    assert_eq!(a.core.phase(), Phase::Active);
    a.at(40, channel(peer(1, Phase::Passive, 0)));
    a.at(50, Input::ResourceFailed { resource: 0 });
    assert_eq!(a.core.phase(), Phase::Demoting);
    assert_eq!(
        failure_actions(&a),
        vec!["restart", "restart", "switchover"]
    );
    a.finish_resources(60);
    assert!(a.core.my_status().yielding);
    assert_eq!(a.core.my_status().auto_moves, 1);
    assert_eq!(
        a.reasons().last(),
        Some(&(Phase::Passive, Reason::ResourceFailed))
    );
}

#[test]
fn failure_switchover_needs_a_healthy_peer_else_restarts() {
    // Moving to a peer that cannot serve would turn a failing resource into an outage.
    let mut a = active_node();
    a.public_ok(2000); // the channel has gone silent by now
    for t in [2010, 2020, 2030] {
        a.at(t, Input::ResourceFailed { resource: 0 });
    }
    assert_eq!(a.core.phase(), Phase::Active);
    let actions = failure_actions(&a);
    assert!(
        actions[2].starts_with("restart (switchover not possible"),
        "{actions:?}"
    );
}

#[test]
fn a_resource_failing_on_both_nodes_stops_moving_at_the_limit() {
    // The move count follows the role: the node taking over adopts it.
    let mut a = active_node();
    let mut b = Node::new(1);
    b.public_ok(0);
    a.public_ok(10);
    a.at(10, channel(b.core.my_status()));
    for t in [20, 30, 40] {
        a.at(t, Input::ResourceFailed { resource: 0 });
    }
    a.finish_resources(50);
    b.at(51, channel(a.core.my_status()));
    assert_eq!(b.core.phase(), Phase::Promoting);
    b.finish_resources(60);
    assert_eq!(b.core.my_status().auto_moves, 1, "adopted the peer's move");
    // B fails too: second move (limit 2) is allowed.
    b.public_ok(60);
    a.public_ok(60);
    a.at(61, channel(b.core.my_status())); // A hears B serving: its handover is complete
    b.at(61, channel(a.core.my_status()));
    for t in [70, 80, 90] {
        b.at(t, Input::ResourceFailed { resource: 0 });
    }
    assert_eq!(b.core.phase(), Phase::Demoting);
    b.finish_resources(100);
    a.at(101, channel(b.core.my_status()));
    assert_eq!(a.core.phase(), Phase::Promoting);
    a.finish_resources(110);
    assert_eq!(a.core.my_status().auto_moves, 2);
    // A fails again: the limit is reached, so it restarts in place instead of moving.
    a.public_ok(110);
    a.at(111, channel(b.core.my_status()));
    for t in [120, 130, 140] {
        a.at(t, Input::ResourceFailed { resource: 0 });
    }
    assert_eq!(a.core.phase(), Phase::Active);
    let last = failure_actions(&a).pop().expect("an action");
    assert!(last.contains("limit"), "{last}");
}

#[test]
fn a_node_that_just_handed_over_does_not_take_the_role_back() {
    // Found by the switchover benchmark: right after a handover, the peer's last status
    // could still carry the "yielding" flag of an earlier switchover; both nodes yielded,
    // and the election handed the role straight back. A yielding node never wins.
    let mut a = active_node();
    a.public_ok(10);
    let mut stale = peer(1, Phase::Passive, 0);
    stale.yielding = true;
    a.at(10, channel(stale));
    a.cmd(20, Command::Switchover).expect("accepted");
    a.finish_resources(30);
    a.at(31, channel(stale));
    assert_eq!(a.core.phase(), Phase::Passive, "must wait for the peer");
    // If the peer never takes over, yielding ends after a failover timeout.
    let mut fresh = stale;
    fresh.yielding = false;
    a.public_ok(30 + FAILOVER + 10);
    a.at(30 + FAILOVER + 20, channel(fresh));
    assert!(!a.core.my_status().yielding);
}

#[test]
fn a_changed_flag_is_sent_at_once() {
    // The peer decides on these flags; waiting for the next heartbeat left it deciding on
    // stale ones.
    let mut n = Node::new(0);
    let out = n.at(5, Input::PublicCheck { reachable: true });
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::SendStatus(s) if s.public_ok)),
        "{out:?}"
    );
}

#[test]
fn a_fenced_active_demotes() {
    // The watchdog stopped the resources while this daemon was hung: it must not carry on
    // believing it serves.
    let mut a = active_node();
    a.at(5000, Input::Fenced);
    assert_eq!(a.core.phase(), Phase::Demoting);
    a.finish_resources(5010);
    assert_eq!(a.reasons().last(), Some(&(Phase::Passive, Reason::Fenced)));
}

#[test]
fn a_fenced_node_does_not_win_back_the_role_on_stale_statuses() {
    // Found by repeating the hung-node system test: on waking, the peer's statuses from
    // before its failover ("passive") arrive in a burst from the socket buffer. The fenced
    // node must not elect itself on them and demote the node that took over.
    let mut a = active_node();
    a.at(5000, Input::Fenced);
    a.finish_resources(5005);
    a.public_ok(5006);
    a.at(5007, channel(peer(1, Phase::Passive, 0)));
    a.at(5008, channel(peer(1, Phase::Passive, 0)));
    assert_eq!(a.core.phase(), Phase::Passive, "yields after being fenced");
    // The peer's fresh status shows it serving.
    a.at(5100, channel(peer(1, Phase::Active, 3)));
    assert_eq!(a.core.phase(), Phase::Passive);
}

/// Node 1 passive with a sync-mode copy (its lease on, caught up, last confirmed renewal
/// sent at `renewed`), following node 0 active, channel last heard at `t`.
fn leased_passive(t: u64, renewed: u64) -> Node {
    let mut b = Node::with(
        CoreConfig {
            data_lease: true,
            ..cfg(1)
        },
        PersistedState::FRESH,
    );
    b.public_ok(0);
    b.at(t, channel(peer(0, Phase::Active, 2)));
    b.at(
        t,
        Input::DataLease {
            caught_up: true,
            until: Some(Time(renewed + FAILOVER)),
        },
    );
    b
}

/// Answers the pending probe (the peer is alive and active) at every step from `from`.
fn answer_probes_until(b: &mut Node, from: u64, until: u64) {
    let mut t = from;
    while t <= until {
        b.public_ok(t);
        if let Some(p) = b.pending_probe() {
            b.at(
                t,
                Input::ProbeAnswered {
                    probe: p,
                    status: peer(0, Phase::Active, 2),
                },
            );
        }
        t += HB / 2;
    }
}

#[test]
fn sync_copy_fails_over_when_the_active_died_within_its_lease() {
    // The active crashed right after the passive's last confirmed renewal: it was seen gone
    // (a failed probe) before it could have acknowledged a write without this copy.
    let mut b = leased_passive(1000, 950);
    fail_probes_until(&mut b, 1200, 1000 + FAILOVER + 100);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

#[test]
fn sync_copy_does_not_fail_over_after_its_lease_ran_out_with_the_active_alive() {
    // Channel and stream cut, public network up: the active keeps serving and, once the
    // lease has run out, acknowledges fsyncs alone. When it dies later, this copy lacks
    // those writes, so only the operator may take over with it.
    let mut b = leased_passive(1000, 950);
    answer_probes_until(&mut b, 1200, 4000);
    assert_eq!(b.core.phase(), Phase::Passive);
    fail_probes_until(&mut b, 4050, 9000);
    assert_eq!(b.core.phase(), Phase::Passive, "the lease ran out at 1950");
    let waiting = b.core.status().waiting_for.unwrap_or_default();
    assert!(waiting.contains("lease"), "{waiting}");
    // The operator may still force it.
    assert!(b.cmd(9000, Command::ForceFailover).is_ok());
}

#[test]
fn status_names_the_lease_not_a_passing_public_network_doubt() {
    // The lease verdict holds until the operator acts; the public network's proof comes and
    // goes with each check. Status names the blocker that needs the operator (a system
    // test read "waiting for proof that this node reaches the public network" once, under
    // load, and the operator would have waited for nothing).
    let mut b = leased_passive(1000, 950);
    answer_probes_until(&mut b, 1200, 4000);
    fail_probes_until(&mut b, 4050, 9000);
    b.at(9100, Input::PublicCheck { reachable: false });
    assert_eq!(b.core.phase(), Phase::Passive);
    let waiting = b.core.status().waiting_for.unwrap_or_default();
    assert!(waiting.contains("lease"), "{waiting}");
}

#[test]
fn sync_copy_does_not_fail_over_before_catching_up() {
    // A copy that reconnected and is still replaying the active's queue lacks writes the
    // active acknowledged while it was away.
    let mut b = leased_passive(1000, 950);
    b.at(
        1000,
        Input::DataLease {
            caught_up: false,
            until: Some(Time(950 + FAILOVER)),
        },
    );
    fail_probes_until(&mut b, 1200, 6000);
    assert_eq!(b.core.phase(), Phase::Passive);
    let waiting = b.core.status().waiting_for.unwrap_or_default();
    assert!(waiting.contains("caught up"), "{waiting}");
}

#[test]
fn without_a_sync_copy_the_lease_is_not_consulted() {
    // Async copies (or none) lose up to their lag by design: the old rule alone applies.
    let mut b = passive_following_active(1000);
    b.at(
        1000,
        Input::DataLease {
            caught_up: false,
            until: None,
        },
    );
    fail_probes_until(&mut b, 1200, 1000 + FAILOVER + 100);
    assert_eq!(b.core.phase(), Phase::Promoting);
}

/// The status of node 0 leaving after a clean stop (it stopped its resources).
fn leaving_peer() -> NodeStatus {
    NodeStatus {
        leaving: true,
        ..peer(0, Phase::Passive, 2)
    }
}

#[test]
fn sync_copy_takes_a_handover_while_its_lease_runs() {
    // A clean stop drains the queue through a live stream: the copy is caught up and
    // its lease running, so it takes over at once, as without a lease.
    let mut b = leased_passive(1000, 950);
    b.public_ok(1100);
    b.at(1100, channel(leaving_peer()));
    assert_eq!(
        b.reasons().last(),
        Some(&(Phase::Promoting, Reason::PeerLeft))
    );
}

#[test]
fn sync_copy_refuses_a_handover_after_its_lease_ran_out() {
    // The stream was cut while the channel stayed up: the active went on acknowledging
    // fsyncs alone once the lease ran out, and then stopped cleanly. Its drain could not
    // reach this copy, which lacks those writes: no takeover on the handover alone.
    let mut b = leased_passive(1000, 950);
    b.at(2500, channel(peer(0, Phase::Active, 2)));
    b.public_ok(2500);
    b.at(2600, channel(leaving_peer()));
    b.public_ok(2700);
    assert_eq!(b.core.phase(), Phase::Passive);
    let waiting = b.core.status().waiting_for.unwrap_or_default();
    assert!(waiting.contains("hands over"), "{waiting}");
    assert!(b.cmd(2800, Command::ForceFailover).is_ok());
}
