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

/// Zeroes a plain-integer struct in place with 8-byte volatile stores (see
/// [`copy_bytes`](eip_nat_common::bytes::copy_bytes)); in place, because
/// returning it by value lets LLVM turn the copy back into a `memset` call.
/// `T`'s size must be a multiple of 8.
#[inline(always)]
pub fn zero_in_place<T>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let words = v.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: within `v`; the BPF backend keeps stack slots 8-aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written, and T is plain integers, for which
    // all zeroes is a valid value.
    unsafe { v.assume_init_mut() }
}
