//! What the control plane's controllers do after a write: the namespace and ServiceAccount
//! controllers, CRD cleanup and the garbage collector.

use super::*;

impl Store {
    /// The core controllers that run after every write: namespace lifecycle, the default
    /// ServiceAccount, CRD cleanup, and the garbage collector.
    pub(super) fn housekeeping(&self, st: &mut State) {
        for _round in 0..50 {
            let mut changed = false;
            let ns_key = ResourceKey::core("namespaces");
            let namespaces: Vec<Value> = st
                .objects
                .get(&ns_key)
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default();
            let namespaced_keys: Vec<ResourceKey> = {
                let types: Vec<ResourceType> = self
                    .builtins
                    .iter()
                    .chain(st.crd_types.iter())
                    .cloned()
                    .collect();
                let mut keys: Vec<ResourceKey> = types
                    .iter()
                    .filter(|t| t.namespaced)
                    .map(ResourceType::key)
                    .collect();
                keys.sort();
                keys.dedup();
                keys
            };
            for n in &namespaces {
                let name = meta_str(n, "name").unwrap_or("").to_string();
                if n.pointer("/metadata/deletionTimestamp").is_some() {
                    let mut left = 0;
                    for k in &namespaced_keys {
                        let names: Vec<(String, bool)> = st
                            .objects
                            .get(k)
                            .map(|b| {
                                b.iter()
                                    .filter(|((o_ns, _), _)| *o_ns == name)
                                    .map(|((_, o), v)| {
                                        (
                                            o.clone(),
                                            v.pointer("/metadata/deletionTimestamp").is_some(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        for (o, marked) in names {
                            left += 1;
                            if !marked {
                                Self::delete_locked(st, k, &name, &o, None, None);
                                changed = true;
                            }
                        }
                    }
                    if left == 0 && finalizers(n).is_empty() {
                        Self::remove(st, &ns_key, "", &name);
                        changed = true;
                    }
                } else if st
                    .get(&ResourceKey::core("serviceaccounts"), &name, "default")
                    .is_none()
                {
                    let rt = self
                        .builtins
                        .iter()
                        .find(|t| t.plural == "serviceaccounts")
                        .cloned()
                        .expect("builtin");
                    let sa = json!({"metadata": {"name": "default", "namespace": name}});
                    if self
                        .create_locked(st, &rt, Some(&name), sa, WriteOpts::main())
                        .is_ok()
                    {
                        changed = true;
                    }
                }
            }
            // CRD cleanup.
            let crd_key = ResourceKey::new("apiextensions.k8s.io", "customresourcedefinitions");
            let crds: Vec<Value> = st
                .objects
                .get(&crd_key)
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default();
            for c in crds {
                if c.pointer("/metadata/deletionTimestamp").is_none() {
                    continue;
                }
                let fins = finalizers(&c);
                if !fins
                    .iter()
                    .any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
                {
                    continue;
                }
                let group = c
                    .pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let plural = c
                    .pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let key = ResourceKey::new(group, plural);
                let objs: Vec<((String, String), bool)> = st
                    .objects
                    .get(&key)
                    .map(|b| {
                        b.iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    v.pointer("/metadata/deletionTimestamp").is_some(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if objs.is_empty() {
                    let name = meta_str(&c, "name").unwrap_or("").to_string();
                    let rest: Vec<String> = fins
                        .into_iter()
                        .filter(|f| f != "customresourcecleanup.apiextensions.k8s.io")
                        .collect();
                    Self::set_finalizers(st, &crd_key, "", &name, rest);
                    changed = true;
                } else {
                    for ((o_ns, o_name), marked) in objs {
                        if !marked {
                            Self::delete_locked(st, &key, &o_ns, &o_name, None, None);
                            changed = true;
                        }
                    }
                }
            }
            if self.collect_garbage(st) {
                changed = true;
            }
            if !changed {
                break;
            }
        }
    }

    /// One pass of the garbage collector. Returns whether anything changed.
    pub(super) fn collect_garbage(&self, st: &mut State) -> bool {
        let mut live: HashMap<String, (ResourceKey, String, String, Vec<String>, bool)> =
            HashMap::new();
        let mut dependents: Vec<(ResourceKey, String, String, Vec<Value>, bool)> = Vec::new();
        for (k, b) in &st.objects {
            for ((ns, name), v) in b {
                if let Some(uid) = meta_str(v, "uid") {
                    live.insert(
                        uid.to_string(),
                        (
                            k.clone(),
                            ns.clone(),
                            name.clone(),
                            finalizers(v),
                            v.pointer("/metadata/deletionTimestamp").is_some(),
                        ),
                    );
                }
                if let Some(refs) = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    && !refs.is_empty()
                {
                    dependents.push((
                        k.clone(),
                        ns.clone(),
                        name.clone(),
                        refs.clone(),
                        v.pointer("/metadata/deletionTimestamp").is_some(),
                    ));
                }
            }
        }
        let mut changed = false;
        let mut has_dependents: HashSet<String> = HashSet::new();
        for (k, ns, name, refs, marked) in &dependents {
            let uids: Vec<&str> = refs
                .iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect();
            let present: Vec<&str> = uids
                .iter()
                .copied()
                .filter(|u| live.contains_key(*u))
                .collect();
            // Owners being deleted with orphan propagation: drop the reference.
            let orphaning: Vec<&str> = present
                .iter()
                .copied()
                .filter(|u| {
                    live.get(*u)
                        .is_some_and(|(_, _, _, f, m)| *m && f.iter().any(|x| x == "orphan"))
                })
                .collect();
            let foreground: Vec<&str> = present
                .iter()
                .copied()
                .filter(|u| {
                    live.get(*u).is_some_and(|(_, _, _, f, m)| {
                        *m && f.iter().any(|x| x == "foregroundDeletion")
                    })
                })
                .collect();
            for u in &present {
                has_dependents.insert(u.to_string());
            }
            if present.is_empty() {
                if !marked {
                    Self::delete_locked(st, k, ns, name, None, None);
                    changed = true;
                }
                continue;
            }
            if !foreground.is_empty() && foreground.len() == present.len() {
                if !marked {
                    Self::delete_locked(st, k, ns, name, Some("Foreground"), None);
                    changed = true;
                }
                continue;
            }
            if present.len() != uids.len() || !orphaning.is_empty() {
                // Remove dangling and orphaned references.
                let keep: Vec<Value> = refs
                    .iter()
                    .filter(|r| {
                        let u = r.get("uid").and_then(Value::as_str).unwrap_or("");
                        present.contains(&u) && !orphaning.contains(&u)
                    })
                    .cloned()
                    .collect();
                if let Some(mut obj) = st.get(k, ns, name).cloned() {
                    let old = obj.clone();
                    meta_mut(&mut obj).insert("ownerReferences".into(), Value::Array(keep));
                    let rv = st.bump();
                    meta_mut(&mut obj)
                        .insert("resourceVersion".into(), Value::String(rv.to_string()));
                    st.bucket(k).insert((ns.clone(), name.clone()), obj.clone());
                    st.emit("MODIFIED", k, &obj, Some(old));
                    changed = true;
                }
            }
        }
        // Owners waiting for their dependents (foreground) or for orphaning to finish.
        for (uid, (k, ns, name, fins, marked)) in live {
            if !marked {
                continue;
            }
            let waiting = has_dependents.contains(&uid);
            let mut rest = fins.clone();
            if fins.iter().any(|f| f == "orphan") && !waiting {
                rest.retain(|f| f != "orphan");
            }
            if fins.iter().any(|f| f == "foregroundDeletion") && !waiting {
                rest.retain(|f| f != "foregroundDeletion");
            }
            if rest != fins {
                Self::set_finalizers(st, &k, &ns, &name, rest);
                changed = true;
            }
        }
        changed
    }
}
