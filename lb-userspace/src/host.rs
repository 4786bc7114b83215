//! What the agent needs from the node itself: its IPv4 addresses, interface indexes, and the
//! sysctls the datapath depends on. Problems with sysctls are warnings, never failures: the
//! datapath may still work (e.g. forwarding already on, or set by the container runtime).

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use tracing::{debug, warn};

/// Every IPv4 address configured on any interface of this node (its network namespace).
pub fn local_ipv4_addrs() -> Result<BTreeSet<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().context("getifaddrs")?;
    Ok(addrs.filter_map(|ifa| ifa.address).filter_map(|a| a.as_sockaddr_in().map(|sin| sin.ip())).collect())
}

/// The interface clients reach this node on, for `--iface auto`: the one holding `node_addr`
/// (the swarm advertise address), else the one of the IPv4 default route. Returns the name and
/// why it was chosen.
pub fn client_facing_iface(node_addr: Option<Ipv4Addr>) -> Result<(String, String)> {
    if let Some(addr) = node_addr {
        let holder = nix::ifaddrs::getifaddrs()
            .context("getifaddrs")?
            .find(|ifa| ifa.address.and_then(|a| a.as_sockaddr_in().map(|sin| sin.ip())) == Some(addr));
        if let Some(ifa) = holder {
            return Ok((ifa.interface_name, format!("it holds the node address {addr}")));
        }
    }
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    match default_route_iface(&routes) {
        Some(iface) => Ok((iface, "it carries the default route".into())),
        None => bail!(
            "--iface auto: no interface holds the node address{} and there is no IPv4 default route; name the \
             interface with --iface (SWARMLB_IFACE in the stack file)",
            node_addr.map(|a| format!(" {a}")).unwrap_or_default()
        ),
    }
}

/// The interface of the first default route (destination and mask 0) in `/proc/net/route`.
fn default_route_iface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// The first IPv4 address of `iface`.
pub fn iface_addr(iface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|ifa| ifa.interface_name == iface)
        .find_map(|ifa| ifa.address.and_then(|a| a.as_sockaddr_in().map(|sin| sin.ip())))
}

pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface named {iface:?}"))
}

/// Sets a sysctl by its dotted name; if that is impossible (a container's read-only
/// `/proc/sys`), says so at `level`.
pub fn set_sysctl(name: &str, value: &str, level: tracing::Level) {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    match std::fs::read_to_string(&path) {
        Ok(current) if current.trim() == value => debug!(sysctl = name, value, "already set"),
        _ => match std::fs::write(&path, value) {
            Ok(()) => debug!(sysctl = name, value, "set"),
            Err(e) if level == tracing::Level::WARN => {
                warn!(sysctl = name, value, error = %e, "cannot set sysctl; the datapath may not work")
            }
            Err(e) => debug!(sysctl = name, value, error = %e, "cannot set sysctl"),
        },
    }
}

/// The sysctls the kernel-forwarding fallbacks use: forwarding, for frames too big for the
/// egress MTU that the kernel fragments; `accept_local` on the load-balancing interfaces, for
/// frames a driver without XDP metadata cannot hand to `swarmlb_neigh`. Neither is on the
/// common path, so only a missing `ip_forward` is warned about.
pub fn prepare_sysctls(ifaces: &[String]) {
    set_sysctl("net.ipv4.ip_forward", "1", tracing::Level::WARN);
    for iface in ifaces {
        set_sysctl(&format!("net.ipv4.conf.{iface}.accept_local"), "1", tracing::Level::DEBUG);
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
            LinkXdp::Attached(mode) => Some(*mode),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_route_interface() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     ens3\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(super::default_route_iface(table).as_deref(), Some("ens3"));
        assert_eq!(super::default_route_iface(&table.lines().take(2).collect::<Vec<_>>().join("\n")), None);
    }
}
