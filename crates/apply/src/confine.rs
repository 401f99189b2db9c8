//! Syntactic checks on paths that arrived from the network, before any syscall sees them.
//!
//! These checks reject what can be judged from the bytes alone (absolute paths, `.`/`..`,
//! empty components, NUL). What the bytes cannot tell — whether a component is a symlink or a
//! mount point on this replica — is left to `openat2` with `RESOLVE_*` flags at resolution.

/// Longest path accepted (PATH_MAX, as the codec bounds it).
const MAX_PATH: usize = 4096;
/// Longest single component (NAME_MAX); longer names cannot exist on the active either.
const MAX_NAME: usize = 255;

/// Checks that `path` is a relative path made only of plain names. Returns why not, if not.
pub(crate) fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH {
        return Err("path longer than PATH_MAX");
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    for component in path.split(|&b| b == b'/') {
        check_name(component)?;
    }
    Ok(())
}

/// Checks one component: non-empty, not `.` or `..`, no `/` or NUL, at most NAME_MAX bytes.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        b"" => Err("empty path component"),
        b"." => Err("`.` path component"),
        b".." => Err("`..` path component"),
        _ if name.len() > MAX_NAME => Err("path component longer than NAME_MAX"),
        _ if name.contains(&0) => Err("path contains a NUL byte"),
        _ if name.contains(&b'/') => Err("name contains a slash"),
        _ => Ok(()),
    }
}

/// Splits a checked path into its parent (possibly empty: the root) and its final name.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        for ok in [
            &b"a"[..],
            b"a/b",
            b"a/b/c.txt",
            b"...",
            b".hidden",
            b"a/..b",
            b"a b/\xff",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{}", ok.escape_ascii());
        }
    }

    #[test]
    fn hostile_paths_are_rejected() {
        let long_name = vec![b'x'; 256];
        let long_path = [&b"a/"[..]].repeat(2049).concat();
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"..",
            b"../x",
            b"a/../../x",
            b"a/..",
            b".",
            b"./a",
            b"a/./b",
            b"a//b",
            b"a/",
            b"/",
            b"a\0b",
            &long_name,
            &long_path,
        ] {
            assert!(check_path(bad).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn split_finds_parent_and_name() {
        assert_eq!(split(b"a"), (&b""[..], &b"a"[..]));
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
    }
}
