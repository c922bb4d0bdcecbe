//! The repository: config, keys, index, snapshot manifests.
//!
//! Object layout (all keys relative to the repository root; see docs/FORMAT.md):
//! ```text
//! config                 plaintext JSON, format version, chunker/pack parameters, recipients
//! keys/<id>              the dedup secret, age-encrypted to the recipients
//! packs/<xx>/<sha256>    age-encrypted packs of zstd-compressed chunks; name = SHA-256 of the ciphertext
//! index/<id>             chunk id -> pack location, age-encrypted to the index key
//! snapshots/<id>         snapshot manifests, age-encrypted to the recipients; written last
//! ```

mod index;
pub mod lock;
mod manifest;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::index::{BlobLocation, Index, IndexFile, PackBlob, PackRecord};
pub use self::manifest::{BackupStats, Manifest, SnapshotMeta, StreamManifest};
use crate::chunker::ChunkerParams;
use crate::crypto::{self, DedupKey, Identities, Recipient, WriteCredential};
use crate::error::{Error, Result};
use crate::storage::{self, Backend, RepoUrl, StorageError};

pub const FORMAT_NAME: &str = "lifeboat-repository";
/// Version 2 adds shared frames (several small chunks in one zstd frame,
/// see `PackBlob::frame_raw`); a version 1 repository stays version 1 and is
/// written without them, so older binaries can still read it.
pub const FORMAT_VERSION: u32 = 3;
const SNAPSHOT_MAGIC: &[u8; 8] = b"LBSNAP01";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Serialise a large repository object (index, manifest, pack trailer).
/// Format 2 zstd-compresses it: chunk ids are 64 hex characters, and a
/// page-cut base backup lists a quarter of a million of them.
pub(crate) fn encode_json<T: Serialize>(version: u32, value: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(value).map_err(|e| Error::Other(e.to_string()))?;
    if version < 2 {
        return Ok(json);
    }
    zstd::bulk::compress(&json, 3).map_err(|e| Error::Other(format!("zstd: {e}")))
}

/// Parse what [`encode_json`] wrote, in either format: JSON starts with
/// `{`, never with zstd's magic number.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let corrupt = |detail: String| Error::Corrupt { what: what.to_string(), detail };
    if bytes.starts_with(&ZSTD_MAGIC) {
        let json = zstd::stream::decode_all(bytes).map_err(|e| corrupt(format!("does not decompress: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
    } else {
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u32,
    /// age recipients every pack and manifest is encrypted to.
    pub recipients: Vec<String>,
}

/// Options for `lifeboat init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub recipients: Vec<String>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            recipients: vec![],
            chunker: ChunkerParams::default(),
            compression_level: 3,
            pack_size: 16 * 1024 * 1024,
        }
    }
}

/// What a caller may do: `Write` adds snapshots; `Read` can also decrypt.
#[derive(Clone)]
pub struct Keys {
    pub dedup: DedupKey,
    pub recipients: Vec<Recipient>,
    pub index_identity: Arc<age::x25519::Identity>,
    identities: Option<Arc<Identities>>,
}

impl Keys {
    pub fn identities(&self, action: &str) -> Result<&Identities> {
        self.identities.as_deref().ok_or_else(|| Error::NeedIdentity { action: action.to_string() })
    }
    pub fn can_read(&self) -> bool {
        self.identities.is_some()
    }
}

#[derive(Clone)]
pub struct Repository {
    pub backend: Arc<dyn Backend>,
    pub url: String,
    pub config: RepoConfig,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.url)
    }
}

impl Repository {
    /// Create a new repository. Writes `keys/…` first and `config` last, so
    /// an interrupted init never looks like a repository.
    pub async fn init(url: &RepoUrl, opts: InitOptions) -> Result<(Repository, WriteCredential)> {
        let backend = storage::open(url).await?;
        Self::init_with_backend(backend, &url.to_string(), opts).await
    }

    pub async fn init_with_backend(
        backend: Arc<dyn Backend>,
        url: &str,
        opts: InitOptions,
    ) -> Result<(Repository, WriteCredential)> {
        if opts.recipients.is_empty() {
            return Err(Error::Other(
                "at least one --recipient is needed; create one with `lifeboat key generate`".into(),
            ));
        }
        let recipients: Vec<Recipient> =
            opts.recipients.iter().map(|r| crypto::parse_recipient(r)).collect::<Result<_, _>>()?;
        opts.chunker.validate().map_err(Error::Other)?;
        if !(1 << 20..=256 << 20).contains(&opts.pack_size) {
            return Err(Error::Other("pack size must be between 1 MiB and 256 MiB".into()));
        }
        if !(1..=19).contains(&opts.compression_level) {
            return Err(Error::Other("compression level must be 1..=19".into()));
        }
        if backend.head("config").await?.is_some() {
            return Err(Error::RepositoryExists { url: url.to_string() });
        }
        let config = RepoConfig {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: crate::clock::now(),
            chunker: opts.chunker,
            compression_level: opts.compression_level,
            pack_size: opts.pack_size,
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
        };
        let dedup = DedupKey::generate();
        let key_ct = crypto::encrypt(&recipients, dedup.as_bytes())?;
        backend.put_new(&format!("keys/{}", hex::encode(rand::random::<[u8; 16]>())), Bytes::from(key_ct)).await?;
        let cfg = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        backend.put_new("config", Bytes::from(cfg)).await.map_err(|e| match e {
            StorageError::AlreadyExists { .. } => Error::RepositoryExists { url: url.to_string() },
            other => other.into(),
        })?;
        let cred = WriteCredential::new(&config.id, &dedup, &config.recipients);
        Ok((Repository { backend, url: url.to_string(), config }, cred))
    }

    pub async fn open(url: &RepoUrl) -> Result<Repository> {
        let backend = storage::open(url).await?;
        Self::open_with_backend(backend, &url.to_string()).await
    }

    pub async fn open_with_backend(backend: Arc<dyn Backend>, url: &str) -> Result<Repository> {
        let raw = match backend.get("config").await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Err(Error::NoRepository { url: url.to_string() }),
            Err(e) => return Err(e.into()),
        };
        let v: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| Error::NotARepository { url: url.to_string(), detail: format!("config is not JSON: {e}") })?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(Error::NotARepository {
                url: url.to_string(),
                detail: "config has no lifeboat format marker".into(),
            });
        }
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        if version > FORMAT_VERSION || version == 0 {
            return Err(Error::UnsupportedVersion { url: url.to_string(), found: version, supported: FORMAT_VERSION });
        }
        let config: RepoConfig = serde_json::from_value(v)
            .map_err(|e| Error::NotARepository { url: url.to_string(), detail: format!("config: {e}") })?;
        Ok(Repository { backend, url: url.to_string(), config })
    }

    fn recipients(&self) -> Result<Vec<Recipient>> {
        Ok(self.config.recipients.iter().map(|r| crypto::parse_recipient(r)).collect::<Result<_, _>>()?)
    }

    /// Unlock with the identity: full access.
    pub async fn unlock_identity(&self, ids: Identities) -> Result<Keys> {
        let dedup = self.dedup_key_with(&ids).await?;
        Ok(Keys {
            index_identity: Arc::new(dedup.index_identity()),
            dedup,
            recipients: self.recipients()?,
            identities: Some(Arc::new(ids)),
        })
    }

    /// Recover the dedup secret with an identity (to re-issue a write credential).
    pub async fn dedup_key_with(&self, ids: &Identities) -> Result<DedupKey> {
        let keys = self.backend.list("keys/").await?;
        if keys.is_empty() {
            return Err(Error::NotARepository { url: self.url.clone(), detail: "no keys/ objects".into() });
        }
        for k in keys {
            let ct = self.backend.get(&k.key).await?;
            match ids.decrypt(&k.key, &ct) {
                Ok(pt) => {
                    let arr: [u8; 32] = pt
                        .try_into()
                        .map_err(|_| Error::Corrupt { what: k.key.clone(), detail: "key is not 32 bytes".into() })?;
                    return Ok(DedupKey::from_bytes(arr));
                }
                Err(crypto::CryptoError::WrongKey { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::WrongIdentity {
            source_name: ids.source.clone(),
            url: self.url.clone(),
            recipients: self.config.recipients.join(", "),
        })
    }

    /// Unlock with a write credential: can add snapshots, cannot read them.
    pub fn unlock_write(&self, cred: &WriteCredential) -> Result<Keys> {
        if cred.repository_id != self.config.id {
            return Err(Error::CredentialMismatch {
                credential: cred.repository_id.clone(),
                repository: self.config.id.clone(),
                url: self.url.clone(),
            });
        }
        let dedup = cred.dedup_key().map_err(Error::Other)?;
        Ok(Keys {
            index_identity: Arc::new(dedup.index_identity()),
            dedup,
            recipients: self.recipients()?,
            identities: None,
        })
    }

    /// Load every index file into memory.
    pub async fn load_index(&self, keys: &Keys) -> Result<Index> {
        let files = self.backend.list("index/").await?;
        let mut index = Index::default();
        let mut set = tokio::task::JoinSet::new();
        for f in files {
            let repo = self.clone();
            let keys = keys.clone();
            set.spawn(async move {
                let file = repo.read_index_file(&keys, &f.key).await?;
                Ok::<_, Error>((f.key, file))
            });
        }
        while let Some(r) = set.join_next().await {
            let (key, file) = r.map_err(|e| Error::Other(e.to_string()))??;
            index.add_file(&key, file);
        }
        Ok(index)
    }

    /// One index object, decrypted.
    pub async fn read_index_file(&self, keys: &Keys, key: &str) -> Result<IndexFile> {
        let ct = self.backend.get(key).await?;
        let pt = crypto::decrypt_one(&keys.index_identity, key, &ct)?;
        decode_json(key, &pt)
    }

    pub async fn write_index(&self, keys: &Keys, file: &IndexFile) -> Result<String> {
        let pt = encode_json(self.config.version, file)?;
        let ct = crypto::encrypt(&[keys.index_identity.to_public()], &pt)?;
        let key = format!("index/{}", hex::encode(rand::random::<[u8; 16]>()));
        self.backend.put_new(&key, Bytes::from(ct)).await?;
        Ok(key)
    }

    /// Write a manifest: this is the moment a snapshot becomes visible.
    ///
    /// Object layout: `"LBSNAP01" ‖ u32le(len(meta)) ‖ meta ‖ body`, where
    /// `meta` is the [`SnapshotMeta`] encrypted to the index key (writers can
    /// read it: listing, retention, status) and `body` the full manifest
    /// encrypted to the recipients.
    pub async fn write_manifest(&self, keys: &Keys, m: &Manifest) -> Result<()> {
        let meta = serde_json::to_vec(&SnapshotMeta::of(m)).map_err(|e| Error::Other(e.to_string()))?;
        let meta_ct = crypto::encrypt(&[keys.index_identity.to_public()], &meta)?;
        let pt = encode_json(self.config.version, m)?;
        let body = crypto::encrypt(&keys.recipients, &pt)?;
        let mut obj = Vec::with_capacity(12 + meta_ct.len() + body.len());
        obj.extend_from_slice(SNAPSHOT_MAGIC);
        obj.extend_from_slice(&(meta_ct.len() as u32).to_le_bytes());
        obj.extend_from_slice(&meta_ct);
        obj.extend_from_slice(&body);
        self.backend.put_new(&format!("snapshots/{}", m.id), Bytes::from(obj)).await?;
        Ok(())
    }

    async fn snapshot_object(&self, id: &str) -> Result<(Bytes, usize)> {
        let key = format!("snapshots/{id}");
        let obj = match self.backend.get(&key).await {
            Err(StorageError::NotFound { .. }) => return Err(Error::SnapshotNotFound { query: id.to_string() }),
            other => other?,
        };
        let bad = || Error::Corrupt { what: format!("snapshot {id}"), detail: "not a lifeboat snapshot object".into() };
        if obj.len() < 12 || &obj[..8] != SNAPSHOT_MAGIC {
            return Err(bad());
        }
        let len = u32::from_le_bytes(obj[8..12].try_into().map_err(|_| bad())?) as usize;
        if 12 + len > obj.len() {
            return Err(bad());
        }
        Ok((obj, len))
    }

    /// The writer-readable summary of a snapshot.
    pub async fn load_meta(&self, keys: &Keys, id: &str) -> Result<SnapshotMeta> {
        let (obj, len) = self.snapshot_object(id).await?;
        let pt = crypto::decrypt_one(&keys.index_identity, &format!("snapshot {id}"), &obj[12..12 + len])?;
        serde_json::from_slice(&pt)
            .map_err(|e| Error::Corrupt { what: format!("snapshot {id}"), detail: e.to_string() })
    }

    /// Every snapshot summary, oldest first (works with the write credential).
    pub async fn snapshot_metas(&self, keys: &Keys) -> Result<Vec<SnapshotMeta>> {
        let ids = self.snapshot_ids().await?;
        let mut out = load_concurrently(ids, |id| {
            let (repo, keys) = (self.clone(), keys.clone());
            async move { repo.load_meta(&keys, &id).await }
        })
        .await?;
        out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Remove a snapshot (its data stays until `prune`).
    pub async fn forget(&self, id: &str) -> Result<()> {
        Ok(self.backend.delete(&format!("snapshots/{id}")).await?)
    }

    /// Append an event record (backup run, failure, replication, verification,
    /// drill) under `records/<kind>/`, encrypted to the recipients: needs no
    /// secret to write, the identity to read.
    pub async fn write_record(&self, kind: &str, record: &serde_json::Value) -> Result<String> {
        let key = record_key(kind);
        self.put_record(&key, record).await?;
        Ok(key)
    }

    /// Write a record under a key from [`record_key`]: a drill writes the same
    /// record to the surviving and the primary repository under one key, so
    /// that replication later sees it as present instead of copying a twin.
    pub async fn put_record(&self, key: &str, record: &serde_json::Value) -> Result<()> {
        let ct = self.seal_record(record)?;
        self.put_sealed_record(key, ct).await
    }

    /// A record encrypted to the recipients. Store one sealed record in every
    /// copy: two encryptions of the same record differ (random file key and
    /// grease stanzas, even in size), and replication refuses an object that
    /// differs from the one already under its key.
    pub fn seal_record(&self, record: &serde_json::Value) -> Result<Bytes> {
        let recipients = self.recipients()?;
        let pt = serde_json::to_vec(record).map_err(|e| Error::Other(e.to_string()))?;
        Ok(Bytes::from(crypto::encrypt(&recipients, &pt)?))
    }

    pub async fn put_sealed_record(&self, key: &str, sealed: Bytes) -> Result<()> {
        Ok(self.backend.put_new(key, sealed).await?)
    }

    /// Every record of a kind, oldest first.
    pub async fn records(&self, keys: &Keys, kind: &str) -> Result<Vec<serde_json::Value>> {
        let ids = keys.identities("reading records")?;
        let mut objs = self.backend.list(&format!("records/{kind}/")).await?;
        objs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = Vec::new();
        for o in objs {
            let ct = self.backend.get(&o.key).await?;
            let pt = ids.decrypt(&o.key, &ct)?;
            out.push(
                serde_json::from_slice(&pt)
                    .map_err(|e| Error::Corrupt { what: o.key.clone(), detail: e.to_string() })?,
            );
        }
        Ok(out)
    }

    /// Snapshot ids present (no decryption needed).
    pub async fn snapshot_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .backend
            .list("snapshots/")
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("snapshots/").map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn load_manifest(&self, keys: &Keys, id: &str) -> Result<Manifest> {
        let ids = keys.identities("reading a snapshot")?;
        let (obj, len) = self.snapshot_object(id).await?;
        let pt = ids.decrypt(&format!("snapshot {id}"), &obj[12 + len..])?;
        decode_json(&format!("snapshot {id}"), &pt)
    }

    /// Every manifest, oldest first.
    pub async fn manifests(&self, keys: &Keys) -> Result<Vec<Manifest>> {
        keys.identities("listing snapshots")?;
        let ids = self.snapshot_ids().await?;
        let mut out = load_concurrently(ids, |id| {
            let (repo, keys) = (self.clone(), keys.clone());
            async move { repo.load_manifest(&keys, &id).await }
        })
        .await?;
        out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Resolve `latest`, a full id or a unique prefix to a manifest.
    pub async fn find_snapshot(&self, keys: &Keys, query: &str, name: Option<&str>) -> Result<Manifest> {
        if query == "latest" {
            let all = self.manifests(keys).await?;
            return all.into_iter().rfind(|m| name.is_none_or(|n| m.name == n)).ok_or_else(|| {
                Error::SnapshotNotFound {
                    query: match name {
                        Some(n) => format!("latest --name {n}"),
                        None => "latest".into(),
                    },
                }
            });
        }
        if query.is_empty() || !query.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound { query: query.to_string() });
        }
        let ids = self.snapshot_ids().await?;
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(&query.to_ascii_lowercase())).collect();
        match matches.len() {
            0 => Err(Error::SnapshotNotFound { query: query.to_string() }),
            1 => self.load_manifest(keys, matches[0]).await,
            _ => Err(Error::AmbiguousSnapshot {
                query: query.to_string(),
                candidates: matches.iter().map(|s| &s[..12.min(s.len())]).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

/// Run `f` over `items`, 16 at a time (object stores reward parallel GETs).
pub async fn load_concurrently<I, T, F, Fut>(items: Vec<I>, f: F) -> Result<Vec<T>>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    use futures::StreamExt;
    futures::stream::iter(items).map(f).buffer_unordered(16).collect::<Vec<_>>().await.into_iter().collect()
}

/// A pack's object key from its id.
pub fn pack_key(id: &crypto::ChunkId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{}", &h[..2], h)
}

/// A new record's key: `records/<kind>/<time>-<random>`, time on [`crate::clock`].
pub fn record_key(kind: &str) -> String {
    format!(
        "records/{kind}/{}-{}",
        crate::clock::now().format("%Y%m%dT%H%M%S%.6fZ"),
        hex::encode(rand::random::<[u8; 4]>())
    )
}
