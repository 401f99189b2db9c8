//! Running one command for a resource action: in its own process group,
//! with a timeout that kills the whole group, its output logged line by line
//! and only a bounded tail of its stderr kept.
//!
//! Kept apart from the exec kind because the other kinds that run programs
//! (OCF agents, `systemctl`, DNS update scripts, hooks) run them under
//! exactly the same rules. [`run_shell`] runs a shell command line; [`run`]
//! runs a prepared program directly (no shell, so agent paths and unit names
//! need no quoting) and can capture its stdout for callers that need the
//! answer (an agent's meta-data, `systemctl is-active`).

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::error::{Action, ResourceError};

/// How much of a command's stderr is kept for error messages.
pub(crate) const STDERR_TAIL_BYTES: usize = 2048;

/// How much of a command's stdout [`Stdout::Capture`] keeps. Far above what
/// the callers expect (a one-word `is-active` answer, an agent's meta-data
/// of some tens of KiB) yet bounded, so a runaway program cannot grow the
/// daemon's memory.
pub(crate) const STDOUT_CAPTURE_BYTES: usize = 1 << 20;

/// Longest line logged as one event; longer lines are logged in pieces so a
/// command printing megabytes without a newline cannot grow memory.
const MAX_LINE_BYTES: usize = 4096;

/// After the shell exits, how long to keep collecting what it wrote before
/// exiting. A background child (`daemon &`) inherits the pipes, so waiting
/// for end-of-file could take forever; everything the shell itself wrote is
/// already in the pipe by then and is read within microseconds.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How long to wait for the shell to die after SIGKILL before leaving its
/// reaping to tokio. SIGKILL cannot be caught, so this only matters for a
/// process stuck in the kernel.
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

/// What [`run`] does with a command's standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// Log each line at info level and keep nothing: the output is a message
    /// for the operator (an exec command's, an agent's start/stop).
    Log,
    /// Keep the first [`STDOUT_CAPTURE_BYTES`] in [`Finished::stdout`] and
    /// log each line only at debug level: the output is data for the
    /// caller, and a monitor run every second would otherwise flood the log.
    Capture,
}

/// How a command that ran to its end finished.
pub(crate) struct Finished {
    /// The command's exit status (the shell's, for [`run_shell`]).
    pub(crate) status: ExitStatus,
    /// The last [`STDERR_TAIL_BYTES`] of its stderr, trimmed.
    pub(crate) stderr_tail: String,
    /// With [`Stdout::Capture`], the start of its stdout (lossily decoded,
    /// not trimmed); otherwise empty.
    pub(crate) stdout: String,
    /// Whether stdout went on past [`STDOUT_CAPTURE_BYTES`] and was cut.
    pub(crate) stdout_cut: bool,
}

impl Finished {
    /// `Ok` on exit status 0, else [`ResourceError::Failed`] with the status
    /// and the stderr tail.
    pub(crate) fn success_or_failed(
        self,
        resource: &str,
        action: Action,
    ) -> Result<(), ResourceError> {
        if self.status.success() {
            return Ok(());
        }
        Err(self.failed(resource, action))
    }

    /// This outcome as a [`ResourceError::Failed`].
    pub(crate) fn failed(self, resource: &str, action: Action) -> ResourceError {
        use std::os::unix::process::ExitStatusExt;
        ResourceError::Failed {
            resource: resource.to_owned(),
            action,
            code: self.status.code(),
            signal: self.status.signal(),
            stderr_tail: self.stderr_tail,
        }
    }
}

/// Run `/bin/sh -c <command_line>` for `action` of `resource`, with `env`
/// added to the inherited environment, and wait at most `timeout` for the
/// shell to exit.
///
/// On timeout the shell's whole process group is killed with SIGKILL and
/// reaped, and [`ResourceError::Timeout`] is returned. Dropping the returned
/// future before it completes kills the group the same way, so an abandoned
/// action never lingers.
///
/// Background processes the command leaves behind keep running (that is how
/// an exec resource starts a daemon); their output goes on being logged
/// under this action until they close the pipes.
pub(crate) async fn run_shell(
    resource: &str,
    action: Action,
    command_line: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Finished, ResourceError> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(command_line)
        .envs(env.iter().copied());
    run(resource, action, command, Stdout::Log, timeout).await
}

/// Run `command` (program, arguments and environment already set by the
/// caller) for `action` of `resource` under the same rules as
/// [`run_shell`]: its own process group, killed whole on timeout or when
/// the future is dropped, stderr logged with a bounded tail kept, and stdout
/// handled as `stdout` says.
///
/// Its stdin, stdout, stderr and process group are set here, overriding
/// whatever the caller set.
pub(crate) async fn run(
    resource: &str,
    action: Action,
    mut command: Command,
    stdout: Stdout,
    timeout: Duration,
) -> Result<Finished, ResourceError> {
    let io_error = |source| ResourceError::Io {
        resource: resource.to_owned(),
        action,
        source,
    };

    command
        // Nothing to read: a command waiting on stdin would otherwise hang
        // until its timeout.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so a timeout can kill the command *and*
        // everything it started, not only the command.
        .process_group(0)
        .kill_on_drop(true);
    let program = command.as_std().get_program().to_owned();
    let mut child = command.spawn().map_err(io_error)?;
    // With `process_group(0)` the group id is the child's pid. `None` only
    // if the child was already reaped, which cannot have happened yet.
    let mut group = KillGroupOnDrop {
        pgid: child.id(),
        armed: true,
    };

    tracing::debug!(
        resource,
        action = action.as_str(),
        program = %program.to_string_lossy(),
        pid = ?group.pgid,
        "command started"
    );

    let name: Arc<str> = Arc::from(resource);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let head = Arc::new(Mutex::new(Head::default()));
    let mut pumps: Vec<JoinHandle<()>> = Vec::with_capacity(2);
    // Both pipes are read concurrently with the wait, so a chatty command
    // never blocks on a full pipe.
    if let Some(out) = child.stdout.take() {
        let (stream, sink) = match stdout {
            Stdout::Log => (Stream::Stdout, Sink::None),
            Stdout::Capture => (Stream::CapturedStdout, Sink::Head(Arc::clone(&head))),
        };
        pumps.push(tokio::spawn(pump(
            out,
            stream,
            Arc::clone(&name),
            action,
            sink,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            stderr,
            Stream::Stderr,
            Arc::clone(&name),
            action,
            Sink::Tail(Arc::clone(&tail)),
        )));
    }

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        // `group` still armed: dropping it kills whatever is left.
        Ok(Err(source)) => return Err(io_error(source)),
        Err(_elapsed) => {
            // Kill before reaping: while the child is an unreaped zombie its
            // pid cannot be reused, so the group id still means this group.
            group.kill();
            if tokio::time::timeout(REAP_AFTER_KILL, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    resource,
                    action = action.as_str(),
                    "killed command did not exit; leaving it to be reaped later"
                );
            }
            drain(pumps).await;
            let after_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            return Err(ResourceError::Timeout {
                resource: resource.to_owned(),
                action,
                after_ms,
            });
        }
    };
    // The command exited by itself: whatever it left in the background is
    // meant to keep running.
    group.armed = false;

    drain(pumps).await;
    let stderr_tail = lock(&tail).text();
    let (stdout, stdout_cut) = {
        let head = lock(&head);
        (String::from_utf8_lossy(&head.buf).into_owned(), head.cut)
    };
    tracing::debug!(resource, action = action.as_str(), %status, "command finished");
    Ok(Finished {
        status,
        stderr_tail,
        stdout,
        stdout_cut,
    })
}

/// The last [`STDERR_TAIL_BYTES`] of `text`, trimmed and prefixed with
/// "..." when cut: the same bounded tail as a command's stderr, for output
/// captured whole (`systemctl status`) that goes into a message.
pub(crate) fn tail_of(text: &str) -> String {
    let mut tail = Tail::default();
    tail.push(text.as_bytes());
    tail.text()
}

/// Give the output readers [`DRAIN_AFTER_EXIT`] to reach end-of-file. Those
/// that do not (a background child holds the pipe) are detached, not
/// aborted: closing the read end would kill that child with SIGPIPE the next
/// time it writes, and its output is still worth logging.
async fn drain(pumps: Vec<JoinHandle<()>>) {
    let all = async {
        for pump in pumps {
            // A reader that panicked has nothing more to give; its panic is
            // already reported by tokio.
            let _ = pump.await;
        }
    };
    // On timeout the handles are dropped, which detaches the tasks.
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, all).await;
}

/// Kills a process group with SIGKILL when dropped while still armed, so an
/// action whose future is dropped mid-way (or whose wait failed) leaves
/// nothing behind.
struct KillGroupOnDrop {
    pgid: Option<u32>,
    armed: bool,
}

impl KillGroupOnDrop {
    /// Kill the group now, and not again on drop.
    fn kill(mut self) {
        self.armed = false;
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.armed {
            if let Some(pgid) = self.pgid {
                kill_group(pgid);
            }
        }
    }
}

/// Send SIGKILL to every process in group `pgid`.
fn kill_group(pgid: u32) {
    // A group id of 0 or 1 would mean our own group or init's: never signal
    // those, whatever went wrong upstream.
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    // A negative pid addresses the process group.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        // ESRCH: the group is already gone, which is what we wanted.
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, error = %err, "could not kill process group");
        }
    }
}

/// Which output stream a line came from; decides its log level.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    /// Stdout kept for the caller ([`Stdout::Capture`]).
    CapturedStdout,
    Stderr,
}

/// Where a stream's bytes are kept besides the log.
enum Sink {
    None,
    Tail(Arc<Mutex<Tail>>),
    Head(Arc<Mutex<Head>>),
}

/// Read `reader` to end-of-file, logging each line (info for stdout, debug
/// for captured stdout, warn for stderr) and feeding the bytes to `sink`.
/// Memory stays bounded: one read buffer, one line of at most
/// [`MAX_LINE_BYTES`], and the tail or head.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    resource: Arc<str>,
    action: Action,
    sink: Sink,
) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::debug!(
                    resource = &*resource,
                    action = action.as_str(),
                    error = %err,
                    "reading command output failed"
                );
                break;
            }
        };
        let chunk = &buf[..n];
        match &sink {
            Sink::None => {}
            Sink::Tail(tail) => lock(tail).push(chunk),
            Sink::Head(head) => lock(head).push(chunk),
        }
        for &byte in chunk {
            if byte == b'\n' {
                log_line(stream, &resource, action, &line);
                line.clear();
            } else {
                if line.len() == MAX_LINE_BYTES {
                    log_line(stream, &resource, action, &line);
                    line.clear();
                }
                line.push(byte);
            }
        }
    }
    if !line.is_empty() {
        log_line(stream, &resource, action, &line);
    }
}

/// Log one line of command output.
fn log_line(stream: Stream, resource: &str, action: Action, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    match stream {
        Stream::Stdout => tracing::info!(resource, action = action.as_str(), "{text}"),
        Stream::CapturedStdout => tracing::debug!(resource, action = action.as_str(), "{text}"),
        Stream::Stderr => tracing::warn!(resource, action = action.as_str(), "{text}"),
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    /// Whether bytes were dropped from the front.
    cut: bool,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim only once the buffer is twice the bound, so a stream of small
        // writes costs amortised O(1) per byte instead of a shift per write.
        if self.buf.len() > 2 * STDERR_TAIL_BYTES {
            let excess = self.buf.len() - STDERR_TAIL_BYTES;
            self.buf.drain(..excess);
            self.cut = true;
        }
    }

    /// The tail as trimmed text, prefixed with "..." when its start was cut.
    fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(STDERR_TAIL_BYTES);
        let mut bytes = &self.buf[start..];
        let cut = self.cut || start > 0;
        if cut {
            // Do not start in the middle of a UTF-8 sequence: skip
            // continuation bytes (at most 3) instead of showing U+FFFD.
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|&&b| b & 0b1100_0000 == 0b1000_0000)
                .count();
            bytes = &bytes[skip..];
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if cut && !text.is_empty() {
            format!("...{text}")
        } else {
            text.to_owned()
        }
    }
}

/// The first [`STDOUT_CAPTURE_BYTES`] of a stream.
#[derive(Default)]
struct Head {
    buf: Vec<u8>,
    /// Whether bytes past the bound were dropped.
    cut: bool,
}

impl Head {
    fn push(&mut self, bytes: &[u8]) {
        let room = STDOUT_CAPTURE_BYTES - self.buf.len();
        if bytes.len() > room {
            self.cut = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Lock a mutex, ignoring poisoning: the tail is plain bytes, valid whatever
/// a panicking writer left behind.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        for i in 0..1000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.starts_with("..."));
        assert!(text.ends_with("line 999"));
        assert!(text.len() <= STDERR_TAIL_BYTES + 3);
        assert!(tail.buf.len() <= 2 * STDERR_TAIL_BYTES);
    }

    #[test]
    fn tail_does_not_start_inside_a_utf8_sequence() {
        let mut tail = Tail::default();
        // "é" is two bytes; an odd total length puts the cut inside one.
        let text = "é".repeat(STDERR_TAIL_BYTES + 1);
        tail.push(b"x");
        tail.push(text.as_bytes());
        assert!(!tail.text().contains('\u{FFFD}'));
    }

    #[test]
    fn head_keeps_the_first_bytes_and_marks_the_cut() {
        let mut head = Head::default();
        head.push(b"abc");
        assert!(!head.cut);
        head.push(&vec![b'x'; STDOUT_CAPTURE_BYTES]);
        assert!(head.cut);
        assert_eq!(head.buf.len(), STDOUT_CAPTURE_BYTES);
        assert!(head.buf.starts_with(b"abcx"));
        head.push(b"more");
        assert_eq!(head.buf.len(), STDOUT_CAPTURE_BYTES);
    }

    #[test]
    fn tail_of_text_is_bounded() {
        assert_eq!(tail_of("  short\n"), "short");
        let long = "line\n".repeat(1000);
        let tail = tail_of(&long);
        assert!(tail.starts_with("..."));
        assert!(tail.len() <= STDERR_TAIL_BYTES + 3);
    }

    #[tokio::test]
    async fn run_captures_stdout_and_passes_argv_without_a_shell() {
        let mut command = Command::new("/bin/echo");
        // Would be expanded or split by a shell; must arrive verbatim.
        command.arg("$HOME 'quoted'").arg("two");
        let finished = run(
            "r",
            Action::Monitor,
            command,
            Stdout::Capture,
            Duration::from_secs(10),
        )
        .await
        .expect("ran");
        assert!(finished.status.success());
        assert_eq!(finished.stdout, "$HOME 'quoted' two\n");
        assert!(!finished.stdout_cut);
    }

    #[tokio::test]
    async fn logged_stdout_is_not_kept() {
        let mut command = Command::new("/bin/echo");
        command.arg("hello");
        let finished = run(
            "r",
            Action::Start,
            command,
            Stdout::Log,
            Duration::from_secs(10),
        )
        .await
        .expect("ran");
        assert_eq!(finished.stdout, "");
    }

    #[test]
    fn short_tail_is_trimmed_and_not_marked() {
        let mut tail = Tail::default();
        tail.push(b"  oops\n");
        assert_eq!(tail.text(), "oops");
    }
}
