//! The exec resource against real shell commands: actions, environment,
//! monitor exit codes, failures, timeouts that kill the whole process group,
//! chatty commands, and commands that leave a daemon in the background.

mod common;

use std::time::{Duration, Instant};

use common::{exec_config, process_alive, read_pid, reap_leftover, sh_path, wait_gone, PAIR};
use understudy_resources::{build, Action, Health, ResourceError};

#[tokio::test]
async fn start_stop_and_monitor_drive_a_marker_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("running");
    let m = sh_path(&marker);
    let cfg = exec_config(
        "marker",
        &format!("touch {m}"),
        &format!("rm -f {m}"),
        Some(&format!("test -e {m} || exit 7")),
    );
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");
    assert_eq!(resource.name(), "marker");
    assert_eq!(resource.kind(), "exec");
    assert_eq!(resource.monitor_interval(), Duration::from_millis(1_000));

    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    resource.start().await.expect("start");
    assert!(marker.exists());
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Running);
    // Idempotent: starting again is fine.
    resource.start().await.expect("second start");
    resource.stop().await.expect("stop");
    assert!(!marker.exists());
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    // Idempotent: stopping again is fine.
    resource.stop().await.expect("second stop");
}

#[tokio::test]
async fn commands_get_resource_action_and_pair_in_their_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = sh_path(&dir.path().join("env"));
    let record =
        format!("echo \"$UNDERSTUDY_RESOURCE $UNDERSTUDY_ACTION $UNDERSTUDY_PAIR\" >> {out}");
    let cfg = exec_config("envy", &record, &record, Some(&record));
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");
    resource.start().await.expect("start");
    resource.monitor().await.expect("monitor");
    resource.stop().await.expect("stop");
    let seen = std::fs::read_to_string(dir.path().join("env")).expect("env file");
    assert_eq!(
        seen,
        format!("envy start {PAIR}\nenvy monitor {PAIR}\nenvy stop {PAIR}\n")
    );
}

#[tokio::test]
async fn monitor_exit_codes_map_to_health() {
    let cases = [
        ("exit 0", Health::Running),
        ("exit 7", Health::Stopped),
        (
            "echo checking; echo 'disk full' >&2; exit 1",
            Health::Failed("disk full".to_owned()),
        ),
    ];
    for (monitor, expected) in cases {
        let cfg = exec_config("mon", "true", "true", Some(monitor));
        let health = build(&cfg, PAIR, 0)
            .expect("an exec resource builds")
            .monitor()
            .await
            .expect("monitor ran");
        assert_eq!(health, expected, "monitor command {monitor:?}");
    }

    // A failing monitor that says nothing on stderr still says how it ended.
    let cfg = exec_config("mon", "true", "true", Some("exit 2"));
    match build(&cfg, PAIR, 0)
        .expect("an exec resource builds")
        .monitor()
        .await
        .expect("monitor ran")
    {
        Health::Failed(why) => assert!(why.contains("exit status 2"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn without_monitor_command_health_follows_last_start_and_stop() {
    let cfg = exec_config("plain", "true", "true", None);
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);
    resource.start().await.expect("start");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Running);
    resource.stop().await.expect("stop");
    assert_eq!(resource.monitor().await.expect("monitor"), Health::Stopped);

    let failing = build(&exec_config("plain", "exit 1", "true", None), PAIR, 0)
        .expect("an exec resource builds");
    assert!(failing.start().await.is_err());
    assert_eq!(failing.monitor().await.expect("monitor"), Health::Stopped);
}

#[tokio::test]
async fn non_zero_exit_reports_code_and_stderr_tail() {
    let cfg = exec_config(
        "broken",
        "echo 'starting up'; echo 'config missing' >&2; echo 'giving up' >&2; exit 3",
        "true",
        None,
    );
    let err = build(&cfg, PAIR, 0)
        .expect("an exec resource builds")
        .start()
        .await
        .expect_err("start must fail");
    let message = err.to_string();
    match err {
        ResourceError::Failed {
            resource,
            action,
            code,
            stderr_tail,
            ..
        } => {
            assert_eq!(resource, "broken");
            assert_eq!(action, Action::Start);
            assert_eq!(code, Some(3));
            assert_eq!(stderr_tail, "config missing\ngiving up");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(message.contains("broken"), "{message}");
    assert!(message.contains("start"), "{message}");
    assert!(message.contains("exit status 3"), "{message}");
    assert!(message.contains("giving up"), "{message}");
}

#[tokio::test]
async fn chatty_command_does_not_block_and_keeps_only_a_tail() {
    // Far more than a pipe buffer (64 KiB) on both streams: if the output
    // were not read while the command runs, it would block and time out.
    let cfg = exec_config(
        "chatty",
        "seq 1 40000; seq 1 40000 >&2; echo last-line >&2; exit 4",
        "true",
        None,
    );
    let err = build(&cfg, PAIR, 0)
        .expect("an exec resource builds")
        .start()
        .await
        .expect_err("start must fail");
    match err {
        ResourceError::Failed {
            code, stderr_tail, ..
        } => {
            assert_eq!(code, Some(4));
            assert!(stderr_tail.ends_with("40000\nlast-line"), "{stderr_tail}");
            assert!(stderr_tail.starts_with("..."), "{stderr_tail}");
            assert!(stderr_tail.len() <= 2048 + 3, "{}", stderr_tail.len());
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let mut cfg = exec_config(
        "stuck",
        &format!("sleep 30 & echo $! > {}; wait", sh_path(&pid_file)),
        "true",
        None,
    );
    cfg.start_timeout_ms = 300;
    let began = Instant::now();
    let err = build(&cfg, PAIR, 0)
        .expect("an exec resource builds")
        .start()
        .await
        .expect_err("start must time out");
    let took = began.elapsed();
    let pid = read_pid(&pid_file).await;
    let gone = wait_gone(pid, Duration::from_secs(5)).await;
    reap_leftover(pid);

    match err {
        ResourceError::Timeout {
            resource,
            action,
            after_ms,
        } => {
            assert_eq!(resource, "stuck");
            assert_eq!(action, Action::Start);
            assert_eq!(after_ms, 300);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(gone, "the background sleep {pid} survived the timeout");
}

#[tokio::test]
async fn monitor_and_stop_time_out_too() {
    let mut cfg = exec_config("slow", "true", "sleep 30", Some("sleep 30"));
    cfg.stop_timeout_ms = 200;
    cfg.monitor_timeout_ms = 200;
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");
    match resource.monitor().await {
        Err(ResourceError::Timeout {
            action: Action::Monitor,
            after_ms: 200,
            ..
        }) => {}
        other => panic!("expected monitor Timeout, got {other:?}"),
    }
    match resource.stop().await {
        Err(ResourceError::Timeout {
            action: Action::Stop,
            after_ms: 200,
            ..
        }) => {}
        other => panic!("expected stop Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn start_that_backgrounds_a_daemon_returns_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("daemon.pid");
    let p = sh_path(&pid_file);
    // The daemon inherits the start command's stdout and stderr and keeps
    // writing to them: start must neither wait for those pipes to close nor
    // close them under the daemon (it would die of SIGPIPE).
    let cfg = exec_config(
        "daemon",
        &format!("sh -c 'while :; do echo tick; echo tock >&2; sleep 0.05; done' & echo $! > {p}"),
        &format!("kill $(cat {p})"),
        None,
    );
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");

    let began = Instant::now();
    let started = resource.start().await;
    let took = began.elapsed();
    let pid = read_pid(&pid_file).await;
    // Long enough for the daemon to write well after start returned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive_after = process_alive(pid);
    let stopped = resource.stop().await;
    let gone = wait_gone(pid, Duration::from_secs(5)).await;
    reap_leftover(pid);

    started.expect("start");
    assert!(took < Duration::from_secs(2), "start took {took:?}");
    assert!(alive_after, "the daemon {pid} died after start returned");
    stopped.expect("stop");
    assert!(gone, "stop did not end the daemon {pid}");
}

#[tokio::test]
async fn missing_command_is_a_failure_with_the_shells_message() {
    let cfg = exec_config("typo", "no-such-command-understudy", "true", None);
    match build(&cfg, PAIR, 0)
        .expect("an exec resource builds")
        .start()
        .await
    {
        Err(ResourceError::Failed {
            code: Some(127),
            stderr_tail,
            ..
        }) => assert!(
            stderr_tail.contains("no-such-command-understudy"),
            "{stderr_tail}"
        ),
        other => panic!("expected Failed with 127, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_an_action_kills_its_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let cfg = exec_config(
        "abandoned",
        &format!("sleep 30 & echo $! > {}; wait", sh_path(&pid_file)),
        "true",
        None,
    );
    let resource = build(&cfg, PAIR, 0).expect("an exec resource builds");
    // The caller gives up (its own timeout, a cancelled promotion): the
    // action's future is dropped mid-way and must not leave the sleep behind.
    let outcome = tokio::time::timeout(Duration::from_millis(300), resource.start()).await;
    let pid = read_pid(&pid_file).await;
    let gone = wait_gone(pid, Duration::from_secs(5)).await;
    reap_leftover(pid);

    assert!(outcome.is_err(), "start should still have been running");
    assert!(
        gone,
        "the background sleep {pid} survived the dropped start"
    );
}
