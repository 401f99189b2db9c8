//! Replication system tests: real daemons in network namespaces, the capture filesystem
//! mounted in the active's mount namespace, the passive applying to its own copy.

mod common;

use std::time::Duration;

use common::repl::{self, tree_digest};
use understudy_testbed::require_root;

#[test]
fn changes_on_the_active_reach_the_passive_copy_exactly() {
    if !require_root("changes_on_the_active_reach_the_passive_copy_exactly") {
        return;
    }
    let (pair, a) = repl::start("repl_basic", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    pair.sh_in(
        a,
        &format!(
            "set -e; cd {m}; mkdir -p d/e; echo hello > d/e/f; \
             dd if=/dev/urandom of=big bs=1M count=8 status=none; \
             ln d/e/f hard; ln -s d/e/f soft; chmod 640 big; \
             touch -d '2020-01-02 03:04:05.123456789' d/e/f; \
             setfattr -n user.k -v v big 2>/dev/null || true; \
             mv big big2; truncate -s 100 soft2 2>/dev/null || true; \
             exec 3>>keep; echo one >&3; rm keep; echo two >&3; exec 3>&-; \
             sync"
        ),
    )
    .expect("writes");
    let r = pair
        .wait_drained(a, Duration::from_secs(20))
        .expect("drained");
    assert!(r.applied_seq > 10, "ops were captured: {r:?}");
    let active = tree_digest(&pair.data_dir(a)).expect("active tree");
    let passive = tree_digest(&pair.data_dir(p)).expect("passive tree");
    assert!(active.iter().any(|l| l.starts_with("big2 ")), "{active:#?}");
    assert_eq!(
        active, passive,
        "the passive copy differs from the active's"
    );
    // The path is not mounted on the passive.
    let on_passive = pair
        .sh_in(p, &format!("ls -A {m} | wc -l"))
        .expect("ls on passive");
    assert_eq!(on_passive.trim(), "0", "the passive shows no data at path");
}

#[test]
fn a_switchover_drains_and_the_new_active_serves_the_same_data() {
    if !require_root("a_switchover_drains_and_the_new_active_serves_the_same_data") {
        return;
    }
    let (pair, a) = repl::start("repl_switchover", "sync", 256 << 20).expect("pair");
    let p = 1 - a;
    let m = pair.mountpoint();
    let m = m.display();
    pair.sh_in(a, &format!("set -e; for i in $(seq 1 200); do echo $i > {m}/f$i; done; dd if=/dev/zero of={m}/z bs=1M count=16 status=none"))
        .expect("writes");
    let out = pair.cli(a, &["switchover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pair.wait_role(p, "active", Duration::from_secs(30))
        .expect("peer active");
    pair.wait_repl(p, "in_sync", Duration::from_secs(20))
        .expect("streaming back");
    let count = pair
        .sh_in(p, &format!("ls {m} | wc -l; cat {m}/f200"))
        .expect("read on new active");
    assert_eq!(count.split_whitespace().collect::<Vec<_>>(), ["201", "200"]);
    let events = pair.status(a).expect("status").events;
    assert!(
        events.iter().any(|e| e
            .text
            .as_deref()
            .is_some_and(|t| t.contains("confirmed by the peer"))),
        "the switchover reports its drain: {events:#?}"
    );
    // And back: the old active now receives the new active's changes.
    pair.sh_in(p, &format!("echo back > {m}/from-new"))
        .expect("write on new active");
    pair.wait_drained(p, Duration::from_secs(20))
        .expect("drained back");
    assert_eq!(
        tree_digest(&pair.data_dir(a)).expect("tree"),
        tree_digest(&pair.data_dir(p)).expect("tree")
    );
}
