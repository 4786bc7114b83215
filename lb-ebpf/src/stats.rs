//! Per-CPU counters: one per reason, one per connection-table event, and traffic per service and per backend.

use lb_common::{CtEvent, Flow, Reason};

use crate::maps::{BE_STATS_MAP, CT_EVENTS_MAP, REASONS_MAP, SVC_STATS_MAP};

/// Counts one packet under `reason`.
#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(counter) = REASONS_MAP.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, valid for the program's lifetime, no other writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts one connection-table event.
#[inline(always)]
pub fn count_event(event: CtEvent) {
    if let Some(counter) = CT_EVENTS_MAP.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot, valid for the program's lifetime, no other writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts a translated packet of `bytes` towards the flow's service and backend.
#[inline(always)]
pub fn count_traffic(flow: &Flow, bytes: u64) {
    add_traffic(flow.service_id, flow.backend_id, bytes, 0);
}

/// Counts a connection created for `service_id` / `backend_id`.
#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    add_traffic(service_id, backend_id, 0, 1);
}

#[inline(always)]
fn add_traffic(service_id: u32, backend_id: u32, bytes: u64, new_flows: u64) {
    let packets = if new_flows == 0 { 1 } else { 0 };
    if let Some(t) = SVC_STATS_MAP.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot of a preallocated array.
        unsafe {
            (*t).packets += packets;
            (*t).bytes += bytes;
            (*t).new_flows += new_flows;
        }
    }
    if let Some(t) = BE_STATS_MAP.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*t).packets += packets;
            (*t).bytes += bytes;
            (*t).new_flows += new_flows;
        }
    }
}
