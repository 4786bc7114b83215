//! Every call to the Docker Engine lives here (bollard over the unix socket, API version
//! negotiated). [`Engine::snapshot`] reads what [`super::translate`] needs; nothing here
//! interprets it. Containers' sandbox keys are inspected once per container start and kept for
//! the session ([`Engine::observe`] forgets one when its container starts or dies).

use std::{
    collections::{HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use bollard::{
    API_DEFAULT_VERSION, Docker,
    models::{ContainerSummary, EventMessage, EventMessageTypeEnum},
    query_parameters::{
        EventsOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions,
        ListNodesOptions, ListServicesOptions, ListTasksOptions,
    },
};
use futures_util::{Stream, StreamExt, stream};
use tracing::warn;

use super::translate::Snapshot;

/// Seconds an Engine request may take to answer (headers; the event stream then stays open).
const TIMEOUT_SECS: u64 = 10;
/// Container inspects in flight at once.
const INSPECTS_AT_ONCE: usize = 8;

/// The Engine's socket: `--docker-host`, else `DOCKER_HOST`, else `/var/run/docker.sock`.
/// Only unix sockets (`unix:///path` or a plain path) are supported.
pub fn socket_path(host: &str) -> Result<String> {
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(path.to_owned());
    }
    if host.contains("://") {
        bail!("--docker-host {host:?}: only unix sockets are supported (unix:///path or /path)");
    }
    Ok(host.to_owned())
}

/// Where the stack mounts the host's procfs: through it the agent reaches a container's
/// namespace by the container's host pid, whatever the mount propagation of its bind of
/// Docker's namespace directory.
pub const HOST_PROC: &str = "/host/proc";

/// Where the agent can open a container's network namespace: its `SandboxKey` if that is a
/// namespace in the agent's view (an agent on the host, or a bind of Docker's namespace directory
/// that follows new mounts), else `/host/proc/<pid>/ns/net`; empty if neither can be opened.
fn netns_path(c: &bollard::models::ContainerInspectResponse) -> String {
    use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, statfs};
    let is = |path: &str, magic| statfs(path).is_ok_and(|s| s.filesystem_type() == magic);
    let key = c.network_settings.as_ref().and_then(|n| n.sandbox_key.as_deref()).unwrap_or_default();
    if !key.is_empty() && is(key, NSFS_MAGIC) {
        return key.to_owned();
    }
    match c.state.as_ref().and_then(|s| s.pid).filter(|pid| *pid > 0) {
        Some(pid) if is(HOST_PROC, PROC_SUPER_MAGIC) => format!("{HOST_PROC}/{pid}/ns/net"),
        _ => String::new(),
    }
}

pub struct Engine {
    docker: Docker,
    /// Where the agent opens each listed container's network namespace ([`netns_path`]), by
    /// container id: it stays the same while the container runs.
    sandbox_keys: HashMap<String, String>,
}

impl Engine {
    /// Connects and negotiates the API version (the Engine's if older than bollard's).
    pub async fn connect(host: &str) -> Result<Engine> {
        let path = socket_path(host)?;
        let docker = Docker::connect_with_unix(&path, TIMEOUT_SECS, API_DEFAULT_VERSION)
            .with_context(|| format!("connecting to the Docker Engine at {path}"))?;
        let docker =
            docker.negotiate_version().await.with_context(|| format!("negotiating the API version with {path}"))?;
        Ok(Engine { docker, sandbox_keys: HashMap::new() })
    }

    /// Reads everything one sync needs. On a worker (`control_available` false) `/services`,
    /// `/tasks` and `/nodes` are not asked: the Engine refuses them there.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let d = &self.docker;
        let info = d.info().await.context("GET /info")?;
        let manager = info.swarm.as_ref().and_then(|s| s.control_available).unwrap_or(false);
        let (nodes, services, tasks) = if manager {
            let nodes = d.list_nodes(None::<ListNodesOptions>).await.context("GET /nodes")?;
            let services = d.list_services(None::<ListServicesOptions>).await.context("GET /services")?;
            let tasks = d.list_tasks(None::<ListTasksOptions>).await.context("GET /tasks")?;
            (Some(nodes), Some(services), Some(tasks))
        } else {
            (None, None, None)
        };
        let filters = HashMap::from([("driver".to_owned(), vec!["overlay".to_owned()])]);
        let list =
            d.list_networks(Some(ListNetworksOptions { filters: Some(filters) })).await.context("GET /networks")?;
        let mut networks = Vec::with_capacity(list.len());
        for n in list {
            let Some(id) = n.id else { continue };
            let options = InspectNetworkOptions { verbose: true, scope: None };
            match d.inspect_network(&id, Some(options)).await {
                Ok(inspect) => networks.push(inspect),
                // Removed between the list and the inspect.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("GET /networks/{id}?verbose=true")),
            }
        }
        let containers = d.list_containers(None::<ListContainersOptions>).await.context("GET /containers/json")?;
        self.read_sandbox_keys(&containers).await;
        let sandbox_keys = self.sandbox_keys.clone();
        Ok(Snapshot { info, nodes, services, tasks, networks, containers, sandbox_keys })
    }

    /// Keeps the sandbox keys of `containers`, inspecting those not known yet. A container that
    /// cannot be inspected (gone meanwhile) is left out of this read only.
    async fn read_sandbox_keys(&mut self, containers: &[ContainerSummary]) {
        let listed: HashSet<&str> = containers.iter().filter_map(|c| c.id.as_deref()).collect();
        self.sandbox_keys.retain(|id, _| listed.contains(id.as_str()));
        let unknown: Vec<String> =
            listed.into_iter().filter(|id| !self.sandbox_keys.contains_key(*id)).map(str::to_owned).collect();
        let inspected: Vec<_> = stream::iter(unknown)
            .map(|id| {
                let d = self.docker.clone();
                async move {
                    let result = d.inspect_container(&id, None::<InspectContainerOptions>).await;
                    (id, result)
                }
            })
            .buffer_unordered(INSPECTS_AT_ONCE)
            .collect()
            .await;
        for (id, result) in inspected {
            match result {
                Ok(c) => {
                    self.sandbox_keys.insert(id, netns_path(&c));
                }
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => warn!("GET /containers/{id}/json: {e}; its namespace is not balanced until it answers"),
            }
        }
    }

    /// Forgets the sandbox key of a container that started or died: a new start has a new
    /// sandbox.
    pub fn observe(&mut self, ev: &EventMessage) {
        let restarted =
            ev.typ == Some(EventMessageTypeEnum::CONTAINER) && matches!(ev.action.as_deref(), Some("start" | "die"));
        if let Some(id) = ev.actor.as_ref().and_then(|a| a.id.as_deref()).filter(|_| restarted) {
            self.sandbox_keys.remove(id);
        }
    }

    /// Container, network, service and node events (the last two only on managers) from `since`
    /// on: the request goes out when the stream is first polled, and the Engine replays what
    /// happened in between.
    pub fn events(&self, since: SystemTime) -> impl Stream<Item = Result<EventMessage>> + use<> {
        let filters = HashMap::from([(
            "type".to_owned(),
            ["container", "network", "service", "node"].map(str::to_owned).to_vec(),
        )]);
        let options = EventsOptions { filters: Some(filters), since: Some(since_param(since)), ..Default::default() };
        self.docker.events(Some(options)).map(|r| r.context("event stream"))
    }
}

/// The Engine's `since` form of a time: Unix seconds and nanoseconds, `1700000000.000000042`.
fn since_param(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_is_seconds_dot_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(since_param(t), "1700000000.000000042");
        assert_eq!(since_param(UNIX_EPOCH), "0.000000000");
    }
}
