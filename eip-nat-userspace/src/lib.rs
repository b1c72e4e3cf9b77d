//! The eip-nat agent as a library: the datapath handle, the association
//! rules, the control protocol and the agent loop. The `eip-nat` binary is a
//! thin CLI over it; the root tests drive it directly.

pub mod agent;
pub mod associations;
pub mod control;
pub mod datapath;
pub mod gateway;
pub mod model;
pub mod store;
pub mod rig;
pub mod sysctl;
