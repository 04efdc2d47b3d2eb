//! `authgate events list`: a tenant's event log, newest first, as a table or JSON; with
//! `--follow`, then its new events as they happen (WatchEvents), resuming after the last
//! one printed whenever the stream ends.

use crate::cli::connect::{self, ClientOptions};
use crate::cli::output;
use crate::clock::SystemClock;
use crate::proto::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// The gateway's largest page.
const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first: a table (time, kind, credential, HTTP status, message), or
    /// a JSON array with --json.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Tenant whose events to list.
    #[arg(long)]
    pub tenant: String,
    /// Only this credential's events.
    #[arg(long = "credential", value_name = "ID")]
    pub credential: Option<String>,
    /// Only these kinds (repeat for several): upstream_call, token_issued, token_failed,
    /// status_changed, revoked, credential_changed, legacy_grant, webhook_delivery.
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
    pub kinds: Vec<pb::EventKind>,
    /// Events at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<prost_types::Timestamp>,
    /// Events before this time: RFC 3339 or an age, as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<prost_types::Timestamp>,
    /// At most this many events (pages are followed until there are this many).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Print a JSON array of events (with the redacted HTTP exchange of upstream calls).
    #[arg(long)]
    pub json: bool,
    /// After the listed events (then printed oldest first), keep printing new ones as they
    /// happen, one line each (a JSON object per line with --json); on a lost connection or
    /// a cut stream, reconnect and resume after the last event printed. Ends with Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Events per request (hidden: the default is right; tests use it to cross pages).
    #[arg(long, hide = true, default_value_t = MAX_PAGE_SIZE as u32, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_SIZE as i64))]
    pub page_size: u32,
}

/// Accepts `upstream_call`, `upstream-call`, `UPSTREAM_CALL` and `EVENT_KIND_UPSTREAM_CALL`.
fn parse_kind(s: &str) -> Result<pb::EventKind, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with("EVENT_KIND_") {
        upper
    } else {
        format!("EVENT_KIND_{upper}")
    };
    match pb::EventKind::from_str_name(&full) {
        Some(k) if k != pb::EventKind::Unspecified => Ok(k),
        _ => Err(format!(
            "unknown event kind `{s}`; one of: upstream_call, token_issued, token_failed, status_changed, revoked, credential_changed, legacy_grant, webhook_delivery"
        )),
    }
}

/// RFC 3339, or an age before now (`30s`, `15m`, `2h`, `7d`).
fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    let s = s.trim();
    if let Ok(ts) = s.parse::<prost_types::Timestamp>() {
        return Ok(ts);
    }
    let bad = || {
        format!("`{s}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age (30m, 2h, 7d)")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    let at = SystemClock
        .system_time()
        .checked_sub(Duration::from_secs(secs))
        .ok_or_else(bad)?;
    Ok(prost_types::Timestamp::from(at))
}

pub async fn run(args: EventsArgs) -> anyhow::Result<i32> {
    let EventsCommand::List(a) = args.command;
    let gw = connect::connect(&args.client).await?;
    let mut client = gw.tokens();
    let limit = a.limit as usize;
    let mut events: Vec<pb::Event> = Vec::new();
    let mut page_token = String::new();
    loop {
        let want = limit.saturating_sub(events.len());
        let resp = client
            .list_events(pb::ListEventsRequest {
                tenant: a.tenant.clone(),
                credential_id: a.credential.clone().unwrap_or_default(),
                since: a.since,
                until: a.until,
                kinds: a.kinds.iter().map(|k| *k as i32).collect(),
                page_size: want.min(a.page_size as usize) as u32,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        let got = resp.events.len();
        events.extend(resp.events.into_iter().take(want));
        // An empty page or a token that does not move would loop forever.
        if events.len() >= limit
            || got == 0
            || resp.next_page_token.is_empty()
            || resp.next_page_token == page_token
        {
            break;
        }
        page_token = resp.next_page_token;
    }

    if a.follow {
        // Oldest first, as the stream continues; the newest listed is where it resumes.
        events.reverse();
        for e in &events {
            print_line(e, a.json)?;
        }
        let cursor = events.last().map(|e| e.id.clone()).unwrap_or_default();
        return follow(&mut client, &a, cursor).await;
    }
    if a.json {
        output::print_json(&Value::Array(
            events.iter().map(output::event_json).collect(),
        ))?;
        return Ok(0);
    }
    if events.is_empty() {
        eprintln!("no events for tenant {}", a.tenant);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let status = match &e.http {
                Some(h) if h.status > 0 => h.status.to_string(),
                _ => "-".to_owned(),
            };
            vec![
                output::ts_short(e.occurred_at.as_ref()),
                output::kind_name(e.kind),
                e.credential_id.clone(),
                status,
                e.message.clone(),
            ]
        })
        .collect();
    let text = output::table(&["TIME", "KIND", "CREDENTIAL", "STATUS", "MESSAGE"], &rows);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}

/// One event on one line: time, kind, credential, HTTP status, message; or compact JSON.
fn print_line(e: &pb::Event, json: bool) -> anyhow::Result<()> {
    let line = if json {
        serde_json::to_string(&output::event_json(e))?
    } else {
        let status = match &e.http {
            Some(h) if h.status > 0 => h.status.to_string(),
            _ => "-".to_owned(),
        };
        format!(
            "{}  {:<18}  {:<16}  {:<6}  {}",
            output::ts_short(e.occurred_at.as_ref()),
            output::kind_name(e.kind),
            e.credential_id,
            status,
            e.message
        )
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Whether a stream that ended with `code` is worth reopening from its cursor: it was cut
/// (fell behind, server stopping, store or connection lost), not refused.
fn resumable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | ResourceExhausted
            | Aborted
            | Cancelled
            | Unknown
            | Internal
            | DeadlineExceeded
    )
}

/// Prints events after `cursor` forever, reopening the stream after the last one printed.
async fn follow(
    client: &mut pb::token_service_client::TokenServiceClient<connect::Conn>,
    a: &ListArgs,
    mut cursor: String,
) -> anyhow::Result<i32> {
    let mut wait = Duration::from_millis(200);
    loop {
        let request = pb::WatchEventsRequest {
            tenant: a.tenant.clone(),
            credential_id: a.credential.clone().unwrap_or_default(),
            kinds: a.kinds.iter().map(|k| *k as i32).collect(),
            after: cursor.clone(),
        };
        let ended = match client.watch_events(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => match m.item {
                            Some(pb::watch_events_response::Item::Event(e)) => {
                                wait = Duration::from_millis(200);
                                print_line(&e, a.json)?;
                                cursor = e.id;
                            }
                            // A live-only start learns its position from the first beat.
                            Some(pb::watch_events_response::Item::Heartbeat(h))
                                if cursor.is_empty() =>
                            {
                                cursor = h.cursor;
                            }
                            _ => {}
                        },
                        Ok(None) => break tonic::Status::unavailable("the stream ended"),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        if !resumable(ended.code()) {
            return Err(ended.into());
        }
        eprintln!(
            "event stream ended ({}); resuming after event {} in {} ms",
            ended.message(),
            if cursor.is_empty() { "-" } else { &cursor },
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cut_streams_are_resumed() {
        assert!(resumable(tonic::Code::ResourceExhausted));
        assert!(resumable(tonic::Code::Unavailable));
        assert!(!resumable(tonic::Code::PermissionDenied));
        assert!(!resumable(tonic::Code::InvalidArgument));
        assert!(!resumable(tonic::Code::Unauthenticated));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            parse_kind("upstream_call").unwrap(),
            pb::EventKind::UpstreamCall
        );
        assert_eq!(
            parse_kind("token-issued").unwrap(),
            pb::EventKind::TokenIssued
        );
        assert_eq!(
            parse_kind("EVENT_KIND_REVOKED").unwrap(),
            pb::EventKind::Revoked
        );
        assert!(parse_kind("unspecified").is_err());
        assert!(parse_kind("nope").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-01-31T12:00:00Z").unwrap().seconds,
            1_769_860_800
        );
        let hour_ago = parse_time("1h").unwrap().seconds;
        let now = prost_types::Timestamp::from(SystemClock.system_time()).seconds;
        assert!((now - 3600 - hour_ago).abs() <= 2);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("5w").is_err());
    }
}
