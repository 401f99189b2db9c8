//! `[[replicate]]` sets and `pair.replication_port`.

mod common;

use std::path::PathBuf;

use common::{config, ok, refused};
use understudy_config::{defaults, ReplicationMode};

#[test]
fn a_set_with_defaults() {
    let c = ok(&config(
        "",
        "\n[[replicate]]\nname = \"data\"\npath = \"/srv/data\"\n",
    ));
    assert_eq!(c.pair.replication_port, defaults::REPLICATION_PORT);
    let s = &c.replicate[0];
    assert_eq!(s.name, "data");
    assert_eq!(s.path, PathBuf::from("/srv/data"));
    assert_eq!(s.mode, ReplicationMode::Sync);
    assert_eq!(s.queue_max_bytes, defaults::QUEUE_MAX_BYTES);
    assert_eq!(s.memory_max_bytes, defaults::QUEUE_MEMORY_MAX_BYTES);
    assert_eq!(s.data_dir, None, "resolved from the state dir at start");
}

#[test]
fn every_key_is_read() {
    let c = ok(&config(
        "replication_port = 7500\n",
        "\n[[replicate]]\nname = \"db\"\npath = \"/var/lib/db\"\nmode = \"async\"\n\
         queue_max_bytes = 8388608\nmemory_max_bytes = 4194304\ndata_dir = \"/data/db-copy\"\n",
    ));
    assert_eq!(c.pair.replication_port, 7500);
    let s = &c.replicate[0];
    assert_eq!(s.mode, ReplicationMode::Async);
    assert_eq!((s.queue_max_bytes, s.memory_max_bytes), (8 << 20, 4 << 20));
    assert_eq!(s.data_dir, Some(PathBuf::from("/data/db-copy")));
}

#[test]
fn bad_sets_are_refused_where_they_are_wrong() {
    let set = |body: &str| config("", &format!("\n[[replicate]]\nname = \"data\"\n{body}"));
    refused(
        &set("path = \"/srv/data\"\nmode = \"fast\"\n"),
        "replicate[0].mode",
        "mode = \"fast\"",
        "unknown mode",
    );
    refused(
        &set("path = \"srv/data\"\n"),
        "replicate[0].path",
        "path = \"srv/data\"",
        "absolute",
    );
    refused(
        &set("path = \"/srv/data\"\nqueue_max_bytes = 1024\n"),
        "replicate[0].queue_max_bytes",
        "queue_max_bytes = 1024",
        "",
    );
    refused(
        &set("path = \"/srv/data\"\ndata_dir = \"/srv/data/copy\"\n"),
        "replicate[0].data_dir",
        "data_dir = ",
        "inside",
    );
    refused(
        &set("path = \"/srv/data\"\ncolour = \"blue\"\n"),
        "replicate[0].colour",
        "colour = ",
        "",
    );
    let two = config(
        "",
        "\n[[replicate]]\nname = \"a\"\npath = \"/srv\"\n\n[[replicate]]\nname = \"b\"\npath = \"/srv/b\"\n",
    );
    refused(&two, "replicate[1].path", "path = \"/srv/b\"", "overlaps");
}
