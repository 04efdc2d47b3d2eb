//! The oauth2 plugin's settings: what is accepted, what is refused and with which message.

use super::*;
use authgate_plugin_sdk::oauth::ClientAuth;
use serde_json::json;

fn err(settings: Value) -> String {
    match OAuth2Settings::from_value(settings) {
        Ok(s) => panic!("settings accepted: {s:?}"),
        Err(e) => e.0,
    }
}

fn ok(settings: Value) -> OAuth2Settings {
    OAuth2Settings::from_value(settings).unwrap_or_else(|e| panic!("{e}"))
}

fn base() -> Value {
    json!({"token_url": "https://idp.example.com/token", "client_id": "c", "client_secret": "s"})
}

fn with(pairs: Value) -> Value {
    let mut v = base();
    for (k, val) in pairs.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

#[test]
fn defaults() {
    let s = ok(base());
    assert_eq!(s.grant, Grant::ClientCredentials);
    assert_eq!(s.client.auth, ClientAuth::Basic);
    assert_eq!(s.scope_separator, " ");
    assert!(s.send_scope);
    assert!(s.pkce);
    assert_eq!(s.default_lifetime, Duration::from_secs(3600));
    assert!(s.scopes.is_empty());
    assert!(
        matches!(s.endpoint, TokenEndpoint::Url(ref u) if u.as_str() == "https://idp.example.com/token")
    );
}

#[test]
fn neither_token_url_nor_issuer() {
    let e = err(json!({"client_id": "c", "client_secret": "s"}));
    assert!(
        e.contains("`token_url`") && e.contains("`issuer`") && e.contains("neither"),
        "{e}"
    );
}

#[test]
fn both_token_url_and_issuer() {
    let e = err(with(json!({"issuer": "https://idp.example.com"})));
    assert!(
        e.contains("`token_url`") && e.contains("`issuer`") && e.contains("not both"),
        "{e}"
    );
}

#[test]
fn password_grant_needs_username_and_password() {
    let e = err(with(json!({"grant": "password", "username": "u"})));
    assert!(e.contains("needs `password`"), "{e}");
    let e = err(with(json!({"grant": "password", "password": "p"})));
    assert!(e.contains("needs `username`"), "{e}");
    let s = ok(with(
        json!({"grant": "password", "username": "u", "password": "p"}),
    ));
    assert_eq!(
        s.password_grant
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.expose())),
        Some(("u", "p"))
    );
}

#[test]
fn refresh_token_grant_needs_refresh_token() {
    let e = err(with(json!({"grant": "refresh_token"})));
    assert!(e.contains("needs `refresh_token`"), "{e}");
    let e = err(with(
        json!({"grant": "refresh_token", "refresh_token": "  "}),
    ));
    assert!(e.contains("`refresh_token` is empty"), "{e}");
}

#[test]
fn unknown_field_is_named() {
    let e = err(with(json!({"timeout_seconds": 5})));
    assert!(e.contains("unknown field `timeout_seconds`"), "{e}");
    let e = err(json!({"token_url": "https://x.example/t"}));
    assert!(e.contains("missing field `client_id`"), "{e}");
}

#[test]
fn unknown_grant_and_client_auth_are_named() {
    let e = err(with(json!({"grant": "implicit"})));
    assert!(
        e.contains("`grant` must be") && e.contains("implicit"),
        "{e}"
    );
    let e = err(with(json!({"client_auth": "jwt"})));
    assert!(e.contains("`client_auth` must be"), "{e}");
}

#[test]
fn client_auth_accepts_rfc_names_and_checks_the_secret() {
    assert_eq!(
        ok(with(json!({"client_auth": "client_secret_post"})))
            .client
            .auth,
        ClientAuth::Post
    );
    assert_eq!(
        ok(with(json!({"client_auth": "client_secret_basic"})))
            .client
            .auth,
        ClientAuth::Basic
    );
    assert_eq!(
        ok(with(json!({"client_auth": "post"}))).client.auth,
        ClientAuth::Post
    );
    let public = json!({"token_url": "https://x.example/t", "client_id": "c"});
    assert_eq!(ok(public.clone()).client.auth, ClientAuth::Public);
    let mut explicit = public.clone();
    explicit["client_auth"] = json!("none");
    assert_eq!(ok(explicit).client.auth, ClientAuth::Public);
    let mut post = public;
    post["client_auth"] = json!("post");
    let e = err(post);
    assert!(e.contains("`client_secret` is not set"), "{e}");
    let e = err(with(json!({"client_auth": "none"})));
    assert!(e.contains("`client_secret` is set"), "{e}");
}

#[test]
fn extra_params_cannot_override_reserved_fields() {
    for name in [
        "grant_type",
        "Scope",
        "client_secret",
        "code",
        "refresh_token",
        "subject_token",
        "actor_token_type",
    ] {
        let e = err(with(json!({"extra_params": {name: "x"}})));
        assert!(
            e.contains("`extra_params` must not set") && e.contains(name),
            "{e}"
        );
    }
    let s = ok(with(json!({"extra_params": {"audience": "https://api"}})));
    assert_eq!(
        s.extra_params,
        vec![("audience".to_owned(), "https://api".to_owned())]
    );
}

#[test]
fn bad_urls_name_the_field() {
    for field in ["token_url", "revocation_url"] {
        let e = err(with(json!({field: "not a url"})));
        assert!(e.contains(&format!("`{field}`")), "{e}");
    }
    let e = err(with(json!({"token_url": "ftp://idp.example.com/token"})));
    assert!(e.contains("`token_url` must use https"), "{e}");
    let e = err(with(
        json!({"token_url": "https://u:p@idp.example.com/token"}),
    ));
    assert!(
        e.contains("`token_url` must not contain user:password"),
        "{e}"
    );
    let e = err(json!({"issuer": "https://idp.example.com?x=1", "client_id": "c"}));
    assert!(e.contains("`issuer` must not have a query"), "{e}");
    let e = err(
        json!({"issuer": "idp.example.com", "client_id": "c", "grant": "authorization_code", "redirect_uri": "/cb"}),
    );
    assert!(e.contains("`issuer`"), "{e}");
}

#[test]
fn wrong_types_name_the_field_and_never_echo_a_secret() {
    let e = err(with(json!({"client_secret": 987654321})));
    assert!(e.contains("`client_secret` must be a string"), "{e}");
    assert!(!e.contains("987654321"), "{e}");
    let e = err(with(json!({"scopes": "read write"})));
    assert!(e.contains("`scopes` must be a list"), "{e}");
    let e = err(with(json!({"default_lifetime_seconds": 0})));
    assert!(e.contains("`default_lifetime_seconds`"), "{e}");
    let e = err(with(json!({"extra_params": {"audience": 1}})));
    assert!(e.contains("`extra_params`"), "{e}");
    let e = err(json!(["token_url"]));
    assert!(e.contains("table of fields"), "{e}");
}

#[test]
fn empty_values_are_rejected() {
    let e = err(with(json!({"client_id": " "})));
    assert!(e.contains("`client_id` is empty"), "{e}");
    let e = err(with(json!({"client_secret": ""})));
    assert!(e.contains("`client_secret` is empty"), "{e}");
    let e = err(with(json!({"scope_separator": ""})));
    assert!(e.contains("`scope_separator`"), "{e}");
}

#[test]
fn fields_of_other_grants_are_rejected() {
    let e = err(with(json!({"password": "p"})));
    assert!(
        e.contains("`password` is only used with grant = \"password\""),
        "{e}"
    );
    let e = err(with(json!({"redirect_uri": "https://gw.example.com/cb"})));
    assert!(
        e.contains("`redirect_uri` is only used with grant = \"authorization_code\""),
        "{e}"
    );
    let e = err(with(json!({"grant": "authorization_code"})));
    assert!(e.contains("needs `authorization_url`"), "{e}");
    let s = ok(
        json!({"issuer": "https://idp.example.com/", "client_id": "c", "grant": "authorization_code", "pkce": false}),
    );
    assert!(!s.pkce);
    assert!(matches!(s.endpoint, TokenEndpoint::Issuer(ref i) if i == "https://idp.example.com"));
}

#[test]
fn null_means_absent() {
    let s = ok(with(json!({"refresh_token": null, "scopes": null})));
    assert!(s.refresh_token.is_none());
}

#[test]
fn debug_hides_secrets() {
    let s = ok(json!({
        "token_url": "https://idp.example.com/token?api_key=canary-q",
        "client_id": "c",
        "client_secret": "canary-cs",
        "grant": "password",
        "username": "u",
        "password": "canary-pw",
        "refresh_token": "canary-rt",
        "extra_params": {"audience": "aud", "client_assertion": "canary-ea"},
    }));
    let out = format!("{s:?}");
    assert!(!out.contains("canary"), "{out}");
    assert!(out.contains("aud") && out.contains("client_id"), "{out}");
}

#[test]
fn token_exchange_is_off_unless_enabled_and_must_be_a_bool() {
    assert!(!ok(with(json!({}))).token_exchange());
    assert!(ok(with(json!({"token_exchange": true}))).token_exchange());
    let e = err(with(json!({"token_exchange": "yes"})));
    assert!(e.contains("`token_exchange` must be true or false"), "{e}");
}

mod tls {
    use super::*;
    use authgate_plugin_sdk::testing::TestPki;

    fn mtls(pki: &TestPki, extra: Value) -> Value {
        let (cert, key) = pki.client("gateway");
        let mut v = json!({
            "token_url": "https://idp.example.com/token",
            "client_id": "gw",
            "client_auth": "tls_client_auth",
            "tls_client_certificate": cert,
            "tls_client_key": key,
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    }

    /// A middle line of a PEM body: found only if the key leaked.
    fn canary(pem: &str) -> String {
        pem.lines().nth(2).unwrap().to_owned()
    }

    #[test]
    fn tls_client_auth_sends_the_client_id_and_no_secret() {
        let pki = TestPki::new("test CA");
        let v = mtls(&pki, json!({"tls_ca_certificate": pki.ca_pem}));
        let key = v["tls_client_key"].as_str().unwrap().to_owned();
        let s = ok(v);
        assert!(matches!(s.authn, Authn::Tls { self_signed: false }));
        assert_eq!(s.client.auth, ClientAuth::Public);
        assert!(s.client.client_secret.is_none() && s.client_secrets.is_empty());
        assert!(s.has_client_certificate());
        assert_eq!(
            s.client_tls().unwrap().identity().unwrap().subject(),
            "CN=gateway"
        );
        assert!(s.secrets().iter().any(|k| k.expose() == key));
        let out = format!("{s:?}");
        assert!(
            out.contains("CN=gateway") && out.contains("CN=test CA"),
            "{out}"
        );
        assert!(!out.contains(&canary(&key)), "{out}");

        let s = ok(mtls(
            &pki,
            json!({"client_auth": "self_signed_tls_client_auth"}),
        ));
        assert!(matches!(s.authn, Authn::Tls { self_signed: true }));
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_method_needs_both() {
        let pki = TestPki::new("test CA");
        let mut v = mtls(&pki, json!({}));
        v.as_object_mut().unwrap().remove("tls_client_key");
        let e = err(v);
        assert!(e.contains("`tls_client_key` is not"), "{e}");
        let mut v = mtls(&pki, json!({}));
        v.as_object_mut().unwrap().remove("tls_client_certificate");
        let e = err(v);
        assert!(e.contains("`tls_client_certificate` is not"), "{e}");
        let e = err(json!({
            "token_url": "https://idp.example.com/token",
            "client_id": "gw",
            "client_auth": "tls_client_auth",
        }));
        assert!(
            e.contains("set `tls_client_certificate`") && e.contains("`tls_client_key`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_material_is_refused_by_field_without_echoing_the_key() {
        let pki = TestPki::new("test CA");
        let (_, other_key) = pki.client("someone-else");
        let e = err(mtls(&pki, json!({"tls_client_key": other_key})));
        assert!(
            e.starts_with("oauth2 settings: `tls_client_key` does not belong"),
            "{e}"
        );
        assert!(!e.contains(&canary(&other_key)), "{e}");
        let e = err(mtls(
            &pki,
            json!({"tls_client_certificate": "not a certificate"}),
        ));
        assert!(
            e.contains("`tls_client_certificate` has no certificate"),
            "{e}"
        );
        let e = err(mtls(&pki, json!({"tls_ca_certificate": other_key})));
        assert!(
            e.contains("`tls_ca_certificate` holds a private key"),
            "{e}"
        );
        assert!(!e.contains(&canary(&other_key)), "{e}");
        let e = err(mtls(&pki, json!({"tls_client_key": ""})));
        assert!(e.contains("`tls_client_key` is empty"), "{e}");
    }

    #[test]
    fn no_secret_and_only_https_endpoints_next_to_a_certificate() {
        let pki = TestPki::new("test CA");
        let e = err(mtls(&pki, json!({"client_secret": "s"})));
        assert!(e.contains("never sends `client_secret`"), "{e}");
        let e = err(mtls(
            &pki,
            json!({"token_url": "http://idp.example.com/token"}),
        ));
        assert!(e.contains("`token_url` must be an https URL"), "{e}");
        let e = err(mtls(
            &pki,
            json!({"revocation_url": "http://idp.example.com/revoke"}),
        ));
        assert!(e.contains("`revocation_url` must be an https URL"), "{e}");
        // An issuer is only checked when its metadata is used.
        let mut v = mtls(&pki, json!({"issuer": "http://127.0.0.1:9"}));
        v.as_object_mut().unwrap().remove("token_url");
        assert!(ok(v).has_client_certificate());
    }

    #[test]
    fn a_private_ca_alone_works_with_any_client_auth() {
        let pki = TestPki::new("internal CA");
        let s = ok(with(json!({"tls_ca_certificate": pki.ca_pem})));
        assert_eq!(s.client.auth, ClientAuth::Basic);
        assert!(!s.has_client_certificate());
        assert!(s.client_tls().is_some_and(|t| t.identity().is_none()));
        assert!(ok(base()).client_tls().is_none());
    }
}
