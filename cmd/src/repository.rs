//! Finding and opening the repository from flags and the environment.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use volbackup_store::backend::{self, Backend};
use volbackup_store::{KeyHint, OpenOptions, ReadAhead, Repository};

use crate::cli::RepoOptions;

/// The repository location from `--repo`, `VOLBACKUP_REPOSITORY` or `RESTIC_REPOSITORY`.
pub fn location(opts: &RepoOptions) -> Result<String> {
    if let Some(r) = &opts.repo {
        return Ok(r.clone());
    }
    for var in ["VOLBACKUP_REPOSITORY", "RESTIC_REPOSITORY"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return Ok(v);
        }
    }
    bail!(
        "no repository given: use --repo or set VOLBACKUP_REPOSITORY (a directory, s3:https://host/bucket/prefix or s3://bucket/prefix)"
    )
}

/// The repository password: `--password-file`, then `VOLBACKUP_PASSWORD`, `RESTIC_PASSWORD`,
/// `RESTIC_PASSWORD_FILE`, then a prompt when stdin is a terminal.
pub fn password(opts: &RepoOptions, confirm: bool) -> Result<String> {
    if let Some(file) = &opts.password_file {
        return read_password_file(file);
    }
    for var in ["VOLBACKUP_PASSWORD", "RESTIC_PASSWORD"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return Ok(v);
        }
    }
    if let Some(file) = std::env::var_os("RESTIC_PASSWORD_FILE") {
        return read_password_file(std::path::Path::new(&file));
    }
    if std::io::stdin().is_terminal() {
        let pw = rpassword::prompt_password("repository password: ")
            .context("reading the password from the terminal")?;
        if confirm {
            let again = rpassword::prompt_password("repeat the password: ")
                .context("reading the password from the terminal")?;
            if again != pw {
                bail!("the two passwords differ: nothing was created, run the command again");
            }
        }
        if pw.is_empty() {
            bail!("empty password: a repository needs a password");
        }
        return Ok(pw);
    }
    bail!("no repository password: set VOLBACKUP_PASSWORD or use --password-file FILE")
}

fn read_password_file(file: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the password file {}", file.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        bail!("the password file {} is empty", file.display());
    }
    Ok(pw)
}

/// The storage backend for a location string.
pub fn open_backend(location: &str) -> Result<Arc<dyn Backend>> {
    Ok(backend::open(location)?)
}

/// How to reach and open the repository, resolved once from flags and the environment: the
/// location, the password (asked for at most once), the key hint and the lock wait.
pub struct Access {
    /// The location as given (`--repo`, `VOLBACKUP_REPOSITORY`, `RESTIC_REPOSITORY`).
    pub location: String,
    password: String,
    key_hint: Option<KeyHint>,
    lock_wait: std::time::Duration,
}

impl Access {
    /// The repository `opts` and the environment name.
    pub fn new(opts: &RepoOptions) -> Result<Access> {
        let location = location(opts)?;
        let password = password(opts, false)?;
        let lock_wait = opts.retry_lock.unwrap_or_default();
        Ok(Access {
            location,
            password,
            key_hint: key_hint(),
            lock_wait,
        })
    }
}

/// What a command opens the repository for: it decides what is read while the key is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A listing of the snapshots, or a look at the repository (the password checked).
    List,
    /// A backup, a restore or a check: each loads the index under its own lock, and the
    /// snapshot and index files are read while the key is derived.
    Read,
    /// Whatever removes data or locks (forget, prune, unlock): it lists what it removes under
    /// its own lock, and nothing is read ahead.
    Remove,
}

impl Purpose {
    /// What the engine reads ahead for this purpose.
    pub fn read_ahead(self) -> ReadAhead {
        match self {
            Purpose::Read => ReadAhead::SnapshotsAndIndex,
            Purpose::List | Purpose::Remove => ReadAhead::Nothing,
        }
    }
}

/// Opens the repository: the one way every command does (password checked, the key hint
/// tried first, the lock wait set). No index is loaded: each operation of the engine loads
/// what it needs under its own lock, once.
pub fn open(access: &Access, purpose: Purpose) -> Result<Repository> {
    let backend = open_backend(&access.location)?;
    let repo = Repository::open_with(
        backend,
        &access.password,
        &OpenOptions {
            key_hint: access.key_hint.as_ref(),
            read_ahead: purpose.read_ahead(),
        },
    )?;
    repo.set_lock_wait(volbackup_store::repo::LockWait {
        max: access.lock_wait,
        ..Default::default()
    });
    Ok(repo)
}

/// The key file to try first: `VOLBACKUP_KEY_HINT` or `RESTIC_KEY_HINT` (a key id), with the
/// copy of that file in `VOLBACKUP_KEY_COPY` (base64), if any. The repository Secrets
/// `create` and `restore` write carry the key they opened, so that a mover reads it by name
/// instead of listing the key files first, and derives the key from the copy while the file
/// is read: two round trips less before the key is known.
pub fn key_hint() -> Option<KeyHint> {
    key_hint_of(|var| std::env::var(var).ok())
}

fn key_hint_of(var: impl Fn(&str) -> Option<String>) -> Option<KeyHint> {
    use base64::Engine as _;
    let id = ["VOLBACKUP_KEY_HINT", "RESTIC_KEY_HINT"]
        .iter()
        .filter_map(|name| var(name))
        .find(|v| !v.is_empty())?;
    let copy = var("VOLBACKUP_KEY_COPY")
        .filter(|v| !v.is_empty())
        .and_then(
            |v| match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                Ok(copy) => Some(copy),
                Err(_) => {
                    tracing::warn!("ignoring VOLBACKUP_KEY_COPY: not base64");
                    None
                }
            },
        );
    Some(KeyHint { id, copy })
}

/// Adds the key `repo` was opened with to repository settings for a Secret (see
/// [`key_hint`]). A key file is not a secret: anyone who can read the repository has it, and
/// it opens only with the password.
pub fn add_key_hint(data: &mut std::collections::BTreeMap<String, String>, repo: &Repository) {
    use base64::Engine as _;
    let hint = repo.key_hint();
    if let Some(copy) = &hint.copy {
        data.insert(
            "VOLBACKUP_KEY_COPY".to_string(),
            base64::engine::general_purpose::STANDARD.encode(copy),
        );
    }
    data.insert("VOLBACKUP_KEY_HINT".to_string(), hint.id);
}

/// Local settings copied into the repository Secret (keys as the mover reads them).
const COPIED_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
];

/// The repository settings for a Secret, from flags and the environment: the location (a local
/// path made absolute), the password, and the AWS settings that are set.
pub fn secret_data(access: &Access) -> Result<std::collections::BTreeMap<String, String>> {
    let mut location = access.location.clone();
    if !location.contains(':') {
        location = std::path::absolute(&location)
            .with_context(|| format!("cannot resolve the repository path {location}"))?
            .to_string_lossy()
            .into_owned();
    }
    let mut data = std::collections::BTreeMap::new();
    data.insert("VOLBACKUP_REPOSITORY".to_string(), location);
    data.insert("VOLBACKUP_PASSWORD".to_string(), access.password.clone());
    for key in COPIED_ENV {
        if let Ok(v) = std::env::var(key)
            && !v.is_empty()
        {
            data.insert(key.to_string(), v);
        }
    }
    for w in credential_warnings(&data["VOLBACKUP_REPOSITORY"], &|k| std::env::var(k).ok()) {
        tracing::warn!("{w}");
    }
    // A private CA travels as PEM text: a pod has no file of the user's machine to read.
    if let Some(pem) =
        volbackup_store::backend::s3::ca_from_env().map_err(|e| anyhow::anyhow!(e))?
    {
        data.insert(
            "VOLBACKUP_CACERT".to_string(),
            String::from_utf8_lossy(&pem).into_owned(),
        );
    }
    Ok(data)
}

/// What is wrong with S3 credentials that are to be copied into a cluster (pure; `env` reads
/// a variable): a session token expires, and then every restore from that Secret fails; with
/// keys only in a profile or the machine's role nothing is copied, and the pods fall back to
/// whatever role their node has.
pub fn credential_warnings(location: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let mut out = Vec::new();
    if !location.starts_with("s3:") {
        return out;
    }
    if set("AWS_SESSION_TOKEN") {
        out.push(
            "AWS_SESSION_TOKEN is set: the repository Secret gets temporary credentials, and restores from it fail once they expire; give the cluster long-lived keys (an existing Secret with --repo-secret)"
                .to_string(),
        );
    }
    if !set("AWS_ACCESS_KEY_ID") || !set("AWS_SECRET_ACCESS_KEY") {
        out.push(
            "no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (a profile or an instance role is used here): the repository Secret gets no keys, and the pods use their node's role, if any; export the keys or name an existing Secret with --repo-secret"
                .to_string(),
        );
    }
    out
}

/// What the user can do about an engine error, as a command or a setting of this plugin: the
/// engine names none (it knows no command line), so the hints are added here, where errors
/// are printed ([`crate::one_line`]). `None` for errors with nothing to add.
pub fn hint(err: &volbackup_store::Error) -> Option<&'static str> {
    use volbackup_store::Error as E;
    Some(match err {
        E::WrongPassword { .. } => "check VOLBACKUP_PASSWORD or --password-file",
        E::NoRepository { .. } => "create one with `kubectl-volbackup repo init`",
        E::SnapshotNotFound { .. } => "list them with `kubectl-volbackup snapshots`",
        E::NoSnapshots { .. } => "create one with `kubectl-volbackup create`",
        E::NotIndexed { .. } => "run `kubectl-volbackup repo check`",
        E::TargetTooSmall { .. } => "use a larger volume",
        E::Locked { .. } => {
            "wait for it to finish, or run `kubectl-volbackup repo unlock --remove-all` if no \
             backup, restore or prune uses the repository any more"
        }
        _ => return None,
    })
}

/// The hint for an engine warning that names a fix (its `fix` field): the engine says what is
/// wrong, this says which command helps.
pub fn warning_hint(fix: &str) -> Option<&'static str> {
    match fix {
        "check" => Some("see `kubectl-volbackup repo check`"),
        "unlock" => Some("or remove every lock with `kubectl-volbackup repo unlock --remove-all`"),
        _ => None,
    }
}

/// The warning for one repository shared by several namespaces (`create -A`, or a selector
/// across namespaces): each of them gets a Secret with its password and credentials, and
/// whoever may read Secrets in one of them may read, and forget, the snapshots of all (pure;
/// `None` for one namespace).
pub fn shared_repository_warning(location: &str, namespaces: &[&str]) -> Option<String> {
    if namespaces.len() < 2 {
        return None;
    }
    Some(format!(
        "repository {} is shared by {} namespaces ({}): each gets its password and credentials, so anyone who can read Secrets in one can read and forget the snapshots of all; for tenants that must stay apart, back up each namespace to its own repository (or prefix)",
        volbackup_store::backend::redact(location),
        namespaces.len(),
        namespaces.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn session_tokens_and_profile_only_credentials_are_warned_about() {
        let keys = env_of(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
        assert!(credential_warnings("s3:https://h/b", &keys).is_empty());
        let temporary = env_of(&[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_SESSION_TOKEN", "t"),
        ]);
        let w = credential_warnings("s3:https://h/b", &temporary);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("expire"), "{w:?}");
        let profile = env_of(&[("AWS_PROFILE", "prod")]);
        let w = credential_warnings("s3://bucket/prefix", &profile);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("node's role"), "{w:?}");
        // A directory repository has no credentials to warn about.
        assert!(credential_warnings("/srv/backups", &profile).is_empty());
    }

    #[test]
    fn a_key_hint_comes_from_either_variable_and_a_copy_that_is_not_base64_is_left_out() {
        assert_eq!(key_hint_of(env_of(&[("VOLBACKUP_KEY_COPY", "a2V5")])), None);
        assert_eq!(
            key_hint_of(env_of(&[("RESTIC_KEY_HINT", "abc")])),
            Some(KeyHint::named("abc"))
        );
        let both = env_of(&[
            ("VOLBACKUP_KEY_HINT", "ours"),
            ("RESTIC_KEY_HINT", "theirs"),
            ("VOLBACKUP_KEY_COPY", "a2V5"),
        ]);
        assert_eq!(
            key_hint_of(both),
            Some(KeyHint {
                id: "ours".into(),
                copy: Some(b"key".to_vec()),
            })
        );
        let garbled = env_of(&[("VOLBACKUP_KEY_HINT", "ours"), ("VOLBACKUP_KEY_COPY", "%%")]);
        assert_eq!(key_hint_of(garbled), Some(KeyHint::named("ours")));
    }

    #[test]
    fn only_backups_restores_and_checks_read_ahead_so_a_listing_reads_no_index_file() {
        assert_eq!(Purpose::List.read_ahead(), ReadAhead::Nothing);
        assert_eq!(Purpose::Remove.read_ahead(), ReadAhead::Nothing);
        assert_eq!(Purpose::Read.read_ahead(), ReadAhead::SnapshotsAndIndex);
    }

    #[test]
    fn engine_errors_get_the_command_that_fixes_them_at_the_end_of_the_line() {
        use volbackup_store::Error as E;
        let loc = || "/srv/repo".to_string();
        let line = |e: E| crate::one_line(&anyhow::Error::new(e).context("cannot open"));
        assert_eq!(
            line(E::NoRepository { location: loc() }),
            "cannot open: /srv/repo: no repository here (create one with `kubectl-volbackup repo init`)"
        );
        assert!(
            line(E::NoSnapshots { location: loc() })
                .ends_with("(create one with `kubectl-volbackup create`)")
        );
        let locked = line(E::Locked {
            location: loc(),
            holder: "someone@host (pid 1)".into(),
            exclusive: true,
            since: "2026-12-07T00:00:00Z".into(),
            lock: "abcd1234".into(),
            waited: Some(std::time::Duration::from_secs(5)),
        });
        assert!(
            locked.starts_with(
                "cannot open: /srv/repo is locked exclusively by someone@host (pid 1)"
            ) && locked.contains("gave up after waiting 5s")
                && locked.contains("`kubectl-volbackup repo unlock --remove-all`"),
            "{locked}"
        );
        assert_eq!(hint(&E::Invalid("bad option".into())), None);
        assert_eq!(
            line(E::Invalid("bad option".into())),
            "cannot open: bad option"
        );
    }

    #[test]
    fn a_repository_shared_by_namespaces_is_named_in_one_warning() {
        assert_eq!(shared_repository_warning("s3:https://h/b/p", &["a"]), None);
        let w = shared_repository_warning("s3:https://h/b/p", &["a", "b"]).unwrap();
        assert!(!w.contains('\n'));
        assert!(
            w.starts_with("repository s3:https://h/b/p is shared by 2 namespaces (a, b)"),
            "{w}"
        );
        assert!(w.contains("its own repository (or prefix)"), "{w}");
    }
}
