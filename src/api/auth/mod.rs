//! Caller authentication and authorization: the one place that decides who may call what.
//!
//! A tower layer in front of every authgate service. It identifies the caller (the single
//! SPIFFE URI SAN of its mTLS client certificate, or an API key in `authorization: Bearer`,
//! compared by SHA-256 digest in constant time), checks the method's role, reads the tenant
//! from the request message itself (field 1 of every authgate request; for Envoy's `Check`,
//! from the route its handler resolves, checked through a [`TenantGrant`]), checks it, applies
//! the caller's rate limit, and runs the RPC on behalf of its [`CallerName`] (the task
//! context every event of the RPC is recorded under) inside a `rpc` tracing span.
//! With no `[[callers]]` configured it admits loopback peers only.
//!
//! Unknown tenants and forbidden tenants get the same answer, so tenants cannot be probed.
//! Health and reflection stay open: they reveal no tenant data.
//!
//! Where each part lives:
//! * [`admission`]: the one decision on a presented identity (dev mode, identity, role, rate
//!   limit), shared by the gRPC layer, the HTTP forward-auth endpoint and trusted proxies;
//! * [`callers`]: the caller table built from `[[callers]]` (API-key digests, SPIFFE ids,
//!   tenants, roles, rate limits) and its swap on reload;
//! * [`identity`]: what a request presents (bearer key, client certificate, loopback peer);
//! * [`rate_limit`]: the per-caller token bucket;
//! * [`tenant_field`]: the tenant read from the raw request bytes;
//! * [`grant`]: the tenant check handed to a handler whose tenant comes from a resolved
//!   route (Envoy's ext_authz `Check`, forward-auth), not from the message, and a trusted
//!   proxy's workload;
//! * [`layer`]: the tower layer, the order of the checks, and the method → role table.

pub mod admission;
pub mod callers;
pub mod grant;
pub mod identity;
pub mod layer;
pub mod tenant_field;

pub use admission::{Refusal, PROXY_KEY_HEADER};
pub use callers::{AllowedScopes, CallerTable};
pub use grant::TenantGrant;
pub use identity::{spiffe_id, CertificateError};
pub use layer::{AuthLayer, AuthService, Authorizer};
pub use tenant_field::{tenant_of_frame, FrameError};

use std::sync::Arc;

/// Who is calling and what they were allowed, as established by the authentication layer:
/// the caller every event of the RPC names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerName(pub Arc<str>);

/// The configured name of the identified caller (`[[callers]] name`), in the request
/// extensions: what per-caller bounds (WatchEvents streams) count by, whatever its tenant.
/// Absent in dev mode (no callers configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerId(pub Arc<str>);
