//! Pair benchmarks: failover and switchover times, false failovers under a channel-only
//! partition and under full CPU load. Real daemons in network namespaces, as root.
//! Run with `bench/run.sh`; each figure is printed as a ratio to its baseline from the
//! same run (the configured failover timeout, the resource's own start/stop time).

#[path = "../crates/cli/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{env_u64, median, Pair, Timing};
use understudy_testbed::{require_root, stress_cpu};

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn failover_after_kill9() {
    if !require_root("failover_after_kill9") {
        return;
    }
    let runs = env_u64("BENCH_FAILOVER_RUNS", 10);
    let mut times = Vec::new();
    for run in 0..runs {
        let mut pair =
            Pair::start(&format!("bench-failover-{run}"), Timing::default()).expect("pair");
        let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        pair.kill9(active);
        let seen = pair
            .wait_role(1 - active, "active", Duration::from_secs(5))
            .expect("took over");
        let ms = seen.duration_since(killed).as_secs_f64() * 1000.0;
        println!("BENCH failover run {run}: {ms:.0} ms");
        times.push(ms);
    }
    let failover_timeout_ms = Timing::default().failover_ms as f64;
    let med = median(&mut times);
    println!(
        "BENCH failover_after_kill9: median {med:.0} ms, max {:.0} ms over {runs} runs; failover_timeout {failover_timeout_ms:.0} ms; ratio {:.3}; target <= {:.0} ms: {}",
        times.last().copied().unwrap_or(0.0),
        med / failover_timeout_ms,
        failover_timeout_ms + 250.0,
        if med <= failover_timeout_ms + 250.0 { "MET" } else { "MISSED" }
    );
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn switchover_time() {
    if !require_root("switchover_time") {
        return;
    }
    let runs = env_u64("BENCH_SWITCHOVER_RUNS", 10);
    let pair = Pair::start("bench-switchover", Timing::default()).expect("pair");
    let (mut totals, mut overheads, mut resource_times) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let active = pair.wait_settled(Duration::from_secs(10)).expect("settled");
        let asked = Instant::now();
        let out = pair.cli(active, &["switchover"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = pair
            .wait_role(1 - active, "active", Duration::from_secs(5))
            .expect("moved");
        let total = seen.duration_since(asked).as_secs_f64() * 1000.0;
        // The resource's own time, from the daemons' event stamps: the old active's
        // demoting -> passive (its stop) and the new one's promoting -> active (its start).
        let (stop_ms, start_ms) = pair.move_resource_ms(active);
        let resource = stop_ms.max(0.0) + start_ms.max(0.0);
        println!("BENCH switchover run {run}: {total:.0} ms total, resource stop {stop_ms:.0} ms + start {start_ms:.0} ms, overhead {:.0} ms", total - resource);
        totals.push(total);
        resource_times.push(resource);
        overheads.push(total - resource);
    }
    let (med_total, med_resource, med_overhead) = (
        median(&mut totals),
        median(&mut resource_times),
        median(&mut overheads),
    );
    println!(
        "BENCH switchover_time: median {med_total:.0} ms from command to peer active over {runs} runs; the resource's own stop+start {med_resource:.0} ms; Understudy's part {med_overhead:.0} ms (ratio to the 1000 ms budget {:.3}); target < 1000 ms plus the resource's time: {}",
        med_overhead / 1000.0,
        if med_overhead < 1000.0 { "MET" } else { "MISSED" }
    );
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn channel_partition_never_fails_over() {
    if !require_root("channel_partition_never_fails_over") {
        return;
    }
    let trials = env_u64("BENCH_PARTITION_TRIALS", 50);
    let pair = Pair::start("bench-partition", Timing::default()).expect("pair");
    let mut failovers = 0;
    for trial in 0..trials {
        let active = pair.wait_settled(Duration::from_secs(10)).expect("settled");
        let before = pair.role_changes(1 - active).len();
        pair.net.cut_all_channels(active).expect("cut");
        // Twice the failover timeout with only the channel gone.
        std::thread::sleep(Duration::from_millis(2 * Timing::default().failover_ms));
        let after = pair.role_changes(1 - active).len();
        let roles = (pair.role(active), pair.role(1 - active));
        pair.net.heal_all_channels(active).expect("heal");
        if after != before || roles.1.as_deref() != Some("passive") {
            failovers += 1;
            println!("BENCH partition trial {trial}: FAILOVER ({roles:?})");
        }
    }
    println!(
        "BENCH channel_partition: {failovers} failovers in {trials} trials (target 0): {}",
        if failovers == 0 { "MET" } else { "MISSED" }
    );
    assert_eq!(failovers, 0);
}

#[test]
#[ignore = "benchmark: run with bench/run.sh"]
fn no_false_failover_under_cpu_load() {
    if !require_root("no_false_failover_under_cpu_load") {
        return;
    }
    let secs = env_u64("BENCH_LOAD_SECS", 600);
    let pair = Pair::start("bench-load", Timing::default()).expect("pair");
    let active = pair.wait_settled(Duration::from_secs(15)).expect("settled");
    let before = [pair.role_changes(0).len(), pair.role_changes(1).len()];
    // Two busy workers per node on a 2-core machine: four CPU hogs against two cores.
    let load = Duration::from_secs(secs);
    let _hogs = [
        stress_cpu(Some(pair.net.node(0)), 2, load).expect("load a"),
        stress_cpu(Some(pair.net.node(1)), 2, load).expect("load b"),
    ];
    let started = Instant::now();
    let mut worst_heartbeat_gap_ms = 0u64;
    while started.elapsed() < load {
        for i in 0..2 {
            if let Ok(s) = pair.status(i) {
                worst_heartbeat_gap_ms =
                    worst_heartbeat_gap_ms.max(s.last_heartbeat_ms_ago.unwrap_or(0));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = [pair.role_changes(0).len(), pair.role_changes(1).len()];
    let false_failovers = (after[0] - before[0]) + (after[1] - before[1]);
    println!(
        "BENCH cpu_load: {secs} s of 4 busy loops on 2 cores, heartbeat 100 ms, failover 1000 ms: {false_failovers} role changes (target 0), worst sampled heartbeat age {worst_heartbeat_gap_ms} ms: {}",
        if false_failovers == 0 { "MET" } else { "MISSED" }
    );
    assert_eq!(pair.role(active).as_deref(), Some("active"));
    assert_eq!(false_failovers, 0);
}
