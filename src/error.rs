//! The library's error type. Every message says what happened and, where
//! there is one, what to do next — the reader may be on call at 3 a.m.

use crate::crypto::CryptoError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no lifeboat repository at {url} (no config object); create one with `lifeboat init --repo {url} --recipient age1…`"
    )]
    NoRepository { url: String },
    #[error("a repository already exists at {url}; refusing to initialise it again")]
    RepositoryExists { url: String },
    #[error(
        "repository at {url} has format version {found}, this lifeboat understands up to {supported}; upgrade lifeboat"
    )]
    UnsupportedVersion { url: String, found: u32, supported: u32 },
    #[error("{url} does not hold a lifeboat repository: {detail}")]
    NotARepository { url: String, detail: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "the identity in {source_name} cannot decrypt the key of repository {url}; it is encrypted to {recipients}"
    )]
    WrongIdentity { source_name: String, url: String, recipients: String },
    #[error(
        "{action} needs the repository identity (--identity FILE or LIFEBOAT_IDENTITY_FILE); a write credential can only add snapshots"
    )]
    NeedIdentity { action: String },
    #[error(
        "no key given: pass --write-key FILE (LIFEBOAT_WRITE_KEY_FILE) to back up, or --identity FILE (LIFEBOAT_IDENTITY_FILE)"
    )]
    NoKey,
    #[error("the write credential is for repository {credential}, but {url} is repository {repository}")]
    CredentialMismatch { credential: String, repository: String, url: String },
    #[error("no snapshot matches {query:?}; `lifeboat snapshots` lists them")]
    SnapshotNotFound { query: String },
    #[error("snapshot prefix {query:?} is ambiguous: {candidates}")]
    AmbiguousSnapshot { query: String, candidates: String },
    #[error("snapshot {snapshot} has {streams} streams ({names}); pick one with --stream")]
    AmbiguousStream { snapshot: String, streams: usize, names: String },
    #[error(
        "snapshot {snapshot} references chunk {chunk} which no index lists; the repository is damaged (run `lifeboat check`)"
    )]
    MissingChunk { snapshot: String, chunk: String },
    #[error("pack {pack} is corrupt: {detail}")]
    CorruptPack { pack: String, detail: String },
    #[error("{what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("reading the input failed: {0}")]
    Input(#[source] std::io::Error),
    #[error("writing the restored data failed: {0}")]
    Output(#[source] std::io::Error),
    #[error("source {source_name} failed: {detail}; no snapshot was written")]
    Source { source_name: String, detail: String },
    #[error("{0}")]
    Policy(String),
    #[error("repository is locked: {what}")]
    Locked { what: String },
    #[error("check found {0} problem(s)")]
    CheckFailed(usize),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
