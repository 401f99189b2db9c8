//! One replicated set on this node: its role (capturing and sending, or receiving and
//! applying), its persisted position, and its status figures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use understudy_apply::Applier;
use understudy_capture::{CaptureMount, CaptureOptions};
use understudy_tls::NodeTls;

use crate::queue::{Mode, QueueConfig, SetQueue, SetState as ReplState};
use crate::state::SetState;

#[derive(Clone, Debug)]
pub struct SetConfig {
    pub name: String,
    /// The path applications use; the capture mount point on the active.
    pub path: PathBuf,
    pub mode: Mode,
    pub queue_max_bytes: u64,
    pub mem_max_bytes: u64,
    /// This node's copy: the backing directory on the active, the replica on the passive.
    pub data_dir: PathBuf,
    /// Spill file, changed-file record, persisted state and parked orphans.
    pub state_dir: PathBuf,
    pub stall_timeout: Duration,
    pub capture_threads: usize,
}

/// `understudy status` figures for one set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SetStatus {
    pub name: String,
    pub mode: &'static str,
    pub role: &'static str,
    pub state: &'static str,
    pub queue_ops: u64,
    pub queue_bytes: u64,
    pub lag_ms: u64,
    pub sent_seq: u64,
    pub acked_seq: u64,
    pub applied_seq: u64,
    pub bytes_per_s: u64,
    pub changed_files: u64,
}

/// A running passive session: the network task and the thread applying what it receives.
pub(crate) struct PassiveSession {
    pub net: JoinHandle<()>,
    pub apply: std::thread::JoinHandle<Applier>,
}

pub(crate) enum Role {
    Passive {
        applier: Option<Applier>,
        session: Option<PassiveSession>,
    },
    Active {
        queue: Arc<SetQueue>,
        mount: Option<CaptureMount>,
        sender: JoinHandle<()>,
    },
    /// Transitional (between roles) or shut down.
    Idle,
}

/// Progress of the passive side, shared with the apply thread and status.
#[derive(Default)]
pub(crate) struct PassiveProgress {
    pub applied: AtomicU64,
    pub durable: AtomicU64,
    pub received_bytes: AtomicU64,
    pub session_up: std::sync::atomic::AtomicBool,
    pub out_of_sync: std::sync::atomic::AtomicBool,
    /// The copy was left by a crash: it cannot resume a stream.
    pub unclean: std::sync::atomic::AtomicBool,
}

pub struct ReplicaSet {
    pub(crate) cfg: SetConfig,
    pub(crate) role: tokio::sync::Mutex<Role>,
    pub(crate) persisted: Mutex<SetState>,
    pub(crate) passive: PassiveProgress,
    active_queue: Mutex<Option<Arc<SetQueue>>>,
    rate: Mutex<(Instant, u64, u64)>,
}

impl ReplicaSet {
    pub fn open(cfg: SetConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        std::fs::create_dir_all(cfg.state_dir.join("orphans"))?;
        std::fs::create_dir_all(&cfg.path)?;
        // A capture mount left by a daemon that died: detach it so the path is usable.
        detach_stale_mount(&cfg.path);
        let mut persisted = SetState::load(&cfg.state_dir)?;
        // After a crash the copy may hold applied-but-unsynced ops the state file does not
        // count: it cannot resume a stream. It is not marked out of sync by itself (after a
        // power loss of both nodes one of them must still serve); the active decides, when
        // it hears this in the handshake.
        let unclean = !persisted.clean;
        if unclean {
            warn!(set = %cfg.name, "the last run did not stop cleanly: this copy cannot resume streaming");
        }
        persisted.clean = false;
        persisted.save(&cfg.state_dir)?;
        let mut applier = Applier::open(&cfg.data_dir, &cfg.state_dir.join("orphans"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        applier.set_last_applied(persisted.last_seq);
        let passive = PassiveProgress::default();
        passive.applied.store(persisted.last_seq, Ordering::Relaxed);
        passive.durable.store(persisted.last_seq, Ordering::Relaxed);
        passive
            .out_of_sync
            .store(persisted.out_of_sync, Ordering::Relaxed);
        passive.unclean.store(unclean, Ordering::Relaxed);
        Ok(Self {
            role: tokio::sync::Mutex::new(Role::Passive {
                applier: Some(applier),
                session: None,
            }),
            persisted: Mutex::new(persisted),
            passive,
            active_queue: Mutex::new(None),
            rate: Mutex::new((Instant::now(), 0, 0)),
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn persisted(&self) -> MutexGuard<'_, SetState> {
        self.persisted.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn save(&self) {
        let state = self.persisted().clone();
        if let Err(e) = state.save(&self.cfg.state_dir) {
            error!(set = %self.cfg.name, error = %e, "cannot persist the set's state");
        }
    }

    /// Marks this node's copy (as a passive) out of sync, persistently.
    pub(crate) fn mark_copy_out_of_sync(&self, why: &str) {
        if !self.passive.out_of_sync.swap(true, Ordering::SeqCst) {
            warn!(set = %self.cfg.name, reason = why, "this copy is out of sync until resynced");
            self.persisted().out_of_sync = true;
            self.save();
        }
    }

    pub fn copy_out_of_sync(&self) -> bool {
        self.passive.out_of_sync.load(Ordering::SeqCst)
    }

    fn queue(&self) -> Option<Arc<SetQueue>> {
        self.active_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops a passive session and returns the applier once everything received is applied
    /// and synced.
    pub(crate) async fn stop_passive_session(&self, role: &mut Role) -> Option<Applier> {
        let Role::Passive { applier, session } = role else {
            return None;
        };
        if let Some(s) = session.take() {
            // Dropping the network task drops the channel's sender: the apply thread drains
            // what was received and returns the applier.
            s.net.abort();
            let _ = s.net.await;
            match tokio::task::spawn_blocking(move || s.apply.join()).await {
                Ok(Ok(a)) => *applier = Some(a),
                _ => {
                    // What it applied last is unknown: reopen the copy, and resync it later.
                    error!(set = %self.cfg.name, "the apply thread panicked");
                    self.mark_copy_out_of_sync("the apply thread panicked");
                    match Applier::open(&self.cfg.data_dir, &self.cfg.state_dir.join("orphans")) {
                        Ok(mut a) => {
                            a.set_last_applied(self.passive.applied.load(Ordering::SeqCst));
                            *applier = Some(a);
                        }
                        Err(e) => {
                            error!(set = %self.cfg.name, error = %e, "cannot reopen the copy")
                        }
                    }
                }
            }
        }
        self.passive.session_up.store(false, Ordering::SeqCst);
        let mut a = applier.take()?;
        if let Err(e) = a.sync() {
            error!(set = %self.cfg.name, error = %e, "syncing the copy failed");
        }
        let last = a.last_applied();
        self.passive.applied.store(last, Ordering::SeqCst);
        self.passive.durable.store(last, Ordering::SeqCst);
        self.persisted().last_seq = last;
        Some(a)
    }

    pub(crate) async fn promote(
        self: Arc<Self>,
        generation: u64,
        tls: NodeTls,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let mut role = self.role.lock().await;
        if matches!(*role, Role::Active { .. }) {
            return Ok(());
        }
        let Some(applier) = self.stop_passive_session(&mut role).await else {
            return Err("no copy to promote (the apply state was lost)".into());
        };
        if self.copy_out_of_sync() {
            warn!(set = %self.cfg.name, "promoting a copy that is out of sync: it may lack the old active's last changes");
        }
        let last = applier.last_applied();
        drop(applier);
        // From here on this copy is the pair's data; the peer's copy is the one to check.
        self.passive.out_of_sync.store(false, Ordering::SeqCst);
        self.passive.unclean.store(false, Ordering::SeqCst);
        let history = {
            let mut p = self.persisted();
            p.begin_generation(generation, last + 1);
            p.last_seq = last;
            p.out_of_sync = false;
            p.history.clone()
        };
        self.save();
        let queue = Arc::new(
            SetQueue::new(
                QueueConfig {
                    mode: self.cfg.mode,
                    queue_max_bytes: self.cfg.queue_max_bytes,
                    mem_max_bytes: self.cfg.mem_max_bytes.min(self.cfg.queue_max_bytes),
                    stall_timeout: self.cfg.stall_timeout,
                    dir: self.cfg.state_dir.clone(),
                },
                last + 1,
            )
            .map_err(|e| format!("queue: {e}"))?,
        );
        let journal: Arc<dyn understudy_oplog::Journal> = queue.clone();
        let (data, path, threads, name) = (
            self.cfg.data_dir.clone(),
            self.cfg.path.clone(),
            self.cfg.capture_threads,
            self.cfg.name.clone(),
        );
        let mount = tokio::task::spawn_blocking(move || {
            detach_stale_mount(&path);
            understudy_capture::mount(
                &data,
                &path,
                journal,
                CaptureOptions {
                    threads,
                    fsname: format!("understudy:{name}"),
                },
            )
        })
        .await
        .map_err(|e| format!("mount task: {e}"))?
        .map_err(|e| format!("mounting {}: {e}", self.cfg.path.display()))?;
        *self.active_queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(queue.clone());
        let sender = tokio::spawn(crate::session::run_sender(
            self.clone(),
            queue.clone(),
            history,
            tls,
            peer,
        ));
        info!(set = %self.cfg.name, path = %self.cfg.path.display(), next_seq = last + 1, generation, "capturing");
        *role = Role::Active {
            queue,
            mount: Some(mount),
            sender,
        };
        Ok(())
    }

    pub(crate) async fn demote(self: Arc<Self>, drain_timeout: Duration) -> (u64, bool) {
        let mut role = self.role.lock().await;
        let Role::Active {
            queue,
            mount,
            sender,
        } = std::mem::replace(&mut *role, Role::Idle)
        else {
            return (self.persisted().last_seq, true);
        };
        if let Some(mount) = mount {
            let path = self.cfg.path.clone();
            match tokio::task::spawn_blocking(move || mount.unmount()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(path = %path.display(), error = %e, "unmount failed; detaching")
                }
                Err(e) => warn!(error = %e, "unmount task failed"),
            }
        }
        let q = queue.clone();
        let (last, drained) = tokio::task::spawn_blocking(move || q.drain(drain_timeout))
            .await
            .unwrap_or((queue.last_seq(), false));
        sender.abort();
        let _ = sender.await;
        queue.end_session();
        *self.active_queue.lock().unwrap_or_else(|p| p.into_inner()) = None;
        {
            let mut p = self.persisted();
            p.last_seq = last;
        }
        self.save();
        let applier = Applier::open(&self.cfg.data_dir, &self.cfg.state_dir.join("orphans"));
        match applier {
            Ok(mut a) => {
                a.set_last_applied(last);
                self.passive.applied.store(last, Ordering::SeqCst);
                self.passive.durable.store(last, Ordering::SeqCst);
                *role = Role::Passive {
                    applier: Some(a),
                    session: None,
                };
            }
            Err(e) => {
                error!(set = %self.cfg.name, error = %e, "cannot reopen the copy for applying")
            }
        }
        (last, drained)
    }

    pub(crate) async fn shutdown(self: Arc<Self>) {
        let mut role = self.role.lock().await;
        let last = match std::mem::replace(&mut *role, Role::Idle) {
            Role::Active {
                queue,
                mount,
                sender,
            } => {
                sender.abort();
                if let Some(mount) = mount {
                    let _ = tokio::task::spawn_blocking(move || mount.unmount()).await;
                }
                queue.last_seq()
            }
            mut passive @ Role::Passive { .. } => {
                let _ = self.stop_passive_session(&mut passive).await;
                self.persisted().last_seq
            }
            Role::Idle => self.persisted().last_seq,
        };
        {
            let mut p = self.persisted();
            p.last_seq = last;
            p.clean = true;
        }
        self.save();
    }

    pub fn status(&self) -> SetStatus {
        let mode = match self.cfg.mode {
            Mode::Sync => "sync",
            Mode::Async => "async",
        };
        if let Some(q) = self.queue() {
            let s = q.snapshot();
            let state = if s.out_of_sync {
                ReplState::OutOfSync
            } else if !s.streaming {
                ReplState::Disconnected
            } else if s.queue_bytes > s.mem_bytes || s.last_seq - s.applied_seq > 100_000 {
                ReplState::CatchingUp
            } else {
                ReplState::InSync
            };
            return SetStatus {
                name: self.cfg.name.clone(),
                mode,
                role: "active",
                state: state.as_str(),
                queue_ops: s.queue_ops,
                queue_bytes: s.queue_bytes,
                lag_ms: s
                    .oldest_unacked
                    .map_or(0, |t| t.elapsed().as_millis() as u64),
                sent_seq: s.sent_seq,
                acked_seq: s.durable_seq,
                applied_seq: s.applied_seq,
                bytes_per_s: self.rate(s.bytes_sent_total),
                changed_files: s.dirty_paths,
            };
        }
        let p = &self.passive;
        let state = if p.out_of_sync.load(Ordering::SeqCst) || p.unclean.load(Ordering::SeqCst) {
            ReplState::OutOfSync
        } else if p.session_up.load(Ordering::SeqCst) {
            ReplState::InSync
        } else {
            ReplState::Disconnected
        };
        let applied = p.applied.load(Ordering::SeqCst);
        SetStatus {
            name: self.cfg.name.clone(),
            mode,
            role: "passive",
            state: state.as_str(),
            queue_ops: 0,
            queue_bytes: 0,
            lag_ms: 0,
            sent_seq: 0,
            acked_seq: p.durable.load(Ordering::SeqCst),
            applied_seq: applied,
            bytes_per_s: self.rate(p.received_bytes.load(Ordering::Relaxed)),
            changed_files: 0,
        }
    }

    /// Bytes per second over the last status interval of at least one second.
    fn rate(&self, total: u64) -> u64 {
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = r.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            r.2 = (total.saturating_sub(r.1) as f64 / elapsed.as_secs_f64()) as u64;
            *r = (Instant::now(), total, r.2);
        }
        r.2
    }
}

/// Lazily detaches whatever is mounted at `path` (a capture mount left by a dead daemon
/// answers "transport endpoint is not connected"). Not an error if nothing is mounted.
pub fn detach_stale_mount(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; umount2 only reads it.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        info!(path = %path.display(), "detached a stale mount");
    }
}
