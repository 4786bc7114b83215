//! Taking over this node's load-balancer endpoint on a Docker overlay network.
//!
//! swarmlb translates a client's packet to a task's overlay address with source = this node's
//! load-balancer endpoint address on that overlay, and needs an interface in the host namespace
//! that the FIB sends such packets into and on which replies come back (where XDP
//! reverse-translates them). On a Docker node that address belongs to Docker's own sandbox
//! interface (`ingress_sbox`'s `eth0` for the ingress network, the `lb_<network>` sandbox's for
//! user overlays), out of the host's reach.
//!
//! Why take it over rather than add an address of our own: the endpoint's address and MAC
//! (`02:42:` + the address) are what every other node already knows. Docker's gossip has put
//! static neighbour (address -> MAC) and FDB (MAC -> this node's VTEP) entries for it on every
//! node, and tasks' ARP caches hold that MAC, so replies to the endpoint address find their way
//! back here with nothing new to program anywhere. A new address would need entries on every
//! node that Docker does not know about and would remove on its next sync.
//!
//! What [`ensure`] changes on the node, per overlay network (idempotent, run before every apply):
//! - a veth pair: `slb-<vni>` in the host namespace with the endpoint's MAC, the network's MTU
//!   and the endpoint address (`/<subnet prefix>`, the only IPv4 address on it); its peer
//!   `slbp-<vni>` in Docker's overlay namespace (the one whose VXLAN device has the VNI),
//!   enslaved to the overlay bridge, with GRO on (so the peer runs NAPI and native XDP
//!   redirects into `slb-<vni>` are accepted);
//! - Docker's sandbox interface holding the endpoint address is set down and given the alias
//!   `swarmlb-parked` (its address stays on it), so only one port of the bridge answers for
//!   that MAC; the routing mesh of that network (already dead without IPVS) stops on this node;
//! - PERMANENT neighbour entries on `slb-<vni>` for every task address (MAC `02:42:` + address),
//!   stale ones removed, so the XDP FIB lookup never misses a neighbour (Docker's FORWARD policy
//!   is DROP: there is no kernel-forwarding fallback to resolve one).
//!
//! [`release_all`] undoes it: deletes every `slb-*` veth and brings the parked interfaces back up.
//! If Docker deletes and recreates an overlay namespace, the veth goes with it and the next
//! `ensure` rebuilds it.

mod find;
mod neigh;
pub(crate) mod nl;
mod park;
mod veth;

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::model::Network;

pub use nl::DOCKER_NETNS;
pub use park::PARKED_ALIAS;

/// Host-side name prefix: `slb-<vni>`.
pub const IFACE_PREFIX: &str = "slb-";
/// Peer name prefix, in the overlay namespace: `slbp-<vni>`.
pub const PEER_PREFIX: &str = "slbp-";

/// The interface that now holds the endpoint address in the host namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    pub ifindex: u32,
}

/// Docker's namespaces a network needs exist on the node but not in this agent's view of
/// [`DOCKER_NETNS`]: it runs in a container whose bind of that directory does not follow new
/// mounts (the host's `/` is not a shared mount). A fresh container sees them, so the agent
/// exits on this error and swarm starts it again; the datapath serves meanwhile.
#[derive(Debug, thiserror::Error)]
#[error(
    "network {network}: Docker's namespaces {hidden:?} were made after this agent started and are not visible to \
     it (its bind of {DOCKER_NETNS} does not propagate new mounts: the host's / is not a shared mount); a restart \
     sees them. To follow new networks without restarts, run `mount --make-rshared /` on the node at boot and \
     deploy the stack with SWARMLB_NETNS_PROPAGATION=rslave"
)]
pub struct HiddenNetns {
    pub network: String,
    pub hidden: Vec<std::path::PathBuf>,
}

/// Takes over this node's load-balancer endpoint `endpoint` on `network` and installs neighbour
/// entries for `tasks` (every task of every service on the network, on any node).
pub async fn ensure(network: &Network, endpoint: Ipv4Addr, tasks: &[Ipv4Addr]) -> Result<Attached> {
    let vni = network.vni;
    let hidden = || HiddenNetns { network: network.name.clone(), hidden: nl::hidden_netns() };
    let Some(ov) = find::overlay(vni).await? else {
        let hidden = hidden();
        if !hidden.hidden.is_empty() {
            return Err(hidden.into());
        }
        bail!(
            "network {} (VNI {vni}): no Docker overlay namespace with that VNI in {DOCKER_NETNS} (no task or endpoint \
             of it on this node yet?)",
            network.name
        );
    };
    if !network.subnet.contains(endpoint) {
        bail!("network {}: endpoint {endpoint} is outside {}", network.name, network.subnet);
    }
    match find::holder(endpoint).await? {
        Some(h) => park::park(&h).await?,
        None => {
            // Taking the address while a sandbox we cannot see still holds it would answer ARP twice.
            let hidden = hidden();
            if !hidden.hidden.is_empty() {
                return Err(hidden.into());
            }
            warn!("network {}: no Docker sandbox holds {endpoint}; taking it anyway", network.name)
        }
    }
    let host = nl::host()?;
    let mac = nl::docker_mac(endpoint);
    let ifindex = veth::ensure(&host.handle, &ov, vni, mac, u32::from(network.mtu))
        .await
        .with_context(|| format!("network {}", network.name))?;
    veth::ensure_addr(&host.handle, ifindex, endpoint, network.subnet.prefix)
        .await
        .with_context(|| format!("network {}: endpoint address on {}", network.name, veth::host_name(vni)))?;
    neigh::sync(&host.handle, ifindex, tasks).await.with_context(|| format!("network {}", network.name))?;
    Ok(Attached { iface: veth::host_name(vni), ifindex })
}

/// Deletes every `slb-*` veth and brings Docker's parked sandbox interfaces back up.
pub async fn release_all() -> Result<()> {
    let host = nl::host()?;
    let gone = veth::delete_all(&host.handle).await?;
    let restored = park::unpark_all().await?;
    info!(
        "released {} interface(s) {gone:?}, restored {} Docker interface(s) {restored:?}",
        gone.len(),
        restored.len()
    );
    Ok(())
}
