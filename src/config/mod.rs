//! Configuration: a TOML file plus `AUTHGATE_*` environment overrides, validated in full
//! before any port is bound. Every error names the field and says what to put there.
//!
//! Secrets never appear inline: a credential's secret settings are `${env:NAME}` or
//! `${file:PATH}` references, resolved here.

pub mod mesh;

pub use mesh::{MeshConfig, MeshRouteConfig};

use crate::plugins::{BuildError, Registry};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// TLS (and mTLS when `client_ca_file` is set) on the gRPC port.
    pub tls: Option<TlsConfig>,
    /// The externally reachable base URL of the HTTP port, e.g. `https://authgate.example.com`;
    /// the OAuth redirect URI is this plus `/oauth/callback`. Default: `http://<http_listen>`.
    pub public_url: Option<String>,
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
            tls: None,
            public_url: None,
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
    Token,
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

    /// Validates everything that can be checked without a network, and resolves secret
    /// references. Returns the credentials ready to be stored.
    pub fn validate_with(
        &self,
        registry: &Registry,
    ) -> Result<Vec<ResolvedCredential>, ConfigError> {
        if let Some(tls) = &self.server.tls {
            for (field, path) in [
                ("cert_file", Some(&tls.cert_file)),
                ("key_file", Some(&tls.key_file)),
                ("client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(p) = path {
                    if !p.is_file() {
                        return Err(err(format!(
                            "server.tls.{field}: {} is not a readable file",
                            p.display()
                        )));
                    }
                }
            }
        }
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres")) {
            return Err(err(
                "store.url must start with sqlite:// (e.g. sqlite://authgate.db) or postgres://",
            ));
        }
        if self.events.retention_days == 0 {
            return Err(err("events.retention_days must be at least 1"));
        }
        let b = &self.broker;
        if b.fetch_timeout_seconds == 0 || b.backoff_initial_ms == 0 || b.backoff_max_seconds == 0 {
            return Err(err(
                "broker.fetch_timeout_seconds, broker.backoff_initial_ms and broker.backoff_max_seconds must be positive",
            ));
        }
        if b.refresh_lease_seconds <= b.fetch_timeout_seconds {
            return Err(err(format!(
                "broker.refresh_lease_seconds ({}) must be greater than broker.fetch_timeout_seconds ({}): a replica must finish its fetch while it still holds the lease (e.g. {})",
                b.refresh_lease_seconds,
                b.fetch_timeout_seconds,
                b.fetch_timeout_seconds + 15
            )));
        }
        if !(0.0..0.5).contains(&b.refresh_fraction) {
            return Err(err(
                "broker.refresh_fraction must be between 0 and 0.5 (e.g. 0.1)",
            ));
        }
        if let Some(u) = &self.server.public_url {
            let ok = url::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(err("server.public_url must be an absolute http(s) URL such as https://authgate.example.com"));
            }
        }
        if b.keep_alive_check_seconds == 0 {
            return Err(err(
                "broker.keep_alive_check_seconds must be positive (e.g. 3600)",
            ));
        }
        if self.server.max_request_bytes < 1024 {
            return Err(err("server.max_request_bytes must be at least 1024"));
        }
        self.validate_callers()?;
        self.mesh.validate()?;

        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(self.credentials.len());
        for (i, c) in self.credentials.iter().enumerate() {
            let at = format!("credentials[{i}]");
            validate_id("tenant", &c.tenant).map_err(|m| err(format!("{at}.tenant: {m}")))?;
            validate_id("id", &c.id).map_err(|m| err(format!("{at}.id: {m}")))?;
            if !seen.insert((c.tenant.clone(), c.id.clone())) {
                return Err(err(format!(
                    "{at}: credential `{}` is defined twice for tenant `{}`; ids must be unique per tenant",
                    c.id, c.tenant
                )));
            }
            let factory = registry.factory(&c.provider).ok_or_else(|| {
                err(format!(
                    "{at}.provider: unknown provider `{}`; use one of: {}",
                    c.provider,
                    registry.kinds().join(", ")
                ))
            })?;
            let settings = resolve_settings(&at, &c.settings, factory.secret_fields())?;
            registry
                .build(&c.provider, settings.clone())
                .map_err(|e: BuildError| err(format!("{at} ({}/{}): {e}", c.tenant, c.id)))?;
            out.push(ResolvedCredential {
                tenant: c.tenant.clone(),
                id: c.id.clone(),
                provider: c.provider.clone(),
                settings,
            });
        }
        Ok(out)
    }

    fn validate_callers(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, c) in self.callers.iter().enumerate() {
            let at = format!("callers[{i}]");
            if c.name.is_empty() || !names.insert(c.name.clone()) {
                return Err(err(format!(
                    "{at}.name: every caller needs a unique, non-empty name"
                )));
            }
            match (&c.api_key_sha256, &c.spiffe_id) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(err(format!(
                        "{at} ({}): set exactly one of api_key_sha256 or spiffe_id",
                        c.name
                    )))
                }
                (Some(h), None) => {
                    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(err(format!(
                            "{at}.api_key_sha256: must be the 64 hex characters of SHA-256(key), e.g. from `printf %s KEY | sha256sum`"
                        )));
                    }
                }
                (None, Some(s)) => {
                    if !s.starts_with("spiffe://") {
                        return Err(err(format!(
                            "{at}.spiffe_id: must look like spiffe://trust-domain/path"
                        )));
                    }
                }
            }
            if c.tenants.is_empty() {
                return Err(err(format!(
                    "{at}.tenants: list the tenants this caller may use, or [\"*\"]"
                )));
            }
            for t in &c.tenants {
                if t != "*" {
                    validate_id("tenant", t).map_err(|m| err(format!("{at}.tenants: {m}")))?;
                }
            }
            if c.rate_limit_per_second
                .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            {
                return Err(err(format!(
                    "{at}.rate_limit_per_second: must be a positive number"
                )));
            }
            if c.spiffe_id.is_some()
                && self
                    .server
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_ca_file.as_ref())
                    .is_none()
            {
                return Err(err(format!(
                    "{at}.spiffe_id: SPIFFE callers need mTLS; set server.tls.cert_file, key_file and client_ca_file"
                )));
            }
            if c.roles.is_empty() {
                return Err(err(format!(
                    "{at}.roles: give at least one of token, events, admin"
                )));
            }
        }
        Ok(())
    }
}

/// Converts TOML settings to JSON, resolving `${env:NAME}` / `${file:PATH}` references and
/// refusing inline values for secret fields.
fn resolve_settings(
    at: &str,
    settings: &toml::Table,
    secret_fields: &[&str],
) -> Result<serde_json::Value, ConfigError> {
    let mut out = serde_json::Map::new();
    for (k, v) in settings {
        let field = format!("{at}.settings.{k}");
        let is_secret = secret_fields.contains(&k.as_str());
        out.insert(k.clone(), resolve_value(&field, v, is_secret)?);
    }
    Ok(serde_json::Value::Object(out))
}

fn resolve_value(
    field: &str,
    v: &toml::Value,
    secret: bool,
) -> Result<serde_json::Value, ConfigError> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => match resolve_reference(field, s)? {
            Some(resolved) => J::String(resolved),
            None if secret => {
                return Err(err(format!(
                    "{field} is a secret and must be a reference, not inline: use \"${{env:NAME}}\" or \"${{file:/path/to/file}}\""
                )))
            }
            None => J::String(s.clone()),
        },
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(*f),
        toml::Value::Boolean(b) => J::from(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(
            items
                .iter()
                .map(|i| resolve_value(field, i, secret))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_value(&format!("{field}.{k}"), v, secret)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
    })
}

/// `Some(value)` when `s` is a reference, `None` when it is a literal.
fn resolve_reference(field: &str, s: &str) -> Result<Option<String>, ConfigError> {
    let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        return Ok(None);
    };
    if let Some(name) = inner.strip_prefix("env:") {
        return std::env::var(name).map(Some).map_err(|_| {
            err(format!(
                "{field} refers to environment variable {name}, which is not set; export it before starting authgate"
            ))
        });
    }
    if let Some(path) = inner.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|t| Some(t.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| {
                err(format!(
                    "{field} refers to file {path}, which cannot be read: {e}"
                ))
            });
    }
    Err(err(format!(
        "{field}: unknown reference `${{{}}}`; use ${{env:NAME}} or ${{file:PATH}}",
        inner.split(':').next().unwrap_or("")
    )))
}

#[cfg(test)]
mod tests;
