//! TLS settings of one credential's connections to its provider: a client certificate and
//! its private key (RFC 8705 mutual-TLS client authentication, or a provider that wants a
//! client certificate at the transport), and CA certificates trusted in addition to the web
//! PKI roots (an internal identity provider with a private CA).
//!
//! Everything is parsed once, when the provider is built from its settings: the certificate
//! chain parses, the key parses, is of a type the TLS stack can sign with, and belongs to
//! the first certificate. An error names the settings field and what to put there, and
//! never echoes key material. [`crate::UpstreamClient::with_tls`] turns a [`ClientTls`]
//! into the credential's own connection pools.

use crate::secret::Secret;
use crate::settings::SettingsError;
use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io::Cursor;

/// What [`ClientTls`] adds to a connection: a client certificate, extra trusted CAs, or both.
#[derive(Clone, Default)]
pub struct ClientTls {
    identity: Option<ClientIdentity>,
    roots: Vec<TrustedCa>,
}

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    identity: reqwest::Identity,
    /// The leaf certificate's subject (RFC 4514 form), for messages: never secret.
    subject: String,
    chain_len: usize,
    /// The leaf certificate's `notAfter`: seconds since the epoch, and as printed.
    not_after_unix: i64,
    not_after: String,
}

/// A parsed certificate: its DER, subject and `notAfter`.
struct Parsed {
    der: CertificateDer<'static>,
    subject: String,
    not_after_unix: i64,
    not_after: String,
}

#[derive(Clone)]
struct TrustedCa {
    cert: reqwest::Certificate,
    subject: String,
}

fn invalid(field: &str, message: impl fmt::Display) -> SettingsError {
    SettingsError(format!("`{field}` {message}"))
}

/// The PEM sections of `text`, in order. `\n` escaped in an environment variable is accepted.
fn pem_sections(field: &str, text: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, SettingsError> {
    let text = text.trim();
    let unescaped;
    let text = if !text.contains('\n') && text.contains("\\n") {
        unescaped = text.replace("\\n", "\n");
        unescaped.as_str()
    } else {
        text
    };
    let mut reader = Cursor::new(text.as_bytes());
    let mut sections = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some(section)) => sections.push(section),
            Ok(None) => return Ok(sections),
            Err(_) => {
                return Err(invalid(
                    field,
                    "is not valid PEM (a -----BEGIN ...----- block whose base64 does not decode, or that never ends)",
                ))
            }
        }
    }
}

fn is_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// Certificates only: a private key pasted into a certificate field would be stored and
/// shown as a non-secret setting, so it is refused outright.
fn certificates(field: &str, text: &str, key_hint: &str) -> Result<Vec<Parsed>, SettingsError> {
    let mut out = Vec::new();
    for (i, (kind, der)) in pem_sections(field, text)?.into_iter().enumerate() {
        if is_key(kind) {
            return Err(invalid(
                field,
                format!(
                    "holds a private key, which must never go in a certificate field; {key_hint}"
                ),
            ));
        }
        if kind != SectionKind::Certificate {
            return Err(invalid(
                field,
                format!(
                    "block #{} is not a certificate; give only -----BEGIN CERTIFICATE----- blocks",
                    i + 1
                ),
            ));
        }
        let parsed = match x509_parser::parse_x509_certificate(&der) {
            Ok(([], cert)) => Parsed {
                subject: cert.subject().to_string(),
                not_after_unix: cert.validity().not_after.timestamp(),
                not_after: cert.validity().not_after.to_string(),
                der: CertificateDer::from(der.clone()),
            },
            _ => {
                return Err(invalid(
                    field,
                    format!("certificate #{} is not a valid X.509 certificate", i + 1),
                ))
            }
        };
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(invalid(
            field,
            "has no certificate; give PEM text starting with -----BEGIN CERTIFICATE----- (as a ${file:PATH} reference or inline)",
        ));
    }
    Ok(out)
}

/// The one private key in `key`.
fn private_key(field: &str, key: &Secret) -> Result<PrivateKeyDer<'static>, SettingsError> {
    const FORMS: &str = "a PEM private key: PKCS#8 (BEGIN PRIVATE KEY), PKCS#1 (BEGIN RSA PRIVATE KEY) or SEC1 (BEGIN EC PRIVATE KEY), unencrypted";
    // PKCS#8 `ENCRYPTED PRIVATE KEY`, or the legacy `Proc-Type: 4,ENCRYPTED` header.
    if key.expose().contains("ENCRYPTED") {
        return Err(invalid(
            field,
            format!("is an encrypted private key; decrypt it into a secret file (openssl pkey -in KEY -out PLAIN), authgate needs {FORMS}"),
        ));
    }
    let sections = pem_sections(field, key.expose())?;
    let mut keys = sections.into_iter().filter_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
        _ => None,
    });
    match (keys.next(), keys.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(invalid(field, format!("is not {FORMS}"))),
        (Some(_), Some(_)) => Err(invalid(
            field,
            "holds more than one private key; give only the key of the client certificate",
        )),
    }
}

/// The PEM text of a certificate chain and a key, as `reqwest::Identity::from_pem` reads it.
fn identity_pem(chain: &[CertificateDer<'_>], key: &PrivateKeyDer<'_>) -> Secret {
    use base64::Engine;
    let block = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    };
    let mut text: String = chain.iter().map(|c| block("CERTIFICATE", c)).collect();
    text.push_str(&match key {
        PrivateKeyDer::Pkcs1(k) => block("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => block("EC PRIVATE KEY", k.secret_sec1_der()),
        other => block("PRIVATE KEY", other.secret_der()),
    });
    Secret::from(text)
}

impl ClientIdentity {
    /// Parses a certificate chain (the client's certificate first, then intermediates) from
    /// `cert_field` and its private key from `key_field`, and checks they belong together.
    pub fn parse(
        cert_field: &str,
        chain_pem: &str,
        key_field: &str,
        key: &Secret,
    ) -> Result<Self, SettingsError> {
        let hint = format!("put the key in `{key_field}` (as a secret reference)");
        let mut parsed = certificates(cert_field, chain_pem, &hint)?;
        let leaf = parsed.remove(0);
        let subject = leaf.subject;
        let chain: Vec<CertificateDer<'static>> = std::iter::once(leaf.der)
            .chain(parsed.into_iter().map(|p| p.der))
            .collect();
        let key_der = private_key(key_field, key)?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|_| {
            invalid(
                key_field,
                "is a key type TLS cannot sign with; use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key",
            )
        })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(invalid(
                    key_field,
                    format!(
                        "does not belong to the certificate in `{cert_field}` (subject {subject}); give the key of that certificate, and the client's own certificate first in `{cert_field}`"
                    ),
                ))
            }
        }
        let pem = identity_pem(&chain, &key_der);
        let identity = reqwest::Identity::from_pem(pem.expose().as_bytes())
            .map_err(|_| invalid(key_field, "cannot be used as a TLS client identity"))?;
        Ok(Self {
            identity,
            subject,
            chain_len: chain.len(),
            not_after_unix: leaf.not_after_unix,
            not_after: leaf.not_after,
        })
    }

    /// The client certificate's subject, e.g. `CN=gateway, O=Example`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the client certificate expires (`notAfter`), in seconds since the epoch.
    pub fn expires_at_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// `notAfter` as the certificate states it, for messages.
    pub fn expires_at(&self) -> &str {
        &self.not_after
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("subject", &self.subject)
            .field("chain_len", &self.chain_len)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ClientTls {
    pub fn new(identity: Option<ClientIdentity>) -> Self {
        Self {
            identity,
            roots: Vec::new(),
        }
    }

    /// Adds the CA certificates in `pem_text` (from the settings field `field`) to the roots
    /// trusted for this credential's connections, next to the web PKI roots.
    pub fn trust_ca(mut self, field: &str, pem_text: &str) -> Result<Self, SettingsError> {
        let certs = certificates(
            field,
            pem_text,
            "a CA certificate is public; give only its -----BEGIN CERTIFICATE----- block",
        )?;
        for (i, Parsed { der, subject, .. }) in certs.into_iter().enumerate() {
            let mut store = rustls::RootCertStore::empty();
            if store.add(der.clone()).is_err() {
                return Err(invalid(
                    field,
                    format!(
                        "certificate #{} ({subject}) cannot be used as a trust anchor",
                        i + 1
                    ),
                ));
            }
            let cert = reqwest::Certificate::from_der(&der).map_err(|_| {
                invalid(
                    field,
                    format!("certificate #{} ({subject}) is not usable", i + 1),
                )
            })?;
            self.roots.push(TrustedCa { cert, subject });
        }
        Ok(self)
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.identity.as_ref()
    }

    /// True when there is nothing to add to the shared connection pools.
    pub fn is_empty(&self) -> bool {
        self.identity.is_none() && self.roots.is_empty()
    }

    /// The builder with this client certificate and these extra roots.
    pub(crate) fn apply(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder = builder.use_rustls_tls();
        if let Some(id) = &self.identity {
            builder = builder.identity(id.identity.clone());
        }
        for ca in &self.roots {
            builder = builder.add_root_certificate(ca.cert.clone());
        }
        builder
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity)
            .field(
                "trusted_ca",
                &self.roots.iter().map(|r| &r.subject).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The TLS error somewhere in `e`'s source chain. An `io::Error` hides the error it wraps
/// from `source()`, so it is looked into explicitly.
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}

/// A TLS failure that retrying will not fix, as the error the caller acts on: the
/// provider's certificate is not trusted (settings), or the provider refused the client
/// certificate (the credential). `None` for everything else.
pub(crate) fn classify_failure(
    step: &str,
    e: &(dyn std::error::Error + 'static),
) -> Option<crate::ProviderError> {
    use rustls::AlertDescription as A;
    match find_tls_error(e)? {
        rustls::Error::InvalidCertificate(why) => Some(crate::ProviderError::config(format!(
            "{step}: the provider's TLS certificate is not accepted ({why:?}); if a private CA issued it, trust that CA (`tls_ca_certificate`), otherwise check the URL"
        ))),
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied),
        ) => Some(crate::ProviderError::Rejected {
            kind: crate::RejectKind::Credential,
            step: step.to_owned(),
            code: "invalid_client".to_owned(),
            description: Some(format!(
                "the provider refused the client certificate in the TLS handshake (alert {alert:?}); set a certificate it accepts (`tls_client_certificate`, `tls_client_key`)"
            )),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
