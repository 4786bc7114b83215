//! Packet tests of ICMP through BPF_PROG_TEST_RUN: errors about tracked connections translated
//! back to the other side (outer and quoted headers), fragmentation needed answered from XDP for
//! a "don't fragment" packet too big for the egress MTU, and ICMP about nothing of ours passed
//! untouched. Every checksum (outer IPv4, ICMP, quoted IPv4) is recomputed by the test. Maps are
//! programmed through the planner and writer. Needs root; fails (never skips) without.

use lb_common::Reason;
use tests::{cmd::sh, frames::*, icmp_frames::*, lan::*, testrun::*};

/// A router on the backend side of the node.
const ROUTER_BACK: [u8; 4] = [198, 18, 0, 200];
/// A router on the client's side.
const ROUTER_FRONT: [u8; 4] = [198, 18, 0, 201];

#[test]
fn fragmentation_needed_from_the_backend_side_reaches_the_client_about_its_own_packet() {
    let mut e = env();
    e.web();
    let syn = e.connect(47000);
    // The client's data segment, as translated towards the backend, is too big for a link
    // behind the node: a router there answers the node (the packet's source).
    let data = client_segment(47000, ACK | PSH).payload(&[0x5a; 600]);
    let out = e.run(&data.build());
    assert_eq!(out.action, XDP_TX);
    let error = icmp_error(
        (BACKEND_LAN_MAC, LAN_MAC),
        ROUTER_BACK,
        LB_LAN,
        DEST_UNREACH,
        FRAG_NEEDED,
        [0, 0, 0x02, 0x40],
        &out.frame,
    );
    let out = e.run(&error);
    assert_eq!(out.action, XDP_TX, "the client is on the ingress link");
    let icmp = parse_icmp(&out.frame).unwrap();
    assert_eq!((icmp.src, icmp.dst, icmp.kind, icmp.code), (VIP, CLIENT, DEST_UNREACH, FRAG_NEEDED));
    assert_eq!((icmp.src_mac, icmp.dst_mac), (LAN_MAC, CLIENT_MAC_50));
    assert_eq!(u16::from_be_bytes([icmp.rest[2], icmp.rest[3]]), 576, "the MTU is passed on unchanged");
    // The quoted packet is the client's own, as it sent it.
    assert_eq!((icmp.quoted_ip.source, icmp.quoted_ip.destination), (CLIENT, VIP));
    assert_eq!(icmp.quoted_ports(), (47000, FE_PORT));
    let sent = data.build();
    assert_eq!(icmp.quoted_l4[4..8], sent[38..42], "the quoted sequence number is untouched");
    let _ = syn;
    e.dp.assert_reasons(&[(Reason::ToBackend, 3), (Reason::ToClient, 1), (Reason::IcmpTranslated, 1)]);
}

#[test]
fn errors_from_the_client_side_reach_the_backend_about_its_reply() {
    let mut e = env();
    e.web();
    let syn = e.connect(47001);
    let reply = e.from_backend(&syn, ACK | PSH);
    assert_eq!(reply.action, XDP_TX);
    // The reply (from VIP to the client) dies on the way: time exceeded from a router there.
    let error = icmp_error((CLIENT_MAC_50, LAN_MAC), ROUTER_FRONT, VIP, TIME_EXCEEDED, 0, [0; 4], &reply.frame);
    let out = e.run(&error);
    assert_eq!(out.action, XDP_TX);
    let icmp = parse_icmp(&out.frame).unwrap();
    assert_eq!((icmp.src, icmp.dst, icmp.kind), (LB_LAN, BACKEND_LAN, TIME_EXCEEDED));
    assert_eq!(icmp.dst_mac, BACKEND_LAN_MAC);
    assert_eq!((icmp.quoted_ip.source, icmp.quoted_ip.destination), (BACKEND_LAN, LB_LAN), "the backend's own packet");
    assert_eq!(icmp.quoted_ports(), (BE_PORT, syn.sport));
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 2), (Reason::IcmpTranslated, 1)]);
}

#[test]
fn a_udp_port_unreachable_quotes_the_client_datagram_exactly() {
    let mut e = env();
    e.apply(&(node("") + &service("dns", "198.18.0.10:53/udp", "", &[("lan", BACKEND_LAN, 5353, 1)])));
    let query = Spec::udp(CLIENT, 41000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).payload(b"question").build();
    let out = e.run(&query);
    assert_eq!(out.action, XDP_TX);
    // The backend has no listener: its host answers port unreachable to the node.
    let error =
        icmp_error((BACKEND_LAN_MAC, LAN_MAC), BACKEND_LAN, LB_LAN, DEST_UNREACH, PORT_UNREACH, [0; 4], &out.frame);
    let icmp = parse_icmp(&e.run(&error).frame).unwrap();
    assert_eq!((icmp.src, icmp.dst, icmp.code), (VIP, CLIENT, PORT_UNREACH));
    // Back to the client's header: addresses, ports, length and the UDP checksum it sent.
    assert_eq!((icmp.quoted_ip.source, icmp.quoted_ip.destination), (CLIENT, VIP));
    assert_eq!(icmp.quoted_l4, query[34..42], "the quoted UDP header is the client's");
    e.dp.assert_reasons(&[(Reason::ToBackend, 1), (Reason::IcmpTranslated, 1)]);
}

#[test]
fn icmp_about_nothing_of_ours_passes_untouched() {
    let mut e = env();
    e.web();
    let stray = Spec::tcp(LB_LAN, 30000, BACKEND_LAN, BE_PORT, SYN).build();
    let error = icmp_error((BACKEND_LAN_MAC, LAN_MAC), BACKEND_LAN, LB_LAN, DEST_UNREACH, PORT_UNREACH, [0; 4], &stray);
    let echo = icmp_echo(CLIENT, VIP);
    let mut short = error.clone();
    short.truncate(14 + 20 + 8 + 10);
    short[16..18].copy_from_slice(&((20 + 8 + 10) as u16).to_be_bytes());
    fix_ipv4_checksum(&mut short);
    for (what, frame, reason) in [
        ("error about no connection", &error, Reason::PassIcmpUntracked),
        ("echo request", &echo, Reason::PassNotTcpUdp),
        ("error with its quote cut short", &short, Reason::MalformedIcmp),
    ] {
        let out = e.run(frame);
        assert_eq!((out.action, &out.frame), (XDP_PASS, frame), "{what}");
        assert_eq!(e.count(reason), 1, "{what}");
    }
}

#[test]
fn a_dont_fragment_packet_too_big_for_the_egress_is_answered_with_fragmentation_needed() {
    let mut e = env();
    sh("ip link set dc mtu 1000").unwrap();
    e.apply(
        &(node("")
            + &service("web", "198.18.0.10:80/tcp", "nat_addr = \"198.18.2.1\"", &[("dc", BACKEND_DC, BE_PORT, 1)])),
    );
    // A first packet too big already (SYN with data, as TFO sends): the FIB says so.
    let big_syn = client_syn(49500).payload(&[0x5a; 1100]).build();
    let out = e.run(&big_syn);
    assert_eq!(out.action, XDP_REDIRECT, "redirected back out of the ingress link");
    let icmp = parse_icmp(&out.frame).unwrap();
    assert_eq!((icmp.src, icmp.dst, icmp.kind, icmp.code), (VIP, CLIENT, DEST_UNREACH, FRAG_NEEDED));
    assert_eq!((icmp.src_mac, icmp.dst_mac), (LAN_MAC, CLIENT_MAC_50));
    assert_eq!(u16::from_be_bytes([icmp.rest[2], icmp.rest[3]]), 1000);
    assert_eq!(
        (icmp.quoted_ip.source, icmp.quoted_ip.destination, icmp.quoted_ports()),
        (CLIENT, VIP, (49500, FE_PORT))
    );
    assert_eq!(out.frame.len(), 14 + 20 + 8 + 28);

    // Small packets of the connection fit; the cached next hop knows the MTU for later ones.
    assert_eq!(e.run(&client_syn(49500).build()).action, XDP_REDIRECT);
    let big = client_segment(49500, ACK).payload(&[0x5a; 1100]).build();
    let icmp = parse_icmp(&e.run(&big).frame).unwrap();
    assert_eq!(u16::from_be_bytes([icmp.rest[2], icmp.rest[3]]), 1000);

    // Without "don't fragment" the kernel may fragment it: translated and handed over.
    let mut fragmentable = big.clone();
    fragmentable[20] &= !0x40;
    fix_ipv4_checksum(&mut fragmentable);
    let out = e.run(&fragmentable);
    assert_eq!(out.action, XDP_PASS);
    let p = translated(&out);
    assert_eq!((p.src, p.dst), ([198, 18, 2, 1], BACKEND_DC));
    e.dp.assert_reasons(&[(Reason::FragNeededSent, 2), (Reason::ToBackend, 1), (Reason::PassTooBig, 1)]);
}
