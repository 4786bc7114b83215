//! `#[repr(C)]` keys and values of the datapath's maps. Addresses are IPv4 bytes in network
//! order (bpftool prints them as `[198,18,0,1]`); ports are in host order (bpftool prints them as
//! numbers). Every struct is padded explicitly so no byte is left uninitialised.

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// Bit in [`crate::maps::FE_PORTS`] values: some TCP frontend uses this port.
pub const PROTO_BIT_TCP: u8 = 1;
/// Bit in [`crate::maps::FE_PORTS`] values: some UDP frontend uses this port.
pub const PROTO_BIT_UDP: u8 = 2;
/// A protocol's bit shifted by this in [`crate::maps::FE_PORTS`] values: a frontend of that
/// protocol used this port and connections through it may still run. Their packets are looked
/// up (so they finish on their backend) while new connections to a removed frontend are refused;
/// the agent clears the bit once the connection tables hold none.
pub const PORT_TRACKED_SHIFT: u8 = 2;

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
/// [`Service::flags`]: a service VIP (frontends `VIP:*`), reached only by the sockets of network
/// namespaces attached to overlay [`Service::vni`]: the socket programs rewrite their connect
/// to a backend, the XDP program never sees it as a frontend.
pub const SERVICE_VIP: u32 = 4;
/// [`Service::flags`]: keep the client's address: a new connection's packets reach the backend
/// with the client's own source address and port (only the destination is translated), and the
/// backend's replies, which must come back through this node, are translated back here.
pub const SERVICE_CLIENT_SOURCE: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Source addresses of translated packets, so replies come back to this node: the first
    /// `snat_count` are used, each with its own NAT ports towards every backend.
    pub snat_addrs: [[u8; 4]; crate::maps::MAX_SNAT_PER_SERVICE],
    pub flags: u32,
    /// Backends with a weight above zero; 0 means new connections are dropped.
    pub active_backends: u32,
    /// Largest TCP MSS allowed on SYN and SYN-ACK of this service's connections, so segments
    /// fit the path to the backends (overlay MTU - 40); 0 leaves MSS alone.
    pub mss: u16,
    pub snat_count: u8,
    pub _pad: u8,
    /// Inclusive range of NAT source ports on each SNAT address: wide on an overlay endpoint (no
    /// local socket uses that address), outside `ip_local_port_range` on a node address.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// [`SERVICE_VIP`]: the VNI of the overlay whose members may reach it; 0 otherwise.
    pub vni: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 4],
    /// 0 for a VIP service's task: the port the client asked for (`VIP:p` goes to `task:p`).
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

/// [`Flow::state`]: the first packet went to the backend and nothing came back yet (a TCP SYN,
/// a UDP datagram). Such entries live in the new-flow table (`slb_ct_new`), never in the main one.
pub const CT_NEW: u8 = 0;
/// [`Flow::state`]: TCP, the backend answered with SYN-ACK; the client's ACK of it completes
/// the handshake. Also in the new-flow table.
pub const CT_SYN_RECV: u8 = 1;
/// [`Flow::state`]: TCP handshake completed, or UDP answered: in the main table.
pub const CT_ESTABLISHED: u8 = 2;
/// [`Flow::state`]: TCP, one side sent FIN (see [`Flow::fins`]).
pub const CT_HALF_CLOSED: u8 = 3;
/// [`Flow::state`]: TCP, both sides sent FIN.
pub const CT_CLOSING: u8 = 4;
/// [`Flow::state`]: TCP, a RST was seen.
pub const CT_RESET: u8 = 5;

/// [`Flow::fins`]: the client sent FIN.
pub const FIN_FROM_CLIENT: u8 = 1;
/// [`Flow::fins`]: the backend sent FIN.
pub const FIN_FROM_BACKEND: u8 = 2;

/// Seconds an entry may stay idle in each state before the table forgets it.
///
/// - New (TCP handshake, UDP unanswered): 30 s. A real handshake completes in one round trip;
///   a client retransmits its SYN after 1, 3, 7, 15 s and each retransmission refreshes the entry,
///   the backend retransmits its SYN-ACK within 31 s. A spoofed SYN's NAT port is back after
///   at most this (sooner under pressure: see the new-flow table's eviction).
/// - Established TCP: 5 days, as Linux conntrack; never the routing mesh's 15 minutes.
/// - Half-closed (one FIN): 60 s of silence; a half-closed stream that is still sending keeps it.
/// - Closing (both FINs) and reset: 10 s, as Cilium: long enough for the last ACKs and a
///   retransmitted FIN. A client reusing its port earlier starts a new connection at once.
/// - UDP answered: 300 s.
pub const IDLE_NEW_S: u64 = 30;
pub const IDLE_TCP_ESTABLISHED_S: u64 = 5 * 24 * 3600;
pub const IDLE_TCP_HALF_CLOSED_S: u64 = 60;
pub const IDLE_TCP_CLOSING_S: u64 = 10;
pub const IDLE_TCP_RESET_S: u64 = 10;
pub const IDLE_UDP_S: u64 = 300;
/// How long an entry of `proto` in `state` may stay idle, in ns: the datapath treats an entry
/// idle for longer as gone, and so do `swarmlb flows` and the agent's table sweep.
pub const fn idle_timeout_ns(proto: u8, state: u8) -> u64 {
    const NS_PER_S: u64 = 1_000_000_000;
    let seconds = match state {
        CT_NEW | CT_SYN_RECV => IDLE_NEW_S,
        _ if proto != PROTO_TCP => IDLE_UDP_S,
        CT_HALF_CLOSED => IDLE_TCP_HALF_CLOSED_S,
        CT_CLOSING => IDLE_TCP_CLOSING_S,
        CT_RESET => IDLE_TCP_RESET_S,
        _ => IDLE_TCP_ESTABLISHED_S,
    };
    seconds * NS_PER_S
}

/// The name `swarmlb flows` and metrics give an entry's state.
pub const fn state_name(proto: u8, state: u8) -> &'static str {
    match state {
        CT_NEW if proto == PROTO_TCP => "syn_sent",
        CT_NEW => "unreplied",
        CT_SYN_RECV => "syn_recv",
        _ if proto != PROTO_TCP => "replied",
        CT_HALF_CLOSED => "half_closed",
        CT_CLOSING => "closing",
        CT_RESET => "reset",
        _ => "established",
    }
}

/// Whether an entry in `state` is still unconfirmed (in the new-flow table).
pub const fn is_unconfirmed(state: u8) -> bool {
    matches!(state, CT_NEW | CT_SYN_RECV)
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

/// `Handoff::magic`: "SLBN".
pub const HANDOFF_MAGIC: u32 = 0x534c_424e;

/// What the XDP program leaves in a translated frame's metadata (`bpf_xdp_adjust_meta`) for the
/// TC ingress program on the same interface, which sends the frame through the kernel's
/// neighbour resolution (`bpf_redirect_neigh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// [`HANDOFF_MAGIC`]: metadata some other XDP program left is never taken for ours.
    pub magic: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// The next hop's address as the FIB reported it; all zero: the kernel routes the
    /// destination itself.
    pub next_hop: [u8; 4],
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
    /// One of the `CT_*` states; both entries of a connection hold the same.
    pub state: u8,
    /// TCP: [`FIN_FROM_CLIENT`] | [`FIN_FROM_BACKEND`], which sides have closed.
    pub fins: u8,
    pub _pad: u8,
    /// TCP: the backend's initial sequence number, from its SYN-ACK; the client's ACK of
    /// exactly this + 1 completes the handshake, which a blind spoofer cannot guess.
    pub backend_isn: u32,
    pub _pad2: u32,
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
    /// The union of every service's NAT port range: a packet to a port outside it (and to no
    /// frontend port) cannot be a reply, and skips the connection tables.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// UDP port of the swarm's VXLAN data path (0 means 4789), inspected on the underlay.
    pub vxlan_port: u16,
    /// [`SETTINGS_CLIENT_SOURCE`].
    pub flags: u16,
}

/// [`Settings::flags`]: some service keeps the client's address ([`SERVICE_CLIENT_SOURCE`]), so
/// a reply may be addressed to any client address and port: every TCP/UDP packet no frontend
/// claims is looked up in the connection tables (one more lookup for such packets).
pub const SETTINGS_CLIENT_SOURCE: u16 = 1;

/// Which packets the datapath logs its decisions about (`swarmlb trace`), one record at index 0.
/// All zero (as the map is created) is off. A packet is traced while `enabled` is set and the
/// clock is before `expires_ns`, and only if it matches: its client (the source of a client's
/// packet, the destination a reply is translated to) and its service, once the datapath knows
/// them. The deadline is what turns a trace off when `swarmlb trace` dies without clearing it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) deadline.
    pub expires_ns: u64,
    /// Non-zero: on.
    pub enabled: u32,
    /// The client's IPv4 address; 0.0.0.0: any client.
    pub client: [u8; 4],
    /// The service id; 0: any service (and packets no service claims).
    pub service_id: u32,
    pub _pad: u32,
}

/// What the datapath decided about one packet while tracing is on: written as it decides (one
/// per-CPU record, reused by every traced packet) and logged by `swarmlb_trace` at the end,
/// which reads the rest (backend, NAT, direction) from the packet's connection-table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The packet's 5-tuple as received.
    pub key: FlowKey,
    /// The service of the frontend the packet was addressed to; 0: none was looked up, or none
    /// matched (a tracked connection's packet is never looked up).
    pub frontend_service: u32,
    /// The XDP action returned.
    pub action: u32,
    /// The [`crate::Reason`] counted.
    pub reason: u32,
    pub _pad: u32,
}

/// [`MemberKey::vni`] of the entry every registered namespace has, with its `MEMBER_*` flags.
pub const MEMBER_NODE: u32 = 0;
/// Member flag: its sockets reach published ports at the node's addresses
/// ([`crate::maps::LOCAL_ADDRS`]) and the node's explicit frontends.
pub const MEMBER_PUBLISHED: u32 = 1;
/// Member flag: the node's own namespace, whose 127.0.0.0/8 is the node's (a container's
/// loopback is its own).
pub const MEMBER_HOST: u32 = 2;

/// A network namespace registered for socket load balancing (`slb_sk_member`): its entry
/// [`MEMBER_NODE`], plus one per overlay VNI it is attached to, whose VIPs it may reach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// `bpf_get_netns_cookie` / `SO_NETNS_COOKIE` of the namespace.
    pub netns_cookie: u64,
    pub vni: u32,
    pub _pad: u32,
}

/// How the socket programs recognise a container the agent has not registered yet, one record
/// at index 0 of `slb_sk_config`. A container connects within milliseconds of its start, before
/// the agent has heard of it: a socket of an unregistered namespace whose process is below the
/// container runtime's cgroup (`bpf_get_current_ancestor_cgroup_id`) is balanced as if its
/// namespace were attached to every overlay and reached published ports, until the agent
/// registers it (then only its own overlays count). All zero: off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// The cgroup id of the runtime's cgroup (Docker's `/docker`); 0: off.
    pub containers_cgroup: u64,
    /// Its depth below the cgroup v2 root (1 for `/docker`).
    pub containers_level: u32,
    pub _pad: u32,
}

/// Frontends one socket can be translated for at once (an unconnected UDP socket sending to
/// several VIPs); the oldest slot is reused after that.
pub const SOCK_SLOTS: usize = 4;

/// One translation a socket program made: the frontend the application named and the backend
/// it went to, so replies (`recvmsg`, `getpeername`) show the frontend again and later datagrams
/// of an unconnected socket keep their backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockSlot {
    pub frontend: [u8; 4],
    pub backend: [u8; 4],
    pub frontend_port: u16,
    pub backend_port: u16,
    pub service_id: u32,
    /// 0: the slot is free.
    pub backend_id: u32,
}

/// A socket's translations, in socket-local storage (`slb_sk_lb`): freed with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLb {
    pub slots: [SockSlot; SOCK_SLOTS],
    /// The slot the next new translation takes (round robin).
    pub next: u32,
    pub _pad: u32,
}

// The eBPF and userspace sides must agree byte for byte; padding is spelled out above.
const _: () = {
    assert!(size_of::<FrontendKey>() == 8);
    assert!(size_of::<Frontend>() == 4);
    assert!(size_of::<Service>() == 36);
    assert!(size_of::<MemberKey>() == 16);
    assert!(size_of::<SockConfig>() == 16);
    assert!(size_of::<SockSlot>() == 20);
    assert!(size_of::<SockLb>() == 88);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<NextHop>() == 32);
    assert!(size_of::<Flow>() == 72);
    assert!(size_of::<Traffic>() == 24);
    assert!(size_of::<Settings>() == 12);
    assert!(size_of::<TraceFilter>() == 24);
    assert!(size_of::<TraceRecord>() == 32);
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
    unsafe impl aya::Pod for super::TraceFilter {}
    unsafe impl aya::Pod for super::MemberKey {}
    unsafe impl aya::Pod for super::SockConfig {}
    unsafe impl aya::Pod for super::SockLb {}
}
