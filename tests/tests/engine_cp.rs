//! End-to-end tests of `docker cp` against `stratad` (the container archive
//! endpoints), with the real docker CLI and runc on overlay: files and
//! directories copied out of running and stopped containers byte for byte
//! with their modes, copies into containers (file, directory, a tar on
//! stdin), a container's symlink to `/etc` resolved in the container and
//! not on the host, hostile tars refused with nothing written outside the
//! container, a missing path reported as the CLI prints it, and the
//! `archive-path` / `extract-to-dir` events.
//!
//! Run as root: `cargo test -p strata-tests --test engine_cp`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use strata_tests::engine_env::ContainerEnv;

type Env = ContainerEnv;

fn start() -> Env {
    ContainerEnv::start("stratad-cp", "overlay", &[])
}

/// `env.s(name)`: a path in the test's directory as a CLI argument.
trait PathArg {
    fn s(&self, name: &str) -> String;
}

impl PathArg for Env {
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// Temporary mounts of stopped containers' roots are all released.
fn assert_no_temp_mounts(env: &Env) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = env.dir.path().display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&prefix) && l.contains("/.tmp/")).collect();
    assert!(left.is_empty(), "temporary mounts left: {left:?}");
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A tar with raw entry names and link targets, as a hostile client could
/// send (no checks on the names).
fn raw_tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_mtime(1_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

#[test]
fn copy_out_of_running_and_stopped_containers() {
    let env = start();
    env.ok(&["run", "-d", "--name", "live", "busybox", "sh", "-c",
        "mkdir -p /data/sub && printf 'hello\\nworld\\n' > /data/f && chmod 640 /data/f && head -c 100000 /dev/urandom > /data/sub/big && chmod 700 /data/sub && ln -s /etc /data/etclink && echo ready > /ready; sleep 1000"]);
    for _ in 0..100 {
        if env.docker.output(&["exec", "live", "cat", "/ready"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let reference = env.ok(&["exec", "live", "sha256sum", "/data/f", "/data/sub/big"]);

    for (ctr, tag) in [("live", "run"), ("dead", "stopped")] {
        if ctr == "dead" {
            env.ok(&["commit", "live", "withdata"]);
            env.ok(&["create", "--name", "dead", "withdata", "true"]);
        }
        // A file.
        let f = env.s(&format!("{tag}-f"));
        env.ok(&["cp", &format!("{ctr}:/data/f"), &f]);
        assert_eq!(std::fs::read(&f).unwrap(), b"hello\nworld\n");
        assert_eq!(mode_of(Path::new(&f)), 0o640);
        // A directory, under its own name inside an existing directory.
        let d = env.path(&format!("{tag}-dir"));
        std::fs::create_dir(&d).unwrap();
        env.ok(&["cp", &format!("{ctr}:/data"), &d.display().to_string()]);
        let big = std::fs::read(d.join("data/sub/big")).unwrap();
        assert_eq!(big.len(), 100_000);
        assert_eq!(mode_of(&d.join("data/sub")), 0o700);
        assert_eq!(std::fs::read_link(d.join("data/etclink")).unwrap(), Path::new("/etc"));
        let sums = std::process::Command::new("sha256sum").arg(d.join("data/f")).arg(d.join("data/sub/big")).output().unwrap();
        let mine: Vec<&str> = std::str::from_utf8(&sums.stdout).unwrap().lines().map(|l| l.split_whitespace().next().unwrap()).collect();
        let theirs: Vec<&str> = reference.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(mine, theirs, "{tag}: copied bytes differ");
        // Contents only (`/.`).
        let c = env.path(&format!("{tag}-contents"));
        env.ok(&["cp", &format!("{ctr}:/data/."), &c.display().to_string()]);
        let tar_out = env.docker.output(&["cp", &format!("{ctr}:/data/."), "-"]);
        let names: Vec<String> = tar::Archive::new(&tar_out.stdout[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(c.join("sub/big").is_file() && c.join("f").is_file(), "{names:?} {:?}", std::fs::read_dir(env.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
        // To stdout: a tar.
        let out = env.docker.output(&["cp", &format!("{ctr}:/data/f"), "-"]);
        assert!(out.status.success());
        let mut ar = tar::Archive::new(&out.stdout[..]);
        let mut entry = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap(), Path::new("f"));
        let mut body = String::new();
        std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
        assert_eq!(body, "hello\nworld\n");
        // A symlink to /etc resolves in the container: its passwd, not the host's.
        let p = env.s(&format!("{tag}-passwd"));
        env.ok(&["cp", &format!("{ctr}:/data/etclink/passwd"), &p]);
        let inside = env.ok(&["run", "--rm", "busybox", "cat", "/etc/passwd"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), inside);
        assert_ne!(std::fs::read_to_string(&p).unwrap(), std::fs::read_to_string("/etc/passwd").unwrap());
        // -L follows the link itself.
        let l = env.s(&format!("{tag}-etc"));
        env.ok(&["cp", "-L", &format!("{ctr}:/data/etclink"), &l]);
        assert!(Path::new(&l).join("passwd").is_file());
        // A missing path.
        let err = env.fails(&["cp", &format!("{ctr}:/nope"), &env.s("nope")]);
        assert!(err.contains(&format!("Could not find the file /nope in container {ctr}")), "{err}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let events = env.ok(&["events", "--since", "0", "--until", "0s", "--filter", "event=archive-path", "--format", "{{.Action}}"]);
    assert!(events.lines().count() >= 2, "{events}");
    assert_no_temp_mounts(&env);
}

#[test]
fn copy_into_containers() {
    let env = start();
    env.ok(&["run", "-d", "--name", "cc", "busybox", "sleep", "1000"]);
    env.ok(&["create", "--name", "ss", "busybox", "cat", "/tmp/in/x"]);
    std::fs::write(env.path("x"), "into\n").unwrap();
    std::fs::set_permissions(env.path("x"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::create_dir_all(env.path("tree/deep")).unwrap();
    std::fs::write(env.path("tree/deep/y"), "yy").unwrap();

    // A file and a directory into a running container.
    env.ok(&["cp", &env.s("x"), "cc:/tmp/x"]);
    assert_eq!(env.ok(&["exec", "cc", "cat", "/tmp/x"]), "into\n");
    assert_eq!(env.ok(&["exec", "cc", "stat", "-c", "%a %u", "/tmp/x"]).trim(), "751 0");
    env.ok(&["cp", &env.s("tree"), "cc:/tmp/"]);
    assert_eq!(env.ok(&["exec", "cc", "cat", "/tmp/tree/deep/y"]), "yy");
    // A tar on stdin.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o600);
    b.append_data(&mut h, "streamed/z", &b"zzz"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let out = env.docker.output_with_input(&["cp", "-", "cc:/tmp"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ok(&["exec", "cc", "cat", "/tmp/streamed/z"]), "zzz");
    // Into a stopped (created) container: seen when it runs.
    env.ok(&["exec", "cc", "true"]);
    std::fs::create_dir_all(env.path("in")).unwrap();
    std::fs::write(env.path("in/x"), "stopped\n").unwrap();
    env.ok(&["cp", &env.s("in"), "ss:/tmp/"]);
    assert_eq!(env.ok(&["start", "-a", "ss"]), "stopped\n");
    // Into a created container's anonymous volume and out of a bind of a
    // running one: through the mounts, as dockerd resolves them.
    env.ok(&["create", "--name", "vv", "-v", "/vol1", "busybox", "cat", "/vol1/x"]);
    env.ok(&["cp", &env.s("x"), "vv:/vol1/"]);
    assert_eq!(env.ok(&["start", "-a", "vv"]), "into\n");
    std::fs::create_dir_all(env.path("bound")).unwrap();
    std::fs::write(env.path("bound/b"), "bound").unwrap();
    env.ok(&["run", "-d", "--name", "bb", "-v", &format!("{}:/b:ro", env.s("bound")), "busybox", "sleep", "1000"]);
    env.ok(&["cp", "bb:/b/b", &env.s("b-out")]);
    assert_eq!(std::fs::read_to_string(env.path("b-out")).unwrap(), "bound");
    let err = env.fails(&["cp", &env.s("x"), "bb:/b/"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");
    assert!(!env.path("bound/x").exists());
    // Into a missing directory's child: an error, as the CLI prints it.
    let err = env.fails(&["cp", &env.s("x"), "cc:/no/such/file"]);
    assert!(err.contains("Could not find the file /no/such in container cc"), "{err}");
    // Also while the client is still sending a large upload: the reply
    // comes after its body is read, never as a broken pipe.
    std::fs::write(env.path("large"), vec![7u8; 32 << 20]).unwrap();
    let err = env.fails(&["cp", &env.s("large"), "cc:/no/such/file"]);
    assert!(err.contains("Could not find the file /no/such in container cc"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let events = env.ok(&["events", "--since", "0", "--until", "0s", "--filter", "event=extract-to-dir", "--format", "{{.Action}}"]);
    assert!(events.lines().count() >= 5, "{events}");
    assert_no_temp_mounts(&env);
}

#[test]
fn hostile_tars_are_refused() {
    let env = start();
    env.ok(&["run", "-d", "--name", "hh", "busybox", "sh", "-c", "mkdir -p /tmp/box/in && ln -s /etc /tmp/box/etc && sleep 1000"]);
    for _ in 0..100 {
        if env.docker.output(&["exec", "hh", "test", "-L", "/tmp/box/etc"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let marker = format!("strata-cp-escape-{}", std::process::id());
    let host_target = PathBuf::from("/tmp").join(&marker);
    let _ = std::fs::remove_file(&host_target);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("traversal", raw_tar(&[(&format!("../../../../../../tmp/{marker}"), b'0', "", b"x")])),
        ("absolute", raw_tar(&[(&format!("/tmp/{marker}"), b'0', "", b"x")])),
        ("symlink", raw_tar(&[("esc", b'2', "../../../../../../../tmp", b""), (&format!("esc/{marker}"), b'0', "", b"x")])),
        ("hardlink", raw_tar(&[("hl", b'1', "../../../../../../etc/passwd", b"")])),
    ];
    for (what, data) in hostile {
        let out = env.docker.output_with_input(&["cp", "-", "hh:/tmp/box/in"], &data);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains("refusing archive entry"), "{what}: {err}");
        assert!(!host_target.exists(), "{what}: wrote {}", host_target.display());
        let listing = env.ok(&["exec", "hh", "ls", "-A", "/tmp/box/in"]);
        assert_eq!(listing, "", "{what}: wrote inside the directory");
    }
    // Through the container's own symlink to /etc: the container's /etc.
    let data = raw_tar(&[(&marker, b'0', "", b"inside")]);
    let out = env.docker.output_with_input(&["cp", "-", "hh:/tmp/box/etc"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ok(&["exec", "hh", "cat", &format!("/etc/{marker}")]), "inside");
    assert!(!Path::new("/etc").join(&marker).exists());
    // An absolute symlink written by the tar is only data; writing through
    // it lands in the container's /tmp.
    let data = raw_tar(&[("abs", b'2', "/tmp", b""), (&format!("abs/{marker}"), b'0', "", b"c")]);
    let out = env.docker.output_with_input(&["cp", "-", "hh:/tmp/box/in"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ok(&["exec", "hh", "cat", &format!("/tmp/{marker}")]), "c");
    assert!(!host_target.exists());
    // PUT into a file: not a directory.
    let out = env.docker.output_with_input(&["cp", "-", &format!("hh:/etc/{marker}")], &raw_tar(&[("f", b'0', "", b"x")]));
    assert!(!out.status.success());
}

/// `--network/--pid/--ipc container:<name>`: the new container joins the
/// running target's namespaces; refusals in dockerd's words.
#[test]
fn container_namespace_modes() {
    let env = start();
    env.ok(&["run", "-d", "--name", "tgt", "busybox", "sleep", "1000"]);
    let ns = |kind: &str| env.ok(&["exec", "tgt", "readlink", &format!("/proc/self/ns/{kind}")]);
    for (flag, kind) in [("--network", "net"), ("--pid", "pid"), ("--ipc", "ipc")] {
        let joined = env.ok(&["run", "--rm", flag, "container:tgt", "busybox", "readlink", &format!("/proc/self/ns/{kind}")]);
        assert_eq!(joined, ns(kind), "{flag}");
        let own = env.ok(&["run", "--rm", "busybox", "readlink", &format!("/proc/self/ns/{kind}")]);
        assert_ne!(own, ns(kind), "{flag}: a container of its own shares it");
    }
    // The target's processes are seen with --pid container:.
    let out = env.docker.output(&["run", "--rm", "--pid", "container:tgt", "busybox", "ps", "-o", "args"]);
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(ps.contains("sleep 1000"), "{ps} / {} / {}", out.status, String::from_utf8_lossy(&out.stderr));
    // By ID too; inspect shows the mode as given.
    let id = env.ok(&["inspect", "-f", "{{.Id}}", "tgt"]).trim().to_string();
    env.ok(&["create", "--name", "joiner", "--network", &format!("container:{id}"), "--pid", "container:tgt", "busybox", "true"]);
    assert_eq!(env.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}}", "joiner"]).trim(), format!("container:{id} container:tgt"));
    env.ok(&["start", "-a", "joiner"]);
    // A target that is not running, or missing.
    env.ok(&["create", "--name", "idle", "busybox", "true"]);
    let err = env.fails(&["run", "--rm", "--network", "container:idle", "busybox", "true"]);
    assert!(err.contains("cannot join network of a non running container: idle"), "{err}");
    let err = env.fails(&["run", "--rm", "--pid", "container:idle", "busybox", "true"]);
    assert!(err.contains("is not running"), "{err}");
    let err = env.fails(&["run", "--rm", "--network", "container:nosuch", "busybox", "true"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
    // host-gateway needs a gateway address this daemon does not have.
    let err = env.fails(&["run", "--rm", "--add-host", "gw:host-gateway", "busybox", "true"]);
    assert!(err.contains("unable to derive the IP value for host-gateway"), "{err}");
}
