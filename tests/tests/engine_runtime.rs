//! End-to-end tests of how `stratad` sets up container processes, with the
//! real docker CLI and Debian's runc, on overlay and vfs:
//! - exit codes and messages when the command cannot be started: 127 and
//!   126 for `run`, 126 for `exec` (as dockerd 20.10), exec inspect's
//!   ExitCode;
//! - `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`: per-container
//!   files bind-mounted over the image's, with `--hostname`, `--add-host`,
//!   `--dns*` and `--network host`, never in `docker diff` or `commit`;
//! - seccomp: the default profile denies `unshare(CLONE_NEWUSER)` with
//!   EPERM, `--security-opt seccomp=unconfined` and `--cap-add SYS_ADMIN`
//!   allow it, custom JSON profiles apply, bad ones are refused at create.
//!
//! Run as root: `cargo test -p strata-tests --test engine_runtime`.

use std::net::IpAddr;
use std::path::Path;

use strata_tests::engine::http_unix;
use strata_tests::engine_env::ContainerEnv;

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

type Env = ContainerEnv;

fn start(driver: &'static str) -> Env {
    ContainerEnv::start("stratad-rt", driver, &[])
}

/// Helpers of these tests on top of the shared environment.
trait RuntimeEnv {
    /// Runs a command that must fail with `code`; returns (stdout, stderr).
    fn fails_with(&self, code: i32, args: &[&str]) -> (String, String);
    /// Runs a command that must succeed with `input` on its stdin; returns stdout.
    fn ok_with_input(&self, args: &[&str], input: &[u8]) -> String;
    /// `GET target` on the daemon's socket: the JSON body.
    fn api_get(&self, target: &str) -> serde_json::Value;
    fn container_count(&self) -> usize;
}

impl RuntimeEnv for Env {
    fn fails_with(&self, code: i32, args: &[&str]) -> (String, String) {
        let out = self.output(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "[{}] docker {args:?}:\nstdout: {stdout}\nstderr: {stderr}", self.driver);
        (stdout, stderr)
    }

    fn ok_with_input(&self, args: &[&str], input: &[u8]) -> String {
        let out = self.docker.output_with_input(args, input);
        assert!(out.status.success(), "[{}] docker {args:?}: {out:?}", self.driver);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn api_get(&self, target: &str) -> serde_json::Value {
        let (status, text) = http_unix(&self.sock, "GET", target, None).expect("API request");
        assert_eq!(status, 200, "GET {target}: {text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // The body may be chunked: the JSON object is between the outer braces.
        let json = body.find('{').zip(body.rfind('}')).map(|(a, b)| &body[a..=b]).unwrap_or(body);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("GET {target}: {e}: {body}"))
    }

    fn container_count(&self) -> usize {
        self.ok(&["ps", "-aq"]).lines().count()
    }
}

const NOT_FOUND: &str = r#"exec: "nosuchbinary": executable file not found in $PATH: unknown"#;

fn exit_codes(driver: &'static str) {
    let env = start(driver);
    // run: 127 for a missing command, 126 for one that is not executable.
    let (_, err) = env.fails_with(127, &["run", "--rm", "busybox", "nosuchbinary"]);
    assert!(
        err.contains(&format!(
            "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: {NOT_FOUND}"
        )),
        "{err}"
    );
    let (_, err) = env.fails_with(126, &["run", "--rm", "busybox", "/etc/passwd"]);
    assert!(err.contains(r#"exec: "/etc/passwd": permission denied"#), "{err}");
    env.fails_with(126, &["run", "--rm", "busybox", "/etc"]);
    assert_eq!(env.container_count(), 0, "--rm containers were left behind");
    // Without --rm the container stays created, with the exit code and error.
    env.ok(&["create", "--name", "broken", "busybox", "nosuchbinary"]);
    env.fails_with(1, &["start", "broken"]);
    assert_eq!(env.inspect("broken", "{{.State.Status}} {{.State.ExitCode}}"), "created 127");
    assert!(env.inspect("broken", "{{.State.Error}}").contains(NOT_FOUND));
    // A start that fails before runc runs (here: an unknown user) ends an
    // attached `docker run` with the daemon's error instead of leaving it
    // waiting, and --rm still removes the container.
    let (_, err) = env.fails_with(125, &["run", "--rm", "-u", "nosuchuser", "busybox", "true"]);
    assert!(err.contains("unable to find user nosuchuser: no matching entries in passwd file"), "{err}");
    assert_eq!(env.container_count(), 1, "the --rm container of the failed start was left behind");

    // exec: 126 whatever the reason, dockerd's message on the output stream.
    env.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    let (out, _) = env.fails_with(126, &["exec", "box", "nosuchbinary"]);
    assert_eq!(
        out,
        format!("OCI runtime exec failed: exec failed: unable to start container process: {NOT_FOUND}\r\n")
    );
    let (out, _) = env.fails_with(126, &["exec", "box", "/etc/passwd"]);
    assert!(out.contains(r#"exec: "/etc/passwd": permission denied: unknown"#), "{out}");
    let (out, _) = env.fails_with(126, &["exec", "-t", "box", "nosuchbinary"]);
    assert!(out.contains(NOT_FOUND), "{out}");
    // Detached, the failure is the request's error.
    let (_, err) = env.fails_with(1, &["exec", "-d", "box", "nosuchbinary"]);
    assert!(err.contains(&format!("OCI runtime exec failed: exec failed: unable to start container process: {NOT_FOUND}")), "{err}");
    // The process's own status passes through; output and stdin still work.
    env.fails_with(3, &["exec", "box", "sh", "-c", "exit 3"]);
    let out = env.output(&["exec", "box", "sh", "-c", "echo out; echo err >&2"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(env.ok_with_input(&["exec", "-i", "box", "cat"], b"piped\n"), "piped\n");
    // exec inspect reports 126 for every failed exec, 3 for the exit.
    let ids: Vec<String> = serde_json::from_str(&env.inspect("box", "{{json .ExecIDs}}")).expect("ExecIDs");
    let mut codes: Vec<i64> = ids
        .iter()
        .map(|id| env.api_get(&format!("/exec/{id}/json"))["ExitCode"].as_i64().expect("ExitCode"))
        .collect();
    codes.sort();
    assert_eq!(codes, [0, 0, 3, 126, 126, 126, 126], "{ids:?}");
    env.ok(&["rm", "-f", "box", "broken"]);
}

#[test]
fn exit_codes_overlay() {
    exit_codes("overlay");
}

#[test]
fn exit_codes_vfs() {
    exit_codes("vfs");
}

/// The host's resolv.conf as a container on its own network sees it:
/// without loopback name servers (Google's when none is left).
fn expected_resolv_conf(host: &str) -> String {
    let loopback = |l: &str| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver") && w.next().and_then(|ip| ip.parse::<IpAddr>().ok()).is_some_and(|ip| ip.is_loopback())
    };
    let mut out: String = host.lines().filter(|l| !loopback(l)).map(|l| format!("{l}\n")).collect();
    if !out.lines().any(|l| l.split_whitespace().next() == Some("nameserver")) {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n");
    }
    out
}

fn etc_files(driver: &'static str) {
    let env = start(driver);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // systemd-resolved's stub is replaced by its upstream file.
    let host_resolv = if host_resolv.lines().any(|l| l.trim() == "nameserver 127.0.0.53") {
        std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or(host_resolv)
    } else {
        host_resolv
    };

    let id = env.ok(&["run", "-d", "--name", "web", "busybox", "sleep", "1000"]).trim().to_string();
    assert_eq!(env.ok(&["exec", "web", "hostname"]).trim(), &id[..12]);
    assert_eq!(env.ok(&["exec", "web", "cat", "/etc/hostname"]).trim(), &id[..12]);
    assert_eq!(env.ok(&["exec", "web", "cat", "/etc/hosts"]), DEFAULT_HOSTS);
    assert_eq!(env.ok(&["exec", "web", "cat", "/etc/resolv.conf"]), expected_resolv_conf(&host_resolv));
    let mounts = env.ok(&["exec", "web", "cat", "/proc/self/mountinfo"]);
    for dest in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
        assert!(mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(dest)), "{dest} is not a mount:\n{mounts}");
    }
    // The files live in the container's directory, named in inspect.
    for (key, name) in [("HostnamePath", "hostname"), ("HostsPath", "hosts"), ("ResolvConfPath", "resolv.conf")] {
        let path = env.inspect("web", &format!("{{{{.{key}}}}}"));
        assert!(path.ends_with(&format!("/{id}/{name}")), "{key} = {path:?}");
        assert!(Path::new(&path).is_file(), "{path} is missing");
    }
    let hostname_path = env.inspect("web", "{{.HostnamePath}}");
    assert_eq!(std::fs::read_to_string(&hostname_path).expect("read HostnamePath"), format!("{}\n", &id[..12]));
    // A container never started has none yet.
    env.ok(&["create", "--name", "fresh", "busybox", "true"]);
    assert_eq!(env.inspect("fresh", "[{{.HostnamePath}}|{{.HostsPath}}|{{.ResolvConfPath}}]"), "[||]");

    // Not part of the writable layer: diff, commit.
    assert_eq!(env.ok(&["diff", "web"]), "", "a fresh container has no changes");
    env.ok(&["exec", "web", "sh", "-c", "echo 10.0.0.9 extra >> /etc/hosts; touch /etc/newf"]);
    assert_eq!(env.ok(&["diff", "web"]), "C /etc\nA /etc/newf\n");
    assert!(std::fs::read_to_string(env.inspect("web", "{{.HostsPath}}")).expect("read hosts").ends_with("10.0.0.9 extra\n"));
    env.ok(&["commit", "web", "webimg"]);
    // HOSTNAME is set for the process, not stored in Config.Env, so the
    // commit does not carry the old container's name.
    assert_eq!(env.ok(&["exec", "web", "sh", "-c", "echo $HOSTNAME"]).trim(), &id[..12]);
    for name in ["web", "webimg"] {
        let config_env = env.inspect(name, "{{json .Config.Env}}");
        assert!(!config_env.contains("HOSTNAME"), "{name}: {config_env}");
    }
    let names = env.ok(&["run", "--rm", "webimg", "sh", "-c", "echo $HOSTNAME; hostname"]);
    let names: Vec<&str> = names.lines().collect();
    assert!(names.len() == 2 && names[0] == names[1] && names[0] != &id[..12], "{names:?}");
    env.ok(&["create", "--name", "fromimg", "webimg", "true"]);
    let exported = env.output(&["export", "fromimg"]);
    assert!(exported.status.success());
    let listing = tar_listing(&exported.stdout);
    assert!(listing.iter().any(|p| p == "etc/newf"), "{listing:?}");
    for gone in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        assert!(!listing.iter().any(|p| p == gone), "the commit captured {gone}: {listing:?}");
    }

    // --hostname, --add-host, --dns, --dns-search, --dns-option.
    let out = env.ok(&[
        "run", "--rm", "--hostname", "foo.bar", "--add-host", "a.example:1.2.3.4", "--add-host", "b:::1", "--dns", "1.1.1.1",
        "--dns", "9.9.9.9", "--dns-search", "example.com", "--dns-search", "x.org", "--dns-option", "ndots:2",
        "--dns-option", "rotate", "busybox", "sh", "-c",
        "hostname; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf",
    ]);
    assert_eq!(
        out,
        format!(
            "foo.bar\nfoo.bar\n---\n{DEFAULT_HOSTS}1.2.3.4\ta.example\n::1\tb\n---\nsearch example.com x.org\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions ndots:2 rotate\n"
        )
    );
    // Bad entries are refused at create, leaving nothing behind.
    let before = env.container_count();
    let (status, text) = http_unix(
        &env.sock,
        "POST",
        "/containers/create",
        Some(br#"{"Image":"busybox","Cmd":["true"],"HostConfig":{"ExtraHosts":["x:not-an-ip"]}}"#),
    )
    .expect("create request");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("invalid IP address in add-host"), "{text}");
    assert_eq!(env.container_count(), before);

    // The host's network: its name, hosts and resolv.conf.
    let host_name = nix::sys::utsname::uname().expect("uname").nodename().to_string_lossy().into_owned();
    let out = env.ok(&["run", "--rm", "--network", "host", "busybox", "sh", "-c", "hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf"]);
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert_eq!(out, format!("{host_name}\n---\n{host_hosts}---\n{host_resolv}"));
    // --read-only: the root and the /etc files; /dev/shm stays writable.
    let out = env.output(&[
        "run", "--rm", "--read-only", "busybox", "sh", "-c",
        "touch /x || echo root; echo a >> /etc/hosts || echo hosts; touch /dev/shm/x && echo shm",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "root\nhosts\nshm\n", "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    // The host's UTS namespace: the host's name; /etc/hostname keeps the ID's.
    let id = env.ok(&["create", "--uts", "host", "busybox", "sh", "-c", "hostname; cat /etc/hostname"]).trim().to_string();
    let out = env.ok(&["start", "-a", &id]);
    assert_eq!(out, format!("{host_name}\n{}\n", &id[..12]));
    let (_, err) = env.fails_with(125, &["run", "--rm", "--uts", "host", "--hostname", "foo", "busybox", "true"]);
    assert!(err.contains("conflicting options: hostname and the UTS mode"), "{err}");
    env.ok(&["rm", "-f", "web", "fresh", "fromimg", &id]);
}

fn tar_listing(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .expect("read the export")
        .map(|e| {
            let e = e.expect("tar entry");
            e.path().expect("entry path").display().to_string().trim_start_matches("./").trim_end_matches('/').to_string()
        })
        .collect()
}

#[test]
fn etc_files_overlay() {
    etc_files("overlay");
}

#[test]
fn etc_files_vfs() {
    etc_files("vfs");
}

/// `unshare -U` asks for a user namespace, which needs no capability; only
/// seccomp refuses it.
const UNSHARE: &str = "unshare -U true && echo allowed; grep '^Seccomp:' /proc/self/status";

#[test]
fn seccomp_profiles() {
    let env = start("overlay");
    let info = env.ok(&["info", "--format", "{{json .SecurityOptions}}"]);
    assert_eq!(info.trim(), r#"["name=seccomp,profile=default"]"#);

    // The default profile: denied with EPERM, filter mode 2.
    let out = env.output(&["run", "--rm", "busybox", "sh", "-c", UNSHARE]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Seccomp:\t2\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
    // Unconfined: allowed, no filter; inspect shows the option.
    assert_eq!(
        env.ok(&["run", "--name", "free", "--security-opt", "seccomp=unconfined", "busybox", "sh", "-c", UNSHARE]),
        "allowed\nSeccomp:\t0\n"
    );
    assert_eq!(env.inspect("free", "{{json .HostConfig.SecurityOpt}}"), r#"["seccomp=unconfined"]"#);
    // CAP_SYS_ADMIN opens the calls the profile reserves for it, with the
    // filter still in place.
    assert_eq!(env.ok(&["run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", UNSHARE]), "allowed\nSeccomp:\t2\n");
    // Privileged: no filter, the host's devices.
    assert_eq!(
        env.ok(&["run", "--rm", "--privileged", "busybox", "sh", "-c", &format!("{UNSHARE}; test -c /dev/loop-control && echo devices")]),
        "allowed\nSeccomp:\t0\ndevices\n"
    );
    // exec'd processes get the container's filter too.
    env.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    let out = env.output(&["exec", "box", "sh", "-c", UNSHARE]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Seccomp:\t2\n");

    // A custom profile in Docker's format (the CLI sends the file's content).
    let profile = env.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},{"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write the profile");
    let opt = format!("seccomp={}", profile.display());
    let out = env.output(&["run", "--rm", "--security-opt", &opt, "busybox", "sh", "-c", "mkdir /x || echo denied; unshare -U true && echo allowed"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "denied\nallowed\n", "{out:?}");

    // Bad profiles and options are refused at create; nothing is created.
    let before = env.container_count();
    let both = env.dir.path().join("both.json");
    std::fs::write(
        &both,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#,
    )
    .expect("write the profile");
    let (_, err) = env.fails_with(125, &["run", "--rm", "--security-opt", &format!("seccomp={}", both.display()), "busybox", "true"]);
    assert!(err.contains("'architectures' and 'archMap' were specified in the seccomp profile"), "{err}");
    let bogus = env.dir.path().join("bogus.json");
    std::fs::write(&bogus, r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).expect("write the profile");
    let (_, err) = env.fails_with(1, &["create", "--security-opt", &format!("seccomp={}", bogus.display()), "busybox", "true"]);
    assert!(err.contains("SCMP_ACT_BOGUS is not a valid action for seccomp"), "{err}");
    let (_, err) = env.fails_with(1, &["create", "--security-opt", "no-new-privileges=maybe", "busybox", "true"]);
    assert!(err.contains(r#"invalid --security-opt 2: "no-new-privileges=maybe""#), "{err}");
    let (_, err) = env.fails_with(1, &["create", "--cap-add", "FLY", "busybox", "true"]);
    assert!(err.contains(r#"unknown capability: "CAP_FLY""#), "{err}");
    assert_eq!(env.container_count(), before);

    // no-new-privileges reaches the process.
    assert_eq!(
        env.ok(&["run", "--rm", "--security-opt", "no-new-privileges", "busybox", "grep", "NoNewPrivs", "/proc/self/status"]),
        "NoNewPrivs:\t1\n"
    );
    env.ok(&["rm", "-f", "box", "free"]);
}

#[test]
fn host_namespaces() {
    let env = start("overlay");
    let own = |ns: &str| std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("read a namespace link").display().to_string();
    let (host_pid, host_ipc) = (own("pid"), own("ipc"));
    let links = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc";
    // Private by default.
    let out = env.ok(&["run", "--rm", "busybox", "sh", "-c", links]);
    assert!(!out.contains(&host_pid) && !out.contains(&host_ipc), "{out}");
    // --pid host, --ipc host (the host's /dev/shm).
    let out = env.ok(&["run", "--rm", "--pid", "host", "--ipc", "host", "busybox", "sh", "-c", links]);
    assert_eq!(out, format!("{host_pid}\n{host_ipc}\n"));
    let marker = format!("/dev/shm/strata-rt-{}", std::process::id());
    std::fs::write(&marker, "x").expect("write into /dev/shm");
    let seen = env.output(&["run", "--rm", "--ipc", "host", "busybox", "test", "-f", &marker]);
    let _ = std::fs::remove_file(&marker);
    assert!(seen.status.success(), "the host's /dev/shm is not shared: {seen:?}");
    // --ipc none: no /dev/shm mount.
    let out = env.ok(&["run", "--rm", "--ipc", "none", "busybox", "sh", "-c", "grep -c ' /dev/shm ' /proc/self/mountinfo || true"]);
    assert_eq!(out.trim(), "0");
    // --pid/--ipc container:NAME join a running container's namespaces.
    env.ok(&["run", "-d", "--name", "peer", "busybox", "sleep", "1000"]);
    let peer = env.ok(&["exec", "peer", "sh", "-c", links]);
    let out = env.ok(&["run", "--rm", "--pid", "container:peer", "--ipc", "container:peer", "busybox", "sh", "-c", links]);
    assert_eq!(out, peer, "the joiner's pid and ipc namespaces are the peer's");
    env.ok(&["rm", "-f", "peer"]);
}
