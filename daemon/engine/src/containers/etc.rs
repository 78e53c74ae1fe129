//! The container's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`,
//! as dockerd makes them: files in the container's directory, written at
//! every start and bind-mounted over the image's, so they are never part
//! of the writable layer (`docker diff`, `commit` and `export` of the
//! layer do not see them).
//!
//! - hostname: `Config.Hostname` (the first 12 characters of the ID, or
//!   the host's name with `--network host`).
//! - hosts: the loopback and IPv6 multicast names, then `--add-host`
//!   entries; with `--network host` and no `--add-host`, a copy of the
//!   host's `/etc/hosts`.
//! - resolv.conf: the host's, without loopback name servers (they are not
//!   reachable from another network namespace; Google's public servers
//!   replace them when none is left); with `--dns`, `--dns-search` or
//!   `--dns-option`, rebuilt from those, each falling back to the host's
//!   entries. With `--network host` and none of them, a copy of the
//!   host's file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::EngineError;

/// The host files the container's are derived from.
const HOST_HOSTS: &str = "/etc/hosts";
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where systemd-resolved keeps the real upstream servers when
/// `/etc/resolv.conf` points at its local stub (127.0.0.53).
const RESOLVED_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

const DEFAULT_NAMESERVERS: &[&str] = &["8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"];

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// The three files of a container, in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcPaths {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl EtcPaths {
    pub fn in_dir(dir: &Path) -> EtcPaths {
        EtcPaths { hostname: dir.join("hostname"), hosts: dir.join("hosts"), resolv_conf: dir.join("resolv.conf") }
    }

    /// (destination in the container, source) in the order dockerd
    /// mounts them.
    pub fn mounts(&self) -> [(&'static str, &Path); 3] {
        [("/etc/resolv.conf", &self.resolv_conf), ("/etc/hostname", &self.hostname), ("/etc/hosts", &self.hosts)]
    }
}

/// One `--add-host` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraHost {
    pub name: String,
    pub ip: IpAddr,
}

/// What the files are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcConfig {
    pub hostname: String,
    pub host_network: bool,
    pub extra_hosts: Vec<ExtraHost>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// Parses `name:ip` (or `name=ip`; IPv6 addresses may be in brackets).
pub fn parse_extra_host(entry: &str) -> Result<ExtraHost, EngineError> {
    let (name, ip) = entry
        .split_once('=')
        .or_else(|| entry.split_once(':'))
        .ok_or_else(|| EngineError::invalid(format!("bad format for add-host: {entry:?}")))?;
    let name = name.trim();
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return Err(EngineError::invalid(format!("bad format for add-host: {entry:?}")));
    }
    if ip == "host-gateway" {
        // dockerd's words when it has no host-gateway IP: this daemon has
        // no bridge network, so never one.
        return Err(EngineError::invalid("unable to derive the IP value for host-gateway"));
    }
    let ip = ip.parse::<IpAddr>().map_err(|_| EngineError::invalid(format!("invalid IP address in add-host: {ip:?}")))?;
    Ok(ExtraHost { name: name.to_string(), ip })
}

impl EtcConfig {
    /// Reads `HostConfig.ExtraHosts`, `Dns`, `DnsSearch`, `DnsOptions`;
    /// refuses malformed entries.
    pub fn from_host_config(hostname: &str, host_network: bool, host_config: &Value) -> Result<EtcConfig, EngineError> {
        let extra_hosts = string_list(host_config.get("ExtraHosts"))
            .iter()
            .map(|e| parse_extra_host(e))
            .collect::<Result<Vec<_>, _>>()?;
        let dns = string_list(host_config.get("Dns"));
        for server in &dns {
            if server.parse::<IpAddr>().is_err() {
                return Err(EngineError::invalid(format!("{server} is not an ip address")));
            }
        }
        let dns_search = string_list(host_config.get("DnsSearch"));
        for domain in &dns_search {
            if domain.is_empty() || domain.len() > 255 || domain.chars().any(|c| c.is_whitespace()) {
                return Err(EngineError::invalid(format!("{domain} is not a valid domain")));
            }
        }
        let dns_options = string_list(host_config.get("DnsOptions"));
        if let Some(bad) = dns_options.iter().find(|o| o.is_empty() || o.chars().any(|c| c.is_whitespace())) {
            return Err(EngineError::invalid(format!("invalid dns option {bad:?}")));
        }
        Ok(EtcConfig { hostname: hostname.to_string(), host_network, extra_hosts, dns, dns_search, dns_options })
    }

    pub fn hostname_file(&self) -> String {
        format!("{}\n", self.hostname)
    }

    /// `/etc/hosts`, given the host's (read only with `--network host`).
    pub fn hosts_file(&self, host_hosts: impl FnOnce() -> Option<String>) -> String {
        if self.host_network && self.extra_hosts.is_empty() {
            if let Some(text) = host_hosts() {
                return text;
            }
        }
        let mut out = String::from(DEFAULT_HOSTS);
        for h in &self.extra_hosts {
            out.push_str(&format!("{}\t{}\n", h.ip, h.name));
        }
        out
    }

    /// `/etc/resolv.conf`, given the host's.
    pub fn resolv_conf(&self, host: &str) -> String {
        let custom = !self.dns.is_empty() || !self.dns_search.is_empty() || !self.dns_options.is_empty();
        if !custom {
            if self.host_network {
                return host.to_string();
            }
            return without_loopback_nameservers(host);
        }
        let pick = |own: &[String], key: &str| if own.is_empty() { entries(host, key) } else { own.to_vec() };
        let servers = pick(&self.dns, "nameserver");
        let search = pick(&self.dns_search, "search");
        let options = pick(&self.dns_options, "options");
        let mut out = String::new();
        let joined = search.join(" ");
        if !search.is_empty() && joined.trim() != "." {
            out.push_str(&format!("search {joined}\n"));
        }
        for s in &servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !options.is_empty() {
            out.push_str(&format!("options {}\n", options.join(" ")));
        }
        out
    }

    /// Writes the three files into `dir` (replacing older ones).
    pub fn write(&self, dir: &Path) -> Result<EtcPaths, EngineError> {
        let paths = EtcPaths::in_dir(dir);
        let host_hosts = || std::fs::read_to_string(HOST_HOSTS).ok();
        let resolv = self.resolv_conf(&host_resolv_conf());
        for (path, text) in [
            (&paths.hostname, self.hostname_file()),
            (&paths.hosts, self.hosts_file(host_hosts)),
            (&paths.resolv_conf, resolv),
        ] {
            write_file(path, &text)?;
        }
        Ok(paths)
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| EngineError::io(format!("write {}", tmp.display()), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| EngineError::io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(format!("rename {}", tmp.display()), e))
}

/// The host's resolver configuration: `/etc/resolv.conf`, or
/// systemd-resolved's upstream file when the former only names its stub.
fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    if entries(&main, "nameserver") == ["127.0.0.53"] {
        if let Ok(upstream) = std::fs::read_to_string(RESOLVED_RESOLV_CONF) {
            return upstream;
        }
    }
    main
}

/// The words after `key` on resolv.conf lines starting with it (comments
/// after `#` or `;` removed); for `nameserver`, one per line.
fn entries(text: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some(key) {
            continue;
        }
        if key == "nameserver" {
            out.extend(words.next().map(str::to_string));
        } else {
            // The last search line wins, options accumulate.
            if key == "search" {
                out.clear();
            }
            out.extend(words.map(str::to_string));
        }
    }
    out
}

fn is_loopback_nameserver(line: &str) -> bool {
    let mut words = line.split_whitespace();
    if words.next() != Some("nameserver") {
        return false;
    }
    match words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
        Some(ip) => ip.is_loopback(),
        None => false,
    }
}

fn without_loopback_nameservers(host: &str) -> String {
    let mut out: String = host.lines().filter(|l| !is_loopback_nameserver(l)).map(|l| format!("{l}\n")).collect();
    if entries(&out, "nameserver").is_empty() {
        for s in DEFAULT_NAMESERVERS {
            out.push_str(&format!("nameserver {s}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(host_network: bool, hc: Value) -> EtcConfig {
        EtcConfig::from_host_config("box", host_network, &hc).unwrap()
    }

    #[test]
    fn hosts_for_a_private_network() {
        let c = config(false, json!({"ExtraHosts": ["a.example:1.2.3.4", "b:::1", "c=[fe80::1]"]}));
        let text = c.hosts_file(|| panic!("the host's file is not read"));
        assert!(text.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(text.ends_with("ff02::2\tip6-allrouters\n1.2.3.4\ta.example\n::1\tb\nfe80::1\tc\n"), "{text}");
        assert_eq!(c.hostname_file(), "box\n");
    }

    #[test]
    fn hosts_with_the_host_network() {
        let c = config(true, json!({}));
        assert_eq!(c.hosts_file(|| Some("127.0.0.1 localhost\n127.0.0.1 vm\n".into())), "127.0.0.1 localhost\n127.0.0.1 vm\n");
        let c = config(true, json!({"ExtraHosts": ["a:1.2.3.4"]}));
        assert!(c.hosts_file(|| Some("ignored".into())).ends_with("1.2.3.4\ta\n"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for hc in [
            json!({"ExtraHosts": ["nohost"]}),
            json!({"ExtraHosts": ["a:not-an-ip"]}),
            json!({"ExtraHosts": ["a:host-gateway"]}),
            json!({"Dns": ["dns.example"]}),
            json!({"DnsOptions": ["two words"]}),
        ] {
            assert!(EtcConfig::from_host_config("h", false, &hc).is_err(), "{hc}");
        }
    }

    #[test]
    fn resolv_conf_from_the_host() {
        let host = "# managed\nsearch corp.example\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions edns0\n";
        let c = config(false, json!({}));
        assert_eq!(c.resolv_conf(host), "# managed\nsearch corp.example\nnameserver 10.0.0.2\noptions edns0\n");
        assert_eq!(
            c.resolv_conf("nameserver 127.0.0.1\nnameserver ::1\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n"
        );
        assert_eq!(config(true, json!({})).resolv_conf(host), host);
    }

    #[test]
    fn resolv_conf_with_options() {
        let host = "search corp.example\nnameserver 10.0.0.2\n";
        let c = config(
            false,
            json!({"Dns": ["1.1.1.1", "9.9.9.9"], "DnsSearch": ["example.com", "x.org"], "DnsOptions": ["ndots:2", "rotate"]}),
        );
        assert_eq!(
            c.resolv_conf(host),
            "search example.com x.org\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions ndots:2 rotate\n"
        );
        let c = config(true, json!({"DnsSearch": ["ex.com"]}));
        assert_eq!(c.resolv_conf(host), "search ex.com\nnameserver 10.0.0.2\n");
        let c = config(false, json!({"DnsSearch": ["."]}));
        assert_eq!(c.resolv_conf(host), "nameserver 10.0.0.2\n");
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let paths = config(false, json!({})).write(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&paths.hostname).unwrap(), "box\n");
        assert!(std::fs::read_to_string(&paths.hosts).unwrap().starts_with("127.0.0.1\tlocalhost\n"));
        assert!(std::fs::read_to_string(&paths.resolv_conf).unwrap().contains("nameserver"));
        assert_eq!(paths.mounts()[2].0, "/etc/hosts");
    }
}
