//! `swarmlb trace`: the datapath's decisions about the packets of one client and/or one
//! service, one line each, as `cilium monitor` shows them. It writes the pinned `slb_trace`
//! filter with a deadline a few seconds ahead (renewed while it runs, so a killed trace turns
//! itself off), reads the aya-log records of the loaded `swarmlb_log` program that shares this
//! pin directory's maps, names reasons, actions, services and backends, and clears the filter
//! on exit. The agent takes no part.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    maps::{Array, MapData},
    programs::loaded_programs,
};
use aya_log::EbpfLogger;
use lb_common::{Reason, TraceFilter, maps};

use crate::{datapath::tables::monotonic_ns, state};

/// How far ahead the deadline is set, and how often it is pushed on.
pub const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);

/// Which packets to trace: `None` / 0 means any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub client: Option<Ipv4Addr>,
    pub service_id: u32,
}

fn trace_map(pin_dir: &Path) -> Result<Array<MapData, TraceFilter>> {
    let path = pin_dir.join(maps::TRACE);
    let map = MapData::from_pin(&path)
        .with_context(|| format!("no {} pinned in {} (is `swarmlb run` running?)", maps::TRACE, pin_dir.display()))?;
    Ok(Array::try_from(aya::maps::Map::Array(map))?)
}

/// Turns tracing on for `filter` until `lease` from now.
pub fn set(pin_dir: &Path, filter: Filter, lease: Duration) -> Result<()> {
    let value = TraceFilter {
        expires_ns: monotonic_ns()? + lease.as_nanos() as u64,
        enabled: 1,
        client: filter.client.map_or([0; 4], |a| a.octets()),
        service_id: filter.service_id,
        _pad: 0,
    };
    trace_map(pin_dir)?.set(0, value, 0).context("writing slb_trace")?;
    Ok(())
}

/// Turns tracing off.
pub fn clear(pin_dir: &Path) -> Result<()> {
    trace_map(pin_dir)?.set(0, TraceFilter::default(), 0).context("clearing slb_trace")?;
    Ok(())
}

/// Collects the messages aya-log decodes.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<String>>>);

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().expect("collector lock").push(record.args().to_string());
    }

    fn flush(&self) {}
}

/// The log records of every loaded `swarmlb_log` using this pin directory's `slb_trace`.
pub struct Reader {
    loggers: Vec<EbpfLogger<Collector>>,
    lines: Collector,
}

impl Reader {
    pub fn attach(pin_dir: &Path) -> Result<Self> {
        let trace_id = MapData::from_pin(pin_dir.join(maps::TRACE))
            .and_then(|m| m.info())
            .with_context(|| format!("no {} pinned in {}", maps::TRACE, pin_dir.display()))?
            .id();
        let lines = Collector::default();
        let mut loggers = Vec::new();
        for info in loaded_programs().filter_map(Result::ok) {
            if info.name_as_str() != Some(maps::PROG_LOG) {
                continue;
            }
            if !info.map_ids()?.unwrap_or_default().contains(&trace_id) {
                continue;
            }
            let logger = EbpfLogger::init_from_id_with_logger(info.id(), lines.clone())
                .with_context(|| format!("reading the log of program {}", info.id()))?;
            loggers.push(logger);
        }
        if loggers.is_empty() {
            bail!("no {} program uses the maps pinned in {}", maps::PROG_LOG, pin_dir.display());
        }
        Ok(Self { loggers, lines })
    }

    /// The lines logged since the last call.
    pub fn drain(&mut self) -> Vec<String> {
        for logger in &mut self.loggers {
            logger.flush();
        }
        std::mem::take(&mut *self.lines.0.lock().expect("collector lock"))
    }
}

/// Names for the ids and numbers in the datapath's lines.
#[derive(Default)]
pub struct Names {
    pub services: HashMap<u32, String>,
    pub backends: HashMap<u32, String>,
}

impl Names {
    pub fn from_state(state_dir: &Path) -> Result<Self> {
        let plan = state::load(state_dir)?.unwrap_or_default();
        Ok(Self {
            services: plan.services.iter().map(|s| (s.id, s.name.clone())).collect(),
            backends: plan.services.iter().flat_map(|s| &s.backends).map(|b| (b.id, b.name.clone())).collect(),
        })
    }

    /// `line` with `key=number` words named: reasons, XDP actions, protocols, directions,
    /// services and backends.
    pub fn render(&self, line: &str) -> String {
        let proto = line.split(' ').find_map(|w| w.strip_prefix("proto=")?.parse::<u8>().ok()).unwrap_or(0);
        let word = |w: &str| -> String {
            let Some((key, value)) = w.split_once('=') else { return w.to_owned() };
            let Ok(n) = value.parse::<u32>() else { return w.to_owned() };
            let named = match key {
                "reason" => Reason::ALL.get(n as usize).map(|r| r.name().to_owned()),
                "action" => ["aborted", "drop", "pass", "tx", "redirect"].get(n as usize).map(|s| s.to_string()),
                "proto" => match n {
                    1 => Some("icmp".into()),
                    6 => Some("tcp".into()),
                    17 => Some("udp".into()),
                    _ => None,
                },
                "direction" => ["to_backend", "to_client"].get(n as usize).map(|s| s.to_string()),
                "state" => u8::try_from(n).ok().map(|state| lb_common::state_name(proto, state).to_owned()),
                "service" => self.services.get(&n).cloned(),
                "backend" => self.backends.get(&n).cloned(),
                _ => None,
            };
            named.map_or_else(|| w.to_owned(), |name| format!("{key}={name}"))
        };
        line.split(' ').map(word).collect::<Vec<_>>().join(" ")
    }
}

/// Resolves `--service NAME` through the agent's state.
pub fn service_id(state_dir: &Path, name: &str) -> Result<u32> {
    let plan = state::load(state_dir)?.with_context(|| format!("no state in {}", state_dir.display()))?;
    match plan.services.iter().find(|s| s.name == name) {
        Some(s) => Ok(s.id),
        None => bail!("no service {name:?} in {}", state::path(state_dir).display()),
    }
}

/// Traces until Ctrl-C, SIGTERM or `duration`, printing one line per decision; the filter is
/// cleared whichever way it ends.
pub async fn run(pin_dir: &Path, names: &Names, filter: Filter, duration: Option<Duration>) -> Result<()> {
    let mut reader = Reader::attach(pin_dir)?;
    set(pin_dir, filter, LEASE)?;
    let result = follow(pin_dir, &mut reader, names, filter, duration).await;
    let cleared = clear(pin_dir);
    for line in reader.drain() {
        println!("{}", names.render(&line));
    }
    result.and(cleared)
}

async fn follow(
    pin_dir: &Path,
    reader: &mut Reader,
    names: &Names,
    filter: Filter,
    duration: Option<Duration>,
) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let end = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(end);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = &mut end => return Ok(()),
            _ = poll.tick() => {
                for line in reader.drain() {
                    println!("{}", names.render(&line));
                }
                if renewed.elapsed() >= RENEW {
                    set(pin_dir, filter, LEASE)?;
                    renewed = tokio::time::Instant::now();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_named() {
        let names = Names { services: [(1, "web".to_owned())].into(), backends: [(2, "web.1".to_owned())].into() };
        assert_eq!(
            names.render("198.18.0.50:40000 > 198.18.0.10:80 proto=6 new flow direction=0 service=1 backend=2 state=2"),
            "198.18.0.50:40000 > 198.18.0.10:80 proto=tcp new flow direction=to_backend service=web backend=web.1 \
             state=established"
        );
        assert_eq!(
            names.render("proto=17 action=2 reason=5 service=9"),
            "proto=udp action=pass reason=pass_no_frontend service=9"
        );
    }
}
