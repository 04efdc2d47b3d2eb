//! A provider outage while cached tokens stay valid: the endpoint answers 503 for 30
//! gateway seconds across the tokens' refresh time. Cache hits must go on at full speed
//! (paired with a control gateway whose endpoint never fails), retries stay within the
//! backoff bound, and every key gets a new token once the endpoint recovers.

use super::common::{paired, token_set_decoder};
use super::{get_token_message, Ctx, Plan, GET_TOKEN, TOKEN_LEN};
use crate::clock::{wall_ms, SharedClock};
use crate::endpoint::Endpoint;
use crate::gateway::{BrokerKnobs, ServerProcess};
use crate::load::{self, Check, Connections, Target};
use crate::report::{num, Report, Row, Verdict};
use crate::stats::median;
use authgate::clock::Clock;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Keys under load, one per credential.
const KEYS: usize = 4;
// 70 s tokens refreshed from half their life on (35 s), so the refresh falls inside a
// 30 s outage from 32 s to 62 s while the cached tokens stay valid until 70 s.
const LIFETIME_MS: i64 = 70_000;
const OUTAGE_FROM: i64 = 32_000;
const OUTAGE_TO: i64 = 62_000;
const STOP_AT: i64 = 66_000;
/// Retries every second at first, and refreshes from half the tokens' life on.
const KNOBS: BrokerKnobs = BrokerKnobs {
    backoff_initial_ms: 1000,
    refresh_margin_seconds: 3600,
    refresh_fraction: 0.49,
};

/// One gateway under load: its connections, the call to make, its process.
type Side<'a> = (Connections, Arc<Target>, &'a ServerProcess);

/// One slice of closed-loop load on one of the two gateways.
struct Slice {
    /// Gateway milliseconds after the tokens were issued, at the slice's start.
    at: i64,
    rate: f64,
    cpu_per_call_us: f64,
}

/// When the endpoint failed, in gateway time.
struct Timeline {
    clock: SharedClock,
    /// When the tokens were issued.
    t0: i64,
    /// When the endpoint started failing.
    on: i64,
    /// When it recovered.
    off: i64,
}

pub(super) async fn outage(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let clock = SharedClock::starting_now(plan.outage_factor);
    // A control gateway, identical but with an endpoint that never fails, takes turns
    // with the one under test: other work on the machine then slows both alike, and the
    // outage's own cost is the change in their ratio.
    let control_ep = Endpoint::start(TOKEN_LEN).await?;
    for e in [ep, &control_ep] {
        e.set_expires_in((LIFETIME_MS / 1000) as u64);
        e.set_delay(Duration::ZERO);
    }
    let gw = ctx
        .start_gateway("outage", KEYS, &KNOBS, Some(clock))
        .await?;
    let control = ctx
        .start_gateway_at(&control_ep, "outage-control", KEYS, &KNOBS, Some(clock))
        .await?;
    let scopes: Vec<String> = (0..KEYS).map(|i| format!("o{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| get_token_message(i, &[scopes[i].as_str()]))
        .collect();
    let mut sides: Vec<Side<'_>> = Vec::new();
    for g in [&gw, &control] {
        let conns = Connections::open(g.grpc, plan.conns).await?;
        // Replies all have the same size only while no token changes; decode instead.
        let target = Arc::new(Target::new(
            g.grpc,
            GET_TOKEN,
            &messages,
            Check::Decode(token_set_decoder(Arc::new(Mutex::new(HashSet::new())))),
        )?);
        sides.push((conns, target, &g.proc));
    }
    ep.clear_hits();
    for (conns, target, _) in &sides {
        load::burst(conns, target, KEYS)
            .await
            .ensure_valid("outage warm-up")?;
    }
    let t0 = clock.now_ms();

    let switch = {
        let ep = ep.clone();
        tokio::spawn(async move {
            sleep_until_gateway(&clock, t0 + OUTAGE_FROM).await;
            ep.set_failing(true);
            let on = wall_ms();
            sleep_until_gateway(&clock, t0 + OUTAGE_TO).await;
            ep.set_failing(false);
            (on, wall_ms())
        })
    };
    let (tested, controlled) = take_turns(&sides, clock, t0, plan.streams).await?;
    let (on_wall, off_wall) = switch.await?;
    ep.set_failing(false);
    let timeline = Timeline {
        clock,
        t0,
        on: clock.at_wall(on_wall),
        off: clock.at_wall(off_wall),
    };
    report_during(rep, plan, ep, &timeline, &tested, &controlled);
    let (conns, target) = (&sides[0].0, &sides[0].1);
    after_recovery(rep, ep, &timeline, conns, target).await;
    drop(sides);
    gw.proc.stop().await;
    control.proc.stop().await;
    Ok(())
}

/// Sleeps until the gateway clock shows `gateway_ms`.
async fn sleep_until_gateway(clock: &SharedClock, gateway_ms: i64) {
    let wall_target = clock.origin_ms + (gateway_ms - clock.origin_ms) / clock.factor;
    let wait = wall_target - wall_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Closed-loop slices on the tested gateway (`sides[0]`) and the control in turns, which
/// goes first alternating, until `STOP_AT`; returns the slices of each, pair by pair.
async fn take_turns(
    sides: &[Side<'_>],
    clock: SharedClock,
    t0: i64,
    streams: usize,
) -> anyhow::Result<(Vec<Slice>, Vec<Slice>)> {
    // Half a gateway second per slice: each pair covers one second of gateway time.
    let slice = Duration::from_millis(clock.real_ms(500).max(25) as u64);
    let (mut tested, mut controlled) = (Vec::new(), Vec::new());
    let mut k = 0usize;
    while clock.now_ms() < t0 + STOP_AT {
        let order = if k.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        k += 1;
        let mut pair = [None, None];
        for side in order {
            let (conns, target, proc) = &sides[side];
            let at = clock.now_ms() - t0;
            let c0 = proc.cpu_seconds()?;
            let r = load::closed_loop(conns, target, streams, slice).await;
            let c1 = proc.cpu_seconds()?;
            r.ensure_valid(if side == 0 {
                "outage load"
            } else {
                "outage control load"
            })?;
            pair[side] = Some(Slice {
                at,
                rate: r.rate(),
                cpu_per_call_us: (c1 - c0) * 1e6 / r.ok.max(1) as f64,
            });
        }
        if let [Some(t), Some(c)] = pair {
            tested.push(t);
            controlled.push(c);
        }
    }
    Ok((tested, controlled))
}

/// Paired figures for the slices starting in `[from, to)`: the tested gateway's median
/// rate, the median of its rate ratios to the control in the same seconds, and the same
/// two for server CPU per call.
fn window(tested: &[Slice], controlled: &[Slice], from: i64, to: i64) -> (f64, f64, f64, f64) {
    let idx: Vec<usize> = (0..tested.len())
        .filter(|&i| tested[i].at >= from && tested[i].at < to)
        .collect();
    let pick =
        |v: &[Slice], f: fn(&Slice) -> f64| idx.iter().map(|&i| f(&v[i])).collect::<Vec<f64>>();
    let rate = pick(tested, |s| s.rate);
    let ratio = paired(&rate, &pick(controlled, |s| s.rate));
    let cpu = pick(tested, |s| s.cpu_per_call_us);
    let cpu_ratio = paired(&cpu, &pick(controlled, |s| s.cpu_per_call_us));
    (median(&rate), ratio, median(&cpu), cpu_ratio)
}

/// Upstream requests while the endpoint failed: how many keys asked, the most any one
/// key asked, and how many requests failed in all.
fn requests_during(ep: &Endpoint, t: &Timeline) -> (usize, u64, u64) {
    let hits = ep.hits();
    let mut during_by_key: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed = 0u64;
    for h in &hits {
        let g = t.clock.at_wall(h.arrived_wall_ms);
        if g >= t.on && g <= t.off {
            *during_by_key.entry(h.key.as_str()).or_insert(0) += 1;
            if !h.ok {
                failed += 1;
            }
        }
    }
    let max = during_by_key.values().copied().max().unwrap_or(0);
    (during_by_key.len(), max, failed)
}

/// Cache-hit throughput during the outage against before it, and the retries it caused.
fn report_during(
    rep: &mut Report,
    plan: &Plan,
    ep: &Endpoint,
    t: &Timeline,
    tested: &[Slice],
    controlled: &[Slice],
) {
    let (before, before_vs, cpu_before, cpu_before_vs) =
        window(tested, controlled, 2_000, OUTAGE_FROM - 1_000);
    let (during, during_vs, cpu_during, cpu_during_vs) =
        window(tested, controlled, OUTAGE_FROM + 1_000, OUTAGE_TO);
    let ratio = during_vs / before_vs.max(1e-9);
    let (keys, max, failed) = requests_during(ep, t);
    let outage_s = (t.off - t.on) as f64 / 1000.0;
    let bound =
        ((OUTAGE_TO - OUTAGE_FROM) as f64 / KNOBS.backoff_initial_ms as f64).ceil() as u64 + 1;
    rep.check(
        max <= bound,
        format!(
            "outage: a key made {max} upstream requests in a {outage_s:.0} s outage, bound {bound}"
        ),
    );
    rep.check(
        failed > 0,
        "outage: no refresh was attempted during the outage, so it tested nothing",
    );
    rep.row(
        Row::new(format!(
            "outage: endpoint answers 503 for {outage_s:.0} s while tokens are valid (clock ×{}); cache-hit throughput during / before",
            plan.outage_factor
        ))
        .authgate(format!(
            "{} / {} calls/s raw ({:.3}); vs a control gateway in the same seconds {during_vs:.3} / {before_vs:.3}; server CPU per call {cpu_during:.1} / {cpu_before:.1} µs, vs control {cpu_during_vs:.3} / {cpu_before_vs:.3}",
            num(during),
            num(before),
            during / before.max(1e-9)
        ))
        .ratio(format!("{ratio:.3}"))
        .goal(
            "ratio ≥ 0.95 (paired with the control)",
            Verdict::of(ratio >= 0.95, plan.judged()),
        ),
    );
    rep.row(
        Row::new("outage: upstream requests per key during the outage")
            .authgate(format!("max {max} ({failed} failed in all, {keys} keys)"))
            .goal(
                format!(
                    "≤ ⌈{} s / {} s backoff⌉ + 1 = {bound}",
                    (OUTAGE_TO - OUTAGE_FROM) / 1000,
                    KNOBS.backoff_initial_ms / 1000
                ),
                Verdict::of(max <= bound, true),
            ),
    );
}

/// The gateway time by which every key got a new token from the recovered endpoint, once
/// all have.
fn recovered(ep: &Endpoint, t: &Timeline) -> Option<i64> {
    let hits = ep.hits();
    let mut firsts: BTreeMap<String, i64> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.ok) {
        let g = t.clock.at_wall(h.arrived_wall_ms);
        if g > t.off {
            firsts.entry(h.key.clone()).or_insert(g);
        }
    }
    (firsts.len() == KEYS).then(|| firsts.values().copied().max().unwrap_or(t.off))
}

/// After the outage: light load until every key got a new token from the recovered
/// endpoint (or long past expiry). Calls may fail here; they are counted, not fatal.
async fn after_recovery(
    rep: &mut Report,
    ep: &Endpoint,
    t: &Timeline,
    conns: &Connections,
    target: &Arc<Target>,
) {
    let clock = t.clock;
    let give_up = t.t0 + LIFETIME_MS + 70_000;
    let chunk = Duration::from_millis(clock.real_ms(1_000).max(20) as u64);
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    let mut all_back = recovered(ep, t);
    while all_back.is_none() && clock.now_ms() < give_up {
        let r = load::open_loop(conns, target, 200.0, chunk).await;
        ok += r.ok;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        all_back = recovered(ep, t);
    }
    let expiry_after_recovery = (t.t0 + LIFETIME_MS - t.off) as f64 / 1000.0;
    let recovery = match all_back {
        Some(g) => format!(
            "every key refreshed {:.1} s after the endpoint recovered",
            (g - t.off) as f64 / 1000.0
        ),
        None => format!(
            "no refresh within {:.0} s of recovery",
            (give_up - t.off) as f64 / 1000.0
        ),
    };
    rep.row(
        Row::new(format!(
            "outage: after the endpoint recovers (tokens expire {expiry_after_recovery:.0} s later)"
        ))
        .authgate(if ok + errors == 0 {
            format!("{recovery}, before the outage load ended; no call failed")
        } else {
            format!(
                "{recovery}; {errors} of {} calls failed meanwhile{}",
                ok + errors,
                first_error
                    .map(|e| format!(" (first: {})", e.chars().take(140).collect::<String>()))
                    .unwrap_or_default()
            )
        })
        .goal(
            "context: the backoff should retry before the cached token expires",
            Verdict::Info,
        ),
    );
}
