//! What the swarmlb datapath and agent agree on: map names and sizes, the `#[repr(C)]` keys and
//! values stored in those maps, reason counters, and the pure arithmetic both sides share (flow
//! hashing, checksum folding). `no_std`, so the eBPF crate uses it as is; the `user` feature adds
//! `aya::Pod` impls for the agent.
#![no_std]

pub mod csum;
pub mod hash;
pub mod maps;
pub mod reason;
pub mod types;

pub use reason::{CtEvent, Reason, SockEvent};
pub use types::*;
