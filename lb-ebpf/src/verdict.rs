//! What the program returns for a packet, and the reason it is counted under.

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use lb_common::{MALFORMED_DROP, Reason};

#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self { action: XDP_PASS, reason }
    }

    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self { action: XDP_DROP, reason }
    }

    /// A malformed packet: passed or dropped according to the node's `malformed_policy`.
    #[inline(always)]
    pub fn malformed(reason: Reason) -> Self {
        if crate::maps::settings().malformed_policy == MALFORMED_DROP { Self::drop(reason) } else { Self::pass(reason) }
    }
}
