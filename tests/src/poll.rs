//! Waiting for a condition the system reaches asynchronously (an agent applying a reload), with a
//! deadline so a test fails instead of hanging.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Polls `done` every 100 ms until it holds, for at most 15 s.
pub fn wait_until(what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_up_to(Duration::from_secs(15), what, done)
}

/// Polls `done` every 100 ms until it holds, for at most `limit`.
pub fn wait_up_to(limit: Duration, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
