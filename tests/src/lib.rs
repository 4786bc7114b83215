//! Shared helpers for the integration tests, the benchmark and the demo: namespaces, topologies,
//! test clients, the agent driver.

pub mod agent;
pub mod client;
pub mod netns;
pub mod swarm;
pub mod topology;
pub mod frames;
pub mod testrun;
