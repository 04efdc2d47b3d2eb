//! JWT assertions (RFC 7523): client authentication with `private_key_jwt` (§2.2, OpenID
//! Connect Core §9) and the JWT bearer authorization grant (§2.1).
//!
//! Every assertion is signed fresh, with a unique `jti` (128 random bits) and a short
//! lifetime, so an assertion is never reused and a captured one soon stops working. The
//! signed assertion is a secret: it is registered with the call's redactor before it is
//! put on the wire, so events show its digest.

use crate::clock;
use crate::error::ProviderError;
use crate::http::UpstreamCall;
use crate::secret::Secret;
use crate::signing::SigningKey;
use base64::Engine;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// `client_assertion_type` for a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long an assertion is valid unless configured otherwise: long enough for clock skew
/// and one slow request, short enough that a leaked one is soon useless.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Claims the signer sets itself; configured extra claims must not override them.
pub const REGISTERED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "iat", "nbf", "jti"];

/// What goes into one assertion besides the times and the `jti`.
#[derive(Debug, Clone)]
pub struct AssertionClaims<'a> {
    pub issuer: &'a str,
    /// `None` leaves `sub` out (a Google service account acting as itself).
    pub subject: Option<&'a str>,
    pub audience: &'a str,
    pub lifetime: Duration,
    /// Further claims (e.g. `scope`); never one of [`REGISTERED_CLAIMS`].
    pub extra: &'a Map<String, Value>,
}

/// A unique JWT id: 128 random bits, base64url.
pub fn new_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The claim set of one assertion issued at `now` (seconds since the epoch).
pub fn claim_set(claims: &AssertionClaims<'_>, now: u64) -> Map<String, Value> {
    let mut set = Map::new();
    for (k, v) in claims.extra {
        if !REGISTERED_CLAIMS.contains(&k.as_str()) {
            set.insert(k.clone(), v.clone());
        }
    }
    set.insert("iss".into(), claims.issuer.into());
    if let Some(sub) = claims.subject {
        set.insert("sub".into(), sub.into());
    }
    set.insert("aud".into(), claims.audience.into());
    set.insert("iat".into(), now.into());
    // A lifetime under a second would be expired on arrival.
    let lifetime = claims.lifetime.as_secs().max(1);
    set.insert("exp".into(), (now + lifetime).into());
    set.insert("jti".into(), new_jti().into());
    set
}

/// Signs a fresh assertion and registers it with the call's redactor.
pub fn sign_assertion(
    call: &UpstreamCall,
    key: &SigningKey,
    claims: &AssertionClaims<'_>,
) -> Result<Secret, ProviderError> {
    let assertion = key.sign(&claim_set(claims, clock::unix_now()))?;
    call.redactor().learn(&assertion);
    Ok(assertion)
}

/// `private_key_jwt` client authentication: `iss` = `sub` = the client id.
#[derive(Debug, Clone)]
pub struct ClientAssertion {
    pub client_id: String,
    pub key: Arc<SigningKey>,
    pub lifetime: Duration,
}

impl ClientAssertion {
    /// The form fields that authenticate the client to `audience` (the token endpoint URL,
    /// or the issuer where the provider wants that): `client_id`, `client_assertion_type`
    /// and a freshly signed `client_assertion`.
    pub fn form_fields(
        &self,
        call: &UpstreamCall,
        audience: &str,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        let extra = Map::new();
        let assertion = sign_assertion(
            call,
            &self.key,
            &AssertionClaims {
                issuer: &self.client_id,
                subject: Some(&self.client_id),
                audience,
                lifetime: self.lifetime,
                extra: &extra,
            },
        )?;
        Ok(vec![
            ("client_id".into(), self.client_id.clone()),
            ("client_assertion_type".into(), CLIENT_ASSERTION_TYPE.into()),
            ("client_assertion".into(), assertion.expose().to_owned()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> UpstreamCall {
        crate::http::test_call()
    }

    fn ec_signer() -> Arc<SigningKey> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let pem = crate::signing::tests::ec_key()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string();
        Arc::new(SigningKey::parse("private_key", &Secret::from(pem), None, Some("k")).unwrap())
    }

    #[test]
    fn claims_are_complete_and_registered_ones_cannot_be_overridden() {
        let extra = serde_json::json!({"scope": "a b", "iss": "forged", "exp": 1});
        let c = AssertionClaims {
            issuer: "svc@example.com",
            subject: None,
            audience: "https://idp/token",
            lifetime: Duration::from_secs(60),
            extra: extra.as_object().unwrap(),
        };
        let set = claim_set(&c, 1_000);
        assert_eq!(set["iss"], "svc@example.com");
        assert_eq!(set["aud"], "https://idp/token");
        assert_eq!(set["scope"], "a b");
        assert_eq!(
            (set["iat"].as_u64(), set["exp"].as_u64()),
            (Some(1_000), Some(1_060))
        );
        assert!(!set.contains_key("sub"));
        assert_eq!(
            set["jti"].as_str().unwrap().len(),
            22,
            "128 bits, base64url"
        );
    }

    #[test]
    fn two_client_assertions_differ_in_jti_and_are_redacted() {
        let call = call();
        let a = ClientAssertion {
            client_id: "pk-client".into(),
            key: ec_signer(),
            lifetime: DEFAULT_LIFETIME,
        };
        let first = a.form_fields(&call, "https://idp/token").unwrap();
        let second = a.form_fields(&call, "https://idp/token").unwrap();
        assert_eq!(first[1].1, CLIENT_ASSERTION_TYPE);
        let claims = |f: &[(String, String)]| crate::jwt::claims(&f[2].1).unwrap();
        let (c1, c2) = (claims(&first), claims(&second));
        assert_ne!(c1["jti"], c2["jti"], "every assertion has its own jti");
        assert_eq!(
            (&c1["iss"], &c1["sub"]),
            (&"pk-client".into(), &"pk-client".into())
        );
        assert_eq!(
            c1["exp"].as_u64().unwrap() - c1["iat"].as_u64().unwrap(),
            60
        );
        for f in [&first, &second] {
            let scrubbed = call.redactor().scrub(&format!("body {}", f[2].1));
            assert!(
                !scrubbed.contains(&f[2].1),
                "the assertion is a known secret"
            );
        }
    }
}
