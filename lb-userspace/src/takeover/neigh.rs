//! PERMANENT neighbour entries on `slb-<vni>` for the tasks (MAC `02:42:` + address), so the
//! XDP program's FIB lookup always finds a neighbour and can redirect: with Docker's FORWARD
//! policy DROP there is no kernel-forwarding fallback that would resolve one by ARP.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    },
};

use super::{cache::NeighDiff, nl};

/// Adds (or replaces) an entry for every task and removes permanent entries for addresses that
/// are no longer tasks. Dynamic entries the kernel learned are left alone.
pub async fn sync(host: &Handle, index: u32, want: &BTreeSet<Ipv4Addr>) -> Result<()> {
    let entries: Vec<_> = host
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .context("listing neighbours")?;
    for n in entries {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let lladdr = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
            _ => None,
        });
        match dst {
            Some(ip) if want.contains(&ip) && lladdr.as_deref() == Some(&nl::docker_mac(ip)[..]) => {}
            Some(ip) if want.contains(&ip) => {} // rewritten below
            Some(ip) => match host.neighbours().del(n).execute().await {
                Ok(()) => {}
                Err(e) if nl::is_errno(&e, libc::ENOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("removing the neighbour entry of {ip}")),
            },
            None => {}
        }
    }
    for &ip in want {
        add(host, index, ip).await?;
    }
    Ok(())
}

/// Writes only `diff`: the entries of tasks that came, and removes those of tasks that went.
pub async fn apply(host: &Handle, index: u32, diff: &NeighDiff) -> Result<()> {
    for &ip in &diff.remove {
        let mut gone = NeighbourMessage::default();
        gone.header.family = AddressFamily::Inet;
        gone.header.ifindex = index;
        gone.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match host.neighbours().del(gone).execute().await {
            Ok(()) => {}
            Err(e) if nl::is_errno(&e, libc::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("removing the neighbour entry of {ip}")),
        }
    }
    for &ip in &diff.add {
        add(host, index, ip).await?;
    }
    Ok(())
}

async fn add(host: &Handle, index: u32, ip: Ipv4Addr) -> Result<()> {
    host.neighbours()
        .add(index, ip.into())
        .link_layer_address(&nl::docker_mac(ip))
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding the neighbour entry of {ip}"))
}
