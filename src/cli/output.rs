//! Rendering for the client subcommands: JSON shapes (stable, documented field names),
//! plain-text tables and timestamps. The protobuf `Struct` ⇄ JSON conversion is the
//! server's own (`api::convert`), so settings print as the server reads them.

use crate::api::convert::struct_to_json;
use crate::proto::v1 as pb;
use serde_json::{json, Value};
use std::io::Write;

/// The canonical name of a gRPC status code, as grpcurl and the docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// RFC 3339 in UTC, as protobuf's JSON mapping writes it.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(|t| t.to_string())
}

pub fn ts_json(ts: Option<&prost_types::Timestamp>) -> Value {
    rfc3339(ts).map_or(Value::Null, Value::String)
}

/// Seconds precision for tables, where milliseconds are noise; `-` when unset.
pub fn ts_short(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(
        || "-".to_owned(),
        |t| {
            prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string()
        },
    )
}

/// `ACTIVE`, `NEEDS_AUTHORIZATION`, ... (the names the design uses).
pub fn status_name(status: i32) -> String {
    match pb::CredentialStatus::try_from(status) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("CREDENTIAL_STATUS_")
            .to_owned(),
        Err(_) => format!("UNKNOWN_{status}"),
    }
}

/// `upstream_call`, `token_issued`, ... (what `--kind` accepts).
pub fn kind_name(kind: i32) -> String {
    match pb::EventKind::try_from(kind) {
        Ok(k) => k
            .as_str_name()
            .trim_start_matches("EVENT_KIND_")
            .to_ascii_lowercase(),
        Err(_) => format!("unknown_{kind}"),
    }
}

/// A credential as `--json` prints it. The server never sends secrets; the settings are
/// printed as received.
pub fn credential_json(c: &pb::Credential) -> Value {
    json!({
        "tenant": c.tenant,
        "credential_id": c.credential_id,
        "provider": c.provider,
        "status": status_name(c.status),
        "created_at": ts_json(c.created_at.as_ref()),
        "updated_at": ts_json(c.updated_at.as_ref()),
        "last_error": c.last_error,
        "settings": c.settings.as_ref().map_or_else(|| json!({}), struct_to_json),
        "secret_fields_set": c.secret_fields_set,
        "source": c.source,
        "has_refresh_token": c.has_refresh_token,
        "tokens": c.tokens.iter().map(|t| json!({
            "scopes": t.scopes,
            "expires_at": ts_json(t.expires_at.as_ref()),
            "issued_at": ts_json(t.issued_at.as_ref()),
        })).collect::<Vec<_>>(),
        "capabilities": c.capabilities,
    })
}

pub fn event_json(e: &pb::Event) -> Value {
    let mut v = json!({
        "id": e.id,
        "tenant": e.tenant,
        "credential_id": e.credential_id,
        "kind": kind_name(e.kind),
        "occurred_at": ts_json(e.occurred_at.as_ref()),
        "message": e.message,
        "caller": e.caller,
    });
    if let (Some(h), Value::Object(map)) = (&e.http, &mut v) {
        map.insert(
            "http".into(),
            json!({
                "step": h.step,
                "method": h.method,
                "url": h.url,
                "status": h.status,
                "latency_ms": h.latency_ms,
                "request_headers": h.request_headers,
                "request_body": h.request_body,
                "response_headers": h.response_headers,
                "response_body": h.response_body,
                "error": h.error,
            }),
        );
    }
    v
}

/// Pretty JSON on stdout (one document).
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// One JSON document on one line (for streams of documents, e.g. `authorize --json`).
pub fn print_json_line(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Left-aligned columns separated by two spaces; the last column is not padded. Control
/// characters in cells become spaces so one row stays one line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let last = r.len().saturating_sub(1);
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i < last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count())
                    + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(status_name(1), "ACTIVE");
        assert_eq!(status_name(2), "NEEDS_AUTHORIZATION");
        assert_eq!(kind_name(1), "upstream_call");
        assert_eq!(kind_name(99), "unknown_99");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }

    #[test]
    fn table_aligns_and_keeps_rows_on_one_line() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxx".into(), "multi\nline".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  multi line\ny    z\n");
    }
}
