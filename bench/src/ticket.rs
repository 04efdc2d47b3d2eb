//! The example ticket plugin twice, for the `plugin` scenario: out of process (the Python
//! example plugin `examples/plugins/ticket/ticket_plugin.py`, kind `example_ticket`,
//! started by the gateway from `[[plugins]]`) and in process (the SDK's `TicketProvider`,
//! the same wire format to the letter, registered under a kind of its own because the
//! plugin's registration would replace a same-kind factory). One gateway holds a
//! credential on each, so both are measured in the same process and the same run.

use crate::gateway::{credential_id, SECRET_ENV, TENANT};
use anyhow::Context;
use authgate::plugins::Registry;
use authgate_plugin_sdk::testing::ticket::{TicketFactory, KIND};
use authgate_plugin_sdk::{Provider, ProviderFactory, SettingsError};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The kind of the out-of-process plugin (what the Python plugin describes itself as).
pub const EXTERNAL_KIND: &str = KIND;
/// The kind the in-process twin is registered under.
pub const IN_PROCESS_KIND: &str = "example_ticket_in_process";
/// The credential on the external plugin (`c0`, api_key `client-0`).
pub const EXTERNAL_CRED: usize = 0;
/// The credential on the in-process plugin (`c1`, api_key `client-1`).
pub const IN_PROCESS_CRED: usize = 1;

/// `TicketFactory` under [`IN_PROCESS_KIND`].
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcessTicketFactory;

impl ProviderFactory for InProcessTicketFactory {
    fn kind(&self) -> &'static str {
        IN_PROCESS_KIND
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        TicketFactory.secret_fields()
    }

    fn build(&self, settings: serde_json::Value) -> Result<Arc<dyn Provider>, SettingsError> {
        TicketFactory.build(settings)
    }
}

/// The gateway's provider kinds: the built-in ones, plus the in-process ticket twin when
/// asked (`serve-authgate --in-process-ticket`).
pub fn registry(in_process_ticket: bool) -> Registry {
    let builtin = Registry::builtin();
    if in_process_ticket {
        builtin.with(Arc::new(InProcessTicketFactory))
    } else {
        builtin
    }
}

/// The example plugin's program: the script (run by its `python3` shebang), its digest and
/// the SDK directory it imports from.
#[derive(Debug, Clone)]
pub struct PluginProgram {
    pub script: PathBuf,
    pub sha256: String,
    pub pythonpath: PathBuf,
    /// What runs it, e.g. `Python 3.11.7, grpcio 1.85.4`.
    pub runtime: String,
}

impl PluginProgram {
    /// The example plugin of this repository; an error saying why it cannot run (no
    /// script, no `sha256sum`, no `python3` with grpcio and protobuf).
    pub fn example() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the bench crate has a parent directory")?;
        let script = root.join("examples/plugins/ticket/ticket_plugin.py");
        let pythonpath = root.join("sdk/python");
        anyhow::ensure!(script.is_file(), "no {}", script.display());
        let out = std::process::Command::new("sha256sum")
            .arg(&script)
            .output()
            .context("running sha256sum")?;
        anyhow::ensure!(
            out.status.success(),
            "sha256sum {} failed",
            script.display()
        );
        let sha256 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let probe = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, grpc, google.protobuf, authgate_plugin; \
                 print(f'Python {sys.version.split()[0]}, grpcio {grpc.__version__}')",
            ])
            .env("PYTHONPATH", &pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .context("running python3")?;
        anyhow::ensure!(
            probe.status.success(),
            "python3 cannot import grpc, protobuf and the SDK: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        Ok(Self {
            script,
            sha256,
            pythonpath,
            runtime: String::from_utf8_lossy(&probe.stdout).trim().to_owned(),
        })
    }
}

/// The gateway's config for the `plugin` scenario: ephemeral ports, the store in `dir`,
/// `max_scope_sets` scope sets per credential (every cold fetch is a new one), the example
/// plugin in `[[plugins]]`, and two credentials against the ticket endpoint at `base_url`:
/// [`EXTERNAL_CRED`] on the plugin, [`IN_PROCESS_CRED`] on the in-process twin.
pub fn config_text(
    dir: &Path,
    base_url: &str,
    plugin: &PluginProgram,
    max_scope_sets: usize,
) -> String {
    let mut s = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\n\
         [store]\nurl = \"sqlite://{}\"\nkey_file = \"{}\"\n\n\
         [broker]\nmax_scope_sets_per_credential = {max_scope_sets}\n\n\
         [[plugins]]\nkind = \"{EXTERNAL_KIND}\"\ncommand = [\"{}\"]\nsha256 = \"{}\"\n\
         env = {{ PYTHONPATH = \"{}\", PYTHONDONTWRITEBYTECODE = \"1\" }}\n\n",
        dir.join("authgate.db").display(),
        dir.join("authgate.key").display(),
        plugin.script.display(),
        plugin.sha256,
        plugin.pythonpath.display(),
    );
    for (i, kind) in [
        (EXTERNAL_CRED, EXTERNAL_KIND),
        (IN_PROCESS_CRED, IN_PROCESS_KIND),
    ] {
        let _ = write!(
            s,
            "[[credentials]]\ntenant = \"{TENANT}\"\nid = \"{}\"\nprovider = \"{kind}\"\n\
             [credentials.settings]\nbase_url = \"{base_url}\"\napi_key = \"client-{i}\"\n\
             api_secret = \"${{env:{SECRET_ENV}}}\"\n\n",
            credential_id(i)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twin_has_its_own_kind_and_builds_ticket_providers() {
        let r = registry(true);
        assert!(r.kinds().contains(&IN_PROCESS_KIND));
        assert!(
            !r.kinds().contains(&EXTERNAL_KIND),
            "the plugin's kind stays free"
        );
        let settings = serde_json::json!({
            "base_url": "http://127.0.0.1:1",
            "api_key": "client-1",
            "api_secret": "s",
        });
        r.build(IN_PROCESS_KIND, settings).unwrap();
        assert!(!registry(false).kinds().contains(&IN_PROCESS_KIND));
    }

    #[test]
    fn config_is_accepted_by_authgate() {
        let plugin = PluginProgram {
            script: "/opt/plugins/ticket_plugin.py".into(),
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            pythonpath: "/opt/sdk".into(),
            runtime: "Python 3".into(),
        };
        let text = config_text(Path::new("/tmp/x"), "http://127.0.0.1:1", &plugin, 5000);
        let cfg = authgate::config::Config::parse(&text).unwrap();
        assert_eq!(cfg.plugins.len(), 1);
        assert_eq!(cfg.plugins[0].kind, EXTERNAL_KIND);
        assert_eq!(cfg.broker.max_scope_sets_per_credential, 5000);
    }
}
