//! Settings decoding and the checks every provider plugin applies to its fields.
//!
//! A plugin decodes its settings into its own typed struct (unknown fields rejected) and
//! validates them once, at build time; [`decode_and_validate`] does both and prefixes every
//! error with the plugin's kind. Each check names the offending field and says what to put
//! there, so the message can go to the operator as it is.

use crate::scope::ScopeSet;
use crate::secret::Secret;
use serde::de::DeserializeOwned;
use url::Url;

/// A settings problem, naming the field and what to put there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Decodes settings into a plugin's typed struct; the error names the offending field.
pub fn decode_settings<T: DeserializeOwned>(
    kind: &str,
    settings: serde_json::Value,
) -> Result<T, SettingsError> {
    serde_json::from_value(settings).map_err(|e| {
        // serde_json's message names the field (`missing field `client_id``, `unknown
        // field `x`, expected one of ...`); values are never echoed for strings.
        SettingsError(format!("{kind} settings: {e}"))
    })
}

/// Decodes settings with [`decode_settings`], then checks them with `validate`; errors from
/// either step start with `{kind} settings: `.
pub fn decode_and_validate<T: DeserializeOwned, P>(
    kind: &str,
    settings: serde_json::Value,
    validate: impl FnOnce(T) -> Result<P, SettingsError>,
) -> Result<P, SettingsError> {
    let decoded = decode_settings(kind, settings)?;
    validate(decoded).map_err(|e| SettingsError(format!("{kind} settings: {}", e.0)))
}

/// Parses a URL setting, naming the field on failure.
pub fn parse_url_setting(field: &str, value: &str) -> Result<Url, SettingsError> {
    let url = Url::parse(value).map_err(|e| {
        SettingsError(format!(
            "`{field}` must be an absolute http(s) URL such as https://idp.example.com/oauth/token ({e})"
        ))
    })?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(SettingsError(format!(
            "`{field}` must use https (or http for local testing), not `{}`",
            url.scheme()
        )));
    }
    Ok(url)
}

/// A full endpoint URL setting, `default` when absent (query strings allowed: some gateways
/// route on them).
pub fn url_setting(field: &str, value: Option<&str>, default: &str) -> Result<Url, SettingsError> {
    parse_url_setting(field, value.unwrap_or(default))
}

/// Parses a URL setting that paths are appended to (see [`endpoint`]), `default` when absent:
/// it must not carry a query or fragment, which would silently end up in the middle of every
/// endpoint URL.
pub fn base_url_setting(
    field: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Url, SettingsError> {
    let url = url_setting(field, value, default)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SettingsError(format!(
            "`{field}` is a base URL (such as {default}) and must not contain `?` or `#`"
        )));
    }
    Ok(url)
}

/// `base` with `segments` appended, whether or not the setting ended with a slash
/// (`Url::join` would replace the last segment instead of appending).
pub fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // Only URLs that cannot be a base refuse path segments; http(s) URLs always can, and
    // every base URL here went through `parse_url_setting`, which allows only http(s).
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Checks a client id that is sent as the HTTP Basic user name. `what` tells the operator
/// where to find it, e.g. "the Client ID of your APS application".
pub fn client_id_setting(value: &str, what: &str) -> Result<String, SettingsError> {
    if value.trim().is_empty() {
        return Err(SettingsError(format!(
            "`client_id` must not be empty: use {what}"
        )));
    }
    // HTTP Basic splits user and password at the first colon, and control characters cannot
    // travel in a header; either would make every request fail in a confusing way.
    if value.contains(':') || value.chars().any(char::is_control) {
        return Err(SettingsError(
            "`client_id` must not contain `:` or control characters: it is sent as the HTTP Basic user name"
                .into(),
        ));
    }
    Ok(value.to_owned())
}

/// An optional secret setting: an empty value is almost always an unset environment
/// variable, so it is refused rather than sent.
pub fn optional_secret(
    field: &str,
    value: Option<Secret>,
) -> Result<Option<Secret>, SettingsError> {
    match value {
        Some(s) if s.is_empty() => Err(SettingsError(format!(
            "`{field}` is empty: check that the referenced environment variable or file is set, or remove the field"
        ))),
        other => Ok(other),
    }
}

/// A secret setting the grant cannot do without; `why` completes "`field` is required ...".
pub fn required_secret(
    field: &str,
    value: Option<Secret>,
    why: &str,
) -> Result<Secret, SettingsError> {
    optional_secret(field, value)?
        .ok_or_else(|| SettingsError(format!("`{field}` is required {why}")))
}

/// Refuses a setting that the chosen grant would ignore: a silently unused password or
/// refresh token usually means the wrong grant was picked.
pub fn unused<T>(field: &str, value: &Option<T>, grant: &str) -> Result<(), SettingsError> {
    if value.is_some() {
        return Err(SettingsError(format!(
            "`{field}` is not used with grant = \"{grant}\"; remove it or choose the grant that needs it"
        )));
    }
    Ok(())
}

/// Validates a scope list from the settings (each entry may hold several space-separated
/// scopes, as providers write them) and returns it normalized.
pub fn scopes_setting(scopes: Vec<String>) -> Result<Vec<String>, SettingsError> {
    if scopes.iter().any(|s| s.trim().is_empty()) {
        return Err(SettingsError(
            "`scopes` must not contain empty entries".into(),
        ));
    }
    Ok(ScopeSet::new(&scopes).as_slice().to_vec())
}

/// The scopes to send: the caller's, else the credential's defaults.
pub fn effective_scopes(requested: &ScopeSet, defaults: &[String]) -> ScopeSet {
    if requested.is_empty() {
        ScopeSet::new(defaults)
    } else {
        requested.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn endpoint_appends_with_or_without_trailing_slash() {
        for base in ["https://h/tc/api/2.0", "https://h/tc/api/2.0/"] {
            let base = Url::parse(base).unwrap();
            assert_eq!(
                endpoint(&base, &["auth", "token"]).as_str(),
                "https://h/tc/api/2.0/auth/token"
            );
        }
        let root = Url::parse("https://id.example.com").unwrap();
        assert_eq!(
            endpoint(&root, &["oauth", "token"]).as_str(),
            "https://id.example.com/oauth/token"
        );
    }

    #[test]
    fn base_urls_reject_query_and_fragment() {
        assert!(base_url_setting("x", Some("https://h/a?b=1"), "https://d").is_err());
        assert!(base_url_setting("x", Some("https://h/a#f"), "https://d").is_err());
        assert!(base_url_setting("x", Some("ftp://h/a"), "https://d").is_err());
        assert_eq!(
            base_url_setting("x", None, "https://d/p").unwrap().as_str(),
            "https://d/p"
        );
    }

    #[test]
    fn url_settings_allow_a_query_and_fall_back_to_the_default() {
        assert_eq!(
            url_setting("x", Some("https://h/t?r=eu"), "https://d")
                .unwrap()
                .as_str(),
            "https://h/t?r=eu"
        );
        assert_eq!(
            url_setting("x", None, "https://d/t").unwrap().as_str(),
            "https://d/t"
        );
        let e = url_setting("token_url", Some("h/t"), "https://d").unwrap_err();
        assert!(e.0.contains("`token_url`"), "{e}");
    }

    #[test]
    fn client_id_checks() {
        let what = "the key the vendor issued";
        let e = client_id_setting("", what).unwrap_err();
        assert_eq!(
            e.0,
            "`client_id` must not be empty: use the key the vendor issued"
        );
        assert!(client_id_setting("a:b", what).is_err());
        assert!(client_id_setting("a\nb", what).is_err());
        assert_eq!(client_id_setting("key-1", what).unwrap(), "key-1");
    }

    #[test]
    fn empty_secret_is_refused_with_a_hint() {
        let e = optional_secret("client_secret", Some(Secret::from(""))).unwrap_err();
        assert!(e.0.contains("environment variable"), "{e}");
        assert!(optional_secret("client_secret", None).unwrap().is_none());
        let e = required_secret("password", None, "for grant = \"password\"").unwrap_err();
        assert_eq!(e.0, "`password` is required for grant = \"password\"");
    }

    #[test]
    fn unused_and_scopes_checks() {
        assert!(unused("password", &None::<Secret>, "client_credentials").is_ok());
        let e = unused("password", &Some(1), "client_credentials").unwrap_err();
        assert!(e.0.contains("`password` is not used"), "{e}");
        assert!(scopes_setting(vec!["a".into(), " ".into()]).is_err());
        assert_eq!(
            scopes_setting(vec!["b a".into(), "a".into()]).unwrap(),
            ["a", "b"]
        );
        let defaults = ["d".to_owned()];
        assert_eq!(
            effective_scopes(&ScopeSet::default(), &defaults).join(" "),
            "d"
        );
        assert_eq!(
            effective_scopes(&ScopeSet::new(["r"]), &defaults).join(" "),
            "r"
        );
    }

    #[test]
    fn decode_and_validate_prefixes_both_steps() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct S {
            n: u8,
        }
        let check = |s: S| match s.n {
            0 => Err(SettingsError("`n` must not be 0".into())),
            n => Ok(n),
        };
        assert_eq!(decode_and_validate("k", json!({"n": 2}), check), Ok(2));
        let e = decode_and_validate("k", json!({"n": 0}), check).unwrap_err();
        assert_eq!(e.0, "k settings: `n` must not be 0");
        let e = decode_and_validate("k", json!({"m": 1}), check).unwrap_err();
        assert!(e.0.starts_with("k settings: unknown field `m`"), "{e}");
    }
}
