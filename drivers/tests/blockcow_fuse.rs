//! Exposure tests, run for real as root: the pool served over FUSE, loop
//! devices on top, ext4 made once on a base device and seen by snapshots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use strata_drivers::blockcow::{DeviceCache, DeviceFiles, Pool, PoolConfig};

const MIB: u64 = 1024 * 1024;

/// Unmounts on drop (lazily if the plain unmount fails).
struct Mounted(PathBuf);

impl Mounted {
    fn new(device: &Path, target: &Path, readonly: bool) -> Mounted {
        std::fs::create_dir_all(target).unwrap();
        let flags = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
        let data = if readonly { Some("noload") } else { None };
        mount(Some(device), target, Some("ext4"), flags, data)
            .unwrap_or_else(|e| panic!("mount {} on {}: {e}", device.display(), target.display()));
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if umount2(&self.0, MntFlags::empty()).is_err() {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

fn require_tools() {
    for (path, what) in [("/dev/fuse", "the fuse kernel module (modprobe fuse)"), ("/dev/loop-control", "the loop kernel module (modprobe loop)")] {
        assert!(Path::new(path).exists(), "{path} is missing: load {what}");
    }
    let ok = Command::new("mkfs.ext4").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "mkfs.ext4 is missing: install e2fsprogs");
}

fn mkfs_ext4(device: &Path) {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"])
        .arg(device)
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 {} failed", device.display());
}

fn files(dir: &Path) -> DeviceFiles {
    files_with(dir, DeviceCache::Direct)
}

fn files_with(dir: &Path, cache: DeviceCache) -> DeviceFiles {
    require_tools();
    let config = PoolConfig { data_size: 2048 * MIB, metadata_size: 64 * MIB, ..PoolConfig::default() };
    let pool = Pool::create(&dir.join("pool"), &config).unwrap();
    DeviceFiles::mount_with_cache(pool, &dir.join("files"), 4, cache).unwrap()
}

/// `len` bytes at `offset` of a block device, read with O_DIRECT (past its
/// own page cache, so from the loop device and what is below it).
fn read_direct(device: &Path, offset: u64, len: u64) -> Vec<u8> {
    let out = Command::new("dd")
        .arg(format!("if={}", device.display()))
        .args(["iflag=direct,skip_bytes,count_bytes", "bs=64K", "status=none"])
        .arg(format!("skip={offset}"))
        .arg(format!("count={len}"))
        .output()
        .expect("run dd (coreutils)");
    assert!(out.status.success(), "dd: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len() as u64, len, "short read from {}", device.display());
    out.stdout
}

/// Writes `data` at `offset` of a block device and flushes it to the device.
fn write_synced(device: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(device).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, data, offset).unwrap();
    f.sync_all().unwrap();
}

fn pool_bytes(files: &DeviceFiles, dev: u64, offset: u64, len: u64) -> Vec<u8> {
    files
        .with_pool(|p| {
            let mut buf = vec![0u8; len as usize];
            p.read(dev, offset, &mut buf)?;
            Ok(buf)
        })
        .unwrap()
}

fn wait_closed(files: &DeviceFiles, dev: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while files.is_open(dev).unwrap() {
        assert!(Instant::now() < deadline, "the file of device {dev} stayed open after its loop device was detached");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn loop_devices_use_direct_io_only_in_direct_mode() {
    for (cache, want) in [(DeviceCache::Direct, true), (DeviceCache::Page, false)] {
        let dir = tempfile::tempdir().unwrap();
        let files = files_with(dir.path(), cache);
        assert_eq!(files.cache(), cache);
        let dev = files.with_pool(|p| p.create_device(16 * MIB)).unwrap();
        let lo = files.attach(dev, false).unwrap();
        assert_eq!(lo.direct_io().unwrap(), want, "{cache:?}: direct I/O of {}", lo.path().display());
        lo.detach().unwrap();
        wait_closed(&files, dev);
        files.unmount().unwrap();
    }
}

/// Through the page cache, the kernel never shows bytes the daemon does not
/// hold: writes reach the pool before they complete, a discard drops the
/// cached range, and a change made through the pool while the file was
/// closed is seen on the next attach.
#[test]
fn page_cache_stays_coherent_with_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_with(dir.path(), DeviceCache::Page);
    let dev = files.with_pool(|p| p.create_device(16 * MIB)).unwrap();
    let lo = files.attach(dev, false).unwrap();
    let pattern: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    write_synced(lo.path(), 0, &pattern);
    assert!(pool_bytes(&files, dev, 0, 4 * MIB) == pattern, "the pool does not hold what was written");
    // Read through the loop device: the file's pages are now cached.
    assert!(read_direct(lo.path(), 0, 4 * MIB) == pattern);

    // A whole-block discard and a partial one (zeroed by the pool).
    let status = Command::new("blkdiscard").args(["-o", &MIB.to_string(), "-l", &(MIB + 64 * 1024).to_string()]).arg(lo.path()).status();
    assert!(status.expect("run blkdiscard (util-linux)").success(), "blkdiscard failed");
    let mut want = pattern.clone();
    want[MIB as usize..(2 * MIB + 64 * 1024) as usize].fill(0);
    assert!(pool_bytes(&files, dev, 0, 4 * MIB) == want, "the pool did not discard the range");
    assert!(read_direct(lo.path(), 0, 4 * MIB) == want, "the loop device still shows discarded data");

    // Changed through the pool while no one has the file open.
    lo.detach().unwrap();
    wait_closed(&files, dev);
    let changed = vec![0xcdu8; 256 * 1024];
    files.with_pool(|p| p.write(dev, 3 * MIB, &changed)).unwrap();
    let lo = files.attach(dev, false).unwrap();
    let mut want2 = want.clone();
    want2[3 * MIB as usize..3 * MIB as usize + changed.len()].copy_from_slice(&changed);
    assert!(read_direct(lo.path(), 0, 4 * MIB) == want2, "a new attach showed bytes cached before the pool changed");
    lo.detach().unwrap();
    wait_closed(&files, dev);
    let report = files.with_pool(|p| p.check()).unwrap();
    assert!(report.is_clean(), "{report}");
    files.unmount().unwrap();
}

#[test]
fn ext4_snapshot_sees_the_origin_and_changes_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let base = files.with_pool(|p| p.create_device(256 * MIB)).unwrap();
    let content: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8).collect();
    {
        let lo = files.attach(base, false).unwrap();
        mkfs_ext4(lo.path());
        let m = Mounted::new(lo.path(), &dir.path().join("mnt-base"), false);
        std::fs::write(m.0.join("layer.bin"), &content).unwrap();
        drop(m);
    }
    let snap = files.with_pool(|p| p.snapshot(base)).unwrap();
    let used_after_snapshot = files.with_pool(|p| Ok(p.data_blocks_used())).unwrap();
    {
        let lo = files.attach(snap, false).unwrap();
        let m = Mounted::new(lo.path(), &dir.path().join("mnt-snap"), false);
        assert!(std::fs::read(m.0.join("layer.bin")).unwrap() == content, "snapshot lost the origin's file");
        std::fs::write(m.0.join("upper.txt"), b"only in the snapshot").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(m.0.join("layer.bin")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"ABCD", 4 * MIB).unwrap();
        f.sync_all().unwrap();
        drop(f);
        drop(m);
    }
    let used = files.with_pool(|p| Ok(p.data_blocks_used())).unwrap();
    assert!(used > used_after_snapshot, "writes into the snapshot allocated nothing");
    assert!(used - used_after_snapshot < 64, "a small change copied {} blocks", used - used_after_snapshot);
    {
        let lo = files.attach(base, true).unwrap();
        let m = Mounted::new(lo.path(), &dir.path().join("mnt-base-ro"), true);
        assert!(std::fs::read(m.0.join("layer.bin")).unwrap() == content, "origin changed");
        assert!(!m.0.join("upper.txt").exists());
        drop(m);
    }
    let report = files.with_pool(|p| p.check()).unwrap();
    assert!(report.is_clean(), "{report}");
    files.unmount().unwrap();
}

#[test]
fn removal_while_attached_is_deferred_until_release() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    let dev = files.with_pool(|p| p.create_device(64 * MIB)).unwrap();
    let lo = files.attach(dev, false).unwrap();
    std::fs::write(lo.path(), vec![7u8; MIB as usize]).unwrap();
    assert!(files.is_open(dev).unwrap());
    assert!(files.remove_device(dev).unwrap(), "removal of an attached device was not deferred");
    assert!(files.with_pool(|p| Ok(p.device_ids())).unwrap().contains(&dev));
    lo.detach().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while files.with_pool(|p| Ok(p.device_ids())).unwrap().contains(&dev) {
        assert!(Instant::now() < deadline, "device not deleted after its loop device was detached");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(files.with_pool(|p| Ok(p.data_blocks_used())).unwrap(), 0);
    files.unmount().unwrap();
}
