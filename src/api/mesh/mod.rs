//! Service-mesh token injection. A service sends its request through a proxy with no
//! credentials; the proxy asks authgate, and authgate answers with the token in a header
//! the proxy sets on the request, or with a denial the client can act on. Two doors:
//! Envoy's external authorization (`ext_authz`) over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), and forward-auth over HTTP for nginx,
//! Traefik and Caddy (`/mesh/forward-auth` on the HTTP port).
//!
//! Who may ask is decided by the one auth layer ([`crate::api::auth`]): it identifies the
//! proxy as an authgate caller and checks the `token` role and rate limit; the tenant is the
//! resolved route's, checked through the layer's [`crate::api::auth::TenantGrant`] (for a
//! trusted proxy, its workload's).
//!
//! * [`routes`]: which token a request is for (`context_extensions` or `x-authgate-*`
//!   headers, else `[[mesh.routes]]`);
//! * [`decide`]: the decision both doors share (route, workload, tenant, token, deadline);
//! * [`reply`]: the allowed and denied answers, header formats, dynamic metadata;
//! * [`check`]: the ext_authz service;
//! * [`forward_auth`]: the HTTP endpoint.

pub mod check;
pub mod decide;
pub mod forward_auth;
pub mod reply;
pub mod routes;

pub use decide::MeshService;
pub use forward_auth::ForwardAuth;
pub use routes::{Route, RouteError, RouteTable};
