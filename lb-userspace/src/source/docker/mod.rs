//! `--source docker`: the swarm as the local Docker Engine sees it.
//!
//! [`engine`] makes the Engine calls, [`translate`] turns their answers into a
//! [`crate::model::Cluster`] (pure, unit-tested with fixtures), and [`run`] keeps it in step:
//! a full read at start, then one after every burst of container/network/service/node events
//! (debounced 100 ms), and every `--resync-interval` (30 s) anyway. Each result goes to the
//! agent through a watch channel (only the newest matters). When the Engine is unreachable or
//! answers garbage nothing is sent, so the datapath keeps the last good state; the failure is
//! logged once, retried with exponential backoff (0.5 s .. 30 s), and the recovery logged once.

pub mod backoff;
pub mod engine;
pub mod translate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_vips;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{agent::Update, metrics::SyncStatus};
use backoff::{Backoff, Health, Transition};
use engine::Engine;

/// Events closer together than this are one burst: one read of the Engine.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A burst that never pauses is still read this long after its first event.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How far before a session's first read its event stream starts (clock granularity, and
/// the Engine stamping an event just before the read saw its change).
const EVENTS_OVERLAP: Duration = Duration::from_secs(1);

/// Runs forever: reads the Engine at `host` (in full at least every `resync`) and sends each new
/// desired state to `tx`.
/// Records only failures in `status`: successes are recorded by the agent once the maps are
/// written.
pub async fn run(host: String, resync: Duration, tx: watch::Sender<Option<Update>>, status: Arc<SyncStatus>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut health = Health::default();
    let mut sync = Syncer { tx, status, resync, health: &mut health, last_notes: Vec::new(), backoff: &mut backoff };
    loop {
        let result = sync.session(&host).await;
        let e = match result {
            Ok(()) => continue,
            Err(e) => format!("{e:#}"),
        };
        sync.status.record_err(format!("Docker Engine: {e}"));
        let delay = sync.backoff.next_delay();
        match sync.health.failed() {
            Transition::Failed => error!(
                "Docker Engine at {host}: {e}; keeping the last good state in the datapath, retrying (backoff {BACKOFF_MIN:?}..{BACKOFF_MAX:?})"
            ),
            _ => debug!("Docker Engine still failing: {e}; next retry in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
    }
}

struct Syncer<'a> {
    tx: watch::Sender<Option<Update>>,
    status: Arc<SyncStatus>,
    /// Full read even without events: the safety net for missed events.
    resync: Duration,
    health: &'a mut Health,
    backoff: &'a mut Backoff,
    last_notes: Vec<String>,
}

impl Syncer<'_> {
    /// One connection: full read, then events until something fails.
    async fn session(&mut self, host: &str) -> Result<()> {
        let mut engine = Engine::connect(host).await?;
        // The stream subscribes when first polled, after the read: it asks for the events since
        // just before the read, so a change made meanwhile is replayed rather than missed.
        let mut events = Box::pin(engine.events(SystemTime::now() - EVENTS_OVERLAP));
        self.read(&mut engine, None).await?;
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + self.resync, self.resync);
        // First event of the pending burst, and when to read.
        let mut pending: Option<(Instant, tokio::time::Instant)> = None;
        loop {
            let deadline = pending.map(|(_, d)| d);
            tokio::select! {
                ev = events.next() => {
                    let ev = ev.context("the event stream ended")??;
                    let now = Instant::now();
                    debug!(kind = ?ev.typ, action = ?ev.action, actor = ?ev.actor.as_ref().and_then(|a| a.id.as_deref()), "event");
                    engine.observe(&ev);
                    let first = pending.map_or(now, |(f, _)| f);
                    let by = tokio::time::Instant::from_std(now + DEBOUNCE).min(tokio::time::Instant::from_std(first + DEBOUNCE_MAX));
                    pending = Some((first, by));
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                    let (first, _) = pending.take().unwrap();
                    self.read(&mut engine, Some(first)).await?;
                }
                _ = resync.tick() => {
                    debug!("periodic resync");
                    let first = pending.take().map(|(f, _)| f);
                    self.read(&mut engine, first).await?;
                }
            }
        }
    }

    /// Reads and translates; sends the result if it differs from the last one sent.
    async fn read(&mut self, engine: &mut Engine, trigger: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        let snapshot = engine.snapshot().await?;
        let t = translate::translate(&snapshot).context("translating the Engine's state")?;
        if t.notes != self.last_notes {
            for note in t.notes.iter().filter(|n| !self.last_notes.contains(n)) {
                warn!("docker source: {note}");
            }
            self.last_notes = t.notes.clone();
        }
        if let Transition::Recovered(n) = self.health.succeeded() {
            info!("Docker Engine answers again (after {n} failed attempts); syncing");
        }
        self.backoff.reset();
        debug!(took_ms = started.elapsed().as_millis() as u64, "Engine read");
        let update =
            Update { cluster: t.cluster, local: Some(t.local_node), trigger, read_at: started, notes: t.notes };
        // Events send only changes; the periodic read always sends, so an apply that failed
        // (the agent then does a full sync) is retried even if the swarm did not change.
        let periodic = trigger.is_none();
        let changed = self.tx.send_if_modified(|cur| match cur {
            Some(c)
                if !periodic && c.cluster == update.cluster && c.local == update.local && c.notes == update.notes =>
            {
                false
            }
            _ => {
                *cur = Some(update);
                true
            }
        });
        if !changed {
            debug!("events changed nothing swarmlb serves");
        }
        Ok(())
    }
}
