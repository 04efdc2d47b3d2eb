//! Config parsing and validation: unknown fields, secret references, ids, overrides.

use super::*;

#[test]
fn empty_config_is_the_embedded_default() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.server.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.store.url, "sqlite://authgate.db");
    assert!(c.validate().unwrap().is_empty());
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let e = Config::parse("[server]\ngrpc_lisen = \"x\"\n").unwrap_err();
    assert!(e.0.contains("grpc_lisen"), "{e}");
    assert!(e.0.contains("line"), "{e}");
}

#[test]
fn inline_secret_is_refused() {
    let c = Config::parse(
        r#"
[[credentials]]
tenant = "acme"
id = "idp"
provider = "oauth2"
[credentials.settings]
token_url = "https://idp.example.com/token"
client_id = "x"
client_secret = "canary-inline"
"#,
    )
    .unwrap();
    let e = c.validate().unwrap_err();
    assert!(e.0.contains("credentials[0].settings.client_secret"), "{e}");
    assert!(!e.0.contains("canary-inline"));
}

#[test]
fn env_reference_resolves_and_missing_one_is_named() {
    std::env::set_var("AUTHGATE_TEST_SECRET_1", "s3cret");
    let ok = resolve_reference("f", "${env:AUTHGATE_TEST_SECRET_1}").unwrap();
    assert_eq!(ok.as_deref(), Some("s3cret"));
    let e = resolve_reference("f", "${env:AUTHGATE_TEST_MISSING_9}").unwrap_err();
    assert!(e.0.contains("AUTHGATE_TEST_MISSING_9"));
    assert!(resolve_reference("f", "${vault:x}").is_err());
    assert_eq!(resolve_reference("f", "plain").unwrap(), None);
}

#[test]
fn unknown_provider_lists_known_ones() {
    let c = Config::parse("[[credentials]]\ntenant=\"a\"\nid=\"b\"\nprovider=\"nope\"\n").unwrap();
    let e = c.validate().unwrap_err();
    assert!(e.0.contains("oauth2"), "{e}");
}

#[test]
fn ids_are_checked() {
    assert!(validate_id("tenant", "acme-1.eu").is_ok());
    assert!(validate_id("tenant", "").is_err());
    assert!(validate_id("tenant", "a b").is_err());
    assert!(validate_id("tenant", &"x".repeat(129)).is_err());
}

#[test]
fn env_overrides_apply() {
    let mut c = Config::parse("").unwrap();
    c.apply_env(|k| (k == "AUTHGATE_GRPC_LISTEN").then(|| "127.0.0.1:1".to_owned()))
        .unwrap();
    assert_eq!(c.server.grpc_listen.port(), 1);
    assert!(c
        .apply_env(|k| (k == "AUTHGATE_HTTP_LISTEN").then(|| "nope".to_owned()))
        .is_err());
}

#[test]
fn refresh_lease_must_outlast_a_fetch() {
    let c = Config::parse("[broker]\nfetch_timeout_seconds = 30\nrefresh_lease_seconds = 30\n")
        .unwrap();
    let e = c.validate().unwrap_err();
    assert!(e.0.contains("broker.refresh_lease_seconds"), "{e}");
    let c = Config::parse("[store]\nurl = \"postgres://authgate@db/authgate\"\n[broker]\nfetch_timeout_seconds = 3\nrefresh_lease_seconds = 4\n")
        .unwrap();
    assert!(c.validate().is_ok());
}
