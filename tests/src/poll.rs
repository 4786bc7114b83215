//! Waiting for a condition the system reaches asynchronously (an agent applying a reload, an
//! Engine starting, a server listening): the one polling loop of the tests, bounded in time and
//! in count, whose timeout says what was awaited and what the last look found.

use std::{
    fmt::Display,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// What one look at an awaited condition found.
pub enum Seen<T> {
    /// The condition holds; the wait returns this.
    Ready(T),
    /// Not yet; what was seen instead, for the timeout's message.
    NotYet(String),
}

impl Seen<()> {
    /// Ready when `done`, else not yet with `observation`.
    pub fn when(done: bool, observation: impl Display) -> Seen<()> {
        if done { Seen::Ready(()) } else { Seen::NotYet(observation.to_string()) }
    }
}

impl<T> Seen<T> {
    /// A value is ready; an error means not yet (the error is the observation), for looks that
    /// fail until the condition holds (a server not yet up).
    pub fn ok(result: Result<T>) -> Seen<T> {
        match result {
            Ok(value) => Seen::Ready(value),
            Err(e) => Seen::NotYet(format!("{e:#}")),
        }
    }
}

/// How often a wait looks.
const EVERY: Duration = Duration::from_millis(100);

/// Looks with `look` every 100 ms until it finds the condition ready, for at most `limit`, and
/// returns what it found. An error from `look` ends the wait at once (waiting longer cannot
/// help); wrap looks that may fail meanwhile in [`Seen::ok`].
pub fn wait_for<T>(what: &str, limit: Duration, mut look: impl FnMut() -> Result<Seen<T>>) -> Result<T> {
    let start = Instant::now();
    // Bounded in count too, should looks themselves take no time.
    let looks = limit.as_millis() / EVERY.as_millis() + 1;
    let mut last = String::from("(nothing yet)");
    for _ in 0..looks {
        match look()? {
            Seen::Ready(value) => return Ok(value),
            Seen::NotYet(observation) => last = observation,
        }
        if start.elapsed() >= limit {
            break;
        }
        thread::sleep(EVERY);
    }
    bail!("timed out after {limit:?} waiting for {what}; last seen: {last}")
}

/// Polls `done` every 100 ms until it holds, for at most 15 s.
pub fn wait_until(what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_up_to(Duration::from_secs(15), what, done)
}

/// Polls `done` every 100 ms until it holds, for at most `limit`.
pub fn wait_up_to(limit: Duration, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_for(what, limit, || Ok(Seen::when(done()?, "not yet")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_it_found_and_says_what_it_waited_for_and_last_saw() {
        let mut n = 0;
        let found = wait_for("three looks", Duration::from_secs(5), || {
            n += 1;
            Ok(if n == 3 { Seen::Ready(n) } else { Seen::NotYet(format!("look {n}")) })
        });
        assert_eq!(found.unwrap(), 3);

        let mut n = 0;
        let e = wait_for("the impossible", Duration::from_millis(250), || {
            n += 1;
            Ok(Seen::<()>::NotYet(format!("look {n}")))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("waiting for the impossible") && e.contains(&format!("last seen: look {n}")), "{e}");
        assert!(n <= 3, "{n} looks: 250 ms at one per 100 ms allows 3");

        let mut looks = 0;
        let e = wait_for("a broken look", Duration::from_secs(5), || -> Result<Seen<()>> {
            looks += 1;
            bail!("broken")
        });
        assert_eq!((e.unwrap_err().to_string(), looks), ("broken".to_string(), 1));
    }
}
