//! The gRPC port: reflection (v1 and v1alpha) and health next to TokenService,
//! CredentialService, WebhookService and Envoy's ext_authz Authorization, the tower layers every request passes, TLS, and the serving task.

use crate::api::auth::AuthLayer;
use crate::api::credential_service::GrpcCredentialService;
use crate::api::mesh::MeshService;
use crate::api::rpc_metrics::RpcMetricsLayer;
use crate::api::token_service::GrpcTokenService;
use crate::api::watch::Watchers;
use crate::api::webhook_service::GrpcWebhookService;
use crate::broker::TokenBroker;
use crate::config::Config;
use crate::credentials::CredentialManager;
use crate::proto::v1::credential_service_server::CredentialServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::proto::v1::webhook_service_server::WebhookServiceServer;
use crate::webhooks::Webhooks;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

type GrpcResponse = http::Response<tonic::body::Body>;
type Layers = tower::layer::util::Stack<
    AuthLayer,
    tower::layer::util::Stack<
        tower::util::MapResponseLayer<fn(GrpcResponse) -> GrpcResponse>,
        tower::layer::util::Stack<RpcMetricsLayer, tower::layer::util::Identity>,
    >,
>;
pub(super) type GrpcRouter = tonic::transport::server::Router<Layers>;

/// Every gRPC service behind the layers. Errors are config errors, worded for the operator.
pub(super) fn router(
    config: &Config,
    broker: TokenBroker,
    credentials: CredentialManager,
    webhooks: Webhooks,
    mesh: MeshService,
    auth: AuthLayer,
    shutdown: watch::Receiver<bool>,
) -> Result<GrpcRouter, String> {
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let health = health_service();
    let store = broker.credentials().store().clone();

    let max_request_bytes = config.server.max_request_bytes;
    // A CheckRequest carries the downstream request's headers: the same bound applies.
    let mesh = AuthorizationServer::new(mesh).max_decoding_message_size(max_request_bytes);
    // Streams end when `shutdown` is sent, so the graceful shutdown below never waits on one.
    let watchers = Watchers::new(
        store.clone(),
        broker.clock().clone(),
        config.server.max_watch_streams_per_caller,
        Duration::from_secs(config.server.watch_heartbeat_seconds),
        shutdown,
    );
    let tokens = TokenServiceServer::new(GrpcTokenService::new(broker.clone(), store, watchers))
        // Requests are a few hundred bytes; a large one is a mistake or an attack, and
        // decoding it would cost memory before any check runs.
        .max_decoding_message_size(max_request_bytes);
    let admin = CredentialServiceServer::new(GrpcCredentialService::new(credentials))
        .max_decoding_message_size(max_request_bytes);
    let hooks = WebhookServiceServer::new(GrpcWebhookService::new(webhooks))
        .max_decoding_message_size(max_request_bytes);

    let metrics = RpcMetricsLayer::new(broker.metrics().clone());
    Ok(server(config, metrics, auth)?
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health)
        .add_service(tokens)
        .add_service(admin)
        .add_service(hooks)
        .add_service(mesh))
}

/// Both reflection versions describe the public API and health, so grpcurl works with no
/// proto files whichever version it asks for.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// `grpc.health.v1`, reporting both authgate services as serving: by the time the router
/// is built, the store is open and the credentials are loaded.
fn health_service() -> HealthServer<impl Health> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health_reporter
            .set_serving::<TokenServiceServer<GrpcTokenService>>()
            .await;
        health_reporter
            .set_serving::<CredentialServiceServer<GrpcCredentialService>>()
            .await;
        health_reporter
            .set_serving::<WebhookServiceServer<GrpcWebhookService>>()
            .await;
        health_reporter
            .set_serving::<AuthorizationServer<MeshService>>()
            .await;
    });
    health_service
}

/// The transport with its TLS, layers, limits and timeouts.
fn server(
    config: &Config,
    metrics: RpcMetricsLayer,
    auth: AuthLayer,
) -> Result<Server<Layers>, String> {
    let s = &config.server;
    let mut builder = Server::builder();
    if let Some(tls) = tls_config(config)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("server.tls: {e}"))?;
    }
    Ok(builder
        // Outermost: every call's latency and final status, whoever answered it.
        .layer(metrics)
        // gRPC says an over-limit message is RESOURCE_EXHAUSTED; tonic answers OUT_OF_RANGE.
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted as fn(GrpcResponse) -> GrpcResponse,
        ))
        // Who may call what: the single authentication and authorization point.
        .layer(auth)
        // Bounds the HTTP/2 streams one client connection may hold open at once.
        .max_concurrent_streams(s.max_concurrent_streams)
        // Bounds in-flight RPCs per connection so one client cannot take every worker;
        // excess requests are shed (UNAVAILABLE) instead of queueing without limit.
        .concurrency_limit_per_connection(s.max_concurrent_requests_per_connection)
        .load_shed(true)
        // No RPC may hold server resources forever, whatever deadline the client sent.
        .timeout(Duration::from_secs(s.request_timeout_seconds))
        // Token replies are small and latency-sensitive.
        .tcp_nodelay(true)
        // Detects dead peers on long-lived mesh connections.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10))))
}

fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let read = |field: &str, p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| format!("server.tls.{field}: cannot read {}: {e}", p.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read("cert_file", &tls.cert_file)?,
        read("key_file", &tls.key_file)?,
    );
    let mut t = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        // Client certificates are optional only when some callers use API keys instead.
        let api_key_callers = config.callers.iter().any(|c| c.api_key_sha256.is_some());
        t = t
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                "client_ca_file",
                ca,
            )?))
            .client_auth_optional(api_key_callers || config.callers.is_empty());
    }
    Ok(Some(t))
}

/// Rewrites tonic's OUT_OF_RANGE for a too-large request message into RESOURCE_EXHAUSTED,
/// the code gRPC specifies (and other gRPC servers send) for it.
fn oversize_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    // Prebuilt names: looking up by `&str` parses the name, and this runs on every reply.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
    let headers = resp.headers_mut();
    let oversize = headers.get(&GRPC_STATUS).is_some_and(|v| v == "11")
        && headers.get(&GRPC_MESSAGE).is_some_and(|m| {
            let m = m.as_bytes();
            m.windows(9).any(|w| w == b"too large" || w == b"too%20lar")
        });
    if oversize {
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("8"));
    }
    resp
}

/// Serves until shutdown is requested, then stops `background`: those tasks only make
/// sense while the gateway serves.
pub(super) fn spawn_serve(
    router: GrpcRouter,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    background: [JoinHandle<()>; 3],
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The builder's tcp_nodelay is ignored for a listener we pass in; without
        // TCP_NODELAY, Nagle holds each reply's trailers until the client's delayed ACK
        // (40 ms per call; see BENCHMARKS.md).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
        for task in background {
            task.abort();
        }
    })
}
