use std::collections::HashMap;

use lb_common::maps::maglev_size;

use super::*;

const M: u32 = 65537;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

fn entries(names: &[String], weight: impl Fn(usize) -> u32) -> Vec<Entry<'_>> {
    names.iter().enumerate().map(|(i, n)| Entry { name: n, weight: weight(i), id: i as u32 + 1 }).collect()
}

fn counts(table: &[u32]) -> HashMap<u32, usize> {
    let mut c = HashMap::new();
    for id in table {
        *c.entry(*id).or_insert(0) += 1;
    }
    c
}

/// Largest |slots - ideal| over backends, in slots.
fn max_deviation_slots(table: &[u32], ideal: impl Fn(u32) -> f64, ids: impl Iterator<Item = u32>) -> (f64, f64) {
    let c = counts(table);
    let mut worst = (0.0f64, 0.0f64);
    for id in ids {
        let ideal = ideal(id);
        let dev = (*c.get(&id).unwrap_or(&0) as f64 - ideal).abs();
        if dev / ideal > worst.1 {
            worst = (dev, dev / ideal);
        }
    }
    worst
}

#[test]
fn sizes_are_prime() {
    assert!(is_prime(M) && is_prime(16381) && is_prime(101));
    assert!(!is_prime(65536) && !is_prime(1) && !is_prime(16383));
}

#[test]
fn every_slot_is_filled_and_empty_set_gives_zeros() {
    let n = names(3);
    let t = table(&entries(&n, |_| 1), M);
    assert!(t.iter().all(|id| (1..=3).contains(id)));
    assert!(table(&[], M).iter().all(|id| *id == 0));
    assert!(table(&entries(&n, |_| 0), M).iter().all(|id| *id == 0));
}

/// Balance for 3..2000 equal-weight backends in the table size the agent gives that count: each
/// backend's share is within 1% of ideal. A backend's count is an integer, so once the ideal drops
/// below 100 slots (more than 1,310 backends in the largest table) 1% is less than one slot;
/// there the bound is the integer limit of one slot.
#[test]
fn balance_within_one_percent_of_ideal() {
    let mut sizes: Vec<usize> = (3..=40).collect();
    sizes.extend([50, 64, 97, 100, 128, 200, 255, 256, 333, 500, 512, 655, 700, 900, 993, 999, 1000, 1310, 2000]);
    let mut worst_rel = 0.0f64;
    for n in sizes {
        let nm = names(n);
        let m = maglev_size(n);
        let t = table(&entries(&nm, |_| 1), m);
        let ideal = m as f64 / n as f64;
        let (dev, rel) = max_deviation_slots(&t, |_| ideal, 1..=n as u32);
        let bound = (0.01 * ideal).max(1.0);
        assert!(
            dev <= bound,
            "{n} backends: worst backend off by {dev:.2} slots ({:.3}%), bound {bound:.2}",
            rel * 100.0
        );
        if ideal >= 100.0 {
            worst_rel = worst_rel.max(rel);
        }
    }
    eprintln!("maglev balance: worst relative deviation for 3..=1310 backends: {:.3}%", worst_rel * 100.0);
}

#[test]
fn weights_are_respected() {
    let nm = names(4);
    let weights = [1u32, 2, 3, 4];
    let t = table(&entries(&nm, |i| weights[i]), M);
    let total: u32 = weights.iter().sum();
    let (dev, rel) = max_deviation_slots(&t, |id| M as f64 * weights[id as usize - 1] as f64 / total as f64, 1..=4);
    eprintln!("maglev weights 1:2:3:4: worst deviation {dev:.1} slots ({:.3}%)", rel * 100.0);
    assert!(rel <= 0.01, "weighted share off by {:.3}%", rel * 100.0);

    // A drained backend (weight 0) gets no slot; the others split the table.
    let t = table(&entries(&nm, |i| if i == 2 { 0 } else { 1 }), M);
    assert!(!t.contains(&3) && !t.contains(&0));
    // Widely different weights still give the light backend its share.
    let t = table(&entries(&names(2), |i| if i == 0 { 1 } else { 100 }), M);
    let light = counts(&t)[&1] as f64;
    assert!((light - M as f64 / 101.0).abs() / (M as f64 / 101.0) < 0.02, "light backend has {light} slots");
}

#[test]
fn independent_of_order_and_ids_compare_by_name() {
    let nm = names(5);
    let a = entries(&nm, |_| 1);
    let mut b = a.clone();
    b.reverse();
    assert_eq!(table(&a, M), table(&b, M));
}

/// Removing one of N backends moves its own slots plus a small fraction of the others'.
#[test]
fn removing_one_backend_disrupts_little() {
    for n in [3usize, 10, 50, 100, 500] {
        let nm = names(n);
        let all = entries(&nm, |_| 1);
        let m = maglev_size(n);
        assert_eq!(m, maglev_size(n - 1), "{n} and {} backends get tables of different sizes", n - 1);
        let before = table(&all, m);
        let removed = (n / 2) as u32 + 1;
        let rest: Vec<Entry<'_>> = all.iter().copied().filter(|e| e.id != removed).collect();
        let after = table(&rest, m);
        let others_moved = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
        let fraction = others_moved as f64 / m as f64;
        eprintln!("maglev removal of 1 of {n}: {:.3}% of slots of other backends moved", fraction * 100.0);
        assert!(before.iter().zip(&after).all(|(b, a)| *b != removed || *a != removed));
        // The paper measures a few percent; allow 3% of the table.
        assert!(fraction < 0.03, "{n} backends: {:.3}% of slots moved needlessly", fraction * 100.0);
    }
}
