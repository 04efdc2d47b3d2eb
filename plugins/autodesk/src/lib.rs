//! Autodesk Platform Services (APS) provider plugin for authgate: [`AutodeskApsFactory`]
//! (`autodesk_aps`), OAuth v2 at `https://developer.api.autodesk.com/authentication/v2/`.
//!
//! Every upstream call goes through the SDK's [`UpstreamCall`](authgate_plugin_sdk::UpstreamCall)
//! under a named step (see [`provider::steps`]), so each one becomes a redacted, bounded event.
//! Refresh tokens rotate on every use and lapse after 14 days unused
//! ([`Provider::refresh_token_idle_lifetime`](authgate_plugin_sdk::Provider::refresh_token_idle_lifetime)),
//! so the gateway keeps them alive.

mod error;
pub mod provider;

pub use provider::{AutodeskApsFactory, AutodeskApsProvider};
