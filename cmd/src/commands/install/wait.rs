//! What `install` waits for: the CRD Established, the populator Deployment available (or a
//! pod that will not start, said at once).

use std::time::Instant;

use futures::{StreamExt as _, TryStreamExt as _};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::wait::{self, await_condition, conditions};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};

use crate::cluster::{explain_for, explain_watch};

use super::{POD_SELECTOR, POPULATOR_NAME, WAIT};

/// Waits (a watch on the CRD) until the API server reports it Established.
pub(super) async fn wait_established(client: &Client, name: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = await_condition(api.clone(), name, conditions::is_crd_established());
    match tokio::time::timeout(WAIT, established).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(wait::Error::ProbeFailed(e))) => {
            return Err(explain_watch::<CustomResourceDefinition>(e, &(), None));
        }
        Err(_) => {}
    }
    // Not in time: the CRD's conditions say why.
    let crd = api
        .get(name)
        .await
        .map_err(|e| explain_for::<CustomResourceDefinition>(e, "get", &(), None))?;
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .cloned()
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        return Ok(());
    }
    let why = conditions
        .iter()
        .find(|c| c.status != "True" && c.message.is_some())
        .and_then(|c| c.message.clone())
        .unwrap_or_else(|| "no Established condition".into());
    bail!(
        "the CRD {name} was not established within {} s: {why}",
        WAIT.as_secs()
    );
}

/// Container waiting reasons that will not resolve by waiting.
pub(super) const STUCK: &[&str] = &[
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Why a pod cannot start, if a container is stuck: `(reason, message, last exit code)`.
pub(super) fn stuck(pod: &Pod) -> Option<(String, String, Option<i32>)> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in all {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        if STUCK.contains(&reason.as_str()) {
            let exit = cs
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code);
            return Some((reason, w.message.clone().unwrap_or_default(), exit));
        }
    }
    None
}

/// A pod's state in a few words (`Pending (ContainerCreating)`).
pub(super) fn pod_state(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone());
    match (waiting, unschedulable) {
        (Some(w), _) => format!("{phase} ({w})"),
        (None, Some(m)) => format!("{phase} (not scheduled: {m})"),
        (None, None) => phase,
    }
}

/// Whether the populator Deployment has an available replica of its current generation.
pub fn available(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or(0) >= generation
            && s.updated_replicas.unwrap_or(0) >= 1
            && s.available_replicas.unwrap_or(0) >= 1
    })
}

pub(super) async fn wait_available(client: &Client, ns: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    // Watches on the Deployment and its pods: each change wakes the loop, which reads both
    // again (a pod stuck pulling its image is said at once, not at the deadline).
    let by_name = format!("metadata.name={POPULATOR_NAME}");
    let mut changes = futures::stream::select(
        watcher(
            deployments.clone(),
            watcher::Config::default().fields(&by_name),
        )
        .map_ok(drop)
        .map_err(|e| explain_watch::<Deployment>(e, &(), Some(ns))),
        watcher(
            pods.clone(),
            watcher::Config::default().labels(POD_SELECTOR),
        )
        .map_ok(drop)
        .map_err(|e| explain_watch::<Pod>(e, &(), Some(ns))),
    )
    .boxed();
    loop {
        let d = deployments
            .get(POPULATOR_NAME)
            .await
            .map_err(|e| explain_for::<Deployment>(e, "get", &(), Some(ns)))?;
        if available(&d) {
            return Ok(());
        }
        let current: Vec<Pod> = pods
            .list(&ListParams::default().labels(POD_SELECTOR))
            .await
            .map_err(|e| explain_for::<Pod>(e, "list", &(), Some(ns)))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        for p in &current {
            let Some((reason, message, exit)) = stuck(p) else {
                continue;
            };
            let name = p.name_any();
            if reason == "CrashLoopBackOff" {
                let exit = exit
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                let last = last_log_line(&pods, &name).await;
                bail!(
                    "the populator pod {ns}/{name} keeps crashing{exit}{}; see `kubectl -n {ns} logs {name}`",
                    last.map(|l| format!(": {l}")).unwrap_or_default()
                );
            }
            let hint = if reason.contains("Image") {
                "; check the image (--image) and that the nodes can pull it"
            } else {
                ""
            };
            bail!("the populator pod {ns}/{name} cannot start: {reason}: {message}{hint}");
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = current
                .iter()
                .map(|p| format!("pod {} is {}", p.name_any(), pod_state(p)))
                .collect();
            bail!(
                "the populator Deployment {ns}/{POPULATOR_NAME} has no available replica after {} s: {}",
                WAIT.as_secs(),
                if states.is_empty() {
                    "no pod was created".to_string()
                } else {
                    states.join(", ")
                }
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(Err(e))) = tokio::time::timeout(left, changes.next()).await {
            return Err(e);
        }
    }
}

/// The last line the populator wrote, trimmed, to say why it exits (best effort).
pub(super) async fn last_log_line(pods: &Api<Pod>, name: &str) -> Option<String> {
    let params = LogParams {
        container: Some("populator".into()),
        tail_lines: Some(5),
        ..LogParams::default()
    };
    let text = pods.logs(name, &params).await.ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}
