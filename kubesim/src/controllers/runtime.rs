//! The container runtime half of the kubelet: an OCI runtime bundle (`config.json`) made from
//! a pod's container spec and its security context, run with `runc` (docs: "Configure a
//! Security Context for a Pod or Container"; the OCI runtime spec; containerd's CRI plugin
//! `pkg/cri/opts/spec_linux.go` for the defaults a real node applies).
//!
//! What is enforced, as on a containerd node:
//! - the user: `runAsUser`/`runAsGroup` (container over pod), else the image's `User` (a name
//!   is looked up in the image's `/etc/passwd` and `/etc/group`); `runAsNonRoot` refuses a
//!   container that would run as uid 0, or whose image user is a name it cannot verify, with
//!   the kubelet's message; `supplementalGroups` and `fsGroup` become additional groups;
//! - capabilities: the runtime's default set, `drop` (or `ALL`) removed and `add` added, in
//!   the bounding, effective and permitted sets (none inheritable or ambient, so a non-root
//!   process keeps none across `exec`, as the kernel decides); `privileged` gives every
//!   capability, every device and an unmasked `/proc` and `/sys`;
//! - `readOnlyRootFilesystem` (a read-only root), `allowPrivilegeEscalation: false`
//!   (`no_new_privs`), the masked and read-only paths of `/proc` and `/sys`;
//! - devices: a Block volume is a device node with the host node's owner and mode, and only
//!   the devices the pod names are allowed by the device cgroup.
//!
//! Namespaces: mount, PID, IPC and UTS are the container's own; the network is the host's (each
//! pod still has its own loopback address, see `pod_ip`) and so is the cgroup namespace (the
//! machines this runs on have hybrid cgroups, where runc cannot make one). Not applied:
//! seccomp profiles (checked by Pod Security admission only), AppArmor, SELinux, resources.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The capabilities a container runtime gives a container by default (containerd, CRI-O).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, by number (`capability.h`).
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities this kernel knows (runc refuses names it does not).
fn known_capabilities() -> &'static [&'static str] {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(40);
    &ALL_CAPABILITIES[..(last + 1).min(ALL_CAPABILITIES.len())]
}

fn sc<'a>(c: &'a Value, pod: &'a Value, field: &str) -> Option<&'a Value> {
    c.pointer(&format!("/securityContext/{field}"))
        .or_else(|| pod.pointer(&format!("/spec/securityContext/{field}")))
}

/// The capability set of a container (pure; unit-tested).
pub fn capabilities(c: &Value, known: &[&str]) -> Vec<String> {
    let names = |field: &str| -> Vec<String> {
        c.pointer(&format!("/securityContext/capabilities/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| {
                let s = s.to_ascii_uppercase();
                if s == "ALL" || s.starts_with("CAP_") {
                    s
                } else {
                    format!("CAP_{s}")
                }
            })
            .collect()
    };
    if c.pointer("/securityContext/privileged") == Some(&json!(true)) {
        return known.iter().map(|s| s.to_string()).collect();
    }
    let (add, drop) = (names("add"), names("drop"));
    let mut set: BTreeSet<String> = if add.iter().any(|a| a == "ALL") {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
    if drop.iter().any(|d| d == "ALL") {
        set.clear();
    }
    set.extend(add.into_iter().filter(|a| a != "ALL"));
    for d in drop {
        set.remove(&d);
    }
    set.retain(|c| known.contains(&c.as_str()));
    set.into_iter().collect()
}

/// The process's user and groups.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// uid
    pub uid: u32,
    /// gid
    pub gid: u32,
    /// supplementary groups
    pub additional_gids: Vec<u32>,
}

/// Looks a name up in an `/etc/passwd`- or `/etc/group`-style file of the image: the numeric
/// fields 2 and 3 of the matching line.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// The primary group of a uid in the image's `/etc/passwd` (0 when it has none).
fn passwd_gid(rootfs: &Path, uid: u32) -> u32 {
    std::fs::read_to_string(rootfs.join("etc/passwd"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                    .then(|| f[3].parse().ok())
                    .flatten()
            })
        })
        .unwrap_or(0)
}

/// The user a container runs as, or the kubelet's refusal (`CreateContainerConfigError`).
pub fn user(
    pod: &Value,
    c: &Value,
    image_user: &str,
    rootfs: &Path,
    who: &str,
) -> Result<User, String> {
    let run_as_user = sc(c, pod, "runAsUser").and_then(Value::as_u64);
    let run_as_group = sc(c, pod, "runAsGroup").and_then(Value::as_u64);
    let non_root = sc(c, pod, "runAsNonRoot") == Some(&json!(true));
    let (image_name, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (uid, mut gid) = match run_as_user {
        Some(u) => (u as u32, passwd_gid(rootfs, u as u32)),
        None if image_name.is_empty() => (0, 0),
        None => match image_name.parse::<u32>() {
            Ok(u) => (u, passwd_gid(rootfs, u)),
            Err(_) => {
                if non_root {
                    return Err(format!(
                        "container has runAsNonRoot and image has non-numeric user ({image_name}), cannot verify user is non-root ({who})"
                    ));
                }
                lookup(rootfs, "etc/passwd", image_name).ok_or_else(|| {
                    format!("unable to find user {image_name}: no matching entries in passwd file")
                })?
            }
        },
    };
    if non_root && uid == 0 {
        return Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        ));
    }
    if run_as_user.is_none()
        && let Some(g) = image_group
    {
        gid = match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup(rootfs, "etc/group", g)
                .map(|(g, _)| g)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    if let Some(g) = run_as_group {
        gid = g as u32;
    }
    let mut additional: Vec<u32> = pod
        .pointer("/spec/securityContext/supplementalGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|g| g as u32)
        .collect();
    if let Some(fs_group) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        additional.push(fs_group as u32);
    }
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// A bind mount into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A block device node in the container.
#[derive(Debug, Clone)]
pub struct Device {
    /// Path in the container.
    pub path: String,
    /// Device numbers.
    pub major: u32,
    /// Device numbers.
    pub minor: u32,
    /// Owner, group and permission bits of the host's node.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// See `uid`.
    pub mode: u32,
    /// Only read access is allowed.
    pub read_only: bool,
}

/// Everything a bundle is made of.
pub struct Bundle<'a> {
    /// The container's id (runc's, and its cgroup's name).
    pub id: String,
    /// The pod.
    pub pod: &'a Value,
    /// The container spec.
    pub container: &'a Value,
    /// The root filesystem (already prepared: an overlay or a skeleton).
    pub rootfs: PathBuf,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Hostname.
    pub hostname: String,
    /// The user.
    pub user: User,
    /// Bind mounts, in order.
    pub mounts: Vec<Mount>,
    /// Block devices.
    pub devices: Vec<Device>,
}

/// The OCI runtime `config.json` of a container (pure apart from reading which capabilities
/// the kernel knows; unit-tested).
pub fn config(b: &Bundle) -> Value {
    let c = b.container;
    let privileged = c.pointer("/securityContext/privileged") == Some(&json!(true));
    let read_only_root = c.pointer("/securityContext/readOnlyRootFilesystem") == Some(&json!(true));
    let no_new_privs = c.pointer("/securityContext/allowPrivilegeEscalation")
        == Some(&json!(false))
        && !privileged;
    let caps = capabilities(c, known_capabilities());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
    ];
    for m in &b.mounts {
        mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": ["rbind", "rprivate", if m.read_only { "ro" } else { "rw" }],
        }));
    }
    let mut allowed = vec![json!({"allow": false, "access": "rwm"})];
    if privileged {
        allowed = vec![json!({"allow": true, "access": "rwm"})];
    }
    let devices: Vec<Value> = b
        .devices
        .iter()
        .map(|d| {
            allowed.push(json!({"allow": true, "type": "b", "major": d.major, "minor": d.minor, "access": if d.read_only { "r" } else { "rw" }}));
            json!({"path": d.path, "type": "b", "major": d.major, "minor": d.minor, "fileMode": d.mode, "uid": d.uid, "gid": d.gid})
        })
        .collect();
    let mut linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        "devices": devices,
        "resources": {"devices": allowed},
        "cgroupsPath": format!("/kubesim/{}", b.id),
    });
    if !privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": b.user.uid, "gid": b.user.gid, "additionalGids": b.user.additional_gids},
            "args": b.argv,
            "env": b.env,
            "cwd": b.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": b.rootfs, "readonly": read_only_root},
        "hostname": b.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

/// Top-level entries of the host's `/` that a host-image container sees (read-only): the
/// programs and their libraries, as a distribution image would have them (`/etc` is an overlay
/// the kubelet mounts, so the container may write there as in an image).
const HOST_ROOT_ENTRIES: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
];

/// A root filesystem for a container of a host image: an empty directory with the host's
/// programs bound read-only (symlinks such as `/bin -> usr/bin` copied as links), an empty
/// `/etc` to mount on and an empty `/tmp`. Gives the bind mounts to add.
pub fn host_skeleton(rootfs: &Path) -> std::io::Result<Vec<Mount>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(rootfs)?;
    let mut mounts = Vec::new();
    for e in HOST_ROOT_ENTRIES {
        let host = Path::new("/").join(e);
        let Ok(md) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if md.file_type().is_symlink() {
            let to = std::fs::read_link(&host)?;
            let link = rootfs.join(e);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(to, link)?;
            }
        } else if md.is_dir() {
            std::fs::create_dir_all(rootfs.join(e))?;
            mounts.push(Mount {
                source: host,
                destination: format!("/{e}"),
                read_only: true,
            });
        }
    }
    for (d, mode) in [
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var/tmp", 0o1777),
    ] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_start_from_the_runtime_default_then_drop_then_add() {
        let known = ALL_CAPABILITIES;
        let c = json!({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE"]}}});
        assert_eq!(
            capabilities(&c, known),
            vec!["CAP_CHOWN", "CAP_DAC_OVERRIDE"]
        );
        let c = json!({"securityContext": {"capabilities": {"drop": ["CHOWN"]}}});
        let caps = capabilities(&c, known);
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(caps.contains(&"CAP_KILL".to_string()));
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
        let c = json!({"securityContext": {"privileged": true, "capabilities": {"drop": ["ALL"]}}});
        assert!(capabilities(&c, known).contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn run_as_non_root_refuses_an_image_that_runs_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let pod = json!({"spec": {"securityContext": {"runAsNonRoot": true}}});
        let c = json!({"name": "c"});
        assert_eq!(
            user(&pod, &c, "", dir.path(), "pod: \"p_ns(u)\", container: c").unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u)\", container: c)"
        );
        assert!(
            user(&pod, &c, "nobody", dir.path(), "x")
                .unwrap_err()
                .contains("non-numeric user (nobody)")
        );
        let u = user(&pod, &c, "65532:65532", dir.path(), "x").unwrap();
        assert_eq!((u.uid, u.gid), (65532, 65532));
        let c = json!({"name": "c", "securityContext": {"runAsUser": 0}});
        assert!(user(&pod, &c, "65532", dir.path(), "x").is_err());
    }

    #[test]
    fn groups_come_from_the_security_context_and_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnonroot:x:65532:65533::/home/nonroot:/sbin/nologin\n",
        )
        .unwrap();
        let pod =
            json!({"spec": {"securityContext": {"fsGroup": 2000, "supplementalGroups": [3000]}}});
        let u = user(&pod, &json!({}), "nonroot", dir.path(), "x").unwrap();
        assert_eq!(
            u,
            User {
                uid: 65532,
                gid: 65533,
                additional_gids: vec![2000, 3000]
            }
        );
        let c = json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1001}});
        let u = user(&pod, &c, "nonroot", dir.path(), "x").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
    }

    #[test]
    fn the_bundle_carries_the_security_context() {
        let pod = json!({"spec": {}});
        let c = json!({"securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}});
        let b = Bundle {
            id: "i".into(),
            pod: &pod,
            container: &c,
            rootfs: "/r".into(),
            argv: vec!["x".into()],
            env: vec![],
            cwd: "/".into(),
            hostname: "h".into(),
            user: User {
                uid: 1,
                gid: 2,
                additional_gids: vec![],
            },
            mounts: vec![],
            devices: vec![Device {
                path: "/dev/xvda".into(),
                major: 7,
                minor: 3,
                uid: 0,
                gid: 6,
                mode: 0o660,
                read_only: true,
            }],
        };
        let cfg = config(&b);
        assert_eq!(cfg["root"]["readonly"], json!(true));
        assert_eq!(cfg["process"]["noNewPrivileges"], json!(true));
        assert_eq!(cfg["process"]["capabilities"]["effective"], json!([]));
        assert_eq!(
            cfg["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "b", "major": 7, "minor": 3, "access": "r"})
        );
        assert!(
            cfg["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        );
    }
}
