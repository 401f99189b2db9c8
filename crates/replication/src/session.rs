//! The two ends of a set's replication stream: the active's sender (dial, handshake, decide
//! between streaming and a resync, stream, take acks and reports) and the passive's receiver
//! (handshake, hand records to the apply thread, send acks and reports, serve hash
//! requests). Group commit lives in the apply thread.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use understudy_apply::Applier;
use understudy_oplog::{decode_record, decode_write, encode_record_split, FileRef, Op};
use understudy_tls::NodeTls;

use crate::changes::Changed;
use crate::engine::Report;
use crate::fsync_pattern::FsyncPattern;
use crate::observer::{self, PassiveObserver, PreserveRule, Quarantine};
use crate::proto::{self, kind, Ack, Hello, Lease, Plan, ProtoError, Welcome};
use crate::queue::{Next, SetQueue};
use crate::set::{ActiveSession, PassiveSession, ReplicaSet, ResyncCtx, Role, RENEWALS_MAX};
use crate::state::{common_point, holds_own_captures, standing, PassiveCopy};

/// Most bytes of records put in one frame.
const BATCH_MAX_BYTES: u64 = 4 << 20;
/// Frames of records received but not yet applied, per set (each at most ~4 MiB).
const APPLY_QUEUE_FRAMES: usize = 8;
/// At most this many progress acks in a row are held back for a commit that comes next.
const ACKS_HELD_MAX: u32 = 4;
/// A session that hears nothing for this long is dead (keepalives flow every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(1);
/// The passive flushes its copy for barriers (an fsync on the active, a drain; in sync mode
/// also a write whose fsync is expected next, see `FsyncPattern`) and otherwise at most this
/// often when it is idle, so its durable position keeps moving without costing
/// the disk a flush per group of plain writes (the active does not flush those either). It
/// records that position after every flush: where it would resume after a crash, and how
/// much of its change log the active may drop.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// The passive records its durable position at most this often.
const PERSIST_INTERVAL: Duration = Duration::from_millis(500);
/// Plain writes reach the passive's socket after at most this delay, batched; a barrier is
/// sent at once.
const COALESCE: Duration = Duration::from_millis(1);
/// Buffered bytes that are sent without waiting for the coalescing delay.
const COALESCE_BYTES: usize = 256 << 10;

/// The active's side of one set: keep a session to the passive for as long as we are active.
pub async fn run_sender(
    set: Arc<ReplicaSet>,
    queue: Arc<SetQueue>,
    tls: NodeTls,
    peer: SocketAddr,
) {
    let mut backoff = Duration::from_millis(20);
    // Sessions in a row that the peer accepted but that ended within SESSION_SHORT: a passive
    // that cannot take the stream (its disk is full, its copy cannot be written) would
    // otherwise be resynced from the start several times a second, filling both logs.
    let mut short_sessions = 0u32;
    let mut failed_dials = 0u64;
    loop {
        let started = Instant::now();
        // A failed round already spent a second on attempts: the pause is for sessions.
        let session_ran = match dial(&tls, peer, DIAL_ROUND).await {
            Ok(stream) => {
                failed_dials = 0;
                let why = sender_session(&set, &queue, stream).await;
                queue.end_session();
                set.end_active_session();
                if started.elapsed() > SESSION_SHORT {
                    short_sessions = 0;
                } else {
                    short_sessions = short_sessions.saturating_add(1);
                }
                if short_sessions <= 3 {
                    info!(set = set.name(), reason = %why, "replication session ended");
                } else {
                    debug!(set = set.name(), reason = %why, short_sessions, "replication session ended again");
                }
                true
            }
            Err(e) => {
                // One line per round of attempts (a second of them), not per attempt.
                failed_dials += 1;
                debug!(set = set.name(), error = %e, rounds = failed_dials, "replication connect failed");
                false
            }
        };
        backoff = if started.elapsed() > SESSION_SHORT {
            Duration::from_millis(20)
        } else {
            (backoff * 2).min(Duration::from_millis(100))
        };
        if session_ran {
            tokio::time::sleep(backoff.max(failed_session_pause(short_sessions))).await;
        }
    }
}

/// A new connection attempt starts this often while earlier ones still wait.
const DIAL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a frequent attempt waits for the TCP connect: a cut-off or dead peer drops our
/// SYNs, and the kernel would send the next one only after a second.
const DIAL_CONNECT_SHORT: Duration = Duration::from_millis(200);
/// One attempt at a time waits this long, for a peer far away (a WAN pair).
const DIAL_CONNECT_LONG: Duration = Duration::from_secs(2);
/// The TCP connect and the TLS handshake together, per attempt.
const DIAL_HANDSHAKE: Duration = Duration::from_secs(3);
/// Attempts in flight at once, at most (short ones last DIAL_CONNECT_SHORT, so about
/// eight of them overlap, plus the long one).
const DIAL_IN_FLIGHT_MAX: usize = 12;
/// One call of [`dial`] starts attempts for this long.
const DIAL_ROUND: Duration = Duration::from_secs(1);

/// Dials the peer with overlapping attempts: a new one every [`DIAL_INTERVAL`] while earlier
/// ones still wait for their SYN to be answered, so a link that heals carries a session again
/// within about that interval (one attempt at a time, waiting out a dropped SYN, took a few
/// hundred milliseconds). The attempts race only their TCP connects: the first socket
/// connected does the TLS handshake and the others are dropped then, which closes them. (When
/// a link heals, the SYNs it held go out together and several connect at once; each used to
/// go on to a full handshake, on both nodes' CPUs at the moment the backlog starts to flow,
/// and the passive logged each loser as a connection without a hello.) A failed handshake
/// starts the race again. Starts attempts for `round`; returns the last error if none
/// succeeded by the time all of them ended.
async fn dial(
    tls: &NodeTls,
    peer: SocketAddr,
    round: Duration,
) -> Result<understudy_tls::Channel, understudy_tls::TlsError> {
    let mut attempts = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let deadline = start + round;
    let mut next_start = start;
    let mut long_free_at = start;
    let mut last_error = None;
    loop {
        let now = tokio::time::Instant::now();
        let may_start = now < deadline && attempts.len() < DIAL_IN_FLIGHT_MAX;
        if !may_start && attempts.is_empty() {
            return Err(
                last_error.unwrap_or_else(|| understudy_tls::TlsError::Timeout {
                    stage: "connecting to",
                    peer: peer.to_string(),
                    after: round,
                }),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_start), if may_start => {
                let connect_timeout = if now >= long_free_at {
                    long_free_at = now + DIAL_CONNECT_LONG;
                    DIAL_CONNECT_LONG
                } else {
                    DIAL_CONNECT_SHORT
                };
                attempts.spawn(understudy_tls::connect_tcp(peer, connect_timeout));
                next_start = now + DIAL_INTERVAL;
            }
            Some(done) = attempts.join_next(), if !attempts.is_empty() => match done {
                Ok(Ok(tcp)) => {
                    // The losers are closed (dropping the set aborts them) before they cost
                    // the peer a handshake.
                    attempts = tokio::task::JoinSet::new();
                    match understudy_tls::handshake_as_client(tls, peer, tcp, DIAL_HANDSHAKE).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last_error = Some(e),
                    }
                }
                Ok(Err(e)) => last_error = Some(e),
                // An attempt task cannot panic short of a bug in the TLS stack; try again.
                Err(e) => debug!(error = %e, "a connection attempt ended abnormally"),
            },
        }
    }
}

/// A session shorter than this did not get going: the next one backs off.
const SESSION_SHORT: Duration = Duration::from_secs(2);
/// The longest pause between sessions that keep failing. A peer that heals (its disk freed)
/// is resynced at most this late.
const FAILED_SESSION_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The pause after `short_sessions` sessions in a row ended early: none for the first two
/// (a peer that was just promoted or demoted often refuses one), then doubling from 250 ms
/// up to FAILED_SESSION_PAUSE_MAX.
fn failed_session_pause(short_sessions: u32) -> Duration {
    if short_sessions < 3 {
        return Duration::ZERO;
    }
    let doublings = (short_sessions - 3).min(8);
    (Duration::from_millis(250) * (1u32 << doublings)).min(FAILED_SESSION_PAUSE_MAX)
}

async fn sender_session(
    set: &Arc<ReplicaSet>,
    queue: &Arc<SetQueue>,
    stream: understudy_tls::Channel,
) -> String {
    // Halves without a lock between them: acks are read while records are written.
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::with_capacity(256 << 10, proto::StallGuard::new(wr, IDLE_TIMEOUT));
    let (history, origin_empty) = {
        let p = set.persisted();
        (p.history.clone(), p.origin_empty)
    };
    let last = queue.last_seq();
    let hello = Hello {
        set: set.name().to_string(),
        history: history.clone(),
        next_seq: last + 1,
        origin_empty,
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
    // Our own view of where the copies part: the passive's claim is only a hint.
    let common = common_point(&history, last, &welcome.history, welcome.applied_seq);
    let (control_tx, mut control_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let router: Arc<Mutex<Option<std::sync::mpsc::Sender<Report>>>> = Arc::new(Mutex::new(None));
    let streams = welcome.exact
        && common == welcome.applied_seq
        && common == welcome.common
        && queue.start_session(common);
    let plan = if streams {
        // Read after the session started: every write acknowledged without this passive
        // was recorded by now, and every later fsync waits for it.
        let head = queue.last_seq();
        info!(
            set = set.name(),
            from_seq = common + 1,
            head,
            "the passive is a prefix of this copy: streaming, no comparison"
        );
        Plan::Stream { head }
    } else {
        // The passive's own changes; ours are added when the listing is made, under the
        // capture's order lock, so none captured meanwhile is missed.
        let mut extra = match &welcome.changed {
            // What the passive changed itself is compared whole (its blocks are unknown).
            Some(paths) => Changed::whole(paths.iter().cloned()),
            None => Changed::everything(),
        };
        // The active's content before its first op is its origin: unless that was empty,
        // a passive with nothing in common must compare everything.
        if common == 0 && origin_empty != Some(true) {
            extra.merge(Changed::everything());
        }
        info!(
            set = set.name(),
            common,
            diverged = welcome.diverged,
            whole_tree = extra.everything,
            "the passive cannot be streamed to: resync"
        );
        // A passive with no history that has not diverged started from an empty directory.
        let passive_empty = welcome.history.is_empty() && !welcome.diverged;
        match set.start_resync(
            queue.clone(),
            crate::engine::Scope::ChangedSince { common, extra },
            passive_empty,
            control_tx.clone(),
            router.clone(),
        ) {
            Ok(first) => Plan::Resync { first_seq: first },
            Err(e) => return format!("resync: {e}"),
        }
    };
    set.begin_active_session(ActiveSession {
        control: control_tx.clone(),
        router: router.clone(),
    });
    if let Err(e) = send(&mut wr, kind::PLAN, &plan.encode()).await {
        return format!("plan: {e}");
    }

    // Acks and reports come back on the read half.
    let q = queue.clone();
    let routes = router.clone();
    let confirm = control_tx.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            let kind = match tokio::time::timeout(
                IDLE_TIMEOUT,
                proto::read_frame(&mut rd, &mut buf),
            )
            .await
            {
                Ok(Ok(k)) => k,
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return "the passive went silent".into(),
            };
            let report = match kind {
                kind::ACK => match Ack::decode(&buf) {
                    Ok(a) => {
                        q.ack(a.applied, a.durable, a.persisted);
                        continue;
                    }
                    Err(e) => return format!("ack: {e}"),
                },
                kind::KEEPALIVE if buf.is_empty() => continue,
                kind::KEEPALIVE => match Lease::decode(&buf) {
                    // Taken first, confirmed after: the passive counts its lease from
                    // when it sent the renewal, which is before we took it.
                    Ok(lease) => {
                        if q.renewed() {
                            // A full control queue skips one confirmation; the next
                            // renewal's will do (the passive's lease is only shorter).
                            let _ = confirm.try_send((kind::LEASE, lease.encode()));
                        }
                        continue;
                    }
                    Err(e) => return format!("lease: {e}"),
                },
                kind::NEED => proto::Need::decode(&buf).map(Report::Need),
                kind::HASHES => proto::Hashes::decode(&buf).map(Report::Hashes),
                kind::VERIFY_DIFFS => proto::VerifyDiffs::decode(&buf).map(Report::Diffs),
                kind::VERIFY_COMPARE => proto::VerifyCompare::decode(&buf).map(Report::Compare),
                kind::VERIFY_RANGE => proto::VerifyRangeResult::decode(&buf).map(Report::Range),
                other => return format!("unexpected frame {other}"),
            };
            match report {
                Ok(r) => {
                    if let Some(tx) = routes.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                        let _ = tx.send(r);
                    }
                }
                Err(e) => return format!("report: {e}"),
            }
        }
    });
    let wake = queue.wake_sender.clone();
    let mut frame = Vec::with_capacity(BATCH_MAX_BYTES as usize + (1 << 20));
    let mut urgent = true;
    let mut hold_until: Option<tokio::time::Instant> = None;
    // In sync mode, writes to a file fsynced after every write skip the coalescing delay.
    let mut fsynced_files = (set.cfg.mode == crate::queue::Mode::Sync).then(FsyncPattern::default);
    let why = loop {
        if queue.session_abandoned() {
            break "abandoned: the passive fell too far behind, or a resync failed".to_string();
        }
        let mut control_err = None;
        while let Ok((k, body)) = control_rx.try_recv() {
            urgent = true;
            if let Err(e) = send(&mut wr, k, &body).await {
                control_err = Some(e);
                break;
            }
        }
        if let Some(e) = control_err {
            break format!("write: {e}");
        }
        let next = match queue.next_batch(BATCH_MAX_BYTES) {
            Ok(n) => n,
            Err(e) => break format!("reading the spill: {e}"),
        };
        let result = match next {
            Next::Records(records) => {
                let now = Instant::now();
                for r in &records {
                    urgent |= r.op.is_barrier() || r.op.is_sync();
                    match (&r.op, fsynced_files.as_mut()) {
                        (Op::Fsync { file, .. }, Some(p)) => p.on_fsync(file, now),
                        (Op::Write { file, .. }, Some(p)) => urgent |= p.on_write(file, now),
                        _ => {}
                    }
                }
                send_records(&mut wr, &records, &mut frame).await
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
                            c = control_rx.recv() => if let Some((k, body)) = c {
                                if let Err(e) = send(&mut wr, k, &body).await {
                                    break format!("write: {e}");
                                }
                                urgent = true;
                            },
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
                    c = control_rx.recv() => match c {
                        Some((k, body)) => {
                            urgent = true;
                            send(&mut wr, k, &body).await
                        }
                        None => Ok(()),
                    },
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
    *router.lock().unwrap_or_else(|p| p.into_inner()) = None;
    why
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, body: &[u8]) -> Result<(), ProtoError> {
    proto::write_frame(w, kind, body).await
}

/// Sends records as one `RECORDS` frame without copying write data into it: the framing
/// and every record's other bytes are assembled in `scratch`, and each write's data goes to
/// the writer straight from the queue's buffer (a large write bypasses `BufWriter`'s copy).
async fn send_records<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    records: &[Arc<understudy_oplog::Record>],
    scratch: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    // Pieces: (range of scratch, data that follows it).
    let mut pieces: Vec<(std::ops::Range<usize>, Option<&[u8]>)> =
        Vec::with_capacity(records.len());
    scratch.clear();
    let mut body_len = 0usize;
    let mut tail = Vec::new();
    for r in records {
        let start = scratch.len();
        scratch.extend_from_slice(&[0; 4]);
        tail.clear();
        let data = encode_record_split(r, scratch, &mut tail);
        let record_len = scratch.len() - start - 4 + data.map_or(0, <[u8]>::len) + tail.len();
        scratch[start..start + 4].copy_from_slice(&(record_len as u32).to_le_bytes());
        pieces.push((start..scratch.len(), data));
        let tail_start = scratch.len();
        scratch.extend_from_slice(&tail);
        pieces.push((tail_start..scratch.len(), None));
        body_len += 4 + record_len;
    }
    let len = u32::try_from(body_len + 1).map_err(|_| ProtoError::TooLarge(body_len))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&[kind::RECORDS]).await?;
    for (range, data) in pieces {
        w.write_all(&scratch[range]).await?;
        if let Some(d) = data {
            w.write_all(d).await?;
        }
    }
    Ok(())
}

/// The passive's side: the peer's sender dialled us. Read its hello and hand the stream to
/// the set it names.
pub async fn serve_passive(sets: &[Arc<ReplicaSet>], stream: understudy_tls::Channel) {
    let (mut rd, mut wr) = stream.into_split();
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
        let _ = send(&mut wr, kind::WELCOME, &Welcome::refused().encode()).await;
        let _ = wr.flush().await;
        return;
    };
    let mut role = set.role.lock().await;
    if !matches!(*role, Role::Passive { .. }) {
        warn!(set = %hello.set, "the peer wants to replicate to us, but we are not passive");
        let _ = send(&mut wr, kind::WELCOME, &Welcome::refused().encode()).await;
        let _ = wr.flush().await;
        return;
    }
    // A newer connection replaces an older one.
    let Some(mut applier) = set.stop_passive_session(&mut role).await else {
        error!(set = %hello.set, "no applier");
        return;
    };
    let state = set.persisted().clone();
    let unclean = set.passive.unclean.load(Ordering::SeqCst);
    let own_last_generation = state.last_generation_is(|id| set.is_mine(id));
    let last_seq = if holds_own_captures(
        &state,
        unclean,
        own_last_generation,
        set.passive.unclean_same_boot.load(Ordering::SeqCst),
    ) {
        u64::MAX
    } else {
        applier.last_applied().min(if state.resync.is_some() {
            state.last_seq
        } else {
            u64::MAX
        })
    };
    let copy = PassiveCopy {
        state: &state,
        last_seq,
        unclean,
        own_last_generation,
        origin_empty: state.history.is_empty() && set.data_dir_is_empty(),
    };
    let stand = standing(
        &hello.history,
        hello.next_seq.saturating_sub(1),
        hello.origin_empty,
        &copy,
    );
    let resync_failed = state.resync.as_ref().is_some_and(|r| r.failed);
    let changed: Option<Vec<Vec<u8>>> = if !stand.diverged {
        Some(Vec::new())
    } else if stand.changes_unknown || resync_failed {
        None
    } else {
        set.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(stand.common)
            .into_scope()
            .filter(|p| {
                p.len() <= proto::CHANGED_MAX
                    && p.iter().map(|x| x.len() + 4).sum::<usize>() <= proto::CHANGED_MAX_BYTES
            })
    };
    let welcome = Welcome {
        accepted: true,
        history: state.history.clone(),
        applied_seq: copy.last_seq,
        common: stand.common,
        exact: stand.exact,
        diverged: stand.diverged,
        changed: if resync_failed { None } else { changed.clone() },
    };
    let sent = match send(&mut wr, kind::WELCOME, &welcome.encode()).await {
        Ok(()) => wr.flush().await.map_err(ProtoError::from),
        Err(e) => Err(e),
    };
    let plan = match sent {
        Ok(()) => {
            match tokio::time::timeout(IDLE_TIMEOUT, proto::read_frame(&mut rd, &mut buf)).await {
                Ok(Ok(kind::PLAN)) => Plan::decode(&buf).map_err(|e| e.to_string()),
                Ok(Ok(other)) => Err(format!("unexpected frame {other}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no plan".into()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let plan = match plan {
        Ok(Plan::Stream { .. }) if !stand.exact => {
            Err("the active wants to stream to a copy that is not exact".into())
        }
        other => other,
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            warn!(set = %hello.set, error = %e, "replication handshake failed");
            *role = Role::Passive {
                applier: Some(applier),
                session: None,
            };
            return;
        }
    };
    // Until this session's plan is applied, the copy may lack writes the active
    // acknowledged without it.
    set.passive.lease.head.store(
        match plan {
            Plan::Stream { head } => head,
            Plan::Resync { first_seq } => first_seq,
        },
        Ordering::SeqCst,
    );
    let resync = match plan {
        Plan::Stream { .. } => {
            // From here on this copy follows the active's history; its own past changes are
            // all in the active's lineage.
            set.adopt_lineage(&hello.history, hello.origin_empty);
            None
        }
        Plan::Resync { first_seq } => {
            let quarantine = if stand.diverged {
                let generation = state.history.last().map_or(0, |g| g.id);
                match set.quarantine_dir(first_seq, state.resync.as_ref()) {
                    Ok(dir) => match Quarantine::open(&dir, generation) {
                        Ok(q) => Some(q),
                        Err(e) => {
                            error!(error = %e, "cannot open the quarantine; refusing the resync");
                            *role = Role::Passive {
                                applier: Some(applier),
                                session: None,
                            };
                            return;
                        }
                    },
                    Err(e) => {
                        error!(error = %e, "cannot create the quarantine; refusing the resync");
                        *role = Role::Passive {
                            applier: Some(applier),
                            session: None,
                        };
                        return;
                    }
                }
            } else {
                None
            };
            set.begin_resync(first_seq, quarantine.as_ref().map(|q| q.dir.clone()));
            applier.set_last_applied(first_seq - 1);
            let rule = if !stand.diverged {
                PreserveRule::nothing()
            } else {
                match &changed {
                    Some(paths) if !stand.changes_unknown => PreserveRule {
                        all: false,
                        paths: paths.iter().cloned().collect(),
                    },
                    _ => PreserveRule {
                        all: true,
                        paths: Default::default(),
                    },
                }
            };
            info!(
                set = %hello.set,
                first_seq,
                common = stand.common,
                diverged = stand.diverged,
                quarantine = ?quarantine.as_ref().map(|q| q.dir.display().to_string()),
                "resyncing this copy from the active"
            );
            Some(ResyncCtx {
                first_seq,
                active_history: hello.history.clone(),
                origin_empty: hello.origin_empty,
                rule,
                quarantine,
            })
        }
    };
    let applied = applier.last_applied();
    let persisted = set.persisted().last_seq;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(APPLY_QUEUE_FRAMES);
    // Frame buffers go back from the apply thread to the reader, so each is allocated (and
    // its pages faulted in and zeroed) once per session instead of once per frame.
    let (pool_tx, pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ack_tx, ack_rx) = watch::channel(Ack {
        applied,
        durable: applied,
        persisted,
    });
    let (report_tx, report_rx) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    let (hash_tx, hash_rx) = std::sync::mpsc::channel::<proto::HashRequest>();
    let handles: observer::Handles = Default::default();
    match set.replica_root() {
        Ok(root) => observer::spawn_hashers(hash_rx, handles.clone(), root, report_tx.clone()),
        Err(e) => warn!(error = %e, "cannot open the replica for hashing"),
    }
    let mut obs = PassiveObserver::new(report_tx, set.cfg.data_dir.clone(), handles);
    let apply_set = set.clone();
    let apply = std::thread::Builder::new()
        .name(format!("apply-{}", hello.set))
        .spawn(move || {
            if let Some(ctx) = &resync {
                obs.rule = ctx.rule.clone();
            }
            let mut resync = resync;
            if let Some(ctx) = resync.as_mut() {
                obs.quarantine = ctx.quarantine.take();
            }
            apply_loop(apply_set, applier, rx, ack_tx, pool_tx, obs, resync)
        });
    let apply = match apply {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot start the apply thread");
            return;
        }
    };
    set.passive.session_up.store(true, Ordering::SeqCst);
    let net = tokio::spawn(passive_net(
        set.clone(),
        rd,
        wr,
        tx,
        ack_rx,
        pool_rx,
        report_rx,
        hash_tx,
    ));
    *role = Role::Passive {
        applier: None,
        session: Some(PassiveSession { net, apply }),
    };
}

#[allow(clippy::too_many_arguments)]
async fn passive_net<R, W>(
    set: Arc<ReplicaSet>,
    mut rd: R,
    wr: W,
    tx: mpsc::Sender<Vec<u8>>,
    mut acks: watch::Receiver<Ack>,
    pool: std::sync::mpsc::Receiver<Vec<u8>>,
    mut reports: mpsc::UnboundedReceiver<(u8, Vec<u8>)>,
    hashes: std::sync::mpsc::Sender<proto::HashRequest>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut wr = BufWriter::new(proto::StallGuard::new(wr, IDLE_TIMEOUT));
    let lease = set.cfg.mode == crate::queue::Mode::Sync;
    let lease_set = set.clone();
    crate::lock(&set.passive.lease.sent).clear();
    let mut renew = tokio::time::interval(if lease {
        set.cfg.lease_renew_interval
    } else {
        KEEPALIVE
    });
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewal_id = 0u64;
    let writer = async move {
        loop {
            tokio::select! {
                changed = acks.changed() => {
                    if changed.is_err() {
                        return "the apply thread stopped".to_string();
                    }
                    let ack = *acks.borrow_and_update();
                    if let Err(e) = send(&mut wr, kind::ACK, &ack.encode()).await {
                        return format!("ack: {e}");
                    }
                }
                report = reports.recv() => {
                    let Some((k, body)) = report else {
                        return "the apply thread stopped".to_string();
                    };
                    if let Err(e) = send(&mut wr, k, &body).await {
                        return format!("report: {e}");
                    }
                }
                _ = renew.tick() => {
                    // In sync mode each keepalive renews this copy's lease (invariant 29):
                    // noted before it leaves, so the lease counts from no later than the
                    // moment the active takes it.
                    let body = if lease {
                        renewal_id += 1;
                        let mut sent = crate::lock(&lease_set.passive.lease.sent);
                        if sent.len() >= RENEWALS_MAX {
                            sent.pop_front();
                        }
                        sent.push_back((renewal_id, Instant::now()));
                        Lease { id: renewal_id }.encode()
                    } else {
                        Vec::new()
                    };
                    if let Err(e) = send(&mut wr, kind::KEEPALIVE, &body).await {
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
                Ok(Ok(kind::HASH_REQUEST)) => match proto::HashRequest::decode(&buf) {
                    Ok(r) => {
                        if hashes.send(r).is_err() {
                            return "the hashing threads stopped".to_string();
                        }
                    }
                    Err(e) => return format!("hash request: {e}"),
                },
                Ok(Ok(kind::KEEPALIVE)) => {}
                Ok(Ok(kind::LEASE)) => match Lease::decode(&buf) {
                    Ok(confirmed) => confirm_renewal(&s, confirmed.id),
                    Err(e) => return format!("lease: {e}"),
                },
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

/// The active took renewal `id`: the lease now counts from when it was sent. A confirmation
/// of a renewal this session did not send (or no longer remembers) changes nothing.
fn confirm_renewal(set: &ReplicaSet, id: u64) {
    let sent_at = {
        let mut sent = crate::lock(&set.passive.lease.sent);
        let at = sent.iter().find(|(i, _)| *i == id).map(|(_, at)| *at);
        if at.is_some() {
            sent.retain(|(i, _)| *i > id);
        }
        at
    };
    if let Some(at) = sent_at {
        let mut confirmed = crate::lock(&set.passive.lease.confirmed_sent_at);
        if confirmed.is_none_or(|c| c < at) {
            *confirmed = Some(at);
        }
    }
}

/// Applies received frames in order; syncs when a barrier was applied and nothing more is
/// waiting (group commit), or periodically; reports progress as acks, and what a resync or
/// verify finds through the observer.
fn apply_loop(
    set: Arc<ReplicaSet>,
    mut applier: Applier,
    mut rx: mpsc::Receiver<Vec<u8>>,
    acks: watch::Sender<Ack>,
    pool: std::sync::mpsc::Sender<Vec<u8>>,
    mut obs: PassiveObserver,
    mut resync: Option<ResyncCtx>,
) -> Applier {
    let mut broken = false;
    let sync_mode = set.cfg.mode == crate::queue::Mode::Sync;
    let mut barrier = false;
    let mut unsynced_bytes = 0u64;
    let mut last_sync = Instant::now();
    let mut durable = applier.last_applied();
    // The SyncEnd that completes this session's resync, once applied.
    let mut resync_end: Option<u64> = None;
    let mut persist_due = false;
    let mut last_persist = Instant::now();
    // Progress acks held back in a row because a commit came next.
    let mut acks_held = 0u32;
    // In sync mode, a write whose fsync comes next is flushed on arrival (below).
    let mut fsynced_files = sync_mode.then(FsyncPattern::default);
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
    let ack = |applier: &Applier, durable: u64| Ack {
        applied: applier.last_applied(),
        durable,
        persisted: set.persisted().last_seq,
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
                    if !broken {
                        if let (Some(end), Some(ctx)) = (resync_end, resync.as_ref()) {
                            if durable >= end {
                                set.finish_resync(ctx, end, obs.quarantine.as_ref());
                                resync = None;
                                resync_end = None;
                            }
                        } else if resync.is_none() {
                            persist_due = true;
                        }
                    }
                }
                if broken {
                    warn!(
                        set = set.name(),
                        "ending the session so that this copy is resynced"
                    );
                    break;
                }
                acks_held = 0;
                acks.send_replace(ack(&applier, durable));
                // After the ack, never before it (an fsync on the active waits for the ack),
                // and at most every PERSIST_INTERVAL: a small file write and rename.
                if persist_due && last_persist.elapsed() >= PERSIST_INTERVAL {
                    set.persist_position(durable);
                    persist_due = false;
                    last_persist = Instant::now();
                }
                // Wait for more, but wake up to honour the sync interval.
                match wait_frame(
                    &rt,
                    &mut rx,
                    if unsynced_bytes > 0 {
                        SYNC_INTERVAL
                    } else if persist_due {
                        PERSIST_INTERVAL
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
        unsynced_bytes += frame.len() as u64;
        let now = Instant::now();
        // A write the active's application is about to fsync arrived in this frame.
        let mut fsync_expected = false;
        let mut body = frame.as_slice();
        while body.len() >= 4 {
            let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            let Some(bytes) = body.get(4..4 + len) else {
                set.mark_copy_out_of_sync("a truncated record arrived");
                broken = true;
                break;
            };
            body = &body[4 + len..];
            // Writes, most of the bytes, are applied straight from the frame.
            match decode_write(bytes) {
                Ok(Some(w)) => {
                    let seq = w.seq;
                    fsync_expected |= fsynced_files
                        .as_mut()
                        .is_some_and(|p| p.on_write(&w.file, now));
                    if let Err(e) = applier.apply_write(w) {
                        error!(set = set.name(), seq, error = %e, "applying failed; the copy is out of sync");
                        set.mark_copy_out_of_sync("an op could not be applied");
                        if resync.is_some() {
                            set.resync_failed();
                        }
                        broken = true;
                        break;
                    }
                    set.passive.applied.store(seq, Ordering::Relaxed);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    error!(set = set.name(), error = %e, "refusing an undecodable record");
                    set.mark_copy_out_of_sync("an undecodable record arrived");
                    broken = true;
                    break;
                }
            }
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
                    || matches!(&record.op, Op::Fsync { file: FileRef::Path(p), .. } if p.is_empty())
                    || matches!(&record.op, Op::SyncEnd { .. }));
            if let (Op::Fsync { file, .. }, Some(p)) = (&record.op, fsynced_files.as_mut()) {
                p.on_fsync(file, now);
            }
            let mut listing_done = false;
            let mut verify_listing = false;
            match &record.op {
                Op::SyncBegin { id, verify, .. } => {
                    obs.sync_id = *id;
                    set.passive_sync_started(*id, *verify);
                }
                Op::SyncTree { last: true, .. } => {
                    listing_done = true;
                    verify_listing = set.passive_sync_is_verify();
                }
                Op::SyncEnd { id } if resync.as_ref().is_some_and(|c| c.first_seq == *id) => {
                    resync_end = Some(record.seq);
                }
                // A verify or repair within the stream: it ends here.
                Op::SyncEnd { .. } => set.passive_sync_ended(),
                _ => {}
            }
            if let Err(e) = applier.apply_observed(&record, &mut obs) {
                error!(set = set.name(), seq = record.seq, error = %e, "applying failed; the copy is out of sync");
                set.mark_copy_out_of_sync("an op could not be applied");
                if resync.is_some() {
                    set.resync_failed();
                }
                broken = true;
                break;
            }
            if record.op.is_sync() {
                obs.flush(listing_done);
                if listing_done && verify_listing && !obs.has_compare() {
                    obs.end_compare();
                }
            }
            set.passive.applied.store(record.seq, Ordering::Relaxed);
        }
        // Back to the reader for the next frame; if the reader is gone, it is just freed.
        let _ = pool.send(frame);
        // Tell the active how far we got even while frames keep coming: its queue trims
        // (and a resync paces itself) on these acks. Except when a barrier waits and nothing
        // more does: the commit comes next and its ack says all of this too, while this one
        // would wake both daemons' network tasks (and the active's fsync waiter, for
        // nothing) during the flush an fsync is waiting for. At most a few in a row, so a
        // stream that keeps the queue just short of empty still gets its acks.
        let commit_next = barrier && !broken && rx.is_empty();
        // The write of a write-then-fsync is flushed now, in parallel with the active's own
        // flush, rather than once its barrier has crossed the network; the barrier's commit
        // then finds nothing left to flush (`Applier::sync` with nothing dirty).
        // Not during a resync, whose commits may be a whole filesystem's `syncfs`.
        if fsync_expected && !barrier && !broken && resync.is_none() && rx.is_empty() {
            commit(&set, &mut applier, &mut durable, &mut broken);
            unsynced_bytes = 0;
            last_sync = Instant::now();
            // Like any commit outside a resync: the position on disk follows, in case the
            // expected barrier never comes (nothing else would persist this one).
            persist_due |= !broken;
        }
        if commit_next && acks_held < ACKS_HELD_MAX {
            acks_held += 1;
        } else {
            acks_held = 0;
            acks.send_replace(ack(&applier, durable));
        }
        if broken {
            // End the session: the active dials again, and the new session resyncs this
            // copy (from the change log) instead of streaming into a copy that missed ops.
            warn!(
                set = set.name(),
                "ending the session so that this copy is resynced"
            );
            break;
        }
    }
    if !broken {
        commit(&set, &mut applier, &mut durable, &mut broken);
        if let (Some(end), Some(ctx)) = (resync_end, resync.as_ref()) {
            if !broken && durable >= end {
                set.finish_resync(ctx, end, obs.quarantine.as_ref());
            }
        }
    }
    applier
}

#[cfg(test)]
thread_local! {
    /// The durable seq of every commit made on this thread: how the tests count group
    /// commits (each apply loop runs on a thread of its own).
    static COMMITS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn commit(set: &ReplicaSet, applier: &mut Applier, durable: &mut u64, broken: &mut bool) {
    match applier.sync() {
        Ok(()) => {
            *durable = applier.last_applied();
            set.passive.durable.store(*durable, Ordering::Relaxed);
            #[cfg(test)]
            COMMITS.with(|c| c.borrow_mut().push(*durable));
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

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_oplog::{NodeKind, Record};

    use crate::queue::frame_record;

    /// A passive `sync`-mode set in `dir`, and an applier for its copy.
    fn passive_set(dir: &std::path::Path) -> (Arc<ReplicaSet>, Applier) {
        let cfg = crate::SetConfig {
            name: "data".into(),
            path: dir.join("mnt"),
            mode: crate::queue::Mode::Sync,
            queue_max_bytes: 1 << 20,
            mem_max_bytes: 1 << 20,
            data_dir: dir.join("data"),
            state_dir: dir.join("state"),
            stall_timeout: Duration::from_secs(1),
            capture_threads: 1,
            node_index: 1,
            sync_rate_max: 0,
            lease_renew_interval: Duration::from_millis(100),
            serving: Arc::default(),
        };
        let set = Arc::new(ReplicaSet::open(cfg).expect("set"));
        let applier =
            Applier::open(&dir.join("data"), &dir.join("state/orphans")).expect("applier");
        (set, applier)
    }

    /// Records 1..: the file `f` made, then `barriers` times a write to it and its fsync.
    fn writes_each_fsynced(barriers: u64) -> Vec<Record> {
        let mut records = vec![Record {
            seq: 1,
            op: Op::Mknod {
                path: b"f".to_vec(),
                kind: NodeKind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
            },
            mtimes: Vec::new(),
        }];
        for n in 0..barriers {
            let seq = records.len() as u64 + 1;
            records.push(Record {
                seq,
                op: Op::Write {
                    file: FileRef::Path(b"f".to_vec()),
                    offset: n * 4096,
                    data: vec![n as u8; 4096],
                },
                mtimes: Vec::new(),
            });
            records.push(Record {
                seq: seq + 1,
                op: Op::Fsync {
                    file: FileRef::Path(b"f".to_vec()),
                    datasync: true,
                },
                mtimes: Vec::new(),
            });
        }
        records
    }

    fn frame(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            frame_record(r, &mut out);
        }
        out
    }

    /// Starts the real apply loop of a passive set in `dir` on its own thread, taking frames
    /// from `rx`; the thread returns the durable seq of every commit it made.
    fn start_apply_loop(
        dir: &std::path::Path,
        rx: mpsc::Receiver<Vec<u8>>,
    ) -> (
        watch::Receiver<Ack>,
        std::thread::JoinHandle<Vec<u64>>,
        Arc<ReplicaSet>,
    ) {
        let (set, applier) = passive_set(dir);
        let watched = Arc::clone(&set);
        let (ack_tx, ack_rx) = watch::channel(Ack {
            applied: 0,
            durable: 0,
            persisted: 0,
        });
        let data = dir.join("data");
        let apply = std::thread::spawn(move || {
            // Frames are not given back here, and reports go nowhere.
            let (pool_tx, _pool_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let (report_tx, _report_rx) = mpsc::unbounded_channel();
            let obs = PassiveObserver::new(report_tx, data, Default::default());
            apply_loop(set, applier, rx, ack_tx, pool_tx, obs, None);
            COMMITS.with(|c| c.take())
        });
        (ack_rx, apply, watched)
    }

    /// Runs the real apply loop on `frames`, all waiting before it starts (as when they
    /// arrive together), until the passive acknowledges `last_seq` durable. Returns how long
    /// that took and the durable seq of every commit, the one at the session's end included.
    fn apply_together(frames: Vec<Vec<u8>>, last_seq: u64) -> (Duration, Vec<u64>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel::<Vec<u8>>(APPLY_QUEUE_FRAMES);
        for f in frames {
            tx.try_send(f).expect("room for every frame");
        }
        let started = Instant::now();
        let (ack_rx, apply, _) = start_apply_loop(dir.path(), rx);
        let deadline = started + Duration::from_secs(10);
        let acked_in = loop {
            let ack = *ack_rx.borrow();
            assert!(ack.applied <= last_seq, "{ack:?}");
            if ack.durable == last_seq {
                break started.elapsed();
            }
            assert!(
                Instant::now() < deadline && !apply.is_finished(),
                "never acknowledged {last_seq} durable: {ack:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        // The session ends: the loop commits once more and stops.
        drop(tx);
        let commits = apply.join().expect("the apply thread");
        (acked_in, commits)
    }

    /// Applies `frames` (holding `barriers` fsyncs, `last_seq` the last record) as they wait
    /// together, and checks they were acknowledged promptly (the barriers' commit, not the
    /// idle one after SYNC_INTERVAL) by one commit covering them all.
    fn assert_one_prompt_commit(frames: Vec<Vec<u8>>, last_seq: u64, barriers: u64) {
        let (acked_in, commits) = apply_together(frames, last_seq);
        assert!(
            acked_in < SYNC_INTERVAL / 2,
            "acknowledged after {acked_in:?}"
        );
        assert_eq!(
            commits,
            [last_seq, last_seq],
            "{barriers} fsyncs waiting together: one commit covering all of them (then the \
             session's last)"
        );
    }

    #[test]
    fn barriers_arriving_in_one_frame_share_one_sync() {
        let barriers = 8;
        let records = writes_each_fsynced(barriers);
        let last_seq = records.len() as u64;
        assert_one_prompt_commit(vec![frame(&records)], last_seq, barriers);
    }

    #[test]
    fn barriers_in_frames_waiting_together_share_one_sync() {
        let barriers = APPLY_QUEUE_FRAMES as u64 - 1;
        let records = writes_each_fsynced(barriers);
        let last_seq = records.len() as u64;
        // The file's creation, then one write and its fsync per frame.
        let mut frames = vec![frame(&records[..1])];
        frames.extend(records[1..].chunks(2).map(frame));
        assert_one_prompt_commit(frames, last_seq, barriers);
    }

    /// Write then fsync, one op per frame, each frame arriving after the last was applied
    /// (the pace of a database's commits): once the file showed the pattern, the write is
    /// flushed on arrival, and its barrier's commit has nothing left to flush.
    #[test]
    fn a_write_of_a_file_fsynced_after_every_write_is_flushed_on_arrival() {
        let records = writes_each_fsynced(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel::<Vec<u8>>(APPLY_QUEUE_FRAMES);
        let (ack_rx, apply, _) = start_apply_loop(dir.path(), rx);
        let deadline = Instant::now() + Duration::from_secs(10);
        for r in &records {
            tx.try_send(frame(std::slice::from_ref(r))).expect("room");
            // A write is waited for applied, a barrier for durable.
            while {
                let ack = *ack_rx.borrow();
                if r.op.is_barrier() {
                    ack.durable < r.seq
                } else {
                    ack.applied < r.seq
                }
            } {
                assert!(
                    Instant::now() < deadline,
                    "record {} never acknowledged",
                    r.seq
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(tx);
        let commits = apply.join().expect("the apply thread");
        // Records: 1 the create, then (write, fsync) at (2, 3), (4, 5), (6, 7), (8, 9). The
        // pattern shows from the second fsync on, so writes 6 and 8 are flushed on arrival.
        assert_eq!(
            commits,
            [3, 5, 6, 7, 8, 9, 9],
            "the durable seq of every commit"
        );
    }

    #[test]
    fn a_write_flushed_on_arrival_is_persisted_even_if_no_fsync_follows() {
        // Write-then-fsync pairs keep the file's pattern fresh until the position on disk
        // has caught up with the last fsync (nothing left to persist); then one more write
        // comes, is flushed on arrival, and the application never fsyncs it.
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel::<Vec<u8>>(APPLY_QUEUE_FRAMES);
        let (ack_rx, apply, set) = start_apply_loop(dir.path(), rx);
        let pairs = writes_each_fsynced(400);
        tx.try_send(frame(&pairs[..1])).expect("room");
        let mut sent = 1;
        // Bounded: 200 pairs, 20 ms apart; persisting happens every 500 ms.
        for pair in pairs[1..].chunks(2).take(200) {
            tx.try_send(frame(pair)).expect("room");
            sent += 2;
            std::thread::sleep(Duration::from_millis(20));
            if sent >= 5 && set.persisted().last_seq == sent {
                break;
            }
        }
        assert_eq!(
            set.persisted().last_seq,
            sent,
            "the position on disk never caught up with the fsyncs"
        );
        let mut unfsynced = pairs[1].clone();
        unfsynced.seq = sent + 1;
        tx.try_send(frame(std::slice::from_ref(&unfsynced)))
            .expect("room");
        // The next persist is due 500 ms after the last one at most; a commit on the
        // interval (not on arrival) would come only after SYNC_INTERVAL, 2 s.
        let deadline = Instant::now() + Duration::from_millis(1500);
        let durable = || ack_rx.borrow().durable;
        while (durable() < unfsynced.seq || set.persisted().last_seq < unfsynced.seq)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (flushed, position) = (durable(), set.persisted().last_seq);
        drop(tx);
        apply.join().expect("the apply thread");
        assert_eq!(
            flushed, unfsynced.seq,
            "the last write was not flushed on arrival"
        );
        assert_eq!(
            position, unfsynced.seq,
            "the write flushed on arrival was never persisted"
        );
    }

    #[test]
    fn failed_sessions_back_off_up_to_the_cap() {
        assert_eq!(failed_session_pause(0), Duration::ZERO);
        assert_eq!(failed_session_pause(2), Duration::ZERO);
        assert_eq!(failed_session_pause(3), Duration::from_millis(250));
        assert_eq!(failed_session_pause(4), Duration::from_millis(500));
        assert_eq!(failed_session_pause(6), FAILED_SESSION_PAUSE_MAX);
        assert_eq!(failed_session_pause(u32::MAX), FAILED_SESSION_PAUSE_MAX);
    }
}
