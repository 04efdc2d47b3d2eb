//! The plugin contract suite (`authgate_plugin_sdk::testing::contract`) against the
//! `example_ticket` plugin twice: in process (the SDK's Rust twin) and out of process (the
//! Python example plugin, started and driven by the gateway's plugin adapter, every HTTP
//! request through `Host.Send`). Both must pass the same cases.

use authgate::config::PluginConfig;
use authgate::plugins::external::ExternalPlugins;
use authgate_plugin_sdk::testing::{contract, ticket::TicketSubject};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[tokio::test]
async fn ticket_plugin_in_process_passes_the_contract() {
    contract::run_all(&TicketSubject::in_process()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_plugin_passes_the_same_contract() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("examples/plugins/ticket/ticket_plugin.py");
    let sha256 = format!("{:x}", Sha256::digest(std::fs::read(&script).unwrap()));
    let config: PluginConfig = toml::from_str(&format!(
        "kind = \"example_ticket\"\ncommand = [\"{}\"]\nsha256 = \"{sha256}\"\nenv = {{ PYTHONPATH = \"{}\" }}\n",
        script.display(),
        root.join("sdk/python").display()
    ))
    .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (plugins, _tasks) = ExternalPlugins::start(
        &[config],
        std::time::Duration::from_secs(60),
        &authgate::metrics::Metrics::default(),
        &stopped,
    )
    .await
    .expect("the example plugin starts (python3 with grpcio: bash .ci/run installs it)");
    let factory = plugins.factory("example_ticket").expect("started");
    contract::run_all(&TicketSubject::with_factory(
        "example_ticket out of process (Python)",
        factory,
    ))
    .await;
}
