//! Frames of the replication stream, one mutual-TLS connection per set, the active dialling
//! the passive: `u32 length` (of kind + body) + `u8 kind` + body, little-endian.
//!
//! The TLS layer already guarantees integrity, so there is no checksum here. Every length is
//! bounded before allocation, because the bytes come from the network.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::state::Generation;

/// Largest frame accepted: a batch of records (each at most a 1 MiB write plus headers).
pub const FRAME_MAX_BYTES: usize = 40 << 20;
/// Longest set name.
const NAME_MAX: usize = 255;

pub mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const RECORDS: u8 = 3;
    pub const ACK: u8 = 4;
    pub const OUT_OF_SYNC: u8 = 5;
    pub const KEEPALIVE: u8 = 6;
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
}

/// The passive answers with how far its copy goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// False when the passive refuses (it is active itself, or has no such set).
    pub accepted: bool,
    pub history: Vec<Generation>,
    pub applied_seq: u64,
    pub out_of_sync: bool,
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

fn put_history(out: &mut Vec<u8>, history: &[Generation]) {
    out.extend_from_slice(&(history.len() as u32).to_le_bytes());
    for g in history {
        out.extend_from_slice(&g.id.to_le_bytes());
        out.extend_from_slice(&g.start_seq.to_le_bytes());
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
    fn history(&mut self) -> Result<Vec<Generation>, ProtoError> {
        let n = self.u32()? as usize;
        if n > crate::state::HISTORY_MAX + 1 {
            return Err(ProtoError::Malformed(self.1));
        }
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

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.set.len() as u32).to_le_bytes());
        out.extend_from_slice(self.set.as_bytes());
        put_history(&mut out, &self.history);
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "hello");
        let n = c.u32()? as usize;
        if n > NAME_MAX {
            return Err(ProtoError::Malformed("hello"));
        }
        let set = std::str::from_utf8(c.take(n)?)
            .map_err(|_| ProtoError::Malformed("hello"))?
            .to_string();
        let history = c.history()?;
        let next_seq = c.u64()?;
        c.end()?;
        Ok(Self {
            set,
            history,
            next_seq,
        })
    }
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.accepted), u8::from(self.out_of_sync)];
        put_history(&mut out, &self.history);
        out.extend_from_slice(&self.applied_seq.to_le_bytes());
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor(body, "welcome");
        let accepted = c.u8()? == 1;
        let out_of_sync = c.u8()? == 1;
        let history = c.history()?;
        let applied_seq = c.u64()?;
        c.end()?;
        Ok(Self {
            accepted,
            history,
            applied_seq,
            out_of_sync,
        })
    }
}

/// The passive's progress: everything up to `applied` is in its copy, up to `durable` on disk.
pub fn encode_ack(applied: u64, durable: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&applied.to_le_bytes());
    out[8..].copy_from_slice(&durable.to_le_bytes());
    out
}

pub fn decode_ack(body: &[u8]) -> Result<(u64, u64), ProtoError> {
    let mut c = Cursor(body, "ack");
    let applied = c.u64()?;
    let durable = c.u64()?;
    c.end()?;
    Ok((applied, durable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_frames_round_trip_and_reject_garbage() {
        let hello = Hello {
            set: "data".into(),
            history: vec![Generation {
                id: 3,
                start_seq: 1,
            }],
            next_seq: 42,
        };
        assert_eq!(Hello::decode(&hello.encode()).ok(), Some(hello.clone()));
        let welcome = Welcome {
            accepted: true,
            history: vec![],
            applied_seq: 41,
            out_of_sync: false,
        };
        assert_eq!(Welcome::decode(&welcome.encode()).ok(), Some(welcome));
        let mut long = hello.encode();
        long.push(0);
        assert!(Hello::decode(&long).is_err());
        assert!(Hello::decode(&[255, 255, 255, 255]).is_err());
        assert!(decode_ack(&[1, 2, 3]).is_err());
        assert_eq!(decode_ack(&encode_ack(5, 4)).ok(), Some((5, 4)));
    }
}
