//! End-to-end tests of the `stratad` daemon with the real docker CLI (and
//! curl for the raw API): listeners, TLS, configuration, storage drivers,
//! info, events, system df and shutdown.
//!
//! Run as root: `cargo test -p strata-tests --test engine_daemon`.

use std::path::Path;

use strata_tests::engine::{
    curl, free_port, http_unix, require_docker, require_program, run_to_exit, Certs, Docker, Probe, Stratad,
};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (overlay mounts, /run sockets): run it as root"
    );
}

fn setup() -> tempfile::TempDir {
    require_root();
    require_docker();
    tempfile::Builder::new().prefix("stratad-e2e").tempdir().expect("temp dir")
}

fn unix_host(sock: &Path) -> String {
    format!("unix://{}", sock.display())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `--data-root <dir>/root --storage-driver vfs --config-file
/// <dir>/daemon.json` (written empty), then `more`.
fn vfs_args(dir: &Path, more: &[&str]) -> Vec<String> {
    let config = dir.join("daemon.json");
    std::fs::write(&config, "{}").expect("write daemon.json");
    let mut args = strings(&[
        "--data-root",
        &dir.join("root").display().to_string(),
        "--storage-driver",
        "vfs",
        "--config-file",
        &config.display().to_string(),
    ]);
    args.extend(strings(more));
    args
}

/// The flags `Stratad::start_simple(root, sock, …)` gives (data root `root`,
/// socket `sock`, config file `<sock>.json`), then `more`: for starts that
/// are expected to fail.
fn simple_args(root: &Path, sock: &Path, more: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "--data-root",
        &root.display().to_string(),
        "-H",
        &unix_host(sock),
        "--config-file",
        &sock.with_extension("json").display().to_string(),
    ]);
    args.extend(strings(more));
    args
}

/// The docker CLI's flags to verify the server against `ca`'s CA and present
/// `client`'s client certificate, then `more`.
fn docker_tls_flags(ca: &Certs, client: &Certs, more: &[&str]) -> Vec<String> {
    let mut args = vec!["--tlsverify".to_string()];
    for (flag, path) in [("--tlscacert", ca.ca()), ("--tlscert", client.client_cert()), ("--tlskey", client.client_key())] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(strings(more));
    args
}

/// curl's flags to verify the server against `ca`'s CA and present
/// `client`'s client certificate, fetching `url`.
fn curl_tls_flags(ca: &Certs, client: &Certs, url: &str) -> Vec<String> {
    let mut args = vec!["-sS".to_string()];
    for (flag, path) in [("--cacert", ca.ca()), ("--cert", client.client_cert()), ("--key", client.client_key())] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.push(url.to_string());
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Imports the busybox rootfs as `reference` through the docker CLI.
fn import_busybox(docker: &Docker, dir: &Path, reference: &str) -> String {
    let tarball = strata_tests::image::write_rootfs_tar_gz(&dir.join("rootfs.tar.gz")).expect("build busybox rootfs");
    let bytes = std::fs::read(&tarball).expect("read rootfs");
    let out = docker.output_with_input(&["import", "-", reference], &bytes);
    assert!(
        out.status.success(),
        "docker import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn version_ping_and_errors() {
    let dir = setup();
    let sock = dir.path().join("d.sock");
    let _daemon = Stratad::start_simple(&dir.path().join("root"), &sock, &["--storage-driver", "vfs"]).unwrap();
    let docker = Docker::new(&unix_host(&sock));

    let out = docker.ok(&["version"]);
    assert!(out.contains("Server: Strata Engine"), "{out}");
    assert!(out.contains("API version:      1.50 (minimum version 1.24)"), "{out}");
    let json = docker.ok(&["version", "--format", "{{json .Server}}"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["ApiVersion"], "1.50");
    assert_eq!(v["MinAPIVersion"], "1.24");
    assert_eq!(v["Os"], "linux");

    // HEAD /_ping: headers, no body.
    let (status, text) = http_unix(&sock, "HEAD", "/_ping", None).unwrap();
    assert_eq!(status, 200);
    let lower = text.to_ascii_lowercase();
    for header in ["api-version: 1.50", "ostype: linux", "docker-experimental: false", "cache-control: no-cache", "pragma: no-cache"] {
        assert!(lower.contains(header), "missing {header} in {text}");
    }
    assert!(text.ends_with("\r\n\r\n"), "HEAD must have no body: {text:?}");
    let (status, text) = http_unix(&sock, "GET", "/v1.41/_ping", None).unwrap();
    assert_eq!(status, 200);
    assert!(text.ends_with("\r\n\r\nOK"), "{text:?}");

    // Unversioned and versioned paths both work.
    let (status, text) = http_unix(&sock, "GET", "/version", None).unwrap();
    assert_eq!(status, 200, "{text}");
    // Unknown route: JSON 404 with the exact content type.
    let (status, text) = http_unix(&sock, "GET", "/v1.50/no/such/route", None).unwrap();
    assert_eq!(status, 404);
    assert!(text.to_ascii_lowercase().contains("content-type: application/json\r\n"), "{text}");
    assert!(text.ends_with(r#"{"message":"page not found"}"#), "{text}");
    // Versions out of range.
    let (status, text) = http_unix(&sock, "GET", "/v1.51/version", None).unwrap();
    assert_eq!(status, 400);
    assert!(text.contains("client version 1.51 is too new. Maximum supported API version is 1.50"), "{text}");
    let (status, text) = http_unix(&sock, "GET", "/v1.12/version", None).unwrap();
    assert_eq!(status, 400);
    assert!(text.contains("client version 1.12 is too old"), "{text}");
    // A pinned older client version works end to end.
    let pinned = Docker::new(&unix_host(&sock)).env("DOCKER_API_VERSION", "1.41");
    assert!(pinned.ok(&["version"]).contains("1.41"));
}

#[test]
fn info_shows_each_driver_and_settings() {
    let dir = setup();
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    {
        let _d = Stratad::start_simple(
            &root,
            &sock,
            &["--storage-driver", "vfs", "--insecure-registry", "myreg.local:5000", "--log-driver", "local", "-D"],
        )
        .unwrap();
        let docker = Docker::new(&unix_host(&sock));
        let out = docker.ok(&["info"]);
        assert!(out.contains("Storage Driver: vfs"), "{out}");
        assert!(out.contains(&format!("Docker Root Dir: {}", root.display())), "{out}");
        assert!(out.contains("Logging Driver: local"), "{out}");
        assert!(out.contains("Cgroup Driver: cgroupfs"), "{out}");
        assert!(out.contains("Cgroup Version: "), "{out}");
        assert!(out.contains("Insecure Registries:\n  myreg.local:5000\n  ::1/128\n  127.0.0.0/8"), "{out}");
        assert!(out.contains(" Debug Mode: true"), "{out}");
        assert!(out.contains("Images: 0"), "{out}");
        let json = docker.ok(&["info", "--format", "{{json .}}"]);
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["Driver"], "vfs");
        assert_eq!(v["Containers"], 0);
        assert!(v["NCPU"].as_u64().unwrap() >= 1);
        assert!(v["MemTotal"].as_u64().unwrap() > 0);
        assert_eq!(v["Swarm"]["LocalNodeState"], "inactive");
        // -D logs every request with method, path and status.
        let log = _d.log();
        assert!(log.contains("GET") && log.contains("/v1.50/info") && log.contains("status=200"), "{log}");
    }
    // overlay (the kernel must support it: the test machines are Linux with overlayfs)
    let root2 = dir.path().join("root2");
    let sock2 = dir.path().join("d2.sock");
    let _d = Stratad::start_simple(&root2, &sock2, &["--storage-driver", "overlay2"]).unwrap();
    let out = Docker::new(&unix_host(&sock2)).ok(&["info"]);
    assert!(out.contains("Storage Driver: overlay\n"), "{out}");
    assert!(out.contains("  Backing Filesystem: "), "{out}");
    assert!(out.contains("  Supports d_type: true"), "{out}");
    assert!(out.contains(" Debug Mode: false"), "{out}");
    assert!(out.contains("Logging Driver: json-file"), "{out}");
}

#[test]
fn several_listeners_at_once_and_docker_host() {
    let dir = setup();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let port = free_port();
    let args = vfs_args(dir.path(), &[
        "-H",
        &unix_host(&a),
        "-H",
        &unix_host(&b),
        "-H",
        &format!("tcp://127.0.0.1:{port}"),
    ]);
    let daemon = Stratad::start(&args, Probe::Unix(a.clone()), &dir.path().join("d.log")).unwrap();
    // The socket is created with mode 0660.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o660);

    for host in [unix_host(&a), unix_host(&b), format!("tcp://127.0.0.1:{port}")] {
        // DOCKER_HOST
        let out = Docker::new(&host).ok(&["version", "--format", "{{.Server.Version}}"]);
        assert!(!out.trim().is_empty(), "{host}: {out}");
        // -H
        let out = Docker::bare().ok(&["-H", &host, "info", "--format", "{{.Driver}}"]);
        assert_eq!(out.trim(), "vfs", "{host}");
    }
    let out = curl(&["-sS", &format!("http://127.0.0.1:{port}/version")]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ApiVersion"], "1.50");
    let out = curl(&["-sS", "--unix-socket", &b.display().to_string(), "http://localhost/v1.50/version"]);
    assert!(out.status.success());
    // Plain TCP gets a loud warning.
    let log = daemon.log();
    assert!(log.contains("WARNING: API is accessible on tcp://127.0.0.1:"), "{log}");
    assert!(log.contains(&format!("unix://{}", a.display())) && log.contains(&format!("unix://{}", b.display())), "{log}");
}

#[test]
fn tls_verify_flow_and_refusals() {
    let dir = setup();
    let certs = Certs::generate(&dir.path().join("certs")).unwrap();
    let other = Certs::generate(&dir.path().join("other-ca")).unwrap();
    let port = free_port();
    let args = vfs_args(dir.path(), &[
        "--tlsverify",
        "--tlscacert",
        &certs.ca().display().to_string(),
        "--tlscert",
        &certs.server_cert().display().to_string(),
        "--tlskey",
        &certs.server_key().display().to_string(),
        "-H",
        &format!("tcp://127.0.0.1:{port}"),
    ]);
    let daemon = Stratad::start(&args, Probe::Tcp(port), &dir.path().join("d.log")).unwrap();
    let host = format!("tcp://127.0.0.1:{port}");
    let p = |path: std::path::PathBuf| path.display().to_string();

    // Explicit flags.
    let out = Docker::bare().ok(&refs(&docker_tls_flags(&certs, &certs, &["-H", &host, "version"])));
    assert!(out.contains("Server: Strata Engine"), "{out}");
    // The environment variables.
    let env_client = Docker::new(&host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &certs.dir.display().to_string());
    assert_eq!(env_client.ok(&["info", "--format", "{{.Driver}}"]).trim(), "vfs");
    // curl with a client certificate.
    let out = curl(&refs(&curl_tls_flags(&certs, &certs, &format!("https://127.0.0.1:{port}/version"))));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ApiVersion"], "1.50");

    // Refusals: no client certificate.
    let out = curl(&["-sS", "--cacert", &p(certs.ca()), &format!("https://127.0.0.1:{port}/version")]);
    assert!(!out.status.success(), "a client without a certificate was served");
    let ca_only = dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(certs.ca(), ca_only.join("ca.pem")).unwrap();
    let err = Docker::new(&host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &ca_only.display().to_string())
        .fails(&["version"]);
    assert!(err.contains("certificate required") || err.contains("tls"), "{err}");
    // A certificate from another CA.
    let out = curl(&refs(&curl_tls_flags(&certs, &other, &format!("https://127.0.0.1:{port}/version"))));
    assert!(!out.status.success(), "a client certificate from another CA was accepted");
    let err = Docker::bare().fails(&refs(&docker_tls_flags(&certs, &other, &["-H", &host, "version"])));
    assert!(err.contains("tls") || err.contains("certificate"), "{err}");
    // Plain HTTP to the TLS port is answered as Go's server does, and not served.
    let out = curl(&["-sS", "--max-time", "10", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}/version")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Client sent an HTTP request to an HTTPS server.") && text.ends_with("400"), "{text}");
    assert!(!text.contains("ApiVersion"), "{text}");
    let err = Docker::new(&host).fails(&["version"]);
    assert!(err.contains("Client sent an HTTP request to an HTTPS server"), "{err}");
    // No warning for a verified TLS listener; the refusals are logged.
    let log = daemon.log();
    assert!(!log.contains("WARNING: API is accessible"), "{log}");
    assert!(log.contains("TLS handshake refused"), "{log}");
}

#[test]
fn daemon_json_and_flag_conflict() {
    let dir = setup();
    let sock = dir.path().join("from-file.sock");
    let config = dir.path().join("daemon.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "hosts": [unix_host(&sock)],
            "data-root": dir.path().join("root").display().to_string(),
            "storage-driver": "vfs",
            "debug": true,
            "insecure-registries": ["10.1.0.0/16"],
            "log-driver": "none"
        })
        .to_string(),
    )
    .unwrap();
    {
        let args = strings(&["--config-file", &config.display().to_string()]);
        let _d = Stratad::start(&args, Probe::Unix(sock.clone()), &dir.path().join("d.log")).unwrap();
        let docker = Docker::new(&unix_host(&sock));
        let v: serde_json::Value =
            serde_json::from_str(docker.ok(&["info", "--format", "{{json .}}"]).trim()).unwrap();
        assert_eq!(v["Driver"], "vfs");
        assert_eq!(v["Debug"], true);
        assert_eq!(v["LoggingDriver"], "none");
        assert_eq!(v["DockerRootDir"], dir.path().join("root").display().to_string());
        assert!(v["RegistryConfig"]["InsecureRegistryCIDRs"].to_string().contains("10.1.0.0/16"));
    }
    // The same setting as a flag and in the file: refused, naming it.
    let other = dir.path().join("other.sock");
    let out = run_to_exit(&strings(&["--config-file", &config.display().to_string(), "-H", &unix_host(&other), "-D"])).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the following directives are specified both as a flag and in the configuration file: hosts: (from flag: ["),
        "{err}"
    );
    assert!(err.contains("debug: (from flag: true, from file: true)"), "{err}");
    assert!(!other.exists(), "nothing may listen after a refused start");
    // An unknown key.
    std::fs::write(&config, r#"{"graph":"/x"}"#).unwrap();
    let out = run_to_exit(&strings(&["--config-file", &config.display().to_string()])).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the following directives don't match any configuration option: graph"));
    // --help lists every option.
    let out = run_to_exit(&strings(&["--help"])).unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--host", "--tlsverify", "--data-root", "--storage-driver", "--storage-opt", "--insecure-registry", "--log-driver", "--debug", "--config-file", "--snapshotter-address"] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}

#[test]
fn storage_driver_switching_and_ambiguity() {
    let dir = setup();
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let host = unix_host(&sock);
    {
        let _d = Stratad::start_simple(&root, &sock, &["--storage-driver", "overlay"]).unwrap();
        let docker = Docker::new(&host);
        import_busybox(&docker, dir.path(), "switch/overlay:v1");
        assert!(docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).contains("switch/overlay:v1"));
    }
    assert!(root.join("overlay/images").is_dir());
    {
        let _d = Stratad::start_simple(&root, &sock, &["--storage-driver", "vfs"]).unwrap();
        let docker = Docker::new(&host);
        let listed = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(!listed.contains("switch/overlay"), "vfs must not see overlay's images: {listed}");
        import_busybox(&docker, dir.path(), "switch/vfs:v1");
    }
    // Both drivers hold data now: no driver given is refused, naming both.
    let out = run_to_exit(&simple_args(&root, &sock, &[])).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlay, vfs") && err.contains("--storage-driver"), "{err}");
    // Switching back finds the images again.
    let _d = Stratad::start_simple(&root, &sock, &["--storage-driver", "overlay2"]).unwrap();
    let listed = Docker::new(&host).ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.contains("switch/overlay:v1") && !listed.contains("switch/vfs"), "{listed}");
    let info = Docker::new(&host).ok(&["info", "--format", "{{.Driver}} {{.Images}}"]);
    assert_eq!(info.trim(), "overlay 1");
}

#[test]
fn default_driver_and_unknown_driver() {
    let dir = setup();
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    {
        // No driver and no data: overlay on a kernel that supports it.
        let _d = Stratad::start_simple(&root, &sock, &[]).unwrap();
        let out = Docker::new(&unix_host(&sock)).ok(&["info", "--format", "{{.Driver}}"]);
        assert_eq!(out.trim(), "overlay");
    }
    let config = sock.with_extension("json");
    let out = run_to_exit(&simple_args(&root, &sock, &["--storage-driver", "zfs"])).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown storage driver \"zfs\""));
    // A storage option the driver does not know stops the start with its name.
    let out = run_to_exit(&simple_args(&root, &sock, &["--storage-driver", "vfs", "--storage-opt", "bogus.key=1"])).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage driver vfs") && err.contains("bogus.key"), "{err}");
    // --validate checks the configuration and exits.
    let out = run_to_exit(&strings(&["--config-file", &config.display().to_string(), "--validate"])).unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configuration OK");
}

#[test]
fn events_replay_filter_and_follow() {
    let dir = setup();
    let sock = dir.path().join("d.sock");
    let _d = Stratad::start_simple(&dir.path().join("root"), &sock, &["--storage-driver", "vfs"]).unwrap();
    let docker = Docker::new(&unix_host(&sock));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let id = import_busybox(&docker, dir.path(), "events/bb:v1");
    docker.ok(&["tag", "events/bb:v1", "events/bb:v2"]);
    let until = start + 120;
    // Replay with since/until: the stream ends by itself once `until` passed;
    // here `until` is in the future, so use a past window instead.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = docker.ok(&[
        "events",
        "--since",
        &start.to_string(),
        "--until",
        &now.to_string(),
        "--filter",
        "type=image",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.ID}}",
    ]);
    assert!(out.contains(&format!("image import {id}")) || out.contains("image import sha256:"), "{out}");
    assert!(out.contains("image tag"), "{out}");
    let out = docker.ok(&[
        "events", "--since", &start.to_string(), "--until", &now.to_string(), "--filter", "event=tag", "--format",
        "{{json .}}",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "{out}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["Action"], "tag");
        assert_eq!(v["status"], "tag");
        assert_eq!(v["scope"], "local");
        assert!(v["timeNano"].as_i64().unwrap() >= v["time"].as_i64().unwrap() * 1_000_000_000);
    }
    // A filter that matches nothing.
    let out = docker.ok(&["events", "--since", &start.to_string(), "--until", &now.to_string(), "--filter", "type=container"]);
    assert!(out.trim().is_empty(), "{out}");
    // With no event to send, the status line and headers still come at once
    // (clients wait for them before going on).
    {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET /v1.50/events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut head = [0u8; 512];
        let n = stream.read(&mut head).expect("the events headers must arrive before any event");
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json\r\n"), "{head}");
    }
    // since after until is a 400.
    let err = docker.fails(&["events", "--since", &now.to_string(), "--until", &start.to_string()]);
    assert!(err.contains("cannot be after"), "{err}");
    let _ = until;

    // Following: a stream open with a future `until` sees a new event and
    // then ends on its own.
    let follow_until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 4;
    let follower = {
        let host = unix_host(&sock);
        std::thread::spawn(move || {
            Docker::new(&host).ok(&[
                "events", "--until", &follow_until.to_string(), "--filter", "type=image", "--format", "{{.Action}} {{.Actor.Attributes.name}}",
            ])
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    docker.ok(&["tag", "events/bb:v1", "events/bb:live"]);
    let seen = follower.join().expect("follower thread");
    assert!(seen.contains("tag events/bb:live"), "{seen}");
}

#[test]
fn system_df_reports_images() {
    let dir = setup();
    let sock = dir.path().join("d.sock");
    let _d = Stratad::start_simple(&dir.path().join("root"), &sock, &["--storage-driver", "vfs"]).unwrap();
    let docker = Docker::new(&unix_host(&sock));
    let out = docker.ok(&["system", "df"]);
    assert!(out.contains("Images          0"), "{out}");
    import_busybox(&docker, dir.path(), "df/bb:v1");
    docker.ok(&["tag", "df/bb:v1", "df/bb:v2"]);
    let out = docker.ok(&["system", "df"]);
    let images_row = out.lines().find(|l| l.starts_with("Images")).unwrap_or_default().to_string();
    assert!(images_row.contains("Images          1         0"), "{out}");
    assert!(images_row.contains("(100%)"), "nothing is in use, so all is reclaimable: {out}");
    let out = docker.ok(&["system", "df", "-v"]);
    assert!(out.contains("df/bb") && out.contains("SHARED SIZE") && out.contains("UNIQUE SIZE"), "{out}");
    // A created container is counted in info and df, and makes its image active.
    docker.ok(&["create", "--name", "dfc", "df/bb:v1", "/bin/busybox", "true"]);
    let info = docker.ok(&["info", "--format", "{{.Containers}} {{.ContainersRunning}} {{.ContainersPaused}} {{.ContainersStopped}}"]);
    assert_eq!(info.trim(), "1 0 0 1");
    let out = docker.ok(&["system", "df"]);
    assert!(out.lines().any(|l| l.starts_with("Containers      1         0")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Images          1         1")), "{out}");
    let out = docker.ok(&["system", "df", "-v"]);
    assert!(out.contains("dfc"), "{out}");
    // type= limits the answer.
    let (status, text) = http_unix(&sock, "GET", "/v1.50/system/df?type=volume", None).unwrap();
    assert_eq!(status, 200);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.contains("\"Volumes\":[]") && !body.contains("\"Images\""), "{text}");
    let (status, _) = http_unix(&sock, "GET", "/v1.50/system/df?type=bogus", None).unwrap();
    assert_eq!(status, 400);
}

#[test]
fn sigterm_is_a_clean_shutdown_and_restart_finds_images() {
    let dir = setup();
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let mut d = Stratad::start_simple(&root, &sock, &["--storage-driver", "overlay"]).unwrap();
    let docker = Docker::new(&unix_host(&sock));
    let id = import_busybox(&docker, dir.path(), "restart/bb:v1");
    let status = d.stop().unwrap();
    assert!(status.success(), "stratad exited with {status}; log:\n{}", d.log());
    assert!(!sock.exists(), "the socket file must be removed on shutdown");
    assert!(d.log().contains("shut down"), "{}", d.log());
    let _d = Stratad::start_simple(&root, &sock, &["--storage-driver", "overlay"]).unwrap();
    let out = docker.ok(&["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"]);
    assert!(out.contains(&format!("{id} restart/bb:v1")), "{out}");
}

#[test]
fn remote_snapshotter_through_strata_snapshotd() {
    let dir = setup();
    let snap_sock = dir.path().join("snapshotd.sock");
    let snapd = strata_tests::daemon::Daemon::start(&dir.path().join("snap-root"), &snap_sock, &["--driver", "vfs"])
        .expect("start strata-snapshotd");
    let sock = dir.path().join("d.sock");
    let _d = Stratad::start_simple(
        &dir.path().join("root"),
        &sock,
        &["--storage-driver", "vfs", "--snapshotter-address", &snapd.address()],
    )
    .unwrap();
    let docker = Docker::new(&unix_host(&sock));
    let out = docker.ok(&["info"]);
    assert!(out.contains("Storage Driver: vfs"), "{out}");
    assert!(out.contains(&format!("Snapshotter Address: {}", snapd.address())), "{out}");
    import_busybox(&docker, dir.path(), "remote/bb:v1");
    // The layer lives in the snapshotter daemon's root, not the engine's.
    assert!(docker.ok(&["images"]).contains("remote/bb"));
    assert!(!dir.path().join("root/vfs/snapshots-root").exists(), "the embedded driver must not be used");
}

#[test]
fn systemd_socket_activation_with_fd() {
    let dir = setup();
    require_program("systemd-socket-activate", "apt-get install systemd (it provides systemd-socket-activate)");
    let sock = dir.path().join("activated.sock");
    let wrapper = strings(&["systemd-socket-activate", "-l", &sock.display().to_string()]);
    let mut args = strings(&["-H", "fd://"]);
    args.extend(vfs_args(dir.path(), &[]));
    let mut d = Stratad::start_wrapped(&wrapper, &args, Probe::Unix(sock.clone()), &dir.path().join("d.log")).unwrap();
    let out = Docker::new(&unix_host(&sock)).ok(&["info", "--format", "{{.Driver}}"]);
    assert_eq!(out.trim(), "vfs");
    assert!(d.log().contains("API listen"), "{}", d.log());
    let status = d.stop().unwrap();
    assert!(status.success(), "{status}; log:\n{}", d.log());
    // fd:// without sockets from systemd is a clear start-up error.
    let out = run_to_exit(&args).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_FDS"), "{}", String::from_utf8_lossy(&out.stderr));
}
