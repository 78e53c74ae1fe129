//! Offline consistency check of a pool's last committed generation: walks
//! every tree, recomputes every reference count and compares.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::page::{self, verify, Node, PageType, Record, Superblock, TreeKind, PAGE_SIZE, RC_PER_PAGE};
use super::pool::{backing_filesystem, host_available, pool_name, read_superblock, DATA_FILE, METADATA_FILE};
use super::{DeviceInfo, PoolInfo};
use super::space::decode_page;
use super::PoolError;

/// What a leaked entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakKind {
    MetadataPage,
    DataBlock,
}

/// An entry whose stored reference count is higher than the references
/// found: space that is never freed. Repairable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Leak {
    pub kind: LeakKind,
    /// Metadata page number or data block number.
    pub index: u64,
    pub stored: u32,
    pub found: u32,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub generation: u64,
    pub devices: u64,
    pub metadata_pages_referenced: u64,
    pub data_blocks_referenced: u64,
    /// Damage that repair cannot fix: bad pages, broken trees, counts lower
    /// than the references found.
    pub corruption: Vec<String>,
    pub leaks: Vec<Leak>,
    /// Invalid superblock slots (an older or torn slot is normal after a crash).
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.corruption.is_empty() && self.leaks.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "generation {}: {} devices, {} metadata pages and {} data blocks referenced",
            self.generation, self.devices, self.metadata_pages_referenced, self.data_blocks_referenced
        )?;
        for c in &self.corruption {
            writeln!(f, "corruption: {c}")?;
        }
        for l in &self.leaks {
            writeln!(f, "leak: {:?} {} has count {} but {} references", l.kind, l.index, l.stored, l.found)?;
        }
        Ok(())
    }
}

struct Walk<'a> {
    meta: &'a File,
    sb: Superblock,
    found_meta: Vec<u32>,
    found_data: Vec<u32>,
    /// Entry counts of subtrees already walked (shared subtrees are walked once).
    entries: HashMap<u64, u64>,
    corruption: Vec<String>,
    records: Vec<Record>,
}

impl Walk<'_> {
    fn page(&mut self, p: u64, ptype: PageType) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; PAGE_SIZE];
        if let Err(e) = self.meta.read_exact_at(&mut buf, p * PAGE_SIZE as u64) {
            self.corruption.push(format!("metadata page {p}: {e}"));
            return None;
        }
        match verify(&buf, ptype, p) {
            Ok(g) if g > self.sb.generation => {
                self.corruption.push(format!(
                    "metadata page {p}: generation {g} is newer than the superblock's {}",
                    self.sb.generation
                ));
                None
            }
            Ok(_) => Some(buf),
            Err(e) => {
                self.corruption.push(e.to_string());
                None
            }
        }
    }

    /// Counts one reference to page `p`; true if it is a node-area page.
    fn reference(&mut self, p: u64, from: &str) -> bool {
        if p < self.sb.node_start || p >= self.sb.meta_pages {
            self.corruption.push(format!("{from}: page reference {p} outside the node area"));
            return false;
        }
        self.found_meta[(p - self.sb.node_start) as usize] += 1;
        true
    }

    /// Walks the subtree at `p` whose keys must lie in `[lo, hi)`; returns
    /// its number of leaf entries.
    fn tree(&mut self, p: u64, kind: TreeKind, lo: u64, hi: u64, from: &str) -> u64 {
        if !self.reference(p, from) {
            return 0;
        }
        if let Some(&n) = self.entries.get(&p) {
            return n;
        }
        self.entries.insert(p, 0);
        let Some(buf) = self.page(p, PageType::Node) else { return 0 };
        let node = match Node::decode(&buf, p) {
            Ok(n) => n,
            Err(e) => {
                self.corruption.push(e.to_string());
                return 0;
            }
        };
        if node.kind != kind {
            self.corruption.push(format!("node {p}: belongs to the {:?} tree, reached from {from}", node.kind));
            return 0;
        }
        if node.keys.is_empty() {
            self.corruption.push(format!("node {p}: empty node in a tree"));
        }
        if node.keys.first().is_some_and(|&k| k < lo) || node.keys.last().is_some_and(|&k| k >= hi) {
            self.corruption.push(format!("node {p}: keys outside [{lo}, {hi})"));
        }
        let mut n = 0;
        for i in 0..node.keys.len() {
            let (k, v) = (node.keys[i], node.vals[i]);
            if node.internal {
                let next = node.keys.get(i + 1).copied().unwrap_or(hi);
                n += self.tree(v, kind, k.max(lo), next, &format!("node {p}"));
            } else {
                n += 1;
                match kind {
                    TreeKind::Mapping if v < self.sb.data_blocks => self.found_data[v as usize] += 1,
                    TreeKind::Mapping => {
                        self.corruption.push(format!("node {p}: block {k} maps to {v}, beyond the data file"))
                    }
                    TreeKind::Devices => self.device(k, v),
                }
            }
        }
        self.entries.insert(p, n);
        n
    }

    fn device(&mut self, id: u64, p: u64) {
        let from = format!("device {id}");
        if !self.reference(p, &from) {
            return;
        }
        let Some(buf) = self.page(p, PageType::Record) else { return };
        let rec = Record::decode(&buf);
        self.records.push(rec);
        if rec.dev_id != id {
            self.corruption.push(format!("record page {p}: holds device {} under key {id}", rec.dev_id));
        }
        if id >= self.sb.next_dev_id {
            self.corruption.push(format!("device {id}: id not below next id {}", self.sb.next_dev_id));
        }
        let blocks = rec.virtual_size.div_ceil(self.sb.block_size);
        let mapped = if rec.mapping_root == 0 {
            0
        } else {
            self.tree(rec.mapping_root, TreeKind::Mapping, 0, blocks, &from)
        };
        if mapped != rec.mapped_blocks {
            self.corruption.push(format!(
                "device {id}: record says {} mapped blocks, its tree maps {mapped}",
                rec.mapped_blocks
            ));
        }
    }
}

/// Stored counts of one region; `None` for entries of invalid pages.
fn stored_counts(walk: &mut Walk<'_>, start: u64, pages: u64, len: u64) -> Vec<Option<u32>> {
    let mut out = vec![None; len as usize];
    let mut counts = vec![0u32; len as usize];
    for j in 0..pages {
        if let Some(buf) = walk.page(start + j, PageType::Refcount) {
            decode_page(&buf, j, &mut counts);
            let lo = (j as usize * RC_PER_PAGE).min(len as usize);
            let hi = (lo + RC_PER_PAGE).min(len as usize);
            for i in lo..hi {
                out[i] = Some(counts[i]);
            }
        }
    }
    out
}

/// Checks the last committed generation of the metadata file at `meta`.
/// Returns the report and the recomputed counts (metadata, data).
pub(super) fn check_file(meta: &File) -> Result<(CheckReport, Superblock, Vec<u32>, Vec<u32>), PoolError> {
    let (report, sb, found_meta, found_data, _) = walk_file(meta)?;
    Ok((report, sb, found_meta, found_data))
}

type WalkResult = (CheckReport, Superblock, Vec<u32>, Vec<u32>, Vec<Record>);

fn walk_file(meta: &File) -> Result<WalkResult, PoolError> {
    let (sb, notes) = read_superblock(meta)?;
    let mut walk = Walk {
        meta,
        sb,
        found_meta: vec![0; sb.node_pages() as usize],
        found_data: vec![0; sb.data_blocks as usize],
        entries: HashMap::new(),
        corruption: Vec::new(),
        records: Vec::new(),
    };
    let mut devices = 0;
    if sb.devices_root != 0 {
        devices = walk.tree(sb.devices_root, TreeKind::Devices, 0, u64::MAX, "superblock");
    }
    if sb.base_dev != 0 && sb.base_dev >= sb.next_dev_id {
        walk.corruption.push(format!("base device {} is not a device id", sb.base_dev));
    }
    let g = sb.generation;
    let stored_meta = stored_counts(&mut walk, sb.meta_rc_region(g), sb.meta_rc_pages, sb.node_pages());
    let stored_data = stored_counts(&mut walk, sb.data_rc_region(g), sb.data_rc_pages, sb.data_blocks);
    let mut leaks = Vec::new();
    let mut compare = |kind: LeakKind, stored: &[Option<u32>], found: &[u32], base: u64, corruption: &mut Vec<String>| {
        for (i, (s, &f)) in stored.iter().zip(found).enumerate() {
            let index = base + i as u64;
            match *s {
                Some(s) if s > f => leaks.push(Leak { kind, index, stored: s, found: f }),
                Some(s) if s < f => {
                    corruption.push(format!("{kind:?} {index}: count {s} but {f} references"))
                }
                _ => {}
            }
        }
    };
    let mut corruption = std::mem::take(&mut walk.corruption);
    compare(LeakKind::MetadataPage, &stored_meta, &walk.found_meta, sb.node_start, &mut corruption);
    compare(LeakKind::DataBlock, &stored_data, &walk.found_data, 0, &mut corruption);
    let report = CheckReport {
        generation: g,
        devices,
        metadata_pages_referenced: walk.found_meta.iter().filter(|&&c| c > 0).count() as u64,
        data_blocks_referenced: walk.found_data.iter().filter(|&&c| c > 0).count() as u64,
        corruption,
        leaks,
        notes,
    };
    Ok((report, sb, walk.found_meta, walk.found_data, walk.records))
}

/// Checks the last committed generation of the pool in `root`. Safe while
/// the pool is in use: a generation committed during the walk makes it retry.
pub fn check(root: &Path) -> Result<CheckReport, PoolError> {
    let path = root.join(METADATA_FILE);
    let meta = File::open(&path).map_err(|source| PoolError::Io { context: format!("open {}", path.display()), source })?;
    let mut last = None;
    for _ in 0..5 {
        let (report, _, _, _) = check_file(&meta)?;
        let (now, _) = read_superblock(&meta)?;
        if now.generation == report.generation {
            return Ok(report);
        }
        last = Some(report);
    }
    last.ok_or_else(|| PoolError::Corrupt("check could not run".into()))
}

/// Checks the pool in `root` and, if the only findings are leaks, writes a
/// new generation with the recomputed counts. Needs the pool closed.
/// Returns the report of the check made before repairing.
pub fn repair(root: &Path) -> Result<CheckReport, PoolError> {
    let path = root.join(METADATA_FILE);
    let io = |context: &str, source| PoolError::Io { context: format!("{context} {}", path.display()), source };
    let meta = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open", e))?;
    let lock = File::open(&path).map_err(|e| io("open", e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| PoolError::Busy(format!("{}: {errno}", path.display())))?;
    let (report, sb, found_meta, found_data) = check_file(&meta)?;
    if !report.corruption.is_empty() {
        return Err(PoolError::Corrupt(format!(
            "{} problem(s) repair cannot fix, first: {}",
            report.corruption.len(),
            report.corruption[0]
        )));
    }
    if report.leaks.is_empty() {
        return Ok(report);
    }
    let g = sb.generation + 1;
    let mut buf = vec![0u8; PAGE_SIZE];
    for (counts, start, pages) in [
        (&found_meta, sb.meta_rc_region(g), sb.meta_rc_pages),
        (&found_data, sb.data_rc_region(g), sb.data_rc_pages),
    ] {
        for j in 0..pages {
            buf.fill(0);
            let lo = (j as usize * RC_PER_PAGE).min(counts.len());
            let hi = (lo + RC_PER_PAGE).min(counts.len());
            for (k, c) in counts[lo..hi].iter().enumerate() {
                page::put_u32(&mut buf, page::HEADER_SIZE + 4 * k, *c);
            }
            page::seal(&mut buf, PageType::Refcount, start + j, g);
            meta.write_all_at(&buf, (start + j) * PAGE_SIZE as u64).map_err(|e| io("write", e))?;
        }
    }
    meta.sync_data().map_err(|e| io("sync", e))?;
    let mut next = sb;
    next.generation = g;
    next.encode(&mut buf);
    page::seal(&mut buf, PageType::Superblock, g % 2, g);
    meta.write_all_at(&buf, (g % 2) * PAGE_SIZE as u64).map_err(|e| io("write", e))?;
    meta.sync_data().map_err(|e| io("sync", e))?;
    tracing::info!(generation = g, leaks = report.leaks.len(), "repaired blockcow pool reference counts");
    Ok(report)
}

/// Blocks of the tree at `root` that no other device shares, judged by the
/// recomputed counts.
fn exclusive_blocks(meta: &File, sb: &Superblock, found_meta: &[u32], found_data: &[u32], root: u64) -> u64 {
    let mut count = 0;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if p < sb.node_start || p >= sb.meta_pages || found_meta[(p - sb.node_start) as usize] != 1 {
            continue;
        }
        let mut buf = vec![0u8; PAGE_SIZE];
        if meta.read_exact_at(&mut buf, p * PAGE_SIZE as u64).is_err() || verify(&buf, PageType::Node, p).is_err() {
            continue;
        }
        let Ok(node) = Node::decode(&buf, p) else { continue };
        if node.internal {
            stack.extend(node.vals.iter().copied());
        } else {
            count += node.vals.iter().filter(|&&b| found_data.get(b as usize) == Some(&1)).count() as u64;
        }
    }
    count
}

/// The [`PoolInfo`] of the last committed generation, read from the files
/// without opening the pool (works while a daemon holds it).
pub fn info(root: &Path) -> Result<PoolInfo, PoolError> {
    let path = root.join(METADATA_FILE);
    let meta = File::open(&path).map_err(|source| PoolError::Io { context: format!("open {}", path.display()), source })?;
    for _ in 0..5 {
        let (report, sb, found_meta, found_data, mut records) = walk_file(&meta)?;
        if let Some(c) = report.corruption.first() {
            return Err(PoolError::Corrupt(c.clone()));
        }
        records.sort_by_key(|r| r.dev_id);
        let devices = records
            .iter()
            .map(|r| DeviceInfo {
                id: r.dev_id,
                origin: r.origin,
                virtual_size: r.virtual_size,
                mapped_blocks: r.mapped_blocks,
                exclusive_blocks: if r.mapping_root == 0 {
                    0
                } else {
                    exclusive_blocks(&meta, &sb, &found_meta, &found_data, r.mapping_root)
                },
                created_generation: r.created_generation,
            })
            .collect();
        if read_superblock(&meta)?.0.generation != sb.generation {
            continue;
        }
        let bs = sb.block_size;
        let host_avail = host_available(root);
        let data_total = sb.data_blocks * bs;
        let data_used = found_data.iter().filter(|&&c| c > 0).count() as u64 * bs;
        let meta_total = sb.meta_pages * PAGE_SIZE as u64;
        let meta_used = (sb.node_start + found_meta.iter().filter(|&&c| c > 0).count() as u64) * PAGE_SIZE as u64;
        return Ok(PoolInfo {
            pool_name: pool_name(root),
            block_size: bs,
            base_device_size: sb.base_size,
            backing_filesystem: backing_filesystem(root),
            data_file: root.join(DATA_FILE),
            metadata_file: root.join(METADATA_FILE),
            data_space_used: data_used,
            data_space_total: data_total,
            data_space_available: (data_total - data_used).min(host_avail),
            metadata_space_used: meta_used,
            metadata_space_total: meta_total,
            metadata_space_available: (meta_total - meta_used).min(host_avail),
            min_free_space_pct: sb.min_free_pct,
            transaction_id: sb.transaction_id,
            generation: sb.generation,
            devices,
        });
    }
    Err(PoolError::Busy("the pool committed during every attempt to read it".into()))
}
