//! Admission on create and update: names, labels, namespaces in deletion, ServiceAccounts,
//! PVC defaults and immutability, CRD schemas, Pod Security; served CRDs.

use super::*;

impl Store {
    /// Defaulting, admission and validation of a new state of an object (`old` is `None` on
    /// create).
    pub(super) fn admit(
        &self,
        st: &State,
        rt: &ResourceType,
        old: Option<&Value>,
        obj: &mut Value,
        opts: WriteOpts,
    ) -> Result<(), ApiError> {
        let gk = group_kind(&rt.group, &rt.kind);
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let ns = meta_str(obj, "namespace").unwrap_or("").to_string();
        if let Some(e) = label_value_error(obj) {
            return Err(errors::invalid1(&gk, &name, "metadata.labels", &e));
        }
        if let Some(crd) = &rt.crd
            && let Some(schema) = &crd.schema
        {
            let (errs, pruned) = schema::default_prune_validate(schema, obj);
            if !errs.is_empty() {
                return Err(errors::invalid(&gk, &name, &errs));
            }
            // `fieldValidation=Strict` (kubectl's default): unknown fields are an error
            // ("Field validation", https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation).
            if opts.strict && !pruned.is_empty() {
                let list: Vec<String> = pruned
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                return Err(errors::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                    list.join(", "),
                    kind = rt.kind,
                    v = rt.version
                )));
            }
        }
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") if old.is_none() => {
                let o = obj.as_object_mut().expect("object");
                o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                o.insert("status".into(), json!({"phase": "Active"}));
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert(
                        "kubernetes.io/metadata.name".into(),
                        Value::String(name.clone()),
                    );
                }
            }
            ("", "persistentvolumeclaims") => {
                let spec = obj.get("spec").cloned().unwrap_or(json!({}));
                if old.is_none() {
                    if spec.pointer("/resources/requests/storage").is_none() {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.resources[storage]",
                            "Required value",
                        ));
                    }
                    if spec
                        .get("accessModes")
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.accessModes",
                            "Required value: at least 1 access mode is required",
                        ));
                    }
                    let mut spec = spec;
                    let s = spec
                        .as_object_mut()
                        .ok_or_else(|| errors::bad_request("spec must be an object"))?;
                    s.entry("volumeMode").or_insert_with(|| json!("Filesystem"));
                    // DefaultStorageClass admission: a claim that names no class (the field
                    // absent, not "") gets the default one, the newest if several are marked.
                    if !s.contains_key("storageClassName")
                        && let Some(class) = default_storage_class(st)
                    {
                        s.insert("storageClassName".into(), Value::String(class));
                    }
                    // NormalizeDataSources (AnyVolumeDataSource, GA in 1.33).
                    match (
                        s.get("dataSource").cloned(),
                        s.get("dataSourceRef").cloned(),
                    ) {
                        (Some(ds), None) if !ds.is_null() => {
                            s.insert("dataSourceRef".into(), ds);
                        }
                        (None, Some(r))
                            if !r.is_null()
                                && r.get("namespace")
                                    .and_then(Value::as_str)
                                    .is_none_or(str::is_empty) =>
                        {
                            let mut ds = r.clone();
                            if let Some(m) = ds.as_object_mut() {
                                m.remove("namespace");
                            }
                            s.insert("dataSource".into(), ds);
                        }
                        _ => {}
                    }
                    if let Some(ds) = s.get("dataSource")
                        && ds
                            .get("apiGroup")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        && ds.get("kind").and_then(Value::as_str) != Some("PersistentVolumeClaim")
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.dataSource",
                            &format!(
                                "Invalid value: \"{}\": must be 'PersistentVolumeClaim' when referencing the default apiGroup",
                                ds.get("kind").and_then(Value::as_str).unwrap_or("")
                            ),
                        ));
                    }
                    obj.as_object_mut()
                        .expect("object")
                        .insert("spec".into(), spec);
                    obj.as_object_mut()
                        .expect("object")
                        .insert("status".into(), json!({"phase": "Pending"}));
                } else if let Some(old) = old {
                    // Spec is immutable except resources.requests, volumeAttributesClassName,
                    // and volumeName while it is still empty.
                    let strip = |v: &Value, old_vol_empty: bool| {
                        let mut v = v.get("spec").cloned().unwrap_or(json!({}));
                        if let Some(m) = v.as_object_mut() {
                            m.remove("volumeAttributesClassName");
                            if old_vol_empty {
                                m.remove("volumeName");
                            }
                            if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                                r.remove("requests");
                            }
                        }
                        v
                    };
                    let old_vol_empty = old
                        .pointer("/spec/volumeName")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty);
                    if strip(old, old_vol_empty) != strip(obj, old_vol_empty) {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec",
                            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                        ));
                    }
                }
            }
            ("", "secrets") => {
                // Secret.stringData is write-only: it is merged into `data` (base64), overwriting
                // keys of the same name, and never returned (core/v1 types.go, Secret.StringData).
                if let Some(Value::Object(plain)) =
                    obj.as_object_mut().and_then(|o| o.remove("stringData"))
                {
                    use base64::Engine as _;
                    let o = obj.as_object_mut().expect("object");
                    let data = o.entry("data").or_insert_with(|| json!({}));
                    if !data.is_object() {
                        *data = json!({});
                    }
                    let data = data.as_object_mut().expect("object");
                    for (k, v) in plain {
                        let text = v.as_str().unwrap_or_default().to_string();
                        data.insert(
                            k,
                            Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
            ("", "persistentvolumes") if old.is_none() => {
                let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                let Some(spec) = spec else {
                    return Err(errors::invalid1(&gk, &name, "spec", "Required value"));
                };
                spec.entry("volumeMode")
                    .or_insert_with(|| json!("Filesystem"));
                spec.entry("persistentVolumeReclaimPolicy")
                    .or_insert_with(|| json!("Retain"));
                obj.as_object_mut()
                    .expect("object")
                    .insert("status".into(), json!({"phase": "Pending"}));
            }
            ("", "pods") => {
                if old.is_none() {
                    let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                    let Some(spec) = spec else {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.containers",
                            "Required value",
                        ));
                    };
                    if spec
                        .get("containers")
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.containers",
                            "Required value",
                        ));
                    }
                    spec.entry("restartPolicy")
                        .or_insert_with(|| json!("Always"));
                    spec.entry("schedulerName")
                        .or_insert_with(|| json!("default-scheduler"));
                    spec.entry("terminationGracePeriodSeconds")
                        .or_insert_with(|| json!(30));
                    let sa = spec
                        .entry("serviceAccountName")
                        .or_insert_with(|| json!("default"))
                        .as_str()
                        .unwrap_or("default")
                        .to_string();
                    spec.insert("serviceAccount".into(), Value::String(sa.clone()));
                    if st
                        .get(&ResourceKey::core("serviceaccounts"), &ns, &sa)
                        .is_none()
                    {
                        return Err(errors::forbidden(format!(
                            "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
                        )));
                    }
                    // Pod Security admission (after defaulting, as in the real chain).
                    if let Some(namespace) = st.get(&ResourceKey::core("namespaces"), "", &ns)
                        && let Some(msg) = podsecurity::check_pod(
                            namespace,
                            &name,
                            obj.get("spec").unwrap_or(&Value::Null),
                        )
                    {
                        return Err(errors::forbidden(msg));
                    }
                    obj.as_object_mut().expect("object").insert(
                        "status".into(),
                        json!({"phase": "Pending", "qosClass": "BestEffort"}),
                    );
                } else if let Some(old) = old
                    && opts.http
                {
                    // Pod updates may change only images and a few fields.
                    let strip = |v: &Value| {
                        let mut s = v.get("spec").cloned().unwrap_or(json!({}));
                        if let Some(m) = s.as_object_mut() {
                            m.remove("activeDeadlineSeconds");
                            m.remove("tolerations");
                            m.remove("terminationGracePeriodSeconds");
                            for list in ["containers", "initContainers"] {
                                if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                                    for c in cs {
                                        if let Some(c) = c.as_object_mut() {
                                            c.remove("image");
                                        }
                                    }
                                }
                            }
                        }
                        s
                    };
                    if strip(old) != strip(obj) {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec",
                            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                        ));
                    }
                }
            }
            ("storage.k8s.io", "storageclasses") => {
                if old.is_none() {
                    if obj
                        .get("provisioner")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "provisioner",
                            "Required value",
                        ));
                    }
                    let o = obj.as_object_mut().expect("object");
                    o.entry("reclaimPolicy").or_insert_with(|| json!("Delete"));
                    o.entry("volumeBindingMode")
                        .or_insert_with(|| json!("Immediate"));
                } else if let Some(old) = old {
                    for f in [
                        "provisioner",
                        "parameters",
                        "reclaimPolicy",
                        "volumeBindingMode",
                    ] {
                        if old.get(f) != obj.get(f) {
                            return Err(errors::invalid1(
                                &gk,
                                &name,
                                f,
                                "Forbidden: updates to provisioner are forbidden.",
                            ));
                        }
                    }
                }
            }
            ("batch", "jobs") if old.is_none() => {
                let uid = meta_str(obj, "uid").unwrap_or("").to_string();
                crate::batch::admit_job(obj, &gk, &name, &uid)?;
            }
            ("batch", "cronjobs") if old.is_none() => {
                crate::batch::admit_cronjob(obj, &gk, &name)?;
            }
            ("apps", "deployments") if old.is_none() => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("replicas").or_insert_with(|| json!(1));
                    spec.entry("revisionHistoryLimit")
                        .or_insert_with(|| json!(10));
                    spec.entry("strategy").or_insert_with(|| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}));
                }
                if obj.pointer("/spec/selector").is_none() {
                    return Err(errors::invalid1(
                        &gk,
                        &name,
                        "spec.selector",
                        "Required value",
                    ));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                if let Err(e) = registry::types_of_crd(obj) {
                    let (field, detail) = e.split_once(": ").unwrap_or(("spec", e.as_str()));
                    return Err(errors::invalid1(&gk, &name, field, detail));
                }
                let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                let stored = obj_storage_versions(&obj.get("spec").cloned().unwrap_or(Value::Null));
                // A condition whose status stays keeps its lastTransitionTime, so an update that
                // changes nothing leaves the object (and its resourceVersion) as it was.
                let since = |t: &str| {
                    obj.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == t && c["status"] == "True"))
                        .and_then(|c| c.get("lastTransitionTime").cloned())
                        .unwrap_or_else(|| json!(now()))
                };
                let (accepted_at, established_at) = (since("NamesAccepted"), since("Established"));
                let o = obj.as_object_mut().expect("object");
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    s.insert("acceptedNames".into(), names);
                    s.insert("storedVersions".into(), json!(stored));
                    s.insert(
                        "conditions".into(),
                        json!([
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": accepted_at},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": established_at}
                        ]),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn refresh_crds(st: &mut State) {
        let crds: Vec<Value> = st
            .objects
            .get(&ResourceKey::new(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ))
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default();
        st.crd_types = crds
            .iter()
            .filter_map(|c| registry::types_of_crd(c).ok())
            .flatten()
            .collect();
    }
}
