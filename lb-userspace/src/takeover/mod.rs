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
//! What [`Takeover::ensure`] changes on the node, per overlay network, in this order (so a step
//! that fails before the last leaves Docker's endpoint up and serving):
//! - a veth pair: `slb-<vni>` in the host namespace with the endpoint's MAC, the network's MTU
//!   and the endpoint address (`/<subnet prefix>`, the only IPv4 address on it); its peer
//!   `slbp-<vni>` in Docker's overlay namespace (the one whose VXLAN device has the VNI),
//!   enslaved to the overlay bridge, with GRO on (so the peer runs NAPI and native XDP
//!   redirects into `slb-<vni>` are accepted);
//! - Docker's sandbox interface holding the endpoint address is set down and given the alias
//!   `swarmlb-parked` (its address stays on it), so only one port of the bridge answers for
//!   that MAC; the routing mesh of that network (already dead without IPVS) stops on this node.
//!   If that fails, `slb-<vni>` is set down instead and the next apply tries again;
//! - PERMANENT neighbour entries on `slb-<vni>` for every task address (MAC `02:42:` + address),
//!   stale ones removed, so the XDP FIB lookup never misses a neighbour (Docker's FORWARD policy
//!   is DROP: there is no kernel-forwarding fallback to resolve one).
//!
//! It runs in full only when needed (see [`cache`]): on later applies an overlay whose inputs
//! are the same and whose veth and namespaces are still there only gets the neighbour entries
//! of tasks that came or went. [`Takeover::release_gone`] gives back the overlays no service
//! uses any more; [`release_all`] undoes everything: deletes every `slb-*` veth and brings the
//! parked interfaces back up. If Docker deletes and recreates an overlay namespace, the veth
//! goes with it and the next apply rebuilds it.

mod cache;
mod find;
mod neigh;
pub(crate) mod nl;
mod park;
mod veth;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result, bail};
use cache::{Action, Ensured, FileId, Inputs, Last, LinkState, NeighDiff, Observed};
use rtnetlink::Handle;
use tracing::{debug, info, warn};

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

/// No Docker namespace on the node has the network's VXLAN device (yet).
#[derive(Debug, thiserror::Error)]
#[error(
    "network {network} (VNI {vni}): no Docker overlay namespace with that VNI in {DOCKER_NETNS} (no task or endpoint \
     of it on this node yet?)"
)]
pub struct NoOverlay {
    pub network: String,
    pub vni: u32,
}

impl NoOverlay {
    fn of(network: &Network) -> NoOverlay {
        NoOverlay { network: network.name.clone(), vni: network.vni }
    }
}

/// How [`Takeover::ensure`] went for one overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Found Docker's namespaces and made everything again (idempotently).
    Full,
    /// What the last run made still holds; only changed neighbour entries were written.
    Cached,
}

/// The takeovers of this agent, remembered per VNI between applies.
#[derive(Default)]
pub struct Takeover {
    last: BTreeMap<u32, Last>,
}

impl Takeover {
    /// Takes over this node's load-balancer endpoint `endpoint` on `network` and installs
    /// neighbour entries for `tasks` (every task of every service on the network, on any node).
    pub async fn ensure(
        &mut self,
        network: &Network,
        endpoint: Ipv4Addr,
        tasks: &BTreeSet<Ipv4Addr>,
    ) -> Result<(Attached, Run)> {
        let vni = network.vni;
        let inputs = Inputs { endpoint, subnet: network.subnet, mtu: network.mtu };
        let host = nl::host()?;
        let last = self.last.remove(&vni);
        let (next, done) = step(&host.handle, network, &inputs, last, tasks).await;
        self.last.insert(vni, next);
        done.map(|(ifindex, run)| (Attached { iface: veth::host_name(vni), ifindex }, run))
    }

    /// Gives back every overlay taken over whose VNI is not in `keep`: deletes its veth and
    /// brings Docker's endpoint back up. Returns the interfaces deleted; one that fails is
    /// logged and tried again on the next call.
    pub async fn release_gone(&mut self, keep: &BTreeSet<u32>) -> Vec<String> {
        let gone: Vec<u32> = self.last.keys().filter(|v| !keep.contains(v)).copied().collect();
        let mut released = Vec::new();
        for vni in gone {
            let endpoint = self.last[&vni].inputs().endpoint;
            match release(vni, endpoint).await {
                Ok(()) => {
                    self.last.remove(&vni);
                    released.push(veth::host_name(vni));
                }
                Err(e) => warn!(vni, "releasing the overlay endpoint failed: {e:#}"),
            }
        }
        released
    }
}

/// One takeover: what to remember of it, and the host side's ifindex and how it ran.
async fn step(
    host: &Handle,
    network: &Network,
    inputs: &Inputs,
    last: Option<Last>,
    tasks: &BTreeSet<Ipv4Addr>,
) -> (Last, Result<(u32, Run)>) {
    let failed = |e| (Last::Failed(inputs.clone()), Err(e));
    let observed = match observe(host, network.vni, last.as_ref()).await {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    match cache::decide(last, inputs, &observed, tasks) {
        Action::Hit { prev, diff } => match refresh(host, network, prev, &diff, tasks).await {
            Ok(e) => ensured(e, Run::Cached),
            Err(e) => failed(e),
        },
        Action::StillMissing(seen) => {
            (Last::Missing { inputs: inputs.clone(), seen }, Err(NoOverlay::of(network).into()))
        }
        Action::Full(why) => {
            info!(network = network.name, vni = network.vni, "taking over the overlay endpoint: {why}");
            // Listed before the walk: a namespace made during it makes the next apply look again.
            let seen = match listing() {
                Ok(l) => l,
                Err(e) => return failed(e),
            };
            match full(host, network, inputs, tasks).await {
                Ok(e) => ensured(e, Run::Full),
                Err(e) if e.is::<NoOverlay>() => (Last::Missing { inputs: inputs.clone(), seen }, Err(e)),
                Err(e) => failed(e),
            }
        }
    }
}

fn ensured(e: Ensured, run: Run) -> (Last, Result<(u32, Run)>) {
    let ifindex = e.ifindex;
    (Last::Ensured(e), Ok((ifindex, run)))
}

/// Docker's namespace files with their identities.
fn listing() -> Result<cache::Listing> {
    Ok(nl::docker_netns(&[])?.into_iter().map(|p| (p.clone(), FileId::of(&p))).collect())
}

/// The cheap checks of what the last takeover made or found: no namespace is entered.
async fn observe(host: &Handle, vni: u32, last: Option<&Last>) -> Result<Observed> {
    let prev = match last {
        Some(Last::Ensured(prev)) => prev,
        Some(Last::Missing { .. }) => return Ok(Observed { listing: listing()?, ..Observed::default() }),
        _ => return Ok(Observed::default()),
    };
    let link = nl::link_by_name(host, &veth::host_name(vni)).await?.map(|l| LinkState {
        ifindex: l.header.index,
        mac: nl::link_mac(&l).and_then(|m| m.try_into().ok()).unwrap_or_default(),
        up: nl::link_is_up(&l),
    });
    let holder = prev.holder.as_ref().and_then(|h| FileId::of(&h.path));
    Ok(Observed { link, overlay: FileId::of(&prev.overlay.path), holder, listing: Vec::new() })
}

/// A takeover that still holds: the neighbour entries of tasks that came or went.
async fn refresh(
    host: &Handle,
    network: &Network,
    mut prev: Ensured,
    diff: &NeighDiff,
    tasks: &BTreeSet<Ipv4Addr>,
) -> Result<Ensured> {
    neigh::apply(host, prev.ifindex, diff).await.with_context(|| format!("network {}", network.name))?;
    if !diff.add.is_empty() || !diff.remove.is_empty() {
        debug!(
            network = network.name,
            added = diff.add.len(),
            removed = diff.remove.len(),
            "neighbour entries updated"
        );
    }
    prev.tasks = tasks.clone();
    Ok(prev)
}

/// The whole takeover: finds Docker's namespaces, makes the veth, parks Docker's endpoint,
/// writes every neighbour entry.
async fn full(host: &Handle, network: &Network, inputs: &Inputs, tasks: &BTreeSet<Ipv4Addr>) -> Result<Ensured> {
    let (vni, endpoint) = (network.vni, inputs.endpoint);
    if !network.subnet.contains(endpoint) {
        bail!("network {}: endpoint {endpoint} is outside {}", network.name, network.subnet);
    }
    let hidden = || HiddenNetns { network: network.name.clone(), hidden: nl::hidden_netns() };
    let Some(ov) = find::overlay(vni).await? else {
        let hidden = hidden();
        if !hidden.hidden.is_empty() {
            return Err(hidden.into());
        }
        return Err(NoOverlay::of(network).into());
    };
    let holder = find::holder(endpoint).await?;
    if holder.is_none() {
        // Taking the address while a sandbox we cannot see still holds it would answer ARP twice.
        let hidden = hidden();
        if !hidden.hidden.is_empty() {
            return Err(hidden.into());
        }
    }
    let ifindex = veth::ensure(host, &ov, vni, nl::docker_mac(endpoint), u32::from(network.mtu))
        .await
        .with_context(|| format!("network {}", network.name))?;
    veth::ensure_addr(host, ifindex, endpoint, network.subnet.prefix)
        .await
        .with_context(|| format!("network {}: endpoint address on {}", network.name, veth::host_name(vni)))?;
    match &holder {
        Some(h) => park_or_step_back(host, h, ifindex).await?,
        None => warn!("network {}: no Docker sandbox holds {endpoint}; taking it anyway", network.name),
    }
    neigh::sync(host, ifindex, tasks).await.with_context(|| format!("network {}", network.name))?;
    Ok(Ensured {
        inputs: inputs.clone(),
        overlay: cache::Netns::at(ov.path.clone()),
        holder: holder.map(|h| cache::Netns::at(h.path.clone())),
        ifindex,
        tasks: tasks.clone(),
    })
}

/// Parks Docker's endpoint; if that fails, sets `slb-<vni>` down so Docker's stays the only
/// one answering (the next full run brings it up and parks again).
async fn park_or_step_back(host: &Handle, holder: &find::Holder, ifindex: u32) -> Result<()> {
    let Err(e) = park::park(holder).await else { return Ok(()) };
    if let Err(down) = veth::set_down(host, ifindex).await {
        warn!("after a failed park: {down:#}");
    }
    Err(e)
}

/// Deletes `slb-<vni>` and brings Docker's interface holding `endpoint` back up if parked.
async fn release(vni: u32, endpoint: Ipv4Addr) -> Result<()> {
    let host = nl::host()?;
    if veth::delete(&host.handle, vni).await? {
        info!(vni, "released {}", veth::host_name(vni));
    }
    if let Some(h) = find::holder(endpoint).await? {
        park::unpark(&h).await?;
    }
    Ok(())
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
