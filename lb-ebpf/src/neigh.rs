//! Frames XDP cannot send itself: the next hop has no (valid) neighbour entry yet, or the egress
//! interface is not one swarmlb transmits on. XDP cannot resolve a neighbour, and handing such a
//! frame to the kernel's IP forwarding makes it depend on host sysctls (`ip_forward`,
//! `accept_local` for a local source address) and on the FORWARD chain (Docker's policy is DROP),
//! so the XDP program leaves a [`Handoff`] in the frame's metadata and passes it; the TC ingress
//! program `swarmlb_neigh` on the same interface runs before any of that and calls
//! `bpf_redirect_neigh`: the kernel sends it out of the egress interface, resolving the neighbour
//! the normal way (ARP, with the frame queued until the answer).
//!
//! A driver that cannot carry metadata makes `hand_over` fail; the caller then passes the frame
//! to the kernel's forwarding as before.

use core::{mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, bpf_redir_neigh},
    helpers::generated::{bpf_redirect_neigh, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
};
use lb_common::{HANDOFF_MAGIC, Handoff};

const AF_INET: u32 = 2;

/// Writes a [`Handoff`] in front of the frame. Invalidates every packet pointer.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, ifindex: u32, next_hop: [u8; 4]) -> bool {
    // SAFETY: a negative delta grows the metadata area; the kernel checks the headroom.
    if unsafe { bpf_xdp_adjust_meta(ctx.as_ptr() as *mut _, -(size_of::<Handoff>() as i32)) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + size_of::<Handoff>() > data {
        return false;
    }
    // SAFETY: bounds-checked against the start of the frame above.
    unsafe { (meta as *mut Handoff).write_unaligned(Handoff { magic: HANDOFF_MAGIC, ifindex, next_hop }) };
    true
}

/// TC ingress: a frame carrying a [`Handoff`] is redirected through the neighbour subsystem;
/// anything else continues up the stack untouched.
#[inline(always)]
pub fn redirect_handed_over(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reads of __sk_buff fields the verifier rewrites into packet pointers.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + size_of::<Handoff>() > data {
        return TC_ACT_OK as i32;
    }
    // SAFETY: bounds-checked against the start of the frame above.
    let handoff = unsafe { (meta as *const Handoff).read_unaligned() };
    if handoff.magic != HANDOFF_MAGIC {
        return TC_ACT_OK as i32;
    }
    // SAFETY: the helper reads `params` (a stack value) only when it is non-null.
    let action = unsafe {
        if handoff.next_hop == [0; 4] {
            bpf_redirect_neigh(handoff.ifindex, ptr::null_mut(), 0, 0)
        } else {
            let mut params: bpf_redir_neigh = core::mem::zeroed();
            params.nh_family = AF_INET;
            params.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(handoff.next_hop);
            bpf_redirect_neigh(handoff.ifindex, &mut params, size_of::<bpf_redir_neigh>() as i32, 0)
        }
    };
    action as i32
}
