//! Seccomp for containers: Docker's default profile, profiles in Docker's
//! JSON format (`--security-opt seccomp=<file>`, whose content the CLI
//! sends), the `--security-opt` values, and the conversion of a profile
//! into the runtime spec's `linux.seccomp` for this host.
//!
//! A Docker profile is written for every architecture and capability set;
//! the conversion keeps what applies here: the architectures of the host's
//! `archMap` entry (x86_64 with x86 and x32, aarch64 with arm, ...), and
//! only the rules whose `includes` (architectures, capabilities, minimum
//! kernel) hold and whose `excludes` do not, given the container's
//! bounding capabilities. The default profile denies with EPERM every
//! system call it does not allow; namespaces, mounts, module loading,
//! clock setting, kernel keyrings and the like stay closed unless the
//! container holds the capability that guards them.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::EngineError;

/// What `docker info` lists under Security Options.
pub const SECURITY_OPTION: &str = "name=seccomp,profile=default";

/// `linux.seccomp` of the OCI runtime spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccomp {
    pub default_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    pub architectures: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    pub syscalls: Vec<LinuxSyscall>,
}

/// One rule of `linux.seccomp.syscalls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSyscall {
    pub names: Vec<String>,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

/// A condition on one argument of a system call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    pub op: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `null` in a profile means "empty", as in Go.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A seccomp profile in Docker's JSON format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default, deserialize_with = "nullable")]
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "nullable")]
    pub syscalls: Vec<Syscall>,
    #[serde(default, deserialize_with = "nullable")]
    pub flags: Vec<String>,
}

/// The architectures a native one runs, in a profile's `archMap`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sub_architectures: Vec<String>,
}

/// A rule of a Docker profile, with the conditions under which it applies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscall {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub names: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub args: Vec<Arg>,
    #[serde(default, deserialize_with = "nullable")]
    pub includes: Filter,
    #[serde(default, deserialize_with = "nullable")]
    pub excludes: Filter,
}

/// Conditions of a rule: Go architecture names (`amd64`, `arm64`, ...),
/// capabilities, and a minimum kernel version (`4.8`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, deserialize_with = "nullable")]
    pub arches: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub caps: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub min_kernel: String,
}

const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

const OPERATORS: &[&str] =
    &["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"];

const ARCHITECTURES: &[&str] = &[
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
];

/// The host as a profile names it: Go's architecture name (used in rule
/// conditions) and libseccomp's (used in `archMap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub go_arch: &'static str,
    pub seccomp_arch: &'static str,
    /// Kernel (major, minor).
    pub kernel: (u32, u32),
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        let (go_arch, seccomp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
            "x86" => ("386", "SCMP_ARCH_X86"),
            "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
            "arm" => ("arm", "SCMP_ARCH_ARM"),
            "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
            "s390x" => ("s390x", "SCMP_ARCH_S390X"),
            "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
            "mips64" => ("mips64", "SCMP_ARCH_MIPS64"),
            other => (other, ""),
        };
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.release().to_str().and_then(parse_kernel))
            .unwrap_or((0, 0));
        Host { go_arch, seccomp_arch, kernel }
    }
}

/// `6.1.0-13-amd64` → (6, 1).
fn parse_kernel(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

impl Profile {
    /// Parses a profile sent as `seccomp=<json>`.
    pub fn parse(json: &str) -> Result<Profile, EngineError> {
        let profile: Profile = serde_json::from_str(json)
            .map_err(|e| EngineError::invalid(format!("Decoding seccomp profile failed: {e}")))?;
        profile.validate()?;
        Ok(profile)
    }

    /// Checks names of actions, operators and architectures, and the
    /// either-or fields, so a bad profile is refused before anything runs.
    pub fn validate(&self) -> Result<(), EngineError> {
        if !self.architectures.is_empty() && !self.arch_map.is_empty() {
            return Err(EngineError::invalid(
                "'architectures' and 'archMap' were specified in the seccomp profile, use either 'architectures' or 'archMap'",
            ));
        }
        if self.default_action.is_empty() && !self.syscalls.is_empty() {
            return Err(EngineError::invalid("the seccomp profile has rules but no defaultAction"));
        }
        if !self.default_action.is_empty() {
            check_action(&self.default_action)?;
        }
        let arches = self.architectures.iter().chain(self.arch_map.iter().flat_map(|m| {
            std::iter::once(&m.architecture).chain(m.sub_architectures.iter())
        }));
        for arch in arches {
            if !ARCHITECTURES.contains(&arch.as_str()) {
                return Err(EngineError::invalid(format!("string {arch} is not a valid arch for seccomp")));
            }
        }
        for rule in &self.syscalls {
            if !rule.name.is_empty() && !rule.names.is_empty() {
                return Err(EngineError::invalid(
                    "'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'",
                ));
            }
            if rule.name.is_empty() && rule.names.is_empty() {
                return Err(EngineError::invalid("a seccomp rule names no system call"));
            }
            check_action(&rule.action)?;
            for arg in &rule.args {
                if !OPERATORS.contains(&arg.op.as_str()) {
                    return Err(EngineError::invalid(format!("string {} is not a valid operator for seccomp", arg.op)));
                }
                if arg.index > 5 {
                    return Err(EngineError::invalid(format!(
                        "seccomp argument index {} is out of range (0 to 5)",
                        arg.index
                    )));
                }
            }
            if !rule.includes.min_kernel.is_empty() && parse_kernel(&rule.includes.min_kernel).is_none() {
                return Err(EngineError::invalid(format!(
                    "invalid kernel version {:?} in the seccomp profile",
                    rule.includes.min_kernel
                )));
            }
        }
        Ok(())
    }

    /// The filter runc installs for a container with bounding set `caps`
    /// on `host`; `None` when the profile is empty (no default action and
    /// no rules), which means no filter.
    pub fn to_spec(&self, host: &Host, caps: &[String]) -> Option<LinuxSeccomp> {
        if self.default_action.is_empty() && self.syscalls.is_empty() {
            return None;
        }
        let architectures = if self.arch_map.is_empty() {
            self.architectures.clone()
        } else {
            self.arch_map
                .iter()
                .filter(|m| m.architecture == host.seccomp_arch)
                .flat_map(|m| std::iter::once(m.architecture.clone()).chain(m.sub_architectures.iter().cloned()))
                .collect()
        };
        let has = |cap: &String| caps.iter().any(|c| c == cap);
        let mut syscalls = Vec::new();
        for rule in &self.syscalls {
            let inc = &rule.includes;
            let exc = &rule.excludes;
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.go_arch) {
                continue;
            }
            if exc.arches.iter().any(|a| a == host.go_arch) {
                continue;
            }
            if !inc.caps.iter().all(has) || exc.caps.iter().any(has) {
                continue;
            }
            if let Some(min) = parse_kernel(&inc.min_kernel) {
                if host.kernel < min {
                    continue;
                }
            }
            let names = if rule.names.is_empty() { vec![rule.name.clone()] } else { rule.names.clone() };
            syscalls.push(LinuxSyscall { names, action: rule.action.clone(), errno_ret: rule.errno_ret, args: rule.args.clone() });
        }
        Some(LinuxSeccomp {
            default_action: self.default_action.clone(),
            default_errno_ret: self.default_errno_ret,
            architectures,
            flags: self.flags.clone(),
            syscalls,
        })
    }
}

fn check_action(action: &str) -> Result<(), EngineError> {
    if ACTIONS.contains(&action) {
        Ok(())
    } else {
        Err(EngineError::invalid(format!("string {action} is not a valid action for seccomp")))
    }
}

/// The seccomp choice of a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompChoice {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's format, as JSON text.
    Custom(String),
}

/// What `HostConfig.SecurityOpt` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOptions {
    pub seccomp: SeccompChoice,
    pub no_new_privileges: bool,
}

/// Parses `HostConfig.SecurityOpt` as dockerd does: `no-new-privileges[=bool]`,
/// `seccomp=unconfined|<json>`, `apparmor=…` and `label=…` (accepted; this
/// host has neither AppArmor nor SELinux), `key:value` as an old spelling
/// of `key=value`. A custom profile is parsed and checked here, so a bad
/// one is refused at create.
pub fn parse_security_opts(opts: &[String]) -> Result<SecurityOptions, EngineError> {
    let mut out = SecurityOptions::default();
    for opt in opts {
        if opt == "no-new-privileges" {
            out.no_new_privileges = true;
            continue;
        }
        if opt == "disable" {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some(kv) => kv,
            None => match opt.split_once(':') {
                Some(kv) => kv,
                None => return Err(EngineError::invalid(format!("invalid --security-opt 1: {opt:?}"))),
            },
        };
        match key {
            "label" | "apparmor" => {}
            "seccomp" => {
                out.seccomp = match value {
                    "unconfined" => SeccompChoice::Unconfined,
                    "" | "builtin" => SeccompChoice::Default,
                    json => {
                        Profile::parse(json)?;
                        SeccompChoice::Custom(json.to_string())
                    }
                };
            }
            "no-new-privileges" => {
                out.no_new_privileges = match value {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                    _ => return Err(EngineError::invalid(format!("invalid --security-opt 2: {opt:?}"))),
                };
            }
            _ => return Err(EngineError::invalid(format!("invalid --security-opt 2: {opt:?}"))),
        }
    }
    Ok(out)
}

/// The filter of a container: `None` for unconfined (and privileged).
pub fn for_container(choice: &SeccompChoice, host: &Host, caps: &[String]) -> Result<Option<LinuxSeccomp>, EngineError> {
    match choice {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::Default => Ok(default_profile().to_spec(host, caps)),
        SeccompChoice::Custom(json) => Ok(Profile::parse(json)?.to_spec(host, caps)),
    }
}

// ---------------------------------------------------------------------------
// Docker's default profile (as dockerd 20.10 applies it).

/// System calls every container may make.
const ALLOWED: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fchdir", "fchmod",
    "fchmodat", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
    "getdents64", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat", "lstat64", "mkdir",
    "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv", "preadv2",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate", "truncate64",
    "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice", "write",
    "writev",
    // extended attributes
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr", "listxattr", "llistxattr",
    "lremovexattr", "lsetxattr", "removexattr", "setxattr",
    // file events and asynchronous I/O
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup",
    "ioctl", "_newselect", "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64",
    "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64",
    // memory
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2", "mlockall",
    "mmap", "mmap2", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "remap_file_pages",
    // processes, threads and scheduling
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "getcpu", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrlimit", "get_robust_list", "getrusage", "getsid", "get_thread_area",
    "gettid", "ioprio_get", "ioprio_set", "kill", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64",
    "process_mrelease", "restart_syscall", "rseq", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "setpgid", "setpriority", "setrlimit", "set_robust_list", "setsid",
    "set_thread_area", "set_tid_address", "tgkill", "tkill", "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
    // credentials
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid", "getuid32", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32",
    // signals
    "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack",
    "sigprocmask", "sigreturn",
    // time and timers
    "adjtimex", "alarm", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday",
    "nanosleep", "setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "times",
    // futexes
    "futex", "futex_time64", "futex_waitv",
    // sockets
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown", "socket", "socketcall", "socketpair",
    // System V and POSIX IPC
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // sandboxing, randomness, system information
    "getrandom", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "sysinfo", "uname",
];

/// Allowed only with a capability in the bounding set.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
            "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree", "perf_event_open", "quotactl",
            "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
    ("CAP_SYSLOG", &["syslog"]),
];

/// Allowed only on some architectures (Go names).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (&["arm", "arm64"], &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"]),
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (&["s390", "s390x"], &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// `personality(2)` personas a container may switch to: Linux, Linux32,
/// UNAME26, UNAME26|Linux32, and the query value 0xffffffff.
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags of `clone(2)`: NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET. Without CAP_SYS_ADMIN a clone with any of them
/// is denied.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

const ENOSYS: u32 = 38;

/// Docker's default profile, built from the tables above.
pub fn default_profile() -> Profile {
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let allow = |names: &[&str]| Syscall { names: strings(names), action: "SCMP_ACT_ALLOW".into(), ..Default::default() };
    let mut syscalls = vec![allow(ALLOWED)];
    // ptrace became safe to allow with kernel 4.8 (seccomp is re-checked
    // after a tracer changes a system call).
    syscalls.push(Syscall {
        includes: Filter { min_kernel: "4.8".into(), ..Default::default() },
        ..allow(&["ptrace"])
    });
    for persona in PERSONAS {
        syscalls.push(Syscall {
            args: vec![Arg { index: 0, value: *persona, value_two: 0, op: "SCMP_CMP_EQ".into() }],
            ..allow(&["personality"])
        });
    }
    for (arches, names) in BY_ARCH {
        syscalls.push(Syscall { includes: Filter { arches: strings(arches), ..Default::default() }, ..allow(names) });
    }
    for (cap, names) in BY_CAPABILITY {
        syscalls.push(Syscall { includes: Filter { caps: vec![cap.to_string()], ..Default::default() }, ..allow(names) });
    }
    // Without CAP_SYS_ADMIN: clone without namespace flags (its flags are
    // the second argument on s390), and clone3, whose flags sit in memory
    // where seccomp cannot see them, fails with ENOSYS so that C libraries
    // fall back to clone.
    let clone_rule = |index: u32| Syscall {
        args: vec![Arg { index, value: CLONE_NAMESPACE_FLAGS, value_two: 0, op: "SCMP_CMP_MASKED_EQ".into() }],
        ..allow(&["clone"])
    };
    syscalls.push(Syscall {
        excludes: Filter { caps: vec!["CAP_SYS_ADMIN".into()], arches: strings(&["s390", "s390x"]), ..Default::default() },
        ..clone_rule(0)
    });
    syscalls.push(Syscall {
        includes: Filter { arches: strings(&["s390", "s390x"]), ..Default::default() },
        excludes: Filter { caps: vec!["CAP_SYS_ADMIN".into()], ..Default::default() },
        ..clone_rule(1)
    });
    syscalls.push(Syscall {
        names: strings(&["clone3"]),
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(ENOSYS),
        excludes: Filter { caps: vec!["CAP_SYS_ADMIN".into()], ..Default::default() },
        ..Default::default()
    });
    let arch = |native: &str, subs: &[&str]| ArchMap { architecture: native.into(), sub_architectures: strings(subs) };
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: None,
        architectures: Vec::new(),
        arch_map: vec![
            arch("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
            arch("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
            arch("SCMP_ARCH_MIPS64", &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]),
            arch("SCMP_ARCH_MIPS64N32", &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]),
            arch("SCMP_ARCH_MIPSEL64", &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]),
            arch("SCMP_ARCH_MIPSEL64N32", &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"]),
            arch("SCMP_ARCH_S390X", &["SCMP_ARCH_S390"]),
            arch("SCMP_ARCH_RISCV64", &[]),
        ],
        syscalls,
        flags: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD64: Host = Host { go_arch: "amd64", seccomp_arch: "SCMP_ARCH_X86_64", kernel: (6, 1) };
    const ARM64: Host = Host { go_arch: "arm64", seccomp_arch: "SCMP_ARCH_AARCH64", kernel: (5, 10) };

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn allowed(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls.iter().any(|r| r.action == "SCMP_ACT_ALLOW" && r.args.is_empty() && r.names.iter().any(|n| n == name))
    }

    fn mentioned(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls.iter().any(|r| r.names.iter().any(|n| n == name))
    }

    #[test]
    fn default_profile_for_an_unprivileged_amd64_container() {
        let s = default_profile().to_spec(&AMD64, &caps(super::super::spec::DEFAULT_CAPABILITIES)).unwrap();
        assert_eq!(s.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(s.default_errno_ret, None, "the default action's errno is EPERM");
        assert_eq!(s.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        for name in ["read", "execve", "socket", "ptrace", "chroot", "arch_prctl", "modify_ldt"] {
            assert!(allowed(&s, name), "{name} must be allowed");
        }
        for name in ["unshare", "mount", "setns", "keyctl", "add_key", "request_key", "reboot", "init_module", "swapon", "kexec_load"] {
            assert!(!mentioned(&s, name), "{name} must be denied");
        }
        assert!(!mentioned(&s, "set_tls"), "arm-only rules are dropped on amd64");
        // clone only without namespace flags; clone3 fails with ENOSYS.
        let clone: Vec<&LinuxSyscall> = s.syscalls.iter().filter(|r| r.names == ["clone"]).collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args, vec![Arg { index: 0, value: 0x7E02_0000, value_two: 0, op: "SCMP_CMP_MASKED_EQ".into() }]);
        let clone3 = s.syscalls.iter().find(|r| r.names == ["clone3"]).unwrap();
        assert_eq!((clone3.action.as_str(), clone3.errno_ret), ("SCMP_ACT_ERRNO", Some(38)));
        let personas: Vec<u64> = s.syscalls.iter().filter(|r| r.names == ["personality"]).map(|r| r.args[0].value).collect();
        assert_eq!(personas, [0, 8, 131072, 131080, 4294967295]);
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("defaultErrnoRet").is_none());
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn capabilities_open_their_calls() {
        let mut with = caps(super::super::spec::DEFAULT_CAPABILITIES);
        with.push("CAP_SYS_ADMIN".into());
        let s = default_profile().to_spec(&AMD64, &with).unwrap();
        assert!(allowed(&s, "unshare") && allowed(&s, "mount") && allowed(&s, "clone") && allowed(&s, "clone3"));
        assert!(!s.syscalls.iter().any(|r| r.names == ["clone"] && !r.args.is_empty()), "the masked clone rule is excluded");
        assert!(!mentioned(&s, "reboot"));
        let without_chroot = default_profile().to_spec(&AMD64, &caps(&["CAP_CHOWN"])).unwrap();
        assert!(!mentioned(&without_chroot, "chroot"));
    }

    #[test]
    fn arm64_gets_its_arches_and_calls() {
        let s = default_profile().to_spec(&ARM64, &caps(&[])).unwrap();
        assert_eq!(s.architectures, ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
        assert!(allowed(&s, "set_tls"));
        assert!(!mentioned(&s, "arch_prctl"));
        let old = Host { kernel: (4, 4), ..ARM64 };
        assert!(!mentioned(&default_profile().to_spec(&old, &caps(&[])).unwrap(), "ptrace"));
    }

    #[test]
    fn custom_profiles_convert_and_bad_ones_are_refused() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":null,"syscalls":[
                {"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":13,"args":null},
                {"names":["chmod"],"action":"SCMP_ACT_ERRNO","excludes":{"caps":["CAP_FOWNER"]}},
                {"names":["uname"],"action":"SCMP_ACT_LOG","args":[{"index":1,"value":2,"op":"SCMP_CMP_GT"}]}]}"#,
        )
        .unwrap();
        let s = p.to_spec(&AMD64, &caps(&["CAP_FOWNER"])).unwrap();
        assert_eq!(s.default_action, "SCMP_ACT_ALLOW");
        assert!(s.architectures.is_empty());
        assert_eq!(s.syscalls.len(), 2);
        assert_eq!(s.syscalls[0].names, ["mkdir"]);
        assert_eq!(s.syscalls[0].errno_ret, Some(13));
        assert_eq!(s.syscalls[1].args[0].op, "SCMP_CMP_GT");
        assert!(Profile::parse("{}").unwrap().to_spec(&AMD64, &[]).is_none());

        let bad = [
            ("garbage", "Decoding seccomp profile failed"),
            (r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#, "not a valid action"),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#, "use either 'architectures' or 'archMap'"),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ERRNO"}]}"#, "use either 'name' or 'names'"),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_ABOUT"}]}]}"#, "not a valid operator"),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_Z80"]}"#, "not a valid arch"),
        ];
        for (json, want) in bad {
            let err = Profile::parse(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn security_opts() {
        let parse = |list: &[&str]| parse_security_opts(&caps(list));
        assert_eq!(parse(&[]).unwrap(), SecurityOptions::default());
        assert_eq!(parse(&["seccomp=unconfined"]).unwrap().seccomp, SeccompChoice::Unconfined);
        assert_eq!(parse(&["seccomp:unconfined"]).unwrap().seccomp, SeccompChoice::Unconfined);
        assert!(parse(&["no-new-privileges"]).unwrap().no_new_privileges);
        assert!(!parse(&["no-new-privileges=false"]).unwrap().no_new_privileges);
        assert!(parse(&["label=disable", "apparmor=unconfined"]).is_ok());
        let custom = parse(&[r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#]).unwrap();
        assert!(matches!(custom.seccomp, SeccompChoice::Custom(_)));
        assert_eq!(parse(&["foo"]).unwrap_err().to_string(), "invalid --security-opt 1: \"foo\"");
        assert_eq!(parse(&["weird=1"]).unwrap_err().to_string(), "invalid --security-opt 2: \"weird=1\"");
        assert!(parse(&["no-new-privileges=maybe"]).is_err());
        assert!(parse(&["seccomp=garbage"]).unwrap_err().to_string().contains("Decoding seccomp profile failed"));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), Some((5, 0)));
        assert_eq!(parse_kernel(""), None);
    }
}
