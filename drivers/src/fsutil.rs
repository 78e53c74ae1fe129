//! Filesystem helpers shared by the drivers: disk usage of a tree, and a
//! metadata-preserving tree copy.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::fcntl::AtFlags;
use nix::unistd::{fchownat, Gid, Uid};
use strata_snapshotter::{Error, Result, Usage};

use crate::sys;

fn io_err(context: &str, path: &Path, e: impl Into<io::Error>) -> Error {
    Error::io(format!("{context} {}", path.display()), e.into())
}

/// Disk usage of the tree at `root`, `root` included: the sum of
/// `st_blocks * 512` and the number of inodes, each inode counted once
/// however many hard links it has. Does not cross into other filesystems.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut usage = Usage::default();
    for entry in walkdir::WalkDir::new(root).same_file_system(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| root.to_path_buf());
            io_err("walk", &path, io::Error::from(e))
        })?;
        let meta = entry.metadata().map_err(|e| io_err("stat", entry.path(), io::Error::from(e)))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.size += (meta.blocks() as i64) * 512;
            usage.inodes += 1;
        }
    }
    Ok(usage)
}

/// How many threads copy file contents in parallel.
const COPY_THREADS: usize = 4;

/// Copies the contents of `src` into the existing directory `dst`,
/// preserving file types (directories, regular files, symlinks, device
/// nodes, fifos, sockets), modes, owners, timestamps, extended attributes
/// and hard links; `dst` itself takes `src`'s owner, mode, xattrs and times.
/// File data is reflinked where the filesystem can, otherwise copied with
/// `copy_file_range`, several files at a time.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut files: Vec<(PathBuf, PathBuf, std::fs::Metadata)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut first_of: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();

    for entry in walkdir::WalkDir::new(src).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| src.to_path_buf());
            io_err("walk", &path, io::Error::from(e))
        })?;
        let rel = entry.path().strip_prefix(src).map_err(|_| Error::internal("copy: walked outside the source"))?;
        let to = dst.join(rel);
        let meta = entry.metadata().map_err(|e| io_err("stat", entry.path(), io::Error::from(e)))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            if entry.depth() > 0 {
                std::fs::create_dir(&to).map_err(|e| io_err("mkdir", &to, e))?;
            }
            set_owner(&to, &meta)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| io_err("chmod", &to, e))?;
            copy_xattrs(entry.path(), &to)?;
            dirs.push((to, meta));
            continue;
        }
        if meta.nlink() > 1 {
            let id = (meta.dev(), meta.ino());
            if let Some(first) = first_of.get(&id) {
                links.push((first.clone(), to));
                continue;
            }
            first_of.insert(id, to.clone());
        }
        if ft.is_file() {
            files.push((entry.path().to_path_buf(), to, meta));
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(|e| io_err("readlink", entry.path(), e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io_err("symlink", &to, e))?;
            set_owner(&to, &meta)?;
            copy_xattrs(entry.path(), &to)?;
            set_times(&to, &meta)?;
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&to, kind, perm, meta.rdev()).map_err(|e| io_err("mknod", &to, e))?;
            set_owner(&to, &meta)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| io_err("chmod", &to, e))?;
            copy_xattrs(entry.path(), &to)?;
            set_times(&to, &meta)?;
        }
    }

    copy_files(&files)?;
    for (first, to) in &links {
        std::fs::hard_link(first, to).map_err(|e| io_err("link", to, e))?;
    }
    // Directory times last, deepest first: creating entries changed them.
    for (dir, meta) in dirs.iter().rev() {
        set_times(dir, meta)?;
    }
    Ok(())
}

fn copy_files(files: &[(PathBuf, PathBuf, std::fs::Metadata)]) -> Result<()> {
    let reflink_ok = AtomicBool::new(true);
    if files.len() < 8 {
        return files.iter().try_for_each(|(s, d, m)| copy_file(s, d, m, &reflink_ok));
    }
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let threads = COPY_THREADS.min(files.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((s, d, m)) = files.get(i) else { break };
                if let Err(e) = copy_file(s, d, m, &reflink_ok) {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    next.store(files.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(Error::internal("copy: a copying thread panicked")),
    }
}

fn copy_file(src: &Path, dst: &Path, meta: &std::fs::Metadata, reflink_ok: &AtomicBool) -> Result<()> {
    let mut input = File::open(src).map_err(|e| io_err("open", src, e))?;
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|e| io_err("create", dst, e))?;
    let mut done = false;
    if meta.len() > 0 && reflink_ok.load(Ordering::Relaxed) {
        match sys::reflink(&input, &output) {
            Ok(()) => done = true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL) | Some(libc::ENOTTY)) => {
                reflink_ok.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(io_err("reflink", dst, e)),
        }
    }
    if !done && meta.len() > 0 {
        // std's File-to-File copy uses copy_file_range where it can.
        io::copy(&mut input, &mut output).map_err(|e| io_err("copy to", dst, e))?;
    }
    drop(output);
    set_owner(dst, meta)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| io_err("chmod", dst, e))?;
    copy_xattrs(src, dst)?;
    set_times(dst, meta)
}

fn set_owner(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    fchownat(
        None,
        path,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("chown", path, e))
}

fn set_times(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(|e| io_err("set times of", path, e))
}

/// Copies every extended attribute. Attributes the destination cannot take
/// (no xattr support, or `user.*` on a symlink) are skipped with a debug log.
fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let names = match sys::list_xattrs(src) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(io_err("list xattrs of", src, e)),
    };
    for name in names {
        let value = match sys::get_xattr(src, &name) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(io_err(&format!("read xattr {:?} of", name), src, e)),
        };
        if let Err(e) = sys::set_xattr(dst, OsStr::new(&name), &value) {
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM)) {
                tracing::debug!(path = %dst.display(), ?name, error = %e, "extended attribute not copied");
                continue;
            }
            return Err(io_err(&format!("write xattr {:?} of", name), dst, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("t");
        std::fs::create_dir(&root).expect("mkdir");
        let empty = disk_usage(&root).expect("du");
        assert_eq!(empty.inodes, 1, "the root itself");
        std::fs::write(root.join("a"), vec![1u8; 64 * 1024]).expect("write");
        let one = disk_usage(&root).expect("du");
        assert_eq!(one.inodes, 2);
        assert!(one.size >= empty.size + 64 * 1024, "{one:?}");
        std::fs::hard_link(root.join("a"), root.join("b")).expect("link");
        let linked = disk_usage(&root).expect("du");
        assert_eq!(linked, one, "a hard link adds nothing");
        std::fs::write(root.join("c"), vec![1u8; 64 * 1024]).expect("write");
        let two = disk_usage(&root).expect("du");
        assert_eq!(two.inodes, 3);
        assert!(two.size >= one.size + 64 * 1024);
        assert!(disk_usage(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn copy_tree_preserves_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::create_dir(&dst).expect("mkdir");
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::fs::create_dir_all(src.join("d/e")).expect("mkdir");
        std::fs::set_permissions(src.join("d"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        for i in 0..20 {
            std::fs::write(src.join(format!("d/e/f{i}")), vec![i as u8; 1000 * i]).expect("write");
        }
        std::fs::write(src.join("exe"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(src.join("exe"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        fchownat(None, &src.join("exe"), Some(Uid::from_raw(1000)), Some(Gid::from_raw(1001)), AtFlags::AT_SYMLINK_NOFOLLOW)
            .expect("chown (needs root)");
        std::fs::set_permissions(src.join("exe"), std::fs::Permissions::from_mode(0o4755)).expect("chmod again");
        std::fs::hard_link(src.join("exe"), src.join("d/exe-link")).expect("link");
        std::os::unix::fs::symlink("../exe", src.join("d/sym")).expect("symlink");
        fchownat(None, &src.join("d/sym"), Some(Uid::from_raw(5)), Some(Gid::from_raw(6)), AtFlags::AT_SYMLINK_NOFOLLOW)
            .expect("lchown");
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).expect("mkfifo");
        nix::sys::stat::mknod(&src.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3))
            .expect("mknod (needs root)");
        sys::set_xattr(&src.join("exe"), OsStr::new("user.k"), b"v").expect("xattr");
        sys::set_xattr(&src.join("d"), OsStr::new("trusted.overlay.opaque"), b"y").expect("trusted xattr");
        let old = TimeSpec::new(1_000_000_000, 123_456_789);
        utimensat(None, &src.join("d/e/f3"), &old, &old, UtimensatFlags::NoFollowSymlink).expect("times");
        utimensat(None, &src.join("d/sym"), &old, &old, UtimensatFlags::NoFollowSymlink).expect("times");
        utimensat(None, &src.join("d"), &old, &old, UtimensatFlags::NoFollowSymlink).expect("times");

        copy_tree(&src, &dst).expect("copy");

        let m = |p: &Path| std::fs::symlink_metadata(p).expect("stat");
        assert_eq!(m(&dst).mode() & 0o7777, 0o750);
        assert_eq!(m(&dst.join("d")).mode() & 0o7777, 0o1777);
        for i in 0..20 {
            assert_eq!(std::fs::read(dst.join(format!("d/e/f{i}"))).expect("read"), vec![i as u8; 1000 * i]);
        }
        let exe = m(&dst.join("exe"));
        assert_eq!((exe.uid(), exe.gid(), exe.mode() & 0o7777), (1000, 1001, 0o4755));
        assert_eq!(exe.ino(), m(&dst.join("d/exe-link")).ino(), "hard link kept");
        assert_eq!(exe.nlink(), 2);
        assert_ne!(exe.ino(), m(&src.join("exe")).ino());
        assert_eq!(std::fs::read_link(dst.join("d/sym")).expect("readlink"), Path::new("../exe"));
        let sym = m(&dst.join("d/sym"));
        assert_eq!((sym.uid(), sym.gid()), (5, 6));
        assert_eq!((sym.mtime(), sym.mtime_nsec()), (1_000_000_000, 123_456_789));
        assert!(m(&dst.join("fifo")).file_type().is_fifo());
        assert_eq!(m(&dst.join("fifo")).mode() & 0o7777, 0o640);
        let null = m(&dst.join("null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(sys::get_xattr(&dst.join("exe"), OsStr::new("user.k")).expect("xattr"), b"v");
        assert_eq!(sys::get_xattr(&dst.join("d"), OsStr::new("trusted.overlay.opaque")).expect("xattr"), b"y");
        let f3 = m(&dst.join("d/e/f3"));
        assert_eq!((f3.mtime(), f3.mtime_nsec()), (1_000_000_000, 123_456_789));
        let d = m(&dst.join("d"));
        assert_eq!((d.mtime(), d.mtime_nsec()), (1_000_000_000, 123_456_789), "dir times set after its entries");
    }

    #[test]
    fn copy_tree_into_a_non_empty_target_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::create_dir_all(&dst).expect("mkdir");
        std::fs::write(src.join("a"), b"1").expect("write");
        std::fs::write(dst.join("a"), b"2").expect("write");
        let err = copy_tree(&src, &dst).expect_err("exists");
        assert!(err.message().contains("create"), "{err}");
        assert_eq!(std::fs::read(dst.join("a")).expect("read"), b"2");
    }
}
