//! Bounds-checked access to packet bytes.

use aya_ebpf::programs::XdpContext;

/// Pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
/// Safe to call: only dereferencing the result is unsafe, and the check here
/// is what makes that dereference sound (and what the verifier requires).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// True if the packet holds at least `len` bytes.
#[inline(always)]
pub fn holds(ctx: &XdpContext, len: usize) -> bool {
    ctx.data() + len <= ctx.data_end()
}

/// Frame length, for byte counters.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
