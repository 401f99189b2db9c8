//! The `systemd` kind: a systemd unit started, stopped and checked with
//! `systemctl`, against the system manager or (with `user`) the user
//! manager of the user running the daemon.
//!
//! `systemctl` is run directly (no shell) through the same command runner as
//! exec resources, so every call has the action's timeout and leaves nothing
//! behind. Talking D-Bus to the manager would save a process per call and
//! give typed answers, but needs a D-Bus client; `systemctl`'s exit codes and
//! `is-active` words are a stable interface and enough for start, stop and
//! monitor.
//!
//! A timeout kills `systemctl`, not the job it queued: systemd goes on
//! starting (or stopping) the unit. That is harmless because a start that
//! failed is followed by a stop (the resource set rolls back), and
//! `systemctl stop` replaces a pending start job.

use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::command::{self, Finished, Stdout};
use crate::error::{Action, ResourceError};
use crate::{BoxFuture, Health, Resource};

/// The program run for every action; looked up in `PATH` (the resource's
/// own, when [`SystemdResource::with_env`] sets one).
const SYSTEMCTL: &str = "systemctl";

/// `systemctl`'s exit status for "no such unit" (LSB's "program is not
/// installed"), as `stop` reports it for a unit that is not loaded.
const EXIT_NO_SUCH_UNIT: i32 = 5;

/// The longest the `systemctl status` run that explains a failure may take,
/// within what is left of the action's own timeout.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A systemd unit (`kind = "systemd"`).
///
/// * start: `systemctl [--user] start <unit>`, which waits for the start
///   job to finish and fails if the job failed. Starting an active unit is
///   a no-op.
/// * stop: `systemctl [--user] stop <unit>`, then `reset-failed`, so a unit
///   that had failed reads as cleanly stopped afterwards. Stopping a unit
///   that does not exist succeeds (it is certainly not running; the start
///   reports the missing unit).
/// * monitor: `systemctl [--user] is-active <unit>`: `active`, `reloading`,
///   `activating` (and `refreshing`) are [`Health::Running`], `inactive` is
///   [`Health::Stopped`], `failed` is [`Health::Failed`] with the tail of
///   `systemctl status`, and any other state (`deactivating`,
///   `maintenance`, ...) is [`Health::Failed`] naming it. No answer at all
///   (no manager to ask) is an error: the check could not be done.
///
/// A failed start is [`ResourceError::Failed`] with `systemctl`'s message
/// and the tail of `systemctl status` as its stderr tail.
#[derive(Debug)]
pub struct SystemdResource {
    name: String,
    pair: String,
    unit: String,
    user: bool,
    start_timeout: Duration,
    stop_timeout: Duration,
    monitor_timeout: Duration,
    monitor_interval: Duration,
    /// Added to `systemctl`'s environment; see [`Self::with_env`].
    env: Vec<(String, String)>,
}

impl SystemdResource {
    /// A resource named `name` of the pair `pair` for the unit `unit`
    /// (e.g. `nginx.service`), managed by the user manager when `user` is
    /// true, else by the system manager.
    // Plain parameters rather than a config struct, so the resource does not
    // depend on how the configuration spells the kind.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        pair: &str,
        unit: &str,
        user: bool,
        start_timeout: Duration,
        stop_timeout: Duration,
        monitor_timeout: Duration,
        monitor_interval: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            pair: pair.to_owned(),
            unit: unit.to_owned(),
            user,
            start_timeout,
            stop_timeout,
            monitor_timeout,
            monitor_interval,
            env: Vec::new(),
        }
    }

    /// Add `env` to the environment of every `systemctl` run, e.g.
    /// `XDG_RUNTIME_DIR` (where `systemctl --user` finds the user manager's
    /// socket) or `DBUS_SESSION_BUS_ADDRESS`, so the daemon can reach a user
    /// manager it was not started under. A `PATH` given here is also where
    /// `systemctl` is looked up.
    #[must_use]
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// The unit's name.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Whether the unit belongs to the user manager (`systemctl --user`).
    pub fn user(&self) -> bool {
        self.user
    }

    /// `systemctl [--user] --no-ask-password <verb> [extra...] -- <unit>`.
    fn command(&self, verb: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(SYSTEMCTL);
        if self.user {
            command.arg("--user");
        }
        // Never wait for a password prompt (polkit) that nobody will answer:
        // fail at once instead of at the timeout.
        command.arg("--no-ask-password").arg(verb).args(extra);
        // `--` so that a unit name can never be read as an option.
        command.arg("--").arg(&self.unit);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Run `systemctl <verb> <unit>` for `action`, bounded by `timeout`.
    async fn systemctl(
        &self,
        action: Action,
        verb: &str,
        extra: &[&str],
        stdout: Stdout,
        timeout: Duration,
    ) -> Result<Finished, ResourceError> {
        tracing::debug!(
            resource = %self.name,
            pair = %self.pair,
            unit = %self.unit,
            user = self.user,
            verb,
            "systemctl"
        );
        command::run(
            &self.name,
            action,
            self.command(verb, extra),
            stdout,
            timeout,
        )
        .await
    }

    /// The tail of `systemctl status <unit>`, to explain a failure; `None`
    /// when it cannot be had before `deadline` (the action's own timeout
    /// comes first) or says nothing.
    async fn status_tail(&self, action: Action, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = left.min(STATUS_TIMEOUT);
        if timeout.is_zero() {
            return None;
        }
        // `status` exits non-zero for any unit that is not active (3 for a
        // failed one); its output is what matters.
        match self
            .systemctl(
                action,
                "status",
                &["--no-pager", "--full", "--lines=10"],
                Stdout::Capture,
                timeout,
            )
            .await
        {
            Ok(finished) => {
                let tail = command::tail_of(&finished.stdout);
                (!tail.is_empty()).then_some(tail)
            }
            Err(err) => {
                tracing::debug!(resource = %self.name, error = %err, "systemctl status failed");
                None
            }
        }
    }
}

impl Resource for SystemdResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.start_timeout;
            let finished = self
                .systemctl(Action::Start, "start", &[], Stdout::Log, self.start_timeout)
                .await?;
            if finished.status.success() {
                return Ok(());
            }
            // systemctl's own message only says "see systemctl status"; put
            // what that says in the error, where the operator will look.
            let mut err = finished.failed(&self.name, Action::Start);
            if let ResourceError::Failed { stderr_tail, .. } = &mut err {
                if let Some(status) = self.status_tail(Action::Start, deadline).await {
                    stderr_tail.push('\n');
                    stderr_tail.push_str(&status);
                }
            }
            Err(err)
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.stop_timeout;
            let finished = self
                .systemctl(Action::Stop, "stop", &[], Stdout::Log, self.stop_timeout)
                .await?;
            match finished.status.code() {
                Some(0) => {}
                Some(EXIT_NO_SUCH_UNIT) => {
                    tracing::warn!(
                        resource = %self.name,
                        unit = %self.unit,
                        "unit not loaded; nothing to stop"
                    );
                    return Ok(());
                }
                _ => return Err(finished.failed(&self.name, Action::Stop)),
            }
            // A unit that failed stays "failed" after a stop until its
            // failure is reset, and the monitor would go on reporting a
            // failure of a resource the pair has deliberately stopped.
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                match self
                    .systemctl(Action::Stop, "reset-failed", &[], Stdout::Log, left)
                    .await
                {
                    Ok(finished) if !finished.status.success() => tracing::debug!(
                        resource = %self.name,
                        stderr = %finished.stderr_tail,
                        "reset-failed did not succeed"
                    ),
                    Ok(_) => {}
                    // The stop itself worked; a leftover "failed" mark is
                    // not worth failing it for.
                    Err(err) => {
                        tracing::debug!(resource = %self.name, error = %err, "reset-failed failed")
                    }
                }
            }
            Ok(())
        })
    }

    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.monitor_timeout;
            let finished = self
                .systemctl(
                    Action::Monitor,
                    "is-active",
                    &[],
                    Stdout::Capture,
                    self.monitor_timeout,
                )
                .await?;
            let state = finished.stdout.lines().next().unwrap_or("").trim();
            match classify(state) {
                Some(ActiveState::Running) => Ok(Health::Running),
                Some(ActiveState::Stopped) => Ok(Health::Stopped),
                Some(ActiveState::Failed) => {
                    let why = match self.status_tail(Action::Monitor, deadline).await {
                        Some(status) => format!("unit {} failed: {status}", self.unit),
                        None => format!("unit {} failed", self.unit),
                    };
                    tracing::warn!(resource = %self.name, "{why}");
                    Ok(Health::Failed(why))
                }
                Some(ActiveState::Other) => {
                    let why = format!("unit {} is {state}", self.unit);
                    tracing::warn!(resource = %self.name, "{why}");
                    Ok(Health::Failed(why))
                }
                // No state at all: systemctl could not ask the manager
                // (no bus, no user manager), so the check was not done.
                None => Err(finished.failed(&self.name, Action::Monitor)),
            }
        })
    }

    fn monitor_interval(&self) -> Duration {
        self.monitor_interval
    }
}

/// What an `is-active` answer means for the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActiveState {
    Running,
    Stopped,
    Failed,
    /// A state that is neither up nor cleanly down.
    Other,
}

/// Classify the first line of `systemctl is-active`; `None` for no answer.
fn classify(state: &str) -> Option<ActiveState> {
    Some(match state {
        "" => return None,
        // Reloading and refreshing units are up and serving; an activating
        // one is on its way (its start job has not failed), and calling it
        // failed would restart it in the middle of a slow start.
        "active" | "reloading" | "activating" | "refreshing" => ActiveState::Running,
        "inactive" => ActiveState::Stopped,
        "failed" => ActiveState::Failed,
        _ => ActiveState::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(user: bool) -> SystemdResource {
        SystemdResource::new(
            "web",
            "pair1",
            "nginx.service",
            user,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    fn args(command: &Command) -> Vec<String> {
        command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commands_address_the_right_manager_and_unit() {
        let system = resource(false);
        let command = system.command("start", &[]);
        assert_eq!(command.as_std().get_program(), "systemctl");
        assert_eq!(
            args(&command),
            ["--no-ask-password", "start", "--", "nginx.service"]
        );
        let user = resource(true).with_env(vec![("XDG_RUNTIME_DIR".into(), "/run/x".into())]);
        let command = user.command("is-active", &[]);
        assert_eq!(
            args(&command),
            [
                "--user",
                "--no-ask-password",
                "is-active",
                "--",
                "nginx.service"
            ]
        );
        let env: Vec<_> = command.as_std().get_envs().collect();
        assert_eq!(
            env,
            [(
                std::ffi::OsStr::new("XDG_RUNTIME_DIR"),
                Some(std::ffi::OsStr::new("/run/x"))
            )]
        );
    }

    #[test]
    fn is_active_answers_map_to_health() {
        for (state, expected) in [
            ("active", Some(ActiveState::Running)),
            ("reloading", Some(ActiveState::Running)),
            ("activating", Some(ActiveState::Running)),
            ("refreshing", Some(ActiveState::Running)),
            ("inactive", Some(ActiveState::Stopped)),
            ("failed", Some(ActiveState::Failed)),
            ("deactivating", Some(ActiveState::Other)),
            ("maintenance", Some(ActiveState::Other)),
            ("unknown", Some(ActiveState::Other)),
            ("", None),
        ] {
            assert_eq!(classify(state), expected, "{state:?}");
        }
    }
}
