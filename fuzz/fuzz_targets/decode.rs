//! Fuzzes `understudy_wire::decode` with arbitrary bytes: it must never panic, and any
//! frame it accepts must be canonical, re-encoding to the exact bytes it was decoded from
//! and decoding again to an equal frame.
//!
//! Each input is tried twice: as given, and with the magic and a correct CRC patched in
//! (the CRC where the input's header says it goes). Without the second pass almost every
//! mutation dies at the magic or the checksum, and the checks behind them (type, length,
//! node, phase, flags) would barely be fuzzed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_wire::{decode, encode, CRC_LEN, HEADER_LEN, MAGIC};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&with_valid_framing(data));
});

fn check(data: &[u8]) {
    let Ok(Some((frame, used))) = decode(data) else {
        return;
    };
    assert!(
        used <= data.len(),
        "consumed {used} of {} bytes",
        data.len()
    );

    let mut again = Vec::new();
    encode(&frame, &mut again);
    // The decoder accepts exactly one encoding per frame, so this must be byte-identical.
    assert_eq!(
        again.as_slice(),
        &data[..used],
        "re-encoding of {frame:?} differs"
    );

    match decode(&again) {
        Ok(Some((redecoded, n))) => {
            assert_eq!(redecoded, frame);
            assert_eq!(n, again.len());
        }
        other => panic!("re-encoding of {frame:?} does not decode: {other:?}"),
    }
}

/// `data` with the magic written over its first two bytes and, if it is long enough to
/// hold the frame its header describes, the CRC over type, length and body recomputed.
fn with_valid_framing(data: &[u8]) -> Vec<u8> {
    let mut fixed = data.to_vec();
    for (byte, magic) in fixed.iter_mut().zip(MAGIC.to_be_bytes()) {
        *byte = magic;
    }
    // Too short to hold a CRC is fine: that input then exercises the "need more" paths.
    let _ = fix_crc(&mut fixed);
    fixed
}

fn fix_crc(frame: &mut [u8]) -> Option<()> {
    let len_bytes: [u8; 4] = frame.get(3..HEADER_LEN)?.try_into().ok()?;
    let body_len = usize::try_from(u32::from_le_bytes(len_bytes)).ok()?;
    let body_end = HEADER_LEN.checked_add(body_len)?;
    let crc_end = body_end.checked_add(CRC_LEN)?;
    let crc = crc32c::crc32c(frame.get(2..body_end)?);
    frame
        .get_mut(body_end..crc_end)?
        .copy_from_slice(&crc.to_le_bytes());
    Some(())
}
