//! The swarmlb agent as a library: sources produce a [`model::Cluster`], the [`planner`] turns
//! it into a plan with stable ids and a diff, the [`datapath`] writer puts that into the pinned
//! maps; [`status`] reads the counters back. Data flows one way.

/// The XDP object built from `lb-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod flows;
pub mod health;
pub mod host;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod programmer;
pub mod source;
pub mod state;
pub mod status;
pub mod takeover;
pub mod trace;
