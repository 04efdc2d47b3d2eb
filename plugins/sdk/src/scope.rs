//! Scope sets, the vocabulary every layer of the SDK shares: settings validate them,
//! the RFC 6749 helpers send them, providers receive them.

use std::sync::Arc;

/// A normalized set of scopes: split on whitespace, deduplicated, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(Arc<[String]>);

impl ScopeSet {
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v: Vec<String> = scopes
            .into_iter()
            .flat_map(|s| {
                s.as_ref()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The scopes joined with `sep` (space for RFC 6749; some providers want others).
    pub fn join(&self, sep: &str) -> String {
        self.0.join(sep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_set_normalizes() {
        let s = ScopeSet::new(["b a", "a", "c"]);
        assert_eq!(s.join(" "), "a b c");
        assert_eq!(ScopeSet::new(Vec::<String>::new()).join(" "), "");
        assert_eq!(ScopeSet::new(["x", " x  "]).len(), 1);
    }
}
