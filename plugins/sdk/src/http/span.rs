//! The tracing span of one upstream call (exported with `[telemetry] otlp_endpoint`).

use super::UpstreamEvent;

/// The span of one upstream call; its outcome is added by [`annotate_span`].
pub(super) fn upstream_span(step: &str, method: &http::Method, provider: &str) -> tracing::Span {
    tracing::debug_span!(
        "upstream",
        otel.name = format_args!("upstream {step}"),
        otel.kind = "client",
        provider,
        step,
        http.request.method = method.as_str(),
        url.full = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records a finished call's outcome on the current (upstream) span. Everything comes from
/// the already redacted event; the URL loses its query and fragment too.
pub(super) fn annotate_span(event: &UpstreamEvent) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let url = event.url.split(['?', '#']).next().unwrap_or("");
    span.record("url.full", url);
    span.record("latency_ms", event.latency.as_millis() as u64);
    if let Some(status) = event.status {
        span.record("http.response.status_code", status);
    }
    if let Some(e) = &event.error {
        span.record("error", e.as_str());
    }
    if event.error.is_some() || event.status.is_none_or(|s| s >= 400) {
        span.record("otel.status_code", "error");
    }
}
