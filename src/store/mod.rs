//! Durable state behind one trait: credentials, refresh tokens, the last token per cache
//! key, and events. Values arrive here already encrypted (see [`crypto`]); a backend only
//! stores bytes, so SQLite and PostgreSQL cannot differ in what they protect.
//!
//! Replicas sharing one database coordinate through it: a per-credential refresh lease with
//! a fencing number (only the current holder's result is written), and change notifications
//! (revocations and credential changes made by one handle reach every other handle).

pub mod changes;
pub mod crypto;
mod outbox;
pub mod postgres;
mod rows;
pub mod secrets;
pub mod sqlite;

pub use changes::{ChangeStream, EventAppended, EventFeed, EventSignal, StoreChange};

use crate::clock::UnixMillis;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A credential's lifecycle state. Stored by its `as_str` name; any other stored text is
/// a data error ([`StoreError::Data`]), never a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialStatus {
    Active,
    /// Needs the provider's consent step (`StartAuthorization`) before it can issue tokens.
    NeedsAuthorization,
    /// The provider rejected it (`invalid_grant`, `invalid_client`, ...).
    Invalid,
}

impl CredentialStatus {
    pub const ALL: [Self; 3] = [Self::Active, Self::NeedsAuthorization, Self::Invalid];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::NeedsAuthorization => "NEEDS_AUTHORIZATION",
            Self::Invalid => "INVALID",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ACTIVE" => Self::Active,
            "NEEDS_AUTHORIZATION" => Self::NeedsAuthorization,
            "INVALID" => Self::Invalid,
            _ => return None,
        })
    }
}

/// Where a credential is managed: the config file (refused by the API's Put/Delete, removed
/// when it leaves the file) or the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    Config,
    Api,
}

impl CredentialSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "config" => Self::Config,
            "api" => Self::Api,
            _ => return None,
        })
    }
}

/// A stored credential. `settings_sealed` is the encrypted JSON settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    pub tenant: String,
    pub id: String,
    pub provider: String,
    pub settings_sealed: Vec<u8>,
    /// Keyed digest of the settings: tells whether a config reload changed them.
    pub settings_digest: String,
    pub status: CredentialStatus,
    pub last_error: Option<String>,
    pub source: CredentialSource,
    pub created_at_ms: UnixMillis,
    pub updated_at_ms: UnixMillis,
}

/// The last token issued for one cache key.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub tenant: String,
    pub credential_id: String,
    pub scope_key: String,
    pub access_sealed: Vec<u8>,
    pub token_type: String,
    pub expires_at_ms: UnixMillis,
    pub issued_at_ms: UnixMillis,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// One event. `http` is the JSON of the redacted upstream exchange, when there was one.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub tenant: String,
    pub credential_id: String,
    pub kind: String,
    pub occurred_at_ms: UnixMillis,
    pub caller: Option<String>,
    pub message: String,
    pub http: Option<String>,
}

/// A page of events, newest first. `before` is the keyset cursor (occurred_at_ms, id).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub tenant: String,
    pub credential_id: Option<String>,
    pub since_ms: Option<UnixMillis>,
    pub until_ms: Option<UnixMillis>,
    pub kinds: Vec<String>,
    pub limit: u32,
    pub before: Option<(UnixMillis, i64)>,
}

/// A webhook notification, queued in the transaction of the change it reports (see
/// [`Notify`]) and fanned out there to each of the tenant's webhooks subscribed to `kind`.
/// `payload` is the complete JSON body, built without any secret or token.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub tenant: String,
    pub credential_id: String,
    /// The notification type, e.g. `credential.status_changed`.
    pub kind: String,
    /// The Standard Webhooks message id (`webhook-id`), the same for every attempt.
    pub message_id: String,
    pub payload: String,
    pub created_at_ms: UnixMillis,
}

/// The notifications a change writes in its own transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notify<'a> {
    /// Written with the change.
    pub always: &'a [Notification],
    /// Written only when the change moves the credential's stored status: a status write
    /// that finds the status already set writes none, so replicas making the same
    /// transition at once announce it once.
    pub on_status_change: Option<&'a Notification>,
}

impl<'a> Notify<'a> {
    pub const NONE: Notify<'static> = Notify {
        always: &[],
        on_status_change: None,
    };

    /// The notifications to write, given whether the stored status changed.
    pub fn written(self, status_changed: bool) -> impl Iterator<Item = &'a Notification> {
        self.on_status_change
            .filter(|_| status_changed)
            .into_iter()
            .chain(self.always)
    }
}

/// A webhook: where a tenant's notifications of the subscribed `kinds` go, signed with the
/// sealed secret.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub tenant: String,
    pub id: String,
    pub url: String,
    /// Notification types, or `*` for all of them.
    pub kinds: Vec<String>,
    pub secret_sealed: Vec<u8>,
    pub source: CredentialSource,
    pub created_at_ms: UnixMillis,
    pub updated_at_ms: UnixMillis,
}

/// One outbox row claimed for delivery, with its webhook's URL and secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub tenant: String,
    pub webhook_id: String,
    pub message_id: String,
    pub kind: String,
    pub credential_id: String,
    pub payload: String,
    pub created_at_ms: UnixMillis,
    /// Attempts made before this one.
    pub attempts: u32,
    pub url: String,
    pub secret_sealed: Vec<u8>,
    pub source: CredentialSource,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at `next_attempt_at_ms`.
    Retry {
        next_attempt_at_ms: UnixMillis,
        error: String,
    },
    /// Given up: retried for the whole delivery period, or refused for good.
    Failed {
        error: String,
    },
}

/// The outbox at a glance, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Notifications not yet delivered nor given up on.
    pub pending: u64,
    /// When the oldest pending one was written.
    pub oldest_pending_at_ms: Option<UnixMillis>,
    /// Notifications given up on (kept until the event retention removes them).
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The schema could not be prepared.
    #[error("store migration failed: {0}")]
    Migration(String),
    /// Stored data is not what it should be.
    #[error("store data error: {0}")]
    Data(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx error texts never include bound values, so no secret can leak through them.
        match e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Data(e.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Proof that this handle may call the provider for a credential until the lease expires.
/// `fence` grows with every grant, so a write carrying an older fence is recognisably stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshLease {
    pub fence: i64,
    /// In the store's clock (the database server's, so replicas' clocks do not matter).
    pub expires_at_ms: UnixMillis,
}

/// The webhooks and their outbox: the part of the store `webhooks` works with.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Creates or replaces a webhook (keeps `created_at_ms` of an existing one); its
    /// pending notifications stay queued.
    async fn put_webhook(&self, rec: &WebhookRecord) -> StoreResult<()>;
    /// Webhooks of one tenant, or of all with `None`, ordered by tenant and id.
    async fn list_webhooks(&self, tenant: Option<&str>) -> StoreResult<Vec<WebhookRecord>>;
    /// Deletes a webhook and every notification still queued for it.
    async fn delete_webhook(&self, tenant: &str, id: &str) -> StoreResult<bool>;
    /// Queues notifications that report no stored change (a token fetch failing again).
    async fn append_notifications(&self, notifications: &[Notification]) -> StoreResult<()>;
    /// Claims up to `limit` queued notifications due at `now` for `holder` until
    /// `now + claim`: nobody else delivers them meanwhile (a holder that dies loses the
    /// claim when it ends). Oldest first.
    async fn claim_deliveries(
        &self,
        holder: &str,
        now: UnixMillis,
        claim: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records how an attempt on a claimed notification ended. `false`, writing nothing,
    /// when `holder` no longer holds the claim.
    async fn finish_delivery(
        &self,
        id: i64,
        holder: &str,
        outcome: &DeliveryOutcome,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;
    /// Deletes delivered and failed notifications finished before `before`.
    async fn purge_outbox(&self, before: UnixMillis) -> StoreResult<u64>;
}

/// The storage backend.
#[async_trait]
pub trait Store: WebhookStore + Send + Sync + 'static {
    /// Creates or replaces a credential (keeps `created_at_ms` of an existing one).
    /// Announced as [`StoreChange::CredentialChanged`], like every credential write below.
    async fn put_credential(&self, rec: &CredentialRecord) -> StoreResult<()>;
    /// Replaces a credential's settings in one transaction: the record, its tokens deleted,
    /// and its refresh token set (`Some(Some(..))`), removed (`Some(None)`) or kept
    /// (`None`). Nothing of it is written when any part fails, so an old refresh token can
    /// never be left beside new settings (a new token URL). Announced as
    /// [`StoreChange::CredentialChanged`] and [`StoreChange::TokensDeleted`].
    async fn replace_credential(
        &self,
        rec: &CredentialRecord,
        refresh_token: Option<Option<&[u8]>>,
    ) -> StoreResult<()> {
        self.replace_credential_notifying(rec, refresh_token, Notify::NONE)
            .await
    }
    /// [`Store::replace_credential`], writing `notify`'s notifications in the same
    /// transaction (`on_status_change` when the stored status differs from `rec`'s, or
    /// there was no credential).
    async fn replace_credential_notifying(
        &self,
        rec: &CredentialRecord,
        refresh_token: Option<Option<&[u8]>>,
        notify: Notify<'_>,
    ) -> StoreResult<()>;
    async fn get_credential(&self, tenant: &str, id: &str)
        -> StoreResult<Option<CredentialRecord>>;
    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>>;
    /// Deletes a credential with its refresh token, tokens and events.
    async fn delete_credential(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        self.delete_credential_notifying(tenant, id, Notify::NONE)
            .await
    }
    /// [`Store::delete_credential`], writing `notify.always` in the same transaction when
    /// there was a credential to delete.
    async fn delete_credential_notifying(
        &self,
        tenant: &str,
        id: &str,
        notify: Notify<'_>,
    ) -> StoreResult<bool>;
    async fn set_credential_status(
        &self,
        tenant: &str,
        id: &str,
        status: CredentialStatus,
        last_error: Option<&str>,
        now: UnixMillis,
    ) -> StoreResult<()> {
        self.set_credential_status_notifying(tenant, id, status, last_error, now, Notify::NONE)
            .await
            .map(|_| ())
    }
    /// [`Store::set_credential_status`], writing `notify`'s notifications in the same
    /// transaction. `true` when the stored status changed.
    async fn set_credential_status_notifying(
        &self,
        tenant: &str,
        id: &str,
        status: CredentialStatus,
        last_error: Option<&str>,
        now: UnixMillis,
        notify: Notify<'_>,
    ) -> StoreResult<bool>;

    async fn get_refresh_token(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<u8>>>;
    /// When the credential's refresh token was last written (stored, or rotated by a
    /// refresh): a lower bound of its last use, which the keep-alive counts idle time from.
    async fn refresh_token_written_at(
        &self,
        tenant: &str,
        id: &str,
    ) -> StoreResult<Option<UnixMillis>>;
    /// Stores (or with `None`, removes) the credential's refresh token. Durable on return.
    /// Announced as [`StoreChange::CredentialChanged`] (a refresh made under the lease goes
    /// through [`Store::commit_refresh`] instead, which needs no announcement).
    async fn put_refresh_token(
        &self,
        tenant: &str,
        id: &str,
        sealed: Option<&[u8]>,
        now: UnixMillis,
    ) -> StoreResult<()>;

    async fn put_token(&self, rec: &TokenRecord) -> StoreResult<()>;
    /// Tokens that have not expired at `now`.
    async fn list_tokens(&self, now: UnixMillis) -> StoreResult<Vec<TokenRecord>>;
    /// Deletes a credential's tokens: one scope key, or all with `None`. Announced as
    /// [`StoreChange::TokensDeleted`], so no other replica keeps serving them from memory.
    async fn delete_tokens(
        &self,
        tenant: &str,
        id: &str,
        scope_key: Option<&str>,
    ) -> StoreResult<u64>;

    /// The stored token of one cache key, expired or not.
    async fn get_token(
        &self,
        tenant: &str,
        id: &str,
        scope_key: &str,
    ) -> StoreResult<Option<TokenRecord>>;

    /// Takes the credential's refresh lease for `ttl` when nobody holds it (or the holder's
    /// lease expired). `None`: another holder has it. Expiry uses the store's own clock.
    async fn acquire_refresh_lease(
        &self,
        tenant: &str,
        id: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<Option<RefreshLease>>;
    /// Gives the lease back early (no-op when `fence` is no longer current) and tells the
    /// other handles, so their waiters retry at once.
    async fn release_refresh_lease(&self, tenant: &str, id: &str, fence: i64) -> StoreResult<()>;
    /// Writes the result of a refresh made under lease `fence`, atomically: the rotated
    /// refresh token (when there is one) and the new token (when it should be kept).
    /// `Ok(false)`, writing nothing, when the lease has since been granted to someone else.
    async fn commit_refresh(
        &self,
        tenant: &str,
        id: &str,
        fence: i64,
        refresh_token: Option<&[u8]>,
        token: Option<&TokenRecord>,
        now: UnixMillis,
    ) -> StoreResult<bool>;

    /// Identifies this handle: lease holder name and origin of the changes it makes.
    fn instance_id(&self) -> &str;
    /// Changes other handles on the same database commit from now on (not this handle's own).
    fn subscribe(&self) -> ChangeStream;

    /// Appends an event; on commit it is announced to every handle's [`EventFeed`].
    async fn append_event(&self, ev: &EventRecord) -> StoreResult<i64>;
    async fn list_events(&self, q: &EventQuery) -> StoreResult<Vec<EventRecord>>;
    /// The tenant's events with an id above `after_id`, oldest (lowest id) first, at most
    /// `limit`; filtered by `q`'s credential and kinds (its times, cursor and limit are not
    /// used). Ids grow in the order events become visible, on both backends, so a reader
    /// that keeps the last id it saw misses nothing: SQLite has one writer at a time, and
    /// PostgreSQL appends take a transaction lock around id and commit (see `postgres.rs`).
    async fn events_after(
        &self,
        q: &EventQuery,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>>;
    /// The highest event id now (0 when there are none): where a watch of live events only
    /// starts.
    async fn last_event_id(&self) -> StoreResult<i64>;
    /// Announcements of events appended from now on, by any handle on the database
    /// (this one included).
    fn subscribe_events(&self) -> EventFeed;
    /// Deletes events older than `before`; returns how many.
    async fn purge_events(&self, before: UnixMillis) -> StoreResult<u64>;
}

/// Opens the backend named by the URL (`sqlite://...` or `postgres://...`).
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported store URL scheme in `{}`; use sqlite://PATH or postgres://USER@HOST/DB",
            url.split(':').next().unwrap_or("")
        )))
    }
}
