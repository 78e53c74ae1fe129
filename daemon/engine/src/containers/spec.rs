//! The OCI runtime spec (`config.json` of a bundle) the engine writes for
//! runc: the subset of the runtime-spec 1.0 fields a Docker container uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::etc::EtcPaths;
use super::seccomp::{self, LinuxSeccomp};
use crate::error::EngineError;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    pub mounts: Vec<SpecMount>,
    pub linux: Linux,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    pub no_new_privileges: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Root {
    pub path: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpecMount {
    pub destination: String,
    #[serde(rename = "type")]
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    pub cgroups_path: String,
    pub resources: Resources,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<LinuxSeccomp>,
    /// Device nodes runc creates in the container's `/dev`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<LinuxDevice>,
}

/// A device node of `linux.devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxDevice {
    pub path: String,
    /// `c` or `b`.
    #[serde(rename = "type")]
    pub typ: String,
    pub major: u64,
    pub minor: u64,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Directories of the host's `/dev` a privileged container does not get
/// (its own instances are mounted there).
const SKIPPED_DEV_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The character and block devices under `dir` (the host's `/dev` for a
/// privileged container), symlinks and `console` excluded.
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ft = meta.file_type();
        if ft.is_dir() {
            if !SKIPPED_DEV_DIRS.contains(&name) {
                out.extend(host_devices(&path));
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        if name == "console" {
            continue;
        }
        let dev = meta.rdev();
        out.push(LinuxDevice {
            path: path.display().to_string(),
            typ: typ.to_string(),
            major: ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            minor: (dev & 0xff) | ((dev >> 12) & !0xff),
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub typ: String,
    /// A namespace to join (`/proc/<pid>/ns/<kind>`) instead of a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub devices: Vec<DeviceRule>,
    /// Memory, CPU, pids and block I/O limits from `HostConfig`.
    #[serde(flatten)]
    pub limits: super::resources::OciLimits,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceRule {
    pub allow: bool,
    pub access: String,
}

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths Docker hides from containers.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in containers.
pub const READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Every capability Linux defines (up to CAP_CHECKPOINT_RESTORE, 40).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities the daemon itself may hand out: those of its own
/// bounding set (runc cannot grant more). "All capabilities" means these.
pub fn grantable_capabilities() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// `sys_admin`, `SYS_ADMIN`, `CAP_SYS_ADMIN` → `CAP_SYS_ADMIN`; `None` for `ALL`.
fn normalize_capability(name: &str) -> Result<Option<String>, EngineError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(Some(full))
    } else {
        Err(EngineError::invalid(format!("unknown capability: {full:?}")))
    }
}

/// The security settings of a container's processes, from its HostConfig:
/// capabilities (`CapAdd`, `CapDrop`, `Privileged`), seccomp and
/// no-new-privileges (`SecurityOpt`).
#[derive(Debug, Clone)]
pub struct Security {
    pub capabilities: Vec<String>,
    pub seccomp: Option<LinuxSeccomp>,
    pub no_new_privileges: bool,
    /// All capabilities, no seccomp filter, no masked or read-only paths,
    /// the host's devices, every device allowed, sysfs and cgroupfs
    /// writable.
    pub privileged: bool,
}

impl Default for Security {
    /// Docker's defaults: its capability set and its seccomp profile.
    fn default() -> Self {
        let capabilities: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        let seccomp = seccomp::default_profile().to_spec(&seccomp::Host::current(), &capabilities);
        Security { capabilities, seccomp, no_new_privileges: false, privileged: false }
    }
}

impl Security {
    /// Reads and checks the HostConfig; a bad capability, security option
    /// or seccomp profile is an invalid-argument error.
    pub fn from_host_config(host_config: &Value) -> Result<Security, EngineError> {
        let list = |key: &str| -> Vec<String> {
            match host_config.get(key) {
                Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            }
        };
        let privileged = host_config.get("Privileged").and_then(Value::as_bool).unwrap_or(false);
        let options = seccomp::parse_security_opts(&list("SecurityOpt"))?;
        let (mut add_all, mut drop_all) = (false, false);
        let mut adds = Vec::new();
        for c in list("CapAdd") {
            match normalize_capability(&c)? {
                Some(c) => adds.push(c),
                None => add_all = true,
            }
        }
        let mut drops = Vec::new();
        for c in list("CapDrop") {
            match normalize_capability(&c)? {
                Some(c) => drops.push(c),
                None => drop_all = true,
            }
        }
        let mut capabilities: Vec<String> = if privileged {
            grantable_capabilities()
        } else if add_all {
            grantable_capabilities().into_iter().filter(|c| !drops.contains(c)).collect()
        } else if drop_all {
            adds
        } else {
            let mut caps: Vec<String> =
                DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).filter(|c| !drops.contains(c)).collect();
            caps.extend(adds);
            caps
        };
        let mut seen = std::collections::HashSet::new();
        capabilities.retain(|c| seen.insert(c.clone()));
        let seccomp = if privileged {
            None
        } else {
            seccomp::for_container(&options.seccomp, &seccomp::Host::current(), &capabilities)?
        };
        Ok(Security { capabilities, seccomp, no_new_privileges: options.no_new_privileges, privileged })
    }
}

/// The IPC namespace of a container (`HostConfig.IpcMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpcMode {
    /// Its own namespace and `/dev/shm` (`private`, `shareable`, default).
    #[default]
    Private,
    /// The host's namespace and `/dev/shm`.
    Host,
    /// Its own namespace without a `/dev/shm` mount.
    None,
}

/// Reads `PidMode` and `IpcMode` as dockerd does: `host` shares the
/// host's namespace, other words mean a private one; joining another
/// container's (`container:<name>`) is refused.
pub fn namespace_modes(host_config: &Value) -> Result<(bool, IpcMode), EngineError> {
    let mode = |key: &str| host_config.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let (pid, ipc) = (mode("PidMode"), mode("IpcMode"));
    for (key, value) in [("PID", &pid), ("IPC", &ipc)] {
        if value == "container:" || value.starts_with("container::") {
            return Err(EngineError::invalid(format!("invalid {key} mode: {value}")));
        }
    }
    // `container:<name>` joins another container's namespace: see
    // `SpecInput::joins`; here it is a namespace of the container's own.
    let ipc = match ipc.as_str() {
        "host" => IpcMode::Host,
        "none" => IpcMode::None,
        _ => IpcMode::Private,
    };
    Ok((pid == "host", ipc))
}

/// What the spec is built from.
#[derive(Debug, Clone)]
pub struct SpecInput {
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub terminal: bool,
    pub hostname: String,
    /// Join the host's network namespace.
    pub host_network: bool,
    /// Join the host's UTS namespace (`--uts host`): no hostname is set.
    pub host_uts: bool,
    /// `--read-only`: the root and the `/etc` files are mounted read-only.
    pub readonly_rootfs: bool,
    /// `--pid host`: the host's PID namespace.
    pub host_pid: bool,
    /// `--ipc host|none|private`.
    pub ipc: IpcMode,
    /// Namespaces joined instead of created (`--network/--pid/--ipc
    /// container:<name>`): the OCI kind (`network`, `pid`, `ipc`) and the
    /// target's init process ID.
    pub joins: Vec<(String, i32)>,
    pub security: Security,
    /// The container's hostname, hosts and resolv.conf files, bind-mounted
    /// over the image's.
    pub etc: Option<EtcPaths>,
    /// The container's bind, volume and tmpfs mounts, mounted after the
    /// defaults; one replaces a default (or `/etc` file) at its destination.
    pub mounts: Vec<SpecMount>,
}

/// The absolute cgroup path of a container (cgroupfs, v1 or v2).
pub fn cgroups_path(id: &str) -> String {
    format!("/strata/{id}")
}

/// The file under `/proc/<pid>/ns/` of an OCI namespace kind.
fn ns_file(kind: &str) -> &str {
    match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    }
}

/// Builds the spec of a container whose root filesystem is `rootfs`.
pub fn build(input: &SpecInput) -> Spec {
    let security = &input.security;
    let caps = security.capabilities.clone();
    let mut namespaces = vec!["pid", "ipc", "uts", "mount"];
    if !input.host_network {
        namespaces.push("network");
    }
    let joins_network = input.joins.iter().any(|(k, _)| k == "network");
    if input.host_uts {
        namespaces.retain(|n| *n != "uts");
    }
    if input.host_pid {
        namespaces.retain(|n| *n != "pid");
    }
    if input.ipc == IpcMode::Host {
        namespaces.retain(|n| *n != "ipc");
    }
    let m = |dest: &str, typ: &str, source: &str, options: &[&str]| SpecMount {
        destination: dest.to_string(),
        typ: typ.to_string(),
        source: source.to_string(),
        options: options.iter().map(|o| o.to_string()).collect(),
    };
    let mut mounts = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        m("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        m("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        m("/sys/fs/cgroup", "cgroup", "cgroup", &["ro", "nosuid", "noexec", "nodev"]),
        m("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        m("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]),
    ];
    if input.host_network || joins_network {
        // With the host's network namespace, sysfs of that namespace cannot be
        // mounted afresh; bind the host's read-only instead (also when joining
        // another container's: its sysfs is not ours to mount).
        mounts[3] = m("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"]);
    }
    match input.ipc {
        // Also when joining another container's IPC namespace: its SysV IPC
        // and message queues are shared, but its /dev/shm (a tmpfs in its own
        // mount namespace, which cannot be bind-mounted from outside it) is
        // not; the container gets a /dev/shm of its own.
        IpcMode::Private => {}
        IpcMode::None => mounts.retain(|m| m.destination != "/dev/shm"),
        IpcMode::Host => {
            for mount in mounts.iter_mut().filter(|m| m.destination == "/dev/shm") {
                *mount = m("/dev/shm", "bind", "/dev/shm", &["rbind", "rprivate"]);
            }
        }
    }
    if security.privileged {
        for mount in &mut mounts {
            if mount.destination == "/sys" || mount.destination == "/sys/fs/cgroup" {
                mount.options.retain(|o| o != "ro");
                mount.options.push("rw".to_string());
            }
        }
    }
    if let Some(etc) = &input.etc {
        for (dest, source) in etc.mounts() {
            mounts.push(SpecMount {
                destination: dest.to_string(),
                typ: "bind".to_string(),
                source: source.display().to_string(),
                options: ["rbind", "rprivate"]
                    .into_iter()
                    .chain(input.readonly_rootfs.then_some("ro"))
                    .map(str::to_string)
                    .collect(),
            });
        }
    }
    mounts.retain(|m| !input.mounts.iter().any(|u| u.destination == m.destination));
    mounts.extend(input.mounts.iter().cloned());
    let (masked, readonly): (&[&str], &[&str]) =
        if security.privileged { (&[], &[]) } else { (MASKED_PATHS, READONLY_PATHS) };
    Spec {
        oci_version: "1.0.2".to_string(),
        process: Process {
            terminal: input.terminal,
            user: input.user.clone(),
            args: input.args.clone(),
            env: input.env.clone(),
            cwd: if input.cwd.is_empty() { "/".to_string() } else { input.cwd.clone() },
            capabilities: Capabilities { bounding: caps.clone(), effective: caps.clone(), permitted: caps },
            no_new_privileges: security.no_new_privileges,
        },
        root: Root { path: "rootfs".to_string(), readonly: input.readonly_rootfs },
        hostname: if input.host_uts { String::new() } else { input.hostname.clone() },
        mounts,
        linux: Linux {
            namespaces: namespaces
                .into_iter()
                .map(|t| Namespace {
                    typ: t.to_string(),
                    path: input.joins.iter().find(|(k, _)| k == t).map(|(_, pid)| format!("/proc/{pid}/ns/{}", ns_file(t))),
                })
                .collect(),
            cgroups_path: cgroups_path(&input.id),
            resources: Resources {
                devices: vec![DeviceRule { allow: security.privileged, access: "rwm".to_string() }],
                limits: Default::default(),
            },
            masked_paths: masked.iter().map(|p| p.to_string()).collect(),
            readonly_paths: readonly.iter().map(|p| p.to_string()).collect(),
            seccomp: security.seccomp.clone(),
            devices: if security.privileged { host_devices(Path::new("/dev")) } else { Vec::new() },
        },
    }
}

/// The process description `runc exec --process` reads.
pub fn exec_process(input: &SpecInput) -> Process {
    build(input).process
}

/// Resolves Docker's `User` (`""`, `name`, `uid`, `name:group`,
/// `uid:gid`) against the container's `/etc/passwd` and `/etc/group`, as
/// dockerd does: the additional groups are the groups of `/etc/group` that
/// list the user as a member, then `group_add` (HostConfig.GroupAdd: group
/// names or numeric IDs).
pub fn resolve_user(rootfs: &Path, user: &str, group_add: &[String]) -> Result<User, EngineError> {
    let user_text = if user.trim().is_empty() { "0" } else { user.trim() };
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let groups: Vec<Vec<&str>> = group.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(':').collect()).collect();
    let mut resolved = resolve_primary(rootfs, user_text)?;
    let name = std::fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|e| e.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(resolved.uid))
        .and_then(|e| e.first().map(|n| n.to_string()));
    let mut extra = Vec::new();
    if let Some(name) = name {
        for entry in &groups {
            let member = entry.get(3).is_some_and(|list| list.split(',').any(|m| m.trim() == name));
            if let (true, Some(gid)) = (member, entry.get(2).and_then(|x| x.parse::<u32>().ok())) {
                extra.push(gid);
            }
        }
    }
    for wanted in group_add {
        let gid = match wanted.trim().parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.first() == Some(&wanted.trim()))
                .and_then(|e| e.get(2))
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| EngineError::invalid(format!("unable to find group {wanted}: no matching entries in group file")))?,
        };
        extra.push(gid);
    }
    let mut seen = std::collections::BTreeSet::new();
    extra.retain(|g| seen.insert(*g));
    resolved.additional_gids = extra;
    Ok(resolved)
}

fn resolve_primary(rootfs: &Path, user: &str) -> Result<User, EngineError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(':').map(str::to_string).collect()).collect()
    };
    let passwd = entries(&passwd);
    let groups = entries(&group);
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd.iter().find(|e| e.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(uid));
            (uid, gid.and_then(|e| e.get(3)).and_then(|x| x.parse().ok()).unwrap_or(0))
        }
        Err(_) => {
            let entry = passwd.iter().find(|e| e.first().map(String::as_str) == Some(u)).ok_or_else(|| {
                EngineError::invalid(format!("unable to find user {u}: no matching entries in passwd file"))
            })?;
            let uid = entry.get(2).and_then(|x| x.parse().ok()).ok_or_else(|| EngineError::invalid(format!("bad passwd entry for {u}")))?;
            let gid = entry.get(3).and_then(|x| x.parse().ok()).unwrap_or(0);
            (uid, gid)
        }
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2))
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| EngineError::invalid(format!("unable to find group {g}: no matching entries in group file")))?,
        };
    }
    Ok(User { uid, gid, additional_gids: Vec::new() })
}

/// Merges `KEY=value` lists: a later list replaces a key's value in place
/// and appends new keys, keeping first-seen order.
fn merge_lists(lists: &[&[String]]) -> Vec<String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for kv in lists.iter().flat_map(|l| l.iter()) {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k).to_string();
        if !map.contains_key(&key) {
            order.push(key.clone());
        }
        map.insert(key, kv.clone());
    }
    order.into_iter().filter_map(|k| map.remove(&k)).collect()
}

/// `Config.Env` of a new container: the image's variables, replaced or
/// extended by the request's. As with dockerd, PATH, HOSTNAME and TERM
/// defaults are not stored there (so a commit does not capture them);
/// [`merge_env`] adds them when a process starts.
pub fn merge_config_env(image: &[String], request: &[String]) -> Vec<String> {
    merge_lists(&[image, request])
}

/// The environment of a process: a default PATH, HOSTNAME (and TERM with a
/// terminal) as Docker sets them, overridden by `image` and then `request`.
pub fn merge_env(image: &[String], request: &[String], hostname: &str, terminal: bool) -> Vec<String> {
    let mut defaults = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("HOSTNAME={hostname}"),
    ];
    if terminal {
        defaults.push("TERM=xterm".to_string());
    }
    merge_lists(&[&defaults, image, request])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nusers:x:100:\n").unwrap();
        let u = resolve_user(dir.path(), "nobody", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        let u = resolve_user(dir.path(), "nobody:users", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 100));
        let u = resolve_user(dir.path(), "1000:7", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = resolve_user(dir.path(), "", &[]).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert!(resolve_user(dir.path(), "ghost", &[]).is_err());
        assert!(resolve_user(dir.path(), "root:ghosts", &[]).is_err());
    }

    #[test]
    fn additional_groups_are_memberships_then_group_add() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh
nobody:x:65534:65534::/:/bin/false
").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:
wheel:x:10:root,adm
audio:x:29:nobody
users:x:100:
").unwrap();
        assert_eq!(resolve_user(dir.path(), "", &[]).unwrap().additional_gids, [10]);
        assert_eq!(resolve_user(dir.path(), "nobody", &[]).unwrap().additional_gids, [29]);
        let groups = ["users".to_string(), "1000".to_string(), "29".to_string()];
        assert_eq!(resolve_user(dir.path(), "nobody", &groups).unwrap().additional_gids, [29, 100, 1000]);
        assert_eq!(resolve_user(dir.path(), "4242", &groups).unwrap().additional_gids, [100, 1000, 29]);
        let err = resolve_user(dir.path(), "root", &["ghosts".to_string()]).unwrap_err();
        assert!(err.to_string().contains("unable to find group ghosts"), "{err}");
    }

    #[test]
    fn env_merge_overrides_in_order() {
        let env = merge_env(&["PATH=/bin".into(), "A=1".into()], &["A=2".into(), "B=3".into()], "h", false);
        assert_eq!(env, vec!["PATH=/bin", "HOSTNAME=h", "A=2", "B=3"]);
        let env = merge_env(&[], &[], "h", true);
        assert_eq!(env[1..], ["HOSTNAME=h", "TERM=xterm"]);
        let config = merge_config_env(&["PATH=/bin".into(), "A=1".into()], &["A=2".into()]);
        assert_eq!(config, ["PATH=/bin", "A=2"]);
    }

    #[test]
    fn spec_has_docker_defaults() {
        let input = sample_input();
        let v = serde_json::to_value(build(&input)).unwrap();
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["mounts"][7]["destination"], "/etc/resolv.conf");
        assert_eq!(v["mounts"][9]["source"], "/c/hosts");
        assert_eq!(v["mounts"][9]["options"], serde_json::json!(["rbind", "rprivate"]));
        assert_eq!(v["linux"]["cgroupsPath"], "/strata/x");
        assert_eq!(v["process"]["cwd"], "/");
        let ns: Vec<&str> = v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network"));
        assert_eq!(v["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        let host = build(&SpecInput { host_network: true, ..input.clone() });
        assert!(!host.linux.namespaces.iter().any(|n| n.typ == "network"));
        let uts = build(&SpecInput { host_uts: true, ..input.clone() });
        assert!(!uts.linux.namespaces.iter().any(|n| n.typ == "uts"));
        assert_eq!(uts.hostname, "");
        let shared = build(&SpecInput { host_pid: true, ipc: IpcMode::Host, ..input.clone() });
        let ns: Vec<&str> = shared.linux.namespaces.iter().map(|n| n.typ.as_str()).collect();
        assert_eq!(ns, ["uts", "mount", "network"]);
        let shm = shared.mounts.iter().find(|m| m.destination == "/dev/shm").unwrap();
        assert_eq!((shm.typ.as_str(), shm.source.as_str()), ("bind", "/dev/shm"));
        let no_shm = build(&SpecInput { ipc: IpcMode::None, ..input.clone() });
        assert!(!no_shm.mounts.iter().any(|m| m.destination == "/dev/shm"));
        assert_eq!(namespace_modes(&serde_json::json!({"PidMode": "host", "IpcMode": "none"})).unwrap(), (true, IpcMode::None));
        assert_eq!(namespace_modes(&serde_json::json!({"IpcMode": "shareable"})).unwrap(), (false, IpcMode::Private));
        assert_eq!(namespace_modes(&serde_json::json!({"PidMode": "container:web"})).unwrap(), (false, IpcMode::Private));
        assert!(namespace_modes(&serde_json::json!({"PidMode": "container:"})).is_err());
        let joined = build(&SpecInput { joins: vec![("network".into(), 42), ("pid".into(), 42)], ..input.clone() });
        let v = serde_json::to_value(&joined).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/proc/42/ns/net"));
        assert!(ns.iter().any(|n| n["type"] == "pid" && n["path"] == "/proc/42/ns/pid"));
        assert!(ns.iter().any(|n| n["type"] == "uts" && n.get("path").is_none()));
        let ro = serde_json::to_value(build(&SpecInput { readonly_rootfs: true, ..input.clone() })).unwrap();
        assert_eq!(ro["root"]["readonly"], true);
        assert_eq!(ro["mounts"][9]["options"], serde_json::json!(["rbind", "rprivate", "ro"]));

        let unconfined = Security::from_host_config(&serde_json::json!({"SecurityOpt": ["seccomp=unconfined"]})).unwrap();
        let v = serde_json::to_value(build(&SpecInput { security: unconfined, ..input.clone() })).unwrap();
        assert!(v["linux"].get("seccomp").is_none());
        let privileged = Security::from_host_config(&serde_json::json!({"Privileged": true})).unwrap();
        let spec = build(&SpecInput { security: privileged, ..input });
        assert!(spec.linux.seccomp.is_none() && spec.linux.masked_paths.is_empty() && spec.linux.resources.devices[0].allow);
        assert!(spec.process.capabilities.bounding.len() > DEFAULT_CAPABILITIES.len());
        let null = spec.linux.devices.iter().find(|d| d.path == "/dev/null").expect("/dev/null among the devices");
        assert_eq!((null.typ.as_str(), null.major, null.minor), ("c", 1, 3));
        assert!(!spec.linux.devices.iter().any(|d| d.path.starts_with("/dev/pts/")));

        let user = vec![
            SpecMount { destination: "/etc/hosts".into(), typ: "bind".into(), source: "/h".into(), options: vec!["rbind".into()] },
            SpecMount { destination: "/data".into(), typ: "bind".into(), source: "/d".into(), options: vec!["rbind".into()] },
        ];
        let spec = build(&SpecInput { mounts: user, readonly_rootfs: true, ..sample_input() });
        let hosts: Vec<&SpecMount> = spec.mounts.iter().filter(|m| m.destination == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source, "/h");
        assert_eq!(spec.mounts.last().unwrap().destination, "/data");
    }

    fn sample_input() -> SpecInput {
        SpecInput {
            id: "x".into(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: String::new(),
            user: User::default(),
            terminal: false,
            hostname: "h".into(),
            host_network: false,
            host_uts: false,
            readonly_rootfs: false,
            host_pid: false,
            ipc: IpcMode::Private,
            joins: Vec::new(),
            security: Security::default(),
            etc: Some(EtcPaths::in_dir(Path::new("/c"))),
            mounts: Vec::new(),
        }
    }

    #[test]
    fn capabilities_from_the_host_config() {
        let caps = |hc: serde_json::Value| Security::from_host_config(&hc).map(|s| s.capabilities);
        let add = caps(serde_json::json!({"CapAdd": ["sys_admin", "CAP_NET_ADMIN"], "CapDrop": ["MKNOD"]})).unwrap();
        assert!(add.contains(&"CAP_SYS_ADMIN".to_string()) && add.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!add.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(add.len(), DEFAULT_CAPABILITIES.len() + 1);
        assert_eq!(caps(serde_json::json!({"CapDrop": ["ALL"], "CapAdd": ["CHOWN"]})).unwrap(), ["CAP_CHOWN"]);
        let err = caps(serde_json::json!({"CapAdd": ["FLY"]})).unwrap_err().to_string();
        assert_eq!(err, "unknown capability: \"CAP_FLY\"");
        // With CAP_SYS_ADMIN the seccomp profile allows unshare.
        let sec = Security::from_host_config(&serde_json::json!({"CapAdd": ["SYS_ADMIN"]})).unwrap();
        assert!(sec.seccomp.unwrap().syscalls.iter().any(|r| r.names.iter().any(|n| n == "unshare")));
        let sec = Security::default();
        assert!(!sec.seccomp.unwrap().syscalls.iter().any(|r| r.names.iter().any(|n| n == "unshare")));
    }
}
