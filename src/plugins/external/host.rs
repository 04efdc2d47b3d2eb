//! `Host`, served to one plugin process: `Send`, the only way a plugin reaches the network
//! (through the operation's [`UpstreamCall`], so each request is an event, redacted,
//! bounded and egress-checked like a built-in plugin's), and `Log`.

use super::wire;
use crate::proto::plugin::v1 as pb;
use authgate_plugin_sdk::redact::truncate_chars;
use authgate_plugin_sdk::{ProviderError, Redactor, Secret, UpstreamCall};
use dashmap::DashMap;
use pb::host_server::Host;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Requests one operation may send: a flow of a few steps needs a handful; a plugin in a
/// loop is stopped here.
const MAX_SENDS_PER_CALL: u32 = 32;
/// Longest log line kept.
const MAX_LOG_CHARS: usize = 2048;

/// The operations in flight, by `call_id`: each holds its credential's [`UpstreamCall`].
#[derive(Clone, Default)]
pub(super) struct Calls(Arc<DashMap<String, Arc<InFlight>>>);

pub(super) struct InFlight {
    call: UpstreamCall,
    sends: AtomicU32,
}

/// Removes its operation from [`Calls`] when the gateway's call ends, however it ends:
/// afterwards the `call_id` is worth nothing.
pub(super) struct Registered {
    calls: Calls,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.calls.0.remove(&self.id);
    }
}

impl Calls {
    pub fn register(&self, id: String, call: UpstreamCall) -> Registered {
        self.0.insert(
            id.clone(),
            Arc::new(InFlight {
                call,
                sends: AtomicU32::new(0),
            }),
        );
        Registered {
            calls: self.clone(),
            id,
        }
    }

    fn get(&self, id: &str) -> Option<Arc<InFlight>> {
        self.0.get(id).map(|e| e.value().clone())
    }
}

pub(super) struct HostService {
    kind: String,
    calls: Calls,
    /// Knows the secrets of every credential of this plugin: for lines not about one call.
    redactor: Redactor,
}

impl HostService {
    pub fn new(kind: &str, calls: Calls, redactor: Redactor) -> Self {
        Self {
            kind: kind.to_owned(),
            calls,
            redactor,
        }
    }

    fn in_flight(&self, call_id: &str) -> Result<Arc<InFlight>, Status> {
        self.calls.get(call_id).ok_or_else(|| {
            Status::failed_precondition(
                "unknown call_id: a call_id is valid only while the gateway's call that carries it is in flight",
            )
        })
    }
}

#[tonic::async_trait]
impl Host for HostService {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = request.into_inner();
        let op = self.in_flight(&req.call_id)?;
        let result = if op.sends.fetch_add(1, Ordering::Relaxed) >= MAX_SENDS_PER_CALL {
            Err(ProviderError::config(format!(
                "plugin `{}` sent more than {MAX_SENDS_PER_CALL} requests for one operation",
                self.kind
            )))
        } else {
            send(&op.call, req).await
        };
        let result = match result {
            Ok(resp) => pb::send_response::Result::Response(wire::http_response(resp)),
            Err(e) => pb::send_response::Result::Error(wire::error(&e, op.call.redactor())),
        };
        Ok(Response::new(pb::SendResponse {
            result: Some(result),
        }))
    }

    async fn log(
        &self,
        request: Request<pb::LogRequest>,
    ) -> Result<Response<pb::LogResponse>, Status> {
        let req = request.into_inner();
        let mut line = self.redactor.scrub(&req.message);
        if let Some(op) = self.calls.get(&req.call_id) {
            line = op.call.redactor().scrub(&line);
        }
        let line = truncate_chars(&line, MAX_LOG_CHARS);
        let kind = self.kind.as_str();
        match pb::LogLevel::try_from(req.level).unwrap_or(pb::LogLevel::Info) {
            pb::LogLevel::Debug => tracing::debug!(plugin = %kind, "{line}"),
            pb::LogLevel::Warn => tracing::warn!(plugin = %kind, "{line}"),
            pb::LogLevel::Error => tracing::error!(plugin = %kind, "{line}"),
            pb::LogLevel::Info | pb::LogLevel::Unspecified => {
                tracing::info!(plugin = %kind, "{line}");
            }
        }
        Ok(Response::new(pb::LogResponse {}))
    }
}

/// One request through the operation's call: its secrets learned first, so neither the
/// event nor any message shows them.
async fn send(
    call: &UpstreamCall,
    req: pb::SendRequest,
) -> Result<authgate_plugin_sdk::UpstreamResponse, ProviderError> {
    for value in &req.secrets {
        call.redactor().learn(&Secret::from(value.as_str()));
    }
    let fields: Vec<&str> = req
        .secret_response_fields
        .iter()
        .map(String::as_str)
        .collect();
    let step = if req.step.is_empty() {
        "plugin".to_owned()
    } else {
        truncate_chars(&req.step, 64)
    };
    let upstream = wire::upstream_request(&req)
        .map_err(|m| ProviderError::config(format!("{step}: {}", call.redactor().scrub(&m))))?;
    call.send_with_secret_fields(&step, upstream, &fields).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_plugin_sdk::{Egress, MemorySink, UpstreamClient, UpstreamLimits};

    fn call(sink: &MemorySink, secret: &str) -> UpstreamCall {
        let redactor = Redactor::new([3; 32]);
        redactor.learn(&Secret::from(secret));
        let client = UpstreamClient::new(UpstreamLimits::default()).expect("client builds");
        UpstreamCall::new(client, Arc::new(sink.clone()), redactor, Egress::Trusted)
    }

    fn send_request(call_id: &str, url: &str) -> Request<pb::SendRequest> {
        Request::new(pb::SendRequest {
            call_id: call_id.into(),
            step: "token".into(),
            method: "POST".into(),
            url: url.into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_call_id_is_worth_something_only_while_its_call_runs() {
        let calls = Calls::default();
        let host = HostService::new("k", calls.clone(), Redactor::new([0; 32]));
        let sink = MemorySink::default();
        let registered = calls.register("c1".into(), call(&sink, "s3cret-canary"));
        // Port 9 (discard) refuses on loopback: a quick transient failure, still an event.
        let answer = host
            .send(send_request("c1", "http://127.0.0.1:9/token"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(answer.result, Some(pb::send_response::Result::Error(ref e)) if e.kind == i32::from(pb::error::Kind::Transient)),
            "{answer:?}"
        );
        assert_eq!(sink.events().await.len(), 1, "the attempt is recorded");
        drop(registered);
        let gone = host
            .send(send_request("c1", "http://127.0.0.1:9/token"))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn one_operation_sends_a_bounded_number_of_requests() {
        let calls = Calls::default();
        let host = HostService::new("k", calls.clone(), Redactor::new([0; 32]));
        let sink = MemorySink::default();
        let _registered = calls.register("c1".into(), call(&sink, "s3cret-canary"));
        for _ in 0..MAX_SENDS_PER_CALL {
            host.send(send_request("c1", "http://127.0.0.1:9/token"))
                .await
                .unwrap();
        }
        let over = host
            .send(send_request("c1", "http://127.0.0.1:9/token"))
            .await
            .unwrap()
            .into_inner();
        match over.result {
            Some(pb::send_response::Result::Error(e)) => {
                assert_eq!(e.kind, i32::from(pb::error::Kind::InvalidConfiguration));
                assert!(e.message.contains("more than 32 requests"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sink.events().await.len(), MAX_SENDS_PER_CALL as usize);
    }

    #[tokio::test]
    async fn a_bad_request_is_refused_without_echoing_its_secrets() {
        let calls = Calls::default();
        let host = HostService::new("k", calls.clone(), Redactor::new([0; 32]));
        let sink = MemorySink::default();
        let _registered = calls.register("c1".into(), call(&sink, "s3cret-canary"));
        let answer = host
            .send(send_request("c1", "ftp://host/s3cret-canary"))
            .await
            .unwrap()
            .into_inner();
        let shown = format!(
            "{:?}",
            answer.result.map(|r| match r {
                pb::send_response::Result::Error(e) => e.message,
                pb::send_response::Result::Response(_) => String::new(),
            })
        );
        assert!(
            shown.contains("http(s) URL") && !shown.contains("canary"),
            "{shown}"
        );
        assert!(sink.events().await.is_empty(), "nothing was sent");
    }
}
