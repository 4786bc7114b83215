//! swarmlb running on every node of a virtual swarm: one agent per node, each with its own pin
//! directory, all reading the same services file; reconfiguration and restarts as an operator
//! would do them.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    agent::{self, Agent, Placement},
    swarm::{Swarm, node_addr},
    swarm_config::{ServiceSpec, config, node_name},
};

pub struct SwarmLb {
    pub services: Vec<ServiceSpec>,
    pub config: PathBuf,
    /// Declared before the swarm: agents stop and unpin before the namespaces go.
    agents: Agents,
    pub swarm: Swarm,
}

/// One agent slot per node; stops them and removes their pinned datapaths when dropped.
struct Agents {
    running: Vec<Option<Agent>>,
    placements: Vec<Placement>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for agent in self.running.iter_mut() {
            drop(agent.take());
        }
        for placement in &self.placements {
            let _ = agent::unload_at(placement);
        }
    }
}

impl SwarmLb {
    /// Writes the services file and starts an agent on every node, XDP on the underlay and on
    /// every overlay endpoint.
    pub fn start(swarm: Swarm, services: Vec<ServiceSpec>) -> Result<SwarmLb> {
        let path = std::env::temp_dir().join(format!("{}.toml", swarm.prefix));
        std::fs::write(&path, config(&swarm, &services))?;
        let placements: Vec<Placement> = (0..swarm.nodes.len())
            .map(|node| Placement {
                node: Some(node_name(node)),
                pin_dir: Some(format!("/sys/fs/bpf/{}-n{}", swarm.prefix, node + 1)),
                ..Placement::default()
            })
            .collect();
        let agents = Agents { running: Vec::new(), placements };
        let mut lb = SwarmLb { services, config: path, agents, swarm };
        for node in 0..lb.swarm.nodes.len() {
            agent::unload_at(&lb.agents.placements[node])?;
            let agent = lb.start_agent(node)?;
            lb.agents.running.push(Some(agent));
        }
        Ok(lb)
    }

    /// Stops every agent, removes their datapaths, and hands the bare swarm back.
    pub fn into_swarm(self) -> Swarm {
        let SwarmLb { agents, swarm, .. } = self;
        drop(agents);
        swarm
    }

    fn ifaces(&self) -> Vec<String> {
        let mut ifaces = vec!["eth0".to_string()];
        ifaces.extend(self.swarm.networks.iter().map(|n| format!("lb-{}", n.vni)));
        ifaces
    }

    fn start_agent(&self, node: usize) -> Result<Agent> {
        let ifaces = self.ifaces();
        let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
        Agent::start_placed(
            &self.swarm.nodes[node],
            &self.agents.placements[node],
            &ifaces,
            self.config.to_str().context("config path")?,
            self.services.len(),
        )
    }

    /// The published port `port` as reached on `node`'s underlay address.
    pub fn published(&self, node: usize, port: u16) -> SocketAddr {
        SocketAddr::from((node_addr(node), port))
    }

    /// Rewrites the services file from the swarm's current tasks and has every agent reload it.
    pub fn reconfigure(&mut self) -> Result<()> {
        std::fs::write(&self.config, config(&self.swarm, &self.services))?;
        for agent in self.agents.running.iter().flatten() {
            agent.signal("HUP")?;
        }
        Ok(())
    }

    /// Stops `node`'s agent (its datapath keeps serving) and starts it again.
    pub fn restart(&mut self, node: usize) -> Result<()> {
        if let Some(mut agent) = self.agents.running[node].take() {
            agent.stop()?;
        }
        self.agents.running[node] = Some(self.start_agent(node)?);
        Ok(())
    }

    pub fn status(&self, node: usize) -> Result<Value> {
        agent::status_at(&self.agents.placements[node])
    }

    pub fn pin_dir(&self, node: usize) -> &str {
        self.agents.placements[node].pin_dir.as_deref().unwrap_or(lb_common::maps::PIN_DIR)
    }

    /// Names of the backends `node`'s agent has programmed for `service` with a weight above 0.
    pub fn active_backends(&self, node: usize, service: &str) -> Result<Vec<String>> {
        let status = self.status(node)?;
        let services = status["services"].as_array().context("services")?;
        let service = services.iter().find(|s| s["name"] == service).context("service not programmed")?;
        Ok(service["backends"]
            .as_array()
            .context("backends")?
            .iter()
            .filter(|b| b["weight"].as_u64().unwrap_or(0) > 0)
            .filter_map(|b| b["name"].as_str().map(String::from))
            .collect())
    }
}
