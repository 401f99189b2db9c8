//! The resource set: start order, reverse stop order, rollback of a failed
//! start, stop_all carrying on after a failure, and states kept for status.
//! Exec resources append to a shared log so the order is seen from outside.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{exec_config, sh_path, PAIR};
use tokio::sync::Notify;
use understudy_resources::{
    build, Action, BoxFuture, Health, Resource, ResourceError, ResourceSet, ResourceState,
};

/// An exec resource that logs `start NAME` / `stop NAME` to `log`, with
/// extra shell text (e.g. `; exit 1`) appended to its start or stop.
fn logging(name: &str, log: &Path, start_extra: &str, stop_extra: &str) -> Box<dyn Resource> {
    let log = sh_path(log);
    let cfg = exec_config(
        name,
        &format!("echo 'start {name}' >> {log}{start_extra}"),
        &format!("echo 'stop {name}' >> {log}{stop_extra}"),
        None,
    );
    build(&cfg, PAIR, 0).expect("an exec resource builds")
}

fn read_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn state_of(set: &ResourceSet, name: &str) -> ResourceState {
    set.states()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, state)| state)
        .expect("resource in states")
}

#[tokio::test]
async fn starts_in_order_and_stops_in_reverse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let set = ResourceSet::new(vec![
        logging("a", &log, "", ""),
        logging("b", &log, "", ""),
        logging("c", &log, "", ""),
    ]);
    assert_eq!(set.len(), 3);
    assert!(!set.is_empty());
    assert_eq!(set.monitor_interval(1), Duration::from_millis(1_000));
    assert!(set
        .states()
        .iter()
        .all(|(_, state)| *state == ResourceState::Stopped));

    set.start_all().await.expect("start_all");
    assert_eq!(read_log(&log), ["start a", "start b", "start c"]);
    assert_eq!(
        set.states(),
        [
            ("a".to_owned(), ResourceState::Running),
            ("b".to_owned(), ResourceState::Running),
            ("c".to_owned(), ResourceState::Running),
        ]
    );

    set.stop_all().await.expect("stop_all");
    assert_eq!(read_log(&log)[3..], ["stop c", "stop b", "stop a"]);
    assert!(set
        .states()
        .iter()
        .all(|(_, state)| *state == ResourceState::Stopped));
}

#[tokio::test]
async fn failed_start_rolls_back_and_never_starts_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let set = ResourceSet::new(vec![
        logging("a", &log, "", ""),
        logging("b", &log, "; echo 'port in use' >&2; exit 1", ""),
        logging("c", &log, "", ""),
    ]);

    let err = set.start_all().await.expect_err("start_all must fail");
    assert_eq!(err.resource(), "b");
    assert_eq!(err.action(), Action::Start);
    assert!(err.to_string().contains("port in use"), "{err}");
    // b may have got half way, so it is stopped too, before a.
    assert_eq!(read_log(&log), ["start a", "start b", "stop b", "stop a"]);
    assert_eq!(state_of(&set, "a"), ResourceState::Stopped);
    match state_of(&set, "b") {
        ResourceState::Failed(why) => assert!(why.contains("port in use"), "{why}"),
        other => panic!("expected b Failed, got {other:?}"),
    }
    assert_eq!(state_of(&set, "c"), ResourceState::Stopped);
}

#[tokio::test]
async fn stop_all_tries_every_resource_and_returns_the_first_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let set = ResourceSet::new(vec![
        logging("a", &log, "", "; exit 5"),
        logging("b", &log, "", "; exit 6"),
        logging("c", &log, "", ""),
    ]);
    set.start_all().await.expect("start_all");

    let err = set.stop_all().await.expect_err("stop_all must fail");
    // Reverse order: b fails first, a afterwards; the first is reported.
    match &err {
        ResourceError::Failed {
            resource,
            action: Action::Stop,
            code: Some(6),
            ..
        } => assert_eq!(resource, "b"),
        other => panic!("expected b's stop failure, got {other:?}"),
    }
    assert_eq!(read_log(&log)[3..], ["stop c", "stop b", "stop a"]);
    assert_eq!(state_of(&set, "c"), ResourceState::Stopped);
    assert!(matches!(state_of(&set, "b"), ResourceState::Failed(_)));
    assert!(matches!(state_of(&set, "a"), ResourceState::Failed(_)));
}

#[tokio::test]
async fn monitor_once_records_what_it_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("up");
    let m = sh_path(&marker);
    let cfg = exec_config(
        "web",
        &format!("touch {m}"),
        &format!("rm -f {m}"),
        Some(&format!("test -e {m} || exit 7")),
    );
    let set = ResourceSet::new(vec![build(&cfg, PAIR, 0).expect("an exec resource builds")]);

    set.start_all().await.expect("start_all");
    assert_eq!(set.monitor_once(0).await.expect("monitor"), Health::Running);
    assert_eq!(state_of(&set, "web"), ResourceState::Running);

    // The application dies behind our back.
    std::fs::remove_file(&marker).expect("remove marker");
    assert_eq!(set.monitor_once(0).await.expect("monitor"), Health::Stopped);
    assert_eq!(state_of(&set, "web"), ResourceState::Stopped);
}

/// A resource whose monitor waits until its stop has run, to make a monitor
/// result arrive after a transition.
struct SlowMonitor {
    stopped: Arc<Notify>,
}

impl Resource for SlowMonitor {
    fn name(&self) -> &str {
        "slow"
    }
    fn kind(&self) -> &'static str {
        "test"
    }
    fn start(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async { Ok(()) })
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async move {
            self.stopped.notify_one();
            Ok(())
        })
    }
    fn monitor(&self) -> BoxFuture<'_, Result<Health, ResourceError>> {
        Box::pin(async move {
            self.stopped.notified().await;
            // Claims to be running: a stale view the set must not record.
            Ok(Health::Running)
        })
    }
    fn monitor_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

#[tokio::test]
async fn monitor_result_overtaken_by_a_transition_is_not_recorded() {
    let set = ResourceSet::new(vec![Box::new(SlowMonitor {
        stopped: Arc::new(Notify::new()),
    })]);
    set.start_all().await.expect("start_all");
    // The monitor begins first (join polls in order), then the stop runs
    // and releases it.
    let (health, stopped) = tokio::join!(set.monitor_once(0), set.stop_all());
    stopped.expect("stop_all");
    assert_eq!(health.expect("monitor"), Health::Running);
    assert_eq!(state_of(&set, "slow"), ResourceState::Stopped);
}

#[tokio::test]
async fn empty_set_is_fine() {
    let set = ResourceSet::new(Vec::new());
    assert!(set.is_empty());
    set.start_all().await.expect("start_all");
    set.stop_all().await.expect("stop_all");
    assert!(set.states().is_empty());
}

#[tokio::test]
async fn no_restart_starts_anything_once_the_node_leaves_the_active_role() {
    // A node woken from a stall saw its address gone (the watchdog had fenced it) and
    // restarted it while it was demoting: only the conflict probe kept it off the address
    // its peer had just taken. Once a stop is ordered, a restart starts nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let set = ResourceSet::new(vec![logging("a", &log, "", "")]);
    set.start_all().await.expect("start_all");
    set.restart_one(0).await.expect("a restart while active");
    assert_eq!(read_log(&log), ["start a", "stop a", "start a"]);
    set.forbid_restarts();
    let refused = set
        .restart_one(0)
        .await
        .expect_err("no restart while leaving");
    assert!(
        refused.to_string().contains("leaving the active role"),
        "{refused}"
    );
    assert_eq!(read_log(&log).len(), 3, "nothing stopped or started");
    set.stop_all().await.expect("stop_all");
    // Active again: restarts work again.
    set.start_all().await.expect("start_all");
    set.restart_one(0)
        .await
        .expect("a restart while active again");
    assert_eq!(
        read_log(&log)[3..],
        ["stop a", "start a", "stop a", "start a"]
    );
}
