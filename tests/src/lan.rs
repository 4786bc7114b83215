//! The single-link packet-test environment shared by the datapath's packet tests: a fresh test
//! namespace and datapath, a TCP service on `VIP:80` whose backends sit on the test links, and
//! the frames and keys those tests keep building.

use lb_common::{FlowKey, PROTO_BIT_TCP, PROTO_BIT_UDP, PROTO_TCP, Reason, Service, Settings, MALFORMED_PASS};

use crate::{
    frames::{Parsed, SYN, Spec, parse_and_verify},
    testrun::{BACKEND_LAN, CLIENT, Datapath, LAN_MAC, LB_LAN, Outcome, TestNet},
};

pub const VIP: [u8; 4] = [198, 18, 0, 10];
pub const FE_PORT: u16 = 80;
pub const BE_PORT: u16 = 8080;
pub const SVC: u32 = 1;
pub const SNAT_MIN: u16 = 20000;
pub const SNAT_MAX: u16 = 20999;
pub const CLIENT_MAC_50: [u8; 6] = [0x02, 0, 0, 0, 0, 50];

pub struct Env {
    pub net: TestNet,
    pub dp: Datapath,
}

/// A fresh namespace and datapath with the default settings, both test interfaces managed.
pub fn env() -> Env {
    let net = TestNet::enter().expect("test network namespace (run as root)");
    let mut dp = Datapath::load().expect("load the datapath (run as root with BPF)");
    dp.add_tx_port(net.lan.ifindex).unwrap();
    dp.add_tx_port(net.dc.ifindex).unwrap();
    dp.set_settings(Settings { malformed_policy: MALFORMED_PASS, snat_port_min: SNAT_MIN, snat_port_max: SNAT_MAX, vxlan_port: 0, _pad: 0 })
        .unwrap();
    Env { net, dp }
}

impl Env {
    /// A service with one frontend and backends `(id, addr, port)`, Maglev slots cycling over them.
    pub fn service(&mut self, id: u32, fe: ([u8; 4], u16, u8), snat: [u8; 4], flags: u32, backends: &[(u32, [u8; 4], u16)]) {
        let (addr, port, proto) = fe;
        let bit = if proto == PROTO_TCP { PROTO_BIT_TCP } else { PROTO_BIT_UDP };
        self.dp.set_fe_port(port, bit).unwrap();
        self.dp.set_frontend(addr, port, proto, id).unwrap();
        self.dp
            .set_service(id, Service { snat_addr: snat, flags, active_backends: backends.len() as u32, mss: 0, _pad: 0 })
            .unwrap();
        for (bid, baddr, bport) in backends {
            self.dp.set_backend(*bid, *baddr, *bport).unwrap();
        }
        let ids: Vec<u32> = backends.iter().map(|b| b.0).collect();
        self.dp.set_maglev(id, &ids).unwrap();
    }

    /// The usual TCP service: VIP:80 -> backend 1 on the LAN, SNAT to the LB's LAN address.
    pub fn web(&mut self) {
        self.service(SVC, (VIP, FE_PORT, PROTO_TCP), LB_LAN, 0, &[(1, BACKEND_LAN, BE_PORT)]);
    }

    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.dp.run(frame, self.net.lan.ifindex).expect("test run")
    }

    pub fn count(&self, r: Reason) -> u64 {
        self.dp.reason(r).unwrap()
    }
}

/// A client's SYN to the frontend from source port `sport`.
pub fn client_syn(sport: u16) -> Spec {
    Spec::tcp(CLIENT, sport, VIP, FE_PORT, SYN).macs(CLIENT_MAC_50, LAN_MAC)
}

pub fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey { src_addr: src, dst_addr: dst, src_port: sport, dst_port: dport, proto, _pad: [0; 3] }
}

/// The output frame, parsed, with every checksum verified from scratch.
pub fn translated(out: &Outcome) -> Parsed {
    parse_and_verify(&out.frame).expect("output frame with valid checksums")
}
