//! The pool: thin devices over one sparse data file, with transactional
//! copy-on-write metadata (see the module documentation for the format).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::page::{
    self, verify, Node, PageType, Record, Superblock, TreeKind, PAGE_SIZE, RC_PER_PAGE,
};
use super::space::{decode_page, SpaceMap};
use super::PoolError;

/// Name of the data file inside the pool directory.
pub const DATA_FILE: &str = "data";
/// Name of the metadata file inside the pool directory.
pub const METADATA_FILE: &str = "metadata";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Node pages every tree operation may need (path shadowing and splits).
const OP_RESERVE: u64 = 32;
/// Node pages the commit needs per changed device (record + devices path).
const COMMIT_PAGES_PER_DEVICE: u64 = 8;
/// Clean pages kept in memory before the cache is emptied.
const CACHE_LIMIT: usize = 16 * 1024;

/// Parameters of a new pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Apparent size of the data file (default 100 GiB).
    pub data_size: u64,
    /// Size of the metadata file (default 2 GiB, sparse).
    pub metadata_size: u64,
    /// Data block size, a multiple of 64 KiB (default 64 KiB).
    pub block_size: u64,
    /// Percentage of data and metadata space that must stay free for a new
    /// device or snapshot to be created (default 10).
    pub min_free_space_pct: u32,
    /// Size of the base device (default 10 GiB); recorded for callers that
    /// create one.
    pub base_size: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            data_size: 100 * GIB,
            metadata_size: 2 * GIB,
            block_size: 64 * KIB,
            min_free_space_pct: 10,
            base_size: 10 * GIB,
        }
    }
}

impl PoolConfig {
    pub(crate) fn validate(&self) -> Result<(), PoolError> {
        let bad = |m: String| Err(PoolError::InvalidArgument(m));
        if self.block_size < 64 * KIB || self.block_size % (64 * KIB) != 0 || self.block_size > GIB {
            return bad(format!("block size {} is not a multiple of 64 KiB between 64 KiB and 1 GiB", self.block_size));
        }
        if self.data_size < 16 * self.block_size {
            return bad(format!("data size {} is smaller than 16 blocks", self.data_size));
        }
        if self.data_size / self.block_size > (1 << 40) {
            return bad(format!("data size {} needs more than 2^40 blocks", self.data_size));
        }
        if self.metadata_size < 2 * MIB || self.metadata_size % PAGE_SIZE as u64 != 0 {
            return bad(format!("metadata size {} is not a multiple of 4 KiB of at least 2 MiB", self.metadata_size));
        }
        if self.min_free_space_pct > 99 {
            return bad(format!("minimum free space {}% is above 99%", self.min_free_space_pct));
        }
        if self.base_size == 0 || self.base_size % 4096 != 0 {
            return bad(format!("base device size {} is not a positive multiple of 4096", self.base_size));
        }
        Ok(())
    }
}

/// One device as `pool info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    pub id: u64,
    pub origin: u64,
    pub virtual_size: u64,
    pub mapped_blocks: u64,
    /// Mapped blocks no other device shares.
    pub exclusive_blocks: u64,
    pub created_generation: u64,
}

/// Everything `docker info` shows for a devicemapper pool, plus per-device
/// block counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolInfo {
    pub pool_name: String,
    pub block_size: u64,
    pub base_device_size: u64,
    pub backing_filesystem: String,
    pub data_file: PathBuf,
    pub metadata_file: PathBuf,
    pub data_space_used: u64,
    pub data_space_total: u64,
    pub data_space_available: u64,
    pub metadata_space_used: u64,
    pub metadata_space_total: u64,
    pub metadata_space_available: u64,
    pub min_free_space_pct: u32,
    pub transaction_id: u64,
    pub generation: u64,
    pub devices: Vec<DeviceInfo>,
}

/// Counters for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Node or record pages looked at or changed (cache hits included).
    pub page_accesses: u64,
    /// Metadata pages written by commits.
    pub pages_written: u64,
    pub commits: u64,
}

#[derive(Debug, Clone)]
enum Cached {
    Node(Arc<Node>),
    Record(Record),
}

#[derive(Debug, Clone)]
struct Dev {
    rec: Record,
    /// Record page in the devices tree, 0 before the first commit.
    page: u64,
    dirty: bool,
}

/// Counts the data-file I/Os planned under the pool lock and running
/// without it ([`DataIo`]). A commit waits until none is left.
#[derive(Debug, Default)]
struct IoGate {
    inflight: Mutex<u64>,
    idle: Condvar,
}

impl IoGate {
    fn enter(self: &Arc<Self>) -> IoTicket {
        *self.inflight.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        IoTicket(self.clone())
    }

    /// Waits until every ticket handed out so far is dropped. Called with
    /// the pool borrowed mutably, so no new ticket can be handed out meanwhile.
    fn drain(&self) {
        let mut n = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Debug)]
struct IoTicket(Arc<IoGate>);

impl Drop for IoTicket {
    fn drop(&mut self) {
        let mut n = self.0.inflight.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// One piece of a [`DataIo`]: `len` bytes at `at` in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    at: usize,
    len: usize,
    /// Byte offset in the data file, or `None` for an unmapped range (reads as zeros).
    file_off: Option<u64>,
}

/// Data-file reads or in-place writes planned under the pool lock
/// ([`Pool::plan_read`], [`Pool::plan_write`]) to run without it.
///
/// While a `DataIo` lives, the blocks it names cannot be handed to another
/// device: blocks freed meanwhile become reusable only at the end of a
/// commit, and every commit first waits for all live `DataIo`s.
#[derive(Debug)]
#[must_use = "a planned I/O does nothing until it is run"]
pub struct DataIo {
    file: Arc<File>,
    segs: Vec<Seg>,
    data_written: Arc<AtomicBool>,
    _ticket: IoTicket,
}

impl DataIo {
    fn push(&mut self, at: usize, len: usize, file_off: Option<u64>) {
        if let Some(last) = self.segs.last_mut() {
            let contiguous = match (last.file_off, file_off) {
                (Some(a), Some(b)) => a + last.len as u64 == b,
                (None, None) => true,
                _ => false,
            };
            if contiguous && last.at + last.len == at {
                last.len += len;
                return;
            }
        }
        self.segs.push(Seg { at, len, file_off });
    }

    /// Whether nothing is left to do.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Fills `buf` (the buffer the plan was made for): mapped ranges from
    /// the data file, unmapped ones with zeros.
    pub fn read_into(self, buf: &mut [u8]) -> Result<(), PoolError> {
        for s in &self.segs {
            let chunk = &mut buf[s.at..s.at + s.len];
            match s.file_off {
                None => chunk.fill(0),
                Some(off) => self.file.read_exact_at(chunk, off).map_err(io(format!("read the data file at {off}")))?,
            }
        }
        Ok(())
    }

    /// Writes the planned ranges of `buf` (the buffer the plan was made
    /// for) into their blocks.
    pub fn write_from(self, buf: &[u8]) -> Result<(), PoolError> {
        if !self.segs.is_empty() {
            self.data_written.store(true, Ordering::Release);
        }
        for s in &self.segs {
            if let Some(off) = s.file_off {
                self.file
                    .write_all_at(&buf[s.at..s.at + s.len], off)
                    .map_err(io(format!("write the data file at {off}")))?;
            }
        }
        Ok(())
    }
}

/// An open pool. Methods take `&mut self`; share it behind a lock. Data-file
/// I/O of reads and of writes into exclusively owned blocks can run outside
/// that lock ([`Pool::plan_read`], [`Pool::plan_write`]).
#[derive(Debug)]
pub struct Pool {
    root: PathBuf,
    data: Arc<File>,
    /// Set by every write into the data file; a commit syncs the data file
    /// only when it is set.
    data_written: Arc<AtomicBool>,
    gate: Arc<IoGate>,
    meta: File,
    /// The superblock being built; `sb.generation` is the last committed one.
    sb: Superblock,
    sb_dirty: bool,
    meta_rc: SpaceMap,
    data_rc: SpaceMap,
    devices: BTreeMap<u64, Dev>,
    /// (device, record page) deleted in this transaction.
    deleted: Vec<(u64, u64)>,
    cache: HashMap<u64, Cached>,
    dirty: HashSet<u64>,
    pub(super) new_pages: HashSet<u64>,
    /// Pages copied in this transaction from pages that were (or may have
    /// been, in the last commit) shared: data under them is not written in place.
    pub(super) tainted: HashSet<u64>,
    failed: Option<String>,
    stats: PoolStats,
    /// Exclusive advisory lock on the metadata file while the pool is open.
    _lock: nix::fcntl::Flock<File>,
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> PoolError {
    let context = context.to_string();
    move |source| PoolError::Io { context, source }
}

fn read_page(file: &File, p: u64) -> Result<Vec<u8>, PoolError> {
    let mut buf = vec![0u8; PAGE_SIZE];
    file.read_exact_at(&mut buf, p * PAGE_SIZE as u64).map_err(io(format!("read metadata page {p}")))?;
    Ok(buf)
}

/// Reads both superblock slots and returns the valid one with the highest
/// generation whose commit is complete, and a note for each slot passed
/// over. A commit made with a single sync lists the pages it wrote in its
/// superblock; if one of them is not there as written (a crash let the
/// superblock reach the disk before it), the commit never happened. When
/// neither slot's commit is whole, the newest is returned all the same.
pub(super) fn read_superblock(meta: &File) -> Result<(Superblock, Vec<String>), PoolError> {
    let mut found: Vec<(Superblock, Vec<(u64, PageType)>)> = Vec::new();
    let mut notes = Vec::new();
    for slot in 0..2u64 {
        let buf = read_page(meta, slot)?;
        let sb = verify(&buf, PageType::Superblock, slot)
            .and_then(|g| Superblock::decode(&buf, g))
            .and_then(|sb| Ok((sb, page::decode_written(&buf)?)));
        match sb {
            Ok((sb, _)) if sb.generation % 2 != slot => {
                notes.push(format!("superblock slot {slot}: generation {} is in the wrong slot", sb.generation))
            }
            Ok(found_sb) => found.push(found_sb),
            Err(e) => notes.push(format!("superblock slot {slot}: {e}")),
        }
    }
    found.sort_by_key(|(sb, _)| std::cmp::Reverse(sb.generation));
    // If no slot's commit is whole, pages went bad after they were synced:
    // the newest superblock is taken and its damage left for `check` to find.
    let newest = found.first().map(|(sb, _)| *sb);
    for (sb, written) in found {
        let torn = written.iter().find_map(|&(p, t)| {
            let why = match read_page(meta, p).and_then(|buf| verify(&buf, t, p)) {
                Ok(g) if g == sb.generation => return None,
                Ok(g) => format!("page {p} is of generation {g}"),
                Err(e) => e.to_string(),
            };
            Some(why)
        });
        match torn {
            None => return Ok((sb, notes)),
            Some(why) => notes.push(format!(
                "superblock slot {}: generation {} did not reach the disk whole ({why})",
                sb.generation % 2,
                sb.generation
            )),
        }
    }
    match newest {
        Some(sb) => Ok((sb, notes)),
        None => Err(PoolError::Corrupt(format!("no valid superblock ({})", notes.join("; ")))),
    }
}

/// Loads a refcount region of generation `sb.generation`.
pub(super) fn read_counts(meta: &File, start: u64, pages: u64, len: u64, generation: u64) -> Result<Vec<u32>, PoolError> {
    let mut counts = vec![0u32; len as usize];
    for j in 0..pages {
        let buf = read_page(meta, start + j)?;
        let g = verify(&buf, PageType::Refcount, start + j)?;
        if g > generation {
            return Err(PoolError::Corrupt(format!(
                "refcount page {}: generation {g} is newer than the superblock's {generation}",
                start + j
            )));
        }
        decode_page(&buf, j, &mut counts);
    }
    Ok(counts)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Pool {
    /// Creates a new pool in `root` (created if missing; must not hold a pool).
    pub fn create(root: &Path, config: &PoolConfig) -> Result<Pool, PoolError> {
        config.validate()?;
        std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
        let data_blocks = config.data_size / config.block_size;
        let meta_pages = config.metadata_size / PAGE_SIZE as u64;
        let meta_rc_pages = meta_pages.div_ceil(RC_PER_PAGE as u64);
        let data_rc_pages = data_blocks.div_ceil(RC_PER_PAGE as u64);
        let node_start = 2 + 2 * meta_rc_pages + 2 * data_rc_pages;
        if node_start + 4 * OP_RESERVE > meta_pages {
            return Err(PoolError::InvalidArgument(format!(
                "metadata size {} is too small for {data_blocks} data blocks",
                config.metadata_size
            )));
        }
        let open_new = |name: &str| {
            let path = root.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => PoolError::AlreadyExists(path.clone()),
                    _ => PoolError::Io { context: format!("create {}", path.display()), source: e },
                })
        };
        let data = open_new(DATA_FILE)?;
        let meta = open_new(METADATA_FILE)?;
        data.set_len(data_blocks * config.block_size).map_err(io("size the data file"))?;
        meta.set_len(meta_pages * PAGE_SIZE as u64).map_err(io("size the metadata file"))?;
        let sb = Superblock {
            generation: 1,
            flags: 0,
            block_size: config.block_size,
            data_blocks,
            meta_pages,
            meta_rc_start: 2,
            meta_rc_pages,
            data_rc_start: 2 + 2 * meta_rc_pages,
            data_rc_pages,
            node_start,
            devices_root: 0,
            next_dev_id: 1,
            transaction_id: 0,
            base_dev: 0,
            base_size: config.base_size,
            min_free_pct: config.min_free_space_pct,
        };
        // Both refcount regions start empty (generation 0), then the first
        // superblock (generation 1, slot 1) makes the pool valid.
        let mut buf = vec![0u8; PAGE_SIZE];
        for p in 2..node_start {
            buf.fill(0);
            page::seal(&mut buf, PageType::Refcount, p, 0);
            meta.write_all_at(&buf, p * PAGE_SIZE as u64).map_err(io("write refcount pages"))?;
        }
        meta.sync_data().map_err(io("sync the metadata file"))?;
        sb.encode(&mut buf);
        page::seal(&mut buf, PageType::Superblock, 1, 1);
        meta.write_all_at(&buf, PAGE_SIZE as u64).map_err(io("write the superblock"))?;
        meta.sync_data().map_err(io("sync the metadata file"))?;
        drop((data, meta));
        tracing::info!(root = %root.display(), data_blocks, meta_pages, "created blockcow pool");
        Pool::open(root)
    }

    /// Opens the pool in `root` at its last committed generation.
    pub fn open(root: &Path) -> Result<Pool, PoolError> {
        let open = |name: &str| {
            let path = root.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(format!("open {}", path.display())))
        };
        let data = open(DATA_FILE)?;
        let meta = open(METADATA_FILE)?;
        let lock = nix::fcntl::Flock::lock(open(METADATA_FILE)?, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| PoolError::Busy(format!("{}: {errno}", root.join(METADATA_FILE).display())))?;
        let (sb, notes) = read_superblock(&meta)?;
        for note in notes {
            tracing::debug!(%note, "ignored superblock slot");
        }
        let g = sb.generation;
        let meta_counts = read_counts(&meta, sb.meta_rc_region(g), sb.meta_rc_pages, sb.node_pages(), g)?;
        let data_counts = read_counts(&meta, sb.data_rc_region(g), sb.data_rc_pages, sb.data_blocks, g)?;
        let mut pool = Pool {
            root: root.to_path_buf(),
            data: Arc::new(data),
            data_written: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(IoGate::default()),
            meta,
            sb,
            sb_dirty: false,
            meta_rc: SpaceMap::from_counts(meta_counts),
            data_rc: SpaceMap::from_counts(data_counts),
            devices: BTreeMap::new(),
            deleted: Vec::new(),
            cache: HashMap::new(),
            dirty: HashSet::new(),
            new_pages: HashSet::new(),
            tainted: HashSet::new(),
            failed: None,
            stats: PoolStats::default(),
            _lock: lock,
        };
        let mut leaves = Vec::new();
        pool.collect_leaves(sb.devices_root, &mut leaves)?;
        for (dev_id, p) in leaves {
            let rec = pool.read_record(p)?;
            if rec.dev_id != dev_id {
                return Err(PoolError::Corrupt(format!("record page {p} holds device {} under key {dev_id}", rec.dev_id)));
            }
            pool.devices.insert(dev_id, Dev { rec, page: p, dirty: false });
        }
        Ok(pool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn block_size(&self) -> u64 {
        self.sb.block_size
    }
    /// The last committed generation.
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
    pub fn base_device(&self) -> Option<u64> {
        (self.sb.base_dev != 0).then_some(self.sb.base_dev)
    }
    pub fn base_size(&self) -> u64 {
        self.sb.base_size
    }
    /// Device ids, ascending.
    pub fn device_ids(&self) -> Vec<u64> {
        self.devices.keys().copied().collect()
    }
    /// Blocks mapped by `dev` (shared ones included).
    pub fn info_mapped_blocks(&self, dev: u64) -> Result<u64, PoolError> {
        Ok(self.dev(dev)?.rec.mapped_blocks)
    }
    pub fn device_size(&self, dev: u64) -> Result<u64, PoolError> {
        Ok(self.dev(dev)?.rec.virtual_size)
    }
    /// Data blocks in use (shared blocks counted once).
    pub fn data_blocks_used(&self) -> u64 {
        self.data_rc.used()
    }
    pub fn data_blocks_total(&self) -> u64 {
        self.sb.data_blocks
    }

    fn check_usable(&self) -> Result<(), PoolError> {
        match &self.failed {
            Some(why) => Err(PoolError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn dev(&self, dev: u64) -> Result<&Dev, PoolError> {
        self.devices.get(&dev).ok_or(PoolError::DeviceNotFound(dev))
    }

    // ----- pages -------------------------------------------------------------

    fn page_index(&self, p: u64) -> Result<u64, PoolError> {
        if p < self.sb.node_start || p >= self.sb.meta_pages {
            return Err(PoolError::Corrupt(format!("page reference {p} outside the node area")));
        }
        Ok(p - self.sb.node_start)
    }

    pub(super) fn meta_refs(&self, p: u64) -> u32 {
        self.page_index(p).map(|i| self.meta_rc.get(i)).unwrap_or(0)
    }

    pub(super) fn page_maybe_shared(&self, p: u64) -> bool {
        self.tainted.contains(&p) || self.page_index(p).map(|i| self.meta_rc.maybe_shared(i)).unwrap_or(true)
    }

    pub(super) fn node(&mut self, p: u64) -> Result<Arc<Node>, PoolError> {
        self.stats.page_accesses += 1;
        self.page_index(p)?;
        if let Some(Cached::Node(n)) = self.cache.get(&p) {
            return Ok(n.clone());
        }
        let buf = read_page(&self.meta, p)?;
        verify(&buf, PageType::Node, p)?;
        let node = Arc::new(Node::decode(&buf, p)?);
        self.cache_clean(p, Cached::Node(node.clone()));
        Ok(node)
    }

    fn read_record(&mut self, p: u64) -> Result<Record, PoolError> {
        self.stats.page_accesses += 1;
        self.page_index(p)?;
        if let Some(Cached::Record(r)) = self.cache.get(&p) {
            return Ok(*r);
        }
        let buf = read_page(&self.meta, p)?;
        verify(&buf, PageType::Record, p)?;
        Ok(Record::decode(&buf))
    }

    fn cache_clean(&mut self, p: u64, c: Cached) {
        if self.cache.len() >= CACHE_LIMIT {
            let dirty = &self.dirty;
            self.cache.retain(|k, _| dirty.contains(k));
        }
        self.cache.insert(p, c);
    }

    pub(super) fn put_node(&mut self, p: u64, node: Node) {
        self.stats.page_accesses += 1;
        self.cache.insert(p, Cached::Node(Arc::new(node)));
        self.dirty.insert(p);
    }

    pub(super) fn alloc_page(&mut self) -> Result<u64, PoolError> {
        let i = self.meta_rc.alloc().ok_or(PoolError::NoMetadataSpace)?;
        let p = self.sb.node_start + i;
        self.new_pages.insert(p);
        Ok(p)
    }

    pub(super) fn inc_page(&mut self, p: u64) -> Result<(), PoolError> {
        let i = self.page_index(p)?;
        self.meta_rc.inc(i, "metadata page")
    }

    pub(super) fn meta_dec(&mut self, p: u64) -> Result<u32, PoolError> {
        let i = self.page_index(p)?;
        self.meta_rc.dec(i, "metadata page")
    }

    /// Drops the only reference to `p` without touching what it points at
    /// (the caller has moved those references elsewhere).
    pub(super) fn release_page(&mut self, p: u64) -> Result<(), PoolError> {
        if self.meta_dec(p)? != 0 {
            return Err(PoolError::Corrupt(format!("metadata page {p} released while still referenced")));
        }
        self.cache.remove(&p);
        self.dirty.remove(&p);
        self.new_pages.remove(&p);
        self.tainted.remove(&p);
        Ok(())
    }

    pub(super) fn inc_block(&mut self, b: u64) -> Result<(), PoolError> {
        self.block_check(b)?;
        self.data_rc.inc(b, "data block")
    }

    pub(super) fn dec_block(&mut self, b: u64) -> Result<(), PoolError> {
        self.block_check(b)?;
        self.data_rc.dec(b, "data block").map(|_| ())
    }

    fn block_check(&self, b: u64) -> Result<(), PoolError> {
        if b >= self.sb.data_blocks {
            return Err(PoolError::Corrupt(format!("data block reference {b} beyond the data file")));
        }
        Ok(())
    }

    fn collect_leaves(&mut self, root: u64, out: &mut Vec<(u64, u64)>) -> Result<(), PoolError> {
        if root == 0 {
            return Ok(());
        }
        let node = self.node(root)?;
        if node.internal {
            for &c in &node.vals {
                self.collect_leaves(c, out)?;
            }
        } else {
            out.extend(node.keys.iter().copied().zip(node.vals.iter().copied()));
        }
        Ok(())
    }

    // ----- space checks --------------------------------------------------------

    fn dirty_devices(&self) -> u64 {
        self.devices.values().filter(|d| d.dirty).count() as u64 + self.deleted.len() as u64
    }

    /// Refuses an operation when the metadata left could not carry it and
    /// the commit that follows.
    fn reserve_metadata(&self, new_dirty_devices: u64) -> Result<(), PoolError> {
        let need = OP_RESERVE + (self.dirty_devices() + new_dirty_devices) * COMMIT_PAGES_PER_DEVICE;
        if self.meta_rc.allocatable() < need {
            return Err(PoolError::NoMetadataSpace);
        }
        Ok(())
    }

    fn check_min_free(&self) -> Result<(), PoolError> {
        let min = self.sb.min_free_pct as u64;
        let data_free = self.sb.data_blocks - self.data_rc.used();
        if data_free * 100 < min * self.sb.data_blocks {
            return Err(PoolError::MinFreeSpace { what: "data", free: data_free * 100 / self.sb.data_blocks, min });
        }
        let pages = self.sb.node_pages();
        let meta_free = pages - self.meta_rc.used();
        if meta_free * 100 < min * pages {
            return Err(PoolError::MinFreeSpace { what: "metadata", free: meta_free * 100 / pages, min });
        }
        Ok(())
    }

    // ----- pool operations (each commits) ---------------------------------------

    /// Creates an empty thin device of `virtual_size` bytes (a multiple of
    /// 4096) and commits; returns its id.
    pub fn create_device(&mut self, virtual_size: u64) -> Result<u64, PoolError> {
        self.check_usable()?;
        if virtual_size == 0 || virtual_size % 4096 != 0 {
            return Err(PoolError::InvalidArgument(format!(
                "device size {virtual_size} is not a positive multiple of 4096"
            )));
        }
        if virtual_size.div_ceil(self.sb.block_size) > 1 << 48 {
            return Err(PoolError::InvalidArgument(format!("device size {virtual_size} is too large")));
        }
        self.check_min_free()?;
        self.reserve_metadata(1)?;
        let id = self.new_device(Record { virtual_size, ..Record::default_for(0) });
        self.commit()?;
        Ok(id)
    }

    /// Creates a snapshot of `origin` in O(1): the new device shares the
    /// origin's mapping tree root. Commits; returns the new id.
    pub fn snapshot(&mut self, origin: u64) -> Result<u64, PoolError> {
        self.check_usable()?;
        let src = self.dev(origin)?.rec;
        self.check_min_free()?;
        self.reserve_metadata(1)?;
        if src.mapping_root != 0 {
            self.inc_page(src.mapping_root)?;
        }
        let id = self.new_device(Record {
            mapping_root: src.mapping_root,
            virtual_size: src.virtual_size,
            mapped_blocks: src.mapped_blocks,
            origin,
            ..Record::default_for(0)
        });
        self.commit()?;
        Ok(id)
    }

    /// Grows device `dev` to `new_size` bytes (a multiple of 4096, not
    /// below its current size) and commits. The new range reads as zeros
    /// until written; the size is kept in the device's record.
    pub fn resize_device(&mut self, dev: u64, new_size: u64) -> Result<(), PoolError> {
        self.check_usable()?;
        let size = self.dev(dev)?.rec.virtual_size;
        if new_size % 4096 != 0 || new_size < size {
            return Err(PoolError::InvalidArgument(format!(
                "device {dev} of {size} bytes cannot take the size {new_size}: sizes are multiples of 4096 and only grow"
            )));
        }
        if new_size.div_ceil(self.sb.block_size) > 1 << 48 {
            return Err(PoolError::InvalidArgument(format!("device size {new_size} is too large")));
        }
        if new_size == size {
            return Ok(());
        }
        self.reserve_metadata(u64::from(!self.dev(dev)?.dirty))?;
        let d = self.devices.get_mut(&dev).ok_or(PoolError::DeviceNotFound(dev))?;
        d.rec.virtual_size = new_size;
        d.dirty = true;
        self.commit()
    }

    fn new_device(&mut self, mut rec: Record) -> u64 {
        let id = self.sb.next_dev_id;
        self.sb.next_dev_id += 1;
        self.sb_dirty = true;
        rec.dev_id = id;
        rec.created_generation = self.sb.generation + 1;
        rec.created_unix = now_unix();
        self.devices.insert(id, Dev { rec, page: 0, dirty: true });
        id
    }

    /// Deletes a device, releasing the blocks only it referenced, and commits.
    pub fn delete_device(&mut self, dev: u64) -> Result<(), PoolError> {
        self.check_usable()?;
        let d = self.dev(dev)?.clone();
        self.reserve_metadata(1)?;
        self.devices.remove(&dev);
        if d.rec.mapping_root != 0 {
            if let Err(e) = self.dec_page(d.rec.mapping_root) {
                return Err(self.fail(e));
            }
        }
        if d.page != 0 {
            self.deleted.push((dev, d.page));
        }
        if self.sb.base_dev == dev {
            self.sb.base_dev = 0;
        }
        self.sb_dirty = true;
        self.commit()
    }

    /// Marks `dev` as the base device (0 clears it) and commits.
    pub fn set_base_device(&mut self, dev: u64) -> Result<(), PoolError> {
        self.check_usable()?;
        if dev != 0 {
            self.dev(dev)?;
        }
        self.sb.base_dev = dev;
        self.sb_dirty = true;
        self.commit()
    }

    pub fn transaction_id(&self) -> u64 {
        self.sb.transaction_id
    }

    /// Compare-and-swap of the user transaction id; commits.
    pub fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<(), PoolError> {
        self.check_usable()?;
        if self.sb.transaction_id != current {
            return Err(PoolError::InvalidArgument(format!(
                "transaction id is {}, not {current}",
                self.sb.transaction_id
            )));
        }
        self.sb.transaction_id = new;
        self.sb_dirty = true;
        self.commit()
    }

    fn fail(&mut self, e: PoolError) -> PoolError {
        tracing::error!(error = %e, "blockcow pool failed; reopen it to recover the last commit");
        self.failed = Some(e.to_string());
        e
    }

    // ----- I/O ----------------------------------------------------------------------

    fn range_check(&self, dev: u64, offset: u64, len: u64) -> Result<(), PoolError> {
        let size = self.dev(dev)?.rec.virtual_size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(PoolError::OutOfRange { dev, offset, len, size });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; unmapped blocks read as zeros
    /// without touching the data file.
    pub fn read(&mut self, dev: u64, offset: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        self.plan_read(dev, offset, buf.len())?.read_into(buf)
    }

    /// Looks up the blocks under `len` bytes at `offset` of `dev`; the
    /// returned plan reads them (and zeros for unmapped ones) into a buffer
    /// of `len` bytes, with or without the pool lock held.
    pub fn plan_read(&mut self, dev: u64, offset: u64, len: usize) -> Result<DataIo, PoolError> {
        self.check_usable()?;
        self.range_check(dev, offset, len as u64)?;
        let bs = self.sb.block_size;
        let root = self.dev(dev)?.rec.mapping_root;
        let mut plan = self.new_io();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let (vblock, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(len - done);
            match self.tree_lookup(root, vblock)? {
                None => plan.push(done, n, None),
                Some(b) => {
                    self.block_check(b)?;
                    plan.push(done, n, Some(b * bs + within));
                }
            }
            done += n;
        }
        Ok(plan)
    }

    /// Writes `buf` at `offset`, allocating blocks on demand and copying a
    /// shared block before changing it. Fails with [`PoolError::NoDataSpace`]
    /// when a block is needed and none is free; blocks written before that
    /// keep their new contents.
    pub fn write(&mut self, dev: u64, offset: u64, buf: &[u8]) -> Result<(), PoolError> {
        self.plan_write(dev, offset, buf)?.write_from(buf)
    }

    /// Writes `buf` at `offset` in two parts: blocks that need a change of
    /// the mapping (allocation, copy-on-write of a shared block) are written
    /// now; the returned plan writes the rest, blocks this device owns
    /// exclusively, in place, with or without the pool lock held. Fails like
    /// [`Pool::write`]; the plan is then dropped unrun.
    pub fn plan_write(&mut self, dev: u64, offset: u64, buf: &[u8]) -> Result<DataIo, PoolError> {
        self.check_usable()?;
        self.range_check(dev, offset, buf.len() as u64)?;
        let bs = self.sb.block_size;
        let mut plan = self.new_io();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (vblock, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            if let Some(b) = self.write_block(dev, vblock, within, &buf[done..done + n])? {
                plan.push(done, n, Some(b * bs + within));
            }
            done += n;
        }
        Ok(plan)
    }

    fn new_io(&self) -> DataIo {
        DataIo { file: self.data.clone(), segs: Vec::new(), data_written: self.data_written.clone(), _ticket: self.gate.enter() }
    }

    /// Finds the block mapped at `vblock` and whether it may be overwritten
    /// in place: referenced once now, and not possibly shared in the last
    /// commit (unless it was allocated after it).
    fn lookup_exclusive(&mut self, root: u64, vblock: u64) -> Result<Option<(u64, bool)>, PoolError> {
        if root == 0 {
            return Ok(None);
        }
        let mut p = root;
        let mut single = true;
        let mut clean = true;
        loop {
            single &= self.meta_refs(p) == 1;
            clean &= !self.page_maybe_shared(p);
            let node = self.node(p)?;
            if node.internal {
                if key_below(&node, vblock) {
                    return Ok(None);
                }
                p = node.vals[super::btree::child_index(&node.keys, vblock)];
                continue;
            }
            let Ok(i) = node.keys.binary_search(&vblock) else { return Ok(None) };
            let b = node.vals[i];
            self.block_check(b)?;
            let fresh = self.data_rc.committed(b) == 0;
            let exclusive = single && self.data_rc.get(b) == 1 && (fresh || (clean && !self.data_rc.maybe_shared(b)));
            return Ok(Some((b, exclusive)));
        }
    }

    /// Writes `bytes` at `within` of `vblock` if that needs a new block
    /// (allocation or copy-on-write); returns the block to write in place
    /// otherwise, without writing it.
    fn write_block(&mut self, dev: u64, vblock: u64, within: u64, bytes: &[u8]) -> Result<Option<u64>, PoolError> {
        let bs = self.sb.block_size;
        let root = self.dev(dev)?.rec.mapping_root;
        let found = self.lookup_exclusive(root, vblock)?;
        if let Some((b, true)) = found {
            return Ok(Some(b));
        }
        self.reserve_metadata(u64::from(!self.dev(dev)?.dirty))?;
        let nb = self.data_rc.alloc().ok_or(PoolError::NoDataSpace)?;
        // Build the whole new block: old contents (or zeros) around the bytes.
        let mut block = vec![0u8; bs as usize];
        if let Some((old, _)) = found {
            self.data.read_exact_at(&mut block, old * bs).map_err(io(format!("read data block {old}")))?;
        }
        block[within as usize..within as usize + bytes.len()].copy_from_slice(bytes);
        self.data_written.store(true, Ordering::Release);
        if let Err(e) = self.data.write_all_at(&block, nb * bs) {
            self.data_rc.dec(nb, "data block")?;
            return Err(io(format!("write data block {nb}"))(e));
        }
        let res = self.remap(dev, vblock, nb, found.map(|(old, _)| old));
        res.map_err(|e| self.fail(e))?;
        Ok(None)
    }

    fn remap(&mut self, dev: u64, vblock: u64, nb: u64, old: Option<u64>) -> Result<(), PoolError> {
        let root = self.dev(dev)?.rec.mapping_root;
        let new_root = self.tree_insert(root, TreeKind::Mapping, vblock, nb)?;
        if let Some(old) = old {
            self.dec_block(old)?;
        }
        let d = self.devices.get_mut(&dev).ok_or(PoolError::DeviceNotFound(dev))?;
        d.rec.mapping_root = new_root;
        if old.is_none() {
            d.rec.mapped_blocks += 1;
        }
        d.dirty = true;
        Ok(())
    }

    /// Discards `len` bytes at `offset`: whole blocks are unmapped (their
    /// space returns to the host after the next commit), partial edges are
    /// zeroed. Afterwards the range reads as zeros.
    pub fn discard(&mut self, dev: u64, offset: u64, len: u64) -> Result<(), PoolError> {
        self.check_usable()?;
        self.range_check(dev, offset, len)?;
        let bs = self.sb.block_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (vblock, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(end - pos);
            if n == bs {
                self.unmap(dev, vblock)?;
            } else {
                let root = self.dev(dev)?.rec.mapping_root;
                if self.tree_lookup(root, vblock)?.is_some() {
                    let zeros = vec![0u8; n as usize];
                    if let Some(b) = self.write_block(dev, vblock, within, &zeros)? {
                        self.data_written.store(true, Ordering::Release);
                        self.data
                            .write_all_at(&zeros, b * bs + within)
                            .map_err(io(format!("write data block {b}")))?;
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn unmap(&mut self, dev: u64, vblock: u64) -> Result<(), PoolError> {
        let root = self.dev(dev)?.rec.mapping_root;
        if self.tree_lookup(root, vblock)?.is_none() {
            return Ok(());
        }
        self.reserve_metadata(u64::from(!self.dev(dev)?.dirty))?;
        let res = (|| {
            let (new_root, old) = self.tree_remove(root, vblock)?;
            if let Some(b) = old {
                self.dec_block(b)?;
            }
            let d = self.devices.get_mut(&dev).ok_or(PoolError::DeviceNotFound(dev))?;
            d.rec.mapping_root = new_root;
            d.rec.mapped_blocks = d.rec.mapped_blocks.saturating_sub(u64::from(old.is_some()));
            d.dirty = true;
            Ok(())
        })();
        res.map_err(|e| self.fail(e))
    }

    // ----- commit ------------------------------------------------------------------

    /// Makes everything done so far durable as a new generation: data first,
    /// then new metadata pages and refcounts, then the superblock slot of the
    /// new generation. A crash at any point leaves the last commit intact.
    /// Blocks freed by this transaction are then returned to the host.
    pub fn commit(&mut self) -> Result<(), PoolError> {
        self.check_usable()?;
        // No data-file I/O planned before this point is still running once
        // this returns, and none can start until the commit is done (it
        // needs `&mut self`): see [`DataIo`].
        self.gate.drain();
        if self.data_written.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.data.sync_data() {
                self.data_written.store(true, Ordering::Release);
                return Err(io("sync the data file")(e));
            }
        }
        let changed = self.sb_dirty || self.dirty_devices() > 0 || self.meta_rc.changed() || self.data_rc.changed();
        if !changed {
            return Ok(());
        }
        match self.commit_inner() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn commit_inner(&mut self) -> Result<(), PoolError> {
        let g = self.sb.generation + 1;
        // Device records: deleted ones leave the devices tree, changed ones
        // get a fresh record page.
        let mut root = self.sb.devices_root;
        for (dev, p) in std::mem::take(&mut self.deleted) {
            root = self.tree_remove(root, dev)?.0;
            self.release_page(p)?;
        }
        let changed: Vec<u64> = self.devices.iter().filter(|(_, d)| d.dirty).map(|(&id, _)| id).collect();
        for id in changed {
            let q = self.alloc_page()?;
            let (rec, old) = {
                let d = self.devices.get_mut(&id).ok_or(PoolError::DeviceNotFound(id))?;
                let old = d.page;
                d.page = q;
                d.dirty = false;
                (d.rec, old)
            };
            self.cache.insert(q, Cached::Record(rec));
            self.dirty.insert(q);
            root = self.tree_insert(root, TreeKind::Devices, id, q)?;
            if old != 0 {
                self.release_page(old)?;
            }
        }
        self.sb.devices_root = root;

        let mut buf = vec![0u8; PAGE_SIZE];
        let mut dirty: Vec<u64> = self.dirty.iter().copied().collect();
        dirty.sort_unstable();
        let mut written: Vec<(u64, PageType)> = Vec::with_capacity(dirty.len());
        for &p in &dirty {
            let ptype = match self.cache.get(&p) {
                Some(Cached::Node(n)) => {
                    n.encode(&mut buf);
                    PageType::Node
                }
                Some(Cached::Record(r)) => {
                    r.encode(&mut buf);
                    PageType::Record
                }
                None => return Err(PoolError::Corrupt(format!("dirty page {p} missing from the cache"))),
            };
            page::seal(&mut buf, ptype, p, g);
            self.meta.write_all_at(&buf, p * PAGE_SIZE as u64).map_err(io(format!("write metadata page {p}")))?;
            written.push((p, ptype));
        }
        for (map, start) in [(&self.meta_rc, self.sb.meta_rc_region(g)), (&self.data_rc, self.sb.data_rc_region(g))] {
            for j in map.pages_to_write() {
                map.encode_page(j, &mut buf);
                page::seal(&mut buf, PageType::Refcount, start + j, g);
                self.meta
                    .write_all_at(&buf, (start + j) * PAGE_SIZE as u64)
                    .map_err(io(format!("write refcount page {}", start + j)))?;
                written.push((start + j, PageType::Refcount));
            }
        }
        // One sync when the superblock can list every page written: a crash
        // that lets it reach the disk without one of them is caught on open
        // (see `read_superblock`). Otherwise the pages are synced first.
        let listed = written.len() <= page::MAX_LISTED;
        if !listed {
            self.meta.sync_data().map_err(io("sync the metadata file"))?;
        }
        let mut sb = self.sb;
        sb.generation = g;
        sb.encode(&mut buf);
        if listed {
            page::encode_written(&mut buf, &written);
        }
        page::seal(&mut buf, PageType::Superblock, g % 2, g);
        self.meta.write_all_at(&buf, (g % 2) * PAGE_SIZE as u64).map_err(io("write the superblock"))?;
        self.meta.sync_data().map_err(io("sync the metadata file"))?;
        let written = written.len() as u64 + 1;

        // Committed: start the next transaction.
        self.sb = sb;
        self.sb_dirty = false;
        self.dirty.clear();
        self.new_pages.clear();
        self.tainted.clear();
        self.meta_rc.end_transaction();
        let freed = self.data_rc.end_transaction();
        self.stats.pages_written += written;
        self.stats.commits += 1;
        let bs = self.sb.block_size;
        for b in freed {
            if let Err(errno) = nix::fcntl::fallocate(
                self.data.as_raw_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                (b * bs) as libc::off_t,
                bs as libc::off_t,
            ) {
                // The block is free in the metadata either way; only host space is kept.
                tracing::warn!(block = b, %errno, "could not punch a freed data block");
            }
        }
        Ok(())
    }

    /// Checks the last committed generation on disk (see [`super::check`]).
    pub fn check(&self) -> Result<super::CheckReport, PoolError> {
        super::check::check_file(&self.meta).map(|r| r.0)
    }

    // ----- info -----------------------------------------------------------------------

    /// Counts the mapped blocks of `dev` that no other device shares.
    pub fn exclusive_blocks(&mut self, dev: u64) -> Result<u64, PoolError> {
        let root = self.dev(dev)?.rec.mapping_root;
        let mut count = 0;
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            if p == 0 || self.meta_refs(p) > 1 {
                continue;
            }
            let node = self.node(p)?;
            if node.internal {
                stack.extend(node.vals.iter().copied());
            } else {
                count += node.vals.iter().filter(|&&b| b < self.sb.data_blocks && self.data_rc.get(b) == 1).count() as u64;
            }
        }
        Ok(count)
    }

    /// Space, settings and devices of the pool, as of now.
    pub fn info(&mut self) -> Result<PoolInfo, PoolError> {
        let bs = self.sb.block_size;
        let ids = self.device_ids();
        let mut devices = Vec::with_capacity(ids.len());
        for id in ids {
            let exclusive_blocks = self.exclusive_blocks(id)?;
            let rec = self.dev(id)?.rec;
            devices.push(DeviceInfo {
                id,
                origin: rec.origin,
                virtual_size: rec.virtual_size,
                mapped_blocks: rec.mapped_blocks,
                exclusive_blocks,
                created_generation: rec.created_generation,
            });
        }
        let host_avail = host_available(&self.root);
        let data_total = self.sb.data_blocks * bs;
        let data_used = self.data_rc.used() * bs;
        let meta_total = self.sb.meta_pages * PAGE_SIZE as u64;
        let meta_used = (self.sb.node_start + self.meta_rc.used()) * PAGE_SIZE as u64;
        Ok(PoolInfo {
            pool_name: pool_name(&self.root),
            block_size: bs,
            base_device_size: self.sb.base_size,
            backing_filesystem: backing_filesystem(&self.root),
            data_file: self.root.join(DATA_FILE),
            metadata_file: self.root.join(METADATA_FILE),
            data_space_used: data_used,
            data_space_total: data_total,
            data_space_available: (data_total - data_used).min(host_avail),
            metadata_space_used: meta_used,
            metadata_space_total: meta_total,
            metadata_space_available: (meta_total - meta_used).min(host_avail),
            min_free_space_pct: self.sb.min_free_pct,
            transaction_id: self.sb.transaction_id,
            generation: self.sb.generation,
            devices,
        })
    }
}

fn key_below(node: &Node, key: u64) -> bool {
    node.keys.is_empty() || key < node.keys[0]
}

impl Record {
    fn default_for(dev_id: u64) -> Record {
        Record {
            dev_id,
            mapping_root: 0,
            virtual_size: 0,
            mapped_blocks: 0,
            origin: 0,
            created_generation: 0,
            created_unix: 0,
        }
    }
}

/// The pool's name: `strata-` and the pool directory's name.
pub(super) fn pool_name(root: &Path) -> String {
    let base = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pool".into());
    format!("strata-{base}")
}

/// Bytes the host filesystem holding `root` can still give (u64::MAX if unknown).
pub(super) fn host_available(root: &Path) -> u64 {
    nix::sys::statvfs::statvfs(root)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(u64::MAX)
}

/// Name of the filesystem type holding `root`.
pub(super) fn backing_filesystem(root: &Path) -> String {
    use nix::sys::statfs as s;
    let Ok(st) = s::statfs(root) else { return "unknown".into() };
    let t = st.filesystem_type();
    let known = [
        (s::EXT4_SUPER_MAGIC, "extfs"),
        (s::XFS_SUPER_MAGIC, "xfs"),
        (s::BTRFS_SUPER_MAGIC, "btrfs"),
        (s::TMPFS_MAGIC, "tmpfs"),
        (s::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
    ];
    known
        .iter()
        .find(|(m, _)| *m == t)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("0x{:x}", t.0))
}
