//! Shared helpers for the integration tests, the benchmark and the demo: namespaces, topologies,
//! test clients, the agent driver.

pub mod agent;
pub mod bench;
pub mod cgroup;
pub mod client;
pub mod cmd;
pub mod dind;
pub mod docker;
pub mod frames;
pub mod icmp_frames;
pub mod lan;
pub mod load;
pub mod netns;
pub mod poll;
/// Shared with `cargo xtask image`: one implementation of a binary-plus-libraries rootfs.
#[path = "../../xtask/src/rootfs.rs"]
mod rootfs;
pub mod sock_client;
pub mod swarm;
pub mod swarm_config;
pub mod swarm_lb;
pub mod testrun;
pub mod topology;
