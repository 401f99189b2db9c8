//! Small process helpers shared by the rest of the crate: locating tools,
//! running a command with a hard time limit, and killing process groups.
//!
//! Everything here is bounded: a hung `ip` or `nft` must never hang a test
//! run, so every wait has a deadline and every read of a child's output is
//! given up on after a grace period.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Default limit for one harness command (`ip`, `nft`, `ping`, ...).
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long we wait for a child to be reaped after SIGKILL. A process in
/// uninterruptible sleep can outlive SIGKILL; we prefer leaking a zombie
/// to hanging the test run.
pub(crate) const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Directories searched after `$PATH`. Debian puts `ip` and `nft` in
/// `/usr/sbin`, which is missing from many non-login `$PATH`s.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds an executable by name in `$PATH` and the usual sbin directories.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var).chain(EXTRA_DIRS.iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Some(candidate);
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The `ip` binary, falling back to the bare name so the error message of a
/// failed spawn still says what was missing.
pub(crate) fn ip_bin() -> PathBuf {
    tool_path("ip").unwrap_or_else(|| PathBuf::from("ip"))
}

/// Human-readable rendering of a command, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends `sig` to the whole process group `pgid`. Errors (typically ESRCH:
/// the group is already gone) are ignored on purpose: callers use this in
/// cleanup paths where "already dead" is success.
pub(crate) fn signal_group(pgid: u32, sig: libc::c_int) {
    if pgid == 0 || pgid > i32::MAX as u32 {
        // kill(0, ..) or kill(-1, ..) would hit our own group or everything.
        return;
    }
    // SAFETY: plain syscall with a negative pid = process group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Polls `try_wait` until the child exits or `timeout` passes.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // ECHILD or similar: nothing left to wait for.
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

/// Runs `cmd` to completion with captured output, killing its whole process
/// group if it takes longer than `timeout`. Like `Command::output`, a
/// non-zero exit is not an error; a timeout or spawn failure is.
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = describe(&cmd);
    // Own process group so a timeout can kill everything the command forked.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning `{desc}`"))?;

    // Drain both pipes on threads so a chatty child can't block on a full
    // pipe while we poll for its exit.
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for (idx, pipe) in pipes.into_iter().enumerate() {
        if let Some(mut pipe) = pipe {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send((idx, buf));
            });
        }
    }
    drop(tx);

    let pgid = child.id();
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        signal_group(pgid, libc::SIGKILL);
        let _ = wait_child(&mut child, REAP_TIMEOUT);
    }

    // A grandchild that left the group could keep a pipe open forever;
    // give the readers a bounded grace period and move on.
    let mut bufs = [Vec::new(), Vec::new()];
    let grace = Instant::now() + Duration::from_secs(2);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((idx, buf)) => bufs[idx] = buf,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = bufs;
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{desc}` timed out after {timeout:?} (killed); stderr: {}",
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

/// Like [`run_bounded`] but a non-zero exit is an error, and stdout is
/// returned as a string.
pub(crate) fn run_ok(cmd: Command) -> Result<String> {
    let desc = describe(&cmd);
    let out = run_bounded(cmd, CMD_TIMEOUT)?;
    check_status(&desc, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns a failed [`Output`] into an error carrying its stderr.
pub(crate) fn check_status(desc: &str, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let how = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".to_string(),
    };
    bail!(
        "`{desc}` failed ({how}): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `ip ARGS...` in the root namespace's context (used with `-n NS` or
/// `netns ...` subcommands only; the harness never changes root-namespace
/// links or routes).
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(ip_bin());
    cmd.args(args);
    run_ok(cmd)
}

/// True if `pid` names a live process (EPERM also means "exists").
pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
