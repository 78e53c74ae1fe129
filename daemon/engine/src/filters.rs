//! Docker's `filters` query parameter.
//!
//! It arrives as JSON in two shapes: the CLI sends a map of sets,
//! `{"type":{"image":true}}`, docker-py the legacy map of lists,
//! `{"type":["image"]}`. Both parse to the same [`Filters`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::EngineError;

/// Parsed filters: key to the set of values given for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    terms: BTreeMap<String, BTreeSet<String>>,
}

impl Filters {
    /// Parses the raw (already percent-decoded) `filters` value; `None` or
    /// an empty string means no filter.
    pub fn parse(raw: Option<&str>) -> Result<Self, EngineError> {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(Self::default());
        };
        let bad = |detail: &str| EngineError::invalid(format!("invalid filter: {detail}"));
        let value: Value = serde_json::from_str(raw).map_err(|e| bad(&e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(bad("expected a JSON object"));
        };
        let mut terms = BTreeMap::new();
        for (key, value) in map {
            let mut values = BTreeSet::new();
            match value {
                Value::Array(items) => {
                    for item in items {
                        match item {
                            Value::String(s) => {
                                values.insert(s);
                            }
                            other => return Err(bad(&format!("{key}: expected strings, found {other}"))),
                        }
                    }
                }
                Value::Object(set) => {
                    for (item, flag) in set {
                        match flag {
                            Value::Bool(true) => {
                                values.insert(item);
                            }
                            Value::Bool(false) => {}
                            other => {
                                return Err(bad(&format!("{key}: expected true or false for {item:?}, found {other}")))
                            }
                        }
                    }
                }
                Value::Null => {}
                other => return Err(bad(&format!("{key}: expected a list or a set, found {other}"))),
            }
            terms.insert(key, values);
        }
        Ok(Self { terms })
    }

    /// Builds filters from pairs (for tests and internal callers).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut terms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (k, v) in pairs {
            terms.entry(k.to_string()).or_default().insert(v.to_string());
        }
        Self { terms }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.values().all(BTreeSet::is_empty)
    }

    /// Whether `key` was given with at least one value.
    pub fn contains(&self, key: &str) -> bool {
        self.terms.get(key).is_some_and(|v| !v.is_empty())
    }

    /// The values given for `key` (empty when absent).
    pub fn get(&self, key: &str) -> Vec<&str> {
        self.terms.get(key).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// The keys given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.terms.keys().map(String::as_str)
    }

    /// Refuses keys outside `allowed`, with dockerd's message.
    pub fn validate(&self, allowed: &[&str]) -> Result<(), EngineError> {
        match self.keys().find(|k| !allowed.contains(k)) {
            Some(k) => Err(EngineError::invalid(format!("invalid filter '{k}'"))),
            None => Ok(()),
        }
    }

    /// True when `key` is absent or one of its values equals `value`.
    pub fn exact_match(&self, key: &str, value: &str) -> bool {
        match self.terms.get(key) {
            Some(values) if !values.is_empty() => values.contains(value),
            _ => true,
        }
    }

    /// Docker's label rule: every `label` value must be present among
    /// `labels` (`key`), and equal where given as `key=value`. True when no
    /// label filter is given.
    pub fn match_labels(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(key).iter().all(|want| match want.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
            None => labels.contains_key(*want),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_parse_the_same() {
        let a = Filters::parse(Some(r#"{"type":{"image":true},"event":{"tag":true,"untag":true}}"#)).unwrap();
        let b = Filters::parse(Some(r#"{"type":["image"],"event":["untag","tag"]}"#)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("event"), vec!["tag", "untag"]);
        assert!(a.contains("type"));
        assert!(!a.contains("label"));
        assert!(Filters::parse(None).unwrap().is_empty());
        assert!(Filters::parse(Some("")).unwrap().is_empty());
        // false entries are not values
        let c = Filters::parse(Some(r#"{"type":{"image":false}}"#)).unwrap();
        assert!(!c.contains("type"));
    }

    #[test]
    fn bad_filters_are_refused() {
        for raw in ["nope", "[1]", r#"{"type":"image"}"#, r#"{"type":[1]}"#, r#"{"type":{"x":1}}"#] {
            let err = Filters::parse(Some(raw)).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{raw}");
        }
        let f = Filters::from_pairs([("bogus", "1")]);
        assert_eq!(f.validate(&["label"]).unwrap_err().message(), "invalid filter 'bogus'");
    }

    #[test]
    fn labels_are_anded() {
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "1".to_string());
        labels.insert("b".to_string(), "2".to_string());
        assert!(Filters::from_pairs([("label", "a"), ("label", "b=2")]).match_labels("label", &labels));
        assert!(!Filters::from_pairs([("label", "a"), ("label", "c")]).match_labels("label", &labels));
        assert!(!Filters::from_pairs([("label", "a=2")]).match_labels("label", &labels));
        assert!(Filters::default().match_labels("label", &labels));
    }
}
