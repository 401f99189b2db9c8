//! Understudy's wire codec: the framed binary messages the two daemons exchange, over the
//! channel links (heartbeats, pings) and over the public network (management probes).
//!
//! Every frame is
//!
//! ```text
//! magic "US" (2 bytes) | type u8 | body_len u32 LE | body | crc32c u32 LE
//! ```
//!
//! where the CRC covers `type`, `body_len` and `body`. The magic is the ASCII pair `U`,`S`
//! (`0x5553` read big-endian) so frames stand out in a packet capture.
//!
//! The decoder is strict on purpose: this is the input an HA daemon acts on, so anything
//! that is not exactly a frame we could have sent is an error rather than a best guess.
//! The body length must be exactly the type's length, enum bytes and flag bits must be
//! known, and re-encoding a decoded frame reproduces its bytes. Header fields are checked
//! as soon as they arrive, so a hostile length is refused before anything is buffered for
//! it. Decoding never panics and never copies: it reads straight out of the caller's slice.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use understudy_core::{Epoch, NodeIndex, NodeStatus, Phase};

/// The frame magic, `"US"`. Sent as the two ASCII bytes (big-endian), unlike the
/// little-endian numeric fields, so that it reads as "US" in a hex dump.
pub const MAGIC: u16 = 0x5553;

/// The largest body any frame may declare. Today every type has a fixed body far below
/// this; the limit is the guard that keeps a future variable-length type from letting a
/// peer make us buffer an arbitrary amount.
pub const MAX_FRAME_BODY: usize = 64 * 1024;

/// Magic, type and body length.
pub const HEADER_LEN: usize = 2 + 1 + 4;

/// The trailing CRC-32C.
pub const CRC_LEN: usize = 4;

const MAGIC_BYTES: [u8; 2] = MAGIC.to_be_bytes();

const TYPE_STATUS: u8 = 0x01;
const TYPE_PROBE: u8 = 0x02;
const TYPE_PROBE_REPLY: u8 = 0x03;
const TYPE_PING: u8 = 0x04;
const TYPE_PONG: u8 = 0x05;

/// node u8, phase u8, epoch u64, last_active_epoch u64, flags u8.
// node, phase, epoch, last_active_epoch, flags, auto_moves
const STATUS_BODY_LEN: usize = 1 + 1 + 8 + 8 + 1 + 1;
const NONCE_BODY_LEN: usize = 8;

const FLAG_PUBLIC_OK: u8 = 1 << 0;
const FLAG_ELIGIBLE: u8 = 1 << 1;
const FLAG_YIELDING: u8 = 1 << 2;
const FLAG_LEAVING: u8 = 1 << 3;
const FLAG_REQUESTS_SWITCHOVER: u8 = 1 << 4;
const KNOWN_FLAGS: u8 =
    FLAG_PUBLIC_OK | FLAG_ELIGIBLE | FLAG_YIELDING | FLAG_LEAVING | FLAG_REQUESTS_SWITCHOVER;

/// One message between the two daemons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Heartbeat over a channel link: the sender's status.
    Status(NodeStatus),
    /// Management probe request (over the public network): the prober's status.
    Probe(NodeStatus),
    /// Answer to a probe: the answerer's status.
    ProbeReply(NodeStatus),
    /// Per-link round-trip measurement.
    Ping { nonce: u64 },
    /// Answer to a `Ping`, echoing its nonce.
    Pong { nonce: u64 },
}

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Status(_) => TYPE_STATUS,
            Frame::Probe(_) => TYPE_PROBE,
            Frame::ProbeReply(_) => TYPE_PROBE_REPLY,
            Frame::Ping { .. } => TYPE_PING,
            Frame::Pong { .. } => TYPE_PONG,
        }
    }

    /// The number of bytes `encode` appends for this frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + body_len_of(self.type_byte()).unwrap_or(0) + CRC_LEN
    }
}

/// The one body length each type may carry; `None` for a type we do not know.
fn body_len_of(frame_type: u8) -> Option<usize> {
    match frame_type {
        TYPE_STATUS | TYPE_PROBE | TYPE_PROBE_REPLY => Some(STATUS_BODY_LEN),
        TYPE_PING | TYPE_PONG => Some(NONCE_BODY_LEN),
        _ => None,
    }
}

/// Why bytes from the peer are not a frame, or why the stream carrying them failed.
///
/// Every decoding error means the stream has lost framing (there is no way to find the
/// next frame boundary in a corrupt stream), so the connection should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic 0x{found:04x} (expected 0x5553, \"US\")")]
    BadMagic { found: u16 },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame body of {len} bytes exceeds the {max}-byte limit", max = MAX_FRAME_BODY)]
    BodyTooLong { len: u32 },
    #[error(
        "frame type 0x{frame_type:02x} has a {expected}-byte body, but the header says {len} bytes"
    )]
    BodyLength {
        frame_type: u8,
        expected: usize,
        len: u32,
    },
    #[error("frame checksum mismatch (computed 0x{computed:08x}, frame carries 0x{carried:08x})")]
    Checksum { computed: u32, carried: u32 },
    #[error("invalid node index {0} in status (must be 0 or 1)")]
    BadNode(u8),
    #[error("invalid phase byte {0} in status (must be 0 to 3)")]
    BadPhase(u8),
    #[error("reserved status flag bits set: 0x{0:02x}")]
    ReservedFlags(u8),
    /// The stream ended cleanly, on a frame boundary.
    #[error("connection closed")]
    Closed,
    /// The stream ended part-way through a frame.
    #[error("connection closed mid-frame, after {0} bytes of it")]
    Truncated(usize),
    #[error("i/o error on frame stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends the encoding of `frame` to `out`.
///
/// A status whose `node` is not 0 or 1 still encodes (the core guarantees it never is),
/// but the peer will reject it with [`WireError::BadNode`].
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    out.reserve(frame.encoded_len());
    let start = out.len();
    let frame_type = frame.type_byte();
    out.extend_from_slice(&MAGIC_BYTES);
    out.push(frame_type);
    // Body lengths are small constants, so the cast is exact.
    let body_len = body_len_of(frame_type).unwrap_or(0) as u32;
    out.extend_from_slice(&body_len.to_le_bytes());
    match frame {
        Frame::Status(s) | Frame::Probe(s) | Frame::ProbeReply(s) => put_status(out, s),
        Frame::Ping { nonce } | Frame::Pong { nonce } => {
            out.extend_from_slice(&nonce.to_le_bytes())
        }
    }
    // The CRC covers everything after the magic, i.e. what we just appended past it.
    let crc = crc32c::crc32c(&out[start + MAGIC_BYTES.len()..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn put_status(out: &mut Vec<u8>, s: &NodeStatus) {
    out.push(s.node.0);
    out.push(s.phase.to_wire());
    out.extend_from_slice(&s.epoch.0.to_le_bytes());
    out.extend_from_slice(&s.last_active_epoch.0.to_le_bytes());
    let flags = [
        (s.public_ok, FLAG_PUBLIC_OK),
        (s.eligible, FLAG_ELIGIBLE),
        (s.yielding, FLAG_YIELDING),
        (s.leaving, FLAG_LEAVING),
        (s.requests_switchover, FLAG_REQUESTS_SWITCHOVER),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0u8, |acc, (_, bit)| acc | bit);
    out.push(flags);
    out.push(s.auto_moves);
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds a valid but incomplete prefix of a frame, and
/// `Ok(Some((frame, consumed)))` when it holds a whole one; bytes past `consumed` are left
/// for the next call.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    Ok(match decode_step(buf)? {
        Step::Frame(frame, consumed) => Some((frame, consumed)),
        Step::Need(_) => None,
    })
}

/// Where decoding a buffer got to.
enum Step {
    Frame(Frame, usize),
    /// The buffer is a valid prefix; the frame needs at least this many bytes in total.
    /// Exact once the header is in, which is what lets `read_frame` never read past a frame.
    Need(usize),
}

fn decode_step(buf: &[u8]) -> Result<Step, WireError> {
    // Each header field is checked as soon as its bytes are here: garbage is refused at
    // once, rather than after waiting for a length the garbage made up.
    let Some((magic, rest)) = buf.split_first_chunk::<2>() else {
        return Ok(Step::Need(HEADER_LEN));
    };
    if *magic != MAGIC_BYTES {
        return Err(WireError::BadMagic {
            found: u16::from_be_bytes(*magic),
        });
    }
    let Some((&frame_type, rest)) = rest.split_first() else {
        return Ok(Step::Need(HEADER_LEN));
    };
    let expected = body_len_of(frame_type).ok_or(WireError::UnknownType(frame_type))?;
    let Some((len_bytes, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(Step::Need(HEADER_LEN));
    };
    let len = u32::from_le_bytes(*len_bytes);
    // Both checks happen before a single body byte is awaited, so a hostile length costs
    // nothing. The limit check comes first so an absurd length gets the clearer message.
    if usize::try_from(len).map_or(true, |len| len > MAX_FRAME_BODY) {
        return Err(WireError::BodyTooLong { len });
    }
    if usize::try_from(len) != Ok(expected) {
        return Err(WireError::BodyLength {
            frame_type,
            expected,
            len,
        });
    }
    let total = HEADER_LEN + expected + CRC_LEN;
    let Some((body, rest)) = rest.split_at_checked(expected) else {
        return Ok(Step::Need(total));
    };
    let Some((crc_bytes, _)) = rest.split_first_chunk::<4>() else {
        return Ok(Step::Need(total));
    };
    let carried = u32::from_le_bytes(*crc_bytes);
    // Computed piecewise over the subslices we already hold, rather than re-slicing `buf`.
    let computed = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&[frame_type]), len_bytes),
        body,
    );
    if computed != carried {
        return Err(WireError::Checksum { computed, carried });
    }
    let mut body = Body {
        rest: body,
        frame_type,
        expected,
    };
    let frame = match frame_type {
        TYPE_STATUS => Frame::Status(body.status()?),
        TYPE_PROBE => Frame::Probe(body.status()?),
        TYPE_PROBE_REPLY => Frame::ProbeReply(body.status()?),
        TYPE_PING => Frame::Ping { nonce: body.u64()? },
        TYPE_PONG => Frame::Pong { nonce: body.u64()? },
        other => return Err(WireError::UnknownType(other)),
    };
    Ok(Step::Frame(frame, total))
}

/// A cursor over a body whose length was already checked against its type.
///
/// Running short is therefore impossible, but it still yields an error instead of a panic,
/// so no input can reach a panicking path whatever a future edit does to the checks above.
struct Body<'a> {
    rest: &'a [u8],
    frame_type: u8,
    expected: usize,
}

impl Body<'_> {
    fn short(&self) -> WireError {
        WireError::BodyLength {
            frame_type: self.frame_type,
            expected: self.expected,
            len: u32::try_from(self.rest.len()).unwrap_or(u32::MAX),
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.rest.split_first().ok_or_else(|| self.short())?;
        self.rest = rest;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let (bytes, rest) = self
            .rest
            .split_first_chunk::<8>()
            .ok_or_else(|| self.short())?;
        self.rest = rest;
        Ok(u64::from_le_bytes(*bytes))
    }

    fn status(&mut self) -> Result<NodeStatus, WireError> {
        let node = self.u8()?;
        let phase = self.u8()?;
        let epoch = self.u64()?;
        let last_active_epoch = self.u64()?;
        let flags = self.u8()?;
        let auto_moves = self.u8()?;
        if node > 1 {
            return Err(WireError::BadNode(node));
        }
        let phase = Phase::from_wire(phase).ok_or(WireError::BadPhase(phase))?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::ReservedFlags(flags & !KNOWN_FLAGS));
        }
        Ok(NodeStatus {
            node: NodeIndex(node),
            phase,
            epoch: Epoch(epoch),
            last_active_epoch: Epoch(last_active_epoch),
            public_ok: flags & FLAG_PUBLIC_OK != 0,
            eligible: flags & FLAG_ELIGIBLE != 0,
            yielding: flags & FLAG_YIELDING != 0,
            leaving: flags & FLAG_LEAVING != 0,
            requests_switchover: flags & FLAG_REQUESTS_SWITCHOVER != 0,
            auto_moves,
        })
    }
}

/// Reads one frame from `r`.
///
/// `buf` is scratch space to reuse across calls on the same stream; start it empty.
/// This reads exactly one frame's bytes and never past them, so on success `buf` is left
/// empty (capacity kept) and the stream sits right after the frame.
///
/// Cancel safety: the only await is a single read whose bytes land in `buf` before it
/// completes, so if this future is dropped (say, by a `select!` timer) the partial frame
/// stays in `buf`, and calling again with the same `buf` carries on where it stopped.
///
/// `buf` belongs to this stream's reads alone: never pass it to [`write_frame`] as scratch,
/// or bytes written would be decoded as bytes read.
///
/// A clean end of stream between frames is [`WireError::Closed`]; one inside a frame is
/// [`WireError::Truncated`]. After any error the stream has lost framing and `buf` holds
/// whatever was read; drop the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Frame, WireError> {
    loop {
        let need = match decode_step(buf)? {
            Step::Frame(frame, _) => {
                buf.clear();
                return Ok(frame);
            }
            Step::Need(total) => total.saturating_sub(buf.len()),
        };
        // `need` is bounded by a header that decode_step has vetted, so this reservation is
        // at most one small frame, whatever the peer claims.
        buf.reserve(need);
        // `take` keeps the read from consuming bytes of the next frame.
        let read = (&mut *r).take(need as u64).read_buf(buf).await?;
        if read == 0 {
            return Err(if buf.is_empty() {
                WireError::Closed
            } else {
                WireError::Truncated(buf.len())
            });
        }
    }
}

/// Encodes `frame` into `scratch` (cleared first, capacity reused), writes it and flushes,
/// so a heartbeat is not left sitting in a buffer (a TLS stream holds data until flushed).
///
/// Not cancel-safe: dropping this future mid-write leaves a partial frame on the stream,
/// which the peer will see as a broken stream.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    scratch: &mut Vec<u8>,
) -> Result<(), WireError> {
    scratch.clear();
    encode(frame, scratch);
    w.write_all(scratch).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Byte-level tests: the exact layout, and one test per way a frame can be refused.

    use super::*;

    fn status() -> NodeStatus {
        NodeStatus {
            node: NodeIndex(1),
            phase: Phase::Active,
            epoch: Epoch(0x0102_0304_0506_0708),
            last_active_epoch: Epoch(7),
            public_ok: true,
            eligible: false,
            yielding: true,
            leaving: false,
            requests_switchover: true,
            auto_moves: 3,
        }
    }

    fn round_trip(frame: Frame) {
        let mut out = Vec::new();
        encode(&frame, &mut out);
        assert_eq!(out.len(), frame.encoded_len());
        let (decoded, used) = decode(&out).expect("valid frame").expect("complete frame");
        assert_eq!(decoded, frame);
        assert_eq!(used, out.len());
    }

    /// Builds a frame from raw parts with a correct CRC, to reach the checks behind it.
    fn raw(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC_BYTES.to_vec();
        out.push(frame_type);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32c::crc32c(&out[2..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn encoded(frame: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&frame, &mut out);
        out
    }

    #[test]
    fn every_variant_round_trips() {
        round_trip(Frame::Status(status()));
        round_trip(Frame::Probe(status()));
        round_trip(Frame::ProbeReply(NodeStatus {
            node: NodeIndex(0),
            phase: Phase::Passive,
            epoch: Epoch(0),
            last_active_epoch: Epoch(0),
            public_ok: false,
            eligible: true,
            yielding: false,
            leaving: true,
            requests_switchover: false,
            auto_moves: 0,
        }));
        round_trip(Frame::Ping { nonce: 0 });
        round_trip(Frame::Pong { nonce: u64::MAX });
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = encoded(Frame::Status(status()));
        let expected_prefix: &[u8] = &[
            b'U', b'S', // magic
            0x01, // type: status
            20, 0, 0, 0, // body_len LE
            1, // node
            2, // phase: active
            8, 7, 6, 5, 4, 3, 2, 1, // epoch LE
            7, 0, 0, 0, 0, 0, 0, 0,        // last_active_epoch LE
            0b1_0101, // public_ok | yielding | requests_switchover
            3,        // auto_moves
        ];
        assert_eq!(&bytes[..bytes.len() - 4], expected_prefix);
        let crc = crc32c::crc32c(&bytes[2..bytes.len() - 4]);
        assert_eq!(&bytes[bytes.len() - 4..], &crc.to_le_bytes());

        let ping = encoded(Frame::Pong { nonce: 0x1122 });
        assert_eq!(
            &ping[..15],
            &[b'U', b'S', 0x05, 8, 0, 0, 0, 0x22, 0x11, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![0xaa];
        encode(&Frame::Ping { nonce: 1 }, &mut out);
        assert_eq!(out[0], 0xaa);
        assert_eq!(
            decode(&out[1..]).unwrap().unwrap().0,
            Frame::Ping { nonce: 1 }
        );
    }

    #[test]
    fn bad_magic() {
        let mut bytes = encoded(Frame::Ping { nonce: 1 });
        bytes[1] = b'T';
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, WireError::BadMagic { found: 0x5554 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "bad frame magic 0x5554 (expected 0x5553, \"US\")"
        );
        // Refused as soon as the two magic bytes are in.
        assert!(decode(&bytes[..2]).is_err());
    }

    #[test]
    fn unknown_type_is_refused_from_the_header_alone() {
        let err = decode(&[b'U', b'S', 0x7f]).unwrap_err();
        assert!(matches!(err, WireError::UnknownType(0x7f)));
        assert_eq!(err.to_string(), "unknown frame type 0x7f");
        assert!(matches!(
            decode(&raw(0x00, &[])),
            Err(WireError::UnknownType(0))
        ));
    }

    #[test]
    fn over_long_body_is_refused_before_any_body_arrives() {
        let mut header = vec![b'U', b'S', TYPE_STATUS];
        header.extend_from_slice(&1_234_567u32.to_le_bytes());
        let err = decode(&header).unwrap_err();
        assert!(matches!(err, WireError::BodyTooLong { len: 1_234_567 }));
        assert_eq!(
            err.to_string(),
            "frame body of 1234567 bytes exceeds the 65536-byte limit"
        );
        header[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&header),
            Err(WireError::BodyTooLong { .. })
        ));
    }

    #[test]
    fn body_length_must_match_the_type() {
        // Within the limit but not the type's length: trailing bytes are refused...
        let mut body = encoded(Frame::Ping { nonce: 3 })[HEADER_LEN..HEADER_LEN + 8].to_vec();
        body.push(0);
        let err = decode(&raw(TYPE_PING, &body)).unwrap_err();
        assert!(matches!(
            err,
            WireError::BodyLength {
                frame_type: TYPE_PING,
                expected: 8,
                len: 9
            }
        ));
        assert_eq!(
            err.to_string(),
            "frame type 0x04 has a 8-byte body, but the header says 9 bytes"
        );
        // ...and so are short bodies, from the header alone.
        assert!(matches!(
            decode(&raw(TYPE_STATUS, &[0; 8])[..HEADER_LEN]),
            Err(WireError::BodyLength {
                expected: 20,
                len: 8,
                ..
            })
        ));
        // A body exactly at the limit is still the wrong length for every type.
        let mut header = vec![b'U', b'S', TYPE_PONG];
        header.extend_from_slice(&(MAX_FRAME_BODY as u32).to_le_bytes());
        assert!(matches!(decode(&header), Err(WireError::BodyLength { .. })));
    }

    #[test]
    fn checksum_mismatch() {
        let mut bytes = encoded(Frame::Status(status()));
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, WireError::Checksum { .. }));
        assert!(err.to_string().starts_with("frame checksum mismatch"));
    }

    fn status_body(node: u8, phase: u8, flags: u8) -> Vec<u8> {
        let mut body = vec![node, phase];
        body.extend_from_slice(&[0; 16]);
        body.push(flags);
        body.push(0); // auto_moves
        body
    }

    #[test]
    fn bad_enum_values_behind_a_good_checksum() {
        let err = decode(&raw(TYPE_STATUS, &status_body(2, 0, 0))).unwrap_err();
        assert!(matches!(err, WireError::BadNode(2)));
        assert_eq!(
            err.to_string(),
            "invalid node index 2 in status (must be 0 or 1)"
        );

        let err = decode(&raw(TYPE_PROBE, &status_body(0, 4, 0))).unwrap_err();
        assert!(matches!(err, WireError::BadPhase(4)));

        let err = decode(&raw(TYPE_PROBE_REPLY, &status_body(0, 0, 0x21))).unwrap_err();
        assert!(matches!(err, WireError::ReservedFlags(0x20)));
        assert_eq!(err.to_string(), "reserved status flag bits set: 0x20");

        // Every known flag on its own is accepted.
        for bit in 0..5 {
            let frame = decode(&raw(TYPE_STATUS, &status_body(0, 3, 1 << bit)));
            assert!(
                matches!(frame, Ok(Some((Frame::Status(_), _)))),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        let bytes = encoded(Frame::Probe(status()));
        for cut in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Ok(None)), "cut at {cut}");
        }
    }

    #[test]
    fn need_is_exact_once_the_header_is_in() {
        let bytes = encoded(Frame::Status(status()));
        for cut in HEADER_LEN..bytes.len() {
            assert!(matches!(decode_step(&bytes[..cut]), Ok(Step::Need(n)) if n == bytes.len()));
        }
    }
}
