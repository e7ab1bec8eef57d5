//! The CSI external-provisioner sidecar together with a hostpath CSI driver
//! (`hostpath.csi.kubesim.io`).
//!
//! Follows kubernetes-csi/external-provisioner `pkg/controller/controller.go` (Provision,
//! data sources, the "Assuming an external populator will provision the volume" event) and
//! kubernetes-sigs/sig-storage-lib-external-provisioner `controller/controller.go` (which claims
//! to provision, event wording, deleting Released volumes whose policy is Delete), with the
//! storage of kubernetes-csi/csi-driver-host-path: each volume is `DIR/volumes/<pv-name>`, a
//! sparse file for Block volumes and a directory for Filesystem volumes (the capacity is
//! recorded in the PV; no quota is enforced).
//!
//! Provisioning (per pending PVC of a class whose provisioner is ours):
//! - WaitForFirstConsumer classes wait for `volume.kubernetes.io/selected-node` (set by the
//!   scheduler) and give the PV a node affinity to that node (`topology.hostpath.csi/node`);
//! - `dataSourceRef`/`dataSource` VolumeSnapshot: the snapshot must be ready, from our driver,
//!   no bigger than the request, and of the same volume mode as the content's
//!   `sourceVolumeMode` unless the content has
//!   `snapshot.storage.kubernetes.io/allow-volume-mode-change: "true"`; otherwise a Warning
//!   `ProvisioningFailed` event and the PVC stays Pending. The data is copied from the snapshot
//!   (Block copies are sparse and grown to the requested size);
//! - a PersistentVolumeClaim data source clones a bound PVC of the same namespace, class and mode;
//! - any other kind is left to a populator (Normal event `Provisioning`);
//! - the PV (`pvc-<pvc uid>`) is created pre-bound to the claim (`claimRef` with uid and
//!   resourceVersion); the PV controller completes the binding.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::{
    Controller, DRIVER, annotation, name, namespace, pvc_class, pvc_request, s, terminating, uid,
    volume_mode,
};

/// The `source.component` of our events, like the sidecar's `<driver>_<host>_<id>`.
pub(crate) const COMPONENT: &str = "hostpath.csi.kubesim.io_kubesim_external-provisioner";
/// The topology key of csi-driver-host-path.
pub(crate) const TOPOLOGY_KEY: &str = "topology.hostpath.csi/node";
/// The annotation the scheduler sets on WaitForFirstConsumer claims.
pub(crate) const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const ALLOW_MODE_CHANGE: &str = "snapshot.storage.kubernetes.io/allow-volume-mode-change";

/// Where a PV's data lives.
pub fn volume_path(ctx: &ControllerContext, pv_name: &str) -> PathBuf {
    ctx.dir.join("volumes").join(pv_name)
}

/// Where a snapshot's point-in-time copy lives.
pub fn snapshot_path(ctx: &ControllerContext, handle: &str) -> PathBuf {
    ctx.dir.join("snapshots").join(handle)
}

/// The provisioner controller.
#[derive(Default)]
pub struct Provisioner;

impl Controller for Provisioner {
    fn reconcile(&mut self, store: &dyn ObjectStore, ctx: &ControllerContext) {
        for pvc in store.list(&res::pvcs(), None) {
            provision(store, ctx, &pvc);
        }
        delete_released(store, ctx);
    }
}

enum Source {
    Empty,
    Copy(PathBuf),
}

fn provision(store: &dyn ObjectStore, ctx: &ControllerContext, pvc: &Value) {
    if terminating(pvc) || s(pvc, "/spec/volumeName").is_some_and(|v| !v.is_empty()) {
        return;
    }
    let Some(class_name) = pvc_class(store, pvc).filter(|c| !c.is_empty()) else {
        return;
    };
    let Some(sc) = store.get(&res::storageclasses(), None, &class_name) else {
        return;
    };
    if s(&sc, "/provisioner") != Some(DRIVER) {
        return;
    }
    let pv_name = format!("pvc-{}", uid(pvc));
    if store.get(&res::pvs(), None, &pv_name).is_some() {
        return;
    }
    let selected = annotation(pvc, SELECTED_NODE);
    if s(&sc, "/volumeBindingMode") == Some("WaitForFirstConsumer") && selected.is_none() {
        return;
    }
    let ns = namespace(pvc);
    let ds = pvc
        .pointer("/spec/dataSourceRef")
        .filter(|v| v.is_object())
        .or_else(|| pvc.pointer("/spec/dataSource").filter(|v| v.is_object()));
    let source = match ds {
        None => Ok(Source::Empty),
        Some(ds) => {
            let group = s(ds, "/apiGroup").unwrap_or("");
            let kind = s(ds, "/kind").unwrap_or("");
            let ds_name = s(ds, "/name").unwrap_or("");
            match (group, kind) {
                ("snapshot.storage.k8s.io", "VolumeSnapshot") => {
                    from_snapshot(store, ctx, pvc, ns, ds_name)
                }
                ("", "PersistentVolumeClaim") => {
                    from_pvc(store, ctx, pvc, &class_name, ns, ds_name)
                }
                _ => {
                    events::record(
                        store,
                        pvc,
                        EventType::Normal,
                        "Provisioning",
                        "Assuming an external populator will provision the volume",
                        COMPONENT,
                    );
                    return;
                }
            }
        }
    };
    events::record(
        store,
        pvc,
        EventType::Normal,
        "Provisioning",
        &format!(
            "External provisioner is provisioning volume for claim \"{ns}/{}\"",
            name(pvc)
        ),
        COMPONENT,
    );
    let result = source.and_then(|src| {
        let size = pvc_request(pvc);
        if size == 0 {
            return Err(
                "claim has no storage request (spec.resources.requests.storage)".to_string(),
            );
        }
        create_backing(ctx, &pv_name, volume_mode(pvc), size, &src)
            .map_err(|e| format!("rpc error: code = Internal desc = {e}"))
    });
    if let Err(e) = result {
        events::record(
            store,
            pvc,
            EventType::Warning,
            "ProvisioningFailed",
            &format!("failed to provision volume with StorageClass \"{class_name}\": {e}"),
            COMPONENT,
        );
        return;
    }
    let mut pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER},
        },
        "spec": {
            "capacity": {"storage": s(pvc, "/spec/resources/requests/storage").unwrap_or("0")},
            "accessModes": pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
            "volumeMode": volume_mode(pvc),
            "storageClassName": class_name,
            "persistentVolumeReclaimPolicy": s(&sc, "/reclaimPolicy").unwrap_or("Delete"),
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": ns,
                "name": name(pvc),
                "uid": uid(pvc),
                "resourceVersion": s(pvc, "/metadata/resourceVersion").unwrap_or(""),
            },
            "csi": {
                "driver": DRIVER,
                "volumeHandle": pv_name,
                "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "kubesim-hostpath"},
            },
        },
    });
    if volume_mode(pvc) == "Filesystem" {
        pv["spec"]["csi"]["fsType"] = json!("ext4");
    }
    if let Some(opts) = sc.get("mountOptions") {
        pv["spec"]["mountOptions"] = opts.clone();
    }
    if let Some(node) = selected {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": [node]}]}
        ]}});
    }
    match store.create(&res::pvs(), pv) {
        Ok(_) => events::record(
            store,
            pvc,
            EventType::Normal,
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
            COMPONENT,
        ),
        Err(e) if e.code == 409 => {}
        Err(e) => tracing::warn!("kubesim provisioner: creating PV {pv_name}: {e}"),
    }
}

fn from_snapshot(
    store: &dyn ObjectStore,
    ctx: &ControllerContext,
    pvc: &Value,
    ns: &str,
    snap_name: &str,
) -> Result<Source, String> {
    let Some(vs) = store.get(&res::volumesnapshots(), Some(ns), snap_name) else {
        return Err(format!(
            "error getting handle for DataSource Type VolumeSnapshot by Name {snap_name}: error getting snapshot \
             {snap_name} from api server: volumesnapshots.snapshot.storage.k8s.io \"{snap_name}\" not found"
        ));
    };
    if vs.pointer("/status/readyToUse") != Some(&json!(true)) {
        return Err(format!(
            "error getting handle for DataSource Type VolumeSnapshot by Name {snap_name}: snapshot {snap_name} is not Ready"
        ));
    }
    let content_name = s(&vs, "/status/boundVolumeSnapshotContentName").unwrap_or("");
    let Some(content) = store.get(&res::volumesnapshotcontents(), None, content_name) else {
        return Err(format!(
            "error getting handle for DataSource Type VolumeSnapshot by Name {snap_name}: error retrieving \
             snapshot content {content_name}: not found"
        ));
    };
    if s(&content, "/spec/driver") != Some(DRIVER) {
        return Err(format!(
            "error getting handle for DataSource Type VolumeSnapshot by Name {snap_name}: VolumeSnapshotContent \
             {content_name} is not from the driver {DRIVER}"
        ));
    }
    let restore = content
        .pointer("/status/restoreSize")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let request = pvc_request(pvc);
    if request < restore {
        return Err(format!(
            "requested volume size {request} is less than the size {restore} for the source snapshot {snap_name}"
        ));
    }
    if let Some(src_mode) = s(&content, "/spec/sourceVolumeMode")
        && src_mode != volume_mode(pvc)
        && annotation(&content, ALLOW_MODE_CHANGE) != Some("true")
    {
        return Err(format!(
            "requested volume {ns}/{} modifies the mode of the source volume but does not have permission to do \
             so. {ALLOW_MODE_CHANGE} annotation is not present on snapshotcontent {content_name}",
            name(pvc)
        ));
    }
    let handle = s(&content, "/status/snapshotHandle").unwrap_or("");
    let path = snapshot_path(ctx, handle);
    if handle.is_empty() || !path.exists() {
        return Err(format!(
            "rpc error: code = NotFound desc = source snapshot {handle} does not exist"
        ));
    }
    Ok(Source::Copy(path))
}

fn from_pvc(
    store: &dyn ObjectStore,
    ctx: &ControllerContext,
    pvc: &Value,
    class: &str,
    ns: &str,
    src_name: &str,
) -> Result<Source, String> {
    let Some(src) = store.get(&res::pvcs(), Some(ns), src_name) else {
        return Err(format!(
            "error getting handle for DataSource Type PersistentVolumeClaim by Name {src_name}: error getting PVC \
             {src_name} (namespace \"{ns}\") from api server: persistentvolumeclaims \"{src_name}\" not found"
        ));
    };
    if s(&src, "/status/phase") != Some("Bound") {
        return Err(format!(
            "error getting handle for DataSource Type PersistentVolumeClaim by Name {src_name}: the PVC \
             {src_name} not bound"
        ));
    }
    if pvc_class(store, &src).as_deref() != Some(class) {
        return Err(
            "the source PVC and destination PVCs must be in the same storage class for cloning"
                .into(),
        );
    }
    if volume_mode(&src) != volume_mode(pvc) {
        return Err(
            "the source PVC and destination PVCs must have the same volume mode for cloning".into(),
        );
    }
    let src_size = s(&src, "/status/capacity/storage")
        .and_then(super::parse_quantity)
        .unwrap_or(0);
    if pvc_request(pvc) < src_size {
        return Err(format!(
            "error, new PVC request must be greater than or equal in size to the specified PVC data source, \
             requested {} but source is {}",
            pvc_request(pvc),
            src_size
        ));
    }
    let pv = s(&src, "/spec/volumeName").unwrap_or("");
    Ok(Source::Copy(volume_path(ctx, pv)))
}

/// Creates `DIR/volumes/<pv>` atomically (built under a temporary name, then renamed).
fn create_backing(
    ctx: &ControllerContext,
    pv: &str,
    mode: &str,
    size: u64,
    src: &Source,
) -> std::io::Result<()> {
    let dir = ctx.dir.join("volumes");
    fs::create_dir_all(&dir)?;
    let final_path = dir.join(pv);
    let tmp = dir.join(format!(".{pv}.tmp"));
    remove_any(&tmp)?;
    if let Source::Copy(from) = src
        && from.is_dir() == (mode == "Block")
    {
        // The mode check passed (allow-volume-mode-change), but this driver stores Block
        // volumes as files and Filesystem volumes as directories and cannot convert.
        return Err(std::io::Error::other(format!(
            "hostpath: cannot restore a {} source into a {mode} volume: kubesim does not convert volume modes",
            if from.is_dir() { "Filesystem" } else { "Block" }
        )));
    }
    if mode == "Block" {
        match src {
            Source::Empty => {
                let f = fs::File::create(&tmp)?;
                f.set_len(size)?;
            }
            Source::Copy(from) => copy_sparse(from, &tmp, size)?,
        }
    } else {
        fs::create_dir_all(&tmp)?;
        if let Source::Copy(from) = src {
            copy_tree(from, &tmp)?;
        }
    }
    remove_any(&final_path)?;
    fs::rename(&tmp, &final_path)
}

/// Removes a file or directory tree if it exists.
pub(crate) fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a file, leaving holes where the source has zero blocks, and makes the copy at least
/// `min_len` bytes long.
pub(crate) fn copy_sparse(from: &Path, to: &Path, min_len: u64) -> std::io::Result<()> {
    let mut src = fs::File::open(from)?;
    let mut dst = fs::File::create(to)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            dst.seek(SeekFrom::Current(n as i64))?;
        } else {
            dst.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    dst.set_len(len.max(min_len))?;
    dst.sync_all()
}

/// Copies a directory's contents with modes, owners, times, links and xattrs (`cp -a`).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(format!("{}/.", from.display()))
        .arg(format!("{}/", to.display()))
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // The copy's root takes the source root's mode and owner, like a snapshot of the volume.
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(from)?;
    fs::set_permissions(to, meta.permissions())?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    Ok(())
}

/// Deletes Released PVs of our driver whose reclaim policy is Delete, with their data, like
/// sig-storage-lib-external-provisioner's `shouldDelete`/`deleteVolumeOperation`.
fn delete_released(store: &dyn ObjectStore, ctx: &ControllerContext) {
    for pv in store.list(&res::pvs(), None) {
        if s(&pv, "/status/phase") != Some("Released")
            || s(&pv, "/spec/persistentVolumeReclaimPolicy") != Some("Delete")
            || s(&pv, "/spec/csi/driver") != Some(DRIVER)
        {
            continue;
        }
        let pv_name = name(&pv);
        if let Err(e) = remove_any(&volume_path(ctx, pv_name)) {
            tracing::warn!("kubesim provisioner: deleting the data of {pv_name}: {e}");
            continue;
        }
        if let Err(e) = store.delete(&res::pvs(), None, pv_name)
            && e.code != 404
        {
            tracing::warn!("kubesim provisioner: deleting PV {pv_name}: {e}");
        }
    }
}
