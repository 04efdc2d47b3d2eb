//! The baseline: a bare tonic server (tonic's defaults, no layers) that takes authgate's
//! GetToken request message and answers with a clone of one stored GetToken reply, the
//! very bytes authgate sent. It is what serving this RPC costs with gRPC alone on this
//! machine, so it is the limit for authgate's cache hit.

use authgate::proto::v1::{GetTokenRequest, GetTokenResponse};
use prost::Message;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("authgate_bench.v1");
}

use proto::echo_server::{Echo, EchoServer};

/// The gRPC path the load generator calls.
pub const PATH: &str = "/authgate_bench.v1.Echo/GetToken";

/// Answers with a clone of the same reply, as any handler serving a cached value would.
pub struct EchoService {
    reply: GetTokenResponse,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn get_token(
        &self,
        _request: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        Ok(Response::new(self.reply.clone()))
    }
}

/// The reply to serve, from the encoded bytes (hex) of a real GetToken reply.
pub fn reply_from_hex(hex: &str) -> Result<GetTokenResponse, String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("not hex at {i}"))
        })
        .collect::<Result<Vec<u8>, String>>()?;
    GetTokenResponse::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// Hex of `bytes`, for [`reply_from_hex`].
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves the echo service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    reply: GetTokenResponse,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // `Server::tcp_nodelay` is ignored for a caller-supplied listener; TcpIncoming sets
    // it on each accepted socket. Without it, Nagle's algorithm holds back the reply's
    // trailers until the client's delayed ACK, 40 ms later.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService { reply }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Binds an ephemeral loopback port.
pub async fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_through_hex() {
        let r = GetTokenResponse {
            access_token: "t".repeat(40),
            token_type: "Bearer".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            scopes: vec!["read".into()],
            metadata: Default::default(),
        };
        let back = reply_from_hex(&hex(&r.encode_to_vec())).unwrap();
        assert_eq!(back.encode_to_vec(), r.encode_to_vec());
        assert!(reply_from_hex("zz").is_err());
    }
}
