//! Why the datapath did what it did with a packet ([`Reason`], one per packet), and what its
//! connection tables did besides ([`CtEvent`]): one per-CPU counter each.

macro_rules! counters {
    ($(#[$enum_doc:meta])* $enum:ident { $($(#[$doc:meta])* $variant:ident = $name:literal,)* }) => {
        $(#[$enum_doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum { $($(#[$doc])* $variant,)* }

        impl $enum {
            /// Every variant, in map-index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name used by `swarmlb status` and metrics.
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }
        }
    };
}

counters! {
/// What happened to a packet; the discriminant indexes the `slb_reasons` map.
Reason {
    /// Sent on towards a backend (XDP_TX or XDP_REDIRECT).
    ToBackend = "to_backend",
    /// A reply translated back and sent on towards the client.
    ToClient = "to_client",
    /// Translated, but handed to the kernel's IP forwarding: needed a neighbour resolution or an
    /// unmanaged egress interface ([`Reason::ToNeighResolver`]) on a driver that cannot carry
    /// XDP metadata. Depends on `ip_forward`, `accept_local` and the FORWARD chain.
    TranslatedToKernel = "translated_to_kernel",
    /// Not IPv4: passed untouched.
    PassNotIpv4 = "pass_not_ipv4",
    /// IPv4 but neither TCP, UDP nor ICMP (or ICMP other than an error): passed untouched.
    PassNotTcpUdp = "pass_not_tcp_udp",
    /// TCP/UDP not addressed to a frontend nor part of a tracked connection: passed untouched.
    PassNoFrontend = "pass_no_frontend",
    /// IPv4 fragment: passed to the kernel (ports are only in the first fragment).
    PassFragment = "pass_fragment",
    /// IPv4 header with options: passed to the kernel.
    PassIpOptions = "pass_ip_options",
    /// TTL would reach zero: passed so the kernel answers with ICMP time exceeded.
    PassTtlExpired = "pass_ttl_expired",
    /// No route to the backend: passed untouched to the kernel.
    PassNoRoute = "pass_no_route",
    /// Too big for the egress MTU and fragmentable (no "don't fragment"): translated and handed to
    /// the kernel, which fragments it.
    PassTooBig = "pass_too_big",
    /// VXLAN on the swarm's data-path port with a VNI of this swarm: passed to the kernel's
    /// VXLAN device.
    PassVxlan = "pass_vxlan",
    /// VXLAN on the data-path port with a VNI this swarm does not use: passed, counted apart.
    PassVxlanUnknownVni = "pass_vxlan_unknown_vni",
    /// Frame shorter than an Ethernet header.
    MalformedEth = "malformed_eth",
    /// Truncated IPv4 header, bad version, bad header length or total length.
    MalformedIpv4 = "malformed_ipv4",
    /// Truncated TCP header or bad data offset.
    MalformedTcp = "malformed_tcp",
    /// Truncated UDP header.
    MalformedUdp = "malformed_udp",
    /// VXLAN on the data-path port with a short or invalid VXLAN header or a truncated inner
    /// Ethernet/IPv4 header.
    MalformedVxlan = "malformed_vxlan",
    /// Frontend matched, but its service has no backend: dropped.
    DropNoBackend = "drop_no_backend",
    /// Every source port tried for the NAT was taken: dropped.
    DropPortsExhausted = "drop_ports_exhausted",
    /// The connection table refused the entry: dropped.
    DropConntrackFull = "drop_conntrack_full",
    /// A TCP segment other than SYN to a frontend, for a connection the table does not know
    /// (or that idled out): passed to the kernel, which answers with a reset, rather than moved
    /// to a backend mid-stream.
    PassNoConnection = "pass_no_connection",
    /// Truncated ICMP header, or an ICMP error whose quoted header is cut short or invalid.
    MalformedIcmp = "malformed_icmp",
    /// An ICMP error (destination unreachable, fragmentation needed, time exceeded) about a
    /// tracked connection: translated back (outer and quoted headers) and sent to the other side.
    IcmpTranslated = "icmp_translated",
    /// An ICMP error about no tracked connection: passed untouched.
    PassIcmpUntracked = "pass_icmp_untracked",
    /// A packet with "don't fragment" too big for the egress MTU: answered from XDP with ICMP
    /// fragmentation needed (the egress MTU), so path-MTU discovery works through swarmlb.
    FragNeededSent = "frag_needed_sent",
    /// The egress interface was not in the redirect map when the packet was sent: dropped.
    DropRedirectFailed = "drop_redirect_failed",
    /// The frame could not be rewritten (bounds the verifier demands, unreachable after
    /// parsing): passed untouched.
    PassRewriteFailed = "pass_rewrite_failed",
    /// Translated and handed, through XDP metadata, to the TC program `swarmlb_neigh`, which
    /// sends it out of the egress interface with `bpf_redirect_neigh` (the kernel resolves the
    /// neighbour, queueing the packet meanwhile): no neighbour entry yet, or an egress interface
    /// swarmlb does not transmit on itself.
    ToNeighResolver = "to_neigh_resolver",
}
}

counters! {
/// Something the connection tables did; the discriminant indexes the `slb_ct_events` map.
CtEvent {
    /// A TCP handshake completed (the client acknowledged the backend's SYN-ACK) or a UDP flow
    /// was answered: both entries moved from the new-flow table to the main one.
    Confirmed = "confirmed",
    /// A client ACK in a handshake that did not acknowledge the backend's SYN-ACK (a blind
    /// spoofer, or a stale segment): forwarded, but the connection stays unconfirmed.
    HandshakeAckMismatch = "handshake_ack_mismatch",
    /// The main table refused a confirmed connection's entries (its NAT port was taken there in
    /// a race): the connection was dropped.
    ConfirmFailed = "confirm_failed",
    /// The client's own source port was kept as the NAT port.
    PortPreserved = "port_preserved",
    /// Every NAT port probed was taken, and the new connection took the port of the oldest
    /// unconfirmed (or idled-out) one among them: a SYN flood, or a range too small for the load.
    PortTakenOver = "port_taken_over",
    /// A retransmitted SYN or a SYN on a closed connection's tuple made a new connection.
    Reopened = "reopened",
}
}

counters! {
/// What the socket programs (connect, sendmsg, recvmsg, getpeername) did; the discriminant
/// indexes the `slb_sk_events` map.
SockEvent {
    /// A connect or an unconnected datagram to a frontend was sent to a backend instead.
    Balanced = "balanced",
    /// An unconnected socket's datagram to a frontend it had sent to before kept its backend.
    Kept = "kept",
    /// A reply's source (`recvmsg`) or a socket's peer (`getpeername`) was shown as the
    /// frontend again.
    Reversed = "reversed",
    /// A frontend whose service has no backend: the address was left as it was.
    NoBackend = "no_backend",
    /// A VIP of an overlay the socket's namespace is not attached to: left as it was.
    NotMember = "not_member",
    /// Of the balanced: from a container not registered yet (see `SockConfig`).
    Unregistered = "unregistered_container",
    /// The socket's storage could not be created: balanced, but replies show the backend.
    NoStorage = "no_storage",
    /// An unconnected socket had more frontends than slots: its oldest translation was dropped.
    SlotReused = "slot_reused",
}
}
