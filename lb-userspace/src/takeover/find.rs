//! Finding Docker's pieces of an overlay network on this node: the namespace whose VXLAN device
//! carries the network's VNI (with its bridge), and the sandbox interface holding this node's
//! load-balancer endpoint address.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan};
use tracing::debug;

use super::nl::{self, Nl};

/// Docker's namespace for one overlay network on this node.
pub struct Overlay {
    pub path: PathBuf,
    pub nl: Nl,
    /// The bridge the VXLAN device is enslaved to (`br0`).
    pub bridge: u32,
}

/// Overlay namespaces are named `<n>-<network id prefix>`; look at those first.
fn looks_like_overlay(name: &str) -> bool {
    name.split_once('-').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The namespace whose VXLAN device has `vni`, or `None` if this node has no such overlay (yet).
pub async fn overlay(vni: u32) -> Result<Option<Overlay>> {
    let all = nl::docker_netns(&[])?;
    let (likely, rest): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|p| p.file_name().map(|n| looks_like_overlay(&n.to_string_lossy())).unwrap_or(false));
    for path in likely.into_iter().chain(rest) {
        let conn = match nl::in_netns(&path).await {
            Ok(c) => c,
            // A sandbox can vanish between the listing and the open.
            Err(e) => {
                debug!("skipping {}: {e:#}", path.display());
                continue;
            }
        };
        let links = nl::links(&conn.handle).await.with_context(|| format!("in {}", path.display()))?;
        for l in &links {
            if nl::link_kind(l) != Some(&InfoKind::Vxlan) {
                continue;
            }
            let id = match nl::link_info_data(l) {
                Some(InfoData::Vxlan(v)) => v.iter().find_map(|x| match x {
                    InfoVxlan::Id(id) => Some(*id),
                    _ => None,
                }),
                _ => None,
            };
            if id != Some(vni) {
                continue;
            }
            let bridge = nl::link_controller(l)
                .with_context(|| format!("the VXLAN device of VNI {vni} in {} is not on a bridge", path.display()))?;
            return Ok(Some(Overlay { path, nl: conn, bridge }));
        }
    }
    Ok(None)
}

/// A Docker sandbox interface holding an address.
pub struct Holder {
    pub path: PathBuf,
    pub nl: Nl,
    pub index: u32,
    pub name: String,
    /// Whether it carries [`super::PARKED_ALIAS`].
    pub parked: bool,
}

/// The sandbox interface that holds `addr` (Docker's load-balancer endpoint), looking in
/// `ingress_sbox` and the `lb_<network>` sandboxes first, then everywhere else.
pub async fn holder(addr: Ipv4Addr) -> Result<Option<Holder>> {
    for path in nl::docker_netns(&["ingress_sbox", "lb_"])? {
        let conn = match nl::in_netns(&path).await {
            Ok(c) => c,
            Err(e) => {
                debug!("skipping {}: {e:#}", path.display());
                continue;
            }
        };
        let found = nl::addresses(&conn.handle)
            .await
            .with_context(|| format!("in {}", path.display()))?
            .into_iter()
            .find(|a| nl::addr_v4(a) == Some(addr))
            .map(|a| a.header.index);
        let Some(index) = found else { continue };
        let links = nl::links(&conn.handle).await?;
        let link = links.iter().find(|l| l.header.index == index);
        let name = link.and_then(nl::link_name).unwrap_or("?").to_string();
        let parked = link.and_then(nl::link_alias) == Some(super::PARKED_ALIAS);
        return Ok(Some(Holder { path, nl: conn, index, name, parked }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn overlay_names() {
        assert!(super::looks_like_overlay("1-xab33rw0br"));
        assert!(super::looks_like_overlay("12-abc"));
        assert!(!super::looks_like_overlay("ingress_sbox"));
        assert!(!super::looks_like_overlay("lb_xab33rw0br"));
        assert!(!super::looks_like_overlay("-x"));
        assert!(!super::looks_like_overlay("36bf468dd20e"));
    }
}
