//! Finds an issuer's endpoints: OpenID Connect Discovery, falling back to RFC 8414
//! authorization server metadata when the OIDC document does not exist.

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
/// only a success.
pub async fn discover(call: &UpstreamCall, issuer: &str) -> Result<Discovered, ProviderError> {
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
    parse_document(issuer, &doc_url, &doc)
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
