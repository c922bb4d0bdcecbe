//! Storage backends: one small async trait, many implementations.
//!
//! The repository layer never talks to a filesystem or to S3 directly; it
//! talks to a [`Backend`]. Every backend is run through the same conformance
//! suite (`tests/storage_conformance.rs`), so what the repository relies on —
//! create-only writes, listing by prefix, ranged reads — holds everywhere.

mod local;
mod s3;
mod url;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::local::LocalBackend;
pub use self::s3::{S3Backend, S3Options};
pub use self::url::RepoUrl;

/// One stored object as returned by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the repository root, always with `/` separators.
    pub key: String,
    pub size: u64,
    /// Last modification (creation: objects are immutable), when the backend knows it.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Errors a backend can report. Messages name the object and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key} already exists (objects are written once and never replaced)")]
    AlreadyExists { key: String },
    #[error("bucket {bucket} does not exist (or is in another region); create it first or fix the repository URL")]
    BucketNotFound { bucket: String },
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("access denied to {target}: {detail}; check the credentials and the bucket policy")]
    Denied { target: String, detail: String },
    #[error("no space left on the device holding {key}")]
    NoSpace { key: String },
    #[error("I/O error on {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage error on {key}: {detail}")]
    Other { key: String, detail: String },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The storage trait. Keys are `/`-separated paths relative to the
/// repository root (`config`, `packs/ab/abcd…`).
///
/// Contract (checked by the conformance suite):
/// - `put_new` is create-only: it fails with [`StorageError::AlreadyExists`]
///   if the key exists and never replaces data. It returns only once the
///   object is durable (fsync'd / acknowledged by the object store).
/// - `get` of a missing key is [`StorageError::NotFound`].
/// - `list` returns every object under a prefix, in no particular order.
/// - `delete` of a missing key succeeds (idempotent).
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A printable location (no secrets) used in messages.
    fn location(&self) -> String;
    async fn put_new(&self, key: &str, data: Bytes) -> StorageResult<()>;
    async fn get(&self, key: &str) -> StorageResult<Bytes>;
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StorageResult<Bytes>;
    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>>;
    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>>;
    async fn delete(&self, key: &str) -> StorageResult<()>;
    /// Object Lock / WORM: until when the object cannot be deleted (None: not locked).
    async fn locked_until(&self, _key: &str) -> StorageResult<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }
}

/// Open the backend a repository URL points at.
pub async fn open(url: &RepoUrl) -> StorageResult<Arc<dyn Backend>> {
    match url {
        RepoUrl::Local(path) => Ok(Arc::new(LocalBackend::new(path.clone()))),
        RepoUrl::S3(opts) => Ok(Arc::new(S3Backend::connect(opts.clone()).await?)),
    }
}
