//! Pinned maps across agent upgrades and restarts. A pin is reused only when it is exactly the
//! map this build creates: type, key size, value size, entries and flags, what the kernel
//! compares (and cilium/ebpf before reusing a pin). Any other pin is removed so the loader
//! creates the map afresh, and what can be carried over is: the connection tables, so open
//! connections survive an upgrade that changes their size, and the counters. Everything else
//! is rewritten whole by the agent's first full sync, which runs before the new program is
//! attached, so no packet meets an empty table.
//!
//! Race, written down: between the first copy and the swap of the programs, the old program
//! keeps serving on the old tables and may add connections there. [`Carried::finish`], after
//! the swap, copies the entries the new tables do not have yet, so only an entry the old program
//! changed in that window (a state change, a refreshed `last_seen`) is carried in its earlier
//! form.

use std::{collections::HashSet, os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::{
    Pod,
    maps::{MapData, PerCpuArray, PerCpuValues},
};
use lb_common::{
    Flow, FlowKey, Traffic,
    maps::{self as names, MapKind, MapSpec},
};
use tracing::{info, warn};

use super::{batch, pin_path};

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `slb_conntrack` entries (two per connection).
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes { conntrack: names::CONNTRACK_SIZE }
    }
}

/// The maps this build creates, with `sizes` applied.
pub fn expected(sizes: &MapSizes) -> Vec<MapSpec> {
    names::SPECS
        .iter()
        .map(|spec| match spec.name {
            names::CONNTRACK => MapSpec { max_entries: sizes.conntrack, ..*spec },
            _ => *spec,
        })
        .collect()
}

/// What a pinned map is, read from the kernel: `(type, key size, value size, entries, flags)`.
type Shape = (u32, u32, u32, u32, u32);

fn shape_of(spec: &MapSpec) -> Shape {
    (spec.kind as u32, spec.key_size, spec.value_size, spec.max_entries, spec.flags)
}

/// The kernel makes every devmap read-only to programs (`dev_map_alloc`).
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// What the kernel reports for a map created from `spec`: its shape, plus the flags the kernel
/// adds on its own.
fn created_shape(spec: &MapSpec) -> Shape {
    let (kind, key, value, entries, flags) = shape_of(spec);
    let added = if spec.kind == MapKind::DevMapHash { BPF_F_RDONLY_PROG } else { 0 };
    (kind, key, value, entries, flags | added)
}

fn pinned_shape(path: &Path) -> Result<(Shape, MapData)> {
    let map = MapData::from_pin(path)?;
    let info = map.info()?;
    let shape = (info.map_type()? as u32, info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
    Ok((shape, map))
}

/// How a pinned map differs from what this build wants, in words.
fn differences(have: Shape, want: Shape) -> String {
    let fields = [
        ("type", have.0, want.0),
        ("key size", have.1, want.1),
        ("value size", have.2, want.2),
        ("entries", have.3, want.3),
        ("flags", have.4, want.4),
    ];
    let changed = fields.iter().filter(|(_, a, b)| a != b).map(|(what, a, b)| format!("{what} {a} -> {b}"));
    changed.collect::<Vec<_>>().join(", ")
}

/// The old maps whose contents go into their replacements, kept open after their pins are gone.
#[derive(Default)]
pub struct Carried {
    maps: Vec<(MapSpec, MapData)>,
}

/// Before loading: removes every pin in `pin_dir` that does not match `specs`, keeping the old
/// maps whose contents can be carried over.
pub fn check_pins(pin_dir: &Path, specs: &[MapSpec]) -> Result<Carried> {
    let mut carried = Carried::default();
    for want in specs {
        let path = pin_path(pin_dir, want.name);
        if !path.exists() {
            continue;
        }
        let want_shape = created_shape(want);
        let old = match pinned_shape(&path) {
            Ok((have, _)) if have == want_shape => continue,
            Ok((have, map)) => {
                let changes = differences(have, want_shape);
                if (have.0, have.1, have.2) == (want_shape.0, want_shape.1, want_shape.2) && carries(want) {
                    warn!(
                        map = want.name,
                        "pinned map differs from this build ({changes}); recreating it and carrying its entries over"
                    );
                    Some((*want, map))
                } else {
                    warn!(
                        map = want.name,
                        "pinned map differs from this build ({changes}); recreating it (the agent's first sync rewrites it)"
                    );
                    None
                }
            }
            Err(e) => {
                warn!(map = want.name, "pinned map unreadable ({e:#}); recreating it");
                None
            }
        };
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        carried.maps.extend(old);
    }
    Ok(carried)
}

/// Whether [`Carried`] knows how to copy this map's entries.
fn carries(spec: &MapSpec) -> bool {
    [names::CONNTRACK, names::NEW_FLOWS, names::SVC_STATS, names::BE_STATS, names::REASONS, names::CT_EVENTS]
        .contains(&spec.name)
}

impl Carried {
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// After loading, before the programs are swapped: copies every carried map into its
    /// replacement.
    pub fn copy(&self, pin_dir: &Path) -> Result<()> {
        for (old, map) in &self.maps {
            let new = MapData::from_pin(pin_path(pin_dir, old.name))
                .with_context(|| format!("opening the new {}", old.name))?;
            let copied = match old.name {
                names::CONNTRACK | names::NEW_FLOWS => copy_flows(map, &new, false)?,
                names::SVC_STATS | names::BE_STATS => copy_per_cpu::<Traffic>(map, &new)?,
                _ => copy_per_cpu::<u64>(map, &new)?,
            };
            info!(map = old.name, entries = copied, "carried over into the new map");
        }
        Ok(())
    }

    /// After the swap: carries the connections the old program added meanwhile, then lets the
    /// old maps go.
    pub fn finish(self, pin_dir: &Path) -> Result<()> {
        for (old, map) in &self.maps {
            if matches!(old.name, names::CONNTRACK | names::NEW_FLOWS) {
                let new = MapData::from_pin(pin_path(pin_dir, old.name))
                    .with_context(|| format!("opening the new {}", old.name))?;
                let late = copy_flows(map, &new, true)?;
                if late > 0 {
                    info!(map = old.name, entries = late, "carried over entries added during the upgrade");
                }
            }
        }
        Ok(())
    }
}

/// Copies connection entries from `old` to `new`, newest first, as many as `new` holds
/// (an LRU table would otherwise evict at random); with `only_missing`, only keys `new` lacks.
fn copy_flows(old: &MapData, new: &MapData, only_missing: bool) -> Result<usize> {
    let mut entries = batch::dump::<FlowKey, Flow>(old, 8192).context("reading the old connection table")?;
    if only_missing {
        let present: HashSet<FlowKey> = batch::dump::<FlowKey, Flow>(new, 8192)?.into_iter().map(|(k, _)| k).collect();
        entries.retain(|(k, _)| !present.contains(k));
    }
    let room = new.info()?.max_entries() as usize;
    if entries.len() > room {
        entries.sort_by_key(|(_, flow)| std::cmp::Reverse(flow.last_seen_ns));
        warn!(
            entries = entries.len(),
            room, "the new connection table is smaller: the least recently used entries are dropped"
        );
        entries.truncate(room);
    }
    let (keys, values): (Vec<FlowKey>, Vec<Flow>) = entries.into_iter().unzip();
    batch::update(new, &keys, &values).context("writing the new connection table")?;
    Ok(keys.len())
}

/// Copies a per-CPU array's entries (as many as both have) from `old` to `new`.
fn copy_per_cpu<V: Pod>(old: &MapData, new: &MapData) -> Result<usize> {
    let reopen = |m: &MapData| -> Result<PerCpuArray<MapData, V>> {
        let fd = m.fd().as_fd().try_clone_to_owned()?;
        Ok(aya::maps::Map::from_map_data(MapData::from_fd(fd)?)?.try_into()?)
    };
    let (old, mut new) = (reopen(old)?, reopen(new)?);
    let count = old.len().min(new.len());
    for i in 0..count {
        let values: PerCpuValues<V> = old.get(&i, 0)?;
        new.set(i, values, 0)?;
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_common::maps::{MAGLEV, MAGLEV_INNER, SPECS};

    use super::{Shape, shape_of};

    /// Every `slb_` map the object declares is the one `SPECS` describes, so the pin check above
    /// compares kernel maps against what the program really creates; `slb_maglev`'s inner
    /// template is `MAGLEV_INNER`, the shape the writer creates its tables with.
    #[test]
    fn the_object_declares_the_maps_specs_describe() {
        let object = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("parse the datapath object");
        let shape = |m: &aya_obj::Map| -> Shape {
            (m.map_type(), m.key_size(), m.value_size(), m.max_entries(), m.map_flags())
        };
        let declared: BTreeMap<&str, Shape> = object
            .maps
            .iter()
            .filter(|(name, _)| name.starts_with("slb_"))
            .map(|(name, map)| (name.as_str(), shape(map)))
            .collect();
        let described: BTreeMap<&str, Shape> = SPECS.iter().map(|s| (s.name, shape_of(s))).collect();
        assert_eq!(declared, described);
        let inner = object.maps[MAGLEV].inner().expect("slb_maglev is a map of maps");
        assert_eq!(shape(&inner), shape_of(&MAGLEV_INNER));
    }
}
