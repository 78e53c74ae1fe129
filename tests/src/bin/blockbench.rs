//! blockbench: benchmarks of the blockcow driver, printed as Markdown.
//!
//! - `create`: time of a pool snapshot (one commit included) of a 10 GiB and
//!   a 1 TiB device and of origins mapping 10 and 100 000 blocks;
//! - `io`: fio workloads (sequential 1 MiB write and read, random 4 KiB
//!   write and read, first-touch allocation, copy-on-write of blocks shared
//!   with the parent layer, all with O_DIRECT and fsync) through ext4 on a
//!   blockcow device, side by side with ext4 on a loop device over a plain
//!   file in the same directory, as ratios; `--cache both` runs blockcow
//!   with direct I/O and through the page cache side by side;
//! - `space`: real (allocated) size of the pool's data file after ten
//!   containers were prepared from one 500 MiB image and each wrote a little.
//!
//! Needs root, FUSE, loop devices, mkfs.ext4, losetup and (for `io`) fio.
//! Everything is made under `--dir` (default `/var/tmp/blockbench-<pid>`,
//! so on the disk being measured) and removed at the end.
//! Run: `scripts/bench-blockcow.sh` (release build), or
//! `blockbench all --dir /var/tmp/bb`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use rand::RngCore;
use strata_drivers::blockcow::{Pool, PoolConfig, DATA_FILE};
use strata_drivers::registry;
use strata_snapshotter::mount::{self, TempMount};
use strata_snapshotter::{Labels, Snapshotter};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the blockcow driver (Markdown on stdout)")]
struct Cli {
    /// Work directory (created, removed at the end); on the disk to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Snapshot creation time.
    Create {
        /// Snapshots timed per origin.
        #[arg(long, default_value_t = 50)]
        samples: usize,
    },
    /// Filesystem throughput through blockcow vs a plain loop device.
    Io {
        /// Repetitions of each workload (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// MiB per sequential workload file.
        #[arg(long, default_value_t = 256)]
        file_mib: u64,
        /// Seconds per random workload.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// How blockcow serves its devices: `direct` (the driver's
        /// default), `page` (`blockcow.pagecache=true`), or `both`, side by
        /// side in one run.
        #[arg(long, value_enum, default_value_t = CacheArg::Direct)]
        cache: CacheArg,
    },
    /// Pool space used by ten containers of one 500 MiB image.
    Space,
    /// All three with their defaults.
    All,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum CacheArg {
    Direct,
    Page,
    Both,
}

impl CacheArg {
    /// (column label, value of `blockcow.pagecache`) per blockcow variant.
    fn variants(self) -> Vec<(&'static str, &'static str)> {
        match self {
            CacheArg::Direct => vec![("blockcow", "false")],
            CacheArg::Page => vec![("blockcow (page cache)", "true")],
            CacheArg::Both => vec![("blockcow direct", "false"), ("blockcow page cache", "true")],
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(nix::unistd::geteuid().is_root(), "blockbench needs root (FUSE, loop devices, mounts)");
    let dir = cli.dir.clone().unwrap_or_else(|| PathBuf::from(format!("/var/tmp/blockbench-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let result = match cli.what {
        What::Create { samples } => bench_create(&dir, samples),
        What::Io { reps, file_mib, seconds, cache } => bench_io(&dir, reps, file_mib, seconds, cache),
        What::Space => bench_space(&dir),
        What::All => bench_create(&dir, 50).and_then(|()| bench_io(&dir, 3, 256, 5, CacheArg::Direct)).and_then(|()| bench_space(&dir)),
    };
    let cleaned = remove_dir(&dir);
    result.and(cleaned)
}

/// Removes `dir` after detaching anything still mounted below it.
fn remove_dir(dir: &Path) -> Result<()> {
    let mut points: Vec<PathBuf> = mount::mount_points()?.into_iter().filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- create

fn bench_create(dir: &Path, samples: usize) -> Result<()> {
    let root = dir.join("create-pool");
    let config = PoolConfig { data_size: 64 * GIB, metadata_size: GIB, ..PoolConfig::default() };
    let mut pool = Pool::create(&root, &config).context("create the pool")?;
    let bs = pool.block_size();
    let small = pool.create_device(10 * GIB)?;
    let huge = pool.create_device(TIB)?;
    let mut mapped = Vec::new();
    for blocks in [10u64, 100_000] {
        let dev = pool.create_device(10 * GIB)?;
        // One byte per block maps it; the data file stays sparse.
        for b in 0..blocks {
            pool.write(dev, b * bs, &[1])?;
        }
        pool.commit()?;
        ensure!(pool.info_mapped_blocks(dev)? == blocks, "device {dev} should map {blocks} blocks");
        mapped.push((blocks, dev));
    }
    let cases = [
        ("10 GiB device, nothing mapped".to_string(), small),
        ("1 TiB device, nothing mapped".to_string(), huge),
        (format!("10 GiB origin mapping {} blocks", mapped[0].0), mapped[0].1),
        (format!("10 GiB origin mapping {} blocks", mapped[1].0), mapped[1].1),
    ];
    let mut rows = Vec::new();
    // Interleave the cases so that drift of the disk hits all alike.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..samples {
        for (i, (_, origin)) in cases.iter().enumerate() {
            let start = Instant::now();
            let snap = pool.snapshot(*origin)?;
            times[i].push(ms(start.elapsed()));
            pool.delete_device(snap)?;
        }
    }
    for ((label, _), t) in cases.iter().zip(times) {
        rows.push((label.clone(), median(t.clone()), percentile(t.clone(), 0.9), t.iter().cloned().fold(f64::MAX, f64::min)));
    }
    let report = pool.check()?;
    ensure!(report.is_clean(), "pool check after the benchmark: {report:?}");
    drop(pool);
    std::fs::remove_dir_all(&root)?;

    let medians: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let (lo, hi) = (medians.iter().cloned().fold(f64::MAX, f64::min), medians.iter().cloned().fold(0.0, f64::max));
    println!("### Snapshot creation ({samples} snapshots per origin, interleaved; each includes its commit with fdatasync)\n");
    println!("| origin | median ms | p90 ms | min ms |");
    println!("|---|---:|---:|---:|");
    for (label, med, p90, min) in &rows {
        println!("| {label} | {med:.3} | {p90:.3} | {min:.3} |");
    }
    println!();
    println!(
        "Largest median / smallest median: {:.2} (goal <= 1.20: {}); every median under 10 ms: {}.\n",
        hi / lo,
        if hi / lo <= 1.2 { "met" } else { "NOT met" },
        if hi < 10.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

// ---------------------------------------------------------------- io

/// A loop device over a plain file with ext4 on it, mounted; undone on drop.
struct PlainLoop {
    device: String,
    mountpoint: PathBuf,
}

impl PlainLoop {
    fn new(dir: &Path, size: u64) -> Result<PlainLoop> {
        let image = dir.join("plain.img");
        let f = std::fs::File::create(&image)?;
        f.set_len(size)?;
        drop(f);
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&image).output().context("run losetup (util-linux)")?;
        ensure!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mountpoint = dir.join("plain");
        let plain = PlainLoop { device, mountpoint };
        mkfs_ext4(&plain.device)?;
        std::fs::create_dir_all(&plain.mountpoint)?;
        nix::mount::mount(Some(plain.device.as_str()), &plain.mountpoint, Some("ext4"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mount {} at {}", plain.device, plain.mountpoint.display()))?;
        Ok(plain)
    }
}

impl Drop for PlainLoop {
    fn drop(&mut self) {
        if let Err(e) = mount::unmount(&self.mountpoint) {
            eprintln!("unmount {}: {e}", self.mountpoint.display());
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// The same options the blockcow driver formats its base device with.
fn mkfs_ext4(device: &str) -> Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", device])
        .output()
        .context("run mkfs.ext4 (e2fsprogs)")?;
    ensure!(out.status.success(), "mkfs.ext4 {device}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn write_random_file(path: &Path, bytes: u64) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut chunk = vec![0u8; MIB as usize];
    let mut rng = rand::thread_rng();
    let mut left = bytes;
    while left > 0 {
        rng.fill_bytes(&mut chunk);
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Runs one fio job and returns its throughput in MiB/s.
fn fio(args: &[String]) -> Result<f64> {
    let out = Command::new("fio")
        .args(["--output-format=json", "--ioengine=psync", "--direct=1", "--group_reporting", "--name=job"])
        .args(args)
        .output()
        .context("run fio (apt-get install fio)")?;
    ensure!(out.status.success(), "fio {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse fio's JSON")?;
    let job = &v["jobs"][0];
    let bw = job["write"]["bw_bytes"].as_f64().unwrap_or(0.0) + job["read"]["bw_bytes"].as_f64().unwrap_or(0.0);
    ensure!(bw > 0.0, "fio {args:?} reported no throughput");
    Ok(bw / MIB as f64)
}

#[derive(Clone, Copy)]
enum Workload {
    SeqWrite,
    SeqRead,
    RandWrite,
    RandRead,
    FirstTouch,
    Cow,
}

impl Workload {
    const ALL: [Workload; 6] =
        [Workload::FirstTouch, Workload::SeqWrite, Workload::SeqRead, Workload::RandWrite, Workload::RandRead, Workload::Cow];

    fn label(self) -> &'static str {
        match self {
            Workload::SeqWrite => "sequential write 1 MiB (overwrite, fsync at end)",
            Workload::SeqRead => "sequential read 1 MiB",
            Workload::RandWrite => "random write 4 KiB (fsync every 32)",
            Workload::RandRead => "random read 4 KiB",
            Workload::FirstTouch => "first-touch write 1 MiB (new file, fsync at end)",
            Workload::Cow => "overwrite of a lower-layer file 1 MiB (CoW on blockcow, fsync at end)",
        }
    }

    fn goal(self) -> Option<f64> {
        match self {
            Workload::SeqWrite => Some(0.70),
            Workload::SeqRead => Some(0.90),
            Workload::FirstTouch => Some(0.50),
            Workload::Cow => Some(0.30),
            Workload::RandWrite | Workload::RandRead => None,
        }
    }

    /// fio arguments on mount `m` in repetition `rep`.
    fn args(self, m: &Path, rep: usize, file_mib: u64, seconds: u64) -> Vec<String> {
        let file = |name: String| format!("--filename={}", m.join(name).display());
        let size = format!("--size={file_mib}M");
        let timed = [format!("--runtime={seconds}"), "--time_based".to_string()];
        let mut a: Vec<String> = match self {
            Workload::FirstTouch => vec![file(format!("ft-{rep}")), "--rw=write".into(), "--bs=1M".into(), size, "--end_fsync=1".into()],
            Workload::SeqWrite => vec![file(format!("ft-{rep}")), "--rw=write".into(), "--bs=1M".into(), size, "--end_fsync=1".into()],
            Workload::SeqRead => vec![file(format!("ft-{rep}")), "--rw=read".into(), "--bs=1M".into(), size],
            Workload::RandWrite => vec![file(format!("ft-{rep}")), "--rw=randwrite".into(), "--bs=4k".into(), size, "--fsync=32".into()],
            Workload::RandRead => vec![file(format!("ft-{rep}")), "--rw=randread".into(), "--bs=4k".into(), size],
            Workload::Cow => vec![file(format!("shared-{rep}")), "--rw=write".into(), "--bs=1M".into(), size, "--end_fsync=1".into()],
        };
        if matches!(self, Workload::RandWrite | Workload::RandRead) {
            a.extend(timed);
        }
        a
    }
}

fn bench_io(dir: &Path, reps: usize, file_mib: u64, seconds: u64, cache: CacheArg) -> Result<()> {
    let fs_size = (file_mib * MIB * (2 * reps as u64 + 2)).max(GIB);
    let base_size = fs_size.div_ceil(GIB) * GIB;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let variants = cache.variants();
    let mut drivers: Vec<Arc<dyn Snapshotter>> = Vec::new();
    for (i, (_, pagecache)) in variants.iter().enumerate() {
        let options = BTreeMap::from([
            ("blockcow.basesize".to_string(), format!("{}M", base_size / MIB)),
            ("blockcow.datasize".to_string(), "64G".to_string()),
            ("blockcow.metadatasize".to_string(), "256M".to_string()),
            ("blockcow.pagecache".to_string(), pagecache.to_string()),
        ]);
        let driver_root = dir.join(format!("io-blockcow-{i}"));
        match registry::open("blockcow", &driver_root, &options).context("open blockcow") {
            Ok(sn) => drivers.push(sn),
            Err(e) => {
                for sn in drivers {
                    let _ = rt.block_on(sn.close());
                }
                return Err(e);
            }
        }
    }
    let result = (|| -> Result<()> {
        let mut blockcow_mounts = Vec::new();
        for (i, sn) in drivers.iter().enumerate() {
            // The image layer holds the files the CoW workload overwrites.
            let m = rt.block_on(sn.prepare("image-build", "", Labels::new()))?;
            let tm = TempMount::new(&m)?;
            for rep in 0..reps {
                write_random_file(&tm.path().join(format!("shared-{rep}")), file_mib * MIB)?;
            }
            tm.unmount()?;
            rt.block_on(sn.commit("image", "image-build", Labels::new()))?;
            let m = rt.block_on(sn.prepare("container", "image", Labels::new()))?;
            let sub = dir.join(format!("mnt-{i}"));
            std::fs::create_dir_all(&sub)?;
            blockcow_mounts.push(TempMount::new_in(&m, &sub)?);
        }

        let plain = PlainLoop::new(dir, base_size)?;
        for rep in 0..reps {
            write_random_file(&plain.mountpoint.join(format!("shared-{rep}")), file_mib * MIB)?;
        }
        // Write back everything of the set-up before measuring.
        nix::unistd::sync();

        // Per workload: plain loop, then each blockcow variant.
        let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 1 + variants.len()]; Workload::ALL.len()];
        for rep in 0..reps {
            for (i, w) in Workload::ALL.iter().enumerate() {
                let p = fio(&w.args(&plain.mountpoint, rep, file_mib, seconds))?;
                results[i][0].push(p);
                let mut line = format!("rep {rep} {}: plain {p:.1} MiB/s", w.label());
                for (v, m) in blockcow_mounts.iter().enumerate() {
                    let b = fio(&w.args(m.path(), rep, file_mib, seconds))?;
                    results[i][1 + v].push(b);
                    line.push_str(&format!(", {} {b:.1} MiB/s", variants[v].0));
                }
                eprintln!("{line}");
            }
        }
        println!(
            "### Throughput through ext4 (fio, psync, O_DIRECT, {file_mib} MiB files, random jobs {seconds} s; median of {reps}, alternating)\n"
        );
        let mut header = "| workload | loop over a plain file MiB/s |".to_string();
        let mut rule = "|---|---:|".to_string();
        for (label, _) in &variants {
            header.push_str(&format!(" {label} MiB/s | ratio |"));
            rule.push_str("---:|---:|");
        }
        println!("{header} goal |");
        println!("{rule}---|");
        for (w, cols) in Workload::ALL.iter().zip(results) {
            let p = median(cols[0].clone());
            let mut row = format!("| {} | {p:.1} |", w.label());
            let mut verdicts = Vec::new();
            for (v, c) in cols[1..].iter().enumerate() {
                let b = median(c.clone());
                let ratio = b / p;
                row.push_str(&format!(" {b:.1} | {:.0}% |", ratio * 100.0));
                if let Some(g) = w.goal() {
                    let verdict = if ratio >= g { "met" } else { "NOT met" };
                    verdicts.push(if variants.len() > 1 { format!("{}: {verdict}", variants[v].0) } else { verdict.to_string() });
                }
            }
            let goal = match w.goal() {
                Some(g) => format!(">= {:.0}%: {}", g * 100.0, verdicts.join(", ")),
                None => "-".to_string(),
            };
            println!("{row} {goal} |");
        }
        println!();
        drop(plain);
        for m in blockcow_mounts {
            m.unmount()?;
        }
        Ok(())
    })();
    let mut closed = Ok(());
    for sn in drivers {
        if let Err(e) = rt.block_on(sn.close()) {
            closed = Err(e);
        }
    }
    result.and(closed.map_err(Into::into))
}

// ---------------------------------------------------------------- space

fn allocated(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.blocks() * 512)
}

fn bench_space(dir: &Path) -> Result<()> {
    const IMAGE: u64 = 500 * MIB;
    const PER_CONTAINER: u64 = 8 * MIB;
    const CONTAINERS: usize = 10;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let options = BTreeMap::from([
        ("blockcow.basesize".to_string(), "2G".to_string()),
        ("blockcow.datasize".to_string(), "64G".to_string()),
        ("blockcow.metadatasize".to_string(), "256M".to_string()),
    ]);
    let driver_root = dir.join("space-blockcow");
    let sn: Arc<dyn Snapshotter> = registry::open("blockcow", &driver_root, &options).context("open blockcow")?;
    let data = driver_root.join("pool").join(DATA_FILE);
    let result = (|| -> Result<()> {
        let empty = allocated(&data)?;
        let m = rt.block_on(sn.prepare("image-build", "", Labels::new()))?;
        let tm = TempMount::new(&m)?;
        for i in 0..5 {
            write_random_file(&tm.path().join(format!("part-{i}")), IMAGE / 5)?;
        }
        tm.unmount()?;
        rt.block_on(sn.commit("image", "image-build", Labels::new()))?;
        let with_image = allocated(&data)?;
        for c in 0..CONTAINERS {
            let key = format!("container-{c}");
            let m = rt.block_on(sn.prepare(&key, "image", Labels::new()))?;
            let tm = TempMount::new(&m)?;
            write_random_file(&tm.path().join("written"), PER_CONTAINER)?;
            tm.unmount()?;
        }
        let total = allocated(&data)?;
        let written = PER_CONTAINER * CONTAINERS as u64;
        let limit = (IMAGE + written) as f64 * 1.1;
        let mib = |b: u64| b as f64 / MIB as f64;
        println!("### Space: {CONTAINERS} containers prepared from one 500 MiB image, each writing {} MiB\n", PER_CONTAINER / MIB);
        println!("| state | data file allocated (st_blocks) MiB |");
        println!("|---|---:|");
        println!("| pool with the formatted 2 GiB base device only | {:.1} |", mib(empty));
        println!("| + image layer (500 MiB of random data) | {:.1} |", mib(with_image));
        println!("| + {CONTAINERS} containers, {} MiB written in all | {:.1} |", written / MIB, mib(total));
        println!();
        println!(
            "Used: {:.1} MiB in all, {:.1} MiB above the empty pool; goal <= 1.1 x (image + written) = {:.1} MiB: {} (in all), {} (above the empty pool). \
             A full copy per container (vfs) would need {:.0} MiB.\n",
            mib(total),
            mib(total - empty),
            limit / MIB as f64,
            if (total as f64) <= limit { "met" } else { "NOT met" },
            if ((total - empty) as f64) <= limit { "met" } else { "NOT met" },
            mib(IMAGE * (CONTAINERS as u64 + 1) + written)
        );
        for c in 0..CONTAINERS {
            rt.block_on(sn.remove(&format!("container-{c}")))?;
        }
        Ok(())
    })();
    let closed = rt.block_on(sn.close());
    if result.is_ok() && !data.exists() {
        bail!("the data file disappeared");
    }
    result.and(closed.map_err(Into::into))
}
