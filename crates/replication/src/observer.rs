//! The passive's side of a resync or verify: what the apply thread's [`SyncObserver`] does
//! with what the listing reveals, the hashing of its copy for the active, and the
//! quarantine that preserves this copy's own changes before a resync overwrites them.
//!
//! # Quarantine
//!
//! When this copy diverged (it holds changes the active does not have: it was active
//! itself after the two parted, or it started with files of its own), every file the resync
//! is about to overwrite or remove and that this node changed since the common point (its
//! change log says which; all of them when that is unknown) is first copied to
//! `<state_dir>/quarantine/<time>-sync<id>/files/<path>`, with a `MANIFEST.jsonl` line
//! per file: path, kind, size, mtime, blake3 and generation. Nothing is discarded silently.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use understudy_apply::{LocalHandle, SyncObserver};
use understudy_oplog::EntryKind;

use crate::hashing;
use crate::proto::{self, Hashes, Need, VerifyCompare, VerifyDiffs, VerifyRangeResult};

/// Frames to the active, written by the session's network task.
pub type ReportTx = tokio::sync::mpsc::UnboundedSender<(u8, Vec<u8>)>;

/// Most items per report frame.
const BATCH: usize = 4096;

/// Which of this copy's paths a resync must preserve before changing them.
#[derive(Clone, Debug, Default)]
pub struct PreserveRule {
    /// Preserve everything the resync changes (own changes unknown).
    pub all: bool,
    /// Preserve what lies at or under one of these paths (this node's own changes).
    pub paths: HashSet<Vec<u8>>,
}

impl PreserveRule {
    pub fn nothing() -> Self {
        PreserveRule::default()
    }

    fn covers(&self, path: &[u8]) -> bool {
        if self.all {
            return true;
        }
        // The path or any of its ancestors was changed here.
        let mut end = path.len();
        loop {
            if self.paths.contains(&path[..end]) {
                return true;
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }
}

/// Where preserved files go, and their manifest.
pub struct Quarantine {
    pub dir: PathBuf,
    manifest: File,
    generation: u64,
    pub files: u64,
    pub bytes: u64,
}

impl Quarantine {
    /// Opens (or continues, after an interrupted resync) the quarantine `dir`.
    pub fn open(dir: &Path, generation: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("files"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let manifest = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("MANIFEST.jsonl"))?;
        Ok(Quarantine {
            dir: dir.to_path_buf(),
            manifest,
            generation,
            files: 0,
            bytes: 0,
        })
    }

    fn already_has(&self, rel: &Path) -> bool {
        std::fs::symlink_metadata(self.dir.join("files").join(rel)).is_ok()
    }

    /// Copies `path` (relative to the replica at `replica`) here. Regular files come open.
    fn preserve(
        &mut self,
        replica: &Path,
        path: &[u8],
        kind: EntryKind,
        file: Option<&OwnedFd>,
    ) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let rel = Path::new(std::ffi::OsStr::from_bytes(path));
        // A retried resync finds it already preserved: the copy there is the original.
        if self.already_has(rel) {
            return Ok(());
        }
        let dest = self.dir.join("files").join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let (size, mtime, hash, kind_text) = match (kind, file) {
            (EntryKind::Regular, Some(fd)) => {
                let src = File::from(fd.try_clone()?);
                let meta = src.metadata()?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode_0600()
                    .open(&dest)?;
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut offset = 0u64;
                loop {
                    let n = rustix::io::pread(&src, &mut buf, offset)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                    offset += n as u64;
                }
                out.sync_all()?;
                std::fs::set_permissions(
                    &dest,
                    std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777 & !0o6000),
                )?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()));
                (
                    offset,
                    mtime,
                    Some(hasher.finalize().to_hex().to_string()),
                    "file",
                )
            }
            (EntryKind::Symlink, _) => {
                let target = std::fs::read_link(replica.join(rel))?;
                symlink(&target, &dest)?;
                let hash = blake3::hash(target.as_os_str().as_bytes())
                    .to_hex()
                    .to_string();
                (0, None, Some(hash), "symlink")
            }
            // A special file carries no data; the manifest says it was there.
            _ => (0, None, None, "special"),
        };
        let line = serde_json::json!({
            "path": path.escape_ascii().to_string(),
            "kind": kind_text,
            "size": size,
            "mtime": mtime,
            "blake3": hash,
            "generation": self.generation,
        });
        writeln!(self.manifest, "{line}")?;
        self.manifest.sync_data()?;
        self.files += 1;
        self.bytes += size;
        Ok(())
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Handles of this copy's files, by (sync id, listing index), for the hashers.
pub type Handles = Arc<Mutex<HashMap<(u64, u32), LocalHandle>>>;

/// The observer the apply thread uses.
pub struct PassiveObserver {
    pub reports: ReportTx,
    pub replica: PathBuf,
    pub rule: PreserveRule,
    pub quarantine: Option<Quarantine>,
    pub handles: Handles,
    /// The sync whose listing is being applied (set by the session from `SyncBegin`).
    pub sync_id: u64,
    need: Vec<(u32, bool)>,
    compare: Vec<u32>,
    diffs: Vec<(Vec<u8>, String)>,
    /// A quarantine error to report (the record failed).
    pub failed: Option<String>,
}

impl PassiveObserver {
    pub fn new(reports: ReportTx, replica: PathBuf, handles: Handles) -> Self {
        PassiveObserver {
            reports,
            replica,
            rule: PreserveRule::nothing(),
            quarantine: None,
            handles,
            sync_id: 0,
            need: Vec::new(),
            compare: Vec::new(),
            diffs: Vec::new(),
            failed: None,
        }
    }

    fn send(&self, kind: u8, body: Vec<u8>) {
        let _ = self.reports.send((kind, body));
    }

    /// After a record was applied: send what it produced.
    pub fn flush(&mut self, listing_done: bool) {
        if !self.diffs.is_empty() {
            for chunk in std::mem::take(&mut self.diffs).chunks(BATCH) {
                let frame = VerifyDiffs {
                    id: self.sync_id,
                    items: chunk.to_vec(),
                };
                self.send(proto::kind::VERIFY_DIFFS, frame.encode());
            }
        }
        if !listing_done {
            return;
        }
        let need = std::mem::take(&mut self.need);
        let compare = std::mem::take(&mut self.compare);
        let (kind, frames): (u8, Vec<Vec<u8>>) = if compare.is_empty() {
            let chunks: Vec<&[(u32, bool)]> = need.chunks(BATCH).collect();
            let n = chunks.len().max(1);
            (
                proto::kind::NEED,
                (0..n)
                    .map(|i| {
                        Need {
                            id: self.sync_id,
                            items: chunks.get(i).map(|c| c.to_vec()).unwrap_or_default(),
                            last: i + 1 == n,
                        }
                        .encode()
                    })
                    .collect(),
            )
        } else {
            let chunks: Vec<&[u32]> = compare.chunks(BATCH).collect();
            let n = chunks.len();
            (
                proto::kind::VERIFY_COMPARE,
                chunks
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        VerifyCompare {
                            id: self.sync_id,
                            indexes: c.to_vec(),
                            last: i + 1 == n,
                        }
                        .encode()
                    })
                    .collect(),
            )
        };
        for f in frames {
            self.send(kind, f);
        }
    }

    /// A verify listing with no file to compare still ends its compare list.
    pub fn end_compare(&mut self) {
        self.send(
            proto::kind::VERIFY_COMPARE,
            VerifyCompare {
                id: self.sync_id,
                indexes: vec![],
                last: true,
            }
            .encode(),
        );
    }

    pub fn has_compare(&self) -> bool {
        !self.compare.is_empty()
    }
}

impl SyncObserver for PassiveObserver {
    fn before_change(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        file: Option<&OwnedFd>,
    ) -> std::io::Result<()> {
        if !self.rule.covers(path) {
            return Ok(());
        }
        let Some(q) = self.quarantine.as_mut() else {
            return Ok(());
        };
        if let Err(e) = q.preserve(&self.replica, path, kind, file) {
            warn!(path = %path.escape_ascii(), error = %e, "cannot preserve a file in quarantine; the resync stops");
            self.failed = Some(format!("quarantine of {}: {e}", path.escape_ascii()));
            return Err(e);
        }
        Ok(())
    }

    fn need_content(&mut self, index: u32, existing: Option<LocalHandle>) {
        let has = existing.is_some();
        if let Some(h) = existing {
            self.handles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((self.sync_id, index), h);
        }
        self.need.push((index, has));
    }

    fn compare_content(&mut self, index: u32, handle: LocalHandle) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((self.sync_id, index), handle);
        self.compare.push(index);
    }

    fn differs(&mut self, path: &[u8], what: &'static str) {
        self.diffs.push((path.to_vec(), what.to_string()));
    }

    fn range_checked(&mut self, id: u64, path: &[u8], offset: u64, len: u64, matches: bool) {
        self.send(
            proto::kind::VERIFY_RANGE,
            VerifyRangeResult {
                id,
                path: path.to_vec(),
                offset,
                len,
                matches,
            }
            .encode(),
        );
    }
}

/// Serves the active's hash requests on [`hashing::SMALL_FILE_HASHERS`] threads: each opens
/// the file from its handle, hashes its blocks and sends them. A verify asks for its large
/// files first, two at a time, and for the small ones after them, so the threads hash one
/// kind at a time, as the active's do. Ends when `requests` closes.
pub fn spawn_hashers(
    requests: std::sync::mpsc::Receiver<proto::HashRequest>,
    handles: Handles,
    root: Arc<OwnedFd>,
    reports: ReportTx,
) {
    let requests = Arc::new(Mutex::new(requests));
    for n in 0..hashing::SMALL_FILE_HASHERS {
        let (requests, handles, root, reports) = (
            requests.clone(),
            handles.clone(),
            root.clone(),
            reports.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("sync-hash-{n}"))
            .spawn(move || loop {
                let req = {
                    let rx = requests.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.recv() {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                };
                let handle = handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(req.id, req.index));
                // A file that cannot be opened is hashed as empty (the active then finds
                // every block different and checks them exactly).
                let (size, hashes) = handle
                    .and_then(|h| open_local(&root, &h).ok())
                    .and_then(|fd| hashing::hash_blocks(&fd, req.block_size).ok())
                    .unwrap_or((0, Vec::new()));
                let frame = Hashes {
                    id: req.id,
                    index: req.index,
                    block_size: req.block_size,
                    size,
                    hashes,
                };
                if reports.send((proto::kind::HASHES, frame.encode())).is_err() {
                    return;
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a hashing thread");
        }
    }
    info!("hashing threads ready");
}

/// Opens a handle the applier made, read-only, and makes sure it is a regular file on the
/// replica's filesystem.
fn open_local(root: &OwnedFd, h: &LocalHandle) -> std::io::Result<OwnedFd> {
    let fd = crate::walk::open_handle(root, h)?;
    let st = rustix::fs::fstat(&fd)?;
    let root_st = rustix::fs::fstat(root)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_dev != root_st.st_dev {
        return Err(std::io::Error::other("handle is not a file of the replica"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_covers_paths_under_changed_ones() {
        let rule = PreserveRule {
            all: false,
            paths: [b"d".to_vec(), b"x/y".to_vec()].into_iter().collect(),
        };
        assert!(rule.covers(b"d"));
        assert!(rule.covers(b"d/e/f"));
        assert!(rule.covers(b"x/y"));
        assert!(!rule.covers(b"x"));
        assert!(!rule.covers(b"dd"));
        assert!(!PreserveRule::nothing().covers(b"d"));
    }
}
