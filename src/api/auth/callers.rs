//! The caller table: `[[callers]]` config turned into what the auth layer checks, namely
//! each caller's credential (an API-key SHA-256 digest or a SPIFFE id), its tenants, its
//! roles and its rate limit. Swapped whole on reload, so a request sees one consistent
//! table.

use crate::config::{CallerConfig, Role};
use crate::rate_limit::TokenBucket;
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// How a caller proves who it is.
#[derive(Debug, Clone)]
enum Credential {
    ApiKeyDigest([u8; 32]),
    Spiffe(String),
}

#[derive(Debug, Clone)]
pub(super) enum Tenants {
    All,
    Only(HashSet<String>),
}

#[derive(Debug)]
pub(super) struct Caller {
    pub(super) name: Arc<str>,
    credential: Credential,
    /// Shared with the [`super::TenantGrant`] of a request whose tenant is only known to
    /// its handler, so handing it over costs no copy.
    tenants: Arc<Tenants>,
    roles: HashSet<Role>,
    limiter: Option<TokenBucket>,
    /// Speaks for the workloads whose mTLS it terminated (see [`super::TenantGrant`]).
    pub(super) trusted_proxy: bool,
    allowed_scopes: Option<AllowedScopes>,
}

/// The scopes a caller may ask for, handed to the handler in the request's extensions
/// (only the handler knows the requested scopes).
#[derive(Debug, Clone)]
pub struct AllowedScopes(Arc<std::collections::BTreeSet<String>>);

impl AllowedScopes {
    /// The first scope outside the caller's `allowed_scopes`.
    pub fn refused<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        scopes.into_iter().find(|s| !self.0.contains(*s))
    }
}

impl Caller {
    fn new(c: &CallerConfig) -> Self {
        let credential = match (&c.api_key_sha256, &c.spiffe_id) {
            // Config validation rejects a malformed digest; no key hashes to all zeros.
            (Some(hex), _) => Credential::ApiKeyDigest(decode_hex32(hex).unwrap_or([0; 32])),
            (None, Some(id)) => Credential::Spiffe(id.clone()),
            (None, None) => Credential::Spiffe(String::new()),
        };
        let tenants = Arc::new(if c.tenants.iter().any(|t| t == "*") {
            Tenants::All
        } else {
            Tenants::Only(c.tenants.iter().cloned().collect())
        });
        let limiter = c.rate_limit_per_second.map(|rate| {
            let burst = c.rate_limit_burst.map_or(rate.max(1.0), f64::from);
            TokenBucket::new(rate, burst.max(1.0))
        });
        Caller {
            name: c.name.as_str().into(),
            credential,
            tenants,
            roles: c.roles.iter().copied().collect(),
            limiter,
            trusted_proxy: c.trusted_proxy,
            allowed_scopes: c
                .allowed_scopes
                .as_ref()
                .map(|v| AllowedScopes(Arc::new(v.iter().cloned().collect()))),
        }
    }

    pub(super) fn allowed_scopes(&self) -> Option<&AllowedScopes> {
        self.allowed_scopes.as_ref()
    }

    pub(super) fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role) || (role == Role::Revoke && self.roles.contains(&Role::Admin))
    }

    pub(super) fn allows_tenant(&self, tenant: &str) -> bool {
        self.tenants.allows(tenant)
    }

    pub(super) fn tenants(&self) -> Arc<Tenants> {
        self.tenants.clone()
    }

    /// Takes one request from the caller's rate limit, or says how long to wait.
    pub(super) fn take_token(&self) -> Result<(), std::time::Duration> {
        self.limiter.as_ref().map_or(Ok(()), TokenBucket::take)
    }

    /// How the caller authenticated, for the caller name recorded with each event.
    pub(super) fn how(&self) -> &'static str {
        match self.credential {
            Credential::ApiKeyDigest(_) => "api key",
            Credential::Spiffe(_) => "mTLS",
        }
    }
}

impl Tenants {
    pub(super) fn allows(&self, tenant: &str) -> bool {
        match self {
            Tenants::All => true,
            Tenants::Only(set) => set.contains(tenant),
        }
    }
}

/// The callers in force; swapped whole on reload.
#[derive(Debug, Default)]
pub struct CallerTable {
    callers: Vec<Caller>,
}

impl CallerTable {
    /// Builds the table from validated config.
    pub fn new(configs: &[CallerConfig]) -> Self {
        Self {
            callers: configs.iter().map(Caller::new).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller with this API-key digest. Every configured key is compared, in constant
    /// time, whatever matches, so the time taken tells nothing about which keys exist.
    pub(super) fn by_api_key(&self, digest: &[u8; 32]) -> Option<&Caller> {
        let mut found = None;
        for c in &self.callers {
            if let Credential::ApiKeyDigest(d) = &c.credential {
                if bool::from(d.ct_eq(digest)) && found.is_none() {
                    found = Some(c);
                }
            }
        }
        found
    }

    pub(super) fn by_spiffe_id(&self, id: &str) -> Option<&Caller> {
        self.callers
            .iter()
            .find(|c| matches!(&c.credential, Credential::Spiffe(s) if s == id))
    }
}

/// The table every connection reads, replaced atomically: a reload never drops open
/// connections, and a request in flight keeps the table it started with.
#[derive(Clone)]
pub(super) struct LiveCallers(Arc<ArcSwap<CallerTable>>);

impl LiveCallers {
    pub(super) fn new(configs: &[CallerConfig]) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(CallerTable::new(configs))))
    }

    pub(super) fn reload(&self, configs: &[CallerConfig]) {
        self.0.store(Arc::new(CallerTable::new(configs)));
    }

    pub(super) fn current(&self) -> Arc<CallerTable> {
        self.0.load_full()
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
