//! What each service asks to have published, and on which network: from `/services` on a
//! manager (a `swarmlb.publish` label, else its ingress-published ports), from the ingress
//! network's entries and the local containers' labels on a worker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{ContainerSummary, Service as DockerService, ServiceSpec};

use super::{
    networks::{NetView, Networks},
    ports::{PortSpec, host_ports, ingress_ports, parse_inspect_port, parse_publish_label},
};
use crate::model::Proto;

/// Service (or container) label listing the ports swarmlb publishes: `8080:80/tcp,5353:53/udp`.
pub const LABEL_PUBLISH: &str = "swarmlb.publish";
/// The overlay network the label's ports reach the tasks on (default: the service's first).
pub const LABEL_NETWORK: &str = "swarmlb.network";
/// `true`: pick the task from the client address alone.
pub const LABEL_STICKY: &str = "swarmlb.sticky";
const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";

pub(super) struct Want {
    pub service: String,
    pub ports: Vec<PortSpec>,
    /// The network's name or id, as the service or label gave it.
    pub network: String,
    pub sticky: bool,
    /// From a `swarmlb.publish` label (claims its ports after the ingress-published ones,
    /// whose uniqueness swarm guarantees).
    pub label: bool,
}

/// A manager's view: every service's own spec and endpoint.
pub(super) fn of_services(services: &[DockerService], nets: &Networks, notes: &mut Vec<String>) -> Vec<Want> {
    let wants = services.iter().filter_map(|s| of_service(s, nets, notes)).collect();
    in_claim_order(wants)
}

/// A worker's view: the ingress services this node has entries for, replaced by what a local
/// container's labels say.
pub(super) fn seen_by_worker(nets: &Networks, containers: &[ContainerSummary], notes: &mut Vec<String>) -> Vec<Want> {
    let mut wants = ingress_entries(nets, notes);
    for want in labelled_containers(containers, nets, notes) {
        wants.retain(|w| w.service != want.service);
        wants.push(want);
    }
    in_claim_order(wants)
}

fn in_claim_order(mut wants: Vec<Want>) -> Vec<Want> {
    wants.sort_by(|a, b| (a.label, &a.service).cmp(&(b.label, &b.service)));
    wants
}

fn is_sticky(labels: &HashMap<String, String>) -> bool {
    labels.get(LABEL_STICKY).is_some_and(|v| v == "true")
}

/// The label wins over ingress-published ports.
fn of_service(s: &DockerService, nets: &Networks, notes: &mut Vec<String>) -> Option<Want> {
    let spec = s.spec.clone().unwrap_or_default();
    let name = spec.name.clone()?;
    let labels = spec.labels.clone().unwrap_or_default();
    match labels.get(LABEL_PUBLISH) {
        Some(label) => labelled_service(s, &spec, name, &labels, label, notes),
        None => ingress_service(s, name, is_sticky(&labels), nets, notes),
    }
}

fn labelled_service(
    s: &DockerService,
    spec: &ServiceSpec,
    name: String,
    labels: &HashMap<String, String>,
    label: &str,
    notes: &mut Vec<String>,
) -> Option<Want> {
    let ports = match parse_publish_label(label) {
        Ok(p) => p,
        Err(e) => {
            notes.push(format!("service {name:?}: label {LABEL_PUBLISH}={label:?}: {e}; service left out"));
            return None;
        }
    };
    let first = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref())
        .or(spec.networks.as_ref())
        .and_then(|n| n.iter().find_map(|a| a.target.clone()));
    let Some(network) = labels.get(LABEL_NETWORK).cloned().or(first) else {
        notes.push(format!(
            "service {name:?}: label {LABEL_PUBLISH}: the service is on no overlay network; service left out"
        ));
        return None;
    };
    if ingress_ports(s).next().is_some() {
        notes.push(format!("service {name:?}: label {LABEL_PUBLISH} replaces its ingress-published ports"));
    }
    Some(Want { service: name, ports, network, sticky: is_sticky(labels), label: true })
}

/// Ports published in host mode are only noted: Docker binds them on the node itself.
fn ingress_service(
    s: &DockerService,
    name: String,
    sticky: bool,
    nets: &Networks,
    notes: &mut Vec<String>,
) -> Option<Want> {
    let host: Vec<String> = host_ports(s).map(|p| p.to_string()).collect();
    if !host.is_empty() {
        notes.push(format!(
            "service {name:?}: port(s) {} published in host mode are bound by Docker on the node itself; not balanced",
            host.join(",")
        ));
    }
    let ports: Vec<PortSpec> = ingress_ports(s).collect();
    if ports.is_empty() {
        return None;
    }
    let Some(ingress) = nets.ingress() else {
        notes.push(format!(
            "service {name:?}: published in ingress mode but the ingress network is not readable; service left out"
        ));
        return None;
    };
    Some(Want { service: name, ports, network: ingress.network.name.clone(), sticky, label: false })
}

/// The services in the ingress network's entries, with the ports its inspect lists. Those carry
/// no protocol, so each port is published for TCP and UDP alike (traffic of the protocol the
/// service does not serve reaches a task port nobody listens on). Swarm lets two services share
/// a port number only with different protocols; such a number cannot be told apart here and is
/// left out of both, with a note.
fn ingress_entries(nets: &Networks, notes: &mut Vec<String>) -> Vec<Want> {
    let Some(ingress) = nets.ingress() else { return Vec::new() };
    let listed = listed_ports(ingress);
    let mut owners: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for (svc, ports) in &listed {
        for (published, _) in ports {
            owners.entry(*published).or_default().push(svc);
        }
    }
    for (port, svcs) in owners.iter().filter(|(_, svcs)| svcs.len() > 1) {
        notes.push(format!(
            "port {port} is published by services {svcs:?} (one TCP, one UDP), which a worker cannot tell apart; not balanced on this node"
        ));
    }
    let mut wants = Vec::new();
    for (svc, ports) in &listed {
        let ports: Vec<PortSpec> = ports
            .iter()
            .filter(|(published, _)| owners[published].len() == 1)
            .flat_map(|&(published, target)| {
                [Proto::Tcp, Proto::Udp].map(|proto| PortSpec { published, target, proto })
            })
            .collect();
        if !ports.is_empty() {
            wants.push(Want {
                service: svc.to_string(),
                ports,
                network: ingress.network.name.clone(),
                sticky: false,
                label: false,
            });
        }
    }
    wants
}

/// Each service's (published, target) pairs as the inspect lists them (once per protocol).
fn listed_ports<'n>(ingress: &'n NetView) -> Vec<(&'n str, BTreeSet<(u16, u16)>)> {
    ingress
        .services
        .iter()
        .filter(|(svc, _)| !svc.is_empty())
        .map(|(svc, info)| (svc.as_str(), info.ports.iter().flatten().filter_map(|p| parse_inspect_port(p)).collect()))
        .collect()
}

/// Labels on local containers (set with `--container-label`); one container per service is enough.
fn labelled_containers(containers: &[ContainerSummary], nets: &Networks, notes: &mut Vec<String>) -> Vec<Want> {
    let mut labelled: BTreeMap<String, &ContainerSummary> = BTreeMap::new();
    for c in containers {
        let labels = c.labels.as_ref();
        if let (Some(svc), Some(_)) =
            (labels.and_then(|l| l.get(LABEL_SERVICE_NAME)), labels.and_then(|l| l.get(LABEL_PUBLISH)))
        {
            labelled.entry(svc.clone()).or_insert(c);
        }
    }
    labelled.into_iter().filter_map(|(svc, c)| labelled_container(svc, c, nets, notes)).collect()
}

fn labelled_container(svc: String, c: &ContainerSummary, nets: &Networks, notes: &mut Vec<String>) -> Option<Want> {
    let labels = c.labels.clone().unwrap_or_default();
    let label = &labels[LABEL_PUBLISH];
    let ports = match parse_publish_label(label) {
        Ok(p) => p,
        Err(e) => {
            notes.push(format!("service {svc:?}: container label {LABEL_PUBLISH}={label:?}: {e}; service left out"));
            return None;
        }
    };
    let first = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| n.keys().filter(|k| nets.by_ref(k).is_some_and(|v| !v.ingress)).min().cloned());
    let Some(network) = labels.get(LABEL_NETWORK).cloned().or(first) else {
        notes.push(format!(
            "service {svc:?}: container label {LABEL_PUBLISH}: the task is on no overlay network; service left out"
        ));
        return None;
    };
    Some(Want { service: svc, ports, network, sticky: is_sticky(&labels), label: true })
}
