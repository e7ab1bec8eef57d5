//! The populator's decision, apart from all I/O: given what was observed about one user PVC and
//! everything around it, the one next step. The controller reads every object first, builds an
//! [`Observed`], asks [`next_step`], takes that step and comes back (straight on, for the
//! set-up steps whose effect [`take_effect`] knows); so a controller restarted at any point
//! picks up where the cluster is, not where its memory was.
//!
//! The lifecycle follows kubernetes-csi/lib-volume-populator, with these differences (see
//! `shared/POPULATOR.md`): the repository settings travel in a per-operation Secret; the PV is
//! kept (`Retain`) while its claim moves and its policy is put back afterwards; a failed copy is
//! retried with a back-off and given up after a limit, and a failure that cannot heal (wrong
//! password, missing snapshot, volume too small) is recorded on the claim at once; the claim
//! is never bound to a volume whose copy did not finish.

/// Finalizer on the user's PVC while it is being populated.
pub const FINALIZER: &str = "volbackup.io/populate";
/// On prime PVCs, pods and Secrets: the user PVC they work for (`namespace/name`).
pub const ANN_FOR: &str = "volbackup.io/populate-for";
/// On prime PVCs, pods and Secrets: the uid of the user PVC they work for.
pub const LABEL_FOR_UID: &str = "volbackup.io/populate-for-uid";
/// On the user PVC: failed copies so far.
pub const ANN_ATTEMPTS: &str = "volbackup.io/populate-attempts";
/// On the user PVC: when the next copy may start (Unix seconds).
pub const ANN_RETRY_AT: &str = "volbackup.io/populate-retry-at";
/// On the user PVC: why the restore was given up (`Reason: message`).
pub const ANN_FAILED: &str = "volbackup.io/populate-failed";
/// On the user PVC: the inputs (Secret and VolumeBackup versions) the failure was seen with;
/// when they change, the restore is tried again.
pub const ANN_FAILED_INPUTS: &str = "volbackup.io/populate-failed-inputs";
/// On the user PVC: the progress of its own restore, JSON `{"bytesDone":N,"bytesTotal":N}`,
/// with `"waiting":"..."` while the mover waits for a repository lock. Several claims restored
/// from one VolumeBackup at once each have their own (the VolumeBackup's `status.progress` and
/// `Restored` condition tell only the latest).
pub const ANN_PROGRESS: &str = "volbackup.io/populate-progress";
/// On the user PVC: when its populate pod last showed progress (Unix seconds): bytes moved,
/// its first report, or a wait for a repository lock. A pod quiet for longer than the stall
/// timeout is given up as stalled.
pub const ANN_PROGRESS_AT: &str = "volbackup.io/populate-progress-at";
/// On the PV while its claim moves: the reclaim policy to put back afterwards.
pub const ANN_SAVED_POLICY: &str = "volbackup.io/saved-reclaim-policy";
/// On the PV: the VolumeBackup it was filled from.
pub const ANN_POPULATED_FROM: &str = "volbackup.io/populated-from";
/// The annotation the scheduler sets on WaitForFirstConsumer claims.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// What the controller saw, reduced to what the decision needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Now, in Unix seconds.
    pub now: i64,
    /// The user's PVC.
    pub claim: Claim,
    /// The VolumeBackup and its repository Secret.
    pub source: Source,
    /// The claim's StorageClass binds only when a pod is scheduled.
    pub wait_for_first_consumer: bool,
    /// PVC' (`prime-<uid>`) in the populator's namespace.
    pub prime: Option<Prime>,
    /// The PV that holds the data: the claim's, else PVC''s.
    pub volume: Option<Volume>,
    /// The populate pod.
    pub pod: Option<PodState>,
    /// The per-operation Secret with the repository settings exists.
    pub secret: bool,
    /// Copies tried before giving up.
    pub max_attempts: u32,
    /// When the populate pod last showed life (Unix seconds): its creation, or its latest
    /// progress ([`ANN_PROGRESS_AT`]), whichever is later.
    pub pod_since: Option<i64>,
    /// Why a populate pod that has not started waits, as the cluster says (the scheduler's
    /// message, a container's waiting reason), for the report.
    pub pod_note: Option<String>,
    /// Seconds a populate pod may go without progress (or without starting) before the
    /// attempt is given up; 0 for never.
    pub stall_timeout: i64,
}

/// The user's PVC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claim {
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// `spec.volumeName`: it is bound (or being bound) to this PV.
    pub volume_name: Option<String>,
    /// Our finalizer is on it.
    pub finalizer: bool,
    /// `volume.kubernetes.io/selected-node`.
    pub selected_node: Option<String>,
    /// The requested size in bytes.
    pub request_bytes: Option<u64>,
    /// Failed copies so far.
    pub attempts: u32,
    /// No new copy before this time (Unix seconds).
    pub retry_at: Option<i64>,
    /// The restore was given up.
    pub failed: Option<Failure>,
}

/// A recorded failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure {
    /// `Reason: message`.
    pub reason: String,
    /// The inputs it was seen with (see [`Source::Ready::inputs`]).
    pub inputs: String,
}

/// The data source.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The VolumeBackup or its Secret is missing or not usable; says which, for an event.
    Missing(String),
    /// Everything needed for a copy is there.
    Ready {
        /// Versions of the Secret and the VolumeBackup: a change may heal a failure.
        inputs: String,
        /// The backup is a block image.
        block: bool,
        /// The image's size, when known.
        image_bytes: Option<u64>,
        /// Why restoring from this source must not be tried (reason, message): the Secret
        /// points at another repository than the one the backup was written to.
        refused: Option<(String, String)>,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Missing(String::new())
    }
}

/// PVC'.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prime {
    /// It has a deletionTimestamp.
    pub deleting: bool,
    /// Its phase is `Lost`: its PV was handed to the user's claim.
    pub lost: bool,
}

/// The PV.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volume {
    /// Its `claimRef` names the user's PVC (uid included).
    pub claimed_by_user: bool,
    /// `spec.persistentVolumeReclaimPolicy`.
    pub reclaim_policy: String,
    /// The policy we saved before setting `Retain`.
    pub saved_policy: Option<String>,
}

/// The populate pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodState {
    /// Not running yet (scheduling, volumes, image).
    Waiting,
    /// Copying.
    Running,
    /// The copy finished.
    Succeeded,
    /// The copy failed.
    Failed(PodFailure),
    /// Being deleted.
    Deleting,
}

/// Why a copy failed, as the mover reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFailure {
    /// One CamelCase word (`WrongPassword`, `RepositoryUnreachable`, ...).
    pub reason: String,
    /// One line for people; never holds a secret.
    pub message: String,
    /// Trying again cannot help.
    pub permanent: bool,
}

/// The next step for one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do until something changes.
    Idle,
    /// The VolumeBackup or its Secret is missing: say so and wait.
    WaitForSource(String),
    /// WaitForFirstConsumer: wait until the scheduler picks a node.
    WaitForNode,
    /// The copy runs: publish its progress and wait.
    WaitForPod,
    /// Wait before the next attempt (until this Unix time).
    WaitForRetry(i64),
    /// The PV's claim moved: wait for the PV controller to bind the user's claim.
    WaitForBind,
    /// Put our finalizer on the user's claim.
    AddFinalizer,
    /// Copy the repository settings into the per-operation Secret.
    CreateSecret,
    /// Create PVC'.
    CreatePrime,
    /// Create the populate pod.
    CreatePod,
    /// The copy failed but may work later: count it, delete the pod, wait.
    RetryPod(PodFailure),
    /// Give up: record why on the claim (it stays Pending).
    Fail(PodFailure),
    /// The inputs changed since the failure: forget it and start again.
    ClearFailure,
    /// Point the PV's `claimRef` at the user's claim. With a policy to save, the same write
    /// saves it and sets `Retain`, so the PV is never claimed by the user's claim while a
    /// deletion of that claim would delete the data.
    Rebind {
        /// The PV's reclaim policy, to put back once the claim is bound.
        save_policy: Option<String>,
    },
    /// Delete the pod, PVC' and the Secret.
    RemoveTemporaries,
    /// Put the PV's saved reclaim policy back.
    RestorePolicy,
    /// Done: remove the finalizer and report success.
    Finish,
    /// The claim is going away or was given up: remove the finalizer.
    Release,
}

/// The next step. Pure: same input, same step.
pub fn next_step(o: &Observed) -> Step {
    let temporaries = o.secret
        || o.prime.as_ref().is_some_and(|p| !p.deleting)
        || o.pod.as_ref().is_some_and(|p| *p != PodState::Deleting);
    let saved_policy = o.volume.as_ref().is_some_and(|v| v.saved_policy.is_some());

    // The user deleted the claim midway: undo everything. The policy goes back first, so a PV
    // whose claim is gone is reclaimed as its class says and not kept forever.
    if o.claim.deleting {
        if saved_policy {
            return Step::RestorePolicy;
        }
        if temporaries {
            return Step::RemoveTemporaries;
        }
        if o.claim.finalizer {
            return Step::Release;
        }
        return Step::Idle;
    }

    // Bound: the populated volume is the claim's. PVC' is `Lost` by now, so deleting it cannot
    // touch the PV; the policy goes back only once PVC' is gone.
    if o.claim.volume_name.is_some() {
        if temporaries {
            return Step::RemoveTemporaries;
        }
        if saved_policy {
            return Step::RestorePolicy;
        }
        if o.claim.finalizer {
            return Step::Finish;
        }
        return Step::Idle;
    }

    // Given up: stay Pending until the Secret or the VolumeBackup changes.
    if let Some(f) = &o.claim.failed {
        if let Source::Ready { inputs, .. } = &o.source
            && *inputs != f.inputs
        {
            return Step::ClearFailure;
        }
        if temporaries {
            return Step::RemoveTemporaries;
        }
        return Step::Idle;
    }

    // The copy is done: hand the PV over to the user's claim.
    let copied = o.pod == Some(PodState::Succeeded) || o.prime.as_ref().is_some_and(|p| p.lost);
    if copied {
        let Some(v) = &o.volume else {
            return Step::WaitForBind;
        };
        if !v.claimed_by_user {
            let keep = v.saved_policy.is_none() && v.reclaim_policy != "Retain";
            return Step::Rebind {
                save_policy: keep.then(|| v.reclaim_policy.clone()),
            };
        }
        return Step::WaitForBind;
    }

    let (block, image_bytes) = match &o.source {
        Source::Missing(what) => return Step::WaitForSource(what.clone()),
        Source::Ready {
            refused: Some((reason, message)),
            ..
        } => {
            return Step::Fail(PodFailure {
                reason: reason.clone(),
                message: message.clone(),
                permanent: true,
            });
        }
        Source::Ready {
            block, image_bytes, ..
        } => (*block, *image_bytes),
    };
    if let (true, Some(need), Some(have)) = (block, image_bytes, o.claim.request_bytes)
        && have < need
    {
        return Step::Fail(PodFailure {
            reason: "VolumeTooSmall".into(),
            message: format!(
                "the PVC requests {have} bytes but the backed-up image is {need} bytes: request at least that much"
            ),
            permanent: true,
        });
    }
    if o.wait_for_first_consumer && o.claim.selected_node.is_none() {
        return Step::WaitForNode;
    }
    if !o.claim.finalizer {
        return Step::AddFinalizer;
    }
    if !o.secret {
        return Step::CreateSecret;
    }
    match &o.prime {
        None => return Step::CreatePrime,
        Some(p) if p.deleting => return Step::Idle,
        Some(_) => {}
    }
    match &o.pod {
        None => match o.claim.retry_at {
            Some(t) if t > o.now => Step::WaitForRetry(t),
            _ => Step::CreatePod,
        },
        Some(pod @ (PodState::Waiting | PodState::Running)) => {
            let quiet = o.pod_since.map(|since| o.now - since);
            match quiet {
                Some(q) if o.stall_timeout > 0 && q >= o.stall_timeout => {
                    let f = stalled(pod, o.stall_timeout, o.pod_note.as_deref());
                    if o.claim.attempts + 1 >= o.max_attempts {
                        Step::Fail(f)
                    } else {
                        Step::RetryPod(f)
                    }
                }
                _ => Step::WaitForPod,
            }
        }
        Some(PodState::Deleting) => Step::Idle,
        Some(PodState::Failed(f)) => {
            if f.permanent || o.claim.attempts + 1 >= o.max_attempts {
                Step::Fail(f.clone())
            } else {
                Step::RetryPod(f.clone())
            }
        }
        Some(PodState::Succeeded) => unreachable!("handled above"),
    }
}

/// The failure of a populate pod that did not start, or made no progress, for `timeout`
/// seconds: worth another attempt (a node may come back, a repository answer again).
fn stalled(pod: &PodState, timeout: i64, note: Option<&str>) -> PodFailure {
    match pod {
        PodState::Waiting => PodFailure {
            reason: "PodNotStarted".into(),
            message: format!(
                "the populate pod did not start within {timeout}s{}: check the nodes' taints and resources (or raise install --stall-timeout)",
                note.map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            permanent: false,
        },
        _ => PodFailure {
            reason: "Stalled".into(),
            message: format!(
                "the populate pod made no progress for {timeout}s: is the repository or the volume stuck? (raise install --stall-timeout if the storage is that slow)"
            ),
            permanent: false,
        },
    }
}

/// Applies the effect of `step`, just taken, to what was observed, when that effect is known
/// in full: the steps that set up a copy only add our finalizer or create our own objects, so
/// the controller can choose the next step at once instead of reading everything again.
/// Returns false for every other step (the next step needs a fresh look). Each step is
/// idempotent, so a crash between two of them changes nothing.
pub fn take_effect(o: &mut Observed, step: &Step) -> bool {
    match step {
        Step::AddFinalizer => o.claim.finalizer = true,
        Step::CreateSecret => o.secret = true,
        Step::CreatePrime => o.prime = Some(Prime::default()),
        _ => return false,
    }
    true
}

/// Seconds to wait after `attempt` failed copies: `base` doubled each time, at most 10 minutes.
pub fn backoff_seconds(base: u64, attempt: u32) -> u64 {
    let factor = 1u64 << attempt.saturating_sub(1).min(20);
    base.max(1).saturating_mul(factor).min(600)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim that has everything it needs and nothing done yet.
    fn fresh() -> Observed {
        Observed {
            now: 1000,
            claim: Claim {
                request_bytes: Some(1 << 30),
                ..Claim::default()
            },
            source: Source::Ready {
                inputs: "s1/b1".into(),
                block: true,
                image_bytes: Some(1 << 30),
                refused: None,
            },
            max_attempts: 3,
            ..Observed::default()
        }
    }

    /// A claim midway: finalizer, Secret, PVC' and a pod.
    fn copying(pod: PodState) -> Observed {
        let mut o = fresh();
        o.claim.finalizer = true;
        o.secret = true;
        o.prime = Some(Prime::default());
        o.pod = Some(pod);
        o
    }

    fn failure(permanent: bool) -> PodFailure {
        PodFailure {
            reason: if permanent {
                "WrongPassword"
            } else {
                "RepositoryUnreachable"
            }
            .into(),
            message: "m".into(),
            permanent,
        }
    }

    #[test]
    fn a_missing_source_is_reported_and_waited_for() {
        let mut o = fresh();
        o.source = Source::Missing("VolumeBackup t/b not found".into());
        assert_eq!(
            next_step(&o),
            Step::WaitForSource("VolumeBackup t/b not found".into())
        );
    }

    #[test]
    fn a_block_image_larger_than_the_claim_fails_before_anything_is_created() {
        let mut o = fresh();
        o.claim.request_bytes = Some(1 << 20);
        match next_step(&o) {
            Step::Fail(f) => {
                assert_eq!(f.reason, "VolumeTooSmall");
                assert!(f.permanent);
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_smaller_claim_is_fine_for_a_file_tree() {
        let mut o = fresh();
        o.claim.request_bytes = Some(1 << 20);
        o.source = Source::Ready {
            inputs: "x".into(),
            block: false,
            image_bytes: Some(1 << 30),
            refused: None,
        };
        assert_eq!(next_step(&o), Step::AddFinalizer);
    }

    #[test]
    fn wait_for_first_consumer_waits_for_the_selected_node() {
        let mut o = fresh();
        o.wait_for_first_consumer = true;
        assert_eq!(next_step(&o), Step::WaitForNode);
        o.claim.selected_node = Some("node-1".into());
        assert_eq!(next_step(&o), Step::AddFinalizer);
    }

    #[test]
    fn the_finalizer_comes_first_then_the_secret_then_the_prime_claim_then_the_pod() {
        let mut o = fresh();
        assert_eq!(next_step(&o), Step::AddFinalizer);
        o.claim.finalizer = true;
        assert_eq!(next_step(&o), Step::CreateSecret);
        o.secret = true;
        assert_eq!(next_step(&o), Step::CreatePrime);
        o.prime = Some(Prime::default());
        assert_eq!(next_step(&o), Step::CreatePod);
    }

    #[test]
    fn a_prime_claim_being_deleted_is_waited_out() {
        let mut o = copying(PodState::Waiting);
        o.pod = None;
        o.prime = Some(Prime {
            deleting: true,
            lost: false,
        });
        assert_eq!(next_step(&o), Step::Idle);
    }

    #[test]
    fn a_running_or_waiting_pod_is_waited_for() {
        assert_eq!(next_step(&copying(PodState::Running)), Step::WaitForPod);
        assert_eq!(next_step(&copying(PodState::Waiting)), Step::WaitForPod);
        assert_eq!(next_step(&copying(PodState::Deleting)), Step::Idle);
    }

    #[test]
    fn a_failed_copy_that_may_heal_is_retried_until_the_limit() {
        let mut o = copying(PodState::Failed(failure(false)));
        assert_eq!(next_step(&o), Step::RetryPod(failure(false)));
        o.claim.attempts = 1;
        assert_eq!(next_step(&o), Step::RetryPod(failure(false)));
        o.claim.attempts = 2;
        assert_eq!(next_step(&o), Step::Fail(failure(false)));
    }

    #[test]
    fn a_pod_that_does_not_start_or_stops_moving_is_retried_then_given_up() {
        let mut o = copying(PodState::Waiting);
        o.stall_timeout = 600;
        o.pod_since = Some(500);
        o.pod_note = Some("0/1 nodes are available: 1 node(s) had untolerated taint".into());
        o.now = 1099;
        assert_eq!(next_step(&o), Step::WaitForPod, "within the timeout");
        o.now = 1100;
        match next_step(&o) {
            Step::RetryPod(f) => {
                assert_eq!(f.reason, "PodNotStarted");
                assert!(!f.permanent);
                assert!(f.message.contains("untolerated taint"), "{}", f.message);
            }
            s => panic!("{s:?}"),
        }
        o.claim.attempts = 2;
        assert!(
            matches!(next_step(&o), Step::Fail(f) if f.reason == "PodNotStarted"),
            "the last attempt is reported"
        );
        let mut o = copying(PodState::Running);
        o.stall_timeout = 600;
        o.pod_since = Some(500);
        o.now = 1100;
        assert!(matches!(next_step(&o), Step::RetryPod(f) if f.reason == "Stalled"));
        o.pod_since = Some(1000);
        assert_eq!(next_step(&o), Step::WaitForPod, "progress 100 s ago");
        o.stall_timeout = 0;
        o.pod_since = Some(0);
        assert_eq!(next_step(&o), Step::WaitForPod, "no timeout");
    }

    #[test]
    fn a_failure_that_cannot_heal_is_given_up_at_once() {
        let o = copying(PodState::Failed(failure(true)));
        assert_eq!(next_step(&o), Step::Fail(failure(true)));
    }

    #[test]
    fn after_a_failed_attempt_the_next_pod_waits_for_the_back_off() {
        let mut o = copying(PodState::Running);
        o.pod = None;
        o.claim.attempts = 1;
        o.claim.retry_at = Some(1010);
        assert_eq!(next_step(&o), Step::WaitForRetry(1010));
        o.now = 1010;
        assert_eq!(next_step(&o), Step::CreatePod);
    }

    #[test]
    fn a_given_up_claim_is_cleaned_and_stays_pending() {
        let mut o = copying(PodState::Failed(failure(true)));
        o.claim.failed = Some(Failure {
            reason: "WrongPassword: m".into(),
            inputs: "s1/b1".into(),
        });
        assert_eq!(next_step(&o), Step::RemoveTemporaries);
        o.pod = None;
        o.prime = None;
        o.secret = false;
        assert_eq!(next_step(&o), Step::Idle);
    }

    #[test]
    fn the_set_up_steps_follow_each_other_without_a_fresh_look() {
        let mut o = fresh();
        let mut taken = Vec::new();
        loop {
            let step = next_step(&o);
            taken.push(step.clone());
            if !take_effect(&mut o, &step) {
                break;
            }
        }
        assert_eq!(
            taken,
            [
                Step::AddFinalizer,
                Step::CreateSecret,
                Step::CreatePrime,
                Step::CreatePod
            ]
        );
        for step in [
            Step::CreatePod,
            Step::Rebind { save_policy: None },
            Step::RemoveTemporaries,
            Step::Finish,
            Step::WaitForPod,
        ] {
            let before = o.clone();
            assert!(!take_effect(&mut o, &step), "{step:?}");
            assert_eq!(o, before, "{step:?} must not change what was seen");
        }
    }

    #[test]
    fn a_given_up_claim_is_tried_again_when_its_inputs_change() {
        let mut o = fresh();
        o.claim.finalizer = true;
        o.claim.failed = Some(Failure {
            reason: "WrongPassword: m".into(),
            inputs: "s0/b1".into(),
        });
        assert_eq!(next_step(&o), Step::ClearFailure);
    }

    #[test]
    fn a_finished_copy_keeps_the_volume_and_moves_its_claim_in_one_step_then_waits_for_the_bind() {
        let mut o = copying(PodState::Succeeded);
        assert_eq!(next_step(&o), Step::WaitForBind, "no PV seen yet");
        o.volume = Some(Volume {
            claimed_by_user: false,
            reclaim_policy: "Delete".into(),
            saved_policy: None,
        });
        assert_eq!(
            next_step(&o),
            Step::Rebind {
                save_policy: Some("Delete".into())
            }
        );
        o.volume = Some(Volume {
            claimed_by_user: true,
            reclaim_policy: "Retain".into(),
            saved_policy: Some("Delete".into()),
        });
        assert_eq!(next_step(&o), Step::WaitForBind);
    }

    #[test]
    fn a_policy_saved_before_a_restart_is_not_saved_again() {
        let mut o = copying(PodState::Succeeded);
        o.volume = Some(Volume {
            claimed_by_user: false,
            reclaim_policy: "Retain".into(),
            saved_policy: Some("Delete".into()),
        });
        assert_eq!(next_step(&o), Step::Rebind { save_policy: None });
    }

    #[test]
    fn a_volume_that_is_retained_anyway_is_not_touched_before_the_rebind() {
        let mut o = copying(PodState::Succeeded);
        o.volume = Some(Volume {
            claimed_by_user: false,
            reclaim_policy: "Retain".into(),
            saved_policy: None,
        });
        assert_eq!(next_step(&o), Step::Rebind { save_policy: None });
    }

    #[test]
    fn a_lost_prime_claim_means_the_copy_was_done_even_without_the_pod() {
        let mut o = copying(PodState::Succeeded);
        o.pod = None;
        o.prime = Some(Prime {
            deleting: false,
            lost: true,
        });
        o.volume = Some(Volume {
            claimed_by_user: true,
            reclaim_policy: "Retain".into(),
            saved_policy: Some("Delete".into()),
        });
        assert_eq!(next_step(&o), Step::WaitForBind);
    }

    #[test]
    fn once_bound_the_temporaries_go_then_the_policy_comes_back_then_the_finalizer() {
        let mut o = copying(PodState::Succeeded);
        o.claim.volume_name = Some("pv-1".into());
        o.volume = Some(Volume {
            claimed_by_user: true,
            reclaim_policy: "Retain".into(),
            saved_policy: Some("Delete".into()),
        });
        assert_eq!(next_step(&o), Step::RemoveTemporaries);
        o.pod = None;
        o.prime = None;
        o.secret = false;
        assert_eq!(next_step(&o), Step::RestorePolicy);
        o.volume.as_mut().unwrap().saved_policy = None;
        assert_eq!(next_step(&o), Step::Finish);
        o.claim.finalizer = false;
        assert_eq!(next_step(&o), Step::Idle);
    }

    #[test]
    fn a_claim_deleted_midway_gets_its_policy_back_then_loses_the_temporaries_then_the_finalizer() {
        let mut o = copying(PodState::Running);
        o.claim.deleting = true;
        o.volume = Some(Volume {
            claimed_by_user: false,
            reclaim_policy: "Retain".into(),
            saved_policy: Some("Delete".into()),
        });
        assert_eq!(next_step(&o), Step::RestorePolicy);
        o.volume.as_mut().unwrap().saved_policy = None;
        assert_eq!(next_step(&o), Step::RemoveTemporaries);
        o.pod = None;
        o.prime = None;
        o.secret = false;
        assert_eq!(next_step(&o), Step::Release);
        o.claim.finalizer = false;
        assert_eq!(next_step(&o), Step::Idle);
    }

    #[test]
    fn a_claim_bound_by_someone_else_without_our_finalizer_is_left_alone() {
        let mut o = fresh();
        o.claim.volume_name = Some("pv-x".into());
        assert_eq!(next_step(&o), Step::Idle);
    }

    #[test]
    fn back_off_doubles_and_stops_at_ten_minutes() {
        assert_eq!(backoff_seconds(5, 1), 5);
        assert_eq!(backoff_seconds(5, 2), 10);
        assert_eq!(backoff_seconds(5, 3), 20);
        assert_eq!(backoff_seconds(5, 30), 600);
        assert_eq!(backoff_seconds(0, 1), 1);
    }
}
