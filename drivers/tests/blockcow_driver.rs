//! Driver-level tests of blockcow through real ext4 mounts on loop devices:
//! block-level copy-on-write of a lower layer (next to overlay's whole-file
//! copy-up of the same write), and a full pool.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use strata_drivers::blockcow::BlockCowSnapshotter;
use strata_snapshotter::mount::TempMount;
use strata_snapshotter::{Labels, Snapshotter};

const MIB: u64 = 1024 * 1024;

fn open(root: &Path, data: &str, base: &str) -> BlockCowSnapshotter {
    open_with(root, data, base, false)
}

/// `pagecache`: serve the devices through the kernel's page cache.
fn open_with(root: &Path, data: &str, base: &str, pagecache: bool) -> BlockCowSnapshotter {
    let options = BTreeMap::from([
        ("blockcow.basesize".to_string(), base.to_string()),
        ("blockcow.datasize".to_string(), data.to_string()),
        ("blockcow.metadatasize".to_string(), "32M".to_string()),
        ("blockcow.min_free_space".to_string(), "0%".to_string()),
        ("blockcow.pagecache".to_string(), pagecache.to_string()),
    ]);
    BlockCowSnapshotter::open(root, &options).expect("open blockcow (needs root, /dev/fuse, loop devices, mkfs.ext4)")
}

fn used(sn: &BlockCowSnapshotter) -> u64 {
    sn.driver().pool_info().unwrap().data_space_used / (64 * 1024)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Physical 4 KiB block of logical block `lblk` of `file` on an ext4 device.
fn ext4_bmap(device: &str, file: &str, lblk: u64) -> u64 {
    let out = Command::new("debugfs")
        .args(["-R", &format!("bmap {file} {lblk}"), device])
        .output()
        .expect("run debugfs (install e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| panic!("debugfs bmap: {text:?} {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn four_bytes_into_a_100_mib_lower_file_copy_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(&dir.path().join("root"), "2G", "512M");
    let rt = runtime();
    let file: Vec<u8> = (0..100 * MIB).map(|i| (i % 241) as u8).collect();
    rt.block_on(async {
        let mounts = sn.prepare("extract-1", "", Labels::new()).await.unwrap();
        let m = TempMount::new(&mounts).unwrap();
        std::fs::write(m.path().join("big.bin"), &file).unwrap();
        m.unmount().unwrap();
        sn.commit("layer-1", "extract-1", Labels::new()).await.unwrap();
        let lower_usage = sn.usage("layer-1").await.unwrap();
        assert!(lower_usage.size >= 100 * MIB as i64, "lower layer usage {}", lower_usage.size);

        // Through the filesystem: a 4-byte overwrite copies the data block plus
        // the few metadata and journal blocks ext4 touches, never the file.
        let mounts = sn.prepare("ctr-1", "layer-1", Labels::new()).await.unwrap();
        let before = used(&sn);
        let m = TempMount::new(&mounts).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(m.path().join("big.bin")).unwrap();
        f.write_all_at(b"ABCD", 50 * MIB + 100).unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.unmount().unwrap();
        let grew = used(&sn) - before;
        assert!((1..=16).contains(&grew), "a 4-byte write through ext4 grew the pool by {grew} blocks");

        // At the block layer: 4 bytes written into the child's device where
        // the file's data lives grow the pool by exactly one block.
        let ctr2 = sn.prepare("ctr-2", "layer-1", Labels::new()).await.unwrap();
        let device = ctr2[0].source.clone();
        let lblk = (60 * MIB) / 4096;
        let pblk = ext4_bmap(&device, "/big.bin", lblk);
        let before = used(&sn);
        let dev = std::fs::OpenOptions::new().write(true).open(&device).unwrap();
        dev.write_all_at(b"WXYZ", pblk * 4096 + 8).unwrap();
        dev.sync_all().unwrap();
        drop(dev);
        sn.driver().check_pool().unwrap();
        assert_eq!(used(&sn) - before, 1, "a 4-byte write into a shared block must copy exactly one block");
        let m = TempMount::new(&ctr2).unwrap();
        let mut got = [0u8; 12];
        std::fs::File::open(m.path().join("big.bin")).unwrap().read_exact_at(&mut got, 60 * MIB + 4).unwrap();
        m.unmount().unwrap();
        let off = (60 * MIB + 4) as usize;
        assert_eq!(&got[..4], &file[off..off + 4]);
        assert_eq!(&got[4..8], b"WXYZ");
        assert_eq!(&got[8..], &file[off + 8..off + 12]);

        // The lower layer is unchanged.
        let view = sn.view("check-lower", "layer-1", Labels::new()).await.unwrap();
        let m = TempMount::new(&view).unwrap();
        let lower = std::fs::read(m.path().join("big.bin")).unwrap();
        m.unmount().unwrap();
        assert!(lower == file, "the lower layer changed");
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");
        sn.close().await.unwrap();
    });
}

/// The other side of the block-level CoW proof: the same 4-byte overwrite of
/// a 100 MiB lower file makes overlay copy the whole file up into the
/// child's upper directory, where blockcow copies one 64 KiB block.
#[test]
fn the_same_four_byte_write_copies_the_whole_file_up_on_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("overlay");
    let sn = strata_drivers::registry::open("overlay", &root, &BTreeMap::new()).expect("open overlay (needs root)");
    let rt = runtime();
    let file: Vec<u8> = (0..100 * MIB).map(|i| (i % 241) as u8).collect();
    rt.block_on(async {
        let mounts = sn.prepare("extract-1", "", Labels::new()).await.unwrap();
        let m = TempMount::new(&mounts).unwrap();
        std::fs::write(m.path().join("big.bin"), &file).unwrap();
        m.unmount().unwrap();
        sn.commit("layer-1", "extract-1", Labels::new()).await.unwrap();

        let mounts = sn.prepare("ctr-1", "layer-1", Labels::new()).await.unwrap();
        let before = sn.usage("ctr-1").await.unwrap().size;
        assert!(before < 64 * 1024, "a fresh upper directory is (nearly) empty: {before} bytes");
        let m = TempMount::new(&mounts).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(m.path().join("big.bin")).unwrap();
        f.write_all_at(b"ABCD", 50 * MIB + 100).unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.unmount().unwrap();
        let grew = sn.usage("ctr-1").await.unwrap().size - before;
        assert!(grew >= 100 * MIB as i64, "overlay copied up {grew} bytes for a 4-byte write");
        sn.remove("ctr-1").await.unwrap();
        sn.remove("layer-1").await.unwrap();
    });
}

#[test]
fn a_full_pool_fails_writes_stays_consistent_and_recovers_when_space_is_freed() {
    full_pool(false);
}

#[test]
fn a_full_pool_through_the_page_cache_fails_writes_and_recovers() {
    full_pool(true);
}

fn full_pool(pagecache: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sn = open_with(&dir.path().join("root"), "256M", "512M", pagecache);
    let rt = runtime();
    rt.block_on(async {
        sn.prepare("base", "", Labels::new()).await.unwrap();
        sn.commit("layer", "base", Labels::new()).await.unwrap();
        let other = sn.prepare("other", "layer", Labels::new()).await.unwrap();
        let m = TempMount::new(&other).unwrap();
        std::fs::write(m.path().join("small"), b"still here").unwrap();
        m.unmount().unwrap();

        let filler = sn.prepare("filler", "layer", Labels::new()).await.unwrap();
        let m = TempMount::new(&filler).unwrap();
        let chunk = vec![0x5au8; MIB as usize];
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(m.path().join("fill"))?;
            for _ in 0..400 {
                std::io::Write::write_all(&mut f, &chunk)?;
            }
            f.sync_all()
        })();
        assert!(written.is_err(), "writing 400 MiB into a 256 MiB pool succeeded");
        drop(m);
        let info = sn.driver().pool_info().unwrap();
        assert!(info.data_space_used * 100 / info.data_space_total >= 95, "pool not full: {info:?}");
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");

        // Other devices keep working.
        let m = TempMount::new(&sn.mounts("other").await.unwrap()).unwrap();
        assert_eq!(std::fs::read(m.path().join("small")).unwrap(), b"still here");
        m.unmount().unwrap();

        // Freeing space lets writes continue.
        sn.remove("filler").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sn.driver().pool_info().unwrap().data_space_used * 2 > sn.driver().pool_info().unwrap().data_space_total {
            assert!(std::time::Instant::now() < deadline, "space of the removed device never came back");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let again = sn.prepare("again", "layer", Labels::new()).await.unwrap();
        let m = TempMount::new(&again).unwrap();
        std::fs::write(m.path().join("after"), vec![1u8; 32 * MIB as usize]).unwrap();
        let f = std::fs::File::open(m.path().join("after")).unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.unmount().unwrap();
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");
        sn.close().await.unwrap();
    });
}

#[test]
fn snapshots_survive_closing_and_reopening_the_driver() {
    survive_reopening(false);
}

#[test]
fn snapshots_survive_reopening_the_driver_through_the_page_cache() {
    survive_reopening(true);
}

fn survive_reopening(pagecache: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let rt = runtime();
    rt.block_on(async {
        let sn = open_with(&root, "1G", "128M", pagecache);
        let m = TempMount::new(&sn.prepare("a", "", Labels::new()).await.unwrap()).unwrap();
        std::fs::write(m.path().join("kept"), b"layer a").unwrap();
        m.unmount().unwrap();
        sn.commit("A", "a", Labels::new()).await.unwrap();
        let m = TempMount::new(&sn.prepare("b", "A", Labels::new()).await.unwrap()).unwrap();
        std::fs::write(m.path().join("active"), b"in b").unwrap();
        m.unmount().unwrap();
        sn.close().await.unwrap();
        drop(sn);

        let sn = open_with(&root, "1G", "128M", pagecache);
        assert_eq!(sn.stat("A").await.unwrap().kind, strata_snapshotter::Kind::Committed);
        let m = TempMount::new(&sn.mounts("b").await.unwrap()).unwrap();
        assert_eq!(std::fs::read(m.path().join("kept")).unwrap(), b"layer a");
        assert_eq!(std::fs::read(m.path().join("active")).unwrap(), b"in b");
        m.unmount().unwrap();
        let m = TempMount::new(&sn.view("v", "A", Labels::new()).await.unwrap()).unwrap();
        assert!(!m.path().join("active").exists());
        m.unmount().unwrap();
        // The base device was made once: reopening did not create another.
        assert_eq!(sn.driver().pool_info().unwrap().devices.len(), 4);
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");
        sn.close().await.unwrap();
    });
}

#[test]
fn xfs_base_device_with_nouuid_mounts() {
    let ok = Command::new("mkfs.xfs").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "mkfs.xfs is missing: install xfsprogs");
    let dir = tempfile::tempdir().unwrap();
    let options = BTreeMap::from([
        ("dm.fs".to_string(), "xfs".to_string()),
        ("dm.basesize".to_string(), "512M".to_string()),
        ("dm.loopdatasize".to_string(), "2G".to_string()),
        ("dm.loopmetadatasize".to_string(), "32M".to_string()),
    ]);
    let sn = BlockCowSnapshotter::open(&dir.path().join("root"), &options).unwrap();
    runtime().block_on(async {
        let mounts = sn.prepare("a", "", Labels::new()).await.unwrap();
        assert_eq!(mounts[0].fstype, "xfs");
        assert_eq!(mounts[0].options, vec!["rw".to_string(), "nouuid".to_string()]);
        let m = TempMount::new(&mounts).unwrap();
        std::fs::write(m.path().join("f"), b"on xfs").unwrap();
        m.unmount().unwrap();
        sn.commit("A", "a", Labels::new()).await.unwrap();
        // Parent and child carry the same filesystem UUID: nouuid lets both mount.
        let child = TempMount::new(&sn.prepare("b", "A", Labels::new()).await.unwrap()).unwrap();
        let view = sn.view("v", "A", Labels::new()).await.unwrap();
        assert_eq!(view[0].options, vec!["ro".to_string(), "nouuid".to_string()]);
        let view = TempMount::new(&view).unwrap();
        assert_eq!(std::fs::read(child.path().join("f")).unwrap(), b"on xfs");
        assert_eq!(std::fs::read(view.path().join("f")).unwrap(), b"on xfs");
        view.unmount().unwrap();
        child.unmount().unwrap();
        sn.close().await.unwrap();
    });
}

/// Size of the filesystem mounted at `path`, in bytes.
fn fs_size(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

fn sized(size: &str) -> Labels {
    Labels::from([(strata_drivers::blockcow::driver::SIZE_LABEL.to_string(), size.to_string())])
}

/// A snapshot asking for its own size through the size label: the device
/// and its filesystem are grown, a write past the base size succeeds, and
/// the size holds after reopening the driver. Too small a size or garbage is
/// refused and leaves nothing behind.
fn sized_snapshot(fs: &str, base: u64, size: u64) {
    sized_snapshot_with(fs, base, size, false)
}

fn sized_snapshot_with(fs: &str, base: u64, size: u64, pagecache: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let options = BTreeMap::from([
        ("blockcow.fs".to_string(), fs.to_string()),
        ("blockcow.basesize".to_string(), format!("{base}")),
        ("blockcow.datasize".to_string(), "2G".to_string()),
        ("blockcow.metadatasize".to_string(), "32M".to_string()),
        ("blockcow.pagecache".to_string(), pagecache.to_string()),
    ]);
    let open = || BlockCowSnapshotter::open(&root, &options).expect("open blockcow (needs root, /dev/fuse, loop devices, mkfs)");
    let rt = runtime();
    rt.block_on(async {
        let sn = open();
        let m = TempMount::new(&sn.prepare("l", "", Labels::new()).await.unwrap()).unwrap();
        std::fs::write(m.path().join("from-the-layer"), b"layer").unwrap();
        m.unmount().unwrap();
        sn.commit("L", "l", Labels::new()).await.unwrap();
        let devices = sn.driver().pool_info().unwrap().devices.len();

        // Refusals: below the base size, garbage, on a view.
        let err = sn.prepare("small", "L", sized(&format!("{}", base / 2))).await.unwrap_err();
        assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("cannot be smaller than the image's base size"), "{err}");
        for bad in ["big", "-1G", "12Q"] {
            let err = sn.prepare("bad", "L", sized(bad)).await.unwrap_err();
            assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(err.to_string().contains("invalid size"), "{err}");
        }
        let err = sn.view("v", "L", sized(&format!("{size}"))).await.unwrap_err();
        assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{err}");
        assert_eq!(sn.driver().pool_info().unwrap().devices.len(), devices, "a refused prepare left a device");
        assert_eq!(sn.list(&[]).await.unwrap().len(), 1, "a refused prepare left a snapshot");

        // Docker's syntax, binary units.
        let mounts = sn.prepare("big", "L", sized(&format!("{}M", size >> 20))).await.unwrap();
        let plain = sn.prepare("plain", "L", Labels::new()).await.unwrap();
        let m = TempMount::new(&mounts).unwrap();
        let total = fs_size(m.path());
        assert!(total > base && total <= size, "{fs} on a {size}-byte device has {total} bytes (base {base})");
        assert_eq!(std::fs::read(m.path().join("from-the-layer")).unwrap(), b"layer");
        if fs == "ext4" {
            // More than the base device could hold.
            let f = std::fs::File::create(m.path().join("past-base")).unwrap();
            let chunk = vec![7u8; MIB as usize];
            for i in 0..base / MIB + 8 {
                f.write_all_at(&chunk, i * MIB).unwrap();
            }
            f.sync_all().unwrap();
        }
        m.unmount().unwrap();
        let m = TempMount::new(&plain).unwrap();
        assert!(fs_size(m.path()) <= base, "a snapshot without the label has the base size");
        m.unmount().unwrap();
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");
        sn.close().await.unwrap();
        drop(sn);

        // The size is pool metadata: it holds after reopening, and the
        // snapshot's children inherit it.
        let sn = open();
        let info = sn.driver().pool_info().unwrap();
        assert!(info.devices.iter().any(|d| d.virtual_size == size), "{info:?}");
        let m = TempMount::new(&sn.mounts("big").await.unwrap()).unwrap();
        assert_eq!(fs_size(m.path()), total);
        m.unmount().unwrap();
        sn.commit("BIG", "big", Labels::new()).await.unwrap();
        let m = TempMount::new(&sn.prepare("child", "BIG", Labels::new()).await.unwrap()).unwrap();
        assert_eq!(fs_size(m.path()), total);
        m.unmount().unwrap();
        let report = sn.driver().check_pool().unwrap();
        assert!(report.is_clean(), "{report}");
        sn.close().await.unwrap();
    });
}

#[test]
fn size_label_grows_an_ext4_snapshot() {
    sized_snapshot("ext4", 32 * MIB, 96 * MIB);
}

#[test]
fn size_label_grows_an_ext4_snapshot_served_through_the_page_cache() {
    sized_snapshot_with("ext4", 32 * MIB, 96 * MIB, true);
}

#[test]
fn size_label_grows_an_xfs_snapshot() {
    let ok = Command::new("xfs_growfs").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "xfs_growfs is missing: install xfsprogs");
    sized_snapshot("xfs", 320 * MIB, 640 * MIB);
}

/// The size label crosses gRPC like any label: a blockcow driver served on a
/// unix socket grows the device of a `Prepare` made by a `RemoteSnapshotter`
/// and refuses too small a size with InvalidArgument.
#[test]
fn size_label_over_grpc() {
    use strata_snapshotter::grpc::{server, RemoteSnapshotter};
    let dir = tempfile::tempdir().unwrap();
    let sn = open(&dir.path().join("root"), "2G", "64M");
    let served: std::sync::Arc<dyn Snapshotter> = std::sync::Arc::new(sn.clone());
    let rt = runtime();
    rt.block_on(async {
        let socket = dir.path().join("snapshotd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let drivers = BTreeMap::from([("blockcow".to_string(), served)]);
        let task = tokio::spawn(server::serve(drivers, listener, async move {
            let _ = stopped.await;
        }));
        let client = RemoteSnapshotter::connect(&format!("unix://{}", socket.display()), "blockcow").await.unwrap();
        let checked = async {
            let mounts = client.prepare("big", "", sized("128M")).await?;
            let m = TempMount::new(&mounts)?;
            let total = fs_size(m.path());
            m.unmount()?;
            let small = client.prepare("small", "", sized("32M")).await.map(|_| ());
            Ok::<_, strata_snapshotter::Error>((total, small))
        }
        .await;
        let _ = stop.send(());
        let _ = task.await;
        sn.close().await.unwrap();
        let (total, small) = checked.unwrap();
        assert!(total > 64 * MIB && total <= 128 * MIB, "a 128M device over gRPC holds {total} bytes");
        let err = small.unwrap_err();
        assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("cannot be smaller than the image's base size 64MiB"), "{err}");
    });
}
