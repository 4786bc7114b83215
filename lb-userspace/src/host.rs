//! What the agent needs from the node itself: its IPv4 addresses, interface indexes, and the
//! sysctls the datapath depends on. Problems with sysctls are warnings, never failures: the
//! datapath may still work (e.g. forwarding already on, or set by the container runtime).

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};
use tracing::{debug, warn};

/// Every IPv4 address configured on any interface of this node (its network namespace).
pub fn local_ipv4_addrs() -> Result<BTreeSet<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().context("getifaddrs")?;
    Ok(addrs.filter_map(|ifa| ifa.address).filter_map(|a| a.as_sockaddr_in().map(|sin| sin.ip())).collect())
}

pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface named {iface:?}"))
}

/// Sets a sysctl by its dotted name, warning (not failing) if that is impossible.
pub fn set_sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(current) if current.trim() == value => debug!(sysctl = name, value, "already set"),
        _ => match std::fs::write(&path, value) {
            Ok(()) => debug!(sysctl = name, value, "set"),
            Err(e) => warn!(sysctl = name, value, error = %e, "cannot set sysctl; the datapath may not work"),
        },
    }
}

/// The sysctls the datapath relies on: forwarding (translated packets the kernel routes), and
/// accepting packets with a local source address on the load-balancing interfaces.
pub fn prepare_sysctls(ifaces: &[String]) {
    set_sysctl("net.ipv4.ip_forward", "1");
    for iface in ifaces {
        set_sysctl(&format!("net.ipv4.conf.{iface}.accept_local"), "1");
    }
}

/// Warns when the SNAT range overlaps the kernel's ephemeral ports: translated flows and the
/// node's own connections could then pick the same source port toward a backend.
pub fn check_snat_range(snat: (u16, u16)) {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let Ok(text) = std::fs::read_to_string(path) else {
        warn!("cannot read {path}; not checking the SNAT port range against it");
        return;
    };
    let mut parts = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    if let (Some(lo), Some(hi)) = (parts.next(), parts.next())
        && snat.0 <= hi
        && lo <= snat.1
    {
        warn!(
            "SNAT ports {}-{} overlap the kernel's ip_local_port_range {lo}-{hi}: translated \
             flows may collide with this node's own connections; change node.snat_ports",
            snat.0, snat.1
        );
    }
}

/// How XDP runs on `ifindex`, as the kernel reports it (`IFLA_XDP_ATTACHED`): `native`,
/// `generic`, `offload`, `multiple` or `none`.
pub async fn xdp_mode(ifindex: u32) -> Result<&'static str> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
    let nl = crate::takeover::nl::host()?;
    let mut links = nl.handle.link().get().match_index(ifindex).execute();
    let link = links.try_next().await.context("RTM_GETLINK")?.with_context(|| format!("no interface {ifindex}"))?;
    let attached = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::Attached(mode) => Some(mode.clone()),
            _ => None,
        }),
        _ => None,
    });
    Ok(match attached {
        Some(XdpAttached::Driver) => "native",
        Some(XdpAttached::SocketBuffer) => "generic",
        Some(XdpAttached::Hardware) => "offload",
        Some(XdpAttached::Multiple) => "multiple",
        Some(XdpAttached::None) | None => "none",
        Some(_) => "unknown",
    })
}
