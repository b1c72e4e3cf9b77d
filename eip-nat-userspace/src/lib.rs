//! The eip-nat agent as a library: the control-plane model and its rules,
//! the durable store, the datapath handle, host routes, the HTTP API and
//! the agent loop. The `eip-nat` binary is a thin CLI over it; the root
//! tests drive it directly.

pub mod agent;
pub mod api;
pub mod client;
pub mod committer;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod fleet;
pub mod garp;
pub mod gateway;
pub mod logging;
mod map_batch;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod netlink;
pub mod nexthops;
pub mod public_access;
pub mod reads;
pub mod routes;
pub mod server;
pub mod standby;
pub mod status;
pub mod store;
pub mod sysctl;
pub mod top;
pub mod trace;
pub mod tracer;
pub mod usage;
pub mod writer;
