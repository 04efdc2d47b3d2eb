//! What a request presents as its caller's identity: an API key in
//! `authorization: Bearer` (kept only as its SHA-256 digest), the single SPIFFE URI SAN of
//! its mTLS client certificate, or, with no callers configured, a loopback peer address.
//!
//! Nothing here decides whether the identity is allowed; see the caller table for that.

use sha2::{Digest, Sha256};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

type Req = http::Request<Body>;

/// The identity a request presents.
pub(super) enum Presented {
    None,
    ApiKey([u8; 32]),
    Spiffe(String),
    /// A client certificate that does not carry exactly one SPIFFE URI SAN.
    BadCertificate(CertificateError),
}

/// Why a client certificate names no caller; the message goes back as UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("unreadable client certificate")]
    Unreadable,
    #[error("malformed subjectAltName")]
    MalformedSan,
    #[error("client certificate has no URI SAN (SPIFFE ID)")]
    NoUriSan,
    #[error("client certificate URI SAN is not a SPIFFE ID")]
    NotSpiffe,
    #[error("client certificate has more than one URI SAN; a SPIFFE SVID has exactly one")]
    SeveralUriSans,
}

/// A bearer API key, when sent, is the identity even if a client certificate is presented
/// too.
pub(super) fn presented_identity(req: &Req) -> Presented {
    if let Some(v) = req.headers().get("authorization") {
        if let Some(key) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
            let digest: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
            return Presented::ApiKey(digest);
        }
    }
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs());
    if let Some(leaf) = certs.as_ref().and_then(|c| c.first()) {
        return match spiffe_id(leaf.as_ref()) {
            Ok(id) => Presented::Spiffe(id),
            Err(why) => Presented::BadCertificate(why),
        };
    }
    Presented::None
}

/// The certificate's single URI SAN, which must be a SPIFFE ID.
pub fn spiffe_id(der: &[u8]) -> Result<String, CertificateError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertificateError::Unreadable)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertificateError::MalformedSan)?
        .ok_or(CertificateError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => Ok((*one).to_owned()),
        [_] => Err(CertificateError::NotSpiffe),
        [] => Err(CertificateError::NoUriSan),
        _ => Err(CertificateError::SeveralUriSans),
    }
}

/// Whether the TCP peer is this host, over plain TCP or TLS. IPv4-mapped IPv6 addresses
/// count too: a dual-stack listener reports 127.0.0.1 as `::ffff:127.0.0.1`.
pub(super) fn is_loopback_peer(req: &Req) -> bool {
    let tcp = req
        .extensions()
        .get::<TcpConnectInfo>()
        .cloned()
        .or_else(|| {
            req.extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(|i| i.get_ref().clone())
        });
    tcp.and_then(|i| i.remote_addr())
        .is_some_and(|a| is_loopback_addr(&a))
}

pub(super) fn is_loopback_addr(a: &std::net::SocketAddr) -> bool {
    a.ip().is_loopback() || a.ip().to_canonical().is_loopback()
}

/// A forward-auth proxy's own key: the raw key (or `Bearer <key>`) in its dedicated header.
pub(super) fn presented_proxy_key(value: Option<&http::HeaderValue>) -> Presented {
    let Some(key) = value.and_then(|v| v.to_str().ok()) else {
        return Presented::None;
    };
    let key = key.trim();
    let key = key.strip_prefix("Bearer ").unwrap_or(key).trim();
    if key.is_empty() {
        return Presented::None;
    }
    Presented::ApiKey(Sha256::digest(key.as_bytes()).into())
}
