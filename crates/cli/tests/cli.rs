//! CLI tests that need no root: `init` writes a valid config and 0600 keys, `check`
//! reports bad configs with file, line and key, and commands fail clearly without a daemon.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_understudy");

fn understudy(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run understudy")
}

fn init_args<'a>(config: &'a str, tls: &'a str) -> Vec<&'a str> {
    vec![
        "--config",
        config,
        "init",
        "--pair",
        "web",
        "--tls-dir",
        tls,
        "--node",
        "alpha=192.168.50.1,203.0.113.11",
        "--node",
        "beta=192.168.50.2,203.0.113.12",
    ]
}

#[test]
fn init_writes_a_config_that_checks_and_keys_only_root_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("understudy.toml");
    let tls = dir.path().join("tls");
    let (config_s, tls_s) = (
        config.to_str().expect("utf-8"),
        tls.to_str().expect("utf-8"),
    );
    let out = understudy(&init_args(config_s, tls_s));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = understudy(&["--config", config_s, "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains("public_check.targets is empty"),
        "the template warns: {stdout}"
    );
    for key in ["alpha.key", "beta.key"] {
        let mode = std::fs::metadata(tls.join(key))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} mode {mode:o}");
    }
    // A second init without --force refuses to overwrite anything.
    let again = understudy(&init_args(config_s, tls_s));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

#[test]
fn check_reports_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[pair]\nname = \"web\"\nfailover_timeout_ms = 1000\nisolation_timeout_ms = 1500\n\n[[node]]\nname = \"a\"\nchannel = [\"10.0.0.1\"]\nmanagement = \"10.1.0.1\"\n[[node]]\nname = \"b\"\nchannel = [\"10.0.0.2\"]\nmanagement = \"10.1.0.2\"\n",
    )
    .expect("write");
    let out = understudy(&["--config", config.to_str().expect("utf-8"), "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:"), "{err}");
    assert!(err.contains("isolation_timeout_ms"), "{err}");
}

#[test]
fn status_without_a_daemon_says_so() {
    let out = understudy(&["--socket", "/nonexistent/understudy.sock", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

#[test]
fn failover_requires_force() {
    let out = understudy(&["--socket", "/nonexistent/understudy.sock", "failover"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}
