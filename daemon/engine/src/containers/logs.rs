//! The json-file log: one JSON object per line,
//! `{"log":"hi\n","stream":"stdout","time":"2026-…Z"}`, as dockerd writes
//! it, and reading it back for `docker logs` (since, until, tail).

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::images::config::{now_rfc3339, parse_rfc3339};

/// Which output stream a chunk came from (Docker's stream numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

impl StreamKind {
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// One line of the log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

impl LogEntry {
    /// Unix nanoseconds of the entry (0 when unreadable).
    pub fn nanos(&self) -> i64 {
        parse_rfc3339(&self.time).map(|(s, n)| s.saturating_mul(1_000_000_000).saturating_add(i64::from(n))).unwrap_or(0)
    }
}

/// The json-file options of `HostConfig.LogConfig.Config`: rotation once
/// the file reaches `max_size`, keeping `max_file` files in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Bytes; `None` is no limit (no rotation).
    pub max_size: Option<u64>,
    /// The current file plus `max_file - 1` rotated ones (`.1`, `.2`, …).
    pub max_file: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { max_size: None, max_file: 1 }
    }
}

/// The option keys dockerd's json-file driver accepts.
const JSON_FILE_KEYS: &[&str] = &["max-file", "max-size", "compress", "labels", "labels-regex", "env", "env-regex", "tag"];

/// dockerd's `units.FromHumanSize`: a number with an optional decimal unit
/// (`10k` = 10000, `1.5m`, `2g`; `i` and `b` suffixes allowed).
pub fn parse_human_size(text: &str) -> Option<u64> {
    let t = text.strip_suffix(['b', 'B']).unwrap_or(text);
    let t = t.strip_suffix(['i', 'I']).unwrap_or(t);
    let (t, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        Some('t') => (&t[..t.len() - 1], 1e12),
        Some('p') => (&t[..t.len() - 1], 1e15),
        _ => (t, 1.0),
    };
    let num = t.strip_suffix(' ').unwrap_or(t);
    let digits_ok = num.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !digits_ok {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    Some((value * mult) as u64)
}

/// Checks the options of a log driver as dockerd does (its messages, which
/// dockerd gives when the container starts) and returns the rotation
/// settings. Options of the `none` driver are kept and unused.
pub fn check_options(driver: &str, config: &serde_json::Map<String, serde_json::Value>) -> Result<LogOptions, String> {
    let mut opts = LogOptions::default();
    if driver != "json-file" {
        return Ok(opts);
    }
    let mut values = std::collections::BTreeMap::new();
    for (key, value) in config {
        if !JSON_FILE_KEYS.contains(&key.as_str()) {
            return Err(format!("unknown log opt '{key}' for json-file log driver"));
        }
        let Some(text) = value.as_str() else {
            return Err(format!("log opt '{key}' must be a string"));
        };
        values.insert(key.as_str(), text);
    }
    let fail = |m: String| format!("failed to initialize logging driver: {m}");
    if let Some(size) = values.get("max-size") {
        let bytes = parse_human_size(size).ok_or_else(|| fail(format!("invalid size: '{size}'")))?;
        if bytes == 0 {
            return Err(fail("max-size must be a positive number".to_string()));
        }
        opts.max_size = Some(bytes);
    }
    if let Some(files) = values.get("max-file") {
        let n: i64 = files.parse().map_err(|_| fail(format!("strconv.Atoi: parsing \"{files}\": invalid syntax")))?;
        if n < 1 {
            return Err(fail("max-file cannot be less than 1".to_string()));
        }
        opts.max_file = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(compress) = values.get("compress") {
        match *compress {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => {
                return Err(fail("compress=true is not supported: rotated json-file logs are kept uncompressed".to_string()))
            }
            "0" | "f" | "F" | "false" | "FALSE" | "False" => {}
            other => return Err(fail(format!("strconv.ParseBool: parsing \"{other}\": invalid syntax"))),
        }
    }
    Ok(opts)
}

/// The rotated file number `n` of the log at `path` (`<path>.<n>`).
pub fn rotated(path: &Path, n: u32) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    std::path::PathBuf::from(name)
}

/// The rotated files of the log at `path` that exist, oldest first.
pub fn rotated_files(path: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for n in 1.. {
        let p = rotated(path, n);
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files.reverse();
    files
}

/// Reads the entries of the rotated files of the log at `path`, oldest
/// first (the current file not included).
pub fn read_rotated(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let mut entries = Vec::new();
    for file in rotated_files(path) {
        entries.extend(read_from(&file, 0)?.0);
    }
    Ok(entries)
}

/// Every entry of the log at `path`, the rotated files first.
pub fn read_all(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let mut entries = read_rotated(path)?;
    entries.extend(read_from(path, 0)?.0);
    Ok(entries)
}

/// Appends output to a container's log, splitting it into lines (a partial
/// line is kept until its end arrives or the stream closes), and rotates
/// the file as [`LogOptions`] say.
pub struct LogWriter {
    file: Mutex<CurrentFile>,
    partial: Mutex<[Vec<u8>; 3]>,
}

struct CurrentFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    size: u64,
    options: LogOptions,
}

impl CurrentFile {
    /// dockerd's rotation: `.N-1` → `.N`, …, the file → `.1`, and a new,
    /// empty file (with one file only, the file is emptied).
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.options.max_file;
        if keep >= 2 {
            for n in (2..keep).rev() {
                match std::fs::rename(rotated(&self.path, n - 1), rotated(&self.path, n)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Self::open_with(path, LogOptions::default())
    }

    pub fn open_with(path: &Path, options: LogOptions) -> std::io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            file: Mutex::new(CurrentFile { file, path: path.to_path_buf(), size, options }),
            partial: Mutex::new([Vec::new(), Vec::new(), Vec::new()]),
        })
    }

    /// Records `data` from `stream`.
    pub fn write(&self, stream: StreamKind, data: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let buf = &mut partial[stream as usize];
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            self.append(stream, &line);
        }
        // A very long line without a newline is written in pieces, as dockerd does.
        if buf.len() >= 16 * 1024 {
            let line = std::mem::take(buf);
            self.append(stream, &line);
        }
    }

    /// Writes out what is left of a partial line of `stream`.
    pub fn flush(&self, stream: StreamKind) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let line = std::mem::take(&mut partial[stream as usize]);
        if !line.is_empty() {
            self.append(stream, &line);
        }
    }

    fn append(&self, stream: StreamKind, line: &[u8]) {
        let entry = LogEntry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.name().to_string(),
            time: now_rfc3339(),
        };
        let Ok(mut text) = serde_json::to_vec(&entry) else { return };
        text.push(b'\n');
        let mut current = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if current.options.max_size.is_some_and(|max| current.size >= max) {
            if let Err(e) = current.rotate() {
                tracing::warn!(path = %current.path.display(), error = %e, "rotating the container log failed");
            }
        }
        match current.file.write_all(&text) {
            Ok(()) => current.size += text.len() as u64,
            Err(e) => tracing::warn!(error = %e, "writing the container log failed"),
        }
    }
}

/// Which entries `docker logs` wants.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub stdout: bool,
    pub stderr: bool,
    /// Unix nanoseconds; entries before are skipped.
    pub since: Option<i64>,
    /// Unix nanoseconds; entries after are skipped.
    pub until: Option<i64>,
    /// Only the last N entries (`None` = all).
    pub tail: Option<usize>,
}

impl LogQuery {
    pub fn wants(&self, entry: &LogEntry) -> bool {
        let stream_ok = match entry.stream.as_str() {
            "stdout" => self.stdout,
            "stderr" => self.stderr,
            _ => false,
        };
        if !stream_ok {
            return false;
        }
        let t = entry.nanos();
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }
}

/// Reads the entries of `path` from byte `offset` on; returns them and the
/// offset after the last complete line.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<LogEntry>, u64)> {
    match std::fs::File::open(path) {
        Ok(f) => read_file(&f, offset),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), offset)),
        Err(e) => Err(e),
    }
}

/// [`read_from`] on a log file already open: a follower that keeps it open
/// still reads what was written when the container is removed meanwhile.
pub fn read_file(file: &std::fs::File, offset: u64) -> std::io::Result<(Vec<LogEntry>, u64)> {
    use std::io::Seek;
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut entries = Vec::new();
    let mut pos = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) {
            entries.push(entry);
        }
    }
    Ok((entries, pos))
}

/// Whether the log at `path` is no longer the file `file` is open on (it
/// was rotated away, or the container removed).
pub fn replaced(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.ino() != named.ino() || open.dev() != named.dev(),
        _ => false,
    }
}

/// Keeps the last `tail` entries that `query` wants.
pub fn select(entries: Vec<LogEntry>, query: &LogQuery) -> Vec<LogEntry> {
    let mut wanted: Vec<LogEntry> = entries.into_iter().filter(|e| query.wants(e)).collect();
    if let Some(tail) = query.tail {
        let skip = wanted.len().saturating_sub(tail);
        wanted.drain(..skip);
    }
    wanted
}

/// Frames `data` for a multiplexed stream: `[stream,0,0,0,len_be32]` + data.
pub fn frame(stream: StreamKind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.push(stream as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_tail_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let w = LogWriter::open(&path).unwrap();
        w.write(StreamKind::Stdout, b"one\ntw");
        w.write(StreamKind::Stderr, b"err\n");
        w.write(StreamKind::Stdout, b"o\nthree");
        w.flush(StreamKind::Stdout);
        let (entries, end) = read_from(&path, 0).unwrap();
        assert_eq!(end, std::fs::metadata(&path).unwrap().len());
        let logs: Vec<&str> = entries.iter().map(|e| e.log.as_str()).collect();
        assert_eq!(logs, vec!["one\n", "err\n", "two\n", "three"]);
        let q = LogQuery { stdout: true, stderr: false, tail: Some(2), ..Default::default() };
        let got: Vec<String> = select(entries.clone(), &q).into_iter().map(|e| e.log).collect();
        assert_eq!(got, vec!["two\n", "three"]);
        let q = LogQuery { stdout: false, stderr: true, ..Default::default() };
        assert_eq!(select(entries.clone(), &q).len(), 1);
        let q = LogQuery { stdout: true, stderr: true, since: Some(i64::MAX), ..Default::default() };
        assert!(select(entries, &q).is_empty());
        let (more, end2) = read_from(&path, end).unwrap();
        assert!(more.is_empty());
        assert_eq!(end2, end);
    }

    #[test]
    fn an_open_log_is_still_read_after_its_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let w = LogWriter::open(&path).unwrap();
        let follower = std::fs::File::open(&path).unwrap();
        w.write(StreamKind::Stdout, b"hello\n");
        w.flush(StreamKind::Stdout);
        std::fs::remove_file(&path).unwrap();
        assert!(read_from(&path, 0).unwrap().0.is_empty());
        let (entries, _) = read_file(&follower, 0).unwrap();
        assert_eq!(entries.iter().map(|e| e.log.as_str()).collect::<Vec<_>>(), vec!["hello\n"]);
    }

    #[test]
    fn sizes_and_options_as_dockerd() {
        assert_eq!(parse_human_size("10k"), Some(10_000));
        assert_eq!(parse_human_size("1.5m"), Some(1_500_000));
        assert_eq!(parse_human_size("2KiB"), Some(2_000));
        assert_eq!(parse_human_size("7"), Some(7));
        assert_eq!(parse_human_size("7b"), Some(7));
        for bad in ["abc", "-1", "", "k", "1x", "1.", ".5k"] {
            assert_eq!(parse_human_size(bad), None, "{bad}");
        }
        let map = |v: serde_json::Value| v.as_object().unwrap().clone();
        let o = check_options("json-file", &map(serde_json::json!({"max-size": "1k", "max-file": "3"}))).unwrap();
        assert_eq!(o, LogOptions { max_size: Some(1000), max_file: 3 });
        assert_eq!(check_options("json-file", &map(serde_json::json!({"max-file": "3"}))).unwrap().max_size, None);
        let err = |v| check_options("json-file", &map(v)).unwrap_err();
        assert_eq!(err(serde_json::json!({"max-size": "abc"})), "failed to initialize logging driver: invalid size: 'abc'");
        assert_eq!(err(serde_json::json!({"max-size": "0"})), "failed to initialize logging driver: max-size must be a positive number");
        assert_eq!(err(serde_json::json!({"max-file": "0"})), "failed to initialize logging driver: max-file cannot be less than 1");
        assert!(err(serde_json::json!({"max-file": "x"})).contains("strconv.Atoi"));
        assert_eq!(err(serde_json::json!({"foo": "1"})), "unknown log opt 'foo' for json-file log driver");
        assert!(check_options("none", &map(serde_json::json!({"max-size": "zz"}))).is_ok());
    }

    #[test]
    fn the_log_rotates_and_is_read_across_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let w = LogWriter::open_with(&path, LogOptions { max_size: Some(200), max_file: 3 }).unwrap();
        for i in 0..40 {
            w.write(StreamKind::Stdout, format!("line {i}\n").as_bytes());
        }
        assert_eq!(rotated_files(&path), vec![rotated(&path, 2), rotated(&path, 1)]);
        assert!(!rotated(&path, 3).exists());
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len < 300, "{} has {len} bytes", p.display());
        }
        let all: Vec<String> = read_all(&path).unwrap().into_iter().map(|e| e.log).collect();
        assert_eq!(all.last().unwrap(), "line 39\n");
        let first: usize = all[0].trim_start_matches("line ").trim().parse().unwrap();
        let expected: Vec<String> = (first..40).map(|i| format!("line {i}\n")).collect();
        assert_eq!(all, expected, "entries in order without gaps");

        // One file: it is emptied when full.
        let one = dir.path().join("one-json.log");
        let w = LogWriter::open_with(&one, LogOptions { max_size: Some(100), max_file: 1 }).unwrap();
        for i in 0..20 {
            w.write(StreamKind::Stdout, format!("line {i}\n").as_bytes());
        }
        assert!(rotated_files(&one).is_empty());
        assert!(std::fs::metadata(&one).unwrap().len() < 200);
        assert_eq!(read_all(&one).unwrap().last().unwrap().log, "line 19\n");
    }

    #[test]
    fn framing() {
        assert_eq!(frame(StreamKind::Stderr, b"hi"), vec![2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
