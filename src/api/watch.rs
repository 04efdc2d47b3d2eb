//! `TokenService.WatchEvents`: a tenant's events as they happen, from every replica.
//!
//! A stream is one task (the pump) that owns the stream's cursor, the id of the last event
//! it handed on. It reads the store for the events after the cursor, oldest first, in pages;
//! then waits for a store announcement of an appended event of its tenant (PostgreSQL
//! NOTIFY from any replica, the in-process hub on SQLite), a heartbeat tick, the client
//! leaving or the server stopping, and reads again. Announcements only wake it: the rows
//! are read by id, so a lost announcement costs a delay until the next tick, never an
//! event; and ids become visible in increasing order on both backends (see
//! [`Store::events_after`]), so `id > cursor` skips nothing and repeats nothing.
//!
//! Bounds: a stream buffers at most [`BUFFER`] events for its client; one that falls that
//! far behind is ended with RESOURCE_EXHAUSTED and the cursor to resume from (the events
//! already buffered are delivered first), so a slow watcher costs the gateway a bounded
//! buffer and nothing else. A caller holds at most `server.max_watch_streams_per_caller`
//! streams at once. Streams end on shutdown (UNAVAILABLE with the cursor), so a graceful
//! shutdown never waits on them. tonic's `Server::timeout` bounds the time to a response's
//! headers only, so `server.request_timeout_seconds` does not cut a stream.

use super::auth::CallerId;
use super::convert::{kind_from_pb, timestamp};
use super::token_service::{decode_page_token, event_to_pb};
use crate::clock::Clock;
use crate::config::validate_id;
use crate::proto::v1 as pb;
use crate::store::{EventAppended, EventFeed, EventQuery, EventSignal, Store};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

/// Events a stream holds for a client that has not read them yet.
pub const BUFFER: usize = 256;

/// Events read from the store at once.
const PAGE: u32 = 128;

/// The trailing metadata key that carries the cursor to resume from when a stream ends.
pub const RESUME_AFTER: &str = "authgate-resume-after";

/// What a WatchEvents stream yields.
pub type WatchItem = Result<pb::WatchEventsResponse, Status>;
pub type WatchStream = ReceiverStream<WatchItem>;

/// Every WatchEvents stream of this gateway: their settings and per-caller count.
#[derive(Clone)]
pub struct Watchers {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    max_per_caller: usize,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Watchers {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_per_caller: usize,
        heartbeat: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            clock,
            max_per_caller,
            heartbeat,
            shutdown,
            open: Arc::default(),
        }
    }

    /// Opens a stream: checks the request, takes one of the caller's stream slots,
    /// subscribes to announcements before the start cursor is read (so nothing appended in
    /// between is missed), and starts the pump.
    pub async fn watch(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<WatchStream, Status> {
        let caller = request
            .extensions()
            .get::<CallerId>()
            .map_or_else(|| Arc::from("local"), |c| c.0.clone());
        let (query, after) = parse_request(request.into_inner())?;
        let slot = self.take_slot(caller)?;
        let feed = self.store.subscribe_events();
        let cursor = match after {
            Some(id) => id,
            None => self.store.last_event_id().await.map_err(|e| {
                Status::unavailable(format!("cannot read the event log ({e}); retry"))
            })?,
        };
        let (tx, rx) = mpsc::channel(BUFFER + 1);
        let pump = Pump {
            store: self.store.clone(),
            clock: self.clock.clone(),
            query,
            cursor,
            tx,
            _slot: slot,
        };
        tokio::spawn(pump.run(feed, self.heartbeat, self.shutdown.clone()));
        Ok(ReceiverStream::new(rx))
    }

    fn take_slot(&self, caller: Arc<str>) -> Result<Slot, Status> {
        let mut open = self.open.lock();
        let n = open.entry(caller.clone()).or_default();
        if *n >= self.max_per_caller {
            return Err(Status::resource_exhausted(format!(
                "this caller already has {} WatchEvents streams open, the most \
                 server.max_watch_streams_per_caller allows; close one first",
                *n
            )));
        }
        *n += 1;
        Ok(Slot {
            open: self.open.clone(),
            caller,
        })
    }
}

/// One of a caller's stream slots, given back when the pump ends.
struct Slot {
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    caller: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

/// The filter and the start cursor (`None`: live events only).
fn parse_request(r: pb::WatchEventsRequest) -> Result<(EventQuery, Option<i64>), Status> {
    validate_id("tenant", &r.tenant).map_err(|m| invalid("tenant", m))?;
    let credential_id = if r.credential_id.is_empty() {
        None
    } else {
        validate_id("credential_id", &r.credential_id).map_err(|m| invalid("credential_id", m))?;
        Some(r.credential_id)
    };
    let mut kinds = Vec::with_capacity(r.kinds.len().min(16));
    for k in &r.kinds {
        let kind = pb::EventKind::try_from(*k)
            .map_err(|_| invalid("kinds", format!("{k} is not an EventKind value")))?;
        if let Some(kind) = kind_from_pb(kind) {
            let name = kind.as_str().to_owned();
            if !kinds.contains(&name) {
                kinds.push(name);
            }
        }
    }
    let query = EventQuery {
        tenant: r.tenant,
        credential_id,
        kinds,
        ..Default::default()
    };
    Ok((query, parse_cursor(&r.after)?))
}

/// `after`: empty, an event id, or a ListEvents page token (the id of its page's last event).
fn parse_cursor(after: &str) -> Result<Option<i64>, Status> {
    if after.is_empty() {
        return Ok(None);
    }
    if after.bytes().all(|b| b.is_ascii_digit()) {
        return after
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid("after", "is not an event id this server issued (too large)"));
    }
    decode_page_token(after).map(|(_, id)| Some(id)).map_err(|_| {
        invalid(
            "after",
            "not a cursor; pass an event id (or a heartbeat's cursor), a ListEvents next_page_token, \"0\" for every retained event, or leave it empty for live events only",
        )
    })
}

/// Why a pump stopped.
enum End {
    /// The client went away: nobody to tell.
    Gone,
    /// Tell the client, after the events already buffered.
    Status(Status),
}

/// The task behind one stream.
struct Pump {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    query: EventQuery,
    /// The id of the last event handed to the stream (or of the start).
    cursor: i64,
    tx: mpsc::Sender<WatchItem>,
    _slot: Slot,
}

/// Resolves once shutdown is requested (the watch guard is not held across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What a pump waits on besides its client.
struct Wakers {
    feed: EventFeed,
    tick: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

impl Pump {
    async fn run(mut self, feed: EventFeed, heartbeat: Duration, shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; heartbeats start one interval from now.
        tick.tick().await;
        let mut wakers = Wakers {
            feed,
            tick,
            shutdown,
        };
        let end = loop {
            let sent = match self.catch_up().await {
                Ok(sent) => sent,
                Err(end) => break end,
            };
            if let Err(end) = self.wait(&mut wakers, sent).await {
                break end;
            }
        };
        if let End::Status(status) = end {
            // The reserved last slot: always room, unless the client is gone.
            let _ = self.tx.try_send(Err(status));
        }
    }

    /// Hands on every event after the cursor; how many.
    async fn catch_up(&mut self) -> Result<usize, End> {
        let mut sent = 0;
        loop {
            let page = self
                .store
                .events_after(&self.query, self.cursor, PAGE)
                .await
                .map_err(|e| {
                    End::Status(self.ended(
                        Code::Unavailable,
                        &format!("the event log cannot be read ({e})"),
                    ))
                })?;
            let full_page = page.len() == PAGE as usize;
            for ev in page {
                let id = ev.id;
                // One slot stays free for the status that ends the stream.
                if self.tx.capacity() <= 1 {
                    return Err(End::Status(self.ended(
                        Code::ResourceExhausted,
                        &format!("this watcher fell {BUFFER} events behind and was disconnected"),
                    )));
                }
                let item = pb::WatchEventsResponse {
                    item: Some(pb::watch_events_response::Item::Event(event_to_pb(ev))),
                };
                self.tx.try_send(Ok(item)).map_err(|_| End::Gone)?;
                self.cursor = id;
                sent += 1;
            }
            if !full_page {
                return Ok(sent);
            }
        }
    }

    /// Waits until there may be new events of this stream's filter; sends a heartbeat when
    /// a tick finds the stream idle since the last one.
    async fn wait(&self, w: &mut Wakers, sent: usize) -> Result<(), End> {
        let idle = sent == 0;
        loop {
            tokio::select! {
                () = self.tx.closed() => return Err(End::Gone),
                () = stopped(&mut w.shutdown) => {
                    return Err(End::Status(
                        self.ended(Code::Unavailable, "the server is shutting down"),
                    ));
                }
                signal = w.feed.next() => match signal {
                    None => {
                        return Err(End::Status(
                            self.ended(Code::Unavailable, "the event log closed"),
                        ));
                    }
                    Some(EventSignal::Appended(a)) if !self.wants(&a) => {}
                    Some(_) => return Ok(()),
                },
                _ = w.tick.tick() => {
                    if idle {
                        self.heartbeat()?;
                    }
                    // Also the re-read that catches an announcement that never arrived.
                    return Ok(());
                }
            }
        }
    }

    /// Whether an announced event may be one this stream sends and has not sent.
    fn wants(&self, a: &EventAppended) -> bool {
        a.id > self.cursor
            && a.tenant == self.query.tenant
            && self
                .query
                .credential_id
                .as_ref()
                .is_none_or(|c| *c == a.credential_id)
    }

    fn heartbeat(&self) -> Result<(), End> {
        if self.tx.capacity() <= 1 {
            // Not idle on the client's side: it has not read what it was sent.
            return Ok(());
        }
        let item = pb::WatchEventsResponse {
            item: Some(pb::watch_events_response::Item::Heartbeat(pb::Heartbeat {
                cursor: self.cursor.to_string(),
                server_time: Some(timestamp(self.clock.now_ms())),
            })),
        };
        self.tx.try_send(Ok(item)).map_err(|_| End::Gone)
    }

    /// The status that ends the stream, with the cursor to resume from in its message and
    /// in the trailing metadata [`RESUME_AFTER`].
    fn ended(&self, code: Code, why: &str) -> Status {
        let cursor = self.cursor.to_string();
        let mut status = Status::new(
            code,
            format!("{why}; reconnect with after = \"{cursor}\" to resume without a gap"),
        );
        if let Ok(v) = MetadataValue::try_from(cursor.as_str()) {
            status.metadata_mut().insert(RESUME_AFTER, v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::token_service::encode_page_token;

    #[test]
    fn cursors_are_ids_page_tokens_or_nothing() {
        assert_eq!(parse_cursor("").unwrap(), None);
        assert_eq!(parse_cursor("0").unwrap(), Some(0));
        assert_eq!(parse_cursor("42").unwrap(), Some(42));
        assert_eq!(
            parse_cursor(&encode_page_token(1_700_000_000_000, 17)).unwrap(),
            Some(17)
        );
        for bad in ["-1", "x1", "99999999999999999999", "1 2"] {
            let e = parse_cursor(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("after: "), "{}", e.message());
        }
    }

    #[test]
    fn requests_name_the_field_to_fix() {
        let bad = |r: pb::WatchEventsRequest| parse_request(r).unwrap_err().message().to_owned();
        assert!(bad(pb::WatchEventsRequest::default()).starts_with("tenant: "));
        assert!(bad(pb::WatchEventsRequest {
            tenant: "acme".into(),
            credential_id: "a b".into(),
            ..Default::default()
        })
        .starts_with("credential_id: "));
        assert!(bad(pb::WatchEventsRequest {
            tenant: "acme".into(),
            kinds: vec![99],
            ..Default::default()
        })
        .starts_with("kinds: "));
        let (q, after) = parse_request(pb::WatchEventsRequest {
            tenant: "acme".into(),
            kinds: vec![2, 2, 0],
            after: "5".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(q.kinds, vec!["token_issued".to_owned()]);
        assert_eq!(after, Some(5));
    }
}
