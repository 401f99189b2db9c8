//! Helpers shared by the integration tests: a known-good base configuration
//! and assertions on where an error points.

#![allow(dead_code)]

use std::path::Path;

use understudy_config::{parse, Config, ConfigError};

/// File name used for every parsed text.
pub const FILE: &str = "/etc/understudy/test.toml";

/// The smallest valid configuration. Line numbers:
/// 1 `[pair]`, 2 `name`, 4 first `[[node]]`, 9 second `[[node]]`.
pub const BASE: &str = r#"[pair]
name = "web"

[[node]]
name = "alpha"
channel = ["192.168.50.1"]
management = "203.0.113.11"

[[node]]
name = "beta"
channel = ["192.168.50.2"]
management = "203.0.113.12"
"#;

/// `BASE` with `pair_extra` added to `[pair]` and `rest` appended.
pub fn config(pair_extra: &str, rest: &str) -> String {
    BASE.replacen(
        "name = \"web\"\n",
        &format!("name = \"web\"\n{pair_extra}"),
        1,
    ) + rest
}

/// `text` with `from` replaced by `to` (exactly one occurrence must exist).
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur once in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// Parse text that must be valid.
pub fn ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got: {e}\n{text}"),
    }
}

/// Parse text that must be refused.
pub fn err(text: &str) -> ConfigError {
    match parse(text, Path::new(FILE)) {
        Ok(config) => panic!("expected an error, got: {config:?}\n{text}"),
        Err(e) => e,
    }
}

/// 1-based line of `needle`, which must occur exactly once in `text`. A
/// needle spanning lines (`"[pair]\nname"`) gives the line of its last part.
pub fn line_of(text: &str, needle: &str) -> usize {
    let needle = needle.trim_end_matches('\n');
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur once in:\n{text}"
    );
    let offset = text.find(needle).unwrap_or_default() + needle.len();
    text[..offset].matches('\n').count() + 1
}

/// Assert `text` is refused at `key`, on the line containing `line_needle`,
/// with a message containing `message`. Returns the error.
pub fn refused(text: &str, key: &str, line_needle: &str, message: &str) -> ConfigError {
    let e = err(text);
    let expected_line = line_of(text, line_needle);
    assert_eq!(e.key(), Some(key), "wrong key in: {e}\n{text}");
    assert_eq!(e.line(), Some(expected_line), "wrong line in: {e}\n{text}");
    assert!(
        e.message().contains(message),
        "message of {e:?} lacks {message:?}"
    );
    assert_eq!(e.file(), Path::new(FILE));
    e
}
