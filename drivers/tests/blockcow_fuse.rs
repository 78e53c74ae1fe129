//! Exposure tests, run for real as root: the pool served over FUSE, loop
//! devices on top, ext4 made once on a base device and seen by snapshots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use strata_drivers::blockcow::{DeviceFiles, Pool, PoolConfig};

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
    require_tools();
    let config = PoolConfig { data_size: 2048 * MIB, metadata_size: 64 * MIB, ..PoolConfig::default() };
    let pool = Pool::create(&dir.join("pool"), &config).unwrap();
    DeviceFiles::mount(pool, &dir.join("files"), 4).unwrap()
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
