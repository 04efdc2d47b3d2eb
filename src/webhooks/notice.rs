//! The notifications webhooks receive: their types and JSON bodies, built here and nowhere
//! else, from ids, statuses and messages that hold no secret (error messages are built
//! from values that never carry one, and reach here already redacted).

use crate::clock::{rfc3339, UnixMillis};
use crate::store::{CredentialStatus, Notification};
use rand::RngCore;
use serde_json::{json, Value};

/// A notification type: the body's `type` and what a webhook subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeType {
    /// A credential's status changed, also back to ACTIVE (a recovery).
    StatusChanged,
    /// A token fetch failed several times in a row ([`FETCH_FAILING_AFTER`]).
    FetchFailing,
    Created,
    Replaced,
    Deleted,
    /// A consent step (authorization code or device flow) completed.
    AuthorizationCompleted,
}

/// Consecutive failed fetches of one scope set that make a `token.fetch_failing`
/// notification (once per run of failures).
pub const FETCH_FAILING_AFTER: u32 = 3;

impl NoticeType {
    pub const ALL: [Self; 6] = [
        Self::StatusChanged,
        Self::FetchFailing,
        Self::Created,
        Self::Replaced,
        Self::Deleted,
        Self::AuthorizationCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StatusChanged => "credential.status_changed",
            Self::FetchFailing => "token.fetch_failing",
            Self::Created => "credential.created",
            Self::Replaced => "credential.replaced",
            Self::Deleted => "credential.deleted",
            Self::AuthorizationCompleted => "authorization.completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Every type, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// A new message id (`webhook-id`): `msg_` and 128 random bits.
fn message_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// A notification of `kind` about a credential: the Standard Webhooks body shape (`type`,
/// `timestamp`, `data`), `data` naming the tenant and credential first.
fn notification(
    kind: NoticeType,
    tenant: &str,
    credential_id: &str,
    now: UnixMillis,
    data: Value,
) -> Notification {
    let mut body = json!({"tenant": tenant, "credential_id": credential_id});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), data) {
        b.extend(extra);
    }
    let payload = json!({
        "type": kind.as_str(),
        "timestamp": rfc3339(now),
        "data": body,
    });
    Notification {
        tenant: tenant.to_owned(),
        credential_id: credential_id.to_owned(),
        kind: kind.as_str().to_owned(),
        message_id: message_id(),
        payload: payload.to_string(),
        created_at_ms: now,
    }
}

/// `previous` → `status`, with why (`None`: the credential is new).
pub fn status_changed(
    tenant: &str,
    credential_id: &str,
    previous: Option<CredentialStatus>,
    status: CredentialStatus,
    reason: &str,
    now: UnixMillis,
) -> Notification {
    notification(
        NoticeType::StatusChanged,
        tenant,
        credential_id,
        now,
        json!({
            "status": status.as_str(),
            "previous_status": previous.map(CredentialStatus::as_str),
            "reason": reason,
        }),
    )
}

/// A fetch of `scopes` failed `failures` times in a row; `error` is the last one.
pub fn fetch_failing(
    tenant: &str,
    credential_id: &str,
    scopes: &[String],
    failures: u32,
    error: &str,
    now: UnixMillis,
) -> Notification {
    notification(
        NoticeType::FetchFailing,
        tenant,
        credential_id,
        now,
        json!({"scopes": scopes, "consecutive_failures": failures, "error": error}),
    )
}

/// A credential was created (`replaced == false`) or given new settings.
pub fn credential_put(
    tenant: &str,
    credential_id: &str,
    provider: &str,
    source: &str,
    replaced: bool,
    now: UnixMillis,
) -> Notification {
    let kind = if replaced {
        NoticeType::Replaced
    } else {
        NoticeType::Created
    };
    notification(
        kind,
        tenant,
        credential_id,
        now,
        json!({"provider": provider, "source": source}),
    )
}

pub fn credential_deleted(tenant: &str, credential_id: &str, now: UnixMillis) -> Notification {
    notification(NoticeType::Deleted, tenant, credential_id, now, json!({}))
}

/// A consent completed; `detail` says which (the browser's callback, a device approval).
pub fn authorization_completed(
    tenant: &str,
    credential_id: &str,
    scopes: &[String],
    detail: &str,
    now: UnixMillis,
) -> Notification {
    notification(
        NoticeType::AuthorizationCompleted,
        tenant,
        credential_id,
        now,
        json!({"scopes": scopes, "detail": detail}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_standard_shape_and_unique_ids() {
        let n = status_changed(
            "acme",
            "idp",
            Some(CredentialStatus::Active),
            CredentialStatus::Invalid,
            "invalid_client",
            1_700_000_000_123,
        );
        let body: Value = serde_json::from_str(&n.payload).unwrap();
        assert_eq!(body["type"], "credential.status_changed");
        assert_eq!(body["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(body["data"]["tenant"], "acme");
        assert_eq!(body["data"]["credential_id"], "idp");
        assert_eq!(body["data"]["previous_status"], "ACTIVE");
        assert_eq!(body["data"]["status"], "INVALID");
        assert_eq!(n.kind, "credential.status_changed");
        let again = credential_deleted("acme", "idp", 0);
        assert!(n.message_id.starts_with("msg_") && n.message_id.len() == 36);
        assert_ne!(n.message_id, again.message_id);
        for k in NoticeType::ALL {
            assert_eq!(NoticeType::parse(k.as_str()), Some(k));
        }
    }
}
