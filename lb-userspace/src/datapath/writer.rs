//! Writes plans into the pinned maps. The writer only executes a [`Diff`] the planner computed;
//! its one job is the order, chosen so the datapath never follows a reference to something not
//! yet written: SNAT addresses (so replies of new flows are recognised); settings; overlay VNIs; backends before the Maglev slots that name them; slots before the
//! service whose `active_backends` lets new flows use them; services before the frontends that
//! lead to them; and only then removals (frontends, then the services they led to, then those
//! services' slots, then removed backends' `BACKEND_REMOVED` flag (their entry stays, for the
//! connections still on them), then VNIs no network uses, then SNAT addresses no service uses).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, xdp::DevMapHash};
use lb_common::{BACKEND_REMOVED, Backend, Frontend, FrontendKey, Service, Settings, Traffic, maps as names};
use tracing::debug;

use super::{
    maglev::MaglevTables,
    members::{Members, Synced},
    pin_path,
};
use crate::planner::{Diff, Plan, PlannedMember, StatsReset, TRACKED_BITS, frontend_key, port_bits, snat_addrs};

/// The maps the agent writes, opened from their pins.
pub struct Writer {
    settings: Array<MapData, Settings>,
    fe_ports: Array<MapData, u8>,
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    local_addrs: HashMap<MapData, [u8; 4], u32>,
    snat_addrs: HashMap<MapData, [u8; 4], u32>,
    services: Array<MapData, Service>,
    backends: Array<MapData, Backend>,
    maglev: MaglevTables,
    svc_stats: PerCpuArray<MapData, Traffic>,
    be_stats: PerCpuArray<MapData, Traffic>,
    tx_ports: DevMapHash<MapData>,
    overlays: HashMap<MapData, u32, u32>,
    members: Members,
    cpus: usize,
    /// Ports whose frontends are gone while connections through them may still run: port ->
    /// its "tracked" bits. [`Writer::release_ports`] clears them once no connection is left.
    draining: BTreeMap<u16, u8>,
}

pub(crate) fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_path(pin_dir, name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

macro_rules! typed {
    ($pin_dir:expr, $name:expr) => {
        anyhow::Context::with_context($crate::datapath::writer::open($pin_dir, $name)?.try_into(), || {
            format!("map {} has an unexpected type", $name)
        })?
    };
}
pub(crate) use typed;

impl Writer {
    /// Opens the maps pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Writer> {
        Ok(Writer {
            settings: typed!(pin_dir, names::SETTINGS),
            fe_ports: typed!(pin_dir, names::FE_PORTS),
            frontends: typed!(pin_dir, names::FRONTENDS),
            local_addrs: typed!(pin_dir, names::LOCAL_ADDRS),
            snat_addrs: typed!(pin_dir, names::SNAT_ADDRS),
            services: typed!(pin_dir, names::SERVICES),
            backends: typed!(pin_dir, names::BACKENDS),
            maglev: MaglevTables::open(pin_dir)?,
            svc_stats: typed!(pin_dir, names::SVC_STATS),
            be_stats: typed!(pin_dir, names::BE_STATS),
            tx_ports: typed!(pin_dir, names::TX_PORTS),
            overlays: typed!(pin_dir, names::OVERLAYS),
            members: Members::open(pin_dir)?,
            cpus: aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?,
            draining: BTreeMap::new(),
        })
    }

    /// Zeroes the counters of ids that start counting anew ([`crate::planner::stats_to_reset`]); before
    /// [`Writer::apply`], so a new backend's first packets land on zero.
    pub fn reset_stats(&mut self, reset: &StatsReset) -> Result<()> {
        let zero = || PerCpuValues::try_from(vec![Traffic::default(); self.cpus]);
        for id in &reset.services {
            self.svc_stats.set(*id, zero()?, 0).with_context(|| format!("resetting slb_svc_stats[{id}]"))?;
        }
        for id in &reset.backends {
            self.be_stats.set(*id, zero()?, 0).with_context(|| format!("resetting slb_be_stats[{id}]"))?;
        }
        Ok(())
    }

    /// Applies `diff` in the safe order described at the top of this module.
    pub fn apply(&mut self, diff: &Diff) -> Result<()> {
        for addr in &diff.snat_addrs {
            self.snat_addrs.insert(addr, 1, 0).with_context(|| format!("adding {addr:?} to slb_snat_addrs"))?;
        }
        if let Some(settings) = &diff.settings {
            self.settings.set(0, settings, 0).context("writing slb_settings")?;
        }
        for vni in &diff.overlays {
            self.overlays.insert(vni, 1, 0).with_context(|| format!("adding VNI {vni} to slb_overlays"))?;
        }
        for (id, backend) in &diff.backends {
            self.backends.set(*id, backend, 0).with_context(|| format!("writing slb_backends[{id}]"))?;
        }
        self.maglev.write_all(&diff.maglev)?;
        for (id, service) in &diff.services {
            self.services.set(*id, service, 0).with_context(|| format!("writing slb_services[{id}]"))?;
        }
        for (key, frontend) in &diff.frontends {
            self.frontends.insert(key, frontend, 0).with_context(|| format!("writing slb_frontends {key:?}"))?;
        }
        for (port, bits) in &diff.fe_ports {
            self.fe_ports.set(*port as u32, bits, 0).with_context(|| format!("writing slb_fe_ports[{port}]"))?;
            self.note_port(*port, *bits);
        }
        for key in &diff.removed_frontends {
            remove_if_present(self.frontends.remove(key)).with_context(|| format!("removing slb_frontends {key:?}"))?;
        }
        for id in &diff.removed_services {
            self.services.set(*id, Service::default(), 0).with_context(|| format!("clearing slb_services[{id}]"))?;
        }
        for id in &diff.removed_maglev {
            self.maglev.remove(*id)?;
        }
        for (id, backend) in &diff.removed_backends {
            self.backends.set(*id, backend, 0).with_context(|| format!("flagging slb_backends[{id}] removed"))?;
        }
        for vni in &diff.removed_overlays {
            remove_if_present(self.overlays.remove(vni))
                .with_context(|| format!("removing VNI {vni} from slb_overlays"))?;
        }
        for addr in &diff.removed_snat_addrs {
            remove_if_present(self.snat_addrs.remove(addr))
                .with_context(|| format!("removing {addr:?} from slb_snat_addrs"))?;
        }
        debug!(
            backends = diff.backends.len(),
            maglev_tables = diff.maglev.len() + diff.removed_maglev.len(),
            services = diff.services.len(),
            frontends = diff.frontends.len() + diff.removed_frontends.len(),
            "map writes"
        );
        Ok(())
    }

    /// After a full sync: removes what an earlier run left that `plan` does not have (frontends,
    /// port bits, VNIs, SNAT addresses, Maglev tables) and flags the backends it had that no service has now
    /// (removed while no agent ran). Returns how many entries it changed.
    pub fn sweep(&mut self, plan: &Plan) -> Result<usize> {
        let wanted: HashSet<FrontendKey> =
            plan.services.iter().flat_map(|s| s.frontends.iter().map(frontend_key)).collect();
        let stale: Vec<FrontendKey> =
            self.frontends.keys().filter_map(|k| k.ok()).filter(|k| !wanted.contains(k)).collect();
        for key in &stale {
            remove_if_present(self.frontends.remove(key))?;
        }
        let stale_vnis: Vec<u32> =
            self.overlays.keys().filter_map(|k| k.ok()).filter(|v| !plan.overlays.contains(v)).collect();
        for vni in &stale_vnis {
            remove_if_present(self.overlays.remove(vni))?;
        }
        let snat = snat_addrs(plan);
        let stale_snat: Vec<[u8; 4]> =
            self.snat_addrs.keys().filter_map(|k| k.ok()).filter(|a| !snat.contains(a)).collect();
        for addr in &stale_snat {
            remove_if_present(self.snat_addrs.remove(addr))?;
        }
        let ports = port_bits(plan);
        let mut cleared = 0;
        for port in 0..names::FE_PORTS_SIZE {
            // "Tracked" bits stay: connections of a removed frontend may still run (the table
            // sweep clears them).
            let present = self.fe_ports.get(&port, 0)?;
            let want = ports.get(&(port as u16)).copied().unwrap_or(0) | present & TRACKED_BITS;
            self.note_port(port as u16, want);
            if present != want {
                self.fe_ports.set(port, want, 0)?;
                cleared += 1;
            }
        }
        let services: HashSet<u32> = plan.services.iter().map(|s| s.id).collect();
        let stale_tables: Vec<u32> = self.maglev.ids().into_iter().filter(|id| !services.contains(id)).collect();
        for id in &stale_tables {
            self.maglev.remove(*id)?;
        }
        let live = plan.backend_ids();
        let mut flagged = 0;
        for id in (1..names::MAX_BACKENDS).filter(|id| !live.contains(id)) {
            let backend = self.backends.get(&id, 0).with_context(|| format!("reading slb_backends[{id}]"))?;
            if backend.addr != [0; 4] && backend.flags & BACKEND_REMOVED == 0 {
                let removed = Backend { flags: BACKEND_REMOVED, ..backend };
                self.backends.set(id, removed, 0).with_context(|| format!("flagging slb_backends[{id}] removed"))?;
                flagged += 1;
            }
        }
        Ok(stale.len() + stale_vnis.len() + stale_snat.len() + stale_tables.len() + cleared + flagged)
    }

    fn note_port(&mut self, port: u16, bits: u8) {
        if bits != 0 && bits & !TRACKED_BITS == 0 {
            self.draining.insert(port, bits);
        } else {
            self.draining.remove(&port);
        }
    }

    /// Clears the "tracked" bit of every draining port (frontend gone) whose protocol has no
    /// connection left in `live` ((port, protocol) of live client-side entries, from a table
    /// scan). Returns the ports released. No new connection can start on a draining port, so a
    /// scan older than this call cannot miss one.
    pub fn release_ports(&mut self, live: &BTreeSet<(u16, u8)>) -> Result<Vec<u16>> {
        let mut released = Vec::new();
        for (port, bits) in self.draining.clone() {
            let mut keep = bits;
            for proto in [crate::model::Proto::Tcp, crate::model::Proto::Udp] {
                let bit = proto.port_bit() << lb_common::PORT_TRACKED_SHIFT;
                if bits & bit != 0 && !live.contains(&(port, proto.number())) {
                    keep &= !bit;
                }
            }
            if keep != bits {
                self.fe_ports.set(port as u32, keep, 0).with_context(|| format!("writing slb_fe_ports[{port}]"))?;
                self.note_port(port, keep);
                released.push(port);
            }
        }
        Ok(released)
    }

    /// Makes `slb_local_addrs` exactly `addrs`; returns whether anything changed.
    pub fn sync_local_addrs(&mut self, addrs: &BTreeSet<Ipv4Addr>) -> Result<bool> {
        let present: BTreeSet<[u8; 4]> = self.local_addrs.keys().filter_map(|k| k.ok()).collect();
        let wanted: BTreeSet<[u8; 4]> = addrs.iter().map(|a| a.octets()).collect();
        for addr in wanted.difference(&present) {
            self.local_addrs.insert(addr, 1, 0).with_context(|| format!("adding {addr:?} to slb_local_addrs"))?;
        }
        for addr in present.difference(&wanted) {
            remove_if_present(self.local_addrs.remove(addr))?;
        }
        Ok(wanted != present)
    }

    /// Makes `slb_sk_member` hold exactly `members`' namespaces.
    pub fn sync_members(&mut self, members: &[PlannedMember]) -> Result<Synced> {
        self.members.sync(members)
    }

    /// Lets the datapath redirect out of these interfaces.
    pub fn add_tx_ports(&mut self, ifindexes: &[u32]) -> Result<()> {
        for ifindex in ifindexes {
            self.tx_ports
                .insert(*ifindex, *ifindex, None, 0)
                .with_context(|| format!("adding ifindex {ifindex} to slb_tx_ports"))?;
        }
        Ok(())
    }
}

fn remove_if_present(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
