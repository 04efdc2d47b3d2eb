//! `authgate credentials put|get|list|delete` (CredentialService; admin callers).
//!
//! Secrets reach `put` only through the environment (`--secret-env field=ENVNAME`) or stdin
//! (`--secret-stdin field`): anything on the command line ends up in `ps` output and shell
//! history, so `--set` refuses fields that look secret. The gateway never returns secrets,
//! and nothing here prints one.

use crate::api::convert;
use crate::cli::connect::{self, ClientOptions};
use crate::cli::{output, Target, UsageError};
use crate::proto::v1 as pb;
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

/// The gateway's largest page.
const PAGE_SIZE: u32 = 1000;

type Client = pb::credential_service_client::CredentialServiceClient<connect::Conn>;

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(subcommand)]
    pub command: CredentialsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Create or replace a credential. Settings come from --settings-file, --set and
    /// --set-json; secrets only from --secret-env or --secret-stdin.
    Put(PutArgs),
    /// Show one credential (never its secrets).
    Get(GetArgs),
    /// List a tenant's credentials.
    List(ListArgs),
    /// Delete a credential with its cached tokens, stored secrets and events.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: Target,
    /// Provider plugin: oauth2 | trimble_connect | trimble_ag | autodesk_aps | lseg_rdp.
    #[arg(long, value_name = "KIND")]
    pub provider: String,
    /// Settings as a JSON or TOML table (by extension; otherwise JSON is tried first).
    #[arg(long, value_name = "FILE")]
    pub settings_file: Option<PathBuf>,
    /// One setting; `true`/`false` and numbers are typed (`default_lifetime_seconds=60` is a
    /// number). Dotted keys set nested tables (`extra_params.audience=...`). For lists or a
    /// string that looks like a number, use --set-json.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_assignment)]
    pub set: Vec<(String, String)>,
    /// One setting as JSON: `scopes=["read","write"]`, `client_id="12345"`.
    #[arg(long = "set-json", value_name = "KEY=JSON", value_parser = parse_assignment)]
    pub set_json: Vec<(String, String)>,
    /// A secret setting read from an environment variable: `client_secret=IDP_SECRET`.
    #[arg(long = "secret-env", value_name = "FIELD=ENVNAME", value_parser = parse_assignment)]
    pub secret_env: Vec<(String, String)>,
    /// A secret setting read from stdin (one line at a terminal; otherwise all of stdin,
    /// without its final newline).
    #[arg(long = "secret-stdin", value_name = "FIELD")]
    pub secret_stdin: Option<String>,
    /// Print the stored credential as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the credential as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Tenant whose credentials to list.
    #[arg(long)]
    pub tenant: String,
    /// Print a JSON array of credentials.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: Target,
    /// Also revoke its tokens at the provider, where supported.
    #[arg(long)]
    pub revoke_upstream: bool,
    /// Print {deleted, upstream_revoked} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `key=value`, split at the first `=`.
fn parse_assignment(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// Fields that hold secrets in the provider plugins (and anything named like one).
fn looks_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["secret", "password", "passphrase", "private_key", "api_key"]
        .iter()
        .any(|w| last.contains(w))
        || matches!(
            last.as_str(),
            "refresh_token" | "access_token" | "client_assertion" | "tls_client_key"
        )
}

/// `--set` values: booleans and numbers typed, everything else a string.
fn typed_value(raw: &str) -> Value {
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    // Only plain decimals: `inf`, `NaN` and `1e5`-style strings stay strings.
    if raw
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && raw.chars().any(|c| c.is_ascii_digit())
    {
        if let Some(n) = raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(raw.to_owned())
}

/// Sets `a.b.c` inside `root`, creating tables on the way.
fn set_path(root: &mut Map<String, Value>, key: &str, value: Value) -> Result<(), UsageError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(UsageError(format!("setting `{key}`: empty key segment")));
    }
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| UsageError(format!("setting `{key}`: empty key")))?;
    let mut cur = root;
    for p in parents {
        let entry = cur
            .entry((*p).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match entry {
            Value::Object(m) => m,
            _ => {
                return Err(UsageError(format!(
                    "setting `{key}`: `{p}` is already set to a value that is not a table"
                )))
            }
        };
    }
    cur.insert((*last).to_owned(), value);
    Ok(())
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

fn read_settings_file(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--settings-file {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let from_toml = |t: &str| -> Result<Value, String> {
        t.parse::<toml::Table>()
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| e.to_string())
    };
    let parsed = match ext.as_deref() {
        Some("json") => serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()),
        Some("toml") => from_toml(&text),
        _ => serde_json::from_str::<Value>(&text).or_else(|_| from_toml(&text)),
    };
    match parsed {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(UsageError(format!(
            "--settings-file {}: the settings must be a table / JSON object",
            path.display()
        ))
        .into()),
        Err(e) => Err(UsageError(format!(
            "--settings-file {}: neither valid JSON nor TOML: {e}",
            path.display()
        ))
        .into()),
    }
}

/// One secret from stdin. Its value never appears in an error message.
pub(super) fn read_secret_stdin(field: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("{field}: ");
        std::io::stderr().flush()?;
        stdin
            .lock()
            .read_line(&mut text)
            .with_context(|| format!("--secret-stdin {field}: reading stdin"))?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .with_context(|| format!("--secret-stdin {field}: reading stdin"))?;
    }
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(UsageError(format!("--secret-stdin {field}: stdin was empty")).into());
    }
    Ok(value.to_owned())
}

/// The settings `Struct` of `put`, from the file, then `--set`, `--set-json`, then secrets.
fn build_settings(a: &PutArgs) -> anyhow::Result<Map<String, Value>> {
    let mut settings = match &a.settings_file {
        Some(p) => read_settings_file(p)?,
        None => Map::new(),
    };
    for (k, v) in &a.set {
        refuse_secret_flag("--set", k)?;
        set_path(&mut settings, k, typed_value(v))?;
    }
    for (k, v) in &a.set_json {
        refuse_secret_flag("--set-json", k)?;
        let value: Value = serde_json::from_str(v)
            .map_err(|e| UsageError(format!("--set-json {k}=...: not valid JSON: {e}")))?;
        set_path(&mut settings, k, value)?;
    }
    for (field, var) in &a.secret_env {
        let value = match std::env::var(var) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                return Err(UsageError(format!(
                    "--secret-env {field}={var}: the environment variable {var} is not set, empty or not UTF-8"
                ))
                .into())
            }
        };
        set_path(&mut settings, field, Value::String(value))?;
    }
    if let Some(field) = &a.secret_stdin {
        let value = read_secret_stdin(field)?;
        set_path(&mut settings, field, Value::String(value))?;
    }
    Ok(settings)
}

fn refuse_secret_flag(flag: &str, key: &str) -> Result<(), UsageError> {
    if looks_secret(key) {
        return Err(UsageError(format!(
            "{flag} {key}=...: `{key}` is a secret; command-line values end up in shell history and `ps`. \
             Use --secret-env {key}=ENVNAME or --secret-stdin {key}"
        )));
    }
    Ok(())
}

pub async fn run(args: CredentialsArgs) -> anyhow::Result<i32> {
    // Settings are read before connecting: a typo should not wait on the network.
    let put_settings = match &args.command {
        CredentialsCommand::Put(a) => Some(build_settings(a)?),
        _ => None,
    };
    let gw = connect::connect(&args.client).await?;
    let mut client = gw.credentials();
    match args.command {
        CredentialsCommand::Put(a) => put(&mut client, a, put_settings.unwrap_or_default()).await?,
        CredentialsCommand::Get(a) => get(&mut client, a).await?,
        CredentialsCommand::List(a) => list(&mut client, a).await?,
        CredentialsCommand::Delete(a) => delete(&mut client, a).await?,
    }
    Ok(0)
}

// Each subcommand writes to `std::io::stdout()` without holding its lock: the lock is not
// Send and must not live across awaits.

async fn put(client: &mut Client, a: PutArgs, settings: Map<String, Value>) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let settings = Some(convert::map_to_struct(settings));
    let cred = client
        .put_credential(pb::PutCredentialRequest {
            tenant: a.target.tenant,
            credential_id: a.target.credential,
            provider: a.provider,
            settings,
        })
        .await?
        .into_inner();
    if a.json {
        output::print_json(&output::credential_json(&cred))?;
    } else {
        writeln!(
            out,
            "{}/{}: stored (provider {}, status {})",
            cred.tenant,
            cred.credential_id,
            cred.provider,
            output::status_name(cred.status)
        )?;
        if cred.status == pb::CredentialStatus::NeedsAuthorization as i32 {
            writeln!(
                out,
                "next: authgate authorize --tenant {} --credential {}",
                cred.tenant, cred.credential_id
            )?;
        }
    }
    Ok(())
}

async fn get(client: &mut Client, a: GetArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let cred = client
        .get_credential(pb::GetCredentialRequest {
            tenant: a.target.tenant,
            credential_id: a.target.credential,
        })
        .await?
        .into_inner();
    if a.json {
        output::print_json(&output::credential_json(&cred))?;
    } else {
        out.write_all(describe(&cred)?.as_bytes())?;
    }
    Ok(())
}

async fn list(client: &mut Client, a: ListArgs) -> anyhow::Result<()> {
    let creds = list_all(client, &a.tenant).await?;
    let mut out = std::io::stdout();
    if a.json {
        output::print_json(&Value::Array(
            creds.iter().map(output::credential_json).collect(),
        ))?;
    } else if creds.is_empty() {
        eprintln!("no credentials for tenant {}", a.tenant);
    } else {
        let rows: Vec<Vec<String>> = creds
            .iter()
            .map(|c| {
                vec![
                    c.credential_id.clone(),
                    c.provider.clone(),
                    output::status_name(c.status),
                    c.source.clone(),
                    output::ts_short(c.updated_at.as_ref()),
                    dash(&c.last_error),
                ]
            })
            .collect();
        out.write_all(
            output::table(
                &[
                    "ID",
                    "PROVIDER",
                    "STATUS",
                    "SOURCE",
                    "UPDATED",
                    "LAST ERROR",
                ],
                &rows,
            )
            .as_bytes(),
        )?;
    }
    Ok(())
}

/// Every credential of `tenant`, page by page.
async fn list_all(client: &mut Client, tenant: &str) -> anyhow::Result<Vec<pb::Credential>> {
    let mut creds = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_credentials(pb::ListCredentialsRequest {
                tenant: tenant.to_owned(),
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        let got = resp.credentials.len();
        creds.extend(resp.credentials);
        if got == 0 || resp.next_page_token.is_empty() || resp.next_page_token == page_token {
            break;
        }
        page_token = resp.next_page_token;
    }
    Ok(creds)
}

async fn delete(client: &mut Client, a: DeleteArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let resp = client
        .delete_credential(pb::DeleteCredentialRequest {
            tenant: a.target.tenant.clone(),
            credential_id: a.target.credential.clone(),
            revoke_upstream: a.revoke_upstream,
        })
        .await?
        .into_inner();
    if a.json {
        output::print_json(&serde_json::json!({
            "deleted": resp.deleted,
            "upstream_revoked": resp.upstream_revoked,
        }))?;
    } else if resp.deleted {
        let mut line = format!("{}/{}: deleted", a.target.tenant, a.target.credential);
        if a.revoke_upstream {
            line.push_str(&format!(
                ", {} token(s) revoked at the provider",
                resp.upstream_revoked
            ));
        }
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "{}/{}: nothing deleted (it did not exist)",
            a.target.tenant, a.target.credential
        )?;
    }
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn join_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

/// The human view of one credential.
fn describe(c: &pb::Credential) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let rows = [
        ("tenant", c.tenant.clone()),
        ("credential", c.credential_id.clone()),
        ("provider", c.provider.clone()),
        ("status", output::status_name(c.status)),
        ("source", dash(&c.source)),
        ("created", output::ts_short(c.created_at.as_ref())),
        ("updated", output::ts_short(c.updated_at.as_ref())),
        ("last error", dash(&c.last_error)),
        (
            "refresh token",
            if c.has_refresh_token {
                "stored".to_owned()
            } else {
                "none".to_owned()
            },
        ),
        ("secrets set", join_or_dash(&c.secret_fields_set)),
        ("capabilities", join_or_dash(&c.capabilities)),
    ];
    for (k, v) in rows {
        writeln!(s, "{:<14} {v}", format!("{k}:"))?;
    }
    let settings = c
        .settings
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), convert::struct_to_json);
    writeln!(s, "settings:")?;
    for line in serde_json::to_string_pretty(&settings)?.lines() {
        writeln!(s, "  {line}")?;
    }
    if !c.tokens.is_empty() {
        writeln!(s, "tokens:")?;
        let rows: Vec<Vec<String>> = c
            .tokens
            .iter()
            .map(|t| {
                vec![
                    join_or_dash(&t.scopes),
                    output::ts_short(t.issued_at.as_ref()),
                    output::ts_short(t.expires_at.as_ref()),
                ]
            })
            .collect();
        for line in output::table(&["SCOPES", "ISSUED", "EXPIRES"], &rows).lines() {
            writeln!(s, "  {line}")?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_values_are_typed() {
        assert_eq!(typed_value("60"), json!(60));
        assert_eq!(typed_value("-1"), json!(-1));
        assert_eq!(typed_value("0.5"), json!(0.5));
        assert_eq!(typed_value("true"), json!(true));
        assert_eq!(typed_value("basic"), json!("basic"));
        assert_eq!(typed_value("1e5"), json!("1e5"));
        assert_eq!(typed_value("NaN"), json!("NaN"));
        assert_eq!(
            typed_value("https://x.example/a"),
            json!("https://x.example/a")
        );
        assert_eq!(typed_value("1.2.3"), json!("1.2.3"));
    }

    #[test]
    fn dotted_keys_nest() {
        let mut m = Map::new();
        set_path(&mut m, "extra_params.audience", json!("api")).unwrap();
        set_path(&mut m, "extra_params.resource", json!("r")).unwrap();
        set_path(&mut m, "grant", json!("client_credentials")).unwrap();
        assert_eq!(
            Value::Object(m.clone()),
            json!({"extra_params": {"audience": "api", "resource": "r"}, "grant": "client_credentials"})
        );
        assert!(set_path(&mut m, "grant.x", json!(1)).is_err());
        assert!(set_path(&mut m, "a..b", json!(1)).is_err());
    }

    #[test]
    fn secrets_are_refused_on_the_command_line() {
        for k in [
            "client_secret",
            "password",
            "refresh_token",
            "private_key_pem",
            "x.api_key",
            "tls_client_key",
        ] {
            assert!(looks_secret(k), "{k}");
        }
        for k in [
            "client_id",
            "token_url",
            "scopes",
            "username",
            "grant",
            "tls_client_certificate",
        ] {
            assert!(!looks_secret(k), "{k}");
        }
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_assignment("novalue").is_err());
        assert!(parse_assignment("=x").is_err());
    }
}
