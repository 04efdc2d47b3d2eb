//! `authgate token get|revoke`.
//!
//! `token get` prints only the access token by default so `$(authgate token get ...)` works
//! in scripts; the token is the one secret this CLI prints, because asking for it is the
//! point of the command.

use crate::cli::connect::{self, ClientOptions};
use crate::cli::{output, Target};
use crate::proto::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::Write;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a valid access token (cached by the gateway, fetched or refreshed when needed).
    Get(GetArgs),
    /// Drop cached tokens, and revoke them at the provider with --upstream.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Scope to request (repeat for several); none means the credential's default scopes.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The token must stay valid at least this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub min_ttl: u32,
    /// Fetch a new token from the provider even if a cached one is valid.
    #[arg(long)]
    pub force_refresh: bool,
    /// Print {access_token, token_type, expires_at, scopes, metadata} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Scope set to drop (repeat for several); none drops every cached token.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Also revoke the tokens at the provider (RFC 7009) where it supports revocation.
    #[arg(long)]
    pub upstream: bool,
    /// Print {dropped, upstream_revoked} as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<i32> {
    let gw = connect::connect(&args.client).await?;
    let mut client = gw.tokens();
    match args.command {
        TokenCommand::Get(a) => {
            let resp = client
                .get_token(pb::GetTokenRequest {
                    tenant: a.target.tenant,
                    credential_id: a.target.credential,
                    scopes: a.scopes,
                    min_ttl_seconds: a.min_ttl,
                    force_refresh: a.force_refresh,
                })
                .await?
                .into_inner();
            if a.json {
                output::print_json(&json!({
                    "access_token": resp.access_token,
                    "token_type": resp.token_type,
                    "expires_at": output::ts_json(resp.expires_at.as_ref()),
                    "scopes": resp.scopes,
                    "metadata": resp.metadata,
                }))?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", resp.access_token)?;
            }
        }
        TokenCommand::Revoke(a) => {
            let resp = client
                .revoke(pb::RevokeRequest {
                    tenant: a.target.tenant.clone(),
                    credential_id: a.target.credential.clone(),
                    scopes: a.scopes,
                    upstream: a.upstream,
                })
                .await?
                .into_inner();
            if a.json {
                output::print_json(&json!({
                    "dropped": resp.dropped,
                    "upstream_revoked": resp.upstream_revoked,
                }))?;
            } else {
                let mut line = format!(
                    "{}/{}: dropped {} cached token(s)",
                    a.target.tenant, a.target.credential, resp.dropped
                );
                if a.upstream {
                    line.push_str(&format!(
                        ", revoked {} at the provider",
                        resp.upstream_revoked
                    ));
                }
                writeln!(std::io::stdout().lock(), "{line}")?;
            }
        }
    }
    Ok(0)
}
