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

/// Appends output to a container's log, splitting it into lines (a partial
/// line is kept until its end arrives or the stream closes).
pub struct LogWriter {
    file: Mutex<std::fs::File>,
    partial: Mutex<[Vec<u8>; 3]>,
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter { file: Mutex::new(file), partial: Mutex::new([Vec::new(), Vec::new(), Vec::new()]) })
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
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&text) {
            tracing::warn!(error = %e, "writing the container log failed");
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
    fn framing() {
        assert_eq!(frame(StreamKind::Stderr, b"hi"), vec![2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
