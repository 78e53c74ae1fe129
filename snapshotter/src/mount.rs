//! Performing the [`Mount`]s a driver describes.
//!
//! Drivers only describe mounts; the engine, `stratactl` and the tests
//! consume them through this module:
//!
//! - [`mount_all`] mounts a list of mounts, in order, on one target.
//! - [`unmount`] unmounts everything stacked on a target.
//! - [`TempMount`] mounts on a fresh temporary directory and undoes it all
//!   on drop.
//!
//! Options are fstab-style: the known flag words (`ro`, `rw`, `bind`,
//! `rbind`, `nosuid`, `remount`, ...) become mount flags, the propagation
//! words (`private`, `rslave`, ...) are applied by a second call, and every
//! other option is passed to the filesystem as data. A bind mount that asks
//! for `ro` (or `nosuid`, `nodev`, `noexec`) gets a second, remounting call
//! because the kernel ignores those flags on the bind call itself.
//!
//! # Long overlay options
//! The kernel takes at most one page of mount data. An overlay with many
//! layers easily exceeds that, so when the data reaches the page size minus
//! 512 bytes, the `lowerdir`, `upperdir` and `workdir` paths are rewritten
//! relative to their common parent directory, and the mount is made from a
//! dedicated thread that unshared its filesystem context (`CLONE_FS`) and
//! changed its working directory there. The thread ends right after the
//! call, so the process's working directory never changes.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::types::Mount;

/// The options of one mount, split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountOptions {
    /// Flags for the main mount call.
    pub(crate) flags: MsFlags,
    /// Propagation flags (`MS_SHARED`, `MS_PRIVATE`, ...) for a second call.
    pub(crate) propagation: MsFlags,
    /// Filesystem-specific options, joined by commas for the data argument.
    pub(crate) data: Vec<String>,
    /// The `loop` option: the source is a file to attach to a loop device.
    pub(crate) loop_device: bool,
}

enum Effect {
    Set(MsFlags),
    Clear(MsFlags),
    Propagation(MsFlags),
}

fn option_effect(option: &str) -> Option<Effect> {
    use Effect::*;
    Some(match option {
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "bind" => Set(MsFlags::MS_BIND),
        "defaults" => Set(MsFlags::empty()),
        "dev" => Clear(MsFlags::MS_NODEV),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "lazytime" => Set(MsFlags::MS_LAZYTIME),
        "nolazytime" => Clear(MsFlags::MS_LAZYTIME),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "nodev" => Set(MsFlags::MS_NODEV),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "rbind" => Set(MsFlags::MS_BIND.union(MsFlags::MS_REC)),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "remount" => Set(MsFlags::MS_REMOUNT),
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "private" => Propagation(MsFlags::MS_PRIVATE),
        "rprivate" => Propagation(MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
        "shared" => Propagation(MsFlags::MS_SHARED),
        "rshared" => Propagation(MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
        "slave" => Propagation(MsFlags::MS_SLAVE),
        "rslave" => Propagation(MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
        "unbindable" => Propagation(MsFlags::MS_UNBINDABLE),
        "runbindable" => Propagation(MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
        _ => return None,
    })
}

/// Splits fstab-style options into flags, propagation flags and data.
/// Later words win over earlier ones (`ro,rw` is read-write).
pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        loop_device: false,
    };
    for option in options {
        if option == "loop" {
            parsed.loop_device = true;
            continue;
        }
        match option_effect(option) {
            Some(Effect::Set(f)) => parsed.flags.insert(f),
            Some(Effect::Clear(f)) => parsed.flags.remove(f),
            Some(Effect::Propagation(f)) => parsed.propagation.insert(f),
            None => parsed.data.push(option.clone()),
        }
    }
    parsed
}

/// Flags that a bind mount only honours when they are applied by a remount.
const BIND_REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as usize,
        _ => 4096,
    }
}

/// The overlay options that name directories.
const OVERLAY_PATH_KEYS: [&str; 3] = ["lowerdir", "upperdir", "workdir"];

/// Rewrites the directory options of an overlay relative to the deepest
/// directory that contains all of them. Returns that directory and the new
/// options, or `None` when there are no absolute directory paths to shorten.
pub(crate) fn compact_overlay_options(data: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let mut paths: Vec<&Path> = Vec::new();
    for option in data {
        if let Some((key, value)) = option.split_once('=') {
            if OVERLAY_PATH_KEYS.contains(&key) {
                for dir in value.split(':') {
                    let dir = Path::new(dir);
                    if !dir.is_absolute() {
                        return None;
                    }
                    paths.push(dir);
                }
            }
        }
    }
    let first = paths.first()?;
    let mut common: Vec<Component<'_>> = first.components().collect();
    for path in &paths[1..] {
        let shared = common.iter().zip(path.components()).take_while(|(a, b)| *a == b).count();
        common.truncate(shared);
    }
    let mut common: PathBuf = common.iter().collect();
    // A path equal to the common directory would become empty: go one up.
    if paths.iter().any(|p| p.components().eq(common.components())) {
        common = common.parent()?.to_path_buf();
    }
    let relative = |dir: &str| -> Option<String> {
        Path::new(dir).strip_prefix(&common).ok().map(|p| p.to_string_lossy().into_owned())
    };
    let mut rewritten = Vec::with_capacity(data.len());
    for option in data {
        match option.split_once('=') {
            Some((key, value)) if OVERLAY_PATH_KEYS.contains(&key) => {
                let dirs: Option<Vec<String>> = value.split(':').map(relative).collect();
                rewritten.push(format!("{key}={}", dirs?.join(":")));
            }
            _ => rewritten.push(option.clone()),
        }
    }
    Some((common, rewritten))
}

fn mount_error(m: &Mount, target: &Path, errno: Errno) -> Error {
    let kind = match errno {
        Errno::ENOENT => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    };
    Error::new(
        kind,
        format!(
            "mount {} {} on {}: {} ({})",
            m.fstype,
            m.source,
            target.display(),
            errno,
            errno as i32
        ),
    )
}

fn raw_mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> std::result::Result<(), Errno> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// Makes the mount call from a short-lived thread whose working directory is
/// `dir`, so relative paths in `data` resolve against it.
fn mount_from_dir(
    dir: PathBuf,
    source: String,
    target: PathBuf,
    fstype: String,
    flags: MsFlags,
    data: String,
) -> std::result::Result<(), Errno> {
    let handle = std::thread::Builder::new()
        .name("strata-mount".into())
        .spawn(move || -> std::result::Result<(), Errno> {
            // The thread gets its own cwd; the process's stays as it was.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(&dir)?;
            raw_mount(Some(&source), &target, Some(&fstype), flags, Some(&data))
        })
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)))?;
    handle.join().unwrap_or(Err(Errno::EINTR))
}

/// Where a mount goes: `target`, or below it when `m.target` names a sub-path.
fn mount_point(m: &Mount, target: &Path) -> Result<PathBuf> {
    if m.target.is_empty() {
        return Ok(target.to_path_buf());
    }
    let sub = Path::new(&m.target);
    let mut point = target.to_path_buf();
    for component in sub.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => point.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::invalid_argument(format!(
                    "mount target {:?} must stay inside {}",
                    m.target,
                    target.display()
                )))
            }
        }
    }
    Ok(point)
}

/// Mounts one mount on `target` (an absolute path).
fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let options = parse_options(&m.options);
    if options.loop_device {
        return Err(Error::invalid_argument(format!(
            "mount {} {} on {}: the loop option is not supported here; attach the file to a loop device and mount the device",
            m.fstype,
            m.source,
            target.display()
        )));
    }
    let is_bind = m.fstype == "bind" || options.flags.contains(MsFlags::MS_BIND);
    let mut flags = options.flags;
    if is_bind {
        flags.insert(MsFlags::MS_BIND);
    }
    let mut data = options.data.join(",");
    let fstype = if is_bind { "none" } else { m.fstype.as_str() };

    let page = page_size();
    let mut chdir_to = None;
    if m.fstype == "overlay" && data.len() >= page - 512 {
        if let Some((dir, compact)) = compact_overlay_options(&options.data) {
            data = compact.join(",");
            chdir_to = Some(dir);
        }
    }
    if data.len() >= page {
        return Err(Error::invalid_argument(format!(
            "mount {} {} on {}: mount options are too long ({} bytes, the limit is {})",
            m.fstype,
            m.source,
            target.display(),
            data.len(),
            page - 1
        )));
    }

    // A remount of a bind mount takes only the per-mount flags.
    let main_flags = if is_bind && !flags.contains(MsFlags::MS_REMOUNT) {
        flags & !BIND_REMOUNT_FLAGS
    } else {
        flags
    };
    let data_arg = if data.is_empty() { None } else { Some(data.as_str()) };
    let result = match chdir_to {
        Some(dir) => mount_from_dir(
            dir,
            m.source.clone(),
            target.to_path_buf(),
            fstype.to_string(),
            main_flags,
            data.clone(),
        ),
        None => raw_mount(Some(m.source.as_str()), target, Some(fstype), main_flags, data_arg),
    };
    result.map_err(|errno| mount_error(m, target, errno))?;

    let undo = |err: Error| -> Error {
        if let Err(e) = nix::mount::umount2(target, MntFlags::empty()) {
            tracing::warn!(target = %target.display(), errno = %e, "failed to undo a partial mount");
        }
        err
    };
    if is_bind && !flags.contains(MsFlags::MS_REMOUNT) && flags.intersects(BIND_REMOUNT_FLAGS) {
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (flags & BIND_REMOUNT_FLAGS);
        raw_mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
            .map_err(|errno| undo(mount_error(m, target, errno).context("remount")))?;
    }
    if !options.propagation.is_empty() {
        raw_mount(None::<&str>, target, None::<&str>, options.propagation, None::<&str>)
            .map_err(|errno| undo(mount_error(m, target, errno).context("set propagation")))?;
    }
    Ok(())
}

fn absolute_target(target: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found(format!("mount target {}: {e}", target.display()))
        } else {
            Error::io(format!("mount target {}", target.display()), e)
        }
    })
}

/// Mounts `mounts`, in order, on `target` (an existing directory). If one of
/// them fails, the ones already mounted are unmounted again before the error
/// is returned.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    let target = absolute_target(target)?;
    let mut done: Vec<PathBuf> = Vec::with_capacity(mounts.len());
    for m in mounts {
        let result = mount_point(m, &target).and_then(|point| {
            mount_one(m, &point)?;
            Ok(point)
        });
        match result {
            Ok(point) => done.push(point),
            Err(err) => {
                for point in done.iter().rev() {
                    if let Err(e) = nix::mount::umount2(point.as_path(), MntFlags::empty()) {
                        tracing::warn!(target = %point.display(), errno = %e, "failed to undo a mount");
                    }
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

/// How often an unmount that answers `EBUSY` is tried again.
const BUSY_RETRIES: u32 = 50;
/// More stacked mounts than this on one target means something is wrong.
const MAX_STACKED: usize = 1024;

/// Unmounts everything mounted on `target`, top-most first. A target that
/// is not a mount point is left alone and is not an error; a target that
/// does not exist is `NotFound`. A busy mount is retried for a while before
/// the error is returned.
pub fn unmount(target: &Path) -> Result<()> {
    let mut busy = 0;
    let mut unmounted = 0;
    while unmounted < MAX_STACKED {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => {
                unmounted += 1;
                busy = 0;
            }
            Err(Errno::EINVAL) => return Ok(()),
            Err(Errno::EBUSY) if busy < BUSY_RETRIES => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(Errno::ENOENT) => {
                return Err(Error::not_found(format!("unmount {}: {}", target.display(), Errno::ENOENT)))
            }
            Err(errno) => {
                return Err(Error::internal(format!(
                    "unmount {}: {} ({})",
                    target.display(),
                    errno,
                    errno as i32
                )))
            }
        }
    }
    Err(Error::internal(format!(
        "unmount {}: still mounted after {MAX_STACKED} unmounts",
        target.display()
    )))
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let digits = std::str::from_utf8(digits).unwrap_or("");
                if let Ok(value) = u8::from_str_radix(digits, 8) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of this process's mount namespace, in mount order.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect())
}

/// Whether something is mounted on `path`.
pub fn is_mounted(path: &Path) -> Result<bool> {
    let path = absolute_target(path)?;
    Ok(mount_points()?.contains(&path))
}

/// A directory with mounts on it that lives as long as the value: created
/// by [`TempMount::new`], unmounted and removed on drop (or, to see errors,
/// by [`TempMount::unmount`]).
#[derive(Debug)]
pub struct TempMount {
    dir: PathBuf,
    mounted: bool,
}

impl TempMount {
    /// Mounts `mounts` on a new directory under the system's temp dir.
    pub fn new(mounts: &[Mount]) -> Result<TempMount> {
        Self::new_in(mounts, &std::env::temp_dir())
    }

    /// Mounts `mounts` on a new directory created inside `parent`.
    pub fn new_in(mounts: &[Mount], parent: &Path) -> Result<TempMount> {
        let template = parent.join("strata-mount-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(|errno| {
            Error::io(
                format!("create a mount directory in {}", parent.display()),
                std::io::Error::from_raw_os_error(errno as i32),
            )
        })?;
        if let Err(err) = mount_all(mounts, &dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(err);
        }
        Ok(TempMount { dir, mounted: true })
    }

    /// The directory the mounts are on.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Unmounts and removes the directory, reporting failures.
    pub fn unmount(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.mounted {
            unmount(&self.dir)?;
            self.mounted = false;
        }
        // Only an empty directory is removed: never delete through a mount.
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove mount directory {}", self.dir.display()), e)),
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            tracing::warn!(dir = %self.dir.display(), error = %err, "failed to release a temporary mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_data() {
        let parsed = parse_options(&opts(&["ro", "nosuid", "nodev", "size=10m", "mode=0755"]));
        assert_eq!(parsed.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(parsed.data, opts(&["size=10m", "mode=0755"]));
        assert!(parsed.propagation.is_empty());
        assert!(!parsed.loop_device);
    }

    #[test]
    fn later_words_win() {
        let parsed = parse_options(&opts(&["ro", "rw", "noexec", "exec", "suid"]));
        assert_eq!(parsed.flags, MsFlags::empty());
        let parsed = parse_options(&opts(&["rw", "ro"]));
        assert_eq!(parsed.flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn bind_and_rbind() {
        assert_eq!(parse_options(&opts(&["bind"])).flags, MsFlags::MS_BIND);
        assert_eq!(parse_options(&opts(&["ro", "rbind"])).flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(
            parse_options(&opts(&["remount", "bind", "ro"])).flags,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY
        );
    }

    #[test]
    fn propagation_is_kept_apart() {
        let parsed = parse_options(&opts(&["rbind", "rprivate", "shared"]));
        assert_eq!(parsed.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC | MsFlags::MS_SHARED);
        assert!(parsed.data.is_empty());
    }

    #[test]
    fn loop_and_defaults() {
        let parsed = parse_options(&opts(&["defaults", "loop", "errors=remount-ro"]));
        assert!(parsed.loop_device);
        assert_eq!(parsed.flags, MsFlags::empty());
        assert_eq!(parsed.data, opts(&["errors=remount-ro"]));
    }

    #[test]
    fn overlay_options_stay_data() {
        let parsed = parse_options(&opts(&[
            "index=off",
            "workdir=/r/snapshots/3/work",
            "upperdir=/r/snapshots/3/fs",
            "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs",
        ]));
        assert_eq!(parsed.flags, MsFlags::empty());
        assert_eq!(parsed.data.len(), 4);
    }

    #[test]
    fn compacts_to_common_parent() {
        let (dir, rewritten) = compact_overlay_options(&opts(&[
            "index=off",
            "workdir=/r/snapshots/13/work",
            "upperdir=/r/snapshots/13/fs",
            "lowerdir=/r/snapshots/12/fs:/r/snapshots/1/fs",
        ]))
        .expect("compactable");
        assert_eq!(dir, PathBuf::from("/r/snapshots"));
        assert_eq!(
            rewritten,
            opts(&["index=off", "workdir=13/work", "upperdir=13/fs", "lowerdir=12/fs:1/fs"])
        );
    }

    #[test]
    fn compaction_goes_up_when_a_path_is_the_common_dir() {
        let (dir, rewritten) =
            compact_overlay_options(&opts(&["lowerdir=/r/snapshots/1/fs"])).expect("compactable");
        assert_eq!(dir, PathBuf::from("/r/snapshots/1"));
        assert_eq!(rewritten, opts(&["lowerdir=fs"]));

        let (dir, rewritten) =
            compact_overlay_options(&opts(&["lowerdir=/a/b:/a/b/c"])).expect("compactable");
        assert_eq!(dir, PathBuf::from("/a"));
        assert_eq!(rewritten, opts(&["lowerdir=b:b/c"]));
    }

    #[test]
    fn compaction_needs_absolute_paths() {
        assert_eq!(compact_overlay_options(&opts(&["lowerdir=a:b"])), None);
        assert_eq!(compact_overlay_options(&opts(&["index=off"])), None);
    }

    #[test]
    fn sub_path_targets_stay_inside() {
        let m = Mount { target: "/proc".into(), ..Default::default() };
        assert_eq!(mount_point(&m, Path::new("/t")).unwrap(), PathBuf::from("/t/proc"));
        let m = Mount { target: "a/../../etc".into(), ..Default::default() };
        assert_eq!(mount_point(&m, Path::new("/t")).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
        assert_eq!(unescape_mountinfo("/x\\01"), "/x\\01");
    }

    #[test]
    fn missing_target_is_not_found() {
        let m = Mount { fstype: "tmpfs".into(), source: "tmpfs".into(), ..Default::default() };
        let err = mount_all(&[m], Path::new("/nonexistent/strata/target")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn loop_option_is_refused_without_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount {
            fstype: "ext4".into(),
            source: "/nonexistent.img".into(),
            options: opts(&["loop"]),
            ..Default::default()
        };
        let err = mount_all(&[m], dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!is_mounted(dir.path()).unwrap());
    }

    #[test]
    fn too_long_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec![format!("x={}", "y".repeat(page_size()))],
            ..Default::default()
        };
        let err = mount_all(&[m], dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("too long"), "{err}");
    }

    #[test]
    fn unmount_of_a_plain_dir_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        unmount(dir.path()).unwrap();
        assert_eq!(
            unmount(&dir.path().join("missing")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    /// Tests below mount for real.
    fn require_root() {
        assert!(nix::unistd::geteuid().is_root(), "must run as root (mounts)");
    }

    fn bind(source: &Path, options: &[&str]) -> Mount {
        Mount {
            fstype: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            target: String::new(),
            options: opts(options),
        }
    }

    #[test]
    fn bind_ro_is_read_only_and_unmounts() {
        require_root();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"data").unwrap();
        let m = TempMount::new(&[bind(src.path(), &["ro", "rbind"])]).unwrap();
        let dir = m.path().to_path_buf();
        assert!(is_mounted(&dir).unwrap());
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"data");
        let err = std::fs::write(dir.join("g"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        drop(m);
        assert!(!dir.exists(), "the temporary mount directory is removed on drop");
        assert!(src.path().join("f").exists(), "the source is untouched");
    }

    #[test]
    fn bind_rw_is_writable() {
        require_root();
        let src = tempfile::tempdir().unwrap();
        let m = TempMount::new(&[bind(src.path(), &["rw", "rbind"])]).unwrap();
        std::fs::write(m.path().join("g"), b"x").unwrap();
        m.unmount().unwrap();
        assert_eq!(std::fs::read(src.path().join("g")).unwrap(), b"x");
    }

    #[test]
    fn failed_mount_leaves_nothing_mounted() {
        require_root();
        let src = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let good = bind(src.path(), &["rbind"]);
        let bad = bind(&src.path().join("missing"), &["rbind"]);
        let err = mount_all(&[good, bad], target.path()).unwrap_err();
        assert!(err.message().contains(&target.path().display().to_string()), "{err}");
        assert!(!is_mounted(target.path()).unwrap());
    }

    #[test]
    fn stacked_mounts_are_all_unmounted() {
        require_root();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(b.path().join("top"), b"").unwrap();
        let target = tempfile::tempdir().unwrap();
        mount_all(&[bind(a.path(), &["rbind"]), bind(b.path(), &["ro", "rbind"])], target.path()).unwrap();
        assert!(target.path().join("top").exists());
        unmount(target.path()).unwrap();
        assert!(!is_mounted(target.path()).unwrap());
    }

    #[test]
    fn overlay_with_options_longer_than_a_page() {
        require_root();
        let base = tempfile::tempdir().unwrap();
        // Long directory names so the options are well past one page.
        let layers = base.path().join(format!("snapshots-{}", "x".repeat(100)));
        let mut lower = Vec::new();
        for i in 0..60 {
            let dir = layers.join(format!("{i}")).join("fs");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("file-{i}")), format!("{i}")).unwrap();
            std::fs::write(dir.join("shadowed"), format!("{i}")).unwrap();
            lower.insert(0, dir.to_string_lossy().into_owned());
        }
        let upper = layers.join("top/fs");
        let work = layers.join("top/work");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let options = vec![
            "index=off".to_string(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.join(":")),
        ];
        assert!(options.join(",").len() > page_size(), "the test needs options longer than a page");
        let cwd = std::env::current_dir().unwrap();
        let m = TempMount::new(&[Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }])
        .unwrap();
        assert_eq!(std::env::current_dir().unwrap(), cwd, "the process's cwd does not change");
        assert_eq!(std::fs::read_to_string(m.path().join("file-0")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(m.path().join("file-59")).unwrap(), "59");
        assert_eq!(std::fs::read_to_string(m.path().join("shadowed")).unwrap(), "59");
        std::fs::write(m.path().join("new"), b"up").unwrap();
        m.unmount().unwrap();
        assert_eq!(std::fs::read(upper.join("new")).unwrap(), b"up");
    }
}
