//! The benchmark, in one run: authgate's cache hit against the bare tonic baseline
//! (throughput, latency at half load, CPU per request), a client without a gateway,
//! single-flight, refresh over many token lifetimes, refresh spread, a provider outage,
//! an out-of-process plugin against its in-process twin, and memory per cached token. Every call is checked; broken counts make the run invalid.
//!
//! This module holds what every scenario shares (the plan of a run, the context, starting a
//! gateway, the report header); each scenario has its own module, helpers used by several
//! of them are in `common`.

mod cache_hit;
mod common;
mod memory;
mod mesh;
mod outage;
mod plugin;
mod profile;
mod refresh;
mod single_flight;
mod spread;

pub use profile::profile;

use crate::clock::{wall_ms, SharedClock};
use crate::endpoint::Endpoint;
use crate::gateway::{self, BrokerKnobs, Pinning, ServerProcess};
use crate::procfs;
use crate::report::Report;
use anyhow::Context;
use authgate::proto::v1::GetTokenRequest;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Length of the access tokens the endpoint issues: a typical JWT.
pub const TOKEN_LEN: usize = 1000;
/// The client secret of every benchmark credential.
const CLIENT_SECRET: &str = "bench-client-secret";
const GET_TOKEN: &str = "/authgate.v1.TokenService/GetToken";

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
pub const SCENARIOS: [&str; 7] = [
    "cache-hit",
    "refresh",
    "spread",
    "outage",
    "mesh",
    "plugin",
    "memory",
];

/// Sizes and durations of one run.
#[derive(Clone)]
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
    /// Cold fetches per plugin side: not measured (first), and per alternation.
    plugin_warmup_calls: usize,
    plugin_cold_calls: usize,
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
                plugin_warmup_calls: 5,
                plugin_cold_calls: 10,
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
                plugin_warmup_calls: 50,
                plugin_cold_calls: 200,
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
    /// Its `[[plugins]]` processes, in config order.
    plugin_pids: Vec<u32>,
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
        let text = gateway::config_text(&dir, &endpoint.token_url(), credentials, knobs);
        self.start_gateway_with(&dir, &text, &[], clock).await
    }

    /// A gateway with its config and log in `dir` (the config made by the caller, its store
    /// expected in `dir`), given extra `serve-authgate` arguments.
    async fn start_gateway_with(
        &self,
        dir: &std::path::Path,
        config_text: &str,
        extra_args: &[&str],
        clock: Option<SharedClock>,
    ) -> anyhow::Result<Gateway> {
        let cfg = dir.join("authgate.toml");
        std::fs::write(&cfg, config_text)?;
        let mut args = vec![
            "serve-authgate".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
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
            plugin_pids: ready.plugin_pids,
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

/// Runs everything and returns the report (invalid when a count broke).
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let ctx = Ctx {
        plan: Plan::new(&opts),
        pinning: opts.pinning.clone(),
        endpoint: Endpoint::start(TOKEN_LEN).await?,
        scratch: gateway::scratch_dir()?,
    };
    let mut rep = Report::default();
    let load_at_start = write_header(&ctx, &mut rep);
    run_scenarios(&ctx, &mut rep, opts.only.as_deref()).await?;
    rep.header.push(format!(
        "- other load on the machine: 1-minute load average {load_at_start:.2} at the start, {:.2} at the end (this run itself adds about 1)",
        procfs::loadavg()
    ));
    Ok(rep)
}

/// The report's header up to the load description; returns the load average at the start,
/// which the last header line compares with the one at the end.
fn write_header(ctx: &Ctx, rep: &mut Report) -> f64 {
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
    load_at_start
}

/// Runs the scenarios `only` names (all when `None`), in [`SCENARIOS`] order.
async fn run_scenarios(ctx: &Ctx, rep: &mut Report, only: Option<&[String]>) -> anyhow::Result<()> {
    if let Some(only) = only {
        if let Some(bad) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
            anyhow::bail!(
                "unknown scenario `{bad}`; choose from {}",
                SCENARIOS.join(", ")
            );
        }
    }
    let wanted = |name: &str| only.is_none_or(|o| o.iter().any(|x| x == name));
    if wanted("cache-hit") {
        eprintln!("== cache hit vs bare tonic");
        cache_hit::cache_hit_vs_baseline(ctx, rep).await?;
    }
    if wanted("refresh") {
        eprintln!("== refresh over many lifetimes");
        refresh::refresh(ctx, rep).await?;
    }
    if wanted("spread") {
        eprintln!("== refresh spread");
        spread::spread(ctx, rep).await?;
    }
    if wanted("outage") {
        eprintln!("== provider outage");
        outage::outage(ctx, rep).await?;
    }
    if wanted("mesh") {
        eprintln!("== token injection through Envoy: ext_authz vs a static header");
        mesh::mesh(ctx, rep).await?;
    }
    if wanted("plugin") {
        eprintln!("== out-of-process plugin vs the same flow in process");
        plugin::plugin(ctx, rep).await?;
    }
    if wanted("memory") && !ctx.plan.memory_entries.is_empty() {
        eprintln!("== memory per cached token");
        memory::memory(ctx, rep).await?;
    }
    Ok(())
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
