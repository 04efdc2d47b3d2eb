//! The `authgate` command: `serve` runs the gateway; the other subcommands are gRPC clients
//! of a running gateway (implemented in `authgate::cli`).

use anyhow::Context;
use authgate::config::Config;
use authgate::server::{self, StartOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "authgate",
    version,
    about = "gRPC auth gateway: access tokens for third-party APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML config file; without one, the embedded default runs (SQLite file and key
        /// file in the working directory, gRPC on 127.0.0.1:50051).
        #[arg(long, env = "AUTHGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Serve a non-loopback address without caller authentication (only when
        /// something in front of authgate authenticates callers).
        #[arg(long)]
        insecure_no_auth: bool,
        /// Log format.
        #[arg(long, env = "AUTHGATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Check a config file and exit.
    CheckConfig {
        #[arg(long, env = "AUTHGATE_CONFIG")]
        config: PathBuf,
    },
    /// gRPC client subcommands (`token`, `events`, `credentials`, `authorize`); boxed because
    /// their options dwarf the other variants.
    #[command(flatten)]
    Client(Box<authgate::cli::ClientCommand>),
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP re-reads the config file and swaps in its `[[callers]]` (key rotation) without
/// dropping connections. Other sections need a restart.
fn spawn_caller_reload(running: &server::RunningServer, path: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let authorizer = running.authorizer();
        let registry = running.registry().clone();
        let Some(path) = path else { return };
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let reloaded = Config::load(Some(&path)).and_then(|c| {
                    c.validate_with(&registry)?;
                    Ok(c)
                });
                match reloaded {
                    // Without callers the server would admit every loopback peer with no
                    // identity: a reload must not quietly open a server that started closed.
                    Ok(c) if c.callers.is_empty() && !authorizer.is_open() => {
                        tracing::error!("SIGHUP: the config has no [[callers]]; keeping the current callers (restart to serve without caller authentication)")
                    }
                    Ok(c) => {
                        authorizer.reload(&c.callers);
                        tracing::info!(callers = c.callers.len(), "SIGHUP: callers reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: config invalid; keeping the current callers")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (running, path);
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            insecure_no_auth,
            log_format,
        } => {
            let cfg = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            cfg.telemetry
                .validate()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let telemetry = authgate::telemetry::init(&log_format, &cfg.telemetry)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if insecure_no_auth {
                tracing::error!("--insecure-no-auth given: callers are NOT authenticated");
            }
            let opts = StartOptions {
                key: std::env::var("AUTHGATE_KEY").ok(),
                insecure_no_auth,
                ..StartOptions::default()
            };
            let running = server::start(cfg, opts)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("authgate could not start")?;
            let stop = running.shutdown_handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                let _ = stop.send(true);
            });
            spawn_caller_reload(&running, config.clone());
            running.wait().await;
            // After the last RPC: what is still queued is exported before the exit.
            telemetry.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(Some(&config)).map_err(|e| anyhow::anyhow!("{e}"))?;
            server::check(&cfg)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Client(cmd) => {
            // The client reports its own errors on stderr; only the exit code is left.
            let code = authgate::cli::run(*cmd).await?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}
