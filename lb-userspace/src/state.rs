//! `<state-dir>/state.json`: the last applied [`Plan`] (ids, names, addresses, weights). `status`
//! reads it to name what the maps count; the next `run` reads it to keep ids stable, since the
//! connection table still holds backend ids across an agent restart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::planner::Plan;

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// The saved plan, with its Maglev tables rebuilt; `None` if there is none.
pub fn load(state_dir: &Path) -> Result<Option<Plan>> {
    let path = path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut plan: Plan = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    plan.rebuild_tables();
    Ok(Some(plan))
}

/// Writes atomically (temporary file, then rename), so a reader never sees half a file.
pub fn save(state_dir: &Path, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = path(state_dir);
    let tmp = state_dir.join(".state.json.tmp");
    let text = serde_json::to_string_pretty(plan).context("serialising the plan")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Removes `state.json`, then the state directory if nothing else is left in it.
pub fn remove(state_dir: &Path) -> Result<()> {
    let path = path(state_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", path.display()));
        }
        _ => {}
    }
    // Fails harmlessly when the directory holds something else or is already gone.
    let _ = std::fs::remove_dir(state_dir);
    Ok(())
}
