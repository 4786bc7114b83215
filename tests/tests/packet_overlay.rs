//! Packet tests of the overlay side of the datapath through BPF_PROG_TEST_RUN: MSS clamping on
//! SYN and SYN-ACK, L4 checksums computed from scratch on overlay replies (and only there), and
//! VXLAN inspection on the underlay. Checksums are verified from scratch with etherparse; every
//! test asserts its reason counters. Each test runs in its own network namespace (`TestNet`).
//! Needs root; fails (never skips) without.

use lb_common::Reason;
use tests::{frames::*, lan::*, testrun::*};

/// Another swarm node's underlay address, and overlay task addresses inside VXLAN.
const PEER_NODE: [u8; 4] = [198, 18, 0, 60];
const TASK_A: [u8; 4] = [198, 19, 10, 2];
const TASK_B: [u8; 4] = [198, 19, 10, 3];

/// A fresh environment programmed with `services` on the one-node swarm.
fn overlay_env(services: &str) -> Env {
    swarm_env("pass", 4789, services)
}

fn syn(sport: u16, options: &[u8]) -> Spec {
    client_syn(sport).tcp_options(options).payload(b"")
}

/// MSS 1460 followed by `rest`, and `rest` around an MSS at an odd offset, padded to words.
fn option_layouts() -> Vec<(&'static str, Vec<u8>)> {
    let mss = mss_option(1460);
    let cat = |parts: &[&[u8]]| parts.concat();
    let mut nops_then_mss = vec![1u8; 33];
    nops_then_mss.extend_from_slice(&mss);
    nops_then_mss.extend_from_slice(&[0, 0, 0]);
    vec![
        ("mss alone", mss.to_vec()),
        // Linux: MSS, SACK permitted, timestamps, NOP, window scale.
        ("linux layout", cat(&[&mss, &[4, 2], &[8, 10, 1, 2, 3, 4, 0, 0, 0, 0], &[1], &[3, 3, 7]])),
        // The MSS value at an odd offset after a NOP, then NOPs.
        ("nop first (odd offset)", cat(&[&[1], &mss, &[1, 1, 1]])),
        // After a window-scale option (3 bytes), ended by EOL.
        ("after window scale (odd offset)", cat(&[&[3, 3, 7], &mss, &[0]])),
        // After SACK permitted and timestamps: even offset 12.
        ("after timestamps", cat(&[&[4, 2], &[8, 10, 9, 9, 9, 9, 0, 0, 0, 0], &mss])),
        // 33 NOPs: the MSS value at offset 35, the walk's last reach.
        ("33 nops (odd offset)", nops_then_mss),
    ]
}

#[test]
fn syn_mss_is_clamped_in_every_option_layout() {
    let e = overlay_env(&swarm_service("web", "198.18.0.10:80/tcp", 8080, true));
    let layouts = option_layouts();
    for (i, (what, options)) in layouts.iter().enumerate() {
        assert_eq!(mss_of(options), Some(1460), "{what}: test layout");
        let out = e.run(&syn(30000 + i as u16, options).build());
        assert_eq!(out.action, XDP_TX, "{what}");
        let p = translated(&out);
        assert_eq!((p.dst, p.flags), (BACKEND_LAN, SYN), "{what}");
        assert_eq!(mss_of(&p.tcp_options), Some(1410), "{what}: clamped");
        let mut expected = options.clone();
        let at = options.windows(4).position(|w| w == mss_option(1460)).unwrap();
        expected[at..at + 4].copy_from_slice(&mss_option(1410));
        assert_eq!(p.tcp_options, expected, "{what}: only the MSS value changed");
    }
    e.dp.assert_reasons(&[(Reason::ToBackend, layouts.len() as u64)]);
}

#[test]
fn syn_ack_mss_is_clamped_on_the_reply() {
    let e = overlay_env(&swarm_service("web", "198.18.0.10:80/tcp", 8080, true));
    let p = translated(&e.run(&syn(31000, &mss_option(1460)).build()));
    for (i, options) in
        [mss_option(1460).to_vec(), [&[1u8][..], &mss_option(1460), &[1, 1, 1]].concat()].iter().enumerate()
    {
        let syn_ack = Spec::tcp(BACKEND_LAN, 8080, LB_LAN, p.sport, SYN | ACK)
            .macs(BACKEND_LAN_MAC, LAN_MAC)
            .tcp_options(options)
            .payload(b"");
        let out = e.run(&syn_ack.build());
        assert_eq!(out.action, XDP_TX, "layout {i}");
        let r = translated(&out);
        assert_eq!((r.src, r.sport, r.dst, r.dport, r.flags), (VIP, 80, CLIENT, 31000, SYN | ACK), "layout {i}");
        assert_eq!(mss_of(&r.tcp_options), Some(1410), "layout {i}");
    }
    e.dp.assert_reasons(&[(Reason::ToBackend, 1), (Reason::ToClient, 2)]);
}

#[test]
fn mss_is_left_alone_when_not_asked_smaller_absent_or_malformed() {
    let e = overlay_env(
        &(swarm_service("plain", "198.18.0.10:80/tcp", 8080, false)
            + &swarm_service("web", "198.18.0.10:81/tcp", 8081, true)),
    );
    let cases: [(&str, u16, Vec<u8>); 5] = [
        ("service mss 0", 80, mss_option(1460).to_vec()),
        ("already smaller", 81, mss_option(1300).to_vec()),
        ("no options", 81, vec![]),
        ("no mss option", 81, vec![1, 3, 3, 7]),
        ("option length 0 before the mss", 81, [&[3u8, 0, 7, 1][..], &mss_option(1460)].concat()),
    ];
    for (i, (what, port, options)) in cases.iter().enumerate() {
        let s = Spec::tcp(CLIENT, 32000 + i as u16, VIP, *port, SYN).macs(CLIENT_MAC_50, LAN_MAC).tcp_options(options);
        let p = translated(&e.run(&s.build()));
        assert_eq!(p.tcp_options, *options, "{what}: options untouched");
    }
    // Not a SYN: an MSS option (meaningless there) is not touched either.
    let ack = Spec::tcp(CLIENT, 32001, VIP, 81, ACK).macs(CLIENT_MAC_50, LAN_MAC).tcp_options(&mss_option(1460));
    assert_eq!(translated(&e.run(&ack.build())).tcp_options, mss_option(1460));
    e.dp.assert_reasons(&[(Reason::ToBackend, 6)]);
}

/// The reply's checksum field as a task on this node hands it over veth: the folded
/// pseudo-header sum only (CHECKSUM_PARTIAL), not a checksum of the data.
fn partial_checksum(f: &[u8]) -> u16 {
    let total = u16::from_be_bytes([f[16], f[17]]) as u32;
    let words = [
        u16::from_be_bytes([f[26], f[27]]),
        u16::from_be_bytes([f[28], f[29]]),
        u16::from_be_bytes([f[30], f[31]]),
        u16::from_be_bytes([f[32], f[33]]),
        f[23] as u16,
        (total - 20) as u16,
    ];
    let mut sum: u32 = words.iter().map(|w| *w as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn overlay_tcp_replies_get_checksums_from_scratch() {
    let e = overlay_env(&swarm_service("web", "198.18.0.10:80/tcp", 8080, true));
    let p = translated(&e.run(&syn(33000, &[]).build()));
    let mut replies = 0;
    // Lengths around every block size of the from-scratch sum, odd ones included.
    for len in [0usize, 1, 2, 3, 5, 13, 255, 256, 511, 512, 513, 1023, 1400, 1401, 1446] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let reply =
            Spec::tcp(BACKEND_LAN, 8080, LB_LAN, p.sport, ACK | PSH).macs(BACKEND_LAN_MAC, LAN_MAC).payload(&payload);
        let mut frame = reply.build();
        let partial = partial_checksum(&frame);
        for check in [partial, 0x0000, 0xbeef] {
            set_l4_checksum(&mut frame, check);
            let out = e.run(&frame);
            assert_eq!(out.action, XDP_TX, "len {len}");
            let r = parse_and_verify(&out.frame)
                .unwrap_or_else(|err| panic!("len {len}, input checksum {check:#06x}: {err}"));
            assert_eq!((r.src, r.sport, r.dst, r.dport, r.payload.len()), (VIP, 80, CLIENT, 33000, len));
            replies += 1;
        }
    }
    // The forward direction of an overlay service stays incremental: an error is carried over.
    let mut fwd = Spec::tcp(CLIENT, 33000, VIP, 80, ACK).macs(CLIENT_MAC_50, LAN_MAC).build();
    let wrong = l4_checksum(&fwd) ^ 0x0101;
    set_l4_checksum(&mut fwd, wrong);
    let error = l4_checksum_error(&fwd);
    assert_ne!(error, 0);
    assert_eq!(l4_checksum_error(&e.run(&fwd).frame), error, "forward checksum updated, not recomputed");
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, replies)]);
}

#[test]
fn plain_service_replies_are_updated_incrementally() {
    let e = overlay_env(
        &(swarm_service("web", "198.18.0.10:80/tcp", 8080, false)
            + &swarm_service("dns", "198.18.0.10:53/udp", 5353, false)),
    );
    let p = translated(&e.run(&syn(34000, &[]).build()));
    let mut reply =
        Spec::tcp(BACKEND_LAN, 8080, LB_LAN, p.sport, ACK).macs(BACKEND_LAN_MAC, LAN_MAC).payload(b"odd!!").build();
    set_l4_checksum(&mut reply, 0xbeef);
    let error = l4_checksum_error(&reply);
    assert_ne!(error, 0);
    let out = e.run(&reply);
    assert_eq!(out.action, XDP_TX);
    assert_eq!(l4_checksum_error(&out.frame), error, "wrong by the same delta: not recomputed");

    let q = translated(&e.run(&Spec::udp(CLIENT, 34001, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).build()));
    let mut reply = Spec::udp(BACKEND_LAN, 5353, LB_LAN, q.sport).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    set_l4_checksum(&mut reply, 0x1234);
    let error = l4_checksum_error(&reply);
    assert_eq!(l4_checksum_error(&e.run(&reply).frame), error);
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 2)]);
}

#[test]
fn overlay_udp_replies_get_checksums_from_scratch() {
    let e = overlay_env(&swarm_service("dns", "198.18.0.10:53/udp", 5353, true));
    let q = translated(&e.run(&Spec::udp(CLIENT, 35000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).build()));
    let reply =
        |payload: &[u8]| Spec::udp(BACKEND_LAN, 5353, LB_LAN, q.sport).macs(BACKEND_LAN_MAC, LAN_MAC).payload(payload);

    for len in [0usize, 1, 7, 100, 1401] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
        let mut frame = reply(&payload).build();
        let partial = partial_checksum(&frame);
        set_l4_checksum(&mut frame, partial);
        let r = translated(&e.run(&frame));
        assert_eq!((r.src, r.sport, r.dst, r.dport, r.payload), (VIP, 53, CLIENT, 35000, payload), "len {len}");
        assert_ne!(r.udp_checksum, 0);
    }

    // Ethernet padding after a short datagram is not summed: only the IPv4 total length counts.
    let mut padded = reply(b"hi").build();
    set_l4_checksum(&mut padded, 0x4242);
    padded.extend_from_slice(&[0xaa; 16]);
    let out = e.run(&padded);
    assert_eq!(out.frame.len(), padded.len());
    assert_eq!(translated(&out).payload, b"hi");

    // A datagram whose translated checksum computes to 0 goes out as 0xffff.
    let mut payload = vec![0u8, 0, 0xca, 0xfe, 0x01];
    let expected = Spec::udp(VIP, 53, CLIENT, 35000).payload(&payload).build();
    payload[..2].copy_from_slice(&l4_checksum(&expected).to_be_bytes());
    let zero = Spec::udp(VIP, 53, CLIENT, 35000).payload(&payload).build();
    assert_eq!(l4_checksum(&zero), 0xffff, "test payload computes to zero");
    let mut frame = reply(&payload).build();
    set_l4_checksum(&mut frame, 0x0bad);
    let r = translated(&e.run(&frame));
    assert_eq!((r.payload, r.udp_checksum), (payload, 0xffff));

    // No checksum ("none") stays none.
    let r = translated(&e.run(&reply(b"none").no_udp_checksum().build()));
    assert_eq!(r.udp_checksum, 0);
    e.dp.assert_reasons(&[(Reason::ToBackend, 1), (Reason::ToClient, 8)]);
}

/// A VXLAN datagram from a peer node to this node on `port`, carrying `vxlan` (the VXLAN
/// header and whatever follows it).
fn vxlan_frame(port: u16, vxlan: &[u8]) -> Vec<u8> {
    Spec::udp(PEER_NODE, 51000, LB_LAN, port).macs([2, 0, 0, 0, 0, 60], LAN_MAC).payload(vxlan).build()
}

fn inner_frame() -> Vec<u8> {
    Spec::tcp(TASK_A, 40000, TASK_B, 8080, SYN).macs([2, 0x42, 198, 19, 10, 2], [2, 0x42, 198, 19, 10, 3]).build()
}

fn vxlan_cases(port: u16) -> Vec<(&'static str, Vec<u8>, Reason)> {
    let inner = inner_frame();
    let good = |flags: u8, vni: u32, inner: &[u8]| vxlan_frame(port, &[&vxlan_header(flags, vni)[..], inner].concat());
    let mut short_ip = good(0x08, OVERLAY_VNI, &inner[..14 + 20]);
    let cut = (20 + 8 + 8 + 14 + 19) as u16;
    short_ip[16..18].copy_from_slice(&cut.to_be_bytes());
    fix_ipv4_checksum(&mut short_ip);
    vec![
        ("known vni", good(0x08, OVERLAY_VNI, &inner), Reason::PassVxlan),
        ("known vni, other flag bits set", good(0x0c, OVERLAY_VNI, &inner), Reason::PassVxlan),
        ("known vni, inner headers only", good(0x08, OVERLAY_VNI, &inner[..14 + 20]), Reason::PassVxlan),
        ("unknown vni", good(0x08, OVERLAY_VNI + 1, &inner), Reason::PassVxlanUnknownVni),
        ("empty", vxlan_frame(port, &[]), Reason::MalformedVxlan),
        ("short vxlan header", vxlan_frame(port, &vxlan_header(0x08, OVERLAY_VNI)[..4]), Reason::MalformedVxlan),
        ("i flag missing", good(0x00, OVERLAY_VNI, &inner), Reason::MalformedVxlan),
        ("no inner frame", good(0x08, OVERLAY_VNI, &[]), Reason::MalformedVxlan),
        ("inner ipv4 header truncated", good(0x08, OVERLAY_VNI, &inner[..14 + 19]), Reason::MalformedVxlan),
        ("inner headers past the ip total length (padding)", short_ip, Reason::MalformedVxlan),
    ]
}

#[test]
fn vxlan_on_the_underlay_is_inspected_under_both_policies() {
    for (policy, malformed_action) in [("pass", XDP_PASS), ("drop", XDP_DROP)] {
        let mut e = swarm_env(policy, 4789, &swarm_service("web", "198.18.0.10:80/tcp", 8080, false));
        let cases = vxlan_cases(4789);
        for (what, frame, reason) in &cases {
            let before = e.dp.reason(*reason).unwrap();
            let out = e.run(frame);
            let action = if *reason == Reason::MalformedVxlan { malformed_action } else { XDP_PASS };
            assert_eq!(out.action, action, "{what} (policy {policy})");
            if action == XDP_PASS {
                assert_eq!(&out.frame, frame, "{what} passed unchanged");
            }
            assert_eq!(e.dp.reason(*reason).unwrap(), before + 1, "{what} counted as {}", reason.name());
        }
        e.dp.assert_reasons(&[(Reason::PassVxlan, 3), (Reason::PassVxlanUnknownVni, 1), (Reason::MalformedVxlan, 6)]);
        assert!(e.dp.flows().unwrap().is_empty());
    }
}

#[test]
fn vxlan_port_follows_the_settings() {
    let e = swarm_env("drop", 8472, "");
    let good = [&vxlan_header(0x08, OVERLAY_VNI)[..], &inner_frame()].concat();
    let out = e.run(&vxlan_frame(8472, &good));
    assert_eq!(out.action, XDP_PASS);
    // 4789 is just another UDP port now: not inspected, even if it would be malformed.
    let out = e.run(&vxlan_frame(4789, &[]));
    assert_eq!(out.action, XDP_PASS);
    let out = e.run(&vxlan_frame(4789, &good));
    assert_eq!(out.action, XDP_PASS);
    e.dp.assert_reasons(&[(Reason::PassVxlan, 1), (Reason::PassNoFrontend, 2)]);
}
