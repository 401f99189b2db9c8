//! A two-node pair of real `understudy run` processes in network namespaces, for system
//! tests and the failover benchmarks. Everything is torn down on drop, even on panic.

#![allow(dead_code)]

pub mod bench;
pub mod identity;
pub mod repl;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use understudy_daemon::report::StatusReport;
use understudy_testbed::{run_dir, spawn_in, wait_until, PairNet, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

pub struct Timing {
    pub heartbeat_ms: u64,
    pub failover_ms: u64,
    pub isolation_ms: u64,
    pub links: usize,
    pub public_interval_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 100,
            failover_ms: 1000,
            isolation_ms: 600,
            links: 2,
            public_interval_ms: 200,
        }
    }
}

pub struct Pair {
    pub net: PairNet,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub procs: [Option<Proc>; 2],
    pub timing: Timing,
}

pub const NAMES: [&str; 2] = ["alpha", "beta"];

/// A stand-in application: a background process with a pid file, and a log of starts
/// and stops with nanosecond stamps.
const DEFAULT_RESOURCES: &str = r#"[[resource]]
name = "app"
kind = "exec"
start = "echo \"start $(date +%s%N)\" >> {dir}/app-$UNDERSTUDY_NODE.log; sleep 1000 >/dev/null 2>&1 & echo $! > {dir}/app-$UNDERSTUDY_NODE.pid"
stop = "kill $(cat {dir}/app-$UNDERSTUDY_NODE.pid) 2>/dev/null; echo \"stop $(date +%s%N)\" >> {dir}/app-$UNDERSTUDY_NODE.log"
start_timeout_ms = 5000
stop_timeout_ms = 5000
"#;

impl Pair {
    pub fn start(test: &str, timing: Timing) -> Result<Pair> {
        Pair::start_with(test, timing, None)
    }

    /// `resources`: TOML `[[resource]]` blocks replacing the default exec app; `{dir}` in
    /// it stands for the test's directory and `{bin}` for the understudy binary.
    pub fn start_with(test: &str, timing: Timing, resources: Option<&str>) -> Result<Pair> {
        let mut pair = Pair::prepare(test, timing, resources)?;
        pair.start_node(0)?;
        pair.start_node(1)?;
        Ok(pair)
    }

    /// The network, config and certificates, with no node started yet.
    pub fn prepare(test: &str, timing: Timing, resources: Option<&str>) -> Result<Pair> {
        let net = PairNet::new(timing.links)?;
        let dir = run_dir(test);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("understudy.toml");
        let channel = |i: usize| {
            (0..timing.links)
                .map(|l| format!("\"{}:7400\"", PairNet::channel_addr(i, l)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            r#"[pair]
name = "systest"
heartbeat_interval_ms = {hb}
failover_timeout_ms = {fo}
isolation_timeout_ms = {iso}
probe_timeout_ms = 250
state_dir = "{dir}/state"
control_socket = "{dir}/unused.sock"
tls_dir = "{dir}/tls"

[[node]]
name = "alpha"
channel = [{ch0}]
management = "{m0}:7401"

[[node]]
name = "beta"
channel = [{ch1}]
management = "{m1}:7401"

[public_check]
targets = ["{client}"]
interval_ms = {pi}
timeout_ms = 150

{resources}
"#,
            hb = timing.heartbeat_ms,
            fo = timing.failover_ms,
            iso = timing.isolation_ms,
            pi = timing.public_interval_ms,
            dir = dir.display(),
            ch0 = channel(0),
            ch1 = channel(1),
            m0 = PairNet::public_addr(0),
            m1 = PairNet::public_addr(1),
            client = PairNet::client_addr(),
            resources = resources
                .unwrap_or(DEFAULT_RESOURCES)
                .replace("{dir}", &dir.display().to_string())
                .replace("{bin}", BIN),
        );
        std::fs::write(&config, text)?;
        let material = understudy_tls::generate_pair("systest", &NAMES)?;
        understudy_tls::write_pair(&dir.join("tls"), &material, true)?;
        Ok(Pair {
            net,
            dir,
            config,
            procs: [None, None],
            timing,
        })
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.sock", NAMES[i]))
    }

    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket(i));
        cmd.args(["run", "--node", NAMES[i], "--state-dir"])
            .arg(self.dir.join(format!("state-{}", NAMES[i])));
        cmd.env("UNDERSTUDY_NODE", NAMES[i])
            .env("RUST_LOG", "info,understudy_daemon::net=debug");
        let log = self.dir.join(format!("{}.log", NAMES[i]));
        self.procs[i] = Some(spawn_in(self.net.node(i), cmd, &log)?);
        Ok(())
    }

    pub fn status(&self, i: usize) -> Result<StatusReport> {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket(i))
            .args(["status", "--json"])
            .output()?;
        if !out.status.success() {
            bail!(
                "status of {}: {}",
                NAMES[i],
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("status JSON")
    }

    /// The status straight from the control socket, without starting the CLI: what polling
    /// loops use, so that the measuring costs the two cores it shares little (a CLI process
    /// every 10 ms took a fifth of a core away from the daemons being timed).
    pub fn status_direct(&self, i: usize) -> Result<StatusReport> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let reply = rt.block_on(understudy_daemon::control::request(
            &self.socket(i),
            &understudy_daemon::control::Request::Status,
        ))?;
        reply
            .status
            .with_context(|| format!("no status from {}: {:?}", NAMES[i], reply.error))
    }

    pub fn role(&self, i: usize) -> Option<String> {
        self.status(i).ok().map(|s| s.role)
    }

    pub fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(self.socket(i))
            .args(args)
            .output()
            .expect("run the understudy CLI")
    }

    /// Waits until node `i` reports `role`, polling every 5 ms; returns when it was seen.
    pub fn wait_role(&self, i: usize, role: &str, timeout: Duration) -> Option<Instant> {
        wait_until(timeout, Duration::from_millis(5), || {
            (self.role(i).as_deref() == Some(role)).then(Instant::now)
        })
    }

    /// Waits for a settled pair: one active, one passive and connected. Returns the active.
    pub fn wait_settled(&self, timeout: Duration) -> Result<usize> {
        wait_until(timeout, Duration::from_millis(20), || {
            let a = self.status(0).ok()?;
            let b = self.status(1).ok()?;
            match (a.role.as_str(), b.role.as_str()) {
                _ if !(a.public_ok && b.public_ok) => None,
                ("active", "passive") if b.peer.connected => Some(0),
                ("passive", "active") if a.peer.connected => Some(1),
                _ => None,
            }
        })
        .with_context(|| format!("the pair did not settle; logs in {}", self.dir.display()))
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(p) = self.procs[i].as_mut() {
            p.kill9();
        }
        self.procs[i] = None;
    }

    pub fn proc(&self, i: usize) -> &Proc {
        self.procs[i].as_ref().expect("node running")
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", NAMES[i]))).unwrap_or_default()
    }

    /// Role changes of node i, as (to, reason).
    pub fn role_changes(&self, i: usize) -> Vec<(String, String)> {
        self.status(i)
            .map(|s| {
                s.events
                    .iter()
                    .filter(|e| e.kind == "role-change")
                    .map(|e| {
                        (
                            e.to.clone().unwrap_or_default(),
                            e.reason.clone().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A numeric setting from the environment (benchmark sizes), or its default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of a non-empty sample; sorts it.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Pair {
    /// Unix-ms of node i's last role change into `to`, 0 if there is none.
    pub fn last_change_ms(&self, i: usize, to: &str) -> f64 {
        self.status(i)
            .ok()
            .and_then(|s| {
                s.events
                    .iter()
                    .rev()
                    .find(|e| e.kind == "role-change" && e.to.as_deref() == Some(to))
                    .map(|e| e.at_unix_ms)
            })
            .unwrap_or(0) as f64
    }

    /// The resources' own time in the latest move away from `old`, in ms: its stop
    /// (demoting -> passive) and the peer's start (promoting -> active). Read it once the
    /// peer reports active.
    pub fn move_resource_ms(&self, old: usize) -> (f64, f64) {
        let stop = self.last_change_ms(old, "passive") - self.last_change_ms(old, "demoting");
        let start =
            self.last_change_ms(1 - old, "active") - self.last_change_ms(1 - old, "promoting");
        (stop, start)
    }
}
