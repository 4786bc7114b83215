//! The `slb-<vni>` veth: host side with the endpoint's address and MAC, peer `slbp-<vni>` in the
//! overlay's namespace on its bridge, with GRO on so native XDP redirects into `slb-<vni>` land
//! (a veth accepts `ndo_xdp_xmit` frames only when its peer runs NAPI, which GRO turns on).

use std::{fs::File, net::Ipv4Addr, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, packet_route::link::InfoKind};
use tracing::info;

use super::{find::Overlay, nl};

pub fn host_name(vni: u32) -> String {
    format!("{}{vni}", super::IFACE_PREFIX)
}

pub fn peer_name(vni: u32) -> String {
    format!("{}{vni}", super::PEER_PREFIX)
}

/// Makes sure `slb-<vni>` exists, paired with a peer on the overlay's bridge, with `mac` and
/// `mtu`, both ends up. Returns the host side's ifindex.
pub async fn ensure(host: &Handle, ov: &Overlay, vni: u32, mac: [u8; 6], mtu: u32) -> Result<u32> {
    let name = host_name(vni);
    let peer = peer_name(vni);
    let existing = nl::link_by_name(host, &name).await?;
    let peer_there = nl::link_by_name(&ov.nl.handle, &peer).await?;
    let index = match (existing, peer_there) {
        (Some(l), Some(_)) if nl::link_kind(&l) == Some(&InfoKind::Veth) => l.header.index,
        (existing, _) => {
            if let Some(l) = existing {
                // A half-made pair (or a stranger with our name): start over.
                host.link().del(l.header.index).execute().await.with_context(|| format!("deleting stale {name}"))?;
            }
            // A peer left in the host namespace by an interrupted earlier run.
            if let Some(l) = nl::link_by_name(host, &peer).await? {
                host.link().del(l.header.index).execute().await.with_context(|| format!("deleting stale {peer}"))?;
            }
            create(host, ov, &name, &peer).await?
        }
    };

    // Peer: on the bridge, MTU, GRO, up (in this order: NAPI starts when a GRO device comes up).
    let p = nl::link_by_name(&ov.nl.handle, &peer).await?.with_context(|| format!("{peer} vanished"))?;
    if nl::link_controller(&p) != Some(ov.bridge) {
        ov.nl
            .handle
            .link()
            .set(LinkUnspec::new_with_index(p.header.index).controller(ov.bridge).build())
            .execute()
            .await
            .with_context(|| format!("enslaving {peer} to the overlay bridge"))?;
    }
    let peer_owned = peer.clone();
    nl::run_in_netns(&ov.path, move || set_gro(&peer_owned)).await?;
    ov.nl
        .handle
        .link()
        .set(LinkUnspec::new_with_index(p.header.index).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {peer} up"))?;

    // Host side: MAC, MTU, up.
    host.link()
        .set(LinkUnspec::new_with_index(index).address(mac.to_vec()).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up with its MAC and MTU {mtu}"))?;
    Ok(index)
}

async fn create(host: &Handle, ov: &Overlay, name: &str, peer: &str) -> Result<u32> {
    host.link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .with_context(|| format!("creating veth {name}"))?;
    let index = nl::link_by_name(host, name).await?.with_context(|| format!("{name} vanished"))?.header.index;
    let peer_index = nl::link_by_name(host, peer).await?.with_context(|| format!("{peer} vanished"))?.header.index;
    let ns = File::open(&ov.path).with_context(|| format!("opening {}", ov.path.display()))?;
    host.link()
        .set(LinkUnspec::new_with_index(peer_index).setns_by_fd(ns.as_raw_fd()).build())
        .execute()
        .await
        .with_context(|| format!("moving {peer} into {}", ov.path.display()))?;
    info!("created {name}, peer {peer} in {}", ov.path.display());
    Ok(index)
}

/// Turns GRO on for `iface` in the calling thread's namespace (SIOCETHTOOL / ETHTOOL_SGRO).
fn set_gro(iface: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    if iface.len() >= libc::IFNAMSIZ {
        bail!("interface name {iface} too long");
    }
    let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: 1 };
    // SAFETY: plain socket and ioctl calls on zeroed, correctly sized C structs that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err).with_context(|| format!("turning GRO on for {iface}"));
        }
    }
    Ok(())
}

/// Makes `addr/prefix` the only IPv4 address of link `index`.
pub async fn ensure_addr(host: &Handle, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let mut present = false;
    for a in nl::addresses(host).await?.into_iter().filter(|a| a.header.index == index) {
        match nl::addr_v4(&a) {
            Some(ip) if ip == addr && a.header.prefix_len == prefix => present = true,
            Some(_) => host.address().del(a).execute().await.context("removing a stale address")?,
            None => {}
        }
    }
    if !present {
        host.address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
            .with_context(|| format!("adding {addr}/{prefix}"))?;
    }
    Ok(())
}

/// Sets the host side down, so its peer stops answering on the bridge for the endpoint's MAC.
pub async fn set_down(host: &Handle, index: u32) -> Result<()> {
    host.link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .with_context(|| format!("setting ifindex {index} down"))
}

/// Deletes `slb-<vni>` (its peer goes with it); `false` if there was none.
pub async fn delete(host: &Handle, vni: u32) -> Result<bool> {
    let name = host_name(vni);
    let Some(l) = nl::link_by_name(host, &name).await? else { return Ok(false) };
    match host.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if nl::is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting {name}")),
    }
}

/// Deletes every `slb-*` veth of the host namespace (their peers go with them).
pub async fn delete_all(host: &Handle) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for l in nl::links(host).await? {
        let Some(name) = nl::link_name(&l) else { continue };
        if name.starts_with(super::IFACE_PREFIX) && nl::link_kind(&l) == Some(&InfoKind::Veth) {
            let name = name.to_string();
            match host.link().del(l.header.index).execute().await {
                Ok(()) => gone.push(name),
                // Deleting one end already took the other.
                Err(e) if nl::is_errno(&e, libc::ENODEV) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {name}")),
            }
        }
    }
    Ok(gone)
}
