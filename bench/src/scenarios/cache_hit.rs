//! The headline scenario: authgate's cache hit against the bare tonic baseline given the
//! same request and answering the same reply bytes (throughput, CPU per call, latency at
//! half load), then a client without a gateway. Single-flight runs on the same gateway.

use super::common::{alternate, ms, paired, Pair, Side};
use super::single_flight::single_flight;
use super::{Ctx, Gateway, Plan, CLIENT_SECRET, GET_TOKEN, TOKEN_LEN};
use crate::echo;
use crate::gateway::{BrokerKnobs, ServerProcess};
use crate::load::{self, Check, Connections, Target};
use crate::report::{micros, num, Report, Row, Verdict};
use crate::stats::{median, percentile};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn cache_hit_vs_baseline(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    ep.set_expires_in(3600);
    let gw = ctx
        .start_gateway("main", 16, &BrokerKnobs::default(), None)
        .await?;

    let pair = Pair::start(ctx, &gw, plan.conns).await?;
    let (ag_conns, echo_conns, reply_len) = (&pair.ag_conns, &pair.echo_conns, pair.reply_len);
    let (request, echo_proc) = (&pair.request, &pair.echo);
    let ag_target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        std::slice::from_ref(request),
        Check::ReplyLen(reply_len),
    )?);
    let echo_target = Arc::new(Target::new(
        pair.echo_addr,
        echo::PATH,
        std::slice::from_ref(request),
        Check::ReplyLen(reply_len),
    )?);
    rep.header.push(format!(
        "- messages: GetToken request {} bytes, reply {} bytes (token of {TOKEN_LEN} characters); the baseline receives the same request and answers with the same reply bytes",
        request.len(),
        reply_len
    ));

    let ag = Side {
        name: "authgate",
        conns: ag_conns,
        target: &ag_target,
        reply_len,
        proc: &gw.proc,
        counters: Some(gw.http),
    };
    let base = Side {
        name: "baseline",
        conns: echo_conns,
        target: &echo_target,
        reply_len,
        proc: echo_proc,
        counters: None,
    };

    // Warm-up (not measured): connections, allocator, CPU frequency.
    for s in [&ag, &base] {
        load::closed_loop(s.conns, s.target, plan.streams, plan.warmup)
            .await
            .ensure_valid(s.name)?;
    }
    let baseline_max = throughput(ctx, rep, &ag, &base).await?;
    latency_at_half_load(rep, &ag, &base, 0.5 * baseline_max, plan).await?;

    no_gateway(ctx, rep, &gw, &ag_target).await?;
    single_flight(ctx, rep, &gw).await?;

    pair.stop().await;
    gw.proc.stop().await;
    Ok(())
}

/// Maximum throughput and CPU per call of both sides; returns the baseline's median
/// throughput, which sets the offered load of the latency runs.
async fn throughput(
    ctx: &Ctx,
    rep: &mut Report,
    ag: &Side<'_>,
    base: &Side<'_>,
) -> anyhow::Result<f64> {
    let plan = &ctx.plan;
    let (a, b) = alternate(rep, ag, base, None, plan).await?;
    let j = plan.judged();
    let (ar, br) = (median(&a.rps), median(&b.rps));
    rep.row(
        Row::new("cache-hit throughput, closed loop (calls/s)")
            .authgate(num(ar))
            .baseline(num(br))
            .ratio(format!("{:.3}", paired(&a.rps, &b.rps)))
            .goal(
                "ratio ≥ 0.90",
                Verdict::of(paired(&a.rps, &b.rps) >= 0.90, j),
            ),
    );
    let (ac, bc) = (median(&a.cpu_us), median(&b.cpu_us));
    rep.row(
        Row::new("server CPU per call (µs, user+system)")
            .authgate(format!("{ac:.1}"))
            .baseline(format!("{bc:.1}"))
            .ratio(format!("{:.3}", paired(&a.cpu_us, &b.cpu_us)))
            .goal(
                "ratio ≤ 1.15",
                Verdict::of(paired(&a.cpu_us, &b.cpu_us) <= 1.15, j),
            ),
    );
    let (au, bu) = (median(&a.util), median(&b.util));
    rep.row(
        Row::new("server CPU busy during those runs (one CPU = 100%)")
            .authgate(format!("{:.0}%", 100.0 * au))
            .baseline(format!("{:.0}%", 100.0 * bu))
            .goal(
                format!(
                    "context: load generator used {:.0}% / {:.0}% of its CPU",
                    100.0 * median(&a.loader_util),
                    100.0 * median(&b.loader_util)
                ),
                Verdict::Info,
            ),
    );
    if bu < 0.9 && ctx.pinning.server_cpu.is_some() {
        rep.note(format!(
            "The baseline server was busy only {:.0}% of the time at maximum load: the load generator, not the server, set the pace, so the throughput ratio understates authgate's extra cost; CPU per call is the sharper figure.",
            100.0 * bu
        ));
    }
    Ok(br)
}

/// Latency of both sides under the same offered load, `rate` calls per second.
async fn latency_at_half_load(
    rep: &mut Report,
    ag: &Side<'_>,
    base: &Side<'_>,
    rate: f64,
    plan: &Plan,
) -> anyhow::Result<()> {
    let (la, lb) = alternate(rep, ag, base, Some(rate), plan).await?;
    let j = plan.judged();
    let (a50, b50) = (median(&la.p50), median(&lb.p50));
    let (a99, b99) = (median(&la.p99), median(&lb.p99));
    rep.row(
        Row::new(format!(
            "p50 latency at {} calls/s (50% of baseline max)",
            num(rate)
        ))
        .authgate(micros(a50))
        .baseline(micros(b50))
        .ratio(format!("{:.2}", paired(&la.p50, &lb.p50)))
        .goal("context", Verdict::Info),
    );
    rep.row(
        Row::new(format!("p99 latency at {} calls/s", num(rate)))
            .authgate(micros(a99))
            .baseline(micros(b99))
            .ratio(format!("{:.2}", paired(&la.p99, &lb.p99)))
            .goal(
                "ratio ≤ 1.3",
                Verdict::of(paired(&la.p99, &lb.p99) <= 1.3, j),
            ),
    );
    Ok(())
}

/// What each team's script does today: fetch a token from the provider on every call.
async fn no_gateway(
    ctx: &Ctx,
    rep: &mut Report,
    gw: &Gateway,
    ag_target: &Arc<Target>,
) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let one = Connections::open(gw.grpc, 1).await?;
    let r = load::closed_loop(&one, ag_target, 1, plan.run).await;
    r.ensure_valid("authgate, one caller")?;
    let ag_lat = r.latencies_us();

    // A script's fetch: against an endpoint answering at once (what the gateway itself
    // costs against a free provider), and one answering after the single-flight delay (a
    // provider across the internet).
    let fast = direct_fetches(ctx, Duration::ZERO, plan.run, usize::MAX).await?;
    let slow = direct_fetches(ctx, plan.sf_delay, plan.run, 10).await?;
    for (direct, what) in [
        (&fast, "answering at once".to_owned()),
        (
            &slow,
            format!("answering after {} ms", plan.sf_delay.as_millis()),
        ),
    ] {
        let (a50, d50) = (percentile(&ag_lat, 50.0), percentile(direct, 50.0));
        let (a99, d99) = (percentile(&ag_lat, 99.0), percentile(direct, 99.0));
        rep.row(
            Row::new(format!(
                "vs no gateway, one caller, p50 / p99: GetToken (cache hit) vs fetching a token on every call from an endpoint {what}"
            ))
            .authgate(format!("{} / {}", ms(a50), ms(a99)))
            .baseline(format!("{} / {}", ms(d50), ms(d99)))
            .ratio(format!(
                "{:.3} / {:.3}",
                f64::from(a50) / f64::from(d50),
                f64::from(a99) / f64::from(d99)
            ))
            .goal("context", Verdict::Info),
        );
    }
    ep.clear_hits();
    Ok(())
}

/// Latencies (µs) of what each team's script does: POST client_credentials to a token
/// endpoint (its own process, placed as authgate is) and read the token, one call after
/// another over a keep-alive connection, for `duration` or `max_calls`.
async fn direct_fetches(
    ctx: &Ctx,
    delay: Duration,
    duration: Duration,
    max_calls: usize,
) -> anyhow::Result<Vec<u32>> {
    let dir = ctx.scratch.path().join("endpoint");
    std::fs::create_dir_all(&dir)?;
    let provider = ServerProcess::spawn(
        &ctx.pinning,
        &[
            "serve-endpoint".to_owned(),
            "--delay-ms".to_owned(),
            delay.as_millis().to_string(),
        ],
        &dir.join("endpoint.log"),
        &[],
    )
    .await?;
    let url = format!("http://{}/token", provider.ready()?.grpc);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    while Instant::now() < deadline && latencies.len() < max_calls {
        let t0 = Instant::now();
        let resp = http
            .post(&url)
            .basic_auth("client-0", Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials"), ("scope", "read")])
            .send()
            .await?
            .error_for_status()?;
        let body: serde_json::Value = resp.json().await?;
        anyhow::ensure!(
            body["access_token"].as_str().is_some_and(|t| !t.is_empty()),
            "token endpoint answered without a token"
        );
        latencies.push(t0.elapsed().as_micros() as u32);
    }
    provider.stop().await;
    Ok(latencies)
}
