//! Property tests of the codec: round trips, no panics on arbitrary input, corruption
//! detection and streaming (prefixes and back-to-back frames).

use proptest::prelude::*;
use understudy_core::{Epoch, NodeIndex, NodeStatus, Phase};
use understudy_wire::{decode, encode, Frame};

fn arb_status() -> impl Strategy<Value = NodeStatus> {
    (
        (
            0u8..2,
            0u8..4,
            any::<u64>(),
            any::<u64>(),
            any::<[bool; 5]>(),
        ),
        any::<u8>(),
    )
        .prop_map(
            |((node, phase, epoch, last_active, flags), auto_moves)| NodeStatus {
                node: NodeIndex(node),
                phase: Phase::from_wire(phase).expect("strategy yields valid phases"),
                epoch: Epoch(epoch),
                last_active_epoch: Epoch(last_active),
                public_ok: flags[0],
                eligible: flags[1],
                yielding: flags[2],
                leaving: flags[3],
                requests_switchover: flags[4],
                auto_moves,
            },
        )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_status().prop_map(Frame::Status),
        arb_status().prop_map(Frame::Probe),
        arb_status().prop_map(Frame::ProbeReply),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
    ]
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

proptest! {
    #[test]
    fn frames_round_trip(frame in arb_frame()) {
        let bytes = encoded(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let decoded = decode(&bytes);
        prop_assert!(matches!(decoded, Ok(Some((f, n))) if f == frame && n == bytes.len()));
    }

    /// Arbitrary bytes never panic, and whatever does decode is canonical: it consumed no
    /// more than it was given and re-encodes to exactly the bytes it came from.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(Some((frame, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
            let again = encoded(&frame);
            prop_assert_eq!(again.as_slice(), &bytes[..used]);
        }
    }

    /// Same, but starting from a valid header so the fuzz reaches the body checks.
    #[test]
    fn arbitrary_bodies_never_panic(
        frame in arb_frame(),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = encoded(&frame);
        bytes.truncate(7);
        bytes.extend_from_slice(&tail);
        if let Ok(Some((decoded, used))) = decode(&bytes) {
            let again = encoded(&decoded);
            prop_assert_eq!(again.as_slice(), &bytes[..used]);
        }
    }

    /// Every single-bit flip, exhaustively, is an error: the header checks or the CRC
    /// (which detects all single-bit errors) catch each one. In particular a flip never
    /// turns into a silently different frame, nor into a wait for bytes that never come.
    #[test]
    fn every_single_bit_flip_is_rejected(frame in arb_frame()) {
        let bytes = encoded(&frame);
        for bit in 0..bytes.len() * 8 {
            let mut corrupt = bytes.clone();
            corrupt[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&corrupt);
            prop_assert!(result.is_err(), "flip of bit {} decoded as {:?}", bit, result);
        }
    }

    #[test]
    fn truncated_frames_need_more(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encoded(&frame);
        let cut = cut.index(bytes.len());
        prop_assert!(matches!(decode(&bytes[..cut]), Ok(None)));
    }

    #[test]
    fn concatenated_frames_decode_in_turn(first in arb_frame(), second in arb_frame()) {
        let mut bytes = Vec::new();
        encode(&first, &mut bytes);
        encode(&second, &mut bytes);
        let (a, used_a) = decode(&bytes).expect("first valid").expect("first complete");
        prop_assert_eq!(a, first);
        let (b, used_b) = decode(&bytes[used_a..]).expect("second valid").expect("second complete");
        prop_assert_eq!(b, second);
        prop_assert_eq!(used_a + used_b, bytes.len());
    }
}
