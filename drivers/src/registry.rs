//! The one table that wires driver names to their constructors.
//!
//! Drivers are listed here explicitly; nothing registers itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strata_snapshotter::{Error, Result, Snapshotter};

use crate::{blockcow, overlay, vfs};

/// Names of the drivers this build provides.
pub const DRIVERS: &[&str] = &["overlay", "vfs", "blockcow"];

/// Opens the driver `name` in `root`, its own directory (for example
/// `<daemon root>/overlay`). An unknown name or option is
/// `InvalidArgument`. Synchronous: from async code, call it with
/// `spawn_blocking`.
pub fn open(name: &str, root: &Path, options: &BTreeMap<String, String>) -> Result<Arc<dyn Snapshotter>> {
    match name {
        "overlay" => {
            reject_options(name, options)?;
            Ok(Arc::new(overlay::Overlay::open(root)?))
        }
        "vfs" => {
            reject_options(name, options)?;
            Ok(Arc::new(vfs::Vfs::open(root)?))
        }
        "blockcow" => Ok(Arc::new(blockcow::BlockCowSnapshotter::open(root, options)?)),
        _ => Err(Error::invalid_argument(format!(
            "unknown snapshotter driver {name:?} (available: {})",
            DRIVERS.join(", ")
        ))),
    }
}

/// Whether driver `name` can work in `root` on this machine: overlay needs
/// the kernel's overlayfs and a backing filesystem it accepts (a probe
/// mount is made under `root`); vfs works anywhere. Unknown names are not
/// supported.
pub fn is_supported(name: &str, root: &Path) -> bool {
    match name {
        "overlay" => overlay::is_supported(root),
        "vfs" => true,
        "blockcow" => blockcow::driver::is_supported(root),
        _ => false,
    }
}

/// The driver a storage option belongs to: `DRIVER.KEY` names its driver
/// (`blockcow.basesize`), and Docker's devicemapper options (`dm.basesize`)
/// belong to blockcow. `None` for an option of no particular driver.
pub fn option_owner(key: &str) -> Option<&'static str> {
    let prefix = key.split_once('.')?.0;
    if prefix == "dm" {
        return Some("blockcow");
    }
    DRIVERS.iter().copied().find(|d| *d == prefix)
}

fn reject_options(name: &str, options: &BTreeMap<String, String>) -> Result<()> {
    match options.keys().next() {
        Some(key) => Err(Error::invalid_argument(format!("driver {name:?} has no option {key:?}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_their_driver() {
        assert_eq!(option_owner("blockcow.basesize"), Some("blockcow"));
        assert_eq!(option_owner("dm.loopdatasize"), Some("blockcow"));
        assert_eq!(option_owner("overlay.index"), Some("overlay"));
        assert_eq!(option_owner("size"), None);
        assert_eq!(option_owner("other.key"), None);
    }
    use strata_snapshotter::ErrorKind;

    #[test]
    fn opens_every_listed_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in DRIVERS {
            assert!(is_supported(name, &dir.path().join(name)), "{name} must be supported here (overlay needs the overlay module and root)");
            let d = open(name, &dir.path().join(name), &BTreeMap::new()).expect(name);
            assert!(d.capabilities().readonly_views);
            assert!(dir.path().join(name).join("metadata.db").is_file());
        }
    }

    #[test]
    fn unknown_names_and_options_are_invalid_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(err) = open("zfs", dir.path(), &BTreeMap::new()) else { panic!("unknown driver opened") };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("zfs"));
        assert!(!is_supported("zfs", dir.path()));
        let opts = BTreeMap::from([("bogus".to_string(), "1".to_string())]);
        let Err(err) = open("vfs", &dir.path().join("vfs"), &opts) else { panic!("bad option accepted") };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(!dir.path().join("vfs").exists(), "a refused open creates nothing");
    }
}
