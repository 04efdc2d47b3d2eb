//! The LISTEN side of PostgreSQL's notifications: other replicas' changes into the change
//! hub, appended events into the event feed, and a resync whenever the connection was lost.

use super::{CHANNEL, EVENTS_CHANNEL};
use crate::store::changes::{EventAppended, EventHub, EventSignal, Hub, Notice};
use crate::store::{StoreChange, StoreResult};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Listener reconnection backoff after PostgreSQL went away.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

pub(super) async fn listen(pool: &PgPool) -> StoreResult<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen_all([CHANNEL, EVENTS_CHANNEL]).await?;
    Ok(l)
}

/// Feeds other replicas' changes into the hub. Whenever the connection is lost, the
/// notifications sent meanwhile are gone, so once it is back (and listening again)
/// subscribers are told to resync.
pub(super) async fn run_listener(
    pool: PgPool,
    mut listener: PgListener,
    hub: Hub,
    events: EventHub,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) if n.channel() == EVENTS_CHANNEL => {
                match serde_json::from_str::<EventAppended>(n.payload()) {
                    Ok(a) => {
                        let _ = events.send(EventSignal::Appended(Arc::new(a)));
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed event notification"),
                }
            }
            Ok(Some(n)) => match serde_json::from_str::<Notice>(n.payload()) {
                Ok(notice) => {
                    let _ = hub.send(Arc::new(notice));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed change notification"),
            },
            // Lost, and already reconnected and listening again (sqlx's eager reconnect).
            Ok(None) => {
                tracing::warn!("PostgreSQL change listener reconnected; resyncing caches");
                missed_notifications(&hub, &events);
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL change listener lost its connection; reconnecting");
                let mut wait = RECONNECT_MIN;
                listener = loop {
                    tokio::time::sleep(wait).await;
                    match listen(&pool).await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::debug!(error = %e, "PostgreSQL still unreachable");
                            wait = (wait * 2).min(RECONNECT_MAX);
                        }
                    }
                };
                tracing::info!("PostgreSQL change listener reconnected; resyncing caches");
                missed_notifications(&hub, &events);
            }
        }
    }
}

/// The notifications sent while the connection was down are gone: caches resync, event
/// watchers re-read.
fn missed_notifications(hub: &Hub, events: &EventHub) {
    let _ = hub.send(Arc::new(Notice::new("", StoreChange::Resync)));
    let _ = events.send(EventSignal::Missed);
}
