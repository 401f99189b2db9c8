//! Loading from disk: a readable file parses and records its path; a missing
//! file is an error naming the file, without a line.

use std::io::Write;
use std::path::Path;

use understudy_config::{load, ConfigError};

#[test]
fn load_reads_and_records_the_file() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(understudy_config::TEMPLATE.as_bytes())
        .expect("write");
    let config = load(file.path()).expect("template loads");
    assert_eq!(config.source, file.path());
    assert_eq!(config.source(), file.path());
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nope.toml");
    let e = load(&path).expect_err("missing file");
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.file(), path);
    assert_eq!(e.line(), None);
    assert_eq!(e.column(), None);
    assert_eq!(e.key(), None);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: cannot read: ", path.display())),
        "{text}"
    );
}

#[test]
fn errors_in_a_loaded_file_name_it() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"[pair]\nname = \"Web\"\n").expect("write");
    let e = load(file.path()).expect_err("bad name");
    assert_eq!(e.file(), file.path());
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:8: pair.name: invalid name \"Web\": use 1 to 32 characters from a-z, 0-9 and \
             '-', starting with a letter",
            file.path().display()
        )
    );
}

#[test]
fn non_utf8_file_is_a_read_error() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&[0xff, 0xfe, b'\n']).expect("write");
    let e = load(file.path()).expect_err("not UTF-8");
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.file(), Path::new(file.path()));
}
