//! Engine JSON -> [`Cluster`], pure: no I/O, no clock. Everything the Engine said is in a
//! [`Snapshot`] (bollard's own model structs), so the tests build snapshots by hand.
//!
//! Mapping (see the README's Docker-source section):
//! - **Nodes** are named by their Docker node id. Managers list every node (`/nodes`,
//!   `status.addr`); a worker knows its own id and address (`info`) and only the addresses of its
//!   gossip peers (`Peers` of each network), which it names `peer-<address>` (the peer name
//!   there is networkdb's, neither the node id nor the hostname). Node names are informational
//!   except the local one, which the planner looks up.
//! - **Networks**: every overlay a translated service (or VIP) uses. VNI = first of
//!   `com.docker.network.driver.overlay.vxlanid_list`, subnet = first IPv4 IPAM subnet, MTU =
//!   `com.docker.network.driver.mtu` or 1450. Each node's load-balancer endpoint is the task named
//!   `<network>-endpoint` (`ingress-endpoint` for ingress) in `Services[""]`, its `Host IP` mapped
//!   to a node; the local one also from `Containers` (Docker 20.10 gossips only the ingress
//!   endpoint; a user overlay's `lb-<network>` endpoint appears only in its own node's
//!   `Containers`, as `<network>-endpoint`).
//! - **Services**: ports published in ingress mode -> frontends `*:<published>/<proto>` on the
//!   ingress network; ports published in host mode are skipped (Docker binds them on the node
//!   itself, there is nothing to balance); label `swarmlb.publish=P:T[/proto],...` (+
//!   `swarmlb.network`) for services swarm will not publish (dnsrr). The label wins over
//!   ingress ports. Ports with different target ports become one model service per target port,
//!   named `<service>/<target>`.
//! - **Backends**: the service's tasks on that network (verbose inspect), named `<service>.<slot>`
//!   (the task id dropped), weight 1 when running and desired running, weight 0 (drain) when
//!   desired shutdown but still running, left out otherwise.
//! - **VIPs**: each service VIP on a user overlay (from `/services` on a manager, the verbose
//!   inspect on a worker) -> a VIP service `<service>@<network>`, frontends `VIP:*` TCP and UDP,
//!   the same backends on port 0. Ingress VIPs are not served (published ports reach ingress).
//! - **Members**: the node's own namespace, then each running local container's sandbox
//!   (`SandboxKey`) with the cluster's overlays it is attached to; containers sharing the host's
//!   or another container's namespace are skipped.
//!
//! A problem with one service (bad label, unknown network, no local endpoint, port already
//! claimed) leaves that service out and is reported in [`Translation::notes`]; the rest is kept.
//!
//! [`translate`] runs one step per submodule: `nodes`, `networks`, `wants` (what each service
//! asks for, its ports parsed by `ports`), `services` (the model services, their tasks from
//! `backends`), `vips` (the VIP services, from `backends` too), `members`.

mod backends;
mod members;
mod networks;
mod nodes;
mod ports;
mod services;
mod vips;
mod wants;

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::models::{
    ContainerSummary, NetworkInspect, Node as DockerNode, Service as DockerService, SystemInfo, Task,
};

use crate::model::{Cluster, NodeSettings, SwarmSettings};
use networks::Networks;
use nodes::Nodes;

pub use backends::split_task_name;
pub use members::HOST_NETNS;
pub use networks::{OPT_MTU, OPT_VNI};
pub use ports::{PortSpec, parse_inspect_port, parse_publish_label};
pub use wants::{LABEL_NETWORK, LABEL_PUBLISH, LABEL_STICKY};

/// Everything read from the Engine for one sync.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub info: SystemInfo,
    /// `/nodes`, `/services`, `/tasks`: `None` on a worker (the Engine refuses them).
    pub nodes: Option<Vec<DockerNode>>,
    pub services: Option<Vec<DockerService>>,
    pub tasks: Option<Vec<Task>>,
    /// Verbose inspects of the overlay networks this node can see.
    pub networks: Vec<NetworkInspect>,
    /// This node's running containers (their namespaces are members; their labels are the
    /// worker fallback for `swarmlb.publish`).
    pub containers: Vec<ContainerSummary>,
    /// `NetworkSettings.SandboxKey` of `containers` by id (a container inspect); one that could
    /// not be inspected is missing.
    pub sandbox_keys: HashMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Translation {
    pub cluster: Cluster,
    /// The local node's name in `cluster` (its Docker node id).
    pub local_node: String,
    /// What was left out and why, one line each, naming the service (and label).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("the Engine is not an active swarm node (info.swarm: state {state:?}, node id {node_id:?})")]
    NotInSwarm { state: String, node_id: String },
    #[error("the Engine reports no valid address for this node (info.swarm.node_addr {0:?})")]
    NoNodeAddr(String),
}

pub fn translate(snap: &Snapshot) -> Result<Translation, TranslateError> {
    let mut notes = Vec::new();
    let nodes = Nodes::read(snap, &mut notes)?;
    let nets = Networks::read(&snap.networks, &nodes, &mut notes);
    let wants = match &snap.services {
        Some(services) => wants::of_services(services, &nets, &mut notes),
        None => wants::seen_by_worker(&nets, &snap.containers, &mut notes),
    };
    let tasks = backends::tasks_by_id(snap.tasks.as_deref());
    let mut built = services::build(wants, &nets, &nodes, tasks.as_ref(), &mut notes);
    let vips = vips::build(snap.services.as_deref(), &nets, &nodes, tasks.as_ref(), &mut notes);
    built.services.extend(vips.services);
    built.networks_used.extend(vips.networks_used);
    let members = members::members(&snap.containers, &snap.sandbox_keys, &nets, &built.networks_used, &mut notes);
    let networks = nets.into_used(&built.networks_used);
    let Nodes { local, list: nodes, .. } = nodes;
    Ok(Translation {
        cluster: Cluster {
            node: NodeSettings::default(),
            swarm: SwarmSettings::default(),
            nodes,
            networks,
            services: built.services,
            members,
        },
        local_node: local,
        notes,
    })
}

/// An IPv4 address, with or without a `/prefix` after it.
fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.trim().parse().ok()
}
