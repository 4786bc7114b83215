//! The single-link packet-test environment shared by the datapath's packet tests: a fresh test
//! namespace and datapath, services files for the backends on the test links (programmed through
//! the planner and writer, as the agent does), and the frames and keys those tests keep building.

use lb_common::{FlowKey, Reason};

use crate::{
    frames::{ACK, Parsed, SYN, Spec, parse_and_verify},
    testrun::{
        BACKEND_DC, BACKEND_DC_MAC, BACKEND_LAN_MAC, CLIENT, DC_MAC, Datapath, LAN_MAC, LB_LAN, Outcome, TestNet,
    },
};

pub const VIP: [u8; 4] = [198, 18, 0, 10];
pub const FE_PORT: u16 = 80;
pub const BE_PORT: u16 = 8080;
/// The first service of a services file gets id 1.
pub const SVC: u32 = 1;
/// The NAT port range of [`node`] (the file source's smallest allowed range).
pub const SNAT_MIN: u16 = 20000;
pub const SNAT_MAX: u16 = 21023;
pub const CLIENT_MAC_50: [u8; 6] = [0x02, 0, 0, 0, 0, 50];

pub struct Env {
    pub net: TestNet,
    pub dp: Datapath,
}

/// A fresh namespace and datapath, both test interfaces managed, no services yet.
pub fn env() -> Env {
    let net = TestNet::enter().expect("test network namespace (run as root)");
    let mut dp = Datapath::load().expect("load the datapath (run as root with BPF)");
    dp.add_tx_port(net.lan.ifindex).unwrap();
    dp.add_tx_port(net.dc.ifindex).unwrap();
    Env { net, dp }
}

fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The `[node]` table: NAT from the LB's LAN address, ports [`SNAT_MIN`]..=[`SNAT_MAX`], and
/// `extra` lines (e.g. `malformed = "drop"`).
pub fn node(extra: &str) -> String {
    format!("[node]\nnat_addr = \"{}\"\nsnat_ports = \"{SNAT_MIN}-{SNAT_MAX}\"\n{extra}\n", ip(LB_LAN))
}

/// A `[[service]]` table with one frontend and backends `(name, addr, port, weight)`; `extra`
/// lines go into the service table (e.g. `sticky = true`, `nat_addr = "..."`).
pub fn service(name: &str, frontend: &str, extra: &str, backends: &[(&str, [u8; 4], u16, u32)]) -> String {
    let mut s = format!("\n[[service]]\nname = \"{name}\"\nfrontends = [\"{frontend}\"]\n{extra}\n");
    for (b, addr, port, weight) in backends {
        s += &format!("[[service.backend]]\nname = \"{b}\"\naddr = \"{}:{port}\"\nweight = {weight}\n", ip(*addr));
    }
    s
}

/// The usual TCP service `web`: VIP:80 -> backend `lan` (198.18.0.100:8080).
pub fn web_config() -> String {
    node("") + &service("web", "198.18.0.10:80/tcp", "", &[("lan", crate::testrun::BACKEND_LAN, BE_PORT, 1)])
}

/// The VNI of [`one_node_swarm`]'s overlay.
pub const OVERLAY_VNI: u32 = 4096;

/// A one-node swarm whose overlay `ov` (VNI 4096, MTU 1450: MSS 1410) spans the test LAN, this
/// node's endpoint on it being the LB's LAN address; then `services`.
pub fn one_node_swarm(malformed: &str, vxlan_port: u16, services: &str) -> String {
    format!(
        "[node]\nnat_addr = \"198.18.0.1\"\nsnat_ports = \"20000-21023\"\nmalformed = \"{malformed}\"\n\
         [swarm]\nvxlan_port = {vxlan_port}\n[[swarm.node]]\nname = \"node-1\"\naddr = \"198.18.0.1\"\n\
         [[network]]\nname = \"ov\"\nvni = {OVERLAY_VNI}\nsubnet = \"198.18.0.0/24\"\nmtu = 1450\n\
         [[network.endpoint]]\nnode = \"node-1\"\naddr = \"198.18.0.1\"\n{services}"
    )
}

/// A fresh environment as node `node-1` of [`one_node_swarm`], programmed with `services`.
pub fn swarm_env(malformed: &str, vxlan_port: u16, services: &str) -> Env {
    let mut e = env();
    e.dp.set_local_node("node-1");
    e.apply(&one_node_swarm(malformed, vxlan_port, services));
    e
}

/// Service `name` on `frontend` whose one task is 198.18.0.100:`be_port`, on the overlay (MSS
/// clamped to 1410, replies' checksums from scratch) or routed (neither).
pub fn swarm_service(name: &str, frontend: &str, be_port: u16, overlay: bool) -> String {
    let network = if overlay { "network = \"ov\"\n" } else { "" };
    let node = if overlay { "node = \"node-1\"\n" } else { "" };
    format!(
        "\n[[service]]\nname = \"{name}\"\nfrontends = [\"{frontend}\"]\n{network}\
         [[service.backend]]\nname = \"{name}.1\"\naddr = \"198.18.0.100:{be_port}\"\n{node}"
    )
}

impl Env {
    /// Programs `config` as the agent would (a full sync first, diffs after).
    pub fn apply(&mut self, config: &str) {
        self.dp.apply(config).unwrap_or_else(|e| panic!("applying the services file: {e:#}\n{config}"));
    }

    pub fn web(&mut self) {
        self.apply(&web_config());
    }

    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.dp.run(frame, self.net.lan.ifindex).expect("test run")
    }

    pub fn count(&self, r: Reason) -> u64 {
        self.dp.reason(r).unwrap()
    }

    /// A segment with `flags` from the backend a translated client packet `p` went to, back to
    /// the NAT address and port it came from, received on that backend's link.
    pub fn from_backend(&self, p: &Parsed, flags: u8) -> Outcome {
        let (mac, lb_mac, ifindex) = if p.dst == BACKEND_DC {
            (BACKEND_DC_MAC, DC_MAC, self.net.dc.ifindex)
        } else {
            (BACKEND_LAN_MAC, LAN_MAC, self.net.lan.ifindex)
        };
        let frame = Spec::tcp(p.dst, p.dport, p.src, p.sport, flags).macs(mac, lb_mac).build();
        self.dp.run(&frame, ifindex).expect("test run")
    }

    /// A TCP connection from CLIENT:`sport` to VIP:`FE_PORT`: the client's SYN, the backend's
    /// SYN-ACK, the client's ACK of it. Returns the SYN as translated.
    pub fn connect(&self, sport: u16) -> Parsed {
        let syn = translated(&self.run(&client_syn(sport).build()));
        translated(&self.from_backend(&syn, SYN | ACK));
        translated(&self.run(&client_segment(sport, ACK).build()));
        syn
    }
}

/// A client's segment with `flags` on the connection from source port `sport`.
pub fn client_segment(sport: u16, flags: u8) -> Spec {
    Spec::tcp(CLIENT, sport, VIP, FE_PORT, flags).macs(CLIENT_MAC_50, LAN_MAC)
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
