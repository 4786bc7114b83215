//! `cargo xtask demo`: a client, a load-balancer node running swarmlb and three backends, all in
//! namespaces; bounded traffic through swarmlb, then the same traffic through iptables DNAT on
//! the same node for comparison. Tears everything down unless `--keep`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tests::{
    agent::{self, Agent},
    client::{http_get, udp_ask},
    netns::sh,
    topology::{self, BACKEND_TCP_PORT, LB_BACK_ADDR, LB_FRONT_ADDR, SingleNode, backend_addr},
};

const CONNECTIONS: usize = 300;
const DATAGRAMS: usize = 60;

struct Run {
    answers: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
    failures: usize,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
    }
}

fn http_run(topo: &SingleNode, frontend: SocketAddr) -> Result<Run> {
    topo.client.run(move || {
        let mut run = Run { answers: BTreeMap::new(), latencies: Vec::new(), failures: 0 };
        for _ in 0..CONNECTIONS {
            let started = Instant::now();
            match http_get(frontend) {
                Ok(name) => {
                    run.latencies.push(started.elapsed());
                    *run.answers.entry(name).or_default() += 1;
                }
                Err(_) => run.failures += 1,
            }
        }
        run
    })
}

fn print_distribution(title: &str, run: &Run) {
    println!("\n{title}");
    println!("  {:<12} {:>6} {:>7}", "backend", "conns", "share");
    for (name, count) in &run.answers {
        println!("  {:<12} {:>6} {:>6.1}%", name, count, 100.0 * *count as f64 / CONNECTIONS as f64);
    }
    println!(
        "  failed: {}   connect+request+answer: median {:?}, p90 {:?}",
        run.failures,
        run.percentile(0.5),
        run.percentile(0.9)
    );
}

/// Round-robin DNAT to the same backends plus SNAT to the same node address: what a hand-rolled
/// kernel load balancer without IPVS looks like.
fn install_iptables(topo: &SingleNode, backends: usize) -> Result<()> {
    for i in 0..backends {
        let every = backends - i;
        topo.lb.exec(&format!(
            "iptables -t nat -A PREROUTING -d {LB_FRONT_ADDR} -p tcp --dport 80 -m statistic --mode nth \
             --every {every} --packet 0 -j DNAT --to-destination {}:{BACKEND_TCP_PORT}",
            backend_addr(i)
        ))?;
    }
    topo.lb.exec(&format!("iptables -t nat -A POSTROUTING -o back -j SNAT --to-source {LB_BACK_ADDR}"))?;
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

    println!("building namespaces: client, load-balancer node (XDP on front+back), 3 backends");
    let topo = SingleNode::new(3)?;
    let config = std::env::temp_dir().join(format!("{}.toml", topo.lb.name));
    std::fs::write(&config, topology::config(&[0, 1, 2]))?;
    agent::unload()?;
    let agent = Agent::start(&topo.lb, &["front", "back"], config.to_str().context("path")?, 2)?;

    let through_swarmlb = http_run(&topo, topo.frontend(80))?;
    let frontend = topo.frontend(53);
    let udp = topo.client.run(move || {
        (0..DATAGRAMS).filter(|i| udp_ask(frontend, &format!("q{i}")).is_ok()).count()
    })?;
    print_distribution(&format!("{CONNECTIONS} TCP connections to {LB_FRONT_ADDR}:80 through swarmlb (XDP)"), &through_swarmlb);
    println!("  UDP {LB_FRONT_ADDR}:53: {udp}/{DATAGRAMS} answered");
    println!("\nswarmlb status (what the datapath counted):");
    print!("{}", sh(&format!("{} status", agent::swarmlb_binary()?.display()))?);

    if keep {
        println!("\nleft running. Try:");
        println!("  ip netns exec {} curl -s http://{LB_FRONT_ADDR}/", topo.client.name);
        println!("  bpftool map dump name slb_conntrack | head -40");
        println!("  {} status", agent::swarmlb_binary()?.display());
        println!("Ctrl-C tears it all down.");
        wait_for_signal()?;
    }

    drop(agent);
    agent::unload()?;
    install_iptables(&topo, 3)?;
    let through_iptables = http_run(&topo, topo.frontend(80))?;
    print_distribution("the same connections through iptables DNAT+SNAT (no XDP), for comparison", &through_iptables);
    println!("\ntearing down");
    Ok(())
}
