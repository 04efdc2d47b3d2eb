//! The tenant half of the auth decision for methods whose tenant is not in the request
//! message but is resolved by the handler (Envoy's ext_authz `Check`: the tenant comes from
//! the resolved route, never from headers the downstream client controls).
//!
//! The layer still decides everything it can see (identity, role, rate limit) and hands the
//! handler a [`TenantGrant`] in the request extensions: the caller's tenant permission,
//! taken from the same caller table. The handler resolves the tenant and must ask
//! [`TenantGrant::admit`] before any domain call; without a grant (the layer is not in
//! front) it must refuse. So the rule for who may use which tenant stays written once, here
//! and in [`super::callers`].
//!
//! A caller marked `trusted_proxy` (an Envoy that terminates its workloads' mTLS) speaks
//! for the workload it authenticated: [`TenantGrant::for_workload`] looks the workload's
//! SPIFFE id up in the same caller table and runs the same admission
//! ([`super::admission`]) on it, so the workload's roles, rate limit and tenants decide.

use super::admission::{authorize, Refusal};
use super::callers::{Caller, CallerTable, Tenants};
use super::identity::Presented;
use super::CallerName;
use crate::config::Role;
use std::sync::Arc;

/// A caller admitted for a role whose tenant is still to be checked.
#[derive(Debug, Clone)]
pub struct TenantGrant {
    name: Arc<str>,
    how: &'static str,
    /// The trusted proxy that authenticated this workload, when it was one.
    via: Option<Arc<str>>,
    role: Role,
    /// `None`: dev mode (no callers configured, loopback peers only), every tenant.
    tenants: Option<Arc<Tenants>>,
    /// For a trusted proxy: the caller table its workloads are looked up in.
    workloads: Option<Arc<CallerTable>>,
}

impl TenantGrant {
    pub(super) fn new(caller: &Caller, role: Role, table: &Arc<CallerTable>) -> Self {
        Self {
            name: caller.name.clone(),
            how: caller.how(),
            via: None,
            role,
            tenants: Some(caller.tenants()),
            workloads: caller.trusted_proxy.then(|| table.clone()),
        }
    }

    pub(super) fn local(role: Role) -> Self {
        Self {
            name: "local".into(),
            how: "loopback",
            via: None,
            role,
            tenants: None,
            workloads: None,
        }
    }

    /// Whether this caller is a trusted proxy, whose requests are authorized as the
    /// workload it authenticated ([`Self::for_workload`]).
    pub fn is_trusted_proxy(&self) -> bool {
        self.workloads.is_some()
    }

    /// The grant of the workload a trusted proxy authenticated by mTLS: `principal` (its
    /// SPIFFE id, from the proxy) must be a configured caller's `spiffe_id`, and that
    /// caller passes the same checks as a caller connecting itself (role, rate limit; the
    /// tenant with [`Self::admit`]). The proxy's own tenants do not apply. A grant that is
    /// not a trusted proxy's is returned as it is: such a proxy's principal is ignored.
    pub fn for_workload(&self, principal: &str) -> Result<TenantGrant, Refusal> {
        let Some(table) = &self.workloads else {
            return Ok(self.clone());
        };
        if principal.is_empty() {
            return Err(Refusal::Unauthenticated(format!(
                "trusted proxy `{}` sent no workload identity (attributes.source.principal): require client certificates on its listener, or give its routes to a caller that is not a trusted proxy",
                self.name
            )));
        }
        let presented = Presented::Spiffe(principal.to_owned());
        let workload = authorize(table, presented, false, self.role, "")?
            .ok_or_else(|| Refusal::Unauthenticated("no callers are configured".into()))?;
        Ok(Self {
            name: workload.name.clone(),
            how: "mTLS",
            via: Some(self.name.clone()),
            role: self.role,
            tenants: Some(workload.tenants()),
            workloads: None,
        })
    }

    /// The caller name the work for `tenant` runs under (the same wording the layer uses
    /// for tenants read from the message), or `None` when the caller may not use the
    /// tenant. Unknown and forbidden tenants are not told apart.
    pub fn admit(&self, tenant: &str) -> Option<CallerName> {
        match &self.tenants {
            None => Some(CallerName("local".into())),
            Some(t) if t.allows(tenant) => {
                let via = match &self.via {
                    Some(proxy) => format!(" terminated by trusted proxy {proxy}"),
                    None => String::new(),
                };
                Some(CallerName(
                    format!(
                        "{} ({}{via}; allowed role {:?} on tenant {tenant})",
                        self.name, self.how, self.role
                    )
                    .into(),
                ))
            }
            Some(_) => None,
        }
    }

    /// The caller's configured name, for a denial that tells the operator whom to change.
    pub fn caller(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(text: &str) -> Arc<CallerTable> {
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        Arc::new(CallerTable::new(&c.callers))
    }

    const CALLERS: &str = r#"
[[callers]]
name = "envoy"
api_key_sha256 = "abababababababababababababababababababababababababababababababab"
tenants = ["acme"]
roles = ["token"]
trusted_proxy = true

[[callers]]
name = "plain-envoy"
api_key_sha256 = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"
tenants = ["acme"]
roles = ["token"]

[[callers]]
name = "billing"
spiffe_id = "spiffe://example.org/billing"
tenants = ["beta"]
roles = ["token"]

[[callers]]
name = "auditor"
spiffe_id = "spiffe://example.org/auditor"
tenants = ["*"]
roles = ["events"]
rate_limit_per_second = 1.0
"#;

    fn grant_of(t: &Arc<CallerTable>, digest_byte: &str) -> TenantGrant {
        let d: [u8; 32] = std::array::from_fn(|_| u8::from_str_radix(digest_byte, 16).unwrap());
        TenantGrant::new(t.by_api_key(&d).unwrap(), Role::Token, t)
    }

    #[test]
    fn admits_only_the_callers_tenants() {
        let t = table(CALLERS);
        let g = grant_of(&t, "cd");
        let name = g.admit("acme").unwrap();
        assert!(
            name.0.contains("plain-envoy") && name.0.contains("tenant acme"),
            "{name:?}"
        );
        assert_eq!(g.admit("other"), None);
        assert_eq!(
            TenantGrant::local(Role::Token)
                .admit("x")
                .unwrap()
                .0
                .as_ref(),
            "local"
        );
    }

    #[test]
    fn a_trusted_proxy_is_authorized_as_its_workload() {
        let t = table(CALLERS);
        let proxy = grant_of(&t, "ab");
        assert!(proxy.is_trusted_proxy());
        let w = proxy.for_workload("spiffe://example.org/billing").unwrap();
        assert!(!w.is_trusted_proxy(), "no chains of proxies");
        // The workload's tenants, not the proxy's.
        assert_eq!(w.admit("acme"), None);
        let name = w.admit("beta").unwrap();
        assert!(
            name.0
                .starts_with("billing (mTLS terminated by trusted proxy envoy;")
                && name.0.contains("tenant beta"),
            "{name:?}"
        );
        match proxy.for_workload("spiffe://example.org/ghost") {
            Err(Refusal::UnknownSpiffeId(m)) => {
                assert!(m.contains("not a configured caller"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match proxy.for_workload("") {
            Err(Refusal::Unauthenticated(m)) => assert!(m.contains("source.principal"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The workload needs the token role itself.
        match proxy.for_workload("spiffe://example.org/auditor") {
            Err(Refusal::Forbidden(m)) => assert!(m.contains("auditor"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_proxy_that_is_not_trusted_keeps_its_own_identity() {
        let t = table(CALLERS);
        let plain = grant_of(&t, "cd");
        assert!(!plain.is_trusted_proxy());
        let same = plain.for_workload("spiffe://example.org/billing").unwrap();
        assert_eq!(same.caller(), "plain-envoy");
        assert!(same.admit("acme").is_some());
        assert_eq!(same.admit("beta"), None);
    }
}
