//! Image configuration documents (the JSON whose sha256 is the image ID),
//! Dockerfile-style `changes` for `docker import`, and the RFC 3339 times
//! they carry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields of an image config the engine reads. The document itself is
/// kept byte for byte (its digest is the image ID); this is a view of it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigView {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub docker_version: Option<String>,
    #[serde(default)]
    pub config: Option<Value>,
    /// The container a commit was made from (Docker's `container`).
    #[serde(default)]
    pub container: Option<String>,
    /// That container's config at the time (Docker's `container_config`).
    #[serde(default)]
    pub container_config: Option<Value>,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub typ: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

impl ConfigView {
    /// Parses and checks an image config: it must be JSON with
    /// `rootfs.type == "layers"` and well-formed diff IDs.
    pub fn parse(bytes: &[u8]) -> Result<ConfigView, String> {
        let view: ConfigView = serde_json::from_slice(bytes).map_err(|e| format!("invalid image config: {e}"))?;
        if view.rootfs.typ != "layers" {
            return Err(format!("invalid image config: unsupported rootfs type {:?}", view.rootfs.typ));
        }
        for d in &view.rootfs.diff_ids {
            if !is_sha256_digest(d) {
                return Err(format!("invalid image config: bad diff ID {d:?}"));
            }
        }
        Ok(view)
    }

    /// Creation time in unix seconds (0 when absent or unreadable).
    pub fn created_unix(&self) -> i64 {
        self.created.as_deref().and_then(parse_rfc3339).map(|(s, _)| s).unwrap_or(0)
    }

    /// The image's labels (`config.Labels`).
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        if let Some(Value::Object(l)) = self.config.as_ref().and_then(|c| c.get("Labels")) {
            for (k, v) in l {
                if let Some(v) = v.as_str() {
                    out.insert(k.clone(), v.to_string());
                }
            }
        }
        out
    }
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The Go name of this machine's architecture, as image configs spell it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

// Days from 1970-01-01 to the given civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats unix seconds and nanoseconds as RFC 3339 in UTC, with the
/// nanoseconds Go's `RFC3339Nano` prints (trailing zeros dropped).
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The current time in RFC 3339.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format_rfc3339(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos())
}

/// Parses an RFC 3339 time into unix seconds and nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut padded = digits.chars().take(9).collect::<String>();
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        b'+' | b'-' if i + 6 == b.len() && b[i + 3] == b':' => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset, nanos))
}

/// Splits a Dockerfile argument list into words, honouring double and
/// single quotes and backslash escapes.
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                let quote = c;
                loop {
                    match chars.next() {
                        Some(q) if q == quote => break,
                        Some('\\') if quote == '"' => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err(format!("unterminated quote in {text:?}")),
                        },
                        Some(o) => cur.push(o),
                        None => return Err(format!("unterminated quote in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// `["a","b"]` (exec form) or a shell command (shell form).
fn command_value(args: &str) -> Result<Value, String> {
    let t = args.trim();
    if t.starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(t) {
            return Ok(Value::from(list));
        }
    }
    Ok(Value::from(vec!["/bin/sh".to_string(), "-c".to_string(), t.to_string()]))
}

/// `k=v k2="v 2"` pairs; the legacy `k v` form when `legacy` allows it.
fn key_values(instr: &str, args: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let words = shell_words(args)?;
    if words.is_empty() {
        return Err(format!("{instr} requires at least one argument"));
    }
    if legacy && !words[0].contains('=') {
        let (k, v) = args.trim().split_once(char::is_whitespace).ok_or_else(|| format!("{instr} requires a value"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{instr}: expected key=value, got {w:?}")),
        })
        .collect()
}

/// Takes `key` out of `config` as an object (a fresh one when absent or
/// not an object); the caller puts it back.
fn take_object(config: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match config.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Applies `docker import --change` instructions to a container config
/// (the `config` object of an image config). Only the instructions dockerd
/// accepts there are allowed.
pub fn apply_changes(config: &mut Map<String, Value>, changes: &[String]) -> Result<(), String> {
    for change in changes {
        let line = change.trim();
        if line.is_empty() {
            continue;
        }
        let (instr, args) = match line.split_once(char::is_whitespace) {
            Some((i, a)) => (i.to_ascii_uppercase(), a.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        if args.is_empty() {
            return Err(format!("{instr} requires at least one argument"));
        }
        match instr.as_str() {
            "CMD" => {
                config.insert("Cmd".into(), command_value(args)?);
            }
            "ENTRYPOINT" => {
                config.insert("Entrypoint".into(), command_value(args)?);
            }
            "ENV" => {
                let pairs = key_values("ENV", args, true)?;
                let env = config.entry("Env".to_string()).or_insert_with(|| Value::Array(Vec::new()));
                if !env.is_array() {
                    *env = Value::Array(Vec::new());
                }
                if let Value::Array(list) = env {
                    for (k, v) in pairs {
                        let prefix = format!("{k}=");
                        list.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
                        list.push(Value::from(format!("{k}={v}")));
                    }
                }
            }
            "LABEL" => {
                let pairs = key_values("LABEL", args, true)?;
                let mut labels = take_object(config, "Labels");
                for (k, v) in pairs {
                    labels.insert(k, Value::from(v));
                }
                config.insert("Labels".into(), Value::Object(labels));
            }
            "EXPOSE" => {
                let ports = shell_words(args)?;
                let mut exposed = take_object(config, "ExposedPorts");
                for p in ports {
                    let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    if port.is_empty()
                        || !port.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                        || !matches!(proto.as_str(), "tcp" | "udp" | "sctp")
                    {
                        return Err(format!("invalid port in EXPOSE: {p:?}"));
                    }
                    exposed.insert(format!("{port}/{proto}"), Value::Object(Map::new()));
                }
                config.insert("ExposedPorts".into(), Value::Object(exposed));
            }
            "VOLUME" => {
                let list = match serde_json::from_str::<Vec<String>>(args) {
                    Ok(l) => l,
                    Err(_) => shell_words(args)?,
                };
                let mut vols = take_object(config, "Volumes");
                for v in list {
                    vols.insert(v, Value::Object(Map::new()));
                }
                config.insert("Volumes".into(), Value::Object(vols));
            }
            "USER" => {
                config.insert("User".into(), Value::from(args));
            }
            "WORKDIR" => {
                config.insert("WorkingDir".into(), Value::from(args));
            }
            "STOPSIGNAL" => {
                config.insert("StopSignal".into(), Value::from(args));
            }
            "ONBUILD" => {
                let list = config.entry("OnBuild".to_string()).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(l) = list {
                    l.push(Value::from(args));
                }
            }
            other => return Err(format!("{other} is not a valid change command")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_714_000_000, 120_000_000), "2024-04-24T23:06:40.12Z");
        assert_eq!(parse_rfc3339("2024-04-24T23:06:40.12Z"), Some((1_714_000_000, 120_000_000)));
        assert_eq!(parse_rfc3339("2024-04-25T01:06:40+02:00"), Some((1_714_000_000, 0)));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn changes_fill_the_config() {
        let mut c = Map::new();
        let changes: Vec<String> = [
            "CMD [\"sh\"]",
            "ENTRYPOINT echo hi",
            "ENV A=1 B=\"two words\"",
            "ENV C three",
            "ENV A=replaced",
            "WORKDIR /srv",
            "LABEL org.x=\"y z\" k=v",
            "EXPOSE 80 53/udp",
            "USER nobody",
            "VOLUME [\"/data\"]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apply_changes(&mut c, &changes).expect("changes");
        assert_eq!(c["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["Env"], serde_json::json!(["B=two words", "C=three", "A=replaced"]));
        assert_eq!(c["WorkingDir"], "/srv");
        assert_eq!(c["Labels"]["org.x"], "y z");
        assert_eq!(c["Labels"]["k"], "v");
        assert!(c["ExposedPorts"].get("80/tcp").is_some());
        assert!(c["ExposedPorts"].get("53/udp").is_some());
        assert_eq!(c["User"], "nobody");
        assert!(c["Volumes"].get("/data").is_some());
    }

    #[test]
    fn bad_changes_are_refused() {
        for bad in ["RUN echo", "FROM busybox", "CMD", "EXPOSE abc", "LABEL =x", "ENV \"unterminated"] {
            let mut c = Map::new();
            assert!(apply_changes(&mut c, &[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_view_checks_rootfs() {
        let good = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#, "b".repeat(64));
        assert_eq!(ConfigView::parse(good.as_bytes()).expect("good").rootfs.diff_ids.len(), 1);
        assert!(ConfigView::parse(br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#).is_err());
        assert!(ConfigView::parse(b"not json").is_err());
        assert!(ConfigView::parse(br#"{"rootfs":{"type":"other"}}"#).is_err());
    }
}
