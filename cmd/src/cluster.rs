//! Talking to the user's cluster: the client from kubeconfig flags, the kinds we use that
//! k8s-openapi does not have (VolumeSnapshot, VolumeSnapshotClass), and errors that say what
//! to do.

use anyhow::{Context, Result, anyhow};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::KubeOptions;

/// Label on everything a `create` run makes temporarily; the value is the run's id.
pub const BACKUP_LABEL: &str = "volbackup.io/backup";
/// `app.kubernetes.io/managed-by` and its one value, on every object the plugin writes: the
/// repository Secrets, a run's temporary objects, the populator's namespace. The populator
/// accepts Secrets carrying it (`volbackup_populator::mover::LEGACY_MARK`, the same pair).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "volbackup");
/// The value `install` gave its namespace before it used [`MANAGED_BY`]'s: such a namespace
/// is still ours, to apply over and to uninstall.
pub const EARLIER_MANAGED_BY: &str = "kubectl-volbackup";
/// Label naming the source PVC of a temporary object.
pub const PVC_LABEL: &str = "volbackup.io/pvc";

/// The value of [`PVC_LABEL`] for a PVC: its name, or for a name longer than a label value may
/// be (63 characters), the first 52 characters and a hash of the whole name, so every PVC name
/// labels its objects and two long names never share a value.
pub fn pvc_label_value(pvc: &str) -> String {
    if pvc.len() <= 63 {
        return pvc.to_string();
    }
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(pvc.as_bytes()));
    let head: String = pvc.chars().take(52).collect();
    format!("{}-{}", head.trim_end_matches(['-', '.']), &hash[..10])
}
/// Annotation of the default VolumeSnapshotClass of a driver.
pub const DEFAULT_SNAPSHOT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

/// A connected client and the namespace the flags (or the context) chose.
pub struct Kube {
    /// The client, authenticated as the kubeconfig says (token, client certificate, exec).
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

/// Builds the client from `--kubeconfig`, `--context` and `-n`, the way kubectl does.
pub async fn connect(opts: &KubeOptions) -> Result<Kube> {
    // Both ring and aws-lc-rs are linked (the S3 client brings the latter), so rustls cannot
    // pick a provider by itself. An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        None => Config::from_kubeconfig(&options)
            .await
            .context("cannot load a kubeconfig")
            .context(crate::Hint(
                "set KUBECONFIG, use --kubeconfig FILE, or create ~/.kube/config (`kind get kubeconfig`, your provider's CLI)".into(),
            ))?,
    };
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok(Kube { client, namespace })
}

/// `snapshot.storage.k8s.io/v1` VolumeSnapshot.
pub fn volume_snapshot_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshot".into(),
        plural: "volumesnapshots".into(),
    }
}

/// `snapshot.storage.k8s.io/v1` VolumeSnapshotClass.
pub fn volume_snapshot_class_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotClass".into(),
        plural: "volumesnapshotclasses".into(),
    }
}

/// `snapshot.storage.k8s.io/v1` VolumeSnapshotContent.
pub fn volume_snapshot_content_resource() -> ApiResource {
    ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotContent".into(),
        plural: "volumesnapshotcontents".into(),
    }
}

/// VolumeSnapshots of a namespace.
pub fn snapshots(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &volume_snapshot_resource())
}

/// Makes the mover pod the only owner of the run's temporary claim and snapshot (both named
/// `name`): deleting the pod, the one deletion a backup operator may make, then removes them
/// through the garbage collector, so the backup role needs no right to delete claims or
/// snapshots. A claim or snapshot already gone is no error.
pub async fn give_to_pod(
    client: &Client,
    ns: &str,
    name: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let owner = serde_json::json!({"metadata": {"ownerReferences": [{
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.metadata.name,
        "uid": pod.metadata.uid,
    }]}});
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::default();
    match pvcs.patch(name, &params, &Patch::Merge(&owner)).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            return Err(explain_for::<PersistentVolumeClaim>(
                e,
                "patch",
                &(),
                Some(ns),
            ));
        }
    }
    match snapshots(client, ns)
        .patch(name, &params, &Patch::Merge(&owner))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(explain_for::<DynamicObject>(
            e,
            "patch",
            &volume_snapshot_resource(),
            Some(ns),
        )),
    }
}

/// Whether an API error is this HTTP status.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// An API error as one line with a hint: RBAC denials name the verb and resource, a missing
/// resource type names what to install.
pub fn explain(err: kube::Error, verb: &str, what: &str, ns: Option<&str>) -> anyhow::Error {
    let place = ns
        .map(|n| format!(" in namespace {n:?}"))
        .unwrap_or_default();
    match &err {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "forbidden: you may not {verb} {what}{place} ({}); ask a cluster admin for a Role granting `{verb}` on {what}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => anyhow!(
            "unauthorized: the cluster rejected your credentials ({}); check the kubeconfig user",
            s.message
        ),
        kube::Error::Api(s) => anyhow!("cannot {verb} {what}{place}: {}", s.message),
        _ => anyhow!("cannot {verb} {what}{place}: {err}"),
    }
}

/// How RBAC names the resource of a kind: `pods`, `deployments.apps`,
/// `volumesnapshots.snapshot.storage.k8s.io`.
pub fn resource_name<K: kube::Resource>(dt: &K::DynamicType) -> String {
    let (plural, group) = (K::plural(dt), K::group(dt));
    if group.is_empty() {
        plural.into_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// [`explain`] for a request on kind `K`, the resource named from the type (`dt`: `&()` for
/// the kinds k8s-openapi has, the `ApiResource` of a dynamic one).
pub fn explain_for<K: kube::Resource>(
    err: kube::Error,
    verb: &str,
    dt: &K::DynamicType,
    ns: Option<&str>,
) -> anyhow::Error {
    explain(err, verb, &resource_name::<K>(dt), ns)
}

/// [`explain_for`] for a watch that failed (`watcher`, `await_condition`): the API error inside
/// it, under the verb the watcher was using (`list`, then `watch`).
pub fn explain_watch<K: kube::Resource>(
    err: kube::runtime::watcher::Error,
    dt: &K::DynamicType,
    ns: Option<&str>,
) -> anyhow::Error {
    use kube::runtime::watcher::Error;
    match err {
        Error::InitialListFailed(e) => explain_for::<K>(e, "list", dt, ns),
        Error::WatchStartFailed(e) | Error::WatchFailed(e) => explain_for::<K>(e, "watch", dt, ns),
        other => anyhow!("cannot watch {}: {other}", resource_name::<K>(dt)),
    }
}

/// What a 404 from the VolumeBackup API means: the API server does not serve the kind.
pub const VOLUMEBACKUP_CRD_MISSING: &str = "the VolumeBackup CRD (volbackup.io/v1alpha1) is not installed: run `kubectl volbackup install`";

/// [`explain`] for a request on VolumeBackups, where a 404 means the CRD is missing (a
/// request for one object by name that may be absent uses `get_opt`, which returns `None`).
pub fn explain_volumebackups(err: kube::Error, verb: &str, ns: Option<&str>) -> anyhow::Error {
    if is_status(&err, 404) {
        anyhow!(VOLUMEBACKUP_CRD_MISSING)
    } else {
        explain_for::<volbackup_populator::api::VolumeBackup>(err, verb, &(), ns)
    }
}

/// The repository a repository Secret names. One rule, the populator's
/// (`volbackup_populator::contract::RepositorySettings::location_of`), for every reader: `VOLBACKUP_REPOSITORY`,
/// else `RESTIC_REPOSITORY`, the way a mover reads the two from its environment.
pub fn secret_repository(secret: &k8s_openapi::api::core::v1::Secret) -> Option<String> {
    volbackup_populator::contract::RepositorySettings::location_of(
        secret.data.as_ref().unwrap_or(&Default::default()),
        secret.string_data.as_ref().unwrap_or(&Default::default()),
    )
}

/// Creates or replaces the repository's Secret in `ns` from `data` (one Secret per repository
/// location, marked with the repository label); returns its name.
pub async fn write_repository_secret(
    client: &Client,
    ns: &str,
    data: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PostParams;
    let name = &volbackup_populator::mover::repository_secret_name(&data["VOLBACKUP_REPOSITORY"]);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    // `data`, not `stringData`: what an API server stores and what a replace must carry.
    let mut secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {MANAGED_BY.0: MANAGED_BY.1,
                                volbackup_populator::mover::REPOSITORY_LABEL: "true"}},
        "type": "Opaque",
    }))?;
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
            .collect(),
    );
    // Another `create` or `restore` in the namespace may write the same Secret at the same
    // time (same repository, so the same name): a create that finds it made meanwhile, or a
    // replace of a version changed meanwhile, is a 409 Conflict, and the write is made again
    // over what is there now.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let written = match api.get_opt(name).await {
            Ok(None) => api
                .create(&PostParams::default(), &secret)
                .await
                .map_err(|e| (e, "create")),
            Ok(Some(old)) => {
                secret.metadata.resource_version = old.metadata.resource_version;
                api.replace(name, &PostParams::default(), &secret)
                    .await
                    .map_err(|e| (e, "update"))
            }
            Err(e) => return Err(explain_for::<Secret>(e, "get", &(), Some(ns))),
        };
        match written {
            Ok(_) => break,
            Err((e, _)) if is_status(&e, 409) && attempts < 10 => {
                secret.metadata.resource_version = None;
            }
            Err((e, verb)) => return Err(explain_for::<Secret>(e, verb, &(), Some(ns))),
        }
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use super::pvc_label_value;

    #[test]
    fn resources_are_named_as_rbac_names_them() {
        use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
        assert_eq!(super::resource_name::<Pod>(&()), "pods");
        assert_eq!(super::resource_name::<Deployment>(&()), "deployments.apps");
        assert_eq!(
            super::resource_name::<kube::api::DynamicObject>(&super::volume_snapshot_resource()),
            "volumesnapshots.snapshot.storage.k8s.io"
        );
        assert_eq!(
            super::resource_name::<volbackup_populator::api::VolumeBackup>(&()),
            "volumebackups.volbackup.io"
        );
    }

    #[test]
    fn a_secret_names_its_repository_by_one_rule() {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let both = secret(&[("RESTIC_REPOSITORY", "/r"), ("VOLBACKUP_REPOSITORY", "/v")]);
        assert_eq!(super::secret_repository(&both).as_deref(), Some("/v"));
        let restic = secret(&[("RESTIC_REPOSITORY", "/r")]);
        assert_eq!(super::secret_repository(&restic).as_deref(), Some("/r"));
        // An empty value is passed over, as a mover passes over an empty variable.
        let empty = secret(&[("VOLBACKUP_REPOSITORY", ""), ("RESTIC_REPOSITORY", "/r")]);
        assert_eq!(super::secret_repository(&empty).as_deref(), Some("/r"));
        assert_eq!(super::secret_repository(&secret(&[])), None);
    }

    #[test]
    fn repository_secrets_carry_the_mark_the_populator_accepts() {
        assert_eq!(super::MANAGED_BY, volbackup_populator::mover::LEGACY_MARK);
    }

    #[test]
    fn long_pvc_names_become_valid_distinct_label_values() {
        assert_eq!(pvc_label_value("data"), "data");
        let a = format!("{}-a", "x".repeat(100));
        let b = format!("{}-b", "x".repeat(100));
        let (la, lb) = (pvc_label_value(&a), pvc_label_value(&b));
        assert!(la.len() <= 63 && lb.len() <= 63, "{la}");
        assert_ne!(la, lb);
        assert!(la.starts_with(&"x".repeat(52)));
        let dashed = format!("{}-{}", "y".repeat(51), "z".repeat(40));
        let l = pvc_label_value(&dashed);
        assert!(
            !l.contains("--") && l.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{l}"
        );
    }
}
