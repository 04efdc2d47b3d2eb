//! The baseline: a bare tonic server (no layers beyond tonic's defaults) that answers
//! every call with one pre-built reply of the same encoded size as authgate's GetToken
//! reply. It is what any gRPC service costs on this machine, so it is the limit for
//! authgate's cache hit.

use prost::Message;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("authgate_bench.v1");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest};

/// The gRPC path the load generator calls.
pub const PATH: &str = "/authgate_bench.v1.Echo/Call";

/// Answers with a clone of the same reply, as a handler serving a cached value would.
pub struct EchoService {
    reply: EchoReply,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn call(&self, _request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(self.reply.clone()))
    }
}

/// A reply whose encoded size is exactly `size` bytes (0, or 3 and up: proto3 leaves
/// empty fields out, so the smallest field takes three).
pub fn reply_of_size(size: usize) -> Option<EchoReply> {
    padded(size, |payload, pad| EchoReply { payload, pad })
}

/// A request whose encoded size is exactly `size` bytes (0, or 3 and up).
pub fn request_of_size(size: usize) -> Option<EchoRequest> {
    padded(size, |payload, pad| EchoRequest { payload, pad })
}

/// The message of `size` bytes with the longest payload: the payload alone hits most sizes;
/// where its length prefix grows by a byte and skips one, a small `pad` field fills in.
fn padded<M: Message>(size: usize, make: impl Fn(String, Vec<u8>) -> M) -> Option<M> {
    for payload in (0..=size).rev() {
        let len = make("x".repeat(payload), Vec::new()).encoded_len();
        if len > size {
            continue;
        }
        for pad in 0..=(size - len) {
            let m = make("x".repeat(payload), vec![0; pad]);
            if m.encoded_len() == size {
                return Some(m);
            }
        }
    }
    None
}

/// Serves the echo service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    reply: EchoReply,
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
    fn every_size_is_reachable() {
        for size in (0..1).chain(3..2100) {
            let r = reply_of_size(size).unwrap_or_else(|| panic!("no reply of {size} bytes"));
            assert_eq!(r.encoded_len(), size);
        }
        for size in (0..1).chain(3..300) {
            assert_eq!(request_of_size(size).unwrap().encoded_len(), size);
        }
    }
}
