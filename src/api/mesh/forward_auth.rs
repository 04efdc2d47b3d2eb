//! Forward-auth over HTTP, for proxies without ext_authz over gRPC: nginx `auth_request`,
//! Traefik `forwardAuth`, Caddy `forward_auth`. The proxy sends a request to [`PATH`] on
//! authgate's HTTP port before forwarding its client's request; authgate answers 200 with
//! the header to inject (the proxy copies it onto the request), or the same denial as
//! Check (status, JSON body, `retry-after`).
//!
//! * Who asks: the proxy is an authgate caller, identified by its API key in
//!   `x-authgate-api-key` (never `authorization`: that header is its client's, and the
//!   proxy forwards it), through the same admission as gRPC ([`Authorizer::http_grant`]);
//!   with no `[[callers]]`, loopback peers only.
//! * Which token: the `x-authgate-*` route headers the proxy sets (the same fields as
//!   Envoy's `context_extensions`), else `[[mesh.routes]]` for the original host
//!   (`x-forwarded-host`, else `host`) and path (`x-forwarded-uri`, else `x-original-uri`).
//! * How long: `x-authgate-timeout-ms` (the proxy's own timeout; default 5 s), answered
//!   with a 503 a little before it, as Check does with `grpc-timeout`.
//!
//! The decision itself is [`super::decide`]'s, shared with Check.

use super::decide::{deadline_within, Ask, Granted, MeshService};
use super::reply::{header_value, Denial};
use super::routes::{names_a_token, proxy_header, Origin, ROUTE_FIELDS};
use crate::api::auth::Authorizer;
use crate::config::Role;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Where proxies send their forward-auth requests (any method).
pub const PATH: &str = "/mesh/forward-auth";
/// The proxy's own timeout for the answer, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-authgate-timeout-ms";
/// How long to wait for a token when the proxy does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// The longest wait a proxy may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The forward-auth endpoint: the token-injection service and the caller table. Cheap to
/// clone.
#[derive(Clone)]
pub struct ForwardAuth {
    mesh: MeshService,
    auth: Authorizer,
}

impl ForwardAuth {
    pub fn new(mesh: MeshService, auth: Authorizer) -> Self {
        Self { mesh, auth }
    }

    /// Answers one forward-auth request; `peer` is the TCP peer (for dev mode's loopback
    /// rule). The request body, if any, is not read.
    pub async fn handle(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Response {
        match self.answer(headers, peer).await {
            Ok(g) => allowed(&g).unwrap_or_else(denied),
            Err(d) => denied(d),
        }
    }

    async fn answer(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Granted, Denial> {
        let grant = self
            .auth
            .http_grant(headers, peer, Role::Token)
            .map_err(Denial::refused)?;
        let deadline = deadline_within(wait(headers)?);
        let fields = route_fields(headers)?;
        let path = original_uri(headers);
        if path.is_none() && !names_a_token(&fields) {
            return Err(Denial::bad_request(
                "the forward-auth request names no token and no original URI: set x-authgate-tenant and x-authgate-credential, or send the original request's path in x-forwarded-uri (Traefik, Caddy) or x-original-uri (nginx: proxy_set_header X-Original-URI $request_uri)".into(),
            ));
        }
        let ask = Ask {
            origin: Origin::ProxyHeaders,
            fields: &fields,
            host: original_host(headers),
            path: path.unwrap_or(""),
            principal: None,
        };
        self.mesh.decide(Some(grant), ask, Some(deadline)).await
    }
}

/// The route fields from their `x-authgate-*` headers; an unreadable value names its header.
fn route_fields(headers: &HeaderMap) -> Result<HashMap<String, String>, Denial> {
    let mut fields = HashMap::new();
    for field in ROUTE_FIELDS {
        let name = proxy_header(field);
        if let Some(v) = headers.get(name) {
            let v = v.to_str().map_err(|_| {
                Denial::bad_request(format!("header {name}: must be printable ASCII"))
            })?;
            fields.insert(field.to_owned(), v.trim().to_owned());
        }
    }
    Ok(fields)
}

/// A header's first value (of a comma-separated list: the first proxy's).
fn first<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let v = headers.get(name)?.to_str().ok()?;
    let v = v.split(',').next().unwrap_or("").trim();
    (!v.is_empty()).then_some(v)
}

/// The original request's host: `x-forwarded-host` (Traefik, Caddy), else `host` (nginx
/// passes the original one with `proxy_set_header Host $host`).
fn original_host(headers: &HeaderMap) -> &str {
    first(headers, "x-forwarded-host")
        .or_else(|| first(headers, "host"))
        .unwrap_or("")
}

/// The original request's path and query: `x-forwarded-uri`, else `x-original-uri`.
fn original_uri(headers: &HeaderMap) -> Option<&str> {
    first(headers, "x-forwarded-uri").or_else(|| first(headers, "x-original-uri"))
}

fn wait(headers: &HeaderMap) -> Result<Duration, Denial> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(DEFAULT_WAIT);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&ms| ms > 0)
        .ok_or_else(|| {
            Denial::bad_request(format!(
                "header {TIMEOUT_HEADER}: give the proxy's timeout in milliseconds, e.g. 1000"
            ))
        })?;
    Ok(Duration::from_millis(ms).min(MAX_WAIT))
}

/// 200 with the route's header for the proxy to copy onto the request, and what the
/// Check's dynamic metadata says (never the token elsewhere).
fn allowed(g: &Granted) -> Result<Response, Denial> {
    let name = HeaderName::from_bytes(g.route.header.as_bytes())
        .map_err(|_| Denial::bad_request(format!("{:?} is not a header name", g.route.header)))?;
    let mut value =
        HeaderValue::try_from(header_value(&g.route.format, g.token.access_token.expose()))
            .map_err(|_| Denial {
                http_status: 500,
                grpc_code: 13,
                error: "internal",
                message: "the provider's token cannot be sent in an HTTP header (it contains a control character)".into(),
                retry_after: None,
            })?;
    value.set_sensitive(true);
    let expires_at = crate::api::convert::timestamp(g.token.expires_at_ms).to_string();
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    let cache = if g.cache_hit { "hit" } else { "miss" };
    headers.insert("x-authgate-cache", HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::try_from(expires_at) {
        headers.insert("x-authgate-token-expires-at", v);
    }
    Ok((StatusCode::OK, headers).into_response())
}

/// The denial as Check writes it (status, JSON body, `retry-after`), plus the body again in
/// `x-authgate-denial` and its reason in `x-authgate-error`: nginx's `auth_request` drops
/// the subrequest's body, and relays these with `auth_request_set`.
fn denied(d: Denial) -> Response {
    let status = StatusCode::from_u16(d.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = d.body();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert("x-authgate-error", HeaderValue::from_static(d.error));
    if let Ok(v) = HeaderValue::try_from(ascii_json(&body)) {
        headers.insert("x-authgate-denial", v);
    }
    if let Some(secs) = d.retry_after_secs() {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    (status, headers, body).into_response()
}

/// The same JSON with every non-ASCII character escaped (`\uXXXX`), so it fits a header.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_original_request_comes_from_the_proxys_headers() {
        let traefik = headers(&[
            ("host", "authgate:8080"),
            ("x-forwarded-host", "api.example.com, inner"),
            ("x-forwarded-uri", "/v1/x?y=1"),
            ("x-original-uri", "/ignored"),
        ]);
        assert_eq!(original_host(&traefik), "api.example.com");
        assert_eq!(original_uri(&traefik), Some("/v1/x?y=1"));
        let nginx = headers(&[("host", "api.example.com"), ("x-original-uri", "/v2/")]);
        assert_eq!(original_host(&nginx), "api.example.com");
        assert_eq!(original_uri(&nginx), Some("/v2/"));
        assert_eq!(original_uri(&headers(&[])), None);
    }

    #[test]
    fn route_headers_become_route_fields() {
        let h = headers(&[
            ("x-authgate-tenant", "acme"),
            ("x-authgate-credential", " crm "),
            ("x-authgate-scopes", "a b"),
            ("x-authgate-format", "{token}"),
        ]);
        let f = route_fields(&h).unwrap();
        assert_eq!(f["tenant"], "acme");
        assert_eq!(f["credential_id"], "crm");
        assert_eq!(f["scopes"], "a b");
        assert_eq!(f["format"], "{token}");
        assert!(!f.contains_key("header"));
        let mut bad = HeaderMap::new();
        bad.insert(
            "x-authgate-tenant",
            HeaderValue::from_bytes(b"acm\xe9").unwrap(),
        );
        let d = route_fields(&bad).unwrap_err();
        assert!(d.message.contains("x-authgate-tenant"), "{d:?}");
    }

    #[test]
    fn the_proxys_timeout_bounds_the_wait() {
        assert_eq!(wait(&headers(&[])).unwrap(), DEFAULT_WAIT);
        let h = headers(&[(TIMEOUT_HEADER, "250")]);
        assert_eq!(wait(&h).unwrap(), Duration::from_millis(250));
        let h = headers(&[(TIMEOUT_HEADER, "99999999")]);
        assert_eq!(wait(&h).unwrap(), MAX_WAIT);
        for bad in ["0", "-1", "1s"] {
            let d = wait(&headers(&[(TIMEOUT_HEADER, bad)])).unwrap_err();
            assert!(d.message.contains(TIMEOUT_HEADER), "{bad}: {d:?}");
        }
    }

    #[test]
    fn denials_carry_status_body_and_relay_headers() {
        let d = Denial::refused(crate::api::auth::Refusal::RateLimited {
            message: "caller `x` is over its rate limit; retry après 1.5s".into(),
            wait: Duration::from_millis(1500),
        });
        let r = denied(d);
        assert_eq!(r.status(), 429);
        let h = r.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-authgate-error"], "rate_limited");
        let relayed: serde_json::Value =
            serde_json::from_str(h["x-authgate-denial"].to_str().unwrap()).unwrap();
        assert_eq!(relayed["error"], "rate_limited");
        assert!(relayed["message"].as_str().unwrap().contains("après"));
    }
}
