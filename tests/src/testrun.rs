//! Loads the embedded XDP object (no pinning), programs its maps with the `lb_common` types, and
//! runs frames through it with BPF_PROG_TEST_RUN. Also builds the throw-away network namespace
//! the FIB lookups of those runs resolve in.

use std::process::Command;

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    Backend, Flow, FlowKey, Frontend, FrontendKey, Reason, Service, Settings, Traffic,
    maps::{self, MAGLEV_SIZE},
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
    pub duration_ns: u64,
}

/// The loaded datapath: both programs loaded (not attached), maps reachable by name.
pub struct Datapath {
    pub ebpf: Ebpf,
}

impl Datapath {
    /// Loads `swarmlb::EBPF_OBJECT` without pinning anything. Fails loudly without root/BPF.
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
        let mut ebpf = EbpfLoader::new()
            .load(swarmlb::EBPF_OBJECT)
            .context("loading the XDP object (needs root and BPF)")?;
        for name in [maps::PROG_LB, maps::PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(Self { ebpf })
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
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: if ingress_ifindex == 0 { None } else { Some(&ctx) },
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome { action: result.return_value, frame: out, duration_ns: result.duration.as_nanos() as u64 })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(name).ok_or_else(|| anyhow!("no map {name}"))?)?)
    }

    fn array<V: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, V>> {
        Ok(Array::try_from(self.ebpf.map_mut(name).ok_or_else(|| anyhow!("no map {name}"))?)?)
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

    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        Ok(self.array::<Settings>(maps::SETTINGS)?.set(0, settings, 0)?)
    }

    pub fn set_fe_port(&mut self, port: u16, proto_bits: u8) -> Result<()> {
        Ok(self.array::<u8>(maps::FE_PORTS)?.set(port as u32, proto_bits, 0)?)
    }

    pub fn set_frontend(&mut self, addr: [u8; 4], port: u16, proto: u8, service_id: u32) -> Result<()> {
        let key = FrontendKey { addr, port, proto, _pad: 0 };
        Ok(self.hash::<FrontendKey, Frontend>(maps::FRONTENDS)?.insert(key, Frontend { service_id }, 0)?)
    }

    pub fn remove_frontend(&mut self, addr: [u8; 4], port: u16, proto: u8) -> Result<()> {
        let key = FrontendKey { addr, port, proto, _pad: 0 };
        Ok(self.hash::<FrontendKey, Frontend>(maps::FRONTENDS)?.remove(&key)?)
    }

    pub fn add_local_addr(&mut self, addr: [u8; 4]) -> Result<()> {
        Ok(self.hash::<[u8; 4], u32>(maps::LOCAL_ADDRS)?.insert(addr, 1, 0)?)
    }

    pub fn set_service(&mut self, id: u32, service: Service) -> Result<()> {
        Ok(self.array::<Service>(maps::SERVICES)?.set(id, service, 0)?)
    }

    pub fn set_backend(&mut self, id: u32, addr: [u8; 4], port: u16) -> Result<()> {
        self.write_backend(id, Backend { addr, port, flags: 0 })
    }

    pub fn write_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        Ok(self.array::<Backend>(maps::BACKENDS)?.set(id, backend, 0)?)
    }

    /// Fills service `id`'s Maglev table by cycling through `backend_ids` (0 = empty slots).
    pub fn set_maglev(&mut self, service_id: u32, backend_ids: &[u32]) -> Result<()> {
        let mut table = self.array::<u32>(maps::MAGLEV)?;
        for slot in 0..MAGLEV_SIZE {
            let id = if backend_ids.is_empty() { 0 } else { backend_ids[slot as usize % backend_ids.len()] };
            table.set(service_id * MAGLEV_SIZE + slot, id, 0)?;
        }
        Ok(())
    }

    /// Marks `vni` as one of this swarm's overlays.
    pub fn add_overlay(&mut self, vni: u32) -> Result<()> {
        Ok(self.hash::<u32, u32>(maps::OVERLAYS)?.insert(vni, 1, 0)?)
    }

    /// Lets the datapath transmit on `ifindex` (XDP_TX / redirect).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports =
            DevMapHash::try_from(self.ebpf.map_mut(maps::TX_PORTS).ok_or_else(|| anyhow!("no tx ports"))?)?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    pub fn flow(&mut self, key: &FlowKey) -> Result<Option<Flow>> {
        match self.hash::<FlowKey, Flow>(maps::CONNTRACK)?.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn set_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        Ok(self.hash::<FlowKey, Flow>(maps::CONNTRACK)?.insert(key, flow, 0)?)
    }

    pub fn flows(&mut self) -> Result<Vec<(FlowKey, Flow)>> {
        let map = self.hash::<FlowKey, Flow>(maps::CONNTRACK)?;
        Ok(map.iter().collect::<Result<Vec<_>, _>>()?)
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
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: t is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs `ip` (or another tool) in the calling thread's network namespace.
pub fn sh(cmd: &str) -> Result<()> {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
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
        for (name, mac, addr) in [
            ("lan", LAN_MAC, "198.18.0.1/24"),
            ("dc", DC_MAC, "198.18.2.1/24"),
            ("other", OTHER_MAC, "198.18.4.1/24"),
        ] {
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
