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

use super::callers::Tenants;
use super::CallerName;
use crate::config::Role;
use std::sync::Arc;

/// A caller admitted for a role whose tenant is still to be checked.
#[derive(Debug, Clone)]
pub struct TenantGrant {
    name: Arc<str>,
    how: &'static str,
    role: Role,
    /// `None`: dev mode (no callers configured, loopback peers only), every tenant.
    tenants: Option<Arc<Tenants>>,
}

impl TenantGrant {
    pub(super) fn new(
        name: Arc<str>,
        how: &'static str,
        role: Role,
        tenants: Arc<Tenants>,
    ) -> Self {
        Self {
            name,
            how,
            role,
            tenants: Some(tenants),
        }
    }

    pub(super) fn local(role: Role) -> Self {
        Self {
            name: "local".into(),
            how: "loopback",
            role,
            tenants: None,
        }
    }

    /// The caller name the work for `tenant` runs under (the same wording the layer uses
    /// for tenants read from the message), or `None` when the caller may not use the
    /// tenant. Unknown and forbidden tenants are not told apart.
    pub fn admit(&self, tenant: &str) -> Option<CallerName> {
        match &self.tenants {
            None => Some(CallerName("local".into())),
            Some(t) if t.allows(tenant) => Some(CallerName(
                format!(
                    "{} ({}; allowed role {:?} on tenant {tenant})",
                    self.name, self.how, self.role
                )
                .into(),
            )),
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
    use std::collections::HashSet;

    #[test]
    fn admits_only_the_callers_tenants() {
        let only = Tenants::Only(HashSet::from(["acme".to_owned()]));
        let g = TenantGrant::new("envoy".into(), "api key", Role::Token, Arc::new(only));
        let name = g.admit("acme").unwrap();
        assert!(
            name.0.contains("envoy") && name.0.contains("tenant acme"),
            "{name:?}"
        );
        assert_eq!(g.admit("other"), None);
        let all = TenantGrant::new("envoy".into(), "mTLS", Role::Token, Arc::new(Tenants::All));
        assert!(all.admit("any").is_some());
        assert_eq!(
            TenantGrant::local(Role::Token)
                .admit("x")
                .unwrap()
                .0
                .as_ref(),
            "local"
        );
    }
}
