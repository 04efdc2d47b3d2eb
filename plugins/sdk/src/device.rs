//! RFC 8628 device authorization grant wire format: the device authorization response
//! (§3.2), the device access token request (§3.4) and the polling answers (§3.5):
//! `authorization_pending` and `slow_down` keep polling, `access_denied` and
//! `expired_token` end it.
//!
//! The device code is the poller's secret: it is registered with the call's redactor as
//! soon as it is read (events already show it as a digest, by its field name). The user
//! code is meant to be shown to the user and is not secret.

use crate::error::ProviderError;
use crate::http::{UpstreamCall, UpstreamResponse};
use crate::oauth::TokenResponse;
use crate::oauth::{check_status, parse_expires_in, parse_json_object, parse_token_response};
use crate::secret::Secret;
use serde_json::{Map, Value};
use std::time::Duration;
use url::Url;

/// `grant_type` of the device access token request (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The polling interval when the server names none (§3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What every `slow_down` adds to the interval, for this and all later polls (§3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The shortest interval honoured: a server answering `interval = 0` does not make the
/// gateway poll in a loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// §3.5: the user has not acted yet; poll again after the interval.
pub const AUTHORIZATION_PENDING: &str = "authorization_pending";
/// §3.5: poll again, with the interval raised by [`SLOW_DOWN_STEP`].
pub const SLOW_DOWN: &str = "slow_down";
/// §3.5: the user refused; the device code is dead.
pub const ACCESS_DENIED: &str = "access_denied";
/// §3.5: the device code expired before the user acted.
pub const EXPIRED_TOKEN: &str = "expired_token";

/// A device authorization as the server granted it (§3.2).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// The poller's secret; never shown.
    pub device_code: Secret,
    /// What the user types at `verification_uri`.
    pub user_code: String,
    pub verification_uri: Url,
    /// `verification_uri` with the user code in it, when the server gives one (§3.3.1).
    pub verification_uri_complete: Option<Url>,
    /// How long the device code and the user code are valid.
    pub expires_in: Duration,
    /// How long to wait between polls (at least [`MIN_INTERVAL`]).
    pub interval: Duration,
}

/// One poll's answer that does not end the flow, or the tokens that do.
#[derive(Debug, Clone)]
pub enum DevicePoll<T> {
    /// The user approved: the token response.
    Issued(T),
    /// `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
}

impl<T> DevicePoll<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> DevicePoll<U> {
        match self {
            Self::Issued(t) => DevicePoll::Issued(f(t)),
            Self::Pending => DevicePoll::Pending,
            Self::SlowDown => DevicePoll::SlowDown,
        }
    }
}

/// The form of the device access token request (§3.4), without client authentication.
pub fn device_token_form(device_code: &Secret) -> Vec<(String, String)> {
    vec![
        ("grant_type".to_owned(), DEVICE_CODE_GRANT.to_owned()),
        ("device_code".to_owned(), device_code.expose().to_owned()),
    ]
}

fn required_string(
    step: &str,
    obj: &mut Map<String, Value>,
    name: &str,
) -> Result<String, ProviderError> {
    match obj.remove(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        _ => Err(ProviderError::config(format!(
            "{step}: the device authorization response has no `{name}`; check that the URL is the provider's device authorization endpoint (RFC 8628)"
        ))),
    }
}

fn http_url(raw: &str) -> Option<Url> {
    Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
}

/// Classifies and parses a device authorization response (§3.2; errors as RFC 6749 §5.2).
pub fn parse_device_authorization(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<DeviceAuthorization, ProviderError> {
    check_status(step, resp, call)?;
    let mut obj = parse_json_object(step, resp)?;
    let device_code = Secret::from(required_string(step, &mut obj, "device_code")?);
    call.redactor().learn(&device_code);
    let user_code = required_string(step, &mut obj, "user_code")?;
    // Some providers (Google) spell it `verification_url`.
    let uri = match obj.remove("verification_uri") {
        Some(v) => Some(v),
        None => obj.remove("verification_url"),
    };
    let verification_uri = uri
        .as_ref()
        .and_then(Value::as_str)
        .and_then(http_url)
        .ok_or_else(|| {
            ProviderError::config(format!(
                "{step}: the device authorization response has no http(s) `verification_uri`; check that the URL is the provider's device authorization endpoint (RFC 8628)"
            ))
        })?;
    let verification_uri_complete = obj
        .remove("verification_uri_complete")
        .as_ref()
        .and_then(Value::as_str)
        .and_then(http_url);
    let expires_in = obj
        .remove("expires_in")
        .as_ref()
        .and_then(parse_expires_in)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ProviderError::transient(
                step,
                "the device authorization response has no positive `expires_in`",
            )
        })?;
    let interval = match obj.remove("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL,
        Some(v) => parse_expires_in(&v).ok_or_else(|| {
            ProviderError::transient(
                step,
                format!("malformed `interval` in the device authorization response: {v}"),
            )
        })?,
    };
    Ok(DeviceAuthorization {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval: interval.max(MIN_INTERVAL),
    })
}

/// The OAuth error code of a 4xx answer, if its body is an RFC 6749 §5.2 error.
fn error_code(resp: &UpstreamResponse) -> Option<String> {
    if !(400..500).contains(&resp.status) {
        return None;
    }
    let v: Value = serde_json::from_slice(&resp.body).ok()?;
    v.get("error")?.as_str().map(str::to_owned)
}

/// Classifies a device access token response (§3.5): pending and slow-down are answers,
/// tokens are a success; every other refusal is an error (see [`is_denied`] and
/// [`is_expired`]), classified as any token endpoint error.
pub fn parse_device_token_response(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<DevicePoll<TokenResponse>, ProviderError> {
    match error_code(resp).as_deref() {
        Some(AUTHORIZATION_PENDING) => return Ok(DevicePoll::Pending),
        Some(SLOW_DOWN) => return Ok(DevicePoll::SlowDown),
        _ => {}
    }
    parse_token_response(step, resp, call).map(DevicePoll::Issued)
}

/// True when the user refused the authorization (`access_denied`).
pub fn is_denied(e: &ProviderError) -> bool {
    e.oauth_code() == Some(ACCESS_DENIED)
}

/// True when the device code expired (`expired_token`).
pub fn is_expired(e: &ProviderError) -> bool {
    e.oauth_code() == Some(EXPIRED_TOKEN)
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

    #[test]
    fn parses_the_rfc_example_and_learns_the_device_code() {
        let c = call();
        let a = parse_device_authorization(
            "device_authorization",
            &resp(
                200,
                r#"{"device_code":"canary-GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS","user_code":"WDJB-MJHT","verification_uri":"https://example.com/device","verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT","expires_in":1800,"interval":5}"#,
            ),
            &c,
        )
        .unwrap();
        assert_eq!(a.user_code, "WDJB-MJHT");
        assert_eq!(a.verification_uri.as_str(), "https://example.com/device");
        assert_eq!(
            a.verification_uri_complete.as_ref().unwrap().as_str(),
            "https://example.com/device?user_code=WDJB-MJHT"
        );
        assert_eq!(
            (a.expires_in, a.interval),
            (Duration::from_secs(1800), Duration::from_secs(5))
        );
        let scrubbed = c
            .redactor()
            .scrub(&format!("x {} y", a.device_code.expose()));
        assert!(!scrubbed.contains("canary"), "{scrubbed}");
        assert!(!format!("{a:?}").contains("canary"));
    }

    #[test]
    fn interval_defaults_to_five_seconds_and_is_at_least_one() {
        let body = |interval: &str| {
            format!(
                r#"{{"device_code":"d","user_code":"u","verification_url":"https://g.co/device","expires_in":"600"{interval}}}"#
            )
        };
        let parse = |b: String| {
            parse_device_authorization("device_authorization", &resp(200, &b), &call()).unwrap()
        };
        assert_eq!(parse(body("")).interval, DEFAULT_INTERVAL);
        assert_eq!(parse(body(r#","interval":0"#)).interval, MIN_INTERVAL);
        let google = parse(body(""));
        assert_eq!(google.verification_uri.as_str(), "https://g.co/device");
        assert!(google.verification_uri_complete.is_none());
    }

    #[test]
    fn a_response_that_is_no_device_authorization_names_what_is_missing() {
        for (body, missing) in [
            (r#"{"user_code":"u"}"#, "device_code"),
            (
                r#"{"device_code":"d","verification_uri":"https://x"}"#,
                "user_code",
            ),
            (
                r#"{"device_code":"d","user_code":"u","verification_uri":"javascript:x"}"#,
                "verification_uri",
            ),
        ] {
            let e = parse_device_authorization("device_authorization", &resp(200, body), &call())
                .unwrap_err();
            assert!(matches!(e, ProviderError::InvalidConfiguration(_)), "{e}");
            assert!(e.to_string().contains(missing), "{e}");
        }
        let e = parse_device_authorization(
            "device_authorization",
            &resp(400, r#"{"error":"invalid_client"}"#),
            &call(),
        )
        .unwrap_err();
        assert!(e.rejects_credential(), "{e}");
    }

    #[test]
    fn polling_answers_are_classified() {
        let c = call();
        let poll =
            |status, body| parse_device_token_response("device_token", &resp(status, body), &c);
        assert!(matches!(
            poll(400, r#"{"error":"authorization_pending"}"#),
            Ok(DevicePoll::Pending)
        ));
        assert!(matches!(
            poll(400, r#"{"error":"slow_down"}"#),
            Ok(DevicePoll::SlowDown)
        ));
        let denied = poll(400, r#"{"error":"access_denied"}"#).unwrap_err();
        assert!(is_denied(&denied) && !is_expired(&denied), "{denied}");
        let expired = poll(400, r#"{"error":"expired_token"}"#).unwrap_err();
        assert!(is_expired(&expired), "{expired}");
        assert!(poll(503, r#"{"error":"slow_down"}"#)
            .unwrap_err()
            .is_transient());
        match poll(
            200,
            r#"{"access_token":"canary-at","refresh_token":"canary-rt","expires_in":60}"#,
        ) {
            Ok(DevicePoll::Issued(t)) => assert!(t.refresh_token.is_some()),
            other => panic!("{other:?}"),
        }
        let form = device_token_form(&Secret::from("dc"));
        assert_eq!(form[0].1, DEVICE_CODE_GRANT);
    }
}
