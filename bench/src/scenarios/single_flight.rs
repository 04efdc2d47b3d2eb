//! Single-flight on the cache-hit scenario's gateway, with a slow endpoint: many
//! concurrent callers on one cold key make one upstream request, and K cold keys make K.

use super::common::{ms, token_set_decoder};
use super::{get_token_message, Ctx, Gateway, GET_TOKEN};
use crate::gateway;
use crate::load::{self, Check, Connections, Target};
use crate::report::{micros, Report, Row, Verdict};
use crate::stats::percentile;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn single_flight(ctx: &Ctx, rep: &mut Report, gw: &Gateway) -> anyhow::Result<()> {
    let conns = Connections::open(gw.grpc, 8).await?;
    ctx.endpoint.set_delay(ctx.plan.sf_delay);
    ctx.endpoint.clear_hits();
    one_cold_key(ctx, rep, gw, &conns).await?;
    cold_keys(ctx, rep, gw, &conns).await?;
    ctx.endpoint.set_delay(Duration::ZERO);
    Ok(())
}

/// One cold key, many callers.
async fn one_cold_key(
    ctx: &Ctx,
    rep: &mut Report,
    gw: &Gateway,
    conns: &Connections,
) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &[get_token_message(1, &["sf-cold"])],
        Check::Decode(token_set_decoder(seen.clone())),
    )?);
    let n0 = ep.requests();
    let r = load::burst(conns, &target, plan.sf_callers).await;
    r.ensure_valid("single-flight")?;
    let upstream = ep.requests() - n0;
    let distinct = seen.lock().len();
    let p99 = percentile(&r.latencies_us(), 99.0);
    let limit_us = plan.sf_delay.as_micros() as f64 * 1.5;
    rep.check(
        upstream == 1,
        format!("single-flight: {upstream} upstream requests for one cold key, expected 1"),
    );
    rep.check(
        distinct == 1 && r.ok == plan.sf_callers as u64,
        format!(
            "single-flight: {} callers got {distinct} distinct tokens",
            r.ok
        ),
    );
    rep.row(
        Row::new(format!(
            "single-flight: {} concurrent GetToken on one cold key, endpoint delay {} ms",
            plan.sf_callers,
            plan.sf_delay.as_millis()
        ))
        .authgate(format!(
            "{upstream} upstream request; {} of {} OK, {distinct} distinct token; p99 {}",
            r.ok,
            plan.sf_callers,
            ms(p99)
        ))
        .goal(
            format!("exactly 1, all OK, 1 token; p99 ≤ {}", micros(limit_us)),
            if upstream == 1 && distinct == 1 {
                Verdict::of(f64::from(p99) <= limit_us, plan.judged())
            } else {
                Verdict::Missed
            },
        ),
    );
    Ok(())
}

/// K cold keys, 100 callers each (each key on its own credential).
async fn cold_keys(
    ctx: &Ctx,
    rep: &mut Report,
    gw: &Gateway,
    conns: &Connections,
) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let k = plan.sf_keys;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let scopes: Vec<String> = (0..k).map(|i| format!("sf-k{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..k)
        .map(|i| get_token_message(2 + i, &[scopes[i].as_str()]))
        .collect();
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &messages,
        Check::Decode(token_set_decoder(seen.clone())),
    )?);
    ep.clear_hits();
    let n0 = ep.requests();
    let r = load::burst(conns, &target, k * 100).await;
    r.ensure_valid("single-flight, K keys")?;
    let upstream = ep.requests() - n0;
    let distinct = seen.lock().len();
    let by_key = ep.counts_by_key();
    let each_once =
        (0..k).all(|i| by_key.get(&gateway::endpoint_key(2 + i, &scopes[i])) == Some(&1));
    rep.check(
        upstream == k as u64 && each_once && distinct == k,
        format!("single-flight: {upstream} upstream requests ({distinct} tokens) for {k} cold keys, expected {k}, one per key"),
    );
    rep.row(
        Row::new(format!(
            "single-flight: {k} cold keys × 100 concurrent callers"
        ))
        .authgate(format!(
            "{upstream} upstream requests, one per key; {} OK; p99 {}",
            r.ok,
            ms(percentile(&r.latencies_us(), 99.0))
        ))
        .goal(
            format!("exactly {k}"),
            Verdict::of(upstream == k as u64 && each_once, true),
        ),
    );
    Ok(())
}
