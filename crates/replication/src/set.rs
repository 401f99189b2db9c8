//! One replicated set on this node: its role (capturing and sending, or receiving and
//! applying), its persisted state, its change log, resyncs and verifies, and its status.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use understudy_apply::Applier;
use understudy_capture::{CaptureMount, CaptureOptions, OrderLock};
use understudy_tls::NodeTls;

use crate::changes::ChangeLog;
use crate::engine::{Engine, EngineIo, Report, SyncProgress, VerifyOutcome};
use crate::lock;
use crate::observer::{PreserveRule, Quarantine};
use crate::queue::{Mode, QueueConfig, SetQueue, SetState as ReplState};
use crate::state::{Generation, PendingResync, SetState, UNKNOWN_GENERATION};

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
    /// Spill file, change log, persisted state, parked orphans, quarantine.
    pub state_dir: PathBuf,
    pub stall_timeout: Duration,
    pub capture_threads: usize,
    /// This node's index in the pair (0 or 1): its epochs are even or odd.
    pub node_index: usize,
    /// Bytes per second a resync may send; 0: no cap.
    pub sync_rate_max: u64,
    /// How often a passive of a `sync`-mode set renews its lease (the heartbeat interval);
    /// the lease itself lasts `stall_timeout` (invariant 29).
    pub lease_renew_interval: Duration,
    /// Whether this node surely still serves, as its core loop last said (shared by every
    /// set); no fsync is acknowledged without the passive otherwise.
    pub serving: Arc<crate::serving::Serving>,
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
    /// Paths in the change log's open segment (what a resync would compare at least).
    pub changed_files: u64,
    /// The resync or verify running now, or the last one.
    pub sync: Option<SyncProgress>,
    pub last_verify: Option<VerifyOutcome>,
    /// Resyncs this copy completed.
    pub resyncs: u64,
    /// Things the operator must know (a quarantine to look at).
    pub warnings: Vec<String>,
}

/// A running passive session: the network task and the thread applying what it receives.
pub(crate) struct PassiveSession {
    pub net: JoinHandle<()>,
    pub apply: std::thread::JoinHandle<Applier>,
}

// One per set, replaced only on role changes: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
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

/// The active's live session, for starting a verify in it.
#[derive(Clone)]
pub(crate) struct ActiveSession {
    pub control: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
    pub router: Arc<Mutex<Option<std::sync::mpsc::Sender<Report>>>>,
}

/// What the active side needs to run an engine: where its copy is and the capture's lock.
#[derive(Clone)]
struct ActiveCopy {
    root: Arc<OwnedFd>,
    root_path: Vec<u8>,
    order: OrderLock,
    queue: Arc<SetQueue>,
}

/// A resync of this (passive) copy that started with the session.
pub(crate) struct ResyncCtx {
    /// The `SyncBegin`'s seq, which is also the sync's id.
    pub first_seq: u64,
    pub active_history: Vec<Generation>,
    pub origin_empty: Option<bool>,
    pub rule: PreserveRule,
    pub quarantine: Option<Quarantine>,
}

/// This passive's lease on its `sync`-mode stream (invariant 29).
pub(crate) struct LeaseProgress {
    /// The active's last seq when the current (or last) session began: the copy holds
    /// every write the active acknowledged without it once it applied this. `u64::MAX`
    /// before the first session of this process.
    pub head: AtomicU64,
    /// Renewals sent and not yet confirmed, oldest first (at most [`RENEWALS_MAX`]).
    pub sent: Mutex<std::collections::VecDeque<(u64, Instant)>>,
    /// When the newest renewal the active confirmed was sent.
    pub confirmed_sent_at: Mutex<Option<Instant>>,
}

/// Renewals kept waiting for the active's confirmation; older ones are forgotten (a
/// confirmation of one of those no longer moves the lease).
pub(crate) const RENEWALS_MAX: usize = 64;

impl Default for LeaseProgress {
    fn default() -> Self {
        LeaseProgress {
            head: AtomicU64::new(u64::MAX),
            sent: Mutex::new(std::collections::VecDeque::new()),
            confirmed_sent_at: Mutex::new(None),
        }
    }
}

/// Progress of the passive side, shared with the apply thread and status.
#[derive(Default)]
pub(crate) struct PassiveProgress {
    pub lease: LeaseProgress,
    pub applied: AtomicU64,
    pub durable: AtomicU64,
    pub received_bytes: AtomicU64,
    pub session_up: AtomicBool,
    pub out_of_sync: AtomicBool,
    /// The copy was left by a crash: its exact end is unknown until a resync.
    pub unclean: AtomicBool,
    /// ... by a crash of the daemon alone, in the boot it was running in: the machine kept
    /// every change the daemon had made to the copy.
    pub unclean_same_boot: AtomicBool,
    /// The sync records being applied are a verify's.
    pub verifying: AtomicBool,
}

pub struct ReplicaSet {
    pub(crate) cfg: SetConfig,
    pub(crate) role: tokio::sync::Mutex<Role>,
    pub(crate) persisted: Mutex<SetState>,
    pub(crate) passive: PassiveProgress,
    pub(crate) changes: Arc<Mutex<ChangeLog>>,
    active_queue: Mutex<Option<Arc<SetQueue>>>,
    active_copy: Mutex<Option<ActiveCopy>>,
    session: Mutex<Option<ActiveSession>>,
    engine_busy: Arc<AtomicBool>,
    progress: Arc<Mutex<SyncProgress>>,
    last_verify: Arc<Mutex<Option<VerifyOutcome>>>,
    /// Notices for the event log: the text, and whether it is a warning.
    notices: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, bool)>>>,
    rate: Mutex<(Instant, u64, u64)>,
}

/// A passive whose oldest unapplied op is this old is shown catching up, not in sync: it
/// trails visibly (stalled, or slower than the writes), though still connected.
const CATCHING_UP_LAG: Duration = Duration::from_secs(1);

fn is_dir_empty(path: &Path) -> bool {
    std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none())
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
        // count (or captures, if this node was active): its exact end is unknown, so it
        // cannot simply be streamed to. It is not out of sync by itself (after a power loss
        // of both nodes one of them must still serve); the peers decide when they meet.
        let unclean = !persisted.clean;
        if unclean {
            warn!(set = %cfg.name, "the last run did not stop cleanly: this copy will be compared with the peer's");
        } else {
            info!(set = %cfg.name, last_seq = persisted.last_seq, "the last run stopped cleanly");
        }
        let boot = crate::changes::boot_id();
        let same_boot = persisted.boot_id.as_deref() == Some(boot.as_str()) && boot != "unknown";
        persisted.boot_id = Some(boot);
        persisted.clean = false;
        persisted.save(&cfg.state_dir)?;
        let changes = ChangeLog::open(&cfg.state_dir.join("changes"))?;
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
        passive
            .unclean_same_boot
            .store(unclean && same_boot, Ordering::Relaxed);
        Ok(Self {
            role: tokio::sync::Mutex::new(Role::Passive {
                applier: Some(applier),
                session: None,
            }),
            persisted: Mutex::new(persisted),
            passive,
            changes: Arc::new(Mutex::new(changes)),
            active_queue: Mutex::new(None),
            active_copy: Mutex::new(None),
            session: Mutex::new(None),
            engine_busy: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Mutex::new(SyncProgress::default())),
            last_verify: Arc::new(Mutex::new(None)),
            notices: Mutex::new(None),
            rate: Mutex::new((Instant::now(), 0, 0)),
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Where operator-facing notices (resync done, quarantine) go: the daemon's event log.
    pub fn set_notices(&self, tx: tokio::sync::mpsc::UnboundedSender<(String, bool)>) {
        *lock(&self.notices) = Some(tx);
    }

    /// Tells the operator (the event log, which the daemon logs at the notice's level);
    /// `warning` for what may need them.
    pub(crate) fn notice(&self, warning: bool, text: String) {
        match lock(&self.notices).as_ref() {
            Some(tx) => {
                let _ = tx.send((format!("set {}: {text}", self.cfg.name), warning));
            }
            // Nobody collects notices (a set outside a daemon): the log is the only record.
            None if warning => warn!(set = %self.cfg.name, "{text}"),
            None => info!(set = %self.cfg.name, "{text}"),
        }
    }

    pub(crate) fn persisted(&self) -> MutexGuard<'_, SetState> {
        lock(&self.persisted)
    }

    pub(crate) fn save(&self) {
        let state = self.persisted().clone();
        if let Err(e) = state.save(&self.cfg.state_dir) {
            error!(set = %self.cfg.name, error = %e, "cannot persist the set's state");
        }
    }

    /// Is generation `id` one of this node's (its epochs have its parity)?
    pub(crate) fn is_mine(&self, id: u64) -> bool {
        id != UNKNOWN_GENERATION && id % 2 == self.cfg.node_index as u64
    }

    pub(crate) fn data_dir_is_empty(&self) -> bool {
        is_dir_empty(&self.cfg.data_dir)
    }

    /// The replica's root, for the hashing threads.
    pub(crate) fn replica_root(&self) -> std::io::Result<Arc<OwnedFd>> {
        Ok(Arc::new(std::fs::File::open(&self.cfg.data_dir)?.into()))
    }

    /// Marks this node's copy (as a passive) out of sync, persistently.
    /// Shows this copy read-only at the set's path, as a passive does (see
    /// [`mount_read_only_view`]): the daemon's sets start passive.
    pub(crate) fn show_read_only_view(&self) {
        mount_read_only_view(&self.cfg.data_dir, &self.cfg.path);
    }

    pub(crate) fn mark_copy_out_of_sync(&self, why: &str) {
        if !self.passive.out_of_sync.swap(true, Ordering::SeqCst) {
            warn!(set = %self.cfg.name, reason = why, "this copy is out of sync until resynced");
            self.persisted().out_of_sync = true;
            self.save();
        }
    }

    /// This passive copy's lease, for a `sync`-mode set (invariant 29): whether it applied
    /// everything the active had when its current (or last) session began, and when the
    /// newest renewal the active confirmed was sent. `None` for an `async` set, whose
    /// acknowledged writes may be lost by a failover anyway (up to its lag).
    pub fn passive_lease(&self) -> Option<(bool, Option<Instant>)> {
        if self.cfg.mode != crate::queue::Mode::Sync {
            return None;
        }
        let head = self.passive.lease.head.load(Ordering::SeqCst);
        let caught_up = head != u64::MAX && self.passive.applied.load(Ordering::SeqCst) >= head;
        Some((caught_up, *lock(&self.passive.lease.confirmed_sent_at)))
    }

    pub fn copy_out_of_sync(&self) -> bool {
        self.passive.out_of_sync.load(Ordering::SeqCst)
    }

    fn queue(&self) -> Option<Arc<SetQueue>> {
        lock(&self.active_queue).clone()
    }

    // ---- the passive side -------------------------------------------------------------

    /// Streaming resumes: this copy is a prefix of the active's lineage, which it adopts.
    pub(crate) fn adopt_lineage(&self, history: &[Generation], origin_empty: Option<bool>) {
        {
            let mut p = self.persisted();
            p.history = history.to_vec();
            p.origin_empty = origin_empty;
        }
        self.save();
        lock(&self.changes).clear();
    }

    /// The quarantine of a resync starting at `first_seq` (an interrupted one's is reused,
    /// so a file preserved before is not preserved again in its half-synced state).
    pub(crate) fn quarantine_dir(
        &self,
        first_seq: u64,
        pending: Option<&PendingResync>,
    ) -> std::io::Result<PathBuf> {
        if let Some(dir) = pending.and_then(|p| p.quarantine.clone()) {
            return Ok(dir);
        }
        let stamp = utc_stamp(SystemTime::now());
        let dir = self
            .cfg
            .state_dir
            .join("quarantine")
            .join(format!("{stamp}-sync{first_seq}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A resync of this copy starts: until it ends, the copy is neither the old one nor the
    /// active's, so it is out of sync (not eligible), persistently.
    pub(crate) fn begin_resync(&self, first_seq: u64, quarantine: Option<PathBuf>) {
        {
            let mut p = self.persisted();
            let quarantine =
                quarantine.or_else(|| p.resync.as_ref().and_then(|r| r.quarantine.clone()));
            p.resync = Some(PendingResync {
                id: first_seq,
                quarantine,
                failed: false,
            });
            p.out_of_sync = true;
        }
        self.passive.out_of_sync.store(true, Ordering::SeqCst);
        self.save();
    }

    pub(crate) fn resync_failed(&self) {
        if let Some(r) = self.persisted().resync.as_mut() {
            r.failed = true;
        }
        self.save();
    }

    /// The resync's `SyncEnd` is durable: this copy is now exactly the active's at `end`.
    pub(crate) fn finish_resync(&self, ctx: &ResyncCtx, end: u64, quarantine: Option<&Quarantine>) {
        let resyncs = {
            let mut p = self.persisted();
            p.history = ctx.active_history.clone();
            p.origin_empty = ctx.origin_empty;
            p.last_seq = end;
            p.out_of_sync = false;
            p.resync = None;
            p.resyncs += 1;
            p.resyncs
        };
        self.save();
        lock(&self.changes).clear();
        self.passive.out_of_sync.store(false, Ordering::SeqCst);
        self.passive.unclean.store(false, Ordering::SeqCst);
        let mut text =
            format!("resync #{resyncs} complete: this copy equals the active's at seq {end}");
        let mut warning = false;
        if let Some(q) = quarantine.filter(|q| q.files > 0) {
            warning = true;
            text = format!(
                "this node held changes the active lacks (it was active after the two parted: a failback or a split brain): {} of its changed files ({} bytes) were preserved in {} (see MANIFEST.jsonl) before the active's data replaced them; {text}",
                q.files,
                q.bytes,
                q.dir.display()
            );
        }
        self.notice(warning, text);
    }

    /// Streaming: the durable position is where this copy resumes after a crash. Saved
    /// after every commit, without a flush of its own (see `SetState::save_lazily`), so the
    /// active can drop its change log up to here soon.
    pub(crate) fn persist_position(&self, durable: u64) {
        let state = {
            let mut p = self.persisted();
            if p.resync.is_none() && durable > p.last_seq {
                p.last_seq = durable;
                Some(p.clone())
            } else {
                None
            }
        };
        if let Some(state) = state {
            if let Err(e) = state.save_lazily(&self.cfg.state_dir) {
                warn!(set = %self.cfg.name, error = %e, "cannot record this copy's position");
            }
        }
    }

    pub(crate) fn passive_sync_started(&self, id: u64, verify: bool) {
        self.passive.verifying.store(verify, Ordering::SeqCst);
        let mut p = lock(&self.progress);
        *p = SyncProgress {
            id,
            kind: if verify { "verify" } else { "resync" }.into(),
            phase: "applying".into(),
            started: Some(Instant::now()),
            ..SyncProgress::default()
        };
    }

    /// A sync's `SyncEnd` was applied here (and, for a resync, made durable).
    pub(crate) fn passive_sync_ended(&self) {
        let mut p = lock(&self.progress);
        if p.phase == "applying" {
            p.phase = "done".into();
            if let Some(s) = p.started {
                p.elapsed_ms = s.elapsed().as_millis() as u64;
            }
        }
    }

    pub(crate) fn passive_sync_is_verify(&self) -> bool {
        self.passive.verifying.load(Ordering::SeqCst)
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
            // What reached the disk is unknown: the position below is not a promise.
            error!(set = %self.cfg.name, error = %e, "syncing the copy failed");
            self.mark_copy_out_of_sync("syncing the copy failed");
        }
        let last = a.last_applied();
        self.passive.applied.store(last, Ordering::SeqCst);
        self.passive.durable.store(last, Ordering::SeqCst);
        // Mid-resync, the copy's position stays the one before the resync.
        let streaming = {
            let mut p = self.persisted();
            if p.resync.is_none() {
                p.last_seq = last;
            }
            p.resync.is_none()
        };
        if !streaming {
            a.set_last_applied(self.persisted().last_seq);
        }
        Some(a)
    }

    // ---- the active side --------------------------------------------------------------

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
        let out_of_sync = self.copy_out_of_sync();
        if out_of_sync {
            warn!(set = %self.cfg.name, "promoting a copy that is out of sync: it may lack the old active's last changes");
        }
        drop(applier);
        // A copy that is not exactly its lineage up to its last seq (left by a crash, out of
        // sync, mid-resync) starts its generation after a gap, so the peer compares.
        let certain = !self.passive.unclean.load(Ordering::SeqCst) && !out_of_sync;
        let data_empty = self.data_dir_is_empty();
        let (start, history) = {
            let mut p = self.persisted();
            if p.resync.is_some() {
                // The resync never finished: the position is the one before it.
                p.resync = None;
            }
            let start = p.promote(generation, certain, data_empty);
            p.out_of_sync = false;
            (start, p.history.clone())
        };
        if out_of_sync {
            // Its content, compared with the lineage, is unknown: a peer compares everything.
            lock(&self.changes).note_everything(start);
        }
        // From here on this copy is the pair's data; the peer's copy is the one to check.
        self.passive.out_of_sync.store(false, Ordering::SeqCst);
        self.passive.unclean.store(false, Ordering::SeqCst);
        self.save();
        let queue = Arc::new(
            SetQueue::new(
                QueueConfig {
                    mode: self.cfg.mode,
                    queue_max_bytes: self.cfg.queue_max_bytes,
                    mem_max_bytes: self.cfg.mem_max_bytes.min(self.cfg.queue_max_bytes),
                    stall_timeout: self.cfg.stall_timeout,
                    dir: self.cfg.state_dir.clone(),
                    serving: self.cfg.serving.clone(),
                },
                start,
                self.changes.clone(),
                false,
            )
            .map_err(|e| format!("queue: {e}"))?,
        );
        // The engine reads the copy through a descriptor opened before the mount covers it.
        let root: Arc<OwnedFd> = Arc::new(
            std::fs::File::open(&self.cfg.data_dir)
                .map_err(|e| format!("opening {}: {e}", self.cfg.data_dir.display()))?
                .into(),
        );
        let root_path = std::fs::canonicalize(&self.cfg.data_dir)
            .map_err(|e| format!("{}: {e}", self.cfg.data_dir.display()))?;
        let journal: Arc<dyn understudy_oplog::Journal> = queue.clone();
        let (data, path, threads, name) = (
            self.cfg.data_dir.clone(),
            self.cfg.path.clone(),
            self.cfg.capture_threads,
            self.cfg.name.clone(),
        );
        let mount = tokio::task::spawn_blocking(move || {
            // The passive's read-only view of the copy (and anything else left there).
            detach_mounts(&path);
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
        *lock(&self.active_queue) = Some(queue.clone());
        *lock(&self.active_copy) = Some(ActiveCopy {
            root,
            root_path: {
                use std::os::unix::ffi::OsStrExt;
                root_path.as_os_str().as_bytes().to_vec()
            },
            order: mount.order_lock(),
            queue: queue.clone(),
        });
        let sender = tokio::spawn(crate::session::run_sender(
            self.clone(),
            queue.clone(),
            tls,
            peer,
        ));
        info!(set = %self.cfg.name, path = %self.cfg.path.display(), next_seq = start, generation, history = ?history, "capturing");
        *role = Role::Active {
            queue,
            mount: Some(mount),
            sender,
        };
        Ok(())
    }

    pub(crate) fn begin_active_session(&self, s: ActiveSession) {
        *lock(&self.session) = Some(s);
    }

    pub(crate) fn end_active_session(&self) {
        *lock(&self.session) = None;
    }

    fn engine_io(
        &self,
        control: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
        router: &Arc<Mutex<Option<std::sync::mpsc::Sender<Report>>>>,
    ) -> Result<EngineIo, String> {
        let copy = lock(&self.active_copy)
            .clone()
            .ok_or("this node is not active")?;
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(router) = Some(tx);
        Ok(EngineIo {
            queue: copy.queue,
            order: copy.order,
            root: copy.root,
            root_path: copy.root_path,
            control,
            reports: rx,
            router: router.clone(),
            progress: self.progress.clone(),
            rate_max: self.cfg.sync_rate_max,
            longest_hold: Default::default(),
        })
    }

    /// The session found the passive cannot be streamed to: start the resync engine on its
    /// own thread. Returns the seq the passive must resume at (the `SyncBegin`) once the
    /// listing is recorded.
    pub(crate) fn start_resync(
        self: &Arc<Self>,
        queue: Arc<SetQueue>,
        scope: crate::engine::Scope,
        passive_empty: bool,
        control: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
        router: Arc<Mutex<Option<std::sync::mpsc::Sender<Report>>>>,
    ) -> Result<u64, String> {
        if self.engine_busy.swap(true, Ordering::SeqCst) {
            // A verify of the previous session may still be winding down.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.engine_busy.store(true, Ordering::SeqCst);
        let io = self.engine_io(control, &router)?;
        let id = queue.last_seq() + 1;
        let mut engine = Engine::new(io, id);
        {
            let mut p = lock(&self.progress);
            *p = SyncProgress {
                id,
                kind: "resync".into(),
                ..SyncProgress::default()
            };
        }
        let (first, listing) = match engine.begin(false, scope, true) {
            Ok(x) => x,
            Err(e) => {
                self.engine_busy.store(false, Ordering::SeqCst);
                return Err(e.to_string());
            }
        };
        let me = self.clone();
        let busy = self.engine_busy.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("resync-{}", self.cfg.name))
            .spawn(move || {
                let result = engine.resync(&listing, passive_empty);
                match result {
                    Ok(end) => {
                        queue.resync_done();
                        let p = lock(&me.progress).clone();
                        me.notice(false, format!(
                            "resync of the passive complete at seq {end} ({}, {} entries, {} of {} files copied or patched, {} bytes sent in {} ms)",
                            p.scope, p.entries, p.files_done, p.files_total, p.bytes_sent, p.elapsed_ms
                        ));
                    }
                    Err(e) => {
                        lock(&me.progress).phase = "failed".into();
                        warn!(set = %me.cfg.name, error = %e, "resync stopped; it starts again with the next session");
                        // The passive stays out of sync until a resync finishes: start the
                        // next session now rather than at the next outage.
                        if !matches!(e, crate::engine::EngineError::SessionEnded) {
                            queue.abandon_session();
                        }
                    }
                }
                busy.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.engine_busy.store(false, Ordering::SeqCst);
            return Err(format!("cannot start the resync thread: {e}"));
        }
        Ok(first)
    }

    /// `understudy verify`: compares the passive's copy with this (active) one, online, and
    /// with `repair` resyncs the files that differ. Runs in the background; status shows its
    /// progress and result.
    pub fn verify(self: &Arc<Self>, repair: bool) -> Result<u64, String> {
        let session = lock(&self.session)
            .clone()
            .ok_or("no passive is connected to this (active) node's set")?;
        if self.engine_busy.swap(true, Ordering::SeqCst) {
            return Err("a resync or verify of this set is already running".into());
        }
        if lock(&self.active_copy)
            .as_ref()
            .is_some_and(|c| c.queue.is_resyncing())
        {
            self.engine_busy.store(false, Ordering::SeqCst);
            return Err("the passive is being resynced; verify it afterwards".into());
        }
        let io = match self.engine_io(session.control.clone(), &session.router) {
            Ok(io) => io,
            Err(e) => {
                self.engine_busy.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let queue = io.queue.clone();
        let id = queue.last_seq() + 1;
        {
            let mut p = lock(&self.progress);
            *p = SyncProgress {
                id,
                kind: "verify".into(),
                ..SyncProgress::default()
            };
        }
        let me = self.clone();
        let busy = self.engine_busy.clone();
        std::thread::Builder::new()
            .name(format!("verify-{}", self.cfg.name))
            .spawn(move || {
                let outcome = run_verify(&me, io, id, repair, &session);
                if let Err(e) = outcome {
                    // The record in progress: the verify's, or the repair's once it started.
                    mark_failed(&me.progress, &e);
                    me.notice(true, format!("verify {id} stopped: {e}"));
                }
                busy.store(false, Ordering::SeqCst);
            })
            .map_err(|e| {
                self.engine_busy.store(false, Ordering::SeqCst);
                format!("cannot start the verify thread: {e}")
            })?;
        Ok(id)
    }

    /// With capture still mounted: waits until the passive has confirmed every op recorded
    /// so far (a barrier on the root first, so it flushes them), at most `timeout`. A
    /// planned move of the role asks this before the data is let go, so that it can still
    /// be called off (the applications start again here) instead of losing what the peer
    /// lacks. Returns the last seq and whether it was confirmed; not active: nothing to
    /// confirm.
    pub(crate) async fn confirm_drained(self: Arc<Self>, timeout: Duration) -> (u64, bool) {
        let Some(copy) = lock(&self.active_copy).clone() else {
            return (self.persisted().last_seq, true);
        };
        tokio::task::spawn_blocking(move || {
            {
                let _order = copy.order.lock();
                copy.queue.record_drain_barrier();
            }
            copy.queue.wait_drained(timeout)
        })
        .await
        .unwrap_or((0, false))
    }

    pub(crate) async fn demote(
        self: Arc<Self>,
        drain_timeout: Duration,
        peer_takes_over: bool,
    ) -> (u64, bool) {
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
        // From now on applications here cannot write to `path` (root included): it shows the
        // copy the new active will stream into, read-only.
        self.show_read_only_view();
        let q = queue.clone();
        let (last, drained) = tokio::task::spawn_blocking(move || q.drain(drain_timeout))
            .await
            .unwrap_or((queue.last_seq(), false));
        // Ops the peer never confirmed make this copy differ from the one that serves next
        // (a split brain's loser, a handover whose last drain failed): it must not take
        // over with them before a resync compares the two, which keeps them (quarantine).
        // After a shutdown or a failed start this copy may be the newest there is (the peer
        // long gone): it stays eligible, and the histories sort it out when they meet.
        let unconfirmed = peer_takes_over && !drained && queue.durable_seq() < last;
        // An fsync the drain did not confirm can no longer be: it fails.
        queue.close();
        sender.abort();
        let _ = sender.await;
        queue.end_session();
        *lock(&self.active_queue) = None;
        *lock(&self.active_copy) = None;
        self.end_active_session();
        self.persisted().last_seq = last;
        self.save();
        if unconfirmed {
            self.mark_copy_out_of_sync(
                "it stopped serving with ops the peer never confirmed; a resync compares the copies",
            );
        }
        let applier = Applier::open(&self.cfg.data_dir, &self.cfg.state_dir.join("orphans"));
        match applier {
            Ok(mut a) => {
                a.set_last_applied(last);
                self.passive.applied.store(last, Ordering::SeqCst);
                self.passive.durable.store(last, Ordering::SeqCst);
                // A lease from before this node served says nothing about the new active.
                self.passive.lease.head.store(u64::MAX, Ordering::SeqCst);
                *lock(&self.passive.lease.confirmed_sent_at) = None;
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
                Some(queue.last_seq())
            }
            mut passive @ Role::Passive { .. } => {
                let _ = self.stop_passive_session(&mut passive).await;
                None
            }
            Role::Idle => None,
        };
        // The passive's read-only view goes with the daemon.
        detach_mounts(&self.cfg.path);
        lock(&self.changes).seal();
        {
            let mut p = self.persisted();
            if let Some(last) = last {
                p.last_seq = last;
            }
            p.clean = true;
        }
        self.save();
    }

    pub fn status(&self) -> SetStatus {
        let mode = match self.cfg.mode {
            Mode::Sync => "sync",
            Mode::Async => "async",
        };
        let progress = lock(&self.progress).clone();
        let sync = (progress.id != 0).then(|| {
            let mut p = progress;
            // The engine updates the figures as it records; between its updates (a slow
            // read, a wait for the passive) the rate and ETA are as of now.
            if p.phase != "done" && p.phase != "failed" {
                p.tick();
            }
            p
        });
        let (resyncs, quarantine) = {
            let p = self.persisted();
            (
                p.resyncs,
                p.resync.as_ref().and_then(|r| r.quarantine.clone()),
            )
        };
        let warnings = self.quarantine_warnings(quarantine);
        let last_verify = lock(&self.last_verify).clone();
        let changed_files = lock(&self.changes).open_paths();
        if let Some(q) = self.queue() {
            let s = q.snapshot();
            let state = if s.out_of_sync {
                ReplState::OutOfSync
            } else if !s.streaming {
                ReplState::Disconnected
            } else if s.resyncing
                || s.queue_bytes > s.mem_bytes
                || s.last_seq - s.applied_seq > 100_000
                || s.oldest_unacked
                    .is_some_and(|t| t.elapsed() >= CATCHING_UP_LAG)
            {
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
                changed_files,
                sync,
                last_verify,
                resyncs,
                warnings,
            };
        }
        let p = &self.passive;
        let resyncing = self.persisted().resync.is_some();
        let state = if resyncing && p.session_up.load(Ordering::SeqCst) {
            ReplState::CatchingUp
        } else if p.out_of_sync.load(Ordering::SeqCst) || p.unclean.load(Ordering::SeqCst) {
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
            changed_files,
            sync,
            last_verify,
            resyncs,
            warnings,
        }
    }

    /// One warning per quarantine directory that still exists (the operator removes it
    /// once the files are looked at).
    fn quarantine_warnings(&self, current: Option<PathBuf>) -> Vec<String> {
        let base = self.cfg.state_dir.join("quarantine");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs.into_iter()
            .filter_map(|dir| {
                let manifest = std::fs::read_to_string(dir.join("MANIFEST.jsonl")).ok()?;
                let files = manifest.lines().count();
                if files == 0 && current.as_ref() != Some(&dir) {
                    return None;
                }
                Some(format!(
                    "{files} files this node changed before its copy was replaced by the active's are preserved in {} (MANIFEST.jsonl lists them); remove the directory once handled",
                    dir.display()
                ))
            })
            .collect()
    }

    /// Bytes per second over the last status interval of at least one second.
    fn rate(&self, total: u64) -> u64 {
        let mut r = lock(&self.rate);
        let elapsed = r.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            r.2 = (total.saturating_sub(r.1) as f64 / elapsed.as_secs_f64()) as u64;
            *r = (Instant::now(), total, r.2);
        }
        r.2
    }
}

/// A verify, then with `repair` a resync of what differs, in the live session.
fn run_verify(
    set: &Arc<ReplicaSet>,
    io: EngineIo,
    id: u64,
    repair: bool,
    session: &ActiveSession,
) -> Result<(), String> {
    let mut engine = Engine::new(io, id);
    let (_, listing) = engine
        .begin(true, crate::engine::Scope::Paths(None), false)
        .map_err(|e| e.to_string())?;
    let mut outcome = engine.verify(&listing).map_err(|e| e.to_string())?;
    let n = outcome.differences.len();
    set.notice(
        n > 0,
        format!(
            "verify {id}: {n} differences ({} files, {} bytes compared in {} ms)",
            outcome.files_compared, outcome.bytes_compared, outcome.elapsed_ms
        ),
    );
    if !repair || n == 0 {
        *lock(&set.last_verify) = Some(outcome);
        return Ok(());
    }
    let paths: Vec<Vec<u8>> = outcome
        .differences
        .iter()
        .map(|(p, _)| unescape_ascii(p))
        .collect();
    // The outcome is shown only once the repair's record exists, naming it: `understudy
    // verify --repair` follows that id to its end (shown earlier, the verify's own "done"
    // passed for the repair's, and a failed repair for a finished one).
    let io = match set.engine_io(session.control.clone(), &session.router) {
        Ok(io) => io,
        Err(e) => {
            let e = format!("the repair could not start: {e}");
            mark_failed(&set.progress, &e);
            *lock(&set.last_verify) = Some(outcome);
            return Err(e);
        }
    };
    let repair_id = io.queue.last_seq() + 1;
    {
        let mut p = lock(&set.progress);
        *p = SyncProgress {
            id: repair_id,
            kind: "repair".into(),
            phase: "starting".into(),
            ..SyncProgress::default()
        };
    }
    outcome.repair_id = Some(repair_id);
    *lock(&set.last_verify) = Some(outcome);
    let mut engine = Engine::new(io, repair_id);
    let scope = if paths.iter().any(|p| p.is_empty()) {
        None
    } else {
        Some(paths)
    };
    let (_, listing) = engine
        .begin(false, crate::engine::Scope::Paths(scope), false)
        .map_err(|e| e.to_string())?;
    let end = engine.resync(&listing, false).map_err(|e| e.to_string())?;
    set.notice(
        false,
        format!("repair after verify {id}: {n} differing paths resynced (done at seq {end})"),
    );
    Ok(())
}

/// Marks the sync record in progress failed, with why.
fn mark_failed(progress: &Mutex<SyncProgress>, why: &str) {
    let mut p = lock(progress);
    p.phase = "failed".into();
    p.error = Some(why.to_string());
}

/// Reverses `escape_ascii` (how paths are shown) for the paths a verify reported.
fn unescape_ascii(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("00");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 4;
                    continue;
                }
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'0' => out.push(0),
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for a quarantine directory's name.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Lazily detaches whatever a dead daemon left mounted at `path` (a capture mount answers
/// "transport endpoint is not connected"; a passive's read-only view may lie under it).
/// Not an error if nothing is mounted.
pub fn detach_stale_mount(path: &std::path::Path) {
    let detached = detach_mounts(path);
    if detached > 0 {
        info!(path = %path.display(), mounts = detached, "detached stale mounts");
    }
}

/// At most this many mounts stacked at a set's path are detached: a capture mount and a
/// read-only view, each left by a daemon that died, with room to spare.
const STACKED_MOUNTS_MAX: usize = 4;

/// Lazily detaches the mounts at `path`, topmost first; returns how many.
fn detach_mounts(path: &std::path::Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut detached = 0;
    while detached < STACKED_MOUNTS_MAX {
        // SAFETY: a valid NUL-terminated path; umount2 only reads it.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
        detached += 1;
    }
    detached
}

/// On the passive, `path` shows the copy read-only: a bind mount of the data dir, remounted
/// read-only, so nothing there (root included) writes where the active's data will be
/// mounted (such writes would be unreplicated, then hidden by the capture mount), and an
/// operator can look at the copy. Failing to set it up is logged, not fatal: the copy is
/// unaffected either way.
fn mount_read_only_view(data_dir: &std::path::Path, path: &std::path::Path) {
    if let Err(e) = bind_read_only(data_dir, path) {
        warn!(path = %path.display(), error = %e, "cannot show the copy read-only at the set's path");
    }
}

fn bind_read_only(source: &std::path::Path, target: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (src, dst) = (cstr(source)?, cstr(target)?);
    // SAFETY: valid NUL-terminated paths; a bind mount reads no fstype or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A bind mount takes its flags from the remount that follows it, not from the first call.
    // SAFETY: as above; the source is ignored by a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // A writable view would be worse than none.
        // SAFETY: as above.
        unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_escapes() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "20261118T110640Z"
        );
        let raw = b"a\\b\n\xff c".to_vec();
        assert_eq!(unescape_ascii(&raw.escape_ascii().to_string()), raw);
    }
}
