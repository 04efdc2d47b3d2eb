//! Reads claims from a JWT without verifying it: only to learn a token's lifetime when the
//! provider sent no `expires_in`. Trust decisions are never based on this.

use base64::Engine;
use serde_json::Value;

/// The `exp` claim (seconds since the epoch) of a compact JWS, if the string is one.
pub fn expiry(token: &str) -> Option<u64> {
    claims(token)?.get("exp")?.as_f64().map(|f| f as u64)
}

/// The payload of a compact JWS as JSON, if the string is one.
pub fn claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn make(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"none"}"#), e.encode(claims))
    }

    #[test]
    fn reads_exp() {
        assert_eq!(
            expiry(&make(r#"{"exp":1700000000,"sub":"x"}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(expiry(&make(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry("a.b.c.d"), None);
        assert_eq!(expiry("a.!!!.c"), None);
    }
}
