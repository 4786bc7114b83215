//! Namespace tests of the connection tables under load, with the real `swarmlb run` and real TCP
//! servers: connection churn (a new connection per request, 100,000 of them), a flood of a
//! million spoofed SYNs injected into the live datapath while connections are held open and
//! real clients keep connecting, and path-MTU discovery through the node. Needs root; the
//! pinned datapath is node-wide, so these tests run one at a time.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use lb_common::maps::{NEW_FLOWS_SIZE, PIN_DIR};
use serde_json::Value;
use tests::{
    agent::{self, Agent},
    client::{EchoConn, http_spread},
    frames::{SYN, Spec},
    load,
    testrun::{Datapath, XDP_REDIRECT},
    topology::{BACKEND_TCP_PORT, LB_BACK_ADDR, LB_FRONT_ADDR, SingleNode, backend_addr},
};

static NODE: Mutex<()> = Mutex::new(());

/// One service `web` on LB_FRONT_ADDR:80 with one task. The NAT address is the node's backend
/// side, which no local socket of the load-balancer namespace uses, so the whole unprivileged
/// range is safe there (as on an overlay endpoint) and every client port can be kept.
fn one_task_config(topo: &SingleNode) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name));
    let text = format!(
        "[node]\nnat_addr = \"{LB_BACK_ADDR}\"\nsnat_ports = \"1024-65535\"\n\n\
         [[service]]\nname = \"web\"\nfrontends = [\"{LB_FRONT_ADDR}:80/tcp\"]\n\
         [[service.backend]]\nname = \"task-1\"\naddr = \"{}:{BACKEND_TCP_PORT}\"\n",
        backend_addr(0)
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start(topo: &SingleNode, config: &Path) -> Result<Agent> {
    agent::unload()?;
    Agent::start(&topo.lb, &["front", "back"], config.to_str().context("path")?, 1)
}

fn reason(status: &Value, name: &str) -> u64 {
    status["reasons"][name].as_u64().unwrap_or(0)
}

fn event(status: &Value, name: &str) -> u64 {
    status["events"][name].as_u64().unwrap_or(0)
}

#[test]
fn a_hundred_thousand_new_connections_in_a_row_are_all_answered() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(1)?;
    let config = one_task_config(&topo)?;
    let agent = start(&topo, &config)?;

    const CONNECTIONS: u64 = 100_000;
    let run = load::churn(&topo.client, topo.frontend(80), 2, CONNECTIONS, Duration::from_secs(600))?;
    let status = agent.status()?;
    eprintln!(
        "churn: {} ok, {} failed in {:.1}s ({:.0}/s; first 10 s {:.0}/s, last 10 s {:.0}/s); events {}; reasons {}",
        run.ok,
        run.failed,
        run.elapsed.as_secs_f64(),
        run.rate(),
        run.window_rate(0, 10),
        run.window_rate(run.per_second.len().saturating_sub(11), run.per_second.len().saturating_sub(1)),
        status["events"],
        status["reasons"]
    );
    ensure!(
        run.failed == 0 && run.ok == CONNECTIONS,
        "{} of {CONNECTIONS} answered; first failure: {:?}",
        run.ok,
        run.first_error
    );
    ensure!(reason(&status, "drop_ports_exhausted") == 0, "NAT ports ran out: {}", status["reasons"]);
    ensure!(event(&status, "port_preserved") > 0, "no client port was kept: {}", status["events"]);
    agent::unload()
}

/// A spoofed SYN from source number `n`, inside 198.19.128.0/17 (198.18.0.0/15, no test host).
fn spoofed_syn(n: u32) -> Vec<u8> {
    let src = [198, 19, 0x80 | (n >> 16) as u8 & 0x7f, (n >> 8) as u8, n as u8];
    let sport = 1024 + (n.wrapping_mul(7919) % 64000) as u16;
    Spec::tcp([src[0], src[1], src[2], src[3]], sport, LB_FRONT_ADDR.octets(), 80, SYN).build()
}

#[test]
fn a_million_spoofed_syns_leave_established_connections_and_new_clients_alone() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(1)?;
    let config = one_task_config(&topo)?;
    let agent = start(&topo, &config)?;
    let frontend = topo.frontend(80);

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(topo.client.run(move || EchoConn::open(frontend))??);
    }
    for conn in &mut held {
        conn.exchange("before the flood")?;
    }

    const SPOOFED: u32 = 1_000_000;
    let (flood, real) = thread::scope(|s| {
        let flood = s.spawn(|| -> Result<(u32, Duration)> {
            topo.lb.run(move || -> Result<(u32, Duration)> {
                let front = nix::net::if_::if_nametoindex("front").context("ifindex of front")?;
                let dp = Datapath::attach_pinned(Path::new(PIN_DIR))?;
                let started = Instant::now();
                let mut redirected = 0;
                for n in 0..SPOOFED {
                    if dp.run(&spoofed_syn(n), front)?.action == XDP_REDIRECT {
                        redirected += 1;
                    }
                    ensure!(started.elapsed() < Duration::from_secs(300), "flood still running after 300 s at SYN {n}");
                }
                Ok((redirected, started.elapsed()))
            })?
        });
        // Real clients connect throughout the flood (and a little after).
        let real = s.spawn(|| load::churn(&topo.client, frontend, 1, u64::MAX, Duration::from_secs(8)));
        (flood.join(), real.join())
    });
    let (redirected, flood_time) = flood.map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let real = real.map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    let status = agent.status()?;
    eprintln!(
        "flood: {SPOOFED} spoofed SYNs in {:.1}s, {redirected} sent on to the task; meanwhile real clients: {} ok, {} failed; \
         entries {} established, {} unconfirmed; events {}; reasons {}",
        flood_time.as_secs_f64(),
        real.ok,
        real.failed,
        status["conntrack_entries"],
        status["new_flow_entries"],
        status["events"],
        status["reasons"]
    );
    ensure!(redirected == SPOOFED, "only {redirected} of {SPOOFED} spoofed SYNs were balanced");
    ensure!(
        real.ok > 0 && real.failed == 0,
        "real clients during the flood: {} ok, {} failed ({:?})",
        real.ok,
        real.failed,
        real.first_error
    );
    let unconfirmed = status["new_flow_entries"].as_u64().unwrap_or(0);
    ensure!(unconfirmed <= u64::from(NEW_FLOWS_SIZE), "new-flow table past its size: {unconfirmed}");
    ensure!(
        unconfirmed >= u64::from(NEW_FLOWS_SIZE) * 9 / 10,
        "the flood did not fill the new-flow table: {unconfirmed}"
    );
    // Nothing spoofed ever reached the main table: it holds the held connections and the real
    // clients' (closing ones linger for their 10 s).
    let established = status["conntrack_entries"].as_u64().unwrap_or(0);
    ensure!(
        established <= 2 * (20 + real.ok),
        "{established} established entries for {} real connections",
        20 + real.ok
    );
    ensure!(reason(&status, "drop_ports_exhausted") == 0, "a SYN found the NAT range closed: {}", status["reasons"]);
    for conn in &mut held {
        conn.exchange("after the flood")?;
    }
    let answers = http_spread(&topo.client, frontend, 50)?;
    ensure!(answers.values().sum::<usize>() == 50, "new connections after the flood: {answers:?}");
    agent::unload()
}

#[test]
fn path_mtu_discovery_works_through_swarmlb() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(1)?;
    // The backend side is a 1000-byte link, but the task advertises a 1460-byte MSS (as a task
    // behind a tunnel may): the client's full-size segments do not fit past the node.
    topo.lb.exec("ip link set back mtu 1000")?;
    topo.switch.exec("ip link set uplink mtu 1000 && ip link set b1 mtu 1000")?;
    let task = topo.backends[0].as_ref().context("backend")?;
    let task_addr = backend_addr(0);
    task.exec(&format!(
        "ip link set eth0 mtu 1000 && ip route replace 198.18.1.0/24 dev eth0 src {task_addr} advmss 1460 \
         && ip route replace default via {LB_BACK_ADDR} advmss 1460"
    ))?;
    let config = one_task_config(&topo)?;
    let agent = start(&topo, &config)?;

    let frontend = topo.frontend(80);
    let mut conn = topo.client.run(move || EchoConn::open(frontend))??;
    let line = "x".repeat(20_000);
    let exchanged = conn.exchange(&line);
    let status = agent.status()?;
    exchanged.with_context(|| format!("a 20 kB exchange with don't-fragment set; reasons {}", status["reasons"]))?;
    eprintln!("path MTU: reasons {}", status["reasons"]);
    ensure!(reason(&status, "frag_needed_sent") >= 1, "no fragmentation needed was sent: {}", status["reasons"]);
    agent::unload()
}
