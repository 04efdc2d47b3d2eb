//! RFC 8693 token exchange wire format: the request a client sends to trade a token it was
//! given (the *subject token*, e.g. a user's access token) for a token meant for another
//! audience, and the answer, whose `issued_token_type` is required.
//!
//! Failures are classified here for every plugin alike, and differently from a token
//! request of the credential's own: a refused subject or actor token (`invalid_request`,
//! `invalid_grant`) is the caller's problem ([`RejectKind::Subject`]), a refused audience
//! or resource (`invalid_target`) too ([`RejectKind::Target`]); only `invalid_client` says
//! the credential itself is bad, and `unauthorized_client` (the client may not use this
//! grant) is a settings problem that leaves the credential usable for its own tokens.

use crate::error::{ProviderError, RejectKind};
use crate::http::{UpstreamCall, UpstreamResponse};
use crate::oauth::{parse_token_response, TokenResponse};
use crate::scope::ScopeSet;
use crate::secret::Secret;
use serde_json::Value;

/// The `grant_type` of a token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type identifiers (RFC 8693 §3).
pub mod token_type {
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    pub const SAML1: &str = "urn:ietf:params:oauth:token-type:saml1";
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
}

/// Form parameters a token exchange sets itself (a plugin's extra parameters must not).
pub const EXCHANGE_PARAMS: &[&str] = &[
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

/// What the gateway asks to exchange. `Debug` shows no token (they are [`Secret`]s).
#[derive(Debug, Clone)]
pub struct TokenExchange {
    pub subject_token: Secret,
    pub subject_token_type: String,
    /// The acting party's token (delegation, RFC 8693 §1.1), with its type.
    pub actor_token: Option<(Secret, String)>,
    /// Logical names of the target services (`audience`, repeated).
    pub audience: Vec<String>,
    /// Absolute URIs of the target services (`resource`, repeated; RFC 8707).
    pub resource: Vec<String>,
    pub scopes: ScopeSet,
    pub requested_token_type: Option<String>,
}

impl TokenExchange {
    /// The request form (RFC 8693 §2.1) without client authentication. The scopes go in one
    /// `scope` parameter joined by `scope_separator`, when there are any and `send_scope`.
    pub fn form(&self, scope_separator: &str, send_scope: bool) -> Vec<(String, String)> {
        let mut form = vec![
            ("grant_type".to_owned(), TOKEN_EXCHANGE_GRANT.to_owned()),
            (
                "subject_token".to_owned(),
                self.subject_token.expose().to_owned(),
            ),
            (
                "subject_token_type".to_owned(),
                self.subject_token_type.clone(),
            ),
        ];
        if let Some((token, ty)) = &self.actor_token {
            form.push(("actor_token".into(), token.expose().to_owned()));
            form.push(("actor_token_type".into(), ty.clone()));
        }
        for a in &self.audience {
            form.push(("audience".into(), a.clone()));
        }
        for r in &self.resource {
            form.push(("resource".into(), r.clone()));
        }
        if send_scope && !self.scopes.is_empty() {
            form.push(("scope".into(), self.scopes.join(scope_separator)));
        }
        if let Some(ty) = &self.requested_token_type {
            form.push(("requested_token_type".into(), ty.clone()));
        }
        form
    }

    /// Makes the call's redactor learn the tokens sent, so no event or message shows them
    /// (the form's field names are redacted anyway; this also covers an echo elsewhere).
    pub fn register_secrets(&self, call: &UpstreamCall) {
        call.redactor().learn(&self.subject_token);
        if let Some((token, _)) = &self.actor_token {
            call.redactor().learn(token);
        }
    }
}

/// A successful exchange: the RFC 6749 fields (`access_token` is the issued token, whatever
/// its type) and the issued token's type.
#[derive(Debug, Clone)]
pub struct ExchangeResponse {
    pub token: TokenResponse,
    pub issued_token_type: String,
}

/// How a refusal of a token exchange is to be read (see the module doc).
pub fn exchange_reject_kind(code: &str) -> RejectKind {
    match code {
        "invalid_client" => RejectKind::Credential,
        "invalid_request" | "invalid_grant" => RejectKind::Subject,
        "invalid_target" => RejectKind::Target,
        "invalid_scope" => RejectKind::Scope,
        _ => RejectKind::Request,
    }
}

/// Classifies and parses a token exchange answer (RFC 8693 §2.2). A refresh token in it is
/// learned by the redactor and dropped: it belongs to the user's exchange, never to the
/// credential.
pub fn parse_exchange_response(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<ExchangeResponse, ProviderError> {
    let mut token = match parse_token_response(step, resp, call) {
        Ok(t) => t,
        Err(ProviderError::Rejected {
            step,
            code,
            description,
            ..
        }) => {
            return Err(ProviderError::Rejected {
                kind: exchange_reject_kind(&code),
                step,
                code,
                description,
            })
        }
        Err(e) => return Err(e),
    };
    token.refresh_token = None;
    let issued_token_type = match token.extra.remove("issued_token_type") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => {
            return Err(ProviderError::transient(
                step,
                "token exchange answer has no issued_token_type (RFC 8693 §2.2.1 requires it)",
            ))
        }
    };
    Ok(ExchangeResponse {
        token,
        issued_token_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> UpstreamCall {
        crate::http::test_call()
    }

    fn resp(status: u16, body: &str) -> UpstreamResponse {
        crate::http::test_response(status, "application/json", body)
    }

    fn exchange() -> TokenExchange {
        TokenExchange {
            subject_token: Secret::from("subject-canary-1"),
            subject_token_type: token_type::ACCESS_TOKEN.into(),
            actor_token: Some((Secret::from("actor-canary-2"), token_type::JWT.into())),
            audience: vec!["api-a".into(), "api-b".into()],
            resource: vec!["https://api.example.com/".into()],
            scopes: ScopeSet::new(["write", "read"]),
            requested_token_type: Some(token_type::ACCESS_TOKEN.into()),
        }
    }

    #[test]
    fn form_has_every_rfc8693_parameter_and_debug_no_token() {
        let form = exchange().form(",", true);
        let get = |k: &str| -> Vec<&str> {
            form.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("grant_type"), [TOKEN_EXCHANGE_GRANT]);
        assert_eq!(get("subject_token"), ["subject-canary-1"]);
        assert_eq!(get("subject_token_type"), [token_type::ACCESS_TOKEN]);
        assert_eq!(get("actor_token"), ["actor-canary-2"]);
        assert_eq!(get("actor_token_type"), [token_type::JWT]);
        assert_eq!(get("audience"), ["api-a", "api-b"]);
        assert_eq!(get("resource"), ["https://api.example.com/"]);
        assert_eq!(get("scope"), ["read,write"]);
        assert_eq!(get("requested_token_type"), [token_type::ACCESS_TOKEN]);
        assert!(exchange()
            .form(" ", false)
            .iter()
            .all(|(n, _)| n != "scope"));
        let debug = format!("{:?}", exchange());
        assert!(!debug.contains("canary"), "{debug}");
    }

    #[test]
    fn the_tokens_sent_are_redacted() {
        let c = call();
        exchange().register_secrets(&c);
        let text = c
            .redactor()
            .scrub("echo subject-canary-1 and actor-canary-2");
        assert!(!text.contains("canary"), "{text}");
        let body = c.redactor().redact_form(&exchange().form(" ", true));
        assert!(!body.contains("canary"), "{body}");
        assert!(body.contains("subject_token_type=urn"), "{body}");
    }

    #[test]
    fn issued_token_type_is_required_and_a_refresh_token_dropped() {
        let c = call();
        let ok = parse_exchange_response(
            "token_exchange",
            &resp(
                200,
                r#"{"access_token":"issued","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":60,"refresh_token":"user-rt"}"#,
            ),
            &c,
        )
        .unwrap();
        assert_eq!(ok.issued_token_type, token_type::ACCESS_TOKEN);
        assert!(ok.token.refresh_token.is_none());
        assert!(!c.redactor().scrub("user-rt issued").contains("user-rt"));
        let e = parse_exchange_response(
            "token_exchange",
            &resp(200, r#"{"access_token":"issued","token_type":"Bearer"}"#),
            &c,
        )
        .unwrap_err();
        assert!(
            e.is_transient() && e.to_string().contains("issued_token_type"),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_whose_problem_it_is() {
        for (code, kind) in [
            ("invalid_client", RejectKind::Credential),
            ("invalid_grant", RejectKind::Subject),
            ("invalid_request", RejectKind::Subject),
            ("invalid_target", RejectKind::Target),
            ("invalid_scope", RejectKind::Scope),
            ("unauthorized_client", RejectKind::Request),
            ("unsupported_grant_type", RejectKind::Request),
        ] {
            let c = call();
            exchange().register_secrets(&c);
            let body = format!(
                r#"{{"error":"{code}","error_description":"subject-canary-1 is not good"}}"#
            );
            let e = parse_exchange_response("token_exchange", &resp(400, &body), &c).unwrap_err();
            match &e {
                ProviderError::Rejected { kind: k, .. } => assert_eq!(*k, kind, "{code}"),
                other => panic!("{code}: {other:?}"),
            }
            assert!(!e.to_string().contains("canary"), "{e}");
            assert_eq!(e.rejects_credential(), code == "invalid_client");
        }
    }
}
