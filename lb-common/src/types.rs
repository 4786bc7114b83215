//! `#[repr(C)]` keys and values of the datapath's maps. Addresses are IPv4 bytes in network
//! order (bpftool prints them as `[198,18,0,1]`); ports are in host order (bpftool prints them as
//! numbers). Every struct is padded explicitly so no byte is left uninitialised.

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// Bit in [`crate::maps::FE_PORTS`] values: some TCP frontend uses this port.
pub const PROTO_BIT_TCP: u8 = 1;
/// Bit in [`crate::maps::FE_PORTS`] values: some UDP frontend uses this port.
pub const PROTO_BIT_UDP: u8 = 2;

/// The address a frontend uses to mean "every local address of this node" (a published port).
pub const ANY_LOCAL_ADDR: [u8; 4] = [0; 4];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    pub service_id: u32,
}

/// [`Service::flags`]: pick the backend from the client address alone (sticky sessions).
pub const SERVICE_STICKY: u32 = 1;
/// [`Service::flags`]: backends are tasks on an overlay network. Their replies may arrive with a
/// partial (offloaded) L4 checksum when the task runs on this node, so replies get their TCP/UDP
/// checksum computed from scratch rather than updated.
pub const SERVICE_OVERLAY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Source address of translated packets, so replies come back to this node.
    pub snat_addr: [u8; 4],
    pub flags: u32,
    /// Backends with a weight above zero; 0 means new connections are dropped.
    pub active_backends: u32,
    /// Largest TCP MSS allowed on SYN and SYN-ACK of this service's connections, so segments
    /// fit the path to the backends (overlay MTU - 40); 0 leaves MSS alone.
    pub mss: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 4],
    pub port: u16,
    /// [`BACKEND_REMOVED`] once the agent has taken it out of its service.
    pub flags: u16,
}

/// [`Backend::flags`]: the backend has left its service. TCP connections on it go on (it may
/// still be finishing them); a UDP flow on it is balanced afresh on its next packet.
pub const BACKEND_REMOVED: u16 = 1;

/// A packet's 5-tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// [`Flow::direction`]: client to backend.
pub const DIR_TO_BACKEND: u8 = 0;
/// [`Flow::direction`]: backend to client (a reply).
pub const DIR_TO_CLIENT: u8 = 1;

/// [`Flow::tcp_state`]: open (or UDP).
pub const TCP_OPEN: u8 = 0;
/// [`Flow::tcp_state`]: a FIN was seen.
pub const TCP_FIN: u8 = 1;
/// [`Flow::tcp_state`]: a RST was seen.
pub const TCP_RST: u8 = 2;

/// Seconds a flow may stay idle before the table forgets it.
pub const IDLE_TCP_OPEN_S: u64 = 5 * 24 * 3600;
pub const IDLE_TCP_FIN_S: u64 = 60;
pub const IDLE_TCP_RST_S: u64 = 10;
pub const IDLE_UDP_S: u64 = 300;
/// How long an entry of `proto` in `tcp_state` may stay idle, in ns: the datapath treats an
/// entry idle for longer as gone.
pub const fn idle_timeout_ns(proto: u8, tcp_state: u8) -> u64 {
    const NS_PER_S: u64 = 1_000_000_000;
    if proto != PROTO_TCP {
        return IDLE_UDP_S * NS_PER_S;
    }
    match tcp_state {
        TCP_RST => IDLE_TCP_RST_S * NS_PER_S,
        TCP_FIN => IDLE_TCP_FIN_S * NS_PER_S,
        _ => IDLE_TCP_OPEN_S * NS_PER_S,
    }
}

/// `last_seen_ns` is refreshed at most this often, to keep the hot path free of writes.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;
/// A cached next hop is re-resolved with `bpf_fib_lookup` after this long.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Where to send a translated packet, cached per flow so most packets skip the FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// When `bpf_fib_lookup` last resolved it (`bpf_ktime_get_ns`).
    pub resolved_ns: u64,
    /// Egress interface; 0 means "not resolved".
    pub ifindex: u32,
    pub mtu: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub _pad: [u8; 6],
}

/// One direction of a connection: what to rewrite a matching packet's 4-tuple to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub new_src_addr: [u8; 4],
    pub new_dst_addr: [u8; 4],
    pub new_src_port: u16,
    pub new_dst_port: u16,
    pub service_id: u32,
    pub backend_id: u32,
    pub direction: u8,
    pub tcp_state: u8,
    pub _pad: [u8; 2],
    pub last_seen_ns: u64,
    pub next_hop: NextHop,
}

/// Per service or per backend traffic, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// [`Settings::malformed_policy`]: pass malformed packets to the kernel.
pub const MALFORMED_PASS: u32 = 0;
/// [`Settings::malformed_policy`]: drop malformed packets.
pub const MALFORMED_DROP: u32 = 1;

/// Node-wide datapath settings, one record at index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub malformed_policy: u32,
    /// Inclusive range of source ports used for NAT; must not overlap the kernel's
    /// `ip_local_port_range` on the SNAT address.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// UDP port of the swarm's VXLAN data path (0 means 4789), inspected on the underlay.
    pub vxlan_port: u16,
    pub _pad: u16,
}

// The eBPF and userspace sides must agree byte for byte; padding is spelled out above.
const _: () = {
    assert!(size_of::<FrontendKey>() == 8);
    assert!(size_of::<Frontend>() == 4);
    assert!(size_of::<Service>() == 16);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<NextHop>() == 32);
    assert!(size_of::<Flow>() == 64);
    assert!(size_of::<Traffic>() == 24);
    assert!(size_of::<Settings>() == 12);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, made of integers and byte arrays with explicit
    // padding fields, so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::Settings {}
}
