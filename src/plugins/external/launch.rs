//! Starting one plugin process: the executable's digest, a private directory for the two
//! Unix sockets, the process with a fresh secret, its handshake line, the connection and
//! its `Describe`. Everything a start needs is here; keeping it running is
//! [`super::supervisor`]'s job.

use super::host::{Calls, HostService};
use super::{Describe, SECRET_METADATA};
use crate::config::PluginConfig;
use crate::proto::plugin::v1 as pb;
use authgate_plugin_sdk::Redactor;
use pb::host_server::HostServer;
use pb::provider_client::ProviderClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The handshake line: `authgate-plugin|<version>|unix|<socket path>`.
const HANDSHAKE_PREFIX: &str = "authgate-plugin";
pub(super) const PROTOCOL_VERSION: &str = "1";
/// Longest line of plugin output kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;
/// Environment the plugin inherits from the gateway (nothing else: the gateway's own
/// variables include its encryption key).
const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

/// Adds the start's secret to every call the gateway makes to the plugin.
#[derive(Clone)]
pub(super) struct WithSecret(MetadataValue<Ascii>);

impl tonic::service::Interceptor for WithSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(SECRET_METADATA, self.0.clone());
        Ok(req)
    }
}

pub(super) type Client = ProviderClient<InterceptedService<Channel, WithSecret>>;

/// A started plugin process: the connection and what lives as long as the process
/// (shared by the calls), the process itself (owned by the supervisor, which waits on it)
/// and its description.
pub(super) struct Launched {
    pub running: Running,
    pub child: Child,
    pub describe: Describe,
}

/// What the calls to one started plugin share.
pub(super) struct Running {
    pub client: Client,
    pub calls: Calls,
    pub pid: Option<u32>,
    /// Asked to kill the process (a call past its deadline); the supervisor does it.
    pub kill: tokio::sync::Notify,
    /// Held open: a plugin can tell that the gateway is gone when its standard input closes.
    _stdin: Option<ChildStdin>,
    _host: AbortOnDrop,
    _dir: PrivateDir,
}

impl Running {
    /// Asks the supervisor to kill this process (it restarts it).
    pub fn kill(&self, kind: &str, why: &str) {
        tracing::warn!(plugin = %kind, pid = ?self.pid, "killing the plugin: {why}");
        self.kill.notify_one();
    }
}

/// The Host server of one start, stopped with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A directory only this user can enter, removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    /// `authgate-plugin-<gateway pid>-<random>`: no kind in the name, so a long kind cannot
    /// push the socket path past the ~108 bytes Unix allows; the pid lets a later start
    /// remove what a gateway killed with SIGKILL left behind.
    fn new() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!(
            "{DIR_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::thread_rng().gen::<u64>()
        );
        let path = socket_base().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

const DIR_PREFIX: &str = "authgate-plugin-";

/// Where the socket directories go: the temporary directory when its path is short.
fn socket_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.as_os_str().len() > 48 {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// Removes the socket directories of gateways that are gone (killed before they could
/// clean up): those whose pid names no running process. Only this user's directories can
/// be removed, which are the only ones it made.
pub(super) fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(socket_base()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks the executable, starts it and completes the handshake. `expected` is the
/// description of the first start: a restarted plugin must describe itself the same way.
pub(super) async fn launch(
    config: &PluginConfig,
    redactor: &Redactor,
    expected: Option<&Describe>,
) -> Result<Launched, String> {
    let kind = config.kind.as_str();
    let executable = config.executable()?;
    check_digest(config, &executable).await?;
    let dir = PrivateDir::new()
        .map_err(|e| format!("plugins `{kind}`: cannot create its socket directory: {e}"))?;
    let secret = format!(
        "{:032x}{:032x}",
        rand::thread_rng().gen::<u128>(),
        rand::thread_rng().gen::<u128>()
    );
    let calls = Calls::default();
    let host = AbortOnDrop(serve_host(
        kind,
        &dir.0,
        &secret,
        calls.clone(),
        redactor.clone(),
    )?);
    let mut child = spawn(config, &executable, &dir.0, &secret)?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().map(BufReader::new);
    if let Some(stderr) = child.stderr.take() {
        forward_output(kind, "stderr", BufReader::new(stderr), redactor.clone());
    }
    let handshake = async {
        let mut stdout = stdout.ok_or("its standard output is not readable")?;
        let socket = read_handshake(&mut stdout, &dir.0, &mut child).await?;
        forward_output(kind, "stdout", stdout, redactor.clone());
        let client = connect(&socket, &secret).await?;
        let describe = describe(&client, config.handshake_timeout()).await?;
        Ok::<_, String>((client, describe))
    };
    let (client, describe) = match tokio::time::timeout(config.handshake_timeout(), handshake).await
    {
        Ok(Ok(done)) => done,
        Ok(Err(why)) => return Err(format!("plugins `{kind}` did not start: {why}")),
        Err(_) => {
            return Err(format!(
                "plugins `{kind}` did not start: no handshake within {} s (handshake_timeout_seconds); it must print `{HANDSHAKE_PREFIX}|{PROTOCOL_VERSION}|unix|<socket path>` and answer Describe",
                config.handshake_timeout_seconds
            ))
        }
    };
    check_description(kind, &describe, expected)?;
    Ok(Launched {
        running: Running {
            client,
            calls,
            pid,
            kill: tokio::sync::Notify::new(),
            _stdin: stdin,
            _host: host,
            _dir: dir,
        },
        child,
        describe,
    })
}

async fn check_digest(config: &PluginConfig, executable: &Path) -> Result<(), String> {
    let kind = &config.kind;
    let bytes = tokio::fs::read(executable).await.map_err(|e| {
        format!(
            "plugins `{kind}`: cannot read `{}`: {e}",
            executable.display()
        )
    })?;
    let actual = format!("{:x}", Sha256::digest(&bytes));
    if actual != config.digest() {
        return Err(format!(
            "plugins `{kind}`: refusing to run `{}`: its SHA-256 is {actual}, not the configured sha256 {}; if the plugin was changed on purpose, put its new digest in [[plugins]] sha256",
            executable.display(),
            config.digest()
        ));
    }
    Ok(())
}

fn spawn(
    config: &PluginConfig,
    executable: &Path,
    dir: &Path,
    secret: &str,
) -> Result<Child, String> {
    let mut cmd = Command::new(executable);
    cmd.args(&config.command[1..])
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
        )
        .envs(&config.env)
        .env("AUTHGATE_PLUGIN_PROTOCOL_VERSION", PROTOCOL_VERSION)
        .env("AUTHGATE_PLUGIN_SECRET", secret)
        .env("AUTHGATE_PLUGIN_SOCKET_DIR", dir)
        .env("AUTHGATE_PLUGIN_HOST_SOCKET", dir.join("host.sock"))
        .env(
            "AUTHGATE_PLUGIN_MAX_CONCURRENT_CALLS",
            config.max_concurrent_calls.to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(wd) = &config.working_directory {
        cmd.current_dir(wd);
    }
    cmd.spawn().map_err(|e| {
        format!(
            "plugins `{}`: cannot start `{}`: {e}",
            config.kind,
            executable.display()
        )
    })
}

/// The handshake line, or why there is none (the process ended first, a malformed line).
async fn read_handshake(
    stdout: &mut BufReader<tokio::process::ChildStdout>,
    dir: &Path,
    child: &mut Child,
) -> Result<PathBuf, String> {
    let line = tokio::select! {
        line = read_line(stdout) => line.map_err(|e| format!("reading its standard output: {e}"))?,
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(format!("it exited ({status}) before its handshake line; its standard error is in the log"));
        }
    };
    let Some(line) = line else {
        return Err("it closed its standard output before its handshake line".into());
    };
    parse_handshake(line.trim_end(), dir)
}

fn parse_handshake(line: &str, dir: &Path) -> Result<PathBuf, String> {
    let shown = authgate_plugin_sdk::redact::truncate_chars(line, 200);
    let parts: Vec<&str> = line.splitn(4, '|').collect();
    let [prefix, version, network, address] = parts[..] else {
        return Err(format!(
            "its first line `{shown}` is not `{HANDSHAKE_PREFIX}|{PROTOCOL_VERSION}|unix|<socket path>`"
        ));
    };
    if prefix != HANDSHAKE_PREFIX {
        return Err(format!(
            "its first line `{shown}` is not `{HANDSHAKE_PREFIX}|{PROTOCOL_VERSION}|unix|<socket path>`"
        ));
    }
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol version {version}; this gateway speaks authgate.plugin.v{PROTOCOL_VERSION}"
        ));
    }
    if network != "unix" {
        return Err(format!(
            "it offers network `{network}`; only `unix` is supported"
        ));
    }
    let socket = PathBuf::from(address);
    // The socket must be in the private directory: a path elsewhere could be anyone's.
    if socket.parent() != Some(dir) {
        return Err(format!(
            "its socket `{address}` is not in AUTHGATE_PLUGIN_SOCKET_DIR ({})",
            dir.display()
        ));
    }
    Ok(socket)
}

async fn connect(socket: &Path, secret: &str) -> Result<Client, String> {
    let path = socket.to_owned();
    let channel = Endpoint::from_static("http://plugin.localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to its socket: {e}"))?;
    let secret: MetadataValue<Ascii> = secret
        .parse()
        .map_err(|_| "the secret is not valid metadata".to_owned())?;
    Ok(
        ProviderClient::with_interceptor(channel, WithSecret(secret))
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(super::MAX_MESSAGE_BYTES),
    )
}

/// `Describe` within `timeout`: the handshake's last step and the health check.
pub(super) async fn describe(client: &Client, timeout: Duration) -> Result<Describe, String> {
    let mut req = Request::new(pb::DescribeRequest {});
    req.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.clone().describe(req))
        .await
        .map_err(|_| format!("Describe did not answer within {timeout:?}"))?
        .map_err(|s| format!("Describe failed: {}", s.code()))?
        .into_inner();
    Ok(Describe::from(answer))
}

fn check_description(
    kind: &str,
    describe: &Describe,
    expected: Option<&Describe>,
) -> Result<(), String> {
    if describe.kind != kind {
        return Err(format!(
            "plugins `{kind}`: the plugin describes itself as kind `{}`; set [[plugins]] kind to the kind it serves",
            describe.kind
        ));
    }
    if let Some(first) = expected {
        if first.secret_fields != describe.secret_fields
            || first.capabilities != describe.capabilities
        {
            return Err(format!(
                "plugins `{kind}`: after a restart it describes different secret fields or capabilities than at start; restart authgate to take the new description"
            ));
        }
    }
    Ok(())
}

/// Serves `Host` for this start on `<dir>/host.sock`, for callers with the secret only.
fn serve_host(
    kind: &str,
    dir: &Path,
    secret: &str,
    calls: Calls,
    redactor: Redactor,
) -> Result<JoinHandle<()>, String> {
    let listener = UnixListener::bind(dir.join("host.sock"))
        .map_err(|e| format!("plugins `{kind}`: cannot listen for its Host calls: {e}"))?;
    let service = HostServer::new(HostService::new(kind, calls, redactor))
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let expected = secret.to_owned();
    let authenticated =
        tonic::service::interceptor::InterceptedService::new(service, move |req: Request<()>| {
            let given = req
                .metadata()
                .get(SECRET_METADATA)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes()).into() {
                Ok(req)
            } else {
                Err(Status::unauthenticated(format!(
                    "missing or wrong {SECRET_METADATA} metadata"
                )))
            }
        });
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let kind = kind.to_owned();
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(authenticated)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::warn!(plugin = %kind, error = %e, "plugin host server stopped");
        }
    }))
}

/// Logs each line of a plugin's output, scrubbed of every secret its credentials hold.
fn forward_output<R>(kind: &str, stream: &'static str, mut reader: R, redactor: Redactor)
where
    R: AsyncBufRead + Unpin + Send + 'static,
{
    let kind = kind.to_owned();
    tokio::spawn(async move {
        while let Ok(Some(line)) = read_line(&mut reader).await {
            let line = redactor.scrub(line.trim_end());
            if stream == "stderr" {
                tracing::warn!(plugin = %kind, stream, "{line}");
            } else {
                tracing::info!(plugin = %kind, stream, "{line}");
            }
        }
    });
}

/// One line of at most [`MAX_LINE`] bytes (the rest of a longer line is dropped); `None`
/// at the end of the stream.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_line_is_checked_field_by_field() {
        let dir = Path::new("/tmp/authgate-plugin-x");
        assert_eq!(
            parse_handshake("authgate-plugin|1|unix|/tmp/authgate-plugin-x/p.sock", dir).unwrap(),
            PathBuf::from("/tmp/authgate-plugin-x/p.sock")
        );
        for (line, expected) in [
            ("hello", "is not `authgate-plugin|1|unix"),
            (
                "authgate-plugin|2|unix|/tmp/authgate-plugin-x/p.sock",
                "protocol version 2",
            ),
            ("authgate-plugin|1|tcp|127.0.0.1:1", "only `unix`"),
            (
                "authgate-plugin|1|unix|/tmp/elsewhere/p.sock",
                "not in AUTHGATE_PLUGIN_SOCKET_DIR",
            ),
        ] {
            let e = parse_handshake(line, dir).unwrap_err();
            assert!(e.contains(expected), "{line}: {e}");
        }
    }

    #[test]
    fn directories_of_gone_gateways_are_removed_and_live_ones_kept() {
        let gone = socket_base().join(format!(
            "{DIR_PREFIX}4294967295-{:016x}",
            rand::thread_rng().gen::<u64>()
        ));
        std::fs::create_dir(&gone).unwrap();
        let live = PrivateDir::new().unwrap();
        remove_stale_dirs();
        assert!(!gone.exists(), "{}", gone.display());
        assert!(live.0.exists(), "{}", live.0.display());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("{long}\nshort\n");
        let mut reader = BufReader::new(input.as_bytes());
        assert_eq!(
            read_line(&mut reader).await.unwrap().unwrap().len(),
            MAX_LINE
        );
        assert_eq!(read_line(&mut reader).await.unwrap().unwrap(), "short\n");
        assert_eq!(read_line(&mut reader).await.unwrap(), None);
    }
}
