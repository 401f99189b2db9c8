//! `read_frame` / `write_frame` over an in-memory duplex pipe: round trips, clean and
//! mid-frame EOF, garbage, and resuming after a cancelled read.

use std::time::Duration;

use tokio::io::{duplex, AsyncWriteExt};
use understudy_core::{Epoch, NodeIndex, NodeStatus, Phase};
use understudy_wire::{encode, read_frame, write_frame, Frame, WireError};

fn status() -> NodeStatus {
    NodeStatus {
        node: NodeIndex(0),
        phase: Phase::Promoting,
        epoch: Epoch(42),
        last_active_epoch: Epoch(40),
        public_ok: true,
        eligible: true,
        yielding: false,
        leaving: false,
        requests_switchover: false,
        auto_moves: 0,
    }
}

fn frames() -> Vec<Frame> {
    vec![
        Frame::Status(status()),
        Frame::Probe(status()),
        Frame::ProbeReply(status()),
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
    ]
}

#[tokio::test]
async fn write_then_read_round_trips() {
    // A pipe smaller than one frame forces partial reads and writes.
    let (mut a, mut b) = duplex(5);
    let writer = tokio::spawn(async move {
        let mut scratch = Vec::new();
        for frame in frames() {
            write_frame(&mut a, &frame, &mut scratch)
                .await
                .expect("write");
        }
        // Dropping `a` closes the stream on a frame boundary.
    });
    let mut buf = Vec::new();
    for expected in frames() {
        let got = read_frame(&mut b, &mut buf).await.expect("read");
        assert_eq!(got, expected);
        assert!(buf.is_empty(), "read_frame must not read past its frame");
    }
    assert!(matches!(
        read_frame(&mut b, &mut buf).await,
        Err(WireError::Closed)
    ));
    writer.await.expect("writer task");
}

#[tokio::test]
async fn back_to_back_frames_in_one_write_are_read_one_at_a_time() {
    let (mut a, mut b) = duplex(1024);
    let mut bytes = Vec::new();
    for frame in frames() {
        encode(&frame, &mut bytes);
    }
    a.write_all(&bytes).await.expect("write");
    drop(a);
    let mut buf = Vec::new();
    for expected in frames() {
        assert_eq!(read_frame(&mut b, &mut buf).await.expect("read"), expected);
    }
    assert!(matches!(
        read_frame(&mut b, &mut buf).await,
        Err(WireError::Closed)
    ));
}

#[tokio::test]
async fn eof_mid_frame_is_an_error_not_a_hang() {
    let mut bytes = Vec::new();
    encode(&Frame::Status(status()), &mut bytes);
    for cut in 1..bytes.len() {
        let (mut a, mut b) = duplex(64);
        a.write_all(&bytes[..cut]).await.expect("write");
        drop(a);
        let mut buf = Vec::new();
        let result = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut b, &mut buf))
            .await
            .expect("read_frame must not hang on EOF");
        assert!(
            matches!(result, Err(WireError::Truncated(n)) if n == cut),
            "cut at {cut}: {result:?}"
        );
    }
}

#[tokio::test]
async fn garbage_is_refused_without_waiting_for_its_length() {
    let (mut a, mut b) = duplex(64);
    // A header claiming a 4 GiB body: refused from the header, stream left open.
    a.write_all(&[b'U', b'S', 0x01, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let mut buf = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut b, &mut buf))
        .await
        .expect("must not wait for the body");
    assert!(matches!(
        result,
        Err(WireError::BodyTooLong { len: u32::MAX })
    ));
    assert!(buf.capacity() < 1024, "hostile length must not allocate");
}

#[tokio::test]
async fn a_cancelled_read_resumes_with_the_same_buffer() {
    let (mut a, mut b) = duplex(64);
    let mut bytes = Vec::new();
    encode(&Frame::Ping { nonce: 99 }, &mut bytes);
    a.write_all(&bytes[..10]).await.expect("write");
    let mut buf = Vec::new();
    // Cancelled mid-frame, as a select! on a heartbeat timer would.
    let first = tokio::time::timeout(Duration::from_millis(50), read_frame(&mut b, &mut buf)).await;
    assert!(first.is_err(), "nothing complete to read yet");
    assert_eq!(buf.len(), 10, "the partial frame stays in the buffer");
    a.write_all(&bytes[10..]).await.expect("write");
    assert_eq!(
        read_frame(&mut b, &mut buf).await.expect("read"),
        Frame::Ping { nonce: 99 }
    );
}
