//! Command-line arguments and logging setup.

use std::path::PathBuf;

use clap::Parser;

/// The daemon's default state directory.
pub const DEFAULT_ROOT: &str = "/var/lib/strata/snapshotter";
/// The daemon's default socket address.
pub const DEFAULT_ADDRESS: &str = "unix:///run/strata/snapshotd.sock";

/// Serve containerd's snapshots API (containerd.services.snapshots.v1) on a
/// unix socket, backed by the Strata drivers.
///
/// Point containerd at it with one proxy plugin per driver, named after the
/// driver (containerd sends the plugin's name in each request's
/// `snapshotter` field, which picks the driver):
///
///   [proxy_plugins.overlay]
///     type = "snapshot"
///     address = "/run/strata/snapshotd.sock"
///
/// When a single driver is loaded (one --driver), every name maps to it.
#[derive(Debug, Parser)]
#[command(name = "strata-snapshotd", version, verbatim_doc_comment)]
pub struct Args {
    /// State directory; each driver keeps its data in ROOT/<driver>/.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,

    /// Socket to listen on: unix:///path.sock or a bare path. A stale socket
    /// file is replaced; missing parent directories are created.
    #[arg(long, value_name = "ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: String,

    /// Driver to serve (repeatable). Default: every driver this host supports.
    #[arg(long = "driver", value_name = "NAME")]
    pub drivers: Vec<String>,

    /// Driver option KEY=VALUE (repeatable). An option named after a driver
    /// (`blockcow.basesize=1G`, or Docker's `dm.basesize=1G`) applies to that
    /// driver only; any other option goes to every driver.
    #[arg(long = "storage-opt", value_name = "KEY=VALUE")]
    pub storage_opts: Vec<String>,

    /// Log every RPC (method, snapshotter, key, code, duration).
    #[arg(long)]
    pub debug: bool,

    /// Threads for the gRPC protocol work. Filesystem work runs on a
    /// separate pool of blocking threads whatever this is; one protocol
    /// thread saves the hand-offs between threads that each request would
    /// otherwise pay.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub async_threads: u16,
}

/// Installs the log subscriber: `info` by default, `debug` with `--debug`;
/// `RUST_LOG` overrides both.
pub fn init_tracing(debug: bool) {
    let default = if debug { "debug,h2=info,hyper=info,tower=info" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
