//! `cargo xtask demo`: a three-node virtual swarm in namespaces (VXLAN overlays, tasks on every
//! node, a client on the underlay), swarmlb on every node; bounded traffic to every node's
//! published ports, then the same traffic through iptables DNAT on the same nodes for
//! comparison. Tears everything down unless `--keep`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tests::{
    agent,
    client::{http_get, udp_ask},
    swarm::{Network, Swarm, node_addr},
    swarm_config::{ServiceSpec, node_name},
    swarm_lb::SwarmLb,
};

const CONNECTIONS_PER_NODE: usize = 200;
const DATAGRAMS_PER_NODE: usize = 30;
const WEB_PORT: u16 = 80;
const DNS_PORT: u16 = 53;

/// Where each connection went (task × entry node), and how long each took.
#[derive(Default)]
struct Traffic {
    answers: BTreeMap<String, [usize; 3]>,
    latencies: Vec<Duration>,
    failures: usize,
}

impl Traffic {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
    }
}

fn send_http(swarm: &Swarm) -> Result<Traffic> {
    let mut traffic = Traffic::default();
    for node in 0..3 {
        let frontend = SocketAddr::from((node_addr(node), WEB_PORT));
        let (answers, latencies, failures) = swarm.clients[0].run(move || {
            let (mut answers, mut latencies, mut failures) = (Vec::new(), Vec::new(), 0);
            for _ in 0..CONNECTIONS_PER_NODE {
                let started = Instant::now();
                match http_get(frontend) {
                    Ok(name) => {
                        latencies.push(started.elapsed());
                        answers.push(name);
                    }
                    Err(_) => failures += 1,
                }
            }
            (answers, latencies, failures)
        })?;
        for name in answers {
            traffic.answers.entry(name).or_default()[node] += 1;
        }
        traffic.latencies.extend(latencies);
        traffic.failures += failures;
    }
    Ok(traffic)
}

fn print_traffic(title: &str, swarm: &Swarm, traffic: &Traffic) {
    println!("\n{title}");
    println!(
        "  {:<8} {:<8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "task", "on", "via n1", "via n2", "via n3", "total", "share"
    );
    let all: usize = traffic.answers.values().flatten().sum();
    for (name, per_node) in &traffic.answers {
        let on = swarm.task(name).map(|t| node_name(t.node)).unwrap_or_default();
        let total: usize = per_node.iter().sum();
        println!(
            "  {:<8} {:<8} {:>8} {:>8} {:>8} {:>7} {:>6.1}%",
            name,
            on,
            per_node[0],
            per_node[1],
            per_node[2],
            total,
            100.0 * total as f64 / all.max(1) as f64
        );
    }
    println!(
        "  failed: {}   connect+request+answer: median {:?}, p90 {:?}",
        traffic.failures,
        traffic.percentile(0.5),
        traffic.percentile(0.9)
    );
}

fn print_node_counters(lb: &SwarmLb) -> Result<()> {
    println!("\nper-node datapath counters (swarmlb status --json)");
    println!(
        "  {:<8} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9} {:>10}",
        "node", "new flows", "to task", "to client", "to kernel", "resolver", "vxlan", "conntrack"
    );
    for node in 0..3 {
        let status = lb.status(node)?;
        let reason = |name: &str| status["reasons"][name].as_u64().unwrap_or(0);
        let flows: u64 =
            status["services"].as_array().context("services")?.iter().filter_map(|s| s["new_flows"].as_u64()).sum();
        println!(
            "  {:<8} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9} {:>10}",
            node_name(node),
            flows,
            reason("to_backend"),
            reason("to_client"),
            reason("translated_to_kernel"),
            reason("to_neigh_resolver"),
            reason("pass_vxlan"),
            status["conntrack_entries"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

/// What a node does without IPVS and without swarmlb: round-robin DNAT to the web tasks and
/// SNAT to the node's own overlay endpoint, in iptables.
fn install_iptables(swarm: &Swarm) -> Result<()> {
    let tasks: Vec<_> = swarm.tasks.iter().filter(|t| t.name.starts_with("web.")).collect();
    for (node, ns) in swarm.nodes.iter().enumerate() {
        for (i, task) in tasks.iter().enumerate() {
            ns.exec(&format!(
                "iptables -t nat -A PREROUTING -d {} -p tcp --dport {WEB_PORT} -m statistic --mode nth \
                 --every {} --packet 0 -j DNAT --to-destination {}:8080",
                node_addr(node),
                tasks.len() - i,
                task.ip
            ))?;
        }
        ns.exec(&format!("iptables -t nat -A POSTROUTING -o lb-{} -j MASQUERADE", swarm.networks[0].vni))?;
    }
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    signals.wait()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let keep = args.iter().any(|a| a == "--keep");
    if let Some(i) = args.iter().position(|a| a == "--swarmlb") {
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("SWARMLB_BIN", args.get(i + 1).context("--swarmlb PATH")?) };
    }

    println!("building a 3-node virtual swarm: underlay bridge, VXLAN overlays web-net (4097) and dns-net (4098),");
    println!("6 web tasks and 3 dns tasks spread over the nodes, one client on the underlay");
    let mut swarm = Swarm::new(
        3,
        1,
        vec![
            Network { name: "web-net".into(), vni: 4097, subnet: 1 },
            Network { name: "dns-net".into(), vni: 4098, subnet: 2 },
        ],
    )?;
    for task in 0..6 {
        swarm.add_task(&format!("web.{}", task + 1), task % 3, 0)?;
    }
    for task in 0..3 {
        swarm.add_task(&format!("dns.{}", task + 1), task, 1)?;
    }
    let services = vec![
        ServiceSpec { name: "web".into(), network: 0, frontends: vec![format!("*:{WEB_PORT}/tcp")], target_port: 8080 },
        ServiceSpec { name: "dns".into(), network: 1, frontends: vec![format!("*:{DNS_PORT}/udp")], target_port: 5353 },
    ];
    println!("starting swarmlb on every node (XDP on eth0, lb-4097, lb-4098)");
    let lb = SwarmLb::start(swarm, services)?;

    let traffic = send_http(&lb.swarm)?;
    print_traffic(
        &format!("{} TCP connections to port {WEB_PORT} of each node, through swarmlb", CONNECTIONS_PER_NODE),
        &lb.swarm,
        &traffic,
    );
    let mut udp = 0;
    for node in 0..3 {
        let frontend = SocketAddr::from((node_addr(node), DNS_PORT));
        udp += lb.swarm.clients[0]
            .run(move || (0..DATAGRAMS_PER_NODE).filter(|i| udp_ask(frontend, &format!("q{i}")).is_ok()).count())?;
    }
    println!("  UDP port {DNS_PORT} of each node: {udp}/{} answered", 3 * DATAGRAMS_PER_NODE);
    print_node_counters(&lb)?;

    if keep {
        println!("\nleft running. Try:");
        println!("  ip netns exec {} curl -s http://{}:{WEB_PORT}/", lb.swarm.clients[0].name, node_addr(1));
        println!("  bpftool map dump pinned {}/slb_conntrack | head -40", lb.pin_dir(0));
        println!("  {} status --pin-dir {}", agent::swarmlb_binary()?.display(), lb.pin_dir(0));
        println!("Ctrl-C tears it all down.");
        wait_for_signal()?;
    }

    let swarm = lb.into_swarm();
    install_iptables(&swarm)?;
    let traffic = send_http(&swarm)?;
    print_traffic(
        "the same connections through iptables DNAT+SNAT on each node (no XDP), for comparison",
        &swarm,
        &traffic,
    );
    println!("\ntearing down");
    Ok(())
}
