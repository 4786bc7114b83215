//! Loads the embedded XDP object with its maps pinned in a throw-away bpffs directory, programs
//! them the way the agent does (a services file through the file source, the planner and the
//! datapath writer), and runs frames through it with BPF_PROG_TEST_RUN. Also builds the
//! throw-away network namespace the FIB lookups of those runs resolve in.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cmd::sh;
use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use lb_common::{CtEvent, Flow, FlowKey, Reason, Traffic, maps};
use swarmlb::{
    datapath::{pins, upgrade::MapSizes, writer::Writer},
    planner::{self, Plan},
    source::file,
};

/// XDP return codes.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// What one run of the program did to a frame.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: u32,
    pub frame: Vec<u8>,
    /// The metadata the program left in front of the frame (`bpf_xdp_adjust_meta`), if any.
    pub meta: Vec<u8>,
    pub duration_ns: u64,
}

/// The loaded datapath: both programs loaded (not attached), maps pinned in `pin_dir` and
/// reachable by name, and the plan last applied.
pub struct Datapath {
    pub ebpf: Ebpf,
    pin_dir: PathBuf,
    /// The agent's one writer (it remembers which ports are draining).
    writer: Option<Writer>,
    /// Whether the pins are this datapath's own (removed on drop) or a running agent's.
    owns_pins: bool,
    plan: Option<Plan>,
    local_node: Option<String>,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.owns_pins {
            let _ = pins::unload(&self.pin_dir);
        }
    }
}

impl Datapath {
    /// Loads `swarmlb::ebpf_object()` without pinning anything. Fails loudly without root/BPF.
    ///
    /// BPF_PROG_LOAD answers EAGAIN when a signal arrives during verification (tests run in
    /// parallel threads that spawn `ip`); like libbpf, retry a few times on that error only.
    pub fn load() -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::load_once() {
                Err(e) if attempt < 5 && format!("{e:#}").contains("os error 11") => continue,
                other => return other,
            }
        }
    }

    fn load_once() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/slbtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = pins::unload(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {} (needs root and a bpffs)", pin_dir.display()))?;
        Self::load_with_pins(pin_dir, true)
    }

    /// Loads a second instance of the program over the maps a running agent pinned in
    /// `pin_dir` (left in place on drop): frames run through it act on the live datapath's
    /// state, as packets on the agent's interfaces would.
    pub fn attach_pinned(pin_dir: &Path) -> Result<Self> {
        for spec in maps::SPECS {
            ensure!(pin_dir.join(spec.name).exists(), "no map {} pinned in {}", spec.name, pin_dir.display());
        }
        Self::load_with_pins(pin_dir.to_owned(), false)
    }

    /// Loads over `pin_dir`; a load that fails anywhere (a verifier rejection included) removes
    /// the pins it made, if they are its own.
    fn load_with_pins(pin_dir: PathBuf, owns_pins: bool) -> Result<Self> {
        match Self::load_programs(&pin_dir) {
            Ok(ebpf) => Ok(Self { ebpf, pin_dir, writer: None, owns_pins, plan: None, local_node: None }),
            Err(e) => {
                if owns_pins {
                    let _ = pins::unload(&pin_dir);
                }
                Err(e)
            }
        }
    }

    fn load_programs(pin_dir: &Path) -> Result<aya::Ebpf> {
        let object = swarmlb::ebpf_object()?;
        let mut ebpf = pins::loader(pin_dir, &MapSizes::default())
            .load(object)
            .context("loading the XDP object (needs root and BPF)")?;
        for name in [maps::PROG_LB, maps::PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        let neigh: &mut SchedClassifier = ebpf
            .program_mut(maps::PROG_NEIGH)
            .with_context(|| format!("program {} missing from the object", maps::PROG_NEIGH))?
            .try_into()?;
        neigh.load().with_context(|| format!("verifier rejected {}", maps::PROG_NEIGH))?;
        pins::load_trace_programs(&mut ebpf)?;
        Ok(ebpf)
    }

    /// Where the maps are pinned (for a `Writer` or `swarmlb` commands of the test's own).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The swarm node the services files of this datapath are planned for (`--node`).
    pub fn set_local_node(&mut self, node: &str) {
        self.local_node = Some(node.to_owned());
    }

    /// Programs the maps from a services file, as `swarmlb run --config` does on start (the
    /// first call: a full sync) and on every reload after (a diff against the last plan).
    /// Returns the diff written.
    pub fn apply(&mut self, config: &str) -> Result<planner::Diff> {
        let local = self.local_node.as_deref();
        let cluster = file::parse("test.toml", config, local).map_err(|e| anyhow!("{e}"))?;
        let planned = planner::plan(&cluster, local, self.plan.as_ref().unwrap_or(&Plan::default()));
        if let Some(first) = planned.left_out.first() {
            bail!("the planner left out part of the config: {first}");
        }
        let next = planned.plan;
        let diff = planner::diff(self.plan.as_ref(), &next);
        let reset = planner::stats_to_reset(self.plan.as_ref(), &next);
        self.writer()?.reset_stats(&reset)?;
        self.writer()?.apply(&diff)?;
        self.plan = Some(next);
        Ok(diff)
    }

    fn writer(&mut self) -> Result<&mut Writer> {
        if self.writer.is_none() {
            self.writer = Some(Writer::open(&self.pin_dir)?);
        }
        Ok(self.writer.as_mut().expect("just opened"))
    }

    /// The agent's periodic table sweep: idled-out entries removed, ports of removed frontends
    /// released once their connections are gone. Returns (entries removed, ports released).
    pub fn sweep(&mut self) -> Result<(usize, Vec<u16>)> {
        let swept = swarmlb::datapath::tables::Tables::open(&self.pin_dir)?.sweep()?;
        let released = self.writer()?.release_ports(&swept.client_ports)?;
        Ok((swept.removed, released))
    }

    /// The last applied plan.
    pub fn plan(&self) -> &Plan {
        self.plan.as_ref().expect("no services file applied yet")
    }

    /// The id the planner gave backend `backend` of service `service`.
    pub fn backend_id(&self, service: &str, backend: &str) -> u32 {
        let s =
            self.plan().services.iter().find(|s| s.name == service).unwrap_or_else(|| panic!("no service {service}"));
        s.backends.iter().find(|b| b.name == backend).unwrap_or_else(|| panic!("no backend {backend}")).id
    }

    /// The id the planner gave service `service`.
    pub fn service_id(&self, service: &str) -> u32 {
        self.plan().services.iter().find(|s| s.name == service).unwrap_or_else(|| panic!("no service {service}")).id
    }

    /// The node's addresses, for "any local address" frontends (as the agent writes them).
    pub fn set_local_addrs(&mut self, addrs: &[[u8; 4]]) -> Result<()> {
        let set: BTreeSet<Ipv4Addr> = addrs.iter().map(|a| Ipv4Addr::from(*a)).collect();
        self.writer()?.sync_local_addrs(&set)?;
        Ok(())
    }

    fn prog(&self, name: &str) -> Result<&Xdp> {
        Ok(self.ebpf.program(name).ok_or_else(|| anyhow!("no program {name}"))?.try_into()?)
    }

    /// Runs `frame` through `swarmlb` as if received on `ingress_ifindex`.
    pub fn run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<Outcome> {
        self.run_prog(maps::PROG_LB, frame, ingress_ifindex, 1)
    }

    /// Runs `frame` through program `name`, `repeat` times (duration is the per-run average).
    pub fn run_prog(&self, name: &str, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<Outcome> {
        let prog = self.prog(name)?;
        let mut out = vec![0u8; frame.len() + 512];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut ctx_out = [0u8; 24];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: if ingress_ifindex == 0 { None } else { Some(&ctx) },
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        // The output starts at the metadata; `xdp_md.data` is where the frame begins in it.
        let meta_len = u32::from_ne_bytes(ctx_out[..4].try_into().expect("4 bytes")) as usize;
        let frame = out.split_off(meta_len.min(out.len()));
        Ok(Outcome { action: result.return_value, frame, meta: out, duration_ns: result.duration.as_nanos() as u64 })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(name).ok_or_else(|| anyhow!("no map {name}"))?)?)
    }

    fn per_cpu<V: aya::Pod>(&self, name: &str) -> Result<PerCpuArray<&MapData, V>> {
        Ok(PerCpuArray::try_from(self.ebpf.map(name).ok_or_else(|| anyhow!("no map {name}"))?)?)
    }

    /// The kernel id of map `name`, for `bpftool map dump id ...`.
    pub fn map_id(&self, name: &str) -> Result<u32> {
        use aya::maps::Map;
        let data = match self.ebpf.map(name).ok_or_else(|| anyhow!("no map {name}"))? {
            Map::LruHashMap(d) | Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::DevMapHash(d) => d,
            _ => bail!("map {name} has an unexpected kind"),
        };
        Ok(data.info()?.id())
    }

    /// Lets the datapath transmit on `ifindex` (XDP_TX / redirect), as the agent does for every
    /// interface it attaches to.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.writer()?.add_tx_ports(&[ifindex])
    }

    fn table_entry(&mut self, table: &str, key: &FlowKey) -> Result<Option<Flow>> {
        match self.hash::<FlowKey, Flow>(table)?.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The live entry for `key` as the datapath finds it: the main table's unless it has idled
    /// out, else the new-flow table's.
    pub fn flow(&mut self, key: &FlowKey) -> Result<Option<Flow>> {
        Ok(self.live_entry(key)?.map(|(f, _)| f))
    }

    /// Which table holds the live entry for `key`: `Some(true)` the main one (confirmed),
    /// `Some(false)` the new-flow table, `None` neither.
    pub fn confirmed(&mut self, key: &FlowKey) -> Result<Option<bool>> {
        Ok(self.live_entry(key)?.map(|(_, main)| main))
    }

    fn live_entry(&mut self, key: &FlowKey) -> Result<Option<(Flow, bool)>> {
        let now = monotonic_ns();
        let live = |f: &Flow| now.saturating_sub(f.last_seen_ns) <= lb_common::idle_timeout_ns(key.proto, f.state);
        if let Some(f) = self.table_entry(maps::CONNTRACK, key)?.filter(live) {
            return Ok(Some((f, true)));
        }
        Ok(self.table_entry(maps::NEW_FLOWS, key)?.filter(live).map(|f| (f, false)))
    }

    /// Moves an entry's clock back by `seconds` (in whichever table holds it), as if the
    /// connection had been idle that long. The datapath's clock starts at boot, so this cannot
    /// go back further than the machine's uptime.
    pub fn age(&mut self, key: &FlowKey, seconds: u64) -> Result<()> {
        let Some(then) = monotonic_ns().checked_sub(seconds * 1_000_000_000) else {
            bail!("cannot age an entry by {seconds} s on a machine up for less");
        };
        for table in [maps::CONNTRACK, maps::NEW_FLOWS] {
            if let Some(mut f) = self.table_entry(table, key)? {
                f.last_seen_ns = then;
                self.hash::<FlowKey, Flow>(table)?.insert(key, f, 0)?;
                return Ok(());
            }
        }
        bail!("no entry for {key:?} to age")
    }

    /// The value of `slb_fe_ports` for `port`.
    pub fn port_bits(&self, port: u16) -> Result<u8> {
        let map = aya::maps::Array::<&MapData, u8>::try_from(
            self.ebpf.map(maps::FE_PORTS).ok_or_else(|| anyhow!("no fe ports"))?,
        )?;
        Ok(map.get(&(port as u32), 0)?)
    }

    /// Every entry of both connection tables.
    pub fn flows(&mut self) -> Result<Vec<(FlowKey, Flow)>> {
        let mut all = Vec::new();
        for table in [maps::CONNTRACK, maps::NEW_FLOWS] {
            all.extend(self.hash::<FlowKey, Flow>(table)?.iter().collect::<Result<Vec<_>, _>>()?);
        }
        Ok(all)
    }

    /// Entries of (main, new-flow) table.
    pub fn table_sizes(&mut self) -> Result<(usize, usize)> {
        let main = self.hash::<FlowKey, Flow>(maps::CONNTRACK)?.keys().count();
        Ok((main, self.hash::<FlowKey, Flow>(maps::NEW_FLOWS)?.keys().count()))
    }

    /// A connection-table event counter summed over CPUs.
    pub fn event(&self, event: CtEvent) -> Result<u64> {
        let values = self.per_cpu::<u64>(maps::CT_EVENTS)?.get(&(event as u32), 0)?;
        Ok(values.iter().sum())
    }

    /// A reason counter summed over CPUs.
    pub fn reason(&self, reason: Reason) -> Result<u64> {
        let values = self.per_cpu::<u64>(maps::REASONS)?.get(&(reason as u32), 0)?;
        Ok(values.iter().sum())
    }

    /// Every non-zero reason counter, by name.
    pub fn reasons(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            let n = self.reason(*r)?;
            if n != 0 {
                out.push((r.name(), n));
            }
        }
        Ok(out)
    }

    /// Asserts the complete set of non-zero reason counters.
    pub fn assert_reasons(&self, expected: &[(Reason, u64)]) {
        let mut want: Vec<(&str, u64)> = expected.iter().map(|(r, n)| (r.name(), *n)).collect();
        want.sort();
        let mut got = self.reasons().expect("reading slb_reasons");
        got.sort();
        assert_eq!(got, want, "reason counters");
    }

    fn traffic(&self, map: &str, id: u32) -> Result<Traffic> {
        let values = self.per_cpu::<Traffic>(map)?.get(&id, 0)?;
        Ok(values.iter().fold(Traffic::default(), |a, t| Traffic {
            packets: a.packets + t.packets,
            bytes: a.bytes + t.bytes,
            new_flows: a.new_flows + t.new_flows,
        }))
    }

    pub fn service_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic(maps::SVC_STATS, id)
    }

    pub fn backend_traffic(&self, id: u32) -> Result<Traffic> {
        self.traffic(maps::BE_STATS, id)
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    swarmlb::datapath::tables::monotonic_ns().expect("clock_gettime(CLOCK_MONOTONIC)")
}

/// One interface of the test namespace: a veth whose peer stays in the namespace too.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The load balancer's view of the network, built in a fresh network namespace entered by the
/// calling thread (so it disappears with the thread). Addresses are all in 198.18.0.0/15.
///
/// - `lan` (198.18.0.1/24): clients 198.18.0.50-59 and backend 198.18.0.100 have permanent
///   neighbour entries; a frame received here and sent back out here is XDP_TX.
/// - `dc` (198.18.2.1/24): backend 198.18.2.100 (permanent neighbour); reached by redirect.
/// - `other` (198.18.4.1/24), not managed by swarmlb: backend 198.18.4.100 goes to the kernel.
///   198.18.4.200 has no neighbour entry (FIB answers NO_NEIGH).
/// - 198.19.99.0/24 has no route at all.
pub struct TestNet {
    pub lan: Link,
    pub dc: Link,
    pub other: Link,
}

pub const LB_LAN: [u8; 4] = [198, 18, 0, 1];
pub const LB_DC: [u8; 4] = [198, 18, 2, 1];
pub const CLIENT: [u8; 4] = [198, 18, 0, 50];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const BACKEND_LAN: [u8; 4] = [198, 18, 0, 100];
pub const BACKEND_LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
pub const BACKEND_DC: [u8; 4] = [198, 18, 2, 100];
pub const BACKEND_DC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
pub const BACKEND_OTHER: [u8; 4] = [198, 18, 4, 100];
pub const BACKEND_NO_NEIGH: [u8; 4] = [198, 18, 4, 200];
pub const BACKEND_NO_ROUTE: [u8; 4] = [198, 19, 99, 1];
pub const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl TestNet {
    /// Moves the calling thread into a new network namespace and builds the topology there.
    pub fn enter() -> Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET): the packet tests need root")?;
        sh("ip link set lo up")?;
        sh("sysctl -qw net.ipv4.ip_forward=1")?;
        let mut links = Vec::new();
        for (name, mac, addr) in
            [("lan", LAN_MAC, "198.18.0.1/24"), ("dc", DC_MAC, "198.18.2.1/24"), ("other", OTHER_MAC, "198.18.4.1/24")]
        {
            sh(&format!("ip link add {name} address {} type veth peer name {name}-peer", mac_str(mac)))?;
            sh(&format!("ip addr add {addr} dev {name}"))?;
            sh(&format!("ip link set {name} up"))?;
            sh(&format!("ip link set {name}-peer up"))?;
            let ifindex = nix::net::if_::if_nametoindex(name).with_context(|| format!("ifindex of {name}"))?;
            links.push(Link { ifindex, mac });
        }
        for c in 50..60u8 {
            sh(&format!("ip neigh add 198.18.0.{c} lladdr 02:00:00:00:00:{c:02x} dev lan nud permanent"))?;
        }
        sh(&format!("ip neigh add 198.18.0.100 lladdr {} dev lan nud permanent", mac_str(BACKEND_LAN_MAC)))?;
        sh(&format!("ip neigh add 198.18.2.100 lladdr {} dev dc nud permanent", mac_str(BACKEND_DC_MAC)))?;
        sh("ip neigh add 198.18.4.100 lladdr 02:00:00:00:00:b4 dev other nud permanent")?;
        let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/conf/lan/forwarding")?;
        ensure!(forwarding.trim() == "1", "forwarding is off in the test namespace");
        Ok(Self { lan: links[0], dc: links[1], other: links[2] })
    }
}

/// MAC of test client number `n` (198.18.0.`n`), as its neighbour entry says.
pub fn client_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}
