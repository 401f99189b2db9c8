//! Runs the pair simulation over many seeds and checks its invariants.
//!
//! `SIM_SEEDS` sets how many seeds (default 10,000) and `SIM_SEED_START` the first one;
//! `SIM_SEED=N` replays one seed and prints its trace.

use understudy_sim::{run_seed, trace_seed, SimConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn invariants_hold_across_seeds() {
    let cfg = SimConfig::default();
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        let (outcome, trace) = trace_seed(seed, &cfg);
        for line in trace {
            eprintln!("{line}");
        }
        assert!(
            outcome.violation.is_none(),
            "seed {seed}: {:?}",
            outcome.violation
        );
        return;
    }
    let count = env_u64("SIM_SEEDS", 10_000);
    let start = env_u64("SIM_SEED_START", 1);
    let started = std::time::Instant::now();
    let (mut events, mut failovers) = (0u64, 0u64);
    for seed in start..start + count {
        let outcome = run_seed(seed, &cfg);
        if let Some(v) = outcome.violation {
            panic!("seed {seed} violated an invariant: {v}\nreplay: SIM_SEED={seed} cargo test -p understudy-sim -- --nocapture");
        }
        events += outcome.events;
        failovers += outcome.failovers;
    }
    eprintln!(
        "simulated {count} seeds ({events} events, {failovers} failovers) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The fault mix must actually exercise failover, or the run proves little.
    assert!(
        failovers > count / 10,
        "only {failovers} failovers in {count} seeds"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::default();
    let a = run_seed(42, &cfg);
    let b = run_seed(42, &cfg);
    assert_eq!(a.events, b.events);
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.failovers, b.failovers);
}

#[test]
fn invariants_hold_on_a_hostile_network() {
    // 10% loss and up to 150 ms of delay per message: heartbeats go missing in bursts.
    let cfg = SimConfig {
        loss_per_mille: 100,
        delay_min_ms: 5,
        delay_max_ms: 150,
        ..SimConfig::default()
    };
    let count = env_u64("SIM_SEEDS", 10_000) / 5;
    for seed in 1_000_000..1_000_000 + count {
        let outcome = run_seed(seed, &cfg);
        if let Some(v) = outcome.violation {
            panic!("seed {seed} (hostile network) violated an invariant: {v}");
        }
    }
}
