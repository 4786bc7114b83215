//! The control plane at swarm scale, through the file source, the planner and the writer as the
//! agent runs them, and frames through the real program: 1,000 services of 10 backends each are
//! planned and written, a connection is served on the first and on the last, and one backend
//! change is written as a diff of one service. Prints full-sync and one-change times and the
//! Maglev memory (no timing is asserted). Needs root.

use std::time::Instant;

use lb_common::{PROTO_TCP, maps};
use tests::{
    frames::{ACK, SYN, Spec},
    lan::*,
    testrun::{BACKEND_LAN, BACKEND_LAN_MAC, CLIENT, LAN_MAC},
};

const SERVICES: u16 = 1000;
const BACKENDS: u16 = 10;
const FIRST_PORT: u16 = 1000;

/// Service `s<i>` on VIP:`FIRST_PORT + i`, backends `s<i>.<j>` at the LAN backend's ports
/// `8000 + j` (one address, so every backend has a neighbour entry in the test namespace);
/// `moved` gives backend `s<service>.<backend>` another port.
fn config(moved: Option<(u16, u16)>) -> String {
    let mut s = node("");
    for i in 0..SERVICES {
        let backends: Vec<(String, u16)> = (0..BACKENDS)
            .map(|j| (format!("s{i}.{j}"), if moved == Some((i, j)) { 9000 + j } else { 8000 + j }))
            .collect();
        let list: Vec<(&str, [u8; 4], u16, u32)> =
            backends.iter().map(|(n, p)| (n.as_str(), BACKEND_LAN, *p, 1)).collect();
        s += &service(&format!("s{i}"), &format!("198.18.0.10:{}/tcp", FIRST_PORT + i), "", &list);
    }
    s
}

/// A SYN from the client to `port` is translated to a backend of that service, and the
/// backend's SYN-ACK goes back to the client from VIP:`port`.
fn serve(e: &Env, sport: u16, port: u16, backend_ports: std::ops::Range<u16>) {
    let syn = Spec::tcp(CLIENT, sport, VIP, port, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
    let out = translated(&e.run(&syn));
    assert_eq!((out.dst, out.proto), (BACKEND_LAN, PROTO_TCP));
    assert!(backend_ports.contains(&out.dport), "port {port} went to backend port {}", out.dport);
    let reply = Spec::tcp(out.dst, out.dport, out.src, out.sport, SYN | ACK).macs(BACKEND_LAN_MAC, LAN_MAC);
    let back = translated(&e.run(&reply.build()));
    assert_eq!((back.src, back.sport, back.dst, back.dport), (VIP, port, CLIENT, sport));
}

/// The backend ports 200 new connections to `port` reach, from client ports `first_sport..`.
fn backend_ports(e: &Env, port: u16, first_sport: u16) -> std::collections::BTreeSet<u16> {
    (0..200u16)
        .map(|n| {
            let syn = Spec::tcp(CLIENT, first_sport + n, VIP, port, SYN).macs(CLIENT_MAC_50, LAN_MAC).build();
            translated(&e.run(&syn)).dport
        })
        .collect()
}

#[test]
fn a_thousand_services_of_ten_backends() {
    let mut e = env();
    let text = config(None);
    let t = Instant::now();
    let full = e.dp.apply(&text).expect("full sync");
    let full_ms = t.elapsed().as_millis();
    assert_eq!(e.dp.plan().services.len(), SERVICES as usize);
    assert_eq!(full.maglev.len(), SERVICES as usize, "one table per service");
    let size = maps::maglev_size(BACKENDS as usize);
    assert!(full.maglev.iter().all(|(_, t)| t.len() == size as usize), "tables of {size} slots");

    serve(&e, 40000, FIRST_PORT, 8000..8000 + BACKENDS);
    serve(&e, 40001, FIRST_PORT + SERVICES - 1, 8000..8000 + BACKENDS);

    // One task of one service moves: one backend and one table are written, nothing else.
    let t = Instant::now();
    let change = e.dp.apply(&config(Some((500, 3)))).expect("one change");
    let change_us = t.elapsed().as_micros();
    assert_eq!(change.summary.to_string(), "1 backend added, 1 backend removed");
    assert_eq!(change.maglev.len(), 1);
    assert_eq!(change.maglev[0].0, e.dp.service_id("s500"));
    assert_eq!((change.backends.len(), change.removed_backends.len(), change.services.len()), (1, 1, 0));
    assert!(change.frontends.is_empty() && change.fe_ports.is_empty());
    // New connections to that service reach its moved backend's new port among the others.
    let ports = backend_ports(&e, FIRST_PORT + 500, 41000);
    assert!(ports.contains(&9003) && !ports.contains(&8003), "backend ports seen: {ports:?}");
    serve(&e, 40002, FIRST_PORT + SERVICES - 1, 8000..8000 + BACKENDS);

    // And back: the table retired by the first change is rewritten in place and flipped to.
    e.dp.apply(&config(None)).expect("the change undone");
    let ports = backend_ports(&e, FIRST_PORT + 500, 42000);
    assert!(ports.contains(&8003) && !ports.contains(&9003), "backend ports seen after undoing: {ports:?}");

    let slots = SERVICES as u64 * (size as u64 + 1);
    eprintln!(
        "scale: {SERVICES} services x {BACKENDS} backends: full sync (plan + write) {full_ms} ms, \
         one backend change {change_us} us; Maglev {size} slots per service, {} KiB of table values \
         (before: 65,537 slots, 256 KiB per service)",
        slots * 4 / 1024
    );
}
