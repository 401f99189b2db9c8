//! Resources of an Understudy pair: the things the active node runs
//! (applications, addresses, ...), started in configuration order on
//! promotion and stopped in reverse on demotion.
//!
//! Every kind of resource implements the [`Resource`] trait: idempotent
//! [`start`](Resource::start) and [`stop`](Resource::stop), a
//! [`monitor`](Resource::monitor) that reports [`Health`], and the interval at
//! which to monitor. [`build`] turns one validated
//! [`ResourceConfig`] into the matching
//! implementation. Today the only kind is [`ExecResource`] (shell command
//! lines); the trait is shaped so that planned kinds (a virtual IP managed
//! over netlink, systemd units, Pacemaker OCF agents, DNS updates) fit
//! without changing callers.
//!
//! [`ResourceSet`] holds the ordered resources of a node and their
//! [`ResourceState`]s: [`ResourceSet::start_all`] starts them in order and
//! rolls back on the first failure, [`ResourceSet::stop_all`] stops them in
//! reverse and tries every one, and [`ResourceSet::states`] feeds
//! `understudy status`.
//!
//! The trait's methods return [`BoxFuture`]s rather than being `async fn`s so
//! that `Box<dyn Resource>` works on the crate's minimum Rust version without
//! the `async-trait` crate.

mod command;
pub mod dns;
mod error;
mod exec;
mod hook;
pub mod ocf;
mod set;
pub mod systemd;
pub mod vip;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use understudy_config::{ResourceConfig, ResourceKind};

pub use dns::DnsResource;
pub use error::{Action, ResourceError};
pub use exec::{ExecResource, MONITOR_NOT_RUNNING};
pub use hook::run_hook;
pub use ocf::{ocf_code_name, OcfResource};
pub use set::{ResourceSet, ResourceState};
pub use systemd::SystemdResource;
pub use vip::VipResource;

/// A boxed, sendable future borrowing from `'a`: what [`Resource`] methods
/// return, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`Resource::monitor`] run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The resource is up and working.
    Running,
    /// The resource is cleanly not running (OCF's "not running", exit 7 for
    /// an exec monitor).
    Stopped,
    /// The resource is in a bad state: running but unhealthy, or half up.
    /// The text says why (for an exec monitor, the tail of its stderr).
    Failed(String),
}

/// One managed resource of a kind (exec, and later vip, systemd, ocf, dns).
///
/// Contract for implementations, which [`ResourceSet`] relies on:
///
/// * [`start`](Self::start) and [`stop`](Self::stop) are idempotent: starting
///   a running resource and stopping a stopped one succeed without effect.
///   The pair may repeat either after a crash, a failed promotion or a
///   switchover, without knowing what state the resource was left in.
/// * Every action enforces its own timeout and returns
///   [`ResourceError::Timeout`] when it runs out, leaving nothing of the
///   action running: a stuck action must not stall failover.
/// * Errors name the resource and the action.
pub trait Resource: Send + Sync {
    /// The resource's name from the configuration.
    fn name(&self) -> &str;

    /// The kind, as written in the configuration (`"exec"`, ...).
    fn kind(&self) -> &'static str;

    /// Bring the resource up. Starting a running resource is `Ok`.
    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>>;

    /// Take the resource down. Stopping a stopped resource is `Ok`.
    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>>;

    /// Check the resource once. `Err` means the check itself could not be
    /// done (it timed out, or could not be run); a check that ran and found
    /// a problem is `Ok(Health::Failed(..))`.
    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>>;

    /// How long to wait between two [`monitor`](Self::monitor) runs.
    fn monitor_interval(&self) -> Duration;
}

/// Build the resource described by `cfg` for the pair named `pair` (the pair
/// name is handed to the resource's commands and agents).
///
/// Fails for a kind this build cannot run yet, so the daemon refuses to start rather than
/// pretend to manage the resource.
/// `node_index` is this node's place in the config (0 or 1): a DNS identity publishes that
/// node's address.
pub fn build(
    cfg: &ResourceConfig,
    pair: &str,
    node_index: usize,
) -> Result<Box<dyn Resource>, String> {
    let ms = Duration::from_millis;
    // Exhaustive on purpose: a new kind in the configuration does not
    // compile until it has an arm here.
    match &cfg.kind {
        ResourceKind::Exec(exec) => Ok(Box::new(ExecResource::new(cfg, exec, pair))),
        ResourceKind::Ocf(ocf) => Ok(Box::new(OcfResource::new(
            &cfg.name,
            pair,
            ocf.ocf_root.clone(),
            &ocf.provider,
            &ocf.agent_type,
            ocf.params.clone(),
            ms(cfg.start_timeout_ms),
            ms(cfg.stop_timeout_ms),
            ms(cfg.monitor_timeout_ms),
            ms(cfg.monitor_interval_ms),
        ))),
        ResourceKind::Systemd(unit) => Ok(Box::new(SystemdResource::new(
            &cfg.name,
            pair,
            &unit.unit,
            unit.user,
            ms(cfg.start_timeout_ms),
            ms(cfg.stop_timeout_ms),
            ms(cfg.monitor_timeout_ms),
            ms(cfg.monitor_interval_ms),
        ))),
        ResourceKind::Dns(dns) => Ok(Box::new(DnsResource::new(cfg, dns, node_index)?)),
        ResourceKind::Vip(vip) => Ok(Box::new(VipResource::new(cfg, vip)?)),
    }
}
