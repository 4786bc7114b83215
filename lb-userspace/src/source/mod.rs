//! Sources of desired state. Each turns something outside the agent (a file today, the Docker
//! Engine later) into the same [`crate::model::Cluster`]; nothing downstream knows which one ran.

pub mod docker;
pub mod file;
