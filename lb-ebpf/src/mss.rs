//! TCP MSS clamping on SYN and SYN-ACK, so segments fit the overlay path to the backends.
//!
//! The options (at most 40 bytes) are copied to the stack with `bpf_xdp_load_bytes` and walked
//! there in a loop bounded by the 40 byte positions (every layout is walked to its end, NOP runs
//! included), so the walk needs no variable-offset packet pointers. A larger MSS
//! is lowered with `bpf_xdp_store_bytes` and the TCP checksum updated incrementally. The MSS
//! value may start at an odd offset of the segment (e.g. after one NOP): its two bytes then sit
//! in the low half of one checksum word and the high half of the next, which adds to the sum as
//! the byte-swapped value, so the update uses the swapped words.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use lb_common::csum::replace2;

use crate::{
    nat::{TCP_CSUM_OFF, load16, store16},
    parse::{L4_OFF, TCP_LEN, ptr_at},
};

const TCP_OPTS_OFF: usize = L4_OFF + TCP_LEN;
const MAX_OPTS_LEN: usize = 40;
/// The stack copy of the options: a power of two above 40, so a mask proves the load's bound.
const OPTS_BUF: usize = 64;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: usize = 4;

/// Lowers the MSS option of this TCP SYN or SYN-ACK to `max_mss` if it is larger. Segments
/// without an MSS option, or with malformed options, are left alone.
#[inline(always)]
pub fn clamp_mss(ctx: &XdpContext, max_mss: u16) {
    let Some(opts_len) = options_len(ctx) else { return };
    let mut opts = [0u8; OPTS_BUF];
    // opts_len is already 1..=40; written as 1 + (n - 1) % 64 the verifier sees 1..=64 too.
    let load_len = ((opts_len - 1) & (OPTS_BUF - 1)) + 1;
    // SAFETY: load_len is in 1..=64 and opts holds 64 bytes; the helper checks the packet bounds.
    let loaded = unsafe {
        bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, TCP_OPTS_OFF as u32, opts.as_mut_ptr() as *mut _, load_len as u32)
    };
    if loaded != 0 {
        return;
    }
    let Some(at) = find_mss_option(&opts) else { return };
    if at + OPT_MSS_LEN > opts_len {
        return;
    }
    let (Some(&hi), Some(&lo)) = (opts.get(at + 2), opts.get(at + 3)) else { return };
    if u16::from_be_bytes([hi, lo]) <= max_mss {
        return;
    }
    let mut new = max_mss.to_be_bytes();
    let value_off = TCP_OPTS_OFF + at + 2;
    // SAFETY: two bytes inside the options just loaded; the helper checks the bounds again.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.as_ptr() as *mut _, value_off as u32, new.as_mut_ptr() as *mut _, 2) };
    if stored != 0 {
        return;
    }
    // The options start at an even offset of the segment, so `at` has the value's parity.
    let (old_word, new_word) = if at & 1 == 0 {
        (u16::from_ne_bytes([hi, lo]), u16::from_ne_bytes(new))
    } else {
        (u16::from_ne_bytes([lo, hi]), u16::from_ne_bytes([new[1], new[0]]))
    };
    update_tcp_checksum(ctx, old_word, new_word);
}

/// Length of the TCP options (1..=40), or None if there are none.
#[inline(always)]
fn options_len(ctx: &XdpContext) -> Option<usize> {
    let doff = ptr_at::<u8>(ctx, L4_OFF + 12)?;
    // SAFETY: bounds-checked by ptr_at.
    let hdr_len = ((unsafe { doff.read() } >> 4) as usize) * 4;
    let opts_len = hdr_len.checked_sub(TCP_LEN)?;
    if opts_len == 0 || opts_len > MAX_OPTS_LEN { None } else { Some(opts_len) }
}

/// Offset of the MSS option in `opts`, whose bytes past the options are zero, i.e. EOL.
///
/// Walks the byte positions in order rather than jumping from option to option: position `at`
/// is a loop constant and only `next` (where the next option starts) depends on the packet, so
/// the verifier sees fixed stack offsets and prunes states that differ only in `next`. Nothing
/// in the loop compares against the options' length (the zero padding ends the walk), since
/// that length is also the load's size and every comparison against it would split states.
/// The caller checks that the option found lies inside the options.
#[inline(always)]
fn find_mss_option(opts: &[u8; OPTS_BUF]) -> Option<usize> {
    let mut next = 0usize;
    for at in 0..MAX_OPTS_LEN {
        if at != next {
            continue;
        }
        let kind = *opts.get(at)?;
        if kind == OPT_EOL {
            return None;
        }
        if kind == OPT_NOP {
            next = at + 1;
            continue;
        }
        let opt_len = *opts.get(at + 1)? as usize;
        if kind == OPT_MSS {
            return if opt_len == OPT_MSS_LEN { Some(at) } else { None };
        }
        if opt_len < 2 {
            return None;
        }
        next = at + opt_len;
    }
    None
}

#[inline(always)]
fn update_tcp_checksum(ctx: &XdpContext, old_word: u16, new_word: u16) {
    let Some(check) = ptr_at::<[u8; 2]>(ctx, L4_OFF + TCP_CSUM_OFF) else { return };
    let check = check as *mut u8;
    // SAFETY: two bytes bounds-checked by ptr_at.
    unsafe { store16(check, replace2(load16(check), old_word, new_word)) };
}
