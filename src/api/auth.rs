//! Caller authentication and authorization: the one place that decides who may call what.
//!
//! A tower layer in front of every authgate service. It identifies the caller (the single
//! SPIFFE URI SAN of its mTLS client certificate, or an API key in `authorization: Bearer`,
//! compared by SHA-256 digest in constant time), checks the method's role, reads the tenant
//! from the request message itself (field 1 of every authgate request), checks it, applies
//! the caller's rate limit, and hands the decision to the handler as [`CallerName`].
//! With no `[[callers]]` configured it admits loopback peers only.
//!
//! Unknown tenants and forbidden tenants get the same answer, so tenants cannot be probed.
//! Health and reflection stay open: they reveal no tenant data.

use crate::config::{CallerConfig, Role};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Who is calling, as established by the authentication layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerName(pub Arc<str>);

/// The caller's name and authorization decision, as the auth layer recorded it.
pub fn caller_of<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions()
        .get::<CallerName>()
        // `String::from`, not `to_string`: no formatting machinery on every call.
        .map(|c| String::from(&*c.0))
}

/// How a caller proves who it is.
#[derive(Debug, Clone)]
enum Credential {
    ApiKeyDigest([u8; 32]),
    Spiffe(String),
}

#[derive(Debug, Clone)]
enum Tenants {
    All,
    Only(HashSet<String>),
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.rate))
        }
    }
}

#[derive(Debug)]
struct Caller {
    name: Arc<str>,
    credential: Credential,
    tenants: Tenants,
    roles: HashSet<Role>,
    limiter: Option<TokenBucket>,
}

/// The callers in force; swapped whole on reload.
#[derive(Debug, Default)]
pub struct CallerTable {
    callers: Vec<Caller>,
}

impl CallerTable {
    /// Builds the table from validated config.
    pub fn new(configs: &[CallerConfig]) -> Self {
        let callers = configs
            .iter()
            .map(|c| {
                let credential = match (&c.api_key_sha256, &c.spiffe_id) {
                    (Some(hex), _) => {
                        Credential::ApiKeyDigest(decode_hex32(hex).unwrap_or([0; 32]))
                    }
                    (None, Some(id)) => Credential::Spiffe(id.clone()),
                    (None, None) => Credential::Spiffe(String::new()),
                };
                let tenants = if c.tenants.iter().any(|t| t == "*") {
                    Tenants::All
                } else {
                    Tenants::Only(c.tenants.iter().cloned().collect())
                };
                let limiter = c.rate_limit_per_second.map(|rate| {
                    let burst = c.rate_limit_burst.map_or(rate.max(1.0), f64::from);
                    TokenBucket::new(rate, burst.max(1.0))
                });
                Caller {
                    name: c.name.as_str().into(),
                    credential,
                    tenants,
                    roles: c.roles.iter().copied().collect(),
                    limiter,
                }
            })
            .collect();
        Self { callers }
    }

    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The role a method needs; `None` for services that are open (health, reflection).
fn required_role(path: &str) -> Option<Role> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let method = path.rsplit('/').next().unwrap_or("");
    match service {
        "authgate.v1.TokenService" => Some(match method {
            "ListEvents" | "WatchEvents" => Role::Events,
            _ => Role::Token,
        }),
        "authgate.v1.CredentialService" => Some(Role::Admin),
        s if s.starts_with("authgate.") => Some(Role::Admin),
        _ => None,
    }
}

/// Shared state of the layer; [`Authorizer::reload`] swaps the caller table.
#[derive(Clone)]
pub struct Authorizer {
    table: Arc<ArcSwap<CallerTable>>,
    max_request_bytes: usize,
}

impl Authorizer {
    pub fn new(configs: &[CallerConfig], max_request_bytes: usize) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(CallerTable::new(configs))),
            max_request_bytes,
        }
    }

    /// Replaces the callers (keys rotated, callers added or removed) without touching
    /// open connections.
    pub fn reload(&self, configs: &[CallerConfig]) {
        self.table.store(Arc::new(CallerTable::new(configs)));
    }

    pub fn layer(&self) -> AuthLayer {
        AuthLayer { auth: self.clone() }
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Authorizer,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authorizer,
}

type Req = http::Request<Body>;
type Resp = http::Response<Body>;

fn deny(status: Status) -> Resp {
    status.into_http()
}

/// The identity a request presents.
enum Presented {
    None,
    ApiKey([u8; 32]),
    Spiffe(String),
    /// A client certificate that does not carry exactly one SPIFFE URI SAN.
    BadCertificate(&'static str),
}

fn presented_identity(req: &Req) -> Presented {
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
pub fn spiffe_id(der: &[u8]) -> Result<String, &'static str> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| "unreadable client certificate")?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| "malformed subjectAltName")?
        .ok_or("client certificate has no URI SAN (SPIFFE ID)")?;
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
        [_] => Err("client certificate URI SAN is not a SPIFFE ID"),
        [] => Err("client certificate has no URI SAN (SPIFFE ID)"),
        _ => Err("client certificate has more than one URI SAN; a SPIFFE SVID has exactly one"),
    }
}

fn is_loopback_peer(req: &Req) -> bool {
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
        .is_some_and(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback())
}

/// Reads field 1 (the tenant) of the protobuf message inside one gRPC frame. The last
/// occurrence wins, as in every protobuf decoder, so a repeated field cannot smuggle a
/// different tenant past this check.
pub fn tenant_of_frame(frame: &[u8]) -> Result<String, &'static str> {
    if frame.len() < 5 {
        return Ok(String::new());
    }
    if frame[0] != 0 {
        return Err("compressed requests are not accepted");
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let msg = frame.get(5..5 + len).ok_or("truncated gRPC frame")?;
    let mut tenant = String::new();
    let mut i = 0usize;
    let varint = |buf: &[u8], i: &mut usize| -> Result<u64, &'static str> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*i).ok_or("truncated message")?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed varint")
    };
    while i < msg.len() {
        let key = varint(msg, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(msg, &mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let n = varint(msg, &mut i)? as usize;
                let bytes = msg.get(i..i + n).ok_or("truncated message")?;
                if field == 1 {
                    tenant =
                        String::from_utf8(bytes.to_vec()).map_err(|_| "tenant is not UTF-8")?;
                }
                i += n;
            }
            _ => return Err("malformed message"),
        }
    }
    Ok(tenant)
}

impl<S> tower::Service<Req> for AuthService<S>
where
    S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        // The clone is the one made ready by poll_ready's caller contract (tower's
        // "clone then swap" pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(role) = required_role(req.uri().path()) else {
                return inner.call(req).await;
            };
            let table = auth.table.load_full();
            if table.is_empty() {
                // Dev mode: no callers configured, loopback peers only.
                if !is_loopback_peer(&req) {
                    return Ok(deny(Status::unauthenticated(
                        "no callers are configured, so only loopback clients are served; configure [[callers]] to call from elsewhere",
                    )));
                }
                req.extensions_mut().insert(CallerName("local".into()));
                return inner.call(req).await;
            }

            let caller = match presented_identity(&req) {
                Presented::None => {
                    return Ok(deny(Status::unauthenticated(
                        "no caller identity: send `authorization: Bearer <api key>` or connect with a client certificate",
                    )))
                }
                Presented::BadCertificate(why) => return Ok(deny(Status::unauthenticated(why))),
                Presented::ApiKey(digest) => {
                    // Every configured key is compared, in constant time, whatever matches.
                    let mut found = None;
                    for c in &table.callers {
                        if let Credential::ApiKeyDigest(d) = &c.credential {
                            if bool::from(d.ct_eq(&digest)) && found.is_none() {
                                found = Some(c);
                            }
                        }
                    }
                    match found {
                        Some(c) => c,
                        None => return Ok(deny(Status::unauthenticated("unknown API key"))),
                    }
                }
                Presented::Spiffe(id) => match table.callers.iter().find(|c| {
                    matches!(&c.credential, Credential::Spiffe(s) if *s == id)
                }) {
                    Some(c) => c,
                    None => {
                        return Ok(deny(Status::permission_denied(format!(
                            "SPIFFE ID {id} is not a configured caller"
                        ))))
                    }
                },
            };
            let denied = || {
                Status::permission_denied(format!(
                    "caller `{}` may not call this method for this tenant",
                    caller.name
                ))
            };
            if !caller.roles.contains(&role) {
                return Ok(deny(denied()));
            }
            if let Some(bucket) = &caller.limiter {
                if let Err(wait) = bucket.take() {
                    return Ok(deny(Status::with_error_details(
                        Code::ResourceExhausted,
                        format!(
                            "caller `{}` is over its rate limit; retry after {wait:?}",
                            caller.name
                        ),
                        ErrorDetails::with_retry_info(Some(wait)),
                    )));
                }
            }

            // The tenant is inside the message: read the (small, unary) body once, check
            // it, and hand the same bytes on.
            let (parts, body) = req.into_parts();
            let limit = auth.max_request_bytes + 5;
            let bytes: Bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return Ok(deny(Status::resource_exhausted(format!(
                        "request larger than {} bytes",
                        auth.max_request_bytes
                    ))))
                }
                Err(_) => {
                    return Ok(deny(Status::cancelled(
                        "request body was not received completely",
                    )))
                }
            };
            let tenant = match tenant_of_frame(&bytes) {
                Ok(t) => t,
                Err(why) => return Ok(deny(Status::invalid_argument(why))),
            };
            let allowed = match &caller.tenants {
                Tenants::All => true,
                Tenants::Only(set) => set.contains(&tenant),
            };
            if !allowed {
                return Ok(deny(denied()));
            }
            let mut req =
                http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
            let how = match caller.credential {
                Credential::ApiKeyDigest(_) => "api key",
                Credential::Spiffe(_) => "mTLS",
            };
            req.extensions_mut().insert(CallerName(
                format!(
                    "{} ({how}; allowed role {role:?} on tenant {tenant})",
                    caller.name
                )
                .into(),
            ));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn reads_the_last_tenant_field() {
        use prost::Message;
        let m = crate::proto::v1::GetTokenRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: vec!["a".into()],
            min_ttl_seconds: 5,
            force_refresh: true,
        };
        assert_eq!(tenant_of_frame(&frame(&m.encode_to_vec())).unwrap(), "acme");
        // Field 1 twice: the decoder keeps the last, so must the check.
        let mut twice = m.encode_to_vec();
        twice.extend_from_slice(&[0x0a, 5, b'o', b't', b'h', b'e', b'r']);
        assert_eq!(tenant_of_frame(&frame(&twice)).unwrap(), "other");
        assert_eq!(
            crate::proto::v1::GetTokenRequest::decode(&twice[..])
                .unwrap()
                .tenant,
            "other"
        );
        assert_eq!(tenant_of_frame(&frame(&[])).unwrap(), "");
        assert!(tenant_of_frame(&[1, 0, 0, 0, 0]).is_err());
        assert!(tenant_of_frame(&frame(&[0x0a, 10, b'x'])).is_err());
    }

    #[test]
    fn every_authgate_request_has_the_tenant_in_field_1() {
        use prost::Message;
        let fds =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "authgate.v1")
            .unwrap();
        for svc in &file.service {
            for m in &svc.method {
                let input = m.input_type().rsplit('.').next().unwrap();
                let msg = file
                    .message_type
                    .iter()
                    .find(|t| t.name() == input)
                    .unwrap();
                let f1 = msg.field.iter().find(|f| f.number() == 1).unwrap();
                assert_eq!(
                    f1.name(),
                    "tenant",
                    "{}.{} must carry the tenant in field 1",
                    svc.name(),
                    m.name()
                );
            }
        }
    }

    #[test]
    fn roles_per_method() {
        assert_eq!(
            required_role("/authgate.v1.TokenService/GetToken"),
            Some(Role::Token)
        );
        assert_eq!(
            required_role("/authgate.v1.TokenService/Revoke"),
            Some(Role::Token)
        );
        assert_eq!(
            required_role("/authgate.v1.TokenService/ListEvents"),
            Some(Role::Events)
        );
        assert_eq!(
            required_role("/authgate.v1.CredentialService/PutCredential"),
            Some(Role::Admin)
        );
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
    }

    #[tokio::test]
    async fn token_bucket_limits_and_refills() {
        tokio::time::pause();
        let b = TokenBucket::new(10.0, 2.0);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok());
    }
}
