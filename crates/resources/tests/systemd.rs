//! The systemd resource against a real systemd user manager, and (as an
//! extra that runs everywhere) against a stand-in `systemctl` that shows
//! what the resource asks and how it reads rarer answers.
//!
//! The test machines do not run systemd as PID 1, and `systemd --user`
//! refuses to start unless `/run/systemd/system/` exists ("the system has
//! not been booted with systemd"). The test therefore starts the user
//! manager under `unshare -m` with a tmpfs over `/run/systemd` holding that
//! directory: the change is invisible outside the manager's private mount
//! namespace. The manager gets its own `XDG_RUNTIME_DIR` and
//! `XDG_CONFIG_HOME` in a temporary directory; `systemctl --user` reaches it
//! through its private socket `$XDG_RUNTIME_DIR/systemd/private` (no D-Bus
//! needed), which the resource is pointed at with `with_env`.
//!
//! That needs root (for the mount namespace), `unshare` (util-linux) and
//! systemd installed. Without them the real-manager test skips, except
//! under `CI=true`, where it fails: `.ci/run` must run as root with the
//! `systemd` package installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{process_alive, reap_leftover, wait_gone, PAIR};
use understudy_resources::{Action, Health, Resource, ResourceError, SystemdResource};

/// Where Debian (and most distributions) install the manager binary.
const SYSTEMD_BINARIES: &[&str] = &["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Runs the manager in a private mount namespace where `/run/systemd/system`
/// exists. `$0` is the systemd binary. `/run/systemd` is covered rather than
/// created; only a machine without it gets a tmpfs over the whole of `/run`
/// (inside the namespace).
const MANAGER_SCRIPT: &str = r#"set -e
if [ -d /run/systemd ]; then target=/run/systemd; else target=/run; fi
mount -t tmpfs -o mode=0755 understudy-test "$target"
mkdir -p /run/systemd/system
exec "$0" --user
"#;

/// A systemd user manager of our own, stopped when dropped.
struct UserManager {
    child: Child,
    dir: tempfile::TempDir,
}

impl UserManager {
    /// Start a manager and wait until it is up; `Err` says why it cannot
    /// run here.
    fn start() -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (to mount in a private mount namespace)".to_owned());
        }
        let systemd = SYSTEMD_BINARIES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or("systemd is not installed (apt-get install systemd)")?;
        for tool in ["unshare", "systemctl"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!("{tool} is not available"));
            }
        }

        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let runtime = dir.path().join("runtime");
        std::fs::create_dir(&runtime).map_err(|e| format!("runtime dir: {e}"))?;
        std::fs::create_dir_all(dir.path().join("config/systemd/user"))
            .map_err(|e| format!("unit dir: {e}"))?;
        let log = std::fs::File::create(dir.path().join("manager.log"))
            .map_err(|e| format!("log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new("unshare")
            .arg("--mount")
            .arg("sh")
            .arg("-c")
            .arg(MANAGER_SCRIPT)
            .arg(systemd)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            // No journal to log to: keep the manager's log for failures.
            .env("SYSTEMD_LOG_TARGET", "console")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawn unshare: {e}"))?;
        let mut manager = Self { child, dir };
        manager.wait_until_up()?;
        Ok(manager)
    }

    /// Wait for the manager to answer and finish its own start-up.
    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "user manager exited ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if self.runtime_dir().join("systemd/private").exists() {
                // Not `is-system-running`: it answers "offline" whenever
                // systemctl believes it runs in a chroot, which is how a
                // container whose PID 1 has another root looks to it.
                let out = self.systemctl(&["show", "--property=SystemState", "--value"]);
                last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if last == "running" || last == "degraded" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "user manager not up after 30 s (state {last:?}); its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// What a resource needs to reach this manager. The session bus address
    /// points nowhere, so a stray session bus of whoever runs the tests can
    /// never be reached instead.
    fn env(&self) -> Vec<(String, String)> {
        let runtime = self.runtime_dir().display().to_string();
        vec![
            (
                "DBUS_SESSION_BUS_ADDRESS".to_owned(),
                format!("unix:path={runtime}/no-bus"),
            ),
            ("XDG_RUNTIME_DIR".to_owned(), runtime),
        ]
    }

    /// `systemctl --user ARGS` against this manager, for the test's own
    /// set-up and checks.
    fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("run systemctl")
    }

    fn write_unit(&self, name: &str, text: &str) {
        let path = self.dir.path().join("config/systemd/user").join(name);
        std::fs::write(path, text).expect("write unit");
    }

    /// A resource for `unit` of this manager.
    fn resource(&self, name: &str, unit: &str, start_timeout: Duration) -> SystemdResource {
        let timeout = Duration::from_secs(20);
        SystemdResource::new(
            name,
            PAIR,
            unit,
            true,
            start_timeout,
            timeout,
            timeout,
            Duration::from_secs(1),
        )
        .with_env(self.env())
    }

    /// The main pid of `unit`, 0 when it has none.
    fn main_pid(&self, unit: &str) -> libc::pid_t {
        let out = self.systemctl(&["show", "--property=MainPID", "--value", unit]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("MainPID")
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        // SIGTERM: the manager stops its units and exits. The pid is the
        // manager's own (unshare and sh exec it).
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: plain syscall on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user manager, or `None` after printing why the test is skipped. Under
/// `CI=true` a manager that cannot be had fails the test instead.
fn user_manager_or_skip(test: &str) -> Option<UserManager> {
    match UserManager::start() {
        Ok(manager) => Some(manager),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: no systemd user manager under CI: {why}"
            );
            eprintln!("SKIP {test}: no systemd user manager: {why}");
            None
        }
    }
}

/// Monitor `resource` until it is not [`Health::Running`] or 10 s pass.
async fn monitor_until_not_running(resource: &SystemdResource) -> Health {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = resource.monitor().await.expect("monitor");
        if health != Health::Running || Instant::now() > deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// One test, one manager: two user managers in one cgroup would each claim
// the same `app.slice`, so the scenarios run in sequence against one.
#[tokio::test]
async fn user_units_through_a_real_user_manager() {
    let test = "user_units_through_a_real_user_manager";
    let Some(manager) = user_manager_or_skip(test) else {
        return;
    };
    manager.write_unit(
        "understudy-broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo broken on purpose >&2; exit 3'\n",
    );
    manager.write_unit(
        "understudy-dies.service",
        "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 4'\n",
    );
    manager.write_unit(
        "understudy-slow.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n",
    );
    // Written after the manager read its units: only a daemon-reload makes
    // it known, as an operator would do.
    manager.write_unit(
        "understudy-sleep.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    );
    let reload = manager.systemctl(&["daemon-reload"]);
    assert!(reload.status.success(), "daemon-reload: {reload:?}");

    start_monitor_stop(&manager).await;
    failing_start(&manager).await;
    unit_that_dies_after_starting(&manager).await;
    missing_unit(&manager).await;
    start_timeout(&manager).await;
}

async fn start_monitor_stop(manager: &UserManager) {
    let unit = "understudy-sleep.service";
    let resource = manager.resource("sleeper", unit, Duration::from_secs(20));
    assert_eq!(resource.kind(), "systemd");
    assert_eq!(resource.unit(), unit);

    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    resource.start().await.expect("start");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Running);
    let pid = manager.main_pid(unit);
    assert!(pid > 0 && process_alive(pid), "main pid {pid}");
    // Idempotent: a second start changes nothing.
    resource.start().await.expect("second start");
    assert_eq!(manager.main_pid(unit), pid);

    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    let gone = wait_gone(pid, Duration::from_secs(5)).await;
    reap_leftover(pid);
    assert!(gone, "the unit's process {pid} survived the stop");
    resource.stop().await.expect("second stop");
}

async fn failing_start(manager: &UserManager) {
    let resource = manager.resource(
        "broken",
        "understudy-broken.service",
        Duration::from_secs(20),
    );
    let err = resource.start().await.expect_err("start");
    match &err {
        ResourceError::Failed {
            action,
            code,
            stderr_tail,
            ..
        } => {
            assert_eq!(*action, Action::Start);
            assert_eq!(*code, Some(1));
            // systemctl's own message, then what `systemctl status` says.
            assert!(
                stderr_tail.contains("Job for understudy-broken.service failed"),
                "{stderr_tail}"
            );
            assert!(stderr_tail.contains("status=3"), "{stderr_tail}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    match resource.monitor().await.expect("monitor") {
        Health::Failed(why) => {
            assert!(
                why.starts_with("unit understudy-broken.service failed"),
                "{why}"
            );
            assert!(why.contains("status=3"), "{why}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Stopping a failed unit clears the failure: it reads as stopped.
    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
}

async fn unit_that_dies_after_starting(manager: &UserManager) {
    let resource = manager.resource("dies", "understudy-dies.service", Duration::from_secs(20));
    // A simple service counts as started once its process runs.
    resource.start().await.expect("start");
    match monitor_until_not_running(&resource).await {
        Health::Failed(why) => {
            assert!(
                why.starts_with("unit understudy-dies.service failed"),
                "{why}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
}

async fn missing_unit(manager: &UserManager) {
    let resource = manager.resource(
        "ghost",
        "understudy-nonexistent.service",
        Duration::from_secs(20),
    );
    let err = resource.start().await.expect_err("start");
    assert!(err.to_string().contains("not found"), "{err}");
    // Certainly not running: stopping and monitoring it are fine.
    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
}

async fn start_timeout(manager: &UserManager) {
    let resource = manager.resource("slow", "understudy-slow.service", Duration::from_secs(1));
    let began = Instant::now();
    match resource.start().await.expect_err("start") {
        ResourceError::Timeout {
            action, after_ms, ..
        } => {
            assert_eq!(action, Action::Start);
            assert_eq!(after_ms, 1_000);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(began.elapsed() < Duration::from_secs(10));
    // Killing systemctl leaves the start job running in the manager; the
    // unit is activating, which counts as running.
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Running);
    // The stop replaces the job.
    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
}

/// A stand-in `systemctl` that logs its arguments to `$FAKE_LOG` and
/// answers `is-active` with the contents of `$FAKE_STATE` (exit 0 only for
/// "active", as systemctl does, and exit 1 with nothing on stdout for
/// "nobus"). Not a substitute for the real-manager test: it covers the
/// states a real manager is hard to catch in and the exact arguments, on
/// every machine.
struct FakeSystemctl {
    dir: tempfile::TempDir,
}

impl FakeSystemctl {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let source = dir.path().join("systemctl.src");
        std::fs::write(
            &source,
            r#"#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case " $* " in
  *" is-active "*)
    state=$(cat "$FAKE_STATE")
    if [ "$state" = nobus ]; then echo "Failed to connect to bus: No such file or directory" >&2; exit 1; fi
    echo "$state"
    [ "$state" = active ] && exit 0
    exit 3 ;;
  *" status "*) echo "fake status of the unit"; exit 3 ;;
esac
exit 0
"#,
        )
        .expect("write source");
        // Installed by another process: see install_script in tests/ocf.rs
        // ("Text file busy").
        let status = Command::new("install")
            .args(["-m", "0755"])
            .arg(&source)
            .arg(bin.join("systemctl"))
            .status()
            .expect("install");
        assert!(status.success());
        Self { dir }
    }

    fn resource(&self, user: bool) -> SystemdResource {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
        );
        let t = Duration::from_secs(10);
        SystemdResource::new("web", PAIR, "web.service", user, t, t, t, t).with_env(vec![
            ("PATH".to_owned(), path),
            (
                "FAKE_LOG".to_owned(),
                self.dir.path().join("log").display().to_string(),
            ),
            (
                "FAKE_STATE".to_owned(),
                self.dir.path().join("state").display().to_string(),
            ),
        ])
    }

    fn set_state(&self, state: &str) {
        std::fs::write(self.dir.path().join("state"), state).expect("state");
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn systemctl_arguments_and_rarer_states() {
    let fake = FakeSystemctl::new();
    let system = fake.resource(false);
    system.start().await.expect("start");
    system.stop().await.expect("stop");
    fake.set_state("active");
    assert_eq!(system.monitor().await.expect("monitor"), Health::Running);
    assert_eq!(
        fake.log(),
        [
            "--no-ask-password start -- web.service",
            "--no-ask-password stop -- web.service",
            "--no-ask-password reset-failed -- web.service",
            "--no-ask-password is-active -- web.service",
        ]
    );

    let user = fake.resource(true);
    for (state, expected) in [
        ("reloading", Health::Running),
        ("activating", Health::Running),
        ("inactive", Health::Stopped),
        (
            "deactivating",
            Health::Failed("unit web.service is deactivating".to_owned()),
        ),
        (
            "failed",
            Health::Failed("unit web.service failed: fake status of the unit".to_owned()),
        ),
    ] {
        fake.set_state(state);
        assert_eq!(user.monitor().await.expect("monitor"), expected, "{state}");
    }
    assert!(fake.log().iter().any(
        |l| l == "--user --no-ask-password status --no-pager --full --lines=10 -- web.service"
    ));

    // No answer at all: the check could not be done.
    fake.set_state("nobus");
    match user.monitor().await {
        Err(ResourceError::Failed {
            action: Action::Monitor,
            code: Some(1),
            stderr_tail,
            ..
        }) => assert!(
            stderr_tail.contains("Failed to connect to bus"),
            "{stderr_tail}"
        ),
        other => panic!("expected a monitor error, got {other:?}"),
    }
}
