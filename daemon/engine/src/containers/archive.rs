//! `docker cp`: stat, tar and extract paths inside a container
//! (`HEAD`/`GET`/`PUT /containers/{id}/archive`).
//!
//! A path inside a container is resolved in the container's root: every
//! component is opened with `openat(O_PATH | O_NOFOLLOW)` from a handle on
//! the root, symlinks are read and followed by this code (an absolute target
//! restarts at the container's root, `..` never climbs above it), so no path
//! ever leaves the root, whatever the container planted. A running
//! container's root is `/proc/<pid>/root` (its mount namespace: volumes, binds
//! and tmpfs are seen as the container sees them); a stopped one's snapshot
//! is mounted for the request, and a path that reaches one of its volume or
//! bind destinations continues in the host source (a tmpfs of a stopped
//! container has no content: its destination is the snapshot's directory).
//!
//! An extracted tar is hostile input: names that are absolute or climb out
//! with `..`, symlinks whose relative target leaves the extraction
//! directory and hard links to outside it are refused before anything is
//! written; every entry's parent is resolved in the container root as above.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use super::changes::RootMount;
use super::ContainerService;
use crate::error::EngineError;
use crate::images::layer::{make_node_at, remove_all_at};

/// What `docker cp` learns about a path (Docker's `ContainerPathStat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode` bits.
    pub mode: u32,
    /// RFC 3339 with nanoseconds.
    pub mtime: String,
    pub link_target: String,
}

/// Go's `os.FileMode` for a `st_mode`.
pub fn go_file_mode(st_mode: u32) -> u32 {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const PIPE: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHARDEV: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    let mut m = st_mode & 0o777;
    m |= match FileType::from_raw_mode(st_mode) {
        FileType::Directory => DIR,
        FileType::Symlink => SYMLINK,
        FileType::Fifo => PIPE,
        FileType::Socket => SOCKET,
        FileType::BlockDevice => DEVICE,
        FileType::CharacterDevice => DEVICE | CHARDEV,
        _ => 0,
    };
    if st_mode & 0o4000 != 0 {
        m |= SETUID;
    }
    if st_mode & 0o2000 != 0 {
        m |= SETGID;
    }
    if st_mode & 0o1000 != 0 {
        m |= STICKY;
    }
    m
}

/// The container root a request works in: the fd every path starts from,
/// and what keeps it available.
/// The fd is closed before the mount is dropped (field order), and every
/// other handle into the root must be closed before it.
pub(crate) struct Root {
    fd: OwnedFd,
    /// The container's mount points (destination, host source, read-write);
    /// with `substitute`, paths that reach a destination continue in the
    /// host source (a stopped container's volumes and binds, which are not
    /// mounted in its snapshot).
    points: Vec<(Vec<OsString>, String, bool)>,
    substitute: bool,
    _mount: Option<RootMount>,
}

impl Root {
    /// The mount point the resolved `path` lies in: (read-write).
    fn mount_of(&self, path: &[OsString]) -> Option<bool> {
        self.points
            .iter()
            .filter(|(dest, _, _)| path.starts_with(dest))
            .max_by_key(|(dest, _, _)| dest.len())
            .map(|(_, _, rw)| *rw)
    }

    /// The host source of a mount point at exactly `path`.
    fn substitute_at(&self, path: &[OsString]) -> Option<&str> {
        if !self.substitute {
            return None;
        }
        self.points.iter().find(|(dest, source, _)| dest == path && !source.is_empty()).map(|(_, s, _)| s.as_str())
    }
}

/// A path as the client gave it, cleaned as Go's `filepath.Join("/", p)`,
/// with what its end said: `/.` (the directory's contents) or `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPath {
    pub comps: Vec<OsString>,
    pub trailing_dot: bool,
    pub trailing_slash: bool,
}

impl ClientPath {
    pub fn parse(raw: &str) -> Self {
        let mut comps: Vec<OsString> = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    comps.pop();
                }
                c => comps.push(OsString::from(c)),
            }
        }
        ClientPath {
            comps,
            trailing_dot: raw == "." || raw.ends_with("/."),
            trailing_slash: raw.ends_with('/'),
        }
    }

    /// `filepath.Base` of the absolute path.
    pub fn base(&self) -> String {
        if self.trailing_dot {
            return ".".into();
        }
        self.comps.last().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into())
    }
}

/// An object found in the container: its parent directory (an `O_PATH`
/// fd) and name, or the root itself; and its resolved path from the root.
struct Found {
    parent: OwnedFd,
    name: Option<OsString>,
    path: Vec<OsString>,
    /// The directory itself when the path ended on one (a volume's source
    /// is not the name in the parent).
    dir: Option<OwnedFd>,
}

fn dup(fd: &impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn split(bytes: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    bytes.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").map(|c| OsString::from_vec(c.to_vec()))
}

/// Resolves `comps` in the root `root`: symlinks are followed inside the
/// root (the last one only with `follow_last`); with `create`, missing
/// directories are made (0755, owned by `owner`).
fn resolve(tree: &Root, comps: &[OsString], follow_last: bool, create: Option<(u32, u32)>) -> io::Result<Found> {
    let root = &tree.fd;
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
    let mut links = 0;
    while let Some(comp) = queue.pop_front() {
        if comp == ".." {
            stack.pop();
            continue;
        }
        if comp == "." {
            continue;
        }
        let last = queue.is_empty();
        let cur = match stack.last() {
            Some((fd, _)) => dup(fd)?,
            None => dup(root)?,
        };
        let mut here: Vec<OsString> = stack.iter().map(|(_, n)| n.clone()).collect();
        here.push(comp.clone());
        if let Some(source) = tree.substitute_at(&here) {
            let source = std::path::Path::new(source);
            let st = rustix::fs::stat(source)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let fd = rustix::fs::open(source, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
                stack.push((fd, comp));
                continue;
            }
            if !last {
                return Err(Errno::NOTDIR.into());
            }
            // A file bind: the host file, by its own name in its directory.
            let parent = source.parent().unwrap_or(std::path::Path::new("/"));
            let name = source.file_name().map(OsStr::to_os_string).unwrap_or_default();
            let parent = rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            return Ok(Found { parent, name: Some(name), path: here, dir: None });
        }
        let fd = match rustix::fs::openat(&cur, comp.as_os_str(), path_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create.is_some() => {
                let (uid, gid) = create.unwrap_or((0, 0));
                match rustix::fs::mkdirat(&cur, comp.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {
                        let _ = rustix::fs::chownat(
                            &cur,
                            comp.as_os_str(),
                            Some(rustix::fs::Uid::from_raw(uid)),
                            Some(rustix::fs::Gid::from_raw(gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        );
                    }
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&cur, comp.as_os_str(), path_flags(), Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink if !last || follow_last => {
                links += 1;
                if links > 40 {
                    return Err(Errno::LOOP.into());
                }
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
                let target = target.as_bytes();
                if target.first() == Some(&b'/') {
                    stack.clear();
                }
                let mut parts: Vec<OsString> = target
                    .split(|b| *b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .map(|c| OsString::from_vec(c.to_vec()))
                    .collect();
                while let Some(p) = parts.pop() {
                    queue.push_front(p);
                }
            }
            FileType::Directory if !last || follow_last => stack.push((fd, comp)),
            _ if last => {
                let parent = cur;
                let mut path: Vec<OsString> = stack.iter().map(|(_, n)| n.clone()).collect();
                path.push(comp.clone());
                return Ok(Found { parent, name: Some(comp), path, dir: None });
            }
            _ => return Err(Errno::NOTDIR.into()),
        }
    }
    // The path ended on a directory (or the root).
    let path: Vec<OsString> = stack.iter().map(|(_, n)| n.clone()).collect();
    match stack.pop() {
        None => Ok(Found { parent: dup(root)?, name: None, path, dir: Some(dup(root)?) }),
        Some((fd, name)) => {
            let parent = match stack.last() {
                Some((fd, _)) => dup(fd)?,
                None => dup(root)?,
            };
            Ok(Found { parent, name: Some(name), path, dir: Some(fd) })
        }
    }
}

impl Found {
    fn stat(&self) -> io::Result<Stat> {
        if let Some(d) = &self.dir {
            return Ok(rustix::fs::fstat(d)?);
        }
        match &self.name {
            Some(n) => Ok(rustix::fs::statat(&self.parent, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?),
            None => Ok(rustix::fs::fstat(&self.parent)?),
        }
    }

    /// A readable handle (a directory or a regular file), never through a
    /// symlink.
    fn open(&self, dir: bool) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let flags = if dir { flags | OFlags::DIRECTORY } else { flags };
        if let Some(d) = &self.dir {
            return Ok(rustix::fs::openat(d, ".", flags, Mode::empty())?);
        }
        match &self.name {
            Some(n) => Ok(rustix::fs::openat(&self.parent, n.as_os_str(), flags, Mode::empty())?),
            None => Ok(rustix::fs::openat(&self.parent, ".", flags, Mode::empty())?),
        }
    }

    /// An `O_PATH` handle on the directory found.
    fn dir_fd(&self) -> io::Result<OwnedFd> {
        match &self.dir {
            Some(d) => dup(d),
            None => Err(Errno::NOTDIR.into()),
        }
    }
}

fn show(path: &[OsString]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&c.to_string_lossy());
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

fn mtime_of(st: &Stat) -> String {
    crate::images::config::format_rfc3339(st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0))
}

/// Where the object the client named is: the directory part resolved with
/// every symlink followed, the last component followed only for a
/// trailing `/` or `/.` (as dockerd's `ResolvePath`).
fn locate(root: &Root, p: &ClientPath) -> io::Result<Found> {
    let follow_last = p.trailing_dot || p.trailing_slash;
    let found = resolve(root, &p.comps, follow_last, None)?;
    if follow_last {
        let st = found.stat()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(Errno::NOTDIR.into());
        }
    }
    Ok(found)
}

fn not_found(raw: &str, container: &str) -> EngineError {
    EngineError::not_found(format!("Could not find the file {raw} in container {container}"))
}

fn lookup_error(e: io::Error, raw: &str, container: &str) -> EngineError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => not_found(raw, container),
        _ => EngineError::io(format!("resolve {raw} in container {container}"), e),
    }
}

fn stat_found(root: &Root, p: &ClientPath, found: &Found) -> io::Result<PathStat> {
    let st = found.stat()?;
    let mut link_target = String::new();
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        link_target = match resolve(root, &p.comps, true, None) {
            Ok(t) => show(&t.path),
            Err(_) => show(&found.path),
        };
    }
    Ok(PathStat {
        name: p.base(),
        size: st.st_size,
        mode: go_file_mode(st.st_mode),
        mtime: mtime_of(&st),
        link_target,
    })
}

/// A prepared `GET .../archive`: the stat for the header, and the tar to
/// stream.
pub struct ArchiveSource {
    // Dropped in this order: the handles into the root before the root
    // (a temporary mount cannot be unmounted while they are open).
    found: Found,
    tar_name: String,
    pub stat: PathStat,
    _root: Root,
}

impl ArchiveSource {
    /// Writes the tar (blocking).
    pub fn write_to<W: Write>(self, out: W) -> Result<W, EngineError> {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        let io = |e: io::Error| EngineError::io("write the archive", e);
        let st = self.found.stat().map_err(io)?;
        match (&self.found.name, &self.found.dir) {
            (Some(n), None) => append(&mut builder, &self.found.parent, n, &st, &self.tar_name).map_err(io)?,
            _ => {
                let fd = self.found.open(true).map_err(io)?;
                append_dir(&mut builder, fd, &st, &self.tar_name).map_err(io)?;
            }
        }
        builder.into_inner().map_err(io)
    }
}

fn header_for(st: &Stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

fn append<W: Write>(b: &mut tar::Builder<W>, parent: &OwnedFd, name: &OsStr, st: &Stat, tar_name: &str) -> io::Result<()> {
    let mut h = header_for(st);
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            append_dir(b, fd, st, tar_name)
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(io::Error::other(format!("{tar_name} changed while it was archived")));
            }
            let mut h = header_for(&st);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(u64::try_from(st.st_size).unwrap_or(0));
            let file = std::fs::File::from(fd);
            append_raw(b, h, tar_name.as_bytes(), None, file.take(u64::try_from(st.st_size).unwrap_or(0)))
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(parent, name, Vec::new())?;
            h.set_entry_type(tar::EntryType::Symlink);
            append_raw(b, h, tar_name.as_bytes(), Some(target.as_bytes()), io::empty())
        }
        FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
            let kind = match FileType::from_raw_mode(st.st_mode) {
                FileType::CharacterDevice => tar::EntryType::Char,
                FileType::BlockDevice => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            };
            h.set_entry_type(kind);
            if kind != tar::EntryType::Fifo {
                h.set_device_major(rustix::fs::major(st.st_rdev))?;
                h.set_device_minor(rustix::fs::minor(st.st_rdev))?;
            }
            append_raw(b, h, tar_name.as_bytes(), None, io::empty())
        }
        // Sockets are not archived (as Go's archive/tar).
        _ => Ok(()),
    }
}

/// Appends an entry named exactly `name` (the tar crate would drop a
/// leading `./`, which `docker cp` needs for a directory's contents), with
/// GNU long-name records for names or link targets over 100 bytes.
fn append_raw<W: Write>(b: &mut tar::Builder<W>, mut h: tar::Header, name: &[u8], link: Option<&[u8]>, data: impl Read) -> io::Result<()> {
    let long = |b: &mut tar::Builder<W>, kind: u8, value: &[u8]| -> io::Result<()> {
        let mut lh = tar::Header::new_gnu();
        lh.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        lh.set_mode(0o644);
        lh.set_entry_type(tar::EntryType::new(kind));
        let mut v = value.to_vec();
        v.push(0);
        lh.set_size(v.len() as u64);
        lh.set_cksum();
        b.append(&lh, &v[..])
    };
    if name.len() > 100 {
        long(b, b'L', name)?;
    }
    if let Some(l) = link {
        if l.len() > 100 {
            long(b, b'K', l)?;
        }
    }
    {
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name = [0; 100];
        old.name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = link {
            let n = l.len().min(100);
            old.linkname = [0; 100];
            old.linkname[..n].copy_from_slice(&l[..n]);
        }
    }
    h.set_cksum();
    b.append(&h, data)
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, fd: OwnedFd, st: &Stat, tar_name: &str) -> io::Result<()> {
    let mut h = header_for(st);
    h.set_entry_type(tar::EntryType::Directory);
    let h = h;
    let dir_name = if tar_name.ends_with('/') { tar_name.to_string() } else { format!("{tar_name}/") };
    append_raw(b, h, dir_name.as_bytes(), None, io::empty())?;
    let mut names: Vec<OsString> = Vec::new();
    for ent in rustix::fs::Dir::read_from(&fd)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    names.sort();
    for n in names {
        let st = match rustix::fs::statat(&fd, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let child = format!("{dir_name}{}", n.to_string_lossy());
        append(b, &fd, &n, &st, &child)?;
    }
    Ok(())
}

/// Options of `PUT .../archive`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    pub no_overwrite_dir_non_dir: bool,
    pub copy_uid_gid: bool,
}

impl ContainerService {
    async fn open_root(&self, c: &super::Container) -> Result<Root, EngineError> {
        let (alive, pid) = {
            let s = c.state();
            (s.status.is_alive(), s.pid)
        };
        let points: Vec<(Vec<OsString>, String, bool)> = c
            .record()
            .mounts
            .iter()
            .map(|m| (split(m.destination.as_bytes()).collect(), if m.typ == "tmpfs" { String::new() } else { m.source.clone() }, m.rw))
            .collect();
        if alive && pid > 0 {
            let proc_root = format!("/proc/{pid}/root");
            if let Ok(fd) = rustix::fs::open(proc_root.as_str(), OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
                // The process must still be this container's init: its root
                // is the container's mounted root (a reaped PID could have
                // been reused by another process).
                let same = match (rustix::fs::fstat(&fd), rustix::fs::stat(c.dir.rootfs())) {
                    (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
                    _ => false,
                };
                if same {
                    return Ok(Root { fd, points, substitute: false, _mount: None });
                }
            }
        }
        let mount = self.mount_root(c).await?;
        let fd = rustix::fs::open(mount.path(), OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| EngineError::io("open the container root", e.into()))?;
        Ok(Root { fd, points, substitute: true, _mount: Some(mount) })
    }

    /// `HEAD /containers/{id}/archive`.
    pub async fn stat_path(&self, name: &str, raw: &str) -> Result<PathStat, EngineError> {
        let c = self.get(name)?;
        let root = self.open_root(&c).await?;
        let raw = raw.to_string();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let p = ClientPath::parse(&raw);
            let found = locate(&root, &p).map_err(|e| lookup_error(e, &raw, &name))?;
            let stat = stat_found(&root, &p, &found).map_err(|e| lookup_error(e, &raw, &name))?;
            drop(found);
            drop(root);
            Ok(stat)
        })
        .await
        .map_err(|e| EngineError::internal(format!("stat task failed: {e}")))?
    }

    /// `GET /containers/{id}/archive`: the stat and the tar to stream.
    pub async fn archive_path(&self, name: &str, raw: &str) -> Result<ArchiveSource, EngineError> {
        let c = self.get(name)?;
        let root = self.open_root(&c).await?;
        let raw_owned = raw.to_string();
        let name_owned = name.to_string();
        let source = tokio::task::spawn_blocking(move || {
            let p = ClientPath::parse(&raw_owned);
            let found = locate(&root, &p).map_err(|e| lookup_error(e, &raw_owned, &name_owned))?;
            let stat = stat_found(&root, &p, &found).map_err(|e| lookup_error(e, &raw_owned, &name_owned))?;
            let tar_name = if p.trailing_dot { ".".to_string() } else if p.comps.is_empty() { "/".to_string() } else { p.base() };
            let tar_name = if tar_name == "." { "./".to_string() } else { tar_name };
            Ok::<_, EngineError>(ArchiveSource { found, tar_name, stat, _root: root })
        })
        .await
        .map_err(|e| EngineError::internal(format!("archive task failed: {e}")))??;
        self.emit(&c, "archive-path", &[]);
        Ok(source)
    }

    /// `PUT /containers/{id}/archive`: extracts the tar read from `input`
    /// (on a blocking thread) into the directory `raw`.
    pub async fn extract_to_dir<R: Read + Send + 'static>(
        &self,
        name: &str,
        raw: &str,
        options: ExtractOptions,
        input: R,
    ) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let (readonly, user) = {
            let r = c.record();
            (
                r.host_config.get("ReadonlyRootfs").and_then(serde_json::Value::as_bool).unwrap_or(false),
                r.config.get("User").and_then(serde_json::Value::as_str).unwrap_or("").to_string(),
            )
        };
        let root = self.open_root(&c).await?;
        let raw_owned = raw.to_string();
        let name_owned = name.to_string();
        tokio::task::spawn_blocking(move || {
            let p = ClientPath::parse(&raw_owned);
            // The last component is followed too: extracting into a symlink
            // to a directory extracts into the directory.
            let dest = resolve(&root, &p.comps, true, None).map_err(|e| lookup_error(e, &raw_owned, &name_owned))?;
            let st = dest.stat().map_err(|e| lookup_error(e, &raw_owned, &name_owned))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(EngineError::invalid("extraction point is not a directory"));
            }
            match root.mount_of(&dest.path) {
                Some(false) => return Err(EngineError::invalid("mounted volume is marked read-only")),
                Some(true) => {}
                None if readonly => return Err(EngineError::invalid("container rootfs is marked read-only")),
                None => {}
            }
            let owner = if options.copy_uid_gid { container_user(&root, &user) } else { (0, 0) };
            let mut x = Extractor { root: &root, dest: dest.path.clone(), owner, options, dir_times: Vec::new() };
            let result = x.run(input);
            drop(x);
            drop(dest);
            drop(root);
            result
        })
        .await
        .map_err(|e| EngineError::internal(format!("extract task failed: {e}")))??;
        self.emit(&c, "extract-to-dir", &[]);
        Ok(())
    }
}

/// The uid and gid of the container's configured user (numeric, or looked
/// up in the container's `/etc/passwd` and `/etc/group`); root otherwise.
fn container_user(root: &Root, user: &str) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |path: &str| -> String {
        let comps: Vec<OsString> = split(path.as_bytes()).collect();
        let Ok(found) = resolve(root, &comps, true, None) else { return String::new() };
        let Ok(fd) = found.open(false) else { return String::new() };
        let mut s = String::new();
        let _ = std::fs::File::from(fd).take(1 << 20).read_to_string(&mut s);
        s
    };
    let passwd = read("/etc/passwd");
    let mut uid = 0;
    let mut gid = 0;
    if let Ok(n) = u.parse::<u32>() {
        uid = n;
        if let Some(line) = passwd.lines().find(|l| l.split(':').nth(2) == Some(u)) {
            gid = line.split(':').nth(3).and_then(|g| g.parse().ok()).unwrap_or(0);
        }
    } else if let Some(line) = passwd.lines().find(|l| l.split(':').next() == Some(u)) {
        uid = line.split(':').nth(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        gid = line.split(':').nth(3).and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    if let Some(g) = g {
        if let Ok(n) = g.parse::<u32>() {
            gid = n;
        } else {
            let group = read("/etc/group");
            if let Some(line) = group.lines().find(|l| l.split(':').next() == Some(g)) {
                gid = line.split(':').nth(2).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    (uid, gid)
}

/// Cleans a tar name relative to the extraction directory; refuses absolute
/// names and names that climb out of it.
pub fn clean_entry_name(raw: &[u8]) -> Result<Vec<OsString>, EngineError> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(EngineError::invalid(format!("refusing archive entry {shown:?}: absolute paths are not allowed")));
    }
    let mut out: Vec<OsString> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(EngineError::invalid(format!(
                        "refusing archive entry {shown:?}: \"..\" would escape the extraction directory"
                    )));
                }
            }
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, seen from the entry's directory
/// `parents`, stays inside the extraction directory.
fn symlink_stays_inside(parents: &[OsString], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        // Resolved in the container's root, as every path in it.
        return true;
    }
    let mut depth = parents.len();
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    true
}

struct Extractor<'a> {
    root: &'a Root,
    /// The extraction directory, resolved, from the container root.
    dest: Vec<OsString>,
    owner: (u32, u32),
    options: ExtractOptions,
    dir_times: Vec<(Vec<OsString>, u64)>,
}

fn bad(e: impl std::fmt::Display) -> EngineError {
    EngineError::invalid(format!("invalid tar archive: {e}"))
}

impl Extractor<'_> {
    fn run(&mut self, input: impl Read) -> Result<(), EngineError> {
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            self.entry(entry)?;
        }
        for (comps, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if let Ok(found) = resolve(self.root, &comps, false, None) {
                if let Some(n) = &found.name {
                    let _ = rustix::fs::utimensat(&found.parent, n.as_os_str(), &times(mtime), AtFlags::SYMLINK_NOFOLLOW);
                }
            }
        }
        Ok(())
    }

    fn full(&self, rel: &[OsString]) -> Vec<OsString> {
        let mut v = self.dest.clone();
        v.extend_from_slice(rel);
        v
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), EngineError> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_entry_name(&raw)?;
        let h = entry.header();
        let mode = h.mode().map_err(bad)? & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let io = |what: &str, e: io::Error| EngineError::io(format!("{what} {shown}"), e);

        // Checks that need no file system first: nothing is written for a
        // refused entry.
        if kind == tar::EntryType::Symlink {
            let target = link.clone().filter(|t| !t.is_empty()).ok_or_else(|| bad(format!("{shown}: symlink without a target")))?;
            let parents = &comps[..comps.len().saturating_sub(1)];
            if !symlink_stays_inside(parents, &target) {
                return Err(EngineError::invalid(format!(
                    "refusing archive entry {shown:?}: invalid symlink {shown:?} -> {:?} (it points outside the extraction directory)",
                    String::from_utf8_lossy(&target)
                )));
            }
        }
        let link_comps = if kind == tar::EntryType::Link {
            let target = link.clone().ok_or_else(|| bad(format!("{shown}: hard link without a target")))?;
            let t = clean_entry_name(&target).map_err(|_| {
                EngineError::invalid(format!(
                    "refusing archive entry {shown:?}: invalid hardlink {shown:?} -> {:?} (its target is outside the extraction directory)",
                    String::from_utf8_lossy(&target)
                ))
            })?;
            if t.is_empty() {
                return Err(bad(format!("{shown}: hard link to the extraction directory")));
            }
            Some(t)
        } else {
            None
        };

        let Some((name, parents)) = comps.split_last() else {
            // The extraction directory itself ("./"): as dockerd, skipped.
            return Ok(());
        };
        let parent = resolve(self.root, &self.full(parents), true, Some(self.owner)).map_err(|e| io("create the parent of", e))?;
        let parent_fd = parent.dir_fd().map_err(|e| io("open the parent of", e))?;
        let existing = match rustix::fs::statat(&parent_fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io("stat", e.into())),
        };
        let is_dir = kind.is_dir();
        if let Some(ft) = existing {
            let exists_dir = ft == FileType::Directory;
            if self.options.no_overwrite_dir_non_dir && exists_dir && !is_dir {
                return Err(EngineError::invalid(format!(
                    "cannot overwrite directory {:?} with non-directory {shown:?}",
                    show(&self.full(&comps))
                )));
            }
            if self.options.no_overwrite_dir_non_dir && !exists_dir && is_dir {
                return Err(EngineError::invalid(format!(
                    "cannot overwrite non-directory {:?} with directory {shown:?}",
                    show(&self.full(&comps))
                )));
            }
            if !(exists_dir && is_dir) {
                remove_all_at(&parent_fd, name.as_os_str(), &shown).map_err(|e| EngineError::internal(e.to_string()))?;
            }
        }
        let (uid, gid) = self.owner;
        let owner = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
        match kind {
            tar::EntryType::Directory => {
                if existing != Some(FileType::Directory) {
                    rustix::fs::mkdirat(&parent_fd, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| io("create directory", e.into()))?;
                }
                let fd = rustix::fs::openat(
                    &parent_fd,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io("open directory", e.into()))?;
                rustix::fs::fchown(&fd, owner.0, owner.1).map_err(|e| io("chown", e.into()))?;
                rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| io("chmod", e.into()))?;
                self.dir_times.push((self.full(&comps), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &parent_fd,
                    name.as_os_str(),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io("create", e.into()))?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        bad(format!("{shown}: truncated file data"))
                    } else {
                        io("write", e)
                    }
                })?;
                rustix::fs::fchown(&file, owner.0, owner.1).map_err(|e| io("chown", e.into()))?;
                rustix::fs::fchmod(&file, Mode::from_bits_truncate(mode)).map_err(|e| io("chmod", e.into()))?;
                rustix::fs::futimens(&file, &times(mtime)).map_err(|e| io("set times of", e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = link.unwrap_or_default();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent_fd, name.as_os_str())
                    .map_err(|e| io("create symlink", e.into()))?;
                rustix::fs::chownat(&parent_fd, name.as_os_str(), owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io("chown", e.into()))?;
                let _ = rustix::fs::utimensat(&parent_fd, name.as_os_str(), &times(mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => {
                let t = link_comps.unwrap_or_default();
                let (tname, tparents) = t.split_last().ok_or_else(|| bad("hard link without a target"))?;
                let tparent = resolve(self.root, &self.full(tparents), true, None).map_err(|e| io("find the hard link target of", e))?;
                let tparent_fd = tparent.dir_fd().map_err(|e| io("find the hard link target of", e))?;
                match rustix::fs::linkat(&tparent_fd, tname.as_os_str(), &parent_fd, name.as_os_str(), AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => return Err(bad(format!("{shown}: hard link target {} does not exist", show(&t)))),
                    Err(e) => return Err(io("link", e.into())),
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = make_node_at(&parent_fd, name.as_os_str(), entry.header()).map_err(|e| io("create node", e.into()))?;
                rustix::fs::chownat(&parent_fd, name.as_os_str(), owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io("chown", e.into()))?;
                // The mode through a handle on the node itself: a path would
                // follow a symlink the container swapped in meanwhile.
                let node = rustix::fs::openat(&parent_fd, name.as_os_str(), path_flags(), Mode::empty())
                    .map_err(|e| io("open", e.into()))?;
                let nst = rustix::fs::fstat(&node).map_err(|e| io("stat", e.into()))?;
                if FileType::from_raw_mode(nst.st_mode) == ft {
                    std::fs::set_permissions(
                        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node)),
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                    .map_err(|e| io("chmod", e))?;
                }
                let _ = rustix::fs::utimensat(&parent_fd, name.as_os_str(), &times(mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            other => return Err(bad(format!("{shown}: unsupported entry type {other:?}"))),
        }
        Ok(())
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_of(dir: &std::path::Path) -> Root {
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        Root { fd, points: Vec::new(), substitute: false, _mount: None }
    }

    #[test]
    fn client_paths() {
        let p = ClientPath::parse("/a/../b/./c/.");
        assert_eq!(p.comps, vec![OsString::from("b"), OsString::from("c")]);
        assert!(p.trailing_dot);
        assert_eq!(p.base(), ".");
        let p = ClientPath::parse("../../etc/");
        assert_eq!(p.comps, vec![OsString::from("etc")]);
        assert!(p.trailing_slash);
        assert_eq!(ClientPath::parse("/").base(), "/");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("rel")).unwrap();
        let root = root_of(r);
        for link in ["abs", "rel"] {
            let comps = vec![OsString::from(link), OsString::from("passwd")];
            let found = resolve(&root, &comps, true, None).unwrap();
            assert_eq!(show(&found.path), "/etc/passwd");
            let mut s = String::new();
            std::fs::File::from(found.open(false).unwrap()).read_to_string(&mut s).unwrap();
            assert_eq!(s, "inside");
        }
        let link_only = resolve(&root, &[OsString::from("abs")], false, None).unwrap();
        assert_eq!(FileType::from_raw_mode(link_only.stat().unwrap().st_mode), FileType::Symlink);
    }

    #[test]
    fn entry_names_and_links() {
        assert!(clean_entry_name(b"/etc/x").is_err());
        assert!(clean_entry_name(b"../x").is_err());
        assert!(clean_entry_name(b"a/../../x").is_err());
        assert_eq!(clean_entry_name(b"./a/../b").unwrap(), vec![OsString::from("b")]);
        assert!(symlink_stays_inside(&[], b"/etc"));
        assert!(!symlink_stays_inside(&[], b"../x"));
        assert!(symlink_stays_inside(&[OsString::from("d")], b"../x"));
        assert_eq!(go_file_mode(0o040755), (1 << 31) | 0o755);
        assert_eq!(go_file_mode(0o120777), (1 << 27) | 0o777);
    }
}
