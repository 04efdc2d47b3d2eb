//! Finds an issuer's endpoints: OpenID Connect Discovery, falling back to RFC 8414
//! authorization server metadata when the OIDC document does not exist. A client that
//! presents a certificate uses the `mtls_endpoint_aliases` the issuer lists (RFC 8705 §5).

use authgate_plugin_sdk::oauth::{check_status, parse_json_object};
use authgate_plugin_sdk::{ProviderError, UpstreamCall, UpstreamRequest};
use serde_json::{Map, Value};
use url::Url;

/// The step name every discovery request is recorded under.
pub const STEP: &str = "discovery";

/// The endpoints an issuer published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub token_endpoint: Url,
    pub revocation_endpoint: Option<Url>,
    pub authorization_endpoint: Option<Url>,
    /// RFC 8628 §4 `device_authorization_endpoint`.
    pub device_authorization_endpoint: Option<Url>,
}

/// `issuer` has no trailing slash (settings strip it).
fn well_known(issuer: &str, name: &str) -> Result<Url, ProviderError> {
    Url::parse(&format!("{issuer}/.well-known/{name}")).map_err(|e| {
        ProviderError::config(format!(
            "`issuer` does not make a valid discovery URL ({e}); give the issuer URL as the provider publishes it"
        ))
    })
}

/// Fetches and checks the issuer's metadata. Nothing is cached here; the provider caches
/// only a success. With `mtls` (a client certificate is presented), the issuer's
/// `mtls_endpoint_aliases` replace the endpoints they name.
pub async fn discover(
    call: &UpstreamCall,
    issuer: &str,
    mtls: bool,
) -> Result<Discovered, ProviderError> {
    let oidc = well_known(issuer, "openid-configuration")?;
    let mut resp = call.send(STEP, UpstreamRequest::get(oidc.clone())).await?;
    let mut doc_url = oidc;
    if resp.status == 404 {
        let rfc8414 = well_known(issuer, "oauth-authorization-server")?;
        resp = call
            .send(STEP, UpstreamRequest::get(rfc8414.clone()))
            .await?;
        if resp.status == 404 {
            return Err(ProviderError::config(format!(
                "`issuer` {issuer} publishes no metadata: both {doc_url} and {rfc8414} answered HTTP 404; check `issuer`, or set `token_url` instead"
            )));
        }
        doc_url = rfc8414;
    }
    check_status(STEP, &resp, call)?;
    let doc = parse_json_object(STEP, &resp)?;
    let mut found = parse_document(issuer, &doc_url, &doc)?;
    if mtls {
        use_mtls_aliases(&mut found, &doc_url, &doc)?;
    }
    Ok(found)
}

/// RFC 8705 §5: a client using mutual TLS sends its requests to the endpoints in
/// `mtls_endpoint_aliases`, and to the usual ones for endpoints the aliases do not list.
/// An alias must be https: the certificate is only presented in a TLS handshake.
fn use_mtls_aliases(
    found: &mut Discovered,
    doc_url: &Url,
    doc: &Map<String, Value>,
) -> Result<(), ProviderError> {
    let Some(aliases) = doc.get("mtls_endpoint_aliases").and_then(Value::as_object) else {
        return Ok(());
    };
    let https =
        |name: &str| endpoint(aliases, name).map(|r| r.ok().filter(|u| u.scheme() == "https"));
    match https("token_endpoint") {
        Some(Some(url)) => found.token_endpoint = url,
        Some(None) => {
            return Err(ProviderError::config(format!(
                "the metadata at {doc_url} has an `mtls_endpoint_aliases.token_endpoint` that is not an https URL; set `token_url` to the provider's mutual-TLS token endpoint instead of `issuer`"
            )))
        }
        None => {}
    }
    match https("revocation_endpoint") {
        Some(Some(url)) => found.revocation_endpoint = Some(url),
        Some(None) => {
            tracing::warn!(document = %doc_url, "ignoring an mtls_endpoint_aliases.revocation_endpoint that is not an https URL");
        }
        None => {}
    }
    Ok(())
}

fn parse_document(
    issuer: &str,
    doc_url: &Url,
    doc: &Map<String, Value>,
) -> Result<Discovered, ProviderError> {
    // OIDC Discovery §4.3 / RFC 8414 §3.3: a document naming another issuer must not be
    // used, or a compromised or misrouted endpoint could hand out someone else's endpoints.
    let published = doc.get("issuer").and_then(Value::as_str).ok_or_else(|| {
        ProviderError::config(format!(
            "the metadata at {doc_url} has no `issuer`; check the `issuer` setting, or set `token_url` instead"
        ))
    })?;
    if published.trim_end_matches('/') != issuer {
        return Err(ProviderError::config(format!(
            "the metadata at {doc_url} names issuer `{published}`, not the configured `issuer` `{issuer}`; set `issuer` to the provider's issuer exactly"
        )));
    }
    let token_endpoint = match endpoint(doc, "token_endpoint") {
        Some(Ok(url)) => url,
        Some(Err(())) => {
            return Err(ProviderError::config(format!(
                "the metadata at {doc_url} has a `token_endpoint` that is not an http(s) URL; set `token_url` instead of `issuer`"
            )))
        }
        None => {
            return Err(ProviderError::config(format!(
                "the metadata at {doc_url} has no `token_endpoint`; set `token_url` instead of `issuer`"
            )))
        }
    };
    // Optional endpoints: an unusable one is treated as absent (the operation that needs
    // it says so and names the setting that overrides it) rather than failing every fetch.
    let optional = |name: &str| match endpoint(doc, name) {
        Some(Ok(url)) => Some(url),
        Some(Err(())) => {
            tracing::warn!(document = %doc_url, field = name, "ignoring a discovered endpoint that is not an http(s) URL");
            None
        }
        None => None,
    };
    Ok(Discovered {
        token_endpoint,
        revocation_endpoint: optional("revocation_endpoint"),
        authorization_endpoint: optional("authorization_endpoint"),
        device_authorization_endpoint: optional("device_authorization_endpoint"),
    })
}

fn endpoint(doc: &Map<String, Value>, name: &str) -> Option<Result<Url, ()>> {
    let raw = doc.get(name)?.as_str()?;
    Some(
        Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn url() -> Url {
        Url::parse("https://idp.example.com/.well-known/openid-configuration").unwrap()
    }

    #[test]
    fn parses_endpoints_and_tolerates_a_trailing_slash() {
        let d = parse_document(
            "https://idp.example.com",
            &url(),
            &doc(json!({
                "issuer": "https://idp.example.com/",
                "token_endpoint": "https://idp.example.com/token",
                "revocation_endpoint": "https://idp.example.com/revoke",
                "authorization_endpoint": "javascript:alert(1)",
                "device_authorization_endpoint": "https://idp.example.com/device/auth",
            })),
        )
        .unwrap();
        assert_eq!(
            d.device_authorization_endpoint.unwrap().as_str(),
            "https://idp.example.com/device/auth"
        );
        assert_eq!(d.token_endpoint.as_str(), "https://idp.example.com/token");
        assert_eq!(
            d.revocation_endpoint.unwrap().as_str(),
            "https://idp.example.com/revoke"
        );
        assert_eq!(d.authorization_endpoint, None);
    }

    #[test]
    fn mtls_aliases_replace_the_endpoints_they_name() {
        let metadata = doc(json!({
            "issuer": "https://idp.example.com",
            "token_endpoint": "https://idp.example.com/token",
            "revocation_endpoint": "https://idp.example.com/revoke",
            "mtls_endpoint_aliases": {
                "token_endpoint": "https://mtls.idp.example.com/token",
                "introspection_endpoint": "https://mtls.idp.example.com/introspect",
            },
        }));
        let mut d = parse_document("https://idp.example.com", &url(), &metadata).unwrap();
        let plain = d.clone();
        use_mtls_aliases(&mut d, &url(), &metadata).unwrap();
        assert_eq!(
            d.token_endpoint.as_str(),
            "https://mtls.idp.example.com/token"
        );
        // Not aliased: the usual endpoint (RFC 8705 §5).
        assert_eq!(d.revocation_endpoint, plain.revocation_endpoint);
        assert_ne!(d, plain);

        let mut bad = metadata.clone();
        bad["mtls_endpoint_aliases"]["token_endpoint"] = json!("http://mtls.idp.example.com/token");
        let e = use_mtls_aliases(&mut d, &url(), &bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("mtls_endpoint_aliases.token_endpoint"),
            "{e}"
        );
        let mut none = metadata;
        none.remove("mtls_endpoint_aliases");
        let mut d = plain.clone();
        use_mtls_aliases(&mut d, &url(), &none).unwrap();
        assert_eq!(d, plain);
    }

    #[test]
    fn missing_or_bad_token_endpoint_is_a_configuration_error() {
        for d in [
            json!({"issuer": "https://idp.example.com"}),
            json!({"issuer": "https://idp.example.com", "token_endpoint": "not a url"}),
        ] {
            let e = parse_document("https://idp.example.com", &url(), &doc(d)).unwrap_err();
            assert!(matches!(e, ProviderError::InvalidConfiguration(_)), "{e}");
            assert!(e.to_string().contains("token_endpoint"), "{e}");
        }
        let e = parse_document("https://idp.example.com", &url(), &doc(json!({}))).unwrap_err();
        assert!(e.to_string().contains("no `issuer`"), "{e}");
    }
}
