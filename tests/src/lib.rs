//! Shared machinery of eip-nat's root tests: packets built independently of
//! the datapath (own checksum code), network-namespace topologies that always
//! clean up, packet capture, and a handle on a running agent.
//!
//! These tests need root: they load BPF programs and create namespaces. They
//! are run by `cargo xtask test`, never skipped.

pub mod agent;
pub mod capture;
pub mod model;
pub mod netns;
pub mod packet;

/// Fails loudly, rather than skipping, when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests load BPF programs and create network namespaces: run them as root (cargo xtask test)");
}
