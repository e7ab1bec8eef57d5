//! Volumes: filesystem and block claims written by pods, snapshotted and restored, a populator,
//! WaitForFirstConsumer, the scheduler waiting for claims and static volumes binding.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_volume_is_written_by_a_pod_snapshotted_and_restored() {
    let sim = Sim::start().await;
    sim.pvc("src", "fast", "Filesystem", "8Mi").await;
    let pvc = sim.wait_phase(PVCS, "src", "Bound", 10).await;
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    let pv = sim.get(PVS, &pv_name).await.unwrap();
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    assert_eq!(pv["spec"]["csi"]["driver"], "hostpath.csi.kubesim.io");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(phase(&pv), "Bound");
    assert_eq!(pvc["status"]["capacity"]["storage"], "8Mi");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert!(sim.dir().join("volumes").join(&pv_name).is_dir());

    sim.run(
        "writer",
        Some(("src", "Filesystem")),
        "echo first > /data/f && mkdir /data/d && ln -s ../f /data/d/l",
    )
    .await;
    // The pod's mount was private to it: nothing of the volume shows on the host's /data.
    assert!(
        !std::path::Path::new("/data/f").exists(),
        "the pod's bind mount leaked to the host"
    );

    sim.create(SNAPSHOTS, json!({"metadata": {"name": "snap1"}, "spec": {"source": {"persistentVolumeClaimName": "src"}}})).await;
    let vs = sim
        .wait_for(SNAPSHOTS, "snap1", "to be ready", 10, ready)
        .await;
    assert_eq!(vs["status"]["restoreSize"], "8Mi");
    assert_eq!(
        vs["spec"]["volumeSnapshotClassName"], "snap",
        "the default class was not chosen"
    );
    let content = sim
        .get(
            CONTENTS,
            vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        content["metadata"]["name"],
        format!("snapcontent-{}", uid(&vs))
    );
    assert_eq!(content["spec"]["sourceVolumeMode"], "Filesystem");
    assert_eq!(content["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        content["spec"]["source"]["volumeHandle"],
        pv["spec"]["csi"]["volumeHandle"]
    );
    assert_eq!(content["status"]["restoreSize"], 8 << 20);

    // A later write to the source does not change the snapshot.
    sim.run(
        "overwriter",
        Some(("src", "Filesystem")),
        "echo second > /data/f",
    )
    .await;

    sim.create(
        PVCS,
        json!({"metadata": {"name": "restored"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "8Mi"}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}}),
    )
    .await;
    sim.wait_phase(PVCS, "restored", "Bound", 10).await;
    let log = sim
        .run(
            "reader",
            Some(("restored", "Filesystem")),
            "cat /data/f; readlink /data/d/l",
        )
        .await;
    assert_eq!(log, "first\n../f\n");
    let log = sim
        .run("reader2", Some(("src", "Filesystem")), "cat /data/f")
        .await;
    assert_eq!(log, "second\n");

    // Deleting the snapshot (policy Delete) deletes its content and data.
    let handle = content["status"]["snapshotHandle"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.dir().join("snapshots").join(&handle).exists());
    sim.delete(SNAPSHOTS, "snap1").await;
    sim.wait_gone(CONTENTS, content["metadata"]["name"].as_str().unwrap(), 10)
        .await;
    assert!(!sim.dir().join("snapshots").join(&handle).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_is_written_through_a_loop_device_snapshotted_and_restored_larger() {
    let sim = Sim::start().await;
    sim.pvc("blk", "fast", "Block", "4Mi").await;
    sim.wait_phase(PVCS, "blk", "Bound", 10).await;
    sim.run(
        "writer",
        Some(("blk", "Block")),
        "test -b /dev/xvda && printf 'hello block' | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc 2>/dev/null && sync",
    )
    .await;
    sim.create(SNAPSHOTS, json!({"metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "blk"}, "volumeSnapshotClassName": "snap"}})).await;
    let vs = sim.wait_for(SNAPSHOTS, "s", "to be ready", 10, ready).await;
    let content = sim
        .get(
            CONTENTS,
            vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(content["spec"]["sourceVolumeMode"], "Block");
    sim.run(
        "overwrite",
        Some(("blk", "Block")),
        "printf 'HELLO BLOCK' | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc 2>/dev/null && sync",
    )
    .await;

    // Smaller than restoreSize: refused with the external-provisioner's event, stays Pending.
    let small = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "small"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "2Mi"}},
                "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
        )
        .await;
    // Another mode than the source without the allow-volume-mode-change annotation: refused.
    let fs = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "fs"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Filesystem", "resources": {"requests": {"storage": "4Mi"}},
                "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
        )
        .await;
    sim.create(
        PVCS,
        json!({"metadata": {"name": "big"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "8Mi"}},
            "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
    )
    .await;
    let big = sim.wait_phase(PVCS, "big", "Bound", 10).await;
    let log = sim
        .run("reader", Some(("big", "Block")), "dd if=/dev/xvda bs=512 skip=2048 count=1 2>/dev/null | head -c 11; echo; blockdev --getsize64 /dev/xvda")
        .await;
    assert_eq!(log, format!("hello block\n{}\n", 8 << 20));
    let file = sim
        .dir()
        .join("volumes")
        .join(big["spec"]["volumeName"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 20);

    let ev = sim.wait_event(&uid(&small), "ProvisioningFailed", 10).await;
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("is less than the size"),
        "{ev}"
    );
    let ev = sim.wait_event(&uid(&fs), "ProvisioningFailed", 10).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("allow-volume-mode-change"),
        "{ev}"
    );
    assert_eq!(phase(&sim.get(PVCS, "small").await.unwrap()), "Pending");
    assert_eq!(phase(&sim.get(PVCS, "fs").await.unwrap()), "Pending");

    // With the annotation on the content, the mode check passes and the request reaches the
    // driver, which cannot turn a Block image into a directory: it says so.
    sim.patch(
        CONTENTS,
        content["metadata"]["name"].as_str().unwrap(),
        json!({"metadata": {"annotations": {"snapshot.storage.kubernetes.io/allow-volume-mode-change": "true"}}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim.list(EVENTS).await.iter().any(|e| {
        e.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(uid(&fs).as_str())
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("does not convert volume modes")
    }) {
        assert!(
            Instant::now() < deadline,
            "no driver error after allowing the mode change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No loop device of the finished pods is left attached to our volumes.
    let out = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains(sim.dir().to_str().unwrap()),
        "loop devices left attached:\n{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populator_hands_its_prime_volume_to_the_user_claim() {
    let sim = Sim::start().await;
    // The user's claim names a data source kind the provisioner does not handle.
    let user = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "user"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "4Mi"}},
                "dataSourceRef": {"apiGroup": "example.io", "kind": "Hello", "name": "h"}}}),
        )
        .await;
    let ev = sim.wait_event(&uid(&user), "Provisioning", 10).await;
    assert_eq!(
        ev["message"],
        "Assuming an external populator will provision the volume"
    );
    assert_eq!(ev["type"], "Normal");
    let ev = sim
        .wait_event(&uid(&user), "UnrecognizedDataSourceKind", 10)
        .await;
    assert_eq!(ev["type"], "Warning");
    // Once a VolumePopulator registers the kind, new claims of it get no warning.
    let populators = Kind(
        "populator.storage.k8s.io",
        "v1beta1",
        "VolumePopulator",
        "volumepopulators",
        false,
    );
    sim.create(populators, json!({"metadata": {"name": "hello"}, "sourceKind": {"group": "example.io", "kind": "Hello"}})).await;
    let other = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "other"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Mi"}},
                "dataSourceRef": {"apiGroup": "example.io", "kind": "Hello", "name": "h2"}}}),
        )
        .await;
    sim.wait_event(&uid(&other), "Provisioning", 10).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !sim.list(EVENTS).await.iter().any(|e| e
            .pointer("/involvedObject/uid")
            .and_then(Value::as_str)
            == Some(uid(&other).as_str())
            && e["reason"] == "UnrecognizedDataSourceKind"),
        "a registered populator kind was reported as unrecognized"
    );

    // The populator: PVC' → pod fills it → claimRef moved to the user's PVC.
    sim.pvc("prime", "fast", "Filesystem", "4Mi").await;
    let prime = sim.wait_phase(PVCS, "prime", "Bound", 10).await;
    sim.run(
        "populate",
        Some(("prime", "Filesystem")),
        "echo populated > /data/hello",
    )
    .await;
    let pv_name = prime["spec"]["volumeName"].as_str().unwrap().to_string();
    sim.patch(
        PVS,
        &pv_name,
        json!({"spec": {"persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": NS, "name": "user", "uid": uid(&user), "resourceVersion": user["metadata"]["resourceVersion"]}}}),
    )
    .await;
    let user_bound = sim.wait_phase(PVCS, "user", "Bound", 10).await;
    assert_eq!(user_bound["spec"]["volumeName"], pv_name.as_str());
    assert_eq!(user_bound["status"]["capacity"]["storage"], "4Mi");
    sim.wait_phase(PVCS, "prime", "Lost", 10).await;
    // Deleting PVC' does not release the volume: it belongs to the user's claim now.
    sim.delete(PVCS, "prime").await;
    sim.patch(
        PVS,
        &pv_name,
        json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
    )
    .await;
    let log = sim
        .run("reader", Some(("user", "Filesystem")), "cat /data/hello")
        .await;
    assert_eq!(log, "populated\n");
    assert_eq!(phase(&sim.get(PVS, &pv_name).await.unwrap()), "Bound");

    // Deleting the user's claim releases the volume; policy Delete removes it and its data.
    sim.delete(PODS, "reader").await;
    sim.delete(PVCS, "user").await;
    sim.wait_gone(PVS, &pv_name, 10).await;
    assert!(!sim.dir().join("volumes").join(&pv_name).exists());

    // Retain keeps a Released volume and its data.
    sim.create(
        STORAGECLASSES,
        json!({"metadata": {"name": "keep"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Retain"}),
    )
    .await;
    sim.pvc("kept", "keep", "Filesystem", "1Mi").await;
    let kept = sim.wait_phase(PVCS, "kept", "Bound", 10).await;
    let kept_pv = kept["spec"]["volumeName"].as_str().unwrap().to_string();
    sim.delete(PVCS, "kept").await;
    sim.wait_phase(PVS, &kept_pv, "Released", 10).await;
    assert!(sim.dir().join("volumes").join(&kept_pv).is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_claim_stays_pending_until_a_pod_uses_it() {
    let sim = Sim::start().await;
    let pvc = sim.pvc("late", "wffc", "Filesystem", "4Mi").await;
    sim.wait_event(&uid(&pvc), "WaitForFirstConsumer", 10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pvc = sim.get(PVCS, "late").await.unwrap();
    assert_eq!(phase(&pvc), "Pending");
    assert!(
        pvc.pointer("/metadata/annotations/volume.kubernetes.io~1selected-node")
            .is_none()
    );
    assert!(
        sim.list(PVS).await.is_empty(),
        "a PV was provisioned before any consumer"
    );

    let log = sim
        .run(
            "consumer",
            Some(("late", "Filesystem")),
            "echo ok > /data/x && cat /data/x",
        )
        .await;
    assert_eq!(log, "ok\n");
    let pvc = sim.get(PVCS, "late").await.unwrap();
    assert_eq!(phase(&pvc), "Bound");
    let node = pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = sim.get(PODS, "consumer").await.unwrap();
    assert_eq!(pod["spec"]["nodeName"], node.as_str());
    let pv = sim
        .get(PVS, pvc["spec"]["volumeName"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        node.as_str()
    );
    sim.wait_event(&uid(&pod), "Scheduled", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_waits_for_missing_claims_and_static_volumes_bind_by_class_and_size() {
    let sim = Sim::start().await;
    // An administrator's volumes: too small, and big enough (the smallest fitting one wins).
    for (name, size) in [
        ("static-small", "1Mi"),
        ("static-big", "64Mi"),
        ("static-fit", "8Mi"),
    ] {
        std::fs::create_dir_all(sim.dir().join("volumes").join(name)).unwrap();
        sim.create(
            PVS,
            json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain", "csi": {"driver": "hostpath.csi.kubesim.io", "volumeHandle": name}}}),
        )
        .await;
    }
    sim.wait_phase(PVS, "static-fit", "Available", 10).await;
    // A pod whose claim does not exist yet is not scheduled.
    let pod = sim
        .sh_pod(
            "early",
            Some(("later", "Filesystem")),
            "echo static > /data/f; cat /data/f",
            "Never",
        )
        .await;
    let ev = sim.wait_event(&uid(&pod), "FailedScheduling", 10).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("persistentvolumeclaim \"later\" not found"),
        "{ev}"
    );
    assert!(
        sim.get(PODS, "early")
            .await
            .unwrap()
            .pointer("/spec/nodeName")
            .is_none()
    );

    sim.pvc("later", "", "Filesystem", "4Mi").await;
    let pvc = sim.wait_phase(PVCS, "later", "Bound", 10).await;
    assert_eq!(pvc["spec"]["volumeName"], "static-fit");
    assert_eq!(pvc["status"]["capacity"]["storage"], "8Mi");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let pv = sim.wait_phase(PVS, "static-fit", "Bound", 10).await;
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    sim.wait_phase(PODS, "early", "Succeeded", 20).await;
    assert_eq!(sim.logs("early").await, "static\n");
    assert_eq!(
        std::fs::read_to_string(sim.dir().join("volumes/static-fit/f")).unwrap(),
        "static\n"
    );
    assert_eq!(
        phase(&sim.get(PVS, "static-small").await.unwrap()),
        "Available"
    );
}
