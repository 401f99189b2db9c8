//! Child processes under test: each in its own process group so that the
//! harness can freeze, thaw or kill everything it forked in one go, and
//! killed for sure when the handle is dropped (also while a failing test
//! unwinds).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::util::{self, describe, signal_group, wait_child, REAP_TIMEOUT};

/// A spawned child, leader of its own process group.
/// Drop sends SIGKILL to the whole group and reaps the child (bounded).
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Pid of the leader = the process group id.
    pgid: u32,
    desc: String,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Pid of the spawned program (with `ip netns exec` the program replaces
    /// `ip` via exec, so this is the program's own pid) and its group id.
    pub fn pid(&self) -> u32 {
        self.pgid
    }

    /// SIGKILL to the whole group, then reap the leader (bounded). A crash
    /// with no chance to clean up: the test's "node dies hard" fault.
    ///
    /// On return the leader is reaped and, within a bounded wait, no
    /// member of the group is still running, so a test can assert on the
    /// aftermath right away. (Orphaned members linger as zombies until
    /// init reaps them; zombies run nothing and are not counted.)
    pub fn kill9(&mut self) {
        // Signal the group even if the leader already exited: a forked
        // helper may still be running in it.
        signal_group(self.pgid, libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, REAP_TIMEOUT);
        }
        // SIGKILL is delivered asynchronously to the other members.
        let _ = crate::wait_until(Duration::from_secs(2), Duration::from_millis(5), || {
            self.group_members().is_empty().then_some(())
        });
    }

    /// Pids of live (non-zombie) processes in this process group, from
    /// `/proc`. Empty once everything the child forked has died.
    pub fn group_members(&self) -> Vec<u32> {
        group_members(self.pgid)
    }

    /// SIGSTOP to the whole group: the process stays alive but stops
    /// answering anything, like a node hung in the kernel or a VM pause.
    pub fn stop(&self) {
        signal_group(self.pgid, libc::SIGSTOP);
    }

    /// SIGCONT to the whole group, undoing [`Proc::stop`].
    pub fn cont(&self) {
        signal_group(self.pgid, libc::SIGCONT);
    }

    /// True while the leader has not exited (a stopped process counts as
    /// running). Reaps it if it has exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.exited = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits up to `d` for the leader to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, d);
        }
        self.exited
    }

    /// A clean stop: SIGTERM to the leader only (as an operator's `systemctl stop` would),
    /// then waits up to `d` for it to exit. Returns its exit status, `None` if it is still
    /// running (Drop then kills it).
    pub fn terminate(&mut self, d: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal.
            unsafe { libc::kill(self.pgid as libc::pid_t, libc::SIGTERM) };
        }
        self.wait_timeout(d)
    }

    /// What was spawned, for messages.
    pub fn describe(&self) -> &str {
        &self.desc
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGCONT after SIGKILL is unnecessary (SIGKILL also ends stopped
        // processes), so a plain group kill covers `stop()`ped children.
        self.kill9();
        if self.exited.is_none() {
            eprintln!(
                "understudy-testbed: `{}` (pid {}) did not exit within {REAP_TIMEOUT:?} of SIGKILL",
                self.desc, self.pgid
            );
        }
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may
            // contain spaces or parens, so split after the last ')'.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] != "Z" && f[0] != "X" && f[2].parse() == Ok(pgid)
        })
        .collect()
}

/// Spawns `cmd` as is (root namespace, or a command already wrapped by
/// [`Netns::command`]) in a new process group, stdout and stderr appended
/// to `log_path` (parent directories are created).
pub fn spawn(cmd: Command, log_path: &Path) -> Result<Proc> {
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening log {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    spawn_with(cmd, Stdio::from(log), Stdio::from(log2))
}

fn spawn_with(mut cmd: Command, out: Stdio, err: Stdio) -> Result<Proc> {
    let desc = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd.spawn().with_context(|| format!("spawning `{desc}`"))?;
    let pgid = child.id();
    Ok(Proc {
        child,
        pgid,
        desc,
        exited: None,
    })
}

/// Spawns `cmd` inside `ns`. `cmd` describes the program to run (program,
/// args, env, working directory); it is re-wrapped as
/// `ip netns exec NS program args...`. A command that already came from
/// `ns.command(..)` is used unchanged.
pub fn spawn_in(ns: &Netns, cmd: Command, log_path: &Path) -> Result<Proc> {
    spawn(wrap_in(ns, cmd), log_path)
}

fn wrap_in(ns: &Netns, cmd: Command) -> Command {
    let already = cmd.get_program() == util::ip_bin().as_os_str()
        && cmd.get_args().take(3).eq(["netns", "exec", ns.name()]
            .iter()
            .map(std::ffi::OsStr::new));
    if already {
        return cmd;
    }
    let mut wrapped = ns.command(&cmd.get_program().to_string_lossy());
    wrapped.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Upper bound on load workers: this is a 2-core test machine; more would
/// only starve the test itself.
const MAX_WORKERS: usize = 64;

/// CPU load: `workers` busy loops for `dur` (in `ns`, or in the root
/// namespace — it sends no traffic). Uses `stress-ng --cpu` if installed,
/// else plain `sh` busy loops. Everything is in one process group that
/// stops by itself after `dur` and is killed when the `Proc` drops.
pub fn stress_cpu(ns: Option<&Netns>, workers: usize, dur: Duration) -> Result<Proc> {
    if workers > MAX_WORKERS {
        bail!("stress_cpu: {workers} workers is more than the limit of {MAX_WORKERS}");
    }
    // Whole seconds, rounded up, at least 1: both stress-ng and sleep
    // accept that everywhere.
    let secs = dur.as_secs() + u64::from(dur.subsec_nanos() > 0);
    let secs = secs.max(1).to_string();
    let workers_s = workers.to_string();
    let cmd = if let (Some(sng), true) = (util::tool_path("stress-ng"), workers > 0) {
        let mut c = Command::new(sng);
        c.args([
            "--cpu",
            &workers_s,
            "--timeout",
            &format!("{secs}s"),
            "--quiet",
        ]);
        c
    } else {
        // The subshells inherit the group; `kill 0` at the end signals our
        // own group only (it is ours alone thanks to process_group(0)).
        let script = r#"i=0
while [ "$i" -lt "$1" ]; do (while :; do :; done) & i=$((i+1)); done
sleep "$2"
kill 0"#;
        let mut c = Command::new("sh");
        c.args(["-c", script, "stress_cpu", &workers_s, &secs]);
        c
    };
    let cmd = match ns {
        Some(ns) => wrap_in(ns, cmd),
        None => cmd,
    };
    spawn_with(cmd, Stdio::null(), Stdio::null())
}
