//! System facts for `/info` and the numbers behind `/system/df`.
//!
//! Host facts come from the kernel (`uname`, `/proc`, `/sys/fs/cgroup`);
//! the storage facts from the driver's directory. The df computation takes
//! the image service's per-image numbers through [`ImageStats`] and applies
//! dockerd's rules, so it is testable with a fake.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::EngineError;

/// Facts about the host, read once per `/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub kernel_version: String,
    pub operating_system: String,
    pub os_version: String,
    pub hostname: String,
    pub ncpu: usize,
    pub mem_total: u64,
    /// "1" or "2".
    pub cgroup_version: String,
}

impl HostFacts {
    pub fn read() -> Self {
        let uts = nix::sys::utsname::uname().ok();
        let kernel_version = uts.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let hostname = uts.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default();
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let operating_system = os_release_field(&os_release, "PRETTY_NAME").unwrap_or_else(|| "Linux".to_string());
        let os_version = os_release_field(&os_release, "VERSION_ID").unwrap_or_default();
        let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| meminfo_total(&m)).unwrap_or(0);
        Self {
            kernel_version,
            operating_system,
            os_version,
            hostname,
            ncpu,
            mem_total,
            cgroup_version: cgroup_version(Path::new("/sys/fs/cgroup")).to_string(),
        }
    }
}

/// A value of `/etc/os-release`, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// "2" on a unified cgroup hierarchy (cgroup.controllers at the root), else "1".
pub fn cgroup_version(root: &Path) -> &'static str {
    if root.join("cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

/// The name dockerd gives a filesystem magic number (`fstype.go`).
pub fn fs_name(magic: i64) -> String {
    let known: &[(i64, &str)] = &[
        (0xEF53, "extfs"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x0102_1994, "tmpfs"),
        (0x794C_7630, "overlayfs"),
        (0x2FC1_2FC1, "zfs"),
        (0x6969, "nfs"),
        (0x8584_58F6, "ramfs"),
        (0xF2F5_2010, "f2fs"),
        (0x7371_7368, "squashfs"),
        (0x6573_5546, "fuseblk"),
        (0x6573_5543, "fusectl"),
        (0x6165_676C, "pstorefs"),
        (0x0000_4D44, "msdos"),
        (0x0102_1997, "v9fs"),
        (0xFF53_4D42, "cifs"),
    ];
    known
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("<unknown> ({magic:#x})"))
}

/// The backing filesystem of `dir` by dockerd's names.
pub fn backing_fs(dir: &Path) -> String {
    match nix::sys::statfs::statfs(dir) {
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => fs_name(st.filesystem_type().0 as i64),
        Err(_) => "<unknown>".to_string(),
    }
}

/// Whether the filesystem of `dir` fills in `d_type` in directory entries
/// (overlayfs needs it). Checked by creating a file and listing it.
pub fn supports_d_type(dir: &Path) -> Result<bool, EngineError> {
    let probe = tempfile_dir(dir)?;
    let file = probe.join("d_type-probe");
    std::fs::write(&file, b"").map_err(|e| EngineError::io(format!("write {}", file.display()), e))?;
    let result = (|| {
        let mut d = nix::dir::Dir::open(&probe, nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty())
            .map_err(|e| EngineError::internal(format!("open {}: {e}", probe.display())))?;
        for entry in d.iter() {
            let entry = entry.map_err(|e| EngineError::internal(format!("read {}: {e}", probe.display())))?;
            if entry.file_name().to_bytes() == b"d_type-probe" {
                return Ok(entry.file_type().is_some());
            }
        }
        Err(EngineError::internal(format!("{} vanished while probing d_type", file.display())))
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result
}

fn tempfile_dir(dir: &Path) -> Result<std::path::PathBuf, EngineError> {
    let probe = dir.join(format!(".d_type-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&probe);
    std::fs::create_dir_all(&probe).map_err(|e| EngineError::io(format!("create {}", probe.display()), e))?;
    Ok(probe)
}

/// The `DriverStatus` rows and warnings `/info` shows for a driver.
pub fn driver_status(driver: &str, driver_dir: &Path, remote: Option<&str>) -> (Vec<[String; 2]>, Vec<String>) {
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    match driver {
        "overlay" => {
            rows.push(["Backing Filesystem".to_string(), backing_fs(driver_dir)]);
            if remote.is_none() {
                match supports_d_type(driver_dir) {
                    Ok(ok) => {
                        rows.push(["Supports d_type".to_string(), ok.to_string()]);
                        if !ok {
                            warnings.push("WARNING: overlay: the backing filesystem is formatted without d_type support, which leads to incorrect behavior.".to_string());
                        }
                    }
                    Err(e) => warnings.push(format!("WARNING: overlay: cannot check d_type support: {e}")),
                }
            }
            rows.push(["Using metacopy".to_string(), "false".to_string()]);
        }
        "blockcow" if remote.is_none() => match blockcow_pool_info(&driver_dir.join(crate::storage::SNAPSHOTS_DIR)) {
            Ok(info) => rows.extend(blockcow_status(&info)),
            Err(e) => {
                rows.push(["Backing Filesystem".to_string(), backing_fs(driver_dir)]);
                warnings.push(format!("WARNING: blockcow: pool information unavailable: {e}"));
            }
        },
        _ => {}
    }
    if let Some(address) = remote {
        rows.push(["Snapshotter Address".to_string(), address.to_string()]);
    }
    (rows, warnings)
}

/// Docker's human size (`go-units.HumanSize`): decimal units, four
/// significant digits, no space: `65.54kB`, `10.74GB`, `107.4GB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    #[allow(clippy::cast_precision_loss)]
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(size), UNITS[unit])
}

/// C's `%.4g` for 0 <= x < 1000: four significant digits, trailing zeros cut.
fn format_g4(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    let int_digits = if x < 1.0 { 1 } else { (x.log10().floor() as i32 + 1).clamp(1, 4) };
    let decimals = usize::try_from((4 - int_digits).max(0)).unwrap_or(0);
    let mut text = format!("{x:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    text
}

/// Reads the blockcow pool's last committed state from its files (safe
/// while the driver holds the pool). The pool lives in the driver's root or
/// in its `pool` subdirectory.
pub fn blockcow_pool_info(snapshots_dir: &Path) -> Result<strata_drivers::blockcow::PoolInfo, String> {
    let candidates = [snapshots_dir.to_path_buf(), snapshots_dir.join("pool")];
    let root = candidates
        .iter()
        .find(|dir| dir.join(strata_drivers::blockcow::METADATA_FILE).is_file())
        .ok_or_else(|| format!("no pool metadata under {}", snapshots_dir.display()))?;
    strata_drivers::blockcow::info(root).map_err(|e| e.to_string())
}

/// The `DriverStatus` rows of a blockcow pool, under the devicemapper names
/// and in devicemapper's order, so `docker info` reads as it did for dm.
pub fn blockcow_status(info: &strata_drivers::blockcow::PoolInfo) -> Vec<[String; 2]> {
    let row = |k: &str, v: String| [k.to_string(), v];
    let mut rows = vec![
        row("Pool Name", info.pool_name.clone()),
        row("Pool Blocksize", human_size(info.block_size)),
        row("Base Device Size", human_size(info.base_device_size)),
        row("Backing Filesystem", info.backing_filesystem.clone()),
    ];
    if !info.data_file.as_os_str().is_empty() {
        rows.push(row("Data file", info.data_file.display().to_string()));
    }
    if !info.metadata_file.as_os_str().is_empty() {
        rows.push(row("Metadata file", info.metadata_file.display().to_string()));
    }
    let min_free =
        u64::try_from(u128::from(info.data_space_total) * u128::from(info.min_free_space_pct) / 100).unwrap_or(u64::MAX);
    rows.extend([
        row("Data Space Used", human_size(info.data_space_used)),
        row("Data Space Total", human_size(info.data_space_total)),
        row("Data Space Available", human_size(info.data_space_available)),
        row("Metadata Space Used", human_size(info.metadata_space_used)),
        row("Metadata Space Total", human_size(info.metadata_space_total)),
        row("Metadata Space Available", human_size(info.metadata_space_available)),
        row("Thin Pool Minimum Free Space", human_size(min_free)),
    ]);
    rows
}

/// Docker's registry section of `/info`, from `--insecure-registry`.
pub fn registry_config(insecure: &[String]) -> serde_json::Value {
    let mut cidrs: Vec<String> = Vec::new();
    let mut index = serde_json::Map::new();
    for entry in insecure {
        if entry.parse::<crate::config::Cidr>().is_ok() {
            cidrs.push(entry.clone());
        } else {
            index.insert(
                entry.clone(),
                serde_json::json!({"Name": entry, "Mirrors": [], "Secure": false, "Official": false}),
            );
        }
    }
    for always in ["::1/128", "127.0.0.0/8"] {
        if !cidrs.iter().any(|c| c == always) {
            cidrs.push(always.to_string());
        }
    }
    index.insert(
        "docker.io".to_string(),
        serde_json::json!({"Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true}),
    );
    serde_json::json!({
        "AllowNondistributableArtifactsCIDRs": null,
        "AllowNondistributableArtifactsHostnames": null,
        "InsecureRegistryCIDRs": cidrs,
        "IndexConfigs": index,
        "Mirrors": null,
    })
}

/// RFC 3339 with nanoseconds in UTC, as Go prints `time.Time` in JSON.
pub fn rfc3339_nano(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One image's disk usage, as the image service computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUsage {
    /// `sha256:…`.
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Bytes of all its layers.
    pub size: i64,
    /// Bytes of its layers that other images use too.
    pub shared_size: i64,
    /// How many containers use it.
    pub containers: i64,
    pub labels: BTreeMap<String, String>,
}

/// What the image service tells `/info` and `/system/df`.
pub trait ImageStats: Send + Sync {
    /// Distinct images.
    fn image_count(&self) -> usize;
    /// Every image's usage and the total size of all layers (each layer
    /// counted once).
    fn disk_usage(&self) -> Result<(i64, Vec<ImageUsage>), EngineError>;
}

/// The `Images` part of `/system/df` plus `LayersSize`, and the summary the
/// CLI prints from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesDf {
    pub layers_size: i64,
    pub images: Vec<ImageUsage>,
    pub active: usize,
    /// dockerd's RECLAIMABLE: LayersSize − Σ(Size − SharedSize) over images
    /// used by containers.
    pub reclaimable: i64,
}

pub fn images_df(stats: &dyn ImageStats) -> Result<ImagesDf, EngineError> {
    let (layers_size, mut images) = stats.disk_usage()?;
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let in_use: Vec<&ImageUsage> = images.iter().filter(|i| i.containers > 0).collect();
    let used: i64 = in_use
        .iter()
        .filter(|i| i.size >= 0 && i.shared_size >= 0)
        .map(|i| i.size - i.shared_size)
        .sum();
    Ok(ImagesDf { layers_size, active: in_use.len(), reclaimable: (layers_size - used).max(0), images })
}

impl ImageStats for crate::images::ImageService {
    fn image_count(&self) -> usize {
        self.count()
    }

    fn disk_usage(&self) -> Result<(i64, Vec<ImageUsage>), EngineError> {
        let usage = crate::images::ImageService::disk_usage(self);
        let images = usage
            .images
            .into_iter()
            .map(|s| ImageUsage {
                id: s.id,
                parent_id: String::new(),
                repo_tags: s.repo_tags,
                repo_digests: s.repo_digests,
                created: s.created,
                size: s.size,
                shared_size: s.shared_size,
                containers: s.containers,
                labels: s.labels,
            })
            .collect();
        Ok((usage.layers_size, images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Vec<ImageUsage>, i64);

    impl ImageStats for Fake {
        fn image_count(&self) -> usize {
            self.0.len()
        }
        fn disk_usage(&self) -> Result<(i64, Vec<ImageUsage>), EngineError> {
            Ok((self.1, self.0.clone()))
        }
    }

    fn image(id: &str, created: i64, size: i64, shared: i64, containers: i64) -> ImageUsage {
        ImageUsage {
            id: id.to_string(),
            parent_id: String::new(),
            repo_tags: vec![],
            repo_digests: vec![],
            created,
            size,
            shared_size: shared,
            containers,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn reclaimable_as_dockerd() {
        // Two images sharing a 100-byte base; b is used by a container.
        let fake = Fake(vec![image("sha256:a", 1, 150, 100, 0), image("sha256:b", 2, 130, 100, 1)], 180);
        let df = images_df(&fake).unwrap();
        assert_eq!(df.active, 1);
        assert_eq!(df.reclaimable, 180 - 30);
        assert_eq!(df.images[0].id, "sha256:b", "newest first");
        let none_used = Fake(vec![image("sha256:a", 1, 150, 0, 0)], 150);
        assert_eq!(images_df(&none_used).unwrap().reclaimable, 150);
    }

    #[test]
    fn human_sizes_as_docker_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(65_536), "65.54kB");
        assert_eq!(human_size(10 * 1024 * 1024 * 1024), "10.74GB");
        assert_eq!(human_size(100 * 1024 * 1024 * 1024), "107.4GB");
        assert_eq!(human_size(2 * 1024 * 1024 * 1024), "2.147GB");
        assert_eq!(human_size(4_261_550), "4.262MB");
    }

    #[test]
    fn blockcow_rows_use_devicemapper_names() {
        let info = strata_drivers::blockcow::PoolInfo {
            pool_name: "strata-blockcow-pool".to_string(),
            block_size: 65_536,
            base_device_size: 10 * 1024 * 1024 * 1024,
            backing_filesystem: "ext4".to_string(),
            data_file: "/var/lib/strata/engine/blockcow/data".into(),
            metadata_file: "/var/lib/strata/engine/blockcow/metadata".into(),
            data_space_used: 1_000_000,
            data_space_total: 100 * 1024 * 1024 * 1024,
            data_space_available: 100 * 1024 * 1024 * 1024 - 1_000_000,
            metadata_space_used: 4096 * 10,
            metadata_space_total: 2 * 1024 * 1024 * 1024,
            metadata_space_available: 2 * 1024 * 1024 * 1024 - 40960,
            min_free_space_pct: 10,
            transaction_id: 3,
            generation: 7,
            devices: Vec::new(),
        };
        let rows = blockcow_status(&info);
        let keys: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            keys,
            [
                "Pool Name", "Pool Blocksize", "Base Device Size", "Backing Filesystem", "Data file", "Metadata file",
                "Data Space Used", "Data Space Total", "Data Space Available", "Metadata Space Used",
                "Metadata Space Total", "Metadata Space Available", "Thin Pool Minimum Free Space"
            ]
        );
        assert_eq!(rows[1][1], "65.54kB");
        assert_eq!(rows[2][1], "10.74GB");
        assert_eq!(rows[7][1], "107.4GB");
        assert_eq!(rows[10][1], "2.147GB");
        assert_eq!(rows[12][1], "10.74GB");
    }

    #[test]
    fn blockcow_pool_is_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = blockcow_pool_info(dir.path()).unwrap_err();
        assert!(err.contains("no pool metadata"), "{err}");
        let pool_dir = dir.path().join("pool");
        let config = strata_drivers::blockcow::PoolConfig {
            data_size: 1 << 30,
            metadata_size: 64 << 20,
            ..Default::default()
        };
        let mut pool = strata_drivers::blockcow::Pool::create(&pool_dir, &config).unwrap();
        let dev = pool.create_device(1 << 20).unwrap();
        pool.write(dev, 0, &[7u8; 4096]).unwrap();
        pool.commit().unwrap();
        // Read while the pool is still open, as the engine does.
        let info = blockcow_pool_info(dir.path()).unwrap();
        let rows = blockcow_status(&info);
        assert_eq!(rows[0][0], "Pool Name");
        let used = rows.iter().find(|r| r[0] == "Data Space Used").unwrap();
        assert_eq!(used[1], "65.54kB", "one 64 KiB block is mapped");
        let total = rows.iter().find(|r| r[0] == "Data Space Total").unwrap();
        assert_eq!(total[1], "1.074GB");
        drop(pool);
    }

    #[test]
    fn rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_748_736_000, 5);
        assert_eq!(rfc3339_nano(t), "2025-06-01T00:00:00.000000005Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(951_782_400, 0);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn host_parsers() {
        assert_eq!(os_release_field("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n", "PRETTY_NAME").unwrap(), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(meminfo_total("MemTotal:       16318196 kB\nMemFree: 1 kB\n"), Some(16318196 * 1024));
        assert_eq!(fs_name(0xEF53), "extfs");
        assert_eq!(fs_name(0x58465342), "xfs");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_version(dir.path()), "1");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu").unwrap();
        assert_eq!(cgroup_version(dir.path()), "2");
    }

    #[test]
    fn d_type_probe_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // tmpfs and ext4 both fill d_type.
        assert!(supports_d_type(dir.path()).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn insecure_registries_in_docker_shape() {
        let v = registry_config(&["myreg:5000".to_string(), "10.0.0.0/8".to_string()]);
        assert_eq!(v["InsecureRegistryCIDRs"], serde_json::json!(["10.0.0.0/8", "::1/128", "127.0.0.0/8"]));
        assert_eq!(v["IndexConfigs"]["myreg:5000"]["Secure"], false);
        assert_eq!(v["IndexConfigs"]["docker.io"]["Official"], true);
    }
}
