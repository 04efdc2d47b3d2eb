//! LSEG / Refinitiv Data Platform provider plugin for authgate: [`LsegRdpFactory`]
//! (`lseg_rdp`), password and refresh grants at `https://api.refinitiv.com/auth/oauth2/v1/token`.
//!
//! Every upstream call goes through the SDK's [`UpstreamCall`](authgate_plugin_sdk::UpstreamCall)
//! under a named step (see [`provider::steps`]), so each one becomes a redacted, bounded event.
//!
//! # Legacy grants
//!
//! RDP signs on with the resource-owner password grant, which RFC 9700 forbids for new
//! designs. This plugin uses it only when the credential opts in with
//! `allow_legacy_password_grant = true`. The SDK gives plugins no way to record an event of
//! their own, so every token obtained by that grant carries
//! `metadata["legacy_grant"] = "password"`; the gateway turns that entry into a
//! `legacy_grant` event. Tokens from the refresh grant carry no such entry.

pub mod provider;

pub use provider::{LsegRdpFactory, LsegRdpProvider};

/// Metadata key marking a token obtained with a legacy grant (value: the grant's name).
pub const LEGACY_GRANT: &str = "legacy_grant";
