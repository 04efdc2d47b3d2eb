//! The out-of-process plugins' families: whether each answers, its starts, its calls by
//! outcome. Label values are configured plugin kinds and fixed RPC and outcome names.

use super::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    rpc: &'static str,
    outcome: &'static str,
}

/// How a call to an out-of-process plugin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginCallOutcome {
    /// The plugin answered (a token, or a classified error of its provider).
    Answered,
    /// It missed its deadline (and was killed).
    TimedOut,
    /// It was not running, or failed in transport (it crashed).
    Failed,
}

impl PluginCallOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
        }
    }
}

#[derive(Default)]
pub(super) struct PluginFamilies {
    up: Family<PluginLabels, Gauge>,
    starts: Family<PluginLabels, Counter>,
    calls: Family<PluginCallLabels, Counter>,
}

impl PluginFamilies {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "authgate_plugin_up",
            "1 while the out-of-process plugin answers, 0 while it is being restarted",
            self.up.clone(),
        );
        r.register(
            "authgate_plugin_starts",
            "Starts of each out-of-process plugin (the first one and every restart)",
            self.starts.clone(),
        );
        r.register(
            "authgate_plugin_calls",
            "Calls to out-of-process plugins by plugin, RPC and outcome (answered, timed_out: killed, failed: not running or crashed)",
            self.calls.clone(),
        );
    }
}

impl Metrics {
    /// The plugin of `kind` was started (or started again) and answers.
    pub fn plugin_started(&self, kind: &str) {
        let labels = PluginLabels {
            plugin: kind.to_owned(),
        };
        self.0.plugins.starts.get_or_create(&labels).inc();
        self.0.plugins.up.get_or_create(&labels).set(1);
    }

    /// The plugin of `kind` stopped (it is restarted, or the gateway stops).
    pub fn plugin_stopped(&self, kind: &str) {
        let labels = PluginLabels {
            plugin: kind.to_owned(),
        };
        self.0.plugins.up.get_or_create(&labels).set(0);
    }

    /// One call to the plugin of `kind` ended.
    pub fn plugin_call(&self, kind: &str, rpc: &'static str, outcome: PluginCallOutcome) {
        self.0
            .plugins
            .calls
            .get_or_create(&PluginCallLabels {
                plugin: kind.to_owned(),
                rpc,
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
