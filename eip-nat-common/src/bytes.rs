//! Byte copies the BPF backend keeps inline.

/// Copies `N` bytes with one volatile store each. A plain copy or `= [0; N]`
/// of more than a few bytes compiles to a call of compiler-builtins'
/// `memcpy`/`memset`, a byte loop that `perf` showed costing as much as the
/// translation itself; volatile stores stay inline and cannot be merged
/// back into such a call.
///
/// `dst` must be valid for writes of `N` bytes: a packet range checked
/// against the packet's end, or a local.
#[inline(always)]
pub fn copy_bytes<const N: usize>(dst: *mut [u8; N], src: &[u8; N]) {
    let dst = dst as *mut u8;
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's `dst` is valid for N bytes (a packet range
        // checked by the program's bounds check, or a local), and i < N.
        unsafe { core::ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte() {
        let mut dst = [0u8; 6];
        copy_bytes(&mut dst, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
    }
}
