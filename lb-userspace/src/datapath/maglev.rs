//! The Maglev tables as the datapath holds them: `slb_maglev`, an array of maps indexed by
//! service id, each entry one inner array (`slb_mgl_<id>`) whose entry 0 is the table size `M`
//! and entries `1..=M` the backend ids.
//!
//! A table is written whole into a fresh inner map and then swapped into its service's slot:
//! one `BPF_MAP_CREATE` and one `BPF_MAP_UPDATE_BATCH` per table, and one batch update of the
//! outer map for many tables, so a packet sees the old table or the new one, never a mix, and a
//! 65,521-slot table costs a few syscalls rather than 65,521. The kernel frees the old inner map
//! once no program can still be reading it (an RCU grace period after the swap).

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use aya::maps::{Array, IterableMap, MapData, of_maps::ArrayOfMaps};
use lb_common::maps::{self as names, MAGLEV_INNER, MAX_SERVICES};

use super::{batch, pin_path, writer::typed};

/// `slb_maglev`, opened from its pin (twice: aya's type for lookups and swaps, the bare map for
/// the deletion aya lacks).
pub struct MaglevTables {
    outer: ArrayOfMaps<MapData, Array<MapData, u32>>,
    raw: MapData,
}

impl MaglevTables {
    pub fn open(pin_dir: &Path) -> Result<MaglevTables> {
        let path = pin_path(pin_dir, names::MAGLEV);
        let raw = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(MaglevTables { outer: typed!(pin_dir, names::MAGLEV), raw })
    }

    /// Makes each `table` (backend id per slot) the table of its service, each atomically: every
    /// table is written into a new inner map, then up to [`SWAP_CHUNK`] at a time are swapped in
    /// with one syscall (each swap waits one RCU grace period, so one per table would cost
    /// milliseconds each).
    pub fn write_all(&mut self, tables: &[(u32, Arc<[u32]>)]) -> Result<()> {
        for chunk in tables.chunks(SWAP_CHUNK) {
            let inner = chunk.iter().map(|(id, table)| new_table(*id, table)).collect::<Result<Vec<_>>>()?;
            let slots: Vec<u32> = chunk.iter().map(|(id, _)| *id).collect();
            let refs: Vec<&MapData> = inner.iter().collect();
            batch::set_inner_maps(&self.raw, &slots, &refs)
                .with_context(|| format!("swapping {} tables into slb_maglev", slots.len()))?;
            // Our descriptors close here; the outer map holds the tables.
        }
        Ok(())
    }

    /// Takes `service_id`'s table out; `Ok(false)`: it had none.
    pub fn remove(&mut self, service_id: u32) -> Result<bool> {
        batch::delete_one(&self.raw, service_id).with_context(|| format!("removing slb_maglev[{service_id}]"))
    }

    /// `service_id`'s table (slots only), if it has one.
    pub fn read(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        let inner = match self.outer.get(&service_id, 0) {
            Ok(inner) => inner,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading slb_maglev[{service_id}]")),
        };
        let mut entries = batch::dump::<u32, u32>(inner.map(), 1 << 16)
            .with_context(|| format!("reading slb_maglev[{service_id}]"))?;
        entries.sort_unstable();
        let size = entries.first().map_or(0, |(_, size)| *size) as usize;
        Ok(Some(entries.into_iter().skip(1).take(size).map(|(_, backend)| backend).collect()))
    }

    /// The service ids that have a table.
    pub fn ids(&self) -> Vec<u32> {
        (1..MAX_SERVICES).filter(|id| self.outer.get(id, 0).is_ok()).collect()
    }
}

/// Tables created before one swap: bounds the descriptors open at once.
const SWAP_CHUNK: usize = 256;

/// A new inner map `slb_mgl_<id>` holding `table`: its size in entry 0, the slots after it.
fn new_table(service_id: u32, table: &[u32]) -> Result<MapData> {
    let size = table.len() as u32;
    let name = format!("{}{service_id}", MAGLEV_INNER.name);
    let def = aya_obj::Map::new_from_params(
        MAGLEV_INNER.kind as u32,
        MAGLEV_INNER.key_size,
        MAGLEV_INNER.value_size,
        size + 1,
        MAGLEV_INNER.flags,
    );
    let inner = MapData::create(def, &name, None).with_context(|| format!("creating {name} ({size} slots)"))?;
    let keys: Vec<u32> = (0..=size).collect();
    let values: Vec<u32> = std::iter::once(size).chain(table.iter().copied()).collect();
    batch::update(&inner, &keys, &values).with_context(|| format!("writing {name}"))?;
    Ok(inner)
}
