//! Named network namespaces owned by this process, and the sweep that
//! removes namespaces left behind by earlier runs that crashed.
//!
//! Naming: `ustb<pid>-<seq>-<tag>`. The pid lets [`sweep_stale`] tell a dead
//! run's leftovers from a live concurrent run's namespaces (another
//! developer may be running the suite at the same time); the sequence
//! number keeps parallel tests in one process apart. Namespace names are
//! not limited to 15 characters (only interface names are), and interface
//! names never need the prefix because each namespace has its own set.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{self, ip, ip_bin, run_bounded, CMD_TIMEOUT};

/// Prefix of every namespace this crate creates.
pub const NS_PREFIX: &str = "ustb";

static NEXT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Prefix of the namespaces created by *this* process: `ustb<pid>-`.
pub fn ns_prefix() -> String {
    format!("{NS_PREFIX}{}-", std::process::id())
}

/// A network namespace created with `ip netns add`; dropped = deleted.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `ustb<pid>-<seq>-<tag>` and brings its loopback up (a fresh
    /// namespace has `lo` down, which breaks anything binding 127.0.0.1).
    pub fn new(tag: &str) -> Result<Netns> {
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{seq}-{tag}", ns_prefix());
        ip(&["netns", "add", &name]).with_context(|| format!("creating netns {name}"))?;
        // Construct before further setup so a failure below still deletes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name as known to `ip netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip netns exec NAME args...` with captured output, killed after
    /// 30 s. A non-zero exit is returned, not an error (like
    /// `Command::output`).
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let Some((program, rest)) = args.split_first() else {
            bail!("Netns::run needs a program");
        };
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_bounded(cmd, CMD_TIMEOUT)
    }

    /// Like [`Netns::run`], but a non-zero exit is an error; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        util::check_status(&format!("[{}] {}", self.name, args.join(" ")), &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `Command` for `ip netns exec NAME program`; add args and spawn it
    /// yourself, or hand it to [`crate::spawn`]. Note that every
    /// `ip netns exec` gets a private mount namespace (with this netns's
    /// `/sys`), so mounts made inside do not leak out.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `ip -n NAME args...`: cheaper than `ip netns exec` for link/addr
    /// changes, and guaranteed to act on this namespace only.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full).with_context(|| format!("in netns {}", self.name))
    }

    /// One `ping -c1 -W1` to `addr`: true if a reply came back within 1 s.
    /// Needs `ping` (Debian package iputils-ping).
    pub fn can_ping(&self, addr: IpAddr) -> bool {
        let ping = util::tool_path("ping").unwrap_or_else(|| "ping".into());
        let ping = ping.to_string_lossy();
        let addr = addr.to_string();
        matches!(self.run(&[&ping, "-n", "-c1", "-W1", &addr]), Ok(o) if o.status.success())
    }

    /// Pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_ns(&self.name) {
            eprintln!("understudy-testbed: cleanup of netns {}: {e:#}", self.name);
        }
    }
}

fn ns_pids(name: &str) -> Vec<u32> {
    ip(&["netns", "pids", name])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs inside `name`, then deletes it. Processes must
/// go first: `ip netns del` only unmounts the name, and a live process
/// would keep the namespace (and its interfaces, bridges, addresses) alive
/// invisibly.
fn delete_ns(name: &str) -> Result<()> {
    let me = std::process::id();
    for pid in ns_pids(name) {
        if pid != me && pid > 1 && pid <= i32::MAX as u32 {
            // SAFETY: plain kill(2) on a pid that lives in our namespace.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
    // Bounded retry: deletion can race with a process that is just exiting.
    let mut last = None;
    for _ in 0..5 {
        match ip(&["netns", "del", name]) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !list_namespaces().iter().any(|n| n == name) {
                    return Ok(());
                }
                last = Some(e);
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("could not delete netns {name}")))
}

/// All names from `ip netns list` (whose lines look like `name (id: 3)`).
pub fn list_namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The owning pid encoded in a harness namespace name, if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

/// Deletes harness namespaces whose owning process is gone (a run killed
/// by SIGKILL or a timeout never ran its Drops), killing any processes
/// still inside them. Namespaces of live processes — including concurrent
/// runs by someone else — are left alone. Returns the names removed.
/// Caveat: if the dead run's pid has been reused, its leftovers wait for a
/// later sweep.
pub fn sweep_stale() -> Vec<String> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in list_namespaces() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || util::pid_alive(pid) {
            continue;
        }
        match delete_ns(&name) {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("understudy-testbed: sweep of {name}: {e:#}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn parses_owner_pid() {
        assert_eq!(owner_pid("ustb123-0-a"), Some(123));
        assert_eq!(owner_pid("ustb123-probe"), Some(123));
        assert_eq!(owner_pid("ustb123"), None);
        assert_eq!(owner_pid("ustbx-0-a"), None);
        assert_eq!(owner_pid("other-1"), None);
    }
}
