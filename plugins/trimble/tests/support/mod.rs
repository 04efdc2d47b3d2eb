//! Test helpers shared by this crate's wiremock tests: an upstream call wired to a memory
//! sink as the gateway would build it, matchers that compare whole form and JSON bodies, and
//! the check that no secret reached an event or an error.
#![allow(dead_code)] // each test binary uses a different subset

use authgate_plugin_sdk::{
    MemorySink, Provider, ProviderError, Redactor, UpstreamCall, UpstreamClient, UpstreamEvent,
    UpstreamLimits,
};
use base64::Engine;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use wiremock::{Match, Request};

/// Every secret and token in the tests contains this, so a leak is a substring search.
pub const CANARY: &str = "canary";

/// How long the fake sleeps in timeout tests; well past [`short_timeout`].
pub const SLOW: Duration = Duration::from_secs(3);

pub struct Harness {
    pub call: UpstreamCall,
    pub sink: MemorySink,
}

impl Harness {
    pub async fn events(&self) -> Vec<UpstreamEvent> {
        self.sink.events().await
    }

    pub async fn steps(&self) -> Vec<String> {
        self.events().await.into_iter().map(|e| e.step).collect()
    }
}

/// A call as the gateway builds it: its redactor already knows the credential's secrets.
pub fn harness(provider: &dyn Provider) -> Harness {
    harness_with(provider, UpstreamLimits::default())
}

pub fn harness_with(provider: &dyn Provider, limits: UpstreamLimits) -> Harness {
    let redactor = Redactor::new([0; 32]);
    for secret in provider.secrets() {
        redactor.learn(&secret);
    }
    let sink = MemorySink::default();
    let client = UpstreamClient::new(limits).expect("HTTP client builds");
    Harness {
        call: UpstreamCall::new(client, Arc::new(sink.clone()), redactor),
        sink,
    }
}

pub fn short_timeout() -> UpstreamLimits {
    UpstreamLimits {
        total_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

/// `Basic base64(user:password)`, the raw encoding the vendors' samples use.
pub fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A compact JWS with the given claims (unsigned; only `exp` is read) whose signature part
/// carries the canary, so a leaked token is found by substring search.
pub fn jwt(claims: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.canary-sig",
        e.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        e.encode(claims)
    )
}

/// Matches an `application/x-www-form-urlencoded` body holding exactly these pairs (in any
/// order, nothing more, nothing less).
pub struct FormBody(Vec<(String, String)>);

pub fn form_body(pairs: &[(&str, &str)]) -> FormBody {
    FormBody(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

impl Match for FormBody {
    fn matches(&self, request: &Request) -> bool {
        let form_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let mut got: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        got.sort();
        let mut want = self.0.clone();
        want.sort();
        if form_type && got == want {
            return true;
        }
        eprintln!("form mismatch (content type ok: {form_type}):\n  want {want:?}\n  got  {got:?}");
        false
    }
}

/// Matches an `application/json` body equal to this document.
pub struct JsonBody(Value);

pub fn json_body(value: Value) -> JsonBody {
    JsonBody(value)
}

impl Match for JsonBody {
    fn matches(&self, request: &Request) -> bool {
        let json_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let got = serde_json::from_slice::<Value>(&request.body).ok();
        if json_type && got.as_ref() == Some(&self.0) {
            return true;
        }
        eprintln!(
            "json mismatch (content type ok: {json_type}):\n  want {}\n  got  {got:?}",
            self.0
        );
        false
    }
}

/// Matches a request that does not carry the header at all.
pub struct NoHeader(pub &'static str);

impl Match for NoHeader {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key(self.0)
    }
}

/// No canary in any event, nor in the error's Display or Debug.
pub fn assert_clean(events: &[UpstreamEvent], err: Option<&ProviderError>) {
    let all = format!("{events:?}");
    assert!(
        !all.contains(CANARY),
        "a secret leaked into an event: {all}"
    );
    if let Some(e) = err {
        let shown = format!("{e} / {e:?}");
        assert!(
            !shown.contains(CANARY),
            "a secret leaked into the error: {shown}"
        );
    }
}

/// The `settings` of every `[[credentials]]` of this `kind` in the TOML examples of
/// `docs/providers/<kind>.md`, with `${env:..}`/`${file:..}` references replaced by a
/// placeholder as the config loader would resolve them. Fails if a secret field is given
/// inline, since the config loader refuses that.
pub fn doc_examples(kind: &str, secret_fields: &[&str]) -> Vec<Value> {
    let file = format!(
        "{}/../../docs/providers/{kind}.md",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).expect("provider page exists");
    let mut out = Vec::new();
    for block in text.split("```toml").skip(1) {
        let block = block.split("```").next().expect("closed code block");
        let doc: toml::Value = toml::from_str(block).expect("example is valid TOML");
        let json = serde_json::to_value(doc).expect("TOML converts to JSON");
        for cred in json["credentials"].as_array().into_iter().flatten() {
            if cred["provider"] != kind {
                continue;
            }
            let mut settings = cred["settings"].clone();
            for (field, value) in settings.as_object_mut().expect("settings table") {
                if let Value::String(s) = value {
                    let reference = s.starts_with("${env:") || s.starts_with("${file:");
                    assert!(
                        reference || !secret_fields.contains(&field.as_str()),
                        "{file}: secret field `{field}` given inline"
                    );
                    if reference {
                        *s = "resolved-secret-value".into();
                    }
                }
            }
            out.push(settings);
        }
    }
    assert!(!out.is_empty(), "{file} has no example for {kind}");
    out
}
