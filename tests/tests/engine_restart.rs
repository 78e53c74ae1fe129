//! End-to-end tests of restart policies, `docker update` and json-file log
//! rotation in `stratad`, with the real docker CLI and runc on overlay:
//! on-failure with a retry limit, always across exits, stops and daemon
//! restarts, unless-stopped, the restarting state, `docker update` of the
//! policy and of memory and pids limits (read back from the cgroup files),
//! `--log-opt max-size/max-file` rotation read by `docker logs`, the daemon's
//! `--log-opt` defaults, and the refusals of bad values.
//!
//! Run as root: `cargo test -p strata-tests --test engine_restart`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_tests::engine::{http_unix, run_to_exit};
use strata_tests::engine_env::{unix_now, ContainerEnv};

/// A container that prints how many times it started (a count kept in its
/// writable layer), then runs until `/stop` appears and exits with 0.
const COUNTER: &str = "echo x >> /count; echo start $(wc -l < /count); \
                       while [ ! -f /stop ]; do sleep 0.1; done; rm /stop; exit 0";

type Env = ContainerEnv;

fn start() -> Env {
    start_with(&[])
}

/// Starts stratad on overlay with `extra` daemon flags and loads busybox.
fn start_with(extra: &[&str]) -> Env {
    ContainerEnv::start("stratad-restart", "overlay", extra)
}

/// Helpers of these tests on top of the shared environment.
trait RestartEnv {
    /// Asserts that `format` keeps rendering `want` for `period`.
    fn stays(&self, name: &str, format: &str, want: &str, period: Duration);
    /// The container's stdout as `docker logs` prints it.
    fn logs(&self, name: &str) -> String;
    /// `POST /containers/create` with `body`: (status, whole response).
    fn create_raw(&self, body: &str) -> (u16, String);
}

impl RestartEnv for Env {
    fn stays(&self, name: &str, format: &str, want: &str, period: Duration) {
        let end = Instant::now() + period;
        while Instant::now() < end {
            assert_eq!(self.inspect(name, format), want, "{name}: {format} changed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self, name: &str) -> String {
        self.ok(&["logs", name])
    }

    fn create_raw(&self, body: &str) -> (u16, String) {
        let (status, text) = http_unix(&self.sock, "POST", "/v1.41/containers/create", Some(body.as_bytes())).expect("create");
        (status, text)
    }
}

/// A file of the container's cgroup: cgroup v1 (`/sys/fs/cgroup/<controller>/strata/<id>/<file>`)
/// or v2 (`/sys/fs/cgroup/strata/<id>/<v2 file>`).
fn cgroup_value(id: &str, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join("strata").join(id).join(v1_file);
    let v2 = Path::new("/sys/fs/cgroup/strata").join(id).join(v2_file);
    let path = if v1.exists() { v1 } else { v2 };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_string()
}

#[test]
fn on_failure_restarts_up_to_its_limit() {
    let env = start();
    let since = unix_now().to_string();
    env.ok(&["run", "-d", "--name", "fails", "--restart=on-failure:2", "busybox", "sh", "-c", "echo try; exit 3"]);
    env.wait_for("fails", "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}", "exited 2 3");
    env.stays("fails", "{{.State.Status}} {{.RestartCount}}", "exited 2", Duration::from_secs(1));
    assert_eq!(env.inspect("fails", "{{json .HostConfig.RestartPolicy}}"), r#"{"Name":"on-failure","MaximumRetryCount":2}"#);
    // The same container ran three times, into the same log.
    assert_eq!(env.logs("fails"), "try\ntry\ntry\n");
    let until = (unix_now() + 1).to_string();
    let events = env.ok(&[
        "events", "--since", &since, "--until", &until, "--filter", "container=fails", "--filter", "event=start",
        "--filter", "event=die", "--format", "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().collect();
    assert_eq!(actions, ["start", "die", "start", "die", "start", "die"], "{events}");

    // A clean exit is not a failure.
    env.ok(&["run", "-d", "--name", "clean", "--restart=on-failure", "busybox", "true"]);
    env.wait_for("clean", "{{.State.Status}} {{.State.ExitCode}}", "exited 0");
    env.stays("clean", "{{.RestartCount}}", "0", Duration::from_millis(500));

    // A start on request resets the count.
    env.ok(&["start", "fails"]);
    env.wait_for("fails", "{{.State.Status}} {{.RestartCount}}", "exited 2");

    // The delay doubles: a container that keeps failing is seen restarting,
    // and a stop then leaves it exited for good.
    env.ok(&["run", "-d", "--name", "loop", "--restart=always", "busybox", "sh", "-c", "exit 1"]);
    env.wait_for("loop", "{{.State.Restarting}}", "true");
    assert_eq!(env.inspect("loop", "{{.State.Status}} {{.State.Pid}}"), "restarting 0");
    assert!(env.ok(&["ps", "--filter", "name=loop", "--format", "{{.Status}}"]).starts_with("Restarting"));
    env.fails(&["rm", "loop"]);
    env.ok(&["stop", "loop"]);
    assert_eq!(env.inspect("loop", "{{.State.Status}} {{.State.Restarting}}"), "exited false");
    let count = env.inspect("loop", "{{.RestartCount}}");
    env.stays("loop", "{{.State.Status}} {{.RestartCount}}", &format!("exited {count}"), Duration::from_secs(2));
    env.ok(&["rm", "-f", "fails", "clean", "loop"]);
}

#[test]
fn always_and_unless_stopped_across_exits_stops_and_daemon_restarts() {
    let mut env = start();
    env.ok(&["run", "-d", "--name", "always", "--restart=always", "busybox", "sh", "-c", COUNTER]);
    env.ok(&["run", "-d", "--name", "unless", "--restart=unless-stopped", "busybox", "sh", "-c", COUNTER]);
    env.ok(&["run", "-d", "--name", "unless-stopped", "--restart=unless-stopped", "busybox", "sh", "-c", COUNTER]);
    env.ok(&["run", "-d", "--name", "never", "busybox", "sh", "-c", COUNTER]);
    env.wait_for("always", "{{.State.Running}}", "true");

    // The process exits by itself: started again, same writable layer.
    env.ok(&["exec", "always", "touch", "/stop"]);
    env.wait_for("always", "{{.RestartCount}} {{.State.Running}}", "1 true");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.logs("always") != "start 1\nstart 2\n" {
        assert!(Instant::now() < deadline, "logs: {:?}", env.logs("always"));
        std::thread::sleep(Duration::from_millis(50));
    }

    // A stop on request is not followed by a restart.
    env.ok(&["stop", "-t", "1", "unless-stopped"]);
    assert_eq!(env.inspect("unless-stopped", "{{.State.Status}}"), "exited");

    // The daemon stops everything at shutdown and starts `always` and
    // `unless-stopped` (not stopped on request) again; `no` stays exited.
    env.restart_daemon();
    env.wait_for("always", "{{.State.Running}} {{.RestartCount}}", "true 0");
    env.wait_for("unless", "{{.State.Running}}", "true");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.logs("always").ends_with("start 3\n") {
        assert!(Instant::now() < deadline, "logs: {:?}", env.logs("always"));
        std::thread::sleep(Duration::from_millis(50));
    }
    env.stays("unless-stopped", "{{.State.Status}}", "exited", Duration::from_millis(500));
    assert_eq!(env.inspect("never", "{{.State.Status}}"), "exited");

    // `docker stop` of an always container: it stays stopped…
    env.ok(&["stop", "-t", "1", "always"]);
    env.stays("always", "{{.State.Status}}", "exited", Duration::from_secs(1));
    // …until the daemon starts again (dockerd's rule for `always`).
    env.restart_daemon();
    env.wait_for("always", "{{.State.Running}}", "true");

    // A daemon killed outright: its always container comes back too.
    env.kill_daemon();
    env.start_daemon();
    env.wait_for("always", "{{.State.Running}}", "true");

    // kill and rm -f are on request too.
    env.ok(&["kill", "always"]);
    env.stays("always", "{{.State.Status}}", "exited", Duration::from_secs(1));
    env.ok(&["rm", "-f", "unless", "unless-stopped", "never", "always"]);
    assert_eq!(env.ok(&["ps", "-aq"]), "");
}

#[test]
fn update_changes_the_policy_and_live_limits() {
    let env = start();
    env.ok(&["run", "-d", "--name", "upd", "busybox", "sh", "-c", COUNTER]);
    assert_eq!(env.inspect("upd", "{{.HostConfig.RestartPolicy.Name}}"), "no");
    env.ok(&["update", "--restart=always", "upd"]);
    assert_eq!(env.inspect("upd", "{{.HostConfig.RestartPolicy.Name}}"), "always");
    env.ok(&["exec", "upd", "touch", "/stop"]);
    env.wait_for("upd", "{{.RestartCount}} {{.State.Running}}", "1 true");
    env.ok(&["update", "--restart=on-failure:3", "upd"]);
    assert_eq!(env.inspect("upd", "{{json .HostConfig.RestartPolicy}}"), r#"{"Name":"on-failure","MaximumRetryCount":3}"#);
    let err = env.fails(&["update", "--restart=sometimes", "upd"]);
    assert!(err.contains("invalid restart policy 'sometimes'"), "{err}");
    assert_eq!(env.inspect("upd", "{{.HostConfig.RestartPolicy.Name}}"), "on-failure");

    // Memory and pids limits of a running container, read from its cgroup.
    env.ok(&["run", "-d", "--name", "mem", "-m", "32m", "busybox", "sleep", "1000"]);
    let id = env.inspect("mem", "{{.Id}}");
    assert_eq!(cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max"), "33554432");
    assert_eq!(env.inspect("mem", "{{.HostConfig.Memory}}"), "33554432");
    env.ok(&["update", "--memory", "48m", "--pids-limit", "50", "mem"]);
    assert_eq!(cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max"), "50331648");
    assert_eq!(cgroup_value(&id, "pids", "pids.max", "pids.max"), "50");
    assert_eq!(env.inspect("mem", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}"), "50331648 50");

    // Refused values change nothing.
    let err = env.fails(&["update", "--memory", "1k", "mem"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
    let err = env.fails(&["update", "--memory", "100m", "mem"]);
    assert!(err.contains("Memory limit should be smaller than already set memoryswap limit"), "{err}");
    assert_eq!(cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max"), "50331648");
    assert_eq!(env.inspect("mem", "{{.HostConfig.Memory}}"), "50331648");
    let err = env.fails(&["update", "--memory", "10m", "nothere"]);
    assert!(err.contains("No such container: nothere"), "{err}");
    let (status, body) = env.api("POST", "/v1.41/containers/mem/update", r#"{"Memory":-5}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = env.api("POST", "/v1.41/containers/mem/update", r#"{"CpuShares":512}"#);
    assert_eq!((status, body.trim()), (200, r#"{"Warnings":[]}"#));
    let (status, body) = env.api("POST", "/v1.41/containers/nothere/update", "{}");
    assert_eq!(status, 404, "{body}");

    // A stopped container keeps the new limit for its next start.
    env.ok(&["stop", "-t", "0", "mem"]);
    env.ok(&["update", "--memory", "40m", "mem"]);
    env.ok(&["start", "mem"]);
    assert_eq!(cgroup_value(&id, "memory", "memory.limit_in_bytes", "memory.max"), "41943040");
    env.ok(&["rm", "-f", "upd", "mem"]);
}

#[test]
fn json_file_logs_rotate_and_bad_options_are_refused() {
    let env = start();
    env.ok(&[
        "run", "-d", "--name", "chatty", "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "busybox", "sh", "-c",
        "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done",
    ]);
    env.wait_for("chatty", "{{.State.Status}}", "exited");
    assert_eq!(env.inspect("chatty", "{{json .HostConfig.LogConfig}}"), r#"{"Type":"json-file","Config":{"max-file":"2","max-size":"1k"}}"#);
    let log_path = PathBuf::from(env.inspect("chatty", "{{.LogPath}}"));
    let dir = log_path.parent().expect("log dir");
    let name = log_path.file_name().and_then(|n| n.to_str()).expect("log name").to_string();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("read container dir")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&name))
        .collect();
    files.sort();
    assert_eq!(files, [name.clone(), format!("{name}.1")]);
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).expect("stat log").len();
        // max-size plus at most one entry (about 70 bytes).
        assert!(len <= 1000 + 100, "{f} has {len} bytes");
    }
    let logs = env.logs("chatty");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.last(), Some(&"line 299"), "{logs}");
    assert!(lines.len() < 60, "older lines were not dropped: {} lines", lines.len());
    let first: usize = lines[0].trim_start_matches("line ").parse().expect("a line number");
    let expected: Vec<String> = (first..300).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected, "docker logs reads the rotated file, then the current one");
    assert_eq!(env.ok(&["logs", "--tail", "2", "chatty"]), "line 298\nline 299\n");

    // Refusals, with dockerd's messages.
    let err = env.fails(&["run", "--log-opt", "max-size=abc", "busybox", "true"]);
    assert!(err.contains("invalid size: 'abc'"), "{err}");
    let err = env.fails(&["create", "--log-opt", "max-file=0", "--log-opt", "max-size=1k", "busybox"]);
    assert!(err.contains("max-file cannot be less than 1"), "{err}");
    let err = env.fails(&["create", "--log-opt", "colour=blue", "busybox"]);
    assert!(err.contains("unknown log opt 'colour' for json-file log driver"), "{err}");
    let err = env.fails(&["create", "--restart=sometimes", "busybox"]);
    assert!(err.contains("invalid restart policy 'sometimes'"), "{err}");
    let err = env.fails(&["create", "--restart=always:3", "busybox"]);
    assert!(err.contains("maximum retry count cannot be used with restart policy 'always'"), "{err}");
    let cases = [
        r#"{"Image":"busybox","HostConfig":{"AutoRemove":true,"RestartPolicy":{"Name":"always"}}}"#,
        r#"{"Image":"busybox","HostConfig":{"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":-1}}}"#,
        r#"{"Image":"busybox","HostConfig":{"LogConfig":{"Type":"json-file","Config":{"max-size":"0"}}}}"#,
        r#"{"Image":"busybox","HostConfig":{"Memory":1000}}"#,
        r#"{"Image":"busybox","HostConfig":{"MemorySwap":100000000}}"#,
    ];
    for body in cases {
        let (status, text) = env.create_raw(body);
        assert_eq!(status, 400, "{body}: {text}");
    }
    let (_, text) = env.create_raw(cases[0]);
    assert!(text.contains("can't create 'AutoRemove' container with restart policy"), "{text}");
    assert_eq!(env.ok(&["ps", "-aq"]).lines().count(), 1, "a refused create left a container");
    env.ok(&["rm", "chatty"]);
}

#[test]
fn daemon_log_options_are_defaults_for_containers_of_its_driver() {
    // A bad daemon-wide option stops the daemon at start-up, with the
    // json-file driver's message.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("daemon.json");
    std::fs::write(&cfg, "{}").expect("write daemon.json");
    let out = run_to_exit(&[
        "--config-file".to_string(),
        cfg.display().to_string(),
        "--data-root".to_string(),
        dir.path().join("root").display().to_string(),
        "-H".to_string(),
        format!("unix://{}", dir.path().join("d.sock").display()),
        "--log-opt".to_string(),
        "max-size=ten".to_string(),
    ])
    .expect("run stratad");
    assert!(!out.status.success(), "stratad started with --log-opt max-size=ten");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid size: 'ten'"), "{stderr}");

    let env = start_with(&["--log-opt", "max-size=2k", "--log-opt", "max-file=3"]);
    env.ok(&["create", "--name", "plain", "busybox", "true"]);
    assert_eq!(
        env.inspect("plain", "{{json .HostConfig.LogConfig}}"),
        r#"{"Type":"json-file","Config":{"max-file":"3","max-size":"2k"}}"#
    );
    env.ok(&["create", "--name", "own", "--log-opt", "max-size=5k", "busybox", "true"]);
    assert_eq!(
        env.inspect("own", "{{json .HostConfig.LogConfig}}"),
        r#"{"Type":"json-file","Config":{"max-file":"3","max-size":"5k"}}"#
    );
    env.ok(&["create", "--name", "quiet", "--log-driver", "none", "busybox", "true"]);
    assert_eq!(env.inspect("quiet", "{{json .HostConfig.LogConfig}}"), r#"{"Type":"none","Config":{}}"#);
    env.ok(&["rm", "plain", "own", "quiet"]);
}
