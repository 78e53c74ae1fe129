//! Daemon configuration: flags, `daemon.json`, and their merge.

/// Default `--data-root`.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/strata/engine";
/// Default `--config-file`.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/strata/daemon.json";
/// Default `-H`.
pub const DEFAULT_HOST: &str = "unix:///run/stratad.sock";
