//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): builds one service's
//! lookup table of backend ids. Pure and deterministic: every node computes the same table from
//! the same backend names and weights, whatever ids it gave them, so any node sends a flow to the
//! same backend.
//!
//! Each backend's preference list is the permutation `offset + j * skip (mod M)` of the prime
//! table size `M`, with `offset` and `skip` from two differently seeded xxh3 hashes of its name.
//! Backends take turns claiming their next free preferred slot; weights are honoured by giving
//! each backend turns in proportion to its weight (the heaviest gets one turn per round, a
//! backend of half that weight one turn every other round), so slot shares follow weights.

use xxhash_rust::xxh3::xxh3_64_with_seed;

const OFFSET_SEED: u64 = 0x5357_4c42_6f66_6673; // "SWLBoffs"
const SKIP_SEED: u64 = 0x5357_4c42_736b_6970; // "SWLBskip"

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// Hashed for the permutation; must be unique within the service.
    pub name: &'a str,
    /// 0 means the backend gets no slots (draining).
    pub weight: u32,
    /// What the table stores for this backend's slots (never 0).
    pub id: u32,
}

/// Builds a table of `size` slots (`size` must be prime). Slots hold backend ids; a table with no
/// backend of nonzero weight is all zeros ("no backend").
pub fn table(entries: &[Entry<'_>], size: u32) -> Vec<u32> {
    debug_assert!(is_prime(size), "Maglev table size {size} is not prime");
    let m = size as u64;
    let mut active: Vec<&Entry<'_>> = entries.iter().filter(|e| e.weight > 0).collect();
    // Order by name so the result does not depend on the order the source listed backends in.
    active.sort_by(|a, b| a.name.cmp(b.name));
    let mut table = vec![0u32; size as usize];
    let Some(max_weight) = active.iter().map(|e| e.weight as u64).max() else {
        return table;
    };
    struct Cursor {
        pos: u64,
        skip: u64,
        credit: u64,
    }
    let mut cursors: Vec<Cursor> = active
        .iter()
        .map(|e| Cursor {
            pos: xxh3_64_with_seed(e.name.as_bytes(), OFFSET_SEED) % m,
            skip: xxh3_64_with_seed(e.name.as_bytes(), SKIP_SEED) % (m - 1) + 1,
            credit: 0,
        })
        .collect();
    let mut filled = 0u64;
    loop {
        for (entry, cursor) in active.iter().zip(cursors.iter_mut()) {
            cursor.credit += entry.weight as u64;
            while cursor.credit >= max_weight {
                cursor.credit -= max_weight;
                // Walk this backend's permutation to its next unclaimed slot. A permutation of
                // a prime-sized table visits every slot, so this always ends.
                while table[cursor.pos as usize] != 0 {
                    cursor.pos = (cursor.pos + cursor.skip) % m;
                }
                table[cursor.pos as usize] = entry.id;
                cursor.pos = (cursor.pos + cursor.skip) % m;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
}

pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| (*d as u64) * (*d as u64) <= n as u64).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
#[path = "maglev_tests.rs"]
mod tests;
