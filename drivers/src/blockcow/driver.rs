//! The blockcow [`Snapshotter`]: keys, names, labels and parents live in the
//! shared metadata store; blocks live in the pool; each active snapshot or
//! view is a thin device exposed as `/dev/loopN` holding a filesystem.
//!
//! Pool setup creates the base device once and formats it (ext4, or xfs).
//! A snapshot without a parent is a snapshot of the base device; any other
//! is a snapshot of its parent's device. Committing keeps the device (it
//! becomes the committed snapshot's, read by children through their own
//! snapshots); removing deletes it, deferred while a loop device still
//! holds it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use strata_snapshotter::store::{DriverData, MetaStore};
use strata_snapshotter::{Capabilities, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

use super::{DeviceCache, DeviceFiles, LoopDevice, Pool, PoolConfig, PoolError};

/// Driver-data key holding a snapshot's device id.
const DEV_KEY: &str = "blockcow.dev";
/// Label asking for a snapshot device of its own size, in bytes or with a
/// binary unit (`20G`, `1.5GB`, `512m`): the device is grown from its
/// parent's size and its filesystem grown to fill it before the mounts are
/// returned. Smaller than the parent's device is refused. The size is kept
/// in the pool, so it holds across restarts and in the snapshot's children.
/// `docker run --storage-opt size=…` arrives here through the engine.
pub const SIZE_LABEL: &str = "strata.io/snapshot/blockcow.size";
const POOL_DIR: &str = "pool";
const FILES_DIR: &str = "devices";
const FUSE_THREADS: usize = 4;

/// The filesystem made on the base device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// Options of the blockcow driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub pool: PoolConfig,
    pub fs: FsType,
    /// `blockcow.pagecache=true`: serve the devices through the kernel's
    /// page cache ([`DeviceCache::Page`]) instead of direct I/O.
    pub cache: DeviceCache,
}

impl Default for Options {
    fn default() -> Self {
        Options { pool: PoolConfig::default(), fs: FsType::Ext4, cache: DeviceCache::Direct }
    }
}

/// Parses `10G`, `512MiB`, `65536`, `64k` (binary units, as Docker's
/// `dm.*size` options).
pub fn parse_size(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Parses a size as Docker's `units.RAMInBytes` does (`--storage-opt
/// size=`): a decimal number, optionally with a fraction, then optionally
/// one space and a unit `k`, `m`, `g`, `t` or `p` (any case, each 1024 times
/// the previous), optionally followed by `i` and then `b`: `10G`, `512m`,
/// `1.5GB`, `2GiB`, `4096`. Fractions of a byte are dropped.
pub fn parse_docker_size(value: &str) -> Option<u64> {
    let digits = value.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(value.len());
    let (number, rest) = value.split_at(digits);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || (number.contains('.') && (frac.is_empty() || frac.contains('.'))) {
        return None;
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut unit = rest.as_str();
    let mut shift = 0u32;
    if let Some(i) = "kmgtp".find(unit.chars().next().unwrap_or(' ')) {
        shift = 10 * (i as u32 + 1);
        unit = &unit[1..];
    }
    let unit = unit.strip_prefix('i').unwrap_or(unit);
    let unit = unit.strip_prefix('b').unwrap_or(unit);
    if !unit.is_empty() {
        return None;
    }
    let whole = int.parse::<u64>().ok()?.checked_mul(1u64 << shift)?;
    // The fraction, exactly: frac / 10^len of one unit.
    let frac = &frac[..frac.len().min(18)];
    let part = if frac.is_empty() {
        0
    } else {
        let f: u128 = frac.parse().ok()?;
        ((f << shift) / 10u128.pow(frac.len() as u32)) as u64
    };
    whole.checked_add(part)
}

impl Options {
    /// Parses driver options; `blockcow.*` names and Docker's `dm.*` aliases.
    pub fn parse(options: &BTreeMap<String, String>) -> Result<Options> {
        let mut o = Options::default();
        for (key, value) in options {
            let bad = |what: &str| Error::invalid_argument(format!("blockcow option {key}={value:?}: {what}"));
            let size = || parse_size(value).ok_or_else(|| bad("expected a size such as 10G, 512M or 65536"));
            match key.as_str() {
                "blockcow.basesize" | "dm.basesize" => o.pool.base_size = size()?,
                "blockcow.datasize" | "dm.loopdatasize" => o.pool.data_size = size()?,
                "blockcow.metadatasize" | "dm.loopmetadatasize" => o.pool.metadata_size = size()?,
                "blockcow.blocksize" | "dm.blocksize" => o.pool.block_size = size()?,
                "blockcow.fs" | "dm.fs" => {
                    o.fs = match value.as_str() {
                        "ext4" => FsType::Ext4,
                        "xfs" => FsType::Xfs,
                        _ => return Err(bad("expected ext4 or xfs")),
                    }
                }
                "blockcow.pagecache" => {
                    o.cache = match value.as_str() {
                        "true" => DeviceCache::Page,
                        "false" => DeviceCache::Direct,
                        _ => return Err(bad("expected true or false")),
                    }
                }
                "blockcow.min_free_space" | "dm.min_free_space" => {
                    let pct = value.strip_suffix('%').unwrap_or(value);
                    o.pool.min_free_space_pct = match pct.parse::<u32>() {
                        Ok(p) if p <= 99 => p,
                        _ => return Err(bad("expected a percentage from 0% to 99%")),
                    };
                }
                _ => return Err(Error::invalid_argument(format!("driver \"blockcow\" has no option {key:?}"))),
            }
        }
        o.pool.validate().map_err(|e| Error::invalid_argument(format!("blockcow options: {e}")))?;
        if o.pool.base_size % 4096 != 0 || o.pool.base_size < 16 << 20 {
            return Err(Error::invalid_argument(format!(
                "blockcow base size {} must be a multiple of 4096 of at least 16 MiB",
                o.pool.base_size
            )));
        }
        Ok(o)
    }
}

/// The blockcow driver.
pub struct BlockCow {
    store: MetaStore,
    files: Mutex<Option<DeviceFiles>>,
    /// Loop devices of active snapshots and views, by device id.
    loops: Mutex<HashMap<u64, LoopDevice>>,
    fs: FsType,
    base: u64,
    root: PathBuf,
}

impl std::fmt::Debug for BlockCow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCow").field("root", &self.root).field("fs", &self.fs).finish_non_exhaustive()
    }
}

fn lock_err() -> Error {
    Error::internal("blockcow: a lock was poisoned by a panic")
}

fn run_mkfs(fs: FsType, device: &Path) -> Result<()> {
    let mut cmd = match fs {
        FsType::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]);
            c
        }
        FsType::Xfs => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-K"]);
            c
        }
    };
    let program = format!("mkfs.{}", fs.name());
    let out = cmd.arg(device).output().map_err(|e| {
        Error::io(format!("run {program} (install {})", if fs == FsType::Ext4 { "e2fsprogs" } else { "xfsprogs" }), e)
    })?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "{program} {} failed: {}",
            device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn run_tool(program: &str, args: &[&str], target: &Path, package: &str) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .arg(target)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run {program} (install {package})"), e))
}

fn tool_failed(program: &str, device: &Path, out: &std::process::Output) -> Error {
    Error::internal(format!(
        "{program} {} failed ({}): {} {}",
        device.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// `10GiB`, `1.5GiB`, `4096B`: binary units, at most three decimals (as
/// Docker's `units.BytesSize` prints sizes).
fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut i = 0;
    while value >= 1024.0 && i + 1 < units.len() {
        value /= 1024.0;
        i += 1;
    }
    format!("{}{}", (value * 1000.0).round() / 1000.0, units[i])
}

impl BlockCow {
    /// Opens the driver in `root`, creating and formatting the pool the
    /// first time. The filesystem option must match the existing pool's.
    pub fn open(root: &Path, options: &BTreeMap<String, String>) -> Result<BlockCow> {
        let opts = Options::parse(options)?;
        std::fs::create_dir_all(root).map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let files_dir = root.join(FILES_DIR);
        // A daemon killed while one of its threads waited on its own FUSE
        // mount cannot exit, and keeps the store and the pool locked, until
        // that mount's connection is aborted: clear a dead daemon's mount
        // first (a live daemon's is left alone).
        let cleared = super::fuse::clear_stale_mount(&files_dir, Some(super::fuse::PROBE_TIMEOUT))?;
        let store = super::fuse::retry_while_exiting(cleared, || MetaStore::open(root))?;
        let pool_dir = root.join(POOL_DIR);
        let pool = if pool_dir.join(super::METADATA_FILE).exists() {
            super::fuse::retry_while_exiting(cleared, || Pool::open(&pool_dir))?
        } else {
            Pool::create(&pool_dir, &opts.pool)?
        };
        let files = DeviceFiles::mount_with_cache(pool, &files_dir, FUSE_THREADS, opts.cache)?;
        let base = match files.with_pool(|p| Ok(p.base_device()))? {
            Some(b) => b,
            None => {
                let base = files.with_pool(|p| p.create_device(opts.pool.base_size))?;
                let lo = files.attach(base, false)?;
                let made = run_mkfs(opts.fs, lo.path());
                let detached = lo.detach();
                made?;
                detached.map_err(|e| Error::io("detach the base device's loop device", e))?;
                files.with_pool(|p| p.set_base_device(base))?;
                tracing::info!(base, fs = opts.fs.name(), "created and formatted the blockcow base device");
                base
            }
        };
        Ok(BlockCow { store, files: Mutex::new(Some(files)), loops: Mutex::new(HashMap::new()), fs: opts.fs, base, root: root.to_path_buf() })
    }

    fn with_files<T>(&self, f: impl FnOnce(&DeviceFiles) -> Result<T>) -> Result<T> {
        let guard = self.files.lock().map_err(|_| lock_err())?;
        match guard.as_ref() {
            Some(files) => f(files),
            None => Err(Error::failed_precondition("blockcow snapshotter is closed")),
        }
    }

    fn dev_of(data: &DriverData, what: &str) -> Result<u64> {
        data.get(DEV_KEY)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::internal(format!("snapshot {what:?} has no blockcow device")))
    }

    fn mount_of(&self, device: &Path, kind: Kind) -> Mount {
        let mut options = vec![if kind == Kind::View { "ro" } else { "rw" }.to_string()];
        if self.fs == FsType::Xfs {
            options.push("nouuid".into());
        }
        Mount { fstype: self.fs.name().into(), source: device.display().to_string(), target: String::new(), options }
    }

    /// The mounts of `dev`, attaching a loop device if it has none.
    fn attach(&self, dev: u64, kind: Kind) -> Result<Vec<Mount>> {
        let mut loops = self.loops.lock().map_err(|_| lock_err())?;
        if let Some(lo) = loops.get(&dev) {
            return Ok(vec![self.mount_of(lo.path(), kind)]);
        }
        let lo = self.with_files(|f| Ok(f.attach(dev, kind == Kind::View)?))?;
        let mount = self.mount_of(lo.path(), kind);
        loops.insert(dev, lo);
        Ok(vec![mount])
    }

    /// Lets go of the loop device of `dev` (the kernel detaches it once no
    /// mount uses it).
    fn release(&self, dev: u64) -> Result<()> {
        let lo = self.loops.lock().map_err(|_| lock_err())?.remove(&dev);
        if let Some(lo) = lo {
            if let Err(e) = lo.detach() {
                tracing::warn!(dev, error = %e, "detaching a loop device failed");
            }
        }
        Ok(())
    }

    /// The device size asked for by [`SIZE_LABEL`], rounded up to 4 KiB.
    fn requested_size(kind: Kind, labels: &Labels) -> Result<Option<u64>> {
        let Some(value) = labels.get(SIZE_LABEL) else { return Ok(None) };
        if kind == Kind::View {
            return Err(Error::invalid_argument(format!("label {SIZE_LABEL} applies to active snapshots, not to views")));
        }
        let size = parse_docker_size(value)
            .and_then(|s| s.checked_next_multiple_of(4096))
            .ok_or_else(|| Error::invalid_argument(format!("invalid size: {value:?} (label {SIZE_LABEL}): expected bytes or a size such as 20G, 512m or 1.5GB")))?;
        Ok(Some(size))
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let size = Self::requested_size(kind, &labels)?;
        let mut pending = self.store.begin_create(kind, key, parent, labels)?;
        let origin = if parent.is_empty() { self.base } else { Self::dev_of(&self.store.entry(parent)?.driver_data, parent)? };
        if let Some(size) = size {
            let base = self.with_files(|f| Ok(f.with_pool(|p| p.device_size(origin))?))?;
            if size < base {
                return Err(Error::invalid_argument(format!(
                    "the size cannot be smaller than the image's base size {} ({base} bytes): asked for {} ({size} bytes)",
                    human_size(base),
                    human_size(size)
                )));
            }
        }
        let dev = self.with_files(|f| Ok(f.with_pool(|p| p.snapshot(origin))?))?;
        let sized = match size {
            Some(size) => self.with_files(|f| Ok(f.with_pool(|p| p.resize_device(dev, size))?)),
            None => Ok(()),
        };
        pending.set_driver_data(DriverData::from([(DEV_KEY.to_string(), dev.to_string())]));
        if let Err(e) = sized.and_then(|()| self.store.finish_create(pending, |_, _| Ok(()))) {
            let _ = self.with_files(|f| Ok(f.with_pool(|p| p.delete_device(dev))?));
            return Err(e);
        }
        let attached = self.attach(dev, kind).and_then(|m| match size {
            Some(_) => self.grow_fs(dev, &m).map(|()| m),
            None => Ok(m),
        });
        match attached {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = self.store.remove(key);
                let _ = self.release(dev);
                let _ = self.with_files(|f| Ok(f.remove_device(dev)?));
                Err(e)
            }
        }
    }

    /// Grows the filesystem on the freshly attached device `dev` to the
    /// device's size: ext4 offline (`e2fsck -f`, then `resize2fs`), xfs
    /// online (`xfs_growfs` needs it mounted: a private mount, unmounted
    /// before returning).
    fn grow_fs(&self, dev: u64, mounts: &[Mount]) -> Result<()> {
        let device = Path::new(&mounts[0].source);
        match self.fs {
            FsType::Ext4 => {
                // -p repairs nothing dangerous; exit 1 means "fixed something harmless".
                let out = run_tool("e2fsck", &["-f", "-p"], device, "e2fsprogs")?;
                if out.status.code().is_none_or(|c| c > 1) {
                    return Err(tool_failed("e2fsck", device, &out));
                }
                let out = run_tool("resize2fs", &[], device, "e2fsprogs")?;
                if !out.status.success() {
                    return Err(tool_failed("resize2fs", device, &out));
                }
            }
            FsType::Xfs => {
                let m = strata_snapshotter::mount::TempMount::new_in(mounts, &self.root)?;
                let out = run_tool("xfs_growfs", &[], m.path(), "xfsprogs");
                m.unmount()?;
                let out = out?;
                if !out.status.success() {
                    return Err(tool_failed("xfs_growfs", device, &out));
                }
            }
        }
        tracing::info!(dev, device = %device.display(), "grew the snapshot's filesystem to its device size");
        Ok(())
    }

    fn usage_of(&self, dev: u64) -> Result<Usage> {
        let (blocks, bs) = self.with_files(|f| Ok(f.with_pool(|p| Ok((p.exclusive_blocks(dev)?, p.block_size())))?))?;
        Ok(Usage { size: (blocks * bs) as i64, inodes: 0 })
    }

    fn blocking<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&BlockCow) -> Result<T> + Send + 'static) -> impl std::future::Future<Output = Result<T>> {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| Error::internal(format!("blockcow worker failed: {e}")))?
        }
    }
}


/// The [`Snapshotter`] over a shared [`BlockCow`]; calls run on the
/// blocking thread pool.
#[derive(Debug, Clone)]
pub struct BlockCowSnapshotter(Arc<BlockCow>);

impl BlockCowSnapshotter {
    pub fn open(root: &Path, options: &BTreeMap<String, String>) -> Result<BlockCowSnapshotter> {
        BlockCow::open(root, options).map(|b| BlockCowSnapshotter(Arc::new(b)))
    }
    pub fn driver(&self) -> &BlockCow {
        &self.0
    }
}

impl BlockCow {
    /// Space, settings and devices of the pool.
    pub fn pool_info(&self) -> Result<super::PoolInfo> {
        self.with_files(|f| Ok(f.with_pool(|p| p.info())?))
    }

    /// Commits the pool and checks the committed generation.
    pub fn check_pool(&self) -> Result<super::CheckReport> {
        self.with_files(|f| Ok(f.with_pool(|p| p.commit().and_then(|()| p.check()))?))
    }

    /// The pool directory (`data`, `metadata`).
    pub fn pool_dir(&self) -> PathBuf {
        self.root.join(POOL_DIR)
    }
}

#[async_trait]
impl Snapshotter for BlockCowSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.0.blocking(move |b| b.store.stat(&key)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let fieldpaths = fieldpaths.to_vec();
        self.0.blocking(move |b| b.store.update(info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.0
            .blocking(move |b| {
                let entry = b.store.entry(&key)?;
                if entry.info.kind == Kind::Committed {
                    return Ok(entry.usage);
                }
                b.usage_of(BlockCow::dev_of(&entry.driver_data, &key)?)
            })
            .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.0
            .blocking(move |b| {
                let s = b.store.snapshot(&key)?;
                b.attach(BlockCow::dev_of(&s.driver_data, &key)?, s.kind)
            })
            .await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.0.blocking(move |b| b.create(Kind::Active, &key, &parent, labels)).await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.0.blocking(move |b| b.create(Kind::View, &key, &parent, labels)).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.0
            .blocking(move |b| {
                let s = b.store.check_commit(&name, &key, &labels)?;
                let dev = BlockCow::dev_of(&s.driver_data, &key)?;
                b.release(dev)?;
                b.with_files(|f| Ok(f.with_pool(|p| p.commit())?))?;
                let usage = b.usage_of(dev)?;
                b.store.commit_active(&name, &key, labels, usage)?;
                Ok(())
            })
            .await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.0
            .blocking(move |b| {
                let entry = b.store.remove(&key)?;
                let dev = BlockCow::dev_of(&entry.driver_data, &key)?;
                b.release(dev)?;
                b.with_files(|f| Ok(f.remove_device(dev)?))?;
                Ok(())
            })
            .await
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters.to_vec();
        self.0.blocking(move |b| b.store.list(&filters)).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.0
            .blocking(|b| {
                b.store.cleanup()?;
                let mut keep: HashSet<u64> = HashSet::from([b.base]);
                for e in b.store.entries()? {
                    keep.insert(BlockCow::dev_of(&e.driver_data, &e.info.name)?);
                }
                b.with_files(|f| {
                    let ids = f.with_pool(|p| Ok(p.device_ids()))?;
                    for dev in ids.into_iter().filter(|d| !keep.contains(d)) {
                        tracing::info!(dev, "removing a device no snapshot refers to");
                        match f.remove_device(dev) {
                            // A deferred removal (the device's last user let go)
                            // finished between the listing and now: already gone.
                            Ok(_) | Err(PoolError::DeviceNotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn close(&self) -> Result<()> {
        self.0
            .blocking(|b| {
                let devs: Vec<u64> = b.loops.lock().map_err(|_| lock_err())?.keys().copied().collect();
                for dev in &devs {
                    b.release(*dev)?;
                }
                let files = b.files.lock().map_err(|_| lock_err())?.take();
                if let Some(files) = files {
                    // Loop devices let go of their files asynchronously.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while devs.iter().any(|d| files.is_open(*d).unwrap_or(false)) && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    files.unmount()?;
                }
                Ok(())
            })
            .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { rename_lower_dir: true, block_device: true, readonly_views: true }
    }
}

/// Whether blockcow can work on this machine: FUSE, loop devices and
/// `mkfs.ext4` are needed (the pool files live under `root`).
pub fn is_supported(_root: &Path) -> bool {
    Path::new("/dev/fuse").exists()
        && Path::new("/dev/loop-control").exists()
        && Command::new("mkfs.ext4").arg("-V").output().map(|o| o.status.success()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Result<Options> {
        Options::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn options_and_their_dm_aliases() {
        let o = opts(&[("dm.basesize", "20G"), ("blockcow.datasize", "200GiB"), ("dm.blocksize", "128k"), ("dm.fs", "xfs"), ("dm.min_free_space", "5%")]).unwrap();
        assert_eq!(o.pool.base_size, 20 << 30);
        assert_eq!(o.pool.data_size, 200 << 30);
        assert_eq!(o.pool.block_size, 128 << 10);
        assert_eq!(o.pool.min_free_space_pct, 5);
        assert_eq!(o.fs, FsType::Xfs);
        assert_eq!(o.cache, DeviceCache::Direct);
        assert_eq!(opts(&[]).unwrap(), Options::default());
        assert_eq!(opts(&[("blockcow.pagecache", "true")]).unwrap().cache, DeviceCache::Page);
        assert_eq!(opts(&[("blockcow.pagecache", "false")]).unwrap().cache, DeviceCache::Direct);
        for bad in [("blockcow.pagecache", "yes"), ("dm.basesize", "big"), ("dm.blocksize", "96k"), ("dm.fs", "btrfs"), ("dm.min_free_space", "150%"), ("dm.thinpooldev", "x"), ("blockcow.basesize", "1M")] {
            let err = opts(&[bad]).unwrap_err();
            assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn docker_sizes() {
        let cases = [
            ("4096", 4096),
            ("10G", 10 << 30),
            ("10g", 10 << 30),
            ("512m", 512 << 20),
            ("512MB", 512 << 20),
            ("2GiB", 2 << 30),
            ("1.5GB", 3 << 29),
            ("1.5 G", 3 << 29),
            ("64k", 64 << 10),
            ("7b", 7),
            ("1p", 1 << 50),
            ("0.5k", 512),
        ];
        for (text, want) in cases {
            assert_eq!(parse_docker_size(text), Some(want), "{text}");
        }
        for bad in ["", "G", "-1G", "1.G", ".5G", "1.2.3G", "10X", "10 GB ", "10  G", "1e3", "big", "99999999999P"] {
            assert_eq!(parse_docker_size(bad), None, "{bad:?}");
        }
        assert_eq!(human_size(512 << 20), "512MiB");
        assert_eq!(human_size(3 << 29), "1.5GiB");
        assert_eq!(human_size(100), "100B");
    }
}
