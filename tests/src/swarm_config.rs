//! The services file that describes a virtual swarm to `swarmlb` (the static source's view of
//! what the Docker source will read from the Engine): nodes, overlay networks with every node's
//! endpoint, services and their tasks. Every node gets the same file and its own `--node`.

use std::fmt::Write;

use crate::swarm::{OVERLAY_MTU, Swarm, VXLAN_PORT, node_addr};

/// A service of the virtual swarm: its tasks are the swarm's tasks named `<name>.<n>`.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    /// Index into `Swarm::networks`.
    pub network: usize,
    pub frontends: Vec<String>,
    pub target_port: u16,
}

pub fn node_name(node: usize) -> String {
    format!("node-{}", node + 1)
}

/// The services file for `swarm` running `services`.
pub fn config(swarm: &Swarm, services: &[ServiceSpec]) -> String {
    let mut toml = String::new();
    let _ = writeln!(toml, "[swarm]\nvxlan_port = {VXLAN_PORT}\n");
    for node in 0..swarm.nodes.len() {
        let _ = writeln!(toml, "[[swarm.node]]\nname = \"{}\"\naddr = \"{}\"\n", node_name(node), node_addr(node));
    }
    for network in &swarm.networks {
        let _ = writeln!(
            toml,
            "[[network]]\nname = \"{}\"\nvni = {}\nsubnet = \"{}\"\nmtu = {OVERLAY_MTU}\n",
            network.name,
            network.vni,
            network.subnet_cidr()
        );
        for node in 0..swarm.nodes.len() {
            let _ = writeln!(
                toml,
                "[[network.endpoint]]\nnode = \"{}\"\naddr = \"{}\"\n",
                node_name(node),
                network.endpoint_addr(node)
            );
        }
    }
    for service in services {
        let frontends: Vec<String> = service.frontends.iter().map(|f| format!("\"{f}\"")).collect();
        let _ = writeln!(
            toml,
            "[[service]]\nname = \"{}\"\nnetwork = \"{}\"\nfrontends = [{}]\n",
            service.name,
            swarm.networks[service.network].name,
            frontends.join(", ")
        );
        let prefix = format!("{}.", service.name);
        for task in swarm.tasks.iter().filter(|t| t.name.starts_with(&prefix)) {
            let _ = writeln!(
                toml,
                "[[service.backend]]\nname = \"{}\"\naddr = \"{}:{}\"\nnode = \"{}\"\n",
                task.name,
                task.ip,
                service.target_port,
                node_name(task.node)
            );
        }
    }
    toml
}
