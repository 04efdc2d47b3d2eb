//! Trimble Connect region discovery: `GET {master}/regions`, and the choice of the
//! credential's region, returned to callers as token metadata.
//!
//! Trimble asks integrators to discover regional base URLs from the master region's
//! `/regions` list (each entry's `origin`) instead of hard-coding them, so new regions work
//! without a release. The list is public; it is fetched without a token, before any token
//! step, so a failure here can never discard a freshly rotated refresh token.

use crate::identity::steps;
use authgate_plugin_sdk::oauth::check_status;
use authgate_plugin_sdk::settings::endpoint;
use authgate_plugin_sdk::{ProviderError, UpstreamCall, UpstreamRequest, UpstreamResponse};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use url::Url;

/// Metadata keys put on every Trimble Connect token.
pub mod keys {
    /// The chosen region's `origin`: where project requests go.
    pub const BASE_URL: &str = "base_url";
    /// The chosen region's Connect API base (`tc-api` when listed, else origin + the master
    /// URL's path, e.g. `/tc/api/2.0`).
    pub const API_BASE_URL: &str = "api_base_url";
    /// The chosen region's name as Trimble lists it (e.g. `europe`).
    pub const REGION: &str = "region";
    /// Prefix of one entry per listed region: `region.<name>` = origin.
    pub const REGION_PREFIX: &str = "region.";
}

/// Fields a region entry may name itself by; Trimble's list has used several over time.
const NAME_FIELDS: [&str; 4] = ["location", "name", "region", "serviceRegion"];

/// Spellings people use for the same region in config (compared after [`normalize`]).
const ALIASES: &[&[&str]] = &[
    &["us", "na", "usa", "northamerica", "americas"],
    &["eu", "europe"],
    &["asia", "ap", "apac", "asiapacific", "singapore"],
    &["au", "ap2", "apau", "australia"],
    &["uk", "gb", "eugb", "unitedkingdom"],
];

/// One entry of the regions list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The display name (first of `location`, `name`, `region`, `serviceRegion`).
    pub name: String,
    /// The regional base URL, without a trailing slash.
    pub origin: String,
    /// The regional Connect API base (`tc-api`), when listed.
    pub api: Option<String>,
    pub is_master: bool,
    /// Every name the entry answers to, normalized.
    aliases: Vec<String>,
}

/// Fetches and parses the regions list.
pub(crate) async fn discover(
    call: &UpstreamCall,
    master: &Url,
) -> Result<Vec<Region>, ProviderError> {
    let resp = call
        .send(
            steps::REGIONS,
            UpstreamRequest::get(endpoint(master, &["regions"])),
        )
        .await?;
    check_status(steps::REGIONS, &resp, call)?;
    parse(&resp)
}

fn malformed(message: String) -> ProviderError {
    ProviderError::transient(steps::REGIONS, message)
}

fn parse(resp: &UpstreamResponse) -> Result<Vec<Region>, ProviderError> {
    let items = match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => {
            return Err(malformed(format!(
                "HTTP {} regions body is JSON but not a list",
                resp.status
            )))
        }
        Err(_) => {
            return Err(malformed(format!(
                "HTTP {} regions body is not JSON ({})",
                resp.status,
                resp.content_type().unwrap_or("no content type")
            )))
        }
    };
    if items.is_empty() {
        return Err(malformed("the regions list is empty".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(obj) => region(i, obj),
            _ => Err(malformed(format!("regions entry {i} is not an object"))),
        })
        .collect()
}

fn region(index: usize, obj: &Map<String, Value>) -> Result<Region, ProviderError> {
    let origin = obj
        .get("origin")
        .and_then(Value::as_str)
        .filter(|o| Url::parse(o).is_ok_and(|u| matches!(u.scheme(), "https" | "http")))
        .ok_or_else(|| malformed(format!("regions entry {index} has no usable `origin` URL")))?
        .trim_end_matches('/')
        .to_owned();
    let names: Vec<&str> = NAME_FIELDS
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
        .collect();
    let name = names
        .first()
        .map(|s| (*s).to_owned())
        .or_else(|| Url::parse(&origin).ok()?.host_str().map(str::to_owned))
        .unwrap_or_else(|| origin.clone());
    Ok(Region {
        name,
        api: obj
            .get("tc-api")
            .and_then(Value::as_str)
            .map(|s| s.trim_end_matches('/').to_owned()),
        is_master: obj
            .get("isMaster")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        aliases: names.iter().map(|s| normalize(s)).collect(),
        origin,
    })
}

/// Lowercase with separators removed, so `North-America`, `north_america` and
/// `northAmerica` compare equal.
fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn same_region(configured: &str, candidate: &str) -> bool {
    configured == candidate
        || ALIASES
            .iter()
            .any(|group| group.contains(&configured) && group.contains(&candidate))
}

/// Picks the credential's region and renders the metadata for the token.
///
/// `configured` absent means the master region. A configured region that the list does not
/// contain is a settings error naming the regions that exist.
pub(crate) fn placement(
    regions: &[Region],
    configured: Option<&str>,
    master: &Url,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let master_origin = master.origin().ascii_serialization();
    let chosen = match configured {
        Some(wanted) => {
            let wanted_n = normalize(wanted);
            let found = if wanted_n == "master" {
                regions.iter().find(|r| r.is_master)
            } else {
                // An exact name beats an alias, so a future region literally called `ap`
                // is not shadowed by the `asia` alias group.
                regions
                    .iter()
                    .find(|r| r.aliases.contains(&wanted_n))
                    .or_else(|| {
                        regions
                            .iter()
                            .find(|r| r.aliases.iter().any(|a| same_region(&wanted_n, a)))
                    })
            };
            Some(found.ok_or_else(|| {
                let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
                ProviderError::config(format!(
                    "`region` = \"{wanted}\" is not a Trimble Connect region; the master region lists: {}",
                    names.join(", ")
                ))
            })?)
        }
        None => regions
            .iter()
            .find(|r| r.is_master)
            .or_else(|| regions.iter().find(|r| r.origin == master_origin)),
    };

    let mut meta = BTreeMap::new();
    for r in regions {
        meta.insert(
            format!("{}{}", keys::REGION_PREFIX, r.name),
            r.origin.clone(),
        );
    }
    let api_path = master.path().trim_end_matches('/');
    match chosen {
        Some(r) => {
            meta.insert(keys::REGION.into(), r.name.clone());
            meta.insert(keys::BASE_URL.into(), r.origin.clone());
            let api = r
                .api
                .clone()
                .unwrap_or_else(|| format!("{}{api_path}", r.origin));
            meta.insert(keys::API_BASE_URL.into(), api);
        }
        None => {
            // No region configured and none marked as master: the master URL itself is
            // where authorization happened, so it is the safe default.
            meta.insert(keys::BASE_URL.into(), master_origin.clone());
            meta.insert(
                keys::API_BASE_URL.into(),
                format!("{master_origin}{api_path}"),
            );
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str) -> UpstreamResponse {
        UpstreamResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec().into(),
        }
    }

    const LIST: &str = r#"[
        {"isMaster": true, "location": "northAmerica", "serviceRegion": "us",
         "origin": "https://app.connect.trimble.com", "tc-api": "https://app.connect.trimble.com/tc/api/2.0/"},
        {"isMaster": false, "location": "europe", "origin": "https://app21.connect.trimble.com/", "extra": [1]},
        {"location": "asia", "origin": "https://app31.connect.trimble.com"},
        {"origin": "https://app32.connect.trimble.com"}
    ]"#;

    fn master() -> Url {
        Url::parse("https://app.connect.trimble.com/tc/api/2.0").unwrap()
    }

    #[test]
    fn parses_tolerantly_and_names_regions() {
        let regions = parse(&resp(LIST)).unwrap();
        assert_eq!(regions.len(), 4);
        assert_eq!(regions[1].origin, "https://app21.connect.trimble.com");
        assert_eq!(regions[3].name, "app32.connect.trimble.com");
        assert!(regions[0].is_master);
    }

    #[test]
    fn config_aliases_select_regions() {
        let regions = parse(&resp(LIST)).unwrap();
        for (wanted, origin) in [
            ("eu", "https://app21.connect.trimble.com"),
            ("Europe", "https://app21.connect.trimble.com"),
            ("us", "https://app.connect.trimble.com"),
            ("north-america", "https://app.connect.trimble.com"),
            ("asia", "https://app31.connect.trimble.com"),
            ("ap", "https://app31.connect.trimble.com"),
            ("master", "https://app.connect.trimble.com"),
        ] {
            let meta = placement(&regions, Some(wanted), &master()).unwrap();
            assert_eq!(meta[keys::BASE_URL], origin, "{wanted}");
        }
        let meta = placement(&regions, Some("eu"), &master()).unwrap();
        assert_eq!(
            meta[keys::API_BASE_URL],
            "https://app21.connect.trimble.com/tc/api/2.0"
        );
        assert_eq!(meta[keys::REGION], "europe");
        assert_eq!(meta["region.asia"], "https://app31.connect.trimble.com");
        let meta = placement(&regions, None, &master()).unwrap();
        assert_eq!(
            meta[keys::API_BASE_URL],
            "https://app.connect.trimble.com/tc/api/2.0"
        );
    }

    #[test]
    fn unknown_region_names_the_choices() {
        let regions = parse(&resp(LIST)).unwrap();
        let e = placement(&regions, Some("mars"), &master()).unwrap_err();
        assert!(matches!(e, ProviderError::InvalidConfiguration(_)));
        assert!(e.to_string().contains("europe"), "{e}");
    }

    #[test]
    fn no_master_flag_falls_back_to_the_master_url() {
        let regions = parse(&resp(
            r#"[{"location":"x","origin":"https://other.example"}]"#,
        ))
        .unwrap();
        let meta = placement(&regions, None, &master()).unwrap();
        assert_eq!(meta[keys::BASE_URL], "https://app.connect.trimble.com");
        assert!(!meta.contains_key(keys::REGION));
    }

    #[test]
    fn malformed_lists_are_transient() {
        for body in [
            "{}",
            "[]",
            "[1]",
            r#"[{"location":"eu"}]"#,
            r#"[{"origin":"nope"}]"#,
            "<html>",
            "[{",
        ] {
            let e = parse(&resp(body)).unwrap_err();
            assert!(e.is_transient(), "{body}: {e}");
            assert!(e.to_string().starts_with("regions:"), "{e}");
        }
    }
}
