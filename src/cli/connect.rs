//! How the client subcommands reach the gateway: address, TLS / mTLS, API key and deadline.
//!
//! The API key is only ever read from the environment (never a flag value) so it stays out
//! of `ps` output and shell history; it is sent as `authorization: Bearer <key>` and marked
//! sensitive so HTTP/2 header compression never indexes it.

use crate::proto::v1::credential_service_client::CredentialServiceClient;
use crate::proto::v1::token_service_client::TokenServiceClient;
use crate::proto::v1::webhook_service_client::WebhookServiceClient;
use anyhow::{anyhow, Context};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::UsageError;

/// Environment variable holding the API key when `--api-key-env` is not given.
pub const API_KEY_ENV: &str = "AUTHGATE_API_KEY";

/// Where the connection options are listed in `--help`.
const HEADING: &str = "Gateway connection";

/// Options every client subcommand takes (before or after the subcommand name).
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// Gateway gRPC address; `https://` connects with TLS.
    #[arg(
        long,
        global = true, help_heading = HEADING,
        env = "AUTHGATE_ADDR",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub addr: String,
    /// Name of the environment variable holding the API key (default: the key is read from
    /// AUTHGATE_API_KEY). The key itself is never accepted as a flag value.
    #[arg(long, global = true, help_heading = HEADING, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// PEM file with the CA certificate(s) that signed the gateway's certificate
    /// (default: the roots built into this binary, if any).
    #[arg(long, global = true, help_heading = HEADING, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --key-file).
    #[arg(long, global = true, help_heading = HEADING, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, global = true, help_heading = HEADING, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Deadline of each call, sent to the gateway as the gRPC deadline: `10`, `10s`,
    /// `500ms`, `2m`.
    #[arg(long, global = true, help_heading = HEADING, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Set once a key was found, so the error report can say when one is missing.
static KEY_PRESENT: AtomicBool = AtomicBool::new(false);

/// Set when the connection uses TLS without a client certificate.
static TLS_WITHOUT_CERT: AtomicBool = AtomicBool::new(false);

/// Whether this run uses TLS without a client certificate (for the hint on a closed
/// connection).
pub fn tls_without_client_cert() -> bool {
    TLS_WITHOUT_CERT.load(Ordering::Relaxed)
}

/// Whether this run sends an API key (for the hint on UNAUTHENTICATED).
pub fn api_key_configured() -> bool {
    KEY_PRESENT.load(Ordering::Relaxed)
}

/// Parses `10`, `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 10s, 500ms or 2m"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        other => return Err(format!("unknown unit `{other}` in `{s}`; use ms, s or m")),
    };
    if d.is_zero() {
        return Err("the timeout must be more than zero".into());
    }
    Ok(d)
}

/// Adds the API key and the deadline to every request.
#[derive(Clone)]
pub struct CallAuth {
    key: Option<MetadataValue<Ascii>>,
    timeout: Duration,
}

impl Interceptor for CallAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = &self.key {
            req.metadata_mut().insert("authorization", k.clone());
        }
        req.set_timeout(self.timeout);
        Ok(req)
    }
}

pub type Conn = InterceptedService<Channel, CallAuth>;

/// A connected gateway: both services over one HTTP/2 connection.
pub struct Gateway {
    channel: Channel,
    auth: CallAuth,
}

impl Gateway {
    pub fn tokens(&self) -> TokenServiceClient<Conn> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn credentials(&self) -> CredentialServiceClient<Conn> {
        CredentialServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn webhooks(&self) -> WebhookServiceClient<Conn> {
        WebhookServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

fn api_key(opts: &ClientOptions) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
    let (name, required) = match &opts.api_key_env {
        Some(name) => (name.as_str(), true),
        None => (API_KEY_ENV, false),
    };
    let key = match std::env::var(name) {
        Ok(k) if !k.trim().is_empty() => k,
        Ok(_) | Err(std::env::VarError::NotPresent) if !required => return Ok(None),
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            return Err(UsageError(format!(
                "--api-key-env {name}: the environment variable {name} is not set or empty"
            ))
            .into())
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(UsageError(format!("{name}: the API key is not valid UTF-8")).into())
        }
    };
    // The message names the variable, never the key.
    let mut value = MetadataValue::try_from(format!("Bearer {}", key.trim())).map_err(|_| {
        UsageError(format!(
            "{name}: the API key contains characters that cannot be sent in a header"
        ))
    })?;
    value.set_sensitive(true);
    KEY_PRESENT.store(true, Ordering::Relaxed);
    Ok(Some(value))
}

fn read_pem(flag: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}

/// Builds the endpoint from the options and connects once, so an unreachable gateway is
/// reported as such rather than as the first call's failure.
pub async fn connect(opts: &ClientOptions) -> anyhow::Result<Gateway> {
    let key = api_key(opts)?;
    let addr = if opts.addr.contains("://") {
        opts.addr.clone()
    } else {
        // `127.0.0.1:50051` is what people type; plaintext is the dev default.
        format!("http://{}", opts.addr)
    };
    let tls = match addr.split("://").next() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(
                UsageError(format!("--addr {addr}: use an http:// or https:// address")).into(),
            )
        }
    };
    if opts.cert_file.is_some() != opts.key_file.is_some() {
        return Err(UsageError("--cert-file and --key-file go together".into()).into());
    }
    if !tls && (opts.ca_file.is_some() || opts.cert_file.is_some()) {
        return Err(UsageError(format!(
            "--ca-file, --cert-file and --key-file need an https:// address, not {addr}"
        ))
        .into());
    }
    let mut endpoint = Endpoint::from_shared(addr.clone())
        .map_err(|_| UsageError(format!("--addr {addr}: not a valid URL")))?
        .connect_timeout(opts.timeout)
        // A backstop for a gateway that stops answering: the server enforces the deadline
        // itself (grpc-timeout) and reports DEADLINE_EXCEEDED a little earlier.
        .timeout(opts.timeout + Duration::from_secs(2));
    if tls {
        let mut cfg = ClientTlsConfig::new();
        cfg = match &opts.ca_file {
            Some(ca) => cfg.ca_certificate(Certificate::from_pem(read_pem("--ca-file", ca)?)),
            None => cfg.with_enabled_roots(),
        };
        TLS_WITHOUT_CERT.store(opts.cert_file.is_none(), Ordering::Relaxed);
        if let (Some(cert), Some(key)) = (&opts.cert_file, &opts.key_file) {
            cfg = cfg.identity(Identity::from_pem(
                read_pem("--cert-file", cert)?,
                read_pem("--key-file", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| anyhow!("TLS settings for {addr}: {}", chain(&e)))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let hint = if tls && opts.ca_file.is_none() {
            " (if the gateway's certificate comes from a private CA, pass --ca-file)"
        } else {
            ""
        };
        anyhow!(
            "cannot reach the gateway at {addr}: {}{hint}; is `authgate serve` running there? (set --addr or AUTHGATE_ADDR)",
            chain(&e)
        )
    })?;
    Ok(Gateway {
        channel,
        auth: CallAuth {
            key,
            timeout: opts.timeout,
        },
    })
}

/// An error with its sources on one line: transport errors keep the useful part (connection
/// refused, certificate unknown) in the source chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
