//! Memory per cached token: the gateway's resident size grows by at most the key, the
//! token and a fixed overhead per entry as the cache fills to each requested size.

use super::{get_token_message, Ctx, GET_TOKEN, TOKEN_LEN};
use crate::gateway::{self, BrokerKnobs};
use crate::load::{self, Check, Connections, Target};
use crate::procfs;
use crate::report::{Report, Row, Verdict};
use authgate::proto::v1::GetTokenResponse;
use prost::Message;
use std::sync::Arc;
use std::time::Instant;

pub(super) async fn memory(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let mut entries = plan.memory_entries.clone();
    entries.sort_unstable();
    let max = entries.last().copied().unwrap_or(0);
    // At most 1,000 scope sets per credential, like a large real deployment.
    let creds = max.div_ceil(1000).max(16);
    let warm = (max / 100).clamp(100, 10_000).min(entries[0] / 2);
    ep.set_tracking(false);
    ep.set_expires_in(86_400);
    let gw = ctx
        .start_gateway("memory", creds, &BrokerKnobs::default(), None)
        .await?;
    let conns = Connections::open(gw.grpc, 4).await?;
    let make: load::FrameMaker = Arc::new(move |i| {
        load::frame(&get_token_message(
            i % creds,
            &[scope_of(i, creds).as_str()],
        ))
    });
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &[get_token_message(0, &["s0"])],
        Check::Decode(Arc::new(|b: &[u8]| {
            let r = GetTokenResponse::decode(b).map_err(|e| e.to_string())?;
            if r.access_token.len() == TOKEN_LEN {
                Ok(())
            } else {
                Err(format!("token of {} characters", r.access_token.len()))
            }
        })),
    )?);
    let pid = gw.proc.pid.to_string();
    fill(&conns, &target, &make, 0, warm).await?;
    let n0 = ep.requests();
    let rss0 = procfs::rss_bytes_of(&pid)?;
    let cpu0 = gw.proc.cpu_seconds()?;
    let mut done = warm;
    for n in entries {
        fill(&conns, &target, &make, done, n).await?;
        done = n;
        let rss = procfs::rss_bytes_of(&pid)?;
        let cpu_per_fetch = (gw.proc.cpu_seconds()? - cpu0) / (n - warm) as f64;
        let fetched = ep.requests() - n0;
        rep.check(
            fetched == (n - warm) as u64,
            format!(
                "memory: {fetched} upstream requests for {} new keys",
                n - warm
            ),
        );
        let per = (rss.saturating_sub(rss0)) as f64 / (n - warm) as f64;
        let key_bytes = mean_key_bytes(n, creds);
        let goal = key_bytes + TOKEN_LEN as f64 + 256.0;
        rep.row(
            Row::new(format!(
                "memory: resident bytes per cached token at {n} entries ({creds} credentials)"
            ))
            .authgate(format!(
                "{per:.0} B (RSS {} → {} MiB; {:.0} µs server CPU per fetch)",
                rss0 >> 20,
                rss >> 20,
                cpu_per_fetch * 1e6
            ))
            .goal(
                format!("≤ key {key_bytes:.0} + token {TOKEN_LEN} + 256 = {goal:.0} B"),
                Verdict::of(per <= goal, plan.judged()),
            ),
        );
    }
    ep.set_tracking(true);
    drop(conns);
    gw.proc.stop().await;
    Ok(())
}

/// The scope of key `i` when keys are spread over `creds` credentials.
fn scope_of(i: usize, creds: usize) -> String {
    format!("s{}", i / creds)
}

/// The mean length of the first `n` keys' text (tenant, credential id, scope).
fn mean_key_bytes(n: usize, creds: usize) -> f64 {
    (0..n)
        .map(|i| {
            gateway::TENANT.len()
                + gateway::credential_id(i % creds).len()
                + scope_of(i, creds).len()
        })
        .sum::<usize>() as f64
        / n as f64
}

/// Caches keys `from..to`, each fetched once.
async fn fill(
    conns: &Connections,
    target: &Arc<Target>,
    make: &load::FrameMaker,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let r = load::each_once(conns, target, make.clone(), from..to, 64).await;
    r.ensure_valid("memory fill")?;
    anyhow::ensure!(
        r.ok as usize == to - from,
        "memory fill: {} of {} calls",
        r.ok,
        to - from
    );
    eprintln!(
        "  filled {to} keys ({:.0} fetches/s)",
        (to - from) as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
