//! Resource numbers of a running container for `docker stats`, read from
//! its cgroups (v1 controllers under `/sys/fs/cgroup/<controller>/strata/<id>`,
//! or the unified v2 tree) and from its network namespace
//! (`/proc/<pid>/net/dev`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One network interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// One blkio entry (`8:0 Read 4096`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

/// A sample of a container's resource use.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// RFC 3339 time of the sample.
    pub read: String,
    /// Nanoseconds of CPU time used by the container.
    pub cpu_total: u64,
    pub cpu_kernel: u64,
    pub cpu_user: u64,
    pub percpu: Vec<u64>,
    /// Host CPU time in nanoseconds (`/proc/stat`).
    pub system_cpu: u64,
    pub online_cpus: u32,
    pub mem_usage: u64,
    pub mem_max_usage: u64,
    pub mem_limit: u64,
    pub mem_stats: BTreeMap<String, u64>,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub blkio: Vec<BlkioEntry>,
    pub networks: BTreeMap<String, NetDev>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_kv(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Whether the host uses the unified cgroup v2 hierarchy only.
pub fn is_cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn v1_dir(controller: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(controller).join("strata").join(id)
}

/// The host's CPU time in nanoseconds and its number of CPUs, from
/// `/proc/stat` (the first seven fields of the `cpu` line, in USER_HZ).
pub fn system_cpu() -> (u64, u32) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_proc_stat(&text)
}

pub fn parse_proc_stat(text: &str) -> (u64, u32) {
    let mut total = 0;
    let mut cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let ticks: u64 = fields.take(7).filter_map(|f| f.parse::<u64>().ok()).sum();
                // USER_HZ is 100 on Linux.
                total = ticks.saturating_mul(1_000_000_000 / 100);
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    (total, cpus)
}

/// Parses `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> BTreeMap<String, NetDev> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let n: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if n.len() < 16 {
            continue;
        }
        out.insert(
            name.trim().to_string(),
            NetDev {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            },
        );
    }
    out
}

fn host_memory() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Samples container `id` whose init is `pid`.
pub fn sample(id: &str, pid: i32) -> Sample {
    let (system_cpu, online_cpus) = system_cpu();
    let mut s = Sample {
        read: crate::images::config::now_rfc3339(),
        system_cpu,
        online_cpus,
        ..Default::default()
    };
    let host_mem = host_memory();
    if is_cgroup_v2() {
        let dir = Path::new("/sys/fs/cgroup/strata").join(id);
        let cpu = read_kv(&dir.join("cpu.stat"));
        s.cpu_total = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
        s.cpu_user = cpu.get("user_usec").copied().unwrap_or(0) * 1000;
        s.cpu_kernel = cpu.get("system_usec").copied().unwrap_or(0) * 1000;
        s.mem_usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
        s.mem_limit = read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX);
        s.mem_stats = read_kv(&dir.join("memory.stat"));
        s.pids_current = read_u64(&dir.join("pids.current")).unwrap_or(0);
        s.pids_limit = read_u64(&dir.join("pids.max")).unwrap_or(0);
        for line in std::fs::read_to_string(dir.join("io.stat")).unwrap_or_default().lines() {
            let mut it = line.split_whitespace();
            let Some((major, minor)) = it.next().and_then(|d| d.split_once(':')) else { continue };
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else { continue };
                let op = match k {
                    "rbytes" => "read",
                    "wbytes" => "write",
                    _ => continue,
                };
                s.blkio.push(BlkioEntry { major, minor, op: op.to_string(), value: v.parse().unwrap_or(0) });
            }
        }
    } else {
        let cpu = v1_dir("cpuacct", id);
        s.cpu_total = read_u64(&cpu.join("cpuacct.usage")).unwrap_or(0);
        s.cpu_user = read_u64(&cpu.join("cpuacct.usage_user")).unwrap_or(0);
        s.cpu_kernel = read_u64(&cpu.join("cpuacct.usage_sys")).unwrap_or(0);
        s.percpu = std::fs::read_to_string(cpu.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let mem = v1_dir("memory", id);
        s.mem_usage = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
        s.mem_max_usage = read_u64(&mem.join("memory.max_usage_in_bytes")).unwrap_or(0);
        s.mem_limit = read_u64(&mem.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
        s.mem_stats = read_kv(&mem.join("memory.stat"));
        let pids = v1_dir("pids", id);
        s.pids_current = read_u64(&pids.join("pids.current")).unwrap_or(0);
        s.pids_limit = read_u64(&pids.join("pids.max")).unwrap_or(0);
        let blkio = v1_dir("blkio", id);
        let mut text = std::fs::read_to_string(blkio.join("blkio.io_service_bytes_recursive")).unwrap_or_default();
        if text.lines().count() <= 1 {
            text = std::fs::read_to_string(blkio.join("blkio.throttle.io_service_bytes_recursive")).unwrap_or_default();
        }
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 3 {
                continue;
            }
            let Some((major, minor)) = f[0].split_once(':') else { continue };
            let (Ok(major), Ok(minor), Ok(value)) = (major.parse(), minor.parse(), f[2].parse()) else { continue };
            s.blkio.push(BlkioEntry { major, minor, op: f[1].to_lowercase(), value });
        }
    }
    if host_mem > 0 && s.mem_limit > host_mem {
        s.mem_limit = host_mem;
    }
    if pid > 0 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
        s.networks = parse_net_dev(&text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_net_dev() {
        let (total, cpus) = parse_proc_stat("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0\ncpu1 5 0 5 40 0 0 0\nintr 1\n");
        assert_eq!(total, 100 * 10_000_000);
        assert_eq!(cpus, 2);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 1296 16 0 0 0 0 0 0 1296 16 0 0 0 0 0 0\n";
        let nets = parse_net_dev(dev);
        assert_eq!(nets["lo"].rx_bytes, 1296);
        assert_eq!(nets["lo"].tx_packets, 16);
    }
}
