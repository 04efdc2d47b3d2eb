//! Validating a parsed [`Config`]: everything that can be checked without a network, with
//! the credentials' secret references resolved.

use super::{err, validate_id, Config, ConfigError, ResolvedCredential, Role};
use crate::plugins::{BuildError, Registry};
use std::collections::HashSet;

impl Config {
    /// Validates everything that can be checked without a network, and resolves secret
    /// references. Returns the credentials ready to be stored.
    pub fn validate_with(
        &self,
        registry: &Registry,
    ) -> Result<Vec<ResolvedCredential>, ConfigError> {
        // The checks run in this order; the first failing one is reported.
        self.check_tls_files()?;
        if !(self.store.url.starts_with("sqlite:") || self.store.url.starts_with("postgres")) {
            return Err(err(
                "store.url must start with sqlite:// (e.g. sqlite://authgate.db) or postgres://",
            ));
        }
        if self.events.retention_days == 0 {
            return Err(err("events.retention_days must be at least 1"));
        }
        self.check_broker_timing()?;
        if let Some(u) = &self.server.public_url {
            let ok = url::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(err("server.public_url must be an absolute http(s) URL such as https://authgate.example.com"));
            }
        }
        if self.broker.keep_alive_check_seconds == 0 {
            return Err(err(
                "broker.keep_alive_check_seconds must be positive (e.g. 3600)",
            ));
        }
        if self.server.max_request_bytes < 1024 {
            return Err(err("server.max_request_bytes must be at least 1024"));
        }
        self.validate_callers()?;
        self.mesh.validate()?;
        self.egress.policy()?;
        self.telemetry.validate()?;
        self.resolve_webhooks()?;
        super::plugins::validate(&self.plugins, &Registry::builtin().kinds())?;
        self.resolve_credentials(registry)
    }

    /// The TLS files exist.
    fn check_tls_files(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.server.tls else {
            return Ok(());
        };
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
        Ok(())
    }

    /// The broker's timeouts, backoff and refresh window fit together.
    fn check_broker_timing(&self) -> Result<(), ConfigError> {
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
        if self.server.max_http_connections == 0
            || self.server.http_header_read_timeout_seconds == 0
        {
            return Err(err(
                "server.max_http_connections and server.http_header_read_timeout_seconds must be positive (e.g. 1024 and 10)",
            ));
        }
        if self.server.max_watch_streams_per_caller == 0
            || !(1..=3600).contains(&self.server.watch_heartbeat_seconds)
        {
            return Err(err(
                "server.max_watch_streams_per_caller must be positive (e.g. 16) and server.watch_heartbeat_seconds between 1 and 3600 (e.g. 15)",
            ));
        }
        if b.max_scope_sets_per_credential == 0 {
            return Err(err(
                "broker.max_scope_sets_per_credential must be positive (e.g. 64)",
            ));
        }
        if b.max_exchanged_tokens_per_credential == 0 {
            return Err(err(
                "broker.max_exchanged_tokens_per_credential must be positive (e.g. 1024)",
            ));
        }
        if !(0.0..0.5).contains(&b.refresh_fraction) {
            return Err(err(
                "broker.refresh_fraction must be between 0 and 0.5 (e.g. 0.1)",
            ));
        }
        Ok(())
    }

    /// Each credential: valid, unique ids, a known provider, secret references resolved,
    /// settings its plugin accepts.
    fn resolve_credentials(
        &self,
        registry: &Registry,
    ) -> Result<Vec<ResolvedCredential>, ConfigError> {
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

    /// One identity names one caller: with two, which one's tenants and roles apply would
    /// depend on the order of the file.
    fn check_unique_identities(&self) -> Result<(), ConfigError> {
        let mut identities: std::collections::HashMap<String, &str> = Default::default();
        for (i, c) in self.callers.iter().enumerate() {
            let identity = c
                .api_key_sha256
                .as_deref()
                .map(str::to_ascii_lowercase)
                .or_else(|| c.spiffe_id.clone());
            let Some(id) = identity else { continue };
            if let Some(first) = identities.insert(id, &c.name) {
                let field = if c.api_key_sha256.is_some() {
                    "api_key_sha256"
                } else {
                    "spiffe_id"
                };
                return Err(err(format!(
                    "callers[{i}] ({}): the same {field} as caller `{first}`; each key or SPIFFE id must name one caller",
                    c.name
                )));
            }
        }
        Ok(())
    }

    fn validate_callers(&self) -> Result<(), ConfigError> {
        self.check_unique_identities()?;
        let mut names = HashSet::new();
        let trusted_proxy = self.callers.iter().any(|c| c.trusted_proxy);
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
            if c.trusted_proxy && !c.roles.contains(&Role::Token) {
                return Err(err(format!(
                    "{at}.trusted_proxy: a trusted proxy asks for tokens on its workloads' behalf; give it the `token` role"
                )));
            }
            // A workload reached only through a trusted proxy never connects itself, so
            // its SPIFFE id needs no mTLS on authgate's own port.
            if c.spiffe_id.is_some()
                && !trusted_proxy
                && self
                    .server
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_ca_file.as_ref())
                    .is_none()
            {
                return Err(err(format!(
                    "{at}.spiffe_id: SPIFFE callers need mTLS; set server.tls.cert_file, key_file and client_ca_file (or, for workloads whose Envoy terminates their mTLS, mark that Envoy's caller trusted_proxy = true)"
                )));
            }
            if c.roles.is_empty() {
                return Err(err(format!(
                    "{at}.roles: give at least one of token, revoke, exchange, events, admin"
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
pub(super) fn resolve_reference(field: &str, s: &str) -> Result<Option<String>, ConfigError> {
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
mod tests {
    use super::*;

    #[test]
    fn inline_secret_is_refused() {
        let c = Config::parse(
            r#"
[[credentials]]
tenant = "acme"
id = "idp"
provider = "oauth2"
[credentials.settings]
token_url = "https://idp.example.com/token"
client_id = "x"
client_secret = "canary-inline"
"#,
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("credentials[0].settings.client_secret"), "{e}");
        assert!(!e.0.contains("canary-inline"));
    }

    #[test]
    // `${env:NAME}` is resolved from the process environment, so the test must set it;
    // the name is used by this test only.
    #[allow(clippy::disallowed_methods)]
    fn env_reference_resolves_and_missing_one_is_named() {
        std::env::set_var("AUTHGATE_TEST_SECRET_1", "s3cret");
        let ok = resolve_reference("f", "${env:AUTHGATE_TEST_SECRET_1}").unwrap();
        assert_eq!(ok.as_deref(), Some("s3cret"));
        let e = resolve_reference("f", "${env:AUTHGATE_TEST_MISSING_9}").unwrap_err();
        assert!(e.0.contains("AUTHGATE_TEST_MISSING_9"));
        assert!(resolve_reference("f", "${vault:x}").is_err());
        assert_eq!(resolve_reference("f", "plain").unwrap(), None);
    }

    #[test]
    fn unknown_provider_lists_known_ones() {
        let c =
            Config::parse("[[credentials]]\ntenant=\"a\"\nid=\"b\"\nprovider=\"nope\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("oauth2"), "{e}");
    }

    #[test]
    fn refresh_lease_must_outlast_a_fetch() {
        let c = Config::parse("[broker]\nfetch_timeout_seconds = 30\nrefresh_lease_seconds = 30\n")
            .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("broker.refresh_lease_seconds"), "{e}");
        let c = Config::parse("[store]\nurl = \"postgres://authgate@db/authgate\"\n[broker]\nfetch_timeout_seconds = 3\nrefresh_lease_seconds = 4\n")
            .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn trusted_proxies_need_the_token_role_and_admit_workloads_without_mtls() {
        let key = "ab".repeat(32);
        let proxy = |roles: &str| {
            format!("[[callers]]\nname = \"envoy\"\napi_key_sha256 = \"{key}\"\ntenants = [\"acme\"]\nroles = [{roles}]\ntrusted_proxy = true\n\n")
        };
        let workload = "[[callers]]\nname = \"billing\"\nspiffe_id = \"spiffe://x/billing\"\ntenants = [\"acme\"]\nroles = [\"token\"]\n";
        let ok = format!("{}{workload}", proxy("\"token\""));
        Config::parse(&ok).unwrap().validate().unwrap();
        let e = Config::parse(&proxy("\"events\""))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.0.contains("callers[0].trusted_proxy"), "{e}");
        // Without a trusted proxy, a SPIFFE caller still needs mTLS on the gRPC port.
        let e = Config::parse(workload).unwrap().validate().unwrap_err();
        assert!(e.0.contains("trusted_proxy"), "{e}");
    }

    #[test]
    fn one_identity_names_one_caller() {
        let key = "ab".repeat(32);
        let two_keys = format!(
            "[[callers]]\nname = \"a\"\napi_key_sha256 = \"{key}\"\ntenants = [\"*\"]\nroles = [\"token\"]\n\n[[callers]]\nname = \"b\"\napi_key_sha256 = \"{}\"\ntenants = [\"acme\"]\nroles = [\"admin\"]\n",
            key.to_uppercase()
        );
        let e = Config::parse(&two_keys).unwrap().validate().unwrap_err();
        assert!(
            e.0.contains("callers[1] (b)") && e.0.contains("caller `a`"),
            "{e}"
        );
        let two_ids = "[[callers]]\nname = \"a\"\nspiffe_id = \"spiffe://x/y\"\ntenants = [\"*\"]\nroles = [\"token\"]\n\n[[callers]]\nname = \"b\"\nspiffe_id = \"spiffe://x/y\"\ntenants = [\"*\"]\nroles = [\"token\"]\n";
        let e = Config::parse(two_ids).unwrap().validate().unwrap_err();
        assert!(e.0.contains("spiffe_id"), "{e}");
    }

    #[test]
    fn the_scope_set_bound_must_be_positive() {
        let c = Config::parse("[broker]\nmax_scope_sets_per_credential = 0\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.0.contains("broker.max_scope_sets_per_credential"), "{e}");
    }
}
