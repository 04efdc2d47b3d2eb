//! `authgate.plugin.v1` ⇄ the SDK's types: what a plugin sends is untrusted input, so
//! every conversion from the wire bounds lengths and counts and scrubs text with the
//! call's redactor before it can reach an event, a log line or a caller.

use crate::proto::plugin::v1 as pb;
use authgate_plugin_sdk::http::RequestBody;
use authgate_plugin_sdk::redact::truncate_chars;
use authgate_plugin_sdk::{
    IssuedToken, ProviderError, Redactor, RejectKind, Secret, UpstreamRequest, UpstreamResponse,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest message, step or code taken from a plugin.
const MAX_MESSAGE_CHARS: usize = 1024;
const MAX_NAME_CHARS: usize = 64;
/// Headers one request may carry.
const MAX_HEADERS: usize = 64;
/// Metadata entries (and their length) one token may carry.
const MAX_METADATA: usize = 32;
const MAX_METADATA_CHARS: usize = 2048;
/// Granted scopes one token may list.
const MAX_SCOPES: usize = 256;
/// The longest `Retry-After` a plugin may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The step named when a plugin names none.
pub(super) const PLUGIN_STEP: &str = "plugin";

fn step_of(step: &str) -> String {
    if step.trim().is_empty() {
        PLUGIN_STEP.to_owned()
    } else {
        truncate_chars(step, MAX_NAME_CHARS)
    }
}

/// A plugin's classified failure, scrubbed of every secret `redactor` knows.
pub(super) fn provider_error(
    kind: &str,
    error: pb::Error,
    redactor: &Redactor,
    timeout: Duration,
) -> ProviderError {
    let message = truncate_chars(&redactor.scrub(&error.message), MAX_MESSAGE_CHARS);
    let step = step_of(&redactor.scrub(&error.step));
    match pb::error::Kind::try_from(error.kind).unwrap_or(pb::error::Kind::Unspecified) {
        pb::error::Kind::InvalidConfiguration => ProviderError::InvalidConfiguration(message),
        pb::error::Kind::Rejected => ProviderError::Rejected {
            kind: match pb::RejectKind::try_from(error.reject_kind) {
                Ok(pb::RejectKind::Credential) => RejectKind::Credential,
                Ok(pb::RejectKind::Scope) => RejectKind::Scope,
                _ => RejectKind::Request,
            },
            step,
            code: truncate_chars(&redactor.scrub(&error.code), MAX_NAME_CHARS),
            description: (!message.is_empty()).then_some(message),
        },
        pb::error::Kind::Transient => ProviderError::Transient {
            step,
            message,
            retry_after: (error.retry_after_ms > 0)
                .then(|| Duration::from_millis(error.retry_after_ms).min(MAX_RETRY_AFTER)),
        },
        pb::error::Kind::TimedOut => ProviderError::TimedOut {
            step,
            after: timeout,
        },
        pb::error::Kind::Unsupported => ProviderError::Unsupported(message),
        pb::error::Kind::Unspecified => ProviderError::transient(
            step,
            format!("plugin `{kind}` returned an error without a kind: {message}"),
        ),
    }
}

/// The wire form of a failure the gateway reports to a plugin (`Host.Send`); the SDK's
/// errors are already redacted, scrubbed once more on the way out.
pub(super) fn error(e: &ProviderError, redactor: &Redactor) -> pb::Error {
    use pb::error::Kind;
    let mut out = pb::Error {
        message: redactor.scrub(&e.to_string()),
        ..Default::default()
    };
    match e {
        ProviderError::InvalidConfiguration(_) => out.kind = Kind::InvalidConfiguration.into(),
        ProviderError::Rejected {
            kind, step, code, ..
        } => {
            out.kind = Kind::Rejected.into();
            out.step = step.clone();
            out.code = code.clone();
            out.reject_kind = match kind {
                RejectKind::Credential => pb::RejectKind::Credential,
                RejectKind::Scope => pb::RejectKind::Scope,
                _ => pb::RejectKind::Request,
            }
            .into();
        }
        ProviderError::Transient {
            step, retry_after, ..
        } => {
            out.kind = Kind::Transient.into();
            out.step = step.clone();
            out.retry_after_ms = retry_after.map_or(0, |d| d.as_millis() as u64);
        }
        ProviderError::TimedOut { step, .. } => {
            out.kind = Kind::TimedOut.into();
            out.step = step.clone();
        }
        ProviderError::Unsupported(_) => out.kind = Kind::Unsupported.into(),
    }
    out
}

/// The request a plugin asked `Host.Send` for, or what is wrong with it.
pub(super) fn upstream_request(req: &pb::SendRequest) -> Result<UpstreamRequest, String> {
    let method = match req.method.to_ascii_uppercase().as_str() {
        "GET" => http::Method::GET,
        "POST" => http::Method::POST,
        "PUT" => http::Method::PUT,
        "PATCH" => http::Method::PATCH,
        "DELETE" => http::Method::DELETE,
        other => {
            return Err(format!(
                "method `{}` is not one of GET, POST, PUT, PATCH, DELETE",
                truncate_chars(other, MAX_NAME_CHARS)
            ))
        }
    };
    let url = url::Url::parse(&req.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or("url must be an absolute http(s) URL")?;
    if req.headers.len() > MAX_HEADERS {
        return Err(format!("more than {MAX_HEADERS} headers"));
    }
    let mut headers = Vec::with_capacity(req.headers.len() + 1);
    for h in &req.headers {
        let valid = http::HeaderName::from_bytes(h.name.as_bytes()).is_ok()
            && http::HeaderValue::from_str(&h.value).is_ok();
        if !valid {
            return Err(format!(
                "header `{}` is not a valid HTTP header name and value",
                truncate_chars(&h.name, MAX_NAME_CHARS)
            ));
        }
        headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    if !headers.iter().any(|(n, _)| n == "accept") {
        headers.push(("accept".into(), "application/json".into()));
    }
    let body = match &req.body {
        None => RequestBody::Empty,
        Some(pb::send_request::Body::Form(form)) => RequestBody::Form(
            form.fields
                .iter()
                .map(|f| (f.name.clone(), f.value.clone()))
                .collect(),
        ),
        Some(pb::send_request::Body::Json(text)) => RequestBody::Json(
            serde_json::from_str(text).map_err(|e| format!("json body is not JSON: {e}"))?,
        ),
    };
    Ok(UpstreamRequest {
        method,
        url,
        headers,
        body,
    })
}

/// The provider's answer, as the plugin receives it.
pub(super) fn http_response(resp: UpstreamResponse) -> pb::HttpResponse {
    pb::HttpResponse {
        status: u32::from(resp.status),
        headers: resp
            .headers
            .into_iter()
            .map(|(name, value)| pb::Header { name, value })
            .collect(),
        body: resp.body.to_vec(),
    }
}

/// A token a plugin returned; the call's redactor learns its secrets at once, so nothing
/// recorded after this shows them.
pub(super) fn issued_token(
    kind: &str,
    token: pb::Token,
    redactor: &Redactor,
) -> Result<IssuedToken, ProviderError> {
    if token.access_token.is_empty() {
        return Err(ProviderError::transient(
            PLUGIN_STEP,
            format!("plugin `{kind}` returned a token without access_token"),
        ));
    }
    let access_token = Secret::from(token.access_token);
    redactor.learn(&access_token);
    let refresh_token =
        (!token.refresh_token.is_empty()).then(|| Secret::from(token.refresh_token));
    if let Some(rt) = &refresh_token {
        redactor.learn(rt);
    }
    if token.metadata.len() > MAX_METADATA
        || token
            .metadata
            .iter()
            .any(|(k, v)| k.len() > MAX_NAME_CHARS || v.len() > MAX_METADATA_CHARS)
    {
        return Err(ProviderError::transient(
            PLUGIN_STEP,
            format!("plugin `{kind}` returned more than {MAX_METADATA} metadata entries, or one too long"),
        ));
    }
    if token.granted_scopes.len() > MAX_SCOPES {
        return Err(ProviderError::transient(
            PLUGIN_STEP,
            format!("plugin `{kind}` returned more than {MAX_SCOPES} granted scopes"),
        ));
    }
    let token_type = if token.token_type.is_empty() {
        "Bearer".to_owned()
    } else {
        truncate_chars(&token.token_type, MAX_NAME_CHARS)
    };
    let (expires_in, expires_at_unix) = match (token.expires_in_seconds, token.expires_at_unix) {
        (0, 0) => (None, None),
        (0, at) => (None, Some(at)),
        (secs, _) => (Some(Duration::from_secs(secs)), None),
    };
    Ok(IssuedToken {
        access_token,
        token_type,
        expires_in,
        expires_at_unix,
        scopes: (!token.granted_scopes.is_empty()).then_some(token.granted_scopes),
        refresh_token,
        metadata: token.metadata.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(secret: &str) -> Redactor {
        let r = Redactor::new([7; 32]);
        r.learn(&Secret::from(secret));
        r
    }

    #[test]
    fn errors_keep_their_category_and_lose_their_secrets() {
        let r = redactor("s3cret-canary");
        let wire = pb::Error {
            kind: pb::error::Kind::Rejected.into(),
            message: "bad client s3cret-canary".into(),
            step: "token".into(),
            reject_kind: pb::RejectKind::Credential.into(),
            code: "invalid_client".into(),
            retry_after_ms: 0,
        };
        let e = provider_error("k", wire, &r, Duration::from_secs(1));
        assert!(e.rejects_credential(), "{e:?}");
        assert_eq!(e.oauth_code(), Some("invalid_client"));
        assert!(!format!("{e} {e:?}").contains("canary"), "{e}");

        let transient = pb::Error {
            kind: pb::error::Kind::Transient.into(),
            retry_after_ms: 7_200_000,
            ..Default::default()
        };
        let e = provider_error("k", transient, &r, Duration::from_secs(1));
        assert_eq!(e.retry_after(), Some(MAX_RETRY_AFTER));
        let unknown = pb::Error {
            kind: 99,
            ..Default::default()
        };
        assert!(provider_error("k", unknown, &r, Duration::from_secs(1)).is_transient());
    }

    #[test]
    fn sdk_errors_round_trip_through_the_wire() {
        let r = Redactor::new([1; 32]);
        for e in [
            ProviderError::config("base_url: missing"),
            ProviderError::Rejected {
                kind: RejectKind::Scope,
                step: "token".into(),
                code: "invalid_scope".into(),
                description: None,
            },
            ProviderError::Transient {
                step: "token".into(),
                message: "HTTP 503".into(),
                retry_after: Some(Duration::from_secs(4)),
            },
            ProviderError::TimedOut {
                step: "token".into(),
                after: Duration::from_secs(2),
            },
            ProviderError::Unsupported("revocation".into()),
        ] {
            let back = provider_error("k", error(&e, &r), &r, Duration::from_secs(2));
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} -> {back:?}"
            );
            assert_eq!(back.retry_after(), e.retry_after());
            assert_eq!(back.oauth_code(), e.oauth_code());
        }
    }

    #[test]
    fn requests_are_checked() {
        let ok = pb::SendRequest {
            method: "post".into(),
            url: "https://idp.example.com/token".into(),
            headers: vec![pb::Header {
                name: "Authorization".into(),
                value: "Basic abc".into(),
            }],
            body: Some(pb::send_request::Body::Json("{\"a\":1}".into())),
            ..Default::default()
        };
        let req = upstream_request(&ok).unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert!(req.headers.iter().any(|(n, _)| n == "authorization"));
        assert!(req.headers.iter().any(|(n, _)| n == "accept"));
        for (bad, expected) in [
            (
                pb::SendRequest {
                    method: "TRACE".into(),
                    ..ok.clone()
                },
                "method",
            ),
            (
                pb::SendRequest {
                    url: "file:///etc/passwd".into(),
                    ..ok.clone()
                },
                "http(s) URL",
            ),
            (
                pb::SendRequest {
                    headers: vec![pb::Header {
                        name: "bad name".into(),
                        value: "x".into(),
                    }],
                    ..ok.clone()
                },
                "header",
            ),
            (
                pb::SendRequest {
                    body: Some(pb::send_request::Body::Json("{".into())),
                    ..ok.clone()
                },
                "not JSON",
            ),
        ] {
            let e = upstream_request(&bad).err().unwrap_or_default();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn tokens_are_bounded_and_learnt() {
        let r = Redactor::new([2; 32]);
        let token = pb::Token {
            access_token: "at-canary-1".into(),
            refresh_token: "rt-canary-1".into(),
            expires_in_seconds: 60,
            ..Default::default()
        };
        let t = issued_token("k", token, &r).unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(t.token_type, "Bearer");
        assert!(!r.scrub("x rt-canary-1 at-canary-1").contains("canary"));
        assert!(issued_token("k", pb::Token::default(), &r).is_err());
        let flood = pb::Token {
            access_token: "a".into(),
            metadata: (0..100).map(|i| (i.to_string(), "v".into())).collect(),
            ..Default::default()
        };
        assert!(issued_token("k", flood, &r).is_err());
    }
}
