//! `understudy-testbed`: a harness for Understudy system tests.
//!
//! It builds a small network of Linux network namespaces on one machine
//! ([`PairNet`]: two nodes, a client, and a switch namespace holding the
//! bridges), runs real processes inside them ([`spawn_in`], [`Proc`]),
//! injects faults (cable pulls, one-way drops, SIGSTOP, SIGKILL, CPU load)
//! and always cleans up: every namespace and process is owned by a value
//! whose `Drop` removes it, so a panicking test still tears everything
//! down, and [`sweep_stale`] removes what a killed run left behind.
//!
//! Ground rules the code keeps:
//! - Traffic stays inside namespaces this crate creates (or loopback). The
//!   root namespace's interfaces and routes are never touched.
//! - Every wait and retry loop is bounded in count and time.
//! - Nothing is installed from here; [`ensure_tools`] only reports.
//!
//! Requirements: root, `ip` (iproute2), `ping` (iputils-ping) for the
//! connectivity helpers and tests, and `nft` (nftables) or `iptables` for
//! one-way cuts. The project's `.ci/run` installs iproute2, iputils-ping
//! and nftables via apt-get before running the tests.
//!
//! A typical test:
//! ```no_run
//! use understudy_testbed::*;
//! if !require_root("failover") { return; }
//! let net = PairNet::new(2).unwrap();
//! let dir = run_dir("failover");
//! let mut cmd = std::process::Command::new("understudy");
//! cmd.arg("run");
//! let _a = spawn_in(net.node(0), cmd, &dir.join("a.log")).unwrap();
//! net.cut_all_channels(0).unwrap();
//! ```

mod clock;
pub mod http;
mod loopfs;
mod netns;
mod pairnet;
mod proc;
mod util;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use clock::{WallClockStep, MAX_WALL_CLOCK_STEP_S};
pub use loopfs::LoopFs;
pub use netns::{list_namespaces, ns_prefix, sweep_stale, Netns, NS_PREFIX};
pub use pairnet::{channel_ifname, PairNet, MAX_CHANNEL_LINKS, PREFIX_LEN, PUBLIC_IFNAME};
pub use proc::{spawn, spawn_in, stress_cpu, Proc};
pub use util::tool_path;

/// A log line without the terminal colour codes tracing puts in it.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Returns true if this test can run: effective uid 0, `ip` present, and a
/// network namespace can actually be created (containers often forbid it).
///
/// Otherwise, under CI (`CI=true`) it panics, because a CI run that
/// silently skips every system test would look green while testing
/// nothing; elsewhere it prints `SKIP <test>: needs root and network
/// namespaces (<reason>)` to stderr and returns false.
pub fn require_root(test: &str) -> bool {
    // Probe once per process: creating a namespace costs a few ms and the
    // answer cannot change during a run.
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe_root) {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{test}: needs root and network namespaces ({reason}); \
                     under CI=true this is a failure, not a skip"
                );
            }
            eprintln!("SKIP {test}: needs root and network namespaces ({reason})");
            false
        }
    }
}

fn probe_root() -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("running as euid {euid}, not root"));
    }
    if tool_path("ip").is_none() {
        return Err("`ip` not found; install iproute2".to_string());
    }
    match Netns::new("probe") {
        Ok(ns) => {
            drop(ns);
            Ok(())
        }
        Err(e) => Err(format!("cannot create a network namespace: {e:#}")),
    }
}

/// The Debian package that provides each tool the harness may use.
fn package_of(tool: &str) -> &str {
    match tool {
        "ip" => "iproute2",
        "ping" => "iputils-ping",
        "nft" => "nftables",
        "iptables" => "iptables",
        "stress-ng" => "stress-ng",
        "sh" => "dash",
        other => other,
    }
}

/// Checks that every tool in `tools` is installed; installs nothing. The
/// error names each missing tool and the Debian package that provides it.
pub fn ensure_tools(tools: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| tool_path(t).is_none())
        .map(|t| format!("`{t}` (apt-get install {})", package_of(t)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "missing tools: {}; .ci/run installs iproute2, iputils-ping and nftables",
            missing.join(", ")
        )
    }
}

/// Polls `f` every `poll` until it returns `Some`, for at most `timeout`.
/// `f` is always called at least once, and once more at the deadline, so a
/// zero timeout means "check now".
pub fn wait_until<T>(
    timeout: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    // A zero poll interval would spin a core that the processes under
    // test need.
    let poll = poll.max(Duration::from_millis(1));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// A fresh scratch directory `<tmp>/understudy-tests/<test>-<pid>` (emptied
/// if it exists). It is kept after the test so logs can be inspected.
/// Panics if it cannot be created: a test without its log directory is
/// broken anyway.
pub fn run_dir(test: &str) -> PathBuf {
    // Test names like `net::cut` must not create nested or odd paths.
    let safe: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = std::env::temp_dir()
        .join("understudy-tests")
        .join(format!("{safe}-{}", std::process::id()));
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating run dir {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_is_bounded() {
        let start = Instant::now();
        let mut calls = 0;
        let r: Option<()> =
            wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
                calls += 1;
                None
            });
        assert!(r.is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!((2..=10).contains(&calls), "calls = {calls}");
        assert_eq!(
            wait_until(Duration::ZERO, Duration::ZERO, || Some(7)),
            Some(7)
        );
    }

    #[test]
    fn run_dir_is_fresh() {
        let d = run_dir("unit/run dir");
        std::fs::write(d.join("x"), "1").unwrap();
        let d2 = run_dir("unit/run dir");
        assert_eq!(d, d2);
        assert!(!d2.join("x").exists());
        assert!(d2.ends_with(format!("unit_run_dir-{}", std::process::id())));
    }

    #[test]
    fn ensure_tools_reports_missing() {
        ensure_tools(&["sh"]).unwrap();
        let e = ensure_tools(&["definitely-not-a-tool-xyz"]).unwrap_err();
        assert!(e.to_string().contains("definitely-not-a-tool-xyz"));
    }

    #[test]
    fn addresses() {
        assert_eq!(PairNet::channel_addr(0, 0).to_string(), "10.50.0.1");
        assert_eq!(PairNet::channel_addr(1, 1).to_string(), "10.51.0.2");
        assert_eq!(PairNet::public_addr(1).to_string(), "10.60.0.12");
        assert_eq!(PairNet::client_addr().to_string(), "10.60.0.100");
    }
}
