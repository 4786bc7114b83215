//! The control plane at swarm scale: the real release `swarmlb run` with the file source, on the
//! one-node namespace topology, for 10, 100 and 1,000 services of 10 backends each. Per size:
//!
//! - full sync: the agent's own figure for its first sync, from the config's read to the maps
//!   written (`last_sync_lag_s` of `status --json`; at start it includes loading the program and
//!   creating the maps), with the plan and write times it logs, and the wall time from the
//!   process's start until `status` shows its sync (attach included);
//! - one-task change: one backend of the middle service moves to another port and the agent is
//!   sent SIGHUP; the agent's figure for that sync (read, parse, plan, write), median of 5;
//! - the agent's resident memory (VmRSS) and peak (VmHWM) after those syncs;
//! - map memory: bpftool's `memlock` of every map the agent created, as the total, the connection
//!   table's share, and the Maglev tables' per service.
//!
//! Timings are reported, never asserted. Needs root, the release binaries (`cargo xtask bench`
//! builds them) and bpftool; about a minute.

use std::{collections::BTreeSet, path::Path, thread, time::Duration, time::Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tests::{
    agent::{self, Agent},
    cmd::sh,
    topology::{LB_BACK_ADDR, LB_FRONT_ADDR, SingleNode, backend_addr},
};

const SIZES: [usize; 3] = [10, 100, 1000];
const BACKENDS: usize = 10;
const CHANGES: usize = 5;
const FIRST_PORT: usize = 1000;

/// `services` services on LB_FRONT_ADDR:`FIRST_PORT + i`, backend `j` of service `i` at backend
/// address `j` port `10000 + i`; `moved` gives backend 3 of the middle service port `20000 + moved`.
fn config(services: usize, moved: Option<usize>) -> String {
    let mut toml = format!("[node]\nnat_addr = \"{LB_BACK_ADDR}\"\n");
    for i in 0..services {
        toml += &format!("\n[[service]]\nname = \"s{i}\"\nfrontends = [\"{LB_FRONT_ADDR}:{}/tcp\"]\n", FIRST_PORT + i);
        for j in 0..BACKENDS {
            let port = match moved {
                Some(n) if i == services / 2 && j == 3 => 20000 + n,
                _ => 10000 + i,
            };
            toml += &format!("[[service.backend]]\nname = \"s{i}.{j}\"\naddr = \"{}:{port}\"\n", backend_addr(j));
        }
    }
    toml
}

/// Ids of the BPF maps on the machine, with name and memlock bytes.
fn maps() -> Result<Vec<(u64, String, u64)>> {
    let out = sh("bpftool -j map show")?;
    let list: Value = serde_json::from_str(&out).context("bpftool -j map show")?;
    Ok(list
        .as_array()
        .context("bpftool map list")?
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or("").to_string();
            (m["id"].as_u64().unwrap_or(0), name, m["bytes_memlock"].as_u64().or(m["memlock"].as_u64()).unwrap_or(0))
        })
        .collect())
}

fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("{field} of pid {pid}"))
}

/// The agent's last "planned in P ms, written in W ms" log line since `from` (a byte offset).
fn plan_and_write_ms(agent: &Agent, from: usize) -> Result<(u64, u64)> {
    let log = agent.log_text();
    let line = log.get(from..).unwrap_or_default().lines().rev().find(|l| l.contains("planned in "));
    let line = line.with_context(|| format!("no \"planned in\" line in the agent's log:\n{log}"))?;
    let number = |after: &str| -> Result<u64> {
        let rest = line.split(after).nth(1).context("log line format")?;
        rest.split(' ').next().unwrap_or("").parse().with_context(|| format!("in {line:?}"))
    };
    Ok((number("planned in ")?, number("written in ")?))
}

fn sync_lag_ms(status: &Value) -> Result<f64> {
    Ok(status["agent"]["last_sync_lag_s"].as_f64().context("no last_sync_lag_s in status")? * 1000.0)
}

struct Row {
    services: usize,
    full_sync_ms: f64,
    /// The agent's own plan and write times of the full sync and of the median change.
    full: (u64, u64),
    change: (u64, u64),
    start_to_serving_ms: u128,
    change_ms: f64,
    rss_kib: u64,
    peak_kib: u64,
    map_bytes: u64,
    conntrack_bytes: u64,
    maglev_bytes: u64,
}

/// After SIGHUP: waits until the agent has synced after `since` (its last sync is younger).
fn wait_for_sync_after(agent: &Agent, since: Instant) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = agent.status()?;
        let age = status["agent"]["last_sync_age_s"].as_f64().unwrap_or(f64::MAX);
        if age < since.elapsed().as_secs_f64() {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("no sync within 30 s of SIGHUP:\n{}", agent.diagnosis());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn measure(topo: &SingleNode, services: usize) -> Result<Row> {
    let path = std::env::temp_dir().join(format!("{}-scale-{services}.toml", topo.lb.name));
    std::fs::write(&path, config(services, None))?;
    agent::unload()?;
    let before: BTreeSet<u64> = maps()?.into_iter().map(|(id, ..)| id).collect();
    let started = Instant::now();
    let agent = Agent::start(&topo.lb, &["front", "back"], path.to_str().context("path")?, services)?;
    let start_to_serving_ms = started.elapsed().as_millis();
    let full_sync_ms = sync_lag_ms(&agent.status()?)?;
    let full = plan_and_write_ms(&agent, 0)?;

    let mut changes = Vec::new();
    let mut change_steps = Vec::new();
    for n in 0..CHANGES {
        std::fs::write(&path, config(services, Some(n)))?;
        let logged = agent.log_text().len();
        let sent = Instant::now();
        agent.signal("HUP")?;
        changes.push(sync_lag_ms(&wait_for_sync_after(&agent, sent)?)?);
        change_steps.push(plan_and_write_ms(&agent, logged)?);
    }
    changes.sort_by(f64::total_cmp);
    change_steps.sort();
    let pid = agent.pid().context("agent pid")?;
    let (rss_kib, peak_kib) = (proc_kib(pid, "VmRSS:")?, proc_kib(pid, "VmHWM:")?);

    let ours: Vec<(u64, String, u64)> = maps()?.into_iter().filter(|(id, ..)| !before.contains(id)).collect();
    let sum = |f: &dyn Fn(&str) -> bool| ours.iter().filter(|(_, name, _)| f(name)).map(|(.., b)| b).sum::<u64>();
    // Every service's table, a second one for the service that changed (its retired table,
    // kept for the next change), and slot 0's (service id 0), which only the grace waiter writes.
    let grace_table = format!("{}0", lb_common::maps::MAGLEV_TABLE_PREFIX);
    let is_table = |n: &str| n.starts_with(lb_common::maps::MAGLEV_TABLE_PREFIX) && n != grace_table;
    let maglev_tables = ours.iter().filter(|(_, n, _)| is_table(n)).count();
    ensure!(maglev_tables == services + 1, "{maglev_tables} Maglev tables for {services} services, one changed");
    let row = Row {
        services,
        full_sync_ms,
        full,
        change: change_steps[CHANGES / 2],
        start_to_serving_ms,
        change_ms: changes[CHANGES / 2],
        rss_kib,
        peak_kib,
        map_bytes: sum(&|_| true),
        conntrack_bytes: sum(&|n| n == lb_common::maps::CONNTRACK),
        maglev_bytes: sum(&|n| is_table(n)),
    };
    drop(agent);
    let _ = std::fs::remove_file(&path);
    agent::unload()?;
    Ok(row)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    agent::swarmlb_binary()?;
    ensure!(Path::new("/sys/fs/bpf").exists(), "no bpffs at /sys/fs/bpf");
    let topo = SingleNode::new(1)?;
    let mut rows = Vec::new();
    for services in SIZES {
        eprintln!("scale: {services} services x {BACKENDS} backends ...");
        rows.push(measure(&topo, services)?);
    }
    println!(
        "\n| services | full sync: read to written (plan + write) | start to serving | one-task change: read to written (plan + write), median of {CHANGES} | agent RSS / peak | map memory | of it conntrack | Maglev per service |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} ms ({} + {} ms) | {} ms | {:.1} ms ({} + {} ms) | {:.1} / {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            r.services,
            r.full_sync_ms,
            r.full.0,
            r.full.1,
            r.start_to_serving_ms,
            r.change_ms,
            r.change.0,
            r.change.1,
            r.rss_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            mib(r.map_bytes),
            mib(r.conntrack_bytes),
            r.maglev_bytes as f64 / 1024.0 / r.services as f64,
        );
    }
    println!("\nBefore: every service had a 65,537-slot Maglev table, 256 KiB, whatever its backend count.");
    Ok(())
}
