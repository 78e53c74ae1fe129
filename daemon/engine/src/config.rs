//! Daemon configuration: command-line flags, `daemon.json`, and their merge.
//!
//! As with dockerd, a setting may come from a flag or from the configuration
//! file but never from both: [`load`] refuses a setting given both ways,
//! whatever the two values, and a file key that matches no option.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde_json::Value;

/// Default `--data-root`.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/strata/engine";
/// Default `--config-file`.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/strata/daemon.json";
/// Default `-H`.
pub const DEFAULT_HOST: &str = "unix:///run/stratad.sock";

/// A configuration problem found before the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file cannot be read or parsed.
    #[error("unable to configure stratad with file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// A flag or file value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// `stratad` command-line flags (the same names as dockerd's).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stratad",
    version,
    about = "Docker-compatible engine daemon built on the Strata snapshotter",
    long_about = None
)]
pub struct Flags {
    /// Daemon socket(s) to listen on: unix:///path.sock, tcp://IP:PORT, fd:// (repeatable)
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,

    /// Use TLS on TCP listeners; implied by --tlsverify
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub tls: Option<bool>,

    /// Use TLS and require client certificates signed by --tlscacert
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub tlsverify: Option<bool>,

    /// Trust client certificates signed by this CA only
    #[arg(long, value_name = "PATH")]
    pub tlscacert: Option<PathBuf>,

    /// Path to the server's TLS certificate file
    #[arg(long, value_name = "PATH")]
    pub tlscert: Option<PathBuf>,

    /// Path to the server's TLS key file
    #[arg(long, value_name = "PATH")]
    pub tlskey: Option<PathBuf>,

    /// Root directory of persistent engine state
    #[arg(short = 'g', long = "data-root", visible_alias = "graph", value_name = "PATH")]
    pub data_root: Option<PathBuf>,

    /// Storage driver: overlay, vfs or blockcow (overlay2 and devicemapper are aliases)
    #[arg(short = 's', long = "storage-driver", value_name = "NAME")]
    pub storage_driver: Option<String>,

    /// Storage driver option key=value (repeatable)
    #[arg(long = "storage-opt", value_name = "KEY=VALUE")]
    pub storage_opts: Vec<String>,

    /// Registry reachable over plain HTTP or with an untrusted certificate (repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]|CIDR")]
    pub insecure_registries: Vec<String>,

    /// Default logging driver for containers
    #[arg(long = "log-driver", value_name = "NAME")]
    pub log_driver: Option<String>,

    /// Default option of the logging driver, key=value (repeatable; json-file: max-size, max-file)
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opts: Vec<String>,

    /// Debug mode: debug logs and one log line per request
    #[arg(short = 'D', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub debug: Option<bool>,

    /// Log level: trace, debug, info, warn, error
    #[arg(short = 'l', long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Daemon configuration file
    #[arg(long = "config-file", value_name = "PATH", default_value = DEFAULT_CONFIG_FILE)]
    pub config_file: PathBuf,

    /// Use a running strata-snapshotd (unix:///path.sock) instead of the embedded driver
    #[arg(long = "snapshotter-address", value_name = "ADDRESS")]
    pub snapshotter_address: Option<String>,

    /// Validate the configuration and exit
    #[arg(long)]
    pub validate: bool,
}

/// TLS settings of the TCP listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With `Some`, clients must present a certificate signed by this CA.
    pub verify_ca: Option<PathBuf>,
}

/// The merged daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub hosts: Vec<String>,
    pub tls: Option<TlsSettings>,
    pub data_root: PathBuf,
    pub storage_driver: Option<String>,
    pub storage_opts: BTreeMap<String, String>,
    pub insecure_registries: Vec<String>,
    pub log_driver: String,
    /// Default options of the log driver (`--log-opt`, `log-opts`).
    pub log_opts: BTreeMap<String, String>,
    pub debug: bool,
    pub log_level: Option<String>,
    pub snapshotter_address: Option<String>,
    /// The configuration file actually read, if any.
    pub config_file: Option<PathBuf>,
    pub validate_only: bool,
}

/// One flag and the `daemon.json` key that holds the same setting.
struct Setting {
    /// The clap argument id.
    arg: &'static str,
    /// The key in `daemon.json`.
    key: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting { arg: "hosts", key: "hosts" },
    Setting { arg: "tls", key: "tls" },
    Setting { arg: "tlsverify", key: "tlsverify" },
    Setting { arg: "tlscacert", key: "tlscacert" },
    Setting { arg: "tlscert", key: "tlscert" },
    Setting { arg: "tlskey", key: "tlskey" },
    Setting { arg: "data_root", key: "data-root" },
    Setting { arg: "storage_driver", key: "storage-driver" },
    Setting { arg: "storage_opts", key: "storage-opts" },
    Setting { arg: "insecure_registries", key: "insecure-registries" },
    Setting { arg: "log_driver", key: "log-driver" },
    Setting { arg: "log_opts", key: "log-opts" },
    Setting { arg: "debug", key: "debug" },
    Setting { arg: "log_level", key: "log-level" },
    Setting { arg: "snapshotter_address", key: "snapshotter-address" },
];

/// Parses the process arguments and the configuration file into one
/// configuration. `--help` and `--version` print and exit, as usual.
pub fn load_from_env() -> Result<DaemonConfig, ConfigError> {
    let matches = Flags::command().get_matches();
    from_matches(&matches)
}

/// Parses the given arguments (the first is the program name) and the
/// configuration file they name.
pub fn load<I, T>(args: I) -> Result<DaemonConfig, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches =
        Flags::command().try_get_matches_from(args).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    from_matches(&matches)
}

fn from_matches(matches: &ArgMatches) -> Result<DaemonConfig, ConfigError> {
    let flags = Flags::from_arg_matches(matches).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let explicit_file = matches.value_source("config_file") == Some(ValueSource::CommandLine);
    let file = read_config_file(&flags.config_file, explicit_file)?;
    merge(flags, matches, file)
}

/// Reads `daemon.json`; a missing default file is no file, a missing
/// explicitly named one is an error.
fn read_config_file(path: &Path, explicit: bool) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(ConfigError::File { path: path.to_path_buf(), message: e.to_string() });
        }
    };
    let file = FileConfig::parse(&text)
        .map_err(|message| ConfigError::File { path: path.to_path_buf(), message })?;
    Ok(Some((path.to_path_buf(), file)))
}

/// The parsed keys of a `daemon.json` file, kept as JSON values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    values: BTreeMap<String, Value>,
}

impl FileConfig {
    /// Parses the file text. Every key must match an option.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
        };
        let Value::Object(map) = value else {
            return Err("the configuration must be a JSON object".to_string());
        };
        let unknown: Vec<&str> = map
            .keys()
            .filter(|k| !SETTINGS.iter().any(|s| s.key == k.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "the following directives don't match any configuration option: {}",
                unknown.join(", ")
            ));
        }
        Ok(Self { values: map.into_iter().collect() })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{key}: expected a string, found {other}")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("{key}: expected true or false, found {other}")),
        }
    }

    /// An object of string values (`"log-opts": {"max-size": "10m"}`).
    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(items)) => items
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(format!("{key}: {k}: expected a string, found {other}")),
                })
                .collect(),
            Some(other) => Err(format!("{key}: expected an object of strings, found {other}")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!("{key}: expected strings, found {other}")),
                })
                .collect(),
            Some(other) => Err(format!("{key}: expected a list of strings, found {other}")),
        }
    }
}

/// Renders a value the way dockerd's conflict message does (Go's `%v`).
fn go_format(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            format!("[{}]", items.iter().map(go_format).collect::<Vec<_>>().join(" "))
        }
        Value::Object(items) => {
            format!("map[{}]", items.iter().map(|(k, v)| format!("{k}:{}", go_format(v))).collect::<Vec<_>>().join(" "))
        }
        other => other.to_string(),
    }
}

fn flag_value_text(flags: &Flags, arg: &str) -> String {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let list = |v: &[String]| format!("[{}]", v.join(" "));
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let boolean = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_default();
    match arg {
        "hosts" => list(&flags.hosts),
        "tls" => boolean(flags.tls),
        "tlsverify" => boolean(flags.tlsverify),
        "tlscacert" => path(&flags.tlscacert),
        "tlscert" => path(&flags.tlscert),
        "tlskey" => path(&flags.tlskey),
        "data_root" => path(&flags.data_root),
        "storage_driver" => opt(&flags.storage_driver),
        "storage_opts" => list(&flags.storage_opts),
        "insecure_registries" => list(&flags.insecure_registries),
        "log_driver" => opt(&flags.log_driver),
        "log_opts" => list(&flags.log_opts),
        "debug" => boolean(flags.debug),
        "log_level" => opt(&flags.log_level),
        "snapshotter_address" => opt(&flags.snapshotter_address),
        _ => String::new(),
    }
}

/// Merges flags and the file; see the module doc for the conflict rule.
fn merge(
    flags: Flags,
    matches: &ArgMatches,
    file: Option<(PathBuf, FileConfig)>,
) -> Result<DaemonConfig, ConfigError> {
    let (file_path, file) = match file {
        Some((path, file)) => (Some(path), file),
        None => (None, FileConfig::default()),
    };
    let file_error = |message: String| ConfigError::File {
        path: file_path.clone().unwrap_or_default(),
        message,
    };

    let conflicts: Vec<String> = SETTINGS
        .iter()
        .filter(|s| matches.value_source(s.arg) == Some(ValueSource::CommandLine))
        .filter_map(|s| {
            file.get(s.key).map(|v| {
                format!(
                    "{}: (from flag: {}, from file: {})",
                    s.key,
                    flag_value_text(&flags, s.arg),
                    go_format(v)
                )
            })
        })
        .collect();
    if !conflicts.is_empty() {
        return Err(file_error(format!(
            "the following directives are specified both as a flag and in the configuration file: {}",
            conflicts.join(", ")
        )));
    }

    let mut hosts = flags.hosts.clone();
    if hosts.is_empty() {
        hosts = file.strings("hosts").map_err(&file_error)?;
    }
    if hosts.is_empty() {
        hosts.push(DEFAULT_HOST.to_string());
    }

    let tls_flag = flags.tls.or(file.boolean("tls").map_err(&file_error)?);
    let verify_flag = flags.tlsverify.or(file.boolean("tlsverify").map_err(&file_error)?);
    let cacert = flags.tlscacert.clone().or(file.string("tlscacert").map_err(&file_error)?.map(PathBuf::from));
    let cert = flags.tlscert.clone().or(file.string("tlscert").map_err(&file_error)?.map(PathBuf::from));
    let key = flags.tlskey.clone().or(file.string("tlskey").map_err(&file_error)?.map(PathBuf::from));
    let tls = tls_settings(tls_flag, verify_flag, cacert, cert, key)?;

    let data_root = match flags.data_root.clone() {
        Some(p) => p,
        None => file
            .string("data-root")
            .map_err(&file_error)?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT)),
    };
    if !data_root.is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "data root {} must be an absolute path",
            data_root.display()
        )));
    }

    let storage_driver = match flags.storage_driver.clone() {
        Some(d) => Some(d),
        None => file.string("storage-driver").map_err(&file_error)?,
    };
    let mut opt_list = flags.storage_opts.clone();
    if opt_list.is_empty() {
        opt_list = file.strings("storage-opts").map_err(&file_error)?;
    }
    let storage_opts = parse_storage_opts(&opt_list)?;

    let mut insecure_registries = flags.insecure_registries.clone();
    if insecure_registries.is_empty() {
        insecure_registries = file.strings("insecure-registries").map_err(&file_error)?;
    }
    let insecure_registries = insecure_registries
        .iter()
        .map(|r| normalize_registry(r))
        .collect::<Result<Vec<_>, _>>()?;

    let log_driver = match flags.log_driver.clone() {
        Some(d) => d,
        None => file.string("log-driver").map_err(&file_error)?.unwrap_or_else(|| "json-file".to_string()),
    };
    if log_driver.is_empty() {
        return Err(ConfigError::Invalid("log driver must not be empty".to_string()));
    }
    let log_opts = if flags.log_opts.is_empty() {
        file.string_map("log-opts").map_err(&file_error)?
    } else {
        let mut opts = BTreeMap::new();
        for item in &flags.log_opts {
            let Some((key, value)) = item.split_once('=') else {
                return Err(ConfigError::Invalid(format!("invalid log option {item:?}: expected key=value")));
            };
            opts.insert(key.to_string(), value.to_string());
        }
        opts
    };
    let as_json = log_opts.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    crate::containers::logs::check_options(&log_driver, &as_json)
        .map_err(|e| ConfigError::Invalid(format!("log options: {e}")))?;
    let debug = match flags.debug {
        Some(d) => d,
        None => file.boolean("debug").map_err(&file_error)?.unwrap_or(false),
    };
    let log_level = match flags.log_level.clone() {
        Some(l) => Some(l),
        None => file.string("log-level").map_err(&file_error)?,
    };
    if let Some(level) = &log_level {
        if !matches!(level.as_str(), "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "panic") {
            return Err(ConfigError::Invalid(format!("unable to parse logging level: {level}")));
        }
    }
    let snapshotter_address = match flags.snapshotter_address.clone() {
        Some(a) => Some(a),
        None => file.string("snapshotter-address").map_err(&file_error)?,
    };

    Ok(DaemonConfig {
        hosts,
        tls,
        data_root,
        storage_driver,
        storage_opts,
        insecure_registries,
        log_driver,
        log_opts,
        debug,
        log_level,
        snapshotter_address,
        config_file: file_path,
        validate_only: flags.validate,
    })
}

/// dockerd's rules: any mention of tlsverify turns TLS on; `--tls` alone
/// verifies clients unless `--tlsverify=false` is given.
fn tls_settings(
    tls: Option<bool>,
    verify: Option<bool>,
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let enabled = verify.is_some() || tls == Some(true);
    if !enabled {
        return Ok(None);
    }
    let verify = verify.unwrap_or(true);
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(ConfigError::Invalid(
            "TLS needs a server certificate and key: give --tlscert and --tlskey".to_string(),
        ));
    };
    let verify_ca = if verify {
        match cacert {
            Some(ca) => Some(ca),
            None => {
                return Err(ConfigError::Invalid(
                    "--tlsverify needs the CA that signs client certificates: give --tlscacert"
                        .to_string(),
                ))
            }
        }
    } else {
        None
    };
    Ok(Some(TlsSettings { cert, key, verify_ca }))
}

/// Parses `key=value` storage options; keys are lower-cased as dockerd does.
pub fn parse_storage_opts(items: &[String]) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut opts = BTreeMap::new();
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(ConfigError::Invalid(format!(
                "invalid storage option {item:?}: expected key=value"
            )));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(ConfigError::Invalid(format!("invalid storage option {item:?}: empty key")));
        }
        opts.insert(key, value.trim().to_string());
    }
    Ok(opts)
}

/// Accepts `host[:port]` or a CIDR; strips an `http://`/`https://` prefix
/// with a warning, as dockerd does.
pub fn normalize_registry(entry: &str) -> Result<String, ConfigError> {
    let mut text = entry.trim();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = text.strip_prefix(scheme) {
            tracing::warn!(registry = entry, "insecure registry should not have a scheme; it is ignored");
            text = rest;
        }
    }
    let text = text.trim_end_matches('/');
    if text.is_empty() || text.contains('/') && text.parse::<Cidr>().is_err() {
        return Err(ConfigError::Invalid(format!("insecure registry {entry} is not valid")));
    }
    if text.contains("://") || text.chars().any(char::is_whitespace) {
        return Err(ConfigError::Invalid(format!("insecure registry {entry} is not valid")));
    }
    Ok(text.to_string())
}

/// An IP network in CIDR notation (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s}: not a CIDR"))?;
        let addr: std::net::IpAddr = addr.parse().map_err(|_| format!("{s}: bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{s}: bad prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s}: prefix longer than {max}"));
        }
        Ok(Self { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("daemon.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn args(extra: &[&str], file: &Path) -> Vec<String> {
        let mut v = vec!["stratad".to_string(), "--config-file".to_string(), file.display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn explicit_config_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(args(&[], &dir.path().join("absent.json"))).unwrap_err();
        // An explicitly named file must exist.
        assert!(cfg.to_string().contains("absent.json"), "{cfg}");

        let cfg = load(["stratad", "--config-file=/nonexistent/strata-test.json"]);
        assert!(cfg.is_err());
    }

    #[test]
    fn flags_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{}");
        let cfg = load(args(
            &[
                "-H", "unix:///tmp/a.sock", "--host", "tcp://127.0.0.1:2375", "-g", "/srv/strata",
                "--storage-driver", "overlay2", "--storage-opt", "Dm.BaseSize=20G",
                "--insecure-registry", "http://myreg:5000", "-D", "--log-driver", "none",
            ],
            &file,
        ))
        .unwrap();
        assert_eq!(cfg.hosts, vec!["unix:///tmp/a.sock", "tcp://127.0.0.1:2375"]);
        assert_eq!(cfg.data_root, PathBuf::from("/srv/strata"));
        assert_eq!(cfg.storage_driver.as_deref(), Some("overlay2"));
        assert_eq!(cfg.storage_opts.get("dm.basesize").map(String::as_str), Some("20G"));
        assert_eq!(cfg.insecure_registries, vec!["myreg:5000"]);
        assert!(cfg.debug);
        assert_eq!(cfg.log_driver, "none");
        assert!(cfg.tls.is_none());

        let cfg = load(args(&["--graph", "/srv/g"], &file)).unwrap();
        assert_eq!(cfg.data_root, PathBuf::from("/srv/g"));
        assert_eq!(cfg.hosts, vec![DEFAULT_HOST]);
        assert_eq!(cfg.log_driver, "json-file");
        assert_eq!(cfg.data_root, PathBuf::from("/srv/g"));
    }

    #[test]
    fn file_values_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            r#"{"hosts":["unix:///tmp/x.sock"],"data-root":"/srv/x","debug":true,
                "storage-driver":"vfs","storage-opts":["size=1G"],
                "insecure-registries":["10.0.0.0/8","reg:5000"],"log-driver":"local"}"#,
        );
        let cfg = load(args(&[], &file)).unwrap();
        assert_eq!(cfg.hosts, vec!["unix:///tmp/x.sock"]);
        assert_eq!(cfg.data_root, PathBuf::from("/srv/x"));
        assert!(cfg.debug);
        assert_eq!(cfg.storage_driver.as_deref(), Some("vfs"));
        assert_eq!(cfg.storage_opts.get("size").map(String::as_str), Some("1G"));
        assert_eq!(cfg.insecure_registries, vec!["10.0.0.0/8", "reg:5000"]);
        assert_eq!(cfg.log_driver, "local");
        assert_eq!(cfg.config_file.as_deref(), Some(file.as_path()));
    }

    #[test]
    fn flag_and_file_conflict_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), r#"{"hosts":["unix:///a.sock","tcp://127.0.0.1:2375"],"debug":false}"#);
        let err = load(args(&["-H", "fd://", "-D"], &file)).unwrap_err().to_string();
        assert!(
            err.contains("the following directives are specified both as a flag and in the configuration file: hosts: (from flag: [fd://], from file: [unix:///a.sock tcp://127.0.0.1:2375]), debug: (from flag: true, from file: false)"),
            "{err}"
        );
        assert!(err.contains(&file.display().to_string()), "{err}");
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), r#"{"hosts":[],"bogus":1,"graph":"/x"}"#);
        let err = load(args(&[], &file)).unwrap_err().to_string();
        assert!(err.contains("the following directives don't match any configuration option: bogus, graph"), "{err}");
        let file = write(dir.path(), r#"["not an object"]"#);
        assert!(load(args(&[], &file)).is_err());
        let file = write(dir.path(), r#"{"debug":"yes"}"#);
        assert!(load(args(&[], &file)).unwrap_err().to_string().contains("debug"));
    }

    #[test]
    fn tls_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{}");
        let err = load(args(&["--tlsverify"], &file)).unwrap_err().to_string();
        assert!(err.contains("--tlscert"), "{err}");
        let err = load(args(&["--tlsverify", "--tlscert", "/c", "--tlskey", "/k"], &file)).unwrap_err();
        assert!(err.to_string().contains("--tlscacert"));
        let cfg = load(args(&["--tlsverify", "--tlscacert", "/ca", "--tlscert", "/c", "--tlskey", "/k"], &file))
            .unwrap();
        assert_eq!(cfg.tls.unwrap().verify_ca, Some(PathBuf::from("/ca")));
        let cfg = load(args(&["--tls", "--tlsverify=false", "--tlscert", "/c", "--tlskey", "/k"], &file)).unwrap();
        assert_eq!(cfg.tls.unwrap().verify_ca, None);
        let file = write(dir.path(), r#"{"tls":true,"tlsverify":false,"tlscert":"/c","tlskey":"/k"}"#);
        let cfg = load(args(&[], &file)).unwrap();
        assert_eq!(cfg.tls, Some(TlsSettings { cert: "/c".into(), key: "/k".into(), verify_ca: None }));
    }

    #[test]
    fn log_options_from_flags_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{}");
        let cfg = load(args(&["--log-opt", "max-size=10k", "--log-opt", "max-file=3"], &file)).unwrap();
        assert_eq!(cfg.log_opts.get("max-size").map(String::as_str), Some("10k"));
        assert_eq!(cfg.log_opts.get("max-file").map(String::as_str), Some("3"));
        let file = write(dir.path(), r#"{"log-opts":{"max-size":"1m"}}"#);
        let cfg = load(args(&[], &file)).unwrap();
        assert_eq!(cfg.log_opts.get("max-size").map(String::as_str), Some("1m"));
        // The json-file driver's own checks apply at start-up.
        let file = write(dir.path(), "{}");
        for bad in ["max-size=ten", "max-file=0", "colour=red", "novalue"] {
            let err = load(args(&["--log-opt", bad], &file)).unwrap_err().to_string();
            assert!(err.contains("log option"), "{bad}: {err}");
        }
        let file = write(dir.path(), r#"{"log-opts":{"max-size":5}}"#);
        assert!(load(args(&[], &file)).unwrap_err().to_string().contains("log-opts"));
        let file = write(dir.path(), r#"{"log-opts":{"max-size":"1m"}}"#);
        let err = load(args(&["--log-opt", "max-file=2"], &file)).unwrap_err().to_string();
        assert!(err.contains("log-opts: (from flag: [max-file=2], from file: map[max-size:1m])"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "{}");
        assert!(load(args(&["--storage-opt", "novalue"], &file)).is_err());
        assert!(load(args(&["--data-root", "relative/dir"], &file)).is_err());
        assert!(load(args(&["--log-level", "loud"], &file)).is_err());
        assert!(load(args(&["--insecure-registry", "a b"], &file)).is_err());
    }
}
