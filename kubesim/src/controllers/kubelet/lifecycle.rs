//! A pod worker's lifecycle: its phase and status, init containers then containers, restarts
//! with back-off, and the stop on deletion or at the active deadline.

use super::*;

/// The pod status reason and message of a pod stopped at its active deadline (the kubelet's
/// `pkg/kubelet/active_deadline.go`).
const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

impl PodWorker {
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        ctx: ControllerContext,
        pod: Value,
        stop: watch::Receiver<bool>,
        procs: Arc<Mutex<HashMap<String, Running>>>,
        loops: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let statuses = |key: &str| -> Vec<ContainerStatus> {
            pod.pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|c| ContainerStatus {
                            name: s(c, "/name").unwrap_or("").to_string(),
                            image: s(c, "/image").unwrap_or("").to_string(),
                            state: json!({"waiting": {"reason": if key == "initContainers" { "PodInitializing" } else { "ContainerCreating" }}}),
                            ..Default::default()
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let init = statuses("initContainers");
        let main = statuses("containers");
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        Self {
            dir: pod_dir(&ctx, &pod),
            ns: namespace(&pod).to_string(),
            name: name(&pod).to_string(),
            uid: uid(&pod).to_string(),
            state: Mutex::new(PodState {
                init_done: init.is_empty(),
                init,
                main,
                failed_init: false,
                deadline_exceeded: false,
                start_time: now(),
                last_published: Value::Null,
            }),
            store,
            ctx,
            pod,
            stop,
            deadline,
            procs,
            loops,
        }
    }

    pub(super) fn restart_policy(&self) -> &str {
        s(&self.pod, "/spec/restartPolicy").unwrap_or("Always")
    }

    /// Whether the pod is to stop: it is being deleted, the kubelet shuts down, or its active
    /// deadline ran out.
    pub(super) fn stopped(&self) -> bool {
        *self.stop.borrow() || self.past_deadline()
    }

    pub(super) fn past_deadline(&self) -> bool {
        self.deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    /// Resolves when the pod is to stop (see [`Self::stopped`]).
    pub(super) async fn until_stopped(&self) {
        let stop = wait_stop(self.stop.clone());
        match self.deadline {
            Some(d) => tokio::select! {
                _ = stop => {}
                _ = tokio::time::sleep_until(d) => {}
            },
            None => stop.await,
        }
    }

    /// Sleeps, returning true early when the pod is being stopped.
    pub(super) async fn sleep_or_stop(&self, d: Duration) -> bool {
        if self.stopped() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopped(),
            _ = self.until_stopped() => true,
        }
    }

    pub(super) fn event(&self, kind: EventType, reason: &str, message: &str) {
        events::record(&*self.store, &self.pod, kind, reason, message, COMPONENT);
    }

    pub(super) fn phase(&self, st: &PodState) -> &'static str {
        if st.failed_init || st.deadline_exceeded {
            return "Failed";
        }
        if !st.init_done {
            return "Pending";
        }
        let (mut running, mut waiting, mut stopped, mut failed) = (0, 0, 0, 0);
        for c in &st.main {
            if c.running() {
                running += 1;
            } else if c.state.get("terminated").is_some()
                || c.last_state.get("terminated").is_some()
            {
                stopped += 1;
                if c.last_exit().unwrap_or(0) != 0 {
                    failed += 1;
                }
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            return "Pending";
        }
        if running > 0 {
            return "Running";
        }
        if stopped == 0 {
            return "Pending";
        }
        match self.restart_policy() {
            "Always" => "Running",
            "OnFailure" if failed > 0 => "Running",
            "Never" if failed > 0 => "Failed",
            _ => "Succeeded",
        }
    }

    /// Writes the pod status (only when it changed).
    pub(super) fn publish(&self) {
        let mut st = self.state.lock().expect("state lock");
        let phase = self.phase(&st);
        let all_ready = !st.main.is_empty() && st.main.iter().all(ContainerStatus::running);
        let t = now();
        let cond = |ty: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": t});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let ready_reason = if all_ready {
            None
        } else if phase == "Succeeded" || phase == "Failed" {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", true, None),
                cond("Initialized", st.init_done, if st.init_done { None } else { Some("ContainersNotInitialized") }),
                cond("Ready", all_ready, ready_reason),
                cond("ContainersReady", all_ready, ready_reason),
                cond("PodScheduled", true, None),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod_ip(&self.pod),
            "podIPs": [{"ip": pod_ip(&self.pod)}],
            "startTime": st.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": st.main.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
        });
        if st.deadline_exceeded {
            status["reason"] = json!(DEADLINE_EXCEEDED);
            status["message"] = json!(DEADLINE_MESSAGE);
        }
        if !st.init.is_empty() {
            status["initContainerStatuses"] = json!(
                st.init
                    .iter()
                    .map(ContainerStatus::to_json)
                    .collect::<Vec<_>>()
            );
        }
        // Compare without the timestamps of the conditions.
        let mut cmp = status.clone();
        cmp["conditions"] = json!(status["conditions"].as_array().map(|a| {
            a.iter()
                .map(|c| json!([c["type"], c["status"]]))
                .collect::<Vec<_>>()
        }));
        if cmp == st.last_published {
            return;
        }
        st.last_published = cmp;
        drop(st);
        crate::controllers::patch(
            &*self.store,
            &res::pods(),
            Some(&self.ns),
            &self.name,
            json!({"status": status}),
        );
    }

    pub(super) fn set_state(&self, init: bool, idx: usize, f: impl FnOnce(&mut ContainerStatus)) {
        {
            let mut st = self.state.lock().expect("state lock");
            let c = if init {
                &mut st.init[idx]
            } else {
                &mut st.main[idx]
            };
            f(c);
        }
        self.publish();
    }

    /// Runs the pod; returns true when it ended because the pod is being deleted.
    pub(super) async fn run(self: Arc<Self>) -> bool {
        self.publish();
        // 1. Volumes.
        let prepared = loop {
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || me.prepare_volumes()).await;
            match res {
                Ok(Ok(p)) => break p,
                Ok(Err(msg)) => self.event(EventType::Warning, "FailedMount", &msg),
                Err(e) => tracing::error!("kubesim kubelet: preparing volumes panicked: {e}"),
            }
            if self.sleep_or_stop(Duration::from_millis(300)).await {
                return self.end_stopped();
            }
        };
        let prepared = Arc::new(prepared);
        // 2. Init containers, in order.
        let init_count = self.state.lock().expect("state lock").init.len();
        for i in 0..init_count {
            let mut backoff = Duration::from_millis(500);
            loop {
                match self.clone().run_once(true, i, &prepared).await {
                    RunOutcome::Stopped => return self.end_stopped(),
                    RunOutcome::Exited(0) => break,
                    RunOutcome::Exited(_) if self.restart_policy() == "Never" => {
                        self.state.lock().expect("state lock").failed_init = true;
                        self.publish();
                        return false;
                    }
                    RunOutcome::Exited(_) => {
                        self.set_state(true, i, |c| {
                            c.last_state = c.state.clone();
                            c.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {}s restarting failed container={} pod={}_{}({})", backoff.as_secs_f32(), c.name, self.name, self.ns, self.uid)}});
                        });
                    }
                    RunOutcome::PullFailed | RunOutcome::ConfigError => {}
                }
                if self.sleep_or_stop(backoff).await {
                    return self.end_stopped();
                }
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
        if init_count > 0 {
            self.state.lock().expect("state lock").init_done = true;
            self.publish();
        }
        // 3. All containers at once.
        let main_count = self.state.lock().expect("state lock").main.len();
        let runs = (0..main_count).map(|i| self.clone().run_main(i, prepared.clone()));
        let results = futures::future::join_all(runs).await;
        if results.iter().any(|stopped| *stopped) || self.stopped() {
            return self.end_stopped();
        }
        self.publish();
        false
    }

    /// Ends a stopped run: true when the pod is gone or being deleted. Otherwise the kubelet
    /// is shutting down, or the pod's active deadline ran out: then the pod fails with
    /// `DeadlineExceeded`, as the kubelet reports it.
    pub(super) fn end_stopped(&self) -> bool {
        if self.stopped_by_delete() {
            return true;
        }
        if self.past_deadline() && !*self.stop.borrow() {
            self.state.lock().expect("state lock").deadline_exceeded = true;
            self.event(EventType::Normal, DEADLINE_EXCEEDED, DEADLINE_MESSAGE);
            self.publish();
        }
        false
    }

    /// Whether the pod is gone or being deleted (rather than the kubelet shutting down).
    pub(super) fn stopped_by_delete(&self) -> bool {
        match self.store.get(&res::pods(), Some(&self.ns), &self.name) {
            Some(p) => uid(&p) != self.uid || terminating(&p),
            None => true,
        }
    }

    /// Runs a main container with its restart policy; returns true when stopped.
    pub(super) async fn run_main(self: Arc<Self>, i: usize, prepared: Arc<Prepared>) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            let outcome = self.clone().run_once(false, i, &prepared).await;
            let restart = match outcome {
                RunOutcome::Stopped => return true,
                RunOutcome::PullFailed | RunOutcome::ConfigError => true,
                RunOutcome::Exited(code) => match self.restart_policy() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                },
            };
            if !restart {
                return false;
            }
            if let RunOutcome::Exited(_) = outcome {
                let secs = backoff.as_secs_f32();
                self.set_state(false, i, |c| {
                    c.last_state = c.state.clone();
                    c.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {secs}s restarting failed container={} pod={}_{}({})", c.name, self.name, self.ns, self.uid)}});
                });
                self.event(
                    EventType::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
            }
            if self.sleep_or_stop(backoff).await {
                return true;
            }
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    pub(super) fn container_spec(&self, init: bool, i: usize) -> Value {
        let key = if init {
            "/spec/initContainers"
        } else {
            "/spec/containers"
        };
        self.pod
            .pointer(key)
            .and_then(|a| a.get(i))
            .cloned()
            .unwrap_or(json!({}))
    }

    /// Reports a failed pull (`ErrImagePull`, then `ImagePullBackOff`) with the kubelet's events.
    pub(super) fn pull_failed(&self, init: bool, i: usize, image: &str, msg: &str) {
        let already = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            s(&cs.state, "/waiting/reason") == Some("ErrImagePull")
        };
        if already {
            self.set_state(init, i, |cs| cs.state = json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {msg}")}}));
            self.event(
                EventType::Normal,
                "BackOff",
                &format!("Back-off pulling image \"{image}\""),
            );
            self.event(EventType::Warning, "Failed", "Error: ImagePullBackOff");
        } else {
            self.set_state(init, i, |cs| {
                cs.state = json!({"waiting": {"reason": "ErrImagePull", "message": msg}})
            });
            self.event(
                EventType::Warning,
                "Failed",
                &format!("Failed to pull image \"{image}\": {msg}"),
            );
            self.event(EventType::Warning, "Failed", "Error: ErrImagePull");
        }
    }

    /// Reports a container that cannot be created from its spec (`CreateContainerConfigError`).
    pub(super) fn config_error(&self, init: bool, i: usize, msg: &str) -> RunOutcome {
        self.set_state(
            init,
            i,
            |cs| {
                cs.state =
                    json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}})
            },
        );
        self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
        RunOutcome::ConfigError
    }

    /// The program and arguments: the image's entrypoint and cmd as `command` and `args`
    /// override them (the kubelet's rules), or the host-image conventions.
    pub(super) fn argv(
        c: &Value,
        kind: &ImageKind,
        image: &str,
        pulled: Option<&images::Image>,
    ) -> Vec<String> {
        let command = str_list(c.get("command"));
        let args = str_list(c.get("args"));
        if let Some(img) = pulled {
            let cfg = &img.config;
            return match (command.is_empty(), args.is_empty()) {
                (true, true) => cfg.entrypoint.iter().chain(&cfg.cmd).cloned().collect(),
                (true, false) => cfg.entrypoint.iter().cloned().chain(args).collect(),
                (false, _) => command.into_iter().chain(args).collect(),
            };
        }
        let file_name = |p: &str| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
        };
        match kind {
            ImageKind::Mapped(bin) => {
                let bin_s = bin.to_string_lossy().to_string();
                if command.is_empty() {
                    std::iter::once(bin_s).chain(args).collect()
                } else if file_name(&command[0]) == file_name(&bin_s) {
                    std::iter::once(bin_s)
                        .chain(command[1..].iter().cloned())
                        .chain(args)
                        .collect()
                } else {
                    command.into_iter().chain(args).collect()
                }
            }
            _ => {
                if !command.is_empty() {
                    command.into_iter().chain(args).collect()
                } else if !args.is_empty() {
                    args
                } else if image_variants(image).iter().any(|v| v.ends_with("pause")) {
                    vec!["sleep".into(), "infinity".into()]
                } else {
                    vec!["sh".into()]
                }
            }
        }
    }
}
