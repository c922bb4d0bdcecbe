//! # lifeboat
//!
//! Backup and disaster recovery for PostgreSQL, Redis and Kubernetes state.
//!
//! Data flows one way: a **source** produces byte streams; the **pipeline**
//! cuts them into content-defined chunks ([`chunker`]), names each chunk by
//! a keyed hash, compresses and groups new chunks into packs, encrypts packs
//! with age ([`crypto`]) and writes them through a [`storage::Backend`]; the
//! [`repo`] records an index and, last of all, a snapshot manifest.
//!
//! The CLI (`src/main.rs`) is a thin layer over this crate.

pub mod check;
pub mod chunker;
pub mod clock;
pub mod crypto;
pub mod deploy;
pub mod direct;
pub mod drill;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod prune;
pub mod replicate;
pub mod repo;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod scratch;
pub mod source;
pub mod storage;
pub mod tar;
pub mod verify;

pub use error::{Error, Result};
