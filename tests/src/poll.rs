//! Waiting for a condition the system reaches asynchronously (an agent applying a reload), with a
//! deadline so a test fails instead of hanging.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Polls `done` every 100 ms until it holds, for at most 15 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
