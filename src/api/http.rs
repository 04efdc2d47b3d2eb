//! The HTTP port: `/oauth/callback` (the provider's redirect at the end of the
//! authorization-code flow, answered with a small HTML page), `/healthz`, `/metrics`
//! (Prometheus text) and `/mesh/forward-auth` (token injection for nginx, Traefik and
//! Caddy; see [`crate::api::mesh::forward_auth`]).
//!
//! The callback is authenticated by its single-use `state`, `/healthz` and `/metrics`
//! reveal no tenant data; forward-auth passes the same caller admission as gRPC.

use crate::api::mesh::{forward_auth, ForwardAuth};
use crate::broker::TokenBroker;
use crate::credentials::{consent_cookie_name, CallbackOutcome, CallbackQuery, CredentialManager};
use axum::extract::{ConnectInfo, Query};
use axum::routing::{any, get};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

pub fn router(
    broker: TokenBroker,
    credentials: CredentialManager,
    forward_auth: ForwardAuth,
) -> axum::Router {
    axum::Router::new()
        .route(
            forward_auth::PATH,
            any(move |req: axum::extract::Request| {
                let fa = forward_auth.clone();
                async move {
                    // The body (proxies send none) is not read.
                    let (parts, _body) = req.into_parts();
                    let peer = parts
                        .extensions
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|c| c.0);
                    fa.handle(&parts.headers, peer).await
                }
            }),
        )
        .route("/oauth/start", {
            let credentials = credentials.clone();
            get(move |query| start(credentials.clone(), query))
        })
        .route(
            "/oauth/callback",
            get(move |headers, query| callback(credentials.clone(), headers, query)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let body = metrics_text(&broker);
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        )
}

#[derive(serde::Deserialize)]
struct StartQuery {
    state: Option<String>,
}

/// `/oauth/start` (with `server.bind_consent_to_browser`): binds the consent to this
/// browser with a cookie and sends it on to the provider.
async fn start(
    credentials: CredentialManager,
    Query(q): Query<StartQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let state = q.state.unwrap_or_default();
    match credentials.open_consent(&state) {
        Ok((provider_url, nonce)) => {
            let secure = if credentials.redirect_uri().scheme() == "https" {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{}={nonce}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                consent_cookie_name(&state),
                crate::credentials::AUTHORIZATION_TTL.as_secs()
            );
            (
                http::StatusCode::FOUND,
                [
                    (http::header::LOCATION, provider_url.to_string()),
                    (http::header::SET_COOKIE, cookie),
                    (http::header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response()
        }
        Err(outcome) => page(&outcome).into_response(),
    }
}

/// The value of the consent cookie for `state` in a `Cookie` header.
fn consent_cookie<'h>(headers: &'h http::HeaderMap, state: &str) -> Option<&'h str> {
    let name = consent_cookie_name(state);
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn page(
    outcome: &CallbackOutcome,
) -> (http::StatusCode, [(&'static str, &'static str); 3], String) {
    let status = if outcome.success {
        http::StatusCode::OK
    } else {
        http::StatusCode::BAD_REQUEST
    };
    (
        status,
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
        ],
        callback_page(outcome),
    )
}

async fn callback(
    credentials: CredentialManager,
    headers: http::HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> impl axum::response::IntoResponse {
    // The URL this request reached, to compare exactly with the registered one.
    let registered = credentials.redirect_uri();
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let received = format!("{}://{host}/oauth/callback", registered.scheme());
    let cookie = q
        .state
        .as_deref()
        .and_then(|state| consent_cookie(&headers, state))
        .map(str::to_owned);
    let outcome = credentials
        .handle_callback(q, &received, cookie.as_deref())
        .await;
    page(&outcome)
}

/// A small HTML page for the browser at the end of the flow; text is escaped.
pub fn callback_page(o: &CallbackOutcome) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{icon} {t}</h1><p>{d}</p></body></html>\n",
        t = esc(&o.title),
        d = esc(&o.detail),
        icon = if o.success { "✔" } else { "✘" }
    )
}

/// The broker's counters in the Prometheus text format. Written by hand: eight counters do
/// not justify a metrics dependency, and dashboards depend on these exact names.
pub fn metrics_text(broker: &TokenBroker) -> String {
    let m = broker.metrics();
    format!(
        "# TYPE authgate_cache_hits_total counter\nauthgate_cache_hits_total {}\n\
         # TYPE authgate_cache_misses_total counter\nauthgate_cache_misses_total {}\n\
         # TYPE authgate_upstream_fetches_total counter\nauthgate_upstream_fetches_total {}\n\
         # TYPE authgate_upstream_failures_total counter\nauthgate_upstream_failures_total {}\n\
         # TYPE authgate_background_refreshes_total counter\nauthgate_background_refreshes_total {}\n\
         # TYPE authgate_tokens_adopted_total counter\nauthgate_tokens_adopted_total {}\n\
         # TYPE authgate_exchange_hits_total counter\nauthgate_exchange_hits_total {}\n\
         # TYPE authgate_exchange_misses_total counter\nauthgate_exchange_misses_total {}\n",
        m.cache_hits.load(Ordering::Relaxed),
        m.cache_misses.load(Ordering::Relaxed),
        m.upstream_fetches.load(Ordering::Relaxed),
        m.upstream_failures.load(Ordering::Relaxed),
        m.background_refreshes.load(Ordering::Relaxed),
        m.tokens_adopted.load(Ordering::Relaxed),
        m.exchange_hits.load(Ordering::Relaxed),
        m.exchange_misses.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes() {
        // `CallbackOutcome::fail` is private to the credential manager, which makes them.
        let p = callback_page(&CallbackOutcome {
            success: false,
            title: "<x>".into(),
            detail: "a & b".into(),
        });
        assert!(p.contains("&lt;x&gt;") && p.contains("a &amp; b"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any callback query is extracted or refused, and nothing from it reaches the
            /// page as markup.
            #[test]
            fn any_callback_query_is_safe(
                query in prop_oneof![
                    ".{0,80}",
                    "(code|state|error|error_description|x)=[a-zA-Z0-9%<>\"&+;/=-]{0,30}(&(code|state|error|error_description)=[a-zA-Z0-9%<>\"+;/-]{0,30}){0,4}",
                ],
            ) {
                let Ok(uri) = format!("/oauth/callback?{query}").parse::<http::Uri>() else {
                    return Ok(());
                };
                let Ok(Query(q)) = Query::<CallbackQuery>::try_from_uri(&uri) else {
                    return Ok(());
                };
                let page = callback_page(&CallbackOutcome {
                    success: false,
                    title: q.error.unwrap_or_default(),
                    detail: format!("{} {}", q.error_description.unwrap_or_default(), q.state.unwrap_or_default()),
                });
                let blank = callback_page(&CallbackOutcome { success: false, title: String::new(), detail: " ".into() });
                prop_assert_eq!(page.matches('<').count(), blank.matches('<').count());
            }
        }
    }
}
