//! Tests against this machine's real Docker Engine in swarm mode: swarmlb follows services,
//! tasks and overlays through the Engine API and serves their published ports in XDP. Needs root
//! and a running Engine; every address Docker hands out here is inside 198.18.0.0/15.

use std::{collections::BTreeMap, net::SocketAddr, os::unix::process::CommandExt, sync::Mutex, time::Duration};

use anyhow::{Context, Result, ensure};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde_json::Value;
use tests::{
    agent::{Agent, Placement, unload_at},
    client::{EchoConn, http_get, http_get_path, http_spread, udp_spread},
    cmd::{docker, sh},
    docker::{CLIENT_ADDR, DockerSwarm, HOST_IFACE, HostClient, Stack, create_overlay, create_service, wait_running},
    poll::{Seen, wait_for, wait_until, wait_up_to},
};

/// One Engine: one test at a time.
static ENGINE: Mutex<()> = Mutex::new(());

fn placement(tag: &str) -> Placement {
    Placement { pin_dir: Some(format!("/sys/fs/bpf/slbt-{tag}")), ..Placement::default() }
}

const METRICS_ADDR: &str = "127.0.0.1:19720";

/// The sum of every sample of `metric` whose labels contain `label`, from a Prometheus text page.
fn metric_sum(page: &str, metric: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Backends `agent` has programmed for `service` with a weight above 0, as name -> addr.
fn active_backends(agent: &Agent, service: &str) -> Result<BTreeMap<String, String>> {
    let status = agent.status()?;
    let Some(service) = status["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == service)) else {
        return Ok(BTreeMap::new());
    };
    Ok(service["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .filter(|b| b["weight"].as_u64().unwrap_or(0) > 0)
        .map(|b| (b["name"].as_str().unwrap_or("").to_string(), b["addr"].as_str().unwrap_or("").to_string()))
        .collect())
}

fn wait_for_backends(agent: &Agent, service: &str, count: usize) -> Result<()> {
    wait_until(&format!("{service} to have {count} backends"), || Ok(active_backends(agent, service)?.len() == count))
}

/// `count` HTTP connections to the published `port`; a failure says what the agent, the node's
/// links and the client looked like at that moment, and whether the next connection works.
fn spread(agent: &Agent, client: &HostClient, port: u16, count: usize) -> Result<BTreeMap<String, usize>> {
    http_spread(&client.ns, client.published(port), count).with_context(|| {
        let host = |cmd: &str| sh(cmd).unwrap_or_else(|e| format!("{e:#}"));
        let in_client = |cmd: &str| client.ns.exec(cmd).unwrap_or_else(|e| format!("{e:#}"));
        let frontend = client.published(port);
        let retry = client.ns.run(move || http_get(frontend)).map(|r| r.map_err(|e| format!("{e:#}")));
        format!(
            "{}\nslb links:\n{}\npermanent neighbours:\n{}\nhost side of the client link:\n{}{}\n\
             client side:\n{}{}\na new connection right after the failure: {retry:?}",
            agent.diagnosis(),
            host("ip -br link show | grep slb- || true"),
            host("ip neigh show nud permanent | grep slb- || true"),
            host(&format!("ip -s link show {HOST_IFACE}")),
            host(&format!("ethtool -S {HOST_IFACE}")),
            in_client("ip -s link show eth0"),
            in_client("tc -s qdisc show dev eth0"),
        )
    })
}

fn xdp_forwarded(status: &Value) -> u64 {
    status["reasons"]["to_backend"].as_u64().unwrap_or(0)
}

#[test]
fn published_udp_and_label_opted_dnsrr_services_answer_through_xdp() -> Result<()> {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let _swarm = DockerSwarm::ensure()?;
    let _net = create_overlay("slbt-net", "198.19.200.0/24")?;
    let _web = create_service("slbt-web", "--replicas 3 --publish published=18080,target=8080,protocol=tcp")?;
    let _udp = create_service("slbt-udp", "--replicas 2 --publish published=18053,target=5353,protocol=udp")?;
    let _rr = create_service(
        "slbt-rr",
        "--replicas 2 --endpoint-mode dnsrr --network slbt-net --label swarmlb.publish=18081:8080/tcp",
    )?;
    for (service, replicas) in [("slbt-web", 3), ("slbt-udp", 2), ("slbt-rr", 2)] {
        wait_running(service, replicas)?;
    }
    let client = HostClient::new()?;
    let placement = Placement { metrics_addr: Some(METRICS_ADDR.into()), ..placement("published") };
    unload_at(&placement)?;
    let agent = Agent::start_docker(&placement, &[HOST_IFACE], None, 3)?;
    for (service, replicas) in [("slbt-web", 3), ("slbt-udp", 2), ("slbt-rr", 2)] {
        wait_for_backends(&agent, service, replicas)?;
    }

    let web = spread(&agent, &client, 18080, 120)?;
    eprintln!("120 connections to the published TCP port: {web:?}");
    ensure!(web.len() == 3 && web.keys().all(|k| k.starts_with("slbt-web.")), "web answers: {web:?}");

    let rr = spread(&agent, &client, 18081, 60)?;
    eprintln!("60 connections to the label-published dnsrr service: {rr:?}");
    ensure!(rr.len() == 2 && rr.keys().all(|k| k.starts_with("slbt-rr.")), "dnsrr answers: {rr:?}");

    let udp = udp_spread(&client.ns, client.published(18053), 40)?;
    eprintln!("40 UDP requests: {udp:?}");
    ensure!(udp.len() == 2, "UDP answers: {udp:?}");

    let status = agent.status()?;
    ensure!(xdp_forwarded(&status) >= 180 * 3, "XDP forwarded too little: {}", status["reasons"]);

    let metrics_addr: SocketAddr = METRICS_ADDR.parse()?;
    let page = http_get_path(metrics_addr, "/metrics")?;
    let web_flows = metric_sum(&page, "swarmlb_backend_new_flows_total", "service=\"slbt-web\"");
    ensure!(web_flows == 120.0, "/metrics counts {web_flows} new web connections, the client made 120:\n{page}");
    ensure!(metric_sum(&page, "swarmlb_sync_ok", "") == 1.0, "/metrics says the last sync failed:\n{page}");
    ensure!(metric_sum(&page, "swarmlb_agent_up", "") == 1.0, "/metrics says no agent runs:\n{page}");
    promtool_check_metrics(&page)?;
    for name in metrics_the_deploy_files_use()? {
        ensure!(page.contains(&format!("\n{name}")), "{name}, used in deploy/, is not on /metrics:\n{page}");
    }
    ensure!(healthz(metrics_addr)? == (200, "ok".into()), "/healthz is not ok");

    // A problem makes /healthz fail, listing it, until it is gone.
    let bad = create_service("slbt-badlabel", "--replicas 1 --label swarmlb.publish=nonsense")?;
    wait_until("/healthz to list the bad label", || {
        let (code, body) = healthz(metrics_addr)?;
        Ok(code == 503 && body.contains("slbt-badlabel"))
    })?;
    let status = agent.status()?;
    ensure!(
        status["problems"].to_string().contains("slbt-badlabel"),
        "status lists no problem: {}",
        status["problems"]
    );
    drop(bad);
    wait_until("/healthz to be ok again", || Ok(healthz(metrics_addr)? == (200, "ok".into())))?;
    drop(agent);
    unload_at(&placement)
}

/// `/healthz`: status code and body.
fn healthz(addr: SocketAddr) -> Result<(u16, String)> {
    tests::client::http_get_status(addr, "/healthz")
}

/// `promtool check metrics` (Prometheus' linter) on a `/metrics` page.
fn promtool_check_metrics(page: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("promtool (cargo xtask setup installs the prometheus package)")?;
    // The page arrives trimmed; the text format ends every line with a newline.
    child.stdin.take().context("stdin")?.write_all(format!("{page}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {}:\n{said}", out.status);
    Ok(())
}

/// Every `swarmlb_*` metric the shipped dashboard and alert rules query.
fn metrics_the_deploy_files_use() -> Result<std::collections::BTreeSet<String>> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut names = std::collections::BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).with_context(|| format!("deploy/{file}"))?;
        // Queries only (`expr: ...` in the rules, `"expr": ...` in the dashboard), not prose.
        let queries: String = text.lines().filter(|l| l.contains("expr")).collect::<Vec<_>>().join("\n");
        for (i, _) in queries.match_indices("swarmlb_") {
            let name: String = queries[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    ensure!(names.len() > 5, "deploy/ queries only {names:?}");
    Ok(names)
}

/// Task names currently running for `service`, with their container ids.
fn running_containers(service: &str) -> Result<BTreeMap<String, String>> {
    let out = docker(&format!(
        "ps --filter label=com.docker.swarm.service.name={service} \
         --format '{{{{.Label \"com.docker.swarm.task.name\"}}}} {{{{.ID}}}}'"
    ))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(task, id)| (task.split('.').take(2).collect::<Vec<_>>().join("."), id.to_string()))
        .collect())
}

#[test]
fn maps_follow_scaling_a_killed_task_and_a_rolling_update() -> Result<()> {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let _swarm = DockerSwarm::ensure()?;
    // The test server is PID 1 of a scratch container and ignores SIGTERM: a short grace period
    // keeps stops quick (a stopping task drains for that long).
    let _web = create_service(
        "slbt-scale",
        "--replicas 3 --stop-grace-period 2s --publish published=18090,target=8080,protocol=tcp",
    )?;
    wait_running("slbt-scale", 3)?;
    let client = HostClient::new()?;
    let placement = placement("scale");
    unload_at(&placement)?;
    let agent = Agent::start_docker(&placement, &[HOST_IFACE], None, 1)?;
    wait_for_backends(&agent, "slbt-scale", 3)?;
    let frontend = client.published(18090);
    let mut conn = client.ns.run(move || EchoConn::open(frontend))??;
    conn.exchange("hello")?;

    docker("service scale --detach slbt-scale=5")?;
    wait_running("slbt-scale", 5)?;
    wait_for_backends(&agent, "slbt-scale", 5)?;
    let answers = spread(&agent, &client, 18090, 100)?;
    ensure!(answers.len() == 5, "after scaling to 5: {answers:?}");
    conn.exchange("after scale up")?;

    docker("service scale --detach slbt-scale=2")?;
    wait_running("slbt-scale", 2)?;
    wait_for_backends(&agent, "slbt-scale", 2)?;
    let alive = running_containers("slbt-scale")?;
    let answers = spread(&agent, &client, 18090, 60)?;
    ensure!(answers.keys().all(|k| alive.contains_key(k)), "after scaling to 2: {answers:?}, running {alive:?}");
    if alive.contains_key(&conn.backend) {
        conn.exchange("after scale down")?;
    } else {
        eprintln!("the long-lived connection's task {} was scaled away; it ends with it", conn.backend);
    }

    // Kill a task's container (not the long-lived connection's); swarm replaces it.
    let victim = alive.iter().find(|(task, _)| **task != conn.backend).context("a task to kill")?;
    let killed_addr = active_backends(&agent, "slbt-scale")?.get(victim.0).cloned().context("victim addr")?;
    docker(&format!("kill {}", victim.1))?;
    wait_until("the killed task to leave the maps", || {
        Ok(active_backends(&agent, "slbt-scale")?.values().all(|addr| *addr != killed_addr))
    })?;
    let answers = spread(&agent, &client, 18090, 60)?;
    ensure!(answers.values().sum::<usize>() == 60, "after a kill: {answers:?}");
    if alive.contains_key(&conn.backend) {
        conn.exchange("after a kill")?;
    }

    // Rolling update: every task replaced, one at a time.
    docker("service update --detach --force --update-parallelism 1 --update-delay 1s slbt-scale")?;
    let before = active_backends(&agent, "slbt-scale")?;
    wait_up_to(Duration::from_secs(90), "the rolling update to reach the maps", || {
        let now = active_backends(&agent, "slbt-scale")?;
        Ok(now.len() == 2 && now.values().all(|addr| !before.values().any(|old| old == addr)))
    })?;
    let answers = spread(&agent, &client, 18090, 60)?;
    ensure!(answers.values().sum::<usize>() == 60, "after the rolling update: {answers:?}");
    // Reported, never asserted: how long after each Engine event the maps were written.
    let lags: Vec<String> = agent
        .log_text()
        .lines()
        .filter_map(|l| l.split("synced in ").nth(1).map(|rest| rest.split(' ').next().unwrap_or("").to_string()))
        .collect();
    eprintln!("event -> maps written, ms: {}", lags.join(" "));
    drop(agent);
    unload_at(&placement)
}

/// What `status --json` says about the agent's sync: whether the last one worked, how many have
/// failed, and the problem naming a failing sync (if any).
fn sync_state(agent: &Agent) -> Result<(bool, u64, Option<String>)> {
    let status = agent.status()?;
    let problem = status["problems"]
        .as_array()
        .and_then(|p| p.iter().filter_map(Value::as_str).find(|p| p.starts_with("sync failing")).map(str::to_string));
    Ok((status["agent"]["sync_ok"] == true, status["agent"]["sync_failures"].as_u64().unwrap_or(0), problem))
}

#[test]
fn the_datapath_keeps_serving_when_the_engine_stops_answering() -> Result<()> {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let _swarm = DockerSwarm::ensure()?;
    let _web = create_service("slbt-frozen", "--replicas 2 --publish published=18070,target=8080,protocol=tcp")?;
    wait_running("slbt-frozen", 2)?;
    let client = HostClient::new()?;
    // The agent reaches the Engine through a relay that the test can freeze: its own process
    // group, so one SIGSTOP stops the listener and every connection it forked (the event
    // stream's and the ones requests reuse) alike.
    let socket = std::env::temp_dir().join("slbt-frozen-docker.sock");
    let _ = std::fs::remove_file(&socket);
    let mut relay = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
        .arg("UNIX-CONNECT:/var/run/docker.sock")
        .process_group(0)
        .spawn()
        .context("socat (cargo xtask setup installs it)")?;
    let group = Pid::from_raw(relay.id() as i32);
    wait_until("the relay socket", || Ok(socket.exists()))?;
    // Full reads every 2 s: frozen, the agent's next one hangs until its 10 s request timeout.
    let placement = Placement { resync_interval_s: Some(2), ..placement("frozen") };
    unload_at(&placement)?;
    let agent = Agent::start_docker(&placement, &[HOST_IFACE], Some(&format!("unix://{}", socket.display())), 1);
    let result = (|| -> Result<()> {
        let agent = agent?;
        wait_for_backends(&agent, "slbt-frozen", 2)?;
        let (ok, failures_before, _) = sync_state(&agent)?;
        ensure!(ok, "the agent's sync failed before the freeze: {}", agent.diagnosis());
        killpg(group, Signal::SIGSTOP).context("freezing the relay")?;
        // The agent tries to read the Engine, fails, and says so; the datapath keeps serving.
        let problem = wait_for("the agent to report the frozen Engine", Duration::from_secs(30), || {
            let (ok, failures, problem) = sync_state(&agent)?;
            let logged = agent.log_text().contains("keeping the last good state");
            Ok(match problem {
                Some(problem) if !ok && failures > failures_before && logged => Seen::Ready(problem),
                _ => Seen::NotYet(format!("sync ok {ok}, {failures} failures, logged {logged}, problem {problem:?}")),
            })
        })
        .with_context(|| agent.diagnosis())?;
        eprintln!("with the Engine frozen: {problem}");
        ensure!(problem.contains("Docker Engine"), "the problem does not name the Engine: {problem}");
        ensure!(active_backends(&agent, "slbt-frozen")?.len() == 2, "the agent dropped its last good state");
        let answers = spread(&agent, &client, 18070, 20)?;
        ensure!(answers.len() == 2, "with the Engine frozen: {answers:?}");

        killpg(group, Signal::SIGCONT).context("thawing the relay")?;
        wait_for("the agent to sync again", Duration::from_secs(30), || {
            let (ok, failures, problem) = sync_state(&agent)?;
            Ok(Seen::when(ok && problem.is_none(), format!("sync ok {ok}, {failures} failures, problem {problem:?}")))
        })
        .with_context(|| agent.diagnosis())?;
        ensure!(agent.log_text().contains("Docker Engine answers again"), "no recovery logged: {}", agent.diagnosis());
        let answers = spread(&agent, &client, 18070, 20)?;
        ensure!(answers.len() == 2, "after the Engine answers again: {answers:?}");
        Ok(())
    })();
    let _ = killpg(group, Signal::SIGKILL);
    let _ = relay.kill();
    let _ = relay.wait();
    let _ = std::fs::remove_file(&socket);
    unload_at(&placement)?;
    result
}

#[test]
fn the_stack_file_runs_swarmlb_as_a_global_service_that_serves_published_ports() -> Result<()> {
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let _swarm = DockerSwarm::ensure()?;
    // As found: this machine's / is private, which the stack must not need.
    let _web = create_service("slbt-stack-web", "--replicas 2 --publish published=18060,target=8080,protocol=tcp")?;
    wait_running("slbt-stack-web", 2)?;
    let client = HostClient::new()?;
    // The stack's agent pins where an agent does by default.
    let default = Placement::default();
    unload_at(&default)?;
    let stack_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/swarmlb.yml");
    let stack = Stack::deploy(&stack_file, "slbt-lb", &[("SWARMLB_IFACE", HOST_IFACE)])?;
    let result = (|| -> Result<()> {
        wait_until("the stack's agent to program slbt-stack-web", || {
            Ok(tests::agent::status_at(&default)
                .map(|s| {
                    s["services"].as_array().is_some_and(|services| {
                        services
                            .iter()
                            .any(|s| s["name"] == "slbt-stack-web" && s["backends"].as_array().map(Vec::len) == Some(2))
                    })
                })
                .unwrap_or(false))
        })?;
        let answers = http_spread(&client.ns, client.published(18060), 40)?;
        eprintln!("40 connections through the stack-deployed agent: {answers:?}");
        ensure!(answers.len() == 2, "answers: {answers:?}");
        let status = tests::agent::status_at(&default)?;
        ensure!(xdp_forwarded(&status) >= 40 * 3, "XDP forwarded too little: {}", status["reasons"]);

        // Replies to a client the node has no neighbour entry for: deleted, then never seen.
        client.never_arp_the_node()?;
        let frontend = client.published(18060);
        let first_try = |what: &str| -> Result<()> {
            let before = client.syn_retransmits()?;
            let answer = client.ns.run(move || http_get(frontend))?.with_context(|| what.to_string())?;
            let retransmits = client.syn_retransmits()? - before;
            ensure!(retransmits == 0, "{what}: answered by {answer} only after {retransmits} SYN retransmits");
            Ok(())
        };
        for round in 0..3 {
            sh(&format!("ip neigh del {CLIENT_ADDR} dev {HOST_IFACE} 2>/dev/null || true"))?;
            first_try(&format!("round {round}, the client's neighbour entry deleted"))?;
        }
        for last in [3, 4, 5] {
            let addr = std::net::Ipv4Addr::new(198, 18, 252, last);
            client.connect_from(addr)?;
            first_try(&format!("a client at {addr}, which the node never saw"))?;
        }
        let status = tests::agent::status_at(&default)?;
        ensure!(
            status["reasons"]["to_neigh_resolver"].as_u64().unwrap_or(0) >= 6,
            "the replies did not take the neighbour hand-off: {}",
            status["reasons"]
        );
        ensure!(status["agent"]["state"] == "running", "agent: {}", status["agent"]);

        // A network made after the agent started: its namespaces are hidden from the container
        // (its bind does not follow new mounts); the agent exits, swarm starts it again.
        let _net = create_overlay("slbt-stack-net", "198.19.201.0/24")?;
        let _rr = create_service(
            "slbt-stack-rr",
            "--replicas 2 --endpoint-mode dnsrr --network slbt-stack-net --label swarmlb.publish=18061:8080/tcp",
        )?;
        wait_running("slbt-stack-rr", 2)?;
        let frontend = client.published(18061);
        wait_up_to(Duration::from_secs(90), "the stack's agent to serve a service on a new network", || {
            Ok(client.ns.run(move || http_get(frontend))?.is_ok_and(|answer| answer.starts_with("slbt-stack-rr.")))
        })?;
        let answers = http_spread(&client.ns, frontend, 20)?;
        ensure!(answers.len() == 2, "the new network's service: {answers:?}");
        Ok(())
    })()
    .with_context(|| format!("swarmlb service logs:\n{}", stack.logs("swarmlb")));
    drop(stack);
    unload_at(&default)?;
    result
}
