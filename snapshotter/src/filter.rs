//! containerd's filter language, as used by `List`.
//!
//! A filter is a comma-separated list of selectors that must all match
//! (AND); [`Filters::parse`] takes several filters, any of which may match
//! (OR). A selector is `<fieldpath><operator><value>` or a bare field path
//! that tests for presence:
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)?
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z_][A-Za-z0-9_]*
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := a string between `"`, `/` or `|` with Go-style escapes
//! ```
//!
//! Snapshot fields are `name`, `parent`, `kind` (`active`, `view`,
//! `committed`) and `labels.<key>`; label keys with `.` or `/` in them are
//! quoted, e.g. `labels."containerd.io/gc.root"`. Matching follows containerd:
//! `!=` and `~=` compare against the empty string when the field is absent,
//! `==` requires the field to be present.
//!
//! Filters are parsed once into a typed tree ([`Filters`]) and then matched
//! against any number of [`Info`]s.

use regex::Regex;

use crate::error::{Error, Result};
use crate::types::Info;

/// A snapshot field a selector looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The key or name.
    Name,
    /// The parent's name (always present, possibly empty).
    Parent,
    /// `active`, `view` or `committed`.
    Kind,
    /// One label, by key.
    Label(String),
}

/// What a selector requires of its field.
#[derive(Debug, Clone)]
pub enum Operator {
    /// The field is present (a bare field path).
    Present,
    /// `==`: the field is present and equal to the value.
    Equal(String),
    /// `!=`: the field's value (empty when absent) differs from the value.
    NotEqual(String),
    /// `~=`: the field's value (empty when absent) matches the regex.
    Matches(Regex),
}

impl PartialEq for Operator {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Operator::Present, Operator::Present) => true,
            (Operator::Equal(a), Operator::Equal(b)) | (Operator::NotEqual(a), Operator::NotEqual(b)) => a == b,
            (Operator::Matches(a), Operator::Matches(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// One `<field><op><value>` test.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub field: Field,
    pub operator: Operator,
}

impl Selector {
    /// Whether `info` satisfies this selector.
    pub fn matches(&self, info: &Info) -> bool {
        let value: Option<&str> = match &self.field {
            Field::Name => Some(&info.name),
            Field::Parent => Some(&info.parent),
            Field::Kind => Some(info.kind.as_str()),
            Field::Label(key) => info.labels.get(key).map(String::as_str),
        };
        match &self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal(want) => value == Some(want.as_str()),
            Operator::NotEqual(want) => value.unwrap_or("") != want,
            Operator::Matches(re) => re.is_match(value.unwrap_or("")),
        }
    }
}

/// Selectors that must all match (one filter string). An empty filter
/// matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub selectors: Vec<Selector>,
}

impl Filter {
    /// Parses one filter string.
    pub fn parse(input: &str) -> Result<Filter> {
        Parser::new(input).filter().map_err(|e| {
            Error::invalid_argument(format!("invalid filter {input:?}: {e}"))
        })
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.selectors.iter().all(|s| s.matches(info))
    }
}

/// Filters of which any may match. No filters match everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filters {
    pub any: Vec<Filter>,
}

impl Filters {
    /// Parses every filter string; the first malformed one is an
    /// `InvalidArgument` error.
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<Filters> {
        let any = inputs.iter().map(|s| Filter::parse(s.as_ref())).collect::<Result<Vec<_>>>()?;
        Ok(Filters { any })
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.any.is_empty() || self.any.iter().any(|f| f.matches(info))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Eof,
    /// A quoted string, already unquoted.
    Quoted(String),
    /// An unquoted value (after an operator).
    Value(String),
    /// An identifier.
    Field(String),
    /// `,` or `.`.
    Separator(char),
    Operator(String),
    /// Anything else.
    Other(char),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// Set after an operator: the next word is scanned as a value.
    expect_value: bool,
    peeked: Option<(usize, std::result::Result<Token, String>)>,
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_field_char(c: char, first: bool) -> bool {
    c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { input, pos: 0, expect_value: false, peeked: None }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.rest().chars().next()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Scans the next token; returns its start offset.
    fn scan(&mut self) -> (usize, std::result::Result<Token, String>) {
        if let Some(t) = self.peeked.take() {
            return t;
        }
        while self.peek_char().is_some_and(char::is_whitespace) {
            self.bump();
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            return (start, Ok(Token::Eof));
        };
        let token = if is_quote(c) {
            self.expect_value = false;
            self.scan_quoted(c).map(Token::Quoted)
        } else if c == ',' || c == '.' {
            self.expect_value = false;
            Ok(Token::Separator(c))
        } else if matches!(c, '=' | '!' | '~') {
            while self.peek_char().is_some_and(|c| matches!(c, '=' | '!' | '~')) {
                self.bump();
            }
            self.expect_value = true;
            Ok(Token::Operator(self.input[start..self.pos].to_string()))
        } else if self.expect_value && is_value_char(c) {
            while self.peek_char().is_some_and(is_value_char) {
                self.bump();
            }
            self.expect_value = false;
            Ok(Token::Value(self.input[start..self.pos].to_string()))
        } else if is_field_char(c, true) {
            while self.peek_char().is_some_and(|c| is_field_char(c, false)) {
                self.bump();
            }
            Ok(Token::Field(self.input[start..self.pos].to_string()))
        } else {
            Ok(Token::Other(c))
        };
        (start, token)
    }

    fn peek(&mut self) -> std::result::Result<Token, String> {
        if self.peeked.is_none() {
            let t = self.scan();
            self.peeked = Some(t);
        }
        match &self.peeked {
            Some((_, t)) => t.clone(),
            None => Ok(Token::Eof),
        }
    }

    /// Scans a quoted string whose opening `quote` was consumed, decoding
    /// Go-style escapes.
    fn scan_quoted(&mut self, quote: char) -> std::result::Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err("quoted literal not terminated".into());
            };
            if c == quote {
                return Ok(out);
            }
            if c == '\n' {
                return Err("quoted literal not terminated".into());
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.bump() else {
                return Err("escape sequence not terminated".into());
            };
            match e {
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '\\' => out.push('\\'),
                e if e == quote => out.push(e),
                'x' => out.push(self.scan_code(2, 16)?),
                'u' => out.push(self.scan_code(4, 16)?),
                'U' => out.push(self.scan_code(8, 16)?),
                '0'..='7' => {
                    self.pos -= 1;
                    out.push(self.scan_code(3, 8)?);
                }
                other => {
                    // Regex escapes such as `\d` pass through unchanged, so
                    // that `name~=/\d+/` means what it says.
                    if quote != '"' {
                        out.push('\\');
                        out.push(other);
                    } else {
                        return Err(format!("unknown escape sequence \\{other}"));
                    }
                }
            }
        }
    }

    fn scan_code(&mut self, digits: usize, radix: u32) -> std::result::Result<char, String> {
        let mut n: u32 = 0;
        for _ in 0..digits {
            let d = self.bump().and_then(|c| c.to_digit(radix)).ok_or("invalid escape sequence")?;
            n = n * radix + d;
        }
        char::from_u32(n).ok_or_else(|| "escape sequence is an invalid character".to_string())
    }

    fn err_at(&self, pos: usize, msg: impl std::fmt::Display) -> String {
        format!("at offset {pos}: {msg}")
    }

    fn filter(&mut self) -> std::result::Result<Filter, String> {
        if self.input.trim().is_empty() {
            return Ok(Filter::default());
        }
        let mut selectors = vec![self.selector()?];
        loop {
            match self.peek()? {
                Token::Separator(',') => {
                    let _ = self.scan();
                    selectors.push(self.selector()?);
                }
                Token::Eof => break,
                other => {
                    let (pos, _) = self.scan();
                    return Err(self.err_at(pos, format!("unexpected input {}", describe(&other))));
                }
            }
        }
        Ok(Filter { selectors })
    }

    fn selector(&mut self) -> std::result::Result<Selector, String> {
        let start = self.pos;
        let path = self.fieldpath()?;
        let field = match path.first().map(String::as_str) {
            Some("name") if path.len() == 1 => Field::Name,
            Some("parent") if path.len() == 1 => Field::Parent,
            Some("kind") if path.len() == 1 => Field::Kind,
            Some("labels") if path.len() > 1 => Field::Label(path[1..].join(".")),
            _ => {
                return Err(self.err_at(
                    start,
                    format!(
                        "unknown field {:?} (expected name, parent, kind or labels.<key>)",
                        path.join(".")
                    ),
                ))
            }
        };
        match self.peek()? {
            Token::Separator(',') | Token::Eof => {
                return Ok(Selector { field, operator: Operator::Present });
            }
            _ => {}
        }
        let (pos, tok) = self.scan();
        let op = match tok? {
            Token::Operator(op) if op == "==" || op == "!=" || op == "~=" => op,
            Token::Operator(op) => return Err(self.err_at(pos, format!("unsupported operator {op:?}"))),
            other => {
                return Err(self.err_at(
                    pos,
                    format!("expected an operator (\"==\", \"!=\" or \"~=\"), found {}", describe(&other)),
                ))
            }
        };
        let (pos, tok) = self.scan();
        let value = match tok? {
            Token::Value(v) | Token::Field(v) | Token::Quoted(v) => v,
            other => return Err(self.err_at(pos, format!("expected a value after {op}, found {}", describe(&other)))),
        };
        let operator = match op.as_str() {
            "==" => Operator::Equal(value),
            "!=" => Operator::NotEqual(value),
            _ => Operator::Matches(
                Regex::new(&value).map_err(|e| self.err_at(pos, format!("invalid regular expression: {e}")))?,
            ),
        };
        Ok(Selector { field, operator })
    }

    fn fieldpath(&mut self) -> std::result::Result<Vec<String>, String> {
        let mut path = vec![self.field()?];
        while self.peek()? == Token::Separator('.') {
            let _ = self.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> std::result::Result<String, String> {
        let (pos, tok) = self.scan();
        match tok.map_err(|e| self.err_at(pos, e))? {
            Token::Field(f) | Token::Quoted(f) => Ok(f),
            other => Err(self.err_at(pos, format!("expected a field name or quoted string, found {}", describe(&other)))),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Eof => "end of input".into(),
        Token::Quoted(s) => format!("quoted string {s:?}"),
        Token::Value(s) | Token::Field(s) => format!("{s:?}"),
        Token::Separator(c) | Token::Other(c) => format!("{c:?}"),
        Token::Operator(s) => format!("operator {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Kind, Labels};
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Labels>(),
        }
    }

    fn sel(field: Field, operator: Operator) -> Selector {
        Selector { field, operator }
    }

    #[test]
    fn parses_typed_selectors() {
        let f = Filter::parse(r#"name==foo,parent!="",kind==active,labels."containerd.io/gc.root",labels.l~=^a.*$"#)
            .expect("parses");
        assert_eq!(f.selectors.len(), 5);
        assert_eq!(f.selectors[0], sel(Field::Name, Operator::Equal("foo".into())));
        assert_eq!(f.selectors[1], sel(Field::Parent, Operator::NotEqual(String::new())));
        assert_eq!(f.selectors[2], sel(Field::Kind, Operator::Equal("active".into())));
        assert_eq!(f.selectors[3], sel(Field::Label("containerd.io/gc.root".into()), Operator::Present));
        assert_eq!(f.selectors[4].field, Field::Label("l".into()));
        assert!(matches!(&f.selectors[4].operator, Operator::Matches(re) if re.as_str() == "^a.*$"));
    }

    #[test]
    fn unquoted_values_take_graphic_chars_except_comma() {
        let f = Filter::parse("name==sha256:abc/def@x+y,kind==committed").expect("parses");
        assert_eq!(f.selectors[0], sel(Field::Name, Operator::Equal("sha256:abc/def@x+y".into())));
        assert_eq!(f.selectors.len(), 2);
        let f = Filter::parse("name == spaced , kind==view").expect("whitespace between tokens");
        assert_eq!(f.selectors[0], sel(Field::Name, Operator::Equal("spaced".into())));
    }

    #[test]
    fn alternative_quotes_and_escapes() {
        let f = Filter::parse(r#"labels.|a.b|==x,name~=/fo\/o\d/,labels."q\"k"=="v\tw""#).expect("parses");
        assert_eq!(f.selectors[0].field, Field::Label("a.b".into()));
        assert!(matches!(&f.selectors[1].operator, Operator::Matches(re) if re.as_str() == r"fo/o\d"));
        assert_eq!(f.selectors[2], sel(Field::Label("q\"k".into()), Operator::Equal("v\tw".into())));
        let f = Filter::parse(r#"labels."a".b==1"#).expect("multi-part label key");
        assert_eq!(f.selectors[0].field, Field::Label("a.b".into()));
    }

    #[test]
    fn malformed_filters_are_invalid_argument() {
        for bad in [
            "name==",
            r#"labels."x==y"#,
            "name=foo",
            "name===foo",
            "name==a b",
            "==x",
            "name==a,",
            ",name==a",
            "labels",
            "size==1",
            "name~=(",
            "name!~x",
            "labels.\"k\\q\"==1",
            "name.x==1",
        ] {
            let err = Filter::parse(bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(err.message().contains("invalid filter"), "{bad}: {err}");
        }
        let err = Filters::parse(&["name==a", "kind=="]).expect_err("second filter is bad");
        assert!(err.message().contains("kind=="), "{err}");
    }

    #[test]
    fn matching_follows_containerd() {
        let a = info("a", "p", Kind::Active, &[("l", "2"), ("containerd.io/gc.root", "x")]);
        let p = info("p", "", Kind::Committed, &[("containerd.io/gc.root", "x")]);
        let v = info("v", "p", Kind::View, &[]);
        let m = |f: &str, i: &Info| Filter::parse(f).expect(f).matches(i);

        assert!(m("", &a));
        assert!(m("kind==active", &a) && !m("kind==active", &p));
        assert!(m("kind==committed", &p) && m("kind==view", &v));
        assert!(m("parent==p", &a) && !m("parent==p", &p));
        assert!(m(r#"parent!="""#, &a) && !m(r#"parent!="""#, &p));
        // parent is always present, even when empty
        assert!(m("parent", &p));
        assert!(m("labels.l", &a) && !m("labels.l", &p));
        assert!(m("labels.l==2,kind==active", &a) && !m("labels.l==3,kind==active", &a));
        // absent label: == fails, != and ~= see the empty string
        assert!(!m("labels.l==2", &p));
        assert!(m("labels.l!=2", &p));
        assert!(m("labels.l~=^$", &p));
        assert!(m(r#"labels."containerd.io/gc.root"==x"#, &p));
        assert!(m("name~=^[ap]$", &a) && !m("name~=^[ap]$", &v));

        let any = Filters::parse(&["name==p", "name==v"]).expect("parses");
        assert!(any.matches(&p) && any.matches(&v) && !any.matches(&a));
        assert!(Filters::parse::<&str>(&[]).expect("empty").matches(&a));
    }
}
