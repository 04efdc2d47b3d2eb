//! Service-mesh token injection end to end: Envoy's ext_authz `Check` through the real
//! gRPC port (a tonic client of `envoy-types` standing in for Envoy), against a wiremock
//! token endpoint. The OK reply's headers and metadata, every denial, the deadline → 503,
//! the caller checks of the one auth layer, and that no token leaks into metadata or
//! denied bodies.

// The deadline scenario measures how long a Check really took.
#![allow(clippy::disallowed_methods)]

mod common;

use authgate::proto::v1::token_service_client::TokenServiceClient;
use authgate::proto::v1::ListEventsRequest;
use common::mesh::*;
use common::*;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds the caller's API key, as Envoy's `grpc_service.initial_metadata` does.
type AddKey =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = AuthorizationClient<InterceptedService<Channel, AddKey>>;

async fn client(gw: &Gateway, key: Option<&'static str>) -> Client {
    let channel = Channel::from_shared(format!("http://{}", gw.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let add_key: AddKey = Box::new(move |mut r| {
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Ok(r)
    });
    AuthorizationClient::with_interceptor(channel, add_key)
}

/// A CheckRequest as Envoy sends it: the downstream request and the route's extensions.
/// The downstream client's own `authorization` header is in it, and must not matter.
fn check(host: &str, path: &str, ext: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = [
        ("authorization".to_owned(), "Bearer client-sent".to_owned()),
        ("x-authgate-tenant".to_owned(), "beta".to_owned()),
    ]
    .into();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: host.into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// The same CheckRequest from a downstream workload whose mTLS Envoy terminated.
fn check_from(principal: &str, ext: &[(&str, &str)]) -> CheckRequest {
    let mut req = check("svc.example.com", "/", ext);
    if let Some(a) = req.attributes.as_mut() {
        a.source = Some(Peer {
            principal: principal.into(),
            ..Default::default()
        });
    }
    req
}

fn ext(credential: &str) -> Vec<(&'static str, String)> {
    vec![
        ("tenant", "acme".into()),
        ("credential_id", credential.into()),
    ]
}

async fn call(c: &mut Client, req: CheckRequest, timeout: Option<Duration>) -> CheckResponse {
    let mut r = tonic::Request::new(req);
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    c.check(r)
        .await
        .expect("Check itself succeeds")
        .into_inner()
}

fn headers(h: &[HeaderValueOption]) -> HashMap<String, String> {
    h.iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn metadata(r: &CheckResponse, key: &str) -> String {
    match r
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("metadata {key}: {other:?}"),
    }
}

/// The denial, after checking it has the shape Envoy and the client need and no token.
fn denied(
    r: &CheckResponse,
    status: i32,
    grpc_code: i32,
) -> (DeniedHttpResponse, serde_json::Value) {
    assert_eq!(r.status.as_ref().unwrap().code, grpc_code, "{:?}", r.status);
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response.clone() else {
        panic!("expected a denial, got {:?}", r.status)
    };
    assert_eq!(d.status.as_ref().unwrap().code, status, "{}", d.body);
    assert_eq!(headers(&d.headers)["content-type"], "application/json");
    for t in TOKENS {
        assert!(!d.body.contains(t), "token in body: {}", d.body);
    }
    assert!(r.dynamic_metadata.is_none());
    let body = serde_json::from_str(&d.body).expect("JSON body");
    (d, body)
}

fn str_ext<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

#[tokio::test]
async fn ok_replies_inject_the_token_and_record_the_caller() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let mut c = client(&gw, Some(ENVOY_KEY)).await;

    let e = ext("idp");
    let r = call(&mut c, check("svc.example.com", "/a", &str_ext(&e)), None).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected OK: {:?}", r.status)
    };
    assert_eq!(
        headers(&ok.headers)["authorization"],
        "Bearer tok-idp-canary"
    );
    assert_eq!(ok.headers[0].append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
    assert_eq!(metadata(&r, "credential_id"), "idp");
    assert_eq!(metadata(&r, "cache"), "miss");
    assert!(!metadata(&r, "token_expires_at").is_empty());
    let again = call(&mut c, check("svc.example.com", "/b", &str_ext(&e)), None).await;
    assert_eq!(metadata(&again, "cache"), "hit");
    for t in TOKENS {
        assert!(!format!("{:?}", r.dynamic_metadata).contains(t));
    }

    // [[mesh.routes]]: no extensions, matched on host and path prefix.
    let r = call(
        &mut c,
        check("keyed.example.com", "/v1/items?x=1", &[]),
        None,
    )
    .await;
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected OK: {:?}", r.status)
    };
    assert_eq!(headers(&ok.headers)["x-api-key"], "tok-key-canary");
    assert_eq!(ok.headers_to_remove, vec!["x-client-key".to_owned()]);
    assert_eq!(metadata(&r, "credential_id"), "key");

    // The upstream call the Check caused names the proxy's caller.
    let mut auditor = TokenServiceClient::with_interceptor(
        Channel::from_shared(format!("http://{}", gw.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {AUDITOR_KEY}").parse().unwrap(),
            );
            Ok(r)
        },
    );
    let events = auditor
        .list_events(ListEventsRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .any(|e| e.caller.contains("envoy") && e.caller.contains("tenant acme")),
        "{:?}",
        events.iter().map(|e| &e.caller).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn every_failure_is_an_answer_the_client_can_act_on() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let mut c = client(&gw, Some(ENVOY_KEY)).await;

    let r = call(&mut c, check("nowhere.example.com", "/", &[]), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "no_route");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("[[mesh.routes]]"));

    let r = call(&mut c, check("h", "/", &str_ext(&ext("nope"))), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "unknown_credential");
    assert!(body["message"].as_str().unwrap().contains("nope"));

    // The tenant comes from the route, so a forbidden one is refused whatever headers the
    // downstream client sent; an unknown tenant gets the same answer.
    for tenant in ["beta", "ghost"] {
        let e = [("tenant", tenant), ("credential_id", "beta")];
        let r = call(&mut c, check("h", "/", &e), None).await;
        let (_, body) = denied(&r, 403, 7);
        assert_eq!(body["error"], "caller_not_allowed", "{tenant}");
    }

    let r = call(&mut c, check("h", "/", &str_ext(&ext("rejected"))), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert!(
        body["error"] == "credential_not_usable" || body["error"] == "credential_misconfigured",
        "{body}"
    );
    let r = call(&mut c, check("h", "/", &str_ext(&ext("rejected"))), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "credential_not_usable", "{body}");

    let r = call(&mut c, check("h", "/", &str_ext(&ext("down"))), None).await;
    let (d, body) = denied(&r, 503, 14);
    assert_eq!(body["error"], "unavailable");
    let retry: u64 = headers(&d.headers)["retry-after"].parse().unwrap();
    assert!(retry >= 1);

    let bad = [
        ("tenant", "acme"),
        ("credential_id", "idp"),
        ("format", "Bearer"),
    ];
    let r = call(&mut c, check("h", "/", &bad), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "bad_route");
    assert!(body["message"].as_str().unwrap().contains("format"));
}

#[tokio::test]
async fn the_proxy_deadline_is_answered_with_503_and_the_fetch_is_cached() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let mut c = client(&gw, Some(ENVOY_KEY)).await;
    let e = ext("slow");

    // Envoy's default is 200 ms; a loaded test machine needs more room, the rule is the same.
    let timeout = Duration::from_millis(600);
    let t0 = Instant::now();
    let r = call(&mut c, check("h", "/", &str_ext(&e)), Some(timeout)).await;
    let took = t0.elapsed();
    assert!(took < timeout, "answered after {took:?}");
    let (d, body) = denied(&r, 503, 14);
    assert_eq!(body["error"], "unavailable");
    assert_eq!(headers(&d.headers)["retry-after"], "1");

    // The fetch went on; once it lands, the next Check is a cache hit with no new fetch.
    tokio::time::sleep(SLOW_FETCH).await;
    let r = call(&mut c, check("h", "/", &str_ext(&e)), Some(timeout)).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);
    assert_eq!(metadata(&r, "cache"), "hit");
    let fetches = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|q| q.url.path() == "/token/slow")
        .count();
    assert_eq!(fetches, 1);
}

#[tokio::test]
async fn the_auth_layer_identifies_the_proxy_and_checks_its_role() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let e = ext("idp");

    let mut anonymous = client(&gw, None).await;
    let s = anonymous
        .check(check("h", "/", &str_ext(&e)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");

    let mut auditor = client(&gw, Some(AUDITOR_KEY)).await;
    let s = auditor
        .check(check("h", "/", &str_ext(&e)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

/// The callers of the upstream calls made for a tenant's credential, newest first.
async fn event_callers(gw: &Gateway, tenant: &str, credential: &str) -> Vec<String> {
    let channel = Channel::from_shared(format!("http://{}", gw.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auditor = TokenServiceClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {AUDITOR_KEY}").parse().unwrap(),
        );
        Ok(r)
    });
    let req = ListEventsRequest {
        tenant: tenant.into(),
        credential_id: credential.into(),
        ..Default::default()
    };
    let events = auditor.list_events(req).await.unwrap().into_inner().events;
    events.into_iter().map(|e| e.caller).collect()
}

#[tokio::test]
async fn a_trusted_proxy_is_authorized_as_the_workload_it_authenticated() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let mut trusted = client(&gw, Some(TRUSTED_KEY)).await;

    // billing may use acme: allowed, and the events name billing, through the proxy.
    let acme = [("tenant", "acme"), ("credential_id", "idp")];
    let r = call(&mut trusted, check_from(BILLING_ID, &acme), None).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);
    let callers = event_callers(&gw, "acme", "idp").await;
    assert!(
        callers
            .iter()
            .any(|c| c.starts_with("billing (mTLS terminated by trusted proxy mesh-envoy")),
        "{callers:?}"
    );

    // reporting may use beta only, whatever the proxy itself may use.
    let r = call(&mut trusted, check_from(REPORTING_ID, &acme), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "caller_not_allowed", "{body}");
    assert!(body["message"].as_str().unwrap().contains("reporting"));
    let beta = [("tenant", "beta"), ("credential_id", "beta")];
    let r = call(&mut trusted, check_from(REPORTING_ID, &beta), None).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);

    // A workload without the token role, an unknown one, and none at all.
    let r = call(&mut trusted, check_from(AUDIT_ID, &acme), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "caller_not_allowed", "{body}");
    for principal in ["spiffe://example.org/ns/ghost/sa/x", ""] {
        let r = call(&mut trusted, check_from(principal, &acme), None).await;
        let (_, body) = denied(&r, 403, 7);
        assert_eq!(body["error"], "unknown_workload", "{principal:?}: {body}");
    }
}

#[tokio::test]
async fn a_proxy_that_is_not_trusted_is_authorized_as_itself() {
    let server = provider().await;
    let gw = gateway(&server).await;
    let mut envoy = client(&gw, Some(ENVOY_KEY)).await;
    // The principal names a workload allowed beta; the proxy (acme only) is what counts.
    let beta = [("tenant", "beta"), ("credential_id", "beta")];
    let r = call(&mut envoy, check_from(REPORTING_ID, &beta), None).await;
    let (_, body) = denied(&r, 403, 7);
    assert_eq!(body["error"], "caller_not_allowed", "{body}");
    let acme = [("tenant", "acme"), ("credential_id", "idp")];
    let r = call(&mut envoy, check_from(REPORTING_ID, &acme), None).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);
    let callers = event_callers(&gw, "acme", "idp").await;
    // Events no caller caused (e.g. the credential loaded at start) name none.
    assert!(
        callers
            .iter()
            .filter(|c| !c.is_empty())
            .all(|c| c.starts_with("envoy (api key")),
        "{callers:?}"
    );
}
