//! Network tasks around the core: channel links (heartbeats and RTT), the management
//! probe server and client, and the public-network check.
//!
//! Each channel link is its own mutual-TLS connection carrying only heartbeats and pings,
//! so nothing else (a replication backlog) can ever queue in front of a heartbeat.
//! Statuses go out through a `watch` channel: a slow link coalesces them to the latest
//! one instead of queueing without bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tracing::{debug, info, warn};
use understudy_core::{NodeStatus, ProbeId, Via};
use understudy_tls::NodeTls;
use understudy_wire::{read_frame, write_frame, Frame};

use crate::runtime::ToCore;

/// What `understudy status` shows about one channel link.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    pub up: bool,
    pub rtt_ms: Option<f64>,
}

/// Everything the network tasks share.
pub struct NetCtx {
    pub tls: NodeTls,
    pub origin: Instant,
    pub heartbeat_interval: Duration,
    /// A link that hears nothing for this long is torn down and redialled.
    pub link_idle_timeout: Duration,
    pub probe_timeout: Duration,
    pub to_core: mpsc::Sender<ToCore>,
    pub status_rx: watch::Receiver<Option<NodeStatus>>,
    pub links: Vec<Mutex<LinkStats>>,
}

impl NetCtx {
    fn micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn set_link(&self, link: usize, f: impl FnOnce(&mut LinkStats)) {
        if let Some(stats) = self.links.get(link) {
            if let Ok(mut guard) = stats.lock() {
                f(&mut guard);
            }
        }
    }
}

/// Runs one established link until it fails or goes idle.
async fn link_session<S>(ctx: Arc<NetCtx>, link: usize, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut status_rx = ctx.status_rx.clone();
    let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(8);
    ctx.set_link(link, |s| s.up = true);

    let writer_ctx = ctx.clone();
    let writer = async move {
        let mut scratch = Vec::with_capacity(64);
        let mut ping = tokio::time::interval(writer_ctx.heartbeat_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A new link learns our status at once, not at the next heartbeat.
        let first = *status_rx.borrow_and_update();
        if let Some(status) = first {
            write_frame(&mut wr, &Frame::Status(status), &mut scratch).await?;
        }
        loop {
            tokio::select! {
                changed = status_rx.changed() => {
                    if changed.is_err() {
                        return Ok::<(), understudy_wire::WireError>(());
                    }
                    let latest = *status_rx.borrow_and_update();
                    if let Some(status) = latest {
                        write_frame(&mut wr, &Frame::Status(status), &mut scratch).await?;
                    }
                }
                _ = ping.tick() => {
                    let nonce = writer_ctx.micros();
                    write_frame(&mut wr, &Frame::Ping { nonce }, &mut scratch).await?;
                }
                Some(nonce) = pong_rx.recv() => {
                    write_frame(&mut wr, &Frame::Pong { nonce }, &mut scratch).await?;
                }
            }
        }
    };

    let reader_ctx = ctx.clone();
    let reader = async move {
        let mut buf = Vec::with_capacity(256);
        loop {
            let frame = match tokio::time::timeout(
                reader_ctx.link_idle_timeout,
                read_frame(&mut rd, &mut buf),
            )
            .await
            {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => return format!("read failed: {e}"),
                Err(_) => return format!("silent for {:?}", reader_ctx.link_idle_timeout),
            };
            match frame {
                Frame::Status(status) => {
                    if reader_ctx
                        .to_core
                        .send(ToCore::PeerStatus {
                            via: Via::Channel,
                            status,
                        })
                        .await
                        .is_err()
                    {
                        return "the core stopped".into();
                    }
                }
                Frame::Ping { nonce } => {
                    // Dropping a pong under pressure only loses one RTT sample.
                    let _ = pong_tx.try_send(nonce);
                }
                Frame::Pong { nonce } => {
                    let rtt_ms = reader_ctx.micros().saturating_sub(nonce) as f64 / 1000.0;
                    reader_ctx.set_link(link, |s| s.rtt_ms = Some(rtt_ms));
                }
                other => return format!("unexpected frame on a channel link: {other:?}"),
            }
        }
    };

    let why = tokio::select! {
        r = writer => match r { Ok(()) => "shutting down".to_string(), Err(e) => format!("write failed: {e}") },
        why = reader => why,
    };
    ctx.set_link(link, |s| {
        s.up = false;
        s.rtt_ms = None;
    });
    info!(link, reason = %why, "channel link down");
}

/// The dialling side (the first node in the config) of one channel link: connect,
/// run the session, back off, repeat.
pub async fn dial_link(ctx: Arc<NetCtx>, link: usize, peer_addr: SocketAddr) {
    let min_backoff = Duration::from_millis(20);
    let max_backoff = Duration::from_millis(500).max(ctx.heartbeat_interval);
    let mut backoff = min_backoff;
    loop {
        let started = Instant::now();
        match understudy_tls::connect(&ctx.tls, peer_addr, ctx.link_idle_timeout).await {
            Ok(stream) => {
                info!(link, peer = %peer_addr, "channel link up");
                link_session(ctx.clone(), link, stream).await;
            }
            Err(e) => debug!(link, peer = %peer_addr, error = %e, "channel connect failed"),
        }
        // A session that lived a while earns a quick redial; repeated failures back off,
        // capped low so a healed link is found again well within the failover timeout.
        backoff = if started.elapsed() > Duration::from_secs(1) {
            min_backoff
        } else {
            (backoff * 2).min(max_backoff)
        };
        let jitter = Duration::from_millis(rand::random::<u64>() % 20);
        tokio::time::sleep(backoff + jitter).await;
    }
}

/// The accepting side of one channel link. A newer connection replaces an older one.
pub async fn accept_link(ctx: Arc<NetCtx>, link: usize, listener: TcpListener) {
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(link, error = %e, "channel accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = ctx.tls.clone();
        let handshake = understudy_tls::accept(&tls, tcp, ctx.link_idle_timeout).await;
        match handshake {
            Ok((stream, peer)) => {
                info!(link, peer = %peer, from = %addr, "channel link up");
                if let Some(old) = current.take() {
                    old.abort();
                }
                current = Some(tokio::spawn(link_session(ctx.clone(), link, stream)));
            }
            // A dialler that gave up mid-handshake (it timed out while this daemon was slow
            // or frozen) is not a refusal; a refusal either way comes with a TLS alert.
            Err(e) if e.peer_hung_up() => {
                debug!(link, from = %addr, error = %e, "channel connection abandoned by its dialler")
            }
            // A peer without a certificate from the pair's CA lands here.
            Err(e) => warn!(link, from = %addr, error = %e, "refused a channel connection"),
        }
    }
}

/// Serves management probes: a peer that lost the channel asks "are you there, and what
/// are you?" over the public network. Only the peer's certificate is accepted.
pub async fn serve_management(ctx: Arc<NetCtx>, listener: TcpListener) {
    // Bound the work a flood of connections can cause.
    let slots = Arc::new(Semaphore::new(16));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "management accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(from = %addr, "too many management connections; dropped one");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let answer = tokio::time::timeout(ctx.probe_timeout * 2, answer_probe(&ctx, tcp)).await;
            match answer {
                Ok(Ok(())) => {}
                // A prober that gave up (its probe timed out, as when this daemon was
                // frozen and serves its backlog on waking) is not a refusal.
                Ok(Err(e)) if prober_hung_up(&e) => {
                    debug!(from = %addr, error = %e, "management probe abandoned by its prober")
                }
                Ok(Err(e)) => warn!(from = %addr, error = %e, "management probe refused or failed"),
                Err(_) => warn!(from = %addr, "management probe timed out"),
            }
        });
    }
}

/// Whether answering a probe failed only because the prober closed its end: during the
/// handshake, or before (or while) its probe arrived.
fn prober_hung_up(e: &anyhow::Error) -> bool {
    if let Some(tls) = e.downcast_ref::<understudy_tls::TlsError>() {
        return tls.peer_hung_up();
    }
    match e.downcast_ref::<understudy_wire::WireError>() {
        Some(understudy_wire::WireError::Closed | understudy_wire::WireError::Truncated(_)) => true,
        Some(understudy_wire::WireError::Io(io)) => understudy_tls::hung_up(io),
        _ => false,
    }
}

async fn answer_probe(ctx: &NetCtx, tcp: tokio::net::TcpStream) -> anyhow::Result<()> {
    let (mut stream, _peer) = understudy_tls::accept(&ctx.tls, tcp, ctx.probe_timeout).await?;
    // Separate buffers: read_frame keeps partial input in its buffer between calls.
    let (mut input, mut out) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let status = match read_frame(&mut stream, &mut input).await? {
        Frame::Probe(status) => status,
        other => anyhow::bail!("expected a probe, got {other:?}"),
    };
    let (reply, answer) = oneshot::channel();
    ctx.to_core.send(ToCore::Probed { status, reply }).await?;
    let mine = answer.await?;
    write_frame(&mut stream, &Frame::ProbeReply(mine), &mut out).await?;
    Ok(())
}

/// Probes the peer's management address once, bounded by the probe timeout.
pub async fn probe_peer(ctx: &NetCtx, addr: SocketAddr, status: NodeStatus) -> Option<NodeStatus> {
    let attempt = async {
        let mut stream = understudy_tls::connect(&ctx.tls, addr, ctx.probe_timeout).await?;
        // Separate buffers: read_frame keeps partial input in its buffer between calls.
        let (mut out, mut input) = (Vec::with_capacity(64), Vec::with_capacity(64));
        write_frame(&mut stream, &Frame::Probe(status), &mut out).await?;
        match read_frame(&mut stream, &mut input).await? {
            Frame::ProbeReply(answer) => Ok(answer),
            other => anyhow::bail!("expected a probe reply, got {other:?}"),
        }
    };
    match tokio::time::timeout(ctx.probe_timeout, attempt).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            debug!(peer = %addr, error = %e, "probe failed");
            None
        }
        Err(_) => {
            debug!(peer = %addr, after = ?ctx.probe_timeout, "probe timed out");
            None
        }
    }
}

pub fn spawn_probe(ctx: Arc<NetCtx>, addr: SocketAddr, probe: ProbeId, status: NodeStatus) {
    tokio::spawn(async move {
        let answer = probe_peer(&ctx, addr, status).await;
        let _ = ctx.to_core.send(ToCore::ProbeDone { probe, answer }).await;
    });
}

/// Pings the public-check targets every interval, or at once when the core asks; the
/// public network counts as reachable when any one target answers.
pub async fn public_check(
    targets: Vec<IpAddr>,
    interval: Duration,
    timeout: Duration,
    now_requested: Arc<Notify>,
    to_core: mpsc::Sender<ToCore>,
) {
    let v4 = surge_ping::Client::new(&surge_ping::Config::default());
    let v6 = surge_ping::Client::new(
        &surge_ping::Config::builder()
            .kind(surge_ping::ICMP::V6)
            .build(),
    );
    // Shared through Arc: dropping a surge-ping Client clone tears down its receive task.
    let (v4, v6) = match (v4, v6) {
        (Ok(a), Ok(b)) => (Arc::new(a), Arc::new(b)),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "cannot open ICMP sockets (needs root); the public network will count as lost");
            loop {
                let _ = to_core.send(ToCore::Public { reachable: false }).await;
                tokio::time::sleep(interval).await;
            }
        }
    };
    let mut seq: u16 = 0;
    loop {
        seq = seq.wrapping_add(1);
        let mut pings = tokio::task::JoinSet::new();
        for &ip in &targets {
            let client = if ip.is_ipv4() { v4.clone() } else { v6.clone() };
            pings.spawn(async move {
                let mut pinger = client
                    .pinger(ip, surge_ping::PingIdentifier(rand::random()))
                    .await;
                pinger.timeout(timeout);
                match pinger.ping(surge_ping::PingSequence(seq), &[0u8; 16]).await {
                    Ok(_) => true,
                    Err(e) => {
                        debug!(target = %ip, error = %e, "public check target did not answer");
                        false
                    }
                }
            });
        }
        let mut reachable = false;
        while let Some(answered) = pings.join_next().await {
            reachable |= matches!(answered, Ok(true));
        }
        debug!(reachable, "public check");
        if to_core.send(ToCore::Public { reachable }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = now_requested.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(error: std::io::Error) -> anyhow::Error {
        understudy_tls::TlsError::Handshake {
            peer: "10.0.0.1:7401".into(),
            reason: "test".into(),
            error,
        }
        .into()
    }

    #[test]
    fn a_prober_that_hung_up_is_told_apart_from_a_refusal() {
        use std::io::{Error, ErrorKind};
        use understudy_wire::WireError;
        // Gone: during the handshake, before its probe, in the middle of it.
        assert!(prober_hung_up(&handshake(Error::from(
            ErrorKind::UnexpectedEof
        ))));
        assert!(prober_hung_up(&WireError::Closed.into()));
        assert!(prober_hung_up(&WireError::Truncated(3).into()));
        assert!(prober_hung_up(
            &WireError::Io(Error::from(ErrorKind::ConnectionReset)).into()
        ));
        // Refusals and garbage stay warnings.
        let refused = Error::new(
            ErrorKind::InvalidData,
            rustls::Error::General("bad certificate".into()),
        );
        assert!(!prober_hung_up(&handshake(refused)));
        assert!(!prober_hung_up(&WireError::ReservedFlags(1).into()));
        assert!(!prober_hung_up(&anyhow::anyhow!("expected a probe")));
    }
}
