//! Which token a Check is for: the route named by the Envoy route's `context_extensions`
//! (`tenant`, `credential_id`, `scopes`, `header`, `format`), or else the `[[mesh.routes]]`
//! entry for the request's host with the longest matching path prefix. Only proxy
//! configuration decides: nothing here reads a header of the downstream request, which
//! its client controls.

use crate::api::token_service::parse_scopes;
use crate::config::mesh::{check_format, check_header, DEFAULT_FORMAT, DEFAULT_HEADER};
use crate::config::{validate_id, MeshConfig, MeshRouteConfig};
use authgate_plugin_sdk::ScopeSet;
use std::collections::HashMap;

/// A resolved route: whose token, for which scopes, written where and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub tenant: String,
    pub credential_id: String,
    pub scopes: ScopeSet,
    pub header: String,
    pub format: String,
    pub remove_headers: Vec<String>,
}

/// Where a request names its token: the Envoy route's `context_extensions` (Check), or the
/// `x-authgate-*` headers a forward-auth proxy sets (see `forward_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    ContextExtensions,
    ProxyHeaders,
}

impl Origin {
    /// Where the operator sets `field`: the wording of every route error.
    pub fn describe(self, field: &str) -> String {
        match self {
            Origin::ContextExtensions => format!("context_extensions.{field} of the Envoy route"),
            Origin::ProxyHeaders => format!("header {} set by the proxy", proxy_header(field)),
        }
    }

    fn how_to_name(self) -> &'static str {
        match self {
            Origin::ContextExtensions => {
                "set the context_extensions `tenant` and `credential_id` on the Envoy route"
            }
            Origin::ProxyHeaders => {
                "set x-authgate-tenant and x-authgate-credential in the proxy's forward-auth request"
            }
        }
    }
}

/// The forward-auth header that carries a route field.
pub fn proxy_header(field: &str) -> &'static str {
    match field {
        "tenant" => "x-authgate-tenant",
        "credential_id" => "x-authgate-credential",
        "scopes" => "x-authgate-scopes",
        "header" => "x-authgate-header",
        "format" => "x-authgate-format",
        _ => "x-authgate-?",
    }
}

/// The route fields, in the order they are read.
pub const ROUTE_FIELDS: [&str; 5] = ["tenant", "credential_id", "scopes", "header", "format"];

/// Why no route could be resolved; each says what to configure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no token route for host {host:?} and path {path:?}: {}, or add a [[mesh.routes]] entry with this host and a path_prefix of this path to authgate's config", origin.how_to_name())]
    NoRoute {
        origin: Origin,
        host: String,
        path: String,
    },
    #[error("{}: {message}", origin.describe(field))]
    BadExtension {
        origin: Origin,
        field: &'static str,
        message: String,
    },
}

/// A config route under its host.
#[derive(Debug)]
struct Prefixed {
    path_prefix: String,
    route: Route,
}

/// `[[mesh.routes]]` by lowercase host, each host's routes longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_host: HashMap<String, Vec<Prefixed>>,
}

impl RouteTable {
    /// Builds the table from validated config; an error names the entry.
    pub fn new(config: &MeshConfig) -> Result<Self, String> {
        let mut by_host: HashMap<String, Vec<Prefixed>> = HashMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let route = config_route(r).map_err(|m| format!("mesh.routes[{i}].scopes: {m}"))?;
            by_host
                .entry(r.host.to_ascii_lowercase())
                .or_default()
                .push(Prefixed {
                    path_prefix: r.path_prefix.clone(),
                    route,
                });
        }
        for routes in by_host.values_mut() {
            routes.sort_by_key(|p| std::cmp::Reverse(p.path_prefix.len()));
        }
        Ok(Self { by_host })
    }

    /// The route of a Check: its extensions when they name a token, else the config.
    pub fn resolve(
        &self,
        extensions: &HashMap<String, String>,
        host: &str,
        path: &str,
    ) -> Result<Route, RouteError> {
        self.resolve_from(Origin::ContextExtensions, extensions, host, path)
    }

    /// The route named by `fields` (keyed by [`ROUTE_FIELDS`]) when they name a token,
    /// else the config's for the host and path.
    pub fn resolve_from(
        &self,
        origin: Origin,
        fields: &HashMap<String, String>,
        host: &str,
        path: &str,
    ) -> Result<Route, RouteError> {
        if names_a_token(fields) {
            return extension_route(origin, fields);
        }
        // The query and fragment are not part of what a prefix routes on.
        let path_only = path.split(['?', '#']).next().unwrap_or("");
        let host = host.to_ascii_lowercase();
        let found = self.longest(&host, path_only).or_else(|| {
            // A route host without a port matches that host on any port.
            let (bare, port) = host.rsplit_once(':')?;
            let is_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
            is_port.then(|| self.longest(bare, path_only)).flatten()
        });
        found.cloned().ok_or(RouteError::NoRoute {
            origin,
            host,
            path: path_only.to_owned(),
        })
    }

    fn longest(&self, host: &str, path: &str) -> Option<&Route> {
        self.by_host
            .get(host)?
            .iter()
            .find(|p| path.starts_with(&p.path_prefix))
            .map(|p| &p.route)
    }
}

/// Whether the fields name the token themselves (then the config routes are not used).
pub fn names_a_token(fields: &HashMap<String, String>) -> bool {
    fields.contains_key("tenant") || fields.contains_key("credential_id")
}

fn config_route(r: &MeshRouteConfig) -> Result<Route, String> {
    let scopes = parse_scopes(&r.scopes).map_err(|s| s.message().to_owned())?;
    Ok(Route {
        tenant: r.tenant.clone(),
        credential_id: r.credential_id.clone(),
        scopes,
        header: r.header.clone().unwrap_or_else(|| DEFAULT_HEADER.into()),
        format: r.format.clone().unwrap_or_else(|| DEFAULT_FORMAT.into()),
        remove_headers: r.remove_headers.clone(),
    })
}

/// A route from `context_extensions`, checked like a config route (the proxy's config is
/// not validated by authgate at start, so every Check checks it).
fn extension_route(origin: Origin, ext: &HashMap<String, String>) -> Result<Route, RouteError> {
    let bad = |field: &'static str, message: String| RouteError::BadExtension {
        origin,
        field,
        message,
    };
    let id = |field: &'static str| -> Result<String, RouteError> {
        let v = ext.get(field).map(String::as_str).unwrap_or("");
        validate_id(field, v).map_err(|m| bad(field, m))?;
        Ok(v.to_owned())
    };
    let tenant = id("tenant")?;
    let credential_id = id("credential_id")?;
    let listed: Vec<String> = ext
        .get("scopes")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let scopes = parse_scopes(&listed).map_err(|s| bad("scopes", s.message().to_owned()))?;
    let header = ext
        .get("header")
        .cloned()
        .unwrap_or_else(|| DEFAULT_HEADER.into());
    check_header(&header).map_err(|m| bad("header", m))?;
    let format = ext
        .get("format")
        .cloned()
        .unwrap_or_else(|| DEFAULT_FORMAT.into());
    check_format(&format).map_err(|m| bad("format", m))?;
    Ok(Route {
        tenant,
        credential_id,
        scopes,
        header,
        format,
        remove_headers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table() -> RouteTable {
        let c = Config::parse(
            r#"
[[mesh.routes]]
host = "api.example.com"
tenant = "acme"
credential_id = "root"

[[mesh.routes]]
host = "API.example.com"
path_prefix = "/v2/"
tenant = "acme"
credential_id = "v2"
scopes = ["read", "write"]
header = "x-api-key"
format = "{token}"
remove_headers = ["x-client-key"]

[[mesh.routes]]
host = "other.example.com:8443"
path_prefix = "/x"
tenant = "beta"
credential_id = "x"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        RouteTable::new(&c.mesh).unwrap()
    }

    fn no_ext() -> HashMap<String, String> {
        HashMap::new()
    }

    #[test]
    fn longest_prefix_on_the_host_wins() {
        let t = table();
        let r = t
            .resolve(&no_ext(), "api.example.com", "/v2/items?q=1")
            .unwrap();
        assert_eq!(r.credential_id, "v2");
        assert_eq!(r.header, "x-api-key");
        assert_eq!(r.format, "{token}");
        assert_eq!(r.remove_headers, vec!["x-client-key".to_owned()]);
        assert_eq!(r.scopes, ScopeSet::new(["read", "write"]));
        let r = t
            .resolve(&no_ext(), "Api.Example.com:443", "/v1/x")
            .unwrap();
        assert_eq!(r.credential_id, "root");
        assert_eq!(r.header, "authorization");
        assert_eq!(r.format, "Bearer {token}");
    }

    #[test]
    fn a_host_with_a_port_matches_only_that_port() {
        let t = table();
        assert!(t
            .resolve(&no_ext(), "other.example.com:8443", "/xy")
            .is_ok());
        assert!(t.resolve(&no_ext(), "other.example.com", "/xy").is_err());
        assert!(t
            .resolve(&no_ext(), "other.example.com:8443", "/y")
            .is_err());
    }

    #[test]
    fn no_route_says_what_to_configure() {
        let e = table()
            .resolve(&no_ext(), "unknown.example.com", "/a?secret=1")
            .unwrap_err();
        assert_eq!(
            e,
            RouteError::NoRoute {
                origin: Origin::ContextExtensions,
                host: "unknown.example.com".into(),
                path: "/a".into()
            }
        );
        let m = e.to_string();
        assert!(
            m.contains("[[mesh.routes]]") && m.contains("context_extensions"),
            "{m}"
        );
        assert!(!m.contains("secret"), "the query is not echoed: {m}");
    }

    #[test]
    fn extensions_name_the_token_and_take_precedence() {
        let ext: HashMap<String, String> = [
            ("tenant", "beta"),
            ("credential_id", "svc"),
            ("scopes", " a  b "),
            ("header", "x-token"),
            ("format", "Token {token}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let r = table().resolve(&ext, "api.example.com", "/v2/").unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.credential_id.as_str()),
            ("beta", "svc")
        );
        assert_eq!(r.scopes, ScopeSet::new(["a", "b"]));
        assert_eq!(
            (r.header.as_str(), r.format.as_str()),
            ("x-token", "Token {token}")
        );
    }

    #[test]
    fn bad_extensions_name_the_field() {
        for (k, v, field) in [
            ("credential_id", "", "credential_id"),
            ("format", "Bearer", "format"),
            ("header", "X-Bad", "header"),
            ("scopes", "a\"b", "scopes"),
        ] {
            let mut ext: HashMap<String, String> = [("tenant", "acme"), ("credential_id", "c")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            ext.insert(k.into(), v.into());
            match table().resolve(&ext, "h", "/") {
                Err(RouteError::BadExtension { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{k}={v:?}: {other:?}"),
            }
        }
        let only_tenant: HashMap<String, String> =
            [("tenant".to_owned(), "acme".to_owned())].into();
        let e = table()
            .resolve(&only_tenant, "api.example.com", "/")
            .unwrap_err();
        assert!(e.to_string().contains("credential_id"), "{e}");
    }

    #[test]
    fn proxy_header_errors_name_the_header() {
        let fields: HashMap<String, String> = [("tenant", "acme"), ("credential_id", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let e = table()
            .resolve_from(Origin::ProxyHeaders, &fields, "h", "/")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("header x-authgate-credential"),
            "{e}"
        );
        let e = table()
            .resolve_from(Origin::ProxyHeaders, &HashMap::new(), "h", "/")
            .unwrap_err();
        assert!(e.to_string().contains("x-authgate-tenant"), "{e}");
    }
}
