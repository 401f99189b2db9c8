//! Fuzzes the replication stream's decoders with arbitrary bytes: `decode_record` (every op
//! a passive applies comes through it) and the handshake frames. They must never panic, and
//! any record accepted must re-encode to exactly the bytes it was decoded from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_oplog::{decode_record, encode_record};
use understudy_replication::proto::{decode_ack, Hello, Welcome};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        let mut again = Vec::new();
        encode_record(&record, &mut again);
        assert_eq!(again, data, "accepted a non-canonical record");
    }
    let _ = Hello::decode(data);
    let _ = Welcome::decode(data);
    let _ = decode_ack(data);
});
