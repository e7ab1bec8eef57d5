//! The mover contract: what `create` and the populator hand a mover pod (its arguments, the
//! repository settings of its Secret) and what the mover writes back (its `--json` lines, the
//! per-claim progress the populator derives from them). Both sides use these types, so a line
//! or a flag is written and read in one place only.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mover::Direction;

/// One line of `mover backup --json` or `mover restore --json` on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MoverLine {
    /// Bytes moved so far, about once a second.
    Progress(ProgressLine),
    /// The mover waits for a lock another process holds (a prune): alive, not stalled.
    Waiting {
        /// What it waits for, for people.
        message: String,
    },
    /// The last line of a mover that succeeded.
    Summary(Summary),
    /// One pack read of an image restore's plan (`mover restore --dry-run --json`).
    Read(PlannedRead),
    /// The last line of a mover that failed; also its termination message.
    Error(ErrorLine),
}

/// A [`MoverLine::Progress`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    /// `backup` or `restore`.
    #[serde(default)]
    pub operation: String,
    /// Bytes read or written so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// The size, once known (`null` before).
    #[serde(default)]
    pub bytes_total: Option<u64>,
    /// Seconds since the mover started, to a tenth.
    #[serde(default)]
    pub seconds: f64,
}

/// A [`MoverLine::Summary`]: what a backup saved or a restore wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The snapshot saved or restored (full id).
    pub snapshot_id: String,
    /// Bytes read (backup) or of the snapshot (restore).
    pub bytes_total: u64,
    /// Backup: bytes not in the repository before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_new: Option<u64>,
    /// Backup: bytes added to the repository (compressed, encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    /// Restore: bytes written to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// How long it took, to a millisecond.
    #[serde(default)]
    pub seconds: f64,
    /// Backup: what was read (a path, `-` for stdin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What a backup saved: a [`Summary`] with the backup's counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// The snapshot saved (full id).
    pub snapshot_id: String,
    /// Bytes read.
    pub bytes_total: u64,
    /// Bytes not in the repository before.
    pub bytes_new: u64,
    /// Bytes added to the repository.
    pub bytes_stored: u64,
}

impl Summary {
    /// The backup's counts; `None` for a summary without them (a restore's).
    pub fn of_backup(&self) -> Option<BackupSummary> {
        Some(BackupSummary {
            snapshot_id: self.snapshot_id.clone(),
            bytes_total: self.bytes_total,
            bytes_new: self.bytes_new?,
            bytes_stored: self.bytes_stored?,
        })
    }
}

/// A [`MoverLine::Read`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRead {
    /// The pack file's id.
    pub pack: String,
    /// Where the read starts in the pack.
    pub offset: u64,
    /// How many bytes it reads.
    pub length: u64,
    /// How many blobs it covers.
    pub blobs: usize,
}

/// A [`MoverLine::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorLine {
    /// What failed.
    #[serde(default = "restore_failed")]
    pub reason: FailureReason,
    /// Whether trying again can help: written from [`FailureReason::retryable`], read as data
    /// (a mover of another version may know reasons this one does not).
    #[serde(default = "yes")]
    pub retryable: bool,
    /// The error, on one line.
    #[serde(default)]
    pub message: String,
}

fn restore_failed() -> FailureReason {
    FailureReason::RestoreFailed
}

fn yes() -> bool {
    true
}

impl ErrorLine {
    /// The error line for a failure of this reason.
    pub fn new(reason: FailureReason, message: String) -> ErrorLine {
        ErrorLine {
            retryable: reason.retryable(),
            reason,
            message,
        }
    }
}

impl MoverLine {
    /// The line as the mover writes it (one JSON object, no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a mover line always serializes")
    }

    /// Reads one line of a mover's output: `None` for text, or JSON of a kind this version
    /// does not know.
    pub fn parse(line: &str) -> Option<MoverLine> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// Why a mover failed, as its error line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The password opens no key of the repository.
    WrongPassword,
    /// No repository at the location.
    RepositoryNotFound,
    /// The repository could not be reached (network, a server error).
    RepositoryUnreachable,
    /// The storage refused a request (permissions, a bad request).
    RepositoryError,
    /// A file of the repository is missing or does not decode.
    RepositoryDamaged,
    /// Another process holds the repository's lock.
    RepositoryLocked,
    /// The mover's own lock was taken away.
    RepositoryLockLost,
    /// The snapshot is not in the repository.
    SnapshotNotFound,
    /// The snapshot id prefix names several snapshots.
    SnapshotAmbiguous,
    /// The target volume cannot hold the snapshot.
    VolumeTooSmall,
    /// A restore failed otherwise.
    RestoreFailed,
    /// A backup failed otherwise.
    BackupFailed,
    /// A reason this version does not know (a mover of another version wrote it).
    Other(String),
}

impl FailureReason {
    /// Whether trying again can help.
    pub fn retryable(&self) -> bool {
        use FailureReason::*;
        match self {
            WrongPassword | RepositoryNotFound | RepositoryError | RepositoryDamaged
            | SnapshotNotFound | SnapshotAmbiguous | VolumeTooSmall => false,
            RepositoryUnreachable
            | RepositoryLocked
            | RepositoryLockLost
            | RestoreFailed
            | BackupFailed
            | Other(_) => true,
        }
    }

    /// The reason's name, as lines, events and conditions carry it.
    pub fn as_str(&self) -> &str {
        use FailureReason::*;
        match self {
            WrongPassword => "WrongPassword",
            RepositoryNotFound => "RepositoryNotFound",
            RepositoryUnreachable => "RepositoryUnreachable",
            RepositoryError => "RepositoryError",
            RepositoryDamaged => "RepositoryDamaged",
            RepositoryLocked => "RepositoryLocked",
            RepositoryLockLost => "RepositoryLockLost",
            SnapshotNotFound => "SnapshotNotFound",
            SnapshotAmbiguous => "SnapshotAmbiguous",
            VolumeTooSmall => "VolumeTooSmall",
            RestoreFailed => "RestoreFailed",
            BackupFailed => "BackupFailed",
            Other(s) => s,
        }
    }

    /// Every reason this version knows, for tests and docs.
    pub const KNOWN: [FailureReason; 12] = [
        FailureReason::WrongPassword,
        FailureReason::RepositoryNotFound,
        FailureReason::RepositoryUnreachable,
        FailureReason::RepositoryError,
        FailureReason::RepositoryDamaged,
        FailureReason::RepositoryLocked,
        FailureReason::RepositoryLockLost,
        FailureReason::SnapshotNotFound,
        FailureReason::SnapshotAmbiguous,
        FailureReason::VolumeTooSmall,
        FailureReason::RestoreFailed,
        FailureReason::BackupFailed,
    ];

    /// The reason of this name (an unknown name is kept as [`FailureReason::Other`]).
    pub fn named(name: &str) -> FailureReason {
        Self::KNOWN
            .iter()
            .find(|r| r.as_str() == name)
            .cloned()
            .unwrap_or_else(|| FailureReason::Other(name.to_string()))
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(FailureReason::named(&String::deserialize(d)?))
    }
}

/// The progress of one claim's restore, in the annotation [`crate::state::ANN_PROGRESS`] of
/// the user's PVC: written by the populator from its pod's lines, read by `restore --wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum ClaimProgress {
    /// The mover waits for a repository lock and has restored nothing yet.
    Waiting {
        /// Always 0.
        bytes_done: u64,
        /// What it waits for.
        waiting: String,
    },
    /// Bytes restored so far.
    Bytes {
        /// Bytes written.
        bytes_done: u64,
        /// The size, once known.
        bytes_total: Option<u64>,
    },
}

impl ClaimProgress {
    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("progress always serializes")
    }

    /// Reads the annotation's value; `None` when it is not progress.
    pub fn parse(text: &str) -> Option<ClaimProgress> {
        serde_json::from_str(text).ok()
    }
}

/// `mover backup`'s settings, as `create` passes them to the mover pod.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupArgs {
    /// The device or directory to read.
    pub source: String,
    /// The image's file name in the snapshot.
    pub name: String,
    /// The snapshot's host.
    pub host: String,
    /// The snapshot's tags, in order.
    pub tags: Vec<String>,
    /// The snapshot's description (JSON).
    pub description: String,
    /// How long to wait for another process's lock.
    pub retry_lock: String,
}

/// `mover restore`'s settings, as the populator passes them to the populate pod.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreArgs {
    /// The snapshot to restore.
    pub snapshot: String,
    /// The device or directory to write.
    pub target: String,
    /// How long to wait for another process's lock.
    pub retry_lock: String,
    /// The image inside a file-tree snapshot to restore.
    pub path: Option<String>,
    /// Restore device nodes, set-id bits and file capabilities.
    pub privileged_files: bool,
}

/// What a mover pod runs: `mover backup --json ...` or `mover restore --json ...`.
#[derive(Debug, Clone, PartialEq)]
pub enum MoverArgs {
    /// Volume to repository.
    Backup(BackupArgs),
    /// Repository to volume.
    Restore(RestoreArgs),
}

impl MoverArgs {
    /// Which way the data goes.
    pub fn direction(&self) -> Direction {
        match self {
            MoverArgs::Backup(_) => Direction::Backup,
            MoverArgs::Restore(_) => Direction::Restore,
        }
    }

    /// The container's arguments.
    pub fn to_args(&self) -> Vec<String> {
        fn flag(out: &mut Vec<String>, name: &str, value: &str) {
            out.push(name.to_string());
            out.push(value.to_string());
        }
        let mut out: Vec<String> = vec!["mover".into()];
        match self {
            MoverArgs::Backup(b) => {
                out.extend(["backup".into(), "--json".into()]);
                flag(&mut out, "--source", &b.source);
                flag(&mut out, "--name", &b.name);
                flag(&mut out, "--host", &b.host);
                for tag in &b.tags {
                    flag(&mut out, "--tag", tag);
                }
                flag(&mut out, "--description", &b.description);
                flag(&mut out, "--retry-lock", &b.retry_lock);
            }
            MoverArgs::Restore(r) => {
                out.extend(["restore".into(), "--json".into()]);
                flag(&mut out, "--snapshot", &r.snapshot);
                flag(&mut out, "--target", &r.target);
                flag(&mut out, "--retry-lock", &r.retry_lock);
                if let Some(path) = &r.path {
                    flag(&mut out, "--path", path);
                }
                if r.privileged_files {
                    out.push("--privileged-files".into());
                }
            }
        }
        out
    }
}

/// The key of a repository Secret that names the repository (restic's name is read too).
pub const LOCATION_KEY: &str = "VOLBACKUP_REPOSITORY";
/// The key that holds the password (restic's name is read too).
pub const PASSWORD_KEY: &str = "VOLBACKUP_PASSWORD";
const LOCATION_KEYS: [&str; 2] = [LOCATION_KEY, "RESTIC_REPOSITORY"];
const PASSWORD_KEYS: [&str; 2] = [PASSWORD_KEY, "RESTIC_PASSWORD"];

/// What a repository Secret holds: the location and password by name, the rest (S3
/// credentials, region, endpoint, CA, key hint) by their variables' names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepositorySettings {
    /// Where the repository is.
    pub location: String,
    /// Its password.
    pub password: String,
    /// Every other setting, by variable name.
    pub other: BTreeMap<String, String>,
}

impl RepositorySettings {
    /// The settings of a map of variables (ours, else restic's names); `None` without a
    /// location or a password.
    pub fn from_map(map: &BTreeMap<String, String>) -> Option<RepositorySettings> {
        let first = |keys: &[&str]| keys.iter().find_map(|k| map.get(*k).cloned());
        Some(RepositorySettings {
            location: first(&LOCATION_KEYS)?,
            password: first(&PASSWORD_KEYS)?,
            other: map
                .iter()
                .filter(|(k, _)| *k != LOCATION_KEY && *k != PASSWORD_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The variables of a repository Secret's data.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = self.other.clone();
        map.insert(LOCATION_KEY.to_string(), self.location.clone());
        map.insert(PASSWORD_KEY.to_string(), self.password.clone());
        map
    }

    /// The repository location a Secret's data names, the one rule every reader uses: ours,
    /// else restic's key, an empty value skipped as a mover skips an empty environment
    /// variable; for one key, `stringData` before `data`, as the API server merges them.
    pub fn location_of(
        data: &BTreeMap<String, k8s_openapi::ByteString>,
        string_data: &BTreeMap<String, String>,
    ) -> Option<String> {
        LOCATION_KEYS.iter().find_map(|k| {
            string_data
                .get(*k)
                .cloned()
                .or_else(|| {
                    data.get(*k)
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                })
                .filter(|v| !v.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_line() -> Vec<MoverLine> {
        let mut lines = vec![
            MoverLine::Progress(ProgressLine {
                operation: "restore".into(),
                bytes_done: 4096,
                bytes_total: Some(8192),
                seconds: 1.5,
            }),
            MoverLine::Progress(ProgressLine {
                operation: "backup".into(),
                bytes_done: 0,
                bytes_total: None,
                seconds: 0.0,
            }),
            MoverLine::Waiting {
                message: "waiting up to 1800s for the lock".into(),
            },
            MoverLine::Summary(Summary {
                snapshot_id: "ab".repeat(32),
                bytes_total: 10,
                bytes_new: Some(5),
                bytes_stored: Some(3),
                bytes_written: None,
                seconds: 0.123,
                source: Some("/dev/volbackup-source".into()),
            }),
            MoverLine::Summary(Summary {
                snapshot_id: "cd".repeat(32),
                bytes_total: 10,
                bytes_new: None,
                bytes_stored: None,
                bytes_written: Some(10),
                seconds: 2.0,
                source: None,
            }),
            MoverLine::Read(PlannedRead {
                pack: "ef".repeat(32),
                offset: 0,
                length: 1 << 20,
                blobs: 4,
            }),
        ];
        let mut reasons = FailureReason::KNOWN.to_vec();
        reasons.push(FailureReason::Other("SomethingNew".into()));
        for reason in reasons {
            lines.push(MoverLine::Error(ErrorLine::new(reason, "it broke".into())));
        }
        lines
    }

    #[test]
    fn every_mover_line_reads_back_as_it_was_written() {
        for line in every_line() {
            let text = line.to_line();
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(MoverLine::parse(&text), Some(line), "{text}");
        }
        assert_eq!(MoverLine::parse("error: wrong password"), None);
        assert_eq!(MoverLine::parse(r#"{"type":"later","x":1}"#), None);
    }

    #[test]
    fn the_lines_keep_the_shape_earlier_versions_read() {
        let progress = MoverLine::Progress(ProgressLine {
            operation: "backup".into(),
            bytes_done: 1,
            bytes_total: None,
            seconds: 0.1,
        });
        assert_eq!(
            progress.to_line(),
            r#"{"type":"progress","operation":"backup","bytes_done":1,"bytes_total":null,"seconds":0.1}"#
        );
        let error = MoverLine::Error(ErrorLine::new(
            FailureReason::WrongPassword,
            "wrong password".into(),
        ));
        assert_eq!(
            error.to_line(),
            r#"{"type":"error","reason":"WrongPassword","retryable":false,"message":"wrong password"}"#
        );
        // A restore's summary has no backup counts, and a backup's no bytes written.
        let restored = r#"{"type":"summary","snapshot_id":"ab","bytes_total":1,"bytes_written":1,"seconds":0.5}"#;
        assert_eq!(MoverLine::parse(restored).unwrap().to_line(), restored);
        // A short progress line (no operation or time) still reads.
        assert!(matches!(
            MoverLine::parse(r#"{"type":"progress","bytes_done":1}"#),
            Some(MoverLine::Progress(ProgressLine { bytes_done: 1, .. }))
        ));
    }

    #[test]
    fn only_failures_that_can_heal_are_retryable() {
        use FailureReason::*;
        for r in [
            WrongPassword,
            RepositoryNotFound,
            RepositoryError,
            RepositoryDamaged,
            SnapshotNotFound,
            SnapshotAmbiguous,
            VolumeTooSmall,
        ] {
            assert!(!r.retryable(), "{r}");
        }
        for r in [
            RepositoryUnreachable,
            RepositoryLocked,
            RepositoryLockLost,
            RestoreFailed,
            BackupFailed,
            Other("SomethingNew".into()),
        ] {
            assert!(r.retryable(), "{r}");
        }
        for r in FailureReason::KNOWN {
            assert_eq!(FailureReason::named(r.as_str()), r);
        }
    }

    #[test]
    fn claim_progress_keeps_its_annotation_format() {
        let waiting = ClaimProgress::Waiting {
            bytes_done: 0,
            waiting: "locked".into(),
        };
        assert_eq!(
            waiting.to_annotation(),
            r#"{"bytesDone":0,"waiting":"locked"}"#
        );
        let bytes = ClaimProgress::Bytes {
            bytes_done: 5,
            bytes_total: None,
        };
        assert_eq!(
            bytes.to_annotation(),
            r#"{"bytesDone":5,"bytesTotal":null}"#
        );
        for p in [waiting, bytes] {
            assert_eq!(ClaimProgress::parse(&p.to_annotation()), Some(p));
        }
    }

    #[test]
    fn the_mover_arguments_keep_their_order() {
        let backup = MoverArgs::Backup(BackupArgs {
            source: "/data".into(),
            name: "db.img".into(),
            host: "app/db".into(),
            tags: vec!["namespace=app".into(), "pvc=db".into()],
            description: "{}".into(),
            retry_lock: "30m".into(),
        });
        assert_eq!(backup.direction(), Direction::Backup);
        assert_eq!(
            backup.to_args().join(" "),
            "mover backup --json --source /data --name db.img --host app/db --tag namespace=app --tag pvc=db --description {} --retry-lock 30m"
        );
        let restore = MoverArgs::Restore(RestoreArgs {
            snapshot: "ab".into(),
            target: "/data".into(),
            retry_lock: "30m".into(),
            path: Some("/x.img".into()),
            privileged_files: true,
        });
        assert_eq!(restore.direction(), Direction::Restore);
        assert_eq!(
            restore.to_args().join(" "),
            "mover restore --json --snapshot ab --target /data --retry-lock 30m --path /x.img --privileged-files"
        );
    }

    #[test]
    fn repository_settings_read_either_name_and_write_ours() {
        let map: BTreeMap<String, String> = [
            ("RESTIC_REPOSITORY", "s3:https://h/b"),
            ("RESTIC_PASSWORD", "pw"),
            ("AWS_REGION", "eu-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = RepositorySettings::from_map(&map).unwrap();
        assert_eq!(
            (s.location.as_str(), s.password.as_str()),
            ("s3:https://h/b", "pw")
        );
        let written = s.to_map();
        assert_eq!(written[LOCATION_KEY], "s3:https://h/b");
        assert_eq!(written[PASSWORD_KEY], "pw");
        assert_eq!(written["AWS_REGION"], "eu-1");
        assert!(RepositorySettings::from_map(&BTreeMap::new()).is_none());
        let ours: BTreeMap<String, String> = [(LOCATION_KEY, "/srv/r"), (PASSWORD_KEY, "p")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(RepositorySettings::from_map(&ours).unwrap().to_map(), ours);
        let data = BTreeMap::from([(
            "RESTIC_REPOSITORY".to_string(),
            k8s_openapi::ByteString(b"/srv/a".to_vec()),
        )]);
        let string_data = BTreeMap::from([(LOCATION_KEY.to_string(), "/srv/b".to_string())]);
        assert_eq!(
            RepositorySettings::location_of(&data, &string_data).as_deref(),
            Some("/srv/b")
        );
        assert_eq!(
            RepositorySettings::location_of(&data, &BTreeMap::new()).as_deref(),
            Some("/srv/a")
        );
    }
}
