//! Builds and runs the gateway: validates the config, opens the store, loads credentials,
//! then serves gRPC (TokenService, reflection v1 + v1alpha, health) and the small HTTP port
//! (`/healthz`, `/metrics`).

use crate::api::auth::{AuthLayer, Authorizer};
use crate::api::credential_service::GrpcCredentialService;
use crate::api::token_service::GrpcTokenService;
use crate::broker::{BrokerSettings, TokenBroker};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::credentials::CredentialManager;
use crate::events::EventLog;
use crate::proto::v1::credential_service_server::CredentialServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::store::{self, crypto::Cipher, Store};
use authgate_plugin_sdk::{UpstreamClient, UpstreamLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}; pick a free address with server.{field} or AUTHGATE_{env}")]
    Bind {
        addr: SocketAddr,
        field: &'static str,
        env: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(String),
}

/// How to start, beyond the config file.
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    /// The encryption key itself (from `AUTHGATE_KEY`); otherwise the key file is used.
    pub key: Option<String>,
    /// Serve a non-loopback address without caller authentication.
    pub insecure_no_auth: bool,
    pub upstream_limits: UpstreamLimits,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            key: None,
            insecure_no_auth: false,
            upstream_limits: UpstreamLimits::default(),
        }
    }
}

/// A running gateway. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub broker: TokenBroker,
    pub store: Arc<dyn Store>,
    pub credentials: CredentialManager,
    authorizer: Authorizer,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight RPCs finish, and waits for the servers to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when a shutdown was requested and the servers stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// The caller table in force; `reload` swaps it (SIGHUP in `authgate serve`).
    pub fn authorizer(&self) -> Authorizer {
        self.authorizer.clone()
    }
}

fn bind_error(addr: SocketAddr, grpc: bool, source: std::io::Error) -> StartError {
    StartError::Bind {
        addr,
        field: if grpc { "grpc_listen" } else { "http_listen" },
        env: if grpc { "GRPC_LISTEN" } else { "HTTP_LISTEN" },
        source,
    }
}

/// Validates everything, then binds and serves. Returns once both ports listen.
pub async fn start(config: Config, opts: StartOptions) -> Result<RunningServer, StartError> {
    let creds = config.validate().map_err(|e| StartError::Config(e.0))?;
    let grpc_addr = config.server.grpc_listen;
    if config.callers.is_empty() && !grpc_addr.ip().is_loopback() && !opts.insecure_no_auth {
        return Err(StartError::Config(format!(
            "refusing to serve {grpc_addr} without caller authentication: anyone who can reach it would get every tenant's tokens. \
             Configure [[callers]] (API keys or mTLS SPIFFE ids), bind a loopback address (127.0.0.1), \
             or pass --insecure-no-auth if something in front of authgate authenticates callers"
        )));
    }
    if config.callers.is_empty() {
        if grpc_addr.ip().is_loopback() {
            tracing::warn!("no [[callers]] configured: dev mode, only loopback clients can connect and every tenant is open to them");
        } else {
            tracing::error!("--insecure-no-auth: serving {grpc_addr} WITHOUT caller authentication; every tenant's tokens are open to anyone who can connect");
        }
    }

    let key = match &opts.key {
        Some(k) => {
            Cipher::parse_key(k).map_err(|e| StartError::Config(format!("AUTHGATE_KEY: {e}")))?
        }
        None => {
            let (key, created) = Cipher::load_or_create(&config.store.key_file)
                .map_err(|e| StartError::Config(e.to_string()))?;
            if created {
                tracing::warn!(path = %config.store.key_file.display(), "created a new encryption key file (mode 0600); back it up: stored secrets cannot be read without it");
            }
            key
        }
    };
    let cipher = Arc::new(Cipher::from_key(&key));
    let store = store::open(&config.store.url)
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    let events = EventLog::new(store.clone(), opts.clock.clone());
    let http_client = UpstreamClient::new(opts.upstream_limits.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let broker = TokenBroker::new(
        store.clone(),
        cipher,
        events.clone(),
        opts.clock.clone(),
        http_client,
        BrokerSettings::from(&config.broker),
    );
    broker
        .sync_config_credentials(&creds)
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    broker
        .load()
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;

    let grpc_listener = TcpListener::bind(grpc_addr)
        .await
        .map_err(|e| bind_error(grpc_addr, true, e))?;
    let http_addr_cfg = config.server.http_listen;
    let http_listener = TcpListener::bind(http_addr_cfg)
        .await
        .map_err(|e| bind_error(http_addr_cfg, false, e))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| bind_error(grpc_addr, true, e))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| bind_error(http_addr_cfg, false, e))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let retention = events.spawn_retention(
        Duration::from_secs(u64::from(config.events.retention_days) * 86_400),
        Duration::from_secs(3600),
    );

    let public_base = config
        .server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    let redirect_uri = url::Url::parse(&format!(
        "{}/oauth/callback",
        public_base.trim_end_matches('/')
    ))
    .map_err(|e| StartError::Config(format!("server.public_url: {e}")))?;
    let credentials = CredentialManager::new(broker.clone(), opts.clock.clone(), redirect_uri);
    let keep_alive =
        credentials.spawn_keep_alive(Duration::from_secs(config.broker.keep_alive_check_seconds));

    let authorizer = Authorizer::new(&config.callers, config.server.max_request_bytes);
    let grpc = grpc_router(
        &config,
        broker.clone(),
        store.clone(),
        credentials.clone(),
        authorizer.layer(),
    )
    .map_err(StartError::Config)?;
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        // The builder's tcp_nodelay is ignored for a listener we pass in; without
        // TCP_NODELAY, Nagle holds each reply's trailers until the client's delayed ACK
        // (40 ms per call; see BENCHMARKS.md).
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let result = grpc
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server stopped with an error");
        }
        retention.abort();
        keep_alive.abort();
    }));

    let app = crate::api::http::router(broker.clone(), credentials.clone());
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let result = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server stopped with an error");
        }
    }));

    tracing::info!(%grpc_addr, %http_addr, store = %redact_store_url(&config.store.url), "authgate listening");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        broker,
        store,
        credentials,
        authorizer,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// A store URL for logs: the password of a PostgreSQL URL is removed.
pub fn redact_store_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("[redacted]"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

type GrpcResponse = http::Response<tonic::body::Body>;
type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<
        AuthLayer,
        tower::layer::util::Stack<
            tower::util::MapResponseLayer<fn(GrpcResponse) -> GrpcResponse>,
            tower::layer::util::Identity,
        >,
    >,
>;

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

fn grpc_router(
    config: &Config,
    broker: TokenBroker,
    store: Arc<dyn Store>,
    credentials: CredentialManager,
    auth: AuthLayer,
) -> Result<GrpcRouter, String> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health_reporter
            .set_serving::<TokenServiceServer<GrpcTokenService>>()
            .await;
        health_reporter
            .set_serving::<CredentialServiceServer<GrpcCredentialService>>()
            .await;
    });

    let s = &config.server;
    let tokens = TokenServiceServer::new(GrpcTokenService::new(broker, store))
        // Requests are a few hundred bytes; a large one is a mistake or an attack, and
        // decoding it would cost memory before any check runs.
        .max_decoding_message_size(s.max_request_bytes);
    let admin = CredentialServiceServer::new(GrpcCredentialService::new(credentials))
        .max_decoding_message_size(s.max_request_bytes);

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(config)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("server.tls: {e}"))?;
    }
    Ok(builder
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
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health_service)
        .add_service(tokens)
        .add_service(admin))
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
