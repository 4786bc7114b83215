//! Parking Docker's sandbox interface that holds the endpoint address: set down and marked with
//! an interface alias, so `release_all` finds it again without a state file (the address stays
//! on it, so bringing it back up restores Docker's endpoint as it was).

use anyhow::{Context, Result};
use rtnetlink::{Handle, LinkUnspec};
use tracing::{info, warn};

use super::{find::Holder, nl};

/// Alias written on a parked interface.
pub const PARKED_ALIAS: &str = "swarmlb-parked";

pub async fn park(h: &Holder) -> Result<()> {
    h.nl.handle
        .link()
        .set(LinkUnspec::new_with_index(h.index).alias(PARKED_ALIAS).down().build())
        .execute()
        .await
        .with_context(|| format!("parking {} in {}", h.name, h.path.display()))
}

/// Brings `h` back up if it is parked.
pub async fn unpark(h: &Holder) -> Result<()> {
    if h.parked {
        unpark_link(&h.nl.handle, h.index, &format!("{}/{}", h.path.display(), h.name)).await?;
    }
    Ok(())
}

async fn unpark_link(handle: &Handle, index: u32, name: &str) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).alias("").up().build())
        .execute()
        .await
        .with_context(|| format!("bringing {name} back up"))?;
    info!("restored {name}");
    Ok(())
}

/// Brings every parked interface in Docker's namespaces back up; returns `ns/ifname` of each.
pub async fn unpark_all() -> Result<Vec<String>> {
    let mut restored = Vec::new();
    for path in nl::docker_netns(&["ingress_sbox", "lb_"])? {
        let conn = match nl::in_netns(&path).await {
            Ok(c) => c,
            Err(e) => {
                warn!("skipping {}: {e:#}", path.display());
                continue;
            }
        };
        for l in nl::links(&conn.handle).await? {
            if nl::link_alias(&l) != Some(PARKED_ALIAS) {
                continue;
            }
            let name = format!("{}/{}", path.display(), nl::link_name(&l).unwrap_or("?"));
            unpark_link(&conn.handle, l.header.index, &name).await?;
            restored.push(name);
        }
    }
    Ok(restored)
}
