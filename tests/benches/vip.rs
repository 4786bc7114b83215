//! A service VIP through swarmlb's socket load balancing against the task's own address, same run,
//! side by side, in the one-node namespace topology (`topology::SingleNode`, one backend, so every
//! setup reaches the same server). The agent attaches its socket programs (connect4, sendmsg4,
//! recvmsg4, getpeername4) to a cgroup of the bench's own (`cgroup::TestCgroup`) and lists the
//! client namespace as a member attached to the VIP's overlay; the load generators
//! (`tests::load`) run on threads of this process inside the client namespace, so the process
//! moves itself into that cgroup for every measured phase (`InCgroup`) and out again after it.
//! Three setups:
//!
//! - direct, no agent: the client connects to the task's address (`tasks.api`), nothing attached:
//!   the floor;
//! - direct, agent running: the same address with the socket programs attached (they run on
//!   every connect, find no frontend and leave it) and the agent's XDP on the lb interfaces
//!   (which passes these packets: no frontend either);
//! - VIP: the same agent, the client connects to the VIP, which nobody owns: each connect is
//!   rewritten to the task once, nothing is done per packet.
//!
//! Per setup: keep-alive request/response round trips per second (4 ECHO connections) and new
//! connections per second (4 workers, one HTTP/1.0 request each), each phase on a new backend
//! (no TIME_WAIT sockets from the phase before). The socket programs' event counters
//! (`status --json` "socket_lb"/"events") are printed after the VIP phases; the bench fails if
//! the VIP phases' connections did not all go through the socket programs (`balanced` grew by
//! less than the connections made) or a direct one did. Timings are reported, never asserted.
//! About 1.5 minutes; `SLB_BENCH_QUICK=1` (or `--quick`) shortens every phase to 2 s. Needs root
//! and the release `swarmlb` and `slb-testsrv` binaries (`cargo xtask bench` builds them).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use lb_common::maps::SOCK_PROGS;
use serde_json::Value;
use tests::{
    agent::{self, Placement},
    bench::{BenchAgent, MAX_CONNS, MAX_REQUESTS, WORKERS, fresh_backend, probe, tcp_ext},
    cgroup::{InCgroup, TestCgroup, own_cgroup},
    load::{self, LoadResult},
    netns::sibling_binary,
    topology::{BACKEND_TCP_PORT, LB_BACK_ADDR, SingleNode, backend_addr, backend_name},
};

/// The service's VIP: owned by nobody (ARP for it goes unanswered), in the backends' subnet, so
/// only the socket programs make it reachable.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 200);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    KeepAlive,
    Churn,
}

const PHASES: [Phase; 2] = [Phase::KeepAlive, Phase::Churn];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::KeepAlive => "keep-alive",
            Phase::Churn => "new connections",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Floor,
    Direct,
    Vip,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Floor => "direct, no agent",
            Setup::Direct => "direct, agent running",
            Setup::Vip => "VIP (socket LB)",
        }
    }

    fn target(self) -> SocketAddr {
        match self {
            Setup::Floor | Setup::Direct => SocketAddr::from((backend_addr(0), BACKEND_TCP_PORT)),
            Setup::Vip => SocketAddr::from((VIP, BACKEND_TCP_PORT)),
        }
    }
}

struct Timing {
    phase: Duration,
    settle: Duration,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        if quick {
            Timing { phase: Duration::from_secs(2), settle: Duration::from_millis(200) }
        } else {
            Timing { phase: Duration::from_secs(10), settle: Duration::from_secs(1) }
        }
    }
}

/// The services file: `api`, a VIP service on overlay `appnet` with the one task, and the client
/// namespace as a member attached to `appnet`.
fn config(topo: &SingleNode) -> String {
    format!(
        "[node]\nnat_addr = \"{LB_BACK_ADDR}\"\n\n\
         [[network]]\nname = \"appnet\"\nvni = 4242\nsubnet = \"198.18.1.0/24\"\n\n\
         [[service]]\nname = \"api\"\nnetwork = \"appnet\"\nvip = \"{VIP}\"\n\
         [[service.backend]]\nname = \"{}\"\naddr = \"{}\"\n\n\
         [[member]]\nname = \"client\"\nnetns = \"/var/run/netns/{}\"\nnetworks = [\"appnet\"]\n",
        backend_name(0),
        backend_addr(0),
        topo.client.name
    )
}

/// The socket programs' events (`status --json` "socket_lb"/"events") and their `balanced` count.
fn balanced(lb: &BenchAgent) -> Result<u64> {
    let events = lb.status()?["socket_lb"]["events"].clone();
    events["balanced"].as_u64().with_context(|| format!("no balanced count in socket_lb.events: {events}"))
}

/// One phase's load, what the client's kernel counted, and (with the agent) how many
/// connections the socket programs balanced meanwhile.
struct PhaseResult {
    load: LoadResult,
    /// SYNs the client sent again (each one costs a connection 1 s or more).
    client_syn_retrans: u64,
    balanced: Option<u64>,
}

struct Row {
    setup: Setup,
    results: Vec<PhaseResult>,
}

impl Row {
    fn get(&self, phase: Phase) -> &PhaseResult {
        &self.results[PHASES.iter().position(|&p| p == phase).unwrap_or(0)]
    }
}

/// Runs one phase from the test cgroup, on a fresh backend, and checks what the socket programs
/// did: every VIP connection balanced, no direct one.
fn run_phase(
    topo: &mut SingleNode,
    cg: &TestCgroup,
    setup: Setup,
    lb: Option<&BenchAgent>,
    phase: Phase,
    timing: &Timing,
) -> Result<PhaseResult> {
    fresh_backend(topo)?;
    thread::sleep(timing.settle);
    let target = setup.target();
    let in_cgroup = InCgroup::enter(cg)?;
    probe(&topo.client, target, setup.name())?;
    let balanced_before = lb.map(balanced).transpose()?;
    let retrans_before = tcp_ext(&topo.client, "TCPSynRetrans")?;
    let load = match phase {
        Phase::KeepAlive => load::keepalive(&topo.client, target, WORKERS, MAX_REQUESTS, timing.phase)?,
        Phase::Churn => load::churn(&topo.client, target, WORKERS, MAX_CONNS, timing.phase)?,
    };
    let client_syn_retrans = tcp_ext(&topo.client, "TCPSynRetrans")?.saturating_sub(retrans_before);
    in_cgroup.leave()?;
    let balanced = match (lb, balanced_before) {
        (Some(lb), Some(before)) => Some(balanced(lb)?.saturating_sub(before)),
        _ => None,
    };
    let result = PhaseResult { load, client_syn_retrans, balanced };
    eprintln!(
        "  {:<16} {:>9.0}/s  ({} ok, {} failed in {:.1} s; {} SYN retransmits{})",
        phase.name(),
        result.load.rate(),
        result.load.ok,
        result.load.failed,
        result.load.elapsed.as_secs_f64(),
        result.client_syn_retrans,
        balanced.map(|n| format!("; balanced +{n}")).unwrap_or_default(),
    );
    ensure!(result.load.ok > 0, "{} {}: nothing answered: {:?}", setup.name(), phase.name(), result.load.first_error);
    // Connections this phase made: every churn attempt connects once (the connect program runs
    // before the SYN, so a failed attempt was balanced too); every keep-alive worker at least once.
    let connections = match phase {
        Phase::KeepAlive => WORKERS as u64,
        Phase::Churn => result.load.ok + result.load.failed,
    };
    match (setup, balanced) {
        (Setup::Vip, Some(n)) => ensure!(
            n >= connections,
            "{} {}: {connections} connections to the VIP but the socket programs balanced {n}",
            setup.name(),
            phase.name()
        ),
        (Setup::Direct, Some(n)) => {
            ensure!(n == 0, "{} {}: {n} connections to the task's own address were moved", setup.name(), phase.name())
        }
        (Setup::Floor, None) => {}
        _ => bail!("{}: the agent is {}", setup.name(), if lb.is_some() { "running" } else { "not running" }),
    }
    Ok(result)
}

fn measure(
    topo: &mut SingleNode,
    cg: &TestCgroup,
    setup: Setup,
    lb: Option<&BenchAgent>,
    timing: &Timing,
) -> Result<Row> {
    eprintln!("{}: client -> {}", setup.name(), setup.target());
    let mut results = Vec::new();
    for phase in PHASES {
        results.push(run_phase(topo, cg, setup, lb, phase, timing)?);
    }
    Ok(Row { setup, results })
}

/// Everything measured: the rows in `Setup` order and the socket events after the VIP phases.
struct Bench {
    rows: Vec<Row>,
    events: Value,
}

fn run(topo: &mut SingleNode, cg: &TestCgroup, placement: &Placement, config: &str, timing: &Timing) -> Result<Bench> {
    let attached = cg.attached()?;
    ensure!(!attached.contains("swarmlb"), "programs attached to the test cgroup before the agent: {attached}");
    let mut rows = vec![measure(topo, cg, Setup::Floor, None, timing)?];

    let lb = BenchAgent::start(topo, placement, config, 1)?;
    let measured = (|| -> Result<Value> {
        let attached = cg.attached()?;
        for (program, _) in SOCK_PROGS {
            ensure!(attached.contains(program), "{program} is not attached to the test cgroup: {attached}");
        }
        rows.push(measure(topo, cg, Setup::Direct, Some(&lb), timing)?);
        rows.push(measure(topo, cg, Setup::Vip, Some(&lb), timing)?);
        Ok(lb.status()?["socket_lb"]["events"].clone())
    })();
    let diagnosis = lb.diagnosis();
    let events = measured.with_context(|| diagnosis)?;
    lb.finish()?;
    let attached = cg.attached()?;
    ensure!(!attached.contains("swarmlb"), "programs left on the test cgroup after unload: {attached}");
    Ok(Bench { rows, events })
}

/// Completions per second inside the phase's time limit (attempts still in flight at the limit
/// finish after it and are left out, as is that tail's time).
fn rate(row: &Row, phase: Phase, timing: &Timing) -> f64 {
    row.get(phase).load.window_rate(0, timing.phase.as_secs() as usize)
}

fn ratio(rate: f64, of: f64) -> f64 {
    if of > 0.0 { rate / of } else { 0.0 }
}

fn print_table(bench: &Bench, timing: &Timing) {
    let rows = &bench.rows;
    let floor = &rows[0];
    println!();
    println!(
        "| setup | client connects to | keep-alive req/s | new conn/s | failed (keep-alive / new) | SYN retransmits (keep-alive / new) |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let cells: Vec<String> = PHASES
            .iter()
            .map(|&p| {
                let r = rate(row, p, timing);
                format!("{r:.0} ({:.2}×)", ratio(r, rate(floor, p, timing)))
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} |",
            row.setup.name(),
            row.setup.target(),
            cells[0],
            cells[1],
            row.get(Phase::KeepAlive).load.failed,
            row.get(Phase::Churn).load.failed,
            row.get(Phase::KeepAlive).client_syn_retrans,
            row.get(Phase::Churn).client_syn_retrans,
        );
    }
    println!(
        "\n(completions per second within each {} s phase; × = ratio to {}; {WORKERS} workers per phase)",
        timing.phase.as_secs(),
        floor.setup.name()
    );
    if let (Some(direct), Some(vip)) =
        (rows.iter().find(|r| r.setup == Setup::Direct), rows.iter().find(|r| r.setup == Setup::Vip))
    {
        let cells: Vec<String> = PHASES
            .iter()
            .map(|&p| format!("{} {:.2}×", p.name(), ratio(rate(vip, p, timing), rate(direct, p, timing))))
            .collect();
        println!("VIP / direct, both with the agent running: {} (goal: within 10%)", cells.join(", "));
    }
    for row in rows {
        for (phase, result) in PHASES.iter().zip(&row.results) {
            if let Some(error) = &result.load.first_error {
                println!("  first failure, {} {}: {error}", row.setup.name(), phase.name());
            }
        }
    }
}

fn print_events(bench: &Bench) {
    println!("\nsocket_lb.events after the VIP phases: {}", bench.events);
    for row in bench.rows.iter().filter(|r| r.setup != Setup::Floor) {
        for (phase, result) in PHASES.iter().zip(&row.results) {
            let made = match phase {
                Phase::KeepAlive => format!("{WORKERS} connections (and any reconnects)"),
                Phase::Churn => format!("{} connections", result.load.ok + result.load.failed),
            };
            println!(
                "  {:<22} {:<16} balanced +{} for {made}",
                row.setup.name(),
                phase.name(),
                result.balanced.unwrap_or(0)
            );
        }
    }
}

fn main() -> Result<()> {
    let quick = std::env::var("SLB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    let timing = Timing::new(quick);
    let started = Instant::now();
    // Fail before building anything when the binaries are missing.
    agent::swarmlb_binary()?;
    sibling_binary("slb-testsrv")?;

    let mut topo = SingleNode::new(1)?;
    let cg = TestCgroup::new()?;
    let config_path = std::env::temp_dir().join(format!("{}-vip.toml", topo.lb.name));
    std::fs::write(&config_path, config(&topo))?;
    let config_str = config_path.to_str().context("config path")?.to_string();
    let placement = Placement {
        pin_dir: Some(format!("/sys/fs/bpf/{}-vip", topo.lb.name)),
        cgroup: Some(cg.path_str().to_owned()),
        ..Placement::default()
    };
    eprintln!(
        "VIP {VIP} through the socket programs vs task {} directly, client {} in cgroup {}{}",
        backend_addr(0),
        topo.client.name,
        cg.path.display(),
        if quick { " (quick: 2 s phases)" } else { "" }
    );

    let result = run(&mut topo, &cg, &placement, &config_str, &timing);
    let _ = std::fs::remove_file(&config_path);
    let _ = agent::unload_at(&placement);
    // The agent's heartbeat directory (`/run/<pin dir name>`), which unload leaves.
    let state_dir = Path::new("/run").join(format!("{}-vip", topo.lb.name));
    let _ = std::fs::remove_file(state_dir.join("health.json"));
    let _ = std::fs::remove_dir(&state_dir);
    // The cgroup's drop kills what is in it: never this process (`InCgroup` moved it out).
    if own_cgroup(&cg).map_or(true, |now| now == cg.path) {
        std::mem::forget(cg);
        bail!("this process may still be in the test cgroup; not removing it (result: {:?})", result.err());
    }
    let bench = result?;

    print_table(&bench, &timing);
    print_events(&bench);
    println!("\n(whole bench {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
