//! The RFC 6749 token-response parser: any status, content type and body is classified
//! without a panic, and the access token never appears in the error text.
#![no_main]

use authgate_plugin_sdk::oauth::parse_token_response;
use authgate_plugin_sdk::{
    Egress, MemorySink, Redactor, UpstreamCall, UpstreamClient, UpstreamLimits, UpstreamResponse,
};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn call() -> &'static UpstreamCall {
    static CALL: OnceLock<UpstreamCall> = OnceLock::new();
    CALL.get_or_init(|| {
        UpstreamCall::new(
            UpstreamClient::new(UpstreamLimits::default()).unwrap(),
            Arc::new(MemorySink::default()),
            Redactor::new([3; 32]),
            Egress::Trusted,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = 100 + u16::from_be_bytes([data[0], data[1]]) % 500;
    let content_type = match data[2] % 4 {
        0 => "application/json",
        1 => "application/x-www-form-urlencoded",
        2 => "text/html",
        _ => "application/json; charset=utf-8",
    };
    let resp = UpstreamResponse {
        status,
        headers: vec![("content-type".into(), content_type.into())],
        body: bytes::Bytes::copy_from_slice(&data[3..]),
    };
    match parse_token_response("token", &resp, call()) {
        Ok(t) => assert!(!t.access_token.expose().is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
