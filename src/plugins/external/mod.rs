//! Out-of-process provider plugins (`authgate.plugin.v1`, `[[plugins]]`): a program in
//! any language serves `Provider` on a Unix socket; the gateway serves it `Host`, so every
//! HTTP request the plugin makes is still the gateway's (recorded, redacted, bounded,
//! egress-checked).
//!
//! `launch.rs` starts one process (digest, handshake, connection); `supervisor.rs` keeps it
//! running and owns every call to it (deadline, concurrency, kill, restart with backoff);
//! `host.rs` serves `Host`; `provider.rs` is the [`Provider`](authgate_plugin_sdk::Provider)
//! the rest of the gateway sees; `wire.rs` converts, bounds and scrubs what crosses.

mod host;
mod launch;
mod provider;
mod supervisor;
mod wire;

pub use provider::{ExternalFactory, ExternalProvider};

use crate::config::PluginConfig;
use crate::metrics::Metrics;
use crate::proto::plugin::v1 as pb;
use authgate_plugin_sdk::{Capabilities, ProviderFactory};
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The metadata entry both sides present on every call: the secret of this start.
pub(crate) const SECRET_METADATA: &str = "authgate-plugin-secret";
/// Largest message either side accepts (settings, an upstream answer of up to the body cap).
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest settings JSON schema kept from a description.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most secret field names a plugin may declare.
const MAX_SECRET_FIELDS: usize = 64;

/// What a plugin said it is (`Describe`).
#[derive(Debug, Clone, PartialEq)]
pub struct Describe {
    pub kind: String,
    pub capabilities: Capabilities,
    pub secret_fields: Vec<String>,
    pub settings_schema_json: String,
    pub version: String,
}

impl From<pb::DescribeResponse> for Describe {
    fn from(d: pb::DescribeResponse) -> Self {
        let c = d.capabilities.unwrap_or_default();
        let mut secret_fields = d.secret_fields;
        secret_fields.truncate(MAX_SECRET_FIELDS);
        let mut schema = d.settings_schema_json;
        if schema.len() > MAX_SCHEMA_BYTES {
            schema.clear();
        }
        Self {
            kind: d.kind,
            capabilities: Capabilities {
                revoke: c.revoke,
                authorization_code: c.authorization_code,
                pkce: c.pkce,
                refresh_token: c.refresh_token,
                token_exchange: false,
                device_code: false,
            },
            secret_fields,
            settings_schema_json: schema,
            version: authgate_plugin_sdk::redact::truncate_chars(&d.plugin_version, 64),
        }
    }
}

/// The configured plugins, each running (or being restarted) under its supervisor.
#[derive(Clone, Default)]
pub struct ExternalPlugins {
    plugins: Arc<Vec<Arc<Supervisor>>>,
}

impl std::fmt::Debug for ExternalPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.kind()))
            .finish()
    }
}

impl ExternalPlugins {
    /// Starts every configured plugin, side by side. A plugin that fails its digest check
    /// or handshake is the error (naming it); the ones already started stop when
    /// `shutdown`'s sender goes. Also returns the supervisors' tasks, which end after
    /// shutdown once their processes are gone.
    ///
    /// A call's deadline is its plugin's `call_timeout_seconds`, but never past
    /// `max_call_time`: a call the broker has given up on (`fetch_timeout_seconds`) must
    /// have killed a plugin that hangs first, or nothing would.
    pub async fn start(
        configs: &[PluginConfig],
        max_call_time: Duration,
        metrics: &Metrics,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(Self, Vec<JoinHandle<()>>), String> {
        if !configs.is_empty() {
            launch::remove_stale_dirs();
        }
        let started = futures::future::join_all(configs.iter().map(|c| {
            let timeout = c.call_timeout().min(max_call_time);
            if timeout < c.call_timeout() {
                tracing::info!(
                    plugin = %c.kind,
                    call_timeout = ?timeout,
                    "plugin calls end before broker.fetch_timeout_seconds, sooner than its call_timeout_seconds"
                );
            }
            Supervisor::start(c.clone(), timeout, metrics.clone(), shutdown.clone())
        }))
        .await;
        let mut plugins = Vec::with_capacity(started.len());
        let mut tasks = Vec::with_capacity(started.len());
        let mut first_error = None;
        for s in started {
            match s {
                Ok((plugin, task)) => {
                    plugins.push(plugin);
                    tasks.push(task);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for t in &tasks {
                t.abort();
            }
            return Err(e);
        }
        Ok((
            Self {
                plugins: Arc::new(plugins),
            },
            tasks,
        ))
    }

    /// `registry` with a factory for each plugin's kind.
    pub fn register(&self, registry: super::Registry) -> super::Registry {
        self.plugins
            .iter()
            .filter_map(|p| self.factory(p.kind()))
            .fold(registry, super::Registry::with)
    }

    /// A factory of the plugin of `kind` (what [`register`](Self::register) adds), for
    /// tests that drive a plugin without a gateway around it.
    pub fn factory(&self, kind: &str) -> Option<Arc<dyn ProviderFactory>> {
        let plugin = self.plugins.iter().find(|p| p.kind() == kind)?;
        Some(Arc::new(ExternalFactory::new(plugin.clone())))
    }

    fn find(&self, kind: &str) -> Option<&Supervisor> {
        self.plugins.iter().find(|p| p.kind() == kind).map(|p| &**p)
    }

    /// The process id of the plugin of `kind`; `None` while it restarts (or is unknown).
    pub fn pid(&self, kind: &str) -> Option<u32> {
        self.find(kind).and_then(Supervisor::pid)
    }

    /// How many times the plugin of `kind` was started (0 when unknown).
    pub fn starts(&self, kind: &str) -> u64 {
        self.find(kind).map_or(0, Supervisor::starts)
    }

    /// What the plugin of `kind` described itself as at its first start.
    pub fn describe(&self, kind: &str) -> Option<&Describe> {
        self.find(kind).map(Supervisor::description)
    }
}
