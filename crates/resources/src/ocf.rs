//! The `ocf` kind: a Pacemaker OCF resource agent
//! (`<ocf_root>/resource.d/<provider>/<type>`), run directly with the action
//! as its only argument and its parameters as `OCF_RESKEY_*` variables, the
//! way Pacemaker runs it, so the hundred-odd agents of Debian's
//! `resource-agents` package (and any site-written ones) can be used as is.
//!
//! Agents are run through the same command runner as exec resources: own
//! process group, timeout that kills the group, output logged, stderr tail
//! kept. Their exit codes follow the OCF protocol and are reported by name
//! (see [`ocf_code_name`]).
//!
//! The integration tests drive real agents from `resource-agents`
//! (`Dummy`, `Filesystem`); `.ci/run` (through `scripts/setup.sh`) must
//! install that package, or those tests fail under `CI=true`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::command::{self, Finished, Stdout};
use crate::error::{Action, ResourceError};
use crate::{BoxFuture, Health, Resource};

/// The action succeeded; for monitor, the resource is running.
pub const OCF_SUCCESS: i32 = 0;
/// A generic or unspecified error.
pub const OCF_ERR_GENERIC: i32 = 1;
/// The parameters are wrong for this instance (e.g. a path that does not
/// exist on this node).
pub const OCF_ERR_ARGS: i32 = 2;
/// The agent does not implement the action.
pub const OCF_ERR_UNIMPLEMENTED: i32 = 3;
/// Insufficient privileges.
pub const OCF_ERR_PERM: i32 = 4;
/// Something the agent needs is not installed on this node.
pub const OCF_ERR_INSTALLED: i32 = 5;
/// The configuration is wrong whatever the node (e.g. a required parameter
/// is missing).
pub const OCF_ERR_CONFIGURED: i32 = 6;
/// The resource is cleanly stopped.
pub const OCF_NOT_RUNNING: i32 = 7;
/// The resource is running in the promoted role.
pub const OCF_RUNNING_PROMOTED: i32 = 8;
/// The resource failed in the promoted role.
pub const OCF_FAILED_PROMOTED: i32 = 9;
/// The resource is running but degraded.
pub const OCF_DEGRADED: i32 = 190;
/// The resource is running, promoted, but degraded.
pub const OCF_DEGRADED_PROMOTED: i32 = 191;

/// The OCF name of an agent exit code, e.g. `"OCF_ERR_CONFIGURED"` for 6,
/// or `"unknown OCF exit code"` for a code the protocol does not define.
pub fn ocf_code_name(code: i32) -> &'static str {
    match code {
        OCF_SUCCESS => "OCF_SUCCESS",
        OCF_ERR_GENERIC => "OCF_ERR_GENERIC",
        OCF_ERR_ARGS => "OCF_ERR_ARGS",
        OCF_ERR_UNIMPLEMENTED => "OCF_ERR_UNIMPLEMENTED",
        OCF_ERR_PERM => "OCF_ERR_PERM",
        OCF_ERR_INSTALLED => "OCF_ERR_INSTALLED",
        OCF_ERR_CONFIGURED => "OCF_ERR_CONFIGURED",
        OCF_NOT_RUNNING => "OCF_NOT_RUNNING",
        OCF_RUNNING_PROMOTED => "OCF_RUNNING_PROMOTED",
        OCF_FAILED_PROMOTED => "OCF_FAILED_PROMOTED",
        OCF_DEGRADED => "OCF_DEGRADED",
        OCF_DEGRADED_PROMOTED => "OCF_DEGRADED_PROMOTED",
        _ => "unknown OCF exit code",
    }
}

/// The prefix of the variables that carry an agent's parameters.
const RESKEY_PREFIX: &str = "OCF_RESKEY_";

/// A resource managed by an OCF resource agent (`kind = "ocf"`).
///
/// * start: exit 0 is success, anything else fails the start.
/// * stop: exit 0 or 7 (`OCF_NOT_RUNNING`) is success, so stopping a
///   stopped resource is fine even with an agent that says so.
/// * monitor: 0, 8, 190 and 191 are [`Health::Running`] (the degraded codes
///   log a warning: the resource still serves), 7 is [`Health::Stopped`],
///   anything else is [`Health::Failed`] with the code's name and the
///   agent's stderr tail.
///
/// Failures are [`ResourceError::Agent`], whose message names the OCF code,
/// e.g. `resource db: start failed: OCF_ERR_CONFIGURED (6): <stderr>`. An
/// agent killed by a signal is [`ResourceError::Failed`]; an agent that
/// cannot be run (missing, not executable) is [`ResourceError::Io`] naming
/// its path.
///
/// Pacemaker's operation meta attributes are passed as it passes them:
/// `OCF_RESKEY_CRM_meta_timeout` is the action's timeout in milliseconds,
/// and `OCF_RESKEY_CRM_meta_interval` is the monitor interval for monitor
/// (0 for the other actions). The interval matters: agents treat a monitor
/// with interval 0 as a one-off "probe", and these monitors are recurring.
#[derive(Debug)]
pub struct OcfResource {
    name: String,
    pair: String,
    ocf_root: PathBuf,
    provider: String,
    agent_type: String,
    params: Vec<(String, String)>,
    start_timeout: Duration,
    stop_timeout: Duration,
    monitor_timeout: Duration,
    monitor_interval: Duration,
}

impl OcfResource {
    /// A resource named `name` of the pair `pair`, managed by the agent
    /// `<ocf_root>/resource.d/<provider>/<agent_type>` with the instance
    /// parameters `params` (names without the `OCF_RESKEY_` prefix).
    ///
    /// Nothing is checked here: the configuration has validated the names,
    /// and whether the agent exists is a property of the node at the time
    /// of the action, reported by the action.
    // Plain parameters rather than a config struct, so the resource does not
    // depend on how the configuration spells the kind.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        pair: &str,
        ocf_root: PathBuf,
        provider: &str,
        agent_type: &str,
        params: Vec<(String, String)>,
        start_timeout: Duration,
        stop_timeout: Duration,
        monitor_timeout: Duration,
        monitor_interval: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            pair: pair.to_owned(),
            ocf_root,
            provider: provider.to_owned(),
            agent_type: agent_type.to_owned(),
            params,
            start_timeout,
            stop_timeout,
            monitor_timeout,
            monitor_interval,
        }
    }

    /// The agent's path: `<ocf_root>/resource.d/<provider>/<agent_type>`.
    pub fn agent_path(&self) -> PathBuf {
        self.ocf_root
            .join("resource.d")
            .join(&self.provider)
            .join(&self.agent_type)
    }

    /// Run the agent's `validate-all`: whether the parameters make sense on
    /// this node, without touching the resource. Bounded by the monitor
    /// timeout (it is a check, like a monitor).
    pub async fn validate_all(&self) -> Result<(), ResourceError> {
        let finished = self
            .run(Action::ValidateAll, Stdout::Log, self.monitor_timeout)
            .await?;
        self.success_or_agent_error(Action::ValidateAll, finished)
    }

    /// Run the agent's `meta-data` and return what it printed: the XML
    /// description of the agent (`<resource-agent ...>`), its parameters and
    /// advised timeouts. Bounded by the monitor timeout.
    pub async fn meta_data(&self) -> Result<String, ResourceError> {
        let finished = self
            .run(Action::MetaData, Stdout::Capture, self.monitor_timeout)
            .await?;
        if finished.stdout_cut {
            // Truncated XML is no description at all; say so rather than
            // hand the caller something that fails to parse.
            return Err(self.io_error(
                Action::MetaData,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "meta-data of {} is larger than {} bytes",
                        self.agent_path().display(),
                        command::STDOUT_CAPTURE_BYTES
                    ),
                ),
            ));
        }
        if finished.status.code() == Some(OCF_SUCCESS) {
            Ok(finished.stdout)
        } else {
            Err(self.agent_error(Action::MetaData, finished))
        }
    }

    /// Run the agent for `action` (whose name is the OCF action's) with the
    /// OCF environment, bounded by `timeout`.
    async fn run(
        &self,
        action: Action,
        stdout: Stdout,
        timeout: Duration,
    ) -> Result<Finished, ResourceError> {
        let agent = self.agent_path();
        let command = self
            .command(&agent, action, timeout)
            .map_err(|err| self.io_error(action, err))?;
        command::run(&self.name, action, command, stdout, timeout)
            .await
            .map_err(|err| match err {
                // The runner's spawn error does not say what it tried to run;
                // "No such file or directory" alone sends the operator
                // looking in the wrong place.
                ResourceError::Io { source, .. } => {
                    self.io_error(action, describe_spawn_error(&agent, source))
                }
                other => other,
            })
    }

    /// The command running `agent` for `action`: no shell, the action as the
    /// only argument, the OCF environment.
    fn command(&self, agent: &Path, action: Action, timeout: Duration) -> io::Result<Command> {
        // Defence in depth: the configuration only accepts such names, but a
        // `..` or `/` here would run a program outside the OCF root, and a
        // bad variable name would be mangled into the environment.
        for (what, part) in [("provider", &self.provider), ("type", &self.agent_type)] {
            if !is_agent_name_part(part) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid OCF agent {what} {part:?}"),
                ));
            }
        }
        if let Some((key, _)) = self.params.iter().find(|(key, _)| !is_param_name(key)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid OCF parameter name {key:?}"),
            ));
        }

        let interval = if action == Action::Monitor {
            self.monitor_interval
        } else {
            Duration::ZERO
        };
        let mut command = Command::new(agent);
        command.arg(action.as_str());
        // An agent's parameters must come from the configuration alone: a
        // stray OCF_RESKEY_* in the daemon's own environment (left from
        // testing an agent by hand) would otherwise silently reach it.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with(RESKEY_PREFIX)) {
                command.env_remove(key);
            }
        }
        command
            .env("OCF_ROOT", &self.ocf_root)
            .env("OCF_FUNCTIONS_DIR", self.ocf_root.join("lib/heartbeat"))
            .env("OCF_RA_VERSION_MAJOR", "1")
            .env("OCF_RA_VERSION_MINOR", "0")
            .env("OCF_RESOURCE_INSTANCE", &self.name)
            .env("OCF_RESOURCE_TYPE", &self.agent_type)
            .env("OCF_RESOURCE_PROVIDER", &self.provider)
            .env("OCF_RESKEY_CRM_meta_timeout", millis(timeout))
            .env("OCF_RESKEY_CRM_meta_interval", millis(interval))
            // The same three as exec commands get, so one script can serve
            // as an exec command and an agent.
            .env("UNDERSTUDY_RESOURCE", &self.name)
            .env("UNDERSTUDY_ACTION", action.as_str())
            .env("UNDERSTUDY_PAIR", &self.pair);
        for (key, value) in &self.params {
            command.env(format!("{RESKEY_PREFIX}{key}"), value);
        }
        Ok(command)
    }

    /// `Ok` on `OCF_SUCCESS`, else the agent's error.
    fn success_or_agent_error(
        &self,
        action: Action,
        finished: Finished,
    ) -> Result<(), ResourceError> {
        if finished.status.code() == Some(OCF_SUCCESS) {
            Ok(())
        } else {
            Err(self.agent_error(action, finished))
        }
    }

    /// A finished, unsuccessful run as an error: [`ResourceError::Agent`]
    /// naming the OCF code, or [`ResourceError::Failed`] when a signal
    /// killed the agent (there is no code to name).
    fn agent_error(&self, action: Action, finished: Finished) -> ResourceError {
        match finished.status.code() {
            Some(code) => ResourceError::Agent {
                resource: self.name.clone(),
                action,
                code,
                code_name: ocf_code_name(code),
                stderr_tail: finished.stderr_tail,
            },
            None => finished.failed(&self.name, action),
        }
    }

    fn io_error(&self, action: Action, source: io::Error) -> ResourceError {
        ResourceError::Io {
            resource: self.name.clone(),
            action,
            source,
        }
    }
}

impl Resource for OcfResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ocf"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let finished = self
                .run(Action::Start, Stdout::Log, self.start_timeout)
                .await?;
            self.success_or_agent_error(Action::Start, finished)
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let finished = self
                .run(Action::Stop, Stdout::Log, self.stop_timeout)
                .await?;
            match finished.status.code() {
                // Not running is what a stop wants; some agents report an
                // already stopped resource that way rather than with 0.
                Some(OCF_SUCCESS | OCF_NOT_RUNNING) => Ok(()),
                _ => Err(self.agent_error(Action::Stop, finished)),
            }
        })
    }

    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let finished = self
                .run(Action::Monitor, Stdout::Log, self.monitor_timeout)
                .await?;
            Ok(match finished.status.code() {
                Some(OCF_SUCCESS | OCF_RUNNING_PROMOTED) => Health::Running,
                Some(code @ (OCF_DEGRADED | OCF_DEGRADED_PROMOTED)) => {
                    // Still serving, so no failover; but the operator should
                    // know before it gets worse.
                    tracing::warn!(
                        resource = %self.name,
                        code,
                        code_name = ocf_code_name(code),
                        reason = %finished.stderr_tail,
                        "agent reports the resource degraded"
                    );
                    Health::Running
                }
                Some(OCF_NOT_RUNNING) => Health::Stopped,
                _ => {
                    let err = self.agent_error(Action::Monitor, finished);
                    tracing::warn!(resource = %self.name, error = %err, "monitor reports failure");
                    Health::Failed(health_text(&err))
                }
            })
        })
    }

    fn monitor_interval(&self) -> Duration {
        self.monitor_interval
    }
}

/// What a failed monitor reports as [`Health::Failed`]: the error without
/// the "resource X: monitor failed: " that the state's context already
/// gives, e.g. `OCF_ERR_GENERIC (1): <stderr tail>`.
fn health_text(err: &ResourceError) -> String {
    match err {
        ResourceError::Agent {
            code,
            code_name,
            stderr_tail,
            ..
        } if stderr_tail.is_empty() => format!("{code_name} ({code})"),
        ResourceError::Agent {
            code,
            code_name,
            stderr_tail,
            ..
        } => format!("{code_name} ({code}): {stderr_tail}"),
        other => other.to_string(),
    }
}

/// A spawn error of `agent` as a message that names it, and for a missing
/// agent says that it is not installed (what Pacemaker reports as
/// `OCF_ERR_INSTALLED`).
fn describe_spawn_error(agent: &Path, source: io::Error) -> io::Error {
    let kind = source.kind();
    let message = if kind == io::ErrorKind::NotFound && !agent.exists() {
        format!(
            "OCF agent {} is not installed (OCF_ERR_INSTALLED): {source}",
            agent.display()
        )
    } else if kind == io::ErrorKind::NotFound {
        // The file is there, so what is missing is its interpreter (the
        // `#!` line names a program that does not exist).
        format!(
            "OCF agent {}: its interpreter is missing: {source}",
            agent.display()
        )
    } else {
        format!("OCF agent {}: {source}", agent.display())
    };
    io::Error::new(kind, message)
}

/// Whether `part` is an acceptable provider or type name:
/// `[A-Za-z0-9_.-]+`, not `.` or `..` (the configuration's rule).
fn is_agent_name_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `key` is an acceptable parameter name: `[A-Za-z0-9_]+`, which is
/// what a shell agent can read as a variable.
fn is_param_name(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `duration` in whole milliseconds, as OCF meta attributes are written.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dummy(params: Vec<(String, String)>) -> OcfResource {
        OcfResource::new(
            "db",
            "pair1",
            PathBuf::from("/usr/lib/ocf"),
            "heartbeat",
            "Dummy",
            params,
            Duration::from_secs(20),
            Duration::from_secs(30),
            Duration::from_millis(5_500),
            Duration::from_secs(10),
        )
    }

    fn env_of(command: &Command) -> Vec<(String, Option<String>)> {
        command
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    fn get(env: &[(String, Option<String>)], key: &str) -> Option<String> {
        env.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    }

    #[test]
    fn code_names() {
        assert_eq!(ocf_code_name(0), "OCF_SUCCESS");
        assert_eq!(ocf_code_name(6), "OCF_ERR_CONFIGURED");
        assert_eq!(ocf_code_name(7), "OCF_NOT_RUNNING");
        assert_eq!(ocf_code_name(191), "OCF_DEGRADED_PROMOTED");
        assert_eq!(ocf_code_name(42), "unknown OCF exit code");
        assert_eq!(ocf_code_name(-1), "unknown OCF exit code");
    }

    #[test]
    fn command_runs_the_agent_with_the_ocf_environment() {
        let resource = dummy(vec![
            ("state".to_owned(), "/tmp/x y".to_owned()),
            ("fake".to_owned(), "$(reboot)".to_owned()),
        ]);
        let agent = resource.agent_path();
        assert_eq!(agent, Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy"));
        let command = resource
            .command(&agent, Action::Monitor, resource.monitor_timeout)
            .expect("command");
        let std = command.as_std();
        assert_eq!(std.get_program(), agent.as_os_str());
        let args: Vec<_> = std.get_args().collect();
        assert_eq!(args, ["monitor"]);
        let env = env_of(&command);
        for (key, value) in [
            ("OCF_ROOT", "/usr/lib/ocf"),
            ("OCF_FUNCTIONS_DIR", "/usr/lib/ocf/lib/heartbeat"),
            ("OCF_RA_VERSION_MAJOR", "1"),
            ("OCF_RA_VERSION_MINOR", "0"),
            ("OCF_RESOURCE_INSTANCE", "db"),
            ("OCF_RESOURCE_TYPE", "Dummy"),
            ("OCF_RESOURCE_PROVIDER", "heartbeat"),
            ("OCF_RESKEY_CRM_meta_timeout", "5500"),
            ("OCF_RESKEY_CRM_meta_interval", "10000"),
            ("OCF_RESKEY_state", "/tmp/x y"),
            // Passed verbatim: no shell ever sees it.
            ("OCF_RESKEY_fake", "$(reboot)"),
            ("UNDERSTUDY_PAIR", "pair1"),
            ("UNDERSTUDY_ACTION", "monitor"),
        ] {
            assert_eq!(get(&env, key).as_deref(), Some(value), "{key}");
        }

        let start = resource
            .command(&agent, Action::Start, resource.start_timeout)
            .expect("command");
        let env = env_of(&start);
        assert_eq!(
            get(&env, "OCF_RESKEY_CRM_meta_timeout").as_deref(),
            Some("20000")
        );
        // Only a recurring monitor has an interval.
        assert_eq!(
            get(&env, "OCF_RESKEY_CRM_meta_interval").as_deref(),
            Some("0")
        );
        let args: Vec<_> = start.as_std().get_args().collect();
        assert_eq!(args, ["start"]);

        let validate = resource
            .command(&agent, Action::ValidateAll, resource.monitor_timeout)
            .expect("command");
        let args: Vec<_> = validate.as_std().get_args().collect();
        assert_eq!(args, ["validate-all"]);
    }

    #[test]
    fn bad_names_are_refused_before_running_anything() {
        let mut resource = dummy(vec![("bad=name".to_owned(), "v".to_owned())]);
        let agent = resource.agent_path();
        let err = resource
            .command(&agent, Action::Start, resource.start_timeout)
            .expect_err("bad parameter name");
        assert!(err.to_string().contains("\"bad=name\""), "{err}");

        resource.params.clear();
        resource.provider = "..".to_owned();
        let err = resource
            .command(&agent, Action::Start, resource.start_timeout)
            .expect_err("bad provider");
        assert!(err.to_string().contains("provider \"..\""), "{err}");

        resource.provider = "heartbeat".to_owned();
        resource.agent_type = "../../../bin/sh".to_owned();
        assert!(resource
            .command(&agent, Action::Start, resource.start_timeout)
            .is_err());
    }

    #[test]
    fn failed_health_names_the_code() {
        let err = ResourceError::Agent {
            resource: "db".to_owned(),
            action: Action::Monitor,
            code: 1,
            code_name: ocf_code_name(1),
            stderr_tail: "disk gone".to_owned(),
        };
        assert_eq!(health_text(&err), "OCF_ERR_GENERIC (1): disk gone");
        assert_eq!(
            err.to_string(),
            "resource db: monitor failed: OCF_ERR_GENERIC (1): disk gone"
        );
        let quiet = ResourceError::Agent {
            resource: "db".to_owned(),
            action: Action::Monitor,
            code: 6,
            code_name: ocf_code_name(6),
            stderr_tail: String::new(),
        };
        assert_eq!(health_text(&quiet), "OCF_ERR_CONFIGURED (6)");
    }
}
