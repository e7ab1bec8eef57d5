//! The S3 backend: repository files as objects under a prefix of a bucket, through
//! `aws-sdk-s3`.
//!
//! The [`Backend`] trait is synchronous, so the backend owns a small multi-threaded tokio
//! runtime and blocks the calling thread on each request. Requests are retried by the SDK
//! (bounded attempts, exponential backoff with jitter) on 5xx answers, throttling, timeouts
//! and broken connections; a per-attempt timeout makes a stalled request count as a failed
//! attempt. Reading a body that breaks off midway is retried here, because the SDK hands the
//! body over before it has arrived.
//!
//! Locations: `s3:https://host[:port]/bucket/prefix` (an S3-compatible server, path-style
//! addressing) and `s3://bucket/prefix` (AWS, or the server in `AWS_ENDPOINT_URL_S3` /
//! `AWS_ENDPOINT_URL`). Credentials come from the standard AWS chain (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, profiles, instance roles) unless given in [`S3Config`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{Backend, FileInfo, FileType, relative_path};
use crate::id::Id;
use crate::{Error, Result};

mod location;
pub use location::{S3Config, S3Credentials, ca_from_env, ca_pem, parse_location};

/// A repository in an S3 bucket.
pub struct S3Backend {
    /// Always `Some` until drop (taken there to shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    cfg: S3Config,
    /// The signing region in effect, for messages.
    region: Option<String>,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.cfg.location())
            .finish()
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How a failed request is reported.
struct Failure {
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
    kind: FailureKind,
}

enum FailureKind {
    /// The server answered with an error.
    Service,
    /// No answer: connection refused, DNS, reset, TLS.
    Unreachable(String),
    /// No answer in time.
    Timeout,
    /// The request could not be built or signed.
    Construction(String),
    /// The credential chain found no access keys.
    NoCredentials,
    /// An answer that could not be read.
    Response(String),
}

/// The innermost message of an error chain, which names the actual cause (`Connection refused
/// (os error 111)`) rather than the layers above it.
/// The most a read reserves up front from the length the server announces.
const MAX_PREALLOCATED: u64 = 64 << 20;

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msgs = error_chain(err);
    msgs.retain(|m| !m.is_empty() && m != "dispatch failure" && m != "io error" && m != "other");
    let last = msgs.pop().unwrap_or_else(|| "unknown error".to_string());
    last.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every message in an error's chain, outermost first.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut cur = err;
    let mut msgs = vec![cur.to_string()];
    while let Some(next) = cur.source() {
        cur = next;
        msgs.push(cur.to_string());
    }
    msgs
}

fn failure<E>(err: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let message = err.message().map(str::to_string);
    let no_credentials = !matches!(err, SdkError::ServiceError(_))
        && error_chain(&err)
            .iter()
            .any(|m| m.to_lowercase().contains("no credentials"));
    let kind = match &err {
        _ if no_credentials => FailureKind::NoCredentials,
        SdkError::ServiceError(_) => FailureKind::Service,
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                FailureKind::Timeout
            } else {
                FailureKind::Unreachable(root_cause(&err))
            }
        }
        SdkError::ConstructionFailure(_) => FailureKind::Construction(root_cause(&err)),
        SdkError::ResponseError(_) => FailureKind::Response(root_cause(&err)),
        _ => FailureKind::Response(root_cause(&err)),
    };
    Failure {
        status,
        code,
        message,
        kind,
    }
}

impl S3Backend {
    /// Connects to the bucket described by `cfg` (no request is sent yet).
    pub fn open(cfg: S3Config) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("volbackup-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Backend {
                location: cfg.location(),
                message: format!("cannot start the S3 client runtime: {e}"),
                retryable: false,
            })?;
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(8));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .operation_attempt_timeout(cfg.attempt_timeout)
            .build();
        let region = match &cfg.region {
            Some(r) => RegionProviderChain::first_try(Region::new(r.clone())),
            None => RegionProviderChain::default_provider().or_else(Region::new("us-east-1")),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(pem) = &cfg.ca_pem {
            use aws_smithy_http_client::tls;
            let trust = tls::TrustStore::default().with_pem_certificate(pem.clone());
            let ctx = tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .map_err(|e| Error::Backend {
                    location: cfg.location(),
                    message: format!("the CA certificate (VOLBACKUP_CACERT) is not usable: {e}"),
                    retryable: false,
                })?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(ctx)
                .build_https();
            loader = loader.http_client(http);
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep.clone());
        }
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "volbackup",
            ));
        }
        let shared = run_on(&rt, loader.load());
        let s3conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            .build();
        let region = shared.region().map(|r| r.to_string());
        let client = Client::from_conf(s3conf);
        Ok(S3Backend {
            rt: Some(rt),
            client,
            cfg,
            region,
        })
    }

    /// Parses `location` (see [`parse_location`]) and opens it.
    pub fn from_location(location: &str) -> Result<Self> {
        let mut cfg = parse_location(location)?;
        cfg.ca_pem = ca_from_env().map_err(|message| Error::Backend {
            location: cfg.location(),
            message,
            retryable: false,
        })?;
        Self::open(cfg)
    }

    /// The configuration in use.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        run_on(self.rt.as_ref().expect("runtime present until drop"), fut)
    }

    fn key(&self, t: FileType, name: &str) -> String {
        self.key_of(&relative_path(t, name))
    }

    fn key_of(&self, rel: &str) -> String {
        if self.cfg.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.cfg.prefix)
        }
    }

    fn backend_err(&self, message: String, retryable: bool) -> Error {
        Error::Backend {
            location: self.cfg.location(),
            message,
            retryable,
        }
    }

    /// Turns a failure after the SDK's retries into the engine's error. `path` is the file's
    /// path inside the repository, for `NotFound`; `what` says what was being done.
    fn map_failure(&self, f: Failure, path: Option<&str>, what: &str) -> Error {
        let ep = self.cfg.endpoint_display();
        let bucket = &self.cfg.bucket;
        let code = f.code.as_deref().unwrap_or("");
        match f.kind {
            FailureKind::Unreachable(cause) => {
                return self.backend_err(
                    format!(
                        "cannot reach S3 endpoint {ep}: {cause}; check the URL / AWS_ENDPOINT_URL"
                    ),
                    true,
                );
            }
            FailureKind::Timeout => {
                return self.backend_err(
                    format!(
                        "S3 endpoint {ep} did not answer in time while trying to {what} ({} attempts); check the network or try again",
                        self.cfg.max_attempts
                    ),
                    true,
                );
            }
            FailureKind::NoCredentials => {
                return self.backend_err(
                    format!(
                        "no S3 credentials found for {ep}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
                    ),
                    false,
                );
            }
            FailureKind::Construction(cause) => {
                return self.backend_err(format!("cannot {what}: {cause}"), false);
            }
            FailureKind::Response(cause) => {
                return self.backend_err(
                    format!(
                        "S3 endpoint {ep} sent an unreadable answer while trying to {what}: {cause}"
                    ),
                    true,
                );
            }
            FailureKind::Service => {}
        }
        let status = f.status.unwrap_or(0);
        if code == "NoSuchBucket" {
            return self.backend_err(
                format!("bucket {bucket} does not exist at {ep} (create it first)"),
                false,
            );
        }
        if status == 403
            || matches!(
                code,
                "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
            )
        {
            let detail = if code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            };
            return self.backend_err(
                format!(
                    "access denied by S3 at {ep} for bucket {bucket}{detail}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ),
                false,
            );
        }
        if matches!(
            code,
            "AuthorizationHeaderMalformed"
                | "PermanentRedirect"
                | "IllegalLocationConstraintException"
        ) || (code == "InvalidRequest"
            && f.message.as_deref().is_some_and(|m| m.contains("region")))
        {
            let region = self.region.as_deref().unwrap_or("unknown");
            let said = f
                .message
                .as_deref()
                .map(|m| format!(" (S3 says: {})", m.replace('\n', " ")))
                .unwrap_or_default();
            return self.backend_err(
                format!(
                    "bucket {bucket} at {ep} expects another region than {region}: set AWS_REGION / AWS_DEFAULT_REGION{said}"
                ),
                false,
            );
        }
        if let Some(path) = path
            && (status == 404 || code == "NoSuchKey" || code == "NotFound")
        {
            return Error::NotFound {
                location: self.cfg.location(),
                path: path.to_string(),
            };
        }
        let retryable = status >= 500 || status == 429 || code == "SlowDown";
        let mut msg = format!("S3 endpoint {ep} failed to {what}: HTTP {status}");
        if !code.is_empty() {
            msg.push_str(&format!(" {code}"));
        }
        if let Some(m) = f.message.as_deref().filter(|m| !m.is_empty()) {
            msg.push_str(&format!(": {}", m.replace('\n', " ")));
        }
        if retryable {
            msg.push_str(&format!(" (after {} attempts)", self.cfg.max_attempts));
        }
        self.backend_err(msg, retryable)
    }

    /// The attempt timeout for a request that uploads `len` bytes: the base limit plus a second
    /// per 256 KiB, so that a slow but moving upload is not cut off.
    fn upload_override(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let timeout = self.cfg.attempt_timeout + Duration::from_secs(len / (256 << 10));
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.cfg.connect_timeout)
                .operation_attempt_timeout(timeout)
                .build(),
        )
    }

    async fn head(&self, rel: &str) -> Result<u64> {
        let key = self.key_of(rel);
        let out = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.map_failure(failure(e), Some(rel), &format!("stat {rel}")))?;
        Ok(out.content_length().unwrap_or(0).max(0) as u64)
    }

    /// GET (of a range), retrying when the body breaks off after the headers arrived.
    async fn get(&self, rel: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.get_into(rel, range, &mut data, None).await?;
        Ok(data)
    }

    /// [`S3Backend::get`] into `data` (replacing its contents). The body is copied into
    /// `data` as it arrives: collected first, a read was held in the client's pieces, then
    /// joined, then copied again, three times its size at its peak.
    ///
    /// With `limit` (a whole file of kind `t`, no range), an answer whose announced length is
    /// larger is refused before its body is read, and a body that turns out longer is not
    /// read past the limit.
    async fn get_into(
        &self,
        rel: &str,
        range: Option<(u64, u64)>,
        data: &mut Vec<u8>,
        limit: Option<(FileType, &str, u64)>,
    ) -> Result<()> {
        let key = self.key_of(rel);
        let what = match range {
            Some((off, len)) => format!("read {rel} at {off}+{len}"),
            None => format!("read {rel}"),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self.client.get_object().bucket(&self.cfg.bucket).key(&key);
            if let Some((off, len)) = range {
                req = req.range(format!("bytes={off}-{}", off + len - 1));
            }
            let out = req.send().await.map_err(|e| {
                let f = failure(e);
                if f.status == Some(416) {
                    return self.backend_err(
                        format!("cannot {what}: the range is past the end of the file"),
                        false,
                    );
                }
                self.map_failure(f, Some(rel), &what)
            })?;
            let expected = out.content_length().map(|l| l.max(0) as u64);
            if let (Some((t, name, max)), Some(len)) = (limit, expected)
                && len > max
            {
                // Dropping the answer closes its connection: the body is never read.
                return Err(super::too_large(t, name, len, max));
            }
            let want = range.map(|(_, len)| len).or(expected);
            data.clear();
            // What the server announced, within reason: a lying header must not allocate.
            data.reserve(want.unwrap_or(0).min(MAX_PREALLOCATED) as usize);
            let mut body = out.body;
            let body_err = loop {
                match body.next().await {
                    Some(Ok(piece)) => {
                        if let Some((t, name, max)) = limit
                            && (data.len() + piece.len()) as u64 > max
                        {
                            let at_least = (data.len() + piece.len()) as u64;
                            return Err(super::too_large(t, name, at_least, max));
                        }
                        data.extend_from_slice(&piece)
                    }
                    Some(Err(e)) => break root_cause(&e),
                    None => match want {
                        Some(w) if data.len() as u64 != w => {
                            if range.is_some() && expected == Some(data.len() as u64) {
                                // The server answered completely, but the file is shorter.
                                return Err(self.backend_err(
                                    format!("cannot {what}: the range is past the end of the file"),
                                    false,
                                ));
                            }
                            break format!("got {} bytes instead of {w}", data.len());
                        }
                        _ => return Ok(()),
                    },
                }
            };
            if attempt >= self.cfg.max_attempts.max(1) {
                return Err(self.backend_err(
                    format!(
                        "cannot {what}: the download from {} broke off ({body_err}) {attempt} times",
                        self.cfg.endpoint_display()
                    ),
                    true,
                ));
            }
            tracing::debug!(location = %self.cfg.location(), "{what}: body broke off ({body_err}), retrying");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// PUT of a whole file; `sha256`, when the caller knows it (the hex hash of `data`), is
    /// signed as the payload's hash instead of hashing `data` again. The server checks it.
    async fn put(&self, rel: &str, data: &[u8], sha256: Option<String>) -> Result<()> {
        let key = self.key_of(rel);
        let len = data.len() as u64;
        if len > self.cfg.multipart_threshold && self.cfg.part_size > 0 {
            return self.put_multipart(rel, &key, data).await;
        }
        let body = ByteStream::from(Bytes::copy_from_slice(data));
        let mut put = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(&key)
            .content_length(len as i64)
            .body(body)
            .customize()
            .config_override(self.upload_override(len));
        if let Some(sha256) = sha256 {
            put = put.interceptor(KnownPayloadHash(sha256));
        }
        put.send()
            .await
            .map_err(|e| self.map_failure(failure(e), None, &format!("write {rel}")))?;
        Ok(())
    }

    async fn put_multipart(&self, rel: &str, key: &str, data: &[u8]) -> Result<()> {
        let what = format!("write {rel}");
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_failure(failure(e), None, &what))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                self.backend_err(
                    format!("cannot {what}: the server returned no upload id"),
                    true,
                )
            })?
            .to_string();
        let result = self.upload_parts(rel, key, &upload_id, data).await;
        if result.is_err() {
            // Best effort: a failed abort leaves an incomplete upload that lifecycle rules or
            // a later prune can clean up; the original error is what matters.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(&self, rel: &str, key: &str, upload_id: &str, data: &[u8]) -> Result<()> {
        let what = format!("write {rel}");
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(self.cfg.part_size as usize).enumerate() {
            let number = i as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(chunk.len() as i64)
                .body(ByteStream::from(Bytes::copy_from_slice(chunk)))
                .customize()
                .config_override(self.upload_override(chunk.len() as u64))
                .send()
                .await
                .map_err(|e| self.map_failure(failure(e), None, &what))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_failure(failure(e), None, &what))?;
        Ok(())
    }

    async fn list_dir(&self, t: FileType) -> Result<Vec<FileInfo>> {
        let dir = format!("{}/", t.dir());
        let prefix = self.key_of(&dir);
        let what = format!("list {dir}");
        let mut files = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_failure(failure(e), None, &what))?;
            for obj in out.contents() {
                let Some(key) = obj.key() else { continue };
                let Some(rest) = key.strip_prefix(&prefix) else {
                    continue;
                };
                if rest.is_empty() || rest.ends_with('/') {
                    continue;
                }
                let name = match t {
                    // data/ab/<id>: packs sit one folder down.
                    FileType::Pack => rest.rsplit('/').next().unwrap_or(rest),
                    // Other kinds are flat; anything nested is not ours.
                    _ if rest.contains('/') => continue,
                    _ => rest,
                };
                files.push(FileInfo {
                    name: name.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                });
            }
            match (out.is_truncated(), out.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(files)
    }
}

/// Waits for `fut` on `rt`. Callers are plain threads; if one is inside some other tokio
/// runtime after all, the wait moves to a scoped thread (and out of that runtime's worker pool
/// where possible) instead of panicking with "Cannot start a runtime from within a runtime".
fn run_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    match tokio::runtime::Handle::try_current() {
        Err(_) => rt.block_on(fut),
        Ok(handle) => {
            let wait = || {
                std::thread::scope(|s| {
                    s.spawn(|| rt.block_on(fut))
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
            };
            if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                tokio::task::block_in_place(wait)
            } else {
                wait()
            }
        }
    }
}

/// Exponential backoff with full jitter for our own retries of broken-off downloads.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(8000);
    Duration::from_millis(rand::random_range(base / 2..=base))
}

/// Has an upload signed with the SHA-256 of its body that the caller already knows (a pack is
/// named by it), sparing a pass over every byte uploaded. A hash that does not match the body
/// makes the server refuse the upload.
#[derive(Debug)]
struct KnownPayloadHash(String);

impl Intercept for KnownPayloadHash {
    fn name(&self) -> &'static str {
        "KnownPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.cfg.location()
    }

    fn create(&self) -> Result<()> {
        self.run(async {
            let ep = self.cfg.endpoint_display();
            let bucket = &self.cfg.bucket;
            if let Err(e) = self.client.head_bucket().bucket(bucket).send().await {
                let f = failure(e);
                if matches!(f.kind, FailureKind::Service) && f.status == Some(404) {
                    return Err(self.backend_err(
                        format!("bucket {bucket} does not exist at {ep} (create it first)"),
                        false,
                    ));
                }
                return Err(self.map_failure(f, None, &format!("check bucket {bucket}")));
            }
            match self.head("config").await {
                Ok(_) => Err(Error::Invalid(format!(
                    "{}: a repository already exists here (it has a config file)",
                    self.cfg.location()
                ))),
                Err(Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        let rel = relative_path(t, name);
        self.run(self.put(&rel, data, None))
    }

    fn write_hashed(&self, t: FileType, id: &Id, data: &[u8]) -> Result<()> {
        let name = id.to_hex();
        let rel = relative_path(t, &name);
        self.run(self.put(&rel, data, Some(name)))
    }

    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        let rel = relative_path(t, name);
        self.run(self.get(&rel, None))
    }

    fn read_at_most(&self, t: FileType, name: &str, max: u64) -> Result<Vec<u8>> {
        let rel = relative_path(t, name);
        let mut data = Vec::new();
        self.run(self.get_into(&rel, None, &mut data, Some((t, name, max))))?;
        Ok(data)
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let rel = relative_path(t, name);
        if length == 0 {
            let size = self.run(self.head(&rel))?;
            if offset > size {
                return Err(self.backend_err(
                    format!(
                        "cannot read {rel} at {offset}+0: the range is past the end of the file"
                    ),
                    false,
                ));
            }
            return Ok(Vec::new());
        }
        self.run(self.get(&rel, Some((offset, length))))
    }

    fn read_range_into(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if length == 0 {
            *buf = self.read_range(t, name, offset, length)?;
            return Ok(());
        }
        let rel = relative_path(t, name);
        self.run(self.get_into(&rel, Some((offset, length)), buf, None))
    }

    fn stat(&self, t: FileType, name: &str) -> Result<u64> {
        let rel = relative_path(t, name);
        self.run(self.head(&rel))
    }

    fn read_concurrency(&self) -> usize {
        // Each request spends most of its time waiting for the first byte; at 25 ms a request
        // and reads of a few MiB, 16 in flight keep a loopback or LAN link busy.
        16
    }

    fn write_concurrency(&self) -> usize {
        2
    }

    fn read_budget(&self) -> u64 {
        crate::pack_reader::BUDGET
    }

    fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
        if t == FileType::Config {
            return match self.run(self.head("config")) {
                Ok(size) => Ok(vec![FileInfo {
                    name: "config".to_string(),
                    size,
                }]),
                Err(Error::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            };
        }
        self.run(self.list_dir(t))
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        let rel = relative_path(t, name);
        let key = self.key(t, name);
        self.run(async {
            self.client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.map_failure(failure(e), None, &format!("remove {rel}")))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_with_an_endpoint_use_path_style_and_keep_the_port() {
        let c = parse_location("s3:http://127.0.0.1:3900/bucket/some/prefix/").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.bucket, "bucket");
        assert_eq!(c.prefix, "some/prefix");
        assert!(c.path_style);
        assert_eq!(c.location(), "s3:http://127.0.0.1:3900/bucket/some/prefix");

        let c = parse_location("s3:minio.example.com/b").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.example.com"));
        assert_eq!(c.bucket, "b");
        assert_eq!(c.prefix, "");
    }

    #[test]
    fn bad_locations_are_rejected_with_the_expected_forms() {
        for bad in [
            "s3:",
            "s3:http://host",
            "s3:http://host/",
            "s3://",
            "s3:ftp://h/b",
            "/srv/repo",
        ] {
            let err = parse_location(bad).unwrap_err().to_string();
            assert!(
                err.contains("s3:https://host[:port]/bucket/prefix"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn credentials_never_show_the_secret_in_debug_output() {
        let c = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
        };
        let mut cfg = S3Config::new(None, "b", "p");
        cfg.credentials = Some(c);
        let shown = format!("{cfg:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("very-secret"));
    }

    #[test]
    fn keys_sit_under_the_prefix_as_relative_path_lays_them_out() {
        let b = S3Backend::open(S3Config::new(
            Some("http://127.0.0.1:1".into()),
            "b",
            "/p/q/",
        ))
        .unwrap();
        assert_eq!(b.key(FileType::Config, "config"), "p/q/config");
        assert_eq!(b.key(FileType::Pack, "abcdef"), "p/q/data/ab/abcdef");
        let b = S3Backend::open(S3Config::new(Some("http://127.0.0.1:1".into()), "b", "")).unwrap();
        assert_eq!(b.key(FileType::Key, "k1"), "keys/k1");
    }
}
