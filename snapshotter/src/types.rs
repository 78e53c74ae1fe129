//! Domain types of the snapshotter: no transport type appears here.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Snapshot labels: arbitrary key/value data, at most
/// [`MAX_LABEL_BYTES`] bytes per key plus value.
pub type Labels = BTreeMap<String, String>;

/// The most bytes one label key plus its value may take (containerd's limit).
pub const MAX_LABEL_BYTES: usize = 4096;

/// The kind of a snapshot. An `Active` snapshot never becomes `Committed` in
/// place: [`crate::Snapshotter::commit`] creates a new committed name and
/// removes the active key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only snapshot of a committed parent; cannot be committed.
    View,
    /// A writable snapshot, identified by its key.
    Active,
    /// An immutable snapshot, identified by its name; can be a parent.
    Committed,
}

impl Kind {
    /// The lowercase name used by List filters (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "view" => Ok(Kind::View),
            "active" => Ok(Kind::Active),
            "committed" => Ok(Kind::Committed),
            _ => Err(Error::invalid_argument(format!("unknown snapshot kind {s:?}"))),
        }
    }
}

/// What is known about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key (active, view) or name (committed).
    pub name: String,
    /// The committed parent's name; empty when there is none.
    pub parent: String,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    pub labels: Labels,
}

/// Disk usage of a snapshot, excluding its parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of disk space used.
    pub size: i64,
    /// Number of inodes used.
    pub inodes: i64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.size += other.size;
        self.inodes += other.inodes;
    }
}

/// A mount in the shape of mount(2). Drivers only describe mounts; whoever
/// consumes the snapshot performs them.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type: `bind`, `overlay`, `ext4`, ...
    #[serde(rename = "type")]
    pub fstype: String,
    /// What to mount: a directory, a device, or `overlay`.
    pub source: String,
    /// Sub-path of the rootfs; always empty for compatibility with containerd 1.6.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

impl Mount {
    /// Whether the options make this mount read-only.
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// What a driver can do, declared as data so that the conformance suite and
/// callers never branch on a driver's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A directory that lives in a lower layer can be renamed in a child
    /// (overlay without `redirect_dir` answers EXDEV instead).
    pub rename_lower_dir: bool,
    /// Mounts are block devices holding a filesystem (blockcow), rather than
    /// directories or overlay stacks.
    pub block_device: bool,
    /// Writes into a view fail (views are read-only).
    pub readonly_views: bool,
}

/// Validates one label pair against [`MAX_LABEL_BYTES`].
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::invalid_argument(format!(
                "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_BYTES} bytes), key: {:.32}",
                k.len() + v.len(),
                k
            )));
        }
    }
    Ok(())
}
