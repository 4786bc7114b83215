//! The `bpf(2)` map commands aya 0.14 does not offer, through the raw syscall: batch reads,
//! writes and deletes (`BPF_MAP_*_BATCH`, Linux 5.6+) and the deletion of a map-of-maps entry.
//! aya's iterator costs two syscalls an entry (get-next-key, then lookup), which for a table of
//! up to two million entries is seconds of system time, and writing a Maglev table slot by slot
//! is one syscall a slot. Opening, pinning and typing maps stays with aya.
//!
//! A dump of a live map is not a snapshot: each hash bucket is copied under its lock, so an
//! entry appears at most once, but entries added or removed meanwhile may or may not be seen.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd};

use aya::Pod;
use aya::maps::{MapData, MapError, MapType};

/// `enum bpf_cmd` in `linux/bpf.h` (libc has no constants for them).
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Keys per `BPF_MAP_DELETE_BATCH`: the kernel loops over however many it is given, this only
/// bounds the time spent in one syscall.
const DELETE_CHUNK: usize = 1 << 16;

/// Why a batch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("cannot read the map's info: {source}")]
    Info { source: MapError },
    /// Per-CPU maps would need `value_size * ncpus` per entry; they are not handled.
    #[error("map type {0:?}: this operation handles only {1}")]
    MapType(MapType, &'static str),
    #[error("{keys} keys but {values} values")]
    Lengths { keys: usize, values: usize },
    #[error("the map's key size is {map} bytes, the key type's {ty}")]
    KeySize { map: u32, ty: usize },
    #[error("the map's value size is {map} bytes, the value type's {ty}")]
    ValueSize { map: u32, ty: usize },
    #[error("a hash bucket holds more than {0} entries")]
    BucketTooLarge(u32),
    #[error("bpf({cmd}): {source}")]
    Syscall { cmd: &'static str, source: io::Error },
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// The `elem` member of `union bpf_attr` (lookup, update, delete of one element).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
const _: () = assert!(size_of::<ElemAttr>() == 32);

/// Runs one batch command. The kernel writes the number of elements processed back into
/// `attr.count`, on success and on errors other than `EFAULT`.
///
/// # Safety
///
/// The pointers in `attr` must be null or valid for what `cmd` reads and writes through them.
unsafe fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live, initialised `bpf_attr` prefix of the size passed; the kernel
    // reads it and writes only `count` within it. The pointers inside are the caller's contract.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Map types whose entries are one value each, keyed by a hash.
const HASHES: (&[MapType], &str) = (&[MapType::Hash, MapType::LruHash], "hash and LRU hash maps");
/// The same, and plain arrays.
const HASHES_AND_ARRAYS: (&[MapType], &str) =
    (&[MapType::Hash, MapType::LruHash, MapType::Array], "hash, LRU hash and array maps");

/// Checks that `map` is of one of `types` with keys of `K`'s size (and values of `value_size`,
/// if given); returns its `max_entries`. This is what keeps the kernel's reads and writes
/// within our buffers.
fn check<K: Pod>(
    map: &MapData,
    value_size: Option<usize>,
    (types, what): (&[MapType], &'static str),
) -> Result<u32, BatchError> {
    let info = map.info().map_err(|source| BatchError::Info { source })?;
    let map_type = info.map_type().map_err(|source| BatchError::Info { source })?;
    if !types.contains(&map_type) {
        return Err(BatchError::MapType(map_type, what));
    }
    if info.key_size() as usize != size_of::<K>() {
        return Err(BatchError::KeySize { map: info.key_size(), ty: size_of::<K>() });
    }
    if let Some(ty) = value_size
        && info.value_size() as usize != ty
    {
        return Err(BatchError::ValueSize { map: info.value_size(), ty });
    }
    Ok(info.max_entries())
}

fn map_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// Every (key, value) of a hash, LRU hash or array map, in chunks of `chunk` entries per syscall.
///
/// A chunk smaller than one hash bucket makes the kernel answer `ENOSPC`; the chunk is then
/// doubled and the call retried, as libbpf's callers do.
pub fn dump<K: Pod, V: Pod>(map: &MapData, chunk: u32) -> Result<Vec<(K, V)>, BatchError> {
    let max_entries = check::<K>(map, Some(size_of::<V>()), HASHES_AND_ARRAYS)?;
    let fd = map_fd(map);
    let mut chunk = chunk.max(1);
    let mut out = Vec::new();
    let (mut keys, mut values) = (Vec::<K>::new(), Vec::<V>::new());
    // The position between calls. For hash maps the kernel reads and writes a u32 bucket index
    // here; the buffer is key-sized (what other map types use) and u64-aligned to be safe.
    let mut token = vec![0u64; size_of::<K>().div_ceil(8).max(1)];
    let mut started = false;
    loop {
        keys.clear();
        values.clear();
        keys.reserve(chunk as usize);
        values.reserve(chunk as usize);
        // Zeroed, so that the slots the kernel reports as filled are initialised memory even if
        // it ever reported more than it wrote.
        keys.spare_capacity_mut()[..chunk as usize].fill(MaybeUninit::zeroed());
        values.spare_capacity_mut()[..chunk as usize].fill(MaybeUninit::zeroed());
        let mut attr = BatchAttr {
            in_batch: if started { token.as_ptr() as u64 } else { 0 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` have room for `chunk` elements of the map's key and value
        // sizes (checked above: `K` and `V` are exactly those sizes, and not per-CPU), and
        // `token` for the kernel's u32 bucket index; all outlive the call.
        let end = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(()) => false,
            // The end of the map; `count` entries were still copied.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // The next bucket alone is larger than `chunk` (nothing was copied): grow and retry.
            // The kernel has written the position of that bucket to `token`, so starting from it
            // is as good as starting again from where we were.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                let limit = max_entries.max(chunk);
                if chunk >= limit {
                    return Err(BatchError::BucketTooLarge(chunk));
                }
                chunk = chunk.saturating_mul(2).min(limit);
                continue;
            }
            Err(source) => {
                return Err(BatchError::Syscall { cmd: "BPF_MAP_LOOKUP_BATCH", source });
            }
        };
        let n = attr.count.min(chunk) as usize;
        // SAFETY: the first `n <= chunk` slots are initialised (zeroed above, then overwritten
        // by the kernel with whole keys and values), and any bytes are a valid `K` or `V` (`Pod`).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.iter().copied().zip(values.iter().copied()));
        started = true;
        if end {
            return Ok(out);
        }
    }
}

/// Deletes `keys` (missing keys are not an error: the kernel reports ENOENT, treat as success
/// and keep going past that key), returns how many were deleted.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<usize, BatchError> {
    check::<K>(map, None, HASHES)?;
    let fd = map_fd(map);
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(DELETE_CHUNK);
        let mut attr = BatchAttr { keys: rest.as_ptr() as u64, count: n as u32, map_fd: fd, ..BatchAttr::default() };
        // SAFETY: `rest` holds `n` contiguous keys of the map's key size (checked above), which
        // the kernel only reads; the other pointers are null and ignored by this command.
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        let done = (attr.count as usize).min(n);
        deleted += done;
        match result {
            Ok(()) => rest = &rest[n..],
            // The kernel stops at the first missing key, `rest[done]`: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(done + 1).min(rest.len())..],
            Err(source) => {
                return Err(BatchError::Syscall { cmd: "BPF_MAP_DELETE_BATCH", source });
            }
        }
    }
    Ok(deleted)
}

/// Writes `keys[i] -> values[i]` (create or replace) in one syscall per [`DELETE_CHUNK`]
/// entries. A hash map that is full fails with `E2BIG` after the entries before it were
/// written; an LRU hash evicts instead.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    check::<K>(map, Some(size_of::<V>()), HASHES_AND_ARRAYS)?;
    if keys.len() != values.len() {
        return Err(BatchError::Lengths { keys: keys.len(), values: values.len() });
    }
    let fd = map_fd(map);
    for (keys, values) in keys.chunks(DELETE_CHUNK).zip(values.chunks(DELETE_CHUNK)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` contiguous keys and values of the map's sizes
        // (checked above), which the kernel only reads.
        unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }
            .map_err(|source| BatchError::Syscall { cmd: "BPF_MAP_UPDATE_BATCH", source })?;
    }
    Ok(())
}

/// Puts `inner[i]` into slot `slots[i]` of the map of maps `outer`, replacing what was there, in
/// one syscall: the kernel waits for running programs (an RCU grace period, milliseconds) once
/// per call rather than once per slot.
pub fn set_inner_maps(outer: &MapData, slots: &[u32], inner: &[&MapData]) -> Result<(), BatchError> {
    check::<u32>(outer, Some(size_of::<u32>()), (&[MapType::ArrayOfMaps], "array-of-maps maps"))?;
    if slots.len() != inner.len() {
        return Err(BatchError::Lengths { keys: slots.len(), values: inner.len() });
    }
    let fds: Vec<u32> = inner.iter().map(|m| map_fd(m)).collect();
    let mut attr = BatchAttr {
        keys: slots.as_ptr() as u64,
        values: fds.as_ptr() as u64,
        count: slots.len() as u32,
        map_fd: map_fd(outer),
        ..BatchAttr::default()
    };
    // SAFETY: `slots` and `fds` hold `count` u32 keys and values (the outer map's sizes, checked
    // above), which the kernel only reads; every fd stays open for the call (`inner` borrows).
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }
        .map_err(|source| BatchError::Syscall { cmd: "BPF_MAP_UPDATE_BATCH", source })?;
    Ok(())
}

/// Deletes one entry of any map keyed by a `u32` (a map-of-maps slot included); `Ok(false)`:
/// there was none.
pub fn delete_one(map: &MapData, key: u32) -> Result<bool, BatchError> {
    let mut attr = ElemAttr { map_fd: map_fd(map), key: &key as *const u32 as u64, ..ElemAttr::default() };
    // SAFETY: `attr` is a live `bpf_attr` prefix of the size passed; the kernel reads the 4-byte
    // key through `attr.key` (every map given here has 4-byte keys, else it answers EINVAL).
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_ELEM, &mut attr as *mut ElemAttr, size_of::<ElemAttr>()) };
    if ret == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        source => Err(BatchError::Syscall { cmd: "BPF_MAP_DELETE_ELEM", source }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as StdHashMap;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::Instant;

    use aya::maps::{HashMap, IterableMap, Map, PerCpuHashMap};

    use super::*;

    /// Connection-table-like sizes: 16-byte key, 72-byte value.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct Key {
        a: u64,
        b: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Value([u64; 9]);
    // SAFETY: plain integers without padding; every bit pattern is valid.
    unsafe impl Pod for Key {}
    // SAFETY: as above.
    unsafe impl Pod for Value {}

    const N: u64 = 100_000;

    fn key(i: u64) -> Key {
        Key { a: i.wrapping_mul(0x9e37_79b9_7f4a_7c15), b: !i }
    }

    fn value(i: u64) -> Value {
        Value(std::array::from_fn(|w| i * 16 + w as u64))
    }

    /// These tests create BPF maps: they need root and fail loudly without it.
    fn need_root() {
        assert!(nix::unistd::Uid::effective().is_root(), "the batch tests create BPF maps: run them as root");
    }

    /// A standalone LRU hash map (aya 0.14 can create only plain hash maps without an object).
    fn lru_map(max_entries: u32) -> HashMap<MapData, Key, Value> {
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: size_of::<Key>() as u32,
            value_size: size_of::<Value>() as u32,
            max_entries,
            map_flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_CREATE, of the size passed.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const CreateAttr, size_of::<CreateAttr>())
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let map = Map::from_map_data(MapData::from_fd(fd).unwrap()).unwrap();
        HashMap::try_from(map).unwrap()
    }

    fn fill(map: &mut HashMap<MapData, Key, Value>, n: u64) {
        for i in 0..n {
            map.insert(key(i), value(i), 0).unwrap();
        }
    }

    /// Checks that `dumped` is exactly the entries `i` of `expected`, with their values.
    fn assert_exact(dumped: Vec<(Key, Value)>, expected: impl Iterator<Item = u64>) {
        let len = dumped.len();
        let got: StdHashMap<Key, Value> = dumped.into_iter().collect();
        assert_eq!(got.len(), len, "a key was dumped twice");
        let mut want = 0;
        for i in expected {
            assert_eq!(got.get(&key(i)), Some(&value(i)), "entry {i}");
            want += 1;
        }
        assert_eq!(len, want);
    }

    fn dump_delete_dump(mut map: HashMap<MapData, Key, Value>, what: &str) {
        fill(&mut map, N);

        let t = Instant::now();
        let dumped = dump::<Key, Value>(map.map(), 4096).unwrap();
        let batched = t.elapsed();
        let t = Instant::now();
        let iterated = map.iter().map(Result::unwrap).count();
        let iter = t.elapsed();
        eprintln!("{what}, {N} entries: dump (chunks of 4096) {batched:?}, aya iter() {iter:?}");
        assert_eq!(iterated as u64, N);
        assert_exact(dumped, 0..N);

        // Even keys, with missing ones mixed in (first, runs of two, last).
        let mut doomed = vec![key(N + 1)];
        for i in (0..N).step_by(2) {
            doomed.push(key(i));
            if i % 1000 == 0 {
                doomed.extend([key(N + 2 + i), key(N + 3 + i)]);
            }
        }
        doomed.push(key(N + 5));
        let t = Instant::now();
        assert_eq!(delete(map.map(), &doomed).unwrap() as u64, N / 2);
        eprintln!(
            "{what}: delete of {} keys ({} missing) {:?}",
            doomed.len(),
            doomed.len() as u64 - N / 2,
            t.elapsed()
        );
        assert_exact(dump(map.map(), 4096).unwrap(), (1..N).step_by(2));

        assert_eq!(delete(map.map(), &doomed).unwrap(), 0);
        assert_eq!(delete::<Key>(map.map(), &[]).unwrap(), 0);
    }

    #[test]
    fn batch_lru_hash() {
        need_root();
        dump_delete_dump(lru_map(512 * 1024), "LRU hash");
    }

    #[test]
    fn batch_hash() {
        need_root();
        dump_delete_dump(HashMap::create(512 * 1024, 0).unwrap(), "hash");
    }

    /// Chunks smaller than a bucket (ENOSPC) and an empty map.
    #[test]
    fn batch_small_chunks() {
        need_root();
        let mut map = lru_map(1024);
        assert!(dump::<Key, Value>(map.map(), 1).unwrap().is_empty());
        fill(&mut map, 900);
        assert_exact(dump(map.map(), 1).unwrap(), 0..900);
        assert_exact(dump(map.map(), 7).unwrap(), 0..900);
    }

    #[test]
    fn batch_rejects_mismatches() {
        need_root();
        let map = lru_map(16);
        assert!(matches!(dump::<Key, [u8; 8]>(map.map(), 64), Err(BatchError::ValueSize { map: 72, ty: 8 })));
        assert!(matches!(dump::<u64, Value>(map.map(), 64), Err(BatchError::KeySize { map: 16, ty: 8 })));
        assert!(matches!(delete::<u32>(map.map(), &[1]), Err(BatchError::KeySize { .. })));
        let percpu = PerCpuHashMap::<MapData, Key, Value>::create(16, 0).unwrap();
        let err = dump::<Key, Value>(percpu.map(), 64).unwrap_err();
        assert!(matches!(err, BatchError::MapType(MapType::PerCpuHash, _)), "{err}");
    }
}
