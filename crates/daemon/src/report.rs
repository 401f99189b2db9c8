//! The status report behind `understudy status` and `understudy status --json`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use understudy_core::{Event, PairCore, Time};

use crate::runtime::Daemon;
/// The sync progress and verify result types of [`ReplicationReport`], for its readers.
pub use understudy_replication::{SyncProgress, VerifyOutcome};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub pair: String,
    pub node: String,
    /// passive, promoting, active or demoting.
    pub role: String,
    pub epoch: u64,
    pub last_active_epoch: u64,
    pub auto_failover: bool,
    pub public_ok: bool,
    pub eligible: bool,
    /// Why the current role was taken.
    pub reason: Option<String>,
    /// Why a passive is not taking over, when it is not.
    pub waiting_for: Option<String>,
    pub peer: PeerReport,
    /// A passive with a `sync`-mode copy: whether its copy is sure to hold every write the
    /// active acknowledged, which a failover needs (invariant 29).
    #[serde(default)]
    pub data_lease: Option<DataLeaseReport>,
    pub last_heartbeat_ms_ago: Option<u64>,
    pub resources: Vec<ResourceReport>,
    /// One entry per replicated set.
    #[serde(default)]
    pub replication: Vec<ReplicationReport>,
    pub events: Vec<EventReport>,
}

/// A replicated set as `understudy status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub name: String,
    /// sync or async.
    pub mode: String,
    /// This node's side: active (capturing, sending) or passive (applying).
    pub role: String,
    /// in_sync, catching_up, out_of_sync or disconnected.
    pub state: String,
    /// Ops and bytes waiting for the passive (memory and spill).
    pub queue_ops: u64,
    pub queue_bytes: u64,
    /// Age of the oldest op the passive has not applied: the live RPO.
    pub lag_ms: u64,
    pub sent_seq: u64,
    /// Highest seq the passive has stored durably.
    pub acked_seq: u64,
    /// Highest seq the passive has applied.
    pub applied_seq: u64,
    pub bytes_per_s: u64,
    /// Paths in the change log's open segment: changes a resync would compare.
    pub changed_files: u64,
    /// The resync or verify running now, or the last one: phase, files and bytes done and
    /// to do, rate, ETA.
    #[serde(default)]
    pub sync: Option<understudy_replication::SyncProgress>,
    /// The result of the last `understudy verify`.
    #[serde(default)]
    pub last_verify: Option<understudy_replication::VerifyOutcome>,
    /// Resyncs this copy has completed (0 after a clean restart that compared nothing).
    #[serde(default)]
    pub resyncs: u64,
    /// What the operator must look at (preserved files after a split brain).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A passive's lease on its `sync`-mode streams.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataLeaseReport {
    /// Every `sync` copy applied what the active had when its session began.
    pub caught_up: bool,
    /// How long the active acknowledges nothing without this copy; 0 once run out.
    pub left_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    pub name: String,
    pub connected: bool,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub public_ok: Option<bool>,
    pub links: Vec<LinkReport>,
    pub last_probe: Option<ProbeReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkReport {
    pub address: String,
    pub up: bool,
    pub rtt_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReport {
    pub answered: bool,
    pub ms_ago: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceReport {
    pub name: String,
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventReport {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The same, as UTC text.
    pub at: String,
    /// Daemon-monotonic milliseconds, for measuring intervals between events exactly.
    pub at_mono_ms: u64,
    pub kind: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub epoch: Option<u64>,
    pub reason: Option<String>,
    pub text: Option<String>,
    /// For a notice: `warning` or `info`.
    pub level: Option<String>,
}

impl EventReport {
    pub fn from_event(event: &Event, wall: SystemTime) -> EventReport {
        let at_unix_ms = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let base = EventReport {
            at_unix_ms,
            at: utc_text(at_unix_ms),
            at_mono_ms: 0,
            kind: String::new(),
            from: None,
            to: None,
            epoch: None,
            reason: None,
            text: None,
            level: None,
        };
        match event {
            Event::RoleChange {
                at,
                from,
                to,
                epoch,
                reason,
            } => EventReport {
                at_mono_ms: at.0,
                kind: "role-change".into(),
                from: Some(from.as_str().into()),
                to: Some(to.as_str().into()),
                epoch: Some(epoch.0),
                reason: Some(reason.as_str().into()),
                ..base
            },
            Event::Notice { at, text, warning } => EventReport {
                at_mono_ms: at.0,
                kind: "notice".into(),
                text: Some(text.clone()),
                level: Some(if *warning { "warning" } else { "info" }.into()),
                ..base
            },
            Event::ResourceFailure {
                at,
                resource,
                failures,
                action,
            } => EventReport {
                at_mono_ms: at.0,
                kind: "resource-failure".into(),
                text: Some(format!(
                    "resource #{resource} failed ({failures} in its window): {action}"
                )),
                ..base
            },
        }
    }
}

pub fn build(core: &PairCore, daemon: &Daemon) -> StatusReport {
    let now = Time(u64::try_from(daemon.origin.elapsed().as_millis()).unwrap_or(u64::MAX));
    let status = core.status();
    let peer_cfg = &daemon.cfg.nodes[1 - daemon.me];
    let links: Vec<LinkReport> = daemon
        .links()
        .into_iter()
        .map(|(addr, s)| LinkReport {
            address: addr.to_string(),
            up: s.up,
            rtt_ms: s.rtt_ms,
        })
        .collect();
    let last_heartbeat_ms_ago = status.channel_last_heard.map(|t| now.ms_since(t));
    let connected = last_heartbeat_ms_ago
        .is_some_and(|ago| ago < daemon.cfg.pair.failover_timeout_ms)
        && links.iter().any(|l| l.up);
    StatusReport {
        pair: daemon.cfg.pair.name.clone(),
        node: daemon.cfg.nodes[daemon.me].name.clone(),
        role: status.me.phase.as_str().into(),
        epoch: status.me.epoch.0,
        last_active_epoch: status.me.last_active_epoch.0,
        auto_failover: daemon.cfg.pair.auto_failover,
        public_ok: status.me.public_ok,
        eligible: status.me.eligible,
        reason: status.reason.map(|r| r.as_str().into()),
        waiting_for: status.waiting_for.map(str::to_string),
        peer: PeerReport {
            name: peer_cfg.name.clone(),
            connected,
            role: status.peer.map(|p| p.phase.as_str().into()),
            epoch: status.peer.map(|p| p.epoch.0),
            public_ok: status.peer.map(|p| p.public_ok),
            links,
            last_probe: status.last_probe.map(|p| ProbeReport {
                answered: p.answered,
                ms_ago: now.ms_since(p.completed_at),
            }),
        },
        data_lease: status.data_lease.map(|(caught_up, until)| DataLeaseReport {
            caught_up,
            left_ms: until.map_or(0, |u| u.ms_since(now)),
        }),
        last_heartbeat_ms_ago,
        resources: daemon
            .resources
            .states()
            .into_iter()
            .map(|(name, state)| ResourceReport {
                name,
                state: state.to_string(),
            })
            .collect(),
        replication: daemon
            .replicator
            .status()
            .into_iter()
            .map(|s| ReplicationReport {
                name: s.name,
                mode: s.mode.into(),
                role: s.role.into(),
                state: s.state.into(),
                queue_ops: s.queue_ops,
                queue_bytes: s.queue_bytes,
                lag_ms: s.lag_ms,
                sent_seq: s.sent_seq,
                acked_seq: s.acked_seq,
                applied_seq: s.applied_seq,
                bytes_per_s: s.bytes_per_s,
                changed_files: s.changed_files,
                sync: s.sync,
                last_verify: s.last_verify,
                resyncs: s.resyncs,
                warnings: s.warnings,
            })
            .collect(),
        events: daemon.events.iter().cloned().collect(),
    }
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
pub fn utc_text(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// A short human summary for `understudy status`.
pub fn human(r: &StatusReport) -> String {
    let mut out = String::new();
    let peer_role = r.peer.role.as_deref().unwrap_or("unknown");
    out.push_str(&format!(
        "pair {}: {} is {} (epoch {})",
        r.pair,
        r.node,
        r.role.to_uppercase(),
        r.epoch
    ));
    if let Some(reason) = &r.reason {
        out.push_str(&format!(", by {reason}"));
    }
    out.push('\n');
    out.push_str(&format!(
        "peer {}: {} ({}), last heartbeat {}\n",
        r.peer.name,
        if r.peer.connected {
            "connected"
        } else {
            "NOT connected"
        },
        // A disconnected peer's role is only what it was when last heard.
        if r.peer.connected {
            peer_role.to_string()
        } else {
            format!("last seen {peer_role}")
        },
        r.last_heartbeat_ms_ago
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"))
    ));
    for l in &r.peer.links {
        let rtt = l.rtt_ms.map_or("-".to_string(), |ms| format!("{ms:.2} ms"));
        out.push_str(&format!(
            "  link {:<24} {:<4} rtt {rtt}\n",
            l.address,
            if l.up { "up" } else { "DOWN" }
        ));
    }
    out.push_str(&format!(
        "public network: {}   auto-failover: {}\n",
        if r.public_ok {
            "reachable"
        } else {
            "NOT reachable"
        },
        if r.auto_failover { "on" } else { "off" }
    ));
    if let Some(w) = &r.waiting_for {
        out.push_str(&format!("not taking over because: {w}\n"));
    }
    if let Some(l) = &r.data_lease {
        out.push_str(&format!(
            "data lease: {}, {}\n",
            if l.caught_up {
                "caught up"
            } else {
                "NOT caught up"
            },
            if l.left_ms > 0 {
                format!("{} ms left", l.left_ms)
            } else {
                "run out".to_string()
            }
        ));
    }
    if !r.resources.is_empty() {
        out.push_str("resources:\n");
        for res in &r.resources {
            out.push_str(&format!("  {:<20} {}\n", res.name, res.state));
        }
    }
    if !r.replication.is_empty() {
        out.push_str("replication:\n");
        for s in &r.replication {
            out.push_str(&format!(
                "  {:<12} {} {:<7} {:<12} queue {} ops / {} bytes, lag {} ms, sent {} applied {} acked {}, {} B/s\n",
                s.name,
                s.mode,
                s.role,
                s.state,
                s.queue_ops,
                s.queue_bytes,
                s.lag_ms,
                s.sent_seq,
                s.applied_seq,
                s.acked_seq,
                s.bytes_per_s
            ));
            if let Some(p) = &s.sync {
                let eta = p.eta_s.map_or(String::new(), |e| format!(", ETA {e} s"));
                out.push_str(&format!(
                    "    {} {} ({}): {}/{} files, {}/{} MiB, {} MiB sent, {} MiB/s{eta}\n",
                    p.kind,
                    p.phase,
                    p.scope,
                    p.files_done,
                    p.files_total,
                    p.bytes_done >> 20,
                    p.bytes_total >> 20,
                    p.bytes_sent >> 20,
                    p.bytes_per_s >> 20
                ));
                if let Some(e) = &p.error {
                    out.push_str(&format!("    {} failed: {e}\n", p.kind));
                }
            }
            if let Some(v) = &s.last_verify {
                out.push_str(&format!(
                    "    last verify: {} differences in {} files\n",
                    v.differences.len(),
                    v.files_compared
                ));
            }
            for w in &s.warnings {
                out.push_str(&format!("    WARNING: {w}\n"));
            }
        }
    }
    let recent: Vec<&EventReport> = r.events.iter().rev().take(5).collect();
    if !recent.is_empty() {
        out.push_str("recent events:\n");
        for e in recent.into_iter().rev() {
            out.push_str(&event_line(e));
        }
    }
    out
}

/// One event of `status`'s "recent events", with its newline; a warning says so.
fn event_line(e: &EventReport) -> String {
    match (&e.from, &e.to, &e.reason) {
        (Some(f), Some(t), Some(why)) => format!(
            "  {} {f} -> {t} (epoch {}, {why})\n",
            e.at,
            e.epoch.unwrap_or(0)
        ),
        _ => format!(
            "  {} {}{}\n",
            e.at,
            if e.level.as_deref() == Some("warning") {
                "WARNING: "
            } else {
                ""
            },
            e.text.as_deref().unwrap_or("")
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_warning_notice_says_so_in_recent_events() {
        use understudy_core::{Event, Time};
        let at = std::time::UNIX_EPOCH;
        let notice = |warning| Event::Notice {
            at: Time(0),
            text: "set data: drained to seq 7".into(),
            warning,
        };
        let line =
            |warning| super::event_line(&super::EventReport::from_event(&notice(warning), at));
        assert_eq!(
            line(false),
            "  1970-01-01T00:00:00.000Z set data: drained to seq 7\n"
        );
        assert_eq!(
            line(true),
            "  1970-01-01T00:00:00.000Z WARNING: set data: drained to seq 7\n"
        );
    }

    #[test]
    fn utc_text_formats_known_instants() {
        assert_eq!(super::utc_text(0), "1970-01-01T00:00:00.000Z");
        // Expected values checked with Python's datetime.utcfromtimestamp; one is a leap day.
        assert_eq!(super::utc_text(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            super::utc_text(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
    }
}
