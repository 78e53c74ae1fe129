//! Resource limits of `HostConfig` (memory, CPU, pids, block I/O weight):
//! checked at create and by `docker update` with dockerd's messages, turned
//! into the OCI spec's `linux.resources`, and applied to a running
//! container with `runc update`.

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::EngineError;

/// The `HostConfig` keys this module owns.
pub const KEYS: &[&str] = &[
    "Memory",
    "MemorySwap",
    "MemoryReservation",
    "CpuShares",
    "NanoCpus",
    "CpuPeriod",
    "CpuQuota",
    "CpusetCpus",
    "CpusetMems",
    "PidsLimit",
    "BlkioWeight",
];

/// dockerd's smallest memory limit (6 MiB).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// The limits as numbers; 0 or empty means "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: i64,
    /// Memory plus swap; -1 is unlimited swap.
    pub memory_swap: i64,
    pub memory_reservation: i64,
    pub cpu_shares: i64,
    pub nano_cpus: i64,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// `None` when not set; 0 or less is unlimited.
    pub pids_limit: Option<i64>,
    pub blkio_weight: i64,
}

fn int(obj: &Value, key: &str) -> Result<i64, EngineError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| EngineError::invalid(format!("{key} must be an integer"))),
    }
}

fn string(obj: &Value, key: &str) -> Result<String, EngineError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(EngineError::invalid(format!("{key} must be a string"))),
    }
}

impl Limits {
    /// Reads the limits of a `HostConfig` (or an update body).
    pub fn from_json(obj: &Value) -> Result<Limits, EngineError> {
        Ok(Limits {
            memory: int(obj, "Memory")?,
            memory_swap: int(obj, "MemorySwap")?,
            memory_reservation: int(obj, "MemoryReservation")?,
            cpu_shares: int(obj, "CpuShares")?,
            nano_cpus: int(obj, "NanoCpus")?,
            cpu_period: int(obj, "CpuPeriod")?,
            cpu_quota: int(obj, "CpuQuota")?,
            cpuset_cpus: string(obj, "CpusetCpus")?,
            cpuset_mems: string(obj, "CpusetMems")?,
            pids_limit: match obj.get("PidsLimit") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().ok_or_else(|| EngineError::invalid("PidsLimit must be an integer"))?),
            },
            blkio_weight: int(obj, "BlkioWeight")?,
        })
    }

    /// Writes the limits into a `HostConfig` object.
    pub fn store(&self, host_config: &mut Value) {
        let Some(obj) = host_config.as_object_mut() else { return };
        obj.insert("Memory".into(), json!(self.memory));
        obj.insert("MemorySwap".into(), json!(self.memory_swap));
        obj.insert("MemoryReservation".into(), json!(self.memory_reservation));
        obj.insert("CpuShares".into(), json!(self.cpu_shares));
        obj.insert("NanoCpus".into(), json!(self.nano_cpus));
        obj.insert("CpuPeriod".into(), json!(self.cpu_period));
        obj.insert("CpuQuota".into(), json!(self.cpu_quota));
        obj.insert("CpusetCpus".into(), json!(self.cpuset_cpus));
        obj.insert("CpusetMems".into(), json!(self.cpuset_mems));
        obj.insert("PidsLimit".into(), json!(self.pids_limit));
        obj.insert("BlkioWeight".into(), json!(self.blkio_weight));
    }

    /// dockerd's checks of values that are wrong by themselves and of the
    /// combinations that do not make sense, for create and update alike.
    pub fn check(&self, cpus: usize) -> Result<(), EngineError> {
        if self.memory != 0 && self.memory < MIN_MEMORY {
            return Err(EngineError::invalid("Minimum memory limit allowed is 6MB"));
        }
        if self.memory_swap > 0 && self.memory > 0 && self.memory_swap < self.memory {
            return Err(EngineError::invalid("Minimum memoryswap limit should be larger than memory limit, see usage"));
        }
        if self.memory_reservation < 0 || (self.memory_reservation != 0 && self.memory_reservation < MIN_MEMORY) {
            return Err(EngineError::invalid("Minimum memory reservation allowed is 6MB"));
        }
        if self.memory > 0 && self.memory_reservation > 0 && self.memory < self.memory_reservation {
            return Err(EngineError::invalid("Minimum memory limit can not be less than memory reservation limit, see usage"));
        }
        if self.nano_cpus != 0 && self.cpu_period != 0 {
            return Err(EngineError::invalid("Conflicting options: Nano CPUs and CPU Period cannot both be set"));
        }
        if self.nano_cpus != 0 && self.cpu_quota != 0 {
            return Err(EngineError::invalid("Conflicting options: Nano CPUs and CPU Quota cannot both be set"));
        }
        let cpus = i64::try_from(cpus.max(1)).unwrap_or(1);
        if self.nano_cpus < 0 || self.nano_cpus > cpus * 1_000_000_000 {
            return Err(EngineError::invalid(format!(
                "Range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
            )));
        }
        if self.cpu_shares < 0 {
            return Err(EngineError::invalid("Invalid CPU shares: it must be a positive number"));
        }
        if self.cpu_period != 0 && !(1000..=1_000_000).contains(&self.cpu_period) {
            return Err(EngineError::invalid(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)",
            ));
        }
        if self.cpu_quota != 0 && self.cpu_quota < 1000 {
            return Err(EngineError::invalid("CPU cfs quota can not be less than 1ms (i.e. 1000)"));
        }
        if self.blkio_weight != 0 && !(10..=1000).contains(&self.blkio_weight) {
            return Err(EngineError::invalid("Range of blkio weight is from 10 to 1000"));
        }
        for (name, set) in [("cpuset cpus", &self.cpuset_cpus), ("cpuset mems", &self.cpuset_mems)] {
            if !set.is_empty() && !valid_cpuset(set) {
                return Err(EngineError::invalid(format!("Invalid value {set} for {name}")));
            }
        }
        Ok(())
    }

    /// Create-time checks and defaults: a swap limit needs a memory limit,
    /// and a memory limit alone gets twice as much memory plus swap (when
    /// the host accounts swap), as dockerd does.
    pub fn for_create(mut self, cpus: usize, swap_accounting: bool) -> Result<Limits, EngineError> {
        if self.memory == 0 && self.memory_swap != 0 && self.memory_swap != -1 {
            return Err(EngineError::invalid("You should always set the Memory limit when using Memoryswap limit, see usage"));
        }
        self.check(cpus)?;
        if self.memory > 0 && self.memory_swap == 0 && swap_accounting {
            self.memory_swap = self.memory.saturating_mul(2);
        }
        Ok(self)
    }

    /// `docker update`: the fields set in `update` replace those of
    /// `self`, with dockerd's conflict rules.
    pub fn updated(&self, update: &Limits, cpus: usize) -> Result<Limits, EngineError> {
        let conflict = |m: &str| Err(EngineError::conflict(m.to_string()));
        if update.nano_cpus > 0 && self.cpu_period > 0 {
            return conflict("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set");
        }
        if update.nano_cpus > 0 && self.cpu_quota > 0 {
            return conflict("Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set");
        }
        if update.cpu_period > 0 && self.nano_cpus > 0 {
            return conflict("Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set");
        }
        if update.cpu_quota > 0 && self.nano_cpus > 0 {
            return conflict("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set");
        }
        let mut out = self.clone();
        if update.blkio_weight != 0 {
            out.blkio_weight = update.blkio_weight;
        }
        if update.cpu_shares != 0 {
            out.cpu_shares = update.cpu_shares;
        }
        if update.nano_cpus != 0 {
            out.nano_cpus = update.nano_cpus;
        }
        if update.cpu_period != 0 {
            out.cpu_period = update.cpu_period;
        }
        if update.cpu_quota != 0 {
            out.cpu_quota = update.cpu_quota;
        }
        if !update.cpuset_cpus.is_empty() {
            out.cpuset_cpus = update.cpuset_cpus.clone();
        }
        if !update.cpuset_mems.is_empty() {
            out.cpuset_mems = update.cpuset_mems.clone();
        }
        if update.memory != 0 {
            if update.memory > self.memory_swap && update.memory_swap == 0 {
                return conflict(
                    "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time",
                );
            }
            out.memory = update.memory;
        }
        if update.memory_swap != 0 {
            out.memory_swap = update.memory_swap;
        }
        if update.memory_reservation != 0 {
            out.memory_reservation = update.memory_reservation;
        }
        if update.pids_limit.is_some() {
            out.pids_limit = update.pids_limit;
        }
        out.check(cpus)?;
        Ok(out)
    }

    /// The OCI `linux.resources` limits (memory, cpu, pids, blockIO).
    pub fn to_oci(&self) -> OciLimits {
        let memory = (self.memory != 0 || self.memory_swap != 0 || self.memory_reservation != 0).then(|| OciMemory {
            limit: (self.memory != 0).then_some(self.memory),
            swap: (self.memory_swap != 0).then_some(self.memory_swap),
            reservation: (self.memory_reservation != 0).then_some(self.memory_reservation),
        });
        let (period, quota) = if self.nano_cpus > 0 {
            (100_000u64, self.nano_cpus / 10_000)
        } else {
            (u64::try_from(self.cpu_period).unwrap_or(0), self.cpu_quota)
        };
        let cpu = OciCpu {
            shares: u64::try_from(self.cpu_shares).ok().filter(|s| *s != 0),
            quota: (quota != 0).then_some(quota),
            period: (period != 0).then_some(period),
            cpus: (!self.cpuset_cpus.is_empty()).then(|| self.cpuset_cpus.clone()),
            mems: (!self.cpuset_mems.is_empty()).then(|| self.cpuset_mems.clone()),
        };
        let cpu = (cpu != OciCpu::default()).then_some(cpu);
        let pids = self.pids_limit.filter(|l| *l != 0).map(|l| OciPids { limit: if l < 0 { -1 } else { l } });
        let block_io = u16::try_from(self.blkio_weight).ok().filter(|w| *w != 0).map(|weight| OciBlockIo { weight });
        OciLimits { memory, cpu, pids, block_io }
    }
}

/// `0-3,5`: numbers and ranges separated by commas.
fn valid_cpuset(set: &str) -> bool {
    set.split(',').all(|part| {
        let mut ends = part.splitn(2, '-');
        let a = ends.next().unwrap_or("");
        let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match ends.next() {
            None => ok(a),
            Some(b) => ok(a) && ok(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        }
    })
}

/// The limits part of the OCI `linux.resources` (also `runc update -r`'s
/// input format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<OciMemory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<OciCpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<OciPids>,
    #[serde(rename = "blockIO", skip_serializing_if = "Option::is_none")]
    pub block_io: Option<OciBlockIo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OciMemory {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OciCpu {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OciPids {
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OciBlockIo {
    pub weight: u16,
}

/// Whether the host limits memory plus swap (cgroup v1's `memsw` files, or
/// cgroup v2's `memory.swap.max`).
pub fn swap_accounting() -> bool {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes");
    if v1.exists() {
        return true;
    }
    if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        return false;
    }
    // cgroup v2: the swap controller file exists in every non-root cgroup
    // when swap accounting is on; the root has none, so look at the
    // daemon's own cgroup.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim().to_string();
    std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.swap.max").exists()
}

/// The number of CPUs the daemon may use.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(v: Value) -> Limits {
        Limits::from_json(&v).unwrap()
    }

    fn err(r: Result<Limits, EngineError>) -> String {
        r.unwrap_err().message().to_string()
    }

    #[test]
    fn create_checks_and_defaults() {
        let l = limits(json!({"Memory": 33554432})).for_create(2, true).unwrap();
        assert_eq!(l.memory_swap, 67108864);
        let l = limits(json!({"Memory": 33554432})).for_create(2, false).unwrap();
        assert_eq!(l.memory_swap, 0);
        assert_eq!(err(limits(json!({"Memory": 1000})).for_create(2, true)), "Minimum memory limit allowed is 6MB");
        assert_eq!(
            err(limits(json!({"MemorySwap": 100000000})).for_create(2, true)),
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        );
        assert_eq!(
            err(limits(json!({"NanoCpus": 1000, "CpuPeriod": 100000})).for_create(2, true)),
            "Conflicting options: Nano CPUs and CPU Period cannot both be set"
        );
        assert_eq!(
            err(limits(json!({"NanoCpus": 100_000_000_000i64})).for_create(2, true)),
            "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
        assert!(limits(json!({"CpuPeriod": 100})).for_create(2, true).is_err());
        assert!(limits(json!({"CpuQuota": 100})).for_create(2, true).is_err());
        assert!(limits(json!({"CpusetCpus": "0-x"})).for_create(2, true).is_err());
        assert!(limits(json!({"CpusetCpus": "0-1,3"})).for_create(2, true).is_ok());
        assert!(Limits::from_json(&json!({"Memory": "lots"})).is_err());
    }

    #[test]
    fn updates_merge_with_dockerds_rules() {
        let base = limits(json!({"Memory": 33554432})).for_create(2, true).unwrap();
        let up = base.updated(&limits(json!({"Memory": 50331648})), 2).unwrap();
        assert_eq!((up.memory, up.memory_swap), (50331648, 67108864));
        let e = base.updated(&limits(json!({"Memory": 104857600})), 2).unwrap_err();
        assert!(matches!(e, EngineError::Conflict(_)), "{e:?}");
        let up = base.updated(&limits(json!({"Memory": 104857600, "MemorySwap": -1})), 2).unwrap();
        assert_eq!((up.memory, up.memory_swap), (104857600, -1));
        let cpus = limits(json!({"NanoCpus": 500_000_000}));
        assert!(cpus.updated(&limits(json!({"CpuPeriod": 50000})), 2).is_err());
        let up = cpus.updated(&limits(json!({"PidsLimit": 50, "CpuShares": 512})), 2).unwrap();
        assert_eq!((up.pids_limit, up.cpu_shares, up.nano_cpus), (Some(50), 512, 500_000_000));
        assert!(base.updated(&limits(json!({"Memory": 1000, "MemorySwap": -1})), 2).is_err());
    }

    #[test]
    fn oci_limits() {
        let l = limits(json!({"Memory": 33554432, "MemorySwap": 67108864, "NanoCpus": 1_500_000_000, "PidsLimit": 0}));
        let v = serde_json::to_value(l.to_oci()).unwrap();
        assert_eq!(
            v,
            json!({"memory": {"limit": 33554432, "swap": 67108864}, "cpu": {"quota": 150000, "period": 100000}})
        );
        let v = serde_json::to_value(limits(json!({"PidsLimit": -3, "BlkioWeight": 300})).to_oci()).unwrap();
        assert_eq!(v, json!({"pids": {"limit": -1}, "blockIO": {"weight": 300}}));
        assert_eq!(serde_json::to_value(Limits::default().to_oci()).unwrap(), json!({}));
        let mut hc = json!({"Memory": 0});
        limits(json!({"Memory": 33554432, "PidsLimit": 7})).store(&mut hc);
        assert_eq!(hc["Memory"], 33554432);
        assert_eq!(hc["PidsLimit"], 7);
        assert_eq!(hc["CpusetCpus"], "");
    }
}
