//! `[mesh]`: the routes Envoy's ext_authz Check resolves when the proxy cannot name the
//! token itself in per-route `context_extensions`, and the checks shared with those
//! extensions (header name, format), so a route is judged the same wherever it comes from.

use super::{err, validate_id, ConfigError};
use serde::Deserialize;
use std::collections::HashSet;

/// The header a token goes into when a route names none.
pub const DEFAULT_HEADER: &str = "authorization";
/// How the token is written when a route gives no format.
pub const DEFAULT_FORMAT: &str = "Bearer {token}";
/// The placeholder a format must contain exactly once.
pub const TOKEN_PLACEHOLDER: &str = "{token}";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(default)]
    pub routes: Vec<MeshRouteConfig>,
}

/// One `[[mesh.routes]]` entry: requests to `host` whose path starts with `path_prefix`
/// get a token of `credential_id` (of `tenant`) for `scopes` in `header`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRouteConfig {
    /// The request's host (`:authority`), compared without case; a route host without a
    /// port matches the host on any port.
    pub host: String,
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
    pub tenant: String,
    pub credential_id: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub header: Option<String>,
    pub format: Option<String>,
    /// Request headers stripped before the request goes upstream (e.g. a client's own
    /// `x-api-key` that must not reach the third party).
    #[serde(default)]
    pub remove_headers: Vec<String>,
}

fn root_prefix() -> String {
    "/".into()
}

impl MeshConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("mesh.routes[{i}]");
            let host = r.host.to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(err(format!(
                    "{at}.host: give the request host, e.g. \"api.example.com\" (no scheme, no path)"
                )));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(err(format!(
                    "{at}.path_prefix: must start with / (e.g. \"/v1/\"), got {:?}",
                    r.path_prefix
                )));
            }
            if !seen.insert((host, r.path_prefix.clone())) {
                return Err(err(format!(
                    "{at}: host {:?} with path_prefix {:?} is already routed by an earlier entry",
                    r.host, r.path_prefix
                )));
            }
            validate_id("tenant", &r.tenant).map_err(|m| err(format!("{at}.tenant: {m}")))?;
            validate_id("credential_id", &r.credential_id)
                .map_err(|m| err(format!("{at}.credential_id: {m}")))?;
            check_scopes(&r.scopes).map_err(|m| err(format!("{at}.scopes: {m}")))?;
            if let Some(h) = &r.header {
                check_header(h).map_err(|m| err(format!("{at}.header: {m}")))?;
            }
            if let Some(f) = &r.format {
                check_format(f).map_err(|m| err(format!("{at}.format: {m}")))?;
            }
            for h in &r.remove_headers {
                check_header(h).map_err(|m| err(format!("{at}.remove_headers: {m}")))?;
            }
        }
        Ok(())
    }
}

/// A header a token may be written into or a route may remove: a valid lowercase HTTP
/// field name, and not one that would redirect or reframe the request.
pub fn check_header(name: &str) -> Result<(), String> {
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not an HTTP header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{name:?} must be lowercase (HTTP/2 header names are), e.g. {:?}",
            name.to_ascii_lowercase()
        ));
    }
    if matches!(
        name,
        "host" | "content-length" | "transfer-encoding" | "connection"
    ) {
        return Err(format!("{name:?} cannot be set or removed by a route"));
    }
    Ok(())
}

/// A format writes the token once: `{token}` exactly once, nothing that breaks a header.
pub fn check_format(format: &str) -> Result<(), String> {
    if format.matches(TOKEN_PLACEHOLDER).count() != 1 {
        return Err(format!(
            "must contain {TOKEN_PLACEHOLDER} exactly once, e.g. \"Bearer {TOKEN_PLACEHOLDER}\" or \"{TOKEN_PLACEHOLDER}\""
        ));
    }
    if format.chars().any(|c| c.is_control()) {
        return Err("contains a control character".into());
    }
    Ok(())
}

/// Scopes as a route may list them (the same bounds as a GetToken request).
pub fn check_scopes(scopes: &[String]) -> Result<(), String> {
    if scopes.len() > 64 {
        return Err(format!("{} scopes; at most 64 are allowed", scopes.len()));
    }
    for s in scopes {
        if s.is_empty() || s.len() > 256 {
            return Err(format!(
                "each scope must be 1 to 256 characters, got {}",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            return Err(format!(
                "scope contains {c:?}; RFC 6749 scopes are printable ASCII without spaces, quotes or backslashes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn route(extra: &str) -> String {
        format!("[[mesh.routes]]\nhost = \"api.example.com\"\ntenant = \"acme\"\ncredential_id = \"idp\"\n{extra}\n")
    }

    #[test]
    fn a_valid_route_passes() {
        let c = Config::parse(&route(
            "path_prefix = \"/v1/\"\nscopes = [\"read\"]\nheader = \"x-api-key\"\nformat = \"{token}\"\nremove_headers = [\"x-client-key\"]",
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.mesh.routes[0].path_prefix, "/v1/");
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let e = Config::parse(&route("hedaer = \"x\"")).unwrap_err();
        assert!(e.0.contains("hedaer"), "{e}");
        for (extra, field) in [
            ("path_prefix = \"v1\"", "mesh.routes[0].path_prefix"),
            ("header = \"X-Api-Key\"", "mesh.routes[0].header"),
            ("header = \"bad header\"", "mesh.routes[0].header"),
            ("format = \"Bearer\"", "mesh.routes[0].format"),
            ("format = \"{token}{token}\"", "mesh.routes[0].format"),
            ("scopes = [\"a b\"]", "mesh.routes[0].scopes"),
            (
                "remove_headers = [\"host\"]",
                "mesh.routes[0].remove_headers",
            ),
        ] {
            let e = Config::parse(&route(extra))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.0.contains(field), "{extra}: {e}");
        }
        let e = Config::parse(&route("tenant = \"a b\"").replace("tenant = \"acme\"\n", ""))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.0.contains("mesh.routes[0].tenant"), "{e}");
    }

    #[test]
    fn a_route_given_twice_is_refused() {
        let text = format!("{}{}", route(""), route("").replace("api.", "API."));
        let e = Config::parse(&text).unwrap().validate().unwrap_err();
        assert!(e.0.contains("mesh.routes[1]"), "{e}");
    }
}
