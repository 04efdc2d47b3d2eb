//! authgate's benchmark harness as a library: the local token endpoint, the bare tonic
//! baseline, the HTTP/2 load generator, the example ticket plugin in and out of process,
//! and the scenarios, shared by the `authgate-bench` binary and the tests. See BENCHMARKS.md at the repository root.

// A measurement tool: it times calls on the real clocks (outside any clock the gateway
// uses) and hands the gateway its secret through the environment, as an operator would.
#![allow(clippy::disallowed_methods)]

pub mod clock;
pub mod echo;
pub mod endpoint;
pub mod gateway;
pub mod load;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod ticket;
