//! Streamed responses: watches (with bookmarks) and `pods/log` (with follow).

use super::*;

pub(super) fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub(super) fn streaming(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &str,
) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("Content-Type", content_type)
        .header("Transfer-Encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}

/// A watch: JSON lines of `{type, object}`.
pub(super) fn watch(
    state: &Arc<ServerState>,
    rt: &ResourceType,
    srt: &ResourceType,
    ns: Option<String>,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields =
        FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let key = srt.key();
    let matches = {
        let ns = ns.clone();
        move |o: &Value| {
            ns.as_deref()
                .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
                && labels.matches(o)
                && fields.matches(o)
        }
    };
    let (initial, start_rv, past, mut rx): (Vec<Value>, u64, Vec<Arc<crate::store::Event>>, _) =
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            let (items, rv, rx) = state.store.snapshot_and_watch(&key, ns.as_deref());
            (items, rv, Vec::new(), rx)
        } else {
            let rv: u64 = rv_param.parse().map_err(|_| {
                errors::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            match state.store.watch_from(rv) {
                Ok((past, rx)) => (Vec::new(), rv, past, rx),
                Err(e) => {
                    // A too old resourceVersion: HTTP 200 with one ERROR event (410 Expired).
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    let _ = tx.try_send(line(
                        &json!({"type": "ERROR", "object": status_body(&e, None)}),
                    ));
                    return Ok(streaming(rx, "application/json"));
                }
            }
        };
    let (tx, out_rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let rt = rt.clone();
    let include = query.get("includeObject").cloned();
    tokio::spawn(async move {
        let render = |kind: &str, obj: Value| -> Value {
            let obj = present(&rt, obj);
            if table {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                json!({"type": kind, "object": table::table(&rt, &[obj], rv.as_deref(), include.as_deref())})
            } else {
                json!({"type": kind, "object": obj})
            }
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut last_rv = start_rv;
        for o in initial.into_iter().filter(|o| matches(o)) {
            if tx.send(line(&render("ADDED", o))).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks {
            let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(line(&b)).await.is_err() {
                return;
            }
        }
        let handle_event = |ev: &crate::store::Event| -> Option<Value> {
            if ev.key != key || ev.rv <= start_rv {
                return None;
            }
            let now = matches(&ev.object);
            let before = ev.old.as_ref().is_some_and(&matches);
            match (ev.kind, before, now) {
                ("MODIFIED", false, true) => Some(render("ADDED", ev.object.clone())),
                ("MODIFIED", true, false) => Some(render("DELETED", ev.object.clone())),
                (k, _, true) => Some(render(k, ev.object.clone())),
                _ => None,
            }
        };
        for ev in past {
            last_rv = ev.rv;
            if let Some(v) = handle_event(&ev)
                && tx.send(line(&v)).await.is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                }
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= last_rv { continue; }
                        last_rv = ev.rv;
                        if let Some(v) = handle_event(&ev)
                            && tx.send(line(&v)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = errors::expired(last_rv, last_rv);
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": status_body(&e, None)}))).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(out_rx, "application/json"))
}

/// `pods/log`: the container's log file written by the kubelet; with `follow=true` it keeps
/// streaming until the container has terminated and the file is drained
/// (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#get-read-log-of-the-specified-pod).
pub(super) async fn pod_log(
    state: &Arc<ServerState>,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let store = state.store.clone();
    let pods = ResourceKey::core("pods");
    let pod = store
        .get(&pods, Some(ns), name)
        .ok_or_else(|| errors::not_found("pods", name))?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            let init: Vec<String> = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !containers.contains(c) && !init.contains(c) {
                return Err(errors::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(errors::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let path = pod_log_path(&state.dir, ns, name, &uid, &container);
    let follow = matches!(query.get("follow").map(String::as_str), Some("true" | "1"));
    let tail: Option<usize> = query.get("tailLines").and_then(|t| t.parse().ok());
    let limit_bytes: Option<usize> = query.get("limitBytes").and_then(|t| t.parse().ok());
    if !path.exists() {
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        if phase == "Pending" {
            return Err(errors::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
    }
    let read_all = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    let mut data = read_all(&path);
    let mut offset = data.len();
    if let Some(n) = tail {
        let text = String::from_utf8_lossy(&data).into_owned();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let start = lines.len().saturating_sub(n);
        data = lines[start..].concat().into_bytes();
    }
    if let Some(l) = limit_bytes {
        data.truncate(l);
    }
    if !follow {
        return Ok(Response::builder()
            .status(200)
            .header("Content-Type", "text/plain")
            .body(full(data))
            .expect("response"));
    }
    let (ns_o, name_o) = (ns.to_string(), name.to_string());
    let terminated = move |store: &Store| -> bool {
        match store.get(&pods, Some(ns_o.as_str()), &name_o) {
            None => true,
            Some(p) if p.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) => {
                true
            }
            Some(p) => {
                if matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                ) {
                    return true;
                }
                p.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c.get("name").and_then(Value::as_str) == Some(container.as_str())
                        })
                    })
                    .is_some_and(|c| c.pointer("/state/terminated").is_some())
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
            return;
        }
        loop {
            let done = terminated(&store);
            let now = read_all(&path);
            if now.len() > offset {
                let chunk = Bytes::copy_from_slice(&now[offset..]);
                offset = now.len();
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(rx, "text/plain"))
}
