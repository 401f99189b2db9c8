//! The lease watchdog: a separate process that stops this node's resources when the
//! daemon can no longer be trusted to, so that a hung or crashed daemon never keeps a
//! floating address or an application alive behind the pair's back.
//!
//! The daemon starts `understudy watchdog` as a child in a process group of its own, so a
//! SIGSTOP or kill aimed at the daemon's group does not reach it. While the node runs
//! resources, the daemon's core loop renews a lease over a pipe: a state byte (`A` armed,
//! `P` disarmed) and the moment of the renewal on `CLOCK_MONOTONIC`, which both processes
//! share. If an armed lease's last renewal is `isolation_timeout` old, or the pipe closes
//! while armed (the daemon died), the watchdog stops every resource itself and writes `F`
//! back. A daemon that wakes up reads the `F` and its core demotes (`Reason::Fenced`).
//!
//! The watchdog judges the renewal's own time, not when it got round to reading it: on a
//! starved machine the watchdog may itself not run for a while, and a renewal that waits
//! unread in the pipe is still a renewal. (With a reader thread and a receive timeout, a
//! watchdog that woke late could time out before its reader had read a renewal the daemon
//! wrote in time, and fence a live daemon.)
//!
//! `isolation_timeout < failover_timeout`, so the resources are stopped before the passive
//! may promote; its address conflict probe then finds the address free.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{error, info, warn};
use understudy_config::Config;
use understudy_resources::ResourceSet;

use crate::runtime::ToCore;

const ARMED: u8 = b'A';
const DISARMED: u8 = b'P';
const FENCED: u8 = b'F';
/// A renewal: the state byte and the renewal's `CLOCK_MONOTONIC` time in nanoseconds,
/// little-endian. Shorter than `PIPE_BUF`, so each is written whole.
const RENEWAL_BYTES: usize = 9;

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the clock both ends of the lease read.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.max(0) as u64)
}

/// The watchdog's view of the lease, from the renewals read so far.
#[derive(Debug)]
struct Lease {
    armed: bool,
    /// When the daemon last renewed (its own clock reading, never later than now).
    renewed_ns: u64,
    lease_ns: u64,
    /// A renewal read in part.
    partial: Vec<u8>,
}

/// What the watchdog does after reading what waits in the pipe.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Wait for the next renewal at most this long (`None`: disarmed, no limit).
    Wait(Option<Duration>),
    /// The armed lease's last renewal is older than the lease.
    Lapsed,
    /// The daemon closed the pipe (it exited or died) while armed / while disarmed.
    Closed { armed: bool },
}

impl Lease {
    fn new(lease: Duration, now_ns: u64) -> Self {
        Self {
            armed: false,
            renewed_ns: now_ns,
            lease_ns: u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX),
            partial: Vec::with_capacity(RENEWAL_BYTES),
        }
    }

    /// Takes in bytes read from the pipe.
    fn take(&mut self, bytes: &[u8], now_ns: u64) {
        for &b in bytes {
            self.partial.push(b);
            if self.partial.len() < RENEWAL_BYTES {
                continue;
            }
            let mut ns = [0u8; 8];
            ns.copy_from_slice(&self.partial[1..RENEWAL_BYTES]);
            self.armed = self.partial[0] == ARMED;
            // A renewal cannot come from the future; the later of two wins (they come in
            // order, but a clamp costs nothing against a confused sender).
            self.renewed_ns = self.renewed_ns.max(u64::from_le_bytes(ns).min(now_ns));
            self.partial.clear();
        }
        understudy_core::invariant!(
            self.partial.len() < RENEWAL_BYTES,
            "a partial renewal of {} bytes",
            self.partial.len()
        );
    }

    /// After everything waiting in the pipe was taken in: fence, or wait how long.
    fn verdict(&self, closed: bool, now_ns: u64) -> Verdict {
        if closed {
            return Verdict::Closed { armed: self.armed };
        }
        if !self.armed {
            return Verdict::Wait(None);
        }
        let age_ns = now_ns.saturating_sub(self.renewed_ns);
        if age_ns >= self.lease_ns {
            return Verdict::Lapsed;
        }
        Verdict::Wait(Some(Duration::from_nanos(self.lease_ns - age_ns)))
    }
}

/// Reads everything waiting in the (non-blocking) pipe into the lease. True once it closed.
fn drain(pipe: BorrowedFd<'_>, lease: &mut Lease) -> bool {
    let mut buf = [0u8; 512];
    // Bounded: a live daemon writes at most one renewal per RENEW_EVERY.
    for _ in 0..1024 {
        match rustix::io::read(pipe, &mut buf) {
            Ok(0) => return true,
            Ok(n) => lease.take(&buf[..n], monotonic_ns()),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Waits until the pipe has something to read or `timeout` passes.
fn wait_readable(pipe: BorrowedFd<'_>, timeout: Option<Duration>) {
    let timeout = timeout.map(|t| rustix::time::Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    let mut fds = [PollFd::new(&pipe, PollFlags::IN)];
    // EINTR and the rest: the caller drains and decides again.
    let _ = rustix::event::poll(&mut fds, timeout.as_ref());
}

/// The watchdog process: follows the lease on stdin until it closes.
pub fn serve(cfg: &Config, node: &str, lease: Duration) -> Result<()> {
    let (me, _) = cfg.node(node).map_err(|e| anyhow::anyhow!("{e}"))?;
    let built: Result<Vec<_>, String> = cfg
        .resources
        .iter()
        .map(|r| understudy_resources::build(r, &cfg.pair.name, me))
        .collect();
    let resources = ResourceSet::new(built.map_err(|e| anyhow::anyhow!(e))?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let stdin = std::io::stdin();
    let pipe = stdin.as_fd();
    // Non-blocking, so everything waiting can be read before each decision.
    let flags = rustix::fs::fcntl_getfl(pipe).context("reading the lease pipe's flags")?;
    rustix::fs::fcntl_setfl(pipe, flags | rustix::fs::OFlags::NONBLOCK)
        .context("making the lease pipe non-blocking")?;
    let mut state = Lease::new(lease, monotonic_ns());
    loop {
        let closed = drain(pipe, &mut state);
        match state.verdict(closed, monotonic_ns()) {
            Verdict::Wait(timeout) => wait_readable(pipe, timeout),
            Verdict::Lapsed => {
                fence(
                    &runtime,
                    &resources,
                    "the daemon missed its lease (hung or stalled)",
                );
                // Until the daemon renews again (it demotes on the `F` and disarms).
                state.armed = false;
            }
            Verdict::Closed { armed } => {
                if armed {
                    fence(
                        &runtime,
                        &resources,
                        "the daemon died while its node was active",
                    );
                }
                return Ok(());
            }
        }
    }
}

fn fence(runtime: &tokio::runtime::Runtime, resources: &ResourceSet, why: &str) {
    error!(
        reason = why,
        "FENCING: stopping every resource on this node"
    );
    match runtime.block_on(resources.stop_all()) {
        Ok(()) => info!("fenced: every resource stopped"),
        Err(e) => error!(error = %e, "fencing could not stop every resource"),
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(&[FENCED]).and_then(|()| out.flush());
}

/// The daemon's end: the lease pipe and the child.
pub struct Watchdog {
    child: Child,
    lease_in: Option<ChildStdin>,
    armed: bool,
    last_renewal: Instant,
    /// How long an armed lease may go unrenewed before the watchdog fences.
    lease: Duration,
}

/// How often the lease is renewed at most: the core loop wakes at least once a heartbeat.
const RENEW_EVERY: Duration = Duration::from_millis(10);

impl Watchdog {
    /// Starts `understudy watchdog` for this node; `F` from it becomes `ToCore::Fenced`.
    pub fn spawn(
        cfg: &Config,
        node: &str,
        to_core: tokio_mpsc::Sender<ToCore>,
    ) -> Result<Watchdog> {
        let exe =
            std::env::current_exe().context("locating the understudy binary for the watchdog")?;
        let lease_ms = cfg.pair.isolation_timeout_ms.to_string();
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(&cfg.source)
            .args(["watchdog", "--node", node, "--lease-ms", &lease_ms])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // A group of its own: a signal to the daemon's group must not stop the watchdog too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().context("starting the watchdog")?;
        let lease_in = child.stdin.take();
        if let Some(mut fenced) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while let Ok(n) = fenced.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if buf[..n].contains(&FENCED) && to_core.blocking_send(ToCore::Fenced).is_err()
                    {
                        return;
                    }
                }
            });
        }
        info!(pid = child.id(), "watchdog started");
        Ok(Watchdog {
            child,
            lease_in,
            armed: false,
            last_renewal: Instant::now(),
            lease: Duration::from_millis(cfg.pair.isolation_timeout_ms),
        })
    }

    /// Renews the lease; `running` arms it (resources may be running here).
    pub fn renew(&mut self, running: bool) {
        let since_last = self.last_renewal.elapsed();
        if running == self.armed && since_last < RENEW_EVERY {
            return;
        }
        if self.armed && since_last > self.lease / 2 {
            // Half the lease gone between two renewals: the core loop (or the whole process)
            // did not run. Logged so a fencing for a stall can be told from a near miss.
            warn!(
                late_ms = since_last.as_millis() as u64,
                lease_ms = self.lease.as_millis() as u64,
                "the watchdog's lease was renewed late: this daemon was stalled"
            );
        }
        let mut renewal = [0u8; RENEWAL_BYTES];
        renewal[0] = if running { ARMED } else { DISARMED };
        renewal[1..].copy_from_slice(&monotonic_ns().to_le_bytes());
        let written = self.lease_in.as_mut().map(|pipe| pipe.write_all(&renewal));
        if let Some(Err(e)) = written {
            warn!(error = %e, "the watchdog's lease pipe is broken");
            self.lease_in = None;
        }
        self.armed = running;
        self.last_renewal = Instant::now();
    }

    /// The armed lease went unrenewed for its whole length: this loop stalled, and the
    /// watchdog has stopped (or is stopping) every resource, whether or not its `F` has been
    /// read yet.
    pub fn lapsed(&self) -> bool {
        self.armed && self.last_renewal.elapsed() >= self.lease
    }

    /// A clean stop: disarm, close the pipe and let the watchdog exit.
    pub fn stop(mut self) {
        self.renew(false);
        self.lease_in = None;
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewal(state: u8, at_ns: u64) -> [u8; RENEWAL_BYTES] {
        let mut r = [0u8; RENEWAL_BYTES];
        r[0] = state;
        r[1..].copy_from_slice(&at_ns.to_le_bytes());
        r
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn the_lease_is_judged_by_when_the_daemon_renewed_not_when_the_watchdog_read_it() {
        let lease = Duration::from_millis(600);
        let mut state = Lease::new(lease, 0);
        state.take(&renewal(ARMED, 1_000 * MS), 1_000 * MS);
        // The watchdog was starved for two seconds; the daemon renewed in time throughout,
        // the last time 100 ms ago, and that renewal waited in the pipe.
        state.take(&renewal(ARMED, 2_900 * MS), 3_000 * MS);
        assert_eq!(
            state.verdict(false, 3_000 * MS),
            Verdict::Wait(Some(Duration::from_millis(500)))
        );
        // Nothing more for the lease's length after that renewal: fenced.
        assert_eq!(state.verdict(false, 3_500 * MS), Verdict::Lapsed);
    }

    #[test]
    fn renewals_split_across_reads_disarming_and_closing_are_followed() {
        let mut state = Lease::new(Duration::from_millis(600), 0);
        let r = renewal(ARMED, 10 * MS);
        state.take(&r[..4], 10 * MS);
        assert!(!state.armed, "half a renewal changed the state");
        state.take(&r[4..], 10 * MS);
        assert!(state.armed);
        assert_eq!(
            state.verdict(true, 20 * MS),
            Verdict::Closed { armed: true }
        );
        state.take(&renewal(DISARMED, 5_000 * MS), 5_000 * MS);
        assert_eq!(state.verdict(false, 60_000 * MS), Verdict::Wait(None));
        // A timestamp from the future counts as now.
        state.take(&renewal(ARMED, u64::MAX), 6_000 * MS);
        assert_eq!(state.verdict(false, 6_600 * MS), Verdict::Lapsed);
    }

    #[test]
    fn a_renewal_waiting_in_a_real_pipe_is_read_before_the_decision() {
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        rustix::fs::fcntl_setfl(&reader, rustix::fs::OFlags::NONBLOCK).expect("nonblock");
        let mut state = Lease::new(Duration::from_millis(50), monotonic_ns());
        rustix::io::write(&writer, &renewal(ARMED, monotonic_ns())).expect("write");
        // The watchdog "sleeps" past the lease while the daemon keeps renewing.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(30));
            rustix::io::write(&writer, &renewal(ARMED, monotonic_ns())).expect("write");
        }
        assert!(!drain(reader.as_fd(), &mut state), "the pipe is open");
        assert!(state.armed);
        assert!(
            matches!(state.verdict(false, monotonic_ns()), Verdict::Wait(Some(_))),
            "a live daemon was judged lapsed: {state:?}"
        );
        drop(writer);
        assert!(drain(reader.as_fd(), &mut state), "the close was not seen");
    }
}
