//! The cross-node case on a real multi-node swarm: three Docker Engines, each in a node container
//! built from this host's binaries (`tests::dind`), swarmlb following its own node's Engine on
//! every node (the manager and two workers). Connections entering any node's published port
//! reach tasks on all three nodes, translated in XDP, and UDP requests are answered through every
//! node (workers learn ports without their protocol, see the Docker source); a caller task on
//! every node reaches a VIP service's tasks on every node by name (socket load balancing). Needs
//! root and a running Engine; every address is inside 198.18.0.0/15.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use tests::{
    agent::swarmlb_binary,
    client::{http_get, udp_spread},
    dind::{DindSwarm, NodeImage},
    poll::{Seen, wait_for},
};

const SERVICE: &str = "slbd-web";
const PORT: u16 = 18080;
const TASKS: usize = 6;
const CONNECTIONS: usize = 90;
const UDP_SERVICE: &str = "slbd-dns";
const UDP_PORT: u16 = 18053;
const UDP_TASKS: usize = 3;
const UDP_REQUESTS: usize = 30;

#[test]
fn every_node_serves_published_ports_and_vips_from_tasks_on_every_node() -> Result<()> {
    let started = Instant::now();
    let image = NodeImage::build(&swarmlb_binary()?)?;
    let swarm = DindSwarm::start(&image, 3, &["slb-testsrv:latest"])?;
    eprintln!("3-node swarm up in {:?}", started.elapsed());
    swarm.manager().docker(&format!(
        "service create --quiet --detach --name {SERVICE} --replicas {TASKS} --replicas-max-per-node 2 \
         --env 'SLB_TASK_NAME={{{{.Service.Name}}}}.{{{{.Task.Slot}}}}' \
         --publish published={PORT},target=8080,protocol=tcp slb-testsrv:latest 2>/dev/null"
    ))?;
    swarm.manager().docker(&format!(
        "service create --quiet --detach --name {UDP_SERVICE} --replicas {UDP_TASKS} \
         --env 'SLB_TASK_NAME={{{{.Service.Name}}}}.{{{{.Task.Slot}}}}' \
         --publish published={UDP_PORT},target=5353,protocol=udp slb-testsrv:latest 2>/dev/null"
    ))?;
    for (service, tasks) in [(SERVICE, TASKS), (UDP_SERVICE, UDP_TASKS)] {
        wait_for(&format!("{tasks} running tasks of {service}"), Duration::from_secs(90), || {
            Ok(match swarm.task_nodes(service) {
                Ok(running) => Seen::when(running.len() == tasks, format!("{running:?}")),
                Err(e) => Seen::NotYet(format!("{e:#}")),
            })
        })?;
    }
    let task_node: BTreeMap<String, String> = swarm.task_nodes(SERVICE)?.into_iter().collect();
    let all_nodes: BTreeSet<String> = swarm.nodes.iter().map(|n| n.name.clone()).collect();
    ensure!(
        task_node.values().cloned().collect::<BTreeSet<_>>() == all_nodes,
        "tasks are not spread over every node: {task_node:?}"
    );
    eprintln!("tasks: {task_node:?}");

    swarm.start_swarmlb()?;
    for node in &swarm.nodes {
        wait_for(&format!("{}'s agent to program both services", node.name), Duration::from_secs(30), || {
            let status = match node.swarmlb_status() {
                Ok(status) => status,
                Err(e) => return Ok(Seen::NotYet(format!("{e:#}"))),
            };
            let programmed = |service: &str, tasks: usize| {
                status["services"].as_array().is_some_and(|services| {
                    services.iter().any(|s| {
                        s["name"] == service
                            && s["backends"]
                                .as_array()
                                .is_some_and(|b| b.len() == tasks && b.iter().all(|b| b["weight"].as_u64() == Some(1)))
                    })
                })
            };
            Ok(Seen::when(programmed(SERVICE, TASKS) && programmed(UDP_SERVICE, UDP_TASKS), &status["services"]))
        })
        .with_context(|| format!("{} agent log:\n{}", node.name, node.swarmlb_log()))?;
    }

    for (i, node) in swarm.nodes.iter().enumerate() {
        let frontend = swarm.published(i, PORT);
        let answers = swarm.client.run(move || -> Result<BTreeMap<String, usize>> {
            let mut answers = BTreeMap::new();
            for c in 0..CONNECTIONS {
                let name = http_get(frontend).with_context(|| format!("connection {c} to {frontend}"))?;
                *answers.entry(name).or_default() += 1;
            }
            Ok(answers)
        })?;
        let answers = answers.with_context(|| format!("{} agent log:\n{}", node.name, node.swarmlb_log()))?;
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        for (task, count) in &answers {
            let on = task_node.get(task).with_context(|| format!("answer from unknown task {task:?}: {answers:?}"))?;
            *by_node.entry(on.clone()).or_default() += count;
        }
        eprintln!(
            "{CONNECTIONS} connections entering {} ({frontend}): tasks {answers:?}, by node {by_node:?}",
            node.name
        );
        ensure!(
            by_node.keys().cloned().collect::<BTreeSet<_>>() == all_nodes,
            "connections entering {} did not reach tasks on every node: {by_node:?}",
            node.name
        );
    }

    for (i, node) in swarm.nodes.iter().enumerate() {
        let frontend = swarm.published(i, UDP_PORT);
        let answers = udp_spread(&swarm.client, frontend, UDP_REQUESTS)
            .with_context(|| format!("{} agent log:\n{}", node.name, node.swarmlb_log()))?;
        eprintln!("{UDP_REQUESTS} UDP requests entering {} ({frontend}): {answers:?}", node.name);
        ensure!(
            answers.keys().all(|task| task.starts_with(UDP_SERVICE)) && answers.values().sum::<usize>() == UDP_REQUESTS,
            "UDP requests entering {}: {answers:?}",
            node.name
        );
    }

    for node in &swarm.nodes {
        let status = node.swarmlb_status()?;
        let reasons = &status["reasons"];
        let to_backend = reasons["to_backend"].as_u64().unwrap_or(0);
        let to_client = reasons["to_client"].as_u64().unwrap_or(0);
        eprintln!("{}: to_backend {to_backend}, to_client {to_client}", node.name);
        // At least SYN, request and ACK of the close per connection each way.
        ensure!(
            to_backend >= 3 * CONNECTIONS as u64 && to_client >= 2 * CONNECTIONS as u64,
            "{}: XDP forwarded too little: {reasons}",
            node.name
        );
    }
    vips_reach_tasks_on_every_node(&swarm)?;
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}

const VIP_NET: &str = "slbd-app";
const VIP_SERVICE: &str = "slbd-api";
const CALLER: &str = "slbd-caller";
const VIP_TASKS: usize = 6;
const VIP_CONNECTIONS: usize = 60;

/// A caller task on every node (one global service) calls a VIP service by name over an
/// attachable overlay: the callers on the manager and on the workers reach tasks on every node.
fn vips_reach_tasks_on_every_node(swarm: &DindSwarm) -> Result<()> {
    let manager = swarm.manager();
    manager.docker(&format!("network create --driver overlay --attachable --subnet 198.19.220.0/24 {VIP_NET}"))?;
    manager.docker(&format!(
        "service create --quiet --detach --name {VIP_SERVICE} --replicas {VIP_TASKS} --replicas-max-per-node 2 \
         --network {VIP_NET} --env 'SLB_TASK_NAME={{{{.Service.Name}}}}.{{{{.Task.Slot}}}}' slb-testsrv:latest 2>/dev/null"
    ))?;
    manager.docker(&format!(
        "service create --quiet --detach --name {CALLER} --mode global --network {VIP_NET} \
         --env 'SLB_TASK_NAME={CALLER}' slb-testsrv:latest 2>/dev/null"
    ))?;
    let vip_service = format!("{VIP_SERVICE}@{VIP_NET}");
    for node in &swarm.nodes {
        wait_for(
            &format!("{}'s agent to balance its caller over {VIP_TASKS} tasks", node.name),
            Duration::from_secs(90),
            || {
                let status = match node.swarmlb_status() {
                    Ok(status) => status,
                    Err(e) => return Ok(Seen::NotYet(format!("{e:#}"))),
                };
                let tasks = status["services"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["name"] == vip_service.as_str()))
                    .and_then(|s| s["backends"].as_array())
                    .map_or(0, |b| b.iter().filter(|b| b["weight"].as_u64() == Some(1)).count());
                let sock = &status["socket_lb"];
                let caller_registered = sock["members"].to_string().contains(CALLER)
                    && sock["registered"].as_u64() == sock["members"].as_array().map(|m| m.len() as u64);
                Ok(Seen::when(tasks == VIP_TASKS && caller_registered, format!("{tasks} tasks; {sock}")))
            },
        )
        .with_context(|| format!("{} agent log:\n{}", node.name, node.swarmlb_log()))?;
    }
    let task_node: BTreeMap<String, String> = swarm.task_nodes(VIP_SERVICE)?.into_iter().collect();
    for node in &swarm.nodes {
        let caller = node.docker(&format!("ps -q --filter label=com.docker.swarm.service.name={CALLER}"))?;
        let out = node
            .docker(&format!("exec {} /slb-testsrv client tcp {VIP_SERVICE}:8080 {VIP_CONNECTIONS}", caller.trim()))?;
        let out = tests::sock_client::Output::parse(&out);
        ensure!(
            out.errors.is_empty() && out.answers.len() == VIP_CONNECTIONS,
            "{}'s caller: {:?}",
            node.name,
            out.errors
        );
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        for (task, count) in out.spread() {
            let on = task_node.get(&task).with_context(|| format!("answer from unknown task {task:?}"))?;
            *by_node.entry(on.clone()).or_default() += count;
        }
        eprintln!(
            "{VIP_CONNECTIONS} connections from {}'s caller to {VIP_SERVICE}:8080: by node {by_node:?}",
            node.name
        );
        ensure!(
            by_node.len() == swarm.nodes.len(),
            "{}'s caller did not reach tasks on every node: {by_node:?}",
            node.name
        );
        let udp =
            node.docker(&format!("exec {} /slb-testsrv client udp-unconnected {VIP_SERVICE}:5353 5", caller.trim()))?;
        let udp = tests::sock_client::Output::parse(&udp);
        ensure!(udp.errors.is_empty() && udp.answers.len() == 5, "{}'s caller over UDP: {:?}", node.name, udp.errors);
    }
    // All agents share the kernel here, each program attached at the same cgroup root: a caller
    // another node's agent has not registered looks unregistered to it, so the first program to
    // run may balance it (with the same swarm, to the same tasks).
    let mut balanced = 0;
    for node in &swarm.nodes {
        let events = &node.swarmlb_status()?["socket_lb"]["events"];
        eprintln!("{}: socket LB events {events}", node.name);
        balanced += events["balanced"].as_u64().unwrap_or(0);
    }
    ensure!(
        balanced >= (swarm.nodes.len() * VIP_CONNECTIONS) as u64,
        "the agents balanced only {balanced} connections"
    );
    Ok(())
}
