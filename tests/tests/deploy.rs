//! The files `deploy/` ships besides the stack file: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and the Grafana dashboard is valid JSON whose
//! every query filters by the `node` variable. That they query only metrics the agent exports
//! is checked against a live agent in `docker.rs`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, ensure};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .context("promtool (cargo xtask setup installs the prometheus package)")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "promtool {}: {}\n{said}", args.join(" "), out.status);
    Ok(said)
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() -> Result<()> {
    let checked = promtool(&["check", "rules", "alerts.yml"])?;
    ensure!(checked.contains("SUCCESS"), "{checked}");
    promtool(&["test", "rules", "alerts_test.yml"])?;
    Ok(())
}

#[test]
fn dashboard_is_json_and_every_query_is_per_node() -> Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json"))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text).context("deploy/grafana-dashboard.json")?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().context("a target without expr")?.to_string());
        }
    }
    ensure!(queries.len() >= 10, "only {} queries", queries.len());
    for q in &queries {
        ensure!(q.contains("node=~\"$node\""), "query not filtered by node: {q}");
    }
    Ok(())
}
