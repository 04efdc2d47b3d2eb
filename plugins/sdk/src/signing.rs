//! Private keys for signing JWTs (RS256, PS256, ES256), read from PEM (PKCS#1, PKCS#8,
//! SEC1) or a JWK, and the signature itself (the `jsonwebtoken` crate, RustCrypto backend).
//!
//! Parsing happens once, when a provider is built; an error names the settings field and
//! says what to put there, and never echoes key material. A [`SigningKey`] prints only its
//! algorithm and key id.

use crate::error::ProviderError;
use crate::secret::Secret;
use crate::settings::SettingsError;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Map, Value};
use std::fmt;

/// RSA keys shorter than this are refused (RFC 7518 §3.3 requires 2048 bits).
const MIN_RSA_BITS: usize = 2048;

/// The signature algorithms a key may be used with.
pub const ALGORITHMS: &str = r#""RS256", "PS256" (RSA keys) or "ES256" (P-256 keys)"#;

/// A parsed private key bound to one JWS algorithm.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

enum Parsed {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ec(p256::SecretKey),
}

/// What a JWK may tell beyond the key itself.
#[derive(Default)]
struct JwkHints {
    kid: Option<String>,
    alg: Option<String>,
}

impl SigningKey {
    /// Parses `material` (PEM or JWK text) from the settings field `field`. `alg` (e.g.
    /// "PS256") and `kid` override what a JWK says; without either, RSA keys sign RS256 and
    /// P-256 keys ES256.
    pub fn parse(
        field: &str,
        material: &Secret,
        alg: Option<&str>,
        kid: Option<&str>,
    ) -> Result<Self, SettingsError> {
        let text = material.expose().trim();
        let (parsed, hints) = if text.starts_with('{') {
            parse_jwk(field, text)?
        } else if text.contains("-----BEGIN") {
            // Keys passed through environment variables often arrive with `\n` escaped.
            (
                parse_pem(field, &text.replace("\\n", "\n"))?,
                JwkHints::default(),
            )
        } else {
            return Err(SettingsError(format!(
                "`{field}` is neither a PEM private key (-----BEGIN PRIVATE KEY-----) nor a JWK ({{\"kty\": ...}}); give the private key file as a ${{file:PATH}} reference"
            )));
        };
        let alg = choose_alg(field, &parsed, alg.or(hints.alg.as_deref()))?;
        let key = match &parsed {
            Parsed::Rsa(k) => {
                let der = k.to_pkcs1_der().map_err(|_| unusable(field, "RSA"))?;
                EncodingKey::from_rsa_der(der.as_bytes())
            }
            Parsed::Ec(k) => {
                let der = k.to_pkcs8_der().map_err(|_| unusable(field, "P-256"))?;
                EncodingKey::from_ec_der(der.as_bytes())
            }
        };
        let kid = kid.map(str::to_owned).or(hints.kid);
        if kid.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(SettingsError(format!(
                "the key id for `{field}` is empty; set the `kid` the provider registered, or leave it out"
            )));
        }
        Ok(Self { alg, kid, key })
    }

    /// The JWS `alg`, e.g. `RS256`.
    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            _ => "RS256",
        }
    }

    /// The `kid` header sent with every signature, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Signs `claims` as a compact JWS (`typ` JWT). The result is a secret: whoever holds it
    /// can use it until it expires.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<Secret, ProviderError> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
            .map(Secret::from)
            .map_err(|e| {
                // The error kind only (no key material): e.g. an invalid key for the algorithm.
                ProviderError::config(format!(
                    "cannot sign a {} assertion: {:?}; check the private key settings",
                    self.algorithm(),
                    e.kind()
                ))
            })
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn unusable(field: &str, what: &str) -> SettingsError {
    SettingsError(format!(
        "`{field}` holds an {what} key that cannot be used for signing; generate a new one"
    ))
}

fn choose_alg(field: &str, key: &Parsed, wanted: Option<&str>) -> Result<Algorithm, SettingsError> {
    let refuse = |what: &str| {
        SettingsError(format!(
            "`signing_alg` must be {ALGORITHMS} and match the key in `{field}`; {what}"
        ))
    };
    match (key, wanted) {
        (Parsed::Rsa(_), None | Some("RS256")) => Ok(Algorithm::RS256),
        (Parsed::Rsa(_), Some("PS256")) => Ok(Algorithm::PS256),
        (Parsed::Ec(_), None | Some("ES256")) => Ok(Algorithm::ES256),
        (Parsed::Rsa(_), Some(other)) => Err(refuse(&format!(
            "the key is an RSA key, which signs RS256 or PS256, not `{other}`"
        ))),
        (Parsed::Ec(_), Some(other)) => Err(refuse(&format!(
            "the key is a P-256 key, which signs ES256, not `{other}`"
        ))),
    }
}

fn check_rsa(field: &str, key: rsa::RsaPrivateKey) -> Result<Parsed, SettingsError> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(SettingsError(format!(
            "`{field}` is a {bits}-bit RSA key; use at least {MIN_RSA_BITS} bits (RFC 7518 §3.3)"
        )));
    }
    Ok(Parsed::Rsa(Box::new(key)))
}

fn parse_pem(field: &str, text: &str) -> Result<Parsed, SettingsError> {
    let bad = |what: &str| {
        SettingsError(format!(
            "`{field}` has a PEM block that is not a valid {what}; give the unencrypted private key file"
        ))
    };
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(SettingsError(format!(
            "`{field}` is an encrypted private key; decrypt it (e.g. `openssl pkcs8 -in key.pem -nocrypt -topk8`) and store it as a secret file"
        )));
    }
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        let key = <rsa::RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(text)
            .map_err(|_| bad("PKCS#1 RSA private key"))?;
        return check_rsa(field, key);
    }
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return p256::SecretKey::from_sec1_pem(text)
            .map(Parsed::Ec)
            .map_err(|_| bad("SEC1 P-256 private key (other curves are not supported)"));
    }
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(text) {
            return check_rsa(field, key);
        }
        return p256::SecretKey::from_pkcs8_pem(text)
            .map(Parsed::Ec)
            .map_err(|_| bad("PKCS#8 RSA or P-256 private key"));
    }
    Err(SettingsError(format!(
        "`{field}` has no private key PEM block (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY); a certificate or public key cannot sign"
    )))
}

fn parse_jwk(field: &str, text: &str) -> Result<(Parsed, JwkHints), SettingsError> {
    let bad = |what: &str| SettingsError(format!("`{field}` is not a usable private JWK: {what}"));
    let value: Value = serde_json::from_str(text).map_err(|_| bad("it is not valid JSON"))?;
    // A JWK Set with exactly one key is accepted as that key.
    let jwk = match value.get("keys").and_then(Value::as_array) {
        Some(keys) if keys.len() == 1 => &keys[0],
        Some(_) => return Err(bad("a JWK Set must hold exactly one key")),
        None => &value,
    };
    let obj = jwk
        .as_object()
        .ok_or_else(|| bad("it is not a JSON object"))?;
    let text_field = |name: &str| obj.get(name).and_then(Value::as_str);
    let hints = JwkHints {
        kid: text_field("kid").map(str::to_owned),
        alg: text_field("alg").map(str::to_owned),
    };
    if text_field("d").is_none() {
        return Err(bad(
            "it has no `d`, so it is a public key; give the private key",
        ));
    }
    let parsed = match text_field("kty") {
        Some("RSA") => check_rsa(field, rsa_from_jwk(obj).map_err(|m| bad(&m))?)?,
        Some("EC") => match text_field("crv") {
            Some("P-256") => Parsed::Ec(ec_from_jwk(obj).map_err(|m| bad(&m))?),
            other => {
                return Err(bad(&format!(
                    "curve `{}` is not supported; use P-256",
                    other.unwrap_or("(none)")
                )))
            }
        },
        other => {
            return Err(bad(&format!(
                "`kty` must be \"RSA\" or \"EC\", not `{}`",
                other.unwrap_or("(none)")
            )))
        }
    };
    Ok((parsed, hints))
}

fn b64_param(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let raw = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("parameter `{name}` is missing"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .map_err(|_| format!("parameter `{name}` is not base64url"))
}

/// A P-256 key from `d`; `x` and `y`, when given, must be its public point.
fn ec_from_jwk(obj: &Map<String, Value>) -> Result<p256::SecretKey, String> {
    let key = p256::SecretKey::from_slice(&b64_param(obj, "d")?)
        .map_err(|_| "`d` is not a P-256 private key".to_owned())?;
    if obj.contains_key("x") || obj.contains_key("y") {
        let public: Value = serde_json::from_str(&key.public_key().to_jwk_string())
            .map_err(|_| "the P-256 key cannot be encoded".to_owned())?;
        if public.get("x") != obj.get("x") || public.get("y") != obj.get("y") {
            return Err("`x` and `y` are not the public point of `d`".to_owned());
        }
    }
    Ok(key)
}

fn rsa_from_jwk(obj: &Map<String, Value>) -> Result<rsa::RsaPrivateKey, String> {
    let int = |name: &str| b64_param(obj, name).map(|b| rsa::BigUint::from_bytes_be(&b));
    let primes = match (obj.get("p"), obj.get("q")) {
        (Some(_), Some(_)) => vec![int("p")?, int("q")?],
        _ => Vec::new(),
    };
    let key = rsa::RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
        .map_err(|_| "the RSA parameters do not form a valid key".to_owned())?;
    key.validate()
        .map_err(|_| "the RSA parameters do not form a valid key".to_owned())?;
    Ok(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::LineEnding;
    use rsa::traits::PrivateKeyParts as _;
    use std::sync::OnceLock;

    /// One 2048-bit RSA key for every test in the crate (generating one takes a moment).
    pub fn rsa_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
    }

    pub fn rsa_pem() -> Secret {
        Secret::from(rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string())
    }

    pub fn ec_key() -> p256::SecretKey {
        p256::SecretKey::random(&mut rand::thread_rng())
    }

    fn verify(token: &Secret, alg: Algorithm, key: &DecodingKey) -> Map<String, Value> {
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Map<String, Value>>(token.expose(), key, &v)
            .unwrap()
            .claims
    }

    fn claims() -> Map<String, Value> {
        serde_json::json!({"iss": "me"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn rsa_pem_signs_rs256_and_ps256() {
        let b = |n: &rsa::BigUint| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_bytes_be())
        };
        let dk = DecodingKey::from_rsa_components(&b(rsa_key().n()), &b(rsa_key().e())).unwrap();
        for (alg, want) in [(None, Algorithm::RS256), (Some("PS256"), Algorithm::PS256)] {
            let k = SigningKey::parse("private_key", &rsa_pem(), alg, Some("k1")).unwrap();
            let t = k.sign(&claims()).unwrap();
            assert_eq!(verify(&t, want, &dk)["iss"], "me");
            let header = jsonwebtoken::decode_header(t.expose()).unwrap();
            assert_eq!(header.kid.as_deref(), Some("k1"));
        }
        // PKCS#1 and `\n`-escaped PEM (as environment variables carry it) work too.
        let pkcs1 = rsa_key()
            .to_pkcs1_pem(LineEnding::LF)
            .unwrap()
            .replace('\n', "\\n");
        assert!(SigningKey::parse("private_key", &Secret::from(pkcs1), None, None).is_ok());
    }

    #[test]
    fn ec_keys_from_pem_sec1_and_jwk_sign_es256() {
        let key = ec_key();
        let public: jsonwebtoken::jwk::Jwk =
            serde_json::from_str(&key.public_key().to_jwk_string()).unwrap();
        let dk = DecodingKey::from_jwk(&public).unwrap();
        let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let sec1 = key.to_sec1_pem(LineEnding::LF).unwrap().to_string();
        let mut jwk: Value = serde_json::from_str(&key.to_jwk_string()).unwrap();
        jwk["kid"] = "from-jwk".into();
        for material in [pkcs8, sec1, jwk.to_string()] {
            let k = SigningKey::parse("private_key", &Secret::from(material), None, None).unwrap();
            assert_eq!(k.algorithm(), "ES256");
            let t = k.sign(&claims()).unwrap();
            assert_eq!(verify(&t, Algorithm::ES256, &dk)["iss"], "me");
        }
        let k =
            SigningKey::parse("private_key", &Secret::from(jwk.to_string()), None, None).unwrap();
        assert_eq!(k.kid(), Some("from-jwk"));
        assert_eq!(
            format!("{k:?}"),
            r#"SigningKey { alg: "ES256", kid: Some("from-jwk"), .. }"#
        );
    }

    #[test]
    fn rsa_jwk_is_accepted() {
        let k = rsa_key();
        let b = |n: &rsa::BigUint| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_bytes_be())
        };
        let jwk = serde_json::json!({
            "kty": "RSA", "alg": "PS256", "n": b(k.n()), "e": b(k.e()), "d": b(k.d()),
            "p": b(&k.primes()[0]), "q": b(&k.primes()[1]),
        });
        let s =
            SigningKey::parse("private_key", &Secret::from(jwk.to_string()), None, None).unwrap();
        assert_eq!(s.algorithm(), "PS256");
        let mut public = jwk.clone();
        public.as_object_mut().unwrap().remove("d");
        let e = SigningKey::parse("private_key", &Secret::from(public.to_string()), None, None)
            .unwrap_err();
        assert!(e.0.contains("public key"), "{e}");
    }

    #[test]
    fn bad_keys_name_the_field_and_never_echo_material() {
        let key = ec_key();
        let canary = "canary-not-a-key-1234";
        let truncated = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()[..80].to_owned();
        let cases = [
            (canary.to_owned(), "neither a PEM"),
            (
                format!("-----BEGIN PRIVATE KEY-----\n{canary}\n-----END PRIVATE KEY-----"),
                "not a valid",
            ),
            (truncated, "not a valid"),
            (
                "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----".into(),
                "no private key",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n".into(),
                "encrypted",
            ),
            (format!("{{\"kty\":\"oct\",\"d\":\"{canary}\"}}"), "`kty`"),
            (
                format!("{{\"kty\":\"EC\",\"crv\":\"P-384\",\"d\":\"{canary}\"}}"),
                "P-256",
            ),
            ("{not json".into(), "not valid JSON"),
        ];
        for (material, want) in cases {
            let e = SigningKey::parse("private_key", &Secret::from(material.clone()), None, None)
                .unwrap_err();
            assert!(
                e.0.contains("`private_key`") && e.0.contains(want),
                "{material}: {e}"
            );
            assert!(!e.0.contains(canary), "{e}");
        }
        let pem = Secret::from(key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string());
        let e = SigningKey::parse("private_key", &pem, Some("RS256"), None).unwrap_err();
        assert!(e.0.contains("ES256"), "{e}");
        let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let small = Secret::from(small.to_pkcs8_pem(LineEnding::LF).unwrap().to_string());
        let e = SigningKey::parse("private_key", &small, None, None).unwrap_err();
        assert!(e.0.contains("1024-bit"), "{e}");
    }
}
