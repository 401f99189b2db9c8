//! Fuzzes the channel's record layer (`understudy_tls::records`), which reads bytes from the
//! network after the handshake. The first input byte picks what the rest is: bytes straight
//! off the wire (headers, lengths and forged tags from someone without the key), or the inner
//! plaintext of a record sealed with the real key (content types, padding and alerts from a
//! peer that has it). Either way the reader must never panic, and must hand out only the
//! content of authentic application-data records.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;
use understudy_tls::records::{seal_record, Direction, RecordReader};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::ConnectionTrafficSecrets;

fn direction() -> Direction {
    let secrets = ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from([7u8; 32]),
        iv: Iv::from([3u8; 12]),
    };
    Direction::new((0, secrets), 1 << 24).expect("valid key")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let wire = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut wire = Vec::new();
        let mut tx = direction();
        for inner in rest.split(|&b| b == 0xff).take(8) {
            if seal_record(&mut tx, &mut wire, &[inner]).is_err() {
                return;
            }
        }
        wire
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut reader = RecordReader::new(&wire[..], direction());
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got).await;
        if mode % 2 == 0 {
            // Without the key nothing can be authentic.
            assert!(got.is_empty(), "handed out unauthenticated bytes");
        }
    });
});
