//! Thin, safe wrappers over the Linux system calls the capture filesystem performs on the
//! backing directory.
//!
//! Everything that names a file does so relative to one `O_PATH` descriptor of the backing
//! root (`*at` calls), never through an absolute path: the capture filesystem is usually
//! mounted *over* its own backing directory, and an absolute path would walk back into the
//! FUSE mount and deadlock. Calls that have no `*at` form (xattrs) go through
//! `/proc/self/fd/<root>/<relative path>`, which resolves from the same descriptor.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turns a -1 return into the thread's errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for calls returning `ssize_t`.
fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // Non-negative ssize_t always fits usize.
        Ok(ret as usize)
    }
}

/// NUL-terminates a path or name. Names from the kernel never contain NUL, so an error here
/// means a corrupt request, reported as EINVAL.
pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `*at` spelling of a relative path: the root itself is `.`.
fn at_path(rel: &[u8]) -> io::Result<CString> {
    if rel.is_empty() {
        cstring(b".")
    } else {
        cstring(rel)
    }
}

pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is a valid out-pointer of the right type.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

pub(crate) fn open_path(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the returned fd is owned by the OwnedFd.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens an already open file through its `/proc/self/fd` magic link, with new flags. This
/// reaches files that no longer have a name (orphans).
pub(crate) fn reopen(fd: RawFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = cstring(format!("/proc/self/fd/{fd}").as_bytes())?;
    open_path(&path, flags & !libc::O_NOFOLLOW)
}

pub(crate) fn pread(fd: RawFd, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: buf is valid for writes of buf.len() bytes.
    check_size(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) })
}

pub(crate) fn pwrite(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: buf is valid for reads of buf.len() bytes.
    check_size(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset) })
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writing the range's dirty pages back
/// without waiting for them. A hint: errors are ignored.
pub(crate) fn start_writeback(fd: RawFd, offset: u64, len: u64) {
    // SAFETY: plain syscall on a descriptor; the rest are integers.
    let _ = unsafe {
        libc::sync_file_range(
            fd,
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

pub(crate) fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })
    .map(drop)
}

pub(crate) fn ftruncate(fd: RawFd, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall.
    check(unsafe { libc::ftruncate(fd, size) }).map(drop)
}

pub(crate) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall.
    check(unsafe { libc::fallocate(fd, mode, offset, len) }).map(drop)
}

pub(crate) fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

/// `u32::MAX` (-1) leaves the id unchanged, as with chown(2).
pub(crate) fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

pub(crate) fn futimens(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: times points at two timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

pub(crate) fn lseek(fd: RawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall.
    let ret = unsafe { libc::lseek(fd, offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads raw `linux_dirent64` records into `buf`; 0 at the end of the directory.
pub(crate) fn getdents64(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let ret = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        usize::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
    }
}

pub(crate) fn fstatfs(fd: RawFd) -> io::Result<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid out-pointer.
    check(unsafe { libc::fstatfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled on success.
    Ok(unsafe { st.assume_init() })
}

pub(crate) fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid out-pointer.
    check(unsafe { libc::fstatvfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled on success.
    Ok(unsafe { st.assume_init() })
}

/// Identity of a mounted filesystem: its mount ID and device number.
pub(crate) struct MountIdent {
    pub id: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
}

/// The mount ID and device of whatever is mounted at `path`, read from cached attributes so
/// that asking never blocks on the filesystem itself.
pub(crate) fn mount_ident(path: &CStr) -> io::Result<MountIdent> {
    let mut stx = MaybeUninit::<libc::statx>::uninit();
    // SAFETY: path is NUL-terminated and stx a valid out-pointer.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: filled on success.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(MountIdent {
        id: stx.stx_mnt_id,
        dev_major: stx.stx_dev_major,
        dev_minor: stx.stx_dev_minor,
    })
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem served through it at `path` (type `fuse`,
/// shown as `source`), with mount `flags` and `options` after the ones the kernel requires
/// (`fd`, `rootmode`, `user_id`, `group_id`). Returns the descriptor the session serves.
/// What fuser's own mount does, minus its unmount on drop (see `mount_with_read_passthrough`).
pub(crate) fn mount_fuse(
    path: &CStr,
    source: &CStr,
    flags: libc::c_ulong,
    options: &str,
) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path; the descriptor is owned on success.
    let dev = check(unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a new descriptor nobody else owns.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: path is NUL-terminated and st a valid out-pointer.
    check(unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: filled on success.
    let root_mode = unsafe { st.assume_init() }.st_mode;
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},{options}",
        dev.as_raw_fd()
    );
    let data = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            c"fuse".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(dev)
}

pub(crate) fn umount(path: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::umount2(path.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) }).map(drop)
}

/// Extended-attribute calls on either a path (through `/proc/self/fd/<root>/...`, not
/// following a final symlink) or an open descriptor.
pub(crate) enum XattrTarget<'a> {
    Path(&'a CStr),
    Fd(RawFd),
}

pub(crate) fn setxattr(
    t: &XattrTarget<'_>,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let (v, n) = (value.as_ptr().cast(), value.len());
    // SAFETY: name/path are NUL-terminated, value valid for n bytes.
    check(unsafe {
        match t {
            XattrTarget::Path(p) => libc::lsetxattr(p.as_ptr(), name.as_ptr(), v, n, flags),
            XattrTarget::Fd(fd) => libc::fsetxattr(*fd, name.as_ptr(), v, n, flags),
        }
    })
    .map(drop)
}

/// With an empty `buf`, returns the value's size.
pub(crate) fn getxattr(t: &XattrTarget<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let (b, n) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: buffers valid for n bytes (n may be 0).
    check_size(unsafe {
        match t {
            XattrTarget::Path(p) => libc::lgetxattr(p.as_ptr(), name.as_ptr(), b, n),
            XattrTarget::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), b, n),
        }
    })
}

/// With an empty `buf`, returns the list's size.
pub(crate) fn listxattr(t: &XattrTarget<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let (b, n) = (buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: buffers valid for n bytes (n may be 0).
    check_size(unsafe {
        match t {
            XattrTarget::Path(p) => libc::llistxattr(p.as_ptr(), b, n),
            XattrTarget::Fd(fd) => libc::flistxattr(*fd, b, n),
        }
    })
}

pub(crate) fn removexattr(t: &XattrTarget<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings.
    check(unsafe {
        match t {
            XattrTarget::Path(p) => libc::lremovexattr(p.as_ptr(), name.as_ptr()),
            XattrTarget::Fd(fd) => libc::fremovexattr(*fd, name.as_ptr()),
        }
    })
    .map(drop)
}

/// The backing directory, held open as an `O_PATH` descriptor. All names are relative to it.
pub(crate) struct Root {
    fd: OwnedFd,
    /// `/proc/self/fd/<fd>`, the prefix for calls that only take paths.
    proc_prefix: String,
}

impl Root {
    pub(crate) fn new(path: &CStr) -> io::Result<Root> {
        let fd = open_path(path, libc::O_PATH | libc::O_DIRECTORY)?;
        let proc_prefix = format!("/proc/self/fd/{}", fd.as_raw_fd());
        Ok(Root { fd, proc_prefix })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A path usable by calls without an `*at` form, resolving from the root descriptor.
    pub(crate) fn proc_path(&self, rel: &[u8]) -> io::Result<CString> {
        let mut p = Vec::with_capacity(self.proc_prefix.len() + 1 + rel.len().max(1));
        p.extend_from_slice(self.proc_prefix.as_bytes());
        p.push(b'/');
        if rel.is_empty() {
            p.push(b'.');
        } else {
            p.extend_from_slice(rel);
        }
        cstring(&p)
    }

    /// lstat(2): never follows a final symlink.
    pub(crate) fn lstat(&self, rel: &[u8]) -> io::Result<libc::stat> {
        let p = at_path(rel)?;
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid NUL-terminated path and out-pointer.
        check(unsafe {
            libc::fstatat(
                self.raw(),
                p.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        // SAFETY: filled on success.
        Ok(unsafe { st.assume_init() })
    }

    pub(crate) fn open(&self, rel: &[u8], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let p = at_path(rel)?;
        // SAFETY: valid path; the returned fd is owned by the OwnedFd.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                p.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        })?;
        // SAFETY: fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(crate) fn mknod(&self, rel: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
        let p = at_path(rel)?;
        // SAFETY: valid path.
        check(unsafe { libc::mknodat(self.raw(), p.as_ptr(), mode, rdev) }).map(drop)
    }

    pub(crate) fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let p = at_path(rel)?;
        // SAFETY: valid path.
        check(unsafe { libc::mkdirat(self.raw(), p.as_ptr(), mode) }).map(drop)
    }

    pub(crate) fn symlink(&self, target: &[u8], rel: &[u8]) -> io::Result<()> {
        let t = cstring(target)?;
        let p = at_path(rel)?;
        // SAFETY: valid paths.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), p.as_ptr()) }).map(drop)
    }

    pub(crate) fn link(&self, existing: &[u8], rel: &[u8]) -> io::Result<()> {
        let e = at_path(existing)?;
        let p = at_path(rel)?;
        // SAFETY: valid paths.
        check(unsafe { libc::linkat(self.raw(), e.as_ptr(), self.raw(), p.as_ptr(), 0) }).map(drop)
    }

    pub(crate) fn unlink(&self, rel: &[u8], dir: bool) -> io::Result<()> {
        let p = at_path(rel)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: valid path.
        check(unsafe { libc::unlinkat(self.raw(), p.as_ptr(), flags) }).map(drop)
    }

    pub(crate) fn rename(&self, from: &[u8], to: &[u8], flags: u32) -> io::Result<()> {
        let f = at_path(from)?;
        let t = at_path(to)?;
        // SAFETY: valid paths.
        check(unsafe { libc::renameat2(self.raw(), f.as_ptr(), self.raw(), t.as_ptr(), flags) })
            .map(drop)
    }

    pub(crate) fn chmod(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let p = at_path(rel)?;
        // SAFETY: valid path.
        check(unsafe { libc::fchmodat(self.raw(), p.as_ptr(), mode, 0) }).map(drop)
    }

    /// lchown(2); `u32::MAX` leaves an id unchanged.
    pub(crate) fn chown(&self, rel: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let p = at_path(rel)?;
        // SAFETY: valid path.
        check(unsafe {
            libc::fchownat(self.raw(), p.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })
        .map(drop)
    }

    pub(crate) fn utimens(&self, rel: &[u8], times: &[libc::timespec; 2]) -> io::Result<()> {
        let p = at_path(rel)?;
        // SAFETY: valid path; times points at two timespecs.
        check(unsafe {
            libc::utimensat(
                self.raw(),
                p.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    pub(crate) fn readlink(&self, rel: &[u8]) -> io::Result<Vec<u8>> {
        let p = at_path(rel)?;
        // PATH_MAX bounds every symlink target Linux stores.
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: buf is valid for buf.len() bytes.
        let n = check_size(unsafe {
            libc::readlinkat(self.raw(), p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        buf.truncate(n);
        Ok(buf)
    }
}
