//! Settings checks and URL helpers for the APS provider.

use authgate_plugin_sdk::{parse_url_setting, ScopeSet, Secret, SettingsError};
use url::Url;

/// Parses a URL setting that paths are appended to: it must not carry a query or fragment,
/// which would silently end up in the middle of every endpoint URL.
pub(crate) fn base_url_setting(
    field: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Url, SettingsError> {
    let url = parse_url_setting(field, value.unwrap_or(default))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SettingsError(format!(
            "`{field}` is a base URL (such as {default}) and must not contain `?` or `#`"
        )));
    }
    Ok(url)
}

/// `base` with `segments` appended, whether or not the setting ended with a slash
/// (`Url::join` would replace the last segment instead of appending).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // Only URLs that cannot be a base refuse path segments; http(s) URLs always can, and
    // every base URL here went through `parse_url_setting`, which allows only http(s).
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Checks a client id that is sent as the HTTP Basic user name.
pub(crate) fn client_id_setting(value: &str) -> Result<String, SettingsError> {
    if value.trim().is_empty() {
        return Err(SettingsError(
            "`client_id` must not be empty: use the Client ID of your APS application".into(),
        ));
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
pub(crate) fn optional_secret(
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

/// Refuses a setting that the chosen grant would ignore: a silently unused password or
/// refresh token usually means the wrong grant was picked.
pub(crate) fn unused<T>(field: &str, value: &Option<T>, grant: &str) -> Result<(), SettingsError> {
    if value.is_some() {
        return Err(SettingsError(format!(
            "`{field}` is not used with grant = \"{grant}\"; remove it or choose the grant that needs it"
        )));
    }
    Ok(())
}

/// The scopes to send: the caller's, else the credential's defaults.
pub(crate) fn effective_scopes(requested: &ScopeSet, defaults: &[String]) -> ScopeSet {
    if requested.is_empty() {
        ScopeSet::new(defaults)
    } else {
        requested.clone()
    }
}

/// Validates a scope list from the settings (each entry may hold several space-separated
/// scopes, as providers write them).
pub(crate) fn scopes_setting(scopes: Vec<String>) -> Result<Vec<String>, SettingsError> {
    if scopes.iter().any(|s| s.trim().is_empty()) {
        return Err(SettingsError(
            "`scopes` must not contain empty entries".into(),
        ));
    }
    Ok(ScopeSet::new(&scopes).as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn client_id_checks() {
        assert!(client_id_setting("").is_err());
        assert!(client_id_setting("a:b").is_err());
        assert!(client_id_setting("a\nb").is_err());
        assert_eq!(client_id_setting("key-1").unwrap(), "key-1");
    }

    #[test]
    fn empty_secret_is_refused_with_a_hint() {
        let e = optional_secret("client_secret", Some(Secret::from(""))).unwrap_err();
        assert!(e.0.contains("environment variable"), "{e}");
        assert!(optional_secret("client_secret", None).unwrap().is_none());
    }
}
