//! Helpers several scenarios share: the token-collecting decoder, paired ratios, latency
//! formatting, and the bare tonic baseline started next to a running authgate.

use super::{get_token_message, Ctx, Gateway, GET_TOKEN};
use crate::echo;
use crate::gateway::ServerProcess;
use crate::load::{self, Check, Connections, Decoder, Target};
use crate::report::micros;
use crate::stats::median;
use authgate::proto::v1::GetTokenResponse;
use parking_lot::Mutex;
use prost::Message;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// A decoder that accepts any reply with a token and records the distinct tokens seen.
pub(super) fn token_set_decoder(seen: Arc<Mutex<HashSet<String>>>) -> Decoder {
    Arc::new(move |bytes| {
        let r = GetTokenResponse::decode(bytes).map_err(|e| format!("decode: {e}"))?;
        if r.access_token.is_empty() {
            return Err("empty access token".into());
        }
        seen.lock().insert(r.access_token);
        Ok(())
    })
}

/// The median of the per-alternation ratios `a[i] / b[i]`: each pair ran back to back, so
/// a burst of other work on the machine moves both sides of a pair, not one side's median.
pub(super) fn paired(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

pub(super) fn ms(us: u32) -> String {
    micros(f64::from(us))
}

/// The baseline next to a running authgate: started with the exact bytes of authgate's
/// reply to the first GetToken (which fetches the token), with connections to both.
pub(super) struct Pair {
    pub(super) request: Vec<u8>,
    pub(super) reply_len: usize,
    pub(super) echo: ServerProcess,
    pub(super) echo_addr: SocketAddr,
    pub(super) ag_conns: Connections,
    pub(super) echo_conns: Connections,
}

impl Pair {
    pub(super) async fn start(ctx: &Ctx, gw: &Gateway, conns: usize) -> anyhow::Result<Self> {
        let request = get_token_message(0, &["read"]);
        let reply = Arc::new(Mutex::new(Vec::new()));
        let probe = {
            let reply = reply.clone();
            Arc::new(Target::new(
                gw.grpc,
                GET_TOKEN,
                std::slice::from_ref(&request),
                Check::Decode(Arc::new(move |b: &[u8]| {
                    *reply.lock() = b.to_vec();
                    Ok(())
                })),
            )?)
        };
        let ag_conns = Connections::open(gw.grpc, conns).await?;
        load::burst(&ag_conns, &probe, 1)
            .await
            .ensure_valid("first GetToken")?;
        let reply = std::mem::take(&mut *reply.lock());
        let dir = ctx.scratch.path().join("echo");
        std::fs::create_dir_all(&dir)?;
        let echo = ServerProcess::spawn(
            &ctx.pinning,
            &[
                "serve-echo".to_owned(),
                "--reply-hex".to_owned(),
                echo::hex(&reply),
            ],
            &dir.join("echo.log"),
            &[],
        )
        .await?;
        let echo_addr = echo.ready()?.grpc;
        let echo_conns = Connections::open(echo_addr, conns).await?;
        Ok(Self {
            request,
            reply_len: reply.len(),
            echo,
            echo_addr,
            ag_conns,
            echo_conns,
        })
    }

    pub(super) async fn stop(self) {
        drop(self.ag_conns);
        drop(self.echo_conns);
        self.echo.stop().await;
    }
}
