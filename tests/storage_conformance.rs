//! One conformance suite, run against every storage backend.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use lifeboat::storage::{Backend, LocalBackend, RepoUrl, S3Backend, StorageError};

async fn conformance(b: Arc<dyn Backend>) {
    // Missing objects.
    assert!(matches!(b.get("nope").await, Err(StorageError::NotFound { .. })));
    assert_eq!(b.head("nope").await.unwrap(), None);
    assert!(b.list("packs/").await.unwrap().is_empty());

    // Create-only put, then get / head / range.
    b.put_new("packs/ab/abc", Bytes::from_static(b"hello world")).await.unwrap();
    assert_eq!(&b.get("packs/ab/abc").await.unwrap()[..], b"hello world");
    assert_eq!(b.head("packs/ab/abc").await.unwrap().unwrap().size, 11);
    assert_eq!(&b.get_range("packs/ab/abc", 6, 5).await.unwrap()[..], b"world");

    // A second put of the same key fails and leaves the first content.
    let again = b.put_new("packs/ab/abc", Bytes::from_static(b"other")).await;
    assert!(matches!(again, Err(StorageError::AlreadyExists { .. })), "{again:?}");
    assert_eq!(&b.get("packs/ab/abc").await.unwrap()[..], b"hello world");

    // Empty objects.
    b.put_new("index/empty", Bytes::new()).await.unwrap();
    assert_eq!(b.get("index/empty").await.unwrap().len(), 0);

    // Listing by prefix, nested keys, sizes.
    b.put_new("packs/cd/cde", Bytes::from_static(b"xyz")).await.unwrap();
    b.put_new("snapshots/s1", Bytes::from_static(b"s")).await.unwrap();
    let mut packs: Vec<(String, u64)> = b.list("packs/").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    packs.sort();
    assert_eq!(packs, vec![("packs/ab/abc".to_string(), 11), ("packs/cd/cde".to_string(), 3)]);
    assert_eq!(b.list("snapshots/").await.unwrap().len(), 1);

    // Large object (multipart on S3 in this suite: threshold 5 MiB).
    let big: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    b.put_new("packs/ef/big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(b.get("packs/ef/big").await.unwrap(), Bytes::from(big.clone()));
    let again = b.put_new("packs/ef/big", Bytes::from(big.clone())).await;
    assert!(matches!(again, Err(StorageError::AlreadyExists { .. })), "multipart create-only: {again:?}");

    // Deletes are idempotent.
    b.delete("packs/cd/cde").await.unwrap();
    b.delete("packs/cd/cde").await.unwrap();
    assert_eq!(b.head("packs/cd/cde").await.unwrap(), None);
    assert_eq!(b.list("packs/").await.unwrap().len(), 2);

    // Many objects: listing must paginate (S3 pages hold 1000 keys).
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1100 {
        let b = b.clone();
        set.spawn(async move { b.put_new(&format!("index/{i:05}"), Bytes::from_static(b"i")).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(b.list("index/").await.unwrap().len(), 1101);
}

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalBackend::new(dir.path().join("repo")))).await;
    // Temp files never show up as objects.
    assert!(!dir.path().join("repo/.tmp").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false));
}

#[tokio::test]
async fn s3_backend_conforms() {
    let bucket = common::new_bucket("us-east-1");
    let url: RepoUrl = common::s3_url(&bucket, "us-east-1", "conf/prefix").parse().unwrap();
    let RepoUrl::S3(opts) = url else { panic!("not s3") };
    let b = S3Backend::connect(opts).await.unwrap().with_multipart_threshold(5 * 1024 * 1024);
    conformance(Arc::new(b)).await;
}

#[tokio::test]
async fn s3_backend_in_another_region_conforms() {
    let bucket = common::new_bucket("eu-west-1");
    let url: RepoUrl = common::s3_url(&bucket, "eu-west-1", "").parse().unwrap();
    let RepoUrl::S3(opts) = url else { panic!("not s3") };
    conformance(Arc::new(S3Backend::connect(opts).await.unwrap())).await;
}
