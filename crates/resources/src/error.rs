//! The actions a resource can be asked to do, and the error every action
//! reports, always naming the resource and the action so a log line or a
//! status message stands on its own.

use std::fmt;
use std::io;

/// One of the things a resource can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Bring the resource up.
    Start,
    /// Take the resource down.
    Stop,
    /// Check the resource.
    Monitor,
    /// A hook or failure command run around the resources (not one of the resource's
    /// own actions).
    Hook,
    /// Check an OCF agent's configuration without touching the resource
    /// (OCF's `validate-all`).
    ValidateAll,
    /// Ask an OCF agent to describe itself (OCF's `meta-data`).
    MetaData,
}

impl Action {
    /// The action's name: `"start"`, `"stop"`, `"monitor"`, `"hook"`,
    /// `"validate-all"` or `"meta-data"` (the last two spelt as the OCF
    /// actions they are). Also the value of `UNDERSTUDY_ACTION` for exec
    /// commands and OCF agents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Monitor => "monitor",
            Self::Hook => "hook",
            Self::ValidateAll => "validate-all",
            Self::MetaData => "meta-data",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a resource action did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The action ran out of time. Everything it had started was killed.
    #[error("resource {resource}: {action} timed out after {after_ms} ms and was killed")]
    Timeout {
        /// The resource's name.
        resource: String,
        /// The action that timed out.
        action: Action,
        /// The timeout that ran out, in milliseconds.
        after_ms: u64,
    },
    /// The action ran to its end and reported failure (for an exec command:
    /// a non-zero exit status, or death by a signal).
    #[error(
        "resource {resource}: {action} failed: {}{}",
        describe_exit(.code, .signal),
        describe_stderr(.stderr_tail)
    )]
    Failed {
        /// The resource's name.
        resource: String,
        /// The action that failed.
        action: Action,
        /// The exit status, or `None` when the command was killed by a
        /// signal.
        code: Option<i32>,
        /// The signal that killed the command, if one did.
        signal: Option<i32>,
        /// The last ~2 KiB of the command's standard error, trimmed; empty
        /// when it wrote nothing there.
        stderr_tail: String,
    },
    /// A resource agent ran to its end and answered with an exit code its
    /// protocol gives a name to (an OCF agent's `OCF_ERR_CONFIGURED`, ...):
    /// the name tells the operator more than the bare number.
    #[error(
        "resource {resource}: {action} failed: {code_name} ({code}){}",
        describe_agent_stderr(.stderr_tail)
    )]
    Agent {
        /// The resource's name.
        resource: String,
        /// The action that failed.
        action: Action,
        /// The agent's exit status.
        code: i32,
        /// What the protocol calls `code`, e.g. `"OCF_ERR_CONFIGURED"`.
        code_name: &'static str,
        /// The last ~2 KiB of the agent's standard error, trimmed; empty
        /// when it wrote nothing there.
        stderr_tail: String,
    },
    /// The action could not be carried out at all (for an exec command: the
    /// shell could not be spawned or waited for).
    #[error("resource {resource}: could not run {action}: {source}")]
    Io {
        /// The resource's name.
        resource: String,
        /// The action that could not be run.
        action: Action,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl ResourceError {
    /// A failure that is not a process's exit (a netlink or DNS error, a refused
    /// address): the reason goes where a command's stderr would.
    pub fn other(resource: &str, action: Action, why: impl std::fmt::Display) -> ResourceError {
        ResourceError::Failed {
            resource: resource.to_owned(),
            action,
            code: None,
            signal: None,
            stderr_tail: why.to_string(),
        }
    }

    /// The name of the resource the error is about.
    pub fn resource(&self) -> &str {
        match self {
            Self::Timeout { resource, .. }
            | Self::Failed { resource, .. }
            | Self::Agent { resource, .. }
            | Self::Io { resource, .. } => resource,
        }
    }

    /// The action that did not succeed.
    pub fn action(&self) -> Action {
        match self {
            Self::Timeout { action, .. }
            | Self::Failed { action, .. }
            | Self::Agent { action, .. }
            | Self::Io { action, .. } => *action,
        }
    }
}

/// "exit status 3" / "killed by signal 9", for [`ResourceError::Failed`].
fn describe_exit(code: &Option<i32>, signal: &Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without an exit status".to_owned(),
    }
}

/// The stderr tail as a suffix of the message, or nothing when it is empty
/// so the message does not end in a dangling "stderr:".
fn describe_stderr(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {tail}")
    }
}

/// An agent's stderr tail as the end of the message: the agent's own words
/// (an OCF agent's `ocf-exit-reason:` line) read as the reason for the code.
fn describe_agent_stderr(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}
