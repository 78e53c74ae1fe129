//! A container's changes to its image: `docker diff`, the layer tar of
//! `docker commit`, and `docker export` (a tar of the whole root).
//!
//! With overlay the changes are exactly the upper directory (a whiteout,
//! a character device 0/0, is a deletion). For every other driver the
//! container's root is compared with a read-only view of the image's top
//! layer, by type, mode, owner, size, modification time and link target.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use strata_snapshotter::mount::TempMount;
use strata_snapshotter::{Labels, Mount};

use super::ContainerService;
use crate::error::EngineError;

/// Docker's change kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Modified = 0,
    Added = 1,
    Deleted = 2,
}

/// One changed path (absolute inside the container).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// Mount points the runtime may create; never reported as changes.
const RUNTIME_PATHS: &[&str] = &["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"];

fn overlay_dirs(mounts: &[Mount]) -> Option<(PathBuf, Vec<PathBuf>)> {
    let [m] = mounts else { return None };
    if m.fstype != "overlay" {
        return None;
    }
    let mut upper = None;
    let mut lowers = Vec::new();
    for o in &m.options {
        if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(l) = o.strip_prefix("lowerdir=") {
            lowers = l.split(':').map(PathBuf::from).collect();
        }
    }
    upper.map(|u| (u, lowers))
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Walks `dir` depth first, calling `f(relative path, metadata)`.
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&child))?;
        f(&child, &meta);
        if meta.is_dir() {
            walk(root, &child, f)?;
        }
    }
    Ok(())
}

fn abs(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// Changes of an overlay container: its upper directory.
pub fn overlay_changes(upper: &Path, lowers: &[PathBuf]) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), &mut |rel, meta| {
        let kind = if is_whiteout(meta) {
            ChangeKind::Deleted
        } else if lowers.iter().any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok()) {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        out.push(Change { path: abs(rel), kind });
    })?;
    Ok(out)
}

fn same(a: &std::fs::Metadata, b: &std::fs::Metadata, pa: &Path, pb: &Path) -> bool {
    if a.file_type() != b.file_type() || a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid() {
        return false;
    }
    if a.is_dir() {
        return a.mtime() == b.mtime();
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(pa).ok() == std::fs::read_link(pb).ok();
    }
    a.size() == b.size() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec() && a.rdev() == b.rdev()
}

/// Changes between two directory trees (`new` against `old`).
pub fn tree_changes(old: &Path, new: &Path) -> std::io::Result<Vec<Change>> {
    let mut old_entries: BTreeMap<PathBuf, std::fs::Metadata> = BTreeMap::new();
    walk(old, Path::new(""), &mut |rel, meta| {
        old_entries.insert(rel.to_path_buf(), meta.clone());
    })?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    walk(new, Path::new(""), &mut |rel, meta| {
        seen.insert(rel.to_path_buf());
        match old_entries.get(rel) {
            None => out.push(Change { path: abs(rel), kind: ChangeKind::Added }),
            Some(old_meta) => {
                if !same(old_meta, meta, &old.join(rel), &new.join(rel)) {
                    out.push(Change { path: abs(rel), kind: ChangeKind::Modified });
                }
            }
        }
    })?;
    for rel in old_entries.keys() {
        if !seen.contains(rel) {
            // Only the topmost deleted path is reported, as Docker does.
            let parent_gone = rel.ancestors().skip(1).any(|a| !a.as_os_str().is_empty() && !seen.contains(a));
            if !parent_gone {
                out.push(Change { path: abs(rel), kind: ChangeKind::Deleted });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files bind-mounted over the image's (see `etc.rs`): the runtime
/// creates them as mount points when the image lacks them.
const ETC_MOUNT_POINTS: &[&str] = &["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"];

fn without_runtime_paths(changes: Vec<Change>) -> Vec<Change> {
    let kept: Vec<Change> = changes
        .into_iter()
        .filter(|c| !RUNTIME_PATHS.contains(&c.path.as_str()) && !ETC_MOUNT_POINTS.contains(&c.path.as_str()))
        .collect();
    // `/etc` itself changed only if something else in it did (creating
    // the mount points touched it).
    let etc_changed = kept.iter().any(|c| c.path.starts_with("/etc/"));
    kept.into_iter().filter(|c| c.path != "/etc" || c.kind == ChangeKind::Deleted || etc_changed).collect()
}

/// A mounted container root: the live one while it runs, else a
/// temporary mount of its snapshot.
pub(crate) enum RootMount {
    Live(PathBuf),
    Temp(TempMount),
}

impl RootMount {
    pub fn path(&self) -> &Path {
        match self {
            RootMount::Live(p) => p,
            RootMount::Temp(t) => t.path(),
        }
    }
}

impl ContainerService {
    pub(super) async fn mount_root(&self, c: &super::Container) -> Result<RootMount, EngineError> {
        let rootfs = c.dir.rootfs();
        let live = {
            let rootfs = rootfs.clone();
            tokio::task::spawn_blocking(move || strata_snapshotter::mount::is_mounted(&rootfs).unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        if live {
            return Ok(RootMount::Live(rootfs));
        }
        let key = c.record().snapshot_key.clone();
        let mounts = self.snapshotter.mounts(&key).await?;
        let tmp = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(format!("create {}", tmp.display()), e))?;
        let m = tokio::task::spawn_blocking(move || TempMount::new_in(&mounts, &tmp))
            .await
            .map_err(|e| EngineError::internal(format!("mount task failed: {e}")))??;
        Ok(RootMount::Temp(m))
    }

    /// `GET /containers/{id}/changes`.
    pub async fn changes(&self, name: &str) -> Result<Vec<Change>, EngineError> {
        let c = self.get(name)?;
        let record = c.record().clone();
        let mounts = self.snapshotter.mounts(&record.snapshot_key).await?;
        if let Some((upper, lowers)) = overlay_dirs(&mounts) {
            let found = tokio::task::spawn_blocking(move || overlay_changes(&upper, &lowers))
                .await
                .map_err(|e| EngineError::internal(format!("diff task failed: {e}")))?
                .map_err(|e| EngineError::io("walk the container's upper directory", e))?;
            return Ok(without_runtime_paths(found));
        }
        let tmp = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(format!("create {}", tmp.display()), e))?;
        let root = self.mount_root(&c).await?;
        let view_key = format!("diff-{}-{}", record.id, super::store::new_id()?.get(..8).unwrap_or("0"));
        let view = self.snapshotter.view(&view_key, &record.parent_chain_id, Labels::new()).await?;
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<Change>, EngineError> {
            let base = if view.is_empty() { None } else { Some(TempMount::new_in(&view, &tmp)?) };
            let empty = tempfile_dir(&tmp)?;
            let old = base.as_ref().map(|b| b.path().to_path_buf()).unwrap_or_else(|| empty.clone());
            let found = tree_changes(&old, root.path()).map_err(|e| EngineError::io("compare the container with its image", e));
            let _ = std::fs::remove_dir(&empty);
            drop(base);
            drop(root);
            found
        })
        .await
        .map_err(|e| EngineError::internal(format!("diff task failed: {e}")));
        if let Err(e) = self.snapshotter.remove(&view_key).await {
            tracing::warn!(key = %view_key, error = %e, "cannot remove the diff view");
        }
        Ok(without_runtime_paths(result??))
    }

    /// `GET /containers/{id}/export`: writes a tar of the container's root
    /// to `out` (on a blocking thread).
    pub async fn export<W: Write + Send + 'static>(&self, name: &str, out: W) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let root = self.mount_root(&c).await?;
        self.emit(&c, "export", &[]);
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            let mut builder = tar::Builder::new(out);
            builder.follow_symlinks(false);
            builder.mode(tar::HeaderMode::Complete);
            let base = root.path().to_path_buf();
            let mut failed = None;
            walk(&base, Path::new(""), &mut |rel, _meta| {
                if failed.is_none() {
                    if let Err(e) = builder.append_path_with_name(base.join(rel), rel) {
                        failed = Some(e);
                    }
                }
            })
            .map_err(|e| EngineError::io("walk the container root", e))?;
            if let Some(e) = failed {
                return Err(EngineError::io("write the export", e));
            }
            builder.finish().map_err(|e| EngineError::io("write the export", e))?;
            drop(root);
            Ok(())
        })
        .await
        .map_err(|e| EngineError::internal(format!("export task failed: {e}")))?
    }

    /// Writes the container's changes as a layer tar (whiteouts for
    /// deletions) to `out`.
    pub async fn write_layer<W: Write + Send + 'static>(&self, name: &str, out: W) -> Result<W, EngineError> {
        let changes = self.changes(name).await?;
        let c = self.get(name)?;
        // With overlay every changed file is whole in the upper directory
        // (no metacopy), so no mount is needed; unmounting an overlay
        // would also sync the host filesystem that holds the upper dir.
        let key = c.record().snapshot_key.clone();
        let mounts = self.snapshotter.mounts(&key).await?;
        let kernel_metacopy = std::fs::read_to_string("/sys/module/overlay/parameters/metacopy").is_ok_and(|v| v.trim() == "Y");
        let full_copies = mounts.iter().all(|m| {
            !m.options.iter().any(|o| o == "metacopy=on") && (!kernel_metacopy || m.options.iter().any(|o| o == "metacopy=off"))
        });
        let root = match overlay_dirs(&mounts) {
            Some((upper, _)) if full_copies => RootMount::Live(upper),
            _ => self.mount_root(&c).await?,
        };
        tokio::task::spawn_blocking(move || -> Result<W, EngineError> {
            let mut builder = tar::Builder::new(out);
            builder.follow_symlinks(false);
            builder.mode(tar::HeaderMode::Complete);
            let io = |e| EngineError::io("write the layer", e);
            for change in &changes {
                let rel = Path::new(change.path.trim_start_matches('/'));
                match change.kind {
                    ChangeKind::Deleted => {
                        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        let whiteout = rel.with_file_name(format!(".wh.{name}"));
                        let mut header = tar::Header::new_gnu();
                        header.set_size(0);
                        header.set_mode(0o644);
                        header.set_entry_type(tar::EntryType::Regular);
                        builder.append_data(&mut header, whiteout, std::io::empty()).map_err(io)?;
                    }
                    _ => {
                        let full = root.path().join(rel);
                        let meta = std::fs::symlink_metadata(&full).map_err(io)?;
                        if meta.is_dir() {
                            let mut header = tar::Header::new_gnu();
                            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                            builder.append_data(&mut header, rel, std::io::empty()).map_err(io)?;
                        } else {
                            builder.append_path_with_name(&full, rel).map_err(io)?;
                        }
                    }
                }
            }
            let out = builder.into_inner().map_err(io)?;
            drop(root);
            Ok(out)
        })
        .await
        .map_err(|e| EngineError::internal(format!("layer task failed: {e}")))?
    }
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf, EngineError> {
    let dir = parent.join(format!("empty-{}", super::store::new_id()?.get(..12).unwrap_or("0")));
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_changes_kinds() {
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        for d in [old.path(), new.path()] {
            std::fs::create_dir(d.join("etc")).unwrap();
            std::fs::create_dir(d.join("gone")).unwrap();
            std::fs::write(d.join("gone/f"), "x").unwrap();
            std::fs::write(d.join("etc/keep"), "same").unwrap();
        }
        let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for d in [old.path(), new.path()] {
            for p in ["etc/keep", "etc", "gone/f", "gone"] {
                std::fs::File::options().read(true).open(d.join(p)).unwrap().set_modified(when).unwrap();
            }
        }
        std::fs::remove_dir_all(new.path().join("gone")).unwrap();
        std::fs::write(new.path().join("added"), "new").unwrap();
        let changes = tree_changes(old.path(), new.path()).unwrap();
        assert_eq!(
            changes,
            vec![
                Change { path: "/added".into(), kind: ChangeKind::Added },
                Change { path: "/gone".into(), kind: ChangeKind::Deleted },
            ]
        );
    }

    #[test]
    fn etc_mount_points_are_not_changes() {
        let c = |path: &str, kind| Change { path: path.into(), kind };
        let only_mounts = vec![
            c("/etc", ChangeKind::Modified),
            c("/etc/hostname", ChangeKind::Added),
            c("/etc/hosts", ChangeKind::Added),
            c("/etc/resolv.conf", ChangeKind::Added),
            c("/proc", ChangeKind::Added),
        ];
        assert_eq!(without_runtime_paths(only_mounts.clone()), vec![]);
        let mut with_file = only_mounts;
        with_file.push(c("/etc/newf", ChangeKind::Added));
        assert_eq!(
            without_runtime_paths(with_file),
            vec![c("/etc", ChangeKind::Modified), c("/etc/newf", ChangeKind::Added)]
        );
    }

    #[test]
    fn overlay_upper_kinds() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        std::fs::create_dir(lower.path().join("tmp")).unwrap();
        std::fs::create_dir(upper.path().join("tmp")).unwrap();
        std::fs::write(upper.path().join("tmp/new"), "x").unwrap();
        let changes = overlay_changes(upper.path(), &[lower.path().to_path_buf()]).unwrap();
        assert_eq!(
            changes,
            vec![
                Change { path: "/tmp".into(), kind: ChangeKind::Modified },
                Change { path: "/tmp/new".into(), kind: ChangeKind::Added },
            ]
        );
    }
}
