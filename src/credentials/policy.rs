//! What the gateway itself enforces for a credential, whatever its provider:
//! `settings.gateway` (in the config file's `[credentials.settings.gateway]` or in
//! PutCredential's settings). Plugins never see this table.
//!
//! - `allowed_scopes`: the only scopes a GetToken may ask for; any other is
//!   PERMISSION_DENIED before a cache key is made or the provider is called.
//! - `max_token_requests_per_minute`: providers rate-limit their token endpoints, and a
//!   burst of new scope sets must not get the tenant's client banned there. Beyond the
//!   limit a fetch is not sent: a caller with no valid token gets RESOURCE_EXHAUSTED with
//!   the time to retry; a valid cached token keeps being served.

use crate::rate_limit::TokenBucket;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// The key under a credential's settings that holds its gateway policy.
pub const POLICY_KEY: &str = "gateway";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySettings {
    allowed_scopes: Option<Vec<String>>,
    max_token_requests_per_minute: Option<u32>,
}

/// A credential's gateway policy, parsed.
#[derive(Debug, Default)]
pub struct CredentialPolicy {
    allowed_scopes: Option<BTreeSet<String>>,
    upstream: Option<(u32, TokenBucket)>,
}

impl CredentialPolicy {
    /// Takes `gateway` out of `settings` (so the plugin gets only its own fields) and
    /// parses it. The error names the field.
    pub fn split(settings: &mut serde_json::Value) -> Result<Self, String> {
        let Some(raw) = settings.as_object_mut().and_then(|m| m.remove(POLICY_KEY)) else {
            return Ok(Self::default());
        };
        let p: PolicySettings =
            serde_json::from_value(raw).map_err(|e| format!("settings.{POLICY_KEY}: {e}"))?;
        if p.max_token_requests_per_minute == Some(0) {
            return Err(format!(
                "settings.{POLICY_KEY}.max_token_requests_per_minute must be at least 1 (leave it out for no limit)"
            ));
        }
        if let Some(s) = p
            .allowed_scopes
            .iter()
            .flatten()
            .find(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(format!(
                "settings.{POLICY_KEY}.allowed_scopes: {s:?} is not a scope (one scope per entry, no spaces)"
            ));
        }
        Ok(Self {
            allowed_scopes: p.allowed_scopes.map(|v| v.into_iter().collect()),
            upstream: p.max_token_requests_per_minute.map(|n| {
                let n_f = f64::from(n);
                (n, TokenBucket::new(n_f / 60.0, n_f))
            }),
        })
    }

    /// The first requested scope the policy does not allow.
    pub fn refused_scope<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let allowed = self.allowed_scopes.as_ref()?;
        scopes.into_iter().find(|s| !allowed.contains(*s))
    }

    /// Takes one upstream token request from the budget, or says when one is available.
    pub fn take_upstream_request(&self) -> Result<(), Duration> {
        match &self.upstream {
            Some((_, bucket)) => bucket.take(),
            None => Ok(()),
        }
    }

    pub fn upstream_limit_per_minute(&self) -> Option<u32> {
        self.upstream.as_ref().map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_policy_is_taken_out_of_the_plugin_settings() {
        let mut s = json!({"token_url": "https://x", "gateway": {"allowed_scopes": ["read"]}});
        let p = CredentialPolicy::split(&mut s).unwrap();
        assert_eq!(s, json!({"token_url": "https://x"}));
        assert_eq!(p.refused_scope(["read"]), None);
        assert_eq!(p.refused_scope(["read", "admin"]), Some("admin"));
        let open = CredentialPolicy::split(&mut json!({})).unwrap();
        assert_eq!(open.refused_scope(["anything"]), None);
    }

    #[test]
    fn bad_policies_name_the_field() {
        for bad in [
            json!({"gateway": {"allowed_scope": ["x"]}}),
            json!({"gateway": {"max_token_requests_per_minute": 0}}),
            json!({"gateway": {"allowed_scopes": ["a b"]}}),
        ] {
            let e = CredentialPolicy::split(&mut bad.clone()).unwrap_err();
            assert!(e.contains("settings.gateway"), "{e}");
        }
    }

    #[tokio::test]
    async fn the_upstream_budget_refills_per_minute() {
        tokio::time::pause();
        let p =
            CredentialPolicy::split(&mut json!({"gateway": {"max_token_requests_per_minute": 2}}))
                .unwrap();
        assert!(p.take_upstream_request().is_ok());
        assert!(p.take_upstream_request().is_ok());
        let wait = p.take_upstream_request().unwrap_err();
        assert!(wait <= Duration::from_secs(30), "{wait:?}");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(p.take_upstream_request().is_ok());
    }
}
