//! What the end-to-end benches share: the phase plumbing around `tests::load` in the one-node
//! topology (a fresh backend per phase, a probe that the setup answers, the client kernel's
//! counters).

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    agent::{self, Agent, Placement},
    client::http_get,
    netns::Netns,
    poll::{Seen, wait_for},
    topology::SingleNode,
};

/// Load generator threads per phase (the machine has 2 cores).
pub const WORKERS: usize = 4;
/// Count bounds, far above what 2 cores reach in the time bounds (which end every phase).
pub const MAX_REQUESTS: u64 = 20_000_000;
pub const MAX_CONNS: u64 = 2_000_000;

/// A `TcpExt` counter of `ns` (`/proc/net/netstat`).
pub fn tcp_ext(ns: &Netns, name: &str) -> Result<u64> {
    let text = ns.exec("cat /proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().context("no TcpExt names")?, lines.next().context("no TcpExt values")?);
    let index =
        names.split_whitespace().position(|n| n == name).with_context(|| format!("no TcpExt counter {name}"))?;
    values.split_whitespace().nth(index).context("short TcpExt values")?.parse().context("TcpExt value")
}

/// Replaces the backend with a new one (new namespace, new server, no TIME_WAIT sockets left
/// from the previous phase) and forgets its old MAC on the lb node.
pub fn fresh_backend(topo: &mut SingleNode) -> Result<()> {
    topo.remove_backend(0)?;
    topo.add_backend(0)?;
    topo.lb.exec("ip neigh flush dev back")?;
    Ok(())
}

/// Waits until one HTTP request to `target` is answered: the setup is built and serving.
pub fn probe(client: &Netns, target: SocketAddr, setup: &str) -> Result<()> {
    wait_for(&format!("{setup}: {target} to answer"), Duration::from_secs(10), || {
        Ok(Seen::ok(client.run(move || http_get(target))?))
    })
    .map(drop)
}

/// A running agent on the topology's lb node (XDP on `front` and `back`) with its pinned
/// datapath; stopped and unloaded by `finish` or on drop. It pins where `placement` says, so a
/// namespace test or demo using the default directory at the same time is left alone.
pub struct BenchAgent {
    agent: Option<Agent>,
    placement: Placement,
}

impl BenchAgent {
    /// Starts it on `config`, which has `services` services.
    pub fn start(topo: &SingleNode, placement: &Placement, config: &str, services: usize) -> Result<BenchAgent> {
        agent::unload_at(placement)?;
        let agent = Agent::start_placed(&topo.lb, placement, &["front", "back"], config, services)?;
        Ok(BenchAgent { agent: Some(agent), placement: placement.clone() })
    }

    pub fn diagnosis(&self) -> String {
        self.agent.as_ref().map(Agent::diagnosis).unwrap_or_default()
    }

    /// `swarmlb status --json` of its datapath.
    pub fn status(&self) -> Result<Value> {
        agent::status_at(&self.placement)
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(mut agent) = self.agent.take() {
            let log = agent.log.clone();
            agent.stop()?;
            let _ = std::fs::remove_file(log);
        }
        agent::unload_at(&self.placement)
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.stop();
            let _ = agent::unload_at(&self.placement);
        }
    }
}
