//! Internet checksum arithmetic (RFC 1071 sums, RFC 1624 incremental updates). Words are taken
//! in the packet's own byte order, which one's-complement sums do not care about, so the
//! datapath never swaps bytes to update a checksum.

/// Folds a 64-bit one's-complement accumulator to 16 bits (not inverted).
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 32-bit field changes from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum =
        (!check) as u64 + (!old >> 16) as u64 + (!old & 0xffff) as u64 + (new >> 16) as u64 + (new & 0xffff) as u64;
    !fold(sum)
}

/// New checksum after a 16-bit field changes from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}

/// UDP's rule: a computed checksum of 0 is sent as 0xffff, since 0 means "no checksum".
#[inline(always)]
pub const fn udp_nonzero(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum over big-endian words, the reference the incremental forms must match.
    fn reference(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| *w as u64).sum())
    }

    #[test]
    fn incremental_updates_match_a_full_recomputation() {
        let mut words = [0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4006, 0, 0xc612, 0x0001, 0xc612, 0x0102];
        let mut check = reference(&words);
        let samples = [0x0000_0000u32, 0xffff_ffff, 0xc612_0a0b, 0x0001_ffff, 0x8000_0001];
        for new in samples {
            let old = ((words[8] as u32) << 16) | words[9] as u32;
            check = replace4(check, old, new);
            words[8] = (new >> 16) as u16;
            words[9] = new as u16;
            assert_eq!(check, reference(&words), "replace4 to {new:#x}");
        }
        for new in [0u16, 0xffff, 0x1234, 0x8001] {
            check = replace2(check, words[2], new);
            words[2] = new;
            assert_eq!(check, reference(&words), "replace2 to {new:#x}");
        }
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0xffff + 0xffff), 0xffff);
        assert_eq!(fold(0x1_0000_0000), 1);
        assert_eq!(fold(u64::MAX), 0xffff);
    }

    #[test]
    fn udp_zero_becomes_all_ones() {
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(7), 7);
    }
}
