//! TCP/UDP checksums computed from scratch, for replies of overlay services. A task on this
//! node hands its replies over a veth with a partial (offloaded) checksum, which XDP cannot tell
//! from a complete one, so an incremental update would carry the partial value on to the client.
//!
//! The sum covers the pseudo-header and the segment up to the IPv4 total length (never the
//! Ethernet padding after it). `bpf_csum_diff` sums the segment straight from the packet: 512-byte
//! blocks (its limit) in a bounded loop, then one block of each size 256, 128, ... 4 picked by the
//! bits of the length, then the last 1-3 bytes zero-padded by hand. Every block offset is derived
//! from the length, not accumulated, so the verifier sees one state per block, not one per
//! packet size. Blocks start at multiples of 4 of the segment, so their sums line up.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use lb_common::{
    PROTO_TCP,
    csum::{fold, udp_nonzero},
};

use crate::{
    nat::{TCP_CSUM_OFF, UDP_CSUM_OFF, load16, store16},
    parse::{ETH_LEN, IPV4_LEN, L4_OFF, Packet, ptr_at},
};

/// `bpf_csum_diff` sums at most 512 bytes per call.
const BLOCK: usize = 512;
/// 512-byte blocks per segment: without XDP multi-buffer a frame never exceeds a page, so
/// 4096 + 511 bytes cover every segment this program can see.
const MAX_BLOCKS: usize = 8;
const MAX_L4_LEN: usize = MAX_BLOCKS * BLOCK + BLOCK - 1;
/// All ones above MAX_L4_LEN: masking an offset with it changes nothing but tells the verifier
/// the offset's bound.
const OFF_MASK: usize = 0x1fff;
const _: () = assert!(OFF_MASK >= MAX_L4_LEN && (OFF_MASK + 1).is_power_of_two());

/// Replaces the (already translated) packet's TCP/UDP checksum with one computed over the whole
/// segment. A UDP checksum of 0 ("none") stays 0. Returns false if the packet cannot be summed
/// (the bounds `parse` checked make that unreachable; the verifier needs the checks).
#[inline(always)]
pub fn recompute_l4_checksum(ctx: &XdpContext, pkt: &Packet) -> bool {
    let l4_len = (pkt.ip_len as usize).wrapping_sub(IPV4_LEN);
    if l4_len > MAX_L4_LEN {
        return false;
    }
    let is_tcp = pkt.key.proto == PROTO_TCP;
    let field_off = L4_OFF + if is_tcp { TCP_CSUM_OFF } else { UDP_CSUM_OFF };
    let Some(field) = ptr_at::<[u8; 2]>(ctx, field_off) else { return false };
    let field = field as *mut u8;
    // SAFETY: two bytes bounds-checked by ptr_at.
    unsafe {
        if !is_tcp && load16(field) == 0 {
            return true;
        }
        store16(field, 0);
    }
    let Some(pseudo) = pseudo_header_sum(ctx, pkt.key.proto, l4_len) else { return false };
    let Some(segment) = segment_sum(ctx, l4_len) else { return false };
    let check = !fold(pseudo + segment);
    // SAFETY: as above.
    unsafe { store16(field, if is_tcp { check } else { udp_nonzero(check) }) };
    true
}

/// Sum of the IPv4 pseudo-header (addresses as now in the packet, protocol, L4 length).
#[inline(always)]
fn pseudo_header_sum(ctx: &XdpContext, proto: u8, l4_len: usize) -> Option<u64> {
    let addrs = ptr_at::<[u8; 8]>(ctx, ETH_LEN + 12)?;
    // SAFETY: bounds-checked by ptr_at.
    let a = unsafe { addrs.read_unaligned() };
    let words = [[a[0], a[1]], [a[2], a[3]], [a[4], a[5]], [a[6], a[7]], [0, proto], (l4_len as u16).to_be_bytes()];
    let mut sum = 0u64;
    for w in words {
        sum += u16::from_ne_bytes(w) as u64;
    }
    Some(sum)
}

/// One's-complement sum of the segment's `l4_len` bytes, zero-padded to an even length.
#[inline(always)]
fn segment_sum(ctx: &XdpContext, l4_len: usize) -> Option<u64> {
    let mut sum = 0u32;
    for i in 0..MAX_BLOCKS {
        if (i + 1) * BLOCK > l4_len {
            break;
        }
        sum = add_block::<BLOCK>(ctx, i * BLOCK, sum)?;
    }
    sum = add_block_if_len_has::<256>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<128>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<64>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<32>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<16>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<8>(ctx, l4_len, sum)?;
    sum = add_block_if_len_has::<4>(ctx, l4_len, sum)?;
    Some(sum as u64 + tail_sum(ctx, l4_len)?)
}

/// Adds the `N`-byte block that bit `N` of the length stands for: it starts where the blocks
/// of larger sizes end, i.e. at the length with every bit below `2N` cleared.
#[inline(always)]
fn add_block_if_len_has<const N: usize>(ctx: &XdpContext, l4_len: usize, sum: u32) -> Option<u32> {
    if l4_len & N == 0 {
        return Some(sum);
    }
    add_block::<N>(ctx, l4_len & !(2 * N - 1), sum)
}

/// Adds `N` bytes at segment offset `at` (a multiple of 4) with `bpf_csum_diff`.
#[inline(always)]
fn add_block<const N: usize>(ctx: &XdpContext, at: usize, sum: u32) -> Option<u32> {
    let block = ptr_at::<[u8; N]>(ctx, L4_OFF + (at & OFF_MASK))?;
    // SAFETY: N bytes (a multiple of 4, at most 512) bounds-checked by ptr_at; read only.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, block as *mut u32, N as u32, sum) };
    if r < 0 { None } else { Some(r as u32) }
}

/// The last `l4_len % 4` bytes, as 16-bit words, the odd byte padded with zero.
#[inline(always)]
fn tail_sum(ctx: &XdpContext, l4_len: usize) -> Option<u64> {
    let mut sum = 0u64;
    if l4_len & 2 != 0 {
        let p = ptr_at::<[u8; 2]>(ctx, L4_OFF + (l4_len & !3 & OFF_MASK))?;
        // SAFETY: bounds-checked by ptr_at.
        sum += u16::from_ne_bytes(unsafe { p.read_unaligned() }) as u64;
    }
    if l4_len & 1 != 0 {
        let p = ptr_at::<u8>(ctx, L4_OFF + (l4_len & !1 & OFF_MASK))?;
        // SAFETY: bounds-checked by ptr_at.
        sum += u16::from_ne_bytes([unsafe { p.read() }, 0]) as u64;
    }
    Some(sum)
}
