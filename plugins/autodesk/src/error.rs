//! Classification of failed APS authentication answers.
//!
//! APS answers grant errors in RFC 6749 shape (`{"error": "invalid_grant", ...}`), which the
//! SDK classifies, but client, scope and rate errors in its own shape:
//! `{"developerMessage": "...", "userMessage": "...", "errorCode": "AUTH-001", "more info": "..."}`
//! (APS OAuth v2 developer's guide, "Error Handling"). Without this module those would all
//! look like malformed bodies and be retried forever.

use authgate_plugin_sdk::oauth::check_status;
use authgate_plugin_sdk::redact::truncate_chars;
use authgate_plugin_sdk::{ProviderError, RejectKind, UpstreamCall, UpstreamResponse};
use serde_json::Value;

/// Fails with the right category for anything but a 2xx.
pub(crate) fn check_aps_status(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<(), ProviderError> {
    let status = resp.status;
    // Successes, redirects, 5xx, 408 and 429 follow the SDK's rules.
    if !(400..500).contains(&status) || status == 408 || status == 429 {
        return check_status(step, resp, call);
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&resp.body) else {
        return check_status(step, resp, call);
    };
    let Some(code) = body.get("errorCode").and_then(Value::as_str) else {
        // RFC 6749 bodies, and bodies in no known shape, are the SDK's to judge.
        return check_status(step, resp, call);
    };
    let redactor = call.redactor();
    let description = ["developerMessage", "userMessage"]
        .iter()
        .filter_map(|f| body.get(*f).and_then(Value::as_str))
        .find(|s| !s.trim().is_empty())
        .map(|s| truncate_chars(&redactor.scrub(s), 300));
    let kind = match code {
        // The client id/secret pair is wrong, lacks the API, or the trial ended: nothing but
        // a change in the APS app or the settings helps.
        "AUTH-001" | "AUTH-002" | "AUTH-003" | "AUTH-005" | "AUTH-006" | "AUTH-012" | "ERR-004" => {
            RejectKind::Credential
        }
        "AUTH-004" | "AUTH-010" => RejectKind::Scope,
        // Rate limit and internal error under a 4xx status: retry later.
        "ERR-001" | "ERR-003" => {
            return Err(ProviderError::Transient {
                step: step.to_owned(),
                message: format!(
                    "APS answered HTTP {status} {}{}",
                    redactor.scrub(code),
                    description.map(|d| format!(": {d}")).unwrap_or_default()
                ),
                retry_after: resp.retry_after(),
            })
        }
        _ if status == 401 => RejectKind::Credential,
        _ => RejectKind::Request,
    };
    Err(ProviderError::Rejected {
        kind,
        step: step.to_owned(),
        code: redactor.scrub(code),
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::testing::Harness;
    use authgate_plugin_sdk::UpstreamLimits;

    fn check(status: u16, body: &str) -> ProviderError {
        let resp = UpstreamResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec().into(),
        };
        let h = Harness::new(Vec::new(), UpstreamLimits::default());
        check_aps_status("token", &resp, &h.call).unwrap_err()
    }

    fn aps(code: &str) -> String {
        format!(
            r#"{{"developerMessage":"m","userMessage":" ","errorCode":"{code}","more info":"u"}}"#
        )
    }

    #[test]
    fn aps_codes_are_classified() {
        for (status, code, kind) in [
            (403, "AUTH-001", RejectKind::Credential),
            (401, "AUTH-003", RejectKind::Credential),
            (400, "AUTH-004", RejectKind::Scope),
            (400, "AUTH-008", RejectKind::Request),
            (401, "AUTH-999", RejectKind::Credential),
            (400, "AUTH-999", RejectKind::Request),
        ] {
            match check(status, &aps(code)) {
                ProviderError::Rejected {
                    kind: k,
                    code: c,
                    description,
                    ..
                } => {
                    assert_eq!((k, c.as_str()), (kind, code));
                    assert_eq!(description.as_deref(), Some("m"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(check(400, &aps("ERR-001")).is_transient());
    }

    #[test]
    fn rfc6749_and_unknown_bodies_follow_the_sdk() {
        assert!(check(400, r#"{"error":"invalid_grant"}"#).rejects_credential());
        assert!(check(400, "<html/>").is_transient());
        assert!(check(503, &aps("AUTH-001")).is_transient());
    }
}
