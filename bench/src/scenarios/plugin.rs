//! An out-of-process provider plugin against the same flow in process, in one gateway and
//! one run: the example Python plugin (`[[plugins]]`, kind `example_ticket`) and its
//! in-process twin (the SDK's `TicketProvider`, same wire format), each serving one
//! credential against a ticket endpoint in its own process.
//!
//! Cold fetches: one caller, one call after another, each GetToken asking for a scope set
//! never asked before, so each is a real cache miss (a new key, the two-step flow upstream,
//! the token stored); blocks of the two sides take turns. Cache hits: one warm key per
//! side, the closed-loop load of the cache-hit scenario, sides alternating. Every call is
//! checked, every cold call must be one miss, one session and one redeemed ticket, and no
//! cache hit may reach the endpoint.

use super::common::{alternate, counter_delta, gateway_counters, ms, paired, Side};
use super::{get_token_message, Ctx, Gateway, Plan, GET_TOKEN, TOKEN_LEN};
use crate::endpoint::Stats;
use crate::gateway::{Pinning, ServerProcess};
use crate::load::{self, Check, Connections, Decoder, FrameMaker, Target};
use crate::procfs;
use crate::report::{micros, num, Report, Row, Verdict};
use crate::stats::{median, percentile};
use crate::ticket::{self, PluginProgram, EXTERNAL_CRED, IN_PROCESS_CRED};
use anyhow::Context;
use authgate::proto::v1::GetTokenResponse;
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The two sides: name (as the progress lines show it) and credential.
const SIDES: [(&str, usize); 2] = [("external", EXTERNAL_CRED), ("in-proc", IN_PROCESS_CRED)];

/// The servers of this scenario.
struct Servers {
    gw: Gateway,
    /// The plugin process the gateway started.
    plugin_pid: u32,
    /// The ticket endpoint's own process.
    endpoint: ServerProcess,
    endpoint_addr: SocketAddr,
}

pub(super) async fn plugin(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let program = match PluginProgram::example() {
        Ok(p) => p,
        Err(e) => {
            rep.note(format!(
                "plugin: skipped, the example plugin cannot run here ({e:#})."
            ));
            return Ok(());
        }
    };
    let s = start(ctx, &program).await?;
    rep.note(format!(
        "plugin: the external side is examples/plugins/ticket/ticket_plugin.py on sdk/python ({}), started by the gateway and so on the servers' CPU; the in-process side is the SDK's TicketProvider under kind `{}`; both credentials in one gateway, against one ticket endpoint (`serve-endpoint`) in its own process on the load generator's CPU, answering at once. A cold fetch is a GetToken for a scope set never asked before: a cache miss, `POST /session` then `POST /token` (grant_type=ticket), the token stored.",
        program.runtime,
        ticket::IN_PROCESS_KIND
    ));
    cold_fetches(ctx, rep, &s).await?;
    cache_hits(ctx, rep, &s).await?;
    s.gw.proc.stop().await;
    s.endpoint.stop().await;
    Ok(())
}

/// The ticket endpoint (pinned with the load generator) and the gateway with the plugin.
async fn start(ctx: &Ctx, program: &PluginProgram) -> anyhow::Result<Servers> {
    let dir = ctx.scratch.path().join("plugin");
    std::fs::create_dir_all(&dir)?;
    let beside_loader = Pinning {
        server_cpu: ctx.pinning.loader_cpu,
        loader_cpu: ctx.pinning.loader_cpu,
    };
    let endpoint = ServerProcess::spawn(
        &beside_loader,
        &["serve-endpoint".to_owned()],
        &dir.join("endpoint.log"),
        &[],
    )
    .await?;
    let endpoint_addr = endpoint.ready()?.grpc;
    let plan = &ctx.plan;
    // Every cold fetch is a new scope set of its credential, plus the cache-hit key.
    let scope_sets = plan.plugin_warmup_calls + plan.alternations * plan.plugin_cold_calls + 16;
    let text = ticket::config_text(
        &dir,
        &format!("http://{endpoint_addr}"),
        program,
        scope_sets,
    );
    let gw = ctx
        .start_gateway_with(&dir, &text, &["--in-process-ticket"], None)
        .await?;
    let plugin_pid = *gw
        .plugin_pids
        .first()
        .context("authgate reported no plugin process")?;
    Ok(Servers {
        gw,
        plugin_pid,
        endpoint,
        endpoint_addr,
    })
}

/// A reply must carry a token of the endpoint's length.
fn token_check() -> Decoder {
    Arc::new(|b: &[u8]| {
        let r = GetTokenResponse::decode(b).map_err(|e| format!("decode: {e}"))?;
        if r.access_token.len() == TOKEN_LEN {
            Ok(())
        } else {
            Err(format!("token of {} characters", r.access_token.len()))
        }
    })
}

/// Call `i` asks credential `cred` for scope `f<i>`: a new cache key every call.
fn cold_maker(cred: usize) -> FrameMaker {
    Arc::new(move |i| load::frame(&get_token_message(cred, &[format!("f{i}").as_str()])))
}

/// Cold-fetch figures of one side over its measured blocks.
#[derive(Default)]
struct Cold {
    /// Every measured fetch.
    latencies: Vec<u32>,
    /// Per block.
    p50: Vec<f64>,
    gateway_cpu_us: Vec<f64>,
    plugin_cpu_us: Vec<f64>,
}

async fn cold_fetches(ctx: &Ctx, rep: &mut Report, s: &Servers) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let conns = Connections::open(s.gw.grpc, 1).await?;
    let target = Target::new(s.gw.grpc, GET_TOKEN, &[], Check::Decode(token_check()))?;
    let counters0 = gateway_counters(s.gw.http).await?;
    let stats0 = Stats::fetch(s.endpoint_addr).await?;
    let warm = plan.plugin_warmup_calls;
    for (name, cred) in SIDES {
        load::one_by_one(&conns, &target, cold_maker(cred), 0..warm)
            .await
            .ensure_valid(&format!("plugin warm-up, {name}"))?;
    }
    let n = plan.plugin_cold_calls;
    let mut cold = [Cold::default(), Cold::default()];
    for a in 0..plan.alternations {
        let range = warm + a * n..warm + (a + 1) * n;
        let order = if a % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            cold_block(s, &conns, &target, side, range.clone(), &mut cold[side]).await?;
        }
    }
    let total = 2 * (warm + plan.alternations * n) as u64;
    check_cold_counts(rep, s, &counters0, &stats0, total).await?;
    cold_rows(rep, &cold);
    Ok(())
}

/// One block of cold fetches of side `side`, timed, with the CPU the gateway and the
/// plugin process spent on them.
async fn cold_block(
    s: &Servers,
    conns: &Connections,
    target: &Target,
    side: usize,
    range: std::ops::Range<usize>,
    out: &mut Cold,
) -> anyhow::Result<()> {
    let (name, cred) = SIDES[side];
    let calls = range.len() as f64;
    let (g0, p0) = (s.gw.proc.cpu_seconds()?, procfs::cpu_seconds(s.plugin_pid)?);
    let r = load::one_by_one(conns, target, cold_maker(cred), range).await;
    let (g1, p1) = (
        s.gw.proc.cpu_seconds()?,
        procfs::cpu_seconds(s.plugin_pid).context("the plugin process is gone")?,
    );
    r.ensure_valid(&format!("plugin cold fetches, {name}"))?;
    let lat = r.latencies_us();
    let (gw_us, plugin_us) = ((g1 - g0) * 1e6 / calls, (p1 - p0) * 1e6 / calls);
    eprintln!(
        "  {name:8} {calls} cold fetches  p50 {:>6} p99 {:>6} µs  CPU per fetch: gateway {gw_us:.0} µs + plugin {plugin_us:.0} µs",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0)
    );
    out.p50.push(f64::from(percentile(&lat, 50.0)));
    out.gateway_cpu_us.push(gw_us);
    out.plugin_cpu_us.push(plugin_us);
    out.latencies.extend(lat);
    Ok(())
}

/// Every cold GetToken was one cache miss and one fetch by the gateway's counters, and one
/// session and one redeemed ticket at the endpoint.
async fn check_cold_counts(
    rep: &mut Report,
    s: &Servers,
    counters0: &BTreeMap<String, f64>,
    stats0: &Stats,
    total: u64,
) -> anyhow::Result<()> {
    let counters1 = gateway_counters(s.gw.http).await?;
    let misses = counter_delta(counters0, &counters1, "authgate_cache_misses_total");
    let fetches = counter_delta(counters0, &counters1, "authgate_upstream_fetches_total");
    rep.check(
        misses as u64 == total && fetches as u64 == total,
        format!("plugin: {total} cold GetToken counted as {misses} cache misses and {fetches} upstream fetches"),
    );
    let st = Stats::fetch(s.endpoint_addr).await?.since(stats0);
    rep.check(
        st.sessions == total && st.redeemed == total && st.refused == 0 && st.requests == 2 * total,
        format!(
            "plugin: {total} cold fetches made {} requests, {} sessions, {} tickets redeemed, {} refused",
            st.requests, st.sessions, st.redeemed, st.refused
        ),
    );
    Ok(())
}

/// `+12 µs` or `−12 µs`.
fn signed(us: f64) -> String {
    if us >= 0.0 {
        format!("+{}", micros(us))
    } else {
        format!("−{}", micros(-us))
    }
}

fn cold_rows(rep: &mut Report, cold: &[Cold; 2]) {
    let [ext, inp] = cold;
    let p = |c: &Cold, q: f64| percentile(&c.latencies, q);
    let (e50, e99, i50, i99) = (p(ext, 50.0), p(ext, 99.0), p(inp, 50.0), p(inp, 99.0));
    rep.row(
        Row::new(format!(
            "plugin: cold fetch (cache miss, session + token upstream), one caller, p50 / p99 over {} fetches each: external Python plugin vs the same flow in process",
            ext.latencies.len()
        ))
        .authgate(format!("{} / {}", ms(e50), ms(e99)))
        .baseline(format!("{} / {}", ms(i50), ms(i99)))
        .ratio(format!(
            "{:.2} / {:.2}",
            f64::from(e50) / f64::from(i50.max(1)),
            f64::from(e99) / f64::from(i99.max(1))
        ))
        .goal("context", Verdict::Info),
    );
    let per_block: Vec<f64> = ext.p50.iter().zip(&inp.p50).map(|(e, i)| e - i).collect();
    let (lo, hi) = per_block
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), d| (lo.min(*d), hi.max(*d)));
    rep.row(
        Row::new("plugin: extra latency per cold fetch, external − in process, p50 / p99")
            .authgate(format!(
                "{} / {}",
                signed(f64::from(e50) - f64::from(i50)),
                signed(f64::from(e99) - f64::from(i99))
            ))
            .goal(
                format!(
                    "context: p50 difference per alternation {} to {}",
                    signed(lo),
                    signed(hi)
                ),
                Verdict::Info,
            ),
    );
    let total = |c: &Cold| -> Vec<f64> {
        c.gateway_cpu_us
            .iter()
            .zip(&c.plugin_cpu_us)
            .map(|(g, p)| g + p)
            .collect()
    };
    rep.row(
        Row::new("plugin: server CPU per cold fetch (µs, user+system), gateway + plugin process")
            .authgate(format!(
                "{:.0} + {:.0}",
                median(&ext.gateway_cpu_us),
                median(&ext.plugin_cpu_us)
            ))
            .baseline(format!(
                "{:.0} + {:.0}",
                median(&inp.gateway_cpu_us),
                median(&inp.plugin_cpu_us)
            ))
            .ratio(format!("{:.2}", paired(&total(ext), &total(inp))))
            .goal("context", Verdict::Info),
    );
}

/// The size of the reply to `request`, asked once (the key's fetch, when it is cold).
async fn first_reply_len(
    conns: &Connections,
    addr: SocketAddr,
    request: &[u8],
) -> anyhow::Result<usize> {
    let len = Arc::new(AtomicUsize::new(0));
    let check = token_check();
    let probe = {
        let len = len.clone();
        Arc::new(Target::new(
            addr,
            GET_TOKEN,
            &[request.to_vec()],
            Check::Decode(Arc::new(move |b: &[u8]| {
                len.store(b.len(), Ordering::SeqCst);
                check(b)
            })),
        )?)
    };
    load::burst(conns, &probe, 1)
        .await
        .ensure_valid("plugin: first GetToken")?;
    Ok(len.load(Ordering::SeqCst))
}

/// Cache-hit throughput and CPU per call of a credential on the external plugin against
/// one on the in-process plugin, alternating; no call may reach the endpoint.
async fn cache_hits(ctx: &Ctx, rep: &mut Report, s: &Servers) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let conns = Connections::open(s.gw.grpc, plan.conns).await?;
    let mut targets = Vec::new();
    for (_, cred) in SIDES {
        let request = get_token_message(cred, &["read"]);
        let reply_len = first_reply_len(&conns, s.gw.grpc, &request).await?;
        let target = Target::new(s.gw.grpc, GET_TOKEN, &[request], Check::ReplyLen(reply_len))?;
        targets.push((Arc::new(target), reply_len));
    }
    let side = |i: usize| Side {
        name: SIDES[i].0,
        conns: &conns,
        target: &targets[i].0,
        reply_len: targets[i].1,
        proc: &s.gw.proc,
        counters: Some(s.gw.http),
    };
    let (ext, inp) = (side(0), side(1));
    for sd in [&ext, &inp] {
        load::closed_loop(sd.conns, sd.target, plan.streams, plan.warmup)
            .await
            .ensure_valid(sd.name)?;
    }
    let stats0 = Stats::fetch(s.endpoint_addr).await?;
    let plugin_cpu0 = procfs::cpu_seconds(s.plugin_pid)?;
    let t0 = Instant::now();
    let (a, b) = alternate(rep, &ext, &inp, None, &hit_slices(plan)).await?;
    let plugin_cpu = procfs::cpu_seconds(s.plugin_pid)? - plugin_cpu0;
    let secs = t0.elapsed().as_secs_f64();
    let st = Stats::fetch(s.endpoint_addr).await?.since(&stats0);
    rep.check(
        st.requests == 0,
        format!(
            "plugin: cache hits made {} requests to the endpoint",
            st.requests
        ),
    );
    hit_rows(rep, plan, &a, &b, plugin_cpu, secs);
    Ok(())
}

/// The plan's measured time in four times as many turns of a quarter the length: the two
/// sides are the same code, so the comparison is only as good as the pairing, and other
/// work on a shared machine comes and goes within seconds. A quick run (nothing judged)
/// keeps its turns and takes a quarter of the time.
fn hit_slices(plan: &Plan) -> Plan {
    let turns = if plan.quick { 1 } else { 4 };
    Plan {
        alternations: plan.alternations * turns,
        run: plan.run / 4,
        ..plan.clone()
    }
}

fn hit_rows(
    rep: &mut Report,
    plan: &Plan,
    ext: &super::common::Runs,
    inp: &super::common::Runs,
    plugin_cpu_s: f64,
    secs: f64,
) {
    let ratio = paired(&ext.rps, &inp.rps);
    let slices = hit_slices(plan);
    rep.row(
        Row::new(format!(
            "plugin: cache-hit throughput, closed loop (calls/s, {} turns of {:.1} s each): credential on the external plugin vs on the in-process plugin",
            slices.alternations,
            slices.run.as_secs_f64()
        ))
            .authgate(num(median(&ext.rps)))
            .baseline(num(median(&inp.rps)))
            .ratio(format!("{ratio:.3}"))
            .goal("ratio ≥ 0.95 (a hit reaches no plugin)", Verdict::of(ratio >= 0.95, plan.judged())),
    );
    rep.row(
        Row::new("plugin: server CPU per cache hit (µs, user+system), external vs in-process credential")
            .authgate(format!("{:.1}", median(&ext.cpu_us)))
            .baseline(format!("{:.1}", median(&inp.cpu_us)))
            .ratio(format!("{:.3}", paired(&ext.cpu_us, &inp.cpu_us)))
            .goal(
                format!(
                    "context: server CPU busy {:.0}% / {:.0}%; the plugin process used {:.0} ms of CPU in those {secs:.0} s (health checks)",
                    100.0 * median(&ext.util),
                    100.0 * median(&inp.util),
                    plugin_cpu_s * 1000.0
                ),
                Verdict::Info,
            ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_differences_read_naturally() {
        assert_eq!(signed(1500.0), "+1500 µs");
        assert_eq!(signed(-20.0), "−20 µs");
        assert_eq!(signed(25_000.0), "+25.0 ms");
    }

    #[test]
    fn every_cold_call_is_a_new_key() {
        let make = cold_maker(0);
        assert_ne!(make(1), make(2));
    }
}
