//! The two ends of a set's replication stream: the active's sender (dial, handshake,
//! stream, take acks) and the passive's receiver (handshake, hand records to the apply
//! thread, send acks). Group commit lives in the apply thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use understudy_apply::Applier;
use understudy_oplog::{decode_record, FileRef, Op};
use understudy_tls::NodeTls;

use crate::proto::{self, kind, Hello, ProtoError, Welcome};
use crate::queue::{frame_record, Next, SetQueue};
use crate::set::{PassiveSession, ReplicaSet, Role};
use crate::state::{can_resume, Generation};

/// Most bytes of records put in one frame.
const BATCH_MAX_BYTES: u64 = 4 << 20;
/// Frames of records received but not yet applied, per set (each at most ~4 MiB).
const APPLY_QUEUE_FRAMES: usize = 8;
/// A session that hears nothing for this long is dead (keepalives flow every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(1);
/// The passive flushes its copy for barriers (an fsync on the active, a drain) and otherwise
/// at most this often, so its durable position keeps moving without costing the disk a flush
/// per group of plain writes: the active does not flush those either.
const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Plain writes reach the passive's socket after at most this delay, batched; a barrier is
/// sent at once.
const COALESCE: Duration = Duration::from_millis(1);
/// Buffered bytes that are sent without waiting for the coalescing delay.
const COALESCE_BYTES: usize = 256 << 10;

/// The active's side of one set: keep a session to the passive for as long as we are active.
pub async fn run_sender(
    set: Arc<ReplicaSet>,
    queue: Arc<SetQueue>,
    history: Vec<Generation>,
    tls: NodeTls,
    peer: SocketAddr,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        match understudy_tls::connect(&tls, peer, Duration::from_secs(3)).await {
            Ok(stream) => {
                let why = sender_session(&set, &queue, &history, stream).await;
                queue.end_session();
                info!(set = set.name(), reason = %why, "replication session ended");
            }
            Err(e) => debug!(set = set.name(), error = %e, "replication connect failed"),
        }
        backoff = if started.elapsed() > Duration::from_secs(2) {
            Duration::from_millis(50)
        } else {
            (backoff * 2).min(Duration::from_secs(1))
        };
        tokio::time::sleep(backoff).await;
    }
}

async fn sender_session<S>(
    set: &ReplicaSet,
    queue: &Arc<SetQueue>,
    history: &[Generation],
    stream: S,
) -> String
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let hello = Hello {
        set: set.name().to_string(),
        history: history.to_vec(),
        next_seq: queue.last_seq() + 1,
    };
    if let Err(e) = send(&mut wr, kind::HELLO, &hello.encode()).await {
        return format!("hello: {e}");
    }
    if let Err(e) = wr.flush().await {
        return format!("hello: {e}");
    }
    let mut buf = Vec::new();
    let welcome =
        match tokio::time::timeout(IDLE_TIMEOUT, proto::read_frame(&mut rd, &mut buf)).await {
            Ok(Ok(kind::WELCOME)) => match Welcome::decode(&buf) {
                Ok(w) => w,
                Err(e) => return format!("welcome: {e}"),
            },
            Ok(Ok(other)) => return format!("unexpected frame {other}"),
            Ok(Err(e)) => return format!("welcome: {e}"),
            Err(_) => return "no welcome".into(),
        };
    if !welcome.accepted {
        return "the peer refused the set (is it active too?)".into();
    }
    let resumable = !welcome.out_of_sync
        && can_resume(history, &welcome.history, welcome.applied_seq)
        && queue.start_session(welcome.applied_seq);
    if !resumable {
        queue.mark_out_of_sync("the passive's copy cannot be caught up from the queue");
        let _ = send(&mut wr, kind::OUT_OF_SYNC, &[]).await;
        let _ = wr.flush().await;
        // Stay connected so both sides show the state; resync (a later issue) repairs it.
        loop {
            tokio::time::sleep(KEEPALIVE).await;
            if let Err(e) = send(&mut wr, kind::KEEPALIVE, &[]).await {
                return format!("keepalive: {e}");
            }
            if let Err(e) = wr.flush().await {
                return format!("keepalive: {e}");
            }
        }
    }
    info!(
        set = set.name(),
        from_seq = welcome.applied_seq + 1,
        "streaming to the passive"
    );

    // Acks come back on the read half.
    let q = queue.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            match tokio::time::timeout(IDLE_TIMEOUT, proto::read_frame(&mut rd, &mut buf)).await {
                Ok(Ok(kind::ACK)) => match proto::decode_ack(&buf) {
                    Ok((applied, durable)) => q.ack(applied, durable),
                    Err(e) => return format!("ack: {e}"),
                },
                Ok(Ok(kind::KEEPALIVE)) => {}
                Ok(Ok(other)) => return format!("unexpected frame {other}"),
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return "the passive went silent".into(),
            }
        }
    });
    let wake = queue.wake_sender.clone();
    let mut frame = Vec::with_capacity(BATCH_MAX_BYTES as usize + (1 << 20));
    let mut urgent = false;
    let mut hold_until: Option<tokio::time::Instant> = None;
    let why = loop {
        if queue.session_abandoned() {
            break "abandoned: the passive fell too far behind".to_string();
        }
        let next = match queue.next_batch(BATCH_MAX_BYTES) {
            Ok(n) => n,
            Err(e) => break format!("reading the spill: {e}"),
        };
        let result = match next {
            Next::Records(records) => {
                frame.clear();
                for r in &records {
                    frame_record(r, &mut frame);
                    urgent |= r.op.is_barrier();
                }
                send(&mut wr, kind::RECORDS, &frame).await
            }
            Next::Encoded(bytes, _) => {
                urgent = true;
                send(&mut wr, kind::RECORDS, &bytes).await
            }
            Next::Idle => {
                // Plain writes wait a moment for company, so a stream of small ops costs
                // one socket write and one ack per batch rather than per op; a barrier
                // (someone waits in fsync) goes out at once.
                if !urgent && !wr.buffer().is_empty() && wr.buffer().len() < COALESCE_BYTES {
                    let until =
                        *hold_until.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
                    if tokio::time::Instant::now() < until {
                        tokio::select! {
                            _ = wake.notified() => {}
                            _ = tokio::time::sleep_until(until) => {}
                        }
                        continue;
                    }
                }
                urgent = false;
                hold_until = None;
                if let Err(e) = wr.flush().await {
                    break format!("write: {e}");
                }
                tokio::select! {
                    _ = wake.notified() => Ok(()),
                    _ = tokio::time::sleep(KEEPALIVE) => match send(&mut wr, kind::KEEPALIVE, &[]).await {
                        Ok(()) => wr.flush().await.map_err(ProtoError::from),
                        Err(e) => Err(e),
                    },
                    r = &mut reader => break r.unwrap_or_else(|e| format!("ack reader: {e}")),
                }
            }
        };
        if let Err(e) = result {
            break format!("write: {e}");
        }
        if reader.is_finished() {
            break (&mut reader)
                .await
                .unwrap_or_else(|e| format!("ack reader: {e}"));
        }
    };
    reader.abort();
    why
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, body: &[u8]) -> Result<(), ProtoError> {
    proto::write_frame(w, kind, body).await
}

/// The passive's side: the peer's sender dialled us. Read its hello and hand the stream to
/// the set it names.
pub async fn serve_passive<S>(sets: &[Arc<ReplicaSet>], stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = Vec::new();
    let hello = match tokio::time::timeout(IDLE_TIMEOUT, proto::read_frame(&mut rd, &mut buf)).await
    {
        Ok(Ok(kind::HELLO)) => match Hello::decode(&buf) {
            Ok(h) => h,
            Err(e) => return warn!(error = %e, "bad replication hello"),
        },
        _ => return warn!("replication connection without a hello"),
    };
    let Some(set) = sets.iter().find(|s| s.name() == hello.set).cloned() else {
        warn!(set = %hello.set, "the peer replicates a set we do not have");
        let refuse = Welcome {
            accepted: false,
            history: vec![],
            applied_seq: 0,
            out_of_sync: false,
        };
        let _ = send(&mut wr, kind::WELCOME, &refuse.encode()).await;
        let _ = wr.flush().await;
        return;
    };
    let mut role = set.role.lock().await;
    if !matches!(*role, Role::Passive { .. }) {
        warn!(set = %hello.set, "the peer wants to replicate to us, but we are not passive");
        let refuse = Welcome {
            accepted: false,
            history: vec![],
            applied_seq: 0,
            out_of_sync: false,
        };
        let _ = send(&mut wr, kind::WELCOME, &refuse.encode()).await;
        let _ = wr.flush().await;
        return;
    }
    // A newer connection replaces an older one.
    let Some(applier) = set.stop_passive_session(&mut role).await else {
        error!(set = %hello.set, "no applier");
        return;
    };
    let applied = applier.last_applied();
    let (history, out_of_sync) = {
        let p = set.persisted();
        (
            p.history.clone(),
            p.out_of_sync || set.copy_out_of_sync() || set.passive.unclean.load(Ordering::SeqCst),
        )
    };
    let welcome = Welcome {
        accepted: true,
        history: history.clone(),
        applied_seq: applied,
        out_of_sync,
    };
    let sent = match send(&mut wr, kind::WELCOME, &welcome.encode()).await {
        Ok(()) => wr.flush().await.map_err(ProtoError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        warn!(error = %e, "welcome failed");
        *role = Role::Passive {
            applier: Some(applier),
            session: None,
        };
        return;
    }
    let resumable = !out_of_sync && can_resume(&hello.history, &history, applied);
    if resumable {
        // From here on this copy follows the active's history.
        set.persisted().history = hello.history.clone();
        set.save();
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(APPLY_QUEUE_FRAMES);
    // Frame buffers go back from the apply thread to the reader, so each is allocated (and
    // its pages faulted in and zeroed) once per session instead of once per frame.
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ack_tx, ack_rx) = watch::channel((applied, applied));
    let apply_set = set.clone();
    let apply = std::thread::Builder::new()
        .name(format!("apply-{}", hello.set))
        .spawn(move || apply_loop(apply_set, applier, rx, ack_tx, pool_tx));
    let apply = match apply {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot start the apply thread");
            return;
        }
    };
    set.passive.session_up.store(true, Ordering::SeqCst);
    let net = tokio::spawn(passive_net(set.clone(), rd, wr, tx, ack_rx, pool_rx));
    *role = Role::Passive {
        applier: None,
        session: Some(PassiveSession { net, apply }),
    };
}

async fn passive_net<R, W>(
    set: Arc<ReplicaSet>,
    mut rd: R,
    wr: W,
    tx: mpsc::Sender<Vec<u8>>,
    mut acks: watch::Receiver<(u64, u64)>,
    pool: std::sync::mpsc::Receiver<Vec<u8>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut wr = BufWriter::new(wr);
    let writer = async move {
        loop {
            tokio::select! {
                changed = acks.changed() => {
                    if changed.is_err() {
                        return "the apply thread stopped".to_string();
                    }
                    let (applied, durable) = *acks.borrow_and_update();
                    if let Err(e) = send(&mut wr, kind::ACK, &proto::encode_ack(applied, durable)).await {
                        return format!("ack: {e}");
                    }
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if let Err(e) = send(&mut wr, kind::KEEPALIVE, &[]).await {
                        return format!("keepalive: {e}");
                    }
                }
            }
            if let Err(e) = wr.flush().await {
                return format!("flush: {e}");
            }
        }
    };
    let s = set.clone();
    let reader = async move {
        loop {
            let mut buf = pool.try_recv().unwrap_or_default();
            match tokio::time::timeout(IDLE_TIMEOUT, proto::read_frame(&mut rd, &mut buf)).await {
                Ok(Ok(kind::RECORDS)) => {
                    s.passive
                        .received_bytes
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    if tx.send(buf).await.is_err() {
                        return "the apply thread stopped".to_string();
                    }
                }
                Ok(Ok(kind::OUT_OF_SYNC)) => {
                    s.mark_copy_out_of_sync("the active cannot catch this copy up from its queue")
                }
                Ok(Ok(kind::KEEPALIVE)) => {}
                Ok(Ok(other)) => return format!("unexpected frame {other}"),
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return "the active went silent".into(),
            }
        }
    };
    let why = tokio::select! {
        why = writer => why,
        why = reader => why,
    };
    set.passive.session_up.store(false, Ordering::SeqCst);
    info!(set = set.name(), reason = %why, "replication session ended");
}

/// Applies received frames in order; syncs when a barrier was applied and nothing more is
/// waiting (group commit), or periodically; reports progress as acks.
fn apply_loop(
    set: Arc<ReplicaSet>,
    mut applier: Applier,
    mut rx: mpsc::Receiver<Vec<u8>>,
    acks: watch::Sender<(u64, u64)>,
    pool: std::sync::mpsc::Sender<Vec<u8>>,
) -> Applier {
    let mut broken = set.copy_out_of_sync();
    let sync_mode = set.cfg.mode == crate::queue::Mode::Sync;
    let mut barrier = false;
    let mut unsynced_bytes = 0u64;
    let mut last_sync = Instant::now();
    let mut durable = applier.last_applied();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(set = set.name(), error = %e, "cannot start the apply thread's timer");
            return applier;
        }
    };
    loop {
        let frame = match rx.try_recv() {
            Ok(f) => Some(f),
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing waiting: this is the moment to commit a group.
                let due = barrier || (unsynced_bytes > 0 && last_sync.elapsed() >= SYNC_INTERVAL);
                if due && !broken {
                    commit(&set, &mut applier, &mut durable, &mut broken);
                    barrier = false;
                    unsynced_bytes = 0;
                    last_sync = Instant::now();
                }
                acks.send_replace((applier.last_applied(), durable));
                // Wait for more, but wake up to honour the sync interval.
                match wait_frame(
                    &rt,
                    &mut rx,
                    if unsynced_bytes > 0 {
                        SYNC_INTERVAL
                    } else {
                        Duration::from_secs(3600)
                    },
                ) {
                    Wait::Frame(f) => Some(f),
                    Wait::Timeout => None,
                    Wait::Closed => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let Some(frame) = frame else { continue };
        if broken {
            continue;
        }
        unsynced_bytes += frame.len() as u64;
        let mut body = frame.as_slice();
        while body.len() >= 4 {
            let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            let Some(bytes) = body.get(4..4 + len) else {
                set.mark_copy_out_of_sync("a truncated record arrived");
                broken = true;
                break;
            };
            body = &body[4 + len..];
            let record = match decode_record(bytes) {
                Ok(r) => r,
                Err(e) => {
                    error!(set = set.name(), error = %e, "refusing an undecodable record");
                    set.mark_copy_out_of_sync("an undecodable record arrived");
                    broken = true;
                    break;
                }
            };
            // In async mode nobody waits for our flush: sync on the interval only, and
            // leave the disk to the active's own fsyncs.
            // (A barrier on the root is a drain's, which needs the flush in both modes.)
            barrier |= record.op.is_barrier()
                && (sync_mode
                    || matches!(&record.op, Op::Fsync { file: FileRef::Path(p), .. } if p.is_empty()));
            if let Err(e) = applier.apply(&record) {
                error!(set = set.name(), seq = record.seq, error = %e, "applying failed; the copy is out of sync");
                set.mark_copy_out_of_sync("an op could not be applied");
                broken = true;
                break;
            }
            set.passive.applied.store(record.seq, Ordering::Relaxed);
        }
        // Back to the reader for the next frame; if the reader is gone, it is just freed.
        let _ = pool.send(frame);
    }
    if !broken {
        commit(&set, &mut applier, &mut durable, &mut broken);
    }
    applier
}

fn commit(set: &ReplicaSet, applier: &mut Applier, durable: &mut u64, broken: &mut bool) {
    match applier.sync() {
        Ok(()) => {
            *durable = applier.last_applied();
            set.passive.durable.store(*durable, Ordering::Relaxed);
        }
        Err(e) => {
            error!(set = set.name(), error = %e, "syncing the copy failed");
            set.mark_copy_out_of_sync("sync failed");
            *broken = true;
        }
    }
}

enum Wait {
    Frame(Vec<u8>),
    Timeout,
    Closed,
}

/// Waits for the next frame, at most `timeout`. `blocking_recv` has no timeout, so the apply
/// thread drives the receive with its own small current-thread runtime.
fn wait_frame(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Wait {
    // The timer must be created inside the runtime.
    match rt.block_on(async { tokio::time::timeout(timeout, rx.recv()).await }) {
        Ok(Some(f)) => Wait::Frame(f),
        Ok(None) => Wait::Closed,
        Err(_) => Wait::Timeout,
    }
}
