//! End-to-end tests of the container commands of `stratad` with the real
//! docker CLI and Debian's runc, on overlay, vfs and blockcow (a small
//! pool): run (attached, detached, `--rm`, `-i`, `-it` through a pty), ps,
//! logs (`-f` ends when the container stops), stop/start/restart/kill/
//! pause/rm -f, exec, top, diff, export, commit, stats, events, a daemon
//! restart, `system df` counting the writable layer, and `--storage-opt
//! size=` (enforced on blockcow, refused elsewhere).
//!
//! Run as root: `cargo test -p strata-tests --test engine_containers`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::engine::{require_program, DOCKER};
use strata_tests::engine_env::{require_container_prerequisites, unix_now, ContainerEnv};

type Env = ContainerEnv;

/// The daemon's storage flags besides `--storage-driver`: blockcow gets a
/// small pool (64 MiB base device in a 2 GiB sparse data file) so the tests
/// stay light.
fn storage_args(driver: &'static str) -> &'static [&'static str] {
    if driver == "blockcow" {
        &[
            "--storage-opt",
            "blockcow.basesize=64M",
            "--storage-opt",
            "blockcow.datasize=2G",
            "--storage-opt",
            "blockcow.metadatasize=32M",
        ]
    } else {
        &[]
    }
}

/// blockcow's base device size in `storage_args`.
const BLOCKCOW_BASE_MIB: u64 = 64;

fn start(driver: &'static str) -> Env {
    require_container_prerequisites();
    require_program("script", "install it: apt-get install bsdutils");
    ContainerEnv::start("stratad-ctr", driver, storage_args(driver))
}

/// Helpers of these tests on top of the shared environment.
trait ContainersEnv {
    /// Mounts under the data root other than the running driver's own
    /// (blockcow's FUSE mount serving its device files).
    fn mounts_under_root(&self) -> Vec<String>;
    fn all_mounts_under_root(&self) -> Vec<String>;
    /// The `Containers` size of `docker system df`, in bytes.
    fn df_containers_size(&self) -> f64;
    /// The SIZE column of container `name` in `docker system df -v`, in bytes.
    fn df_verbose_size(&self, name: &str) -> f64;
}

impl ContainersEnv for Env {
    fn mounts_under_root(&self) -> Vec<String> {
        let own = self.root.join(self.driver).join("snapshots-root").join("devices").display().to_string();
        self.all_mounts_under_root().into_iter().filter(|m| *m != own).collect()
    }

    fn all_mounts_under_root(&self) -> Vec<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.display().to_string();
        text.lines().filter_map(|l| l.split_whitespace().nth(4)).filter(|m| m.starts_with(&root)).map(str::to_string).collect()
    }

    fn df_containers_size(&self) -> f64 {
        let out = self.ok(&["system", "df", "--format", "{{.Type}}\t{{.Size}}"]);
        let line = out.lines().find(|l| l.starts_with("Containers\t")).unwrap_or_else(|| panic!("no Containers row in {out:?}"));
        parse_human_size(&line["Containers\t".len()..])
    }

    fn df_verbose_size(&self, name: &str) -> f64 {
        let out = self.ok(&["system", "df", "-v"]);
        let header = out.lines().find(|l| l.starts_with("CONTAINER ID")).unwrap_or_else(|| panic!("no containers table in {out}"));
        let column = columns(header).iter().position(|c| *c == "SIZE").unwrap_or_else(|| panic!("no SIZE in {header:?}"));
        let row = out
            .lines()
            .find(|l| columns(l).last() == Some(&name))
            .unwrap_or_else(|| panic!("no row for {name} in {out}"));
        parse_human_size(columns(row)[column])
    }
}

/// The cells of a docker CLI table row (separated by two or more spaces).
fn columns(line: &str) -> Vec<&str> {
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

/// Parses the docker CLI's decimal sizes: `0B`, `12.3kB`, `20.97MB`, `1.2GB`.
fn parse_human_size(text: &str) -> f64 {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("not a size: {text:?}"));
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => panic!("unknown unit in {text:?}"),
    };
    n * scale
}

/// A shell loop that prints a line per tick and exits 0 on SIGTERM.
const TICKER: &str = "trap 'echo bye; exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";

fn run_rm_and_exit_codes(driver: &'static str) {
    let env = start(driver);
    assert_eq!(env.ok(&["run", "--rm", "busybox", "echo", "hi"]), "hi\n");
    assert_eq!(env.ok(&["ps", "-aq"]), "", "--rm left a container behind");

    let out = env.output(&["run", "--name", "three", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    assert_eq!(env.inspect("three", "{{.State.Status}} {{.State.ExitCode}}"), "exited 3");
    let logs = env.output(&["logs", "three"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "err\n");

    let out = env.output(&["run", "--rm", "busybox", "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));

    let out = env.command(&["run", "-i", "--rm", "busybox", "sh"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
    let mut child = out.expect("spawn docker run -i");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"echo from-stdin; exit 5\n").expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait docker run -i");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\n");
    assert_eq!(out.status.code(), Some(5));

    let err = String::from_utf8_lossy(&env.output(&["run", "--rm", "nothere"]).stderr).into_owned();
    assert!(err.contains("Unable to find image 'nothere:latest' locally"), "{err}");
    assert!(env.mounts_under_root().is_empty(), "mounts left: {:?}", env.mounts_under_root());
}

fn detached_lifecycle_and_events(driver: &'static str) {
    let env = start(driver);
    let since = unix_now().to_string();
    let id = env.ok(&["run", "-d", "--name", "web", "--label", "role=ticker", "busybox", "sh", "-c", TICKER]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    let ps = env.ok(&["ps", "--format", "{{.ID}} {{.Names}} {{.Status}}"]);
    assert!(ps.starts_with(&format!("{} web Up", &id[..12])), "{ps}");
    assert_eq!(env.ok(&["ps", "-q", "--filter", "label=role=ticker"]).trim(), &id[..12]);
    assert_eq!(env.ok(&["ps", "-q", "--filter", "status=exited"]).trim(), "");
    assert_eq!(env.inspect("web", "{{.State.Running}} {{.Name}} {{.HostConfig.NetworkMode}} {{.Config.Image}}"), "true /web none busybox");

    // logs -f follows until the container stops.
    let follower = env.command(&["logs", "-f", "web"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("logs -f");
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    env.ok(&["stop", "web"]);
    assert!(started.elapsed() < Duration::from_secs(8), "stop waited for the timeout: the TERM trap was not honoured");
    let out = follower.wait_with_output().expect("wait for logs -f");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("tick 0\n") && text.ends_with("bye\n"), "{text}");
    assert_eq!(env.inspect("web", "{{.State.Status}} {{.State.ExitCode}}"), "exited 0");
    let tail = env.ok(&["logs", "--tail", "1", "web"]);
    assert_eq!(tail, "bye\n");
    let stamped = env.ok(&["logs", "-t", "--tail", "1", "web"]);
    assert!(stamped.contains("Z bye"), "{stamped}");

    env.ok(&["start", "web"]);
    env.wait_for("web", "{{.State.Running}}", "true");
    let first_start = env.inspect("web", "{{.State.StartedAt}}");
    env.ok(&["restart", "-t", "5", "web"]);
    env.wait_for("web", "{{.State.Running}}", "true");
    assert_ne!(env.inspect("web", "{{.State.StartedAt}}"), first_start);
    env.ok(&["pause", "web"]);
    assert!(env.ok(&["ps", "--format", "{{.Status}}"]).contains("(Paused)"));
    env.ok(&["unpause", "web"]);
    env.ok(&["kill", "web"]);
    assert_eq!(env.inspect("web", "{{.State.Status}} {{.State.ExitCode}}"), "exited 137");
    let err = String::from_utf8_lossy(&env.output(&["kill", "web"]).stderr).into_owned();
    assert!(err.contains("is not running"), "{err}");
    env.ok(&["start", "web"]);
    let err = String::from_utf8_lossy(&env.output(&["rm", "web"]).stderr).into_owned();
    assert!(err.contains("stop the container before removing or force remove"), "{err}");
    env.ok(&["rename", "web", "web2"]);
    env.ok(&["rm", "-f", "web2"]);
    assert_eq!(env.ok(&["ps", "-aq"]), "");
    assert!(env.mounts_under_root().is_empty(), "mounts left: {:?}", env.mounts_under_root());

    let until = (unix_now() + 1).to_string();
    let events = env.ok(&["events", "--since", &since, "--until", &until, "--filter", "type=container", "--format", "{{.Action}}"]);
    let actions: Vec<&str> = events.lines().collect();
    for want in ["create", "start", "kill", "die", "stop", "restart", "pause", "unpause", "rename", "destroy"] {
        assert!(actions.contains(&want), "no {want} event in {actions:?}");
    }
    let dies = env.ok(&["events", "--since", &since, "--until", &until, "--filter", "event=die", "--format", "{{.Actor.Attributes.exitCode}}"]);
    assert!(dies.lines().any(|c| c == "137") && dies.lines().any(|c| c == "0"), "{dies}");
}

fn exec_top_diff_export(driver: &'static str) {
    let env = start(driver);
    env.ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"]);
    assert_eq!(env.ok(&["exec", "box", "echo", "in-exec"]), "in-exec\n");
    let out = env.output(&["exec", "box", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    env.ok(&["exec", "-d", "box", "sh", "-c", "echo detached > /tmp/added"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.output(&["exec", "box", "test", "-f", "/tmp/added"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the detached exec did not run");
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ok(&["exec", "box", "rm", "/etc/group"]);
    env.ok(&["exec", "-u", "nobody", "box", "sh", "-c", "test $(id -u) = 65534"]);
    let pty = Command::new("script")
        .args(["-qec", &format!("timeout --foreground -s KILL 30 {DOCKER} exec -it box sh -c 'tty; echo pty-ok'"), "/dev/null"])
        // `script` runs the command with $SHELL; pin it so the run does not depend on the
        // caller's environment. `--foreground` keeps docker in the terminal's foreground
        // process group: in a background group its switch to raw mode would stop it (SIGTTOU).
        .env("SHELL", "/bin/sh")
        .env("DOCKER_HOST", format!("unix://{}", env.sock.display()))
        .env("DOCKER_CONFIG", env.docker.config_dir())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&pty.stdout);
    assert!(text.contains("/dev/pts/") && text.contains("pty-ok"), "{text}");

    let top = env.ok(&["top", "box"]);
    assert!(top.lines().next().unwrap_or("").contains("PID"), "{top}");
    assert!(top.contains("sleep 1000"), "{top}");

    let diff = env.ok(&["diff", "box"]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in ["C /tmp", "A /tmp/added", "C /etc", "D /etc/group"] {
        assert!(lines.contains(&want), "[{driver}] {want:?} missing in diff:\n{diff}");
    }
    assert!(!diff.contains("/proc") && !diff.contains("/dev"), "{diff}");

    let tar_path = env.dir.path().join("export.tar");
    env.ok(&["export", "-o", &tar_path.display().to_string(), "box"]);
    let listing = Command::new("tar").arg("-tf").arg(&tar_path).output().expect("tar -t");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "bin/busybox"), "{names}");
    assert!(names.lines().any(|l| l == "tmp/added"), "{names}");
    assert!(!names.lines().any(|l| l == "etc/group"), "{names}");

    let stats = env.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}", "box"]);
    let fields: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"box"), "{stats}");
    assert!(!stats.contains(" 0B /"), "no memory use in {stats}");
    let pids: u64 = fields.last().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(pids >= 1, "{stats}");

    env.ok(&["stop", "-t", "1", "box"]);
    let diff_stopped = env.ok(&["diff", "box"]);
    assert_eq!(diff_stopped, diff, "diff changed once stopped");
    env.ok(&["rm", "box"]);
    assert!(env.mounts_under_root().is_empty(), "mounts left: {:?}", env.mounts_under_root());
}

fn commit_then_run(driver: &'static str) {
    let env = start(driver);
    env.ok(&["run", "--name", "maker", "busybox", "sh", "-c", "echo changed > /etc/motd; rm /etc/group; mkdir -p /data/x"]);
    let since = unix_now().to_string();
    let id = env.ok(&["commit", "-m", "add motd", "-a", "tester", "-c", r#"CMD ["cat", "/etc/motd"]"#, "maker", "made:v1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(env.ok(&["run", "--rm", "made:v1"]), "changed\n");
    // A running container sees its own hostname, hosts and resolv.conf
    // (bind-mounted, as Docker does)...
    let listing = env.ok(&["run", "--rm", "made:v1", "ls", "/etc", "/data"]);
    assert_eq!(listing, "/data:\nx\n\n/etc:\nhostname\nhosts\nmotd\npasswd\nresolv.conf\n");
    // ...but the committed layer holds none of them: a container of the new
    // image that never ran has only the image's files.
    env.ok(&["create", "--name", "probe", "made:v1"]);
    let tar_path = env.dir.path().join("probe.tar");
    env.ok(&["export", "-o", &tar_path.display().to_string(), "probe"]);
    let listing = Command::new("tar").arg("-tf").arg(&tar_path).output().expect("tar -t");
    let mut etc: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.starts_with("etc/") && l.len() > 4)
        .map(str::to_string)
        .collect();
    etc.sort();
    assert_eq!(etc, ["etc/motd", "etc/passwd"], "[{driver}] files of /etc in the committed image");
    env.ok(&["rm", "probe"]);
    let history = env.ok(&["history", "--format", "{{.Comment}}", "made:v1"]);
    assert_eq!(history.lines().next(), Some("add motd"));
    assert_eq!(env.ok(&["image", "inspect", "-f", "{{.Author}}", "made:v1"]).trim(), "tester");
    let until = (unix_now() + 1).to_string();
    let events = env.ok(&["events", "--since", &since, "--until", &until, "--filter", "event=commit", "--format", "{{.Actor.Attributes.name}}"]);
    assert_eq!(events.trim(), "maker");
    let err = String::from_utf8_lossy(&env.output(&["rmi", "busybox"]).stderr).into_owned();
    assert!(err.contains("conflict") || err.contains("being used"), "{err}");
    env.ok(&["rm", "maker"]);
}

fn run_it_through_a_pty(driver: &'static str) {
    let env = start(driver);
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("timeout --foreground -s KILL 30 {DOCKER} run -it --rm busybox sh -c 'tty; stty size; echo tty-ok'"),
            "/dev/null",
        ])
        // `script` runs the command with $SHELL; pin it so the run does not depend on the
        // caller's environment. `--foreground` keeps docker in the terminal's foreground
        // process group: in a background group its switch to raw mode would stop it (SIGTTOU).
        .env("SHELL", "/bin/sh")
        .env("DOCKER_HOST", format!("unix://{}", env.sock.display()))
        .env("DOCKER_CONFIG", env.docker.config_dir())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("/dev/pts/0") && text.contains("tty-ok"), "{text}");
    assert_eq!(env.ok(&["ps", "-aq"]), "");
}

fn restart_reports_exited(driver: &'static str) {
    let mut env = start(driver);
    env.ok(&["run", "-d", "--name", "clean", "busybox", "sleep", "1000"]);
    env.ok(&["exec", "clean", "sh", "-c", "echo kept > /root/file"]);
    env.stop_daemon();
    assert!(env.all_mounts_under_root().is_empty(), "shutdown left mounts: {:?}", env.all_mounts_under_root());
    env.start_daemon();
    assert_eq!(env.inspect("clean", "{{.State.Status}} {{.State.Running}}"), "exited false");

    env.ok(&["start", "clean"]);
    assert_eq!(env.ok(&["exec", "clean", "cat", "/root/file"]), "kept\n");
    env.kill_daemon();
    env.start_daemon();
    assert_eq!(env.inspect("clean", "{{.State.Status}} {{.State.ExitCode}}"), "exited 255");
    assert!(env.mounts_under_root().is_empty(), "mounts left after recovery: {:?}", env.mounts_under_root());
    env.ok(&["start", "clean"]);
    assert_eq!(env.ok(&["exec", "clean", "cat", "/root/file"]), "kept\n");
    env.ok(&["rm", "-f", "clean"]);
}

/// `--storage-opt size=`: on blockcow the container's device gets that size
/// (a write past it fails with ENOSPC inside the container; without the
/// option the device has the base size); below the base size or garbage is
/// refused. overlay and vfs (no project quotas here) refuse the option.
fn storage_opt_size(driver: &'static str) {
    let env = start(driver);
    let refused = |args: &[&str], want: &str| {
        let out = env.output(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "[{driver}] {args:?} succeeded");
        assert!(err.contains(want), "[{driver}] {args:?}: {err}");
        assert_eq!(env.ok(&["ps", "-aq"]), "", "a refused create left a container");
    };
    refused(&["run", "--rm", "--storage-opt", "size=lots", "busybox", "true"], "invalid size: 'lots'");
    refused(&["create", "--storage-opt", "inodes=10", "busybox", "true"], "Unknown option inodes");
    if driver != "blockcow" {
        let want = if driver == "overlay" { "supported only for overlay over xfs with 'pquota'" } else { "not supported by the vfs storage driver" };
        refused(&["run", "--rm", "--storage-opt", "size=1G", "busybox", "true"], want);
        assert!(env.mounts_under_root().is_empty(), "mounts left: {:?}", env.mounts_under_root());
        return;
    }
    refused(&["run", "--rm", "--storage-opt", "size=16M", "busybox", "true"], "the size cannot be smaller than the image's base size 64MiB");

    let size_kib = |args: &[&str]| -> u64 {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend(["busybox", "sh", "-c", "df -k / | awk 'NR==2 {print $2}'"]);
        let out = env.ok(&all);
        out.trim().parse().unwrap_or_else(|_| panic!("df said {out:?}"))
    };
    let plain = size_kib(&[]);
    assert!(plain <= BLOCKCOW_BASE_MIB * 1024 && plain > BLOCKCOW_BASE_MIB * 1024 * 3 / 4, "default root is {plain} KiB");
    let big = size_kib(&["--storage-opt", "size=192M"]);
    assert!(big <= 192 * 1024 && big > 192 * 1024 * 7 / 8, "a size=192M root is {big} KiB");

    // More than the base size fits into a 192M container...
    let fill = |mib: u64| format!("dd if=/dev/zero of=/big bs=1M count={mib} conv=fsync");
    env.ok(&["run", "--name", "roomy", "--storage-opt", "size=192M", "busybox", "sh", "-c", &fill(BLOCKCOW_BASE_MIB + 32)]);
    assert_eq!(env.inspect("roomy", "{{json .HostConfig.StorageOpt}}"), r#"{"size":"192M"}"#);
    // ...but not past its size, and not past the base size without the option.
    for (args, mib) in [(vec!["--storage-opt", "size=192M"], 256), (vec![], BLOCKCOW_BASE_MIB + 32)] {
        let mut all = vec!["run", "--rm"];
        all.extend(args.iter().copied());
        let script = fill(mib);
        all.extend(["busybox", "sh", "-c", script.as_str()]);
        let out = env.output(&all);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(out.status.code(), Some(0), "{all:?} succeeded");
        assert!(err.contains("No space left on device"), "{all:?}: {err}");
    }
    // The size belongs to the container: it holds across a daemon restart.
    let mut env = env;
    env.restart_daemon();
    env.ok(&["start", "-a", "roomy"]);
    env.ok(&["rm", "roomy"]);
    assert!(env.mounts_under_root().is_empty(), "mounts left: {:?}", env.mounts_under_root());
}

/// `docker system df` (and `-v`) count a container's writable layer: writing
/// 24 MiB into it grows its size by about that much.
fn system_df_counts_the_writable_layer(driver: &'static str) {
    let env = start(driver);
    env.ok(&["run", "-d", "--name", "grower", "busybox", "sleep", "1000"]);
    let before = env.df_containers_size();
    let before_v = env.df_verbose_size("grower");
    env.ok(&["exec", "grower", "dd", "if=/dev/urandom", "of=/written", "bs=1M", "count=24", "conv=fsync"]);
    let written = 24.0 * 1024.0 * 1024.0;
    let after = env.df_containers_size();
    let after_v = env.df_verbose_size("grower");
    for (what, grew) in [("system df", after - before), ("system df -v", after_v - before_v)] {
        assert!(
            grew >= written * 0.95 && grew <= written * 1.5,
            "[{driver}] {what}: the container grew by {grew} bytes after writing {written}"
        );
    }
    env.ok(&["rm", "-f", "grower"]);
    assert_eq!(env.df_containers_size(), 0.0);
}

macro_rules! per_driver {
    ($($driver:ident),*) => {$(
        mod $driver {
            #[test]
            fn run_rm_and_exit_codes() {
                super::run_rm_and_exit_codes(stringify!($driver));
            }
            #[test]
            fn detached_lifecycle_and_events() {
                super::detached_lifecycle_and_events(stringify!($driver));
            }
            #[test]
            fn exec_top_diff_export() {
                super::exec_top_diff_export(stringify!($driver));
            }
            #[test]
            fn commit_then_run() {
                super::commit_then_run(stringify!($driver));
            }
            #[test]
            fn run_it_through_a_pty() {
                super::run_it_through_a_pty(stringify!($driver));
            }
            #[test]
            fn restart_reports_exited() {
                super::restart_reports_exited(stringify!($driver));
            }
            #[test]
            fn storage_opt_size() {
                super::storage_opt_size(stringify!($driver));
            }
            #[test]
            fn system_df_counts_the_writable_layer() {
                super::system_df_counts_the_writable_layer(stringify!($driver));
            }
        }
    )*};
}

per_driver!(overlay, vfs, blockcow);
