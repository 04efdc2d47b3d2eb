//! Keeping one plugin running: every call to it goes through [`Supervisor::call`] (a
//! bounded number at once, each with a deadline; a plugin that misses one is killed), and
//! one task per plugin watches the process (its exit, a health check, a kill asked by a
//! call) and starts it again with backoff. Cache hits never come here.

use super::launch::{self, Client, Launched, Running};
use super::wire::PLUGIN_STEP;
use super::Describe;
use crate::config::PluginConfig;
use crate::metrics::{Metrics, PluginCallOutcome};
use arc_swap::ArcSwapOption;
use authgate_plugin_sdk::{ProviderError, Redactor, UpstreamCall};
use rand::Rng;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{watch, Semaphore};
use tonic::{Response, Status};

/// The first restart waits this long; each failed one doubles it up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Health checks a start must pass before its backoff is forgotten: a plugin that crashes
/// right after every start is not restarted in a tight loop.
const HEALTHY_CHECKS_TO_RESET: u32 = 3;
/// The deadline a plugin is told is this much later than the gateway's own, so the
/// gateway's timer, not the transport's, ends a call that overruns it (and kills the
/// plugin).
const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// Longest message taken from a plugin's gRPC status.
const MAX_STATUS_CHARS: usize = 512;

/// One configured plugin, running or being restarted.
pub(super) struct Supervisor {
    config: PluginConfig,
    /// Knows the secrets of every credential built on this plugin: for its output and
    /// `Host.Log` lines, which belong to no call.
    redactor: Redactor,
    /// The first start's description; every restart must describe itself the same way.
    description: Describe,
    /// `call_timeout_seconds`, or less when the broker would give up on a fetch sooner.
    call_timeout: Duration,
    current: ArcSwapOption<Running>,
    permits: Semaphore,
    starts: AtomicU64,
    metrics: Metrics,
}

/// Why a start of the plugin ended.
enum Stop {
    Shutdown,
    Ended(String),
}

impl Supervisor {
    /// Starts the plugin (a failed handshake is the error) and the task that keeps it
    /// running until `shutdown` says so or its sender is gone. Calls get `call_timeout`.
    pub async fn start(
        config: PluginConfig,
        call_timeout: Duration,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), String> {
        let redactor = Redactor::new(rand::thread_rng().gen());
        let Launched {
            running,
            child,
            describe,
        } = launch::launch(&config, &redactor, None).await?;
        tracing::info!(
            plugin = %config.kind,
            pid = ?running.pid,
            version = %describe.version,
            "plugin started"
        );
        let permits = Semaphore::new(config.max_concurrent_calls);
        let supervisor = Arc::new(Self {
            config,
            redactor,
            description: describe,
            call_timeout,
            current: ArcSwapOption::from_pointee(running),
            permits,
            starts: AtomicU64::new(1),
            metrics,
        });
        supervisor.metrics.plugin_started(supervisor.kind());
        let task = tokio::spawn(supervisor.clone().keep_running(child, shutdown));
        Ok((supervisor, task))
    }

    pub fn kind(&self) -> &str {
        &self.config.kind
    }

    pub fn description(&self) -> &Describe {
        &self.description
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The running process's id; `None` while it is being restarted.
    pub fn pid(&self) -> Option<u32> {
        self.current.load().as_ref().and_then(|r| r.pid)
    }

    /// How many times the process was started (1 before any restart).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// One call to the plugin: a permit among `max_concurrent_calls`, a fresh `call_id`
    /// under which `upstream` (when the operation may reach the network) serves the
    /// plugin's `Host.Send`, and the deadline `call_timeout_seconds` for all of it (`send`
    /// is given the deadline to tell the plugin). A
    /// plugin that does not answer in time is killed; one that is not running, or fails
    /// in transport (it crashed), is a transient failure of this call.
    pub async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        upstream: Option<&UpstreamCall>,
        send: F,
    ) -> Result<T, ProviderError>
    where
        F: FnOnce(Client, String, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let result = self.call_once(rpc, upstream, send).await;
        let outcome = match &result {
            Ok(_) => PluginCallOutcome::Answered,
            Err(ProviderError::TimedOut { .. }) => PluginCallOutcome::TimedOut,
            Err(_) => PluginCallOutcome::Failed,
        };
        self.metrics.plugin_call(self.kind(), rpc, outcome);
        result
    }

    async fn call_once<T, F, Fut>(
        &self,
        rpc: &str,
        upstream: Option<&UpstreamCall>,
        send: F,
    ) -> Result<T, ProviderError>
    where
        F: FnOnce(Client, String, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let timeout = self.call_timeout();
        let mut sent: Option<Arc<Running>> = None;
        let attempt = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| self.not_running())?;
            let running = self.current.load_full().ok_or_else(|| self.not_running())?;
            sent = Some(running.clone());
            let call_id = format!("{:032x}", rand::thread_rng().gen::<u128>());
            let _registered = upstream.map(|u| running.calls.register(call_id.clone(), u.clone()));
            Ok(send(running.client.clone(), call_id, timeout + DEADLINE_GRACE).await)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Err(not_running)) => return Err(not_running),
            Ok(Ok(Ok(answer))) => return Ok(answer.into_inner()),
            // The plugin's gRPC server ends a call at the deadline it was sent, whether or
            // not its handler is still stuck: the same miss as the gateway's own timeout.
            Ok(Ok(Err(status))) if status.code() != tonic::Code::DeadlineExceeded => {
                return Err(self.failed(rpc, &status, upstream));
            }
            Ok(Ok(Err(_))) | Err(_) => {}
        }
        if let Some(running) = sent {
            running.kill(
                self.kind(),
                &format!(
                    "{rpc} did not answer within {} s (call_timeout_seconds)",
                    timeout.as_secs()
                ),
            );
        }
        Err(ProviderError::TimedOut {
            step: PLUGIN_STEP.to_owned(),
            after: timeout,
        })
    }

    fn not_running(&self) -> ProviderError {
        ProviderError::transient(
            PLUGIN_STEP,
            format!(
                "plugin `{}` is not running: it is being restarted",
                self.kind()
            ),
        )
    }

    /// A call that ended without an answer of the protocol: the process went away (the
    /// supervisor sees it exit and restarts it) or the plugin broke; transient either way.
    fn failed(&self, rpc: &str, status: &Status, upstream: Option<&UpstreamCall>) -> ProviderError {
        let mut message = self.redactor.scrub(status.message());
        if let Some(call) = upstream {
            message = call.redactor().scrub(&message);
        }
        let message = authgate_plugin_sdk::redact::truncate_chars(&message, MAX_STATUS_CHARS);
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        ProviderError::transient(
            PLUGIN_STEP,
            format!(
                "plugin `{}` failed during {rpc} ({:?}{detail})",
                self.kind(),
                status.code()
            ),
        )
    }

    /// Watches each start until it ends, then starts the plugin again after a backoff.
    async fn keep_running(self: Arc<Self>, mut child: Child, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let Some(running) = self.current.load_full() else {
                return;
            };
            let (stop, healthy_checks) = self.watch(&running, &mut child, &mut shutdown).await;
            self.current.store(None);
            self.metrics.plugin_stopped(self.kind());
            let _ = child.start_kill();
            let _ = child.wait().await;
            drop(running);
            let why = match stop {
                Stop::Shutdown => return,
                Stop::Ended(why) => why,
            };
            if healthy_checks >= HEALTHY_CHECKS_TO_RESET {
                backoff = INITIAL_BACKOFF;
            }
            tracing::warn!(plugin = %self.kind(), "plugin stopped ({why}); restarting it");
            match self.restart(&mut backoff, &mut shutdown).await {
                Some(next) => child = next,
                None => return,
            }
        }
    }

    /// Waits for this start to end: its exit, a kill asked by a call, a failed health
    /// check, or shutdown. Also returns how many health checks it passed.
    async fn watch(
        &self,
        running: &Running,
        child: &mut Child,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (Stop, u32) {
        let mut ticks = tokio::time::interval(self.config.health_check_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut healthy = 0u32;
        let stop = loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    break Stop::Ended(format!("the process exited: {status}"));
                }
                () = running.kill.notified() => break Stop::Ended("killed: a call missed its deadline".into()),
                _ = shutdown.changed() => break Stop::Shutdown,
                _ = ticks.tick() => {
                    match launch::describe(&running.client, self.config.handshake_timeout()).await {
                        Ok(_) => healthy = healthy.saturating_add(1),
                        Err(why) => break Stop::Ended(format!("health check failed: {why}")),
                    }
                }
            }
        };
        (stop, healthy)
    }

    /// Starts the plugin again, waiting `backoff` (doubled after each failure) before each
    /// try; `None` when shutdown came first.
    async fn restart(
        &self,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Child> {
        loop {
            tokio::select! {
                () = tokio::time::sleep(*backoff) => {}
                _ = shutdown.changed() => return None,
            }
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            let started = tokio::select! {
                started = launch::launch(&self.config, &self.redactor, Some(&self.description)) => started,
                _ = shutdown.changed() => return None,
            };
            match started {
                Ok(Launched { running, child, .. }) => {
                    tracing::info!(plugin = %self.kind(), pid = ?running.pid, "plugin restarted");
                    self.current.store(Some(Arc::new(running)));
                    self.starts.fetch_add(1, Ordering::Relaxed);
                    self.metrics.plugin_started(self.kind());
                    return Some(child);
                }
                Err(why) => tracing::error!(
                    plugin = %self.kind(),
                    retry_in = ?*backoff,
                    "plugin did not restart: {why}"
                ),
            }
        }
    }
}
