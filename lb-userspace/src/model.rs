//! The desired state of one node: what every source produces and the planner consumes.
//!
//! `Cluster` is plain data with no ids and no map layouts; it says *what* should be served, never
//! *how* it is programmed. Sources validate before they build one, so every `Cluster` is sound:
//! names are unique, frontends are not claimed twice, every service has a NAT address.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use serde::{Deserialize, Serialize};

/// Default SNAT source-port range: below the kernel's default `ip_local_port_range`
/// (32768-60999), so translated flows never collide with the node's own connections.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (16384, 32767);

/// Largest accepted backend weight. Weights are relative; this bound keeps a typo such as
/// `weight = 10000000` from starving every other backend of Maglev slots.
pub const MAX_WEIGHT: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub node: NodeSettings,
    /// In the order the source listed them.
    pub services: Vec<Service>,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// Pick the backend from the client address alone.
    pub sticky: bool,
    /// Source address of packets translated toward this service's backends.
    pub nat_addr: Ipv4Addr,
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
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "{addr}:{}/{}", self.port, self.proto.name()),
            None => write!(f, "*:{}/{}", self.port, self.proto.name()),
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
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings { snat_ports: DEFAULT_SNAT_PORTS, malformed: MalformedPolicy::Pass }
    }
}
