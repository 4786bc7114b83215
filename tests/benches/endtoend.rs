//! End-to-end TCP through the one-node namespace topology (`topology::SingleNode`, one backend),
//! three setups in turn on the same namespaces, side by side:
//!
//! - plain routing: the client connects to the backend's own address through the lb namespace,
//!   which only forwards (no XDP, no iptables rules): the floor;
//! - iptables DNAT + MASQUERADE in the lb namespace, client to `198.18.0.1:80`;
//! - swarmlb: the real agent with XDP on both lb interfaces, client to `198.18.0.1:80`.
//!
//! Per setup: keep-alive request/response round trips per second (4 ECHO connections), new
//! connections per second (4 workers, one HTTP/1.0 request each), and the same for 60 s to show
//! whether the rate holds (first 10 s against last 10 s). Every phase starts from the same state:
//! a new backend (namespace and server, so no TIME_WAIT sockets from the phase before) and, for
//! swarmlb, a fresh datapath (unload, start), so one phase's closed connections hold no NAT ports
//! in the next. swarmlb's reason counters after each phase are printed at the end, and for every
//! phase the client's SYN retransmits and the SYNs the backend's TIME_WAIT sockets refused (PAWS),
//! which is where a new connection's lost seconds go. Timings are reported, never
//! asserted: the bench fails only when a setup cannot be built or does not answer at all.
//! About 4.5 minutes; `SLB_BENCH_QUICK=1` (or `--quick`) shortens every phase to 2 s. Needs root
//! and the release `swarmlb` and `slb-testsrv` binaries (`cargo xtask bench` builds them).

use std::{
    net::SocketAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use tests::{
    agent::{self, Placement},
    bench::{BenchAgent, MAX_CONNS, MAX_REQUESTS, WORKERS, fresh_backend, probe, tcp_ext},
    cmd::sh,
    load::{self, LoadResult},
    netns::Netns,
    topology::{self, BACKEND_TCP_PORT, LB_BACK_ADDR, LB_FRONT_ADDR, SingleNode, backend_addr},
};

const FRONTEND_PORT: u16 = 80;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    KeepAlive,
    Churn,
    Sustained,
}

const PHASES: [Phase; 3] = [Phase::KeepAlive, Phase::Churn, Phase::Sustained];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::KeepAlive => "keep-alive",
            Phase::Churn => "new connections",
            Phase::Sustained => "sustained new connections",
        }
    }
}

/// How long each phase runs, and the window compared at the start and end of the sustained one.
struct Timing {
    keepalive: Duration,
    churn: Duration,
    sustained: Duration,
    window: usize,
    settle: Duration,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        if quick {
            let phase = Duration::from_secs(2);
            Timing { keepalive: phase, churn: phase, sustained: phase, window: 1, settle: Duration::from_millis(200) }
        } else {
            Timing {
                keepalive: Duration::from_secs(10),
                churn: Duration::from_secs(10),
                sustained: Duration::from_secs(60),
                window: 10,
                settle: Duration::from_secs(1),
            }
        }
    }

    fn of(&self, phase: Phase) -> Duration {
        match phase {
            Phase::KeepAlive => self.keepalive,
            Phase::Churn => self.churn,
            Phase::Sustained => self.sustained,
        }
    }
}

/// swarmlb's reason counters (`status --json` "reasons") after each phase.
type Reasons = Vec<(Phase, Value)>;

/// One phase's load, and what the kernels counted while it ran.
struct PhaseResult {
    load: LoadResult,
    /// SYNs the client sent again (each one costs a connection 1 s or more).
    client_syn_retrans: u64,
    /// SYNs the backend's TIME_WAIT sockets refused (PAWS: older timestamp on a reused 4-tuple).
    backend_paws_timewait: u64,
}

/// One setup's results, in `PHASES` order.
struct Row {
    setup: &'static str,
    results: Vec<PhaseResult>,
}

impl Row {
    fn get(&self, phase: Phase) -> &LoadResult {
        &self.results[PHASES.iter().position(|&p| p == phase).unwrap_or(0)].load
    }
}

fn backend(topo: &SingleNode) -> Result<&Netns> {
    topo.backends[0].as_ref().context("backend 0 missing")
}

fn run_phase(topo: &SingleNode, target: SocketAddr, phase: Phase, timing: &Timing) -> Result<PhaseResult> {
    thread::sleep(timing.settle);
    let retrans_before = tcp_ext(&topo.client, "TCPSynRetrans")?;
    let paws_before = tcp_ext(backend(topo)?, "PAWSTimewait")?;
    let load = match phase {
        Phase::KeepAlive => load::keepalive(&topo.client, target, WORKERS, MAX_REQUESTS, timing.keepalive)?,
        Phase::Churn | Phase::Sustained => load::churn(&topo.client, target, WORKERS, MAX_CONNS, timing.of(phase))?,
    };
    let result = PhaseResult {
        client_syn_retrans: tcp_ext(&topo.client, "TCPSynRetrans")?.saturating_sub(retrans_before),
        backend_paws_timewait: tcp_ext(backend(topo)?, "PAWSTimewait")?.saturating_sub(paws_before),
        load,
    };
    eprintln!(
        "  {:<26} {:>9.0}/s  ({} ok, {} failed in {:.1} s; {} SYN retransmits, {} SYNs refused by TIME_WAIT)",
        phase.name(),
        result.load.rate(),
        result.load.ok,
        result.load.failed,
        result.load.elapsed.as_secs_f64(),
        result.client_syn_retrans,
        result.backend_paws_timewait,
    );
    Ok(result)
}

/// iptables DNAT + MASQUERADE in the lb namespace, removed again by `remove` or on drop.
struct IptablesNat {
    ns: String,
    bin: &'static str,
    rules: Vec<String>,
}

impl IptablesNat {
    fn exec(&self, args: &str) -> Result<String> {
        sh(&format!("nsenter --net=/var/run/netns/{} {} {args}", self.ns, self.bin))
    }

    fn install(lb: &Netns) -> Result<IptablesNat> {
        let bin = ["iptables", "iptables-nft", "iptables-legacy"]
            .into_iter()
            .find(|bin| lb.exec(&format!("{bin} -t nat -S >/dev/null 2>&1")).is_ok())
            .context("no working iptables (tried iptables, iptables-nft, iptables-legacy)")?;
        let backend = backend_addr(0);
        let mut nat = IptablesNat { ns: lb.name.clone(), bin, rules: Vec::new() };
        for rule in [
            format!(
                "PREROUTING -d {LB_FRONT_ADDR} -p tcp --dport {FRONTEND_PORT} -j DNAT --to-destination {backend}:{BACKEND_TCP_PORT}"
            ),
            format!("POSTROUTING -d {backend} -p tcp --dport {BACKEND_TCP_PORT} -j MASQUERADE"),
        ] {
            nat.exec(&format!("-t nat -A {rule}"))?;
            nat.rules.push(rule);
        }
        Ok(nat)
    }

    fn remove(&mut self) -> Result<()> {
        while let Some(rule) = self.rules.pop() {
            self.exec(&format!("-t nat -D {rule}"))?;
        }
        Ok(())
    }
}

impl Drop for IptablesNat {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Plain,
    Iptables,
    Swarmlb,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain routing",
            Setup::Iptables => "iptables DNAT+MASQUERADE",
            Setup::Swarmlb => "swarmlb (XDP)",
        }
    }
}

/// Runs every phase through one setup, each on a fresh backend (and, for swarmlb, a fresh
/// datapath); for swarmlb also returns its reason counters after each phase.
fn measure(topo: &mut SingleNode, setup: Setup, config: &str, timing: &Timing) -> Result<(Row, Reasons)> {
    let target = match setup {
        Setup::Plain => SocketAddr::from((backend_addr(0), BACKEND_TCP_PORT)),
        Setup::Iptables | Setup::Swarmlb => topo.frontend(FRONTEND_PORT),
    };
    let mut nat = match setup {
        Setup::Iptables => Some(IptablesNat::install(&topo.lb)?),
        _ => None,
    };
    match &nat {
        Some(nat) => eprintln!("{} ({}): client -> {target}", setup.name(), nat.bin),
        None => eprintln!("{}: client -> {target}", setup.name()),
    }
    let mut results = Vec::new();
    let mut reasons = Vec::new();
    for phase in PHASES {
        fresh_backend(topo)?;
        let lb = match setup {
            Setup::Swarmlb => {
                let placement =
                    Placement { pin_dir: Some(format!("/sys/fs/bpf/{}", topo.lb.name)), ..Placement::default() };
                Some(BenchAgent::start(topo, &placement, config, 2)?)
            }
            _ => None,
        };
        probe(&topo.client, target, setup.name())
            .with_context(|| lb.as_ref().map(BenchAgent::diagnosis).unwrap_or_default())?;
        results.push(run_phase(topo, target, phase, timing)?);
        if let Some(lb) = lb {
            reasons.push((phase, lb.status()?["reasons"].clone()));
            lb.finish()?;
        }
    }
    if let Some(nat) = &mut nat {
        nat.remove()?;
    }
    Ok((Row { setup: setup.name(), results }, reasons))
}

/// Completions per second inside the phase's time limit: attempts still in flight at the limit
/// (a SYN waiting for its retransmit) finish after it and are left out, as is that tail's time.
fn rate(row: &Row, phase: Phase, timing: &Timing) -> f64 {
    row.get(phase).window_rate(0, timing.of(phase).as_secs() as usize)
}

fn cell(rate: f64, floor: f64) -> String {
    let ratio = if floor > 0.0 { rate / floor } else { 0.0 };
    format!("{rate:.0} ({ratio:.2}×)")
}

fn print_table(rows: &[Row], timing: &Timing) {
    let floor = &rows[0];
    let w = timing.window;
    let s = timing.sustained.as_secs();
    println!();
    println!(
        "| setup | keep-alive req/s | new conn/s | sustained new conn/s ({s} s) | last {w} s / first {w} s | failed (keep-alive / new / sustained) |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let sustained = row.get(Phase::Sustained);
        let first = sustained.window_rate(0, w);
        let last = sustained.window_rate(s as usize - w.min(s as usize), s as usize);
        let decay = if first > 0.0 { last / first } else { 0.0 };
        println!(
            "| {} | {} | {} | {} | {decay:.2} ({first:.0} → {last:.0}/s) | {} / {} / {} |",
            row.setup,
            cell(rate(row, Phase::KeepAlive, timing), rate(floor, Phase::KeepAlive, timing)),
            cell(rate(row, Phase::Churn, timing), rate(floor, Phase::Churn, timing)),
            cell(rate(row, Phase::Sustained, timing), rate(floor, Phase::Sustained, timing)),
            row.get(Phase::KeepAlive).failed,
            row.get(Phase::Churn).failed,
            sustained.failed,
        );
    }
    println!(
        "\n(completions per second within each phase's time limit; × = ratio to plain routing; {WORKERS} workers per phase)"
    );

    println!("\nsustained new connections per second, second by second:");
    for row in rows {
        let seconds: Vec<String> = row.get(Phase::Sustained).per_second.iter().map(u64::to_string).collect();
        println!("  {:<26} {}", row.setup, seconds.join(" "));
    }

    println!("\nSYNs sent again by the client / SYNs refused by a backend TIME_WAIT socket (PAWS), per phase:");
    println!("| setup | keep-alive | new connections | sustained |");
    println!("|---|---|---|---|");
    for row in rows {
        let cells: Vec<String> =
            row.results.iter().map(|r| format!("{} / {}", r.client_syn_retrans, r.backend_paws_timewait)).collect();
        println!("| {} | {} |", row.setup, cells.join(" | "));
    }
    for row in rows {
        for (phase, result) in PHASES.iter().zip(&row.results) {
            if let Some(error) = &result.load.first_error {
                println!("  first failure, {} {}: {error}", row.setup, phase.name());
            }
        }
    }
}

fn print_reasons(reasons: &Reasons) {
    println!(
        "\nswarmlb reason counters after each phase (fresh datapath per phase; non-zero ones, and drop_ports_exhausted):"
    );
    for (phase, counters) in reasons {
        let mut shown: Vec<String> = counters
            .as_object()
            .map(|map| {
                map.iter()
                    .filter(|(name, value)| value.as_u64().unwrap_or(0) > 0 || *name == "drop_ports_exhausted")
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect()
            })
            .unwrap_or_default();
        if shown.is_empty() {
            shown.push(format!("{counters}"));
        }
        println!("  {:<26} {}", phase.name(), shown.join(" "));
    }
}

fn main() -> Result<()> {
    let quick = std::env::var("SLB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    let timing = Timing::new(quick);
    let started = Instant::now();
    // Fail before building anything when the binaries are missing.
    agent::swarmlb_binary()?;

    let mut topo = SingleNode::new(1)?;
    let config: PathBuf = std::env::temp_dir().join(format!("{}.toml", topo.lb.name));
    std::fs::write(&config, topology::config(&[0]))?;
    let config_str = config.to_str().context("config path")?.to_string();
    eprintln!(
        "end-to-end TCP, client {} -> lb {LB_FRONT_ADDR} / {LB_BACK_ADDR} -> backend {}{}",
        topology::CLIENT_ADDR,
        backend_addr(0),
        if quick { " (quick: 2 s phases)" } else { "" }
    );

    let result = (|| -> Result<(Vec<Row>, Reasons)> {
        let mut rows = Vec::new();
        let mut reasons = Vec::new();
        for setup in [Setup::Plain, Setup::Iptables, Setup::Swarmlb] {
            let (row, setup_reasons) = measure(&mut topo, setup, &config_str, &timing)?;
            rows.push(row);
            reasons.extend(setup_reasons);
        }
        Ok((rows, reasons))
    })();
    let _ = std::fs::remove_file(&config);
    let (rows, reasons) = result?;

    print_table(&rows, &timing);
    print_reasons(&reasons);
    println!("\n(whole bench {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
