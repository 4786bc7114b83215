//! Bounded TCP load against `slb-testsrv`, from inside a network namespace: `churn` (a new
//! connection per HTTP/1.0 request) and `keepalive` (request/response round trips on long-lived
//! ECHO connections). This module owns the load loops, their bounds and their counts; the
//! end-to-end benchmark and tests that need sustained traffic use it.
//!
//! Every run is bounded twice, by a total count and by a wall-clock limit, whichever comes first;
//! every socket operation has a 3 s timeout and every read is capped in size, so an attempt
//! started before the limit ends within a few seconds after it. Failures are counted, never
//! retried in a tight loop without counting, and the first one is kept for the report.
//!
//! Namespaces: the workers are threads spawned from inside `Netns::run`. `setns(CLONE_NEWNET)`
//! changes the calling thread only, and a thread created afterwards by that thread inherits its
//! network namespace (clone copies the creating thread's namespaces, not the process's first
//! thread's); each worker checks that it is in the target namespace before it opens a socket.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Netns;

/// Connect, read and write timeout of every socket operation.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The request `churn` sends on every connection.
pub const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: swarmlb\r\n\r\n";
/// Largest response read from one HTTP connection or one echoed line (the test server's answers
/// are a few dozen bytes).
const MAX_RESPONSE: u64 = 64 * 1024;
/// After a failed keep-alive connection, a worker waits this long before it opens a new one.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What one bounded run did.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Completed requests with a correct answer (`churn`: connections; `keepalive`: round trips).
    pub ok: u64,
    /// Attempts that failed (connect, timeout, reset, wrong answer).
    pub failed: u64,
    /// From the start of the run until the last worker finished.
    pub elapsed: Duration,
    /// The first failure, with what was being done.
    pub first_error: Option<String>,
    /// Successes completed in each second of the run: `per_second[i]` counts those that finished
    /// in `[i s, i+1 s)` after the start. The last entry may cover a partial second.
    pub per_second: Vec<u64>,
}

impl LoadResult {
    /// Successes per second over the whole run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.ok as f64 / secs } else { 0.0 }
    }

    /// Successes per second over the whole seconds `from..to` of the run (clamped to what was
    /// recorded); 0 for an empty window.
    pub fn window_rate(&self, from: usize, to: usize) -> f64 {
        let to = to.min(self.per_second.len());
        if from >= to {
            return 0.0;
        }
        self.per_second[from..to].iter().sum::<u64>() as f64 / (to - from) as f64
    }
}

/// Counters shared by the workers of one run.
struct Shared {
    start: Instant,
    deadline: Instant,
    max: u64,
    claimed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    per_second: Vec<AtomicU64>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new(max: u64, max_time: Duration) -> Shared {
        let start = Instant::now();
        // One bucket per second of the limit, plus room for attempts that end after it.
        let buckets = max_time.as_secs() as usize + 1 + (2 * IO_TIMEOUT.as_secs() as usize + 2);
        Shared {
            start,
            deadline: start + max_time,
            max,
            claimed: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            per_second: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            first_error: Mutex::new(None),
        }
    }

    /// Claims the next attempt: false once the count or the time is used up.
    fn claim(&self) -> bool {
        Instant::now() < self.deadline && self.claimed.fetch_add(1, Ordering::Relaxed) < self.max
    }

    fn success(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let second = (self.start.elapsed().as_secs() as usize).min(self.per_second.len() - 1);
        self.per_second[second].fetch_add(1, Ordering::Relaxed);
    }

    fn failure(&self, error: &anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{error:#}"));
        }
    }

    fn result(&self) -> LoadResult {
        let elapsed = self.start.elapsed();
        let recorded = (elapsed.as_secs_f64().ceil() as usize).clamp(1, self.per_second.len());
        LoadResult {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            elapsed,
            first_error: self.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            per_second: self.per_second[..recorded].iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// The inode of the network namespace the calling thread is in.
fn current_netns() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net").context("reading /proc/thread-self/ns/net")?.ino())
}

/// Runs `workers` copies of `work` on threads inside `ns`, all sharing one count and deadline.
fn run_workers(
    ns: &Netns,
    workers: usize,
    max: u64,
    max_time: Duration,
    work: fn(&Shared, SocketAddr),
    target: SocketAddr,
) -> Result<LoadResult> {
    ensure!(workers > 0, "a load run needs at least one worker");
    let expected = std::fs::metadata(format!("/var/run/netns/{}", ns.name))
        .with_context(|| format!("namespace {}", ns.name))?
        .ino();
    let name = ns.name.clone();
    ns.run(move || -> Result<LoadResult> {
        ensure!(current_netns()? == expected, "load coordinator is not in namespace {name}");
        let shared = Arc::new(Shared::new(max, max_time));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let shared = shared.clone();
                thread::spawn(move || -> Result<()> {
                    // Inherited from the coordinator, which entered the namespace (see the
                    // module comment); checked, since a socket in the wrong namespace would
                    // measure the wrong path.
                    if current_netns()? != expected {
                        bail!("load worker did not inherit the namespace");
                    }
                    work(&shared, target);
                    Ok(())
                })
            })
            .collect();
        let mut worker_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => worker_error = Some(e),
                Err(_) => worker_error = Some(anyhow::anyhow!("a load worker panicked")),
            }
        }
        if let Some(e) = worker_error {
            return Err(e);
        }
        Ok(shared.result())
    })?
}

/// One HTTP/1.0 request on a new connection, checked: `HTTP/1.0 200` and a non-empty body.
fn http_once(target: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).with_context(|| format!("connect {target}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(HTTP_REQUEST).context("send request")?;
    let mut response = Vec::with_capacity(128);
    (&mut stream).take(MAX_RESPONSE).read_to_end(&mut response).context("read response")?;
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.0 200") {
        bail!("not an HTTP/1.0 200 answer: {text:?}");
    }
    match text.split_once("\r\n\r\n") {
        Some((_, body)) if !body.trim().is_empty() => Ok(()),
        _ => bail!("answer without a body: {text:?}"),
    }
}

fn churn_worker(shared: &Shared, target: SocketAddr) {
    while shared.claim() {
        match http_once(target) {
            Ok(()) => shared.success(),
            Err(e) => shared.failure(&e),
        }
    }
}

/// New-connection load: `workers` threads in `ns`, each looping connect (3 s timeout), one
/// HTTP/1.0 GET, read to EOF (the server closes first), check the answer. Stops after `max_conns`
/// attempts in total or `max_time`, whichever comes first. `per_second` of the result shows how
/// the rate develops over a long run.
pub fn churn(ns: &Netns, target: SocketAddr, workers: usize, max_conns: u64, max_time: Duration) -> Result<LoadResult> {
    run_workers(ns, workers, max_conns, max_time, churn_worker, target)
}

/// `churn`, named for callers that want the per-second timeline (every result carries it).
pub fn churn_timeline(
    ns: &Netns,
    target: SocketAddr,
    workers: usize,
    max_conns: u64,
    max_time: Duration,
) -> Result<LoadResult> {
    churn(ns, target, workers, max_conns, max_time)
}

/// One ECHO connection: the backend's name and the two halves of the stream.
struct Echo {
    reader: BufReader<std::io::Take<TcpStream>>,
    writer: TcpStream,
    backend: String,
    line: String,
}

impl Echo {
    fn open(target: SocketAddr) -> Result<Echo> {
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).with_context(|| format!("connect {target}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        writer.write_all(b"ECHO\n").context("send ECHO")?;
        let mut echo = Echo {
            reader: BufReader::new(stream.take(MAX_RESPONSE)),
            writer,
            backend: String::new(),
            line: String::new(),
        };
        echo.read_line().context("read the backend's name")?;
        echo.backend = echo.line.trim_end().to_string();
        ensure!(!echo.backend.is_empty(), "ECHO answered an empty name");
        Ok(echo)
    }

    /// Reads one line into `self.line`, each within the size cap.
    fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        self.reader.get_mut().set_limit(MAX_RESPONSE);
        if self.reader.read_line(&mut self.line)? == 0 {
            bail!("connection closed");
        }
        if !self.line.ends_with('\n') {
            bail!("incomplete line {:?}", self.line);
        }
        Ok(())
    }

    /// One round trip: sends `request` and checks the answer is `"<backend> <request>"`.
    fn exchange(&mut self, request: &str) -> Result<()> {
        self.writer.write_all(format!("{request}\n").as_bytes()).context("send line")?;
        self.read_line().context("read echo")?;
        let answer = self.line.trim_end();
        match answer.split_once(' ') {
            Some((name, echoed)) if name == self.backend && echoed == request => Ok(()),
            _ => bail!("echo answered {answer:?} to {request:?} on {}'s connection", self.backend),
        }
    }
}

fn keepalive_worker(shared: &Shared, target: SocketAddr) {
    let mut conn: Option<Echo> = None;
    let mut n = 0u64;
    while shared.claim() {
        let echo = match conn.as_mut() {
            Some(echo) => echo,
            None => match Echo::open(target) {
                Ok(echo) => conn.insert(echo),
                Err(e) => {
                    shared.failure(&e.context("open keep-alive connection"));
                    thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            },
        };
        n += 1;
        match echo.exchange(&format!("request-{n}")) {
            Ok(()) => shared.success(),
            Err(e) => {
                // The stream may be out of step now: count it and start a new connection.
                shared.failure(&e);
                conn = None;
                thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
}

/// Keep-alive load: `workers` threads in `ns`, each on one long-lived connection in the test
/// server's ECHO mode (send `ECHO`, read the backend's name, then one line out and the echoed
/// `"<name> <line>"` back per request). Stops after `max_requests` round trips in total or
/// `max_time`. A failed connection is counted and replaced by a new one after a short pause.
pub fn keepalive(
    ns: &Netns,
    target: SocketAddr,
    workers: usize,
    max_requests: u64,
    max_time: Duration,
) -> Result<LoadResult> {
    run_workers(ns, workers, max_requests, max_time, keepalive_worker, target)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rates_from_counts_and_timeline() {
        let result = LoadResult {
            ok: 30,
            failed: 0,
            elapsed: Duration::from_secs(3),
            first_error: None,
            per_second: vec![5, 10, 15],
        };
        assert_eq!(result.rate(), 10.0);
        assert_eq!(result.window_rate(0, 1), 5.0);
        assert_eq!(result.window_rate(1, 3), 12.5);
        assert_eq!(result.window_rate(2, 10), 15.0);
        assert_eq!(result.window_rate(3, 3), 0.0);
    }

    #[test]
    fn claims_stop_at_the_count() {
        let shared = Shared::new(3, Duration::from_secs(60));
        assert_eq!((0..10).filter(|_| shared.claim()).count(), 3);
        let expired = Shared::new(100, Duration::ZERO);
        assert!(!expired.claim());
    }
}
