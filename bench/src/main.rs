//! `authgate-bench`: the benchmark harness. `run` is what people use (see BENCHMARKS.md);
//! the `serve-*` subcommands are the server processes it starts, pinned to their own CPU.

use anyhow::Context;
use authgate_bench::clock::SharedClock;
use authgate_bench::gateway::{self, Pinning, Ready};
use authgate_bench::{echo, scenarios};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "authgate-bench",
    about = "Benchmarks authgate's GetToken against a bare tonic baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every benchmark and print the table.
    Run {
        /// Seconds instead of minutes: smaller counts, no timing goals judged (CI smoke).
        #[arg(long)]
        quick: bool,
        /// Also write the report (markdown) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Cached-token counts for the memory measurement (comma-separated).
        #[arg(long, value_delimiter = ',')]
        memory_entries: Option<Vec<usize>>,
        /// Skip the memory measurement (the slowest part of a full run).
        #[arg(long)]
        skip_memory: bool,
        /// Run only these scenarios: cache-hit, refresh, spread, outage, mesh, plugin, memory.
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<String>>,
    },
    /// A fixed number of cache-hit calls to authgate and to the baseline, for profilers:
    /// set AUTHGATE_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind" for instruction counts.
    Profile {
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Every call a cache miss (a new scope set): profiles the upstream fetch path.
        #[arg(long)]
        cold: bool,
    },
    /// (internal) authgate in this process; prints its addresses, stops when stdin closes.
    ServeAuthgate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 0)]
        clock_origin_ms: i64,
        #[arg(long, default_value_t = 1)]
        clock_factor: u32,
        /// Also register the example ticket plugin's in-process twin (kind
        /// `example_ticket_in_process`), for the `plugin` scenario.
        #[arg(long)]
        in_process_ticket: bool,
    },
    /// (internal) the token endpoint alone, for the no-gateway comparison; prints its
    /// address, stops when stdin closes.
    ServeEndpoint {
        #[arg(long, default_value_t = authgate_bench::scenarios::TOKEN_LEN)]
        token_len: usize,
        /// Answer each request after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// (internal) the bare tonic baseline; prints its address, stops when stdin closes.
    ServeEcho {
        /// The encoded reply to answer every call with, in hex.
        #[arg(long)]
        reply_hex: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            quick,
            out,
            memory_entries,
            skip_memory,
            only,
        } => {
            let pinning = pin_self()?;
            // One worker thread: the load generator owns exactly one CPU.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let opts = scenarios::Options {
                quick,
                pinning,
                memory_entries,
                skip_memory,
                only,
            };
            let report = rt.block_on(scenarios::run(opts))?;
            let text = report.markdown();
            println!("{text}");
            if let Some(path) = out {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if !report.valid() {
                anyhow::bail!("the run is invalid: {}", report.failures().join("; "));
            }
            Ok(())
        }
        Command::Profile { calls, cold } => {
            let pinning = pin_self()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(scenarios::profile(pinning, calls, cold))
        }
        Command::ServeAuthgate {
            config,
            clock_origin_ms,
            clock_factor,
            in_process_ticket,
        } => server_runtime()?.block_on(serve_authgate(
            config,
            SharedClock {
                origin_ms: clock_origin_ms,
                factor: i64::from(clock_factor.max(1)),
            },
            in_process_ticket,
        )),
        Command::ServeEndpoint {
            token_len,
            delay_ms,
        } => server_runtime()?.block_on(async move {
            let ep = authgate_bench::endpoint::Endpoint::start(token_len).await?;
            ep.set_delay(std::time::Duration::from_millis(delay_ms));
            // Millions of calls may come; nobody reads this process's log.
            ep.set_tracking(false);
            let ready = Ready {
                grpc: ep.addr,
                http: Some(ep.addr),
                plugin_pids: Vec::new(),
            };
            println!("{}", serde_json::to_string(&ready)?);
            gateway::stdin_closed().await;
            Ok(())
        }),
        Command::ServeEcho { reply_hex } => server_runtime()?.block_on(serve_echo(reply_hex)),
    }
}

/// The runtime `#[tokio::main]` builds, as in `authgate serve`: one worker per CPU this
/// process may use (one, when pinned).
fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Re-executes this benchmark under `taskset` on its own CPU, leaving another CPU for the
/// servers; returns the pinning in force.
fn pin_self() -> anyhow::Result<Pinning> {
    if std::env::var_os(gateway::PINNED_ENV).is_some() {
        return Ok(Pinning::from_env());
    }
    let cpus = authgate_bench::procfs::allowed_cpus();
    if cpus.len() < 2 || !gateway::have_taskset() {
        return Ok(Pinning::default());
    }
    let pinning = Pinning {
        server_cpu: Some(cpus[0]),
        loader_cpu: Some(cpus[1]),
    };
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new("taskset");
    cmd.arg("-c")
        .arg(cpus[1].to_string())
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(gateway::PINNED_ENV, pinning.env_value());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Only returns on failure; then run unpinned rather than not at all.
        let err = cmd.exec();
        eprintln!("could not re-run under taskset ({err}); running unpinned");
    }
    Ok(Pinning::default())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// authgate on `clock` (origin 0: now); with `in_process_ticket`, the example ticket
/// plugin's in-process twin is registered too.
async fn serve_authgate(
    config: PathBuf,
    mut clock: SharedClock,
    in_process_ticket: bool,
) -> anyhow::Result<()> {
    init_logging();
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let cfg = authgate::config::Config::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if clock.origin_ms == 0 {
        clock.origin_ms = authgate_bench::clock::wall_ms();
    }
    let kinds: Vec<String> = cfg.plugins.iter().map(|p| p.kind.clone()).collect();
    let running = authgate::server::start(
        cfg,
        authgate::server::StartOptions {
            clock: Arc::new(clock),
            key: Some(gateway::STORE_KEY.to_owned()),
            registry: authgate_bench::ticket::registry(in_process_ticket),
            ..authgate::server::StartOptions::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready = Ready {
        grpc: running.grpc_addr,
        http: Some(running.http_addr),
        plugin_pids: kinds
            .iter()
            .filter_map(|k| running.plugins.pid(k))
            .collect(),
    };
    println!("{}", serde_json::to_string(&ready)?);
    gateway::stdin_closed().await;
    running.shutdown().await;
    Ok(())
}

async fn serve_echo(reply_hex: String) -> anyhow::Result<()> {
    init_logging();
    let reply = echo::reply_from_hex(&reply_hex)
        .map_err(|e| anyhow::anyhow!("--reply-hex is not a GetToken reply: {e}"))?;
    let (listener, addr) = echo::bind().await?;
    println!(
        "{}",
        serde_json::to_string(&Ready {
            grpc: addr,
            http: None,
            plugin_pids: Vec::new(),
        })?
    );
    echo::serve(listener, reply, gateway::stdin_closed()).await?;
    Ok(())
}
