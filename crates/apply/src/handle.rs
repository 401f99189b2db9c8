//! File handles (`name_to_handle_at` / `open_by_handle_at`): how a [`SyncObserver`] reopens a
//! replica file later without its path, which a later record may have changed (and how the
//! active's resync engine reopens its own files).
//!
//! rustix does not wrap these calls, so they go through libc. A handle is made here from a
//! descriptor of a regular file and only ever used on this node; it is never read from the
//! network.
//!
//! [`SyncObserver`]: crate::SyncObserver

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

use crate::sync::LocalHandle;

/// MAX_HANDLE_SZ: the largest handle any Linux filesystem produces.
const MAX_HANDLE_BYTES: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_BYTES],
}

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}

/// The handle of the file `fd` is open on (`name_to_handle_at(fd, "", AT_EMPTY_PATH)`).
pub fn handle_of(fd: BorrowedFd<'_>) -> Result<LocalHandle, Errno> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_BYTES as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a `struct file_handle` followed by MAX_HANDLE_SZ bytes, as its
    // `handle_bytes` says; the path is a NUL-terminated empty string; `mount_id` is a valid
    // int; all of them outlive the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_BYTES);
    Ok(LocalHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    })
}

/// `open_by_handle_at(mount, handle, flags | O_CLOEXEC)`.
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle: &LocalHandle,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    if handle.bytes.len() > MAX_HANDLE_BYTES {
        return Err(Errno::INVAL);
    }
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as libc::c_uint,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a valid `struct file_handle` whose `handle_bytes` fit in the buffer
    // that follows it; the kernel only reads it. The descriptor is borrowed for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
