//! Writes: create, update, modify, apply, delete (finalizers and propagation), as the generic
//! registry does them.

use super::*;

impl Store {
    /// Creates an object of type `rt` in namespace `ns`.
    pub fn create_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let out = self.create_locked(&mut st, rt, ns, obj, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    pub(super) fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(errors::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let gk = group_kind(&rt.group, &rt.kind);
        let ns = if rt.namespaced {
            ns.or(meta_str(&obj, "namespace"))
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if rt.namespaced
            && let Some(body_ns) = meta_str(&obj, "namespace")
            && body_ns != ns
        {
            return Err(errors::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta_str(&obj, "resourceVersion").is_some_and(|s| !s.is_empty()) {
            return Err(errors::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        // Name or generateName.
        let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() {
            let Some(prefix) = meta_str(&obj, "generateName").filter(|p| !p.is_empty()) else {
                return Err(errors::invalid1(
                    &gk,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            };
            // `names.SimpleNameGenerator`: five random characters from a consonant/digit alphabet.
            const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            loop {
                let suffix: String = (0..5)
                    .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
                    .collect();
                let candidate = format!("{prefix}{suffix}");
                if st.get(&rt.key(), &ns, &candidate).is_none() {
                    name = candidate;
                    break;
                }
            }
        }
        if let Some(e) = name_error(rt, &name) {
            return Err(errors::invalid1(&gk, &name, "metadata.name", &e));
        }
        if rt.namespaced {
            match st.get(&ResourceKey::core("namespaces"), "", &ns) {
                None => return Err(errors::not_found("namespaces", &ns)),
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(errors::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )));
                }
                _ => {}
            }
        }
        if st.get(&rt.key(), &ns, &name).is_some() {
            return Err(errors::already_exists(&rt.qualified(), &name));
        }
        {
            let o = obj.as_object_mut().expect("object");
            o.insert("apiVersion".into(), Value::String(rt.api_version()));
            o.insert("kind".into(), Value::String(rt.kind.clone()));
            if rt.status_subresource && rt.plural != "customresourcedefinitions" {
                o.remove("status");
            }
        }
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), Value::String(name.clone()));
            if rt.namespaced {
                m.insert("namespace".into(), Value::String(ns.clone()));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), Value::String(new_uid()));
            m.insert("creationTimestamp".into(), Value::String(now()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            m.remove("managedFields");
        }
        self.admit(st, rt, None, &mut obj, opts)?;
        if opts.dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(st.rv.to_string()));
            return Ok(obj);
        }
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(&rt.key()).insert((ns, name), obj.clone());
        st.emit("ADDED", &rt.key(), &obj, None);
        if rt.plural == "customresourcedefinitions" {
            Self::refresh_crds(st);
        }
        Ok(obj)
    }

    /// Replaces an object (PUT), or writes its status (`part == Status`).
    pub fn update_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let out = self.update_locked(&mut st, rt, ns, name, obj, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    /// Reads the current object, computes its new state with `f` and writes it (patches).
    /// `f` gets the current object; its result is written like an update whose
    /// resourceVersion is the current one.
    pub fn modify(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: WriteOpts,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let cur = st
            .get(&rt.key(), ns.unwrap_or(""), name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        let mut new = f(&cur)?;
        let cur_rv = meta_str(&cur, "resourceVersion").unwrap_or("").to_string();
        // A patch may carry its own resourceVersion precondition; otherwise the current one.
        if meta_str(&new, "resourceVersion").is_none_or(str::is_empty) {
            meta_mut(&mut new).insert("resourceVersion".into(), Value::String(cur_rv));
        }
        let out = self.update_locked(&mut st, rt, ns, name, new, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    /// Server-side apply (see `patch::apply` for the simplification). Creates the object when
    /// missing.
    pub fn apply(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        applied: Value,
        manager: &str,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let cur = st.get(&rt.key(), ns.unwrap_or(""), name).cloned();
        let out = match cur {
            None => {
                if opts.part == Part::Status {
                    return Err(errors::not_found(&rt.qualified(), name));
                }
                let mut obj = applied.clone();
                meta_mut(&mut obj).insert("name".into(), Value::String(name.into()));
                let created = self.create_locked(&mut st, rt, ns, obj, opts)?;
                if !opts.dry_run {
                    let uid = meta_str(&created, "uid").unwrap_or("").to_string();
                    st.applied.insert((uid, manager.into()), applied);
                }
                created
            }
            Some(cur) => {
                let uid = meta_str(&cur, "uid").unwrap_or("").to_string();
                let prev = st.applied.get(&(uid.clone(), manager.to_string())).cloned();
                let mut applied_body = applied.clone();
                if let Some(m) = applied_body
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                {
                    m.remove("resourceVersion");
                }
                let mut new = patch::apply(&cur, &applied_body, prev.as_ref())
                    .map_err(errors::bad_request)?;
                meta_mut(&mut new).insert(
                    "resourceVersion".into(),
                    cur["metadata"]["resourceVersion"].clone(),
                );
                let out = self.update_locked(&mut st, rt, ns, name, new, opts)?;
                if !opts.dry_run {
                    st.applied.insert((uid, manager.into()), applied);
                }
                out
            }
        };
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    pub(super) fn update_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(errors::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let ns = if rt.namespaced {
            ns.unwrap_or("").to_string()
        } else {
            String::new()
        };
        if let Some(n) = meta_str(&obj, "name")
            && n != name
        {
            return Err(errors::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(n) = meta_str(&obj, "namespace")
            && n != ns
        {
            return Err(errors::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = rt.key();
        let old = st
            .get(&key, &ns, name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        let want_rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
        if !want_rv.is_empty() && want_rv != meta_str(&old, "resourceVersion").unwrap_or("") {
            return Err(errors::conflict_modified(&rt.qualified(), name));
        }
        // Build the new state from the part that may change.
        let mut new = match opts.part {
            Part::Status => {
                let mut n = old.clone();
                match obj.get("status") {
                    Some(s) => {
                        n.as_object_mut()
                            .expect("object")
                            .insert("status".into(), s.clone());
                    }
                    None => {
                        n.as_object_mut().expect("object").remove("status");
                    }
                }
                n
            }
            Part::Main | Part::All => {
                if opts.part == Part::Main && rt.status_subresource {
                    let o = obj.as_object_mut().expect("object");
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                // Metadata the client cannot change.
                let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
                let m = meta_mut(&mut obj);
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    match old_meta.get(f) {
                        Some(v) => m.insert(f.into(), v.clone()),
                        None => m.remove(f),
                    };
                }
                m.remove("selfLink");
                m.remove("managedFields");
                let o = obj.as_object_mut().expect("object");
                o.insert("apiVersion".into(), old["apiVersion"].clone());
                o.insert("kind".into(), old["kind"].clone());
                obj
            }
        };
        let gk = group_kind(&rt.group, &rt.kind);
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(errors::invalid1(
                    &gk,
                    name,
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if opts.part != Part::Status {
            self.admit(st, rt, Some(&old), &mut new, opts)?;
        }
        if spec_part(&old, rt) != spec_part(&new, rt) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(old);
        }
        if opts.dry_run {
            return Ok(new);
        }
        let rv = st.bump();
        meta_mut(&mut new).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(&key)
            .insert((ns.clone(), name.to_string()), new.clone());
        st.emit("MODIFIED", &key, &new, Some(old));
        if ready_to_go(&new) {
            Self::remove(st, &key, &ns, name);
        }
        if rt.plural == "customresourcedefinitions" {
            Self::refresh_crds(st);
        }
        Ok(new)
    }

    /// Removes an object for good and sends DELETED.
    pub(super) fn remove(st: &mut State, key: &ResourceKey, ns: &str, name: &str) -> Option<Value> {
        let mut obj = st.bucket(key).remove(&(ns.to_string(), name.to_string()))?;
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        st.applied.retain(|(u, _), _| *u != uid);
        st.emit("DELETED", key, &obj, None);
        if key.resource == "customresourcedefinitions" && key.group == "apiextensions.k8s.io" {
            Self::refresh_crds(st);
        }
        Some(obj)
    }

    /// Deletes an object (DELETE).
    pub fn delete_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns.unwrap_or("") } else { "" };
        let cur = st
            .get(&rt.key(), ns, name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&cur, "uid")
        {
            return Err(errors::conflict(
                &rt.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&cur, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta_str(&cur, "resourceVersion")
        {
            return Err(errors::conflict(
                &rt.qualified(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&cur, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        if opts.dry_run {
            return Ok(cur);
        }
        let out = Self::delete_locked(
            &mut st,
            &rt.key(),
            ns,
            name,
            opts.propagation.as_deref(),
            opts.grace_period,
        );
        self.housekeeping(&mut st);
        Ok(out.unwrap_or(cur))
    }

    /// Starts the deletion of an object: marks it (finalizers, namespaces) or removes it.
    ///
    /// Pods are deleted gracefully like the real pod strategy (`pkg/registry/core/pod/strategy.go`,
    /// CheckGracefulDelete): a pod bound to a node and not yet terminal only gets a
    /// deletionTimestamp and deletionGracePeriodSeconds; the kubelet stops its containers and
    /// then deletes it for good (a second delete, or `gracePeriodSeconds=0`). Unscheduled or
    /// terminal pods go at once.
    pub(super) fn delete_locked(
        st: &mut State,
        key: &ResourceKey,
        ns: &str,
        name: &str,
        propagation: Option<&str>,
        grace: Option<i64>,
    ) -> Option<Value> {
        let mut obj = st.get(key, ns, name).cloned()?;
        let is_pod = key.group.is_empty() && key.resource == "pods";
        let graceful_pod = is_pod
            && grace != Some(0)
            && obj.pointer("/metadata/deletionTimestamp").is_none()
            && obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && !matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
        if is_pod && grace != Some(0) && obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(obj);
        }
        if graceful_pod {
            let secs = grace
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            let old = obj.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
            {
                let m = meta_mut(&mut obj);
                m.insert(
                    "deletionTimestamp".into(),
                    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(secs));
                if let Some(f) = match propagation {
                    Some("Foreground") => Some("foregroundDeletion"),
                    Some("Orphan") => Some("orphan"),
                    _ => None,
                } {
                    let fins = m.entry("finalizers").or_insert_with(|| json!([]));
                    if let Some(a) = fins.as_array_mut() {
                        a.push(json!(f));
                    }
                }
            }
            let rv = st.bump();
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
            st.bucket(key)
                .insert((ns.to_string(), name.to_string()), obj.clone());
            st.emit("MODIFIED", key, &obj, Some(old));
            return Some(obj);
        }
        let is_ns = key.group.is_empty() && key.resource == "namespaces";
        let is_crd =
            key.group == "apiextensions.k8s.io" && key.resource == "customresourcedefinitions";
        let mut fins = finalizers(&obj);
        let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
        let extra = match propagation {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra
            && !fins.iter().any(|x| x == f)
            && !marked
        {
            fins.push(f.to_string());
        }
        if is_crd && !marked {
            fins.push("customresourcecleanup.apiextensions.k8s.io".into());
        }
        if fins.is_empty() && !is_ns {
            return Self::remove(st, key, ns, name);
        }
        if marked && finalizers(&obj) == fins {
            return Some(obj);
        }
        let old = obj.clone();
        {
            let m = meta_mut(&mut obj);
            m.insert("finalizers".into(), json!(fins));
            m.entry("deletionTimestamp")
                .or_insert_with(|| Value::String(now()));
            m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
        }
        if is_ns && let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Terminating"}));
        }
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(key)
            .insert((ns.to_string(), name.to_string()), obj.clone());
        st.emit("MODIFIED", key, &obj, Some(old));
        Some(obj)
    }

    pub(super) fn set_finalizers(
        st: &mut State,
        key: &ResourceKey,
        ns: &str,
        name: &str,
        fins: Vec<String>,
    ) {
        let Some(mut obj) = st.get(key, ns, name).cloned() else {
            return;
        };
        let old = obj.clone();
        meta_mut(&mut obj).insert("finalizers".into(), json!(fins));
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(key)
            .insert((ns.to_string(), name.to_string()), obj.clone());
        st.emit("MODIFIED", key, &obj, Some(old));
        if ready_to_go(&obj) {
            Self::remove(st, key, ns, name);
        }
    }
}
