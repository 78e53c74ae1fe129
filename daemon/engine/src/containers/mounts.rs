//! A container's own mounts: bind mounts, volumes and tmpfs, read from
//! `HostConfig.Binds`, `HostConfig.Mounts`, `HostConfig.Tmpfs`,
//! `Config.Volumes` and the image's `Volumes`, checked at create as dockerd
//! checks them, kept in the container record as [`MountPoint`]s and turned
//! into OCI mounts at every start.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::SpecMount;
use crate::error::EngineError;

/// One mount of a container, as `docker inspect` shows it under `Mounts`
/// (plus what the engine needs to mount it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub typ: String,
    /// The volume's name (volumes only).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The host path (a volume's `_data`); empty for tmpfs.
    #[serde(rename = "Source", default)]
    pub source: String,
    #[serde(rename = "Destination")]
    pub destination: String,
    /// `local` for volumes.
    #[serde(rename = "Driver", default)]
    pub driver: String,
    /// The options of a `Binds` entry as given (`ro,z`).
    #[serde(rename = "Mode", default)]
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    /// Bind mounts: `rprivate` unless asked otherwise.
    #[serde(rename = "Propagation", default)]
    pub propagation: String,
    /// A volume made for this container (removed with `rm -v`).
    #[serde(default)]
    pub anonymous: bool,
    /// No copy of the image's content into a new volume.
    #[serde(default)]
    pub nocopy: bool,
    /// A missing bind source is created as a directory (`Binds`).
    #[serde(default)]
    pub create_source: bool,
    /// tmpfs mount options (`size=…`, `mode=…`).
    #[serde(default)]
    pub tmpfs_options: Vec<String>,
    /// From `HostConfig.Tmpfs`: not listed in inspect's `Mounts`.
    #[serde(default)]
    pub hidden: bool,
    /// `VolumeOptions.Labels`: labels of a volume this mount creates.
    #[serde(skip)]
    pub volume_labels: std::collections::BTreeMap<String, String>,
}

impl MountPoint {
    /// The `Mounts` entry of inspect and `docker ps`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "Type": self.typ,
            "Source": self.source,
            "Destination": self.destination,
            "Mode": self.mode,
            "RW": self.rw,
            "Propagation": self.propagation,
        });
        if self.typ == "volume" {
            v["Name"] = Value::String(self.name.clone());
            v["Driver"] = Value::String(self.driver.clone());
        }
        v
    }
}

const PROPAGATIONS: &[&str] = &["private", "rprivate", "shared", "rshared", "slave", "rslave"];

/// `/a//b/` → `/a/b`; `None` for a relative path.
fn clean(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn not_absolute(typ: &str, path: &str) -> EngineError {
    EngineError::invalid(format!("invalid mount config for type \"{typ}\": invalid mount path: '{path}' mount path must be absolute"))
}

/// Checks a destination: absolute and not `/`; returns it cleaned.
fn destination(typ: &str, raw: &str, spec: Option<&str>) -> Result<String, EngineError> {
    let wrap = |e: EngineError| match spec {
        Some(s) => EngineError::invalid(format!("invalid volume specification: '{s}': {}", e.message())),
        None => e,
    };
    if raw.is_empty() {
        return Err(wrap(EngineError::invalid(format!("invalid mount config for type \"{typ}\": field Target must not be empty"))));
    }
    let dst = clean(raw).ok_or_else(|| wrap(not_absolute(typ, raw)))?;
    if dst == "/" {
        return Err(wrap(EngineError::invalid(format!(
            "invalid mount config for type \"{typ}\": invalid specification: destination can't be '/'"
        ))));
    }
    Ok(dst)
}

/// The parsed options of a `Binds` entry.
#[derive(Debug, Default)]
struct BindMode {
    ro: bool,
    propagation: Option<String>,
    nocopy: bool,
}

fn parse_mode(mode: &str) -> Option<BindMode> {
    let mut out = BindMode::default();
    let (mut rw_seen, mut label_seen, mut copy_seen) = (false, false, false);
    for opt in mode.split(',') {
        match opt {
            "ro" | "rw" if !rw_seen => {
                rw_seen = true;
                out.ro = opt == "ro";
            }
            "z" | "Z" if !label_seen => label_seen = true,
            "nocopy" if !copy_seen => {
                copy_seen = true;
                out.nocopy = true;
            }
            "consistent" | "cached" | "delegated" => {}
            p if PROPAGATIONS.contains(&p) && out.propagation.is_none() => out.propagation = Some(p.to_string()),
            _ => return None,
        }
    }
    Some(out)
}

/// One `HostConfig.Binds` entry: `SRC:DST[:OPTS]`, `DST[:OPTS]` or `DST`.
fn parse_bind(raw: &str) -> Result<MountPoint, EngineError> {
    let invalid = || EngineError::invalid(format!("invalid volume specification: '{raw}'"));
    let parts: Vec<&str> = raw.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [a, b] if parse_mode(b).is_some() && !b.starts_with('/') => ("", *a, *b),
        [src, dst] => (*src, *dst, ""),
        [src, dst, mode] => (*src, *dst, *mode),
        _ => return Err(invalid()),
    };
    if src.is_empty() && parts.len() > 1 && parts[0].is_empty() {
        return Err(invalid());
    }
    let parsed = if mode.is_empty() {
        BindMode::default()
    } else {
        parse_mode(mode).ok_or_else(|| EngineError::invalid(format!("invalid mode: {mode}")))?
    };
    let bind = src.starts_with('/');
    let typ = if bind { "bind" } else { "volume" };
    let destination = destination(typ, dst, Some(raw))?;
    if bind {
        let source = clean(src).ok_or_else(invalid)?;
        return Ok(MountPoint {
            typ: "bind".into(),
            source,
            destination,
            mode: mode.to_string(),
            rw: !parsed.ro,
            propagation: parsed.propagation.unwrap_or_else(|| "rprivate".into()),
            create_source: true,
            ..Default::default()
        });
    }
    if parsed.propagation.is_some() {
        return Err(EngineError::invalid(format!(
            "invalid volume specification: '{raw}': invalid mount config for type \"volume\": field BindOptions must not be specified"
        )));
    }
    if !src.is_empty() && !crate::volumes::valid_name(src) {
        return Err(EngineError::invalid(format!(
            "create {src}: \"{src}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )));
    }
    Ok(MountPoint {
        typ: "volume".into(),
        name: src.to_string(),
        destination,
        driver: crate::volumes::LOCAL_DRIVER.into(),
        // As dockerd: a named volume of `Binds` without options shows `z`.
        mode: if mode.is_empty() && !src.is_empty() { "z".to_string() } else { mode.to_string() },
        rw: !parsed.ro,
        anonymous: src.is_empty(),
        nocopy: parsed.nocopy,
        ..Default::default()
    })
}

const TMPFS_FLAGS: &[&str] = &[
    "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "diratime", "nodiratime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "sync", "async", "dirsync", "mand", "nomand",
];
const TMPFS_DATA: &[&str] = &["size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol", "huge"];

/// Checks the options of a tmpfs (`size=64m,mode=1777,noexec`).
fn tmpfs_options(dst: &str, text: &str) -> Result<Vec<String>, EngineError> {
    let mut out = Vec::new();
    for opt in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let ok = match opt.split_once('=') {
            Some((k, v)) => TMPFS_DATA.contains(&k) && !v.is_empty(),
            None => TMPFS_FLAGS.contains(&opt),
        };
        if !ok {
            return Err(EngineError::invalid(format!("invalid tmpfs option {opt:?} for {dst}")));
        }
        out.push(opt.to_string());
    }
    Ok(out)
}

fn field<'a>(m: &'a Value, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// One `HostConfig.Mounts` entry.
fn parse_mount(m: &Value) -> Result<MountPoint, EngineError> {
    let typ = field(m, "Type").and_then(Value::as_str).unwrap_or("");
    let err = |t: &str, what: String| EngineError::invalid(format!("invalid mount config for type \"{t}\": {what}"));
    let source = field(m, "Source").and_then(Value::as_str).unwrap_or("");
    let target = field(m, "Target").and_then(Value::as_str).unwrap_or("");
    let readonly = field(m, "ReadOnly").and_then(Value::as_bool).unwrap_or(false);
    match typ {
        "bind" | "volume" | "tmpfs" => {}
        "" => return Err(EngineError::invalid("invalid mount config: mount type must not be empty")),
        other => return Err(err(other, "mount type unknown".into())),
    }
    let dst = destination(typ, target, None)?;
    for (key, owner) in [("BindOptions", "bind"), ("VolumeOptions", "volume"), ("TmpfsOptions", "tmpfs")] {
        if typ != owner && field(m, key).is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(err(typ, format!("{key} must not be specified")));
        }
    }
    match typ {
        "bind" => {
            if source.is_empty() {
                return Err(err(typ, "field Source must not be empty".into()));
            }
            let src = clean(source).ok_or_else(|| not_absolute(typ, source))?;
            if std::fs::metadata(&src).is_err() {
                return Err(err(typ, format!("bind source path does not exist: {src}")));
            }
            let propagation = match m.pointer("/BindOptions/Propagation").and_then(Value::as_str).unwrap_or("") {
                "" => "rprivate".to_string(),
                p if PROPAGATIONS.contains(&p) => p.to_string(),
                p => return Err(err(typ, format!("invalid propagation mode: {p}"))),
            };
            Ok(MountPoint { typ: "bind".into(), source: src, destination: dst, rw: !readonly, propagation, ..Default::default() })
        }
        "volume" => {
            if !source.is_empty() && !crate::volumes::valid_name(source) {
                return Err(err(typ, format!("invalid volume name {source:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
            }
            let driver = m.pointer("/VolumeOptions/DriverConfig/Name").and_then(Value::as_str).unwrap_or("");
            crate::volumes::check_driver(driver)?;
            if m.pointer("/VolumeOptions/DriverConfig/Options").and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
                return Err(err(typ, "the local volume driver of this engine takes no options".into()));
            }
            Ok(MountPoint {
                typ: "volume".into(),
                name: source.to_string(),
                destination: dst,
                driver: crate::volumes::LOCAL_DRIVER.into(),
                rw: !readonly,
                anonymous: source.is_empty(),
                nocopy: m.pointer("/VolumeOptions/NoCopy").and_then(Value::as_bool).unwrap_or(false),
                volume_labels: m
                    .pointer("/VolumeOptions/Labels")
                    .and_then(Value::as_object)
                    .map(|l| l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                    .unwrap_or_default(),
                ..Default::default()
            })
        }
        _ => {
            if !source.is_empty() {
                return Err(err(typ, "field Source must not be specified".into()));
            }
            let mut options = Vec::new();
            if let Some(size) = m.pointer("/TmpfsOptions/SizeBytes").and_then(Value::as_i64) {
                if size < 0 {
                    return Err(err(typ, format!("invalid size {size}")));
                }
                if size > 0 {
                    options.push(format!("size={size}"));
                }
            }
            if let Some(mode) = m.pointer("/TmpfsOptions/Mode").and_then(Value::as_u64).filter(|m| *m != 0) {
                options.push(format!("mode={:o}", mode & 0o7777));
            }
            if readonly {
                options.push("ro".into());
            }
            Ok(MountPoint { typ: "tmpfs".into(), destination: dst, rw: !readonly, tmpfs_options: options, ..Default::default() })
        }
    }
}

/// Reads a container's mounts from the create request: `Binds`, `Mounts`,
/// `Tmpfs`, then anonymous volumes for `Config.Volumes` and the image's
/// `Volumes` not already covered. Volumes are not resolved yet (no source;
/// anonymous ones have no name). A destination given twice is refused.
pub fn parse(body: &Value, host_config: &Value, image_config: &Value) -> Result<Vec<MountPoint>, EngineError> {
    let mut points: Vec<MountPoint> = Vec::new();
    let add = |p: MountPoint, points: &mut Vec<MountPoint>| -> Result<(), EngineError> {
        if points.iter().any(|o| o.destination == p.destination) {
            return Err(EngineError::invalid(format!("Duplicate mount point: {}", p.destination)));
        }
        points.push(p);
        Ok(())
    };
    match field(host_config, "Binds") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                let raw = item.as_str().ok_or_else(|| EngineError::invalid("HostConfig.Binds must be a list of strings"))?;
                add(parse_bind(raw)?, &mut points)?;
            }
        }
        Some(_) => return Err(EngineError::invalid("HostConfig.Binds must be a list of strings")),
    }
    match field(host_config, "Mounts") {
        None => {}
        Some(Value::Array(items)) => {
            for item in items {
                if !item.is_object() {
                    return Err(EngineError::invalid("HostConfig.Mounts must be a list of objects"));
                }
                add(parse_mount(item)?, &mut points)?;
            }
        }
        Some(_) => return Err(EngineError::invalid("HostConfig.Mounts must be a list of objects")),
    }
    match field(host_config, "Tmpfs") {
        None => {}
        Some(Value::Object(map)) => {
            for (dst, opts) in map {
                if !dst.starts_with('/') {
                    return Err(EngineError::invalid(format!("invalid mount path: '{dst}' mount path must be absolute")));
                }
                let dst = destination("tmpfs", dst, None)?;
                let opts = opts.as_str().unwrap_or("");
                let options = tmpfs_options(&dst, opts)?;
                let rw = !options.iter().any(|o| o == "ro");
                add(MountPoint { typ: "tmpfs".into(), destination: dst, rw, tmpfs_options: options, hidden: true, ..Default::default() }, &mut points)?;
            }
        }
        Some(_) => return Err(EngineError::invalid("HostConfig.Tmpfs must be a JSON object")),
    }
    for config in [body, image_config] {
        if let Some(Value::Object(map)) = field(config, "Volumes") {
            for dst in map.keys() {
                let dst = destination("volume", dst, None)?;
                if points.iter().any(|p| p.destination == dst) {
                    continue;
                }
                points.push(MountPoint {
                    typ: "volume".into(),
                    destination: dst,
                    driver: crate::volumes::LOCAL_DRIVER.into(),
                    rw: true,
                    anonymous: true,
                    ..Default::default()
                });
            }
        }
    }
    Ok(points)
}

/// The tmpfs options dockerd starts from, with later options replacing
/// earlier ones of the same kind (`exec` replaces `noexec`, `size=` a
/// `size=`).
fn merged_tmpfs_options(user: &[String]) -> Vec<String> {
    let mut out: Vec<String> = ["noexec", "nosuid", "nodev", "rprivate"].iter().map(|s| s.to_string()).collect();
    let family = |o: &str| -> String {
        if let Some((k, _)) = o.split_once('=') {
            return format!("{k}=");
        }
        match o {
            "ro" | "rw" => "ro".into(),
            _ => o.strip_prefix("no").unwrap_or(o).to_string(),
        }
    };
    let user: Vec<String> = if user.iter().any(|o| o.starts_with("size=")) {
        user.to_vec()
    } else {
        let mut u = vec!["size=65536k".to_string()];
        u.extend(user.iter().cloned());
        u
    };
    for opt in user {
        let f = family(&opt);
        out.retain(|o| family(o) != f);
        out.push(opt);
    }
    out
}

/// The OCI mounts of a container's mount points, parents before children.
pub fn spec_mounts(points: &[MountPoint]) -> Vec<SpecMount> {
    let mut sorted: Vec<&MountPoint> = points.iter().collect();
    sorted.sort_by_key(|p| p.destination.split('/').filter(|s| !s.is_empty()).count());
    sorted
        .into_iter()
        .map(|p| match p.typ.as_str() {
            "tmpfs" => SpecMount {
                destination: p.destination.clone(),
                typ: "tmpfs".into(),
                source: "tmpfs".into(),
                options: merged_tmpfs_options(&p.tmpfs_options),
            },
            _ => {
                let propagation = if p.propagation.is_empty() { "rprivate" } else { p.propagation.as_str() };
                let mut options = vec!["rbind".to_string(), propagation.to_string()];
                if !p.rw {
                    options.push("ro".into());
                }
                SpecMount { destination: p.destination.clone(), typ: "bind".into(), source: p.source.clone(), options }
            }
        })
        .collect()
}

/// `rootfs` joined with `dst` when no component on the way is a symlink
/// (so a copy from the image never leaves the root) and it is a directory.
pub fn image_dir(rootfs: &Path, dst: &str) -> Option<PathBuf> {
    let mut path = rootfs.to_path_buf();
    for c in Path::new(dst).components() {
        if let Component::Normal(p) = c {
            path.push(p);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
        }
    }
    std::fs::symlink_metadata(&path).ok().filter(|m| m.is_dir()).map(|_| path)
}

/// Whether `dir` has no entries.
pub fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binds_are_parsed_as_dockerd_does() {
        let b = parse_bind("/host/dir/:/data:ro,Z").unwrap();
        assert_eq!((b.typ.as_str(), b.source.as_str(), b.destination.as_str(), b.rw), ("bind", "/host/dir", "/data", false));
        assert_eq!((b.mode.as_str(), b.propagation.as_str()), ("ro,Z", "rprivate"));
        assert_eq!(parse_bind("/h:/d:rshared").unwrap().propagation, "rshared");
        let v = parse_bind("cache:/var/cache:nocopy").unwrap();
        assert_eq!((v.typ.as_str(), v.name.as_str(), v.nocopy, v.anonymous), ("volume", "cache", true, false));
        let a = parse_bind("/only").unwrap();
        assert!(a.anonymous && a.typ == "volume" && a.destination == "/only");
        let a = parse_bind("/only:ro").unwrap();
        assert!(a.anonymous && !a.rw);
        assert_eq!(parse_bind("/h:/d:bogus").unwrap_err().to_string(), "invalid mode: bogus");
        assert_eq!(parse_bind("/h:/d:ro,rw").unwrap_err().to_string(), "invalid mode: ro,rw");
        assert!(parse_bind("/h:relative").unwrap_err().to_string().contains("mount path must be absolute"));
        assert!(parse_bind("/h:/").unwrap_err().to_string().contains("destination can't be '/'"));
        assert!(parse_bind("a:b:c:d").unwrap_err().to_string().starts_with("invalid volume specification"));
        assert!(parse_bind("x:/d").unwrap_err().to_string().contains("includes invalid characters"));
        assert!(parse_bind("vol:/d:rshared").is_err());
    }

    #[test]
    fn mounts_tmpfs_and_volumes_merge_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().display().to_string();
        let hc = json!({
            "Binds": [format!("{src}:/a")],
            "Mounts": [
                {"Type": "bind", "Source": src, "Target": "/b", "ReadOnly": true, "BindOptions": {"Propagation": "rslave"}},
                {"Type": "volume", "Source": "named", "Target": "/c", "VolumeOptions": {"NoCopy": true}},
                {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777}},
            ],
            "Tmpfs": {"/run": "size=64m,mode=1777"},
        });
        let body = json!({"Volumes": {"/a": {}, "/anon": {}}});
        let image = json!({"Volumes": {"/img": {}, "/c": {}}});
        let points = parse(&body, &hc, &image).unwrap();
        let dsts: Vec<&str> = points.iter().map(|p| p.destination.as_str()).collect();
        assert_eq!(dsts, ["/a", "/b", "/c", "/t", "/run", "/anon", "/img"]);
        assert_eq!((points[1].rw, points[1].propagation.as_str()), (false, "rslave"));
        assert!(points[2].nocopy && points[2].name == "named");
        assert_eq!(points[3].tmpfs_options, ["size=1048576", "mode=1777"]);
        assert!(points[4].hidden && points[5].anonymous && points[6].anonymous);

        let dup = json!({"Binds": [format!("{src}:/x")], "Tmpfs": {"/x": ""}});
        assert_eq!(parse(&json!({}), &dup, &Value::Null).unwrap_err().to_string(), "Duplicate mount point: /x");
        let missing = json!({"Mounts": [{"Type": "bind", "Source": "/no/such/dir/here", "Target": "/x"}]});
        assert_eq!(
            parse(&json!({}), &missing, &Value::Null).unwrap_err().to_string(),
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir/here"
        );
        let plugin = json!({"Mounts": [{"Type": "volume", "Source": "v1", "Target": "/x", "VolumeOptions": {"DriverConfig": {"Name": "nfs"}}}]});
        assert!(matches!(parse(&json!({}), &plugin, &Value::Null), Err(EngineError::NotFound(_))));
        let bad = json!({"Tmpfs": {"/x": "size=1m,exotic"}});
        assert!(parse(&json!({}), &bad, &Value::Null).is_err());
    }

    #[test]
    fn spec_mounts_order_and_options() {
        let points = vec![
            MountPoint { typ: "bind".into(), source: "/h".into(), destination: "/a/b".into(), rw: false, propagation: "rprivate".into(), ..Default::default() },
            MountPoint { typ: "tmpfs".into(), destination: "/a".into(), rw: true, tmpfs_options: vec!["exec".into(), "size=1m".into()], ..Default::default() },
        ];
        let m = spec_mounts(&points);
        assert_eq!(m[0].destination, "/a");
        assert_eq!(m[0].options, ["nosuid", "nodev", "rprivate", "exec", "size=1m"]);
        assert_eq!(m[1].options, ["rbind", "rprivate", "ro"]);
        let m = spec_mounts(&[MountPoint { typ: "tmpfs".into(), destination: "/run".into(), rw: true, ..Default::default() }]);
        assert_eq!(m[0].options, ["noexec", "nosuid", "nodev", "rprivate", "size=65536k"]);
    }

    #[test]
    fn image_dirs_do_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        assert_eq!(image_dir(dir.path(), "/data/sub"), Some(dir.path().join("data/sub")));
        assert_eq!(image_dir(dir.path(), "/link"), None);
        assert_eq!(image_dir(dir.path(), "/missing"), None);
        assert!(is_empty_dir(&dir.path().join("data/sub")));
    }
}
