//! Applying a layer tarball to a directory tree, and unpacking layers into
//! snapshots.
//!
//! A layer tarball is hostile input. The applier never resolves a path with
//! the kernel's path walk from outside the tree: every parent directory is
//! opened component by component from a handle on the root with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, so a symlink planted by the tarball (or
//! by a lower layer) is never followed, `..` and absolute names are refused
//! before anything is touched, and hard-link targets are resolved inside the
//! same root. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are carried out by
//! deleting through the tree, so the applier works the same on a plain
//! directory (vfs), through an overlay mount, or on a mounted block device.
//!
//! While the tar is read, its uncompressed bytes are hashed: that digest is
//! the layer's DiffID, which the caller checks against the image config.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use strata_snapshotter::mount::TempMount;
use strata_snapshotter::{Labels, Snapshotter};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tarball holds an entry that would write outside the root.
    #[error("refusing layer entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    /// The tarball is not a valid layer (bad headers, unsupported entries,
    /// dangling hard links, ...).
    #[error("invalid layer tarball: {0}")]
    Malformed(String),
    /// The system failed while writing the layer.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl LayerError {
    fn unsafe_entry(path: &str, reason: impl Into<String>) -> Self {
        LayerError::Unsafe { path: path.to_owned(), reason: reason.into() }
    }
    fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        LayerError::Io { context: context.into(), source: source.into() }
    }
    /// Whether the input (rather than the system) is at fault.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, LayerError::Io { .. })
    }
}

/// What applying one layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    /// `sha256:<hex>` of the uncompressed tar stream.
    pub diff_id: String,
    /// Sum of the sizes of the regular files in the layer.
    pub size: u64,
    /// Length of the uncompressed tar stream.
    pub tar_size: u64,
}

/// The chain ID of a layer on top of `parent` (the parent's chain ID, or
/// `None` for the bottom layer): ChainID(L0) = DiffID(L0) and
/// ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(n)).
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(p) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))),
    }
}

/// The chain IDs of every prefix of `diff_ids`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = chain_id(out.last().map(String::as_str), d);
        out.push(next);
    }
    out
}

/// Wraps `input` in a gzip decoder when it starts with the gzip magic.
pub fn decompressed<'a, R: Read + 'a>(input: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(128 * 1024, input);
    let head = buf.fill_buf()?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else {
        Ok(Box::new(buf))
    }
}

/// A reader that hashes and counts what passes through, and copies it to an
/// optional sink.
pub struct DigestReader<'a, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    tee: Option<&'a mut dyn Write>,
}

impl<'a, R: Read> DigestReader<'a, R> {
    pub fn new(inner: R, tee: Option<&'a mut dyn Write>) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0, tee }
    }
    /// Reads the rest of the input, then returns `sha256:<hex>` and the length.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count))
    }
}

impl<R: Read> Read for DigestReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(tee) = self.tee.as_mut() {
            tee.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Applies the layer tarball read from `input` (plain or gzip) to the tree at
/// `root`. `tee`, when given, receives a copy of the uncompressed tar.
pub fn apply_layer(root: &Path, input: impl Read, tee: Option<&mut dyn Write>) -> Result<AppliedLayer, LayerError> {
    let root_fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| LayerError::io(format!("open {}", root.display()), e))?;
    let plain = decompressed(input).map_err(|e| LayerError::Malformed(format!("reading the stream: {e}")))?;
    let mut reader = DigestReader::new(plain, tee);
    let mut applier = Applier { root: root_fd, written: HashSet::new(), dir_times: BTreeMap::new(), size: 0 };
    {
        let mut archive = tar::Archive::new(&mut reader);
        let entries = archive.entries().map_err(|e| LayerError::Malformed(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| LayerError::Malformed(e.to_string()))?;
            applier.apply_entry(entry)?;
        }
    }
    applier.finish_dir_times()?;
    let (diff_id, tar_size) = reader.finish().map_err(|e| LayerError::Malformed(format!("reading the stream: {e}")))?;
    Ok(AppliedLayer { diff_id, size: applier.size, tar_size })
}

/// Splits a tar path into clean components. `.` and empty components are
/// dropped; `..` and absolute paths are refused.
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, LayerError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    if raw.first() == Some(&b'/') {
        return Err(LayerError::unsafe_entry(&shown, "absolute paths are not allowed in a layer"));
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(LayerError::unsafe_entry(&shown, "\"..\" would escape the layer root")),
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> String {
    let mut s = String::new();
    for c in comps {
        if !s.is_empty() {
            s.push('/');
        }
        s.push_str(&c.to_string_lossy());
    }
    s
}

struct Applier {
    root: OwnedFd,
    /// Paths (joined components) created by this layer, and their ancestors:
    /// an opaque whiteout keeps them.
    written: HashSet<String>,
    /// Directory mtimes, set at the end because adding children changes them.
    dir_times: BTreeMap<Vec<OsString>, u64>,
    size: u64,
}

fn dup(fd: BorrowedFd<'_>, what: &str) -> Result<OwnedFd, LayerError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| LayerError::io(format!("dup {what}"), e))
}

fn to_mode(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & 0o7777)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Applier {
    /// Opens the directory named by `comps` under the root, never following
    /// a symlink; with `create`, missing directories are made (0755).
    fn open_dir(&mut self, comps: &[OsString], create: bool, shown: &str) -> Result<OwnedFd, LayerError> {
        let mut cur = dup(self.root.as_fd(), "layer root")?;
        for (i, c) in comps.iter().enumerate() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rustix::fs::openat(&cur, c.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&cur, c.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| LayerError::io(format!("create directory {}", join(&comps[..=i])), e))?;
                    self.mark_written(&comps[..=i]);
                    rustix::fs::openat(&cur, c.as_os_str(), flags, Mode::empty())
                        .map_err(|e| LayerError::io(format!("open directory {}", join(&comps[..=i])), e))?
                }
                Err(Errno::NOENT) => {
                    return Err(LayerError::Malformed(format!("{shown}: {} does not exist", join(&comps[..=i]))));
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&cur, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| LayerError::io(format!("stat {}", join(&comps[..=i])), e))?;
                    let ft = FileType::from_raw_mode(st.st_mode);
                    if ft == FileType::Symlink {
                        return Err(LayerError::unsafe_entry(
                            shown,
                            format!("parent {} is a symbolic link; a layer never writes through a symlink", join(&comps[..=i])),
                        ));
                    }
                    return Err(LayerError::Malformed(format!(
                        "{shown}: parent {} is not a directory",
                        join(&comps[..=i])
                    )));
                }
                Err(e) => return Err(LayerError::io(format!("open directory {}", join(&comps[..=i])), e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn mark_written(&mut self, comps: &[OsString]) {
        for i in 1..=comps.len() {
            self.written.insert(join(&comps[..i]));
        }
    }

    fn apply_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            return Ok(());
        }
        let comps = clean_path(&raw_path)?;
        let meta = self.read_meta(&mut entry, &shown)?;

        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./"): only a directory entry makes sense.
            if kind.is_dir() {
                self.dir_times.insert(Vec::new(), meta.mtime);
                let fd = dup(self.root.as_fd(), "layer root")?;
                return set_fd_meta(&fd, &meta, &shown);
            }
            return Err(LayerError::Malformed(format!("{shown:?}: only a directory can name the layer root")));
        };

        let name_bytes = name.as_bytes();
        if let Some(rest) = name_bytes.strip_prefix(b".wh.") {
            let parent = self.open_dir(parents, true, &shown)?;
            if rest == b".wh..opq" {
                return self.opaque(&parent, parents, &shown);
            }
            if rest.starts_with(b".wh.") {
                // Other aufs metadata (.wh..wh.plnk, ...): nothing to apply.
                return Ok(());
            }
            if rest.is_empty() || rest == b"." || rest == b".." || rest.contains(&b'/') {
                return Err(LayerError::unsafe_entry(&shown, "invalid whiteout name"));
            }
            return remove_all_at(&parent, OsStr::from_bytes(rest), &shown);
        }

        let parent = self.open_dir(parents, true, &shown)?;
        let existing = match rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(LayerError::io(format!("stat {shown}"), e)),
        };
        let keep_dir = kind.is_dir() && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            remove_all_at(&parent, name, &shown)?;
        }

        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| LayerError::io(format!("create directory {shown}"), e))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| LayerError::io(format!("open directory {shown}"), e))?;
                set_fd_meta(&fd, &meta, &shown)?;
                self.dir_times.insert(comps.clone(), meta.mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &parent,
                    name.as_os_str(),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| LayerError::io(format!("create {shown}"), e))?;
                let mut file = std::fs::File::from(fd);
                let n = io::copy(&mut entry, &mut file).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        LayerError::Malformed(format!("{shown}: truncated file data"))
                    } else {
                        LayerError::io(format!("write {shown}"), e)
                    }
                })?;
                self.size += n;
                set_fd_meta(&OwnedFd::from(file), &meta, &shown)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| LayerError::Malformed(format!("{shown}: symlink without a target")))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name.as_os_str())
                    .map_err(|e| LayerError::io(format!("create symlink {shown}"), e))?;
                set_at_meta(&parent, name, &meta, false, &shown)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .ok_or_else(|| LayerError::Malformed(format!("{shown}: hard link without a target")))?;
                let tcomps = clean_path(&target).map_err(|e| match e {
                    LayerError::Unsafe { reason, .. } => LayerError::unsafe_entry(
                        &shown,
                        format!("hard link target {:?}: {reason}", String::from_utf8_lossy(&target)),
                    ),
                    other => other,
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(LayerError::Malformed(format!("{shown}: hard link to the layer root")));
                };
                let tparent = self.open_dir(tparents, false, &shown)?;
                match rustix::fs::linkat(&tparent, tname.as_os_str(), &parent, name.as_os_str(), AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => {
                        return Err(LayerError::Malformed(format!(
                            "{shown}: hard link target {} does not exist",
                            join(&tcomps)
                        )))
                    }
                    Err(Errno::PERM) => {
                        return Err(LayerError::Malformed(format!(
                            "{shown}: hard link target {} is a directory",
                            join(&tcomps)
                        )))
                    }
                    Err(e) => return Err(LayerError::io(format!("link {shown}"), e)),
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                make_node_at(&parent, name.as_os_str(), entry.header())
                    .map_err(|e| LayerError::io(format!("create node {shown}"), e))?;
                set_at_meta(&parent, name, &meta, true, &shown)?;
            }
            other => {
                return Err(LayerError::Malformed(format!("{shown}: unsupported entry type {other:?}")));
            }
        }
        self.mark_written(&comps);
        Ok(())
    }

    fn read_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta, LayerError> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| LayerError::Malformed(format!("{shown}: bad {what}: {e}"));
        // An all-blank numeric field reads as 0, as Go's archive/tar (and so
        // dockerd) reads it; anything else unparsable is an error.
        let old = h.as_old();
        let numeric = |what: &str, raw: &[u8], value: io::Result<u64>| -> Result<u64, LayerError> {
            match value {
                Ok(v) => Ok(v),
                Err(_) if raw.iter().all(|b| matches!(b, 0 | b' ')) => Ok(0),
                Err(e) => Err(bad(what, e)),
            }
        };
        let mode = numeric("mode", &old.mode, h.mode().map(u64::from))? as u32;
        let uid = u32::try_from(numeric("uid", &old.uid, h.uid())?)
            .map_err(|_| LayerError::Malformed(format!("{shown}: uid out of range")))?;
        let gid = u32::try_from(numeric("gid", &old.gid, h.gid())?)
            .map_err(|_| LayerError::Malformed(format!("{shown}: gid out of range")))?;
        let mtime = numeric("mtime", &old.mtime, h.mtime())?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("pax header", e))?;
                let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
                // Overlay's own attributes are never taken from a layer.
                if key.starts_with(b"trusted.overlay.") || key.is_empty() {
                    continue;
                }
                xattrs.push((OsString::from_vec(key.to_vec()), ext.value_bytes().to_vec()));
            }
        }
        Ok(Meta { mode, uid, gid, mtime, xattrs })
    }

    /// An opaque whiteout: everything in the directory that this layer did
    /// not create goes.
    fn opaque(&mut self, dir: &OwnedFd, comps: &[OsString], shown: &str) -> Result<(), LayerError> {
        let prefix = join(comps);
        for child in list_dir(dir, shown)? {
            let full = if prefix.is_empty() {
                child.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", child.to_string_lossy())
            };
            if !self.written.contains(&full) {
                remove_all_at(dir, &child, shown)?;
            }
        }
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<(), LayerError> {
        // Deepest first is not needed: setting a directory's times does not
        // change its parent's.
        let times = std::mem::take(&mut self.dir_times);
        for (comps, mtime) in times {
            let shown = join(&comps);
            let fd = self.open_dir(&comps, false, &shown)?;
            rustix::fs::futimens(&fd, &timestamps(mtime)).map_err(|e| LayerError::io(format!("set times of {shown}"), e))?;
        }
        Ok(())
    }
}

fn set_xattrs(fd: &OwnedFd, meta: &Meta, shown: &str) -> Result<(), LayerError> {
    for (k, v) in &meta.xattrs {
        match rustix::fs::fsetxattr(fd, k.as_os_str(), v, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                tracing::warn!(path = shown, attr = ?k, "filesystem does not support this extended attribute; skipped");
            }
            Err(e) => return Err(LayerError::io(format!("set xattr {} on {shown}", k.to_string_lossy()), e)),
        }
    }
    Ok(())
}

/// Owner, mode, xattrs and times of a file or directory held open.
fn set_fd_meta(fd: &OwnedFd, meta: &Meta, shown: &str) -> Result<(), LayerError> {
    rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(meta.uid)), Some(rustix::fs::Gid::from_raw(meta.gid)))
        .map_err(|e| LayerError::io(format!("chown {shown}"), e))?;
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(fd, to_mode(meta.mode)).map_err(|e| LayerError::io(format!("chmod {shown}"), e))?;
    set_xattrs(fd, meta, shown)?;
    rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(|e| LayerError::io(format!("set times of {shown}"), e))
}

/// Owner, mode (unless a symlink) and times of a node named in `dir`.
fn set_at_meta(dir: &OwnedFd, name: &OsStr, meta: &Meta, chmod: bool, shown: &str) -> Result<(), LayerError> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| LayerError::io(format!("chown {shown}"), e))?;
    if chmod {
        // Only device nodes and fifos come here: created just now by us, in
        // a directory opened without following links.
        rustix::fs::chmodat(dir, name, to_mode(meta.mode), AtFlags::empty())
            .map_err(|e| LayerError::io(format!("chmod {shown}"), e))?;
    }
    rustix::fs::utimensat(dir, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| LayerError::io(format!("set times of {shown}"), e))
}

fn list_dir(dir: &OwnedFd, shown: &str) -> Result<Vec<OsString>, LayerError> {
    let mut names = Vec::new();
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| LayerError::io(format!("read directory of {shown}"), e))?;
    for ent in d {
        let ent = ent.map_err(|e| LayerError::io(format!("read directory of {shown}"), e))?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        names.push(OsString::from_vec(n.to_vec()));
    }
    Ok(names)
}

/// Creates the character device, block device or FIFO that the tar `header`
/// describes as `name` in `dir`, with mode 0600 and root's ownership (the
/// caller sets the entry's own); returns the file type made.
pub(crate) fn make_node_at(dir: impl AsFd, name: &OsStr, header: &tar::Header) -> rustix::io::Result<FileType> {
    let ft = match header.entry_type() {
        tar::EntryType::Char => FileType::CharacterDevice,
        tar::EntryType::Block => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    let major = header.device_major().ok().flatten().unwrap_or(0);
    let minor = header.device_minor().ok().flatten().unwrap_or(0);
    rustix::fs::mknodat(dir, name, ft, Mode::from_bits_truncate(0o600), rustix::fs::makedev(major, minor))?;
    Ok(ft)
}

/// Removes `name` in `dir` and, for a directory, everything below it,
/// without following symlinks. A missing name is not an error.
pub fn remove_all_at(dir: &impl AsFd, name: &OsStr, shown: &str) -> Result<(), LayerError> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(LayerError::io(format!("stat {}", name.to_string_lossy()), e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io(format!("open {}", name.to_string_lossy()), e))?;
        for child in list_dir(&sub, shown)? {
            remove_all_at(&sub, &child, shown)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| LayerError::io(format!("remove directory {} ({shown})", name.to_string_lossy()), e))
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| LayerError::io(format!("remove {} ({shown})", name.to_string_lossy()), e))
    }
}


/// Why a layer could not be unpacked into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The content's digest is not the one the image config promises.
    #[error("layer content does not match its digest: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("snapshotter: {0}")]
    Snapshotter(#[from] strata_snapshotter::Error),
    #[error("{0}")]
    Internal(String),
}

/// The key prefix of the active snapshots layers are unpacked in; any left
/// after a crash are removed on recovery.
pub const EXTRACT_PREFIX: &str = "stratad-extract-";

/// A layer that is now a committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    pub chain_id: String,
    pub applied: AppliedLayer,
}

/// Unpacks one layer tarball into a new committed snapshot named by its
/// chain ID, on top of the snapshot `parent` (a chain ID, or `None`).
///
/// The tarball comes from `open` (called on a blocking thread) and its
/// uncompressed bytes are copied to `blob` (a new file). With
/// `expected_diff_id`, the content must hash to it. On any failure the
/// active snapshot and the blob are removed, so nothing half-made remains;
/// if the chain ID is already committed, the existing snapshot is kept.
pub async fn unpack(
    snapshotter: Arc<dyn Snapshotter>,
    parent: Option<String>,
    expected_diff_id: Option<String>,
    open: Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>,
    blob: PathBuf,
    mount_dir: PathBuf,
) -> Result<UnpackedLayer, UnpackError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let key = format!("{EXTRACT_PREFIX}{}-{seq} {}", std::process::id(), expected_diff_id.as_deref().unwrap_or("import"));
    let mounts = snapshotter.prepare(&key, parent.as_deref().unwrap_or(""), Labels::new()).await?;

    let blob_for_apply = blob.clone();
    let applied = tokio::task::spawn_blocking(move || -> Result<AppliedLayer, UnpackError> {
        let input = open().map_err(|e| LayerError::Malformed(format!("reading the layer: {e}")))?;
        let mut out = std::fs::File::create(&blob_for_apply)
            .map_err(|e| LayerError::io(format!("create {}", blob_for_apply.display()), e))?;
        let mount = TempMount::new_in(&mounts, &mount_dir)?;
        let applied = {
            let mut tee = io::BufWriter::new(&mut out);
            let applied = apply_layer(mount.path(), input, Some(&mut tee));
            let flushed = tee.flush();
            let applied = applied?;
            flushed.map_err(|e| LayerError::io(format!("write {}", blob_for_apply.display()), e))?;
            applied
        };
        // The snapshot is about to be committed: its files must be on disk
        // first, or a crash leaves a committed layer of empty files. One
        // syncfs of the filesystem the snapshot lives on (through a bind
        // mount the host filesystem, through overlay its upper filesystem,
        // on a block device that device's filesystem).
        std::fs::File::open(mount.path())
            .and_then(|root| rustix::fs::syncfs(&root).map_err(std::io::Error::from))
            .map_err(|e| LayerError::io("flush the unpacked layer to disk", e))?;
        mount.unmount()?;
        out.sync_all().map_err(|e| LayerError::io(format!("sync {}", blob_for_apply.display()), e))?;
        Ok(applied)
    })
    .await
    .map_err(|e| UnpackError::Internal(format!("layer unpacking task failed: {e}")));

    let applied = match applied.and_then(|r| r) {
        Ok(a) => a,
        Err(e) => {
            discard(&*snapshotter, &key, &blob).await;
            return Err(e);
        }
    };
    if let Some(expected) = expected_diff_id {
        if expected != applied.diff_id {
            discard(&*snapshotter, &key, &blob).await;
            return Err(UnpackError::DiffIdMismatch { expected, actual: applied.diff_id });
        }
    }
    let chain = chain_id(parent.as_deref(), &applied.diff_id);
    match snapshotter.commit(&chain, &key, Labels::new()).await {
        Ok(()) => {}
        Err(e) if e.is_already_exists() => {
            // The same layer on the same parent is already there: keep it.
            if let Err(err) = snapshotter.remove(&key).await {
                tracing::warn!(key, error = %err, "failed to remove a duplicate active snapshot");
            }
        }
        Err(e) => {
            discard(&*snapshotter, &key, &blob).await;
            return Err(e.into());
        }
    }
    Ok(UnpackedLayer { chain_id: chain, applied })
}

async fn discard(snapshotter: &dyn Snapshotter, key: &str, blob: &Path) {
    if let Err(err) = snapshotter.remove(key).await {
        if !err.is_not_found() {
            tracing::warn!(key, error = %err, "failed to remove the snapshot of a failed layer");
        }
    }
    let _ = std::fs::remove_file(blob);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A tar builder that writes names verbatim (the tar crate's own setters
    /// refuse `..`, which these tests need).
    struct RawTar {
        buf: Vec<u8>,
    }

    impl RawTar {
        fn new() -> Self {
            Self { buf: Vec::new() }
        }
        fn entry(&mut self, name: &str, kind: tar::EntryType, link: &str, mode: u32, data: &[u8]) -> &mut Self {
            let mut h = tar::Header::new_ustar();
            {
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.buf.extend_from_slice(h.as_bytes());
            self.buf.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.buf.resize(self.buf.len() + pad, 0);
            self
        }
        fn dir(&mut self, name: &str) -> &mut Self {
            self.entry(name, tar::EntryType::Directory, "", 0o755, b"")
        }
        fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.entry(name, tar::EntryType::Regular, "", 0o644, data)
        }
        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(name, tar::EntryType::Symlink, target, 0o777, b"")
        }
        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(name, tar::EntryType::Link, target, 0o644, b"")
        }
        fn finish(&mut self) -> Vec<u8> {
            let mut out = std::mem::take(&mut self.buf);
            out.resize(out.len() + 1024, 0);
            out
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: std::path::PathBuf,
        canary: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&root).expect("mkdir root");
        std::fs::create_dir(&canary).expect("mkdir canary");
        std::fs::write(canary.join("secret"), b"untouched").expect("write canary");
        Fixture { _tmp: tmp, root, canary }
    }

    fn canary_intact(f: &Fixture) {
        let names: Vec<_> = std::fs::read_dir(&f.canary).expect("read canary").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![OsString::from("secret")], "something was written into the canary directory");
        assert_eq!(std::fs::read(f.canary.join("secret")).expect("read"), b"untouched");
        let parent = f.canary.parent().expect("parent");
        let mut top: Vec<_> = std::fs::read_dir(parent).expect("read").map(|e| e.expect("entry").file_name()).collect();
        top.sort();
        assert_eq!(top, vec![OsString::from("canary"), OsString::from("root")], "something was written beside the root");
    }

    fn expect_unsafe(f: &Fixture, tar: Vec<u8>, needle: &str) {
        let err = apply_layer(&f.root, &tar[..], None).expect_err("hostile tar must be refused");
        assert!(matches!(err, LayerError::Unsafe { .. }), "wrong error kind: {err:?}");
        assert!(err.is_bad_input());
        assert!(err.to_string().contains(needle), "message {:?} lacks {needle:?}", err.to_string());
        canary_intact(f);
    }

    #[test]
    fn applies_every_entry_kind_with_metadata() {
        let f = fixture();
        let data = RawTar::new()
            .dir("./")
            .dir("bin/")
            .entry("bin/busybox", tar::EntryType::Regular, "", 0o4755, b"#!binary")
            .hardlink("bin/sh", "bin/busybox")
            .symlink("bin/ls", "busybox")
            .symlink("abs", "/etc/passwd")
            .entry("dev/null", tar::EntryType::Char, "", 0o666, b"")
            .entry("run/fifo", tar::EntryType::Fifo, "", 0o600, b"")
            .finish();
        let applied = apply_layer(&f.root, &data[..], None).expect("apply");
        assert_eq!(applied.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&data))));
        assert_eq!(applied.tar_size, data.len() as u64);
        assert_eq!(applied.size, 8);

        let bb = std::fs::symlink_metadata(f.root.join("bin/busybox")).expect("busybox");
        assert_eq!(bb.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((bb.uid(), bb.gid()), (1000, 1001));
        assert_eq!(bb.mtime(), 1_600_000_000);
        let sh = std::fs::symlink_metadata(f.root.join("bin/sh")).expect("sh");
        assert_eq!(sh.ino(), bb.ino(), "hard link shares the inode");
        assert_eq!(std::fs::read_link(f.root.join("bin/ls")).expect("ls"), Path::new("busybox"));
        assert_eq!(std::fs::read_link(f.root.join("abs")).expect("abs"), Path::new("/etc/passwd"));
        let dev = std::fs::symlink_metadata(f.root.join("dev/null")).expect("dev");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&dev.file_type()));
        let fifo = std::fs::symlink_metadata(f.root.join("run/fifo")).expect("fifo");
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        let bin = std::fs::metadata(f.root.join("bin")).expect("bin");
        assert_eq!(bin.mtime(), 1_600_000_000, "directory mtime is set after its children");
        // Implicit parents get 0755.
        assert_eq!(std::fs::metadata(f.root.join("run")).expect("run").permissions().mode() & 0o777, 0o755);
        canary_intact(&f);
    }

    #[test]
    fn gzip_layer_has_the_diff_id_of_its_plain_tar() {
        let f = fixture();
        let data = RawTar::new().file("a", b"hello").finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut tee = Vec::new();
        let applied = apply_layer(&f.root, &gz[..], Some(&mut tee)).expect("apply");
        assert_eq!(applied.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&data))));
        assert_eq!(tee, data, "the tee receives the uncompressed tar");
        assert_eq!(std::fs::read(f.root.join("a")).expect("a"), b"hello");
    }

    #[test]
    fn whiteouts_delete_and_opaque_directories_hide_lower_content() {
        let f = fixture();
        std::fs::create_dir_all(f.root.join("d/sub")).expect("lower");
        std::fs::write(f.root.join("d/old"), b"x").expect("lower");
        std::fs::write(f.root.join("d/sub/deep"), b"x").expect("lower");
        std::fs::write(f.root.join("gone"), b"x").expect("lower");
        std::fs::create_dir_all(f.root.join("tree/a/b")).expect("lower");
        std::fs::write(f.root.join("keep"), b"x").expect("lower");
        let data = RawTar::new()
            .dir("d/")
            .file("d/new", b"n")
            .file("d/.wh..wh..opq", b"")
            .file(".wh.gone", b"")
            .file(".wh.tree", b"")
            .file(".wh.never-existed", b"")
            .finish();
        apply_layer(&f.root, &data[..], None).expect("apply");
        let mut d: Vec<_> = std::fs::read_dir(f.root.join("d")).expect("d").map(|e| e.expect("e").file_name()).collect();
        d.sort();
        assert_eq!(d, vec![OsString::from("new")]);
        assert!(!f.root.join("gone").exists());
        assert!(!f.root.join("tree").exists());
        assert!(f.root.join("keep").exists());
        assert!(!f.root.join(".wh.gone").exists(), "whiteout markers are not written");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let f = fixture();
        std::fs::create_dir_all(f.root.join("x/inner")).expect("lower");
        std::fs::write(f.root.join("y"), b"file").expect("lower");
        let data = RawTar::new().file("x", b"now a file").dir("y/").symlink("y/z", "/").finish();
        apply_layer(&f.root, &data[..], None).expect("apply");
        assert_eq!(std::fs::read(f.root.join("x")).expect("x"), b"now a file");
        assert!(std::fs::symlink_metadata(f.root.join("y")).expect("y").is_dir());
    }

    #[test]
    fn refuses_dotdot_escape() {
        let f = fixture();
        expect_unsafe(&f, RawTar::new().file("../canary/evil", b"x").finish(), "\"..\"");
        expect_unsafe(&f, RawTar::new().file("a/../../canary/evil", b"x").finish(), "\"..\"");
        expect_unsafe(&f, RawTar::new().dir("../evil/").finish(), "\"..\"");
    }

    #[test]
    fn refuses_absolute_paths() {
        let f = fixture();
        let target = format!("{}/evil", f.canary.display());
        expect_unsafe(&f, RawTar::new().file(&target, b"x").finish(), "absolute");
    }

    #[test]
    fn refuses_writing_through_a_symlinked_directory() {
        let f = fixture();
        let canary = f.canary.display().to_string();
        expect_unsafe(&f, RawTar::new().symlink("link", &canary).file("link/evil", b"x").finish(), "symbolic link");
        // Also when the symlink is relative and deeper in the tree.
        let f = fixture();
        expect_unsafe(
            &f,
            RawTar::new().dir("a/").symlink("a/up", "../../canary").file("a/up/evil", b"x").finish(),
            "symbolic link",
        );
        // A whiteout through a symlink must not delete outside either.
        let f = fixture();
        expect_unsafe(&f, RawTar::new().symlink("link", &canary).file("link/.wh.secret", b"").finish(), "symbolic link");
        // A symlink left by a lower layer is no way out either.
        let f = fixture();
        std::os::unix::fs::symlink(&f.canary, f.root.join("lower-link")).expect("symlink");
        expect_unsafe(&f, RawTar::new().file("lower-link/evil", b"x").finish(), "symbolic link");
    }

    #[test]
    fn refuses_hard_links_out_of_the_root() {
        let f = fixture();
        expect_unsafe(&f, RawTar::new().hardlink("stolen", "../canary/secret").finish(), "hard link target");
        let f = fixture();
        let abs = format!("{}/secret", f.canary.display());
        expect_unsafe(&f, RawTar::new().hardlink("stolen", &abs).finish(), "hard link target");
        let f = fixture();
        let canary = f.canary.display().to_string();
        expect_unsafe(&f, RawTar::new().symlink("link", &canary).hardlink("stolen", "link/secret").finish(), "symbolic link");
        assert!(!f.root.join("stolen").exists());
        assert_eq!(std::fs::metadata(f.canary.join("secret")).expect("secret").nlink(), 1);
    }

    #[test]
    fn hard_link_to_a_symlink_links_the_symlink_itself() {
        let f = fixture();
        let canary = format!("{}/secret", f.canary.display());
        let data = RawTar::new().symlink("s", &canary).hardlink("h", "s").finish();
        apply_layer(&f.root, &data[..], None).expect("apply");
        assert!(std::fs::symlink_metadata(f.root.join("h")).expect("h").file_type().is_symlink());
        assert_eq!(std::fs::metadata(f.canary.join("secret")).expect("secret").nlink(), 1);
        canary_intact(&f);
    }

    #[test]
    fn reports_dangling_hard_links_and_garbage() {
        let f = fixture();
        let err = apply_layer(&f.root, &RawTar::new().hardlink("h", "missing").finish()[..], None).expect_err("dangling");
        assert!(matches!(err, LayerError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = apply_layer(&f.root, &b"this is not a tar archive at all, just some text that is long enough"[..], None)
            .expect_err("garbage");
        assert!(err.is_bad_input(), "{err:?}");
        let mut truncated = RawTar::new().file("big", &[7u8; 4096]).finish();
        truncated.truncate(1000);
        let err = apply_layer(&f.root, &truncated[..], None).expect_err("truncated");
        assert!(err.is_bad_input(), "{err:?}");
        canary_intact(&f);
    }

    #[test]
    fn blank_numeric_fields_read_as_zero() {
        let f = fixture();
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu").name[..1].copy_from_slice(b"f");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_size(2);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(b"hi");
        data.resize(512 * 2, 0);
        data.extend_from_slice(&[0u8; 1024]);
        apply_layer(&f.root, &data[..], None).expect("apply");
        let m = std::fs::metadata(f.root.join("f")).expect("f");
        assert_eq!((m.uid(), m.gid(), m.mtime()), (0, 0, 0));
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:aa".to_owned(), "sha256:bb".to_owned()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:aa");
        assert_eq!(c[1], format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aa sha256:bb"))));
    }
}
