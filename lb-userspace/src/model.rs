//! The desired state of one node: what every source produces and the planner consumes.
//!
//! `Cluster` is plain data with no ids and no map layouts; it says *what* should be served, never
//! *how* it is programmed. Sources validate before they build one, so every `Cluster` is sound:
//! names are unique, frontends are not claimed twice, every service without a network has a NAT
//! address, every network reference names a network, every node reference names a node.
//!
//! The swarm part (nodes, overlay networks, the node each task runs on) is the same on every
//! node: which node *this* agent is, is not part of the model but an input of the planner, so
//! every node plans from the same `Cluster` and computes the same Maglev tables.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub node: NodeSettings,
    pub swarm: SwarmSettings,
    /// The swarm's nodes, in the order the source listed them (empty for a single-node setup).
    pub nodes: Vec<Node>,
    /// Overlay (VXLAN) networks, in the order the source listed them.
    pub networks: Vec<Network>,
    /// In the order the source listed them.
    pub services: Vec<Service>,
    /// This node's network namespaces whose sockets are balanced (socket load balancing): the
    /// node's own and its containers'. Local, like [`NodeSettings`].
    pub members: Vec<Member>,
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// VXLAN's IANA port, Docker's default data-path port.
pub const DEFAULT_VXLAN_PORT: u16 = lb_common::maps::DEFAULT_VXLAN_PORT;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmSettings {
    /// UDP port of the swarm's VXLAN data path.
    pub vxlan_port: u16,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        SwarmSettings { vxlan_port: DEFAULT_VXLAN_PORT }
    }
}

/// A swarm node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Underlay address: where VXLAN packets for this node's tasks go.
    pub addr: Ipv4Addr,
}

/// An IPv4 prefix such as 198.19.1.0/24 (no host bits set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The subnet's own address or its broadcast address (for prefixes below /31).
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.prefix < 31 && (ip == self.addr || u32::from(ip) == u32::from(self.addr) | !self.mask())
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An overlay network: a VXLAN segment spanning the nodes, with one load-balancer endpoint per
/// node (Docker's `lb-<network>` sandbox address), the source address of translated packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub mtu: u16,
    pub endpoints: Vec<Endpoint>,
}

impl Network {
    /// `node`'s load-balancer endpoint address on this network.
    pub fn endpoint(&self, node: &str) -> Option<Ipv4Addr> {
        self.endpoints.iter().find(|e| e.node == node).map(|e| e.addr)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub node: String,
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Inclusive SNAT source-port range.
    pub snat_ports: (u16, u16),
    pub malformed: MalformedPolicy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MalformedPolicy {
    #[default]
    Pass,
    Drop,
}

/// A network namespace of this node whose connections to frontends are balanced where they
/// start, by the socket programs: to the VIPs of the overlay networks it is attached to and,
/// if `node` is set, to this node's published ports and explicit frontends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// A file naming the namespace: Docker's `SandboxKey` (`/var/run/docker/netns/<id>`), a
    /// named netns (`/run/netns/<name>`), `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// For `status`: the container's name, `host` for the node's own namespace.
    pub name: String,
    /// Overlay networks (names of [`Cluster::networks`]) it is attached to.
    pub networks: Vec<String>,
    /// Its connections to the node's addresses reach published ports.
    pub node: bool,
    /// The node's own namespace: 127.0.0.0/8 is the node's too.
    pub host: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// Pick the backend from the client address alone.
    pub sticky: bool,
    /// Source addresses of packets translated toward this service's backends (each brings its
    /// own NAT ports). Empty only for a service with a network, whose source address is the
    /// local node's endpoint on it.
    pub nat_addrs: Vec<Ipv4Addr>,
    /// The overlay network its backends (tasks) are on; `None`: reached by plain routing.
    pub network: Option<String>,
    /// A service VIP on `network` (which it requires): its frontends are `VIP:*` (port 0, every
    /// port) and its backends' ports are 0 (the port the client named). Reached only by the
    /// sockets of `network`'s [`Member`]s, never by packets: no NAT address, no takeover.
    pub vip: bool,
    /// Backends see each connection's client address and port as its source (only the
    /// destination is translated); their replies must come back through the entry node. `false`:
    /// full NAT, the source is this node's NAT address.
    pub client_source: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::PROTO_TCP,
            Proto::Udp => lb_common::PROTO_UDP,
        }
    }

    /// This protocol's bit in the `slb_fe_ports` filter.
    pub const fn port_bit(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::PROTO_BIT_TCP,
            Proto::Udp => lb_common::PROTO_BIT_UDP,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Where clients reach a service: an address (or every local address) and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    /// `None` means any local address of this node (a published port).
    pub addr: Option<Ipv4Addr>,
    /// [`ANY_PORT`] (a VIP's frontend): every port.
    pub port: u16,
    pub proto: Proto,
}

/// [`Frontend::port`] of a VIP, and a VIP task's [`Backend::addr`] port: every port, each to
/// the same port of the task.
pub const ANY_PORT: u16 = 0;

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "{addr}:")?,
            None => write!(f, "*:")?,
        }
        match self.port {
            ANY_PORT => write!(f, "*/{}", self.proto.name()),
            port => write!(f, "{port}/{}", self.proto.name()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Unique within its service; Maglev hashes it, so the same name lands on the same slots on
    /// every node.
    pub name: String,
    pub addr: SocketAddrV4,
    /// Relative share of new connections; 0 drains (no new connections, established continue).
    pub weight: u32,
    /// The swarm node the task runs on, when known. Informational: it never changes where a
    /// connection goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings { snat_ports: lb_common::maps::DEFAULT_NODE_SNAT_PORTS, malformed: MalformedPolicy::Pass }
    }
}
