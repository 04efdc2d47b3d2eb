//! Conversions between domain values and their protobuf form, shared by the gRPC services
//! and the CLI: timestamps, enums, JSON ⇄ `google.protobuf.Struct`, and opaque page tokens.
//!
//! Everything here is pure: no I/O, no status codes. Callers turn a failed decode into the
//! error their RPC documents.

use crate::events::EventKind;
use crate::proto::v1 as pb;
use crate::store::CredentialStatus;
use base64::Engine;
use prost_types::value::Kind;
use serde_json::Value as Json;

/// Unix milliseconds → protobuf `Timestamp` (negative times round toward the past, so
/// `nanos` stays in 0..1e9 as the type requires).
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// protobuf `Timestamp` → Unix milliseconds; saturates instead of overflowing on absurd
/// client input.
pub fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn status_to_pb(s: CredentialStatus) -> pb::CredentialStatus {
    match s {
        CredentialStatus::Active => pb::CredentialStatus::Active,
        CredentialStatus::NeedsAuthorization => pb::CredentialStatus::NeedsAuthorization,
        CredentialStatus::Invalid => pb::CredentialStatus::Invalid,
    }
}

/// An event kind as stored (a string, so old rows of a kind this build does not know still
/// list) → protobuf; unknown kinds become `Unspecified`.
pub fn kind_to_pb(kind: &str) -> pb::EventKind {
    match EventKind::parse(kind) {
        Some(EventKind::UpstreamCall) => pb::EventKind::UpstreamCall,
        Some(EventKind::TokenIssued) => pb::EventKind::TokenIssued,
        Some(EventKind::TokenFailed) => pb::EventKind::TokenFailed,
        Some(EventKind::StatusChanged) => pb::EventKind::StatusChanged,
        Some(EventKind::Revoked) => pb::EventKind::Revoked,
        Some(EventKind::CredentialChanged) => pb::EventKind::CredentialChanged,
        Some(EventKind::LegacyGrant) => pb::EventKind::LegacyGrant,
        Some(EventKind::WebhookDelivery) => pb::EventKind::WebhookDelivery,
        None => pb::EventKind::Unspecified,
    }
}

/// `None` for `Unspecified`, which as a filter means "no kind named".
pub fn kind_from_pb(kind: pb::EventKind) -> Option<EventKind> {
    Some(match kind {
        pb::EventKind::Unspecified => return None,
        pb::EventKind::UpstreamCall => EventKind::UpstreamCall,
        pb::EventKind::TokenIssued => EventKind::TokenIssued,
        pb::EventKind::TokenFailed => EventKind::TokenFailed,
        pb::EventKind::StatusChanged => EventKind::StatusChanged,
        pb::EventKind::Revoked => EventKind::Revoked,
        pb::EventKind::CredentialChanged => EventKind::CredentialChanged,
        pb::EventKind::LegacyGrant => EventKind::LegacyGrant,
        pb::EventKind::WebhookDelivery => EventKind::WebhookDelivery,
    })
}

// The number rule: protobuf `Struct` numbers are doubles, but settings are mostly counts
// (seconds, retries) that plugins decode as integers, and `60.0` would not decode as one.
// So a double with no fractional part becomes a JSON integer, on both sides of the wire.

/// The JSON integer for an integral double, or `None` when `f` is fractional, not finite,
/// or too large to be exact (2^53 ≈ 9.007e15; 9e15 keeps clear of the edge).
fn integral(f: f64) -> Option<Json> {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(if f >= 0.0 {
            Json::from(f as u64)
        } else {
            Json::from(f as i64)
        })
    } else {
        None
    }
}

/// A protobuf number as JSON, after the number rule; NaN and infinities (which JSON cannot
/// hold) become `null`.
fn number_to_json(n: f64) -> Json {
    integral(n).unwrap_or_else(|| serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
}

/// Applies the number rule to JSON however it arrived (a `Struct` decoded by another
/// converter, a test, a tool): credential settings pass through it before any plugin sees
/// them.
pub fn normalize_numbers(v: Json) -> Json {
    match v {
        // Non-integral numbers keep their exact JSON form rather than a round trip
        // through f64.
        Json::Number(n) => n.as_f64().and_then(integral).unwrap_or(Json::Number(n)),
        Json::Array(items) => Json::Array(items.into_iter().map(normalize_numbers).collect()),
        Json::Object(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// JSON → protobuf `Value`. By value: the server moves settings strings instead of copying.
pub fn json_to_prost(v: Json) -> prost_types::Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_prost).collect(),
        }),
        Json::Object(m) => Kind::StructValue(map_to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object's fields as a protobuf `Struct`.
pub fn map_to_struct(m: serde_json::Map<String, Json>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect(),
    }
}

/// A JSON object as a protobuf `Struct`; `None` when `v` is not an object.
pub fn json_to_struct(v: &Json) -> Option<prost_types::Struct> {
    match v {
        Json::Object(m) => Some(map_to_struct(m.clone())),
        _ => None,
    }
}

/// protobuf `Value` → JSON, after the number rule.
pub fn prost_to_json(v: &prost_types::Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(prost_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// protobuf `Struct` → JSON object, after the number rule.
pub fn struct_to_json(s: &prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), prost_to_json(v)))
            .collect(),
    )
}

// A page token is URL-safe base64 (no padding) of `prefix + payload`. The prefix names the
// list and the cursor's version, so a token of one list is refused by another, and a
// future cursor format can be told apart from today's. Clients hold these tokens, so the
// encoding must not change.

/// ListEvents: `ev1:{occurred_at_ms}:{id}` of the last event on the page (a keyset cursor,
/// stable while new events arrive).
pub const EVENTS_PAGE_PREFIX: &str = "ev1:";
/// ListCredentials: `cr1:{credential_id}` of the last credential on the page.
pub const CREDENTIALS_PAGE_PREFIX: &str = "cr1:";

/// A page token this server did not issue (or issued for another list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a page token this server issued")]
pub struct ForeignPageToken;

pub fn encode_page_token(prefix: &str, payload: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{prefix}{payload}"))
}

/// The payload of a token made by [`encode_page_token`] with the same prefix.
pub fn decode_page_token(prefix: &str, token: &str) -> Result<String, ForeignPageToken> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ForeignPageToken)?;
    let text = String::from_utf8(raw).map_err(|_| ForeignPageToken)?;
    text.strip_prefix(prefix)
        .map(str::to_owned)
        .ok_or(ForeignPageToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn struct_numbers_become_integers() {
        let v = normalize_numbers(serde_json::json!({"a": 60.0, "b": 1.5, "c": [2.0], "d": -3.0}));
        assert_eq!(v, serde_json::json!({"a": 60, "b": 1.5, "c": [2], "d": -3}));
    }

    #[test]
    fn struct_round_trip_keeps_types() {
        let v = json!({"n": 60, "f": 1.5, "b": true, "s": "x", "l": ["a", "b"], "o": {"k": null}});
        let s = json_to_struct(&v).unwrap();
        assert_eq!(struct_to_json(&s), v);
        assert!(json_to_struct(&json!([1])).is_none());
    }

    #[test]
    fn numbers_that_json_cannot_hold_become_null() {
        for n in [f64::NAN, f64::INFINITY] {
            let v = prost_types::Value {
                kind: Some(Kind::NumberValue(n)),
            };
            assert_eq!(prost_to_json(&v), Json::Null);
        }
        assert_eq!(number_to_json(1e20), json!(1e20));
    }

    #[test]
    fn page_tokens_keep_their_wire_form() {
        // Tokens handed out by earlier builds must still be accepted.
        assert_eq!(
            encode_page_token(EVENTS_PAGE_PREFIX, "1700000000123:42"),
            "ZXYxOjE3MDAwMDAwMDAxMjM6NDI"
        );
        assert_eq!(
            encode_page_token(CREDENTIALS_PAGE_PREFIX, "idp-2"),
            "Y3IxOmlkcC0y"
        );
        assert_eq!(
            decode_page_token(CREDENTIALS_PAGE_PREFIX, "Y3IxOmlkcC0y").as_deref(),
            Ok("idp-2")
        );
        // One list's token is refused by the other.
        assert_eq!(
            decode_page_token(EVENTS_PAGE_PREFIX, "Y3IxOmlkcC0y"),
            Err(ForeignPageToken)
        );
        assert_eq!(
            decode_page_token(EVENTS_PAGE_PREFIX, "!!!"),
            Err(ForeignPageToken)
        );
    }
}
