//! The persisted role state: written atomically and durably before a promotion takes
//! effect, so a crash can never make a node reuse an epoch or forget it was active.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use understudy_core::{Epoch, PersistedState};

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    epoch: u64,
    last_active_epoch: u64,
    clean_shutdown: bool,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path, pair: &str) -> Result<StateFile> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
        Ok(StateFile {
            path: state_dir.join(format!("{pair}.role.json")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A missing file is a fresh node; a corrupt one is an error (never guess an epoch).
    pub fn load(&self) -> Result<PersistedState> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PersistedState::FRESH),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let disk: OnDisk = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is corrupt; refusing to guess the epoch",
                self.path.display()
            )
        })?;
        if disk.version != 1 {
            bail!(
                "{}: unsupported state version {}",
                self.path.display(),
                disk.version
            );
        }
        Ok(PersistedState {
            epoch: Epoch(disk.epoch),
            last_active_epoch: Epoch(disk.last_active_epoch),
            clean_shutdown: disk.clean_shutdown,
        })
    }

    /// Write to a temporary file, fsync it, rename it over the old one, fsync the directory.
    pub fn save(&self, state: &PersistedState) -> Result<()> {
        let disk = OnDisk {
            version: 1,
            epoch: state.epoch.0,
            last_active_epoch: state.last_active_epoch.0,
            clean_shutdown: state.clean_shutdown,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&disk).context("encoding state")?;
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot fsync {}", dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = StateFile::new(dir.path(), "web").expect("state file");
        assert_eq!(f.load().expect("load"), PersistedState::FRESH);
        let s = PersistedState {
            epoch: Epoch(7),
            last_active_epoch: Epoch(5),
            clean_shutdown: true,
        };
        f.save(&s).expect("save");
        assert_eq!(f.load().expect("load"), s);
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = StateFile::new(dir.path(), "web").expect("state file");
        fs::write(f.path(), "{not json").expect("write");
        assert!(f.load().is_err());
    }
}
