//! Builds and runs the gateway: [`start`] validates the config, opens the store, loads
//! credentials, binds both ports and serves gRPC (`server::grpc`: TokenService,
//! CredentialService, reflection v1 + v1alpha, health) and HTTP (`api::http`: the OAuth
//! callback, `/healthz`, `/metrics`) until [`RunningServer::shutdown`].

mod grpc;

use crate::api::auth::Authorizer;
use crate::api::http;
use crate::api::mesh::{ForwardAuth, MeshService, RouteTable};
use crate::broker::{BrokerSettings, TokenBroker};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ResolvedCredential, ServerConfig};
use crate::credentials::{CredentialManager, CredentialSet};
use crate::events::EventLog;
use crate::metrics::Metrics;
use crate::plugins::external::ExternalPlugins;
use crate::plugins::Registry;
use crate::store::{self, crypto::Cipher, secrets::Vault, Store};
use crate::webhooks::delivery::Dispatcher;
use crate::webhooks::Webhooks;
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
    /// The provider kinds credentials may use.
    pub registry: Registry,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            key: None,
            insecure_no_auth: false,
            upstream_limits: UpstreamLimits::default(),
            registry: Registry::builtin(),
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
    /// The `[[plugins]]` processes.
    pub plugins: ExternalPlugins,
    /// The provider kinds in force: built-in and `[[plugins]]`.
    registry: Registry,
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

    /// The provider kinds in force (built-in and `[[plugins]]`): what a reloaded config is
    /// checked against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The caller table in force; `reload` swaps it (SIGHUP in `authgate serve`).
    pub fn authorizer(&self) -> Authorizer {
        self.authorizer.clone()
    }
}

/// Validates everything, then binds and serves. Returns once both ports listen.
pub async fn start(config: Config, mut opts: StartOptions) -> Result<RunningServer, StartError> {
    // Dropping the sender (an error return below) stops whatever was started.
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics = Metrics::new(
        config.telemetry.metrics_per_credential,
        crate::api::rpc_metrics::served_methods(),
    );
    let (plugins, plugin_tasks) = start_plugins(&config, &metrics, &shutdown_rx).await?;
    opts.registry = plugins.register(std::mem::take(&mut opts.registry));
    let creds = check_config(&config, &opts)?;
    let cipher = Arc::new(Cipher::from_key(&encryption_key(&config, &opts)?));
    let store = store::open(&config.store.url)
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    let events = EventLog::new(store.clone(), opts.clock.clone()).with_metrics(metrics.clone());
    let broker = build_broker(&config, &opts, store.clone(), cipher, events.clone())?;
    let credentials = load_credentials(&broker, &creds).await?;
    let webhooks = load_webhooks(&config, &broker).await?;
    let listeners = Listeners::bind(&config.server).await?;
    let (grpc_addr, http_addr) = (listeners.grpc_addr, listeners.http_addr);
    credentials.set_redirect_uri(redirect_uri(&config, http_addr)?);
    credentials.set_consent_binding(config.server.bind_consent_to_browser);

    let retention = events.spawn_retention(
        Duration::from_secs(u64::from(config.events.retention_days) * 86_400),
        Duration::from_secs(3600),
    );
    let keep_alive =
        credentials.spawn_keep_alive(Duration::from_secs(config.broker.keep_alive_check_seconds));
    let eviction = broker.spawn_eviction(Duration::from_secs(60));
    let deliveries = webhook_dispatcher(&config, &opts, &broker)?.spawn(shutdown_rx.clone());

    let authorizer = Authorizer::new(&config.callers, config.server.max_request_bytes);
    let mesh = MeshService::new(
        broker.clone(),
        RouteTable::new(&config.mesh).map_err(StartError::Config)?,
    );
    let grpc = grpc::router(
        &config,
        broker.clone(),
        credentials.clone(),
        webhooks,
        mesh.clone(),
        authorizer.layer(),
        shutdown_rx.clone(),
    )
    .map_err(StartError::Config)?;
    let forward_auth = ForwardAuth::new(mesh, authorizer.clone());
    let tasks = vec![
        grpc::spawn_serve(
            grpc,
            listeners.grpc,
            shutdown_rx.clone(),
            [retention, keep_alive, eviction],
        ),
        spawn_http(
            http::router(broker.clone(), credentials.clone(), forward_auth),
            listeners.http,
            shutdown_rx,
            &config.server,
        ),
        deliveries,
    ]
    .into_iter()
    .chain(plugin_tasks)
    .collect();

    tracing::info!(%grpc_addr, %http_addr, store = %redact_store_url(&config.store.url), "authgate listening");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        broker,
        store,
        credentials,
        plugins,
        registry: opts.registry,
        authorizer,
        shutdown,
        tasks,
    })
}

/// `authgate check-config`: every check [`start`] makes before it opens the store. The
/// `[[plugins]]` are started (their digest, their handshake) to learn their kinds and
/// secret fields, and stopped again.
pub async fn check(config: &Config) -> Result<(), StartError> {
    let (stop, stopped) = watch::channel(false);
    let (plugins, tasks) = start_plugins(config, &Metrics::default(), &stopped).await?;
    let registry = plugins.register(Registry::builtin());
    let checked = config
        .validate_with(&registry)
        .map(drop)
        .map_err(|e| StartError::Config(e.0));
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    checked
}

/// Checks the `[[plugins]]` entries and starts each plugin (its digest, its handshake),
/// before the credentials that name their kinds are checked.
async fn start_plugins(
    config: &Config,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<(ExternalPlugins, Vec<JoinHandle<()>>), StartError> {
    crate::config::plugins::validate(&config.plugins, &Registry::builtin().kinds())
        .map_err(|e| StartError::Config(e.0))?;
    // The broker abandons a fetch at fetch_timeout_seconds; a plugin call ends (and kills
    // a plugin that hangs) a little before that.
    let max_call_time = Duration::from_secs(config.broker.fetch_timeout_seconds)
        .saturating_sub(Duration::from_millis(500))
        .max(Duration::from_millis(500));
    ExternalPlugins::start(&config.plugins, max_call_time, metrics, shutdown)
        .await
        .map_err(StartError::Config)
}

/// The config's own validation, then the caller policy: callers must be authenticated
/// unless only this host can connect or the operator said something in front does it.
fn check_config(
    config: &Config,
    opts: &StartOptions,
) -> Result<Vec<ResolvedCredential>, StartError> {
    let creds = config
        .validate_with(&opts.registry)
        .map_err(|e| StartError::Config(e.0))?;
    let grpc_addr = config.server.grpc_listen;
    if config.callers.is_empty() && !grpc_addr.ip().is_loopback() && !opts.insecure_no_auth {
        return Err(StartError::Config(format!(
            "refusing to serve {grpc_addr} without caller authentication: anyone who can reach it would get every tenant's tokens. \
             Configure [[callers]] (API keys or mTLS SPIFFE ids), bind a loopback address (127.0.0.1), \
             or pass --insecure-no-auth if something in front of authgate authenticates callers"
        )));
    }
    let api_keys = config.callers.iter().any(|c| c.api_key_sha256.is_some());
    if api_keys && config.server.tls.is_none() && !grpc_addr.ip().is_loopback() {
        tracing::warn!("API keys are accepted over plaintext gRPC on {grpc_addr}: anyone on the network path can read them; configure [server.tls] (or terminate TLS in front of authgate)");
    }
    let http_addr = config.server.http_listen;
    if api_keys && !http_addr.ip().is_loopback() {
        tracing::warn!("API keys are accepted over plaintext HTTP by /mesh/forward-auth on {http_addr}: run the forward-auth proxy on the same host (bind http_listen to 127.0.0.1) or on a network path you trust");
    }
    if config.callers.is_empty() {
        if grpc_addr.ip().is_loopback() {
            tracing::warn!("no [[callers]] configured: dev mode, only loopback clients can connect and every tenant is open to them");
        } else {
            tracing::error!("--insecure-no-auth: serving {grpc_addr} WITHOUT caller authentication; every tenant's tokens are open to anyone who can connect");
        }
    }
    Ok(creds)
}

/// The key that seals stored secrets: `AUTHGATE_KEY` when given, else the key file,
/// created on first start so that a dev setup needs no step.
fn encryption_key(config: &Config, opts: &StartOptions) -> Result<[u8; 32], StartError> {
    if let Some(k) = &opts.key {
        return Cipher::parse_key(k).map_err(|e| StartError::Config(format!("AUTHGATE_KEY: {e}")));
    }
    let (key, created) = Cipher::load_or_create(&config.store.key_file)
        .map_err(|e| StartError::Config(e.to_string()))?;
    if created {
        tracing::warn!(path = %config.store.key_file.display(), "created a new encryption key file (mode 0600); back it up: stored secrets cannot be read without it");
    }
    Ok(key)
}

fn build_broker(
    config: &Config,
    opts: &StartOptions,
    store: Arc<dyn Store>,
    cipher: Arc<Cipher>,
    events: EventLog,
) -> Result<TokenBroker, StartError> {
    let policy = config
        .egress
        .policy()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let http_client = UpstreamClient::with_egress(opts.upstream_limits.clone(), policy)
        .map_err(|e| StartError::Config(e.to_string()))?;
    let metrics = events.metrics().clone();
    let credentials = CredentialSet::new(
        store,
        Vault::new(cipher),
        events,
        http_client,
        opts.registry.clone(),
        opts.clock.clone(),
    );
    Ok(TokenBroker::with_metrics(
        credentials,
        BrokerSettings::from(&config.broker),
        metrics,
    ))
}

/// Brings the store in line with the config file's credentials, then loads every
/// credential (config and API-managed) into memory. The redirect URI is set once the
/// HTTP port is bound.
async fn load_credentials(
    broker: &TokenBroker,
    creds: &[ResolvedCredential],
) -> Result<CredentialManager, StartError> {
    let unbound = url::Url::parse("http://127.0.0.1/oauth/callback")
        .map_err(|e| StartError::Config(e.to_string()))?;
    let manager = CredentialManager::new(broker.clone(), unbound);
    manager
        .sync_config(creds)
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    manager
        .load()
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    Ok(manager)
}

/// The config file's webhooks stored (and those it no longer has deleted).
async fn load_webhooks(config: &Config, broker: &TokenBroker) -> Result<Webhooks, StartError> {
    let declared = config
        .resolve_webhooks()
        .map_err(|e| StartError::Config(e.0))?;
    let set = broker.credentials();
    let webhooks = Webhooks::new(
        set.store().clone(),
        set.vault().clone(),
        set.egress_policy().clone(),
        set.clock().clone(),
    );
    webhooks
        .sync_config(&declared)
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    Ok(webhooks)
}

/// The webhook outbox's delivery loop, with a client of its own: the shared limits and
/// egress policy, and `[webhook_delivery] timeout_seconds` per attempt.
fn webhook_dispatcher(
    config: &Config,
    opts: &StartOptions,
    broker: &TokenBroker,
) -> Result<Dispatcher, StartError> {
    let set = broker.credentials();
    let timeout = Duration::from_secs(config.webhook_delivery.timeout_seconds);
    let limits = UpstreamLimits {
        total_timeout: timeout.min(opts.upstream_limits.total_timeout),
        connect_timeout: timeout.min(opts.upstream_limits.connect_timeout),
        ..opts.upstream_limits.clone()
    };
    let http = UpstreamClient::with_egress(limits, set.egress_policy().clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    Ok(Dispatcher::new(
        set.store().clone(),
        set.vault().clone(),
        http,
        set.events().clone(),
        set.clock().clone(),
        config
            .webhook_delivery
            .settings(config.events.retention_days),
    ))
}

/// Both ports, bound before anything serves so that a taken port fails the start.
struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    /// The bound addresses: with port 0 in the config, the OS picks the port.
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl Listeners {
    async fn bind(server: &ServerConfig) -> Result<Self, StartError> {
        let (grpc_cfg, http_cfg) = (server.grpc_listen, server.http_listen);
        let grpc = TcpListener::bind(grpc_cfg)
            .await
            .map_err(|e| bind_error(grpc_cfg, true, e))?;
        let http = TcpListener::bind(http_cfg)
            .await
            .map_err(|e| bind_error(http_cfg, false, e))?;
        let grpc_addr = grpc
            .local_addr()
            .map_err(|e| bind_error(grpc_cfg, true, e))?;
        let http_addr = http
            .local_addr()
            .map_err(|e| bind_error(http_cfg, false, e))?;
        Ok(Self {
            grpc,
            http,
            grpc_addr,
            http_addr,
        })
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

/// The redirect URI providers send the browser back to: `server.public_url` when set (a
/// proxy in front), else the bound HTTP address, which is why it is known only after
/// binding.
fn redirect_uri(config: &Config, http_addr: SocketAddr) -> Result<url::Url, StartError> {
    let public_base = config
        .server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));
    url::Url::parse(&format!(
        "{}/oauth/callback",
        public_base.trim_end_matches('/')
    ))
    .map_err(|e| StartError::Config(format!("server.public_url: {e}")))
}

/// Serves the HTTP port until shutdown: at most `server.max_http_connections` connections
/// at once (more wait in the listen queue) and request headers within
/// `server.http_header_read_timeout_seconds`, so clients that connect and stall cannot hold
/// the public callback port. In-flight requests finish on shutdown (10 s at most).
fn spawn_http(
    app: axum::Router,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    server: &ServerConfig,
) -> JoinHandle<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    let slots = Arc::new(tokio::sync::Semaphore::new(server.max_http_connections));
    let header_timeout = Duration::from_secs(server.http_header_read_timeout_seconds);
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder.http2().timer(TokioTimer::new());
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                () = stopped(&mut shutdown) => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stopped(&mut shutdown) => break,
            };
            // The peer address, for forward-auth's loopback rule in dev mode.
            let app =
                tower::ServiceExt::map_request(app.clone(), move |mut req: ::http::Request<_>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open 10 s after shutdown; closing them");
        }
    })
}

/// Resolves once shutdown is requested (the watch guard is not held across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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
