//! Engine JSON -> [`Cluster`], pure: no I/O, no clock. Everything the Engine said is in a
//! [`Snapshot`] (bollard's own model structs), so the tests build snapshots by hand.
//!
//! Mapping (see the README's Docker-source section):
//! - **Nodes** are named by their Docker node id. Managers list every node (`/nodes`,
//!   `status.addr`); a worker knows its own id and address (`info`) and only the addresses of its
//!   gossip peers (`Peers` of each network), which it names `peer-<address>` (the peer name
//!   there is networkdb's, neither the node id nor the hostname). Node names are informational
//!   except the local one, which the planner looks up.
//! - **Networks**: every overlay a translated service uses. VNI = first of
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
//!
//! A problem with one service (bad label, unknown network, no local endpoint, port already
//! claimed) leaves that service out and is reported in [`Translation::notes`]; the rest is kept.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use bollard::models::{
    ContainerSummary, EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointPortConfigProtocolEnum,
    NetworkInspect, NetworkTaskInfo, Node as DockerNode, Service as DockerService, ServiceInfo, SystemInfo, Task,
    TaskState,
};

use crate::model::{
    Backend, Cluster, DEFAULT_OVERLAY_MTU, Endpoint, Frontend, Network, Node, NodeSettings, Proto, Service, Subnet,
    SwarmSettings,
};

/// Service (or container) label listing the ports swarmlb publishes: `8080:80/tcp,5353:53/udp`.
pub const LABEL_PUBLISH: &str = "swarmlb.publish";
/// The overlay network the label's ports reach the tasks on (default: the service's first).
pub const LABEL_NETWORK: &str = "swarmlb.network";
/// `true`: pick the task from the client address alone.
pub const LABEL_STICKY: &str = "swarmlb.sticky";
pub const OPT_VNI: &str = "com.docker.network.driver.overlay.vxlanid_list";
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";
const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";

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
    /// This node's containers (their labels: the worker fallback for `swarmlb.publish`).
    pub containers: Vec<ContainerSummary>,
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

/// One published port of a service, before it is grouped by target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
}

/// Parses `swarmlb.publish`: `published:target[/tcp|/udp]`, comma separated.
pub fn parse_publish_label(value: &str) -> Result<Vec<PortSpec>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty entry in {value:?}"));
        }
        let (ports, proto) = match item.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(format!("{item:?}: protocol {other:?} is neither tcp nor udp")),
            None => (item, Proto::Tcp),
        };
        let Some((published, target)) = ports.split_once(':') else {
            return Err(format!("{item:?}: expected PUBLISHED:TARGET[/PROTO]"));
        };
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{item:?}: {s:?} is not a port (1-65535)")),
            Ok(p) => Ok(p),
        };
        out.push(PortSpec { published: port(published)?, target: port(target)?, proto });
    }
    Ok(out)
}

/// Parses the `Ports` strings of a verbose network inspect (`"Target: 8080, Publish: 8080"`).
/// The protocol is not in them: TCP is assumed (the worker fallback's known limit).
pub fn parse_inspect_port(s: &str) -> Option<PortSpec> {
    let mut target = None;
    let mut published = None;
    for part in s.split(',') {
        let (k, v) = part.split_once(':')?;
        let v = v.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
        match k.trim() {
            "Target" => target = Some(v),
            "Publish" => published = Some(v),
            _ => {}
        }
    }
    Some(PortSpec { published: published?, target: target?, proto: Proto::Tcp })
}

/// `web.1.liv0d6hx…` -> (`web.1`, `liv0d6hx…`); a name without a dot is kept whole.
pub fn split_task_name(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or((name, ""))
}

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.trim().parse().ok()
}

fn parse_subnet(s: &str) -> Option<Subnet> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let subnet = Subnet { addr, prefix };
    (u32::from(addr) & subnet.mask() == u32::from(addr)).then_some(subnet)
}

/// A network as read, before we know whether a service uses it.
struct NetView<'a> {
    id: &'a str,
    network: Network,
    ingress: bool,
    /// `Services` of the verbose inspect, decoded.
    services: BTreeMap<String, ServiceInfo>,
}

pub fn translate(snap: &Snapshot) -> Result<Translation, TranslateError> {
    let mut notes = Vec::new();
    let swarm = snap.info.swarm.clone().unwrap_or_default();
    let local = swarm.node_id.clone().unwrap_or_default();
    let state = swarm.local_node_state.map(|s| s.to_string()).unwrap_or_default();
    if local.is_empty() || state != "active" {
        return Err(TranslateError::NotInSwarm { state, node_id: local });
    }
    let local_addr_s = swarm.node_addr.clone().unwrap_or_default();
    let local_addr = parse_ip(&local_addr_s).filter(|a| !a.is_unspecified()).ok_or(TranslateError::NoNodeAddr(local_addr_s))?;

    // Nodes: id -> address, and address -> id for the `Host IP`s.
    let mut nodes: Vec<Node> = vec![Node { name: local.clone(), addr: local_addr }];
    if let Some(list) = &snap.nodes {
        for n in list {
            let Some(id) = n.id.clone().filter(|i| *i != local) else { continue };
            let status = n.status.as_ref().and_then(|s| s.addr.as_deref()).and_then(parse_ip).filter(|a| !a.is_unspecified());
            // A manager bound to 0.0.0.0 reports that as status.addr; its manager address has the IP.
            let manager = n.manager_status.as_ref().and_then(|m| m.addr.as_deref()).and_then(|a| a.rsplit_once(':')).and_then(|(ip, _)| parse_ip(ip));
            match status.or(manager) {
                Some(addr) => nodes.push(Node { name: id, addr }),
                None => notes.push(format!("node {id}: no address in status.addr; left out")),
            }
        }
    } else {
        for peer in snap.networks.iter().flat_map(|n| n.peers.iter().flatten()) {
            if let Some(addr) = peer.ip.as_deref().and_then(parse_ip) {
                nodes.push(Node { name: format!("peer-{addr}"), addr });
            }
        }
    }
    // Unique names and addresses, the local node first.
    let mut seen_addr = BTreeSet::new();
    let mut seen_name = BTreeSet::new();
    nodes.retain(|n| seen_addr.insert(n.addr) && seen_name.insert(n.name.clone()));
    let node_by_addr: HashMap<Ipv4Addr, String> = nodes.iter().map(|n| (n.addr, n.name.clone())).collect();
    let known_nodes: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();

    // Networks.
    let mut nets: Vec<NetView<'_>> = Vec::new();
    for inspect in &snap.networks {
        if inspect.driver.as_deref() != Some("overlay") {
            continue;
        }
        let name = inspect.name.clone().unwrap_or_default();
        let id = inspect.id.as_deref().unwrap_or("");
        match network_of(inspect, &local, &node_by_addr) {
            Ok(network) => {
                let services = inspect
                    .services
                    .iter()
                    .flatten()
                    .filter_map(|(k, v)| serde_json::from_value::<ServiceInfo>(v.clone()).ok().map(|s| (k.clone(), s)))
                    .collect();
                nets.push(NetView { id, network, ingress: inspect.ingress == Some(true) || name == "ingress", services });
            }
            Err(why) => notes.push(format!("network {name:?}: {why}; services on it are left out")),
        }
    }
    let net_by_ref = |r: &str| nets.iter().find(|n| n.network.name == r || (!n.id.is_empty() && (n.id == r)));

    // Tasks by id (managers).
    let tasks: Option<HashMap<&str, &Task>> =
        snap.tasks.as_ref().map(|ts| ts.iter().filter_map(|t| Some((t.id.as_deref()?, t))).collect());

    // What each service asks for: (name, labels-derived ports or ingress ports, network ref).
    struct Want {
        service: String,
        ports: Vec<PortSpec>,
        network: String,
        sticky: bool,
        /// From a `swarmlb.publish` label (claims its ports after the ingress-published ones,
        /// whose uniqueness swarm guarantees).
        label: bool,
    }
    let mut wants: Vec<Want> = Vec::new();
    if let Some(services) = &snap.services {
        for s in services {
            let spec = s.spec.clone().unwrap_or_default();
            let Some(name) = spec.name.clone() else { continue };
            let labels = spec.labels.clone().unwrap_or_default();
            let sticky = labels.get(LABEL_STICKY).is_some_and(|v| v == "true");
            if let Some(label) = labels.get(LABEL_PUBLISH) {
                let ports = match parse_publish_label(label) {
                    Ok(p) => p,
                    Err(e) => {
                        notes.push(format!("service {name:?}: label {LABEL_PUBLISH}={label:?}: {e}; service left out"));
                        continue;
                    }
                };
                let first = spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.networks.as_ref())
                    .or(spec.networks.as_ref())
                    .and_then(|n| n.iter().find_map(|a| a.target.clone()));
                let network = match (labels.get(LABEL_NETWORK), first) {
                    (Some(n), _) => n.clone(),
                    (None, Some(n)) => n,
                    (None, None) => {
                        notes.push(format!("service {name:?}: label {LABEL_PUBLISH}: the service is on no overlay network; service left out"));
                        continue;
                    }
                };
                if ingress_ports(s).next().is_some() {
                    notes.push(format!("service {name:?}: label {LABEL_PUBLISH} replaces its ingress-published ports"));
                }
                wants.push(Want { service: name, ports, network, sticky, label: true });
                continue;
            }
            let all: Vec<&EndpointPortConfig> = endpoint_ports(s).collect();
            let host: Vec<String> = all
                .iter()
                .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
                .map(|p| format!("{}", p.published_port.unwrap_or(0)))
                .collect();
            if !host.is_empty() {
                notes.push(format!(
                    "service {name:?}: port(s) {} published in host mode are bound by Docker on the node itself; not balanced",
                    host.join(",")
                ));
            }
            let ports: Vec<PortSpec> = ingress_ports(s).collect();
            if ports.is_empty() {
                continue;
            }
            let Some(ingress) = nets.iter().find(|n| n.ingress) else {
                notes.push(format!("service {name:?}: published in ingress mode but the ingress network is not readable; service left out"));
                continue;
            };
            wants.push(Want { service: name, ports, network: ingress.network.name.clone(), sticky, label: false });
        }
    } else {
        // Worker: what this node sees. Ingress services from the ingress network's entries.
        if let Some(ingress) = nets.iter().find(|n| n.ingress) {
            for (svc, info) in &ingress.services {
                if svc.is_empty() {
                    continue;
                }
                let ports: Vec<PortSpec> = info.ports.iter().flatten().filter_map(|p| parse_inspect_port(p)).collect();
                if !ports.is_empty() {
                    wants.push(Want { service: svc.clone(), ports, network: ingress.network.name.clone(), sticky: false, label: false });
                }
            }
        }
        // Labels on local containers (set with `--container-label`); one container per service is enough.
        let mut labelled: BTreeMap<String, &ContainerSummary> = BTreeMap::new();
        for c in &snap.containers {
            let labels = c.labels.as_ref();
            if let (Some(svc), Some(_)) =
                (labels.and_then(|l| l.get(LABEL_SERVICE_NAME)), labels.and_then(|l| l.get(LABEL_PUBLISH)))
            {
                labelled.entry(svc.clone()).or_insert(c);
            }
        }
        for (svc, c) in labelled {
            let labels = c.labels.clone().unwrap_or_default();
            let label = &labels[LABEL_PUBLISH];
            let ports = match parse_publish_label(label) {
                Ok(p) => p,
                Err(e) => {
                    notes.push(format!("service {svc:?}: container label {LABEL_PUBLISH}={label:?}: {e}; service left out"));
                    continue;
                }
            };
            let first = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.keys().filter(|k| net_by_ref(k).is_some_and(|v| !v.ingress)).min().cloned());
            let Some(network) = labels.get(LABEL_NETWORK).cloned().or(first) else {
                notes.push(format!("service {svc:?}: container label {LABEL_PUBLISH}: the task is on no overlay network; service left out"));
                continue;
            };
            let sticky = labels.get(LABEL_STICKY).is_some_and(|v| v == "true");
            wants.retain(|w| w.service != svc);
            wants.push(Want { service: svc, ports, network, sticky, label: true });
        }
    }
    wants.sort_by(|a, b| (a.label, &a.service).cmp(&(b.label, &b.service)));

    // Build model services.
    let mut services: Vec<Service> = Vec::new();
    let mut claimed: BTreeMap<(u16, Proto), String> = BTreeMap::new();
    let mut used_nets: BTreeSet<String> = BTreeSet::new();
    for want in wants {
        let name = &want.service;
        let Some(net) = net_by_ref(&want.network) else {
            notes.push(format!("service {name:?}: network {:?} is not an overlay network this node can read; service left out", want.network));
            continue;
        };
        if net.network.endpoint(&local).is_none() {
            notes.push(format!(
                "service {name:?}: network {:?} has no load-balancer endpoint on this node yet; service left out",
                net.network.name
            ));
            continue;
        }
        let clash: Vec<String> = want
            .ports
            .iter()
            .filter_map(|p| claimed.get(&(p.published, p.proto)).map(|o| format!("{}/{} (service {o:?})", p.published, p.proto.name())))
            .collect();
        if !clash.is_empty() {
            notes.push(format!("service {name:?}: port(s) {} already published; service left out", clash.join(", ")));
            continue;
        }
        let mut dup = BTreeSet::new();
        if let Some(p) = want.ports.iter().find(|p| !dup.insert((p.published, p.proto))) {
            notes.push(format!("service {name:?}: port {}/{} published twice; service left out", p.published, p.proto.name()));
            continue;
        }
        for p in &want.ports {
            claimed.insert((p.published, p.proto), name.clone());
        }
        let entries: &[NetworkTaskInfo] = net.services.get(name).and_then(|s| s.tasks.as_deref()).unwrap_or(&[]);
        let tasks_found = task_backends(name, entries, tasks.as_ref(), &node_by_addr, &known_nodes);
        let by_target: BTreeMap<u16, Vec<&PortSpec>> = want.ports.iter().fold(BTreeMap::new(), |mut m, p| {
            m.entry(p.target).or_insert_with(Vec::new).push(p);
            m
        });
        let split = by_target.len() > 1;
        for (target, ports) in by_target {
            let mut frontends: Vec<Frontend> = ports.iter().map(|p| Frontend { addr: None, port: p.published, proto: p.proto }).collect();
            frontends.sort();
            let backends = tasks_found
                .iter()
                .map(|(n, ip, w, node)| Backend { name: n.clone(), addr: SocketAddrV4::new(*ip, target), weight: *w, node: node.clone() })
                .collect();
            services.push(Service {
                name: if split { format!("{name}/{target}") } else { name.clone() },
                frontends,
                backends,
                sticky: want.sticky,
                nat_addr: None,
                network: Some(net.network.name.clone()),
            });
        }
        used_nets.insert(net.network.name.clone());
    }

    let mut networks: Vec<Network> = nets.into_iter().filter(|n| used_nets.contains(&n.network.name)).map(|n| n.network).collect();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let local_first = nodes.remove(0);
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.insert(0, local_first);
    Ok(Translation {
        cluster: Cluster { node: NodeSettings::default(), swarm: SwarmSettings::default(), nodes, networks, services },
        local_node: local,
        notes,
    })
}

fn endpoint_ports(s: &DockerService) -> impl Iterator<Item = &EndpointPortConfig> {
    // `Endpoint.Ports` is what swarm allocated; the spec is the fallback while it is pending.
    let actual = s.endpoint.as_ref().and_then(|e| e.ports.as_ref()).filter(|p| !p.is_empty());
    let spec = s.spec.as_ref().and_then(|s| s.endpoint_spec.as_ref()).and_then(|e| e.ports.as_ref());
    actual.or(spec).into_iter().flatten()
}

fn ingress_ports(s: &DockerService) -> impl Iterator<Item = PortSpec> + '_ {
    endpoint_ports(s).filter_map(|p| {
        // The API's default publish mode is ingress.
        if p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST) {
            return None;
        }
        let proto = match p.protocol {
            None | Some(EndpointPortConfigProtocolEnum::TCP) => Proto::Tcp,
            Some(EndpointPortConfigProtocolEnum::UDP) => Proto::Udp,
            _ => return None, // sctp
        };
        let port = |v: Option<i64>| v.and_then(|v| u16::try_from(v).ok()).filter(|v| *v != 0);
        Some(PortSpec { published: port(p.published_port)?, target: port(p.target_port)?, proto })
    })
}

fn network_of(inspect: &NetworkInspect, local: &str, node_by_addr: &HashMap<Ipv4Addr, String>) -> Result<Network, String> {
    let name = inspect.name.clone().unwrap_or_default();
    let options = inspect.options.clone().unwrap_or_default();
    let vni_s = options.get(OPT_VNI).ok_or_else(|| format!("no option {OPT_VNI}"))?;
    let vni: u32 = vni_s
        .split(',')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| (1..1 << 24).contains(v))
        .ok_or_else(|| format!("option {OPT_VNI}={vni_s:?} is not a VNI"))?;
    let mtu = match options.get(OPT_MTU) {
        None => DEFAULT_OVERLAY_MTU,
        Some(m) => m.trim().parse::<u16>().ok().filter(|m| (576..=9000).contains(m)).ok_or_else(|| format!("option {OPT_MTU}={m:?} is not an MTU (576-9000)"))?,
    };
    let subnet = inspect
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.iter().find_map(|c| c.subnet.as_deref().and_then(parse_subnet)))
        .ok_or("no IPv4 subnet in IPAM")?;
    let endpoint_name = format!("{name}-endpoint");
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let gossiped = inspect.services.as_ref().and_then(|s| s.get("")).and_then(|v| serde_json::from_value::<ServiceInfo>(v.clone()).ok());
    for task in gossiped.iter().flat_map(|s| s.tasks.iter().flatten()) {
        if task.name.as_deref() != Some(endpoint_name.as_str()) {
            continue;
        }
        let host = task.info.as_ref().and_then(|i| i.get("Host IP")).and_then(|h| parse_ip(h));
        let node = host.and_then(|h| node_by_addr.get(&h));
        if let (Some(node), Some(addr)) = (node, task.endpoint_ip.as_deref().and_then(parse_ip)) {
            endpoints.push(Endpoint { node: node.clone(), addr });
        }
    }
    if !endpoints.iter().any(|e| e.node == local) {
        let own = inspect.containers.iter().flatten().find(|(_, c)| c.name.as_deref() == Some(endpoint_name.as_str()));
        if let Some(addr) = own.and_then(|(_, c)| c.ipv4_address.as_deref()).and_then(parse_ip) {
            endpoints.push(Endpoint { node: local.to_owned(), addr });
        }
    }
    endpoints.retain(|e| subnet.contains(e.addr));
    let mut seen = BTreeSet::new();
    endpoints.retain(|e| seen.insert(e.node.clone()) && seen.insert(e.addr.to_string()));
    endpoints.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Network { name, vni, subnet, mtu, endpoints })
}

/// (name, address, weight, node) of the tasks of `service` listed on a network.
fn task_backends(
    service: &str,
    entries: &[NetworkTaskInfo],
    tasks: Option<&HashMap<&str, &Task>>,
    node_by_addr: &HashMap<Ipv4Addr, String>,
    known_nodes: &BTreeSet<&str>,
) -> Vec<(String, Ipv4Addr, u32, Option<String>)> {
    let mut out: Vec<(String, Ipv4Addr, u32, Option<String>)> = Vec::new();
    for e in entries {
        let Some(full) = e.name.as_deref() else { continue };
        let Some(ip) = e.endpoint_ip.as_deref().and_then(parse_ip) else { continue };
        let (base, id) = split_task_name(full);
        // `<service>.<slot>` (replicated) or `<service>.<node id>` (global).
        if base.rsplit_once('.').map(|(s, _)| s) != Some(service) {
            continue;
        }
        let host_node = e.info.as_ref().and_then(|i| i.get("Host IP")).and_then(|h| parse_ip(h)).and_then(|h| node_by_addr.get(&h).cloned());
        let (weight, node) = match tasks {
            // Worker: the network's entries are all it knows; an entry exists while the task's
            // endpoint does.
            None => (1, host_node),
            Some(tasks) => {
                let Some(task) = tasks.get(id) else { continue };
                let state = task.status.as_ref().and_then(|s| s.state);
                // With a HEALTHCHECK, swarm keeps status.state at `starting` until the container
                // is healthy, so `running` here already means healthy (swarmkit's container
                // adapter waits for the health status before reporting running).
                if state != Some(TaskState::RUNNING) {
                    continue;
                }
                let weight = match task.desired_state {
                    Some(TaskState::RUNNING) => 1,
                    // Scaled down, updated or removed: still serving its connections, no new ones.
                    _ => 0,
                };
                let node = task.node_id.clone().filter(|n| known_nodes.contains(n.as_str())).or(host_node);
                (weight, node)
            }
        };
        out.push((base.to_owned(), ip, weight, node));
    }
    // Live tasks first, so a draining task that shares its slot with its replacement is the one
    // renamed (`web.1.<task id>`); the live one keeps `web.1` and its Maglev slots.
    out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    let mut names = BTreeSet::new();
    for (i, entry) in out.iter_mut().enumerate() {
        if !names.insert(entry.0.clone()) {
            let full = entries.iter().find(|e| e.endpoint_ip.as_deref().and_then(parse_ip) == Some(entry.1)).and_then(|e| e.name.clone());
            entry.0 = full.unwrap_or_else(|| format!("{}#{i}", entry.0));
            names.insert(entry.0.clone());
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
