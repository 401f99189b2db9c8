//! The `exec` kind: a resource driven by shell command lines, one each for
//! start, stop and (optionally) monitor, run with `/bin/sh -c`.
//!
//! The commands themselves must be idempotent (as OCF agents are): start
//! succeeds on a running resource and stop on a stopped one. Each command
//! gets `UNDERSTUDY_RESOURCE`, `UNDERSTUDY_ACTION` and `UNDERSTUDY_PAIR` in
//! its environment so one script can serve several resources and actions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use understudy_config::{ExecResourceConfig, ResourceConfig};

use crate::command::{self, Finished};
use crate::error::{Action, ResourceError};
use crate::{BoxFuture, Health, Resource};

/// The exit status with which a monitor command says "cleanly not running",
/// borrowed from OCF (`OCF_NOT_RUNNING`) so existing agents' conventions
/// carry over.
pub const MONITOR_NOT_RUNNING: i32 = 7;

/// A resource run by shell commands (`kind = "exec"`).
///
/// Each action has its own timeout; on timeout the action's whole process
/// group is killed. A command that exits non-zero fails the action with its
/// status and the tail of its stderr. Output is logged line by line through
/// `tracing` (stdout at info, stderr at warn) with `resource` and `action`
/// fields.
///
/// Monitoring: exit 0 is [`Health::Running`], exit 7 is [`Health::Stopped`],
/// anything else is [`Health::Failed`] with the stderr tail. Without a
/// monitor command the resource counts as running when its last start
/// succeeded and no stop came since.
#[derive(Debug)]
pub struct ExecResource {
    name: String,
    pair: String,
    start: String,
    stop: String,
    monitor: Option<String>,
    start_timeout: Duration,
    stop_timeout: Duration,
    monitor_timeout: Duration,
    monitor_interval: Duration,
    /// The last start succeeded and no stop was attempted since: the only
    /// knowledge there is when no monitor command is configured.
    started: AtomicBool,
}

impl ExecResource {
    /// An exec resource named and timed by `cfg`, running the commands in
    /// `exec`, for the pair named `pair`.
    ///
    /// `exec` is passed separately from `cfg` (rather than extracted from
    /// `cfg.kind`) so that construction cannot fail on another kind.
    pub fn new(cfg: &ResourceConfig, exec: &ExecResourceConfig, pair: &str) -> Self {
        Self {
            name: cfg.name.clone(),
            pair: pair.to_owned(),
            start: exec.start.clone(),
            stop: exec.stop.clone(),
            monitor: exec.monitor.clone(),
            start_timeout: Duration::from_millis(cfg.start_timeout_ms),
            stop_timeout: Duration::from_millis(cfg.stop_timeout_ms),
            monitor_timeout: Duration::from_millis(cfg.monitor_timeout_ms),
            monitor_interval: Duration::from_millis(cfg.monitor_interval_ms),
            started: AtomicBool::new(false),
        }
    }

    /// Run one command for `action` with the resource's environment.
    async fn run(
        &self,
        action: Action,
        command_line: &str,
        timeout: Duration,
    ) -> Result<Finished, ResourceError> {
        let env = [
            ("UNDERSTUDY_RESOURCE", self.name.as_str()),
            ("UNDERSTUDY_ACTION", action.as_str()),
            ("UNDERSTUDY_PAIR", self.pair.as_str()),
        ];
        command::run_shell(&self.name, action, command_line, &env, timeout).await
    }
}

impl Resource for ExecResource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "exec"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            // Cleared first: a start that fails or times out leaves the
            // resource in an unknown state, which must not read as running.
            self.started.store(false, Ordering::SeqCst);
            self.run(Action::Start, &self.start, self.start_timeout)
                .await?
                .success_or_failed(&self.name, Action::Start)?;
            self.started.store(true, Ordering::SeqCst);
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            // Cleared whatever the outcome: after a stop attempt nothing
            // vouches for the resource running any more.
            self.started.store(false, Ordering::SeqCst);
            self.run(Action::Stop, &self.stop, self.stop_timeout)
                .await?
                .success_or_failed(&self.name, Action::Stop)
        })
    }

    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            let Some(command_line) = &self.monitor else {
                return Ok(if self.started.load(Ordering::SeqCst) {
                    Health::Running
                } else {
                    Health::Stopped
                });
            };
            let finished = self
                .run(Action::Monitor, command_line, self.monitor_timeout)
                .await?;
            Ok(match finished.status.code() {
                Some(0) => Health::Running,
                Some(MONITOR_NOT_RUNNING) => Health::Stopped,
                _ => {
                    // The message keeps the stderr tail when there is one
                    // (what the operator needs), else says how it ended.
                    let err = finished.failed(&self.name, Action::Monitor);
                    tracing::warn!(resource = %self.name, error = %err, "monitor reports failure");
                    match err {
                        ResourceError::Failed { stderr_tail, .. } if !stderr_tail.is_empty() => {
                            Health::Failed(stderr_tail)
                        }
                        other => Health::Failed(other.to_string()),
                    }
                }
            })
        })
    }

    fn monitor_interval(&self) -> Duration {
        self.monitor_interval
    }
}
