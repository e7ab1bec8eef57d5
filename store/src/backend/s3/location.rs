//! Where an S3 repository is and how to reach it: locations parsed into an [`S3Config`], and
//! the extra CA certificates from the environment.

use std::fmt;
use std::time::Duration;

use crate::{Error, Result};

/// Access keys given explicitly instead of through the AWS credential chain.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`. Never printed: `Debug` shows `***`.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// Where an S3 repository lives and how to talk to it.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The server, `scheme://host[:port]`; `None` for AWS (or whatever the SDK finds in
    /// `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The folder inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// The signing region; `None` takes `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile,
    /// falling back to `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`) instead of virtual-hosted style
    /// (`http://bucket.host/key`). Most S3-compatible servers need it.
    pub path_style: bool,
    /// Explicit access keys; `None` uses the AWS credential chain.
    pub credentials: Option<S3Credentials>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Limit for opening a connection.
    pub connect_timeout: Duration,
    /// Limit for one attempt of a request without a body, up to the response's headers. Requests
    /// that upload data get an extra second for every 256 KiB.
    pub attempt_timeout: Duration,
    /// Files larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of each part of a multipart upload (S3 wants at least 5 MiB).
    pub part_size: u64,
    /// Extra certificate authorities (PEM) trusted for an `https` endpoint beside the system's:
    /// a server with a private CA. From `VOLBACKUP_CACERT` or `RESTIC_CACERT` (see [`ca_from_env`]).
    pub ca_pem: Option<Vec<u8>>,
}

impl S3Config {
    /// A configuration with default retries and timeouts; path-style addressing when an
    /// endpoint is given.
    pub fn new(
        endpoint: Option<String>,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        let path_style = endpoint.is_some();
        S3Config {
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            region: None,
            path_style,
            credentials: None,
            max_attempts: 6,
            connect_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(60),
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            ca_pem: None,
        }
    }

    /// The repository location in the form it is written: `s3:http://host:9000/bucket/prefix`
    /// or `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        let mut s = match &self.endpoint {
            Some(ep) => format!("s3:{}/{}", crate::backend::redact(ep), self.bucket),
            None => format!("s3://{}", self.bucket),
        };
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        s
    }

    /// The server as shown in messages.
    pub(super) fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Some(ep) => crate::backend::redact(ep),
            None => "AWS S3".to_string(),
        }
    }
}

/// Parses a repository location: `s3:http[s]://host[:port]/bucket[/prefix]`,
/// `s3:host[:port]/bucket[/prefix]` (https), or `s3://bucket[/prefix]` (endpoint from
/// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` if set, else AWS).
pub fn parse_location(s: &str) -> Result<S3Config> {
    let invalid = |why: &str| {
        Error::Invalid(format!(
            "invalid S3 repository location {:?}: {why} (expected s3:https://host[:port]/bucket/prefix or s3://bucket/prefix)",
            crate::backend::redact(s)
        ))
    };
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| invalid("no bucket"))?;
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.trim().is_empty());
        return Ok(S3Config::new(endpoint, bucket, prefix));
    }
    let rest = s
        .strip_prefix("s3:")
        .ok_or_else(|| invalid("it does not start with s3:"))?;
    let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = rest.strip_prefix("http://") {
        ("http", r)
    } else if rest.contains("://") {
        return Err(invalid("the scheme must be http or https"));
    } else {
        ("https", rest)
    };
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| invalid("no bucket after the host"))?;
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if host.contains('@') {
        return Err(invalid(
            "credentials do not belong in it; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    let (bucket, prefix) = split_bucket(path).ok_or_else(|| invalid("no bucket after the host"))?;
    Ok(S3Config::new(
        Some(format!("{scheme}://{host}")),
        bucket,
        prefix,
    ))
}

fn split_bucket(path: &str) -> Option<(String, String)> {
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// The extra CA certificates for `https` endpoints: `VOLBACKUP_CACERT`, else `RESTIC_CACERT`,
/// each either the PEM text itself (as a repository Secret carries it into a pod) or the path
/// of a PEM file (as restic's `--cacert`).
pub fn ca_from_env() -> std::result::Result<Option<Vec<u8>>, String> {
    let Some((name, value)) = ["VOLBACKUP_CACERT", "RESTIC_CACERT"].iter().find_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (*k, v))
    }) else {
        return Ok(None);
    };
    ca_pem(&value).map(Some).map_err(|e| format!("{name}: {e}"))
}

/// PEM text as given, or read from the file a value names; checked to hold a certificate.
pub fn ca_pem(value: &str) -> std::result::Result<Vec<u8>, String> {
    let pem = if value.trim_start().starts_with("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        std::fs::read(value)
            .map_err(|e| format!("cannot read the CA certificate file {value}: {e}"))?
    };
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_string());
    }
    Ok(pem)
}
