//! Namespace tests: a client, a load-balancer node running the real `swarmlb run` with XDP on both
//! its interfaces, and backends running real TCP and UDP servers. Needs root; the pinned datapath
//! is node-wide, so these tests run one at a time.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Mutex, thread, time::Duration};

use anyhow::{Context, Result, ensure};
use lb_common::maps::{CONNTRACK, PIN_DIR, TRACE};
use serde_json::Value;
use tests::{
    agent::{self, Agent, Placement},
    client::{EchoConn, http_get_path, http_spread, udp_ask_from, udp_peer_seen, udp_spread},
    cmd::sh,
    poll::wait_until,
    topology::{self, LB_FRONT_ADDR, SingleNode, backend_name},
};

/// The datapath is pinned node-wide: one topology at a time.
static NODE: Mutex<()> = Mutex::new(());

fn write_config(topo: &SingleNode, backends: &[usize]) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.toml", topo.lb.name));
    std::fs::write(&path, topology::config(backends))?;
    Ok(path)
}

fn start(topo: &SingleNode, config: &std::path::Path) -> Result<Agent> {
    agent::unload()?;
    Agent::start(&topo.lb, &["front", "back"], config.to_str().context("path")?, 2)
}

fn service<'a>(status: &'a Value, name: &str) -> Result<&'a Value> {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .with_context(|| format!("service {name} not in status: {status}"))
}

/// Names of the backends `status` lists for `service` with a weight above zero.
fn active_backends(service_name: &str) -> Result<Vec<String>> {
    let status = agent::status()?;
    let backends = service(&status, service_name)?["backends"].as_array().cloned().unwrap_or_default();
    Ok(backends
        .iter()
        .filter(|b| b["weight"].as_u64().unwrap_or(0) > 0)
        .filter_map(|b| b["name"].as_str().map(String::from))
        .collect())
}

/// Opens `count` HTTP connections to `port` of the load balancer and counts answers per backend.
fn spread(topo: &SingleNode, port: u16, count: usize) -> Result<BTreeMap<String, usize>> {
    http_spread(&topo.client, topo.frontend(port), count)
}

#[test]
fn spreads_tcp_connections_answers_udp_and_counts_what_it_did() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let _agent = start(&topo, &config)?;

    let answers = spread(&topo, 80, 300)?;
    eprintln!("300 connections to {LB_FRONT_ADDR}:80: {answers:?}");
    ensure!(answers.len() == 3, "not every backend answered: {answers:?}");
    for (backend, count) in &answers {
        ensure!((60..=138).contains(count), "{backend} took {count} of 300 (outside 20%..46%)");
    }

    // A published port answers on every local address of the node.
    let published = spread(&topo, 8080, 30)?;
    ensure!(published.values().sum::<usize>() == 30, "published port answers: {published:?}");

    let udp_answers = udp_spread(&topo.client, topo.frontend(53), 30)?;
    eprintln!("30 UDP requests: {udp_answers:?}");
    ensure!(udp_answers.len() >= 2, "UDP went to one backend only: {udp_answers:?}");

    topo.client
        .exec(&format!("ping -c 2 -W 2 {LB_FRONT_ADDR} >/dev/null"))
        .context("ping to the load-balancer node")?;

    let status = agent::status()?;
    let web = service(&status, "web")?;
    ensure!(web["new_flows"] == 330, "web new_flows: {}", web["new_flows"]);
    for backend in web["backends"].as_array().context("backends")? {
        let name = backend["name"].as_str().context("name")?;
        let sent = answers.get(name).copied().unwrap_or(0) + published.get(name).copied().unwrap_or(0);
        ensure!(
            backend["new_flows"] == sent as u64,
            "{name}: status {} new flows, clients saw {sent}",
            backend["new_flows"]
        );
    }
    let dns = service(&status, "dns")?;
    ensure!(dns["new_flows"] == 30, "dns new_flows: {}", dns["new_flows"]);
    ensure!(dns["packets"] == 60, "dns packets (30 requests + 30 answers): {}", dns["packets"]);
    ensure!(status["reasons"]["to_backend"].as_u64() >= Some(330 * 3), "reasons: {}", status["reasons"]);
    ensure!(status["reasons"]["to_client"].as_u64() >= Some(330 * 2), "reasons: {}", status["reasons"]);

    // Full NAT: the backend sees the node's NAT address as the peer, never the client's.
    let frontend = topo.frontend(80);
    let seen = topo.client.run(move || http_get_path(frontend, "/peer"))??;
    ensure!(
        seen.split_whitespace().nth(1).is_some_and(|peer| peer.starts_with(&format!("{}:", topology::LB_BACK_ADDR))),
        "the backend saw {seen:?}"
    );
    let (_, udp_seen) = topo.client.run(move || udp_peer_seen(SocketAddr::from((LB_FRONT_ADDR, 53))))??;
    ensure!(udp_seen.starts_with(&format!("{}:", topology::LB_BACK_ADDR)), "the UDP backend saw {udp_seen:?}");
    agent::unload()
}

#[test]
fn long_lived_connection_survives_a_backend_removed_and_readded_by_reload() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let mut topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let agent = start(&topo, &config)?;

    let frontend = topo.frontend(80);
    let mut conn = topo.client.run(move || EchoConn::open(frontend))??;
    conn.exchange("before")?;
    let kept = (0..3).find(|&i| backend_name(i) == conn.backend).context("echo backend")?;
    let removed = (kept + 1) % 3;
    let remaining: Vec<usize> = (0..3).filter(|&i| i != removed).collect();

    // Removal through SIGHUP.
    std::fs::write(&config, topology::config(&remaining))?;
    agent.signal("HUP")?;
    wait_until("the backend's removal", || Ok(!active_backends("web")?.contains(&backend_name(removed))))?;
    conn.exchange("after removal")?;
    let answers = spread(&topo, 80, 60)?;
    ensure!(!answers.contains_key(&backend_name(removed)), "removed backend still got new connections: {answers:?}");
    conn.exchange("after new connections")?;

    // `swarmlb flows` lists the long-lived connection, established, on its backend, and the 60
    // closed ones (closing: both sides sent FIN), none of them on the removed backend.
    let flows = agent.flows()?;
    let web: Vec<&Value> = flows.iter().filter(|f| f["service"] == "web" && f["proto"] == "tcp").collect();
    let open: Vec<&&Value> = web.iter().filter(|f| f["state"] == "established").collect();
    ensure!(
        open.len() == 1
            && open[0]["backend"] == conn.backend.as_str()
            && open[0]["client"].as_str().is_some_and(|c| c.starts_with("198.18.")),
        "open web connections: {open:?}"
    );
    let closed = web.iter().filter(|f| f["state"] == "closing").count();
    ensure!(closed == 60, "{closed} closed web connections listed, the client made 60: {web:?}");
    ensure!(
        web.iter().all(|f| f["backend"] != backend_name(removed).as_str()),
        "a listed flow uses the removed backend: {web:?}"
    );

    // The removed backend goes away for real, then comes back; re-added by a file change alone.
    topo.remove_backend(removed)?;
    topo.add_backend(removed)?;
    thread::sleep(Duration::from_millis(1100)); // a new mtime even on coarse clocks
    std::fs::write(&config, topology::config(&[0, 1, 2]))?;
    wait_until("the backend's return", || Ok(active_backends("web")?.contains(&backend_name(removed))))?;
    conn.exchange("after re-add")?;
    let answers = spread(&topo, 80, 60)?;
    ensure!(answers.len() == 3, "re-added backend gets no new connections: {answers:?}");
    for i in 0..20 {
        conn.exchange(&format!("line {i}"))?;
    }
    drop(agent);
    agent::unload()
}

#[test]
fn udp_client_that_keeps_its_port_moves_off_a_removed_backend() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let mut topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let agent = start(&topo, &config)?;
    // A resolver-like client: every query from the same source port.
    let frontend = topo.frontend(53);
    let ask = |topo: &SingleNode, question: &'static str| -> Result<String> {
        topo.client.run(move || udp_ask_from(45353, frontend, question))?.with_context(|| {
            format!("query {question:?}: {}", agent::status().map(|s| s["reasons"].to_string()).unwrap_or_default())
        })
    };
    let first = ask(&topo, "first")?;
    ensure!(ask(&topo, "again")? == first, "one source port, one flow, one backend");
    let gone = (0..3).find(|&i| backend_name(i) == first).context("answering backend")?;

    // The task goes away for real and leaves the config.
    topo.remove_backend(gone)?;
    let remaining: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    std::fs::write(&config, topology::config(&remaining))?;
    agent.signal("HUP")?;
    let configured = format!("{first}-udp");
    wait_until("the backend's removal", || Ok(!active_backends("dns")?.contains(&configured)))?;
    let after = ask(&topo, "after removal")?;
    ensure!(after != first, "the flow still went to the removed backend {first}");
    ensure!(ask(&topo, "and then")? == after, "the moved flow keeps its new backend");

    // The same when the backend is removed while no agent runs: the next agent's start flags it.
    let mut agent = agent;
    agent.stop()?;
    let second = (0..3).find(|&i| backend_name(i) == after).context("answering backend")?;
    topo.remove_backend(second)?;
    let last: Vec<usize> = remaining.iter().copied().filter(|&i| i != second).collect();
    std::fs::write(&config, topology::config(&last))?;
    let _agent = Agent::start(&topo.lb, &["front", "back"], config.to_str().context("path")?, 2)?;
    // The state file still lists the old agent's services: wait for this agent's plan.
    wait_until("the restarted agent's plan", || {
        Ok(active_backends("dns")? == [format!("{}-udp", backend_name(last[0]))])
    })?;
    let moved = ask(&topo, "after a restart")?;
    ensure!(
        moved == backend_name(last[0]),
        "after the restart the flow went to {moved}, not to {}",
        backend_name(last[0])
    );
    agent::unload()
}

/// Packets and new flows per backend of the `web` service, from a status report.
fn backend_counters(status: &Value) -> Result<BTreeMap<String, (u64, u64)>> {
    let backends = service(status, "web")?["backends"].as_array().cloned().unwrap_or_default();
    let counters: BTreeMap<String, (u64, u64)> = backends
        .iter()
        .map(|b| {
            let n = |k: &str| b[k].as_u64().unwrap_or(0);
            (b["name"].as_str().unwrap_or("").to_string(), (n("packets"), n("new_flows")))
        })
        .collect();
    ensure!(counters.values().any(|(p, _)| *p > 0), "no backend counted anything: {counters:?}");
    Ok(counters)
}

fn pinned_ids() -> Result<String> {
    let links = sh("bpftool -j link show")?;
    let links: Value = serde_json::from_str(&links)?;
    let mut xdp: Vec<String> = links
        .as_array()
        .context("bpftool link list")?
        .iter()
        .filter(|l| l["type"] == "xdp")
        .map(|l| format!("link {}", l["id"]))
        .collect();
    xdp.sort();
    let conntrack: Value = serde_json::from_str(&sh("bpftool -j map show name slb_conntrack")?)?;
    Ok(format!("{xdp:?} conntrack map {}", conntrack["id"]))
}

#[test]
fn open_connection_survives_an_agent_restart() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let mut agent = start(&topo, &config)?;
    let before = pinned_ids()?;

    let frontend = topo.frontend(80);
    let mut conn = topo.client.run(move || EchoConn::open(frontend))??;
    conn.exchange("before restart")?;
    let running = agent::status()?;
    ensure!(running["agent"]["state"] == "running", "agent: {}", running["agent"]);
    ensure!(
        running["interfaces"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["neigh_handoff"] == true)),
        "interfaces: {}",
        running["interfaces"]
    );
    agent.stop()?;
    conn.exchange("while the agent is down")?;
    let answers = spread(&topo, 80, 10)?;
    ensure!(answers.values().sum::<usize>() == 10, "new connections while the agent is down: {answers:?}");
    let (text, code) = agent::status_text_at(&Default::default())?;
    ensure!(code == Some(3), "status exits {code:?} without an agent:\n{text}");
    ensure!(text.contains("agent: NOT RUNNING") && text.contains("problem: agent not running"), "status:\n{text}");
    let down = agent::status()?;
    let counted = backend_counters(&down)?;

    let restarted = Agent::start(&topo.lb, &["front", "back"], config.to_str().context("path")?, 2)?;
    ensure!(!restarted.log_text().contains("differs"), "a pinned map was not reused:\n{}", restarted.log_text());
    conn.exchange("after restart")?;
    let after = pinned_ids()?;
    ensure!(before == after, "the restart replaced the datapath:\nbefore {before}\nafter  {after}");
    let kept = backend_counters(&agent::status()?)?;
    for (backend, (packets, flows)) in &counted {
        let (p, f) = kept.get(backend).copied().unwrap_or_default();
        ensure!(
            p >= *packets && f >= *flows,
            "{backend}: counters {packets}/{flows} before the restart, {p}/{f} after"
        );
    }
    let answers = spread(&topo, 80, 30)?;
    ensure!(answers.values().sum::<usize>() == 30, "after restart: {answers:?}");
    agent::unload()
}

/// The pinned connection table's id and `max_entries`, from bpftool.
fn conntrack_map() -> Result<(u64, u64)> {
    let pin = format!("{PIN_DIR}/{CONNTRACK}");
    let map: Value = serde_json::from_str(&sh(&format!("bpftool -j map show pinned {pin}"))?)?;
    Ok((map["id"].as_u64().context("map id")?, map["max_entries"].as_u64().context("max_entries")?))
}

/// Waits until the kernel has freed map `id` (nothing holds the replaced table any more).
fn wait_until_freed(id: u64) -> Result<()> {
    wait_until(&format!("map {id} to be freed"), || Ok(sh(&format!("bpftool map show id {id}")).is_err()))
}

#[test]
fn open_connections_survive_an_upgrade_that_resizes_the_connection_table() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let config = config.to_str().context("path")?;
    agent::unload()?;
    let sized = |max_connections| Placement { max_connections: Some(max_connections), ..Placement::default() };
    let mut agent = Agent::start_placed(&topo.lb, &sized(8192), &["front", "back"], config, 2)?;
    let (small_id, small_entries) = conntrack_map()?;
    ensure!(small_entries == 2 * 8192, "--max-connections 8192 gave a table of {small_entries}");

    let frontend = topo.frontend(80);
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(topo.client.run(move || EchoConn::open(frontend))??);
    }
    for conn in &mut conns {
        conn.exchange("before the upgrade")?;
    }
    let counted = backend_counters(&agent::status()?)?;
    agent.stop()?;

    // The next agent wants a table four times the size: the pin cannot be reused.
    let mut agent = Agent::start_placed(&topo.lb, &sized(32768), &["front", "back"], config, 2)?;
    let (big_id, big_entries) = conntrack_map()?;
    ensure!(big_id != small_id && big_entries == 2 * 32768, "table after the upgrade: id {big_id}, {big_entries}");
    let capacity = &agent::status()?["conntrack_capacity"];
    ensure!(capacity == 2 * 32768, "status gives the table {capacity} entries");
    ensure!(agent.log_text().contains("carried over"), "the carry-over was not logged:\n{}", agent.log_text());
    wait_until_freed(small_id)?;
    for conn in &mut conns {
        conn.exchange("after growing the table")?;
    }
    let kept = backend_counters(&agent::status()?)?;
    for (backend, (packets, flows)) in &counted {
        let (p, f) = kept.get(backend).copied().unwrap_or_default();
        ensure!(p >= *packets && f >= *flows, "{backend}: counters {packets}/{flows} before, {p}/{f} after");
    }
    let answers = spread(&topo, 80, 30)?;
    ensure!(answers.values().sum::<usize>() == 30, "new connections after the upgrade: {answers:?}");
    agent.stop()?;

    // And back down: every open connection still fits and is carried over.
    let _agent = Agent::start_placed(&topo.lb, &sized(1024), &["front", "back"], config, 2)?;
    ensure!(conntrack_map()?.1 == 2 * 1024, "table after shrinking: {:?}", conntrack_map()?);
    wait_until_freed(big_id)?;
    for conn in &mut conns {
        conn.exchange("after shrinking the table")?;
    }
    agent::unload()
}

/// Whether the pinned trace filter is on, from bpftool (BTF names the field).
fn trace_enabled() -> Result<bool> {
    let dump: Value = serde_json::from_str(&sh(&format!("bpftool -j map dump pinned {PIN_DIR}/{TRACE}"))?)?;
    Ok(dump[0]["formatted"]["value"]["enabled"].as_u64().context("slb_trace's value")? != 0)
}

#[test]
fn trace_shows_one_clients_decisions_and_turns_itself_off() -> Result<()> {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let topo = SingleNode::new(3)?;
    let config = write_config(&topo, &[0, 1, 2])?;
    let _agent = start(&topo, &config)?;
    let client = topology::CLIENT_ADDR.to_string();
    let trace = std::process::Command::new(agent::swarmlb_binary()?)
        .args(["trace", "--client", &client, "--duration", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the trace filter to be set", trace_enabled)?;
    let answers = spread(&topo, 80, 5)?;
    ensure!(answers.values().sum::<usize>() == 5, "traced connections: {answers:?}");
    let out = trace.wait_with_output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "swarmlb trace: {}\n{stderr}", out.status);
    let from_client = |l: &&str| l.starts_with(&format!("{client}:"));
    let new_flows = stdout.lines().filter(|l| from_client(l) && l.contains(" new flow ")).count();
    ensure!(new_flows == 5, "{new_flows} new flows traced of 5:\n{stdout}");
    for named in ["frontend service=web", "backend=backend-", "state=", "reason=to_backend", "reason=to_client"] {
        ensure!(stdout.contains(named), "no {named:?} in the trace:\n{stdout}");
    }
    ensure!(!trace_enabled()?, "the filter stayed on after the trace ended");
    agent::unload()
}
