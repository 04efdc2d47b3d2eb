//! The provider registry: the only place that names every plugin. A [`Registry`] value is
//! built once (at start: the built-in plugins and the `[[plugins]]` started by
//! [`external::ExternalPlugins`]; or by a test with extra plugins) and passed to whoever
//! builds providers, so nothing reaches for a global list.

pub mod external;

use crate::credentials::CredentialPolicy;
use authgate_plugin_sdk::{Provider, ProviderFactory, SettingsError};
use std::sync::Arc;

/// Why a provider could not be built from a credential's settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("unknown provider `{kind}`; use one of: {known}")]
    UnknownKind { kind: String, known: String },
    /// The plugin refused the settings; the message names the field.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// The provider kinds this gateway can build. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    factories: Vec<Arc<dyn ProviderFactory>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// Every provider kind compiled into this build.
    pub fn builtin() -> Self {
        Self {
            factories: vec![
                Arc::new(authgate_plugin_oauth2::OAuth2Factory),
                Arc::new(authgate_plugin_trimble::TrimbleConnectFactory),
                Arc::new(authgate_plugin_trimble::TrimbleAgFactory),
                Arc::new(authgate_plugin_autodesk::AutodeskApsFactory),
                Arc::new(authgate_plugin_lseg::LsegRdpFactory),
            ],
        }
    }

    /// This registry plus `extra`, which replaces a factory of the same kind (tests
    /// register scripted providers this way).
    pub fn with(mut self, extra: Arc<dyn ProviderFactory>) -> Self {
        self.factories.retain(|f| f.kind() != extra.kind());
        self.factories.push(extra);
        self
    }

    /// The factory for a kind, or `None` when no plugin has that name.
    pub fn factory(&self, kind: &str) -> Option<&dyn ProviderFactory> {
        self.factories
            .iter()
            .find(|f| f.kind() == kind)
            .map(|f| &**f)
    }

    /// The known kinds, for error messages.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.kind()).collect()
    }

    /// Checks a credential's settings as far as that needs no I/O (the config file's
    /// checks before any port is bound): the provider built here is dropped. An
    /// out-of-process plugin checks the rest when the credential is loaded.
    pub fn build(&self, kind: &str, mut settings: serde_json::Value) -> Result<(), BuildError> {
        let factory = self.lookup(kind)?;
        CredentialPolicy::split(&mut settings).map_err(SettingsError)?;
        factory.build(settings)?;
        Ok(())
    }

    /// Builds the provider the gateway holds for a credential, and the credential's gateway
    /// policy: the one way a provider comes to be. The gateway's own `settings.gateway`
    /// table is checked and taken out first; the plugin never sees it.
    pub async fn build_with_policy(
        &self,
        kind: &str,
        mut settings: serde_json::Value,
    ) -> Result<(Arc<dyn Provider>, CredentialPolicy), BuildError> {
        let factory = self.lookup(kind)?;
        let policy = CredentialPolicy::split(&mut settings).map_err(SettingsError)?;
        Ok((factory.build_async(settings).await?, policy))
    }

    fn lookup(&self, kind: &str) -> Result<&dyn ProviderFactory, BuildError> {
        self.factory(kind).ok_or_else(|| BuildError::UnknownKind {
            kind: kind.to_owned(),
            known: self.kinds().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_and_include_the_seed_vendors() {
        let kinds = Registry::builtin().kinds();
        let mut unique = kinds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len());
        for k in [
            "oauth2",
            "trimble_connect",
            "trimble_ag",
            "autodesk_aps",
            "lseg_rdp",
        ] {
            assert!(kinds.contains(&k), "{k}");
        }
    }

    #[test]
    fn unknown_kind_names_the_known_ones() {
        let e = Registry::builtin()
            .build("nope", serde_json::json!({}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("unknown provider `nope`") && e.contains("oauth2"),
            "{e}"
        );
    }
}
