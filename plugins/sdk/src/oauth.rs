//! RFC 6749 token endpoint wire format: building requests (§2.3.1, §4, §6), parsing
//! successful responses (§5.1) and errors (§5.2), and RFC 7009 revocation.
//!
//! Every failure is classified here, once, so all plugins agree: `invalid_grant`,
//! `invalid_client` and `unauthorized_client` reject the credential; 5xx, 429, timeouts,
//! malformed or truncated bodies and a success without `access_token` are transient.

use crate::authcode::AuthorizationRequest;
use crate::error::{ProviderError, RejectKind};
use crate::http::{UpstreamCall, UpstreamRequest, UpstreamResponse};
use crate::scope::ScopeSet;
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;
use url::Url;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    #[default]
    #[serde(alias = "client_secret_basic")]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    #[serde(alias = "client_secret_post")]
    Post,
    /// Public client: only `client_id` in the body.
    #[serde(alias = "none")]
    Public,
}

/// A client's identity at the token endpoint.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub auth: ClientAuth,
}

impl ClientCredentials {
    /// Adds client authentication to a token-endpoint form request (HTTP Basic as RFC 6749
    /// §2.3.1 has it: over the form-encoded id and secret).
    pub fn apply(&self, form: Vec<(String, String)>, url: Url) -> UpstreamRequest {
        self.authenticate(form, url, UpstreamRequest::oauth_client_basic_auth)
    }

    /// As [`apply`](Self::apply), but HTTP Basic over the raw `client_id:client_secret`, as
    /// some vendors document it (Autodesk APS v2, Trimble Identity).
    pub fn apply_raw_basic(&self, form: Vec<(String, String)>, url: Url) -> UpstreamRequest {
        self.authenticate(form, url, UpstreamRequest::basic_auth)
    }

    fn authenticate(
        &self,
        mut form: Vec<(String, String)>,
        url: Url,
        basic: fn(UpstreamRequest, &str, &Secret) -> UpstreamRequest,
    ) -> UpstreamRequest {
        match (self.auth, &self.client_secret) {
            (ClientAuth::Basic, Some(secret)) => basic(
                UpstreamRequest::post_form(url, form),
                &self.client_id,
                secret,
            ),
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id".into(), self.client_id.clone()));
                form.push(("client_secret".into(), secret.expose().to_owned()));
                UpstreamRequest::post_form(url, form)
            }
            _ => {
                form.push(("client_id".into(), self.client_id.clone()));
                UpstreamRequest::post_form(url, form)
            }
        }
    }
}

/// A parsed RFC 6749 §5.1 response.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<Secret>,
    /// Granted scopes when the provider said (§3.3: absent means as requested).
    pub scope: Option<Vec<String>>,
    pub id_token: Option<Secret>,
    /// Every other field, for vendor extensions. Secret-looking fields are not copied.
    pub extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
}

/// Classifies a token endpoint answer and parses it (§5.1 success, §5.2 error).
pub fn parse_token_response(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<TokenResponse, ProviderError> {
    check_status(step, resp, call)?;
    let mut obj = parse_json_object(step, resp)?;
    let access_token = match obj.remove("access_token") {
        Some(Value::String(s)) if !s.is_empty() => Secret::from(s),
        _ => {
            return Err(ProviderError::transient(
                step,
                format!(
                    "provider answered HTTP {} without an access_token",
                    resp.status
                ),
            ))
        }
    };
    call.redactor().learn(&access_token);
    let token_type = match obj.remove("token_type") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => "Bearer".to_owned(),
    };
    let expires_in = match obj.remove("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_expires_in(&v).ok_or_else(|| {
            ProviderError::transient(step, format!("malformed expires_in in token response: {v}"))
        })?),
    };
    let refresh_token = take_secret(&mut obj, "refresh_token");
    let id_token = take_secret(&mut obj, "id_token");
    for s in [&refresh_token, &id_token].into_iter().flatten() {
        call.redactor().learn(s);
    }
    let scope = match obj.remove("scope") {
        Some(Value::String(s)) => Some(split_scopes(&s)),
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    };
    obj.retain(|k, _| !crate::redact::is_secret_field(k));
    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
        refresh_token,
        scope,
        id_token,
        extra: obj,
    })
}

fn take_secret(obj: &mut Map<String, Value>, name: &str) -> Option<Secret> {
    match obj.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::from(s)),
        _ => None,
    }
}

/// `expires_in` as a JSON number or, as some providers (LSEG) send it, a string.
pub fn parse_expires_in(v: &Value) -> Option<Duration> {
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs(secs as u64))
}

/// Splits a space-separated scope string (RFC 6749 §3.3).
pub fn split_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Fails with the right category for anything but a 2xx.
pub fn check_status(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<(), ProviderError> {
    let status = resp.status;
    if resp.is_success() {
        return Ok(());
    }
    if status == 429 || status == 408 || status >= 500 {
        return Err(ProviderError::Transient {
            step: step.to_owned(),
            message: format!("provider answered HTTP {status}"),
            retry_after: resp.retry_after(),
        });
    }
    if (300..400).contains(&status) {
        return Err(ProviderError::transient(
            step,
            format!("provider answered with a redirect (HTTP {status}); check the endpoint URL"),
        ));
    }
    // 4xx: an RFC 6749 §5.2 error body decides; anything else is malformed (transient).
    match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(body) => {
            let kind = match body.error.as_str() {
                "invalid_grant" | "invalid_client" | "unauthorized_client" => {
                    RejectKind::Credential
                }
                "invalid_scope" => RejectKind::Scope,
                _ => RejectKind::Request,
            };
            let redactor = call.redactor();
            Err(ProviderError::Rejected {
                kind,
                step: step.to_owned(),
                code: redactor.scrub(&body.error),
                description: body
                    .error_description
                    .map(|d| truncate(&redactor.scrub(&d), 300)),
            })
        }
        Err(_) => Err(ProviderError::transient(
            step,
            format!(
                "provider answered HTTP {status} with a body that is not an OAuth error ({})",
                resp.content_type().unwrap_or("no content type")
            ),
        )),
    }
}

/// Parses a 2xx body as a JSON object; anything else is a transient malformed answer.
pub fn parse_json_object(
    step: &str,
    resp: &UpstreamResponse,
) -> Result<Map<String, Value>, ProviderError> {
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProviderError::transient(
            step,
            format!("HTTP {} body is JSON but not an object", resp.status),
        )),
        Err(e) if e.is_eof() => Err(ProviderError::transient(
            step,
            format!("HTTP {} body is truncated JSON", resp.status),
        )),
        Err(_) => Err(ProviderError::transient(
            step,
            format!(
                "HTTP {} body is not JSON ({})",
                resp.status,
                resp.content_type().unwrap_or("no content type")
            ),
        )),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Sends a token request and parses the answer.
pub async fn request_token(
    call: &UpstreamCall,
    step: &str,
    req: UpstreamRequest,
) -> Result<TokenResponse, ProviderError> {
    let resp = call.send(step, req).await?;
    parse_token_response(step, &resp, call)
}

/// The form of an authorization-code grant (RFC 6749 §4.1.3), with the PKCE verifier
/// (RFC 7636 §4.5) when there is one.
pub fn authorization_code_form(
    code: &Secret,
    redirect_uri: &Url,
    code_verifier: Option<&Secret>,
) -> Vec<(String, String)> {
    let mut form = vec![
        ("grant_type".to_owned(), "authorization_code".to_owned()),
        ("code".to_owned(), code.expose().to_owned()),
        ("redirect_uri".to_owned(), redirect_uri.to_string()),
    ];
    if let Some(verifier) = code_verifier {
        form.push(("code_verifier".into(), verifier.expose().to_owned()));
    }
    form
}

/// The form of a refresh-token grant (RFC 6749 §6), without `scope`.
pub fn refresh_token_form(refresh_token: &Secret) -> Vec<(String, String)> {
    vec![
        ("grant_type".to_owned(), "refresh_token".to_owned()),
        (
            "refresh_token".to_owned(),
            refresh_token.expose().to_owned(),
        ),
    ]
}

/// The form of an RFC 7009 revocation request.
pub fn revocation_form(token: &Secret, hint: Option<&str>) -> Vec<(String, String)> {
    let mut form = vec![("token".to_owned(), token.expose().to_owned())];
    if let Some(h) = hint {
        form.push(("token_type_hint".into(), h.to_owned()));
    }
    form
}

/// The consent URL of the authorization-code flow (RFC 6749 §4.1.1): `endpoint` with
/// `response_type=code`, the client id, the redirect URI, the space-separated scopes and the
/// state appended, plus the PKCE S256 challenge when the gateway sent one.
pub fn authorization_url(
    endpoint: &Url,
    client_id: &str,
    scopes: &ScopeSet,
    req: &AuthorizationRequest,
) -> Url {
    let mut url = endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", req.redirect_uri.as_str())
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &req.state);
        if let Some(challenge) = &req.code_challenge {
            q.append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
    }
    url
}

/// RFC 7009 revocation. `200` is success (also for tokens the server no longer knows).
pub async fn revoke_token(
    call: &UpstreamCall,
    url: Url,
    client: &ClientCredentials,
    token: &Secret,
    hint: Option<&str>,
) -> Result<(), ProviderError> {
    let form = revocation_form(token, hint);
    let resp = call.send("revoke", client.apply(form, url)).await?;
    check_status("revoke", &resp, call)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> UpstreamCall {
        crate::http::test_call()
    }

    fn resp(status: u16, ct: &str, body: &str) -> UpstreamResponse {
        crate::http::test_response(status, ct, body)
    }

    fn parse(status: u16, body: &str) -> Result<TokenResponse, ProviderError> {
        parse_token_response("token", &resp(status, "application/json", body), &call())
    }

    #[test]
    fn full_success_response() {
        let t = parse(
            200,
            r#"{"access_token":"a","token_type":"bearer","expires_in":3600,"refresh_token":"r","scope":"b a","foo":1}"#,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.token_type, "bearer");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(t.refresh_token.unwrap().expose(), "r");
        assert_eq!(t.scope.unwrap(), vec!["b", "a"]);
        assert_eq!(t.extra.get("foo"), Some(&Value::from(1)));
    }

    #[test]
    fn expires_in_as_string_parses() {
        let t = parse(200, r#"{"access_token":"a","expires_in":"300"}"#).unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(300)));
        assert_eq!(t.token_type, "Bearer");
        assert!(parse(200, r#"{"access_token":"a","expires_in":"soon"}"#)
            .unwrap_err()
            .is_transient());
    }

    #[test]
    fn success_without_access_token_is_transient() {
        let e = parse(200, r#"{"token_type":"Bearer"}"#).unwrap_err();
        assert!(e.is_transient());
        assert!(parse(200, r#"{"access_token":""}"#)
            .unwrap_err()
            .is_transient());
    }

    #[test]
    fn html_truncated_and_empty_bodies_are_transient() {
        for body in [
            "<html>maintenance</html>",
            r#"{"access_token":"a","#,
            "",
            "[1]",
        ] {
            let e = parse(200, body).unwrap_err();
            assert!(e.is_transient(), "{body}: {e}");
        }
        let e = parse_token_response("token", &resp(400, "text/html", "<h1>bad</h1>"), &call())
            .unwrap_err();
        assert!(e.is_transient());
    }

    #[test]
    fn rfc6749_errors_are_classified() {
        for (code, kind) in [
            ("invalid_grant", RejectKind::Credential),
            ("invalid_client", RejectKind::Credential),
            ("unauthorized_client", RejectKind::Credential),
            ("invalid_scope", RejectKind::Scope),
            ("invalid_request", RejectKind::Request),
            ("unsupported_grant_type", RejectKind::Request),
        ] {
            let e = parse(
                400,
                &format!(r#"{{"error":"{code}","error_description":"no"}}"#),
            )
            .unwrap_err();
            match e {
                ProviderError::Rejected {
                    kind: k, code: c, ..
                } => {
                    assert_eq!(k, kind);
                    assert_eq!(c, code);
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn server_errors_and_rate_limits_are_transient() {
        let mut r = resp(429, "application/json", "{}");
        r.headers.push(("Retry-After".into(), "7".into()));
        let e = parse_token_response("token", &r, &call()).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        for s in [500, 502, 503, 504] {
            assert!(parse(s, r#"{"error":"invalid_grant"}"#)
                .unwrap_err()
                .is_transient());
        }
    }

    #[test]
    fn authorization_url_carries_pkce_and_state() {
        let req = AuthorizationRequest {
            scopes: ScopeSet::new(["openid"]),
            state: "st-1".into(),
            code_challenge: Some("ch".into()),
            redirect_uri: Url::parse("https://gw.example.com/oauth/callback").unwrap(),
        };
        let url = authorization_url(
            &Url::parse("https://id.trimble.com/oauth/authorize").unwrap(),
            "key",
            &ScopeSet::new(["openid app"]),
            &req,
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("scope"), Some("app openid"));
        assert_eq!(get("state"), Some("st-1"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(
            get("redirect_uri"),
            Some("https://gw.example.com/oauth/callback")
        );
    }

    #[test]
    fn raw_and_rfc6749_basic_differ_only_in_encoding() {
        let client = ClientCredentials {
            client_id: "my client".into(),
            client_secret: Some(Secret::from("s:x")),
            auth: ClientAuth::Basic,
        };
        let url = Url::parse("https://idp.example.com/token").unwrap();
        let authorization = |r: UpstreamRequest| {
            r.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.clone())
        };
        use base64::Engine;
        let b64 = |raw: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        assert_eq!(
            authorization(client.apply(vec![], url.clone())),
            Some(b64("my+client:s%3Ax"))
        );
        assert_eq!(
            authorization(client.apply_raw_basic(vec![], url.clone())),
            Some(b64("my client:s:x"))
        );
        let public = ClientCredentials {
            client_secret: None,
            ..client
        };
        let req = public.apply_raw_basic(vec![], url);
        assert_eq!(authorization(req.clone()), None);
        assert!(matches!(
            req.body,
            crate::http::RequestBody::Form(ref f) if f == &[("client_id".to_owned(), "my client".to_owned())]
        ));
    }

    #[test]
    fn error_description_is_scrubbed() {
        let c = call();
        c.redactor().learn(&Secret::from("canary-secret-1"));
        let e = parse_token_response(
            "token",
            &resp(
                401,
                "application/json",
                r#"{"error":"invalid_client","error_description":"secret canary-secret-1 wrong"}"#,
            ),
            &c,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("canary"), "{e}");
        assert!(e.rejects_credential());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any status, content type and body is classified, never a panic; a success
            /// always carries a non-empty token.
            #[test]
            fn any_answer_is_classified(
                status in 100u16..600,
                json in any::<bool>(),
                body in prop_oneof![
                    ".{0,80}",
                    "\\{\"access_token\":\"[a-z]{0,8}\",\"expires_in\":-?[0-9]{0,12}\\}",
                    "\\{\"error\":\"[a-z_]{0,16}\"\\}",
                ],
            ) {
                let ct = if json { "application/json" } else { "text/html" };
                let call = call();
                if let Ok(t) = parse_token_response("token", &resp(status, ct, &body), &call) {
                    prop_assert!(!t.access_token.expose().is_empty());
                }
            }
        }
    }
}
