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

    /// Driver to use on the daemon (the request's `snapshotter` field).
    #[arg(long, global = true, value_name = "NAME", default_value = "overlay")]
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
    /// Inspect or check a blockcow pool by reading its files directly.
    Pool(crate::pool::PoolArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots, optionally only those matching any FILTER
    /// (containerd syntax, e.g. `kind==committed` or `labels."a/b"==c`).
    #[command(visible_alias = "list")]
    Ls {
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },

    /// Show snapshots as a tree of parents and children.
    Tree,

    /// Show everything known about a snapshot.
    Info {
        /// Key or name of the snapshot.
        key: String,
    },

    /// Show disk usage of the given snapshots, or of every snapshot.
    Usage {
        /// Keys or names; none means every snapshot.
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
    },

    /// Create an active (writable) snapshot KEY on top of PARENT.
    Prepare(CreateArgs),

    /// Create a read-only view KEY of PARENT.
    View(CreateArgs),

    /// Commit the active snapshot KEY as NAME.
    Commit {
        /// Name of the new committed snapshot.
        name: String,
        /// Key of the active snapshot to commit.
        key: String,
        /// Label KEY=VALUE for the committed snapshot (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },

    /// Remove snapshots (children before parents).
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        /// Keys or names to remove, in order.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },

    /// Print the mount commands that mount snapshot KEY at TARGET
    /// (arguments in the order of `ctr snapshots mounts`).
    Mounts {
        /// Where the commands mount it.
        target: PathBuf,
        /// Key of an active snapshot or a view.
        key: String,
    },

    /// Set labels on a snapshot: KEY=VALUE sets, KEY= deletes. Prints the
    /// snapshot's labels afterwards.
    Label {
        /// Key or name of the snapshot.
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
    /// Key of the new snapshot.
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
