//! Settings checks and URL helpers for the RDP provider.

use authgate_plugin_sdk::{parse_url_setting, ScopeSet, Secret, SettingsError};
use url::Url;

/// A full endpoint URL setting (query strings allowed: some gateways route on them).
pub(crate) fn url_setting(
    field: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Url, SettingsError> {
    parse_url_setting(field, value.unwrap_or(default))
}

/// Checks a client id that is sent as the HTTP Basic user name.
pub(crate) fn client_id_setting(value: &str) -> Result<String, SettingsError> {
    if value.trim().is_empty() {
        return Err(SettingsError(
            "`client_id` must not be empty: use the App Key (client id) of your RDP application"
                .into(),
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

/// A secret setting the grant cannot do without.
pub(crate) fn required_secret(
    field: &str,
    value: Option<Secret>,
    why: &str,
) -> Result<Secret, SettingsError> {
    optional_secret(field, value)?
        .ok_or_else(|| SettingsError(format!("`{field}` is required {why}")))
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
