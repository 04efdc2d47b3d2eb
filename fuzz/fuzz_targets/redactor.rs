//! The redactor: a known secret never survives into an event body, whatever the body and
//! its content type, also when echoed percent-encoded or JSON-escaped.
#![no_main]

use authgate_plugin_sdk::{Redactor, Secret};
use libfuzzer_sys::fuzz_target;

/// Characters a digest (`hmac-sha256:<hex>`) is made of: a secret that starts or ends with
/// one could be re-formed across a replacement's edge, which is not a leak of the input.
const DIGEST_CHARS: &str = "0123456789abcdefhms-:%A";

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize).min(rest.len());
    let (secret, body) = rest.split_at(split);
    let Ok(secret) = std::str::from_utf8(secret) else {
        return;
    };
    let edge = |c: Option<char>| c.is_none_or(|c| DIGEST_CHARS.contains(c));
    if secret.chars().count() < 6
        || edge(secret.chars().next())
        || edge(secret.chars().next_back())
        || !secret.chars().any(char::is_alphabetic)
    {
        return;
    }
    let r = Redactor::new([9; 32]);
    r.learn(&Secret::from(secret));
    for ct in [
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
    ] {
        let out = r.redact_body(ct, body, usize::MAX);
        assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
    }
    let text = String::from_utf8_lossy(body);
    assert!(!r.scrub(&text).contains(secret));
    let _ = r.redact_header("location", &text);
});
