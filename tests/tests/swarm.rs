//! Multi-node tests on the virtual swarm (`tests::swarm`): swarmlb on every node, tasks on every
//! node behind VXLAN overlays, clients on the underlay. Needs root.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Mutex};

use anyhow::{Context, Result, bail, ensure};
use swarmlb::datapath::maglev::MaglevTables;
use tests::{
    client::{EchoConn, http_get, http_spread, udp_spread},
    poll::wait_until,
    swarm::{Network, Swarm},
    swarm_config::ServiceSpec,
    swarm_lb::SwarmLb,
};

/// Tests build several namespaces and agents each: one swarm at a time keeps them quick.
static SWARM: Mutex<()> = Mutex::new(());

const WEB_PORT: u16 = 80;
const DNS_PORT: u16 = 53;

fn networks() -> Vec<Network> {
    vec![
        Network { name: "web-net".into(), vni: 4097, subnet: 1 },
        Network { name: "dns-net".into(), vni: 4098, subnet: 2 },
    ]
}

fn services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec { name: "web".into(), network: 0, frontends: vec![format!("*:{WEB_PORT}/tcp")], target_port: 8080 },
        ServiceSpec { name: "dns".into(), network: 1, frontends: vec![format!("*:{DNS_PORT}/udp")], target_port: 5353 },
    ]
}

/// Three nodes, one client, six web tasks (two per node), three dns tasks (one per node).
fn swarm_with_tasks() -> Result<SwarmLb> {
    let mut swarm = Swarm::new(3, 1, networks())?;
    for task in 0..6 {
        swarm.add_task(&format!("web.{}", task + 1), task % 3, 0)?;
    }
    for task in 0..3 {
        swarm.add_task(&format!("dns.{}", task + 1), task, 1)?;
    }
    SwarmLb::start(swarm, services())
}

fn web_spread(lb: &SwarmLb, node: usize, count: usize) -> Result<BTreeMap<String, usize>> {
    http_spread(&lb.swarm.clients[0], lb.published(node, WEB_PORT), count)
}

/// The builder itself: every node's load-balancer endpoint reaches tasks on every node over
/// VXLAN, with nothing but the kernel in the path.
#[test]
fn overlay_endpoints_reach_tasks_on_every_node() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let mut swarm = Swarm::new(3, 1, networks())?;
    for node in 0..3 {
        swarm.add_task(&format!("web.{}", node + 1), node, 0)?;
    }
    for node in 0..3 {
        for task in &swarm.tasks {
            let addr = SocketAddr::from((task.ip, 8080));
            let answer = swarm.nodes[node].run(move || http_get(addr))??;
            ensure!(answer == task.name, "node {} asked {} and {answer} answered", node + 1, task.name);
        }
    }
    Ok(())
}

#[test]
fn connections_entering_any_node_reach_tasks_on_every_node() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let lb = swarm_with_tasks()?;
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for node in 0..3 {
        let answers = web_spread(&lb, node, 600)?;
        eprintln!("600 connections entering node-{}: {answers:?}", node + 1);
        ensure!(answers.len() == 6, "entering node-{}, not every task answered: {answers:?}", node + 1);
        for (task, count) in answers {
            *total.entry(task).or_default() += count;
        }
    }
    for (task, count) in &total {
        ensure!((240..=360).contains(count), "{task} answered {count} of 1800 (even is 300, ±20%)");
    }
    for node in 0..3 {
        let status = lb.status(node)?;
        let reasons = &status["reasons"];
        ensure!(reasons["to_backend"].as_u64() > Some(0), "node-{} forwarded nothing in XDP: {reasons}", node + 1);
        ensure!(reasons["pass_too_big"].as_u64().unwrap_or(0) == 0, "too-big packets on node-{}: {reasons}", node + 1);
    }
    Ok(())
}

#[test]
fn udp_requests_reach_remote_tasks() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let lb = swarm_with_tasks()?;
    for node in 0..3 {
        let answers = udp_spread(&lb.swarm.clients[0], lb.published(node, DNS_PORT), 60)?;
        eprintln!("60 UDP requests entering node-{}: {answers:?}", node + 1);
        ensure!(answers.len() == 3, "entering node-{}, not every dns task answered: {answers:?}", node + 1);
    }
    Ok(())
}

/// Reads `service_id`'s Maglev table from a node's pinned `slb_maglev`, as backend names.
fn maglev_by_name(lb: &SwarmLb, node: usize, service: &str) -> Result<Vec<String>> {
    let status = lb.status(node)?;
    let service =
        status["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == service)).context("service")?;
    let id = service["id"].as_u64().context("id")? as u32;
    let names: BTreeMap<u64, String> = service["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .map(|b| (b["id"].as_u64().unwrap_or(0), b["name"].as_str().unwrap_or("").to_string()))
        .collect();
    let tables = MaglevTables::open(Path::new(&lb.pin_dir(node)))?;
    let table = tables.read(id)?.context("the service has no Maglev table")?;
    Ok(table.iter().map(|b| names.get(&(*b as u64)).cloned().unwrap_or_else(|| format!("id {b}"))).collect())
}

#[test]
fn every_node_programs_the_same_maglev_table() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let lb = swarm_with_tasks()?;
    let first = maglev_by_name(&lb, 0, "web")?;
    for node in 1..3 {
        let other = maglev_by_name(&lb, node, "web")?;
        let differing = first.iter().zip(&other).filter(|(a, b)| a != b).count();
        ensure!(first.len() == other.len(), "node-{} has a table of another size", node + 1);
        ensure!(differing == 0, "node-{} differs from node-1 in {differing} of {} slots", node + 1, first.len());
    }
    Ok(())
}

/// Opens echo connections through `node` until one lands on a task of another node.
fn connection_to_remote_task(lb: &SwarmLb, node: usize) -> Result<EchoConn> {
    let frontend = lb.published(node, WEB_PORT);
    for _ in 0..30 {
        let conn = lb.swarm.clients[0].run(move || EchoConn::open(frontend))??;
        if lb.swarm.task(&conn.backend)?.node != node {
            return Ok(conn);
        }
    }
    bail!("30 connections through node-{} all went to local tasks", node + 1)
}

#[test]
fn long_lived_connection_to_a_remote_task_survives_task_churn_and_agent_restart() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let mut lb = swarm_with_tasks()?;
    let mut conn = connection_to_remote_task(&lb, 0)?;
    conn.exchange("hello")?;
    let task_node = lb.swarm.task(&conn.backend)?.node;
    let other_node = (0..3).find(|&n| n != 0 && n != task_node).context("third node")?;

    // A task added on one node, another removed on a node that is not the connection's.
    lb.swarm.add_task("web.7", other_node, 0)?;
    let victim = lb
        .swarm
        .tasks
        .iter()
        .find(|t| t.name.starts_with("web.") && t.node == other_node && t.name != "web.7")
        .context("a task to remove")?
        .name
        .clone();
    lb.swarm.remove_task(&victim)?;
    lb.reconfigure()?;
    wait_until("every node to follow the churn", || {
        (0..3).try_fold(true, |all, node| {
            let active = lb.active_backends(node, "web")?;
            Ok(all && active.contains(&"web.7".to_string()) && !active.contains(&victim))
        })
    })?;
    conn.exchange("after churn")?;

    lb.restart(0)?;
    conn.exchange("after the ingress node's agent restarted")?;
    // 1400 bytes and more: segments must fit the overlay (MSS clamped on the SYN).
    conn.exchange(&"x".repeat(1400))?;
    conn.exchange(&"y".repeat(20_000))?;
    let reasons = lb.status(0)?["reasons"].clone();
    ensure!(reasons["pass_too_big"].as_u64().unwrap_or(0) == 0, "too-big packets: {reasons}");
    Ok(())
}

#[test]
fn a_removed_task_gets_no_new_connections_and_none_fail() -> Result<()> {
    let _one = SWARM.lock().unwrap_or_else(|e| e.into_inner());
    let mut lb = swarm_with_tasks()?;
    lb.swarm.remove_task("web.2")?;
    lb.reconfigure()?;
    wait_until("every node to drop web.2", || {
        (0..3).try_fold(true, |all, node| Ok(all && !lb.active_backends(node, "web")?.contains(&"web.2".to_string())))
    })?;
    for node in 0..3 {
        let answers = web_spread(&lb, node, 100)?;
        ensure!(!answers.contains_key("web.2"), "entering node-{}: removed task answered: {answers:?}", node + 1);
        ensure!(answers.len() == 5, "entering node-{}: {answers:?}", node + 1);
    }
    Ok(())
}
