//! Helpers several scenarios share: the token-collecting decoder, paired ratios, latency
//! formatting, the bare tonic baseline started next to a running authgate, and measured
//! runs of two sides taking turns (checked against authgate's own counters).

use super::{get_token_message, Ctx, Gateway, Plan, GET_TOKEN};
use crate::echo;
use crate::gateway::ServerProcess;
use crate::load::{self, Check, Connections, Decoder, Target};
use crate::procfs;
use crate::report::{micros, Report};
use crate::stats::{median, percentile};
use authgate::proto::v1::GetTokenResponse;
use parking_lot::Mutex;
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// A decoder that accepts any reply with a token and records the distinct tokens seen.
pub(super) fn token_set_decoder(seen: Arc<Mutex<HashSet<String>>>) -> Decoder {
    Arc::new(move |bytes| {
        let r = GetTokenResponse::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        if r.access_token.is_empty() {
            return Err("empty access token".into());
        }
        seen.lock().insert(r.access_token);
        Ok(())
    })
}

/// The median of the per-alternation ratios `a[i] / b[i]`: each pair ran back to back, so
/// a burst of other work on the machine moves both sides of a pair, not one side's median.
pub(super) fn paired(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

pub(super) fn ms(us: u32) -> String {
    micros(f64::from(us))
}

/// The baseline next to a running authgate: started with the exact bytes of authgate's
/// reply to the first GetToken (which fetches the token), with connections to both.
pub(super) struct Pair {
    pub(super) request: Vec<u8>,
    pub(super) reply_len: usize,
    pub(super) echo: ServerProcess,
    pub(super) echo_addr: SocketAddr,
    pub(super) ag_conns: Connections,
    pub(super) echo_conns: Connections,
}

impl Pair {
    pub(super) async fn start(ctx: &Ctx, gw: &Gateway, conns: usize) -> anyhow::Result<Self> {
        let request = get_token_message(0, &["read"]);
        let reply = Arc::new(Mutex::new(Vec::new()));
        let probe = {
            let reply = reply.clone();
            Arc::new(Target::new(
                gw.grpc,
                GET_TOKEN,
                std::slice::from_ref(&request),
                Check::Decode(Arc::new(move |b: &[u8]| {
                    *reply.lock() = b.to_vec();
                    Ok(())
                })),
            )?)
        };
        let ag_conns = Connections::open(gw.grpc, conns).await?;
        load::burst(&ag_conns, &probe, 1)
            .await
            .ensure_valid("first GetToken")?;
        let reply = std::mem::take(&mut *reply.lock());
        let dir = ctx.scratch.path().join("echo");
        std::fs::create_dir_all(&dir)?;
        let echo = ServerProcess::spawn(
            &ctx.pinning,
            &[
                "serve-echo".to_owned(),
                "--reply-hex".to_owned(),
                echo::hex(&reply),
            ],
            &dir.join("echo.log"),
            &[],
        )
        .await?;
        let echo_addr = echo.ready()?.grpc;
        let echo_conns = Connections::open(echo_addr, conns).await?;
        Ok(Self {
            request,
            reply_len: reply.len(),
            echo,
            echo_addr,
            ag_conns,
            echo_conns,
        })
    }

    pub(super) async fn stop(self) {
        drop(self.ag_conns);
        drop(self.echo_conns);
        self.echo.stop().await;
    }
}

/// `plan.alternations` measured runs of each side, alternating which goes first; closed
/// loop, or open loop at `open_rate`.
pub(super) async fn alternate(
    rep: &mut Report,
    a_side: &Side<'_>,
    b_side: &Side<'_>,
    open_rate: Option<f64>,
    plan: &Plan,
) -> anyhow::Result<(Runs, Runs)> {
    let (mut a, mut b) = (Runs::default(), Runs::default());
    for i in 0..plan.alternations {
        if i % 2 == 0 {
            measured(rep, a_side, open_rate, plan, &mut a).await?;
            measured(rep, b_side, open_rate, plan, &mut b).await?;
        } else {
            measured(rep, b_side, open_rate, plan, &mut b).await?;
            measured(rep, a_side, open_rate, plan, &mut a).await?;
        }
    }
    Ok((a, b))
}

/// One side of a comparison: a server, its connections and the call to make.
pub(super) struct Side<'a> {
    pub(super) name: &'static str,
    pub(super) conns: &'a Connections,
    pub(super) target: &'a Arc<Target>,
    /// Size of the reply message every call must get.
    pub(super) reply_len: usize,
    pub(super) proc: &'a ServerProcess,
    /// authgate's HTTP port, to check its cache-hit counter.
    pub(super) counters: Option<SocketAddr>,
}

/// Per-run figures of one side, one entry per measured run.
#[derive(Default)]
pub(super) struct Runs {
    pub(super) rps: Vec<f64>,
    pub(super) cpu_us: Vec<f64>,
    pub(super) util: Vec<f64>,
    pub(super) loader_util: Vec<f64>,
    pub(super) p50: Vec<f64>,
    pub(super) p99: Vec<f64>,
}

/// One measured run of `side`, checked: every call good, every byte accounted for, and
/// for authgate, every call a cache hit by its own counters.
async fn measured(
    rep: &mut Report,
    side: &Side<'_>,
    open_rate: Option<f64>,
    plan: &Plan,
    runs: &mut Runs,
) -> anyhow::Result<()> {
    let before = match side.counters {
        Some(h) => Some(gateway_counters(h).await?),
        None => None,
    };
    let me = std::process::id();
    let c0 = side.proc.cpu_seconds()?;
    let l0 = procfs::cpu_seconds(me)?;
    let r = match open_rate {
        None => load::closed_loop(side.conns, side.target, plan.streams, plan.run).await,
        Some(rate) => load::open_loop(side.conns, side.target, rate, plan.run).await,
    };
    let c1 = side.proc.cpu_seconds()?;
    let l1 = procfs::cpu_seconds(me)?;
    r.ensure_valid(side.name)?;
    rep.check(
        r.bytes == r.ok * (side.reply_len as u64 + 5),
        format!(
            "{}: {} bytes received for {} replies of {} bytes",
            side.name,
            r.bytes,
            r.ok,
            side.reply_len + 5
        ),
    );
    if let (Some(h), Some(b)) = (side.counters, before) {
        let a = gateway_counters(h).await?;
        let hits = counter_delta(&b, &a, "authgate_cache_hits_total");
        let misses = counter_delta(&b, &a, "authgate_cache_misses_total");
        rep.check(
            hits as u64 == r.ok && misses == 0.0,
            format!(
                "{}: authgate counted {hits} cache hits and {misses} misses for {} calls",
                side.name, r.ok
            ),
        );
    }
    let secs = r.elapsed.as_secs_f64();
    runs.rps.push(r.rate());
    runs.cpu_us.push((c1 - c0) * 1e6 / r.ok as f64);
    runs.util.push((c1 - c0) / secs);
    runs.loader_util.push((l1 - l0) / secs);
    let lat = r.latencies_us();
    runs.p50.push(f64::from(percentile(&lat, 50.0)));
    runs.p99.push(f64::from(percentile(&lat, 99.0)));
    eprintln!(
        "  {:8} {:>9.0} calls/s  {:>6.1} µs CPU/call  server CPU {:>3.0}%  p50 {:>6} p99 {:>6}",
        side.name,
        r.rate(),
        (c1 - c0) * 1e6 / r.ok as f64,
        100.0 * (c1 - c0) / secs,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0)
    );
    Ok(())
}

/// authgate's `/metrics` counters.
pub(super) async fn gateway_counters(http: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

/// How much counter `name` grew from `before` to `after`.
pub(super) fn counter_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    name: &str,
) -> f64 {
    let get = |m: &BTreeMap<String, f64>| m.get(name).copied().unwrap_or(0.0);
    get(after) - get(before)
}
