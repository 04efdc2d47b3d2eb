//! The shared end-to-end harness: a real OAuth 2.0 server (npm `oidc-provider`, see
//! tests/oidc/server.mjs) in a child process, and the real authgate server in-process on
//! ephemeral ports, or the real binary as a child process.

#![allow(dead_code)]

pub mod mesh;
pub mod pg;
pub mod webhooks;

use authgate::config::Config;
use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::server::{RunningServer, StartOptions};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::Channel;

pub const TEST_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A unique environment variable holding `value`, for `${env:NAME}` references.
// The gateway resolves `${env:NAME}` from the process environment (the binary inherits it),
// so the value has to go there; each name is unique, so concurrent tests never race on one.
#[allow(clippy::disallowed_methods)]
pub fn env_secret(value: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "AUTHGATE_TEST_SECRET_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&name, value);
    name
}

/// The oidc-provider test server, killed on drop.
pub struct OidcServer {
    pub issuer: String,
    /// The mutual-TLS listener's base URL (`https://127.0.0.1:PORT`), when it was turned on
    /// (OIDC_MTLS_CERT and OIDC_MTLS_KEY, see server.mjs).
    pub mtls: Option<String>,
    child: Child,
    http: reqwest::Client,
}

impl OidcServer {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let root = repo_root();
        assert!(
            root.join("tests/oidc/node_modules/oidc-provider").exists(),
            "the OAuth test server is not installed: run `npm ci --prefix tests/oidc` (bash .ci/run does)"
        );
        let mut cmd = Command::new("node");
        cmd.arg(root.join("tests/oidc/server.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("node must be installed to run the OAuth test server");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("OAuth test server did not start within 30 s")
            .expect("join")
            .expect("read issuer line");
        let v: Value = serde_json::from_str(line.trim()).expect("issuer line is JSON");
        Self {
            issuer: v["issuer"].as_str().expect("issuer").to_owned(),
            mtls: v["mtls"].as_str().map(str::to_owned),
            child,
            http: reqwest::Client::new(),
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn token_requests(&self) -> u64 {
        self.stats().await["token_requests"].as_u64().unwrap()
    }

    pub async fn faults(&self, faults: Value) {
        let r = self
            .http
            .post(format!("{}/test/faults", self.issuer))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    pub async fn mint_refresh_token(&self, scope: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/test/mint-refresh-token", self.issuer))
            .json(&serde_json::json!({"client_id": "rt-client", "scope": scope}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned()
    }

    /// RFC 7662 introspection as `cc-basic`: is the token active?
    pub async fn is_active(&self, token: &str, basic_secret: &str) -> bool {
        let v: Value = self
            .http
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth("cc-basic", Some(basic_secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["active"].as_bool().unwrap_or(false)
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// authgate running in this process on ephemeral ports, with its own store directory.
pub struct Gateway {
    pub server: Option<RunningServer>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Config text with ephemeral ports and the store inside `dir`, plus `extra`. The fake
/// providers listen on loopback, which API-created credentials may reach only when the
/// operator allow-lists it; tests of the egress policy itself build their config apart.
pub fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\n[egress]\nallow = [\"127.0.0.1\", \"localhost\"]\n\n[store]\nurl = \"sqlite://{}\"\nkey_file = \"{}\"\n\n{extra}",
        dir.join("authgate.db").display(),
        dir.join("authgate.key").display()
    )
}

impl Gateway {
    pub async fn start(extra_config: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut g = Self::start_in(&dir, extra_config).await;
        g._tmp = Some(tmp);
        g
    }

    /// Starts on an existing store directory (to test restarts).
    pub async fn start_in(dir: &Path, extra_config: &str) -> Self {
        Self::start_with(dir, extra_config, StartOptions::default()).await
    }

    /// Like `start_in`, with options (e.g. a manual clock). The test key is always used.
    pub async fn start_with(dir: &Path, extra_config: &str, opts: StartOptions) -> Self {
        let cfg = Config::parse(&config_text(dir, extra_config)).expect("test config parses");
        Self::start_config(dir, cfg, opts).await
    }

    /// Starts from a parsed config (for tests that adjust fields, e.g. a fixed HTTP port).
    pub async fn start_config(dir: &Path, cfg: Config, opts: StartOptions) -> Self {
        let server = authgate::server::start(
            cfg,
            StartOptions {
                key: Some(TEST_KEY.into()),
                ..opts
            },
        )
        .await
        .expect("gateway starts");
        Self {
            server: Some(server),
            dir: dir.to_owned(),
            _tmp: None,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().grpc_addr
    }

    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().http_addr
    }

    pub async fn admin(
        &self,
    ) -> authgate::proto::v1::credential_service_client::CredentialServiceClient<Channel> {
        authgate::proto::v1::credential_service_client::CredentialServiceClient::connect(format!(
            "http://{}",
            self.addr()
        ))
        .await
        .unwrap()
    }

    pub async fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(format!("http://{}", self.addr()))
            .await
            .unwrap()
    }

    /// Several independent HTTP/2 connections, for load.
    pub async fn clients(&self, n: usize) -> Vec<TokenServiceClient<Channel>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.client().await);
        }
        v
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// The `authgate` binary as a child process; killed on drop. stderr goes to `log`.
pub struct GatewayProcess {
    pub child: Child,
    pub grpc_addr: String,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl GatewayProcess {
    /// Starts `authgate serve --config <dir>/authgate.toml` with fixed free ports, waits
    /// until the gRPC port accepts connections.
    pub async fn start(dir: &Path, extra_config: &str, env: &[(&str, &str)]) -> Self {
        // A port picked free can be taken by a parallel test before authgate binds it: try
        // again with other ports when that is why it stopped.
        for _ in 0..2 {
            match Self::try_start(dir, extra_config, env).await {
                Ok(g) => return g,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("authgate exited: {log}"),
            }
        }
        match Self::try_start(dir, extra_config, env).await {
            Ok(g) => g,
            Err(log) => panic!("authgate exited: {log}"),
        }
    }

    #[allow(clippy::disallowed_methods)] // Waits on real time for the child to listen.
    async fn try_start(
        dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let grpc = free_port();
        let http = free_port();
        let text = config_text(dir, extra_config)
            .replace(
                "127.0.0.1:0\"\nhttp_listen",
                &format!("127.0.0.1:{grpc}\"\nhttp_listen"),
            )
            .replace(
                "http_listen = \"127.0.0.1:0\"",
                &format!("http_listen = \"127.0.0.1:{http}\""),
            );
        let cfg_path = dir.join("authgate.toml");
        std::fs::write(&cfg_path, text).unwrap();
        let log = dir.join("authgate.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let addr = format!("127.0.0.1:{grpc}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "status {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "authgate did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            grpc_addr: addr,
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait, so the log is complete.
    #[allow(clippy::disallowed_methods)] // Waits on real time for the child process.
    pub fn stop(&mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[credentials]]` for the oidc-provider client-credentials client `cc-basic`.
pub fn cc_credential(
    tenant: &str,
    id: &str,
    token_url: &str,
    secret_env: &str,
    extra: &str,
) -> String {
    format!(
        "[[credentials]]\ntenant = \"{tenant}\"\nid = \"{id}\"\nprovider = \"oauth2\"\n[credentials.settings]\ntoken_url = \"{token_url}\"\ngrant = \"client_credentials\"\nclient_id = \"cc-basic\"\nclient_secret = \"${{env:{secret_env}}}\"\nclient_auth = \"basic\"\nscopes = [\"read\"]\n{extra}\n"
    )
}

pub fn get_token_request(
    tenant: &str,
    id: &str,
    scopes: &[&str],
) -> authgate::proto::v1::GetTokenRequest {
    authgate::proto::v1::GetTokenRequest {
        tenant: tenant.into(),
        credential_id: id.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        min_ttl_seconds: 0,
        force_refresh: false,
    }
}

#[allow(clippy::disallowed_methods)] // Compares with the real gateway's wall clock.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Follows oidc-provider's dev-interaction login and consent (tests/oidc/server.mjs header)
/// with a cookie jar, and returns the final redirect to the gateway's callback, unfollowed.
pub async fn login_and_consent(issuer: &str, authorization_url: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut jar: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut url = authorization_url.to_owned();
    let mut form: Option<Vec<(&str, &str)>> = None;
    let mut interactions = 0;
    for _ in 0..12 {
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = match form.take() {
            Some(f) => http.post(&url).form(&f),
            None => http.get(&url),
        };
        let resp = req.header("cookie", cookie).send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let kv = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = kv.split_once('=') {
                jar.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        let loc = resp
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("expected a redirect from {url}, got {}", resp.status()))
            .to_str()
            .unwrap()
            .to_owned();
        let next = if loc.starts_with('/') {
            format!("{issuer}{loc}")
        } else {
            loc
        };
        if !next.starts_with(issuer) {
            return next;
        }
        if next.contains("/interaction/") {
            // The first interaction is the login, the next the consent.
            interactions += 1;
            form = Some(if interactions == 1 {
                vec![
                    ("prompt", "login"),
                    ("login", "test-user"),
                    ("password", "x"),
                ]
            } else {
                vec![("prompt", "consent")]
            });
        }
        url = next;
    }
    panic!("too many redirects");
}

/// A protobuf `Struct` from a JSON object.
pub fn settings(v: Value) -> prost_types::Struct {
    match authgate::api::credential_service::json_to_prost(v).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        _ => unreachable!("settings are a JSON object"),
    }
}

/// A PutCredential request with settings given as JSON.
pub fn put(
    tenant: &str,
    id: &str,
    provider: &str,
    s: Value,
) -> authgate::proto::v1::PutCredentialRequest {
    authgate::proto::v1::PutCredentialRequest {
        tenant: tenant.into(),
        credential_id: id.into(),
        provider: provider.into(),
        settings: Some(settings(s)),
    }
}

/// The example Python plugin (`examples/plugins/ticket`, kind `example_ticket`).
pub fn example_plugin() -> PathBuf {
    repo_root().join("examples/plugins/ticket/ticket_plugin.py")
}

/// The hex SHA-256 of a file, as `[[plugins]] sha256` wants it.
pub fn digest(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `[[plugins]]` for `script` (run by its shebang) with the Python SDK from this
/// repository, plus `extra` lines.
pub fn plugin_entry(kind: &str, script: &Path, sha256: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nkind = \"{kind}\"\ncommand = [\"{}\"]\nsha256 = \"{sha256}\"\nenv = {{ PYTHONPATH = \"{}\" }}\n{extra}\n",
        script.display(),
        repo_root().join("sdk/python").display()
    )
}
