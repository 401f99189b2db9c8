//! Real-time replication of the configured sets between the two nodes.
//!
//! On the active, each set's `path` is a capture filesystem over the set's data directory;
//! every mutating op is numbered into a [`queue::SetQueue`] and streamed to the passive over
//! its own mutual-TLS connection (never the heartbeat links). On the passive, a receiver
//! applies the ops in sequence with [`understudy_apply::Applier`], confined to the data
//! directory, and acknowledges them with group commit. `path` is not mounted on the passive.
//!
//! The daemon drives roles: [`Replicator::promote`] before applications start,
//! [`Replicator::demote`] after they stop (draining the queue first, so a switchover loses
//! nothing).
//!
//! When a session starts, the two copies' generation histories ([`state`]) decide whether the
//! passive can simply be streamed to, or must be resynced ([`engine`]): then only the paths
//! in the two nodes' change logs ([`changes`]) since their common point are compared, by
//! block hashes, and the passive's own divergent changes are preserved in a quarantine
//! ([`observer`]) before anything of them is overwritten.

/// Asserts an invariant; stays on in release builds.
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            panic!("invariant violated: {}", format!($($arg)+));
        }
    };
}

/// Locks a mutex; a panic elsewhere while it was held leaves the data as it was, which every
/// user here can work with (lists and counters, no half-made invariants).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub mod changes;
pub mod engine;
mod fsync_pattern;
pub mod hashing;
pub mod observer;
pub mod prelist;
pub mod proto;
pub mod queue;
mod readahead;
pub mod serving;
pub mod session;
pub mod state;
pub mod walk;

mod set;

pub use engine::{SyncProgress, VerifyOutcome};
pub use queue::{Mode, SetState as ReplState};
pub use set::{ReplicaSet, SetConfig, SetStatus};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use understudy_tls::NodeTls;

/// All replicated sets of this node, and the listener the peer's sender dials.
pub struct Replicator {
    pub sets: Vec<Arc<ReplicaSet>>,
    tls: NodeTls,
    peer_addr: SocketAddr,
    drain_timeout: Duration,
}

impl Replicator {
    /// Opens every set as passive (the daemon starts passive). Fails if a set's directories
    /// cannot be prepared.
    pub fn new(
        sets: Vec<SetConfig>,
        tls: NodeTls,
        peer_addr: SocketAddr,
        drain_timeout: Duration,
    ) -> std::io::Result<Self> {
        let sets = sets
            .into_iter()
            .map(|cfg| ReplicaSet::open(cfg).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        // Every node starts passive: each set's path shows its copy, read-only.
        for set in &sets {
            set.show_read_only_view();
        }
        Ok(Self {
            sets,
            tls,
            peer_addr,
            drain_timeout,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Accepts the peer's senders, forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "replication accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                match understudy_tls::accept(&me.tls, tcp, Duration::from_secs(5)).await {
                    Ok((stream, _)) => session::serve_passive(&me.sets, stream).await,
                    // The active's dialler overlaps attempts and drops the losers mid-handshake.
                    Err(e) if e.peer_hung_up() => {
                        debug!(from = %from, error = %e, "replication connection abandoned by its dialler")
                    }
                    Err(e) => warn!(from = %from, error = %e, "refused a replication connection"),
                }
            });
        }
    }

    /// This node becomes active: every set applies what it received, mounts its capture
    /// filesystem and starts streaming to the peer. `generation` names this active period.
    pub async fn promote(&self, generation: u64) -> Result<(), String> {
        for set in &self.sets {
            set.clone()
                .promote(generation, self.tls.clone(), self.peer_addr)
                .await
                .map_err(|e| format!("replicated set '{}': {e}", set.name()))?;
        }
        Ok(())
    }

    /// This node stops being active (the applications are already stopped): unmount, drain
    /// the queue to the passive, and become a receiver. Returns, per set, the last seq and
    /// whether the passive confirmed all of it.
    ///
    /// `peer_takes_over`: the peer serves, or is about to (a split brain's loser, a fenced
    /// or cut-off node, a handover). A copy that then holds ops the peer never confirmed
    /// differs from the one that serves, and is marked out of sync until a resync (which
    /// keeps those ops in quarantine). Not so for a shutdown or a failed start: there the
    /// copy may well be the newest there is, and must stay eligible.
    pub async fn demote(&self, peer_takes_over: bool) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        for set in &self.sets {
            let (last, drained) = set
                .clone()
                .demote(self.drain_timeout, peer_takes_over)
                .await;
            info!(
                set = set.name(),
                last_seq = last,
                drained,
                "replicated set demoted"
            );
            out.push((set.name().to_string(), last, drained));
        }
        out
    }

    /// Before a planned move of the role lets go of the data: waits until the passive has
    /// confirmed every op of every set, capture still mounted (see
    /// `ReplicaSet::confirm_drained`). Returns, per set, the last seq and whether it was.
    pub async fn confirm_drained(&self) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        for set in &self.sets {
            let (last, confirmed) = set.clone().confirm_drained(self.drain_timeout).await;
            out.push((set.name().to_string(), last, confirmed));
        }
        out
    }

    /// Sends operator notices (resyncs, quarantines, verify results) to `tx`.
    pub fn set_notices(&self, tx: tokio::sync::mpsc::UnboundedSender<(String, bool)>) {
        for set in &self.sets {
            set.set_notices(tx.clone());
        }
    }

    /// Starts a verify of one set (or all, with `None`) against the passive; with `repair`,
    /// what differs is resynced. Returns, per set, the verify's id. Only on the active.
    pub fn verify(&self, set: Option<&str>, repair: bool) -> Result<Vec<(String, u64)>, String> {
        let chosen: Vec<&Arc<ReplicaSet>> = self
            .sets
            .iter()
            .filter(|s| set.is_none_or(|n| n == s.name()))
            .collect();
        if chosen.is_empty() {
            return Err(match set {
                Some(n) => format!("no replicated set named '{n}'"),
                None => "no replicated set is configured".into(),
            });
        }
        chosen
            .into_iter()
            .map(|s| {
                s.verify(repair)
                    .map(|id| (s.name().to_string(), id))
                    .map_err(|e| format!("set '{}': {e}", s.name()))
            })
            .collect()
    }

    /// The lease of this passive's `sync`-mode copies taken together (invariant 29): every
    /// copy caught up, and when the oldest of their newest confirmed renewals was sent (no
    /// time if any copy has none). `None` when no set is in `sync` mode.
    pub fn data_lease(&self) -> Option<(bool, Option<std::time::Instant>)> {
        let leases: Vec<_> = self.sets.iter().filter_map(|s| s.passive_lease()).collect();
        if leases.is_empty() {
            return None;
        }
        let caught_up = leases.iter().all(|(c, _)| *c);
        // No time if any copy has none; else the earliest.
        let oldest = leases
            .iter()
            .map(|(_, at)| *at)
            .collect::<Option<Vec<_>>>()
            .and_then(|times| times.into_iter().min());
        Some((caught_up, oldest))
    }

    /// True if every set's copy on this (passive) node is usable for a takeover.
    pub fn copies_usable(&self) -> bool {
        self.sets.iter().all(|s| !s.copy_out_of_sync())
    }

    pub fn status(&self) -> Vec<SetStatus> {
        self.sets.iter().map(|s| s.status()).collect()
    }

    /// Clean shutdown: persist every set's position.
    pub async fn shutdown(&self) {
        for set in &self.sets {
            set.clone().shutdown().await;
        }
    }
}
