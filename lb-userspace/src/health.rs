//! The agent's heartbeat, `<state-dir>/health.json`: rewritten every second by a running agent
//! with how its last sync went and what it attached, read by `swarmlb status` and the metrics
//! page. A heartbeat older than [`STALE_AFTER`] means no agent is running (or it is stuck): the
//! datapath still serves, with the state the agent last wrote, but nothing follows the swarm.
//!
//! Ages are measured on `CLOCK_MONOTONIC`, which every process on the node shares (containers
//! included), so a wall-clock step neither kills nor revives an agent.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::SyncState;

/// How often a running agent writes its heartbeat.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat this old says the agent is gone: several missed beats, not one slow tick.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// The agent's process id (in its own PID namespace when it runs in a container).
    pub pid: u32,
    pub version: String,
    /// The swarm node the agent is, if any.
    pub node: Option<String>,
    /// `CLOCK_MONOTONIC` at the agent's start and at this beat.
    pub started_ns: u64,
    pub beat_ns: u64,
    /// Written by an agent on its way out: not running from this beat on.
    pub exited: bool,
    pub sync: SyncState,
    /// Interfaces the datapath is attached to.
    pub interfaces: Vec<Attachment>,
}

/// One interface the programs run on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// How XDP runs there, as the kernel reports it: `native`, `generic`, `offload`, or
    /// `unknown`.
    pub xdp_mode: String,
    /// Whether the neighbour-resolution hand-off (TC ingress) is attached beside it.
    pub neigh_handoff: bool,
}

/// What a reader concludes from a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Running,
    /// The last beat is older than [`STALE_AFTER`].
    NotRunning,
    /// No heartbeat at all: no agent has run with this state directory since boot.
    NeverStarted,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("health.json")
}

/// Writes atomically (temporary file, then rename).
pub fn write(state_dir: &Path, beat: &Heartbeat) -> Result<()> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let tmp = state_dir.join(".health.json.tmp");
    let text = serde_json::to_string(beat).context("serialising the heartbeat")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    let path = path(state_dir);
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The last heartbeat, if any agent wrote one. An unreadable file counts as none.
pub fn read(state_dir: &Path) -> Option<Heartbeat> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `beat` is fresh at monotonic time `now_ns`, and its age.
pub fn liveness(beat: Option<&Heartbeat>, now_ns: u64) -> (Liveness, Option<Duration>) {
    let Some(beat) = beat else { return (Liveness::NeverStarted, None) };
    let age = Duration::from_nanos(now_ns.saturating_sub(beat.beat_ns));
    (if beat.exited || age > STALE_AFTER { Liveness::NotRunning } else { Liveness::Running }, Some(age))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(beat_ns: u64) -> Heartbeat {
        Heartbeat {
            pid: 7,
            version: "0.1.0".into(),
            node: Some("node-1".into()),
            started_ns: 0,
            beat_ns,
            exited: false,
            sync: SyncState::default(),
            interfaces: vec![Attachment {
                iface: "eth0".into(),
                ifindex: 2,
                xdp_mode: "native".into(),
                neigh_handoff: true,
            }],
        }
    }

    #[test]
    fn a_beat_goes_stale_after_missed_beats() {
        let s = 1_000_000_000;
        assert_eq!(liveness(None, 10 * s), (Liveness::NeverStarted, None));
        assert_eq!(liveness(Some(&beat(10 * s)), 11 * s).0, Liveness::Running);
        assert_eq!(liveness(Some(&beat(10 * s)), 16 * s).0, Liveness::NotRunning);
        let exited = Heartbeat { exited: true, ..beat(10 * s) };
        assert_eq!(liveness(Some(&exited), 10 * s).0, Liveness::NotRunning);
        // A reader whose clock reads earlier than the beat (it cannot, but) sees age 0.
        assert_eq!(liveness(Some(&beat(10 * s)), 9 * s), (Liveness::Running, Some(Duration::ZERO)));
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("slb-health-{}", std::process::id()));
        let b = beat(42);
        write(&dir, &b).unwrap();
        assert_eq!(read(&dir), Some(b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
