//! Packet tests of services that keep the client's address (`source = "client"`) through
//! BPF_PROG_TEST_RUN: only the destination of a client's packet is translated, the backend's
//! reply to the client's own address and port is translated back, TCP and UDP; checksums are
//! verified from scratch with etherparse; full-NAT services beside them are unchanged. Needs
//! root; fails (never skips) without.

use lb_common::Reason;
use tests::{frames::*, lan::*, testrun::*};

const TASK: [u8; 4] = BACKEND_LAN;

/// An overlay service on `frontend` whose one task is `TASK:8080`, keeping the client's address.
fn client_service(name: &str, frontend: &str) -> String {
    swarm_service(name, frontend, 8080, true).replacen(
        "network = \"ov\"\n",
        "network = \"ov\"\nsource = \"client\"\n",
        1,
    )
}

#[test]
fn tcp_reaches_the_task_from_the_clients_own_address_and_replies_are_translated_back() {
    let mut e = swarm_env("pass", 4789, &client_service("web", "198.18.0.10:80/tcp"));
    let p = translated(&e.run(&client_syn(40000).build()));
    assert_eq!((p.src, p.sport, p.dst, p.dport, p.flags), (CLIENT, 40000, TASK, 8080, SYN), "only the destination");
    let syn_ack = Spec::tcp(TASK, 8080, CLIENT, 40000, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    let r = translated(&e.run(&syn_ack));
    assert_eq!((r.src, r.sport, r.dst, r.dport, r.flags), (VIP, 80, CLIENT, 40000, SYN | ACK), "the reply");
    let ack = translated(&e.run(&client_segment(40000, ACK).build()));
    assert_eq!((ack.src, ack.dst, ack.flags), (CLIENT, TASK, ACK));
    let forward = e.dp.flow(&key(CLIENT, 40000, VIP, 80, 6)).expect("table read").expect("tracked");
    assert_eq!((forward.new_src_addr, forward.new_src_port), (CLIENT, 40000), "no NAT port taken");
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 1)]);
}

#[test]
fn udp_keeps_the_clients_address_and_full_nat_services_beside_it_do_not() {
    let services =
        client_service("dns", "198.18.0.10:53/udp") + &swarm_service("web", "198.18.0.10:80/tcp", 8081, true);
    let e = swarm_env("pass", 4789, &services);
    let q = translated(&e.run(&Spec::udp(CLIENT, 41000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).build()));
    assert_eq!((q.src, q.sport, q.dst, q.dport), (CLIENT, 41000, TASK, 8080));
    let answer = Spec::udp(TASK, 8080, CLIENT, 41000).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    let a = translated(&e.run(&answer));
    assert_eq!((a.src, a.sport, a.dst, a.dport), (VIP, 53, CLIENT, 41000));
    // The full-NAT service still translates the source to this node's endpoint.
    let p = translated(&e.run(&client_syn(42000).build()));
    assert_eq!((p.src, p.dst), (LB_LAN, TASK));
    // A packet neither for a frontend nor a reply is looked up and passed untouched.
    let stray = Spec::udp(TASK, 9999, CLIENT, 43000).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    assert_eq!(e.run(&stray).action, XDP_PASS);
    e.dp.assert_reasons(&[(Reason::ToBackend, 2), (Reason::ToClient, 1), (Reason::PassNoFrontend, 1)]);
}

#[test]
fn a_client_tuple_already_held_towards_the_task_falls_back_to_a_nat_port() {
    let services = client_service("web", "198.18.0.10:80/tcp") + &client_service("alt", "198.18.0.10:81/tcp");
    let e = swarm_env("pass", 4789, &services);
    let first = translated(&e.run(&client_syn(44000).build()));
    assert_eq!((first.src, first.sport), (CLIENT, 44000));
    // The same client port through the other frontend to the same task: that tuple is taken.
    let other = Spec::tcp(CLIENT, 44000, VIP, 81, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let second = translated(&e.run(&other));
    assert_eq!((second.src, second.dst, second.dport), (LB_LAN, TASK, 8080), "NAT fallback");
    e.dp.assert_reasons(&[(Reason::ToBackend, 2)]);
}
