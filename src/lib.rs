//! authgate: a gRPC gateway that hands microservices access tokens for third-party APIs,
//! holding the provider credentials, caching tokens and refreshing them before they expire.

pub mod api;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod credentials;
pub mod error;
pub mod events;
pub mod metrics;
pub mod plugins;
pub mod proto;
pub mod rate_limit;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhooks;

/// The allocator of every program built on this crate (the gateway, its benchmark servers,
/// the tests): mimalloc keeps the cache's long-lived allocations (tokens, slots) in pages
/// apart from the fetch path's short-lived buffers, and returns freed pages to the OS, so a
/// cached token costs close to its own size in resident memory (BENCHMARKS.md, memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
