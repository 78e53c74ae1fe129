//! Pool library tests: a random model test, space, check/repair, O(1)
//! snapshots and crash recovery (a killed child process).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_drivers::blockcow::page::{self, PageType, Superblock, HEADER_SIZE, PAGE_SIZE};
use strata_drivers::blockcow::{self, LeakKind, Pool, PoolConfig, PoolError};

const BS: u64 = 64 * 1024;
const MIB: u64 = 1024 * 1024;

fn config(data_blocks: u64, min_free: u32) -> PoolConfig {
    PoolConfig {
        data_size: data_blocks * BS,
        metadata_size: 16 * MIB,
        block_size: BS,
        min_free_space_pct: min_free,
        base_size: 16 * MIB,
    }
}

/// Device contents: block index -> block bytes; absent blocks are zeros.
#[derive(Clone, Default, Debug)]
struct Image(HashMap<u64, Vec<u8>>);

impl Image {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let (b, within) = (pos / BS, (pos % BS) as usize);
            let n = (BS as usize - within).min(data.len() - done);
            let block = self.0.entry(b).or_insert_with(|| vec![0; BS as usize]);
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }
    fn discard(&mut self, offset: u64, len: u64) {
        let mut pos = offset;
        while pos < offset + len {
            let (b, within) = (pos / BS, pos % BS);
            let n = (BS - within).min(offset + len - pos);
            if n == BS {
                self.0.remove(&b);
            } else if let Some(block) = self.0.get_mut(&b) {
                block[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
    }
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let (b, within) = (pos / BS, (pos % BS) as usize);
            let n = (BS as usize - within).min(len - done);
            if let Some(block) = self.0.get(&b) {
                out[done..done + n].copy_from_slice(&block[within..within + n]);
            }
            done += n;
        }
        out
    }
}

fn assert_clean(pool: &Pool, when: &str) {
    let report = pool.check().expect("check runs");
    assert!(report.is_clean(), "check after {when}:\n{report}");
}

fn random_range(rng: &mut StdRng, size: u64) -> (u64, u64) {
    // Half of the ranges fall into a hot region at the start of the device,
    // so that writes often land on blocks that are mapped and shared.
    let span = if rng.gen_bool(0.5) { 8 * BS } else { size };
    match rng.gen_range(0..4) {
        // block aligned, one to three blocks
        0 => {
            let blocks = span / BS;
            let n = rng.gen_range(1..=3).min(blocks);
            (rng.gen_range(0..=blocks - n) * BS, n * BS)
        }
        // unaligned, up to about three blocks
        1 => {
            let len = rng.gen_range(1..3 * BS);
            (rng.gen_range(0..=span - len), len)
        }
        // a run of 32 aligned blocks anywhere: grows the mapping trees
        2 => {
            let blocks = size / BS;
            (rng.gen_range(0..=blocks - 32) * BS, 32 * BS)
        }
        // sub-block
        _ => {
            let len = rng.gen_range(1..=4096);
            (rng.gen_range(0..=span - len), len)
        }
    }
}

/// Bytes that differ from write to write (a random tag) and along the buffer.
fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn compare_device(pool: &mut Pool, dev: u64, image: &Image, size: u64, rng: &mut StdRng) {
    let mut blocks: Vec<u64> = image.0.keys().copied().collect();
    for _ in 0..4 {
        blocks.push(rng.gen_range(0..size / BS));
    }
    let mut buf = vec![0u8; BS as usize];
    for b in blocks {
        pool.read(dev, b * BS, &mut buf).unwrap();
        assert!(buf == image.read(b * BS, BS as usize), "device {dev} block {b} differs from the model");
    }
}

/// Thousands of random operations checked byte for byte against an
/// in-memory model, with `check` clean after every commit.
#[test]
fn random_operations_match_the_model() {
    for seed in [1u64, 2, 3] {
        run_model(seed, 1500);
    }
}

fn run_model(seed: u64, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pool = Pool::create(&root, &config(8192, 5)).unwrap();
    let size = 32 * MIB; // 512 blocks: mapping trees grow past one leaf
    let mut model: BTreeMap<u64, Image> = BTreeMap::new();
    let first = pool.create_device(size).unwrap();
    model.insert(first, Image::default());
    let mut commits = 0;
    let mut max_mapped = 0;
    for i in 0..ops {
        let ids: Vec<u64> = model.keys().copied().collect();
        let pick = |rng: &mut StdRng| ids[rng.gen_range(0..ids.len())];
        let used = pool.data_blocks_used() as f64 / pool.data_blocks_total() as f64;
        match rng.gen_range(0..100) {
            0..=44 if !ids.is_empty() => {
                let dev = pick(&mut rng);
                let (off, len) = random_range(&mut rng, size);
                let data = pattern(rng.gen(), len as usize);
                pool.write(dev, off, &data).unwrap_or_else(|e| panic!("op {i}: write: {e}"));
                model.get_mut(&dev).unwrap().write(off, &data);
            }
            45..=54 if !ids.is_empty() => {
                let dev = pick(&mut rng);
                let (off, len) = random_range(&mut rng, size);
                let mut buf = vec![0u8; len as usize];
                pool.read(dev, off, &mut buf).unwrap();
                assert!(buf == model[&dev].read(off, len as usize), "seed {seed} op {i}: read of device {dev} at {off}+{len} differs");
            }
            55..=63 if !ids.is_empty() => {
                let dev = pick(&mut rng);
                let (off, len) = random_range(&mut rng, size);
                pool.discard(dev, off, len).unwrap();
                model.get_mut(&dev).unwrap().discard(off, len);
            }
            64..=73 if !ids.is_empty() && model.len() < 12 => {
                let origin = pick(&mut rng);
                match pool.snapshot(origin) {
                    Ok(id) => {
                        let image = model[&origin].clone();
                        model.insert(id, image);
                    }
                    Err(PoolError::MinFreeSpace { .. }) => assert!(used > 0.9),
                    Err(e) => panic!("op {i}: snapshot: {e}"),
                }
                commits += 1;
                assert_clean(&pool, &format!("seed {seed} op {i} snapshot"));
            }
            74..=77 if model.len() < 12 => {
                let id = pool.create_device(size).unwrap();
                model.insert(id, Image::default());
                commits += 1;
                assert_clean(&pool, &format!("seed {seed} op {i} create"));
            }
            78..=82 if !ids.is_empty() && (model.len() > 4 || used > 0.6) => {
                let dev = pick(&mut rng);
                pool.delete_device(dev).unwrap();
                model.remove(&dev);
                commits += 1;
                assert_clean(&pool, &format!("seed {seed} op {i} delete"));
            }
            83..=97 => {
                pool.commit().unwrap();
                commits += 1;
                assert_clean(&pool, &format!("seed {seed} op {i} commit"));
                if !ids.is_empty() {
                    let dev = pick(&mut rng);
                    compare_device(&mut pool, dev, &model[&dev], size, &mut rng);
                }
            }
            98..=99 => {
                pool.commit().unwrap();
                drop(pool);
                pool = Pool::open(&root).unwrap();
                assert_clean(&pool, &format!("seed {seed} op {i} reopen"));
            }
            _ => {}
        }
        if let Some(m) = model.values().map(|im| im.0.len()).max() {
            max_mapped = max_mapped.max(m);
        }
        if used > 0.8 {
            // Keep the random walk away from a full pool: drop the largest device.
            let dev = *model.iter().max_by_key(|(_, im)| im.0.len()).unwrap().0;
            pool.delete_device(dev).unwrap();
            model.remove(&dev);
        }
    }
    assert!(commits > 100, "too few commits exercised ({commits})");
    assert!(max_mapped > 252, "mapping trees never grew past one leaf ({max_mapped} blocks)");
    pool.commit().unwrap();
    assert_clean(&pool, "the final commit");
    assert_eq!(pool.device_ids(), model.keys().copied().collect::<Vec<_>>());
    for (&dev, image) in &model {
        compare_device(&mut pool, dev, image, size, &mut rng);
    }
    // Every block in use is referenced by some device's mapping.
    drop(pool);
    let mut pool = Pool::open(&root).unwrap();
    for (&dev, image) in &model {
        compare_device(&mut pool, dev, image, size, &mut rng);
    }
}

#[test]
fn snapshot_cost_does_not_depend_on_device_size_or_mapped_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = Pool::create(&dir.path().join("pool"), &config(4096, 0)).unwrap();
    let small = pool.create_device(4 * MIB).unwrap();
    let big = pool.create_device(1024 * 1024 * MIB).unwrap();
    pool.write(small, 0, b"x").unwrap();
    let block = vec![7u8; BS as usize];
    for b in 0..3000u64 {
        pool.write(big, b * 3 * BS, &block).unwrap();
    }
    pool.commit().unwrap();
    assert_eq!(pool.info().unwrap().devices[1].mapped_blocks, 3000);

    let cost = |pool: &mut Pool, origin: u64| {
        // An empty commit first, so that the measured commit only carries the snapshot.
        let t = pool.transaction_id();
        pool.set_transaction_id(t, t + 1).unwrap();
        let before = pool.stats();
        pool.snapshot(origin).unwrap();
        let after = pool.stats();
        (after.page_accesses - before.page_accesses, after.pages_written - before.pages_written)
    };
    let c_small = cost(&mut pool, small);
    let c_big = cost(&mut pool, big);
    assert_eq!(c_small, c_big, "snapshot of a 4 MiB device with 1 block vs a 1 TiB device with 3000 blocks");
    assert!(c_big.0 <= 8 && c_big.1 <= 8, "snapshot touched too many pages: {c_big:?}");
    assert_clean(&pool, "snapshots");
}

#[test]
fn cow_copies_one_block_and_leaves_the_origin_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = Pool::create(&dir.path().join("pool"), &config(4096, 0)).unwrap();
    let lower = pool.create_device(256 * MIB).unwrap();
    let file: Vec<u8> = (0..100 * MIB).map(|i| (i % 251) as u8).collect();
    pool.write(lower, 0, &file).unwrap();
    pool.commit().unwrap();
    let upper = pool.snapshot(lower).unwrap();
    let used = pool.data_blocks_used();
    pool.write(upper, 50 * MIB + 12345, b"ABCD").unwrap();
    pool.commit().unwrap();
    assert_eq!(pool.data_blocks_used(), used + 1, "a 4-byte write into a shared block copies exactly one block");
    let mut got = vec![0u8; 8];
    pool.read(upper, 50 * MIB + 12343, &mut got).unwrap();
    assert_eq!(&got[2..6], b"ABCD");
    assert_eq!(&got[..2], &file[(50 * MIB + 12343) as usize..(50 * MIB + 12345) as usize]);
    pool.read(lower, 50 * MIB + 12343, &mut got).unwrap();
    assert_eq!(got, file[(50 * MIB + 12343) as usize..(50 * MIB + 12351) as usize]);
    let info = pool.info().unwrap();
    let up = info.devices.iter().find(|d| d.id == upper).unwrap();
    assert_eq!(up.exclusive_blocks, 1);
    assert_eq!(up.mapped_blocks, 1600);
    assert_clean(&pool, "cow");
}

#[test]
fn unmapped_blocks_read_as_zeros_without_touching_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(64, 0)).unwrap();
    let dev = pool.create_device(8 * MIB).unwrap();
    // Garbage in the data file where no device maps anything must not show.
    let data = std::fs::OpenOptions::new().write(true).open(root.join("data")).unwrap();
    for b in 0..64u64 {
        data.write_all_at(&[0xee; 512], b * BS).unwrap();
    }
    let mut buf = vec![1u8; 3 * BS as usize];
    pool.read(dev, BS / 2, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
}

/// Data I/O planned under the pool lock runs without it. A block freed
/// meanwhile (its device deleted and committed) must not be handed to
/// another device until that I/O is done: the commit waits for it.
#[test]
fn planned_io_keeps_its_blocks_until_it_has_run() {
    use std::sync::{mpsc, Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let blocks = 16u64;
    let pool = Arc::new(Mutex::new(Pool::create(&root, &config(blocks, 0)).unwrap()));
    let size = blocks * BS;
    let (old, read_plan, write_plan) = {
        let mut p = pool.lock().unwrap();
        let old = p.create_device(size).unwrap();
        p.write(old, 0, &vec![0xaa; size as usize]).unwrap();
        p.commit().unwrap();
        // Every block is in use; both plans name all of them.
        let read_plan = p.plan_read(old, 0, size as usize).unwrap();
        let write_plan = p.plan_write(old, 0, &vec![0xcc; size as usize]).unwrap();
        assert!(!write_plan.is_empty(), "blocks the device owns are written in place, after the lock");
        (old, read_plan, write_plan)
    };
    // Another thread deletes the device and fills a new one: it can only
    // get blocks once the commit of the deletion is done.
    let (done_tx, done_rx) = mpsc::channel();
    let worker = {
        let pool = pool.clone();
        std::thread::spawn(move || -> Result<u64, PoolError> {
            let mut p = pool.lock().unwrap();
            p.delete_device(old)?;
            let new = p.create_device(size)?;
            p.write(new, 0, &vec![0xbb; size as usize])?;
            p.commit()?;
            let _ = done_tx.send(());
            Ok(new)
        })
    };
    assert!(
        done_rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "the deletion committed and its blocks were reused while planned I/O on them was pending"
    );
    let mut buf = vec![0u8; size as usize];
    read_plan.read_into(&mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xaa), "a pending read saw another device's data");
    write_plan.write_from(&vec![0xcc; size as usize]).unwrap();
    let new = worker.join().unwrap().unwrap();
    let mut p = pool.lock().unwrap();
    let mut buf = vec![0u8; size as usize];
    p.read(new, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0xbb), "a pending write landed in another device's block");
    assert_clean(&p, "the deletion and the new device");
}

#[test]
fn data_exhaustion_fails_writes_keeps_metadata_consistent_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(32, 0)).unwrap();
    let a = pool.create_device(8 * MIB).unwrap();
    let b = pool.create_device(8 * MIB).unwrap();
    pool.write(b, 0, &[5u8; 100]).unwrap();
    let block = vec![9u8; BS as usize];
    let mut written = 0;
    let err = loop {
        match pool.write(a, written * BS, &block) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, PoolError::NoDataSpace), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert_eq!(written, 31);
    pool.commit().unwrap();
    assert_clean(&pool, "exhaustion");
    // Other devices still read, and overwrite their own blocks in place.
    let mut got = [0u8; 100];
    pool.read(b, 0, &mut got).unwrap();
    assert_eq!(got, [5u8; 100]);
    pool.write(b, 10, b"in place").unwrap();
    assert!(matches!(pool.write(b, 4 * BS, b"new block"), Err(PoolError::NoDataSpace)));
    // Freed space is usable once the commit that freed it is done.
    pool.discard(a, 0, 4 * BS).unwrap();
    assert!(matches!(pool.write(b, 4 * BS, b"new block"), Err(PoolError::NoDataSpace)));
    pool.commit().unwrap();
    pool.write(b, 4 * BS, b"new block").unwrap();
    pool.commit().unwrap();
    assert_clean(&pool, "recovery");
    drop(pool);
    let mut pool = Pool::open(&root).unwrap();
    let mut got = [0u8; 9];
    pool.read(b, 4 * BS, &mut got).unwrap();
    assert_eq!(&got, b"new block");
}

#[test]
fn minimum_free_space_refuses_new_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = Pool::create(&dir.path().join("pool"), &config(100, 10)).unwrap();
    let a = pool.create_device(16 * MIB).unwrap();
    pool.write(a, 0, &vec![1u8; 91 * BS as usize]).unwrap();
    pool.commit().unwrap();
    assert!(matches!(pool.create_device(MIB), Err(PoolError::MinFreeSpace { what: "data", .. })));
    assert!(matches!(pool.snapshot(a), Err(PoolError::MinFreeSpace { .. })));
    assert_eq!(pool.device_ids(), vec![a]);
    pool.discard(a, 0, 2 * BS).unwrap();
    pool.commit().unwrap();
    pool.snapshot(a).unwrap();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let bad = PoolConfig { block_size: 96 * 1024, ..config(64, 0) };
    assert!(matches!(Pool::create(&root, &bad), Err(PoolError::InvalidArgument(_))));
    assert!(!root.join("data").exists());
    let mut pool = Pool::create(&root, &config(64, 0)).unwrap();
    assert!(matches!(Pool::create(&root, &config(64, 0)), Err(PoolError::AlreadyExists(_))));
    assert!(matches!(Pool::open(&root), Err(PoolError::Busy(_))), "second opener must be refused");
    assert!(matches!(pool.create_device(1000), Err(PoolError::InvalidArgument(_))));
    let dev = pool.create_device(MIB).unwrap();
    let generation = pool.generation();
    assert!(matches!(pool.write(dev, MIB - 1, b"xy"), Err(PoolError::OutOfRange { .. })));
    assert!(matches!(pool.read(dev, u64::MAX, &mut [0u8; 2]), Err(PoolError::OutOfRange { .. })));
    assert!(matches!(pool.discard(99, 0, 1), Err(PoolError::DeviceNotFound(99))));
    assert!(matches!(pool.snapshot(99), Err(PoolError::DeviceNotFound(99))));
    assert!(matches!(pool.set_transaction_id(5, 6), Err(PoolError::InvalidArgument(_))));
    pool.commit().unwrap();
    assert_eq!(pool.generation(), generation, "failed calls committed something");
    assert_eq!(pool.info().unwrap().devices[0].mapped_blocks, 0);
}

#[test]
fn discard_returns_space_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(256, 0)).unwrap();
    let dev = pool.create_device(16 * MIB).unwrap();
    pool.write(dev, 0, &vec![3u8; 8 * MIB as usize]).unwrap();
    pool.commit().unwrap();
    let allocated = || std::fs::metadata(root.join("data")).unwrap().blocks() * 512;
    let before = allocated();
    assert!(before >= 8 * MIB, "data file holds {before} bytes");
    pool.discard(dev, 1000, 6 * MIB).unwrap();
    pool.commit().unwrap();
    let after = allocated();
    assert!(before - after >= 5 * MIB, "discard returned only {} bytes", before - after);
    let mut edge = vec![9u8; 2000];
    pool.read(dev, 0, &mut edge).unwrap();
    assert!(edge[..1000].iter().all(|&x| x == 3) && edge[1000..].iter().all(|&x| x == 0));
    assert_clean(&pool, "discard");
}

/// Rewrites one stored refcount of the committed generation.
fn poke_count(root: &Path, data: bool, index: u64, value: u32) {
    let meta = std::fs::OpenOptions::new().read(true).write(true).open(root.join("metadata")).unwrap();
    let mut sbs = Vec::new();
    for slot in 0..2u64 {
        let mut buf = vec![0u8; PAGE_SIZE];
        meta.read_exact_at(&mut buf, slot * PAGE_SIZE as u64).unwrap();
        if let Ok(g) = page::verify(&buf, PageType::Superblock, slot) {
            sbs.push(Superblock::decode(&buf, g).unwrap());
        }
    }
    let sb = sbs.into_iter().max_by_key(|s| s.generation).unwrap();
    let g = sb.generation;
    let start = if data { sb.data_rc_region(g) } else { sb.meta_rc_region(g) };
    let idx = if data { index } else { index - sb.node_start };
    let per = page::RC_PER_PAGE as u64;
    let p = start + idx / per;
    let mut buf = vec![0u8; PAGE_SIZE];
    meta.read_exact_at(&mut buf, p * PAGE_SIZE as u64).unwrap();
    page::put_u32(&mut buf, HEADER_SIZE + 4 * (idx % per) as usize, value);
    let pg = page::get_u64(&buf, 16);
    page::seal(&mut buf, PageType::Refcount, p, pg);
    meta.write_all_at(&buf, p * PAGE_SIZE as u64).unwrap();
}

#[test]
fn check_finds_leaks_repair_fixes_them_and_corruption_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(256, 0)).unwrap();
    let dev = pool.create_device(16 * MIB).unwrap();
    pool.write(dev, 0, &vec![1u8; 4 * BS as usize]).unwrap();
    pool.snapshot(dev).unwrap();
    drop(pool);
    assert!(blockcow::check(&root).unwrap().is_clean());

    // A data block marked used that nothing maps: a leak.
    poke_count(&root, true, 200, 1);
    let report = blockcow::check(&root).unwrap();
    assert_eq!(report.leaks.len(), 1, "{report}");
    assert_eq!((report.leaks[0].kind, report.leaks[0].index), (LeakKind::DataBlock, 200));
    assert!(report.corruption.is_empty(), "{report}");
    blockcow::repair(&root).unwrap();
    assert!(blockcow::check(&root).unwrap().is_clean());
    let mut pool = Pool::open(&root).unwrap();
    assert_eq!(pool.data_blocks_used(), 4);
    let mut got = vec![0u8; 10];
    pool.read(dev, 0, &mut got).unwrap();
    assert_eq!(got, vec![1u8; 10]);
    drop(pool);

    // A count below the references found: corruption, not repaired.
    poke_count(&root, true, 0, 0);
    let report = blockcow::check(&root).unwrap();
    assert!(!report.corruption.is_empty(), "{report}");
    assert!(matches!(blockcow::repair(&root), Err(PoolError::Corrupt(_))));

    // A flipped bit in a node page.
    let dir2 = tempfile::tempdir().unwrap();
    let root2 = dir2.path().join("pool");
    let mut pool = Pool::create(&root2, &config(256, 0)).unwrap();
    let dev = pool.create_device(16 * MIB).unwrap();
    pool.write(dev, 0, b"hello").unwrap();
    pool.commit().unwrap();
    let node_start = {
        let meta = std::fs::File::open(root2.join("metadata")).unwrap();
        let mut buf = vec![0u8; PAGE_SIZE];
        meta.read_exact_at(&mut buf, PAGE_SIZE as u64 * (pool.generation() % 2)).unwrap();
        Superblock::decode(&buf, pool.generation()).unwrap().node_start
    };
    drop(pool);
    let meta = std::fs::OpenOptions::new().read(true).write(true).open(root2.join("metadata")).unwrap();
    let mut flipped = 0;
    for p in node_start..node_start + 16 {
        let mut buf = vec![0u8; PAGE_SIZE];
        meta.read_exact_at(&mut buf, p * PAGE_SIZE as u64).unwrap();
        if page::verify(&buf, PageType::Node, p).is_ok() {
            buf[HEADER_SIZE + 20] ^= 0x40;
            meta.write_all_at(&buf, p * PAGE_SIZE as u64).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0);
    let report = blockcow::check(&root2).unwrap();
    assert!(report.corruption.iter().any(|c| c.contains("checksum")), "{report}");
}

#[test]
fn torn_superblock_falls_back_to_the_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(256, 0)).unwrap();
    let dev = pool.create_device(16 * MIB).unwrap();
    pool.write(dev, 0, b"first").unwrap();
    pool.commit().unwrap();
    let g1 = pool.generation();
    pool.write(dev, BS, b"second").unwrap();
    pool.commit().unwrap();
    pool.snapshot(dev).unwrap();
    let g2 = pool.generation();
    assert!(g2 > g1);
    drop(pool);
    // Tear the newest slot, as a crash in the middle of its write would.
    let meta = std::fs::OpenOptions::new().write(true).open(root.join("metadata")).unwrap();
    meta.write_all_at(&[0xff; 300], (g2 % 2) * PAGE_SIZE as u64 + 100).unwrap();
    let report = blockcow::check(&root).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.generation, g2 - 1);
    let mut pool = Pool::open(&root).unwrap();
    assert_eq!(pool.generation(), g2 - 1);
    assert_eq!(pool.device_ids(), vec![dev]);
    let mut got = vec![0u8; 6];
    pool.read(dev, 0, &mut got[..5]).unwrap();
    assert_eq!(&got[..5], b"first");
    pool.read(dev, BS, &mut got).unwrap();
    assert_eq!(&got, b"second", "the write was committed before the snapshot");
    // The pool goes on from there.
    pool.snapshot(dev).unwrap();
    assert_clean(&pool, "continuing after the fallback");
}

/// A commit syncs the metadata file once: its superblock lists the pages it
/// wrote. If one of them did not reach the disk (simulated by putting back
/// what was there before), the superblock is passed over.
#[test]
fn superblock_without_all_its_pages_falls_back_to_the_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pool");
    let mut pool = Pool::create(&root, &config(256, 0)).unwrap();
    let dev = pool.create_device(16 * MIB).unwrap();
    pool.write(dev, 0, b"kept").unwrap();
    pool.commit().unwrap();
    let before = pool.generation();
    let meta_path = root.join("metadata");
    let old_meta = std::fs::read(&meta_path).unwrap();
    let snap = pool.snapshot(dev).unwrap();
    let g = pool.generation();
    assert_eq!(g, before + 1, "a snapshot is one commit");
    drop(pool);
    let meta = std::fs::OpenOptions::new().read(true).write(true).open(&meta_path).unwrap();
    let mut sb = vec![0u8; PAGE_SIZE];
    meta.read_exact_at(&mut sb, (g % 2) * PAGE_SIZE as u64).unwrap();
    let listed = page::decode_written(&sb).unwrap();
    assert!(!listed.is_empty(), "the snapshot's commit lists its pages");
    assert!(listed.len() < 64, "a snapshot writes a handful of pages, not {}", listed.len());
    // The snapshot's commit is whole: it is the one opened.
    assert_eq!(blockcow::check(&root).unwrap().generation, g);
    let (p, _) = listed[listed.len() / 2];
    let at = p as usize * PAGE_SIZE;
    meta.write_all_at(&old_meta[at..at + PAGE_SIZE], at as u64).unwrap();
    let report = blockcow::check(&root).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.generation, before, "the torn commit is passed over");
    let mut pool = Pool::open(&root).unwrap();
    assert_eq!(pool.generation(), before);
    assert_eq!(pool.device_ids(), vec![dev], "snapshot {snap} never happened");
    let mut got = [0u8; 4];
    pool.read(dev, 0, &mut got).unwrap();
    assert_eq!(&got, b"kept");
    pool.snapshot(dev).unwrap();
    assert_clean(&pool, "continuing after the fallback");
}

// ----- crash test: a child process killed at random points -----------------------

const CHILD_ENV: &str = "STRATA_BLOCKCOW_CRASH_CHILD";
const DEV_SIZE: u64 = 8 * MIB;

/// One round of the crash workload: an optional pool operation (committed
/// on its own), then writes to distinct blocks, then a commit that sets the
/// transaction id to the round number.
#[derive(Debug, Clone)]
enum PoolOp {
    None,
    Create,
    Snapshot(u64),
    Delete(u64),
}

struct Round {
    op: PoolOp,
    writes: Vec<(u64, u64, Vec<u8>)>,
}

/// Generates round `r` from the device ids alive before it; ids are
/// assigned sequentially by the pool, so the model can predict them.
fn make_round(rng: &mut StdRng, ids: &[u64]) -> Round {
    let op = match rng.gen_range(0..10) {
        0 | 1 => PoolOp::Create,
        2 | 3 if !ids.is_empty() => PoolOp::Snapshot(ids[rng.gen_range(0..ids.len())]),
        4 if ids.len() > 2 => PoolOp::Delete(ids[rng.gen_range(0..ids.len())]),
        _ => PoolOp::None,
    };
    let mut writes = Vec::new();
    let mut touched = HashSet::new();
    let mut live: Vec<u64> = ids.to_vec();
    if let PoolOp::Delete(d) = op {
        live.retain(|&x| x != d);
    }
    if !live.is_empty() {
        for _ in 0..rng.gen_range(1..12) {
            let dev = live[rng.gen_range(0..live.len())];
            let block = rng.gen_range(0..DEV_SIZE / BS);
            if !touched.insert((dev, block)) {
                continue;
            }
            let within = rng.gen_range(0..BS - 1);
            let len = rng.gen_range(1..=BS - within);
            let byte: u8 = rng.gen();
            writes.push((dev, block * BS + within, vec![byte; len as usize]));
        }
    }
    Round { op, writes }
}

fn apply_op(model: &mut BTreeMap<u64, Image>, next_id: &mut u64, op: &PoolOp) {
    match op {
        PoolOp::None => {}
        PoolOp::Create => {
            model.insert(*next_id, Image::default());
            *next_id += 1;
        }
        PoolOp::Snapshot(o) => {
            let im = model[o].clone();
            model.insert(*next_id, im);
            *next_id += 1;
        }
        PoolOp::Delete(d) => {
            model.remove(d);
        }
    }
}

fn crash_child(root: &Path, seed: u64) -> ! {
    let mut pool = Pool::open(root).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids: Vec<u64> = Vec::new();
    let mut next_id = 1;
    let progress = root.parent().unwrap().join("progress");
    let mut log = std::fs::File::create(&progress).unwrap();
    for r in 1u64.. {
        let round = make_round(&mut rng, &ids);
        match round.op {
            PoolOp::None => {}
            PoolOp::Create => {
                assert_eq!(pool.create_device(DEV_SIZE).unwrap(), next_id);
                ids.push(next_id);
                next_id += 1;
            }
            PoolOp::Snapshot(o) => {
                assert_eq!(pool.snapshot(o).unwrap(), next_id);
                ids.push(next_id);
                next_id += 1;
            }
            PoolOp::Delete(d) => {
                pool.delete_device(d).unwrap();
                ids.retain(|&x| x != d);
            }
        }
        for (dev, off, data) in &round.writes {
            pool.write(*dev, *off, data).unwrap();
        }
        pool.set_transaction_id(r - 1, r).unwrap();
        writeln!(log, "{r}").unwrap();
    }
    unreachable!()
}

/// Kills a child process running the workload at random points, reopens
/// the pool and finds exactly the last committed round (writes of the round
/// in flight may show, byte by byte, only on blocks that round wrote).
#[test]
fn crash_at_random_points_keeps_the_last_commit() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (seed, root) = spec.split_once(':').unwrap();
        crash_child(Path::new(root), seed.parse().unwrap());
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let mut rounds_seen = 0;
    for iteration in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pool");
        drop(Pool::create(&root, &config(2048, 0)).unwrap());
        let seed = 1000 + iteration;
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "crash_at_random_points_keeps_the_last_commit", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{seed}:{}", root.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        child.kill().unwrap();
        child.wait().unwrap();
        let logged = std::fs::File::open(dir.path().join("progress"))
            .map(|f| std::io::BufReader::new(f).lines().count() as u64)
            .unwrap_or(0);

        let report = blockcow::check(&root).unwrap();
        assert!(report.is_clean(), "iteration {iteration}: {report}");
        let mut pool = Pool::open(&root).unwrap();
        let committed = pool.transaction_id();
        assert!(
            committed == logged || committed == logged + 1,
            "iteration {iteration}: child logged {logged} rounds, pool has {committed}"
        );
        rounds_seen += committed;

        // Replay the model up to the committed round.
        let mut model_rng = StdRng::seed_from_u64(seed);
        let mut model: BTreeMap<u64, Image> = BTreeMap::new();
        let mut next_id = 1;
        for _ in 0..committed {
            let ids: Vec<u64> = model.keys().copied().collect();
            let round = make_round(&mut model_rng, &ids);
            apply_op(&mut model, &mut next_id, &round.op);
            for (dev, off, data) in &round.writes {
                model.get_mut(dev).unwrap().write(*off, data);
            }
        }
        // The round in flight: its pool operation may have been committed.
        let ids: Vec<u64> = model.keys().copied().collect();
        let inflight = make_round(&mut model_rng, &ids);
        let mut after_op = model.clone();
        let mut next_after = next_id;
        apply_op(&mut after_op, &mut next_after, &inflight.op);
        let pool_ids = pool.device_ids();
        let base = if pool_ids == after_op.keys().copied().collect::<Vec<_>>() {
            after_op
        } else {
            assert_eq!(pool_ids, model.keys().copied().collect::<Vec<_>>(), "iteration {iteration}: device set");
            model
        };
        let mut maybe = base.clone();
        for (dev, off, data) in &inflight.writes {
            if let Some(im) = maybe.get_mut(dev) {
                im.write(*off, data);
            }
        }
        let mut buf = vec![0u8; BS as usize];
        for (&dev, image) in &base {
            let mut blocks: HashSet<u64> = image.0.keys().copied().collect();
            blocks.extend(maybe[&dev].0.keys().copied());
            for b in blocks {
                pool.read(dev, b * BS, &mut buf).unwrap();
                let old = image.read(b * BS, BS as usize);
                let new = maybe[&dev].read(b * BS, BS as usize);
                for i in 0..buf.len() {
                    assert!(
                        buf[i] == old[i] || buf[i] == new[i],
                        "iteration {iteration}: device {dev} block {b} byte {i} is {} (committed {}, in flight {})",
                        buf[i],
                        old[i],
                        new[i]
                    );
                }
            }
        }
        // The pool continues to work after recovery.
        let id = pool.create_device(MIB).unwrap();
        pool.write(id, 0, b"alive").unwrap();
        pool.commit().unwrap();
        assert_clean(&pool, "recovery");
    }
    assert!(rounds_seen > 20, "children committed only {rounds_seen} rounds in total");
}
