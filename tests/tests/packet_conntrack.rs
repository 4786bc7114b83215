//! Packet tests of a connection's life in the connection table through BPF_PROG_TEST_RUN: FIN
//! and RST shortening an entry's life, a client reusing its port after a close, flows whose
//! backend left the service, and SNAT
//! source-port allocation running out and recovering. Checksums are verified from scratch;
//! every test asserts its reason counters. Needs root; fails (never skips) without.

use lb_common::{
    BACKEND_REMOVED, Backend, Flow, IDLE_TCP_FIN_S, MALFORMED_PASS, PROTO_TCP, PROTO_UDP, Reason, Service, Settings,
    TCP_FIN, TCP_OPEN, TCP_RST,
};
use tests::{frames::*, lan::*, testrun::*};

#[test]
fn fin_and_rst_age_out_the_connection() {
    let mut e = env();
    e.web();
    let fwd_key = key(CLIENT, 47000, VIP, FE_PORT, PROTO_TCP);
    let p = translated(&e.run(&client_syn(47000).build()));
    let rev_key = key(BACKEND_LAN, BE_PORT, LB_LAN, p.sport, PROTO_TCP);

    let fin = Spec::tcp(CLIENT, 47000, VIP, FE_PORT, FIN | ACK).macs(CLIENT_MAC_50, LAN_MAC).build();
    assert_eq!(translated(&e.run(&fin)).flags, FIN | ACK);
    assert_eq!(e.dp.flow(&fwd_key).unwrap().unwrap().tcp_state, TCP_FIN);
    assert_eq!(e.dp.flow(&rev_key).unwrap().unwrap().tcp_state, TCP_FIN, "peer entry learns the FIN too");

    // Still within IDLE_TCP_FIN_S: the backend's FIN goes through.
    let fin_back = Spec::tcp(BACKEND_LAN, BE_PORT, LB_LAN, p.sport, FIN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    assert_eq!(translated(&e.run(&fin_back)).dst, CLIENT);

    // Age both entries past the FIN timeout: the connection is gone.
    let old = monotonic_ns() - (IDLE_TCP_FIN_S + 1) * 1_000_000_000;
    for k in [fwd_key, rev_key] {
        let mut f: Flow = e.dp.flow(&k).unwrap().unwrap();
        f.last_seen_ns = old;
        e.dp.set_flow(k, f).unwrap();
    }
    let ack = Spec::tcp(CLIENT, 47000, VIP, FE_PORT, ACK).macs(CLIENT_MAC_50, LAN_MAC).build();
    let out = e.run(&ack);
    assert_eq!((out.action, &out.frame), (XDP_PASS, &ack));
    let out = e.run(&fin_back);
    assert_eq!((out.action, &out.frame), (XDP_PASS, &fin_back), "expired reply is not translated");

    // A new SYN on the same tuple makes a new connection.
    let p2 = translated(&e.run(&client_syn(47000).build()));
    assert_eq!(p2.dst, BACKEND_LAN);
    let f = e.dp.flow(&fwd_key).unwrap().unwrap();
    assert_eq!((f.tcp_state, f.new_src_port), (TCP_OPEN, p2.sport));

    // RST moves both entries to the RST state.
    let rst = Spec::tcp(CLIENT, 47000, VIP, FE_PORT, RST).macs(CLIENT_MAC_50, LAN_MAC).build();
    translated(&e.run(&rst));
    assert_eq!(e.dp.flow(&fwd_key).unwrap().unwrap().tcp_state, TCP_RST);
    let rev2 = key(BACKEND_LAN, BE_PORT, LB_LAN, p2.sport, PROTO_TCP);
    assert_eq!(e.dp.flow(&rev2).unwrap().unwrap().tcp_state, TCP_RST);

    e.dp.assert_reasons(&[(Reason::ToBackend, 4), (Reason::ToClient, 1), (Reason::PassNoConnection, 1), (Reason::PassNoFrontend, 1)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 2);
}

#[test]
fn syn_on_a_closed_connection_is_balanced_afresh() {
    syn_reopens_a_closed_connection(FE_PORT);
}

/// A published port inside the SNAT port range: the client's packets to it look like replies by
/// port, and must get the same treatment.
#[test]
fn syn_on_a_closed_connection_is_balanced_afresh_on_a_frontend_port_in_the_snat_range() {
    syn_reopens_a_closed_connection(SNAT_MIN + 500);
}

fn syn_reopens_a_closed_connection(fe_port: u16) {
    let mut e = env();
    e.service(SVC, (VIP, fe_port, PROTO_TCP), LB_LAN, 0, &[(1, BACKEND_LAN, BE_PORT), (2, BACKEND_DC, BE_PORT)]);
    let syn = || Spec::tcp(CLIENT, 47100, VIP, fe_port, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let fwd_key = key(CLIENT, 47100, VIP, fe_port, PROTO_TCP);
    let first = translated(&e.run(&syn()));
    let (other_id, other_addr) = if first.dst == BACKEND_LAN { (2, BACKEND_DC) } else { (1, BACKEND_LAN) };
    let old_rev = key(first.dst, BE_PORT, first.src, first.sport, PROTO_TCP);

    // The first backend leaves the Maglev table: a retransmitted SYN of the open connection
    // still goes where the first one went.
    e.dp.set_maglev(SVC, &[other_id]).unwrap();
    e.dp.set_service(SVC, Service { snat_addr: LB_LAN, flags: 0, active_backends: 1, mss: 0, _pad: 0 }).unwrap();
    assert_eq!(translated(&e.run(&syn())).dst, first.dst, "SYN retransmission");

    // The connection closes; well within the FIN timeout the client opens a new one from the
    // same port. It is a new connection: balanced by today's table, with its own SNAT port.
    let fin = Spec::tcp(CLIENT, 47100, VIP, fe_port, FIN | ACK).macs(CLIENT_MAC_50, LAN_MAC).build();
    translated(&e.run(&fin));
    assert_eq!(e.dp.flow(&fwd_key).unwrap().unwrap().tcp_state, TCP_FIN);
    let again = translated(&e.run(&syn()));
    assert_eq!((again.dst, again.flags), (other_addr, SYN));
    assert!(e.dp.flow(&old_rev).unwrap().is_none(), "the old connection's SNAT port is released");
    let f = e.dp.flow(&fwd_key).unwrap().unwrap();
    assert_eq!((f.tcp_state, f.backend_id, f.new_src_port), (TCP_OPEN, other_id, again.sport));
    let new_rev = key(other_addr, BE_PORT, again.src, again.sport, PROTO_TCP);
    assert_eq!(e.dp.flow(&new_rev).unwrap().unwrap().tcp_state, TCP_OPEN);

    // The same after a reset: the next SYN on the tuple is balanced again, not sent to the
    // backend that reset it.
    let rst = Spec::tcp(other_addr, BE_PORT, again.src, again.sport, RST | ACK).macs(BACKEND_LAN_MAC, LAN_MAC).build();
    assert_eq!(translated(&e.run(&rst)).flags, RST | ACK);
    assert_eq!(e.dp.flow(&fwd_key).unwrap().unwrap().tcp_state, TCP_RST);
    let third = translated(&e.run(&syn()));
    assert_eq!(third.dst, other_addr);
    assert_eq!(e.dp.flow(&fwd_key).unwrap().unwrap().tcp_state, TCP_OPEN);

    e.dp.assert_reasons(&[(Reason::ToBackend, 5), (Reason::ToClient, 1)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 3);
}

#[test]
fn snat_port_exhaustion_drops_and_idle_ports_are_reused() {
    let mut e = env();
    e.web();
    e.dp.set_settings(Settings { malformed_policy: MALFORMED_PASS, snat_port_min: 30000, snat_port_max: 30001, vxlan_port: 0, _pad: 0 }).unwrap();
    let a = translated(&e.run(&client_syn(48000).build()));
    let b = translated(&e.run(&client_syn(48001).build()));
    let mut ports = [a.sport, b.sport];
    ports.sort();
    assert_eq!(ports, [30000, 30001], "two flows, two distinct ports");
    let out = e.run(&client_syn(48002).build());
    assert_eq!(out.action, XDP_DROP);
    assert_eq!(e.count(Reason::DropPortsExhausted), 1);
    assert!(e.dp.flow(&key(CLIENT, 48002, VIP, FE_PORT, PROTO_TCP)).unwrap().is_none());

    // The first connection is reset and idles out: its port can be taken again.
    let rev = key(BACKEND_LAN, BE_PORT, LB_LAN, a.sport, PROTO_TCP);
    let mut f = e.dp.flow(&rev).unwrap().unwrap();
    f.tcp_state = TCP_RST;
    f.last_seen_ns = monotonic_ns() - 11_000_000_000;
    e.dp.set_flow(rev, f).unwrap();
    let c = translated(&e.run(&client_syn(48002).build()));
    assert_eq!(c.sport, a.sport);
    e.dp.assert_reasons(&[(Reason::ToBackend, 3), (Reason::DropPortsExhausted, 1)]);
}


#[test]
fn udp_flow_moves_off_a_removed_backend_while_tcp_stays() {
    let mut e = env();
    e.service(SVC, (VIP, 53, PROTO_UDP), LB_LAN, 0, &[(1, BACKEND_LAN, 5353), (2, BACKEND_DC, 5353)]);
    let query = || Spec::udp(CLIENT, 41000, VIP, 53).macs(CLIENT_MAC_50, LAN_MAC).payload(b"q").build();
    let first = translated(&e.run(&query()));
    let (gone_id, gone_addr, other_id, other_addr) =
        if first.dst == BACKEND_LAN { (1, BACKEND_LAN, 2, BACKEND_DC) } else { (2, BACKEND_DC, 1, BACKEND_LAN) };

    // Drained (out of the Maglev table): the flow stays on its backend.
    e.dp.set_maglev(SVC, &[other_id]).unwrap();
    e.dp.set_service(SVC, Service { snat_addr: LB_LAN, flags: 0, active_backends: 1, mss: 0, _pad: 0 }).unwrap();
    assert_eq!(translated(&e.run(&query())).dst, gone_addr, "a drained backend keeps its UDP flows");

    // Removed: the next datagram is balanced afresh and the old SNAT port is released.
    e.dp.write_backend(gone_id, Backend { addr: gone_addr, port: 5353, flags: BACKEND_REMOVED }).unwrap();
    let moved = translated(&e.run(&query()));
    assert_eq!((moved.dst, moved.dport), (other_addr, 5353));
    assert!(e.dp.flow(&key(gone_addr, 5353, first.src, first.sport, PROTO_UDP)).unwrap().is_none());
    assert_eq!(e.dp.flow(&key(CLIENT, 41000, VIP, 53, PROTO_UDP)).unwrap().unwrap().backend_id, other_id);

    // The backend's id handed to another address: the flow on the old address moves too.
    e.dp.write_backend(other_id, Backend { addr: gone_addr, port: 5353, flags: 0 }).unwrap();
    assert_eq!(translated(&e.run(&query())).dst, gone_addr);

    // A TCP connection on a removed backend goes on: the task may still be finishing it.
    e.service(2, (VIP, FE_PORT, PROTO_TCP), LB_LAN, 0, &[(3, BACKEND_LAN, BE_PORT)]);
    translated(&e.run(&client_syn(41001).build()));
    e.dp.write_backend(3, Backend { addr: BACKEND_LAN, port: BE_PORT, flags: BACKEND_REMOVED }).unwrap();
    let ack = Spec::tcp(CLIENT, 41001, VIP, FE_PORT, ACK).macs(CLIENT_MAC_50, LAN_MAC).build();
    assert_eq!(translated(&e.run(&ack)).dst, BACKEND_LAN);

    e.dp.assert_reasons(&[(Reason::ToBackend, 6)]);
    assert_eq!(e.dp.service_traffic(SVC).unwrap().new_flows, 3);
}
