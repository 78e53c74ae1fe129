//! Exposure: one FUSE mount that serves each active device of a pool as a
//! regular file named by its device id, for a loop device to sit on.
//!
//! Two ways to serve the files ([`DeviceCache`]):
//! - `Direct` (the default): files are opened with direct I/O and parallel
//!   direct writes, and loop devices attached with direct I/O: no page cache
//!   between the loop device and the daemon; every read is a request.
//! - `Page`: files are served through the kernel's page cache,
//!   write-through: there is no FUSE writeback cache, so every write reaches
//!   the daemon before it completes and no page of a device file is ever
//!   dirty (reclaim never waits on the daemon). Loop devices are attached
//!   without direct I/O, so reads of data already read or written come from
//!   that cache without a request. While a file is open the daemon changes
//!   its bytes only through requests the kernel sees (writes; `fallocate`,
//!   after which the kernel drops the range from its cache), and its size
//!   only grows (nothing is cached past its end). The first open of a file
//!   (none other open) drops what the kernel cached of its inode; later
//!   opens keep the cache. So nothing cached outlives the last close: not
//!   across a change made through the pool while the file was closed, nor
//!   across an inode number used again. The price: one more cached copy of
//!   the data read and written, and one more copy per write.
//!
//! `fsync` (the loop device's FLUSH) commits the pool;
//! `fallocate(PUNCH_HOLE | ZERO_RANGE)` (DISCARD, WRITE ZEROES) discards.
//! `statfs` reports the block size, which becomes the loop device's discard
//! granularity. A device removed while a file handle is open is deleted when
//! the last handle is released.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

use crate::sys::loopdev::{self as loopctl, LoopDevice};
use super::{Pool, PoolError};

const TTL: Duration = Duration::from_secs(0);
const MAX_WRITE: u32 = 1024 * 1024;
/// Largest read request. A loop device's 1 MiB direct read becomes four
/// requests that request threads serve in parallel (the kernel sends them
/// at once with asynchronous direct I/O), instead of one thread copying the
/// whole megabyte twice while the others idle.
const MAX_READ: u32 = 256 * 1024;
/// How long a FUSE mount found at start-up gets to answer `statfs` before
/// it counts as left by a killed daemon.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed daemon, its FUSE connection aborted, gets to exit and
/// let go of the pool.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

#[derive(Debug, Default)]
struct Active {
    opens: u32,
    remove_pending: bool,
}

/// How device files reach the kernel (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceCache {
    /// Direct I/O end to end: every read and write is a request.
    #[default]
    Direct,
    /// Through the kernel's page cache, write-through.
    Page,
}

#[derive(Debug)]
struct Shared {
    cache: DeviceCache,
    pool: Mutex<Pool>,
    active: Mutex<BTreeMap<u64, Active>>,
    started: SystemTime,
}

impl Shared {
    fn pool(&self) -> Result<MutexGuard<'_, Pool>, PoolError> {
        self.pool.lock().map_err(|_| PoolError::Failed("a pool operation panicked".into()))
    }
    fn active(&self) -> Result<MutexGuard<'_, BTreeMap<u64, Active>>, PoolError> {
        self.active.lock().map_err(|_| PoolError::Failed("a device operation panicked".into()))
    }
}

fn errno(e: &PoolError) -> Errno {
    Errno::from(std::io::Error::from_raw_os_error(e.errno()))
}

/// Inode of the file of device `dev` (1 is the root directory).
fn ino_of(dev: u64) -> INodeNo {
    INodeNo(dev + 1)
}

thread_local! {
    static IO_FLUSHER: Cell<bool> = const { Cell::new(false) };
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every request thread marks itself an I/O flusher once.
fn io_flusher() {
    IO_FLUSHER.with(|done| {
        if !done.get() {
            done.set(true);
            if let Err(e) = loopctl::set_io_flusher() {
                tracing::warn!(error = %e, "cannot mark the FUSE thread as an I/O flusher");
            }
        }
    });
}

struct PoolFs {
    shared: Arc<Shared>,
}

impl PoolFs {
    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.shared.started,
            mtime: self.shared.started,
            ctime: self.shared.started,
            crtime: self.shared.started,
            kind: FileType::Directory,
            perm: 0o700,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let dev = ino.0.checked_sub(1).ok_or(Errno::ENOENT)?;
        if !self.shared.active().map_err(|e| errno(&e))?.contains_key(&dev) {
            return Err(Errno::ENOENT);
        }
        let pool = self.shared.pool().map_err(|e| errno(&e))?;
        let size = pool.device_size(dev).map_err(|e| errno(&e))?;
        let bs = pool.block_size();
        let mapped = pool.info_mapped_blocks(dev).map_err(|e| errno(&e))?;
        Ok(FileAttr {
            ino,
            size,
            blocks: mapped * bs / 512,
            atime: self.shared.started,
            mtime: self.shared.started,
            ctime: self.shared.started,
            crtime: self.shared.started,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: bs as u32,
            flags: 0,
        })
    }
}

impl Filesystem for PoolFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Several direct-I/O requests of one file handle in flight at once
        // (the loop device submits asynchronously).
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO) {
            tracing::debug!(?missing, "the kernel does not offer asynchronous direct I/O over FUSE");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        io_flusher();
        let dev = match (parent, name.to_str().and_then(|n| n.parse::<u64>().ok())) {
            (INodeNo::ROOT, Some(dev)) => dev,
            _ => return reply.error(Errno::ENOENT),
        };
        match self.file_attr(ino_of(dev)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        io_flusher();
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.dir_attr());
        }
        match self.file_attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let ids: Vec<u64> = match self.shared.active() {
            Ok(a) => a.keys().copied().collect(),
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries = vec![(INodeNo::ROOT, FileType::Directory, ".".to_string()), (INodeNo::ROOT, FileType::Directory, "..".to_string())];
        entries.extend(ids.into_iter().map(|id| (ino_of(id), FileType::RegularFile, id.to_string())));
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        io_flusher();
        let Some(dev) = ino.0.checked_sub(1) else { return reply.error(Errno::EISDIR) };
        let mut active = match self.shared.active() {
            Ok(a) => a,
            Err(e) => return reply.error(errno(&e)),
        };
        match active.get_mut(&dev) {
            Some(a) if !a.remove_pending => {
                a.opens += 1;
                let flags = match self.shared.cache {
                    DeviceCache::Direct => FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
                    // Without KEEP_CACHE the kernel drops the inode's cache on this open.
                    DeviceCache::Page if a.opens == 1 => FopenFlags::empty(),
                    DeviceCache::Page => FopenFlags::FOPEN_KEEP_CACHE,
                };
                reply.opened(FileHandle(dev), flags);
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        io_flusher();
        // Look the blocks up under the pool lock, read them without it.
        let planned = self.shared.pool().and_then(|mut pool| {
            let dev_size = pool.device_size(fh.0)?;
            let len = (size as u64).min(dev_size.saturating_sub(offset)) as usize;
            Ok((pool.plan_read(fh.0, offset, len)?, len))
        });
        let (plan, len) = match planned {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        // One buffer per request thread, reused: a fresh megabyte per
        // request costs page faults and zeroing. `read_into` writes every
        // byte of `buf[..len]` (data or zeros), so nothing stale is sent.
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0);
            }
            match plan.read_into(&mut buf[..len]) {
                Ok(()) => reply.data(&buf[..len]),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        io_flusher();
        // Allocation and copy-on-write happen under the pool lock; writes
        // into blocks the device owns run after it is released.
        let res = self.shared.pool().and_then(|mut p| p.plan_write(fh.0, offset, data)).and_then(|plan| plan.write_from(data));
        match res {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                tracing::debug!(dev = fh.0, offset, error = %e, "write failed");
                reply.error(errno(&e))
            }
        }
    }

    /// `close` has nothing to flush here (`fsync` commits, the last release
    /// commits). ENOSYS makes the kernel stop sending FLUSH at all, so a
    /// daemon killed with a device file open does not wait in its own exit
    /// on a FLUSH to its own mount that no thread is left to answer.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        io_flusher();
        match self.shared.pool().and_then(|mut p| p.commit()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        io_flusher();
        let dev = fh.0;
        let remove = match self.shared.active() {
            Ok(mut active) => match active.get_mut(&dev) {
                Some(a) => {
                    a.opens = a.opens.saturating_sub(1);
                    let remove = a.opens == 0 && a.remove_pending;
                    if remove {
                        active.remove(&dev);
                    }
                    remove
                }
                None => false,
            },
            Err(e) => return reply.error(errno(&e)),
        };
        let res = self.shared.pool().and_then(|mut p| if remove { p.delete_device(dev) } else { p.commit() });
        if let Err(e) = &res {
            tracing::error!(dev, error = %e, "release of a device file failed");
        }
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        io_flusher();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let discard = mode == punch || mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if !discard {
            return reply.error(Errno::from(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        }
        match self.shared.pool().and_then(|mut p| p.discard(fh.0, offset, length)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (total, used, bs) = match self.shared.pool() {
            Ok(p) => (p.data_blocks_total(), p.data_blocks_used(), p.block_size()),
            Err(e) => return reply.error(errno(&e)),
        };
        let free = total - used;
        reply.statfs(total, free, free, 0, 0, bs as u32, 255, bs as u32);
    }
}

// ----- a FUSE mount left by a killed daemon ------------------------------------

/// A mount as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// `st_dev` of the mount: for FUSE, the connection number.
    major: u32,
    minor: u32,
    point: PathBuf,
    fstype: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            Some(MountEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                point: unescape_mountinfo(f.get(4)?),
                fstype: right.split(' ').next()?.to_string(),
            })
        })
        .collect()
}

fn mountinfo() -> Result<Vec<MountEntry>, PoolError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| PoolError::Io { context: "read /proc/self/mountinfo".into(), source })?;
    Ok(parse_mountinfo(&text))
}

/// `mountpoint` made absolute without looking at the mount point itself:
/// a stat of a stale FUSE mount can wait forever on a dead daemon.
fn absolute_mountpoint(mountpoint: &Path) -> Result<PathBuf, PoolError> {
    let io = |source| PoolError::Io { context: format!("resolve {}", mountpoint.display()), source };
    let (Some(parent), Some(name)) = (mountpoint.parent(), mountpoint.file_name()) else {
        return Err(PoolError::InvalidArgument(format!("{} is not a mount point for the device files", mountpoint.display())));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    Ok(std::fs::canonicalize(parent).map_err(io)?.join(name))
}

/// Aborts FUSE connection `conn` through `<fusectl>/<conn>/abort`; every
/// request waiting on it fails with ENOTCONN at once. fusectl is mounted on
/// a private directory next to `scratch_parent` for the call if the system
/// has not mounted it at its usual place.
fn abort_connection(conn: u64, scratch_parent: &Path) -> std::io::Result<()> {
    let write_abort = |dir: &Path| std::fs::write(dir.join(conn.to_string()).join("abort"), b"1");
    let mounted = mountinfo().map(|m| m.iter().any(|e| e.fstype == "fusectl" && e.point == Path::new(FUSECTL_DIR)));
    if mounted.unwrap_or(false) {
        return write_abort(Path::new(FUSECTL_DIR));
    }
    let dir = scratch_parent.join(format!(".fusectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let res = nix::mount::mount(Some("fusectl"), &dir, Some("fusectl"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(std::io::Error::from)
        .and_then(|()| {
            let res = write_abort(&dir);
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            res
        });
    let _ = std::fs::remove_dir(&dir);
    res
}

/// Whether the FUSE file system at `point` answers `statfs` within
/// `limit`. A daemon that was killed while one of its own threads waited
/// on its mount cannot exit, and its mount never answers; that probe
/// thread then stays blocked until the connection is aborted.
fn answers(point: &Path, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let point = point.to_path_buf();
    let spawned = std::thread::Builder::new().name("blockcow-probe".into()).spawn(move || {
        let _ = tx.send(nix::sys::statfs::statfs(&point).is_ok());
    });
    spawned.is_ok() && rx.recv_timeout(limit).unwrap_or(false)
}

/// Clears FUSE mounts left at `mountpoint` by a daemon that died: aborts
/// each one's connection (which also lets a killed daemon that hangs in
/// exit on a request to its own mount finish dying), detaches the loop
/// devices whose backing files are on it, and unmounts it lazily. With
/// `probe`, a mount that still answers belongs to a live daemon and is
/// left alone ([`PoolError::Busy`]); without, the caller holds the pool, so
/// any mount there is stale. Returns whether anything was cleared.
pub fn clear_stale_mount(mountpoint: &Path, probe: Option<Duration>) -> Result<bool, PoolError> {
    let point = absolute_mountpoint(mountpoint)?;
    let mut cleared = false;
    // Mounts can be stacked: clear the top one until none is left.
    for _ in 0..16 {
        let Some(m) = mountinfo()?.into_iter().rev().find(|m| m.point == point && m.fstype.starts_with("fuse")) else {
            return Ok(cleared);
        };
        if let Some(limit) = probe {
            if answers(&point, limit) {
                return Err(PoolError::Busy(format!("a running process serves the device files at {}", point.display())));
            }
        }
        let conn = (u64::from(m.major) << 20) | u64::from(m.minor);
        tracing::warn!(mountpoint = %point.display(), conn, "clearing the FUSE mount of a daemon that died");
        if let Err(e) = abort_connection(conn, point.parent().unwrap_or(Path::new("/"))) {
            tracing::warn!(conn, error = %e, "cannot abort the FUSE connection through fusectl; forcing the unmount");
            // umount -f aborts the connection too (and fails with EBUSY while loop devices hold files).
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_FORCE);
        }
        for lo in loopctl::backed_under(&point) {
            match loopctl::detach_path(&lo) {
                Ok(()) => tracing::info!(device = %lo.display(), "detached a loop device of the dead FUSE mount"),
                Err(e) => tracing::warn!(device = %lo.display(), error = %e, "cannot detach a loop device of the dead FUSE mount"),
            }
        }
        nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH).map_err(|errno| PoolError::Io {
            context: format!("unmount the dead FUSE mount at {}", point.display()),
            source: errno.into(),
        })?;
        cleared = true;
    }
    Err(PoolError::Busy(format!("FUSE mounts at {} keep coming back", point.display())))
}

/// Runs `open` once, or, when `cleared` says a dead daemon's mount was just
/// cleared, until it succeeds or 30 s pass: the killed process, now free to
/// exit, still holds the pool's and the store's locks for a moment.
pub fn retry_while_exiting<T, E: std::fmt::Display>(cleared: bool, mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    loop {
        match open() {
            Err(e) if cleared && std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the killed daemon to let go of its files");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A pool with its devices served over FUSE. Dropping it unmounts.
pub struct DeviceFiles {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for DeviceFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFiles").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

impl DeviceFiles {
    /// Mounts the FUSE file system for `pool` at `mountpoint` (created if
    /// missing), served by `threads` request threads, with direct I/O.
    pub fn mount(pool: Pool, mountpoint: &Path, threads: usize) -> Result<DeviceFiles, PoolError> {
        Self::mount_with_cache(pool, mountpoint, threads, DeviceCache::Direct)
    }

    /// [`DeviceFiles::mount`] with the given way of serving the files.
    pub fn mount_with_cache(pool: Pool, mountpoint: &Path, threads: usize, cache: DeviceCache) -> Result<DeviceFiles, PoolError> {
        // Holding the pool, any FUSE mount already there is a dead daemon's.
        clear_stale_mount(mountpoint, None)?;
        std::fs::create_dir_all(mountpoint)
            .map_err(|source| PoolError::Io { context: format!("create {}", mountpoint.display()), source })?;
        let shared = Arc::new(Shared { cache, pool: Mutex::new(pool), active: Mutex::new(BTreeMap::new()), started: SystemTime::now() });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("strata-blockcow".into()),
            MountOption::Subtype("blockcow".into()),
            MountOption::CUSTOM(format!("max_read={MAX_READ}")),
        ];
        config.n_threads = Some(threads.max(1));
        config.clone_fd = true;
        let session = fuser::spawn_mount(PoolFs { shared: shared.clone() }, mountpoint, &config).map_err(|source| PoolError::Io {
            context: format!("mount the device files at {} (is /dev/fuse available? modprobe fuse)", mountpoint.display()),
            source,
        })?;
        Ok(DeviceFiles { shared, mountpoint: mountpoint.to_path_buf(), session: Some(session) })
    }

    /// Runs `f` with the pool locked.
    pub fn with_pool<T>(&self, f: impl FnOnce(&mut Pool) -> Result<T, PoolError>) -> Result<T, PoolError> {
        let mut pool = self.shared.pool()?;
        f(&mut pool)
    }

    /// How the files are served.
    pub fn cache(&self) -> DeviceCache {
        self.shared.cache
    }

    /// Path of the file of `dev` (whether active or not).
    pub fn file_path(&self, dev: u64) -> PathBuf {
        self.mountpoint.join(dev.to_string())
    }

    /// Makes the file of `dev` appear; returns its path.
    pub fn activate(&self, dev: u64) -> Result<PathBuf, PoolError> {
        self.shared.pool()?.device_size(dev)?;
        let mut active = self.shared.active()?;
        match active.get(&dev) {
            Some(a) if a.remove_pending => return Err(PoolError::DeviceNotFound(dev)),
            Some(_) => {}
            None => {
                active.insert(dev, Active::default());
            }
        }
        Ok(self.file_path(dev))
    }

    /// Hides the file of `dev`; refused while it is open.
    pub fn deactivate(&self, dev: u64) -> Result<(), PoolError> {
        let mut active = self.shared.active()?;
        if active.get(&dev).is_some_and(|a| a.opens > 0) {
            return Err(PoolError::Busy(format!("device {dev} is open")));
        }
        active.remove(&dev);
        Ok(())
    }

    /// Whether the file of `dev` is open (a loop device is attached to it).
    pub fn is_open(&self, dev: u64) -> Result<bool, PoolError> {
        Ok(self.shared.active()?.get(&dev).is_some_and(|a| a.opens > 0))
    }

    /// Deletes `dev` now, or, if its file is open, once the last handle is
    /// released (the file disappears at once). Returns whether it was deferred.
    pub fn remove_device(&self, dev: u64) -> Result<bool, PoolError> {
        let mut active = self.shared.active()?;
        if let Some(a) = active.get_mut(&dev) {
            if a.opens > 0 {
                self.shared.pool()?.device_size(dev)?;
                a.remove_pending = true;
                return Ok(true);
            }
            active.remove(&dev);
        }
        drop(active);
        self.shared.pool()?.delete_device(dev)?;
        Ok(false)
    }

    /// Attaches a loop device to the (activated) file of `dev`.
    pub fn attach(&self, dev: u64, readonly: bool) -> Result<LoopDevice, PoolError> {
        let path = self.activate(dev)?;
        LoopDevice::attach(&path, readonly, self.shared.cache == DeviceCache::Direct).map_err(|source| PoolError::Io {
            context: format!("attach a loop device to {} (is the loop module loaded? modprobe loop)", path.display()),
            source,
        })
    }

    /// Aborts the FUSE connection of this mount before it is unmounted.
    /// A lazy unmount alone ends the connection only once nothing else
    /// holds the mount; a copy of it in a mount namespace made meanwhile
    /// (a container being set up on this host) would keep the request
    /// threads waiting, and the unmount with them, for as long as it lives.
    fn abort_before_unmount(&self) {
        let found = absolute_mountpoint(&self.mountpoint).and_then(|point| {
            let mounts = mountinfo()?;
            Ok(mounts.into_iter().rev().find(|m| m.point == point && m.fstype.starts_with("fuse")).map(|m| (m, point)))
        });
        if let Ok(Some((m, point))) = found {
            let conn = (u64::from(m.major) << 20) | u64::from(m.minor);
            if let Err(e) = abort_connection(conn, point.parent().unwrap_or(Path::new("/"))) {
                tracing::warn!(conn, error = %e, "cannot abort the FUSE connection before unmounting");
            }
        }
    }

    /// Aborts the connection, then unmounts. A loop device lets go of its
    /// backing file asynchronously after its last user closed it, so the
    /// plain unmount can still find the mount busy right after the devices
    /// were released: the mount is then detached lazily (the connection is
    /// already aborted, so nothing can wait on it any more).
    fn end_session(&self, session: fuser::BackgroundSession) -> std::io::Result<()> {
        self.abort_before_unmount();
        match session.umount_and_join() {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                tracing::debug!(mountpoint = %self.mountpoint.display(), "device files busy at unmount; detaching lazily");
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
            }
            other => other,
        }
    }

    /// Unmounts and returns the pool after a final commit.
    pub fn unmount(mut self) -> Result<(), PoolError> {
        if let Some(session) = self.session.take() {
            self.end_session(session)
                .map_err(|source| PoolError::Io { context: format!("unmount {}", self.mountpoint.display()), source })?;
        }
        self.shared.pool()?.commit()
    }
}

impl Drop for DeviceFiles {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = self.end_session(session) {
                tracing::warn!(error = %e, mountpoint = %self.mountpoint.display(), "unmount of the device files failed");
            }
        }
        if let Ok(mut pool) = self.shared.pool() {
            if let Err(e) = pool.commit() {
                tracing::warn!(error = %e, "final commit failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_device_point_and_type() {
        let text = "36 25 0:32 / /sys/fs/fuse/connections rw,nosuid,nodev,noexec,relatime shared:14 - fusectl fusectl rw\n\
                    812 30 0:91 / /var/tmp/a\\040b/blockcow/devices rw,nosuid,nodev,relatime shared:400 - fuse.blockcow strata-blockcow rw,user_id=0,group_id=0\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], MountEntry { major: 0, minor: 32, point: "/sys/fs/fuse/connections".into(), fstype: "fusectl".into() });
        assert_eq!(m[1].point, Path::new("/var/tmp/a b/blockcow/devices"));
        assert_eq!((m[1].major, m[1].minor, m[1].fstype.as_str()), (0, 91, "fuse.blockcow"));
        assert_eq!(unescape_mountinfo("a\\134b\\011"), Path::new("a\\b\t"));
    }

    #[test]
    fn no_mount_at_a_fresh_directory_means_nothing_to_clear() {
        let dir = std::env::temp_dir().join(format!("blockcow-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!clear_stale_mount(&dir.join("devices"), Some(Duration::from_secs(1))).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
