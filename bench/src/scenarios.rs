//! The benchmark, in one run: authgate's cache hit against the bare tonic baseline
//! (throughput, latency at half load, CPU per request), a client without a gateway,
//! single-flight, refresh over many token lifetimes, refresh spread, a provider outage,
//! and memory per cached token. Every call is checked; broken counts make the run invalid.

use crate::clock::{wall_ms, SharedClock};
use crate::echo;
use crate::endpoint::{Endpoint, Hit};
use crate::gateway::{self, BrokerKnobs, Pinning, ServerProcess};
use crate::load::{self, Check, Connections, Decoder, RunResult, Target};
use crate::procfs;
use crate::report::{micros, num, Report, Row, Verdict};
use crate::stats::{median, percentile};
use anyhow::Context;
use authgate::clock::Clock;
use authgate::proto::v1::{GetTokenRequest, GetTokenResponse};
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Length of the access tokens the endpoint issues: a typical JWT.
pub const TOKEN_LEN: usize = 1000;
/// The client secret of every benchmark credential.
const CLIENT_SECRET: &str = "bench-client-secret";
const GET_TOKEN: &str = "/authgate.v1.TokenService/GetToken";
/// Tokens served with less than this left count as "short" in the refresh scenario.
const SHORT_TTL_MS: i64 = 5_000;

/// What `authgate-bench run` was asked for.
pub struct Options {
    pub quick: bool,
    pub pinning: Pinning,
    pub memory_entries: Option<Vec<usize>>,
    pub skip_memory: bool,
    /// Scenario names to run; all when `None`.
    pub only: Option<Vec<String>>,
}

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 5] = ["cache-hit", "refresh", "spread", "outage", "memory"];

/// Sizes and durations of one run.
struct Plan {
    quick: bool,
    alternations: usize,
    warmup: Duration,
    run: Duration,
    conns: usize,
    streams: usize,
    sf_callers: usize,
    sf_delay: Duration,
    sf_keys: usize,
    refresh_factor: u32,
    refresh_lifetimes: i64,
    refresh_delay: Duration,
    spread_keys: usize,
    spread_factor: u32,
    outage_factor: u32,
    memory_entries: Vec<usize>,
}

impl Plan {
    fn new(o: &Options) -> Self {
        let mut p = if o.quick {
            Self {
                quick: true,
                alternations: 2,
                warmup: Duration::from_millis(300),
                run: Duration::from_millis(500),
                conns: 2,
                streams: 8,
                sf_callers: 1000,
                sf_delay: Duration::from_millis(200),
                sf_keys: 4,
                refresh_factor: 120,
                refresh_lifetimes: 3,
                refresh_delay: Duration::from_millis(5),
                spread_keys: 100,
                spread_factor: 60,
                outage_factor: 20,
                memory_entries: vec![2_000],
            }
        } else {
            Self {
                quick: false,
                alternations: 9,
                warmup: Duration::from_secs(2),
                run: Duration::from_secs(2),
                conns: 4,
                streams: 16,
                sf_callers: 1000,
                sf_delay: Duration::from_millis(200),
                sf_keys: 8,
                refresh_factor: 30,
                refresh_lifetimes: 10,
                refresh_delay: Duration::from_millis(5),
                spread_keys: 1000,
                spread_factor: 4,
                outage_factor: 1,
                memory_entries: vec![100_000, 1_000_000],
            }
        };
        if let Some(m) = &o.memory_entries {
            p.memory_entries = m.clone();
        }
        if o.skip_memory {
            p.memory_entries.clear();
        }
        p
    }

    /// Timing goals are judged only in full runs.
    fn judged(&self) -> bool {
        !self.quick
    }
}

/// What every scenario shares.
struct Ctx {
    plan: Plan,
    pinning: Pinning,
    endpoint: Arc<Endpoint>,
    scratch: tempfile::TempDir,
}

/// An authgate child process.
struct Gateway {
    proc: ServerProcess,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Ctx {
    async fn start_gateway(
        &self,
        name: &str,
        credentials: usize,
        knobs: &BrokerKnobs,
        clock: Option<SharedClock>,
    ) -> anyhow::Result<Gateway> {
        self.start_gateway_at(&self.endpoint, name, credentials, knobs, clock)
            .await
    }

    /// A gateway whose credentials use `endpoint`.
    async fn start_gateway_at(
        &self,
        endpoint: &Endpoint,
        name: &str,
        credentials: usize,
        knobs: &BrokerKnobs,
        clock: Option<SharedClock>,
    ) -> anyhow::Result<Gateway> {
        let dir = self.scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("authgate.toml");
        std::fs::write(
            &cfg,
            gateway::config_text(&dir, &endpoint.token_url(), credentials, knobs),
        )?;
        let mut args = vec![
            "serve-authgate".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        if let Some(c) = clock {
            args.extend([
                "--clock-origin-ms".to_owned(),
                c.origin_ms.to_string(),
                "--clock-factor".to_owned(),
                c.factor.to_string(),
            ]);
        }
        let proc = ServerProcess::spawn(
            &self.pinning,
            &args,
            &dir.join("authgate.log"),
            &[(gateway::SECRET_ENV, CLIENT_SECRET)],
        )
        .await?;
        let ready = proc.ready()?;
        Ok(Gateway {
            grpc: ready.grpc,
            http: ready.http.context("authgate reported no HTTP address")?,
            proc,
        })
    }
}

/// A GetToken request message for benchmark credential `cred`.
pub fn get_token_message(cred: usize, scopes: &[&str]) -> Vec<u8> {
    GetTokenRequest {
        tenant: gateway::TENANT.into(),
        credential_id: gateway::credential_id(cred),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        min_ttl_seconds: 0,
        force_refresh: false,
    }
    .encode_to_vec()
}

fn expires_at_ms(r: &GetTokenResponse) -> Option<i64> {
    r.expires_at
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A decoder that accepts any reply with a token and records the distinct tokens seen.
fn token_set_decoder(seen: Arc<Mutex<HashSet<String>>>) -> Decoder {
    Arc::new(move |bytes| {
        let r = GetTokenResponse::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        if r.access_token.is_empty() {
            return Err("empty access token".into());
        }
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(r.access_token);
        Ok(())
    })
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

/// authgate's `/metrics` counters.
async fn gateway_counters(http: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
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

fn counter(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Sleeps until the gateway clock shows `gateway_ms`.
async fn sleep_until_gateway(clock: &SharedClock, gateway_ms: i64) {
    let wall_target = clock.origin_ms + (gateway_ms - clock.origin_ms) / clock.factor;
    let wait = wall_target - wall_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// The median of the per-alternation ratios `a[i] / b[i]`: each pair ran back to back, so
/// a burst of other work on the machine moves both sides of a pair, not one side's median.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

fn ms(us: u32) -> String {
    micros(f64::from(us))
}

/// Runs everything and returns the report (invalid when a count broke).
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let plan = Plan::new(&opts);
    let pinning = opts.pinning.clone();
    let endpoint = Endpoint::start(TOKEN_LEN).await?;
    let ctx = Ctx {
        plan,
        pinning,
        endpoint,
        scratch: gateway::scratch_dir()?,
    };
    let mut rep = Report::default();
    rep.header.push(format!(
        "authgate-bench {} run, {}",
        if ctx.plan.quick {
            "quick (smoke)"
        } else {
            "full"
        },
        chrono_like_now()
    ));
    rep.header.push(String::new());
    rep.header.push(format!("- machine: {}", procfs::machine()));
    rep.header
        .push(format!("- pinning: {}", ctx.pinning.describe()));
    let load_at_start = procfs::loadavg();
    rep.header.push(format!(
        "- build: {}",
        if cfg!(debug_assertions) {
            "debug (timings not meaningful)"
        } else {
            "release"
        }
    ));
    rep.header.push(format!(
        "- load: raw HTTP/2 gRPC client, {} connections × {} streams in flight (closed loop), {} alternations of {:.1} s after {:.1} s warm-up; figures are medians over the alternations, ratios the median of the per-alternation ratios",
        ctx.plan.conns,
        ctx.plan.streams,
        ctx.plan.alternations,
        ctx.plan.run.as_secs_f64(),
        ctx.plan.warmup.as_secs_f64()
    ));

    if let Some(only) = &opts.only {
        if let Some(bad) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
            anyhow::bail!(
                "unknown scenario `{bad}`; choose from {}",
                SCENARIOS.join(", ")
            );
        }
    }
    let wanted = |name: &str| {
        opts.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == name))
    };
    if wanted("cache-hit") {
        eprintln!("== cache hit vs bare tonic");
        cache_hit_vs_baseline(&ctx, &mut rep).await?;
    }
    if wanted("refresh") {
        eprintln!("== refresh over many lifetimes");
        refresh(&ctx, &mut rep).await?;
    }
    if wanted("spread") {
        eprintln!("== refresh spread");
        spread(&ctx, &mut rep).await?;
    }
    if wanted("outage") {
        eprintln!("== provider outage");
        outage(&ctx, &mut rep).await?;
    }
    if wanted("memory") && !ctx.plan.memory_entries.is_empty() {
        eprintln!("== memory per cached token");
        memory(&ctx, &mut rep).await?;
    }
    rep.header.push(format!(
        "- other load on the machine: 1-minute load average {load_at_start:.2} at the start, {:.2} at the end (this run itself adds about 1)",
        procfs::loadavg()
    ));
    Ok(rep)
}

/// UTC date and time, for the report header.
fn chrono_like_now() -> String {
    let secs = wall_ms() / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is needed.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

struct Side<'a> {
    name: &'static str,
    conns: &'a Connections,
    target: &'a Arc<Target>,
    proc: &'a ServerProcess,
    /// authgate's HTTP port, to check its cache-hit counter.
    counters: Option<SocketAddr>,
}

#[derive(Default)]
struct Runs {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    util: Vec<f64>,
    loader_util: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

/// One measured run of `side`, checked: every call good, every byte accounted for, and
/// for authgate, every call a cache hit by its own counters.
async fn measured(
    rep: &mut Report,
    side: &Side<'_>,
    reply_len: usize,
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
        r.bytes == r.ok * (reply_len as u64 + 5),
        format!(
            "{}: {} bytes received for {} replies of {} bytes",
            side.name,
            r.bytes,
            r.ok,
            reply_len + 5
        ),
    );
    if let (Some(h), Some(b)) = (side.counters, before) {
        let a = gateway_counters(h).await?;
        let hits =
            counter(&a, "authgate_cache_hits_total") - counter(&b, "authgate_cache_hits_total");
        let misses =
            counter(&a, "authgate_cache_misses_total") - counter(&b, "authgate_cache_misses_total");
        rep.check(
            hits as u64 == r.ok && misses == 0.0,
            format!(
                "authgate counted {hits} cache hits and {misses} misses for {} calls",
                r.ok
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

async fn cache_hit_vs_baseline(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
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
        proc: &gw.proc,
        counters: Some(gw.http),
    };
    let base = Side {
        name: "baseline",
        conns: echo_conns,
        target: &echo_target,
        proc: echo_proc,
        counters: None,
    };

    // Warm-up (not measured): connections, allocator, CPU frequency.
    for s in [&ag, &base] {
        load::closed_loop(s.conns, s.target, plan.streams, plan.warmup)
            .await
            .ensure_valid(s.name)?;
    }

    // Maximum throughput, alternating which side goes first.
    let (mut a, mut b) = (Runs::default(), Runs::default());
    for i in 0..plan.alternations {
        if i % 2 == 0 {
            measured(rep, &ag, reply_len, None, plan, &mut a).await?;
            measured(rep, &base, reply_len, None, plan, &mut b).await?;
        } else {
            measured(rep, &base, reply_len, None, plan, &mut b).await?;
            measured(rep, &ag, reply_len, None, plan, &mut a).await?;
        }
    }
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

    // Latency at half the baseline's maximum, same offered load for both.
    let rate = 0.5 * br;
    let (mut la, mut lb) = (Runs::default(), Runs::default());
    for i in 0..plan.alternations {
        if i % 2 == 0 {
            measured(rep, &ag, reply_len, Some(rate), plan, &mut la).await?;
            measured(rep, &base, reply_len, Some(rate), plan, &mut lb).await?;
        } else {
            measured(rep, &base, reply_len, Some(rate), plan, &mut lb).await?;
            measured(rep, &ag, reply_len, Some(rate), plan, &mut la).await?;
        }
    }
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

    no_gateway(ctx, rep, &gw, &ag_target).await?;
    single_flight(ctx, rep, &gw).await?;

    pair.stop().await;
    gw.proc.stop().await;
    Ok(())
}

/// The baseline next to a running authgate: started with the exact bytes of authgate's
/// reply to the first GetToken (which fetches the token), with connections to both.
struct Pair {
    request: Vec<u8>,
    reply_len: usize,
    echo: ServerProcess,
    echo_addr: SocketAddr,
    ag_conns: Connections,
    echo_conns: Connections,
}

impl Pair {
    async fn start(ctx: &Ctx, gw: &Gateway, conns: usize) -> anyhow::Result<Self> {
        let request = get_token_message(0, &["read"]);
        let reply = Arc::new(Mutex::new(Vec::new()));
        let probe = {
            let reply = reply.clone();
            Arc::new(Target::new(
                gw.grpc,
                GET_TOKEN,
                std::slice::from_ref(&request),
                Check::Decode(Arc::new(move |b: &[u8]| {
                    *reply.lock().unwrap_or_else(PoisonError::into_inner) = b.to_vec();
                    Ok(())
                })),
            )?)
        };
        let ag_conns = Connections::open(gw.grpc, conns).await?;
        load::burst(&ag_conns, &probe, 1)
            .await
            .ensure_valid("first GetToken")?;
        let reply = std::mem::take(&mut *reply.lock().unwrap_or_else(PoisonError::into_inner));
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

    async fn stop(self) {
        drop(self.ag_conns);
        drop(self.echo_conns);
        self.echo.stop().await;
    }
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

async fn single_flight(ctx: &Ctx, rep: &mut Report, gw: &Gateway) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let conns = Connections::open(gw.grpc, 8).await?;
    ep.set_delay(plan.sf_delay);
    ep.clear_hits();

    // One cold key, many callers.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let target = Arc::new(Target::new(
        gw.grpc,
        GET_TOKEN,
        &[get_token_message(1, &["sf-cold"])],
        Check::Decode(token_set_decoder(seen.clone())),
    )?);
    let n0 = ep.requests();
    let r = load::burst(&conns, &target, plan.sf_callers).await;
    r.ensure_valid("single-flight")?;
    let upstream = ep.requests() - n0;
    let distinct = seen.lock().unwrap_or_else(PoisonError::into_inner).len();
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

    // K cold keys, 100 callers each (each key on its own credential).
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
    let r = load::burst(&conns, &target, k * 100).await;
    r.ensure_valid("single-flight, K keys")?;
    let upstream = ep.requests() - n0;
    let distinct = seen.lock().unwrap_or_else(PoisonError::into_inner).len();
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
    ep.set_delay(Duration::ZERO);
    Ok(())
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

async fn refresh(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let lifetime_s: i64 = 60;
    let keys = 4usize;
    let knobs = BrokerKnobs::default();
    let clock = SharedClock::starting_now(plan.refresh_factor);
    ep.set_expires_in(lifetime_s as u64);
    ep.set_delay(plan.refresh_delay);
    let gw = ctx
        .start_gateway("refresh", keys, &knobs, Some(clock))
        .await?;
    let conns = Connections::open(gw.grpc, plan.conns).await?;
    let scopes: Vec<String> = (0..keys).map(|i| format!("r{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..keys)
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
    load::burst(&conns, &warm, keys)
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
        Duration::from_millis(clock.real_ms(plan.refresh_lifetimes * lifetime_s * 1000) as u64);
    let rate = if plan.quick { 500.0 } else { 2000.0 };
    let r = load::open_loop(&conns, &target, rate, real).await;
    let t_end = clock.now_ms();
    r.ensure_valid("refresh load")?;
    ep.set_delay(Duration::ZERO);

    let hits = ep.hits();
    let by_key = ep.counts_by_key();
    let counts: Vec<u64> = (0..keys)
        .map(|i| {
            by_key
                .get(&gateway::endpoint_key(i, &scopes[i]))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let t = (t_end - t_start) as f64 / 1000.0;
    let lead_s = knobs.max_refresh_lead_ms(lifetime_s * 1000) as f64 / 1000.0;
    let bound = (t / (lifetime_s as f64 - lead_s)).ceil() as u64 + 1;
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
            "refresh: upstream requests per key over {t:.0} s of gateway time ({} lifetimes of {lifetime_s} s, clock ×{}, {} keys under {rate:.0} calls/s)",
            plan.refresh_lifetimes, plan.refresh_factor, keys
        ))
        .authgate(format!("{min}–{max}"))
        .goal(
            format!("≤ ⌈T / (lifetime − margin)⌉ + 1 = {bound} (margin = {lead_s:.0} s: 10% + up to 20% jitter)"),
            Verdict::of(max <= bound && refreshed, true),
        ),
    );
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

    // p99 of calls overlapping a refresh (upstream request in flight, plus 50 ms for the
    // gateway to store the new token) against all other calls.
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
    for (st, en, lat) in sample_spans(&r) {
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
    drop(conns);
    gw.proc.stop().await;
    Ok(())
}

async fn spread(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let lifetime_ms: i64 = 60_000;
    let n = plan.spread_keys;
    let creds = 16usize;
    let clock = SharedClock::starting_now(plan.spread_factor);
    ep.set_expires_in((lifetime_ms / 1000) as u64);
    let gw = ctx
        .start_gateway("spread", creds, &BrokerKnobs::default(), Some(clock))
        .await?;
    let conns = Connections::open(gw.grpc, plan.conns).await?;
    let scopes: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| get_token_message(i % creds, &[scopes[i].as_str()]))
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
    let until = issued_by + lifetime_ms + 10_000;
    let real = Duration::from_millis(clock.real_ms(until - clock.now_ms()).max(0) as u64);
    load::closed_loop(&conns, &target, 4, real)
        .await
        .ensure_valid("spread: load")?;
    // On a slow machine a key may not have been asked for since its token expired; ask
    // for those once more, so every key's second upstream request is counted.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = ep.counts_by_key();
        let missing: Vec<Vec<u8>> = (0..n)
            .filter(|&i| {
                counts
                    .get(&gateway::endpoint_key(i % creds, &scopes[i]))
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
        load::burst(&conns, &again, missing.len())
            .await
            .ensure_valid("spread: late keys")?;
    }

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
            "refresh spread: {n} keys issued at once ({lifetime_ms_s} s tokens, clock ×{}); busiest second's share of their refreshes",
            plan.spread_factor,
            lifetime_ms_s = lifetime_ms / 1000
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
    drop(conns);
    gw.proc.stop().await;
    Ok(())
}

/// One slice of closed-loop load on one of the two outage-scenario gateways.
struct Slice {
    /// Gateway milliseconds after the tokens were issued, at the slice's start.
    at: i64,
    rate: f64,
    cpu_per_call_us: f64,
}

async fn outage(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let ep = &ctx.endpoint;
    let keys = 4usize;
    // 70 s tokens refreshed from half their life on (35 s), so the refresh falls inside a
    // 30 s outage from 32 s to 62 s while the cached tokens stay valid until 70 s.
    let lifetime_ms: i64 = 70_000;
    let (outage_from, outage_to, stop_at) = (32_000i64, 62_000i64, 66_000i64);
    let knobs = BrokerKnobs {
        backoff_initial_ms: 1000,
        refresh_margin_seconds: 3600,
        refresh_fraction: 0.49,
    };
    let clock = SharedClock::starting_now(plan.outage_factor);
    // A control gateway, identical but with an endpoint that never fails, takes turns
    // with the one under test: other work on the machine then slows both alike, and the
    // outage's own cost is the change in their ratio.
    let control_ep = Endpoint::start(TOKEN_LEN).await?;
    for e in [ep, &control_ep] {
        e.set_expires_in((lifetime_ms / 1000) as u64);
        e.set_delay(Duration::ZERO);
    }
    let gw = ctx
        .start_gateway("outage", keys, &knobs, Some(clock))
        .await?;
    let control = ctx
        .start_gateway_at(&control_ep, "outage-control", keys, &knobs, Some(clock))
        .await?;
    let scopes: Vec<String> = (0..keys).map(|i| format!("o{i}")).collect();
    let messages: Vec<Vec<u8>> = (0..keys)
        .map(|i| get_token_message(i, &[scopes[i].as_str()]))
        .collect();
    let mut sides = Vec::new();
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
        load::burst(conns, target, keys)
            .await
            .ensure_valid("outage warm-up")?;
    }
    let t0 = clock.now_ms();
    let (conns, target) = (&sides[0].0, &sides[0].1);

    let switch = {
        let ep = ep.clone();
        tokio::spawn(async move {
            sleep_until_gateway(&clock, t0 + outage_from).await;
            ep.set_failing(true);
            let on = wall_ms();
            sleep_until_gateway(&clock, t0 + outage_to).await;
            ep.set_failing(false);
            (on, wall_ms())
        })
    };
    // Half a gateway second per slice: each pair covers one second of gateway time.
    let slice = Duration::from_millis(clock.real_ms(500).max(25) as u64);
    let (mut tested, mut controlled) = (Vec::new(), Vec::new());
    let mut k = 0usize;
    while clock.now_ms() < t0 + stop_at {
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        k += 1;
        let mut pair = [None, None];
        for side in order {
            let (conns, target, proc) = &sides[side];
            let at = clock.now_ms() - t0;
            let c0 = proc.cpu_seconds()?;
            let r = load::closed_loop(conns, target, plan.streams, slice).await;
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
    let (on_wall, off_wall) = switch.await?;
    ep.set_failing(false);

    // Paired figures per window: the tested gateway's own medians, and the median of its
    // ratios to the control in the same seconds.
    let window = |from: i64, to: i64| {
        let idx: Vec<usize> = (0..tested.len())
            .filter(|&i| tested[i].at >= from && tested[i].at < to)
            .collect();
        let pick = |v: &Vec<Slice>, f: fn(&Slice) -> f64| {
            idx.iter().map(|&i| f(&v[i])).collect::<Vec<f64>>()
        };
        let rate = pick(&tested, |s| s.rate);
        let ratio = paired(&rate, &pick(&controlled, |s| s.rate));
        let cpu = pick(&tested, |s| s.cpu_per_call_us);
        let cpu_ratio = paired(&cpu, &pick(&controlled, |s| s.cpu_per_call_us));
        (median(&rate), ratio, median(&cpu), cpu_ratio)
    };
    let (before, before_vs, cpu_before, cpu_before_vs) = window(2_000, outage_from - 1_000);
    let (during, during_vs, cpu_during, cpu_during_vs) = window(outage_from + 1_000, outage_to);
    let ratio = during_vs / before_vs.max(1e-9);
    let on_g = clock.at_wall(on_wall);
    let off_g = clock.at_wall(off_wall);
    let hits = ep.hits();
    let mut during_by_key: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed = 0u64;
    for h in &hits {
        let g = clock.at_wall(h.arrived_wall_ms);
        if g >= on_g && g <= off_g {
            *during_by_key.entry(h.key.as_str()).or_insert(0) += 1;
            if !h.ok {
                failed += 1;
            }
        }
    }
    let max = during_by_key.values().copied().max().unwrap_or(0);
    let outage_s = (off_g - on_g) as f64 / 1000.0;
    let bound =
        ((outage_to - outage_from) as f64 / knobs.backoff_initial_ms as f64).ceil() as u64 + 1;
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
            .authgate(format!(
                "max {max} ({failed} failed in all, {} keys)",
                during_by_key.len()
            ))
            .goal(
                format!(
                    "≤ ⌈{} s / {} s backoff⌉ + 1 = {bound}",
                    (outage_to - outage_from) / 1000,
                    knobs.backoff_initial_ms / 1000
                ),
                Verdict::of(max <= bound, true),
            ),
    );

    // After the outage: light load until every key got a new token from the recovered
    // endpoint (or long past expiry). Calls may fail here; they are counted, not fatal.
    let give_up = t0 + lifetime_ms + 70_000;
    let chunk = Duration::from_millis(clock.real_ms(1_000).max(20) as u64);
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    let recovered = |ep: &Endpoint| {
        let hits = ep.hits();
        let mut firsts: BTreeMap<String, i64> = BTreeMap::new();
        for h in hits.iter().filter(|h| h.ok) {
            let g = clock.at_wall(h.arrived_wall_ms);
            if g > off_g {
                firsts.entry(h.key.clone()).or_insert(g);
            }
        }
        (firsts.len() == keys).then(|| firsts.values().copied().max().unwrap_or(off_g))
    };
    let mut all_back = recovered(ep);
    while all_back.is_none() && clock.now_ms() < give_up {
        let r = load::open_loop(conns, target, 200.0, chunk).await;
        ok += r.ok;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        all_back = recovered(ep);
    }
    let expiry_after_recovery = (t0 + lifetime_ms - off_g) as f64 / 1000.0;
    let recovery = match all_back {
        Some(g) => format!(
            "every key refreshed {:.1} s after the endpoint recovered",
            (g - off_g) as f64 / 1000.0
        ),
        None => format!(
            "no refresh within {:.0} s of recovery",
            (give_up - off_g) as f64 / 1000.0
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
    drop(sides);
    gw.proc.stop().await;
    control.proc.stop().await;
    Ok(())
}

async fn memory(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
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
    let scope_of = move |i: usize| format!("s{}", i / creds);
    let make: load::FrameMaker =
        Arc::new(move |i| load::frame(&get_token_message(i % creds, &[scope_of(i).as_str()])));
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
    let fill = |from: usize, to: usize| {
        let (conns, target, make) = (&conns, &target, make.clone());
        async move {
            let t = Instant::now();
            let r = load::each_once(conns, target, make, from..to, 64).await;
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
            Ok::<(), anyhow::Error>(())
        }
    };
    fill(0, warm).await?;
    let n0 = ep.requests();
    let rss0 = procfs::rss_bytes_of(&pid)?;
    let cpu0 = gw.proc.cpu_seconds()?;
    let mut done = warm;
    for n in entries {
        fill(done, n).await?;
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
        let key_bytes = (0..n)
            .map(|i| {
                gateway::TENANT.len() + gateway::credential_id(i % creds).len() + scope_of(i).len()
            })
            .sum::<usize>() as f64
            / n as f64;
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

/// Fixed numbers of cache-hit calls to authgate and then to the baseline, for instruction
/// counts under a profiler. With `AUTHGATE_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind"`
/// the counters are zeroed after a warm-up and dumped after the measured calls, so each
/// server's dump holds exactly `calls` cache hits (see BENCHMARKS.md, "Profiling").
///
/// With `cold`, every call asks for a new scope set instead: each is a cache miss and one
/// upstream fetch, so the dump holds the cost of `calls` fetches (authgate only).
pub async fn profile(pinning: Pinning, calls: usize, cold: bool) -> anyhow::Result<()> {
    let opts = Options {
        quick: true,
        pinning: pinning.clone(),
        memory_entries: None,
        skip_memory: true,
        only: None,
    };
    let ctx = Ctx {
        plan: Plan::new(&opts),
        pinning,
        endpoint: Endpoint::start(TOKEN_LEN).await?,
        scratch: gateway::scratch_dir()?,
    };
    let callgrind = std::env::var(gateway::WRAPPER_ENV).is_ok_and(|w| w.contains("callgrind"));
    let gw = ctx
        .start_gateway("main", 1, &BrokerKnobs::default(), None)
        .await?;
    let pair = Pair::start(&ctx, &gw, 4).await?;
    let reply_len = pair.reply_len;
    let sides = [
        ("authgate", &gw.proc, &pair.ag_conns, gw.grpc, GET_TOKEN),
        (
            "baseline",
            &pair.echo,
            &pair.echo_conns,
            pair.echo_addr,
            echo::PATH,
        ),
    ];
    for (name, proc, conns, addr, path) in sides {
        let message = &pair.request;
        let target = Arc::new(Target::new(
            addr,
            path,
            std::slice::from_ref(message),
            Check::ReplyLen(reply_len),
        )?);
        let frame = load::frame(message);
        let (make, target): (load::FrameMaker, _) = if cold {
            if name != "authgate" {
                continue;
            }
            let any_token: Decoder = Arc::new(|b: &[u8]| {
                GetTokenResponse::decode(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            (
                Arc::new(|i| load::frame(&get_token_message(0, &[format!("p{i}").as_str()]))),
                Arc::new(Target::new(addr, path, &[], Check::Decode(any_token))?),
            )
        } else {
            (Arc::new(move |_| frame.clone()), target)
        };
        let warm = if cold { 1_000_000..1_000_100 } else { 0..1_000 };
        load::each_once(conns, &target, make.clone(), warm, 16)
            .await
            .ensure_valid(name)?;
        let control = |arg: &str| {
            std::process::Command::new("callgrind_control")
                .arg(arg)
                .arg(proc.pid.to_string())
                .stdout(std::process::Stdio::null())
                .status()
        };
        if callgrind {
            control("-z")?;
        }
        let cpu0 = proc.cpu_seconds()?;
        let r = load::each_once(conns, &target, make, 0..calls, 16).await;
        let cpu1 = proc.cpu_seconds()?;
        r.ensure_valid(name)?;
        if callgrind {
            control("-d")?;
        }
        eprintln!(
            "{name}: pid {}, {} calls, {:.1} µs server CPU per call{}",
            proc.pid,
            r.ok,
            (cpu1 - cpu0) * 1e6 / r.ok as f64,
            if callgrind {
                " (callgrind dump written after the measured calls)"
            } else {
                ""
            }
        );
    }
    pair.stop().await;
    gw.proc.stop().await;
    Ok(())
}
