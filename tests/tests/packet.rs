//! Packet tests of the XDP datapath through BPF_PROG_TEST_RUN: crafted frames in, frames out,
//! checksums recomputed from scratch (etherparse), one case per path of the pipeline, each
//! asserting the reason counter it expects. Every test runs in its own network namespace (see
//! `TestNet`) so FIB lookups resolve deterministically. Needs root; fails (never skips) without.

use lb_common::{
    CT_ESTABLISHED, CT_NEW, DIR_TO_BACKEND, DIR_TO_CLIENT, HANDOFF_MAGIC, Handoff, PROTO_TCP, PROTO_UDP, Reason,
};
use tests::{frames::*, lan::*, testrun::*};

/// Service `web` on VIP:80 with backends `lan` (198.18.0.100) and `dc` (198.18.2.100).
fn two_backends(extra: &str) -> String {
    node("")
        + &service(
            "web",
            "198.18.0.10:80/tcp",
            extra,
            &[("lan", BACKEND_LAN, BE_PORT, 1), ("dc", BACKEND_DC, BE_PORT, 1)],
        )
}

#[test]
fn tcp_syn_is_translated_to_backend_and_reply_back_to_client() {
    let mut e = env();
    e.web();
    let syn = client_syn(40000).build();
    let out = e.run(&syn);
    assert_eq!(out.action, XDP_TX, "backend is on the ingress link");
    let p = translated(&out);
    assert_eq!((p.src, p.dst, p.dport, p.proto), (LB_LAN, BACKEND_LAN, BE_PORT, PROTO_TCP));
    assert!((SNAT_MIN..=SNAT_MAX).contains(&p.sport), "snat port {}", p.sport);
    assert_eq!((p.src_mac, p.dst_mac), (LAN_MAC, BACKEND_LAN_MAC));
    assert_eq!(p.ttl, 63);
    assert_eq!(p.flags, SYN);
    assert_eq!(p.payload, client_syn(40000).payload);
    let snat_port = p.sport;

    // Both directions are in the table, with the next hop cached on the forward entry.
    let fwd = e.dp.flow(&key(CLIENT, 40000, VIP, FE_PORT, PROTO_TCP)).unwrap().expect("forward entry");
    assert_eq!(
        (fwd.new_src_addr, fwd.new_src_port, fwd.new_dst_addr, fwd.new_dst_port),
        (LB_LAN, snat_port, BACKEND_LAN, BE_PORT)
    );
    assert_eq!((fwd.service_id, fwd.backend_id, fwd.direction, fwd.state), (SVC, 1, DIR_TO_BACKEND, CT_NEW));
    assert_eq!((fwd.next_hop.ifindex, fwd.next_hop.mtu), (e.net.lan.ifindex, 1500));
    assert_eq!((fwd.next_hop.src_mac, fwd.next_hop.dst_mac), (LAN_MAC, BACKEND_LAN_MAC));
    let rev = e.dp.flow(&key(BACKEND_LAN, BE_PORT, LB_LAN, snat_port, PROTO_TCP)).unwrap().expect("reverse entry");
    assert_eq!((rev.new_src_addr, rev.new_src_port, rev.new_dst_addr, rev.new_dst_port), (VIP, FE_PORT, CLIENT, 40000));
    assert_eq!(rev.direction, DIR_TO_CLIENT);

    // The backend's answer goes back to the client, from the frontend address and port.
    let reply = Spec::tcp(BACKEND_LAN, BE_PORT, LB_LAN, snat_port, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC);
    let out = e.run(&reply.build());
    assert_eq!(out.action, XDP_TX);
    let r = translated(&out);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, FE_PORT, CLIENT, 40000));
    assert_eq!((r.src_mac, r.dst_mac), (LAN_MAC, CLIENT_MAC_50));
    assert_eq!(r.flags, SYN | ACK);

    // The client's next segment (acknowledging the SYN-ACK, with data): same backend, same SNAT
    // port, and the connection is now established.
    let ack = Spec::tcp(CLIENT, 40000, VIP, FE_PORT, ACK | PSH)
        .macs(CLIENT_MAC_50, LAN_MAC)
        .payload(b"GET / HTTP/1.1\r\n\r\n");
    let out = e.run(&ack.build());
    assert_eq!(out.action, XDP_TX);
    let p2 = translated(&out);
    assert_eq!((p2.src, p2.sport, p2.dst, p2.dport), (LB_LAN, snat_port, BACKEND_LAN, BE_PORT));
    assert_eq!(p2.payload, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(e.dp.flow(&key(CLIENT, 40000, VIP, FE_PORT, PROTO_TCP)).unwrap().unwrap().state, CT_ESTABLISHED);

    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 1)]);
    let bytes = (syn.len() + ack.build().len() + reply.build().len()) as u64;
    let lan = e.dp.backend_id("web", "lan");
    assert_eq!(lan, 1);
    let svc = e.dp.service_traffic(SVC).unwrap();
    assert_eq!((svc.packets, svc.bytes, svc.new_flows), (3, bytes, 1));
    let be = e.dp.backend_traffic(lan).unwrap();
    assert_eq!((be.packets, be.bytes, be.new_flows), (3, bytes, 1));
}

#[test]
fn backend_on_another_managed_link_is_redirected() {
    let mut e = env();
    e.apply(
        &(node("")
            + &service("web", "198.18.0.10:80/tcp", "nat_addr = \"198.18.2.1\"", &[("dc", BACKEND_DC, BE_PORT, 1)])),
    );
    let out = e.run(&client_syn(40001).build());
    assert_eq!(out.action, XDP_REDIRECT);
    let p = translated(&out);
    assert_eq!((p.src, p.dst, p.dport), (LB_DC, BACKEND_DC, BE_PORT));
    assert_eq!((p.src_mac, p.dst_mac), (DC_MAC, BACKEND_DC_MAC));
    // And the reply, received on dc, is redirected to the client on lan.
    let reply = Spec::tcp(BACKEND_DC, BE_PORT, LB_DC, p.sport, SYN | ACK).macs(BACKEND_DC_MAC, DC_MAC).build();
    let out = e.dp.run(&reply, e.net.dc.ifindex).unwrap();
    assert_eq!(out.action, XDP_REDIRECT);
    let r = translated(&out);
    assert_eq!((r.src, r.sport, r.dst, r.dport, r.dst_mac), (VIP, FE_PORT, CLIENT, 40001, CLIENT_MAC_50));
    e.dp.assert_reasons(&[(Reason::ToBackend, 1), (Reason::ToClient, 1)]);
    assert_eq!(e.dp.backend_traffic(e.dp.backend_id("web", "dc")).unwrap().packets, 2);
}

#[test]
fn established_flow_keeps_its_backend_after_backend_and_frontend_removal() {
    let mut e = env();
    e.apply(&two_backends(""));
    let first = e.connect(40002);
    let (kept, gone) = if first.dst == BACKEND_LAN { (BACKEND_LAN, "lan") } else { (BACKEND_DC, "dc") };
    let lb_mac = if kept == BACKEND_LAN { LAN_MAC } else { DC_MAC };
    assert_eq!(first.src_mac, lb_mac);

    // Its backend leaves the service: the connection stays where it is, new ones go elsewhere.
    let remaining = if gone == "lan" { ("dc", BACKEND_DC) } else { ("lan", BACKEND_LAN) };
    e.apply(&(node("") + &service("web", "198.18.0.10:80/tcp", "", &[(remaining.0, remaining.1, BE_PORT, 1)])));
    let data = client_segment(40002, ACK | PSH).build();
    assert_eq!(translated(&e.run(&data)).dst, kept);
    assert_eq!(translated(&e.run(&client_syn(40003).build())).dst, remaining.1);

    // The whole service removed: the established connection still finishes on its backend...
    e.apply(&(node("") + &service("other", "198.18.0.10:81/tcp", "", &[(remaining.0, remaining.1, BE_PORT, 1)])));
    assert_eq!(translated(&e.run(&data)).dst, kept);
    let r = translated(&e.from_backend(&first, ACK | PSH));
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, FE_PORT, CLIENT, 40002));
    // ... while a new connection to it is refused (the kernel answers it).
    let out = e.run(&client_syn(40004).build());
    assert_eq!((out.action, out.frame), (XDP_PASS, client_syn(40004).build()));
    e.dp.assert_reasons(&[(Reason::ToBackend, 5), (Reason::ToClient, 2), (Reason::PassNoFrontend, 1)]);
}

#[test]
fn udp_with_and_without_checksum() {
    let mut e = env();
    e.apply(&dns());
    let out = e.run(&Spec::udp(CLIENT, 50000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).build());
    assert_eq!(out.action, XDP_TX);
    let p = translated(&out);
    assert_eq!((p.src, p.dst, p.dport, p.proto), (LB_LAN, BACKEND_LAN, 5353, PROTO_UDP));
    assert_ne!(p.udp_checksum, 0, "a checksummed datagram keeps a checksum");

    let out = e.run(&Spec::udp(CLIENT, 50001, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).no_udp_checksum().build());
    assert_eq!(out.action, XDP_TX);
    let q = translated(&out);
    assert_eq!((q.dst, q.dport, q.udp_checksum), (BACKEND_LAN, 5353, 0), "checksum 0 stays 0");

    // Replies, with and without checksum.
    let reply = Spec::udp(BACKEND_LAN, 5353, LB_LAN, p.sport).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    let r = translated(&e.run(&reply));
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, 53, CLIENT, 50000));
    assert_ne!(r.udp_checksum, 0);
    let reply = Spec::udp(BACKEND_LAN, 5353, LB_LAN, q.sport).macs(BACKEND_LAN_MAC, LAN_MAC).no_udp_checksum().build();
    let r = translated(&e.run(&reply));
    assert_eq!((r.src, r.sport, r.dst, r.dport, r.udp_checksum), (VIP, 53, CLIENT, 50001, 0));
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 2)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 2);
}

/// A UDP service `dns` on VIP:53 -> backend 198.18.0.100:5353.
fn dns() -> String {
    node("") + &service("dns", "198.18.0.10:53/udp", "", &[("lan", BACKEND_LAN, 5353, 1)])
}

#[test]
fn udp_checksum_that_computes_to_zero_is_sent_as_all_ones() {
    // A client port inside the NAT range is kept, so the translated tuple is known in advance
    // and a payload word can be chosen that makes the translated datagram's one's-complement sum
    // 0xffff: its checksum computes to 0 and must go out as 0xffff (0 would mean "no checksum").
    let mut e = env();
    e.apply(&dns());
    let port = SNAT_MIN + 7;
    let mut payload = vec![0u8, 0, 0xde, 0xad, 0xbe, 0xef];
    let expected = Spec::udp(LB_LAN, port, BACKEND_LAN, 5353).payload(&payload).build();
    let c = u16::from_be_bytes([expected[40], expected[41]]);
    payload[..2].copy_from_slice(&c.to_be_bytes());
    let check = Spec::udp(LB_LAN, port, BACKEND_LAN, 5353).payload(&payload).build();
    assert_eq!(u16::from_be_bytes([check[40], check[41]]), 0xffff, "test payload computes to zero");

    let out = e.run(&Spec::udp(CLIENT, port, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).payload(&payload).build());
    assert_eq!(out.action, XDP_TX);
    let p = translated(&out);
    assert_eq!((p.sport, p.dst, p.dport, p.udp_checksum), (port, BACKEND_LAN, 5353, 0xffff));
    assert_eq!(e.count(Reason::ToBackend), 1);
}

#[test]
fn any_local_address_frontend() {
    let mut e = env();
    e.apply(&(node("") + &service("web", "*:8443/tcp", "", &[("lan", BACKEND_LAN, 443, 1)])));
    e.dp.set_local_addrs(&[LB_LAN]).unwrap();
    let syn = Spec::tcp(CLIENT, 41000, LB_LAN, 8443, SYN).macs(CLIENT_MAC_50, LAN_MAC);
    let p = translated(&e.run(&syn.build()));
    assert_eq!((p.src, p.dst, p.dport), (LB_LAN, BACKEND_LAN, 443));
    let reply = Spec::tcp(BACKEND_LAN, 443, LB_LAN, p.sport, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC);
    let r = translated(&e.run(&reply.build()));
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (LB_LAN, 8443, CLIENT, 41000),
        "reply from the address the client used"
    );
    // Not a local address: not balanced.
    let stray = Spec::tcp(CLIENT, 41001, [198, 18, 0, 77], 8443, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let out = e.run(&stray);
    assert_eq!((out.action, &out.frame), (XDP_PASS, &stray));
    e.dp.assert_reasons(&[(Reason::ToBackend, 1), (Reason::ToClient, 1), (Reason::PassNoFrontend, 1)]);
}

#[test]
fn sticky_service_sends_a_client_to_one_backend() {
    let mut e = env();
    e.apply(&two_backends("sticky = true"));
    let first = translated(&e.run(&client_syn(42000).build())).dst;
    for sport in 42001..42020 {
        let p = translated(&e.run(&client_syn(sport).build()));
        assert_eq!(p.dst, first, "sport {sport}");
    }
    // Other clients spread over both backends, each one always to the same.
    let mut seen = std::collections::BTreeSet::new();
    for n in 51..59u8 {
        let c = [198, 18, 0, n];
        let syn = |sport| Spec::tcp(c, sport, VIP, FE_PORT, SYN).macs(client_mac(n), LAN_MAC).build();
        let a = translated(&e.run(&syn(42000))).dst;
        assert_eq!(translated(&e.run(&syn(42001))).dst, a, "client {n}");
        seen.insert(a);
    }
    assert_eq!(seen.len(), 2, "8 clients all on one backend");
    assert_eq!(e.count(Reason::ToBackend), 36);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 36);
}

#[test]
fn service_without_backend_drops_new_connections() {
    let mut e = env();
    e.apply(&(node("") + &service("web", "198.18.0.10:80/tcp", "", &[])));
    assert_eq!(e.run(&client_syn(43000).build()).action, XDP_DROP);
    // Every backend drained (weight 0): dropped as well.
    e.apply(&(node("") + &service("web", "198.18.0.10:80/tcp", "", &[("lan", BACKEND_LAN, BE_PORT, 0)])));
    assert_eq!(e.run(&client_syn(43001).build()).action, XDP_DROP);
    e.dp.assert_reasons(&[(Reason::DropNoBackend, 2)]);
    assert!(e.dp.flows().unwrap().is_empty(), "no connection created");
}

#[test]
fn unrelated_traffic_passes_byte_for_byte() {
    let mut e = env();
    e.web();
    let frames = [
        (Spec::tcp(CLIENT, 44000, LB_LAN, 22, SYN).macs(CLIENT_MAC_50, LAN_MAC).build(), Reason::PassNoFrontend),
        (Spec::udp(CLIENT, 44000, LB_LAN, 9999).macs(CLIENT_MAC_50, LAN_MAC).build(), Reason::PassNoFrontend),
        // Frontend port, other address.
        (Spec::tcp(CLIENT, 44000, LB_LAN, FE_PORT, SYN).macs(CLIENT_MAC_50, LAN_MAC).build(), Reason::PassNoFrontend),
        // Frontend port, UDP while the frontend is TCP.
        (Spec::udp(CLIENT, 44000, VIP, FE_PORT).macs(CLIENT_MAC_50, LAN_MAC).build(), Reason::PassNoFrontend),
        // SNAT-range port without a connection.
        (Spec::tcp(BACKEND_LAN, BE_PORT, LB_LAN, SNAT_MIN + 5, ACK).build(), Reason::PassNoFrontend),
        (other_ethertype(ETH_P_ARP, 28), Reason::PassNotIpv4),
        (other_ethertype(ETH_P_IPV6, 60), Reason::PassNotIpv4),
        (icmp_echo(CLIENT, VIP), Reason::PassNotTcpUdp),
        // Mid-stream TCP to the frontend without a connection.
        (Spec::tcp(CLIENT, 44001, VIP, FE_PORT, ACK).macs(CLIENT_MAC_50, LAN_MAC).build(), Reason::PassNoConnection),
        (
            Spec::tcp(CLIENT, 44001, VIP, FE_PORT, SYN | ACK).macs(CLIENT_MAC_50, LAN_MAC).build(),
            Reason::PassNoConnection,
        ),
    ];
    for (i, (frame, reason)) in frames.iter().enumerate() {
        let before = e.count(*reason);
        let out = e.run(frame);
        assert_eq!(out.action, XDP_PASS, "frame {i}");
        assert_eq!(&out.frame, frame, "frame {i} unchanged");
        assert_eq!(e.count(*reason), before + 1, "frame {i} counted as {}", reason.name());
    }
    e.dp.assert_reasons(&[
        (Reason::PassNoFrontend, 5),
        (Reason::PassNotIpv4, 2),
        (Reason::PassNotTcpUdp, 1),
        (Reason::PassNoConnection, 2),
    ]);
    assert!(e.dp.flows().unwrap().is_empty());
}

/// Malformed frames of every kind, with the reason each must be counted under.
fn malformed_frames() -> Vec<(&'static str, Vec<u8>, Reason)> {
    let good_tcp = client_syn(45000).build();
    let good_udp = Spec::udp(CLIENT, 45000, VIP, 53).build();
    let mut v = Vec::new();
    v.push(("ipv4 header truncated", good_tcp[..14 + 12].to_vec(), Reason::MalformedIpv4));
    let mut f = good_tcp.clone();
    f[14] = 0x65;
    v.push(("ip version 6 in an ipv4 frame", f, Reason::MalformedIpv4));
    let mut f = good_tcp.clone();
    f[14] = 0x44;
    v.push(("ihl 4", f, Reason::MalformedIpv4));
    let mut f = good_tcp.clone();
    let too_long = (good_tcp.len() - 14 + 1) as u16;
    f[16..18].copy_from_slice(&too_long.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("total length beyond the frame", f, Reason::MalformedIpv4));
    let mut f = good_tcp.clone();
    f[16..18].copy_from_slice(&19u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("total length below the header", f, Reason::MalformedIpv4));
    let mut f = good_tcp[..34 + 10].to_vec();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("tcp header truncated (ip length agrees)", f, Reason::MalformedTcp));
    let mut f = good_tcp[..34 + 16].to_vec();
    f[16..18].copy_from_slice(&36u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("tcp header cut after the flags", f, Reason::MalformedTcp));
    let mut f = good_tcp.clone();
    f[34 + 12] = 4 << 4;
    v.push(("tcp data offset 4", f, Reason::MalformedTcp));
    let mut f = good_tcp.clone();
    f[34 + 12] = 15 << 4;
    v.push(("tcp data offset beyond the packet", f, Reason::MalformedTcp));
    let mut f = good_udp[..34 + 6].to_vec();
    f[16..18].copy_from_slice(&26u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("udp header truncated (ip length agrees)", f, Reason::MalformedUdp));
    let mut f = good_udp.clone();
    f[16..18].copy_from_slice(&24u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    v.push(("ip length shorter than a udp header", f, Reason::MalformedUdp));
    v
}

#[test]
fn malformed_headers_are_counted_and_follow_the_policy() {
    for (policy, action) in [("pass", XDP_PASS), ("drop", XDP_DROP)] {
        // A second call of `env()` in this thread moves it to a newer namespace.
        let mut e = env();
        let udp = service("dns", "198.18.0.10:53/udp", "", &[("lan", BACKEND_LAN, 5353, 1)]);
        let web = service("web", "198.18.0.10:80/tcp", "", &[("lan", BACKEND_LAN, BE_PORT, 1)]);
        e.apply(&(node(&format!("malformed = \"{policy}\"")) + &web + &udp));
        let frames = malformed_frames();
        for (what, frame, reason) in &frames {
            let before = e.count(*reason);
            let out = e.run(frame);
            assert_eq!(out.action, action, "{what} (policy {policy})");
            if action == XDP_PASS {
                assert_eq!(&out.frame, frame, "{what} passed unchanged");
            }
            assert_eq!(e.count(*reason), before + 1, "{what} counted as {}", reason.name());
        }
        e.dp.assert_reasons(&[(Reason::MalformedIpv4, 5), (Reason::MalformedTcp, 4), (Reason::MalformedUdp, 2)]);
        assert!(e.dp.flows().unwrap().is_empty());
    }
}

#[test]
fn fragments_ip_options_and_ttl_expiry_are_passed_untouched() {
    let mut e = env();
    e.web();
    let syn = client_syn(46000).build();
    let mut mf = syn.clone();
    mf[20] |= 0x20; // more fragments
    fix_ipv4_checksum(&mut mf);
    let mut offset = syn.clone();
    offset[20] = 0x00;
    offset[21] = 0x10; // fragment offset 16 * 8
    fix_ipv4_checksum(&mut offset);
    // IHL 6: four bytes of options (NOP NOP NOP EOL) between the header and TCP.
    let mut opts = syn[..34].to_vec();
    opts.extend_from_slice(&[1, 1, 1, 0]);
    opts.extend_from_slice(&syn[34..]);
    opts[14] = 0x46;
    let len = (opts.len() - 14) as u16;
    opts[16..18].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(&mut opts);
    let ttl1 = client_syn(46001).ttl(1).build();
    for (what, frame, reason) in [
        ("more fragments", &mf, Reason::PassFragment),
        ("fragment offset", &offset, Reason::PassFragment),
        ("ip options", &opts, Reason::PassIpOptions),
        ("ttl 1", &ttl1, Reason::PassTtlExpired),
    ] {
        let out = e.run(frame);
        assert_eq!((out.action, &out.frame), (XDP_PASS, frame), "{what}");
        assert_eq!(
            e.count(reason),
            if reason == Reason::PassFragment && what == "fragment offset" { 2 } else { 1 },
            "{what}"
        );
    }
    assert!(e.dp.flows().unwrap().is_empty(), "no connection for a TTL-expired SYN");
    // TTL 1 on a tracked flow is also left to the kernel.
    translated(&e.run(&client_syn(46002).build()));
    let ack1 = Spec::tcp(CLIENT, 46002, VIP, FE_PORT, ACK).macs(CLIENT_MAC_50, LAN_MAC).ttl(1).build();
    let out = e.run(&ack1);
    assert_eq!((out.action, &out.frame), (XDP_PASS, &ack1));
    e.dp.assert_reasons(&[
        (Reason::PassFragment, 2),
        (Reason::PassIpOptions, 1),
        (Reason::PassTtlExpired, 2),
        (Reason::ToBackend, 1),
    ]);
}

/// The hand-off `swarmlb_neigh` finds in front of a frame (see `lb-ebpf/src/neigh.rs`).
fn handoff(out: &Outcome) -> Handoff {
    assert_eq!(out.meta.len(), std::mem::size_of::<Handoff>(), "no hand-off metadata");
    let word = |i: usize| u32::from_ne_bytes(out.meta[i..i + 4].try_into().unwrap());
    Handoff { magic: word(0), ifindex: word(4), next_hop: out.meta[8..12].try_into().unwrap() }
}

#[test]
fn unmanaged_egress_and_missing_neighbour_are_handed_to_the_neighbour_resolver_translated() {
    let mut e = env();
    e.apply(
        &(node("")
            + &service("other", "198.18.0.10:80/tcp", "", &[("other", BACKEND_OTHER, BE_PORT, 1)])
            + &service("no-neigh", "198.18.0.10:81/tcp", "", &[("no-neigh", BACKEND_NO_NEIGH, BE_PORT, 1)])
            + &service("no-route", "198.18.0.10:82/tcp", "", &[("no-route", BACKEND_NO_ROUTE, BE_PORT, 1)])),
    );
    // The unmanaged link's neighbour is known: the kernel routes again (no next-hop address).
    // The missing neighbour is on the same unmanaged link, reached directly: it is the next hop.
    for (dport, backend, ifindex, next_hop) in [
        (FE_PORT, BACKEND_OTHER, e.net.other.ifindex, [0; 4]),
        (81, BACKEND_NO_NEIGH, e.net.other.ifindex, BACKEND_NO_NEIGH),
    ] {
        let syn = Spec::tcp(CLIENT, 49000, VIP, dport, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
        let out = e.run(&syn);
        assert_eq!(out.action, XDP_PASS);
        let p = translated(&out);
        assert_eq!((p.src, p.dst, p.dport), (LB_LAN, backend, BE_PORT));
        assert_eq!((p.src_mac, p.dst_mac), (CLIENT_MAC_50, LAN_MAC), "Ethernet left to the kernel");
        assert_eq!(handoff(&out), Handoff { magic: HANDOFF_MAGIC, ifindex, next_hop });
    }
    let syn = Spec::tcp(CLIENT, 49000, VIP, 82, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let out = e.run(&syn);
    assert_eq!((out.action, &out.frame), (XDP_PASS, &syn), "no route: untranslated");
    assert!(out.meta.is_empty(), "no route: no hand-off");
    e.dp.assert_reasons(&[(Reason::ToNeighResolver, 2), (Reason::PassNoRoute, 1)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().packets, 1);
    assert_eq!(e.dp.service_traffic(3).unwrap().packets, 0);
}

#[test]
fn pass_program_passes_everything() {
    let e = env();
    for frame in [client_syn(1).build(), other_ethertype(ETH_P_ARP, 28), vec![0u8; 14]] {
        let out = e.dp.run_prog(lb_common::maps::PROG_PASS, &frame, e.net.lan.ifindex, 1).unwrap();
        assert_eq!((out.action, &out.frame), (XDP_PASS, &frame));
    }
    e.dp.assert_reasons(&[]);
}

#[test]
fn bpftool_prints_conntrack_field_names() {
    let mut e = env();
    e.web();
    translated(&e.run(&client_syn(40000).build()));
    let id = e.dp.map_id(lb_common::maps::NEW_FLOWS).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .expect("bpftool must be installed for this test");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let entries = json.as_array().expect("array of entries");
    assert_eq!(entries.len(), 2, "{json}");
    let text = json.to_string();
    for field in
        ["src_addr", "new_dst_addr", "new_src_port", "state", "backend_isn", "last_seen_ns", "next_hop", "dst_mac"]
    {
        assert!(text.contains(field), "field {field} missing from {text}");
    }
}
