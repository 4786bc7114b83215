//! The connection tables seen from the agent: one batched read of the main and new-flow tables
//! ([`Tables::scan`]) gives the live connections (`swarmlb flows`), NAT port use per backend
//! (`status`, `/metrics`), and what the table sweep removes.
//!
//! The sweep is the end of every entry the datapath does not end itself. The datapath treats an
//! entry idle past its state's timeout as gone, but only LRU pressure frees its slot; left there,
//! closed connections would fill the main table until the LRU evicted idle established ones,
//! which full NAT cannot recover. So the agent removes idled-out entries every
//! [`SWEEP_INTERVAL`]. Race, written down: between the read and the removal the datapath may
//! have reused a tuple (a client's SYN on an idled-out new-flow entry overwrites it); each entry
//! is read again just before the batched removal and kept if it has been refreshed, which leaves
//! a window of one syscall.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData};
use lb_common::{DIR_TO_BACKEND, DIR_TO_CLIENT, Flow, FlowKey, idle_timeout_ns, maps as names};

use super::{batch, writer::typed};

/// How often the agent removes idled-out entries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Entries read per batch syscall.
const CHUNK: u32 = 8192;

/// The two connection tables, opened from their pins.
pub struct Tables {
    main: BpfHashMap<MapData, FlowKey, Flow>,
    new_flows: BpfHashMap<MapData, FlowKey, Flow>,
}

/// Which table an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Established connections (and their closing states).
    Main,
    /// Unconfirmed connections: handshakes in progress, UDP flows not yet answered.
    New,
}

/// One read of both tables at time `now`.
pub struct Scan {
    /// Live entries, both directions, with their table.
    pub live: Vec<(FlowKey, Flow, Table)>,
    /// Entries idle past their state's timeout.
    pub expired: Vec<(FlowKey, Flow, Table)>,
}

impl Scan {
    /// Live entries per table: (main, new-flow).
    pub fn live_counts(&self) -> (usize, usize) {
        let main = self.live.iter().filter(|(_, _, t)| *t == Table::Main).count();
        (main, self.live.len() - main)
    }

    /// NAT ports held per backend id: the live reverse entries (one per connection), whatever
    /// their SNAT address.
    pub fn nat_ports_by_backend(&self) -> HashMap<u32, u64> {
        let mut ports = HashMap::new();
        for (_, flow, _) in self.live.iter().filter(|(_, f, _)| f.direction == DIR_TO_CLIENT) {
            *ports.entry(flow.backend_id).or_default() += 1;
        }
        ports
    }

    /// (destination port, protocol) of every live client-side entry: the frontend ports that
    /// still carry connections.
    pub fn client_ports(&self) -> BTreeSet<(u16, u8)> {
        self.live
            .iter()
            .filter(|(_, f, _)| f.direction == DIR_TO_BACKEND)
            .map(|(k, _, _)| (k.dst_port, k.proto))
            .collect()
    }
}

fn is_live(key: &FlowKey, flow: &Flow, now: u64) -> bool {
    now.saturating_sub(flow.last_seen_ns) <= idle_timeout_ns(key.proto, flow.state)
}

impl Tables {
    pub fn open(pin_dir: &Path) -> Result<Tables> {
        Ok(Tables { main: typed!(pin_dir, names::CONNTRACK), new_flows: typed!(pin_dir, names::NEW_FLOWS) })
    }

    fn map(&self, table: Table) -> &BpfHashMap<MapData, FlowKey, Flow> {
        match table {
            Table::Main => &self.main,
            Table::New => &self.new_flows,
        }
    }

    /// Reads both tables (a few syscalls per 8192 entries) and sorts their entries into live and
    /// idled-out at `now` (CLOCK_MONOTONIC ns, the datapath's clock).
    pub fn scan(&self, now: u64) -> Result<Scan> {
        let mut scan = Scan { live: Vec::new(), expired: Vec::new() };
        for (table, name) in [(Table::Main, names::CONNTRACK), (Table::New, names::NEW_FLOWS)] {
            let entries = batch::dump::<FlowKey, Flow>(self.map(table).map(), CHUNK)
                .with_context(|| format!("reading {name}"))?;
            for (key, flow) in entries {
                let into = if is_live(&key, &flow, now) { &mut scan.live } else { &mut scan.expired };
                into.push((key, flow, table));
            }
        }
        Ok(scan)
    }

    /// Removes the entries `scan` found idled out that are still idled out now (see the module
    /// doc for the race this narrows). Returns how many it removed.
    pub fn remove_expired(&self, scan: &Scan, now: u64) -> Result<usize> {
        let mut removed = 0;
        for table in [Table::Main, Table::New] {
            let map = self.map(table);
            let doomed: Vec<FlowKey> = scan
                .expired
                .iter()
                .filter(|(_, _, t)| *t == table)
                .filter(|(key, _, _)| map.get(key, 0).is_ok_and(|flow| !is_live(key, &flow, now)))
                .map(|(key, _, _)| *key)
                .collect();
            removed += batch::delete(map.map(), &doomed).context("removing idled-out connection entries")?;
        }
        Ok(removed)
    }
}

/// What one sweep did.
pub struct Swept {
    /// Idled-out entries removed.
    pub removed: usize,
    /// (port, protocol) of the frontend ports live connections still use, for
    /// `Writer::release_ports`.
    pub client_ports: BTreeSet<(u16, u8)>,
}

impl Tables {
    /// One sweep at the current time: read both tables, remove what has idled out.
    pub fn sweep(&self) -> Result<Swept> {
        let now = monotonic_ns()?;
        let scan = self.scan(now)?;
        let removed = self.remove_expired(&scan, now)?;
        Ok(Swept { removed, client_ports: scan.client_ports() })
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which stamps the entries.
pub fn monotonic_ns() -> Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).context("clock_gettime(CLOCK_MONOTONIC)")?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}
