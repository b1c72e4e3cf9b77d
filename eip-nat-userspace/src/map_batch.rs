//! Many elements of a map written in one system call
//! (`BPF_MAP_UPDATE_BATCH`, Linux 5.6, commit aa2e93b8e58e "bpf: Add
//! generic support for update and delete batch ops"), where aya 0.14 offers
//! one call per element. A bulk load writes two addresses and a counter slot
//! per association; per element, the system call cost more than the write.

use std::os::fd::{AsFd, AsRawFd};

use aya::{maps::MapData, Pod};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Elements per call: the kernel copies keys and values one by one, so
/// this only bounds how long one call runs before the next.
const CHUNK: usize = 65_536;

/// Writes `keys[i]` → `values[i]` (with `BPF_ANY`) for every `i`, in
/// chunks of [`CHUNK`]. A per-CPU map takes `cpus` values per key, one per
/// possible CPU, each padded to 8 bytes (`bpf_map_value_size`): `V` must
/// be a multiple of 8 long then. On an error the elements before the
/// failed one are written, as with one call per element.
pub fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
    cpus: usize,
) -> std::io::Result<()> {
    assert_eq!(keys.len() * cpus, values.len(), "one value per key and CPU");
    assert!(cpus == 1 || size_of::<V>().is_multiple_of(8));
    let fd = map.fd().as_fd().as_raw_fd();
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK * cpus)) {
        update_chunk(fd, k, v)?;
    }
    Ok(())
}

fn update_chunk<K: Pod, V: Pod>(fd: i32, keys: &[K], values: &[V]) -> std::io::Result<()> {
    let mut attr = batch_attr(fd, keys.as_ptr() as u64, values.as_ptr() as u64, keys.len());
    call(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// One chunk of a batched lookup (`BPF_MAP_LOOKUP_BATCH`, same commit):
/// up to `keys.len()` elements after `from` (None: from the start) into
/// `keys` and `values` (`cpus` values per key for a per-CPU map). Returns
/// how many were copied and where the next chunk starts; `None` there
/// once the map is read to its end.
fn lookup<K: Pod, V: Pod>(
    map: &MapData,
    from: Option<K>,
    keys: &mut [K],
    values: &mut [V],
    cpus: usize,
) -> std::io::Result<(usize, Option<K>)> {
    assert_eq!(keys.len() * cpus, values.len(), "one value per key and CPU");
    let fd = map.fd().as_fd().as_raw_fd();
    let mut next = std::mem::MaybeUninit::<K>::zeroed();
    let mut attr = batch_attr(
        fd,
        keys.as_mut_ptr() as u64,
        values.as_mut_ptr() as u64,
        keys.len(),
    );
    attr.batch.in_batch = from.as_ref().map_or(0, |k| k as *const K as u64);
    attr.batch.out_batch = next.as_mut_ptr() as u64;
    let rc = call(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
    // SAFETY: the kernel wrote back how many it copied.
    let count = unsafe { attr.batch.count } as usize;
    match rc {
        // SAFETY: on success the kernel wrote the next key.
        Ok(()) => Ok((count, Some(unsafe { next.assume_init() }))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((count, None)),
        Err(e) => Err(e),
    }
}

/// Reads the whole map with [`lookup`], `chunk` keys per system call,
/// handing each chunk's keys and values (`cpus` values per key) to
/// `visit`. `Ok(false)`, with nothing visited, if this kernel (or this map
/// type) has no batch lookup: the caller goes element by element.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    chunk: usize,
    cpus: usize,
    mut visit: impl FnMut(&[K], &[V]),
) -> std::io::Result<bool> {
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk * cpus];
    let mut from = None;
    loop {
        let (count, next) = match lookup(map, from, &mut keys, &mut values, cpus) {
            Ok(read) => read,
            Err(e) if from.is_none() && unsupported(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        visit(&keys[..count], &values[..count * cpus]);
        match next {
            Some(k) if count > 0 => from = Some(k),
            _ => return Ok(true),
        }
    }
}

/// Whether a batch command failed because this kernel (or this map
/// type) has none: the caller goes element by element instead.
fn unsupported(e: &std::io::Error) -> bool {
    // ENOTSUPP (524), the kernel's own, is in no libc.
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// `union bpf_attr` for a batch command on `fd`, over `count` elements.
fn batch_attr(fd: i32, keys: u64, values: u64, count: usize) -> bpf_attr {
    // SAFETY: all zeroes is a valid bpf_attr (a union of plain integers).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the union's `batch` member.
    let batch = unsafe { &mut attr.batch };
    batch.map_fd = fd as u32;
    batch.keys = keys;
    batch.values = values;
    batch.count = count as u32;
    attr
}

fn call(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<()> {
    // SAFETY: the kernel reads and writes only the buffers `attr` points
    // at, which the callers keep alive and sized for `count` elements,
    // and `attr` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
