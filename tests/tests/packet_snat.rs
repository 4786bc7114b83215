//! Packet tests of NAT source ports and of the new-flow table under a SYN flood, through
//! BPF_PROG_TEST_RUN: the client's port kept when free, the range searched when not, a range
//! full of established connections refusing new ones, idled-out and unconfirmed holders taken
//! over, and a flood of spoofed SYNs that never touches an established connection. Maps are
//! programmed through the planner and writer. Needs root; fails (never skips) without.

use lb_common::{CtEvent, PROTO_TCP, Reason, maps::NEW_FLOWS_SIZE};
use tests::{frames::*, lan::*, testrun::*};

#[test]
fn the_client_port_is_kept_when_free_else_one_derived_from_it() {
    let mut e = env();
    e.web();
    let inside = SNAT_MIN + 10;
    assert_eq!(translated(&e.run(&client_syn(inside).build())).sport, inside, "kept");
    // Another client from the same port towards the same backend: that NAT tuple is taken.
    let other = [198, 18, 0, 51];
    let syn = Spec::tcp(other, inside, VIP, FE_PORT, SYN).macs(client_mac(51), LAN_MAC).build();
    let p = translated(&e.run(&syn));
    assert_ne!(p.sport, inside);
    assert!((SNAT_MIN..=SNAT_MAX).contains(&p.sport));
    // A client port outside the range: a port from the range, derived from the client's tuple,
    // so the same client port comes back to the same NAT port (the backend sees the tuple it
    // knows, whose TIME_WAIT accepts the newer SYN).
    let q = translated(&e.run(&client_syn(40000).build()));
    assert!((SNAT_MIN..=SNAT_MAX).contains(&q.sport), "port {}", q.sport);
    translated(&e.run(&client_segment(40000, RST).build()));
    assert_eq!(
        translated(&e.run(&client_syn(40000).build())).sport,
        q.sport,
        "the same client port, the same NAT port"
    );
    assert_eq!(e.dp.event(CtEvent::PortPreserved).unwrap(), 1);
    e.dp.assert_reasons(&[(Reason::ToBackend, 5)]);
}

#[test]
fn a_client_port_whose_earlier_connection_idled_out_is_kept() {
    let mut e = env();
    e.web();
    let sport = SNAT_MIN + 5;
    let first = e.connect(sport);
    assert_eq!(first.sport, sport);
    translated(&e.run(&client_segment(sport, RST).build()));
    // Reset and idle for longer than a closed entry lives, but still in the LRU table: a random
    // port would do, the client's own keeps the backend's tuple (and its TIME_WAIT's timestamps).
    for k in [key(CLIENT, sport, VIP, FE_PORT, PROTO_TCP), key(first.dst, first.dport, first.src, sport, PROTO_TCP)] {
        e.dp.age(&k, 11).unwrap();
    }
    let again = translated(&e.run(&client_syn(sport).build()));
    assert_eq!((again.dst, again.sport), (first.dst, sport), "the same tuple towards the backend");
    assert_eq!(e.dp.event(CtEvent::PortPreserved).unwrap(), 2);
    assert_eq!(e.dp.event(CtEvent::PortTakenOver).unwrap(), 1);
}

#[test]
fn a_range_full_of_established_connections_refuses_new_ones_until_one_idles_out() {
    let mut e = env();
    e.web();
    // Every port of the range held by an established connection (each keeps its client port).
    for sport in SNAT_MIN..=SNAT_MAX {
        assert_eq!(e.connect(sport).sport, sport);
    }
    let ports = u64::from(SNAT_MAX - SNAT_MIN) + 1;
    assert_eq!(e.dp.table_sizes().unwrap(), (2 * ports as usize, 0));
    let out = e.run(&client_syn(40000).build());
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(e.count(Reason::DropPortsExhausted), 1);

    // One is reset and idles out: its client comes back on the same port and takes it over.
    let victim = SNAT_MIN + 77;
    let p = Parsed { sport: victim, ..translated(&e.run(&client_segment(victim, RST).build())) };
    for k in [key(CLIENT, victim, VIP, FE_PORT, PROTO_TCP), key(p.dst, p.dport, p.src, victim, PROTO_TCP)] {
        e.dp.age(&k, 11).unwrap();
    }
    assert_eq!(translated(&e.run(&client_syn(victim).build())).sport, victim);
    assert_eq!(e.dp.event(CtEvent::PortTakenOver).unwrap(), 1);
    e.dp.assert_reasons(&[
        (Reason::ToBackend, 2 * ports + 2),
        (Reason::ToClient, ports),
        (Reason::DropPortsExhausted, 1),
    ]);
}

/// A spoofed SYN from source number `n`, somewhere in 198.18.0.0/15 outside the test links.
fn spoofed_syn(n: u32) -> Vec<u8> {
    let src = [198, 19, (n >> 16) as u8 | 0x80, (n >> 8) as u8, n as u8];
    Spec::tcp([src[0], src[1], src[2], src[3]], 1024 + (n % 60000) as u16, VIP, FE_PORT, SYN)
        .macs([2, 0, 0, 0, 0, 0x99], LAN_MAC)
        .build()
}

#[test]
fn a_syn_flood_fills_only_the_new_flow_table_and_real_clients_get_through() {
    let mut e = env();
    e.web();
    let established: Vec<Parsed> = (0..10).map(|i| e.connect(48000 + i)).collect();
    assert_eq!(e.dp.table_sizes().unwrap(), (20, 0));

    // More spoofed SYNs than the new-flow table holds, at the one backend whose NAT range
    // (1024 ports) they exhaust many times over.
    let flood = 2 * NEW_FLOWS_SIZE;
    let mut real = 0;
    for n in 0..flood {
        assert_eq!(e.run(&spoofed_syn(n)).action, XDP_TX, "spoofed SYN {n}");
        if n % 4096 == 4095 {
            // A real client in the middle of the flood: its handshake completes.
            let sport = 49000 + real;
            let syn = e.connect(sport);
            assert_eq!(e.dp.confirmed(&key(CLIENT, sport, VIP, FE_PORT, PROTO_TCP)).unwrap(), Some(true));
            assert_eq!(translated(&e.from_backend(&syn, ACK | PSH)).dport, sport);
            real += 1;
        }
    }
    let (main, unconfirmed) = e.dp.table_sizes().unwrap();
    assert_eq!(main, 20 + 2 * real as usize, "only established connections in the main table");
    assert!(unconfirmed <= NEW_FLOWS_SIZE as usize, "{unconfirmed} entries in the new-flow table");
    assert!(e.dp.event(CtEvent::PortTakenOver).unwrap() > 0, "the flood's ports were taken over");
    assert_eq!(e.count(Reason::DropPortsExhausted), 0, "no SYN ever found the range closed");
    // Every established connection still works, both ways.
    for (i, syn) in established.iter().enumerate() {
        let sport = 48000 + i as u16;
        assert_eq!(translated(&e.run(&client_segment(sport, ACK | PSH).build())).sport, syn.sport);
        assert_eq!(translated(&e.from_backend(syn, ACK | PSH)).dport, sport);
    }
}

#[test]
fn a_second_nat_address_brings_its_own_ports() {
    let mut e = env();
    let second = [198, 18, 0, 3];
    e.apply(
        &(node("")
            + &service(
                "web",
                "198.18.0.10:80/tcp",
                r#"nat_addr = ["198.18.0.1", "198.18.0.3"]"#,
                &[("lan", BACKEND_LAN, BE_PORT, 1)],
            )),
    );
    // Every port of the first address held by an established connection...
    for sport in SNAT_MIN..=SNAT_MAX {
        assert_eq!(e.connect(sport).src, LB_LAN);
    }
    // ... so the next one goes out from the second, and its reply comes back from there.
    let p = translated(&e.run(&client_syn(40000).build()));
    assert_eq!(p.src, second);
    let r = translated(&e.from_backend(&p, SYN | ACK));
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, FE_PORT, CLIENT, 40000));
    assert_eq!(e.count(Reason::DropPortsExhausted), 0);
}
