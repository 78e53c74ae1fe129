//! The event bus: every service reports what it did here, and `GET /events`
//! replays the bounded history and then follows new events.
//!
//! Events are kept in a ring of [`HISTORY_LIMIT`] entries so `--since` /
//! `--until` can replay the recent past, as dockerd does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::error::EngineError;
use crate::filters::Filters;

/// How many past events are kept for replay (dockerd keeps 256; a little
/// more costs nothing).
pub const HISTORY_LIMIT: usize = 1024;

/// How many events a slow subscriber may fall behind before it misses some.
const CHANNEL_CAPACITY: usize = 4096;

/// The object an event is about, in Docker's wire shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// One event, serialised exactly as dockerd sends it on `/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The event as one JSON line, once encoded.
    #[serde(skip)]
    line: EncodedLine,
    /// Legacy field: the action, for images and containers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Legacy field: the actor ID, for images and containers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Legacy field: the image of a container (or the image's own name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(rename = "Type")]
    pub typ: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    /// Unix seconds.
    pub time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

impl Event {
    /// Builds an event stamped with the current time.
    pub fn new(typ: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self::at(typ, action, id, attributes, nanos)
    }

    /// Builds an event with an explicit timestamp in unix nanoseconds.
    pub fn at(
        typ: &str,
        action: &str,
        id: &str,
        attributes: BTreeMap<String, String>,
        time_nano: i64,
    ) -> Self {
        // dockerd fills the legacy fields for images and containers only
        // (daemon/events/events.go).
        // (daemon/events/events.go): `from` is the image of a container event.
        let legacy = typ == "image" || typ == "container";
        let from = if typ == "container" { attributes.get("image").cloned() } else { None };
        Self {
            line: EncodedLine::default(),
            status: legacy.then(|| action.to_string()),
            id: legacy.then(|| id.to_string()),
            from,
            typ: typ.to_string(),
            action: action.to_string(),
            actor: Actor { id: id.to_string(), attributes },
            scope: "local".to_string(),
            time: time_nano.div_euclid(1_000_000_000),
            time_nano,
        }
    }
}

/// A cache of an event's encoding; not part of what the event is, so
/// events compare equal whether or not they were encoded.
#[derive(Debug, Clone, Default)]
struct EncodedLine(OnceLock<Bytes>);

impl PartialEq for EncodedLine {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EncodedLine {}

impl Event {
    /// The event as `/events` sends it: its JSON and a newline, encoded on
    /// first use and then shared.
    pub fn json_line(&self) -> Bytes {
        self.line
            .0
            .get_or_init(|| {
                let mut line = serde_json::to_vec(self).unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            })
            .clone()
    }
}

/// Filter keys matched on the actor ID or its `name` attribute, by exact
/// value or prefix, whatever the event type (dockerd's `fuzzyMatchName`).
const NAME_KEYS: &[&str] =
    &["container", "network", "volume", "plugin", "daemon", "service", "node", "secret", "config"];

/// Actions whose filter value matches by prefix (`exec_start: sh -c …`).
const PREFIX_ACTIONS: &[&str] = &["health_status", "exec_create", "exec_start"];

impl Event {
    /// Whether the event passes `filters`: different keys are ANDed, values
    /// of one key ORed, except `label` where every value must match.
    pub fn matches(&self, filters: &Filters) -> bool {
        if !filters.exact_match("type", &self.typ) || !filters.exact_match("scope", &self.scope) {
            return false;
        }
        if filters.contains("event") {
            let ok = filters.get("event").iter().any(|want| {
                *want == self.action
                    || (PREFIX_ACTIONS.contains(want) && self.action.starts_with(want))
            });
            if !ok {
                return false;
            }
        }
        for key in NAME_KEYS {
            if filters.contains(key) {
                let name = self.actor.attributes.get("name").map(String::as_str).unwrap_or("");
                let ok = filters.get(key).iter().any(|want| {
                    fuzzy(&self.actor.id, want) || (!name.is_empty() && fuzzy(name, want))
                });
                if !ok {
                    return false;
                }
            }
        }
        if filters.contains("image") {
            let attr = if self.typ == "image" { "name" } else { "image" };
            let name = self.actor.attributes.get(attr).map(String::as_str).unwrap_or("");
            let candidates = [
                self.actor.id.clone(),
                name.to_string(),
                strip_tag(&self.actor.id),
                strip_tag(name),
            ];
            let ok = filters
                .get("image")
                .iter()
                .any(|want| candidates.iter().any(|c| !c.is_empty() && c == want));
            if !ok {
                return false;
            }
        }
        filters.match_labels("label", &self.actor.attributes)
    }
}

fn fuzzy(source: &str, want: &str) -> bool {
    source == want || source.starts_with(want)
}

/// `docker.io/library/busybox:latest` → `busybox`; digests and IDs are kept.
fn strip_tag(reference: &str) -> String {
    if reference.is_empty() || reference.starts_with("sha256:") || reference.contains('@') {
        return reference.to_string();
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let name = match reference[last_slash..].rfind(':') {
        Some(colon) => &reference[..last_slash + colon],
        None => reference,
    };
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name).to_string()
}

/// Parses an events `since`/`until` value: unix `seconds[.fraction]`, as
/// the clients send it. Returns unix nanoseconds.
pub fn parse_timestamp(text: &str) -> Result<i64, EngineError> {
    let bad = || EngineError::invalid(format!("invalid timestamp {text:?}: expected unix seconds[.nanoseconds]"));
    let text = text.trim();
    let (secs, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let (negative, digits) = match secs.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, secs),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: i64 = digits.parse().map_err(|_| bad())?;
    let nanos: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    let total = seconds.checked_mul(1_000_000_000).and_then(|s| s.checked_add(nanos)).ok_or_else(bad)?;
    Ok(if negative { -total } else { total })
}

struct Inner {
    history: Mutex<VecDeque<Arc<Event>>>,
    sender: broadcast::Sender<Arc<Event>>,
}

/// The engine's event bus. Cheap to clone: all clones share one history and
/// one set of subscribers.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscribers", &self.inner.sender.receiver_count()).finish()
    }
}

/// A live subscription: the history at the moment of subscribing, then every
/// later event in order, with nothing lost or repeated between the two.
pub struct Subscription {
    pub history: Vec<Arc<Event>>,
    pub receiver: broadcast::Receiver<Arc<Event>>,
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self { inner: Arc::new(Inner { history: Mutex::new(VecDeque::new()), sender }) }
    }

    /// Records an event and delivers it to every subscriber. `typ` is
    /// Docker's event Type ("image", "container", "volume", "network",
    /// "daemon", ...), `action` its Action ("pull", "tag", "delete", ...).
    pub fn emit(&self, typ: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        self.publish(Event::new(typ, action, id, attributes));
    }

    /// Records an already-built event and delivers it.
    pub fn publish(&self, event: Event) {
        tracing::debug!(r#type = %event.typ, action = %event.action, id = %event.actor.id, "event");
        // The lock is held while sending so a concurrent `subscribe` sees the
        // event either in its history or on its receiver, never both or neither.
        // Shared, not copied, by the history and every subscriber; its JSON
        // line is encoded once, by the first subscriber that sends it.
        let event = Arc::new(event);
        let mut history = self.lock();
        if history.len() >= HISTORY_LIMIT {
            history.pop_front();
        }
        history.push_back(event.clone());
        // An error only means nobody is listening right now.
        let _ = self.inner.sender.send(event);
    }

    /// Subscribes to the bus: the current history plus a receiver of every
    /// event emitted afterwards.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with(|_| true)
    }

    /// Subscribes to the bus with only the past events `keep` selects (a
    /// live-only subscriber copies none of the history).
    pub fn subscribe_with(&self, keep: impl Fn(&Event) -> bool) -> Subscription {
        let history = self.lock();
        let receiver = self.inner.sender.subscribe();
        Subscription { history: history.iter().filter(|e| keep(e)).cloned().collect(), receiver }
    }

    /// A copy of the bounded history, oldest first.
    pub fn history(&self) -> Vec<Arc<Event>> {
        self.lock().iter().cloned().collect()
    }

    /// How many clients currently follow the bus.
    pub fn subscriber_count(&self) -> usize {
        self.inner.sender.receiver_count()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Event>>> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (push and pop are single steps), so a poisoned lock is still usable.
        self.inner.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(typ: &str, action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        let attributes = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Event::at(typ, action, id, attributes, 1)
    }

    #[test]
    fn filter_semantics() {
        let tag = ev("image", "tag", "sha256:aaa", &[("name", "docker.io/library/busybox:latest"), ("x", "1")]);
        let start = ev("container", "start", "c0ffee", &[("image", "busybox"), ("name", "web")]);
        let exec = ev("container", "exec_start: sh -c true", "c0ffee", &[("name", "web")]);
        let f = |pairs: &[(&str, &str)]| Filters::from_pairs(pairs.iter().copied());

        assert!(tag.matches(&Filters::default()));
        assert!(tag.matches(&f(&[("type", "image")])));
        assert!(!start.matches(&f(&[("type", "image")])));
        assert!(tag.matches(&f(&[("type", "image"), ("type", "container")])));
        assert!(tag.matches(&f(&[("event", "tag"), ("event", "untag")])));
        assert!(!tag.matches(&f(&[("event", "delete")])));
        assert!(exec.matches(&f(&[("event", "exec_start")])));
        assert!(!start.matches(&f(&[("event", "sta")])));
        // image: ID, name, and name without tag
        assert!(tag.matches(&f(&[("image", "busybox")])));
        assert!(tag.matches(&f(&[("image", "sha256:aaa")])));
        assert!(start.matches(&f(&[("image", "busybox")])));
        assert!(!tag.matches(&f(&[("image", "alpine")])));
        // container: prefix of ID or name, any type
        assert!(start.matches(&f(&[("container", "c0f")])));
        assert!(start.matches(&f(&[("container", "we")])));
        assert!(!start.matches(&f(&[("container", "db")])));
        // label: all must match
        assert!(tag.matches(&f(&[("label", "x=1")])));
        assert!(!tag.matches(&f(&[("label", "x=1"), ("label", "y")])));
        // keys are ANDed
        assert!(!tag.matches(&f(&[("type", "image"), ("event", "delete")])));
        assert!(tag.matches(&f(&[("scope", "local")])));
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1700000000").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(parse_timestamp("1700000000.5").unwrap(), 1_700_000_000_500_000_000);
        assert_eq!(parse_timestamp("1748736000.000000001").unwrap(), 1_748_736_000_000_000_001);
        for bad in ["", "abc", "1.2.3", "1.0000000001", "1e9", "99999999999999999999"] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn legacy_fields_only_for_images_and_containers() {
        let mut attrs = BTreeMap::new();
        attrs.insert("name".to_string(), "busybox:latest".to_string());
        let e = Event::at("image", "tag", "sha256:abc", attrs, 1_700_000_000_123_456_789);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], "tag");
        assert_eq!(v["id"], "sha256:abc");
        assert!(v.get("from").is_none());
        assert_eq!(v["Type"], "image");
        assert_eq!(v["Actor"]["ID"], "sha256:abc");
        assert_eq!(v["scope"], "local");
        assert_eq!(v["time"], 1_700_000_000);
        assert_eq!(v["timeNano"], 1_700_000_000_123_456_789i64);

        let mut attrs = BTreeMap::new();
        attrs.insert("image".to_string(), "busybox".to_string());
        let e = Event::at("container", "start", "c1", attrs, 5);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["from"], "busybox");
        assert_eq!(v["status"], "start");

        let e = Event::at("daemon", "reload", "x", BTreeMap::new(), 5);
        let v = serde_json::to_value(&e).unwrap();
        assert!(v.get("status").is_none());
        assert!(v.get("id").is_none());
        assert!(v.get("from").is_none());
    }

    #[test]
    fn an_event_is_encoded_once_and_shared() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe();
        let mut attrs = BTreeMap::new();
        attrs.insert("name".to_string(), "busybox:latest".to_string());
        bus.emit("image", "tag", "sha256:1", attrs);
        let received = sub.receiver.try_recv().expect("delivered");
        let kept = &bus.history()[0];
        assert!(Arc::ptr_eq(&received, kept), "subscribers share the history's event");
        let line = received.json_line();
        let mut expected = serde_json::to_vec(&*received).expect("json");
        expected.push(b'\n');
        assert_eq!(&line[..], &expected[..]);
        assert_eq!(line.as_ptr(), kept.json_line().as_ptr(), "encoded once");
        let fresh = Event::at("image", "tag", "sha256:1", BTreeMap::new(), 5);
        let encoded = fresh.clone();
        encoded.json_line();
        assert_eq!(fresh, encoded, "the cached encoding is not part of equality");
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let bus = EventBus::new();
        for i in 0..HISTORY_LIMIT + 10 {
            bus.emit("image", "tag", &i.to_string(), BTreeMap::new());
        }
        let h = bus.history();
        assert_eq!(h.len(), HISTORY_LIMIT);
        assert_eq!(h[0].actor.id, "10");
        assert_eq!(h[HISTORY_LIMIT - 1].actor.id, (HISTORY_LIMIT + 9).to_string());
    }

    #[tokio::test]
    async fn subscription_sees_history_then_live_events() {
        let bus = EventBus::new();
        bus.emit("image", "import", "a", BTreeMap::new());
        let mut sub = bus.subscribe();
        bus.clone().emit("image", "delete", "b", BTreeMap::new());
        assert_eq!(sub.history.len(), 1);
        assert_eq!(sub.history[0].actor.id, "a");
        let next = sub.receiver.recv().await.unwrap();
        assert_eq!(next.actor.id, "b");
        assert_eq!(next.action, "delete");
    }
}
