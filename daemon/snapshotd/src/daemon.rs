//! Daemon life cycle: open the drivers, bind the socket, serve until a
//! signal, close the drivers.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use strata_drivers::registry;
use strata_snapshotter::grpc::client::socket_path;
use strata_snapshotter::grpc::server;
use strata_snapshotter::Snapshotter;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::Args;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<()> {
    let names = driver_names(&args)?;
    let options = split_options(&args.storage_opts, &names)?;
    let socket = socket_path(&args.address).with_context(|| format!("address {:?}", args.address))?;
    // Before touching any driver: a live daemon on this socket owns the root.
    clear_socket(&socket).await?;
    fs::create_dir_all(&args.root).with_context(|| format!("create root {}", args.root.display()))?;

    let mut drivers: BTreeMap<String, Arc<dyn Snapshotter>> = BTreeMap::new();
    for name in &names {
        let dir = args.root.join(name);
        let opts = options.get(name).cloned().unwrap_or_default();
        let driver_name = name.clone();
        let driver = tokio::task::spawn_blocking(move || registry::open(&driver_name, &dir, &opts))
            .await
            .context("driver start-up task failed")?
            .with_context(|| format!("open driver {name} in {}", args.root.join(name).display()))?;
        tracing::info!(driver = %name, root = %args.root.join(name).display(), "driver ready");
        drivers.insert(name.clone(), driver);
    }
    let opened: Vec<Arc<dyn Snapshotter>> = drivers.values().cloned().collect();

    let listener = bind(&socket)?;
    tracing::info!(address = %socket.display(), drivers = ?names, "listening on {}", socket.display());

    let served = server::serve(drivers, listener, shutdown_signal()?).await;

    for (name, driver) in names.iter().zip(&opened) {
        if let Err(err) = driver.close().await {
            tracing::warn!(driver = %name, error = %err, "closing driver failed");
        }
    }
    if let Err(err) = fs::remove_file(&socket) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %socket.display(), error = %err, "removing socket failed");
        }
    }
    served.context("serving snapshots")?;
    tracing::info!("stopped");
    Ok(())
}

/// The drivers to load: the ones named on the command line, or else every
/// registered driver this host supports.
fn driver_names(args: &Args) -> Result<Vec<String>> {
    if args.drivers.is_empty() {
        let names: Vec<String> = registry::DRIVERS
            .iter()
            .filter(|name| registry::is_supported(name, &args.root.join(name)))
            .map(|name| name.to_string())
            .collect();
        if names.is_empty() {
            bail!("none of the drivers {:?} is supported on this host", registry::DRIVERS);
        }
        return Ok(names);
    }
    let mut names: Vec<String> = Vec::new();
    for name in &args.drivers {
        if !registry::DRIVERS.contains(&name.as_str()) {
            bail!("unknown driver {name:?}; known drivers: {}", registry::DRIVERS.join(", "));
        }
        if names.contains(name) {
            bail!("driver {name:?} given twice");
        }
        names.push(name.clone());
    }
    Ok(names)
}

/// Splits `--storage-opt` values into per-driver option maps. An option that
/// names a driver (`blockcow.basesize`, or Docker's `dm.basesize`, see
/// [`registry::option_owner`]) goes to that driver only, with its key
/// unchanged, and is an error when that driver is not served; any other
/// option goes to every driver.
pub fn split_options(raw: &[String], drivers: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> =
        drivers.iter().map(|d| (d.clone(), BTreeMap::new())).collect();
    for opt in raw {
        let Some((key, value)) = opt.split_once('=') else {
            bail!("storage option {opt:?} is not KEY=VALUE");
        };
        if key.is_empty() {
            bail!("storage option {opt:?} has an empty key");
        }
        match registry::option_owner(key) {
            Some(driver) => match out.get_mut(driver) {
                Some(map) => {
                    map.insert(key.to_string(), value.to_string());
                }
                None => bail!("storage option {opt:?} is for driver {driver:?}, which is not served (add --driver {driver})"),
            },
            None => {
                for map in out.values_mut() {
                    map.insert(key.to_string(), value.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Makes way for the socket: creates its directory, removes a stale socket
/// file, and refuses to steal a live socket or replace anything else.
async fn clear_socket(socket: &Path) -> Result<()> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("create socket directory {}", dir.display()))?;
    }
    match fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(socket).await.is_ok() {
                bail!("another daemon is already listening on {}", socket.display());
            }
            tracing::info!(path = %socket.display(), "removing stale socket");
            fs::remove_file(socket).with_context(|| format!("remove stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", socket.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("inspect {}", socket.display())),
    }
    Ok(())
}

/// Binds the socket (cleared by [`clear_socket`]) with mode 0660.
fn bind(socket: &Path) -> Result<UnixListener> {
    let listener = UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", socket.display()))?;
    Ok(listener)
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}


#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn storage_options_split_by_driver_prefix() {
        let drivers = strings(&["overlay", "vfs", "blockcow"]);
        let out = split_options(
            &strings(&["overlay.index=on", "sync=false", "a.b=c", "blockcow.basesize=1G", "dm.fs=xfs"]),
            &drivers,
        )
        .expect("valid options");
        assert_eq!(out["overlay"].get("overlay.index").map(String::as_str), Some("on"));
        assert_eq!(out["overlay"].get("sync").map(String::as_str), Some("false"));
        assert_eq!(out["vfs"].get("sync").map(String::as_str), Some("false"));
        assert!(!out["vfs"].contains_key("overlay.index"));
        assert_eq!(out["vfs"].get("a.b").map(String::as_str), Some("c"));
        assert_eq!(out["blockcow"].get("blockcow.basesize").map(String::as_str), Some("1G"));
        assert_eq!(out["blockcow"].get("dm.fs").map(String::as_str), Some("xfs"));
        assert!(!out["overlay"].contains_key("dm.fs"));
    }

    #[test]
    fn malformed_storage_options_are_rejected() {
        let drivers = strings(&["vfs"]);
        assert!(split_options(&strings(&["novalue"]), &drivers).is_err());
        assert!(split_options(&strings(&["=x"]), &drivers).is_err());
        let err = split_options(&strings(&["dm.basesize=1G"]), &drivers).expect_err("blockcow is not served");
        assert!(err.to_string().contains("--driver blockcow"), "{err}");
    }
}
