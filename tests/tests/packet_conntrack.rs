//! Packet tests of a connection's life in the connection tables through BPF_PROG_TEST_RUN: the
//! handshake that confirms a connection into the main table, every state's idle timeout, FIN and
//! RST, a client reusing its port, SYNs retransmitted on a half-open connection whose backend
//! left, and UDP flows confirmed by their answer and moved off a removed backend. Maps are
//! programmed through the planner and writer; checksums are verified from scratch; every test
//! asserts its reason counters. Needs root; fails (never skips) without.

use lb_common::{
    CT_CLOSING, CT_ESTABLISHED, CT_HALF_CLOSED, CT_NEW, CT_RESET, CT_SYN_RECV, CtEvent, FIN_FROM_BACKEND,
    FIN_FROM_CLIENT, PROTO_TCP, PROTO_UDP, Reason, idle_timeout_ns,
};
use tests::{frames::*, lan::*, testrun::*};

const BACKEND_ISN: u32 = 0x5555_0000;

fn two_backends(fe_port: u16, lan_weight: u32, dc_weight: u32) -> String {
    let fe = format!("198.18.0.10:{fe_port}/tcp");
    node("")
        + &service("web", &fe, "", &[("lan", BACKEND_LAN, BE_PORT, lan_weight), ("dc", BACKEND_DC, BE_PORT, dc_weight)])
}

fn reverse_key(p: &Parsed) -> lb_common::FlowKey {
    key(p.dst, p.dport, p.src, p.sport, p.proto)
}

#[test]
fn the_handshake_confirms_a_connection_into_the_main_table() {
    let mut e = env();
    e.web();
    let fwd = key(CLIENT, 47000, VIP, FE_PORT, PROTO_TCP);
    let syn = translated(&e.run(&client_syn(47000).build()));
    let rev = reverse_key(&syn);
    assert_eq!(
        (e.dp.confirmed(&fwd).unwrap(), e.dp.confirmed(&rev).unwrap()),
        (Some(false), Some(false)),
        "half-open: new-flow table"
    );
    assert_eq!(e.dp.flow(&rev).unwrap().unwrap().state, CT_NEW);

    let syn_ack =
        Spec::tcp(BACKEND_LAN, BE_PORT, LB_LAN, syn.sport, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC).seq(BACKEND_ISN);
    assert_eq!(translated(&e.run(&syn_ack.build())).dst, CLIENT);
    for k in [fwd, rev] {
        let f = e.dp.flow(&k).unwrap().unwrap();
        assert_eq!((f.state, f.backend_isn), (CT_SYN_RECV, BACKEND_ISN));
    }

    // An ACK that does not acknowledge the backend's SYN-ACK (a blind spoofer) goes through, but
    // does not confirm anything.
    let blind = client_segment(47000, ACK).ack(0x1234_5678).build();
    assert_eq!(translated(&e.run(&blind)).dst, BACKEND_LAN);
    assert_eq!(e.dp.confirmed(&fwd).unwrap(), Some(false));
    assert_eq!(e.dp.event(CtEvent::HandshakeAckMismatch).unwrap(), 1);

    let ack = client_segment(47000, ACK).ack(BACKEND_ISN + 1).build();
    assert_eq!(translated(&e.run(&ack)).sport, syn.sport);
    assert_eq!(
        (e.dp.confirmed(&fwd).unwrap(), e.dp.confirmed(&rev).unwrap()),
        (Some(true), Some(true)),
        "established: main table"
    );
    assert_eq!(e.dp.table_sizes().unwrap(), (2, 0));
    for k in [fwd, rev] {
        assert_eq!(e.dp.flow(&k).unwrap().unwrap().state, CT_ESTABLISHED);
    }
    assert_eq!(e.dp.event(CtEvent::Confirmed).unwrap(), 1);

    // Both directions keep working from the main table.
    let data = translated(&e.from_backend(&syn, ACK | PSH));
    assert_eq!((data.src, data.sport, data.dst, data.dport), (VIP, FE_PORT, CLIENT, 47000));
    assert_eq!(translated(&e.run(&client_segment(47000, ACK | PSH).build())).dst, BACKEND_LAN);
    e.dp.assert_reasons(&[(Reason::ToBackend, 4), (Reason::ToClient, 2)]);
}

/// Ages both entries of the connection whose translated client packet was `p`.
fn age_connection(e: &mut Env, sport: u16, p: &Parsed, seconds: u64) {
    e.dp.age(&key(CLIENT, sport, VIP, FE_PORT, PROTO_TCP), seconds).unwrap();
    e.dp.age(&reverse_key(p), seconds).unwrap();
}

#[test]
fn every_tcp_state_idles_out_after_its_own_timeout() {
    let mut e = env();
    e.web();
    // (state, how to reach it from a fresh SYN on `sport`)
    let states: [(u8, &str); 6] = [
        (CT_NEW, "syn"),
        (CT_SYN_RECV, "syn, syn-ack"),
        (CT_ESTABLISHED, "handshake"),
        (CT_HALF_CLOSED, "handshake, client fin"),
        (CT_CLOSING, "handshake, both fins"),
        (CT_RESET, "handshake, rst"),
    ];
    let mut probes = 0;
    for (i, (state, how)) in states.iter().enumerate() {
        let sport = 47100 + i as u16;
        let syn = if *state == CT_NEW {
            translated(&e.run(&client_syn(sport).build()))
        } else if *state == CT_SYN_RECV {
            let syn = translated(&e.run(&client_syn(sport).build()));
            translated(&e.from_backend(&syn, SYN | ACK));
            syn
        } else {
            e.connect(sport)
        };
        match *state {
            CT_HALF_CLOSED => drop(translated(&e.run(&client_segment(sport, FIN | ACK).build()))),
            CT_CLOSING => {
                translated(&e.run(&client_segment(sport, FIN | ACK).build()));
                translated(&e.from_backend(&syn, FIN | ACK));
            }
            CT_RESET => drop(translated(&e.run(&client_segment(sport, RST).build()))),
            _ => {}
        }
        let fwd = key(CLIENT, sport, VIP, FE_PORT, PROTO_TCP);
        assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, *state, "{how}");
        assert_eq!(e.dp.flow(&reverse_key(&syn)).unwrap().unwrap().state, *state, "{how}: the peer entry agrees");
        let timeout_s = idle_timeout_ns(PROTO_TCP, *state) / 1_000_000_000;
        if *state == CT_ESTABLISHED {
            // Five days cannot be aged on a machine up for less (the datapath's clock starts at
            // boot): idle for an hour, four times the routing mesh's cut, or as long as it has
            // been up, the connection stays.
            let idle = 3600.min(monotonic_ns() / 1_000_000_000 - 1);
            age_connection(&mut e, sport, &syn, idle);
            let r = translated(&e.from_backend(&syn, ACK));
            assert_eq!((r.dst, r.dport), (CLIENT, sport), "{how}: alive after {idle}s");
            probes += 1;
            continue;
        }

        // Idle just under the timeout: still tracked (the backend's ACK is translated back).
        age_connection(&mut e, sport, &syn, timeout_s - 2);
        let r = translated(&e.from_backend(&syn, ACK));
        assert_eq!((r.dst, r.dport), (CLIENT, sport), "{how}: alive after {}s", timeout_s - 2);
        probes += 1;
        // Idle past it: forgotten, in both directions.
        age_connection(&mut e, sport, &syn, timeout_s + 1);
        let back = e.from_backend(&syn, ACK);
        assert_eq!(back.action, XDP_PASS, "{how}: gone after {}s", timeout_s + 1);
        let out = e.run(&client_segment(sport, ACK).build());
        assert_eq!(out.action, XDP_PASS, "{how}: client side gone too");
    }
    // To backend: 1 (new) + 2 (syn-recv) + 2 * 4 (handshakes) + 1 + 2 + 1 (fin, fin, rst) - the
    // backend's FIN of the closing case goes to the client.
    let to_backend = 1 + 1 + 4 * 2 + 1 + 1 + 1;
    let to_client = 1 + 4 + 1 + probes;
    e.dp.assert_reasons(&[
        (Reason::ToBackend, to_backend),
        (Reason::ToClient, to_client),
        (Reason::PassNoFrontend, 5),
        (Reason::PassNoConnection, 5),
    ]);
}

#[test]
fn udp_flows_are_confirmed_by_their_answer_and_idle_out() {
    let mut e = env();
    e.apply(&(node("") + &service("dns", "198.18.0.10:53/udp", "", &[("lan", BACKEND_LAN, 5353, 1)])));
    let query = |sport: u16| Spec::udp(CLIENT, sport, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).payload(b"q").build();
    let q = translated(&e.run(&query(41000)));
    let fwd = key(CLIENT, 41000, VIP, 53, PROTO_UDP);
    assert_eq!(e.dp.confirmed(&fwd).unwrap(), Some(false), "unanswered: new-flow table");
    let answer = Spec::udp(BACKEND_LAN, 5353, LB_LAN, q.sport).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    assert_eq!(translated(&e.run(&answer)).dst, CLIENT);
    assert_eq!(e.dp.confirmed(&fwd).unwrap(), Some(true), "answered: main table");
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_ESTABLISHED);

    for (state, sport) in [(CT_ESTABLISHED, 41000u16), (CT_NEW, 41001)] {
        let p = translated(&e.run(&query(sport)));
        let timeout_s = idle_timeout_ns(PROTO_UDP, state) / 1_000_000_000;
        let k = key(CLIENT, sport, VIP, 53, PROTO_UDP);
        e.dp.age(&k, timeout_s - 2).unwrap();
        assert_eq!(translated(&e.run(&query(sport))).sport, p.sport, "state {state}: alive, same NAT port");
        e.dp.age(&k, timeout_s + 1).unwrap();
        e.dp.age(&reverse_key(&p), timeout_s + 1).unwrap();
        let again = translated(&e.run(&query(sport)));
        assert_eq!(e.dp.flow(&k).unwrap().unwrap().state, CT_NEW, "state {state}: idled out, a new flow");
        assert_eq!(again.dst, BACKEND_LAN);
    }
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 4);
    e.dp.assert_reasons(&[(Reason::ToBackend, 7), (Reason::ToClient, 1)]);
}

#[test]
fn fins_from_both_sides_close_and_a_reused_port_reconnects_on_the_same_nat_port() {
    let mut e = env();
    e.web();
    // A client port inside the NAT range is kept, as Linux's nf_nat keeps it: the backend then
    // sees the very tuple it used before, and its TIME_WAIT accepts the newer SYN.
    let sport = SNAT_MIN + 100;
    let syn = e.connect(sport);
    assert_eq!(syn.sport, sport);
    let fwd = key(CLIENT, sport, VIP, FE_PORT, PROTO_TCP);
    translated(&e.run(&client_segment(sport, FIN | ACK).build()));
    let f = e.dp.flow(&fwd).unwrap().unwrap();
    assert_eq!((f.state, f.fins), (CT_HALF_CLOSED, FIN_FROM_CLIENT));
    translated(&e.from_backend(&syn, FIN | ACK));
    let r = e.dp.flow(&reverse_key(&syn)).unwrap().unwrap();
    assert_eq!((r.state, r.fins), (CT_CLOSING, FIN_FROM_CLIENT | FIN_FROM_BACKEND));

    let again = translated(&e.run(&client_syn(sport).build()));
    assert_eq!((again.dst, again.sport, again.flags), (BACKEND_LAN, sport, SYN));
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_NEW, "a new connection");
    assert_eq!(e.dp.event(CtEvent::Reopened).unwrap(), 1);
    assert_eq!(e.dp.event(CtEvent::PortPreserved).unwrap(), 2);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 2);
    e.dp.assert_reasons(&[(Reason::ToBackend, 4), (Reason::ToClient, 2)]);
}

#[test]
fn syn_on_a_closed_or_abandoned_connection_is_balanced_afresh() {
    syn_reopens(FE_PORT);
}

/// A published port inside the SNAT port range: the client's packets to it look like replies by
/// port, and must get the same treatment.
#[test]
fn syn_on_a_closed_or_abandoned_connection_is_balanced_afresh_on_a_frontend_port_in_the_snat_range() {
    syn_reopens(SNAT_MIN + 500);
}

fn syn_reopens(fe_port: u16) {
    let mut e = env();
    e.apply(&two_backends(fe_port, 1, 1));
    let syn = || Spec::tcp(CLIENT, 47200, VIP, fe_port, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let fwd = key(CLIENT, 47200, VIP, fe_port, PROTO_TCP);
    let first = translated(&e.run(&syn()));
    let (gone, other, other_addr) =
        if first.dst == BACKEND_LAN { ("lan", "dc", BACKEND_DC) } else { ("dc", "lan", BACKEND_LAN) };
    let weights = |gone_weight| {
        if gone == "lan" { two_backends(fe_port, gone_weight, 1) } else { two_backends(fe_port, 1, gone_weight) }
    };

    // Its backend drained: a retransmitted SYN of the half-open connection still goes where the
    // first one went (the task may have answered; the SYN-ACK was lost).
    e.apply(&weights(0));
    assert_eq!(translated(&e.run(&syn())).dst, first.dst, "SYN retransmission");
    // Its backend removed (its task was killed before answering): the next retransmission is
    // balanced afresh, and the old NAT port released.
    let only_other =
        node("") + &service("web", &format!("198.18.0.10:{fe_port}/tcp"), "", &[(other, other_addr, BE_PORT, 1)]);
    e.apply(&only_other);
    let moved = translated(&e.run(&syn()));
    assert_eq!(moved.dst, other_addr);
    assert!(e.dp.flow(&reverse_key(&first)).unwrap().is_none(), "the abandoned connection's NAT port is released");
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().backend_id, e.dp.backend_id("web", other));

    // Established, then closed by the client: a SYN on the tuple within the FIN timeout is a new
    // connection, balanced by today's table, with its own NAT port.
    let seg = |flags| Spec::tcp(CLIENT, 47200, VIP, fe_port, flags).macs(CLIENT_MAC_50, LAN_MAC).build();
    translated(&e.from_backend(&moved, SYN | ACK));
    translated(&e.run(&seg(ACK)));
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_ESTABLISHED);
    translated(&e.run(&seg(FIN | ACK)));
    let again = translated(&e.run(&syn()));
    assert_eq!((again.dst, again.flags), (other_addr, SYN));
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_NEW);

    // The same after the backend resets it: the next SYN is not sent down the reset connection.
    translated(&e.from_backend(&again, RST | ACK));
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_RESET);
    translated(&e.run(&syn()));
    assert_eq!(e.dp.flow(&fwd).unwrap().unwrap().state, CT_NEW);

    assert_eq!(e.dp.event(CtEvent::Reopened).unwrap(), 3);
    e.dp.assert_reasons(&[(Reason::ToBackend, 7), (Reason::ToClient, 2)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 4);
}

#[test]
fn udp_flow_moves_off_a_removed_backend_while_tcp_stays() {
    let mut e = env();
    let dns = |lan: u32, dc: u32| {
        service("dns", "198.18.0.10:53/udp", "", &[("lan", BACKEND_LAN, 5353, lan), ("dc", BACKEND_DC, 5353, dc)])
    };
    let web = service("web", "198.18.0.10:80/tcp", "", &[("web", BACKEND_LAN, BE_PORT, 1)]);
    e.apply(&(node("") + &dns(1, 1) + &web));
    let query = || Spec::udp(CLIENT, 41000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).payload(b"q").build();
    let first = translated(&e.run(&query()));
    let (gone, other_addr) = if first.dst == BACKEND_LAN { ("lan", BACKEND_DC) } else { ("dc", BACKEND_LAN) };

    // Drained: the flow stays on its backend.
    e.apply(&(node("") + &if gone == "lan" { dns(0, 1) } else { dns(1, 0) } + &web));
    assert_eq!(translated(&e.run(&query())).dst, first.dst, "a drained backend keeps its UDP flows");

    // A TCP connection on the web backend, which is removed next along with the UDP one.
    e.connect(41001);
    let other = if gone == "lan" { "dc" } else { "lan" };
    let dns_other = service("dns", "198.18.0.10:53/udp", "", &[(other, other_addr, 5353, 1)]);
    e.apply(&(node("") + &dns_other + &service("web", "198.18.0.10:80/tcp", "", &[("web2", BACKEND_DC, BE_PORT, 1)])));

    // Removed: the next datagram is balanced afresh and the old NAT port is released.
    let moved = translated(&e.run(&query()));
    assert_eq!((moved.dst, moved.dport), (other_addr, 5353));
    assert!(e.dp.flow(&reverse_key(&first)).unwrap().is_none());
    assert_eq!(
        e.dp.flow(&key(CLIENT, 41000, VIP, 53, PROTO_UDP)).unwrap().unwrap().backend_id,
        e.dp.backend_id("dns", other)
    );
    // The TCP connection on its removed backend goes on: the task may still be finishing it.
    assert_eq!(translated(&e.run(&client_segment(41001, ACK | PSH).build())).dst, BACKEND_LAN);

    e.dp.assert_reasons(&[(Reason::ToBackend, 6), (Reason::ToClient, 1)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 2);
}

#[test]
fn a_removed_frontend_lets_its_connections_finish_then_releases_its_port() {
    let mut e = env();
    e.web();
    let tcp = lb_common::PROTO_BIT_TCP;
    let tracked = tcp << lb_common::PORT_TRACKED_SHIFT;
    assert_eq!(e.dp.port_bits(FE_PORT).unwrap(), tcp | tracked);
    let open = e.connect(47300);

    // The service goes: new connections are refused, the open one goes on both ways.
    e.apply(&(node("") + &service("other", "198.18.0.10:81/tcp", "", &[("lan", BACKEND_LAN, BE_PORT, 1)])));
    assert_eq!(e.dp.port_bits(FE_PORT).unwrap(), tracked, "the port only tracks connections now");
    let refused = client_syn(47301).build();
    assert_eq!((e.run(&refused).action, e.run(&refused).frame), (XDP_PASS, refused.clone()));
    assert_eq!(translated(&e.run(&client_segment(47300, ACK | PSH).build())).dst, BACKEND_LAN);
    assert_eq!(translated(&e.from_backend(&open, ACK | PSH)).dst, CLIENT);

    // A sweep while it is open releases nothing; once it has closed and idled out, the sweep
    // removes its entries and releases the port.
    assert_eq!(e.dp.sweep().unwrap(), (0, vec![]));
    translated(&e.run(&client_segment(47300, RST).build()));
    let closing_s = idle_timeout_ns(PROTO_TCP, CT_RESET) / 1_000_000_000;
    age_connection(&mut e, 47300, &open, closing_s + 1);
    assert_eq!(e.dp.sweep().unwrap(), (2, vec![FE_PORT]));
    assert_eq!(e.dp.port_bits(FE_PORT).unwrap(), 0);
    assert_eq!(e.dp.table_sizes().unwrap(), (0, 0));
    e.dp.assert_reasons(&[(Reason::ToBackend, 4), (Reason::ToClient, 2), (Reason::PassNoFrontend, 2)]);
}

#[test]
fn the_sweep_removes_idled_out_entries_and_nothing_else() {
    let mut e = env();
    e.web();
    let established = e.connect(47400);
    let half_open = translated(&e.run(&client_syn(47401).build()));
    let closed = e.connect(47402);
    translated(&e.run(&client_segment(47402, FIN | ACK).build()));
    translated(&e.from_backend(&closed, FIN | ACK));
    assert_eq!(e.dp.table_sizes().unwrap(), (4, 2));
    assert_eq!(e.dp.sweep().unwrap().0, 0, "nothing has idled out");

    let closing_s = idle_timeout_ns(PROTO_TCP, CT_CLOSING) / 1_000_000_000;
    let new_s = idle_timeout_ns(PROTO_TCP, CT_NEW) / 1_000_000_000;
    age_connection(&mut e, 47402, &closed, closing_s + 1);
    age_connection(&mut e, 47401, &half_open, new_s + 1);
    // Idle as long as the closed one, but established: it stays.
    age_connection(&mut e, 47400, &established, closing_s + 1);
    assert_eq!(e.dp.sweep().unwrap(), (4, vec![]));
    assert_eq!(e.dp.table_sizes().unwrap(), (2, 0));
    assert_eq!(translated(&e.run(&client_segment(47400, ACK | PSH).build())).dst, BACKEND_LAN);
}
