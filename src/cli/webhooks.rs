//! `authgate webhooks create|list|delete` (WebhookService; admin callers). The signing
//! secret comes from the environment (`--secret-env NAME`) or stdin (`--secret-stdin`), never
//! from the command line, and is never printed: the gateway does not return it.

use crate::cli::connect::{self, ClientOptions};
use crate::cli::credentials::read_secret_stdin;
use crate::cli::{output, UsageError};
use crate::proto::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Write;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Create a webhook, or replace the API-created one of that id.
    Create(CreateArgs),
    /// List a tenant's webhooks (never their secrets).
    List(ListArgs),
    /// Delete an API-created webhook and the notifications queued for it.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub tenant: String,
    /// Webhook id within the tenant.
    #[arg(long = "id", value_name = "ID")]
    pub id: String,
    /// Where the notifications are POSTed.
    #[arg(long)]
    pub url: String,
    /// A notification type to send (repeat for several), or `*` for all:
    /// credential.status_changed, token.fetch_failing, credential.created,
    /// credential.replaced, credential.deleted, authorization.completed.
    #[arg(long = "event", value_name = "TYPE", required = true)]
    pub events: Vec<String>,
    /// The environment variable holding the signing secret (`whsec_...`).
    #[arg(long, value_name = "ENVNAME", conflicts_with = "secret_stdin")]
    pub secret_env: Option<String>,
    /// Read the signing secret from stdin.
    #[arg(long)]
    pub secret_stdin: bool,
    /// Print the stored webhook as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub tenant: String,
    /// Print a JSON array of webhooks.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long = "id", value_name = "ID")]
    pub id: String,
    /// Print {deleted} as JSON.
    #[arg(long)]
    pub json: bool,
}

fn webhook_json(w: &pb::Webhook) -> Value {
    json!({
        "tenant": w.tenant,
        "webhook_id": w.webhook_id,
        "url": w.url,
        "events": w.events,
        "source": w.source,
        "created_at": output::ts_json(w.created_at.as_ref()),
        "updated_at": output::ts_json(w.updated_at.as_ref()),
    })
}

/// The secret, from where the flags say; its value is never part of an error.
fn secret(a: &CreateArgs) -> anyhow::Result<String> {
    if a.secret_stdin {
        return read_secret_stdin("secret");
    }
    let Some(name) = &a.secret_env else {
        return Err(UsageError(
            "give the signing secret with --secret-env ENVNAME or --secret-stdin (never on the command line)".into(),
        )
        .into());
    };
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(UsageError(format!(
            "--secret-env {name}: the environment variable {name} is not set or empty"
        ))
        .into()),
    }
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<i32> {
    // The secret is read before connecting: a missing one should not wait on the network.
    let secret = match &args.command {
        WebhooksCommand::Create(a) => Some(secret(a)?),
        _ => None,
    };
    let gw = connect::connect(&args.client).await?;
    let mut client = gw.webhooks();
    let mut out = std::io::stdout();
    match args.command {
        WebhooksCommand::Create(a) => {
            let w = client
                .create_webhook(pb::CreateWebhookRequest {
                    tenant: a.tenant,
                    webhook_id: a.id,
                    url: a.url,
                    events: a.events,
                    secret: secret.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if a.json {
                output::print_json(&webhook_json(&w))?;
            } else {
                writeln!(
                    out,
                    "{}/{}: stored ({})",
                    w.tenant,
                    w.webhook_id,
                    w.events.join(", ")
                )?;
            }
        }
        WebhooksCommand::List(a) => {
            let hooks = client
                .list_webhooks(pb::ListWebhooksRequest {
                    tenant: a.tenant.clone(),
                })
                .await?
                .into_inner()
                .webhooks;
            print_list(&a.tenant, &hooks, a.json)?;
        }
        WebhooksCommand::Delete(a) => {
            let resp = client
                .delete_webhook(pb::DeleteWebhookRequest {
                    tenant: a.tenant.clone(),
                    webhook_id: a.id.clone(),
                })
                .await?
                .into_inner();
            if a.json {
                output::print_json(&json!({"deleted": resp.deleted}))?;
            } else if resp.deleted {
                writeln!(out, "{}/{}: deleted", a.tenant, a.id)?;
            } else {
                writeln!(
                    out,
                    "{}/{}: nothing deleted (it did not exist)",
                    a.tenant, a.id
                )?;
            }
        }
    }
    Ok(0)
}

fn print_list(tenant: &str, hooks: &[pb::Webhook], json: bool) -> anyhow::Result<()> {
    if json {
        return output::print_json(&Value::Array(hooks.iter().map(webhook_json).collect()));
    }
    if hooks.is_empty() {
        eprintln!("no webhooks for tenant {tenant}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|w| {
            vec![
                w.webhook_id.clone(),
                w.url.clone(),
                w.events.join(","),
                w.source.clone(),
                output::ts_short(w.updated_at.as_ref()),
            ]
        })
        .collect();
    let table = output::table(&["ID", "URL", "EVENTS", "SOURCE", "UPDATED"], &rows);
    std::io::stdout().write_all(table.as_bytes())?;
    Ok(())
}
