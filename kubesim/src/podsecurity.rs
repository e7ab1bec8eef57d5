//! Pod Security admission: a namespace labelled `pod-security.kubernetes.io/enforce: LEVEL`
//! refuses pods that violate the level (docs: "Pod Security Standards", "Pod Security
//! Admission"; source: kubernetes/pod-security-admission `policy/check_*.go`).
//!
//! The checks a pod of this project (or a test of kubesim) can meet are here: host namespaces,
//! privileged, capabilities (baseline: only the default set may be added; restricted: drop
//! `ALL`, add at most `NET_BIND_SERVICE`), hostPath and host ports, seccomp (baseline: not
//! `Unconfined`; restricted: `RuntimeDefault` or `Localhost`), restricted volume types,
//! `allowPrivilegeEscalation`, `runAsNonRoot`, `runAsUser=0`. Left out: AppArmor, SELinux
//! options, `procMount`, sysctls and Windows pods. Violations are listed in the order of the
//! checks' ids, as the real plugin prints them; an unknown level fails closed (restricted).
//! Only enforcement is modelled: the `audit` and `warn` labels do nothing here.

use serde_json::Value;

/// The label that names the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The label that names the version of the enforced level.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restrictions.
    Privileged,
    /// Known privilege escalations prevented.
    Baseline,
    /// Hardened.
    Restricted,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The level a namespace enforces, from its labels.
pub fn enforced_level(namespace: &Value) -> Level {
    match namespace
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ENFORCE_LABEL))
        .and_then(Value::as_str)
    {
        None | Some("privileged") => Level::Privileged,
        Some("baseline") => Level::Baseline,
        // "restricted", and any value the plugin cannot parse (it fails closed).
        Some(_) => Level::Restricted,
    }
}

/// Capabilities a baseline pod may add: the container runtimes' default set.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types a restricted pod may use.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The containers of a pod (init, regular and ephemeral) with their names.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn cname(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// `container "a"` or `containers "a", "b"`.
fn quoted(what: &str, names: &[String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{what}{plural} {}", list.join(", "))
}

fn bool_at(v: &Value, ptr: &str) -> Option<bool> {
    v.pointer(ptr).and_then(Value::as_bool)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// One failed check: its id (for ordering), the reason and the detail.
struct Violation {
    id: &'static str,
    reason: &'static str,
    detail: String,
}

/// The violations of `level` by the pod spec, in the order the real plugin lists them.
fn violations(level: Level, spec: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let cs = containers(spec);
    let mut push = |id, reason, detail: String| {
        out.push(Violation { id, reason, detail });
    };

    // Baseline.
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec.get(**f).and_then(Value::as_bool) == Some(true))
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        push("hostNamespaces", "host namespaces", host.join(", "));
    }
    let privileged: Vec<String> = cs
        .iter()
        .filter(|c| bool_at(c, "/securityContext/privileged") == Some(true))
        .map(|c| cname(c).to_string())
        .collect();
    if !privileged.is_empty() {
        push(
            "privileged",
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                quoted("container", &privileged)
            ),
        );
    }
    let mut ports = Vec::new();
    for c in &cs {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(hp) = p
                .get("hostPort")
                .and_then(Value::as_i64)
                .filter(|p| *p != 0)
            {
                ports.push(format!("container {:?} uses hostPort {hp}", cname(c)));
            }
        }
    }
    if !ports.is_empty() {
        push("hostPorts", "hostPort", ports.join(", "));
    }
    let volumes: Vec<(&str, &str)> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            let kind = v
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name"))
                .map(String::as_str)
                .unwrap_or("");
            (name, kind)
        })
        .collect();
    if level == Level::Restricted {
        let bad: Vec<String> = volumes
            .iter()
            .filter(|(_, k)| !RESTRICTED_VOLUME_TYPES.contains(k))
            .map(|(n, k)| format!("volume {n:?} uses restricted volume type {k:?}"))
            .collect();
        if !bad.is_empty() {
            push(
                "restrictedVolumes",
                "restricted volume types",
                bad.join(", "),
            );
        }
    } else {
        let host_paths: Vec<String> = volumes
            .iter()
            .filter(|(_, k)| *k == "hostPath")
            .map(|(n, _)| n.to_string())
            .collect();
        if !host_paths.is_empty() {
            push(
                "hostPathVolumes",
                "hostPath volumes",
                quoted("volume", &host_paths),
            );
        }
    }

    // Capabilities.
    let adds = |c: &Value| -> Vec<String> {
        c.pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| s.trim_start_matches("CAP_").to_string())
            .collect()
    };
    let mut caps = Vec::new();
    if level == Level::Restricted {
        let no_drop: Vec<String> = cs
            .iter()
            .filter(|c| {
                !c.pointer("/securityContext/capabilities/drop")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")))
            })
            .map(|c| cname(c).to_string())
            .collect();
        if !no_drop.is_empty() {
            caps.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                quoted("container", &no_drop)
            ));
        }
    }
    for c in &cs {
        let bad: Vec<String> = adds(c)
            .into_iter()
            .filter(|cap| match level {
                Level::Restricted => cap != "NET_BIND_SERVICE",
                _ => !BASELINE_CAPABILITIES.contains(&cap.as_str()),
            })
            .map(|cap| format!("{cap:?}"))
            .collect();
        if !bad.is_empty() {
            caps.push(format!(
                "container {:?} must not include {} in securityContext.capabilities.add",
                cname(c),
                bad.join(", ")
            ));
        }
    }
    if !caps.is_empty() {
        let (id, reason) = if level == Level::Restricted {
            ("capabilities_restricted", "unrestricted capabilities")
        } else {
            ("capabilities_baseline", "non-default capabilities")
        };
        push(id, reason, caps.join("; "));
    }

    // Seccomp.
    let pod_seccomp = str_at(spec, "/securityContext/seccompProfile/type");
    fn c_seccomp(c: &Value) -> Option<&str> {
        str_at(c, "/securityContext/seccompProfile/type")
    }
    if level == Level::Restricted {
        let ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
        let mut details = Vec::new();
        if pod_seccomp.is_some() && !ok(pod_seccomp) {
            details.push(format!(
                "pod must not set securityContext.seccompProfile.type to {:?}",
                pod_seccomp.unwrap_or("")
            ));
        }
        let explicit_bad: Vec<String> = cs
            .iter()
            .filter(|c| c_seccomp(c).is_some() && !ok(c_seccomp(c)))
            .map(|c| cname(c).to_string())
            .collect();
        if !explicit_bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                quoted("container", &explicit_bad)
            ));
        }
        if !ok(pod_seccomp) {
            let unset: Vec<String> = cs
                .iter()
                .filter(|c| c_seccomp(c).is_none())
                .map(|c| cname(c).to_string())
                .collect();
            if !unset.is_empty() {
                details.push(format!(
                    "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    quoted("container", &unset)
                ));
            }
        }
        if !details.is_empty() {
            push(
                "seccompProfile_restricted",
                "seccompProfile",
                details.join("; "),
            );
        }
    } else {
        let mut details = Vec::new();
        if pod_seccomp == Some("Unconfined") {
            details.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".into(),
            );
        }
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| c_seccomp(c) == Some("Unconfined"))
            .map(|c| cname(c).to_string())
            .collect();
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                quoted("container", &bad)
            ));
        }
        if !details.is_empty() {
            push(
                "seccompProfile_baseline",
                "seccompProfile",
                details.join("; "),
            );
        }
    }

    if level == Level::Restricted {
        let ape: Vec<String> = cs
            .iter()
            .filter(|c| bool_at(c, "/securityContext/allowPrivilegeEscalation") != Some(false))
            .map(|c| cname(c).to_string())
            .collect();
        if !ape.is_empty() {
            push(
                "allowPrivilegeEscalation",
                "allowPrivilegeEscalation != false",
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    quoted("container", &ape)
                ),
            );
        }
        // runAsNonRoot: the pod's value, overridden per container.
        let pod_nonroot = bool_at(spec, "/securityContext/runAsNonRoot");
        let mut details = Vec::new();
        if pod_nonroot == Some(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false: Vec<String> = cs
            .iter()
            .filter(|c| bool_at(c, "/securityContext/runAsNonRoot") == Some(false))
            .map(|c| cname(c).to_string())
            .collect();
        if !explicit_false.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                quoted("container", &explicit_false)
            ));
        }
        if pod_nonroot != Some(true) {
            let unset: Vec<String> = cs
                .iter()
                .filter(|c| bool_at(c, "/securityContext/runAsNonRoot").is_none())
                .map(|c| cname(c).to_string())
                .collect();
            if !unset.is_empty() {
                details.push(format!(
                    "pod or {} must set securityContext.runAsNonRoot=true",
                    quoted("container", &unset)
                ));
            }
        }
        if !details.is_empty() {
            push("runAsNonRoot", "runAsNonRoot != true", details.join("; "));
        }
        let mut details = Vec::new();
        if spec
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64)
            == Some(0)
        {
            details.push("pod must not set runAsUser=0".to_string());
        }
        let root: Vec<String> = cs
            .iter()
            .filter(|c| {
                c.pointer("/securityContext/runAsUser")
                    .and_then(Value::as_i64)
                    == Some(0)
            })
            .map(|c| cname(c).to_string())
            .collect();
        if !root.is_empty() {
            details.push(format!(
                "{} must not set runAsUser=0",
                quoted("container", &root)
            ));
        }
        if !details.is_empty() {
            push("runAsUser", "runAsUser=0", details.join("; "));
        }
    }
    out.sort_by_key(|v| v.id);
    out
}

/// The Forbidden message for a pod that violates the namespace's level, or `None` when the
/// pod may run there.
pub fn check_pod(namespace: &Value, pod_name: &str, spec: &Value) -> Option<String> {
    let level = enforced_level(namespace);
    let found = violations(level, spec);
    if found.is_empty() {
        return None;
    }
    let version = namespace
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ENFORCE_VERSION_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("latest");
    let list: Vec<String> = found
        .iter()
        .map(|v| format!("{} ({})", v.reason, v.detail))
        .collect();
    Some(format!(
        "pods {pod_name:?} is forbidden: violates PodSecurity \"{}:{version}\": {}",
        level.name(),
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(level: &str) -> Value {
        json!({"metadata": {"name": "n", "labels": {ENFORCE_LABEL: level}}})
    }

    #[test]
    fn an_unlabelled_namespace_admits_anything() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]});
        assert_eq!(check_pod(&json!({"metadata": {}}), "p", &spec), None);
    }

    #[test]
    fn baseline_refuses_privileged_containers_host_namespaces_and_extra_capabilities() {
        let spec = json!({"hostPID": true, "containers": [
            {"name": "a", "securityContext": {"privileged": true}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}},
        ]});
        let msg = check_pod(&ns("baseline"), "p", &spec).expect("refused");
        assert_eq!(
            msg,
            "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": non-default capabilities (container \"b\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add), host namespaces (hostPID=true), privileged (container \"a\" must not set securityContext.privileged=true)"
        );
    }

    #[test]
    fn baseline_admits_a_root_container_with_default_capabilities() {
        let spec = json!({"containers": [{"name": "m", "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["DAC_OVERRIDE", "CHOWN", "FOWNER", "MKNOD"]}}}]});
        assert_eq!(check_pod(&ns("baseline"), "p", &spec), None);
    }

    #[test]
    fn restricted_lists_every_missing_setting_like_the_api_server() {
        let spec = json!({"containers": [{"name": "mover", "securityContext": {"runAsUser": 0}}]});
        let msg = check_pod(&ns("restricted"), "m", &spec).expect("refused");
        assert_eq!(
            msg,
            "pods \"m\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"mover\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"mover\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"mover\" must set securityContext.runAsNonRoot=true), runAsUser=0 (container \"mover\" must not set runAsUser=0), seccompProfile (pod or container \"mover\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
    }

    #[test]
    fn restricted_admits_a_hardened_pod() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}, {"name": "s", "secret": {"secretName": "y"}}],
        });
        assert_eq!(check_pod(&ns("restricted"), "p", &spec), None);
    }

    #[test]
    fn restricted_refuses_hostpath_volumes_and_root_added_capabilities() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        });
        let msg = check_pod(&ns("restricted"), "p", &spec).expect("refused");
        assert!(
            msg.contains(
                "restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"
            ),
            "{msg}"
        );
        assert!(msg.contains("unrestricted capabilities (container \"c\" must not include \"CHOWN\" in securityContext.capabilities.add)"), "{msg}");
    }

    #[test]
    fn an_unknown_level_fails_closed() {
        assert_eq!(enforced_level(&ns("strict")), Level::Restricted);
    }
}
