//! Failure escalation (`on_failure`, `failure_window_ms`), the pair's
//! `auto_move_limit`, and the `[hooks]` table.

mod common;

use common::{config, edit, ok, refused, BASE};
use understudy_config::{defaults, FailureAction, HooksConfig, ResourceConfig};

const RESOURCE: &str = r#"
[[resource]]
name = "app"
kind = "exec"
start = "/usr/local/bin/app-start"
stop = "/usr/local/bin/app-stop"
"#;

const VIP: &str = r#"
[[resource]]
name = "vip"
kind = "vip"
address = "10.60.0.50/24"
interface = "eth0"
"#;

fn run(command: &str) -> FailureAction {
    FailureAction::Run(command.to_owned())
}

fn first_resource(text: &str) -> ResourceConfig {
    ok(text).resources.remove(0)
}

// --- on_failure and failure_window_ms -------------------------------------

#[test]
fn on_failure_and_window_defaults() {
    let r = first_resource(&config("", RESOURCE));
    assert_eq!(
        r.on_failure,
        [
            FailureAction::Restart,
            FailureAction::Restart,
            FailureAction::Switchover
        ]
    );
    assert_eq!(r.on_failure, ResourceConfig::default_on_failure());
    assert_eq!(r.failure_window_ms, 600_000);
    assert_eq!(r.failure_window_ms, defaults::FAILURE_WINDOW_MS);
}

#[test]
fn on_failure_mixes_words_and_run_tables() {
    let text = config(
        "",
        &format!(
            "{RESOURCE}on_failure = [\"alert\", {{ run = \"/usr/local/bin/page-oncall --now\" }}, \
             \"restart\", \"switchover\"]\nfailure_window_ms = 60000\n"
        ),
    );
    let r = first_resource(&text);
    assert_eq!(
        r.on_failure,
        [
            FailureAction::Alert,
            run("/usr/local/bin/page-oncall --now"),
            FailureAction::Restart,
            FailureAction::Switchover
        ]
    );
    assert_eq!(r.failure_window_ms, 60_000);
    assert_eq!(r.on_failure[1].name(), "run");
    assert_eq!(FailureAction::Alert.name(), "alert");
}

#[test]
fn failure_action_repeats_the_last_entry() {
    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\"restart\", \"alert\", \"switchover\"]\n"),
    );
    let r = first_resource(&text);
    assert_eq!(*r.failure_action(0), FailureAction::Restart);
    assert_eq!(*r.failure_action(1), FailureAction::Restart);
    assert_eq!(*r.failure_action(2), FailureAction::Alert);
    assert_eq!(*r.failure_action(3), FailureAction::Switchover);
    assert_eq!(*r.failure_action(4), FailureAction::Switchover);
    assert_eq!(*r.failure_action(usize::MAX), FailureAction::Switchover);

    let r = first_resource(&config(
        "",
        &format!("{RESOURCE}on_failure = [\"alert\"]\n"),
    ));
    assert_eq!(r.on_failure, [FailureAction::Alert]);
    assert_eq!(*r.failure_action(7), FailureAction::Alert);
}

#[test]
fn on_failure_applies_to_every_kind() {
    let text = config(
        "",
        &format!("{VIP}on_failure = [{{ run = \"logger vip\" }}]\nfailure_window_ms = 10000\n"),
    );
    let r = first_resource(&text);
    assert_eq!(r.kind.name(), "vip");
    assert_eq!(r.on_failure, [run("logger vip")]);
    assert_eq!(r.failure_window_ms, 10_000);
}

#[test]
fn on_failure_ten_entries_at_most() {
    let ten = ["\"restart\""; 10].join(", ");
    let r = first_resource(&config("", &format!("{RESOURCE}on_failure = [{ten}]\n")));
    assert_eq!(r.on_failure.len(), 10);

    let eleven = ["\"restart\""; 11].join(", ");
    let text = config("", &format!("{RESOURCE}on_failure = [{eleven}]\n"));
    refused(
        &text,
        "resource[0].on_failure",
        "on_failure",
        "expected 1 to 10 actions, found 11",
    );

    let text = config("", &format!("{RESOURCE}on_failure = []\n"));
    refused(
        &text,
        "resource[0].on_failure",
        "on_failure",
        "expected 1 to 10 actions, found 0",
    );
}

#[test]
fn on_failure_entry_errors_point_at_the_entry() {
    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\n  \"restart\",\n  \"reboot\",\n]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[1]",
        "\"reboot\"",
        "unknown action \"reboot\" (expected \"restart\", \"switchover\", \"alert\" or \
         { run = \"COMMAND\" })",
    );

    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\n  \"restart\",\n  3,\n]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[1]",
        "  3,",
        "expected \"restart\", \"switchover\", \"alert\" or an inline table \
         { run = \"COMMAND\" }, found an integer",
    );

    let text = config("", &format!("{RESOURCE}on_failure = [\"Restart\"]\n"));
    refused(
        &text,
        "resource[0].on_failure[0]",
        "on_failure",
        "unknown action \"Restart\"",
    );

    let text = config("", &format!("{RESOURCE}on_failure = \"restart\"\n"));
    refused(
        &text,
        "resource[0].on_failure",
        "on_failure",
        "expected an array, found a string",
    );

    let text = config("", &format!("{RESOURCE}on_failure = [[\"restart\"]]\n"));
    refused(
        &text,
        "resource[0].on_failure[0]",
        "on_failure",
        "found an array",
    );
}

#[test]
fn on_failure_run_tables_are_checked() {
    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\n  \"restart\",\n  {{ run = \"  \" }},\n]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[1].run",
        "run =",
        "command line must not be empty",
    );

    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\n  {{ run = \"x\", timeout_ms = 5 }},\n]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[0].timeout_ms",
        "run =",
        "unknown key in resource[0].on_failure[0] (expected one of: run)",
    );

    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [\n  \"alert\",\n  {{ }},\n]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[1].run",
        "{ }",
        "required key is missing from [resource[0].on_failure[1]]",
    );

    let text = config(
        "",
        &format!("{RESOURCE}on_failure = [{{ run = [\"page\", \"oncall\"] }}]\n"),
    );
    refused(
        &text,
        "resource[0].on_failure[0].run",
        "on_failure",
        "expected a string, found an array",
    );
}

#[test]
fn failure_window_range_and_monitor_interval() {
    for (value, message) in [
        ("0", "between 1 and 86400000, found 0"),
        ("86400001", "between 1 and 86400000"),
        ("\"10m\"", "expected an integer, found a string"),
    ] {
        let text = config("", &format!("{RESOURCE}failure_window_ms = {value}\n"));
        refused(
            &text,
            "resource[0].failure_window_ms",
            "failure_window_ms",
            message,
        );
    }

    let text = config("", &format!("{RESOURCE}failure_window_ms = 5000\n"));
    refused(
        &text,
        "resource[0].failure_window_ms",
        "failure_window_ms",
        "failure_window_ms (5000) must be at least monitor_interval_ms (10000, the default)",
    );

    // The default window against a long explicit monitor interval: blame
    // the key the file set.
    let text = config("", &format!("{RESOURCE}monitor_interval_ms = 600001\n"));
    refused(
        &text,
        "resource[0].monitor_interval_ms",
        "monitor_interval_ms",
        "failure_window_ms (600000, the default) must be at least monitor_interval_ms (600001)",
    );

    let r = first_resource(&config(
        "",
        &format!("{RESOURCE}monitor_interval_ms = 2000\nfailure_window_ms = 2000\n"),
    ));
    assert_eq!(r.failure_window_ms, 2000);
}

#[test]
fn escalation_keys_are_known_for_every_kind() {
    let text = config("", &format!("{VIP}on_failures = [\"alert\"]\n"));
    let e = refused(
        &text,
        "resource[0].on_failures",
        "on_failures",
        "unknown key in resource[0] (kind \"vip\")",
    );
    assert!(e.message().contains("on_failure, failure_window_ms"), "{e}");
}

// --- pair.auto_move_limit ---------------------------------------------------

#[test]
fn auto_move_limit_default_and_range() {
    assert_eq!(ok(BASE).pair.auto_move_limit, 2);
    assert_eq!(defaults::AUTO_MOVE_LIMIT, 2);
    assert_eq!(
        ok(&config("auto_move_limit = 0\n", ""))
            .pair
            .auto_move_limit,
        0
    );
    assert_eq!(
        ok(&config("auto_move_limit = 100\n", ""))
            .pair
            .auto_move_limit,
        100
    );
    for (value, message) in [
        ("101", "must be between 0 and 100, found 101"),
        ("-1", "must be between 0 and 100, found -1"),
        ("\"2\"", "expected an integer, found a string"),
        ("2.0", "expected an integer, found a float"),
    ] {
        let text = config(&format!("auto_move_limit = {value}\n"), "");
        let e = refused(&text, "pair.auto_move_limit", "auto_move_limit", message);
        assert_eq!(e.line(), Some(3));
        assert_eq!(e.column(), Some(19));
    }
}

// --- pair.drain_timeout_ms --------------------------------------------------

#[test]
fn drain_timeout_default_and_range() {
    assert_eq!(ok(BASE).pair.drain_timeout_ms, 30_000);
    assert_eq!(
        ok(&config("drain_timeout_ms = 120000\n", ""))
            .pair
            .drain_timeout_ms,
        120_000
    );
    let text = config("drain_timeout_ms = 500\n", "");
    let e = refused(&text, "pair.drain_timeout_ms", "drain_timeout_ms", "1000");
    assert_eq!(e.line(), Some(3));
}

#[test]
fn auto_move_limit_zero_with_a_switchover_escalation_is_warned_about() {
    let base_warnings = ok(&config("", RESOURCE)).warnings().len();

    // Default limit: no extra warning.
    let c = ok(&config("", RESOURCE));
    assert!(!c.warnings().iter().any(|w| w.contains("auto_move_limit")));

    // Limit 0 and the default on_failure (which ends in switchover).
    let c = ok(&config("auto_move_limit = 0\n", RESOURCE));
    let warnings = c.warnings();
    assert_eq!(warnings.len(), base_warnings + 1, "{warnings:?}");
    let last = warnings.last().cloned().unwrap_or_default();
    assert!(last.contains("resource \"app\""), "{last}");
    assert!(last.contains("pair.auto_move_limit is 0"), "{last}");

    // Limit 0 but no switchover anywhere: nothing to say.
    let c = ok(&config(
        "auto_move_limit = 0\n",
        &format!("{RESOURCE}on_failure = [\"restart\", \"alert\"]\n"),
    ));
    assert_eq!(c.warnings().len(), base_warnings);
}

// --- [hooks] --------------------------------------------------------------

const HOOKS: &str = r#"
[hooks]
pre_start = "/usr/local/bin/hook pre-start"
post_start = "/usr/local/bin/hook post-start"
pre_stop = "/usr/local/bin/hook pre-stop"
post_stop = "/usr/local/bin/hook post-stop"
role_change = "logger -t understudy \"role changed\""
timeout_ms = 30000
"#;

#[test]
fn hooks_absent_empty_and_full() {
    let c = ok(BASE);
    assert_eq!(c.hooks, HooksConfig::default());
    assert_eq!(
        c.hooks,
        HooksConfig {
            pre_start: None,
            post_start: None,
            pre_stop: None,
            post_stop: None,
            role_change: None,
            timeout_ms: 10_000,
        }
    );
    assert_eq!(ok(&config("", "\n[hooks]\n")).hooks, HooksConfig::default());

    let c = ok(&config("", HOOKS));
    assert_eq!(
        c.hooks,
        HooksConfig {
            pre_start: Some("/usr/local/bin/hook pre-start".to_owned()),
            post_start: Some("/usr/local/bin/hook post-start".to_owned()),
            pre_stop: Some("/usr/local/bin/hook pre-stop".to_owned()),
            post_stop: Some("/usr/local/bin/hook post-stop".to_owned()),
            role_change: Some("logger -t understudy \"role changed\"".to_owned()),
            timeout_ms: 30_000,
        }
    );

    // Only some hooks, in a file that also has resources after them.
    let c = ok(&config(
        "",
        &format!("\n[hooks]\nrole_change = \"/bin/true\"\n{RESOURCE}"),
    ));
    assert_eq!(c.hooks.role_change.as_deref(), Some("/bin/true"));
    assert_eq!(c.hooks.pre_start, None);
    assert_eq!(c.hooks.timeout_ms, defaults::HOOK_TIMEOUT_MS);
    assert_eq!(c.resources.len(), 1);
}

#[test]
fn hook_commands_are_checked_like_exec_commands() {
    for key in [
        "pre_start",
        "post_start",
        "pre_stop",
        "post_stop",
        "role_change",
    ] {
        let text = config(
            "",
            &format!("\n[hooks]\ntimeout_ms = 1000\n{key} = \" \"\n"),
        );
        refused(
            &text,
            &format!("hooks.{key}"),
            &format!("{key} ="),
            "command line must not be empty",
        );
        let text = config("", &format!("\n[hooks]\n{key} = \"a\\u0000b\"\n"));
        refused(
            &text,
            &format!("hooks.{key}"),
            &format!("{key} ="),
            "must not contain a NUL character",
        );
        let text = config("", &format!("\n[hooks]\n{key} = [\"/bin/true\"]\n"));
        refused(
            &text,
            &format!("hooks.{key}"),
            &format!("{key} ="),
            "expected a string, found an array",
        );
    }
}

#[test]
fn hooks_timeout_and_unknown_keys() {
    for (value, message) in [
        ("0", "between 1 and 86400000, found 0"),
        ("86400001", "between 1 and 86400000"),
    ] {
        let text = config("", &format!("\n[hooks]\ntimeout_ms = {value}\n"));
        refused(&text, "hooks.timeout_ms", "timeout_ms", message);
    }

    let text = config(
        "",
        &edit(HOOKS, "timeout_ms", "on_switchover = \"x\"\ntimeout_ms"),
    );
    let e = refused(
        &text,
        "hooks.on_switchover",
        "on_switchover",
        "unknown key in hooks (expected one of: pre_start, post_start, pre_stop, post_stop, \
         role_change, timeout_ms)",
    );
    assert_eq!(e.column(), Some(1));
}

#[test]
fn hooks_must_be_a_table() {
    let text = format!("hooks = \"/bin/true\"\n{BASE}");
    refused(
        &text,
        "hooks",
        "hooks =",
        "expected a table ([hooks]), found a string",
    );
    let text = config("", "\n[[hooks]]\npre_start = \"x\"\n");
    refused(
        &text,
        "hooks",
        "[[hooks]]",
        "expected a table ([hooks]), found an array of tables",
    );
}
