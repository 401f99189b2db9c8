//! The few system calls rustix does not wrap the way the applier needs, and the split of
//! errno values into "the replica diverged" and "the passive's storage failed".

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

#[cfg(target_arch = "x86_64")]
const SYS_FCHMODAT2: libc::c_long = libc::SYS_fchmodat2;
// fchmodat2 (Linux 6.6) has the same number on every other architecture Rust targets (libc
// only names it for a few).
#[cfg(not(target_arch = "x86_64"))]
const SYS_FCHMODAT2: libc::c_long = 452;

/// `fchmodat2(dirfd, name, mode, AT_SYMLINK_NOFOLLOW)`: changes the mode of the entry itself,
/// never following a symlink (on a symlink it fails with `EOPNOTSUPP`). rustix refuses the
/// flag outright, and glibc emulates it through `/proc/self/fd`, so this calls the kernel
/// directly. `ENOSYS` before Linux 6.6.
pub(crate) fn chmod_nofollow(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::INVAL)?;
    // SAFETY: the descriptor is valid for the call (borrowed), `name` is a NUL-terminated
    // string that outlives the call, and the remaining arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::c_uint,
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts writing the range's
/// dirty pages back without waiting for them. A hint: errors are ignored.
pub(crate) fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    // SAFETY: the descriptor is valid for the call (borrowed); the rest are plain integers.
    let _ = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

/// True for errors that say the passive's storage or process is in trouble, rather than that
/// the replica's tree is not what the op expected.
pub(crate) fn is_environmental(errno: Errno) -> bool {
    [
        Errno::IO,
        Errno::NOSPC,
        Errno::DQUOT,
        Errno::ROFS,
        Errno::NOMEM,
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOSYS,
        Errno::BADF,
        Errno::FAULT,
        Errno::INTR,
        Errno::AGAIN,
        Errno::NOLCK,
        Errno::UCLEAN,
    ]
    .contains(&errno)
}
