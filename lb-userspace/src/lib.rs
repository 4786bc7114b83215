//! The swarmlb agent as a library: sources, model, planner, datapath writer, status.

/// The XDP object built from `lb-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

pub mod maglev;
pub mod model;
pub mod planner;
pub mod source;
