//! The process's tracing subscriber: log lines on stderr and, with `[telemetry]
//! otlp_endpoint`, trace spans exported over OTLP/gRPC.
//!
//! Spans: one `rpc` span per authorized RPC (made by the auth layer, `crate::api::auth`),
//! named after the gRPC method, with the caller, tenant, credential, cache outcome and gRPC
//! status; and one `upstream` span per upstream HTTP call (made by the SDK's
//! `UpstreamCall::send`) with provider, step, method, redacted URL, status and latency.
//! Both are debug-level: without an exporter (and below debug logging) they are disabled at
//! their call sites, so the hot path neither formats nor allocates for them.
//!
//! With an exporter, a per-layer filter passes authgate's spans (never its log events) to
//! the OpenTelemetry layer; finished spans go to a bounded queue drained by the SDK's
//! `BatchSpanProcessor` on its own thread, which drops spans when the queue is full rather
//! than make a request wait. [`Telemetry::shutdown`] flushes what is queued.

use crate::config::TelemetryConfig;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Finished spans waiting for export; past this, new ones are dropped, so a collector that
/// is down costs memory bounded by this queue.
const MAX_QUEUED_SPANS: usize = 4096;
/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`init`] started; keep it until the process ends and call [`Telemetry::shutdown`].
#[must_use = "call shutdown before exiting, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (waits at most the export
    /// timeout per batch). Blocking, so it runs on a blocking thread.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// The log filter: `AUTHGATE_LOG`, else `RUST_LOG`, else `info`.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("AUTHGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the global subscriber: log lines in `format` (`text` or `json`) and, when
/// `cfg.otlp_endpoint` is set, the OTLP span exporter. Must run inside the Tokio runtime
/// (the gRPC exporter's connection lives on it). Errors are worded for the operator.
pub fn init(format: &str, cfg: &TelemetryConfig) -> Result<Telemetry, String> {
    let Some(endpoint) = cfg.otlp_endpoint.as_deref() else {
        // No exporter: the same global filter as ever, so debug spans stay disabled at
        // their call sites.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::io::stderr);
        if format == "json" {
            builder.json().init();
        } else {
            builder.init();
        }
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(endpoint, cfg)?;
    exporting_subscriber(format, &provider).init();
    tracing::info!(endpoint, "exporting trace spans over OTLP/gRPC");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Log lines as without export, plus authgate's spans to `provider`'s tracer.
pub fn exporting_subscriber(
    format: &str,
    provider: &SdkTracerProvider,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("authgate"))
        .with_threads(false)
        .with_location(false)
        .with_filter(tracing_subscriber::filter::filter_fn(exported));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().with_filter(log_filter()).boxed()
    } else {
        fmt.with_filter(log_filter()).boxed()
    };
    tracing_subscriber::registry().with(fmt).with(otel)
}

/// What the OpenTelemetry layer sees: authgate's and its plugins' spans, not log events
/// (those stay in the log) and not dependencies' spans.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("authgate")
}

/// The OTLP/gRPC exporter behind a batch processor, and the sampler: a caller's sampled
/// flag decides for its trace; new traces are kept at `trace_sample_ratio`.
fn tracer_provider(endpoint: &str, cfg: &TelemetryConfig) -> Result<SdkTracerProvider, String> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT);
    if endpoint.starts_with("https:") {
        let tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint {endpoint}: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .with_scheduled_delay(Duration::from_millis(cfg.export_interval_ms))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Reads W3C trace context from request headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's trace (W3C `traceparent`/`tracestate` in `headers`) the parent of
/// `span`. Does nothing for a disabled span (no exporter) or headers without a valid
/// `traceparent` (the span then starts a trace of its own).
pub fn continue_callers_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Only fails when no OpenTelemetry layer is installed (debug logging without export).
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn reads_the_callers_trace_context() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let cx = TraceContextPropagator::new().extract(&Headers(&h));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
    }
}
