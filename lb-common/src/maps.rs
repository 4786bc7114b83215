//! Names (at most 15 bytes, the kernel's limit) and capacities of every map the datapath owns.
//! Maps are pinned under [`PIN_DIR`] so the datapath outlives an agent restart.

/// bpffs directory holding the pinned maps and the pinned XDP links.
pub const PIN_DIR: &str = "/sys/fs/bpf/swarmlb";

/// Name of the load-balancing XDP program.
pub const PROG_LB: &str = "swarmlb";
/// Name of the pass-everything XDP program, for veth peers that need one to receive redirects.
pub const PROG_PASS: &str = "swarmlb_pass";
/// Name of the TC ingress program that sends what the XDP program handed off (a frame whose
/// next hop has no neighbour entry yet) through the kernel's neighbour resolution.
pub const PROG_NEIGH: &str = "swarmlb_neigh";

/// Frontends: [`crate::FrontendKey`] -> [`crate::Frontend`].
pub const FRONTENDS: &str = "slb_frontends";
/// Port filter: destination port -> [`crate::PROTO_BIT_TCP`] / [`crate::PROTO_BIT_UDP`] bits.
pub const FE_PORTS: &str = "slb_fe_ports";
/// Addresses that "any local address" frontends answer on: address -> 1.
pub const LOCAL_ADDRS: &str = "slb_local_addrs";
/// Services by id: [`crate::Service`].
pub const SERVICES: &str = "slb_services";
/// Backends by id: [`crate::Backend`].
pub const BACKENDS: &str = "slb_backends";
/// Maglev lookup tables, `MAGLEV_SIZE` backend ids per service, service id major.
pub const MAGLEV: &str = "slb_maglev";
/// Connection table: [`crate::FlowKey`] -> [`crate::Flow`], two entries per connection.
pub const CONNTRACK: &str = "slb_conntrack";
/// New-flow table: entries of connections not yet confirmed ([`crate::CT_NEW`],
/// [`crate::CT_SYN_RECV`]), same key and value as [`CONNTRACK`]. A flood of spoofed SYNs fills
/// this small table and evicts only its own kind, never an established connection.
pub const NEW_FLOWS: &str = "slb_ct_new";
/// Addresses replies come back to (every service's SNAT address): address -> 1.
pub const SNAT_ADDRS: &str = "slb_snat_addrs";
/// Per-CPU count per [`crate::CtEvent`]: what the connection tables did besides packets' fates.
pub const CT_EVENTS: &str = "slb_ct_events";
/// Per-CPU [`crate::Traffic`] per service id.
pub const SVC_STATS: &str = "slb_svc_stats";
/// Per-CPU [`crate::Traffic`] per backend id.
pub const BE_STATS: &str = "slb_be_stats";
/// Per-CPU packet count per [`crate::Reason`].
pub const REASONS: &str = "slb_reasons";
/// One [`crate::Settings`] record.
pub const SETTINGS: &str = "slb_settings";
/// Interfaces the datapath may redirect to (devmap keyed by ifindex).
pub const TX_PORTS: &str = "slb_tx_ports";
/// VXLAN networks of this swarm: VNI -> 1. VXLAN packets with other VNIs are counted apart.
pub const OVERLAYS: &str = "slb_overlays";

/// Service ids are `1..MAX_SERVICES`; id 0 means "none".
pub const MAX_SERVICES: u32 = 64;
/// Backend ids are `1..MAX_BACKENDS`; id 0 means "no backend" in a Maglev slot.
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_FRONTENDS: u32 = 1024;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_TX_PORTS: u32 = 64;
pub const MAX_OVERLAYS: u32 = 256;
/// VXLAN's IANA port, used when [`crate::Settings::vxlan_port`] is 0.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Prime Maglev table size (slots per service).
pub const MAGLEV_SIZE: u32 = 65537;
/// Connection-table entries (each connection takes two).
pub const CONNTRACK_SIZE: u32 = 1 << 19;
/// New-flow table entries (two per unconfirmed connection). Half of this, 16384 half-open
/// connections, is what a SYN flood can hold at once; at 1 Mpps each lives ~16 ms, 100 times a
/// local round trip, so real handshakes complete beside it.
pub const NEW_FLOWS_SIZE: u32 = 1 << 15;
/// SNAT addresses one service can use on one node (each multiplies its NAT ports).
pub const MAX_SNAT_PER_SERVICE: usize = 4;
/// Upper bound of the SNAT addresses in [`SNAT_ADDRS`].
pub const MAX_SNAT_ADDRS: u32 = 256;
/// Default NAT port range on a node address: every unprivileged port below the kernel's default
/// `ip_local_port_range` (32768-60999), so translated flows never take a tuple the node's own
/// connections could use.
pub const DEFAULT_NODE_SNAT_PORTS: (u16, u16) = (1024, 32767);
/// NAT port range on an overlay endpoint address (no local socket uses it): every
/// unprivileged port.
pub const OVERLAY_SNAT_PORTS: (u16, u16) = (1024, 65535);
/// One entry per possible destination port.
pub const FE_PORTS_SIZE: u32 = 1 << 16;
