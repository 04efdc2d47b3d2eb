//! Change notifications between store handles on one database: how a revocation or a
//! credential change made by one replica reaches the memory of every other replica.
//!
//! PostgreSQL carries them with LISTEN/NOTIFY; SQLite, which has no such thing, with an
//! in-process hub per database file (so two handles in one process behave like two
//! replicas, and the shared store suite can check both backends the same way).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};
use tokio::sync::broadcast;

/// Something another handle committed that memory caches must follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum StoreChange {
    /// A credential was created, replaced, deleted or changed status: re-read it.
    CredentialChanged {
        #[serde(rename = "t")]
        tenant: String,
        #[serde(rename = "c")]
        credential_id: String,
    },
    /// Tokens were deleted (revoked): one scope key, or all of the credential with `None`.
    TokensDeleted {
        #[serde(rename = "t")]
        tenant: String,
        #[serde(rename = "c")]
        credential_id: String,
        #[serde(rename = "s")]
        scope_key: Option<String>,
    },
    /// A replica stored a new token for a cache key (under its refresh lease): the others
    /// adopt it instead of serving an older copy until their own refresh.
    TokenStored {
        #[serde(rename = "t")]
        tenant: String,
        #[serde(rename = "c")]
        credential_id: String,
        #[serde(rename = "s")]
        scope_key: String,
    },
    /// A refresh lease was given back: whoever waits for it may try again now.
    LeaseReleased {
        #[serde(rename = "t")]
        tenant: String,
        #[serde(rename = "c")]
        credential_id: String,
    },
    /// Notifications may have been missed (the connection to the database was lost, or
    /// this receiver fell behind): re-read everything that is cached.
    Resync,
}

/// A change with the handle that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Notice {
    #[serde(rename = "o")]
    pub origin: String,
    #[serde(flatten)]
    pub change: StoreChange,
}

/// NOTIFY payloads are limited to 8000 bytes; a scope key longer than this is announced
/// as "all scopes of the credential", which drops more than needed but never too little.
pub(crate) const MAX_SCOPE_KEY_IN_NOTICE: usize = 4000;

impl Notice {
    pub fn new(origin: &str, mut change: StoreChange) -> Self {
        if let StoreChange::TokensDeleted { scope_key, .. } = &mut change {
            if scope_key
                .as_ref()
                .is_some_and(|k| k.len() > MAX_SCOPE_KEY_IN_NOTICE)
            {
                *scope_key = None;
            }
        }
        Self {
            origin: origin.to_owned(),
            change,
        }
    }
}

pub(crate) type Hub = broadcast::Sender<Arc<Notice>>;

/// How many unread changes a subscriber may fall behind before it is told to resync.
const HUB_CAPACITY: usize = 1024;

pub(crate) fn new_hub() -> Hub {
    broadcast::channel(HUB_CAPACITY).0
}

/// The changes other handles make, as a subscriber sees them.
pub struct ChangeStream {
    rx: broadcast::Receiver<Arc<Notice>>,
    own: Arc<str>,
}

impl ChangeStream {
    pub(crate) fn new(hub: &Hub, own: Arc<str>) -> Self {
        Self {
            rx: hub.subscribe(),
            own,
        }
    }

    /// The next change made by another handle; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<StoreChange> {
        loop {
            match self.rx.recv().await {
                Ok(n) if *n.origin == *self.own => continue,
                Ok(n) => return Some(n.change.clone()),
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(StoreChange::Resync),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// An event was appended (by any handle, this one included): watchers of its tenant read
/// the events after their cursor from the store. The announcement only wakes them; the rows
/// are the truth, so a lost or merged announcement delays an event, never loses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAppended {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "c")]
    pub credential_id: String,
    #[serde(rename = "i")]
    pub id: i64,
}

/// What an [`EventFeed`] hands a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSignal {
    Appended(Arc<EventAppended>),
    /// Announcements were missed (this feed fell behind, or the database connection was
    /// lost): whatever the watcher filters for may have been appended.
    Missed,
}

/// Event announcements travel apart from [`StoreChange`]s: a burst of events must not push
/// the credential followers into a resync.
pub(crate) type EventHub = broadcast::Sender<EventSignal>;

/// How many announcements a watcher may fall behind before it is told it missed some.
const EVENT_HUB_CAPACITY: usize = 1024;

pub(crate) fn new_event_hub() -> EventHub {
    broadcast::channel(EVENT_HUB_CAPACITY).0
}

/// Announcements of appended events, every handle's own included.
pub struct EventFeed {
    rx: broadcast::Receiver<EventSignal>,
}

impl EventFeed {
    pub(crate) fn new(hub: &EventHub) -> Self {
        Self {
            rx: hub.subscribe(),
        }
    }

    /// The next announcement; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<EventSignal> {
        match self.rx.recv().await {
            Ok(signal) => Some(signal),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(EventSignal::Missed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// One event hub per SQLite database file in this process, like [`process_hub`].
static SQLITE_EVENT_HUBS: LazyLock<Mutex<HashMap<String, Weak<EventHub>>>> =
    LazyLock::new(Default::default);

/// The event hub shared by every handle of the database named `key` in this process.
pub(crate) fn process_event_hub(key: &str) -> Arc<EventHub> {
    let mut hubs = SQLITE_EVENT_HUBS.lock();
    hubs.retain(|_, h| h.strong_count() > 0);
    if let Some(h) = hubs.get(key).and_then(Weak::upgrade) {
        return h;
    }
    let h = Arc::new(new_event_hub());
    hubs.insert(key.to_owned(), Arc::downgrade(&h));
    h
}

/// One hub per SQLite database file in this process. Handles keep their hub alive; the
/// registry only remembers it weakly.
static SQLITE_HUBS: LazyLock<Mutex<HashMap<String, Weak<Hub>>>> = LazyLock::new(Default::default);

/// The hub shared by every handle of the database named `key` in this process.
pub(crate) fn process_hub(key: &str) -> Arc<Hub> {
    let mut hubs = SQLITE_HUBS.lock();
    hubs.retain(|_, h| h.strong_count() > 0);
    if let Some(h) = hubs.get(key).and_then(Weak::upgrade) {
        return h;
    }
    let h = Arc::new(new_hub());
    hubs.insert(key.to_owned(), Arc::downgrade(&h));
    h
}

/// The longest instance id: PostgreSQL keeps `application_name` to 63 bytes and a replica's
/// sessions carry `authgate ` and its id there (see `postgres.rs`, `holder_is_alive`).
pub(crate) const MAX_INSTANCE_ID: usize = 54;

/// A name for one store handle: host, process and a random part, so lease holders can be
/// told apart in the database and a handle can recognise its own notifications. ASCII and at
/// most [`MAX_INSTANCE_ID`] bytes (a long or non-ASCII host name is shortened).
pub(crate) fn new_instance_id() -> Arc<str> {
    use rand::Rng;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "authgate".into());
    let tag: u32 = rand::thread_rng().gen();
    let tail = format!(":{}:{tag:08x}", std::process::id());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(MAX_INSTANCE_ID - tail.len())
        .collect();
    format!("{host}{tail}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_fit_in_an_application_name() {
        let id = new_instance_id();
        assert!(id.len() <= MAX_INSTANCE_ID && id.is_ascii(), "{id}");
        assert_ne!(id, new_instance_id());
    }

    #[test]
    fn notice_round_trips_as_compact_json() {
        let n = Notice::new(
            "a",
            StoreChange::TokensDeleted {
                tenant: "t".into(),
                credential_id: "c".into(),
                scope_key: Some("read write".into()),
            },
        );
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(
            json,
            r#"{"o":"a","k":"tokens_deleted","t":"t","c":"c","s":"read write"}"#
        );
        let back: Notice = serde_json::from_str(&json).unwrap();
        assert_eq!(back.change, n.change);
    }

    #[test]
    fn long_scope_key_widens_to_all_scopes() {
        let n = Notice::new(
            "a",
            StoreChange::TokensDeleted {
                tenant: "t".into(),
                credential_id: "c".into(),
                scope_key: Some("x".repeat(5000)),
            },
        );
        assert!(matches!(
            n.change,
            StoreChange::TokensDeleted {
                scope_key: None,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn event_feed_sees_every_handle_and_reports_lag() {
        let hub = new_event_hub();
        let mut feed = EventFeed::new(&hub);
        let a = Arc::new(EventAppended {
            tenant: "t".into(),
            credential_id: "c".into(),
            id: 7,
        });
        let _ = hub.send(EventSignal::Appended(a.clone()));
        assert_eq!(feed.next().await, Some(EventSignal::Appended(a.clone())));
        for _ in 0..EVENT_HUB_CAPACITY + 1 {
            let _ = hub.send(EventSignal::Appended(a.clone()));
        }
        assert_eq!(feed.next().await, Some(EventSignal::Missed));
        assert_eq!(
            serde_json::to_string(&*a).unwrap(),
            r#"{"t":"t","c":"c","i":7}"#
        );
    }

    #[tokio::test]
    async fn own_changes_are_not_delivered_and_lag_means_resync() {
        let hub = new_hub();
        let mut mine = ChangeStream::new(&hub, "me".into());
        let change = StoreChange::LeaseReleased {
            tenant: "t".into(),
            credential_id: "c".into(),
        };
        let _ = hub.send(Arc::new(Notice::new("me", change.clone())));
        let _ = hub.send(Arc::new(Notice::new("other", change.clone())));
        assert_eq!(mine.next().await, Some(change.clone()));
        for _ in 0..HUB_CAPACITY + 1 {
            let _ = hub.send(Arc::new(Notice::new("other", change.clone())));
        }
        assert_eq!(mine.next().await, Some(StoreChange::Resync));
    }
}
