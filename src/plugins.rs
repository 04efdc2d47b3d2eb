//! The provider registry: the only place that names every plugin.

use authgate_plugin_sdk::ProviderFactory;

/// Every provider kind this build knows.
pub fn factories() -> Vec<Box<dyn ProviderFactory>> {
    vec![
        Box::new(authgate_plugin_oauth2::OAuth2Factory),
        Box::new(authgate_plugin_trimble::TrimbleConnectFactory),
        Box::new(authgate_plugin_trimble::TrimbleAgFactory),
        Box::new(authgate_plugin_autodesk::AutodeskApsFactory),
        Box::new(authgate_plugin_lseg::LsegRdpFactory),
    ]
}

/// The factory for a kind, or `None` when no plugin has that name.
pub fn factory(kind: &str) -> Option<Box<dyn ProviderFactory>> {
    factories().into_iter().find(|f| f.kind() == kind)
}

/// The known kinds, for error messages.
pub fn kinds() -> Vec<&'static str> {
    factories().iter().map(|f| f.kind()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_are_unique_and_include_the_seed_vendors() {
        let kinds = super::kinds();
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
}
