//! Socket load balancing in namespaces: the real agent attaches its socket programs to a cgroup
//! of the test's own, and `slb-testsrv client`s run in that cgroup, in a member namespace (the
//! client, attached to overlay `appnet`; the load-balancer node, the node's own namespace) or
//! in one that is not. A VIP nobody owns (ARP for it goes unanswered, as for Docker's VIPs
//! without IPVS) reaches the backends only through the socket programs. Needs root.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result, ensure};
use lb_common::maps::SOCK_PROGS;
use tests::{
    agent::{self, Agent, Placement},
    cgroup::TestCgroup,
    netns::{Netns, sibling_binary},
    sock_client::Output,
    topology::{BACKEND_TCP_PORT, BACKEND_UDP_PORT, LB_BACK_ADDR, SingleNode, backend_addr, backend_name},
};

/// Owned by nobody, in the backends' subnet.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 200);
/// A published port (any local address of the node).
const PUBLISHED: u16 = 8080;

fn config(topo: &SingleNode, backends: usize) -> String {
    let mut toml = format!(
        "[node]\nnat_addr = \"{LB_BACK_ADDR}\"\n\n[[network]]\nname = \"appnet\"\nvni = 4242\nsubnet = \"198.18.1.0/24\"\n\n\
         [[service]]\nname = \"api\"\nnetwork = \"appnet\"\nvip = \"{VIP}\"\n"
    );
    for i in 0..backends {
        toml += &format!("[[service.backend]]\nname = \"{}\"\naddr = \"{}\"\n", backend_name(i), backend_addr(i));
    }
    toml += &format!("\n[[service]]\nname = \"web\"\nfrontends = [\"*:{PUBLISHED}/tcp\"]\n");
    for i in 0..backends {
        toml += &format!(
            "[[service.backend]]\nname = \"{}\"\naddr = \"{}:{BACKEND_TCP_PORT}\"\n",
            backend_name(i),
            backend_addr(i)
        );
    }
    toml += &format!(
        "\n[[member]]\nname = \"client\"\nnetns = \"/var/run/netns/{}\"\nnetworks = [\"appnet\"]\nnode = true\n\n\
         [[member]]\nname = \"node\"\nnetns = \"/var/run/netns/{}\"\nnode = true\nhost = true\n",
        topo.client.name, topo.lb.name
    );
    toml
}

/// Runs `slb-testsrv client MODE TARGET COUNT` in the cgroup, in `ns`.
fn client(cg: &TestCgroup, ns: &Netns, mode: &str, target: &str, count: usize) -> Result<Output> {
    let out = cg.run_in(ns, &sibling_binary("slb-testsrv")?, &["client", mode, target, &count.to_string()])?;
    ensure!(out.status.success(), "client {mode} {target}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(Output::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// The ids of the swarmlb programs attached to the cgroup.
fn attached_ids(cg: &TestCgroup) -> Result<Vec<String>> {
    let text = cg.attached()?;
    Ok(text
        .lines()
        .filter(|l| l.contains("swarmlb"))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

fn sock_events(agent: &Agent) -> Result<serde_json::Value> {
    Ok(agent.status()?["socket_lb"]["events"].clone())
}

#[test]
fn vips_and_published_ports_are_balanced_where_sockets_connect_and_nowhere_else() -> Result<()> {
    let topo = SingleNode::new(3)?;
    let cg = TestCgroup::new()?;
    let config_path: PathBuf = std::env::temp_dir().join(format!("{}-sock.toml", topo.lb.name));
    std::fs::write(&config_path, config(&topo, 3))?;
    let placement = Placement {
        pin_dir: Some(format!("/sys/fs/bpf/{}-sock", topo.lb.name)),
        cgroup: Some(cg.path_str().to_owned()),
        ..Placement::default()
    };
    agent::unload_at(&placement)?;
    let config = config_path.to_str().context("path")?;
    let mut agent = Agent::start_placed(&topo.lb, &placement, &["front", "back"], config, 2)?;
    let vip_tcp = format!("{VIP}:{BACKEND_TCP_PORT}");
    let result = (|| -> Result<()> {
        let attached = cg.attached()?;
        for (program, _) in SOCK_PROGS {
            ensure!(attached.contains(program), "{program} is not attached to the test cgroup: {attached}");
        }

        // TCP to the VIP, new connections: spread over the tasks, the peer is the VIP.
        let out = client(&cg, &topo.client, "tcp", &vip_tcp, 60)?;
        ensure!(out.errors.is_empty() && out.answers.len() == 60, "VIP connections failed: {:?}", out.errors);
        let counts = out.spread();
        eprintln!("60 connections to {vip_tcp}: {counts:?}");
        ensure!(counts.len() == 3 && counts.values().all(|n| *n >= 5), "not spread over the 3 tasks: {counts:?}");
        ensure!(out.all_from(&vip_tcp), "getpeername did not show the VIP: {:?}", out.answers);

        // UDP to another port of the same VIP: one socket keeps its task, the source is the VIP.
        let vip_udp = format!("{VIP}:{BACKEND_UDP_PORT}");
        for mode in ["udp", "udp-unconnected"] {
            let out = client(&cg, &topo.client, mode, &vip_udp, 10)?;
            ensure!(out.errors.is_empty() && out.answers.len() == 10, "{mode} to the VIP failed: {:?}", out.errors);
            ensure!(out.spread().len() == 1, "{mode}: one socket's datagrams went to several tasks: {:?}", out.answers);
            ensure!(out.all_from(&vip_udp), "{mode}: replies did not come from the VIP: {:?}", out.answers);
        }
        let mut sockets = BTreeMap::new();
        for _ in 0..12 {
            for (backend, n) in client(&cg, &topo.client, "udp-unconnected", &vip_udp, 1)?.spread() {
                *sockets.entry(backend).or_insert(0) += n;
            }
        }
        ensure!(sockets.len() >= 2, "12 UDP sockets all went to one task: {sockets:?}");

        // A task's own address is left alone.
        let direct = format!("{}:{BACKEND_TCP_PORT}", backend_addr(1));
        let out = client(&cg, &topo.client, "tcp", &direct, 3)?;
        ensure!(out.errors.is_empty(), "direct connections failed: {:?}", out.errors);
        ensure!(
            out.all_from(&direct) && out.spread().keys().eq([&backend_name(1)]),
            "a connection to a task's own address was moved: {:?}",
            out.answers
        );

        // The node's own namespace reaches a published port at 127.0.0.1, spread over the tasks.
        let loopback = format!("127.0.0.1:{PUBLISHED}");
        let out = client(&cg, &topo.lb, "tcp", &loopback, 30)?;
        ensure!(out.errors.is_empty() && out.answers.len() == 30, "published port from the node: {:?}", out.errors);
        let counts = out.spread();
        eprintln!("30 connections to {loopback} from the node: {counts:?}");
        ensure!(counts.len() >= 2, "published port from the node not spread: {counts:?}");
        ensure!(out.all_from(&loopback), "getpeername did not show {loopback}: {:?}", out.answers);

        // The node's namespace is not attached to appnet: its VIP stays dead there, as does the
        // VIP from a namespace that is no member at all.
        let before = sock_events(&agent)?["not_member"].as_u64().unwrap_or(0);
        let out = client(&cg, &topo.lb, "tcp", &vip_tcp, 1)?;
        ensure!(out.answers.is_empty(), "a namespace not on appnet reached its VIP: {:?}", out.answers);
        let events = sock_events(&agent)?;
        ensure!(events["not_member"].as_u64().unwrap_or(0) > before, "not counted as not_member: {events}");
        let outsider = topo.backends[0].as_ref().context("backend 0")?;
        let out = client(&cg, outsider, "tcp", &vip_tcp, 1)?;
        ensure!(out.answers.is_empty(), "a namespace that is no member reached the VIP: {:?}", out.answers);
        ensure!(events["balanced"].as_u64().unwrap_or(0) >= 60 + 2 + 12 + 30, "balanced count: {events}");

        // A restart puts the new programs in place of the old ones: four attached, none kept.
        let before = attached_ids(&cg)?;
        agent.stop()?;
        agent = Agent::start_placed(&topo.lb, &placement, &["front", "back"], config, 2)?;
        let after = attached_ids(&cg)?;
        ensure!(after.len() == 4 && after.iter().all(|id| !before.contains(id)), "{before:?} then {after:?}");
        let out = client(&cg, &topo.client, "tcp", &vip_tcp, 10)?;
        ensure!(out.errors.is_empty() && out.all_from(&vip_tcp), "VIP after a restart: {out:?}");

        // Unload: nothing stays attached, and the VIP is dead again.
        agent::unload_at(&placement)?;
        let attached = cg.attached()?;
        ensure!(!attached.contains("swarmlb"), "programs left on the cgroup after unload: {attached}");
        let out = client(&cg, &topo.client, "tcp", &vip_tcp, 1)?;
        ensure!(out.answers.is_empty(), "the VIP still answered after unload: {:?}", out.answers);
        Ok(())
    })();
    let diagnosis = agent.diagnosis();
    drop(agent);
    agent::unload_at(&placement)?;
    result.with_context(|| diagnosis)
}
