//! Encryption of secrets at rest: AES-256-GCM, a random 96-bit nonce per value, a key id,
//! and associated data binding (tenant, credential, field), so a ciphertext copied into
//! another row or field fails to decrypt instead of leaking the wrong secret.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use authgate_plugin_sdk::Secret;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

const FORMAT_V1: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the encryption key must be 32 bytes, base64- or hex-encoded ({0})")]
    BadKey(String),
    #[error("cannot read or create the key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored secret `{field}` was encrypted with key {found}, but the configured key is {expected}; configure the original key")]
    WrongKey {
        field: String,
        found: String,
        expected: String,
    },
    #[error(
        "stored secret `{field}` failed to decrypt (tampered, moved to another row, or corrupt)"
    )]
    Corrupt { field: String },
}

/// Which value a ciphertext belongs to; authenticated as associated data.
#[derive(Debug, Clone, Copy)]
pub struct SecretSlot<'a> {
    pub tenant: &'a str,
    pub credential: &'a str,
    pub field: &'a str,
}

impl SecretSlot<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad =
            Vec::with_capacity(16 + self.tenant.len() + self.credential.len() + self.field.len());
        aad.extend_from_slice(b"authgate/v1\0");
        for part in [self.tenant, self.credential, self.field] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// The data-encryption key.
pub struct Cipher {
    aead: Aes256Gcm,
    key_id: [u8; KEY_ID_LEN],
    /// Derived key for redaction digests (never the encryption key itself).
    redaction_key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher(key id {})", hex(&self.key_id))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cipher {
    pub fn from_key(key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let mut redaction_key = [0u8; 32];
        redaction_key.copy_from_slice(&Sha256::digest(
            [&b"authgate-redaction\0"[..], key].concat(),
        ));
        Self {
            aead: Aes256Gcm::new(key.into()),
            key_id,
            redaction_key,
        }
    }

    /// Parses a key given as base64 (standard or URL-safe) or 64 hex characters.
    pub fn parse_key(text: &str) -> Result<[u8; 32], CryptoError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| CryptoError::BadKey(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
                .map_err(|_| CryptoError::BadKey("not valid base64 or hex".into()))?
        };
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| CryptoError::BadKey(format!("got {} bytes", b.len())))
    }

    /// Reads the key file, or creates it (mode 0600) with a fresh random key when missing.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<([u8; 32], bool), CryptoError> {
        let io_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::parse_key(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let text = base64::engine::general_purpose::STANDARD.encode(key);
                write_private(path, text.as_bytes()).map_err(io_err)?;
                Ok((key, true))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    pub fn key_id(&self) -> String {
        hex(&self.key_id)
    }

    pub fn redaction_key(&self) -> [u8; 32] {
        self.redaction_key
    }

    pub fn seal(&self, slot: SecretSlot<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = slot.aad();
        // AES-GCM encryption only fails for plaintexts over 64 GiB.
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encrypts any secret smaller than 64 GiB");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, slot: SecretSlot<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let corrupt = || CryptoError::Corrupt {
            field: slot.field.to_owned(),
        };
        if sealed.len() < 1 + KEY_ID_LEN + NONCE_LEN + 16 || sealed[0] != FORMAT_V1 {
            return Err(corrupt());
        }
        let key_id = &sealed[1..1 + KEY_ID_LEN];
        if key_id != self.key_id {
            return Err(CryptoError::WrongKey {
                field: slot.field.to_owned(),
                found: hex(key_id),
                expected: self.key_id(),
            });
        }
        let nonce = &sealed[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN];
        let aad = slot.aad();
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &sealed[1 + KEY_ID_LEN + NONCE_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt())
    }

    pub fn seal_secret(&self, slot: SecretSlot<'_>, secret: &Secret) -> Vec<u8> {
        self.seal(slot, secret.expose().as_bytes())
    }

    pub fn open_secret(&self, slot: SecretSlot<'_>, sealed: &[u8]) -> Result<Secret, CryptoError> {
        let bytes = self.open(slot, sealed)?;
        String::from_utf8(bytes)
            .map(Secret::from)
            .map_err(|_| CryptoError::Corrupt {
                field: slot.field.to_owned(),
            })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot<'a>(t: &'a str, c: &'a str, f: &'a str) -> SecretSlot<'a> {
        SecretSlot {
            tenant: t,
            credential: c,
            field: f,
        }
    }

    #[test]
    fn round_trip_and_random_nonce() {
        let c = Cipher::from_key(&[9; 32]);
        let a = c.seal(slot("t", "c", "f"), b"hello");
        let b = c.seal(slot("t", "c", "f"), b"hello");
        assert_ne!(a, b);
        assert_eq!(c.open(slot("t", "c", "f"), &a).unwrap(), b"hello");
    }

    #[test]
    fn moved_ciphertext_fails() {
        let c = Cipher::from_key(&[9; 32]);
        let a = c.seal(slot("t", "c", "f"), b"hello");
        for s in [
            slot("u", "c", "f"),
            slot("t", "d", "f"),
            slot("t", "c", "g"),
            slot("tc", "", "f"),
        ] {
            assert!(matches!(c.open(s, &a), Err(CryptoError::Corrupt { .. })));
        }
    }

    #[test]
    fn wrong_key_is_named() {
        let a = Cipher::from_key(&[1; 32]).seal(slot("t", "c", "f"), b"x");
        let err = Cipher::from_key(&[2; 32])
            .open(slot("t", "c", "f"), &a)
            .unwrap_err();
        assert!(matches!(err, CryptoError::WrongKey { .. }));
    }

    #[test]
    fn tampering_fails() {
        let c = Cipher::from_key(&[9; 32]);
        let mut a = c.seal(slot("t", "c", "f"), b"hello");
        let last = a.len() - 1;
        a[last] ^= 1;
        assert!(c.open(slot("t", "c", "f"), &a).is_err());
        assert!(c.open(slot("t", "c", "f"), &[1, 2, 3]).is_err());
    }

    #[test]
    fn key_parsing_and_file_creation() {
        assert!(Cipher::parse_key(&"ab".repeat(32)).is_ok());
        assert!(Cipher::parse_key("short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let (k1, created) = Cipher::load_or_create(&p).unwrap();
        assert!(created);
        let (k2, created) = Cipher::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
