//! Image references (`busybox`, `myrepo/bb:v1`, `localhost:5000/a/b@sha256:…`)
//! in Docker's normalised form.
//!
//! The store keys references by their full form
//! (`docker.io/library/busybox:latest`); the API shows the familiar form
//! (`busybox:latest`), as dockerd does.

use std::fmt;

/// The registry a name without one belongs to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The tag a name without a tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io/library/busybox`.
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

/// Why a reference is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format: {0}")]
pub struct ReferenceError(pub String);

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-".
        let start = i;
        match ch {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !b[i].is_ascii_alphanumeric() {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `tag` is a valid tag: `[\w][\w.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    match d.strip_prefix("sha256:") {
        Some(hex) => hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        None => false,
    }
}

impl Reference {
    /// Parses and normalises a reference as the Docker CLI does
    /// (`ParseNormalizedNamed`): `busybox` is `docker.io/library/busybox`.
    /// No default tag is added.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let bad = |why: &str| ReferenceError(format!("{why}: {text:?}"));
        if text.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(bad("invalid digest"));
                }
                (r, Some(d.to_string()))
            }
            None => (text, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(bad("invalid tag"));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > 255 {
            return Err(bad("repository name must not be more than 255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !valid_domain(&domain) {
            return Err(bad("invalid registry host"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError(format!("repository name ({path}) must be lowercase")));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad("invalid repository name"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') { format!("library/{path}") } else { path };
        Ok(Reference { name: format!("{domain}/{path}"), tag, digest })
    }

    /// Like [`Reference::parse`], adding the tag `latest` when the
    /// reference has neither tag nor digest.
    pub fn parse_tagged(text: &str) -> Result<Reference, ReferenceError> {
        let mut r = Self::parse(text)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// The repository in familiar form: `busybox`, `myrepo/bb`,
    /// `localhost:5000/a/b`.
    pub fn familiar_name(&self) -> String {
        match self.name.strip_prefix("docker.io/") {
            Some(rest) => rest.strip_prefix("library/").unwrap_or(rest).to_string(),
            None => self.name.clone(),
        }
    }

    /// The familiar form with tag and digest: `busybox:latest`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The tag, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox", None, "busybox"),
            ("busybox:1.36", "docker.io/library/busybox", Some("1.36"), "busybox:1.36"),
            ("myrepo/bb:v1", "docker.io/myrepo/bb", Some("v1"), "myrepo/bb:v1"),
            ("docker.io/myrepo/bb", "docker.io/myrepo/bb", None, "myrepo/bb"),
            ("docker.io/library/busybox:latest", "docker.io/library/busybox", Some("latest"), "busybox:latest"),
            ("localhost:5000/a/b:c", "localhost:5000/a/b", Some("c"), "localhost:5000/a/b:c"),
            ("localhost/x", "localhost/x", None, "localhost/x"),
            ("my.reg/x_y__z-w--v.q", "my.reg/x_y__z-w--v.q", None, "my.reg/x_y__z-w--v.q"),
        ];
        for (input, name, tag, familiar) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.name, name, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).expect("digest");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(Reference::parse_tagged("busybox").expect("tagged").to_string(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in ["", "Busybox", "a/B", "a:", "a:-x", "-a", "a-", "a..b", "a//b", "a@sha256:12", "a b", "a/../b", ":tag"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = Reference::parse("busybox:-x").expect_err("bad tag");
        assert!(e.to_string().contains("invalid reference format"), "{e}");
    }
}
