//! Reads the datapath's counters from the pinned maps, summing per-CPU values (the connection
//! tables are read by [`super::tables`]). Read-only, so it runs beside a live `swarmlb run`.

use std::path::Path;

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use lb_common::{CtEvent, Reason, Traffic, maps as names};

use super::writer::typed;

pub struct Counters {
    svc_stats: PerCpuArray<MapData, Traffic>,
    be_stats: PerCpuArray<MapData, Traffic>,
    reasons: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Counters> {
        Ok(Counters {
            svc_stats: typed!(pin_dir, names::SVC_STATS),
            be_stats: typed!(pin_dir, names::BE_STATS),
            reasons: typed!(pin_dir, names::REASONS),
            events: typed!(pin_dir, names::CT_EVENTS),
        })
    }

    pub fn service(&self, id: u32) -> Result<Traffic> {
        Ok(sum(&self.svc_stats.get(&id, 0)?))
    }

    pub fn backend(&self, id: u32) -> Result<Traffic> {
        Ok(sum(&self.be_stats.get(&id, 0)?))
    }

    /// Every reason with its packet count, in map order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL.iter().map(|r| Ok((*r, self.reasons.get(&(*r as u32), 0)?.iter().sum()))).collect()
    }

    /// Every connection-table event with its count, in map order.
    pub fn events(&self) -> Result<Vec<(CtEvent, u64)>> {
        CtEvent::ALL.iter().map(|e| Ok((*e, self.events.get(&(*e as u32), 0)?.iter().sum()))).collect()
    }
}

fn sum(per_cpu: &[Traffic]) -> Traffic {
    per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
        new_flows: a.new_flows + t.new_flows,
    })
}
