//! Trimble provider plugins for authgate: [`TrimbleConnectFactory`] (`trimble_connect`) and
//! [`TrimbleAgFactory`] (`trimble_ag`).
//!
//! Both authenticate against Trimble Identity. Every upstream call goes through the SDK's
//! [`UpstreamCall`](authgate_plugin_sdk::UpstreamCall) under a named step (see
//! [`identity::steps`]), so each one becomes a redacted, bounded event.
//!
//! # Legacy grants
//!
//! The SDK gives plugins no way to record an event of their own, so a token obtained with a
//! legacy grant (the resource-owner password grant, which RFC 9700 forbids for new designs)
//! carries `metadata["legacy_grant"] = "password"`; the gateway turns that entry into a
//! `legacy_grant` event. `trimble_connect` sets it for `grant = "password"`.
//!
//! # Metadata
//!
//! `trimble_connect` tokens carry the regional base URLs discovered from the master region
//! (see [`regions::keys`]): `base_url`, `api_base_url`, `region`, and `region.<name>` for
//! every region Trimble lists.

pub mod ag;
pub mod connect;
pub mod identity;
pub mod regions;

pub use ag::{TrimbleAgFactory, TrimbleAgProvider};
pub use connect::{TrimbleConnectFactory, TrimbleConnectProvider};

/// Metadata key marking a token obtained with a legacy grant (value: the grant's name).
pub const LEGACY_GRANT: &str = "legacy_grant";
