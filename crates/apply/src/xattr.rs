//! Reading a file's whole xattr set and making it exactly a given set, through a descriptor
//! (a regular file or directory: the only kinds that carry xattrs in a listing).

use std::os::fd::AsFd;

use rustix::fs::{self as rfs, XattrFlags};
use rustix::io::{Errno, Result};
use understudy_oplog::Xattrs;

/// A list or value can grow between the size query and the read (ERANGE); give up after
/// this many tries rather than loop on a file that keeps changing.
const ATTEMPTS: usize = 8;

fn names<Fd: AsFd>(fd: Fd) -> Result<Vec<Vec<u8>>> {
    for _ in 0..ATTEMPTS {
        let size = rfs::flistxattr_query(&fd)?;
        if size == 0 {
            return Ok(vec![]);
        }
        let mut buf = vec![0u8; size];
        match rfs::flistxattr(&fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|name| !name.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// The value of `name`, or `None` if the file has no such xattr.
fn value<Fd: AsFd>(fd: Fd, name: &[u8]) -> Result<Option<Vec<u8>>> {
    for _ in 0..ATTEMPTS {
        let size = match rfs::fgetxattr_query(&fd, name) {
            Ok(size) => size,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Some(vec![]));
        }
        let mut buf = vec![0u8; size];
        match rfs::fgetxattr(&fd, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// Every xattr of the file, sorted by name.
pub(crate) fn read_all<Fd: AsFd>(fd: Fd) -> Result<Xattrs> {
    let mut out = Vec::new();
    for name in names(&fd)? {
        // Removed since the listing: not part of the set any more.
        if let Some(v) = value(&fd, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the file's xattrs exactly `wanted` (names were checked unique): removes the names
/// not wanted, sets the ones missing or different, leaves equal ones alone.
pub(crate) fn set_exactly<Fd: AsFd>(fd: Fd, wanted: &Xattrs) -> Result<()> {
    for name in names(&fd)? {
        if !wanted.iter().any(|(w, _)| *w == name) {
            match rfs::fremovexattr(&fd, &name[..]) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (name, v) in wanted {
        if value(&fd, name)?.as_ref() != Some(v) {
            rfs::fsetxattr(&fd, &name[..], v, XattrFlags::empty())?;
        }
    }
    Ok(())
}

/// The same set of names and values, whatever the order.
pub(crate) fn same_set(a: &Xattrs, sorted: &Xattrs) -> bool {
    let mut a = a.clone();
    a.sort();
    a == *sorted
}
