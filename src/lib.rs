//! authgate: a gRPC gateway that hands microservices access tokens for third-party APIs,
//! holding the provider credentials, caching tokens and refreshing them before they expire.

pub mod api;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod credentials;
pub mod events;
pub mod plugins;
pub mod proto;
pub mod server;
pub mod store;
