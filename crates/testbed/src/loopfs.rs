//! A small ext4 filesystem on a loop device, mounted for the length of a test: a disk of
//! its own for a node, so a test can fill it up without touching the machine's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Mounted at `mountpoint` until dropped; Drop unmounts (lazily, so a process still inside
/// cannot keep it) and deletes the image.
#[derive(Debug)]
pub struct LoopFs {
    image: PathBuf,
    mountpoint: PathBuf,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl LoopFs {
    /// Makes a sparse `size_mib` MiB image at `image`, formats it ext4 and mounts it at
    /// `mountpoint` (created if missing).
    pub fn new(image: &Path, mountpoint: &Path, size_mib: u64) -> Result<LoopFs> {
        std::fs::create_dir_all(mountpoint)?;
        let file = std::fs::File::create(image)?;
        file.set_len(size_mib << 20)?;
        drop(file);
        let img = image.display().to_string();
        // No blocks reserved for root: the daemons run as root, and a full disk must be
        // full for them too.
        run(&["mkfs.ext4", "-q", "-F", "-m", "0", &img])?;
        let fs = LoopFs {
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        };
        run(&[
            "mount",
            "-o",
            "loop",
            &img,
            &mountpoint.display().to_string(),
        ])?;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Takes all the free space but about `leave_bytes` (`fallocate`, then small writes to
    /// the last block), returning the files to remove to free it again.
    pub fn fill(&self, leave_bytes: u64) -> Result<Vec<PathBuf>> {
        use std::io::Write;
        let big = self.mountpoint.join("filler");
        let mut want = rustix_statvfs(&self.mountpoint)?.saturating_sub(leave_bytes);
        // The file's own extent blocks come out of the same free space: shrink until it fits.
        for _ in 0..64 {
            if want == 0 {
                break;
            }
            let ok = Command::new("fallocate")
                .args(["-l", &want.to_string()])
                .arg(&big)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            want = want.saturating_sub(4 << 20);
        }
        // Then what is left, in small writes, until the disk says no (bounded).
        let small = self.mountpoint.join("filler2");
        let mut f = std::fs::File::create(&small)?;
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        while written < (256 << 20) && f.write_all(&chunk).is_ok() && f.sync_data().is_ok() {
            written += chunk.len() as u64;
            if rustix_statvfs(&self.mountpoint)? <= leave_bytes {
                break;
            }
        }
        Ok(vec![big, small])
    }
}

/// Bytes available to root on the filesystem at `path`.
fn rustix_statvfs(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain data; all-zero is a valid value to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and an out-pointer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(st.f_bfree * st.f_frsize)
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l"])
            .arg(&self.mountpoint)
            .output();
        let _ = std::fs::remove_file(&self.image);
    }
}
