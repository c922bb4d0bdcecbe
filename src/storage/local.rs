//! A repository in a local directory (the embedded default).
//!
//! Writes go to `.tmp/` first, are fsync'd, then hard-linked into place: a
//! hard link fails if the target exists, which gives create-only semantics
//! without a check-then-write race, and a crash leaves at worst a stray file
//! in `.tmp/`, never a half-written object under its final name.

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, ObjectMeta, StorageError, StorageResult};

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: PathBuf) -> Self {
        LocalBackend { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn io_err(key: &str, e: std::io::Error) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound { key: key.to_string() }
    } else if e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull {
        StorageError::NoSpace { key: key.to_string() }
    } else if e.kind() == ErrorKind::PermissionDenied {
        StorageError::Denied { target: key.to_string(), detail: e.to_string() }
    } else {
        StorageError::Io { key: key.to_string(), source: e }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn put_new_blocking(root: &Path, key: &str, data: &[u8]) -> StorageResult<()> {
    let target = root.join(key);
    if target.exists() {
        return Err(StorageError::AlreadyExists { key: key.to_string() });
    }
    let tmp_dir = root.join(".tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io_err(key, e))?;
    let tmp = tmp_dir.join(format!("{}.{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>())));
    let result = (|| -> StorageResult<()> {
        let f = crate::direct::write_new(&tmp, data).map_err(|e| io_err(key, e))?;
        f.sync_all().map_err(|e| io_err(key, e))?;
        drop(f);
        let parent = target.parent().unwrap_or(root);
        std::fs::create_dir_all(parent).map_err(|e| io_err(key, e))?;
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StorageError::AlreadyExists { key: key.to_string() });
            }
            Err(e) => return Err(io_err(key, e)),
        }
        sync_dir(parent).map_err(|e| io_err(key, e))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn list_blocking(root: &Path, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
    // Start the walk at the deepest directory the prefix names.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = root.join(dir_part);
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(prefix, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(prefix, e))?;
            let path = entry.path();
            let rel = match path.strip_prefix(root) {
                Ok(r) => r.to_string_lossy().replace('\\', "/"),
                Err(_) => continue,
            };
            if rel.starts_with(".tmp") {
                continue;
            }
            let ft = entry.file_type().map_err(|e| io_err(&rel, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if rel.starts_with(prefix) {
                let md = entry.metadata().map_err(|e| io_err(&rel, e))?;
                let modified = md.modified().ok().map(chrono::DateTime::<chrono::Utc>::from);
                out.push(ObjectMeta { key: rel, size: md.len(), modified });
            }
        }
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Other { key: key.to_string(), detail: format!("worker failed: {e}") })?
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put_new(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let root = self.root.clone();
        let k = key.to_string();
        blocking(key, move || put_new_blocking(&root, &k, &data)).await
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let path = self.path(key);
        let k = key.to_string();
        blocking(key, move || std::fs::read(&path).map(Bytes::from).map_err(|e| io_err(&k, e))).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StorageResult<Bytes> {
        let path = self.path(key);
        let k = key.to_string();
        blocking(key, move || {
            let mut f = std::fs::File::open(&path).map_err(|e| io_err(&k, e))?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| io_err(&k, e))?;
            let mut buf = Vec::with_capacity(len as usize);
            f.take(len).read_to_end(&mut buf).map_err(|e| io_err(&k, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().ok().map(chrono::DateTime::<chrono::Utc>::from),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let p = prefix.to_string();
        blocking(prefix, move || list_blocking(&root, &p)).await
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(key, e)),
        }
    }
}
