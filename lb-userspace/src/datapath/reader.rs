//! Reads the datapath's counters from the pinned maps, summing per-CPU values (the connection
//! tables are read by [`super::tables`]). Read-only, so it runs beside a live `swarmlb run`.

use std::path::Path;

use anyhow::Result;
use aya::maps::{HashMap, MapData, PerCpuArray};
use lb_common::{CtEvent, MemberKey, Reason, SockEvent, Traffic, maps as names};

use super::writer::typed;

pub struct Counters {
    svc_stats: PerCpuArray<MapData, Traffic>,
    be_stats: PerCpuArray<MapData, Traffic>,
    reasons: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    sock_events: PerCpuArray<MapData, u64>,
    members: HashMap<MapData, MemberKey, u32>,
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Counters> {
        Ok(Counters {
            svc_stats: typed!(pin_dir, names::SVC_STATS),
            be_stats: typed!(pin_dir, names::BE_STATS),
            reasons: typed!(pin_dir, names::REASONS),
            events: typed!(pin_dir, names::CT_EVENTS),
            sock_events: typed!(pin_dir, names::SK_EVENTS),
            members: typed!(pin_dir, names::SK_MEMBER),
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

impl Counters {
    /// Every socket-program event with its count, in map order.
    pub fn sock_events(&self) -> Result<Vec<(SockEvent, u64)>> {
        SockEvent::ALL.iter().map(|e| Ok((*e, self.sock_events.get(&(*e as u32), 0)?.iter().sum()))).collect()
    }

    /// How many network namespaces `slb_sk_member` registers.
    pub fn registered_namespaces(&self) -> usize {
        let cookies: std::collections::BTreeSet<u64> =
            self.members.keys().filter_map(|k| k.ok()).map(|k| k.netns_cookie).collect();
        cookies.len()
    }
}

fn sum(per_cpu: &[Traffic]) -> Traffic {
    per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
        packets: a.packets + t.packets,
        bytes: a.bytes + t.bytes,
        new_flows: a.new_flows + t.new_flows,
    })
}
