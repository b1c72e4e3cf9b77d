//! eip-nat's datapath: one XDP program, attached to the ingress of both the
//! public and the private interface, translating EIP ↔ private IP.
#![no_std]
#![no_main]

mod decide;
mod forward;
mod icmp;
mod icmp_reply;
mod maps;
mod packet;
mod parse;
mod rewrite;
mod stats;
mod translate;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn eip_nat(ctx: XdpContext) -> u32 {
    let (direction, fast_path) = maps::direction_of(&ctx);
    // Every path ends here, so every packet is counted exactly once.
    let verdict = translate::translate(&ctx, direction, fast_path).unwrap_or_else(|v| v);
    stats::record(&ctx, direction, verdict)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the kernel lets the program use every helper it needs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
