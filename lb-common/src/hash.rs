//! The flow hash that picks a Maglev slot. Pure and loop-free, so the verifier accepts it and the
//! host can test its spread.

/// Murmur3's 32-bit finaliser: every input bit affects every output bit.
#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// Hash of a connection's client side and frontend, the input of Maglev slot selection.
#[inline(always)]
pub const fn flow_hash(src_addr: [u8; 4], dst_addr: [u8; 4], src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let mut h = 0x5157_4c42; // "SWLB"
    h = mix(h, u32::from_be_bytes(src_addr));
    h = mix(h, u32::from_be_bytes(dst_addr));
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    fmix32(h)
}

/// Hash of the client address alone, for services with sticky sessions.
#[inline(always)]
pub const fn client_hash(src_addr: [u8; 4]) -> u32 {
    fmix32(mix(0x5157_4c42, u32::from_be_bytes(src_addr)))
}

/// Hash of a socket and the frontend it names, the input of Maglev slot selection in the socket
/// programs (the socket's own address is not chosen yet at connect time).
#[inline(always)]
pub const fn socket_hash(socket_cookie: u64, frontend: [u8; 4], port: u16, proto: u8) -> u32 {
    let mut h = 0x5157_4c42;
    h = mix(h, socket_cookie as u32);
    h = mix(h, (socket_cookie >> 32) as u32);
    h = mix(h, u32::from_be_bytes(frontend));
    h = mix(h, ((port as u32) << 8) | proto as u32);
    fmix32(h)
}

/// Hash of a network namespace, the client identity of sticky services in the socket programs:
/// every socket of one container goes to the same backend.
#[inline(always)]
pub const fn namespace_hash(netns_cookie: u64) -> u32 {
    fmix32(mix(mix(0x5157_4c42, netns_cookie as u32), (netns_cookie >> 32) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sequential_ports_evenly_over_a_prime_table() {
        const SLOTS: usize = 101;
        let mut buckets = [0u32; SLOTS];
        for port in 0..50_500u32 {
            let h = flow_hash([198, 18, 0, 1], [198, 18, 1, 1], port as u16, 80, 6);
            buckets[h as usize % SLOTS] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 400 && *max < 600, "min {min} max {max}");
    }

    #[test]
    fn depends_on_every_field() {
        let base = flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80, 6);
        assert_ne!(base, flow_hash([1, 2, 3, 5], [5, 6, 7, 8], 1000, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 9], 1000, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1001, 80, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 81, 6));
        assert_ne!(base, flow_hash([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80, 17));
        assert_ne!(client_hash([1, 2, 3, 4]), client_hash([1, 2, 3, 5]));
        let sock = socket_hash(1 << 40 | 7, [10, 0, 1, 5], 8080, 6);
        assert_ne!(sock, socket_hash(1 << 40 | 8, [10, 0, 1, 5], 8080, 6));
        assert_ne!(sock, socket_hash(2 << 40 | 7, [10, 0, 1, 5], 8080, 6));
        assert_ne!(sock, socket_hash(1 << 40 | 7, [10, 0, 1, 6], 8080, 6));
        assert_ne!(sock, socket_hash(1 << 40 | 7, [10, 0, 1, 5], 8081, 6));
        assert_ne!(sock, socket_hash(1 << 40 | 7, [10, 0, 1, 5], 8080, 17));
        assert_ne!(namespace_hash(1 << 40), namespace_hash(2 << 40));
    }

    #[test]
    fn spreads_sequential_socket_cookies_evenly() {
        const SLOTS: usize = 101;
        let mut buckets = [0u32; SLOTS];
        for cookie in 4096..4096 + 50_500u64 {
            buckets[socket_hash(cookie, [10, 0, 1, 5], 8080, 6) as usize % SLOTS] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 400 && *max < 600, "min {min} max {max}");
    }
}
