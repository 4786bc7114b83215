//! The Maglev tables as the datapath holds them: `slb_maglev`, an array of maps with two slots
//! per service ([`maglev_slot`]), each one inner array (`slb_mgl_<id>`) whose entry 0 is the
//! table size `M` and entries `1..=M` the backend ids, and `slb_maglev_gen`, which says which of
//! a service's two slots the datapath reads.
//!
//! A changed table is written whole into the slot not in use, then the generation is flipped: a
//! packet reads the generation once and then one table, so it sees the old table or the new one,
//! never a mix. The slot written is one the datapath stopped reading at least an RCU grace
//! period ago (every program that could still be reading it has finished): [`Grace`] waits for
//! one in the background after each flip, so a change costs a batch update of its table and of
//! the generations, with no wait, unless the same service changed again within that grace
//! period. A slot whose table has another size gets a new inner map, put in with one batch
//! update of `slb_maglev` per [`SWAP_CHUNK`] tables; the kernel waits one grace period for each
//! such update of a map of maps, which is the cost of a full sync and of a size change.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Condvar, Mutex},
};

use anyhow::{Context, Result};
use aya::maps::{Array, IterableMap, MapData, of_maps::ArrayOfMaps};
use lb_common::maps::{self as names, MAGLEV_INNER, MAX_SERVICES, maglev_slot};

use super::{batch, pin_path, writer::typed};

/// `slb_maglev` and `slb_maglev_gen`, opened from their pins, and what this writer knows about
/// the slots it retired.
pub struct MaglevTables {
    outer: ArrayOfMaps<MapData, Array<MapData, u32>>,
    raw: MapData,
    generations: Array<MapData, u32>,
    /// Slot -> the flip that retired it; it may be rewritten once [`Grace`] has passed it.
    retired: HashMap<u32, u64>,
    flips: u64,
    grace: Arc<Grace>,
}

impl MaglevTables {
    pub fn open(pin_dir: &Path) -> Result<MaglevTables> {
        let path = pin_path(pin_dir, names::MAGLEV);
        let raw = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let generations: Array<MapData, u32> = typed!(pin_dir, names::MAGLEV_GEN);
        // Another process (an agent before this one) may have retired any slot not in use just
        // now: each waits for a first grace period.
        let in_use: HashMap<u32, u32> =
            batch::dump(generations.map(), MAX_SERVICES).context("reading slb_maglev_gen")?.into_iter().collect();
        let retired =
            (1..MAX_SERVICES).map(|id| (maglev_slot(id, other(in_use.get(&id).copied().unwrap_or(0))), 1)).collect();
        let grace = Grace::start(pin_dir)?;
        Ok(MaglevTables { outer: typed!(pin_dir, names::MAGLEV), raw, generations, retired, flips: 1, grace })
    }

    /// Makes each `table` (backend id per slot) the table of its service, each atomically.
    pub fn write_all(&mut self, tables: &[(u32, Arc<[u32]>)]) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        let mut flips = Vec::with_capacity(tables.len());
        for (id, _) in tables {
            let next = other(self.generations.get(id, 0).with_context(|| format!("reading slb_maglev_gen[{id}]"))?);
            flips.push((*id, next));
        }
        let unsettled = flips.iter().filter_map(|(id, g)| self.retired.get(&maglev_slot(*id, *g))).max();
        if let Some(&flip) = unsettled {
            self.grace.wait_past(flip);
        }
        let mut new = Vec::new();
        for ((id, table), (_, g)) in tables.iter().zip(&flips) {
            let slot = maglev_slot(*id, *g);
            match self.reusable(slot, table.len())? {
                Some(inner) => fill(inner.map(), table).with_context(|| format!("rewriting slb_maglev[{slot}]"))?,
                None => new.push((slot, new_table(*id, table)?)),
            }
        }
        for chunk in new.chunks(SWAP_CHUNK) {
            let slots: Vec<u32> = chunk.iter().map(|(slot, _)| *slot).collect();
            let inner: Vec<&MapData> = chunk.iter().map(|(_, inner)| inner).collect();
            batch::set_inner_maps(&self.raw, &slots, &inner)
                .with_context(|| format!("putting {} tables into slb_maglev", slots.len()))?;
        }
        let (ids, generations): (Vec<u32>, Vec<u32>) = flips.iter().copied().unzip();
        batch::update(self.generations.map(), &ids, &generations).context("flipping slb_maglev_gen")?;
        self.flips += 1;
        for (id, g) in flips {
            self.retired.remove(&maglev_slot(id, g));
            self.retired.insert(maglev_slot(id, other(g)), self.flips);
        }
        self.grace.request(self.flips);
        Ok(())
    }

    /// The inner map in `slot` if it has room for exactly `size` slots (it can be rewritten in
    /// place), else `None`.
    fn reusable(&self, slot: u32, size: usize) -> Result<Option<Array<MapData, u32>>> {
        match self.outer.get(&slot, 0) {
            Ok(inner) => {
                let entries = inner.map().info().context("reading a Maglev table's size")?.max_entries();
                Ok((entries as usize == size + 1).then_some(inner))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading slb_maglev[{slot}]")),
        }
    }

    /// Takes `service_id`'s tables out; `Ok(false)`: it had none.
    pub fn remove(&mut self, service_id: u32) -> Result<bool> {
        let mut had = false;
        for g in 0..2 {
            let slot = maglev_slot(service_id, g);
            had |= batch::delete_one(&self.raw, slot).with_context(|| format!("removing slb_maglev[{slot}]"))?;
            self.retired.remove(&slot);
        }
        self.generations.set(service_id, 0, 0).with_context(|| format!("resetting slb_maglev_gen[{service_id}]"))?;
        Ok(had)
    }

    /// `service_id`'s table in use (slots only), if it has one.
    pub fn read(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        let g =
            self.generations.get(&service_id, 0).with_context(|| format!("reading slb_maglev_gen[{service_id}]"))?;
        let slot = maglev_slot(service_id, g);
        let inner = match self.outer.get(&slot, 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading slb_maglev[{slot}]")),
        };
        let mut entries =
            batch::dump::<u32, u32>(inner.map(), 1 << 16).with_context(|| format!("reading slb_maglev[{slot}]"))?;
        entries.sort_unstable();
        let size = entries.first().map_or(0, |(_, size)| *size) as usize;
        Ok(Some(entries.into_iter().skip(1).take(size).map(|(_, backend)| backend).collect()))
    }

    /// The service ids that have a table.
    pub fn ids(&self) -> Vec<u32> {
        (1..MAX_SERVICES).filter(|id| (0..2).any(|g| self.outer.get(&maglev_slot(*id, g), 0).is_ok())).collect()
    }
}

/// The generation that is not `generation`.
fn other(generation: u32) -> u32 {
    (generation & 1) ^ 1
}

/// Tables created before one swap: bounds the descriptors open at once.
const SWAP_CHUNK: usize = 256;

/// Writes `table` into `inner`: its size in entry 0, the slots after it.
fn fill(inner: &MapData, table: &[u32]) -> Result<()> {
    let size = table.len() as u32;
    let keys: Vec<u32> = (0..=size).collect();
    let values: Vec<u32> = std::iter::once(size).chain(table.iter().copied()).collect();
    Ok(batch::update(inner, &keys, &values)?)
}

/// A new inner map `slb_mgl_<id>` holding `table`.
fn new_table(service_id: u32, table: &[u32]) -> Result<MapData> {
    let name = format!("{}{service_id}", MAGLEV_INNER.name);
    let inner = new_inner(&name, table.len() as u32 + 1)?;
    fill(&inner, table).with_context(|| format!("writing {name}"))?;
    Ok(inner)
}

fn new_inner(name: &str, entries: u32) -> Result<MapData> {
    let def = aya_obj::Map::new_from_params(
        MAGLEV_INNER.kind as u32,
        MAGLEV_INNER.key_size,
        MAGLEV_INNER.value_size,
        entries,
        MAGLEV_INNER.flags,
    );
    MapData::create(def, name, None).with_context(|| format!("creating {name} ({entries} entries)"))
}

/// Waits for RCU grace periods on a thread of its own: after flip `n` is requested, once a grace
/// period has passed `passed` is at least `n`, and no program still reads a slot `n` retired.
/// The kernel offers no direct call; an update of a map of maps waits for one (before it
/// returns, every program that started before the call has finished), so the thread rewrites
/// slot 0 of `slb_maglev`, which belongs to service id 0 ("none") and is never read.
struct Grace {
    state: Mutex<GraceState>,
    changed: Condvar,
}

#[derive(Default)]
struct GraceState {
    requested: u64,
    passed: u64,
}

impl Grace {
    fn start(pin_dir: &Path) -> Result<Arc<Grace>> {
        let path = pin_path(pin_dir, names::MAGLEV);
        let outer = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let inner = new_inner(&format!("{}0", MAGLEV_INNER.name), 1)?;
        let grace = Arc::new(Grace { state: Mutex::new(GraceState::default()), changed: Condvar::new() });
        let waiter = Arc::downgrade(&grace);
        std::thread::Builder::new().name("maglev-grace".into()).spawn(move || {
            while let Some(grace) = waiter.upgrade() {
                let Some(target) = grace.next_request() else { return };
                drop(grace);
                let waited = batch::set_inner_maps(&outer, &[0], &[&inner]);
                let Some(grace) = waiter.upgrade() else { return };
                if let Err(e) = waited {
                    tracing::warn!("waiting for an RCU grace period failed: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                grace.lock().passed = target;
                grace.changed.notify_all();
            }
        })?;
        Ok(grace)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GraceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a grace period to pass after flip `flip`.
    fn request(&self, flip: u64) {
        let mut s = self.lock();
        s.requested = s.requested.max(flip);
        self.changed.notify_all();
    }

    /// Blocks until a grace period has passed after flip `flip`.
    fn wait_past(&self, flip: u64) {
        self.request(flip);
        let mut s = self.lock();
        while s.passed < flip {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The waiter thread: the next flip to wait past, once one is requested; `None` when the
    /// tables are gone (the waiter then ends).
    fn next_request(self: &Arc<Self>) -> Option<u64> {
        let mut s = self.lock();
        while s.requested <= s.passed {
            let (next, timeout) =
                self.changed.wait_timeout(s, std::time::Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner());
            s = next;
            if timeout.timed_out() && Arc::strong_count(self) == 1 {
                return None;
            }
        }
        Some(s.requested)
    }
}
