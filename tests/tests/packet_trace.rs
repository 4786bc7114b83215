//! Packet tests of `swarmlb trace` through BPF_PROG_TEST_RUN: with the filter set for one
//! client, that client's packets produce aya-log lines (frontend, new flow and NAT, verdict)
//! read the way `swarmlb trace` reads them, another client's and frames that do not parse
//! produce none, and none are
//! produced once the filter is cleared or its deadline has passed. Maps are programmed through
//! the planner and writer. Needs root; fails (never skips) without.

use std::time::Duration;

use swarmlb::trace::{self, Filter, Names, Reader};
use tests::{frames::*, lan::*, testrun::*};

const OTHER: [u8; 4] = [198, 18, 0, 51];

fn other_syn(sport: u16) -> Vec<u8> {
    Spec::tcp(OTHER, sport, VIP, FE_PORT, SYN).macs(client_mac(51), LAN_MAC).build()
}

#[test]
fn only_the_traced_client_is_logged_and_nothing_once_off() {
    let mut e = env();
    e.web();
    let mut reader = Reader::attach(e.dp.pin_dir()).expect("attach to swarmlb_log");
    assert!(reader.drain().is_empty());

    // Off (as the map is created): nothing, and the datapath works as ever.
    assert_eq!(e.run(&client_syn(40000).build()).action, XDP_TX);
    assert!(reader.drain().is_empty(), "filter off: no records");

    let pin_dir = e.dp.pin_dir().to_owned();
    trace::set(&pin_dir, Filter { client: Some(CLIENT.into()), service_id: 0 }, Duration::from_secs(30)).unwrap();
    let out = e.run(&client_syn(40001).build());
    assert_eq!(out.action, XDP_TX, "a traced packet is decided the same way");
    let p = translated(&out);
    let lines = reader.drain();
    let names = Names { services: [(SVC, "web".to_owned())].into(), ..Names::default() };
    let lines: Vec<String> = lines.iter().map(|l| names.render(l)).collect();
    let from = "198.18.0.50:40001 > 198.18.0.10:80 proto=tcp";
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0], format!("{from} frontend service=web"));
    assert!(
        lines[1].starts_with(&format!("{from} new flow direction=to_backend service=web backend=1")),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(&format!("nat 198.18.0.1:{} > 198.18.0.100:8080", p.sport)), "{}", lines[1]);
    assert_eq!(lines[2], format!("{from} action=tx reason=to_backend"));

    // The backend's reply is the traced client's too; another client is not.
    e.from_backend(&p, SYN | ACK);
    let reply = reader.drain();
    assert_eq!(reply.len(), 2, "{reply:#?}");
    assert!(names.render(&reply[0]).contains("existing flow direction=to_client"), "{}", reply[0]);
    assert_eq!(e.run(&other_syn(40002)).action, XDP_TX);
    assert!(reader.drain().is_empty(), "another client: no records");
    // A frame that does not parse is not logged under the last traced packet's tuple.
    e.run(&client_syn(40007).build());
    reader.drain();
    assert_eq!(e.run(&other_ethertype(ETH_P_ARP, 28)).action, XDP_PASS);
    assert!(reader.drain().is_empty(), "ARP after a traced packet: no records");

    // Cleared, or past its deadline: nothing.
    trace::clear(&pin_dir).unwrap();
    e.run(&client_syn(40003).build());
    assert!(reader.drain().is_empty(), "cleared: no records");
    trace::set(&pin_dir, Filter::default(), Duration::ZERO).unwrap();
    e.run(&client_syn(40004).build());
    assert!(reader.drain().is_empty(), "expired: no records");

    // Any client of the service: both.
    trace::set(&pin_dir, Filter { client: None, service_id: SVC }, Duration::from_secs(30)).unwrap();
    e.run(&client_syn(40005).build());
    e.run(&other_syn(40006));
    assert_eq!(reader.drain().len(), 6);
}
