//! Refresh spread: many keys issued at once, kept in use past their tokens' expiry on an
//! accelerated clock; the busiest second may hold only a small share of their refreshes.

use super::common::token_set_decoder;
use super::{get_token_message, Ctx, Gateway, Plan, GET_TOKEN};
use crate::clock::SharedClock;
use crate::endpoint::{Endpoint, Hit};
use crate::gateway::{self, BrokerKnobs};
use crate::load::{self, Check, Connections, Target};
use crate::report::{Report, Row, Verdict};
use authgate::clock::Clock;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lifetime of the endpoint's tokens, in gateway milliseconds.
const LIFETIME_MS: i64 = 60_000;
/// Credentials the keys are spread over.
const CREDS: usize = 16;

pub(super) async fn spread(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let n = plan.spread_keys;
    let clock = SharedClock::starting_now(plan.spread_factor);
    ep.set_expires_in((LIFETIME_MS / 1000) as u64);
    let gw = ctx
        .start_gateway("spread", CREDS, &BrokerKnobs::default(), Some(clock))
        .await?;
    let conns = Connections::open(gw.grpc, plan.conns).await?;
    let scopes: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| get_token_message(i % CREDS, &[scopes[i].as_str()]))
        .collect();
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &messages,
        Check::Decode(token_set_decoder(Arc::new(Mutex::new(HashSet::new())))),
    )?);
    ep.clear_hits();
    // All keys at once: each frame once.
    load::burst(&conns, &target, n)
        .await
        .ensure_valid("spread: issue")?;
    let issued_by = clock.now_ms();
    // Keep every key in use until all tokens would have expired. A key not refreshed by its expiry is fetched again then, so 10 s past it every key
    // has had its second upstream request.
    let until = issued_by + LIFETIME_MS + 10_000;
    let real = Duration::from_millis(clock.real_ms(until - clock.now_ms()).max(0) as u64);
    load::closed_loop(&conns, &target, 4, real)
        .await
        .ensure_valid("spread: load")?;
    ask_late_keys(ep, &gw, &conns, &scopes, &messages).await?;
    report_spread(rep, plan, ep, clock, issued_by);
    drop(conns);
    gw.proc.stop().await;
    Ok(())
}

/// On a slow machine a key may not have been asked for since its token expired; ask for
/// those once more, so every key's second upstream request is counted.
async fn ask_late_keys(
    ep: &Endpoint,
    gw: &Gateway,
    conns: &Connections,
    scopes: &[String],
    messages: &[Vec<u8>],
) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = ep.counts_by_key();
        let missing: Vec<Vec<u8>> = (0..messages.len())
            .filter(|&i| {
                counts
                    .get(&gateway::endpoint_key(i % CREDS, &scopes[i]))
                    .copied()
                    .unwrap_or(0)
                    < 2
            })
            .map(|i| messages[i].clone())
            .collect();
        if missing.is_empty() || Instant::now() > give_up {
            break;
        }
        let again = Arc::new(Target::new(
            gw.grpc,
            GET_TOKEN,
            &missing,
            Check::Decode(token_set_decoder(Arc::new(Mutex::new(HashSet::new())))),
        )?);
        load::burst(conns, &again, missing.len())
            .await
            .ensure_valid("spread: late keys")?;
    }
    Ok(())
}

/// Each key's first upstream request is its issue, its second its refresh; the refreshes
/// are bucketed by gateway second.
fn report_spread(rep: &mut Report, plan: &Plan, ep: &Endpoint, clock: SharedClock, issued_by: i64) {
    let n = plan.spread_keys;
    let mut per_key: BTreeMap<String, Vec<&Hit>> = BTreeMap::new();
    let hits = ep.hits();
    for h in &hits {
        per_key.entry(h.key.clone()).or_default().push(h);
    }
    let issue: Vec<i64> = per_key
        .values()
        .filter_map(|v| v.first())
        .map(|h| clock.at_wall(h.arrived_wall_ms))
        .collect();
    let refreshes: Vec<i64> = per_key
        .values()
        .filter_map(|v| v.get(1))
        .map(|h| clock.at_wall(h.arrived_wall_ms))
        .collect();
    let mut buckets: BTreeMap<i64, usize> = BTreeMap::new();
    for t in &refreshes {
        *buckets.entry(t.div_euclid(1000)).or_insert(0) += 1;
    }
    let busiest = buckets.values().copied().max().unwrap_or(0);
    let share = busiest as f64 / refreshes.len().max(1) as f64;
    let span = |v: &[i64]| {
        (v.iter().max().copied().unwrap_or(0) - v.iter().min().copied().unwrap_or(0)) as f64
            / 1000.0
    };
    if std::env::var_os("AUTHGATE_BENCH_DEBUG").is_some() {
        for (k, v) in &per_key {
            if v.len() < 2 {
                eprintln!(
                    "  not refreshed: {k} issued at +{:.1} s (phase ended at +{:.1} s)",
                    (clock.at_wall(v[0].arrived_wall_ms) - issued_by) as f64 / 1000.0,
                    (clock.now_ms() - issued_by) as f64 / 1000.0
                );
            }
        }
    }
    rep.check(
        per_key.len() == n && refreshes.len() == n,
        format!(
            "spread: {} of {n} keys fetched, {} refreshed",
            per_key.len(),
            refreshes.len()
        ),
    );
    rep.row(
        Row::new(format!(
            "refresh spread: {n} keys issued at once ({lifetime_s} s tokens, clock ×{}); busiest second's share of their refreshes",
            plan.spread_factor,
            lifetime_s = LIFETIME_MS / 1000
        ))
        .authgate(format!(
            "{:.1}% ({busiest} of {}); issued within {:.1} s, refreshed over {:.1} s",
            100.0 * share,
            refreshes.len(),
            span(&issue),
            span(&refreshes)
        ))
        .goal("≤ 20%", Verdict::of(share <= 0.20, plan.judged())),
    );
}
