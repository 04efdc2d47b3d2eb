//! `authgate-bench profile`: fixed numbers of calls to authgate and the baseline, for
//! instruction counts under a profiler rather than timings.

use super::common::Pair;
use super::{get_token_message, Ctx, Options, Plan, GET_TOKEN, TOKEN_LEN};
use crate::echo;
use crate::endpoint::Endpoint;
use crate::gateway::{self, BrokerKnobs, Pinning, ServerProcess};
use crate::load::{self, Check, Connections, Decoder, Target};
use authgate::proto::v1::GetTokenResponse;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;

/// Fixed numbers of cache-hit calls to authgate and then to the baseline, for instruction
/// counts under a profiler. With `AUTHGATE_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind"`
/// the counters are zeroed after a warm-up and dumped after the measured calls, so each
/// server's dump holds exactly `calls` cache hits (see BENCHMARKS.md, "Profiling").
///
/// With `cold`, every call asks for a new scope set instead: each is a cache miss and one
/// upstream fetch, so the dump holds the cost of `calls` fetches (authgate only).
pub async fn profile(pinning: Pinning, calls: usize, cold: bool) -> anyhow::Result<()> {
    let opts = Options {
        quick: true,
        pinning: pinning.clone(),
        memory_entries: None,
        skip_memory: true,
        only: None,
    };
    let ctx = Ctx {
        plan: Plan::new(&opts),
        pinning,
        endpoint: Endpoint::start(TOKEN_LEN).await?,
        scratch: gateway::scratch_dir()?,
    };
    let callgrind = std::env::var(gateway::WRAPPER_ENV).is_ok_and(|w| w.contains("callgrind"));
    let gw = ctx
        .start_gateway("main", 1, &BrokerKnobs::default(), None)
        .await?;
    let pair = Pair::start(&ctx, &gw, 4).await?;
    let reply_len = pair.reply_len;
    let sides = [
        ("authgate", &gw.proc, &pair.ag_conns, gw.grpc, GET_TOKEN),
        (
            "baseline",
            &pair.echo,
            &pair.echo_conns,
            pair.echo_addr,
            echo::PATH,
        ),
    ];
    for (name, proc, conns, addr, path) in sides {
        let hot = Arc::new(Target::new(
            addr,
            path,
            std::slice::from_ref(&pair.request),
            Check::ReplyLen(reply_len),
        )?);
        let (make, target) = if cold {
            if name != "authgate" {
                continue;
            }
            cold_calls(addr, path)?
        } else {
            let frame = load::frame(&pair.request);
            let make: load::FrameMaker = Arc::new(move |_| frame.clone());
            (make, hot)
        };
        let warm = if cold { 1_000_000..1_000_100 } else { 0..1_000 };
        load::each_once(conns, &target, make.clone(), warm, 16)
            .await
            .ensure_valid(name)?;
        measure(name, proc, conns, &target, make, calls, callgrind).await?;
    }
    pair.stop().await;
    gw.proc.stop().await;
    Ok(())
}

/// Calls that each ask for a new scope set (call `i` for scope `p{i}`), accepting any
/// GetToken reply.
fn cold_calls(addr: SocketAddr, path: &str) -> anyhow::Result<(load::FrameMaker, Arc<Target>)> {
    let any_token: Decoder = Arc::new(|b: &[u8]| {
        GetTokenResponse::decode(b)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    Ok((
        Arc::new(|i| load::frame(&get_token_message(0, &[format!("p{i}").as_str()]))),
        Arc::new(Target::new(addr, path, &[], Check::Decode(any_token))?),
    ))
}

/// The measured calls, between callgrind's zeroing and its dump when it is in use.
async fn measure(
    name: &str,
    proc: &ServerProcess,
    conns: &Connections,
    target: &Arc<Target>,
    make: load::FrameMaker,
    calls: usize,
    callgrind: bool,
) -> anyhow::Result<()> {
    let control = |arg: &str| {
        std::process::Command::new("callgrind_control")
            .arg(arg)
            .arg(proc.pid.to_string())
            .stdout(std::process::Stdio::null())
            .status()
    };
    if callgrind {
        control("-z")?;
    }
    let cpu0 = proc.cpu_seconds()?;
    let r = load::each_once(conns, target, make, 0..calls, 16).await;
    let cpu1 = proc.cpu_seconds()?;
    r.ensure_valid(name)?;
    if callgrind {
        control("-d")?;
    }
    eprintln!(
        "{name}: pid {}, {} calls, {:.1} µs server CPU per call{}",
        proc.pid,
        r.ok,
        (cpu1 - cpu0) * 1e6 / r.ok as f64,
        if callgrind {
            " (callgrind dump written after the measured calls)"
        } else {
            ""
        }
    );
    Ok(())
}
