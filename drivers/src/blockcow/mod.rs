//! # blockcow: thin devices with block-level copy-on-write
//!
//! A userspace take on dm-thin: a pool of data blocks shared by thin
//! devices, where a snapshot costs O(1) and a write into a shared block
//! copies only that block.
//!
//! ## Files (`<root>/`)
//! - `data`: sparse, apparent size = data blocks × block size (default
//!   100 GiB of 64 KiB blocks). Block *n* lives at byte *n* × block size;
//!   free blocks are holes.
//! - `metadata`: 4 KiB pages. Pages 0 and 1 are the superblock slots;
//!   generation *g* is written to slot *g* % 2. Then two refcount regions
//!   for metadata pages (A, B), two for data blocks (A, B); generation *g*
//!   uses region *g* % 2. The rest is the node area (tree nodes, device
//!   records), allocated page by page.
//!
//! Every page starts with a 32-byte header: `crc32c(page[4..]) ^ salt(type)`,
//! type, own page number, generation that wrote it. The salt makes a page of
//! one type fail as any other.
//!
//! ## Trees
//! Copy-on-write B+trees, u64 → u64, up to 252 entries per node:
//! - devices tree (root in the superblock): device id → record page
//!   (mapping root, size, mapped blocks, origin, creation);
//! - one mapping tree per device: virtual block → data block.
//!
//! A snapshot points its record at the origin's mapping root and adds one
//! reference to that root: nothing below the root is read or written. A
//! page's reference count is the number of parents (nodes or records)
//! pointing at it; a data block's count is the number of leaves mapping it.
//! A write shadows the path to its leaf: a page created in the current
//! transaction with one reference is changed in place, anything else is
//! copied, and copying a shared page adds a reference to each child.
//!
//! ## Commit protocol
//! 0. wait until no data-file I/O planned under the pool lock is still
//!    running (see "Data I/O outside the pool lock" below);
//! 1. device records changed in the transaction get fresh record pages and
//!    the devices tree is updated;
//! 2. `fdatasync(data)` if anything was written to it since the last
//!    commit: data referenced by the new mappings is durable;
//! 3. write dirty node/record pages, then the refcount pages changed in this
//!    or the previous transaction into region *g* % 2 (that region last held
//!    generation *g* − 2);
//! 4. write the superblock into slot *g* % 2, listing every page written in
//!    step 3 (page number and type); `fdatasync(metadata)`. A commit that
//!    wrote more pages than a superblock can list (480) syncs them before
//!    writing the superblock instead, and lists none;
//! 5. punch holes in `data` for blocks freed by the transaction.
//!
//! Opening picks the valid superblock with the highest generation whose
//! listed pages all carry that generation and a good checksum: a crash can
//! let the superblock reach the disk before some of its pages, and that
//! commit then never happened (the previous generation is intact: nothing
//! it references was written since). Commits happen on every pool
//! operation (create, snapshot, delete) and on flush.
//!
//! ## Data I/O outside the pool lock
//! Reads, and writes into blocks a device owns exclusively, are planned
//! under the pool lock (`Pool::plan_read`, `Pool::plan_write`: mapping
//! lookups, and allocation or copy-on-write of the blocks that need it) and
//! the `pread`/`pwrite` on the data file runs after the lock is released.
//! Each plan holds a ticket; a commit first waits until no ticket is left
//! and no new one can be taken while it runs. Hence:
//! - a block named by a plan was mapped when the plan was made; if it is
//!   freed meanwhile (unmap, delete, remap after copy-on-write) it becomes
//!   reusable only at the end of a commit, which waits for the plan: an
//!   unlocked write never lands in a block reassigned to another device, an
//!   unlocked read never returns another device's data;
//! - a block only stops being exclusive through a snapshot, which commits:
//!   writes planned before it are done before the snapshot returns, and
//!   writes planned after it see the block shared and copy it under the lock,
//!   so a copy never races a write to the same block;
//! - the data written by a plan before a flush's commit is inside that
//!   commit's `fdatasync(data)`.
//!
//! ## Invariants
//! - No page or block reachable from the last committed generation is
//!   overwritten: pages are shadowed, and entries freed in a transaction are
//!   not reused before it commits. A crash at any point leaves the last
//!   commit intact.
//! - A freed block is reused only after the commit that freed it, and that
//!   commit waits for all data I/O planned before it: I/O running without
//!   the pool lock only ever touches blocks of the device it was planned for.
//! - A data block is written in place only if it is referenced once now and
//!   was not (possibly) shared in the last commit, or was allocated after it;
//!   otherwise the block is copied and remapped.
//! - The devices tree is never shared.
//! - `check` recomputes every count from the trees: a stored count above
//!   the references is a leak (repairable), below is corruption.
//!
//! ## Exposure and driver
//! - [`fuse`]: one FUSE mount (`<driver root>/devices`) serves each active
//!   device as a file, by default with direct I/O and parallel direct
//!   writes (reads of at most 256 KiB per request, so that request threads
//!   serve the pieces of a loop device's large read in parallel); with `blockcow.pagecache=true` ([`DeviceCache::Page`]) through
//!   the kernel's page cache, write-through (no FUSE writeback cache; the
//!   first open of a file drops its cached pages, a discard drops its range),
//!   with the loop device attached without direct I/O; `fsync`
//!   commits, `fallocate(PUNCH_HOLE/ZERO_RANGE)` discards, `statfs` reports
//!   the block size (the loop device's discard granularity). Request threads
//!   mark themselves `PR_SET_IO_FLUSHER`. A device removed while open is
//!   deleted on the last release. When the driver opens and finds a FUSE
//!   mount left by a killed daemon at the mount point, it aborts that
//!   connection (fusectl `abort`; a killed daemon whose thread waited on its
//!   own mount, e.g. in `LOOP_CONFIGURE`'s getattr, can only exit then),
//!   detaches the loop devices backed by files on it, and unmounts it
//!   lazily before mounting afresh; a mount that still answers belongs to a
//!   live daemon and is left alone.
//! - [`crate::sys::loopdev`]: `LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` (direct I/O
//!   unless the files are served through the page cache, autoclear, 4 KiB
//!   sectors); kept in the `sys` module with the crate's other `unsafe`.
//! - [`driver`]: the `Snapshotter`. The base device is made and formatted
//!   once at pool setup; a parentless snapshot is a snapshot of it, a child
//!   one of its parent's device. Keys, names and labels live in the shared
//!   metadata store, each record carrying its device id.
//! - Per-snapshot size: the label `strata.io/snapshot/blockcow.size`
//!   ([`driver::SIZE_LABEL`], Docker's size syntax) on `Prepare` grows the
//!   new device ([`Pool::resize_device`]) and then its filesystem (ext4:
//!   `e2fsck -f` + `resize2fs` on the loop device before the mounts are
//!   returned; xfs: `xfs_growfs` on a private mount). A size below the
//!   parent's device size is refused and nothing is created. The size lives
//!   in the device record, so children and restarts keep it.
//!
//! ## Module layout
//! `page` (format), `space` (refcount maps), `btree` (CoW B+tree), `pool`
//! (devices, I/O, commit), `check` (offline check, repair, info), `fuse`,
//! `driver`; the loop ioctls live in `crate::sys::loopdev`.

mod btree;
pub mod check;
pub mod driver;
pub mod fuse;
pub mod page;
pub mod pool;
mod space;

use std::path::PathBuf;

pub use check::{check, info, repair, CheckReport, Leak, LeakKind};
pub use driver::{BlockCow, BlockCowSnapshotter};
pub use fuse::{DeviceCache, DeviceFiles};
pub use crate::sys::loopdev::LoopDevice;
pub use pool::{DeviceInfo, Pool, PoolConfig, PoolInfo, PoolStats, DATA_FILE, METADATA_FILE};

/// Failures of the blockcow pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// An I/O call on the pool files failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The metadata is damaged.
    #[error("pool metadata is corrupt: {0}")]
    Corrupt(String),
    /// No free data block is left.
    #[error("no free data blocks in the pool")]
    NoDataSpace,
    /// No free metadata page is left for the operation and its commit.
    #[error("no free metadata space in the pool")]
    NoMetadataSpace,
    /// Creating a device would eat into the minimum free space.
    #[error("{what} space is {free}% free, below the minimum free space of {min}%")]
    MinFreeSpace { what: &'static str, free: u64, min: u64 },
    #[error("device {0} does not exist")]
    DeviceNotFound(u64),
    #[error("range {offset}+{len} is outside device {dev} of {size} bytes")]
    OutOfRange { dev: u64, offset: u64, len: u64, size: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("a pool already exists at {}", .0.display())]
    AlreadyExists(PathBuf),
    /// Another process holds the pool.
    #[error("pool is in use: {0}")]
    Busy(String),
    /// An earlier failure left the in-memory state unusable; reopening the
    /// pool returns to the last commit.
    #[error("pool failed earlier and must be reopened: {0}")]
    Failed(String),
}

impl PoolError {
    /// The errno a block device would report for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::NoDataSpace | PoolError::NoMetadataSpace | PoolError::MinFreeSpace { .. } => libc::ENOSPC,
            PoolError::OutOfRange { .. } | PoolError::InvalidArgument(_) => libc::EINVAL,
            PoolError::DeviceNotFound(_) => libc::ENOENT,
            PoolError::AlreadyExists(_) => libc::EEXIST,
            PoolError::Busy(_) => libc::EBUSY,
            PoolError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            PoolError::Corrupt(_) | PoolError::Failed(_) => libc::EIO,
        }
    }
}

impl From<PoolError> for strata_snapshotter::Error {
    fn from(e: PoolError) -> Self {
        use strata_snapshotter::Error;
        let msg = e.to_string();
        match e {
            PoolError::DeviceNotFound(_) => Error::not_found(msg),
            PoolError::AlreadyExists(_) => Error::already_exists(msg),
            PoolError::InvalidArgument(_) | PoolError::OutOfRange { .. } => Error::invalid_argument(msg),
            PoolError::MinFreeSpace { .. } | PoolError::NoDataSpace | PoolError::NoMetadataSpace => {
                Error::failed_precondition(msg)
            }
            PoolError::Busy(_) => Error::unavailable(msg),
            PoolError::Io { .. } | PoolError::Corrupt(_) | PoolError::Failed(_) => Error::internal(msg),
        }
    }
}
