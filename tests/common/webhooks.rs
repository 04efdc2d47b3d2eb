//! The webhook receiver of the end-to-end tests (tests/webhooks/receiver.mjs): a child
//! process that verifies every delivery with the npm package `standardwebhooks` and reports
//! each one; killed on drop.

use super::repo_root;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A Standard Webhooks secret whose text is a canary (`canary` is valid base64).
pub const SECRET: &str = "whsec_canarycanarycanarycanarycanarycanary";

pub struct Receiver {
    child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Starts the receiver on `port` (0: any) and waits until it listens.
    #[allow(clippy::disallowed_methods)] // Waits on real time for the child to listen.
    pub fn start(port: u16, secret: &str) -> Self {
        let root = repo_root();
        assert!(
            root.join("tests/webhooks/node_modules/standardwebhooks").exists(),
            "the webhook receiver is not installed: run `npm ci --prefix tests/webhooks` (bash .ci/run does)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/webhooks/receiver.mjs"))
            .arg(port.to_string())
            .env("WEBHOOK_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(p) = v.get("listening").and_then(Value::as_u64) {
                    let _ = tx.send(p as u16);
                } else {
                    sink.lock().push(v);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the webhook receiver listens within 20 s");
        Self { child, port, lines }
    }

    /// Verified deliveries so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Value> {
        let lines = self.lines.lock();
        lines.iter().filter(|v| v["ok"] == true).cloned().collect()
    }

    /// Requests that did not verify.
    pub fn rejected(&self) -> Vec<Value> {
        let lines = self.lines.lock();
        lines.iter().filter(|v| v["ok"] != true).cloned().collect()
    }

    /// Waits until `n` distinct messages (by `webhook-id` and path) arrived; returns every
    /// delivery then.
    #[allow(clippy::disallowed_methods)] // Waits on real time for the deliveries.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let all = self.deliveries();
            if distinct(&all) >= n || tokio::time::Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How many distinct (message id, path) pairs `deliveries` holds.
pub fn distinct(deliveries: &[Value]) -> usize {
    counts(deliveries).len()
}

/// Deliveries per (message id, path): more than 1 is a duplicate.
pub fn counts(deliveries: &[Value]) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for d in deliveries {
        let key = (
            d["id"].as_str().unwrap_or_default().to_owned(),
            d["path"].as_str().unwrap_or_default().to_owned(),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
