//! How the agent's last sync (source -> plan -> maps) went, shared between the agent, which
//! records it, and the metrics server, which reports it.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// Interior-mutable: the agent holds an `Arc<SyncStatus>` and calls the setters after each
/// apply; `/metrics` and `/healthz` read a [`SyncState`] copy.
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<SyncState>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncState {
    /// Whether any sync has been recorded yet.
    pub attempted: bool,
    /// Whether the last sync succeeded.
    pub ok: bool,
    /// The last error (empty after a success).
    pub message: String,
    pub last_success: Option<SystemTime>,
    /// Time from the event (or file change) that triggered the last good sync to its maps being
    /// written.
    pub last_lag: Option<Duration>,
    /// Failed syncs since the agent started.
    pub failures: u64,
    /// Non-fatal problems of the last sync (a service skipped, a network not taken over…).
    pub problems: Vec<String>,
}

impl SyncStatus {
    pub fn new() -> SyncStatus {
        SyncStatus::default()
    }

    /// A sync wrote the maps; `lag` is event -> maps written.
    pub fn record_ok(&self, lag: Duration) {
        self.record_ok_at(lag, SystemTime::now());
    }

    pub fn record_ok_at(&self, lag: Duration, at: SystemTime) {
        let mut s = self.lock();
        s.attempted = true;
        s.ok = true;
        s.message.clear();
        s.last_success = Some(at);
        s.last_lag = Some(lag);
    }

    /// A sync failed; the last good state keeps serving.
    pub fn record_err(&self, msg: impl Into<String>) {
        let mut s = self.lock();
        s.attempted = true;
        s.ok = false;
        s.message = msg.into();
        s.failures += 1;
    }

    /// Replaces the list of non-fatal problems (empty: none).
    pub fn set_problems(&self, problems: Vec<String>) {
        self.lock().problems = problems;
    }

    pub fn snapshot(&self) -> SyncState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        // A panic while holding the lock leaves plain data behind; keep reporting it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters() {
        let s = SyncStatus::new();
        assert!(!s.snapshot().attempted);
        s.record_err("docker: connection refused");
        let t = s.snapshot();
        assert!(t.attempted && !t.ok && t.failures == 1 && t.message.contains("refused"));
        s.record_ok(Duration::from_millis(30));
        let t = s.snapshot();
        assert!(t.ok && t.message.is_empty() && t.failures == 1 && t.last_success.is_some());
        assert_eq!(t.last_lag, Some(Duration::from_millis(30)));
    }
}
