//! A virtual Docker swarm in namespaces, laid out the way Docker lays out a real one, for the
//! multi-node tests, the demo and benchmarks:
//!
//! - nodes on an underlay bridge (`ul` namespace), each node a namespace with interface `eth0`;
//! - per node and overlay network, an overlay namespace holding bridge `ov-<vni>` and VXLAN device
//!   `vx-<vni>` (created in the node namespace, so its UDP socket lives on the underlay, then moved,
//!   as Docker does), with static neighbour and FDB entries for everything on other nodes
//!   (overlay IP → MAC `02:42:`+IP → remote node's underlay address) and ARP proxying;
//! - per node and network, a load-balancer endpoint: veth `lb-<vni>` in the node namespace holding
//!   the node's overlay address (Docker's `ingress-sbox` / `lb-<network>` endpoint), its peer in
//!   the overlay bridge;
//! - tasks: namespaces with `eth0` on the overlay and `eth1` on the node's gateway bridge holding
//!   the default route, running `slb-testsrv`;
//! - clients on the underlay.
//!
//! Addresses: underlay 198.18.0.0/24 (nodes .11.., clients .101..), overlays 198.19.<net>.0/24,
//! gateway bridges 198.18.<100+node>.0/24.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

use crate::{
    cmd::sh,
    netns::{Netns, sibling_binary, unique_prefix},
};

pub const UNDERLAY_MTU: u32 = 1500;
/// VXLAN over IPv4 costs 50 bytes.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - 50;
pub const VXLAN_PORT: u16 = 4789;

pub fn node_addr(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + node as u8)
}

pub fn client_addr(client: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 101 + client as u8)
}

/// Docker's rule for a container MAC not set explicitly: `02:42:` and the IPv4 address.
pub fn overlay_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// An overlay network: a VNI and a /24.
#[derive(Clone, Debug)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    /// Third octet of 198.19.x.0/24.
    pub subnet: u8,
}

impl Network {
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.subnet, host)
    }
    /// The load-balancer endpoint address of `node` on this network.
    pub fn endpoint_addr(&self, node: usize) -> Ipv4Addr {
        self.addr(2 + node as u8)
    }
    pub fn subnet_cidr(&self) -> String {
        format!("198.19.{}.0/24", self.subnet)
    }
}

/// Something with an overlay address on some node: an endpoint or a task.
#[derive(Clone, Debug)]
struct OverlayHost {
    network: usize,
    node: usize,
    ip: Ipv4Addr,
}

pub struct Task {
    pub name: String,
    pub node: usize,
    pub network: usize,
    pub ip: Ipv4Addr,
    ns: Netns,
}

impl Task {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

pub struct Swarm {
    pub prefix: String,
    pub networks: Vec<Network>,
    pub nodes: Vec<Netns>,
    pub clients: Vec<Netns>,
    pub tasks: Vec<Task>,
    /// Overlay namespaces, `[node][network]`.
    overlays: Vec<Vec<Netns>>,
    hosts: Vec<OverlayHost>,
    next_task_host: Vec<u8>,
    /// Dropped last: the underlay bridge.
    _underlay: Netns,
}

impl Swarm {
    /// `nodes` nodes and `clients` clients on the underlay, with the given overlay networks.
    pub fn new(nodes: usize, clients: usize, networks: Vec<Network>) -> Result<Swarm> {
        let prefix = unique_prefix("s");
        let underlay = Netns::new(&format!("{prefix}-ul"))?;
        underlay.exec("ip link add br0 type bridge && ip link set br0 up")?;
        let mut swarm = Swarm {
            prefix: prefix.clone(),
            next_task_host: vec![100; networks.len()],
            networks,
            nodes: Vec::new(),
            clients: Vec::new(),
            tasks: Vec::new(),
            overlays: Vec::new(),
            hosts: Vec::new(),
            _underlay: underlay,
        };
        for node in 0..nodes {
            let ns = Netns::new(&format!("{prefix}-n{}", node + 1))?;
            swarm.plug_underlay(&ns, &format!("n{}", node + 1), node_addr(node))?;
            ns.exec("sysctl -qw net.ipv4.ip_forward=1")?;
            swarm.nodes.push(ns);
        }
        for client in 0..clients {
            let ns = Netns::new(&format!("{prefix}-c{}", client + 1))?;
            swarm.plug_underlay(&ns, &format!("c{}", client + 1), client_addr(client))?;
            ns.exec("ethtool -K eth0 tx off >/dev/null")?;
            swarm.clients.push(ns);
        }
        for node in 0..nodes {
            let mut per_network = Vec::new();
            for network in 0..swarm.networks.len() {
                per_network.push(swarm.build_overlay(node, network)?);
            }
            swarm.overlays.push(per_network);
            swarm.build_gateway_bridge(node)?;
        }
        for node in 0..nodes {
            for network in 0..swarm.networks.len() {
                swarm.add_endpoint(node, network)?;
            }
        }
        Ok(swarm)
    }

    fn plug_underlay(&self, ns: &Netns, port: &str, addr: Ipv4Addr) -> Result<()> {
        sh(&format!(
            "ip link add eth0 netns {} mtu {UNDERLAY_MTU} type veth peer name {port} netns {}",
            ns.name, self._underlay.name
        ))?;
        self._underlay.exec(&format!("ip link set {port} master br0 && ip link set {port} up"))?;
        ns.exec(&format!("ip addr add {addr}/24 dev eth0 && ip link set eth0 up"))?;
        // Native XDP redirects into eth0's peer need NAPI there.
        self._underlay.exec(&format!("ethtool -K {port} gro on >/dev/null"))?;
        Ok(())
    }

    /// Bridge and VXLAN device of `network` on `node`, in their own namespace.
    fn build_overlay(&self, node: usize, network: usize) -> Result<Netns> {
        let net = &self.networks[network];
        let vni = net.vni;
        let ns = Netns::new(&format!("{}-n{}-ov{}", self.prefix, node + 1, vni))?;
        ns.exec(&format!("ip link add ov-{vni} mtu {OVERLAY_MTU} type bridge && ip link set ov-{vni} up"))?;
        // Created on the node so the VXLAN socket is on the underlay, then moved, like Docker.
        self.nodes[node].exec(&format!(
            "ip link add vx-{vni} mtu {OVERLAY_MTU} type vxlan id {vni} local {} dstport {VXLAN_PORT} \
             nolearning proxy && ip link set vx-{vni} netns {}",
            node_addr(node),
            ns.name
        ))?;
        ns.exec(&format!("ip link set vx-{vni} master ov-{vni} && ip link set vx-{vni} up"))?;
        Ok(ns)
    }

    /// Docker's `docker_gwbridge`: tasks' default route and way out, never the overlay's.
    fn build_gateway_bridge(&self, node: usize) -> Result<()> {
        self.nodes[node].exec(&format!(
            "ip link add gwbridge type bridge && ip addr add 198.18.{}.1/24 dev gwbridge && ip link set gwbridge up",
            100 + node
        ))?;
        Ok(())
    }

    fn add_endpoint(&mut self, node: usize, network: usize) -> Result<()> {
        let net = self.networks[network].clone();
        let ip = net.endpoint_addr(node);
        let ov = &self.overlays[node][network];
        sh(&format!(
            "ip link add lb-{} netns {} mtu {OVERLAY_MTU} address {} type veth peer name lbep{} netns {}",
            net.vni,
            self.nodes[node].name,
            overlay_mac(ip),
            node + 1,
            ov.name
        ))?;
        ov.exec(&format!("ip link set lbep{} master ov-{} && ip link set lbep{} up", node + 1, net.vni, node + 1))?;
        ov.exec(&format!("ethtool -K lbep{} gro on >/dev/null", node + 1))?;
        self.nodes[node].exec(&format!("ip addr add {ip}/24 dev lb-{} && ip link set lb-{} up", net.vni, net.vni))?;
        self.announce(OverlayHost { network, node, ip })
    }

    /// Programs every other node's overlay with static neighbour and FDB entries for `host`, and
    /// `host`'s node with entries for everything already on other nodes, as Docker's gossip does.
    fn announce(&mut self, host: OverlayHost) -> Result<()> {
        let vni = self.networks[host.network].vni;
        for other in self.hosts.iter().filter(|h| h.network == host.network && h.node != host.node) {
            program_remote(&self.overlays[other.node][host.network], vni, &host)?;
            program_remote(&self.overlays[host.node][host.network], vni, other)?;
        }
        self.hosts.push(host);
        Ok(())
    }

    /// Starts a task of `network` on `node` running `slb-testsrv` named `name`.
    pub fn add_task(&mut self, name: &str, node: usize, network: usize) -> Result<usize> {
        let net = self.networks[network].clone();
        let host = self.next_task_host[network];
        self.next_task_host[network] += 1;
        let ip = net.addr(host);
        let mut ns = Netns::new(&format!("{}-t{}-{}", self.prefix, net.subnet, host))?;
        let ov = &self.overlays[node][network];
        let port = format!("t{host}");
        sh(&format!(
            "ip link add eth0 netns {} mtu {OVERLAY_MTU} address {} type veth peer name {port} netns {}",
            ns.name,
            overlay_mac(ip),
            ov.name
        ))?;
        ov.exec(&format!("ip link set {port} master ov-{} && ip link set {port} up", net.vni))?;
        ns.exec(&format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 up"))?;
        let gw = format!("gw{}-{host}", net.subnet);
        sh(&format!("ip link add eth1 netns {} type veth peer name {gw} netns {}", ns.name, self.nodes[node].name))?;
        self.nodes[node].exec(&format!("ip link set {gw} master gwbridge && ip link set {gw} up"))?;
        ns.exec(&format!(
            "ip addr add 198.18.{}.{host}/24 dev eth1 && ip link set eth1 up && ip route add default via 198.18.{}.1",
            100 + node,
            100 + node
        ))?;
        let server = sibling_binary("slb-testsrv")?;
        ns.spawn(server.to_str().context("path")?, &["--name", name, "--tcp", "8080", "--udp", "5353"])?;
        ns.wait_listening(8080)?;
        self.announce(OverlayHost { network, node, ip })?;
        self.tasks.push(Task { name: name.to_string(), node, network, ip, ns });
        Ok(self.tasks.len() - 1)
    }

    /// Deletes a task's namespace (its server and interfaces go with it) and forgets it, as
    /// Docker does when a task's container goes away.
    pub fn remove_task(&mut self, name: &str) -> Result<Task> {
        let index = self.tasks.iter().position(|t| t.name == name).with_context(|| format!("no task {name}"))?;
        let task = self.tasks.remove(index);
        let vni = self.networks[task.network].vni;
        // Interfaces first: a namespace is torn down asynchronously and the names must be free.
        let host = task.ip.octets()[3];
        self.overlays[task.node][task.network].exec(&format!("ip link del t{host}"))?;
        self.nodes[task.node].exec(&format!("ip link del gw{}-{host}", self.networks[task.network].subnet))?;
        for node in (0..self.nodes.len()).filter(|&n| n != task.node) {
            let ov = &self.overlays[node][task.network];
            let _ = ov.exec(&format!("ip neigh del {} dev vx-{vni}", task.ip));
            let _ = ov.exec(&format!("bridge fdb del {} dev vx-{vni} self", overlay_mac(task.ip)));
        }
        self.hosts.retain(|h| h.ip != task.ip || h.network != task.network);
        Ok(task)
    }

    pub fn task(&self, name: &str) -> Result<&Task> {
        match self.tasks.iter().find(|t| t.name == name) {
            Some(task) => Ok(task),
            None => bail!("no task {name}"),
        }
    }
}

fn program_remote(overlay: &Netns, vni: u32, remote: &OverlayHost) -> Result<()> {
    let mac = overlay_mac(remote.ip);
    overlay.exec(&format!(
        "ip neigh replace {} lladdr {mac} dev vx-{vni} nud permanent && \
         bridge fdb replace {mac} dev vx-{vni} self dst {} vni {vni} permanent",
        remote.ip,
        node_addr(remote.node)
    ))?;
    Ok(())
}
