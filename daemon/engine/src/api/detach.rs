//! Detach keys: the key sequence that ends an attach to a terminal
//! container without stopping it (`detachKeys`, default `ctrl-p,ctrl-q`).
//!
//! [`parse`] reads dockerd's syntax, a comma-separated list of keys, each a
//! single character or `ctrl-<c>` for `c` in `a`–`z`, `@`, `[`, `\`, `]`,
//! `^`, `_`. [`Matcher`] watches the client's input for the sequence: bytes
//! that may start it are held back, and sent on when the sequence breaks.

/// dockerd's default sequence.
pub const DEFAULT: &str = "ctrl-p,ctrl-q";

/// The bytes of a detach key sequence, or dockerd's message for a bad one.
pub fn parse(spec: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("Invalid detach keys ({spec}) provided");
    let mut keys = Vec::new();
    for key in spec.split(',') {
        let byte = match key.as_bytes() {
            [c] if c.is_ascii() => *c,
            [b'c', b't', b'r', b'l', b'-', c] => match c {
                b'a'..=b'z' => c - b'a' + 1,
                b'@' => 0,
                b'[' => 27,
                b'\\' => 28,
                b']' => 29,
                b'^' => 30,
                b'_' => 31,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        keys.push(byte);
    }
    Ok(keys)
}

/// A client's input on an upgraded connection, read through a [`Matcher`].
pub struct Input<R> {
    reader: R,
    matcher: Matcher,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Input<R> {
    pub fn new(reader: R, matcher: Matcher) -> Input<R> {
        Input { reader, matcher, buf: vec![0u8; 32 * 1024] }
    }

    /// The next chunk to pass on (possibly empty) and whether the client
    /// typed the detach sequence; `None` once the client closed its side
    /// or the connection failed.
    pub async fn next(&mut self) -> Option<(Vec<u8>, bool)> {
        use tokio::io::AsyncReadExt;
        match self.reader.read(&mut self.buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(self.matcher.feed(&self.buf[..n])),
        }
    }
}

/// Spots a detach sequence in a stream of input chunks.
#[derive(Debug, Clone)]
pub struct Matcher {
    keys: Vec<u8>,
    /// How many bytes of `keys` the input ends with so far.
    held: usize,
}

impl Matcher {
    pub fn new(keys: Vec<u8>) -> Matcher {
        Matcher { keys, held: 0 }
    }

    /// Feeds one chunk; returns the bytes to pass on to the container and
    /// whether the sequence is complete (the rest of the chunk is dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        if self.keys.is_empty() {
            out.extend_from_slice(input);
            return (out, false);
        }
        for &b in input {
            if b == self.keys[self.held] {
                self.held += 1;
            } else {
                out.extend_from_slice(&self.keys[..self.held]);
                self.held = 0;
                if b == self.keys[0] {
                    self.held = 1;
                } else {
                    out.push(b);
                }
            }
            if self.held == self.keys.len() {
                self.held = 0;
                return (out, true);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockerd_syntax() {
        assert_eq!(parse(DEFAULT), Ok(vec![16, 17]));
        assert_eq!(parse("ctrl-x"), Ok(vec![24]));
        assert_eq!(parse("a,ctrl-@,ctrl-_"), Ok(vec![b'a', 0, 31]));
        for bad in ["", "ctrl-", "ctrl-1", "ctrl-P", "ab", "ctrl-a,,b", "é"] {
            assert_eq!(parse(bad), Err(format!("Invalid detach keys ({bad}) provided")), "{bad:?}");
        }
    }

    #[test]
    fn matches_across_chunks_and_passes_broken_prefixes_on() {
        let mut m = Matcher::new(vec![16, 17]);
        assert_eq!(m.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(m.feed(b"c"), (b"\x10c".to_vec(), false), "a broken sequence is passed on");
        assert_eq!(m.feed(b"\x10\x10"), (b"\x10".to_vec(), false), "a repeated first key restarts the match");
        assert_eq!(m.feed(b"\x11rest"), (Vec::new(), true));
        let mut one = Matcher::new(vec![24]);
        assert_eq!(one.feed(b"xy\x18z"), (b"xy".to_vec(), true));
        let mut none = Matcher::new(Vec::new());
        assert_eq!(none.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
    }
}
