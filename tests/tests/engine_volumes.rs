//! End-to-end tests of bind mounts, tmpfs mounts and local volumes in
//! `stratad`, with the real docker CLI and runc on overlay: `-v` binds
//! (write through, `:ro`, a missing host directory created), `--mount`
//! refusals, `--tmpfs` (also with `--read-only`), named volumes across
//! containers and `docker volume ls/inspect/rm/prune`, a volume in use
//! refused with 409, the image's content copied into a new volume,
//! anonymous volumes removed by `rm -v`, inspect's `Mounts`, `system df -v`,
//! volume events, and volumes kept across a daemon restart.
//!
//! Run as root: `cargo test -p strata-tests --test engine_volumes`.

use std::path::Path;

use strata_tests::engine_env::{unix_now, ContainerEnv};

type Env = ContainerEnv;

/// Starts stratad on overlay and loads busybox.
fn start() -> Env {
    ContainerEnv::start("stratad-volumes", "overlay", &[])
}

/// `env.volumes()`: the volume names, sorted.
trait Volumes {
    fn volumes(&self) -> Vec<String>;
}

impl Volumes for Env {
    fn volumes(&self) -> Vec<String> {
        let out = self.ok(&["volume", "ls", "-q"]);
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

#[test]
fn bind_mounts_and_tmpfs() {
    let env = start();
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let h = host.display().to_string();

    // A bind mount writes through to the host.
    env.ok(&["run", "--rm", "-v", &format!("{h}:/data"), "busybox", "sh", "-c", "echo hi > /data/f"]);
    assert_eq!(std::fs::read_to_string(host.join("f")).unwrap(), "hi\n");
    // Host changes are seen inside.
    std::fs::write(host.join("g"), "from host").unwrap();
    assert_eq!(env.ok(&["run", "--rm", "-v", &format!("{h}:/data"), "busybox", "cat", "/data/g"]), "from host");

    // :ro makes the write fail and leaves the host file alone.
    let out = env.docker.output(&["run", "--rm", "-v", &format!("{h}:/data:ro"), "busybox", "sh", "-c", "echo no > /data/f"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    assert_eq!(std::fs::read_to_string(host.join("f")).unwrap(), "hi\n");

    // A missing host directory of -v is created.
    let missing = env.dir.path().join("made/by/run");
    let m = missing.display().to_string();
    env.ok(&["run", "--rm", "-v", &format!("{m}:/x"), "busybox", "touch", "/x/here"]);
    assert!(missing.join("here").is_file());

    // --mount type=bind with a missing source is refused (and nothing is made).
    let gone = env.dir.path().join("gone").display().to_string();
    let err = env.fails(&["create", "--mount", &format!("type=bind,source={gone},target=/x"), "busybox"]);
    assert!(err.contains(&format!("invalid mount config for type \"bind\": bind source path does not exist: {gone}")), "{err}");
    assert!(!Path::new(&gone).exists());
    // Other refusals: relative destination, "/", duplicates, bad mode.
    assert!(env.fails(&["create", "-v", &format!("{h}:relative"), "busybox"]).contains("must be absolute"));
    assert!(env.fails(&["create", "-v", &format!("{h}:/"), "busybox"]).contains("destination can't be '/'"));
    let err = env.fails(&["create", "-v", &format!("{h}:/d"), "--tmpfs", "/d", "busybox"]);
    assert!(err.contains("Duplicate mount point: /d"), "{err}");
    assert!(env.fails(&["create", "-v", &format!("{h}:/d:bogus"), "busybox"]).contains("invalid mode: bogus"));
    assert_eq!(env.ok(&["ps", "-aq"]), "", "no container was left by the refused creates");

    // --mount type=bind,readonly and propagation show in inspect.
    env.ok(&[
        "create", "--name", "binds", "-v", &format!("{h}:/data:ro,z"),
        "--mount", &format!("type=bind,source={h},target=/b,bind-propagation=rslave"), "busybox", "true",
    ]);
    let mounts = env.inspect("binds", "{{range .Mounts}}{{.Type}} {{.Source}} {{.Destination}} {{.Mode}} {{.RW}} {{.Propagation}};{{end}}");
    assert_eq!(mounts, format!("bind {h} /data ro,z false rprivate;bind {h} /b  true rslave;"));
    assert_eq!(env.inspect("binds", "{{json .HostConfig.Binds}}"), format!("[\"{h}:/data:ro,z\"]"));
    env.ok(&["rm", "binds"]);

    // A bind over /etc/hosts replaces the engine's file.
    std::fs::write(host.join("hosts"), "10.1.2.3 custom\n").unwrap();
    let hosts = format!("{}:/etc/hosts", host.join("hosts").display());
    assert_eq!(env.ok(&["run", "--rm", "-v", &hosts, "busybox", "cat", "/etc/hosts"]), "10.1.2.3 custom\n");

    // --tmpfs is a tmpfs with its options, also in a read-only container.
    let line = env.ok(&["run", "--rm", "--tmpfs", "/run:size=64m,mode=1770", "busybox", "grep", " /run ", "/proc/mounts"]);
    assert!(line.starts_with("tmpfs /run tmpfs rw,nosuid,nodev,noexec"), "{line}");
    assert!(line.contains("size=65536k") && line.contains("mode=1770"), "{line}");
    let out = env.ok(&[
        "run", "--rm", "--read-only", "--tmpfs", "/run", "busybox", "sh", "-c",
        "echo ok > /run/f && cat /run/f && (touch /x 2>/dev/null && echo root-writable || echo root-ro)",
    ]);
    assert_eq!(out, "ok\nroot-ro\n");
    let line = env.ok(&[
        "run", "--rm", "--mount", "type=tmpfs,target=/scratch,tmpfs-size=1048576,tmpfs-mode=0700", "busybox", "grep",
        " /scratch ", "/proc/mounts",
    ]);
    assert!(line.contains("size=1024k") && line.contains("mode=700"), "{line}");
    let err = env.fails(&["create", "--tmpfs", "/run:exotic", "busybox"]);
    assert!(err.contains("invalid tmpfs option"), "{err}");
}

#[test]
fn named_and_anonymous_volumes() {
    let since = unix_now().to_string();
    let mut env = start();
    // docker volume create / inspect / ls with filters.
    assert_eq!(env.ok(&["volume", "create", "--label", "team=a", "data"]), "data\n");
    let mountpoint = env.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"]);
    assert_eq!(mountpoint.trim(), env.root.join("overlay/volumes/data/_data").display().to_string());
    assert_eq!(env.ok(&["volume", "inspect", "-f", "{{.Driver}} {{.Scope}} {{.Labels}}", "data"]), "local local map[team:a]\n");
    env.ok(&["volume", "create", "other"]);
    assert_eq!(env.ok(&["volume", "ls", "-q", "--filter", "label=team=a"]), "data\n");
    assert_eq!(env.ok(&["volume", "ls", "-q", "--filter", "name=oth"]), "other\n");
    let err = env.fails(&["volume", "create", "-d", "flocker", "plug"]);
    assert!(err.contains("error looking up volume plugin flocker: plugin \"flocker\" not found"), "{err}");
    let err = env.fails(&["volume", "create", "-o", "type=nfs", "nfs"]);
    assert!(err.contains("takes no options"), "{err}");
    assert!(env.fails(&["volume", "inspect", "ghost"]).contains("no such volume"));

    // A named volume persists across containers; first use creates it.
    env.ok(&["run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f"]);
    assert_eq!(env.ok(&["run", "--rm", "-v", "data:/d", "busybox", "cat", "/d/f"]), "kept\n");
    env.ok(&["run", "--rm", "--mount", "type=volume,source=fresh,target=/v", "busybox", "touch", "/v/x"]);
    assert!(env.volumes().contains(&"fresh".to_string()));

    // In use: rm refused with 409, also with --force; dangling filter.
    env.ok(&["run", "-d", "--name", "user", "-v", "data:/data", "busybox", "sleep", "1000"]);
    let (status, body) = env.api("DELETE", "/volumes/data", "");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("volume is in use"), "{body}");
    assert!(env.fails(&["volume", "rm", "-f", "data"]).contains("volume is in use"));
    assert_eq!(env.ok(&["volume", "ls", "-q", "--filter", "dangling=false"]), "data\n");
    assert_eq!(env.ok(&["ps", "--filter", "volume=data", "--format", "{{.Names}} {{.LocalVolumes}}"]), "user 1\n");
    assert_eq!(env.ok(&["ps", "-q", "--filter", "volume=/elsewhere"]), "");
    let mounts = env.inspect("user", "{{range .Mounts}}{{.Type}} {{.Name}} {{.Source}} {{.Destination}} {{.Driver}} {{.RW}};{{end}}");
    assert_eq!(mounts, format!("volume data {} /data local true;", mountpoint.trim()));
    // system df -v lists the volume with its link count.
    let df = env.ok(&["system", "df", "-v"]);
    let row = df.lines().find(|l| l.starts_with("data ")).unwrap_or_else(|| panic!("no volume row: {df}"));
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "{df}");
    let usage = env.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"]);
    assert!(usage.contains("Local Volumes 3 1"), "{usage}");
    // --volumes-from shares the volume (read-only when asked).
    let out = env.ok(&["run", "--rm", "--volumes-from", "user:ro", "busybox", "sh", "-c", "cat /data/f; touch /data/g 2>/dev/null || echo ro"]);
    assert_eq!(out, "kept\nro\n");
    let err = env.fails(&["create", "--volumes-from", "ghost", "busybox"]);
    assert!(err.contains("No such container: ghost") && !err.contains("Unable to find image"), "{err}");
    env.ok(&["rm", "-f", "user"]);

    // The image's content fills a new volume (not with nocopy).
    env.ok(&["run", "--name", "seed", "busybox", "sh", "-c", "mkdir /seed && echo from-image > /seed/file"]);
    env.ok(&["commit", "--change", "VOLUME /seed", "seed", "seeded"]);
    env.ok(&["rm", "seed"]);
    assert_eq!(env.ok(&["run", "--rm", "-v", "copied:/seed", "seeded", "cat", "/seed/file"]), "from-image\n");
    assert_eq!(env.ok(&["run", "--rm", "-v", "plain:/seed:nocopy", "seeded", "ls", "/seed"]), "");
    // The image's VOLUME gives an anonymous volume, with the image's content.
    env.ok(&["run", "--name", "anon", "-v", "/extra", "seeded", "cat", "/seed/file"]);
    let anon = env.inspect("anon", "{{range .Mounts}}{{.Name}} {{.Destination}};{{end}}");
    let names: Vec<&str> = anon.split(';').filter(|s| !s.is_empty()).map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(names.len(), 2, "{anon}");
    assert!(names.iter().all(|n| n.len() == 64), "{anon}");
    assert_eq!(env.ok(&["logs", "anon"]), "from-image\n");
    // rm -v removes the anonymous volumes, not named ones.
    env.ok(&["run", "--name", "both", "-v", "data:/data", "-v", "/tmpvol", "busybox", "true"]);
    let both = env.inspect("both", "{{range .Mounts}}{{if eq .Destination \"/tmpvol\"}}{{.Name}}{{end}}{{end}}");
    env.ok(&["rm", "-v", "anon", "both"]);
    let left = env.volumes();
    assert!(!left.iter().any(|n| names.contains(&n.as_str()) || *n == both), "{left:?}");
    assert!(left.contains(&"data".to_string()));
    // --rm removes its anonymous volume too.
    env.ok(&["run", "--rm", "-v", "/gone", "busybox", "true"]);
    assert_eq!(env.volumes().iter().filter(|n| n.len() == 64).count(), 0);

    // Prune: anonymous only by default; --all takes unused named ones.
    env.ok(&["create", "--name", "keeper", "-v", "/anonkept", "-v", "other:/o", "busybox"]);
    env.ok(&["run", "--name", "dropped", "-v", "/anonpruned", "busybox", "true"]);
    let pruned_name = env.inspect("dropped", "{{range .Mounts}}{{.Name}}{{end}}");
    env.ok(&["rm", "dropped"]);
    let out = env.ok(&["volume", "prune", "-f"]);
    assert!(out.contains(&pruned_name), "{out}");
    assert!(env.volumes().contains(&"data".to_string()));
    let out = env.ok(&["volume", "prune", "-f", "--all"]);
    assert!(out.contains("data") && out.contains("fresh") && !out.contains("other"), "{out}");
    let left = env.volumes();
    assert!(left.contains(&"other".to_string()) && !left.contains(&"data".to_string()), "{left:?}");
    assert_eq!(left.iter().filter(|n| n.len() == 64).count(), 1, "keeper's anonymous volume stays: {left:?}");

    // Volume events: create, mount, unmount, destroy.
    let until = (unix_now() + 1).to_string();
    let events = env.ok(&[
        "events", "--since", &since, "--until", &until, "--filter", "type=volume", "--filter", "volume=data",
        "--format", "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().collect();
    assert_eq!(actions.first(), Some(&"create"), "{events}");
    assert!(actions.contains(&"mount") && actions.contains(&"unmount"), "{events}");
    assert_eq!(actions.last(), Some(&"destroy"), "{events}");

    // Volumes survive a daemon restart, still known to be in use.
    env.ok(&["run", "--rm", "-v", "other:/o", "busybox", "sh", "-c", "echo persisted > /o/f"]);
    env.restart_daemon();
    assert_eq!(env.volumes(), left);
    assert_eq!(env.ok(&["run", "--rm", "-v", "other:/o", "busybox", "cat", "/o/f"]), "persisted\n");
    assert!(env.fails(&["volume", "rm", "other"]).contains("volume is in use"));
    env.ok(&["rm", "-v", "keeper"]);
    env.ok(&["volume", "rm", "other"]);
    let left = env.volumes();
    assert!(!left.contains(&"other".to_string()) && left.iter().all(|n| n.len() != 64), "{left:?}");
}
