//! The lease watchdog: a separate process that stops this node's resources when the
//! daemon can no longer be trusted to, so that a hung or crashed daemon never keeps a
//! floating address or an application alive behind the pair's back.
//!
//! The daemon starts `understudy watchdog` as a child in a process group of its own, so a
//! SIGSTOP or kill aimed at the daemon's group does not reach it. While the node runs
//! resources, the daemon's core loop renews a lease over a pipe (`A` armed, `P` disarmed).
//! If an armed lease lapses for `isolation_timeout`, or the pipe closes while armed (the
//! daemon died), the watchdog stops every resource itself and writes `F` back. A daemon
//! that wakes up reads the `F` and its core demotes (`Reason::Fenced`).
//!
//! `isolation_timeout < failover_timeout`, so the resources are stopped before the passive
//! may promote; its address conflict probe then finds the address free.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{error, info, warn};
use understudy_config::Config;
use understudy_resources::ResourceSet;

use crate::runtime::ToCore;

const ARMED: u8 = b'A';
const DISARMED: u8 = b'P';
const FENCED: u8 = b'F';

/// The watchdog process: reads the lease from stdin until it closes.
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

    // A blocking reader thread turns stdin into messages, so the lease can time out.
    let (tx, rx) = mpsc::channel::<Option<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[n - 1])).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut armed = false;
    loop {
        match rx.recv_timeout(lease) {
            Ok(Some(ARMED)) => armed = true,
            Ok(Some(_)) => armed = false,
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                if armed {
                    fence(
                        &runtime,
                        &resources,
                        "the daemon died while its node was active",
                    );
                }
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => {
                if armed {
                    fence(
                        &runtime,
                        &resources,
                        "the daemon missed its lease (hung or stalled)",
                    );
                    armed = false;
                }
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
        let byte = if running { ARMED } else { DISARMED };
        let written = self.lease_in.as_mut().map(|pipe| pipe.write_all(&[byte]));
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
