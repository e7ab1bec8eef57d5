//! One container start: its image, its argv and environment, its OCI bundle under runc.

use super::*;

pub(super) fn image_variants(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let mut v = vec![base.to_string()];
    for prefix in [
        "docker.io/library/",
        "docker.io/",
        "library/",
        "index.docker.io/library/",
    ] {
        if let Some(rest) = base.strip_prefix(prefix) {
            v.push(rest.to_string());
        }
    }
    v
}

#[derive(Clone)]
pub(super) enum ImageKind {
    /// A kubesim test program run from the host (`ClusterOptions::images`).
    Mapped(PathBuf),
    /// A distribution image whose programs are the host's ([`HOST_IMAGES`]).
    Host,
    /// Pulled from its registry.
    Registry,
}

pub(super) fn resolve_image(ctx: &ControllerContext, image: &str) -> ImageKind {
    let variants = image_variants(image);
    for (k, bin) in &ctx.images {
        let key_variants = image_variants(k);
        if key_variants.iter().any(|kv| variants.contains(kv)) {
            return ImageKind::Mapped(bin.clone());
        }
    }
    if variants.iter().any(|v| HOST_IMAGES.contains(&v.as_str())) {
        return ImageKind::Host;
    }
    ImageKind::Registry
}

/// The API server's default `imagePullPolicy`: `Always` for `:latest` or no tag, else
/// `IfNotPresent`.
pub(super) fn default_pull_policy(image: &str) -> &'static str {
    let r = images::Reference::parse(image);
    if r.digest.is_none() && r.tag.as_deref() == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// Why a container could not be made.
pub(super) enum BundleError {
    /// The spec cannot run (`CreateContainerConfigError`).
    Config(String),
    /// The node failed (`StartError`).
    Runtime(String),
}

impl From<std::io::Error> for BundleError {
    fn from(e: std::io::Error) -> Self {
        BundleError::Runtime(e.to_string())
    }
}

/// The error runc logged, if it failed before or instead of the container's program.
pub(super) fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("level").and_then(Value::as_str) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(Value::as_str).map(str::to_string))
        .next_back()
}

/// Mounts an overlay of `lower` with a writable layer in `scratch` at `target`.
pub(super) fn overlay(lower: &Path, scratch: &Path, target: &Path) -> std::io::Result<()> {
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(opts).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| std::io::Error::other(format!("overlay on {}: {e}", target.display())))
}

/// Expands `$(VAR)` references like the kubelet (`$$` escapes).
pub(super) fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let var = &input[i + 2..i + 2 + end];
                if let Some(val) = env.get(var) {
                    out.push_str(val);
                    i += end + 3;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().expect("char at boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl PodWorker {
    /// Starts one container and waits for it to exit (or for the pod to stop).
    pub(super) async fn run_once(
        self: Arc<Self>,
        init: bool,
        i: usize,
        prepared: &Prepared,
    ) -> RunOutcome {
        let c = self.container_spec(init, i);
        let cname = s(&c, "/name").unwrap_or("").to_string();
        let image = s(&c, "/image").unwrap_or("").to_string();
        let kind = resolve_image(&self.ctx, &image);
        let first_start = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            !cs.started_once
        };
        let pulled = if let ImageKind::Registry = kind {
            let policy = s(&c, "/imagePullPolicy")
                .map(str::to_string)
                .unwrap_or_else(|| default_pull_policy(&image).to_string());
            let cached = policy != "Always" && self.ctx.image_service.has(&image);
            if !cached {
                self.event(
                    EventType::Normal,
                    "Pulling",
                    &format!("Pulling image \"{image}\""),
                );
            }
            let started = std::time::Instant::now();
            let svc = self.ctx.image_service.clone();
            let (img, pol) = (image.clone(), policy.clone());
            let pulled = tokio::task::spawn_blocking(move || svc.pull(&img, &pol))
                .await
                .unwrap_or_else(|e| Err(format!("the pull panicked: {e}")));
            match pulled {
                Ok(p) => {
                    if !cached {
                        self.event(
                            EventType::Normal,
                            "Pulled",
                            &format!(
                                "Successfully pulled image \"{image}\" in {:.3}s",
                                started.elapsed().as_secs_f64()
                            ),
                        );
                    } else if first_start {
                        self.event(
                            EventType::Normal,
                            "Pulled",
                            &format!("Container image \"{image}\" already present on machine"),
                        );
                    }
                    Some(p)
                }
                Err(msg) => {
                    self.pull_failed(init, i, &image, &msg);
                    return RunOutcome::PullFailed;
                }
            }
        } else {
            if first_start {
                self.event(
                    EventType::Normal,
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                );
            }
            None
        };
        let env = match self.container_env(&c) {
            Ok(e) => e,
            Err(msg) => return self.config_error(init, i, &msg),
        };
        let mut argv = Self::argv(&c, &kind, &image, pulled.as_ref());
        for a in argv.iter_mut() {
            *a = expand(a, &env);
        }
        let restarts = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            cs.restart_count + u32::from(cs.started_once)
        };
        // Log file and termination message file.
        let log_path = pod_log_path(&self.ctx.dir, &self.ns, &self.name, &self.uid, &cname);
        let term_path = self.dir.join("termination").join(&cname);
        let run_dir = self
            .dir
            .join("containers")
            .join(format!("{cname}-{restarts}"));
        let id = format!("{}-{cname}-{restarts}", self.uid);
        let prepared_bundle = {
            let me = self.clone();
            let (c2, run_dir2, term2, id2) =
                (c.clone(), run_dir.clone(), term_path.clone(), id.clone());
            let prepared_paths = match prepared {
                Prepared::Paths(p) => p.clone(),
            };
            let pulled2 = pulled.clone();
            let kind2 = kind.clone();
            tokio::task::spawn_blocking(move || {
                me.bundle(
                    &c2,
                    &kind2,
                    pulled2.as_ref(),
                    &prepared_paths,
                    &run_dir2,
                    &term2,
                    &id2,
                    argv,
                    env,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(BundleError::Runtime(format!(
                    "preparing the container panicked: {e}"
                )))
            })
        };
        let overlays = match prepared_bundle {
            Ok(o) => o,
            Err(BundleError::Config(msg)) => return self.config_error(init, i, &msg),
            Err(BundleError::Runtime(msg)) => {
                let msg = format!("failed to create containerd task: {msg}");
                self.set_state(init, i, |cs| {
                    cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": now(), "finishedAt": now()}});
                });
                self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
                return RunOutcome::Exited(128);
            }
        };
        let runc_root = self.ctx.dir.join("runc");
        let runc_log = run_dir.join("runc.log");
        let files = (|| -> std::io::Result<(std::fs::File, std::fs::File)> {
            std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            Ok((f.try_clone()?, f))
        })();
        let mut cmd = tokio::process::Command::new("runc");
        cmd.arg("--root")
            .arg(&runc_root)
            .arg("--log")
            .arg(&runc_log)
            .args(["--log-format", "json", "run", "--bundle"])
            .arg(&run_dir)
            .arg(&id)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let spawned = files.and_then(|(out, err)| {
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            cmd.spawn()
        });
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                for o in overlays.iter().rev() {
                    let _ = rustix::mount::unmount(o, rustix::mount::UnmountFlags::DETACH);
                }
                let msg = format!(
                    "failed to create containerd task: cannot run runc: {e} (apt-get install runc)"
                );
                self.set_state(init, i, |cs| {
                    cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": now(), "finishedAt": now()}});
                });
                self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
                return RunOutcome::Exited(128);
            }
        };
        let running = Running {
            pgid: child.id().map(|p| p as i32).unwrap_or(0),
            runc_root,
            id,
            overlays,
        };
        self.procs
            .lock()
            .expect("procs lock")
            .insert(cname.clone(), running.clone());
        let started_at = now();
        self.set_state(init, i, |cs| {
            if cs.started_once {
                cs.restart_count += 1;
            }
            cs.started_once = true;
            cs.container_id = format!("runc://{}", running.id);
            cs.state = json!({"running": {"startedAt": started_at}});
        });
        self.event(
            EventType::Normal,
            "Created",
            &format!("Created container: {cname}"),
        );
        self.event(
            EventType::Normal,
            "Started",
            &format!("Started container {cname}"),
        );

        let status = tokio::select! {
            st = child.wait() => st.ok(),
            _ = self.until_stopped() => {
                // Graceful stop: SIGTERM, then SIGKILL after the grace period (capped at 3 s).
                let r = running.clone();
                let _ = tokio::task::spawn_blocking(move || r.signal("TERM")).await;
                let grace = self.pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30).min(3);
                match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
                    Ok(st) => st.ok(),
                    Err(_) => {
                        let r = running.clone();
                        let _ = tokio::task::spawn_blocking(move || r.signal("KILL")).await;
                        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                            Ok(st) => st.ok(),
                            Err(_) => {
                                kill_group(running.pgid, rustix::process::Signal::KILL);
                                child.wait().await.ok()
                            }
                        }
                    }
                }
            }
        };
        {
            let r = running.clone();
            let _ = tokio::task::spawn_blocking(move || r.release()).await;
        }
        self.procs.lock().expect("procs lock").remove(&cname);
        let code: i64 = match status {
            Some(st) => {
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => i64::from(c),
                    (None, Some(sig)) => 128 + i64::from(sig),
                    _ => 255,
                }
            }
            None => 255,
        };
        // runc's own failure (the container never ran) is a start error, not an exit.
        if let Some(err) = runc_error(&runc_log) {
            let msg = format!(
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: {err}"
            );
            self.set_state(init, i, |cs| {
                cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": started_at, "finishedAt": now()}});
            });
            self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            if self.stopped() {
                return RunOutcome::Stopped;
            }
            return RunOutcome::Exited(128);
        }
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut message = std::fs::read(&term_path)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).to_string())
            .unwrap_or_default();
        if message.is_empty()
            && code != 0
            && s(&c, "/terminationMessagePolicy") == Some("FallbackToLogsOnError")
        {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(2048)..];
            let text = String::from_utf8_lossy(tail);
            let lines: Vec<&str> = text.lines().collect();
            message = lines[lines.len().saturating_sub(80)..].join("\n");
        }
        let finished_at = now();
        self.set_state(init, i, |cs| {
            let mut t = json!({
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started_at,
                "finishedAt": finished_at,
                "containerID": cs.container_id,
            });
            if code > 128 && code < 160 {
                t["signal"] = json!(code - 128);
            }
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            cs.state = json!({"terminated": t});
        });
        if self.stopped() {
            self.event(
                EventType::Normal,
                "Killing",
                &format!("Stopping container {cname}"),
            );
            return RunOutcome::Stopped;
        }
        RunOutcome::Exited(code)
    }

    /// The container's environment (`envFrom`, then `env`, `$(VAR)` expanded), plus the API
    /// server's service variables every container gets (the bundle adds the image's, PATH,
    /// HOSTNAME and HOME).
    pub(super) fn container_env(&self, c: &Value) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        let (h, p) = (&self.ctx.api_host, self.ctx.api_port);
        env.insert("KUBERNETES_SERVICE_HOST".into(), h.clone());
        env.insert("KUBERNETES_SERVICE_PORT".into(), p.to_string());
        env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.to_string());
        env.insert("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}"));
        env.insert(format!("KUBERNETES_PORT_{p}_TCP"), format!("tcp://{h}:{p}"));
        let get = |kind: &str, obj_name: &str| {
            let r = if kind == "secret" {
                res::secrets()
            } else {
                res::configmaps()
            };
            self.store.get(&r, Some(&self.ns), obj_name)
        };
        for from in c
            .get("envFrom")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let prefix = s(&from, "/prefix").unwrap_or("");
            for (key, kind) in [("secretRef", "secret"), ("configMapRef", "configmap")] {
                let Some(r) = from.get(key) else { continue };
                let n = s(r, "/name").unwrap_or("");
                match get(kind, n) {
                    Some(obj) => {
                        for (k, v) in object_data(&obj, kind == "secret") {
                            env.insert(
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v).to_string(),
                            );
                        }
                    }
                    None if r.get("optional") == Some(&json!(true)) => {}
                    None => return Err(format!("{kind} \"{n}\" not found")),
                }
            }
        }
        for e in c
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let n = s(&e, "/name").unwrap_or("").to_string();
            if let Some(v) = s(&e, "/value") {
                let v = expand(v, &env);
                env.insert(n, v);
                continue;
            }
            let Some(from) = e.get("valueFrom") else {
                env.insert(n, String::new());
                continue;
            };
            for (key, kind, label) in [
                ("secretKeyRef", "secret", "Secret"),
                ("configMapKeyRef", "configmap", "ConfigMap"),
            ] {
                let Some(r) = from.get(key) else { continue };
                let obj_name = s(r, "/name").unwrap_or("");
                let k = s(r, "/key").unwrap_or("");
                let optional = r.get("optional") == Some(&json!(true));
                match get(kind, obj_name).map(|o| object_data(&o, kind == "secret")) {
                    Some(data) => match data.get(k) {
                        Some(v) => {
                            env.insert(n.clone(), String::from_utf8_lossy(v).to_string());
                        }
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {k} in {label} {}/{obj_name}",
                                self.ns
                            ));
                        }
                    },
                    None if optional => {}
                    None => return Err(format!("{kind} \"{obj_name}\" not found")),
                }
            }
            if let Some(path) = s(from, "/fieldRef/fieldPath") {
                env.insert(n.clone(), field_ref(&self.pod, path).unwrap_or_default());
            }
            if from.get("resourceFieldRef").is_some() {
                env.insert(n, "0".to_string());
            }
        }
        Ok(env)
    }

    /// Prepares the container's bundle in `run_dir` (blocking: mounts the root filesystem,
    /// writes `config.json`); gives the overlays to unmount after the container ends.
    #[allow(clippy::too_many_arguments)] // one container's parts, gathered by `run_once`
    pub(super) fn bundle(
        &self,
        c: &Value,
        kind: &ImageKind,
        pulled: Option<&images::Image>,
        vols: &HashMap<String, VolumeSource>,
        run_dir: &Path,
        term_file: &Path,
        id: &str,
        argv: Vec<String>,
        container_env: BTreeMap<String, String>,
    ) -> Result<Vec<PathBuf>, BundleError> {
        if run_dir.exists() {
            let _ = rustix::mount::unmount(
                run_dir.join("rootfs/etc"),
                rustix::mount::UnmountFlags::DETACH,
            );
            let _ =
                rustix::mount::unmount(run_dir.join("rootfs"), rustix::mount::UnmountFlags::DETACH);
            std::fs::remove_dir_all(run_dir)?;
        }
        std::fs::create_dir_all(run_dir)?;
        write_file(term_file, b"", 0o666)?;
        let rootfs = run_dir.join("rootfs");
        let mut overlays = Vec::new();
        let mut mounts = Vec::new();
        // The image's root filesystem (where users and groups are looked up) and config.
        let (image_root, image_config) = match pulled {
            Some(img) => {
                overlay(&img.rootfs, &run_dir.join("layer"), &rootfs)?;
                overlays.push(rootfs.clone());
                (img.rootfs.clone(), img.config.clone())
            }
            None => {
                mounts = runtime::host_skeleton(&rootfs)?;
                overlay(
                    Path::new("/etc"),
                    &run_dir.join("etc-layer"),
                    &rootfs.join("etc"),
                )?;
                overlays.push(rootfs.join("etc"));
                if let ImageKind::Mapped(bin) = kind {
                    mounts.push(runtime::Mount {
                        source: bin.clone(),
                        destination: bin.to_string_lossy().to_string(),
                        read_only: true,
                    });
                }
                (PathBuf::from("/"), images::ImageConfig::default())
            }
        };
        let cname = s(c, "/name").unwrap_or("");
        let who = format!(
            "pod: \"{}_{}({})\", container: {cname}",
            self.name, self.ns, self.uid
        );
        let user = match runtime::user(&self.pod, c, &image_config.user, &image_root, &who) {
            Ok(u) => u,
            Err(msg) => {
                for o in overlays.iter().rev() {
                    let _ = rustix::mount::unmount(o, rustix::mount::UnmountFlags::DETACH);
                }
                return Err(BundleError::Config(msg));
            }
        };
        // Environment: the image's, then the pod's (which wins), PATH and HOME defaulted.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        for kv in &image_config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.into(), v.into());
            }
        }
        env.insert("HOSTNAME".into(), self.hostname());
        env.extend(container_env);
        if !env.contains_key("HOME") {
            let home = home_of(&image_root, user.uid);
            env.insert("HOME".into(), home);
        }
        let cwd = s(c, "/workingDir")
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .or_else(|| Some(image_config.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        // What the kubelet mounts into every container.
        let etc = self.dir.join("etc");
        write_file(
            &etc.join("hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                pod_ip(&self.pod),
                self.hostname()
            )
            .as_bytes(),
            0o644,
        )?;
        write_file(
            &etc.join("hostname"),
            format!("{}\n", self.hostname()).as_bytes(),
            0o644,
        )?;
        for f in ["hosts", "hostname"] {
            mounts.push(runtime::Mount {
                source: etc.join(f),
                destination: format!("/etc/{f}"),
                read_only: false,
            });
        }
        if Path::new("/etc/resolv.conf").is_file() {
            mounts.push(runtime::Mount {
                source: "/etc/resolv.conf".into(),
                destination: "/etc/resolv.conf".into(),
                read_only: true,
            });
        }
        mounts.push(runtime::Mount {
            source: term_file.to_path_buf(),
            destination: s(c, "/terminationMessagePath")
                .unwrap_or("/dev/termination-log")
                .into(),
            read_only: false,
        });
        if self.automount() {
            mounts.push(runtime::Mount {
                source: self.dir.join("serviceaccount"),
                destination: SA_PATH.into(),
                read_only: true,
            });
        }
        // Volume mounts, parents first.
        let mut vm: Vec<Value> = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        vm.sort_by_key(|m| s(m, "/mountPath").unwrap_or("").matches('/').count());
        for m in &vm {
            let vname = s(m, "/name").unwrap_or("");
            let Some(VolumeSource::Path { path, read_only }) = vols.get(vname) else {
                continue;
            };
            let mut src = path.clone();
            if let Some(sub) = s(m, "/subPath").filter(|p| !p.is_empty()) {
                src = src.join(sub);
                if !src.exists() {
                    std::fs::create_dir_all(&src)?;
                }
            }
            mounts.push(runtime::Mount {
                source: src,
                destination: s(m, "/mountPath").unwrap_or("").into(),
                read_only: *read_only || m.get("readOnly") == Some(&json!(true)),
            });
        }
        let devices = c
            .get("volumeDevices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| match vols.get(s(d, "/name").unwrap_or("")) {
                Some(VolumeSource::Block {
                    major,
                    minor,
                    uid,
                    gid,
                    mode,
                    read_only,
                    ..
                }) => Some(runtime::Device {
                    path: s(d, "/devicePath").unwrap_or("").into(),
                    major: *major,
                    minor: *minor,
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                    read_only: *read_only,
                }),
                _ => None,
            })
            .collect();
        let config = runtime::config(&runtime::Bundle {
            id: id.to_string(),
            pod: &self.pod,
            container: c,
            rootfs,
            argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            hostname: self.hostname(),
            user,
            mounts,
            devices,
        });
        std::fs::write(
            run_dir.join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(|e| BundleError::Runtime(e.to_string()))?,
        )?;
        Ok(overlays)
    }

    /// The pod's hostname: `spec.hostname`, else its name (at most 63 characters).
    pub(super) fn hostname(&self) -> String {
        let h = s(&self.pod, "/spec/hostname").unwrap_or(&self.name);
        h.chars().take(63).collect()
    }
}

/// The home directory of `uid` in an image's `/etc/passwd`, else `/`.
pub(super) fn home_of(rootfs: &Path, uid: u32) -> String {
    std::fs::read_to_string(rootfs.join("etc/passwd"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_lose_tags_digests_and_docker_hub_prefixes() {
        assert!(image_variants("docker.io/library/busybox:1.36").contains(&"busybox".to_string()));
        assert!(image_variants("busybox@sha256:abc").contains(&"busybox".to_string()));
        assert_eq!(
            image_variants("localhost:5000/x/y:tag")[0],
            "localhost:5000/x/y"
        );
    }

    #[test]
    fn variable_references_expand_like_the_kubelet() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }
}
