//! The TLS settings of a credential's connections: a client certificate and key (RFC 8705
//! `tls_client_auth` and `self_signed_tls_client_auth`, or a provider that wants a client
//! certificate at the transport), and CA certificates trusted besides the web PKI roots.

use super::{invalid, non_empty_secret, RawSettings, TokenEndpoint};
use authgate_plugin_sdk::{ClientIdentity, ClientTls, Secret, SettingsError};
use std::sync::Arc;
use url::Url;

/// The validated TLS settings.
pub(super) struct Tls {
    /// `None` when the credential has neither a client certificate nor a CA of its own.
    pub tls: Option<Arc<ClientTls>>,
    /// The key as configured, for the redactor.
    pub key: Option<Secret>,
}

impl Tls {
    pub fn has_certificate(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.identity().is_some())
    }
}

/// `tls_client_certificate` and `tls_client_key` (both or neither), `tls_ca_certificate`.
pub(super) fn validate(raw: &mut RawSettings) -> Result<Tls, SettingsError> {
    let cert = raw.tls_client_certificate.take();
    let key = non_empty_secret("tls_client_key", raw.tls_client_key.take())?;
    let identity = match (cert, &key) {
        (Some(cert), Some(key)) => Some(
            ClientIdentity::parse("tls_client_certificate", &cert, "tls_client_key", key)
                .map_err(|e| invalid(e.0))?,
        ),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "`tls_client_certificate` is set but `tls_client_key` is not; give the certificate's private key in `tls_client_key` (as a ${file:PATH} or ${env:NAME} reference)",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "`tls_client_key` is set but `tls_client_certificate` is not; give the client certificate (PEM, the client's own certificate first, then intermediates) in `tls_client_certificate`",
            ))
        }
    };
    let mut tls = ClientTls::new(identity);
    if let Some(ca) = raw.tls_ca_certificate.take() {
        tls = tls
            .trust_ca("tls_ca_certificate", &ca)
            .map_err(|e| invalid(e.0))?;
    }
    Ok(Tls {
        tls: (!tls.is_empty()).then(|| Arc::new(tls)),
        key,
    })
}

/// A client certificate is only presented in a TLS handshake: the endpoints named in the
/// settings must be https (discovered ones are checked when they are used).
pub(super) fn https_endpoints(
    tls: &Tls,
    endpoint: &TokenEndpoint,
    revocation_url: Option<&Url>,
) -> Result<(), SettingsError> {
    if !tls.has_certificate() {
        return Ok(());
    }
    let token_url = match endpoint {
        TokenEndpoint::Url(url) => Some(url),
        TokenEndpoint::Issuer(_) => None,
    };
    for (field, url) in [("token_url", token_url), ("revocation_url", revocation_url)] {
        if let Some(url) = url.filter(|u| u.scheme() != "https") {
            return Err(invalid(format!(
                "`{field}` must be an https URL with a client certificate (`tls_client_certificate`): the certificate is only presented in a TLS handshake, not to {}",
                url.scheme()
            )));
        }
    }
    Ok(())
}
