//! Refresh over many token lifetimes under steady load, on an accelerated gateway clock:
//! upstream requests per key stay within the bound the refresh lead allows, no token is
//! served nearly expired, and calls overlapping a refresh are no slower than the rest.

use super::common::{ms, token_set_decoder};
use super::{get_token_message, Ctx, Plan, GET_TOKEN};
use crate::clock::SharedClock;
use crate::endpoint::Hit;
use crate::gateway::{self, BrokerKnobs};
use crate::load::{self, Check, Connections, Decoder, RunResult, Target};
use crate::report::{Report, Row, Verdict};
use crate::stats::percentile;
use authgate::clock::Clock;
use authgate::proto::v1::GetTokenResponse;
use parking_lot::Mutex;
use prost::Message;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens served with less than this left count as "short".
const SHORT_TTL_MS: i64 = 5_000;
/// Lifetime of the endpoint's tokens, in gateway seconds.
const LIFETIME_S: i64 = 60;
/// Keys under load, one per credential.
const KEYS: usize = 4;

pub(super) async fn refresh(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let knobs = BrokerKnobs::default();
    let clock = SharedClock::starting_now(plan.refresh_factor);
    ep.set_expires_in(LIFETIME_S as u64);
    ep.set_delay(plan.refresh_delay);
    let gw = ctx
        .start_gateway("refresh", KEYS, &knobs, Some(clock))
        .await?;
    let conns = Connections::open(gw.grpc, plan.conns).await?;
    let scopes: Vec<String> = (0..KEYS).map(|i| format!("r{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| get_token_message(i, &[scopes[i].as_str()]))
        .collect();
    ep.clear_hits();
    let t_start = clock.now_ms();
    let warm = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &messages,
        Check::Decode(token_set_decoder(Arc::new(Mutex::new(HashSet::new())))),
    )?);
    load::burst(&conns, &warm, KEYS)
        .await
        .ensure_valid("refresh warm-up")?;

    // Steady open-loop load at a rate both servers handle easily.
    let watch = Arc::new(TtlWatch {
        clock,
        least_left_ms: AtomicI64::new(i64::MAX),
        short: AtomicU64::new(0),
    });
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &messages,
        Check::Decode(ttl_decoder(watch.clone())),
    )?);
    let real =
        Duration::from_millis(clock.real_ms(plan.refresh_lifetimes * LIFETIME_S * 1000) as u64);
    let rate = if plan.quick { 500.0 } else { 2000.0 };
    let r = load::open_loop(&conns, &target, rate, real).await;
    let t_end = clock.now_ms();
    r.ensure_valid("refresh load")?;
    ep.set_delay(Duration::ZERO);

    let hits = ep.hits();
    requests_per_key(ctx, rep, &knobs, &scopes, rate, t_end - t_start);
    let short = watch.short.load(Ordering::Relaxed);
    let least = watch.least_left_ms.load(Ordering::Relaxed);
    rep.row(
        Row::new("refresh: tokens served with less than 5 s left")
            .authgate(format!(
                "{short} of {} (least left: {:.1} s)",
                r.ok,
                least as f64 / 1000.0
            ))
            .goal("0", Verdict::of(short == 0, plan.judged())),
    );
    refresh_window_latency(rep, plan, &hits, &r);
    drop(conns);
    gw.proc.stop().await;
    Ok(())
}

/// Upstream requests per key over `elapsed_ms` of gateway time, against the bound the
/// refresh lead allows; every key must have been refreshed at least once.
fn requests_per_key(
    ctx: &Ctx,
    rep: &mut Report,
    knobs: &BrokerKnobs,
    scopes: &[String],
    rate: f64,
    elapsed_ms: i64,
) {
    let plan = &ctx.plan;
    let by_key = ctx.endpoint.counts_by_key();
    let counts: Vec<u64> = (0..KEYS)
        .map(|i| {
            by_key
                .get(&gateway::endpoint_key(i, &scopes[i]))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let t = elapsed_ms as f64 / 1000.0;
    let lead_s = knobs.max_refresh_lead_ms(LIFETIME_S * 1000) as f64 / 1000.0;
    let bound = (t / (LIFETIME_S as f64 - lead_s)).ceil() as u64 + 1;
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    let refreshed = min >= 2;
    rep.check(
        max <= bound,
        format!("refresh: a key made {max} upstream requests over {t:.0} s, bound {bound}"),
    );
    rep.check(
        refreshed,
        format!("refresh: a key was never refreshed over {t:.0} s (counts {counts:?})"),
    );
    rep.row(
        Row::new(format!(
            "refresh: upstream requests per key over {t:.0} s of gateway time ({} lifetimes of {LIFETIME_S} s, clock ×{}, {} keys under {rate:.0} calls/s)",
            plan.refresh_lifetimes, plan.refresh_factor, KEYS
        ))
        .authgate(format!("{min}–{max}"))
        .goal(
            format!("≤ ⌈T / (lifetime − margin)⌉ + 1 = {bound} (margin = {lead_s:.0} s: 10% + up to 20% jitter)"),
            Verdict::of(max <= bound && refreshed, true),
        ),
    );
}

/// p99 of calls overlapping a refresh (upstream request in flight, plus 50 ms for the
/// gateway to store the new token) against all other calls.
fn refresh_window_latency(rep: &mut Report, plan: &Plan, hits: &[Hit], r: &RunResult) {
    let windows: Vec<(Instant, Instant)> = hits
        .iter()
        .filter(|h| h.ok)
        .map(|h| {
            (
                h.arrived
                    .checked_sub(Duration::from_millis(1))
                    .unwrap_or(h.arrived),
                h.answered + Duration::from_millis(50),
            )
        })
        .collect();
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for (st, en, lat) in sample_spans(r) {
        if windows.iter().any(|(a, b)| st < *b && en > *a) {
            inside.push(lat);
        } else {
            outside.push(lat);
        }
    }
    let (p_in, p_out) = (percentile(&inside, 99.0), percentile(&outside, 99.0));
    let ratio = f64::from(p_in) / f64::from(p_out.max(1));
    rep.row(
        Row::new("refresh: p99 latency during refresh windows vs steady")
            .authgate(format!(
                "{} ({} calls) vs {} ({} calls)",
                ms(p_in),
                inside.len(),
                ms(p_out),
                outside.len()
            ))
            .ratio(format!("{ratio:.2}"))
            .goal(
                "ratio ≤ 1.2",
                Verdict::of(ratio <= 1.2, plan.judged() && inside.len() >= 100),
            ),
    );
}

fn expires_at_ms(r: &GetTokenResponse) -> Option<i64> {
    r.expires_at
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Tracks how much life served tokens had left, in the gateway's time.
struct TtlWatch {
    clock: SharedClock,
    least_left_ms: AtomicI64,
    short: AtomicU64,
}

fn ttl_decoder(w: Arc<TtlWatch>) -> Decoder {
    Arc::new(move |bytes| {
        let r = GetTokenResponse::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        if r.access_token.is_empty() {
            return Err("empty access token".into());
        }
        let exp = expires_at_ms(&r).ok_or("reply without expires_at")?;
        let left = exp - w.clock.now_ms();
        w.least_left_ms.fetch_min(left, Ordering::Relaxed);
        if left < SHORT_TTL_MS {
            w.short.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// Placement of calls in time, for classifying them against refresh windows.
fn sample_spans(r: &RunResult) -> Vec<(Instant, Instant, u32)> {
    let Some(t0) = r.started else {
        return Vec::new();
    };
    r.samples
        .iter()
        .map(|s| {
            let st = t0 + Duration::from_micros(s.start_us);
            (
                st,
                st + Duration::from_micros(u64::from(s.latency_us)),
                s.latency_us,
            )
        })
        .collect()
}
