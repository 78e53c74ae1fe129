//! File-tree helpers of the conformance suite: [`Applier`]s that change a
//! tree, a comparison of two trees, and a listing for failure reports.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One change to a file tree. Paths are relative to the tree's root (a
/// leading `/` is allowed and means the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// Creates or overwrites a regular file and sets its mode.
    CreateFile { path: String, content: Vec<u8>, mode: u32 },
    /// Creates a directory (its parent must exist) and sets its mode.
    CreateDir { path: String, mode: u32 },
    /// Removes a file or a whole directory tree; a missing path is fine.
    RemoveAll { path: String },
    /// Changes the owner of a path (not following symlinks).
    Chown { path: String, uid: u32, gid: u32 },
    /// Changes the mode of a path.
    Chmod { path: String, mode: u32 },
    /// Renames `from` to `to`.
    Rename { from: String, to: String },
    /// Makes `new` a hard link to `existing`.
    Link { existing: String, new: String },
    /// Makes `link` a symlink pointing at `target` (stored as given).
    Symlink { target: String, link: String },
}

/// Shorthand constructors, so case tables read like the changes they make.
pub fn create_file(path: &str, content: &[u8], mode: u32) -> FsOp {
    FsOp::CreateFile { path: path.into(), content: content.to_vec(), mode }
}
pub fn create_dir(path: &str, mode: u32) -> FsOp {
    FsOp::CreateDir { path: path.into(), mode }
}
pub fn remove_all(path: &str) -> FsOp {
    FsOp::RemoveAll { path: path.into() }
}
pub fn chown(path: &str, uid: u32, gid: u32) -> FsOp {
    FsOp::Chown { path: path.into(), uid, gid }
}
pub fn chmod(path: &str, mode: u32) -> FsOp {
    FsOp::Chmod { path: path.into(), mode }
}
pub fn rename(from: &str, to: &str) -> FsOp {
    FsOp::Rename { from: from.into(), to: to.into() }
}
pub fn link(existing: &str, new: &str) -> FsOp {
    FsOp::Link { existing: existing.into(), new: new.into() }
}
pub fn symlink(target: &str, link: &str) -> FsOp {
    FsOp::Symlink { target: target.into(), link: link.into() }
}

/// An ordered list of [`FsOp`]s applied to a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applier {
    ops: Vec<FsOp>,
}

impl From<Vec<FsOp>> for Applier {
    fn from(ops: Vec<FsOp>) -> Self {
        Applier { ops }
    }
}

fn resolve(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn op_error(what: &str, path: &Path, err: std::io::Error) -> String {
    format!("{what} {}: {err}", path.display())
}

impl Applier {
    /// The operations, in order.
    pub fn ops(&self) -> &[FsOp] {
        &self.ops
    }

    /// This applier followed by `next`.
    pub fn then(&self, next: &Applier) -> Applier {
        let mut ops = self.ops.clone();
        ops.extend(next.ops.iter().cloned());
        Applier { ops }
    }

    /// Applies every operation to the tree at `root`, stopping at the first
    /// failure.
    pub fn apply(&self, root: &Path) -> Result<(), String> {
        for op in &self.ops {
            apply_one(root, op)?;
        }
        Ok(())
    }
}

fn apply_one(root: &Path, op: &FsOp) -> Result<(), String> {
    match op {
        FsOp::CreateFile { path, content, mode } => {
            let p = resolve(root, path);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(*mode)
                .open(&p)
                .map_err(|e| op_error("create file", &p, e))?;
            std::io::Write::write_all(&mut file, content).map_err(|e| op_error("write", &p, e))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(|e| op_error("chmod", &p, e))
        }
        FsOp::CreateDir { path, mode } => {
            let p = resolve(root, path);
            fs::create_dir(&p).map_err(|e| op_error("create dir", &p, e))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(|e| op_error("chmod", &p, e))
        }
        FsOp::RemoveAll { path } => {
            let p = resolve(root, path);
            let result = match fs::symlink_metadata(&p) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            result.map_err(|e| op_error("remove", &p, e))
        }
        FsOp::Chown { path, uid, gid } => {
            let p = resolve(root, path);
            std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)).map_err(|e| op_error("chown", &p, e))
        }
        FsOp::Chmod { path, mode } => {
            let p = resolve(root, path);
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(|e| op_error("chmod", &p, e))
        }
        FsOp::Rename { from, to } => {
            let (f, t) = (resolve(root, from), resolve(root, to));
            fs::rename(&f, &t).map_err(|e| format!("rename {} to {}: {e}", f.display(), t.display()))
        }
        FsOp::Link { existing, new } => {
            let (e_path, n_path) = (resolve(root, existing), resolve(root, new));
            fs::hard_link(&e_path, &n_path)
                .map_err(|e| format!("link {} to {}: {e}", n_path.display(), e_path.display()))
        }
        FsOp::Symlink { target, link } => {
            let l = resolve(root, link);
            std::os::unix::fs::symlink(target, &l).map_err(|e| op_error("symlink", &l, e))
        }
    }
}

/// What a comparison looks at for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    /// Devices, fifos and sockets: the file type bits and the device number.
    Special { file_type: u32, rdev: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    content: Content,
    /// Permission and set-id/sticky bits.
    mode: u32,
    uid: u32,
    gid: u32,
    /// The first path (in sorted order) of the tree that shares this
    /// entry's inode: equal for all names of one hard-linked file.
    link_leader: PathBuf,
}

fn describe(content: &Content) -> String {
    match content {
        Content::Dir => "directory".into(),
        Content::File(data) => format!("file of {} bytes", data.len()),
        Content::Symlink(target) => format!("symlink to {}", target.display()),
        Content::Special { file_type, rdev } => format!("special file (type {file_type:o}, rdev {rdev})"),
    }
}

/// Reads every entry below `root` (not `root` itself), keyed by relative
/// path. Names in `ignore` at the top level are left out.
fn scan(root: &Path, ignore: &[&str]) -> Result<BTreeMap<PathBuf, Entry>, String> {
    let mut entries = BTreeMap::new();
    let mut leaders: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && ignore.iter().any(|i| e.file_name() == *i)));
    for item in walker {
        let item = item.map_err(|e| format!("walk {}: {e}", root.display()))?;
        let path = item.path();
        let rel = path.strip_prefix(root).map_err(|e| e.to_string())?.to_path_buf();
        let meta = fs::symlink_metadata(path).map_err(|e| op_error("stat", path, e))?;
        let file_type = meta.file_type();
        let content = if file_type.is_dir() {
            Content::Dir
        } else if file_type.is_file() {
            Content::File(fs::read(path).map_err(|e| op_error("read", path, e))?)
        } else if file_type.is_symlink() {
            Content::Symlink(fs::read_link(path).map_err(|e| op_error("readlink", path, e))?)
        } else {
            Content::Special { file_type: meta.mode() & 0o170000, rdev: meta.rdev() }
        };
        let link_leader = if file_type.is_dir() {
            rel.clone()
        } else {
            leaders.entry((meta.dev(), meta.ino())).or_insert_with(|| rel.clone()).clone()
        };
        entries.insert(
            rel,
            Entry { content, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), link_leader },
        );
    }
    Ok(entries)
}

/// At most this many differences are listed in one report.
const MAX_DIFFERENCES: usize = 30;

/// Compares the tree at `actual` with the one at `expected`: the same
/// paths, each with the same type, mode, owner, content, symlink target
/// and hard-link grouping. Timestamps are not compared. Top-level names in
/// `ignore` are left out on both sides.
pub fn check_directory_equal(expected: &Path, actual: &Path, ignore: &[&str]) -> Result<(), String> {
    let want = scan(expected, ignore)?;
    let got = scan(actual, ignore)?;
    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(format!("missing /{} ({})", path.display(), describe(&w.content))),
            Some(g) => {
                if g.content != w.content {
                    diffs.push(format!(
                        "/{}: expected {}, got {}",
                        path.display(),
                        describe(&w.content),
                        describe(&g.content)
                    ));
                    if let (Content::File(a), Content::File(b)) = (&w.content, &g.content) {
                        if a.len() == b.len() {
                            diffs.push(format!("/{}: same size, different bytes", path.display()));
                        }
                    }
                }
                if g.mode != w.mode {
                    diffs.push(format!("/{}: mode expected {:04o}, got {:04o}", path.display(), w.mode, g.mode));
                }
                if (g.uid, g.gid) != (w.uid, w.gid) {
                    diffs.push(format!(
                        "/{}: owner expected {}:{}, got {}:{}",
                        path.display(),
                        w.uid,
                        w.gid,
                        g.uid,
                        g.gid
                    ));
                }
                if g.link_leader != w.link_leader {
                    diffs.push(format!(
                        "/{}: hard-linked with /{} expected, got /{}",
                        path.display(),
                        w.link_leader.display(),
                        g.link_leader.display()
                    ));
                }
            }
        }
    }
    for (path, g) in &got {
        if !want.contains_key(path) {
            diffs.push(format!("unexpected /{} ({})", path.display(), describe(&g.content)));
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let total = diffs.len();
    diffs.truncate(MAX_DIFFERENCES);
    let mut report = format!(
        "{} differs from {} ({total} differences):",
        actual.display(),
        expected.display()
    );
    for d in diffs {
        let _ = write!(report, "\n  {d}");
    }
    Err(report)
}

/// A listing of the tree at `root`, one line per entry (mode, owner, size,
/// path, symlink target), for failure reports.
pub fn dump_tree(root: &Path) -> String {
    let mut out = String::new();
    for item in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        match item {
            Ok(entry) => {
                let path = entry.path();
                match fs::symlink_metadata(path) {
                    Ok(meta) => {
                        let target = if meta.file_type().is_symlink() {
                            fs::read_link(path).map(|t| format!(" -> {}", t.display())).unwrap_or_default()
                        } else {
                            String::new()
                        };
                        let _ = writeln!(
                            out,
                            "{:06o} {:>5}:{:<5} {:>9} {}{}",
                            meta.mode(),
                            meta.uid(),
                            meta.gid(),
                            meta.len(),
                            path.display(),
                            target
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "? {}: {e}", path.display());
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "? {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(applier: &Applier) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        applier.apply(dir.path()).unwrap();
        dir
    }

    fn base() -> Applier {
        Applier::from(vec![
            create_dir("/a", 0o755),
            create_file("/a/f", b"hello", 0o644),
            symlink("f", "/a/l"),
            link("/a/f", "/a/h"),
        ])
    }

    #[test]
    fn equal_trees_compare_equal() {
        let (x, y) = (tree(&base()), tree(&base()));
        check_directory_equal(x.path(), y.path(), &[]).unwrap();
    }

    #[test]
    fn content_mode_and_links_are_compared() {
        let x = tree(&base());
        let cases = [
            Applier::from(vec![create_file("/a/f", b"world", 0o644)]),
            Applier::from(vec![chmod("/a/f", 0o600)]),
            Applier::from(vec![remove_all("/a/l"), symlink("h", "/a/l")]),
            Applier::from(vec![remove_all("/a/h"), create_file("/a/h", b"hello", 0o644)]),
            Applier::from(vec![create_dir("/extra", 0o700)]),
            Applier::from(vec![remove_all("/a")]),
        ];
        for change in cases {
            let y = tree(&base().then(&change));
            let err = check_directory_equal(x.path(), y.path(), &[]).unwrap_err();
            assert!(err.contains("differ"), "{change:?}: {err}");
        }
    }

    #[test]
    fn ignored_top_level_names() {
        let x = tree(&base());
        let y = tree(&base().then(&Applier::from(vec![create_dir("/lost+found", 0o700)])));
        check_directory_equal(x.path(), y.path(), &["lost+found"]).unwrap();
        assert!(check_directory_equal(x.path(), y.path(), &[]).is_err());
    }

    #[test]
    fn rename_and_remove_missing() {
        let y = tree(&base().then(&Applier::from(vec![rename("/a/f", "/a/g"), remove_all("/nothing")])));
        assert!(y.path().join("a/g").exists());
        assert!(!y.path().join("a/f").exists());
        let dump = dump_tree(y.path());
        assert!(dump.contains("a/l -> f"), "{dump}");
    }

    #[test]
    fn failing_op_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let err = Applier::from(vec![create_file("/missing/f", b"", 0o644)]).apply(dir.path()).unwrap_err();
        assert!(err.contains("missing/f"), "{err}");
    }
}
