//! Shared helpers for the integration tests, the benchmark and the demo: namespaces, topologies,
//! test clients, the agent driver.

pub mod agent;
pub mod client;
pub mod dind;
pub mod docker;
pub mod frames;
pub mod icmp_frames;
pub mod lan;
pub mod load;
pub mod netns;
pub mod poll;
pub mod swarm;
pub mod swarm_config;
pub mod swarm_lb;
pub mod testrun;
pub mod topology;
