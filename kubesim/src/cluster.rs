//! A whole simulated cluster: object store, HTTPS API server, authentication, controllers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::api::{ControllerContext, ObjectStore, ResourceKey, TokenIssuer};
use super::auth::{Auth, UserInfo};
use super::controllers::{self, Controllers};
use super::faults::Faults;
use super::pki::{self, Pki};
use super::registry;
use super::server::{self, ServerState};
use super::store::{Part, Store, WriteOpts};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's directory: `kubeconfig`, volumes, pod logs.
    pub dir: PathBuf,
    /// Number of nodes (`node-1`, `node-2`, ...); at least one.
    pub nodes: usize,
    /// Image name (without tag or digest) -> host binary that runs its containers (kubesim's
    /// own test programs; the project's images come from a registry).
    pub images: BTreeMap<String, PathBuf>,
    /// Where pulled images are unpacked, by digest; shared by every cluster of the machine.
    pub image_cache: PathBuf,
}

impl ClusterOptions {
    /// One node, no image mappings.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            nodes: 1,
            images: BTreeMap::new(),
            image_cache: std::env::temp_dir().join("kubesim-images"),
        }
    }
}

/// A running cluster. Dropping it stops the API server and the controllers.
pub struct Cluster {
    state: Arc<ServerState>,
    auth: Arc<Auth>,
    pki: Pki,
    tls: Arc<rustls::ServerConfig>,
    port: u16,
    dir: PathBuf,
    kubeconfig: PathBuf,
    admin_token: String,
    server: Mutex<Option<JoinHandle<()>>>,
    controllers: Mutex<Option<Controllers>>,
}

fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    Ok(sock.listen(1024)?)
}

async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<ServerState>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                let acceptor = acceptor.clone();
                let st = state.clone();
                conns.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let user = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(pki::identity_of)
                        .map(|(name, mut groups)| {
                            groups.push("system:authenticated".into());
                            UserInfo { name, groups }
                        });
                    let svc = hyper::service::service_fn(move |req| server::handle(st.clone(), user.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn bootstrap(store: &Store, nodes: &[String]) -> anyhow::Result<()> {
    let create = |group: &str, plural: &str, obj: Value| -> anyhow::Result<Value> {
        let rt = store
            .type_for_key(&ResourceKey::new(group, plural))
            .context("built-in type")?;
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        store
            .create_obj(&rt, ns.as_deref(), obj, WriteOpts::main())
            .map_err(|e| anyhow::anyhow!("bootstrapping {plural}: {e}"))
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        create("", "namespaces", json!({"metadata": {"name": ns}}))?;
    }
    // The bootstrap RBAC policy's cluster-admin role and its binding to system:masters
    // (https://kubernetes.io/docs/reference/access-authn-authz/rbac/#default-roles-and-role-bindings).
    let rbac = "rbac.authorization.k8s.io";
    create(
        rbac,
        "clusterroles",
        json!({
            "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]
        }),
    )?;
    create(
        rbac,
        "clusterrolebindings",
        json!({
            "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:masters"}]
        }),
    )?;
    // system:basic-user: every authenticated user may review its own access.
    create(
        rbac,
        "clusterroles",
        json!({
            "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": [{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}]
        }),
    )?;
    create(
        rbac,
        "clusterrolebindings",
        json!({
            "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:basic-user"},
            "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "system:authenticated"}]
        }),
    )?;
    for crd in registry::builtin_crds() {
        create("apiextensions.k8s.io", "customresourcedefinitions", crd)?;
    }
    let node_rt = store
        .type_for_key(&ResourceKey::core("nodes"))
        .context("node type")?;
    for n in nodes {
        let mut node = create(
            "",
            "nodes",
            json!({"metadata": {"name": n, "labels": {
            "kubernetes.io/hostname": n, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH,
        }}, "spec": {}}),
        )?;
        node["status"] = json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": n}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.32.0-kubesim", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                         "containerRuntimeVersion": "kubesim://1", "kernelVersion": "", "osImage": "kubesim", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""}
        });
        store
            .update_obj(
                &node_rt,
                None,
                n,
                node,
                WriteOpts {
                    dry_run: false,
                    part: Part::Status,
                    http: false,
                    strict: false,
                },
            )
            .map_err(|e| anyhow::anyhow!("node status: {e}"))?;
    }
    Ok(())
}

impl Cluster {
    /// Starts a cluster: API server on a free port of 127.0.0.1, `DIR/kubeconfig`, nodes,
    /// namespaces `default`, `kube-system`, `kube-public`, `kube-node-lease`, the snapshot and
    /// populator CRDs, and the simulated controllers.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        // Test processes link rustls with both ring (kube) and aws-lc-rs (the AWS SDK), so
        // rustls cannot pick a process-wide provider by itself and clients built without an
        // explicit one (kube's) would panic. Choose ring, unless the process already chose.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = opts.dir.clone();
        std::fs::create_dir_all(dir.join("pods"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let store = Store::new();
        let nodes: Vec<String> = (1..=opts.nodes.max(1))
            .map(|i| format!("node-{i}"))
            .collect();
        bootstrap(&store, &nodes)?;
        let auth = Arc::new(Auth::new(store.clone()));
        let admin_token = hex::encode(rand::random::<[u8; 24]>());
        auth.add_token(&admin_token, "kubernetes-admin", &["system:masters"]);
        let pki = Pki::generate()?;
        let tls = pki.server_config()?;
        let listener = bind(0)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(ServerState {
            store: store.clone(),
            auth: auth.clone(),
            faults: Arc::new(Faults::default()),
            dir: dir.clone(),
            port,
        });
        let server = tokio::spawn(serve(listener, tls.clone(), state.clone()));
        let kubeconfig = dir.join("kubeconfig");
        let cluster = Cluster {
            state,
            auth: auth.clone(),
            pki,
            tls,
            port,
            dir: dir.clone(),
            kubeconfig: kubeconfig.clone(),
            admin_token: admin_token.clone(),
            server: Mutex::new(Some(server)),
            controllers: Mutex::new(None),
        };
        cluster.write_kubeconfig(&kubeconfig, json!({"token": admin_token}), "default")?;
        let ctx = ControllerContext {
            dir: dir.clone(),
            api_host: "127.0.0.1".into(),
            api_port: port,
            ca_pem: cluster.pki.ca_pem.clone(),
            tokens: auth as Arc<dyn TokenIssuer>,
            images: opts.images.clone(),
            image_service: Arc::new(super::controllers::images::ImageService::new(
                opts.image_cache.clone(),
            )),
            nodes,
        };
        let ctrl = controllers::spawn_controllers(store as Arc<dyn ObjectStore>, ctx);
        *cluster
            .controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ctrl);
        Ok(cluster)
    }

    /// `DIR/kubeconfig` (admin user, full rights).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM of the cluster CA.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The admin bearer token (user `kubernetes-admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The object store, as the controllers see it (no authorization).
    pub fn store(&self) -> Arc<Store> {
        self.state.store.clone()
    }

    /// The fault hooks.
    pub fn faults(&self) -> Arc<Faults> {
        self.state.faults.clone()
    }

    /// A bearer token for a ServiceAccount (what a pod of it presents).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.auth.service_account_token(namespace, name)
    }

    /// Makes `token` authenticate as `user` in `groups` (for exec credential plugins).
    pub fn add_user_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.auth.add_token(token, user, groups);
    }

    /// A client certificate for `user` in `groups` signed by the cluster CA: (cert PEM, key PEM).
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<(String, String)> {
        self.pki.issue_client_cert(user, groups)
    }

    /// Writes a kubeconfig for this cluster whose user entry is `user` (for example
    /// `{"token": ...}`, `{"client-certificate-data": ..., "client-key-data": ...}` or
    /// `{"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": ..., "interactiveMode": "Never"}}`)
    /// with `namespace` as the context's namespace.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        user: Value,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": {"server": self.server_url(), "certificate-authority-data": STANDARD.encode(self.pki.ca_pem.as_bytes())}}],
            "users": [{"name": "kubesim-user", "user": user}],
            "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "kubesim-user", "namespace": namespace}}],
            "current-context": "kubesim",
            "preferences": {}
        });
        let text = serde_yaml::to_string(&cfg)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Kills the processes of a running pod (see `Controllers::kill_pod`).
    pub fn kill_pod(&self, namespace: &str, name: &str) -> bool {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|c| c.kill_pod(namespace, name))
    }

    /// Moves the CronJob controller's clock forward, so that a schedule's next time comes
    /// without waiting for it (Jobs, pods and the API server keep the real time).
    pub fn advance_cron_clock(&self, by: std::time::Duration) {
        if let Some(c) = self
            .controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            c.advance_cron_clock(by);
        }
    }

    /// Stops serving (open connections and watches are cut) and serves again on the same
    /// port with the same objects, like a restarted kube-apiserver in front of the same etcd.
    pub async fn restart_api_server(&self) -> anyhow::Result<()> {
        let old = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = old {
            h.abort();
            let _ = h.await;
        }
        let mut tries = 0;
        let listener = loop {
            match bind(self.port) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("kubesim: rebinding port {}: {e}", self.port);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let h = tokio::spawn(serve(listener, self.tls.clone(), self.state.clone()));
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        Ok(())
    }

    /// Stops the API server and the controllers (pods are killed).
    pub fn stop(&self) {
        if let Some(h) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
        if let Some(mut c) = self
            .controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            c.shutdown();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
