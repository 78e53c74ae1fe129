//! Mounts rendered as shell commands a person can paste.
//!
//! Overlay option strings longer than a page cannot be passed to mount(2);
//! for those the command changes into the layers' common directory first and
//! names every layer relative to it (`cd DIR && mount -t overlay ...`).

use std::path::{Component, Path, PathBuf};

use strata_snapshotter::Mount;

/// The longest mount option string the kernel accepts (one page).
pub const MAX_OPTIONS_BYTES: usize = 4096;

/// One shell command per mount, each mounting at `target` (joined with the
/// mount's own `target` sub-path when it has one).
pub fn mount_commands(mounts: &[Mount], target: &Path) -> Vec<String> {
    mounts
        .iter()
        .map(|m| {
            let dest = if m.target.is_empty() { target.to_path_buf() } else { target.join(m.target.trim_start_matches('/')) };
            mount_command(m, &dest)
        })
        .collect()
}

fn mount_command(mount: &Mount, target: &Path) -> String {
    let target = quote(&target.to_string_lossy());
    match mount.fstype.as_str() {
        "bind" | "rbind" => {
            let mut options = mount.options.clone();
            if !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.insert(0, if mount.fstype == "rbind" { "rbind".into() } else { "bind".into() });
            }
            format!("mount -o {} {} {target}", quote(&options.join(",")), quote(&mount.source))
        }
        "overlay" => {
            let options = mount.options.join(",");
            if options.len() <= MAX_OPTIONS_BYTES {
                return format!("mount -t overlay {} -o {} {target}", quote(&mount.source), quote(&options));
            }
            match relative_overlay(&mount.options) {
                Some((dir, relative)) => format!(
                    "cd {} && mount -t overlay {} -o {} {target}",
                    quote(&dir.to_string_lossy()),
                    quote(&mount.source),
                    quote(&relative.join(","))
                ),
                None => format!("mount -t overlay {} -o {} {target}", quote(&mount.source), quote(&options)),
            }
        }
        fstype => {
            let mut cmd = format!("mount -t {}", quote(fstype));
            if !mount.options.is_empty() {
                cmd.push_str(&format!(" -o {}", quote(&mount.options.join(","))));
            }
            format!("{cmd} {} {target}", quote(&mount.source))
        }
    }
}

/// The overlay's directory options rewritten relative to the deepest
/// directory that contains all of them; `None` when a path is not absolute.
fn relative_overlay(options: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let mut paths: Vec<&str> = Vec::new();
    for opt in options {
        if let Some((key, value)) = opt.split_once('=') {
            match key {
                "lowerdir" => paths.extend(value.split(':')),
                "upperdir" | "workdir" => paths.push(value),
                _ => {}
            }
        }
    }
    if paths.is_empty() || paths.iter().any(|p| !p.starts_with('/')) {
        return None;
    }
    let mut common: Vec<Component<'_>> = Path::new(paths[0]).parent()?.components().collect();
    for p in &paths[1..] {
        let comps: Vec<Component<'_>> = Path::new(p).components().collect();
        let same = common.iter().zip(&comps).take_while(|(a, b)| a == b).count();
        common.truncate(same);
    }
    let dir: PathBuf = common.iter().collect();
    let rel = |p: &str| -> String {
        Path::new(p).strip_prefix(&dir).map(|r| r.to_string_lossy().into_owned()).unwrap_or_else(|_| p.to_string())
    };
    let rewritten = options
        .iter()
        .map(|opt| match opt.split_once('=') {
            Some(("lowerdir", v)) => format!("lowerdir={}", v.split(':').map(rel).collect::<Vec<_>>().join(":")),
            Some((k @ ("upperdir" | "workdir"), v)) => format!("{k}={}", rel(v)),
            _ => opt.clone(),
        })
        .collect();
    Some((dir, rewritten))
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "_./:=,+-@%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(fstype: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            fstype: fstype.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn bind_and_block_mounts() {
        let t = Path::new("/mnt/x");
        assert_eq!(
            mount_commands(&[mount("bind", "/s/1/fs", &["ro", "rbind"])], t),
            ["mount -o ro,rbind /s/1/fs /mnt/x"]
        );
        assert_eq!(mount_commands(&[mount("bind", "/s/1/fs", &["rw"])], t), ["mount -o bind,rw /s/1/fs /mnt/x"]);
        assert_eq!(
            mount_commands(&[mount("ext4", "/dev/loop3", &["rw"])], Path::new("/mnt/a b")),
            ["mount -t ext4 -o rw /dev/loop3 '/mnt/a b'"]
        );
    }

    #[test]
    fn short_overlay_is_one_command() {
        let m = mount("overlay", "overlay", &["index=off", "workdir=/r/s/3/work", "upperdir=/r/s/3/fs", "lowerdir=/r/s/2/fs:/r/s/1/fs"]);
        assert_eq!(
            mount_commands(&[m], Path::new("/mnt")),
            ["mount -t overlay overlay -o index=off,workdir=/r/s/3/work,upperdir=/r/s/3/fs,lowerdir=/r/s/2/fs:/r/s/1/fs /mnt"]
        );
    }

    #[test]
    fn long_overlay_changes_directory_and_uses_relative_layers() {
        let root = "/var/lib/strata/snapshotter/overlay/snapshots";
        let lowers: Vec<String> = (1..=200).rev().map(|i| format!("{root}/{i}/fs")).collect();
        let opts = vec![
            "index=off".to_string(),
            format!("workdir={root}/201/work"),
            format!("upperdir={root}/201/fs"),
            format!("lowerdir={}", lowers.join(":")),
        ];
        let m = Mount { fstype: "overlay".into(), source: "overlay".into(), target: String::new(), options: opts };
        let cmds = mount_commands(&[m], Path::new("/mnt/t"));
        assert_eq!(cmds.len(), 1);
        let cmd = &cmds[0];
        assert!(cmd.starts_with(&format!("cd {root} && mount -t overlay overlay -o index=off,workdir=201/work,upperdir=201/fs,lowerdir=200/fs:199/fs:")), "{cmd}");
        assert!(cmd.ends_with(":1/fs /mnt/t"), "{cmd}");
        let options = cmd.split(" -o ").nth(1).and_then(|s| s.split(' ').next()).unwrap_or("");
        assert!(options.len() <= MAX_OPTIONS_BYTES, "{} bytes", options.len());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("plain/path"), "plain/path");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
