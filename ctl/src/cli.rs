//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The daemon's default socket, used when neither `--address` nor
/// `STRATA_SNAPSHOTD_ADDRESS` is set.
pub const DEFAULT_ADDRESS: &str = "unix:///run/strata/snapshotd.sock";

/// Inspect and drive strata-snapshotd.
#[derive(Debug, Parser)]
#[command(name = "stratactl", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Daemon socket: unix:///path.sock or a bare path.
    #[arg(long, global = true, env = "STRATA_SNAPSHOTD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: String,

    /// Driver to use on the daemon.
    #[arg(long, global = true, default_value = "overlay")]
    pub snapshotter: String,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage snapshots (like `ctr snapshots`).
    #[command(subcommand, visible_alias = "snapshot")]
    Snapshots(SnapshotsCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots, optionally only those matching any FILTER
    /// (containerd syntax, e.g. `kind==committed` or `labels."a/b"==c`).
    #[command(visible_alias = "list")]
    Ls { filters: Vec<String> },

    /// Show snapshots as a tree of parents and children.
    Tree,

    /// Show everything known about a snapshot.
    Info { key: String },

    /// Show disk usage of the given snapshots, or of every snapshot.
    Usage { keys: Vec<String> },

    /// Create an active (writable) snapshot KEY on top of PARENT.
    Prepare(CreateArgs),

    /// Create a read-only view KEY of PARENT.
    View(CreateArgs),

    /// Commit the active snapshot KEY as NAME.
    Commit {
        name: String,
        key: String,
        /// Label KEY=VALUE for the committed snapshot (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },

    /// Remove snapshots (children before parents).
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },

    /// Print the mount commands that mount snapshot KEY at TARGET.
    Mounts { key: String, target: PathBuf },

    /// Set labels on a snapshot: KEY=VALUE sets, KEY= deletes. Prints the
    /// snapshot's labels afterwards.
    Label {
        key: String,
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },

    /// Ask the driver to release space no snapshot refers to.
    Cleanup,
}

/// Arguments of `prepare` and `view`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    pub key: String,
    /// The committed parent; empty or absent for none.
    #[arg(default_value = "")]
    pub parent: String,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Print the mounts (as mount commands when --target is given).
    #[arg(long)]
    pub mounts: bool,
    /// Where the printed mount commands mount the snapshot.
    #[arg(long, value_name = "DIR", requires = "mounts")]
    pub target: Option<PathBuf>,
}
