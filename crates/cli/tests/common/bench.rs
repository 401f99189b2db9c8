//! Shared by the replication and resync benchmarks (`bench/`): workloads run as python
//! programs inside a node's namespaces, cache control, a pair with benchmark timings whose
//! data is removed afterwards, and the small statistics every benchmark prints.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{env_u64, median, repl, Pair, Timing};

/// Runs a python program with arguments in node i's mount and network namespaces and parses
/// the JSON object it prints last.
pub fn py(pair: &Pair, i: usize, program: &str, args: &[String]) -> Result<Value> {
    let script = format!(
        "python3 - {} <<'PYEOF'\n{program}\nPYEOF",
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = pair.sh_in(i, &script)?;
    let last = out.lines().last().context("no output from the workload")?;
    serde_json::from_str(last).with_context(|| format!("workload output {out:?}"))
}

pub fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Flushes dirty data everywhere so one measurement does not pay for the previous one.
pub fn settle(pair: &Pair, i: usize) -> Result<()> {
    pair.sh_in(i, "sync")?;
    Ok(())
}

pub fn drop_caches(pair: &Pair, i: usize) -> Result<()> {
    pair.sh_in(i, "sync; echo 3 > /proc/sys/vm/drop_caches")?;
    Ok(())
}

/// A fresh plain directory on the same filesystem as the data dirs.
pub fn native_dir(pair: &Pair) -> Result<String> {
    let d = pair.dir().join("native");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d.display().to_string())
}

pub fn p(path: &Path, name: &str) -> String {
    path.join(name).display().to_string()
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

/// Removes the benchmark's files from the mount (a replicated op) and the native dir, and
/// waits until the passive applied the removal.
pub fn clean(pair: &Pair, active: usize, what: &str) -> Result<()> {
    let m = pair.mountpoint();
    pair.sh_in(
        active,
        &format!(
            "rm -rf {m}/{what} {n}/*",
            m = m.display(),
            n = pair.dir().join("native").display()
        ),
    )?;
    pair.wait_drained(active, Duration::from_secs(120))?;
    settle(pair, active)
}

/// A pair with one replicated set, as `repl::start`, but with timeouts that ride out the
/// stalls a benchmark causes on purpose (dropping gigabytes of page cache stalls the whole
/// machine for most of a second: with the tests' 600 ms isolation timeout the active gave
/// up its role in the middle of a read). Returns a guard that deletes the data
/// afterwards, the pair and the active's index.
pub fn start(test: &str, mode: &str, queue_max_bytes: u64) -> Result<(Scratch, Pair, usize)> {
    // The pair's directory (see `run_dir`), known before the pair exists so that the guard
    // is dropped after it.
    let scratch = Scratch(
        std::env::temp_dir()
            .join("understudy-tests")
            .join(format!("{test}-{}", std::process::id())),
    );
    let timing = Timing {
        failover_ms: 5000,
        isolation_ms: 3000,
        ..Timing::default()
    };
    let pair = Pair::start_with(test, timing, Some(&repl::resources(mode, queue_max_bytes)))?;
    let active = pair.wait_settled(Duration::from_secs(20))?;
    pair.wait_repl(active, "in_sync", Duration::from_secs(20))?;
    Ok((scratch, pair, active))
}

/// Removes a benchmark's data (the native directory, rsync's copy and both nodes' copies of the set) once
/// the pair is gone, also when the benchmark failed; the logs stay.
pub struct Scratch(pub std::path::PathBuf);

/// Where benchmarks move trees they are done with (deleted with the scratch directory).
pub const SET_ASIDE: &str = "set-aside";

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.join("native"));
        // The resync benchmarks' rsync baseline copy (2 GiB a run, left behind before).
        let _ = std::fs::remove_dir_all(self.0.join("rsync-copy"));
        let _ = std::fs::remove_dir_all(self.0.join(SET_ASIDE));
        for node in super::NAMES {
            let _ = std::fs::remove_dir_all(self.0.join(format!("state-{node}")).join("sets"));
        }
    }
}

/// Fails if either node changed role since `before` (from [`role_count`]): a benchmark's
/// figures mean nothing if the set moved in the middle.
pub fn assert_no_move(pair: &Pair, before: usize) {
    assert_eq!(
        role_count(pair),
        before,
        "a node changed role during the benchmark; logs in {}",
        pair.dir().display()
    );
}

pub fn role_count(pair: &Pair) -> usize {
    (0..2)
        .filter(|&i| pair.procs[i].is_some())
        .map(|i| pair.role_changes(i).len())
        .sum()
}

/// How many times each side is measured: BENCH_ROUNDS (3).
pub fn rounds() -> u64 {
    env_u64("BENCH_ROUNDS", 3).max(1)
}

/// The set's mode: `sync` unless BENCH_REPL_MODE says `async` (to tell the passive's share
/// from the capture filesystem's).
pub fn mode() -> String {
    std::env::var("BENCH_REPL_MODE").unwrap_or_else(|_| "sync".into())
}

pub fn med(mut v: Vec<f64>) -> f64 {
    median(&mut v)
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// CPU time (user + system, all threads) a process used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// VmRSS and VmHWM of a process, in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name}"))?;
        let kb: u64 = line.split_whitespace().nth(1).context("field")?.parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// With `BENCH_PROFILE="COMMAND ARGS..."` (for instance `perf record -a -g -o /tmp/perf.data`),
/// runs that command while the measured part of a benchmark runs (a resync, a verify, a
/// replicated write) and stops it with SIGINT at the end, for finding where the time goes.
/// Nothing when unset.
pub fn profile_start() -> Option<std::process::Child> {
    let line = std::env::var("BENCH_PROFILE").ok()?;
    let mut words = line.split_whitespace();
    std::process::Command::new(words.next()?)
        .args(words)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("BENCH_PROFILE: cannot start {line}: {e}"))
        .ok()
}

/// Stops the profiler started by [`profile_start`] (SIGINT lets it write its file).
pub fn profile_stop(profiler: Option<std::process::Child>) {
    if let Some(mut child) = profiler {
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
    }
}
