//! A pod's volumes on the host: claims (bind mounts, loop devices), Secret, ConfigMap,
//! downward API, projected and emptyDir files, the ServiceAccount token, fsGroup ownership.

use super::*;

/// Gives a Filesystem volume to the pod's `fsGroup` the way the kubelet does
/// (`SetVolumeOwnership`): every file and directory gets that group and group read (and
/// write, unless the volume is read-only) permission, directories also execute and setgid.
/// With `OnRootMismatch`, a volume whose root already has the group and the permissions is
/// left alone.
pub(super) fn set_volume_ownership(
    root: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mask = if read_only { 0o440 } else { 0o660 };
    let want = |md: &std::fs::Metadata| {
        let m = md.mode();
        let mut need = mask;
        if md.is_dir() {
            need |= 0o2000 | 0o110;
        }
        (m | need, md.gid() == gid && m & need == need)
    };
    if on_root_mismatch && want(&std::fs::metadata(root)?).1 {
        return Ok(());
    }
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if md.file_type().is_symlink() {
            let _ = std::os::unix::fs::lchown(&p, None, Some(gid));
            continue;
        }
        std::os::unix::fs::chown(&p, None, Some(gid))?;
        let (mode, _) = want(&md);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(())
}

pub(super) fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn decode_b64(v: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .unwrap_or_else(|_| v.as_bytes().to_vec())
}

/// The key/value pairs of a secret (decoded) or configmap.
pub(super) fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(m) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in m {
            let s = v.as_str().unwrap_or("");
            out.insert(
                k.clone(),
                if secret {
                    decode_b64(s)
                } else {
                    s.as_bytes().to_vec()
                },
            );
        }
    }
    if let Some(m) = obj
        .get(if secret { "stringData" } else { "binaryData" })
        .and_then(Value::as_object)
    {
        for (k, v) in m {
            let s = v.as_str().unwrap_or("");
            out.insert(
                k.clone(),
                if secret {
                    s.as_bytes().to_vec()
                } else {
                    decode_b64(s)
                },
            );
        }
    }
    out
}

/// The pod's IP: an address in 127.0.0.0/8 derived from its uid, so that pods, which all share
/// the host's network, can each bind the same port on their own address (every 127/8 address
/// is local on Linux).
pub fn pod_ip(pod: &Value) -> String {
    let uid = s(pod, "/metadata/uid").unwrap_or("");
    let h = uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_le_bytes();
    format!("127.{}.{}.{}", a.max(1), b, c.clamp(2, 254))
}

pub(super) fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let pod_address = pod_ip(pod);
    let v = match path {
        "metadata.name" => s(pod, "/metadata/name"),
        "metadata.namespace" => s(pod, "/metadata/namespace"),
        "metadata.uid" => s(pod, "/metadata/uid"),
        "spec.nodeName" => s(pod, "/spec/nodeName"),
        "spec.serviceAccountName" => Some(s(pod, "/spec/serviceAccountName").unwrap_or("default")),
        "status.podIP" => Some(pod_address.as_str()),
        "status.hostIP" => Some("127.0.0.1"),
        p => {
            let (field, key) = p.strip_suffix("']").and_then(|p| p.split_once("['"))?;
            let map = match field {
                "metadata.labels" => "/metadata/labels",
                "metadata.annotations" => "/metadata/annotations",
                _ => return None,
            };
            return pod
                .pointer(map)
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    };
    v.map(str::to_string)
}

pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl PodWorker {
    /// Prepares every volume of the pod on the host (blocking: writes files, runs losetup).
    pub(super) fn prepare_volumes(&self) -> Result<Prepared, String> {
        let mut out = HashMap::new();
        let vols_dir = self.dir.join("volumes");
        let result = (|| -> Result<(), String> {
            for v in self
                .pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let vname = s(&v, "/name").unwrap_or("").to_string();
                let target = vols_dir.join(&vname);
                let fail =
                    |e: String| format!("MountVolume.SetUp failed for volume \"{vname}\" : {e}");
                if let Some(claim) = s(&v, "/persistentVolumeClaim/claimName") {
                    let ro = v.pointer("/persistentVolumeClaim/readOnly") == Some(&json!(true));
                    let pvc = self
                        .store
                        .get(&res::pvcs(), Some(&self.ns), claim)
                        .ok_or_else(|| {
                            fail(format!("persistentvolumeclaim \"{claim}\" not found"))
                        })?;
                    let pv_name = s(&pvc, "/spec/volumeName").unwrap_or("");
                    if s(&pvc, "/status/phase") != Some("Bound") || pv_name.is_empty() {
                        return Err(format!(
                            "Unable to attach or mount volumes: unmounted volumes=[{vname}]: PersistentVolumeClaim \"{claim}\" is not bound"
                        ));
                    }
                    let pv = self
                        .store
                        .get(&res::pvs(), None, pv_name)
                        .ok_or_else(|| fail(format!("persistentvolume \"{pv_name}\" not found")))?;
                    let data = crate::controllers::provisioner::volume_path(&self.ctx, pv_name);
                    if !data.exists() {
                        return Err(fail(format!(
                            "rpc error: code = NotFound desc = volume {pv_name} does not exist"
                        )));
                    }
                    if s(&pv, "/spec/volumeMode") == Some("Block") {
                        let mut cmd = std::process::Command::new("losetup");
                        cmd.arg("-f").arg("--show");
                        if ro {
                            cmd.arg("-r");
                        }
                        let o = cmd.arg(&data).output().map_err(|e| {
                            fail(format!("losetup: {e} (is util-linux installed?)"))
                        })?;
                        if !o.status.success() {
                            return Err(fail(format!(
                                "losetup -f --show {}: {}",
                                data.display(),
                                String::from_utf8_lossy(&o.stderr).trim()
                            )));
                        }
                        let device = String::from_utf8_lossy(&o.stdout).trim().to_string();
                        self.loops.lock().expect("loops lock").push(device.clone());
                        let st = rustix::fs::stat(device.as_str())
                            .map_err(|e| fail(format!("stat {device}: {e}")))?;
                        out.insert(
                            vname,
                            VolumeSource::Block {
                                major: rustix::fs::major(st.st_rdev),
                                minor: rustix::fs::minor(st.st_rdev),
                                uid: st.st_uid,
                                gid: st.st_gid,
                                mode: st.st_mode & 0o7777,
                                read_only: ro,
                            },
                        );
                    } else {
                        out.insert(
                            vname,
                            VolumeSource::Path {
                                path: data,
                                read_only: ro,
                            },
                        );
                    }
                } else if let Some(sec) = v.get("secret") {
                    let n = s(sec, "/secretName").unwrap_or("");
                    let _ = crate::controllers::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    match self.store.get(&res::secrets(), Some(&self.ns), n) {
                        Some(obj) => self
                            .project(&target, &object_data(&obj, true), sec)
                            .map_err(&fail)?,
                        None if sec.get("optional") == Some(&json!(true)) => {}
                        None => return Err(fail(format!("secret \"{n}\" not found"))),
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(cm) = v.get("configMap") {
                    let n = s(cm, "/name").unwrap_or("");
                    let _ = crate::controllers::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    match self.store.get(&res::configmaps(), Some(&self.ns), n) {
                        Some(obj) => self
                            .project(&target, &object_data(&obj, false), cm)
                            .map_err(&fail)?,
                        None if cm.get("optional") == Some(&json!(true)) => {}
                        None => return Err(fail(format!("configmap \"{n}\" not found"))),
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(proj) = v.get("projected") {
                    let _ = crate::controllers::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    for src in proj
                        .get("sources")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                    {
                        if let Some(sec) = src.get("secret") {
                            let n = s(sec, "/name").unwrap_or("");
                            match self.store.get(&res::secrets(), Some(&self.ns), n) {
                                Some(obj) => self
                                    .project(&target, &object_data(&obj, true), sec)
                                    .map_err(&fail)?,
                                None if sec.get("optional") == Some(&json!(true)) => {}
                                None => return Err(fail(format!("secret \"{n}\" not found"))),
                            }
                        } else if let Some(cm) = src.get("configMap") {
                            let n = s(cm, "/name").unwrap_or("");
                            let data = if n == "kube-root-ca.crt" {
                                Some(BTreeMap::from([(
                                    "ca.crt".to_string(),
                                    self.ctx.ca_pem.as_bytes().to_vec(),
                                )]))
                            } else {
                                self.store
                                    .get(&res::configmaps(), Some(&self.ns), n)
                                    .map(|o| object_data(&o, false))
                            };
                            match data {
                                Some(d) => self.project(&target, &d, cm).map_err(&fail)?,
                                None if cm.get("optional") == Some(&json!(true)) => {}
                                None => return Err(fail(format!("configmap \"{n}\" not found"))),
                            }
                        } else if let Some(tok) = src.get("serviceAccountToken") {
                            let p = s(tok, "/path").unwrap_or("token");
                            let token = self
                                .ctx
                                .tokens
                                .service_account_token(&self.ns, self.service_account());
                            write_file(&target.join(p), token.as_bytes(), 0o644)
                                .map_err(|e| fail(e.to_string()))?;
                        } else if let Some(d) = src.get("downwardAPI") {
                            self.downward(&target, d).map_err(&fail)?;
                        }
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(d) = v.get("downwardAPI") {
                    let _ = crate::controllers::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    self.downward(&target, d).map_err(&fail)?;
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if v.get("emptyDir").is_some() {
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777))
                        .map_err(|e| fail(e.to_string()))?;
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: false,
                        },
                    );
                } else if let Some(hp) = s(&v, "/hostPath/path") {
                    let p = PathBuf::from(hp);
                    if matches!(s(&v, "/hostPath/type"), Some("DirectoryOrCreate")) {
                        std::fs::create_dir_all(&p).map_err(|e| fail(e.to_string()))?;
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: p,
                            read_only: false,
                        },
                    );
                } else {
                    return Err(fail(
                        "this volume type is not supported by kubesim".to_string(),
                    ));
                }
            }
            // fsGroup: writable volumes (and the kubelet's own secret/configMap/projected
            // files) are given to the group; read-only claims and hostPath are left alone.
            if let Some(fs_group) = self
                .pod
                .pointer("/spec/securityContext/fsGroup")
                .and_then(Value::as_u64)
            {
                let on_root_mismatch = s(&self.pod, "/spec/securityContext/fsGroupChangePolicy")
                    == Some("OnRootMismatch");
                for v in self
                    .pod
                    .pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let vname = s(v, "/name").unwrap_or("");
                    if v.get("hostPath").is_some()
                        || v.pointer("/persistentVolumeClaim/readOnly") == Some(&json!(true))
                    {
                        continue;
                    }
                    if let Some(VolumeSource::Path { path, read_only }) = out.get(vname) {
                        set_volume_ownership(path, fs_group as u32, *read_only, on_root_mismatch)
                            .map_err(|e| {
                                format!("MountVolume.SetUp failed for volume \"{vname}\" : applying fsGroup {fs_group}: {e}")
                            })?;
                    }
                }
            }
            // The ServiceAccount token, unless opted out.
            if self.automount() {
                let sa_dir = self.dir.join("serviceaccount");
                let token = self
                    .ctx
                    .tokens
                    .service_account_token(&self.ns, self.service_account());
                write_file(&sa_dir.join("token"), token.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
                write_file(&sa_dir.join("ca.crt"), self.ctx.ca_pem.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
                write_file(&sa_dir.join("namespace"), self.ns.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Prepared::Paths(out)),
            Err(e) => {
                detach_loops(&self.loops);
                Err(e)
            }
        }
    }

    pub(super) fn service_account(&self) -> &str {
        s(&self.pod, "/spec/serviceAccountName")
            .or_else(|| s(&self.pod, "/spec/serviceAccount"))
            .unwrap_or("default")
    }

    pub(super) fn automount(&self) -> bool {
        if let Some(b) = self
            .pod
            .pointer("/spec/automountServiceAccountToken")
            .and_then(Value::as_bool)
        {
            return b;
        }
        // A projected token volume already mounted there (added by an admission plugin) wins.
        let mounts_sa = ["/spec/containers", "/spec/initContainers"]
            .iter()
            .any(|k| {
                self.pod
                    .pointer(k)
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.get("volumeMounts")
                                .and_then(Value::as_array)
                                .is_some_and(|m| {
                                    m.iter().any(|m| s(m, "/mountPath") == Some(SA_PATH))
                                })
                        })
                    })
            });
        if mounts_sa {
            return false;
        }
        self.store
            .get(
                &res::serviceaccounts(),
                Some(&self.ns),
                self.service_account(),
            )
            .and_then(|sa| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true)
    }

    /// Writes the keys of a secret/configmap into a volume directory (`items`, modes).
    pub(super) fn project(
        &self,
        dir: &Path,
        data: &BTreeMap<String, Vec<u8>>,
        src: &Value,
    ) -> Result<(), String> {
        let default_mode = src
            .get("defaultMode")
            .and_then(Value::as_u64)
            .unwrap_or(0o644) as u32;
        match src.get("items").and_then(Value::as_array) {
            Some(items) => {
                for it in items {
                    let k = s(it, "/key").unwrap_or("");
                    let p = s(it, "/path").unwrap_or(k);
                    let mode = it
                        .get("mode")
                        .and_then(Value::as_u64)
                        .map(|m| m as u32)
                        .unwrap_or(default_mode);
                    match data.get(k) {
                        Some(v) => write_file(&dir.join(p), v, mode).map_err(|e| e.to_string())?,
                        None if src.get("optional") == Some(&json!(true)) => {}
                        None => {
                            return Err(format!(
                                "configmap or secret references non-existent key {k}"
                            ));
                        }
                    }
                }
            }
            None => {
                for (k, v) in data {
                    write_file(&dir.join(k), v, default_mode).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn downward(&self, dir: &Path, d: &Value) -> Result<(), String> {
        for it in d
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let p = s(&it, "/path").unwrap_or("");
            let val = s(&it, "/fieldRef/fieldPath")
                .map(|f| match f {
                    "metadata.labels" | "metadata.annotations" => {
                        let ptr = if f == "metadata.labels" {
                            "/metadata/labels"
                        } else {
                            "/metadata/annotations"
                        };
                        self.pod
                            .pointer(ptr)
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default()
                    }
                    f => field_ref(&self.pod, f).unwrap_or_default(),
                })
                .unwrap_or_default();
            write_file(&dir.join(p), val.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
