//! Programs for veth rigs (tests, demo, benchmarks); the agent never loads
//! them.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

/// Does nothing but exist. A veth hands frames that another interface
/// redirected into it (`ndo_xdp_xmit`) to its peer only when the peer runs
/// NAPI, which an attached XDP program turns on (drivers/net/veth.c,
/// `veth_xdp_xmit`); without one those frames are dropped.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
