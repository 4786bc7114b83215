//! This node's namespaces whose sockets are balanced: its own first (the agent runs on the host's
//! network, so its namespace is the node's), then every running local container with a sandbox
//! of its own, by name, with the overlays of the cluster it is attached to.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
};

use bollard::models::ContainerSummary;

use super::networks::Networks;
use crate::{model::Member, source::docker::engine::HOST_PROC};

/// The agent's own network namespace: the node's.
pub const HOST_NETNS: &str = "/proc/self/ns/net";

/// The node's and the containers' members; `used` names the networks of the cluster.
pub(super) fn members(
    containers: &[ContainerSummary],
    sandbox_keys: &HashMap<String, String>,
    nets: &Networks,
    used: &BTreeSet<String>,
    notes: &mut Vec<String>,
) -> Vec<Member> {
    let host = Member { netns: HOST_NETNS.into(), name: "host".into(), networks: Vec::new(), node: true, host: true };
    let mut seen = BTreeSet::from([host.netns.clone()]);
    let mut members: Vec<Member> = containers
        .iter()
        .filter(|c| has_own_namespace(c))
        .filter_map(|c| {
            let key = sandbox_keys.get(c.id.as_deref()?)?;
            if key.is_empty() {
                notes.push(format!(
                    "container {:?}: its network namespace is not visible to the agent (mount the host's /proc at \
                     {HOST_PROC}, as deploy/swarmlb.yml does); its sockets are not balanced",
                    name_of(c)
                ));
                return None;
            }
            Some(Member {
                netns: PathBuf::from(key),
                name: name_of(c),
                networks: overlays_of(c, nets, used),
                node: true,
                host: false,
            })
        })
        .collect();
    members.sort_by(|a, b| (&a.name, &a.netns).cmp(&(&b.name, &b.netns)));
    members.retain(|m| seen.insert(m.netns.clone()));
    members.insert(0, host);
    members
}

/// Not `network_mode: host` (the node's namespace) nor `container:<id>` (another container's).
fn has_own_namespace(c: &ContainerSummary) -> bool {
    let mode = c.host_config.as_ref().and_then(|h| h.network_mode.as_deref()).unwrap_or_default();
    let on_host = c.network_settings.as_ref().and_then(|n| n.networks.as_ref()).is_some_and(|n| n.contains_key("host"));
    mode != "host" && !mode.starts_with("container:") && !on_host
}

/// The container's name without Docker's leading `/`, else its id.
fn name_of(c: &ContainerSummary) -> String {
    let name = c.names.iter().flatten().next().map(|n| n.trim_start_matches('/'));
    name.or(c.id.as_deref()).unwrap_or_default().to_owned()
}

/// The names of the cluster's networks the container is attached to (matched by id or name),
/// sorted.
fn overlays_of(c: &ContainerSummary, nets: &Networks, used: &BTreeSet<String>) -> Vec<String> {
    let attached = c.network_settings.as_ref().and_then(|n| n.networks.as_ref());
    let names: BTreeSet<String> = attached
        .into_iter()
        .flatten()
        .filter_map(|(name, e)| e.network_id.as_deref().and_then(|id| nets.by_ref(id)).or_else(|| nets.by_ref(name)))
        .map(|n| n.network.name.clone())
        .filter(|n| used.contains(n))
        .collect();
    names.into_iter().collect()
}
