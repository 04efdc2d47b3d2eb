//! The provider registry: the only place that names every plugin.

use authgate_plugin_sdk::ProviderFactory;

/// Every provider kind this build knows.
pub fn factories() -> Vec<Box<dyn ProviderFactory>> {
    vec![Box::new(authgate_plugin_oauth2::OAuth2Factory)]
}

/// The factory for a kind, or `None` when no plugin has that name.
pub fn factory(kind: &str) -> Option<Box<dyn ProviderFactory>> {
    factories().into_iter().find(|f| f.kind() == kind)
}

/// The known kinds, for error messages.
pub fn kinds() -> Vec<&'static str> {
    factories().iter().map(|f| f.kind()).collect()
}
