//! VXLAN inspection on the underlay. UDP to the swarm's data-path port that is neither for a
//! frontend nor a reply is checked and counted before it goes to the kernel's VXLAN device:
//! an 8-byte VXLAN header with the I flag, room for the inner Ethernet and IPv4 headers inside
//! the IPv4 total length, and a VNI this swarm uses (`slb_overlays`). Only the VXLAN header is
//! read; the inner headers are checked by length, never dereferenced.

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_UDP, Reason, Settings, maps::DEFAULT_VXLAN_PORT};

use crate::{
    maps::OVERLAYS_MAP,
    parse::{ETH_LEN, IPV4_LEN, L4_OFF, Packet, UDP_LEN, ptr_at},
    verdict::Verdict,
};

const VXLAN_LEN: usize = 8;
const VXLAN_OFF: usize = L4_OFF + UDP_LEN;
/// "VNI present" flag, first byte of the VXLAN header (RFC 7348).
const VXLAN_FLAG_I: u8 = 0x08;
/// Smallest IPv4 total length carrying a VXLAN header and inner Ethernet + IPv4 headers.
const MIN_VXLAN_IP_LEN: u16 = (IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN + IPV4_LEN) as u16;

/// Is this UDP packet addressed to the swarm's VXLAN data-path port?
#[inline(always)]
pub fn is_vxlan(pkt: &Packet, settings: &Settings) -> bool {
    let port = if settings.vxlan_port == 0 { DEFAULT_VXLAN_PORT } else { settings.vxlan_port };
    pkt.key.proto == PROTO_UDP && pkt.key.dst_port == port
}

/// Checks the VXLAN header and counts the packet as one of this swarm's overlays, a foreign
/// VNI, or malformed.
#[inline(always)]
pub fn inspect(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    if pkt.ip_len < MIN_VXLAN_IP_LEN {
        return Verdict::malformed(Reason::MalformedVxlan);
    }
    let Some(hdr) = ptr_at::<[u8; VXLAN_LEN]>(ctx, VXLAN_OFF) else {
        return Verdict::malformed(Reason::MalformedVxlan);
    };
    // SAFETY: bounds-checked by ptr_at.
    let hdr = unsafe { hdr.read_unaligned() };
    if hdr[0] & VXLAN_FLAG_I == 0 {
        return Verdict::malformed(Reason::MalformedVxlan);
    }
    let vni = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    // SAFETY: the value is not kept.
    if unsafe { OVERLAYS_MAP.get(&vni) }.is_some() {
        Verdict::pass(Reason::PassVxlan)
    } else {
        Verdict::pass(Reason::PassVxlanUnknownVni)
    }
}
