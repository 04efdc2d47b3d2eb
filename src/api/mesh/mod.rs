//! Service-mesh token injection: Envoy's external authorization (`ext_authz`) over gRPC.
//! A service sends its request through Envoy with no credentials; Envoy asks authgate
//! (`envoy.service.auth.v3.Authorization/Check`), and authgate answers with the token in a
//! header Envoy sets on the request, or with a denial the client can act on.
//!
//! Who may ask is decided by the one auth layer ([`crate::api::auth`]): it identifies the
//! proxy as an authgate caller and checks the `token` role; the tenant is the resolved
//! route's, checked through the layer's [`crate::api::auth::TenantGrant`].
//!
//! * [`routes`]: which token a Check is for (`context_extensions` or `[[mesh.routes]]`);
//! * [`reply`]: the allowed and denied answers, header formats, dynamic metadata;
//! * [`check`]: the service itself and the deadline it honours.

pub mod check;
pub mod reply;
pub mod routes;

pub use check::MeshService;
pub use routes::{Route, RouteError, RouteTable};
