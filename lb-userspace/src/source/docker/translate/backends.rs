//! A service's tasks on a network: which of the network's entries are backends, named
//! `<service>.<slot>`, with the weight and node `/tasks` gives them (a worker has only the entries).

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use bollard::models::{NetworkTaskInfo, Task, TaskState};

use super::{nodes::Nodes, parse_ip};

/// `web.1.liv0d6hx…` -> (`web.1`, `liv0d6hx…`); a name without a dot is kept whole.
pub fn split_task_name(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or((name, ""))
}

/// A manager's `/tasks` by task id.
pub(super) fn tasks_by_id(tasks: Option<&[Task]>) -> Option<HashMap<&str, &Task>> {
    tasks.map(|ts| ts.iter().filter_map(|t| Some((t.id.as_deref()?, t))).collect())
}

pub(super) struct TaskBackend {
    pub name: String,
    pub ip: Ipv4Addr,
    pub weight: u32,
    pub node: Option<String>,
}

/// The tasks of `service` listed on a network, by name; the names unique.
pub(super) fn task_backends(
    service: &str,
    entries: &[NetworkTaskInfo],
    tasks: Option<&HashMap<&str, &Task>>,
    nodes: &Nodes,
) -> Vec<TaskBackend> {
    let mut out: Vec<TaskBackend> = entries.iter().filter_map(|e| backend_of(service, e, tasks, nodes)).collect();
    // Live tasks first, so a draining task that shares its slot with its replacement is the one
    // renamed (`web.1.<task id>`); the live one keeps `web.1` and its Maglev slots.
    out.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(&b.name)).then(a.ip.cmp(&b.ip)));
    rename_shared_slots(&mut out, entries);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn backend_of(
    service: &str,
    entry: &NetworkTaskInfo,
    tasks: Option<&HashMap<&str, &Task>>,
    nodes: &Nodes,
) -> Option<TaskBackend> {
    let full = entry.name.as_deref()?;
    let ip = entry.endpoint_ip.as_deref().and_then(parse_ip)?;
    let (base, id) = split_task_name(full);
    // `<service>.<slot>` (replicated) or `<service>.<node id>` (global).
    if base.rsplit_once('.').map(|(s, _)| s) != Some(service) {
        return None;
    }
    let host_node = nodes.host_of(entry).cloned();
    let (weight, node) = match tasks {
        // Worker: the network's entries are all it knows; an entry exists while the task's
        // endpoint does.
        None => (1, host_node),
        Some(tasks) => task_weight_and_node(tasks.get(id)?, host_node, nodes)?,
    };
    Some(TaskBackend { name: base.to_owned(), ip, weight, node })
}

/// `None` unless the task is running.
fn task_weight_and_node(task: &Task, host_node: Option<String>, nodes: &Nodes) -> Option<(u32, Option<String>)> {
    let state = task.status.as_ref().and_then(|s| s.state);
    // With a HEALTHCHECK, swarm keeps status.state at `starting` until the container
    // is healthy, so `running` here already means healthy (swarmkit's container
    // adapter waits for the health status before reporting running).
    if state != Some(TaskState::RUNNING) {
        return None;
    }
    let weight = match task.desired_state {
        Some(TaskState::RUNNING) => 1,
        // Scaled down, updated or removed: still serving its connections, no new ones.
        _ => 0,
    };
    let node = task.node_id.clone().filter(|n| nodes.contains(n)).or(host_node);
    Some((weight, node))
}

/// A name already taken becomes the entry's full task name (`#<index>` if it has none).
fn rename_shared_slots(backends: &mut [TaskBackend], entries: &[NetworkTaskInfo]) {
    let mut names = BTreeSet::new();
    for (i, b) in backends.iter_mut().enumerate() {
        if !names.insert(b.name.clone()) {
            let full = entries
                .iter()
                .find(|e| e.endpoint_ip.as_deref().and_then(parse_ip) == Some(b.ip))
                .and_then(|e| e.name.clone());
            b.name = full.unwrap_or_else(|| format!("{}#{i}", b.name));
            names.insert(b.name.clone());
        }
    }
}
