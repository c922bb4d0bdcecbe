//! S3 and S3-compatible object stores, through `aws-sdk-s3`.
//!
//! Credentials come from the default AWS chain (environment, profile, web
//! identity / IRSA, instance metadata), never from the repository URL.
//! Create-only writes use `If-None-Match: *`, which AWS S3 and most
//! compatible servers honour; objects above the multipart threshold are
//! uploaded in parts and completed with the same condition.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{Backend, ObjectMeta, StorageError, StorageResult};

/// Parsed from `s3://bucket/prefix?region=…&endpoint=…&path_style=…&allow_http=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// Defaults to true when a custom endpoint is given (most S3-compatible
    /// servers want path-style), false for AWS.
    pub path_style: Option<bool>,
    pub allow_http: bool,
}

/// Objects at or above this size are uploaded with multipart upload.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;
/// S3's smallest allowed part (except the last).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct S3Backend {
    client: Client,
    opts: S3Options,
    multipart_threshold: usize,
    part_size: usize,
}

impl S3Backend {
    pub async fn connect(opts: S3Options) -> StorageResult<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            // Retries with exponential backoff and jitter for throttling,
            // 5xx and transient network errors.
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if sdk.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(ep) = &opts.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        b = b.force_path_style(opts.path_style.unwrap_or(opts.endpoint.is_some()));
        let client = Client::from_conf(b.build());
        Ok(S3Backend { client, opts, multipart_threshold: DEFAULT_MULTIPART_THRESHOLD, part_size: 16 * 1024 * 1024 })
    }

    /// Lower the multipart threshold (tests use this to exercise multipart
    /// with small objects). Parts are never smaller than S3's 5 MiB minimum.
    pub fn with_multipart_threshold(mut self, threshold: usize) -> Self {
        self.multipart_threshold = threshold.max(MIN_PART_SIZE);
        self.part_size = threshold.max(MIN_PART_SIZE);
        self
    }

    fn full_key(&self, key: &str) -> String {
        if self.opts.prefix.is_empty() { key.to_string() } else { format!("{}/{}", self.opts.prefix, key) }
    }

    fn endpoint(&self) -> String {
        self.opts.endpoint.clone().unwrap_or_else(|| "the S3 endpoint".to_string())
    }

    fn map_err<E>(&self, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or("");
                match (status, code) {
                    (_, "NoSuchBucket") => StorageError::BucketNotFound { bucket: self.opts.bucket.clone() },
                    (_, "NoSuchKey") | (404, _) => StorageError::NotFound { key: key.to_string() },
                    (412, _) | (409, "ConditionalRequestConflict") => {
                        StorageError::AlreadyExists { key: key.to_string() }
                    }
                    (403, _) => StorageError::Denied {
                        target: format!("s3://{}/{}", self.opts.bucket, self.full_key(key)),
                        detail: se.err().message().unwrap_or(code).to_string(),
                    },
                    (301, _) => StorageError::Other {
                        key: key.to_string(),
                        detail: format!(
                            "bucket {} is in another region; set region= in the repository URL",
                            self.opts.bucket
                        ),
                    },
                    _ => StorageError::Other {
                        key: key.to_string(),
                        detail: format!("HTTP {status} {code}: {}", se.err().message().unwrap_or("")),
                    },
                }
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                StorageError::Unreachable { endpoint: self.endpoint(), detail: root_cause(&err) }
            }
            _ => StorageError::Other { key: key.to_string(), detail: format!("{}", DisplayErrorContext(&err)) },
        }
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let full = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.map_err(key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(self.part_size).enumerate() {
                let n = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.opts.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .body(ByteStream::from(data.slice_ref(chunk)))
                    .send()
                    .await
                    .map_err(|e| self.map_err(key, e))?;
                parts.push(CompletedPart::builder().part_number(n).set_e_tag(part.e_tag().map(str::to_string)).build());
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.opts.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| self.map_err(key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Leave no billable parts behind.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.opts.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// The innermost cause ("Connection refused (os error 111)"): what the
/// reader needs, without the SDK's layers of wrapping.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let msg = cur.to_string();
    if err.source().is_none() { format!("{}", DisplayErrorContext(err)) } else { msg }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.opts.bucket, self.opts.prefix)
    }

    async fn put_new(&self, key: &str, data: Bytes) -> StorageResult<()> {
        if data.len() >= self.multipart_threshold {
            return self.put_multipart(key, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map_err(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.map_err(key, e))?;
        let body = resp.body.collect().await.map_err(|e| StorageError::Unreachable {
            endpoint: self.endpoint(),
            detail: format!("download of {key} interrupted: {e}"),
        })?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StorageResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let resp = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(self.full_key(key))
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .send()
            .await
            .map_err(|e| self.map_err(key, e))?;
        let body = resp.body.collect().await.map_err(|e| StorageError::Unreachable {
            endpoint: self.endpoint(),
            detail: format!("download of {key} interrupted: {e}"),
        })?;
        Ok(body.into_bytes())
    }

    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>> {
        match self.client.head_object().bucket(&self.opts.bucket).key(self.full_key(key)).send().await {
            Ok(r) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: r.content_length().unwrap_or(0) as u64,
                modified: r.last_modified().and_then(to_chrono),
            })),
            Err(e) => match self.map_err(key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
        let full_prefix = self.full_key(prefix);
        let strip = if self.opts.prefix.is_empty() { 0 } else { self.opts.prefix.len() + 1 };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.opts.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_err(prefix, e))?;
            for o in resp.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectMeta {
                        key: k[strip.min(k.len())..].to_string(),
                        size: o.size().unwrap_or(0) as u64,
                        modified: o.last_modified().and_then(to_chrono),
                    });
                }
            }
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn locked_until(&self, key: &str) -> StorageResult<Option<chrono::DateTime<chrono::Utc>>> {
        // HeadObject reports the retention (GetObjectRetention is less widely implemented).
        match self.client.head_object().bucket(&self.opts.bucket).key(self.full_key(key)).send().await {
            Ok(r) => Ok(r.object_lock_retain_until_date().and_then(to_chrono).filter(|t| *t > chrono::Utc::now())),
            Err(e) => match self.map_err(key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        self.client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.map_err(key, e))?;
        Ok(())
    }
}
