//! The vendor plugins (`trimble_connect`, `trimble_ag`, `autodesk_aps`, `lseg_rdp`) driven
//! through the real gRPC server, each against a local wiremock fake of the vendor's
//! documented endpoints (docs/providers/*.md; the wire shapes are those of the plugin tests in
//! plugins/*/tests/).
//!
//! Every credential is configured through `[[credentials]]` TOML with its secrets as
//! `${env:..}` references to canary values, and every token the fakes issue contains the
//! canary too, so a leak anywhere (gRPC error, event, credential view) is a substring search.
//!
//! Two table-driven halves:
//! - [`lifecycle`]: GetToken (the exact documented requests: method, path, decoded Basic
//!   credentials, form or JSON body), a cache hit, two `force_refresh` fetches (the refresh
//!   grant where the plugin has one, with rotation), Revoke with `upstream = true`, a fetch
//!   after the revoke, and ListEvents (every upstream call with its step and status, redacted).
//! - [`failure`]: per plugin, rejected credentials, 5xx, a malformed 200 body and a timeout,
//!   each with its gRPC status, its events and no secret anywhere.

// Each test reads as one scenario, top to bottom, and each vendor table is one `match`;
// long ones are not split into steps.
#![allow(clippy::too_many_lines)]

mod common;

use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::{
    CredentialStatus, Event, EventKind, GetCredentialRequest, GetTokenRequest, GetTokenResponse,
    ListEventsRequest, RevokeRequest,
};
use authgate::server::StartOptions;
use authgate_plugin_sdk::UpstreamLimits;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TENANT: &str = "acme";

/// Every secret and every token in this file contains it.
const CANARY: &str = "canary";

/// Transient failures are retried after 10–20 ms instead of a second.
const FAST_BACKOFF: &str = "[broker]\nbackoff_initial_ms = 20\nbackoff_max_seconds = 1\n\n";

/// The gateway's per-request upstream timeout in the timeout tests, and how long the fake
/// makes it wait there.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
const SLOW: Duration = Duration::from_secs(2);

/// Upper bound on any one test.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Form and JSON fields whose values the events must show only as digests.
const SECRET_FIELDS: &[&str] = &[
    "password",
    "refresh_token",
    "token",
    "jwt",
    "client_secret",
    "code",
];

// Trimble Connect (exchange mode).
const TC_KEY: &str = "tc-consumer-key";
const TC_SECRET: &str = "canary-tc-consumer-secret";
const TC_MASTER: &str = "/tc/api/2.0";
// Trimble Ag.
const AG_CLIENT: &str = "ag-client-id";
const AG_SECRET: &str = "canary-ag-client-secret";
// Autodesk APS.
const APS_CLIENT: &str = "5zw90va0UuwMKTnPS5sLsdgZjDkVYXN7";
const APS_SECRET: &str = "canary7I6uN1rjneirxiMW";
const APS_BASE: &str = "/authentication/v2";
// LSEG RDP.
const RDP_APP_KEY: &str = "rdp-app-key-0123";
const RDP_USER: &str = "GE-A-01103867-3-1234";
const RDP_PASSWORD: &str = "canary-rdp-password";
const RDP_TOKEN: &str = "/auth/oauth2/v1/token";
const RDP_GRANTED: &str = "trapi.data.pricing.read trapi.metadata.read";

/// `exp` of the Trimble JWTs: Connect tokens carry no `expires_in`, so this is their expiry.
static TC_EXP: LazyLock<i64> = LazyLock::new(|| now_unix() + 7200);

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test did not finish within its time limit");
}

fn assert_no_canary(text: &str, what: &str) {
    assert!(
        !text.contains(CANARY),
        "a secret or token leaked into {what}: {text}"
    );
}

/// A compact JWS with these claims whose signature part carries the canary.
fn jwt(claims: Value, sig: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{sig}",
        e.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

fn tc_id_token() -> String {
    jwt(
        json!({"sub": "user-1", "aud": TC_KEY, "exp": *TC_EXP}),
        "canary-tc-id-sig",
    )
}

// ------------------------------------------------------------------ the wire expectations

/// A request body as the vendor documents it.
#[derive(Debug, Clone)]
enum Body {
    Empty,
    Form(Vec<(String, String)>),
    Json(Value),
}

fn form(pairs: &[(&str, &str)]) -> Body {
    Body::Form(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// One documented upstream request, and the step its event must be filed under.
#[derive(Debug, Clone)]
struct Want {
    step: &'static str,
    method: &'static str,
    path: String,
    /// The decoded `Authorization: Basic` pair; `None`: no Authorization header at all.
    basic: Option<(&'static str, &'static str)>,
    body: Body,
}

fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request the fake received is exactly the documented one.
fn assert_request(req: &Request, want: &Want, i: usize) {
    let at = format!("request #{i} ({})", want.step);
    assert_eq!(req.method.as_str(), want.method, "{at}: method");
    assert_eq!(req.url.path(), want.path, "{at}: path");
    assert_eq!(req.url.query(), None, "{at}: no query parameters");
    match want.basic {
        Some((user, password)) => {
            let value = header(req, "authorization")
                .unwrap_or_else(|| panic!("{at}: no Authorization header"));
            let encoded = value
                .strip_prefix("Basic ")
                .unwrap_or_else(|| panic!("{at}: not HTTP Basic: {value}"));
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_else(|e| panic!("{at}: Basic value is not base64: {e}"));
            let raw = String::from_utf8(raw).expect("Basic value is UTF-8");
            assert_eq!(
                raw.split_once(':'),
                Some((user, password)),
                "{at}: Basic credentials"
            );
        }
        None => assert_eq!(
            header(req, "authorization"),
            None,
            "{at}: must carry no Authorization header"
        ),
    }
    let content_type = header(req, "content-type").unwrap_or("");
    match &want.body {
        Body::Empty => assert!(req.body.is_empty(), "{at}: body must be empty"),
        Body::Form(pairs) => {
            assert!(
                content_type.starts_with("application/x-www-form-urlencoded"),
                "{at}: content type {content_type}"
            );
            let got: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect();
            assert_eq!(sorted(got), sorted(pairs.clone()), "{at}: form fields");
        }
        Body::Json(doc) => {
            assert!(
                content_type.starts_with("application/json"),
                "{at}: content type {content_type}"
            );
            let got: Value = serde_json::from_slice(&req.body)
                .unwrap_or_else(|e| panic!("{at}: body is not JSON: {e}"));
            assert_eq!(&got, doc, "{at}: JSON body");
        }
    }
}

/// A secret field's value in an event: a digest, never the value.
fn assert_redacted_field(key: &str, shown: &str, sent: &str, at: &str) {
    if SECRET_FIELDS.contains(&key) {
        assert!(
            shown.starts_with("hmac-sha256:"),
            "{at}: `{key}` must be a digest, is {shown}"
        );
    } else {
        assert_eq!(shown, sent, "{at}: `{key}` stays readable");
    }
}

/// Upstream-call events (oldest first) match the documented requests one to one, with these
/// statuses, readable where they may be and digested where they must.
fn assert_upstream_events(events: &[Event], wants: &[(Want, u32)], uri: &str) {
    let steps: Vec<&str> = events
        .iter()
        .map(|e| e.http.as_ref().map_or("", |h| h.step.as_str()))
        .collect();
    let want_steps: Vec<&str> = wants.iter().map(|(w, _)| w.step).collect();
    assert_eq!(steps, want_steps, "upstream_call steps");
    for (i, (event, (want, status))) in events.iter().zip(wants).enumerate() {
        let at = format!("upstream event #{i} ({})", want.step);
        assert_eq!(event.kind, EventKind::UpstreamCall as i32, "{at}: kind");
        let h = event
            .http
            .as_ref()
            .expect("upstream_call carries the exchange");
        assert_eq!(h.method, want.method, "{at}: method");
        assert_eq!(h.url, format!("{uri}{}", want.path), "{at}: url");
        assert_eq!(h.status, *status, "{at}: status");
        if *status == 0 {
            assert!(!h.error.is_empty(), "{at}: no response, so an error");
        }
        match want.basic {
            Some(_) => {
                let auth = h.request_headers.get("authorization");
                assert!(
                    auth.is_some_and(|a| a.starts_with("Basic hmac-sha256:")),
                    "{at}: Basic credentials shown as a digest, got {auth:?}"
                );
            }
            None => assert!(
                !h.request_headers.contains_key("authorization"),
                "{at}: no Authorization header"
            ),
        }
        match &want.body {
            Body::Empty => assert_eq!(h.request_body, "", "{at}: body"),
            Body::Form(pairs) => {
                let shown: Vec<(String, String)> =
                    url::form_urlencoded::parse(h.request_body.as_bytes())
                        .into_owned()
                        .collect();
                assert_eq!(shown.len(), pairs.len(), "{at}: {}", h.request_body);
                for (k, v) in pairs {
                    let (_, s) = shown
                        .iter()
                        .find(|(sk, _)| sk == k)
                        .unwrap_or_else(|| panic!("{at}: `{k}` missing: {}", h.request_body));
                    assert_redacted_field(k, s, v, &at);
                }
            }
            Body::Json(doc) => {
                let shown: Value = serde_json::from_str(&h.request_body).expect("JSON body");
                let (Some(shown), Some(sent)) = (shown.as_object(), doc.as_object()) else {
                    panic!("{at}: JSON objects expected");
                };
                assert_eq!(shown.len(), sent.len(), "{at}: {}", h.request_body);
                for (k, v) in sent {
                    let s = shown[k].as_str().expect("string field");
                    assert_redacted_field(k, s, v.as_str().expect("string field"), &at);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ the plugins as a table

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plugin {
    /// Exchange mode (client credentials): regions, Identity `id_token`, Connect exchange.
    TrimbleConnect,
    /// Client credentials at Trimble Identity.
    TrimbleAg,
    /// User session from a configured refresh token (refresh grant, rotating).
    TrimbleAgRefresh,
    /// 2-legged.
    AutodeskAps,
    /// 3-legged from a configured refresh token (APS rotates it on every use).
    AutodeskApsRefresh,
    /// Password sign-on (legacy, opted in), then the refresh grant.
    LsegRdp,
}

impl Plugin {
    fn kind(self) -> &'static str {
        match self {
            Self::TrimbleConnect => "trimble_connect",
            Self::TrimbleAg | Self::TrimbleAgRefresh => "trimble_ag",
            Self::AutodeskAps | Self::AutodeskApsRefresh => "autodesk_aps",
            Self::LsegRdp => "lseg_rdp",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Self::TrimbleConnect => "tc",
            Self::TrimbleAg => "ag",
            Self::TrimbleAgRefresh => "ag-user",
            Self::AutodeskAps => "aps",
            Self::AutodeskApsRefresh => "aps-user",
            Self::LsegRdp => "rdp",
        }
    }

    /// The access token of the `n`th fetch (what GetToken must return).
    fn access_token(self, n: u32) -> String {
        match self {
            Self::TrimbleConnect => jwt(
                json!({"sub": "user-1", "exp": *TC_EXP}),
                &format!("canary-tc-connect-sig-{n}"),
            ),
            _ => format!("canary-{}-at-{n}", self.id()),
        }
    }

    /// The refresh token issued with the `n`th fetch; `0` is the configured one.
    fn refresh_token(self, n: u32) -> String {
        format!("canary-{}-rt-{n}", self.id())
    }

    /// The `[[credentials]]` entry, every base URL on the fake, secrets by `${env:..}`.
    fn credential(self, uri: &str) -> String {
        let secret = |value: &str| format!("\"${{env:{}}}\"", env_secret(value));
        let settings = match self {
            Self::TrimbleConnect => format!(
                "client_id = \"{TC_KEY}\"\nclient_secret = {}\nregion = \"eu\"\nidentity_url = \"{uri}\"\nmaster_url = \"{uri}{TC_MASTER}\"\n",
                secret(TC_SECRET)
            ),
            Self::TrimbleAg => format!(
                "client_id = \"{AG_CLIENT}\"\nclient_secret = {}\nscopes = [\"ag-app\"]\ntoken_url = \"{uri}/oauth/token\"\n",
                secret(AG_SECRET)
            ),
            Self::TrimbleAgRefresh => format!(
                "grant = \"refresh_token\"\nclient_id = \"{AG_CLIENT}\"\nclient_secret = {}\nrefresh_token = {}\ntoken_url = \"{uri}/oauth/token\"\n",
                secret(AG_SECRET),
                secret(&self.refresh_token(0))
            ),
            Self::AutodeskAps => format!(
                "client_id = \"{APS_CLIENT}\"\nclient_secret = {}\nscopes = [\"data:read\", \"viewables:read\"]\nbase_url = \"{uri}{APS_BASE}\"\n",
                secret(APS_SECRET)
            ),
            Self::AutodeskApsRefresh => format!(
                "grant = \"refresh_token\"\nclient_id = \"{APS_CLIENT}\"\nclient_secret = {}\nrefresh_token = {}\nscopes = [\"data:read\"]\nbase_url = \"{uri}{APS_BASE}\"\n",
                secret(APS_SECRET),
                secret(&self.refresh_token(0))
            ),
            Self::LsegRdp => format!(
                "client_id = \"{RDP_APP_KEY}\"\nusername = \"{RDP_USER}\"\npassword = {}\nallow_legacy_password_grant = true\ntoken_url = \"{uri}{RDP_TOKEN}\"\n",
                secret(RDP_PASSWORD)
            ),
        };
        format!(
            "[[credentials]]\ntenant = \"{TENANT}\"\nid = \"{}\"\nprovider = \"{}\"\n[credentials.settings]\n{settings}\n",
            self.id(),
            self.kind()
        )
    }

    /// The endpoint that issues the token (the last step of a fetch).
    fn token_path(self) -> String {
        match self {
            Self::TrimbleConnect => format!("{TC_MASTER}/auth/token"),
            Self::TrimbleAg | Self::TrimbleAgRefresh => "/oauth/token".into(),
            Self::AutodeskAps | Self::AutodeskApsRefresh => format!("{APS_BASE}/token"),
            Self::LsegRdp => RDP_TOKEN.into(),
        }
    }

    /// The vendor's success answer carrying the `n`th token.
    fn answer(self, n: u32) -> ResponseTemplate {
        let at = self.access_token(n);
        let rt = self.refresh_token(n);
        let body = match self {
            // Connect answers only the token; its lifetime is the JWT's `exp`.
            Self::TrimbleConnect => json!({ "token": at }),
            // An opaque token without expires_in (the documented hour applies); the refresh
            // token a client-credentials answer may carry is of no use and must not be kept.
            Self::TrimbleAg => json!({
                "access_token": at, "token_type": "Bearer", "refresh_token": "canary-ag-unneeded-rt",
            }),
            Self::TrimbleAgRefresh => json!({
                "access_token": at, "token_type": "Bearer", "expires_in": 3600, "refresh_token": rt,
            }),
            Self::AutodeskAps => json!({
                "access_token": at, "token_type": "Bearer", "expires_in": 3599,
            }),
            Self::AutodeskApsRefresh => json!({
                "access_token": at, "token_type": "Bearer", "expires_in": 3599, "refresh_token": rt,
            }),
            // RDP: every value a string, expires_in included.
            Self::LsegRdp => json!({
                "access_token": at, "refresh_token": rt, "expires_in": "300",
                "scope": RDP_GRANTED, "token_type": "Bearer",
            }),
        };
        ResponseTemplate::new(200).set_body_json(body)
    }

    /// Mounts the vendor's endpoints: fixed ones answer always, the token endpoint answers
    /// tokens 1..=`tokens` in turn. Requests are checked afterwards, one by one.
    async fn mount(self, fake: &MockServer, tokens: u32) {
        if self == Self::TrimbleConnect {
            Mock::given(method("GET"))
                .and(path(format!("{TC_MASTER}/regions")))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                    {"isMaster": true, "location": "northAmerica", "serviceRegion": "us",
                     "origin": "https://app.connect.trimble.com",
                     "tc-api": "https://app.connect.trimble.com/tc/api/2.0/"},
                    {"isMaster": false, "location": "europe", "serviceRegion": "eu",
                     "origin": "https://app21.connect.trimble.com"},
                    {"isMaster": false, "location": "asia", "origin": "https://app31.connect.trimble.com"}
                ])))
                .mount(fake)
                .await;
            Mock::given(method("POST"))
                .and(path("/oauth/token"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": "canary-tc-identity-at", "token_type": "bearer",
                    "expires_in": 3600, "id_token": tc_id_token(),
                })))
                .mount(fake)
                .await;
        }
        if matches!(self, Self::AutodeskAps | Self::AutodeskApsRefresh) {
            Mock::given(method("POST"))
                .and(path(format!("{APS_BASE}/revoke")))
                .respond_with(ResponseTemplate::new(200))
                .mount(fake)
                .await;
        }
        for n in 1..=tokens {
            Mock::given(method("POST"))
                .and(path(self.token_path()))
                .respond_with(self.answer(n))
                .up_to_n_times(1)
                .mount(fake)
                .await;
        }
    }

    /// The documented requests of the `n`th fetch, in order.
    fn fetch_wants(self, n: u32) -> Vec<Want> {
        let post = |step, path: String, basic, body| Want {
            step,
            method: "POST",
            path,
            basic: Some(basic),
            body,
        };
        let previous_rt = self.refresh_token(n - 1);
        match self {
            Self::TrimbleConnect => vec![
                // Public: no credentials.
                Want {
                    step: "regions",
                    method: "GET",
                    path: format!("{TC_MASTER}/regions"),
                    basic: None,
                    body: Body::Empty,
                },
                post(
                    "identity_token",
                    "/oauth/token".into(),
                    (TC_KEY, TC_SECRET),
                    form(&[("grant_type", "client_credentials"), ("scope", "openid")]),
                ),
                // The id_token is the credential here: no Authorization header.
                Want {
                    step: "connect_exchange",
                    method: "POST",
                    path: self.token_path(),
                    basic: None,
                    body: Body::Json(json!({ "jwt": tc_id_token() })),
                },
            ],
            // Client credentials are re-run; the unneeded refresh token is never used.
            Self::TrimbleAg => vec![post(
                "client_credentials",
                self.token_path(),
                (AG_CLIENT, AG_SECRET),
                form(&[("grant_type", "client_credentials"), ("scope", "ag-app")]),
            )],
            Self::TrimbleAgRefresh => vec![post(
                "refresh",
                self.token_path(),
                (AG_CLIENT, AG_SECRET),
                form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", previous_rt.as_str()),
                ]),
            )],
            Self::AutodeskAps => vec![post(
                "client_credentials",
                self.token_path(),
                (APS_CLIENT, APS_SECRET),
                form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "data:read viewables:read"),
                ]),
            )],
            // No `scope` on refresh when the request names none (APS refuses scopes beyond
            // the consent); each refresh presents the token the previous one returned.
            Self::AutodeskApsRefresh => vec![post(
                "refresh",
                self.token_path(),
                (APS_CLIENT, APS_SECRET),
                form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", previous_rt.as_str()),
                ]),
            )],
            // The App Key as Basic user with an empty password, as `auth=(APP_KEY, "")`.
            Self::LsegRdp if n == 1 => vec![post(
                "password",
                self.token_path(),
                (RDP_APP_KEY, ""),
                form(&[
                    ("username", RDP_USER),
                    ("password", RDP_PASSWORD),
                    ("grant_type", "password"),
                    ("scope", "trapi"),
                    ("takeExclusiveSignOnControl", "true"),
                ]),
            )],
            // Neither password nor scope on refresh.
            Self::LsegRdp => vec![post(
                "refresh",
                self.token_path(),
                (RDP_APP_KEY, ""),
                form(&[
                    ("refresh_token", previous_rt.as_str()),
                    ("grant_type", "refresh_token"),
                ]),
            )],
        }
    }

    /// The documented revocation of access token `n`, for plugins that support it.
    fn revoke_want(self, n: u32) -> Option<Want> {
        matches!(self, Self::AutodeskAps | Self::AutodeskApsRefresh).then(|| Want {
            step: "revoke",
            method: "POST",
            path: format!("{APS_BASE}/revoke"),
            basic: Some((APS_CLIENT, APS_SECRET)),
            body: form(&[
                ("token", self.access_token(n).as_str()),
                ("token_type_hint", "access_token"),
            ]),
        })
    }

    /// What the first token must look like beyond its value.
    fn check_first_token(self, t: &GetTokenResponse) {
        let lifetime = |secs: i64| {
            let left = t.expires_at.as_ref().expect("expires_at").seconds - now_unix();
            assert!(
                (secs - 15..=secs + 1).contains(&left),
                "{self:?}: expires in {left} s, want about {secs} s"
            );
        };
        match self {
            Self::TrimbleConnect => {
                assert_eq!(
                    t.expires_at.as_ref().map(|e| e.seconds),
                    Some(*TC_EXP),
                    "the Connect token's JWT exp"
                );
                let m = &t.metadata;
                assert_eq!(m["base_url"], "https://app21.connect.trimble.com");
                assert_eq!(
                    m["api_base_url"],
                    "https://app21.connect.trimble.com/tc/api/2.0"
                );
                assert_eq!(m["region"], "europe");
                assert_eq!(m["region.asia"], "https://app31.connect.trimble.com");
                assert_eq!(m["region.northAmerica"], "https://app.connect.trimble.com");
            }
            Self::TrimbleAg | Self::TrimbleAgRefresh => lifetime(3600),
            Self::AutodeskAps | Self::AutodeskApsRefresh => lifetime(3599),
            Self::LsegRdp => {
                lifetime(300);
                assert_eq!(t.scopes, RDP_GRANTED.split(' ').collect::<Vec<_>>());
            }
        }
    }

    /// Where each failure class is injected, and the vendor's answer there.
    fn injection(self, class: Class) -> Injection {
        let (step, path) = match (self, class) {
            (Self::TrimbleConnect, Class::Rejected | Class::ServerError) => {
                ("identity_token", "/oauth/token".to_owned())
            }
            (Self::TrimbleConnect, _) => ("connect_exchange", self.token_path()),
            (Self::TrimbleAg, _) => ("client_credentials", self.token_path()),
            (Self::AutodeskAps, _) => ("client_credentials", self.token_path()),
            (Self::LsegRdp, _) => ("password", self.token_path()),
            (other, _) => panic!("no failure table for {other:?}"),
        };
        let (answer, status, hint) = match (self, class) {
            // The vendors' own rejection shapes, each echoing the secret it refused, which
            // the gateway must scrub.
            (Self::TrimbleConnect, Class::Rejected) => (
                ResponseTemplate::new(401).set_body_json(json!({
                    "error": "invalid_client",
                    "error_description": format!("Client authentication failed ({TC_SECRET})"),
                })),
                401,
                "invalid_client",
            ),
            (Self::TrimbleAg, Class::Rejected) => (
                ResponseTemplate::new(401).set_body_json(json!({
                    "error": "invalid_client",
                    "error_description": format!("bad client secret {AG_SECRET}"),
                })),
                401,
                "invalid_client",
            ),
            (Self::AutodeskAps, Class::Rejected) => (
                ResponseTemplate::new(401).set_body_json(json!({
                    "developerMessage": format!("The client_id and client_secret ({APS_SECRET}) combination is not valid"),
                    "userMessage": " ",
                    "errorCode": "AUTH-003",
                    "more info": "https://aps.autodesk.com/en/docs/oauth/v2/developers_guide/error_handling/",
                })),
                401,
                "AUTH-003",
            ),
            (Self::LsegRdp, Class::Rejected) => (
                ResponseTemplate::new(400).set_body_json(json!({
                    "error": "invalid_grant",
                    "error_description": format!("Invalid username or password ({RDP_PASSWORD})."),
                })),
                400,
                "invalid_grant",
            ),
            (_, Class::Rejected) => unreachable!("no failure table for {self:?}"),
            (Self::TrimbleConnect | Self::AutodeskAps, Class::ServerError) => {
                (ResponseTemplate::new(503), 503, "HTTP 503")
            }
            (Self::TrimbleAg, Class::ServerError) => (
                ResponseTemplate::new(500).set_body_raw("Internal Server Error", "text/plain"),
                500,
                "HTTP 500",
            ),
            (_, Class::ServerError) => (
                ResponseTemplate::new(502)
                    .set_body_raw("<html><body>Bad Gateway</body></html>", "text/html"),
                502,
                "HTTP 502",
            ),
            // Cut inside the token's value: the event must still not show it.
            (Self::TrimbleConnect, Class::Malformed) => (
                ResponseTemplate::new(200)
                    .set_body_raw(r#"{"expires_in":3600,"token":"canary-tc-cut"#, "application/json"),
                200,
                "truncated JSON",
            ),
            (Self::AutodeskAps, Class::Malformed) => (
                ResponseTemplate::new(200).set_body_raw(
                    r#"{"token_type":"Bearer","access_token":"canary-aps-cut"#,
                    "application/json",
                ),
                200,
                "truncated JSON",
            ),
            (_, Class::Malformed) => (
                ResponseTemplate::new(200)
                    .set_body_raw("<html><body>Service Unavailable</body></html>", "text/html"),
                200,
                "not JSON",
            ),
            (_, Class::Timeout) => (self.answer(99).set_delay(SLOW), 0, "did not answer within"),
        };
        Injection {
            step,
            path,
            answer,
            status,
            hint: hint.to_owned(),
        }
    }
}

// ------------------------------------------------------------------ the gateway

/// A fake vendor and a gateway whose one credential points at it.
struct Rig {
    plugin: Plugin,
    fake: MockServer,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(plugin: Plugin, fake: MockServer, limits: UpstreamLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("{FAST_BACKOFF}{}", plugin.credential(&fake.uri()));
        let gw = Gateway::start_with(
            dir.path(),
            &config,
            StartOptions {
                upstream_limits: limits,
                ..Default::default()
            },
        )
        .await;
        Self {
            plugin,
            fake,
            gw,
            _dir: dir,
        }
    }

    async fn client(&self) -> TokenServiceClient<Channel> {
        self.gw.client().await
    }

    async fn get_token(
        &self,
        c: &mut TokenServiceClient<Channel>,
        force_refresh: bool,
    ) -> Result<GetTokenResponse, Status> {
        let req = GetTokenRequest {
            force_refresh,
            ..get_token_request(TENANT, self.plugin.id(), &[])
        };
        c.get_token(req).await.map(tonic::Response::into_inner)
    }

    /// The credential's events of these kinds (all with none), oldest first.
    async fn events(&self, c: &mut TokenServiceClient<Channel>, kinds: &[EventKind]) -> Vec<Event> {
        let mut events = c
            .list_events(ListEventsRequest {
                tenant: TENANT.into(),
                credential_id: self.plugin.id().into(),
                kinds: kinds.iter().map(|k| *k as i32).collect(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("ListEvents")
            .into_inner()
            .events;
        events.reverse();
        events
    }

    async fn received(&self) -> Vec<Request> {
        self.fake
            .received_requests()
            .await
            .expect("request recording is on")
    }

    /// The fake received exactly these requests, in this order.
    async fn assert_received(&self, wants: &[Want]) {
        let got = self.received().await;
        let shown: Vec<String> = got
            .iter()
            .map(|r| format!("{} {}", r.method, r.url.path()))
            .collect();
        assert_eq!(
            got.len(),
            wants.len(),
            "{:?}: the fake received {shown:?}, want {:?}",
            self.plugin,
            wants
                .iter()
                .map(|w| format!("{} {}", w.method, w.path))
                .collect::<Vec<_>>()
        );
        for (i, (req, want)) in got.iter().zip(wants).enumerate() {
            assert_request(req, want, i);
        }
    }

    /// No canary anywhere in the credential's events nor in its API view.
    async fn assert_clean(&self, c: &mut TokenServiceClient<Channel>) {
        let all = self.events(c, &[]).await;
        assert!(!all.is_empty());
        assert_no_canary(&format!("{all:?}"), "the events");
        let cred = self
            .gw
            .admin()
            .await
            .get_credential(GetCredentialRequest {
                tenant: TENANT.into(),
                credential_id: self.plugin.id().into(),
            })
            .await
            .expect("GetCredential")
            .into_inner();
        assert_no_canary(&format!("{cred:?}"), "GetCredential");
    }
}

// ------------------------------------------------------------------ the lifecycle

/// GetToken, cache hit, two forced refreshes, Revoke (upstream), a fetch after it, and the
/// events of it all.
async fn lifecycle(plugin: Plugin) {
    let fake = MockServer::start().await;
    plugin.mount(&fake, 4).await;
    let rig = Rig::start(plugin, fake, UpstreamLimits::default()).await;
    let uri = rig.fake.uri();
    let mut c = rig.client().await;
    let mut wants: Vec<Want> = Vec::new();

    let first = rig.get_token(&mut c, false).await.expect("GetToken");
    assert_eq!(first.access_token, plugin.access_token(1));
    assert_eq!(first.token_type, "Bearer");
    plugin.check_first_token(&first);
    wants.extend(plugin.fetch_wants(1));
    rig.assert_received(&wants).await;

    let hit = rig.get_token(&mut c, false).await.expect("cached GetToken");
    assert_eq!(hit.access_token, first.access_token);
    rig.assert_received(&wants).await;

    for n in 2..=3 {
        let t = rig.get_token(&mut c, true).await.expect("forced GetToken");
        assert_eq!(t.access_token, plugin.access_token(n), "force_refresh #{n}");
        wants.extend(plugin.fetch_wants(n));
        rig.assert_received(&wants).await;
    }
    let hit = rig.get_token(&mut c, false).await.expect("cached GetToken");
    assert_eq!(hit.access_token, plugin.access_token(3));
    rig.assert_received(&wants).await;

    let revoked = c
        .revoke(RevokeRequest {
            tenant: TENANT.into(),
            credential_id: plugin.id().into(),
            scopes: vec![],
            upstream: true,
        })
        .await
        .expect("Revoke")
        .into_inner();
    assert_eq!(revoked.dropped, 1);
    let revoke_want = plugin.revoke_want(3);
    assert_eq!(
        revoked.upstream_revoked,
        u32::from(revoke_want.is_some()),
        "{plugin:?}: upstream_revoked"
    );
    wants.extend(revoke_want.clone());
    rig.assert_received(&wants).await;
    let revoke_events = rig.events(&mut c, &[EventKind::Revoked]).await;
    assert_eq!(revoke_events.len(), 1);
    let message = &revoke_events[0].message;
    if revoke_want.is_some() {
        assert!(message.contains("revoked 1 upstream"), "{message}");
    } else {
        assert!(
            message.contains("revoked 0 upstream")
                && message.contains(&format!(
                    "provider `{}` does not support revocation",
                    plugin.kind()
                )),
            "{message}"
        );
    }

    // The dropped token is not served again.
    let after = rig
        .get_token(&mut c, false)
        .await
        .expect("GetToken after Revoke");
    assert_eq!(after.access_token, plugin.access_token(4));
    wants.extend(plugin.fetch_wants(4));
    rig.assert_received(&wants).await;

    let upstream = rig.events(&mut c, &[EventKind::UpstreamCall]).await;
    let with_status: Vec<(Want, u32)> = wants.iter().cloned().map(|w| (w, 200)).collect();
    assert_upstream_events(&upstream, &with_status, &uri);
    assert_eq!(rig.events(&mut c, &[EventKind::TokenIssued]).await.len(), 4);
    let legacy = rig.events(&mut c, &[EventKind::LegacyGrant]).await;
    if plugin == Plugin::LsegRdp {
        // Only the password sign-on is legacy; the refresh grant is not.
        assert_eq!(legacy.len(), 1, "{legacy:?}");
        assert!(legacy[0].message.contains("password"), "{legacy:?}");
    } else {
        assert!(legacy.is_empty(), "{legacy:?}");
    }
    let trouble = rig
        .events(&mut c, &[EventKind::TokenFailed, EventKind::StatusChanged])
        .await;
    assert!(trouble.is_empty(), "{trouble:?}");
    rig.assert_clean(&mut c).await;
}

// ------------------------------------------------------------------ the failure classes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// The vendor refuses the credentials in its own error shape.
    Rejected,
    ServerError,
    /// A 200 whose body is HTML or JSON cut short.
    Malformed,
    /// The vendor answers after the gateway's upstream timeout.
    Timeout,
}

/// A failure planted at one step of the plugin's flow.
struct Injection {
    step: &'static str,
    path: String,
    answer: ResponseTemplate,
    /// The status its upstream event records (0: no response).
    status: u32,
    /// What the gRPC error message must say.
    hint: String,
}

async fn failure(plugin: Plugin, class: Class) {
    failure_with(plugin, class, plugin.injection(class)).await;
}

/// The failing GetToken's status, message and events; then, for a transient failure, that
/// the credential stays usable (the retry after the backoff succeeds), and for a rejection,
/// that it is INVALID and not retried.
async fn failure_with(plugin: Plugin, class: Class, inj: Injection) {
    let fake = MockServer::start().await;
    let planted = Mock::given(method("POST"))
        .and(path(inj.path.as_str()))
        .respond_with(inj.answer);
    let planted = if class == Class::Rejected {
        planted
    } else {
        planted.up_to_n_times(1)
    };
    planted.mount(&fake).await;
    plugin.mount(&fake, 1).await;
    let limits = if class == Class::Timeout {
        UpstreamLimits {
            total_timeout: SHORT_TIMEOUT,
            ..Default::default()
        }
    } else {
        UpstreamLimits::default()
    };
    let rig = Rig::start(plugin, fake, limits).await;
    let uri = rig.fake.uri();
    let mut c = rig.client().await;

    let e = rig
        .get_token(&mut c, false)
        .await
        .expect_err("the vendor failure must fail GetToken");
    let code = match class {
        Class::Rejected => Code::FailedPrecondition,
        _ => Code::Unavailable,
    };
    assert_eq!(e.code(), code, "{plugin:?} {class:?}: {e:?}");
    assert!(
        e.message().contains(inj.step) && e.message().contains(&inj.hint),
        "{plugin:?} {class:?}: the message names the step `{}` and says `{}`: {}",
        inj.step,
        inj.hint,
        e.message()
    );
    assert_no_canary(e.message(), "the gRPC error");

    // The failing fetch sent the documented requests up to the failing step, and each is an
    // event; the failing one with the vendor's status (0 when no answer came).
    let chain = plugin.fetch_wants(1);
    let upto = chain
        .iter()
        .position(|w| w.step == inj.step)
        .expect("the injected step is part of the flow")
        + 1;
    let mut wants: Vec<Want> = chain[..upto].to_vec();
    let mut statuses: Vec<u32> = vec![200; upto - 1];
    statuses.push(inj.status);
    rig.assert_received(&wants).await;
    let upstream = rig.events(&mut c, &[EventKind::UpstreamCall]).await;
    let with_status: Vec<(Want, u32)> = wants.iter().cloned().zip(statuses.clone()).collect();
    assert_upstream_events(&upstream, &with_status, &uri);
    if class == Class::Timeout {
        let error = &upstream.last().unwrap().http.as_ref().unwrap().error;
        assert!(error.contains("did not answer within"), "{error}");
    }

    if class == Class::Rejected {
        let status_changes = rig.events(&mut c, &[EventKind::StatusChanged]).await;
        assert_eq!(status_changes.len(), 1, "{status_changes:?}");
        let m = &status_changes[0].message;
        assert!(m.contains("INVALID") && m.contains(&inj.hint), "{m}");
        // Not retried: the credential is INVALID until its secrets change.
        let again = rig
            .get_token(&mut c, false)
            .await
            .expect_err("an INVALID credential gets no token");
        assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
        assert!(again.message().contains(&inj.hint), "{}", again.message());
        assert_no_canary(again.message(), "the gRPC error");
        rig.assert_received(&wants).await;
        let cred = rig
            .gw
            .admin()
            .await
            .get_credential(GetCredentialRequest {
                tenant: TENANT.into(),
                credential_id: plugin.id().into(),
            })
            .await
            .expect("GetCredential")
            .into_inner();
        assert_eq!(cred.status, CredentialStatus::Invalid as i32);
        assert!(cred.last_error.contains(&inj.hint), "{}", cred.last_error);
    } else {
        use tonic_types::StatusExt;
        let retry = e
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay);
        assert!(
            retry.is_some_and(|d| d <= Duration::from_secs(1)),
            "RetryInfo within the configured backoff: {retry:?}"
        );
        let failed = rig.events(&mut c, &[EventKind::TokenFailed]).await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].message.contains(inj.step),
            "{}",
            failed[0].message
        );
        assert!(rig
            .events(&mut c, &[EventKind::StatusChanged])
            .await
            .is_empty());
        // Transient: after the backoff the next GetToken fetches again and succeeds.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = rig
            .get_token(&mut c, false)
            .await
            .expect("a transient failure leaves the credential usable");
        assert_eq!(t.access_token, plugin.access_token(1));
        wants.extend(chain.iter().cloned());
        statuses.extend(vec![200; chain.len()]);
        rig.assert_received(&wants).await;
        let upstream = rig.events(&mut c, &[EventKind::UpstreamCall]).await;
        let with_status: Vec<(Want, u32)> = wants.iter().cloned().zip(statuses).collect();
        assert_upstream_events(&upstream, &with_status, &uri);
    }
    rig.assert_clean(&mut c).await;
}

/// RDP refresh tokens die with the session: a refused one makes the plugin sign on again with
/// the password instead of failing the credential, and the gateway keeps the new session.
async fn lseg_dead_refresh_token_signs_on_again() {
    let plugin = Plugin::LsegRdp;
    let fake = MockServer::start().await;
    let answers = [
        plugin.answer(1),
        ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_grant", "error_description": "Invalid Refresh Token",
        })),
        plugin.answer(2),
        plugin.answer(3),
    ];
    for answer in answers {
        Mock::given(method("POST"))
            .and(path(RDP_TOKEN))
            .respond_with(answer)
            .up_to_n_times(1)
            .mount(&fake)
            .await;
    }
    let rig = Rig::start(plugin, fake, UpstreamLimits::default()).await;
    let uri = rig.fake.uri();
    let mut c = rig.client().await;
    let first = rig.get_token(&mut c, false).await.expect("sign-on");
    assert_eq!(first.access_token, plugin.access_token(1));
    let second = rig.get_token(&mut c, true).await.expect("signed on again");
    assert_eq!(second.access_token, plugin.access_token(2));
    // The next refresh presents the new session's refresh token.
    let third = rig.get_token(&mut c, true).await.expect("refresh");
    assert_eq!(third.access_token, plugin.access_token(3));

    let sign_on = plugin.fetch_wants(1);
    let mut wants: Vec<(Want, u32)> = Vec::new();
    wants.extend(sign_on.iter().cloned().map(|w| (w, 200)));
    wants.extend(plugin.fetch_wants(2).into_iter().map(|w| (w, 400)));
    wants.extend(sign_on.iter().cloned().map(|w| (w, 200)));
    wants.extend(plugin.fetch_wants(3).into_iter().map(|w| (w, 200)));
    let plain: Vec<Want> = wants.iter().map(|(w, _)| w.clone()).collect();
    rig.assert_received(&plain).await;
    let upstream = rig.events(&mut c, &[EventKind::UpstreamCall]).await;
    assert_upstream_events(&upstream, &wants, &uri);
    assert_eq!(rig.events(&mut c, &[EventKind::LegacyGrant]).await.len(), 2);
    let trouble = rig
        .events(&mut c, &[EventKind::TokenFailed, EventKind::StatusChanged])
        .await;
    assert!(trouble.is_empty(), "{trouble:?}");
    rig.assert_clean(&mut c).await;
}

// ------------------------------------------------------------------ the tests

macro_rules! vendor_tests {
    ($($name:ident => $run:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                bounded($run).await;
            }
        )*
    };
}

vendor_tests! {
    trimble_connect_exchange_cache_refresh_revoke_and_events => lifecycle(Plugin::TrimbleConnect);
    trimble_ag_client_credentials_cache_refresh_revoke_and_events => lifecycle(Plugin::TrimbleAg);
    trimble_ag_refresh_grant_rotates_through_grpc => lifecycle(Plugin::TrimbleAgRefresh);
    autodesk_aps_two_legged_cache_refresh_revoke_and_events => lifecycle(Plugin::AutodeskAps);
    autodesk_aps_refresh_grant_rotates_and_revokes_upstream => lifecycle(Plugin::AutodeskApsRefresh);
    lseg_rdp_password_then_refresh_grant_with_legacy_event => lifecycle(Plugin::LsegRdp);

    trimble_connect_rejected_credentials => failure(Plugin::TrimbleConnect, Class::Rejected);
    trimble_connect_server_error => failure(Plugin::TrimbleConnect, Class::ServerError);
    trimble_connect_malformed_body => failure(Plugin::TrimbleConnect, Class::Malformed);
    trimble_connect_timeout => failure(Plugin::TrimbleConnect, Class::Timeout);
    trimble_ag_rejected_credentials => failure(Plugin::TrimbleAg, Class::Rejected);
    trimble_ag_server_error => failure(Plugin::TrimbleAg, Class::ServerError);
    trimble_ag_malformed_body => failure(Plugin::TrimbleAg, Class::Malformed);
    trimble_ag_timeout => failure(Plugin::TrimbleAg, Class::Timeout);
    autodesk_aps_rejected_credentials => failure(Plugin::AutodeskAps, Class::Rejected);
    autodesk_aps_server_error => failure(Plugin::AutodeskAps, Class::ServerError);
    autodesk_aps_malformed_body => failure(Plugin::AutodeskAps, Class::Malformed);
    autodesk_aps_timeout => failure(Plugin::AutodeskAps, Class::Timeout);
    lseg_rdp_rejected_credentials => failure(Plugin::LsegRdp, Class::Rejected);
    lseg_rdp_server_error => failure(Plugin::LsegRdp, Class::ServerError);
    lseg_rdp_malformed_body => failure(Plugin::LsegRdp, Class::Malformed);
    lseg_rdp_timeout => failure(Plugin::LsegRdp, Class::Timeout);

    lseg_rdp_dead_refresh_token_signs_on_again_without_invalidating => lseg_dead_refresh_token_signs_on_again();

    // Connect is no OAuth server: its refusal of the id_token comes in its own shape.
    trimble_connect_exchange_rejected_in_connect_error_shape => failure_with(
        Plugin::TrimbleConnect,
        Class::Rejected,
        Injection {
            step: "connect_exchange",
            path: Plugin::TrimbleConnect.token_path(),
            answer: ResponseTemplate::new(401).set_body_json(json!({
                "errorcode": "INVALID_TOKEN", "message": "The provided JWT is not valid",
            })),
            status: 401,
            hint: "INVALID_TOKEN".into(),
        },
    );
}
