//! The client side of the `authgate` command: subcommands that call a running gateway over
//! gRPC (`token`, `events`, `credentials`, `webhooks`, `authorize`).
//!
//! Exit codes: 0 success, 1 the gateway refused or could not be reached (the gRPC status
//! code and message go to stderr), 2 usage error (clap), 3 `authorize` ran out of time,
//! 130 interrupted. Nothing here panics on bad input, and no secret is ever printed.

mod authorize;
mod connect;
mod credentials;
mod events;
mod output;
mod token;
mod webhooks;

use clap::{Args, Subcommand};

pub use connect::ClientOptions;

/// Exit code when the gateway answered with an error or could not be reached.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for usage errors, as clap uses for the ones it detects.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when `authorize` gave up because the authorization request expired.
pub const EXIT_EXPIRED: i32 = 3;
/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The client subcommands; `main` flattens them next to `serve` and `check-config`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Get or revoke access tokens.
    Token(token::TokenArgs),
    /// Read a tenant's event log.
    Events(events::EventsArgs),
    /// Create, inspect and delete credentials (admin callers).
    Credentials(credentials::CredentialsArgs),
    /// Create, list and delete a tenant's webhooks (admin callers).
    Webhooks(webhooks::WebhooksArgs),
    /// Run a credential's consent step and wait until the credential is ACTIVE:
    /// authorization-code flow (prints the provider's URL, opens a browser where there is
    /// one) or device flow (prints the user code and the verification URI, with a QR code
    /// on a terminal; approve on any device).
    Authorize(authorize::AuthorizeArgs),
}

/// Tenant and credential, shared by most subcommands.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Tenant the credential belongs to.
    #[arg(long)]
    pub tenant: String,
    /// Credential id within the tenant.
    #[arg(long = "credential", value_name = "ID")]
    pub credential: String,
}

/// A mistake in the command line that clap cannot see (a flag combination, a malformed
/// value read from a file or the environment): exit code 2, like clap's own.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs one client subcommand and returns the process exit code. Every failure is reported
/// on stderr here, so the caller only has to exit with the code.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<i32> {
    let result = match cmd {
        ClientCommand::Token(a) => token::run(a).await,
        ClientCommand::Events(a) => events::run(a).await,
        ClientCommand::Credentials(a) => credentials::run(a).await,
        ClientCommand::Webhooks(a) => webhooks::run(a).await,
        ClientCommand::Authorize(a) => authorize::run(a).await,
    };
    Ok(match result {
        Ok(code) => code,
        // `authgate events list | head`: the reader left, which is what it wanted.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            0
        }
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e:#}");
            EXIT_USAGE
        }
        Err(e) => {
            report(&e);
            EXIT_FAILURE
        }
    })
}

/// Prints an error on stderr: a gRPC status as `CODE: message`, anything else with its
/// causes. Hints are added where the fix is obvious (a missing API key).
fn report(err: &anyhow::Error) {
    if let Some(status) = err.chain().find_map(|e| e.downcast_ref::<tonic::Status>()) {
        let context = err
            .chain()
            .next()
            .filter(|top| top.downcast_ref::<tonic::Status>().is_none())
            .map(|top| format!("{top}: "))
            .unwrap_or_default();
        // Transport failures (a TLS alert, a reset connection) carry the useful part in the
        // status's source chain, not in its message ("transport error").
        let mut detail = String::new();
        let mut source = std::error::Error::source(status);
        while let Some(s) = source {
            let text = s.to_string();
            if !status.message().contains(&text) && !detail.contains(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            source = s.source();
        }
        eprintln!(
            "error: {context}{}: {}{detail}",
            output::code_name(status.code()),
            status.message()
        );
        if let Some(wait) = retry_after(status) {
            eprintln!("hint: the gateway suggests retrying after {wait:?}");
        }
        // With TLS 1.3 a server that requires client certificates closes the connection
        // after the handshake, so the first call sees only "connection closed".
        let transport = std::error::Error::source(status).is_some();
        if transport && connect::tls_without_client_cert() {
            eprintln!(
                "hint: if the gateway requires a client certificate (mTLS), pass --cert-file and --key-file"
            );
        }
        if status.code() == tonic::Code::Unauthenticated && !connect::api_key_configured() {
            eprintln!(
                "hint: set AUTHGATE_API_KEY, or name the variable holding the key with --api-key-env"
            );
        }
        return;
    }
    eprintln!("error: {err:#}");
}

fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}
