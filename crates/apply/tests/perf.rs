//! Throughput sanity check (prints, does not assert): a stream of 4 KiB writes to one file
//! with a group commit every 100 records, as the passive sees a sequential writer.

mod common;

use std::time::Instant;

use common::*;
use understudy_oplog::{FileRef, Op, Record};

fn run(with_mtimes: bool) {
    const WRITES: u64 = 10_000;
    const SYNC_EVERY: u64 = 100;
    let mut r = Replica::new();
    r.ok(file("big", 0o644));
    let block = vec![0x5a_u8; 4096];
    let start = Instant::now();
    for i in 0..WRITES {
        let record = Record {
            seq: r.applier.last_applied() + 1,
            op: Op::Write {
                file: FileRef::Path(b"big".to_vec()),
                offset: i * 4096,
                data: block.clone(),
            },
            mtimes: if with_mtimes {
                vec![(FileRef::Path(b"big".to_vec()), ts(1_700_000_000, i as u32))]
            } else {
                vec![]
            },
        };
        r.applier.apply(&record).expect("apply write");
        if (i + 1) % SYNC_EVERY == 0 {
            r.applier.sync().expect("sync");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(r.at("big")).expect("stat").len();
    assert_eq!(size, WRITES * 4096);
    println!(
        "apply perf ({}): {WRITES} x 4 KiB writes, fdatasync every {SYNC_EVERY}: {:.3} s, {:.0} ops/s, {:.1} MiB/s",
        if with_mtimes { "with an mtime per record" } else { "no mtimes" },
        elapsed,
        WRITES as f64 / elapsed,
        (WRITES * 4096) as f64 / elapsed / (1 << 20) as f64,
    );
}

#[test]
fn sequential_4k_writes_throughput() {
    run(false);
    run(true);
}
