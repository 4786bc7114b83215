//! Turns desired states into map contents, off the async runtime: plans an update against what
//! the maps hold, writes the diff with the [`Writer`], saves `state.json`. Planning (Maglev
//! tables) and writing take up to a second or two for a thousand services, so
//! [`Programmer::program`] runs them on tokio's blocking pool and `/metrics`, `/healthz` and the
//! rest of the runtime go on meanwhile.

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use tracing::{debug, info};

use crate::{
    datapath::{members::Synced, writer::Writer},
    model::Cluster,
    planner::{self, LeftOut, Plan},
    state,
};

/// The writer and what the maps hold; owned by the agent, lent to one blocking task at a time.
pub struct Programmer {
    writer: Writer,
    /// What the maps hold; `None` if a write failed and the next apply must be a full sync.
    applied: Option<Plan>,
    state_dir: PathBuf,
}

/// What one [`Programmer::program`] did.
pub struct Programmed {
    /// What did not fit, from the planner.
    pub left_out: Vec<LeftOut>,
    /// The namespaces registered for socket load balancing.
    pub members: Synced,
}

impl Programmer {
    pub fn new(writer: Writer, state_dir: PathBuf) -> Programmer {
        Programmer { writer, applied: None, state_dir }
    }

    pub fn writer(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// Plans `cluster` as node `local` sees it and writes the result, on the blocking pool.
    pub async fn program(
        this: &Arc<std::sync::Mutex<Programmer>>,
        cluster: Arc<Cluster>,
        local: Option<String>,
    ) -> Result<Programmed> {
        let this = this.clone();
        tokio::task::spawn_blocking(move || {
            let mut programmer = this.lock().map_err(|_| anyhow::anyhow!("the programmer panicked earlier"))?;
            programmer.program_now(&cluster, local.as_deref())
        })
        .await
        .context("the map writer task")?
    }

    /// [`Programmer::program`] on the calling thread.
    pub fn program_now(&mut self, cluster: &Cluster, local: Option<&str>) -> Result<Programmed> {
        let started = Instant::now();
        let prev = self.applied.clone().or_else(|| state::load(&self.state_dir).ok().flatten()).unwrap_or_default();
        let planned = planner::plan(cluster, local, &prev);
        let planned_in = started.elapsed();
        // Namespaces come and go with containers, whatever the services do.
        let members = self.writer.sync_members(&planned.plan.members)?;
        if let Some(what) = self.apply(planned.plan)? {
            let took = started.elapsed();
            info!(
                "applied: {what}; planned in {} ms, written in {} ms",
                planned_in.as_millis(),
                (took - planned_in).as_millis()
            );
        }
        Ok(Programmed { left_out: planned.left_out, members })
    }

    /// Writes the difference between what the maps hold and `plan`; what it wrote, in words
    /// (`None`: nothing).
    fn apply(&mut self, plan: Plan) -> Result<Option<String>> {
        let full = self.applied.is_none();
        let diff = planner::diff(self.applied.as_ref(), &plan);
        if !full && diff.summary.is_empty() && diff == planner::Diff::default() {
            if self.applied.as_ref() != Some(&plan) {
                // Only what status shows changed (e.g. the node a task runs on).
                state::save(&self.state_dir, &plan)?;
                self.applied = Some(plan);
                return Ok(Some("no map changes (names only)".into()));
            }
            debug!("desired state unchanged");
            return Ok(None);
        }
        // The counters belong to the last applied plan: after a restart, the saved one.
        let counted = self.applied.clone().or_else(|| state::load(&self.state_dir).ok().flatten());
        let reset = planner::stats_to_reset(counted.as_ref(), &plan);
        // Until the writes are done, the maps are in between plans.
        self.applied = None;
        self.writer.reset_stats(&reset)?;
        self.writer.apply(&diff)?;
        let swept = if full { self.writer.sweep(&plan)? } else { 0 };
        state::save(&self.state_dir, &plan)?;
        let counts = format!(
            "{} services, {} backends, {} frontends",
            plan.services.len(),
            plan.backend_count(),
            plan.frontend_count()
        );
        self.applied = Some(plan);
        Ok(Some(if full {
            format!("{counts} (full sync, {swept} stale entries removed)")
        } else {
            format!("{counts} (changed: {})", diff.summary)
        }))
    }
}
