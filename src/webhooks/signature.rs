//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the secret's bytes (the base64 after
//! the `whsec_` prefix).

use authgate_plugin_sdk::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key sizes the spec allows (24 to 64 bytes).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A webhook's signing key. Never printed.
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a secret as the spec writes it: `whsec_` and the base64 of 24 to 64 random
    /// bytes. The error says what to give, never the value.
    pub fn parse(secret: &Secret) -> Result<Self, String> {
        let text = secret.expose().trim();
        let Some(b64) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "must start with `{SECRET_PREFIX}` followed by the base64 of 24 to 64 random bytes (Standard Webhooks); generate one with `echo {SECRET_PREFIX}$(openssl rand -base64 32)`"
            ));
        };
        let key = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after `{SECRET_PREFIX}` is not standard base64"))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "decodes to {} bytes; the key must be 24 to 64 bytes",
                key.len()
            ));
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, message_id: &str, timestamp_s: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specification_example() {
        // The example of the Standard Webhooks specification (and Svix's documentation).
        let key =
            SigningKey::parse(&Secret::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        for bad in ["canary-no-prefix", "whsec_!!canary", "whsec_c2hvcnQ="] {
            let e = SigningKey::parse(&Secret::from(bad)).unwrap_err();
            assert!(!e.contains("canary") && !e.contains(bad), "{e}");
        }
        assert_eq!(format!("{:?}", SigningKey(vec![1; 32])), "SigningKey(..)");
    }
}
