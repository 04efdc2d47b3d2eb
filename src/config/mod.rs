//! Configuration: a TOML file plus `AUTHGATE_*` environment overrides, validated in full
//! before any port is bound. Every error names the field and says what to put there.
//!
//! Secrets never appear inline: a credential's secret settings are `${env:NAME}` or
//! `${file:PATH}` references, resolved when the config is validated.
//!
//! This module holds the configuration's shape, its defaults, parsing and the environment
//! overrides; the `validate` submodule holds the checks and the secret resolution.

use crate::plugins::Registry;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub mod mesh;
pub mod plugins;
mod validate;
pub mod webhooks;

pub use mesh::{MeshConfig, MeshRouteConfig};
pub use plugins::PluginConfig;
pub use webhooks::{WebhookConfig, WebhookDeliveryConfig};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub callers: Vec<CallerConfig>,
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Service-mesh token injection (Envoy ext_authz): routes for proxies that cannot set
    /// per-route `context_extensions`.
    #[serde(default)]
    pub mesh: MeshConfig,
    /// Where upstream calls of API-created credentials may go.
    #[serde(default)]
    pub egress: EgressConfig,
    /// What `/metrics` labels.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Webhooks declared in the file (more can be created through `WebhookService`).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// How webhook notifications are delivered.
    #[serde(default)]
    pub webhook_delivery: WebhookDeliveryConfig,
    /// Out-of-process provider plugins, started at boot.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

/// `[telemetry]`: observability settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Label GetToken latency and upstream calls with `tenant` and `credential` too. Off by
    /// default: one series per credential is a cost Prometheus pays for every credential.
    pub metrics_per_credential: bool,
    /// OTLP/gRPC collector to export trace spans to (e.g. `http://127.0.0.1:4317`). Off
    /// (`None`) by default: no exporter runs and the spans stay disabled.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (those whose caller sent no `traceparent`) that are exported,
    /// 0.0 to 1.0; a caller's trace follows the caller's sampled flag.
    pub trace_sample_ratio: f64,
    /// How often batched spans are sent, in milliseconds.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_per_credential: false,
            otlp_endpoint: None,
            service_name: "authgate".into(),
            trace_sample_ratio: 1.0,
            export_interval_ms: 5000,
        }
    }
}

impl TelemetryConfig {
    /// The `[telemetry]` checks, worded for the operator.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.otlp_endpoint {
            let ok = url::Url::parse(e).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
            });
            if !ok {
                return Err(err(
                    "telemetry.otlp_endpoint must be an http(s) URL of an OTLP/gRPC collector without credentials or query, e.g. http://127.0.0.1:4317",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(err(
                "telemetry.trace_sample_ratio must be between 0.0 and 1.0 (1.0 exports every new trace)",
            ));
        }
        if self.service_name.trim().is_empty() || self.service_name.len() > 128 {
            return Err(err(
                "telemetry.service_name must be 1 to 128 characters (default \"authgate\")",
            ));
        }
        if !(10..=60_000).contains(&self.export_interval_ms) {
            return Err(err(
                "telemetry.export_interval_ms must be between 10 and 60000 (default 5000)",
            ));
        }
        Ok(())
    }
}

/// `[egress]`: credentials created through the API may reach public addresses only, plus
/// this allow-list; the config file's own credentials are trusted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Host names, `*.domain` patterns, IP addresses or CIDRs that API-created credentials
    /// may reach although they are loopback, link-local or private.
    pub allow: Vec<String>,
}

impl EgressConfig {
    pub fn policy(&self) -> Result<authgate_plugin_sdk::EgressPolicy, ConfigError> {
        authgate_plugin_sdk::EgressPolicy::parse(&self.allow).map_err(ConfigError)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Longest any RPC may run on the server, in seconds.
    pub request_timeout_seconds: u64,
    /// Most RPCs in progress at once on one connection.
    pub max_concurrent_requests_per_connection: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub max_concurrent_streams: u32,
    /// WatchEvents streams one caller may hold open at once (over all its connections and
    /// tenants); one more is refused with RESOURCE_EXHAUSTED.
    pub max_watch_streams_per_caller: usize,
    /// A WatchEvents stream with nothing to send gets a heartbeat this often, in seconds, so
    /// proxies and load balancers do not cut it as idle.
    pub watch_heartbeat_seconds: u64,
    /// TLS (and mTLS when `client_ca_file` is set) on the gRPC port.
    pub tls: Option<TlsConfig>,
    /// The externally reachable base URL of the HTTP port, e.g. `https://authgate.example.com`;
    /// the OAuth redirect URI is this plus `/oauth/callback`. Default: `http://<http_listen>`.
    pub public_url: Option<String>,
    /// The HTTP port serves this many connections at once; more wait to be accepted. The
    /// callback is reachable by anyone, so slow or idle clients must not hold it.
    pub max_http_connections: usize,
    /// An HTTP client must send its request headers within this many seconds.
    pub http_header_read_timeout_seconds: u64,
    /// Bind each consent to the browser that opens it: StartAuthorization answers with an
    /// authgate link (`/oauth/start`) that sets a cookie and forwards to the provider, and
    /// the callback is accepted only with that cookie. Without it, whoever completes the
    /// provider's consent through the link first grants the credential.
    pub bind_consent_to_browser: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS, SPIFFE callers).
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_request_bytes: 64 * 1024,
            request_timeout_seconds: 60,
            max_concurrent_requests_per_connection: 1024,
            max_concurrent_streams: 1024,
            max_watch_streams_per_caller: 16,
            watch_heartbeat_seconds: 15,
            tls: None,
            public_url: None,
            max_http_connections: 1024,
            http_header_read_timeout_seconds: 10,
            bind_consent_to_browser: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    /// File holding the 32-byte encryption key (base64). Ignored when `AUTHGATE_KEY` is set.
    pub key_file: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://authgate.db".into(),
            key_file: PathBuf::from("authgate.key"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Longest a single upstream fetch may take before it counts as failed.
    pub fetch_timeout_seconds: u64,
    /// How long a replica may hold a credential's refresh lease (the right to call the
    /// provider for it) before others may take over. Longer than `fetch_timeout_seconds`,
    /// so a live holder always finishes first; a dead holder blocks refreshes this long.
    pub refresh_lease_seconds: u64,
    /// First retry delay after a transient failure; doubles up to `backoff_max_seconds`.
    pub backoff_initial_ms: u64,
    pub backoff_max_seconds: u64,
    /// Refresh this long before expiry at most (the window is the smaller of this and
    /// `refresh_fraction` of the lifetime, plus jitter).
    pub refresh_margin_seconds: u64,
    pub refresh_fraction: f64,
    /// How often to look for refresh tokens that would expire while idle.
    pub keep_alive_check_seconds: u64,
    /// How many scope sets one credential may have cached at once: every new scope set a
    /// caller asks for holds memory and costs an upstream fetch, so a caller cannot grow
    /// the cache without bound. Keys without a valid token are evicted after a while.
    pub max_scope_sets_per_credential: usize,
    /// How many token-exchange (ExchangeToken) results one credential keeps cached: one
    /// per distinct subject token, audience, resource, scopes and requested type. Beyond
    /// it the least recently used is dropped (callers choose subject tokens freely).
    pub max_exchanged_tokens_per_credential: usize,
    /// How long an exchange result for an opaque subject token (one that is no JWT with an
    /// `exp`, so its expiry is unknown) is served from the cache; 0: never cached.
    pub exchange_opaque_subject_cache_seconds: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            fetch_timeout_seconds: 30,
            refresh_lease_seconds: 45,
            backoff_initial_ms: 1000,
            backoff_max_seconds: 60,
            refresh_margin_seconds: 60,
            refresh_fraction: 0.1,
            keep_alive_check_seconds: 3600,
            max_scope_sets_per_credential: 64,
            max_exchanged_tokens_per_credential: 1024,
            exchange_opaque_subject_cache_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub retention_days: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { retention_days: 30 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GetToken (and the mesh's Check).
    Token,
    /// Revoke: drops the tokens every service of the tenant shares, so it is not part of
    /// `token`. `admin` implies it.
    Revoke,
    /// ExchangeToken (RFC 8693): tokens on behalf of a user whose token the caller holds.
    /// Neither `token` nor `admin` implies it: it mints tokens for users, so it is granted
    /// only by name.
    Exchange,
    /// ListEvents, WatchEvents.
    Events,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    pub api_key_sha256: Option<String>,
    pub spiffe_id: Option<String>,
    pub tenants: Vec<String>,
    pub roles: Vec<Role>,
    /// Token-bucket rate limit for this caller (requests per second); none when unset.
    pub rate_limit_per_second: Option<f64>,
    /// Bucket size: how many requests may arrive at once. Defaults to one second's worth.
    pub rate_limit_burst: Option<u32>,
    /// The only scopes this caller may ask for (GetToken, Check); others are
    /// PERMISSION_DENIED before any upstream call. Unset: any scope.
    #[serde(default)]
    pub allowed_scopes: Option<Vec<String>>,
    /// A proxy (Envoy) that terminates its workloads' mTLS: its ext_authz Checks are
    /// authorized as the workload named by `attributes.source.principal` (a configured
    /// caller's `spiffe_id`), not as the proxy itself.
    #[serde(default)]
    pub trusted_proxy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub tenant: String,
    pub id: String,
    pub provider: String,
    #[serde(default)]
    pub settings: toml::Table,
}

/// A credential from the config with its secret references resolved and its settings
/// accepted by its plugin.
#[derive(Clone)]
pub struct ResolvedCredential {
    pub tenant: String,
    pub id: String,
    pub provider: String,
    pub settings: serde_json::Value,
}

impl std::fmt::Debug for ResolvedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedCredential")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// Checks a tenant or credential id: 1 to 128 characters from `A-Z a-z 0-9 . _ - : @`.
pub fn validate_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("is empty; give the {what}"));
    }
    if value.len() > 128 {
        return Err(format!(
            "is {} characters long; at most 128 are allowed",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
    {
        return Err(format!(
            "contains {c:?}; use only letters, digits and . _ - : @"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads the file (or the embedded default when `None`) and applies env overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err(format!("cannot read config file {}: {e}", p.display())))?;
                Self::parse(&text).map_err(|e| err(format!("{}: {}", p.display(), e.0)))?
            }
            None => Self::parse("")?,
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| {
                    format!(
                        " (line {})",
                        text[..s.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            err(format!("invalid config{line}: {}", e.message().trim()))
        })
    }

    /// `AUTHGATE_GRPC_LISTEN`, `AUTHGATE_HTTP_LISTEN`, `AUTHGATE_STORE_URL`,
    /// `AUTHGATE_KEY_FILE`, `AUTHGATE_EVENT_RETENTION_DAYS`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("AUTHGATE_GRPC_LISTEN") {
            self.server.grpc_listen = v.parse().map_err(|_| {
                err(format!(
                    "AUTHGATE_GRPC_LISTEN={v:?} is not an address; use e.g. 127.0.0.1:50051"
                ))
            })?;
        }
        if let Some(v) = get("AUTHGATE_HTTP_LISTEN") {
            self.server.http_listen = v.parse().map_err(|_| {
                err(format!(
                    "AUTHGATE_HTTP_LISTEN={v:?} is not an address; use e.g. 127.0.0.1:8080"
                ))
            })?;
        }
        if let Some(v) = get("AUTHGATE_STORE_URL") {
            self.store.url = v;
        }
        if let Some(v) = get("AUTHGATE_KEY_FILE") {
            self.store.key_file = PathBuf::from(v);
        }
        if let Some(v) = get("AUTHGATE_EVENT_RETENTION_DAYS") {
            self.events.retention_days = v.parse().map_err(|_| {
                err(format!(
                    "AUTHGATE_EVENT_RETENTION_DAYS={v:?} is not a number of days"
                ))
            })?;
        }
        Ok(())
    }

    /// [`Config::validate_with`] the built-in provider kinds.
    pub fn validate(&self) -> Result<Vec<ResolvedCredential>, ConfigError> {
        self.validate_with(&Registry::builtin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.store.url, "sqlite://authgate.db");
        assert!(c.validate().unwrap().is_empty());
    }

    #[test]
    fn telemetry_export_is_off_by_default_and_checked_when_on() {
        let c = Config::parse("").unwrap();
        assert!(c.telemetry.otlp_endpoint.is_none());
        assert_eq!(c.telemetry.service_name, "authgate");
        let on = Config::parse(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\ntrace_sample_ratio = 0.25\n",
        )
        .unwrap();
        on.validate().unwrap();
        for (bad, names) in [
            (
                "otlp_endpoint = \"127.0.0.1:4317\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://u:p@collector:4317\"",
                "without credentials",
            ),
            ("trace_sample_ratio = 1.5", "telemetry.trace_sample_ratio"),
            ("service_name = \" \"", "telemetry.service_name"),
            ("export_interval_ms = 0", "telemetry.export_interval_ms"),
        ] {
            let c = Config::parse(&format!("[telemetry]\n{bad}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let e = Config::parse("[server]\ngrpc_lisen = \"x\"\n").unwrap_err();
        assert!(e.0.contains("grpc_lisen"), "{e}");
        assert!(e.0.contains("line"), "{e}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("tenant", "acme-1.eu").is_ok());
        assert!(validate_id("tenant", "").is_err());
        assert!(validate_id("tenant", "a b").is_err());
        assert!(validate_id("tenant", &"x".repeat(129)).is_err());
    }

    #[test]
    fn env_overrides_apply() {
        let mut c = Config::parse("").unwrap();
        c.apply_env(|k| (k == "AUTHGATE_GRPC_LISTEN").then(|| "127.0.0.1:1".to_owned()))
            .unwrap();
        assert_eq!(c.server.grpc_listen.port(), 1);
        assert!(c
            .apply_env(|k| (k == "AUTHGATE_HTTP_LISTEN").then(|| "nope".to_owned()))
            .is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any text is a config or an error that says something, never a panic;
            /// TOML-shaped text reaches validation too.
            #[test]
            fn any_text_parses_or_is_refused(
                text in prop_oneof![
                    ".{0,200}",
                    "(\\[(server|store|broker|egress|mesh)\\]\n([a-z_]{1,20} = (\"[a-z0-9:./*]{0,20}\"|[0-9]{1,6}|\\[\"[a-z0-9.*/]{0,12}\"\\])\n){0,4}){0,3}",
                ],
            ) {
                match Config::parse(&text) {
                    Ok(cfg) => {
                        if let Err(e) = cfg.validate() {
                            prop_assert!(!e.0.is_empty());
                        }
                    }
                    Err(e) => prop_assert!(!e.0.is_empty()),
                }
            }
        }
    }
}
