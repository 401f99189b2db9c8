//! Hooks: operator commands run at pre/post start, pre/post stop and on every role
//! change, like keepalived's notify scripts and Patroni's callbacks, with the event in
//! environment variables. Hooks inform; they never gate a role change. A failing or
//! slow hook is logged and bounded by its timeout, and the pair goes on.

use std::time::Duration;

use tracing::{info, warn};
use understudy_config::{Config, HooksConfig};

/// The hook points and the environment every hook gets.
#[derive(Clone, Debug)]
pub struct Hooks {
    cfg: HooksConfig,
    base_env: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
    RoleChange,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::PreStart => "pre-start",
            HookPoint::PostStart => "post-start",
            HookPoint::PreStop => "pre-stop",
            HookPoint::PostStop => "post-stop",
            HookPoint::RoleChange => "role-change",
        }
    }
}

impl Hooks {
    pub fn new(cfg: &Config, me: usize) -> Hooks {
        Hooks {
            cfg: cfg.hooks.clone(),
            base_env: vec![
                ("UNDERSTUDY_PAIR".into(), cfg.pair.name.clone()),
                ("UNDERSTUDY_NODE".into(), cfg.nodes[me].name.clone()),
                ("UNDERSTUDY_PEER".into(), cfg.nodes[1 - me].name.clone()),
            ],
        }
    }

    fn command(&self, point: HookPoint) -> Option<&String> {
        match point {
            HookPoint::PreStart => self.cfg.pre_start.as_ref(),
            HookPoint::PostStart => self.cfg.post_start.as_ref(),
            HookPoint::PreStop => self.cfg.pre_stop.as_ref(),
            HookPoint::PostStop => self.cfg.post_stop.as_ref(),
            HookPoint::RoleChange => self.cfg.role_change.as_ref(),
        }
    }

    /// Runs the hook for `point`, if one is configured, and waits for it (bounded).
    pub async fn run(&self, point: HookPoint, extra: &[(String, String)]) {
        let Some(command) = self.command(point) else {
            return;
        };
        let mut env = self.base_env.clone();
        env.push(("UNDERSTUDY_EVENT".into(), point.as_str().into()));
        env.extend(extra.iter().cloned());
        let name = format!("hook:{}", point.as_str());
        run_logged(
            &name,
            command,
            &env,
            Duration::from_millis(self.cfg.timeout_ms),
        )
        .await;
    }
}

/// Runs a command line with its environment, logging the outcome; never fails.
pub async fn run_logged(name: &str, command: &str, env: &[(String, String)], timeout: Duration) {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match understudy_resources::run_hook(name, command, &pairs, timeout).await {
        Ok(()) => info!(hook = %name, "hook ran"),
        Err(e) => warn!(hook = %name, error = %e, "hook failed; carrying on"),
    }
}

/// A failure command from a resource's escalation ladder, run in the background.
pub async fn run_detached(command: String, env: Vec<(String, String)>) {
    run_logged("on_failure:run", &command, &env, Duration::from_secs(60)).await;
}
