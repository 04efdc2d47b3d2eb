//! Turns secrets into stable digests before anything is written to an event or a message.
//!
//! Two nets, both always applied: values of fields whose *name* says they are secret
//! (`client_secret`, `refresh_token`, `password`, ...) are replaced wherever they appear in a
//! form, JSON or query string; and every *known* secret value (the credential's own secrets
//! plus every token seen in a response during the call) is replaced wherever it appears as a
//! substring, which also covers HTML error pages and echoed headers. The replacement is
//! `hmac-sha256:<digest>`, keyed, so equal values can be correlated across events without
//! the digest being reversible by guessing.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use std::sync::Arc;

/// Shortest known secret that is scrubbed wherever it occurs; a shorter one (a 4-digit PIN,
/// a short password) is scrubbed where it stands as a whole word, so it is still caught when
/// echoed but does not mangle every word that happens to contain it.
const MIN_SCRUB_LEN: usize = 6;

/// Redacts secrets out of text bound for events, logs and error messages.
#[derive(Clone)]
pub struct Redactor {
    key: Arc<[u8; 32]>,
    known: Arc<Mutex<Vec<Secret>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

/// True for field names that carry secrets in OAuth and vendor wire formats.
pub fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n == "token_type" || n == "tokentype" {
        return false;
    }
    n == "code"
        // RFC 8628: the device code is the polling client's secret (the user code is shown
        // to the user, so it is not one).
        || n == "device_code"
        || n == "token"
        || n == "jwt"
        || n.ends_with("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("passwd")
        || n.contains("assertion")
        || n.contains("verifier")
        || n.contains("api_key")
        || n.contains("apikey")
        || n.contains("private_key")
        // `key`, `access_key`, `subscription-key`, `x-functions-key`: vendors name API keys
        // every way; a harmless non-secret `*key` redacted is the cheaper mistake.
        || n.ends_with("key")
        || n.contains("signature")
}

/// True for HTTP headers whose value is a credential.
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "x-api-key"
    ) || is_secret_field(&n)
}

impl Redactor {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key: Arc::new(key),
            known: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A redactor with the same key and its own, empty set of known secrets.
    pub fn fork(&self) -> Self {
        Self {
            key: self.key.clone(),
            known: Arc::new(Mutex::new(self.known_secrets())),
        }
    }

    /// Remember a secret value so it is scrubbed wherever it appears.
    pub fn learn(&self, secret: &Secret) {
        if secret.is_empty() {
            return;
        }
        let mut known = self.known.lock();
        if !known.iter().any(|k| k == secret) {
            known.push(secret.clone());
            // Longest first, so a secret that contains another is replaced whole.
            known.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        }
    }

    fn known_secrets(&self) -> Vec<Secret> {
        self.known.lock().clone()
    }

    /// `hmac-sha256:<first 16 bytes, hex>` of the value.
    pub fn digest(&self, value: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
            .expect("HMAC-SHA256 accepts a 32-byte key");
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(12 + 32);
        s.push_str("hmac-sha256:");
        for b in &out[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Replaces every known secret occurring in `text`, also where a provider echoed it
    /// percent-encoded or JSON-escaped.
    pub fn scrub(&self, text: &str) -> String {
        let known = self.known.lock();
        let mut out = text.to_owned();
        for secret in known.iter() {
            let raw = secret.expose();
            let mut digest = None;
            for form in encoded_forms(raw) {
                if !out.contains(form.as_str()) {
                    continue;
                }
                let digest = digest.get_or_insert_with(|| self.digest(raw));
                out = if form.len() >= MIN_SCRUB_LEN {
                    out.replace(form.as_str(), digest)
                } else {
                    replace_words(&out, &form, digest)
                };
            }
        }
        out
    }

    fn redact_value(&self, name: &str, value: &str) -> String {
        if is_secret_field(name) && !value.is_empty() {
            self.learn(&Secret::from(value));
            self.digest(value)
        } else {
            self.scrub(value)
        }
    }

    /// An `application/x-www-form-urlencoded` body or query string, redacted.
    pub fn redact_form(&self, pairs: &[(String, String)]) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k, &self.redact_value(k, v));
        }
        ser.finish()
    }

    /// A JSON document with secret-named fields and known secrets replaced.
    pub fn redact_json(&self, value: &Value) -> Value {
        self.redact_json_named(None, value)
    }

    fn redact_json_named(&self, name: Option<&str>, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.redact_json_named(Some(k), v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.redact_json_named(name, v))
                    .collect(),
            ),
            Value::String(s) => Value::String(match name {
                Some(n) => self.redact_value(n, s),
                None => self.scrub(s),
            }),
            other => other.clone(),
        }
    }

    /// A header value: credentials keep their scheme (`Basic`, `Bearer`) so events stay
    /// readable, the rest becomes a digest. URLs in `Location` (a redirect may carry a code
    /// or token in its query or fragment) are redacted as URLs.
    pub fn redact_header(&self, name: &str, value: &str) -> String {
        if name.eq_ignore_ascii_case("location") || name.eq_ignore_ascii_case("content-location") {
            return self.redact_url_text(value);
        }
        if !is_secret_header(name) {
            return self.scrub(value);
        }
        match value.split_once(' ') {
            Some((scheme, rest)) if !rest.is_empty() && !scheme.contains('=') => {
                self.learn(&Secret::from(rest));
                format!("{scheme} {}", self.digest(rest))
            }
            _ => {
                self.learn(&Secret::from(value));
                self.digest(value)
            }
        }
    }

    /// A URL with secret query and fragment values replaced (and userinfo dropped): the
    /// implicit grant and some vendors return tokens in the fragment.
    pub fn redact_url(&self, url: &url::Url) -> String {
        let mut u = url.clone();
        let _ = u.set_password(None);
        let _ = u.set_username("");
        if let Some(q) = u.query().map(|q| self.redact_params(q)) {
            u.set_query(if q.is_empty() { None } else { Some(&q) });
        }
        if let Some(f) = u.fragment().map(|f| self.redact_params(f)) {
            u.set_fragment(Some(&f));
        }
        self.scrub(u.as_str())
    }

    /// A URL given as text, possibly relative (a `Location` header).
    fn redact_url_text(&self, text: &str) -> String {
        if let Ok(u) = url::Url::parse(text) {
            return self.redact_url(&u);
        }
        let (head, fragment) = match text.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (text, None),
        };
        let (path, query) = match head.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (head, None),
        };
        let mut out = self.scrub(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(&self.redact_params(q));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(&self.redact_params(f));
        }
        out
    }

    /// `a=1&b=2` with secret-named values replaced; other text scrubbed.
    fn redact_params(&self, params: &str) -> String {
        if !params.contains('=') {
            return self.scrub(params);
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(params.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        self.redact_form(&pairs)
    }

    /// A body of any content type, as text fit for an event, at most `max` bytes.
    pub fn redact_body(&self, content_type: Option<&str>, body: &[u8], max: usize) -> String {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let text = String::from_utf8_lossy(body);
        let redacted = if let Ok(json) = serde_json::from_slice::<Value>(body) {
            self.redact_json(&json).to_string()
        } else if matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
            // JSON that does not parse (truncated, or malformed on purpose): the field-name
            // net still has to hold, so redact string values after secret-named keys.
            self.scrub(&self.redact_broken_json(&text))
        } else if ct.starts_with("application/x-www-form-urlencoded") || looks_like_form(&text) {
            // Form-encoded whatever the label says: providers mislabel token responses.
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            // Scrubbed again whole: a secret with `&` or `=` in it, echoed raw, is split
            // across pairs and re-joined by the serializer.
            self.scrub(&self.redact_form(&pairs))
        } else {
            self.scrub(&text)
        };
        truncate_utf8(redacted, max)
    }
}

impl Redactor {
    /// Replaces the string value after every secret-named key in text that looks like
    /// JSON but does not parse. An unterminated value (a body cut short) is replaced up to
    /// the end.
    fn redact_broken_json(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(q) = rest.find('"') {
            out.push_str(&rest[..=q]);
            rest = &rest[q + 1..];
            let Some(end) = find_string_end(rest) else {
                out.push_str(rest);
                return out;
            };
            let key = &rest[..end];
            out.push_str(key);
            out.push('"');
            rest = &rest[end + 1..];
            let after = rest.trim_start();
            if !is_secret_field(key) || !after.starts_with(':') {
                continue;
            }
            let after_colon = after[1..].trim_start();
            if !after_colon.starts_with('"') {
                continue;
            }
            let skipped = rest.len() - after_colon.len();
            out.push_str(&rest[..skipped + 1]);
            let value_and_more = &after_colon[1..];
            match find_string_end(value_and_more) {
                Some(vend) => {
                    out.push_str(&self.digest(&value_and_more[..vend]));
                    out.push('"');
                    rest = &value_and_more[vend + 1..];
                }
                None => {
                    out.push_str(&self.digest(value_and_more));
                    return out;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The forms in which a provider may echo a secret back: as is, percent-encoded (form and
/// RFC 3986 style, either hex case) and JSON-escaped.
fn encoded_forms(raw: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
    let rfc3986 = form.replace('+', "%20");
    let json = serde_json::to_string(raw).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(raw)
        .to_owned();
    let mut forms = vec![raw.to_owned()];
    for f in [
        lower_hex(&form),
        lower_hex(&rfc3986),
        form,
        rfc3986,
        json.replace('/', "\\/"),
        json,
    ] {
        if !f.is_empty() && !forms.contains(&f) {
            forms.push(f);
        }
    }
    forms
}

/// `%2F` → `%2f`: the same percent-encoding in lower-case hex digits.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// Replaces `needle` where it stands as a whole word (not inside a longer run of letters and
/// digits).
fn replace_words(text: &str, needle: &str, with: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(at) = rest.find(needle) {
        let before = rest[..at].chars().next_back().or(prev);
        let after = rest[at + needle.len()..].chars().next();
        out.push_str(&rest[..at]);
        if is_word(before) || is_word(after) {
            out.push_str(needle);
        } else {
            out.push_str(with);
        }
        prev = needle.chars().next_back();
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

/// A body that is `key=value&key=value` with no whitespace, whatever its content type.
fn looks_like_form(text: &str) -> bool {
    let text = text.trim_end();
    !text.is_empty()
        && !text.contains(char::is_whitespace)
        && text.split('&').all(|pair| {
            pair.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-[]%".contains(&b))
            })
        })
}

/// Index of the closing quote of a JSON string body (after the opening quote).
fn find_string_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `s` cut to at most `max` characters, the cut marked with `…`: for vendor error texts that
/// end up in error messages.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str("…[truncated]");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new([7u8; 32])
    }

    #[test]
    fn form_fields_named_secret_are_digested() {
        let r = r();
        let out = r.redact_form(&[
            ("grant_type".into(), "password".into()),
            ("username".into(), "alice".into()),
            ("password".into(), "canary-pw-1".into()),
        ]);
        assert!(out.contains("grant_type=password"));
        assert!(out.contains("username=alice"));
        assert!(!out.contains("canary-pw-1"));
        assert!(out.contains("hmac-sha256%3A"));
    }

    #[test]
    fn json_nested_and_known_values_are_redacted() {
        let r = r();
        r.learn(&Secret::from("canary-known-xyz"));
        let v: Value = serde_json::json!({
            "access_token": "canary-at", "token_type": "Bearer",
            "nested": {"refreshToken": "canary-rt"},
            "message": "bad secret canary-known-xyz given"
        });
        let out = r.redact_json(&v).to_string();
        for c in ["canary-at", "canary-rt", "canary-known-xyz"] {
            assert!(!out.contains(c), "{c} leaked in {out}");
        }
        assert!(out.contains("\"token_type\":\"Bearer\""));
    }

    #[test]
    fn device_codes_are_secret_and_user_codes_are_not() {
        let r = r();
        let out = r
            .redact_json(&serde_json::json!({"device_code": "canary-dc", "user_code": "WDJB-MJHT"}))
            .to_string();
        assert!(!out.contains("canary-dc"), "{out}");
        assert!(out.contains("WDJB-MJHT"), "{out}");
        let form = r.redact_form(&[("device_code".into(), "canary-dc".into())]);
        assert!(!form.contains("canary-dc"), "{form}");
    }

    #[test]
    fn learned_values_are_scrubbed_from_free_text() {
        let r = r();
        r.redact_json(&serde_json::json!({"id_token": "canary-id-token-abc"}));
        let page = "<html>your token canary-id-token-abc is bad</html>";
        assert!(!r
            .redact_body(Some("text/html"), page.as_bytes(), 1000)
            .contains("canary-id"));
    }

    #[test]
    fn headers_keep_scheme_only() {
        let r = r();
        let out = r.redact_header("Authorization", "Basic Y2FuYXJ5OnNlY3JldA==");
        assert!(out.starts_with("Basic hmac-sha256:"));
        assert!(!out.contains("Y2FuYXJ5"));
        assert_eq!(
            r.redact_header("Accept", "application/json"),
            "application/json"
        );
    }

    #[test]
    fn url_query_secrets_and_userinfo_are_removed() {
        let r = r();
        let u = url::Url::parse("https://u:canary-pass@h/x?client_secret=canary-s&a=1").unwrap();
        let out = r.redact_url(&u);
        assert!(!out.contains("canary"), "{out}");
        assert!(out.contains("a=1"));
    }

    #[test]
    fn digest_is_stable_and_keyed() {
        assert_eq!(r().digest("x"), r().digest("x"));
        assert_ne!(r().digest("x"), Redactor::new([8u8; 32]).digest("x"));
    }

    #[test]
    fn truncated_json_still_redacts_secret_fields() {
        let r = r();
        for body in [
            r#"{"access_token":"canary-partial-tok"#,
            r#"{"token": "canary-partial-tok", "expires_in": 3"#,
            r#"{"a":1,"refresh_token":"canary-partial-tok\"x","#,
        ] {
            let out = r.redact_body(Some("application/json"), body.as_bytes(), 1000);
            assert!(!out.contains("canary-partial"), "{body} -> {out}");
            assert!(out.contains("hmac-sha256:"), "{out}");
        }
        let out = r.redact_body(None, br#"{"expires_in":"3600","scope":"re"#, 1000);
        assert!(out.contains("3600"), "{out}");
    }

    #[test]
    fn secrets_echoed_encoded_are_scrubbed() {
        let r = r();
        let secret = "canary/s\"e c+ret&=1";
        r.learn(&Secret::from(secret));
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json = serde_json::to_string(secret).unwrap();
        for text in [
            format!("echo {form}"),
            format!("echo {}", form.replace('+', "%20")),
            format!("echo {}", lower_hex(&form)),
            format!("{{\"got\":{json}}}"),
            format!("{{\"got\":{}}}", json.replace('/', "\\/")),
        ] {
            let out = r.scrub(&text);
            assert!(!out.contains("canary"), "{text} -> {out}");
        }
    }

    #[test]
    fn short_secrets_are_scrubbed_as_whole_words() {
        let r = r();
        r.learn(&Secret::from("4711"));
        assert_eq!(r.scrub("pin 4711 rejected").matches("4711").count(), 0);
        assert_eq!(r.scrub("order 947112"), "order 947112");
    }

    #[test]
    fn mislabelled_forms_location_and_fragments_are_redacted() {
        let r = r();
        let out = r.redact_body(
            Some("text/plain"),
            b"access_token=canary-form-tok&token_type=bearer&expires_in=60",
            1000,
        );
        assert!(!out.contains("canary"), "{out}");
        assert!(out.contains("expires_in=60"), "{out}");
        for loc in [
            "https://app.example/cb?code=canary-code-1&state=s#access_token=canary-frag-1",
            "/cb?code=canary-code-1#access_token=canary-frag-1&x=1",
        ] {
            let out = r.redact_header("Location", loc);
            assert!(!out.contains("canary"), "{loc} -> {out}");
        }
        let u = url::Url::parse("https://h/cb#id_token=canary-frag-2&state=ok").unwrap();
        let out = r.redact_url(&u);
        assert!(!out.contains("canary") && out.contains("state=ok"), "{out}");
        for h in [
            "api-key",
            "x-auth-key",
            "subscription-key",
            "Ocp-Apim-Subscription-Key",
        ] {
            assert!(is_secret_header(h), "{h}");
        }
    }

    #[test]
    fn truncate_chars_respects_char_boundaries() {
        assert_eq!(truncate_chars("ééé", 2), "éé…");
        assert_eq!(truncate_chars("ab", 2), "ab");
    }

    #[test]
    fn body_truncation_respects_char_boundaries() {
        let r = r();
        let body = "é".repeat(100);
        let out = r.redact_body(Some("text/plain"), body.as_bytes(), 11);
        assert!(out.ends_with("[truncated]"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A learned secret never survives into an event body, whatever surrounds it,
            /// as is, percent-encoded or JSON-escaped.
            #[test]
            fn a_learned_secret_never_survives(
                secret in "[n-rt-zN-Z][a-zA-Z0-9/+= \"._-]{4,20}[n-rt-zN-Z]",
                before in ".{0,30}",
                after in ".{0,30}",
                how in 0..3usize,
                ct in prop::sample::select(vec!["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
            ) {
                let r = Redactor::new([5; 32]);
                r.learn(&Secret::from(secret.as_str()));
                let echoed = match how {
                    0 => secret.clone(),
                    1 => url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
                    _ => serde_json::to_string(&secret).unwrap(),
                };
                let body = format!("{before}{echoed}{after}");
                let ct = (!ct.is_empty()).then_some(ct);
                let out = r.redact_body(ct, body.as_bytes(), usize::MAX);
                prop_assert!(!out.contains(&secret), "{body:?} -> {out:?}");
                prop_assert!(!out.contains(&echoed), "{body:?} -> {out:?}");
            }
        }
    }
}
