//! Service VIPs and published ports from inside, on this machine's real Engine (no IPVS here,
//! so without swarmlb Docker's VIPs are dead): swarmlb deployed as the README says, containers
//! calling a service by name, the node itself and a bridge container calling a published port.
//! Needs root and a running Engine; every address Docker hands out here is inside
//! 198.18.0.0/15.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, ensure};
use lb_common::maps::SOCK_PROGS;
use tests::{
    agent::{Placement, status_at, unload_at},
    cmd::{docker, sh},
    docker::{
        DockerSwarm, HOST_ADDR, HOST_IFACE, HostClient, Stack, create_network, create_service, exec_client, run_client,
        run_container, wait_running,
    },
    netns::sibling_binary,
    poll::{Seen, wait_for},
    sock_client::Output,
};

const NET: &str = "slbt-vipnet";
const API: &str = "slbt-api";
const PUBLISHED: u16 = 18070;

/// The VIP Docker gave `service` on network `net`.
fn vip_of(service: &str, net: &str) -> Result<String> {
    let net_id = docker(&format!("network inspect {net} --format '{{{{.Id}}}}'"))?;
    let vips = docker(&format!(
        "service inspect {service} --format '{{{{range .Endpoint.VirtualIPs}}}}{{{{.NetworkID}}}} {{{{.Addr}}}} {{{{end}}}}'"
    ))?;
    let words: Vec<&str> = vips.split_whitespace().collect();
    let addr = words.chunks(2).find(|p| p[0] == net_id).map(|p| p[1]).context("no VIP on the network")?;
    Ok(addr.split('/').next().unwrap_or_default().to_owned())
}

/// Waits until the agent pinned at `placement` serves `name` with `count` backends of weight >
/// 0, and has registered every namespace it was given.
fn wait_served(placement: &Placement, name: &str, count: usize) -> Result<()> {
    wait_for(&format!("the agent to serve {name} with {count} tasks"), Duration::from_secs(60), || {
        let status = match status_at(placement) {
            Ok(s) => s,
            Err(e) => return Ok(Seen::NotYet(format!("{e:#}"))),
        };
        let services = status["services"].as_array().cloned().unwrap_or_default();
        let active = services.iter().find(|s| s["name"] == name).map_or(0, |s| {
            s["backends"].as_array().map_or(0, |b| b.iter().filter(|b| b["weight"].as_u64() > Some(0)).count())
        });
        let sock = &status["socket_lb"];
        let members = sock["members"].as_array().map_or(0, Vec::len) as u64;
        let registered = sock["registered"].as_u64() == Some(members);
        Ok(Seen::when(active == count && registered, format!("{active} active; socket LB {sock}")))
    })
}

/// Runs `slb-testsrv client` on the node itself (the host's namespace, under the cgroup root).
fn host_client(mode: &str, target: &str, count: usize) -> Result<Output> {
    let out = std::process::Command::new(sibling_binary("slb-testsrv")?)
        .args(["client", mode, target, &count.to_string()])
        .output()?;
    ensure!(out.status.success(), "host client: {}", String::from_utf8_lossy(&out.stderr));
    Ok(Output::parse(&String::from_utf8_lossy(&out.stdout)))
}

fn ensure_spread(out: &Output, what: &str, count: usize, tasks: usize, peer: &str) -> Result<BTreeMap<String, usize>> {
    ensure!(out.errors.is_empty() && out.answers.len() == count, "{what}: {:?}", out.errors);
    let spread = out.spread();
    eprintln!("{what}: {spread:?}");
    ensure!(spread.len() == tasks, "{what}: not spread over the {tasks} tasks: {spread:?}");
    ensure!(out.all_from(peer), "{what}: the peer is not {peer}: {:?}", &out.answers[..3.min(out.answers.len())]);
    Ok(spread)
}

#[test]
fn containers_reach_services_by_name_and_the_node_reaches_published_ports() -> Result<()> {
    let _swarm = DockerSwarm::ensure()?;
    let _client = HostClient::new()?;
    let _net = create_network(NET, "--driver overlay --attachable --subnet 198.19.210.0/24")?;
    let _bridge = create_network("slbt-bridge", "--driver bridge --subnet 198.18.230.0/24")?;
    let _api = create_service(API, &format!("--replicas 3 --network {NET}"))?;
    let _web = create_service("slbt-vipweb", &format!("--replicas 2 --publish published={PUBLISHED},target=8080"))?;
    wait_running(API, 3)?;
    wait_running("slbt-vipweb", 2)?;
    let _caller = run_container("slbt-caller", &format!("--network {NET}"))?;
    let _bridged = run_container("slbt-bridged", "--network slbt-bridge")?;
    let vip = vip_of(API, NET)?;

    let default = Placement::default();
    unload_at(&default)?;
    let stack_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/swarmlb.yml");
    let stack = Stack::deploy(&stack_file, "slbt-lbvip", &[("SWARMLB_IFACE", HOST_IFACE)])?;
    let result = (|| -> Result<()> {
        let vip_name = format!("{API}@{NET}");
        wait_served(&default, &vip_name, 3)?;
        wait_served(&default, "slbt-vipweb", 2)?;
        let status = status_at(&default)?;
        let members = &status["socket_lb"]["members"];
        ensure!(members.to_string().contains("slbt-caller"), "the caller is no member: {members}");

        // By name from a container on the network: new connections, then one long-lived one.
        let by_name = format!("{API}:8080");
        let out = exec_client("slbt-caller", "tcp", &by_name, 300)?;
        let spread = ensure_spread(&out, "300 connections to slbt-api:8080", 300, 3, &format!("{vip}:8080"))?;
        ensure!(spread.values().all(|n| *n >= 50), "uneven: {spread:?}");
        let out = exec_client("slbt-caller", "echo", &by_name, 50)?;
        ensure!(out.errors.is_empty() && out.spread().len() == 1, "the long-lived connection: {out:?}");
        // A container that calls the service the moment it starts, before the agent has heard of
        // it (recognised by its cgroup until it is registered).
        for round in 0..5 {
            let out = run_client(&format!("--network {NET}"), "tcp", &by_name, 1)?;
            ensure!(
                out.errors.is_empty() && out.all_from(&format!("{vip}:8080")),
                "new container, round {round}: {out:?}"
            );
        }
        for mode in ["udp", "udp-unconnected"] {
            let out = exec_client("slbt-caller", mode, &format!("{API}:5353"), 10)?;
            ensure!(out.errors.is_empty() && out.answers.len() == 10, "{mode} by name: {:?}", out.errors);
            ensure!(out.all_from(&format!("{vip}:5353")), "{mode}: replies not from the VIP: {:?}", out.answers);
        }

        // Scale, then a rolling update: once converged, every request is answered by the new set.
        docker(&format!("service scale --detach {API}=5"))?;
        wait_running(API, 5)?;
        wait_served(&default, &vip_name, 5)?;
        ensure_spread(
            &exec_client("slbt-caller", "tcp", &by_name, 100)?,
            "after scaling to 5",
            100,
            5,
            &format!("{vip}:8080"),
        )?;
        // Requests run all through the update (reported: a connection a stopping task took may
        // be cut when it exits); after convergence none may fail.
        let updating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let looping = {
            let (updating, by_name) = (updating.clone(), by_name.clone());
            std::thread::spawn(move || {
                let (mut sent, mut failed) = (0, 0);
                for _ in 0..200 {
                    if !updating.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let out = exec_client("slbt-caller", "tcp", &by_name, 20).unwrap_or_default();
                    sent += 20;
                    failed += 20 - out.answers.len();
                }
                (sent, failed)
            })
        };
        docker(&format!("service update --detach --update-delay 0s --update-parallelism 2 --env-add ROLLED=1 {API}"))?;
        let converged = wait_for("the rolling update to converge", Duration::from_secs(120), || {
            let state = docker(&format!("service inspect {API} --format '{{{{.UpdateStatus.State}}}}'"))?;
            Ok(Seen::when(state == "completed", state))
        });
        updating.store(false, std::sync::atomic::Ordering::Relaxed);
        let (sent, failed) = looping.join().map_err(|_| anyhow::anyhow!("the request loop panicked"))?;
        eprintln!("during the rolling update: {failed} of {sent} requests failed");
        converged?;
        wait_running(API, 5)?;
        wait_served(&default, &vip_name, 5)?;
        ensure_spread(
            &exec_client("slbt-caller", "tcp", &by_name, 100)?,
            "after the rolling update",
            100,
            5,
            &format!("{vip}:8080"),
        )?;

        // A published port from the node itself, from a bridge container and from a container on
        // an overlay (both leave through the host, which forwards and masquerades them).
        let loopback = format!("127.0.0.1:{PUBLISHED}");
        ensure_spread(
            &host_client("tcp", &loopback, 40)?,
            "40 connections to 127.0.0.1 from the node",
            40,
            2,
            &loopback,
        )?;
        let node_addr = format!("{HOST_ADDR}:{PUBLISHED}");
        ensure_spread(
            &host_client("tcp", &node_addr, 40)?,
            "40 connections to the node address from the node",
            40,
            2,
            &node_addr,
        )?;
        let out = exec_client("slbt-bridged", "tcp", &node_addr, 40)?;
        ensure_spread(&out, "40 connections to the node address from a bridge container", 40, 2, &node_addr)?;
        let out = exec_client("slbt-caller", "tcp", &node_addr, 40)?;
        ensure_spread(&out, "40 connections to the node address from an overlay container", 40, 2, &node_addr)?;
        let events = &status_at(&default)?["socket_lb"]["events"];
        ensure!(events["balanced"].as_u64().unwrap_or(0) >= 300 + 200 + 160, "balanced: {events}");
        ensure!(events["unregistered_container"].as_u64().unwrap_or(0) >= 5, "unregistered: {events}");
        Ok(())
    })()
    .with_context(|| format!("swarmlb service logs:\n{}", stack.logs("swarmlb")));
    let links: Vec<String> = SOCK_PROGS
        .iter()
        .filter_map(|(_, hook)| sh(&format!("bpftool link show pinned /sys/fs/bpf/swarmlb/link_cgroup:{hook}")).ok())
        .collect();
    drop(stack);
    unload_at(&default)?;
    result?;
    // Unload leaves none of the agent's socket links in the kernel.
    ensure!(links.len() == SOCK_PROGS.len(), "the agent pinned {} socket links: {links:?}", links.len());
    let left = sh("bpftool link show")?;
    for link in &links {
        let id = link.split(':').next().unwrap_or_default().trim();
        let still = left.lines().any(|l| l.split(':').next().map(str::trim) == Some(id));
        ensure!(!still, "socket link {id} is still in the kernel after unload:\n{left}");
    }
    Ok(())
}
