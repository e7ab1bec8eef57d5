//! The snapshot controller and the CSI snapshotter sidecar with the hostpath driver
//! (kubernetes-csi/external-snapshotter: `pkg/common-controller/snapshot_controller.go` for
//! VolumeSnapshot → VolumeSnapshotContent, `pkg/sidecar-controller/snapshot_controller.go` for
//! taking the snapshot; docs: kubernetes.io "Volume Snapshots").
//!
//! - A dynamic VolumeSnapshot (`source.persistentVolumeClaimName`) gets the class it names or
//!   the default class of the PV's driver (`snapshot.storage.kubernetes.io/is-default-class`),
//!   then a VolumeSnapshotContent `snapcontent-<snapshot uid>` with `driver`, `deletionPolicy`
//!   from the class, `source.volumeHandle`, `sourceVolumeMode` and `volumeSnapshotRef`.
//! - The "sidecar" makes a point-in-time copy of the volume at `DIR/snapshots/<handle>` (sparse
//!   copy for Block, `cp -a` for Filesystem: modes, owners, times, links, xattrs), then sets the
//!   content status (`snapshotHandle`, `creationTime` in ns, `readyToUse`, `restoreSize` in
//!   bytes) and the snapshot status (`boundVolumeSnapshotContentName`, `creationTime`,
//!   `readyToUse`, `restoreSize` as a quantity).
//! - Errors (no class, source PVC missing or unbound) go to `status.error {message, time}` with
//!   `readyToUse: false` and a Warning event, and are retried.
//! - Fault hook: a VolumeSnapshotClass parameter `kubesim.io/fail-snapshot: MESSAGE` makes the
//!   simulated driver answer every CreateSnapshot for that class with the error MESSAGE (as a
//!   real driver does when it rejects a request, e.g. a quota or a bad parameter). The sidecar
//!   then reports it the way the real one does: content `status.error`, a Warning event
//!   `SnapshotContentCheckandUpdateFailed`, copied to the VolumeSnapshot's `status.error`, and
//!   retried, so the snapshot never becomes ready.
//! - A pre-provisioned snapshot (`source.volumeSnapshotContentName`) binds to that content; a
//!   pre-provisioned content (`source.snapshotHandle`) is ready when its data exists.
//! - When a snapshot is deleted, its content is deleted with the data if the policy is Delete and
//!   kept if Retain. Simplified: the protection finalizers the real controller adds
//!   (`snapshot.storage.kubernetes.io/volumesnapshot-bound-protection`, ...) are not added.

use std::path::Path;

use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::provisioner::{copy_sparse, copy_tree, remove_any, snapshot_path, volume_path};
use super::{
    Controller, annotation, format_bytes, name, namespace, now, parse_quantity, patch, s,
    terminating, uid,
};

const COMPONENT: &str = "snapshot-controller";

/// The snapshot controller.
#[derive(Default)]
pub struct SnapshotController;

impl Controller for SnapshotController {
    fn reconcile(&mut self, store: &dyn ObjectStore, ctx: &ControllerContext) {
        for vs in store.list(&res::volumesnapshots(), None) {
            if !terminating(&vs)
                && let Err(msg) = sync_snapshot(store, &vs)
            {
                set_error(store, &vs, &msg);
            }
        }
        for content in store.list(&res::volumesnapshotcontents(), None) {
            sync_content(store, ctx, &content);
        }
    }
}

fn set_error(store: &dyn ObjectStore, vs: &Value, msg: &str) {
    events::record(
        store,
        vs,
        EventType::Warning,
        "SnapshotCreationFailed",
        msg,
        COMPONENT,
    );
    if s(vs, "/status/error/message") == Some(msg) {
        return;
    }
    patch(
        store,
        &res::volumesnapshots(),
        Some(namespace(vs)),
        name(vs),
        json!({"status": {"readyToUse": false, "error": {"message": msg, "time": now()}}}),
    );
}

fn sync_snapshot(store: &dyn ObjectStore, vs: &Value) -> Result<(), String> {
    let ns = namespace(vs);
    let vs_name = name(vs);
    if let Some(content_name) = s(vs, "/spec/source/volumeSnapshotContentName") {
        // Pre-provisioned: the content must exist and point back at this snapshot.
        let Some(content) = store.get(&res::volumesnapshotcontents(), None, content_name) else {
            return Err(format!("VolumeSnapshotContent {content_name} is missing"));
        };
        if s(&content, "/spec/volumeSnapshotRef/name") != Some(vs_name)
            || s(&content, "/spec/volumeSnapshotRef/namespace") != Some(ns)
        {
            return Err(format!(
                "VolumeSnapshotContent [{content_name}] is bound to a different snapshot"
            ));
        }
        if s(&content, "/spec/volumeSnapshotRef/uid")
            .unwrap_or("")
            .is_empty()
        {
            patch(
                store,
                &res::volumesnapshotcontents(),
                None,
                content_name,
                json!({"spec": {"volumeSnapshotRef": {"uid": uid(vs)}}}),
            );
        }
        copy_status(store, vs, &content);
        return Ok(());
    }
    let content_name = format!("snapcontent-{}", uid(vs));
    if let Some(content) = store.get(&res::volumesnapshotcontents(), None, &content_name) {
        copy_status(store, vs, &content);
        return Ok(());
    }
    if vs
        .pointer("/status/boundVolumeSnapshotContentName")
        .is_some_and(|v| v.is_string())
    {
        // Its content went away; nothing to re-create (the real controller reports the same).
        return Ok(());
    }
    let Some(pvc_name) = s(vs, "/spec/source/persistentVolumeClaimName") else {
        return Err(
            "snapshot has neither persistentVolumeClaimName nor volumeSnapshotContentName".into(),
        );
    };
    let Some(pvc) = store.get(&res::pvcs(), Some(ns), pvc_name) else {
        return Err(format!(
            "failed to get input parameters to create snapshot {vs_name}: \"failed to retrieve PVC {pvc_name} from \
             the lister: \\\"persistentvolumeclaim \\\\\\\"{pvc_name}\\\\\\\" not found\\\"\""
        ));
    };
    let pv_name = s(&pvc, "/spec/volumeName").unwrap_or("");
    let pv = (!pv_name.is_empty())
        .then(|| store.get(&res::pvs(), None, pv_name))
        .flatten();
    let (Some(pv), Some("Bound")) = (pv, s(&pvc, "/status/phase")) else {
        return Err(format!(
            "failed to get input parameters to create snapshot {vs_name}: \"the PVC {pvc_name} is not yet bound to \
             a PV, will not attempt to take a snapshot\""
        ));
    };
    let Some(driver) = s(&pv, "/spec/csi/driver") else {
        return Err(format!(
            "the PV {pv_name} is not a CSI volume; cannot take a snapshot"
        ));
    };
    let class = match s(vs, "/spec/volumeSnapshotClassName") {
        Some(c) => store
            .get(&res::volumesnapshotclasses(), None, c)
            .ok_or_else(|| format!("failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"{c}\" not found"))?,
        None => {
            let defaults: Vec<Value> = store
                .list(&res::volumesnapshotclasses(), None)
                .into_iter()
                .filter(|c| s(c, "/driver") == Some(driver))
                .filter(|c| annotation(c, "snapshot.storage.kubernetes.io/is-default-class") == Some("true"))
                .collect();
            match defaults.len() {
                1 => {
                    let c = defaults.into_iter().next().expect("one default class");
                    patch(
                        store,
                        &res::volumesnapshots(),
                        Some(ns),
                        vs_name,
                        json!({"spec": {"volumeSnapshotClassName": name(&c)}}),
                    );
                    c
                }
                0 => return Err("cannot find default snapshot class".into()),
                _ => return Err(format!("default snapshot class: {driver} has more than one default class")),
            }
        }
    };
    if s(&class, "/driver") != Some(driver) {
        return Err(format!(
            "snapshot class {} is for driver {}, the volume is from driver {driver}",
            name(&class),
            s(&class, "/driver").unwrap_or("")
        ));
    }
    let content = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name},
        "spec": {
            "driver": driver,
            "deletionPolicy": s(&class, "/deletionPolicy").unwrap_or("Delete"),
            "source": {"volumeHandle": s(&pv, "/spec/csi/volumeHandle").unwrap_or(pv_name)},
            "sourceVolumeMode": s(&pv, "/spec/volumeMode").unwrap_or("Filesystem"),
            "volumeSnapshotClassName": name(&class),
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "name": vs_name,
                "namespace": ns,
                "uid": uid(vs),
                "resourceVersion": s(vs, "/metadata/resourceVersion").unwrap_or(""),
            },
        },
    });
    // The PV's name is kept so the sidecar finds the data (csi-hostpath keeps a volume map).
    let mut content = content;
    content["metadata"]["annotations"] = json!({"kubesim.io/source-pv": pv_name});
    match store.create(&res::volumesnapshotcontents(), content) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("failed to create snapshot content with error {e}")),
    }
}

/// Mirrors a content's status into the snapshot (`updateSnapshotStatus`).
fn copy_status(store: &dyn ObjectStore, vs: &Value, content: &Value) {
    let ready = content
        .pointer("/status/readyToUse")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut status = json!({
        "boundVolumeSnapshotContentName": name(content),
        "readyToUse": ready,
    });
    if let Some(ns) = content
        .pointer("/status/creationTime")
        .and_then(Value::as_i64)
    {
        let t = chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
            .unwrap_or_default();
        status["creationTime"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    if let Some(size) = content
        .pointer("/status/restoreSize")
        .and_then(Value::as_u64)
    {
        status["restoreSize"] = json!(format_bytes(size));
    }
    if ready {
        status["error"] = Value::Null;
    } else if let Some(err) = content.pointer("/status/error") {
        status["error"] = err.clone();
    }
    let cur = vs.get("status").cloned().unwrap_or(json!({}));
    let same = status
        .as_object()
        .expect("status is an object")
        .iter()
        .all(|(k, v)| cur.get(k).unwrap_or(&Value::Null) == v);
    if !same {
        patch(
            store,
            &res::volumesnapshots(),
            Some(namespace(vs)),
            name(vs),
            json!({"status": status}),
        );
    }
}

fn sync_content(store: &dyn ObjectStore, ctx: &ControllerContext, content: &Value) {
    let content_name = name(content);
    let handle = s(content, "/status/snapshotHandle")
        .or_else(|| s(content, "/spec/source/snapshotHandle"))
        .map(str::to_string);
    // Deletion: the snapshot it was made for is gone.
    let vs_ref_ns = s(content, "/spec/volumeSnapshotRef/namespace");
    let vs_ref_name = s(content, "/spec/volumeSnapshotRef/name").unwrap_or("");
    let vs_ref_uid = s(content, "/spec/volumeSnapshotRef/uid").unwrap_or("");
    let vs = store.get(&res::volumesnapshots(), vs_ref_ns, vs_ref_name);
    let vs_gone = match &vs {
        None => !vs_ref_uid.is_empty() || s(content, "/status/snapshotHandle").is_some(),
        Some(v) => !vs_ref_uid.is_empty() && uid(v) != vs_ref_uid,
    };
    if vs_gone || terminating(content) {
        if s(content, "/spec/deletionPolicy") == Some("Delete") {
            if let Some(h) = &handle
                && let Err(e) = remove_any(&snapshot_path(ctx, h))
            {
                tracing::warn!("kubesim snapshotter: deleting snapshot data {h}: {e}");
                return;
            }
            if let Err(e) = store.delete(&res::volumesnapshotcontents(), None, content_name)
                && e.code != 404
            {
                tracing::warn!("kubesim snapshotter: deleting {content_name}: {e}");
            }
        }
        return;
    }
    if content.pointer("/status/readyToUse") == Some(&json!(true)) {
        return;
    }
    if let Some(h) = s(content, "/spec/source/snapshotHandle") {
        // Pre-provisioned content: ready when the data is there.
        let path = snapshot_path(ctx, h);
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        let size = if meta.is_file() { meta.len() } else { 0 };
        let created = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        patch(
            store,
            &res::volumesnapshotcontents(),
            None,
            content_name,
            json!({"status": {"snapshotHandle": h, "readyToUse": true, "restoreSize": size, "creationTime": created}}),
        );
        return;
    }
    // Dynamic content: take the snapshot.
    let Some(pv_name) = annotation(content, "kubesim.io/source-pv")
        .map(str::to_string)
        .or_else(|| {
            let vh = s(content, "/spec/source/volumeHandle")?;
            store
                .list(&res::pvs(), None)
                .into_iter()
                .find(|pv| s(pv, "/spec/csi/volumeHandle") == Some(vh))
                .map(|pv| name(&pv).to_string())
        })
    else {
        return;
    };
    let Some(pv) = store.get(&res::pvs(), None, &pv_name) else {
        return;
    };
    let handle = format!("snapshot-{}", uid(content));
    let src = volume_path(ctx, &pv_name);
    let dst = snapshot_path(ctx, &handle);
    let restore_size = s(&pv, "/spec/capacity/storage")
        .and_then(parse_quantity)
        .unwrap_or(0);
    let injected = s(content, "/spec/volumeSnapshotClassName")
        .and_then(|c| store.get(&res::volumesnapshotclasses(), None, c))
        .and_then(|c| s(&c, "/parameters/kubesim.io~1fail-snapshot").map(str::to_string));
    let taken = match injected {
        Some(msg) => Err(std::io::Error::other(msg)),
        None => take_copy(&src, &dst, s(&pv, "/spec/volumeMode") == Some("Block")),
    };
    if let Err(e) = taken {
        let msg = format!(
            "Failed to check and update snapshot content: failed to take snapshot of the volume {pv_name}: {e}"
        );
        if let Some(vs) = &vs {
            events::record(
                store,
                vs,
                EventType::Warning,
                "SnapshotContentCheckandUpdateFailed",
                &msg,
                "csi-snapshotter hostpath.csi.kubesim.io",
            );
        }
        patch(
            store,
            &res::volumesnapshotcontents(),
            None,
            content_name,
            json!({"status": {"readyToUse": false, "error": {"message": msg, "time": now()}}}),
        );
        return;
    }
    let created = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    patch(
        store,
        &res::volumesnapshotcontents(),
        None,
        content_name,
        json!({"status": {
            "snapshotHandle": handle,
            "creationTime": created,
            "readyToUse": true,
            "restoreSize": restore_size,
            "error": null,
        }}),
    );
    if let Some(vs) = &vs {
        events::record(
            store,
            vs,
            EventType::Normal,
            "SnapshotCreated",
            &format!(
                "Snapshot {}/{} was successfully created by the CSI driver.",
                namespace(vs),
                name(vs)
            ),
            COMPONENT,
        );
        events::record(
            store,
            vs,
            EventType::Normal,
            "SnapshotReady",
            &format!("Snapshot {}/{} is ready to use.", namespace(vs), name(vs)),
            COMPONENT,
        );
    }
}

/// Copies the volume to the snapshot store under a temporary name, then renames it.
fn take_copy(src: &Path, dst: &Path, block: bool) -> std::io::Result<()> {
    let parent = dst.parent().expect("snapshot path has a parent");
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("snap")
    ));
    remove_any(&tmp)?;
    if block {
        copy_sparse(src, &tmp, 0)?;
    } else {
        copy_tree(src, &tmp)?;
    }
    remove_any(dst)?;
    std::fs::rename(&tmp, dst)
}
