//! eip-nat's datapath: one XDP program, attached to the ingress of both the
//! public and the private interface, translating EIP ↔ private IP.
#![no_std]
#![no_main]

mod arp;
mod decide;
mod express;
mod forward;
mod icmp;
mod icmp_reply;
mod maps;
mod packet;
mod parse;
mod rewrite;
mod stats;
mod trace;
mod translate;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn eip_nat(ctx: XdpContext) -> u32 {
    let role = maps::role(&ctx);
    if let Some(action) = express::forward(&ctx, &role) {
        return action;
    }
    // Kept in a stack slot through volatile accesses: held in registers
    // across the translation, LLVM let an unset one be copied on the path
    // that does not trace, which the verifier refuses ("!read_ok").
    let mut arrived = ([0u8; 4], [0u8; 4]);
    if role.trace {
        // SAFETY: a local.
        unsafe { core::ptr::write_volatile(&mut arrived, trace::addresses(&ctx)) };
    }
    // Every path ends here, so every packet is counted exactly once.
    let verdict = match arp::decide(&ctx, role.l2) {
        Some(v) => v,
        None => translate::translate(&ctx, role.direction, role.fast_path).unwrap_or_else(|v| v),
    };
    if role.trace {
        // SAFETY: as above.
        let arrived = unsafe { core::ptr::read_volatile(&arrived) };
        trace::emit(&ctx, role.direction, verdict, arrived);
    }
    stats::record(&ctx, role.direction, verdict)
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
