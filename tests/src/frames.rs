//! Test frames: builders for Ethernet/IPv4/TCP/UDP frames, and a parser that checks every
//! checksum from scratch with `etherparse` (never with the datapath's own arithmetic).

use anyhow::{Context, Result, bail, ensure};
use etherparse::{Ethernet2Header, Ipv4Header, TcpHeader, UdpHeader};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub type Mac = [u8; 6];

/// The sequence number frames carry unless told otherwise.
pub const DEFAULT_SEQ: u32 = 0x1000_0001;

/// One IPv4 TCP or UDP packet to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub ttl: u8,
    /// TCP flags (ignored for UDP).
    pub flags: u8,
    /// TCP sequence number; [`DEFAULT_SEQ`] unless set.
    pub seq: u32,
    /// TCP acknowledgment number (sent only with ACK): [`DEFAULT_SEQ`] + 1 unless set, so the
    /// default ACK acknowledges a default SYN-ACK and completes a handshake.
    pub ack: u32,
    /// UDP only: false sends checksum 0 ("none").
    pub udp_checksum: bool,
    /// TCP options (a multiple of 4 bytes, at most 40).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Spec {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0xc1],
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            sport,
            dport,
            proto: 6,
            ttl: 64,
            flags,
            seq: DEFAULT_SEQ,
            ack: DEFAULT_SEQ.wrapping_add(1),
            udp_checksum: true,
            tcp_options: Vec::new(),
            payload: b"swarmlb test payload".to_vec(),
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self { proto: 17, flags: 0, ..Self::tcp(src, sport, dst, dport, 0) }
    }

    pub fn macs(mut self, src_mac: Mac, dst_mac: Mac) -> Self {
        self.src_mac = src_mac;
        self.dst_mac = dst_mac;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn no_udp_checksum(mut self) -> Self {
        self.udp_checksum = false;
        self
    }

    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40, "tcp options must fill 32-bit words");
        self.tcp_options = options.to_vec();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The frame, with correct checksums.
    pub fn build(&self) -> Vec<u8> {
        let tcp_len = 20 + self.tcp_options.len();
        let l4_len = if self.proto == 6 { tcp_len } else { 8 } + self.payload.len();
        let mut f = Vec::with_capacity(34 + l4_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let tot_len = (20 + l4_len) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&tot_len.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, self.ttl, self.proto, 0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        let ip_check = Ipv4Header::from_slice(&f[14..34]).expect("own ipv4 header").0.calc_header_checksum();
        f[24..26].copy_from_slice(&ip_check.to_be_bytes());
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            f.extend_from_slice(&self.seq.to_be_bytes());
            let ack = if self.flags & ACK != 0 { self.ack } else { 0 };
            f.extend_from_slice(&ack.to_be_bytes());
            f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, self.flags, 0xfa, 0xf0, 0, 0, 0, 0]);
            f.extend_from_slice(&self.tcp_options);
            f.extend_from_slice(&self.payload);
            let tcp = TcpHeader::from_slice(&f[34..34 + tcp_len]).expect("own tcp header").0;
            let c = tcp.calc_checksum_ipv4_raw(self.src, self.dst, &self.payload).expect("tcp csum");
            f[50..52].copy_from_slice(&c.to_be_bytes());
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&self.payload);
            if self.udp_checksum {
                let udp = UdpHeader::from_slice(&f[34..42]).expect("own udp header").0;
                let c = udp.calc_checksum_ipv4_raw(self.src, self.dst, &self.payload).expect("udp csum");
                f[40..42].copy_from_slice(&c.to_be_bytes());
            }
        }
        f
    }
}

/// A frame the datapath produced, decoded, with every checksum verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub ttl: u8,
    pub flags: u8,
    pub udp_checksum: u16,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Decodes `frame` and checks the IPv4 header checksum and the TCP/UDP checksum by computing
/// them again over the whole packet.
pub fn parse_and_verify(frame: &[u8]) -> Result<Parsed> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).context("ethernet")?;
    ensure!(eth.ether_type.0 == ETH_P_IPV4, "not ipv4: {:#x}", eth.ether_type.0);
    let (ip, rest) = Ipv4Header::from_slice(rest).context("ipv4")?;
    let ip_check = ip.calc_header_checksum();
    ensure!(ip.header_checksum == ip_check, "ipv4 checksum {:#06x}, recomputed {:#06x}", ip.header_checksum, ip_check);
    let l4 = &rest[..(ip.total_len as usize - ip.header_len())];
    let mut p = Parsed {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src: ip.source,
        dst: ip.destination,
        sport: 0,
        dport: 0,
        proto: ip.protocol.0,
        ttl: ip.time_to_live,
        flags: 0,
        udp_checksum: 0,
        tcp_options: Vec::new(),
        payload: Vec::new(),
    };
    match ip.protocol.0 {
        6 => {
            let (tcp, payload) = TcpHeader::from_slice(l4).context("tcp")?;
            let c = tcp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)?;
            ensure!(tcp.checksum == c, "tcp checksum {:#06x}, recomputed {:#06x}", tcp.checksum, c);
            p.sport = tcp.source_port;
            p.dport = tcp.destination_port;
            p.flags = l4[13];
            p.tcp_options = tcp.options.as_slice().to_vec();
            p.payload = payload.to_vec();
        }
        17 => {
            let (udp, payload) = UdpHeader::from_slice(l4).context("udp")?;
            if udp.checksum != 0 {
                let c = udp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)?;
                ensure!(udp.checksum == c, "udp checksum {:#06x}, recomputed {:#06x}", udp.checksum, c);
            }
            p.sport = udp.source_port;
            p.dport = udp.destination_port;
            p.udp_checksum = udp.checksum;
            p.payload = payload.to_vec();
        }
        other => bail!("unexpected protocol {other}"),
    }
    Ok(p)
}

/// A frame of some other ethertype (ARP, IPv6 ...) with a filler body.
pub fn other_ethertype(ether_type: u16, body_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xc1]);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend((0..body_len).map(|i| i as u8));
    f
}

/// An IPv4 ICMP echo request.
pub fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = Spec::udp(src, 0, dst, 0).build();
    f[23] = 1; // protocol ICMP
    f[24..26].copy_from_slice(&[0, 0]);
    let c = Ipv4Header::from_slice(&f[14..34]).expect("ipv4").0.calc_header_checksum();
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34] = 8; // echo request
    f
}

/// Recomputes the IPv4 header checksum of a frame after a test edited the header.
pub fn fix_ipv4_checksum(f: &mut [u8]) {
    let ihl = (f[14] & 0x0f) as usize * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    if let Ok((ip, _)) = Ipv4Header::from_slice(&f[14..14 + ihl]) {
        let c = ip.calc_header_checksum();
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// Offset of the TCP/UDP checksum in a frame built by [`Spec`].
fn l4_checksum_offset(f: &[u8]) -> usize {
    if f[23] == 6 { 34 + 16 } else { 34 + 6 }
}

/// Overwrites the TCP/UDP checksum of a frame built by [`Spec`].
pub fn set_l4_checksum(f: &mut [u8], check: u16) {
    let at = l4_checksum_offset(f);
    f[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

/// The TCP/UDP checksum field of a frame built by [`Spec`].
pub fn l4_checksum(f: &[u8]) -> u16 {
    let at = l4_checksum_offset(f);
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The TCP/UDP checksum of a frame computed from scratch by etherparse (IPv4 total length
/// respected, Ethernet padding ignored), whatever the frame's checksum field says.
pub fn l4_checksum_from_scratch(f: &[u8]) -> u16 {
    let (ip, rest) = Ipv4Header::from_slice(&f[14..]).expect("ipv4");
    let l4 = &rest[..ip.total_len as usize - ip.header_len()];
    if ip.protocol.0 == 6 {
        let (tcp, payload) = TcpHeader::from_slice(l4).expect("tcp");
        tcp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload).expect("tcp csum")
    } else {
        let (udp, payload) = UdpHeader::from_slice(l4).expect("udp");
        udp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload).expect("udp csum")
    }
}

/// How far the frame's L4 checksum is from the correct one, as a one's-complement difference
/// (0 = correct). Incremental updates (RFC 1624) carry this difference over unchanged; a
/// checksum computed from scratch resets it to 0.
pub fn l4_checksum_error(f: &[u8]) -> u16 {
    let sum = (!l4_checksum(f)) as u32 + l4_checksum_from_scratch(f) as u32;
    let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
    if folded == 0xffff { 0 } else { folded }
}

/// The TCP MSS option.
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

/// The value of the first well-formed MSS option in `options`, if any.
pub fn mss_of(options: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return None,
            1 => at += 1,
            kind => {
                let len = *options.get(at + 1)? as usize;
                if kind == 2 && len == 4 {
                    return Some(u16::from_be_bytes([*options.get(at + 2)?, *options.get(at + 3)?]));
                }
                if len < 2 {
                    return None;
                }
                at += len;
            }
        }
    }
    None
}

/// A VXLAN header: `flags` (0x08 = VNI present) and a 24-bit VNI.
pub fn vxlan_header(flags: u8, vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [flags, 0, 0, 0, v[1], v[2], v[3], 0]
}
