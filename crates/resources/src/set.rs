//! The ordered resources of a node and what is known of each: started in
//! order on promotion, stopped in reverse on demotion, with each resource's
//! state kept for `understudy status`.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{Action, ResourceError};
use crate::{Health, Resource};

/// What is known of one resource in a [`ResourceSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// Not running: never started, stopped, or monitored as stopped.
    Stopped,
    /// Its start is in progress.
    Starting,
    /// Started, or monitored as running.
    Running,
    /// Its stop is in progress.
    Stopping,
    /// An action failed or the monitor found a problem; the text says which.
    Failed(String),
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Starting => f.write_str("starting"),
            Self::Running => f.write_str("running"),
            Self::Stopping => f.write_str("stopping"),
            Self::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// A resource's state and how many transitions (start/stop steps) it has
/// been through, so a monitor result that raced with a transition can be
/// recognised as stale and dropped.
struct Slot {
    state: ResourceState,
    transitions: u64,
}

/// The ordered resources of a node.
///
/// [`start_all`](Self::start_all) and [`stop_all`](Self::stop_all) are
/// serialised: one waits for the other, so a demotion never interleaves
/// with a promotion. [`monitor_once`](Self::monitor_once) and
/// [`states`](Self::states) never wait for them.
///
/// Resources are addressed by index, in configuration order; an index at or
/// beyond [`len`](Self::len) is a programming error and panics, as slice
/// indexing does.
pub struct ResourceSet {
    resources: Vec<Box<dyn Resource>>,
    /// Parallel to `resources`. A std mutex: it is never held across an
    /// `.await`, and `states` must be callable from synchronous code.
    slots: Mutex<Vec<Slot>>,
    /// Held for the whole of `start_all` / `stop_all`.
    transition: tokio::sync::Mutex<()>,
    /// Whether a restart may start a resource: opened by `start_all`, closed by
    /// [`forbid_restarts`](ResourceSet::forbid_restarts) the moment the node decides to
    /// leave the active role, so a restart decided just before cannot start anything after.
    restarts_allowed: std::sync::atomic::AtomicBool,
}

impl ResourceSet {
    /// A set of `resources`, started in this order and stopped in reverse.
    /// Every resource starts out [`ResourceState::Stopped`].
    pub fn new(resources: Vec<Box<dyn Resource>>) -> Self {
        let slots = resources
            .iter()
            .map(|_| Slot {
                state: ResourceState::Stopped,
                transitions: 0,
            })
            .collect();
        Self {
            resources,
            slots: Mutex::new(slots),
            transition: tokio::sync::Mutex::new(()),
            restarts_allowed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether there are no resources.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The resource at `index`.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    pub fn resource(&self, index: usize) -> &dyn Resource {
        self.resources[index].as_ref()
    }

    /// How long to wait between monitor runs of the resource at `index`.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    pub fn monitor_interval(&self, index: usize) -> Duration {
        self.resources[index].monitor_interval()
    }

    /// Every resource's name and state, in configuration order.
    pub fn states(&self) -> Vec<(String, ResourceState)> {
        let slots = self.lock_slots();
        self.resources
            .iter()
            .zip(slots.iter())
            .map(|(resource, slot)| (resource.name().to_owned(), slot.state.clone()))
            .collect()
    }

    /// Start every resource in order.
    ///
    /// On the first failure, the failed resource is stopped (its start may
    /// have got half way, and a half-started address or daemon on a node
    /// that is not going to be active would fight the peer's), then the ones
    /// already started are stopped in reverse order; resources after the
    /// failed one are never started. The original start error is returned;
    /// errors of these cleanup stops are logged and shown in the states.
    ///
    /// Not cancel safe as far as states go: dropping the future mid-way
    /// leaves the resource being started shown as
    /// [`ResourceState::Starting`].
    pub async fn start_all(&self) -> Result<(), ResourceError> {
        let _serialised = self.transition.lock().await;
        self.restarts_allowed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for index in 0..self.resources.len() {
            if let Err(err) = self.start_one(index).await {
                tracing::error!(
                    resource = self.resources[index].name(),
                    error = %err,
                    "start failed; stopping what was started"
                );
                self.roll_back(index, &err).await;
                return Err(err);
            }
        }
        Ok(())
    }

    /// From now on, until the next `start_all`, a restart starts nothing. Called the moment
    /// the node decides to stop its resources, before the stop waits for its turn.
    pub fn forbid_restarts(&self) {
        self.restarts_allowed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Restart the resource at `index` in place: escalation's "restart" step. A failed
    /// stop does not end it: the start that follows tells whether the resource works.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    pub async fn restart_one(&self, index: usize) -> Result<(), ResourceError> {
        let _serialised = self.transition.lock().await;
        if !self
            .restarts_allowed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // The node is leaving the active role (seen by the fault-injection suite: a node
            // woken from a stall restarted its address while demoting, and only the conflict
            // probe kept it off the address its peer had just taken).
            return Err(ResourceError::other(
                self.resources[index].name(),
                Action::Start,
                "not restarted: this node is leaving the active role",
            ));
        }
        let _ = self.stop_one(index).await;
        let result = self.start_one(index).await;
        if let Err(err) = &result {
            self.set_state(index, ResourceState::Failed(err.to_string()));
        }
        result
    }

    /// Start the resource at `index`, recording `Starting` and then `Running`.
    async fn start_one(&self, index: usize) -> Result<(), ResourceError> {
        let resource = &self.resources[index];
        self.set_state(index, ResourceState::Starting);
        tracing::info!(
            resource = resource.name(),
            kind = resource.kind(),
            "starting"
        );
        resource.start().await?;
        tracing::info!(resource = resource.name(), "started");
        self.set_state(index, ResourceState::Running);
        Ok(())
    }

    /// Undo a start that failed at `failed`: stop that resource, then every
    /// earlier one in reverse.
    async fn roll_back(&self, failed: usize, start_err: &ResourceError) {
        let resource = &self.resources[failed];
        self.set_state(failed, ResourceState::Stopping);
        // The failed resource stays `Failed` with the start error even when
        // the cleanup stop succeeds: that error is what status must show.
        let why = match resource.stop().await {
            Ok(()) => start_err.to_string(),
            Err(stop_err) => {
                tracing::error!(resource = resource.name(), error = %stop_err, "cleanup stop failed");
                format!("{start_err}; then {stop_err}")
            }
        };
        self.set_state(failed, ResourceState::Failed(why));
        for index in (0..failed).rev() {
            // The first error is the one to report; later ones are in the
            // log and the states.
            let _ = self.stop_one(index).await;
        }
    }

    /// Stop every resource in reverse order.
    ///
    /// Every resource is asked to stop, even those believed stopped (stop is
    /// idempotent and the belief may be wrong) and even after one fails: a
    /// demoting node must release as much as it can. Returns the first
    /// error.
    pub async fn stop_all(&self) -> Result<(), ResourceError> {
        let _serialised = self.transition.lock().await;
        let mut first_err = None;
        for index in (0..self.resources.len()).rev() {
            if let Err(err) = self.stop_one(index).await {
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stop the resource at `index`, recording the outcome in its state.
    async fn stop_one(&self, index: usize) -> Result<(), ResourceError> {
        let resource = &self.resources[index];
        self.set_state(index, ResourceState::Stopping);
        tracing::info!(
            resource = resource.name(),
            kind = resource.kind(),
            "stopping"
        );
        match resource.stop().await {
            Ok(()) => {
                tracing::info!(resource = resource.name(), "stopped");
                self.set_state(index, ResourceState::Stopped);
                Ok(())
            }
            Err(err) => {
                tracing::error!(resource = resource.name(), error = %err, "stop failed");
                self.set_state(index, ResourceState::Failed(err.to_string()));
                Err(err)
            }
        }
    }

    /// Monitor the resource at `index` once and record the result in its
    /// state: [`Health::Running`] and [`Health::Stopped`] as the matching
    /// state, [`Health::Failed`] and errors as [`ResourceState::Failed`].
    ///
    /// The result is not recorded when a start or stop of that resource is
    /// in progress or happened while the monitor ran: it describes a moment
    /// the transition has made obsolete.
    ///
    /// # Panics
    ///
    /// If `index >= self.len()`.
    pub async fn monitor_once(&self, index: usize) -> Result<Health, ResourceError> {
        let resource = &self.resources[index];
        let before = self.lock_slots()[index].transitions;
        let result = resource.monitor().await;
        let observed = match &result {
            Ok(Health::Running) => ResourceState::Running,
            Ok(Health::Stopped) => ResourceState::Stopped,
            Ok(Health::Failed(why)) => ResourceState::Failed(why.clone()),
            Err(err) => ResourceState::Failed(err.to_string()),
        };
        let mut slots = self.lock_slots();
        let slot = &mut slots[index];
        let in_transition = matches!(
            slot.state,
            ResourceState::Starting | ResourceState::Stopping
        );
        if slot.transitions == before && !in_transition {
            if slot.state != observed {
                tracing::info!(
                    resource = resource.name(),
                    from = %slot.state,
                    to = %observed,
                    "monitor changed state"
                );
            }
            slot.state = observed;
        }
        result
    }

    /// Record a transition step of the resource at `index`.
    fn set_state(&self, index: usize, state: ResourceState) {
        let mut slots = self.lock_slots();
        let slot = &mut slots[index];
        slot.state = state;
        slot.transitions += 1;
    }

    /// Lock the states, ignoring poisoning: every write is a single
    /// assignment, so a panicking holder cannot leave them inconsistent.
    fn lock_slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceSet")
            .field("states", &self.states())
            .finish_non_exhaustive()
    }
}
