//! The OCF resource against real resource agents: Debian's `resource-agents`
//! (`Dummy` through its whole life, `validate-all`, `meta-data`, and agents
//! refusing bad parameters with their own codes), plus a site-written agent
//! in a temporary OCF root for every exit code, the environment, a missing
//! agent and a timeout.
//!
//! The `resource-agents` tests skip when the package is missing, except
//! under `CI=true`, where they fail: `.ci/run` must install it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{read_pid, reap_leftover, wait_gone, PAIR};
use understudy_resources::ocf::{OCF_ERR_ARGS, OCF_ERR_CONFIGURED, OCF_ERR_GENERIC};
use understudy_resources::{Action, Health, OcfResource, Resource, ResourceError};

/// Where Debian's `resource-agents` puts the OCF root.
const SYSTEM_OCF_ROOT: &str = "/usr/lib/ocf";

/// Whether the `resource-agents` agents are there. Missing: skip, or fail
/// under `CI=true`, where the package is part of the setup.
fn have_resource_agents(test: &str) -> bool {
    let dummy = Path::new(SYSTEM_OCF_ROOT).join("resource.d/heartbeat/Dummy");
    if dummy.exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing: CI must install resource-agents",
        dummy.display()
    );
    eprintln!("SKIP {test}: OCF agents not installed (apt-get install resource-agents)");
    false
}

/// An OCF resource with timeouts short enough for tests but long enough
/// for a loaded CI machine.
fn ocf(
    name: &str,
    ocf_root: &Path,
    provider: &str,
    agent_type: &str,
    params: &[(&str, &str)],
) -> OcfResource {
    let timeout = Duration::from_secs(20);
    OcfResource::new(
        name,
        PAIR,
        ocf_root.to_owned(),
        provider,
        agent_type,
        params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        timeout,
        timeout,
        timeout,
        Duration::from_secs(10),
    )
}

/// `resource-agents`' Dummy, keeping its state file at `state`.
fn dummy(name: &str, state: &Path) -> OcfResource {
    let state = state.to_str().expect("UTF-8 temporary path");
    ocf(
        name,
        Path::new(SYSTEM_OCF_ROOT),
        "heartbeat",
        "Dummy",
        &[("state", state)],
    )
}

/// The OCF code and message of an agent error; panics on anything else.
fn agent_code(err: &ResourceError) -> i32 {
    match err {
        ResourceError::Agent { code, .. } => *code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[tokio::test]
async fn dummy_starts_monitors_and_stops() {
    if !have_resource_agents("dummy_starts_monitors_and_stops") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("dummy.state");
    let resource = dummy("db", &state);
    assert_eq!(resource.name(), "db");
    assert_eq!(resource.kind(), "ocf");
    assert_eq!(resource.monitor_interval(), Duration::from_secs(10));

    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    resource.start().await.expect("start");
    assert!(
        state.exists(),
        "Dummy keeps its state in the file it was given"
    );
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Running);
    // Idempotent, as OCF requires of agents.
    resource.start().await.expect("second start");
    resource.stop().await.expect("stop");
    assert!(!state.exists());
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    resource.stop().await.expect("second stop");
}

#[tokio::test]
async fn dummy_validates_and_describes_itself() {
    if !have_resource_agents("dummy_validates_and_describes_itself") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let resource = dummy("db", &dir.path().join("dummy.state"));
    resource.validate_all().await.expect("validate-all");

    let xml = resource.meta_data().await.expect("meta-data");
    assert!(xml.contains("<resource-agent"), "{xml}");
    assert!(xml.contains("name=\"Dummy\""), "{xml}");
    assert!(xml.contains("<parameter name=\"state\""), "{xml}");
}

#[tokio::test]
async fn dummy_with_an_unusable_state_path_fails_with_its_codes() {
    if !have_resource_agents("dummy_with_an_unusable_state_path_fails_with_its_codes") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("no-such-dir/dummy.state");
    let resource = dummy("db", &state);

    // validate-all checks that the state directory is writable.
    let err = resource.validate_all().await.expect_err("validate-all");
    assert_eq!(agent_code(&err), OCF_ERR_ARGS);
    assert_eq!(err.action(), Action::ValidateAll);
    let message = err.to_string();
    assert!(
        message.starts_with("resource db: validate-all failed: OCF_ERR_ARGS (2): "),
        "{message}"
    );
    assert!(message.contains("is not writable"), "{message}");

    // start does not validate; it fails creating the state file.
    let err = resource.start().await.expect_err("start");
    assert_eq!(agent_code(&err), OCF_ERR_GENERIC);
    let message = err.to_string();
    assert!(
        message.starts_with("resource db: start failed: OCF_ERR_GENERIC (1): "),
        "{message}"
    );
    assert!(message.contains("cannot touch"), "{message}");
}

#[tokio::test]
async fn filesystem_without_a_device_is_not_configured() {
    if !have_resource_agents("filesystem_without_a_device_is_not_configured") {
        return;
    }
    // No `device`: the agent refuses before touching anything.
    let resource = ocf(
        "data",
        Path::new(SYSTEM_OCF_ROOT),
        "heartbeat",
        "Filesystem",
        &[("directory", "/nonexistent"), ("fstype", "ext4")],
    );
    let err = resource.start().await.expect_err("start");
    assert_eq!(agent_code(&err), OCF_ERR_CONFIGURED);
    let message = err.to_string();
    assert!(
        message.starts_with("resource data: start failed: OCF_ERR_CONFIGURED (6): "),
        "{message}"
    );
    assert!(
        message.contains("Please set OCF_RESKEY_device"),
        "{message}"
    );
}

/// A site-written agent in a temporary OCF root, `site:recorder`: it
/// records its argument and OCF environment in `<dir>/<action>.env`, says
/// `stderr of <action>` on stderr, prints `<resource-agent/>` for
/// meta-data, and exits with the code in `<dir>/<action>.rc` (0 without
/// one; `kill` makes it kill itself, `sleep` makes it hang).
struct SiteAgent {
    dir: tempfile::TempDir,
}

impl SiteAgent {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let agents = dir.path().join("resource.d/site");
        std::fs::create_dir_all(&agents).expect("agent dir");
        install_script(
            &agents.join("recorder"),
            r#"#!/bin/sh
dir="$OCF_RESKEY_dir"
env | grep -E '^(OCF_|UNDERSTUDY_)' | sort > "$dir/$1.env"
echo "$# $1" >> "$dir/args"
echo "stderr of $1" >&2
[ "$1" = meta-data ] && echo '<resource-agent name="recorder"/>'
rc=$(cat "$dir/$1.rc" 2>/dev/null || echo 0)
case "$rc" in
  kill) kill -KILL $$ ;;
  sleep) sleep 30 & echo $! > "$dir/sleep.pid"; wait ;;
esac
exit "$rc"
"#,
        );
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn resource(&self) -> OcfResource {
        let dir = self.root().to_str().expect("UTF-8 temporary path");
        ocf(
            "site",
            self.root(),
            "site",
            "recorder",
            &[("dir", dir), ("colour", "blue green")],
        )
    }

    /// Make the agent answer `action` with `rc`.
    fn answer(&self, action: &str, rc: &str) {
        std::fs::write(self.root().join(format!("{action}.rc")), rc).expect("write rc");
    }

    fn env_of(&self, action: &str) -> String {
        std::fs::read_to_string(self.root().join(format!("{action}.env"))).expect("env record")
    }
}

/// Write an executable script at `path`. The file is written by `install`,
/// not by this process: a file this multi-threaded test process had open
/// for writing could be inherited by a child forked meanwhile by another
/// test, and executing it would then fail with "Text file busy".
fn install_script(path: &Path, text: &str) {
    let source = path.with_extension("src");
    std::fs::write(&source, text).expect("write script source");
    let status = std::process::Command::new("install")
        .arg("-m")
        .arg("0755")
        .arg(&source)
        .arg(path)
        .status()
        .expect("run install");
    assert!(status.success(), "install {}", path.display());
}

#[tokio::test]
async fn agents_get_the_ocf_environment() {
    let agent = SiteAgent::new();
    let resource = agent.resource();
    resource.start().await.expect("start");
    resource.monitor().await.expect("monitor");

    let root = agent.root().display().to_string();
    let start = agent.env_of("start");
    for line in [
        format!("OCF_ROOT={root}"),
        format!("OCF_FUNCTIONS_DIR={root}/lib/heartbeat"),
        format!("OCF_RESKEY_dir={root}"),
        "OCF_RESKEY_colour=blue green".to_owned(),
        "OCF_RESKEY_CRM_meta_timeout=20000".to_owned(),
        "OCF_RESKEY_CRM_meta_interval=0".to_owned(),
        "OCF_RA_VERSION_MAJOR=1".to_owned(),
        "OCF_RA_VERSION_MINOR=0".to_owned(),
        "OCF_RESOURCE_INSTANCE=site".to_owned(),
        "OCF_RESOURCE_PROVIDER=site".to_owned(),
        "OCF_RESOURCE_TYPE=recorder".to_owned(),
        "UNDERSTUDY_ACTION=start".to_owned(),
        format!("UNDERSTUDY_PAIR={PAIR}"),
        "UNDERSTUDY_RESOURCE=site".to_owned(),
    ] {
        assert!(start.lines().any(|l| l == line), "{line} not in\n{start}");
    }
    // A recurring monitor is not a probe: it carries its interval.
    let monitor = agent.env_of("monitor");
    assert!(
        monitor
            .lines()
            .any(|l| l == "OCF_RESKEY_CRM_meta_interval=10000"),
        "{monitor}"
    );
    // Run directly with the action as the only argument.
    let args = std::fs::read_to_string(agent.root().join("args")).expect("args");
    assert_eq!(args, "1 start\n1 monitor\n");
}

#[tokio::test]
async fn monitor_codes_map_to_health() {
    let agent = SiteAgent::new();
    let resource = agent.resource();
    for (rc, expected) in [
        ("0", Health::Running),
        ("8", Health::Running),
        // Degraded: still running (a warning is logged).
        ("190", Health::Running),
        ("191", Health::Running),
        ("7", Health::Stopped),
        (
            "1",
            Health::Failed("OCF_ERR_GENERIC (1): stderr of monitor".to_owned()),
        ),
        (
            "9",
            Health::Failed("OCF_FAILED_PROMOTED (9): stderr of monitor".to_owned()),
        ),
        (
            "5",
            Health::Failed("OCF_ERR_INSTALLED (5): stderr of monitor".to_owned()),
        ),
        (
            "42",
            Health::Failed("unknown OCF exit code (42): stderr of monitor".to_owned()),
        ),
    ] {
        agent.answer("monitor", rc);
        let health = resource.monitor().await.expect("monitor ran");
        assert_eq!(health, expected, "monitor exit {rc}");
    }
    agent.answer("monitor", "kill");
    match resource.monitor().await.expect("monitor ran") {
        Health::Failed(why) => assert!(why.contains("killed by signal 9"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn start_stop_and_validate_codes() {
    let agent = SiteAgent::new();
    let resource = agent.resource();

    agent.answer("start", "6");
    let err = resource.start().await.expect_err("start");
    assert_eq!(
        err.to_string(),
        "resource site: start failed: OCF_ERR_CONFIGURED (6): stderr of start"
    );
    assert_eq!(err.action(), Action::Start);
    assert_eq!(err.resource(), "site");
    agent.answer("start", "7");
    let err = resource
        .start()
        .await
        .expect_err("start must not take 7 for success");
    assert_eq!(agent_code(&err), 7);
    agent.answer("start", "0");
    resource.start().await.expect("start");

    // Not running is what a stop wants.
    agent.answer("stop", "7");
    resource.stop().await.expect("stop with OCF_NOT_RUNNING");
    agent.answer("stop", "1");
    let err = resource.stop().await.expect_err("stop");
    assert_eq!(
        err.to_string(),
        "resource site: stop failed: OCF_ERR_GENERIC (1): stderr of stop"
    );
    agent.answer("stop", "kill");
    match resource.stop().await.expect_err("killed stop") {
        ResourceError::Failed { signal, .. } => assert_eq!(signal, Some(9)),
        other => panic!("expected Failed, got {other:?}"),
    }

    resource.validate_all().await.expect("validate-all");
    agent.answer("validate-all", "2");
    let err = resource.validate_all().await.expect_err("validate-all");
    assert_eq!(
        err.to_string(),
        "resource site: validate-all failed: OCF_ERR_ARGS (2): stderr of validate-all"
    );

    assert_eq!(
        resource.meta_data().await.expect("meta-data"),
        "<resource-agent name=\"recorder\"/>\n"
    );
    agent.answer("meta-data", "3");
    let err = resource.meta_data().await.expect_err("meta-data");
    assert_eq!(agent_code(&err), 3);
    assert!(
        err.to_string().contains("OCF_ERR_UNIMPLEMENTED (3)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_agent_is_reported_by_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let resource = ocf("ghost", dir.path(), "heartbeat", "Nope", &[]);
    let path: PathBuf = dir.path().join("resource.d/heartbeat/Nope");
    for (what, err) in [
        ("start", resource.start().await.expect_err("start")),
        ("stop", resource.stop().await.expect_err("stop")),
        ("monitor", resource.monitor().await.expect_err("monitor")),
    ] {
        assert!(matches!(err, ResourceError::Io { .. }), "{what}: {err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{what}: {message}"
        );
        assert!(message.contains("OCF_ERR_INSTALLED"), "{what}: {message}");
    }
}

#[tokio::test]
async fn a_hung_agent_times_out_and_is_killed_with_its_children() {
    let agent = SiteAgent::new();
    let dir = agent.root().to_str().expect("UTF-8").to_owned();
    let resource = OcfResource::new(
        "slow",
        PAIR,
        agent.root().to_owned(),
        "site",
        "recorder",
        vec![("dir".to_owned(), dir)],
        Duration::from_millis(500),
        Duration::from_secs(20),
        Duration::from_secs(20),
        Duration::from_secs(10),
    );
    agent.answer("start", "sleep");
    let began = Instant::now();
    let err = resource.start().await.expect_err("start");
    assert!(began.elapsed() < Duration::from_secs(10));
    match err {
        ResourceError::Timeout {
            action, after_ms, ..
        } => {
            assert_eq!(action, Action::Start);
            assert_eq!(after_ms, 500);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The agent's child went with it: the whole process group was killed.
    let pid = read_pid(&agent.root().join("sleep.pid")).await;
    let gone = wait_gone(pid, Duration::from_secs(5)).await;
    reap_leftover(pid);
    assert!(gone, "the agent's sleep {pid} survived the timeout");
}
