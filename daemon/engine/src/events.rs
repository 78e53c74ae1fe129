//! The event bus: every service reports what it did here, and `GET /events`
//! replays the bounded history and then follows new events.
//!
//! Events are kept in a ring of [`HISTORY_LIMIT`] entries so `--since` /
//! `--until` can replay the recent past, as dockerd does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

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

struct Inner {
    history: Mutex<VecDeque<Event>>,
    sender: broadcast::Sender<Event>,
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
    pub history: Vec<Event>,
    pub receiver: broadcast::Receiver<Event>,
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
        let history = self.lock();
        let receiver = self.inner.sender.subscribe();
        Subscription { history: history.iter().cloned().collect(), receiver }
    }

    /// A copy of the bounded history, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.lock().iter().cloned().collect()
    }

    /// How many clients currently follow the bus.
    pub fn subscriber_count(&self) -> usize {
        self.inner.sender.receiver_count()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (push and pop are single steps), so a poisoned lock is still usable.
        self.inner.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
