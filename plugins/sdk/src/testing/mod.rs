//! Test support for provider plugins (feature `testing`; enable it from `[dev-dependencies]`
//! only): an upstream call wired to a memory sink as the gateway would build it, wiremock
//! matchers that compare whole form and JSON bodies, the check that no secret reached an
//! event or an error, the check that the documented config examples build, and a test PKI
//! made at run time for client certificates.
//!
//! [`ticket`] is the example plugin's flow (`example_ticket`) in process, with a wiremock
//! fake of its provider; [`contract`] is the suite every provider plugin must pass, driven
//! only through the [`Provider`] trait, so it runs against in-process plugins and
//! out-of-process ones alike.

use crate::egress::Egress;
use crate::http::{MemorySink, UpstreamCall, UpstreamClient, UpstreamEvent, UpstreamLimits};
use crate::{
    FetchRequest, IssuedToken, Provider, ProviderError, ProviderFactory, Redactor, ScopeSet,
    Secret, SettingsError,
};
use base64::Engine;
use serde_json::Value;
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;
use wiremock::{Match, Request};

pub mod contract;
pub mod ticket;

/// Every secret and token in the tests contains this, so a leak is a substring search.
pub const CANARY: &str = "canary";

/// How long the fake sleeps in timeout tests; well past [`short_timeout`].
pub const SLOW: Duration = Duration::from_secs(3);

/// An upstream call and the sink that records its events.
pub struct Harness {
    pub call: UpstreamCall,
    pub sink: MemorySink,
}

impl Harness {
    /// A call whose redactor already knows `secrets`.
    pub fn new(secrets: impl IntoIterator<Item = Secret>, limits: UpstreamLimits) -> Self {
        let redactor = Redactor::new([0; 32]);
        for secret in secrets {
            redactor.learn(&secret);
        }
        let sink = MemorySink::default();
        let client = UpstreamClient::new(limits).expect("HTTP client builds");
        Self {
            call: UpstreamCall::new(client, Arc::new(sink.clone()), redactor, Egress::Trusted),
            sink,
        }
    }

    pub async fn events(&self) -> Vec<UpstreamEvent> {
        self.sink.events().await
    }

    pub async fn steps(&self) -> Vec<String> {
        self.events().await.into_iter().map(|e| e.step).collect()
    }

    /// `provider.fetch` over this call, with these scopes and refresh token.
    pub async fn fetch(
        &self,
        provider: &dyn Provider,
        scopes: &[&str],
        refresh_token: Option<&Secret>,
    ) -> Result<IssuedToken, ProviderError> {
        let scopes = ScopeSet::new(scopes);
        provider
            .fetch(FetchRequest {
                scopes: &scopes,
                refresh_token,
                call: &self.call,
            })
            .await
    }

    /// The one event recorded, under `step`, after a failure with `err`; neither holds a
    /// secret.
    pub async fn only_event(&self, step: &str, err: &ProviderError) -> UpstreamEvent {
        let events = self.events().await;
        assert_clean(&events, Some(err));
        assert_eq!(events.len(), 1);
        let event = events.into_iter().next().expect("one event");
        assert_eq!(event.step, step);
        event
    }
}

/// A call as the gateway builds it: its redactor already knows the credential's secrets.
pub fn harness(provider: &dyn Provider) -> Harness {
    harness_with(provider, UpstreamLimits::default())
}

pub fn harness_with(provider: &dyn Provider, limits: UpstreamLimits) -> Harness {
    Harness::new(provider.secrets(), limits)
}

pub fn short_timeout() -> UpstreamLimits {
    UpstreamLimits {
        total_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

/// `base` (a JSON object) with the fields of `extra` set over it; a `null` in `extra`
/// removes the field.
pub fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    base
}

/// The message of a settings error; panics when the settings were accepted.
pub fn settings_error<T>(built: Result<T, SettingsError>) -> String {
    match built {
        Ok(_) => panic!("settings accepted"),
        Err(e) => e.0,
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

/// True when the request's content type is `mime` (parameters such as a charset aside).
fn content_type_is(request: &Request, mime: &str) -> bool {
    request
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(mime))
}

impl Match for FormBody {
    fn matches(&self, request: &Request) -> bool {
        let form_type = content_type_is(request, "application/x-www-form-urlencoded");
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
        let json_type = content_type_is(request, "application/json");
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

/// The `settings` of every `[[credentials]]` of this `kind` in the TOML examples of the
/// workspace's `docs/providers/<kind>.md`, with `${env:..}`/`${file:..}` references replaced
/// by a placeholder as the config loader would resolve them. Fails if a secret field is given
/// inline, since the config loader refuses that.
///
/// `parse_toml` reads one example into JSON; pass `toml::from_str` (the SDK itself carries no
/// TOML parser).
pub fn doc_examples<E: Display>(
    kind: &str,
    secret_fields: &[&str],
    parse_toml: impl Fn(&str) -> Result<Value, E>,
) -> Vec<Value> {
    // The SDK and the plugins all sit two levels below the workspace root.
    let file = format!(
        "{}/../../docs/providers/{kind}.md",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).expect("provider page exists");
    let mut out = Vec::new();
    for block in text.split("```toml").skip(1) {
        let block = block.split("```").next().expect("closed code block");
        let json = parse_toml(block).unwrap_or_else(|e| panic!("example is valid TOML: {e}"));
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

/// Every example of [`doc_examples`] for the factory's kind builds with the factory.
pub fn assert_doc_examples_build<E: Display>(
    factory: &dyn ProviderFactory,
    parse_toml: impl Fn(&str) -> Result<Value, E>,
) {
    let kind = factory.kind();
    for settings in doc_examples(kind, factory.secret_fields(), parse_toml) {
        if let Err(e) = factory.build(settings.clone()) {
            panic!("docs/providers/{kind}.md example does not build: {e}\n{settings}");
        }
    }
}

/// A certificate authority made for one test run (nothing is committed): it issues client
/// certificates for mutual-TLS settings.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, private key PEM) of a client certificate with subject `CN=cn`.
    pub fn client(&self, cn: &str) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("client parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        (cert.pem(), key.serialize_pem())
    }
}
