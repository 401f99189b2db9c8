//! Frames of the replication stream, one mutual-TLS connection per set, the active dialling
//! the passive: `u32 length` (of kind + body) + `u8 kind` + body, little-endian.
//!
//! Active to passive: `Hello`, then `Plan` (stream, or resync from a seq), then `Records`
//! (live ops and resync/verify records, in seq order) and `HashRequest`s.
//! Passive to active: `Welcome`, then `Ack`s, and what a resync or verify reports: `Need`
//! (files whose content must be sent), `Hashes` (block hashes of its copy of a file),
//! `VerifyDiffs`, `VerifyCompare` and `VerifyRangeResult`. Both send keepalives.
//!
//! The TLS layer already guarantees integrity, so there is no checksum here. Every length and
//! count is bounded before allocation, because the bytes come from the network.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::state::Generation;

/// Largest frame accepted: a batch of records (each at most a 1 MiB write plus headers).
pub const FRAME_MAX_BYTES: usize = 40 << 20;
/// Longest set name.
const NAME_MAX: usize = 255;
/// Longest path in a frame (PATH_MAX).
const PATH_MAX: usize = 4096;
/// Most paths a passive lists as its own changes; more are sent as "unknown".
pub const CHANGED_MAX: usize = 100_000;
/// Most bytes of changed paths in a welcome; more are sent as "unknown".
pub const CHANGED_MAX_BYTES: usize = 16 << 20;
/// Most items in one report frame.
pub const ITEMS_MAX: usize = 65_536;
/// Most block hashes for one file (16 TiB at the largest block size).
pub const HASHES_MAX: usize = 1 << 24;

pub mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const RECORDS: u8 = 3;
    pub const ACK: u8 = 4;
    pub const PLAN: u8 = 5;
    pub const KEEPALIVE: u8 = 6;
    pub const HASH_REQUEST: u8 = 7;
    pub const HASHES: u8 = 8;
    pub const NEED: u8 = 9;
    pub const VERIFY_DIFFS: u8 = 10;
    pub const VERIFY_COMPARE: u8 = 11;
    pub const VERIFY_RANGE: u8 = 12;
    /// The active confirms a lease renewal it took (a `sync`-mode set): [`super::Lease`].
    pub const LEASE: u8 = 13;
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("unexpected frame kind {0}")]
    Unexpected(u8),
}

/// The active introduces itself and the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub set: String,
    pub history: Vec<Generation>,
    pub next_seq: u64,
    /// Whether the active's lineage started from an empty directory, if known.
    pub origin_empty: Option<bool>,
}

/// The passive answers with how its copy stands (see `state::standing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// False when the passive refuses (it is active itself, or has no such set).
    pub accepted: bool,
    pub history: Vec<Generation>,
    pub applied_seq: u64,
    pub common: u64,
    /// Streaming the active's ops after `common` makes the passive exact.
    pub exact: bool,
    /// The passive holds changes of its own, which a resync preserves before overwriting.
    pub diverged: bool,
    /// The passive's own changes since `common` (to be included in a resync's scope), or
    /// `None` when they cannot be listed (compare the whole tree).
    pub changed: Option<Vec<Vec<u8>>>,
}

/// What the active does with this passive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Stream ops from `common + 1` on. `head` is the active's last seq as the session
    /// starts: every write it acknowledged without this passive is at or before it.
    Stream { head: u64 },
    /// The passive's copy is resynced: the next record is `first_seq`, a `SyncBegin`.
    Resync { first_seq: u64 },
}

/// A lease renewal (`sync` mode): the passive sends renewal `id` as its keepalive; the active
/// takes it, and from then on acknowledges no write without this passive until the lease
/// (`PairConfig::sync_lease_ms`) has run out since, and confirms it by sending it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
}

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        Out::default().u64(self.id).0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "lease");
        let lease = Lease { id: c.u64()? };
        c.end()?;
        Ok(lease)
    }
}

/// The passive's progress: everything up to `applied` is in its copy, up to `durable` on
/// disk, and its state file says `persisted` (where it would resume after a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub applied: u64,
    pub durable: u64,
    pub persisted: u64,
}

/// The active asks for the block hashes of the passive's copy of listing entry `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRequest {
    pub id: u64,
    pub index: u32,
    pub block_size: u32,
}

/// blake3 of each `block_size` block of the passive's copy (the last one may be short);
/// `size` is the file's size there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashes {
    pub id: u64,
    pub index: u32,
    pub block_size: u32,
    pub size: u64,
    pub hashes: Vec<[u8; 32]>,
}

/// After a resync's listing was applied: the files whose content must be sent, each with
/// whether the passive has old data to compare blocks with. `last` ends the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub id: u64,
    pub items: Vec<(u32, bool)>,
    pub last: bool,
}

/// Verify: how the passive's tree differs from the listing (path, what).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDiffs {
    pub id: u64,
    pub items: Vec<(Vec<u8>, String)>,
}

/// Verify: the regular files present on both sides, to compare by content. `last` ends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyCompare {
    pub id: u64,
    pub indexes: Vec<u32>,
    pub last: bool,
}

/// Verify: an exact range check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRangeResult {
    pub id: u64,
    pub path: Vec<u8>,
    pub offset: u64,
    pub len: u64,
    pub matches: bool,
}

/// A writer that fails a write or flush that cannot make progress for `limit`: a peer that
/// vanished without a reset (a cable pulled) would otherwise block its writer for minutes,
/// with the session counted as alive and writers waiting on it.
pub struct StallGuard<W> {
    inner: W,
    limit: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<W> StallGuard<W> {
    pub fn new(inner: W, limit: std::time::Duration) -> Self {
        StallGuard {
            inner,
            limit,
            timer: None,
        }
    }

    /// After a pending poll of the inner writer: fail once it has been stuck too long.
    fn stalled(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<W> StallGuard<W> {
    /// Passes a ready poll through (and resets the clock); fails a pending one that has
    /// waited longer than the limit.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match polled {
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer took nothing for too long",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallGuard<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    body: &[u8],
) -> Result<(), ProtoError> {
    let len = u32::try_from(body.len() + 1).map_err(|_| ProtoError::TooLarge(body.len()))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&[kind]).await?;
    w.write_all(body).await?;
    Ok(())
}

/// Reads one frame into `buf` (reused between calls), returning its kind.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<u8, ProtoError> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return Err(ProtoError::Malformed("empty"));
    }
    if len > FRAME_MAX_BYTES {
        return Err(ProtoError::TooLarge(len));
    }
    // No clear first: a reused buffer is only truncated or extended, not zeroed again
    // (read_exact overwrites every byte of it).
    buf.resize(len - 1, 0);
    r.read_exact(buf).await?;
    Ok(header[4])
}

/// Builds a frame body.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn bool(self, v: bool) -> Self {
        self.u8(u8::from(v))
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(self, v: &[u8]) -> Self {
        let mut s = self.u32(v.len() as u32);
        s.0.extend_from_slice(v);
        s
    }
    fn history(self, history: &[Generation]) -> Self {
        let mut s = self.u32(history.len() as u32);
        for g in history {
            s = s.u64(g.id).u64(g.start_seq);
        }
        s
    }
}

struct Cursor<'a>(&'a [u8], &'static str);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Malformed(self.1));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| ProtoError::Malformed(self.1))?,
        ))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| ProtoError::Malformed(self.1))?,
        ))
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::Malformed(self.1)),
        }
    }
    /// A count of items of at least `min_item_bytes` each, bounded by `max` and by what the
    /// rest of the frame can hold, before anything is allocated for them.
    fn count(&mut self, max: usize, min_item_bytes: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_item_bytes.max(1)) > self.0.len() {
            return Err(ProtoError::Malformed(self.1));
        }
        Ok(n)
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(ProtoError::Malformed(self.1));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn history(&mut self) -> Result<Vec<Generation>, ProtoError> {
        let n = self.count(crate::state::HISTORY_MAX + 2, 16)?;
        (0..n)
            .map(|_| {
                Ok(Generation {
                    id: self.u64()?,
                    start_seq: self.u64()?,
                })
            })
            .collect()
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed(self.1))
        }
    }
}

fn opt_bool(v: Option<bool>) -> u8 {
    match v {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .bytes(self.set.as_bytes())
            .history(&self.history)
            .u64(self.next_seq)
            .u8(opt_bool(self.origin_empty))
            .0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "hello");
        let set =
            String::from_utf8(c.bytes(NAME_MAX)?).map_err(|_| ProtoError::Malformed("hello"))?;
        let history = c.history()?;
        let next_seq = c.u64()?;
        let origin_empty = match c.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            _ => return Err(ProtoError::Malformed("hello")),
        };
        c.end()?;
        Ok(Self {
            set,
            history,
            next_seq,
            origin_empty,
        })
    }
}

impl Welcome {
    /// A refusal (the passive is active too, or has no such set).
    pub fn refused() -> Self {
        Welcome {
            accepted: false,
            history: vec![],
            applied_seq: 0,
            common: 0,
            exact: false,
            diverged: false,
            changed: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default()
            .bool(self.accepted)
            .history(&self.history)
            .u64(self.applied_seq)
            .u64(self.common)
            .bool(self.exact)
            .bool(self.diverged);
        match &self.changed {
            None => out = out.u8(0),
            Some(paths) => {
                out = out.u8(1).u32(paths.len() as u32);
                for p in paths {
                    out = out.bytes(p);
                }
            }
        }
        out.0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "welcome");
        let accepted = c.bool()?;
        let history = c.history()?;
        let applied_seq = c.u64()?;
        let common = c.u64()?;
        let exact = c.bool()?;
        let diverged = c.bool()?;
        let changed = match c.u8()? {
            0 => None,
            1 => {
                let n = c.count(CHANGED_MAX, 4)?;
                let mut paths = Vec::with_capacity(n);
                for _ in 0..n {
                    paths.push(c.bytes(PATH_MAX)?);
                }
                Some(paths)
            }
            _ => return Err(ProtoError::Malformed("welcome")),
        };
        c.end()?;
        Ok(Self {
            accepted,
            history,
            applied_seq,
            common,
            exact,
            diverged,
            changed,
        })
    }
}

impl Plan {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Plan::Stream { head } => Out::default().u8(0).u64(*head).0,
            Plan::Resync { first_seq } => Out::default().u8(1).u64(*first_seq).0,
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "plan");
        let plan = match c.u8()? {
            0 => Plan::Stream { head: c.u64()? },
            1 => Plan::Resync {
                first_seq: c.u64()?,
            },
            _ => return Err(ProtoError::Malformed("plan")),
        };
        c.end()?;
        Ok(plan)
    }
}

impl Ack {
    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u64(self.applied)
            .u64(self.durable)
            .u64(self.persisted)
            .0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "ack");
        let ack = Ack {
            applied: c.u64()?,
            durable: c.u64()?,
            persisted: c.u64()?,
        };
        c.end()?;
        Ok(ack)
    }
}

impl HashRequest {
    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u64(self.id)
            .u32(self.index)
            .u32(self.block_size)
            .0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "hash request");
        let r = HashRequest {
            id: c.u64()?,
            index: c.u32()?,
            block_size: c.u32()?,
        };
        c.end()?;
        if !(4096..=(16 << 20)).contains(&r.block_size) {
            return Err(ProtoError::Malformed("hash request"));
        }
        Ok(r)
    }
}

impl Hashes {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default()
            .u64(self.id)
            .u32(self.index)
            .u32(self.block_size)
            .u64(self.size)
            .u32(self.hashes.len() as u32);
        out.0.reserve(self.hashes.len() * 32);
        for h in &self.hashes {
            out.0.extend_from_slice(h);
        }
        out.0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "hashes");
        let id = c.u64()?;
        let index = c.u32()?;
        let block_size = c.u32()?;
        let size = c.u64()?;
        let n = c.count(HASHES_MAX, 32)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            let mut h = [0u8; 32];
            h.copy_from_slice(c.take(32)?);
            hashes.push(h);
        }
        c.end()?;
        Ok(Hashes {
            id,
            index,
            block_size,
            size,
            hashes,
        })
    }
}

impl Need {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default()
            .u64(self.id)
            .bool(self.last)
            .u32(self.items.len() as u32);
        for (index, has_data) in &self.items {
            out = out.u32(*index).bool(*has_data);
        }
        out.0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "need");
        let id = c.u64()?;
        let last = c.bool()?;
        let n = c.count(ITEMS_MAX, 5)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push((c.u32()?, c.bool()?));
        }
        c.end()?;
        Ok(Need { id, items, last })
    }
}

impl VerifyDiffs {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default().u64(self.id).u32(self.items.len() as u32);
        for (path, what) in &self.items {
            out = out.bytes(path).bytes(what.as_bytes());
        }
        out.0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "verify diffs");
        let id = c.u64()?;
        let n = c.count(ITEMS_MAX, 8)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let path = c.bytes(PATH_MAX)?;
            let what = String::from_utf8(c.bytes(64)?)
                .map_err(|_| ProtoError::Malformed("verify diffs"))?;
            items.push((path, what));
        }
        c.end()?;
        Ok(VerifyDiffs { id, items })
    }
}

impl VerifyCompare {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default()
            .u64(self.id)
            .bool(self.last)
            .u32(self.indexes.len() as u32);
        for i in &self.indexes {
            out = out.u32(*i);
        }
        out.0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "verify compare");
        let id = c.u64()?;
        let last = c.bool()?;
        let n = c.count(ITEMS_MAX, 4)?;
        let indexes = (0..n).map(|_| c.u32()).collect::<Result<_, _>>()?;
        c.end()?;
        Ok(VerifyCompare { id, indexes, last })
    }
}

impl VerifyRangeResult {
    pub fn encode(&self) -> Vec<u8> {
        Out::default()
            .u64(self.id)
            .bytes(&self.path)
            .u64(self.offset)
            .u64(self.len)
            .bool(self.matches)
            .0
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "verify range");
        let r = VerifyRangeResult {
            id: c.u64()?,
            path: c.bytes(PATH_MAX)?,
            offset: c.u64()?,
            len: c.u64()?,
            matches: c.bool()?,
        };
        c.end()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let hello = Hello {
            set: "data".into(),
            history: vec![Generation {
                id: 3,
                start_seq: 1,
            }],
            next_seq: 42,
            origin_empty: Some(true),
        };
        assert_eq!(Hello::decode(&hello.encode()).ok(), Some(hello.clone()));
        let welcome = Welcome {
            accepted: true,
            history: vec![],
            applied_seq: 41,
            common: 40,
            exact: false,
            diverged: true,
            changed: Some(vec![b"a/b".to_vec(), b"c".to_vec()]),
        };
        assert_eq!(Welcome::decode(&welcome.encode()).ok(), Some(welcome));
        assert_eq!(
            Welcome::decode(&Welcome::refused().encode()).ok(),
            Some(Welcome::refused())
        );
        for plan in [Plan::Stream { head: 7 }, Plan::Resync { first_seq: 9 }] {
            assert_eq!(Plan::decode(&plan.encode()).ok(), Some(plan));
        }
        assert_eq!(
            Lease::decode(&Lease { id: 3 }.encode()).ok(),
            Some(Lease { id: 3 })
        );
        assert!(Lease::decode(&[1, 2, 3]).is_err());
        assert!(
            Plan::decode(&[0]).is_err(),
            "a stream plan without its head"
        );
        let ack = Ack {
            applied: 5,
            durable: 4,
            persisted: 3,
        };
        assert_eq!(Ack::decode(&ack.encode()).ok(), Some(ack));
        let hashes = Hashes {
            id: 1,
            index: 2,
            block_size: 65536,
            size: 100_000,
            hashes: vec![[7; 32], [8; 32]],
        };
        assert_eq!(Hashes::decode(&hashes.encode()).ok(), Some(hashes));
        let need = Need {
            id: 1,
            items: vec![(0, true), (5, false)],
            last: true,
        };
        assert_eq!(Need::decode(&need.encode()).ok(), Some(need));
        let diffs = VerifyDiffs {
            id: 3,
            items: vec![(b"x".to_vec(), "mode".into())],
        };
        assert_eq!(VerifyDiffs::decode(&diffs.encode()).ok(), Some(diffs));
        let cmp = VerifyCompare {
            id: 3,
            indexes: vec![1, 2, 3],
            last: false,
        };
        assert_eq!(VerifyCompare::decode(&cmp.encode()).ok(), Some(cmp));
        let range = VerifyRangeResult {
            id: 3,
            path: b"f".to_vec(),
            offset: 0,
            len: 10,
            matches: true,
        };
        assert_eq!(VerifyRangeResult::decode(&range.encode()).ok(), Some(range));

        let mut long = hello.encode();
        long.push(0);
        assert!(Hello::decode(&long).is_err());
        assert!(Hello::decode(&[255, 255, 255, 255]).is_err());
        assert!(Ack::decode(&[1, 2, 3]).is_err());
        // A count the frame cannot hold is refused before allocating for it.
        let mut huge = Out::default().u64(1).u32(0).u32(65536).u64(0).0;
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Hashes::decode(&huge).is_err());
        assert!(HashRequest::decode(&Out::default().u64(1).u32(1).u32(7).0).is_err());
    }
}
