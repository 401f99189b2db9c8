//! Hooks and failure commands: shell command lines the daemon runs around its resources
//! (pre/post start and stop, role changes, an escalation's `run = "..."`), with the same
//! timeout, process-group kill and bounded output capture as exec resources.

use std::time::Duration;

use crate::command::run_shell;
use crate::error::{Action, ResourceError};

/// Runs `command_line` with `/bin/sh -c` and `env`, bounded by `timeout`. `name` labels the
/// log lines and errors (for example `hook:pre_start`). A non-zero exit is an error.
pub async fn run_hook(
    name: &str,
    command_line: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), ResourceError> {
    run_shell(name, Action::Hook, command_line, env, timeout)
        .await?
        .success_or_failed(name, Action::Hook)
}
