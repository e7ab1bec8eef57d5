//! Reading a claim's world: every object a restore involves is read at once
//! ([`observe`]), then turned into what [`state::next_step`] decides on by a pure function
//! ([`observed_from`]), which the tests drive with objects made in memory.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::Api;

use super::objects::{populate_name, prime_name};
use super::{Config, Context, Error};
use crate::api::{self, Phase, VolumeBackup};
use crate::contract::{MoverLine, RepositorySettings};
use crate::mover;
use crate::quantity;
use crate::state::{self, Claim, Failure, Observed, PodFailure, PodState, Prime, Source};

/// Everything read for one claim, as the API server returned it.
#[derive(Debug, Clone)]
pub struct Reads {
    /// The user's claim.
    pub pvc: PersistentVolumeClaim,
    /// The VolumeBackup its `dataSourceRef` names.
    pub backup_name: String,
    /// That VolumeBackup.
    pub backup: Option<VolumeBackup>,
    /// The repository Secret the VolumeBackup names.
    pub secret: Option<Secret>,
    /// The claim's StorageClass binds on the first consumer.
    pub wait_for_first_consumer: bool,
    /// PVC'.
    pub prime: Option<PersistentVolumeClaim>,
    /// The PV of PVC' or of the claim (not yet checked to be ours).
    pub pv: Option<PersistentVolume>,
    /// The populate pod.
    pub pod: Option<Pod>,
    /// The populate pod's Secret exists.
    pub pod_secret: bool,
}

/// Everything read for one claim, with the objects the steps need.
pub(super) struct Seen {
    pub pvc: PersistentVolumeClaim,
    pub backup: Option<VolumeBackup>,
    pub secret: Option<Secret>,
    pub prime: Option<PersistentVolumeClaim>,
    /// The PV, only when it is this restore's ([`pv_is_ours`]).
    pub pv: Option<PersistentVolume>,
    pub pod: Option<Pod>,
    pub observed: Observed,
}

impl Seen {
    /// The PV, which the steps after the copy need.
    pub fn pv(&self) -> Result<&PersistentVolume, Error> {
        self.pv
            .as_ref()
            .ok_or_else(|| Error::Invalid("the PV vanished".into()))
    }
}

pub(super) fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether a PVC asks to be filled from a VolumeBackup.
pub fn wants_us(pvc: &PersistentVolumeClaim) -> Option<String> {
    let r = pvc.spec.as_ref()?.data_source_ref.as_ref()?;
    (r.api_group.as_deref() == Some(crate::api::GROUP)
        && r.kind == "VolumeBackup"
        && r.namespace
            .as_deref()
            .is_none_or(|n| Some(n) == pvc.namespace().as_deref()))
    .then(|| r.name.clone())
}

/// Reads every object of one claim's restore; `None` when the claim is gone or not ours.
pub(super) async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Option<Seen>, Error> {
    let Some(reads) = read(ctx, ns, name).await? else {
        return Ok(None);
    };
    let observed = observed_from(&reads, &ctx.config, chrono::Utc::now().timestamp());
    let own = &ctx.config.namespace;
    let uid = reads.pvc.uid().unwrap_or_default();
    Ok(Some(Seen {
        pv: reads.pv.filter(|pv| pv_is_ours(pv, own, &uid)),
        pvc: reads.pvc,
        backup: reads.backup,
        secret: reads.secret,
        prime: reads.prime,
        pod: reads.pod,
        observed,
    }))
}

async fn read(ctx: &Context, ns: &str, name: &str) -> Result<Option<Reads>, Error> {
    let c = &ctx.client;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let Some(pvc) = pvcs.get_opt(name).await? else {
        return Ok(None);
    };
    let Some(backup_name) = wants_us(&pvc) else {
        return Ok(None);
    };
    let uid = pvc.uid().unwrap_or_default();
    let own = &ctx.config.namespace;
    let spec = pvc.spec.clone().unwrap_or_default();
    let claim_pv = spec.volume_name.clone().filter(|v| !v.is_empty());
    // The reads do not depend on each other (but for the Secret on its VolumeBackup, and the
    // PV on PVC' when the claim names none): made at once, one reconcile costs about one round
    // trip to the API server instead of eight in a row.
    let source = async {
        let backup = Api::<VolumeBackup>::namespaced(c.clone(), ns)
            .get_opt(&backup_name)
            .await?;
        let secret = match &backup {
            Some(b) => {
                Api::<Secret>::namespaced(c.clone(), ns)
                    .get_opt(&b.spec.repository.secret_ref.name)
                    .await?
            }
            None => None,
        };
        Ok::<_, kube::Error>((backup, secret))
    };
    let wffc = async {
        Ok::<_, kube::Error>(match spec.storage_class_name.as_deref() {
            Some(sc) => Api::<StorageClass>::all(c.clone())
                .get_opt(sc)
                .await?
                .and_then(|s| s.volume_binding_mode)
                .is_some_and(|m| m == "WaitForFirstConsumer"),
            None => false,
        })
    };
    let own_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), own);
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let prime_and_pv = async {
        let prime = own_pvcs.get_opt(&prime_name(&uid)).await?;
        let pv_name = claim_pv.clone().or_else(|| {
            prime
                .as_ref()
                .and_then(|p| p.spec.as_ref()?.volume_name.clone())
                .filter(|v| !v.is_empty())
        });
        let pv = match &pv_name {
            Some(n) => pvs.get_opt(n).await?,
            None => None,
        };
        Ok::<_, kube::Error>((prime, pv))
    };
    let populate = populate_name(&uid);
    let own_pods: Api<Pod> = Api::namespaced(c.clone(), own);
    let own_secrets: Api<Secret> = Api::namespaced(c.clone(), own);
    let pod = own_pods.get_opt(&populate);
    let pod_secret = own_secrets.get_opt(&populate);
    let ((backup, secret), wait_for_first_consumer, (prime, pv), pod, pod_secret) =
        futures::try_join!(source, wffc, prime_and_pv, pod, pod_secret)?;
    Ok(Some(Reads {
        pvc,
        backup_name,
        backup,
        secret,
        wait_for_first_consumer,
        prime,
        pv,
        pod,
        pod_secret: pod_secret.is_some(),
    }))
}

/// What the state machine decides on, from what was read (pure; unit-tested).
pub fn observed_from(reads: &Reads, config: &Config, now: i64) -> Observed {
    let uid = reads.pvc.uid().unwrap_or_default();
    let meta = &reads.pvc.metadata;
    // Only a PV this restore binds is ever patched: the prime claim's, or the user's once we
    // moved it there. A PV the user's claim merely names (`spec.volumeName`) is none of ours.
    let volume = reads
        .pv
        .as_ref()
        .filter(|pv| pv_is_ours(pv, &config.namespace, &uid))
        .map(|pv| {
            let spec = pv.spec.clone().unwrap_or_default();
            state::Volume {
                claimed_by_user: spec
                    .claim_ref
                    .as_ref()
                    .is_some_and(|r| r.uid.as_deref() == Some(uid.as_str())),
                reclaim_policy: spec
                    .persistent_volume_reclaim_policy
                    .unwrap_or_else(|| "Delete".into()),
                saved_policy: annotation(&pv.metadata, state::ANN_SAVED_POLICY).map(str::to_string),
            }
        });
    let pod = reads.pod.as_ref();
    Observed {
        now,
        claim: claim_from(&reads.pvc),
        source: source_from(reads, config),
        wait_for_first_consumer: reads.wait_for_first_consumer,
        prime: reads.prime.as_ref().map(|p| Prime {
            deleting: p.metadata.deletion_timestamp.is_some(),
            lost: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost"),
        }),
        volume,
        pod: pod.map(pod_state),
        secret: reads.pod_secret,
        max_attempts: config.max_attempts,
        pod_since: pod.and_then(|p| {
            let created = p.metadata.creation_timestamp.as_ref()?.0.as_second();
            let progress = annotation(meta, state::ANN_PROGRESS_AT).and_then(|a| a.parse().ok());
            Some(progress.map_or(created, |t: i64| t.max(created)))
        }),
        pod_note: pod.and_then(pending_note),
        stall_timeout: config.stall_timeout.as_secs() as i64,
    }
}

/// The user's claim, as its spec and our annotations on it say.
fn claim_from(pvc: &PersistentVolumeClaim) -> Claim {
    let meta = &pvc.metadata;
    let spec = pvc.spec.clone().unwrap_or_default();
    let failed = annotation(meta, state::ANN_FAILED).map(|r| Failure {
        reason: r.to_string(),
        inputs: annotation(meta, state::ANN_FAILED_INPUTS)
            .unwrap_or("")
            .to_string(),
    });
    Claim {
        deleting: meta.deletion_timestamp.is_some(),
        volume_name: spec.volume_name.clone().filter(|v| !v.is_empty()),
        finalizer: meta
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == state::FINALIZER)),
        selected_node: annotation(meta, state::SELECTED_NODE).map(str::to_string),
        request_bytes: spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity::parse_bytes(&q.0)),
        attempts: annotation(meta, state::ANN_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        retry_at: annotation(meta, state::ANN_RETRY_AT).and_then(|a| a.parse().ok()),
        failed,
    }
}

/// The data source: missing, refused, or ready.
fn source_from(reads: &Reads, config: &Config) -> Source {
    let ns = reads.pvc.namespace().unwrap_or_default();
    let backup_name = &reads.backup_name;
    match (&reads.backup, &reads.secret) {
        (None, _) => Source::Missing(format!("VolumeBackup {ns}/{backup_name} not found")),
        (Some(b), None) => Source::Missing(format!(
            "Secret {ns}/{} named by VolumeBackup {backup_name} not found",
            b.spec.repository.secret_ref.name
        )),
        // A failed backup never becomes restorable: refused at once, not waited for.
        (Some(b), Some(_)) if b.phase() == Some(Phase::Failed) => Source::Ready {
            inputs: String::new(),
            block: false,
            image_bytes: None,
            refused: Some((
                "BackupFailed".to_string(),
                format!(
                    "VolumeBackup {ns}/{backup_name} failed ({}), so it holds nothing to restore: name a Completed VolumeBackup (kubectl volbackup list)",
                    b.condition(api::BACKED_UP)
                        .map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_else(|| "no reason recorded".into())
                ),
            )),
        },
        (Some(b), Some(_)) if b.phase() != Some(Phase::Completed) || b.spec.snapshot.is_none() => {
            Source::Missing(format!(
                "VolumeBackup {ns}/{backup_name} is not Completed yet"
            ))
        }
        (Some(b), Some(s)) => {
            let status = b.status.clone().unwrap_or_default();
            let block = b.spec.path.is_some()
                || status
                    .volume
                    .as_ref()
                    .is_some_and(|v| v.volume_mode == "Block");
            Source::Ready {
                inputs: format!(
                    "{}/{}",
                    s.resource_version().unwrap_or_default(),
                    b.metadata.generation.unwrap_or(0)
                ),
                block,
                image_bytes: block.then_some(status.bytes_total).flatten(),
                refused: refusal(&ns, b, s, config),
            }
        }
    }
}

/// Why a Completed backup must not be restored through this Secret (reason, message), if it
/// must not.
fn refusal(ns: &str, b: &VolumeBackup, s: &Secret, config: &Config) -> Option<(String, String)> {
    let backup_name = b.name_any();
    let secret_name = &b.spec.repository.secret_ref.name;
    // The record names the repository it was written to: a Secret pointing elsewhere
    // (edited, or replaced by a backup to another repository) would make the restore
    // look for the snapshot in the wrong place and fail as if it were gone.
    let have = RepositorySettings::location_of(
        s.data.as_ref().unwrap_or(&Default::default()),
        s.string_data.as_ref().unwrap_or(&Default::default()),
    );
    let marked = s.labels().get(mover::REPOSITORY_LABEL).map(String::as_str) == Some("true")
        || s.labels().get(mover::LEGACY_MARK.0).map(String::as_str) == Some(mover::LEGACY_MARK.1);
    let node_dir = have
        .as_deref()
        .and_then(mover::local_repository)
        .filter(|d| !mover::node_repository_allowed(d, &config.node_repositories));
    match (&b.spec.repository.location, &have) {
        // The populator may read every Secret: carrying one the plugin did not write
        // into a pod would let whoever may create a VolumeBackup, but not read Secrets,
        // use any Secret of their namespace.
        _ if !marked => Some((
            "SecretNotMarked".to_string(),
            format!(
                "Secret {ns}/{secret_name} is not marked as a repository Secret (label {}=true, which create and restore set): label it if it holds repository settings, or name a repository Secret in the VolumeBackup",
                mover::REPOSITORY_LABEL
            ),
        )),
        (Some(want), Some(have)) if want != have => Some((
            "RepositoryMismatch".to_string(),
            format!(
                "Secret {ns}/{secret_name} points at {}, but VolumeBackup {backup_name} was written to {}: point the Secret back, or name the Secret of that repository in the VolumeBackup",
                redact_location(have),
                redact_location(want)
            ),
        )),
        // A pod that runs as root would mount this directory of the node.
        _ if node_dir.is_some() => Some((
            "NodeRepositoryNotAllowed".to_string(),
            format!(
                "Secret {ns}/{secret_name} names the node directory {} as its repository, which the administrator has not allowed for restores{}: use an S3 repository, or ask them to run kubectl volbackup install --allow-node-repository DIR",
                node_dir.as_deref().unwrap_or_default(),
                if config.node_repositories.is_empty() {
                    String::new()
                } else {
                    format!(" (allowed: {})", config.node_repositories.join(", "))
                }
            ),
        )),
        _ => None,
    }
}

/// A repository location for a message: user information in a URL (`//user:secret@host`)
/// becomes `//***@host`.
fn redact_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains('/') => format!("{scheme}://***@{host}"),
            _ => location.to_string(),
        },
        None => location.to_string(),
    }
}

/// Whether `pv` is the volume of the restore for the claim with this uid: claimed by its prime
/// claim (`own/prime-<uid>`), or by the claim itself after our rebind (which wrote
/// [`state::ANN_POPULATED_FROM`]). The populator patches no other PV.
pub fn pv_is_ours(pv: &PersistentVolume, own: &str, uid: &str) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let by_prime =
        r.namespace.as_deref() == Some(own) && r.name.as_deref() == Some(prime_name(uid).as_str());
    let by_claim = !uid.is_empty()
        && r.uid.as_deref() == Some(uid)
        && annotation(&pv.metadata, state::ANN_POPULATED_FROM).is_some();
    by_prime || by_claim
}

/// Reads the mover's error line from a failed pod's termination message (the mover writes
/// the line to its termination-message file; without it the kubelet copies the end of the log
/// there, `FallbackToLogsOnError`).
pub fn pod_failure(message: &str, exit_code: Option<i32>) -> PodFailure {
    for line in message.lines().rev() {
        if let Some(MoverLine::Error(e)) = MoverLine::parse(line) {
            return PodFailure {
                reason: e.reason.to_string(),
                message: e.message,
                permanent: !e.retryable,
            };
        }
    }
    let last = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('{'))
        .map(|l| l.trim_start_matches("error: ").to_string());
    PodFailure {
        reason: "RestoreFailed".into(),
        message: last.unwrap_or_else(|| match exit_code {
            Some(c) => format!("the populate pod exited with code {c}"),
            None => "the populate pod failed".into(),
        }),
        permanent: false,
    }
}

fn pod_state(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Deleting;
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") if status.and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") => {
            PodState::Failed(PodFailure {
                reason: "DeadlineExceeded".into(),
                message: format!(
                    "the populate pod ran longer than its deadline of {}s (install --restore-deadline) and was stopped",
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.active_deadline_seconds)
                        .unwrap_or(0)
                ),
                permanent: false,
            })
        }
        Some("Failed") => {
            let terminated = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            let message = terminated
                .and_then(|t| t.message.clone())
                .or_else(|| status.and_then(|s| s.message.clone()))
                .unwrap_or_default();
            PodState::Failed(pod_failure(&message, terminated.map(|t| t.exit_code)))
        }
        Some("Running") => PodState::Running,
        _ => {
            // An image that cannot be pulled never heals by waiting.
            let waiting = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref());
            match waiting.and_then(|w| w.reason.as_deref()) {
                Some(r @ ("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")) => {
                    PodState::Failed(PodFailure {
                        reason: "ImagePullFailed".into(),
                        message: format!(
                            "{r}: {}",
                            waiting.and_then(|w| w.message.as_deref()).unwrap_or("")
                        ),
                        permanent: false,
                    })
                }
                _ => PodState::Waiting,
            }
        }
    }
}

/// Why a pod that has not started waits: the scheduler's message, else its container's
/// waiting reason.
fn pending_note(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone());
    unscheduled.or_else(|| {
        let w = status
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?;
        Some(match &w.message {
            Some(m) => format!("{}: {m}", w.reason.as_deref().unwrap_or("waiting")),
            None => w.reason.clone()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Secret};
    use serde_json::{Value, json};

    use super::super::fixtures::{backup, claim, config};
    use super::*;
    use crate::api::VolumeBackupStatus;

    #[test]
    fn only_claims_naming_a_volume_backup_are_ours() {
        assert_eq!(wants_us(&claim("Block")).as_deref(), Some("b1"));
        let mut other = claim("Block");
        other
            .spec
            .as_mut()
            .unwrap()
            .data_source_ref
            .as_mut()
            .unwrap()
            .kind = "VolumeSnapshot".into();
        assert_eq!(wants_us(&other), None);
        let mut elsewhere = claim("Block");
        elsewhere
            .spec
            .as_mut()
            .unwrap()
            .data_source_ref
            .as_mut()
            .unwrap()
            .namespace = Some("other".into());
        assert_eq!(
            wants_us(&elsewhere),
            None,
            "cross-namespace references are not ours"
        );
    }

    #[test]
    fn a_pod_stopped_at_its_deadline_is_a_failed_attempt_that_says_so() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "populate-u-1"},
            "spec": {"activeDeadlineSeconds": 86400, "containers": []},
            "status": {"phase": "Failed", "reason": "DeadlineExceeded",
                       "message": "Pod was active on the node longer than the specified deadline"},
        }))
        .unwrap();
        match pod_state(&pod) {
            PodState::Failed(f) => {
                assert_eq!(f.reason, "DeadlineExceeded");
                assert!(f.message.contains("86400s"), "{}", f.message);
                assert!(!f.permanent);
            }
            s => panic!("{s:?}"),
        }
        let unscheduled: Pod = serde_json::from_value(json!({
            "metadata": {"name": "populate-u-1"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/1 nodes are available: 1 node(s) had untolerated taint {a: b}"}]},
        }))
        .unwrap();
        assert_eq!(pod_state(&unscheduled), PodState::Waiting);
        assert!(
            pending_note(&unscheduled)
                .unwrap()
                .contains("untolerated taint")
        );
    }

    #[test]
    fn only_the_volume_of_this_restore_is_ours_to_patch() {
        let pv = |claim: Value, annotations: Value| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "pv-1", "annotations": annotations},
                "spec": {"claimRef": claim},
            }))
            .unwrap()
        };
        let prime = json!({"namespace": "volbackup-system", "name": "prime-u-1", "uid": "p-9"});
        let user = json!({"namespace": "app", "name": "data", "uid": "u-1"});
        let ours = json!({state::ANN_POPULATED_FROM: "app/b1"});
        assert!(pv_is_ours(
            &pv(prime.clone(), json!({})),
            "volbackup-system",
            "u-1"
        ));
        assert!(pv_is_ours(
            &pv(user.clone(), ours.clone()),
            "volbackup-system",
            "u-1"
        ));
        // A PV the user's claim names but that we never populated: someone else's data.
        assert!(!pv_is_ours(&pv(user, json!({})), "volbackup-system", "u-1"));
        assert!(!pv_is_ours(
            &pv(prime, json!({})),
            "volbackup-system",
            "u-2"
        ));
        let other = json!({"namespace": "db", "name": "main", "uid": "x-1"});
        assert!(!pv_is_ours(&pv(other, ours), "volbackup-system", "u-1"));
        assert!(!pv_is_ours(
            &pv(Value::Null, json!({})),
            "volbackup-system",
            "u-1"
        ));
    }

    #[test]
    fn locations_in_messages_never_carry_credentials() {
        assert_eq!(
            redact_location("s3:https://ak:sk@s3.example.com/b/p"),
            "s3:https://***@s3.example.com/b/p"
        );
        assert_eq!(
            redact_location("s3:https://s3.example.com/b/p@x"),
            "s3:https://s3.example.com/b/p@x"
        );
        assert_eq!(redact_location("/srv/repo"), "/srv/repo");
    }

    #[test]
    fn the_movers_error_line_says_what_failed_and_whether_to_retry() {
        let msg = "{\"type\":\"progress\",\"bytes_done\":1}\n{\"type\":\"error\",\"reason\":\"WrongPassword\",\"retryable\":false,\"message\":\"wrong password\"}\nerror: wrong password\n";
        let f = pod_failure(msg, Some(1));
        assert_eq!(f.reason, "WrongPassword");
        assert_eq!(f.message, "wrong password");
        assert!(f.permanent);
        let f = pod_failure("something broke\nerror: disk on fire\n", Some(1));
        assert_eq!(f.reason, "RestoreFailed");
        assert_eq!(f.message, "disk on fire");
        assert!(!f.permanent);
        let f = pod_failure("", Some(137));
        assert!(f.message.contains("137"), "{}", f.message);
    }

    /// What a first reconcile reads for the fixture claim: a Completed VolumeBackup, its
    /// marked Secret, nothing made yet.
    fn first_reads() -> Reads {
        let mut b = backup(Some("/data.img"));
        b.metadata.generation = Some(2);
        b.status = Some(VolumeBackupStatus {
            phase: Some(Phase::Completed),
            bytes_total: Some(2 << 30),
            ..Default::default()
        });
        Reads {
            pvc: claim("Block"),
            backup_name: "b1".into(),
            backup: Some(b),
            secret: Some(repository_secret(true, "s3:https://h/b")),
            wait_for_first_consumer: true,
            prime: None,
            pv: None,
            pod: None,
            pod_secret: false,
        }
    }

    fn repository_secret(marked: bool, location: &str) -> Secret {
        let labels = if marked {
            json!({mover::REPOSITORY_LABEL: "true"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": "repo", "namespace": "app", "resourceVersion": "7",
                         "labels": labels},
            "stringData": {"VOLBACKUP_REPOSITORY": location},
        }))
        .unwrap()
    }

    fn refused(reads: &Reads, cfg: &Config) -> Option<String> {
        match observed_from(reads, cfg, 1000).source {
            Source::Ready { refused, .. } => refused.map(|(reason, _)| reason),
            Source::Missing(m) => panic!("missing: {m}"),
        }
    }

    #[test]
    fn a_first_look_sees_a_ready_block_source_and_nothing_made_yet() {
        let o = observed_from(&first_reads(), &config(), 1000);
        assert_eq!(o.now, 1000);
        assert_eq!(
            o.source,
            Source::Ready {
                inputs: "7/2".into(),
                block: true,
                image_bytes: Some(2 << 30),
                refused: None,
            }
        );
        assert_eq!(o.claim.request_bytes, Some(2 << 30));
        assert_eq!(o.claim.selected_node.as_deref(), Some("node-2"));
        assert_eq!((o.claim.attempts, o.claim.retry_at), (0, None));
        assert!(!o.claim.finalizer && !o.claim.deleting && o.claim.failed.is_none());
        assert!(o.wait_for_first_consumer);
        assert!(o.prime.is_none() && o.volume.is_none() && o.pod.is_none() && !o.secret);
        assert_eq!((o.max_attempts, o.stall_timeout), (3, 600));
    }

    #[test]
    fn a_source_is_missing_until_its_backup_is_completed_and_a_failed_one_is_refused() {
        let mut reads = first_reads();
        reads.secret = None;
        assert!(matches!(
            observed_from(&reads, &config(), 0).source,
            Source::Missing(m) if m.contains("Secret app/repo")
        ));
        let mut reads = first_reads();
        reads
            .backup
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .phase = Some(Phase::InProgress);
        assert!(matches!(
            observed_from(&reads, &config(), 0).source,
            Source::Missing(m) if m.contains("not Completed yet")
        ));
        reads
            .backup
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .phase = Some(Phase::Failed);
        assert_eq!(refused(&reads, &config()).as_deref(), Some("BackupFailed"));
        reads.backup = None;
        assert!(matches!(
            observed_from(&reads, &config(), 0).source,
            Source::Missing(m) if m == "VolumeBackup app/b1 not found"
        ));
    }

    #[test]
    fn an_unmarked_secret_another_repository_or_a_node_directory_is_refused() {
        let mut reads = first_reads();
        reads.secret = Some(repository_secret(false, "s3:https://h/b"));
        assert_eq!(
            refused(&reads, &config()).as_deref(),
            Some("SecretNotMarked")
        );
        let mut reads = first_reads();
        reads.backup.as_mut().unwrap().spec.repository.location =
            Some("s3:https://ak:sk@h/other".into());
        let o = observed_from(&reads, &config(), 0);
        match o.source {
            Source::Ready {
                refused: Some((reason, message)),
                ..
            } => {
                assert_eq!(reason, "RepositoryMismatch");
                assert!(!message.contains("ak:sk"), "{message}");
            }
            s => panic!("{s:?}"),
        }
        let mut reads = first_reads();
        reads.secret = Some(repository_secret(true, "/srv/backups"));
        assert_eq!(
            refused(&reads, &config()).as_deref(),
            Some("NodeRepositoryNotAllowed")
        );
        let mut allowed = config();
        allowed.node_repositories = vec!["/srv".into()];
        assert_eq!(refused(&reads, &allowed), None);
    }

    #[test]
    fn the_claims_annotations_carry_attempts_failures_and_the_last_progress() {
        let mut reads = first_reads();
        reads.pvc.metadata.annotations = Some(
            [
                (state::ANN_ATTEMPTS, "2"),
                (state::ANN_RETRY_AT, "1200"),
                (state::ANN_FAILED, "WrongPassword: wrong password"),
                (state::ANN_FAILED_INPUTS, "7/2"),
                (state::ANN_PROGRESS_AT, "1700000100"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        reads.pvc.metadata.finalizers = Some(vec![state::FINALIZER.to_string()]);
        reads.pod = Some(
            serde_json::from_value(json!({
                "metadata": {"name": "populate-u-1", "creationTimestamp": "2023-11-14T22:13:20Z"},
                "status": {"phase": "Running"},
            }))
            .unwrap(),
        );
        reads.pod_secret = true;
        let o = observed_from(&reads, &config(), 0);
        assert_eq!((o.claim.attempts, o.claim.retry_at), (2, Some(1200)));
        assert_eq!(
            o.claim.failed,
            Some(Failure {
                reason: "WrongPassword: wrong password".into(),
                inputs: "7/2".into()
            })
        );
        assert!(o.claim.finalizer && o.secret);
        assert_eq!(o.pod, Some(PodState::Running));
        // The pod was made at 1700000000; its last progress, later, counts.
        assert_eq!(o.pod_since, Some(1_700_000_100));
        assert_eq!(o.claim.selected_node, None);
    }

    #[test]
    fn only_a_volume_this_restore_binds_is_observed() {
        let pv = |claim_ref: serde_json::Value| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "pv-1", "annotations": {state::ANN_SAVED_POLICY: "Delete"}},
                "spec": {"claimRef": claim_ref, "persistentVolumeReclaimPolicy": "Retain"},
            }))
            .unwrap()
        };
        let mut reads = first_reads();
        reads.pv = Some(pv(
            json!({"namespace": "app", "name": "data", "uid": "u-1"}),
        ));
        assert!(observed_from(&reads, &config(), 0).volume.is_none());
        reads.pv = Some(pv(
            json!({"namespace": "volbackup-system", "name": "prime-u-1", "uid": "p-1"}),
        ));
        assert_eq!(
            observed_from(&reads, &config(), 0).volume,
            Some(state::Volume {
                claimed_by_user: false,
                reclaim_policy: "Retain".into(),
                saved_policy: Some("Delete".into()),
            })
        );
    }
}
