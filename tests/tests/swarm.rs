//! Multi-node tests on the virtual swarm (see `tests::swarm`).

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use tests::{
    client::http_get,
    swarm::{Network, Swarm},
};

fn web_network() -> Network {
    Network { name: "web-net".into(), vni: 4097, subnet: 1 }
}

/// The builder itself: every node's load-balancer endpoint reaches tasks on every node over
/// VXLAN, with nothing but the kernel in the path.
#[test]
fn overlay_endpoints_reach_tasks_on_every_node() -> Result<()> {
    let mut swarm = Swarm::new(3, 1, vec![web_network()])?;
    for node in 0..3 {
        swarm.add_task(&format!("web.{}", node + 1), node, 0)?;
    }
    for node in 0..3 {
        for task in &swarm.tasks {
            swarm.nodes[node].exec(&format!("ping -c 1 -W 2 -I lb-4097 {} >/dev/null", task.ip))?;
            let addr = SocketAddr::from((task.ip, 8080));
            let answer = swarm.nodes[node].run(move || http_get(addr))??;
            ensure!(answer == task.name, "node {} asked {} and {answer} answered", node + 1, task.name);
        }
    }
    Ok(())
}
