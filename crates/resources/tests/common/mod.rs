//! Helpers shared by the integration tests: exec resource configurations
//! and checks on real processes.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use understudy_config::{ExecResourceConfig, ResourceConfig, ResourceKind};

/// Pair name handed to every resource in the tests.
pub const PAIR: &str = "testpair";

/// An exec resource configuration with timeouts short enough for tests but
/// long enough for a loaded CI machine.
pub fn exec_config(name: &str, start: &str, stop: &str, monitor: Option<&str>) -> ResourceConfig {
    ResourceConfig {
        name: name.to_owned(),
        kind: ResourceKind::Exec(ExecResourceConfig {
            start: start.to_owned(),
            stop: stop.to_owned(),
            monitor: monitor.map(str::to_owned),
        }),
        start_timeout_ms: 10_000,
        stop_timeout_ms: 10_000,
        monitor_timeout_ms: 10_000,
        monitor_interval_ms: 1_000,
        on_failure: ResourceConfig::default_on_failure(),
        failure_window_ms: 600_000,
    }
}

/// `path` quoted for `/bin/sh`, so temporary directories with odd
/// characters cannot break the test commands.
pub fn sh_path(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Read a pid written by a test command, waiting briefly for the file: the
/// command may still be writing it. Async so the runtime keeps reading the
/// commands' output meanwhile.
pub async fn read_pid(path: &Path) -> libc::pid_t {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live process. A zombie counts as gone: killed
/// orphans are reparented to PID 1, which in a container may never reap
/// them, so `kill(pid, 0)` alone would still find them.
pub fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

/// Wait up to `within` for `pid` to be gone; whether it went.
pub async fn wait_gone(pid: libc::pid_t, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Kill `pid` if it is still alive, so a failing test leaves no process
/// behind.
pub fn reap_leftover(pid: libc::pid_t) {
    if pid > 1 && process_alive(pid) {
        // SAFETY: plain syscall on a pid this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
