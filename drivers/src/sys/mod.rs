//! Raw syscalls that nix does not wrap: the `FICLONE` reflink ioctl and the
//! extended-attribute calls on paths (without following symlinks).
//!
//! This is the only module of the crate allowed to use `unsafe`; each block
//! says why it is sound. Everything here returns `std::io::Result` and takes
//! safe Rust types, so callers never see a raw pointer.

pub mod loopdev;

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// `FICLONE` from `<linux/fs.h>`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path or name contains a NUL byte"))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// Makes `dst` share the data blocks of `src` (a reflink). Fails with
/// `EOPNOTSUPP`, `EXDEV` or `EINVAL` where the filesystem cannot do it.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both descriptors are open for the lifetime of the borrowed
    // `File`s; FICLONE takes the source descriptor by value as its argument
    // and touches no user memory.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The names of the extended attributes of `path` (not following a final
/// symlink).
pub fn list_xattrs(path: &Path) -> io::Result<Vec<OsString>> {
    let c_path = path_cstring(path)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: `c_path` is a valid NUL-terminated string; with a null
        // buffer and size 0 the call only returns the needed size.
        let size = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        buf.resize(size as usize, 0);
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, which is
        // the size passed; the kernel writes at most that many.
        let got = unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue; // the list grew in between; ask again
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| OsString::from_vec(n.to_vec()))
            .collect());
    }
}

/// The value of the extended attribute `name` of `path` (not following a
/// final symlink).
pub fn get_xattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let c_path = path_cstring(path)?;
    let c_name = cstring(name.as_bytes())?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // SAFETY: both strings are valid and NUL-terminated; a null buffer
        // with size 0 asks only for the value's size.
        let size = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.resize(size as usize, 0);
        if size == 0 {
            return Ok(buf);
        }
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes, the size
        // passed to the kernel.
        let got = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// Sets the extended attribute `name` of `path` to `value` (not following a
/// final symlink).
pub fn set_xattr(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let c_path = path_cstring(path)?;
    let c_name = cstring(name.as_bytes())?;
    // SAFETY: both strings are valid and NUL-terminated; `value` is valid
    // for reads of `value.len()` bytes.
    let rc = unsafe { libc::lsetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_on_files_and_not_through_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        set_xattr(&file, OsStr::new("user.strata"), b"value").expect("set user xattr (needs a filesystem with xattrs)");
        set_xattr(&file, OsStr::new("trusted.strata"), b"").expect("set trusted xattr (needs root)");
        let mut names = list_xattrs(&file).expect("list");
        names.sort();
        assert!(names.contains(&OsString::from("user.strata")), "{names:?}");
        assert!(names.contains(&OsString::from("trusted.strata")), "{names:?}");
        assert_eq!(get_xattr(&file, OsStr::new("user.strata")).expect("get"), b"value");
        assert_eq!(get_xattr(&file, OsStr::new("trusted.strata")).expect("get empty"), b"");
        let err = get_xattr(&file, OsStr::new("user.missing")).expect_err("missing");
        assert_eq!(err.raw_os_error(), Some(libc::ENODATA));

        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let on_link = list_xattrs(&link).expect("list on link");
        assert!(!on_link.contains(&OsString::from("user.strata")), "listing does not follow symlinks");
        let err = set_xattr(Path::new("/nonexistent/x"), OsStr::new("user.a"), b"1").expect_err("missing path");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn reflink_reports_unsupported_or_clones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src_path = dir.path().join("src");
        std::fs::write(&src_path, vec![7u8; 8192]).expect("write");
        let src = File::open(&src_path).expect("open");
        let dst_path = dir.path().join("dst");
        let dst = File::create(&dst_path).expect("create");
        match reflink(&src, &dst) {
            Ok(()) => assert_eq!(std::fs::read(&dst_path).expect("read"), vec![7u8; 8192]),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL)),
                "unexpected reflink error {e}"
            ),
        }
    }
}
