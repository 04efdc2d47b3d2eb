//! What `/metrics` exposes, through the `prometheus-client` crate: every metric is declared
//! and registered here, and every other module only records into a handle it is given.
//!
//! Label cardinality is bounded by construction: gRPC methods come from the served
//! descriptor set (anything else is `other`), status codes and status classes are fixed
//! sets, providers and steps are named by plugin code, and `tenant`/`credential` labels are
//! filled only with `[telemetry] metrics_per_credential = true` (empty otherwise, which
//! Prometheus treats as absent). No label value ever comes from a token or a secret.

mod plugins;

pub use plugins::PluginCallOutcome;

use crate::store::CredentialStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds, from a cache hit (tens of microseconds) to a fetch that ran
/// into its timeout (30 s).
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 5.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The number of gRPC status codes (0 OK to 16 UNAUTHENTICATED).
const CODES: usize = 17;

/// A gRPC method as `rpc`'s label: an index into the served methods (or `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabel(u16);

/// How a GetToken (or a mesh Check's token) was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From memory.
    Hit,
    /// After waiting for a fetch.
    Miss,
    /// With an error.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    outcome: &'static str,
    tenant: String,
    credential: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: String,
    step: String,
    status_class: &'static str,
    tenant: String,
    credential: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
}

/// The webhook outbox's gauges, set by the delivery loop after each pass.
#[derive(Default)]
struct OutboxGauges {
    pending: Gauge,
    oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    failed: Gauge,
}

/// Every metric of one gateway. Cheap to clone; [`Metrics::default`] is a working set that
/// nobody scrapes (tests, tools).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    per_credential: bool,
    /// gRPC methods that get their own label value, by path (leaked once per gateway: a few
    /// dozen short strings, so a call's labels need no allocation); index `methods.len()`
    /// is `other`.
    methods: foldhash::HashMap<&'static str, u16>,
    method_names: Vec<&'static str>,
    /// `rpc`'s series per (method index, status code), resolved at their first call: a call
    /// records with no map lookup and no label hashing.
    rpc_series: Vec<[OnceLock<Histogram>; CODES]>,
    get_token: Family<TokenLabels, Histogram>,
    /// `get_token`'s three series without per-credential labels, resolved once: the hot path
    /// records into one of these with no map lookup.
    get_token_fixed: [Histogram; 3],
    rpc: Family<RpcLabels, Histogram>,
    upstream: Family<UpstreamLabels, Histogram>,
    pub(crate) counters: Counters,
    cached_tokens: Gauge,
    cache_keys: Gauge,
    credentials: Family<StatusLabels, Gauge>,
    webhook_attempts: Family<AttemptLabels, Counter>,
    outbox: OutboxGauges,
    plugins: plugins::PluginFamilies,
}

/// The plain counters, recorded where the event happens.
#[derive(Default)]
pub struct Counters {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub upstream_fetches: Counter,
    pub upstream_failures: Counter,
    pub background_refreshes: Counter,
    /// Fetches answered with a token another replica (or an earlier run) stored.
    pub tokens_adopted: Counter,
    /// Keys put in backoff after a failed fetch.
    pub backoffs: Counter,
    /// Fetches that waited for another replica's refresh lease.
    pub lease_waits: Counter,
    /// ExchangeToken answered from the exchange cache.
    pub exchange_hits: Counter,
    /// ExchangeToken that needed (or joined) an upstream exchange.
    pub exchange_misses: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false, std::iter::empty())
    }
}

impl Metrics {
    /// `methods`: the full gRPC method paths served (`/package.Service/Method`).
    pub fn new(per_credential: bool, methods: impl IntoIterator<Item = String>) -> Self {
        let mut registry = Registry::default();
        let method_names: Vec<&'static str> = methods
            .into_iter()
            .map(|m| &*Box::leak(m.into_boxed_str()))
            .collect();
        let get_token = Family::<TokenLabels, Histogram>::new_with_constructor(latency_histogram);
        let fixed = |o: Outcome| {
            get_token
                .get_or_create(&TokenLabels {
                    outcome: o.as_str(),
                    tenant: String::new(),
                    credential: String::new(),
                })
                .clone()
        };
        let get_token_fixed = if per_credential {
            // Never exposed: with per-credential labels every series carries its labels.
            std::array::from_fn(|_| latency_histogram())
        } else {
            [
                fixed(Outcome::Hit),
                fixed(Outcome::Miss),
                fixed(Outcome::Error),
            ]
        };
        let inner = Inner {
            per_credential,
            methods: method_names
                .iter()
                .enumerate()
                .map(|(i, m)| (*m, i as u16))
                .collect(),
            rpc_series: (0..=method_names.len())
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
            method_names,
            get_token,
            get_token_fixed,
            rpc: Family::new_with_constructor(latency_histogram),
            upstream: Family::new_with_constructor(latency_histogram),
            counters: Counters::default(),
            cached_tokens: Gauge::default(),
            cache_keys: Gauge::default(),
            credentials: Family::default(),
            webhook_attempts: Family::default(),
            outbox: OutboxGauges::default(),
            plugins: plugins::PluginFamilies::default(),
            registry: Registry::default(),
        };
        // Every outcome is exposed from the start (at 0), so `increase()` sees the first one.
        for outcome in ["delivered", "retry", "failed"] {
            let _ = inner
                .webhook_attempts
                .get_or_create(&AttemptLabels { outcome });
        }
        register(&mut registry, &inner);
        Self(Arc::new(Inner { registry, ..inner }))
    }

    pub fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// A GetToken answered, `took` after it arrived at the broker.
    pub fn token_served(&self, tenant: &str, credential: &str, outcome: Outcome, took: Duration) {
        let secs = took.as_secs_f64();
        if !self.0.per_credential {
            let i = match outcome {
                Outcome::Hit => 0,
                Outcome::Miss => 1,
                Outcome::Error => 2,
            };
            self.0.get_token_fixed[i].observe(secs);
            return;
        }
        self.0
            .get_token
            .get_or_create(&TokenLabels {
                outcome: outcome.as_str(),
                tenant: tenant.to_owned(),
                credential: credential.to_owned(),
            })
            .observe(secs);
    }

    /// The label of a gRPC path: itself when served, else `other`.
    pub fn method_label(&self, path: &str) -> MethodLabel {
        MethodLabel(
            self.0
                .methods
                .get(path)
                .copied()
                .unwrap_or(self.0.method_names.len() as u16),
        )
    }

    /// One gRPC call of `method` finished with `code` (the `grpc-status` number).
    pub fn rpc_finished(&self, method: MethodLabel, code: i32, took: Duration) {
        let i = &self.0;
        let m = usize::from(method.0);
        let c = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES)
            .unwrap_or(2);
        let Some(slots) = i.rpc_series.get(m) else {
            return;
        };
        slots[c]
            .get_or_init(|| {
                i.rpc
                    .get_or_create(&RpcLabels {
                        method: i.method_names.get(m).copied().unwrap_or("other"),
                        code: code_name(c as i32),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }

    /// One HTTP exchange with a provider (`status`: the HTTP status, `None` when no answer).
    pub fn upstream_call(
        &self,
        provider: &str,
        step: &str,
        status: Option<u16>,
        took: Duration,
        tenant: &str,
        credential: &str,
    ) {
        let (tenant, credential) = if self.0.per_credential {
            (tenant.to_owned(), credential.to_owned())
        } else {
            (String::new(), String::new())
        };
        self.0
            .upstream
            .get_or_create(&UpstreamLabels {
                provider: provider.to_owned(),
                step: step.to_owned(),
                status_class: status_class(status),
                tenant,
                credential,
            })
            .observe(took.as_secs_f64());
    }

    /// A webhook delivery attempt ended: `delivered`, `retry` or `failed`.
    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.0
            .webhook_attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
    }

    /// The webhook outbox as the delivery loop last read it.
    pub fn outbox(&self, stats: &crate::store::OutboxStats, now: crate::clock::UnixMillis) {
        let g = &self.0.outbox;
        g.pending.set(stats.pending as i64);
        g.failed.set(stats.failed as i64);
        let age = stats
            .oldest_pending_at_ms
            .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
        g.oldest_age_seconds.set(age);
    }

    /// The text exposition, with the gauges read from `state` first.
    pub fn render(&self, state: &GaugeReadings) -> String {
        let i = &self.0;
        i.cached_tokens.set(state.cached_tokens as i64);
        i.cache_keys.set(state.cache_keys as i64);
        for status in CredentialStatus::ALL {
            let n = state
                .credentials
                .iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, n)| *n)
                .sum::<usize>();
            i.credentials
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &i.registry);
        out
    }
}

/// The gauges' values at scrape time.
#[derive(Debug, Default)]
pub struct GaugeReadings {
    pub cached_tokens: usize,
    pub cache_keys: usize,
    pub credentials: Vec<(CredentialStatus, usize)>,
}

fn register(r: &mut Registry, i: &Inner) {
    for (name, help, counter) in counter_table(&i.counters) {
        r.register(name, help, counter.clone());
    }
    register_families(r, i);
}

/// Every plain counter with its name (without `_total`, which the encoder appends) and help.
fn counter_table(c: &Counters) -> [(&'static str, &'static str, &Counter); 10] {
    [
        (
            "authgate_cache_hits",
            "GetToken answers from memory",
            &c.cache_hits,
        ),
        (
            "authgate_cache_misses",
            "GetToken answers that waited for a fetch (or failed before one)",
            &c.cache_misses,
        ),
        (
            "authgate_upstream_fetches",
            "Token fetches that called the provider",
            &c.upstream_fetches,
        ),
        (
            "authgate_upstream_failures",
            "Token fetches that failed",
            &c.upstream_failures,
        ),
        (
            "authgate_background_refreshes",
            "Refreshes started by a cache hit in the refresh window",
            &c.background_refreshes,
        ),
        (
            "authgate_tokens_adopted",
            "Fetches answered with a token another replica (or an earlier run) stored",
            &c.tokens_adopted,
        ),
        (
            "authgate_backoffs",
            "Cache keys put in backoff after a failed fetch",
            &c.backoffs,
        ),
        (
            "authgate_lease_waits",
            "Fetches that waited for another replica's refresh lease",
            &c.lease_waits,
        ),
        (
            "authgate_exchange_hits",
            "ExchangeToken answered from the exchange cache",
            &c.exchange_hits,
        ),
        (
            "authgate_exchange_misses",
            "ExchangeToken that needed (or joined) an upstream exchange",
            &c.exchange_misses,
        ),
    ]
}

fn register_families(r: &mut Registry, i: &Inner) {
    r.register(
        "authgate_get_token_duration_seconds",
        "GetToken latency in the broker, by outcome (hit, miss, error)",
        i.get_token.clone(),
    );
    r.register(
        "authgate_grpc_request_duration_seconds",
        "gRPC call latency by method and status code",
        i.rpc.clone(),
    );
    r.register(
        "authgate_upstream_request_duration_seconds",
        "HTTP exchanges with providers by provider, step and status class (2xx, 4xx, 5xx, error)",
        i.upstream.clone(),
    );
    r.register(
        "authgate_cached_tokens",
        "Cached tokens still valid",
        i.cached_tokens.clone(),
    );
    r.register(
        "authgate_cache_keys",
        "Cache keys held (tenant, credential, scope set)",
        i.cache_keys.clone(),
    );
    r.register(
        "authgate_credentials",
        "Credentials held, by status",
        i.credentials.clone(),
    );
    i.plugins.register(r);
    r.register(
        "authgate_webhook_attempts",
        "Webhook delivery attempts by outcome (delivered, retry, failed: given up)",
        i.webhook_attempts.clone(),
    );
    r.register(
        "authgate_webhook_outbox_pending",
        "Webhook notifications written and not yet delivered nor given up on",
        i.outbox.pending.clone(),
    );
    r.register(
        "authgate_webhook_outbox_oldest_age_seconds",
        "Age of the oldest pending webhook notification (0 when none is pending)",
        i.outbox.oldest_age_seconds.clone(),
    );
    r.register(
        "authgate_webhook_outbox_failed",
        "Webhook notifications given up on, kept for the event retention period",
        i.outbox.failed.clone(),
    );
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> GaugeReadings {
        GaugeReadings {
            cached_tokens: 2,
            cache_keys: 3,
            credentials: vec![
                (CredentialStatus::Active, 4),
                (CredentialStatus::Invalid, 1),
            ],
        }
    }

    #[test]
    fn exposition_has_every_family_and_bounded_labels() {
        let m = Metrics::new(false, ["/authgate.v1.TokenService/GetToken".to_owned()]);
        m.token_served("acme", "idp", Outcome::Hit, Duration::from_micros(30));
        for (path, code) in [
            ("/authgate.v1.TokenService/GetToken", 0),
            ("/x.Attacker/Random1", 12),
            ("/x.Attacker/Random2", 99),
        ] {
            m.rpc_finished(m.method_label(path), code, Duration::from_micros(40));
        }
        m.upstream_call(
            "oauth2",
            "token",
            Some(503),
            Duration::from_millis(20),
            "acme",
            "idp",
        );
        m.counters().cache_hits.inc();
        let text = m.render(&readings());
        for needle in [
            "authgate_cache_hits_total 1",
            "authgate_get_token_duration_seconds_count{outcome=\"hit\",tenant=\"\",credential=\"\"} 1",
            "authgate_grpc_request_duration_seconds_count{method=\"/authgate.v1.TokenService/GetToken\",code=\"OK\"} 1",
            "authgate_grpc_request_duration_seconds_count{method=\"other\",code=\"UNIMPLEMENTED\"} 1",
            "authgate_grpc_request_duration_seconds_count{method=\"other\",code=\"UNKNOWN\"} 1",
            "status_class=\"5xx\"",
            "authgate_cached_tokens 2",
            "authgate_credentials{status=\"ACTIVE\"} 4",
            "authgate_credentials{status=\"INVALID\"} 1",
            "authgate_credentials{status=\"NEEDS_AUTHORIZATION\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(
            !text.contains("acme"),
            "no tenant label by default:\n{text}"
        );
        assert!(!text.contains("Random"), "unknown methods are `other`");
    }

    #[test]
    fn per_credential_labels_only_when_asked() {
        let m = Metrics::new(true, []);
        m.token_served("acme", "idp", Outcome::Miss, Duration::from_millis(3));
        m.upstream_call(
            "oauth2",
            "token",
            None,
            Duration::from_millis(20),
            "acme",
            "idp",
        );
        let text = m.render(&GaugeReadings::default());
        assert!(
            text.contains("authgate_get_token_duration_seconds_count{outcome=\"miss\",tenant=\"acme\",credential=\"idp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("status_class=\"error\",tenant=\"acme\""),
            "{text}"
        );
        assert!(
            !text.contains("outcome=\"hit\""),
            "no unlabelled series: {text}"
        );
    }
}
