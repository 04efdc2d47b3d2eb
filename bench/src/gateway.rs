//! Starting the servers under test: authgate's config for a benchmark, and the child
//! processes (authgate, the echo baseline, the memory probe) pinned to their own CPU.

use anyhow::Context;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The tenant every benchmark credential belongs to.
pub const TENANT: &str = "bench";
/// The env var holding the credentials' client secret (`${env:...}` in the config).
pub const SECRET_ENV: &str = "AUTHGATE_BENCH_CLIENT_SECRET";
/// A fixed store key: the benchmark's stores are throw-away.
pub const STORE_KEY: &str = "YmVuY2gtb25seS1rZXktbm90LWEtc2VjcmV0LTMyYiE=";
/// A command prefix for the server processes, e.g. `valgrind --tool=callgrind`
/// (see `authgate-bench profile`).
pub const WRAPPER_ENV: &str = "AUTHGATE_BENCH_SERVER_WRAPPER";
/// Set in the environment of a benchmark that already runs pinned.
pub const PINNED_ENV: &str = "AUTHGATE_BENCH_PINNED";

/// The id of benchmark credential `i`; its client id at the token endpoint is `client-i`.
pub fn credential_id(i: usize) -> String {
    format!("c{i}")
}

/// How the endpoint names the cache key (credential `i`, scope string) it was asked for.
pub fn endpoint_key(i: usize, scope: &str) -> String {
    format!("client-{i} {scope}")
}

/// The `[broker]` settings a scenario needs.
#[derive(Debug, Clone)]
pub struct BrokerKnobs {
    pub backoff_initial_ms: u64,
    pub refresh_margin_seconds: u64,
    pub refresh_fraction: f64,
}

impl Default for BrokerKnobs {
    /// authgate's defaults.
    fn default() -> Self {
        let d = authgate::config::BrokerConfig::default();
        Self {
            backoff_initial_ms: d.backoff_initial_ms,
            refresh_margin_seconds: d.refresh_margin_seconds,
            refresh_fraction: d.refresh_fraction,
        }
    }
}

impl BrokerKnobs {
    /// The longest before expiry a refresh may start for a token of `lifetime_ms`: the
    /// refresh margin plus the most jitter (the broker's `refresh_at`).
    pub fn max_refresh_lead_ms(&self, lifetime_ms: i64) -> i64 {
        let frac = (lifetime_ms as f64 * self.refresh_fraction) as i64;
        let margin = frac.min(self.refresh_margin_seconds as i64 * 1000);
        let jitter = (2 * frac).min(lifetime_ms / 2 - margin).max(0);
        margin + jitter
    }

    /// The shortest lead: the margin alone.
    pub fn min_refresh_lead_ms(&self, lifetime_ms: i64) -> i64 {
        let frac = (lifetime_ms as f64 * self.refresh_fraction) as i64;
        frac.min(self.refresh_margin_seconds as i64 * 1000)
    }
}

/// Scope sets per credential the gateway may cache: the memory scenario fills 1,000 per
/// credential, above the default 64.
const MAX_SCOPE_SETS: usize = 1000;

/// authgate's config: ephemeral ports, the store in `dir`, `credentials` oauth2
/// credentials `c0..` (client ids `client-0..`) at `token_url`, default scope `read`.
pub fn config_text(
    dir: &Path,
    token_url: &str,
    credentials: usize,
    broker: &BrokerKnobs,
) -> String {
    let mut s = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\n\
         [store]\nurl = \"sqlite://{}\"\nkey_file = \"{}\"\n\n\
         [broker]\nbackoff_initial_ms = {}\nrefresh_margin_seconds = {}\nrefresh_fraction = {}\n\
         max_scope_sets_per_credential = {MAX_SCOPE_SETS}\n\n",
        dir.join("authgate.db").display(),
        dir.join("authgate.key").display(),
        broker.backoff_initial_ms,
        broker.refresh_margin_seconds,
        broker.refresh_fraction,
    );
    for i in 0..credentials {
        let _ = write!(
            s,
            "[[credentials]]\ntenant = \"{TENANT}\"\nid = \"{}\"\nprovider = \"oauth2\"\n\
             [credentials.settings]\ntoken_url = \"{token_url}\"\ngrant = \"client_credentials\"\n\
             client_id = \"client-{i}\"\nclient_secret = \"${{env:{SECRET_ENV}}}\"\n\
             client_auth = \"basic\"\nscopes = [\"read\"]\n\n",
            credential_id(i)
        );
    }
    s
}

/// A directory for throw-away stores: on tmpfs when there is one, so the disk's fsync
/// latency (a property of the disk, not of authgate) stays out of the figures.
pub fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("authgate-bench-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("authgate-bench-").tempdir()
    };
    dir.context("creating a scratch directory")
}

/// authgate in this process (for tests): the config of [`config_text`] in `dir`, the
/// given clock, the benchmark's store key.
pub async fn start_in_process(
    dir: &Path,
    token_url: &str,
    credentials: usize,
    broker: &BrokerKnobs,
    clock: std::sync::Arc<dyn authgate::clock::Clock>,
) -> anyhow::Result<authgate::server::RunningServer> {
    std::env::set_var(SECRET_ENV, "bench-client-secret");
    let cfg = authgate::config::Config::parse(&config_text(dir, token_url, credentials, broker))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    authgate::server::start(
        cfg,
        authgate::server::StartOptions {
            clock,
            key: Some(STORE_KEY.to_owned()),
            ..authgate::server::StartOptions::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Which CPUs the servers and the load generator run on.
#[derive(Debug, Clone, Default)]
pub struct Pinning {
    pub server_cpu: Option<usize>,
    pub loader_cpu: Option<usize>,
}

impl Pinning {
    /// From the environment of a re-executed, already pinned benchmark.
    pub fn from_env() -> Self {
        let Ok(v) = std::env::var(PINNED_ENV) else {
            return Self::default();
        };
        let mut p = Self::default();
        for part in v.split(',') {
            match part.split_once('=') {
                Some(("server", c)) => p.server_cpu = c.parse().ok(),
                Some(("loader", c)) => p.loader_cpu = c.parse().ok(),
                _ => {}
            }
        }
        p
    }

    pub fn env_value(&self) -> String {
        let f = |c: Option<usize>| c.map_or_else(|| "none".to_owned(), |c| c.to_string());
        format!(
            "server={},loader={}",
            f(self.server_cpu),
            f(self.loader_cpu)
        )
    }

    pub fn describe(&self) -> String {
        match (self.server_cpu, self.loader_cpu) {
            (Some(s), Some(l)) => format!(
                "servers pinned to CPU {s}, load generator and token endpoint to CPU {l} (taskset)"
            ),
            _ => "not pinned (needs taskset and 2 CPUs); servers and load generator share the CPUs"
                .into(),
        }
    }

    /// A command for `exe`, under `taskset -c <server cpu>` when pinning, and under the
    /// profiler named by [`WRAPPER_ENV`] when set.
    pub fn server_command(&self, exe: &Path) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(cpu) = self.server_cpu {
            argv.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
        }
        if let Ok(w) = std::env::var(WRAPPER_ENV) {
            argv.extend(w.split_whitespace().map(str::to_owned));
        }
        match argv.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }
}

/// Whether `taskset` can be run.
pub fn have_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The addresses a server child reports on its first stdout line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    /// authgate: the process ids of its `[[plugins]]`, in config order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_pids: Vec<u32>,
}

/// A child process of this binary; killed when dropped. It stops by itself when its
/// stdin closes, which is how [`ServerProcess::stop`] ends it.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    first_line: String,
}

impl ServerProcess {
    /// Runs `authgate-bench <args>` (pinned per `pinning`), stderr to `log`, and waits
    /// for its first stdout line.
    pub async fn spawn(
        pinning: &Pinning,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the authgate-bench binary")?;
        let mut cmd = pinning.server_command(&exe);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).context("creating the server log")?)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        let pid = child.id().context("child has no pid")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        let first_line = match line {
            Ok(Ok(Some(l))) => l,
            other => {
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                anyhow::bail!(
                    "`authgate-bench {}` did not report ready ({other:?}); its log:\n{log_text}",
                    args.first().map_or("", String::as_str)
                );
            }
        };
        // Keep draining stdout so a chatty child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            log: log.to_owned(),
            first_line,
        })
    }

    pub fn ready(&self) -> anyhow::Result<Ready> {
        serde_json::from_str(&self.first_line)
            .with_context(|| format!("child said {:?}", self.first_line))
    }

    /// The first stdout line, for children that report a result instead of addresses.
    pub fn first_line(&self) -> &str {
        &self.first_line
    }

    /// CPU seconds the child has used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::procfs::cpu_seconds(self.pid).context("reading the server's CPU time")
    }

    /// Closes its stdin and waits for it to exit (killing it after 10 s).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Resolves when stdin reaches end of file: a child's parent went away or asked it to stop.
pub async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_leads_follow_the_broker_formula() {
        let k = BrokerKnobs::default();
        // 60 s token, defaults: margin 6 s, jitter up to 12 s.
        assert_eq!(k.min_refresh_lead_ms(60_000), 6_000);
        assert_eq!(k.max_refresh_lead_ms(60_000), 18_000);
    }

    #[test]
    fn config_is_accepted_by_authgate() {
        std::env::set_var(SECRET_ENV, "s");
        let text = config_text(
            Path::new("/tmp/x"),
            "http://127.0.0.1:1/token",
            3,
            &BrokerKnobs::default(),
        );
        let cfg = authgate::config::Config::parse(&text).unwrap();
        assert_eq!(cfg.validate().unwrap().len(), 3);
    }
}
