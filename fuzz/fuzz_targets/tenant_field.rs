//! The protobuf field reader that finds a request's tenant before any decoder runs: never
//! panics, and agrees with prost whenever both accept a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fn decode_tenant(msg: &[u8]) -> Option<String> {
    authgate::proto::v1::GetTokenRequest::decode(msg)
        .ok()
        .map(|m| m.tenant)
}

fuzz_target!(|msg: &[u8]| {
    let mut frame = vec![0];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    let ours = authgate::api::auth::tenant_of_frame(&frame);
    if let (Ok(t), Some(theirs)) = (&ours, decode_tenant(msg)) {
        assert_eq!(t, &theirs);
    }
    // Raw input as a frame too (bad lengths, compression flag).
    let _ = authgate::api::auth::tenant_of_frame(msg);
});
